//! Live notices between replicas over PostgreSQL `LISTEN/NOTIFY` (`crate::live`): how
//! a browser on replica B hears of a web-chat message posted on replica A, and how a
//! card click waiting on A hears that B's router answered it.
//!
//! - **Sending.** `announce` never waits: it puts the notice in a bounded queue, and a
//!   task (`run_sender`) sends everything queued at that moment with one statement
//!   (`pg_notify` over an array) on a pooled connection. Callers announce after their
//!   change is committed, so a reader on another replica always finds it. A notice that
//!   does not fit the queue, or whose statement failed, is replaced by a `Resync`.
//! - **Listening.** One dedicated connection per replica (`run_listener`, not from the
//!   pool: `LISTEN` belongs to its session) runs `LISTEN perch_live`. When it drops it is
//!   re-established after a pause, and each time it (re)starts listening the readers
//!   are told `Notice::Resync`, which makes them reload from the store what they show:
//!   nothing that happened while nobody listened is missed.
//! - **Apart from the data.** `NOTIFY` runs in its own statement, after the change's
//!   transaction: a notice that cannot be sent (PostgreSQL's notification queue full
//!   behind a replica that stopped reading, e.g. a frozen one) never fails a write.
//! - **Payload** (PostgreSQL allows < 8000 bytes; ours are ids): `<origin> <topic>
//!   <about>`, where `origin` is this store's random id, so a replica ignores its own
//!   notices (it told its own listeners directly), and `topic` is `e` (journal entry),
//!   `c` (click), `w` (web chat) or `r` (resync).

use crate::live::{Notice, Topic};
use deadpool_postgres::Pool;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The channel every replica listens on.
const CHANNEL: &str = "perch_live";
/// Notices waiting for the sender task (beyond it: `Resync`).
const OUTGOING: usize = 4096;
/// Most notices sent by one statement.
const BATCH: usize = 256;
/// Notices heard and not yet read by a slow reader (beyond it, it lags: `Resync`).
const INCOMING: usize = 1024;
/// Pause before sending again after a failed statement, and before reconnecting the
/// listening connection.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long starting waits for the first `LISTEN`.
const FIRST_LISTEN: Duration = Duration::from_secs(5);
/// TCP keep-alive on the listening connection, so a dead peer is noticed even when no
/// notice comes (the connection would otherwise wait forever).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// The longest `about` sent as is; a longer one (never ours: ids) becomes a `Resync`.
const MAX_ABOUT: usize = 7000;

/// One replica's end of the notices: started by `PostgresStore::connect_with`, stopped
/// when dropped.
pub struct PgLive {
    origin: String,
    outgoing: mpsc::Sender<String>,
    /// Set when a notice could not be queued: the sender then adds a `Resync`.
    overflowed: Arc<AtomicBool>,
    incoming: broadcast::Sender<Notice>,
    _stop: DropGuard,
}

impl PgLive {
    /// Start the sender (on `pool`) and the listener (its own connection from `config`),
    /// and wait (at most `FIRST_LISTEN`) until the listener listens, so a replica hears
    /// the others from the moment it serves. If the wait times out the listener keeps
    /// trying, and its first `LISTEN` tells the readers to resync.
    pub async fn start(config: tokio_postgres::Config, pool: Pool) -> Self {
        let origin = format!("{:016x}", rand::random::<u64>());
        let (outgoing, rx) = mpsc::channel(OUTGOING);
        let overflowed = Arc::new(AtomicBool::new(false));
        let incoming = broadcast::channel(INCOMING).0;
        let stop = CancellationToken::new();
        tokio::spawn(run_sender(pool, rx, overflowed.clone(), origin.clone()));
        let mut heard = incoming.subscribe();
        tokio::spawn(run_listener(
            config,
            origin.clone(),
            incoming.clone(),
            stop.clone(),
        ));
        // The listener's first notice is its `Resync`, once it listens.
        if tokio::time::timeout(FIRST_LISTEN, heard.recv())
            .await
            .is_err()
        {
            tracing::warn!("not listening to the other replicas' live notices yet; still trying");
        }
        PgLive {
            origin,
            outgoing,
            overflowed,
            incoming,
            _stop: stop.drop_guard(),
        }
    }

    pub fn announce(&self, topic: Topic, about: &str) {
        let letter = match topic {
            Topic::Event => 'e',
            Topic::Click => 'c',
            Topic::WebChat => 'w',
        };
        if about.len() > MAX_ABOUT
            || self
                .outgoing
                .try_send(format!("{} {letter} {about}", self.origin))
                .is_err()
        {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.incoming.subscribe()
    }
}

/// Send queued notices, a batch per statement, until every `PgLive` sender is dropped.
async fn run_sender(
    pool: Pool,
    mut rx: mpsc::Receiver<String>,
    overflowed: Arc<AtomicBool>,
    origin: String,
) {
    let resync = format!("{origin} r");
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if overflowed.swap(false, Ordering::Relaxed) {
            batch.push(resync.clone());
        }
        while let Err(e) = notify(&pool, &batch).await {
            tracing::warn!(error = %e, "could not send live notices to the other replicas; they will be told to reload");
            // What failed is lost to the others: they reload instead, once we can tell them.
            batch.clear();
            batch.push(resync.clone());
            tokio::time::sleep(RETRY_PAUSE).await;
            if rx.is_closed() {
                return;
            }
        }
        batch.clear();
    }
}

