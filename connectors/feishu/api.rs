//! The Feishu/Lark Open API client: `tenant_access_token` cache, the error envelope as
//! typed errors, and the calls the connector needs (messages, chats, members, user
//! lookup, bot info).
//!
//! Flow: outbox → connector (out) → **api** → Feishu.
//!
//! - **Token** (refs §2.1): cached until `expire − 180 s`; refreshed single-flight (one
//!   fetch however many callers find it stale); on 99991663/99991664/99991671 the cached
//!   token is dropped, a new one fetched, and the call retried once.
//! - **Errors** (refs §2.4): branch on the JSON `code`, not the HTTP status; 99991400 or
//!   HTTP 429 → `RateLimited` with `x-ogw-ratelimit-reset`; 230020 → retry; 5xx, connect
//!   errors and timeouts → retry; everything else (permissions, parameters) → permanent.

use crate::config::Secret;
use crate::connectors::{LimitScope, SendError};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// Token codes after which the cached token is dropped and the call retried once.
const INVALID_TOKEN_CODES: [i64; 3] = [99991663, 99991664, 99991671];
const RATE_LIMITED: i64 = 99991400;
const CHAT_FREQUENCY_LIMIT: i64 = 230020;
/// The Content-Type of every Open API request with a body (refs §2).
const JSON_UTF8: &str = "application/json; charset=utf-8";

/// A failed Open API call.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ApiError {
    #[error("{what}: cannot reach Feishu: {reason}")]
    Transport { what: String, reason: String },
    #[error("{what}: rate limited by Feishu (code {code}){}", .retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        what: String,
        code: i64,
        retry_after: Option<Duration>,
    },
    #[error("{what}: Feishu error {code}: {msg}{}", hint(*.code))]
    Platform {
        what: String,
        status: u16,
        code: i64,
        msg: String,
        retry_after: Option<Duration>,
    },
    #[error("{what}: HTTP {status} without a Feishu error body: {snippet}")]
    Http {
        what: String,
        status: u16,
        snippet: String,
    },
}

/// A hint for codes whose fix is in the Feishu console.
fn hint(code: i64) -> &'static str {
    match code {
        99991672 => " (grant the missing scope in the developer console and publish a new version)",
        230002 => " (add the bot to the chat first)",
        230006 => " (enable the bot capability and publish the app)",
        232043 => " (the bot cannot see that user: check the app's availability range)",
        99991663 | 99991664 | 99991671 => " (tenant_access_token rejected even after a refresh)",
        _ => "",
    }
}

impl ApiError {
    fn is_invalid_token(&self) -> bool {
        matches!(self, ApiError::Platform { code, .. } if INVALID_TOKEN_CODES.contains(code))
    }
}

impl From<ApiError> for SendError {
    fn from(e: ApiError) -> SendError {
        let reason = e.to_string();
        match e {
            ApiError::Transport { .. } => SendError::retry(reason),
            // 99991400 / HTTP 429: a quota per API per app (refs §2.4).
            ApiError::RateLimited { retry_after, .. } => SendError::RateLimited {
                reason,
                retry_after,
                scope: LimitScope::Connector,
            },
            ApiError::Http { status, .. } if status >= 500 || status == 408 || status == 429 => {
                SendError::retry(reason)
            }
            ApiError::Http { .. } => SendError::Permanent(reason),
            // 230020: the per-chat limit (5/s per chat, shared by its bots).
            ApiError::Platform {
                code, retry_after, ..
            } if code == CHAT_FREQUENCY_LIMIT => SendError::RateLimited {
                reason,
                retry_after,
                scope: LimitScope::Chat,
            },
            // A token still refused after a fresh fetch may be a platform hiccup: retry
            // (the outbox bounds the attempts). Unknown codes on a 5xx: server trouble.
            ApiError::Platform { code, status, .. }
                if INVALID_TOKEN_CODES.contains(&code) || status >= 500 =>
            {
                SendError::retry(reason)
            }
            ApiError::Platform { .. } => SendError::Permanent(reason),
        }
    }
}

struct CachedToken {
    token: String,
    fresh_until: Instant,
}

