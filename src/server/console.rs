//! The operators' console at `/console`: one page of plain HTML, CSS and JS compiled
//! into the binary (no build step, nothing from the internet). It reads the admin API
//! (`/api/...`) with the signed-in admin's session and CSRF token, so it shows exactly
//! what scripts see: events with their fate and deliveries, the outbox and dead letters
//! (with replay), schedules, connectors and the card studio.
//!
//! Also what the console makes happen: its events come from the reserved connector
//! `console` (a Bots-page press, `bots_page`; a card studio test render, below). A test
//! render (`POST /api/cards/send`) is journaled as a system event carrying the rendered
//! card; the router turns it into one outbox send keyed `<event id>/console/0000`
//! (`test_render_operation`), so it is durable, sent once, retried, and shows in the
//! console's Events and Deliveries like any bot's message.

use super::ApiError;
use crate::action::{MessageBody, Operation, Target};
use crate::auth::{AuthMode, Viewer};
use crate::cards::{Card, CardEngine, CardError};
use crate::event::{Event, EventKind, Person};
use crate::runtime::Shared;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// The connector name of events the console makes (Bots-page presses, test renders).
/// No configured connector may take it (`config` refuses it).
pub const CONSOLE_CONNECTOR: &str = "console";
/// The topic of a card studio test render.
pub const TEST_RENDER_TOPIC: &str = "console.test_render";
/// The "bot" part of a test render's outbox key.
pub const TEST_RENDER_SENDER: &str = "console";

const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/console", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(styles))
}

/// The page, for admins. A stranger is sent to sign in; a member is told why not.
async fn page(State(s): State<Shared>, Extension(viewer): Extension<Viewer>) -> Response {
    match viewer {
        Viewer::Anonymous if matches!(s.auth.mode(), AuthMode::Local | AuthMode::Feishu) => {
            Redirect::to("/login?next=/console").into_response()
        }
        Viewer::Dev if s.admin_token.is_some() => (
            StatusCode::UNAUTHORIZED,
            "the console needs a signed-in admin: server.admin_token is set, so use [auth] mode = \"local\" or \"proxy\"",
        )
            .into_response(),
        Viewer::Dev => Html(CONSOLE_HTML).into_response(),
        v => match crate::auth::routes::require_admin(&v) {
            Ok(()) => Html(CONSOLE_HTML).into_response(),
            Err(e) => e.into_response(),
        },
    }
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CONSOLE_JS,
    )
        .into_response()
}

/// The console's styles and the card renderer's, so HTML previews look as in the chat.
async fn styles() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        format!("{CONSOLE_CSS}\n{}", crate::cards::HTML_CSS),
    )
        .into_response()
}

/// The card the studio shows: template `name` (compiled from `source` when the studio
/// edited it) over `data` (default: its sample). An error is the answer to give: 400
/// with the one-line reason and, for template errors, `line` and `column`.
pub fn studio_card(
    cards: &CardEngine,
    name: &str,
    source: Option<&str>,
    data: Option<Value>,
) -> Result<Card, Response> {
    let edited;
    let engine = match source {
        Some(text) => {
            edited = cards.with_edited(name, text).map_err(card_error)?;
            &edited
        }
        None => cards,
    };
    let data = match data {
        Some(d) => d,
        None => engine
            .template(name)
            .and_then(|t| t.sample.clone())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("no `data` given and no sample data for template `{name}`"),
                )
                .into_response()
            })?,
    };
    engine.card(name, &data).map_err(card_error)
}

/// 400 with the card error's one line, and where in the template it is when known.
fn card_error(e: CardError) -> Response {
    let (line, column) = match &e {
        CardError::Template { line, column, .. } => (Some(*line), Some(*column)),
        CardError::Render { line, column, .. } => (*line, *column),
        _ => (None, None),
    };
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": crate::cards::model::one_line(&e.to_string()),
            "line": line,
            "column": column,
        })),
    )
        .into_response()
}

/// The body of `POST /api/cards/send`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRender {
    /// A card template's name (`GET /api/cards`).
    template: String,
    /// The template's data; its sample data when absent.
    data: Option<Value>,
    /// The template's text to compile instead of its file (the studio's edit).
    source: Option<String>,
    /// The configured connector to send through, and the chat id on its platform.
    connector: String,
    chat: String,
    /// Made by the page once per click: the same request again sends nothing new.
    client_id: String,
}

