//! Who is who: sign-in, sessions, CSRF and roles for the web surfaces (the web chat at
//! `/`, the console and `/api` from a browser).
//!
//! `[auth] mode` picks how a person is known:
//! - `dev`: today's pick-a-name web chat, no sign-in. Anyone who can reach it can post
//!   as anyone, so it is refused unless perch listens on a loopback address, and the
//!   page says so.
//! - `local`: accounts in the config (`[auth.users.<name>] password_hash`, argon2id PHC
//!   strings made by `perch user add`), signed in at `/login`.
//! - `proxy`: a reverse proxy that did the sign-in (OIDC…) names the person in
//!   `X-Forwarded-User`; honoured only from `proxy_addresses`.
//! - `feishu`: Feishu login (OAuth) for a tenant's own people (`feishu.rs`); the
//!   session's person is their `open_id`.
//!
//! Sessions live in the store (namespace `auth`, keyed by the SHA-256 of the cookie's
//! random id, so a store dump holds no usable cookie): signing out deletes the record
//! and the cookie is worthless from then on. The cookie is `HttpOnly; SameSite=Strict`.
//! Every state-changing request a session makes must carry the session's CSRF token in
//! `X-CSRF-Token` (synchronizer token), else 403. Scripts keep using the admin token
//! (`Authorization: Bearer`), which needs no CSRF token: browsers never send it by
//! themselves.
//!
//! Sign-in is throttled (governor's keyed limiters, in memory): every password attempt
//! takes one from its account's allowance and one from its client address's
//! (`sign_in_attempts_per_account` / `_per_address` per minute); past either, 429 with
//! when to try again, and the password is not even checked. Expired sessions are never
//! accepted (`session`) and a sweeper (`sweep_every`) deletes them from the store.
//!
//! `server::app` runs `middleware` before every route: it works out the `Viewer` and
//! puts it in the request's extensions for the handlers (the web chat, `/api`).

pub mod feishu;
pub mod routes;

use crate::clock::SharedClock;
use crate::config::Secret;
use crate::store::{Store, StoreError};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "perch_session";
/// The header a browser sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Store namespace of the sessions (and of started Feishu sign-ins).
const NS: &str = "auth";

/// `[auth]`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `dev` (pick a name; loopback only), `local` (accounts below) or `proxy`
    /// (`X-Forwarded-User` from `proxy_addresses`).
    pub mode: AuthMode,
    /// How long a session lasts after sign-in.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub session_ttl: Duration,
    /// People by name. In `local` mode each needs a `password_hash`; in `proxy` mode the
    /// table only gives roles (anyone the proxy names is a `member`).
    pub users: BTreeMap<String, UserConfig>,
    /// Addresses of the reverse proxies whose `proxy_header` is trusted (`proxy` mode).
    /// The header from any other address is ignored.
    pub proxy_addresses: Vec<IpAddr>,
    /// The header the proxy names the signed-in person in.
    pub proxy_header: String,
    /// Groups of people by name, for `[[permissions]]` (`allow = ["group:ops"]`).
    pub groups: BTreeMap<String, Vec<String>>,
    /// Add `Secure` to the session cookie: set it when people reach perch over HTTPS
    /// (through a proxy), so the cookie never travels in clear.
    pub secure_cookie: bool,
    /// Sign-in attempts allowed per account per minute (as a burst, refilled evenly).
    pub sign_in_attempts_per_account: u32,
    /// Sign-in attempts allowed per client address per minute. Higher than per account:
    /// several people may share an address (an office behind NAT).
    pub sign_in_attempts_per_address: u32,
    /// How often expired sessions are deleted from the store.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub sweep_every: Duration,
    /// `[auth.feishu]`: the app people sign in with (`mode = "feishu"`).
    pub feishu: Option<feishu::FeishuLoginConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Dev,
            session_ttl: Duration::from_secs(12 * 3600),
            users: BTreeMap::new(),
            proxy_addresses: Vec::new(),
            proxy_header: "X-Forwarded-User".into(),
            groups: BTreeMap::new(),
            secure_cookie: false,
            sign_in_attempts_per_account: 5,
            sign_in_attempts_per_address: 20,
            sweep_every: Duration::from_secs(10 * 60),
            feishu: None,
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Dev,
    Local,
    Proxy,
    Feishu,
}

