//! The pipeline benchmark: a load generator, a fake chat endpoint and a no-op ceiling
//! server, in one compiled program (`cargo bench --bench loadgen`, driven by
//! `bench/run.sh`).
//!
//! It measures the whole perch pipeline as a user would run it: a release `perch serve`
//! child process with a signed `webhook` connector in → `notify` bot → a `webhook`
//! connector out whose `send_url` is the fake chat endpoint (the **sink**) served by this
//! program on loopback. Phases, in order:
//!
//! 1. **Fixed rate**: open-loop pacing at R events/s for S seconds; p99 ack latency,
//!    measured first, on a perch with no backlog.
//! 2. **Throughput**: N signed events at concurrency C, as fast as perch acks them (each
//!    ack is a durable write: the journal's group commit has flushed it). Ack latency per
//!    request; event→delivered latency at the sink (arrival minus the send time carried
//!    in the payload and echoed back by the notify template).
//! 3. **Ceiling**: the same N×C load, same bodies and client-side HMAC, against a no-op
//!    axum handler in a child process (this program with `--serve-noop`), so perch's
//!    share of what loopback HTTP on this machine can do at all is visible.
//!
//! **Stores and replicas.** `--store sled` (the default) runs one perch on the embedded
//! store. `--store postgres --replicas R` creates a fresh database on the server at
//! `--database-url` (dropped after the run), starts R perch processes on it, and spreads
//! the load over them (each keep-alive connection goes to the next replica in turn, as a
//! balancer would); perch CPU is the sum over the replicas, and the PostgreSQL server's
//! CPU is shown apart. Every run ends with a `summary` line that `bench/run.sh` collects
//! into one table.
//!
//! It is a bench target with `harness = false` (not an example) because that is where
//! Cargo looks for benchmarks, it builds with the release profile under `cargo bench`,
//! and it may use the perch library itself (the HMAC `sign` helper) and its dependencies.
//! Nothing here is a test: it asserts nothing and prints figures.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use clap::Parser;
use perch::testing::sign;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "bench-secret";
const TOPIC: &str = "bench.event";
/// A request not answered by then counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", about = "perch pipeline benchmark")]
struct Args {
    /// Events in the throughput phase (and the ceiling phase).
    #[arg(long, env = "BENCH_N", default_value_t = 50_000)]
    n: u64,
    /// Requests in flight at once (one keep-alive connection each).
    #[arg(long, env = "BENCH_C", default_value_t = 64)]
    c: u64,
    /// Events per second in the fixed-rate phase (0 skips it).
    #[arg(long, env = "BENCH_RATE", default_value_t = 1_000)]
    rate: u64,
    /// Seconds of the fixed-rate phase.
    #[arg(long, env = "BENCH_RATE_SECS", default_value_t = 10)]
    rate_secs: u64,
    /// Spread events over this many chats (1: every message goes to chat `bench`, the
    /// plain notify setup; more: chat `bench-<i>` taken from the payload, so perch's
    /// per-chat lanes can run in parallel).
    #[arg(long, env = "BENCH_CHATS", default_value_t = 1)]
    chats: u64,
    /// Padding added to each event body, in bytes (the body is ~60 bytes without it).
    #[arg(long, env = "BENCH_PAD", default_value_t = 200)]
    pad: usize,
    /// Give up waiting for deliveries after this many seconds without a new one.
    #[arg(long, env = "BENCH_STALL_SECS", default_value_t = 20)]
    stall_secs: u64,
    /// Give up waiting for a phase's deliveries after this many seconds in all (keeps a
    /// run short when delivery is slow; the table then says how many arrived).
    #[arg(long, env = "BENCH_DELIVERY_SECS", default_value_t = 60)]
    delivery_secs: u64,
    /// The perch binary to run.
    #[arg(long, env = "BENCH_PERCH", default_value = "target/release/perch")]
    perch: PathBuf,
    /// Where to put perch's config, data and log (a fresh temp dir under it is used).
    /// Must be a real disk, not tmpfs, or "durable" means nothing.
    #[arg(long, env = "BENCH_WORKDIR", default_value = "target/bench-runs")]
    workdir: PathBuf,
    /// The store of the perch under test.
    #[arg(long, env = "BENCH_STORE", value_enum, default_value_t = StoreKind::Sled)]
    store: StoreKind,
    /// perch processes sharing the store (`--store postgres` only), the load spread over
    /// them.
    #[arg(long, env = "BENCH_REPLICAS", default_value_t = 1)]
    replicas: u64,
    /// The PostgreSQL server for `--store postgres`
    /// (`postgres://user:password@host:port/db`): a fresh database is created on it for
    /// the run and dropped after.
    #[arg(long, env = "BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Skip the ceiling phase.
    #[arg(long)]
    skip_ceiling: bool,
    /// Diagnosis: route the events to no bot, so only ingest (journal, group commit,
    /// router) is measured and nothing is delivered.
    #[arg(long)]
    ingest_only: bool,
    /// Keep perch's data dir and log after the run.
    #[arg(long)]
    keep: bool,
    /// Internal: run the no-op ceiling server and print its port.
    #[arg(long, hide = true)]
    serve_noop: bool,
    /// `cargo bench` passes `--bench` to harness-less benches; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Sled,
    Postgres,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Sled => "sled",
            StoreKind::Postgres => "postgres",
        })
    }
}

