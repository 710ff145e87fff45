//! A fake Feishu Open API for tests, speaking the real envelopes of
//! `../shared/refs/chat-platforms.md` §2–§3, plus an event sender that encrypts and
//! signs like Feishu (§1.4, §1.5).
//!
//! The fake binds 127.0.0.1:0 and implements: the tenant_access_token endpoint (with a
//! reported expiry; `expire_tokens()` makes every issued token answer 99991663), bot
//! info, messages create / reply / patch / put with `uuid` idempotency (same uuid → same
//! message, counted once), chat creation (`?uuid=` idempotent) and member adds
//! (`succeed_type=1`, ids starting `ou_bad` are invalid), `batch_get_id` (e-mails
//! starting `ghost` are unknown), the custom-bot hook (checks `sign` and keyword), fault
//! injection for the next N calls, and a record of every call. Feishu login (OAuth):
//! the authorize page (the person in `oauth_person` consents at once and is sent back
//! with a code), the code-for-token exchange (refuses a wrong app secret, a code used
//! before or for another redirect URI, a non-JSON body) and the user info.
//!
//! **Strict like the real gateway**: a request with a repeated singleton header or a
//! body without a JSON Content-Type is refused with 400 before any handler runs
//! (`crate::testing::malformed`), and recorded in `refused`. **It counts every call**:
//! a repeated `uuid` gets the first message back, as Feishu does, but the call is still
//! in `calls`, so a test can see a double send (`posts_with_uuid`).
//!
//! Its crypto is written here again on purpose (not imported from perch), so a mistake
//! in perch's cannot hide behind the same mistake in the fake.

pub mod ws;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeEncrypt, KeyIvInit};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const APP_ID: &str = "cli_test_app";
pub const APP_SECRET: &str = "app-secret-for-tests";
pub const BOT_OPEN_ID: &str = "ou_perch_bot";
/// The Verification Token and Encrypt Key the tests configure and sign with.
pub const TOKEN: &str = "verification-token-for-tests";
pub const KEY: &str = "encrypt-key-for-tests";

/// `[connectors.<name>] kind = "feishu"` pointed at the fake at `base`, with the test
/// credentials; `encrypted`: with the Encrypt Key (signed, encrypted bodies).
pub fn app_connector(name: &str, base: &str, encrypted: bool) -> String {
    let key = if encrypted {
        format!("encrypt_key = \"{KEY}\"\n")
    } else {
        String::new()
    };
    format!(
        "[connectors.{name}]\nkind = \"feishu\"\napp_id = \"{APP_ID}\"\napp_secret = \"{APP_SECRET}\"\nverification_token = \"{TOKEN}\"\n{key}base_url = \"{base}\"\n"
    )
}

/// A fault the next API call (not the token or bot-info endpoints) suffers.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP 500 with a non-JSON body.
    ServerError,
    /// HTTP 429, code 99991400, `x-ogw-ratelimit-reset: <secs>`.
    RateLimited { reset_secs: u64 },
    /// Answer normally, after this long.
    Slow(Duration),
    /// Answer 99991663 whatever token was sent.
    InvalidToken,
    /// Answer this error envelope.
    Code { status: u16, code: i64, msg: String },
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Value,
    /// When it arrived.
    pub at: std::time::Instant,
    /// The fault it suffered, if any (a 429 here means: nothing else until `reset`).
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub message_id: String,
    pub chat_id: String,
    pub receive_id_type: String,
    pub receive_id: String,
    pub msg_type: String,
    /// The `content` string as received (JSON inside a string).
    pub content: String,
    pub uuid: Option<String>,
    pub reply_to: Option<String>,
    pub patches: Vec<String>,
}

