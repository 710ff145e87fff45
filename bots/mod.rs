//! Bots: each gets an event and a `BotContext` and returns `Action`s. Every built-in kind
//! is listed once, in `register_builtin` below (the registry is `registry.rs`);
//! `[bots.<name>] kind = "..."` picks one.
//!
//! Flow: connector (in) → journal → router → **bots** → outbox → connector (out).

pub(crate) mod auto_group;
pub(crate) mod daily_push;
pub(crate) mod echo;
pub(crate) mod greetings;
pub(crate) mod help;
pub(crate) mod http_bot;
pub(crate) mod notify;
pub(crate) mod query;
pub(crate) mod registry;
pub(crate) mod reminders;
pub(crate) mod schedule_date;
pub(crate) mod text_template;
pub(crate) mod when;

pub use crate::command::{Command, CommandSpec};
pub use registry::{BotKind, BotKinds, BotSpec};

use crate::action::{Action, Delivered, Operation};
use crate::clock::SharedClock;
use crate::config::{Config, Issues};
use crate::connectors::{SendError, SharedConnector};
use crate::event::{Event, EventId};
use crate::store::{SentRecord, Store, StoreError};
use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// Every built-in kind, one line each: the kind's name in `config.toml` and its type.
/// A user's own kinds register the same way (`Hub::builder().bot_kind::<T>("name")`).
pub(crate) fn register_builtin(kinds: &mut BotKinds) {
    kinds
        .add_with_schema::<help::Help>("help")
        .add_with_schema::<echo::Echo>("echo")
        .add_with_schema::<notify::Notify>("notify")
        .add_with_schema::<query::Query>("query")
        .add_with_schema::<auto_group::AutoGroup>("auto_group")
        .add_with_schema::<daily_push::DailyPush>("daily_push")
        .add_with_schema::<greetings::Greetings>("greetings")
        .add_with_schema::<reminders::Reminders>("reminders")
        .add_with_schema::<http_bot::HttpBot>("http_bot");
}

