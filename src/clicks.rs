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
//! With replicas (a `Store::shared` store) the click may be handled by another replica:
//! its router announces the handled click to the others (`Store::announce`, on
//! PostgreSQL a `NOTIFY`), and the relay here wakes the waiter as if our own router had
//! told it. In case a notice is lost (the listening connection dropped), the waiter also
//! re-reads the fate every `SHARED_RECHECK`, and at once when told to resync.

use crate::action::ClickAnswer;
use crate::event::EventId;
use crate::live::{Notice, Topic};
use crate::store::{Fate, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How many "click handled" notices may be waiting unread before a slow waiter lags (it
/// then re-reads the store, so lagging costs a lookup, never an answer).
const NOTICES: usize = 256;

/// With a shared store, how often a waiting click re-reads its fate: only the fallback
/// for a lost notice, so slow (a few lookups per click), well inside Feishu's 3 s.
const SHARED_RECHECK: Duration = Duration::from_millis(1000);

/// Tells waiting click requests that their event was handled.
pub struct Clicks {
    store: Arc<dyn Store>,
    /// `Some(id)`: that click was handled; `None`: notices may have been lost, every
    /// waiter looks again.
    handled: broadcast::Sender<Option<EventId>>,
}

impl Clicks {
    /// Waiting clicks here also hear of clicks handled by the other replicas sharing
    /// `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let clicks = Arc::new(Clicks {
            store,
            handled: broadcast::channel(NOTICES).0,
        });
        crate::live::relay_notices(
            &*clicks.store.clone(),
            &clicks,
            |clicks, notice| async move {
                let wake = match notice {
                    Notice::Changed {
                        topic: Topic::Click,
                        about,
                    } => match EventId::parse(&about) {
                        Some(id) => Some(id),
                        None => return,
                    },
                    Notice::Changed { .. } => return,
                    Notice::Resync => None,
                };
                let _ = clicks.handled.send(wake);
            },
        );
        clicks
    }

    /// The router calls this after it recorded the fate of a card-action event: the
    /// request waiting for it, here or on another replica, reads the answer.
    pub fn handled(&self, id: EventId) {
        // No receiver is normal (nobody waits for a scheduler's or a replayed click).
        let _ = self.handled.send(Some(id));
        self.store.announce(Topic::Click, &id.to_string());
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
                        Ok(Some(done)) if done == id => break,
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
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

    /// Two replicas (stores) on one fresh database, with A's click waiter.
    async fn two_replicas() -> Option<(Arc<dyn Store>, Arc<dyn Store>)> {
        let db = crate::store::postgres::test_database().await?;
        let a: Arc<dyn Store> = Arc::new(
            crate::store::PostgresStore::connect_with(db.clone(), 2)
                .await
                .unwrap(),
        );
        let b: Arc<dyn Store> = Arc::new(
            crate::store::PostgresStore::connect_with(db, 2)
                .await
                .unwrap(),
        );
        Some((a, b))
    }

    fn answered(text: &str) -> (ClickAnswer, Fate) {
        let answer = ClickAnswer {
            toast: Some(crate::action::Toast {
                kind: Default::default(),
                text: text.into(),
            }),
            ..ClickAnswer::default()
        };
        let fate = Fate::Routed {
            bots: vec!["x".into()],
            actions: 0,
            failures: vec![],
            answer: Some(answer.clone()),
        };
        (answer, fate)
    }

    /// A click waits on replica A while B's router records the answer and says so
    /// (`Clicks::handled` on B): A's request wakes on B's notice, not on its slow
    /// re-read. Prints the latency from B's record to A's answer (`--nocapture`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_click_handled_by_another_replica_gets_its_answer_at_once() {
        let Some((a, b)) = two_replicas().await else {
            return;
        };
        let clicks_a = Clicks::new(a.clone());
        let clicks_b = Clicks::new(b.clone());
        const ROUNDS: usize = 20;
        let mut latencies = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let now = chrono::Utc::now();
            let click = Event::new("web", EventKind::CardAction, now);
            a.ingest(&click, now).await.unwrap();
            let (answer, fate) = answered(&format!("done {round}"));
            let handled_on_b = async {
                // A moment after the click arrived, at a different point of A's re-read
                // period each round.
                tokio::time::sleep(Duration::from_millis(40 + 37 * round as u64 % 200)).await;
                b.complete_event(&click, &fate, &[]).await.unwrap();
                clicks_b.handled(click.id);
                std::time::Instant::now()
            };
            let waiting_on_a = async {
                let got = clicks_a.answer(click.id, Duration::from_millis(2500)).await;
                (got, std::time::Instant::now())
            };
            let (recorded_at, (got, answered_at)) = tokio::join!(handled_on_b, waiting_on_a);
            assert_eq!(got, Some(answer), "round {round}");
            latencies.push(answered_at.saturating_duration_since(recorded_at));
        }
        latencies.sort();
        let median = latencies[ROUNDS / 2];
        let worst = latencies[ROUNDS - 1];
        eprintln!(
            "click answered across replicas: median {median:?}, p90 {:?}, max {worst:?} after B recorded it ({ROUNDS} clicks)",
            latencies[ROUNDS * 9 / 10]
        );
        // The re-read alone (every SHARED_RECHECK) would take half of it on average.
        assert!(
            median < SHARED_RECHECK / 4,
            "median {median:?}: the waiter was not woken by B's notice"
        );
    }

    /// When B's notice is lost (here: B records the fate without telling), A's waiter
    /// still finds the answer by re-reading, within the window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_notice_is_made_up_for_by_the_slow_reread() {
        let Some((a, b)) = two_replicas().await else {
            return;
        };
        let now = chrono::Utc::now();
        let click = Event::new("web", EventKind::CardAction, now);
        a.ingest(&click, now).await.unwrap();
        let clicks = Clicks::new(a);
        let (answer, fate) = answered("done");
        let handled_on_b = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            b.complete_event(&click, &fate, &[]).await.unwrap();
        };
        let started = std::time::Instant::now();
        let (got, ()) = tokio::join!(
            clicks.answer(click.id, Duration::from_millis(2500)),
            handled_on_b
        );
        assert_eq!(got, Some(answer));
        assert!(
            started.elapsed() < SHARED_RECHECK + Duration::from_millis(800),
            "answered {:?} after the click",
            started.elapsed()
        );
    }
}
