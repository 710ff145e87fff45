//! One set of rate limits per connector, as a layer around it (the model is teloxide's
//! `Throttle` adaptor): every outbound call waits here, whoever makes it — the outbox's
//! deliveries and bots' awaited calls (`BotContext::call`: create a chat, add members,
//! look users up) alike — so a connector's quota is never exceeded by a path that
//! forgot it.
//!
//! Two kinds of waiting:
//! - **Quotas** the connector declares (`Connector::rate_limits`: per second, per minute,
//!   per chat), with governor's limiters in one process. When replicas share a store
//!   (`Store::shared`: PostgreSQL), the quotas are buckets in the store instead
//!   (`Store::take_rate_slot`), so N replicas together keep to the quota, not N times it.
//! - **Pauses** the platform orders: a `SendError::RateLimited` answer that says how long
//!   to wait pauses every call in its scope — the whole connector, or one chat — until
//!   then, not only the call that got it. Otherwise every other queued item would walk
//!   into the same 429 during the window.
//!
//! Flow: outbox / bot → **throttle** → connector (out) → platform.

use crate::action::{Delivered, Operation};
use crate::connectors::{
    Connector, DataSource, Inbound, InboundError, InboundRequest, LimitScope, RateLimits,
    SendError, SharedConnector,
};
use crate::store::{Store, StoreError};
use async_trait::async_trait;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The most chats with a pending pause that are remembered; older entries are pruned
/// when they have expired (a pause is seconds long, so this is never reached in
/// practice, but the map must not grow without bound).
const MAX_CHAT_PAUSES: usize = 10_000;

/// When a shared rate bucket could not be read (the database is unreachable), the
/// operation is not sent (that could break the quota) but retried after this long.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The rate limiters of one connector.
struct Limiters {
    global: Option<DefaultDirectRateLimiter>,
    per_minute: Option<DefaultDirectRateLimiter>,
    per_chat: Option<DefaultKeyedRateLimiter<String>>,
}

impl Limiters {
    fn new(limits: RateLimits) -> Self {
        let nz = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        Limiters {
            global: limits.per_second.map(|r| {
                RateLimiter::direct(
                    Quota::per_second(nz(r)).allow_burst(nz(limits.burst.unwrap_or(r))),
                )
            }),
            per_minute: limits
                .per_minute
                .map(|r| RateLimiter::direct(Quota::per_minute(nz(r)))),
            per_chat: limits
                .per_chat_per_second
                .map(|r| RateLimiter::keyed(Quota::per_second(nz(r)))),
        }
    }

    /// Wait until one more operation to `chat` is allowed.
    async fn ready(&self, chat: &String) {
        // The chat first: waiting on it must not hold a slot of the global budget.
        if let Some(l) = &self.per_chat {
            l.until_key_ready(chat).await;
        }
        if let Some(l) = &self.per_minute {
            l.until_ready().await;
        }
        if let Some(l) = &self.global {
            l.until_ready().await;
        }
    }
}

/// The quotas of one connector, kept where every sender sees them.
enum Quotas {
    /// One process sends: governor's limiters in memory.
    InProcess(Limiters),
    /// Replicas share the store: its rate buckets, named after the connector.
    Shared {
        store: Arc<dyn Store>,
        limits: RateLimits,
    },
}

impl Quotas {
    /// Wait until one more operation of `connector` to `chat` is allowed; an error if the
    /// shared store could not be asked (the operation is then retried later).
    async fn ready(&self, connector: &str, chat: &String) -> Result<(), StoreError> {
        let (store, limits) = match self {
            Quotas::InProcess(limiters) => {
                limiters.ready(chat).await;
                return Ok(());
            }
            Quotas::Shared { store, limits } => (store, limits),
        };
        // The same order and burst allowances as `Limiters`: the chat first, and
        // governor's defaults (a burst of the per-second or per-minute count).
        let buckets = [
            limits.per_chat_per_second.map(|r| {
                (
                    format!("{connector}/chat/{chat}"),
                    Duration::from_secs(1) / r.max(1),
                    r,
                )
            }),
            limits.per_minute.map(|r| {
                (
                    format!("{connector}/minute"),
                    Duration::from_secs(60) / r.max(1),
                    r,
                )
            }),
            limits.per_second.map(|r| {
                (
                    format!("{connector}/second"),
                    Duration::from_secs(1) / r.max(1),
                    limits.burst.unwrap_or(r),
                )
            }),
        ];
        for (bucket, interval, burst) in buckets.into_iter().flatten() {
            let wait = store.take_rate_slot(&bucket, interval, burst).await?;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }
}

/// Pauses the platform ordered, by scope.
#[derive(Default)]
struct Pauses {
    connector: Option<Instant>,
    chats: HashMap<String, Instant>,
}

/// A connector behind its rate limits. Everything but `execute` is passed through.
pub struct Throttled {
    inner: SharedConnector,
    quotas: Quotas,
    /// A std mutex: held only to read or set an instant, never across an await.
    pauses: Mutex<Pauses>,
}

impl Throttled {
    /// `inner` behind its quotas: in the store when `store` is shared by replicas,
    /// in this process otherwise.
    pub fn new(inner: SharedConnector, store: Arc<dyn Store>) -> Self {
        let limits = inner.rate_limits();
        let quotas = if store.shared() {
            Quotas::Shared { store, limits }
        } else {
            Quotas::InProcess(Limiters::new(limits))
        };
        Throttled {
            quotas,
            inner,
            pauses: Mutex::new(Pauses::default()),
        }
    }

