//! The Slack connector end to end: a real perch (`perch::testing::TestPerch`) whose `base_url` points
//! at a fake Slack (tests/fake_slack) that speaks the real wire format and refuses
//! malformed requests, and an event sender that signs like Slack.

mod fake_slack;

use fake_slack::*;
use perch::action::{ChatSpec, MessageBody, Operation, Target};
use perch::connectors::SendError;
use perch::testing::*;
use serde_json::{Value, json};
use std::time::Duration;

fn config(fake: &FakeSlack, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[outbox]
min_backoff = "50ms"
max_backoff = "2s"
max_attempts = 20

[connectors.slack]
kind = "slack"
bot_token = "{BOT_TOKEN}"
signing_secret = "{SIGNING_SECRET}"
base_url = "{base}"
chat_rate_per_second = 20

[connectors.demo]
kind = "file"
dir = "{demo}"
display_name = "demo data"

[bots.help]
kind = "help"
intro = "Hi! I'm perch."

[bots.echo]
kind = "echo"

[bots.data]
kind = "query"
source = "demo"

[bots.data.commands.gmv]
path = "/metrics/daily.json"
pointer = "/data"
summary = "yesterday's GMV, orders and new customers"
template = "query_answer"

{extra}

[[routes]]
connector = "slack"
mention = "*"
command = "help"
stop = true
bots = ["help"]

[[routes]]
connector = "slack"
mention = "*"
command = "gmv"
stop = true
bots = ["data"]

[[routes]]
connector = "slack"
mention = "*"
bots = ["echo"]
"#,
        base = fake.base,
        demo = concat!(env!("CARGO_MANIFEST_DIR"), "/demo"),
    )
}

async fn setup_with(extra: &str) -> (FakeSlack, TestPerch, EventSender) {
    let fake = FakeSlack::start().await;
    fake.add_channel("C_TEAM", &["U_ALICE"]);
    let t = TestPerch::start(&config(&fake, extra)).await;
    let sender = EventSender::new(&t.url("/hooks/slack"), SIGNING_SECRET);
    (fake, t, sender)
}

async fn setup() -> (FakeSlack, TestPerch, EventSender) {
    setup_with("").await
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

/// Wait until the fake holds `n` messages, and return them.
async fn messages(fake: &FakeSlack, n: usize) -> Vec<Message> {
    at_least(30, n, "message(s) at the fake", || fake.messages()).await
}

#[tokio::test]
async fn the_url_handshake_is_answered_only_when_signed() {
    let (fake, t, sender) = setup().await;
    let challenge = json!({ "token": "legacy", "challenge": "c-123", "type": "url_verification" });
    let (status, body) = sender.send(&challenge).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "challenge": "c-123" })
    );
    // Slack signs the handshake too (refs §5): unsigned, it is refused.
    let unsigned = Delivery {
        body: challenge.to_string().into_bytes(),
        headers: vec![("Content-Type".into(), "application/json".into())],
    };
    assert_eq!(sender.post("", &unsigned).await.0, 401);
    assert!(journal(&t).await.is_empty());
    assert!(fake.lock().calls.is_empty());
}

