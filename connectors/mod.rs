//! Connectors: one per platform or source. Each kind is registered once, in
//! `register_builtin` below (`registry` reads a `[connectors.<name>]` table as its kind).
//!
//! A connector has two sides:
//! - **inbound** (`handle_inbound`): verify the request (signature, token, timestamp),
//!   decode it, answer handshakes, and turn it into neutral `Event`s that the HTTP layer
//!   puts in the journal. Pure and synchronous: no I/O, so it is easy to test.
//! - **outbound** (`execute`): carry out one `Operation` (send, reply, update a card,
//!   create a chat, add members) with the platform's auth and idempotency keys.
//!
//! Flow: **connector (in)** → journal → router → bots → outbox → **connector (out)**.

pub(crate) mod feishu;
pub(crate) mod file;
pub(crate) mod http;
pub(crate) mod local;
pub(crate) mod matrix;
pub(crate) mod registry;
pub(crate) mod slack;
pub(crate) mod webhook;

use crate::action::{ClickAnswer, Delivered, Operation};
use crate::clock::SharedClock;
use crate::event::Event;
use crate::journal::Journal;
use crate::store::Store;
use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::i18n::Locale;
pub use registry::{ConnectorConfig, ConnectorKind, ConnectorKinds};

/// An inbound HTTP request addressed to a connector (`POST /hooks/<name>[/<sub>]`).
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// What follows `/hooks/<name>`: `""` or e.g. `"card"`.
    pub sub_path: String,
    pub headers: HeaderMap,
    /// The exact bytes received: signatures are checked over these, never over a
    /// re-serialization.
    pub body: Bytes,
    /// Time of receipt, for timestamp windows.
    pub now: chrono::DateTime<chrono::Utc>,
}

/// What to do with an inbound request.
#[derive(Debug)]
pub enum Inbound {
    /// Journal these events, then answer `ack` (status and JSON body).
    Events { events: Vec<Event>, ack: Reply },
    /// Answer at once without storing anything (a URL-verification challenge).
    Respond(Reply),
    /// A card click: journal `event`, wait up to `server.click_answer_window` for the
    /// bot's answer (`crate::clicks`), and answer the platform with `reply` of it.
    Click {
        event: Box<Event>,
        reply: ClickReply,
    },
}

/// Builds the platform's HTTP answer to a card click from the bot's answer (`None` when
/// the bot did not answer within the window).
pub struct ClickReply(pub Box<ClickReplyFn>);

/// The function inside a `ClickReply`.
pub type ClickReplyFn = dyn FnOnce(Option<&ClickAnswer>) -> Reply + Send;

impl ClickReply {
    pub fn new(f: impl FnOnce(Option<&ClickAnswer>) -> Reply + Send + 'static) -> Self {
        ClickReply(Box::new(f))
    }
}

impl std::fmt::Debug for ClickReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClickReply(..)")
    }
}

/// An HTTP answer a connector chooses.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn ok(body: serde_json::Value) -> Self {
        Reply {
            status: StatusCode::OK,
            body,
        }
    }
}

/// Why an inbound request was refused. Every variant is a 4xx with a one-line reason,
/// and nothing is stored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InboundError {
    #[error("missing signature header {0}")]
    MissingSignature(String),
    #[error("signature does not match")]
    BadSignature,
    #[error("verification token does not match")]
    BadToken,
    #[error("timestamp {0}")]
    StaleTimestamp(String),
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("cannot decrypt body: {0}")]
    Decrypt(String),
    #[error("no such path on this connector: {0}")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
}

