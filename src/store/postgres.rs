//! The PostgreSQL backend: several perch processes (replicas) share one database, which
//! is their only coordination (no replication or consensus of our own).
//!
//! Driver: tokio-postgres without TLS (`NoTls`: run it on a private network or a local
//! socket proxy), pooled by deadpool-postgres. Tables (`MIGRATIONS`; text columns use
//! the `"C"` collation so lanes and keys sort by bytes, as sled's keys do):
//!
//! | table                 | one row per                    | key                        |
//! |-----------------------|--------------------------------|----------------------------|
//! | `perch_events`        | accepted event, with its fate  | event id (16 bytes, UUID v7, time-ordered) |
//! | `perch_dedupe`        | `(connector, external id)`     | unique: a retry on any replica is a duplicate |
//! | `perch_outbox`        | queued operation               | outbox key; `(lane, key)` index |
//! | `perch_sent`          | delivered operation            | outbox key                 |
//! | `perch_dead_letters`  | operation failed for good      | outbox key                 |
//! | `perch_kv`            | bot / connector state          | `(namespace, key)`         |
//! | `perch_leases`        | lane held by one replica       | `(queue, lane)`: `Store::hold_lanes` |
//! | `perch_rate_slots`    | shared rate bucket             | bucket: `Store::take_rate_slot` |
//! | `perch_migrations`    | applied schema version         | version                    |
//!
//! An event is pending while its `fate` is NULL (a partial index serves the lane scans).
//!
//! **Durability and group commit.** `ingest` returns only once its event is committed:
//! a batching task (`run_ingest_batches`) takes every ingest waiting at that moment and
//! stores them all in one transaction (statements pipelined on one connection), so
//! concurrent requests share one commit (one WAL flush) instead of paying one each.
//! `flush_journal` and `flush` have nothing left to do. Within a batch the dedupe rows
//! are written in key order, so two replicas' batches never wait on each other in a
//! cycle (no deadlock).
//!
//! Every other method is one statement or one short transaction, atomic on its own, as
//! the `Store` trait asks.
//!
//! **Leases** (`hold_lanes`) expire by the database's clock (`clock_timestamp()`), so
//! replicas' clocks need not agree.
//!
//! **Rate buckets** (`take_rate_slot`) are GCRA: one row per bucket holds its
//! "theoretical arrival time" (`tat_us`, µs by the database's clock), moved forward by
//! one interval per slot taken, in one `INSERT … ON CONFLICT DO UPDATE … RETURNING`, so
//! concurrent replicas serialise on the row and never hand out the same slot twice. A
//! row whose time has passed is a full bucket, the same as no row: `sweep` drops those
//! (per-chat buckets would otherwise pile up).

use super::*;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

/// Schema versions, applied in order at start (`PostgresStore::connect`, `perch
/// migrate`) under an advisory lock, so replicas starting together apply each once. A
/// new version is appended, never edited.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE perch_events (
    id          BYTEA PRIMARY KEY,
    lane        TEXT COLLATE "C" NOT NULL,
    connector   TEXT COLLATE "C" NOT NULL,
    external_id TEXT COLLATE "C",
    body        BYTEA NOT NULL,
    fate        BYTEA
);
CREATE INDEX perch_events_pending ON perch_events (lane, id) WHERE fate IS NULL;
CREATE TABLE perch_dedupe (
    connector   TEXT COLLATE "C" NOT NULL,
    external_id TEXT COLLATE "C" NOT NULL,
    event_id    BYTEA NOT NULL,
    until_ms    BIGINT NOT NULL,
    PRIMARY KEY (connector, external_id)
);
CREATE TABLE perch_outbox (
    key  TEXT COLLATE "C" PRIMARY KEY,
    lane TEXT COLLATE "C" NOT NULL,
    item BYTEA NOT NULL
);
CREATE INDEX perch_outbox_lane ON perch_outbox (lane, key);
CREATE TABLE perch_sent (
    key    TEXT COLLATE "C" PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    record BYTEA NOT NULL
);
CREATE INDEX perch_sent_at ON perch_sent (at_ms);
CREATE TABLE perch_dead_letters (
    key    TEXT COLLATE "C" PRIMARY KEY,
    letter BYTEA NOT NULL
);
CREATE TABLE perch_leases (
    queue    TEXT COLLATE "C" NOT NULL,
    lane     TEXT COLLATE "C" NOT NULL,
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (queue, lane)
);
CREATE TABLE perch_kv (
    ns    TEXT COLLATE "C" NOT NULL,
    key   TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (ns, key)
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE perch_rate_slots (
    bucket TEXT COLLATE "C" PRIMARY KEY,
    tat_us BIGINT NOT NULL
);
"#,
    ),
];

