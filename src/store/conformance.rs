//! The behaviour every `Store` backend must show: each check is an `async fn(&dyn
//! Store)`, and `conformance_suite!` runs every one of them, as its own test on a fresh
//! store, against each backend (the pattern of teloxide's storage tests). The sled
//! store runs on a temporary tree; the PostgreSQL store on a fresh database of the
//! server in `PERCH_TEST_DATABASE_URL` (`postgres::test_store`: missing, the tests fail
//! under `CI` and are skipped with a printed reason otherwise).

use super::*;
use crate::action::{MessageBody, Operation, Target};
use crate::event::{Event, EventKind};
use chrono::Duration;

fn event(connector: &str, external: Option<&str>, at: DateTime<Utc>) -> Event {
    let mut e = Event::new(connector, EventKind::System, at);
    e.topic = Some("t".into());
    e.external_id = external.map(str::to_string);
    e
}

/// The outbox lanes that hold items now.
async fn lanes_now(s: &dyn Store) -> Vec<String> {
    s.outbox_lanes(None, 10, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|(lane, _)| lane)
        .collect()
}

fn item(key: &str, now: DateTime<Utc>) -> OutboxItem {
    OutboxItem::new(
        key.to_string(),
        "web".to_string(),
        Operation::Send {
            to: Target::chat("room"),
            body: MessageBody::text("hi"),
            reply_to: None,
        },
        now,
    )
}

/// One test per check, each on a fresh store from `$make` (an expression giving
/// `Option<store>`; `None` means "skip": no server outside CI). Multi-threaded:
/// `dedupes_concurrent_ingests` races ingests on threads.
#[cfg(test)]
macro_rules! conformance_suite {
    ($backend:ident, $make:expr, [$($check:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(store) = $make else { return };
                    super::$check(&store).await;
                }
            )*
        }
    };
    ($backend:ident, $make:expr) => {
        conformance_suite!($backend, $make, [
            dedupes_within_window,
            dedupes_concurrent_ingests,
            pending_and_complete,
            outbox_lifecycle,
            kv,
            kv_compare_and_swap_is_exact,
            sweep,
            lanes_are_leased_to_one_holder,
            late_records_change_nothing,
        ]);
    };
}

pub async fn dedupes_within_window(s: &dyn Store) {
    let now = Utc::now();
    let a = event("gh", Some("d-1"), now);
    assert_eq!(
        s.ingest(&a, now + Duration::hours(8)).await.unwrap(),
        Ingested::Accepted
    );
    let again = event("gh", Some("d-1"), now + Duration::minutes(5));
    assert_eq!(
        s.ingest(&again, now + Duration::hours(8)).await.unwrap(),
        Ingested::Duplicate { original: a.id }
    );
    // Same external id on another connector is a different event.
    let other = event("crm", Some("d-1"), now);
    assert_eq!(
        s.ingest(&other, now + Duration::hours(8)).await.unwrap(),
        Ingested::Accepted
    );
    // No external id: never a duplicate.
    let anon = event("gh", None, now);
    assert_eq!(
        s.ingest(&anon, now + Duration::hours(8)).await.unwrap(),
        Ingested::Accepted
    );
    assert_eq!(
        s.ingest(&event("gh", None, now), now).await.unwrap(),
        Ingested::Accepted
    );
    // After the window, the id is new again.
    let late = event("gh", Some("d-1"), now + Duration::hours(9));
    assert_eq!(
        s.ingest(&late, now + Duration::hours(17)).await.unwrap(),
        Ingested::Accepted
    );
    assert_eq!(s.pending_count().await.unwrap(), 5);
    // The duplicate stored nothing.
    assert!(s.event(again.id).await.unwrap().is_none());
}

