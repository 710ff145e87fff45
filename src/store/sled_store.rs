//! The embedded backend: sled `=0.34.7`, records under short key prefixes, a sled tree
//! per prefix (`super::sled_families`).
//!
//! | prefix | key                                   | value                          |
//! |--------|---------------------------------------|--------------------------------|
//! | `ev/`  | event id (16 bytes, time-ordered)     | `Event` JSON (never rewritten) |
//! | `fa/`  | event id                              | `Fate` JSON, once handled      |
//! | `pl/`  | lane `\0` event id                    | the event's `dd/` key rest (or empty): pending events by lane |
//! | `dd/`  | connector `\0` external id            | event id + expiry (ms, BE)     |
//! | `ol/`  | lane `\0` outbox key                  | `OutboxItem` JSON: queued items by lane |
//! | `se/`  | outbox key                            | `SentRecord` JSON              |
//! | `sx/`  | sent time (ms, BE) + outbox key       | empty: sent-record expiry index|
//! | `dl/`  | outbox key                            | `DeadLetter` JSON              |
//! | `kv/`  | namespace `\0` key                    | bytes                          |
//!
//! The `pl/` and `ol/` keys let the feeders read a queue lane by lane and jump past a
//! lane with one seek (lane keys never contain `\0`). An event is pending exactly while
//! its `pl/` entry exists; an item is queued exactly while its `ol/` entry exists, and
//! that entry holds the item, so queueing and delivering it write one key each (a
//! lookup names the item's lane, which every caller has: `OutboxItem::lane_key`).
//!
//! **Few keys per event.** sled costs several µs per written key, so an event writes
//! three at ingest (`pl/ dd/ ev/`) and two when handled (`fa/`, then `pl/` removed).
//! Dedupe keys have no expiry index of their own: `server.journal_retention` is at least
//! `server.dedupe_window` (config validation), so a key has expired by the time its
//! event ages out of the journal, and the sweep drops both together. (Stores written
//! before this layout also had `pe/` and `dx/` keys; `repair` drops them.)
//!
//! **Durability.** sled makes writes durable on `flush` and on its own timer (every
//! 500 ms). Acknowledged events do not wait for either: `ingest` also appends them to the
//! ingest log (`super::ingest_log`), which `flush_journal` writes and fsyncs, and which
//! `open` replays. Calls are synchronous but in-memory and short.
//!
//! **No sled transactions.** Every sled transaction or batch writes out and syncs sled's
//! current log buffer (`sync_file_range`), which made it cost as much as a flush
//! (bench/README.md). So each change is a sequence of single-key writes, ordered so that
//! whatever prefix of it a crash leaves is harmless or repaired by `repair` at open:
//!
//! - `ingest` (under its dedupe key's ingest lock): `pl/`, `dd/` (insert-if-absent; a
//!   duplicate then removes its `pl/` entry again), `ev/`. An event is *whole* once
//!   `ev/` is written, so a whole event always has its `pl/` entry or its fate. A dedupe key
//!   whose event is not whole does not make a retry a duplicate, a replay re-applies an
//!   event that is not whole, and `repair` drops a `pl/` entry without its event, with
//!   the dedupe key it names. The router may find a `pl/` entry whose ingest is still
//!   running: it waits for the ingest to end (`journal::Ingesting`), and if `event`
//!   then says there is no such event (a duplicate, or a failed ingest), leaves the
//!   entry alone.
//! - `complete_event`: outbox items, then `fa/`, then `pl/`.
//! - queueing an item: `ol/` (insert-if-absent); delivering: `se/ sx/`, then `ol/`
//!   removed. The outbox checks `se/` before sending, so an item that is both sent and
//!   queued is never sent again.
//!
//! One event is handled by one router lane and one item by one outbox lane at a time, so
//! the only keys written concurrently are `once/` outbox keys, which go through
//! insert-if-absent (compare-and-swap).
//!
//! (Stores written before items moved into `ol/` kept them under `ob/<key>` with an
//! empty `ol/` entry; `repair` moves them.)

use super::ingest_log::{self, IngestLog};
use super::sled_families::Families;
use super::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

const EV: &[u8] = b"ev/";
const FA: &[u8] = b"fa/";
/// Pending markers of the layout before `pl/` took their place (dropped by `repair`).
const LEGACY_PE: &[u8] = b"pe/";
const PL: &[u8] = b"pl/";
const OL: &[u8] = b"ol/";
const DD: &[u8] = b"dd/";
/// The dedupe expiry index of that layout (dropped by `repair`).
const LEGACY_DX: &[u8] = b"dx/";
/// Queued items by key, of the layout before `ol/` held them (moved by `repair`).
const LEGACY_OB: &[u8] = b"ob/";
const SE: &[u8] = b"se/";
const SX: &[u8] = b"sx/";
const DL: &[u8] = b"dl/";
const KV: &[u8] = b"kv/";

/// Ingest locks (`SledStore::ingest_stripes`): far more than the runtime has threads,
/// so two ingests of different dedupe keys rarely share one.
const INGEST_STRIPES: usize = 64;