/// `[auth.users.<name>]`
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// argon2id PHC string (`$argon2id$v=19$…`), from `perch user add <name>`; it may
    /// come from the environment (`"${PERCH_ADMIN_PASSWORD_HASH}"`), as in a container.
    #[serde(default)]
    pub password_hash: Option<crate::config::EnvString>,
    /// `admin` (console, replay, config view, and chat) or `member` (chat).
    #[serde(default)]
    pub role: Role,
}

#[derive(
    Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    #[default]
    Member,
}

impl AuthConfig {
    /// Every problem with `[auth]` as `(key, message)`; `listen` is where perch binds,
    /// `web_chat` whether a `kind = "local"` connector serves the chat (dev mode only
    /// matters where there is one: the console refuses dev mode once a token is set).
    pub fn problems(&self, listen: &SocketAddr, web_chat: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self.mode {
            AuthMode::Dev if web_chat && !listen.ip().is_loopback() => out.push((
                "mode",
                format!(
                    "mode = \"dev\" (the default) lets anyone post in the web chat as anyone, so it needs a loopback listen address (listen = {listen}); set [auth] mode = \"local\" or \"proxy\""
                ),
            )),
            AuthMode::Local if self.users.is_empty() => out.push((
                "mode",
                "mode = \"local\" needs at least one [auth.users.<name>] with a password_hash (perch user add <name>)".into(),
            )),
            AuthMode::Feishu if self.feishu.is_none() => out.push((
                "mode",
                "mode = \"feishu\" needs [auth.feishu] with app_id, app_secret and redirect_uri".into(),
            )),
            AuthMode::Proxy if self.proxy_addresses.is_empty() => out.push((
                "proxy_addresses",
                "mode = \"proxy\" needs proxy_addresses: the reverse proxies whose header is trusted".into(),
            )),
            _ => {}
        }
        if self.sign_in_attempts_per_account == 0 || self.sign_in_attempts_per_address == 0 {
            out.push((
                "sign_in_attempts_per_account",
                "sign_in_attempts_per_account and sign_in_attempts_per_address must be at least 1"
                    .into(),
            ));
        }
        if self.sweep_every < Duration::from_secs(1) {
            out.push(("sweep_every", "sweep_every must be at least 1s".into()));
        }
        if let Some(f) = &self.feishu {
            out.extend(f.problems().into_iter().map(|p| ("feishu", p)));
        }
        if self.session_ttl < Duration::from_secs(60) {
            out.push(("session_ttl", "session_ttl must be at least 1m".into()));
        }
        if axum::http::HeaderName::try_from(self.proxy_header.as_str()).is_err() {
            out.push((
                "proxy_header",
                format!("proxy_header `{}` is not a header name", self.proxy_header),
            ));
        }
        for (name, user) in &self.users {
            if let Err(e) = check_user_name(name) {
                out.push(("users", format!("user `{name}`: {e}")));
            }
            match (&user.password_hash, self.mode) {
                (None, AuthMode::Local) => out.push((
                    "users",
                    format!("user `{name}` has no password_hash (perch user add {name})"),
                )),
                (Some(h), _) if argon2::password_hash::phc::PasswordHash::new(h).is_err() => {
                    out.push((
                        "users",
                        format!(
                            "user `{name}`: password_hash is not a PHC string ($argon2id$v=19$…); make one with perch user add {name}"
                        ),
                    ))
                }
                _ => {}
            }
        }
        out
    }
}

