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
use crate::event::{Event, EventId};
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

#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn Store>,
    commits: mpsc::Sender<Waiter>,
    /// Hands new events to the router.
    router: Arc<Doorbell<EventId, PendingEvent>>,
    dedupe_window: Duration,
    clock: SharedClock,
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
            store,
            commits: tx,
            router,
            dedupe_window,
            clock,
        };
        (journal, task)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Store `events` durably (deduplicating by connector and external id) and queue
    /// the new ones for the router. Returns when they are on disk.
    pub async fn accept(&self, events: Vec<Event>) -> Result<Vec<Accepted>, JournalError> {
        let window =
            chrono::Duration::from_std(self.dedupe_window).unwrap_or(chrono::Duration::hours(8));
        let mut out = Vec::with_capacity(events.len());
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