impl Message {
    /// `content` parsed.
    pub fn content(&self) -> Value {
        serde_json::from_str(&self.content).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Chat {
    pub chat_id: String,
    pub name: String,
    pub owner_id: Option<String>,
    pub members: Vec<String>,
    pub created_with_members: usize,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub secret: Option<String>,
    pub keyword: Option<String>,
}

#[derive(Debug, Default)]
pub struct FakeState {
    /// `expire` reported with each token.
    pub token_expire: u64,
    tokens: HashMap<String, bool>,
    pub token_fetches: usize,
    pub calls: Vec<Call>,
    pub messages: Vec<Message>,
    uuids: HashMap<String, String>,
    /// Messages people wrote (sent through the event sender), message id → chat id.
    pub user_messages: HashMap<String, String>,
    pub chats: BTreeMap<String, Chat>,
    chat_uuids: HashMap<String, String>,
    pub hooks: HashMap<String, Hook>,
    pub hook_messages: Vec<Value>,
    /// Requests the gateway refused before any handler ran, with the reason.
    pub refused: Vec<String>,
    faults: VecDeque<Fault>,
    /// The long-connection URL `POST /callback/ws/endpoint` hands out (unset: it
    /// answers 404, as for an app that does not use long connection).
    pub ws_url: Option<String>,
    /// Every endpoint request: when, and whether the credentials were right.
    pub ws_endpoint_calls: Vec<(std::time::Instant, bool)>,
    /// Faults for the next calls whose path starts with the prefix.
    path_faults: Vec<(String, Fault)>,
    /// Who signs in at the authorize page: (open_id, name, tenant_key).
    pub oauth_person: Option<(String, String, String)>,
    /// Codes handed out: code → (redirect_uri, person, used).
    oauth_codes: HashMap<String, (String, (String, String, String), bool)>,
    /// User access tokens handed out: token → person.
    user_tokens: HashMap<String, (String, String, String)>,
    /// Every code-for-token exchange: (code, accepted).
    pub oauth_exchanges: Vec<(String, bool)>,
    seq: u64,
}

#[derive(Clone)]
pub struct FakeFeishu {
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
}

type Shared = Arc<Mutex<FakeState>>;

impl FakeFeishu {
    pub async fn start() -> FakeFeishu {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            token_expire: 7200,
            ..Default::default()
        }));
        let app = Router::new()
            .route(
                "/open-apis/auth/v3/tenant_access_token/internal",
                post(token),
            )
            .route("/open-apis/bot/v3/info", get(bot_info))
            .route("/open-apis/im/v1/messages", post(create_message))
            .route("/open-apis/im/v1/messages/{id}/reply", post(reply_message))
            .route(
                "/open-apis/im/v1/messages/{id}",
                patch(patch_message).put(patch_message),
            )
            .route("/open-apis/im/v1/chats", post(create_chat))
            .route("/open-apis/im/v1/chats/{id}/members", post(add_members))
            .route(
                "/open-apis/contact/v3/users/batch_get_id",
                post(batch_get_id),
            )
            .route("/open-apis/bot/v2/hook/{token}", post(custom_bot))
            .route("/callback/ws/endpoint", post(ws_endpoint))
            .route("/open-apis/authen/v1/authorize", get(oauth_authorize))
            .route("/open-apis/authen/v2/oauth/token", post(oauth_token))
            .route("/open-apis/authen/v1/user_info", get(oauth_user_info))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::testing::strict_gateway::<FakeState>,
            ))
            .with_state(state.clone());
        let base = crate::testing::serve_fake(app).await;
        FakeFeishu { base, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// The next `n` API calls suffer `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut s = self.lock();
        for _ in 0..n {
            s.faults.push_back(fault.clone());
        }
    }

    /// The next `n` calls whose path starts with `prefix` suffer `fault` (before the
    /// faults of `fail_next`).
    pub fn fail_path(&self, prefix: &str, n: usize, fault: Fault) {
        let mut s = self.lock();
        for _ in 0..n {
            s.path_faults.push((prefix.to_string(), fault.clone()));
        }
    }

    /// Every token issued so far now answers 99991663 (as if it expired).
    pub fn expire_tokens(&self) {
        for v in self.lock().tokens.values_mut() {
            *v = false;
        }
    }

    pub fn add_hook(&self, token: &str, secret: Option<&str>, keyword: Option<&str>) -> String {
        self.lock().hooks.insert(
            token.into(),
            Hook {
                secret: secret.map(Into::into),
                keyword: keyword.map(Into::into),
            },
        );
        format!("{}/open-apis/bot/v2/hook/{token}", self.base)
    }

    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// How many message create/reply calls carried `uuid` (every call counts, also the
    /// ones Feishu's idempotency answered with the first message).
    pub fn posts_with_uuid(&self, uuid: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == "POST" && c.body["uuid"] == uuid)
            .count()
    }

    /// Every message create/reply call, with repeats: (uuid, path).
    pub fn message_posts(&self) -> Vec<(String, String)> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == "POST" && c.path.starts_with("/open-apis/im/v1/messages"))
            .map(|c| {
                (
                    c.body["uuid"].as_str().unwrap_or("").to_string(),
                    c.path.clone(),
                )
            })
            .collect()
    }

    /// Calls to the IM API inside an earlier 429's reset window (`calls_inside_waits`).
    pub fn calls_inside_rate_limit_windows(&self) -> Vec<(String, String)> {
        crate::testing::calls_inside_waits_by(&self.lock().calls, |c| crate::testing::Seen {
            at: c.at,
            ordered_wait: match c.fault {
                Some(Fault::RateLimited { reset_secs }) => Some(Duration::from_secs(reset_secs)),
                _ => None,
            },
            limited: c.path.starts_with("/open-apis/im/"),
            name: c.path.clone(),
        })
    }

    /// Requests the strict gateway refused; a test that expects none asserts it empty.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    pub fn calls_to(&self, path_prefix: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }
}

