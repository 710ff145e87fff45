//! A fake Slack for tests: the Web API methods perch calls, speaking the real envelopes
//! of `../shared/refs/chat-platforms.md` §5, plus an event sender that signs like Slack
//! (Events API JSON and form-encoded interactivity).
//!
//! The fake binds 127.0.0.1:0 and serves `<base>/api/<method>`: `chat.postMessage`
//! (a user id as the channel opens a DM `D<user>`; `thread_ts` must name a message of
//! that channel), `chat.update` (the message must exist), `conversations.create`
//! (lowercase names only, `name_taken`), `conversations.invite` (comma-joined users;
//! `force` reports users starting `U_BAD` in `errors`; `already_in_channel` when every
//! one is a member), `users.lookupByEmail` (GET; e-mails starting `ghost` are unknown).
//! Slack answers HTTP 200 with `{"ok": false, "error": …}` for errors, and 429 with
//! `Retry-After` when rate limited (`fail_next`).
//!
//! **Strict like a real gateway**: a repeated singleton header or a body without a JSON
//! Content-Type is refused with 400 before any method runs (`perch::testing::malformed`),
//! and recorded in `refused`; a missing or wrong bearer token gets `not_authed` /
//! `invalid_auth`. Every call is recorded. `apps.connections.open` takes the app-level
//! token and hands out the Socket Mode server's URL (`socket.rs`).
//!
//! The signing code is written here again on purpose (not imported from perch), so a
//! mistake in perch's cannot hide behind the same mistake in the fake.
#![allow(dead_code)]

pub mod socket;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BOT_TOKEN: &str = "xoxb-test-token-for-perch";
pub const SIGNING_SECRET: &str = "slack-signing-secret-for-tests";
pub const BOT_USER: &str = "U_PERCH_BOT";
/// The app-level token Socket Mode opens connections with.
pub const APP_TOKEN: &str = "xapp-1-test-app-token-for-perch";

/// A fault the next Web API call suffers.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP 429 with `Retry-After: <secs>`.
    RateLimited { retry_after_secs: u64 },
    /// HTTP 200 `{"ok": false, "error": <code>}`.
    Error(String),
    /// HTTP 500, not JSON.
    ServerError,
}

#[derive(Debug, Clone)]
pub struct Call {
    /// The Web API method (`chat.postMessage`).
    pub method: String,
    pub http_method: String,
    /// The JSON body, or the query as an object for GETs.
    pub body: Value,
    pub at: std::time::Instant,
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    pub text: String,
    pub blocks: Option<Value>,
    pub thread_ts: Option<String>,
    pub mrkdwn: Option<bool>,
    /// Every `chat.update` body applied to it, in order.
    pub updates: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub is_private: bool,
    pub members: Vec<String>,
}

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    pub messages: Vec<Message>,
    /// Messages people wrote (sent through the event sender): (channel, ts).
    pub user_messages: Vec<(String, String)>,
    pub channels: BTreeMap<String, Channel>,
    pub refused: Vec<String>,
    /// The Socket Mode URL `apps.connections.open` hands out (`socket::FakeSocket`).
    pub socket_url: Option<String>,
    faults: VecDeque<Fault>,
    seq: u64,
}

#[derive(Clone)]
pub struct FakeSlack {
    /// The Web API base URL (`http://127.0.0.1:<port>/api`), perch's `base_url`.
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
}

type Shared = Arc<Mutex<FakeState>>;

impl FakeSlack {
    pub async fn start() -> FakeSlack {
        let state: Shared = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route("/api/{method}", any(method))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                perch::testing::strict_gateway::<FakeState>,
            ))
            .with_state(state.clone());
        let base = format!("{}/api", perch::testing::serve_fake(app).await);
        FakeSlack { base, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// The next `n` Web API calls suffer `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut s = self.lock();
        for _ in 0..n {
            s.faults.push_back(fault.clone());
        }
    }

    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    /// Calls inside an earlier 429's `Retry-After` window (`calls_inside_waits`).
    pub fn calls_inside_rate_limit_windows(&self) -> Vec<(String, String)> {
        perch::testing::calls_inside_waits_by(&self.lock().calls, |c| perch::testing::Seen {
            at: c.at,
            ordered_wait: match c.fault {
                Some(Fault::RateLimited { retry_after_secs }) => {
                    Some(Duration::from_secs(retry_after_secs))
                }
                _ => None,
            },
            limited: true,
            name: c.method.clone(),
        })
    }

    /// A channel people already use (for sends to it).
    pub fn add_channel(&self, id: &str, members: &[&str]) {
        self.lock().channels.insert(
            id.into(),
            Channel {
                id: id.into(),
                name: id.to_lowercase(),
                is_private: false,
                members: members.iter().map(|m| m.to_string()).collect(),
            },
        );
    }
}

