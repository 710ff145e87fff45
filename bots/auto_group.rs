//! `auto_group`: creates a properly named project group, once.
//!
//! Triggers: a command in a chat (`@bot 建群 Acme P-12 @alice @bob bo@corp.com`: the
//! words fill `fields` in order, @mentions and e-mail addresses become members), or a
//! system event (`crm.opportunity.created`) whose fields are read by JSON pointer.
//!
//! Then: render the name from `name_template` (`【项目】{{customer}}-{{code}}`), check it
//! against the naming rule (pattern, max length, forbidden characters) and refuse with the
//! rule explained. Creating the group is a sequence of durable steps, each recorded in
//! the bot's state under the project key (`ProjectGroup`) as it finishes:
//!
//! 1. **claim** the project key (compare-and-swap, so two requests for one project
//!    cannot both create). A claim that is older than `claim_timeout` without a chat is
//!    stale (its request died) and the next request takes it over;
//! 2. **create** the chat with an awaited call whose idempotency key belongs to the
//!    project, not to the request (`BotContext::call_once`): whichever request makes or
//!    resumes the step, the platform returns the same chat (Feishu: `uuid`, 10 h), and
//!    a recorded result is reused for ever. A failure here releases the claim, so the
//!    next request resumes at once;
//! 3. **add members** given by e-mail (and any the creation could not add). A failure
//!    is kept in the state as pending members and reported in the group and to the
//!    requester; the next request for the project retries them;
//! 4. **welcome** card in the new group, once per project (`Action::Once`), and the
//!    answer to the requester, through the outbox (durable, retried, never doubled).
//!
//! So a project never gets two chats, and no step stays stuck: every request for the
//! project either finds the group, or finishes what an earlier one left undone.

use super::text_template::{Escape, TextTemplates};
use super::*;
use crate::action::{ChatSpec, MessageBody, Operation, Target};
use crate::cards::markdown as md;
use crate::event::EventKind;
use rust_i18n::t;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    /// How long a claim without a chat holds before a new request may take it over
    /// (the request that made it crashed or was given up on). Longer than
    /// `server.bot_timeout`, so a live request is never overtaken.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_claim_timeout",
        deserialize_with = "crate::config::de_duration"
    )]
    pub claim_timeout: std::time::Duration,
}

fn default_command() -> String {
    "建群".to_string()
}
fn default_claim_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(120)
}

/// The company's naming rule for groups.
#[derive(Debug, Deserialize, Default, Clone, schemars::JsonSchema)]
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
    /// How to explain the rule to people ("【项目】`<customer>-<code>`, at most 60 characters").
    #[serde(default)]
    pub description: Option<String>,
}

impl AutoGroupConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        if let Some(t) = &self.welcome_template {
            config.check_template(issues, at, &format!("bot `{name}`: welcome_template"), t);
        }
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

/// What the bot remembers per project key: how far creating its group has come.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProjectGroup {
    pub name: String,
    /// `None` until the chat exists.
    pub chat_id: Option<String>,
    pub connector: String,
    /// The event that holds (or last held) the claim.
    pub event: String,
    /// When that event claimed the key (a claim without a chat expires after
    /// `claim_timeout`). Absent in records of older versions: such a claim is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Members that could not be added yet, with why: the next request retries them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingMembers>,
    /// The welcome card was handed to the outbox (by the event that holds the claim).
    #[serde(default)]
    pub welcomed: bool,
}

/// Members whose adding failed (a platform error, not "no such person").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingMembers {
    /// Member ids (`member_id_type`) and e-mail addresses.
    pub ids: Vec<String>,
    pub emails: Vec<String>,
    pub error: String,
}

impl ProjectGroup {
    fn is_complete(&self) -> bool {
        self.chat_id.is_some() && self.pending.is_none()
    }
}

/// Where `claim` left the request.
enum Claim {
    /// This event holds the key; the stored record (and its bytes, for releasing it),
    /// and whether this event held it already (a re-run after a crash).
    Held(ProjectGroup, Vec<u8>, bool),
    /// Nothing to do but answer.
    Answer(Vec<Action>),
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

