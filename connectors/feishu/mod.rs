//! `kind = "feishu"`: a Feishu/Lark app bot. `kind = "feishu_webhook"` (a custom group
//! bot, send-only) lives in `webhook_bot.rs`.
//!
//! Flow: Feishu → `POST /hooks/<name>` (events and `card.action.trigger` callbacks) or
//! `POST /hooks/<name>/card` (the legacy card request URL) → **this connector** (verify,
//! decrypt, decode) → journal → router → bots → outbox → **this connector** (Open API).
//!
//! Inbound, in this order (refs `../shared/refs/chat-platforms.md` §1):
//! 1. the signature over the exact raw body is computed (SHA-256 with the encrypt key for
//!    events; SHA-1 with the verification token on the legacy card URL) — but judged
//!    only after step 3, because URL-verification challenges are never signed;
//! 2. `{"encrypt": …}` bodies are decrypted (AES-256-CBC). When the signature is missing
//!    or wrong, a decryption failure is reported as the signature failure, so an
//!    unauthenticated caller learns nothing about the plaintext (no padding oracle);
//! 3. a challenge is answered in plaintext after checking its token;
//! 4. anything else needs the signature (when an encrypt key is set) and always the
//!    verification token, compared in constant time; then it is decoded (`events.rs`).
//!
//! **The bot's own open_id** (to tell "@this bot" from "@someone"): `bot_open_id` in the
//! config wins; otherwise a background task fetches it from `/open-apis/bot/v3/info` at
//! start (retrying with backoff until it succeeds) and keeps it in a lock that
//! `handle_inbound` (sync, no I/O) only reads. A message that arrives before the answer
//! is decoded without a bot mention (logged, and the fetch is woken at once).
//!
//! Outbound: see `api.rs` (token cache, typed errors) and `execute` below.

pub mod api;
pub mod crypto;
pub mod events;
pub mod webhook_bot;
pub mod ws;

use super::*;
use crate::action::{ChatSpec, ClickAnswer, MessageBody, Target};
use crate::config::{EnvString, Secret};
use crate::event::EventKind;
use api::ApiClient;
use serde_json::{Value, json};
use std::sync::{RwLock, Weak};
use tokio::sync::Notify;

fn default_base_url() -> EnvString {
    EnvString("https://open.feishu.cn".to_string())
}
fn default_rate_per_second() -> u32 {
    50
}
fn default_rate_per_minute() -> u32 {
    1000
}
fn default_chat_rate() -> u32 {
    5
}
fn default_ws_endpoint_path() -> String {
    "/callback/ws/endpoint".into()
}
fn default_ws_ping_interval() -> Duration {
    Duration::from_secs(120)
}
fn default_ws_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_ws_reconnect_max() -> Duration {
    Duration::from_secs(120)
}
fn default_ws_reconnect_nonce() -> Duration {
    Duration::from_secs(30)
}
fn default_ws_fragment_ttl() -> Duration {
    Duration::from_secs(5)
}
fn empty_secret() -> Secret {
    Secret::new("")
}

/// How events and card callbacks reach perch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FeishuMode {
    /// Feishu POSTs to `/hooks/<name>`: perch needs a URL Feishu can reach.
    #[default]
    Webhook,
    /// perch opens Feishu's long connection (`ws.rs`): no public URL, no TLS certificate.
    Websocket,
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(300)
}

/// How a `markdown` message body is sent.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MarkdownAs {
    /// A `post` with one `md` element (formatting kept).
    #[default]
    Post,
    /// Plain `text` (the markdown source as is).
    Text,
}

/// `[connectors.<name>] kind = "feishu"`: an app bot on Feishu or Lark.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeishuConfig {
    /// Language of perch's built-in texts for people on this connector: `en` or
    /// `zh-CN` (default: `[server] locale`). A bot's own `locale` wins.
    #[serde(default)]
    pub locale: Option<crate::i18n::Locale>,
    /// App ID (`cli_…`) from the developer console's "Credentials & Basic Info".
    pub app_id: EnvString,
    /// App Secret, from the same page. Use `${FEISHU_APP_SECRET}`.
    pub app_secret: Secret,
    /// Verification Token ("Events & Callbacks" → "Encryption Strategy"). Every inbound
    /// request must carry it. Required in webhook mode; in websocket mode optional (the
    /// connection is opened with the app secret) and checked where a payload carries one.
    #[serde(default = "empty_secret")]
    pub verification_token: Secret,
    /// `webhook` (default): Feishu POSTs to `/hooks/<name>`. `websocket`: perch opens
    /// Feishu's long connection (choose "long connection" in the developer console).
    #[serde(default)]
    pub mode: FeishuMode,
    /// Websocket mode: the endpoint request's path on `base_url` (larksuite/oapi-sdk-go
    /// `ws/const.go` GenEndpointUri).
    #[serde(default = "default_ws_endpoint_path")]
    pub ws_endpoint_path: String,
    /// Websocket mode: how often perch pings until the server sends its own
    /// `PingInterval` (SDK default 120 s). No frame for 3 intervals: reconnect.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_ws_ping_interval",
        deserialize_with = "crate::config::de_duration"
    )]
    pub ws_ping_interval: Duration,
    /// Websocket mode: the first wait before reconnecting; it doubles per failure.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_ws_reconnect_min",
        deserialize_with = "crate::config::de_duration"
    )]
    pub ws_reconnect_min: Duration,
    /// Websocket mode: the longest wait between reconnect attempts (the server's
    /// `ReconnectInterval`, SDK default 120 s, lowers it). perch never gives up.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_ws_reconnect_max",
        deserialize_with = "crate::config::de_duration"
    )]
    pub ws_reconnect_max: Duration,
    /// Websocket mode: after a working connection drops, up to this much random wait
    /// more, so replicas do not reconnect together (the server's `ReconnectNonce`,
    /// SDK default 30 s, lowers it).
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_ws_reconnect_nonce",
        deserialize_with = "crate::config::de_duration"
    )]
    pub ws_reconnect_nonce: Duration,
    /// Websocket mode: how long the parts of a fragmented message are kept waiting for
    /// the rest (the SDK keeps them 5 s). \[unverified\] Feishu documents no value.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_ws_fragment_ttl",
        deserialize_with = "crate::config::de_duration"
    )]
    pub ws_fragment_ttl: Duration,
    /// Encrypt Key, same page. When set, bodies may be encrypted and every event must
    /// carry a valid `X-Lark-Signature`. Strongly recommended.
    #[serde(default)]
    pub encrypt_key: Option<Secret>,
    /// Open API base: `https://open.feishu.cn` (Feishu) or `https://open.larksuite.com`
    /// (Lark); a test server in tests.
    #[serde(default = "default_base_url")]
    pub base_url: EnvString,
    /// The app bot's open_id (`ou_…`). Unset: fetched from `/open-apis/bot/v3/info` at start.
    #[serde(default)]
    pub bot_open_id: Option<EnvString>,
    /// Answer in a thread (`reply_in_thread`) instead of quoting the message in the chat.
    #[serde(default)]
    pub reply_in_thread: bool,
    /// How markdown bodies are sent: `post` (an `md` element) or `text`.
    #[serde(default)]
    pub markdown: MarkdownAs,
    /// Operations per second across the app (Feishu: 50/s per API per app).
    #[serde(default = "default_rate_per_second")]
    pub rate_per_second: u32,
    /// Operations per minute across the app (Feishu: 1000/min per API per app).
    #[serde(default = "default_rate_per_minute")]
    pub rate_per_minute: u32,
    /// Operations per second to one chat (Feishu: 5/s per chat, shared by its bots).
    #[serde(default = "default_chat_rate")]
    pub chat_rate_per_second: u32,
    /// Oldest `X-Lark-Request-Timestamp` accepted on a signed request (events, new card
    /// callbacks and the legacy card URL); older ones are refused with 401, so a captured
    /// request cannot be replayed once its event id has left the dedupe window.
    /// Default: `server.dedupe_window` minus `clock_skew`, and `perch check` refuses a
    /// window that together with `clock_skew` is wider than `server.dedupe_window`.
    /// \[unverified\] Whether Feishu re-signs its retries (sent up to ~7.1 h later, refs
    /// §1.6) with a fresh timestamp is not documented, so the default keeps room for the
    /// whole retry schedule; if your tenant's retries carry fresh timestamps, a few
    /// minutes (`"5m"`) is a tighter setting.
    #[schemars(with = "Option<crate::config::DurationText>")]
    #[serde(default, deserialize_with = "crate::config::de_opt_duration")]
    pub timestamp_window: Option<Duration>,
    /// How far ahead of perch's clock a request's timestamp may be.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_clock_skew",
        deserialize_with = "crate::config::de_duration"
    )]
    pub clock_skew: Duration,
}

