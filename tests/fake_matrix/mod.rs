//! A fake Matrix homeserver for tests: the client-server API endpoints perch's Matrix
//! connector calls (`connectors/matrix/`), with the spec's wire shapes (Matrix
//! client-server API v1.x, `/_matrix/client/v3/...`), strict like a homeserver.
//!
//! Endpoints: `GET /sync` (`filter` JSON honoured for timeline types and limit, `since`
//! from the tokens it handed out, `timeout` long poll, `next_batch`; joined rooms'
//! timelines and invitations), `PUT /rooms/{room}/send/{type}/{txnId}`,
//! `PUT /rooms/{room}/redact/{event}/{txnId}`, `POST /createRoom`,
//! `POST /rooms/{room}/invite`, `POST /join/{room}`, `GET|PUT
//! /rooms/{room}/state/m.room.power_levels/` and `GET /account/whoami`. Anything else is
//! `404 M_UNRECOGNIZED`.
//!
//! **Strict like a homeserver**: a repeated singleton header or a body without a JSON
//! Content-Type is refused before any endpoint runs (`perch::testing::gateway_admits`)
//! and recorded in `refused`; a missing token is `401 M_MISSING_TOKEN`, a wrong one
//! `401 M_UNKNOWN_TOKEN`; a body that is not a JSON object is `400 M_NOT_JSON`; a
//! missing or mistyped field `400 M_BAD_JSON` / `M_INVALID_PARAM`; a room the bot is not
//! in `403 M_FORBIDDEN`. Beyond Synapse (on purpose, so a wrong id fails a test): an
//! `m.in_reply_to` or `m.replace` must point at an event of that room (an edit at one of
//! the bot's own), and `m.room.message` needs `msgtype` and `body` (the spec's required
//! keys, which Synapse does not enforce).
//!
//! **It counts every call** (`calls`) and every transaction id: a repeated txnId from
//! the same access token on the same path is answered with the first event id and
//! creates nothing, as Synapse does (the call is still recorded, `repeated_txn`).
//! `fail_next` (or `fail_after`) makes the next non-sync calls answer `429 {"errcode":"M_LIMIT_EXCEEDED",
//! "retry_after_ms":N}`; `break_next_sync` damages the next `/sync` answer.
//!
//! **Inbound:** what people do is a log of entries (timeline events, invitations); a
//! `since` token `s<n>` means "the first n entries were handed out", so `push_timeline`
//! puts an event in the next batch, and the same event id pushed twice is handed out
//! twice (a redelivery). The events the bot sends go into the log too, as on a real
//! server (its own messages come back in its sync).
#![allow(dead_code)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SERVER_NAME: &str = "fake.test";
pub const BOT_USER: &str = "@perch:fake.test";
pub const DEVICE_ID: &str = "PERCH";
pub const ACCESS_TOKEN: &str = "syt_cGVyY2g_fake_access_token";
pub const ALICE: &str = "@alice:fake.test";
pub const BOB: &str = "@bob:fake.test";

/// A fault the next non-sync call suffers.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// HTTP 429 `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":N}`.
    RateLimited { retry_after_ms: u64 },
    /// HTTP 500 `{"errcode":"M_UNKNOWN"}`.
    ServerError,
}

/// A damaged `/sync` answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SyncFault {
    /// HTTP 200 whose JSON is cut in the middle.
    Truncated,
    /// HTTP 200, a JSON object without `next_batch`.
    NoNextBatch,
}

/// One call perch made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The endpoint, percent-decoded, without `/_matrix/client/v3` (`/rooms/!a:b/send/…`).
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Value,
    pub at: Instant,
    pub fault: Option<Fault>,
    /// For `send`: the event type and transaction id, and whether the txnId was seen
    /// before (answered with the first event id, nothing created).
    pub event_type: Option<String>,
    pub txn: Option<String>,
    pub repeated_txn: bool,
    /// For `/sync`: the damage done to its answer.
    pub sync_fault: Option<SyncFault>,
}

impl Call {
    pub fn is_sync(&self) -> bool {
        self.path == "/sync"
    }
}

