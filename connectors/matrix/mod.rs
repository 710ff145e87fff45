//! `kind = "matrix"`: a bot account on a Matrix homeserver, over the client-server API.
//!
//! Flow: homeserver → `/sync` long poll (**`sync.rs`**, a background task) → decode
//! (`events.rs`) → journal → router → bots → outbox → **this connector** (`api.rs`:
//! `PUT /rooms/{room}/send/...`).
//!
//! - **Inbound** is the sync loop: no public URL is needed. A batch's `next_batch` is
//!   stored only after its events are durable in the journal (deduplicated by event id),
//!   so a restart neither loses nor repeats a message. Invitations are accepted.
//! - **Messages** go out as `m.notice` (the spec's type for bots: other bots do not
//!   answer notices; `msgtype = "text"` for `m.text`). Markdown and cards carry
//!   `format: org.matrix.custom.html` + `formatted_body`; MXIDs in the text become
//!   pills and are listed in `m.mentions.user_ids`, and nobody else is pinged.
//!   Replies use `m.in_reply_to`.
//! - **Idempotency:** every send is `PUT /rooms/{room}/send/{type}/{txnId}` with the
//!   outbox key as the transaction id, so a retry (after a lost answer or a crash) is
//!   the same event. The access token obtained by `password` login is kept in the
//!   store, and the device id is fixed, since transaction ids are scoped to the device.
//! - **Buttons** are reactions: after a card with action buttons is sent, the bot
//!   reacts to it with each button's label (`m.annotation`), so Element shows them as
//!   clickable chips under the card; a person's click on a chip (reacting with the same
//!   key) is the button press, routed to the bot that sent the card. Replying to the
//!   card with a label works too, for clients without reactions. The card's buttons
//!   are kept in the store by its event id.
//! - **Card updates** are edits: `m.new_content` + `m.relates_to` `rel_type:
//!   m.replace`; the bot's chips for buttons the new card no longer has are redacted.
//! - **Chats:** `POST /createRoom` (private), then one invite per member, reported per
//!   member, and the owner raised to power 100. Matrix has no idempotency key for
//!   room creation: perch remembers the room it made per outbox key, so a retry after
//!   a crash *after* that record finds it; a crash between creation and the record
//!   would make a second room (a narrow window, noted here on purpose).
//! - **Rate limits:** `M_LIMIT_EXCEEDED` with `retry_after_ms`, or HTTP 429 →
//!   `SendError::RateLimited`.
//!
//! **Types:** small hand-written serde/`serde_json` code, not `ruma`: perch uses a dozen
//! endpoints and reads a few fields of each; ruma's event types are a large compile on
//! two cores for that, and matrix-sdk brings SQLite and crypto perch does not need (no
//! end-to-end encryption: the bot does not read encrypted rooms).

pub mod api;
pub mod events;
pub mod sync;

use super::*;
use crate::action::{ChatSpec, MessageBody, Target};
use crate::cards::model::{Card, Element};
use crate::config::{EnvString, Secret};
use api::{ApiClient, ApiError, seg};
use events::CardButton;
use serde::Serialize;
use serde_json::{Value, json};

fn default_device_id() -> String {
    "PERCH".to_string()
}
fn default_msgtype() -> MsgType {
    MsgType::Notice
}
fn default_sync_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_rate_per_second() -> u32 {
    5
}

/// Which `msgtype` perch's messages use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MsgType {
    /// `m.notice`: what the spec recommends for bots (other bots ignore notices).
    Notice,
    /// `m.text`: like a person's message.
    Text,
}

impl MsgType {
    fn as_str(self) -> &'static str {
        match self {
            MsgType::Notice => "m.notice",
            MsgType::Text => "m.text",
        }
    }
}