/// A sign-in name: what the web chat shows as the author, so the same rules as a
/// picked name (`connectors::local::check_author`), bots' names aside.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let normalised =
        crate::connectors::local::check_author(name, &[]).map_err(|e| e.to_string())?;
    if normalised != name {
        return Err("has leading, trailing or repeated spaces".into());
    }
    Ok(())
}

/// Who is asking, as the handlers see it.
#[derive(Debug, Clone)]
pub enum Viewer {
    /// `mode = "dev"`: nobody is signed in; the web chat takes the name the browser sends.
    Dev,
    /// Not signed in (or the session ended).
    Anonymous,
    /// A signed-in person. (Scripts with the admin token are let in by `/api` itself.)
    User(Identity),
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

impl Viewer {
    /// The signed-in person's name, if any.
    pub fn user(&self) -> Option<&Identity> {
        match self {
            Viewer::User(i) => Some(i),
            _ => None,
        }
    }
}

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    user: String,
    /// The person's display name when the sign-in gave one (Feishu).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    csrf: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong name or password")]
    BadCredentials,
    #[error("sign-in with a password is off (auth mode is `{0:?}`)")]
    WrongMode(AuthMode),
    #[error("too many sign-in attempts {by}; try again in {} s", .retry_after.as_secs().max(1))]
    Throttled {
        /// `for this account` or `from this address`.
        by: &'static str,
        retry_after: Duration,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The auth settings and the session store.
pub struct Auth {
    pub config: AuthConfig,
    store: Arc<dyn Store>,
    clock: SharedClock,
    /// A hash to verify against for unknown names, so that "no such user" takes as long
    /// as "wrong password" and names cannot be probed by timing.
    decoy_hash: String,
    /// Sign-in attempts per account name (known or not) and per client address.
    attempts_by_account: governor::DefaultKeyedRateLimiter<String>,
    attempts_by_address: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// For Feishu login's calls (`feishu.rs`).
    pub(crate) http: reqwest::Client,
}

/// A per-minute quota of `n` (at least 1).
fn per_minute(n: u32) -> governor::Quota {
    governor::Quota::per_minute(std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN))
}

impl Auth {
    pub fn new(config: AuthConfig, store: Arc<dyn Store>, clock: SharedClock) -> Self {
        Auth {
            // Only `local` mode checks passwords; a hash costs tens of milliseconds.
            decoy_hash: if config.mode == AuthMode::Local {
                hash_password(&random_token()).unwrap_or_default()
            } else {
                String::new()
            },
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            attempts_by_account: governor::RateLimiter::keyed(per_minute(
                config.sign_in_attempts_per_account,
            )),
            attempts_by_address: governor::RateLimiter::keyed(per_minute(
                config.sign_in_attempts_per_address,
            )),
            config,
            store,
            clock,
        }
    }

    /// Take one attempt from the address's and the account's allowance, or say how long
    /// to wait. The address is checked first, so one client guessing many names is
    /// stopped without locking those accounts.
    fn take_attempt(&self, name: &str, peer: Option<IpAddr>) -> Result<(), AuthError> {
        use governor::clock::{Clock, DefaultClock};
        let wait = |e: governor::NotUntil<_>| e.wait_time_from(DefaultClock::default().now());
        if let Some(ip) = peer {
            self.attempts_by_address
                .check_key(&ip)
                .map_err(|e| AuthError::Throttled {
                    by: "from this address",
                    retry_after: wait(e),
                })?;
        }
        self.attempts_by_account
            .check_key(&name.to_string())
            .map_err(|e| AuthError::Throttled {
                by: "for this account",
                retry_after: wait(e),
            })
    }

