//! Several perch processes on one PostgreSQL (`[store] kind = "postgres"`), as behind a
//! load balancer: events posted to any replica, each handled by one replica, delivered
//! once, in order per chat; each schedule slot fired once across replicas; and the same
//! with replicas killed (-9) at random moments and restarted.
//!
//! The database is a fresh one on the server of `PERCH_TEST_DATABASE_URL`
//! (`perch::testing::test_database`): missing, these tests fail under `CI` and
//! are skipped with a printed reason otherwise.

use perch::testing::relay::{
    Acked, Sink, all_events, check_delivered_once, load, start_sink, wait_settled,
};
use perch::testing::{ChildPerch, RelayConfig, Sse, free_port, spawn_perch, wait_healthy};
use rand::Rng;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `perch` command line these tests run as a process.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

const SECRET: &str = "replica-secret";

/// Deliveries on the wire when their replica was killed may arrive again from the
/// replica that takes the lane over (the idempotency key absorbs them). One confirmed
/// longer before the kill than this must have had its sent record stored.
const REPEAT_BOUND: Duration = Duration::from_millis(50);

/// One replica: its config (own port and data dir, the shared database) and base URL.
struct Replica {
    config: PathBuf,
    base: String,
}

/// `n` replica configs of the relay (`RelayConfig`) on the database at `url`, with a
/// schedule firing every second, routed to the relay as chat `ticks`.
fn replicas(dir: &Path, n: usize, url: &str, sink_url: &str) -> Vec<Replica> {
    (0..n)
        .map(|i| {
            let port = free_port();
            let data = dir.join(format!("data{i}"));
            let relay = RelayConfig {
                port,
                data_dir: &data,
                sink_url,
                secret: SECRET,
                chat: "{{payload.chat}}",
                server: "",
                outbox: "min_backoff = \"20ms\"\nmax_backoff = \"200ms\"",
                inbound: "chat_pointer = \"/chat\"",
            };
            let text = format!(
                "{}\n[[routes]]\nconnector = \"scheduler\"\nkind = \"tick\"\nbots = [\"relay\"]\n\n\
                 [schedules.beat]\ncron = \"* * * * * *\"\ntimezone = \"UTC\"\n\
                 [schedules.beat.payload]\nchat = \"ticks\"\nn = \"ticks 0\"\n\n\
                 [store]\nkind = \"postgres\"\nurl = \"{url}\"\npool_size = 8\n",
                relay.text()
            );
            let config = dir.join(format!("perch{i}.toml"));
            std::fs::write(&config, text).unwrap();
            Replica {
                config,
                base: format!("http://127.0.0.1:{port}"),
            }
        })
        .collect()
}

/// The journal (read through `read`) once every event in it is delivered. The schedule
/// keeps ticking, so: settle, read, and settle again, which ends only when everything
/// journaled before it was delivered (an event moves from pending to queued to sent in
/// single transactions).
async fn settled_events(settle: &str, read: &str) -> Vec<Value> {
    wait_settled(settle).await;
    let events = all_events(read).await;
    wait_settled(settle).await;
    events
}

/// The journal and the sink at one moment, for `check_delivered_once`. The schedule
/// keeps ticking, so a tick journaled after the journal was read can be delivered before
/// the sink is looked at: settle, read, settle (all read is delivered), copy the sink, and
/// read the journal again; keep what the first read had or the copy delivered. Every
/// delivery in the copy was journaled before it, so it is in the second read.
async fn settled_snapshot(settle: &str, read: &str, sink: &Arc<Mutex<Sink>>) -> (Vec<Value>, Sink) {
    let id = |e: &Value| e["event"]["id"].as_str().unwrap_or_default().to_string();
    let first: HashSet<String> = settled_events(settle, read).await.iter().map(id).collect();
    let copy = sink.lock().unwrap().clone();
    let delivered: HashSet<String> = copy
        .keys
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    let events = all_events(read)
        .await
        .into_iter()
        .filter(|e| first.contains(&id(e)) || delivered.contains(&id(e)))
        .collect();
    (events, copy)
}