/// The advisory lock that serialises migrations across replicas (any fixed number).
const MIGRATION_LOCK: i64 = 0x7065_7263_685f_6d67; // "perch_mg"

/// Most ingests stored by one transaction.
const MAX_INGEST_BATCH: usize = 512;
/// Room for ingests waiting for the batching task (beyond it, `ingest` waits).
const INGEST_QUEUE: usize = 8 * 1024;
/// How long a caller waits for a pooled connection before the call fails.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// `[store]` settings of the PostgreSQL backend.
#[derive(Clone)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/database` (key=value form also accepted).
    pub url: String,
    /// Most connections this replica holds.
    pub pool_size: usize,
}

impl std::fmt::Debug for PostgresSettings {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

pub struct PostgresStore {
    pool: Pool,
    /// To the batching task (`run_ingest_batches`), which ends when this is dropped.
    ingests: mpsc::Sender<IngestRequest>,
    /// Live notices to and from the other replicas (`LISTEN/NOTIFY`).
    live: super::pg_live::PgLive,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// One `ingest` waiting for its batch's commit.
struct IngestRequest {
    id: Vec<u8>,
    lane: String,
    connector: String,
    external_id: Option<String>,
    body: Vec<u8>,
    until_ms: i64,
    /// The event's arrival: a dedupe row that expired by then is taken over.
    now_ms: i64,
    answer: oneshot::Sender<StoreResult<Ingested>>,
}

/// A one-line error for a driver error: the server's own message when there is one.
fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Io(format!("postgres: {} ({})", db.message(), db.code().code())),
        None => match std::error::Error::source(&e) {
            Some(why) => StoreError::Io(format!("postgres: {e}: {why}")),
            None => StoreError::Io(format!("postgres: {e}")),
        },
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Io(format!("postgres connection pool: {other}")),
    }
}

fn count(n: i64) -> usize {
    n.max(0) as usize
}

fn event_id(raw: &[u8]) -> StoreResult<EventId> {
    uuid::Uuid::from_slice(raw)
        .map(EventId)
        .map_err(|e| StoreError::Corrupt(format!("bad event id in perch_events: {e}")))
}

/// The smallest event id received at or after `t` (UUID v7: the first 48 bits are the
/// arrival time in ms), so `id < time_floor(t)` means "received before t".
fn time_floor(t: DateTime<Utc>) -> Vec<u8> {
    let ms = (t.timestamp_millis().max(0) as u64).to_be_bytes();
    let mut id = vec![0u8; 16];
    id[..6].copy_from_slice(&ms[2..]);
    id
}

/// `prefix` as a LIKE pattern matching every string that starts with it.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

fn journal_entry(body: &[u8], fate: Option<&[u8]>) -> StoreResult<JournalEntry> {
    Ok(JournalEntry {
        event: serde_json::from_slice(body)?,
        fate: match fate {
            Some(f) => serde_json::from_slice(f)?,
            None => Fate::Pending,
        },
    })
}

/// Pending event ids or queued outbox keys by lane, for `pending_lanes`/`outbox_lanes`:
/// the lanes after `$1` found by a skip scan over the `(lane, …)` index (one index
/// probe per lane, however long its backlog), then the first `$3` items of each.
fn lane_scan_sql(table: &str, item: &str, only: &str) -> String {
    format!(
        r#"
WITH RECURSIVE lanes(lane, n) AS (
    (SELECT lane, 1::bigint FROM {table} WHERE lane > $1 {only} ORDER BY lane LIMIT 1)
    UNION ALL
    SELECT (SELECT t.lane FROM {table} t WHERE t.lane > lanes.lane {only} ORDER BY t.lane LIMIT 1), n + 1
    FROM lanes WHERE lanes.lane IS NOT NULL AND n < $2
)
SELECT l.lane, x.{item}
FROM lanes l CROSS JOIN LATERAL (
    SELECT t.{item} FROM {table} t WHERE t.lane = l.lane {only} ORDER BY t.{item} LIMIT $3
) x
WHERE l.lane IS NOT NULL
ORDER BY l.lane, x.{item}"#
    )
}