impl perch::testing::RecordsRefusals for FakeState {
    fn refused(&mut self) -> &mut Vec<String> {
        &mut self.refused
    }
}

fn ok(mut v: Value) -> Response {
    v["ok"] = json!(true);
    axum::Json(v).into_response()
}

fn err(code: &str) -> Response {
    axum::Json(json!({ "ok": false, "error": code })).into_response()
}

fn query_object(q: Option<&str>) -> Value {
    let mut m = serde_json::Map::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        m.insert(decode(k), json!(decode(v)));
    }
    Value::Object(m)
}

async fn method(
    State(s): State<Shared>,
    Path(name): Path<String>,
    http_method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let doc: Value = if http_method == Method::GET {
        query_object(query.as_deref())
    } else if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return err("invalid_json"),
        }
    };
    let fault = {
        let mut st = s.lock().unwrap();
        let fault = st.faults.pop_front();
        st.calls.push(Call {
            method: name.clone(),
            http_method: http_method.to_string(),
            body: doc.clone(),
            at: std::time::Instant::now(),
            fault: fault.clone(),
        });
        fault
    };
    match fault {
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({ "ok": false, "error": "ratelimited" })),
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return r;
        }
        Some(Fault::Error(code)) => return err(&code),
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response();
        }
        None => {}
    }
    // `apps.connections.open` takes the app-level token, every other method the bot's.
    let token = if name == "apps.connections.open" {
        APP_TOKEN
    } else {
        BOT_TOKEN
    };
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => return err("not_authed"),
        Some(v) if v != format!("Bearer {token}") => return err("invalid_auth"),
        Some(_) => {}
    }
    // Which methods take which HTTP method (the official SDK: lookups are GETs).
    let want_get = name == "users.lookupByEmail";
    if want_get != (http_method == Method::GET) {
        return err("invalid_arguments");
    }
    let mut st = s.lock().unwrap();
    match name.as_str() {
        "chat.postMessage" => post_message(&mut st, &doc),
        "chat.update" => update_message(&mut st, &doc),
        "conversations.create" => create_channel(&mut st, &doc),
        "conversations.invite" => invite(&mut st, &doc),
        "users.lookupByEmail" => lookup(&doc),
        "apps.connections.open" => match &st.socket_url {
            Some(url) => ok(json!({ "url": url })),
            None => err("not_allowed_token_type"),
        },
        _ => err("unknown_method"),
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Block Kit checks a real Slack makes (refs §5 limits), enough to catch a bad render.
fn blocks_ok(blocks: &Value) -> bool {
    let Some(list) = blocks.as_array() else {
        return false;
    };
    list.len() <= 50
        && list.iter().all(|b| {
            b.get("type").and_then(Value::as_str).is_some()
                && b.get("elements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .all(|e| {
                        e.get("value")
                            .and_then(Value::as_str)
                            .is_none_or(|v| v.len() <= 2000)
                    })
        })
}

fn known_channel(st: &FakeState, channel: &str) -> bool {
    channel.starts_with('D') || st.channels.contains_key(channel)
}

fn post_message(st: &mut FakeState, doc: &Value) -> Response {
    let Some(mut channel) = str_of(doc, "channel").map(str::to_string) else {
        return err("channel_not_found");
    };
    if channel.starts_with('U') {
        // A user id: the app's DM with that user.
        channel = format!("D{channel}");
    }
    if channel == "C_NOT_IN" {
        return err("not_in_channel");
    }
    if !known_channel(st, &channel) {
        return err("channel_not_found");
    }
    let text = str_of(doc, "text").unwrap_or("").to_string();
    let blocks = doc.get("blocks").cloned();
    if text.is_empty() && blocks.is_none() {
        return err("no_text");
    }
    if let Some(b) = &blocks
        && !blocks_ok(b)
    {
        return err("invalid_blocks");
    }
    let thread_ts = str_of(doc, "thread_ts").map(str::to_string);
    if let Some(t) = &thread_ts {
        let known = st
            .messages
            .iter()
            .any(|m| m.channel == channel && m.ts == *t)
            || st
                .user_messages
                .iter()
                .any(|(c, ts)| *c == channel && ts == t);
        if !known {
            return err("thread_not_found");
        }
    }
    st.seq += 1;
    let ts = format!("1800000000.{:06}", st.seq);
    st.messages.push(Message {
        channel: channel.clone(),
        ts: ts.clone(),
        text: text.clone(),
        blocks,
        thread_ts,
        mrkdwn: doc.get("mrkdwn").and_then(Value::as_bool),
        updates: Vec::new(),
    });
    ok(json!({ "channel": channel, "ts": ts, "message": { "text": text } }))
}