    /// Delete every expired session from the store, and forget the attempt counts
    /// that have refilled. Returns how many sessions were deleted.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        self.attempts_by_account.retain_recent();
        self.attempts_by_address.retain_recent();
        let now = self.clock.now();
        let mut deleted = 0;
        for (key, raw) in self.store.kv_scan(NS, "session/").await? {
            let expired = match serde_json::from_slice::<SessionRecord>(&raw) {
                Ok(r) => r.expires_at <= now,
                // Unreadable: never accepted (`session`), so nothing to keep.
                Err(_) => true,
            };
            if expired {
                self.store.kv_delete(NS, &key).await?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.store.flush().await?;
        }
        Ok(deleted)
    }

    /// Run `sweep_expired` every `sweep_every` until `cancel`.
    pub async fn run_sweeper(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.config.sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            match self.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(sessions = n, "expired sessions deleted"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sweep expired sessions; trying again later")
                }
            }
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.config.mode
    }

    fn role_of(&self, name: &str) -> Role {
        self.config
            .users
            .get(name)
            .map(|u| u.role)
            .unwrap_or_default()
    }

    /// Check a name and password (`local` mode); on success a new session: its cookie
    /// value and CSRF token.
    /// `peer` is the client's address, for the per-address throttle.
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        peer: Option<IpAddr>,
    ) -> Result<(String, String), AuthError> {
        if self.config.mode != AuthMode::Local {
            return Err(AuthError::WrongMode(self.config.mode));
        }
        self.take_attempt(name, peer)?;
        let hash = self
            .config
            .users
            .get(name)
            .and_then(|u| u.password_hash.as_ref().map(|h| h.0.clone()));
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy_hash.clone());
        let password = password.to_string();
        // argon2 takes tens of milliseconds of CPU: off the async runtime.
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if !(ok && known) {
            return Err(AuthError::BadCredentials);
        }
        Ok(self.new_session(name).await?)
    }

    /// Start a session for `name`: (cookie value, CSRF token). Durable before the answer,
    /// so a signed-in browser is not signed out by a crash.
    async fn new_session(&self, name: &str) -> Result<(String, String), StoreError> {
        self.new_session_named(name, None).await
    }

    /// `new_session` with the display name the sign-in gave.
    async fn new_session_named(
        &self,
        name: &str,
        display_name: Option<&str>,
    ) -> Result<(String, String), StoreError> {
        let id = random_token();
        let now = self.clock.now();
        let record = SessionRecord {
            user: name.to_string(),
            display_name: display_name.map(str::to_string),
            csrf: random_token(),
            created_at: now,
            expires_at: now
                + chrono::Duration::from_std(self.config.session_ttl)
                    .unwrap_or(chrono::Duration::hours(12)),
        };
        self.store
            .kv_put(NS, &session_key(&id), &serde_json::to_vec(&record)?)
            .await?;
        self.store.flush().await?;
        Ok((id, record.csrf))
    }

    /// The live session behind a cookie value, if any. An expired one is deleted.
    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let key = session_key(id);
        let Some(raw) = self.store.kv_get(NS, &key).await? else {
            return Ok(None);
        };
        let record: SessionRecord = match serde_json::from_slice(&raw) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        if record.expires_at <= self.clock.now() {
            self.store.kv_delete(NS, &key).await?;
            return Ok(None);
        }
        // A local account removed from the config ends its sessions.
        if self.config.mode == AuthMode::Local && !self.config.users.contains_key(&record.user) {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// End a session: deleted and flushed, so the cookie is refused from now on, also
    /// after a crash.
    pub async fn sign_out(&self, cookie: &str) -> Result<(), StoreError> {
        self.store.kv_delete(NS, &session_key(cookie)).await?;
        self.store.flush().await
    }

    /// The person a trusted proxy names, if the request comes from one.
    fn proxy_user(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<String> {
        let peer = peer?;
        if !self.config.proxy_addresses.contains(&peer) {
            return None;
        }
        let name = headers
            .get(self.config.proxy_header.as_str())?
            .to_str()
            .ok()?
            .trim();
        check_user_name(name).ok()?;
        Some(name.to_string())
    }

    /// Who sent `headers` from `peer`, and their session (cookie value, record) if any.
    async fn resolve(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<(Viewer, Option<(String, SessionRecord)>), StoreError> {
        let session = match cookie(headers, SESSION_COOKIE) {
            Some(id) => self.session(&id).await?.map(|r| (id, r)),
            None => None,
        };
        let viewer = match self.config.mode {
            AuthMode::Dev => Viewer::Dev,
            AuthMode::Local | AuthMode::Feishu => match &session {
                Some((_, r)) => self.identity(&r.user),
                None => Viewer::Anonymous,
            },
            // The proxy's word decides who it is; a session only counts (for its CSRF
            // token) when it is the same person's.
            AuthMode::Proxy => match self.proxy_user(headers, peer) {
                Some(name) => {
                    let viewer = self.identity(&name);
                    let session = session.filter(|(_, r)| r.user == name);
                    return Ok((viewer, session));
                }
                None => return Ok((Viewer::Anonymous, None)),
            },
        };
        Ok((viewer, session))
    }

    fn identity(&self, name: &str) -> Viewer {
        Viewer::User(Identity {
            name: name.to_string(),
            role: self.role_of(name),
        })
    }

    /// The `Set-Cookie` value for a new session, or (`None`) one that clears it.
    pub fn cookie_header(&self, id: Option<&str>) -> String {
        let secure = if self.config.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        match id {
            Some(id) => format!(
                "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                self.config.session_ttl.as_secs()
            ),
            None => {
                format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
            }
        }
    }
}

/// What `middleware` leaves in a request's extensions besides the `Viewer`: the
/// session's CSRF token (`/auth/session` hands it to the page).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub cookie: String,
    pub csrf: String,
}

fn session_key(id: &str) -> String {
    format!("session/{}", hex::encode(Sha256::digest(id.as_bytes())))
}

/// 32 random bytes from the OS-seeded CSPRNG, URL-safe base64.
pub fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An argon2id PHC string for `password`, with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (constant time inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    match argon2::password_hash::phc::PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// Paths the middleware leaves alone: platforms' signed callbacks and the health check.
fn exempt(path: &str) -> bool {
    path.starts_with("/hooks/") || path == "/healthz"
}

/// Works out the `Viewer` of every request, and refuses a state-changing request made
/// with a session but without its CSRF token (403, one line).
pub async fn middleware(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (viewer, session) = match auth.resolve(req.headers(), peer).await {
        Ok(v) => v,
        Err(e) => {
            return crate::server::ApiError::internal("sign-in: store error", e).into_response();
        }
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // Signing in has no session yet; its JSON body cannot be sent cross-site without a
    // CORS preflight that perch never grants.
    let signing_in = req.uri().path() == "/auth/login";
    if !safe && !signing_in && matches!(viewer, Viewer::User(_)) {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ok = session
            .as_ref()
            .is_some_and(|(_, r)| bool::from(given.as_bytes().ct_eq(r.csrf.as_bytes())));
        if !ok {
            return crate::server::ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token (X-CSRF-Token; reload the page)",
            )
            .into_response();
        }
    }
    if let Some((cookie, record)) = session {
        req.extensions_mut().insert(SessionInfo {
            cookie,
            csrf: record.csrf,
        });
    }
    req.extensions_mut().insert(viewer);
    next.run(req).await
}

/// Whether the admin token in `headers` (`Authorization: Bearer …`) is `token`.
pub fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_round_trip_and_wrong_ones_fail() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "x_perch_session=evil; perch_session=abc; other=1"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
    }

    #[test]
    fn dev_mode_needs_loopback() {
        let c = AuthConfig::default();
        assert!(
            c.problems(&"127.0.0.1:8080".parse().unwrap(), true)
                .is_empty()
        );
        assert!(
            !c.problems(&"0.0.0.0:8080".parse().unwrap(), true)
                .is_empty()
        );
        assert!(
            c.problems(&"0.0.0.0:8080".parse().unwrap(), false)
                .is_empty()
        );
    }
}
