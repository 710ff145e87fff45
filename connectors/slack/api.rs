//! The Slack Web API client: one bot token, `{"ok": false, "error": …}` envelopes as
//! typed errors, HTTP 429 + `Retry-After`, and a per-method pace for the rate-limit tiers.
//!
//! Flow: outbox → connector (out) → **api** → Slack (`POST <base_url>/<method>`).
//!
//! - **Requests** (refs §5): exactly one `Authorization: Bearer xoxb-…`, and on POSTs
//!   one `Content-Type: application/json; charset=utf-8` (not reqwest's `.json()`,
//!   which adds its own; a strict gateway refuses a repeated singleton header). Read
//!   methods (`users.lookupByEmail`) are GETs with query parameters, as the official
//!   Python SDK sends them.
//! - **Errors:** Slack answers HTTP 200 even on failure, so the JSON `ok`/`error` is
//!   judged, not the status. `ratelimited` or HTTP 429 → `RateLimited` (connector-wide,
//!   with `Retry-After`); `internal_error`, `fatal_error`, `service_unavailable`,
//!   `request_timeout`, 5xx, connect errors and timeouts → retry; the rest (auth,
//!   scopes, unknown channel, bad blocks) → permanent, with a hint where the fix is
//!   known.
//! - **Tiers** (refs §5, \[doc\]): each method has its own per-minute budget per
//!   workspace (Tier 2 20+/min, Tier 3 50+/min, Tier 4 100+/min). A governor per method
//!   keeps perch under it, allowing a burst of one minute's budget; `chat.postMessage`
//!   ("about 1/s per channel") is paced per channel by `crate::throttle` instead.

use crate::config::Secret;
use crate::connectors::{LimitScope, SendError};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The Content-Type of every Web API request (refs §5).
const JSON_UTF8: &str = "application/json; charset=utf-8";

/// A failed Web API call.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ApiError {
    #[error("{method}: cannot reach Slack: {reason}")]
    Transport { method: String, reason: String },
    #[error("{method}: rate limited by Slack{}", .retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        method: String,
        retry_after: Option<Duration>,
    },
    #[error("{method}: Slack error `{error}`{}", hint(.error))]
    Platform { method: String, error: String },
    #[error("{method}: HTTP {status} without a Slack answer: {snippet}")]
    Http {
        method: String,
        status: u16,
        snippet: String,
    },
}