/// `[connectors.<name>] kind = "matrix"`: a bot account on a homeserver.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// Language of perch's built-in texts for people on this connector: `en` or
    /// `zh-CN` (default: `[server] locale`). A bot's own `locale` wins.
    #[serde(default)]
    pub locale: Option<crate::i18n::Locale>,
    /// The homeserver's client-server API base URL (`https://matrix.example.org`; the
    /// address clients use, not the server name).
    pub homeserver: EnvString,
    /// The bot's full user id, `@perch:example.org`.
    pub user_id: EnvString,
    /// An access token of the bot account (`${MATRIX_ACCESS_TOKEN}`). Either this or
    /// `password`.
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// The bot account's password: perch logs in once and keeps the token in its store.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The device perch logs in as (transaction ids are scoped to it).
    #[serde(default = "default_device_id")]
    pub device_id: String,
    /// Names people write for the bot without a mention pill (`perch: help`); the
    /// user id's localpart is always one.
    #[serde(default)]
    pub display_names: Vec<String>,
    /// `notice` (default; bots should send notices) or `text`.
    #[serde(default = "default_msgtype")]
    pub msgtype: MsgType,
    /// Accept every invitation to a room.
    #[serde(default = "default_true")]
    pub auto_join: bool,
    /// How long one `/sync` long poll waits for news.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_sync_timeout",
        deserialize_with = "crate::config::de_duration"
    )]
    pub sync_timeout: Duration,
    /// Messages per second across the account. [unverified] Synapse's default
    /// `rc_message` is 0.2/s with a burst of 10 per user; homeservers set their own, and
    /// bots are often exempted (`ratelimit_override`). An `M_LIMIT_EXCEEDED` pauses the
    /// connector for `retry_after_ms` whatever this says.
    #[serde(default = "default_rate_per_second")]
    pub rate_per_second: u32,
}

impl MatrixConfig {
    pub fn validate(&self, name: &str, at: usize, issues: &mut crate::config::Issues) {
        match reqwest::Url::parse(&self.homeserver) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => issues.at(at, format!("connector `{name}`: homeserver {:?} is not an http(s) URL (e.g. https://matrix.example.org)", self.homeserver.0)),
        }
        if !events::MXID
            .find(&self.user_id)
            .is_some_and(|m| m.start() == 0 && m.end() == self.user_id.len())
        {
            issues.at(
                at,
                format!(
                    "connector `{name}`: user_id {:?} is not a Matrix user id (`@name:server`)",
                    self.user_id.0
                ),
            );
        }
        let token = self.access_token.as_ref().is_some_and(|s| !s.is_empty());
        let password = self.password.as_ref().is_some_and(|s| !s.is_empty());
        match (token, password) {
            (false, false) => issues.at(at, format!("connector `{name}`: set `access_token` (e.g. \"${{MATRIX_ACCESS_TOKEN}}\") or `password` for the bot account")),
            (true, true) => issues.at(at, format!("connector `{name}`: set `access_token` or `password`, not both")),
            _ => {}
        }
        if self.device_id.trim().is_empty() {
            issues.at(at, format!("connector `{name}`: device_id is empty"));
        }
        if self.rate_per_second == 0 {
            issues.at(
                at,
                format!("connector `{name}`: rate_per_second must be at least 1"),
            );
        }
        if self.sync_timeout > Duration::from_secs(300) {
            issues.at(at, format!("connector `{name}`: sync_timeout is longer than 5m (proxies cut long polls; 30s is usual)"));
        }
    }
}

/// A card perch sent, as the store keeps it: its room, its buttons, and the bot's own
/// reactions (the chips), by key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CardRecord {
    pub room: String,
    pub buttons: Vec<CardButton>,
    #[serde(default)]
    pub chips: BTreeMap<String, String>,
}

pub struct Matrix {
    name: String,
    config: MatrixConfig,
    api: Arc<ApiClient>,
    store: Arc<dyn Store>,
    /// The sync loop's state, for `describe()`.
    status: Arc<sync::SyncStatus>,
}

/// Store keys (namespace `matrix:<connector>`).
pub mod keys {
    pub const NEXT_BATCH: &str = "next_batch";
    pub const ACCESS_TOKEN: &str = "access_token";
    pub fn card(event_id: &str) -> String {
        format!("card/{event_id}")
    }
    pub fn dm(user: &str) -> String {
        format!("dm/{user}")
    }
    pub fn direct(room: &str) -> String {
        format!("direct/{room}")
    }
    pub fn created(key: &str) -> String {
        format!("created/{key}")
    }
}

/// The store namespace of connector `name`.
pub fn namespace(name: &str) -> String {
    format!("matrix:{name}")
}

fn store_error(e: crate::store::StoreError) -> SendError {
    SendError::retry(format!("store: {e}"))
}

