//! Synchronous answers to card clicks.
//!
//! Platforms wait for the HTTP answer to a button click and can show something with it:
//! Feishu a toast and/or a replacement card within 3 s (refs §1.7), the web chat a
//! notice. A click is journaled like any event and handled by the router; the request
//! that brought it waits here, up to `server.click_answer_ms`, for the router to record
//! the bot's answer in the event's fate (`Fate::Routed { answer, .. }`). A retried click
//! (same platform id) is a journal duplicate and gets the original's answer, read from
//! the store. When the bot is slower than the window the platform gets the plain ack,
//! and the card still changes through the outbox (the bot's `Update` is queued too).
//!
//! With replicas (a `Store::shared` store) the click may be handled by another replica,
//! whose router tells nobody here: the waiter then also re-reads the fate every
//! `SHARED_RECHECK` (a few cheap lookups per waiting click, only while it waits).

use crate::action::ClickAnswer;
use crate::event::EventId;
use crate::store::{Fate, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How many "click handled" notices may be waiting unread before a slow waiter lags (it
/// then re-reads the store, so lagging costs a lookup, never an answer).
const NOTICES: usize = 256;

/// With a shared store, how often a waiting click re-reads its fate.
const SHARED_RECHECK: Duration = Duration::from_millis(100);

/// Tells waiting click requests that their event was handled.
pub struct Clicks {
    store: Arc<dyn Store>,
    handled: broadcast::Sender<EventId>,
}

impl Clicks {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Clicks {
            store,
            handled: broadcast::channel(NOTICES).0,
        }
    }

    /// The router calls this after it recorded the fate of a card-action event.
    pub fn handled(&self, id: EventId) {
        // No receiver is normal (nobody waits for a scheduler's or a replayed click).
        let _ = self.handled.send(id);
    }

    /// The bot's answer to the click `id`, once the router has handled it: `None` when
    /// that takes longer than `within` (or the store cannot be read), `Some(empty)` when
    /// the bot answered nothing synchronous.
    pub async fn answer(&self, id: EventId, within: Duration) -> Option<ClickAnswer> {
        // Subscribe before looking, so a completion between the look and the wait is
        // not missed.
        let mut notices = self.handled.subscribe();
        let recheck = self.store.shared().then_some(SHARED_RECHECK);
        let wait = async {
            loop {
                if let Some(answer) = self.recorded(id).await {
                    return answer;
                }
                loop {
                    let notice = match recheck {
                        None => notices.recv().await,
                        Some(every) => match tokio::time::timeout(every, notices.recv()).await {
                            Ok(notice) => notice,
                            // Another replica may have handled it: look again.
                            Err(_) => break,
                        },
                    };
                    match notice {
                        Ok(done) if done == id => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        // The router is gone (shutdown): nothing more will come.
                        Err(broadcast::error::RecvError::Closed) => {
                            return self.recorded(id).await.flatten();
                        }
                    }
                }
            }
        };
        tokio::time::timeout(within, wait).await.ok().flatten()
    }

    /// `Some(answer)` once the event has a final fate; `None` while it is pending.
    async fn recorded(&self, id: EventId) -> Option<Option<ClickAnswer>> {
        let entry = match self.store.event(id).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return Some(None),
            Err(e) => {
                tracing::warn!(event_id = %id, error = %e, "cannot read a click's fate");
                return Some(None);
            }
        };
        match entry.fate {
            Fate::Pending => None,
            Fate::Routed { answer, .. } => Some(Some(answer.unwrap_or_default())),
            Fate::Unrouted | Fate::Failed { .. } => Some(Some(ClickAnswer::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};

    /// Two replicas on one database: the click waits on A, B's router records the
    /// answer, and A's request gets it within the window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_click_handled_by_another_replica_gets_its_answer() {
        let Some(db) = crate::store::postgres::test_database().await else {
            return;
        };
        let a: Arc<dyn Store> = Arc::new(
            crate::store::PostgresStore::connect_with(db.clone(), 2)
                .await
                .unwrap(),
        );
        let b = crate::store::PostgresStore::connect_with(db, 2)
            .await
            .unwrap();
        let now = chrono::Utc::now();
        let click = Event::new("web", EventKind::CardAction, now);
        a.ingest(&click, now).await.unwrap();
        let clicks = Clicks::new(a);
        let answer = ClickAnswer {
            toast: Some(crate::action::Toast {
                kind: Default::default(),
                text: "done".into(),
            }),
            ..ClickAnswer::default()
        };
        let handled_on_b = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let fate = Fate::Routed {
                bots: vec!["x".into()],
                actions: 0,
                failures: vec![],
                answer: Some(answer.clone()),
            };
            b.complete_event(&click, &fate, &[]).await.unwrap();
        };
        let started = std::time::Instant::now();
        let (got, ()) = tokio::join!(
            clicks.answer(click.id, Duration::from_millis(2500)),
            handled_on_b
        );
        assert_eq!(got, Some(answer));
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "answered {:?} after the click",
            started.elapsed()
        );
    }
}
