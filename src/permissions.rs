//! Who may run a bot's commands and press its buttons: `[[permissions]]` rules, checked
//! by the router (`router::Processor`) before a bot sees a person's message or click.
//!
//! ```toml
//! [auth.groups]
//! ops = ["ann", "carol"]
//!
//! [[permissions]]
//! bot = "groups"
//! command = "建群"                      # or `action = "done"` for a button; neither: all
//! allow = ["ann", "group:ops", "chat:oc_sales"]
//! ```
//!
//! A person may go ahead when every rule matching the bot and the command (or button
//! action) allows them: by their id, a group they are in, the chat they write in, or
//! `owner`: the owner of the item the click or command is about, which only the bot
//! knows. The router leaves a rule naming `owner` to the bot, which asks `decide` with
//! the owner filled in. A bot with an owner rule of its own (`reminders`: the owner and
//! its `admins`) uses it only where no rule matches: the default a config overrides.
//! Otherwise the bot does not run, and they get a one-line answer (a message) or a toast
//! (a click). Events no person made (schedule ticks, internal systems) are not checked.

use crate::command;
use crate::event::{Event, EventKind};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[[permissions]]`
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionRule {
    /// The bot the rule guards.
    pub bot: String,
    /// A command word (the first word after the mention), any case. Only with no
    /// `action`.
    #[serde(default)]
    pub command: Option<String>,
    /// A card button's action (`done`, `snooze`). Only with no `command`.
    #[serde(default)]
    pub action: Option<String>,
    /// Who may: person ids (the platform's, or web-chat sign-in names), `group:<name>`
    /// (`[auth.groups]`), `chat:<chat id>` (anyone writing in that chat), `owner` (the
    /// owner of the item it is about, for bots that keep items: `reminders`).
    pub allow: Vec<String>,
}

/// One entry of `allow`.
#[derive(Debug, Clone, PartialEq)]
enum Principal {
    Person(String),
    Group(String),
    Chat(String),
    Owner,
}

impl Principal {
    fn parse(s: &str) -> Principal {
        if s == "owner" {
            return Principal::Owner;
        }
        if let Some(g) = s.strip_prefix("group:") {
            Principal::Group(g.to_string())
        } else if let Some(c) = s.strip_prefix("chat:") {
            Principal::Chat(c.to_string())
        } else {
            Principal::Person(s.to_string())
        }
    }
}

/// The rules, ready to check.
#[derive(Debug, Default)]
pub struct Permissions {
    rules: Vec<PermissionRule>,
    groups: BTreeMap<String, Vec<String>>,
}

impl Permissions {
    pub fn new(rules: Vec<PermissionRule>, groups: BTreeMap<String, Vec<String>>) -> Self {
        Permissions { rules, groups }
    }

    /// Every problem with the rules, each as a message (`bots`: the configured bots).
    pub fn problems<'a>(
        rules: &[PermissionRule],
        groups: &BTreeMap<String, Vec<String>>,
        bots: impl Iterator<Item = &'a String> + Clone,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for r in rules {
            if !bots.clone().any(|b| b == &r.bot) {
                out.push(format!(
                    "permission names bot `{}`, which is not defined",
                    r.bot
                ));
            }
            if r.command.is_some() && r.action.is_some() {
                out.push(format!(
                    "permission for bot `{}`: give `command` or `action`, not both",
                    r.bot
                ));
            }
            if r.allow.is_empty() {
                out.push(format!(
                    "permission for bot `{}` allows nobody: list people, `group:<name>` or `chat:<id>` in `allow`",
                    r.bot
                ));
            }
            for a in &r.allow {
                if let Principal::Group(g) = Principal::parse(a)
                    && !groups.contains_key(&g)
                {
                    out.push(format!(
                        "permission for bot `{}` names group `{g}`, which is not in [auth.groups]",
                        r.bot
                    ));
                }
            }
        }
        out
    }

    /// Why the person behind `event` may not have `bot` handle it, as the one line to
    /// answer them with; `None` when they may (or no rule applies). An `owner` entry is
    /// not decided here (the router does not know items): the bot decides it.
    pub fn refusal(&self, bot: &str, event: &Event) -> Option<String> {
        let (what, rules) = self.matching(bot, event)?;
        let person = event.sender.as_ref().map(|p| p.id.as_str());
        let chat = event.chat.as_ref().map(|c| c.id.as_str());
        let denied = rules
            .iter()
            .any(|r| !r.allow.iter().any(|a| self.admits(a, person, chat, None)));
        denied.then(|| format!("Sorry, you may not {what}."))
    }

    /// For a bot that knows the item `event` is about and its `owner`: whether the
    /// person may go ahead by the rules matching it, with `owner` decided; `None` when no
    /// rule matches (the bot's own default applies).
    pub fn decide(&self, bot: &str, event: &Event, owner: &str) -> Option<bool> {
        let (_, rules) = self.matching(bot, event)?;
        if rules.is_empty() {
            return None;
        }
        let person = event.sender.as_ref().map(|p| p.id.as_str());
        let chat = event.chat.as_ref().map(|c| c.id.as_str());
        Some(rules.iter().all(|r| {
            r.allow
                .iter()
                .any(|a| self.admits(a, person, chat, Some(owner)))
        }))
    }

    /// What the person is trying (for the refusal) and the rules of `bot` that guard it;
    /// `None` for events no person made.
    fn matching(&self, bot: &str, event: &Event) -> Option<(String, Vec<&PermissionRule>)> {
        let (what, matches): (String, Box<dyn Fn(&PermissionRule) -> bool>) = match event.kind {
            EventKind::CardAction => {
                let action = event.card_action.as_ref()?.action.clone();
                (
                    "press this button".to_string(),
                    Box::new(move |r: &PermissionRule| {
                        r.command.is_none() && r.action.as_ref().is_none_or(|a| *a == action)
                    }),
                )
            }
            EventKind::Message => {
                let cmd = command::parse(event).map(|c| c.name);
                let what = match &cmd {
                    Some(c) => format!("run `{c}` of @{bot}"),
                    None => format!("ask @{bot}"),
                };
                (
                    what,
                    Box::new(move |r: &PermissionRule| {
                        r.action.is_none()
                            && r.command.as_ref().is_none_or(|c| {
                                cmd.as_ref().is_some_and(|m| m.eq_ignore_ascii_case(c))
                            })
                    }),
                )
            }
            _ => return None,
        };
        let rules = self
            .rules
            .iter()
            .filter(|r| r.bot == bot && matches(r))
            .collect();
        Some((what, rules))
    }

    /// Whether `allow` lets `person` in `chat` go ahead; `owner`: the item's owner when
    /// the bot knows it, `None` in the router (then an `owner` entry is left to the bot).
    fn admits(
        &self,
        allow: &str,
        person: Option<&str>,
        chat: Option<&str>,
        owner: Option<&str>,
    ) -> bool {
        match Principal::parse(allow) {
            Principal::Owner => owner.is_none_or(|o| person == Some(o)),
            Principal::Person(p) => person == Some(p.as_str()),
            Principal::Group(g) => person.is_some_and(|person| {
                self.groups
                    .get(&g)
                    .is_some_and(|members| members.iter().any(|m| m == person))
            }),
            Principal::Chat(c) => chat == Some(c.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CardAction, Chat, ChatType, Mention, Person};

    fn rules() -> Permissions {
        let rule = |command: Option<&str>, action: Option<&str>, allow: &[&str]| PermissionRule {
            bot: "groups".into(),
            command: command.map(str::to_string),
            action: action.map(str::to_string),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        };
        Permissions::new(
            vec![
                rule(Some("建群"), None, &["ann", "group:ops", "chat:sales"]),
                rule(None, Some("done"), &["ann"]),
            ],
            BTreeMap::from([("ops".to_string(), vec!["carol".to_string()])]),
        )
    }

    fn message(who: &str, chat: &str, text: &str) -> Event {
        let mut e = Event::new("web", EventKind::Message, chrono::Utc::now());
        e.sender = Some(Person {
            id: who.into(),
            name: None,
        });
        e.chat = Some(Chat {
            id: chat.into(),
            chat_type: ChatType::Group,
        });
        e.text = Some(text.into());
        e.mentions = vec![Mention {
            person: Person {
                id: "groups".into(),
                name: Some("groups".into()),
            },
            is_bot: true,
        }];
        e
    }

    #[test]
    fn commands_are_allowed_by_person_group_or_chat() {
        let p = rules();
        let text = "@groups 建群 Acme P1";
        assert_eq!(p.refusal("groups", &message("ann", "x", text)), None);
        assert_eq!(p.refusal("groups", &message("carol", "x", text)), None);
        assert_eq!(p.refusal("groups", &message("zed", "sales", text)), None);
        assert_eq!(
            p.refusal("groups", &message("zed", "x", text)).as_deref(),
            Some("Sorry, you may not run `建群` of @groups.")
        );
        // Other commands and other bots are not guarded by these rules.
        assert_eq!(
            p.refusal("groups", &message("zed", "x", "@groups help")),
            None
        );
        assert_eq!(p.refusal("echo", &message("zed", "x", text)), None);
    }

    #[test]
    fn buttons_are_allowed_by_action() {
        let p = rules();
        let mut click = message("bob", "x", "");
        click.kind = EventKind::CardAction;
        click.card_action = Some(CardAction {
            bot: "groups".into(),
            action: "done".into(),
            args: serde_json::json!({}),
            message_id: None,
        });
        assert_eq!(
            p.refusal("groups", &click).as_deref(),
            Some("Sorry, you may not press this button.")
        );
        click.sender.as_mut().unwrap().id = "ann".into();
        assert_eq!(p.refusal("groups", &click), None);
        // A tick has no person: not checked.
        let tick = Event::new("scheduler", EventKind::Tick, chrono::Utc::now());
        assert_eq!(p.refusal("groups", &tick), None);
    }

    #[test]
    fn an_owner_rule_is_left_to_the_bot_which_decides_it_with_the_owner() {
        let p = Permissions::new(
            vec![PermissionRule {
                bot: "tasks".into(),
                command: None,
                action: Some("done".into()),
                allow: vec!["owner".into(), "group:leads".into()],
            }],
            BTreeMap::from([("leads".to_string(), vec!["carol".to_string()])]),
        );
        let mut click = message("bob", "x", "");
        click.kind = EventKind::CardAction;
        click.card_action = Some(CardAction {
            bot: "tasks".into(),
            action: "done".into(),
            args: serde_json::json!({ "id": 1 }),
            message_id: None,
        });
        // The router cannot know the owner: it lets the click through to the bot…
        assert_eq!(p.refusal("tasks", &click), None);
        // …which decides: bob is not ann, the owner, nor a lead; carol is a lead.
        assert_eq!(p.decide("tasks", &click, "ann"), Some(false));
        assert_eq!(p.decide("tasks", &click, "bob"), Some(true));
        click.sender.as_mut().unwrap().id = "carol".into();
        assert_eq!(p.decide("tasks", &click, "ann"), Some(true));
        // No rule for snooze: the bot's own default applies.
        click.card_action.as_mut().unwrap().action = "snooze".into();
        assert_eq!(p.decide("tasks", &click, "ann"), None);
    }
}