impl FeishuConfig {
    pub fn validate(&self, name: &str, at: usize, issues: &mut crate::config::Issues) {
        if self.app_id.trim().is_empty() {
            issues.at(at, format!("connector `{name}`: app_id is empty (the `cli_…` id from the developer console)"));
        }
        if self.app_secret.is_empty() {
            issues.at(at, format!("connector `{name}`: app_secret is empty (set it from the environment, e.g. \"${{FEISHU_APP_SECRET}}\")"));
        }
        if self.verification_token.is_empty() && self.mode == FeishuMode::Webhook {
            issues.at(at, format!("connector `{name}`: verification_token is empty; every inbound request is checked against it (or use mode = \"websocket\", which needs no public URL)"));
        }
        if self.mode == FeishuMode::Websocket {
            if !self.ws_endpoint_path.starts_with('/') {
                issues.at(
                    at,
                    format!(
                        "connector `{name}`: ws_endpoint_path {:?} must start with `/`",
                        self.ws_endpoint_path
                    ),
                );
            }
            if self.ws_ping_interval < Duration::from_secs(1) {
                issues.at(
                    at,
                    format!("connector `{name}`: ws_ping_interval must be at least 1s"),
                );
            }
            if self.ws_reconnect_min.is_zero() || self.ws_reconnect_min > self.ws_reconnect_max {
                issues.at(at, format!("connector `{name}`: ws_reconnect_min must be above zero and at most ws_reconnect_max"));
            }
            if self.ws_fragment_ttl.is_zero() {
                issues.at(
                    at,
                    format!("connector `{name}`: ws_fragment_ttl must be above zero"),
                );
            }
        }
        validate_base_url(name, &self.base_url, at, issues);
        for (field, v) in [
            ("rate_per_second", self.rate_per_second),
            ("rate_per_minute", self.rate_per_minute),
            ("chat_rate_per_second", self.chat_rate_per_second),
        ] {
            if v == 0 {
                issues.at(
                    at,
                    format!("connector `{name}`: {field} must be at least 1"),
                );
            }
        }
    }

    /// The timestamp window in force for a given `server.dedupe_window`.
    pub fn timestamp_window(&self, dedupe_window: Duration) -> Duration {
        self.timestamp_window
            .unwrap_or_else(|| dedupe_window.saturating_sub(self.clock_skew))
    }

    fn ws_settings(&self) -> ws::Settings {
        ws::Settings {
            endpoint_path: self.ws_endpoint_path.clone(),
            ping_interval: self.ws_ping_interval,
            reconnect_min: self.ws_reconnect_min,
            reconnect_max: self.ws_reconnect_max,
            reconnect_nonce: self.ws_reconnect_nonce,
            fragment_ttl: self.ws_fragment_ttl,
        }
    }

    fn encrypt_key(&self) -> Option<&str> {
        self.encrypt_key
            .as_ref()
            .map(Secret::expose)
            .filter(|k| !k.is_empty())
    }
}

fn validate_base_url(name: &str, url: &str, at: usize, issues: &mut crate::config::Issues) {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
        _ => issues.at(at, format!("connector `{name}`: base_url {url:?} is not an http(s) URL (e.g. https://open.feishu.cn)")),
    }
}

const SIGNATURE: &str = "X-Lark-Signature";
const TIMESTAMP: &str = "X-Lark-Request-Timestamp";
const NONCE: &str = "X-Lark-Request-Nonce";

/// The state of a request's signature, judged once the body is known not to be a challenge.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sig {
    /// No encrypt key is configured: events are not signed (the token still is checked).
    NotRequired,
    Valid,
    Missing,
    Bad,
    /// Came over the long connection, which perch opened with the app secret: there is
    /// no signature header, and the connection itself is the proof.
    Socket,
}

impl Sig {
    fn require(self) -> Result<(), InboundError> {
        match self {
            Sig::NotRequired | Sig::Valid | Sig::Socket => Ok(()),
            Sig::Missing => Err(InboundError::MissingSignature(SIGNATURE.into())),
            Sig::Bad => Err(InboundError::BadSignature),
        }
    }
    /// Report `e` only to callers who proved they hold the key; others get the
    /// signature error (see the module docs: no padding oracle).
    fn mask(self, e: InboundError) -> InboundError {
        match self.require() {
            Ok(()) => e,
            Err(sig) => {
                tracing::debug!(reason = %e, "unsigned request could not be opened");
                sig
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Scheme {
    /// Events and new callbacks: SHA-256 with the encrypt key.
    Event,
    /// The legacy card request URL: SHA-1 with the verification token.
    LegacyCard,
}

/// This app bot's identity, shared with the background task that fetches it.
#[derive(Default)]
struct BotIdentity {
    open_id: RwLock<Option<String>>,
}

pub struct Feishu {
    name: String,
    config: FeishuConfig,
    /// `config.timestamp_window` resolved against `server.dedupe_window`.
    timestamp_window: Duration,
    api: Arc<ApiClient>,
    bot: Arc<BotIdentity>,
    /// Wakes the bot-info fetcher early (a message arrived before it succeeded).
    fetch_now: Arc<Notify>,
    /// The long connection's state (websocket mode only).
    link: Option<Arc<ws::LinkStatus>>,
}

impl Feishu {
    /// `new`, and in websocket mode the long connection (`ws.rs`), which holds the
    /// connector weakly and stops when perch cancels `env.cancel` or drops it.
    pub fn start(name: &str, config: FeishuConfig, env: &ConnectorEnv) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            let mut feishu = Feishu::new(name, config, env);
            if feishu.config.mode == FeishuMode::Websocket {
                let status = Arc::new(ws::LinkStatus::default());
                feishu.link = Some(status.clone());
                let client = ws::Client {
                    name: name.to_string(),
                    app_id: feishu.config.app_id.to_string(),
                    app_secret: feishu.config.app_secret.clone(),
                    base_url: feishu.config.base_url.to_string(),
                    settings: feishu.config.ws_settings(),
                    http: env.http.clone(),
                    journal: env.journal.clone(),
                    clicks: env.clicks.clone(),
                    click_answer_window: env.click_answer_window,
                    clock: env.clock.clone(),
                    status,
                    cancel: env.cancel.clone(),
                    feishu: me.clone(),
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(client.run());
                    }
                    Err(_) => {
                        tracing::error!(connector = %name, "no async runtime: the long connection is not started")
                    }
                }
            }
            feishu
        })
    }

