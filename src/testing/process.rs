//! The `perch` binary (or a user's own binary built on `perch::Hub`) as a process, for
//! tests that kill it with SIGKILL (crash, disk full, replicas) or run its command line;
//! and what such tests post to it: signed webhook events and scheduler ticks.

use std::path::Path;
use std::time::Duration;

/// HMAC-SHA256 hex signature, as the webhook connector expects.
pub fn sign(secret: &str, body: &[u8]) -> String {
    crate::connectors::webhook::sign(secret.as_bytes(), body)
}

/// A tick as the scheduler makes it: `kind = tick`, topic and `payload.job` = the job,
/// `payload.slot` (RFC 3339), and one external id per slot.
pub fn tick(job: &str, slot: &str) -> crate::event::Event {
    let mut e = crate::event::Event::new(
        "scheduler",
        crate::event::EventKind::Tick,
        chrono::Utc::now(),
    );
    e.topic = Some(job.to_string());
    e.payload = serde_json::json!({ "job": job, "slot": slot });
    e.external_id = Some(format!("{job}@{slot}"));
    e
}

/// Run the perch command line `binary` (in an integration test,
/// `env!("CARGO_BIN_EXE_perch")`, or a user's own binary built on `perch::Hub`) with
/// `args` and wait for it (no admin token from the environment leaks in).
pub fn perch_command(binary: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary)
        .args(args)
        .env_remove("PERCH_ADMIN_TOKEN")
        .output()
        .expect("the perch binary runs")
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
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

/// `<binary> --config <config> serve`, where `binary` is perch's command line (in an
/// integration test, `env!("CARGO_BIN_EXE_perch")`, or a user's own binary built on
/// `perch::Hub`). Its log (stdout) is shown when `PERCH_TEST_LOG` names a level
/// (`info`), and dropped otherwise.
pub fn spawn_perch(binary: &str, config: &Path) -> ChildPerch {
    let log = std::env::var("PERCH_TEST_LOG").ok();
    ChildPerch(
        std::process::Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
            .stdout(if log.is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} starts: {e}")),
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
    /// The config file's text.
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
