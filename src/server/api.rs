//! The admin API under `/api`: status, events with their fate, the outbox, dead letters
//! and replay, card templates and card previews. When `server.admin_token` is set every call needs
//! `Authorization: Bearer <token>` (compared in constant time).

use super::ApiError;
use crate::auth::Viewer;
use crate::event::EventId;
use crate::runtime::Shared;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn routes(shared: Shared) -> Router<Shared> {
    Router::new()
        .route("/status", get(status))
        .route("/events", get(events))
        .route("/events/stream", get(event_stream))
        .route("/events/{id}", get(event))
        .route("/events/{id}/deliveries", get(event_deliveries))
        .route("/outbox", get(outbox))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/replay", post(replay))
        .route("/dead-letters/replay-all", post(replay_all))
        .route("/sent", get(sent))
        .route("/schedules", get(schedules))
        .route("/bots", get(super::bots_page::bots))
        .route("/cards", get(cards))
        .route("/cards/render", post(render_card))
        .layer(axum::middleware::from_fn_with_state(shared, require_token))
        // After the layer: a bot signs with its own secret, not the admin token.
        .route(
            "/bots/{name}/actions",
            post(super::bot_actions::post_actions),
        )
}

/// Who may call `/api`: a script with the admin token, or a signed-in admin (whose
/// POSTs the auth middleware has already checked for the CSRF token). In `dev` mode
/// without a token, anyone (perch then only listens on loopback).
async fn require_token(
    State(s): State<Shared>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let by_token = s
        .admin_token
        .as_ref()
        .is_some_and(|t| crate::auth::bearer_matches(req.headers(), t));
    let viewer = req.extensions().get::<Viewer>().cloned();
    let allowed = by_token
        || match &viewer {
            Some(v @ Viewer::User(_)) => {
                crate::auth::routes::require_admin(v)?;
                true
            }
            Some(Viewer::Dev) | None => s.admin_token.is_none(),
            Some(Viewer::Anonymous) => false,
        };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer …), and no admin signed in",
        ));
    }
    Ok(next.run(req).await)
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::internal("store error", e)
}

async fn status(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let mut connectors: Vec<Value> = s
        .connectors
        .values()
        // `state`: what the connector tells of itself (a long connection's health).
        // `health`: its last success and failure, sending and taking in events.
        .map(|c| {
            json!({
                "name": c.name(),
                "kind": c.kind(),
                "state": c.describe(),
                "health": s.journal.connector_health().of(c.name()),
            })
        })
        .collect();
    connectors.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": s.started_at,
        "pending_events": s.store.pending_count().await.map_err(store_err)?,
        "outbox_depth": s.store.outbox_count().await.map_err(store_err)?,
        "dead_letters": s.store.dead_letters(10_000).await.map_err(store_err)?.len(),
        // Empty while every write succeeds; else why events or deliveries are held.
        "store_problems": s.journal.health().problems(),
        "connectors": connectors,
    })))
}

#[derive(Deserialize)]
struct Page {
    before: Option<String>,
    limit: Option<usize>,
}

/// The console's time filter: entries received at or after `since` and at or before
/// `until` (RFC 3339 times), either side open when absent.
#[derive(Deserialize, Default)]
struct TimeRange {
    since: Option<String>,
    until: Option<String>,
}

/// A point in time, as the API takes it.
type Time = chrono::DateTime<chrono::Utc>;

impl TimeRange {
    fn parse(&self) -> Result<(Option<Time>, Option<Time>), ApiError> {
        let one = |name: &str, v: &Option<String>| -> Result<Option<Time>, ApiError> {
            v.as_deref()
                .filter(|t| !t.is_empty())
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|e| {
                            ApiError::new(
                                StatusCode::BAD_REQUEST,
                                format!("`{name}` is not an RFC 3339 time ({e}): {t:?}"),
                            )
                        })
                })
                .transpose()
        };
        let (since, until) = (one("since", &self.since)?, one("until", &self.until)?);
        if let (Some(a), Some(b)) = (since, until)
            && a > b
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`since` ({a}) is after `until` ({b})"),
            ));
        }
        Ok((since, until))
    }
}

fn within(at: Time, (since, until): (Option<Time>, Option<Time>)) -> bool {
    since.is_none_or(|s| at >= s) && until.is_none_or(|u| at <= u)
}

/// How many journal entries one time-filtered page may read at most, so a narrow
/// window far in the past cannot make one request walk the whole journal.
const TIME_FILTER_SCAN: usize = 20_000;