/// An event the bot sent (created, not a repeated txnId).
#[derive(Debug, Clone)]
pub struct Sent {
    pub room: String,
    pub event_type: String,
    pub event_id: String,
    pub txn: String,
    pub content: Value,
}

#[derive(Debug, Clone, Default)]
pub struct Room {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub is_direct: bool,
    /// user id → `join` or `invite`.
    pub members: BTreeMap<String, String>,
    /// Event id → (sender, type) of every event in the room.
    pub events: HashMap<String, (String, String)>,
    /// (sender, annotated event, key) of every reaction, for `M_DUPLICATE_ANNOTATION`.
    pub annotations: Vec<(String, String, String)>,
    pub power_levels: Value,
}

/// What people do, in order: the `/sync` log.
#[derive(Debug, Clone)]
enum Entry {
    Timeline { room: String, event: Value },
    Invite { room: String, inviter: String },
}

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    pub refused: Vec<String>,
    pub rooms: BTreeMap<String, Room>,
    pub users: Vec<String>,
    pub sent: Vec<Sent>,
    /// (token, path without the txnId, txnId) → event id.
    txns: HashMap<(String, String, String), String>,
    log: Vec<Entry>,
    /// What the next non-sync calls suffer, in order (`None`: nothing).
    faults: VecDeque<Option<Fault>>,
    sync_faults: VecDeque<SyncFault>,
    seq: u64,
}

#[derive(Clone)]
pub struct FakeMatrix {
    /// The homeserver's base URL, perch's `homeserver`.
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
}

type Shared = Arc<Mutex<FakeState>>;

fn power_levels(creator: &str) -> Value {
    json!({ "users": { creator: 100 }, "users_default": 0, "events_default": 0,
            "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
            "events": {} })
}

