//! The Feishu connector end to end: a real perch (`perch::testing::TestPerch`) whose `base_url` points
//! at a fake Feishu (tests/fake_feishu) that speaks the real envelopes.

use perch::testing::fake_feishu;

use fake_feishu::*;
use perch::action::{ChatSpec, MessageBody, Operation, Target};
use perch::connectors::SendError;
use perch::testing::*;
use serde_json::{Value, json};

fn config(fake: &FakeFeishu) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[outbox]
min_backoff = "50ms"
max_backoff = "2s"
max_attempts = 20

{feishu}
[bots.echo]
kind = "echo"

[[routes]]
connector = "feishu"
kind = "message"
mention = "*"
bots = ["echo"]
"#,
        feishu = app_connector("feishu", &fake.base, true),
    )
}

/// The project-group bot on Feishu: `@bot 建群 <customer> <code> @member … e@mail`.
const GROUPS: &str = r#"
[bots.groups]
kind = "auto_group"
name_template = "【项目】{{customer}}-{{code}}"
fields = ["customer", "code"]
key_template = "{{code}}"
member_id_type = "open_id"
claim_timeout = "1m"

[[routes]]
connector = "feishu"
mention = "*"
command = "建群"
stop = true
bots = ["groups"]
"#;

/// Start the fake and perch, and wait until perch knows the bot's open_id.
async fn setup() -> (FakeFeishu, TestPerch, EventSender) {
    setup_with("").await
}

/// `setup` with more config (bots and routes before the echo route).
async fn setup_with(extra: &str) -> (FakeFeishu, TestPerch, EventSender) {
    let fake = FakeFeishu::start().await;
    let base = config(&fake);
    let (head, routes) = base.split_at(base.find("[[routes]]").unwrap());
    let t = TestPerch::start(&format!("{head}{extra}\n{routes}")).await;
    wait_for_identity(&t).await;
    let sender = EventSender::new(&t.url("/hooks/feishu"), TOKEN, Some(KEY));
    (fake, t, sender)
}

async fn wait_for_identity(t: &TestPerch) {
    let c = t.connector("feishu");
    eventually(10, "bot open_id fetched", || {
        let c = c.clone();
        async move { c.describe().get("bot_open_id").cloned() }
    })
    .await;
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

/// Feishu's signature headers for `body`, computed with perch's own function (the
/// fake's sender computes them independently for everything else).
fn signed_headers(body: &[u8]) -> Vec<(String, String)> {
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = perch::testing::internals::feishu_event_signature(&ts, "nonce-1", KEY, body);
    vec![
        ("X-Lark-Request-Timestamp".into(), ts),
        ("X-Lark-Request-Nonce".into(), "nonce-1".into()),
        ("X-Lark-Signature".into(), sig),
    ]
}

/// Wait until the fake holds `n` messages, and return them.
async fn messages(fake: &FakeFeishu, n: usize) -> Vec<Message> {
    at_least(30, n, "message(s) at the fake", || fake.messages()).await
}

#[tokio::test]
async fn challenge_plain_and_encrypted_answered_in_plaintext() {
    let (_fake, t, sender) = setup().await;
    let challenge = json!({ "challenge": "c-123", "token": TOKEN, "type": "url_verification" });

    let plain = EventSender::new(&t.url("/hooks/feishu"), TOKEN, None);
    assert_eq!(
        plain.send(&challenge).await,
        (200, json!({ "challenge": "c-123" }))
    );
    // Encrypted, no signature headers at all: still answered in plaintext.
    let sealed = Sealed {
        body: json!({ "encrypt": encrypt(KEY, challenge.to_string().as_bytes()) })
            .to_string()
            .into_bytes(),
        headers: vec![],
    };
    assert_eq!(
        sender.post("", &sealed).await,
        (200, json!({ "challenge": "c-123" }))
    );
    // The legacy card URL is verified the same way.
    assert_eq!(
        sender.post("/card", &sealed).await,
        (200, json!({ "challenge": "c-123" }))
    );
    // A wrong token is refused.
    let wrong = json!({ "challenge": "c-123", "token": "nope", "type": "url_verification" });
    let (status, body) = plain.send(&wrong).await;
    assert_eq!(status, 401, "{body}");
    assert!(journal(&t).await.is_empty());
}

#[tokio::test]
async fn signed_encrypted_mention_is_answered_in_the_chat() {
    let (fake, t, sender) = setup().await;
    let doc = sender.text_message(
        &fake,
        "ev-mention-1",
        "om_user_1",
        "oc_team",
        "hello there",
        true,
    );
    assert_eq!(sender.send(&doc).await, (200, json!({ "msg": "success" })));

    let msgs = messages(&fake, 1).await;
    let m = &msgs[0];
    assert_eq!(
        m.reply_to.as_deref(),
        Some("om_user_1"),
        "answered as a reply to the message"
    );
    assert_eq!(m.chat_id, "oc_team");
    assert_eq!(m.msg_type, "text");
    assert_eq!(m.content(), json!({ "text": "hello there" }));
    let uuid = m.uuid.clone().expect("reply carries a uuid");
    assert!(uuid.len() <= 50 && !uuid.is_empty(), "{uuid}");

    let events = journal(&t).await;
    assert_eq!(events.len(), 1);
    let e = &events[0]["event"];
    assert_eq!(e["kind"], "message");
    assert_eq!(e["external_id"], "ev-mention-1");
    assert_eq!(e["mentions"][0]["is_bot"], true);
    assert_eq!(e["text"], "@Perch_Bot hello there");
    // The verification token is not journaled.
    assert!(!events[0].to_string().contains(TOKEN));
}

/// On Feishu one app bot stands for every command: `help` writes each command with the
/// app's name as the person typed it (`@Perch_Bot 建群 …`), not perch's bot names.
#[tokio::test]
async fn help_names_the_app_bot_as_the_person_typed_it() {
    let extra = format!(
        r#"{GROUPS}
[bots.help]
kind = "help"

[[routes]]
connector = "feishu"
mention = "*"
command = "help"
stop = true
bots = ["help"]
"#
    );
    let (fake, _t, sender) = setup_with(&extra).await;
    let doc = sender.text_message(&fake, "ev-help-1", "om_user_h", "oc_team", "help", true);
    assert_eq!(sender.send(&doc).await.0, 200);
    let msgs = messages(&fake, 1).await;
    let content = msgs[0].content().to_string();
    assert!(
        content.contains("@Perch_Bot 建群 <customer> <code> @member …"),
        "{content}"
    );
    assert!(content.contains("@Perch_Bot <text>"), "{content}");
    assert!(
        !content.contains("@groups") && !content.contains("@echo"),
        "{content}"
    );
}

#[tokio::test]
async fn a_message_without_a_bot_mention_is_journaled_but_not_answered() {
    let (fake, t, sender) = setup().await;
    let doc = sender.text_message(
        &fake,
        "ev-chatter",
        "om_chatter",
        "oc_team",
        "just talking",
        false,
    );
    assert_eq!(sender.send(&doc).await.0, 200);
    // A second, addressed message in the same chat: once it is answered, the first one
    // (same lane, handled first) has been handled too.
    let doc = sender.text_message(
        &fake,
        "ev-addressed",
        "om_addressed",
        "oc_team",
        "ping",
        true,
    );
    assert_eq!(sender.send(&doc).await.0, 200);
    let msgs = messages(&fake, 1).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].reply_to.as_deref(), Some("om_addressed"));
    assert_eq!(journal(&t).await.len(), 2);
}

