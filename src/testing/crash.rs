//! The quality bar of a bot, run on its real binary: a mention on Feishu is answered
//! with a card although perch is killed with SIGKILL while the answer is in flight, and
//! exactly one card reaches the platform (one message for its idempotency key, one
//! successful call). For bots built into any binary with perch's command line: perch
//! itself (an `http_bot`), or a user's own crate built on `perch::Hub`.

use super::fake_feishu::{self, Call, EventSender, FakeFeishu, Fault, Message};
use super::{ChildPerch, eventually, free_port, spawn_perch, wait_healthy};
use std::path::Path;
use std::time::Duration;

/// The path of the IM API's message calls (send and reply).
const MESSAGES: &str = "/open-apis/im/v1/messages";

/// Run `binary` (`perch`'s command line) with `config` (the bots, their routes, and
/// `[server]` settings such as `cards_dir`; the kit adds `listen`, `data_dir`, the
/// Feishu connector `feishu` on a fake Feishu, and a 2 s first retry), mention the bot
/// with `text` from chat `oc_team`, and kill the process with SIGKILL while the answer
/// is in flight: the bot has answered, the platform has not taken the answer (its first
/// delivery attempt failed and waits for a retry). After the restart: exactly one
/// message arrived, every attempt carried the same idempotency key (`uuid`), and one
/// call with it succeeded. Returns that message (a card is `msg_type` `interactive`)
/// for the caller's checks. Panics with what went wrong.
pub async fn answers_once_across_a_kill(binary: &str, config: &str, text: &str) -> Message {
    let fake = FakeFeishu::start().await;
    // The first attempt to deliver the answer fails (Feishu's 500): perch holds it in
    // its outbox for a retry two seconds later, and dies meanwhile.
    fake.fail_path(MESSAGES, 1, Fault::ServerError);
    let dir = super::perch::fresh_dir();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let file = dir.join("perch.toml");
    std::fs::write(&file, whole_config(config, &dir, port, &fake.base)).expect("write the config");

    let child = start(binary, &file, &base, &fake).await;
    let sender = EventSender::new(
        &format!("{base}/hooks/feishu"),
        fake_feishu::TOKEN,
        Some(fake_feishu::KEY),
    );
    let doc = sender.text_message(&fake, "ev-kill-1", "om_user_1", "oc_team", text, true);
    let (status, _) = sender.send(&doc).await;
    assert_eq!(status, 200, "the mention is accepted");
    eventually(
        10,
        "the answer's first delivery attempt (refused)",
        || async {
            attempts(&fake)
                .iter()
                .any(|c| c.fault.is_some())
                .then_some(())
        },
    )
    .await;
    drop(child); // SIGKILL: the answer is journaled in the outbox, not delivered
    let _child = start(binary, &file, &base, &fake).await;
    eventually(20, "the answer delivered after the restart", || async {
        (!fake.messages().is_empty()).then_some(())
    })
    .await;
    // Time for a wrongly repeated delivery to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let messages = fake.messages();
    assert_eq!(
        messages.len(),
        1,
        "one answer at the platform: {messages:?}"
    );
    let uuid = messages[0].uuid.clone().expect("the answer carries a uuid");
    let delivered: Vec<Call> = attempts(&fake)
        .into_iter()
        .filter(|c| c.fault.is_none() && c.body["uuid"] == uuid.as_str())
        .collect();
    assert_eq!(
        delivered.len(),
        1,
        "one successful call for {uuid}: {delivered:?}"
    );
    assert!(
        attempts(&fake)
            .iter()
            .all(|c| c.body["uuid"] == uuid.as_str()),
        "every attempt used the same idempotency key: {:?}",
        attempts(&fake)
    );
    let _ = std::fs::remove_dir_all(&dir);
    messages[0].clone()
}

/// The message send/reply calls the fake received, failed ones included.
fn attempts(fake: &FakeFeishu) -> Vec<Call> {
    fake.calls_to(MESSAGES)
        .into_iter()
        .filter(|c| c.method == "POST")
        .collect()
}

/// Start `binary` and wait until it answers and knows the bot's Feishu identity (so a
/// mention of the bot is recognised).
async fn start(binary: &str, file: &Path, base: &str, fake: &FakeFeishu) -> ChildPerch {
    let before = fake.calls_to("/open-apis/bot/v3/info").len();
    let child = spawn_perch(binary, file);
    wait_healthy(base).await;
    eventually(10, "the bot's identity fetched from Feishu", || async {
        (fake.calls_to("/open-apis/bot/v3/info").len() > before).then_some(())
    })
    .await;
    child
}

/// `config` with perch's address and data, the Feishu connector and a short retry.
fn whole_config(config: &str, dir: &Path, port: u16, feishu: &str) -> String {
    let server = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n",
        dir.join("data").display().to_string()
    );
    let body = if config.contains("[server]\n") {
        config.replacen("[server]\n", &server, 1)
    } else {
        format!("{server}\n{config}")
    };
    format!(
        "{body}\n[outbox]\nmin_backoff = \"2s\"\n\n{}",
        fake_feishu::app_connector("feishu", feishu, true)
    )
}