impl FakeMatrix {
    /// A homeserver that knows the bot, Alice and Bob.
    pub async fn start() -> FakeMatrix {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            users: vec![BOT_USER.into(), ALICE.into(), BOB.into()],
            ..Default::default()
        }));
        let api = Router::new()
            .route("/sync", get(sync))
            .route("/rooms/{room}/send/{event_type}/{txn}", put(send))
            .route("/rooms/{room}/redact/{event_id}/{txn}", put(redact))
            .route("/createRoom", post(create_room))
            .route("/rooms/{room}/invite", post(invite))
            .route("/join/{room}", post(join))
            .route("/rooms/{room}/state/{event_type}/", any(room_state))
            .route("/account/whoami", get(whoami));
        let app = Router::new()
            .nest("/_matrix/client/v3", api)
            .fallback(|| async { matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request") })
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                perch::testing::strict_gateway::<FakeState>,
            ))
            .with_state(state.clone());
        let base = perch::testing::serve_fake(app).await;
        FakeMatrix { base, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// A room with these members joined (the bot among them or not).
    pub fn add_room(&self, room: &str, joined: &[&str]) {
        let creator = joined.first().copied().unwrap_or(ALICE);
        self.lock().rooms.insert(
            room.into(),
            Room {
                members: joined
                    .iter()
                    .map(|u| (u.to_string(), "join".to_string()))
                    .collect(),
                power_levels: power_levels(creator),
                ..Default::default()
            },
        );
    }

    /// A person's message already in a room's history (before perch ran): an initial
    /// sync carries it in the room's timeline, as Synapse's does.
    pub fn add_history(&self, room: &str, event_id: &str, sender: &str, body: &str) {
        self.push_timeline(
            room,
            json!({ "type": "m.room.message", "event_id": event_id, "sender": sender,
                    "content": { "msgtype": "m.text", "body": body } }),
        );
    }

    /// `inviter` invites the bot to `room` (a direct chat if `is_direct`): the next
    /// sync carries the invitation.
    pub fn invite_bot(&self, room: &str, inviter: &str, is_direct: bool) {
        let mut s = self.lock();
        let r = s.rooms.entry(room.into()).or_insert_with(|| Room {
            power_levels: power_levels(inviter),
            ..Default::default()
        });
        r.members.insert(inviter.into(), "join".into());
        r.members.insert(BOT_USER.into(), "invite".into());
        r.is_direct = is_direct;
        s.log.push(Entry::Invite {
            room: room.into(),
            inviter: inviter.into(),
        });
    }

    /// Put a person's timeline event (`type`, `event_id`, `sender`, `content`…; the
    /// fake adds `origin_server_ts` if missing) in `room`'s next sync batch. Its log
    /// position: the batch is acknowledged once perch syncs from a later token.
    pub fn push_timeline(&self, room: &str, event: Value) -> usize {
        let mut s = self.lock();
        let mut event = event;
        if event.get("origin_server_ts").is_none() && event.is_object() {
            event["origin_server_ts"] = json!(chrono::Utc::now().timestamp_millis());
        }
        if let (Some(id), Some(sender), Some(r)) = (
            event["event_id"].as_str(),
            event["sender"].as_str(),
            s.rooms.get_mut(room),
        ) {
            let kind = event["type"].as_str().unwrap_or_default().to_string();
            r.events.insert(id.into(), (sender.into(), kind));
        }
        s.log.push(Entry::Timeline {
            room: room.into(),
            event,
        });
        s.log.len() - 1
    }

    /// Whether perch has synced from a token past log position `pos` (it stores
    /// `next_batch` only once the batch is durable, so this is its acknowledgement).
    pub fn acknowledged(&self, pos: usize) -> bool {
        self.lock().calls.iter().any(|c| {
            c.is_sync()
                && c.query
                    .get("since")
                    .and_then(|t| position(t))
                    .is_some_and(|n| n > pos)
        })
    }

    /// The next `n` non-sync calls suffer `fault`.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut s = self.lock();
        for _ in 0..n {
            s.faults.push_back(Some(fault.clone()));
        }
    }

    /// The next `skip` non-sync calls go through, the one after suffers `fault` (a
    /// step failing half-way through an operation).
    pub fn fail_after(&self, skip: usize, fault: Fault) {
        let mut s = self.lock();
        s.faults.extend(std::iter::repeat_n(None, skip));
        s.faults.push_back(Some(fault));
    }

    /// The next `/sync` answer is damaged.
    pub fn break_next_sync(&self, fault: SyncFault) {
        self.lock().sync_faults.push_back(fault);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    /// Calls inside an earlier 429's `retry_after_ms` window (`calls_inside_waits`).
    pub fn calls_inside_rate_limit_windows(&self) -> Vec<(String, String)> {
        perch::testing::calls_inside_waits_by(&self.lock().calls, |c| perch::testing::Seen {
            at: c.at,
            ordered_wait: match c.fault {
                Some(Fault::RateLimited { retry_after_ms }) => {
                    Some(Duration::from_millis(retry_after_ms))
                }
                _ => None,
            },
            // Synapse limits messages (and joins, invites), not /sync.
            limited: !c.is_sync(),
            name: format!("{} {}", c.method, c.path),
        })
    }
}

/// `s<n>` → n.
fn position(token: &str) -> Option<usize> {
    token.strip_prefix('s')?.parse().ok()
}

fn matrix_error(status: u16, errcode: &str, error: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(json!({ "errcode": errcode, "error": error })),
    )
        .into_response()
}

impl perch::testing::RecordsRefusals for FakeState {
    fn refused(&mut self) -> &mut Vec<String> {
        &mut self.refused
    }
}

fn query_map(q: Option<&str>) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A call `admit` let through: its JSON body, its place in `calls`, its fault.
struct Admitted {
    body: Value,
    index: usize,
    fault: Option<Fault>,
}

