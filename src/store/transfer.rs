//! `perch export` / `perch import`: move a deployment between stores (sled ↔
//! PostgreSQL) without losing the journal (events with their fates and dedupe keys,
//! pending ones still pending), the outbox, dead letters, sent records, or key-value
//! state (bot state, web-chat history, the scheduler's cursors and run ledger).
//!
//! The dump is JSON lines, one `Record` per line, readable with `jq`. Export reads
//! through the `Store` trait a page at a time, so it works on either backend, and should
//! run while perch is stopped (a running perch keeps changing the store; sled allows one
//! process anyway). Import refuses a store that already holds events, queued items or
//! state: merging two deployments is not what it is for.

use super::*;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Records read from the source per call.
const PAGE: usize = 1000;
/// Ingests in flight at once during an import (the PostgreSQL store commits them in
/// batches; one at a time would be one commit each).
const PARALLEL_INGESTS: usize = 256;

/// One line of a dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// A journal entry; pending if its fate is `pending`.
    Event {
        entry: JournalEntry,
    },
    Outbox {
        item: OutboxItem,
    },
    Sent {
        sent: SentRecord,
    },
    Dead {
        letter: DeadLetter,
    },
    /// A key-value entry; the value as base64 (it is bytes).
    Kv {
        ns: String,
        key: String,
        value: String,
    },
}

/// How many records of each kind were moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub events: usize,
    pub outbox: usize,
    pub sent: usize,
    pub dead: usize,
    pub kv: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events, {} queued operations, {} sent records, {} dead letters, {} state entries",
            self.events, self.outbox, self.sent, self.dead, self.kv
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the dump: {0}")]
    Write(std::io::Error),
    #[error("reading the dump: {0}")]
    Read(std::io::Error),
    #[error("dump line {line}: {why}")]
    Bad { line: usize, why: String },
    #[error(
        "the target store is not empty ({what}): import into a fresh store (a new data_dir, or an empty database)"
    )]
    NotEmpty { what: String },
}

async fn write_record(
    out: &mut (impl AsyncWrite + Unpin),
    record: &Record,
) -> Result<(), TransferError> {
    let mut line = serde_json::to_vec(record).map_err(StoreError::from)?;
    line.push(b'\n');
    out.write_all(&line).await.map_err(TransferError::Write)
}

