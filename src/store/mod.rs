//! The store: everything perch must not lose, behind one trait.
//!
//! - the **journal** of accepted events, each with its fate, and the set still pending;
//! - **dedupe keys** `(connector, external id)` with an expiry, so platform retries are
//!   answered but not processed twice;
//! - the **outbox** of operations waiting to be delivered, the record of what was sent
//!   (so an operation is never sent twice), and the **dead letters**;
//! - a namespaced **key-value** space for bot state and connector data (web-chat history).
//!
//! Writes are applied in memory at once and made durable by `flush`; the journal's group
//! commit (`crate::journal`) calls `flush_journal` once for many concurrent requests.
//! `sled_store::SledStore` is the embedded backend (the default, one process);
//! `postgres::PostgresStore` lets several replicas share one PostgreSQL. `conformance`
//! is the test suite every backend must pass.

#[cfg(test)]
mod conformance;
pub(crate) mod ingest_log;
pub(crate) mod pg_live;
pub(crate) mod postgres;
pub(crate) mod reopening;
pub(crate) mod sled_families;
pub(crate) mod sled_store;
pub(crate) mod transfer;

use crate::action::{Delivered, Operation};
use crate::event::{Event, EventId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub(crate) use postgres::PostgresStore;
pub(crate) use sled_store::SledStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    #[error("stored record could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The answer to `Store::ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// New: stored and pending.
    Accepted,
    /// Seen before within the dedupe window; `original` is the event stored then.
    Duplicate { original: EventId },
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Fate {
    /// Accepted, not yet handled by the router.
    Pending,
    /// Handled: these bots ran; `actions` operations were queued.
    Routed {
        bots: Vec<String>,
        actions: usize,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failures: Vec<BotFailure>,
        /// For a card click: the toast / replacement card the bot answered with, which
        /// the platform's HTTP answer carries (`crate::clicks`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<crate::action::ClickAnswer>,
    },
    /// No route matched.
    Unrouted,
    /// The router itself could not handle it.
    Failed { error: String },
}

/// One bot's error while handling an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BotFailure {
    pub bot: String,
    pub error: String,
}

/// An event with its fate, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JournalEntry {
    pub event: Event,
    pub fate: Fate,
}

/// The bot whose action an outbox key belongs to (`None` for the router's own hints and
/// keys of other shapes).
pub(crate) fn key_bot(key: &str) -> Option<&str> {
    let parts: Vec<&str> = key.splitn(3, '/').collect();
    match parts.as_slice() {
        ["once", bot, _] if !bot.is_empty() => Some(bot),
        [_, bot, index] if !bot.is_empty() && *bot != "router" && !index.contains('/') => Some(bot),
        _ => None,
    }
}

/// One operation waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxItem {
    /// Unique and deterministic: `<event id>/<bot>/<action index>` for bot actions, so
    /// re-running a bot after a crash queues nothing new, or `once/<bot>/<key>` for
    /// `Action::Once`. Also the idempotency key the connector sends to the platform.
    /// `key_bot` reads the bot back.
    pub key: String,
    pub connector: String,
    /// The operation (`send`, `update`, `create_chat`, `add_members`), tagged by `op`.
    #[schema(value_type = Object)]
    pub op: Operation,
    pub attempts: u32,
    /// Not to be tried before this time (backoff, Retry-After).
    pub next_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why it waits until `next_at` (after a failed or refused attempt); `None` for a
    /// new item. Shown by the console beside the delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

/// Why a queued operation is not tried before its `next_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Waiting {
    /// The platform said "too many requests"; `platform_wait_ms` is the wait it asked
    /// for (`Retry-After` or its own reset header), if it said one.
    RateLimit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform_wait_ms: Option<u64>,
    },
    /// The attempt failed and the platform asked to retry after this long.
    RetryAfter { platform_wait_ms: u64 },
    /// The attempt failed and the platform said nothing: exponential backoff, attempt n.
    Backoff { attempt: u32 },
}

impl OutboxItem {
    pub fn new(key: String, connector: String, op: Operation, now: DateTime<Utc>) -> Self {
        OutboxItem {
            key,
            connector,
            op,
            attempts: 0,
            next_at: now,
            created_at: now,
            last_error: None,
            waiting: None,
        }
    }
    /// Per-chat lane: operations of one chat are delivered in order.
    pub fn lane_key(&self) -> String {
        format!("{}/{}", self.connector, self.op.lane_id())
    }
}

/// A delivered operation, kept for the dedupe window so it is never sent again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SentRecord {
    pub key: String,
    pub connector: String,
    pub delivered: Delivered,
    pub at: DateTime<Utc>,
}

