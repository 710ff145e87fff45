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
//!
//! Each `/chat/api` handler's `#[utoipa::path]` is its entry in perch's OpenAPI document
//! (`crate::server::openapi`); `routes!` mounts handler and entry together.
//!
//! Who is asking comes from `crate::auth` (the `Viewer` its middleware sets). Signed in
//! (`local` or `proxy` mode), the server decides the author of every post and click:
//! an `author` naming someone else is refused; direct rooms and private groups are
//! their members' only, in the API and over SSE. In `dev` mode (loopback only) the
//! browser's `author` is taken as today, and the page says so.

use super::{
    ChatError, DEFAULT_ROOM, Inner, MAX_ROOM_NAME_CHARS, Room, check_author, message_view,
};
use crate::auth::routes::{author_of, not_signed_in};
use crate::auth::{AuthMode, Viewer};
use crate::event::CardAction;
use crate::server::ApiError;
use crate::server::openapi::ErrorBody;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");

type S = Arc<Inner>;

pub fn routes(inner: S) -> axum::Router {
    let (api, _) = api_routes().split_for_parts();
    axum::Router::new()
        .route("/", get(index))
        .route("/chat/app.js", get(app_js))
        .route("/chat/style.css", get(style_css))
        .merge(api)
        .with_state(inner)
}

/// The JSON API under `/chat/api`, each route with its OpenAPI entry.
fn api_routes() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(list_rooms, create_room))
        .routes(routes!(list_messages, post_message))
        .routes(routes!(post_action))
        .routes(routes!(bots))
        .routes(routes!(stream))
}

/// The web chat API's part of perch's OpenAPI document.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
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

/// The refusals every web chat call documents (its OpenAPI entry only: never built).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ChatRefusals {
    #[response(status = 401, description = "not signed in (signed-in modes)")]
    NotSignedIn(ErrorBody),
    #[response(status = 503, description = "the store cannot be read or written")]
    StoreDown(ErrorBody),
}

/// A web chat write's body that is not JSON (its OpenAPI entry only: never built).
#[derive(utoipa::IntoResponses)]
#[response(status = 415, description = "not `Content-Type: application/json`")]
#[allow(dead_code)]
struct NotJson(ErrorBody);

fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::from(ChatError::Store(e))
}

/// Refuse a viewer who may not read the web chat at all (signed-in modes, nobody signed in).
fn may_chat(viewer: &Viewer) -> Result<(), ApiError> {
    match viewer {
        Viewer::Dev | Viewer::User(_) => Ok(()),
        Viewer::Anonymous => Err(not_signed_in()),
    }
}

/// The room `id` if the viewer may read and write it: 404 for none, 403 for a direct
/// room or private group the signed-in person is not a member of.
async fn room_for(s: &Inner, viewer: &Viewer, id: &str) -> Result<Room, ApiError> {
    may_chat(viewer)?;
    let room = s
        .room(id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no room `{id}`")))?;
    if let Viewer::User(me) = viewer
        && !room.open_to(&me.name)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("room `{id}` is open to its members only"),
        ));
    }
    Ok(room)
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