    pub fn new(name: &str, config: FeishuConfig, env: &ConnectorEnv) -> Self {
        let api = Arc::new(ApiClient::new(
            env.http.clone(),
            &config.base_url,
            &config.app_id,
            config.app_secret.clone(),
        ));
        let bot = Arc::new(BotIdentity::default());
        let fetch_now = Arc::new(Notify::new());
        match config
            .bot_open_id
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(id) => {
                *bot.open_id.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(id.trim().to_string())
            }
            None => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(fetch_bot_identity(
                        name.to_string(),
                        api.clone(),
                        Arc::downgrade(&bot),
                        fetch_now.clone(),
                    ));
                }
            }
        }
        Feishu {
            name: name.to_string(),
            timestamp_window: config.timestamp_window(env.dedupe_window),
            config,
            api,
            bot,
            fetch_now,
            link: None,
        }
    }

    /// The app bot's open_id, if known yet.
    pub fn bot_open_id(&self) -> Option<String> {
        self.bot
            .open_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn header<'a>(req: &'a InboundRequest, name: &str) -> Option<&'a str> {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    fn signature(&self, req: &InboundRequest, scheme: Scheme) -> Sig {
        let key = match scheme {
            Scheme::Event => match self.config.encrypt_key() {
                Some(k) => k,
                None => return Sig::NotRequired,
            },
            Scheme::LegacyCard => self.config.verification_token.expose(),
        };
        let (Some(given), Some(ts), Some(nonce)) = (
            Self::header(req, SIGNATURE),
            Self::header(req, TIMESTAMP),
            Self::header(req, NONCE),
        ) else {
            return Sig::Missing;
        };
        let expected = match scheme {
            Scheme::Event => crypto::event_signature(ts, nonce, key, &req.body),
            Scheme::LegacyCard => crypto::card_signature(ts, nonce, key, &req.body),
        };
        if crypto::ct_eq(&given.to_ascii_lowercase(), &expected) {
            Sig::Valid
        } else {
            Sig::Bad
        }
    }

    /// Refuse a request whose `X-Lark-Request-Timestamp` is outside the window. Signed
    /// requests must carry it (the signature covers it); on an unsigned one (no encrypt
    /// key) it is checked when present.
    fn check_fresh(&self, req: &InboundRequest, sig: Sig) -> Result<(), InboundError> {
        match Self::header(req, TIMESTAMP) {
            Some(ts) => check_timestamp(
                TIMESTAMP,
                ts,
                req.now,
                self.timestamp_window,
                self.config.clock_skew,
            ),
            None if matches!(sig, Sig::NotRequired | Sig::Socket) => Ok(()),
            None => Err(InboundError::StaleTimestamp(format!(
                "header {TIMESTAMP} is missing"
            ))),
        }
    }

    /// Over the long connection the token is checked where both sides have one: the
    /// payload may carry it, and websocket mode may be configured without it.
    fn check_token_for(&self, token: Option<&str>, sig: Sig) -> Result<(), InboundError> {
        let configured = self.config.verification_token.expose();
        if sig == Sig::Socket && (configured.is_empty() || token.is_none()) {
            return Ok(());
        }
        self.check_token(token)
    }

    fn check_token(&self, token: Option<&str>) -> Result<(), InboundError> {
        match token {
            Some(t) if crypto::ct_eq(t, self.config.verification_token.expose()) => Ok(()),
            _ => Err(InboundError::BadToken),
        }
    }

    /// Parse the body and decrypt it when it is `{"encrypt": …}`.
    fn open(&self, req: &InboundRequest, sig: Sig) -> Result<Value, InboundError> {
        if req.body.is_empty() {
            return Err(InboundError::Malformed(
                "empty body (expected a JSON document)".into(),
            ));
        }
        let outer: Value = serde_json::from_slice(&req.body)
            .map_err(|e| InboundError::Malformed(format!("not JSON: {e}")))?;
        if !outer.is_object() {
            return Err(InboundError::Malformed("expected a JSON object".into()));
        }
        let Some(encrypted) = outer.get("encrypt") else {
            return Ok(outer);
        };
        let encrypted = encrypted
            .as_str()
            .ok_or_else(|| InboundError::Malformed("`encrypt` is not a string".into()))?;
        let key = self.config.encrypt_key().ok_or_else(|| {
            InboundError::Decrypt(
                "the body is encrypted but this connector has no encrypt_key".into(),
            )
        })?;
        let plain = crypto::decrypt(key, encrypted)
            .map_err(|e| sig.mask(InboundError::Decrypt(e.to_string())))?;
        let doc: Value = serde_json::from_str(&plain).map_err(|e| {
            sig.mask(InboundError::Malformed(format!(
                "decrypted body is not JSON: {e}"
            )))
        })?;
        if doc.is_object() {
            Ok(doc)
        } else {
            Err(sig.mask(InboundError::Malformed(
                "decrypted body is not a JSON object".into(),
            )))
        }
    }

    fn context<'a>(&'a self, req: &InboundRequest, bot: Option<&'a str>) -> events::Context<'a> {
        events::Context {
            connector: &self.name,
            bot_open_id: bot,
            now: req.now,
        }
    }

    /// A verified schema 2.0/1.0 document → one event.
    fn decode(&self, req: &InboundRequest, doc: &Value, sig: Sig) -> Result<Inbound, InboundError> {
        sig.require()?;
        self.check_fresh(req, sig)?;
        let env = events::envelope(doc)?;
        self.check_token_for(env.token, sig)?;
        let bot = self.bot_open_id();
        if bot.is_none() && env.event_type == "im.message.receive_v1" {
            tracing::warn!(connector = %self.name, "the bot's open_id is not known yet: @mentions of the bot cannot be recognised in this message");
            self.fetch_now.notify_one();
        }
        let event = events::to_event(doc, &env, &self.context(req, bot.as_deref()))?;
        if env.event_type != "card.action.trigger" {
            return Ok(Inbound::Events {
                events: vec![event],
                ack: Reply::ok(json!({ "msg": "success" })),
            });
        }
        Ok(click(event, trigger_answer))
    }

    /// `POST /hooks/<name>`: events and new-style callbacks.
    fn inbound_events(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        let sig = self.signature(req, Scheme::Event);
        let doc = self.open(req, sig)?;
        if let Some((challenge, token)) = events::challenge(&doc) {
            self.check_token(token)?;
            return Ok(Inbound::Respond(Reply::ok(
                json!({ "challenge": challenge }),
            )));
        }
        self.decode(req, &doc, sig)
    }

    /// `POST /hooks/<name>/card`: the legacy card request URL (also verified by a
    /// challenge). A schema 2.0 callback sent here is handled as at `/hooks/<name>`.
    fn inbound_card(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        let sig = self.signature(req, Scheme::LegacyCard);
        let doc = self.open(req, sig)?;
        if let Some((challenge, token)) = events::challenge(&doc) {
            self.check_token(token)?;
            return Ok(Inbound::Respond(Reply::ok(
                json!({ "challenge": challenge }),
            )));
        }
        if doc.get("schema").is_some() {
            return self.decode(req, &doc, self.signature(req, Scheme::Event));
        }
        sig.require()?;
        self.check_fresh(req, sig)?;
        let bot = self.bot_open_id();
        let event = events::legacy_card_event(&doc, &self.context(req, bot.as_deref()))?;
        Ok(click(event, legacy_answer))
    }

    /// A whole data message from the long connection (`ws.rs`): the same JSON the
    /// webhook gets (plain or `{"encrypt": …}`), decoded by the same steps, without the
    /// signature (see `Sig::Socket`). A schema 1.0 card payload is a legacy card click.
    pub(crate) fn socket_inbound(
        &self,
        payload: Bytes,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Inbound, InboundError> {
        let req = InboundRequest {
            sub_path: String::new(),
            headers: HeaderMap::new(),
            body: payload,
            now,
        };
        let sig = Sig::Socket;
        let doc = self.open(&req, sig)?;
        if let Some((challenge, token)) = events::challenge(&doc) {
            self.check_token_for(token, sig)?;
            return Ok(Inbound::Respond(Reply::ok(
                json!({ "challenge": challenge }),
            )));
        }
        if doc.get("schema").is_none() && doc.get("action").is_some() {
            // Its `token` is the card-update token, not the verification token.
            let bot = self.bot_open_id();
            let event = events::legacy_card_event(&doc, &self.context(&req, bot.as_deref()))?;
            return Ok(click(event, legacy_answer));
        }
        self.decode(&req, &doc, sig)
    }

    fn markdown(&self) -> MarkdownAs {
        self.config.markdown
    }
}