pub struct SledStore {
    db: sled::Db,
    /// Every record, by its key's family (the calls of one `sled::Tree`).
    tree: Families,
    /// Where acknowledged events are made durable (`None` for a temporary store, which
    /// need not survive a crash; then `flush_journal` flushes sled).
    log: Option<Arc<IngestLog>>,
    /// Records appended since the last log write (held only to append or take them).
    log_buffer: Arc<std::sync::Mutex<Vec<u8>>>,
    /// The ingest locks: ingests of one dedupe key run one at a time, under the stripe
    /// its key hashes to, from the dedupe decision through the log append. So the log
    /// keeps sled's order for every key (a replay reaches the live run's outcome), and
    /// a dedupe key whose event is not whole is never one that an ingest is still
    /// writing. Ingests of different keys, and of events without an external id (no
    /// dedupe), run side by side: one lock for all of them kept a tokio worker blocked
    /// whenever both took an event at once.
    ingest_stripes: Box<[std::sync::Mutex<()>]>,
    // Counters kept in memory so `/metrics` needs no scan; rebuilt by one scan at open.
    pending: AtomicI64,
    queued: AtomicI64,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn dedupe_rest(connector: &str, external_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(connector.len() + 1 + external_id.len());
    k.extend_from_slice(connector.as_bytes());
    k.push(0);
    k.extend_from_slice(external_id.as_bytes());
    k
}

/// The first key after every key of the family `prefix` (`"xx/"` → `"xx0"`).
fn family_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn kv_key(ns: &str, k: &str) -> Vec<u8> {
    let mut out = key(KV, ns.as_bytes());
    out.push(0);
    out.extend_from_slice(k.as_bytes());
    out
}

/// Milliseconds as big-endian bytes, so byte order is time order (times are after 1970).
fn ms_be(t: DateTime<Utc>) -> [u8; 8] {
    (t.timestamp_millis().max(0) as u64).to_be_bytes()
}

fn be_ms(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a) as i64
}

fn io(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Io(other.to_string()),
    }
}

/// `<prefix><lane>\0<item>`: a lane-index key.
fn lane_key(prefix: &[u8], lane: &str, item: &[u8]) -> Vec<u8> {
    let mut k = key(prefix, lane.as_bytes());
    k.push(0);
    k.extend_from_slice(item);
    k
}

/// Where a queued item lives: `ol/<lane>\0<key>`.
fn queue_key(item: &OutboxItem) -> Vec<u8> {
    lane_key(OL, &item.lane_key(), item.key.as_bytes())
}

/// The item part of a lane-index key's rest (`<lane>\0<item>`).
fn lane_item(rest: &[u8]) -> StoreResult<&[u8]> {
    let sep = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| StoreError::Corrupt("lane index key without separator".into()))?;
    Ok(&rest[sep + 1..])
}

fn event_id_from(b: &[u8]) -> StoreResult<EventId> {
    uuid::Uuid::from_slice(b)
        .map(EventId)
        .map_err(|e| StoreError::Corrupt(format!("bad event id in key: {e}")))
}

impl SledStore {
    /// Open (or create) the store in `dir`. If sled reports corruption, the directory is
    /// moved aside to `<dir>.corrupt-<time>` and an empty store is started, with an error
    /// logged: perch keeps answering, and the old data is kept for recovery.
    ///
    /// `log_dir` holds the ingest log (`ingest_log`): what earlier runs left there is
    /// replayed into sled first, so every acknowledged event is back.
    pub fn open(dir: &Path, log_dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let db = match Self::open_sled(dir, cache_bytes) {
            Err(StoreError::Corrupt(why)) => {
                let aside =
                    dir.with_extension(format!("corrupt-{}", Utc::now().format("%Y%m%dT%H%M%S")));
                tracing::error!(dir = %dir.display(), aside = %aside.display(), %why, "store is corrupt; moved aside, starting empty (events still in the ingest log are replayed)");
                std::fs::rename(dir, &aside)
                    .map_err(|e| StoreError::Io(format!("moving corrupt store aside: {e}")))?;
                Self::open_sled(dir, cache_bytes)
            }
            other => other,
        }?;
        let (log, left, old_segments) = IngestLog::open(log_dir)?;
        let mut store = Self::from_db(db)?;
        let mut replayed = 0;
        for record in &left {
            let json = serde_json::to_vec(&record.event)?;
            if store.apply_ingest(&record.event, &json, record.dedupe_until, true)?
                == Ingested::Accepted
            {
                replayed += 1;
            }
        }
        if !left.is_empty() {
            store.db.flush().map_err(io)?;
            tracing::info!(records = left.len(), replayed, "ingest log replayed");
        }
        ingest_log::remove(&old_segments);
        store.log = Some(Arc::new(log));
        Ok(store)
    }

