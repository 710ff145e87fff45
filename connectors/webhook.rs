//! `kind = "webhook"`: the generic inbound webhook for internal systems (and GitHub,
//! with config alone), plus an optional generic outbound JSON sink.
//!
//! Inbound: HMAC-SHA256 over the exact raw body (optionally `timestamp + separator +
//! body`, with a tolerance window), hex, with a configurable header and prefix; compared
//! in constant time. Topic and external id come from a header or a JSON pointer.
//! Unsigned requests are refused unless the connector says `insecure = true`.
//!
//! Outbound (when `send_url` is set): each operation is POSTed as JSON
//! `{"key", "op", …}` with an `Idempotency-Key` header (and the same signature scheme
//! when `secret` is set), so the receiver can drop repeats.

use super::*;
use crate::config::{EnvString, Secret, de_duration};
use crate::event::{Chat, ChatType, EventKind, Person};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn default_signature_header() -> String {
    "X-Perch-Signature".to_string()
}
fn default_prefix() -> String {
    "sha256=".to_string()
}
fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_separator() -> String {
    ".".to_string()
}

/// `[connectors.<name>] kind = "webhook"`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Shared HMAC secret. Required unless `insecure = true`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Accept unsigned requests. Say it out loud: anyone who can reach perch can post.
    #[serde(default)]
    pub insecure: bool,
    /// Header carrying the signature (GitHub: `X-Hub-Signature-256`).
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Text before the hex digest in that header (GitHub: `sha256=`).
    #[serde(default = "default_prefix")]
    pub signature_prefix: String,
    /// Header with a Unix timestamp (seconds) that is signed together with the body as
    /// `timestamp + timestamp_separator + body`. Unset: only the body is signed.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// What joins timestamp and body in the signed text.
    #[serde(default = "default_separator")]
    pub timestamp_separator: String,
    /// Largest accepted clock difference for `timestamp_header`.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(default = "default_tolerance", deserialize_with = "de_duration")]
    pub tolerance: Duration,
    /// Fixed topic for every event (when no header or pointer gives one).
    #[serde(default)]
    pub topic: Option<String>,
    /// Header with the topic (GitHub: `X-GitHub-Event`).
    #[serde(default)]
    pub topic_header: Option<String>,
    /// JSON pointer to the topic in the body (`/type`).
    #[serde(default)]
    pub topic_pointer: Option<String>,
    /// Put before the topic (`github.` → `github.push`).
    #[serde(default)]
    pub topic_prefix: String,
    /// Header with the sender's unique delivery id (GitHub: `X-GitHub-Delivery`).
    #[serde(default)]
    pub id_header: Option<String>,
    /// JSON pointer to the delivery id in the body.
    #[serde(default)]
    pub id_pointer: Option<String>,
    /// JSON pointer to a chat id in the body, when events belong to a chat.
    #[serde(default)]
    pub chat_pointer: Option<String>,
    /// JSON pointer to the acting person's id (`/sender/login`).
    #[serde(default)]
    pub sender_pointer: Option<String>,
    /// Outbound: URL that receives operations as JSON. Unset: this connector only receives.
    #[serde(default)]
    pub send_url: Option<EnvString>,
    /// Outbound: operations per second across the connector.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// Outbound: operations per second to one chat.
    #[serde(default)]
    pub chat_rate_per_second: Option<u32>,
}

impl WebhookConfig {
    pub fn validate(&self, name: &str, at: usize, issues: &mut crate::config::Issues) {
        let has_secret = self.secret.as_ref().is_some_and(|s| !s.is_empty());
        if !has_secret && !self.insecure {
            issues.at(at, format!("connector `{name}`: set `secret` (or `insecure = true` to accept unsigned requests)"));
        }
        if has_secret && self.insecure {
            issues.at(at, format!("connector `{name}`: `insecure = true` together with a `secret` is contradictory"));
        }
        for (field, p) in [
            ("topic_pointer", &self.topic_pointer),
            ("id_pointer", &self.id_pointer),
            ("chat_pointer", &self.chat_pointer),
            ("sender_pointer", &self.sender_pointer),
        ] {
            if let Some(p) = p
                && !p.starts_with('/')
            {
                issues.at(at, format!("connector `{name}`: {field} {p:?} is not a JSON pointer (it must start with `/`)"));
            }
        }
        if let Some(url) = &self.send_url
            && reqwest::Url::parse(url).is_err()
        {
            issues.at(
                at,
                format!("connector `{name}`: send_url {:?} is not a URL", &**url),
            );
        }
    }
}

