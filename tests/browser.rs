//! The console and the web chat in a real browser: headless Chromium driven through
//! chromedriver (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs).
//! Without them the test fails when `CI` is set, and skips with a reason otherwise.
//!
//! One run: ann (admin) signs in, sees an event arrive in the console, opens its
//! deliveries, replays its dead letter and previews a card; bob (member) signs in in a
//! second browser and can neither read ann's direct room nor press its button.

use fantoccini::{Client, ClientBuilder, Locator};
use perch::action::{MessageBody, Operation, Target};
use perch::testing::*;
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use wiremock::ResponseTemplate;

const SECRET: &str = "browser-secret";
const ANN_PASSWORD: &str = "ann-password-1";
const BOB_PASSWORD: &str = "bob-password-2";

/// chromedriver on a free port, stopped (by its own pid) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    /// chromedriver runs in its own process group (see `start_driver`), with the
    /// browsers it started: end the whole group, so a failed test leaves no Chromium
    /// behind.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(|p| p.to_string())
}

/// chromedriver and chromium, or why not: a failure under CI, a skip elsewhere.
fn browser_programs() -> Option<(String, String)> {
    let driver = find_program(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
    let chromium = find_program(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    match (driver, chromium) {
        (Some(d), Some(c)) => Some((d, c)),
        _ => {
            let why = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)";
            if std::env::var_os("CI").is_some() {
                panic!("CI is set and {why}");
            }
            eprintln!("skipping the browser test: {why}");
            None
        }
    }
}

async fn start_driver(program: &str) -> Driver {
    let port = free_port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    eventually(20, "chromedriver listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    driver
}

/// A fresh browser (its own profile, so its own cookies).
async fn browser(driver: &Driver, chromium: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"],
        }),
    );
    ClientBuilder::rustls()
        .expect("rustls connector")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Run `script` in the page and return its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script runs")
}

/// Wait until `script` (an expression) is truthy in the page; returns its value.
async fn until(c: &Client, what: &str, script: &str) -> Value {
    eventually(15, what, || async {
        let v = js(c, &format!("return ({script});")).await;
        let truthy = !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0));
        truthy.then_some(v)
    })
    .await
}

/// Click the element `at` finds (it must be there).
async fn click(c: &Client, at: Locator<'_>) {
    c.find(at)
        .await
        .expect("the element to click")
        .click()
        .await
        .expect("a click");
}

/// Type `text` into the element `at` finds (it must be there).
async fn type_into(c: &Client, at: Locator<'_>, text: &str) {
    c.find(at)
        .await
        .expect("the element to type into")
        .send_keys(text)
        .await
        .expect("typing");
}

async fn sign_in(c: &Client, t: &TestPerch, name: &str, password: &str, next: &str) {
    c.goto(&t.url(&format!("/login?next={next}")))
        .await
        .unwrap();
    type_into(c, Locator::Id("name"), name).await;
    type_into(c, Locator::Id("password"), password).await;
    click(c, Locator::Id("submit")).await;
    until(
        c,
        &format!("{name} lands on {next}"),
        &format!("location.pathname === {next:?}"),
    )
    .await;
}

fn config(sink: &str) -> String {
    let ann = perch::testing::hash_password(ANN_PASSWORD).unwrap();
    let bob = perch::testing::hash_password(BOB_PASSWORD).unwrap();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[outbox]
min_backoff = "50ms"
max_backoff = "200ms"

[auth]
mode = "local"
[auth.users.ann]
password_hash = "{ann}"
role = "admin"
[auth.users.bob]
password_hash = "{bob}"

[connectors.web]
kind = "local"

[connectors.events]
kind = "webhook"
secret = "{SECRET}"
topic_header = "X-Perch-Topic"
id_header = "X-Perch-Delivery"

[connectors.chat]
kind = "webhook"
insecure = true
send_url = "{sink}/send"

[bots.builds]
kind = "notify"
connector = "chat"
chat = "team"
text = "Build failed: {{{{payload.repo}}}}"

[bots.echo]
kind = "echo"

[bots.tasks]
kind = "reminders"
timezone = "UTC"

[schedules.heartbeat]
cron = "* * * * * *"
timezone = "Asia/Shanghai"
topic = "heartbeat"

[[routes]]
connector = "events"
topic = "build.*"
bots = ["builds"]

[[routes]]
connector = "web"
mention = "tasks"
bots = ["tasks"]
"#
    )
}

