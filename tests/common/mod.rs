//! Test harness shared by the integration tests: start a real perch (the same
//! `Perch::start` and `app()` that `perch serve` uses) on 127.0.0.1 and a free port,
//! with its data in a temporary directory; stop it; start it again on the same data.
#![allow(dead_code)]

pub mod relay;

use perch::clock::{SharedClock, SystemClock};
use perch::runtime::Perch;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct TestPerch {
    pub addr: SocketAddr,
    pub base: String,
    pub data_dir: PathBuf,
    config_text: String,
    clock: SharedClock,
    /// The bot kinds the config is read with (the built-in ones; a test with its own
    /// kinds uses `perch::testing::TestHub`).
    hub: perch::HubBuilder,
    perch: Option<Perch>,
    server: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// `config` with `data_dir` pointed at `dir` (any `data_dir` line is replaced).
fn with_data_dir(config: &str, dir: &Path) -> String {
    let body: String = config
        .lines()
        .filter(|l| !l.trim_start().starts_with("data_dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir_line = format!("data_dir = {:?}\n", dir.display().to_string());
    if body.contains("[server]") {
        body.replacen("[server]\n", &format!("[server]\n{dir_line}"), 1)
    } else {
        format!("[server]\n{dir_line}\n{body}")
    }
}

impl TestPerch {
    /// Start perch with `config` (TOML text) in a fresh temporary data directory.
    pub async fn start(config: &str) -> TestPerch {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        Self::start_in(config, &dir, Arc::new(SystemClock)).await
    }

    /// Start perch with `config` on the data in `dir`, with `clock`.
    pub async fn start_in(config: &str, dir: &Path, clock: SharedClock) -> TestPerch {
        let config_text = with_data_dir(config, dir);
        let mut t = TestPerch {
            addr: "127.0.0.1:0".parse().unwrap(),
            base: String::new(),
            data_dir: dir.to_path_buf(),
            config_text,
            clock,
            hub: perch::Hub::builder(),
            perch: None,
            server: None,
            stop: None,
        };
        t.boot().await;
        t
    }

    async fn boot(&mut self) {
        // After an in-process `stop`, a keep-alive connection task of the old server can
        // hold the old store (through the app state) for a moment after `shutdown`
        // returns, and with it sled's file lock. A new process never meets this; a
        // restart in the same process waits for the lock (at most 5 s).
        let mut tries = 0;
        let perch = loop {
            let config = self
                .hub
                .parse(&self.config_text, Path::new("test.toml"))
                .unwrap_or_else(|e| panic!("test config: {e}"));
            match self.hub.start(config, self.clock.clone()).await {
                Ok(perch) => break perch,
                Err(e) if tries < 250 && format!("{e:?}").contains("could not acquire lock") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("perch starts: {e:?}"),
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.addr = listener.local_addr().unwrap();
        self.base = format!("http://{}", self.addr);
        let app = perch.app();
        let limits = perch.shared.connection_limits;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The same accept loop as `perch serve`, with its timeouts and connection cap.
        self.server = Some(tokio::spawn(async move {
            let _ = perch::server::serve(listener, app, limits, async {
                let _ = rx.await;
            })
            .await;
        }));
        self.stop = Some(tx);
        self.perch = Some(perch);
    }

    pub fn perch(&self) -> &Perch {
        self.perch.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Graceful stop: HTTP first, then drain and flush.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        if let Some(p) = self.perch.take() {
            p.shutdown().await;
        }
    }

    /// Start again after `stop` on the same data directory (on a new port): for tests
    /// that do something while perch is down.
    pub async fn start_again(&mut self) {
        self.boot().await;
    }

    /// Stop and start again on the same data directory (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }
}

/// Poll `check` every 20 ms until it returns `Some`, or panic after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// HMAC-SHA256 hex signature, as the webhook connector expects.
pub fn sign(secret: &str, body: &[u8]) -> String {
    perch::connectors::webhook::sign(secret.as_bytes(), body)
}

impl TestPerch {
    /// GET `path` and return the body as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .expect("GET")
            .text()
            .await
            .expect("body")
    }

    /// Assert that `/metrics` has the line `sample`: `name{labels} value`, or without
    /// the value, any value. Every perch in a test process shares one metrics recorder,
    /// so a test asserts only series whose labels no other test touches (its own
    /// connector or bot name); otherwise the result would depend on test order.
    pub async fn assert_metric(&self, sample: &str) {
        let metrics = self.get_text("/metrics").await;
        let found = metrics.lines().any(|l| {
            l == sample
                || (!sample.contains("} ")
                    && l.starts_with(sample)
                    && l[sample.len()..].starts_with(' '))
        });
        assert!(found, "no line {sample:?} in:\n{metrics}");
    }
}

/// Serve `app` (a fake platform or sink) on 127.0.0.1 and a free port, in the
/// background; its base URL, `http://127.0.0.1:<port>`.
pub async fn serve_fake(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a fake on 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().expect("a bound address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// One call a fake platform recorded, as `calls_inside_waits` sees it.
pub struct Seen {
    pub at: std::time::Instant,
    /// The wait the fake ordered with its answer (a 429's reset or Retry-After).
    pub ordered_wait: Option<Duration>,
    /// Whether the platform's limit covers this call.
    pub limited: bool,
    pub name: String,
}

/// Calls that arrived while an earlier answer said to wait: a client that honours rate
/// limits makes none. Requests already on the wire when the 429 was answered cannot be
/// called back, so a window opens 100 ms after its call. Pairs of (the call that was
/// told to wait, a call inside its window), by name.
pub fn calls_inside_waits(calls: &[Seen]) -> Vec<(String, String)> {
    let mut inside = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        let Some(wait) = c.ordered_wait else {
            continue;
        };
        let (from, until) = (c.at + Duration::from_millis(100), c.at + wait);
        for later in &calls[i + 1..] {
            if later.limited && later.at > from && later.at < until {
                inside.push((c.name.clone(), later.name.clone()));
            }
        }
    }
    inside
}

/// Wait (up to `secs`) until `get` returns at least `n` things (messages at a fake
/// platform, requests at a sink); return them.
pub async fn at_least<T, F>(secs: u64, n: usize, what: &str, get: F) -> Vec<T>
where
    F: Fn() -> Vec<T>,
{
    eventually(secs, &format!("{n} {what}"), || {
        let got = get();
        async move { (got.len() >= n).then_some(got) }
    })
    .await
}

/// Headers a request may carry once (RFC 9110 §5.3: a repeated singleton is malformed).
pub const SINGLETON_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "authorization",
    "host",
    "idempotency-key",
];

/// Why a strict server (a production API gateway) would refuse a request before any
/// handler runs, or `None`: a repeated singleton header, or a body without a JSON
/// Content-Type. Every fake platform in `tests/` applies it, so a malformed request
/// fails a test instead of passing a lenient fake.
pub fn malformed(headers: &axum::http::HeaderMap, body_len: usize) -> Option<String> {
    for name in SINGLETON_HEADERS {
        let n = headers.get_all(name).iter().count();
        if n > 1 {
            return Some(format!("header {name} appears {n} times"));
        }
    }
    if body_len > 0 {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Some(format!(
                "a body with content-type {ct:?}, not application/json"
            ));
        }
    }
    None
}

/// The gateway in front of every fake platform: the request, whole, if a strict server
/// would take it; else why not ("POST /path: header content-type appears 2 times") and
/// the gateway's answer (400, an HTML page, not the platform's JSON envelope).
pub async fn gateway_admits(
    req: axum::extract::Request,
) -> Result<axum::extract::Request, (String, axum::response::Response)> {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        let why = format!("{} {}: body too large", parts.method, parts.uri.path());
        return Err((
            why,
            (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response(),
        ));
    };
    if let Some(why) = malformed(&parts.headers, bytes.len()) {
        let why = format!("{} {}: {why}", parts.method, parts.uri.path());
        let refusal = (
            axum::http::StatusCode::BAD_REQUEST,
            "<html><body>400 Bad Request</body></html>",
        )
            .into_response();
        return Err((why, refusal));
    }
    Ok(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
}

/// The JSON bodies a wiremock server received, in arrival order. Panics on a request a
/// strict server would have refused (`malformed`).
pub async fn received_json(server: &wiremock::MockServer) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            if let Some(why) = malformed(&r.headers, r.body.len()) {
                panic!("{} {}: malformed request: {why}", r.method, r.url);
            }
            serde_json::from_slice(&r.body).expect("a JSON body")
        })
        .collect()
}

/// Wait (up to 10 s) until `server` has received at least `n` JSON bodies; return them.
pub async fn wait_received(server: &wiremock::MockServer, n: usize) -> Vec<serde_json::Value> {
    eventually(
        10,
        &format!("{n} requests at the fake endpoint"),
        || async {
            let got = received_json(server).await;
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

/// A tick as the scheduler makes it: `kind = tick`, topic and `payload.job` = the job,
/// `payload.slot` (RFC 3339), and one external id per slot.
pub fn tick(job: &str, slot: &str) -> perch::event::Event {
    let mut e = perch::event::Event::new(
        "scheduler",
        perch::event::EventKind::Tick,
        chrono::Utc::now(),
    );
    e.topic = Some(job.to_string());
    e.payload = serde_json::json!({ "job": job, "slot": slot });
    e.external_id = Some(format!("{job}@{slot}"));
    e
}

/// Run the `perch` command with `args` and wait for it (no admin token from the
/// environment leaks in).
pub fn perch_command(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_perch"))
        .args(args)
        .env_remove("PERCH_ADMIN_TOKEN")
        .output()
        .expect("the perch binary runs")
}

/// An SSE connection (the web chat's live stream, the console's live events), read
/// chunk by chunk.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// Send `request`, expect 200, and read until the stream's first `hello`.
    pub async fn open(request: reqwest::RequestBuilder) -> Sse {
        let resp = request.send().await.expect("stream");
        assert_eq!(resp.status(), 200, "the stream opens");
        let mut s = Sse {
            resp,
            buf: String::new(),
        };
        s.until("event: hello").await;
        s
    }

    /// Read until the stream has shown `needle`; returns everything read so far.
    pub async fn until(&mut self, needle: &str) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.buf.contains(needle) {
                match self.resp.chunk().await.expect("stream chunk") {
                    Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                    None => panic!("stream ended before {needle:?}; got {}", self.buf),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} on the stream; got {}", self.buf));
        self.buf.clone()
    }

    /// Everything read so far.
    pub fn seen(&self) -> &str {
        &self.buf
    }
}

/// A fake endpoint that answers `first` to the first `times` requests of `method`, then
/// `then`: a platform that fails for a while.
pub async fn fails_then(
    method: &str,
    first: wiremock::ResponseTemplate,
    times: u64,
    then: wiremock::ResponseTemplate,
) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method(method))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::method(method))
        .respond_with(then)
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

// ---------------------------------------------------------------------------------
// The `perch` binary as a process, for tests that kill it (crash, disk full).

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A perch process that is SIGKILLed when dropped, so a failing assertion does not leave
/// it running (holding the test's output open).
pub struct ChildPerch(pub std::process::Child);

impl Drop for ChildPerch {
    fn drop(&mut self) {
        self.0.kill().ok(); // std's kill() is SIGKILL on Unix
        self.0.wait().ok();
    }
}

/// `perch --config <config> serve`. Its log (stdout) is shown when `PERCH_TEST_LOG`
/// names a level (`info`), and dropped otherwise.
pub fn spawn_perch(config: &Path) -> ChildPerch {
    let log = std::env::var("PERCH_TEST_LOG").ok();
    ChildPerch(
        std::process::Command::new(env!("CARGO_BIN_EXE_perch"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
            .stdout(if log.is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("perch binary starts"),
    )
}

/// Wait (up to 10 s) until `/healthz` answers.
pub async fn wait_healthy(base: &str) {
    for _ in 0..500 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("perch did not start answering");
}

/// The config the process tests share: signed webhook events in (`/hooks/in`, headers
/// `X-Signature`, `X-Topic`, `X-Delivery`), relayed by a `notify` bot to a webhook sink
/// (`<sink_url>/send`) as the text `{{payload.n}}` in chat `chat` (a template).
/// `server` and `outbox` are extra lines for those tables; `inbound` for the `in`
/// connector.
pub struct RelayConfig<'a> {
    pub port: u16,
    pub data_dir: &'a Path,
    pub sink_url: &'a str,
    pub secret: &'a str,
    pub chat: &'a str,
    pub server: &'a str,
    pub outbox: &'a str,
    pub inbound: &'a str,
}

impl RelayConfig<'_> {
    pub fn text(&self) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"
{server}

[outbox]
{outbox}

[connectors.in]
kind = "webhook"
secret = "{secret}"
signature_header = "X-Signature"
topic_header = "X-Topic"
id_header = "X-Delivery"
{inbound}

[connectors.sink]
kind = "webhook"
insecure = true
send_url = "{sink}/send"

[bots.relay]
kind = "notify"
connector = "sink"
chat = "{chat}"
text = "{{{{payload.n}}}}"

[[routes]]
connector = "in"
bots = ["relay"]
"#,
            port = self.port,
            data = self.data_dir.display(),
            server = self.server,
            outbox = self.outbox,
            secret = self.secret,
            inbound = self.inbound,
            sink = self.sink_url,
            chat = self.chat,
        )
    }
}