/// Ingests of one external id that race on several threads: exactly one is accepted,
/// every other one names it as the original, and only it is pending. (Needs a
/// multi-threaded runtime.)
pub async fn dedupes_concurrent_ingests(s: &dyn Store) {
    const ROUNDS: usize = 50;
    const RACERS: usize = 8;
    let now = Utc::now();
    let runtime = tokio::runtime::Handle::current();
    let before = s.pending_count().await.unwrap();
    let mut accepted = Vec::new();
    for round in 0..ROUNDS {
        let external = format!("race-{round}");
        let events: Vec<Event> = (0..RACERS)
            .map(|_| event("gh", Some(&external), now))
            .collect();
        let outcomes: Vec<Ingested> = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let racers: Vec<_> = events
                    .iter()
                    .map(|e| {
                        let runtime = runtime.clone();
                        scope.spawn(move || runtime.block_on(s.ingest(e, now + Duration::hours(8))))
                    })
                    .collect();
                racers
                    .into_iter()
                    .map(|r| r.join().expect("ingest thread").expect("ingest"))
                    .collect()
            })
        });
        let winners: Vec<&Event> = events
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == Ingested::Accepted)
            .map(|(e, _)| e)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let winner = winners[0].id;
        for (e, o) in events.iter().zip(&outcomes) {
            if e.id != winner {
                assert_eq!(*o, Ingested::Duplicate { original: winner });
                assert!(s.event(e.id).await.unwrap().is_none());
            }
        }
        accepted.push(winner);
    }
    assert_eq!(s.pending_count().await.unwrap(), before + ROUNDS);
    let mut pending: Vec<EventId> = s
        .pending_lanes(None, 100, 10 * ROUNDS * RACERS)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|(_, ids)| ids)
        .collect();
    pending.sort();
    accepted.sort();
    assert_eq!(pending, accepted, "only the accepted ingests are pending");
}

