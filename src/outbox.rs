//! The outbox: delivers queued operations through their connectors, exactly once.
//!
//! - **Durable.** Items live in the store until delivered or dead; after a crash the
//!   feeder finds them again. Each item's key (`<event>/<bot>/<index>`) is also the
//!   idempotency key sent to the platform, and delivered keys are remembered, so a
//!   retry after a crash never sends twice.
//! - **Ordered per chat.** One lane per (connector, chat); a retry waits in its lane, so
//!   later messages to that chat do not overtake it. Chats are delivered concurrently.
//! - **Polite.** Every attempt goes through the connector's rate limits
//!   (`crate::throttle`, shared with bots' awaited calls). When the platform says how
//!   long to wait (`Retry-After`, Feishu's reset header), that is the wait, plus a
//!   little jitter; exponential backoff with jitter (backon) only when it says nothing.
//! - **Bounded.** After `max_attempts` an item goes to the dead letters (replay via the
//!   admin API). Permanent errors go there at once.
//!
//! Flow: router → **outbox** → connector (out).

use crate::config::OutboxConfig;
use crate::connectors::{SendError, SharedConnector};
use crate::lanes::{LaneLimits, Lanes, Next};
use crate::store::{DeadLetter, OutboxItem, SentRecord, Store, StoreError, Waiting};
use crate::telemetry;
use backon::BackoffBuilder;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Deliveries the platform confirmed, by how far their record has come. A delivery is
/// never sent again while perch runs once it is here: a retry of the item writes the
/// record instead. Std mutexes, never held across an await.
#[derive(Default)]
struct Records {
    /// Written to the store, not yet made durable by a flush.
    unflushed: std::sync::Mutex<HashMap<String, SentRecord>>,
    /// Not in the store (the write or its flush failed: a full disk).
    unrecorded: std::sync::Mutex<HashMap<String, SentRecord>>,
    /// Rung after each write: `commit_deliveries` flushes.
    written: tokio::sync::Notify,
}

impl Records {
    fn written(&self, record: SentRecord) {
        lock(&self.unflushed).insert(record.key.clone(), record);
        self.written.notify_one();
    }
    fn failed(&self, record: SentRecord) {
        lock(&self.unrecorded).insert(record.key.clone(), record);
    }
    fn unrecorded(&self, key: &str) -> Option<SentRecord> {
        lock(&self.unrecorded).get(key).cloned()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make delivery records durable shortly after the platform confirmed them: one store
/// flush covers every record written since the previous one (group commit: no flush per
/// delivery, none while idle, back to back under load). Without it a record became
/// durable only with the store's own periodic flush, and a crash repeated every delivery
/// of the last half second or more. A failed flush puts its records back among the
/// unrecorded (and pauses deliveries): the store may come back without them.
async fn commit_deliveries(
    store: Arc<dyn Store>,
    records: Arc<Records>,
    health: Arc<crate::health::StoreHealth>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = records.written.notified() => {}
            _ = cancel.cancelled() => return,
        }
        let batch = std::mem::take(&mut *lock(&records.unflushed));
        if let Err(e) = store.flush().await {
            tracing::warn!(error = %e, records = batch.len(), "delivery records could not be made durable; kept in memory, deliveries paused");
            if health.failed(crate::health::Writer::Outbox, &e.to_string()) {
                telemetry::outbox_blocked(true);
            }
            lock(&records.unrecorded).extend(batch);
        }
    }
}

/// How often a paused outbox tries the store again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// A queued item as the outbox's lanes carry it: where it is (the store reads the item
/// itself when it is delivered).
#[derive(Debug, Clone)]
pub struct Queued {
    /// `OutboxItem::lane_key`.
    pub lane: String,
    pub key: String,
}

/// A wait in whole milliseconds, for the console (`Waiting`).
fn millis(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
}

/// Where queued items are offered to the outbox's lanes (keyed by outbox key).
pub type OutboxDoor = crate::lanes::Doorbell<String, Queued>;

/// The delay before retry number `attempt` (1-based): exponential with jitter.
pub fn backoff(config: &OutboxConfig, attempt: u32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(config.max_backoff)
}