    /// When calls to `chat` may go again (`None`: now).
    fn paused(&self, chat: &str) -> Option<Instant> {
        let p = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        p.connector
            .into_iter()
            .chain(p.chats.get(chat).copied())
            .filter(|t| *t > now)
            .max()
    }

    /// Remember a pause the platform ordered.
    fn pause(&self, scope: LimitScope, chat: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut p = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        match scope {
            LimitScope::Connector => {
                p.connector = Some(p.connector.map_or(until, |t| t.max(until)));
            }
            LimitScope::Chat => {
                if p.chats.len() >= MAX_CHAT_PAUSES {
                    let now = Instant::now();
                    p.chats.retain(|_, t| *t > now);
                }
                let t = p.chats.entry(chat.to_string()).or_insert(until);
                *t = (*t).max(until);
            }
        }
    }
}

#[async_trait]
impl Connector for Throttled {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn handle_inbound(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        self.inner.handle_inbound(req)
    }

    async fn execute(&self, op: &Operation, idempotency_key: &str) -> Result<Delivered, SendError> {
        let chat = op.lane_id();
        // A pause ordered while we waited for a quota slot is honoured too: loop until
        // neither holds us back.
        loop {
            if let Some(until) = self.paused(&chat) {
                tokio::time::sleep_until(until).await;
            }
            if let Err(e) = self.quotas.ready(self.inner.name(), &chat).await {
                return Err(SendError::Retry {
                    reason: format!("rate limit not checked: {e}"),
                    retry_after: Some(STORE_RETRY),
                });
            }
            if self.paused(&chat).is_none() {
                break;
            }
        }
        let result = self.inner.execute(op, idempotency_key).await;
        if let Err(SendError::RateLimited {
            retry_after: Some(wait),
            scope,
            ..
        }) = &result
        {
            self.pause(*scope, &chat, *wait);
        }
        result
    }

    fn rate_limits(&self) -> RateLimits {
        self.inner.rate_limits()
    }
    fn paused_until(&self, chat: &str) -> Option<Instant> {
        self.paused(chat)
    }
    fn http_routes(&self) -> Option<axum::Router> {
        self.inner.http_routes()
    }
    fn data_source(&self) -> Option<&dyn DataSource> {
        self.inner.data_source()
    }
    fn describe(&self) -> BTreeMap<&'static str, String> {
        self.inner.describe()
    }
    fn secrets(&self) -> Vec<&str> {
        self.inner.secrets()
    }
}