/// Record the call, apply a queued fault, check its token and body (a JSON object for
/// PUT and POST, nothing for GET); `Err` is the answer to give instead.
// The `Err` is the HTTP answer itself, returned at once by every endpoint.
#[allow(clippy::result_large_err)]
fn admit(
    s: &Shared,
    method: &Method,
    path: String,
    query: BTreeMap<String, String>,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<Admitted, Response> {
    let needs_body = *method == Method::PUT || *method == Method::POST;
    let parsed: Option<Value> = serde_json::from_slice(raw).ok();
    let is_sync = path == "/sync";
    let mut st = s.lock().unwrap();
    let fault = if is_sync {
        None
    } else {
        st.faults.pop_front().flatten()
    };
    st.calls.push(Call {
        method: method.to_string(),
        path,
        query,
        body: parsed.clone().unwrap_or(Value::Null),
        at: Instant::now(),
        fault: fault.clone(),
        event_type: None,
        txn: None,
        repeated_txn: false,
        sync_fault: None,
    });
    let index = st.calls.len() - 1;
    drop(st);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => {
            return Err(matrix_error(
                401,
                "M_MISSING_TOKEN",
                "Missing access token.",
            ));
        }
        Some(v) if v != format!("Bearer {ACCESS_TOKEN}") => {
            return Err(matrix_error(
                401,
                "M_UNKNOWN_TOKEN",
                "Invalid access token passed.",
            ));
        }
        Some(_) => {}
    }
    match &fault {
        Some(Fault::RateLimited { retry_after_ms }) => {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({ "errcode": "M_LIMIT_EXCEEDED",
                                   "error": "Too Many Requests",
                                   "retry_after_ms": retry_after_ms })),
            )
                .into_response());
        }
        Some(Fault::ServerError) => {
            return Err(matrix_error(500, "M_UNKNOWN", "Internal server error"));
        }
        None => {}
    }
    let body = if needs_body {
        match parsed {
            Some(v) if v.is_object() => v,
            _ => {
                return Err(matrix_error(
                    400,
                    "M_NOT_JSON",
                    "Content not JSON or not an object.",
                ));
            }
        }
    } else if !raw.is_empty() {
        return Err(matrix_error(400, "M_UNRECOGNIZED", "A GET takes no body."));
    } else {
        Value::Null
    };
    Ok(Admitted { body, index, fault })
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn is_user_id(s: &str) -> bool {
    s.starts_with('@') && s.contains(':') && s.len() > 3
}

fn not_in_room(room: &str) -> Response {
    matrix_error(
        403,
        "M_FORBIDDEN",
        &format!("User {BOT_USER} not in room {room}"),
    )
}

fn joined(st: &FakeState, room: &str) -> bool {
    st.rooms
        .get(room)
        .and_then(|r| r.members.get(BOT_USER))
        .is_some_and(|m| m == "join")
}

// ---------------------------------------------------------------------------------
// /sync

async fn sync(
    State(s): State<Shared>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query_map(raw.as_deref());
    let adm = match admit(
        &s,
        &Method::GET,
        "/sync".into(),
        query.clone(),
        &headers,
        &body,
    ) {
        Ok(a) => a,
        Err(r) => return r,
    };
    // The filter: an inline JSON object (perch does not upload filters).
    let filter: Value = match query.get("filter") {
        None => json!({}),
        Some(f) => match serde_json::from_str::<Value>(f) {
            Ok(v) if v.is_object() => v,
            _ => return matrix_error(400, "M_INVALID_PARAM", "filter is not a JSON object"),
        },
    };
    let timeout_ms: u64 = match query.get("timeout") {
        None => 0,
        Some(t) => match t.parse() {
            Ok(n) => n,
            Err(_) => return matrix_error(400, "M_INVALID_PARAM", "timeout is not an integer"),
        },
    };
    let since = match query.get("since") {
        None => None,
        Some(t) => match position(t) {
            Some(n) if n <= s.lock().unwrap().log.len() => Some(n),
            _ => return matrix_error(400, "M_UNKNOWN", &format!("Unknown since token {t}")),
        },
    };
    let types: Option<Vec<String>> = filter
        .pointer("/room/timeline/types")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        });
    let limit = filter
        .pointer("/room/timeline/limit")
        .and_then(Value::as_u64)
        .unwrap_or(10) as usize;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(60_000));
    // Long poll: answer at once when there is news (or on the first sync), else when
    // news arrives or the timeout passes.
    let answer = loop {
        let answer = {
            let st = s.lock().unwrap();
            sync_answer(&st, since, types.as_deref(), limit)
        };
        let news = answer["rooms"]["join"]
            .as_object()
            .is_some_and(|j| !j.is_empty())
            || answer["rooms"]["invite"]
                .as_object()
                .is_some_and(|i| !i.is_empty());
        if since.is_none() || news || Instant::now() >= deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let fault = {
        let mut st = s.lock().unwrap();
        let fault = st.sync_faults.pop_front();
        st.calls[adm.index].sync_fault = fault;
        fault
    };
    match fault {
        None => axum::Json(answer).into_response(),
        Some(SyncFault::NoNextBatch) => {
            let mut a = answer;
            if let Some(o) = a.as_object_mut() {
                o.remove("next_batch");
            }
            axum::Json(a).into_response()
        }
        Some(SyncFault::Truncated) => {
            let text = answer.to_string();
            (
                [("content-type", "application/json")],
                text[..text.len() / 2].to_string(),
            )
                .into_response()
        }
    }
}

