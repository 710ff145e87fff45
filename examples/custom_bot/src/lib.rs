//! `standup`: a whole bot written outside perch. People answer `@bot standup <what I do
//! today>`; the bot keeps each person's latest answer (its persistent state, per chat)
//! and answers with a card of everyone's answers so far (`cards/standup.hbs`).
//!
//! It is a `perch::bots::BotKind`: a `Bot` with a config type that perch reads from
//! `[bots.<name>] kind = "standup"`, validated by `perch check` like a built-in kind.

use perch::action::Action;
use perch::bots::CommandSpec;
use perch::bots::{Bot, BotContext, BotError, BotKind};
use perch::config::{Config, Issues};
use perch::event::Event;
use serde::{Deserialize, Serialize};

/// `[bots.<name>] kind = "standup"`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandupConfig {
    /// The card's title.
    pub title: String,
    /// The card template (`<cards_dir>/<card>.hbs`).
    #[serde(default = "default_card")]
    pub card: String,
}

fn default_card() -> String {
    "standup".to_string()
}

pub struct Standup {
    title: String,
    card: String,
}

/// One person's answer, as the bot stores it.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    name: String,
    text: String,
}

#[async_trait::async_trait]
impl Bot for Standup {
    fn commands(&self) -> Vec<CommandSpec> {
        vec![CommandSpec::new(
            "standup",
            "standup <what you do today>",
            "adds your answer to today's standup card",
        )]
    }

    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let Some(command) = &ctx.command else {
            return Ok(Vec::new());
        };
        let text = command.rest();
        let text = text.trim();
        if text.is_empty() {
            return Err(BotError::User(
                "Usage: @bot standup <what you do today>".into(),
            ));
        }
        let (chat, person) = match (&event.chat, &event.sender) {
            (Some(chat), Some(person)) => (chat, person),
            _ => return Ok(Vec::new()),
        };
        let answer = Answer {
            name: person.name.clone().unwrap_or_else(|| person.id.clone()),
            text: text.to_string(),
        };
        ctx.state_put(&format!("{}/{}", chat.id, person.id), &answer)
            .await?;
        let answers: Vec<Answer> = ctx
            .state_scan::<Answer>(&format!("{}/", chat.id))
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        let card = ctx.card(
            &self.card,
            &serde_json::json!({ "title": self.title, "count": answers.len(), "answers": answers }),
        )?;
        Ok(vec![Action::reply(card)])
    }
}

impl BotKind for Standup {
    type Config = StandupConfig;

    fn build(_name: &str, config: StandupConfig) -> Result<Self, BotError> {
        Ok(Standup {
            title: config.title,
            card: config.card,
        })
    }

    fn validate(name: &str, config: &StandupConfig, at: usize, all: &Config, issues: &mut Issues) {
        all.check_template(issues, at, &format!("bot `{name}`"), &config.card);
    }
}