/// `GET /api/events?before=<id>&limit=N&since=<time>&until=<time>`: journal entries,
/// newest first.
async fn events(
    State(s): State<Shared>,
    Query(p): Query<Page>,
    Query(range): Query<TimeRange>,
) -> Result<Json<Value>, ApiError> {
    let mut before = match p.before.as_deref() {
        Some(b) => Some(EventId::parse(b).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`before` is not an event id: {b:?}"),
            )
        })?),
        None => None,
    };
    let range = range.parse()?;
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let mut entries = Vec::new();
    let mut scanned = 0;
    // Newest first: skip those after `until`, stop at the first before `since`.
    'pages: while entries.len() < limit && scanned < TIME_FILTER_SCAN {
        let page = s
            .store
            .recent_events(before, limit)
            .await
            .map_err(store_err)?;
        let Some(last) = page.last() else { break };
        before = Some(last.event.id);
        scanned += page.len();
        let short = page.len() < limit;
        for entry in page {
            if range.0.is_some_and(|since| entry.event.received_at < since) {
                break 'pages;
            }
            if within(entry.event.received_at, range) && entries.len() < limit {
                entries.push(entry);
            }
        }
        if short {
            break;
        }
    }
    Ok(Json(json!({ "events": entries })))
}

/// How long one live stream lasts; the browser's `EventSource` reconnects by itself
/// (after the `retry` we send) and the console reloads the list, so the cap costs
/// nothing and bounds how long a graceful shutdown waits for an open tab.
const STREAM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// `GET /api/events/stream?since=<time>`: the console's live event list, over SSE.
/// First `hello`; then an `entry` (the journal entry as `/api/events/{id}` gives it)
/// each time an event is accepted or its fate recorded, if received at or after
/// `since`; `resync` when this listener fell behind and must reload the list.
async fn event_stream(
    State(s): State<Shared>,
    Query(range): Query<TimeRange>,
) -> Result<
    axum::response::sse::Sse<
        impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio_stream::wrappers::BroadcastStream;
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    let range = range.parse()?;
    let changes = BroadcastStream::new(s.journal.feed().subscribe());
    let store = s.store.clone();
    let entries = changes.filter_map(move |change| {
        let store = store.clone();
        async move {
            match change {
                Ok(id) => match store.event(id).await {
                    Ok(Some(entry)) if within(entry.event.received_at, range) => {
                        let data = serde_json::to_string(&entry).ok()?;
                        Some(Ok(SseEvent::default().event("entry").data(data)))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(event_id = %id, error = %e, "live event list: could not read the entry; asking the console to reload");
                        Some(Ok(SseEvent::default()
                            .event("resync")
                            .data(json!({ "error": e.to_string() }).to_string())))
                    }
                },
                Err(BroadcastStreamRecvError::Lagged(n)) => Some(Ok(SseEvent::default()
                    .event("resync")
                    .data(json!({ "missed": n }).to_string()))),
            }
        }
    });
    let hello = futures::stream::once(async {
        Ok(SseEvent::default()
            .event("hello")
            .retry(std::time::Duration::from_secs(1))
            .data("{}"))
    });
    let end = Box::pin(async {
        tokio::select! {
            _ = tokio::time::sleep(STREAM_LIFETIME) => {}
            _ = super::stop_signal() => {}
        }
    });
    Ok(Sse::new(hello.chain(entries).take_until(end)).keep_alive(KeepAlive::default()))
}

async fn event(State(s): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = EventId::parse(&id).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("not an event id: {id:?}"))
    })?;
    match s.store.event(id).await.map_err(store_err)? {
        Some(e) => Ok(Json(serde_json::to_value(e).unwrap_or(Value::Null))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no event {id} in the journal"),
        )),
    }
}

async fn outbox(State(s): State<Shared>, Query(p): Query<Page>) -> Result<Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let items = s
        .store
        .outbox_after(p.before.as_deref(), limit)
        .await
        .map_err(store_err)?;
    Ok(Json(json!({ "items": items })))
}

async fn dead_letters(
    State(s): State<Shared>,
    Query(p): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(
        json!({ "dead_letters": s.store.dead_letters(limit).await.map_err(store_err)? }),
    ))
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
}

/// `POST /api/dead-letters/replay?key=<outbox key>`: queue a dead letter again. Answered
/// once the replay is durable (the store flushed), so a crash right after the answer
/// cannot put the letter back among the dead.
async fn replay(
    State(s): State<Shared>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<Value>, ApiError> {
    match s
        .store
        .replay_dead(&q.key, s.clock.now())
        .await
        .map_err(store_err)?
    {
        Some(item) => {
            s.store.flush().await.map_err(store_err)?;
            s.outbox.ring();
            Ok(Json(json!({ "replayed": item })))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dead letter with key {:?}", q.key),
        )),
    }
}

#[derive(Deserialize)]
struct ConnectorQuery {
    connector: String,
}

/// `POST /api/dead-letters/replay-all?connector=<name>`: queue every dead letter of one
/// connector again (after a fix). Idempotent: a letter already replayed is no longer
/// dead and is not queued twice. Answered once the replays are durable.
async fn replay_all(
    State(s): State<Shared>,
    Query(q): Query<ConnectorQuery>,
) -> Result<Json<Value>, ApiError> {
    if !s.connectors.contains_key(&q.connector) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown connector `{}`", q.connector),
        ));
    }
    let now = s.clock.now();
    let mut replayed = Vec::new();
    for dead in s.store.dead_letters(10_000).await.map_err(store_err)? {
        if dead.item.connector != q.connector {
            continue;
        }
        if let Some(item) = s
            .store
            .replay_dead(&dead.item.key, now)
            .await
            .map_err(store_err)?
        {
            replayed.push(item.key);
        }
    }
    if !replayed.is_empty() {
        s.store.flush().await.map_err(store_err)?;
        s.outbox.ring();
    }
    Ok(Json(json!({ "replayed": replayed })))
}

