//! Crash safety, for real: run the `perch` binary, SIGKILL it while events are being
//! accepted, start it again on the same data, and prove that
//! - every event that was acknowledged (HTTP 200) is in the journal, and
//! - every queued action was delivered exactly once, counted at a fake chat endpoint by
//!   its idempotency key (the outbox key), with no key for an event that is not there.
//!
//! A delivery in flight at the moment of the kill may reach the endpoint again after the
//! restart, under the same idempotency key: that is what the key is for (Feishu's `uuid`,
//! Slack's dedupe), and the endpoint counts it once. The test prints how often it happened.

mod common;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use common::sign;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "crash-secret";

#[derive(Default)]
struct Sink {
    /// Idempotency key → how many times it arrived.
    keys: HashMap<String, usize>,
}

async fn start_sink() -> (String, Arc<Mutex<Sink>>) {
    let sink = Arc::new(Mutex::new(Sink::default()));
    let app = axum::Router::new()
        .route(
            "/send",
            post(
                |State(s): State<Arc<Mutex<Sink>>>, headers: HeaderMap| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    *s.lock().unwrap().keys.entry(key).or_default() += 1;
                    axum::Json(serde_json::json!({"id": "ok"}))
                },
            ),
        )
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, sink)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A perch process that is SIGKILLed when dropped, so a failing assertion does not leave
/// it running (holding the test's output open).
struct Perch(Child);

impl Drop for Perch {
    fn drop(&mut self) {
        self.0.kill().ok(); // std's kill() is SIGKILL on Unix
        self.0.wait().ok();
    }
}

fn spawn_perch(config: &std::path::Path) -> Perch {
    Perch(
        Command::new(env!("CARGO_BIN_EXE_perch"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("perch binary starts"),
    )
}

async fn wait_healthy(base: &str) {
    for _ in 0..500 {
        if reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("perch did not become healthy");
}

/// Post events from `workers` tasks until `stop`; returns the acknowledged event ids.
async fn load(
    base: String,
    workers: usize,
    stop: tokio_util::sync::CancellationToken,
    round: usize,
) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (base, stop, acked) = (base.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let body = format!(r#"{{"n":"{round}-{w}-{n}"}}"#);
                let sig = sign(SECRET, body.as_bytes());
                let resp = client
                    .post(format!("{base}/hooks/in"))
                    .header("X-Topic", "crash.test")
                    .header("X-Delivery", format!("{round}-{w}-{n}"))
                    .header("X-Signature", format!("sha256={sig}"))
                    .body(body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push(v["event_id"].as_str().unwrap().to_string());
                    }
                    // Killed mid-request: not acknowledged, so no promise was made.
                    _ => break,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

async fn all_events(base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/events?limit=1000");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        before = events.last().unwrap()["event"]["id"]
            .as_str()
            .map(str::to_string);
        out.extend(events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_and_sends_nothing_twice() {
    let (sink_url, sink) = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("perch.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"

[outbox]
min_backoff = "20ms"
max_backoff = "200ms"

[connectors.in]
kind = "webhook"
secret = "{SECRET}"
signature_header = "X-Signature"
topic_header = "X-Topic"
id_header = "X-Delivery"

[connectors.sink]
kind = "webhook"
insecure = true
send_url = "{sink_url}/send"

[bots.relay]
kind = "notify"
connector = "sink"
chat = "crash"
text = "{{{{payload.n}}}}"

[[routes]]
connector = "in"
bots = ["relay"]
"#,
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();

    let mut acked_all: Vec<String> = Vec::new();
    let rounds = 3;
    for round in 0..rounds {
        let child = spawn_perch(&config);
        wait_healthy(&base).await;
        let stop = tokio_util::sync::CancellationToken::new();
        let loader = tokio::spawn(load(base.clone(), 8, stop.clone(), round));
        // Let load build up, then kill -9 in the middle of it.
        tokio::time::sleep(Duration::from_millis(700)).await;
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
    let _child = spawn_perch(&config);
    wait_healthy(&base).await;
    let mut settled = false;
    for _ in 0..1500 {
        let s: Value = reqwest::get(format!("{base}/api/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["pending_events"] == 0 && s["outbox_depth"] == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(settled, "pending events and outbox drained after restart");

    let events = all_events(&base).await;
    let journal: HashSet<String> = events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    for id in &acked_all {
        assert!(
            journal.contains(id),
            "acknowledged event {id} is in the journal after SIGKILL"
        );
    }
    for e in &events {
        assert_eq!(e["fate"]["state"], "routed", "every event was handled: {e}");
    }
    let sink = sink.lock().unwrap();
    let delivered_events: HashSet<&str> = sink
        .keys
        .keys()
        .map(|k| k.split('/').next().unwrap())
        .collect();
    assert_eq!(
        sink.keys.len(),
        journal.len(),
        "one delivery (by idempotency key) per journaled event"
    );
    for id in &journal {
        assert!(
            delivered_events.contains(id.as_str()),
            "event {id} was delivered"
        );
    }
    for key in sink.keys.keys() {
        assert!(
            journal.contains(key.split('/').next().unwrap()),
            "delivered key {key} belongs to a journaled event"
        );
    }
    let repeats: usize = sink.keys.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {} acknowledged, {} journaled, {} delivered keys, {} repeated deliveries absorbed by idempotency keys",
        acked_all.len(),
        journal.len(),
        sink.keys.len(),
        repeats
    );
}

/// Issue 20: a record that is whole but cannot be decoded (an event 128 levels deep, as
/// an older perch acknowledged) is first in the segment a crash left behind. The start
/// after the crash quarantines it and replays all 50 acknowledged events after it.
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
    perch::store::ingest_log::encode(&mut segment, until, &serde_json::to_vec(&poison).unwrap());
    let mut ids = HashSet::new();
    for n in 0..50 {
        let mut e = Event::new("in", EventKind::System, now);
        e.topic = Some("crash.test".into());
        e.external_id = Some(format!("good-{n}"));
        ids.insert(e.id.to_string());
        perch::store::ingest_log::encode(&mut segment, until, &serde_json::to_vec(&e).unwrap());
    }
    std::fs::write(log.join(format!("{:020}.log", 1)), &segment).unwrap();

    let _child = spawn_perch(&config);
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
