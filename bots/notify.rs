//! `notify`: a system event → a message to a configured chat, or a direct message to
//! the person the payload names (the assignee of a task whose state changed).
//!
//! `chat`, `person` and `text` are Handlebars templates over the event (`topic`,
//! `payload`, `sender`, `chat`, `text`), compiled at start in strict mode, so a
//! template naming a missing field fails loudly instead of sending a blank.

use super::text_template::{Escape, TextTemplates};
use super::*;
use crate::action::{MessageBody, Target};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Connector to send through. Default: the one the event came from.
    #[serde(default)]
    pub connector: Option<String>,
    /// Chat to post to (a template, e.g. `"{{payload.team_chat}}"` or a fixed id).
    #[serde(default)]
    pub chat: Option<String>,
    /// Person to message directly (a template, e.g. `"{{payload.assignee.email}}"`).
    #[serde(default)]
    pub person: Option<String>,
    /// What kind of id `person` gives, where the platform has several (`email`, `open_id`).
    #[serde(default)]
    pub person_id_type: Option<String>,
    /// The message (a template). With `card`, the card's text fallback for logs.
    #[serde(default)]
    pub text: String,
    /// Send a card instead of text: the template name in `cards/`, rendered over the
    /// event (`topic`, `payload`, `sender`, …), or over `card_data` when it is set.
    #[serde(default)]
    pub card: Option<String>,
    /// The card's data, field by field, each a template over the event: shapes an
    /// event for a template that expects other fields. E.g. for `cards/notification.hbs`:
    /// `{ title = "Task {{payload.task.title}}", text = "Now {{payload.task.state}}",
    /// level = "info" }`.
    #[serde(default)]
    pub card_data: std::collections::BTreeMap<String, String>,
    /// Send the text as markdown.
    #[serde(default)]
    pub markdown: bool,
}

impl NotifyConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        if let Some(t) = &self.card {
            config.check_template(issues, at, &format!("bot `{name}`: card"), t);
        }
        if self.chat.is_none() == self.person.is_none() {
            issues.at(
                at,
                format!("bot `{name}`: set exactly one of `chat` or `person`"),
            );
        }
        if self.text.is_empty() && self.card.is_none() {
            issues.at(at, format!("bot `{name}`: set `text` or `card`"));
        }
        if !self.card_data.is_empty() && self.card.is_none() {
            issues.at(
                at,
                format!("bot `{name}`: `card_data` is set without `card`"),
            );
        }
        if let Some(c) = &self.connector {
            config.check_connector(issues, at, &format!("bot `{name}`"), c);
        }
        if let Err(e) = compile(name, self) {
            issues.at(at, e.to_string());
        }
    }
}

fn compile(name: &str, config: &NotifyConfig) -> Result<TextTemplates, BotError> {
    let mut t = TextTemplates::new(name, Escape::None);
    t.add("text", &config.text)?;
    if let Some(c) = &config.chat {
        t.add("chat", c)?;
    }
    if let Some(p) = &config.person {
        t.add("person", p)?;
    }
    for (field, template) in &config.card_data {
        t.add(&card_field(field), template)?;
    }
    Ok(t)
}

/// The template name of a `card_data` field.
fn card_field(field: &str) -> String {
    format!("card_data.{field}")
}

pub struct Notify {
    name: String,
    connector: Option<String>,
    to_chat: bool,
    person_id_type: Option<String>,
    markdown: bool,
    card: Option<String>,
    /// The `card_data` fields (their templates are in `templates`).
    card_fields: Vec<String>,
    templates: TextTemplates,
}

impl Notify {
    pub fn new(name: &str, config: &NotifyConfig) -> Result<Self, BotError> {
        Ok(Notify {
            name: name.to_string(),
            connector: config.connector.clone(),
            to_chat: config.chat.is_some(),
            person_id_type: config.person_id_type.clone(),
            markdown: config.markdown,
            card: config.card.clone(),
            card_fields: config.card_data.keys().cloned().collect(),
            templates: compile(name, config)?,
        })
    }
}

#[async_trait]
impl Bot for Notify {
    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        // The event as templates see it, serialised once for the recipient and the body.
        let data = self.templates.context(event)?;
        let render = |template: &str| self.templates.render_in(template, &data);
        let to = if self.to_chat {
            Target::chat(render("chat")?)
        } else {
            Target::Person {
                id: render("person")?,
                id_type: self.person_id_type.clone(),
            }
        };
        let (Target::Chat { id } | Target::Person { id, .. }) = &to;
        if id.trim().is_empty() {
            return Err(BotError::Other(format!(
                "bot `{}`: the recipient template gave an empty id for event {}",
                self.name, event.id
            )));
        }
        let body = match &self.card {
            Some(template) if !self.card_fields.is_empty() => {
                let mut fields = serde_json::Map::new();
                for f in &self.card_fields {
                    fields.insert(f.clone(), render(&card_field(f))?.into());
                }
                ctx.card(template, &serde_json::Value::Object(fields))?
            }
            Some(template) => ctx.card(template, data.data())?,
            None if self.markdown => MessageBody::markdown(render("text")?),
            None => MessageBody::text(render("text")?),
        };
        Ok(vec![Action::Send {
            connector: self.connector.clone(),
            to,
            body,
        }])
    }
}

/// `kind = "notify"` (registered in `super::register_builtin`).
impl BotKind for Notify {
    type Config = NotifyConfig;
    fn build(name: &str, config: NotifyConfig) -> Result<Self, BotError> {
        Notify::new(name, &config)
    }
    fn validate(name: &str, config: &NotifyConfig, at: usize, all: &Config, issues: &mut Issues) {
        config.validate(name, at, all, issues);
    }
}