/// Rows of `(lane, item)` in lane order, grouped.
fn group_lanes<T>(rows: Vec<(String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (lane, item) in rows {
        match out.last_mut() {
            Some((last, items)) if *last == lane => items.push(item),
            _ => out.push((lane, vec![item])),
        }
    }
    out
}

/// The bound for "lanes after": every lane name is non-empty and sorts after "".
fn after(lane: Option<&str>) -> &str {
    lane.unwrap_or("")
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PostgresStore {
    /// Connect to `settings.url`, apply any missing schema migrations, and start the
    /// ingest batching task (on the current tokio runtime).
    pub async fn connect(settings: &PostgresSettings) -> StoreResult<Self> {
        let config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e| StoreError::Io(format!("store.url is not a PostgreSQL URL: {e}")))?;
        Self::connect_with(config, settings.pool_size).await
    }

    /// `connect` with a parsed driver config.
    pub async fn connect_with(
        config: tokio_postgres::Config,
        pool_size: usize,
    ) -> StoreResult<Self> {
        let pool = build_pool(config.clone(), pool_size)?;
        migrate(&pool).await?;
        let (tx, rx) = mpsc::channel(INGEST_QUEUE);
        tokio::spawn(run_ingest_batches(pool.clone(), rx));
        let live = super::pg_live::PgLive::start(config, pool.clone()).await;
        Ok(PostgresStore {
            pool,
            ingests: tx,
            live,
        })
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Queue `items` (keys neither queued nor sent) on `conn`; how many were new.
    async fn enqueue_on(
        conn: &impl deadpool_postgres::GenericClient,
        items: &[OutboxItem],
    ) -> StoreResult<usize> {
        if items.is_empty() {
            return Ok(0);
        }
        let insert = conn
            .prepare_cached(
                "INSERT INTO perch_outbox (key, lane, item) SELECT $1, $2, $3 \
                 WHERE NOT EXISTS (SELECT 1 FROM perch_sent WHERE key = $1) \
                 ON CONFLICT (key) DO NOTHING",
            )
            .await
            .map_err(pg)?;
        let mut added = 0;
        for item in items {
            let json = serde_json::to_vec(item)?;
            added += conn
                .execute(&insert, &[&item.key, &item.lane_key(), &json])
                .await
                .map_err(pg)? as usize;
        }
        Ok(added)
    }
}

/// The connection pool for `config`, with at most `pool_size` connections (opened
/// lazily, as calls need them).
fn build_pool(config: tokio_postgres::Config, pool_size: usize) -> StoreResult<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // Connections the driver saw close (a server restart) are replaced
            // rather than handed out.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(pool_size.max(2))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| StoreError::Io(format!("postgres connection pool: {e}")))?;
    Ok(pool)
}

/// `perch migrate`: apply the missing schema migrations to the database at `settings.url`;
/// the versions applied (none if it was up to date).
pub async fn migrate_database(settings: &PostgresSettings) -> StoreResult<Vec<i32>> {
    let config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| StoreError::Io(format!("store.url is not a PostgreSQL URL: {e}")))?;
    migrate(&build_pool(config, 2)?).await
}

