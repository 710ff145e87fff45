//! The Matrix client-server API client: the homeserver's base URL, one access token,
//! `{"errcode","error"}` answers as typed errors, and rate limits.
//!
//! Flow: outbox → connector (out) → **api** → homeserver (`/_matrix/client/v3/...`);
//! the sync loop (`sync.rs`) → **api** → `GET /sync`.
//!
//! - **Requests:** `Authorization: Bearer <access_token>`; bodies are JSON. Path parts
//!   (room ids `!x:server`, event ids `$y`, transaction ids) are percent-encoded.
//! - **Errors** (spec "Standard error response"): `M_LIMIT_EXCEEDED` or HTTP 429 →
//!   `RateLimited` (the body's `retry_after_ms`, or the `Retry-After` header that newer
//!   servers also send); 5xx, connect errors and timeouts → retry; `M_UNKNOWN_TOKEN`,
//!   `M_FORBIDDEN`, `M_NOT_FOUND`, `M_BAD_JSON`… → permanent, with a hint where the fix
//!   is known.

use crate::connectors::{LimitScope, SendError};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use std::sync::RwLock;
use std::time::Duration;

/// Everything but RFC 3986 unreserved characters is encoded in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment, percent-encoded (`!room:server` → `%21room%3Aserver`).
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A failed client-server API call.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ApiError {
    #[error("{what}: cannot reach the homeserver: {reason}")]
    Transport { what: String, reason: String },
    #[error("{what}: rate limited by the homeserver{}", .retry_after.map(|d| format!(", retry after {} ms", d.as_millis())).unwrap_or_default())]
    RateLimited {
        what: String,
        retry_after: Option<Duration>,
    },
    #[error("{what}: HTTP {status} {errcode}: {error}{}", hint(.errcode))]
    Matrix {
        what: String,
        status: u16,
        errcode: String,
        error: String,
    },
    #[error("{what}: HTTP {status} without a Matrix answer: {snippet}")]
    Http {
        what: String,
        status: u16,
        snippet: String,
    },
}

impl ApiError {
    /// The Matrix `errcode` (`M_FORBIDDEN`), for callers that treat some as answers.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            ApiError::Matrix { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
    /// The human `error` text of a Matrix answer.
    pub fn message(&self) -> Option<&str> {
        match self {
            ApiError::Matrix { error, .. } => Some(error),
            _ => None,
        }
    }
    /// Worth trying the same call again later.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } | ApiError::RateLimited { .. } => true,
            ApiError::Matrix { status, .. } | ApiError::Http { status, .. } => {
                *status >= 500 || *status == 408
            }
        }
    }
}

/// A hint for errors whose fix is in the config or on the homeserver.
fn hint(errcode: &str) -> &'static str {
    match errcode {
        "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN" => {
            " (the access token is wrong or was logged out: set a new one, or use user_id + password)"
        }
        "M_FORBIDDEN" => " (the bot may not do that here: is it in the room, with enough power?)",
        "M_NOT_FOUND" => " (no such room or event, or the bot cannot see it)",
        "M_UNKNOWN" => "",
        _ => "",
    }
}

impl From<ApiError> for SendError {
    fn from(e: ApiError) -> SendError {
        let reason = e.to_string();
        match e {
            // Synapse limits per user (the bot account), whatever the room: the whole
            // connector waits.
            ApiError::RateLimited { retry_after, .. } => SendError::RateLimited {
                reason,
                retry_after,
                scope: LimitScope::Connector,
            },
            e if e.is_transient() => SendError::retry(reason),
            _ => SendError::Permanent(reason),
        }
    }
}

/// The client of one bot account on one homeserver.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    /// The access token: configured, or obtained by logging in (`sync.rs`). A std lock,
    /// held only to copy the token out, never across an await.
    token: RwLock<Option<String>>,
}

impl ApiClient {
    pub fn new(http: reqwest::Client, homeserver: &str, token: Option<String>) -> Self {
        ApiClient {
            http,
            base: homeserver.trim_end_matches('/').to_string(),
            token: RwLock::new(token),
        }
    }

