//! Feishu login (OAuth 2.0 authorization code) for a tenant's own people, `[auth] mode =
//! "feishu"`:
//!
//! 1. `GET /auth/feishu/start?next=/console`: a random `state` is stored (namespace
//!    `auth`, single use, 10 minutes) and set in a cookie bound to this browser; the
//!    browser goes to Feishu's authorize page with `client_id`, `redirect_uri`, `state`.
//! 2. Feishu sends the browser back to `GET /auth/feishu/callback?code&state`. The state
//!    must be the one stored and the one in the browser's cookie (else it is a forged or
//!    replayed callback, login CSRF); it is used up either way.
//! 3. perch exchanges the code for a user access token (`token_url`, JSON with the app's
//!    id and secret), reads the person (`user_info_url`: `open_id`, `name`,
//!    `tenant_key`), refuses other tenants when `tenant_key` is set, and starts a
//!    session whose person is the `open_id` (the id Feishu events carry, so the reminders'
//!    owner rule and `[[permissions]]` name the same person). Roles come from
//!    `[auth.users.<open_id>]`; anyone else of the tenant is a `member`.
//!
//! The endpoints are not in `refs/chat-platforms.md`: they are from Feishu's public
//! documentation as of 2025 and are **[unverified]** here, so each is configurable.

use super::{Auth, NS, random_token};
use crate::config::Secret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The cookie binding an authorize redirect to the browser that started it.
pub const STATE_COOKIE: &str = "perch_oauth_state";
/// How long a started sign-in may take.
const STATE_TTL: Duration = Duration::from_secs(10 * 60);

/// `[auth.feishu]`: sign-in with Feishu (OAuth) for `mode = "feishu"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeishuLoginConfig {
    /// The Feishu app's id (`cli_…`).
    pub app_id: String,
    /// The app's secret; write it as `"${FEISHU_APP_SECRET}"`.
    pub app_secret: Secret,
    /// perch's callback as Feishu reaches it through the browser, registered in the
    /// app's security settings: `https://perch.example.com/auth/feishu/callback`.
    pub redirect_uri: String,
    /// Only people of this tenant may sign in (`tenant_key` in the user info). Unset:
    /// anyone the app's availability range lets through.
    #[serde(default)]
    pub tenant_key: Option<String>,
    /// [unverified] Feishu's authorize page.
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    /// [unverified] The code-for-token endpoint (OAuth v2, RFC 6749 style JSON).
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// [unverified] Who the token belongs to.
    #[serde(default = "default_user_info_url")]
    pub user_info_url: String,
}

fn default_authorize_url() -> String {
    "https://accounts.feishu.cn/open-apis/authen/v1/authorize".into()
}
fn default_token_url() -> String {
    "https://open.feishu.cn/open-apis/authen/v2/oauth/token".into()
}
fn default_user_info_url() -> String {
    "https://open.feishu.cn/open-apis/authen/v1/user_info".into()
}

impl FeishuLoginConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, url) in [
            ("redirect_uri", &self.redirect_uri),
            ("authorize_url", &self.authorize_url),
            ("token_url", &self.token_url),
            ("user_info_url", &self.user_info_url),
        ] {
            if reqwest::Url::parse(url).is_err() {
                out.push(format!("[auth.feishu] {key} `{url}` is not a URL"));
            }
        }
        if self.app_id.is_empty() || self.app_secret.expose().is_empty() {
            out.push("[auth.feishu] needs app_id and app_secret".into());
        }
        out
    }
}

/// A started sign-in, as stored under its state's hash.
#[derive(Debug, Serialize, Deserialize)]
struct Started {
    next: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Why a Feishu sign-in failed, as the one line the browser sees.
#[derive(Debug, thiserror::Error)]
pub enum FeishuLoginError {
    #[error("sign-in with Feishu is off (auth mode is not `feishu`)")]
    Off,
    #[error("this sign-in link is unknown, used or expired (state); start again at /login")]
    BadState,
    #[error("Feishu refused the sign-in: {0}")]
    Refused(String),
    #[error("Feishu could not be reached: {0}")]
    Unreachable(String),
    #[error("only people of this company may sign in here")]
    OtherTenant,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn state_key(state: &str) -> String {
    format!(
        "oauth_state/{}",
        hex::encode(Sha256::digest(state.as_bytes()))
    )
}

/// `next` if it is a path on this site, else `/` (no open redirect).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".into(),
    }
}

/// The person Feishu says signed in.
pub struct FeishuPerson {
    pub open_id: String,
    pub name: Option<String>,
}

impl Auth {
    fn feishu(&self) -> Result<&FeishuLoginConfig, FeishuLoginError> {
        match (&self.config.mode, &self.config.feishu) {
            (super::AuthMode::Feishu, Some(f)) => Ok(f),
            _ => Err(FeishuLoginError::Off),
        }
    }

