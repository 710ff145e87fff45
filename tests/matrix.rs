//! The Matrix connector against a real Synapse (tests/synapse): a person (a small
//! client in the test) invites the bot, @mentions it, presses a card's button, and perch
//! restarts in the middle of a conversation. Messages are counted in the room itself,
//! so a lost or repeated message fails the test.

mod synapse;

use perch::action::{ChatSpec, MessageBody, Operation, Target};
use perch::connectors::SendError;
use perch::testing::*;
use serde_json::Value;
use std::time::Duration;
use synapse::*;

const BOT_PASSWORD: &str = "bot-password-1";

/// perch with the demo's seed bots on the Matrix connector, by config alone.
fn config(s: &Synapse, bot: &Client, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[outbox]
min_backoff = "50ms"
max_backoff = "2s"

[connectors.matrix]
kind = "matrix"
homeserver = "{base}"
user_id = "{user}"
password = "{BOT_PASSWORD}"
sync_timeout = "1s"

[connectors.demo]
kind = "file"
dir = "{demo}"
display_name = "demo data"

[bots.help]
kind = "help"
intro = "Hi! I'm perch."

[bots.data]
kind = "query"
source = "demo"

[bots.data.commands.gmv]
path = "/metrics/daily.json"
pointer = "/data"
summary = "yesterday's GMV, orders and new customers"
template = "query_answer"
fields = [{{ key = "gmv", label = "GMV", decimals = 2 }}, {{ key = "orders", label = "Orders" }}]

{extra}

[[routes]]
connector = "matrix"
mention = "*"
command = "help"
stop = true
bots = ["help"]

[[routes]]
connector = "matrix"
mention = "*"
command = "gmv"
stop = true
bots = ["data"]
"#,
        base = s.base,
        user = bot.user_id,
        demo = concat!(env!("CARGO_MANIFEST_DIR"), "/demo"),
    )
}

/// A person, the bot account, and a room where the person invited the bot.
async fn setup(s: &Synapse) -> (Client, Client) {
    let person = s.register(&unique("ann"), "ann-password-1").await;
    let bot = s.register(&unique("perch"), BOT_PASSWORD).await;
    (person, bot)
}

/// Invite the bot into a new room and wait until it has joined.
async fn room_with_bot(person: &Client, bot: &Client) -> String {
    let room = person.create_room("team", &[&bot.user_id]).await;
    eventually(30, "the bot joins the room it was invited to", || {
        let (person, room, bot) = (person.clone(), room.clone(), bot.user_id.clone());
        async move { person.members(&room).await.contains(&bot).then_some(()) }
    })
    .await;
    room
}

/// The bot's `m.room.message` events in the room, oldest first.
async fn bot_messages(person: &Client, room: &str, bot: &str) -> Vec<Value> {
    person
        .events(room)
        .await
        .into_iter()
        .filter(|e| e["sender"] == bot && e["type"] == "m.room.message")
        .collect()
}

/// Wait until the bot has sent `n` messages, and return them.
async fn wait_bot_messages(person: &Client, room: &str, bot: &str, n: usize) -> Vec<Value> {
    eventually(30, &format!("{n} message(s) from the bot"), || {
        let (person, room, bot) = (person.clone(), room.to_string(), bot.to_string());
        async move {
            let m = bot_messages(&person, &room, &bot).await;
            (m.len() >= n).then_some(m)
        }
    })
    .await
}

fn localpart(user_id: &str) -> &str {
    user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
}

fn in_reply_to(e: &Value) -> Option<&str> {
    e.pointer("/content/m.relates_to/m.in_reply_to/event_id")
        .and_then(Value::as_str)
}

