//! Live news, within one process and across replicas.
//!
//! - `EventFeed`: which journal entries just changed (an event accepted, or its fate
//!   recorded), for the console's live event list (`GET /api/events/stream`, SSE).
//! - `Notice` / `Topic`: what a replica tells the others sharing its store
//!   (`Store::announce`, `Store::notices`), so a browser connected to any replica hears
//!   what happened on any other: journal changes (`EventFeed`), handled card clicks
//!   (`crate::clicks`) and web-chat messages and rooms (`connectors/local`). On
//!   PostgreSQL this is `LISTEN/NOTIFY` (`crate::store::pg_live`); the embedded store
//!   belongs to one process and has no other replica to tell.
//!
//! Only ids travel; the reader fetches the thing from the store, so what a browser shows
//! is what is durable (and private rooms are filtered by the room as stored). Channels
//! are bounded: a listener that falls behind, or a replica that may have missed notices
//! (its listening connection dropped), is told `Resync` and reloads from the store; a
//! sender never waits.

use crate::event::EventId;
use crate::store::Store;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast;

/// How many changes a slow listener may fall behind before it must resync.
const FEED_CAPACITY: usize = 1024;

/// What a notice between replicas is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// A journal entry changed; `about` is the event id.
    Event,
    /// A card click was handled (its fate recorded); `about` is the event id.
    Click,
    /// Web-chat news; `about` is `<connector> <kind> <id>` (`connectors/local`).
    WebChat,
}

/// News from another replica sharing the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Changed {
        topic: Topic,
        about: String,
    },
    /// Notices may have been missed (the listening connection was re-established, or a
    /// sender could not keep up): whoever shows live state reloads it from the store.
    Resync,
}

/// Spawn a task that hands each notice from other replicas (`Store::notices`) to
/// `target`, one at a time and in order. `target` is held weakly: the task ends when it
/// is dropped, or when the store stops listening. Nothing happens for a store that is
/// not shared, or outside a tokio runtime.
pub fn relay_notices<T, F, Fut>(store: &dyn Store, target: &Arc<T>, handle: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, Notice) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let Some(mut notices) = store.notices() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let target: Weak<T> = Arc::downgrade(target);
    runtime.spawn(async move {
        loop {
            let notice = match notices.recv().await {
                Ok(notice) => notice,
                Err(broadcast::error::RecvError::Lagged(_)) => Notice::Resync,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Some(target) = target.upgrade() else {
                return;
            };
            handle(target, notice).await;
        }
    });
}

/// One change of the console's live event list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedItem {
    /// The journal entry changed (here or on another replica).
    Changed(EventId),
    /// Changes may have been missed: reload the list.
    Resync,
}

pub struct EventFeed {
    changes: broadcast::Sender<FeedItem>,
    store: Arc<dyn Store>,
}

impl EventFeed {
    /// A feed that also tells, and hears from, the other replicas sharing `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let feed = Arc::new(EventFeed {
            changes: broadcast::channel(FEED_CAPACITY).0,
            store,
        });
        relay_notices(&*feed.store.clone(), &feed, |feed, notice| async move {
            let item = match notice {
                Notice::Changed {
                    topic: Topic::Event,
                    about,
                } => match EventId::parse(&about) {
                    Some(id) => FeedItem::Changed(id),
                    None => return,
                },
                Notice::Changed { .. } => return,
                Notice::Resync => FeedItem::Resync,
            };
            let _ = feed.changes.send(item);
        });
        feed
    }

    /// Tell the listeners here and on the other replicas that the journal entry `id`
    /// changed (never blocks; nobody listening is fine). Call it once the change is
    /// stored.
    pub fn changed(&self, id: EventId) {
        let _ = self.changes.send(FeedItem::Changed(id));
        self.store.announce(Topic::Event, &id.to_string());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.changes.subscribe()
    }
}