/// An operation that failed for good, kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub item: OutboxItem,
    pub error: String,
    pub died_at: DateTime<Utc>,
}

/// One key-value entry: namespace, key, value.
pub type KvEntry = (String, String, Vec<u8>);

/// What `Store::sweep` may drop.
#[derive(Debug, Clone, Copy)]
pub struct SweepCutoffs {
    /// Sent records older than this.
    pub sent_before: DateTime<Utc>,
    /// Journal entries received before this (never pending ones), with their dedupe
    /// keys: the journal's retention is at least the dedupe window, so those have
    /// expired.
    pub journal_before: DateTime<Utc>,
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepStats {
    pub dedupe_keys: usize,
    pub sent_records: usize,
    pub events: usize,
}

/// The storage backend. Every method is atomic on its own; `flush` makes everything
/// applied before it durable.
///
/// Queues (pending events, the outbox) are readable **by lane** (one lane per chat):
/// the router and the outbox take the first few items of each lane, and skip a busy
/// chat with one seek instead of reading its whole backlog.
///
/// A backend of your own runs perch with `perch::Perch::start_with_store(config,
/// Arc::new(MyStore::open(..)?), clock)`; it must keep the promises each method states
/// (perch's own backends are checked against one conformance suite). Bots reach the
/// key-value part through their context. The promises, seen through the embedded
/// backend:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use perch::Store;
/// let store = perch::testing::temporary_store();
/// store.kv_put("bot/standup", "ou_alice", b"release notes").await.unwrap();
/// store.flush().await.unwrap(); // durable from here on
/// let got = store.kv_get("bot/standup", "ou_alice").await.unwrap();
/// assert_eq!(got.as_deref(), Some(&b"release notes"[..]));
///
/// // Compare-and-swap is exact: a stale expectation changes nothing.
/// let stale = store.kv_compare_and_swap("bot/standup", "ou_alice", Some(b"old"), Some(b"x"));
/// assert!(!stale.await.unwrap());
/// let fresh = store.kv_compare_and_swap("bot/standup", "ou_alice", Some(b"release notes"), None);
/// assert!(fresh.await.unwrap());
/// assert_eq!(store.kv_get("bot/standup", "ou_alice").await.unwrap(), None);
/// # }
/// ```
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- journal ----------------------------------------------------------------
    /// Store a new event as pending unless `(connector, external_id)` was seen before
    /// and has not expired. Events without an external id are never duplicates.
    async fn ingest(&self, event: &Event, dedupe_until: DateTime<Utc>) -> StoreResult<Ingested>;
    /// Pending events grouped by lane, lanes in order after `after_lane`: at most
    /// `max_lanes` lanes, each with its first `per_lane` event ids in id order.
    async fn pending_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<EventId>)>>;
    /// The event with its fate; `None` if it is not stored (or its ingest is still
    /// running).
    async fn event(&self, id: EventId) -> StoreResult<Option<JournalEntry>>;
    /// Atomically: record the fate of the stored `event`, drop it from pending, and
    /// queue `items` (skipping keys already queued or already sent). Only while it is
    /// pending: once a fate is recorded, a later call changes nothing and queues nothing
    /// (the first fate stands against a replica that was frozen past its lane lease and
    /// finishes late what another replica finished meanwhile).
    async fn complete_event(
        &self,
        event: &Event,
        fate: &Fate,
        items: &[OutboxItem],
    ) -> StoreResult<()>;
    /// Journal entries, newest first, older than `before` if given.
    async fn recent_events(
        &self,
        before: Option<EventId>,
        limit: usize,
    ) -> StoreResult<Vec<JournalEntry>>;
    async fn pending_count(&self) -> StoreResult<usize>;

    // ---- outbox -----------------------------------------------------------------
    /// Queue items (skipping keys already queued or already sent). Returns how many
    /// were new.
    async fn enqueue(&self, items: &[OutboxItem]) -> StoreResult<usize>;
    /// Queued items in key order, starting after `after` (for listing).
    async fn outbox_after(&self, after: Option<&str>, limit: usize)
    -> StoreResult<Vec<OutboxItem>>;
    /// Queued item keys grouped by lane, like `pending_lanes`.
    async fn outbox_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>>;
    /// One item of `lane` (`OutboxItem::lane_key`), if it is still queued.
    async fn outbox_item(&self, lane: &str, key: &str) -> StoreResult<Option<OutboxItem>>;
    /// Save an item's attempts, next time and last error.
    async fn outbox_update(&self, item: &OutboxItem) -> StoreResult<()>;
    /// The item was delivered: drop it from the queue and remember it as sent.
    async fn outbox_delivered(&self, item: &OutboxItem, record: &SentRecord) -> StoreResult<()>;
    /// Remember an operation carried out without the queue (an awaited call) as sent.
    async fn record_sent(&self, record: &SentRecord) -> StoreResult<()>;
    /// The item failed for good: move it to the dead letters. Only while it is queued:
    /// an item delivered meanwhile (by another replica, after a frozen one's lease
    /// passed) is not made a dead letter, which a replay would send again.
    async fn outbox_dead(&self, letter: &DeadLetter) -> StoreResult<()>;
    async fn outbox_count(&self) -> StoreResult<usize>;
    async fn sent(&self, key: &str) -> StoreResult<Option<SentRecord>>;
    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>>;
    /// Sent records in key order, after `after` (for `perch export`).
    async fn sent_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<SentRecord>>;
    /// Move a dead letter back to the queue with its attempts reset. `None` if there is
    /// no dead letter with that key.
    async fn replay_dead(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<OutboxItem>>;

    // ---- key-value --------------------------------------------------------------
    async fn kv_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>>;
    async fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()>;
    async fn kv_delete(&self, ns: &str, key: &str) -> StoreResult<()>;
    /// Set `key` to `new` only if it currently holds `expected` (`None` = absent).
    /// Returns whether it was set.
    async fn kv_compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StoreResult<bool>;
    /// All entries of `ns` whose key starts with `prefix`, in key order.
    async fn kv_scan(&self, ns: &str, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Entries of every namespace as `(namespace, key, value)`, in `(namespace, key)`
    /// order, after `after` (for `perch export`).
    async fn kv_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>>;

    // ---- upkeep -----------------------------------------------------------------
    /// Make every write applied so far durable.
    async fn flush(&self) -> StoreResult<()>;
    /// Make every `ingest` applied so far durable: the journal's group commit. A backend
    /// that logs ingests on their own (sled: `ingest_log`) makes this much cheaper than
    /// `flush`; by default it is `flush`.
    async fn flush_journal(&self) -> StoreResult<()> {
        self.flush().await
    }
    /// Drop what has aged out (see `SweepCutoffs`).
    async fn sweep(&self, cutoffs: SweepCutoffs) -> StoreResult<SweepStats>;

    // ---- replicas ---------------------------------------------------------------
    /// Whether other perch processes share this store (then lanes are leased:
    /// `hold_lanes`). The embedded store belongs to one process.
    fn shared(&self) -> bool {
        false
    }
    /// Claim or renew, for `holder`, the leases of `lanes` of queue `queue` (`"router"`,
    /// `"outbox"`): a lane is granted when it is free, already `holder`'s, or its lease
    /// expired. Each granted lease runs `ttl` from the store's clock. Returns the lanes
    /// granted; only their items may be handled by `holder`, so one chat is handled by
    /// one replica at a time, in order. A replica that dies stops renewing, and its
    /// lanes pass to another after `ttl`. A store that is not `shared` grants all.
    async fn hold_lanes(
        &self,
        queue: &str,
        holder: &str,
        lanes: &[String],
        ttl: std::time::Duration,
    ) -> StoreResult<Vec<String>> {
        let _ = (queue, holder, ttl);
        Ok(lanes.to_vec())
    }
    /// Reserve the next slot of the shared rate bucket `bucket` (a connector's quota, or
    /// one chat's), which allows one operation per `interval` with bursts of `burst`;
    /// returns how long to wait before using the slot (zero: now). Every replica takes
    /// its slots from the same bucket, so a quota holds across replicas instead of being
    /// multiplied by their number. The slot is spent even if the caller then gives up.
    /// A store that is not `shared` keeps no buckets (its one process rate-limits on its
    /// own, `crate::throttle`), and answers zero.
    async fn take_rate_slot(
        &self,
        bucket: &str,
        interval: std::time::Duration,
        burst: u32,
    ) -> StoreResult<std::time::Duration> {
        let _ = (bucket, interval, burst);
        Ok(std::time::Duration::ZERO)
    }
    /// Tell the other replicas sharing this store that something of `topic` changed
    /// (`crate::live`); call it once the change is stored. Never blocks: a notice that
    /// cannot be sent at once becomes a `Notice::Resync` later. A store that is not
    /// `shared` has nobody to tell.
    fn announce(&self, topic: crate::live::Topic, about: &str) {
        let _ = (topic, about);
    }
    /// What the other replicas announce (never this replica's own notices); `None` for a
    /// store that is not `shared`.
    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<crate::live::Notice>> {
        None
    }
    /// Give up `holder`'s leases of `lanes` (it has nothing left in flight there), so
    /// another replica may take them at once.
    async fn release_lanes(&self, queue: &str, holder: &str, lanes: &[String]) -> StoreResult<()> {
        let _ = (queue, holder, lanes);
        Ok(())
    }
}