/// Apply every migration the database lacks, in one transaction under an advisory lock.
pub async fn migrate(pool: &Pool) -> StoreResult<Vec<i32>> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS perch_migrations (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(pg)?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM perch_migrations", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newest) = done.iter().max()
        && *newest > MIGRATIONS.last().map_or(0, |m| m.0)
    {
        return Err(StoreError::Io(format!(
            "the database has schema version {newest}, newer than this perch knows: upgrade perch"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO perch_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(pg)?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied PostgreSQL schema migrations");
    }
    Ok(applied)
}

/// The group commit: take every ingest waiting now, store them in one transaction, answer
/// each once it is committed. Ends when the store is dropped.
async fn run_ingest_batches(pool: Pool, mut rx: mpsc::Receiver<IngestRequest>) {
    let mut batch = Vec::with_capacity(MAX_INGEST_BATCH);
    while rx.recv_many(&mut batch, MAX_INGEST_BATCH).await > 0 {
        match store_batch(&pool, &batch).await {
            Ok(answers) => {
                for (request, answer) in batch.drain(..).zip(answers) {
                    let _ = request.answer.send(Ok(answer));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "storing a batch of events failed; none of them was acknowledged");
                for request in batch.drain(..) {
                    let _ = request.answer.send(Err(StoreError::Io(e.to_string())));
                }
            }
        }
    }
}

/// Store one batch of ingests in one transaction; the outcome of each, in batch order.
async fn store_batch(pool: &Pool, batch: &[IngestRequest]) -> StoreResult<Vec<Ingested>> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    let claim = tx
        .prepare_cached(
            r#"
WITH claim AS (
    INSERT INTO perch_dedupe AS d (connector, external_id, event_id, until_ms)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (connector, external_id) DO UPDATE
        SET event_id = EXCLUDED.event_id, until_ms = EXCLUDED.until_ms
        WHERE d.until_ms <= $5
    RETURNING event_id
), stored AS (
    INSERT INTO perch_events (id, lane, connector, external_id, body)
    SELECT $3, $6, $1, $2, $7 FROM claim
    RETURNING id
)
SELECT count(*) FROM stored"#,
        )
        .await
        .map_err(pg)?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO perch_events (id, lane, connector, external_id, body) \
             VALUES ($1, $2, $3, NULL, $4)",
        )
        .await
        .map_err(pg)?;
    let holder = tx
        .prepare_cached(
            "SELECT event_id FROM perch_dedupe WHERE connector = $1 AND external_id = $2",
        )
        .await
        .map_err(pg)?;
    // Dedupe rows in key order (no lock cycles between replicas' batches).
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|a, b| {
        let key = |i: usize| (&batch[i].connector, &batch[i].external_id);
        key(*a).cmp(&key(*b))
    });
    // Pipelined: every statement is sent before the first answer is read.
    let stored = futures::future::try_join_all(order.iter().map(|&i| {
        let (r, claim, insert) = (&batch[i], &claim, &insert);
        let tx = &tx;
        async move {
            match &r.external_id {
                Some(x) => {
                    let row = tx
                        .query_one(
                            claim,
                            &[
                                &r.connector,
                                x,
                                &r.id,
                                &r.until_ms,
                                &r.now_ms,
                                &r.lane,
                                &r.body,
                            ],
                        )
                        .await?;
                    Ok::<_, tokio_postgres::Error>(row.get::<_, i64>(0) == 1)
                }
                None => {
                    tx.execute(insert, &[&r.id, &r.lane, &r.connector, &r.body])
                        .await?;
                    Ok(true)
                }
            }
        }
    }))
    .await
    .map_err(pg)?;
    let mut answers = vec![Ingested::Accepted; batch.len()];
    for (&i, was_stored) in order.iter().zip(stored) {
        if was_stored {
            continue;
        }
        // A live dedupe row: its holder is the original. (A statement of its own, so it
        // sees a holder another replica committed while this one waited for its lock.)
        let r = &batch[i];
        let row = tx
            .query_one(&holder, &[&r.connector, &r.external_id])
            .await
            .map_err(pg)?;
        answers[i] = Ingested::Duplicate {
            original: event_id(row.get::<_, &[u8]>(0))?,
        };
    }
    tx.commit().await.map_err(pg)?;
    Ok(answers)
}

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(&self, event: &Event, dedupe_until: DateTime<Utc>) -> StoreResult<Ingested> {
        let (answer, answered) = oneshot::channel();
        let request = IngestRequest {
            id: event.id.0.as_bytes().to_vec(),
            lane: event.lane_key(),
            connector: event.connector.clone(),
            external_id: event.external_id.clone(),
            body: serde_json::to_vec(event)?,
            until_ms: dedupe_until.timestamp_millis(),
            now_ms: event.received_at.timestamp_millis(),
            answer,
        };
        let stopped = || StoreError::Io("the ingest batching task has stopped".into());
        self.ingests.send(request).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    async fn pending_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<EventId>)>> {
        if max_lanes == 0 || per_lane == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = lane_scan_sql("perch_events", "id", "AND fate IS NULL");
        let stmt = client.prepare_cached(&sql).await.map_err(pg)?;
        let rows = client
            .query(
                &stmt,
                &[&after(after_lane), &limit(max_lanes), &limit(per_lane)],
            )
            .await
            .map_err(pg)?;
        let rows = rows
            .iter()
            .map(|r| Ok((r.get::<_, String>(0), event_id(r.get::<_, &[u8]>(1))?)))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(group_lanes(rows))
    }

    async fn event(&self, id: EventId) -> StoreResult<Option<JournalEntry>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT body, fate FROM perch_events WHERE id = $1")
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(&stmt, &[&id.0.as_bytes().as_slice()])
            .await
            .map_err(pg)?;
        row.map(|r| journal_entry(r.get(0), r.get(1))).transpose()
    }

    async fn complete_event(
        &self,
        event: &Event,
        fate: &Fate,
        items: &[OutboxItem],
    ) -> StoreResult<()> {
        let fate = serde_json::to_vec(fate)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The fence: the fate is recorded by whoever gets there first. The row lock
        // makes a concurrent completer wait, and then find the fate set.
        let recorded = tx
            .execute(
                "UPDATE perch_events SET fate = $2 WHERE id = $1 AND fate IS NULL",
                &[&event.id.0.as_bytes().as_slice(), &fate],
            )
            .await
            .map_err(pg)?;
        if recorded == 0 {
            // Handled already (or not stored): leave everything as it is.
            return tx.rollback().await.map_err(pg);
        }
        Self::enqueue_on(&tx, items).await?;
        tx.commit().await.map_err(pg)
    }

    async fn recent_events(
        &self,
        before: Option<EventId>,
        limit_to: usize,
    ) -> StoreResult<Vec<JournalEntry>> {
        let before = match before {
            Some(id) => id.0.as_bytes().to_vec(),
            None => vec![0xff; 17],
        };
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, body, fate FROM perch_events WHERE id < $1 ORDER BY id DESC LIMIT $2",
                &[&before, &limit(limit_to)],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            match journal_entry(r.get(1), r.get(2)) {
                Ok(entry) => out.push(entry),
                // As on sled: one record that does not decode must not take down every
                // page that includes it.
                Err(StoreError::Decode(e)) => {
                    let id = event_id(r.get::<_, &[u8]>(0)).map(|i| i.to_string());
                    tracing::error!(event = ?id, error = %e, "journal record cannot be decoded; left out of the listing");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn pending_count(&self) -> StoreResult<usize> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM perch_events WHERE fate IS NULL", &[])
            .await
            .map_err(pg)?;
        Ok(count(row.get(0)))
    }

    async fn enqueue(&self, items: &[OutboxItem]) -> StoreResult<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let added = Self::enqueue_on(&tx, items).await?;
        tx.commit().await.map_err(pg)?;
        Ok(added)
    }

    async fn outbox_after(
        &self,
        after_key: Option<&str>,
        limit_to: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT item FROM perch_outbox WHERE key > $1 ORDER BY key LIMIT $2",
                &[&after_key.unwrap_or(""), &limit(limit_to)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| Ok(serde_json::from_slice(r.get::<_, &[u8]>(0))?))
            .collect()
    }

    async fn outbox_lanes(
        &self,
        after_lane: Option<&str>,
        max_lanes: usize,
        per_lane: usize,
    ) -> StoreResult<Vec<(String, Vec<String>)>> {
        if max_lanes == 0 || per_lane == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = lane_scan_sql("perch_outbox", "key", "");
        let stmt = client.prepare_cached(&sql).await.map_err(pg)?;
        let rows = client
            .query(
                &stmt,
                &[&after(after_lane), &limit(max_lanes), &limit(per_lane)],
            )
            .await
            .map_err(pg)?;
        Ok(group_lanes(
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect(),
        ))
    }

    async fn outbox_item(&self, lane: &str, key: &str) -> StoreResult<Option<OutboxItem>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT item FROM perch_outbox WHERE key = $1 AND lane = $2")
            .await
            .map_err(pg)?;
        let row = client.query_opt(&stmt, &[&key, &lane]).await.map_err(pg)?;
        row.map(|r| Ok(serde_json::from_slice(r.get::<_, &[u8]>(0))?))
            .transpose()
    }

    async fn outbox_update(&self, item: &OutboxItem) -> StoreResult<()> {
        let json = serde_json::to_vec(item)?;
        let client = self.client().await?;
        // Only while still queued: never resurrect a delivered or dead item.
        client
            .execute(
                "UPDATE perch_outbox SET item = $2 WHERE key = $1",
                &[&item.key, &json],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn outbox_delivered(&self, item: &OutboxItem, record: &SentRecord) -> StoreResult<()> {
        let json = serde_json::to_vec(record)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        upsert_sent(&tx, record, &json).await?;
        tx.execute("DELETE FROM perch_outbox WHERE key = $1", &[&item.key])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn record_sent(&self, record: &SentRecord) -> StoreResult<()> {
        let json = serde_json::to_vec(record)?;
        let client = self.client().await?;
        upsert_sent(&client, record, &json).await
    }

    async fn outbox_dead(&self, letter: &DeadLetter) -> StoreResult<()> {
        let json = serde_json::to_vec(letter)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The fence: only an item still queued becomes a dead letter.
        let dequeued = tx
            .execute(
                "DELETE FROM perch_outbox WHERE key = $1",
                &[&letter.item.key],
            )
            .await
            .map_err(pg)?;
        if dequeued == 0 {
            return tx.rollback().await.map_err(pg);
        }
        tx.execute(
            "INSERT INTO perch_dead_letters (key, letter) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET letter = EXCLUDED.letter",
            &[&letter.item.key, &json],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn outbox_count(&self) -> StoreResult<usize> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM perch_outbox", &[])
            .await
            .map_err(pg)?;
        Ok(count(row.get(0)))
    }

    async fn sent(&self, key: &str) -> StoreResult<Option<SentRecord>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT record FROM perch_sent WHERE key = $1")
            .await
            .map_err(pg)?;
        let row = client.query_opt(&stmt, &[&key]).await.map_err(pg)?;
        row.map(|r| Ok(serde_json::from_slice(r.get::<_, &[u8]>(0))?))
            .transpose()
    }

    async fn dead_letters(&self, limit_to: usize) -> StoreResult<Vec<DeadLetter>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT letter FROM perch_dead_letters ORDER BY key LIMIT $1",
                &[&limit(limit_to)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| Ok(serde_json::from_slice(r.get::<_, &[u8]>(0))?))
            .collect()
    }

    async fn sent_after(
        &self,
        after_key: Option<&str>,
        limit_to: usize,
    ) -> StoreResult<Vec<SentRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT record FROM perch_sent WHERE key > $1 ORDER BY key LIMIT $2",
                &[&after_key.unwrap_or(""), &limit(limit_to)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| Ok(serde_json::from_slice(r.get::<_, &[u8]>(0))?))
            .collect()
    }

    async fn kv_after(
        &self,
        after_entry: Option<(&str, &str)>,
        limit_to: usize,
    ) -> StoreResult<Vec<KvEntry>> {
        let (ns, key) = after_entry.unwrap_or(("", ""));
        let client = self.client().await?;
        // ("", "") sorts before every entry but ("", ""), which no one stores.
        let rows = client
            .query(
                "SELECT ns, key, value FROM perch_kv WHERE (ns, key) > ($1, $2) \
                 ORDER BY ns, key LIMIT $3",
                &[&ns, &key, &limit(limit_to)],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn replay_dead(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<OutboxItem>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Taken and removed in one statement: two replicas replaying the same letter
        // queue it once.
        let Some(row) = tx
            .query_opt(
                "DELETE FROM perch_dead_letters WHERE key = $1 RETURNING letter",
                &[&key],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let letter: DeadLetter = serde_json::from_slice(row.get::<_, &[u8]>(0))?;
        let mut item = letter.item;
        item.attempts = 0;
        item.next_at = now;
        item.waiting = None;
        item.last_error = Some(format!("replayed after: {}", letter.error));
        let json = serde_json::to_vec(&item)?;
        tx.execute(
            "INSERT INTO perch_outbox (key, lane, item) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO NOTHING",
            &[&item.key, &item.lane_key(), &json],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Some(item))
    }

    async fn kv_get(&self, ns: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT value FROM perch_kv WHERE ns = $1 AND key = $2")
            .await
            .map_err(pg)?;
        let row = client.query_opt(&stmt, &[&ns, &key]).await.map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO perch_kv (ns, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value",
                &[&ns, &key, &value],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM perch_kv WHERE ns = $1 AND key = $2",
                &[&ns, &key],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn kv_compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        // Each case is one statement, so the comparison and the change are atomic
        // across replicas (a row lock, or the primary key for an insert).
        let changed = match (expected, new) {
            (None, Some(new)) => client.execute(
                "INSERT INTO perch_kv (ns, key, value) VALUES ($1, $2, $3) ON CONFLICT (ns, key) DO NOTHING",
                &[&ns, &key, &new],
            ).await,
            (Some(old), Some(new)) => client.execute(
                "UPDATE perch_kv SET value = $4 WHERE ns = $1 AND key = $2 AND value = $3",
                &[&ns, &key, &old, &new],
            ).await,
            (Some(old), None) => client.execute(
                "DELETE FROM perch_kv WHERE ns = $1 AND key = $2 AND value = $3",
                &[&ns, &key, &old],
            ).await,
            // "Absent, and stays absent": true exactly when there is no value.
            (None, None) => {
                let row = client
                    .query_one(
                        "SELECT NOT EXISTS (SELECT 1 FROM perch_kv WHERE ns = $1 AND key = $2)",
                        &[&ns, &key],
                    )
                    .await
                    .map_err(pg)?;
                return Ok(row.get(0));
            }
        }
        .map_err(pg)?;
        Ok(changed == 1)
    }

    async fn kv_scan(&self, ns: &str, prefix: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, value FROM perch_kv WHERE ns = $1 AND key LIKE $2 ORDER BY key",
                &[&ns, &like_prefix(prefix)],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn flush(&self) -> StoreResult<()> {
        // Every write was committed by the call that made it.
        Ok(())
    }

    async fn flush_journal(&self) -> StoreResult<()> {
        // `ingest` returns after its batch's commit (module docs).
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn announce(&self, topic: crate::live::Topic, about: &str) {
        self.live.announce(topic, about);
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<crate::live::Notice>> {
        Some(self.live.subscribe())
    }

    async fn hold_lanes(
        &self,
        queue: &str,
        holder: &str,
        lanes: &[String],
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        if lanes.is_empty() {
            return Ok(Vec::new());
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        // Sorted: two replicas claiming overlapping lanes lock their rows in one order.
        let mut lanes = lanes.to_vec();
        lanes.sort();
        lanes.dedup();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                r#"
WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
INSERT INTO perch_leases AS l (queue, lane, holder, until_ms)
SELECT $1, lane, $3, now.ms + $4 FROM unnest($2::text[]) AS lane, now
ON CONFLICT (queue, lane) DO UPDATE
    SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
    WHERE l.holder = EXCLUDED.holder
       OR l.until_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint
RETURNING lane"#,
            )
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[&queue, &lanes, &holder, &ttl_ms])
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn take_rate_slot(
        &self,
        bucket: &str,
        interval: Duration,
        burst: u32,
    ) -> StoreResult<Duration> {
        let interval_us = i64::try_from(interval.as_micros()).unwrap_or(i64::MAX / 4);
        // GCRA: the slot taken now may be used at max(tat, now) - (burst - 1) intervals;
        // with tat' = max(tat, now) + interval, that is tat' - burst intervals.
        let tolerance_us = interval_us.saturating_mul(i64::from(burst.max(1)));
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                r#"
WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us)
INSERT INTO perch_rate_slots AS s (bucket, tat_us)
SELECT $1, now.us + $2 FROM now
ON CONFLICT (bucket) DO UPDATE
    SET tat_us = GREATEST(s.tat_us, (SELECT us FROM now)) + $2
RETURNING s.tat_us, (SELECT us FROM now)"#,
            )
            .await
            .map_err(pg)?;
        let row = client
            .query_one(&stmt, &[&bucket, &interval_us])
            .await
            .map_err(pg)?;
        let (tat_us, now_us): (i64, i64) = (row.get(0), row.get(1));
        // `now` was read before the row lock was granted, so the wait is, if anything,
        // a little long: never early.
        let wait_us = tat_us.saturating_sub(now_us).saturating_sub(tolerance_us);
        Ok(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)))
    }

    async fn release_lanes(&self, queue: &str, holder: &str, lanes: &[String]) -> StoreResult<()> {
        if lanes.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM perch_leases WHERE queue = $1 AND holder = $2 AND lane = ANY($3)",
                &[&queue, &holder, &lanes],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn sweep(&self, cut: SweepCutoffs) -> StoreResult<SweepStats> {
        let client = self.client().await?;
        let sent = client
            .execute(
                "DELETE FROM perch_sent WHERE at_ms < $1",
                &[&cut.sent_before.timestamp_millis()],
            )
            .await
            .map_err(pg)?;
        // Handled events received before the cutoff go with their dedupe keys (those
        // have expired: the retention is at least the dedupe window); pending ones stay.
        let row = client
            .query_one(
                r#"
WITH gone AS (
    DELETE FROM perch_events WHERE id < $1 AND fate IS NOT NULL
    RETURNING id, connector, external_id
), keys AS (
    DELETE FROM perch_dedupe d USING gone
    WHERE d.connector = gone.connector AND d.external_id = gone.external_id
      AND d.event_id = gone.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM keys)"#,
                &[&time_floor(cut.journal_before)],
            )
            .await
            .map_err(pg)?;
        // Rate buckets whose time has passed are full: the same as no row.
        client
            .execute(
                "DELETE FROM perch_rate_slots \
                 WHERE tat_us < (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(SweepStats {
            dedupe_keys: count(row.get(1)),
            sent_records: sent as usize,
            events: count(row.get(0)),
        })
    }
}

async fn upsert_sent(
    conn: &impl deadpool_postgres::GenericClient,
    record: &SentRecord,
    json: &[u8],
) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO perch_sent (key, at_ms, record) VALUES ($1, $2, $3) \
         ON CONFLICT (key) DO UPDATE SET at_ms = EXCLUDED.at_ms, record = EXCLUDED.record",
        &[&record.key, &record.at.timestamp_millis(), &json],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

#[cfg(any(test, feature = "testing"))]
/// For tests: a fresh, empty database on the server named by `PERCH_TEST_DATABASE_URL`
/// (a role that may `CREATE DATABASE`), as a driver config. Without that variable:
/// under `CI` a panic (a missing server must fail the suite), otherwise `None` with the
/// reason printed, so the caller skips.
pub async fn test_database() -> Option<tokio_postgres::Config> {
    let Ok(url) = std::env::var("PERCH_TEST_DATABASE_URL") else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but PERCH_TEST_DATABASE_URL is not: the PostgreSQL tests need a server"
            );
        }
        eprintln!("skipped: PERCH_TEST_DATABASE_URL is not set (a PostgreSQL superuser URL)");
        return None;
    };
    let admin: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("PERCH_TEST_DATABASE_URL is not a PostgreSQL URL: {e}"));
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the PostgreSQL of PERCH_TEST_DATABASE_URL: {e}"));
    tokio::spawn(connection);
    let name = format!("perch_test_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let mut config = admin;
    config.dbname(&name);
    Some(config)
}

