//! `auto_group`: creates a properly named project group, once.
//!
//! Triggers: a command in a chat (`@bot 建群 Acme P-12 @alice @bob bo@corp.com`: the
//! words fill `fields` in order, @mentions and e-mail addresses become members), or a
//! system event (`crm.opportunity.created`) whose fields are read by JSON pointer.
//!
//! Then: render the name from `name_template` (`【项目】{{customer}}-{{code}}`), check it
//! against the naming rule (pattern, max length, forbidden characters) and refuse with the
//! rule explained; claim the project key in the bot's state (compare-and-swap, so two
//! requests for one project cannot both create); create the chat through the connector
//! (an awaited call with an idempotency key: a re-run after a crash does not create a
//! second chat), add members given by e-mail, post the welcome card in the new group, and
//! answer the requester with who could not be added. A repeated request answers with the
//! existing group.

use super::text_template::{Escape, TextTemplates};
use super::*;
use crate::action::{ChatSpec, MessageBody, Operation, Target};
use crate::event::EventKind;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoGroupConfig {
    /// Connector that creates the chat. Default: the one the request came from.
    #[serde(default)]
    pub connector: Option<String>,
    /// Template of the group name over the fields.
    pub name_template: String,
    /// For commands: the fields the words after the command fill, in order.
    #[serde(default)]
    pub fields: Vec<String>,
    /// For system events: field name → JSON pointer into the payload.
    #[serde(default)]
    pub from_event: BTreeMap<String, String>,
    /// For system events: pointer to the member list (ids or e-mail addresses).
    #[serde(default)]
    pub members_pointer: Option<String>,
    /// Template of the project key (the same key never gets a second group).
    /// Default: the group name.
    #[serde(default)]
    pub key_template: Option<String>,
    /// What kind of ids members given by mention are (the connector's default if unset).
    #[serde(default)]
    pub member_id_type: Option<String>,
    /// The naming rule.
    #[serde(default)]
    pub rule: NameRule,
    /// Card posted in the new group; data: `{name, fields, members, requester}`.
    #[serde(default)]
    pub welcome_template: Option<String>,
    /// The command word, for `help` (routes decide what reaches the bot).
    #[serde(default = "default_command")]
    pub command: String,
}

fn default_command() -> String {
    "建群".to_string()
}

/// The company's naming rule for groups.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct NameRule {
    /// Regular expression the whole name must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Longest name, in characters.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Characters a name may not contain.
    #[serde(default)]
    pub forbidden: Option<String>,
    /// How to explain the rule to people ("【项目】<customer>-<code>, at most 60 characters").
    #[serde(default)]
    pub description: Option<String>,
}

impl AutoGroupConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        if let Some(c) = &self.connector {
            config.check_connector(issues, at, &format!("bot `{name}`"), c);
        }
        if let Err(e) = templates(name, self) {
            issues.at(at, e.to_string());
        }
        if let Some(p) = &self.rule.pattern
            && regex::Regex::new(p).is_err()
        {
            issues.at(
                at,
                format!("bot `{name}`: rule.pattern {p:?} is not a valid regex"),
            );
        }
        for p in self.from_event.values().chain(self.members_pointer.iter()) {
            if !p.starts_with('/') {
                issues.at(
                    at,
                    format!("bot `{name}`: {p:?} is not a JSON pointer (it must start with `/`)"),
                );
            }
        }
    }
}

fn templates(name: &str, c: &AutoGroupConfig) -> Result<TextTemplates, BotError> {
    let mut t = TextTemplates::new(name, Escape::None);
    t.add("name", &c.name_template)?;
    t.add("key", c.key_template.as_deref().unwrap_or(&c.name_template))?;
    Ok(t)
}

/// What the bot remembers per project key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProjectGroup {
    pub name: String,
    /// `None` while the creating event is still at work.
    pub chat_id: Option<String>,
    pub connector: String,
    /// The event that claimed the key.
    pub event: String,
}

pub struct AutoGroup {
    config: AutoGroupConfig,
    templates: TextTemplates,
    pattern: Option<regex::Regex>,
}

use serde::Serialize;