    pub fn set_token(&self, token: String) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }

    pub fn clear_token(&self) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/_matrix/client/v3{path}", self.base)
    }

    /// `method` `/_matrix/client/v3<path>` with an optional JSON body. `what` names the
    /// call in errors (`send m.room.message`); `timeout` overrides the client's (long
    /// polls).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        let mut req = self.http.request(method, self.url(path));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let transport = |e: reqwest::Error| ApiError::Transport {
            what: what.into(),
            reason: e.without_url().to_string(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = crate::connectors::retry_after(resp.headers());
        let text = resp.text().await.map_err(transport)?;
        judge(what, status, retry_after, &text)
    }

    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<Value, ApiError> {
        self.call(reqwest::Method::GET, path, query, None, what, None)
            .await
    }

    pub async fn post(&self, path: &str, body: &Value, what: &str) -> Result<Value, ApiError> {
        self.call(reqwest::Method::POST, path, &[], Some(body), what, None)
            .await
    }

    pub async fn put(&self, path: &str, body: &Value, what: &str) -> Result<Value, ApiError> {
        self.call(reqwest::Method::PUT, path, &[], Some(body), what, None)
            .await
    }
}

/// Judge an answer: 2xx with a JSON object is success; `M_LIMIT_EXCEEDED` or HTTP 429
/// is `RateLimited` (the longer of `retry_after_ms` and `Retry-After`); any other
/// `errcode` a Matrix error; anything else an HTTP error.
pub fn judge(
    what: &str,
    status: u16,
    retry_after: Option<Duration>,
    text: &str,
) -> Result<Value, ApiError> {
    let doc: Option<Value> = serde_json::from_str(text).ok().filter(Value::is_object);
    let errcode = doc
        .as_ref()
        .and_then(|d| d.get("errcode"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if status == 429 || errcode.as_deref() == Some("M_LIMIT_EXCEEDED") {
        let from_body = doc
            .as_ref()
            .and_then(|d| d.get("retry_after_ms"))
            .and_then(Value::as_u64)
            .map(Duration::from_millis);
        return Err(ApiError::RateLimited {
            what: what.into(),
            retry_after: from_body.into_iter().chain(retry_after).max(),
        });
    }
    match (doc, errcode) {
        (Some(doc), None) if (200..300).contains(&status) => Ok(doc),
        (Some(doc), Some(code)) => Err(ApiError::Matrix {
            what: what.into(),
            status,
            errcode: code.chars().take(64).collect(),
            error: doc
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect(),
        }),
        _ => Err(ApiError::Http {
            what: what.into(),
            status,
            snippet: text.chars().take(200).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("!abc:example.org"), "%21abc%3Aexample.org");
        assert_eq!(seg("$ev/1+2"), "%24ev%2F1%2B2");
        assert_eq!(seg("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn answers_are_judged_by_errcode_and_status() {
        assert_eq!(
            judge("send", 200, None, r#"{"event_id":"$1"}"#).unwrap()["event_id"],
            "$1"
        );
        let e = judge(
            "send",
            429,
            None,
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":2500}"#,
        )
        .unwrap_err();
        assert_eq!(
            SendError::from(e),
            SendError::RateLimited {
                reason: "send: rate limited by the homeserver, retry after 2500 ms".into(),
                retry_after: Some(Duration::from_millis(2500)),
                scope: LimitScope::Connector,
            }
        );
        // 429 without a body still counts; Retry-After is honoured.
        let e = judge("send", 429, Some(Duration::from_secs(3)), "").unwrap_err();
        assert!(
            matches!(e, ApiError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3))
        );
        let e = judge(
            "send",
            401,
            None,
            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed."}"#,
        )
        .unwrap_err();
        assert_eq!(e.errcode(), Some("M_UNKNOWN_TOKEN"));
        assert!(
            matches!(SendError::from(e), SendError::Permanent(m) if m.contains("access token"))
        );
        let e = judge("send", 502, None, "<html>bad gateway</html>").unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Retry { .. }));
        let e = judge("send", 500, None, r#"{"errcode":"M_UNKNOWN","error":"x"}"#).unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Retry { .. }));
        let e = judge("send", 404, None, "nope").unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Permanent(_)));
    }
}
