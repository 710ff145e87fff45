//! `echo`: answers with what it was told. The smallest useful bot, and the one the
//! README's tour and the tests use to see the whole pipeline work.

use super::*;

#[derive(Debug, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    /// Put before every answer.
    #[serde(default)]
    pub prefix: String,
}

pub struct Echo {
    prefix: String,
}

impl Echo {
    pub fn new(config: &EchoConfig) -> Self {
        Echo {
            prefix: config.prefix.clone(),
        }
    }
}

#[async_trait]
impl Bot for Echo {
    fn commands(&self) -> Vec<CommandSpec> {
        vec![CommandSpec::built_in(
            "<anything>",
            "<text>",
            "summary.echo",
            &[],
        )]
    }

    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        // A card click is echoed as a toast to whoever clicked: the action and its args.
        if let Some(click) = &event.card_action {
            let args = match &click.args {
                serde_json::Value::Null => String::new(),
                args => format!(" {args}"),
            };
            return Ok(vec![Action::toast(
                crate::action::ToastKind::Info,
                format!("{}{}{args}", self.prefix, click.action),
            )]);
        }
        // Echo the whole message after the mention, keeping its original words.
        let said = match &ctx.command {
            Some(c) if c.name.is_empty() => String::new(),
            Some(c) => {
                let mut words = vec![original_case(event, &c.name)];
                words.extend(c.args.iter().cloned());
                words.join(" ")
            }
            None => event.text.clone().unwrap_or_default(),
        };
        if said.trim().is_empty() {
            return Err(BotError::User(
                "say something after @echo, e.g. `@echo hi`".into(),
            ));
        }
        Ok(vec![Action::reply_text(format!("{}{}", self.prefix, said))])
    }
}

/// The command word as it was typed (the parser lower-cases it).
fn original_case(event: &Event, lowered: &str) -> String {
    event
        .text
        .as_deref()
        .and_then(|t| {
            crate::command::tokenize(t)
                .into_iter()
                .find(|w| w.to_lowercase() == lowered)
        })
        .unwrap_or_else(|| lowered.to_string())
}

/// `kind = "echo"` (registered in `super::register_builtin`).
impl BotKind for Echo {
    type Config = EchoConfig;
    fn build(_name: &str, config: EchoConfig) -> Result<Self, BotError> {
        Ok(Echo::new(&config))
    }
}