#[tokio::test]
async fn console_and_chat_in_a_real_browser() {
    let Some((driver_program, chromium)) = browser_programs() else {
        return;
    };
    // The chat platform refuses the first send (a dead letter), then accepts.
    let sink = fails_then(
        "POST",
        ResponseTemplate::new(400).set_body_string("bad chat"),
        1,
        ResponseTemplate::new(200),
    )
    .await;
    let t = TestPerch::start(&config(&sink.uri())).await;
    let driver = start_driver(&driver_program).await;

    // ann signs in and opens the console.
    let ann = browser(&driver, &chromium).await;
    sign_in(&ann, &t, "ann", ANN_PASSWORD, "/console").await;
    until(
        &ann,
        "the console knows ann",
        "document.getElementById('who').textContent.includes('ann (admin)')",
    )
    .await;

    // An event arrives from an internal system: it shows up without a reload.
    let body = br#"{"repo":"shop"}"#;
    let resp = reqwest::Client::new()
        .post(t.url("/hooks/events"))
        .header("X-Perch-Topic", "build.failed")
        .header("X-Perch-Delivery", "b-1")
        .header(
            "X-Perch-Signature",
            format!("sha256={}", sign(SECRET, body)),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let event_id: Value = resp.json().await.unwrap();
    let event_id = event_id["event_id"].as_str().unwrap().to_string();
    until(
        &ann,
        "the event's row",
        &format!("document.querySelector('#event-list tr[data-id=\"{event_id}\"]')"),
    )
    .await;
    // Its delivery fails for good: a dead letter (asked with ann's own session).
    eventually(10, "a dead letter", || async {
        let n = ann
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch('/api/dead-letters').then(r => r.json()).then(d => done(d.dead_letters.length));",
                vec![],
            )
            .await
            .ok()?;
        (n == json!(1)).then_some(())
    })
    .await;

    // Open the event, then its deliveries: the dead letter is there; replay it.
    click(
        &ann,
        Locator::Css(&format!("#event-list tr[data-id=\"{event_id}\"]")),
    )
    .await;
    until(&ann, "the event's detail", "!document.getElementById('event-detail').hidden && document.getElementById('to-deliveries')").await;
    until(
        &ann,
        "the detail lists the dead delivery",
        "document.getElementById('event-detail').textContent.includes('Dead (1)')",
    )
    .await;
    click(&ann, Locator::Id("to-deliveries")).await;
    until(
        &ann,
        "the dead letter with its Replay button",
        "document.querySelector('#dead button.replay')",
    )
    .await;
    let dead_text = js(&ann, "return document.getElementById('dead').textContent;").await;
    assert!(
        dead_text.as_str().unwrap().contains("HTTP 400"),
        "{dead_text}"
    );
    click(&ann, Locator::Css("#dead button.replay")).await;
    until(
        &ann,
        "the replay is confirmed",
        "document.getElementById('toast').textContent.startsWith('Replayed')",
    )
    .await;
    wait_received(&sink, 2).await;
    until(
        &ann,
        "no dead letters left",
        "document.querySelectorAll('#dead tbody tr').length === 0",
    )
    .await;
    // And back to the event.
    click(&ann, Locator::Id("back-to-event")).await;
    until(
        &ann,
        "the event again, now delivered",
        "document.getElementById('event-detail').textContent.includes('Delivered (1)')",
    )
    .await;

    // Charts: the event, the dead letter and the replayed delivery are bars this minute.
    ann.goto(&t.url("/console#charts")).await.unwrap();
    until(
        &ann,
        "four charts of sixty minutes",
        "document.querySelectorAll('#chart-list svg.chart').length === 4 && [...document.querySelectorAll('#chart-list svg.chart')].every(s => s.querySelectorAll('rect').length === 60)",
    )
    .await;
    for chart in ["events_in", "deliveries_out", "dead_letters", "latency"] {
        until(
            &ann,
            &format!("a bar in {chart}"),
            &format!("[...document.querySelectorAll('svg[data-chart=\"{chart}\"] rect')].some(r => Number(r.dataset.value) > 0 && Number(r.getAttribute('height')) > 0)"),
        )
        .await;
    }

    // Schedules: the job's next times in its zone and its ledger as a table; a run's
    // event link opens that event on the Events tab.
    ann.goto(&t.url("/console#schedules")).await.unwrap();
    until(
        &ann,
        "the heartbeat's ledger with a fired run",
        "document.querySelector('.job[data-job=\"heartbeat\"] h4')?.textContent.includes('Asia/Shanghai') && document.querySelector('.job[data-job=\"heartbeat\"] table.ledger tr.run.fired td a')",
    )
    .await;
    js(
        &ann,
        "document.querySelector('.job[data-job=\"heartbeat\"] table.ledger tr.run.fired td a').click()",
    )
    .await;
    until(
        &ann,
        "the run's event, opened",
        "!document.getElementById('events').hidden && document.getElementById('event-detail').textContent.includes('Fate: unrouted')",
    )
    .await;

    // Card studio: the first template with its sample data, for every platform.
    ann.goto(&t.url("/console#cards")).await.unwrap();
    until(
        &ann,
        "an HTML preview",
        "document.querySelector('.render[data-platform=\"html\"] .perch-card')",
    )
    .await;
    until(
        &ann,
        "a Feishu preview",
        "document.querySelector('.render[data-platform=\"feishu\"] pre')",
    )
    .await;
    // A broken edit is pointed at by line and column; nothing is saved.
    js(
        &ann,
        "const src = document.getElementById('card-source');
         src.value = '{\\n  \"x\": {{{oops}}}\\n}';
         src.dispatchEvent(new Event('input'));",
    )
    .await;
    until(
        &ann,
        "the template error with its place",
        "document.getElementById('card-error').textContent.includes('(template line 2, column 8)')",
    )
    .await;
    // The file's template again, sent to the web chat as a test render.
    js(
        &ann,
        "document.getElementById('template').dispatchEvent(new Event('change'));",
    )
    .await;
    until(
        &ann,
        "the connectors to send through",
        "document.querySelector('#send-connector option[value=\"web\"]')",
    )
    .await;
    js(
        &ann,
        "document.getElementById('send-connector').value = 'web';
         document.getElementById('send-chat').value = 'general';",
    )
    .await;
    click(&ann, Locator::Id("send-button")).await;
    until(
        &ann,
        "the test render is confirmed",
        "document.getElementById('toast').textContent.startsWith('Sent as event')",
    )
    .await;

    // ann asks for a reminder in the chat; the console's Bots page lists it, and its
    // Done there is a click by ann: the bot answers, and the item is no longer open.
    let said = ann
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/chat/api/rooms/general/messages', { method: 'POST',
               headers: { 'content-type': 'application/json', 'x-csrf-token': state.csrf },
               body: JSON.stringify({ text: '@tasks remind me in 2 hours call the supplier', client_id: 'ann-remind' }) })
             .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(said, json!(200));
    eventually(10, "the reminder item is open", || async {
        let n = ann
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 fetch('/api/bots/tasks/items').then(r => r.json()).then(d => done(d.items.length));",
                vec![],
            )
            .await
            .ok()?;
        (n == json!(1)).then_some(())
    })
    .await;
    ann.goto(&t.url("/console#bots")).await.unwrap();
    let done_button = "#bot-list [data-bot=\"tasks\"] tr[data-item] button[data-action=\"done\"]";
    until(
        &ann,
        "the item's Done button",
        &format!("document.querySelector('{done_button}')"),
    )
    .await;
    let row = js(&ann, "return document.querySelector('#bot-list [data-bot=\"tasks\"] tr[data-item]').textContent;").await;
    assert!(
        row.as_str().unwrap().contains("call the supplier")
            && row.as_str().unwrap().contains("ann"),
        "{row}"
    );
    click(&ann, Locator::Css(done_button)).await;
    until(
        &ann,
        "the bot's answer as a toast",
        "document.getElementById('toast').textContent === 'Done. No more reminders.'",
    )
    .await;
    until(
        &ann,
        "nothing open any more",
        "document.querySelector('#bot-list [data-bot=\"tasks\"]') && document.querySelector('#bot-list [data-bot=\"tasks\"]').textContent.includes('Nothing open.')",
    )
    .await;

    // A bot writes to ann directly, with a button.
    let card = json!({ "header": { "title": "For ann" }, "elements": [
        { "type": "buttons", "buttons": [
            { "label": "Done", "action": { "bot": "echo", "action": "done", "args": { "id": 1 } } }
        ] }
    ] });
    let dm = t
        .connector("web")
        .execute(
            &Operation::Send {
                to: Target::Person {
                    id: "ann".into(),
                    id_type: None,
                },
                body: MessageBody::Card { card },
                reply_to: None,
            },
            "k/echo/dm-1",
        )
        .await
        .unwrap();
    let dm_id = dm.id.unwrap();

    // ann sees it in her chat.
    ann.goto(&t.url("/#%40ann")).await.unwrap();
    until(
        &ann,
        "ann's direct room shows the card",
        "document.querySelector('#messages button.perch-btn')",
    )
    .await;

    // bob, in another browser: no such room in his list, and the API refuses him.
    let bob = browser(&driver, &chromium).await;
    sign_in(&bob, &t, "bob", BOB_PASSWORD, "/").await;
    until(&bob, "bob's rooms", "document.querySelector('#rooms li')").await;
    let rooms = js(&bob, "return document.getElementById('rooms').textContent;").await;
    assert!(!rooms.as_str().unwrap().contains("ann"), "{rooms}");
    let read = bob
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/chat/api/rooms/%40ann/messages').then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(read, json!(403));
    let press = bob
        .execute_async(
            "const [id, done] = arguments;
             fetch('/chat/api/rooms/%40ann/actions', { method: 'POST',
               headers: { 'content-type': 'application/json', 'x-csrf-token': state.csrf },
               body: JSON.stringify({ message_id: id, client_id: 'bob-press',
                 action: { bot: 'echo', action: 'done', args: { id: 1 } } }) })
             .then(r => done(r.status));",
            vec![json!(dm_id)],
        )
        .await
        .unwrap();
    assert_eq!(press, json!(403));

    bob.close().await.unwrap();
    ann.close().await.unwrap();
    drop(driver);
}
