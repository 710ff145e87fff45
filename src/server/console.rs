//! The operators' console at `/console`: one page of plain HTML, CSS and JS compiled
//! into the binary (no build step, nothing from the internet). It reads the admin API
//! (`/api/...`) with the signed-in admin's session and CSRF token, so it shows exactly
//! what scripts see: events with their fate and deliveries, the outbox and dead letters
//! (with replay), schedules, connectors and the card studio.

use crate::auth::{AuthMode, Viewer};
use crate::runtime::Shared;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};

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
        Viewer::Anonymous if s.auth.mode() == AuthMode::Local => {
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