/// HMAC-SHA256 of `message` as lowercase hex.
pub fn sign(secret: &[u8], message: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Check `header_value` (`<prefix><hex>`) against HMAC-SHA256(secret, message), in
/// constant time.
pub fn verify_signature(secret: &[u8], message: &[u8], header_value: &str, prefix: &str) -> bool {
    let Some(hex_sig) = header_value.trim().strip_prefix(prefix) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.verify_slice(&given).is_ok()
}

pub struct Webhook {
    name: String,
    config: WebhookConfig,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(name: &str, config: WebhookConfig, http: reqwest::Client) -> Self {
        Webhook {
            name: name.to_string(),
            config,
            http,
        }
    }

    /// A header's value, trimmed. A header that is there but not UTF-8 is refused, not
    /// ignored: an ignored delivery id would let the event through undeduplicated.
    fn header<'a>(
        &self,
        req: &'a InboundRequest,
        name: &str,
    ) -> Result<Option<&'a str>, InboundError> {
        match req.headers.get(name) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v.as_bytes())
                .map(|s| Some(s.trim()))
                .map_err(|_| InboundError::Malformed(format!("header {name} is not valid UTF-8"))),
        }
    }

    /// The signature check, before anything is parsed.
    fn verify(&self, req: &InboundRequest) -> Result<(), InboundError> {
        let Some(secret) = self.config.secret.as_ref().filter(|s| !s.is_empty()) else {
            return if self.config.insecure {
                Ok(())
            } else {
                Err(InboundError::MissingSignature(
                    self.config.signature_header.clone(),
                ))
            };
        };
        let given = self
            .header(req, &self.config.signature_header)
            .map_err(|_| InboundError::BadSignature)?
            .ok_or_else(|| InboundError::MissingSignature(self.config.signature_header.clone()))?;
        let message: std::borrow::Cow<[u8]> = match &self.config.timestamp_header {
            None => std::borrow::Cow::Borrowed(&req.body),
            Some(h) => {
                let ts = self.header(req, h)?.ok_or_else(|| {
                    InboundError::StaleTimestamp(format!("header {h} is missing"))
                })?;
                // The same window both ways: `tolerance` old or ahead.
                super::check_timestamp(
                    h,
                    ts,
                    req.now,
                    self.config.tolerance,
                    self.config.tolerance,
                )?;
                let mut m = Vec::with_capacity(
                    ts.len() + self.config.timestamp_separator.len() + req.body.len(),
                );
                m.extend_from_slice(ts.as_bytes());
                m.extend_from_slice(self.config.timestamp_separator.as_bytes());
                m.extend_from_slice(&req.body);
                std::borrow::Cow::Owned(m)
            }
        };
        if verify_signature(
            secret.expose().as_bytes(),
            &message,
            given,
            &self.config.signature_prefix,
        ) {
            Ok(())
        } else {
            Err(InboundError::BadSignature)
        }
    }

    /// Turn a verified request into an event.
    pub fn to_event(&self, req: &InboundRequest) -> Result<Event, InboundError> {
        let payload: serde_json::Value = if req.body.is_empty() {
            return Err(InboundError::Malformed(
                "empty body (expected a JSON document)".into(),
            ));
        } else {
            serde_json::from_slice(&req.body)
                .map_err(|e| InboundError::Malformed(format!("not JSON: {e}")))?
        };
        let from_pointer = |p: &Option<String>| -> Option<String> {
            p.as_deref()
                .and_then(|p| payload.pointer(p))
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
        };
        let topic = self
            .config
            .topic_header
            .as_deref()
            .map(|h| self.header(req, h))
            .transpose()?
            .flatten()
            .map(str::to_string)
            .or_else(|| from_pointer(&self.config.topic_pointer))
            .or_else(|| self.config.topic.clone());
        let Some(topic) = topic.filter(|t| !t.is_empty()) else {
            return Err(InboundError::Malformed(
                "no topic: set the topic header or field".into(),
            ));
        };
        let mut event = Event::new(&self.name, EventKind::System, req.now);
        event.topic = Some(format!("{}{}", self.config.topic_prefix, topic));
        event.external_id = self
            .config
            .id_header
            .as_deref()
            .map(|h| self.header(req, h))
            .transpose()?
            .flatten()
            .map(str::to_string)
            .or_else(|| from_pointer(&self.config.id_pointer));
        event.chat = from_pointer(&self.config.chat_pointer).map(|id| Chat {
            id,
            chat_type: ChatType::Group,
        });
        event.sender =
            from_pointer(&self.config.sender_pointer).map(|id| Person { id, name: None });
        event.payload = payload;
        Ok(event)
    }
}

