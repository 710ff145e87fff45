//! Crash safety, for real: run the `perch` binary, SIGKILL it while events are being
//! accepted, start it again on the same data, and prove that
//! - every event that was acknowledged (HTTP 200) is in the journal, and
//! - every queued action was delivered exactly once, counted at a fake chat endpoint by
//!   its idempotency key (the outbox key), with no key for an event that is not there.
//!
//! A delivery in flight at the moment of the kill may reach the endpoint again after the
//! restart, under the same idempotency key: that is what the key is for (Feishu's `uuid`,
//! Slack's dedupe), and the endpoint counts it once. The test prints how often it happened.

use axum::routing::post;
use perch::testing::relay::{
    Acked, all_events, check_delivered_once, load, start_sink, wait_settled,
};
use perch::testing::{RelayConfig, free_port, sign, spawn_perch, wait_healthy};
use serde_json::Value;
use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `perch` command line these tests run as a process.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

const SECRET: &str = "crash-secret";

/// How long before a kill a repeated delivery may have been confirmed. Deliveries on
/// the wire at the kill are repeated by design (the key absorbs them); one confirmed
/// earlier must have its record durable already: the outbox group-commits delivery
/// records within milliseconds (measured: at most 4 ms over 20 kills; without it, repeats
/// were confirmed up to 83 ms before their kill, 766 of them in 20 kills).
const REPEAT_BOUND: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_and_sends_nothing_twice() {
    let (sink_url, sink) = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("perch.toml");
    let data = dir.path().join("data");
    let relay = RelayConfig {
        port,
        data_dir: &data,
        sink_url: &sink_url,
        secret: SECRET,
        chat: "{{payload.chat}}",
        server: "",
        outbox: "min_backoff = \"20ms\"\nmax_backoff = \"200ms\"",
        inbound: "chat_pointer = \"/chat\"",
    };
    std::fs::write(&config, relay.text()).unwrap();

    let chats = 4;
    let kills = std::env::var("PERCH_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10usize);
    let mut acked_all: Vec<Acked> = Vec::new();
    let mut killed_at = Vec::new();
    for round in 0..kills {
        let child = spawn_perch(PERCH, &config);
        wait_healthy(&base).await;
        let stop = tokio_util::sync::CancellationToken::new();
        let loader = tokio::spawn(load(
            vec![base.clone()],
            SECRET,
            chats,
            stop.clone(),
            round + 1,
        ));
        // Let load build up, then kill -9 in the middle of it (at varying moments).
        tokio::time::sleep(Duration::from_millis(400 + 60 * (round as u64 % 5))).await;
        killed_at.push(std::time::Instant::now());
        drop(child);
        stop.cancel();
        let acked = loader.await.unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: some events were acknowledged before the kill"
        );
        acked_all.extend(acked);
    }

    // A last, clean start: it must finish everything that was queued.
    let _child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    wait_settled(&base).await;
    let events = all_events(&base).await;
    let sink = sink.lock().unwrap();
    let (journaled, repeats, oldest) =
        check_delivered_once(&events, &acked_all, &sink, &killed_at, REPEAT_BOUND);
    eprintln!(
        "crash test: {kills} kills, {} acknowledged, {} journaled, {} delivered keys, {repeats} repeated deliveries (oldest confirmed {oldest:?} before its kill)",
        acked_all.len(),
        journaled,
        sink.keys.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_first_in_a_segment_loses_nothing_after_it() {
    use perch::event::{Event, EventKind};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("data");
    let config = dir.path().join("perch.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[connectors.in]\nkind = \"webhook\"\nsecret = \"{SECRET}\"\n",
            data.display()
        ),
    )
    .unwrap();
    // The segment a kill -9 left: the bad record, then 50 good ones.
    let log = data.join("ingest-log");
    std::fs::create_dir_all(&log).unwrap();
    let now = chrono::Utc::now();
    let until = now + chrono::Duration::hours(8);
    let mut poison = serde_json::to_value(Event::new("in", EventKind::System, now)).unwrap();
    let mut deep = Value::Array(Vec::new());
    for _ in 1..127 {
        deep = Value::Array(vec![deep]);
    }
    poison["payload"] = deep;
    let mut segment = Vec::new();
    perch::testing::internals::ingest_log_encode(
        &mut segment,
        until,
        &serde_json::to_vec(&poison).unwrap(),
    );
    let mut ids = HashSet::new();
    for n in 0..50 {
        let mut e = Event::new("in", EventKind::System, now);
        e.topic = Some("crash.test".into());
        e.external_id = Some(format!("good-{n}"));
        ids.insert(e.id.to_string());
        perch::testing::internals::ingest_log_encode(
            &mut segment,
            until,
            &serde_json::to_vec(&e).unwrap(),
        );
    }
    std::fs::write(log.join(format!("{:020}.log", 1)), &segment).unwrap();

    let _child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    let events = all_events(&base).await;
    let journal: HashSet<String> = events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        journal, ids,
        "all 50 acknowledged events after the bad record"
    );
    let quarantined: Vec<_> = std::fs::read_dir(log.join("quarantine"))
        .expect("a quarantine directory")
        .collect();
    assert_eq!(quarantined.len(), 1, "the bad record is kept aside");
}