    /// Step 1: the state (for the browser's cookie) and the authorize URL to go to.
    pub async fn feishu_start(&self, next: &str) -> Result<(String, String), FeishuLoginError> {
        let f = self.feishu()?;
        let state = random_token();
        let started = Started {
            next: next.to_string(),
            expires_at: self.clock.now()
                + chrono::Duration::from_std(STATE_TTL).unwrap_or(chrono::Duration::minutes(10)),
        };
        let raw = serde_json::to_vec(&started).map_err(crate::store::StoreError::from)?;
        self.store.kv_put(NS, &state_key(&state), &raw).await?;
        self.store.flush().await?;
        let mut url = reqwest::Url::parse(&f.authorize_url)
            .map_err(|e| FeishuLoginError::Refused(format!("authorize_url: {e}")))?;
        url.query_pairs_mut()
            .append_pair("client_id", &f.app_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &f.redirect_uri)
            .append_pair("state", &state);
        Ok((state, url.to_string()))
    }

    /// Steps 2 and 3: check the state (given back by Feishu and kept in the browser's
    /// cookie), exchange the code, read the person, start their session. Returns the
    /// session (cookie value, CSRF token) and where to go next.
    pub async fn feishu_callback(
        &self,
        http: &reqwest::Client,
        code: &str,
        state: &str,
        cookie_state: Option<&str>,
    ) -> Result<((String, String), String), FeishuLoginError> {
        let f = self.feishu()?;
        use subtle::ConstantTimeEq;
        let same_browser =
            cookie_state.is_some_and(|c| bool::from(c.as_bytes().ct_eq(state.as_bytes())));
        let key = state_key(state);
        let Some(raw) = self.store.kv_get(NS, &key).await? else {
            return Err(FeishuLoginError::BadState);
        };
        // Used up whatever happens next: a callback is never good twice.
        self.store.kv_delete(NS, &key).await?;
        self.store.flush().await?;
        let started: Started =
            serde_json::from_slice(&raw).map_err(|_| FeishuLoginError::BadState)?;
        if !same_browser || started.expires_at <= self.clock.now() {
            return Err(FeishuLoginError::BadState);
        }
        if code.is_empty() || code.len() > 1000 {
            return Err(FeishuLoginError::Refused("no authorization code".into()));
        }
        let person = exchange(http, f, code).await?;
        let name = person.open_id.clone();
        super::check_user_name(&name)
            .map_err(|e| FeishuLoginError::Refused(format!("open_id {name:?}: {e}")))?;
        let session = self
            .new_session_named(&name, person.name.as_deref())
            .await?;
        Ok((session, started.next))
    }
}

/// The code for a user access token, then the token for the person.
async fn exchange(
    http: &reqwest::Client,
    f: &FeishuLoginConfig,
    code: &str,
) -> Result<FeishuPerson, FeishuLoginError> {
    let unreachable =
        |e: reqwest::Error| FeishuLoginError::Unreachable(e.without_url().to_string());
    let resp = http
        .post(&f.token_url)
        .header("content-type", "application/json; charset=utf-8")
        .json(&serde_json::json!({
            "grant_type": "authorization_code",
            "client_id": f.app_id,
            "client_secret": f.app_secret.expose(),
            "code": code,
            "redirect_uri": f.redirect_uri,
        }))
        .send()
        .await
        .map_err(unreachable)?;
    let body: serde_json::Value = resp.json().await.map_err(unreachable)?;
    let token = match (body["code"].as_i64(), body["access_token"].as_str()) {
        (Some(0), Some(t)) if !t.is_empty() => t.to_string(),
        _ => return Err(FeishuLoginError::Refused(platform_reason(&body))),
    };
    let resp = http
        .get(&f.user_info_url)
        .bearer_auth(&token)
        .send()
        .await
        .map_err(unreachable)?;
    let body: serde_json::Value = resp.json().await.map_err(unreachable)?;
    let data = &body["data"];
    let open_id = match (body["code"].as_i64(), data["open_id"].as_str()) {
        (Some(0), Some(id)) if !id.is_empty() => id.to_string(),
        _ => return Err(FeishuLoginError::Refused(platform_reason(&body))),
    };
    if let Some(tenant) = &f.tenant_key
        && data["tenant_key"].as_str() != Some(tenant.as_str())
    {
        return Err(FeishuLoginError::OtherTenant);
    }
    Ok(FeishuPerson {
        open_id,
        name: data["name"].as_str().map(str::to_string),
    })
}

/// Feishu's own words for a refusal, on one line and short (they never hold secrets).
fn platform_reason(body: &serde_json::Value) -> String {
    let text = body["error_description"]
        .as_str()
        .or(body["error"].as_str())
        .or(body["msg"].as_str())
        .unwrap_or("unexpected answer");
    let code = body["code"].as_i64().unwrap_or(-1);
    let line: String = crate::cards::model::one_line(text)
        .chars()
        .take(200)
        .collect();
    format!("{line} (code {code})")
}
