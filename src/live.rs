//! `EventFeed`: which journal entries just changed (an event accepted, or its fate
//! recorded), for the console's live event list (`GET /api/events/stream`, SSE).
//!
//! Only ids travel here; the stream reads each entry back from the store, so what the
//! console shows is what is durable. The channel is bounded: a listener that falls
//! behind is told it missed some (`resync`) and reloads, and a sender never waits.
//! Within one process only (another replica's events are not heard).

use crate::event::EventId;
use tokio::sync::broadcast;

/// How many changes a slow listener may fall behind before it must resync.
const FEED_CAPACITY: usize = 1024;

pub struct EventFeed {
    changes: broadcast::Sender<EventId>,
}

impl Default for EventFeed {
    fn default() -> Self {
        EventFeed {
            changes: broadcast::channel(FEED_CAPACITY).0,
        }
    }
}

impl EventFeed {
    /// Tell the listeners that the journal entry `id` changed (never blocks; nobody
    /// listening is fine).
    pub fn changed(&self, id: EventId) {
        let _ = self.changes.send(id);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventId> {
        self.changes.subscribe()
    }
}
