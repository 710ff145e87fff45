//! `help`: lists the commands of the bots reachable from the chat's connector.

use super::*;
use crate::cards::markdown as md;

#[derive(Debug, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HelpConfig {
    /// A line shown above the list.
    #[serde(default)]
    pub intro: Option<String>,
}

pub struct Help {
    intro: Option<String>,
}

impl Help {
    pub fn new(config: &HelpConfig) -> Self {
        Help {
            intro: config.intro.clone(),
        }
    }
}

#[async_trait]
impl Bot for Help {
    fn commands(&self) -> Vec<CommandSpec> {
        vec![CommandSpec::built_in("help", "help", "summary.help", &[])]
    }

    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let mut text = String::new();
        if let Some(intro) = &self.intro {
            text.push_str(intro);
            text.push_str("\n\n");
        }
        let locale = ctx.locale();
        text.push_str(&format!(
            "**{}**\n",
            rust_i18n::t!("help.commands_here", locale = locale)
        ));
        let mut any = false;
        let directory = &ctx.services().directory;
        // What the person types: on the web chat each bot is someone to @mention by its
        // name; on Feishu, Slack or Matrix one app account stands for every bot, so every
        // command is written with the name this person just used for it.
        let one_account = ctx
            .command
            .as_ref()
            .and_then(|c| c.addressed_to.clone())
            .filter(|name| !directory.bots.iter().any(|b| &b.name == name));
        for bot in directory.reachable_from(&event.connector) {
            if bot.name == ctx.bot {
                continue;
            }
            let handle = one_account.as_deref().unwrap_or(&bot.name);
            for c in &bot.commands {
                any = true;
                let typed = format!("@{handle} {}", c.usage);
                text.push_str(&format!(
                    "- {} — {}\n",
                    md::code(&typed),
                    c.summary_in(locale)
                ));
            }
            if bot.commands.is_empty() {
                any = true;
                text.push_str(&format!(
                    "- `{}` ({}) — {}\n",
                    bot.name,
                    bot.kind,
                    rust_i18n::t!("help.no_commands", locale = locale)
                ));
            }
        }
        if !any {
            text.push_str(&rust_i18n::t!("help.nobody_routed", locale = locale));
            text.push('\n');
        }
        Ok(vec![Action::reply(crate::action::MessageBody::markdown(
            text,
        ))])
    }
}

/// `kind = "help"` (registered in `super::register_builtin`).
impl BotKind for Help {
    type Config = HelpConfig;
    fn build(_name: &str, config: HelpConfig) -> Result<Self, BotError> {
        Ok(Help::new(&config))
    }
}
