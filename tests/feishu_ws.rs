//! Feishu's long connection (`mode = "websocket"`) end to end: a real perch whose
//! `base_url` points at the fake Open API (tests/fake_feishu), whose endpoint request
//! hands out the fake long-connection server (tests/fake_feishu/ws.rs). Events and
//! clicks go over the socket; replies go through the Open API fake as usual.

use perch::testing::fake_feishu;

use fake_feishu::ws::FakeLongConnection;
use fake_feishu::*;
use perch::testing::*;
use serde_json::{Value, json};
use std::time::Duration;

fn config(fake: &FakeFeishu, secret: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[outbox]
min_backoff = "50ms"
max_backoff = "2s"
max_attempts = 20

[connectors.feishu]
kind = "feishu"
mode = "websocket"
app_id = "{APP_ID}"
app_secret = "{secret}"
verification_token = "{TOKEN}"
encrypt_key = "{KEY}"
base_url = "{base}"
ws_reconnect_min = "100ms"
ws_reconnect_max = "2s"
ws_reconnect_nonce = "0s"

[bots.echo]
kind = "echo"

[[routes]]
connector = "feishu"
kind = "message"
mention = "*"
bots = ["echo"]
"#,
        base = fake.base
    )
}

/// The fakes and perch, connected over the long connection.
async fn setup() -> (FakeFeishu, FakeLongConnection, TestPerch, EventSender) {
    let fake = FakeFeishu::start().await;
    let lc = FakeLongConnection::start().await;
    fake.lock().ws_url = Some(lc.url.clone());
    let t = TestPerch::start(&config(&fake, APP_SECRET)).await;
    let c = t.connector("feishu");
    eventually(10, "bot open_id fetched and connected", || {
        let c = c.clone();
        async move {
            let d = c.describe();
            (d.contains_key("bot_open_id")
                && d.get("connection").map(String::as_str) == Some("connected"))
            .then_some(())
        }
    })
    .await;
    // Only builds envelopes and seals them here: nothing is posted to a hook.
    let sender = EventSender::new("http://127.0.0.1:9/unused", TOKEN, Some(KEY));
    (fake, lc, t, sender)
}

async fn answer(lc: &FakeLongConnection, id: &str) -> fake_feishu::ws::Answer {
    eventually(10, &format!("an answer to {id}"), || {
        let lc = lc.clone();
        let id = id.to_string();
        async move { lc.answers_for(&id).first().cloned() }
    })
    .await
}

async fn messages(fake: &FakeFeishu, n: usize) -> Vec<Message> {
    at_least(15, n, "message(s) at the fake", || fake.messages()).await
}

