//! A full disk, for real: perch's data directory on a small tmpfs this test mounts, the
//! disk filled up while events arrive and deliveries go out, then space given back.
//! perch must refuse new events with a clear 503 (never acknowledge what it cannot
//! keep), say so on `/healthz`, send nothing it cannot record as sent (no storm of
//! repeats), and recover by itself once space is back: no restart.
//!
//! Mounting needs root (and a kernel that allows it). Where it cannot mount, the test
//! says so and passes, except under `CI`, where it fails: CI runs as root.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use perch::testing::{RelayConfig, free_port, sign, spawn_perch, wait_healthy};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `perch` command line these tests run as a process.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

const SECRET: &str = "disk-full-secret";

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn start_sink() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let keys: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/send",
            post(
                |State(k): State<Arc<Mutex<HashMap<String, usize>>>>, h: HeaderMap| async move {
                    let key = h
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    *k.lock().unwrap().entry(key).or_default() += 1;
                    axum::Json(serde_json::json!({"id": "ok"}))
                },
            ),
        )
        .with_state(keys.clone());
    let url = perch::testing::serve_fake(app).await;
    (url, keys)
}

/// Post one event; its HTTP status and, on 200, its event id.
async fn post_event(
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> (u16, Option<String>, String) {
    let body = format!(r#"{{"n":"{n}","pad":"{}"}}"#, "x".repeat(2000));
    let r = client
        .post(format!("{base}/hooks/in"))
        .header("X-Topic", "t")
        .header("X-Delivery", format!("d-{n}"))
        .header(
            "X-Signature",
            format!("sha256={}", sign(SECRET, body.as_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let id = v["event_id"].as_str().map(str::to_string);
    let error = v["error"].as_str().unwrap_or("").to_string();
    (status, id, error)
}

async fn healthz(base: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Fill the filesystem at `dir` until it refuses; returns the filler's path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_events_pauses_deliveries_and_recovers_by_itself() {
    let fs = match Tmpfs::mount("48m") {
        Ok(fs) => fs,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED (not under CI): {why}");
            return;
        }
        Err(why) => panic!("CI must be able to mount a tmpfs (it runs as root): {why}"),
    };
    let (sink_url, keys) = start_sink().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = tempfile::tempdir().unwrap().keep().join("perch.toml");
    let data = fs.0.join("data");
    let relay = RelayConfig {
        port,
        data_dir: &data,
        sink_url: &sink_url,
        secret: SECRET,
        chat: "room",
        server: "cache_mb = 8",
        outbox: "min_backoff = \"50ms\"\nmax_backoff = \"500ms\"",
        inbound: "",
    };
    std::fs::write(&config, relay.text()).unwrap();
    let _perch = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    let mut n = 0;
    for _ in 0..20 {
        n += 1;
        let (s, id, _) = post_event(&client, &base, n).await;
        assert_eq!(s, 200);
        acked.extend(id);
    }

    // The disk fills up while events keep coming.
    let filler = fill(&fs.0);
    let mut refused = None;
    for _ in 0..20_000 {
        n += 1;
        match post_event(&client, &base, n).await {
            (200, id, _) => acked.extend(id),
            (503, _, why) => {
                refused = Some(why);
                break;
            }
            (s, _, why) => panic!("unexpected {s}: {why}"),
        }
    }
    let why = refused.expect("a full disk is refused with 503");
    eprintln!("refused with a full disk after {} acks: {why}", acked.len());
    assert!(!why.is_empty() && !why.contains('\n'), "{why:?}");
    let (status, health) = healthz(&base).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "cannot_store", "{health}");
    // Time for the outbox to try (and be paused), then: nothing sent twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let repeats: usize = keys.lock().unwrap().values().map(|n| n - 1).sum();
    assert_eq!(
        repeats, 0,
        "no delivery was sent twice while the disk was full"
    );

    // Space comes back: perch takes events again by itself, and delivers everything.
    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    let mut recovered = false;
    for _ in 0..300 {
        n += 1;
        if let (200, id, _) = post_event(&client, &base, n).await {
            acked.extend(id);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "perch takes events again once space is back");
    eprintln!("accepting again {:?} after space came back", back.elapsed());
    for _ in 0..300 {
        if healthz(&base).await.0 == 200 && keys.lock().unwrap().len() >= acked.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healthz(&base).await.0, 200);
    let keys = keys.lock().unwrap();
    for id in &acked {
        assert!(
            keys.keys().any(|k| k.starts_with(id.as_str())),
            "acknowledged event {id} was delivered"
        );
    }
    let repeats: usize = keys.values().map(|n| n - 1).sum();
    assert_eq!(repeats, 0, "nothing was sent twice");
}
