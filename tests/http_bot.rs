//! `kind = "http_bot"` end to end: a strict fake bot (an axum server on a free port that
//! refuses an unsigned or wrongly signed request and records every event it gets) and
//! perch from the test kit (`perch::testing`), whose fake platform records every
//! operation with its idempotency key.

use perch::event::{Event, EventKind, Mention, Person};
use perch::testing::TestHub;
use perch::testing::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `perch` command line these tests run as a process.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

const SECRET: &str = "bot-secret";

/// What the fake bot saw: events it accepted, requests it refused.
#[derive(Default)]
struct BotLog {
    events: Vec<Value>,
    refused: usize,
}

/// The fake bot. It answers by the event's text: `card` → a card by template name,
/// `bad` → an action perch cannot read, `slow` → too late, `later` → 202.
async fn fake_bot(log: Arc<Mutex<BotLog>>) -> String {
    let app = axum::Router::new().route(
        "/bot",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let ts = headers.get("x-perch-timestamp").and_then(|v| v.to_str().ok());
                    let sig = headers.get("x-perch-signature").and_then(|v| v.to_str().ok());
                    let signed = ts.map(|ts| [ts.as_bytes(), b".", &body[..]].concat());
                    let good = match (signed, sig) {
                        (Some(m), Some(s)) => s == format!("sha256={}", sign(SECRET, &m)),
                        _ => false,
                    };
                    if !good {
                        log.lock().unwrap().refused += 1;
                        return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                    }
                    let req: Value = serde_json::from_slice(&body).unwrap();
                    let text = req["event"]["text"].as_str().unwrap_or("").to_string();
                    log.lock().unwrap().events.push(req);
                    let ok = |v: Value| (axum::http::StatusCode::OK, v.to_string());
                    if text.contains("card") {
                        let data: Value = serde_json::from_str(include_str!(
                            "../cards/notification.sample.json"
                        ))
                        .unwrap();
                        ok(json!({"actions": [
                            {"action": "reply", "body": {"type": "template", "template": "notification", "data": data}}
                        ]}))
                    } else if text.contains("bad") {
                        ok(json!({"actions": [
                            {"action": "reply", "body": {"type": "text", "text": "fine"}},
                            {"action": "reply", "body": {"type": "nope"}}
                        ]}))
                    } else if text.contains("slow") {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        ok(json!({"actions": []}))
                    } else if text.contains("later") {
                        (axum::http::StatusCode::ACCEPTED, String::new())
                    } else {
                        ok(json!({"actions": [{"action": "reply", "body": {"type": "text", "text": format!("you said {text}")}}]}))
                    }
                }
            },
        ),
    );
    serve_fake(app).await
}

struct World {
    hub: TestHub,
    log: Arc<Mutex<BotLog>>,
}

/// perch (from the test kit, with its recording platform) and the fake bot.
async fn world() -> World {
    let log = Arc::new(Mutex::new(BotLog::default()));
    let bot = fake_bot(log.clone()).await;
    let config = format!(
        r#"
[server]
cards_dir = "{cards}"

[bots.ext]
kind = "http_bot"
url = "{bot}/bot"
secret = "{SECRET}"
timeout = "500ms"

[[routes]]
mention = "*"
bots = ["ext"]
"#,
        cards = concat!(env!("CARGO_MANIFEST_DIR"), "/cards"),
    );
    let hub = TestHub::start(perch::Hub::builder(), &config).await;
    World { hub, log }
}

