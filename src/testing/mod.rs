//! A test kit for bot authors (feature `testing`): a whole perch in the test's process,
//! started from a config string, with a fake chat platform that records every
//! operation with its idempotency key, a manual clock, and helpers that post a mention,
//! a system event or a card click and wait for what the bots did about it.
//!
//! ```no_run
//! # async fn demo() {
//! use perch::testing::TestHub;
//! let hub = TestHub::start(
//!     perch::Hub::builder(),
//!     r#"
//! [bots.echo]
//! kind = "echo"
//!
//! [[routes]]
//! mention = "*"
//! bots = ["echo"]
//! "#,
//! )
//! .await;
//! let sent = hub.mention("@bot hello").await;
//! assert_eq!(sent[0].text(), "hello");
//! # }
//! ```
//!
//! The platform is the connector `chat` (a webhook connector whose `send_url` is the
//! fake); the kit adds it, and `[server] data_dir` (a fresh temporary directory), to the
//! config. Events from the helpers come from chat `oc_room`, sender `ou_alice`.
//!
//! perch's own tests use the same kit; beside `TestHub` it has:
//! - [`TestPerch`]: perch in-process on any config, restartable on the same data
//!   (`TestHub` is one of these with the recording platform and a manual clock);
//! - the process side ([`spawn_perch`], [`ChildPerch`], [`wait_healthy`],
//!   [`perch_command`]): perch's binary, or a user's own binary built on `perch::Hub`,
//!   killed with SIGKILL mid-answer;
//! - fakes ([`serve_fake`], the strict [`gateway_admits`], wiremock helpers, [`Sse`])
//!   and waits ([`eventually`], [`at_least`]);
//! - [`relay`]: a relay under load with a sink that counts deliveries per idempotency key;
//! - [`internals`]: the few internals perch's white-box tests drive.

mod crash;
pub mod fake_feishu;
mod fakes;
mod perch;
mod process;
pub mod relay;

pub use crash::answers_once_across_a_kill;
pub use fakes::*;
pub use perch::{JournalDoor, TestPerch};
pub use process::*;

/// A local account's password hash, for configs with `[auth] mode = "local"` users.
pub use crate::auth::hash_password;
/// The JSON Schemas of the `http_bot` wire format (the request and the answer).
pub use crate::bots::http_bot::schemas as http_bot_schemas;
/// What the journal answered for an accepted event (`JournalDoor::accept`).
pub use crate::journal::Accepted;
/// A fresh PostgreSQL database for a test, from `PERCH_TEST_DATABASE_URL`.
pub use crate::store::postgres::test_database;

/// A fresh database (`test_database`) as the `postgres://` URL a perch config's `[store]
/// url` takes, or `None` (skip) outside CI without a server.
pub async fn test_database_url() -> Option<String> {
    let config = test_database().await?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    Some(format!(
        "postgres://{}{password}@{host}:{port}/{}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres"),
    ))
}

/// A store in a throw-away temporary directory (the embedded backend), for tests that
/// start perch on a store of their own (`perch::Perch::start_with_store`) or check a
/// store directly.
pub fn temporary_store() -> Arc<dyn crate::Store> {
    Arc::new(crate::store::SledStore::temporary().expect("a temporary sled store"))
}

/// perch's own white-box tests reach a few internals through here: the scheduler on a
/// manual clock, the ingest log's record format, a connector's signature scheme. They
/// are not an author's API and may change with perch.
pub mod internals {
    pub use crate::connectors::feishu::crypto::event_signature as feishu_event_signature;
    pub use crate::connectors::http::{HttpSource, HttpSourceConfig};
    pub use crate::connectors::matrix::api::seg as matrix_path_segment;
    pub use crate::journal::Journal;
    pub use crate::lanes::{Doorbell, LEASE_TTL};
    pub use crate::outbox::OutboxDoor;
    pub use crate::scheduler::{Fired, KEEP_RUNS, Misfire, Scheduler, Schedules, status};
    pub use crate::store::ingest_log::{decode as ingest_log_decode, encode as ingest_log_encode};
}