/// The `/sync` answer from log position `since` (None: an initial sync, which carries
/// the pending invitations and each joined room's latest timeline events, history).
fn sync_answer(
    st: &FakeState,
    since: Option<usize>,
    types: Option<&[String]>,
    limit: usize,
) -> Value {
    let mut join: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut invite: BTreeMap<String, String> = BTreeMap::new();
    let from = since.unwrap_or(0);
    if since.is_none() {
        for (id, r) in &st.rooms {
            if r.members.get(BOT_USER).is_some_and(|m| m == "invite") {
                let inviter = r
                    .members
                    .iter()
                    .find(|(_, m)| *m == "join")
                    .map(|(u, _)| u.clone())
                    .unwrap_or_default();
                invite.insert(id.clone(), inviter);
            }
        }
    }
    for entry in &st.log[from..] {
        match entry {
            Entry::Invite { room, inviter } => {
                if st
                    .rooms
                    .get(room)
                    .and_then(|r| r.members.get(BOT_USER))
                    .is_some_and(|m| m == "invite")
                {
                    invite.insert(room.clone(), inviter.clone());
                }
            }
            Entry::Timeline { room, event } => {
                let kind = event["type"].as_str().unwrap_or_default();
                if joined(st, room) && types.is_none_or(|t| t.iter().any(|k| k == kind)) {
                    let mut e = event.clone();
                    let age = chrono::Utc::now().timestamp_millis()
                        - e["origin_server_ts"].as_i64().unwrap_or_default();
                    if e.is_object() {
                        e["unsigned"] = json!({ "age": age.max(0) });
                    }
                    join.entry(room.clone()).or_default().push(e);
                }
            }
        }
    }
    let join: serde_json::Map<String, Value> = join
        .into_iter()
        .map(|(room, events)| {
            let limited = events.len() > limit;
            let events = events[events.len().saturating_sub(limit)..].to_vec();
            (
                room,
                json!({
                    "timeline": { "events": events, "limited": limited, "prev_batch": format!("p{from}") },
                    "state": { "events": [] },
                    "ephemeral": { "events": [] },
                    "account_data": { "events": [] },
                    "unread_notifications": { "highlight_count": 0, "notification_count": 0 },
                }),
            )
        })
        .collect();
    let invite: serde_json::Map<String, Value> = invite
        .into_iter()
        .map(|(room, inviter)| {
            let is_direct = st.rooms.get(&room).is_some_and(|r| r.is_direct);
            let member = json!({ "type": "m.room.member", "state_key": BOT_USER, "sender": inviter,
                                 "content": { "membership": "invite", "is_direct": is_direct } });
            (room, json!({ "invite_state": { "events": [member] } }))
        })
        .collect();
    json!({
        "next_batch": format!("s{}", st.log.len()),
        "rooms": { "join": join, "invite": invite, "leave": {}, "knock": {} },
        "presence": { "events": [] },
        "account_data": { "events": [] },
        "to_device": { "events": [] },
        "device_lists": { "changed": [], "left": [] },
        "device_one_time_keys_count": {},
    })
}

