//! `http_bot`: a bot written in any language, reached over HTTP.
//!
//! **Request.** For each event routed to it, perch POSTs
//! `{"bot": "<name>", "event": <the neutral event JSON>, "actions_path": "/api/bots/<name>/actions"}`
//! to `url`, signed like the inbound webhook connector (`connectors/webhook.rs`):
//! `X-Perch-Timestamp: <unix seconds>` and
//! `X-Perch-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
//!
//! **Answer.** `200 {"actions": [...]}`: each action is perch's `Action` JSON (`send`,
//! `reply`, `update`, `create_chat`, `add_members`, `toast`), and a message `body` may be
//! `{"type": "template", "template": "<cards/ name>", "data": {...}}` besides `text`,
//! `markdown` and an inline neutral `card`. `202`: the bot answers later (below). Any
//! other status, a body that is not such JSON, or no answer within `timeout` fails the
//! bot for this event: the person gets perch's usual friendly apology and nothing the
//! bot said is sent (an answer is taken whole or not at all).
//!
//! **Late actions.** After a 202 the bot POSTs
//! `{"event_id": "<id of the event it was sent>", "actions": [{"key": "<its own key>", ...action}]}`
//! to `/api/bots/<name>/actions`, signed with the same secret and headers. perch checks
//! the signature, the timestamp window and every action, then journals the batch as a
//! `bot_actions` event (durable before the 2xx) that the router hands straight back to
//! this bot, which returns each action under the outbox key
//! `once/<name>/late/<event id>/<key>`: a retried POST, or the same key in another
//! batch, is not sent twice, and a crash after the 2xx loses nothing.
//!
//! The JSON Schemas of both directions are in `schemas/http_bot.*.json`.

use super::*;
use crate::config::{Secret, de_duration};
use crate::connectors::{InboundError, InboundRequest};
use crate::event::EventKind;
use serde::Serialize;
use std::time::Duration;

/// Header with the Unix timestamp that is signed with the body.
pub const TIMESTAMP_HEADER: &str = "X-Perch-Timestamp";
/// Header with `sha256=<hex>`: the same header and prefix as the webhook connector's.
pub const SIGNATURE_HEADER: &str = "X-Perch-Signature";
const SIGNATURE_PREFIX: &str = "sha256=";

/// `[bots.<name>] kind = "http_bot"`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpBotConfig {
    /// Where perch POSTs each event (`http://127.0.0.1:9000/perch`).
    pub url: String,
    /// Shared secret for the signatures both ways. Use `${ENV}`.
    pub secret: Secret,
    /// How long the bot may take to answer one event (keep it below
    /// `server.bot_timeout`); a slow bot answers 202 and posts its actions later.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Largest accepted clock difference on a late-actions request's timestamp.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(default = "default_tolerance", deserialize_with = "de_duration")]
    pub tolerance: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

impl HttpBotConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => issues.at(
                at,
                format!("bot `{name}`: url {:?} is not an http(s) URL", self.url),
            ),
        }
        if self.secret.is_empty() {
            issues.at(
                at,
                format!(
                    "bot `{name}`: secret is empty; give one (`${{ENV}}`) so requests can be signed"
                ),
            );
        }
        if self.timeout.is_zero() || self.timeout > config.server.bot_timeout {
            issues.at(
                at,
                format!(
                    "bot `{name}`: timeout {:?} must be above zero and at most server.bot_timeout ({:?})",
                    self.timeout, config.server.bot_timeout
                ),
            );
        }
    }
}

pub struct HttpBot {
    name: String,
    url: String,
    secret: Secret,
    tolerance: Duration,
    http: reqwest::Client,
}

/// The first part of a late action's once-key (`late/<event id>/<key>`).
pub const LATE_KEY_PREFIX: &str = "late";