/// A perch with one connector that cannot deliver (`send_url` refuses with 400 until
/// `ok` is set), for the replay and shutdown tests. Returns its base URL, the sink's
/// counters and the config path.
async fn perch_with_failing_sink(
    dir: &std::path::Path,
    extra_server: &str,
    sink_url: &str,
) -> (String, std::path::PathBuf) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.join("perch.toml");
    let data = dir.join("data");
    let relay = RelayConfig {
        port,
        data_dir: &data,
        sink_url,
        secret: SECRET,
        chat: "room",
        server: extra_server,
        outbox: "max_attempts = 2\nmin_backoff = \"500ms\"\nmax_backoff = \"1s\"\nattempt_timeout = \"30s\"",
        inbound: "",
    };
    std::fs::write(&config, relay.text()).unwrap();
    (base, config)
}

async fn post_one(base: &str, id: &str) {
    let body = format!(r#"{{"n":"room {id}"}}"#);
    let r = reqwest::Client::new()
        .post(format!("{base}/hooks/in"))
        .header("X-Topic", "t")
        .header("X-Delivery", id)
        .header(
            "X-Signature",
            format!("sha256={}", sign(SECRET, body.as_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn dead_letters(base: &str) -> Vec<Value> {
    let v: Value = reqwest::get(format!("{base}/api/dead-letters"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["dead_letters"].as_array().cloned().unwrap_or_default()
}

/// A sink that answers with the status in `status` (200 counts as delivered).
async fn switchable_sink(
    status: u16,
) -> (String, Arc<std::sync::atomic::AtomicU16>, Arc<Mutex<usize>>) {
    let answer = Arc::new(std::sync::atomic::AtomicU16::new(status));
    let count = Arc::new(Mutex::new(0usize));
    let app = axum::Router::new().route(
        "/send",
        post({
            let (answer, count) = (answer.clone(), count.clone());
            move || {
                let (answer, count) = (answer.clone(), count.clone());
                async move {
                    let status = answer.load(std::sync::atomic::Ordering::SeqCst);
                    if status == 200 {
                        *count.lock().unwrap() += 1;
                    }
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        "{\"id\":\"x\"}",
                    )
                }
            }
        }),
    );
    let url = perch::testing::serve_fake(app).await;
    (url, answer, count)
}

/// A replayed dead letter is durable when the replay is answered: killed right after the
/// answer, perch delivers it after the restart instead of finding it dead again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_answered_is_a_replay_kept_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    // 400: a permanent refusal, so the item dead-letters at once.
    let (sink_url, answer, count) = switchable_sink(400).await;
    let (base, config) = perch_with_failing_sink(dir.path(), "", &sink_url).await;
    let child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    post_one(&base, "r-1").await;
    let mut letters = Vec::new();
    for _ in 0..250 {
        letters = dead_letters(&base).await;
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(letters.len(), 1, "a dead letter");
    let key = letters[0]["item"]["key"].as_str().unwrap().to_string();
    // The platform is down now (503): the replayed item waits in its backoff, so only
    // the store can carry it across the kill.
    answer.store(503, std::sync::atomic::Ordering::SeqCst);
    let r = reqwest::Client::new()
        .post(format!("{base}/api/dead-letters/replay?key={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(child); // SIGKILL right after the answer
    answer.store(200, std::sync::atomic::Ordering::SeqCst);
    let _child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    for _ in 0..250 {
        if *count.lock().unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *count.lock().unwrap(),
        1,
        "the replayed letter was delivered"
    );
    assert!(
        dead_letters(&base).await.is_empty(),
        "and is not dead again"
    );
}

/// SIGTERM with deliveries stuck behind an unreachable platform stops within the grace
/// period, and what was queued is delivered after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_within_the_grace_and_keeps_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    // 503: worth retrying, so the items wait in backoff when SIGTERM comes.
    let (sink_url, answer, count) = switchable_sink(503).await;
    let (base, config) =
        perch_with_failing_sink(dir.path(), "shutdown_grace = \"2s\"", &sink_url).await;
    // Retries forever-ish, so nothing dead-letters during the test.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_attempts = 2", "max_attempts = 1000");
    std::fs::write(&config, text).unwrap();
    let mut child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    for i in 0..30 {
        post_one(&base, &format!("t-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    // SIGTERM (std's kill() is SIGKILL).
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exited = false;
    for _ in 0..400 {
        if child.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = asked.elapsed();
    eprintln!("SIGTERM with 30 deliveries retrying: stopped in {took:?}");
    assert!(
        exited && took < Duration::from_secs(5),
        "stopped in {took:?}"
    );
    answer.store(200, std::sync::atomic::Ordering::SeqCst);
    let _child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    for _ in 0..500 {
        if *count.lock().unwrap() == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status: Value = reqwest::get(format!("{base}/api/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        *count.lock().unwrap(),
        30,
        "every queued delivery went out after the restart: {status}"
    );
}
