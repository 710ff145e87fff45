//! The embedded backend: sled `=0.34.7`, one tree, records under short key prefixes so
//! that every multi-record change (ingest, complete an event, deliver an item) is one
//! single-tree transaction.
//!
//! | prefix | key                                   | value                          |
//! |--------|---------------------------------------|--------------------------------|
//! | `ev/`  | event id (16 bytes, time-ordered)     | `Event` JSON (never rewritten) |
//! | `fa/`  | event id                              | `Fate` JSON, once handled      |
//! | `pe/`  | event id                              | lane key: the event is pending |
//! | `pl/`  | lane `\0` event id                    | empty: pending events by lane  |
//! | `dd/`  | connector `\0` external id            | event id + expiry (ms, BE)     |
//! | `dx/`  | expiry (ms, BE) + the `dd/` key rest  | empty: dedupe expiry index     |
//! | `ob/`  | outbox key                            | `OutboxItem` JSON              |
//! | `ol/`  | lane `\0` outbox key                  | empty: queued items by lane    |
//! | `se/`  | outbox key                            | `SentRecord` JSON              |
//! | `sx/`  | sent time (ms, BE) + outbox key       | empty: sent-record expiry index|
//! | `dl/`  | outbox key                            | `DeadLetter` JSON              |
//! | `kv/`  | namespace `\0` key                    | bytes                          |
//!
//! The `pl/` and `ol/` indexes let the feeders read a queue lane by lane, keys only, and
//! jump past a lane with one seek (lane keys never contain `\0`).
//!
//! sled only makes writes durable on `flush` (and on its own timer every 500 ms), which
//! is what the journal's group commit relies on. Calls are synchronous but in-memory and
//! short, except `flush`, which runs on sled's own thread via `flush_async`.

use super::ingest_log::{self, IngestLog};
use super::*;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

const EV: &[u8] = b"ev/";
const FA: &[u8] = b"fa/";
const PE: &[u8] = b"pe/";
const PL: &[u8] = b"pl/";
const OL: &[u8] = b"ol/";
const DD: &[u8] = b"dd/";
const DX: &[u8] = b"dx/";
const OB: &[u8] = b"ob/";
const SE: &[u8] = b"se/";
const SX: &[u8] = b"sx/";
const DL: &[u8] = b"dl/";
const KV: &[u8] = b"kv/";

/// sled's default cache is 1 GiB; perch needs far less (STACK.md §1b).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Where acknowledged events are made durable (`None` for a temporary store, which
    /// need not survive a crash; then `flush_journal` flushes sled).
    log: Option<Arc<IngestLog>>,
    /// Records appended since the last log write. Its lock is the ingest lock: an event
    /// is applied to sled and appended here under it, so the log keeps sled's order.
    log_buffer: Arc<std::sync::Mutex<Vec<u8>>>,
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

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => io(e),
    }
}

