//! A property test (issue 20) that feeds every inbound decoder hostile input, signed
//! correctly so that it gets past verification: the webhook, Feishu events (plain and
//! encrypted), Feishu's legacy card callback, and the web chat (messages and clicks).
//!
//! For every case: no panic (no 5xx), and the answer is one line of JSON. After all
//! cases: every event the journal holds reads back, alone and in pages; the ingest log
//! replays every one of them with no unreadable or torn record; and after a restart
//! they all still read back.
//!
//! The case count is modest so that `cargo test` stays fast; raise it for a long run
//! with `PERCH_FUZZ_CASES=2000 cargo test --test fuzz_inbound`.

use perch::testing::fake_feishu;

use fake_feishu::*;
use perch::action::{MessageBody, Operation, Target};
use perch::testing::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::collections::HashSet;

const SECRET: &str = "fuzz-webhook-secret";

fn config(fake: &FakeFeishu) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
body_limit = 65536

[connectors.hooks]
kind = "webhook"
secret = "{SECRET}"
topic_header = "X-Topic"
id_header = "X-Delivery"
chat_pointer = "/chat"
sender_pointer = "/sender"

{feishu}
{feishu_plain}
[connectors.web]
kind = "local"

[bots.echo]
kind = "echo"

[[routes]]
mention = "*"
bots = ["echo"]
"#,
        feishu = app_connector("feishu", &fake.base, true),
        feishu_plain = app_connector("feishu_plain", &fake.base, false),
    )
}

/// Strings with what hostile senders use: control characters, NUL, ANSI escapes,
/// invisible and bidi characters, any script, and perch's own names.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just('\0'),
                Just('\u{1b}'),
                Just('\n'),
                Just('\u{200b}'),
                Just('\u{202e}'),
                Just('\u{feff}'),
                Just('/'),
                Just('.'),
                Just('%'),
                Just('@'),
                Just('１'),
                Just('٣'),
                Just('a'),
                Just('漢'),
            ],
            0..12
        )
        .prop_map(|cs| cs.into_iter().collect()),
        Just("perch".to_string()),
        Just("@echo hi".to_string()),
    ]
}

/// `[[…]]`, `depth` levels deep.
fn nested(depth: usize) -> Value {
    let mut v = Value::Array(Vec::new());
    for _ in 1..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// Any JSON, sometimes nested around the depth limit (64) and serde_json's (128).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        hostile_string().prop_map(Value::from),
    ];
    let tree = leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(hostile_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        4 => tree,
        1 => (58usize..70).prop_map(nested),
        1 => (120usize..135).prop_map(nested),
    ]
}

/// One inbound request, before signing.
#[derive(Debug, Clone)]
enum Case {
    /// Raw bytes or JSON to the webhook, with a delivery id that may not be UTF-8.
    Webhook { body: Vec<u8>, delivery: Vec<u8> },
    /// A Feishu document (an envelope, or anything), encrypted or plain.
    Feishu { doc: Value, encrypted: bool },
    /// A legacy card callback.
    LegacyCard { doc: Value },
    /// A web-chat message.
    WebMessage { author: String, text: String },
    /// A web-chat card click.
    WebClick {
        author: String,
        bot: String,
        action: String,
        args: Value,
    },
}