/// A bot failed. `User` errors are meant for the person who asked and are shown to them
/// as they are (a usage line, "no such project"); all others get a friendly apology that
/// names the event id, and a log line.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("{0}")]
    User(String),
    #[error("bad bot config: {0}")]
    Config(String),
    /// A template failed to compile or render; the text names the bot and template.
    #[error("{0}")]
    Template(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("platform call failed: {0}")]
    Send(#[from] SendError),
    /// A data source failed; the text is worded for the person who asked.
    #[error("{0}")]
    Source(#[from] crate::connectors::SourceError),
    #[error("{0}")]
    Other(String),
}

/// A bot: it gets one event and a [`BotContext`] and returns the [`Action`]s perch
/// should take (journaled, keyed and sent by the outbox, so none is taken twice). Give it
/// a config and register it with [`BotKind`]; test it with `perch::testing::TestHub`:
///
/// ```
/// use perch::{Action, Bot, BotContext, BotError, BotKind, Event};
/// use perch::bots::CommandSpec;
///
/// /// `@bot ping` answers `pong`, with the bot's configured suffix.
/// struct Ping { suffix: String }
///
/// #[async_trait::async_trait]
/// impl Bot for Ping {
///     fn commands(&self) -> Vec<CommandSpec> {
///         vec![CommandSpec::new("ping", "ping", "Answers pong")]
///     }
///     async fn handle(&self, _event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
///         match ctx.command.as_ref().map(|c| c.name.as_str()) {
///             Some("ping") => Ok(vec![Action::reply_text(format!("pong{}", self.suffix))]),
///             _ => Ok(vec![]),
///         }
///     }
/// }
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct PingConfig { suffix: String }
///
/// impl BotKind for Ping {
///     type Config = PingConfig;
///     fn build(_name: &str, config: PingConfig) -> Result<Self, BotError> {
///         Ok(Ping { suffix: config.suffix })
///     }
/// }
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// let config = r#"
/// [bots.ping]
/// kind = "ping"
/// suffix = "!"
///
/// [[routes]]
/// mention = "*"
/// bots = ["ping"]
/// "#;
/// let hub = perch::testing::TestHub::start(perch::Hub::builder().bot_kind::<Ping>("ping"), config).await;
/// let sent = hub.mention("@bot ping").await;
/// assert_eq!(sent.len(), 1);
/// assert_eq!(sent[0].text(), "pong!");
/// hub.stop().await;
/// # }
/// ```
#[async_trait]
pub trait Bot: Send + Sync + 'static {
    /// The commands it answers, for `help` and unknown-command hints.
    fn commands(&self) -> Vec<CommandSpec> {
        Vec::new()
    }
    /// The secret values in its config (after `${ENV}` expansion), so the console can
    /// show the config with each of them as `***`. Default: none.
    fn secrets(&self) -> Vec<&str> {
        Vec::new()
    }
    /// Handle one event. Must be deterministic enough that running it twice for the same
    /// event (after a crash) returns the same actions: they are deduplicated by index.
    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError>;

    /// For bots that post actions later (`http_bot`): check a request to
    /// `POST /api/bots/<name>/actions` (its signature) before anything is parsed.
    /// `None`, the default: this bot takes no such requests (404).
    fn check_late_actions(
        &self,
        _req: &crate::connectors::InboundRequest,
    ) -> Option<Result<(), crate::connectors::InboundError>> {
        None
    }

    /// For bots that keep items people act on (`reminders`): the open ones as of `now`,
    /// read from the bot's state in `store`, for the console's Bots page. `None`, the
    /// default: this bot keeps no such items.
    async fn open_items(
        &self,
        _store: &dyn Store,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Result<Vec<OpenItem>, BotError>> {
        None
    }
}

/// An item a person can act on from the console's Bots page (`Bot::open_items`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenItem {
    pub id: String,
    pub title: String,
    /// The owner's person id (the platform's, or a web-chat sign-in name).
    pub owner: String,
    pub owner_name: Option<String>,
    pub due: chrono::DateTime<chrono::Utc>,
    /// The chat its reminders go to; `None`: directly to the owner.
    pub chat: Option<String>,
    pub connector: String,
    pub snoozed_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The next reminder the bot will send: which step and when. `None`: nothing more.
    pub next_step: Option<NextStep>,
    /// The card's buttons that can be pressed from the page (`done`, `snooze`): each
    /// becomes a card click from the signed-in person.
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NextStep {
    /// `lead-1d`, `due`, `overdue-2`, `snoozed` …
    pub step: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The store namespace of bot `bot`'s persistent state (`BotContext::state_get`…).
pub fn state_namespace(bot: &str) -> String {
    format!("bot/{bot}")
}

/// Renders a named card template (`cards/<name>.hbs`) over data into perch's neutral
/// card JSON. The card engine implements it; bots see only this.
pub trait CardRenderer: Send + Sync {
    fn render_card(
        &self,
        template: &str,
        data: &serde_json::Value,
    ) -> Result<serde_json::Value, String>;
    fn has_template(&self, name: &str) -> bool;
}

impl CardRenderer for crate::cards::CardEngine {
    fn render_card(
        &self,
        template: &str,
        data: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        self.card_json(template, data).map_err(|e| e.to_string())
    }
    fn has_template(&self, name: &str) -> bool {
        self.template(name).is_some()
    }
}

/// What bots can see of the rest of perch.
pub struct Services {
    pub store: Arc<dyn Store>,
    pub connectors: HashMap<String, SharedConnector>,
    pub clock: SharedClock,
    pub cards: Arc<dyn CardRenderer>,
    /// Bots and their commands, with the connectors each is reachable from (for `help`).
    pub directory: Directory,
    /// The language of each bot's and connector's built-in texts.
    pub locales: crate::i18n::Locales,
    /// `[[permissions]]`, for bots that decide an `owner` rule themselves (`reminders`).
    pub permissions: Arc<crate::permissions::Permissions>,
}

/// Who is reachable where, with their commands.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    pub bots: Vec<BotInfo>,
}

#[derive(Debug, Clone)]
pub struct BotInfo {
    pub name: String,
    pub kind: &'static str,
    pub commands: Vec<CommandSpec>,
    /// Connectors whose events some route sends to this bot (`None` = any connector).
    pub connectors: Vec<Option<String>>,
}

impl Directory {
    /// Bots some route makes reachable from `connector`.
    pub fn reachable_from<'a>(
        &'a self,
        connector: &'a str,
    ) -> impl Iterator<Item = &'a BotInfo> + 'a {
        self.bots.iter().filter(move |b| {
            b.connectors
                .iter()
                .any(|c| c.as_deref().is_none_or(|c| c == connector))
        })
    }
}