#[tokio::test]
async fn bad_requests_are_refused_and_store_nothing() {
    let (fake, t, sender) = setup().await;
    let doc = sender.text_message(&fake, "ev-bad", "om_bad", "oc_team", "hi", true);
    let good = sender.seal(&doc);

    // Wrong signature.
    let mut bad_sig = good.clone();
    bad_sig.headers[2].1 = "0".repeat(64);
    assert_eq!(sender.post("", &bad_sig).await.0, 401);
    // No signature.
    let unsigned = Sealed {
        body: good.body.clone(),
        headers: vec![],
    };
    assert_eq!(sender.post("", &unsigned).await.0, 401);
    // Right signature, wrong verification token inside.
    let wrong_token = EventSender::new(&t.url("/hooks/feishu"), "not-the-token", Some(KEY));
    let doc_wrong =
        wrong_token.text_message(&fake, "ev-bad-token", "om_bad2", "oc_team", "hi", true);
    assert_eq!(wrong_token.send(&doc_wrong).await.0, 401);
    // Bad ciphertext, correctly signed (so the decryption error is reported as such).
    let garbage = EventSender::new(&t.url("/hooks/feishu"), TOKEN, Some("some-other-key"));
    let mut bad_ct = garbage.seal(&doc);
    bad_ct.headers = signed_headers(&bad_ct.body);
    let (status, body) = sender.post("", &bad_ct).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("decrypt"),
        "{body}"
    );
    // Truncated body (the signature is over the full body, and it is not JSON anyway).
    let truncated = Sealed {
        body: good.body[..good.body.len() / 2].to_vec(),
        headers: good.headers.clone(),
    };
    assert!(matches!(sender.post("", &truncated).await.0, 400 | 401));
    // Not JSON at all, and an unknown sub-path.
    let junk = Sealed {
        body: b"hello".to_vec(),
        headers: vec![],
    };
    assert_eq!(sender.post("", &junk).await.0, 400);
    assert_eq!(sender.post("/elsewhere", &good).await.0, 404);

    assert!(journal(&t).await.is_empty(), "nothing stored");
    // And the good request still works afterwards.
    assert_eq!(sender.post("", &good).await.0, 200);
    assert_eq!(journal(&t).await.len(), 1);
}

