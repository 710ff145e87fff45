//! A store that is opened again after a write error, so perch recovers from a full disk
//! by itself.
//!
//! Why: sled keeps the first I/O error its log writer meets ("hit error while writing
//! iobuf") and fails every later call with it, for good — after space came back, perch
//! kept answering 503 until it was restarted. This layer sits between perch and the
//! backend: on a store I/O error it takes the backend out of service, waits until no
//! call holds it any more (so its files and lock are released), and opens it again
//! from disk — once a second until that succeeds. Opening is what a restart does: the
//! last durable state, plus the ingest log's acknowledged events replayed, so nothing
//! acknowledged is lost. While the backend is out, every call fails with a clear I/O
//! error: new events get 503, the router and the outbox retry later.
//!
//! Flow: journal, router, outbox, bots → **reopening** → backend (sled).

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// Opens the backend (blocking: it reads and repairs the store).
pub type Opener = Arc<dyn Fn() -> StoreResult<Arc<dyn Store>> + Send + Sync>;

/// How often a reopen is tried while it fails.
const RETRY: Duration = Duration::from_secs(1);
/// How long a reopen waits for calls in flight to let go of the broken backend.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

pub struct Reopening {
    /// The backend in service; `None` while it is being reopened. A std lock: held
    /// only to clone or swap the `Arc`, never across an await.
    current: RwLock<Option<Arc<dyn Store>>>,
    open: Opener,
    /// A reopen is under way (one at a time).
    reopening: AtomicBool,
    this: Weak<Reopening>,
}

impl Reopening {
    pub fn new(store: Arc<dyn Store>, open: Opener) -> Arc<Self> {
        Arc::new_cyclic(|this| Reopening {
            current: RwLock::new(Some(store)),
            open,
            reopening: AtomicBool::new(false),
            this: this.clone(),
        })
    }

    fn get(&self) -> StoreResult<Arc<dyn Store>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Io("the store is being reopened after a write error".into()))
    }

    /// Pass `r` on; an I/O error takes the backend out of service and starts a reopen.
    fn watch<T>(&self, r: StoreResult<T>) -> StoreResult<T> {
        if let Err(StoreError::Io(why)) = &r {
            self.reopen_soon(why);
        }
        r
    }

    fn reopen_soon(&self, why: &str) {
        if self.reopening.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(this) = self.this.upgrade() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.reopening.store(false, Ordering::SeqCst);
            return;
        };
        tracing::error!(error = %why, "store write failed: reopening the store once writes succeed again");
        rt.spawn(async move { this.reopen().await });
    }

    async fn reopen(self: Arc<Self>) {
        let broken = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(broken) = broken {
            // Calls in flight hold it for a moment; its files are released only when the
            // last of them lets go.
            let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
            while Arc::strong_count(&broken) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Dropping sled joins its flusher thread: off the async runtime.
            let _ = tokio::task::spawn_blocking(move || drop(broken)).await;
        }
        loop {
            let open = self.open.clone();
            match tokio::task::spawn_blocking(move || open()).await {
                Ok(Ok(store)) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(store);
                    self.reopening.store(false, Ordering::SeqCst);
                    tracing::info!("store reopened: writes succeed again");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?RETRY, "the store cannot be reopened yet")
                }
                Err(e) => tracing::warn!(error = %e, "reopening the store stopped"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Each call: the backend in service, the call, and `watch` on its result.
macro_rules! through {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let store = $self.get()?;
        $self.watch(store.$method($($arg),*).await)
    }};
}

