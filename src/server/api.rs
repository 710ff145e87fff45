//! The admin API under `/api`: status, events with their fate, the outbox, dead letters
//! and replay, card templates and card previews. When `server.admin_token` is set every call needs
//! `Authorization: Bearer <token>` (compared in constant time).
//!
//! Each handler's `#[utoipa::path]` is its entry in the OpenAPI document
//! (`super::openapi`); `routes!` mounts handler and entry together.

use super::ApiError;
use super::openapi::ErrorBody;
use crate::auth::Viewer;
use crate::event::EventId;
use crate::runtime::Shared;
use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The refusal every admin route documents (its OpenAPI entry only: never built).
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "no admin token and no admin signed in")]
#[allow(dead_code)]
pub(super) struct NotAdmin(ErrorBody);

/// The routes under `/api`. With `shared`, the admin routes are behind `require_token`;
/// without (`super::openapi::document`), the same routes only give their documentation.
pub fn routes(shared: Option<Shared>) -> OpenApiRouter<Shared> {
    let admin = OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(events))
        .routes(routes!(event_stream))
        .routes(routes!(event))
        .routes(routes!(event_deliveries))
        .routes(routes!(outbox))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
        .routes(routes!(replay_all))
        .routes(routes!(sent))
        .routes(routes!(schedules))
        .routes(routes!(super::bots_page::bots))
        .routes(routes!(charts))
        .routes(routes!(super::bots_page::items))
        .routes(routes!(super::bots_page::press))
        .routes(routes!(cards))
        .routes(routes!(render_card))
        .routes(routes!(super::console::send_test_render));
    let admin = match shared {
        Some(shared) => admin.layer(axum::middleware::from_fn_with_state(shared, require_token)),
        None => admin,
    };
    admin
        // After the layer: a bot signs with its own secret, not the admin token; the
        // document is public (see `openapi_json`).
        .routes(routes!(super::bot_actions::post_actions))
        .routes(routes!(super::openapi::openapi_json))
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

/// `GET /api/status`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusAnswer {
    /// perch's version.
    version: &'static str,
    started_at: chrono::DateTime<chrono::Utc>,
    /// Events accepted and not yet routed.
    pending_events: usize,
    /// Operations waiting in the outbox.
    outbox_depth: usize,
    dead_letters: usize,
    /// Empty while every write succeeds; else why events or deliveries are held.
    store_problems: Vec<String>,
    /// By name.
    connectors: Vec<ConnectorStatus>,
}

/// One connector in `/api/status`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConnectorStatus {
    name: String,
    kind: &'static str,
    /// What the connector tells of itself (a long connection's health).
    state: std::collections::BTreeMap<&'static str, String>,
    /// Its last success and failure, sending and taking in events.
    health: crate::health::ConnectorRecord,
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "perch's state and each connector's health", body = StatusAnswer),
        NotAdmin,
        (status = 503, description = "the store cannot be read", body = ErrorBody),
    )
)]
async fn status(State(s): State<Shared>) -> Result<Json<StatusAnswer>, ApiError> {
    let mut connectors: Vec<ConnectorStatus> = s
        .connectors
        .values()
        .map(|c| ConnectorStatus {
            name: c.name().to_string(),
            kind: c.kind(),
            state: c.describe(),
            health: s.journal.connector_health().of(c.name()),
        })
        .collect();
    connectors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(StatusAnswer {
        version: env!("CARGO_PKG_VERSION"),
        started_at: s.started_at,
        pending_events: s.store.pending_count().await.map_err(store_err)?,
        outbox_depth: s.store.outbox_count().await.map_err(store_err)?,
        dead_letters: s.store.dead_letters(10_000).await.map_err(store_err)?.len(),
        store_problems: s.journal.health().problems(),
        connectors,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Start after this entry (an event id for `/events`, an outbox key for `/outbox`).
    before: Option<String>,
    /// How many entries at most (clamped to 1..=1000).
    limit: Option<usize>,
}

/// The console's time filter: entries received at or after `since` and at or before
/// `until` (RFC 3339 times), either side open when absent.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TimeRange {
    /// Received at or after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Received at or before this RFC 3339 time.
    #[param(format = DateTime)]
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

/// `GET /api/events`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventsAnswer {
    /// Newest first.
    events: Vec<crate::store::JournalEntry>,
}

/// `GET /api/events?before=<id>&limit=N&since=<time>&until=<time>`: journal entries,
/// newest first.
#[utoipa::path(
    get,
    path = "/events",
    tag = "admin",
    security(("admin_token" = [])),
    params(Page, TimeRange),
    responses(
        (status = 200, description = "journal entries with their fate, newest first", body = EventsAnswer),
        (status = 400, description = "a bad `before`, `limit`, `since` or `until`", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read", body = ErrorBody),
    )
)]
async fn events(
    State(s): State<Shared>,
    Query(p): Query<Page>,
    Query(range): Query<TimeRange>,
) -> Result<Json<EventsAnswer>, ApiError> {
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
    Ok(Json(EventsAnswer { events: entries }))
}

