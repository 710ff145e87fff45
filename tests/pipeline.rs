//! The core pipeline end to end, on a real server: webhook → journal → router → bot →
//! outbox → connector. Outbound operations go to a wiremock "chat platform" through the
//! webhook connector's `send_url`, so each test can count exactly what was delivered.
//! Tests that only need a chat platform and the journal (routing, a failing bot) use
//! the test kit (`perch::testing::TestHub`) and its recording platform instead.

use perch::event::{Event, EventKind, Mention, Person};
use perch::store::Fate;
use perch::testing::*;
use perch::testing::{ROOM, TestHub};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "s3cret";

/// A config: inbound webhook `events` (+ `github`), outbound sink `chat` → `sink_url`.
fn config(sink_url: &str, bots_and_routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[outbox]
min_backoff = "50ms"
max_backoff = "200ms"
max_attempts = 4

[connectors.events]
kind = "webhook"
secret = "{SECRET}"
topic_header = "X-Perch-Topic"
id_header = "X-Perch-Delivery"
chat_pointer = "/chat"

[connectors.github]
kind = "webhook"
secret = "It's a Secret to Everybody"
signature_header = "X-Hub-Signature-256"
topic_header = "X-GitHub-Event"
topic_prefix = "github."
id_header = "X-GitHub-Delivery"
sender_pointer = "/sender/login"

[connectors.chat]
kind = "webhook"
insecure = true
send_url = "{sink_url}/send"

{bots_and_routes}
"#
    )
}

const NOTIFY: &str = r#"
[bots.builds]
kind = "notify"
connector = "chat"
chat = "team"
text = "Build failed: {{payload.repo}}"

[[routes]]
connector = "events"
topic = "build.*"
bots = ["builds"]
"#;

async fn sink() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/send"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "m-1"})))
        .mount(&server)
        .await;
    server
}

/// Bodies POSTed to the sink, in arrival order.
async fn sent(server: &MockServer) -> Vec<Value> {
    received_json(server).await
}

async fn wait_sent(server: &MockServer, n: usize) -> Vec<Value> {
    wait_received(server, n).await
}

