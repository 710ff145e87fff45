//! The standup bot's binary (perch with the `standup` kind) killed with SIGKILL right
//! after each mention is acknowledged, mid-answer: after each restart every mention has
//! exactly one answer in the web chat (none lost, none twice).

use std::time::Duration;

/// The process, SIGKILLed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        self.0.kill().ok(); // SIGKILL on Unix
        self.0.wait().ok();
    }
}

fn spawn(config: &std::path::Path) -> Child {
    Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_custom_bot"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("custom_bot starts"),
    )
}

async fn healthy(base: &str) {
    for _ in 0..500 {
        if get_json(&format!("{base}/healthz")).await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("custom_bot did not start answering");
}

/// GET `url` as JSON over a plain HTTP/1.1 connection (the example needs no client crate).
async fn get_json(url: &str) -> Option<serde_json::Value> {
    http("GET", url, None).await
}

async fn http(method: &str, url: &str, body: Option<&str>) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, payload) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(serde_json::from_str(payload).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_answer_loses_no_mention_and_answers_none_twice() {
    let dir = std::env::temp_dir().join(format!("custom-bot-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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

[bots.standup]
kind = "standup"
title = "Today's standup"

[[routes]]
mention = "*"
command = "standup"
bots = ["standup"]
"#,
            data = dir.join("data").display(),
            cards = concat!(env!("CARGO_MANIFEST_DIR"), "/cards"),
        ),
    )
    .unwrap();
    let rounds = 5;
    for round in 0..rounds {
        let child = spawn(&config);
        healthy(&base).await;
        let body = serde_json::json!({
            "author": format!("person{round}"),
            "text": format!("@standup standup task {round}"),
            "client_id": format!("c{round}"),
        })
        .to_string();
        http(
            "POST",
            &format!("{base}/chat/api/rooms/general/messages"),
            Some(&body),
        )
        .await
        .expect("the mention is accepted");
        drop(child); // SIGKILL right after the acknowledgement
    }
    let _child = spawn(&config);
    healthy(&base).await;
    let mut answers = Vec::new();
    for _ in 0..500 {
        let msgs = get_json(&format!("{base}/chat/api/rooms/general/messages"))
            .await
            .unwrap_or_default();
        answers = msgs["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m["author"] == "standup")
            .collect();
        if answers.len() >= rounds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