fn case() -> impl Strategy<Value = Case> {
    let webhook_body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), hostile_string(), hostile_string()).prop_map(|(v, chat, sender)| {
            json!({ "chat": chat, "sender": sender, "data": v })
                .to_string()
                .into_bytes()
        }),
        (60usize..140).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
    ];
    let delivery = prop_oneof![
        hostile_string().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    let event_type = prop_oneof![
        Just("im.message.receive_v1".to_string()),
        Just("card.action.trigger".to_string()),
        Just("im.chat.updated_v1".to_string()),
        hostile_string(),
    ];
    let message = (
        hostile_string(),
        json_value(),
        hostile_string(),
        json_value(),
    )
        .prop_map(|(chat, content, text, mentions)| {
            json!({
                "sender": { "sender_id": { "open_id": "ou_fuzz" }, "sender_type": "user" },
                "message": { "message_id": "om_fuzz", "chat_id": chat, "chat_type": "group",
                             "message_type": "text",
                             "content": json!({ "text": text, "extra": content }).to_string(),
                             "mentions": mentions }
            })
        });
    let event = prop_oneof![json_value(), message];
    let envelope = (event_type, hostile_string(), event).prop_map(|(t, id, event)| {
        json!({
            "schema": "2.0",
            "header": { "event_id": id, "event_type": t, "token": TOKEN, "create_time": "1700000000000" },
            "event": event
        })
    });
    let feishu_doc = prop_oneof![
        4 => envelope,
        1 => json_value(),
        1 => hostile_string().prop_map(|c| json!({ "challenge": c, "token": TOKEN, "type": "url_verification" })),
    ];
    let legacy = (hostile_string(), hostile_string(), json_value(), hostile_string()).prop_map(
        |(open_id, bot, args, token)| {
            json!({ "open_id": open_id, "open_message_id": "om_fuzz", "open_chat_id": "oc_fuzz", "token": token,
                    "action": { "tag": "button", "value": { "perch": { "bot": bot, "action": "x", "args": args } } } })
        },
    );
    prop_oneof![
        (webhook_body, delivery).prop_map(|(body, delivery)| Case::Webhook { body, delivery }),
        (feishu_doc, any::<bool>()).prop_map(|(doc, encrypted)| Case::Feishu { doc, encrypted }),
        legacy.prop_map(|doc| Case::LegacyCard { doc }),
        (hostile_string(), hostile_string())
            .prop_map(|(author, text)| Case::WebMessage { author, text }),
        (
            hostile_string(),
            hostile_string(),
            hostile_string(),
            json_value()
        )
            .prop_map(|(author, bot, action, args)| Case::WebClick {
                author,
                bot,
                action,
                args
            }),
    ]
}

struct Target_ {
    http: reqwest::Client,
    base: String,
    card_message: String,
}