/// A card callback's event: a click on a perch button waits for the bot's answer, which
/// `answer` puts in the platform's form; a click on a card perch did not make is
/// journaled as a system event and answered `{}`.
fn click(event: Event, answer: fn(Option<&ClickAnswer>) -> Value) -> Inbound {
    if event.kind != EventKind::CardAction {
        return Inbound::Events {
            events: vec![event],
            ack: Reply::ok(json!({})),
        };
    }
    Inbound::Click {
        event: Box::new(event),
        reply: ClickReply::new(move |a| Reply::ok(answer(a))),
    }
}

/// The answer to a `card.action.trigger` callback (refs §1.7): `{}`, and/or
/// `"toast": {"type", "content"}`, and/or `"card": {"type": "raw", "data": <card 2.0>}`
/// replacing the clicked card. The same update is also queued as a PATCH in the outbox
/// (harmless: same content), so the card changes even if this answer comes too late.
fn trigger_answer(answer: Option<&ClickAnswer>) -> Value {
    let mut body = serde_json::Map::new();
    let Some(answer) = answer else {
        return Value::Object(body);
    };
    if let Some(toast) = &answer.toast {
        body.insert(
            "toast".into(),
            json!({ "type": toast.kind.as_str(), "content": toast.text }),
        );
    }
    if let Some(card) = &answer.card {
        match feishu_card(card, "feishu") {
            Ok(data) => {
                body.insert("card".into(), json!({ "type": "raw", "data": data }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the replacement card does not render; answering without it")
            }
        }
    }
    Value::Object(body)
}

/// The answer on the legacy card request URL (refs §1.7): `{}` or a whole 1.0 card that
/// replaces the clicked one. The legacy URL has no documented toast (an SDK test answers
/// non-200 with `{"content": …}`, [unverified]), so a toast is not shown there; the
/// toast's text is logged instead. Use the `card.action.trigger` callback for toasts.
fn legacy_answer(answer: Option<&ClickAnswer>) -> Value {
    let Some(answer) = answer else {
        return json!({});
    };
    if let Some(toast) = &answer.toast {
        tracing::info!(toast = %toast.text, "legacy card URL: toast not shown (use card.action.trigger)");
    }
    match answer
        .card
        .as_ref()
        .map(|card| feishu_card(card, "feishu_v1"))
    {
        Some(Ok(card)) => card,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the replacement card does not render; answering `{{}}`");
            json!({})
        }
        None => json!({}),
    }
}

/// Fetch the bot's open_id until it succeeds, with backoff (1 s doubling to 5 min), or
/// until the connector is dropped.
async fn fetch_bot_identity(
    name: String,
    api: Arc<ApiClient>,
    bot: Weak<BotIdentity>,
    wake: Arc<Notify>,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        match api.bot_open_id().await {
            Ok(id) => {
                let Some(bot) = bot.upgrade() else { return };
                tracing::info!(connector = %name, open_id = %id, "Feishu bot identity known");
                *bot.open_id.write().unwrap_or_else(|p| p.into_inner()) = Some(id);
                return;
            }
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, retry_in = ?delay, "cannot fetch the bot's open_id yet")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
        if bot.strong_count() == 0 {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(300));
    }
}

/// Largest `content` for post and interactive messages (refs §2.2: 30 KB), and for text
/// (150 KB).
const MAX_CARD_BYTES: usize = 30 * 1024;
const MAX_TEXT_BYTES: usize = 150 * 1024;

/// `(msg_type, content)` for im/v1: `content` is a JSON **string** (refs §0.10).
pub fn message_content(
    body: &MessageBody,
    markdown: MarkdownAs,
) -> Result<(&'static str, String), SendError> {
    let (msg_type, content) = match body {
        MessageBody::Text { text } => ("text", json!({ "text": text })),
        MessageBody::Markdown { text } if markdown == MarkdownAs::Text => {
            ("text", json!({ "text": text }))
        }
        MessageBody::Markdown { text } => (
            "post",
            json!({ "zh_cn": { "title": "", "content": [[{ "tag": "md", "text": text }]] } }),
        ),
        MessageBody::Card { card } => ("interactive", feishu_card(card, "feishu")?),
    };
    let content = content.to_string();
    let max = if msg_type == "text" {
        MAX_TEXT_BYTES
    } else {
        MAX_CARD_BYTES
    };
    if content.len() > max {
        return Err(SendError::Permanent(format!(
            "{msg_type} content is {} bytes; Feishu accepts at most {} KB",
            content.len(),
            max / 1024
        )));
    }
    Ok((msg_type, content))
}