/// `POST /callback/ws/endpoint` (larksuite/oapi-sdk-go `ws/client.go` getConnURL,
/// `ws/model.go`): `{"AppID","AppSecret"}` → the URL and a `ClientConfig`. Wrong
/// credentials: code 10014 "app secret invalid" — the code the token endpoint uses for
/// a wrong secret; [unverified] which code this endpoint answers is not in the SDKs,
/// which treat every code but 0, 1 and 1000040343 as the client's fault.
async fn ws_endpoint(State(s): State<Shared>, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ok = req["AppID"] == APP_ID && req["AppSecret"] == APP_SECRET;
    let mut st = s.lock().unwrap();
    st.ws_endpoint_calls.push((std::time::Instant::now(), ok));
    let Some(url) = st.ws_url.clone() else {
        return (StatusCode::NOT_FOUND, "no long connection").into_response();
    };
    if !ok {
        return axum::Json(json!({ "code": 10014, "msg": "app secret invalid" })).into_response();
    }
    axum::Json(
        json!({ "code": 0, "msg": "ok", "data": { "URL": url, "ClientConfig": {
        "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0, "PingInterval": 1 } } }),
    )
    .into_response()
}

impl crate::testing::RecordsRefusals for FakeState {
    fn refused(&mut self) -> &mut Vec<String> {
        &mut self.refused
    }
}

fn envelope(status: u16, code: i64, msg: &str, data: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "code": code, "msg": msg, "data": data })),
    )
        .into_response()
}

fn ok(data: Value) -> Response {
    envelope(200, 0, "success", data)
}