// ---------------------------------------------------------------------------------
// Sending

/// A transaction id seen before on this path from this token: its event id.
fn txn_event(st: &FakeState, scope: &str, txn: &str) -> Option<String> {
    st.txns
        .get(&(ACCESS_TOKEN.to_string(), scope.to_string(), txn.to_string()))
        .cloned()
}

fn new_event(
    st: &mut FakeState,
    room: &str,
    kind: &str,
    content: &Value,
    txn: &str,
    scope: &str,
) -> String {
    st.seq += 1;
    let event_id = format!("$ev{}-{}", st.seq, SERVER_NAME);
    st.txns.insert(
        (ACCESS_TOKEN.to_string(), scope.to_string(), txn.to_string()),
        event_id.clone(),
    );
    if let Some(r) = st.rooms.get_mut(room) {
        r.events
            .insert(event_id.clone(), (BOT_USER.into(), kind.into()));
    }
    st.sent.push(Sent {
        room: room.into(),
        event_type: kind.into(),
        event_id: event_id.clone(),
        txn: txn.into(),
        content: content.clone(),
    });
    // The bot's own events come back in its sync, as on a real server.
    st.log.push(Entry::Timeline {
        room: room.into(),
        event: json!({ "type": kind, "event_id": event_id, "sender": BOT_USER,
                       "origin_server_ts": chrono::Utc::now().timestamp_millis(),
                       "content": content }),
    });
    event_id
}

/// Why `content` is not a valid event of `kind` in `room`, or `None`.
fn invalid_content(st: &FakeState, room: &str, kind: &str, content: &Value) -> Option<String> {
    let r = st.rooms.get(room)?;
    let rel = content.get("m.relates_to");
    match kind {
        "m.room.message" => {
            if str_field(content, "msgtype").is_none() || str_field(content, "body").is_none() {
                return Some("m.room.message needs string msgtype and body".into());
            }
            if content.get("format").is_some()
                && (str_field(content, "format") != Some("org.matrix.custom.html")
                    || str_field(content, "formatted_body").is_none())
            {
                return Some("format must be org.matrix.custom.html with a formatted_body".into());
            }
            if let Some(m) = content.get("m.mentions")
                && !m.get("user_ids").is_none_or(|u| {
                    u.as_array()
                        .is_some_and(|a| a.iter().all(|i| i.as_str().is_some_and(is_user_id)))
                })
            {
                return Some("m.mentions.user_ids must be a list of user ids".into());
            }
            if let Some(rel) = rel {
                if let Some(parent) = rel.pointer("/m.in_reply_to/event_id") {
                    let known = parent.as_str().is_some_and(|p| r.events.contains_key(p));
                    if !known {
                        return Some(format!("m.in_reply_to names no event of {room}: {parent}"));
                    }
                }
                if str_field(rel, "rel_type") == Some("m.replace") {
                    let target = str_field(rel, "event_id").unwrap_or_default();
                    match r.events.get(target) {
                        Some((sender, _)) if sender == BOT_USER => {}
                        Some(_) => return Some("an edit of someone else's event".into()),
                        None => return Some(format!("m.replace names no event of {room}")),
                    }
                    let new = content.get("m.new_content");
                    if !new.is_some_and(|n| {
                        str_field(n, "msgtype").is_some() && str_field(n, "body").is_some()
                    }) {
                        return Some("an edit needs m.new_content with msgtype and body".into());
                    }
                }
            }
            None
        }
        "m.reaction" => {
            let Some(rel) = rel else {
                return Some("a reaction needs m.relates_to".into());
            };
            if str_field(rel, "rel_type") != Some("m.annotation") || str_field(rel, "key").is_none()
            {
                return Some("a reaction is an m.annotation with a key".into());
            }
            let target = str_field(rel, "event_id").unwrap_or_default();
            if !r.events.contains_key(target) {
                return Some(format!("the reaction names no event of {room}"));
            }
            None
        }
        _ => None,
    }
}