/// Render a neutral card for `platform` and make it updatable: `config.update_multi =
/// true` on every card perch sends (refs §2.2: PATCH needs it on old and new card).
pub fn feishu_card(card: &Value, platform: &str) -> Result<Value, SendError> {
    let mut rendered = crate::cards::render(platform, card)
        .map_err(|e| SendError::Permanent(format!("card: {e}")))?;
    let Some(obj) = rendered.as_object_mut() else {
        return Err(SendError::Permanent(
            "card: the renderer did not produce a JSON object".into(),
        ));
    };
    if platform == "feishu" || platform == "feishu_v1" {
        let config = obj.entry("config").or_insert_with(|| json!({}));
        if let Some(c) = config.as_object_mut() {
            c.insert("update_multi".into(), json!(true));
        }
    }
    Ok(rendered)
}

/// An id that goes into a URL path: refuse anything that could change the path.
fn path_id(id: &str, what: &str) -> Result<String, SendError> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(SendError::Permanent(format!(
            "{what} {id:?} is not a Feishu id"
        )));
    }
    Ok(id.to_string())
}

const RECEIVE_ID_TYPES: [&str; 5] = ["open_id", "union_id", "user_id", "email", "chat_id"];

/// What adding members produced, summed over batches.
#[derive(Debug, Default)]
struct MemberReport {
    added: usize,
    invalid: Vec<String>,
    not_existed: Vec<String>,
    pending_approval: Vec<String>,
}

