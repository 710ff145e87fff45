//! Delivery under stress, in one process: chats that keep failing never delay a healthy
//! chat. (What needs a real kill — durability of deliveries and replays — is in
//! `tests/crash.rs`.)
//!
//! The platform is a wiremock sink behind the webhook connector's `send_url` (every
//! operation arrives as JSON with its `to` and idempotency `key`); events are put in
//! the journal directly, each in its own chat, and the echo bot answers in that chat.

use perch::event::{Chat, ChatType, Event, EventKind, Mention, Person};
use perch::testing::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wiremock::matchers::{body_partial_json, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn config(sink: &str, outbox: &str) -> String {
    format!(
        r#"
[outbox]
{outbox}

[connectors.chat]
kind = "webhook"
insecure = true
send_url = "{sink}/send"

[bots.echo]
kind = "echo"

[[routes]]
connector = "chat"
mention = "*"
bots = ["echo"]
"#
    )
}

/// A message in `chat` that @mentions the bot.
fn say(chat: &str, text: &str) -> Event {
    let mut e = Event::new("chat", EventKind::Message, chrono::Utc::now());
    e.chat = Some(Chat {
        id: chat.into(),
        chat_type: ChatType::Group,
    });
    e.sender = Some(Person {
        id: "ou_alice".into(),
        name: Some("Alice".into()),
    });
    e.text = Some(format!("@bot {text}"));
    e.external_id = Some(format!("{chat}/{text}"));
    e.mentions = vec![Mention {
        person: Person {
            id: "ou_bot".into(),
            name: Some("bot".into()),
        },
        is_bot: true,
    }];
    e
}

/// Sends to `chat` the sink accepted.
async fn delivered_to(sink: &MockServer, chat: &str) -> usize {
    sink.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .map(|b| b["to"]["id"] == chat)
                .unwrap_or(false)
        })
        .count()
}

/// 100 chats whose every delivery fails (and retries with backoff) beside one healthy
/// chat, with 8 delivery slots: the healthy chat's answer arrives at once. A retry
/// waiting for its next attempt must not hold a slot.
#[tokio::test]
async fn chats_that_keep_failing_never_block_a_healthy_one() {
    let sink = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({ "to": { "id": "healthy" } })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": "m1" })))
        .with_priority(1)
        .mount(&sink)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(2)
        .mount(&sink)
        .await;
    let t = TestPerch::start(&config(
        &sink.uri(),
        "concurrency = 8\nmax_attempts = 50\nmin_backoff = \"2s\"\nmax_backoff = \"10s\"",
    ))
    .await;
    let j = t.journal();
    let failing: Vec<Event> = (0..100)
        .map(|i| say(&format!("failing{i:03}"), "hi"))
        .collect();
    j.accept(failing).await.unwrap();
    // Every failing chat has had its first attempt: they are all in backoff now.
    eventually(20, "a first attempt for every failing chat", || async {
        let n = sink.received_requests().await.unwrap_or_default().len();
        (n >= 100).then_some(())
    })
    .await;
    let asked = Instant::now();
    j.accept(vec![say("healthy", "hi")]).await.unwrap();
    eventually(5, "the healthy chat's answer", || async {
        (delivered_to(&sink, "healthy").await == 1).then_some(())
    })
    .await;
    let waited = asked.elapsed();
    eprintln!("healthy chat answered {waited:?} after asking, beside 100 failing chats");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    let _ = received_json(&sink).await; // every request well-formed
}

/// A backlog in the store: 8 chats × 150 events land far faster than a slow platform
/// takes them (4 delivery slots, 2 ms a delivery), so lanes fill to their cap, starve,
/// and are refilled by scans while new items keep being offered. Every chat's messages
/// arrive in the order of its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_within_each_chat_holds_under_a_backlog() {
    let sink = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "id": "m" }))
                .set_delay(Duration::from_millis(2)),
        )
        .mount(&sink)
        .await;
    let t = TestPerch::start(&config(&sink.uri(), "concurrency = 4")).await;
    let j = t.journal();
    let (chats, per_chat) = (8, 150);
    for n in 0..per_chat {
        let batch: Vec<Event> = (0..chats)
            .map(|c| say(&format!("chat{c}"), &format!("{n:04}")))
            .collect();
        j.accept(batch).await.unwrap();
    }
    eventually(60, "every message delivered", || async {
        let n = sink.received_requests().await.unwrap_or_default().len();
        (n >= chats * per_chat).then_some(())
    })
    .await;
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for op in received_json(&sink).await {
        let chat = op["to"]["id"].as_str().unwrap().to_string();
        let text = op["body"]["text"].as_str().unwrap_or_default().to_string();
        let prev = last.entry(chat.clone()).or_default();
        assert!(text > *prev, "{chat}: {text:?} arrived after {prev:?}");
        *prev = text;
    }
    assert_eq!(last.len(), chats);
}
