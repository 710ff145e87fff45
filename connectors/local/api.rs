//! The web chat's HTTP side: the page itself (`/`, `/chat/app.js`, `/chat/style.css`,
//! compiled into the binary) and its JSON API under `/chat/api`:
//!
//! | method and path                          | what                                        |
//! |------------------------------------------|---------------------------------------------|
//! | `GET  /chat/api/rooms[?me=<name>]`        | rooms (direct rooms only for `me`)          |
//! | `POST /chat/api/rooms {name, author?}`    | create a room (or get the one of that name) |
//! | `GET  /chat/api/rooms/{room}/messages[?after=<id>&limit=<n>]` | history, oldest first |
//! | `POST /chat/api/rooms/{room}/messages {author, text, client_id}` | post (→ journal) |
//! | `POST /chat/api/rooms/{room}/actions {message_id, action, author, client_id}` | card button (→ journal) |
//! | `GET  /chat/api/bots`                     | bot names, for @mention autocomplete        |
//! | `GET  /chat/api/stream`                   | SSE: `message`, `update`, `room`, `resync`  |
//!
//! Every refusal is a 4xx `{"error": "<one line>"}` and stores nothing.

use super::{ChatError, DEFAULT_ROOM, Inner, MAX_ROOM_NAME_CHARS, check_author, message_view};
use crate::event::CardAction;
use crate::server::ApiError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");

type S = Arc<Inner>;

pub fn routes(inner: S) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route("/chat/app.js", get(app_js))
        .route("/chat/style.css", get(style_css))
        .route("/chat/api/rooms", get(list_rooms).post(create_room))
        .route(
            "/chat/api/rooms/{room}/messages",
            get(list_messages).post(post_message),
        )
        .route(
            "/chat/api/rooms/{room}/actions",
            axum::routing::post(post_action),
        )
        .route("/chat/api/bots", get(bots))
        .route("/chat/api/stream", get(stream))
        .with_state(inner)
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::BadInput(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            ChatError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            ChatError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            ChatError::Store(e) => ApiError::internal("web chat: store error", e),
            ChatError::Journal(e) if e.status().is_client_error() => {
                ApiError::new(e.status(), e.to_string())
            }
            ChatError::Journal(e) => ApiError::internal("web chat: could not store the message", e),
        }
    }
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::from(ChatError::Store(e))
}

/// A JSON body or a one-line 4xx (malformed JSON, a missing field, wrong content type,
/// too large).
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|r| {
        let status = r.status();
        let reason = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "body is larger than the configured limit (server.body_limit)".to_string()
            }
            _ => r
                .body_text()
                .lines()
                .next()
                .unwrap_or("bad JSON body")
                .to_string(),
        };
        ApiError::new(status, reason)
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|r| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            r.body_text()
                .lines()
                .next()
                .unwrap_or("bad query")
                .to_string(),
        )
    })
}