/// Write everything in `store` to `out`, one `Record` per line.
pub async fn export(
    store: &dyn Store,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<Counts, TransferError> {
    let mut counts = Counts::default();
    let mut before = None;
    loop {
        let page = store.recent_events(before, PAGE).await?;
        let Some(last) = page.last() else { break };
        before = Some(last.event.id);
        for entry in page {
            write_record(out, &Record::Event { entry }).await?;
            counts.events += 1;
        }
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.outbox_after(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for item in page {
            write_record(out, &Record::Outbox { item }).await?;
            counts.outbox += 1;
        }
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.sent_after(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for sent in page {
            write_record(out, &Record::Sent { sent }).await?;
            counts.sent += 1;
        }
    }
    for letter in store.dead_letters(usize::MAX).await? {
        write_record(out, &Record::Dead { letter }).await?;
        counts.dead += 1;
    }
    let mut after: Option<(String, String)> = None;
    loop {
        let page = store
            .kv_after(after.as_ref().map(|(n, k)| (n.as_str(), k.as_str())), PAGE)
            .await?;
        let Some((ns, key, _)) = page.last() else {
            break;
        };
        after = Some((ns.clone(), key.clone()));
        for (ns, key, value) in page {
            use base64::Engine;
            let value = base64::engine::general_purpose::STANDARD.encode(value);
            write_record(out, &Record::Kv { ns, key, value }).await?;
            counts.kv += 1;
        }
    }
    out.flush().await.map_err(TransferError::Write)?;
    Ok(counts)
}

/// Refuse a store that holds anything an import would collide with.
async fn check_empty(store: &dyn Store) -> Result<(), TransferError> {
    let mut held = Vec::new();
    if !store.recent_events(None, 1).await?.is_empty() {
        held.push("events");
    }
    if store.outbox_count().await? > 0 {
        held.push("queued operations");
    }
    if !store.sent_after(None, 1).await?.is_empty() {
        held.push("sent records");
    }
    if !store.dead_letters(1).await?.is_empty() {
        held.push("dead letters");
    }
    if !store.kv_after(None, 1).await?.is_empty() {
        held.push("state");
    }
    if held.is_empty() {
        Ok(())
    } else {
        Err(TransferError::NotEmpty {
            what: held.join(", "),
        })
    }
}

/// Read a dump from `input` into the empty `store`, then flush it. An event's dedupe key
/// is restored to last `dedupe_window` from the event's arrival (as the journal set it).
/// The whole dump is checked before anything is written, so a bad line changes nothing.
pub async fn import(
    store: &dyn Store,
    input: impl tokio::io::AsyncBufRead + Unpin,
    dedupe_window: std::time::Duration,
) -> Result<Counts, TransferError> {
    check_empty(store).await?;
    let mut records = Vec::new();
    let mut lines = input.lines();
    let mut line_no = 0;
    while let Some(line) = lines.next_line().await.map_err(TransferError::Read)? {
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line).map_err(|e| TransferError::Bad {
            line: line_no,
            why: e.to_string(),
        })?;
        if let Record::Kv { value, .. } = &record {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| TransferError::Bad {
                    line: line_no,
                    why: format!("value is not base64: {e}"),
                })?;
        }
        records.push(record);
    }
    let window = chrono::Duration::from_std(dedupe_window).unwrap_or(chrono::Duration::hours(8));
    let mut counts = Counts::default();
    // Events first, concurrently (they are independent), each ingested and then given
    // its fate unless it was pending.
    let events = records.iter().filter_map(|r| match r {
        Record::Event { entry } => Some(entry),
        _ => None,
    });
    let mut ingests = futures::stream::iter(events.map(|entry| async move {
        store
            .ingest(&entry.event, entry.event.received_at + window)
            .await?;
        if entry.fate != Fate::Pending {
            store.complete_event(&entry.event, &entry.fate, &[]).await?;
        }
        Ok::<_, StoreError>(())
    }))
    .buffer_unordered(PARALLEL_INGESTS);
    while let Some(done) = ingests.next().await {
        done?;
        counts.events += 1;
    }
    drop(ingests);
    for record in records {
        match record {
            Record::Event { .. } => {}
            Record::Outbox { item } => {
                counts.outbox += store.enqueue(std::slice::from_ref(&item)).await?;
            }
            Record::Sent { sent } => {
                store.record_sent(&sent).await?;
                counts.sent += 1;
            }
            Record::Dead { letter } => {
                // A dead letter is made from a queued item (`Store::outbox_dead` moves
                // only what is queued): queue it, then move it.
                store.enqueue(std::slice::from_ref(&letter.item)).await?;
                store.outbox_dead(&letter).await?;
                counts.dead += 1;
            }
            Record::Kv { ns, key, value } => {
                use base64::Engine;
                let value = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                store.kv_put(&ns, &key, &value).await?;
                counts.kv += 1;
            }
        }
    }
    store.flush_journal().await?;
    store.flush().await?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Delivered, MessageBody, Operation, Target};
    use crate::event::EventKind;

    fn item(key: &str, chat: &str) -> OutboxItem {
        OutboxItem::new(
            key.to_string(),
            "web".to_string(),
            Operation::Send {
                to: Target::chat(chat),
                body: MessageBody::text("hi"),
                reply_to: None,
            },
            Utc::now(),
        )
    }

    /// A store with something of every kind in it.
    async fn fill(s: &dyn Store) {
        let now = Utc::now();
        for n in 0..30 {
            let mut e = Event::new("gh", EventKind::System, now);
            e.external_id = Some(format!("x-{n}"));
            s.ingest(&e, now + chrono::Duration::hours(8))
                .await
                .unwrap();
            if n % 3 != 0 {
                let fate = Fate::Routed {
                    bots: vec!["echo".into()],
                    actions: 1,
                    failures: vec![],
                    answer: None,
                };
                s.complete_event(&e, &fate, &[item(&format!("{}/echo/0000", e.id), "room")])
                    .await
                    .unwrap();
            }
        }
        let sent = item("s/1", "room");
        s.enqueue(std::slice::from_ref(&sent)).await.unwrap();
        s.outbox_delivered(
            &sent,
            &SentRecord {
                key: "s/1".into(),
                connector: "web".into(),
                delivered: Delivered::default(),
                at: now,
            },
        )
        .await
        .unwrap();
        let dead = item("d/1", "other");
        s.enqueue(std::slice::from_ref(&dead)).await.unwrap();
        s.outbox_dead(&DeadLetter {
            item: dead,
            error: "HTTP 400".into(),
            died_at: now,
        })
        .await
        .unwrap();
        s.kv_put("scheduler", "daily", b"{\"cursor\":1}")
            .await
            .unwrap();
        s.kv_put("scheduler-runs", "daily/1", &[0, 255, 1])
            .await
            .unwrap();
        s.kv_put("bot/echo", "a", b"1").await.unwrap();
    }

    async fn dump(s: &dyn Store) -> (Counts, Vec<u8>) {
        let mut out = Vec::new();
        let counts = export(s, &mut out).await.unwrap();
        (counts, out)
    }

    /// What a store holds, in a form two backends can be compared by.
    async fn contents(s: &dyn Store) -> (Vec<Record>, usize, usize) {
        let (_, raw) = dump(s).await;
        let mut records: Vec<Record> = raw
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        records.sort_by_key(|r| serde_json::to_string(r).unwrap());
        (
            records,
            s.pending_count().await.unwrap(),
            s.outbox_count().await.unwrap(),
        )
    }

    async fn round_trip(from: &dyn Store, to: &dyn Store, back: &dyn Store) {
        fill(from).await;
        let (counts, raw) = dump(from).await;
        assert_eq!(
            counts,
            Counts {
                events: 30,
                outbox: 20,
                sent: 1,
                dead: 1,
                kv: 3
            }
        );
        let window = std::time::Duration::from_secs(8 * 3600);
        let imported = import(to, raw.as_slice(), window).await.unwrap();
        assert_eq!(imported, counts);
        assert_eq!(contents(to).await, contents(from).await);
        assert_eq!(
            to.pending_count().await.unwrap(),
            10,
            "pending stay pending"
        );
        // Dedupe keys came along: a platform retry after the move is a duplicate.
        let first = from.recent_events(None, 1).await.unwrap().remove(0).event;
        let mut retry = Event::new("gh", EventKind::System, Utc::now());
        retry.external_id = first.external_id.clone();
        assert_eq!(
            to.ingest(&retry, Utc::now() + chrono::Duration::hours(8))
                .await
                .unwrap(),
            Ingested::Duplicate { original: first.id }
        );
        // A store that holds something refuses an import, and is left as it was.
        let err = import(to, raw.as_slice(), window).await.unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        // And back.
        let (_, again) = dump(to).await;
        import(back, again.as_slice(), window).await.unwrap();
        assert_eq!(contents(back).await, contents(to).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_to_postgres_and_back_keeps_everything() {
        let Some(pg) = crate::store::postgres::test_store().await else {
            return;
        };
        let sled = SledStore::temporary().unwrap();
        let back = SledStore::temporary().unwrap();
        round_trip(&sled, &pg, &back).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_to_sled_keeps_everything() {
        let (a, b, c) = (
            SledStore::temporary().unwrap(),
            SledStore::temporary().unwrap(),
            SledStore::temporary().unwrap(),
        );
        round_trip(&a, &b, &c).await;
    }

    #[tokio::test]
    async fn a_bad_line_is_named_and_nothing_is_written() {
        let s = SledStore::temporary().unwrap();
        let dump = b"{\"record\":\"kv\",\"ns\":\"a\",\"key\":\"b\",\"value\":\"AA==\"}\n{\"record\":\"nope\"}\n";
        let err = import(&s, dump.as_slice(), std::time::Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("dump line 2:"), "{err}");
        assert!(s.kv_after(None, 10).await.unwrap().is_empty());
    }
}