/// A captured, correctly signed request replayed later (or stamped in the future) is
/// refused with a one-line reason and stores nothing, on the event URL and on the
/// legacy card URL.
#[tokio::test]
async fn replayed_requests_outside_the_timestamp_window_are_refused() {
    let (fake, t, sender) = setup().await;
    let now = chrono::Utc::now().timestamp();
    let doc = sender.text_message(&fake, "ev-replay", "om_replay", "oc_team", "hi", true);
    let legacy = json!({ "open_id": "ou_bob", "open_message_id": "om_card_9", "open_chat_id": "oc_team", "token": "c-9",
                         "action": { "tag": "button", "value": { "perch": { "bot": "echo", "action": "done", "args": {} } } } });
    for ts in [now - 86_400, now + 3_600] {
        let (status, body) = sender.post("", &sender.seal_at(&doc, ts)).await;
        assert_eq!(status, 401, "{body}");
        let reason = body["error"].as_str().unwrap();
        assert!(reason.contains("X-Lark-Request-Timestamp"), "{reason}");
        let (status, body) = sender
            .post("/card", &sender.seal_legacy_card_at(&legacy, ts))
            .await;
        assert_eq!(status, 401, "{body}");
    }
    assert!(journal(&t).await.is_empty(), "nothing stored");
    // Within the window (an hour old, a minute ahead): accepted.
    assert_eq!(
        sender.post("", &sender.seal_at(&doc, now - 3_600)).await.0,
        200
    );
    assert_eq!(journal(&t).await.len(), 1);
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

#[tokio::test]
async fn the_same_event_resent_is_handled_once() {
    let (fake, t, sender) = setup().await;
    let doc = sender.text_message(&fake, "ev-twice", "om_twice", "oc_team", "twice", true);
    assert_eq!(sender.send(&doc).await.0, 200);
    // Feishu re-sends the same event id (fresh encryption, IV and signature).
    assert_eq!(sender.send(&doc).await, (200, json!({ "msg": "success" })));
    let later = sender.text_message(&fake, "ev-after", "om_after", "oc_team", "after", true);
    assert_eq!(sender.send(&later).await.0, 200);
    // The later message is answered after the re-send would have been (same chat lane).
    let msgs = messages(&fake, 2).await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        msgs.iter()
            .filter(|m| m.reply_to.as_deref() == Some("om_twice"))
            .count(),
        1
    );
    assert_eq!(journal(&t).await.len(), 2);
}

// Ignored: `TestPerch::restart()` cannot reopen the store in-process today. Lanes hold
// their handler, whose closure holds the `Arc<Lanes>` (the `slot` in router::start and
// Outbox::start): a reference cycle, so after shutdown the Processor and Outbox (and
// with them the sled store and its file lock) are never dropped. Reproduced with a
// webhook-only config as well. Un-ignore once that cycle is broken (e.g. a `Weak` in
// the slot).
#[tokio::test]
async fn the_same_event_after_a_restart_is_handled_once() {
    let (fake, mut t, sender) = setup().await;
    let doc = sender.text_message(&fake, "ev-once", "om_once", "oc_team", "once", true);
    assert_eq!(sender.send(&doc).await.0, 200);
    messages(&fake, 1).await;

    t.restart().await;
    wait_for_identity(&t).await;
    let sender = EventSender::new(&t.url("/hooks/feishu"), TOKEN, Some(KEY));
    // Feishu re-sends the same event id (fresh encryption and signature).
    assert_eq!(sender.send(&doc).await, (200, json!({ "msg": "success" })));
    // A later message in the same chat is answered after the re-send would have been.
    let later = sender.text_message(&fake, "ev-later", "om_later", "oc_team", "later", true);
    assert_eq!(sender.send(&later).await.0, 200);
    let msgs = messages(&fake, 2).await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        msgs.iter()
            .filter(|m| m.reply_to.as_deref() == Some("om_once"))
            .count(),
        1
    );
    assert_eq!(journal(&t).await.len(), 2);
}

#[tokio::test]
async fn token_expiry_mid_run_refetches_and_delivers_once() {
    let (fake, _t, sender) = setup().await;
    let doc = sender.text_message(&fake, "ev-t1", "om_t1", "oc_team", "first", true);
    sender.send(&doc).await;
    messages(&fake, 1).await;
    let fetches_before = fake.lock().token_fetches;

    fake.expire_tokens();
    let doc = sender.text_message(&fake, "ev-t2", "om_t2", "oc_team", "second", true);
    sender.send(&doc).await;
    let msgs = messages(&fake, 2).await;
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1].content(), json!({ "text": "second" }));
    assert_eq!(
        fake.lock().token_fetches,
        fetches_before + 1,
        "exactly one refetch"
    );
    // The refused call and its retry, nothing more.
    assert_eq!(
        fake.calls_to("/open-apis/im/v1/messages/om_t2/reply").len(),
        2
    );
}