/// The wait before the next attempt: what the platform asked for, plus up to 10 % (at
/// most 500 ms) of jitter so that items paused together do not return together;
/// exponential backoff for retry number `attempt` only when it asked for nothing.
pub fn retry_delay(config: &OutboxConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(wait) => {
            let spread = (wait / 10).min(Duration::from_millis(500));
            wait + spread.mul_f64(rand::random::<f64>())
        }
        None => backoff(config, attempt),
    }
}

/// What one attempt at an item came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Delivered or dead-lettered: off the queue.
    Finished,
    /// Try again at this instant.
    RetryAt(tokio::time::Instant),
}

pub struct Outbox {
    store: Arc<dyn Store>,
    connectors: HashMap<String, SharedConnector>,
    config: OutboxConfig,
    clock: crate::clock::SharedClock,
    /// Confirmed deliveries whose record is not durable yet.
    records: Arc<Records>,
    /// Whether the store takes writes; deliveries are paused while it does not.
    health: Arc<crate::health::StoreHealth>,
    /// When the store was last tested while deliveries were paused.
    last_probe: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Each connector's last delivery, good and bad (`/api/status`).
    connector_health: Arc<crate::health::ConnectorHealth>,
}

impl Outbox {
    pub fn new(
        store: Arc<dyn Store>,
        connectors: HashMap<String, SharedConnector>,
        config: OutboxConfig,
        clock: crate::clock::SharedClock,
        health: Arc<crate::health::StoreHealth>,
        connector_health: Arc<crate::health::ConnectorHealth>,
    ) -> Self {
        Outbox {
            store,
            connectors,
            config,
            clock,
            records: Default::default(),
            health,
            last_probe: Default::default(),
            connector_health,
        }
    }

    /// One attempt at `item`: delivered, dead, or to be tried again at an instant (the
    /// lane waits for it without holding a concurrency slot). Store errors are
    /// returned; the caller keeps the item queued and pauses deliveries (`Blocked`).
    pub async fn attempt(&self, mut item: OutboxItem) -> Result<Attempt, StoreError> {
        // Delivered, but the record could not be written (a full disk): write it now,
        // never send again.
        if let Some(record) = self.records.unrecorded(&item.key) {
            self.store.outbox_delivered(&item, &record).await?;
            lock(&self.records.unrecorded).remove(&item.key);
            self.records.written(record);
            return Ok(Attempt::Finished);
        }
        // Sent already, and still queued: a crash came between the two writes of
        // `outbox_delivered` (the store writes the sent record first). Finish it.
        if let Some(record) = self.store.sent(&item.key).await? {
            self.store.outbox_delivered(&item, &record).await?;
            return Ok(Attempt::Finished);
        }
        let Some(connector) = self.connectors.get(&item.connector) else {
            let why = format!(
                "connector `{}` is not configured (configured: {})",
                item.connector,
                self.connector_name_hint()
            );
            self.dead(item, why).await?;
            return Ok(Attempt::Finished);
        };
        // Not due yet (a retry after a restart), or the platform paused this chat or
        // the whole connector: wait without a slot.
        let due = (item.next_at - self.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        if !due.is_zero() {
            return Ok(Attempt::RetryAt(tokio::time::Instant::now() + due));
        }
        if let Some(until) = connector.paused_until(&item.op.lane_id()) {
            return Ok(Attempt::RetryAt(until));
        }
        let result = match tokio::time::timeout(
            self.config.attempt_timeout,
            connector.execute(&item.op, &item.key),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(SendError::retry(format!(
                "no answer within {:?}",
                self.config.attempt_timeout
            ))),
        };
        let now = self.clock.now();
        match &result {
            Ok(_) => self.connector_health.sent(&item.connector, now),
            Err(e) => self
                .connector_health
                .send_failed(&item.connector, now, &e.to_string()),
        }
        let (delay, reason, waiting) = match result {
            Ok(delivered) => {
                let now = self.clock.now();
                let record = SentRecord {
                    key: item.key.clone(),
                    connector: item.connector.clone(),
                    delivered,
                    at: now,
                };
                telemetry::delivery_attempt(&item.connector, "delivered");
                telemetry::delivered(
                    &item.connector,
                    (now - item.created_at).to_std().unwrap_or_default(),
                );
                if let Err(e) = self.store.outbox_delivered(&item, &record).await {
                    // Sent, not recorded: remember it here so that the retry of this
                    // item writes the record instead of sending again.
                    self.records.failed(record);
                    return Err(e);
                }
                self.records.written(record);
                return Ok(Attempt::Finished);
            }
            Err(SendError::Retry {
                reason,
                retry_after,
            }) => {
                item.attempts += 1;
                if item.attempts >= self.config.max_attempts {
                    let why = format!(
                        "gave up after {} attempts: {reason}",
                        self.config.max_attempts
                    );
                    self.dead(item, why).await?;
                    return Ok(Attempt::Finished);
                }
                telemetry::delivery_attempt(&item.connector, "retry");
                let delay = retry_delay(&self.config, item.attempts, retry_after);
                tracing::warn!(key = %item.key, connector = %item.connector, attempt = item.attempts, ?delay, %reason, "delivery failed, will retry");
                let waiting = match retry_after {
                    Some(wait) => Waiting::RetryAfter {
                        platform_wait_ms: millis(wait),
                    },
                    None => Waiting::Backoff {
                        attempt: item.attempts,
                    },
                };
                (delay, reason, waiting)
            }
            // The platform is busy, not the item: not counted against max_attempts.
            Err(SendError::RateLimited {
                reason,
                retry_after,
                ..
            }) => {
                telemetry::delivery_attempt(&item.connector, "rate_limited");
                let delay = retry_delay(&self.config, item.attempts.max(1), retry_after);
                tracing::info!(key = %item.key, connector = %item.connector, ?delay, %reason, "rate limited by the platform, will retry");
                let waiting = Waiting::RateLimit {
                    platform_wait_ms: retry_after.map(millis),
                };
                (delay, reason, waiting)
            }
            Err(e) => {
                self.dead(item, e.to_string()).await?;
                return Ok(Attempt::Finished);
            }
        };
        self.wait_then_retry(&mut item, delay, reason, waiting)
            .await?;
        Ok(Attempt::RetryAt(tokio::time::Instant::now() + delay))
    }

    /// Record when `item` is tried again and why.
    async fn wait_then_retry(
        &self,
        item: &mut OutboxItem,
        delay: Duration,
        reason: String,
        waiting: Waiting,
    ) -> Result<(), StoreError> {
        item.next_at = self.clock.now()
            + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(60));
        item.last_error = Some(reason);
        item.waiting = Some(waiting);
        self.store.outbox_update(item).await
    }

