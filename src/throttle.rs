//! One set of rate limits per connector, as a layer around it (the model is teloxide's
//! `Throttle` adaptor): every outbound call waits here, whoever makes it — the outbox's
//! deliveries and bots' awaited calls (`BotContext::call`: create a chat, add members,
//! look users up) alike — so a connector's quota is never exceeded by a path that
//! forgot it.
//!
//! Two kinds of waiting:
//! - **Quotas** the connector declares (`Connector::rate_limits`: per second, per minute,
//!   per chat), with governor's limiters.
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

/// Pauses the platform ordered, by scope.
#[derive(Default)]
struct Pauses {
    connector: Option<Instant>,
    chats: HashMap<String, Instant>,
}

/// A connector behind its rate limits. Everything but `execute` is passed through.
pub struct Throttled {
    inner: SharedConnector,
    limiters: Limiters,
    /// A std mutex: held only to read or set an instant, never across an await.
    pauses: Mutex<Pauses>,
}

impl Throttled {
    pub fn new(inner: SharedConnector) -> Self {
        Throttled {
            limiters: Limiters::new(inner.rate_limits()),
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

    /// How long calls to this connector are paused from now (for status pages).
    pub fn paused_for(&self) -> Option<Duration> {
        let p = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        p.connector
            .and_then(|t| t.checked_duration_since(Instant::now()))
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
            self.limiters.ready(&chat).await;
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

/// `inner` behind its rate limits.
pub fn throttle(inner: SharedConnector) -> SharedConnector {
    Arc::new(Throttled::new(inner))
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

    #[tokio::test(start_paused = true)]
    async fn a_connector_wide_rate_limit_pauses_every_chat() {
        let inner = Arc::new(Limited {
            calls: AtomicUsize::new(0),
            at: Mutex::new(vec![]),
            scope: LimitScope::Connector,
        });
        let t = Throttled::new(inner.clone());
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
        let t = Throttled::new(inner.clone());
        let start = Instant::now();
        assert!(t.execute(&send("a"), "k1").await.is_err());
        t.execute(&send("b"), "k2").await.unwrap();
        assert!(Instant::now() - start < Duration::from_millis(10));
        t.execute(&send("a"), "k3").await.unwrap();
        assert!(Instant::now() - start >= Duration::from_secs(1));
    }
}