/// The action buttons of a neutral card, as reaction keys (labels, each once).
pub fn card_buttons(card: &Card) -> Vec<CardButton> {
    let mut out: Vec<CardButton> = Vec::new();
    for e in &card.elements {
        if let Element::Buttons { buttons } = e {
            for b in buttons {
                if let Some(a) = &b.action
                    && !out.iter().any(|o| o.key == b.label)
                {
                    out.push(CardButton {
                        key: b.label.clone(),
                        bot: a.bot.clone(),
                        action: a.action.clone(),
                        args: a.args.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Add pills and `m.mentions` for the MXIDs written in `text` to `content`, whose
/// `formatted_body` (if any) is HTML of the same text. No MXID: an empty `m.mentions`,
/// so nobody is pinged by accident (intentional mentions, spec v1.7).
fn with_mentions(mut content: Value, text: &str) -> Value {
    let mut ids: Vec<String> = Vec::new();
    for m in events::MXID.find_iter(text) {
        if !ids.iter().any(|i| i == m.as_str()) {
            ids.push(m.as_str().to_string());
        }
    }
    if !ids.is_empty() {
        let html = match content.get("formatted_body").and_then(Value::as_str) {
            Some(h) => h.to_string(),
            None => crate::cards::markdown::escape_html(text),
        };
        let pilled = events::MXID.replace_all(&html, |c: &regex::Captures| {
            format!("<a href=\"https://matrix.to/#/{0}\">{0}</a>", &c[0])
        });
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(pilled);
    }
    content["m.mentions"] = json!({ "user_ids": ids });
    content
}

/// The `m.room.message` content of a body, and a card's buttons.
pub fn message_content(
    body: &MessageBody,
    msgtype: MsgType,
) -> Result<(Value, Vec<CardButton>), SendError> {
    Ok(match body {
        MessageBody::Text { text } => (
            with_mentions(json!({ "msgtype": msgtype.as_str(), "body": text }), text),
            Vec::new(),
        ),
        MessageBody::Markdown { text } => (
            with_mentions(
                json!({
                    "msgtype": msgtype.as_str(),
                    "body": crate::cards::markdown::to_plain(text),
                    "format": "org.matrix.custom.html",
                    "formatted_body": crate::cards::markdown::to_html(text),
                }),
                text,
            ),
            Vec::new(),
        ),
        MessageBody::Card { card } => {
            let parsed =
                Card::parse(card).map_err(|e| SendError::Permanent(format!("card: {e}")))?;
            let mut content = crate::cards::render_card("matrix", &parsed)
                .map_err(|e| SendError::Permanent(format!("card: {e}")))?;
            content["msgtype"] = json!(msgtype.as_str());
            content["m.mentions"] = json!({ "user_ids": [] });
            (content, card_buttons(&parsed))
        }
    })
}

impl Matrix {
    /// Build the connector and start its sync loop (when a runtime is running).
    pub fn start(name: &str, config: MatrixConfig, env: &ConnectorEnv) -> Arc<Self> {
        let matrix = Arc::new(Matrix::new(name, config, env));
        let client = sync::SyncLoop {
            matrix: Arc::downgrade(&matrix),
            name: name.to_string(),
            journal: env.journal.clone(),
            store: env.store.clone(),
            clock: env.clock.clone(),
            cancel: env.cancel.clone(),
            status: matrix.status.clone(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(client.run());
            }
            Err(_) => {
                tracing::error!(connector = %name, "no async runtime: the Matrix sync loop is not started")
            }
        }
        matrix
    }

    pub fn new(name: &str, config: MatrixConfig, env: &ConnectorEnv) -> Self {
        let token = config
            .access_token
            .as_ref()
            .map(|t| t.expose().to_string())
            .filter(|t| !t.is_empty());
        Matrix {
            name: name.to_string(),
            api: Arc::new(ApiClient::new(env.http.clone(), &config.homeserver, token)),
            store: env.store.clone(),
            status: Arc::default(),
            config,
        }
    }

    pub fn config(&self) -> &MatrixConfig {
        &self.config
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    fn ns(&self) -> String {
        namespace(&self.name)
    }

    /// The names people write for the bot: configured display names and the localpart.
    pub fn bot_names(&self) -> Vec<String> {
        let mut names = self.config.display_names.clone();
        if let Some(local) = self
            .config
            .user_id
            .strip_prefix('@')
            .and_then(|u| u.split(':').next())
        {
            names.push(local.to_string());
        }
        names
    }

    /// Make sure perch holds an access token: the configured one, the one stored by an
    /// earlier login, or a new `password` login (stored before use, so a restart reuses
    /// it and its device).
    pub async fn ensure_token(&self) -> Result<(), SendError> {
        if self.api.token().is_some() {
            return Ok(());
        }
        let ns = self.ns();
        if let Some(t) = self
            .store
            .kv_get(&ns, keys::ACCESS_TOKEN)
            .await
            .map_err(store_error)?
        {
            self.api.set_token(String::from_utf8_lossy(&t).into_owned());
            return Ok(());
        }
        let Some(password) = self.config.password.as_ref() else {
            return Err(SendError::Permanent(
                "no access_token and no password configured".into(),
            ));
        };
        let doc = self
            .api
            .post(
                "/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": self.config.user_id.0 },
                    "password": password.expose(),
                    "device_id": self.config.device_id,
                    "initial_device_display_name": "perch",
                }),
                "login",
            )
            .await?;
        let token = doc
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| SendError::Permanent("login: no access_token in the answer".into()))?
            .to_string();
        self.store
            .kv_put(&ns, keys::ACCESS_TOKEN, token.as_bytes())
            .await
            .map_err(store_error)?;
        self.store.flush().await.map_err(store_error)?;
        self.api.set_token(token);
        Ok(())
    }

    /// Forget a stored token the homeserver refused (`M_UNKNOWN_TOKEN`), so the next
    /// attempt logs in again. A configured token is the operator's to fix.
    async fn drop_refused_token(&self, e: &ApiError) {
        if e.errcode() == Some("M_UNKNOWN_TOKEN") && self.config.password.is_some() {
            let _ = self.store.kv_delete(&self.ns(), keys::ACCESS_TOKEN).await;
            self.api.clear_token();
        }
    }

    /// `PUT /rooms/{room}/send/{type}/{txn}`: the event id. The same `txn` again is the
    /// same event (the homeserver answers with the first event id).
    async fn send_event(
        &self,
        room: &str,
        event_type: &str,
        content: &Value,
        txn: &str,
    ) -> Result<String, SendError> {
        self.ensure_token().await?;
        let path = format!("/rooms/{}/send/{}/{}", seg(room), seg(event_type), seg(txn));
        let doc = match self
            .api
            .put(&path, content, &format!("send {event_type}"))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                self.drop_refused_token(&e).await;
                return Err(e.into());
            }
        };
        doc.get("event_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                SendError::Permanent(format!("send {event_type}: no event_id in the answer"))
            })
    }

    /// The room of a target: a room id as it is, a person's direct room (made on first
    /// use and remembered).
    async fn room_of(&self, to: &Target, key: &str) -> Result<String, SendError> {
        match to {
            Target::Chat { id } => Ok(id.clone()),
            Target::Person { id, id_type } => {
                if !matches!(id_type.as_deref(), None | Some("user_id") | Some("id")) {
                    return Err(SendError::Permanent(format!(
                        "id_type {:?} is not supported on Matrix (use user ids, @name:server)",
                        id_type.as_deref().unwrap_or_default()
                    )));
                }
                let ns = self.ns();
                if let Some(room) = self
                    .store
                    .kv_get(&ns, &keys::dm(id))
                    .await
                    .map_err(store_error)?
                {
                    return Ok(String::from_utf8_lossy(&room).into_owned());
                }
                let room = self
                    .create_room(
                        &json!({ "preset": "trusted_private_chat", "is_direct": true, "invite": [id] }),
                        &format!("{key}/dm"),
                    )
                    .await?;
                self.store
                    .kv_put(&ns, &keys::dm(id), room.as_bytes())
                    .await
                    .map_err(store_error)?;
                self.store
                    .kv_put(&ns, &keys::direct(&room), b"1")
                    .await
                    .map_err(store_error)?;
                self.store.flush().await.map_err(store_error)?;
                Ok(room)
            }
        }
    }

    /// `POST /createRoom`, remembered under `created/<key>` so a retry finds the room.
    async fn create_room(&self, body: &Value, key: &str) -> Result<String, SendError> {
        self.ensure_token().await?;
        let ns = self.ns();
        if let Some(room) = self
            .store
            .kv_get(&ns, &keys::created(key))
            .await
            .map_err(store_error)?
        {
            return Ok(String::from_utf8_lossy(&room).into_owned());
        }
        let doc = self.api.post("/createRoom", body, "createRoom").await?;
        let room = doc
            .get("room_id")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| SendError::Permanent("createRoom: no room_id in the answer".into()))?
            .to_string();
        self.store
            .kv_put(&ns, &keys::created(key), room.as_bytes())
            .await
            .map_err(store_error)?;
        self.store.flush().await.map_err(store_error)?;
        Ok(room)
    }

    async fn card_record(&self, event_id: &str) -> Result<Option<CardRecord>, SendError> {
        Ok(self
            .store
            .kv_get(&self.ns(), &keys::card(event_id))
            .await
            .map_err(store_error)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    async fn save_card(&self, event_id: &str, record: &CardRecord) -> Result<(), SendError> {
        let v = serde_json::to_vec(record).map_err(|e| SendError::Permanent(e.to_string()))?;
        self.store
            .kv_put(&self.ns(), &keys::card(event_id), &v)
            .await
            .map_err(store_error)?;
        self.store.flush().await.map_err(store_error)
    }

    /// Make the bot's chips under card `event_id` match `buttons`: react with each new
    /// key, redact the reactions of keys the card no longer has. Each step has its own
    /// transaction id derived from `key`, so repeating this (a retry) repeats nothing.
    async fn sync_chips(
        &self,
        room: &str,
        event_id: &str,
        buttons: Vec<CardButton>,
        key: &str,
    ) -> Result<(), SendError> {
        let mut record = self.card_record(event_id).await?.unwrap_or_default();
        record.room = room.to_string();
        record.buttons = buttons;
        // Record the buttons first: a click on a chip that exists must find them.
        self.save_card(event_id, &record).await?;
        let stale: Vec<(String, String)> = record
            .chips
            .iter()
            .filter(|(k, _)| !record.buttons.iter().any(|b| &b.key == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (label, reaction) in stale {
            self.ensure_token().await?;
            let path = format!(
                "/rooms/{}/redact/{}/{}",
                seg(room),
                seg(&reaction),
                seg(&format!("{key}/unreact/{label}"))
            );
            match self.api.put(&path, &json!({}), "redact").await {
                Ok(_) => {}
                // Gone already: nothing to take back.
                Err(e) if e.errcode() == Some("M_NOT_FOUND") => {}
                Err(e) => return Err(e.into()),
            }
            record.chips.remove(&label);
            self.save_card(event_id, &record).await?;
        }
        let new: Vec<String> = record
            .buttons
            .iter()
            .filter(|b| !record.chips.contains_key(&b.key))
            .map(|b| b.key.clone())
            .collect();
        for label in new {
            let content = json!({ "m.relates_to": {
                "rel_type": "m.annotation", "event_id": event_id, "key": label } });
            let reaction = self
                .send_event(
                    room,
                    "m.reaction",
                    &content,
                    &format!("{key}/react/{label}"),
                )
                .await?;
            record.chips.insert(label, reaction);
            self.save_card(event_id, &record).await?;
        }
        Ok(())
    }

    async fn send(
        &self,
        to: &Target,
        body: &MessageBody,
        reply_to: Option<&str>,
        key: &str,
    ) -> Result<Delivered, SendError> {
        let (mut content, buttons) = message_content(body, self.config.msgtype)?;
        let room = self.room_of(to, key).await?;
        if let Some(parent) = reply_to {
            content["m.relates_to"] = json!({ "m.in_reply_to": { "event_id": parent } });
        }
        let event_id = self
            .send_event(&room, "m.room.message", &content, key)
            .await?;
        if !buttons.is_empty() {
            self.sync_chips(&room, &event_id, buttons, key).await?;
        }
        Ok(Delivered {
            id: Some(event_id),
            detail: json!({ "chat_id": room }),
        })
    }

    /// An edit of the card `message_id`: `m.new_content` + `m.replace` (clients show
    /// the new content in place). The room comes from the operation or the card record.
    async fn update(
        &self,
        chat_id: Option<&str>,
        message_id: &str,
        body: &MessageBody,
        key: &str,
    ) -> Result<Delivered, SendError> {
        let record = self.card_record(message_id).await?;
        let room = match (chat_id, &record) {
            (Some(c), _) => c.to_string(),
            (None, Some(r)) => r.room.clone(),
            (None, None) => {
                return Err(SendError::Permanent(format!(
                    "cannot edit Matrix event {message_id}: its room is unknown"
                )));
            }
        };
        let (new_content, buttons) = message_content(body, self.config.msgtype)?;
        let mut edit = new_content.clone();
        if let Some(b) = edit.get("body").and_then(Value::as_str) {
            edit["body"] = json!(format!("* {b}"));
        }
        if let Some(h) = edit.get("formatted_body").and_then(Value::as_str) {
            edit["formatted_body"] = json!(format!("* {h}"));
        }
        edit["m.new_content"] = new_content;
        edit["m.relates_to"] = json!({ "rel_type": "m.replace", "event_id": message_id });
        self.send_event(&room, "m.room.message", &edit, key).await?;
        if record.is_some() || !buttons.is_empty() {
            self.sync_chips(&room, message_id, buttons, key).await?;
        }
        Ok(Delivered {
            id: Some(message_id.to_string()),
            detail: json!({ "chat_id": room }),
        })
    }

    /// Invite each member; someone already in the room counts as added.
    async fn invite(
        &self,
        room: &str,
        members: &[String],
        report: &mut MemberReport,
    ) -> Result<(), SendError> {
        for m in members {
            if !is_user_id(m) {
                report.not_added.push(m.clone());
                report
                    .errors
                    .push(format!("{m:?} is not a Matrix user id (@name:server)"));
                continue;
            }
            match self
                .api
                .post(
                    &format!("/rooms/{}/invite", seg(room)),
                    &json!({ "user_id": m }),
                    "invite",
                )
                .await
            {
                Ok(_) => report.added.push(m.clone()),
                Err(e)
                    if e.errcode() == Some("M_FORBIDDEN")
                        && e.message()
                            .is_some_and(|t| t.contains("already in the room")) =>
                {
                    report.added.push(m.clone())
                }
                Err(e) if !e.is_transient() => {
                    report.not_added.push(m.clone());
                    report.errors.push(e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn check_member_type(id_type: Option<&str>) -> Result<(), SendError> {
        match id_type {
            None | Some("user_id") | Some("id") => Ok(()),
            Some(other) => Err(SendError::Permanent(format!(
                "member_id_type {other:?} is not supported on Matrix (use user ids, @name:server; inviting by e-mail needs an identity server)"
            ))),
        }
    }

    async fn create_chat(&self, spec: &ChatSpec, key: &str) -> Result<Delivered, SendError> {
        Self::check_member_type(spec.member_id_type.as_deref())?;
        let mut wanted = spec.members.clone();
        if let Some(owner) = &spec.owner
            && !wanted.contains(owner)
        {
            wanted.push(owner.clone());
        }
        let mut body = json!({ "name": spec.name, "preset": "private_chat" });
        if let Some(d) = &spec.description {
            body["topic"] = json!(d);
        }
        let room = self.create_room(&body, key).await?;
        let mut report = MemberReport::default();
        // The room exists now: failing to invite must not fail the creation (a caller
        // would create it again); it is reported for a later `AddMembers`.
        let members_error = self.invite(&room, &wanted, &mut report).await.err();
        let mut detail = report.detail(&room);
        detail["name"] = json!(spec.name);
        if let Some(owner) = spec.owner.as_ref().filter(|o| is_user_id(o))
            && let Err(e) = self.promote(&room, owner).await
        {
            detail["owner_error"] = json!(e.to_string());
        }
        if let Some(e) = members_error {
            detail["members_error"] = json!(e.to_string());
            detail["not_added"] = json!(wanted);
        }
        Ok(Delivered {
            id: Some(room),
            detail,
        })
    }

    /// Give `user` power 100 in `room` (the owner of a created chat). Not at creation
    /// (`power_level_content_override`): room version 12 refuses the creator in the
    /// power levels' `users`, and older versions would lose the creator's 100 when the
    /// map is replaced, so the current levels are read and one entry is added.
    async fn promote(&self, room: &str, user: &str) -> Result<(), SendError> {
        let path = format!("/rooms/{}/state/m.room.power_levels/", seg(room));
        let mut levels = self.api.get(&path, &[], "power levels").await?;
        if levels.pointer(&format!(
            "/users/{}",
            user.replace('~', "~0").replace('/', "~1")
        )) == Some(&json!(100))
        {
            return Ok(());
        }
        if !levels.get("users").is_some_and(Value::is_object) {
            levels["users"] = json!({});
        }
        levels["users"][user] = json!(100);
        self.api.put(&path, &levels, "power levels").await?;
        Ok(())
    }

    async fn add_members(
        &self,
        room: &str,
        members: &[String],
        id_type: Option<&str>,
    ) -> Result<Delivered, SendError> {
        Self::check_member_type(id_type)?;
        self.ensure_token().await?;
        let mut report = MemberReport::default();
        self.invite(room, members, &mut report).await?;
        Ok(Delivered {
            id: Some(room.to_string()),
            detail: report.detail(room),
        })
    }
}

/// A whole string that is a Matrix user id.
fn is_user_id(s: &str) -> bool {
    events::MXID
        .find(s)
        .is_some_and(|m| m.start() == 0 && m.end() == s.len())
}

#[async_trait]
impl Connector for Matrix {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "matrix"
    }

    fn secrets(&self) -> Vec<&str> {
        [
            self.config.access_token.as_ref(),
            self.config.password.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .collect()
    }

    async fn execute(&self, op: &Operation, idempotency_key: &str) -> Result<Delivered, SendError> {
        match op {
            Operation::Send { to, body, reply_to } => {
                self.send(to, body, reply_to.as_deref(), idempotency_key)
                    .await
            }
            Operation::Update {
                chat_id,
                message_id,
                body,
            } => {
                self.update(chat_id.as_deref(), message_id, body, idempotency_key)
                    .await
            }
            Operation::CreateChat { spec } => self.create_chat(spec, idempotency_key).await,
            Operation::AddMembers {
                chat_id,
                members,
                member_id_type,
            } => {
                self.add_members(chat_id, members, member_id_type.as_deref())
                    .await
            }
        }
    }

    fn rate_limits(&self) -> RateLimits {
        RateLimits {
            per_second: Some(self.config.rate_per_second),
            burst: None,
            per_chat_per_second: None,
            per_minute: None,
        }
    }

    fn describe(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        m.insert("bot_user_id", self.config.user_id.to_string());
        m.insert("sync", self.status.describe());
        m
    }
}

impl crate::connectors::ConnectorKind for Matrix {
    type Config = MatrixConfig;

    fn build(
        name: &str,
        config: MatrixConfig,
        env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        Matrix::start(name, config, env)
    }

    fn validate(name: &str, config: &MatrixConfig, at: usize, issues: &mut crate::config::Issues) {
        config.validate(name, at, issues);
    }

    fn locale(config: &MatrixConfig) -> Option<crate::i18n::Locale> {
        config.locale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_by_kind_with_mentions() {
        let (t, b) =
            message_content(&MessageBody::text("hi @ann:example.org"), MsgType::Notice).unwrap();
        assert!(b.is_empty());
        assert_eq!(t["msgtype"], "m.notice");
        assert_eq!(t["body"], "hi @ann:example.org");
        assert_eq!(t["m.mentions"], json!({ "user_ids": ["@ann:example.org"] }));
        assert_eq!(
            t["formatted_body"],
            "hi <a href=\"https://matrix.to/#/@ann:example.org\">@ann:example.org</a>"
        );
        let (t, _) = message_content(&MessageBody::text("a < b"), MsgType::Text).unwrap();
        assert_eq!(t["msgtype"], "m.text");
        assert!(t.get("formatted_body").is_none());
        assert_eq!(t["m.mentions"], json!({ "user_ids": [] }));
        let (m, _) = message_content(&MessageBody::markdown("**b**"), MsgType::Notice).unwrap();
        assert_eq!(m["format"], "org.matrix.custom.html");
        assert!(
            m["formatted_body"]
                .as_str()
                .unwrap()
                .contains("<strong>b</strong>")
                || m["formatted_body"].as_str().unwrap().contains("<b>b</b>")
        );
        let card = json!({ "header": { "title": "Reminder" }, "elements": [
            { "type": "buttons", "buttons": [
                { "label": "Done", "action": { "bot": "rem", "action": "done", "args": { "id": 1 } } },
                { "label": "Docs", "url": "https://example.org" } ] } ] });
        let (c, b) = message_content(&MessageBody::Card { card }, MsgType::Notice).unwrap();
        assert_eq!(c["msgtype"], "m.notice");
        assert_eq!(c["format"], "org.matrix.custom.html");
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].key.as_str(), b[0].bot.as_str()), ("Done", "rem"));
        assert!(
            message_content(
                &MessageBody::Card {
                    card: json!({ "nope": 1 })
                },
                MsgType::Notice
            )
            .is_err()
        );
    }

    #[test]
    fn user_ids_are_recognised() {
        assert!(is_user_id("@perch:example.org"));
        assert!(is_user_id("@perch:localhost:8448"));
        assert!(!is_user_id("perch"));
        assert!(!is_user_id("@perch:example.org x"));
    }
}