pub async fn pending_and_complete(s: &dyn Store) {
    let now = Utc::now();
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for _ in 0..5 {
        let e = event("gh", None, now);
        s.ingest(&e, now).await.unwrap();
        ids.push(e.id);
        events.push(e);
    }
    // One lane (connector "gh", no chat): all five, in id order; per_lane limits.
    let lanes = s.pending_lanes(None, 10, 100).await.unwrap();
    assert_eq!(lanes, vec![("gh/-".to_string(), ids.clone())]);
    let lanes = s.pending_lanes(None, 10, 2).await.unwrap();
    assert_eq!(lanes, vec![("gh/-".to_string(), ids[..2].to_vec())]);
    assert!(
        s.pending_lanes(Some("gh/-"), 10, 2)
            .await
            .unwrap()
            .is_empty()
    );

    let fate = Fate::Routed {
        bots: vec!["echo".into()],
        actions: 2,
        failures: vec![],
        answer: None,
    };
    let items = vec![
        item(&format!("{}/echo/0000", ids[0]), now),
        item(&format!("{}/echo/0001", ids[0]), now),
    ];
    assert_eq!(s.event(ids[0]).await.unwrap().unwrap().fate, Fate::Pending);
    s.complete_event(&events[0], &fate, &items).await.unwrap();
    assert_eq!(s.event(ids[0]).await.unwrap().unwrap().fate, fate);
    assert_eq!(s.pending_count().await.unwrap(), 4);
    assert_eq!(s.outbox_count().await.unwrap(), 2);
    // Completing again (a re-run after a crash) queues nothing twice.
    s.complete_event(&events[0], &fate, &items).await.unwrap();
    assert_eq!(s.outbox_count().await.unwrap(), 2);
    assert_eq!(s.pending_count().await.unwrap(), 4);

    let recent = s.recent_events(None, 2).await.unwrap();
    assert_eq!(
        recent.iter().map(|e| e.event.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let older = s.recent_events(Some(ids[3]), 10).await.unwrap();
    assert_eq!(older.len(), 3);
}

/// What a replica that was frozen past its lane lease records when it wakes, after
/// another replica finished the same work, changes nothing: the first fate stands (and
/// its items alone are queued), and an item delivered meanwhile is not made a dead
/// letter (a replay would send it again).
pub async fn late_records_change_nothing(s: &dyn Store) {
    let now = Utc::now();
    let e = event("web", Some("late-1"), now);
    s.ingest(&e, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    let first = Fate::Routed {
        bots: vec!["echo".into()],
        actions: 1,
        failures: vec![],
        answer: None,
    };
    let first_item = item(&format!("{}/echo/0000", e.id), now);
    s.complete_event(&e, &first, std::slice::from_ref(&first_item))
        .await
        .unwrap();
    let late_item = item(&format!("{}/other/0000", e.id), now);
    s.complete_event(&e, &Fate::Unrouted, std::slice::from_ref(&late_item))
        .await
        .unwrap();
    assert_eq!(s.event(e.id).await.unwrap().unwrap().fate, first);
    assert_eq!(
        s.outbox_count().await.unwrap(),
        1,
        "the late items are not queued"
    );
    assert!(
        s.outbox_item("web/room", &late_item.key)
            .await
            .unwrap()
            .is_none()
    );

    // Delivered by the replica that took the lane over; then the frozen one gives up.
    s.outbox_delivered(
        &first_item,
        &SentRecord {
            key: first_item.key.clone(),
            connector: "web".into(),
            delivered: Delivered::default(),
            at: now,
        },
    )
    .await
    .unwrap();
    s.outbox_dead(&DeadLetter {
        item: first_item.clone(),
        error: "gave up late".into(),
        died_at: now,
    })
    .await
    .unwrap();
    assert!(s.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(s.replay_dead(&first_item.key, now).await.unwrap(), None);
    assert_eq!(s.outbox_count().await.unwrap(), 0);
    assert!(s.sent(&first_item.key).await.unwrap().is_some());
}

pub async fn outbox_lifecycle(s: &dyn Store) {
    let now = Utc::now();
    let items: Vec<_> = (0..3).map(|i| item(&format!("k/{i}"), now)).collect();
    assert_eq!(s.enqueue(&items).await.unwrap(), 3);
    assert_eq!(
        s.enqueue(&items).await.unwrap(),
        0,
        "enqueue is idempotent by key"
    );
    let mut in_b = item("k/b1", now);
    in_b.op = Operation::Send {
        to: Target::chat("b"),
        body: MessageBody::text("x"),
        reply_to: None,
    };
    assert_eq!(s.enqueue(std::slice::from_ref(&in_b)).await.unwrap(), 1);
    // By lane: the "room" lane with its first two keys, then the "b" lane.
    let lanes = s.outbox_lanes(None, 10, 2).await.unwrap();
    assert_eq!(
        lanes,
        vec![
            ("web/b".to_string(), vec!["k/b1".to_string()]),
            (
                "web/room".to_string(),
                vec!["k/0".to_string(), "k/1".to_string()]
            ),
        ]
    );
    assert_eq!(
        s.outbox_lanes(Some("web/b"), 10, 5).await.unwrap()[0]
            .1
            .len(),
        3
    );
    assert_eq!(s.outbox_item("web/b", "k/b1").await.unwrap(), Some(in_b));
    // The listing goes in key order across lanes, a page at a time.
    let keys = |page: Vec<OutboxItem>| page.into_iter().map(|i| i.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.outbox_after(None, 10).await.unwrap()),
        vec!["k/0", "k/1", "k/2", "k/b1"]
    );
    assert_eq!(
        keys(s.outbox_after(Some("k/0"), 2).await.unwrap()),
        vec!["k/1", "k/2"]
    );
    assert_eq!(
        keys(s.outbox_after(Some("k/2"), 2).await.unwrap()),
        vec!["k/b1"]
    );
    assert_eq!(
        s.outbox_item("web/room", "k/b1").await.unwrap(),
        None,
        "an item is found in its own lane only"
    );
    s.outbox_dead(&DeadLetter {
        item: s.outbox_item("web/b", "k/b1").await.unwrap().unwrap(),
        error: "x".into(),
        died_at: now,
    })
    .await
    .unwrap();
    assert!(
        !lanes_now(s).await.contains(&"web/b".to_string()),
        "a dead item leaves its lane"
    );
    s.replay_dead("k/b1", now).await.unwrap();
    assert!(
        lanes_now(s).await.contains(&"web/b".to_string()),
        "a replayed item is back in its lane"
    );
    let b1 = s.outbox_item("web/b", "k/b1").await.unwrap().unwrap();
    s.outbox_delivered(
        &b1,
        &SentRecord {
            key: b1.key.clone(),
            connector: "web".into(),
            delivered: Delivered::default(),
            at: now,
        },
    )
    .await
    .unwrap();
    assert!(
        !lanes_now(s).await.contains(&"web/b".to_string()),
        "a delivered item leaves its lane"
    );
    assert!(s.outbox_item("web/b", "k/b1").await.unwrap().is_none());

    let page = s.outbox_after(None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        vec!["k/0", "k/1"]
    );
    assert_eq!(s.outbox_after(Some("k/1"), 10).await.unwrap().len(), 1);

    let mut retry = items[1].clone();
    retry.attempts = 2;
    retry.last_error = Some("HTTP 503".into());
    s.outbox_update(&retry).await.unwrap();
    assert_eq!(s.outbox_after(Some("k/0"), 1).await.unwrap()[0].attempts, 2);

    let record = SentRecord {
        key: "k/0".into(),
        connector: "web".into(),
        delivered: Delivered {
            id: Some("m1".into()),
            detail: serde_json::Value::Null,
        },
        at: now,
    };
    s.outbox_delivered(&items[0], &record).await.unwrap();
    assert_eq!(s.sent("k/0").await.unwrap(), Some(record));
    assert_eq!(s.outbox_count().await.unwrap(), 2);
    assert_eq!(
        s.enqueue(&items[..1]).await.unwrap(),
        0,
        "a sent key is never queued again"
    );
    // An update after delivery must not resurrect the item.
    s.outbox_update(&items[0]).await.unwrap();
    assert_eq!(s.outbox_count().await.unwrap(), 2);
    assert!(
        s.outbox_after(None, 10)
            .await
            .unwrap()
            .iter()
            .all(|i| i.key != "k/0")
    );

    let letter = DeadLetter {
        item: retry.clone(),
        error: "HTTP 400".into(),
        died_at: now,
    };
    s.outbox_dead(&letter).await.unwrap();
    assert_eq!(s.outbox_count().await.unwrap(), 1);
    assert_eq!(s.dead_letters(10).await.unwrap(), vec![letter]);
    let replayed = s.replay_dead("k/1", now).await.unwrap().unwrap();
    assert_eq!(replayed.attempts, 0);
    assert!(s.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(s.outbox_count().await.unwrap(), 2);
    assert!(s.replay_dead("k/1", now).await.unwrap().is_none());
}

pub async fn kv(s: &dyn Store) {
    assert_eq!(s.kv_get("bot/a", "x").await.unwrap(), None);
    s.kv_put("bot/a", "x", b"1").await.unwrap();
    s.kv_put("bot/a", "x/2", b"2").await.unwrap();
    s.kv_put("bot/ab", "x", b"other namespace").await.unwrap();
    assert_eq!(s.kv_get("bot/a", "x").await.unwrap(), Some(b"1".to_vec()));
    let scan = s.kv_scan("bot/a", "x").await.unwrap();
    assert_eq!(
        scan,
        vec![
            ("x".to_string(), b"1".to_vec()),
            ("x/2".to_string(), b"2".to_vec())
        ]
    );
    assert!(
        s.kv_compare_and_swap("bot/a", "y", None, Some(b"v"))
            .await
            .unwrap()
    );
    assert!(
        !s.kv_compare_and_swap("bot/a", "y", None, Some(b"w"))
            .await
            .unwrap()
    );
    assert!(
        s.kv_compare_and_swap("bot/a", "y", Some(b"v"), Some(b"w"))
            .await
            .unwrap()
    );
    s.kv_delete("bot/a", "x").await.unwrap();
    assert_eq!(s.kv_get("bot/a", "x").await.unwrap(), None);
    s.flush().await.unwrap();
}

/// Compare-and-swap compares whole values, in every combination of present and absent,
/// and a racing pair of swaps from the same value lets exactly one through.
pub async fn kv_compare_and_swap_is_exact(s: &dyn Store) {
    let ns = "bot/cas";
    // Absent → absent: holds while absent, fails once a value is there.
    assert!(s.kv_compare_and_swap(ns, "k", None, None).await.unwrap());
    s.kv_put(ns, "k", b"abc").await.unwrap();
    assert!(!s.kv_compare_and_swap(ns, "k", None, None).await.unwrap());
    // A prefix or a longer value is not equal.
    assert!(
        !s.kv_compare_and_swap(ns, "k", Some(b"ab"), Some(b"x"))
            .await
            .unwrap()
    );
    assert!(
        !s.kv_compare_and_swap(ns, "k", Some(b"abcd"), Some(b"x"))
            .await
            .unwrap()
    );
    assert_eq!(s.kv_get(ns, "k").await.unwrap(), Some(b"abc".to_vec()));
    // Expected present, new absent: a delete, only from the expected value.
    assert!(
        !s.kv_compare_and_swap(ns, "k", Some(b"zzz"), None)
            .await
            .unwrap()
    );
    assert!(
        s.kv_compare_and_swap(ns, "k", Some(b"abc"), None)
            .await
            .unwrap()
    );
    assert_eq!(s.kv_get(ns, "k").await.unwrap(), None);
    // Keys that look like patterns scan literally.
    s.kv_put(ns, "a_%", b"1").await.unwrap();
    s.kv_put(ns, "ab%", b"2").await.unwrap();
    assert_eq!(
        s.kv_scan(ns, "a_").await.unwrap(),
        vec![("a_%".to_string(), b"1".to_vec())]
    );
    // Racing swaps from one value: one wins.
    s.kv_put(ns, "n", b"0").await.unwrap();
    let (a, b) = tokio::join!(
        s.kv_compare_and_swap(ns, "n", Some(b"0"), Some(b"a")),
        s.kv_compare_and_swap(ns, "n", Some(b"0"), Some(b"b")),
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|w| **w).count(),
        1,
        "exactly one swap from the same value wins"
    );
}

/// A shared store grants each lane to one holder at a time, renews it for that holder,
/// frees it on release or expiry, per queue. A store of one process grants everything.
pub async fn lanes_are_leased_to_one_holder(s: &dyn Store) {
    let ttl = std::time::Duration::from_secs(30);
    let lanes = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let got = s
        .hold_lanes("router", "a", &lanes(&["x", "y"]), ttl)
        .await
        .unwrap();
    assert_eq!(sorted(got), lanes(&["x", "y"]));
    if !s.shared() {
        let got = s
            .hold_lanes("router", "b", &lanes(&["x"]), ttl)
            .await
            .unwrap();
        assert_eq!(got, lanes(&["x"]), "one process: every lane is its own");
        return;
    }
    // Held by a: b gets only the free lane; a renews its own.
    let got = s
        .hold_lanes("router", "b", &lanes(&["x", "z"]), ttl)
        .await
        .unwrap();
    assert_eq!(got, lanes(&["z"]));
    let got = s
        .hold_lanes("router", "a", &lanes(&["y", "x"]), ttl)
        .await
        .unwrap();
    assert_eq!(sorted(got), lanes(&["x", "y"]));
    // Another queue's lanes are separate.
    let got = s
        .hold_lanes("outbox", "b", &lanes(&["x"]), ttl)
        .await
        .unwrap();
    assert_eq!(got, lanes(&["x"]));
    // Released: free for b at once. Only the holder's release counts.
    s.release_lanes("router", "b", &lanes(&["x"]))
        .await
        .unwrap();
    assert!(
        s.hold_lanes("router", "b", &lanes(&["x"]), ttl)
            .await
            .unwrap()
            .is_empty()
    );
    s.release_lanes("router", "a", &lanes(&["x"]))
        .await
        .unwrap();
    assert_eq!(
        s.hold_lanes("router", "b", &lanes(&["x"]), ttl)
            .await
            .unwrap(),
        lanes(&["x"])
    );
    // Expired: a holder that stopped renewing loses the lane.
    let short = std::time::Duration::from_millis(50);
    assert_eq!(
        s.hold_lanes("router", "a", &lanes(&["w"]), short)
            .await
            .unwrap(),
        lanes(&["w"])
    );
    assert!(
        s.hold_lanes("router", "b", &lanes(&["w"]), ttl)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(
        s.hold_lanes("router", "b", &lanes(&["w"]), ttl)
            .await
            .unwrap(),
        lanes(&["w"])
    );
    assert!(
        s.hold_lanes("router", "a", &lanes(&["w"]), ttl)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn sweep(s: &dyn Store) {
    let now = Utc::now();
    let mut old = event("gh", Some("old"), now - Duration::days(10));
    // Retention goes by the id's time (UUID v7: when perch received it).
    let then = (now - Duration::days(10)).timestamp() as u64;
    old.id = crate::event::EventId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        then,
        0,
    )));
    s.ingest(&old, now - Duration::days(9)).await.unwrap();
    s.complete_event(&old, &Fate::Unrouted, &[]).await.unwrap();
    let fresh = event("gh", Some("fresh"), now);
    s.ingest(&fresh, now + Duration::hours(8)).await.unwrap();
    let record = SentRecord {
        key: "s/1".into(),
        connector: "web".into(),
        delivered: Delivered::default(),
        at: now - Duration::days(2),
    };
    s.outbox_delivered(&item("s/1", now), &record)
        .await
        .unwrap();

    let stats = s
        .sweep(SweepCutoffs {
            sent_before: now - Duration::days(1),
            journal_before: now - Duration::days(7),
        })
        .await
        .unwrap();
    assert_eq!(stats.dedupe_keys, 1);
    assert_eq!(stats.sent_records, 1);
    assert!(stats.events >= 1);
    assert!(s.event(old.id).await.unwrap().is_none());
    assert!(
        s.event(fresh.id).await.unwrap().is_some(),
        "pending and recent events stay"
    );
    assert_eq!(
        s.ingest(&event("gh", Some("fresh"), now), now)
            .await
            .unwrap(),
        Ingested::Duplicate { original: fresh.id }
    );
    assert_eq!(
        s.ingest(&event("gh", Some("old"), now), now).await.unwrap(),
        Ingested::Accepted
    );
}

#[cfg(test)]
conformance_suite!(
    sled,
    Some(crate::store::SledStore::temporary().expect("temporary sled store"))
);

#[cfg(test)]
conformance_suite!(postgres, crate::store::postgres::test_store().await);