#[cfg(test)]
/// For tests: a store on a fresh database (`test_database`).
pub async fn test_store() -> Option<PostgresStore> {
    let config = test_database().await?;
    Some(
        PostgresStore::connect_with(config, 8)
            .await
            .expect("connect to the test database"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn time_floor_orders_like_uuid_v7() {
        let t = Utc::now();
        let id = EventId::new();
        assert!(
            id.0.as_bytes().as_slice() >= time_floor(t - chrono::Duration::seconds(5)).as_slice()
        );
        assert!(
            id.0.as_bytes().as_slice() < time_floor(t + chrono::Duration::seconds(5)).as_slice()
        );
    }

    /// A bucket of 10/s with a burst of 2: two slots now, the third a whole interval
    /// later (less the time the calls took), the fourth two intervals; a bucket whose
    /// time has passed is swept.
    #[tokio::test]
    async fn rate_slots_follow_gcra_and_full_buckets_are_swept() {
        let Some(store) = test_store().await else {
            return;
        };
        let interval = Duration::from_millis(100);
        let mut waits = Vec::new();
        for _ in 0..4 {
            waits.push(store.take_rate_slot("c/second", interval, 2).await.unwrap());
        }
        assert_eq!(waits[..2], [Duration::ZERO, Duration::ZERO], "{waits:?}");
        assert!(
            waits[2] > Duration::from_millis(50) && waits[2] <= interval,
            "{waits:?}"
        );
        assert!(
            waits[3] > Duration::from_millis(150) && waits[3] <= 2 * interval,
            "{waits:?}"
        );
        // Another bucket is independent.
        assert_eq!(
            store.take_rate_slot("c/chat/x", interval, 1).await.unwrap(),
            Duration::ZERO
        );
        let rows = |client: deadpool_postgres::Object| async move {
            let row = client
                .query_one("SELECT count(*) FROM perch_rate_slots", &[])
                .await
                .unwrap();
            row.get::<_, i64>(0)
        };
        assert_eq!(rows(store.client().await.unwrap()).await, 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = Utc::now() - chrono::Duration::days(365);
        store
            .sweep(SweepCutoffs {
                sent_before: now,
                journal_before: now,
            })
            .await
            .unwrap();
        assert_eq!(rows(store.client().await.unwrap()).await, 0);
    }

    #[tokio::test]
    async fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let Some(config) = test_database().await else {
            return;
        };
        let store = PostgresStore::connect_with(config.clone(), 2)
            .await
            .unwrap();
        assert!(
            migrate(&store.pool).await.unwrap().is_empty(),
            "already applied"
        );
        let client = store.client().await.unwrap();
        client
            .execute("INSERT INTO perch_migrations (version) VALUES (9999)", &[])
            .await
            .unwrap();
        let err = PostgresStore::connect_with(config, 2).await.unwrap_err();
        assert!(
            err.to_string().contains("newer than this perch knows"),
            "{err}"
        );
    }
}