impl HttpBot {
    /// Sign `body` at `timestamp` (Unix seconds) as the headers carry it.
    pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
        let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
        message.extend_from_slice(timestamp.as_bytes());
        message.push(b'.');
        message.extend_from_slice(body);
        format!(
            "{SIGNATURE_PREFIX}{}",
            crate::connectors::webhook::sign(secret.as_bytes(), &message)
        )
    }

    async fn ask(&self, event: &Event, ctx: &BotContext) -> Result<Vec<Action>, BotError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "bot": self.name,
            "event": event,
            "actions_path": format!("/api/bots/{}/actions", self.name),
        }))
        .map_err(|e| BotError::Other(format!("cannot encode the event: {e}")))?;
        let ts = ctx.clock.now().timestamp().to_string();
        let sig = Self::signature(self.secret.expose(), &ts, &body);
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, &ts)
            .header(SIGNATURE_HEADER, sig)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                BotError::Other(if e.is_timeout() {
                    "the bot did not answer in time".to_string()
                } else {
                    format!("cannot reach the bot: {}", without_url(&e))
                })
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::ACCEPTED {
            return Ok(Vec::new());
        }
        let raw = resp.bytes().await.map_err(|e| {
            BotError::Other(format!("cannot read the bot's answer: {}", without_url(&e)))
        })?;
        if !status.is_success() {
            return Err(BotError::Other(format!("the bot answered HTTP {status}")));
        }
        let answer: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| BotError::Other(format!("the bot's answer is not JSON: {e}")))?;
        let actions = answer
            .get("actions")
            .and_then(|a| a.as_array())
            .ok_or_else(|| BotError::Other("the bot's answer has no `actions` array".into()))?;
        actions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                to_action(a.clone(), &|t, d| ctx.card(t, d))
                    .map_err(|e| BotError::Other(format!("the bot's action {i}: {e}")))
            })
            .collect()
    }

    /// The late actions carried by a `bot_actions` event, each under its once-key.
    fn late(&self, event: &Event) -> Result<Vec<Action>, BotError> {
        let batch: LateBatch = serde_json::from_value(event.payload.clone())
            .map_err(|e| BotError::Other(format!("late actions: {e}")))?;
        Ok(batch
            .actions
            .into_iter()
            .map(|k| {
                k.action
                    .once(format!("{LATE_KEY_PREFIX}/{}/{}", batch.event_id, k.key))
            })
            .collect())
    }
}

/// A reqwest error's text without the URL (it may carry a token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<bot url>");
    }
    text
}

/// One action as a bot writes it, with `{"type": "template"}` bodies rendered.
pub fn to_action(
    mut value: serde_json::Value,
    render: &dyn Fn(&str, &serde_json::Value) -> Result<crate::action::MessageBody, BotError>,
) -> Result<Action, String> {
    if let Some(body) = value.get_mut("body")
        && body.get("type").and_then(|t| t.as_str()) == Some("template")
    {
        let template = body
            .get("template")
            .and_then(|t| t.as_str())
            .ok_or("a template body needs `template`")?
            .to_string();
        let data = body.get("data").cloned().unwrap_or(serde_json::json!({}));
        let rendered = render(&template, &data).map_err(|e| e.to_string())?;
        *body = serde_json::to_value(rendered).map_err(|e| e.to_string())?;
    }
    let action: Action = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if matches!(action, Action::Once { .. }) {
        return Err("`once` is for Rust bots; late actions carry their own `key`".into());
    }
    Ok(action)
}

/// The body of `POST /api/bots/<name>/actions`, and the payload of the event it becomes
/// (with every action resolved, templates rendered, and `bot` added: so unknown keys are
/// let through here, and `server/bot_actions.rs` refuses them in a request).
#[derive(Debug, Serialize, Deserialize)]
pub struct LateBatch {
    pub event_id: EventId,
    pub actions: Vec<KeyedAction>,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyedAction {
    /// The bot's own idempotency key: one action per key per event, ever.
    pub key: String,
    #[serde(flatten)]
    pub action: Action,
}

#[async_trait]
impl Bot for HttpBot {
    fn secrets(&self) -> Vec<&str> {
        vec![self.secret.expose()]
    }

    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        if event.kind == EventKind::BotActions {
            return self.late(event);
        }
        self.ask(event, ctx).await
    }

    fn check_late_actions(&self, req: &InboundRequest) -> Option<Result<(), InboundError>> {
        Some(self.verify(req))
    }
}