fn update_message(st: &mut FakeState, doc: &Value) -> Response {
    let (Some(channel), Some(ts)) = (str_of(doc, "channel"), str_of(doc, "ts")) else {
        return err("invalid_arguments");
    };
    if let Some(b) = doc.get("blocks")
        && !blocks_ok(b)
    {
        return err("invalid_blocks");
    }
    match st
        .messages
        .iter_mut()
        .find(|m| m.channel == channel && m.ts == ts)
    {
        Some(m) => {
            m.text = str_of(doc, "text").unwrap_or("").to_string();
            m.blocks = doc.get("blocks").cloned();
            m.updates.push(doc.clone());
            ok(json!({ "channel": channel, "ts": ts }))
        }
        None => err("message_not_found"),
    }
}

fn create_channel(st: &mut FakeState, doc: &Value) -> Response {
    let Some(name) = str_of(doc, "name") else {
        return err("invalid_name_required");
    };
    if name.chars().count() > 80 {
        return err("invalid_name_maxlength");
    }
    if name
        .chars()
        .any(|c| c.is_uppercase() || c.is_whitespace() || c == '.' || c == ',')
    {
        return err("invalid_name_specials");
    }
    if st.channels.values().any(|c| c.name == name) {
        return err("name_taken");
    }
    st.seq += 1;
    let id = format!("C{:08}", st.seq);
    let is_private = doc.get("is_private").and_then(Value::as_bool) == Some(true);
    st.channels.insert(
        id.clone(),
        Channel {
            id: id.clone(),
            name: name.to_string(),
            is_private,
            members: vec![BOT_USER.to_string()],
        },
    );
    ok(json!({ "channel": { "id": id, "name": name, "is_private": is_private } }))
}

fn invite(st: &mut FakeState, doc: &Value) -> Response {
    let (Some(channel), Some(users)) = (str_of(doc, "channel"), str_of(doc, "users")) else {
        return err("invalid_arguments");
    };
    let force = doc.get("force").and_then(Value::as_bool) == Some(true);
    let Some(ch) = st.channels.get_mut(channel) else {
        return err("channel_not_found");
    };
    let users: Vec<&str> = users.split(',').collect();
    if users.len() > 1000 {
        return err("too_many_users");
    }
    let bad: Vec<&str> = users
        .iter()
        .copied()
        .filter(|u| u.starts_with("U_BAD") || !u.starts_with('U'))
        .collect();
    if !bad.is_empty() && !force {
        return err("user_not_found");
    }
    let new: Vec<&str> = users
        .iter()
        .copied()
        .filter(|u| !bad.contains(u) && !ch.members.iter().any(|m| m == u))
        .collect();
    if new.is_empty() && bad.is_empty() {
        return err("already_in_channel");
    }
    ch.members.extend(new.iter().map(|u| u.to_string()));
    let mut answer = json!({ "channel": { "id": channel } });
    if !bad.is_empty() {
        answer["errors"] = bad
            .iter()
            .map(|u| json!({ "user": u, "ok": false, "error": "user_not_found" }))
            .collect();
    }
    ok(answer)
}

fn lookup(doc: &Value) -> Response {
    let Some(email) = str_of(doc, "email") else {
        return err("invalid_arguments");
    };
    if email.starts_with("ghost") || !email.contains('@') {
        return err("users_not_found");
    }
    ok(json!({ "user": { "id": user_for(email), "profile": { "email": email } } }))
}

/// The user id the fake gives an e-mail address: `U_` + the local part, upper case.
pub fn user_for(email: &str) -> String {
    let local = email.split('@').next().unwrap_or("");
    format!(
        "U_{}",
        local
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            })
            .collect::<String>()
    )
}

// ---------------------------------------------------------------------------------
// The event sender: what Slack POSTs to perch.