async fn notify(pool: &Pool, payloads: &[String]) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    // One statement, so one round trip for the lot; notices keep their order.
    client
        .execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i",
            &[&CHANNEL, &payloads],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Listen until `stop`, reconnecting after every drop.
async fn run_listener(
    mut config: tokio_postgres::Config,
    origin: String,
    incoming: broadcast::Sender<Notice>,
    stop: CancellationToken,
) {
    config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
    loop {
        let listened = tokio::select! {
            r = listen_once(&config, &origin, &incoming) => r,
            _ = stop.cancelled() => return,
        };
        if let Err(e) = listened {
            tracing::warn!(error = %e, "the live-notice connection to PostgreSQL dropped; reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One listening connection: connect, `LISTEN`, tell the readers to resync (they may
/// have missed notices before), then pass on every notice until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    origin: &str,
    incoming: &broadcast::Sender<Notice>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    // The connection only makes progress while polled: its messages are read here,
    // concurrently with the `LISTEN` below.
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = client.batch_execute("LISTEN perch_live");
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(|e| e.to_string())?;
                listening = true;
                let _ = incoming.send(Notice::Resync);
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                    if let Some(notice) = parse(n.payload(), origin) {
                        // Nobody listening (no open page) is fine.
                        let _ = incoming.send(notice);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the server closed the connection".into()),
            },
        }
    }
}

/// A payload from another replica as a notice; `None` for our own and for anything
/// unreadable (another perch version: ignored, never fatal).
fn parse(payload: &str, origin: &str) -> Option<Notice> {
    let mut parts = payload.splitn(3, ' ');
    let from = parts.next()?;
    if from == origin {
        return None;
    }
    let topic = match parts.next()? {
        "r" => return Some(Notice::Resync),
        "e" => Topic::Event,
        "c" => Topic::Click,
        "w" => Topic::WebChat,
        _ => return None,
    };
    Some(Notice::Changed {
        topic,
        about: parts.next()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PostgresStore, Store};

    /// The next notice on `rx` that is not a `Resync` (within 5 s).
    async fn next_change(rx: &mut broadcast::Receiver<Notice>) -> Notice {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Ok(Notice::Resync) => continue,
                    Ok(n) => return n,
                    Err(e) => panic!("notices: {e}"),
                }
            }
        })
        .await
        .expect("a notice within 5 s")
    }

    /// B's notices reach A (not B itself); after A's listening connection is killed by
    /// the server, A's readers are told to resync and B's notices reach A again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notices_cross_replicas_and_survive_a_dropped_listener() {
        let Some(db) = crate::store::postgres::test_database().await else {
            return;
        };
        let a = PostgresStore::connect_with(db.clone(), 2).await.unwrap();
        let b = PostgresStore::connect_with(db.clone(), 2).await.unwrap();
        let mut heard_on_a = a.notices().unwrap();
        let mut heard_on_b = b.notices().unwrap();
        b.announce(Topic::Event, "first");
        assert_eq!(
            next_change(&mut heard_on_a).await,
            Notice::Changed {
                topic: Topic::Event,
                about: "first".into()
            }
        );
        // The server drops every listening connection of this database.
        let (admin, connection) = db.connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query = 'LISTEN perch_live'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(killed, 2, "both replicas listen on their own connection");
        // Each replica reconnects and says so: its readers reload from the store. (A
        // notice sent before a replica listens again is not heard; the reload covers it,
        // so the checks below wait for both.)
        for (replica, heard) in [("A", &mut heard_on_a), ("B", &mut heard_on_b)] {
            let resync = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if let Ok(Notice::Resync) = heard.recv().await {
                        return;
                    }
                }
            })
            .await;
            assert!(
                resync.is_ok(),
                "no Resync on {replica} after the listener dropped"
            );
        }
        b.announce(Topic::Click, "second");
        assert_eq!(
            next_change(&mut heard_on_a).await,
            Notice::Changed {
                topic: Topic::Click,
                about: "second".into()
            }
        );
        // B never hears its own notices.
        a.announce(Topic::WebChat, "web message 3");
        assert_eq!(
            next_change(&mut heard_on_b).await,
            Notice::Changed {
                topic: Topic::WebChat,
                about: "web message 3".into()
            }
        );
    }

    #[test]
    fn payloads_from_others_parse_and_our_own_are_ignored() {
        assert_eq!(parse("abc e 0190-x", "abc"), None);
        assert_eq!(
            parse("def w web message 42", "abc"),
            Some(Notice::Changed {
                topic: Topic::WebChat,
                about: "web message 42".into()
            })
        );
        assert_eq!(parse("def r", "abc"), Some(Notice::Resync));
        assert_eq!(parse("def x y", "abc"), None);
        assert_eq!(parse("def", "abc"), None);
    }
}
