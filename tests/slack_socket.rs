//! Slack Socket Mode end to end: a real perch whose `base_url` points at a fake Slack
//! (tests/fake_slack) that hands out the URL of a fake Socket Mode server
//! (tests/fake_slack/socket.rs); events and clicks arrive as envelopes, answers go out
//! over the Web API as in HTTP mode.

mod fake_slack;

use fake_slack::socket::FakeSocket;
use fake_slack::*;
use perch::testing::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn setup() -> (FakeSlack, FakeSocket, TestPerch) {
    let fake = FakeSlack::start().await;
    fake.add_channel("C_TEAM", &["U_ALICE"]);
    let socket = FakeSocket::start().await;
    fake.lock().socket_url = Some(socket.url.clone());
    let t = TestPerch::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[outbox]
min_backoff = "50ms"
max_backoff = "2s"

[connectors.slack]
kind = "slack"
mode = "socket"
app_token = "{APP_TOKEN}"
bot_token = "{BOT_TOKEN}"
base_url = "{base}"
chat_rate_per_second = 20

[bots.help]
kind = "help"

[bots.echo]
kind = "echo"

[[routes]]
connector = "slack"
mention = "*"
command = "help"
stop = true
bots = ["help"]

[[routes]]
connector = "slack"
mention = "*"
bots = ["echo"]
"#,
        base = fake.base
    ))
    .await;
    eventually(10, "perch connects", || {
        let n = socket.connections();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    (fake, socket, t)
}

async fn acked(socket: &FakeSocket, id: &str) {
    eventually(10, &format!("envelope {id} acknowledged"), || {
        let acks = socket.acks();
        let id = id.to_string();
        async move { acks.contains(&id).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn envelopes_are_acknowledged_once_durable_answered_and_deduplicated() {
    let (fake, socket, t) = setup().await;
    let event = EventSender::mention(&fake, "EvS1", "C_TEAM", "1700000100.000100", "help");
    let first = socket.push("events_api", event.clone());
    acked(&socket, &first).await;
    let m = at_least(10, 1, "the answer", || fake.messages()).await;
    assert_eq!(m[0].channel, "C_TEAM");
    assert_eq!(m[0].thread_ts.as_deref(), Some("1700000100.000100"));

    // Slack sends the same event again in a new envelope: acknowledged, handled once.
    let again = socket.push("events_api", event);
    acked(&socket, &again).await;
    // An envelope perch has nothing to do with is acknowledged too.
    let other = socket.push("slash_commands", json!({ "command": "/x" }));
    acked(&socket, &other).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.messages().len(), 1, "the redelivery is a duplicate");

    // A button click arrives as an `interactive` envelope: a card action for its bot.
    let button = json!({ "action_id": "perch:0", "text": { "type": "plain_text", "text": "Ack" },
        "value": "{\"bot\":\"echo\",\"action\":\"ack\",\"args\":{}}" });
    let click = socket.push(
        "interactive",
        EventSender::click("U_ALICE", "C_TEAM", &m[0].ts, &button, "trig-s1"),
    );
    acked(&socket, &click).await;

    let journal: Value = reqwest::get(t.url("/api/events?limit=100"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = journal["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        2,
        "the mention once, and the click: {events:?}"
    );
    let clicked = events
        .iter()
        .find(|e| e["event"]["kind"] == "card_action")
        .expect("the click is journaled");
    assert_eq!(clicked["event"]["card_action"]["bot"], "echo");
    assert_eq!(
        clicked["event"]["card_action"]["message_id"],
        json!(m[0].ts)
    );
    assert!(socket.violations().is_empty(), "{:?}", socket.violations());
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
    let status = reqwest::get(t.url("/api/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(status.contains("connected"), "{status}");
    assert!(!status.contains(APP_TOKEN), "the app token never shows");
}

#[tokio::test]
async fn a_refresh_reconnects_and_what_was_not_acknowledged_comes_again_once() {
    let (fake, socket, _t) = setup().await;
    socket.disconnect();
    // Sent while perch is between connections: delivered on the next one.
    let pending = socket.push(
        "events_api",
        EventSender::mention(&fake, "EvS2", "C_TEAM", "1700000200.000100", "hello"),
    );
    acked(&socket, &pending).await;
    assert!(socket.connections() >= 2, "a new connection was opened");
    let m = at_least(10, 1, "the echo", || fake.messages()).await;
    assert!(m[0].text.contains("hello"), "{:?}", m[0].text);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.messages().len(), 1);
    assert_eq!(
        fake.calls_to("apps.connections.open").len(),
        socket.connections()
    );
    assert!(socket.violations().is_empty(), "{:?}", socket.violations());
}

#[tokio::test]
async fn in_socket_mode_unsigned_http_requests_are_still_refused() {
    let (fake, _socket, t) = setup().await;
    let body = EventSender::mention(&fake, "EvS3", "C_TEAM", "1700000300.000100", "help");
    let resp = reqwest::Client::new()
        .post(t.url("/hooks/slack"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.messages().is_empty());
}

#[test]
fn perch_check_wants_an_app_token_for_socket_mode() {
    let check = |conn: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.slack]\nkind = \"slack\"\nbot_token = \"xoxb-1\"\n{conn}\n"
        );
        perch::config::Config::from_str(&text, std::path::Path::new("t.toml"))
            .err()
            .map(|e| e.to_string())
    };
    let e = check("mode = \"socket\"").expect("no app token");
    assert!(e.contains("app_token"), "{e}");
    let e = check("mode = \"socket\"\napp_token = \"xoxb-2\"").expect("not an app token");
    assert!(e.contains("xapp-"), "{e}");
    let e = check("signing_secret = \"s\"\napp_token = \"xapp-1\"").expect("http mode");
    assert!(e.contains("only used with mode"), "{e}");
    assert_eq!(check("mode = \"socket\"\napp_token = \"xapp-1\""), None);
}