impl InboundError {
    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::MissingSignature(_)
            | InboundError::BadSignature
            | InboundError::BadToken
            | InboundError::StaleTimestamp(_) => StatusCode::UNAUTHORIZED,
            InboundError::NotFound(_) => StatusCode::NOT_FOUND,
            InboundError::Unsupported(_) => StatusCode::UNPROCESSABLE_ENTITY,
            InboundError::Malformed(_) | InboundError::Decrypt(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why an outbound operation failed: the outbox retries `Retry`, dead-letters the rest.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SendError {
    /// Worth trying again (connect error, timeout, 5xx, 429, a platform "try again"
    /// code), not before `retry_after` if the platform said so.
    #[error("{reason}")]
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The platform said "too many requests". When it said for how long (`Retry-After`,
    /// Feishu's `x-ogw-ratelimit-reset`), every call in `scope` waits that long
    /// (`crate::throttle`), and the item is tried again right after; when it did not,
    /// the item backs off like any retry. Not counted against `outbox.max_attempts`: the
    /// platform is busy, the item is fine.
    #[error("{reason}")]
    RateLimited {
        reason: String,
        retry_after: Option<Duration>,
        scope: LimitScope,
    },
    /// Will never succeed as it is (bad parameters, no permission, unknown chat).
    #[error("{0}")]
    Permanent(String),
    /// This connector cannot do that operation at all.
    #[error("connector cannot {0}")]
    Unsupported(&'static str),
}

/// What a platform's rate-limit answer covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Every call to the connector (an app-wide or API-wide quota).
    Connector,
    /// Calls to one chat (Feishu 230020: 5/s per chat).
    Chat,
}

impl SendError {
    pub fn retry(reason: impl Into<String>) -> Self {
        SendError::Retry {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// How fast a connector may send: across the connector, and per chat.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimits {
    /// Operations per second across this connector (`None` = unlimited).
    pub per_second: Option<u32>,
    /// Burst allowance for `per_second` (defaults to the rate).
    pub burst: Option<u32>,
    /// Operations per second to any one chat.
    pub per_chat_per_second: Option<u32>,
    /// Operations per minute across this connector.
    pub per_minute: Option<u32>,
}

/// A configured connector instance: it turns a platform's inbound requests into
/// [`Event`]s and carries out [`Operation`]s (send, reply, update a card, create a chat)
/// on the platform, passing perch's idempotency key along. Register it with
/// [`ConnectorKind`]. (perch wraps every connector in its rate limiter, which passes
/// each of these methods through: a method added here is added there too.)
///
/// A connector that writes each message to a log (a stand-in for a platform's API):
///
/// ```
/// use perch::action::{Delivered, MessageBody, Operation, Target};
/// use perch::connectors::{Connector, SendError};
/// use std::sync::Mutex;
///
/// struct Log { name: String, lines: Mutex<Vec<String>> }
///
/// #[async_trait::async_trait]
/// impl Connector for Log {
///     fn name(&self) -> &str { &self.name }
///     fn kind(&self) -> &'static str { "log" }
///     async fn execute(&self, op: &Operation, key: &str) -> Result<Delivered, SendError> {
///         let Operation::Send { to: Target::Chat { id }, body, .. } = op else {
///             return Err(SendError::Unsupported("only messages to a chat"));
///         };
///         // A real platform call would pass `key` so the platform drops a repeat.
///         let mut lines = self.lines.lock().unwrap();
///         lines.push(format!("{key} {id}: {}", body.plain_text()));
///         Ok(Delivered { id: Some(format!("m{}", lines.len())), ..Default::default() })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let log = Log { name: "log".into(), lines: Mutex::new(vec![]) };
/// let hello = Operation::Send {
///     to: Target::chat("room"),
///     body: MessageBody::text("hello"),
///     reply_to: None,
/// };
/// let sent = log.execute(&hello, "e1/greeter/0").await.unwrap();
/// assert_eq!(sent.id.as_deref(), Some("m1"));
/// assert_eq!(log.lines.lock().unwrap()[0], "e1/greeter/0 room: hello");
/// let create = Operation::CreateChat { spec: Default::default() };
/// assert!(matches!(log.execute(&create, "e1/greeter/1").await, Err(SendError::Unsupported(_))));
/// # }
/// ```
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The configured name (`web`, `github`, `feishu`).
    fn name(&self) -> &str;
    /// The kind (`local`, `webhook`, `feishu`).
    fn kind(&self) -> &'static str;

    /// Turn an inbound request into events (or a direct answer). Connectors that take
    /// no inbound requests keep the default, which refuses.
    fn handle_inbound(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        let _ = req;
        Err(InboundError::Unsupported(format!(
            "connector `{}` does not accept inbound requests",
            self.name()
        )))
    }

    /// Carry out one operation. `idempotency_key` is stable across retries and restarts
    /// (the outbox key); connectors pass it to platforms that deduplicate (Feishu `uuid`).
    async fn execute(&self, op: &Operation, idempotency_key: &str) -> Result<Delivered, SendError>;

    /// Sending limits the outbox must respect.
    fn rate_limits(&self) -> RateLimits {
        RateLimits::default()
    }

    /// Until when calls to `chat` are paused because the platform said so (see
    /// `crate::throttle`, which implements it; `None`: not paused). The outbox waits
    /// for it without holding a concurrency slot.
    fn paused_until(&self, chat: &str) -> Option<tokio::time::Instant> {
        let _ = chat;
        None
    }

    /// Extra HTTP routes the connector serves (the web chat's UI and API).
    fn http_routes(&self) -> Option<axum::Router> {
        None
    }

    /// The data-source side of connectors that answer bots' queries (`http`, `file`).
    fn data_source(&self) -> Option<&dyn DataSource> {
        None
    }

    /// Names of the bot accounts people can @mention on this connector, for
    /// autocomplete and help (the web chat shows each perch bot as a user).
    fn describe(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::new()
    }

    /// The secrets in this connector's configuration (tokens, keys, signing secrets).
    /// The HTTP edge strips them from every event before it is stored (`redact`):
    /// platforms echo some of them back in their envelopes, and the journal is readable
    /// through the admin API.
    fn secrets(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// What a secret is replaced with in stored events.
pub const REDACTED: &str = "***";

/// Secrets shorter than this are only redacted where a whole string equals them:
/// replacing every occurrence of a two-letter secret inside text would mangle it.
const REDACT_INSIDE_MIN: usize = 6;

/// Replace every configured secret in `event` (its payload, keys included, text, card
/// arguments, ids) with `REDACTED`, so no envelope carries one into the journal.
pub fn redact(event: &mut Event, secrets: &[&str]) {
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return;
    }
    let scrub = |s: &mut String| {
        for secret in &secrets {
            if s == secret {
                *s = REDACTED.to_string();
            } else if secret.len() >= REDACT_INSIDE_MIN && s.contains(secret) {
                *s = s.replace(secret, REDACTED);
            }
        }
    };
    fn walk(v: &mut serde_json::Value, scrub: &dyn Fn(&mut String)) {
        match v {
            serde_json::Value::String(s) => scrub(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(i, scrub)),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (mut k, mut v) in entries {
                    scrub(&mut k);
                    walk(&mut v, scrub);
                    map.insert(k, v);
                }
            }
            _ => {}
        }
    }
    walk(&mut event.payload, &scrub);
    if let Some(a) = &mut event.card_action {
        walk(&mut a.args, &scrub);
        scrub(&mut a.bot);
        scrub(&mut a.action);
    }
    for s in [
        event.text.as_mut(),
        event.topic.as_mut(),
        event.external_id.as_mut(),
        event.message_id.as_mut(),
        event.chat.as_mut().map(|c| &mut c.id),
        event.sender.as_mut().map(|p| &mut p.id),
    ]
    .into_iter()
    .flatten()
    {
        scrub(s);
    }
}

/// What inviting members produced (chat creation and `AddMembers`), as the
/// `Delivered::detail` convention reports it.
#[derive(Debug, Default)]
pub struct MemberReport {
    pub added: Vec<String>,
    pub not_added: Vec<String>,
    pub errors: Vec<String>,
}

impl MemberReport {
    pub fn detail(&self, chat_id: &str) -> serde_json::Value {
        serde_json::json!({
            "chat_id": chat_id,
            "added": self.added.len(),
            "not_added": self.not_added,
            "errors": self.errors,
        })
    }
}

pub type SharedConnector = Arc<dyn Connector>;

/// A bot's question to a data source: `GET /ct/SN12345?day=2026-11-20`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataRequest {
    /// `GET` unless a body is given (then `POST`).
    pub body: Option<serde_json::Value>,
    /// Path below the source's base (`/gmv/daily`).
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl DataRequest {
    pub fn get(path: impl Into<String>) -> Self {
        DataRequest {
            path: path.into(),
            ..Default::default()
        }
    }

    /// A GET from a rendered path template whose values are percent-encoded
    /// (`/gmv/%E6%98%A8?day=2026-11-20`): the part after `?` becomes query pairs.
    pub fn from_rendered(rendered: &str) -> Self {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (path, query) = rendered.split_once('?').unwrap_or((rendered, ""));
        let mut req = DataRequest::get(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            req.query.push((decode(k), decode(v)));
        }
        req
    }
}

/// How long a platform asked us to wait: `Retry-After` (RFC 9110 §10.2.3: delay-seconds
/// or an HTTP date) or, on Feishu, `x-ogw-ratelimit-reset` (seconds until the window
/// resets, refs §2.4). A date in the past means "now" (zero). The longest of those given.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let retry_after = value("retry-after").and_then(|v| match v.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v).ok().map(|at| {
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO)
        }),
    });
    let reset = value("x-ogw-ratelimit-reset")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    retry_after.into_iter().chain(reset).max()
}