impl ApiError {
    /// The Slack `error` code, for callers that treat some as answers
    /// (`users_not_found`, `already_in_channel`).
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Platform { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A hint for errors whose fix is in the Slack app's settings or the workspace.
fn hint(error: &str) -> &'static str {
    match error {
        "not_in_channel" => " (invite the app to the channel: /invite @<app>)",
        "channel_not_found" => {
            " (no such channel, or the app cannot see it: invite it, or check the id)"
        }
        "missing_scope" => {
            " (add the scope under OAuth & Permissions and reinstall the app; see connectors/slack/README.md)"
        }
        "invalid_auth" | "not_authed" | "token_revoked" | "account_inactive" => {
            " (the bot token is wrong or revoked: copy the xoxb-… token again)"
        }
        "name_taken" => " (a channel with that name exists already)",
        "is_archived" => " (the channel is archived)",
        "invalid_blocks" | "invalid_blocks_format" => " (Slack refused the card's blocks)",
        "msg_too_long" => " (the message is longer than Slack accepts)",
        _ => "",
    }
}

/// Errors after which the same call may succeed later.
const TRANSIENT: [&str; 4] = [
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

impl From<ApiError> for SendError {
    fn from(e: ApiError) -> SendError {
        let reason = e.to_string();
        match e {
            ApiError::Transport { .. } => SendError::retry(reason),
            // Slack's limits are per method and workspace (refs §5): the whole
            // connector waits, which is what `crate::throttle` does for this scope.
            ApiError::RateLimited { retry_after, .. } => SendError::RateLimited {
                reason,
                retry_after,
                scope: LimitScope::Connector,
            },
            ApiError::Http { status, .. } if status >= 500 || status == 408 => {
                SendError::retry(reason)
            }
            ApiError::Http { .. } => SendError::Permanent(reason),
            ApiError::Platform { error, .. } if TRANSIENT.contains(&error.as_str()) => {
                SendError::retry(reason)
            }
            ApiError::Platform { .. } => SendError::Permanent(reason),
        }
    }
}

/// Per-minute budgets of the methods perch calls, by tier (refs §5, [doc]; the
/// documented minimums, which Slack may exceed). `chat.postMessage` and `chat.update`
/// are paced per channel by the throttle and have no entry.
fn tier_per_minute(method: &str) -> Option<u32> {
    match method {
        "conversations.create" | "conversations.invite" => Some(20), // Tier 2
        "users.lookupByEmail" | "conversations.list" => Some(50),    // Tier 3 / Tier 2+
        _ => None,
    }
}

/// The Web API client of one app installation (one bot token).
pub struct ApiClient {
    http: reqwest::Client,
    base_url: String,
    token: Secret,
    /// One governor per tiered method, made on first use. A std mutex: held only to
    /// find or insert the limiter, never across an await.
    pace: std::sync::Mutex<HashMap<&'static str, Arc<DefaultDirectRateLimiter>>>,
}

impl ApiClient {
    pub fn new(http: reqwest::Client, base_url: &str, token: Secret) -> Self {
        ApiClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            pace: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn limiter(&self, method: &'static str) -> Option<Arc<DefaultDirectRateLimiter>> {
        let per_minute = NonZeroU32::new(tier_per_minute(method)?)?;
        let mut map = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            map.entry(method)
                .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_minute(per_minute))))
                .clone(),
        )
    }

    /// `POST <base>/<method>` with the JSON `body`; the whole answer when `ok` is true.
    pub async fn call(&self, method: &'static str, body: &Value) -> Result<Value, ApiError> {
        let req = self
            .http
            .post(format!("{}/{method}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, JSON_UTF8)
            .body(body.to_string());
        self.exchange(method, req).await
    }

    /// `GET <base>/<method>?<query>`, for read methods that take no JSON body
    /// (`users.lookupByEmail`: the official Python SDK sends it as a GET with query
    /// parameters).
    pub async fn get(
        &self,
        method: &'static str,
        query: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        let req = self
            .http
            .get(format!("{}/{method}", self.base_url))
            .query(query);
        self.exchange(method, req).await
    }

    async fn exchange(
        &self,
        method: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, ApiError> {
        if let Some(limiter) = self.limiter(method) {
            limiter.until_ready().await;
        }
        let resp = req
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| ApiError::Transport {
                method: method.into(),
                reason: e.without_url().to_string(),
            })?;
        let status = resp.status().as_u16();
        let retry_after = crate::connectors::retry_after(resp.headers());
        let text = resp.text().await.map_err(|e| ApiError::Transport {
            method: method.into(),
            reason: e.without_url().to_string(),
        })?;
        judge(method, status, retry_after, &text)
    }
}

/// Judge an answer: HTTP 429 or `error: "ratelimited"` is `RateLimited`; otherwise the
/// JSON `ok` decides whatever the status; a non-JSON answer is an HTTP error.
fn judge(
    method: &str,
    status: u16,
    retry_after: Option<Duration>,
    text: &str,
) -> Result<Value, ApiError> {
    let doc: Option<Value> = serde_json::from_str(text).ok().filter(Value::is_object);
    let error: Option<String> = doc
        .as_ref()
        .and_then(|d| d.get("error"))
        .and_then(Value::as_str)
        .map(|e| e.chars().take(100).collect());
    if status == 429 || matches!(error.as_deref(), Some("ratelimited" | "rate_limited")) {
        return Err(ApiError::RateLimited {
            method: method.into(),
            retry_after,
        });
    }
    match doc {
        Some(doc) if doc.get("ok").and_then(Value::as_bool) == Some(true) => Ok(doc),
        Some(doc) if doc.get("ok").is_some() => Err(ApiError::Platform {
            method: method.into(),
            error: error.unwrap_or_else(|| "unknown_error".into()),
        }),
        _ => Err(ApiError::Http {
            method: method.into(),
            status,
            snippet: text.chars().take(200).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_branch_on_ok_not_status() {
        assert!(judge("m", 200, None, r#"{"ok":true,"ts":"1.2"}"#).is_ok());
        let e = judge(
            "chat.postMessage",
            200,
            None,
            r#"{"ok":false,"error":"not_in_channel"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(SendError::from(e), SendError::Permanent(m) if m.contains("not_in_channel") && m.contains("/invite"))
        );
        let e = judge("m", 429, Some(Duration::from_secs(7)), "").unwrap_err();
        assert_eq!(
            SendError::from(e),
            SendError::RateLimited {
                reason: "m: rate limited by Slack, retry after 7 s".into(),
                retry_after: Some(Duration::from_secs(7)),
                scope: LimitScope::Connector,
            }
        );
        let e = judge("m", 200, None, r#"{"ok":false,"error":"ratelimited"}"#).unwrap_err();
        assert!(matches!(e, ApiError::RateLimited { .. }));
        let e = judge("m", 200, None, r#"{"ok":false,"error":"internal_error"}"#).unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Retry { .. }));
        let e = judge("m", 503, None, "<html>").unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Retry { .. }));
        let e = judge("m", 404, None, "nope").unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Permanent(_)));
        let e = judge("m", 200, None, r#"{"ok":false,"error":"invalid_auth"}"#).unwrap_err();
        assert_eq!(e.code(), Some("invalid_auth"));
        assert!(matches!(SendError::from(e), SendError::Permanent(m) if m.contains("token")));
    }
}