use crate::action::ClickAnswer;
use crate::clock::{Clock, ManualClock, SharedClock};
use crate::event::{CardAction, Chat, ChatType, Event, EventId, EventKind, Mention, Person};
use crate::store::Fate;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The connector name the fake platform is configured under.
pub const PLATFORM: &str = "chat";
/// The chat the helpers' events come from.
pub const ROOM: &str = "oc_room";

/// How long the helpers wait for an answer before the test fails.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One operation the fake platform received: what perch asked for and its key.
#[derive(Debug, Clone)]
pub struct RecordedOp {
    /// The idempotency key perch sent with it (`<event>/<bot>/<index>`, `once/...`).
    pub key: String,
    /// `send`, `update`, `create_chat`, `add_members`.
    pub op: String,
    /// The whole operation as perch sent it.
    pub json: Value,
}

impl RecordedOp {
    /// The message's text, or its card as JSON text.
    pub fn text(&self) -> String {
        self.json["body"]["text"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.json["body"]["card"].to_string())
    }
    /// The neutral card, for a card message.
    pub fn card(&self) -> Option<&Value> {
        self.json["body"].get("card")
    }
}

/// A chat platform that records every operation. As strict as a real one: a request
/// a production gateway would refuse (`malformed` headers), or that is not JSON with an
/// `op` and a `key` matching its `Idempotency-Key` header, is refused (400) and counted
/// in `refused`. `fail_next(n)` makes it answer the next `n` requests 503 (counted in
/// `failed`, not recorded), so a test can hold an answer in perch's outbox.
#[derive(Clone)]
pub struct FakePlatform {
    url: String,
    state: Arc<Mutex<PlatformState>>,
}

#[derive(Default)]
struct PlatformState {
    ops: Vec<RecordedOp>,
    refused: usize,
    fail_next: usize,
    failed: usize,
}

