//! The journal's front door: `Journal::accept` stores events and returns only once they
//! are durable, so an HTTP 2xx always means "this event survives a crash".
//!
//! **Group commit.** Each `accept` applies its writes (in memory) and then waits for a
//! `Store::flush_journal` that began after them. One committer task runs them back to
//! back: while one is running, every request that arrives queues up, and the next covers
//! them all. Many concurrent requests share one fsync; no request fsyncs alone. (On sled,
//! `flush_journal` writes the ingest log, `store::ingest_log`: one `write` + `fdatasync`.)
//!
//! Flow: connector (in) → **journal** → router.

use crate::clock::SharedClock;
use crate::event::{Event, EventId, Unstorable};
use crate::lanes::Doorbell;
use crate::router::PendingEvent;
use crate::store::{Ingested, Store, StoreError};
use crate::telemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Room for requests waiting on a flush; beyond that `accept` waits (backpressure).
const COMMIT_QUEUE: usize = 16 * 1024;

/// How often the committer yields to ready tasks before a flush under load.
const YIELDS_BEFORE_FLUSH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store could not make the event durable: {0}")]
    Flush(String),
    #[error("perch is shutting down")]
    ShuttingDown,
    /// The event could not be read back once stored (too deep, too large): refused
    /// before anything was stored. A 4xx at the HTTP edge.
    #[error("{0}")]
    Unstorable(#[from] Unstorable),
}

impl JournalError {
    /// The HTTP status this error is answered with: 4xx for events refused as they are,
    /// 503 for everything that may work on a retry.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            JournalError::Unstorable(Unstorable::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            JournalError::Unstorable(Unstorable::TooDeep { .. }) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// How an event was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// New, durable, queued for the router.
    New(EventId),
    /// A repeat of an earlier event (same connector and external id): not queued again.
    Duplicate(EventId),
}

impl Accepted {
    pub fn id(&self) -> EventId {
        match self {
            Accepted::New(id) | Accepted::Duplicate(id) => *id,
        }
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// The events whose `accept` is running: from before their first write until they have
/// been offered to the router.
///
/// Why: the router's scans may find an event's pending entry while its ingest is still
/// running. Such an event is then handled where the scan put it, after its ingest ends
/// (`wait_for`), and its offer finds it in flight and adds nothing. So an offered event
/// was never handled by a scan before, and the router takes it without reading the
/// store.
#[derive(Default)]
pub struct Ingesting {
    ids: std::sync::Mutex<std::collections::HashSet<EventId>>,
    /// Tasks in `wait_for`: only then does an ingest's end need to wake anyone.
    waiting: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

impl Ingesting {
    fn ids(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<EventId>> {
        // A poisoned lock only means a panic elsewhere; the set is still whole.
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark `ids` as being ingested until the returned guard is dropped.
    fn start(&self, ids: Vec<EventId>) -> IngestGuard<'_> {
        self.ids().extend(ids.iter().copied());
        IngestGuard { set: self, ids }
    }

    /// Wait until `id` is not being ingested (at once if it is not).
    pub async fn wait_for(&self, id: EventId) {
        use std::sync::atomic::Ordering::SeqCst;
        self.waiting.fetch_add(1, SeqCst);
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.ids().contains(&id) {
                break;
            }
            ended.await;
        }
        self.waiting.fetch_sub(1, SeqCst);
    }
}

/// Ends the ingests it names, on every way out of `accept`.
struct IngestGuard<'a> {
    set: &'a Ingesting,
    ids: Vec<EventId>,
}

impl Drop for IngestGuard<'_> {
    fn drop(&mut self) {
        {
            let mut ids = self.set.ids();
            for id in &self.ids {
                ids.remove(id);
            }
        }
        if self.set.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.set.ended.notify_waiters();
        }
    }
}

#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn Store>,
    commits: mpsc::Sender<Waiter>,
    /// Hands new events to the router.
    router: Arc<Doorbell<EventId, PendingEvent>>,
    dedupe_window: Duration,
    clock: SharedClock,
    ingesting: Arc<Ingesting>,
    /// Whether ingest writes succeed (shared with the outbox, read by `/healthz`).
    health: Arc<crate::health::StoreHealth>,
    /// Told of each new event once durable (the console's live list).
    feed: Arc<crate::live::EventFeed>,
    /// Each connector's last ingest, good and bad (`/api/status`).
    connector_health: Arc<crate::health::ConnectorHealth>,
}

impl Journal {
    /// Start the committer task. It ends when `cancel` fires (after a last flush for
    /// whoever is waiting) or when every `Journal` clone is dropped.
    pub fn start(
        store: Arc<dyn Store>,
        dedupe_window: Duration,
        clock: SharedClock,
        router: Arc<Doorbell<EventId, PendingEvent>>,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let task = tokio::spawn(run_committer(store.clone(), rx, cancel));
        let journal = Journal {
            feed: crate::live::EventFeed::new(store.clone()),
            store,
            commits: tx,
            router,
            dedupe_window,
            clock,
            ingesting: Arc::default(),
            health: Arc::default(),
            connector_health: Arc::default(),
        };
        (journal, task)
    }

    /// Whether perch can store right now (shared by the journal and the outbox).
    pub fn health(&self) -> Arc<crate::health::StoreHealth> {
        self.health.clone()
    }

