//! The example HTTP bots in `examples/` (Python standard library, Node without
//! packages) against a real perch: a wrongly signed request is refused by the example,
//! a mention is answered with a card, and `later` goes through 202 and late actions,
//! sent once although the example's answer is posted twice. Without the interpreter the
//! test fails under `CI` and is skipped (with the reason) elsewhere.

use perch::event::{Chat, ChatType, Event, EventKind, Mention, Person};
use perch::testing::*;
use serde_json::{Value, json};
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "example-secret";

/// The `perch` command line, run as a process by the kill tests.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

/// The example's process, killed when dropped.
struct Example(std::process::Child);

impl Drop for Example {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Whether `program` runs here; under `CI` its absence is a failure.
fn interpreter(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is needed by this test under CI (.ci/run installs it)"
        );
        eprintln!("skipped: {program} is not installed");
    }
    found
}

fn mention(text: &str, id: &str) -> Event {
    let mut e = Event::new("chat", EventKind::Message, chrono::Utc::now());
    e.chat = Some(Chat {
        id: "oc_room".into(),
        chat_type: ChatType::Group,
    });
    e.sender = Some(Person {
        id: "ou_alice".into(),
        name: Some("Alice".into()),
    });
    e.text = Some(text.to_string());
    e.external_id = Some(id.to_string());
    e.message_id = Some(format!("om_{id}"));
    e.mentions = vec![Mention {
        person: Person {
            id: "ou_bot".into(),
            name: Some("bot".into()),
        },
        is_bot: true,
    }];
    e
}

/// Run `script` with `program` as the bot on `port` (told perch's URL for its late
/// actions, when given) and wait until it listens; killed when dropped.
async fn start_example(program: &str, script: &str, port: u16, perch_url: Option<&str>) -> Example {
    let mut command = std::process::Command::new(program);
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/").to_string() + script)
        .env("PORT", port.to_string())
        .env("PERCH_BOT_SECRET", SECRET)
        .stdout(std::process::Stdio::null());
    if let Some(url) = perch_url {
        command.env("PERCH_URL", url);
    }
    let example = Example(command.spawn().expect("the example starts"));
    eventually(10, "the example listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    example
}

/// perch's config: the shipped cards, `connectors` (TOML), and the example bot on
/// `port` answering every mention.
fn example_config(port: u16, connectors: &str) -> String {
    format!(
        r#"
[server]
cards_dir = "{cards}"
{connectors}
[bots.example]
kind = "http_bot"
url = "http://127.0.0.1:{port}/"
secret = "{SECRET}"
timeout = "5s"

[[routes]]
mention = "*"
bots = ["example"]
"#,
        cards = concat!(env!("CARGO_MANIFEST_DIR"), "/cards"),
    )
}

async fn run_example(program: &str, script: &str) {
    if !interpreter(program) {
        return;
    }
    let platform = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "om_sent"})))
        .mount(&platform)
        .await;
    let port = free_port();
    let config = example_config(
        port,
        &format!(
            "\n[connectors.chat]\nkind = \"webhook\"\ninsecure = true\nsend_url = \"{}/send\"\n",
            platform.uri()
        ),
    );
    let t = TestPerch::start(&config).await;
    let _example = start_example(program, script, port, Some(&t.base)).await;
    let bot = format!("http://127.0.0.1:{port}/");
    let client = reqwest::Client::new();

    // The example checks perch's signature: a forged request is refused.
    let ts = chrono::Utc::now().timestamp().to_string();
    let forged = client
        .post(&bot)
        .header("X-Perch-Timestamp", &ts)
        .header(
            "X-Perch-Signature",
            format!("sha256={}", sign("not-the-secret", b"{}")),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "{script} refuses a bad signature");

    let j = t.journal();
    j.accept(vec![mention("@bot hello", "e1")]).await.unwrap();
    let ops = wait_received(&platform, 1).await;
    assert_eq!(ops[0]["reply_to"], "om_e1");
    let card = ops[0]["body"]["card"].to_string();
    assert!(
        card.contains("Hello Alice") && card.contains("You said: @bot hello"),
        "{card}"
    );

    let later = j
        .accept(vec![mention("@bot later please", "e2")])
        .await
        .unwrap()[0]
        .id();
    let ops = wait_received(&platform, 2).await;
    assert_eq!(ops[1]["body"]["text"], "done: @bot later please");
    // The example's late answer posted again (a retry) is not sent again.
    let body = json!({"event_id": later.to_string(), "actions": [
        {"key": "answer", "action": "reply", "body": {"type": "text", "text": "done: @bot later please"}}
    ]})
    .to_string();
    let ts = chrono::Utc::now().timestamp().to_string();
    let again = client
        .post(t.url("/api/bots/example/actions"))
        .header("X-Perch-Timestamp", &ts)
        .header(
            "X-Perch-Signature",
            format!("sha256={}", sign(SECRET, format!("{ts}.{body}").as_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: Vec<Value> = received_json(&platform).await;
    assert_eq!(all.len(), 2, "the late answer went out once: {all:?}");
}

/// The example bot in front of the `perch` binary, killed with SIGKILL while the bot's
/// card is on its way to Feishu (the kit's `answers_once_across_a_kill`): one card.
async fn example_survives_a_kill(program: &str, script: &str) {
    if !interpreter(program) {
        return;
    }
    let port = free_port();
    let _example = start_example(program, script, port, None).await;
    let config = example_config(port, "");
    let card = answers_once_across_a_kill(PERCH, &config, "hello").await;
    assert_eq!(
        card.msg_type, "interactive",
        "{script} answers with a card: {card:?}"
    );
    let content = card.content().to_string();
    assert!(
        content.contains("You said:") && content.contains("hello"),
        "{content}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_bot_survives_a_kill_mid_answer() {
    example_survives_a_kill("python3", "http_bot_python/bot.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_bot_survives_a_kill_mid_answer() {
    example_survives_a_kill("node", "http_bot_node/bot.js").await;
}

#[tokio::test]
async fn the_python_example_bot_answers_through_perch() {
    run_example("python3", "http_bot_python/bot.py").await;
}

#[tokio::test]
async fn the_node_example_bot_answers_through_perch() {
    run_example("node", "http_bot_node/bot.js").await;
}