/// `<prefix><lane>\0<item>`: a lane-index key.
fn lane_key(prefix: &[u8], lane: &str, item: &[u8]) -> Vec<u8> {
    let mut k = key(prefix, lane.as_bytes());
    k.push(0);
    k.extend_from_slice(item);
    k
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
    pub fn temporary() -> StoreResult<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(io)?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> StoreResult<Self> {
        let tree = db.open_tree("perch").map_err(io)?;
        let pending = tree.scan_prefix(PE).count() as i64;
        let queued = tree.scan_prefix(OB).count() as i64;
        Ok(SledStore {
            db,
            tree,
            log: None,
            log_buffer: Arc::new(std::sync::Mutex::new(Vec::new())),
            pending: AtomicI64::new(pending),
            queued: AtomicI64::new(queued),
        })
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
        let id = event.id.0.as_bytes().to_vec();
        let ev_key = key(EV, &id);
        let pe_key = key(PE, &id);
        let lane = event.lane_key();
        let pl_key = lane_key(PL, &lane, &id);
        let dedupe = event.external_id.as_ref().map(|x| {
            let rest = dedupe_rest(&event.connector, x);
            let mut value = id.clone();
            value.extend_from_slice(&ms_be(dedupe_until));
            let mut dx = ms_be(dedupe_until).to_vec();
            dx.extend_from_slice(&rest);
            (key(DD, &rest), value, key(DX, &dx), rest)
        });
        let now_ms = event.received_at.timestamp_millis();
        // The ingest lock (see `log_buffer`); a poisoned lock only means another ingest
        // panicked, and the buffer is still whole.
        let mut buffer = self.log_buffer.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self
            .tree
            .transaction(|tx| {
                if replay && tx.get(&ev_key)?.is_some() {
                    return Ok(None);
                }
                if let Some((dd_key, value, dx_key, rest)) = &dedupe {
                    if let Some(old) = tx.get(dd_key)? {
                        if old.len() == 24 {
                            let expires = be_ms(&old[16..24]);
                            if expires > now_ms {
                                let original = event_id_from(&old[..16])
                                    .map_err(ConflictableTransactionError::Abort)?;
                                return Ok(Some(Ingested::Duplicate { original }));
                            }
                            // Expired: drop its index entry; the key is reused below.
                            let mut old_dx = old[16..24].to_vec();
                            old_dx.extend_from_slice(rest);
                            tx.remove(key(DX, &old_dx))?;
                        }
                    }
                    tx.insert(dd_key.as_slice(), value.as_slice())?;
                    tx.insert(dx_key.as_slice(), &[] as &[u8])?;
                }
                tx.insert(ev_key.as_slice(), entry)?;
                tx.insert(pe_key.as_slice(), lane.as_bytes())?;
                tx.insert(pl_key.as_slice(), &[] as &[u8])?;
                Ok(Some(Ingested::Accepted))
            })
            .map_err(tx_err)?;
        match outcome {
            // Replayed, and already in sled.
            None => Ok(Ingested::Duplicate { original: event.id }),
            Some(Ingested::Accepted) => {
                if self.log.is_some() && !replay {
                    ingest_log::encode(&mut buffer, dedupe_until, entry);
                }
                self.pending.fetch_add(1, Ordering::Relaxed);
                Ok(Ingested::Accepted)
            }
            Some(duplicate) => Ok(duplicate),
        }
    }

    /// Read a lane index: lanes after `after_lane`, each with its first `per_lane` items.
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
            let sep = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| StoreError::Corrupt("lane index key without separator".into()))?;
            let lane = rest[..sep].to_vec();
            let mut items = vec![rest[sep + 1..].to_vec()];
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

    /// Insert the items whose keys are neither queued nor sent; returns how many.
    fn enqueue_in_tx(
        tx: &sled::transaction::TransactionalTree,
        items: &[EncodedItem],
    ) -> Result<usize, ConflictableTransactionError<StoreError>> {
        let mut added = 0;
        for it in items {
            if tx.get(&it.ob)?.is_some() || tx.get(&it.se)?.is_some() {
                continue;
            }
            tx.insert(it.ob.as_slice(), it.value.as_slice())?;
            tx.insert(it.ol.as_slice(), &[] as &[u8])?;
            added += 1;
        }
        Ok(added)
    }

    fn encode_items(items: &[OutboxItem]) -> StoreResult<Vec<EncodedItem>> {
        items
            .iter()
            .map(|it| {
                Ok(EncodedItem {
                    ob: key(OB, it.key.as_bytes()),
                    ol: lane_key(OL, &it.lane_key(), it.key.as_bytes()),
                    se: key(SE, it.key.as_bytes()),
                    value: serde_json::to_vec(it)?,
                })
            })
            .collect()
    }

    /// Remove a queued item and its lane-index entry inside a transaction; whether it
    /// was queued.
    fn dequeue_in_tx(
        tx: &sled::transaction::TransactionalTree,
        ob_key: &[u8],
    ) -> Result<bool, ConflictableTransactionError<StoreError>> {
        let Some(raw) = tx.remove(ob_key)? else {
            return Ok(false);
        };
        let item: OutboxItem = serde_json::from_slice(&raw)
            .map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e)))?;
        tx.remove(lane_key(OL, &item.lane_key(), item.key.as_bytes()))?;
        Ok(true)
    }
}