impl MemberReport {
    fn detail(&self, chat_id: &str) -> Value {
        json!({
            "chat_id": chat_id,
            "added": self.added,
            "invalid_ids": self.invalid,
            "not_existed_ids": self.not_existed,
            "pending_approval_ids": self.pending_approval,
            // The cross-connector convention (`Delivered::detail`): who is not in the chat.
            "not_added": self.invalid.iter().chain(&self.not_existed).collect::<Vec<_>>(),
        })
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

impl Feishu {
    async fn send(
        &self,
        to: &Target,
        body: &MessageBody,
        reply_to: Option<&str>,
        key: &str,
    ) -> Result<Delivered, SendError> {
        let (msg_type, content) = message_content(body, self.markdown())?;
        let uuid = crypto::idempotency_uuid(key);
        let data = match reply_to {
            Some(mid) => {
                let path = format!(
                    "/open-apis/im/v1/messages/{}/reply",
                    path_id(mid, "reply_to message id")?
                );
                let body = json!({ "msg_type": msg_type, "content": content, "reply_in_thread": self.config.reply_in_thread, "uuid": uuid });
                self.api
                    .call(
                        reqwest::Method::POST,
                        &path,
                        Some(&body),
                        "reply to a message",
                    )
                    .await?
            }
            None => {
                let (id_type, id) = match to {
                    Target::Chat { id } => ("chat_id", id),
                    Target::Person { id, id_type } => (id_type.as_deref().unwrap_or("open_id"), id),
                };
                if !RECEIVE_ID_TYPES.contains(&id_type) {
                    return Err(SendError::Permanent(format!(
                        "id_type {id_type:?} is not one of {}",
                        RECEIVE_ID_TYPES.join(", ")
                    )));
                }
                let path = format!("/open-apis/im/v1/messages?receive_id_type={id_type}");
                let body = json!({ "receive_id": id, "msg_type": msg_type, "content": content, "uuid": uuid });
                self.api
                    .call(reqwest::Method::POST, &path, Some(&body), "send a message")
                    .await?
            }
        };
        Ok(Delivered {
            id: data
                .get("message_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            detail: data
                .get("chat_id")
                .map(|c| json!({ "chat_id": c }))
                .unwrap_or(Value::Null),
        })
    }

    /// Replace a message's content. PATCH (cards) and PUT (text, post) take no `uuid`
    /// or other idempotency key (refs §2.2: only create and reply have `uuid`), so a
    /// retry is made safe by what the call is: it sets the whole content, and setting the
    /// same content twice leaves the message as one setting would. The outbox keeps a
    /// chat's updates in order, so a retried older update never lands after a newer one.
    async fn update(&self, message_id: &str, body: &MessageBody) -> Result<Delivered, SendError> {
        let path = format!(
            "/open-apis/im/v1/messages/{}",
            path_id(message_id, "message id")?
        );
        let (msg_type, content) = message_content(body, self.markdown())?;
        if msg_type == "interactive" {
            // Cards are updated in place (PATCH, 5/s per message; refs §2.2).
            self.api
                .call(
                    reqwest::Method::PATCH,
                    &path,
                    Some(&json!({ "content": content })),
                    "update a card",
                )
                .await?;
        } else {
            // Text and post messages are edited (PUT).
            self.api
                .call(
                    reqwest::Method::PUT,
                    &path,
                    Some(&json!({ "msg_type": msg_type, "content": content })),
                    "edit a message",
                )
                .await?;
        }
        Ok(Delivered {
            id: Some(message_id.to_string()),
            detail: Value::Null,
        })
    }

    /// `batch_get_id` in batches of 50: e-mails (or mobiles) → open_ids. Returns the
    /// found open_ids in input order and the inputs that were not found.
    pub async fn lookup_users(
        &self,
        ids: &[String],
        field: &str,
    ) -> Result<(Vec<String>, Vec<String>), SendError> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for chunk in ids.chunks(50) {
            let body = json!({ field: chunk, "include_resigned": false });
            let data = self
                .api
                .call(
                    reqwest::Method::POST,
                    "/open-apis/contact/v3/users/batch_get_id?user_id_type=open_id",
                    Some(&body),
                    "look up users",
                )
                .await?;
            let list = data
                .get("user_list")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let key = if field == "emails" { "email" } else { "mobile" };
            for wanted in chunk {
                let hit = list.iter().find(|u| {
                    u.get(key)
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.eq_ignore_ascii_case(wanted))
                        && u.get("user_id")
                            .and_then(Value::as_str)
                            .is_some_and(|id| !id.is_empty())
                });
                match hit.and_then(|u| u.get("user_id")).and_then(Value::as_str) {
                    Some(id) => found.push(id.to_string()),
                    None => missing.push(wanted.clone()),
                }
            }
        }
        Ok((found, missing))
    }

    /// Members as Feishu member ids: e-mails and mobiles are looked up first.
    /// Returns (ids, their member_id_type, inputs that could not be resolved).
    async fn resolve_members(
        &self,
        members: &[String],
        id_type: Option<&str>,
    ) -> Result<(Vec<String>, &'static str, Vec<String>), SendError> {
        match id_type.unwrap_or("open_id") {
            "email" => self
                .lookup_users(members, "emails")
                .await
                .map(|(ids, missing)| (ids, "open_id", missing)),
            "mobile" => self
                .lookup_users(members, "mobiles")
                .await
                .map(|(ids, missing)| (ids, "open_id", missing)),
            "open_id" => Ok((members.to_vec(), "open_id", Vec::new())),
            "user_id" => Ok((members.to_vec(), "user_id", Vec::new())),
            "union_id" => Ok((members.to_vec(), "union_id", Vec::new())),
            "app_id" => Ok((members.to_vec(), "app_id", Vec::new())),
            other => Err(SendError::Permanent(format!(
                "member_id_type {other:?} is not one of open_id, user_id, union_id, app_id, email, mobile"
            ))),
        }
    }

    /// Add members in batches (50 users or 5 bots per call) with `succeed_type=1`: the
    /// valid ids are added, the rest are reported (refs §2.3).
    async fn add_in_batches(
        &self,
        chat_id: &str,
        ids: &[String],
        id_type: &str,
        report: &mut MemberReport,
    ) -> Result<(), SendError> {
        let path = format!(
            "/open-apis/im/v1/chats/{}/members?member_id_type={id_type}&succeed_type=1",
            path_id(chat_id, "chat id")?
        );
        let batch = if id_type == "app_id" { 5 } else { 50 };
        for chunk in ids.chunks(batch) {
            let data = self
                .api
                .call(
                    reqwest::Method::POST,
                    &path,
                    Some(&json!({ "id_list": chunk })),
                    "add chat members",
                )
                .await?;
            let invalid = strings(data.get("invalid_id_list"));
            let not_existed = strings(data.get("not_existed_id_list"));
            let pending = strings(data.get("pending_approval_id_list"));
            report.added += chunk
                .len()
                .saturating_sub(invalid.len() + not_existed.len() + pending.len());
            report.invalid.extend(invalid);
            report.not_existed.extend(not_existed);
            report.pending_approval.extend(pending);
        }
        Ok(())
    }

    /// Create the chat (no members: refs §2.3, code 232043), then add the members.
    /// `uuid` makes a retried creation return the same chat for 10 h (refs §0.5).
    /// Adding members has no idempotency parameter (refs §2.3); a repeat is safe
    /// because adding someone who is already a member changes nothing
    /// ([unverified]: the docs do not say what `succeed_type=1` reports for them; the
    /// fake treats them as added).
    async fn create_chat(&self, spec: &ChatSpec, key: &str) -> Result<Delivered, SendError> {
        let (members, id_type, unresolved) = self
            .resolve_members(&spec.members, spec.member_id_type.as_deref())
            .await?;
        let mut body = json!({ "name": spec.name, "chat_mode": "group", "chat_type": "private" });
        if let Some(d) = &spec.description {
            body["description"] = json!(d);
        }
        let mut owner_missing = None;
        if let Some(owner) = &spec.owner {
            let (ids, _, missing) = self
                .resolve_members(std::slice::from_ref(owner), spec.member_id_type.as_deref())
                .await?;
            match ids.first() {
                Some(id) => body["owner_id"] = json!(id),
                None => owner_missing = missing.first().cloned(),
            }
        }
        let uuid = crypto::idempotency_uuid(key);
        let path = format!(
            "/open-apis/im/v1/chats?user_id_type={id_type}&set_bot_manager=true&uuid={uuid}"
        );
        let data = self
            .api
            .call(reqwest::Method::POST, &path, Some(&body), "create a chat")
            .await?;
        let chat_id = data
            .get("chat_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SendError::retry("create a chat: Feishu answered without a chat_id"))?
            .to_string();
        let mut report = MemberReport {
            invalid: unresolved,
            ..Default::default()
        };
        // The chat exists now: a failure to add its members must not fail the creation
        // (a caller would free its claim and create a second chat). It is reported in
        // the detail (`members_error`, and the ids under `not_added`) for the caller to
        // retry with `AddMembers`, which is safe to repeat.
        let members_error = self
            .add_in_batches(&chat_id, &members, id_type, &mut report)
            .await
            .err();
        let mut detail = report.detail(&chat_id);
        if let Some(e) = members_error {
            detail["members_error"] = json!(e.to_string());
            detail["not_added"] = json!(spec.members);
        }
        if let Some(o) = owner_missing {
            detail["owner_not_found"] = json!(o);
        }
        Ok(Delivered {
            id: Some(chat_id),
            detail,
        })
    }

    async fn add_members(
        &self,
        chat_id: &str,
        members: &[String],
        id_type: Option<&str>,
    ) -> Result<Delivered, SendError> {
        let (ids, id_type, unresolved) = self.resolve_members(members, id_type).await?;
        let mut report = MemberReport {
            invalid: unresolved,
            ..Default::default()
        };
        self.add_in_batches(chat_id, &ids, id_type, &mut report)
            .await?;
        Ok(Delivered {
            id: Some(chat_id.to_string()),
            detail: report.detail(chat_id),
        })
    }
}

#[async_trait]
impl Connector for Feishu {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "feishu"
    }

    fn secrets(&self) -> Vec<&str> {
        let c = &self.config;
        [
            Some(&c.app_secret),
            Some(&c.verification_token),
            c.encrypt_key.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .collect()
    }

    fn handle_inbound(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        match req.sub_path.as_str() {
            "" => self.inbound_events(req),
            "card" => self.inbound_card(req),
            other => Err(InboundError::NotFound(format!(
                "{other:?} (Feishu uses /hooks/{0} and /hooks/{0}/card)",
                self.name
            ))),
        }
    }

    async fn execute(&self, op: &Operation, idempotency_key: &str) -> Result<Delivered, SendError> {
        match op {
            Operation::Send { to, body, reply_to } => {
                self.send(to, body, reply_to.as_deref(), idempotency_key)
                    .await
            }
            Operation::Update {
                message_id, body, ..
            } => self.update(message_id, body).await,
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

    /// Feishu's quotas (refs §2.4): 50/s and 1000/min per API per app, 5/s per chat.
    /// Card updates carry their chat id (`Operation::Update.chat_id`) when the router
    /// knows it, so the per-chat lane also keeps PATCH under 5/s per message.
    fn rate_limits(&self) -> RateLimits {
        RateLimits {
            per_second: Some(self.config.rate_per_second),
            burst: Some(self.config.rate_per_second),
            per_chat_per_second: Some(self.config.chat_rate_per_second),
            per_minute: Some(self.config.rate_per_minute),
        }
    }

    fn describe(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        if let Some(id) = self.bot_open_id() {
            m.insert("bot_open_id", id);
        }
        if let Some(link) = &self.link {
            m.insert("connection", link.describe());
            m.insert("connects", link.connects().to_string());
        }
        m
    }
}

impl crate::connectors::ConnectorKind for Feishu {
    type Config = FeishuConfig;

    fn build(
        name: &str,
        config: FeishuConfig,
        env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        Feishu::start(name, config, env)
    }

    fn validate(name: &str, config: &FeishuConfig, at: usize, issues: &mut crate::config::Issues) {
        config.validate(name, at, issues);
    }

    fn locale(config: &FeishuConfig) -> Option<crate::i18n::Locale> {
        config.locale
    }

    fn replay_window(
        config: &FeishuConfig,
        dedupe_window: std::time::Duration,
    ) -> Option<(std::time::Duration, std::time::Duration)> {
        Some((config.timestamp_window(dedupe_window), config.clock_skew))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "vtoken";
    const KEY: &str = "ekey";

    fn connector(encrypt_key: Option<&str>) -> Feishu {
        let config = FeishuConfig {
            locale: None,
            app_id: EnvString("cli_test".into()),
            app_secret: Secret::new("s"),
            verification_token: Secret::new(TOKEN),
            mode: FeishuMode::Webhook,
            ws_endpoint_path: default_ws_endpoint_path(),
            ws_ping_interval: default_ws_ping_interval(),
            ws_reconnect_min: default_ws_reconnect_min(),
            ws_reconnect_max: default_ws_reconnect_max(),
            ws_reconnect_nonce: default_ws_reconnect_nonce(),
            ws_fragment_ttl: default_ws_fragment_ttl(),
            encrypt_key: encrypt_key.map(Secret::new),
            base_url: default_base_url(),
            bot_open_id: Some(EnvString("ou_bot".into())),
            reply_in_thread: false,
            markdown: MarkdownAs::Post,
            rate_per_second: 50,
            rate_per_minute: 1000,
            chat_rate_per_second: 5,
            timestamp_window: None,
            clock_skew: default_clock_skew(),
        };
        let api = Arc::new(ApiClient::new(
            reqwest::Client::new(),
            &config.base_url,
            &config.app_id,
            config.app_secret.clone(),
        ));
        let bot = Arc::new(BotIdentity {
            open_id: RwLock::new(Some("ou_bot".into())),
        });
        Feishu {
            name: "feishu".into(),
            timestamp_window: config.timestamp_window(Duration::from_secs(8 * 3600)),
            config,
            api,
            bot,
            fetch_now: Arc::new(Notify::new()),
            link: None,
        }
    }

    fn request(sub_path: &str, body: &[u8], sig: Option<String>) -> InboundRequest {
        let mut headers = HeaderMap::new();
        if let Some(s) = sig {
            headers.insert(TIMESTAMP, "1700000000".parse().unwrap());
            headers.insert(NONCE, "n1".parse().unwrap());
            headers.insert(SIGNATURE, s.parse().unwrap());
        }
        InboundRequest {
            sub_path: sub_path.into(),
            headers,
            body: Bytes::copy_from_slice(body),
            // Ten seconds after the signed timestamp.
            now: chrono::DateTime::from_timestamp(1_700_000_010, 0).unwrap(),
        }
    }

    fn signed(body: &[u8]) -> InboundRequest {
        request(
            "",
            body,
            Some(crypto::event_signature("1700000000", "n1", KEY, body)),
        )
    }

    fn encrypted(doc: &Value, key: &str) -> Vec<u8> {
        json!({ "encrypt": crypto::encrypt(key, doc.to_string().as_bytes(), [3; 16]) })
            .to_string()
            .into_bytes()
    }

    fn fixture() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/feishu/message_group_mention.json"
        ))
        .unwrap()
    }

    fn retoken(mut doc: Value) -> Value {
        doc["header"]["token"] = json!(TOKEN);
        doc
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let c = connector(Some(KEY));
        let body = retoken(fixture()).to_string().into_bytes();
        let at = |now: i64| {
            let mut r = signed(&body);
            r.now = chrono::DateTime::from_timestamp(now, 0).unwrap();
            c.handle_inbound(&r)
        };
        let window = 8 * 3600 - 300;
        assert!(
            at(1_700_000_000 + window).is_ok(),
            "at the edge of the window"
        );
        for now in [
            1_700_000_000 + window + 1,
            1_700_000_000 + 86_400,
            1_700_000_000 - 301,
        ] {
            let e = at(now).unwrap_err();
            assert!(matches!(e, InboundError::StaleTimestamp(_)), "{now}: {e}");
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        }
        assert!(
            at(1_700_000_000 - 300).is_ok(),
            "five minutes of clock difference"
        );
        // Extreme values are named, never wrapped around.
        let e = check_timestamp(
            "T",
            "-9223372036854775808",
            chrono::Utc::now(),
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("9223372") && !e.to_string().contains('-'),
            "{e}"
        );
        let e = check_timestamp(
            "T",
            "9223372036854775807",
            chrono::Utc::now(),
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(e.to_string().contains("in the future"), "{e}");
        assert!(
            check_timestamp(
                "T",
                "soon",
                chrono::Utc::now(),
                Duration::from_secs(60),
                Duration::ZERO
            )
            .is_err()
        );
        // A signed request without the timestamp is refused.
        let mut r = signed(&body);
        r.headers.remove(TIMESTAMP);
        assert!(c.handle_inbound(&r).is_err());
    }

    #[test]
    fn challenges_need_the_token_but_no_signature() {
        let c = connector(Some(KEY));
        let ch = json!({ "challenge": "abc", "token": TOKEN, "type": "url_verification" });
        for body in [ch.to_string().into_bytes(), encrypted(&ch, KEY)] {
            match c.handle_inbound(&request("", &body, None)).unwrap() {
                Inbound::Respond(r) => assert_eq!(r.body, json!({ "challenge": "abc" })),
                other => panic!("{other:?}"),
            }
        }
        let wrong = json!({ "challenge": "abc", "token": "x", "type": "url_verification" });
        assert_eq!(
            c.handle_inbound(&request("", wrong.to_string().as_bytes(), None))
                .unwrap_err(),
            InboundError::BadToken
        );
    }

    #[test]
    fn signed_encrypted_event_is_decoded() {
        let c = connector(Some(KEY));
        let doc = retoken(fixture());
        let Inbound::Events { events, ack } =
            c.handle_inbound(&signed(&encrypted(&doc, KEY))).unwrap()
        else {
            panic!()
        };
        assert_eq!(ack.body, json!({ "msg": "success" }));
        assert_eq!(events[0].external_id.as_deref(), Some("ev_group_1"));
        assert!(events[0].mentions[0].is_bot);
    }

    #[test]
    fn decryption_errors_are_only_told_to_signed_callers() {
        let c = connector(Some(KEY));
        let body = encrypted(&retoken(fixture()), "wrong-key");
        assert!(matches!(
            c.handle_inbound(&signed(&body)).unwrap_err(),
            InboundError::Decrypt(_) | InboundError::Malformed(_)
        ));
        assert_eq!(
            c.handle_inbound(&request("", &body, None)).unwrap_err(),
            InboundError::MissingSignature(SIGNATURE.into())
        );
        assert_eq!(
            c.handle_inbound(&request("", &body, Some("00".into())))
                .unwrap_err(),
            InboundError::BadSignature
        );
    }

    #[test]
    fn refusals() {
        let c = connector(Some(KEY));
        let doc = retoken(fixture()).to_string().into_bytes();
        assert_eq!(
            c.handle_inbound(&request("", &doc, None)).unwrap_err(),
            InboundError::MissingSignature(SIGNATURE.into())
        );
        let bad_token = fixture()
            .to_string()
            .replace("vtoken", "other")
            .into_bytes();
        assert_eq!(
            c.handle_inbound(&signed(&bad_token)).unwrap_err(),
            InboundError::BadToken
        );
        assert!(matches!(
            c.handle_inbound(&signed(b"")).unwrap_err(),
            InboundError::Malformed(_)
        ));
        assert!(matches!(
            c.handle_inbound(&signed(&doc[..doc.len() - 3]))
                .unwrap_err(),
            InboundError::Malformed(_)
        ));
        assert!(matches!(
            c.handle_inbound(&signed(br#"{"encrypt": 5}"#)).unwrap_err(),
            InboundError::Malformed(_)
        ));
        assert!(matches!(
            c.handle_inbound(&request("x", &doc, None)).unwrap_err(),
            InboundError::NotFound(_)
        ));
    }

    #[test]
    fn without_an_encrypt_key_only_the_token_is_checked() {
        let c = connector(None);
        let doc = retoken(fixture()).to_string().into_bytes();
        assert!(matches!(
            c.handle_inbound(&request("", &doc, None)).unwrap(),
            Inbound::Events { .. }
        ));
        let enc = encrypted(&retoken(fixture()), KEY);
        assert!(
            matches!(c.handle_inbound(&request("", &enc, None)).unwrap_err(), InboundError::Decrypt(m) if m.contains("no encrypt_key"))
        );
    }

    #[test]
    fn legacy_card_url_checks_the_sha1_signature() {
        let c = connector(Some(KEY));
        let body = include_bytes!("../../tests/fixtures/feishu/card_legacy.json");
        let good = request(
            "card",
            body,
            Some(crypto::card_signature("1700000000", "n1", TOKEN, body)),
        );
        let Inbound::Click { event, reply } = c.handle_inbound(&good).unwrap() else {
            panic!("a perch button's click is answered as a click")
        };
        assert_eq!(event.kind, crate::event::EventKind::CardAction);
        assert_eq!((reply.0)(None).body, json!({}));
        let forged = request(
            "card",
            body,
            Some(crypto::card_signature("1700000000", "n1", "guess", body)),
        );
        assert_eq!(
            c.handle_inbound(&forged).unwrap_err(),
            InboundError::BadSignature
        );
        assert_eq!(
            c.handle_inbound(&request("card", body, None)).unwrap_err(),
            InboundError::MissingSignature(SIGNATURE.into())
        );
    }

    #[test]
    fn socket_payloads_need_no_signature_but_a_carried_token_must_match() {
        let now = chrono::DateTime::from_timestamp(1_700_000_010, 0).unwrap();
        let f = connector(Some(KEY));
        // Encrypted, unsigned: decoded (the connection is the proof).
        let sealed = encrypted(&retoken(fixture()), KEY);
        let got = f.socket_inbound(Bytes::from(sealed), now).unwrap();
        assert!(matches!(got, Inbound::Events { .. }), "{got:?}");
        // A carried token that is wrong is refused, as on the webhook.
        let mut doc = retoken(fixture());
        doc["header"]["token"] = json!("wrong");
        assert_eq!(
            f.socket_inbound(Bytes::from(doc.to_string()), now)
                .unwrap_err(),
            InboundError::BadToken
        );
        // No token in the payload: accepted over the socket (not on the webhook).
        doc["header"].as_object_mut().unwrap().remove("token");
        assert!(f.socket_inbound(Bytes::from(doc.to_string()), now).is_ok());
        assert!(
            f.handle_inbound(&request("", doc.to_string().as_bytes(), None))
                .is_err()
        );
    }

    fn answer_with_toast_and_card() -> ClickAnswer {
        ClickAnswer {
            toast: Some(crate::action::Toast {
                kind: crate::action::ToastKind::Success,
                text: "Snoozed".into(),
            }),
            card: Some(json!({ "header": { "title": "Snoozed until Thu" } })),
        }
    }

    #[test]
    fn card_trigger_answer_has_toast_and_raw_card_2_0() {
        assert_eq!(trigger_answer(None), json!({}));
        let body = trigger_answer(Some(&answer_with_toast_and_card()));
        assert_eq!(
            body["toast"],
            json!({ "type": "success", "content": "Snoozed" })
        );
        assert_eq!(body["card"]["type"], "raw");
        let card = &body["card"]["data"];
        assert_eq!(card["schema"], "2.0");
        assert_eq!(card["config"]["update_multi"], true);
        assert!(card["body"]["elements"].is_array());
    }

    #[test]
    fn legacy_answer_is_a_whole_1_0_card_or_empty() {
        assert_eq!(legacy_answer(None), json!({}));
        let toast_only = ClickAnswer {
            card: None,
            ..answer_with_toast_and_card()
        };
        assert_eq!(legacy_answer(Some(&toast_only)), json!({}));
        let card = legacy_answer(Some(&answer_with_toast_and_card()));
        assert!(card.get("schema").is_none(), "1.0 cards have no schema");
        assert!(card["elements"].is_array());
        assert_eq!(card["config"]["update_multi"], true);
    }

    #[test]
    fn message_content_is_a_json_string_with_limits() {
        let (t, c) = message_content(&MessageBody::text("hi \"x\""), MarkdownAs::Post).unwrap();
        assert_eq!(
            (t, serde_json::from_str::<Value>(&c).unwrap()),
            ("text", json!({ "text": "hi \"x\"" }))
        );
        let (t, c) = message_content(&MessageBody::markdown("**b**"), MarkdownAs::Post).unwrap();
        assert_eq!(t, "post");
        assert_eq!(
            serde_json::from_str::<Value>(&c)
                .unwrap()
                .pointer("/zh_cn/content/0/0"),
            Some(&json!({ "tag": "md", "text": "**b**" }))
        );
        assert_eq!(
            message_content(&MessageBody::markdown("m"), MarkdownAs::Text)
                .unwrap()
                .0,
            "text"
        );
        let (t, c) = message_content(
            &MessageBody::Card {
                card: json!({ "elements": [{ "type": "divider" }] }),
            },
            MarkdownAs::Post,
        )
        .unwrap();
        assert_eq!(t, "interactive");
        assert_eq!(
            serde_json::from_str::<Value>(&c).unwrap()["config"]["update_multi"],
            true
        );
        let big = json!({ "elements": [{ "type": "markdown", "text": "x".repeat(31 * 1024) }] });
        // The card renderer cuts an oversized card to fit Feishu's 30 KB (refs §4).
        let (_, content) =
            message_content(&MessageBody::Card { card: big }, MarkdownAs::Post).unwrap();
        assert!(content.len() <= 30 * 1024, "{} bytes", content.len());
        assert!(path_id("om_1-a", "id").is_ok());
        assert!(path_id("om/../x", "id").is_err());
    }
}