/// Record the call, check the bearer token, apply a pending fault. `Err` is the answer.
async fn gate(
    s: &Shared,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Value,
) -> Result<(), Response> {
    let (fault, authorised) = {
        let mut st = s.lock().unwrap();
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let authorised = st.tokens.get(bearer).copied().unwrap_or(false);
        let fault = if path.starts_with("/open-apis/im/") || path.starts_with("/open-apis/contact/")
        {
            match st
                .path_faults
                .iter()
                .position(|(p, _)| path.starts_with(p.as_str()))
            {
                Some(i) => Some(st.path_faults.remove(i).1),
                None => st.faults.pop_front(),
            }
        } else {
            None
        };
        st.calls.push(Call {
            method: method.into(),
            path: path.into(),
            query: query.clone().into_iter().collect(),
            body: body.clone(),
            at: std::time::Instant::now(),
            fault: fault.clone(),
        });
        (fault, authorised)
    };
    match fault {
        Some(Fault::ServerError) => {
            return Err((StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response());
        }
        Some(Fault::RateLimited { reset_secs }) => {
            let mut r = envelope(
                429,
                99991400,
                "request trigger frequency limit",
                Value::Null,
            );
            r.headers_mut()
                .insert("x-ogw-ratelimit-limit", "50".parse().unwrap());
            r.headers_mut().insert(
                "x-ogw-ratelimit-reset",
                reset_secs.to_string().parse().unwrap(),
            );
            return Err(r);
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::InvalidToken) => return Err(invalid_token()),
        Some(Fault::Code { status, code, msg }) => {
            return Err(envelope(status, code, &msg, Value::Null));
        }
        None => {}
    }
    if !authorised {
        return Err(invalid_token());
    }
    Ok(())
}

fn invalid_token() -> Response {
    envelope(
        400,
        99991663,
        "Invalid access token for authorization. Please make a request with token attached.",
        Value::Null,
    )
}

/// `?` for handlers that answer with a `Response` either way: the value, or the refusal
/// returned as the handler's answer.
macro_rules! answer_or {
    ($result:expr) => {
        match $result {
            Ok(v) => v,
            Err(refusal) => return refusal,
        }
    };
}

/// A write call as the real API takes it: the body parsed, then `gate` (recorded, token
/// checked, faults injected). Every handler with a JSON body starts here.
/// `admit` for a call without query parameters.
async fn admit_call(
    s: &Shared,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, Response> {
    admit(s, method, path, &HashMap::new(), headers, body).await
}

async fn admit(
    s: &Shared,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, Response> {
    let b = parse(body)?;
    gate(s, method, path, query, headers, &b).await?;
    Ok(b)
}

// An axum `Response` as the error is how a handler's early answer reads best here.
#[allow(clippy::result_large_err)]
fn parse(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|_| envelope(400, 9499, "Bad Request", Value::Null))
}

async fn token(State(s): State<Shared>, body: Bytes) -> Response {
    let Ok(b) = parse(&body) else {
        return envelope(400, 9499, "Bad Request", Value::Null);
    };
    if b["app_id"] != APP_ID || b["app_secret"] != APP_SECRET {
        return (
            StatusCode::OK,
            axum::Json(json!({ "code": 10014, "msg": "app secret invalid" })),
        )
            .into_response();
    }
    let mut st = s.lock().unwrap();
    st.token_fetches += 1;
    st.seq += 1;
    let t = format!("t-fake-{}", st.seq);
    st.tokens.insert(t.clone(), true);
    // The token endpoint answers without `data` (refs §2.1).
    (
        StatusCode::OK,
        axum::Json(
            json!({ "code": 0, "msg": "ok", "tenant_access_token": t, "expire": st.token_expire }),
        ),
    )
        .into_response()
}

async fn bot_info(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = gate(
        &s,
        "GET",
        "/open-apis/bot/v3/info",
        &HashMap::new(),
        &headers,
        &Value::Null,
    )
    .await
    {
        return r;
    }
    // Top-level `bot`, not `data` (refs §1.3).
    (StatusCode::OK, axum::Json(json!({ "code": 0, "msg": "ok", "bot": { "open_id": BOT_OPEN_ID, "app_name": "Perch Bot", "activate_status": 2 } }))).into_response()
}

/// Store a message unless its uuid was seen: same uuid → same message id.
impl Message {
    /// A message as a send or reply request `b` asks for, before the fake numbers it:
    /// its chat, its receiver (id type, id), its (msg_type, content) and what it answers.
    fn requested(
        b: &Value,
        chat_id: String,
        (receive_id_type, receive_id): (String, String),
        (msg_type, content): (String, String),
        reply_to: Option<String>,
    ) -> Message {
        Message {
            message_id: String::new(),
            chat_id,
            receive_id_type,
            receive_id,
            msg_type,
            content,
            uuid: b["uuid"].as_str().map(Into::into),
            reply_to,
            patches: vec![],
        }
    }
}

fn store_message(st: &mut FakeState, mut m: Message) -> Value {
    if let Some(u) = &m.uuid
        && let Some(id) = st.uuids.get(u)
    {
        let existing = st.messages.iter().find(|x| &x.message_id == id).unwrap();
        return json!({ "message_id": existing.message_id, "chat_id": existing.chat_id, "msg_type": existing.msg_type });
    }
    st.seq += 1;
    m.message_id = format!("om_fake_{}", st.seq);
    if let Some(u) = &m.uuid {
        st.uuids.insert(u.clone(), m.message_id.clone());
    }
    let data = json!({ "message_id": m.message_id, "chat_id": m.chat_id, "msg_type": m.msg_type, "root_id": m.reply_to, "parent_id": m.reply_to });
    st.messages.push(m);
    data
}

#[allow(clippy::result_large_err)]
fn check_content(b: &Value) -> Result<(String, String), Response> {
    let msg_type = b["msg_type"].as_str().unwrap_or_default().to_string();
    let Some(content) = b["content"].as_str() else {
        // im/v1 wants a JSON *string* (refs §2.2).
        return Err(envelope(
            400,
            230001,
            "invalid content: content must be a string",
            Value::Null,
        ));
    };
    if serde_json::from_str::<Value>(content).is_err() {
        return Err(envelope(
            400,
            230001,
            "invalid content: not JSON",
            Value::Null,
        ));
    }
    if !["text", "post", "interactive"].contains(&msg_type.as_str()) {
        return Err(envelope(400, 230001, "invalid msg_type", Value::Null));
    }
    Ok((msg_type, content.to_string()))
}

async fn create_message(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = answer_or!(admit(&s, "POST", "/open-apis/im/v1/messages", &q, &headers, &body).await);
    let (msg_type, content) = answer_or!(check_content(&b));
    let id_type = q.get("receive_id_type").cloned().unwrap_or_default();
    let receive_id = b["receive_id"].as_str().unwrap_or_default().to_string();
    if !["open_id", "union_id", "user_id", "email", "chat_id"].contains(&id_type.as_str())
        || receive_id.is_empty()
    {
        return envelope(
            400,
            230001,
            "invalid receive_id_type or receive_id",
            Value::Null,
        );
    }
    let chat_id = if id_type == "chat_id" {
        receive_id.clone()
    } else {
        format!("oc_p2p_{receive_id}")
    };
    let m = Message::requested(
        &b,
        chat_id,
        (id_type, receive_id),
        (msg_type, content),
        None,
    );
    ok(store_message(&mut s.lock().unwrap(), m))
}

async fn reply_message(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/open-apis/im/v1/messages/{id}/reply");
    let b = answer_or!(admit_call(&s, "POST", &path, &headers, &body).await);
    let (msg_type, content) = answer_or!(check_content(&b));
    let mut st = s.lock().unwrap();
    let chat = st.user_messages.get(&id).cloned().or_else(|| {
        st.messages
            .iter()
            .find(|m| m.message_id == id)
            .map(|m| m.chat_id.clone())
    });
    let Some(chat_id) = chat else {
        return envelope(400, 230011, "The message was not found", Value::Null);
    };
    let receiver = ("chat_id".to_string(), chat_id.clone());
    let m = Message::requested(&b, chat_id, receiver, (msg_type, content), Some(id));
    ok(store_message(&mut st, m))
}

async fn patch_message(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/open-apis/im/v1/messages/{id}");
    let b = answer_or!(admit_call(&s, "PATCH", &path, &headers, &body).await);
    let Some(content) = b["content"].as_str() else {
        return envelope(400, 230001, "content must be a string", Value::Null);
    };
    let mut st = s.lock().unwrap();
    match st.messages.iter_mut().find(|m| m.message_id == id) {
        Some(m) => {
            m.patches.push(content.to_string());
            ok(json!({}))
        }
        None => envelope(400, 230011, "The message was not found", Value::Null),
    }
}

async fn create_chat(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = answer_or!(admit(&s, "POST", "/open-apis/im/v1/chats", &q, &headers, &body).await);
    let mut st = s.lock().unwrap();
    let existing: Option<String> = q.get("uuid").and_then(|u| st.chat_uuids.get(u).cloned());
    if let Some(existing) = existing {
        return ok(json!({ "chat_id": existing }));
    }
    let initial = b["user_id_list"].as_array().map(Vec::len).unwrap_or(0);
    if initial > 50 {
        return envelope(400, 230001, "user_id_list: at most 50", Value::Null);
    }
    st.seq += 1;
    let chat_id = format!("oc_fake_{}", st.seq);
    if let Some(u) = q.get("uuid") {
        st.chat_uuids.insert(u.clone(), chat_id.clone());
    }
    let chat = Chat {
        chat_id: chat_id.clone(),
        name: b["name"].as_str().unwrap_or_default().into(),
        owner_id: b["owner_id"].as_str().map(Into::into),
        members: vec![],
        created_with_members: initial,
    };
    st.chats.insert(chat_id.clone(), chat);
    ok(
        json!({ "chat_id": chat_id, "name": b["name"], "chat_mode": "group", "chat_type": "private" }),
    )
}

/// The strings of the list `field` of a request body, or Feishu's 230001 when it holds
/// more than the 50 ids one call takes.
fn id_list(b: &Value, field: &str) -> Result<Vec<String>, Response> {
    let ids: Vec<String> = b[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(Into::into))
        .collect();
    if ids.len() > 50 {
        return Err(envelope(
            400,
            230001,
            &format!("{field}: at most 50"),
            Value::Null,
        ));
    }
    Ok(ids)
}

async fn add_members(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = answer_or!(
        admit(
            &s,
            "POST",
            &format!("/open-apis/im/v1/chats/{id}/members"),
            &q,
            &headers,
            &body,
        )
        .await
    );
    let ids = match id_list(&b, "id_list") {
        Ok(ids) => ids,
        Err(refusal) => return refusal,
    };
    let mut st = s.lock().unwrap();
    let Some(chat) = st.chats.get_mut(&id) else {
        return envelope(400, 232010, "chat not found", Value::Null);
    };
    let (bad, good): (Vec<String>, Vec<String>) =
        ids.into_iter().partition(|i| i.starts_with("ou_bad"));
    if !bad.is_empty() && q.get("succeed_type").map(String::as_str) != Some("1") {
        return envelope(
            400,
            232008,
            "invalid ids",
            json!({ "invalid_id_list": bad }),
        );
    }
    for g in good {
        if !chat.members.contains(&g) {
            chat.members.push(g);
        }
    }
    ok(json!({ "invalid_id_list": bad, "not_existed_id_list": [], "pending_approval_id_list": [] }))
}

/// The open_id the fake gives a known e-mail.
pub fn open_id_for(email: &str) -> String {
    format!(
        "ou_{}",
        email.split('@').next().unwrap_or(email).replace('.', "_")
    )
}

async fn batch_get_id(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let b = answer_or!(
        admit(
            &s,
            "POST",
            "/open-apis/contact/v3/users/batch_get_id",
            &q,
            &headers,
            &body,
        )
        .await
    );
    let emails = match id_list(&b, "emails") {
        Ok(emails) => emails,
        Err(refusal) => return refusal,
    };
    let list: Vec<Value> = emails
        .iter()
        .map(|e| {
            if e.starts_with("ghost") {
                json!({ "email": e }) // not found: no user_id
            } else {
                json!({ "email": e, "user_id": open_id_for(e), "status": { "is_frozen": false } })
            }
        })
        .collect();
    ok(json!({ "user_list": list }))
}

async fn custom_bot(State(s): State<Shared>, Path(token): Path<String>, body: Bytes) -> Response {
    let reply = |code: i64, msg: &str| {
        (
            StatusCode::OK,
            axum::Json(json!({ "code": code, "msg": msg, "data": {} })),
        )
            .into_response()
    };
    let Some(hook) = s.lock().unwrap().hooks.get(&token).cloned() else {
        return reply(
            19001,
            "param invalid: incoming webhook access token invalid",
        );
    };
    if body.len() > 20 * 1024 {
        return reply(9499, "Bad Request");
    }
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "code": 9499, "msg": "Bad Request", "data": {} })),
        )
            .into_response();
    };
    if let Some(secret) = &hook.secret {
        let ts = b["timestamp"].as_str().unwrap_or_default();
        let string_to_sign = format!("{ts}\n{secret}");
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(string_to_sign.as_bytes()).unwrap();
        let expected = B64.encode(mac.finalize().into_bytes());
        let fresh = ts
            .parse::<i64>()
            .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= 3600);
        if !fresh || b["sign"].as_str() != Some(expected.as_str()) {
            return reply(
                19021,
                "sign match fail or timestamp is not within one hour from current time",
            );
        }
    }
    if let Some(k) = &hook.keyword
        && !String::from_utf8_lossy(&body).contains(k.as_str())
    {
        return reply(19024, "Key Words Not Found");
    }
    match b["msg_type"].as_str() {
        Some("interactive") if !b["card"].is_object() => {
            return reply(19002, "param invalid: card must be an object");
        }
        Some("text") if !b.pointer("/content/text").is_some_and(Value::is_string) => {
            return reply(19002, "param invalid: text");
        }
        Some("post") if !b.pointer("/content/post").is_some_and(Value::is_object) => {
            return reply(19002, "param invalid: post");
        }
        Some("text" | "post" | "interactive") => {}
        _ => return reply(19002, "param invalid: msg_type"),
    }
    s.lock().unwrap().hook_messages.push(b);
    (StatusCode::OK, axum::Json(json!({ "code": 0, "msg": "success", "data": {}, "StatusCode": 0, "StatusMessage": "success" }))).into_response()
}