async fn index(State(s): State<S>) -> Html<String> {
    Html(INDEX_HTML.replace("{{TITLE}}", &crate::cards::markdown::escape_html(&s.title)))
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

/// The page's own styles followed by the card renderer's (`perch-card-*` classes), so
/// cards look the same wherever the HTML renderer's output is shown.
async fn style_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        format!(
            "{STYLE_CSS}\n/* cards (perch::cards::HTML_CSS) */\n{}",
            crate::cards::HTML_CSS
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct RoomsQuery {
    me: Option<String>,
}

async fn list_rooms(
    State(s): State<S>,
    q: Result<Query<RoomsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let mut out = Vec::new();
    for room in s.rooms().await.map_err(store_err)? {
        // Direct rooms are one person's; there are no accounts, so this only keeps
        // the list tidy, it is not access control.
        if room.direct
            && !q
                .me
                .as_ref()
                .is_some_and(|me| room.members.iter().any(|m| m == me))
        {
            continue;
        }
        out.push(s.room_view(&room).await.map_err(store_err)?);
    }
    Ok(Json(json!({ "rooms": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoom {
    name: String,
    #[serde(default)]
    author: Option<String>,
}

/// Create a room, or answer the existing one with that id (opening `#general` twice
/// does not make `#general-2`).
async fn create_room(
    State(s): State<S>,
    b: Result<Json<NewRoom>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let name = super::normalise_name("room name", &b.name)?;
    let name = name.as_str();
    if name.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "room name is empty"));
    }
    if name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("room name must be 1 to {MAX_ROOM_NAME_CHARS} characters"),
        ));
    }
    if !name.chars().any(char::is_alphanumeric) {
        // Its id would be a made-up one (`.`, `/` and `..` would all be `room`).
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "room name needs at least one letter or digit",
        ));
    }
    let author = match b.author.as_deref() {
        Some(a) => Some(check_author(a, s.bots())?),
        None => None,
    };
    // The room of this name if there is one: under its id, or under `id-2`, `id-3`, …
    // where a different name with the same id pushed it. A different name is never
    // answered with another name's room.
    let id = super::slug(name);
    for n in 1.. {
        let candidate = if n == 1 {
            id.clone()
        } else {
            format!("{id}-{n}")
        };
        match s.room(&candidate).await.map_err(store_err)? {
            Some(existing) if !existing.direct && super::same_room_name(&existing.name, name) => {
                return Ok((
                    StatusCode::OK,
                    Json(s.room_view(&existing).await.map_err(store_err)?),
                )
                    .into_response());
            }
            Some(_) => continue,
            None => break,
        }
    }
    let members = author.iter().cloned().collect();
    let room = s
        .create_room(name, false, members, author)
        .await
        .map_err(store_err)?;
    // Durable before the 201, like everything the API acknowledges. (A room is not an
    // event: the journal's cheaper group commit does not cover it.)
    s.env.journal.store().flush().await.map_err(store_err)?;
    let view = s.room_view(&room).await.map_err(store_err)?;
    s.broadcast("room", view.clone());
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
struct HistoryQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_messages(
    State(s): State<S>,
    Path(room): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    if s.room(&room).await.map_err(store_err)?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no room `{room}`"),
        ));
    }
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let msgs = s
        .history(&room, q.after.as_deref(), limit)
        .await
        .map_err(store_err)?;
    Ok(Json(
        json!({ "room": room, "messages": msgs.iter().map(message_view).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    author: String,
    text: String,
    client_id: String,
}

async fn post_message(
    State(s): State<S>,
    Path(room): Path<String>,
    b: Result<Json<NewMessage>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let (msg, duplicate) = s.post(&room, &b.author, &b.text, &b.client_id).await?;
    let mut v = message_view(&msg);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("duplicate".into(), json!(duplicate));
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionValue {
    bot: String,
    action: String,
    #[serde(default)]
    args: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAction {
    message_id: String,
    /// The button's `data-action` value, parsed.
    action: ActionValue,
    author: String,
    client_id: String,
}

async fn post_action(
    State(s): State<S>,
    Path(room): Path<String>,
    b: Result<Json<NewAction>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let action = CardAction {
        bot: b.action.bot,
        action: b.action.action,
        args: b.action.args,
        message_id: None,
    };
    let (event_id, duplicate, answer) = s
        .card_action(&room, &b.author, &b.client_id, &b.message_id, action)
        .await?;
    let answer = answer.as_ref();
    Ok(Json(json!({
        "event_id": event_id,
        "duplicate": duplicate,
        // Whether the bot answered within the window; the browser re-enables the button
        // when it did and the card is not being replaced.
        "answered": answer.is_some(),
        "toast": answer.and_then(|a| a.toast.as_ref()),
        "card_updated": answer.is_some_and(|a| a.card.is_some()),
    })))
}

async fn bots(State(s): State<S>) -> Json<Value> {
    let mut names = s.bots().to_vec();
    names.sort();
    Json(
        json!({ "bots": names.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>(), "default_room": DEFAULT_ROOM }),
    )
}

/// How long one SSE response lasts. Browsers reconnect by themselves (after `retry`)
/// and fetch what they missed, so a cap costs nothing and bounds how long a graceful
/// shutdown can wait for an open tab.
const STREAM_LIFETIME: Duration = Duration::from_secs(60);

/// Live updates. A browser that falls too far behind gets `resync` and catches up.
/// The stream ends on SIGINT/SIGTERM (what `perch serve` stops on), so an open tab
/// never holds up shutdown, and otherwise after `STREAM_LIFETIME`.
async fn stream(State(s): State<S>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.live.subscribe();
    let events = BroadcastStream::new(rx).map(|item| {
        Ok(match item {
            Ok(live) => SseEvent::default()
                .event(live.kind)
                .data(live.data.to_string()),
            Err(BroadcastStreamRecvError::Lagged(n)) => SseEvent::default()
                .event("resync")
                .data(json!({ "missed": n }).to_string()),
        })
    });
    // A first event so clients (and tests) know the stream is live.
    let hello = futures::stream::once(async {
        Ok(SseEvent::default()
            .event("hello")
            .retry(Duration::from_secs(1))
            .data("{}"))
    });
    let end = Box::pin(async {
        tokio::select! {
            _ = tokio::time::sleep(STREAM_LIFETIME) => {}
            _ = crate::server::stop_signal() => {}
        }
    });
    Sse::new(hello.chain(events).take_until(end)).keep_alive(KeepAlive::default())
}