/// `POST /api/cards/send`: send the studio's render to a chat, as a journaled event
/// whose one outbox send the console's Deliveries tab shows. Admins only (the `/api`
/// layer), with CSRF from a browser (the auth middleware).
#[utoipa::path(
    post,
    path = "/cards/send",
    tag = "admin",
    security(("admin_token" = [])),
    request_body(content = TestRender, content_type = "application/json"),
    responses(
        (status = 200, description = "`{event_id, duplicate}`: the journaled test-render event whose one send shows in Deliveries", body = Object),
        (status = 400, description = "a malformed body, an unknown template or connector, a template error (with `line` and `column`)", body = super::openapi::ErrorBody),
        super::api::NotAdmin,
        (status = 403, description = "a browser request without its CSRF token", body = super::openapi::ErrorBody),
    )
)]
pub async fn send_test_render(
    State(s): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    body: Result<Json<TestRender>, JsonRejection>,
) -> Response {
    match test_render_event(&s, &viewer, body).await {
        Ok(answer) => answer.into_response(),
        Err(answer) => answer,
    }
}

async fn test_render_event(
    s: &Shared,
    viewer: &Viewer,
    body: Result<Json<TestRender>, JsonRejection>,
) -> Result<Json<Value>, Response> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m).into_response();
    let Json(req) = body.map_err(|r| ApiError::from(r).into_response())?;
    if !s.connectors.contains_key(&req.connector) {
        let mut known: Vec<&String> = s.connectors.keys().collect();
        known.sort();
        return Err(bad(format!(
            "no connector `{}` (connectors: {})",
            req.connector,
            known
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let chat = req.chat.trim();
    if chat.is_empty() || chat.chars().count() > 200 || chat.contains(char::is_control) {
        return Err(bad("`chat` must be a chat id of 1 to 200 characters".into()));
    }
    let client_id = req.client_id.trim();
    if client_id.is_empty() || client_id.len() > 100 || client_id.contains(char::is_control) {
        return Err(bad("`client_id` must be 1 to 100 characters".into()));
    }
    let card = studio_card(&s.cards, &req.template, req.source.as_deref(), req.data)?;
    let card = serde_json::to_value(&card)
        .map_err(|e| ApiError::internal("encoding the card", e).into_response())?;
    let who = viewer.user().map(|u| u.name.clone());
    let mut event = Event::new(CONSOLE_CONNECTOR, EventKind::System, s.clock.now());
    event.topic = Some(TEST_RENDER_TOPIC.into());
    event.sender = who.clone().map(|id| Person { id, name: None });
    event.external_id = Some(format!(
        "test-render/{}/{client_id}",
        who.as_deref().unwrap_or("-")
    ));
    event.payload = json!({
        "template": req.template,
        "connector": req.connector,
        "chat": chat,
        "card": card,
    });
    let accepted = s
        .journal
        .accept(vec![event])
        .await
        .map_err(|e| super::journal_error(CONSOLE_CONNECTOR, e).into_response())?;
    let first = accepted.first().ok_or_else(|| {
        ApiError::internal("journal", "the journal returned nothing").into_response()
    })?;
    Ok(Json(json!({
        "event_id": first.id().to_string(),
        "duplicate": matches!(first, crate::journal::Accepted::Duplicate(_)),
        "outbox_key": format!("{}/{TEST_RENDER_SENDER}/0000", first.id()),
    })))
}

/// For the router: the send a test-render event asks for, as (connector, operation);
/// `None` for any other event. Only perch makes events from the `console` connector.
pub fn test_render_operation(event: &Event) -> Option<(String, Operation)> {
    if event.connector != CONSOLE_CONNECTOR
        || event.kind != EventKind::System
        || event.topic.as_deref() != Some(TEST_RENDER_TOPIC)
    {
        return None;
    }
    let p = &event.payload;
    let connector = p["connector"].as_str()?.to_string();
    let chat = p["chat"].as_str()?.to_string();
    Some((
        connector,
        Operation::Send {
            to: Target::chat(chat),
            body: MessageBody::Card {
                card: p["card"].clone(),
            },
            reply_to: None,
        },
    ))
}