    /// Why `name` breaks the rule, if it does, in `locale`.
    pub fn check_name(&self, name: &str, locale: &str) -> Option<String> {
        let rule = &self.config.rule;
        let explain = rule
            .description
            .as_deref()
            .map(|d| t!("auto_group.the_rule", locale = locale, rule = d).into_owned())
            .unwrap_or_default();
        if name.trim().is_empty() {
            return Some(t!("auto_group.name_empty", locale = locale, rule = explain).into_owned());
        }
        if let Some(max) = rule.max_length {
            let n = name.chars().count();
            if n > max {
                return Some(
                    t!(
                        "auto_group.name_too_long",
                        locale = locale,
                        name = md::code(name),
                        count = n,
                        max = max,
                        rule = explain
                    )
                    .into_owned(),
                );
            }
        }
        if let Some(forbidden) = &rule.forbidden {
            let bad: String = name.chars().filter(|c| forbidden.contains(*c)).collect();
            if !bad.is_empty() {
                return Some(
                    t!(
                        "auto_group.name_forbidden",
                        locale = locale,
                        name = md::code(name),
                        chars = md::code(&bad),
                        rule = explain
                    )
                    .into_owned(),
                );
            }
        }
        if self.pattern.as_ref().is_some_and(|p| !p.is_match(name)) {
            return Some(
                t!(
                    "auto_group.name_pattern",
                    locale = locale,
                    name = md::code(name),
                    rule = explain
                )
                .into_owned(),
            );
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
                // Written with the name the person called the bot by (`@groups` on the
                // web chat, the app's name on Feishu).
                let mention = cmd.addressed_to.as_deref().unwrap_or("bot");
                let usage = format!("@{mention} {} {}", self.config.command, usage.join(" "));
                return Err(BotError::User(
                    t!(
                        "auto_group.usage",
                        locale = ctx.locale(),
                        usage = md::code(&usage)
                    )
                    .into_owned(),
                ));
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
        vec![CommandSpec::built_in(
            &self.config.command,
            &format!("{} {} @member …", self.config.command, fields.join(" ")),
            "summary.auto_group",
            &[],
        )]
    }

    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let (fields, ids, emails) = self.gather(event, ctx)?;
        let name = self.templates.render("name", &fields)?;
        if let Some(why) = self.check_name(&name, ctx.locale()) {
            return Err(BotError::User(why));
        }
        let key = self.templates.render("key", &fields)?;
        let connector = self
            .config
            .connector
            .clone()
            .unwrap_or_else(|| event.connector.clone());
        let state_key = format!("project/{key}");
        let is_message = event.kind == EventKind::Message;
        let locale = ctx.locale();
        let answer = |text: String| -> Vec<Action> {
            if is_message {
                vec![Action::reply(MessageBody::markdown(text))]
            } else {
                vec![]
            }
        };

        // 1. Claim the key, take over a stale claim, or resume an unfinished group.
        let (mut group, mut raw, rerun) = match self
            .claim(event, ctx, &state_key, &name, &connector, &answer)
            .await?
        {
            Claim::Held(group, raw, rerun) => (group, raw, rerun),
            Claim::Answer(actions) => return Ok(actions),
        };
        let resumed = group.chat_id.is_some() && !rerun;
        // A re-run must hand the welcome over again (its first run's actions may never
        // have reached the outbox); the once-key keeps it from being sent twice.
        let welcome = !group.welcomed || rerun;

        // 2. Create the chat (a step of the project: the same chat whoever resumes it).
        let mut ids_to_add: Vec<String> = Vec::new();
        let mut emails_to_add = emails.clone();
        let chat_id = match group.chat_id.clone() {
            Some(id) => {
                // A group that exists with members still pending: add those and this
                // request's members (adding someone twice is harmless).
                if let Some(p) = group.pending.take() {
                    ids_to_add.extend(p.ids);
                    emails_to_add.extend(p.emails);
                }
                ids_to_add.extend(ids.iter().cloned());
                id
            }
            None => {
                let spec = ChatSpec {
                    name: name.clone(),
                    description: None,
                    members: ids.clone(),
                    member_id_type: self.config.member_id_type.clone(),
                    owner: event.sender.as_ref().map(|s| s.id.clone()),
                };
                let created = match ctx
                    .call_once(
                        &connector,
                        Operation::CreateChat { spec },
                        &format!("{state_key}/create"),
                    )
                    .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        // Nothing is half-made that a retry would not find again (the
                        // step's key is the project's): free the claim so the next
                        // request resumes at once.
                        ctx.state_replace::<ProjectGroup>(&state_key, &raw, None)
                            .await?;
                        return Err(e);
                    }
                };
                let chat_id = created.id.clone().ok_or_else(|| {
                    BotError::Other(format!(
                        "connector `{connector}` created a chat but gave no id"
                    ))
                })?;
                if created.detail.get("members_error").is_some() {
                    ids_to_add.extend(strings_at(&created.detail, "not_added"));
                }
                group.chat_id = Some(chat_id.clone());
                raw = self.save(ctx, &state_key, &raw, &group).await?;
                chat_id
            }
        };

        // 3. Add the members that are still to add. A failure is kept as pending (the
        // next request retries) and reported; the group exists either way.
        let mut not_added: Vec<String> = Vec::new();
        let mut failure: Option<String> = None;
        for (members, id_type) in [
            (&ids_to_add, self.config.member_id_type.clone()),
            (&emails_to_add, Some("email".to_string())),
        ] {
            if members.is_empty() {
                continue;
            }
            let step = format!(
                "{state_key}/members/{}/{}",
                event.id,
                id_type.as_deref().unwrap_or("id")
            );
            match ctx
                .call_once(
                    &connector,
                    Operation::AddMembers {
                        chat_id: chat_id.clone(),
                        members: members.clone(),
                        member_id_type: id_type,
                    },
                    &step,
                )
                .await
            {
                Ok(added) => not_added.extend(strings_at(&added.detail, "not_added")),
                Err(e) => failure = Some(e.to_string()),
            }
        }
        if let Some(error) = &failure {
            tracing::warn!(event = %event.id, project = %key, %error, "adding members to the project group failed; kept as pending");
            group.pending = Some(PendingMembers {
                ids: ids_to_add.clone(),
                emails: emails_to_add.clone(),
                error: error.clone(),
            });
        }
        group.welcomed = true;
        self.save(ctx, &state_key, &raw, &group).await?;

        // 4. The welcome card once per project, the note about members, the answer.
        let mut actions = Vec::new();
        if welcome {
            actions.push(
                Action::Send {
                    connector: Some(connector.clone()),
                    to: Target::chat(chat_id.clone()),
                    body: self.welcome(event, ctx, &name, &fields, &ids, &emails)?,
                }
                .once(format!("{state_key}/welcome")),
            );
        }
        let mut report = String::new();
        if !not_added.is_empty() {
            let who = not_added.iter().map(|w| md::code(w)).collect::<Vec<_>>();
            report.push_str(&t!(
                "auto_group.could_not_add",
                locale = locale,
                who = who.join(", ")
            ));
        }
        if let Some(error) = &failure {
            let who: Vec<&String> = ids_to_add.iter().chain(&emails_to_add).collect();
            let who = who.iter().map(|w| md::code(w)).collect::<Vec<_>>();
            let note = t!(
                "auto_group.adding_failed_note",
                locale = locale,
                who = who.join(", "),
                error = md::escape(error)
            )
            .into_owned();
            actions.push(Action::Send {
                connector: Some(connector.clone()),
                to: Target::chat(chat_id.clone()),
                body: MessageBody::markdown(note),
            });
            report.push_str(&t!(
                "auto_group.adding_failed",
                locale = locale,
                error = md::escape(error)
            ));
        }
        let done = if resumed {
            "auto_group.finished"
        } else {
            "auto_group.created"
        };
        actions.extend(answer(
            t!(
                done,
                locale = locale,
                name = md::escape(&name),
                chat = md::code(&chat_id),
                report = report
            )
            .into_owned(),
        ));
        Ok(actions)
    }
}