#[tokio::test]
async fn a_rate_limit_storm_delivers_everything_exactly_once() {
    let (fake, t, sender) = setup().await;
    fake.fail_next(3, Fault::RateLimited { reset_secs: 1 });
    fake.fail_next(3, Fault::ServerError);
    let n = 20;
    for i in 0..n {
        // Five chats, so per-chat lanes run side by side.
        let doc = sender.text_message(
            &fake,
            &format!("ev-storm-{i}"),
            &format!("om_storm_{i}"),
            &format!("oc_{}", i % 5),
            &format!("msg {i}"),
            true,
        );
        assert_eq!(sender.send(&doc).await.0, 200);
    }
    let msgs = messages(&fake, n).await;
    assert_eq!(msgs.len(), n, "one message per event");
    let replied: std::collections::HashSet<_> =
        msgs.iter().filter_map(|m| m.reply_to.clone()).collect();
    assert_eq!(replied.len(), n);
    // Every call counts, not only the messages the fake kept: each uuid was answered
    // with success exactly once (a repeat would be hidden by Feishu's idempotency).
    let calls = fake.lock().calls.clone();
    for m in &msgs {
        let uuid = m.uuid.clone().expect("every message carries a uuid");
        let ok = calls
            .iter()
            .filter(|c| c.body["uuid"] == uuid.as_str() && c.fault.is_none())
            .count();
        assert_eq!(ok, 1, "uuid {uuid} succeeded {ok} times");
    }
    let dead: Value = reqwest::get(t.url("/api/dead-letters"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead["dead_letters"], json!([]));
    assert!(
        fake.calls_to("/open-apis/im/v1/messages").len() >= n + 6,
        "the faults were really hit"
    );
    // A 429 pauses every call to the app, not only the item that got it.
    assert_eq!(fake.calls_inside_rate_limit_windows(), vec![]);
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

/// Told `x-ogw-ratelimit-reset: 1`, perch waits that second (plus a little jitter), not
/// an exponential backoff on top of it.
#[tokio::test]
async fn a_rate_limit_reset_is_the_wait() {
    let (fake, _t, sender) = setup().await;
    // For the record (printed, not asserted): event to reply with nothing in the way.
    let plain = sender.text_message(&fake, "ev-plain", "om_plain", "oc_team", "hi", true);
    let posted = std::time::Instant::now();
    assert_eq!(sender.send(&plain).await.0, 200);
    messages(&fake, 1).await;
    eprintln!("event to reply at the fake: {:?}", posted.elapsed());

    fake.fail_next(1, Fault::RateLimited { reset_secs: 1 });
    let doc = sender.text_message(&fake, "ev-429", "om_429", "oc_team", "hi", true);
    let posted = std::time::Instant::now();
    assert_eq!(sender.send(&doc).await.0, 200);
    messages(&fake, 2).await;
    let delivered = posted.elapsed();
    let calls = fake.calls_to("/open-apis/im/v1/messages/om_429/reply");
    assert_eq!(calls.len(), 2, "one refused, one delivered");
    let gap = calls[1].at - calls[0].at;
    assert!(
        gap >= std::time::Duration::from_secs(1) && gap < std::time::Duration::from_millis(1600),
        "waited {gap:?} after a 1 s reset"
    );
    eprintln!("event to reply after a 429 with a 1 s reset: {delivered:?}");
}

#[tokio::test]
async fn card_clicks_become_card_actions_for_the_named_bot() {
    let (fake, t, sender) = setup().await;
    let click = sender.envelope(
        "card.action.trigger",
        "ev-click-1",
        json!({
            "operator": { "open_id": "ou_alice", "user_id": "alice", "union_id": "on_alice", "tenant_key": "tk" },
            "token": "c-update", "host": "im_message",
            "action": { "tag": "button", "value": { "perch": { "bot": "echo", "action": "done", "args": { "id": "42" } } } },
            "context": { "open_message_id": "om_card_1", "open_chat_id": "oc_team" }
        }),
    );
    fake.lock()
        .user_messages
        .insert("om_card_1".into(), "oc_team".into());
    // The answer carries the bot's toast (echo echoes the action as a toast).
    assert_eq!(
        sender.send(&click).await,
        (
            200,
            json!({ "toast": { "type": "info", "content": "done {\"id\":\"42\"}" } })
        )
    );
    // Feishu retries the same callback: handled once, answered the same.
    assert_eq!(
        sender.send(&click).await,
        (
            200,
            json!({ "toast": { "type": "info", "content": "done {\"id\":\"42\"}" } })
        )
    );

    // The legacy card request URL: SHA-1 signature over the verification token.
    let legacy = json!({ "open_id": "ou_bob", "open_message_id": "om_card_1", "open_chat_id": "oc_team", "token": "c-update",
                         "action": { "tag": "button", "value": { "perch": { "bot": "echo", "action": "snooze", "args": {} } } } });
    let sealed = sender.seal_legacy_card(&legacy);
    assert_eq!(sender.post("/card", &sealed).await, (200, json!({})));
    // The same click again (no event id on the legacy URL): deduplicated.
    assert_eq!(sender.post("/card", &sealed).await.0, 200);
    // A legacy click with a bad signature is refused.
    let mut forged = sealed.clone();
    forged.headers[2].1 = "0".repeat(40);
    assert_eq!(sender.post("/card", &forged).await.0, 401);
    // The same button pressed a second time: a new callback with its own card-update
    // token. It is a new click and reaches the bot (not the first click's answer).
    let mut second = legacy.clone();
    second["token"] = json!("c-update-second-press");
    assert_eq!(
        sender
            .post("/card", &sender.seal_legacy_card(&second))
            .await
            .0,
        200
    );

    let events = journal(&t).await;
    assert_eq!(events.len(), 3, "{events:?}");
    for e in &events {
        assert_eq!(e["event"]["kind"], "card_action");
        assert_eq!(e["event"]["card_action"]["bot"], "echo");
        assert_eq!(e["event"]["card_action"]["message_id"], "om_card_1");
        assert_eq!(e["event"]["chat"]["id"], "oc_team");
    }
    let actions: Vec<_> = events
        .iter()
        .map(|e| {
            e["event"]["card_action"]["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(actions.contains(&"done".to_string()) && actions.contains(&"snooze".to_string()));
    assert_eq!(
        actions.iter().filter(|a| *a == "snooze").count(),
        2,
        "both presses of snooze were handled"
    );
    // The echo bot answered both with toasts, not with messages to the chat.
    assert!(fake.calls_to("/open-apis/im/v1/messages").is_empty());
}

#[tokio::test]
async fn other_event_types_are_journaled_as_system_events() {
    let (_fake, t, sender) = setup().await;
    let added = sender.envelope(
        "im.chat.member.bot.added_v1",
        "ev-added",
        json!({ "chat_id": "oc_new", "operator_id": { "open_id": "ou_alice" }, "name": "Alpha" }),
    );
    let unknown = sender.envelope(
        "contact.user.created_v3",
        "ev-unknown",
        json!({ "object": { "open_id": "ou_x" } }),
    );
    assert_eq!(
        sender.send(&added).await,
        (200, json!({ "msg": "success" }))
    );
    assert_eq!(
        sender.send(&unknown).await,
        (200, json!({ "msg": "success" }))
    );
    // Schema 1.0, unencrypted body but signed (the key is set, so the signature is required).
    let v1 = json!({ "uuid": "u-v1-1", "token": TOKEN, "ts": "1700000000.1", "type": "event_callback", "event": { "type": "p2p_chat_create", "chat_id": "oc_p2p" } });
    let body = v1.to_string().into_bytes();
    let sealed = Sealed {
        headers: signed_headers(&body),
        body,
    };
    assert_eq!(sender.post("", &sealed).await.0, 200);

    let events = journal(&t).await;
    let mut topics: Vec<String> = events
        .iter()
        .map(|e| e["event"]["topic"].as_str().unwrap_or_default().to_string())
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        vec![
            "feishu.contact.user.created_v3",
            "feishu.im.chat.member.bot.added_v1",
            "feishu.p2p_chat_create"
        ]
    );
}

#[tokio::test]
async fn group_creation_with_120_members_by_email() {
    let (fake, t, _sender) = setup().await;
    let mut members: Vec<String> = (0..118).map(|i| format!("user{i}@example.com")).collect();
    members.push("ghost1@example.com".into());
    members.push("ghost2@example.com".into());
    let op = Operation::CreateChat {
        spec: ChatSpec {
            name: "【项目】Acme-P12".into(),
            description: None,
            members,
            member_id_type: Some("email".into()),
            owner: None,
        },
    };
    let feishu = t.connector("feishu");
    let delivered = feishu
        .execute(&op, "ev-1/auto_group/0000")
        .await
        .expect("chat created");
    let chat_id = delivered.id.clone().unwrap();

    let chat = fake.lock().chats[&chat_id].clone();
    assert_eq!(chat.created_with_members, 0, "created without members");
    assert_eq!(chat.members.len(), 118);
    assert_eq!(
        delivered.detail["invalid_ids"],
        json!(["ghost1@example.com", "ghost2@example.com"])
    );
    assert_eq!(
        fake.calls_to("/open-apis/contact/v3/users/batch_get_id")
            .len(),
        3
    );
    let adds = fake.calls_to(&format!("/open-apis/im/v1/chats/{chat_id}/members"));
    assert_eq!(adds.len(), 3, "118 open_ids in batches of 50");
    assert!(
        adds.iter()
            .all(|c| c.query.get("succeed_type").map(String::as_str) == Some("1"))
    );
    let creates = fake.calls_to("/open-apis/im/v1/chats");
    let create = creates
        .iter()
        .find(|c| c.path == "/open-apis/im/v1/chats")
        .unwrap();
    assert!(create.query.contains_key("uuid") && create.query["set_bot_manager"] == "true");
    // The first call in the list happened before the member adds.
    let calls = fake.lock().calls.clone();
    let create_at = calls
        .iter()
        .position(|c| c.path == "/open-apis/im/v1/chats")
        .unwrap();
    let first_add = calls
        .iter()
        .position(|c| c.path.ends_with("/members"))
        .unwrap();
    assert!(create_at < first_add);

    // A retry of the same operation (same key) finds the same chat.
    let again = feishu.execute(&op, "ev-1/auto_group/0000").await.unwrap();
    assert_eq!(again.id, delivered.id);
    assert_eq!(fake.lock().chats.len(), 1);
}

/// Chats whose name is `name`, and the replies in `chat` so far (text of each).
fn replies_in(fake: &FakeFeishu, chat: &str) -> Vec<String> {
    fake.messages()
        .iter()
        .filter(|m| m.chat_id == chat && m.reply_to.is_some())
        .map(|m| m.content().to_string())
        .collect()
}

/// Wait (up to 20 s) until `oc_team` has `n` replies; return them.
async fn wait_replies(fake: &FakeFeishu, n: usize) -> Vec<String> {
    eventually(20, &format!("{n} replies in oc_team"), || {
        let fake = fake.clone();
        async move {
            let r = replies_in(&fake, "oc_team");
            (r.len() >= n).then_some(r)
        }
    })
    .await
}

async fn ask_for_group(fake: &FakeFeishu, sender: &EventSender, id: &str, text: &str) {
    let doc = sender.text_message(fake, id, &format!("om_{id}"), "oc_team", text, true);
    assert_eq!(sender.send(&doc).await.0, 200);
}

/// Adding members fails after the chat was created: the project keeps its one chat,
/// the failure is reported in the group and to the requester, and the next request
/// for the project adds the members to that chat instead of creating another.
#[tokio::test]
async fn a_failed_member_add_never_leads_to_a_second_group() {
    let (fake, _t, sender) = setup_with(GROUPS).await;
    // Both add-members calls of the first request (the one inside creating the chat,
    // and the bot's retry of it) are refused: a missing scope.
    fake.fail_path(
        "/open-apis/im/v1/chats/",
        2,
        Fault::Code {
            status: 400,
            code: 99991672,
            msg: "Access denied. One of the following scopes is required: [im:chat]".into(),
        },
    );
    ask_for_group(&fake, &sender, "g1", "建群 Acme P12").await;
    let first = wait_replies(&fake, 1).await;
    assert!(
        first[0].contains("Created") && first[0].contains("failed"),
        "{first:?}"
    );
    assert_eq!(fake.lock().chats.len(), 1);
    let chat_id = fake.lock().chats.keys().next().unwrap().clone();
    // The group got the welcome and a note about the members.
    let in_group = eventually(20, "welcome and note in the group", || {
        let fake = fake.clone();
        let chat_id = chat_id.clone();
        async move {
            let m: Vec<Message> = fake
                .messages()
                .into_iter()
                .filter(|m| m.chat_id == chat_id)
                .collect();
            (m.len() >= 2).then_some(m)
        }
    })
    .await;
    assert!(
        in_group
            .iter()
            .any(|m| m.content().to_string().contains("failed"))
    );

    // Asked again (a new event): the same chat, the members added now.
    ask_for_group(&fake, &sender, "g2", "建群 Acme P12").await;
    let replies = wait_replies(&fake, 2).await;
    assert!(
        replies[1].contains("Finished") && replies[1].contains(&chat_id),
        "{replies:?}"
    );
    assert_eq!(fake.lock().chats.len(), 1, "one chat per project");
    assert_eq!(
        fake.calls_to("/open-apis/im/v1/chats")
            .iter()
            .filter(|c| c.path == "/open-apis/im/v1/chats")
            .count(),
        1,
        "the chat was created by one call"
    );
    assert!(
        !fake.lock().chats[&chat_id].members.is_empty(),
        "members added on the retry"
    );
    // The welcome card was posted once.
    let welcomes = fake
        .messages()
        .iter()
        .filter(|m| m.chat_id == chat_id && m.content().to_string().contains("Welcome"))
        .count();
    assert_eq!(welcomes, 1);
    assert!(fake.refused().is_empty(), "{:?}", fake.refused());
}

/// A step after the claim fails (the e-mail lookup is refused): nothing stays "being
/// created"; and a claim left by a request that died expires and is taken over.
#[tokio::test]
async fn a_project_claim_never_sticks() {
    let (fake, t, sender) = setup_with(GROUPS).await;
    fake.fail_path(
        "/open-apis/contact/",
        1,
        Fault::Code {
            status: 400,
            code: 99991672,
            msg:
                "Access denied. One of the following scopes is required: [contact:user.id:readonly]"
                    .into(),
        },
    );
    ask_for_group(&fake, &sender, "c1", "建群 Beta Q7 dan@corp.com").await;
    wait_replies(&fake, 1).await;
    ask_for_group(&fake, &sender, "c2", "建群 Beta Q7").await;
    let replies = wait_replies(&fake, 2).await;
    assert!(!replies[1].contains("being created"), "{replies:?}");
    assert!(replies[1].contains("Finished"), "{replies:?}");
    assert_eq!(fake.lock().chats.len(), 1);
    let chat_id = fake.lock().chats.keys().next().unwrap().clone();
    assert!(
        fake.lock().chats[&chat_id]
            .members
            .contains(&open_id_for("dan@corp.com")),
        "the e-mail member was added on the retry"
    );

    // A claim whose request died (no chat, claimed long ago) is taken over.
    let stale = json!({ "name": "【项目】Gamma-R1", "chat_id": null, "connector": "feishu",
                        "event": "00000000-0000-0000-0000-000000000000",
                        "claimed_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339() });
    t.store()
        .kv_put("bot/groups", "project/R1", stale.to_string().as_bytes())
        .await
        .unwrap();
    ask_for_group(&fake, &sender, "c3", "建群 Gamma R1").await;
    let replies = wait_replies(&fake, 3).await;
    assert!(replies[2].contains("Created"), "{replies:?}");
    assert_eq!(fake.lock().chats.len(), 2);
}

/// Awaited calls (creating a chat) wait on the same rate limits as the outbox: after a
/// 429 with a 2 s reset on a message, the chat is not created inside those 2 s.
#[tokio::test]
async fn awaited_calls_honour_the_connector_rate_limit() {
    let (fake, _t, sender) = setup_with(GROUPS).await;
    fake.fail_path(
        "/open-apis/im/v1/messages",
        1,
        Fault::RateLimited { reset_secs: 2 },
    );
    let doc = sender.text_message(&fake, "rl1", "om_rl1", "oc_other", "hello", true);
    assert_eq!(sender.send(&doc).await.0, 200);
    eventually(10, "the 429", || {
        let fake = fake.clone();
        async move { (!fake.calls_to("/open-apis/im/v1/messages").is_empty()).then_some(()) }
    })
    .await;
    // Past the fake's grace for requests already on the wire.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ask_for_group(&fake, &sender, "rl2", "建群 Delta D4").await;
    eventually(20, "the group", || {
        let fake = fake.clone();
        async move { (!fake.lock().chats.is_empty()).then_some(()) }
    })
    .await;
    assert_eq!(fake.calls_inside_rate_limit_windows(), vec![]);
}

#[tokio::test]
async fn direct_messages_cards_updates_and_errors() {
    let (fake, t, _sender) = setup().await;
    let feishu = t.connector("feishu");
    // A DM by e-mail, as markdown → post with an md element.
    let dm = Operation::Send {
        to: Target::Person {
            id: "ann@example.com".into(),
            id_type: Some("email".into()),
        },
        body: MessageBody::markdown("**hi**"),
        reply_to: None,
    };
    feishu.execute(&dm, "k-dm").await.unwrap();
    // A card → interactive, content a string, update_multi set.
    // A neutral card (perch's own format; the connector renders it to Feishu 2.0).
    let card = json!({ "header": { "title": "T" }, "elements": [{ "type": "markdown", "text": "**hi**" }] });
    let send_card = Operation::Send {
        to: Target::chat("oc_team"),
        body: MessageBody::Card { card: card.clone() },
        reply_to: None,
    };
    let sent = feishu.execute(&send_card, "k-card").await.unwrap();
    // Same key again: the fake sees the same uuid and keeps one message.
    let again = feishu.execute(&send_card, "k-card").await.unwrap();
    assert_eq!(sent.id, again.id);
    let update = Operation::Update {
        chat_id: Some("oc_team".into()),
        message_id: sent.id.clone().unwrap(),
        body: MessageBody::Card { card },
    };
    feishu.execute(&update, "k-update").await.unwrap();

    let msgs = fake.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        (
            msgs[0].receive_id_type.as_str(),
            msgs[0].receive_id.as_str()
        ),
        ("email", "ann@example.com")
    );
    assert_eq!(
        msgs[0].content().pointer("/zh_cn/content/0/0/tag"),
        Some(&json!("md"))
    );
    assert_eq!(msgs[1].msg_type, "interactive");
    assert_eq!(msgs[1].content()["config"]["update_multi"], true);
    assert_eq!(msgs[1].patches.len(), 1);

    // A permission error is permanent and says the code; a 5xx is retried.
    fake.fail_next(
        1,
        Fault::Code {
            status: 400,
            code: 99991672,
            msg: "Access denied. One of the following scopes is required: [im:message]".into(),
        },
    );
    let e = feishu.execute(&dm, "k-dm-2").await.unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent(m) if m.contains("99991672") && m.contains("scope")),
        "{e}"
    );
    fake.fail_next(1, Fault::ServerError);
    assert!(matches!(
        feishu.execute(&dm, "k-dm-3").await,
        Err(SendError::Retry { .. })
    ));
    fake.fail_next(1, Fault::RateLimited { reset_secs: 1 });
    match feishu.execute(&dm, "k-dm-4").await {
        Err(SendError::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Some(std::time::Duration::from_secs(1)))
        }
        other => panic!("{other:?}"),
    }
    // A slow answer is still an answer.
    fake.fail_next(1, Fault::Slow(std::time::Duration::from_millis(300)));
    feishu.execute(&dm, "k-dm-5").await.unwrap();
    // An id type Feishu does not know is refused before any call.
    let bad = Operation::Send {
        to: Target::Person {
            id: "x".into(),
            id_type: Some("nickname".into()),
        },
        body: MessageBody::text("x"),
        reply_to: None,
    };
    assert!(matches!(
        feishu.execute(&bad, "k-bad").await,
        Err(SendError::Permanent(_))
    ));
}

#[tokio::test]
async fn concurrent_callers_share_one_token_fetch() {
    let (fake, t, _sender) = setup().await;
    fake.expire_tokens();
    let feishu = t.connector("feishu");
    let before = fake.lock().token_fetches;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let f = feishu.clone();
        tasks.push(tokio::spawn(async move {
            let op = Operation::Send {
                to: Target::chat(format!("oc_{i}")),
                body: MessageBody::text("x"),
                reply_to: None,
            };
            f.execute(&op, &format!("k-conc-{i}")).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        fake.lock().token_fetches,
        before + 1,
        "one refresh for ten callers"
    );
    assert_eq!(fake.messages().len(), 10);
}

#[tokio::test]
async fn custom_group_bot_is_signed_and_verified_by_the_fake() {
    let fake = FakeFeishu::start().await;
    let url = fake.add_hook("hook-token-1", Some("bot-secret"), Some("[perch]"));
    let bad_url = fake.add_hook("hook-token-2", Some("another-secret"), None);
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[connectors.group]
kind = "feishu_webhook"
webhook_url = "{url}"
secret = "bot-secret"
keyword = "[perch]"

[connectors.wrong]
kind = "feishu_webhook"
webhook_url = "{bad_url}"
secret = "bot-secret"
"#
    );
    let t = TestPerch::start(&cfg).await;
    let group = t.connector("group");
    let text = Operation::Send {
        to: Target::chat("ignored"),
        body: MessageBody::text("build failed"),
        reply_to: None,
    };
    group
        .execute(&text, "k1")
        .await
        .expect("accepted by the fake");
    let card = Operation::Send {
        to: Target::chat("ignored"),
        body: MessageBody::Card {
            card: json!({ "elements": [{ "type": "divider" }] }),
        },
        reply_to: None,
    };
    group.execute(&card, "k2").await.expect("card accepted");
    let got = fake.lock().hook_messages.clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["content"]["text"], "build failed\n[perch]");
    assert!(got[0]["sign"].is_string() && got[0]["timestamp"].is_string());
    assert!(got[1]["card"].is_object());

    // The wrong secret: the fake answers 19021, perch reports it clearly and gives up.
    let wrong = t.connector("wrong");
    let e = wrong.execute(&text, "k3").await.unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent(m) if m.contains("19021")),
        "{e}"
    );
    // Send-only.
    let upd = Operation::Update {
        chat_id: None,
        message_id: "om".into(),
        body: MessageBody::text("x"),
    };
    assert!(matches!(
        group.execute(&upd, "k4").await,
        Err(SendError::Unsupported(_))
    ));
    assert_eq!(fake.lock().hook_messages.len(), 2);
}