#[tokio::test]
async fn the_bot_joins_and_answers_help_and_a_data_command_by_config_alone() {
    let Some(s) = synapse().await else { return };
    let (person, bot) = setup(s).await;
    let t = TestPerch::start(&config(s, &bot, "")).await;
    let room = room_with_bot(&person, &bot).await;
    let name = localpart(&bot.user_id);

    let help = person.mention(&room, &bot.user_id, name, "help").await;
    let m = wait_bot_messages(&person, &room, &bot.user_id, 1).await;
    assert_eq!(in_reply_to(&m[0]), Some(help.as_str()), "{}", m[0]);
    assert_eq!(m[0]["content"]["msgtype"], "m.notice", "bots send notices");
    let text = m[0]["content"]["body"].as_str().unwrap();
    assert!(text.contains("gmv"), "help lists the data command: {text}");

    let gmv = person.mention(&room, &bot.user_id, name, "gmv").await;
    let m = wait_bot_messages(&person, &room, &bot.user_id, 2).await;
    assert_eq!(in_reply_to(&m[1]), Some(gmv.as_str()));
    let card = &m[1]["content"];
    assert_eq!(card["format"], "org.matrix.custom.html");
    assert!(
        card["formatted_body"].as_str().unwrap().contains("GMV"),
        "the query card: {card}"
    );
    // A message that does not address the bot gets no answer, and nothing is repeated.
    person
        .send(
            &room,
            "m.room.message",
            serde_json::json!({ "msgtype": "m.text", "body": "just talking" }),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bot_messages(&person, &room, &bot.user_id).await.len(), 2);
    drop(t);
}