/// The Open API client of one app.
pub struct ApiClient {
    http: reqwest::Client,
    base_url: String,
    app_id: String,
    app_secret: Secret,
    /// The cached token. A std mutex: it is only held to copy or replace the value.
    token: std::sync::Mutex<Option<CachedToken>>,
    /// Held by the one caller that refreshes; the others wait, then find the new token.
    refresh: tokio::sync::Mutex<()>,
}

/// What an HTTP exchange returned, before the envelope is judged.
struct RawResponse {
    status: u16,
    reset: Option<Duration>,
    body: Result<Value, String>,
}

impl ApiClient {
    pub fn new(http: reqwest::Client, base_url: &str, app_id: &str, app_secret: Secret) -> Self {
        ApiClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            app_id: app_id.to_string(),
            app_secret,
            token: std::sync::Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<String> {
        let guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|t| Instant::now() < t.fresh_until)
            .map(|t| t.token.clone())
    }

    /// Drop the cached token if it is still `bad` (another caller may have replaced it).
    fn invalidate(&self, bad: &str) {
        let mut guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|t| t.token == bad) {
            *guard = None;
        }
    }

    /// A valid tenant_access_token: the cached one, or one fresh fetch shared by every
    /// caller that needs it at the same time.
    pub async fn token(&self) -> Result<String, ApiError> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let _flight = self.refresh.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t); // someone refreshed while we waited
        }
        let what = "fetch tenant_access_token";
        let body = json!({ "app_id": self.app_id, "app_secret": self.app_secret.expose() });
        let raw = self
            .send(
                self.http
                    .post(format!(
                        "{}/open-apis/auth/v3/tenant_access_token/internal",
                        self.base_url
                    ))
                    .header(reqwest::header::CONTENT_TYPE, JSON_UTF8)
                    .body(body.to_string()),
                what,
            )
            .await?;
        let doc = judge(raw, what)?;
        let token = doc
            .get("tenant_access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Http {
                what: what.into(),
                status: 200,
                snippet: "no tenant_access_token in the answer".into(),
            })?
            .to_string();
        let expire = doc.get("expire").and_then(Value::as_u64).unwrap_or(0);
        // Cache until `expire − 180 s` (refs §2.1); very short lives get half their life.
        let ttl = if expire > 360 {
            expire - 180
        } else {
            expire / 2
        };
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(CachedToken {
            token: token.clone(),
            fresh_until: Instant::now() + Duration::from_secs(ttl),
        });
        Ok(token)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<RawResponse, ApiError> {
        let resp = req.send().await.map_err(|e| ApiError::Transport {
            what: what.into(),
            reason: e.without_url().to_string(),
        })?;
        let status = resp.status().as_u16();
        let reset = crate::connectors::retry_after(resp.headers());
        let text = resp.text().await.map_err(|e| ApiError::Transport {
            what: what.into(),
            reason: e.without_url().to_string(),
        })?;
        let body = serde_json::from_str::<Value>(&text)
            .map_err(|_| text.chars().take(200).collect::<String>());
        Ok(RawResponse {
            status,
            reset,
            body,
        })
    }

    /// One authorised call: the JSON body's `data` (or the whole document when there is
    /// no `data`). Retries once with a fresh token when the token is refused.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, ApiError> {
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(
                    method.clone(),
                    format!("{}{}", self.base_url, path_and_query),
                )
                .bearer_auth(&token);
            if let Some(b) = body {
                // Exactly one Content-Type, the one the Open API documents (refs §2). Not
                // `.json()`: it sets its own `application/json`, and a second header line
                // makes a strict gateway answer 400 before any handler runs.
                req = req
                    .header(reqwest::header::CONTENT_TYPE, JSON_UTF8)
                    .body(b.to_string());
            }
            let raw = self.send(req, what).await?;
            match judge(raw, what) {
                Err(e) if e.is_invalid_token() && !refreshed => {
                    tracing::info!(%what, "tenant_access_token refused; fetching a new one and retrying once");
                    self.invalidate(&token);
                    refreshed = true;
                }
                Err(e) => return Err(e),
                Ok(mut doc) => return Ok(doc.get_mut("data").map(Value::take).unwrap_or(doc)),
            }
        }
    }

    /// `GET /open-apis/bot/v3/info` → the bot's open_id (top-level `bot`, not `data`).
    pub async fn bot_open_id(&self) -> Result<String, ApiError> {
        let what = "get bot info";
        let doc = self
            .call(reqwest::Method::GET, "/open-apis/bot/v3/info", None, what)
            .await?;
        doc.pointer("/bot/open_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ApiError::Http {
                what: what.into(),
                status: 200,
                snippet: "no bot.open_id in the answer".into(),
            })
    }
}