async fn send(
    State(s): State<Shared>,
    Path((room, kind, txn)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/rooms/{room}/send/{kind}/{txn}");
    let adm = match admit(&s, &Method::PUT, path, BTreeMap::new(), &headers, &body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut st = s.lock().unwrap();
    st.calls[adm.index].event_type = Some(kind.clone());
    st.calls[adm.index].txn = Some(txn.clone());
    let scope = format!("/rooms/{room}/send/{kind}");
    if let Some(first) = txn_event(&st, &scope, &txn) {
        st.calls[adm.index].repeated_txn = true;
        return axum::Json(json!({ "event_id": first })).into_response();
    }
    if !joined(&st, &room) {
        return not_in_room(&room);
    }
    if let Some(why) = invalid_content(&st, &room, &kind, &adm.body) {
        return matrix_error(400, "M_BAD_JSON", &why);
    }
    if kind == "m.reaction" {
        let rel = &adm.body["m.relates_to"];
        let a = (
            BOT_USER.to_string(),
            rel["event_id"].as_str().unwrap_or_default().to_string(),
            rel["key"].as_str().unwrap_or_default().to_string(),
        );
        let r = st.rooms.get_mut(&room).expect("joined room exists");
        if r.annotations.contains(&a) {
            return matrix_error(
                400,
                "M_DUPLICATE_ANNOTATION",
                "Can't send same reaction twice",
            );
        }
        r.annotations.push(a);
    }
    let event_id = new_event(&mut st, &room, &kind, &adm.body, &txn, &scope);
    axum::Json(json!({ "event_id": event_id })).into_response()
}

async fn redact(
    State(s): State<Shared>,
    Path((room, event_id, txn)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/rooms/{room}/redact/{event_id}/{txn}");
    let adm = match admit(&s, &Method::PUT, path, BTreeMap::new(), &headers, &body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut st = s.lock().unwrap();
    st.calls[adm.index].event_type = Some("m.room.redaction".into());
    st.calls[adm.index].txn = Some(txn.clone());
    let scope = format!("/rooms/{room}/redact/{event_id}");
    if let Some(first) = txn_event(&st, &scope, &txn) {
        st.calls[adm.index].repeated_txn = true;
        return axum::Json(json!({ "event_id": first })).into_response();
    }
    if !joined(&st, &room) {
        return not_in_room(&room);
    }
    if !st.rooms[&room].events.contains_key(&event_id) {
        return matrix_error(404, "M_NOT_FOUND", "Event not found");
    }
    if adm.body.get("reason").is_some_and(|r| !r.is_string()) {
        return matrix_error(400, "M_BAD_JSON", "reason must be a string");
    }
    let content = json!({ "redacts": event_id });
    let id = new_event(&mut st, &room, "m.room.redaction", &content, &txn, &scope);
    axum::Json(json!({ "event_id": id })).into_response()
}

// ---------------------------------------------------------------------------------
// Rooms

async fn create_room(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let adm = match admit(
        &s,
        &Method::POST,
        "/createRoom".into(),
        BTreeMap::new(),
        &headers,
        &body,
    ) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let b = &adm.body;
    for key in ["name", "topic", "room_alias_name"] {
        if b.get(key).is_some_and(|v| !v.is_string()) {
            return matrix_error(400, "M_BAD_JSON", &format!("{key} must be a string"));
        }
    }
    if let Some(p) = b.get("preset")
        && !matches!(
            p.as_str(),
            Some("private_chat" | "public_chat" | "trusted_private_chat")
        )
    {
        return matrix_error(400, "M_BAD_JSON", "preset is not a known preset");
    }
    if b.get("is_direct").is_some_and(|v| !v.is_boolean()) {
        return matrix_error(400, "M_BAD_JSON", "is_direct must be a boolean");
    }
    let invites: Vec<String> = match b.get("invite") {
        None => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(|u| u.as_str().is_some_and(is_user_id)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Some(_) => {
            return matrix_error(400, "M_INVALID_PARAM", "invite must be a list of user ids");
        }
    };
    let mut st = s.lock().unwrap();
    st.seq += 1;
    let room_id = format!("!room{}:{SERVER_NAME}", st.seq);
    let mut room = Room {
        name: str_field(b, "name").map(String::from),
        topic: str_field(b, "topic").map(String::from),
        is_direct: b.get("is_direct").and_then(Value::as_bool).unwrap_or(false),
        power_levels: power_levels(BOT_USER),
        ..Default::default()
    };
    room.members.insert(BOT_USER.into(), "join".into());
    for u in invites {
        room.members.insert(u, "invite".into());
    }
    st.rooms.insert(room_id.clone(), room);
    axum::Json(json!({ "room_id": room_id })).into_response()
}

async fn invite(
    State(s): State<Shared>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/rooms/{room}/invite");
    let adm = match admit(&s, &Method::POST, path, BTreeMap::new(), &headers, &body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(user) = str_field(&adm.body, "user_id") else {
        return matrix_error(400, "M_BAD_JSON", "Missing user_id");
    };
    if !is_user_id(user) {
        return matrix_error(400, "M_INVALID_PARAM", "user_id is not a user id");
    }
    let mut st = s.lock().unwrap();
    if !joined(&st, &room) {
        return not_in_room(&room);
    }
    if !st.users.iter().any(|u| u == user) {
        return matrix_error(404, "M_NOT_FOUND", &format!("Unknown user {user}"));
    }
    let r = st.rooms.get_mut(&room).expect("joined room exists");
    if r.members.get(user).is_some_and(|m| m == "join") {
        return matrix_error(
            403,
            "M_FORBIDDEN",
            &format!("{user} is already in the room."),
        );
    }
    r.members.insert(user.into(), "invite".into());
    axum::Json(json!({})).into_response()
}

async fn join(
    State(s): State<Shared>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/join/{room}");
    if let Err(r) = admit(&s, &Method::POST, path, BTreeMap::new(), &headers, &body) {
        return r;
    }
    let mut st = s.lock().unwrap();
    let Some(r) = st.rooms.get_mut(&room) else {
        return matrix_error(404, "M_NOT_FOUND", "No known servers");
    };
    match r.members.get(BOT_USER).map(String::as_str) {
        Some("invite") | Some("join") => {
            r.members.insert(BOT_USER.into(), "join".into());
            axum::Json(json!({ "room_id": room })).into_response()
        }
        _ => matrix_error(403, "M_FORBIDDEN", "You are not invited to this room."),
    }
}

async fn room_state(
    State(s): State<Shared>,
    Path((room, kind)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/rooms/{room}/state/{kind}/");
    let adm = match admit(&s, &method, path, BTreeMap::new(), &headers, &body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut st = s.lock().unwrap();
    if !joined(&st, &room) {
        return not_in_room(&room);
    }
    if kind != "m.room.power_levels" {
        return matrix_error(404, "M_NOT_FOUND", "Event not found.");
    }
    let r = st.rooms.get_mut(&room).expect("joined room exists");
    match method {
        Method::GET => axum::Json(r.power_levels.clone()).into_response(),
        Method::PUT => {
            let mine = r.power_levels["users"][BOT_USER].as_i64().unwrap_or(0);
            if mine < 100 {
                return matrix_error(403, "M_FORBIDDEN", "You don't have permission");
            }
            if !adm.body.get("users").is_none_or(Value::is_object) {
                return matrix_error(400, "M_BAD_JSON", "users must be an object");
            }
            r.power_levels = adm.body;
            st.seq += 1;
            let id = format!("$state{}-{SERVER_NAME}", st.seq);
            axum::Json(json!({ "event_id": id })).into_response()
        }
        _ => matrix_error(405, "M_UNRECOGNIZED", "Unrecognized request"),
    }
}

async fn whoami(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admit(
        &s,
        &Method::GET,
        "/account/whoami".into(),
        BTreeMap::new(),
        &headers,
        &body,
    ) {
        return r;
    }
    axum::Json(json!({ "user_id": BOT_USER, "device_id": DEVICE_ID, "is_guest": false }))
        .into_response()
}