/// Every schedule slot has exactly one tick event in the journal, delivered once (the
/// key check is `check_delivered_once`'s). Returns how many slots fired.
fn each_slot_fired_once(events: &[Value]) -> usize {
    let mut ticks: HashMap<String, usize> = HashMap::new();
    for e in events {
        if e["event"]["connector"] == "scheduler" {
            let slot = e["event"]["payload"]["slot"].as_str().unwrap().to_string();
            *ticks.entry(slot).or_default() += 1;
        }
    }
    for (slot, n) in &ticks {
        assert_eq!(*n, 1, "slot {slot} fired {n} times across replicas");
    }
    ticks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_each_event_once_in_order() {
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let (sink_url, sink) = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 3, &url, &sink_url);
    let mut children: Vec<ChildPerch> = Vec::new();
    for r in &replicas {
        children.push(spawn_perch(PERCH, &r.config));
        wait_healthy(&r.base).await;
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let loader = tokio::spawn(load(bases.clone(), SECRET, 6, stop.clone(), 1));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.cancel();
    let acked: Vec<Acked> = loader.await.unwrap();
    assert!(acked.len() > 50, "load was acknowledged: {}", acked.len());
    // Any replica sees the shared state.
    let (events, sink) = settled_snapshot(&bases[2], &bases[1], &sink).await;
    let (journaled, repeats, _) = check_delivered_once(&events, &acked, &sink, &[], REPEAT_BOUND);
    assert_eq!(repeats, 0, "no replica was killed: nothing arrives twice");
    let slots = each_slot_fired_once(&events);
    assert!(slots >= 2, "the schedule fired ({slots} slots)");
    eprintln!(
        "3 replicas: {} acknowledged, {journaled} journaled, {} delivered keys, {slots} schedule slots",
        acked.len(),
        sink.keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_at_random_moments_lose_and_repeat_nothing() {
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let (sink_url, sink) = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 3, &url, &sink_url);
    let mut children: Vec<Option<ChildPerch>> = Vec::new();
    for r in &replicas {
        children.push(Some(spawn_perch(PERCH, &r.config)));
        wait_healthy(&r.base).await;
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let kills = std::env::var("PERCH_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10usize);
    let mut rng = rand::rng();
    let mut acked_all: Vec<Acked> = Vec::new();
    let mut killed_at = Vec::new();
    for round in 0..kills {
        let stop = tokio_util::sync::CancellationToken::new();
        let loader = tokio::spawn(load(bases.clone(), SECRET, 4, stop.clone(), round + 1));
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
        let victim = rng.random_range(0..replicas.len());
        killed_at.push(std::time::Instant::now());
        children[victim] = None; // SIGKILL
        // The loader carries on against the other replicas for a moment.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        stop.cancel();
        let acked = loader.await.unwrap();
        assert!(!acked.is_empty(), "round {round}: events were acknowledged");
        acked_all.extend(acked);
        children[victim] = Some(spawn_perch(PERCH, &replicas[victim].config));
        wait_healthy(&replicas[victim].base).await;
    }
    // Lanes of killed replicas pass to the others when their leases expire.
    let (events, sink) = settled_snapshot(&bases[0], &bases[1], &sink).await;
    let (journaled, repeats, oldest) =
        check_delivered_once(&events, &acked_all, &sink, &killed_at, REPEAT_BOUND);
    let slots = each_slot_fired_once(&events);
    eprintln!(
        "replica crash test: {kills} kills, {} acknowledged, {journaled} journaled, {} delivered keys, {repeats} repeated deliveries (oldest confirmed {oldest:?} before its kill), {slots} schedule slots",
        acked_all.len(),
        sink.keys.len(),
    );
}

/// A connector's quota holds across replicas: three replicas deliver through a sink
/// connector limited to 10/s (burst 10), and the sink sees 10/s in all, not 30/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_connector_rate_limit() {
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let (sink_url, sink) = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 3, &url, &sink_url);
    for r in &replicas {
        let text = std::fs::read_to_string(&r.config).unwrap();
        let send_url = format!("send_url = \"{sink_url}/send\"");
        assert!(text.contains(&send_url));
        let limited = text.replace(&send_url, &format!("{send_url}\nrate_per_second = 10"));
        std::fs::write(&r.config, limited).unwrap();
    }
    let mut children: Vec<ChildPerch> = Vec::new();
    for r in &replicas {
        children.push(spawn_perch(PERCH, &r.config));
        wait_healthy(&r.base).await;
    }
    // 45 events in 9 chats, posted round-robin to the replicas, so each replica has
    // lanes to deliver (alone, each would send its share at 10/s).
    const EVENTS: usize = 45;
    let client = reqwest::Client::new();
    for n in 0..EVENTS {
        let chat = format!("chat{}", n % 9);
        let body = format!(r#"{{"chat":"{chat}","n":"{chat} {n}"}}"#);
        let sig = perch::testing::sign(SECRET, body.as_bytes());
        let resp = client
            .post(format!("{}/hooks/in", replicas[n % 3].base))
            .header("X-Topic", "rate.test")
            .header("X-Delivery", format!("rate-{n}"))
            .header("X-Signature", format!("sha256={sig}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let relayed = sink
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|d| d.chat.starts_with("chat"))
            .count();
        if relayed >= EVENTS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {relayed} of {EVENTS} delivered in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sink = sink.lock().unwrap();
    let at: Vec<std::time::Instant> = sink.log.iter().map(|d| d.at).collect();
    // GCRA, 10/s with a burst of 10: at most 10 + 10 sends in any second (plus one for
    // the timing of the sink's clock), and the whole lot (ticks included) at least
    // (sends - 10) / 10 s from first to last.
    for (i, t) in at.iter().enumerate() {
        let in_second = at[i..]
            .iter()
            .filter(|u| **u - *t < Duration::from_secs(1))
            .count();
        assert!(in_second <= 21, "{in_second} sends within 1 s of send {i}");
    }
    let span = at[at.len() - 1] - at[0];
    let least = Duration::from_millis(100) * (at.len() as u32 - 10);
    assert!(
        span + Duration::from_millis(150) >= least,
        "{} sends in {span:?}: faster than 10/s",
        at.len()
    );
    eprintln!("3 replicas at 10/s shared: {} sends in {span:?}", at.len());
}

/// `perch` with `args` on `config`: exit code and output (stdout and stderr).
fn perch_on(config: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = perch::testing::perch_command(PERCH, &all);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The move the README describes: a perch on sled, stopped, exported; the database
/// migrated and the dump imported; a perch on PostgreSQL then has every event, and a
/// platform's retry of an old event is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_deployment_moves_to_postgres_with_export_and_import() {
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let (sink_url, sink) = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let on_pg = replicas(dir.path(), 1, &url, &sink_url).remove(0);
    // The same deployment on sled: the config without its [store] table.
    let text = std::fs::read_to_string(&on_pg.config).unwrap();
    let sled_config = dir.path().join("sled.toml");
    std::fs::write(&sled_config, &text[..text.find("[store]").unwrap()]).unwrap();

    let child = spawn_perch(PERCH, &sled_config);
    wait_healthy(&on_pg.base).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let loader = tokio::spawn(load(vec![on_pg.base.clone()], SECRET, 3, stop.clone(), 1));
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.cancel();
    let acked = loader.await.unwrap();
    wait_settled(&on_pg.base).await;
    let before = all_events(&on_pg.base).await;
    drop(child);
    let delivered = sink.lock().unwrap().keys.len();

    let dump = dir.path().join("dump.jsonl");
    let (code, out) = perch_on(&sled_config, &["export", "--out", dump.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("exported {} events", before.len())),
        "{out}"
    );
    let (code, out) = perch_on(&on_pg.config, &["migrate"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied schema migration(s) [1, 2]"), "{out}");
    let (code, out) = perch_on(&on_pg.config, &["migrate"]);
    assert!(code == 0 && out.contains("up to date"), "{out}");
    let (code, out) = perch_on(&on_pg.config, &["import", dump.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = perch_on(&on_pg.config, &["import", dump.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    assert!(out.contains("the target store is not empty"), "{out}");

    let _child = spawn_perch(PERCH, &on_pg.config);
    wait_healthy(&on_pg.base).await;
    let after = all_events(&on_pg.base).await;
    let ids = |events: &[Value]| {
        let mut ids: Vec<String> = events
            .iter()
            .map(|e| e["event"]["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    // The schedule keeps ticking on PostgreSQL: the sled events are all there.
    let moved = ids(&after);
    for id in ids(&before) {
        assert!(moved.binary_search(&id).is_ok(), "event {id} moved");
    }
    // A retry of an acknowledged event is a duplicate on the new store.
    let (first, chat, seq) = &acked[0];
    let body = format!(r#"{{"chat":"{chat}","n":"{chat} {seq}"}}"#);
    let r = reqwest::Client::new()
        .post(format!("{}/hooks/in", on_pg.base))
        .header("X-Topic", "crash.test")
        .header("X-Delivery", format!("{chat}-{seq}"))
        .header(
            "X-Signature",
            format!("sha256={}", perch::testing::sign(SECRET, body.as_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["event_id"].as_str(), Some(first.as_str()), "{v}");
    // Nothing delivered before the move goes out again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sink = sink.lock().unwrap();
    assert!(
        sink.keys.values().all(|n| *n == 1),
        "no delivery repeated after the move"
    );
    assert!(sink.keys.len() >= delivered);
}

/// Two replicas with the web chat, signed-in people (ann, bob) and the echo bot:
/// `[auth] mode = "local"`, so private rooms are their members' only.
fn web_chat_replicas(dir: &Path, url: &str) -> Vec<Replica> {
    let ann = perch::testing::hash_password(ANN_PASSWORD).unwrap();
    let bob = perch::testing::hash_password(BOB_PASSWORD).unwrap();
    (0..2)
        .map(|i| {
            let port = free_port();
            let data = dir.join(format!("web{i}"));
            let text = format!(
                r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"
admin_token = "{ADMIN_TOKEN}"

[auth]
mode = "local"
[auth.users.ann]
password_hash = "{ann}"
role = "admin"
[auth.users.bob]
password_hash = "{bob}"

[connectors.web]
kind = "local"

[bots.echo]
kind = "echo"

[[routes]]
connector = "web"
mention = "echo"
bots = ["echo"]

[store]
kind = "postgres"
url = "{url}"
pool_size = 4
"#,
                data = data.display(),
            );
            let config = dir.join(format!("web{i}.toml"));
            std::fs::write(&config, text).unwrap();
            Replica {
                config,
                base: format!("http://127.0.0.1:{port}"),
            }
        })
        .collect()
}

const ANN_PASSWORD: &str = "ann-password-1";
const BOB_PASSWORD: &str = "bob-password-2";
const ADMIN_TOKEN: &str = "replica-admin-token";

/// A signed-in browser on one replica: its cookie and CSRF token.
struct Browser {
    base: String,
    cookie: String,
    csrf: String,
}

impl Browser {
    async fn sign_in(base: &str, name: &str, password: &str) -> Browser {
        let resp = reqwest::Client::new()
            .post(format!("{base}/auth/login"))
            .json(&serde_json::json!({ "name": name, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "sign-in of {name}");
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap()
            .to_string();
        let body: Value = resp.json().await.unwrap();
        Browser {
            base: base.to_string(),
            cookie,
            csrf: body["csrf"].as_str().unwrap().to_string(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    /// The web chat's live stream, as the page opens it.
    async fn live(&self) -> Sse {
        Sse::open(
            reqwest::Client::new()
                .get(format!("{}/chat/api/stream", self.base))
                .header("cookie", &self.cookie),
        )
        .await
    }
}

/// Live updates reach browsers on any replica: a message posted on A (and the bot's
/// answer, whichever replica delivers it) shows on a page connected to B, and so does
/// the journal entry on B's console stream; a private room's message reaches its member
/// on B but not a non-member there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_reach_browsers_on_another_replica() {
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas = web_chat_replicas(dir.path(), &url);
    let mut children: Vec<ChildPerch> = Vec::new();
    for r in &replicas {
        children.push(spawn_perch(PERCH, &r.config));
        wait_healthy(&r.base).await;
    }
    let (a, b) = (&replicas[0].base, &replicas[1].base);
    let ann_on_a = Browser::sign_in(a, "ann", ANN_PASSWORD).await;
    let ann_on_b = Browser::sign_in(b, "ann", ANN_PASSWORD).await;
    let bob_on_b = Browser::sign_in(b, "bob", BOB_PASSWORD).await;
    let mut ann_live = ann_on_b.live().await;
    let mut bob_live = bob_on_b.live().await;
    let mut console_on_b = Sse::open(
        reqwest::Client::new()
            .get(format!("{b}/api/events/stream"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;

    // A private group of ann's, and a message in it, both on A.
    let board = ann_on_a
        .post(
            "/chat/api/rooms",
            serde_json::json!({ "name": "Board", "private": true }),
        )
        .await;
    let board = board["id"].as_str().unwrap().to_string();
    ann_on_a
        .post(
            &format!("/chat/api/rooms/{board}/messages"),
            serde_json::json!({ "text": "board-secret-figure", "client_id": "ann-board-1" }),
        )
        .await;
    // Then a public one for the bot, on A.
    let sent = std::time::Instant::now();
    let posted = ann_on_a
        .post(
            "/chat/api/rooms/general/messages",
            serde_json::json!({ "text": "@echo hello-from-a", "client_id": "ann-general-1" }),
        )
        .await;
    assert!(posted["id"].is_string(), "{posted}");

    let seen = bob_live.until("hello-from-a").await;
    eprintln!(
        "message posted on A reached a page on B after {:?}",
        sent.elapsed()
    );
    bob_live.until("\"author\":\"echo\"").await;
    // Notices keep their order: everything posted before hello-from-a has been heard.
    assert!(
        !seen.contains("board-secret-figure") && !seen.contains("Board"),
        "bob, no member, heard of ann's private room on B: {seen}"
    );
    assert!(
        !bob_live.seen().contains("board-secret-figure"),
        "bob heard the private message: {}",
        bob_live.seen()
    );
    // ann, a member, hears all of it on B.
    ann_live.until("board-secret-figure").await;
    ann_live.until("hello-from-a").await;
    // B's console shows the event ingested on A (and then its fate).
    let console = console_on_b.until("hello-from-a").await;
    assert!(console.contains("event: entry"), "{console}");
    console_on_b.until("\"state\":\"routed\"").await;
}

/// Send `signal` (`STOP`, `CONT`) to a perch process.
fn signal(child: &ChildPerch, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal}");
}

/// A replica frozen (SIGSTOP) under load for longer than its lane leases, then thawed
/// (SIGCONT): its lanes pass to the other replica meanwhile, and when it wakes it must
/// not break a chat's order nor deliver again what the other one delivered, beyond the
/// one delivery that was on the wire when it froze (the idempotency key's case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_thawed_after_its_leases_expired_breaks_nothing() {
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let (sink_url, sink) = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = replicas(dir.path(), 2, &url, &sink_url);
    let mut children: Vec<ChildPerch> = Vec::new();
    for r in &replicas {
        children.push(spawn_perch(PERCH, &r.config));
        wait_healthy(&r.base).await;
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let mut acked_all: Vec<Acked> = Vec::new();
    let mut frozen_at = Vec::new();
    let rounds = std::env::var("PERCH_FREEZES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    let mut rng = rand::rng();
    for round in 0..rounds {
        let stop = tokio_util::sync::CancellationToken::new();
        let loader = tokio::spawn(load(bases.clone(), SECRET, 4, stop.clone(), round + 1));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        frozen_at.push(std::time::Instant::now());
        signal(&children[0], "STOP");
        // Past the lease (`perch::testing::internals::LEASE_TTL`), while B carries on; the loader's
        // requests to A wait until A thaws.
        tokio::time::sleep(perch::testing::internals::LEASE_TTL + Duration::from_secs(3)).await;
        signal(&children[0], "CONT");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        acked_all.extend(loader.await.unwrap());
    }
    let (events, sink) = settled_snapshot(&bases[1], &bases[0], &sink).await;
    let (journaled, repeats, oldest) =
        check_delivered_once(&events, &acked_all, &sink, &frozen_at, REPEAT_BOUND);
    eprintln!(
        "frozen replica: {rounds} freezes, {} acknowledged, {journaled} journaled, {} delivered keys, {repeats} repeated deliveries (oldest confirmed {oldest:?} before its freeze)",
        acked_all.len(),
        sink.keys.len(),
    );
}