#[tokio::test]
async fn a_reaction_on_a_card_reaches_its_bot_and_the_card_is_edited_in_place() {
    let Some(s) = synapse().await else { return };
    let (person, bot) = setup(s).await;
    let t = TestPerch::start(&config(
        s,
        &bot,
        r#"
[bots.tasks]
kind = "reminders"
timezone = "UTC"

[[routes]]
connector = "matrix"
mention = "*"
command = "remind"
stop = true
bots = ["tasks"]

[[routes]]
kind = "tick"
bots = ["tasks"]
"#,
    ))
    .await;
    let room = room_with_bot(&person, &bot).await;
    let name = localpart(&bot.user_id);
    person
        .mention(
            &room,
            &bot.user_id,
            name,
            "remind me in 2 hours call the supplier",
        )
        .await;
    wait_bot_messages(&person, &room, &bot.user_id, 1).await;
    let slot = chrono::Utc::now() + chrono::Duration::minutes(121);
    t.journal()
        .accept(vec![tick("reminders", &slot.to_rfc3339())])
        .await
        .unwrap();
    let m = wait_bot_messages(&person, &room, &bot.user_id, 2).await;
    let card = m
        .iter()
        .find(|e| {
            e["content"]["formatted_body"]
                .as_str()
                .is_some_and(|h| h.contains("React with"))
        })
        .unwrap_or_else(|| panic!("a reminder card with buttons: {m:?}"));
    let card_id = card["event_id"].as_str().unwrap().to_string();
    // The bot offers each button as a reaction chip.
    let chips = eventually(30, "the bot's Done and Snooze chips under the card", || {
        let (person, room, bot, card_id) = (
            person.clone(),
            room.clone(),
            bot.user_id.clone(),
            card_id.clone(),
        );
        async move {
            let chips: Vec<Value> = person
                .events(&room)
                .await
                .into_iter()
                .filter(|e| {
                    e["type"] == "m.reaction"
                        && e["sender"] == bot.as_str()
                        && e.pointer("/content/m.relates_to/event_id")
                            == Some(&Value::String(card_id.clone()))
                })
                .collect();
            let key = |c: &Value| {
                c.pointer("/content/m.relates_to/key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let keys: Vec<String> = chips.iter().map(key).collect();
            (keys.iter().any(|k| k == "Done") && keys.iter().any(|k| k.starts_with("Snooze")))
                .then_some(chips)
        }
    })
    .await;
    assert!(chips.len() >= 2, "{chips:?}");

    person.react(&room, &card_id, "Done").await;
    let edit = eventually(30, "the card is edited in place", || {
        let (person, room, bot, card_id) = (
            person.clone(),
            room.clone(),
            bot.user_id.clone(),
            card_id.clone(),
        );
        async move {
            bot_messages(&person, &room, &bot)
                .await
                .into_iter()
                .find(|e| {
                    e.pointer("/content/m.relates_to/rel_type") == Some(&"m.replace".into())
                        && e.pointer("/content/m.relates_to/event_id")
                            == Some(&Value::String(card_id.clone()))
                })
        }
    })
    .await;
    let new = &edit["content"]["m.new_content"];
    assert_eq!(new["format"], "org.matrix.custom.html", "{edit}");
    // The chips of buttons the new card no longer offers are taken back (redacted).
    let offered = new["formatted_body"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eventually(30, "the chips of gone buttons are redacted", || {
        let (person, room, bot, card_id, offered) = (
            person.clone(),
            room.clone(),
            bot.user_id.clone(),
            card_id.clone(),
            offered.clone(),
        );
        async move {
            let events = person.events(&room).await;
            let live_chips: Vec<String> = events
                .iter()
                .filter(|e| {
                    e["type"] == "m.reaction"
                        && e["sender"] == bot.as_str()
                        && e.pointer("/content/m.relates_to/event_id")
                            == Some(&Value::String(card_id.clone()))
                })
                .filter_map(|e| e.pointer("/content/m.relates_to/key")?.as_str())
                .map(str::to_string)
                .collect();
            live_chips
                .iter()
                .all(|k| {
                    offered.contains(&format!("React with: {k}"))
                        || offered.contains(&format!(" / {k}"))
                })
                .then_some(())
        }
    })
    .await;
    let journal: Value = reqwest::get(t.url("/api/events?limit=100"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let clicks: Vec<&Value> = journal["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["kind"] == "card_action")
        .collect();
    assert_eq!(clicks.len(), 1, "{clicks:?}");
    assert_eq!(clicks[0]["event"]["card_action"]["bot"], "tasks");
    assert_eq!(clicks[0]["event"]["card_action"]["action"], "done");
    assert_eq!(
        clicks[0]["event"]["card_action"]["message_id"],
        Value::String(card_id.clone())
    );
    // One edit, not two (a click handled once).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let edits = bot_messages(&person, &room, &bot.user_id)
        .await
        .into_iter()
        .filter(|e| e.pointer("/content/m.relates_to/rel_type") == Some(&"m.replace".into()))
        .count();
    assert_eq!(edits, 1);
}

#[tokio::test]
async fn a_restart_in_the_middle_neither_loses_nor_repeats_a_message() {
    let Some(s) = synapse().await else { return };
    let (person, bot) = setup(s).await;
    let mut t = TestPerch::start(&config(s, &bot, "")).await;
    let room = room_with_bot(&person, &bot).await;
    let name = localpart(&bot.user_id);

    let first = person.mention(&room, &bot.user_id, name, "help").await;
    wait_bot_messages(&person, &room, &bot.user_id, 1).await;

    // perch is down while the person writes: the message waits on the homeserver.
    t.stop().await;
    let second = person.mention(&room, &bot.user_id, name, "gmv").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.start_again().await;

    let m = wait_bot_messages(&person, &room, &bot.user_id, 2).await;
    let replies: Vec<&str> = m.iter().filter_map(in_reply_to).collect();
    assert_eq!(replies, vec![first.as_str(), second.as_str()]);

    // Another restart: the stored next_batch is past both; nothing is answered again.
    t.restart().await;
    let third = person.mention(&room, &bot.user_id, name, "help").await;
    let m = wait_bot_messages(&person, &room, &bot.user_id, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m2 = bot_messages(&person, &room, &bot.user_id).await;
    assert_eq!(m2.len(), 3, "no message repeated: {m2:?}");
    let replies: Vec<&str> = m.iter().filter_map(in_reply_to).collect();
    assert_eq!(
        replies,
        vec![first.as_str(), second.as_str(), third.as_str()]
    );
}

/// The bot's messages in `room` whose plain body is `body`.
async fn copies(person: &Client, room: &str, bot: &str, body: &str) -> usize {
    bot_messages(person, room, bot)
        .await
        .iter()
        .filter(|e| e["content"]["body"] == body)
        .count()
}

#[tokio::test]
async fn operations_send_once_per_key_create_rooms_invite_and_open_direct_chats() {
    let Some(s) = synapse().await else { return };
    let (person, bot) = setup(s).await;
    let t = TestPerch::start(&config(s, &bot, "")).await;
    let room = room_with_bot(&person, &bot).await;
    let matrix = t.connector("matrix");

    // The same outbox key twice (a retry after a lost answer or a crash): one event.
    let hello = format!("hello {}", person.user_id);
    let send = Operation::Send {
        to: Target::chat(&room),
        body: MessageBody::text(&hello),
        reply_to: None,
    };
    let a = matrix.execute(&send, "evt-1/bot/0000").await.unwrap();
    let b = matrix.execute(&send, "evt-1/bot/0000").await.unwrap();
    assert_eq!(
        a.id, b.id,
        "the transaction id makes the retry the same event"
    );
    assert_eq!(copies(&person, &room, &bot.user_id, &hello).await, 1);
    let sent = bot_messages(&person, &room, &bot.user_id).await;
    let m = sent
        .iter()
        .find(|e| e["content"]["body"] == hello.as_str())
        .unwrap();
    assert_eq!(
        m["content"]["m.mentions"]["user_ids"],
        serde_json::json!([person.user_id]),
        "the person is mentioned on purpose"
    );
    assert!(
        m["content"]["formatted_body"]
            .as_str()
            .unwrap()
            .contains(&format!("https://matrix.to/#/{}", person.user_id)),
        "a pill: {m}"
    );

    // A room with members, once per key; a malformed member is reported, not fatal.
    let create = Operation::CreateChat {
        spec: ChatSpec {
            name: "【项目】Acme-P1".into(),
            description: Some("Acme project".into()),
            members: vec![person.user_id.clone(), "not-a-user".into()],
            owner: Some(person.user_id.clone()),
            ..Default::default()
        },
    };
    let c1 = matrix.execute(&create, "create-1").await.unwrap();
    let c2 = matrix.execute(&create, "create-1").await.unwrap();
    let new_room = c1.id.clone().unwrap();
    assert_eq!(c2.id, c1.id, "a retried creation finds the room it made");
    assert_eq!(c1.detail["not_added"], serde_json::json!(["not-a-user"]));
    assert!(c1.detail.get("owner_error").is_none(), "{}", c1.detail);
    person.join(&new_room).await; // only an invited person may join a private room
    let other = s.register(&unique("bob"), "bob-password-1").await;
    let added = matrix
        .execute(
            &Operation::AddMembers {
                chat_id: new_room.clone(),
                members: vec![other.user_id.clone(), person.user_id.clone()],
                member_id_type: None,
            },
            "add-1",
        )
        .await
        .unwrap();
    assert_eq!(added.detail["added"], 2, "{:?}", added.detail);
    other.join(&new_room).await;
    let e = matrix
        .execute(
            &Operation::AddMembers {
                chat_id: new_room.clone(),
                members: vec!["a@b.c".into()],
                member_id_type: Some("email".into()),
            },
            "add-2",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, SendError::Permanent(ref m) if m.contains("identity server")),
        "{e}"
    );

    // A direct message to a person: a direct room, made once and reused.
    let dm = |text: &str| Operation::Send {
        to: Target::person(&other.user_id),
        body: MessageBody::text(text),
        reply_to: None,
    };
    let d1 = matrix.execute(&dm("one"), "dm-1").await.unwrap();
    let d2 = matrix.execute(&dm("two"), "dm-2").await.unwrap();
    let dm_room = d1.detail["chat_id"].as_str().unwrap().to_string();
    assert_eq!(d2.detail["chat_id"], d1.detail["chat_id"]);
    other.join(&dm_room).await;
    assert_eq!(copies(&other, &dm_room, &bot.user_id, "one").await, 1);
    assert_eq!(copies(&other, &dm_room, &bot.user_id, "two").await, 1);
}

#[tokio::test]
async fn the_homeservers_rate_limit_answer_is_honoured() {
    let Some(s) = synapse().await else { return };
    let (person, bot) = setup(s).await;
    let admin = s.register_admin(&unique("admin"), "admin-password-1").await;
    let t = TestPerch::start(&config(s, &bot, "")).await;
    let room = room_with_bot(&person, &bot).await;
    // One message a second, no burst: the second at once is refused with M_LIMIT_EXCEEDED.
    admin.override_ratelimit(&bot.user_id, 1, 1).await;
    let matrix = t.connector("matrix");
    let send = |text: &str| Operation::Send {
        to: Target::chat(&room),
        body: MessageBody::text(text),
        reply_to: None,
    };
    // The bot's join counted against the limit too: let it pass first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    matrix.execute(&send("first"), "rl-1").await.unwrap();
    let e = matrix.execute(&send("second"), "rl-2").await.unwrap_err();
    match &e {
        SendError::RateLimited {
            retry_after: Some(d),
            ..
        } => assert!(*d > Duration::ZERO && *d <= Duration::from_secs(2), "{d:?}"),
        other => panic!("expected RateLimited with retry_after: {other:?}"),
    }
    assert!(
        matrix.paused_until(&room).is_some(),
        "the connector pauses for the homeserver's retry_after_ms"
    );
    assert_eq!(copies(&person, &room, &bot.user_id, "second").await, 0);
    // After the pause, the same key goes through, once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    matrix.execute(&send("second"), "rl-2").await.unwrap();
    assert_eq!(copies(&person, &room, &bot.user_id, "second").await, 1);
}

#[tokio::test]
async fn a_direct_room_needs_no_mention() {
    let Some(s) = synapse().await else { return };
    let (person, bot) = setup(s).await;
    let _t = TestPerch::start(&config(s, &bot, "")).await;
    let room = person
        .create_room_with(serde_json::json!({
            "preset": "trusted_private_chat", "is_direct": true, "invite": [bot.user_id],
        }))
        .await;
    eventually(30, "the bot joins the direct room", || {
        let (person, room, bot) = (person.clone(), room.clone(), bot.user_id.clone());
        async move { person.members(&room).await.contains(&bot).then_some(()) }
    })
    .await;
    let asked = person
        .send(
            &room,
            "m.room.message",
            serde_json::json!({ "msgtype": "m.text", "body": "help" }),
        )
        .await;
    let m = wait_bot_messages(&person, &room, &bot.user_id, 1).await;
    assert_eq!(in_reply_to(&m[0]), Some(asked.as_str()));
}

#[tokio::test]
async fn a_wrong_password_is_reported_without_the_password() {
    let Some(s) = synapse().await else { return };
    let (_person, bot) = setup(s).await;
    let text = config(s, &bot, "").replace(BOT_PASSWORD, "not-the-password-42");
    let t = TestPerch::start(&text).await;
    let status = eventually(30, "the sync loop reports the refused login", || {
        let url = t.url("/api/status");
        async move {
            let body = reqwest::get(url).await.ok()?.text().await.ok()?;
            body.contains("M_FORBIDDEN").then_some(body)
        }
    })
    .await;
    assert!(status.contains("login"), "{status}");
    assert!(!status.contains("not-the-password-42"), "{status}");
}

#[test]
fn perch_check_refuses_nonsense() {
    let check = |conn: &str| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.matrix]\nkind = \"matrix\"\n{conn}\n"
        );
        perch::config::Config::from_str(&text, std::path::Path::new("t.toml"))
            .err()
            .map(|e| e.to_string())
    };
    let ok = "homeserver = \"https://m.example.org\"\nuser_id = \"@perch:example.org\"";
    let e = check(ok).expect("no credentials");
    assert!(e.contains("access_token") && e.contains("password"), "{e}");
    let e = check(&format!("{ok}\naccess_token = \"t\"\npassword = \"p\"")).expect("both");
    assert!(e.contains("not both"), "{e}");
    let e = check("homeserver = \"matrix.example.org\"\nuser_id = \"@perch:example.org\"\naccess_token = \"t\"")
        .expect("bad url");
    assert!(e.contains("homeserver"), "{e}");
    let e =
        check("homeserver = \"https://m.example.org\"\nuser_id = \"perch\"\naccess_token = \"t\"")
            .expect("bad user id");
    assert!(e.contains("user_id"), "{e}");
    let e = check(&format!("{ok}\naccess_token = \"t\"\nmsgtype = \"emote\"")).expect("msgtype");
    assert!(e.contains("msgtype") || e.contains("emote"), "{e}");
    assert_eq!(check(&format!("{ok}\naccess_token = \"t\"")), None);
    assert_eq!(check(&format!("{ok}\npassword = \"p\"")), None);
}

#[tokio::test]
async fn an_event_perch_cannot_store_does_not_stop_the_sync() {
    let Some(s) = synapse().await else { return };
    let (person, bot) = setup(s).await;
    let _t = TestPerch::start(&config(s, &bot, "")).await;
    let room = room_with_bot(&person, &bot).await;
    let name = localpart(&bot.user_id);
    // Valid Matrix (the homeserver takes it), but nested deeper than perch stores.
    let mut deep = serde_json::json!(1);
    for _ in 0..(perch::event::MAX_JSON_DEPTH + 2) {
        deep = serde_json::json!([deep]);
    }
    person
        .send(
            &room,
            "m.room.message",
            serde_json::json!({ "msgtype": "m.text", "body": format!("{name}: help"), "x": deep }),
        )
        .await;
    let asked = person.mention(&room, &bot.user_id, name, "help").await;
    let m = wait_bot_messages(&person, &room, &bot.user_id, 1).await;
    assert_eq!(in_reply_to(&m[0]), Some(asked.as_str()), "{m:?}");
}