/// `inner` behind its rate limits (shared with the other replicas of `store`, if any).
pub fn throttle(inner: SharedConnector, store: Arc<dyn Store>) -> SharedConnector {
    Arc::new(Throttled::new(inner, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{MessageBody, Target};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers 429 "wait 1 s" to its first call, then succeeds; records call times.
    struct Limited {
        calls: AtomicUsize,
        at: Mutex<Vec<Instant>>,
        scope: LimitScope,
    }

    #[async_trait]
    impl Connector for Limited {
        fn name(&self) -> &str {
            "limited"
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        async fn execute(&self, _: &Operation, _: &str) -> Result<Delivered, SendError> {
            self.at.lock().unwrap().push(Instant::now());
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(SendError::RateLimited {
                    reason: "429".into(),
                    retry_after: Some(Duration::from_secs(1)),
                    scope: self.scope,
                });
            }
            Ok(Delivered::default())
        }
    }

    fn send(chat: &str) -> Operation {
        Operation::Send {
            to: Target::chat(chat),
            body: MessageBody::text("x"),
            reply_to: None,
        }
    }

    /// A store of one process (not shared): the quotas stay in memory.
    fn in_process_store() -> Arc<dyn Store> {
        Arc::new(crate::store::SledStore::temporary().unwrap())
    }

    /// Succeeds at once and records when each call arrived, with a declared quota.
    struct Counting {
        limits: RateLimits,
        at: Mutex<Vec<std::time::Instant>>,
    }

    #[async_trait]
    impl Connector for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        async fn execute(&self, _: &Operation, _: &str) -> Result<Delivered, SendError> {
            self.at.lock().unwrap().push(std::time::Instant::now());
            Ok(Delivered::default())
        }
        fn rate_limits(&self) -> RateLimits {
            self.limits
        }
    }

    /// Three replicas (each its own connection pool on one PostgreSQL) send through one
    /// connector with a quota of 20/s, burst 1: together they keep to 20/s. With the
    /// quota kept in each process, as before, they sent three times as fast.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_one_quota_through_postgres() {
        let Some(config) = crate::store::postgres::test_database().await else {
            return;
        };
        let sink = Arc::new(Counting {
            limits: RateLimits {
                per_second: Some(20),
                burst: Some(1),
                ..RateLimits::default()
            },
            at: Mutex::new(vec![]),
        });
        let mut replicas = Vec::new();
        for _ in 0..3 {
            let store: Arc<dyn Store> = Arc::new(
                crate::store::PostgresStore::connect_with(config.clone(), 2)
                    .await
                    .unwrap(),
            );
            replicas.push(Arc::new(Throttled::new(sink.clone(), store)));
        }
        let mut sends = Vec::new();
        for (r, replica) in replicas.iter().enumerate() {
            for i in 0..10 {
                let replica = replica.clone();
                sends.push(tokio::spawn(async move {
                    replica
                        .execute(&send(&format!("chat{i}")), &format!("{r}/{i}"))
                        .await
                        .unwrap();
                }));
            }
        }
        for s in sends {
            s.await.unwrap();
        }
        let at = sink.at.lock().unwrap().clone();
        assert_eq!(at.len(), 30);
        // GCRA with burst 1: the 30th call is 29 intervals (50 ms) after the first
        // (each process alone: 9 intervals).
        let span = at[29] - at[0];
        assert!(span >= Duration::from_millis(1400), "{span:?}");
        // And no half second holds more than 1 + 10 calls (one spare for timing).
        for (i, t) in at.iter().enumerate() {
            let in_window = at[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_millis(500))
                .count();
            assert!(
                in_window <= 12,
                "{in_window} calls within 500 ms of call {i}"
            );
        }
    }

    /// A per-chat quota is shared too: two replicas sending to one chat at 10/s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_a_chat_quota_through_postgres() {
        let Some(config) = crate::store::postgres::test_database().await else {
            return;
        };
        let sink = Arc::new(Counting {
            limits: RateLimits {
                per_chat_per_second: Some(10),
                ..RateLimits::default()
            },
            at: Mutex::new(vec![]),
        });
        let mut sends = Vec::new();
        for r in 0..2 {
            let store: Arc<dyn Store> = Arc::new(
                crate::store::PostgresStore::connect_with(config.clone(), 2)
                    .await
                    .unwrap(),
            );
            let replica = Arc::new(Throttled::new(sink.clone(), store));
            for i in 0..15 {
                let replica = replica.clone();
                sends.push(tokio::spawn(async move {
                    replica
                        .execute(&send("one"), &format!("{r}/{i}"))
                        .await
                        .unwrap();
                }));
            }
        }
        for s in sends {
            s.await.unwrap();
        }
        let at = sink.at.lock().unwrap().clone();
        assert_eq!(at.len(), 30);
        // A burst of 10, then 10/s: the 30th call 2 s after the first (each process
        // alone: 0.5 s).
        let span = at[29] - at[0];
        assert!(span >= Duration::from_millis(1900), "{span:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connector_wide_rate_limit_pauses_every_chat() {
        let inner = Arc::new(Limited {
            calls: AtomicUsize::new(0),
            at: Mutex::new(vec![]),
            scope: LimitScope::Connector,
        });
        let t = Throttled::new(inner.clone(), in_process_store());
        let start = Instant::now();
        assert!(t.execute(&send("a"), "k1").await.is_err());
        // Another chat's call waits out the pause the first one got.
        t.execute(&send("b"), "k2").await.unwrap();
        let at = inner.at.lock().unwrap().clone();
        assert_eq!(at.len(), 2);
        assert!(
            at[1] - start >= Duration::from_secs(1),
            "{:?}",
            at[1] - start
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_chat_rate_limit_pauses_only_that_chat() {
        let inner = Arc::new(Limited {
            calls: AtomicUsize::new(0),
            at: Mutex::new(vec![]),
            scope: LimitScope::Chat,
        });
        let t = Throttled::new(inner.clone(), in_process_store());
        let start = Instant::now();
        assert!(t.execute(&send("a"), "k1").await.is_err());
        t.execute(&send("b"), "k2").await.unwrap();
        assert!(Instant::now() - start < Duration::from_millis(10));
        t.execute(&send("a"), "k3").await.unwrap();
        assert!(Instant::now() - start >= Duration::from_secs(1));
    }
}