#[tokio::test]
async fn unsigned_tampered_and_stale_requests_are_refused_and_store_nothing() {
    let (fake, t, sender) = setup().await;
    let doc = EventSender::mention(&fake, "Ev_BAD", "C_TEAM", "1700000000.000100", "hi");
    let now = chrono::Utc::now().timestamp();
    let body = doc.to_string().into_bytes();

    let unsigned = Delivery {
        body: body.clone(),
        headers: vec![("Content-Type".into(), "application/json".into())],
    };
    let mut tampered = sender.json(&doc);
    tampered.body = doc.to_string().replace("hi", "rm -rf").into_bytes();
    let wrong_secret = EventSender::new(&sender.url, "not-the-secret").json(&doc);
    let stale = sender.sign_at(body.clone(), "application/json", now - 301);
    let future = sender.sign_at(body.clone(), "application/json", now + 400);
    let mut bad_header = sender.json(&doc);
    bad_header.headers[2].1 = "v0=zz".into();
    for (what, d) in [
        ("unsigned", &unsigned),
        ("tampered", &tampered),
        ("wrong secret", &wrong_secret),
        ("stale", &stale),
        ("future", &future),
        ("garbage signature", &bad_header),
    ] {
        let (status, text) = sender.post("", d).await;
        assert_eq!(status, 401, "{what}: {text}");
    }
    // Signed but not JSON, and signed clicks with no payload: 400.
    let garbage = sender.sign_at(b"{not json".to_vec(), "application/json", now);
    assert_eq!(sender.post("", &garbage).await.0, 400);
    let form = sender.sign_at(
        b"foo=bar".to_vec(),
        "application/x-www-form-urlencoded",
        now,
    );
    assert_eq!(sender.post("/interactive", &form).await.0, 400);
    // An unsigned click is refused too.
    let mut click = sender.form(&json!({ "type": "block_actions" }));
    click.headers.truncate(1);
    assert_eq!(sender.post("/interactive", &click).await.0, 401);

    assert!(journal(&t).await.is_empty(), "nothing was stored");
    assert!(fake.lock().calls.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn seed_bots_answer_mentions_in_their_thread_by_config_alone() {
    let (fake, t, sender) = setup().await;
    let (status, body) = sender
        .send(&EventSender::mention(
            &fake,
            "Ev1",
            "C_TEAM",
            "1700000000.000100",
            // As Slack sends what people typed: `<`, `>`, `&` escaped.
            "hello &lt;there&gt; &amp; co",
        ))
        .await;
    // Slack's acknowledgement: an empty 200.
    assert_eq!((status, body.as_str()), (200, ""));
    let m = messages(&fake, 1).await;
    assert_eq!(m[0].channel, "C_TEAM");
    assert_eq!(m[0].thread_ts.as_deref(), Some("1700000000.000100"));
    assert_eq!(
        m[0].text, "hello &lt;there&gt; &amp; co",
        "decoded for the bot, escaped again for Slack"
    );
    let e = &journal(&t).await[0]["event"];
    assert_eq!(e["text"], format!("@{BOT_USER} hello <there> & co"));
    assert_eq!(e["mentions"][0]["is_bot"], true);
    assert_eq!(m[0].mrkdwn, Some(false));

    sender
        .send(&EventSender::mention(
            &fake,
            "Ev2",
            "C_TEAM",
            "1700000000.000200",
            "help",
        ))
        .await;
    sender
        .send(&EventSender::mention(
            &fake,
            "Ev3",
            "C_TEAM",
            "1700000000.000300",
            "gmv",
        ))
        .await;
    let m = messages(&fake, 3).await;
    let help = m
        .iter()
        .find(|m| m.thread_ts.as_deref() == Some("1700000000.000200"))
        .expect("help answered");
    assert!(
        help.text.contains("gmv") || help.blocks.is_some(),
        "{help:?}"
    );
    let gmv = m
        .iter()
        .find(|m| m.thread_ts.as_deref() == Some("1700000000.000300"))
        .expect("gmv answered");
    let blocks = gmv.blocks.as_ref().expect("a card as Block Kit");
    assert!(blocks.as_array().unwrap().len() > 1, "{blocks}");
    assert!(!gmv.text.is_empty(), "cards carry the text fallback");

    let events = journal(&t).await;
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e["event"]["kind"], "message");
        assert!(
            e["event"]["payload"].get("token").is_none(),
            "no token stored"
        );
    }
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test]
async fn a_direct_message_is_decoded_and_answered() {
    let (fake, t, sender) = setup().await;
    let (status, _) = sender
        .send(&EventSender::direct(
            &fake,
            "EvDM1",
            "U_BOB",
            "1700000001.000100",
            "just between us",
        ))
        .await;
    assert_eq!(status, 200);
    let m = messages(&fake, 1).await;
    assert_eq!(m[0].channel, "DU_BOB");
    assert_eq!(m[0].text, "just between us");
    assert_eq!(m[0].thread_ts, None, "answered in the DM, not in a thread");
    let e = &journal(&t).await[0]["event"];
    assert_eq!(e["chat"]["chat_type"], "direct");
    assert_eq!(e["sender"]["id"], "U_BOB");
    // perch's own post echoed back in the DM is not a command (no loop).
    sender
        .send(&EventSender::envelope(
            "EvDM2",
            json!({ "type": "message", "channel_type": "im", "bot_id": "B1", "text": "just between us",
                    "ts": m[0].ts, "channel": "DU_BOB" }),
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn a_redelivery_with_retry_num_is_handled_once() {
    let (fake, t, sender) = setup().await;
    let doc = EventSender::mention(&fake, "EvRetry", "C_TEAM", "1700000002.000100", "once");
    assert_eq!(sender.send(&doc).await.0, 200);
    // Slack's retries are signed afresh and carry the retry headers.
    for n in 1..=3 {
        let mut d = sender.json(&doc);
        d.headers.push(("X-Slack-Retry-Num".into(), n.to_string()));
        d.headers
            .push(("X-Slack-Retry-Reason".into(), "http_timeout".into()));
        assert_eq!(sender.post("", &d).await.0, 200);
    }
    messages(&fake, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.calls_to("chat.postMessage").len(), 1);
    assert_eq!(journal(&t).await.len(), 1);
}

#[tokio::test]
async fn a_rate_limit_answer_is_honoured() {
    let (fake, _t, sender) = setup().await;
    fake.fail_next(
        1,
        Fault::RateLimited {
            retry_after_secs: 2,
        },
    );
    sender
        .send(&EventSender::mention(
            &fake,
            "EvRL1",
            "C_TEAM",
            "1700000003.000100",
            "first",
        ))
        .await;
    sender
        .send(&EventSender::mention(
            &fake,
            "EvRL2",
            "C_TEAM",
            "1700000003.000200",
            "second",
        ))
        .await;
    let m = messages(&fake, 2).await;
    assert_eq!(m.len(), 2, "each delivered once");
    let calls = fake.calls_to("chat.postMessage");
    assert!(calls[0].fault.is_some(), "the first call was answered 429");
    assert!(
        calls[1].at.duration_since(calls[0].at) >= Duration::from_millis(1900),
        "the next call waited for Retry-After"
    );
    assert!(fake.calls_inside_rate_limit_windows().is_empty());
}

#[tokio::test]
async fn a_button_click_reaches_its_bot_and_the_card_is_updated_in_place() {
    let (fake, t, sender) = setup_with(
        r#"
[bots.tasks]
kind = "reminders"
timezone = "UTC"

[[routes]]
connector = "slack"
command = "remind"
stop = true
bots = ["tasks"]

[[routes]]
kind = "tick"
bots = ["tasks"]
"#,
    )
    .await;
    sender
        .send(&EventSender::mention(
            &fake,
            "EvR1",
            "C_TEAM",
            "1700000004.000100",
            "remind me in 2 hours call the supplier",
        ))
        .await;
    messages(&fake, 1).await;
    let slot = chrono::Utc::now() + chrono::Duration::minutes(121);
    t.journal()
        .accept(vec![tick("reminders", &slot.to_rfc3339())])
        .await
        .unwrap();
    let m = messages(&fake, 2).await;
    let card = m
        .iter()
        .find(|m| {
            m.blocks
                .as_ref()
                .is_some_and(|b| b.to_string().contains("actions"))
        })
        .expect("the reminder card")
        .clone();
    assert_eq!(card.channel, "C_TEAM");
    let buttons: Vec<Value> = card
        .blocks
        .as_ref()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().unwrap().clone())
        .collect();
    let done = buttons
        .iter()
        .find(|b| b["value"].as_str().is_some_and(|v| v.contains("\"done\"")))
        .expect("a Done button whose value names the bot and action");

    let click = EventSender::click("U_ALICE", "C_TEAM", &card.ts, done, "trig-1");
    let (status, body) = sender.post("/interactive", &sender.form(&click)).await;
    assert_eq!((status, body.as_str()), (200, ""), "an empty 200");
    // Slack redelivers the same click: handled once.
    assert_eq!(sender.post("", &sender.form(&click)).await.0, 200);

    let updated = eventually(10, "the card is updated in place", || {
        let fake = fake.clone();
        let ts = card.ts.clone();
        async move {
            fake.messages()
                .into_iter()
                .find(|m| m.ts == ts && !m.updates.is_empty())
        }
    })
    .await;
    assert_eq!(updated.channel, "C_TEAM");
    assert!(
        updated
            .blocks
            .as_ref()
            .unwrap()
            .to_string()
            .contains("Done"),
        "{:?}",
        updated.blocks
    );
    let clicks: Vec<Value> = journal(&t)
        .await
        .into_iter()
        .filter(|e| e["event"]["kind"] == "card_action")
        .collect();
    assert_eq!(clicks.len(), 1, "the redelivered click is a duplicate");
    assert_eq!(clicks[0]["event"]["card_action"]["bot"], "tasks");
    assert_eq!(
        clicks[0]["event"]["card_action"]["message_id"],
        json!(card.ts)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.calls_to("chat.update").len(), 1);
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test]
async fn web_api_operations_send_update_create_and_invite() {
    let (fake, t, _sender) = setup().await;
    let slack = t.connector("slack");
    let send = |to: Target, body: MessageBody, reply_to: Option<&str>| Operation::Send {
        to,
        body,
        reply_to: reply_to.map(str::to_string),
    };

    let d = slack
        .execute(
            &send(
                Target::chat("C_TEAM"),
                MessageBody::markdown("**bold** [x](https://e.x)"),
                None,
            ),
            "k1",
        )
        .await
        .unwrap();
    let ts = d.id.clone().unwrap();
    let m = &fake.messages()[0];
    assert_eq!(
        (m.text.as_str(), m.mrkdwn),
        ("*bold* <https://e.x|x>", Some(true))
    );

    // A reply in the thread of perch's own message.
    slack
        .execute(
            &send(
                Target::chat("C_TEAM"),
                MessageBody::text("in thread"),
                Some(&ts),
            ),
            "k2",
        )
        .await
        .unwrap();
    assert_eq!(fake.messages()[1].thread_ts.as_deref(), Some(ts.as_str()));

    // A card: blocks plus the text fallback.
    let card = json!({ "header": { "title": "Build failed" }, "elements": [
        { "type": "markdown", "text": "**main** is red" },
        { "type": "buttons", "buttons": [{ "label": "Ack", "action": { "bot": "echo", "action": "ack", "args": { "n": 1 } } }] }
    ] });
    let d = slack
        .execute(
            &send(
                Target::chat("C_TEAM"),
                MessageBody::Card { card: card.clone() },
                None,
            ),
            "k3",
        )
        .await
        .unwrap();
    let sent = fake.messages()[2].clone();
    let blocks = sent.blocks.clone().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert!(sent.text.contains("Build failed"));
    let value: Value = serde_json::from_str(
        blocks
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .unwrap()["elements"][0]["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        value,
        json!({ "bot": "echo", "action": "ack", "args": { "n": 1 } })
    );

    // Update the card in place (the channel from chat_id).
    slack
        .execute(
            &Operation::Update {
                chat_id: Some("C_TEAM".into()),
                message_id: d.id.clone().unwrap(),
                body: MessageBody::text("acknowledged"),
            },
            "k4",
        )
        .await
        .unwrap();
    let after = fake.messages()[2].clone();
    assert_eq!(after.text, "acknowledged");
    assert_eq!(
        after.blocks,
        Some(json!([])),
        "the card's blocks are cleared"
    );
    // Without a channel an update cannot be addressed: said clearly.
    let e = slack
        .execute(
            &Operation::Update {
                chat_id: None,
                message_id: "1.2".into(),
                body: MessageBody::text("x"),
            },
            "k5",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, SendError::Permanent(ref m) if m.contains("channel")),
        "{e}"
    );

    // A direct message by e-mail.
    slack
        .execute(
            &send(
                Target::Person {
                    id: "ann@example.com".into(),
                    id_type: Some("email".into()),
                },
                MessageBody::text("hi Ann"),
                None,
            ),
            "k6",
        )
        .await
        .unwrap();
    assert_eq!(
        fake.messages()[3].channel,
        format!("D{}", user_for("ann@example.com"))
    );

    // Create a channel with members by e-mail; one is unknown.
    let spec = ChatSpec {
        name: "Proj Acme X1".into(),
        members: vec![
            "ann@example.com".into(),
            "bo@example.com".into(),
            "ghost@example.com".into(),
        ],
        member_id_type: Some("email".into()),
        ..Default::default()
    };
    let d = slack
        .execute(&Operation::CreateChat { spec: spec.clone() }, "k7")
        .await
        .unwrap();
    let chat_id = d.id.clone().unwrap();
    assert_eq!(d.detail["not_added"], json!(["ghost@example.com"]));
    let ch = fake.lock().channels[&chat_id].clone();
    assert_eq!(ch.name, "proj-acme-x1");
    assert!(
        ch.members.contains(&user_for("ann@example.com"))
            && ch.members.contains(&user_for("bo@example.com"))
    );
    // The same creation again (a retry after a lost answer): the name is taken, and
    // the error says so instead of making a second channel.
    let e = slack
        .execute(&Operation::CreateChat { spec }, "k7")
        .await
        .unwrap_err();
    assert!(
        matches!(e, SendError::Permanent(ref m) if m.contains("exists already")),
        "{e}"
    );
    assert_eq!(fake.lock().channels.len(), 2);

    // Add members: a repeat is harmless, an invalid user is reported.
    let add = Operation::AddMembers {
        chat_id: chat_id.clone(),
        members: vec!["U_CAROL".into(), "U_BAD1".into()],
        member_id_type: None,
    };
    let d = slack.execute(&add, "k8").await.unwrap();
    assert_eq!(d.detail["not_added"], json!(["U_BAD1"]));
    let again = Operation::AddMembers {
        chat_id: chat_id.clone(),
        members: vec!["U_CAROL".into()],
        member_id_type: None,
    };
    let d = slack.execute(&again, "k9").await.unwrap();
    assert_eq!(d.detail["not_added"], json!([]));
    assert!(
        fake.lock().channels[&chat_id]
            .members
            .contains(&"U_CAROL".to_string())
    );

    // Slack's `ok: false` answers become clear errors.
    let e = slack
        .execute(
            &send(Target::chat("C_NOT_IN"), MessageBody::text("x"), None),
            "k10",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, SendError::Permanent(ref m) if m.contains("not_in_channel") && m.contains("/invite")),
        "{e}"
    );
    fake.fail_next(1, Fault::Error("internal_error".into()));
    let e = slack
        .execute(
            &send(Target::chat("C_TEAM"), MessageBody::text("x"), None),
            "k11",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::Retry { .. }), "{e}");

    // Every request had one bearer token and one JSON content type (the fake refuses
    // repeats), and the lookups were GETs.
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
    assert!(
        fake.calls_to("users.lookupByEmail")
            .iter()
            .all(|c| c.http_method == "GET")
    );
}