impl FakePlatform {
    pub async fn start() -> FakePlatform {
        let state = Arc::new(Mutex::new(PlatformState::default()));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/send",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let state = shared.clone();
                async move { Self::receive(&state, &headers, &body) }
            }),
        );
        let url = serve_fake(app).await;
        FakePlatform { url, state }
    }

    fn receive(
        state: &Mutex<PlatformState>,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> (axum::http::StatusCode, String) {
        let mut state = lock(state);
        let header_key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let json = serde_json::from_slice::<Value>(body).ok().filter(|v| {
            v["op"].is_string()
                && v["key"]
                    .as_str()
                    .is_some_and(|k| k == header_key && !k.is_empty())
        });
        let (Some(json), None) = (json, malformed(headers, body.len())) else {
            state.refused += 1;
            return (axum::http::StatusCode::BAD_REQUEST, "{}".to_string());
        };
        if state.fail_next > 0 {
            state.fail_next -= 1;
            state.failed += 1;
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "{\"error\":\"unavailable\"}".to_string(),
            );
        }
        let n = state.ops.len() + 1;
        let op = json["op"].as_str().unwrap_or_default().to_string();
        let id = if op == "create_chat" {
            format!("oc_{n}")
        } else {
            format!("om_{n}")
        };
        state.ops.push(RecordedOp {
            key: header_key.to_string(),
            op,
            json,
        });
        (axum::http::StatusCode::OK, json!({ "id": id }).to_string())
    }

    /// The config table of a perch connector `name` that sends to this platform (a
    /// webhook connector), for configs written by hand (process tests).
    pub fn connector_toml(&self, name: &str) -> String {
        format!(
            "[connectors.{name}]\nkind = \"webhook\"\ninsecure = true\nsend_url = \"{}/send\"\n",
            self.url
        )
    }

    /// Answer the next `n` well-formed requests with 503 (perch retries them later).
    pub fn fail_next(&self, n: usize) {
        lock(&self.state).fail_next = n;
    }

    /// How many requests were answered 503 by `fail_next`.
    pub fn failed(&self) -> usize {
        lock(&self.state).failed
    }

    /// The idempotency keys of the operations so far, each with how often it arrived.
    pub fn keys(&self) -> std::collections::BTreeMap<String, usize> {
        let mut keys = std::collections::BTreeMap::new();
        for op in &lock(&self.state).ops {
            *keys.entry(op.key.clone()).or_insert(0) += 1;
        }
        keys
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every operation so far, in arrival order (repeats included: a double send shows).
    pub fn ops(&self) -> Vec<RecordedOp> {
        lock(&self.state).ops.clone()
    }

    /// How many malformed requests it refused.
    pub fn refused(&self) -> usize {
        lock(&self.state).refused
    }

    /// Wait until at least `n` operations arrived; all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<RecordedOp> {
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        loop {
            let ops = self.ops();
            if ops.len() >= n {
                return ops;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {ANSWER_WITHIN:?} for {n} operations at the fake platform, got {}: {ops:?}",
                ops.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A perch running in this process with a recording platform and a manual clock: see
/// the module docs.
pub struct TestHub {
    perch: TestPerch,
    platform: FakePlatform,
    clock: ManualClock,
}

impl TestHub {
    /// Start perch with `config` (bots, routes, more connectors) and the kinds on `hub`.
    /// Panics with the config's problems if it is invalid.
    pub async fn start(hub: crate::HubBuilder, config: &str) -> TestHub {
        let platform = FakePlatform::start().await;
        let clock = ManualClock::new(chrono::Utc::now());
        let shared: SharedClock = Arc::new(clock.clone());
        let text = Self::config_text(config, &platform);
        let mut perch = TestPerch::start_in_with(hub, &text, &perch::fresh_dir(), shared).await;
        perch.owns_dir = true;
        TestHub {
            perch,
            platform,
            clock,
        }
    }

    /// `config` with the fake platform's connector added.
    fn config_text(config: &str, platform: &FakePlatform) -> String {
        format!("{config}\n\n{}", platform.connector_toml(PLATFORM))
    }

    /// The running perch (its connectors, journal, store).
    pub fn perch(&self) -> &TestPerch {
        &self.perch
    }

    /// perch's base URL (`http://127.0.0.1:<port>`), for HTTP bots' late actions.
    pub fn url(&self) -> &str {
        &self.perch.base
    }

    /// The fake platform.
    pub fn platform(&self) -> &FakePlatform {
        &self.platform
    }

    /// The clock perch reads. Moving it changes what bots see as now (reminders due,
    /// dates in cards). The scheduler notices a jump only when it next wakes (within
    /// `scheduler::MAX_SLEEP`, 60 s): to drive a schedule in a test, `post` its tick
    /// event (`EventKind::Tick`, topic = the job) instead of waiting.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Move the clock on by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        self.clock.advance(by);
    }

    /// Alice @mentions the bot account in `oc_room` with `text`: the operations the bots
    /// caused, once the event is handled and they are delivered.
    pub async fn mention(&self, text: &str) -> Vec<RecordedOp> {
        let mut e = self.event(EventKind::Message);
        e.text = Some(text.to_string());
        e.message_id = Some(format!("om_in_{}", e.id));
        e.mentions = vec![Mention {
            person: Person {
                id: "ou_bot".into(),
                name: Some("bot".into()),
            },
            is_bot: true,
        }];
        self.post(e).await.1
    }

    /// An internal system posts `topic` with `payload`.
    pub async fn system(&self, topic: &str, payload: Value) -> Vec<RecordedOp> {
        let mut e = self.event(EventKind::System);
        e.chat = None;
        e.topic = Some(topic.to_string());
        e.payload = payload;
        self.post(e).await.1
    }

    /// Alice clicks the button `action` (with `args`) on the card `message_id` that
    /// `bot` sent: the click's answer (toast, replacement card) and the operations.
    pub async fn click(
        &self,
        bot: &str,
        message_id: &str,
        action: &str,
        args: Value,
    ) -> (ClickAnswer, Vec<RecordedOp>) {
        let mut e = self.event(EventKind::CardAction);
        e.card_action = Some(CardAction {
            bot: bot.to_string(),
            action: action.to_string(),
            args,
            message_id: Some(message_id.to_string()),
        });
        let (id, ops) = self.post(e).await;
        let answer = self
            .perch
            .click_answer(id, Duration::from_secs(1))
            .await
            .unwrap_or_default();
        (answer, ops)
    }

    /// A bare event from Alice in `oc_room` through the platform connector.
    pub fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(PLATFORM, kind, self.clock.now());
        e.chat = Some(Chat {
            id: ROOM.into(),
            chat_type: ChatType::Group,
        });
        e.sender = Some(Person {
            id: "ou_alice".into(),
            name: Some("Alice".into()),
        });
        e.external_id = Some(e.id.to_string());
        e
    }

    /// Journal `event`, wait until it is handled and its operations are delivered; its
    /// id and those operations.
    pub async fn post(&self, event: Event) -> (EventId, Vec<RecordedOp>) {
        let store = self.perch.store();
        let before = self.platform.ops().len();
        let id = self
            .perch
            .journal()
            .accept(vec![event])
            .await
            .expect("the journal accepts the event")[0]
            .id();
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        loop {
            let entry = store.event(id).await.expect("store readable");
            if entry.is_some_and(|e| e.fate != Fate::Pending) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {id} not handled within {ANSWER_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Handled: what it queued is in the outbox (an action whose key was used before
        // is not queued again). Wait until the outbox has delivered everything.
        loop {
            let queued = store.outbox_count().await.expect("store readable");
            if queued == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queued} operation(s) still queued after {ANSWER_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (id, self.platform.ops()[before..].to_vec())
    }

    /// Stop: HTTP first, then drain and flush.
    pub async fn stop(mut self) {
        self.perch.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// POST `body` with `headers` to the fake platform; the status.
    async fn post(platform: &FakePlatform, headers: &[(&str, &str)], body: &str) -> u16 {
        let mut request = reqwest::Client::new()
            .post(format!("{}/send", platform.url()))
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .send()
            .await
            .expect("the fake answers")
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn the_fake_platform_refuses_what_a_real_one_would_and_records_the_rest() {
        let platform = FakePlatform::start().await;
        let json = ("content-type", "application/json");
        let op = r#"{"op":"send","key":"e1/bot/0","to":{"type":"chat","id":"c"}}"#;
        // No JSON content type; a key that differs from the header; no key at all.
        assert_eq!(
            post(&platform, &[("idempotency-key", "e1/bot/0")], op).await,
            400
        );
        assert_eq!(
            post(&platform, &[json, ("idempotency-key", "other")], op).await,
            400
        );
        assert_eq!(post(&platform, &[json], r#"{"op":"send"}"#).await, 400);
        assert_eq!(platform.refused(), 3);
        assert!(platform.ops().is_empty(), "nothing refused is recorded");

        // Unavailable for one request: answered 503, not recorded, then taken.
        platform.fail_next(1);
        let good = [json, ("idempotency-key", "e1/bot/0")];
        assert_eq!(post(&platform, &good, op).await, 503);
        assert_eq!(post(&platform, &good, op).await, 200);
        assert_eq!(post(&platform, &good, op).await, 200);
        assert_eq!(platform.failed(), 1);
        // A repeat is recorded as such: a double send shows.
        assert_eq!(platform.ops().len(), 2);
        assert_eq!(platform.keys().get("e1/bot/0"), Some(&2));
    }
}