/// POST late actions signed with `secret`.
async fn post_late(w: &World, secret: &str, body: &Value) -> reqwest::Response {
    let body = body.to_string();
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = sign(secret, format!("{ts}.{body}").as_bytes());
    reqwest::Client::new()
        .post(format!("{}/api/bots/ext/actions", w.hub.url()))
        .header("x-perch-timestamp", ts)
        .header("x-perch-signature", format!("sha256={sig}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_mention_is_signed_to_the_bot_and_its_template_card_is_sent() {
    let w = world().await;
    let ops = w.hub.mention("@bot card please").await;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].op, "send");
    assert!(
        ops[0].json["reply_to"]
            .as_str()
            .unwrap()
            .starts_with("om_in_")
    );
    let card = ops[0].card().expect("a card");
    assert!(
        card.to_string().contains("Build failed: perch#1287"),
        "{card}"
    );
    let log = w.log.lock().unwrap();
    assert_eq!(log.refused, 0, "every request perch sent was signed right");
    assert_eq!(log.events.len(), 1);
    assert_eq!(log.events[0]["event"]["text"], "@bot card please");
    assert_eq!(log.events[0]["bot"], "ext");
    assert_eq!(log.events[0]["actions_path"], "/api/bots/ext/actions");
}

#[tokio::test]
async fn a_malformed_answer_or_a_timeout_gets_the_friendly_apology_and_nothing_else() {
    let w = world().await;
    let (bad, ops) = w.hub.post(mention(&w.hub, "@bot bad")).await;
    assert_eq!(
        ops.len(),
        1,
        "only the apology, not the first valid action: {ops:?}"
    );
    let text = ops[0].text();
    assert!(
        text.starts_with("Sorry, `ext` could not handle that"),
        "{text}"
    );
    assert!(text.contains(&bad.to_string()), "{text}");

    let started = std::time::Instant::now();
    let ops = w.hub.mention("@bot slow").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 500ms timeout applies"
    );
    assert_eq!(ops.len(), 1);
    assert!(ops[0].text().starts_with("Sorry, `ext`"), "{ops:?}");
    assert_eq!(w.hub.platform().refused(), 0);
}

/// A mention from the kit's chat, for tests that need the event's id.
fn mention(hub: &TestHub, text: &str) -> Event {
    let mut e = hub.event(EventKind::Message);
    e.text = Some(text.to_string());
    e.mentions = vec![Mention {
        person: Person {
            id: "ou_bot".into(),
            name: Some("bot".into()),
        },
        is_bot: true,
    }];
    e
}

#[tokio::test]
async fn late_actions_after_a_202_are_checked_sent_once_and_refused_when_unsigned() {
    let w = world().await;
    let mut later = mention(&w.hub, "@bot later");
    later.message_id = Some("om_l1".into());
    let (id, ops) = w.hub.post(later).await;
    assert!(ops.is_empty(), "202: nothing yet");

    let batch = json!({"event_id": id.to_string(), "actions": [
        {"key": "answer", "action": "reply", "body": {"type": "text", "text": "done at last"}}
    ]});
    // A wrong signature, an unknown event, a missing key: refused, nothing journaled.
    let r = post_late(&w, "wrong-secret", &batch).await;
    assert_eq!(r.status(), 401);
    let mut no_event = batch.clone();
    no_event["event_id"] = json!(uuid::Uuid::now_v7().to_string());
    assert_eq!(post_late(&w, SECRET, &no_event).await.status(), 422);
    // An event that was not routed to `ext` (no route takes system events): refused,
    // so a bot's secret cannot make perch answer events it never got.
    let mut unrouted = w.hub.event(EventKind::System);
    unrouted.topic = Some("crm.nothing".into());
    let (unrouted, _) = w.hub.post(unrouted).await;
    let mut not_ours = batch.clone();
    not_ours["event_id"] = json!(unrouted.to_string());
    let r = post_late(&w, SECRET, &not_ours).await;
    assert_eq!(r.status(), 403);
    let why = r.text().await.unwrap();
    assert!(why.contains("was not routed to bot `ext`"), "{why}");
    let mut no_key = batch.clone();
    no_key["actions"][0].as_object_mut().unwrap().remove("key");
    let r = post_late(&w, SECRET, &no_key).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("needs a `key`"));

    let first = post_late(&w, SECRET, &batch).await;
    assert_eq!(first.status(), 202);
    // The same batch again (a retry), and another batch reusing the key: sent once.
    let again = post_late(&w, SECRET, &batch).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap()["duplicate"], true);
    let mut reused = batch.clone();
    reused["actions"][0]["body"]["text"] = json!("done again");
    assert_eq!(post_late(&w, SECRET, &reused).await.status(), 202);
    let ops = w.hub.platform().wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ops_after = w.hub.platform().ops();
    assert_eq!(ops_after.len(), 1, "one send for one key: {ops:?}");
    assert_eq!(ops[0].text(), "done at last");
    assert_eq!(ops[0].json["reply_to"], "om_l1");
    assert_eq!(
        ops[0].key,
        format!("once/ext/late/{id}/answer"),
        "the bot's own key, scoped to the event"
    );
}