fn main() {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            if args.serve_noop {
                rt.block_on(serve_noop())
            } else {
                rt.block_on(run(args))
            }
        });
    // One line, not a backtrace: these are setup errors the user can act on.
    if let Err(e) = result {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}

// ---- clocks and statistics -----------------------------------------------------------

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Latencies in microseconds, summarised.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn pct(&mut self, p: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let i = ((p / 100.0) * (self.0.len() as f64 - 1.0)).round() as usize;
        Some(Duration::from_micros(self.0[i.min(self.0.len() - 1)]))
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "n/a".into(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
    )
}

// ---- the fake chat endpoint (sink) ------------------------------------------------------

/// What arrived at the sink. A plain mutex: held only for a map insert, never across an
/// await.
#[derive(Default)]
struct Sink {
    posts: u64,
    /// Idempotency key → first arrival (Unix µs).
    keys: HashMap<String, u64>,
    /// For each repeated key: time since that key's first arrival, µs.
    repeat_gaps: Vec<u64>,
    /// Event number → (arrival, send time), first arrival only, both Unix µs.
    first: HashMap<u64, (u64, u64)>,
    unparsable: u64,
}

type SharedSink = Arc<Mutex<Sink>>;

/// `POST /send`: the webhook connector's outbound JSON `{"key","op","to","body",…}`.
/// The message text is the notify template's `"{{payload.n}} {{payload.t}}"`.
async fn sink_send(
    State(sink): State<SharedSink>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    let arrived = unix_micros();
    let parsed: Option<(String, u64, u64)> = (|| {
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let key = headers
            .get("idempotency-key")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| v.get("key")?.as_str().map(str::to_string))?;
        let text = v.pointer("/body/text")?.as_str()?;
        let mut words = text.split_whitespace();
        let n = words.next()?.parse().ok()?;
        let t = words.next()?.parse().ok()?;
        Some((key, n, t))
    })();
    let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
    s.posts += 1;
    match parsed {
        Some((key, n, t)) => {
            match s.keys.get(&key) {
                Some(first) => {
                    let gap = arrived.saturating_sub(*first);
                    s.repeat_gaps.push(gap);
                }
                None => {
                    s.keys.insert(key, arrived);
                }
            }
            s.first.entry(n).or_insert((arrived, t));
            axum::Json(serde_json::json!({ "id": format!("m-{n}") }))
        }
        None => {
            s.unparsable += 1;
            axum::Json(serde_json::json!({ "id": "m-?" }))
        }
    }
}

async fn start_sink() -> anyhow::Result<(SharedSink, u16)> {
    let sink = SharedSink::default();
    let app = Router::new()
        .route("/send", post(sink_send))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((sink, port))
}

/// Distinct events in `from..to` delivered so far, and the last arrival among them.
fn delivered_in(sink: &SharedSink, from: u64, to: u64) -> (u64, u64) {
    let s = sink.lock().unwrap_or_else(|p| p.into_inner());
    let mut count = 0;
    let mut last = 0;
    for (n, (arrived, _)) in &s.first {
        if (from..to).contains(n) {
            count += 1;
            last = last.max(*arrived);
        }
    }
    (count, last)
}

/// Event→delivered latencies of events in `from..to`.
fn delivery_latencies(sink: &SharedSink, from: u64, to: u64) -> Latencies {
    let s = sink.lock().unwrap_or_else(|p| p.into_inner());
    Latencies(
        s.first
            .iter()
            .filter(|(n, _)| (from..to).contains(*n))
            .map(|(_, (arrived, sent))| arrived.saturating_sub(*sent))
            .collect(),
    )
}

// ---- the no-op ceiling server -------------------------------------------------------------

/// Child-process mode: a no-op handler (read the body, answer 200 `{}`) on the same path
/// shape as perch's hooks, so the ceiling phase differs from perch only in the work done.
async fn serve_noop() -> anyhow::Result<()> {
    async fn noop(body: Bytes) -> axum::Json<serde_json::Value> {
        std::hint::black_box(body.len());
        axum::Json(serde_json::json!({}))
    }
    let app = Router::new().route("/hooks/{connector}", post(noop));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}