async fn post_event(t: &TestPerch, topic: &str, delivery: &str, body: &[u8]) -> reqwest::Response {
    reqwest::Client::new()
        .post(t.url("/hooks/events"))
        .header("X-Perch-Topic", topic)
        .header("X-Perch-Delivery", delivery)
        .header(
            "X-Perch-Signature",
            format!("sha256={}", sign(SECRET, body)),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn api(t: &TestPerch, path: &str) -> Value {
    reqwest::get(t.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn text_of(op: &Value) -> String {
    op["body"]["text"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn signed_event_reaches_the_chat_once() {
    let s = sink().await;
    let t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    let resp = post_event(&t, "build.failed", "d-1", br#"{"repo":"shop"}"#).await;
    assert_eq!(resp.status(), 200);
    let ack: Value = resp.json().await.unwrap();
    assert_eq!(ack["duplicate"], false);
    let got = wait_sent(&s, 1).await;
    assert_eq!(got[0]["op"], "send");
    assert_eq!(got[0]["to"], json!({"type": "chat", "id": "team"}));
    assert_eq!(text_of(&got[0]), "Build failed: shop");
    let key = got[0]["key"].as_str().unwrap();
    assert!(
        key.starts_with(ack["event_id"].as_str().unwrap()),
        "idempotency key derives from the event: {key}"
    );
    // The journal records the fate.
    let ev = api(
        &t,
        &format!("/api/events/{}", ack["event_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(ev["fate"]["state"], "routed");
    assert_eq!(ev["fate"]["bots"], json!(["builds"]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sent(&s).await.len(), 1);
}

#[tokio::test]
async fn github_push_is_accepted_with_config_alone() {
    let s = sink().await;
    let routes = r#"
[bots.pushes]
kind = "notify"
connector = "chat"
chat = "dev"
text = "{{payload.pusher.name}} pushed {{payload.ref}} to {{payload.repository.full_name}}"

[[routes]]
connector = "github"
topic = "github.push"
bots = ["pushes"]
"#;
    let t = TestPerch::start(&config(&s.uri(), routes)).await;
    let body = std::fs::read("tests/fixtures/github/push.json").unwrap();
    let sig = sign("It's a Secret to Everybody", &body);
    let resp = reqwest::Client::new()
        .post(t.url("/hooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("X-Hub-Signature-256", format!("sha256={sig}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = wait_sent(&s, 1).await;
    assert_eq!(
        text_of(&got[0]),
        "Codertocat pushed refs/tags/simple-tag to Codertocat/Hello-World"
    );
    let events = api(&t, "/api/events").await;
    let e = &events["events"][0]["event"];
    assert_eq!(e["topic"], "github.push");
    assert_eq!(e["external_id"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(e["sender"]["id"], "Codertocat");
}

#[tokio::test]
async fn platform_retries_are_processed_once_even_across_a_restart() {
    let s = sink().await;
    let mut t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    let first: Value = post_event(&t, "build.failed", "same-id", br#"{"repo":"a"}"#)
        .await
        .json()
        .await
        .unwrap();
    let again: Value = post_event(&t, "build.failed", "same-id", br#"{"repo":"a"}"#)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        again["event_id"], first["event_id"],
        "a duplicate is answered with the original's id"
    );
    wait_sent(&s, 1).await;
    t.restart().await;
    let resp = post_event(&t, "build.failed", "same-id", br#"{"repo":"a"}"#).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["duplicate"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent(&s).await.len(), 1);
    assert_eq!(
        api(&t, "/api/events").await["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason_and_store_nothing() {
    let s = sink().await;
    let mut cfg = config(&s.uri(), NOTIFY);
    cfg = cfg.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nbody_limit = 2048",
    );
    // Its own connector: every perch of this test process shares one metrics
    // recorder, so the refusal counter asserted below must have labels no other test
    // touches (`timestamped_signatures_have_a_window` refuses on `events`).
    cfg = cfg.replace(
        "[connectors.github]",
        &format!("[connectors.refusals]\nkind = \"webhook\"\nsecret = \"{SECRET}\"\ntopic_header = \"X-Perch-Topic\"\nid_header = \"X-Perch-Delivery\"\n\n[connectors.github]"),
    );
    let t = TestPerch::start(&cfg).await;
    let client = reqwest::Client::new();
    let body = br#"{"repo":"x"}"#.to_vec();
    let good_sig = format!("sha256={}", sign(SECRET, &body));
    let not_json = b"{not json".to_vec();
    let big = format!(r#"{{"repo":"{}"}}"#, "x".repeat(4096)).into_bytes();
    // A topic and this signature header.
    let signed = |sig: String| {
        vec![
            ("X-Perch-Topic", "build.x".to_string()),
            ("X-Perch-Signature", sig),
        ]
    };
    let sha = |secret: &str, bytes: &[u8]| format!("sha256={}", sign(secret, bytes));
    // (what, path, headers, body, expected status, expected reason)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, String)>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "no signature",
            "/hooks/refusals",
            vec![("X-Perch-Topic", "build.x".into())],
            body.clone(),
            401,
            "missing signature header",
        ),
        (
            "wrong signature",
            "/hooks/refusals",
            signed(sha("other", &body)),
            body.clone(),
            401,
            "signature does not match",
        ),
        (
            "signature of other bytes",
            "/hooks/refusals",
            signed(good_sig.clone()),
            br#"{"repo":"y"}"#.to_vec(),
            401,
            "signature does not match",
        ),
        (
            "garbage signature",
            "/hooks/refusals",
            signed("sha256=zz".into()),
            body.clone(),
            401,
            "signature does not match",
        ),
        (
            "malformed JSON",
            "/hooks/refusals",
            signed(sha(SECRET, &not_json)),
            not_json.clone(),
            400,
            "malformed body",
        ),
        (
            "no topic",
            "/hooks/refusals",
            vec![("X-Perch-Signature", good_sig.clone())],
            body.clone(),
            400,
            "no topic",
        ),
        (
            "body over the limit",
            "/hooks/refusals",
            signed(sha(SECRET, &big)),
            big.clone(),
            413,
            "larger than the configured limit",
        ),
        (
            "unknown connector",
            "/hooks/nope",
            vec![],
            body.clone(),
            404,
            "unknown connector `nope`",
        ),
        (
            "unknown sub-path",
            "/hooks/refusals/extra",
            vec![("X-Perch-Signature", good_sig.clone())],
            body.clone(),
            404,
            "no such path",
        ),
        (
            "send-only connector",
            "/hooks/chat",
            vec![],
            body.clone(),
            400,
            "malformed body",
        ),
    ];
    for (what, path, headers, body, status, reason) in cases {
        let mut req = client.post(t.url(path)).body(body);
        for (h, v) in headers {
            req = req.header(h, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let err: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: error body is JSON: {e}"));
        let msg = err["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: has an error line"));
        assert!(
            msg.contains(reason),
            "{what}: {msg:?} should mention {reason:?}"
        );
        assert!(!msg.contains('\n'), "{what}: one line");
    }
    assert_eq!(
        api(&t, "/api/events").await["events"],
        json!([]),
        "nothing stored"
    );
    t.assert_metric("perch_events_rejected_total{connector=\"refusals\",status=\"401\"} 4")
        .await;
}

#[tokio::test]
async fn timestamped_signatures_have_a_window() {
    let s = sink().await;
    let cfg = config(&s.uri(), NOTIFY).replace(
        "chat_pointer = \"/chat\"",
        "chat_pointer = \"/chat\"\ntimestamp_header = \"X-Perch-Timestamp\"\ntolerance = \"5m\"",
    );
    let t = TestPerch::start(&cfg).await;
    let body = br#"{"repo":"z"}"#;
    let send = |ts: i64| {
        let signed = [ts.to_string().as_bytes(), b".", body].concat();
        reqwest::Client::new()
            .post(t.url("/hooks/events"))
            .header("X-Perch-Topic", "build.failed")
            .header("X-Perch-Timestamp", ts.to_string())
            .header(
                "X-Perch-Signature",
                format!("sha256={}", sign(SECRET, &signed)),
            )
            .body(body.to_vec())
            .send()
    };
    let now = chrono::Utc::now().timestamp();
    assert_eq!(send(now - 3600).await.unwrap().status(), 401, "an hour old");
    assert_eq!(
        send(now + 3600).await.unwrap().status(),
        401,
        "an hour ahead"
    );
    assert_eq!(send(now - 10).await.unwrap().status(), 200);
    wait_sent(&s, 1).await;
}

#[tokio::test]
async fn every_matching_route_fires_each_bot_once_until_a_stop() {
    let s = sink().await;
    let routes = r#"
[bots.a]
kind = "notify"
connector = "chat"
chat = "c"
text = "a:{{payload.n}}"

[bots.b]
kind = "notify"
connector = "chat"
chat = "c"
text = "b:{{payload.n}}"

[bots.c]
kind = "notify"
connector = "chat"
chat = "c"
text = "c:{{payload.n}}"

[[routes]]
topic = "deal.*"
bots = ["a"]

[[routes]]
connector = "events"
topic = "deal.won"
payload = { "/region" = "east" }
bots = ["a", "b"]
stop = true

[[routes]]
topic = "deal.won"
bots = ["c"]
"#;
    let t = TestPerch::start(&config(&s.uri(), routes)).await;
    // deal.won east: route 1 (a) and route 2 (a again, b) fire; route 2 stops before c.
    post_event(&t, "deal.won", "1", br#"{"n":1,"region":"east"}"#).await;
    // deal.won west: route 2's payload test fails, so route 3 fires: a and c.
    post_event(&t, "deal.won", "2", br#"{"n":2,"region":"west"}"#).await;
    // deal.lost: only route 1.
    post_event(&t, "deal.lost", "3", br#"{"n":3}"#).await;
    // other.topic: nothing; journaled as unrouted.
    post_event(&t, "other.topic", "4", br#"{"n":4}"#).await;
    let got = wait_sent(&s, 5).await;
    let mut texts: Vec<String> = got.iter().map(text_of).collect();
    texts.sort();
    assert_eq!(texts, vec!["a:1", "a:2", "a:3", "b:1", "c:2"]);
    let events = api(&t, "/api/events").await;
    let unrouted: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["fate"]["state"] == "unrouted")
        .collect();
    assert_eq!(unrouted.len(), 1);
    assert_eq!(unrouted[0]["event"]["topic"], "other.topic");
}

/// A chat message from the test kit's platform, @mentioning `bots`.
fn kit_message(hub: &TestHub, text: &str, bots: &[&str]) -> Event {
    let mut e = hub.event(EventKind::Message);
    e.text = Some(text.to_string());
    e.message_id = Some(format!("om_in_{}", e.id));
    e.mentions = bots
        .iter()
        .map(|b| Mention {
            person: Person {
                id: b.to_string(),
                name: Some(b.to_string()),
            },
            is_bot: true,
        })
        .collect();
    e
}

#[tokio::test]
async fn messages_route_by_mention_command_and_text() {
    let routes = r#"
[bots.echo]
kind = "echo"

[bots.help]
kind = "help"

[[routes]]
connector = "chat"
mention = "*"
command = "gmv"
bots = ["echo"]

[[routes]]
connector = "chat"
mention = "help"
bots = ["help"]

[[routes]]
connector = "chat"
text = "(?i)^ping$"
bots = ["echo"]
"#;
    let hub = TestHub::start(perch::Hub::builder(), routes).await;
    let gmv = kit_message(&hub, "@bot GMV 昨天", &["bot"]);
    let asked_in = gmv.message_id.clone().unwrap();
    let (_, got) = hub.post(gmv).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].text(), "GMV 昨天");
    assert_eq!(got[0].json["to"], json!({"type": "chat", "id": ROOM}));
    assert_eq!(
        got[0].json["reply_to"], asked_in,
        "replies go to the message's thread"
    );
    // Not addressed to a bot: the mention route does not fire; the text route does.
    let (_, got) = hub.post(kit_message(&hub, "PING", &[])).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].text(), "PING");
    // A typo gets the nearest command.
    let (_, got) = hub.post(kit_message(&hub, "@bot gmb 昨天", &["bot"])).await;
    assert!(
        got[0].text().contains("Did you mean `gmv`?"),
        "{}",
        got[0].text()
    );
    // @help lists the commands of the bots reachable here.
    let (_, got) = hub.post(kit_message(&hub, "@help", &["help"])).await;
    assert_eq!(got[0].json["body"]["type"], "markdown");
    assert!(got[0].text().contains("@echo"), "{}", got[0].text());
    assert_eq!(hub.platform().ops().len(), 4, "one answer each, no repeats");
}

/// Two notify bots on topic `x`: `strict` fails (its template reads a missing field),
/// `fine` answers `fine <n>` in chat `c`.
const STRICT_AND_FINE: &str = r#"
[bots.strict]
kind = "notify"
connector = "chat"
chat = "c"
text = "{{payload.missing.field}}"

[bots.fine]
kind = "notify"
connector = "chat"
chat = "c"
text = "fine {{payload.n}}"

[[routes]]
topic = "x"
bots = ["strict", "fine"]
"#;

#[tokio::test]
async fn a_failing_bot_answers_politely_and_the_router_goes_on() {
    let routes = format!(
        r#"
[bots.echo]
kind = "echo"

[[routes]]
connector = "chat"
mention = "echo"
bots = ["echo"]
{STRICT_AND_FINE}"#
    );
    let hub = TestHub::start(perch::Hub::builder(), &routes).await;
    // A user error: echo with nothing to say answers with its usage.
    let (_, got) = hub.post(kit_message(&hub, "@echo", &["echo"])).await;
    assert!(
        got[0].text().contains("say something after @echo"),
        "{}",
        got[0].text()
    );
    // A template error in one bot: the other bot still runs; the fate names the failure.
    let mut tick = hub.event(EventKind::System);
    tick.chat = None;
    tick.topic = Some("x".into());
    tick.payload = json!({"n": 7});
    let (id, got) = hub.post(tick).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].text(), "fine 7");
    let entry = hub.perch().store().event(id).await.unwrap().unwrap();
    let Fate::Routed { failures, .. } = entry.fate else {
        panic!("not routed: {:?}", entry.fate);
    };
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].bot, "strict");
    assert!(
        failures[0].error.contains("template"),
        "{}",
        failures[0].error
    );
}

#[tokio::test]
async fn transient_failures_are_retried_and_delivered_once() {
    let s = perch::testing::fails_then(
        "POST",
        ResponseTemplate::new(503),
        2,
        ResponseTemplate::new(200),
    )
    .await;
    // Its own connector name, so the retry counter below is this test's alone.
    let cfg = config(&s.uri(), NOTIFY)
        .replace("[connectors.chat]", "[connectors.retried]")
        .replace("connector = \"chat\"", "connector = \"retried\"");
    let t = TestPerch::start(&cfg).await;
    post_event(&t, "build.failed", "r1", br#"{"repo":"r"}"#).await;
    let got = wait_sent(&s, 3).await;
    assert!(
        got.iter().all(|b| b["key"] == got[0]["key"]),
        "every attempt carries the same idempotency key"
    );
    eventually(5, "outbox drained", || async {
        (api(&t, "/api/status").await["outbox_depth"] == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sent(&s).await.len(),
        3,
        "two failures, one success, nothing more"
    );
    t.assert_metric("perch_outbox_attempts_total{connector=\"retried\",result=\"retry\"} 2")
        .await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let s = perch::testing::fails_then(
        "POST",
        ResponseTemplate::new(429).insert_header("retry-after", "1"),
        1,
        ResponseTemplate::new(200),
    )
    .await;
    let t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    let started = Instant::now();
    post_event(&t, "build.failed", "ra", br#"{"repo":"r"}"#).await;
    wait_sent(&s, 2).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the second attempt waited for Retry-After (1 s), not the 50 ms backoff"
    );
}

#[tokio::test]
async fn permanent_failures_go_to_dead_letters_and_replay_delivers() {
    let s = perch::testing::fails_then(
        "POST",
        ResponseTemplate::new(400).set_body_string("bad chat"),
        1,
        ResponseTemplate::new(200),
    )
    .await;
    let t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    post_event(&t, "build.failed", "p1", br#"{"repo":"r"}"#).await;
    let dead = eventually(5, "a dead letter", || async {
        let d = api(&t, "/api/dead-letters").await;
        (d["dead_letters"].as_array().is_some_and(|a| a.len() == 1)).then_some(d)
    })
    .await;
    let letter = &dead["dead_letters"][0];
    assert!(
        letter["error"].as_str().unwrap().contains("HTTP 400"),
        "{letter}"
    );
    assert_eq!(sent(&s).await.len(), 1, "a 400 is not retried");
    let key = letter["item"]["key"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .post(t.url("/api/dead-letters/replay"))
        .query(&[("key", key)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_sent(&s, 2).await;
    eventually(5, "recorded as sent", || async {
        let r = reqwest::Client::new()
            .get(t.url("/api/sent"))
            .query(&[("key", key)])
            .send()
            .await
            .unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
    let missing = reqwest::Client::new()
        .post(t.url("/api/dead-letters/replay"))
        .query(&[("key", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The console's view of one event: its deliveries by outbox key (dead, then sent after
/// a replay), and "replay all" for a connector, which queues each dead letter once.
#[tokio::test]
async fn an_event_shows_its_deliveries_and_replay_all_is_idempotent() {
    let s = perch::testing::fails_then(
        "POST",
        ResponseTemplate::new(400).set_body_string("bad chat"),
        2,
        ResponseTemplate::new(200),
    )
    .await;
    let t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    let first: Value = post_event(&t, "build.failed", "d1", br#"{"repo":"a"}"#)
        .await
        .json()
        .await
        .unwrap();
    post_event(&t, "build.failed", "d2", br#"{"repo":"b"}"#).await;
    let event_id = first["event_id"].as_str().unwrap().to_string();
    eventually(5, "two dead letters", || async {
        let d = api(&t, "/api/dead-letters").await;
        (d["dead_letters"].as_array().is_some_and(|a| a.len() == 2)).then_some(())
    })
    .await;
    let mine = api(&t, &format!("/api/events/{event_id}/deliveries")).await;
    assert_eq!(mine["dead"].as_array().unwrap().len(), 1, "{mine}");
    assert!(
        mine["dead"][0]["item"]["key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{event_id}/builds/")),
        "{mine}"
    );
    assert_eq!(mine["sent"], json!([]));

    let replay_all = || async {
        let r = reqwest::Client::new()
            .post(t.url("/api/dead-letters/replay-all?connector=chat"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["replayed"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(replay_all().await, 2);
    assert_eq!(
        replay_all().await,
        0,
        "a replayed letter is not queued twice"
    );
    wait_sent(&s, 4).await;
    let mine = eventually(5, "the event's delivery recorded as sent", || async {
        let d = api(&t, &format!("/api/events/{event_id}/deliveries")).await;
        (d["sent"].as_array().is_some_and(|a| a.len() == 1)).then_some(d)
    })
    .await;
    assert_eq!(mine["dead"], json!([]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent(&s).await.len(), 4, "each letter delivered once");
    let unknown = reqwest::Client::new()
        .post(t.url("/api/dead-letters/replay-all?connector=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn too_many_attempts_end_in_dead_letters() {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&s)
        .await;
    let t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    post_event(&t, "build.failed", "m1", br#"{"repo":"r"}"#).await;
    let dead = eventually(10, "a dead letter", || async {
        let d = api(&t, "/api/dead-letters").await;
        (d["dead_letters"].as_array().is_some_and(|a| a.len() == 1)).then_some(d)
    })
    .await;
    assert!(
        dead["dead_letters"][0]["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 attempts")
    );
    assert_eq!(sent(&s).await.len(), 4, "max_attempts = 4");
}

#[tokio::test]
async fn messages_to_one_chat_keep_their_order() {
    let s = sink().await;
    let routes = r#"
[bots.relay]
kind = "notify"
connector = "chat"
chat = "{{payload.chat}}"
text = "{{payload.n}}"

[[routes]]
topic = "seq"
bots = ["relay"]
"#;
    let t = TestPerch::start(&config(&s.uri(), routes)).await;
    // Sequential posts (each acked before the next) to two chats.
    for n in 0..40 {
        let body = format!(r#"{{"n":{n},"chat":"c{}"}}"#, n % 2);
        assert_eq!(
            post_event(&t, "seq", &format!("s{n}"), body.as_bytes())
                .await
                .status(),
            200
        );
    }
    let got = wait_sent(&s, 40).await;
    for chat in ["c0", "c1"] {
        let ns: Vec<u64> = got
            .iter()
            .filter(|b| b["to"]["id"] == chat)
            .map(|b| text_of(b).parse().unwrap())
            .collect();
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, sorted, "order in {chat}");
        assert_eq!(ns.len(), 20);
    }
}

#[tokio::test]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let s = sink().await;
    let cfg = config(&s.uri(), NOTIFY).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nadmin_token = \"adm1n\"",
    );
    let t = TestPerch::start(&cfg).await;
    let client = reqwest::Client::new();
    for path in [
        "/api/status",
        "/api/events",
        "/api/outbox",
        "/api/dead-letters",
    ] {
        assert_eq!(
            client.get(t.url(path)).send().await.unwrap().status(),
            401,
            "{path} without token"
        );
        assert_eq!(
            client
                .get(t.url(path))
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap()
                .status(),
            401,
            "{path} wrong token"
        );
        assert_eq!(
            client
                .get(t.url(path))
                .bearer_auth("adm1n")
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path} with token"
        );
    }
    // Health and metrics stay open for probes.
    assert_eq!(
        client.get(t.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client.get(t.url("/metrics")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn secrets_never_show() {
    let s = sink().await;
    let text = config(&s.uri(), NOTIFY);
    let cfg = perch::config::Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
    let debug = format!("{cfg:?}");
    assert!(!debug.contains(SECRET), "Debug shows no secret");
    // A connector's settings are not printed at all (only its kind): they hold secrets.
    assert!(debug.contains("ConnectorConfig { kind: "), "{debug}");
    let t = TestPerch::start(&text).await;
    let status = reqwest::get(t.url("/api/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!status.contains(SECRET));
}

/// The pending delivery of the one event posted as `delivery`, once it has been tried.
async fn waiting_delivery(t: &TestPerch, event_id: &str) -> Value {
    eventually(5, "a tried delivery", || async {
        let d = api(t, &format!("/api/events/{event_id}/deliveries")).await;
        let item = d["pending"].get(0).cloned()?;
        item.get("waiting").is_some().then_some(item)
    })
    .await
}

/// The console's Deliveries say why a delivery waits: a rate limit with the wait the
/// platform asked for, a Retry-After on a failure, or our own backoff.
#[tokio::test]
async fn a_waiting_delivery_says_why_and_until_when() {
    let cases = [
        (
            ResponseTemplate::new(429).insert_header("retry-after", "30"),
            json!({"reason": "rate_limit", "platform_wait_ms": 30_000}),
            (30, 31),
        ),
        (
            ResponseTemplate::new(503).insert_header("retry-after", "20"),
            json!({"reason": "retry_after", "platform_wait_ms": 20_000}),
            (20, 21),
        ),
        (
            ResponseTemplate::new(500),
            json!({"reason": "backoff", "attempt": 1}),
            // 10 s backoff, plus backon's jitter (up to the delay again).
            (10, 20),
        ),
    ];
    for (answer, want, (least, most)) in cases {
        let s = perch::testing::fails_then("POST", answer, 1, ResponseTemplate::new(200)).await;
        // A long backoff, so the item is still waiting when we look.
        let cfg = config(&s.uri(), NOTIFY).replace(
            "min_backoff = \"50ms\"\nmax_backoff = \"200ms\"",
            "min_backoff = \"10s\"\nmax_backoff = \"10s\"",
        );
        let t = TestPerch::start(&cfg).await;
        let before = chrono::Utc::now();
        let ack: Value = post_event(&t, "build.failed", "w1", br#"{"repo":"r"}"#)
            .await
            .json()
            .await
            .unwrap();
        let item = waiting_delivery(&t, ack["event_id"].as_str().unwrap()).await;
        assert_eq!(item["waiting"], want, "{item}");
        let next_at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(item["next_at"].clone()).unwrap();
        let wait = (next_at - before).num_milliseconds();
        assert!(
            wait >= least * 1000 - 100 && wait <= most * 1000 + 1_000,
            "next try {wait} ms after the post, for a wait of {least}..{most} s: {item}"
        );
        // The outbox list (the Deliveries page) shows the same.
        let outbox = api(&t, "/api/outbox").await;
        assert_eq!(outbox["items"][0]["waiting"], want);
        assert_eq!(sent(&s).await.len(), 1, "tried once, now waiting");
    }
}

/// The console's Events list is live over SSE: an accepted event, then its fate, are
/// pushed as they happen; `since` leaves older events out, and a bad time is refused.
#[tokio::test]
async fn the_live_event_stream_pushes_new_events_and_their_fates() {
    let s = sink().await;
    let t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    let mut live = Sse::open(reqwest::Client::new().get(t.url("/api/events/stream"))).await;
    let ack: Value = post_event(&t, "build.failed", "live-1", br#"{"repo":"r"}"#)
        .await
        .json()
        .await
        .unwrap();
    let id = ack["event_id"].as_str().unwrap();
    let seen = live.until(r#""state":"routed""#).await;
    assert!(seen.contains("event: entry"), "{seen}");
    assert!(seen.contains(id), "the entry names the event: {seen}");

    // A stream from a time after that event hears of newer events only.
    let later = chrono::Utc::now() + chrono::Duration::milliseconds(5);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut from_later = Sse::open(
        reqwest::Client::new()
            .get(t.url("/api/events/stream"))
            .query(&[("since", later.to_rfc3339())]),
    )
    .await;
    let second: Value = post_event(&t, "build.failed", "live-2", br#"{"repo":"s"}"#)
        .await
        .json()
        .await
        .unwrap();
    let second_id = second["event_id"].as_str().unwrap();
    let seen = from_later.until(r#""state":"routed""#).await;
    assert!(seen.contains(second_id), "{seen}");
    assert!(!seen.contains(id), "the older event is not pushed: {seen}");

    // The list takes the same time filter.
    let listed = api(
        &t,
        &format!("/api/events?since={}", url_escape(&later.to_rfc3339())),
    )
    .await;
    let ids = event_ids(&listed);
    assert_eq!(ids, [second_id]);
    let listed = api(
        &t,
        &format!("/api/events?until={}", url_escape(&later.to_rfc3339())),
    )
    .await;
    let ids = event_ids(&listed);
    assert_eq!(ids, [id]);

    // Bad times: one clear line, 400.
    for query in [
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
    ] {
        for path in ["/api/events", "/api/events/stream"] {
            let resp = reqwest::get(t.url(&format!("{path}?{query}")))
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{path}?{query}");
            let body: Value = resp.json().await.unwrap();
            let error = body["error"].as_str().unwrap_or_default();
            assert!(
                (error.contains("since") || error.contains("until")) && !error.contains('\n'),
                "{path}?{query}: {body}"
            );
        }
    }
}

/// `+` in an RFC 3339 offset must not become a space in a query string.
fn url_escape(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// `/api/status` (and the console's Connectors page) gives each connector's last
/// success and last failure with its reason, sending and taking in; in memory, per
/// process.
#[tokio::test]
async fn status_shows_each_connectors_last_success_and_failure() {
    let s = perch::testing::fails_then(
        "POST",
        ResponseTemplate::new(502).set_body_string("upstream\n down"),
        1,
        ResponseTemplate::new(200),
    )
    .await;
    let t = TestPerch::start(&config(&s.uri(), NOTIFY)).await;
    let health = |status: &Value, name: &str| -> Value {
        status["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["health"].clone())
            .unwrap_or_else(|| panic!("no connector {name}: {status}"))
    };
    let fresh = api(&t, "/api/status").await;
    assert_eq!(health(&fresh, "chat")["last_send_ok"], Value::Null);
    assert_eq!(health(&fresh, "events")["events_in"], 0);

    // A refused request: the reason is recorded on the connector it was meant for.
    let refused = reqwest::Client::new()
        .post(t.url("/hooks/events"))
        .header("X-Perch-Topic", "build.failed")
        .header("X-Perch-Signature", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let after_refusal = api(&t, "/api/status").await;
    let events = health(&after_refusal, "events");
    assert_eq!(events["ingests_failed"], 1, "{events}");
    assert!(
        events["last_ingest_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{events}"
    );
    assert_eq!(events["last_ingest_ok"], Value::Null);

    // A good event, whose delivery fails once (502) and then succeeds.
    post_event(&t, "build.failed", "h1", br#"{"repo":"r"}"#).await;
    wait_sent(&s, 2).await;
    let status = eventually(5, "the delivery recorded", || async {
        let st = api(&t, "/api/status").await;
        (health(&st, "chat")["sends_ok"] == 1).then_some(st)
    })
    .await;
    let chat = health(&status, "chat");
    assert_eq!(chat["sends_failed"], 1, "{chat}");
    assert_eq!(
        chat["last_send_failure"]["reason"]
            .as_str()
            .unwrap()
            .lines()
            .count(),
        1,
        "one line: {chat}"
    );
    assert!(
        chat["last_send_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("502"),
        "{chat}"
    );
    let time = |v: &Value| -> chrono::DateTime<chrono::Utc> {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    assert!(
        time(&chat["last_send_ok"]) > time(&chat["last_send_failure"]["at"]),
        "the success came after the failure: {chat}"
    );
    let events = health(&status, "events");
    assert_eq!(events["events_in"], 1, "{events}");
    assert!(events["last_ingest_ok"].is_string(), "{events}");
}

/// The console's Bots page (`GET /api/bots`): each bot's config with its secrets as
/// `***`, the routes that reach it, events handled and failures with the last error.
#[tokio::test]
async fn the_bots_page_shows_config_without_secrets_routes_and_activity() {
    let s = sink().await;
    let routes = format!(
        r#"
[bots.remote]
kind = "http_bot"
url = "http://127.0.0.1:9/bot?token=hush-hush-42"
secret = "hush-hush-42"

[[routes]]
topic = "never"
bots = ["remote"]
{STRICT_AND_FINE}"#
    );
    let t = TestPerch::start(&config(&s.uri(), &routes)).await;
    post_event(&t, "x", "b1", br#"{"n":1}"#).await;
    post_event(&t, "x", "b2", br#"{"n":2}"#).await;
    wait_sent(&s, 2).await;
    let page = eventually(5, "both events counted", || async {
        let page = api(&t, "/api/bots").await;
        let strict = page["bots"]
            .as_array()?
            .iter()
            .find(|b| b["name"] == "strict")?
            .clone();
        (strict["activity"]["events_handled"] == 2).then_some(page)
    })
    .await;
    let text = page.to_string();
    assert!(!text.contains("hush-hush-42"), "a secret shows: {text}");
    let bot = |name: &str| {
        page["bots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no bot {name}: {page}"))
            .clone()
    };
    let remote = bot("remote");
    assert_eq!(remote["kind"], "http_bot");
    assert_eq!(remote["config"]["secret"], "***");
    assert_eq!(remote["config"]["url"], "http://127.0.0.1:9/bot?token=***");
    assert_eq!(remote["routes"][0]["topic"], "never");
    assert_eq!(remote["activity"]["events_handled"], 0);
    let strict = bot("strict");
    assert_eq!(strict["config"]["text"], "{{payload.missing.field}}");
    assert_eq!(strict["routes"].as_array().unwrap().len(), 1);
    assert_eq!(strict["activity"]["failures"], 2, "{strict}");
    assert!(
        strict["activity"]["last_error"]["reason"]
            .as_str()
            .unwrap()
            .contains("template"),
        "{strict}"
    );
    let fine = bot("fine");
    assert_eq!(fine["activity"]["events_handled"], 2);
    assert_eq!(fine["activity"]["failures"], 0);
    assert_eq!(fine["activity"]["last_error"], Value::Null);
}

/// The event ids of an `/api/events` answer, in its order.
fn event_ids(listed: &Value) -> Vec<&str> {
    listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap())
        .collect()
}