/// kill -9 of perch while the bot is answering: after the restart perch asks the bot
/// again for the same event (it was never marked handled), and the bot's action goes
/// out exactly once, under the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_answer_asks_again_and_sends_once() {
    // The bot holds its first request until perch is dead; later ones answer at once.
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let bot_app = axum::Router::new().route(
        "/bot",
        axum::routing::post({
            let asked = asked.clone();
            move |body: axum::body::Bytes| {
                let asked = asked.clone();
                async move {
                    let req: Value = serde_json::from_slice(&body).unwrap();
                    let first = {
                        let mut a = asked.lock().unwrap();
                        a.push(req["event"]["id"].as_str().unwrap().to_string());
                        a.len() == 1
                    };
                    if first {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    json!({"actions": [{"action": "send", "connector": "sink",
                        "to": {"type": "chat", "id": "room"},
                        "body": {"type": "text", "text": "answered"}}]})
                    .to_string()
                }
            }
        }),
    );
    let bot = serve_fake(bot_app).await;
    let sends = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink_app = axum::Router::new().route(
        "/send",
        axum::routing::post({
            let sends = sends.clone();
            move |body: axum::body::Bytes| {
                let sends = sends.clone();
                async move {
                    sends
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    "{\"id\":\"om_1\"}"
                }
            }
        }),
    );
    let sink = serve_fake(sink_app).await;
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

[connectors.in]
kind = "webhook"
secret = "{SECRET}"
id_header = "X-Delivery"
topic = "deploy"

[connectors.sink]
kind = "webhook"
insecure = true
send_url = "{sink}/send"

[bots.ext]
kind = "http_bot"
url = "{bot}/bot"
secret = "{SECRET}"
timeout = "20s"

[[routes]]
connector = "in"
bots = ["ext"]
"#,
            data = dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    let body = r#"{"service":"api"}"#;
    let r = reqwest::Client::new()
        .post(format!("{base}/hooks/in"))
        .header("X-Delivery", "d-1")
        .header(
            "X-Perch-Signature",
            format!("sha256={}", sign(SECRET, body.as_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(10, "the bot is asked", || async {
        (asked.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    drop(child); // SIGKILL while the bot is still answering
    let _child = spawn_perch(PERCH, &config);
    wait_healthy(&base).await;
    eventually(10, "the answer is sent", || async {
        (!sends.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "asked again after the restart: {asked:?}");
    assert_eq!(asked[0], asked[1], "for the same event");
    assert_eq!(sends.lock().unwrap().len(), 1, "sent once");
}

/// `schemas/` holds the wire format's JSON Schemas as the types generate them; set
/// `PERCH_UPDATE_SCHEMAS=1` to rewrite them after a change.
#[test]
fn the_published_schemas_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for (name, schema) in perch::testing::http_bot_schemas() {
        let text = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
        let path = dir.join(name);
        if std::env::var_os("PERCH_UPDATE_SCHEMAS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let published =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            published, text,
            "{name} is stale: run with PERCH_UPDATE_SCHEMAS=1"
        );
    }
    // A template answer validates against what the schema says a body may be.
    let answer = &perch::testing::http_bot_schemas()[1].1;
    assert!(
        answer.to_string().contains("\"const\":\"template\""),
        "{answer}"
    );
}