/// An outbox item ready for a transaction: its keys and its JSON.
struct EncodedItem {
    ob: Vec<u8>,
    ol: Vec<u8>,
    se: Vec<u8>,
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
        if let Some(segment) = closed {
            // Its records are all in sled; once sled has flushed, the segment can go.
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || match db.flush() {
                Ok(_) => ingest_log::remove(&[segment]),
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
        id: EventId,
        fate: &Fate,
        items: &[OutboxItem],
    ) -> StoreResult<()> {
        let ev_key = key(EV, id.0.as_bytes());
        let fa_key = key(FA, id.0.as_bytes());
        let pe_key = key(PE, id.0.as_bytes());
        let encoded = Self::encode_items(items)?;
        // The fate goes under its own small key: the event itself is never rewritten.
        let fate_json = serde_json::to_vec(fate)?;
        let (was_pending, added) = self
            .tree
            .transaction(|tx| {
                if tx.get(&ev_key)?.is_none() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Corrupt(
                        format!("event {id} is not in the journal"),
                    )));
                }
                tx.insert(fa_key.as_slice(), fate_json.as_slice())?;
                let was_pending = match tx.remove(pe_key.as_slice())? {
                    Some(lane) => {
                        tx.remove(lane_key(
                            PL,
                            &String::from_utf8_lossy(&lane),
                            id.0.as_bytes(),
                        ))?;
                        true
                    }
                    None => false,
                };
                let added = Self::enqueue_in_tx(tx, &encoded)?;
                Ok((was_pending, added))
            })
            .map_err(tx_err)?;
        if was_pending {
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
        for kv in self.tree.range(EV.to_vec()..end).rev().take(limit) {
            let (k, v) = kv.map_err(io)?;
            out.push(self.journal_entry(&k[EV.len()..], &v)?);
        }
        Ok(out)
    }

    async fn pending_count(&self) -> StoreResult<usize> {
        Ok(self.pending.load(Ordering::Relaxed).max(0) as usize)
    }

    async fn enqueue(&self, items: &[OutboxItem]) -> StoreResult<usize> {
        let encoded = Self::encode_items(items)?;
        let added = self
            .tree
            .transaction(|tx| Self::enqueue_in_tx(tx, &encoded))
            .map_err(tx_err)?;
        self.queued.fetch_add(added as i64, Ordering::Relaxed);
        Ok(added)
    }

    async fn outbox_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        let start = match after {
            Some(k) => {
                let mut k = key(OB, k.as_bytes());
                k.push(0);
                k
            }
            None => OB.to_vec(),
        };
        let mut out = Vec::new();
        for kv in self.tree.range(start..) {
            let (k, v) = kv.map_err(io)?;
            if !k.starts_with(OB) || out.len() >= limit {
                break;
            }
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }

    async fn outbox_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>> {
        Ok(self
            .lane_scan(OL, after_lane, max_lanes, per_lane)?
            .into_iter()
            .map(|(lane, keys)| {
                (
                    lane,
                    keys.into_iter()
                        .map(|k| String::from_utf8_lossy(&k).into_owned())
                        .collect(),
                )
            })
            .collect())
    }

    async fn outbox_item(&self, k: &str) -> StoreResult<Option<OutboxItem>> {
        self.get_json(&key(OB, k.as_bytes()))
    }

    async fn outbox_update(&self, item: &OutboxItem) -> StoreResult<()> {
        let k = key(OB, item.key.as_bytes());
        let v = serde_json::to_vec(item)?;
        // Only while still queued: never resurrect a delivered or dead item.
        self.tree
            .transaction(|tx| {
                if tx.get(&k)?.is_some() {
                    tx.insert(k.as_slice(), v.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_err)
    }

    async fn outbox_delivered(&self, k: &str, record: &SentRecord) -> StoreResult<()> {
        let ob_key = key(OB, k.as_bytes());
        let se_key = key(SE, k.as_bytes());
        let mut sx = ms_be(record.at).to_vec();
        sx.extend_from_slice(k.as_bytes());
        let sx_key = key(SX, &sx);
        let v = serde_json::to_vec(record)?;
        let removed = self
            .tree
            .transaction(|tx| {
                let removed = Self::dequeue_in_tx(tx, &ob_key)?;
                tx.insert(se_key.as_slice(), v.as_slice())?;
                tx.insert(sx_key.as_slice(), &[] as &[u8])?;
                Ok(removed)
            })
            .map_err(tx_err)?;
        if removed {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn outbox_dead(&self, letter: &DeadLetter) -> StoreResult<()> {
        let ob_key = key(OB, letter.item.key.as_bytes());
        let dl_key = key(DL, letter.item.key.as_bytes());
        let v = serde_json::to_vec(letter)?;
        let removed = self
            .tree
            .transaction(|tx| {
                let removed = Self::dequeue_in_tx(tx, &ob_key)?;
                tx.insert(dl_key.as_slice(), v.as_slice())?;
                Ok(removed)
            })
            .map_err(tx_err)?;
        if removed {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
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

    async fn replay_dead(&self, k: &str, now: DateTime<Utc>) -> StoreResult<Option<OutboxItem>> {
        let dl_key = key(DL, k.as_bytes());
        let ob_key = key(OB, k.as_bytes());
        let item = self
            .tree
            .transaction(|tx| {
                let Some(raw) = tx.remove(dl_key.as_slice())? else {
                    return Ok(None);
                };
                let letter: DeadLetter = serde_json::from_slice(&raw)
                    .map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e)))?;
                let mut item = letter.item;
                item.attempts = 0;
                item.next_at = now;
                item.last_error = Some(format!("replayed after: {}", letter.error));
                let v = serde_json::to_vec(&item)
                    .map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e)))?;
                tx.insert(ob_key.as_slice(), v)?;
                tx.insert(
                    lane_key(OL, &item.lane_key(), item.key.as_bytes()),
                    &[] as &[u8],
                )?;
                Ok(Some(item))
            })
            .map_err(tx_err)?;
        if item.is_some() {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        Ok(item)
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
        let mut stats = SweepStats::default();
        // Dedupe keys: walk the expiry index up to `now`.
        let now_ms = cut.now.timestamp_millis();
        for kv in self.tree.scan_prefix(DX) {
            let (k, _) = kv.map_err(io)?;
            let rest = &k[DX.len()..];
            if rest.len() < 8 || be_ms(rest) > now_ms {
                break;
            }
            let dd_key = key(DD, &rest[8..]);
            let dx_key = k.to_vec();
            let removed = self
                .tree
                .transaction(|tx| {
                    tx.remove(dx_key.as_slice())?;
                    // Only if the key was not renewed since (its expiry still matches).
                    match tx.get(&dd_key)? {
                        Some(v) if v.len() == 24 && v[16..24] == rest[..8] => {
                            tx.remove(dd_key.as_slice())?;
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                })
                .map_err(tx_err)?;
            if removed {
                stats.dedupe_keys += 1;
            }
        }
        // Sent records: walk their time index.
        let sent_ms = cut.sent_before.timestamp_millis();
        for kv in self.tree.scan_prefix(SX) {
            let (k, _) = kv.map_err(io)?;
            let rest = &k[SX.len()..];
            if rest.len() < 8 || be_ms(rest) >= sent_ms {
                break;
            }
            let mut batch = sled::Batch::default();
            batch.remove(k.to_vec());
            batch.remove(key(SE, &rest[8..]));
            self.tree.apply_batch(batch).map_err(io)?;
            stats.sent_records += 1;
        }
        // Journal: ids are UUID v7, whose first 48 bits are the arrival time in ms.
        let journal_ms = cut.journal_before.timestamp_millis();
        for kv in self.tree.scan_prefix(EV) {
            let (k, _) = kv.map_err(io)?;
            let id = &k[EV.len()..];
            if id.len() < 6 {
                continue;
            }
            let mut ts = [0u8; 8];
            ts[2..].copy_from_slice(&id[..6]);
            if u64::from_be_bytes(ts) as i64 >= journal_ms {
                break;
            }
            if self.tree.contains_key(key(PE, id)).map_err(io)? {
                continue;
            }
            let mut batch = sled::Batch::default();
            batch.remove(k.to_vec());
            batch.remove(key(FA, id));
            self.tree.apply_batch(batch).map_err(io)?;
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
