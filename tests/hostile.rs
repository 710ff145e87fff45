//! Hostile input at every inbound surface (issue 20): whatever perch acknowledges can be
//! read back and replayed, secrets never reach the journal, and every refusal is one
//! line of JSON.

use perch::testing::fake_feishu;

use fake_feishu::*;
use perch::action::{MessageBody, Operation, Target};
use perch::event::MAX_JSON_DEPTH;
use perch::testing::*;
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-for-hostile-tests";

fn config(fake: &FakeFeishu) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[connectors.hooks]
kind = "webhook"
secret = "{SECRET}"
topic_header = "X-Topic"
id_header = "X-Delivery"

{feishu}
{feishu_plain}
[connectors.web]
kind = "local"
"#,
        feishu = app_connector("feishu", &fake.base, true),
        feishu_plain = app_connector("feishu_plain", &fake.base, false),
    )
}

/// `[[…]]`, `depth` levels deep (built by hand: serde_json's `json!` would recurse).
fn nested(depth: usize) -> Value {
    let mut v = Value::Array(Vec::new());
    for _ in 1..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// The same as text, for depths serde_json will not serialise either.
fn nested_text(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

async fn post_hook(t: &TestPerch, delivery: &str, body: &[u8]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(t.url("/hooks/hooks"))
        .header("X-Topic", "deep.test")
        .header("X-Delivery", delivery)
        .header(
            "X-Perch-Signature",
            format!("sha256={}", sign(SECRET, body)),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(t: &TestPerch, path: &str) -> (u16, Value) {
    let resp = reqwest::get(t.url(path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every event in the journal, read page by page: each page must answer 200.
async fn all_events(t: &TestPerch) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = "/api/events?limit=3".to_string();
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let (status, page) = get(t, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
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

/// Every event id in the journal reads back, alone and in pages.
async fn assert_all_readable(t: &TestPerch) -> usize {
    let events = all_events(t).await;
    for e in &events {
        let id = e["event"]["id"].as_str().unwrap();
        let (status, body) = get(t, &format!("/api/events/{id}")).await;
        assert_eq!(status, 200, "event {id}: {body}");
    }
    events.len()
}

async fn setup() -> (FakeFeishu, TestPerch) {
    let fake = FakeFeishu::start().await;
    let t = TestPerch::start(&config(&fake)).await;
    (fake, t)
}

/// Finding 1: one depth limit, applied before the ack at every surface; at the limit the
/// event is stored and reads back, one past it (and at 127, the case that once poisoned
/// the journal) it is refused with a 4xx and nothing is stored.
#[tokio::test]
async fn json_at_the_depth_limit_is_stored_and_one_past_is_refused_everywhere() {
    let (fake, mut t) = setup().await;
    let limit = MAX_JSON_DEPTH;

    // Webhook: the body is the payload.
    let (s, at) = post_hook(&t, "d-at", nested_text(limit).as_bytes()).await;
    assert_eq!(s, 200, "{at}");
    let id = at["event_id"].as_str().unwrap();
    let (s, stored) = get(&t, &format!("/api/events/{id}")).await;
    assert_eq!(s, 200, "{stored}");
    assert_eq!(stored["event"]["payload"], nested(limit));
    for (n, depth) in [limit + 1, 127].into_iter().enumerate() {
        let (s, body) = post_hook(&t, &format!("d-past-{n}"), nested_text(depth).as_bytes()).await;
        assert_eq!(s, 422, "depth {depth}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("levels deep"),
            "{body}"
        );
    }
    // Past serde_json's own limit: malformed.
    let (s, _) = post_hook(&t, "d-past-2", nested_text(200).as_bytes()).await;
    assert_eq!(s, 400);

    // Feishu, encrypted and plain: the payload is the envelope (object, `event`, then
    // the field), so the field is `limit - 2` deep at the limit.
    for (hook, key) in [("feishu", Some(KEY)), ("feishu_plain", None)] {
        let sender = EventSender::new(&t.url(&format!("/hooks/{hook}")), TOKEN, key);
        let doc = |id: &str, depth: usize| {
            sender.envelope(
                "im.chat.updated_v1",
                id,
                json!({ "chat_id": "oc_deep", "deep": nested(depth) }),
            )
        };
        let (s, body) = sender.send(&doc(&format!("{hook}-at"), limit - 2)).await;
        assert_eq!(s, 200, "{hook}: {body}");
        let (s, body) = sender.send(&doc(&format!("{hook}-past"), limit - 1)).await;
        assert_eq!(s, 422, "{hook}: {body}");
        let (s, _) = sender.send(&doc(&format!("{hook}-127"), 125)).await;
        assert_eq!(s, 422, "{hook}: 127 levels");

        // The legacy card request URL: the payload is the callback itself.
        let card = |depth: usize| {
            json!({ "open_id": "ou_bob", "open_message_id": "om_deep", "open_chat_id": "oc_deep",
                    "action": { "tag": "button", "value": { "perch": { "bot": "echo", "action": "x" } } },
                    "deep": nested(depth) })
        };
        let (s, body) = sender
            .post("/card", &sender.seal_legacy_card(&card(limit - 1)))
            .await;
        assert_eq!(s, 200, "{hook} card: {body}");
        let (s, body) = sender
            .post("/card", &sender.seal_legacy_card(&card(limit)))
            .await;
        assert_eq!(s, 422, "{hook} card: {body}");
    }

    // Web chat: a card click's arguments. A click must name one of the card's own
    // buttons, so the card carries both depths.
    let web = t.connector("web");
    let button = |depth: usize| json!({ "label": depth.to_string(), "action": { "bot": "echo", "action": "x", "args": nested(depth) } });
    let card = json!({ "elements": [
        { "type": "buttons", "buttons": [button(limit), button(limit + 1)] }
    ] });
    let sent = web
        .execute(
            &Operation::Send {
                to: Target::chat("general"),
                body: MessageBody::Card { card },
                reply_to: None,
            },
            "k/deep/0",
        )
        .await
        .unwrap();
    let message_id = sent.id.unwrap();
    let click = |depth: usize, client: &str| {
        json!({ "message_id": message_id, "author": "ann", "client_id": client,
                "action": { "bot": "echo", "action": "x", "args": nested(depth) } })
    };
    let http = reqwest::Client::new();
    for (depth, client, want) in [(limit, "c-at", 200), (limit + 1, "c-past", 422)] {
        let resp = http
            .post(t.url("/chat/api/rooms/general/actions"))
            .json(&click(depth, client))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "web chat args {depth}: {body}");
    }

    // What was acknowledged: webhook 1, Feishu 2 × (event + card), web chat 1.
    assert_eq!(assert_all_readable(&t).await, 6);
    // The connector holds the store: let go of it before the restart.
    drop(web);
    drop(fake);
    // And after a restart (replayed from the store and the ingest log).
    t.restart().await;
    assert_eq!(assert_all_readable(&t).await, 6);
}

/// Every string in `v` (keys included), flattened, to look for secrets.
fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET, TOKEN, KEY, APP_SECRET] {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret:?}: {text}"
        );
    }
}

/// Finding 2: no configured secret appears anywhere in `/api` output after each
/// connector's fixtures, including the legacy card callback's top-level `token`.
#[tokio::test]
async fn no_configured_secret_reaches_the_admin_api() {
    let (fake, t) = setup().await;
    // Webhook: a sender that echoes the secret in its body.
    let (s, _) = post_hook(
        &t,
        "sec-1",
        json!({ "secret": SECRET, "note": format!("signed with {SECRET}") })
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(s, 200);
    for (hook, key) in [("feishu", Some(KEY)), ("feishu_plain", None)] {
        let sender = EventSender::new(&t.url(&format!("/hooks/{hook}")), TOKEN, key);
        let doc = sender.text_message(&fake, &format!("{hook}-m"), "om_s", "oc_s", "hi", false);
        assert_eq!(sender.send(&doc).await.0, 200, "{hook}");
        // A 1.0 envelope, and an unknown event type echoing the token elsewhere.
        let v1 = json!({ "uuid": format!("{hook}-u1"), "token": TOKEN, "ts": "1", "type": "event_callback",
                         "event": { "type": "message", "chat_id": "oc_s", "text": "hi" } });
        assert_eq!(sender.send(&v1).await.0, 200, "{hook} 1.0");
        let other = sender.envelope(
            "im.chat.updated_v1",
            &format!("{hook}-o"),
            json!({ "chat_id": "oc_s", "echo": { "token": TOKEN, "key": KEY } }),
        );
        assert_eq!(sender.send(&other).await.0, 200, "{hook} other");
        // The legacy card URL, with the verification token at the top level.
        let legacy = json!({ "open_id": "ou_bob", "open_message_id": "om_s", "open_chat_id": "oc_s", "token": TOKEN,
                             "action": { "tag": "button", "value": { "perch": { "bot": "echo", "action": "x", "args": { "t": TOKEN } } } } });
        let (s, body) = sender
            .post("/card", &sender.seal_legacy_card(&legacy))
            .await;
        assert_eq!(s, 200, "{hook} legacy: {body}");
    }
    let events = all_events(&t).await;
    assert_eq!(events.len(), 9);
    for path in [
        "/api/status",
        "/api/events?limit=1000",
        "/api/outbox",
        "/api/dead-letters",
        "/api/sent",
        "/api/schedules",
        "/api/cards",
    ] {
        let text = t.get_text(path).await;
        assert_no_secret(path, &text);
    }
    for e in &events {
        let id = e["event"]["id"].as_str().unwrap();
        assert_no_secret(id, &t.get_text(&format!("/api/events/{id}")).await);
    }
}

/// Finding 5: every refusal is one line of JSON `{"error": "…"}`, whatever produced it
/// (method routing, an extractor, the body limit).
#[tokio::test]
async fn every_refusal_is_one_line_of_json() {
    let fake = FakeFeishu::start().await;
    let t = TestPerch::start(&config(&fake).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nbody_limit = 4096",
    ))
    .await;
    let http = reqwest::Client::new();
    // A POST that says it is JSON, with `body` as it is (often not JSON at all).
    let post_json_text = |path: &str, body: &[u8]| {
        http.post(t.url(path))
            .header("content-type", "application/json")
            .body(body.to_vec())
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("405 on an admin path", http.post(t.url("/api/status")), 405),
        ("405 on a hook", http.get(t.url("/hooks/hooks")), 405),
        (
            "405 on the web chat",
            http.delete(t.url("/chat/api/rooms")),
            405,
        ),
        (
            "invalid UTF-8 in a path parameter",
            http.get(t.url("/api/events/%FF%FE")),
            400,
        ),
        (
            "invalid UTF-8 in a hook name",
            http.post(t.url("/hooks/%C3%28")),
            400,
        ),
        (
            "a negative limit",
            http.get(t.url("/api/events?limit=-1")),
            400,
        ),
        (
            "a limit that is not a number",
            http.get(t.url("/api/outbox?limit=x")),
            400,
        ),
        ("a missing key", http.get(t.url("/api/sent")), 400),
        (
            "an events limit that is not a number",
            http.get(t.url("/api/events?limit=x")),
            400,
        ),
        (
            "a `since` that is not a time",
            http.get(t.url("/api/events?since=garbage")),
            400,
        ),
        (
            "a path id that is not an event id",
            http.get(t.url("/api/events/not-an-id/deliveries")),
            400,
        ),
        (
            "a schedules count that is not a number",
            http.get(t.url("/api/schedules?count=many")),
            400,
        ),
        (
            "malformed JSON to the card renderer",
            post_json_text("/api/cards/render", b"{\"platform\": "),
            400,
        ),
        (
            "malformed JSON to the web chat",
            post_json_text("/chat/api/rooms", b"{\"name\": "),
            400,
        ),
        (
            "malformed JSON to the card studio's send",
            post_json_text("/api/cards/send", b"{\"template\": "),
            400,
        ),
        (
            "malformed JSON to a Bots page press",
            post_json_text("/api/bots/tasks/items/i1/press", b"{\"action\": "),
            400,
        ),
        (
            "an oversized web chat message",
            post_json_text("/chat/api/rooms/general/messages", &[b' '; 8192]),
            413,
        ),
        (
            "a web chat body without a JSON content type",
            http.post(t.url("/chat/api/rooms"))
                .header("content-type", "text/plain")
                .body("{\"name\": \"x\"}"),
            415,
        ),
        (
            "a web chat history limit that is not a number",
            http.get(t.url("/chat/api/rooms/general/messages?limit=x")),
            400,
        ),
        (
            "a hook without its signature header",
            http.post(t.url("/hooks/hooks"))
                .header("X-Topic", "t")
                .body("{}"),
            401,
        ),
        (
            "actions for a bot that does not exist",
            http.post(t.url("/api/bots/nobody/actions")).body("{}"),
            404,
        ),
        (
            "an oversized card render",
            http.post(t.url("/api/cards/render")).body(vec![b' '; 8192]),
            413,
        ),
        (
            "an oversized hook body",
            http.post(t.url("/hooks/hooks")).body(vec![b' '; 8192]),
            413,
        ),
        ("an unknown path", http.get(t.url("/nowhere")), 404),
    ];
    for (what, req, want) in cases {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{what}: {text}");
        assert!(
            ct.starts_with("application/json"),
            "{what}: content-type {ct:?}"
        );
        assert_eq!(text.lines().count(), 1, "{what}: one line: {text:?}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        let reason = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {text}"));
        assert!(!reason.is_empty(), "{what}");
    }
}

/// How long `stream` stays open (reading and discarding), up to `max`.
async fn open_for(
    stream: &mut tokio::net::TcpStream,
    max: std::time::Duration,
) -> std::time::Duration {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(max, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    start.elapsed()
}

const SLOW: &str = r#"
[server]
listen = "127.0.0.1:0"
header_read_timeout = "300ms"
body_read_timeout = "400ms"
idle_timeout = "500ms"
max_connections = 4

[connectors.hooks]
kind = "webhook"
insecure = true
topic = "slow"
"#;

/// Finding 3: slow clients are cut off: trickled headers, a trickled body, a connection
/// that sends nothing, an idle keep-alive; and connections beyond the cap wait.
#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let t = TestPerch::start(SLOW).await;
    let limit = Duration::from_secs(3);

    // Nothing sent at all: closed by the idle watchdog (500 ms).
    let mut silent = TcpStream::connect(t.addr).await.unwrap();
    let open = open_for(&mut silent, limit).await;
    assert!(
        open < Duration::from_secs(2),
        "silent connection open {open:?}"
    );

    // Headers trickled a byte every 100 ms: closed by the header timeout (300 ms).
    let mut trickle = TcpStream::connect(t.addr).await.unwrap();
    let start = std::time::Instant::now();
    let head = b"POST /hooks/hooks HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut = false;
    for b in head.iter() {
        if trickle.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if start.elapsed() > limit {
            break;
        }
    }
    let open = start.elapsed() + open_for(&mut trickle, Duration::from_millis(200)).await;
    assert!(
        cut || open < Duration::from_secs(2),
        "trickled headers open {open:?}"
    );

    // A body trickled against a large Content-Length: 408 within the body timeout.
    let mut body = TcpStream::connect(t.addr).await.unwrap();
    body.write_all(b"POST /hooks/hooks HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..30 {
            if body.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        body
    });
    let mut body = writer.await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::io::AsyncReadExt::read_to_end(&mut body, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "trickled body: {answer:?} after {:?}",
        start.elapsed()
    );
    assert!(answer.contains("body_read_timeout"), "{answer}");

    // An idle keep-alive after a request: closed.
    let mut keep = TcpStream::connect(t.addr).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let open = open_for(&mut keep, limit).await;
    assert!(
        open < Duration::from_secs(2),
        "idle keep-alive open {open:?}"
    );

    // The cap: with 4 connections held open, a fifth is not served until one closes.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        // Keep each busy: a slowly sent body (the 408 arrives after 400 ms).
        s.write_all(b"POST /hooks/hooks HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fifth =
        tokio::time::timeout(Duration::from_millis(200), reqwest::get(t.url("/healthz"))).await;
    assert!(fifth.is_err(), "a fifth connection waits while 4 are open");
    // Once they are cut off, it is served.
    let late = tokio::time::timeout(Duration::from_secs(3), reqwest::get(t.url("/healthz")))
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert_eq!(late.status(), 200);
    drop(held);
}

/// `perch check` refuses nonsense connection limits.
#[test]
fn nonsense_connection_limits_are_refused() {
    for (line, key) in [
        ("header_read_timeout = \"0s\"", "header_read_timeout"),
        ("body_read_timeout = \"30days\"", "body_read_timeout"),
        ("idle_timeout = \"1ms\"", "idle_timeout"),
        ("max_connections = 0", "max_connections"),
        ("body_limit = 0", "body_limit"),
    ] {
        let text = format!("[server]\n{line}\n");
        let err = perch::config::Config::from_str(&text, std::path::Path::new("perch.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(key) && err.contains("perch.toml:2"),
            "{line}: {err:?}"
        );
    }
}

async fn post_json(t: &TestPerch, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(t.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Finding 6: a delivery id that is not UTF-8 is refused (it would go undeduplicated),
/// and an extreme timestamp gets a true figure in its refusal, not a wrapped one.
#[tokio::test]
async fn webhook_headers_are_refused_with_reasons() {
    let t = TestPerch::start(
        r#"
[server]
listen = "127.0.0.1:0"

[connectors.hooks]
kind = "webhook"
secret = "s3cret-s3cret"
topic = "t"
id_header = "X-Delivery"

[connectors.stamped]
kind = "webhook"
secret = "s3cret-s3cret"
topic = "t"
timestamp_header = "X-Timestamp"
"#,
    )
    .await;
    let body = b"{}";
    let sig = format!("sha256={}", sign("s3cret-s3cret", body));
    let resp = reqwest::Client::new()
        .post(t.url("/hooks/hooks"))
        .header("X-Perch-Signature", &sig)
        .header(
            "X-Delivery",
            reqwest::header::HeaderValue::from_bytes(b"id-\xff\xfe").unwrap(),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("X-Delivery"), "{v}");
    assert!(all_events(&t).await.is_empty(), "nothing stored");

    for ts in [i64::MIN, i64::MIN + 1, i64::MAX] {
        let signed = format!("{ts}.{}", String::from_utf8_lossy(body));
        let resp = reqwest::Client::new()
            .post(t.url("/hooks/stamped"))
            .header(
                "X-Perch-Signature",
                format!("sha256={}", sign("s3cret-s3cret", signed.as_bytes())),
            )
            .header("X-Timestamp", ts.to_string())
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "timestamp {ts}");
        let v: Value = resp.json().await.unwrap();
        let reason = v["error"].as_str().unwrap();
        let skew: u128 = reason
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{reason}"));
        let now = i128::from(chrono::Utc::now().timestamp());
        let truth = (now - i128::from(ts)).unsigned_abs();
        assert!(
            skew.abs_diff(truth) < 60,
            "timestamp {ts}: {reason} (true skew {truth})"
        );
    }
}

/// Finding 6: web-chat names are normalised; invisible characters and perch's own names
/// are refused; room names without a letter or digit are refused, and two different
/// names never end up in one room.
#[tokio::test]
async fn web_chat_names_are_normalised_and_never_merge_rooms() {
    let t = TestPerch::start(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.web]\nkind = \"local\"\n",
    )
    .await;
    let say = |author: &str, n: usize| json!({ "author": author, "text": "hi", "client_id": format!("c-{n}") });
    for (n, author) in [
        "ann\u{200b}",
        "\u{202e}nna",
        "perch",
        "Scheduler",
        "ann\u{feff}",
    ]
    .into_iter()
    .enumerate()
    {
        let (s, body) = post_json(&t, "/chat/api/rooms/general/messages", &say(author, n)).await;
        assert_eq!(s, 400, "{author:?}: {body}");
    }
    let (s, body) = post_json(
        &t,
        "/chat/api/rooms/general/messages",
        &say("  Ann   Lee ", 9),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["author"], "Ann Lee", "{body}");

    for name in [".", "/", "..", "  ", "\u{200b}"] {
        let (s, body) = post_json(&t, "/chat/api/rooms", &json!({ "name": name })).await;
        assert_eq!(s, 400, "{name:?}: {body}");
    }
    let (s, a) = post_json(&t, "/chat/api/rooms", &json!({ "name": "Project X" })).await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = post_json(&t, "/chat/api/rooms", &json!({ "name": "project-x!" })).await;
    assert_eq!(s, 201, "{b}");
    assert_ne!(a["id"], b["id"], "two names, two rooms");
    // The same names again (up to case and spaces) find their own rooms.
    let (s, again) = post_json(&t, "/chat/api/rooms", &json!({ "name": "project  x" })).await;
    assert_eq!((s, &again["id"]), (200, &a["id"]));
    let (s, again) = post_json(&t, "/chat/api/rooms", &json!({ "name": "Project-X!" })).await;
    assert_eq!((s, &again["id"]), (200, &b["id"]));
}

/// Finding 6: an admin token nobody could send is refused by `perch check`.
#[test]
fn an_unsendable_admin_token_is_refused() {
    for listen in ["0.0.0.0:8080", "127.0.0.1:8080"] {
        for token in [" ", "\t", "two words", "tökén"] {
            let text = format!("[server]\nlisten = \"{listen}\"\nadmin_token = \"{token}\"\n");
            let err = perch::config::Config::from_str(&text, std::path::Path::new("perch.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("admin_token"), "{listen} {token:?}: {err:?}");
        }
    }
    let ok = "[server]\nlisten = \"0.0.0.0:8080\"\nadmin_token = \"a-long-token-1234\"\n";
    assert!(perch::config::Config::from_str(ok, std::path::Path::new("perch.toml")).is_ok());
}