/// What `gather` collects: the fields, the members by id and the members by e-mail.
type Gathered = (
    serde_json::Map<String, serde_json::Value>,
    Vec<String>,
    Vec<String>,
);

impl AutoGroup {
    pub fn new(name: &str, config: AutoGroupConfig) -> Result<Self, BotError> {
        let pattern = config
            .rule
            .pattern
            .as_deref()
            .map(|p| regex::Regex::new(&format!("^(?:{p})$")))
            .transpose()
            .map_err(|e| BotError::Config(e.to_string()))?;
        Ok(AutoGroup {
            templates: templates(name, &config)?,
            config,
            pattern,
        })
    }

    /// Why `name` breaks the rule, if it does.
    pub fn check_name(&self, name: &str) -> Option<String> {
        let rule = &self.config.rule;
        let explain = rule
            .description
            .as_deref()
            .map(|d| format!(" The rule: {d}."))
            .unwrap_or_default();
        if name.trim().is_empty() {
            return Some(format!("The group name is empty.{explain}"));
        }
        if let Some(max) = rule.max_length {
            let n = name.chars().count();
            if n > max {
                return Some(format!(
                    "`{name}` is {n} characters long; at most {max} are allowed.{explain}"
                ));
            }
        }
        if let Some(forbidden) = &rule.forbidden {
            let bad: String = name.chars().filter(|c| forbidden.contains(*c)).collect();
            if !bad.is_empty() {
                return Some(format!(
                    "`{name}` contains characters that are not allowed: {bad}.{explain}"
                ));
            }
        }
        if self.pattern.as_ref().is_some_and(|p| !p.is_match(name)) {
            return Some(format!(
                "`{name}` does not follow the naming rule.{explain}"
            ));
        }
        None
    }

    /// Fields, members (ids) and members by e-mail, from a command or an event.
    fn gather(&self, event: &Event, ctx: &BotContext) -> Result<Gathered, BotError> {
        let mut fields = serde_json::Map::new();
        let mut ids = Vec::new();
        let mut emails = Vec::new();
        let is_email = |s: &str| s.contains('@') && s.contains('.') && !s.starts_with('@');
        if event.kind == EventKind::Message {
            let cmd = ctx.command.clone().unwrap_or_default();
            let words: Vec<&String> = cmd.args.iter().filter(|a| !is_email(a)).collect();
            if words.len() < self.config.fields.len() {
                let usage: Vec<String> = self
                    .config
                    .fields
                    .iter()
                    .map(|f| format!("<{f}>"))
                    .collect();
                return Err(BotError::User(format!(
                    "Usage: @bot {} {} @member … (or members' e-mail addresses)",
                    self.config.command,
                    usage.join(" ")
                )));
            }
            for (f, w) in self.config.fields.iter().zip(&words) {
                fields.insert(f.clone(), serde_json::Value::String((*w).clone()));
            }
            ids.extend(cmd.people.iter().map(|p| p.id.clone()));
            emails.extend(cmd.args.iter().filter(|a| is_email(a)).cloned());
            if let Some(sender) = &event.sender
                && !ids.contains(&sender.id)
            {
                ids.push(sender.id.clone());
            }
        } else {
            for (f, pointer) in &self.config.from_event {
                let v = event.payload.pointer(pointer).cloned().ok_or_else(|| {
                    BotError::Other(format!("event {} has no {pointer} (field `{f}`)", event.id))
                })?;
                fields.insert(f.clone(), v);
            }
            if let Some(p) = &self.config.members_pointer {
                for m in event
                    .payload
                    .pointer(p)
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(s) = m.as_str() {
                        if is_email(s) {
                            emails.push(s.to_string())
                        } else {
                            ids.push(s.to_string())
                        }
                    }
                }
            }
        }
        Ok((fields, ids, emails))
    }
}

#[async_trait]
impl Bot for AutoGroup {
    fn commands(&self) -> Vec<CommandSpec> {
        let fields: Vec<String> = self
            .config
            .fields
            .iter()
            .map(|f| format!("<{f}>"))
            .collect();
        vec![CommandSpec::new(
            &self.config.command,
            &format!("{} {} @member …", self.config.command, fields.join(" ")),
            "creates the project group, named by the rule, with these members",
        )]
    }

    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let (fields, ids, emails) = self.gather(event, ctx)?;
        let name = self.templates.render("name", &fields)?;
        if let Some(why) = self.check_name(&name) {
            return Err(BotError::User(why));
        }
        let key = self.templates.render("key", &fields)?;
        let connector = self
            .config
            .connector
            .clone()
            .unwrap_or_else(|| event.connector.clone());
        let state_key = format!("project/{key}");