/// Check a request's timestamp (`value`: Unix seconds, from header `header`) against
/// `now`: at most `max_age` old and at most `skew` ahead (clocks differ). A signed
/// request outside that window is a replay, or a clock to fix; both are refused.
pub fn check_timestamp(
    header: &str,
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
    max_age: Duration,
    skew: Duration,
) -> Result<(), InboundError> {
    let secs: i64 = value.trim().parse().map_err(|_| {
        InboundError::StaleTimestamp(format!(
            "in {header} is not Unix seconds ({} characters)",
            value.chars().count()
        ))
    })?;
    // i128: no value of an i64 header can overflow the difference.
    let age = i128::from(now.timestamp()) - i128::from(secs);
    if age > i128::from(max_age.as_secs()) {
        return Err(InboundError::StaleTimestamp(format!(
            "in {header} is {age} s old; at most {} s is accepted (a replayed or delayed request)",
            max_age.as_secs()
        )));
    }
    if -age > i128::from(skew.as_secs()) {
        return Err(InboundError::StaleTimestamp(format!(
            "in {header} is {} s in the future; at most {} s of clock difference is accepted",
            -age,
            skew.as_secs()
        )));
    }
    Ok(())
}

/// Why a data source gave no answer. The text is meant for the person who asked
/// ("BI API timed out after 5 s"), so it names the source and never a secret.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SourceError {
    #[error("{source_name} timed out after {} s", .after.as_secs_f32())]
    Timeout {
        source_name: String,
        after: Duration,
    },
    #[error("{source_name} is unreachable ({detail})")]
    Unreachable { source_name: String, detail: String },
    #[error("{source_name} answered HTTP {status}: {detail}")]
    Status {
        source_name: String,
        status: u16,
        detail: String,
    },
    #[error("{source_name} has nothing at {path}")]
    NotFound { source_name: String, path: String },
    #[error("{source_name} sent data perch cannot read: {detail}")]
    Decode { source_name: String, detail: String },
    #[error("{source_name}: {detail}")]
    Refused { source_name: String, detail: String },
}