#[test]
fn bad_configs_are_refused_with_clear_reasons() {
    let text = r#"
[connectors.feishu]
kind = "feishu"
app_id = ""
app_secret = "s"
verification_token = ""
base_url = "open.feishu.cn"
rate_per_second = 0

[connectors.group]
kind = "feishu_webhook"
webhook_url = "not a url"
"#;
    let err = perch::config::Config::from_str(text, std::path::Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    for needle in [
        "app_id is empty",
        "verification_token is empty",
        "base_url",
        "rate_per_second must be at least 1",
        "webhook_url is not an http(s) URL",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let typo = "[connectors.feishu]\nkind = \"feishu\"\napp_id = \"cli\"\napp_secret = \"s\"\nverification_token = \"t\"\nencrypt_kye = \"k\"\n";
    let err = perch::config::Config::from_str(typo, std::path::Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encrypt_kye") && err.contains("t.toml:"),
        "{err}"
    );
}

#[tokio::test]
async fn rate_limits_follow_feishu_quotas() {
    let fake = FakeFeishu::start().await;
    let t = TestPerch::start(&config(&fake)).await;
    let limits = t.connector("feishu").rate_limits();
    assert_eq!(
        (
            limits.per_second,
            limits.per_minute,
            limits.per_chat_per_second
        ),
        (Some(50), Some(1000), Some(5))
    );
    let url = fake.add_hook("h", None, None);
    let t2 = TestPerch::start(&format!(
        "[connectors.g]\nkind = \"feishu_webhook\"\nwebhook_url = \"{url}\"\n"
    ))
    .await;
    let limits = t2.connector("g").rate_limits();
    assert_eq!((limits.per_second, limits.per_minute), (Some(5), Some(100)));
}

/// A reminder card's Done button on Feishu: someone else gets a toast; the owner gets a
/// toast and the replacement card (schema 2.0) in the callback's answer, and the card is
/// also PATCHed through the outbox.
#[tokio::test]
async fn a_card_click_is_answered_with_a_toast_and_the_replacement_card() {
    let fake = FakeFeishu::start().await;
    let config = format!(
        r#"{}
[bots.tasks]
kind = "reminders"
timezone = "UTC"

[[routes]]
connector = "feishu"
command = "remind"
bots = ["tasks"]

[[routes]]
kind = "tick"
bots = ["tasks"]
"#,
        config(&fake)
    );
    let t = TestPerch::start(&config).await;
    wait_for_identity(&t).await;
    let sender = EventSender::new(&t.url("/hooks/feishu"), TOKEN, Some(KEY));
    let ask = sender.text_message(
        &fake,
        "ev-r1",
        "om_ask",
        "oc_team",
        "remind me in 2 hours call the supplier",
        true,
    );
    assert_eq!(sender.send(&ask).await.0, 200);
    // echo and tasks both answer the mention.
    let msgs = messages(&fake, 2).await;
    let ok = msgs
        .iter()
        .find(|m| m.content.contains("I'll remind"))
        .expect("the reminders bot confirms");
    let item = ok.content.rsplit('`').nth(1).unwrap().to_string();

    let slot = chrono::Utc::now() + chrono::Duration::minutes(121);
    t.journal()
        .accept(vec![tick("reminders", &slot.to_rfc3339())])
        .await
        .unwrap();
    let msgs = messages(&fake, 3).await;
    let card = msgs
        .iter()
        .find(|m| m.msg_type == "interactive")
        .expect("the reminder card");
    assert_eq!(card.chat_id, "oc_team");
    let content: Value = serde_json::from_str(&card.content).unwrap();
    assert_eq!(content["config"]["update_multi"], true);

    let press = |event_id: &str, who: &str| {
        sender.envelope(
            "card.action.trigger",
            event_id,
            json!({
                "operator": { "open_id": who, "tenant_key": "tk" },
                "token": "c-update", "host": "im_message",
                "action": { "tag": "button", "value": { "perch": { "bot": "tasks", "action": "done", "args": { "id": item } } } },
                "context": { "open_message_id": card.message_id, "open_chat_id": "oc_team" }
            }),
        )
    };
    let (status, bob) = sender.send(&press("ev-c1", "ou_bob")).await;
    assert_eq!(status, 200);
    assert_eq!(bob["toast"]["type"], "warning");
    assert!(
        bob["toast"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Sorry, only"),
        "{bob}"
    );
    assert!(bob.get("card").is_none());

    let (status, alice) = sender.send(&press("ev-c2", "ou_alice")).await;
    assert_eq!(status, 200);
    assert_eq!(
        alice["toast"],
        json!({ "type": "success", "content": "Done. No more reminders." })
    );
    assert_eq!(alice["card"]["type"], "raw");
    let data = &alice["card"]["data"];
    assert_eq!(data["schema"], "2.0");
    assert_eq!(
        data["header"]["title"]["content"],
        "Done: call the supplier"
    );
    assert_eq!(data["config"]["update_multi"], true);
    // The outbox PATCHes the same card too (in case the answer came too late).
    let card_id = card.message_id.clone();
    eventually(10, "the card is patched", || {
        let fake = fake.clone();
        let id = card_id.clone();
        async move {
            fake.messages()
                .into_iter()
                .find(|m| m.message_id == id && !m.patches.is_empty())
        }
    })
    .await;
}