        // Claim the key. Someone else's claim (or a finished group) means: already there.
        let claim = ProjectGroup {
            name: name.clone(),
            chat_id: None,
            connector: connector.clone(),
            event: event.id.to_string(),
        };
        let claimed = ctx.state_claim(&state_key, &claim).await?;
        if !claimed {
            let existing: ProjectGroup = ctx
                .state_get(&state_key)
                .await?
                .ok_or_else(|| BotError::Other("project claim vanished".into()))?;
            if existing.event != claim.event {
                let text = match &existing.chat_id {
                    Some(id) => format!(
                        "The group for this project already exists: **{}** (chat `{id}`).",
                        existing.name
                    ),
                    None => format!(
                        "The group **{}** is being created right now.",
                        existing.name
                    ),
                };
                return Ok(if event.kind == EventKind::Message {
                    vec![Action::reply(MessageBody::markdown(text))]
                } else {
                    vec![]
                });
            }
            // Our own claim: this is a re-run of the same event after a crash. The awaited
            // calls below return their recorded results; nothing is created twice.
        }

        let spec = ChatSpec {
            name: name.clone(),
            description: None,
            members: ids.clone(),
            member_id_type: self.config.member_id_type.clone(),
            owner: event.sender.as_ref().map(|s| s.id.clone()),
        };
        let created = match ctx.call(&connector, Operation::CreateChat { spec }).await {
            Ok(d) => d,
            Err(e) => {
                // Free the key so the request can be made again.
                ctx.state_delete(&state_key).await?;
                return Err(e);
            }
        };
        let chat_id = created.id.clone().ok_or_else(|| {
            BotError::Other(format!(
                "connector `{connector}` created a chat but gave no id"
            ))
        })?;
        let mut not_added: Vec<String> = created
            .detail
            .get("not_added")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !emails.is_empty() {
            let added = ctx
                .call(
                    &connector,
                    Operation::AddMembers {
                        chat_id: chat_id.clone(),
                        members: emails.clone(),
                        member_id_type: Some("email".into()),
                    },
                )
                .await?;
            not_added.extend(
                added
                    .detail
                    .get("not_added")
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_string)),
            );
        }
        ctx.state_put(
            &state_key,
            &ProjectGroup {
                chat_id: Some(chat_id.clone()),
                ..claim
            },
        )
        .await?;

        let mut actions = Vec::new();
        // Shaped for cards/welcome.hbs.
        let requester = event
            .sender
            .as_ref()
            .map(|s| s.name.clone().unwrap_or_else(|| s.id.clone()));
        let mut data = serde_json::json!({
            "name": name,
            "group": name,
            "project": fields.get("project").and_then(|v| v.as_str()).unwrap_or(&name),
            "owner": requester.clone().unwrap_or_else(|| "perch".to_string()),
            "fields": fields,
            "members": ids.iter().chain(&emails).collect::<Vec<_>>(),
            "requester": requester,
            "source": event.topic.clone().unwrap_or_else(|| "a chat command".to_string()),
        });
        for f in ["customer", "code"] {
            if let Some(v) = fields.get(f) {
                data[f] = v.clone();
            }
        }
        let welcome = match &self.config.welcome_template {
            Some(t) => ctx.card(t, &data)?,
            None => MessageBody::markdown(format!("Welcome to **{name}**!")),
        };
        actions.push(Action::Send {
            connector: Some(connector.clone()),
            to: Target::chat(chat_id.clone()),
            body: welcome,
        });
        if event.kind == EventKind::Message {
            let mut text = format!("Created **{name}** (chat `{chat_id}`).");
            if !not_added.is_empty() {
                text.push_str(&format!(" Could not add: {}.", not_added.join(", ")));
            }
            actions.push(Action::reply(MessageBody::markdown(text)));
        }
        Ok(actions)
    }
}