/// A bot's view of perch while it handles one event.
pub struct BotContext {
    /// This bot's configured name.
    pub bot: String,
    /// The parsed command, for message events with text.
    pub command: Option<Command>,
    pub clock: SharedClock,
    services: Arc<Services>,
    event_id: EventId,
    /// The connector the event came from (for the locale).
    connector: String,
    calls: u32,
}

impl BotContext {
    pub fn new(bot: &str, event: &Event, services: Arc<Services>) -> Self {
        BotContext {
            bot: bot.to_string(),
            command: crate::command::parse(event),
            clock: services.clock.clone(),
            services,
            event_id: event.id,
            connector: event.connector.clone(),
            calls: 0,
        }
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The language this bot answers this event in (`en`, `zh-CN`): see `crate::i18n`.
    pub fn locale(&self) -> &'static str {
        self.services.locales.pick(Some(&self.bot), &self.connector)
    }

    fn state_ns(&self) -> String {
        state_namespace(&self.bot)
    }

    /// Read this bot's persistent state at `key`.
    pub async fn state_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, BotError> {
        match self.services.store.kv_get(&self.state_ns(), key).await? {
            Some(raw) => Ok(Some(
                serde_json::from_slice(&raw).map_err(StoreError::from)?,
            )),
            None => Ok(None),
        }
    }

