//! `POST /api/bots/<name>/actions`: actions a bot posts after answering an event with
//! 202 (`bots/http_bot.rs`). Authenticated by the bot's own signature, not the admin
//! token. The request is checked whole (signature, timestamp, the event it answers,
//! that it went to this bot, every action), then journaled as a `bot_actions` event: durable before the 2xx, and
//! deduplicated by the batch's content, so a retried POST is a no-op.
//!
//! Flow: bot (HTTP) → **here** → journal → router → the same bot → outbox.

use super::ApiError;
use crate::bots::http_bot::{KeyedAction, LateBatch, to_action};
use crate::connectors::InboundRequest;
use crate::event::{Event, EventKind};
use crate::runtime::Shared;
use crate::store::Fate;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::Digest;

/// Longest accepted action key: it becomes part of an outbox key.
const MAX_KEY_LEN: usize = 200;

#[utoipa::path(
    post,
    path = "/bots/{name}/actions",
    tag = "admin",
    params(("name" = String, Path, description = "An `http_bot` bot's name")),
    request_body(
        description = "Late actions (schemas/http_bot.late_actions.json), signed with the bot's own secret (not the admin token)",
        content = Object,
        content_type = "application/json",
    ),
    responses(
        (status = 202, description = "`{event_id, duplicate}`: the batch is journaled (durable); the same batch posted again is a duplicate, queued once", body = Object),
        (status = 400, description = "a malformed body", body = super::openapi::ErrorBody),
        (status = 401, description = "a missing or wrong signature, or a stale timestamp", body = super::openapi::ErrorBody),
        (status = 403, description = "the event was not routed to this bot", body = super::openapi::ErrorBody),
        (status = 404, description = "no such bot, or one that takes no late actions", body = super::openapi::ErrorBody),
        (status = 409, description = "the event is still being handled; post again in a moment", body = super::openapi::ErrorBody),
        (status = 413, description = "body larger than `server.body_limit`", body = super::openapi::ErrorBody),
        (status = 422, description = "an unknown event, an action without a `key` or with a key used twice, an invalid action", body = super::openapi::ErrorBody),
        (status = 503, description = "the store cannot be written", body = super::openapi::ErrorBody),
    )
)]
pub async fn post_actions(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bot = s
        .bots
        .get(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no bot named `{name}`")))?;
    let body = body?;
    let req = InboundRequest {
        sub_path: String::new(),
        headers,
        body,
        now: s.clock.now(),
    };
    match bot.check_late_actions(&req) {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("bot `{name}` does not take late actions (only `http_bot` bots do)"),
            ));
        }
        Some(Err(e)) => {
            tracing::info!(bot = %name, reason = %e, "late actions refused");
            return Err(ApiError::new(e.status(), e.to_string()));
        }
        Some(Ok(())) => {}
    }
    let raw: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    let unprocessable = |why: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, why);
    let event_id = raw
        .get("event_id")
        .and_then(Value::as_str)
        .and_then(|id| id.parse().ok())
        .map(crate::event::EventId)
        .ok_or_else(|| unprocessable("`event_id` must be the id of the event perch sent".into()))?;
    let Some(Value::Array(items)) = raw.get("actions") else {
        return Err(unprocessable("`actions` must be an array".into()));
    };
    if raw.as_object().is_some_and(|o| o.len() != 2) {
        return Err(unprocessable(
            "only `event_id` and `actions` are allowed".into(),
        ));
    }
    let entry = s
        .store
        .event(event_id)
        .await
        .map_err(|e| ApiError::internal("store error", e))?
        .ok_or_else(|| unprocessable(format!("no event {event_id} in the journal")))?;
    // A bot answers only events it was given: its signature proves which bot posts, the
    // event's fate proves the event went to it. Otherwise one bot's secret could make
    // perch reply in any chat perch has seen.
    match &entry.fate {
        Fate::Routed { bots, .. } if bots.contains(&name) => {}
        // The bot answered 202 and posted before the router recorded the fate.
        Fate::Pending => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("event {event_id} is still being handled; post again in a moment"),
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("event {event_id} was not routed to bot `{name}`"),
            ));
        }
    }
    let original = entry.event;
    let mut actions = Vec::with_capacity(items.len());
    let mut keys = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let mut item = item.clone();
        let key = item
            .as_object_mut()
            .and_then(|o| o.remove("key"))
            .and_then(|k| k.as_str().map(str::to_string))
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && !k.contains(char::is_control))
            .ok_or_else(|| {
                unprocessable(format!(
                    "action {i}: needs a `key` (1 to {MAX_KEY_LEN} characters), the bot's idempotency key"
                ))
            })?;
        if !keys.insert(key.clone()) {
            return Err(unprocessable(format!(
                "action {i}: key {key:?} is used twice"
            )));
        }
        let action = to_action(item, &|template, data| {
            s.cards
                .card_json(template, data)
                .map(|card| crate::action::MessageBody::Card { card })
                .map_err(|e| crate::bots::BotError::Template(format!("card `{template}`: {e}")))
        })
        .map_err(|e| unprocessable(format!("action {i}: {e}")))?;
        actions.push(KeyedAction { key, action });
    }
    let batch = LateBatch { event_id, actions };
    let mut event = Event::new(&original.connector, EventKind::BotActions, s.clock.now());
    event.chat = original.chat;
    event.sender = original.sender;
    event.message_id = original.message_id;
    let mut payload =
        serde_json::to_value(&batch).map_err(|e| ApiError::internal("encoding late actions", e))?;
    payload["bot"] = json!(name);
    // The same batch posted again is the same event: the journal drops the repeat.
    event.external_id = Some(format!(
        "bot_actions/{name}/{}",
        hex::encode(sha2::Sha256::digest(&req.body))
    ));
    event.payload = payload;
    let accepted = s
        .journal
        .accept(vec![event])
        .await
        .map_err(|e| super::journal_error(&name, e))?;
    let duplicate = matches!(
        accepted.first(),
        Some(crate::journal::Accepted::Duplicate(_))
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "event_id": accepted.first().map(|a| a.id().to_string()),
            "duplicate": duplicate,
        })),
    ))
}