/// Send one case; returns (status, body text).
async fn send(t: &Target_, case: &Case, n: u64) -> (u16, String) {
    let mut req = match case {
        Case::Webhook { body, delivery } => {
            let mut r = t
                .http
                .post(format!("{}/hooks/hooks", t.base))
                .header("X-Topic", "fuzz")
                .header(
                    "X-Perch-Signature",
                    format!("sha256={}", sign(SECRET, body)),
                )
                .body(body.clone());
            if let Ok(v) = reqwest::header::HeaderValue::from_bytes(delivery) {
                r = r.header("X-Delivery", v);
            }
            r
        }
        Case::Feishu { doc, encrypted } => {
            let (hook, key) = if *encrypted {
                ("feishu", Some(KEY))
            } else {
                ("feishu_plain", None)
            };
            let sender = EventSender::new(&format!("{}/hooks/{hook}", t.base), TOKEN, key);
            let sealed = sender.seal(doc);
            let mut r = t
                .http
                .post(format!("{}/hooks/{hook}", t.base))
                .body(sealed.body);
            for (k, v) in sealed.headers {
                r = r.header(k, v);
            }
            r
        }
        Case::LegacyCard { doc } => {
            let sender = EventSender::new(&format!("{}/hooks/feishu", t.base), TOKEN, None);
            let sealed = sender.seal_legacy_card(doc);
            let mut r = t
                .http
                .post(format!("{}/hooks/feishu/card", t.base))
                .body(sealed.body);
            for (k, v) in sealed.headers {
                r = r.header(k, v);
            }
            r
        }
        Case::WebMessage { author, text } => t
            .http
            .post(format!("{}/chat/api/rooms/general/messages", t.base))
            .json(&json!({ "author": author, "text": text, "client_id": format!("fuzz-{n}") })),
        Case::WebClick {
            author,
            bot,
            action,
            args,
        } => t
            .http
            .post(format!("{}/chat/api/rooms/general/actions", t.base))
            .json(&json!({ "message_id": t.card_message, "author": author, "client_id": format!("fuzz-{n}"),
                           "action": { "bot": bot, "action": action, "args": args } })),
    };
    req = req.header("content-type", "application/json");
    let resp = req.send().await.expect("perch answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Every event in the journal (each page must answer 200), and each read alone.
async fn journal_ids(t: &TestPerch) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = t.url("/api/events?limit=50");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let page: Value = resp.json().await.unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        before = events.last().unwrap()["event"]["id"]
            .as_str()
            .map(str::to_string);
        for e in events {
            ids.insert(e["event"]["id"].as_str().unwrap().to_string());
        }
    }
    for id in &ids {
        let resp = reqwest::get(t.url(&format!("/api/events/{id}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "event {id} reads back");
    }
    ids
}

/// What a replay of the ingest log would bring back, and how many records it could
/// not read.
fn replayable(data_dir: &std::path::Path) -> (HashSet<String>, usize, usize) {
    let mut ids = HashSet::new();
    let (mut unreadable, mut torn) = (0, 0);
    for entry in std::fs::read_dir(data_dir.join("ingest-log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let d = perch::testing::internals::ingest_log_decode(&std::fs::read(&path).unwrap());
            unreadable += d.unreadable.len();
            torn += d.torn;
            ids.extend(d.records.iter().map(|r| r.event.id.to_string()));
        }
    }
    (ids, unreadable, torn)
}

#[test]
fn every_inbound_decoder_survives_hostile_input_and_what_it_acks_replays() {
    let cases: u32 = std::env::var("PERCH_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(96);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (fake, mut t, target) = rt.block_on(async {
        let fake = FakeFeishu::start().await;
        let t = TestPerch::start(&config(&fake)).await;
        let web = t.connector("web");
        let card = json!({ "header": { "title": "Fuzz" }, "elements": [{ "text": "x" }] });
        let sent = web
            .execute(
                &Operation::Send {
                    to: Target::chat("general"),
                    body: MessageBody::Card { card },
                    reply_to: None,
                },
                "k/fuzz/0",
            )
            .await
            .unwrap();
        let target = Target_ {
            http: reqwest::Client::new(),
            base: t.base.clone(),
            card_message: sent.id.unwrap(),
        };
        (fake, t, target)
    });
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let counter = std::sync::atomic::AtomicU64::new(0);
    let acked = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&case(), |case| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (status, text) = rt.block_on(send(&target, &case, n));
        if status >= 500 {
            return Err(TestCaseError::fail(format!("{status} {text} for {case:?}")));
        }
        if (200..300).contains(&status) {
            acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let one_line = text.lines().count() == 1 && serde_json::from_str::<Value>(&text).is_ok();
        if !one_line {
            return Err(TestCaseError::fail(format!(
                "not one line of JSON: {status} {text:?} for {case:?}"
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        let journal = journal_ids(&t).await;
        let (log, unreadable, torn) = replayable(&t.data_dir);
        assert_eq!(unreadable, 0, "every logged record decodes");
        assert_eq!(torn, 0, "no torn record without a crash");
        let missing: Vec<_> = journal.difference(&log).collect();
        assert!(
            missing.is_empty(),
            "journaled but not in the ingest log: {missing:?}"
        );
        eprintln!(
            "fuzz: {} cases, {} acknowledged, {} events journaled",
            cases,
            acked.load(std::sync::atomic::Ordering::SeqCst),
            journal.len()
        );
        t.restart().await;
        assert_eq!(journal_ids(&t).await, journal, "the same after a restart");
        t.stop().await;
        drop(fake);
    });
}