// ---------------------------------------------------------------------------------
// The event sender: builds envelopes, encrypts (random IV, PKCS#7) and signs like Feishu.

pub struct EventSender {
    /// `http://127.0.0.1:<port>/hooks/<name>`
    pub hook_url: String,
    pub verification_token: String,
    pub encrypt_key: Option<String>,
    http: reqwest::Client,
}

/// A request ready to post: exact body bytes and headers.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl EventSender {
    pub fn new(hook_url: &str, verification_token: &str, encrypt_key: Option<&str>) -> Self {
        EventSender {
            hook_url: hook_url.into(),
            verification_token: verification_token.into(),
            encrypt_key: encrypt_key.map(Into::into),
            http: reqwest::Client::new(),
        }
    }

    /// A schema 2.0 envelope with the verification token in the header.
    pub fn envelope(&self, event_type: &str, event_id: &str, event: Value) -> Value {
        json!({
            "schema": "2.0",
            "header": { "event_id": event_id, "event_type": event_type, "create_time": "1700000000000",
                        "token": self.verification_token, "app_id": APP_ID, "tenant_key": "tk" },
            "event": event
        })
    }

    /// A user's text message in `chat_id`; `mention_bot` puts `@_user_1` (the bot) first.
    pub fn text_message(
        &self,
        fake: &FakeFeishu,
        event_id: &str,
        message_id: &str,
        chat_id: &str,
        text: &str,
        mention_bot: bool,
    ) -> Value {
        fake.lock()
            .user_messages
            .insert(message_id.into(), chat_id.into());
        let (text, mentions) = if mention_bot {
            (
                format!("@_user_1 {text}"),
                json!([{ "key": "@_user_1", "id": { "open_id": BOT_OPEN_ID, "union_id": "on_bot" }, "name": "Perch Bot", "tenant_key": "tk" }]),
            )
        } else {
            (text.to_string(), json!([]))
        };
        self.envelope(
            "im.message.receive_v1",
            event_id,
            json!({
                "sender": { "sender_id": { "open_id": "ou_alice", "union_id": "on_alice", "user_id": "alice" }, "sender_type": "user", "tenant_key": "tk" },
                "message": { "message_id": message_id, "create_time": "1700000000000", "chat_id": chat_id, "chat_type": "group",
                             "message_type": "text", "content": json!({ "text": text }).to_string(), "mentions": mentions }
            }),
        )
    }

    /// Encrypt (when a key is set) and sign (SHA-256, when a key is set) like Feishu, with
    /// the current time as `X-Lark-Request-Timestamp`.
    pub fn seal(&self, doc: &Value) -> Sealed {
        self.seal_at(doc, chrono::Utc::now().timestamp())
    }

    /// `seal` with the timestamp `ts` (Unix seconds): a captured or replayed request.
    pub fn seal_at(&self, doc: &Value, ts: i64) -> Sealed {
        let plain = doc.to_string();
        let body = match &self.encrypt_key {
            Some(k) => json!({ "encrypt": encrypt(k, plain.as_bytes()) })
                .to_string()
                .into_bytes(),
            None => plain.into_bytes(),
        };
        // Feishu sends the timestamp and nonce on every request; they are signed only
        // when the app has an Encrypt Key (refs §1.5).
        let (ts, nonce) = (ts.to_string(), format!("n{}", rand::random::<u32>()));
        let mut headers = vec![
            ("X-Lark-Request-Timestamp".into(), ts.clone()),
            ("X-Lark-Request-Nonce".into(), nonce.clone()),
        ];
        if let Some(k) = &self.encrypt_key {
            let sig = hex::encode(Sha256::digest(
                [
                    ts.as_bytes(),
                    nonce.as_bytes(),
                    k.as_bytes(),
                    body.as_slice(),
                ]
                .concat(),
            ));
            headers.push(("X-Lark-Signature".into(), sig));
        }
        Sealed { body, headers }
    }

    /// Seal for the legacy card request URL: SHA-1 over the verification token.
    pub fn seal_legacy_card(&self, doc: &Value) -> Sealed {
        self.seal_legacy_card_at(doc, chrono::Utc::now().timestamp())
    }

    /// `seal_legacy_card` with the timestamp `ts` (Unix seconds).
    pub fn seal_legacy_card_at(&self, doc: &Value, ts: i64) -> Sealed {
        let body = doc.to_string().into_bytes();
        let (ts, nonce) = (ts.to_string(), "legacy-nonce".to_string());
        let sig = hex::encode(Sha1::digest(
            [
                ts.as_bytes(),
                nonce.as_bytes(),
                self.verification_token.as_bytes(),
                body.as_slice(),
            ]
            .concat(),
        ));
        Sealed {
            body,
            headers: vec![
                ("X-Lark-Request-Timestamp".into(), ts),
                ("X-Lark-Request-Nonce".into(), nonce),
                ("X-Lark-Signature".into(), sig),
            ],
        }
    }

    /// POST to the hook (plus `suffix`, e.g. `/card`): (status, JSON answer).
    pub async fn post(&self, suffix: &str, sealed: &Sealed) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{suffix}", self.hook_url))
            .header("content-type", "application/json")
            .body(sealed.body.clone());
        for (k, v) in &sealed.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("perch answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(&self, doc: &Value) -> (u16, Value) {
        self.post("", &self.seal(doc)).await
    }
}