    fn open_sled(dir: &Path, cache_bytes: u64) -> StoreResult<sled::Db> {
        // sled flushes on its own timer; acknowledged events are durable through the
        // ingest log, so nothing on the hot path waits for a sled flush.
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(500))
            .open()
            .map_err(io)
    }

    /// A throw-away store that lives in a temporary directory. For tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn temporary() -> StoreResult<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(io)?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> StoreResult<Self> {
        let tree = Families::open(&db).map_err(io)?;
        let moved = tree.migrate_single_tree().map_err(io)?;
        if moved > 0 {
            tracing::info!(moved, "store: records moved to a tree per key family");
        }
        let store = SledStore {
            db,
            tree,
            log: None,
            log_buffer: Arc::new(std::sync::Mutex::new(Vec::new())),
            ingest_stripes: (0..INGEST_STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
            pending: AtomicI64::new(0),
            queued: AtomicI64::new(0),
        };
        let (pending, queued) = store.repair()?;
        store.pending.store(pending, Ordering::Relaxed);
        store.queued.store(queued, Ordering::Relaxed);
        Ok(store)
    }

    /// Finish the changes a crash cut short between their single-key writes (see the
    /// module docs), and count the pending events and queued items. Reads every pending
    /// event's and queued item's keys once.
    fn repair(&self) -> StoreResult<(i64, i64)> {
        let mut repaired = 0;
        // Keys of the layout before this one: `pl/` entries now mark pending events,
        // and dedupe keys go with their events.
        for legacy in [LEGACY_PE, LEGACY_DX] {
            for kv in self.tree.scan_prefix(legacy) {
                self.tree.remove(kv.map_err(io)?.0).map_err(io)?;
                repaired += 1;
            }
        }
        // Pending events: one with a fate was handled, and one that is not there was cut
        // short before it was stored (if it was acknowledged, the ingest log replays it
        // after this): drop the entry, and in the second case the dedupe key it wrote.
        let mut pending = 0;
        for kv in self.tree.scan_prefix(PL) {
            let (k, dedupe_rest) = kv.map_err(io)?;
            let id = &k[k.len().saturating_sub(16)..];
            if !self.tree.contains_key(key(EV, id)).map_err(io)? {
                if !dedupe_rest.is_empty() {
                    self.drop_dedupe_key(&key(DD, &dedupe_rest), id)?;
                }
                self.tree.remove(&k).map_err(io)?;
                repaired += 1;
            } else if self.tree.contains_key(key(FA, id)).map_err(io)? {
                self.tree.remove(&k).map_err(io)?;
                repaired += 1;
            } else {
                pending += 1;
            }
        }
        // Queued items of the layout before `ol/` held them: into their lane entries.
        for kv in self.tree.scan_prefix(LEGACY_OB) {
            let (k, raw) = kv.map_err(io)?;
            let item: OutboxItem = serde_json::from_slice(&raw)?;
            self.tree.insert(queue_key(&item), raw).map_err(io)?;
            self.tree.remove(&k).map_err(io)?;
            repaired += 1;
        }
        // Queued items: one already sent or dead leaves the queue (as does an empty entry,
        // an index of that old layout whose item was gone).
        let mut queued = 0;
        for kv in self.tree.scan_prefix(OL) {
            let (k, raw) = kv.map_err(io)?;
            let item_key = lane_item(&k[OL.len()..])?;
            let done = raw.is_empty()
                || self.tree.contains_key(key(SE, item_key)).map_err(io)?
                || self.tree.contains_key(key(DL, item_key)).map_err(io)?;
            if done {
                self.tree.remove(&k).map_err(io)?;
                repaired += 1;
            } else {
                queued += 1;
            }
        }
        if repaired > 0 {
            tracing::info!(repaired, "store: finished changes a crash had cut short");
        }
        Ok((pending, queued))
    }

    /// Remove the dedupe key `dd_key` if it still names event `id` (a later event with
    /// the same external id may have taken it over). Compare-and-swap: ingests of other
    /// events may write the key meanwhile. Whether it was removed.
    fn drop_dedupe_key(&self, dd_key: &[u8], id: &[u8]) -> StoreResult<bool> {
        let Some(value) = self.tree.get(dd_key).map_err(io)? else {
            return Ok(false);
        };
        if value.len() != 24 || &value[..16] != id {
            return Ok(false);
        }
        Ok(self
            .tree
            .compare_and_swap(dd_key, Some(value), None as Option<&[u8]>)
            .map_err(io)?
            .is_ok())
    }

    /// Whether an ingest's writes reached sled: its event, written last (after its
    /// lane-index entry and its dedupe key).
    fn is_whole(&self, id: &[u8]) -> StoreResult<bool> {
        self.tree.contains_key(key(EV, id)).map_err(io)
    }

    /// Store `event` (serialised as `entry`) unless it is a duplicate, and append it to
    /// the ingest log. `replay`: it comes from the log itself, so it is not appended
    /// again, and skipped if sled already has it.
    fn apply_ingest(
        &self,
        event: &Event,
        entry: &[u8],
        dedupe_until: DateTime<Utc>,
        replay: bool,
    ) -> StoreResult<Ingested> {
        let id = event.id.0.as_bytes();
        let pl_key = lane_key(PL, &event.lane_key(), id);
        let rest = event
            .external_id
            .as_ref()
            .map(|x| dedupe_rest(&event.connector, x));
        let now_ms = event.received_at.timestamp_millis();
        // A poisoned lock only means another ingest panicked; what it guards is in sled.
        let _stripe = rest.as_ref().map(|rest| {
            self.ingest_stripes[crc32fast::hash(rest) as usize % INGEST_STRIPES]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        });
        if replay && self.is_whole(id)? {
            return Ok(Ingested::Duplicate { original: event.id });
        }
        // Pending first and the event last (module docs): a crash in between leaves
        // nothing `repair` cannot undo.
        self.tree
            .insert(&pl_key, rest.as_deref().unwrap_or_default())
            .map_err(io)?;
        if let Some(rest) = &rest {
            let dd_key = key(DD, rest);
            let mut value = Vec::with_capacity(24);
            value.extend_from_slice(id);
            value.extend_from_slice(&ms_be(dedupe_until));
            // Claimed if free (one write); otherwise the key's holder decides.
            let taken = self
                .tree
                .compare_and_swap(&dd_key, None as Option<&[u8]>, Some(value.as_slice()))
                .map_err(io)?;
            if let Err(taken) = taken {
                if let Some(old) = taken.current
                    && old.len() == 24
                {
                    let original = event_id_from(&old[..16])?;
                    // Otherwise it expired, or an ingest a crash cut short left it: the
                    // key is taken over.
                    if be_ms(&old[16..24]) > now_ms
                        && original != event.id
                        && self.is_whole(&old[..16])?
                    {
                        self.tree.remove(&pl_key).map_err(io)?;
                        return Ok(Ingested::Duplicate { original });
                    }
                }
                self.tree.insert(dd_key, value).map_err(io)?;
            }
        }
        self.tree.insert(key(EV, id), entry).map_err(io)?;
        if self.log.is_some() && !replay {
            let mut buffer = self.log_buffer.lock().unwrap_or_else(|p| p.into_inner());
            ingest_log::encode(&mut buffer, dedupe_until, entry);
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(Ingested::Accepted)
    }

    /// Read a lane index: lanes after `after_lane`, each with its first `per_lane` items
    /// (the item part of each key).
    fn lane_scan(
        &self,
        prefix: &[u8],
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<Vec<u8>>)>> {
        // `lane\x01` sorts after every `lane\0…` key and before any longer lane name.
        let next_lane = |lane: &[u8]| {
            let mut k = key(prefix, lane);
            k.push(1);
            k
        };
        let mut start = match after_lane {
            Some(l) => next_lane(l.as_bytes()),
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        while out.len() < max_lanes {
            let mut iter = self.tree.range(start.clone()..);
            let Some(first) = iter.next() else { break };
            let (k, _) = first.map_err(io)?;
            if !k.starts_with(prefix) {
                break;
            }
            let rest = &k[prefix.len()..];
            let item = lane_item(rest)?;
            let lane = rest[..rest.len() - item.len() - 1].to_vec();
            let mut items = vec![item.to_vec()];
            let mut lane_prefix = key(prefix, &lane);
            lane_prefix.push(0);
            for kv in iter {
                if items.len() >= per_lane {
                    break;
                }
                let (k, _) = kv.map_err(io)?;
                if !k.starts_with(&lane_prefix) {
                    break;
                }
                items.push(k[lane_prefix.len()..].to_vec());
            }
            start = next_lane(&lane);
            out.push((String::from_utf8_lossy(&lane).into_owned(), items));
        }
        Ok(out)
    }

    fn journal_entry(&self, id_bytes: &[u8], event_json: &[u8]) -> StoreResult<JournalEntry> {
        let event: Event = serde_json::from_slice(event_json)?;
        let fate = match self.tree.get(key(FA, id_bytes)).map_err(io)? {
            Some(f) => serde_json::from_slice(&f)?,
            None => Fate::Pending,
        };
        Ok(JournalEntry { event, fate })
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> StoreResult<Option<T>> {
        match self.tree.get(k).map_err(io)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn scan_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> StoreResult<Vec<T>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(prefix).take(limit) {
            let (_, v) = kv.map_err(io)?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    /// Queue the items whose keys are neither queued nor sent; returns how many.
    fn enqueue_encoded(&self, items: &[EncodedItem]) -> StoreResult<usize> {
        let mut added = 0usize;
        for it in items {
            if self.tree.contains_key(&it.se).map_err(io)? {
                continue;
            }
            // Insert if absent: an item already queued keeps its attempts.
            let inserted = self
                .tree
                .compare_and_swap(&it.ol, None as Option<&[u8]>, Some(it.value.as_slice()))
                .map_err(io)?
                .is_ok();
            if !inserted {
                continue;
            }
            added += 1;
            // A `once/` key may have been delivered for another event between the check
            // and the insert (its `se/` is written before its `ol/` is removed): take it
            // back. The outbox checks `se/` before sending, so it is not sent meanwhile.
            // (Other keys belong to one event, which one router lane handles at a time.)
            if it.once
                && self.tree.contains_key(&it.se).map_err(io)?
                && self.tree.remove(&it.ol).map_err(io)?.is_some()
            {
                added -= 1;
            }
        }
        Ok(added)
    }

    fn encode_items(items: &[OutboxItem]) -> StoreResult<Vec<EncodedItem>> {
        items
            .iter()
            .map(|it| {
                Ok(EncodedItem {
                    ol: queue_key(it),
                    se: key(SE, it.key.as_bytes()),
                    once: it.key.starts_with("once/"),
                    value: serde_json::to_vec(it)?,
                })
            })
            .collect()
    }

    /// Take an item off the queue; whether it was queued.
    fn dequeue(&self, item: &OutboxItem) -> StoreResult<bool> {
        let was = self.tree.remove(queue_key(item)).map_err(io)?.is_some();
        if was {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(was)
    }
}

/// The fields of a stored event that name its dedupe key (the rest is not parsed).
#[derive(serde::Deserialize)]
struct EventOrigin {
    connector: String,
    external_id: Option<String>,
}

/// An outbox item ready to be queued: its keys and its JSON.
struct EncodedItem {
    ol: Vec<u8>,
    se: Vec<u8>,
    /// A `once/` key, which several events may queue.
    once: bool,
    value: Vec<u8>,
}

#[async_trait]
impl Store for SledStore {
    async fn ingest(&self, event: &Event, dedupe_until: DateTime<Utc>) -> StoreResult<Ingested> {
        let json = serde_json::to_vec(event)?;
        self.apply_ingest(event, &json, dedupe_until, false)
    }

    async fn flush_journal(&self) -> StoreResult<()> {
        let Some(log) = &self.log else {
            return self.flush().await;
        };
        // The log writes and fsyncs: off the async runtime.
        let (log, buffer) = (log.clone(), self.log_buffer.clone());
        let closed = tokio::task::spawn_blocking(move || {
            log.write(|| std::mem::take(&mut *buffer.lock().unwrap_or_else(|p| p.into_inner())))
        })
        .await
        .map_err(|e| StoreError::Io(format!("ingest log writer stopped: {e}")))??;
        if !closed.is_empty() {
            // Their records are all in sled; once sled has flushed, the segments can go.
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || match db.flush() {
                Ok(_) => ingest_log::remove(&closed),
                Err(e) => {
                    tracing::warn!(error = %e, "sled flush after an ingest log segment failed; the segment is kept for replay")
                }
            });
        }
        Ok(())
    }

    async fn pending_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<EventId>)>> {
        self.lane_scan(PL, after_lane, max_lanes, per_lane)?
            .into_iter()
            .map(|(lane, ids)| {
                Ok((
                    lane,
                    ids.iter()
                        .map(|b| event_id_from(b))
                        .collect::<StoreResult<Vec<_>>>()?,
                ))
            })
            .collect()
    }

    async fn event(&self, id: EventId) -> StoreResult<Option<JournalEntry>> {
        match self.tree.get(key(EV, id.0.as_bytes())).map_err(io)? {
            Some(raw) => Ok(Some(self.journal_entry(id.0.as_bytes(), &raw)?)),
            None => Ok(None),
        }
    }

    async fn complete_event(
        &self,
        event: &Event,
        fate: &Fate,
        items: &[OutboxItem],
    ) -> StoreResult<()> {
        let id_bytes = event.id.0.as_bytes();
        let pl_key = lane_key(PL, &event.lane_key(), id_bytes);
        // Handled already: the first fate stands (one process: nothing runs between
        // this look and the writes below for the same event, its lane runs it alone).
        if !self.tree.contains_key(&pl_key).map_err(io)? {
            return Ok(());
        }
        let encoded = Self::encode_items(items)?;
        // The fate goes under its own small key: the event itself is never rewritten.
        let fate_json = serde_json::to_vec(fate)?;
        // Items first: if a crash comes before the event stops being pending, the router
        // runs it again and finds them queued (or sent).
        let added = self.enqueue_encoded(&encoded)?;
        self.tree.insert(key(FA, id_bytes), fate_json).map_err(io)?;
        if self.tree.remove(pl_key).map_err(io)?.is_some() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        self.queued.fetch_add(added as i64, Ordering::Relaxed);
        Ok(())
    }

    async fn recent_events(
        &self,
        before: Option<EventId>,
        limit: usize,
    ) -> StoreResult<Vec<JournalEntry>> {
        let end = match before {
            Some(id) => key(EV, id.0.as_bytes()),
            None => key(EV, &[0xff; 17]),
        };
        let mut out = Vec::new();
        for kv in self.tree.range(EV.to_vec()..end).rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(io)?;
            match self.journal_entry(&k[EV.len()..], &v) {
                Ok(entry) => out.push(entry),
                // One record that does not decode (stored by an older perch that
                // acknowledged JSON too deep to read back) must not take every page
                // that includes it down: it is left out of listings, loudly.
                Err(StoreError::Decode(e)) => {
                    let id = event_id_from(&k[EV.len()..]).map(|i| i.to_string());
                    tracing::error!(event = ?id, error = %e, "journal record cannot be decoded; left out of the listing");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn pending_count(&self) -> StoreResult<usize> {
        Ok(self.pending.load(Ordering::Relaxed).max(0) as usize)
    }

    async fn enqueue(&self, items: &[OutboxItem]) -> StoreResult<usize> {
        let added = self.enqueue_encoded(&Self::encode_items(items)?)?;
        self.queued.fetch_add(added as i64, Ordering::Relaxed);
        Ok(added)
    }

    async fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        // Items live by lane; key order takes a pass over the queue's keys (values are
        // read only for the page). An admin listing, not a hot path.
        let mut page: Vec<(Vec<u8>, sled::IVec)> = Vec::new();
        for kv in self.tree.scan_prefix(OL) {
            let (k, v) = kv.map_err(io)?;
            let item_key = lane_item(&k[OL.len()..])?;
            if after.is_some_and(|a| item_key <= a.as_bytes()) {
                continue;
            }
            page.push((item_key.to_vec(), v));
            if page.len() > limit * 2 {
                page.sort_by(|a, b| a.0.cmp(&b.0));
                page.truncate(limit);
            }
        }
        page.sort_by(|a, b| a.0.cmp(&b.0));
        page.truncate(limit);
        page.into_iter()
            .map(|(_, v)| Ok(serde_json::from_slice(&v)?))
            .collect()
    }

    async fn outbox_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>> {
        // Keys only: the outbox reads each item when it delivers it, and a scan may
        // see an item many times before then.
        Ok(self
            .lane_scan(OL, after_lane, max_lanes, per_lane)?
            .into_iter()
            .map(|(lane, keys)| {
                let keys = keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                (lane, keys)
            })
            .collect())
    }

    async fn outbox_item(&self, lane: &str, k: &str) -> StoreResult<Option<OutboxItem>> {
        self.get_json(&lane_key(OL, lane, k.as_bytes()))
    }

    async fn outbox_update(&self, item: &OutboxItem) -> StoreResult<()> {
        let k = queue_key(item);
        // Only while still queued: never resurrect a delivered or dead item.
        if let Some(current) = self.tree.get(&k).map_err(io)? {
            let v = serde_json::to_vec(item)?;
            // Lost only to a removal (one outbox lane owns the item): nothing to save.
            let _ = self
                .tree
                .compare_and_swap(&k, Some(current), Some(v))
                .map_err(io)?;
        }
        Ok(())
    }

    async fn outbox_delivered(&self, item: &OutboxItem, record: &SentRecord) -> StoreResult<()> {
        // The record first: a queued item that is also sent is never sent again.
        self.record_sent(record).await?;
        self.dequeue(item)?;
        Ok(())
    }

    async fn record_sent(&self, record: &SentRecord) -> StoreResult<()> {
        let k = record.key.as_bytes();
        let mut sx = ms_be(record.at).to_vec();
        sx.extend_from_slice(k);
        self.tree
            .insert(key(SE, k), serde_json::to_vec(record)?)
            .map_err(io)?;
        self.tree.insert(key(SX, &sx), &[] as &[u8]).map_err(io)?;
        Ok(())
    }

    async fn outbox_dead(&self, letter: &DeadLetter) -> StoreResult<()> {
        // Only an item still queued becomes a dead letter.
        if !self
            .tree
            .contains_key(queue_key(&letter.item))
            .map_err(io)?
        {
            return Ok(());
        }
        self.tree
            .insert(
                key(DL, letter.item.key.as_bytes()),
                serde_json::to_vec(letter)?,
            )
            .map_err(io)?;
        self.dequeue(&letter.item)?;
        Ok(())
    }

    async fn outbox_count(&self) -> StoreResult<usize> {
        Ok(self.queued.load(Ordering::Relaxed).max(0) as usize)
    }

    async fn sent(&self, k: &str) -> StoreResult<Option<SentRecord>> {
        self.get_json(&key(SE, k.as_bytes()))
    }

    async fn dead_letters(&self, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        self.scan_json(DL, limit)
    }

    async fn sent_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<SentRecord>> {
        let mut start = key(SE, after.unwrap_or("").as_bytes());
        if after.is_some() {
            // The first key after `after` itself.
            start.push(0);
        }
        let mut out = Vec::new();
        for kv in self.tree.range(start..family_end(SE)).take(limit) {
            let (_, v) = kv.map_err(io)?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    async fn kv_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        let start = match after {
            Some((ns, k)) => {
                let mut start = kv_key(ns, k);
                start.push(0);
                start
            }
            None => KV.to_vec(),
        };
        let mut out = Vec::new();
        for kv in self.tree.range(start..family_end(KV)).take(limit) {
            let (k, v) = kv.map_err(io)?;
            let rest = &k[KV.len()..];
            let item = lane_item(rest)?;
            let ns = &rest[..rest.len() - item.len() - 1];
            out.push((
                String::from_utf8_lossy(ns).into_owned(),
                String::from_utf8_lossy(item).into_owned(),
                v.to_vec(),
            ));
        }
        Ok(out)
    }

    async fn replay_dead(&self, k: &str, now: DateTime<Utc>) -> StoreResult<Option<OutboxItem>> {
        let dl_key = key(DL, k.as_bytes());
        let Some(raw) = self.tree.get(&dl_key).map_err(io)? else {
            return Ok(None);
        };
        let letter: DeadLetter = serde_json::from_slice(&raw)?;
        let mut item = letter.item;
        item.attempts = 0;
        item.next_at = now;
        item.waiting = None;
        item.last_error = Some(format!("replayed after: {}", letter.error));
        // Queued before the letter goes, so a crash in between loses nothing (`repair`
        // drops the letter's item from the queue only while the letter is there).
        let queued = self
            .tree
            .compare_and_swap(
                queue_key(&item),
                None as Option<&[u8]>,
                Some(serde_json::to_vec(&item)?),
            )
            .map_err(io)?
            .is_ok();
        self.tree.remove(&dl_key).map_err(io)?;
        if queued {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(item))
    }

    async fn kv_get(&self, ns: &str, k: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .tree
            .get(kv_key(ns, k))
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    async fn kv_put(&self, ns: &str, k: &str, value: &[u8]) -> StoreResult<()> {
        self.tree.insert(kv_key(ns, k), value).map_err(io)?;
        Ok(())
    }

    async fn kv_delete(&self, ns: &str, k: &str) -> StoreResult<()> {
        self.tree.remove(kv_key(ns, k)).map_err(io)?;
        Ok(())
    }

    async fn kv_compare_and_swap(
        &self,
        ns: &str,
        k: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StoreResult<bool> {
        let r = self
            .tree
            .compare_and_swap(kv_key(ns, k), expected, new)
            .map_err(io)?;
        Ok(r.is_ok())
    }

    async fn kv_scan(&self, ns: &str, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let base = kv_key(ns, "");
        let start = kv_key(ns, prefix);
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&start) {
            let (k, v) = kv.map_err(io)?;
            let name = String::from_utf8_lossy(&k[base.len()..]).into_owned();
            out.push((name, v.to_vec()));
        }
        Ok(out)
    }

    async fn flush(&self) -> StoreResult<()> {
        self.db.flush_async().await.map_err(io)?;
        Ok(())
    }

    async fn sweep(&self, cut: SweepCutoffs) -> StoreResult<SweepStats> {
        // First retire the ingest log's open segment: its events are in sled, and once
        // sled has flushed it must go, before the events in it age out below (a replay
        // of a segment older than them would bring swept events back).
        if let Some(log) = &self.log
            && let Some(segment) = log.close_segment()?
        {
            self.db.flush_async().await.map_err(io)?;
            ingest_log::remove(&[segment]);
        }
        let mut stats = SweepStats::default();
        // Sent records: walk their time index.
        let sent_ms = cut.sent_before.timestamp_millis();
        for kv in self.tree.scan_prefix(SX) {
            let (k, _) = kv.map_err(io)?;
            let rest = &k[SX.len()..];
            if rest.len() < 8 || be_ms(rest) >= sent_ms {
                break;
            }
            // The record first: an index entry left by a crash is swept next time.
            self.tree.remove(key(SE, &rest[8..])).map_err(io)?;
            self.tree.remove(&k).map_err(io)?;
            stats.sent_records += 1;
        }
        // Journal: ids are UUID v7, whose first 48 bits are the arrival time in ms. A
        // handled event goes with its dedupe key (expired by now: the retention is at
        // least the dedupe window); a pending one (no fate yet) stays.
        let journal_ms = cut.journal_before.timestamp_millis();
        for kv in self.tree.scan_prefix(EV) {
            let (k, raw) = kv.map_err(io)?;
            let id = &k[EV.len()..];
            if id.len() < 6 {
                continue;
            }
            let mut ts = [0u8; 8];
            ts[2..].copy_from_slice(&id[..6]);
            if u64::from_be_bytes(ts) as i64 >= journal_ms {
                break;
            }
            if !self.tree.contains_key(key(FA, id)).map_err(io)? {
                continue;
            }
            let origin: EventOrigin = serde_json::from_slice(&raw)?;
            if let Some(x) = &origin.external_id
                && self.drop_dedupe_key(&key(DD, &dedupe_rest(&origin.connector, x)), id)?
            {
                stats.dedupe_keys += 1;
            }
            self.tree.remove(key(FA, id)).map_err(io)?;
            self.tree.remove(&k).map_err(io)?;
            stats.events += 1;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use std::path::PathBuf;

    fn event(n: u32) -> Event {
        let mut e = Event::new("hooks", EventKind::System, Utc::now());
        e.external_id = Some(format!("delivery-{n}"));
        e
    }

    /// A record older perch versions stored but cannot read (JSON 128 levels deep) is
    /// left out of listings; the pages around it still answer.
    #[tokio::test]
    async fn an_undecodable_record_does_not_take_down_its_page() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledStore::open(&dir.path().join("store"), &dir.path().join("log"), 1 << 20).unwrap();
        let until = Utc::now() + chrono::Duration::hours(8);
        let events: Vec<Event> = (0..3).map(event).collect();
        for e in &events {
            store.ingest(e, until).await.unwrap();
        }
        let mut poison = serde_json::to_value(&events[1]).unwrap();
        let mut deep = serde_json::Value::Array(Vec::new());
        for _ in 1..127 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        poison["payload"] = deep;
        store
            .tree
            .insert(
                key(EV, events[1].id.0.as_bytes()),
                serde_json::to_vec(&poison).unwrap(),
            )
            .unwrap();
        let page = store.recent_events(None, 10).await.unwrap();
        let ids: Vec<_> = page.iter().map(|e| e.event.id).collect();
        assert_eq!(ids, vec![events[2].id, events[0].id]);
        // A page of one that lands on it moves past it.
        let page = store.recent_events(Some(events[2].id), 1).await.unwrap();
        assert_eq!(page[0].event.id, events[0].id);
    }

    /// Copy the ingest log's segments from `from` to `to` (a run whose sled lost
    /// everything it had not flushed, as after a power cut).
    fn copy_log(from: &Path, to: &Path) -> Vec<PathBuf> {
        std::fs::create_dir_all(to).unwrap();
        let mut copied = Vec::new();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            std::fs::copy(&path, &target).unwrap();
            copied.push(target);
        }
        copied
    }

    #[tokio::test]
    async fn acknowledged_events_come_back_from_the_ingest_log_alone() {
        let a = tempfile::tempdir().unwrap();
        let store =
            SledStore::open(&a.path().join("store"), &a.path().join("log"), 1 << 20).unwrap();
        let events: Vec<Event> = (0..3).map(event).collect();
        let until = Utc::now() + chrono::Duration::hours(8);
        for e in &events {
            assert_eq!(store.ingest(e, until).await.unwrap(), Ingested::Accepted);
        }
        // A duplicate is not logged: the log holds what was accepted, in order.
        assert!(matches!(
            store.ingest(&event(0), until).await.unwrap(),
            Ingested::Duplicate { .. }
        ));
        store.flush_journal().await.unwrap();

        // A fresh sled with only the log: everything acknowledged is back, pending.
        let b = tempfile::tempdir().unwrap();
        let segments = copy_log(&a.path().join("log"), &b.path().join("log"));
        // A crash mid-write leaves a torn record after them; it is ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&segments[0])
            .unwrap();
        std::io::Write::write_all(&mut f, &[200, 1, 0, 0, 7, 7]).unwrap();
        drop(f);
        let open_b = || SledStore::open(&b.path().join("store"), &b.path().join("log"), 1 << 20);
        let restored = open_b().unwrap();
        for e in &events {
            let entry = restored.event(e.id).await.unwrap().expect("replayed");
            assert_eq!(&entry.event, e);
            assert_eq!(entry.fate, Fate::Pending);
        }
        assert_eq!(restored.pending_count().await.unwrap(), 3);
        // Dedupe survives too: the platform's retry of a logged event is a duplicate.
        assert_eq!(
            restored.ingest(&event(1), until).await.unwrap(),
            Ingested::Duplicate {
                original: events[1].id
            }
        );
        // The replayed segments are gone once sled has them.
        assert_eq!(std::fs::read_dir(b.path().join("log")).unwrap().count(), 1);
        drop(restored);

        // Replaying the same records again (a crash before the segments were deleted)
        // changes nothing.
        copy_log(&a.path().join("log"), &b.path().join("log"));
        let again = open_b().unwrap();
        assert_eq!(again.pending_count().await.unwrap(), 3);
        assert_eq!(again.recent_events(None, 10).await.unwrap().len(), 3);
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;
    use crate::event::EventKind;

    /// A segment must not outlive its events: after a sweep, a restart replays nothing,
    /// so events swept later cannot come back from an old segment.
    #[tokio::test]
    async fn a_sweep_retires_the_ingest_log_segment() {
        let dir = tempfile::tempdir().unwrap();
        let open = || SledStore::open(&dir.path().join("store"), &dir.path().join("log"), 1 << 20);
        let store = open().unwrap();
        let now = Utc::now();
        let e = Event::new("hooks", EventKind::System, now);
        store
            .ingest(&e, now + chrono::Duration::hours(8))
            .await
            .unwrap();
        store.flush_journal().await.unwrap();
        let segments = || std::fs::read_dir(dir.path().join("log")).unwrap().count();
        assert_eq!(segments(), 1);
        let cut = SweepCutoffs {
            sent_before: now - chrono::Duration::hours(8),
            journal_before: now - chrono::Duration::days(7),
        };
        store.sweep(cut).await.unwrap();
        // The closed segment is gone; the new one is empty.
        assert_eq!(segments(), 1);
        let (_, left, _) = IngestLog::open(&dir.path().join("log")).unwrap();
        assert!(left.is_empty(), "nothing to replay after a sweep");
        // The event itself is still there, pending.
        assert_eq!(store.pending_count().await.unwrap(), 1);
        assert!(store.event(e.id).await.unwrap().is_some());
    }
}

#[cfg(test)]
mod repair_tests {
    //! What a crash between the single-key writes of one change can leave, and how
    //! `repair` (run at every open) finishes it.
    use super::*;
    use crate::action::{Delivered, MessageBody, Operation, Target};
    use crate::event::EventKind;

    fn open(dir: &Path) -> SledStore {
        SledStore::open(&dir.join("store"), &dir.join("log"), 1 << 20).unwrap()
    }

    fn item(key: &str) -> OutboxItem {
        let op = Operation::Send {
            to: Target::Chat {
                id: "general".into(),
            },
            body: MessageBody::Text { text: "hi".into() },
            reply_to: None,
        };
        OutboxItem::new(key.into(), "web".into(), op, Utc::now())
    }

    fn sent(key: &str) -> SentRecord {
        SentRecord {
            key: key.into(),
            connector: "web".into(),
            delivered: Delivered::default(),
            at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn half_done_queue_changes_are_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let items = [item("e1/b/0"), item("e2/b/0"), item("e3/b/0")];
        assert_eq!(store.enqueue(&items).await.unwrap(), 3);
        // e1: sent, but the crash came before it left the queue.
        store
            .tree
            .insert(
                key(SE, b"e1/b/0"),
                serde_json::to_vec(&sent("e1/b/0")).unwrap(),
            )
            .unwrap();
        // e2: queued, untouched.
        // e3: dead, but the crash came before it left the queue.
        store
            .tree
            .insert(key(DL, b"e3/b/0"), b"{}" as &[u8])
            .unwrap();
        // e4: queued in the layout before `ol/` held items (`ob/` and an empty index).
        let e4 = item("e4/b/0");
        store
            .tree
            .insert(key(LEGACY_OB, b"e4/b/0"), serde_json::to_vec(&e4).unwrap())
            .unwrap();
        store
            .tree
            .insert(lane_key(OL, &e4.lane_key(), b"e4/b/0"), b"" as &[u8])
            .unwrap();
        // e5: an empty index entry of that layout whose item was gone.
        store
            .tree
            .insert(lane_key(OL, &e4.lane_key(), b"e5/b/0"), b"" as &[u8])
            .unwrap();
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.outbox_count().await.unwrap(), 2);
        let lanes = store.outbox_lanes(None, 10, 10).await.unwrap();
        assert_eq!(
            lanes,
            vec![(e4.lane_key(), vec![items[1].key.clone(), e4.key.clone()])]
        );
        assert_eq!(store.tree.scan_prefix(LEGACY_OB).count(), 0);
        assert!(
            store
                .outbox_item(&items[0].lane_key(), "e1/b/0")
                .await
                .unwrap()
                .is_none()
        );
        // A key already sent is never queued again.
        assert_eq!(store.enqueue(&items[..1]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn half_done_ingests_and_completions_are_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let until = Utc::now() + chrono::Duration::hours(8);
        let mut events = Vec::new();
        for n in 0..3 {
            let mut e = Event::new("hooks", EventKind::System, Utc::now());
            e.external_id = Some(format!("d-{n}"));
            store.ingest(&e, until).await.unwrap();
            events.push(e);
        }
        let id = |n: usize| events[n].id.0.as_bytes().to_vec();
        // 0: the ingest was cut after its lane-index entry and dedupe key, before the
        // event itself, and was never acknowledged.
        store.tree.remove(key(EV, &id(0))).unwrap();
        // 1: pending, untouched.
        // 2: handled (fate written), cut before it stopped being pending.
        store
            .tree
            .insert(
                key(FA, &id(2)),
                serde_json::to_vec(&Fate::Unrouted).unwrap(),
            )
            .unwrap();
        // Keys of the layout before this one.
        store
            .tree
            .insert(key(LEGACY_PE, &id(1)), b"hooks/-")
            .unwrap();
        store.tree.insert(key(LEGACY_DX, b"x"), b"").unwrap();
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.pending_count().await.unwrap(), 1);
        let left = |prefix: &[u8]| store.tree.scan_prefix(prefix).count();
        assert_eq!((left(PL), left(LEGACY_PE), left(LEGACY_DX)), (1, 0, 0));
        // Event 0's dedupe key went with its lane-index entry.
        assert_eq!(left(DD), 2);
        assert_eq!(store.recent_events(None, 10).await.unwrap().len(), 2);
        let lanes = store.pending_lanes(None, 10, 10).await.unwrap();
        assert_eq!(lanes, vec![(events[1].lane_key(), vec![events[1].id])]);
        // The platform's retry of the unacknowledged event 0 is a new event, not a
        // duplicate of one that was never whole; the retry of event 2 is a duplicate.
        let mut retry = Event::new("hooks", EventKind::System, Utc::now());
        retry.external_id = Some("d-0".into());
        assert_eq!(
            store.ingest(&retry, until).await.unwrap(),
            Ingested::Accepted
        );
        retry.id = EventId::new();
        retry.external_id = Some("d-2".into());
        assert_eq!(
            store.ingest(&retry, until).await.unwrap(),
            Ingested::Duplicate {
                original: events[2].id
            }
        );
    }

    #[tokio::test]
    async fn a_store_of_the_single_tree_layout_moves_to_a_tree_per_family() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let until = Utc::now() + chrono::Duration::hours(8);
        let event = |n: u32| {
            let mut e = Event::new("hooks", EventKind::System, Utc::now());
            e.external_id = Some(format!("d-{n}"));
            e
        };
        let (handled, pending) = (event(1), event(2));
        store.ingest(&handled, until).await.unwrap();
        store.ingest(&pending, until).await.unwrap();
        store
            .complete_event(&handled, &Fate::Unrouted, &[item("k/1")])
            .await
            .unwrap();
        store.flush().await.unwrap();
        drop(store);
        // Put every record where the old layout kept it: the one tree `perch`.
        {
            let db = sled::open(dir.path().join("store")).unwrap();
            let single = db.open_tree("perch").unwrap();
            for name in db.tree_names() {
                if name == b"perch" || name == b"__sled__default" {
                    continue;
                }
                let family = db.open_tree(&name).unwrap();
                for kv in family.iter() {
                    let (k, v) = kv.unwrap();
                    single.insert(&k, v).unwrap();
                    family.remove(&k).unwrap();
                }
            }
            db.flush().unwrap();
        }

        let store = open(dir.path());
        assert_eq!(store.pending_count().await.unwrap(), 1);
        assert_eq!(store.outbox_count().await.unwrap(), 1);
        let events = store.recent_events(None, 10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].fate, Fate::Unrouted);
        assert!(
            store
                .outbox_item(&item("k/1").lane_key(), "k/1")
                .await
                .unwrap()
                .is_some()
        );
        // The dedupe keys moved too.
        assert_eq!(
            store.ingest(&event(1), until).await.unwrap(),
            Ingested::Duplicate {
                original: handled.id
            }
        );
        let single = store.db.open_tree("perch").unwrap();
        assert_eq!(single.len(), 0);
    }
}
