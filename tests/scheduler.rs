//! The scheduler: cron with seconds and zones (DST included), exactly-once slots across
//! restarts with the misfire policies, the run ledger, alerts, config errors, the API and
//! the CLI. Most tests drive `Scheduler::fire_due` with a `ManualClock` (no sleeping);
//! the end-to-end ones run a real perch.

use perch::testing::*;

use chrono::{DateTime, Utc};
use perch::clock::{Clock, ManualClock, SharedClock};
use perch::config::Config;
use perch::store::{Fate, Store};
use perch::testing::Accepted;
use perch::testing::internals::Doorbell;
use perch::testing::internals::Journal;
use perch::testing::internals::{Fired, Scheduler, Schedules};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The `perch` command line these tests run as a process.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

fn schedules(toml: &str) -> Arc<Schedules> {
    let config = Config::from_str(toml, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(Schedules::from_config(&config.schedules).expect("compiles"))
}

fn config_error(toml: &str) -> String {
    match Config::from_str(toml, Path::new("test.toml")) {
        Ok(_) => panic!("config should be refused:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

/// A scheduler on `store` with a manual clock: what a restart makes.
struct Rig {
    store: Arc<dyn Store>,
    clock: ManualClock,
    journal: Journal,
    schedules: Arc<Schedules>,
    outbox: Arc<perch::testing::internals::OutboxDoor>,
}

impl Rig {
    fn new(toml: &str, start: DateTime<Utc>, dedupe: Duration) -> Rig {
        let store: Arc<dyn Store> = perch::testing::temporary_store();
        let clock = ManualClock::new(start);
        let shared: SharedClock = Arc::new(clock.clone());
        // The committer ends with the test's runtime; no cancellation needed.
        let (journal, _committer) = Journal::start(
            store.clone(),
            dedupe,
            shared,
            Doorbell::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        Rig {
            store,
            clock,
            journal,
            schedules: schedules(toml),
            outbox: Doorbell::new(),
        }
    }
    async fn open(&self) -> Scheduler {
        Scheduler::open(
            self.schedules.clone(),
            self.store.clone(),
            self.journal.clone(),
            Arc::new(self.clock.clone()),
            self.outbox.clone(),
        )
        .await
        .expect("scheduler opens")
    }
    /// Every tick in the journal, as external id → count.
    async fn journal_ticks(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        let mut before = None;
        loop {
            let page = self.store.recent_events(before, 1000).await.unwrap();
            if page.is_empty() {
                break;
            }
            before = page.last().map(|e| e.event.id);
            for e in page {
                assert_eq!(e.event.connector, "scheduler");
                *out.entry(
                    e.event
                        .external_id
                        .clone()
                        .expect("ticks carry an external id"),
                )
                .or_insert(0) += 1;
            }
        }
        out
    }
}

/// Step through time like the real loop does: jump to each next slot and fire it.
async fn run_until(s: &mut Scheduler, clock: &ManualClock, end: DateTime<Utc>) -> Vec<Fired> {
    let mut fired = Vec::new();
    while let Some(next) = s.next_due() {
        if next > end {
            break;
        }
        clock.set(next);
        fired.extend(s.fire_due().await.expect("step").fired);
    }
    clock.set(end);
    fired.extend(s.fire_due().await.expect("step").fired);
    fired
}

// ---- cron, zones, DST ----------------------------------------------------------

const DST_JOBS: &str = r#"
[schedules.ny_230]
cron = "0 30 2 * * *"
timezone = "America/New_York"
[schedules.ny_130]
cron = "0 30 1 * * *"
timezone = "America/New_York"
[schedules.ny_halfhourly]
cron = "0 */30 * * * *"
timezone = "America/New_York"
[schedules.berlin_230]
cron = "0 30 2 * * *"
timezone = "Europe/Berlin"
"#;

fn next_texts(s: &Schedules, job: &str, after: &str, n: usize) -> Vec<String> {
    s.get(job)
        .unwrap()
        .next_fires(utc(after), n)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect()
}

#[test]
fn spring_forward_runs_a_fixed_time_job_right_after_the_gap() {
    let s = schedules(DST_JOBS);
    // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
    assert_eq!(
        next_texts(&s, "ny_230", "2026-03-07T00:00:00-05:00", 3),
        [
            "2026-03-07T02:30:00-05:00",
            "2026-03-08T03:00:00-04:00",
            "2026-03-09T02:30:00-04:00"
        ]
    );
    // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST.
    assert_eq!(
        next_texts(&s, "berlin_230", "2026-03-28T00:00:00+01:00", 3),
        [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00"
        ]
    );
}

#[test]
fn fall_back_runs_a_fixed_time_job_once_and_an_interval_job_on_both_passes() {
    let s = schedules(DST_JOBS);
    // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    assert_eq!(
        next_texts(&s, "ny_130", "2026-10-31T00:00:00-04:00", 3),
        [
            "2026-10-31T01:30:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00"
        ]
    );
    // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    assert_eq!(
        next_texts(&s, "berlin_230", "2026-10-24T00:00:00+02:00", 3),
        [
            "2026-10-24T02:30:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-26T02:30:00+01:00"
        ]
    );
    assert_eq!(
        next_texts(&s, "ny_halfhourly", "2026-11-01T00:45:00-04:00", 5),
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T01:30:00-05:00",
            "2026-11-01T02:00:00-05:00"
        ]
    );
}

#[tokio::test]
async fn stepping_across_dst_fires_each_slot_once() {
    let rig = Rig::new(
        DST_JOBS,
        utc("2026-03-06T00:00:00Z"),
        Duration::from_secs(1),
    );
    let mut s = rig.open().await;
    let mut fired = run_until(&mut s, &rig.clock, utc("2026-03-31T00:00:00Z")).await;
    rig.clock.set(utc("2026-10-20T00:00:00Z"));
    drop(s);
    // A restart months later (`once`: at most the latest missed slot fires).
    let mut s = rig.open().await;
    fired.extend(s.fire_due().await.unwrap().fired);
    fired.extend(run_until(&mut s, &rig.clock, utc("2026-11-05T00:00:00Z")).await);

    let of = |job: &str| -> Vec<String> {
        let j = rig.schedules.get(job).unwrap();
        fired
            .iter()
            .filter(|f| f.job == job)
            .map(|f| j.local(f.slot).to_rfc3339())
            .collect()
    };
    let ny = of("ny_230");
    assert!(
        ny.contains(&"2026-03-08T03:00:00-04:00".to_string()),
        "{ny:?}"
    );
    assert_eq!(ny.iter().filter(|t| t.starts_with("2026-03-08")).count(), 1);
    let berlin = of("berlin_230");
    assert_eq!(
        berlin
            .iter()
            .filter(|t| t.starts_with("2026-03-29"))
            .collect::<Vec<_>>(),
        ["2026-03-29T03:00:00+02:00"]
    );
    assert_eq!(
        berlin
            .iter()
            .filter(|t| t.starts_with("2026-10-25"))
            .collect::<Vec<_>>(),
        ["2026-10-25T02:30:00+02:00"]
    );
    let ny130 = of("ny_130");
    assert_eq!(
        ny130
            .iter()
            .filter(|t| t.starts_with("2026-11-01"))
            .collect::<Vec<_>>(),
        ["2026-11-01T01:30:00-04:00"]
    );
    let half = of("ny_halfhourly");
    assert_eq!(
        half.iter()
            .filter(|t| t.starts_with("2026-11-01T01:"))
            .count(),
        4,
        "both passes of the repeated hour"
    );
    // Every slot once, by the journal too.
    for (id, n) in rig.journal_ticks().await {
        assert_eq!(n, 1, "{id} fired {n} times");
    }
    assert!(fired.iter().all(|f| matches!(f.accepted, Accepted::New(_))));
}

// ---- the year-long simulation ----------------------------------------------------

const SIM_JOBS: &str = r#"
[schedules.daily_push]
cron = "0 0 9 * * MON-FRI"
timezone = "Asia/Shanghai"
topic = "push.daily"
misfire = "once"
catch_up_within = "1h"

[schedules.six_hourly_all]
cron = "0 0 */6 * * *"
timezone = "Asia/Shanghai"
misfire = "all"

[schedules.six_hourly_skip]
cron = "0 15 */6 * * *"
timezone = "UTC"
misfire = "skip"

[schedules.berlin_once_wide]
cron = "0 30 2 * * *"
timezone = "Europe/Berlin"
misfire = "once"
catch_up_within = "20h"

[schedules.two_hourly_all]
cron = "30 0 */2 * * *"
timezone = "America/New_York"
misfire = "all"
"#;

/// 365 simulated days with random restarts (downtimes from seconds to two days, some
/// crashes right after a tick was accepted and before the cursor moved). Every slot is
/// checked against the policy: on-time slots fire, missed ones follow skip/once/all,
/// and no slot is in the journal twice.
#[tokio::test]
async fn a_simulated_year_with_random_restarts_keeps_every_slot_to_the_policy() {
    let start = utc("2026-01-01T00:00:00Z");
    let end = start + chrono::TimeDelta::days(365);
    let rig = Rig::new(SIM_JOBS, start, Duration::from_secs(8 * 3600));
    let mut rng = StdRng::seed_from_u64(20261121);
    let grace = chrono::TimeDelta::seconds(60);

    // The history the model checks against.
    let mut opens: Vec<DateTime<Utc>> = Vec::new();
    let mut crashes: Vec<DateTime<Utc>> = Vec::new();
    // Slots whose tick was accepted by a step that "crashed" before moving the cursor.
    let mut half_fired: Vec<(String, DateTime<Utc>)> = Vec::new();
    type Fires = BTreeMap<(String, DateTime<Utc>), (usize, bool)>;
    let mut fired: Fires = BTreeMap::new();
    fn record(fired: &mut Fires, list: Vec<Fired>, half: &[(String, DateTime<Utc>)]) {
        for f in list {
            let again = half.contains(&(f.job.clone(), f.slot));
            assert!(
                again || matches!(f.accepted, Accepted::New(_)),
                "{} {} accepted as {:?}",
                f.job,
                f.slot,
                f.accepted
            );
            let e = fired
                .entry((f.job.clone(), f.slot))
                .or_insert((0, f.caught_up));
            e.0 += 1;
        }
    }
    // After a crash between accept and record, come back within the dedupe window.
    let mut short_down = false;

    opens.push(start);
    let mut s = rig.open().await;
    record(&mut fired, s.fire_due().await.unwrap().fired, &half_fired);
    let mut crash_at = start + chrono::TimeDelta::seconds(rng.random_range(3600..5 * 86400));
    let mut restarts = 0;
    loop {
        let next = s.next_due().expect("jobs keep firing");
        if crash_at < next {
            if crash_at >= end {
                break;
            }
            rig.clock.set(crash_at);
            crashes.push(crash_at);
            drop(s);
            let down = match rng.random_range(0..4) {
                _ if short_down => rng.random_range(1..=2 * 3600),
                0 => rng.random_range(1..=120),
                1 => rng.random_range(60..=2 * 3600),
                _ => rng.random_range(60..=2 * 86400),
            };
            short_down = false;
            let up = crash_at + chrono::TimeDelta::seconds(down);
            rig.clock.set(up);
            opens.push(up);
            restarts += 1;
            s = rig.open().await;
            record(&mut fired, s.fire_due().await.unwrap().fired, &half_fired);
            crash_at = up + chrono::TimeDelta::seconds(rng.random_range(600..4 * 86400));
        } else {
            if next > end {
                break;
            }
            rig.clock.set(next);
            if rng.random_range(0..60) == 0 && crash_at > next + chrono::TimeDelta::seconds(1) {
                // Crash between "tick accepted" and "cursor recorded": accept the ticks
                // the step would fire, then die, and come back within the dedupe window.
                let due = s.due(next);
                let events: Vec<_> = due
                    .iter()
                    .map(|(job, slot)| rig.schedules.get(job).unwrap().tick(*slot, false, next))
                    .collect();
                rig.journal.accept(events).await.unwrap();
                for (job, slot) in due {
                    let e = fired.entry((job.clone(), slot)).or_insert((0, false));
                    e.0 += 1;
                    half_fired.push((job, slot));
                }
                // Crash now (the model sees the crash just before the slot).
                crash_at = next - chrono::TimeDelta::seconds(1);
                short_down = true;
                continue;
            }
            record(&mut fired, s.fire_due().await.unwrap().fired, &half_fired);
        }
    }
    assert!(restarts > 50, "only {restarts} restarts");
    assert!(
        !half_fired.is_empty(),
        "no crash between accept and record was simulated"
    );

    // The model: which slots must have fired, and which late.
    let mut expected: BTreeMap<(String, DateTime<Utc>), bool> = BTreeMap::new();
    let last = *fired.keys().map(|(_, t)| t).max().unwrap();
    for job in &rig.schedules.jobs {
        let mut slots = Vec::new();
        let mut t = start;
        while let Some(x) = job.next_after(t) {
            if x > last.min(end) {
                break;
            }
            slots.push(x);
            t = x;
        }
        for k in 0..opens.len() {
            // Uptime k: (opens[k], crashes[k]]: every slot fires on time.
            let up_end = crashes.get(k).copied().unwrap_or(end);
            for &x in slots.iter().filter(|&&x| x > opens[k] && x <= up_end) {
                expected.insert((job.name.clone(), x), false);
            }
            // Downtime before restart k+1: (crashes[k], opens[k+1]].
            let (Some(&down), Some(&up)) = (crashes.get(k), opens.get(k + 1)) else {
                continue;
            };
            let during: Vec<_> = slots
                .iter()
                .copied()
                .filter(|&x| x > down && x <= up)
                .collect();
            let (on_time, missed): (Vec<_>, Vec<_>) =
                during.into_iter().partition(|&x| up - x <= grace);
            for x in on_time {
                expected.insert((job.name.clone(), x), false);
            }
            let late: Vec<_> = match job.misfire {
                perch::testing::internals::Misfire::Skip => vec![],
                perch::testing::internals::Misfire::Once => missed
                    .last()
                    .copied()
                    .filter(|&x| up - x <= job.catch_up_within)
                    .into_iter()
                    .collect(),
                perch::testing::internals::Misfire::All => missed,
            };
            for x in late {
                expected.insert((job.name.clone(), x), true);
            }
        }
    }
    // Half-fired slots count as fired (their tick is in the journal), whatever the
    // policy did with them after the restart.
    for (job, slot) in &half_fired {
        expected.entry((job.clone(), *slot)).or_insert(false);
    }

    let mut checked = 0;
    for (key, late) in &expected {
        let Some((n, caught_up)) = fired.get(key) else {
            panic!(
                "slot {} of `{}` should have fired and did not",
                key.1, key.0
            );
        };
        let allowed = if half_fired.contains(key) { 2 } else { 1 };
        assert!(
            *n >= 1 && *n <= allowed,
            "slot {} of `{}` fired {n} times",
            key.1,
            key.0
        );
        if !half_fired.contains(key) {
            assert_eq!(caught_up, late, "slot {} of `{}`: caught_up", key.1, key.0);
        }
        checked += 1;
    }
    for key in fired.keys() {
        assert!(
            expected.contains_key(key),
            "slot {} of `{}` fired but the policy says it must not",
            key.1,
            key.0
        );
    }
    // The journal holds each slot's tick exactly once.
    let ticks = rig.journal_ticks().await;
    for (id, n) in &ticks {
        assert_eq!(*n, 1, "tick {id} is in the journal {n} times");
    }
    assert_eq!(ticks.len(), expected.len());
    assert!(checked > 7_000, "only {checked} slots checked");
    let per_job = |name: &str| expected.keys().filter(|(j, _)| j == name).count();
    assert!(
        per_job("daily_push") > 200 && per_job("six_hourly_skip") > 1000,
        "{expected:?}"
    );
    assert!(
        expected.values().any(|late| *late),
        "no caught-up slot in the whole year"
    );
}

// ---- misfire policies, ledger and alerts, one by one -----------------------------

fn one_job(misfire: &str, extra: &str) -> String {
    format!(
        r#"
[connectors.web]
kind = "local"

[schedules.hourly]
cron = "0 0 * * * *"
timezone = "Asia/Shanghai"
misfire = "{misfire}"
alert_chat = "web:ops"
{extra}
"#
    )
}

/// Start at `t0`, fire through `t1`, go down until `t2`, and come back.
async fn downtime(misfire: &str, extra: &str, t1: &str, t2: &str) -> (Rig, Vec<Fired>) {
    let rig = Rig::new(
        &one_job(misfire, extra),
        utc("2026-05-01T00:00:30Z"),
        Duration::from_secs(8 * 3600),
    );
    let mut s = rig.open().await;
    run_until(&mut s, &rig.clock, utc(t1)).await;
    drop(s);
    rig.clock.set(utc(t2));
    let mut s = rig.open().await;
    let fired = s.fire_due().await.unwrap().fired;
    (rig, fired)
}

fn slots(fired: &[Fired]) -> Vec<String> {
    fired.iter().map(|f| f.slot.to_rfc3339()).collect()
}

#[tokio::test]
async fn first_start_does_not_backfill() {
    let rig = Rig::new(
        &one_job("all", ""),
        utc("2026-05-01T10:30:00Z"),
        Duration::from_secs(60),
    );
    let mut s = rig.open().await;
    assert!(s.fire_due().await.unwrap().fired.is_empty());
    assert_eq!(s.next_due(), Some(utc("2026-05-01T11:00:00Z")));
}

#[tokio::test]
async fn skip_fires_nothing_missed_and_alerts_once() {
    let (rig, fired) = downtime("skip", "", "2026-05-01T03:00:00Z", "2026-05-01T06:10:00Z").await;
    assert!(fired.is_empty(), "{:?}", slots(&fired));
    let items = rig.store.outbox_after(None, 100).await.unwrap();
    assert_eq!(items.len(), 1, "one alert per downtime: {items:?}");
    let ms = utc("2026-05-01T06:00:00Z").timestamp_millis();
    assert_eq!(items[0].key, format!("scheduler-alert/hourly/{ms}"));
    assert_eq!(items[0].connector, "web");
    let text = serde_json::to_string(&items[0].op).unwrap();
    assert!(
        text.contains("\"ops\"") && text.contains("missed 3 slot(s)"),
        "{text}"
    );
    // The API view shows them as missed.
    let status =
        perch::testing::internals::status(&rig.schedules, rig.store.as_ref(), rig.clock.now(), 2)
            .await
            .unwrap();
    assert_eq!(status[0].missed.len(), 3, "{:?}", status[0].missed);
    assert_eq!(
        status[0].last_fired.as_deref(),
        Some("2026-05-01T11:00:00+08:00")
    );
}

#[tokio::test]
async fn once_fires_the_latest_missed_slot_within_the_window() {
    let (_, fired) = downtime("once", "", "2026-05-01T03:00:00Z", "2026-05-01T06:40:00Z").await;
    assert_eq!(slots(&fired), ["2026-05-01T06:00:00+00:00"]);
    assert!(fired[0].caught_up);
    // Outside the window: nothing.
    let (rig, fired) = downtime(
        "once",
        "catch_up_within = \"30m\"",
        "2026-05-01T03:00:00Z",
        "2026-05-01T06:40:00Z",
    )
    .await;
    assert!(fired.is_empty());
    assert_eq!(rig.store.outbox_after(None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn all_fires_every_missed_slot_in_order_and_caps() {
    let (rig, fired) = downtime("all", "", "2026-05-01T03:00:00Z", "2026-05-01T06:40:00Z").await;
    assert_eq!(
        slots(&fired),
        [
            "2026-05-01T04:00:00+00:00",
            "2026-05-01T05:00:00+00:00",
            "2026-05-01T06:00:00+00:00"
        ]
    );
    assert!(
        rig.store.outbox_after(None, 10).await.unwrap().is_empty(),
        "nothing lost, no alert"
    );
    // Down for 50 days: 1200 missed hourly slots, only the latest 1000 fire.
    let (rig, fired) = downtime("all", "", "2026-05-01T03:00:00Z", "2026-06-20T03:30:00Z").await;
    assert_eq!(fired.len(), 1000);
    assert_eq!(fired.last().unwrap().slot, utc("2026-06-20T03:00:00Z"));
    assert!(fired.windows(2).all(|w| w[0].slot < w[1].slot));
    assert_eq!(
        rig.store.outbox_after(None, 10).await.unwrap().len(),
        1,
        "the capped ones are alerted"
    );
}

#[tokio::test]
async fn a_slot_seen_within_the_grace_is_on_time() {
    // Down across 06:00, back 40 s later: on time even with `skip`.
    let (_, fired) = downtime("skip", "", "2026-05-01T05:59:00Z", "2026-05-01T06:00:40Z").await;
    assert_eq!(slots(&fired), ["2026-05-01T06:00:00+00:00"]);
    assert!(!fired[0].caught_up);
}

#[tokio::test]
async fn a_tick_carries_job_slot_payload_and_dedupe_key() {
    let rig = Rig::new(
        &one_job(
            "once",
            "topic = \"push.hourly\"\npayload = { report = \"gmv\", n = 3 }",
        ),
        utc("2026-05-01T00:59:00Z"),
        Duration::from_secs(60),
    );
    let mut s = rig.open().await;
    run_until(&mut s, &rig.clock, utc("2026-05-01T01:00:05Z")).await;
    let events = rig.store.recent_events(None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0].event;
    assert_eq!(e.kind, perch::event::EventKind::Tick);
    assert_eq!(e.connector, "scheduler");
    assert_eq!(e.topic.as_deref(), Some("push.hourly"));
    assert_eq!(
        e.external_id.as_deref(),
        Some(format!("hourly@{}", utc("2026-05-01T01:00:00Z").timestamp_millis()).as_str())
    );
    assert_eq!(
        e.payload,
        serde_json::json!({"job": "hourly", "slot": "2026-05-01T09:00:00+08:00", "caught_up": false, "report": "gmv", "n": 3})
    );
}

#[tokio::test]
async fn the_ledger_records_outcomes_and_alerts_on_failed_bots() {
    let rig = Rig::new(
        &one_job("once", ""),
        utc("2026-05-01T00:59:00Z"),
        Duration::from_secs(60),
    );
    let mut s = rig.open().await;
    let fired = run_until(&mut s, &rig.clock, utc("2026-05-01T02:00:00Z")).await;
    assert_eq!(fired.len(), 2);
    // The router handled the first tick fine and the second with a failing bot.
    let stored = |n: usize| {
        let id = fired[n].accepted.id();
        let store = rig.store.clone();
        async move { store.event(id).await.unwrap().unwrap().event }
    };
    let (ok, bad) = (stored(0).await, stored(1).await);
    rig.store
        .complete_event(
            &ok,
            &Fate::Routed {
                bots: vec!["push".into()],
                actions: 1,
                failures: vec![],
                answer: None,
            },
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s.unresolved(), 2);
    s.check_outcomes().await.unwrap();
    assert_eq!(s.unresolved(), 1, "the pending one waits");
    assert!(rig.store.outbox_after(None, 10).await.unwrap().is_empty());
    let failure = perch::store::BotFailure {
        bot: "push".into(),
        error: "BI API timed out after 5 s".into(),
    };
    rig.store
        .complete_event(
            &bad,
            &Fate::Routed {
                bots: vec!["push".into()],
                actions: 0,
                failures: vec![failure],
                answer: None,
            },
            &[],
        )
        .await
        .unwrap();
    s.check_outcomes().await.unwrap();
    assert_eq!(s.unresolved(), 0);
    let items = rig.store.outbox_after(None, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].key,
        format!(
            "scheduler-alert/hourly/{}",
            fired[1].slot.timestamp_millis()
        )
    );
    assert!(
        serde_json::to_string(&items[0].op)
            .unwrap()
            .contains("BI API timed out")
    );

    let status =
        perch::testing::internals::status(&rig.schedules, rig.store.as_ref(), rig.clock.now(), 3)
            .await
            .unwrap();
    let job = &status[0];
    assert_eq!(job.runs.len(), 2);
    assert_eq!(job.failed.len(), 1);
    assert_eq!(
        job.next,
        [
            "2026-05-01T11:00:00+08:00",
            "2026-05-01T12:00:00+08:00",
            "2026-05-01T13:00:00+08:00"
        ]
    );
    let v = serde_json::to_value(&job.runs).unwrap();
    assert_eq!(v[0]["outcome"]["result"], "bots_failed", "{v}");
    assert_eq!(v[1]["outcome"]["result"], "ok", "{v}");
    assert_eq!(v[1]["event_id"], serde_json::json!(ok.id));
}

#[tokio::test]
async fn the_ledger_keeps_the_last_runs_per_job() {
    let rig = Rig::new(
        &one_job("once", ""),
        utc("2026-05-01T00:00:30Z"),
        Duration::from_secs(60),
    );
    let mut s = rig.open().await;
    run_until(&mut s, &rig.clock, utc("2026-05-04T00:00:30Z")).await;
    let runs = rig
        .store
        .kv_scan("scheduler-runs", "hourly/")
        .await
        .unwrap();
    assert_eq!(runs.len(), perch::testing::internals::KEEP_RUNS);
    assert!(
        runs.last()
            .unwrap()
            .0
            .ends_with(&utc("2026-05-04T00:00:00Z").timestamp_millis().to_string())
    );
}

// ---- config ---------------------------------------------------------------------

#[test]
fn bad_cron_and_zone_are_located_config_errors() {
    let e = config_error(
        r#"
[schedules.daily]
cron = "0 9 * * MON-FRI"
timezone = "Asia/Shanghai"

[schedules.other]
cron = "0 0 9 * * MON-FRI"
timezone = "Asia/Shangai"
"#,
    );
    assert!(
        e.contains("test.toml:3:8: schedule `daily`: bad cron \"0 9 * * MON-FRI\""),
        "{e}"
    );
    assert!(
        e.contains("test.toml:8:12: schedule `other`: unknown time zone \"Asia/Shangai\""),
        "{e}"
    );
    let e = config_error(
        "[schedules.x]\ncron = \"0 0 9 * * MON-FRI\"\ntimezone = \"UTC\"\nmisfire = \"sometimes\"\n",
    );
    assert!(e.contains("test.toml:4") && e.contains("sometimes"), "{e}");
    let e = config_error("[schedules.x]\ncron = \"0 0 9 * * *\"\n");
    assert!(e.contains("timezone"), "{e}");
}

#[test]
fn scheduler_is_a_reserved_connector_name_that_routes_may_use() {
    let ok = r#"
[connectors.web]
kind = "local"
[bots.n]
kind = "notify"
connector = "web"
chat = "general"
text = "tick"
[schedules.beat]
cron = "*/10 * * * * *"
timezone = "UTC"
[[routes]]
connector = "scheduler"
kind = "tick"
bots = ["n"]
"#;
    Config::from_str(ok, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let e = config_error("[connectors.scheduler]\nkind = \"local\"\n");
    assert!(e.contains("connector name `scheduler` is reserved"), "{e}");
}

#[test]
fn alert_chat_and_payload_are_checked() {
    let e = config_error(
        r#"
[schedules.a]
cron = "0 0 9 * * *"
timezone = "UTC"
alert_chat = "feishu:oc_1"
payload = { job = "x" }
[schedules.b]
cron = "0 0 9 * * *"
timezone = "UTC"
alert_chat = "no-colon"
[schedules."bad/name"]
cron = "0 0 9 * * *"
timezone = "UTC"
"#,
    );
    assert!(
        e.contains("alert_chat names connector `feishu`, which is not defined"),
        "{e}"
    );
    assert!(e.contains("payload key `job` is reserved"), "{e}");
    assert!(e.contains("alert_chat \"no-colon\" must be"), "{e}");
    assert!(e.contains("schedule name \"bad/name\""), "{e}");
}

// ---- end to end -----------------------------------------------------------------

const LIVE: &str = r#"
[server]
listen = "127.0.0.1:0"

[connectors.web]
kind = "local"

[bots.heartbeat]
kind = "notify"
connector = "web"
chat = "general"
text = "tick {{payload.job}}"

[schedules.beat]
cron = "* * * * * *"
timezone = "Europe/Berlin"
misfire = "skip"

[[routes]]
connector = "scheduler"
kind = "tick"
topic = "beat"
bots = ["heartbeat"]
"#;

#[tokio::test]
async fn a_tick_reaches_the_chat_through_the_router_and_shows_in_the_api() {
    let mut t = TestPerch::start(LIVE).await;
    let store = t.store();
    let msgs = eventually(15, "a tick message in #general", || {
        let store = store.clone();
        async move {
            let v = store.kv_scan("web/web", "msg/general/").await.unwrap();
            (!v.is_empty()).then_some(v)
        }
    })
    .await;
    let text = String::from_utf8_lossy(&msgs[0].1).to_string();
    assert!(text.contains("tick beat"), "{text}");

    let client = reqwest::Client::new();
    let body: serde_json::Value =
        eventually(15, "a run with its outcome in /api/schedules", || {
            let client = client.clone();
            let url = t.url("/api/schedules?count=3");
            async move {
                let v: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
                let ok = v["schedules"][0]["runs"]
                    .as_array()?
                    .iter()
                    .any(|r| r["outcome"]["result"] == "ok");
                ok.then_some(v)
            }
        })
        .await;
    let job = &body["schedules"][0];
    assert_eq!(job["name"], "beat");
    assert_eq!(job["timezone"], "Europe/Berlin");
    assert_eq!(job["next"].as_array().unwrap().len(), 3);
    assert!(
        job["next"][0].as_str().unwrap().ends_with("+01:00")
            || job["next"][0].as_str().unwrap().ends_with("+02:00")
    );
    assert!(job["last_fired"].is_string());
    // A bad `count` is a 400 with a reason, not a default.
    let resp = client
        .get(t.url("/api/schedules?count=lots"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("count"));

    // Each slot's tick is in the journal once. (Restarts are covered by the simulation
    // above: `TestPerch::restart` cannot reopen the store in-process yet, see the report.)
    let store = t.store();
    let mut seen = HashMap::new();
    for e in store.recent_events(None, 10_000).await.unwrap() {
        *seen
            .entry(e.event.external_id.unwrap_or_default())
            .or_insert(0) += 1;
    }
    assert!(!seen.is_empty());
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    t.stop().await;
}

/// A whole perch stopped and started again on the same store: every second's slot is
/// in the journal exactly once, with no gap across the restart.
#[tokio::test]
async fn a_restarted_perch_neither_repeats_nor_drops_a_slot() {
    let store: Arc<dyn Store> = perch::testing::temporary_store();
    let boot = || async {
        let config = Config::from_str(LIVE, Path::new("test.toml")).unwrap();
        perch::Perch::start_with_store(config, store.clone(), Arc::new(perch::clock::SystemClock))
            .await
            .expect("perch starts")
    };
    let ticks = || async {
        let mut slots: Vec<i64> = Vec::new();
        for e in store.recent_events(None, 10_000).await.unwrap() {
            if e.event.connector == "scheduler" {
                let id = e.event.external_id.unwrap();
                slots.push(id.strip_prefix("beat@").unwrap().parse().unwrap());
            }
        }
        slots.sort();
        slots
    };
    let first = boot().await;
    eventually(15, "two ticks", || async {
        (ticks().await.len() >= 2).then_some(())
    })
    .await;
    first.shutdown().await;
    let before = ticks().await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = boot().await;
    eventually(15, "two more ticks", || async {
        (ticks().await.len() >= before + 2).then_some(())
    })
    .await;
    second.shutdown().await;

    let slots = ticks().await;
    assert!(
        slots.windows(2).all(|w| w[1] - w[0] == 1000),
        "a slot repeated or dropped: {slots:?}"
    );
}

#[test]
fn perch_schedule_prints_next_fire_times_in_each_zone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perch.toml");
    std::fs::write(
        &path,
        "[schedules.daily_push]\ncron = \"0 0 9 * * MON-FRI\"\ntimezone = \"Asia/Shanghai\"\ntopic = \"push.daily\"\n",
    )
    .unwrap();
    let out = perch::testing::perch_command(
        PERCH,
        &[
            "schedule",
            "--count",
            "3",
            "--config",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("daily_push") && text.contains("Asia/Shanghai"),
        "{text}"
    );
    let times: Vec<&str> = text.lines().filter(|l| l.contains("09:00:00")).collect();
    assert_eq!(times.len(), 3, "{text}");
    assert!(
        times
            .iter()
            .all(|l| l.ends_with("+08:00") && !l.contains("Sat") && !l.contains("Sun")),
        "{text}"
    );

    std::fs::write(
        &path,
        "[schedules.bad]\ncron = \"nope\"\ntimezone = \"UTC\"\n",
    )
    .unwrap();
    let out =
        perch::testing::perch_command(PERCH, &["schedule", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("perch.toml:2:8"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