#[async_trait]
impl Connector for Webhook {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn secrets(&self) -> Vec<&str> {
        self.config.secret.iter().map(Secret::expose).collect()
    }

    fn handle_inbound(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        if !req.sub_path.is_empty() {
            return Err(InboundError::NotFound(req.sub_path.clone()));
        }
        self.verify(req)?;
        let event = self.to_event(req)?;
        let id = event.id.to_string();
        Ok(Inbound::Events {
            events: vec![event],
            ack: Reply::ok(serde_json::json!({ "ok": true, "event_id": id })),
        })
    }

    async fn execute(&self, op: &Operation, idempotency_key: &str) -> Result<Delivered, SendError> {
        let Some(url) = &self.config.send_url else {
            return Err(SendError::Unsupported("send (no send_url is configured)"));
        };
        let mut body = serde_json::to_value(op).map_err(|e| SendError::Permanent(e.to_string()))?;
        body["key"] = serde_json::Value::String(idempotency_key.to_string());
        let raw = serde_json::to_vec(&body).map_err(|e| SendError::Permanent(e.to_string()))?;
        let mut req = self
            .http
            .post(&**url)
            .header("content-type", "application/json")
            .header("idempotency-key", idempotency_key);
        if let Some(secret) = self.config.secret.as_ref().filter(|s| !s.is_empty()) {
            let sig = sign(secret.expose().as_bytes(), &raw);
            req = req.header(
                self.config.signature_header.as_str(),
                format!("{}{sig}", self.config.signature_prefix),
            );
        }
        let resp = req
            .body(raw)
            .send()
            .await
            .map_err(|e| SendError::retry(format!("POST {}: {}", redact_url(url), e)))?;
        let status = resp.status();
        let retry_after = super::retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            let id = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str().map(str::to_string)));
            return Ok(Delivered {
                id,
                detail: serde_json::Value::Null,
            });
        }
        let reason = format!(
            "HTTP {} from {}: {}",
            status.as_u16(),
            redact_url(url),
            text.chars().take(200).collect::<String>()
        );
        if status.as_u16() == 429 {
            Err(SendError::RateLimited {
                reason,
                retry_after,
                scope: super::LimitScope::Connector,
            })
        } else if status.is_server_error() || status.as_u16() == 408 {
            Err(SendError::Retry {
                reason,
                retry_after,
            })
        } else {
            Err(SendError::Permanent(reason))
        }
    }

    fn rate_limits(&self) -> RateLimits {
        RateLimits {
            per_second: self.config.rate_per_second,
            burst: None,
            per_chat_per_second: self.config.chat_rate_per_second,
            per_minute: None,
        }
    }
}

/// A URL without its query (which may hold a token), for error messages.
fn redact_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

impl crate::connectors::ConnectorKind for Webhook {
    type Config = WebhookConfig;

    fn build(
        name: &str,
        config: WebhookConfig,
        env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        std::sync::Arc::new(Webhook::new(name, config, env.http.clone()))
    }

    fn validate(name: &str, config: &WebhookConfig, at: usize, issues: &mut crate::config::Issues) {
        config.validate(name, at, issues);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_style_signature_round_trip() {
        let sig = sign(b"It's a Secret to Everybody", b"Hello, World!");
        // GitHub's documented example value for this secret and payload.
        assert_eq!(
            sig,
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            &format!("sha256={sig}"),
            "sha256="
        ));
        assert!(!verify_signature(
            b"wrong",
            b"Hello, World!",
            &format!("sha256={sig}"),
            "sha256="
        ));
        assert!(!verify_signature(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            &sig,
            "sha256="
        ));
        assert!(!verify_signature(b"k", b"m", "sha256=zz", "sha256="));
    }
}