/// The page. Signed-in modes send a stranger to sign in first.
async fn index(State(s): State<S>, Extension(viewer): Extension<Viewer>) -> Response {
    if matches!(viewer, Viewer::Anonymous)
        && matches!(s.env.auth_mode, AuthMode::Local | AuthMode::Feishu)
    {
        return axum::response::Redirect::to("/login?next=/").into_response();
    }
    Html(INDEX_HTML.replace("{{TITLE}}", &crate::cards::markdown::escape_html(&s.title)))
        .into_response()
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RoomsQuery {
    /// Dev mode: whose direct rooms to include (signed in, the person signed in).
    me: Option<String>,
}

#[utoipa::path(
    get,
    path = "/chat/api/rooms",
    tag = "web chat",
    params(RoomsQuery),
    responses(
        (status = 200, description = "`{\"rooms\": [...]}`: the rooms the asker may see", body = Object),
        (status = 400, description = "a bad query", body = ErrorBody),
        ChatRefusals,
    )
)]
async fn list_rooms(
    State(s): State<S>,
    Extension(viewer): Extension<Viewer>,
    q: Result<Query<RoomsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    may_chat(&viewer)?;
    let q = query(q)?;
    // Signed in, `me` is the person signed in, whatever the query says.
    let me = match &viewer {
        Viewer::User(i) => Some(i.name.clone()),
        _ => q.me,
    };
    let mut out = Vec::new();
    for room in s.rooms().await.map_err(store_err)? {
        // In dev mode this only keeps the list tidy; signed in, it is access control.
        if room.members_only() && !me.as_ref().is_some_and(|me| room.open_to(me)) {
            continue;
        }
        out.push(s.room_view(&room).await.map_err(store_err)?);
    }
    Ok(Json(json!({ "rooms": out })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRoom {
    name: String,
    #[serde(default)]
    author: Option<String>,
    /// A private group: only its members (at first, its creator) read and write it.
    #[serde(default)]
    private: bool,
}

/// Create a room, or answer the existing one with that id (opening `#general` twice
/// does not make `#general-2`).
#[utoipa::path(
    post,
    path = "/chat/api/rooms",
    tag = "web chat",
    request_body(content = NewRoom, content_type = "application/json"),
    responses(
        (status = 200, description = "the existing room of that name", body = Object),
        (status = 201, description = "the new room (durable)", body = Object),
        (status = 400, description = "malformed JSON, a missing field, a bad name", body = ErrorBody),
        (status = 403, description = "an author other than the person signed in", body = ErrorBody),
        NotJson,
        ChatRefusals,
    )
)]
async fn create_room(
    State(s): State<S>,
    Extension(viewer): Extension<Viewer>,
    b: Result<Json<NewRoom>, JsonRejection>,
) -> Result<Response, ApiError> {
    may_chat(&viewer)?;
    let Json(b) = b?;
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
    let author = match (&viewer, b.author.as_deref()) {
        (Viewer::Dev, None) => None,
        (_, sent) => Some(check_author(&author_of(&viewer, sent)?, s.bots())?),
    };
    if b.private && author.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a private room needs an author: its first member",
        ));
    }
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
            Some(existing)
                if !existing.direct
                    && super::same_room_name(&existing.name, name)
                    && author.as_ref().is_none_or(|a| existing.open_to(a)) =>
            {
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
        .create_room(name, false, b.private, members, author)
        .await
        .map_err(store_err)?;
    // Durable before the 201, like everything the API acknowledges. (A room is not an
    // event: the journal's cheaper group commit does not cover it.)
    s.env.journal.store().flush().await.map_err(store_err)?;
    let view = s.room_view(&room).await.map_err(store_err)?;
    s.broadcast("room", view.clone(), &room);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Only messages after this message id.
    after: Option<String>,
    /// How many at most (clamped to 1..=1000).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/chat/api/rooms/{room}/messages",
    tag = "web chat",
    params(("room" = String, Path, description = "A room id"), HistoryQuery),
    responses(
        (status = 200, description = "`{room, messages: [...]}`: history, oldest first", body = Object),
        (status = 400, description = "a bad `after` or `limit`", body = ErrorBody),
        (status = 403, description = "a direct room or private group you are not a member of", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        ChatRefusals,
    )
)]
async fn list_messages(
    State(s): State<S>,
    Extension(viewer): Extension<Viewer>,
    Path(room): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    room_for(&s, &viewer, &room).await?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let msgs = s
        .history(&room, q.after.as_deref(), limit)
        .await
        .map_err(store_err)?;
    Ok(Json(
        json!({ "room": room, "messages": msgs.iter().map(message_view).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    /// Dev mode only; signed in, the server knows who posts.
    #[serde(default)]
    author: Option<String>,
    text: String,
    client_id: String,
}

#[utoipa::path(
    post,
    path = "/chat/api/rooms/{room}/messages",
    tag = "web chat",
    params(("room" = String, Path, description = "A room id")),
    request_body(content = NewMessage, content_type = "application/json"),
    responses(
        (status = 200, description = "the message as stored (journaled); `duplicate` when `client_id` was posted before", body = Object),
        (status = 400, description = "malformed JSON, a missing field, an empty or too long text", body = ErrorBody),
        (status = 403, description = "an author other than the person signed in, or a room you are not a member of", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        NotJson,
        ChatRefusals,
    )
)]
async fn post_message(
    State(s): State<S>,
    Extension(viewer): Extension<Viewer>,
    Path(room): Path<String>,
    b: Result<Json<NewMessage>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    may_chat(&viewer)?;
    let Json(b) = b?;
    let author = author_of(&viewer, b.author.as_deref())?;
    room_for(&s, &viewer, &room).await?;
    let (msg, duplicate) = s.post(&room, &author, &b.text, &b.client_id).await?;
    let notice = s.notice_for(&b.text, &author).await;
    let mut v = message_view(&msg);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("duplicate".into(), json!(duplicate));
        if let Some(notice) = notice {
            obj.insert("notice".into(), json!(notice));
        }
    }
    Ok(Json(v))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ActionValue {
    bot: String,
    action: String,
    #[serde(default)]
    args: Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAction {
    message_id: String,
    /// The button's `data-action` value, parsed.
    action: ActionValue,
    /// Dev mode only; signed in, the server knows who clicked.
    #[serde(default)]
    author: Option<String>,
    client_id: String,
}

#[utoipa::path(
    post,
    path = "/chat/api/rooms/{room}/actions",
    tag = "web chat",
    params(("room" = String, Path, description = "A room id")),
    request_body(content = NewAction, content_type = "application/json"),
    responses(
        (status = 200, description = "`{event_id, duplicate, answered, toast, card_updated}`", body = Object),
        (status = 400, description = "malformed JSON, a missing field, a button not on that card", body = ErrorBody),
        (status = 403, description = "an author other than the person signed in, or a room you are not a member of", body = ErrorBody),
        (status = 404, description = "no such room or message", body = ErrorBody),
        NotJson,
        ChatRefusals,
    )
)]
async fn post_action(
    State(s): State<S>,
    Extension(viewer): Extension<Viewer>,
    Path(room): Path<String>,
    b: Result<Json<NewAction>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    room_for(&s, &viewer, &room).await?;
    let Json(b) = b?;
    let author = author_of(&viewer, b.author.as_deref())?;
    let action = CardAction {
        bot: b.action.bot,
        action: b.action.action,
        args: b.action.args,
        message_id: None,
    };
    let (event_id, duplicate, answer) = s
        .card_action(&room, &author, &b.client_id, &b.message_id, action)
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

#[utoipa::path(
    get,
    path = "/chat/api/bots",
    tag = "web chat",
    operation_id = "chat_bots",
    responses(
        (status = 200, description = "`{bots: [{name}], default_room}`, for @mention autocomplete", body = Object),
        ChatRefusals,
    )
)]
async fn bots(
    State(s): State<S>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Json<Value>, ApiError> {
    may_chat(&viewer)?;
    let mut names = s.bots().to_vec();
    names.sort();
    Ok(Json(
        json!({ "bots": names.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>(), "default_room": DEFAULT_ROOM }),
    ))
}

/// How long one SSE response lasts. Browsers reconnect by themselves (after `retry`)
/// and fetch what they missed, so a cap costs nothing and bounds how long a graceful
/// shutdown can wait for an open tab.
const STREAM_LIFETIME: Duration = Duration::from_secs(60);

/// Live updates. A browser that falls too far behind gets `resync` and catches up.
/// The stream ends on SIGINT/SIGTERM (what `perch serve` stops on), so an open tab
/// never holds up shutdown, and otherwise after `STREAM_LIFETIME`.
/// Signed in, a person only hears of direct rooms and private groups they are in.
#[utoipa::path(
    get,
    path = "/chat/api/stream",
    tag = "web chat",
    operation_id = "chat_stream",
    responses(
        (status = 200, description = "Server-sent events: `hello`, then `message`, `update`, `room`, `resync`", content_type = "text/event-stream", body = String),
        ChatRefusals,
    )
)]
async fn stream(
    State(s): State<S>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    may_chat(&viewer)?;
    let me = viewer.user().map(|i| i.name.clone());
    let rx = s.live.subscribe();
    let events = BroadcastStream::new(rx).filter_map(move |item| {
        let out = match item {
            Ok(live) => {
                let heard = match (&live.audience, &me) {
                    (None, _) => true,
                    (Some(members), Some(me)) => members.iter().any(|m| m == me),
                    // Dev mode: nobody is known, so everything goes (as before).
                    (Some(_), None) => true,
                };
                heard.then(|| {
                    Ok(SseEvent::default()
                        .event(live.kind)
                        .data(live.data.to_string()))
                })
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(Ok(SseEvent::default()
                .event("resync")
                .data(json!({ "missed": n }).to_string()))),
        };
        futures::future::ready(out)
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
    Ok(Sse::new(hello.chain(events).take_until(end)).keep_alive(KeepAlive::default()))
}