/// Judge a response by its envelope: `code == 0` is success whatever the status; a
/// rate-limit code or HTTP 429 is `RateLimited`; other codes are `Platform` errors.
fn judge(raw: RawResponse, what: &str) -> Result<Value, ApiError> {
    let doc = match raw.body {
        Ok(doc) if doc.get("code").is_some() => doc,
        Ok(_) if raw.status == 429 => {
            return Err(ApiError::RateLimited {
                what: what.into(),
                code: 0,
                retry_after: raw.reset,
            });
        }
        Ok(doc) if (200..300).contains(&raw.status) => return Ok(doc),
        Ok(doc) => {
            return Err(ApiError::Http {
                what: what.into(),
                status: raw.status,
                snippet: doc.to_string().chars().take(200).collect(),
            });
        }
        Err(_) if raw.status == 429 => {
            return Err(ApiError::RateLimited {
                what: what.into(),
                code: 0,
                retry_after: raw.reset,
            });
        }
        Err(snippet) => {
            return Err(ApiError::Http {
                what: what.into(),
                status: raw.status,
                snippet,
            });
        }
    };
    let code = doc.get("code").and_then(Value::as_i64).unwrap_or(-1);
    if code == 0 {
        return Ok(doc);
    }
    if code == RATE_LIMITED || raw.status == 429 {
        return Err(ApiError::RateLimited {
            what: what.into(),
            code,
            retry_after: raw.reset,
        });
    }
    let msg = doc
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    Err(ApiError::Platform {
        what: what.into(),
        status: raw.status,
        code,
        msg,
        retry_after: raw.reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, body: Value) -> RawResponse {
        RawResponse {
            status,
            reset: Some(Duration::from_secs(3)),
            body: Ok(body),
        }
    }

    #[test]
    fn errors_branch_on_code_not_status() {
        assert!(judge(raw(400, json!({"code":0,"data":{}})), "x").is_ok());
        let e = judge(raw(200, json!({"code":230001,"msg":"bad param"})), "send").unwrap_err();
        assert!(
            matches!(SendError::from(e.clone()), SendError::Permanent(m) if m.contains("230001") && m.contains("bad param")),
            "{e}"
        );
        let e = judge(
            raw(
                400,
                json!({"code":99991400,"msg":"request trigger frequency limit"}),
            ),
            "send",
        )
        .unwrap_err();
        assert_eq!(
            SendError::from(e),
            SendError::RateLimited {
                reason: "send: rate limited by Feishu (code 99991400), retry after 3 s".into(),
                retry_after: Some(Duration::from_secs(3)),
                scope: LimitScope::Connector,
            }
        );
        let e = judge(raw(429, json!({"msg":"slow down"})), "send").unwrap_err();
        assert!(matches!(
            SendError::from(e),
            SendError::RateLimited {
                retry_after: Some(_),
                scope: LimitScope::Connector,
                ..
            }
        ));
        let e = judge(raw(200, json!({"code":230020,"msg":"frequency"})), "send").unwrap_err();
        assert!(matches!(
            SendError::from(e),
            SendError::RateLimited {
                scope: LimitScope::Chat,
                ..
            }
        ));
        let e = judge(raw(400, json!({"code":99991672,"msg":"scope"})), "send").unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Permanent(m) if m.contains("scope")));
        let e = judge(
            raw(400, json!({"code":99991663,"msg":"invalid token"})),
            "send",
        )
        .unwrap_err();
        assert!(e.is_invalid_token());
        let e = judge(
            RawResponse {
                status: 502,
                reset: None,
                body: Err("<html>".into()),
            },
            "send",
        )
        .unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Retry { .. }));
        let e = judge(
            RawResponse {
                status: 404,
                reset: None,
                body: Err("nope".into()),
            },
            "send",
        )
        .unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Permanent(_)));
        let e = judge(raw(500, json!({"code":1500,"msg":"internal"})), "send").unwrap_err();
        assert!(matches!(SendError::from(e), SendError::Retry { .. }));
    }
}