    fn has_unrecorded(&self, key: &str) -> bool {
        lock(&self.records.unrecorded).contains_key(key)
    }

    /// Why deliveries are paused (the store refuses writes), if they are.
    pub fn blocked_reason(&self) -> Option<String> {
        self.health.problem(crate::health::Writer::Outbox)
    }

    /// The store refused a write: pause every delivery until a write succeeds, so that
    /// nothing is sent that cannot be recorded (each would be sent again and again).
    fn block(&self, e: &StoreError) {
        if self
            .health
            .failed(crate::health::Writer::Outbox, &e.to_string())
        {
            tracing::error!(error = %e, "the store refuses writes: deliveries are paused until it accepts them again");
            telemetry::outbox_blocked(true);
        }
    }

    /// Whether this caller may test the store now (one test per `STORE_RETRY`).
    fn may_probe(&self) -> bool {
        let mut last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < STORE_RETRY) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn unblock(&self) {
        if self.health.ok(crate::health::Writer::Outbox) {
            tracing::info!("the store accepts writes again: deliveries resume");
            telemetry::outbox_blocked(false);
        }
    }

    fn connector_name_hint(&self) -> String {
        let mut names: Vec<&str> = self.connectors.keys().map(String::as_str).collect();
        names.sort();
        names.join(", ")
    }

    async fn dead(&self, item: OutboxItem, error: String) -> Result<(), StoreError> {
        tracing::error!(key = %item.key, connector = %item.connector, %error, "delivery failed for good; moved to dead letters");
        telemetry::delivery_attempt(&item.connector, "dead");
        let letter = DeadLetter {
            error,
            died_at: self.clock.now(),
            item,
        };
        self.store.outbox_dead(&letter).await
    }

