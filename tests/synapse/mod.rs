//! A real Synapse homeserver for the Matrix tests, one per test binary, and a small
//! Matrix client (plain reqwest) that plays the person in the room.
//!
//! Synapse is found at `$PERCH_SYNAPSE` (its venv's python) or
//! `/opt/perch-synapse/bin/python` (what `.ci/run` installs). Missing: the tests fail
//! when `CI` is set, and skip with a printed reason otherwise.
//!
//! The homeserver is configured here: bound to 127.0.0.1 on a free port, SQLite, no
//! federation, registration only by shared secret (`/_synapse/admin/v1/register`,
//! HMAC-SHA1 over the nonce), rate limits raised so the tests are not paced. It runs
//! under a watchdog shell that stops it when the test binary exits (a static is never
//! dropped).
#![allow(dead_code)]

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub const SHARED_SECRET: &str = "perch-test-shared-secret";
pub const SERVER_NAME: &str = "localhost";

pub struct Synapse {
    pub base: String,
    pub dir: PathBuf,
}

static SYNAPSE: OnceLock<Result<Synapse, String>> = OnceLock::new();

/// Where Synapse's python is, if installed.
fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PERCH_SYNAPSE") {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from("/opt/perch-synapse/bin/python");
    default.exists().then_some(default)
}

/// The shared homeserver; `None` (after printing why) when Synapse is not installed
/// outside CI. Under `CI`, a missing or broken Synapse fails the test.
pub async fn synapse() -> Option<&'static Synapse> {
    let started = tokio::task::spawn_blocking(|| SYNAPSE.get_or_init(start))
        .await
        .expect("synapse start-up thread");
    match started {
        Ok(s) => Some(s),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set and Synapse is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e} (set PERCH_SYNAPSE or run .ci/run's Synapse install)");
            None
        }
    }
}