/// The strings of the array at `field` of a delivery's detail.
fn strings_at(detail: &serde_json::Value, field: &str) -> Vec<String> {
    detail
        .get(field)
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

impl AutoGroup {
    /// Step 1: hold the project key for this event, or say why there is nothing to do.
    async fn claim(
        &self,
        event: &Event,
        ctx: &BotContext,
        state_key: &str,
        name: &str,
        connector: &str,
        answer: &(dyn Fn(String) -> Vec<Action> + Sync),
    ) -> Result<Claim, BotError> {
        let now = ctx.clock.now();
        let mine = ProjectGroup {
            name: name.to_string(),
            chat_id: None,
            connector: connector.to_string(),
            event: event.id.to_string(),
            claimed_at: Some(now),
            pending: None,
            welcomed: false,
        };
        // Two tries: a claim released between our attempt and our read is claimed anew.
        for _ in 0..2 {
            if ctx.state_claim(state_key, &mine).await? {
                let raw = serde_json::to_vec(&mine).map_err(StoreError::from)?;
                return Ok(Claim::Held(mine, raw, false));
            }
            let Some((existing, raw)) = ctx.state_entry::<ProjectGroup>(state_key).await? else {
                continue;
            };
            if existing.event == mine.event {
                // Our own claim: a re-run of this event after a crash. The awaited calls
                // return their recorded results; nothing is created twice.
                return Ok(Claim::Held(existing, raw, true));
            }
            if existing.is_complete() {
                let id = existing.chat_id.as_deref().unwrap_or_default();
                return Ok(Claim::Answer(answer(
                    t!(
                        "auto_group.exists",
                        locale = ctx.locale(),
                        name = md::escape(&existing.name),
                        chat = md::code(id)
                    )
                    .into_owned(),
                )));
            }
            let fresh = existing.chat_id.is_none()
                && existing.claimed_at.is_some_and(|at| {
                    (now - at).to_std().unwrap_or_default() < self.config.claim_timeout
                });
            if fresh {
                return Ok(Claim::Answer(answer(
                    t!(
                        "auto_group.being_created",
                        locale = ctx.locale(),
                        name = md::escape(&existing.name)
                    )
                    .into_owned(),
                )));
            }
            // A stale claim, or a group whose members are pending: take it over and
            // finish it.
            let taken = ProjectGroup {
                event: mine.event.clone(),
                claimed_at: Some(now),
                ..existing
            };
            if ctx.state_replace(state_key, &raw, Some(&taken)).await? {
                tracing::info!(event = %event.id, key = %state_key, "resuming an unfinished project group");
                let raw = serde_json::to_vec(&taken).map_err(StoreError::from)?;
                return Ok(Claim::Held(taken, raw, false));
            }
        }
        Ok(Claim::Answer(answer(
            t!(
                "auto_group.being_created",
                locale = ctx.locale(),
                name = md::escape(name)
            )
            .into_owned(),
        )))
    }

    /// Record `group` in place of `raw` (the record this event holds); the new bytes.
    async fn save(
        &self,
        ctx: &BotContext,
        state_key: &str,
        raw: &[u8],
        group: &ProjectGroup,
    ) -> Result<Vec<u8>, BotError> {
        if !ctx.state_replace(state_key, raw, Some(group)).await? {
            // Only a takeover of a claim we held past `claim_timeout` can do this; the
            // steps are the project's, so whoever holds it now finishes them.
            return Err(BotError::Other(format!(
                "the claim on {state_key} was taken over by another request"
            )));
        }
        Ok(serde_json::to_vec(group).map_err(StoreError::from)?)
    }

    /// The welcome message, shaped for cards/welcome.hbs.
    fn welcome(
        &self,
        event: &Event,
        ctx: &BotContext,
        name: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
        ids: &[String],
        emails: &[String],
    ) -> Result<MessageBody, BotError> {
        let requester = event
            .sender
            .as_ref()
            .map(|s| s.name.clone().unwrap_or_else(|| s.id.clone()));
        let mut data = serde_json::json!({
            "name": name,
            "group": name,
            "project": fields.get("project").and_then(|v| v.as_str()).unwrap_or(name),
            "owner": requester.clone().unwrap_or_else(|| "perch".to_string()),
            "fields": fields,
            "members": ids.iter().chain(emails).collect::<Vec<_>>(),
            "requester": requester,
            "source": event
                .topic
                .clone()
                .unwrap_or_else(|| t!("auto_group.a_chat_command", locale = ctx.locale()).into_owned()),
        });
        for f in ["customer", "code"] {
            if let Some(v) = fields.get(f) {
                data[f] = v.clone();
            }
        }
        Ok(match &self.config.welcome_template {
            Some(t) => ctx.card(t, &data)?,
            None => MessageBody::markdown(
                t!(
                    "auto_group.welcome",
                    locale = ctx.locale(),
                    name = md::escape(name)
                )
                .into_owned(),
            ),
        })
    }
}

/// `kind = "auto_group"` (registered in `super::register_builtin`).
impl BotKind for AutoGroup {
    type Config = AutoGroupConfig;
    fn build(name: &str, config: AutoGroupConfig) -> Result<Self, BotError> {
        AutoGroup::new(name, config)
    }
    fn validate(
        name: &str,
        config: &AutoGroupConfig,
        at: usize,
        all: &Config,
        issues: &mut Issues,
    ) {
        config.validate(name, at, all, issues);
    }
}