    /// Write this bot's persistent state at `key`.
    pub async fn state_put<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), BotError> {
        let raw = serde_json::to_vec(value).map_err(StoreError::from)?;
        Ok(self
            .services
            .store
            .kv_put(&self.state_ns(), key, &raw)
            .await?)
    }

    /// Set `key` to `value` only if it is absent; whether this call set it. For "only
    /// one request may do this" (one group per project).
    pub async fn state_claim<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<bool, BotError> {
        let raw = serde_json::to_vec(value).map_err(StoreError::from)?;
        Ok(self
            .services
            .store
            .kv_compare_and_swap(&self.state_ns(), key, None, Some(&raw))
            .await?)
    }

    /// This bot's state at `key` with its stored bytes, for `state_replace`.
    pub async fn state_entry<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, Vec<u8>)>, BotError> {
        match self.services.store.kv_get(&self.state_ns(), key).await? {
            Some(raw) => {
                let value = serde_json::from_slice(&raw).map_err(StoreError::from)?;
                Ok(Some((value, raw)))
            }
            None => Ok(None),
        }
    }

    /// Replace the state at `key` with `new` (or delete it, for `None`) only if it still
    /// holds `old` (bytes from `state_entry`); whether this call changed it. For taking
    /// over or releasing a claim without clobbering someone else's.
    pub async fn state_replace<T: serde::Serialize>(
        &self,
        key: &str,
        old: &[u8],
        new: Option<&T>,
    ) -> Result<bool, BotError> {
        let new = new
            .map(serde_json::to_vec)
            .transpose()
            .map_err(StoreError::from)?;
        Ok(self
            .services
            .store
            .kv_compare_and_swap(&self.state_ns(), key, Some(old), new.as_deref())
            .await?)
    }

    pub async fn state_delete(&self, key: &str) -> Result<(), BotError> {
        Ok(self.services.store.kv_delete(&self.state_ns(), key).await?)
    }

    /// Every state entry whose key starts with `prefix`.
    pub async fn state_scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, BotError> {
        let mut out = Vec::new();
        for (k, raw) in self
            .services
            .store
            .kv_scan(&self.state_ns(), prefix)
            .await?
        {
            out.push((k, serde_json::from_slice(&raw).map_err(StoreError::from)?));
        }
        Ok(out)
    }

    /// Render the card template `template` over `data` as a message body.
    pub fn card(
        &self,
        template: &str,
        data: &serde_json::Value,
    ) -> Result<crate::action::MessageBody, BotError> {
        // Templates write labels as `{{tr "card.due"}}`, in the language of this answer.
        let mut data = data.clone();
        if let Some(fields) = data.as_object_mut() {
            fields
                .entry("_locale")
                .or_insert_with(|| serde_json::Value::String(self.locale().to_string()));
        }
        let card = self
            .services
            .cards
            .render_card(template, &data)
            .map_err(|e| {
                BotError::Template(format!("bot `{}`, card `{template}`: {e}", self.bot))
            })?;
        Ok(crate::action::MessageBody::Card { card })
    }

    /// The event id: a stable seed for anything a bot derives per event.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }

    /// Ask the data source `source` (an `http` or `file` connector) for JSON.
    pub async fn fetch(
        &self,
        source: &str,
        req: crate::connectors::DataRequest,
    ) -> Result<serde_json::Value, BotError> {
        let conn = self
            .services
            .connectors
            .get(source)
            .ok_or_else(|| BotError::Config(format!("no connector named `{source}`")))?;
        let src = conn.data_source().ok_or_else(|| {
            BotError::Config(format!("connector `{source}` is not a data source"))
        })?;
        Ok(src.fetch(&req).await?)
    }

    /// Carry out an operation now and return its result (the new chat's id, say), for
    /// actions whose result the bot needs. The call carries an idempotency key derived
    /// from the event, the bot and the call's position, and its result is recorded: if
    /// the bot runs again for the same event after a crash, it gets the recorded result
    /// and the platform is not called twice.
    pub async fn call(&mut self, connector: &str, op: Operation) -> Result<Delivered, BotError> {
        let key = format!("{}/{}/call{}", self.event_id, self.bot, self.calls);
        self.calls += 1;
        self.call_keyed(connector, op, key).await
    }

    /// `call` for a step that belongs to something longer-lived than one event (a
    /// project's group): the idempotency key is `once/<bot>/<step>`, whichever event
    /// makes the call, so a later request that resumes the step after a failure gets
    /// the recorded result, or the platform's idempotency returns what the first
    /// attempt created (Feishu: the same chat for 10 h).
    pub async fn call_once(
        &mut self,
        connector: &str,
        op: Operation,
        step: &str,
    ) -> Result<Delivered, BotError> {
        let key = format!("once/{}/{step}", self.bot);
        self.call_keyed(connector, op, key).await
    }

    async fn call_keyed(
        &mut self,
        connector: &str,
        op: Operation,
        key: String,
    ) -> Result<Delivered, BotError> {
        let store = &self.services.store;
        if let Some(done) = store.sent(&key).await? {
            return Ok(done.delivered);
        }
        let conn = self
            .services
            .connectors
            .get(connector)
            .ok_or_else(|| BotError::Config(format!("no connector named `{connector}`")))?
            .clone();
        // The connector is throttled (`crate::throttle`): this call waits on the same
        // quotas and platform-ordered pauses as the outbox's deliveries.
        let mut attempt = 0;
        let delivered = loop {
            let wait = match conn.execute(&op, &key).await {
                Ok(d) => break d,
                Err(SendError::Retry {
                    reason,
                    retry_after,
                }) if attempt < 3 => {
                    tracing::warn!(%key, %reason, "awaited call failed, retrying");
                    retry_after.unwrap_or(std::time::Duration::from_millis(250 << attempt))
                }
                // The throttle already waits out a pause the platform named.
                Err(SendError::RateLimited {
                    reason,
                    retry_after,
                    ..
                }) if attempt < 3 => {
                    tracing::info!(%key, %reason, "awaited call rate limited, retrying");
                    if retry_after.is_some() {
                        std::time::Duration::ZERO
                    } else {
                        std::time::Duration::from_millis(250 << attempt)
                    }
                }
                Err(e) => return Err(e.into()),
            };
            attempt += 1;
            tokio::time::sleep(wait.min(std::time::Duration::from_secs(10))).await;
        };
        store
            .record_sent(&SentRecord {
                key: key.clone(),
                connector: connector.to_string(),
                delivered: delivered.clone(),
                at: self.clock.now(),
            })
            .await?;
        Ok(delivered)
    }
}

/// A JSON value as a card shows it: text as it is, anything else as JSON.
pub(crate) fn cell_text(v: &serde_json::Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// An array of objects as a card table, `{"columns", "rows"}`, with the columns of the
/// first row; `None` if there is no first row or it is not an object.
pub(crate) fn table_of(rows: &[serde_json::Value]) -> Option<serde_json::Value> {
    let columns: Vec<String> = rows.first()?.as_object()?.keys().cloned().collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| r.get(c).map(cell_text).unwrap_or_default())
                .collect()
        })
        .collect();
    Some(serde_json::json!({ "columns": columns, "rows": cells }))
}