/// How long one live stream lasts; the browser's `EventSource` reconnects by itself
/// (after the `retry` we send) and the console reloads the list, so the cap costs
/// nothing and bounds how long a graceful shutdown waits for an open tab.
const STREAM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// `GET /api/events/stream?since=<time>`: the console's live event list, over SSE.
/// First `hello`; then an `entry` (the journal entry as `/api/events/{id}` gives it)
/// each time an event is accepted or its fate recorded, if received at or after
/// `since`; `resync` when this listener fell behind and must reload the list.
#[utoipa::path(
    get,
    path = "/events/stream",
    tag = "admin",
    security(("admin_token" = [])),
    params(TimeRange),
    responses(
        (status = 200, description = "Server-sent events: `hello`, then `entry` (a journal entry) as events are accepted or their fate recorded, `resync` when the listener fell behind", content_type = "text/event-stream", body = String),
        (status = 400, description = "a bad `since` or `until`", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
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
                Ok(crate::live::FeedItem::Resync) => Some(Ok(SseEvent::default()
                    .event("resync")
                    .data(json!({ "missed": "unknown" }).to_string()))),
                Ok(crate::live::FeedItem::Changed(id)) => match store.event(id).await {
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

#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "An event id (UUID)")),
    responses(
        (status = 200, description = "the journal entry", body = crate::store::JournalEntry),
        (status = 400, description = "not an event id", body = ErrorBody),
        (status = 404, description = "no such event in the journal", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn event(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<crate::store::JournalEntry>, ApiError> {
    let id = EventId::parse(&id).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("not an event id: {id:?}"))
    })?;
    match s.store.event(id).await.map_err(store_err)? {
        Some(e) => Ok(Json(e)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no event {id} in the journal"),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/outbox",
    tag = "admin",
    security(("admin_token" = [])),
    params(Page),
    responses(
        (status = 200, description = "operations waiting to be delivered", body = OutboxAnswer),
        (status = 400, description = "a bad `limit`", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn outbox(
    State(s): State<Shared>,
    Query(p): Query<Page>,
) -> Result<Json<OutboxAnswer>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let items = s
        .store
        .outbox_after(p.before.as_deref(), limit)
        .await
        .map_err(store_err)?;
    Ok(Json(OutboxAnswer { items }))
}

#[utoipa::path(
    get,
    path = "/dead-letters",
    tag = "admin",
    security(("admin_token" = [])),
    params(Page),
    responses(
        (status = 200, description = "operations that will not be retried", body = DeadLettersAnswer),
        (status = 400, description = "a bad `limit`", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn dead_letters(
    State(s): State<Shared>,
    Query(p): Query<Page>,
) -> Result<Json<DeadLettersAnswer>, ApiError> {
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(DeadLettersAnswer {
        dead_letters: s.store.dead_letters(limit).await.map_err(store_err)?,
    }))
}

/// `GET /api/outbox`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct OutboxAnswer {
    /// Oldest key first.
    items: Vec<crate::store::OutboxItem>,
}

/// `GET /api/dead-letters`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLettersAnswer {
    dead_letters: Vec<crate::store::DeadLetter>,
}

/// `POST /api/dead-letters/replay`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplayAnswer {
    /// The letter, queued again.
    replayed: crate::store::OutboxItem,
}

/// `POST /api/dead-letters/replay-all`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplayAllAnswer {
    /// The outbox keys queued again.
    replayed: Vec<String>,
}

/// `GET /api/events/{id}/deliveries`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveriesAnswer {
    event_id: String,
    /// Still queued, with attempts, next try and last error.
    pending: Vec<crate::store::OutboxItem>,
    /// Delivered, with what the platform answered.
    sent: Vec<crate::store::SentRecord>,
    dead: Vec<crate::store::DeadLetter>,
}

/// `GET /api/schedules`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SchedulesAnswer {
    schedules: Vec<crate::scheduler::JobStatus>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct KeyQuery {
    /// An outbox key (`<event id>/<bot>/<index>`).
    key: String,
}

/// `POST /api/dead-letters/replay?key=<outbox key>`: queue a dead letter again. Answered
/// once the replay is durable (the store flushed), so a crash right after the answer
/// cannot put the letter back among the dead.
#[utoipa::path(
    post,
    path = "/dead-letters/replay",
    tag = "admin",
    security(("admin_token" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "the letter is queued again (durable)", body = ReplayAnswer),
        (status = 400, description = "`key` missing", body = ErrorBody),
        (status = 404, description = "no dead letter with that key", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn replay(
    State(s): State<Shared>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<ReplayAnswer>, ApiError> {
    match s
        .store
        .replay_dead(&q.key, s.clock.now())
        .await
        .map_err(store_err)?
    {
        Some(item) => {
            s.store.flush().await.map_err(store_err)?;
            s.outbox.ring();
            Ok(Json(ReplayAnswer { replayed: item }))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dead letter with key {:?}", q.key),
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ConnectorQuery {
    /// A configured connector's name.
    connector: String,
}

/// `POST /api/dead-letters/replay-all?connector=<name>`: queue every dead letter of one
/// connector again (after a fix). Idempotent: a letter already replayed is no longer
/// dead and is not queued twice. Answered once the replays are durable.
#[utoipa::path(
    post,
    path = "/dead-letters/replay-all",
    tag = "admin",
    security(("admin_token" = [])),
    params(ConnectorQuery),
    responses(
        (status = 200, description = "the connector's dead letters are queued again (durable)", body = ReplayAllAnswer),
        (status = 400, description = "`connector` missing", body = ErrorBody),
        (status = 404, description = "no such connector", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn replay_all(
    State(s): State<Shared>,
    Query(q): Query<ConnectorQuery>,
) -> Result<Json<ReplayAllAnswer>, ApiError> {
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
    Ok(Json(ReplayAllAnswer { replayed }))
}

/// `GET /api/events/{id}/deliveries`: what became of the event's actions, by outbox key
/// (`<event id>/<bot>/<index>`): still queued (with attempts, next try and last
/// error), delivered (with what the platform answered), or dead.
#[utoipa::path(
    get,
    path = "/events/{id}/deliveries",
    tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "An event id (UUID)")),
    responses(
        (status = 200, description = "what became of the event's actions, by outbox key", body = DeliveriesAnswer),
        (status = 400, description = "not an event id", body = ErrorBody),
        (status = 404, description = "no such event in the journal", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn event_deliveries(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<DeliveriesAnswer>, ApiError> {
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
    Ok(Json(DeliveriesAnswer {
        event_id: event_id.to_string(),
        pending,
        sent,
        dead,
    }))
}

/// `GET /api/sent?key=<outbox key>`: what a delivered operation produced.
#[utoipa::path(
    get,
    path = "/sent",
    tag = "admin",
    security(("admin_token" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "what a delivered operation produced", body = crate::store::SentRecord),
        (status = 400, description = "`key` missing", body = ErrorBody),
        (status = 404, description = "nothing sent under that key", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn sent(
    State(s): State<Shared>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<crate::store::SentRecord>, ApiError> {
    match s.store.sent(&q.key).await.map_err(store_err)? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("nothing sent under key {:?}", q.key),
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CountQuery {
    /// How many next fire times per job (clamped to 1..=100).
    count: Option<usize>,
}

/// `GET /api/schedules?count=N`: each job's cron, zone, next N fire times in its zone,
/// last fired slot, recent runs, missed and failed slots (`crate::scheduler::status`).
#[utoipa::path(
    get,
    path = "/schedules",
    tag = "admin",
    security(("admin_token" = [])),
    params(CountQuery),
    responses(
        (status = 200, description = "each job's cron, zone, next fire times, last slot, recent runs, missed and failed slots", body = SchedulesAnswer),
        (status = 400, description = "a bad `count`", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn schedules(
    State(s): State<Shared>,
    Query(q): Query<CountQuery>,
) -> Result<Json<SchedulesAnswer>, ApiError> {
    let count = q.count.unwrap_or(5).clamp(1, 100);
    let jobs = crate::scheduler::status(&s.schedules, s.store.as_ref(), s.clock.now(), count)
        .await
        .map_err(store_err)?;
    Ok(Json(SchedulesAnswer { schedules: jobs }))
}

/// `GET /api/cards`: the card templates with their sample data, and the platforms.
#[utoipa::path(
    get,
    path = "/cards",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{templates: [{name, file, sample}], platforms: [...]}`", body = Object),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn cards(State(s): State<Shared>) -> Json<Value> {
    let templates: Vec<Value> = s
        .cards
        .templates()
        .map(
            |t| json!({ "name": t.name, "file": t.path.display().to_string(), "sample": t.sample, "source": t.source }),
        )
        .collect();
    Json(json!({ "templates": templates, "platforms": crate::cards::PLATFORMS }))
}

/// The body of `POST /api/cards/render`: `template` (with optional `data` and `source`)
/// or `card`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RenderRequest {
    /// A card template's name (`GET /api/cards`).
    template: Option<String>,
    /// The template's data; its sample data when absent.
    data: Option<Value>,
    /// The template's text to compile instead of its file (the card studio's edit, never
    /// saved).
    source: Option<String>,
    /// A neutral card, instead of a template.
    card: Option<Value>,
    /// `feishu`, `slack`, `html`, … (`GET /api/cards`).
    platform: String,
}

/// `POST /api/cards/render {"template", "data"?, "source"?, "platform"}` (or `{"card",
/// "platform"}` for a neutral card): the neutral card and the platform's payload. Without
/// `data` the template's sample data is used; with `source` the template is compiled from
/// that text instead of its file (the card studio's edit, never saved). A template error
/// answers 400 with `line` and `column` beside the one-line `error`.
#[utoipa::path(
    post,
    path = "/cards/render",
    tag = "admin",
    security(("admin_token" = [])),
    request_body(content = RenderRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "`{platform, card, output, size}`: the neutral card and the platform's payload", body = Object),
        (status = 400, description = "a malformed body, an unknown template or platform, an invalid card; a template error adds `line` and `column`", body = ErrorBody),
        (status = 413, description = "body larger than `server.body_limit`", body = ErrorBody),
        NotAdmin,
        (status = 503, description = "the store cannot be read or written", body = ErrorBody),
    )
)]
async fn render_card(State(s): State<Shared>, body: bytes::Bytes) -> Response {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m).into_response();
    let req: RenderRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("bad request body: {e}")),
    };
    let card = match (req.template, req.card) {
        (Some(name), None) => {
            match super::console::studio_card(&s.cards, &name, req.source.as_deref(), req.data) {
                Ok(card) => card,
                Err(answer) => return answer,
            }
        }
        (None, Some(card)) => match crate::cards::Card::parse(&card) {
            Ok(card) => card,
            Err(m) => return bad(format!("invalid card: {m}")),
        },
        _ => return bad("give either `template` (with optional `data`) or `card`".into()),
    };
    let output = match crate::cards::render_card(&req.platform, &card) {
        Ok(o) => o,
        Err(e) => return bad(e.to_string()),
    };
    // Beside the render: how much of the platform's limit it takes.
    let size = crate::cards::render::size_use(&req.platform, &output);
    Json(json!({ "platform": req.platform, "card": card, "output": output, "size": size }))
        .into_response()
}

/// `GET /api/charts`: the last hour per minute, oldest first (`telemetry::recent`, fed by
/// the calls that feed `/metrics`): events in, deliveries out, dead letters, and
/// delivery latency (count, sum and maximum in milliseconds).
#[utoipa::path(
    get,
    path = "/charts",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"minutes\": [...]}`: per minute of the last hour, oldest first: events in, deliveries out, dead letters, delivery latency (count, sum, max ms)", body = Object),
        NotAdmin,
    )
)]
async fn charts() -> Json<Value> {
    let minutes = crate::telemetry::recent().last_hour(crate::telemetry::now_minute());
    Json(json!({ "minutes": minutes }))
}