#[tokio::test]
async fn a_wrong_bot_token_is_a_permanent_error_naming_the_fix() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C_TEAM", &[]);
    let text = config(&fake, "").replace(BOT_TOKEN, "xoxb-wrong");
    let t = TestPerch::start(&text).await;
    let slack = t.connector("slack");
    let e = slack
        .execute(
            &Operation::Send {
                to: Target::chat("C_TEAM"),
                body: MessageBody::text("x"),
                reply_to: None,
            },
            "k",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, SendError::Permanent(ref m) if m.contains("invalid_auth") && m.contains("token")),
        "{e}"
    );
    assert!(
        !e.to_string().contains("xoxb-wrong"),
        "the token never appears in errors"
    );
}

#[test]
fn perch_check_refuses_nonsense() {
    let check = |conn: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.slack]\nkind = \"slack\"\n{conn}\n"
        );
        perch::config::Config::from_str(&text, std::path::Path::new("t.toml"))
            .err()
            .map(|e| e.to_string())
    };
    let e = check("bot_token = \"xoxb-1\"").expect("no signing secret");
    assert!(e.contains("signing_secret"), "{e}");
    let e = check("bot_token = \"xoxb-1\"\nsigning_secret = \"s\"\nbase_url = \"slack.com\"")
        .expect("bad url");
    assert!(e.contains("base_url"), "{e}");
    let e = check("bot_token = \"xoxp-1\"\nsigning_secret = \"s\"").expect("a user token");
    assert!(e.contains("xoxb-"), "{e}");
    let e = check("bot_token = \"xoxb-1\"\nsigning_secret = \"s\"\ninsecure = true")
        .expect("contradiction");
    assert!(e.contains("contradictory"), "{e}");
    let e = check("bot_token = \"xoxb-1\"\nsigning_secret = \"s\"\nsigning_secrt = \"s\"")
        .expect("typo");
    assert!(e.contains("signing_secrt"), "{e}");
    assert_eq!(
        check("bot_token = \"xoxb-1\"\nsigning_secret = \"s\""),
        None
    );
    assert_eq!(check("bot_token = \"xoxb-1\"\ninsecure = true"), None);
}