// ---- the load -----------------------------------------------------------------------------

/// How the events are made: body, signature, headers. The same for perch and the ceiling.
///
/// Sent over `Conn`s, hyper's bare HTTP/1.1 client connections (one per closed-loop
/// worker), not through a pooled client: the generator shares the machine's two cores
/// with the server it measures. With reqwest's pooled client the generator took 59 µs of
/// CPU per request in the ceiling phase, with these 14 µs (bench/README.md, session 6).
#[derive(Clone)]
struct Load {
    /// Where to send: one address per replica, with its `Host` header value. Each new
    /// connection goes to the next one in turn.
    targets: Arc<[(std::net::SocketAddr, String)]>,
    next_target: Arc<AtomicU64>,
    path: String,
    run_id: String,
    chats: u64,
    pad: Arc<str>,
}

/// One keep-alive connection to one of the load's targets (its index in `targets`).
struct Conn(
    hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    usize,
);

impl Load {
    fn new(bases: &[String], path: &str, chats: u64, pad: usize) -> anyhow::Result<Self> {
        let mut targets = Vec::new();
        for base in bases {
            let host = base
                .strip_prefix("http://")
                .ok_or_else(|| anyhow::anyhow!("{base}: not an http:// address"))?;
            targets.push((host.parse()?, host.to_string()));
        }
        anyhow::ensure!(!targets.is_empty(), "no target to load");
        Ok(Load {
            targets: targets.into(),
            next_target: Arc::default(),
            path: path.to_string(),
            run_id: format!("r{}", unix_micros()),
            chats,
            pad: "x".repeat(pad).into(),
        })
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let target =
            (self.next_target.fetch_add(1, Ordering::Relaxed) % self.targets.len() as u64) as usize;
        let stream = tokio::net::TcpStream::connect(self.targets[target].0).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Conn(sender, target))
    }

    /// Build and send event `n` on `conn` (connecting first if it is `None`, and leaving
    /// it `None` after an error, so the next send reconnects); Ok(true) on a 2xx.
    async fn send(&self, conn: &mut Option<Conn>, n: u64) -> anyhow::Result<bool> {
        use http_body_util::BodyExt;
        let t = unix_micros();
        let chat = n % self.chats;
        let body = format!(r#"{{"n":{n},"t":{t},"c":"{chat}","pad":"{}"}}"#, self.pad);
        let sig = sign(SECRET, body.as_bytes());
        let exchange = async {
            let mut open = match conn.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            let request = hyper::Request::post(self.path.as_str())
                .header(hyper::header::HOST, self.targets[open.1].1.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header("X-Perch-Topic", TOPIC)
                .header("X-Perch-Delivery", format!("{}-{n}", self.run_id))
                .header("X-Perch-Signature", format!("sha256={sig}"))
                .body(http_body_util::Full::new(Bytes::from(body)))?;
            open.0.ready().await?;
            let response = open.0.send_request(request).await?;
            let ok = response.status().is_success();
            // Read the whole answer so the connection can take the next request.
            response.into_body().collect().await?;
            *conn = Some(open);
            Ok(ok)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

#[derive(Default)]
struct PhaseResult {
    wall: Duration,
    ok: u64,
    failed: u64,
    acks: Latencies,
    /// Only for paced phases: latency counted from the scheduled send time.
    acks_from_schedule: Latencies,
    first_error: Option<String>,
}

impl PhaseResult {
    fn record(&mut self, r: anyhow::Result<bool>) {
        match r {
            Ok(true) => self.ok += 1,
            Ok(false) => {
                self.failed += 1;
                self.first_error
                    .get_or_insert_with(|| "non-2xx answer".into());
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64()
    }
}

/// Closed loop: `c` workers send events `from..to` back to back.
async fn closed_loop(load: &Load, from: u64, to: u64, c: u64) -> PhaseResult {
    let next = Arc::new(AtomicU64::new(from));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..c {
        let load = load.clone();
        let next = next.clone();
        workers.spawn(async move {
            let mut r = PhaseResult::default();
            let mut conn = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    break;
                }
                let t0 = Instant::now();
                let res = load.send(&mut conn, n).await;
                r.acks.0.push(t0.elapsed().as_micros() as u64);
                r.record(res);
            }
            r
        });
    }
    let mut total = PhaseResult::default();
    while let Some(r) = workers.join_next().await {
        let Ok(r) = r else { continue };
        total.ok += r.ok;
        total.failed += r.failed;
        total.acks.0.extend(r.acks.0);
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total.wall = started.elapsed();
    total
}

/// Open loop: event `i` is sent at `start + i/rate` whether or not earlier ones have
/// been answered (a slow answer does not slow the sender down, as with real traffic).
async fn open_loop(load: &Load, from: u64, count: u64, rate: u64) -> PhaseResult {
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // Idle connections: a request takes one or opens one, and gives it back.
    let idle: Arc<Mutex<Vec<Conn>>> = Arc::default();
    for i in 0..count {
        let at = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at).await;
        let (load, idle) = (load.clone(), idle.clone());
        tasks.spawn(async move {
            let t0 = Instant::now();
            let mut conn = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let res = load.send(&mut conn, from + i).await;
            if let Some(conn) = conn {
                idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            }
            let now = tokio::time::Instant::now();
            (
                res,
                t0.elapsed().as_micros() as u64,
                now.duration_since(at).as_micros() as u64,
            )
        });
    }
    let mut r = PhaseResult::default();
    while let Some(done) = tasks.join_next().await {
        let Ok((res, lat, from_schedule)) = done else {
            continue;
        };
        r.acks.0.push(lat);
        r.acks_from_schedule.0.push(from_schedule);
        r.record(res);
    }
    r.wall = started.elapsed();
    r
}

/// Wait until every event in `from..to` reached the sink, or none arrived for
/// `stall`, or `cap` has passed (then give up and report what arrived).
async fn await_delivery(
    sink: &SharedSink,
    from: u64,
    to: u64,
    stall: Duration,
    cap: Duration,
) -> (u64, u64) {
    let mut last_count = 0;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let (count, last) = delivered_in(sink, from, to);
        if count >= to - from || started.elapsed() > cap {
            return (count, last);
        }
        if count > last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall {
            return (count, last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- perch as a child process ------------------------------------------------------------------

struct PerchProcess {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl PerchProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop with SIGTERM (perch drains and flushes), then SIGKILL if it lingers.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn perch_config(
    port: u16,
    sink_port: u16,
    data_dir: &Path,
    chats: u64,
    ingest_only: bool,
) -> String {
    // One chat: every message to `bench`, events without a chat (the plain setup).
    // Several: the event's chat comes from the payload, and so does the target chat.
    let (chat_pointer, chat) = if chats > 1 {
        ("chat_pointer = \"/c\"\n", "bench-{{payload.c}}")
    } else {
        ("", "bench")
    };
    // No route matches `ingest_only` events: they are journaled and routed to nobody.
    let route_topic = if ingest_only { "bench.nothing" } else { TOPIC };
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
data_dir = {data_dir:?}

[connectors.in]
kind = "webhook"
secret = "{SECRET}"
topic_header = "X-Perch-Topic"
id_header = "X-Perch-Delivery"
{chat_pointer}
[connectors.sink]
kind = "webhook"
insecure = true
send_url = "http://127.0.0.1:{sink_port}/send"

[bots.notify]
kind = "notify"
connector = "sink"
chat = "{chat}"
text = "{{{{payload.n}}}} {{{{payload.t}}}}"

[[routes]]
connector = "in"
topic = "{route_topic}"
bots = ["notify"]
"#,
        data_dir = data_dir.display().to_string(),
    )
}

/// Start one perch; `store` is its `[store]` table (empty: the default, sled).
async fn start_perch(args: &Args, sink_port: u16, store: &str) -> anyhow::Result<PerchProcess> {
    std::fs::create_dir_all(&args.workdir)?;
    let workdir = std::fs::canonicalize(&args.workdir)?;
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&workdir)?
        .keep();
    let port = free_port()?;
    let config = dir.join("config.toml");
    let text = perch_config(
        port,
        sink_port,
        &dir.join("data"),
        args.chats,
        args.ingest_only,
    );
    std::fs::write(&config, format!("{text}\n{store}"))?;
    let log = std::fs::File::create(dir.join("perch.log"))?;
    let child = Command::new(&args.perch)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            anyhow::anyhow!(
                "cannot run {}: {e} (build it with `cargo build --release`)",
                args.perch.display()
            )
        })?;
    let mut p = PerchProcess {
        child,
        dir,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(Some(status)) = p.child.try_wait() {
            anyhow::bail!(
                "perch exited at start ({status}); see {}",
                p.dir.join("perch.log").display()
            );
        }
        if client
            .get(format!("{}/healthz", p.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.stop();
    anyhow::bail!(
        "perch did not answer /healthz within 10 s; see {}",
        p.dir.join("perch.log").display()
    )
}

/// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) a process has used so far, from /proc/<pid>/stat. Ticks are
/// taken as 1/100 s (USER_HZ, which is 100 on every Linux perch runs on).
fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `) `.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Bytes a process has caused to be written to storage so far (`write_bytes` of
/// /proc/<pid>/io), and the number of write-type syscalls (`syscw`).
fn disk_writes(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some((field("write_bytes")?, field("syscw")?))
}

/// Disk writes per event, as "X MiB (Y KiB/event)".
fn writes_row(before: Option<(u64, u64)>, after: Option<(u64, u64)>, events: u64) -> String {
    match (before, after) {
        (Some((b0, _)), Some((b1, _))) => {
            let bytes = b1.saturating_sub(b0) as f64;
            format!(
                "{:.1} MiB ({:.1} KiB/event)",
                bytes / (1024.0 * 1024.0),
                bytes / 1024.0 / events.max(1) as f64
            )
        }
        _ => "n/a".into(),
    }
}

/// CPU time this program (the load generator and the sink) has used so far.
fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

/// CPU per event, as "X.XX s (Y µs/event)".
fn cpu_row(took: Option<Duration>, events: u64) -> String {
    took.map_or_else(
        || "n/a".into(),
        |d| {
            format!(
                "{:.2} s ({:.0} µs/event)",
                d.as_secs_f64(),
                d.as_secs_f64() * 1e6 / events.max(1) as f64
            )
        },
    )
}

fn delta(after: Option<Duration>, before: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

/// The 1-minute load average: other work on the machine competes with the benchmark.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The machine's CPU time so far, as (stolen by the hypervisor, all), in clock ticks:
/// the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    Some((*ticks.get(7)?, ticks.iter().sum()))
}

/// The share of the machine's CPU time the hypervisor gave to other guests between
/// two `machine_ticks` readings: on a shared VM it is what makes runs an hour apart
/// differ, so the table shows it.
fn steal_row(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> String {
    match (before, after) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            format!(
                "{:.1} %",
                100.0 * s1.saturating_sub(s0) as f64 / (t1 - t0) as f64
            )
        }
        _ => "n/a".into(),
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// The journal flush summary from perch's /metrics: (flushes, mean batch, mean flush time).
async fn flush_stats(client: &reqwest::Client, base: &str) -> Option<(f64, f64, f64)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let count = value("perch_journal_flush_batch_count")?;
    let batch_sum = value("perch_journal_flush_batch_sum")?;
    let secs_sum = value("perch_journal_flush_seconds_sum")?;
    (count > 0.0).then(|| (count, batch_sum / count, secs_sum / count))
}

// ---- the run ----------------------------------------------------------------------------------------

/// One line of the results table.
struct Row {
    what: String,
    value: String,
    target: &'static str,
    verdict: &'static str,
}

fn row(what: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target: "",
        verdict: "",
    }
}

fn judged(
    what: impl Into<String>,
    value: impl Into<String>,
    target: &'static str,
    met: Option<bool>,
) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target,
        verdict: match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        },
    }
}

fn print_table(rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max("target".len());
    let line = format!(
        "+-{}-+-{}-+-{}-+--------+",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(w2)
    );
    println!("{line}");
    println!(
        "| {:w0$} | {:>w1$} | {:w2$} | result |",
        "metric", "value", "target"
    );
    println!("{line}");
    for r in rows {
        println!(
            "| {:w0$} | {:>w1$} | {:w2$} | {:6} |",
            r.what, r.value, r.target, r.verdict
        );
    }
    println!("{line}");
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.n > 0 && args.c > 0 && args.chats > 0,
        "--n, --c and --chats must be at least 1"
    );
    anyhow::ensure!(
        args.replicas >= 1 && (args.replicas == 1 || args.store == StoreKind::Postgres),
        "--replicas {} needs --store postgres (sled belongs to one process)",
        args.replicas
    );
    let load_before = load_average();
    let (sink, sink_port) = start_sink().await?;
    let database = match args.store {
        StoreKind::Sled => None,
        StoreKind::Postgres => {
            let url = args.database_url.as_deref().ok_or_else(|| {
                anyhow::anyhow!("--store postgres needs --database-url (or BENCH_DATABASE_URL)")
            })?;
            Some(FreshDatabase::create(url).await?)
        }
    };
    let store = database.as_ref().map_or(String::new(), |db| {
        format!(
            "[store]\nkind = \"postgres\"\nurl = \"{}\"\npool_size = 8\n",
            db.url
        )
    });
    let mut perches = Vec::new();
    let mut started = Ok(());
    for _ in 0..args.replicas {
        match start_perch(&args, sink_port, &store).await {
            Ok(p) => perches.push(p),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => measure(&args, &sink, &perches).await,
        Err(e) => Err(e),
    };
    for perch in &mut perches {
        perch.stop();
        if args.keep {
            say(format_args!("kept {}", perch.dir.display()));
        } else {
            let _ = std::fs::remove_dir_all(&perch.dir);
        }
    }
    if let Some(db) = database {
        db.drop_it().await;
    }
    let (mut rows, perch_rate, summary) = result?;

    if !args.skip_ceiling {
        say(format_args!(
            "ceiling: {} requests at concurrency {} against a no-op axum handler",
            args.n, args.c
        ));
        let (mut ceiling, (server_cpu, own_cpu)) = ceiling(&args).await?;
        rows.push(row(
            "ceiling: no-op axum handler, req/s",
            format!("{:.0}", ceiling.per_second()),
        ));
        rows.push(row(
            "ceiling: p50 / p99 latency",
            format!(
                "{} / {}",
                ms(ceiling.acks.pct(50.0)),
                ms(ceiling.acks.pct(99.0))
            ),
        ));
        rows.push(row(
            "ceiling: no-op server CPU",
            cpu_row(server_cpu, args.n),
        ));
        rows.push(row("ceiling: loadgen CPU", cpu_row(own_cpu, args.n)));
        rows.push(row(
            "perch share of ceiling",
            format!("{:.1} %", 100.0 * perch_rate / ceiling.per_second()),
        ));
    }
    println!();
    println!(
        "perch pipeline benchmark{}, store {} x{}: N={} C={} chats={} body≈{} B, {}",
        if args.ingest_only {
            " (ingest only: no bot, no delivery)"
        } else {
            ""
        },
        args.store,
        args.replicas,
        args.n,
        args.c,
        args.chats,
        60 + args.pad,
        if args.rate > 0 && args.rate_secs > 0 {
            format!("fixed rate {}/s for {} s", args.rate, args.rate_secs)
        } else {
            "no fixed-rate phase".to_string()
        },
    );
    println!(
        "machine: {} cores, 1-min load average {load_before} before / {} after (other work competes for the cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    print_table(&rows);
    // One tab-separated line per run, for `bench/run.sh`'s side-by-side table.
    println!(
        "summary\t{}\t{}\t{perch_rate:.0}\t{}\t{}\t{}\t{}",
        args.store,
        args.replicas,
        summary.ack_p99,
        summary.delivered_p99,
        summary.cpu_per_event,
        summary.db_cpu_per_event
    );
    Ok(())
}

/// The figures of a run that `bench/run.sh` puts side by side.
#[derive(Default)]
struct Summary {
    ack_p99: String,
    delivered_p99: String,
    /// perch CPU (all replicas) per event, from the throughput phase's start until
    /// everything was delivered.
    cpu_per_event: String,
    /// The PostgreSQL server's CPU per event over the same time ("-" on sled).
    db_cpu_per_event: String,
}

/// A database of its own for one run, on the server of `--database-url`.
struct FreshDatabase {
    /// The server's URL, to drop the database from.
    server: String,
    name: String,
    /// The new database's URL, for perch's config.
    url: String,
}

impl FreshDatabase {
    async fn create(server: &str) -> anyhow::Result<Self> {
        use tokio_postgres::config::Host;
        let config: tokio_postgres::Config = server
            .parse()
            .map_err(|e| anyhow::anyhow!("--database-url is not a PostgreSQL URL: {e}"))?;
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to --database-url: {e}"))?;
        tokio::spawn(connection);
        let name = format!("perch_bench_{}", unix_micros());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let password = config
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let user = config.get_user().unwrap_or("postgres");
        Ok(FreshDatabase {
            server: server.to_string(),
            url: format!("postgres://{user}{password}@{host}:{port}/{name}"),
            name,
        })
    }

    /// Drop the database (after every replica stopped); a failure is only reported.
    async fn drop_it(self) {
        let dropped = async {
            let config: tokio_postgres::Config = self.server.parse()?;
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await?;
            Ok::<_, anyhow::Error>(())
        };
        if let Err(e) = dropped.await {
            say(format_args!("could not drop database {}: {e}", self.name));
        }
    }
}

/// CPU time used so far by every process of the PostgreSQL server on this machine
/// (`postgres` processes; other users of the server count too).
fn postgres_cpu_time() -> Option<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "postgres");
        if is_postgres && let Some(t) = cpu_time(pid) {
            total += t;
        }
    }
    Some(total)
}

/// The sum of `each` over the processes `pids` (`None` if any is unreadable).
fn summed<T: std::iter::Sum<T>>(pids: &[u32], each: impl Fn(u32) -> Option<T>) -> Option<T> {
    pids.iter().map(|p| each(*p)).sum()
}

/// Run the fixed-rate phase, then the throughput phase, against the running perch.
///
/// The fixed-rate phase goes first so that its latency is measured on a perch with no
/// backlog; the throughput phase's deliveries may outlast the run (`--delivery-secs`).
async fn measure(
    args: &Args,
    sink: &SharedSink,
    perches: &[PerchProcess],
) -> anyhow::Result<(Vec<Row>, f64, Summary)> {
    let mut summary = Summary::default();
    let pids: Vec<u32> = perches.iter().map(PerchProcess::pid).collect();
    // The first replica's figures where one process is meant (RSS); sums elsewhere.
    let pid = pids[0];
    let cpu_all_perches = || summed(&pids, cpu_time);
    let writes_all_perches = || -> Option<(u64, u64)> {
        let mut total = (0, 0);
        for pid in &pids {
            let (bytes, calls) = disk_writes(*pid)?;
            total = (total.0 + bytes, total.1 + calls);
        }
        Some(total)
    };
    let stall = Duration::from_secs(args.stall_secs);
    let cap = Duration::from_secs(args.delivery_secs);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = proc_kib(pid, "VmRSS");
    say(format_args!("perch pid {pid} up, idle RSS {}", mib(idle)));

    let bases: Vec<String> = perches.iter().map(|p| p.base.clone()).collect();
    let load = Load::new(&bases, "/hooks/in", args.chats, args.pad)?;

    // Fixed rate, open loop: events 0..count.
    let mut fixed_rows = Vec::new();
    let count = if args.rate > 0 {
        args.rate * args.rate_secs
    } else {
        0
    };
    if count > 0 {
        say(format_args!(
            "fixed rate: {} events/s for {} s (open loop)",
            args.rate, args.rate_secs
        ));
        let mut fr = open_loop(&load, 0, count, args.rate).await;
        let p99 = fr.acks.pct(99.0);
        fixed_rows.push(judged(
            format!("ack p99 at {}/s", args.rate),
            ms(p99),
            "< 10 ms",
            p99.map(|d| d < Duration::from_millis(10)),
        ));
        fixed_rows.push(row(
            format!("ack p50 at {}/s / p99 from schedule", args.rate),
            format!(
                "{} / {}",
                ms(fr.acks.pct(50.0)),
                ms(fr.acks_from_schedule.pct(99.0))
            ),
        ));
        fixed_rows.push(row(
            format!("requests ok / failed at {}/s", args.rate),
            format!("{} / {}", fr.ok, fr.failed),
        ));
        if !args.ingest_only {
            say("waiting for deliveries");
            let (got, _) = await_delivery(sink, 0, count, stall, cap).await;
            let mut dl = delivery_latencies(sink, 0, count);
            fixed_rows.push(row(
                format!("event->delivered p50 / p99 at {}/s", args.rate),
                format!(
                    "{} / {} ({got}/{count})",
                    ms(dl.pct(50.0)),
                    ms(dl.pct(99.0))
                ),
            ));
        }
        if let Some(e) = &fr.first_error {
            say(format_args!("first error: {e}"));
        }
    }

    // Throughput, closed loop: events count..count+n.
    let mut rows = Vec::new();
    let (from, to) = (count, count + args.n);
    let backlog = if args.ingest_only {
        0
    } else {
        count - delivered_in(sink, 0, count).0
    };
    say(format_args!(
        "throughput: {} events at concurrency {}",
        args.n, args.c
    ));
    let phase_start = unix_micros();
    let db0 = postgres_cpu_time();
    let (cpu0, own0, io0, ticks0) = (
        cpu_all_perches(),
        own_cpu_time(),
        writes_all_perches(),
        machine_ticks(),
    );
    let mut tp = closed_loop(&load, from, to, args.c).await;
    let (cpu_sent, own_sent, io_sent, ticks_sent) = (
        cpu_all_perches(),
        own_cpu_time(),
        writes_all_perches(),
        machine_ticks(),
    );
    let rate = tp.per_second();
    say(format_args!(
        "sent in {:.2} s ({rate:.0}/s)",
        tp.wall.as_secs_f64()
    ));
    let flush = flush_stats(&reqwest::Client::new(), &perches[0].base).await;
    rows.push(judged(
        "accepted events/s (durable ack)",
        format!("{rate:.0}"),
        ">= 10000",
        Some(rate >= 10_000.0),
    ));
    rows.push(row(
        "send phase wall time",
        format!("{:.2} s", tp.wall.as_secs_f64()),
    ));
    rows.push(row(
        "requests ok / failed",
        format!("{} / {}", tp.ok, tp.failed),
    ));
    summary.ack_p99 = ms(tp.acks.pct(99.0));
    rows.push(row(
        "ack latency p50 / p99",
        format!("{} / {}", ms(tp.acks.pct(50.0)), ms(tp.acks.pct(99.0))),
    ));
    if backlog > 0 {
        rows.push(row(
            "fixed-rate events still undelivered at start",
            backlog.to_string(),
        ));
    }
    if let Some((flushes, batch, secs)) = flush {
        rows.push(row(
            "journal flushes / mean batch / mean flush (run)",
            format!("{flushes:.0} / {batch:.1} / {:.2} ms", secs * 1e3),
        ));
    }
    rows.push(row(
        "perch CPU in send phase",
        cpu_row(delta(cpu_sent, cpu0), args.n),
    ));
    rows.push(row(
        "loadgen+sink CPU in send phase",
        cpu_row(delta(own_sent, own0), args.n),
    ));
    rows.push(row(
        "perch disk writes in send phase",
        writes_row(io0, io_sent, args.n),
    ));
    rows.push(row(
        "CPU stolen by the hypervisor, send phase",
        steal_row(ticks0, ticks_sent),
    ));
    if !args.ingest_only {
        say("waiting for deliveries");
        let (delivered, last) = await_delivery(sink, from, to, stall, cap).await;
        let cpu_all = cpu_all_perches();
        let db_all = postgres_cpu_time();
        let mut dl = delivery_latencies(sink, from, to);
        summary.delivered_p99 = ms(dl.pct(99.0));
        let per_event = |d: Option<Duration>| {
            d.map_or("n/a".into(), |d| {
                format!("{:.0} µs", d.as_secs_f64() * 1e6 / args.n.max(1) as f64)
            })
        };
        summary.cpu_per_event = per_event(delta(cpu_all, cpu0));
        summary.db_cpu_per_event = match args.store {
            StoreKind::Sled => "-".into(),
            StoreKind::Postgres => per_event(delta(db_all, db0)),
        };
        rows.push(row(
            "event->delivered p50 / p99",
            format!("{} / {}", ms(dl.pct(50.0)), ms(dl.pct(99.0))),
        ));
        let all_in = if delivered == args.n {
            format!("{:.2} s", last.saturating_sub(phase_start) as f64 / 1e6)
        } else {
            let waited = unix_micros().saturating_sub(phase_start) as f64 / 1e6;
            format!("not all (gave up after {waited:.0} s)")
        };
        rows.push(row("time until all N delivered", all_in));
        rows.push(row(
            "delivered (distinct events)",
            format!("{delivered} / {}", args.n),
        ));
        rows.push(row(
            "perch CPU until then (all replicas)",
            cpu_row(delta(cpu_all, cpu0), args.n),
        ));
        if args.store == StoreKind::Postgres {
            rows.push(row(
                "PostgreSQL server CPU until then (all its users)",
                cpu_row(delta(db_all, db0), args.n),
            ));
        }
    }
    if let Some(e) = &tp.first_error {
        say(format_args!("first error: {e}"));
    }
    rows.extend(fixed_rows);

    rows.push(judged(
        "idle RSS (before load)",
        mib(idle),
        "< 30 MiB",
        idle.map(|k| k < 30 * 1024),
    ));
    rows.push(row(
        "peak RSS (VmHWM, whole run)",
        mib(proc_kib(pid, "VmHWM")),
    ));
    {
        // A duplicate is a second POST with an idempotency key the sink has already seen.
        let s = sink.lock().unwrap_or_else(|p| p.into_inner());
        let dup = s.posts.saturating_sub(s.keys.len() as u64 + s.unparsable);
        rows.push(row(
            "sink POSTs / distinct keys / duplicates (run)",
            format!("{} / {} / {dup}", s.posts, s.keys.len()),
        ));
        if !s.repeat_gaps.is_empty() {
            let mut gaps = Latencies(s.repeat_gaps.clone());
            rows.push(row(
                "duplicates: time after first POST p50 / max",
                format!("{} / {}", ms(gaps.pct(50.0)), ms(gaps.pct(100.0))),
            ));
        }
        if s.unparsable > 0 {
            rows.push(row("sink POSTs not understood", s.unparsable.to_string()));
        }
    }
    Ok((rows, rate, summary))
}

/// The same closed-loop load against a no-op axum handler in a child process.
/// Also returns the CPU time of the no-op server and of this program during the load.
async fn ceiling(
    args: &Args,
) -> anyhow::Result<(PhaseResult, (Option<Duration>, Option<Duration>))> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--serve-noop")
        .stdout(Stdio::piped())
        .spawn()?;
    let port: u16 = {
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout from the no-op server"))?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        line.trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("the no-op server printed {line:?}, not a port"))?
    };
    let load = Load::new(
        &[format!("http://127.0.0.1:{port}")],
        "/hooks/in",
        args.chats,
        args.pad,
    )?;
    let (cpu0, own0) = (cpu_time(child.id()), own_cpu_time());
    let r = closed_loop(&load, 0, args.n, args.c).await;
    let cpu = (
        delta(cpu_time(child.id()), cpu0),
        delta(own_cpu_time(), own0),
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok((r, cpu))
}