fn start() -> Result<Synapse, String> {
    let python = python()
        .ok_or("Synapse is not installed (no $PERCH_SYNAPSE, no /opt/perch-synapse/bin/python)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let d = dir.display();
    let fast = "{per_second: 1000, burst_count: 1000}";
    let config = format!(
        r#"server_name: "{SERVER_NAME}"
pid_file: {d}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {d}/homeserver.db
media_store_path: {d}/media
registration_shared_secret: "{SHARED_SECRET}"
report_stats: false
signing_key_path: {d}/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
macaroon_secret_key: "perch-test-macaroon"
form_secret: "perch-test-form"
federation_domain_whitelist: []
enable_metrics: false
rc_message: {fast}
rc_registration: {fast}
rc_login:
  address: {fast}
  account: {fast}
  failed_attempts: {fast}
rc_joins:
  local: {fast}
  remote: {fast}
rc_invites:
  per_room: {fast}
  per_user: {fast}
  per_issuer: {fast}
"#
    );
    let config_path = dir.join("homeserver.yaml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let keys = std::process::Command::new(&python)
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(&config_path)
        .arg("--generate-keys")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !keys.status.success() {
        return Err(format!(
            "synapse --generate-keys failed: {}",
            String::from_utf8_lossy(&keys.stderr)
        ));
    }
    let log = std::fs::File::create(dir.join("synapse.log")).map_err(|e| e.to_string())?;
    // The watchdog: Synapse in the background, killed once this test binary is gone.
    let script = format!(
        "{py} -m synapse.app.homeserver -c {cfg} & child=$!; while kill -0 {me} 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 1; done; kill $child 2>/dev/null",
        py = python.display(),
        cfg = config_path.display(),
        me = std::process::id(),
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        if answers(port) {
            return Ok(Synapse {
                base: format!("http://127.0.0.1:{port}"),
                dir,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "Synapse did not answer within 90 s; see {}/synapse.log",
        dir.display()
    ))
}

/// Whether `/_matrix/client/versions` answers 200 (a blocking probe: no runtime here).
fn answers(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_matrix/client/versions HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// A unique name for this test's accounts.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// A person (or the bot account) on the homeserver, with its access token.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub user_id: String,
    pub token: String,
}

fn seg(s: &str) -> String {
    perch::testing::internals::matrix_path_segment(s)
}

impl Synapse {
    /// Register `username` by shared secret (the admin API's HMAC-SHA1 over
    /// `nonce\0user\0password\0notadmin`), and return a logged-in client.
    pub async fn register(&self, username: &str, password: &str) -> Client {
        self.register_as(username, password, false).await
    }

    /// Register a server admin (for the admin API: rate-limit overrides).
    pub async fn register_admin(&self, username: &str, password: &str) -> Client {
        self.register_as(username, password, true).await
    }

    async fn register_as(&self, username: &str, password: &str, admin: bool) -> Client {
        let http = reqwest::Client::new();
        let url = format!("{}/_synapse/admin/v1/register", self.base);
        let nonce: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let nonce = nonce["nonce"].as_str().expect("a nonce").to_string();
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
        let role = if admin { "admin" } else { "notadmin" };
        mac.update(format!("{nonce}\0{username}\0{password}\0{role}").as_bytes());
        let mac = hex::encode(mac.finalize().into_bytes());
        let resp = http
            .post(&url)
            .json(
                &json!({ "nonce": nonce, "username": username, "password": password,
                           "admin": admin, "mac": mac }),
            )
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let doc: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "register {username}: {status} {doc}");
        Client {
            http,
            base: self.base.clone(),
            user_id: doc["user_id"].as_str().unwrap().to_string(),
            token: doc["access_token"].as_str().unwrap().to_string(),
        }
    }
}

impl Client {
    /// Set `user`'s message rate limit (admin API; `self` must be an admin).
    pub async fn override_ratelimit(&self, user: &str, per_second: u32, burst: u32) {
        let resp = self
            .http
            .post(format!(
                "{}/_synapse/admin/v1/users/{}/override_ratelimit",
                self.base,
                seg(user)
            ))
            .bearer_auth(&self.token)
            .json(&json!({ "messages_per_second": per_second, "burst_count": burst }))
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "override_ratelimit: {}",
            resp.status()
        );
    }

    /// Join a room the client was invited to.
    pub async fn join(&self, room: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/join/{}", seg(room)),
            Some(json!({})),
        )
        .await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/_matrix/client/v3{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let doc: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {doc}");
        doc
    }

    /// A private room with `invite` invited; its id.
    pub async fn create_room(&self, name: &str, invite: &[&str]) -> String {
        self.create_room_with(json!({ "name": name, "preset": "private_chat", "invite": invite }))
            .await
    }

    /// A room made with the `createRoom` body `body`; its id.
    pub async fn create_room_with(&self, body: Value) -> String {
        let doc = self
            .call(reqwest::Method::POST, "/createRoom", Some(body))
            .await;
        doc["room_id"].as_str().unwrap().to_string()
    }

    /// Send a message event's `content`; its event id.
    pub async fn send(&self, room: &str, event_type: &str, content: Value) -> String {
        let txn = uuid::Uuid::now_v7().simple().to_string();
        let doc = self
            .call(
                reqwest::Method::PUT,
                &format!("/rooms/{}/send/{}/{txn}", seg(room), seg(event_type)),
                Some(content),
            )
            .await;
        doc["event_id"].as_str().unwrap().to_string()
    }

    /// `<bot>: <text>` as Element writes a mention: a pill, and `m.mentions`.
    pub async fn mention(&self, room: &str, bot: &str, name: &str, text: &str) -> String {
        self.send(
            room,
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": format!("{name}: {text}"),
                "format": "org.matrix.custom.html",
                "formatted_body": format!("<a href=\"https://matrix.to/#/{bot}\">{name}</a>: {text}"),
                "m.mentions": { "user_ids": [bot] },
            }),
        )
        .await
    }

    /// React to `event_id` with `key`.
    pub async fn react(&self, room: &str, event_id: &str, key: &str) -> String {
        self.send(
            room,
            "m.reaction",
            json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": event_id, "key": key } }),
        )
        .await
    }

    /// The room's events, oldest first (the last 500).
    pub async fn events(&self, room: &str) -> Vec<Value> {
        let doc = self
            .call(
                reqwest::Method::GET,
                &format!("/rooms/{}/messages?dir=b&limit=500", seg(room)),
                None,
            )
            .await;
        let mut events = doc["chunk"].as_array().cloned().unwrap_or_default();
        events.reverse();
        events
    }

    /// The room's joined members.
    pub async fn members(&self, room: &str) -> Vec<String> {
        let doc = self
            .call(
                reqwest::Method::GET,
                &format!("/rooms/{}/joined_members", seg(room)),
                None,
            )
            .await;
        doc["joined"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }
}