#[tokio::test]
async fn the_group_bot_creates_a_channel_with_members_by_config_alone() {
    let (fake, _t, sender) = setup_with(
        r#"
[bots.groups]
kind = "auto_group"
command = "newgroup"
name_template = "proj-{{customer}}-{{code}}"
fields = ["customer", "code"]
key_template = "{{code}}"
member_id_type = "user_id"
welcome_template = "welcome"

[[routes]]
connector = "slack"
mention = "*"
command = "newgroup"
stop = true
bots = ["groups"]
"#,
    )
    .await;
    let ask = |id: &str, ts: &str| {
        EventSender::mention(
            &fake,
            id,
            "C_TEAM",
            ts,
            "newgroup Acme P12 <@U_BOB> carol@example.com",
        )
    };
    assert_eq!(sender.send(&ask("EvG1", "1700000005.000100")).await.0, 200);
    let channel = eventually(20, "the channel with its members", || {
        let fake = fake.clone();
        async move {
            let st = fake.lock();
            let ch = st.channels.values().find(|c| c.name == "proj-acme-p12")?;
            (ch.members.contains(&"U_BOB".to_string())
                && ch.members.contains(&user_for("carol@example.com")))
            .then(|| ch.clone())
        }
    })
    .await;
    // The welcome card in the new channel, and an answer in the asker's thread.
    eventually(20, "welcome card and answer", || {
        let fake = fake.clone();
        let id = channel.id.clone();
        async move {
            let m = fake.messages();
            let welcome = m.iter().any(|m| m.channel == id && m.blocks.is_some());
            let answer = m
                .iter()
                .any(|m| m.thread_ts.as_deref() == Some("1700000005.000100"));
            (welcome && answer).then_some(())
        }
    })
    .await;
    // The same project asked for again: no second channel.
    assert_eq!(sender.send(&ask("EvG2", "1700000005.000200")).await.0, 200);
    eventually(20, "the second request is answered", || {
        let fake = fake.clone();
        async move {
            fake.messages()
                .iter()
                .any(|m| m.thread_ts.as_deref() == Some("1700000005.000200"))
                .then_some(())
        }
    })
    .await;
    assert_eq!(fake.calls_to("conversations.create").len(), 1);
    assert_eq!(fake.lock().channels.len(), 2, "C_TEAM and the project's");
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}
