//! The HTTP edge: `/hooks/<connector>` for inbound events, `/api` (admin), `/metrics`,
//! `/healthz`, and whatever routes connectors add (the web chat at `/`).
//!
//! Every refusal is a 4xx with a one-line JSON reason (`{"error": "..."}`) and stores
//! nothing. An event is answered 2xx only after the journal has made it durable.

mod api;
mod bot_actions;
pub mod bots_page;
mod conn;
pub(crate) mod console;
pub mod openapi;

pub use conn::{ConnectionLimits, serve};

use crate::connectors::{Inbound, InboundRequest};
use crate::journal::Accepted;
use crate::runtime::Shared;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

/// An error answer: a status and a one-line reason. 5xx reasons are logged in full and
/// answered generically, so internals never leak.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
        }
    }
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{context}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{context}; try again"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(openapi::ErrorBody { error: self.reason })).into_response()
    }
}

/// A JSON body refused before the handler (malformed JSON, a missing field, a wrong
/// content type, too large): the one-line 4xx every JSON endpoint answers with, so a
/// handler takes `Result<Json<T>, JsonRejection>` and writes `let Json(body) = body?;`.
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body is larger than the configured limit (server.body_limit)".to_string()
        } else {
            r.body_text()
                .lines()
                .next()
                .unwrap_or("bad JSON body")
                .to_string()
        };
        ApiError::new(status, reason)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body is larger than the configured limit (server.body_limit)".to_string()
        } else {
            format!(
                "cannot read body: {}",
                r.body_text().lines().next().unwrap_or("")
            )
        };
        ApiError::new(status, reason)
    }
}

/// The whole HTTP application.
pub fn app(shared: Shared) -> Router {
    let body_limit = shared.body_limit;
    let (documented, _) = api_routes(Some(shared.clone())).split_for_parts();
    let mut app: Router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(documented)
        .merge(console::routes())
        .with_state(shared.clone());
    for connector in shared.connectors.values() {
        if let Some(routes) = connector.http_routes() {
            app = app.merge(routes);
        }
    }
    app = app.merge(crate::auth::routes::routes(shared.auth.clone()));
    let body_read = conn::BodyRead {
        timeout: shared.connection_limits.body_read_timeout,
        limit: body_limit,
    };
    app.fallback(not_found)
        // Who is asking (and the CSRF check) before any handler.
        .layer(axum::middleware::from_fn_with_state(
            shared.auth.clone(),
            crate::auth::middleware,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            body_read,
            conn::read_body_within,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        // Outermost, so it also sees what the layers inside answer (a caught panic).
        .layer(axum::middleware::map_response(json_errors))
}

/// `/hooks` and `/api`: the routes in the OpenAPI document (`openapi::document`). With
/// `shared`, the admin routes check the admin token; without, they are only documented.
fn api_routes(shared: Option<Shared>) -> utoipa_axum::router::OpenApiRouter<Shared> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(hook_root))
        .routes(utoipa_axum::routes!(hook_sub))
        .nest("/api", api::routes(shared))
}

/// The documented routes, for `openapi::document`.
fn documented_routes() -> utoipa_axum::router::OpenApiRouter<Shared> {
    api_routes(None)
}

/// Longest reason kept from a plain-text refusal.
const REASON_MAX: usize = 200;