    /// Start delivering: a feeder over the stored queue and one lane per chat.
    pub fn start(
        self: Arc<Self>,
        door: &OutboxDoor,
        cancel: CancellationToken,
    ) -> (Arc<Lanes<String, Queued>>, tokio::task::JoinHandle<()>) {
        // Weak: the lanes own this handler, so a strong reference back would be a cycle
        // that keeps the store (and its file lock) alive after shutdown.
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<Lanes<String, Queued>>>> = Arc::default();
        let handler = {
            let (this, slot) = (self.clone(), slot.clone());
            Arc::new(move |queued: Queued| {
                let (this, slot) = (this.clone(), slot.clone());
                Box::pin(async move {
                    let complete = |key: &String| {
                        if let Some(lanes) = slot.get().and_then(std::sync::Weak::upgrade) {
                            lanes.complete(key);
                        }
                    };
                    // Deliveries are paused while the store refuses writes. An item with
                    // a record to write still goes (that write is the test); otherwise
                    // one item a second rewrites itself unchanged to test the store.
                    let probe =
                        this.blocked_reason().is_some() && !this.has_unrecorded(&queued.key);
                    if probe && !this.may_probe() {
                        return Next::At(tokio::time::Instant::now() + STORE_RETRY, queued);
                    }
                    // Read the item now: it may have been delivered or dead-lettered since
                    // it was offered or scanned, and then there is nothing to do.
                    let result = match this.store.outbox_item(&queued.lane, &queued.key).await {
                        Ok(Some(item)) if probe => match this.store.outbox_update(&item).await {
                            Ok(()) => {
                                this.unblock();
                                this.attempt(item).await
                            }
                            Err(e) => Err(e),
                        },
                        Ok(Some(item)) => this.attempt(item).await,
                        Ok(None) => Ok(Attempt::Finished),
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(Attempt::Finished) => {
                            this.unblock();
                            complete(&queued.key);
                            Next::Done
                        }
                        Ok(Attempt::RetryAt(at)) => {
                            this.unblock();
                            Next::At(at, queued)
                        }
                        Err(e) => {
                            this.block(&e);
                            Next::At(tokio::time::Instant::now() + STORE_RETRY, queued)
                        }
                    }
                }) as futures::future::BoxFuture<'static, Next<Queued>>
            })
        };
        let limits = LaneLimits {
            concurrency: self.config.concurrency,
            max_in_flight: 10_000,
            max_per_lane: 32,
        };
        let lanes = Lanes::with_leases(
            limits,
            door,
            handler,
            crate::lanes::LaneLeases::for_store(&self.store, "outbox"),
        );
        let _ = slot.set(Arc::downgrade(&lanes));
        let store = self.store.clone();
        let committer = commit_deliveries(
            self.store.clone(),
            self.records.clone(),
            self.health.clone(),
            cancel.clone(),
        );
        let feed = lanes.clone().feed(
            move |after: Option<String>, max_lanes, per_lane| {
                let store = store.clone();
                async move {
                    let lanes = store
                        .outbox_lanes(after.as_deref(), max_lanes, per_lane)
                        .await?;
                    Ok::<_, StoreError>(
                        lanes
                            .into_iter()
                            .map(|(lane, keys)| {
                                let work = keys
                                    .into_iter()
                                    .map(|key| {
                                        let queued = Queued {
                                            lane: lane.clone(),
                                            key: key.clone(),
                                        };
                                        (key, queued)
                                    })
                                    .collect();
                                (lane, work)
                            })
                            .collect::<Vec<_>>(),
                    )
                }
            },
            cancel,
        );
        let feeder = tokio::spawn(async move {
            futures::join!(feed, committer);
        });
        (lanes, feeder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Told to wait 2 s at the fifth attempt, the wait is 2 s (and a little jitter), not
    /// the 16 s of exponential backoff from 1 s (nor the larger of the two).
    #[test]
    fn the_platforms_wait_is_the_wait() {
        let config = OutboxConfig::default();
        for attempt in 1..8 {
            let d = retry_delay(&config, attempt, Some(Duration::from_secs(2)));
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2200),
                "attempt {attempt}: {d:?}"
            );
        }
        let d = retry_delay(&config, 5, Some(Duration::from_secs(60)));
        assert!(d >= Duration::from_secs(60) && d <= Duration::from_millis(60_500));
        // Nothing said: exponential backoff (1 s doubling, with jitter).
        let d = retry_delay(&config, 5, None);
        assert!(d >= Duration::from_secs(16), "{d:?}");
    }
}