impl HttpBot {
    /// The signature and timestamp window of a late-actions request.
    fn verify(&self, req: &InboundRequest) -> Result<(), InboundError> {
        let header = |h: &str| {
            req.headers
                .get(h)
                .map(|v| v.to_str().map_err(|_| InboundError::BadSignature))
                .transpose()
        };
        let given = header(SIGNATURE_HEADER)?
            .ok_or_else(|| InboundError::MissingSignature(SIGNATURE_HEADER.into()))?;
        let ts = header(TIMESTAMP_HEADER)?.ok_or_else(|| {
            InboundError::StaleTimestamp(format!("header {TIMESTAMP_HEADER} is missing"))
        })?;
        crate::connectors::check_timestamp(
            TIMESTAMP_HEADER,
            ts,
            req.now,
            self.tolerance,
            self.tolerance,
        )?;
        let mut message = Vec::with_capacity(ts.len() + 1 + req.body.len());
        message.extend_from_slice(ts.as_bytes());
        message.push(b'.');
        message.extend_from_slice(&req.body);
        if crate::connectors::webhook::verify_signature(
            self.secret.expose().as_bytes(),
            &message,
            given,
            SIGNATURE_PREFIX,
        ) {
            Ok(())
        } else {
            Err(InboundError::BadSignature)
        }
    }
}

/// `kind = "http_bot"` (registered in `super::register_builtin`).
impl BotKind for HttpBot {
    type Config = HttpBotConfig;
    fn build(name: &str, config: HttpBotConfig) -> Result<Self, BotError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| BotError::Config(format!("HTTP client: {e}")))?;
        Ok(HttpBot {
            name: name.to_string(),
            url: config.url,
            secret: config.secret,
            tolerance: config.tolerance,
            http,
        })
    }
    fn validate(name: &str, config: &HttpBotConfig, at: usize, all: &Config, issues: &mut Issues) {
        config.validate(name, at, all, issues);
    }
}

/// What perch POSTs to the bot (schema only; `HttpBot::ask` builds it).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct BotRequest {
    /// The bot's configured name.
    bot: String,
    /// The neutral event, as the console shows it.
    event: Event,
    /// Where to POST late actions after answering 202, relative to perch's base URL.
    actions_path: String,
}

/// The bot's 200 answer (schema only).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct BotAnswer {
    /// Carried out in order; an answer with one unreadable action is refused whole.
    actions: Vec<Action>,
}

/// The body of `POST /api/bots/<name>/actions` (schema only).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct LateActionsRequest {
    /// The id of the event perch sent (`event.id` of the request that was answered 202).
    event_id: EventId,
    /// Each with the bot's own idempotency `key`: one action per key per event, ever.
    actions: Vec<KeyedAction>,
}

#[cfg(any(test, feature = "testing"))]
/// The JSON Schemas of the http_bot wire format, by file name (`schemas/<name>`). A
/// message `body` in an answer may also name a card template, which `MessageBody`
/// itself (what perch stores) does not have: that variant is added here, and `once`
/// (for Rust bots) is taken out.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let template_body = serde_json::json!({
        "description": "A card rendered by perch from `cards/<template>.hbs` over `data`.",
        "type": "object",
        "properties": {
            "type": {"type": "string", "const": "template"},
            "template": {"type": "string"},
            "data": {}
        },
        "required": ["type", "template"]
    });
    let with_template = |mut schema: serde_json::Value| {
        if let Some(variants) = schema
            .pointer_mut("/$defs/MessageBody/oneOf")
            .and_then(|v| v.as_array_mut())
        {
            variants.push(template_body.clone());
        }
        // `once` is for Rust bots; an HTTP bot's late actions carry their own `key`.
        for actions in ["/$defs/Action/oneOf", "/$defs/KeyedAction/oneOf"] {
            if let Some(variants) = schema.pointer_mut(actions).and_then(|v| v.as_array_mut()) {
                variants.retain(|v| v.pointer("/properties/action/const") != Some(&"once".into()));
            }
        }
        schema
    };
    let value = |s: schemars::Schema| s.to_value();
    vec![
        (
            "http_bot.request.json",
            value(schemars::schema_for!(BotRequest)),
        ),
        (
            "http_bot.answer.json",
            with_template(value(schemars::schema_for!(BotAnswer))),
        ),
        (
            "http_bot.late_actions.json",
            with_template(value(schemars::schema_for!(LateActionsRequest))),
        ),
    ]
}