/// `b64(iv ‖ AES-256-CBC(PKCS#7(plain)))` with `key = SHA-256(encrypt_key)` and a random IV.
pub fn encrypt(encrypt_key: &str, plain: &[u8]) -> String {
    let key: [u8; 32] = Sha256::digest(encrypt_key.as_bytes()).into();
    let iv: [u8; 16] = rand::random();
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + 16, 0);
    let ct = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded::<Pkcs7>(&mut buf, plain.len())
        .unwrap()
        .to_vec();
    B64.encode([iv.as_slice(), ct.as_slice()].concat())
}

/// `[auth] mode = "feishu"` pointed at the fake at `base`, with `secret` as the app
/// secret and perch's callback at `perch_base`.
pub fn login_config(base: &str, secret: &str, perch_base: &str, tenant: Option<&str>) -> String {
    let tenant = tenant
        .map(|t| format!("tenant_key = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "[auth]\nmode = \"feishu\"\n[auth.feishu]\napp_id = \"{APP_ID}\"\napp_secret = \"{secret}\"\nredirect_uri = \"{perch_base}/auth/feishu/callback\"\nauthorize_url = \"{base}/open-apis/authen/v1/authorize\"\ntoken_url = \"{base}/open-apis/authen/v2/oauth/token\"\nuser_info_url = \"{base}/open-apis/authen/v1/user_info\"\n{tenant}"
    )
}

/// The authorize page: checks the app and the redirect, and sends the person back at
/// once with a fresh code (the consent screen, skipped).
async fn oauth_authorize(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut st = s.lock().unwrap();
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != APP_ID || get("response_type") != "code" {
        return (StatusCode::BAD_REQUEST, "unknown app or response_type").into_response();
    }
    let (Some(person), redirect) = (st.oauth_person.clone(), get("redirect_uri")) else {
        return (StatusCode::FORBIDDEN, "nobody signs in").into_response();
    };
    if redirect.is_empty() || q.get("state").is_none() {
        return (StatusCode::BAD_REQUEST, "redirect_uri and state are needed").into_response();
    }
    st.seq += 1;
    let code = format!("code-{}", st.seq);
    st.oauth_codes
        .insert(code.clone(), (redirect.clone(), person, false));
    let mut url = reqwest::Url::parse(&redirect).unwrap();
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &get("state"));
    (StatusCode::FOUND, [("location", url.to_string())]).into_response()
}