/// Every refusal as one line of JSON, also those perch's handlers never see: axum's
/// method routing (405, empty body), extractor rejections (bad UTF-8 in a path
/// parameter, a bad query string, a body over the limit: plain text) and a caught
/// panic. Answers that already are JSON, and successes, pass untouched.
async fn json_errors(res: Response) -> Response {
    use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let first_line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let reason = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "body is larger than the configured limit (server.body_limit)".to_string()
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            match parts.headers.get(ALLOW).and_then(|v| v.to_str().ok()) {
                Some(allow) if !allow.is_empty() => {
                    format!("method not allowed (allowed: {allow})")
                }
                _ => "method not allowed".to_string(),
            }
        }
        // A 5xx's text may hold internals (a panic message): never shown.
        s if s.is_server_error() => {
            if !text.is_empty() {
                tracing::error!(status = s.as_u16(), body = %crate::telemetry::escape(&text), "internal error answered");
            }
            format!(
                "{}; try again",
                s.canonical_reason().unwrap_or("internal error")
            )
        }
        s => match first_line {
            Some(line) => line.chars().take(REASON_MAX).collect(),
            None => s.canonical_reason().unwrap_or("refused").to_string(),
        },
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&json!({ "error": reason })).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such path")
}

/// `200 {"status": "ok"}`, or `503 {"status": "cannot_store", "problems": […]}` while
/// the store refuses writes (a full disk): a load balancer then sends events to another
/// replica, and an operator sees why. It turns back to ok by itself.
async fn healthz(State(s): State<Shared>) -> Response {
    let problems = s.journal.health().problems();
    if problems.is_empty() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "cannot_store", "problems": problems })),
        )
            .into_response()
    }
}

/// Prometheus text; behind `server.metrics_token` when it is set.
async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = &s.metrics_token
        && !crate::auth::bearer_matches(&headers, token)
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong metrics token (Authorization: Bearer …)",
        ));
    }
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response())
}

/// `POST /hooks/{connector}`: an inbound event, verified and decoded by the connector.
#[utoipa::path(
    post,
    path = "/hooks/{connector}",
    tag = "hooks",
    params(("connector" = String, Path, description = "A configured connector's name")),
    request_body(description = "The platform's or sender's payload, as the connector expects it", content = Object),
    responses(
        (status = 200, description = "The event is durable (or was already, under the same delivery id); the body is the connector's acknowledgement (empty for Slack), or the platform's challenge answer", body = Object),
        (status = 400, description = "a malformed body, or an event that cannot be stored as it is", body = openapi::ErrorBody),
        (status = 401, description = "a missing or wrong signature or token, or a stale timestamp", body = openapi::ErrorBody),
        (status = 404, description = "no connector of that name", body = openapi::ErrorBody),
        (status = 413, description = "body larger than `server.body_limit`", body = openapi::ErrorBody),
        (status = 503, description = "the store cannot take it now (a full disk); the sender retries", body = openapi::ErrorBody),
    )
)]
async fn hook_root(
    State(s): State<Shared>,
    Path(connector): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    hook(s, connector, String::new(), headers, body).await
}