/// `GET /api/events/{id}/deliveries`: what became of the event's actions, by outbox key
/// (`<event id>/<bot>/<index>`): still queued (with attempts, next try and last
/// error), delivered (with what the platform answered), or dead.
async fn event_deliveries(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let event_id = EventId::parse(&id).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("not an event id: {id:?}"))
    })?;
    let Some(entry) = s.store.event(event_id).await.map_err(store_err)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no event {event_id} in the journal"),
        ));
    };
    let prefix = format!("{event_id}/");
    let pending: Vec<_> = s
        .store
        .outbox_after(None, 10_000)
        .await
        .map_err(store_err)?
        .into_iter()
        .filter(|i| i.key.starts_with(&prefix))
        .collect();
    let dead: Vec<_> = s
        .store
        .dead_letters(10_000)
        .await
        .map_err(store_err)?
        .into_iter()
        .filter(|d| d.item.key.starts_with(&prefix))
        .collect();
    // Keys are numbered per bot from 0; a toast answered in the click takes a number
    // but is never queued, so look a little past the count.
    let mut sent = Vec::new();
    if let crate::store::Fate::Routed { bots, actions, .. } = &entry.fate {
        for bot in bots {
            for index in 0..(actions + 2) {
                let key = format!("{event_id}/{bot}/{index:04}");
                if let Some(r) = s.store.sent(&key).await.map_err(store_err)? {
                    sent.push(r);
                }
            }
        }
    }
    Ok(Json(json!({
        "event_id": event_id.to_string(),
        "pending": pending,
        "sent": sent,
        "dead": dead,
    })))
}

/// `GET /api/sent?key=<outbox key>`: what a delivered operation produced.
async fn sent(State(s): State<Shared>, Query(q): Query<KeyQuery>) -> Result<Json<Value>, ApiError> {
    match s.store.sent(&q.key).await.map_err(store_err)? {
        Some(r) => Ok(Json(serde_json::to_value(r).unwrap_or(Value::Null))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("nothing sent under key {:?}", q.key),
        )),
    }
}

#[derive(Deserialize)]
struct CountQuery {
    count: Option<usize>,
}

/// `GET /api/schedules?count=N`: each job's cron, zone, next N fire times in its zone,
/// last fired slot, recent runs, missed and failed slots (`crate::scheduler::status`).
async fn schedules(
    State(s): State<Shared>,
    Query(q): Query<CountQuery>,
) -> Result<Json<Value>, ApiError> {
    let count = q.count.unwrap_or(5).clamp(1, 100);
    let jobs = crate::scheduler::status(&s.schedules, s.store.as_ref(), s.clock.now(), count)
        .await
        .map_err(store_err)?;
    Ok(Json(json!({ "schedules": jobs })))
}

/// `GET /api/cards`: the card templates with their sample data, and the platforms.
async fn cards(State(s): State<Shared>) -> Json<Value> {
    let templates: Vec<Value> = s
        .cards
        .templates()
        .map(
            |t| json!({ "name": t.name, "file": t.path.display().to_string(), "sample": t.sample }),
        )
        .collect();
    Json(json!({ "templates": templates, "platforms": crate::cards::PLATFORMS }))
}

/// `POST /api/cards/render {"template", "data"?, "platform"}` (or `{"card", "platform"}`
/// for a neutral card): the neutral card and the platform's payload. Without `data` the
/// template's sample data is used.
async fn render_card(State(s): State<Shared>, body: bytes::Bytes) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RenderRequest {
        template: Option<String>,
        data: Option<Value>,
        card: Option<Value>,
        platform: String,
    }
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let req: RenderRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("bad request body: {e}")))?;
    let card = match (req.template, req.card) {
        (Some(name), None) => {
            let data = match req.data {
                Some(d) => d,
                None => s
                    .cards
                    .template(&name)
                    .and_then(|t| t.sample.clone())
                    .ok_or_else(|| {
                        bad(format!(
                            "no `data` given and no sample data for template `{name}`"
                        ))
                    })?,
            };
            s.cards
                .card(&name, &data)
                .map_err(|e| bad(crate::cards::model::one_line(&e.to_string())))?
        }
        (None, Some(card)) => {
            crate::cards::Card::parse(&card).map_err(|m| bad(format!("invalid card: {m}")))?
        }
        _ => {
            return Err(bad(
                "give either `template` (with optional `data`) or `card`".into(),
            ));
        }
    };
    let output = crate::cards::render_card(&req.platform, &card).map_err(|e| bad(e.to_string()))?;
    // Beside the render: how much of the platform's limit it takes.
    let size = crate::cards::render::size_use(&req.platform, &output);
    Ok(Json(
        json!({ "platform": req.platform, "card": card, "output": output, "size": size }),
    ))
}