/// Something that answers bots' queries with JSON.
#[async_trait]
pub trait DataSource: Send + Sync {
    async fn fetch(&self, req: &DataRequest) -> Result<serde_json::Value, SourceError>;
}

/// What connectors get from the rest of perch when they are built.
#[derive(Clone)]
pub struct ConnectorEnv {
    pub store: Arc<dyn Store>,
    /// Where connectors with their own HTTP routes (the web chat) put inbound events.
    pub journal: Journal,
    /// Where connectors with their own HTTP routes wait for a card click's answer.
    pub clicks: Arc<crate::clicks::Clicks>,
    pub click_answer_window: Duration,
    /// `server.dedupe_window`: how long inbound event ids are remembered (connectors'
    /// timestamp windows default to fit inside it).
    pub dedupe_window: Duration,
    pub clock: SharedClock,
    /// One shared HTTP client (timeouts set; rustls).
    pub http: reqwest::Client,
    /// Names of the configured bots (the web chat shows them as @mentionable users).
    pub bot_names: Vec<String>,
    /// `[server] locale`: the language of built-in texts where a connector sets none.
    pub default_locale: crate::i18n::Locale,
    /// `[auth] mode`: whether the web chat sends strangers to `/login`.
    pub auth_mode: crate::auth::AuthMode,
    /// Cancelled when perch shuts down: connectors' own background connections (the
    /// Feishu long connection) stop on it.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Build the connector `name` from its loaded config, behind its rate limits
/// (`crate::throttle`), so that every outbound call waits on them. `Err`: the config was
/// not read with a registry that knows its kind (the config check says why).
pub(crate) fn build(
    name: &str,
    config: ConnectorConfig,
    env: &ConnectorEnv,
) -> Result<SharedConnector, String> {
    registry::build(name, config, env).map(|c| crate::throttle::throttle(c, env.store.clone()))
}

/// Register perch's own connector kinds: the one list of them.
pub(crate) fn register_builtin(kinds: &mut ConnectorKinds) {
    kinds
        .add_with_schema::<local::Local>("local")
        .add_with_schema::<webhook::Webhook>("webhook")
        .add_with_schema::<http::HttpSource>("http")
        .add_with_schema::<file::FileSource>("file")
        .add_with_schema::<feishu::Feishu>("feishu")
        .add_with_schema::<feishu::webhook_bot::FeishuWebhook>("feishu_webhook")
        .add_with_schema::<slack::Slack>("slack")
        .add_with_schema::<matrix::Matrix>("matrix");
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_takes_seconds_an_http_date_or_feishus_reset() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2".into())])),
            Some(Duration::from_secs(2))
        );
        let in_30s =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = retry_after(&headers(&[("retry-after", in_30s)])).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        // A date in the past: go now.
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT".into()
            )])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers(&[("x-ogw-ratelimit-reset", "3".into())])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "soon".into())])),
            None
        );
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