async fn journal(t: &TestPerch) -> Vec<Value> {
    let v: Value = reqwest::get(t.url("/api/events?limit=1000"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["events"].as_array().cloned().unwrap_or_default()
}

fn click(sender: &EventSender, event_id: &str) -> Value {
    sender.envelope(
        "card.action.trigger",
        event_id,
        json!({
            "operator": { "open_id": "ou_alice", "user_id": "alice", "union_id": "on_alice", "tenant_key": "tk" },
            "token": "c-update", "host": "im_message",
            "action": { "tag": "button", "value": { "perch": { "bot": "echo", "action": "done", "args": { "id": "42" } } } },
            "context": { "open_message_id": "om_card_1", "open_chat_id": "oc_team" }
        }),
    )
}

#[tokio::test]
async fn an_event_over_the_socket_is_journaled_answered_and_replied_through_the_open_api() {
    let (fake, lc, t, sender) = setup().await;
    let doc = sender.text_message(&fake, "ev-ws-1", "om_1", "oc_team", "hello", true);
    // Encrypted, as Feishu sends it when an encrypt key is set.
    let id = lc.send("event", &sender.seal(&doc).body, 1);
    let a = answer(&lc, &id).await;
    assert_eq!(a.code, 200);
    assert_eq!(a.data, Some(json!({ "msg": "success" })));
    let msgs = messages(&fake, 1).await;
    assert_eq!(msgs[0].reply_to.as_deref(), Some("om_1"));
    assert!(msgs[0].content.contains("hello"), "{:?}", msgs[0]);
    // The ping/pong keep-alive runs (the server asks for a ping a second).
    eventually(5, "two pings", || {
        let lc = lc.clone();
        async move { (lc.lock().pings >= 2).then_some(()) }
    })
    .await;
    assert_eq!(journal(&t).await.len(), 1);
    assert!(lc.violations().is_empty(), "{:?}", lc.violations());
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test]
async fn a_fragmented_event_is_reassembled() {
    let (fake, lc, t, sender) = setup().await;
    let doc = sender.text_message(
        &fake,
        "ev-frag",
        "om_frag",
        "oc_team",
        &"long text ".repeat(200),
        true,
    );
    // Plain JSON this time, in 4 fragments sent last-first.
    let id = lc.send("event", doc.to_string().as_bytes(), 4);
    let a = answer(&lc, &id).await;
    assert_eq!(a.code, 200, "{a:?}");
    messages(&fake, 1).await;
    let events = journal(&t).await;
    assert_eq!(events.len(), 1);
    assert!(lc.violations().is_empty(), "{:?}", lc.violations());
}

#[tokio::test]
async fn a_card_click_is_answered_over_the_socket_within_the_deadline() {
    let (fake, lc, _t, sender) = setup().await;
    fake.lock()
        .user_messages
        .insert("om_card_1".into(), "oc_team".into());
    let id = lc.send("event", &sender.seal(&click(&sender, "ev-click")).body, 1);
    let a = answer(&lc, &id).await;
    assert_eq!(a.code, 200);
    assert_eq!(
        a.data,
        Some(json!({ "toast": { "type": "info", "content": "done {\"id\":\"42\"}" } }))
    );
    assert!(
        a.after < Duration::from_secs(3),
        "answered after {:?}",
        a.after
    );
    assert!(a.biz_rt_ms < 3000);
    // The same callback in a frame of `type: card`: answered the same way.
    let id = lc.send(
        "card",
        &sender.seal(&click(&sender, "ev-click-card")).body,
        1,
    );
    let a = answer(&lc, &id).await;
    assert_eq!(
        a.data,
        Some(json!({ "toast": { "type": "info", "content": "done {\"id\":\"42\"}" } }))
    );
    assert!(
        a.after < Duration::from_secs(3),
        "answered after {:?}",
        a.after
    );
}

#[tokio::test]
async fn a_redelivered_event_is_handled_once() {
    let (fake, lc, t, sender) = setup().await;
    let doc = sender.text_message(&fake, "ev-twice", "om_twice", "oc_team", "once", true);
    let first = lc.send("event", doc.to_string().as_bytes(), 1);
    assert_eq!(answer(&lc, &first).await.code, 200);
    // Feishu delivers the same event again (a new message on the socket, same event_id).
    let again = lc.send("event", doc.to_string().as_bytes(), 1);
    assert_eq!(answer(&lc, &again).await.code, 200);
    messages(&fake, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.messages().len(), 1, "handled twice");
    assert_eq!(journal(&t).await.len(), 1);
    // A redelivered click gets the first click's answer, and is journaled once.
    fake.lock()
        .user_messages
        .insert("om_card_1".into(), "oc_team".into());
    let c = click(&sender, "ev-click-twice").to_string();
    let a1 = answer(&lc, &lc.send("event", c.as_bytes(), 1)).await;
    let a2 = answer(&lc, &lc.send("event", c.as_bytes(), 1)).await;
    assert_eq!(a1.data, a2.data);
    assert_eq!(journal(&t).await.len(), 2);
}

#[tokio::test]
async fn a_dropped_connection_reconnects_and_nothing_acknowledged_is_lost() {
    let (fake, lc, t, sender) = setup().await;
    let c = t.connector("feishu");
    let a = sender.text_message(&fake, "ev-a", "om_a", "oc_team", "before", true);
    let id_a = lc.send("event", a.to_string().as_bytes(), 1);
    assert_eq!(answer(&lc, &id_a).await.code, 200);

    // The TCP connection drops (no Close frame).
    lc.force_disconnect();
    eventually(10, "reconnected after a drop", || {
        let lc = lc.clone();
        async move { (lc.connections() >= 2).then_some(()) }
    })
    .await;
    // Sent while perch was away: delivered on the new connection, or again after it.
    let b = sender.text_message(&fake, "ev-b", "om_b", "oc_team", "during", true);
    let id_b = lc.send("event", b.to_string().as_bytes(), 1);
    assert_eq!(answer(&lc, &id_b).await.code, 200);

    // An event on the wire when the connection drops: perch may have stored it, but its
    // answer is lost. Feishu delivers it again on the next connection; stored once.
    let e = sender.text_message(&fake, "ev-e", "om_e", "oc_team", "in flight", true);
    let id_e = lc.send("event", e.to_string().as_bytes(), 1);
    lc.force_disconnect();
    assert_eq!(answer(&lc, &id_e).await.code, 200);

    // The server's reconnect instruction (a Close frame), with an event in flight.
    let d = sender.text_message(&fake, "ev-d", "om_d", "oc_team", "instructed", true);
    lc.reconnect_instruction();
    let id_d = lc.send("event", d.to_string().as_bytes(), 1);
    eventually(10, "reconnected after the instruction", || {
        let lc = lc.clone();
        async move { (lc.connections() >= 4).then_some(()) }
    })
    .await;
    assert_eq!(answer(&lc, &id_d).await.code, 200);
    assert_eq!(
        c.describe().get("connection").map(String::as_str),
        Some("connected")
    );

    let msgs = messages(&fake, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut replied: Vec<_> = fake
        .messages()
        .iter()
        .filter_map(|m| m.reply_to.clone())
        .collect();
    replied.sort();
    assert_eq!(replied, ["om_a", "om_b", "om_d", "om_e"], "{msgs:?}");
    let events = journal(&t).await;
    assert_eq!(events.len(), 4, "every acknowledged event is there, once");
    assert!(lc.violations().is_empty(), "{:?}", lc.violations());
}

#[tokio::test]
async fn a_wrong_app_secret_is_a_clear_error_retried_with_backoff() {
    let fake = FakeFeishu::start().await;
    let lc = FakeLongConnection::start().await;
    fake.lock().ws_url = Some(lc.url.clone());
    let mut cfg = config(&fake, "not-the-secret");
    // The bot's identity is configured: no Open API call needs the (wrong) secret.
    cfg = cfg.replace(
        "base_url =",
        &format!("bot_open_id = \"{BOT_OPEN_ID}\"\nbase_url ="),
    );
    let t = TestPerch::start(&cfg).await;
    let calls = eventually(10, "four endpoint attempts", || {
        let fake = fake.clone();
        async move {
            let c = fake.lock().ws_endpoint_calls.clone();
            (c.len() >= 4).then_some(c)
        }
    })
    .await;
    assert!(calls.iter().all(|(_, ok)| !ok));
    // Backoff: the waits grow (100 ms doubling, jittered to half..all).
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps[2] > gaps[0], "{gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    let state = t.connector("feishu").describe()["connection"].clone();
    assert!(
        state.contains("refused") && state.contains("app_secret") && state.contains("10014"),
        "{state}"
    );
    assert_eq!(lc.connections(), 0);
    // The same state in the admin API.
    let status: Value = reqwest::get(t.url("/api/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = status["connectors"][0]["state"]["connection"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        shown.starts_with("disconnected: Feishu refused"),
        "{status}"
    );
    assert!(!status.to_string().contains("not-the-secret"));
}

#[tokio::test]
async fn perch_check_refuses_websocket_mode_without_credentials() {
    let base = |extra: &str| {
        format!(
            "[connectors.feishu]\nkind = \"feishu\"\nmode = \"websocket\"\napp_id = \"cli_x\"\n{extra}\n"
        )
    };
    let check = |text: String| {
        perch::config::Config::from_str(&text, std::path::Path::new("t.toml"))
            .err()
            .map(|e| e.to_string())
    };
    let err = check(base("app_secret = \"\"")).expect("refused");
    assert!(err.contains("app_secret"), "{err}");
    // No verification token is needed over the long connection …
    assert_eq!(check(base("app_secret = \"s\"")), None);
    // … but it is for webhooks, and nonsense settings are refused.
    let err = check(base("app_secret = \"s\"").replace("websocket", "webhook")).expect("refused");
    assert!(err.contains("verification_token"), "{err}");
    let err = check(base(
        "app_secret = \"s\"\nws_reconnect_min = \"5m\"\nws_reconnect_max = \"1s\"",
    ))
    .expect("refused");
    assert!(err.contains("ws_reconnect_min"), "{err}");
}

#[tokio::test]
async fn shutdown_stops_the_connection_and_a_restart_reconnects_and_still_dedupes() {
    let (fake, lc, mut t, sender) = setup().await;
    let doc = sender.text_message(&fake, "ev-r", "om_r", "oc_team", "restart", true);
    let first = lc.send("event", doc.to_string().as_bytes(), 1);
    assert_eq!(answer(&lc, &first).await.code, 200);
    messages(&fake, 1).await;

    t.stop().await;
    let (conns, endpoint_calls) = (lc.connections(), fake.lock().ws_endpoint_calls.len());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(lc.connections(), conns, "no reconnect after shutdown");
    assert_eq!(fake.lock().ws_endpoint_calls.len(), endpoint_calls);

    // The store was let go (the restart opens it again) and the event id is remembered.
    t.restart().await;
    eventually(10, "reconnected after the restart", || {
        let lc = lc.clone();
        async move { (lc.connections() > conns).then_some(()) }
    })
    .await;
    let again = lc.send("event", doc.to_string().as_bytes(), 1);
    assert_eq!(answer(&lc, &again).await.code, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.messages().len(), 1, "handled again after a restart");
    assert_eq!(journal(&t).await.len(), 1);
}