/// `v0=` + hex HMAC-SHA256(secret, `v0:<ts>:<body>`), written independently of perch.
pub fn slack_signature(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(b"v0:");
    mac.update(ts.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A request as Slack sends it: body, content type and headers.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

pub struct EventSender {
    pub url: String,
    pub secret: String,
    client: reqwest::Client,
}

impl EventSender {
    pub fn new(url: &str, secret: &str) -> Self {
        EventSender {
            url: url.to_string(),
            secret: secret.to_string(),
            client: reqwest::Client::new(),
        }
    }

    /// Sign `body` (of `content_type`) as Slack does, timestamped `ts`.
    pub fn sign_at(&self, body: Vec<u8>, content_type: &str, ts: i64) -> Delivery {
        let ts = ts.to_string();
        let sig = slack_signature(&self.secret, &ts, &body);
        Delivery {
            body,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                ("X-Slack-Request-Timestamp".into(), ts),
                ("X-Slack-Signature".into(), sig),
            ],
        }
    }

    pub fn json(&self, doc: &Value) -> Delivery {
        self.sign_at(
            doc.to_string().into_bytes(),
            "application/json",
            chrono::Utc::now().timestamp(),
        )
    }

    /// An interactivity payload, form-encoded (`payload=<urlencoded JSON>`).
    pub fn form(&self, payload: &Value) -> Delivery {
        let encoded = percent_encoding::utf8_percent_encode(
            &payload.to_string(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        self.sign_at(
            format!("payload={encoded}").into_bytes(),
            "application/x-www-form-urlencoded",
            chrono::Utc::now().timestamp(),
        )
    }

    /// POST a delivery to `/hooks/<name><sub>`: (status, body text).
    pub async fn post(&self, sub: &str, d: &Delivery) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}{sub}", self.url))
            .body(d.body.clone());
        for (k, v) in &d.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("perch answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub async fn send(&self, doc: &Value) -> (u16, String) {
        self.post("", &self.json(doc)).await
    }

    /// An `event_callback` envelope around `event`.
    pub fn envelope(event_id: &str, event: Value) -> Value {
        json!({
            "token": "legacy-verification-token",
            "team_id": "T1",
            "api_app_id": "A1",
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": chrono::Utc::now().timestamp(),
            "authorizations": [{ "enterprise_id": null, "team_id": "T1", "user_id": BOT_USER, "is_bot": true }]
        })
    }

    /// `@perch <text>` in `channel`, message `ts` (registered at the fake as a message
    /// people wrote, so a thread reply to it is accepted).
    pub fn mention(fake: &FakeSlack, event_id: &str, channel: &str, ts: &str, text: &str) -> Value {
        fake.lock()
            .user_messages
            .push((channel.to_string(), ts.to_string()));
        Self::envelope(
            event_id,
            json!({
                "type": "app_mention", "user": "U_ALICE", "text": format!("<@{BOT_USER}> {text}"),
                "ts": ts, "channel": channel, "event_ts": ts, "team": "T1"
            }),
        )
    }

    /// A direct message to the app: channel `D<user>`.
    pub fn direct(fake: &FakeSlack, event_id: &str, user: &str, ts: &str, text: &str) -> Value {
        let channel = format!("D{user}");
        fake.lock()
            .user_messages
            .push((channel.clone(), ts.to_string()));
        Self::envelope(
            event_id,
            json!({
                "type": "message", "channel_type": "im", "user": user, "text": text,
                "ts": ts, "channel": channel, "event_ts": ts, "team": "T1"
            }),
        )
    }

    /// A `block_actions` click by `user` on the button `button` (an element of the
    /// message's blocks) of message `ts` in `channel`.
    pub fn click(user: &str, channel: &str, ts: &str, button: &Value, trigger: &str) -> Value {
        json!({
            "type": "block_actions",
            "user": { "id": user, "username": "alice", "name": "alice", "team_id": "T1" },
            "api_app_id": "A1", "token": "legacy-verification-token",
            "container": { "type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": false },
            "trigger_id": trigger,
            "team": { "id": "T1", "domain": "test" },
            "channel": { "id": channel, "name": "team" },
            "response_url": "https://hooks.slack.invalid/actions/T1/1/x",
            "actions": [{
                "action_id": button["action_id"], "block_id": "b1", "type": "button",
                "value": button["value"], "text": button["text"], "action_ts": "1800000001.000001"
            }]
        })
    }
}
