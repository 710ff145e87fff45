//! The standup bot's binary (perch with the `standup` kind) killed with SIGKILL
//! mid-answer, through the test kit: while its card is on the way to Feishu (the kit's
//! `answers_once_across_a_kill`), and right after each mention in the web chat is
//! acknowledged (every mention answered once after the restarts).

use perch::testing::{ChildPerch, eventually, free_port, spawn_perch, wait_healthy};
use std::time::Duration;

/// This crate's binary: perch's command line with the `standup` kind.
const BINARY: &str = env!("CARGO_BIN_EXE_custom_bot");
const CARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cards");
/// The standup bot, answering every `standup` command: both tests' bot and route.
const STANDUP: &str = r#"
[bots.standup]
kind = "standup"
title = "Today's standup"

[[routes]]
mention = "*"
command = "standup"
bots = ["standup"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_card_is_on_the_way_sends_it_once() {
    let config = format!("[server]\ncards_dir = \"{CARDS}\"\n{STANDUP}");
    let card = perch::testing::answers_once_across_a_kill(
        BINARY,
        &config,
        "standup write the release notes",
    )
    .await;
    assert_eq!(card.msg_type, "interactive", "a card: {card:?}");
    assert_eq!(
        card.reply_to.as_deref(),
        Some("om_user_1"),
        "a reply to the mention"
    );
    let content = card.content().to_string();
    assert!(content.contains("Today's standup"), "{content}");
    assert!(content.contains("write the release notes"), "{content}");
}

fn spawn(config: &std::path::Path) -> ChildPerch {
    spawn_perch(BINARY, config)
}

/// GET `url` as JSON; `None` unless it answers 200.
async fn get_json(url: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(url).await.ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_answer_loses_no_mention_and_answers_none_twice() {
    let dir = std::env::temp_dir().join(format!("custom-bot-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.join("perch.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"
cards_dir = "{cards}"

[connectors.web]
kind = "local"
{STANDUP}"#,
            data = dir.join("data").display(),
            cards = CARDS,
        ),
    )
    .unwrap();
    let rounds = 5;
    for round in 0..rounds {
        let child = spawn(&config);
        wait_healthy(&base).await;
        let body = serde_json::json!({
            "author": format!("person{round}"),
            "text": format!("@standup standup task {round}"),
            "client_id": format!("c{round}"),
        })
        .to_string();
        let accepted = reqwest::Client::new()
            .post(format!("{base}/chat/api/rooms/general/messages"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("perch answers");
        assert_eq!(accepted.status(), 200, "the mention is accepted");
        drop(child); // SIGKILL right after the acknowledgement
    }
    let _child = spawn(&config);
    wait_healthy(&base).await;
    let answers = eventually(10, "an answer to every mention", || async {
        let msgs = get_json(&format!("{base}/chat/api/rooms/general/messages")).await?;
        let answers: Vec<serde_json::Value> = msgs["messages"]
            .as_array()?
            .iter()
            .filter(|m| m["author"] == "standup")
            .cloned()
            .collect();
        (answers.len() >= rounds).then_some(answers)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let msgs = get_json(&format!("{base}/chat/api/rooms/general/messages"))
        .await
        .unwrap_or_default();
    let answers_now = msgs["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["author"] == "standup")
        .count();
    assert_eq!(answers.len(), rounds, "every mention answered: {msgs}");
    assert_eq!(answers_now, rounds, "and none twice: {msgs}");
    std::fs::remove_dir_all(&dir).ok();
}