#[async_trait]
impl Store for Reopening {
    async fn ingest(&self, event: &Event, dedupe_until: DateTime<Utc>) -> StoreResult<Ingested> {
        through!(self.ingest(event, dedupe_until))
    }
    async fn pending_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<EventId>)>> {
        through!(self.pending_lanes(after_lane, max_lanes, per_lane))
    }
    async fn event(&self, id: EventId) -> StoreResult<Option<JournalEntry>> {
        through!(self.event(id))
    }
    async fn complete_event(
        &self,
        event: &Event,
        fate: &Fate,
        items: &[OutboxItem],
    ) -> StoreResult<()> {
        through!(self.complete_event(event, fate, items))
    }
    async fn recent_events(
        &self,
        before: Option<EventId>,
        limit: usize,
    ) -> StoreResult<Vec<JournalEntry>> {
        through!(self.recent_events(before, limit))
    }
    async fn pending_count(&self) -> StoreResult<usize> {
        through!(self.pending_count())
    }
    async fn enqueue(&self, items: &[OutboxItem]) -> StoreResult<usize> {
        through!(self.enqueue(items))
    }
    async fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        through!(self.outbox_after(after, limit))
    }
    async fn outbox_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>> {
        through!(self.outbox_lanes(after_lane, max_lanes, per_lane))
    }
    async fn outbox_item(&self, lane: &str, key: &str) -> StoreResult<Option<OutboxItem>> {
        through!(self.outbox_item(lane, key))
    }
    async fn outbox_update(&self, item: &OutboxItem) -> StoreResult<()> {
        through!(self.outbox_update(item))
    }
    async fn outbox_delivered(&self, item: &OutboxItem, record: &SentRecord) -> StoreResult<()> {
        through!(self.outbox_delivered(item, record))
    }
    async fn record_sent(&self, record: &SentRecord) -> StoreResult<()> {
        through!(self.record_sent(record))
    }
    async fn outbox_dead(&self, letter: &DeadLetter) -> StoreResult<()> {
        through!(self.outbox_dead(letter))
    }
    async fn outbox_count(&self) -> StoreResult<usize> {
        through!(self.outbox_count())
    }
    async fn sent(&self, key: &str) -> StoreResult<Option<SentRecord>> {
        through!(self.sent(key))
    }
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        through!(self.dead_letters(limit))
    }
    async fn sent_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<SentRecord>> {
        through!(self.sent_after(after, limit))
    }
    async fn kv_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        through!(self.kv_after(after, limit))
    }
    async fn replay_dead(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<OutboxItem>> {
        through!(self.replay_dead(key, now))
    }
    async fn kv_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        through!(self.kv_get(ns, key))
    }
    async fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        through!(self.kv_put(ns, key, value))
    }
    async fn kv_delete(&self, ns: &str, key: &str) -> StoreResult<()> {
        through!(self.kv_delete(ns, key))
    }
    async fn kv_compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StoreResult<bool> {
        through!(self.kv_compare_and_swap(ns, key, expected, new))
    }
    async fn kv_scan(&self, ns: &str, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        through!(self.kv_scan(ns, prefix))
    }
    async fn flush(&self) -> StoreResult<()> {
        through!(self.flush())
    }
    async fn flush_journal(&self) -> StoreResult<()> {
        through!(self.flush_journal())
    }
    async fn sweep(&self, cutoffs: SweepCutoffs) -> StoreResult<SweepStats> {
        through!(self.sweep(cutoffs))
    }

    fn shared(&self) -> bool {
        self.get().is_ok_and(|s| s.shared())
    }

    fn announce(&self, topic: crate::live::Topic, about: &str) {
        if let Ok(s) = self.get() {
            s.announce(topic, about);
        }
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<crate::live::Notice>> {
        self.get().ok().and_then(|s| s.notices())
    }

    async fn hold_lanes(
        &self,
        queue: &str,
        holder: &str,
        lanes: &[String],
        ttl: std::time::Duration,
    ) -> StoreResult<Vec<String>> {
        through!(self.hold_lanes(queue, holder, lanes, ttl))
    }

    async fn release_lanes(&self, queue: &str, holder: &str, lanes: &[String]) -> StoreResult<()> {
        through!(self.release_lanes(queue, holder, lanes))
    }

    async fn take_rate_slot(
        &self,
        bucket: &str,
        interval: std::time::Duration,
        burst: u32,
    ) -> StoreResult<std::time::Duration> {
        through!(self.take_rate_slot(bucket, interval, burst))
    }
}