/// The code-for-token exchange (JSON only: the gateway refuses other bodies).
async fn oauth_token(State(s): State<Shared>, body: Bytes) -> Response {
    let refuse = |code: i64, error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "code": code, "error": error, "error_description": description })),
        )
            .into_response()
    };
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return refuse(20001, "invalid_request", "body is not JSON");
    };
    let mut st = s.lock().unwrap();
    let code = b["code"].as_str().unwrap_or_default().to_string();
    let accepted = |st: &mut FakeState, ok: bool| st.oauth_exchanges.push((code.clone(), ok));
    if b["grant_type"] != "authorization_code" {
        accepted(&mut st, false);
        return refuse(
            20001,
            "unsupported_grant_type",
            "grant_type must be authorization_code",
        );
    }
    if b["client_id"] != APP_ID || b["client_secret"] != APP_SECRET {
        accepted(&mut st, false);
        return refuse(
            20002,
            "invalid_client",
            "client_id or client_secret is wrong",
        );
    }
    let redirect = b["redirect_uri"].as_str().unwrap_or_default().to_string();
    let person = match st.oauth_codes.get_mut(&code) {
        Some((r, person, used)) if !*used && *r == redirect => {
            *used = true;
            person.clone()
        }
        _ => {
            accepted(&mut st, false);
            return refuse(
                20003,
                "invalid_grant",
                "the code is invalid, used or expired",
            );
        }
    };
    accepted(&mut st, true);
    st.seq += 1;
    let token = format!("u-{}", st.seq);
    st.user_tokens.insert(token.clone(), person);
    axum::Json(json!({ "code": 0, "access_token": token, "expires_in": 7200, "token_type": "Bearer", "scope": "" }))
        .into_response()
}

async fn oauth_user_info(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let st = s.lock().unwrap();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match st.user_tokens.get(token) {
        Some((open_id, name, tenant)) => ok(json!({
            "name": name, "en_name": name, "open_id": open_id,
            "union_id": format!("on_{open_id}"), "tenant_key": tenant,
        })),
        None => envelope(401, 99991668, "invalid user access token", Value::Null),
    }
}