/// `POST /hooks/{connector}/{sub}`: the same, with a sub-path the connector reads
/// (Slack's `/interactivity`, a webhook's topic).
#[utoipa::path(
    post,
    path = "/hooks/{connector}/{*sub}",
    tag = "hooks",
    params(
        ("connector" = String, Path, description = "A configured connector's name"),
        ("sub" = String, Path, description = "The rest of the path (may hold slashes)"),
    ),
    request_body(description = "The platform's or sender's payload, as the connector expects it", content = Object),
    responses(
        (status = 200, description = "The event is durable (or was already, under the same delivery id); the body is the connector's acknowledgement (empty for Slack), or the platform's challenge answer", body = Object),
        (status = 400, description = "a malformed body, or an event that cannot be stored as it is", body = openapi::ErrorBody),
        (status = 401, description = "a missing or wrong signature or token, or a stale timestamp", body = openapi::ErrorBody),
        (status = 404, description = "no connector of that name", body = openapi::ErrorBody),
        (status = 413, description = "body larger than `server.body_limit`", body = openapi::ErrorBody),
        (status = 503, description = "the store cannot take it now (a full disk); the sender retries", body = openapi::ErrorBody),
    )
)]
async fn hook_sub(
    State(s): State<Shared>,
    Path((connector, sub)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    hook(s, connector, sub, headers, body).await
}

/// `POST /hooks/<connector>[/<sub>]`: verify, decode, journal, then answer.
async fn hook(
    s: Shared,
    name: String,
    sub_path: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(connector) = s.connectors.get(&name) else {
        let mut known: Vec<&str> = s.connectors.keys().map(String::as_str).collect();
        known.sort();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown connector `{name}` (known: {})", known.join(", ")),
        ));
    };
    let refused = |reason: &str| {
        s.journal
            .connector_health()
            .ingest_failed(&name, s.clock.now(), reason);
    };
    let body = body.inspect_err(|r| {
        crate::telemetry::event_rejected(&name, r.status().as_u16());
        refused(&r.body_text());
    })?;
    let req = InboundRequest {
        sub_path,
        headers,
        body,
        now: s.clock.now(),
    };
    let inbound = connector.handle_inbound(&req).map_err(|e| {
        crate::telemetry::event_rejected(&name, e.status().as_u16());
        tracing::info!(connector = %name, reason = %e, "inbound request refused");
        refused(&e.to_string());
        ApiError::new(e.status(), e.to_string())
    })?;
    // Platforms echo secrets back (Feishu's verification token); the journal is
    // readable through the admin API, so they never reach it.
    // Every connector's secrets, and the admin token: a platform may well echo
    // another connector's secret, and none of them belongs in the journal.
    let mut secrets: Vec<&str> = s.connectors.values().flat_map(|c| c.secrets()).collect();
    if let Some(token) = &s.admin_token {
        secrets.push(token.expose());
    }
    match inbound {
        Inbound::Respond(reply) => Ok(reply_response(reply.status, reply.body)),
        Inbound::Events { mut events, ack } => {
            for e in &mut events {
                crate::connectors::redact(e, &secrets);
            }
            let accepted = s
                .journal
                .accept(events)
                .await
                .map_err(|e| journal_error(&name, e))?;
            let mut body = ack.body;
            // Acks that report an event id report the one the journal kept (the original,
            // for a duplicate).
            if let (Some(obj), Some(first)) = (body.as_object_mut(), accepted.first())
                && obj.contains_key("event_id")
            {
                obj.insert("event_id".into(), json!(first.id().to_string()));
                obj.insert(
                    "duplicate".into(),
                    json!(matches!(first, Accepted::Duplicate(_))),
                );
            }
            Ok(reply_response(ack.status, body))
        }
        Inbound::Click { mut event, reply } => {
            crate::connectors::redact(&mut event, &secrets);
            let accepted = s
                .journal
                .accept(vec![*event])
                .await
                .map_err(|e| journal_error(&name, e))?;
            let answer = match accepted.first() {
                // A retried click gets the first one's answer.
                Some(a) => s.clicks.answer(a.id(), s.click_answer_window).await,
                None => None,
            };
            let reply = (reply.0)(answer.as_ref());
            Ok(reply_response(reply.status, reply.body))
        }
    }
}

/// A connector's answer: `body` as JSON, or no body at all when it is `Null` (Slack
/// wants an empty 200 as its acknowledgement).
fn reply_response(status: StatusCode, body: serde_json::Value) -> Response {
    if body.is_null() {
        status.into_response()
    } else {
        (status, Json(body)).into_response()
    }
}

/// A journal refusal as an answer: an event that cannot be stored as it is gets its
/// 4xx reason; anything else is a 503 (logged in full).
pub fn journal_error(connector: &str, e: crate::journal::JournalError) -> ApiError {
    let status = e.status();
    if status.is_client_error() {
        crate::telemetry::event_rejected(connector, status.as_u16());
        tracing::info!(connector = %connector, reason = %e, "inbound request refused");
        ApiError::new(status, e.to_string())
    } else {
        ApiError::internal("could not store the event", e)
    }
}

/// Resolves on SIGINT or SIGTERM: graceful shutdown of the server, and the end of
/// long-lived streams (the web chat's SSE) so that shutdown does not wait for them.
pub async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