    /// Where changed journal entries are announced (the router announces fates here).
    pub fn feed(&self) -> Arc<crate::live::EventFeed> {
        self.feed.clone()
    }

    /// Each connector's last success and failure (shared with the outbox and the
    /// inbound route, read by `/api/status`).
    pub fn connector_health(&self) -> Arc<crate::health::ConnectorHealth> {
        self.connector_health.clone()
    }

    /// The events being accepted right now (for the router).
    pub fn ingesting(&self) -> Arc<Ingesting> {
        self.ingesting.clone()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Store `events` durably (deduplicating by connector and external id) and queue
    /// the new ones for the router. Returns when they are on disk.
    pub async fn accept(&self, events: Vec<Event>) -> Result<Vec<Accepted>, JournalError> {
        use crate::health::Writer;
        // Per connector, for its health record (one request is usually one connector).
        let mut per_connector: Vec<(String, u64)> = Vec::new();
        for e in &events {
            match per_connector.iter_mut().find(|(c, _)| *c == e.connector) {
                Some((_, n)) => *n += 1,
                None => per_connector.push((e.connector.clone(), 1)),
            }
        }
        let result = self.accept_inner(events).await;
        let now = self.clock.now();
        for (connector, count) in &per_connector {
            match &result {
                Ok(_) => self.connector_health.ingested(connector, now, *count),
                Err(e) => self
                    .connector_health
                    .ingest_failed(connector, now, &e.to_string()),
            }
        }
        match &result {
            Ok(_) => {
                if self.health.ok(Writer::Ingest) {
                    tracing::info!("the store accepts events again");
                }
            }
            Err(e @ (JournalError::Store(_) | JournalError::Flush(_))) => {
                if self.health.failed(Writer::Ingest, &e.to_string()) {
                    tracing::error!(error = %e, "the store refuses events: answering 503 until it accepts them again");
                }
            }
            Err(_) => {}
        }
        result
    }

    async fn accept_inner(&self, events: Vec<Event>) -> Result<Vec<Accepted>, JournalError> {
        let window =
            chrono::Duration::from_std(self.dedupe_window).unwrap_or(chrono::Duration::hours(8));
        // Whatever is acknowledged must be readable back (and replayable from the ingest
        // log): refuse the whole request before storing any of it.
        for event in &events {
            event.check_storable()?;
        }
        let mut out = Vec::with_capacity(events.len());
        let _ingesting = self.ingesting.start(events.iter().map(|e| e.id).collect());
        for event in &events {
            let until = self.clock.now().max(event.received_at) + window;
            out.push(match self.store.ingest(event, until).await? {
                Ingested::Accepted => Accepted::New(event.id),
                Ingested::Duplicate { original } => Accepted::Duplicate(original),
            });
        }
        // Duplicates wait too: the original may not be durable yet.
        self.durable().await?;
        for (event, a) in events.iter().zip(&out) {
            telemetry::event_received(&event.connector, matches!(a, Accepted::New(_)));
            if let Accepted::New(id) = a {
                self.feed.changed(*id);
            }
        }
        // The router gets the new events whole: it need not read them back.
        let new = events
            .into_iter()
            .zip(&out)
            .filter(|(_, a)| matches!(a, Accepted::New(_)))
            .map(|(e, _)| (e.id, e.lane_key(), PendingEvent::Offered(Box::new(e))));
        self.router.offer(new.collect::<Vec<_>>()).await;
        Ok(out)
    }

    /// Wait for a group commit that starts after this call: every event ingested before
    /// it is then durable.
    async fn durable(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send(tx)
            .await
            .map_err(|_| JournalError::ShuttingDown)?;
        rx.await
            .map_err(|_| JournalError::ShuttingDown)?
            .map_err(JournalError::Flush)
    }
}

async fn run_committer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Waiter>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::new();
    let mut last_batch = 0;
    loop {
        let first = tokio::select! {
            w = rx.recv() => w,
            _ = cancel.cancelled() => {
                // Refuse new waiters, then answer those already queued with a last flush.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        // Under concurrent load (the last flush covered several requests), let the
        // tasks that are ready run first: requests already read from their sockets
        // join this flush instead of the next one. No timer, so a lone request is not
        // held back, and the wait is one pass over the ready tasks.
        if last_batch > 1 {
            for _ in 0..YIELDS_BEFORE_FLUSH {
                tokio::task::yield_now().await;
            }
        }
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let started = std::time::Instant::now();
        let result = store.flush_journal().await.map_err(|e| e.to_string());
        telemetry::journal_flush(batch.len(), started.elapsed());
        last_batch = batch.len();
        if let Err(e) = &result {
            tracing::error!(error = %e, waiting = batch.len(), "journal flush failed");
        }
        for w in batch.drain(..) {
            let _ = w.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_for_returns_once_the_ingest_has_ended() {
        let set = Arc::new(Ingesting::default());
        let (a, b) = (EventId::new(), EventId::new());
        // Not being ingested: no wait at all.
        set.wait_for(a).await;
        let guard = set.start(vec![a, b]);
        let waiter = tokio::spawn({
            let set = set.clone();
            async move { set.wait_for(b).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "b is still being ingested");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes when the ingest ends")
            .expect("waiter task");
        assert!(set.ids().is_empty());
    }
}
