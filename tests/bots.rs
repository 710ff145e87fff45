//! The seed bots end to end: wiremock plays the chat platform (through the webhook
//! connector's `send_url`, which carries every operation as JSON) and the internal API.
//! Ticks are injected as the scheduler makes them: `kind = tick`, `payload.slot`, and an
//! external id per slot. Tests that need only the chat platform and the `bi` source run
//! on the test kit (`kit`: `perch::testing::TestHub`, whose platform records every
//! operation); the rest still use wiremock as the platform (see `perch::testing`).

use perch::event::{Chat, ChatType, Event, EventKind, Mention, Person};
use perch::testing::TestHub;
use perch::testing::*;
use serde_json::{Value, json};
use std::time::Duration;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct World {
    platform: MockServer,
    api: MockServer,
}

async fn world() -> World {
    let platform = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"op": "create_chat"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "oc_new"})))
        .with_priority(1)
        .mount(&platform)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "om_1"})))
        .with_priority(2)
        .mount(&platform)
        .await;
    World {
        platform,
        api: MockServer::start().await,
    }
}

fn config(w: &World, bots: &str) -> String {
    format!(
        r#"
[connectors.chat]
kind = "webhook"
insecure = true
send_url = "{platform}/send"

[connectors.bi]
kind = "http"
base_url = "{api}/api"
display_name = "BI API"
timeout = "300ms"
retries = 0

{bots}
"#,
        platform = w.platform.uri(),
        api = w.api.uri()
    )
}

/// perch from the test kit with `bots` and the `bi` source: the kit's own recording
/// platform is the `chat` connector.
async fn kit(w: &World, bots: &str) -> TestHub {
    let config = format!(
        r#"
[connectors.bi]
kind = "http"
base_url = "{api}/api"
display_name = "BI API"
timeout = "300ms"
retries = 0

{bots}
"#,
        api = w.api.uri()
    );
    TestHub::start(perch::Hub::builder(), &config).await
}

async fn ops(w: &World) -> Vec<Value> {
    received_json(&w.platform).await
}

async fn wait_ops(w: &World, n: usize) -> Vec<Value> {
    wait_received(&w.platform, n).await
}

fn say(text: &str, id: &str) -> Event {
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
    let mut mentions = vec![Mention {
        person: Person {
            id: "ou_bot".into(),
            name: Some("bot".into()),
        },
        is_bot: true,
    }];
    for word in text
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.strip_prefix('@'))
    {
        mentions.push(Mention {
            person: Person {
                id: format!("ou_{word}"),
                name: Some(word.to_string()),
            },
            is_bot: false,
        });
    }
    e.mentions = mentions;
    e
}

fn text(op: &Value) -> String {
    op["body"]["text"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| op["body"]["card"].to_string())
}

const QUERY: &str = r#"
[bots.data]
kind = "query"
source = "bi"

[bots.data.commands.gmv]
path = "/gmv/{{day}}"
summary = "GMV of a day"
args = [{ name = "day", pattern = "今天|昨天|\\d{4}-\\d{2}-\\d{2}", default = "昨天", hint = "今天|昨天|YYYY-MM-DD" }]

[bots.data.commands.ct]
path = "/ct/{{serial}}"
pointer = "/data"
template = "query_answer"
args = [{ name = "serial", pattern = "SN\\d+" }]

[[routes]]
mention = "*"
command = "gmv"
bots = ["data"]

[[routes]]
mention = "*"
command = "ct"
bots = ["data"]
"#;

#[tokio::test]
async fn query_answers_and_explains_bad_arguments_and_failures() {
    let w = world().await;
    Mock::given(path("/api/gmv/%E6%98%A8%E5%A4%A9"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"gmv": 1234567, "day": "2026-11-20"})),
        )
        .mount(&w.api)
        .await;
    Mock::given(path("/api/ct/SN12345"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"data": {"status": "calibrated"}})),
        )
        .mount(&w.api)
        .await;
    Mock::given(path("/api/ct/SN999"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"x": 1}))
                .set_delay(Duration::from_millis(800)),
        )
        .mount(&w.api)
        .await;
    let t = TestPerch::start(&config(&w, QUERY)).await;
    let j = t.journal();

    j.accept(vec![say("@bot gmv", "q1")]).await.unwrap();
    let o = wait_ops(&w, 1).await;
    assert!(
        text(&o[0]).contains("gmv: 1234567"),
        "default argument used: {}",
        text(&o[0])
    );
    assert_eq!(o[0]["reply_to"], "om_q1");

    j.accept(vec![say("@bot ct SN12345", "q2")]).await.unwrap();
    let o = wait_ops(&w, 2).await;
    assert_eq!(o[1]["body"]["type"], "card");
    assert!(text(&o[1]).contains("calibrated"), "{}", text(&o[1]));

    j.accept(vec![say("@bot ct 12345", "q3")]).await.unwrap();
    let o = wait_ops(&w, 3).await;
    assert_eq!(
        text(&o[2]),
        "`12345` is not a valid serial. Usage: `@bot ct <serial: SN\\d+>`"
    );

    j.accept(vec![say("@bot ct", "q4")]).await.unwrap();
    let o = wait_ops(&w, 4).await;
    assert!(
        text(&o[3]).starts_with("Missing `<serial>`. Usage: `@bot ct"),
        "{}",
        text(&o[3])
    );

    j.accept(vec![say("@bot gmv 2026-13", "q5")]).await.unwrap();
    let o = wait_ops(&w, 5).await;
    assert!(
        text(&o[4]).contains("Usage: `@bot gmv [day: 今天|昨天|YYYY-MM-DD]`"),
        "{}",
        text(&o[4])
    );

    j.accept(vec![say("@bot ct SN999", "q6")]).await.unwrap();
    let o = wait_ops(&w, 6).await;
    assert_eq!(
        text(&o[5]),
        "Sorry, I could not get the data: BI API timed out after 0.3 s."
    );

    // The bot named with nothing after it: what can be asked, not "I don't know".
    j.accept(vec![say("@bot", "q7")]).await.unwrap();
    let o = wait_ops(&w, 7).await;
    let list = text(&o[6]);
    assert!(list.starts_with("Ask me one of these: "), "{list}");
    assert!(list.contains("`gmv`") && list.contains("`ct`"), "{list}");
}

const GROUPS: &str = r#"
[bots.groups]
kind = "auto_group"
command = "建群"
name_template = "【项目】{{customer}}-{{code}}"
fields = ["customer", "code"]
key_template = "{{code}}"
from_event = { customer = "/opportunity/customer", code = "/opportunity/code" }
members_pointer = "/opportunity/members"
rule = { pattern = "【项目】[^-]+-[A-Z0-9]+", max_length = 30, forbidden = "/\\:*?", description = "【项目】<customer>-<CODE>, at most 30 characters" }

[[routes]]
mention = "*"
command = "建群"
bots = ["groups"]

[[routes]]
kind = "system"
topic = "crm.opportunity.created"
bots = ["groups"]
"#;

#[tokio::test]
async fn auto_group_creates_a_group_once_and_explains_the_rule() {
    let w = world().await;
    let t = TestPerch::start(&config(&w, GROUPS)).await;
    let j = t.journal();

    j.accept(vec![say(
        "@bot 建群 Acme P12 @bob @carol dan@corp.com",
        "g1",
    )])
    .await
    .unwrap();
    let o = wait_ops(&w, 4).await;
    let create = o
        .iter()
        .find(|x| x["op"] == "create_chat")
        .expect("a create_chat");
    assert_eq!(create["spec"]["name"], "【项目】Acme-P12");
    assert_eq!(
        create["spec"]["members"],
        json!(["ou_bob", "ou_carol", "ou_alice"])
    );
    assert_eq!(create["spec"]["owner"], "ou_alice");
    let add = o
        .iter()
        .find(|x| x["op"] == "add_members")
        .expect("e-mail members added after creation");
    assert_eq!(add["members"], json!(["dan@corp.com"]));
    assert_eq!(add["member_id_type"], "email");
    assert!(
        o.iter()
            .any(|x| x["op"] == "send" && x["to"]["id"] == "oc_new"),
        "welcome posted in the new group"
    );
    assert!(
        o.iter().any(|x| x["op"] == "send"
            && text(x).contains("Created **【项目】Acme-P12** (chat `oc_new`)"))
    );

    // The same request again (another message) answers with the existing group.
    j.accept(vec![say("@bot 建群 Acme P12", "g2")])
        .await
        .unwrap();
    let o = wait_ops(&w, 5).await;
    assert!(
        text(&o[4]).contains("already exists: **【项目】Acme-P12** (chat `oc_new`)"),
        "{}",
        text(&o[4])
    );
    // The same event re-delivered by the platform is dropped by the journal.
    j.accept(vec![say("@bot 建群 Acme P12 @bob", "g1")])
        .await
        .unwrap();
    // A CRM event for the same project: no second group.
    let mut crm = Event::new("chat", EventKind::System, chrono::Utc::now());
    crm.topic = Some("crm.opportunity.created".into());
    crm.payload = json!({"opportunity": {"customer": "Acme", "code": "P12", "members": ["ou_x"]}});
    j.accept(vec![crm]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let o = ops(&w).await;
    assert_eq!(
        o.iter().filter(|x| x["op"] == "create_chat").count(),
        1,
        "one group per project"
    );
    assert_eq!(o.len(), 5);

    // A name that breaks the rule is refused with the rule.
    j.accept(vec![say("@bot 建群 Acme/East P13", "g3")])
        .await
        .unwrap();
    let o = wait_ops(&w, 6).await;
    assert_eq!(
        text(&o[5]),
        "`【项目】Acme/East-P13` contains characters that are not allowed: `/`. The rule: 【项目】<customer>-<CODE>, at most 30 characters."
    );
    j.accept(vec![say("@bot 建群 Acme", "g4")]).await.unwrap();
    let o = wait_ops(&w, 7).await;
    assert!(
        text(&o[6]).starts_with("Usage: `@bot 建群 <customer> <code>` @member"),
        "{}",
        text(&o[6])
    );

    // A new project from the CRM: created with the members from the payload.
    let mut crm = Event::new("chat", EventKind::System, chrono::Utc::now());
    crm.topic = Some("crm.opportunity.created".into());
    crm.payload = json!({"opportunity": {"customer": "Beta", "code": "Q7", "members": ["ou_x", "eve@corp.com"]}});
    j.accept(vec![crm]).await.unwrap();
    let o = wait_ops(&w, 10).await;
    let creates: Vec<&Value> = o.iter().filter(|x| x["op"] == "create_chat").collect();
    assert_eq!(creates.len(), 2);
    assert_eq!(creates[1]["spec"]["name"], "【项目】Beta-Q7");
    assert_eq!(creates[1]["spec"]["members"], json!(["ou_x"]));
}

const DAILY: &str = r#"
[bots.daily]
kind = "daily_push"
source = "bi"
path = "/metrics?day={{date}}"
pointer = "/data"
timezone = "Asia/Shanghai"
figures = [{ key = "gmv", label = "GMV" }, { key = "orders", label = "Orders" }]
connector = "chat"
targets = ["oc_sales", "person:ou_boss"]

[[routes]]
kind = "tick"
topic = "push.daily"
bots = ["daily"]
"#;

#[tokio::test]
async fn daily_push_fans_out_once_per_slot_compares_and_skips_empty_days() {
    let w = world().await;
    let figures = |gmv: f64, orders: f64| {
        ResponseTemplate::new(200).set_body_json(json!({"data": {"gmv": gmv, "orders": orders}}))
    };
    Mock::given(path("/api/metrics"))
        .and(wiremock::matchers::query_param("day", "2026-11-19"))
        .respond_with(figures(1000.0, 10.0))
        .mount(&w.api)
        .await;
    Mock::given(path("/api/metrics"))
        .and(wiremock::matchers::query_param("day", "2026-11-20"))
        .respond_with(figures(1100.0, 8.0))
        .mount(&w.api)
        .await;
    Mock::given(path("/api/metrics"))
        .and(wiremock::matchers::query_param("day", "2026-11-21"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": null})))
        .mount(&w.api)
        .await;
    let t = TestPerch::start(&config(&w, DAILY)).await;
    let j = t.journal();

    // 09:00 Shanghai on the 20th reports the 19th.
    j.accept(vec![tick("push.daily", "2026-11-20T09:00:00+08:00")])
        .await
        .unwrap();
    // The two targets are two lanes: their pushes arrive in either order.
    let to_sales = |ops: &[Value]| -> String {
        let targets: std::collections::BTreeSet<String> =
            ops.iter().map(|x| x["to"].to_string()).collect();
        assert_eq!(
            targets,
            [
                json!({"type": "chat", "id": "oc_sales"}).to_string(),
                json!({"type": "person", "id": "ou_boss"}).to_string()
            ]
            .into_iter()
            .collect(),
        );
        text(ops.iter().find(|x| x["to"]["id"] == "oc_sales").unwrap())
    };
    let o = wait_ops(&w, 2).await;
    let day1 = to_sales(&o[0..2]);
    assert!(day1.contains("Daily figures — 2026-11-19"), "{day1}");
    // The same slot again as another event (a catch-up after a restart, a second
    // replica: another event id, so the journal does not drop it): the bot sends
    // nothing more.
    let mut again = tick("push.daily", "2026-11-20T09:00:00+08:00");
    again.external_id = Some("push.daily@2026-11-20 (fired again)".into());
    j.accept(vec![again]).await.unwrap();
    // Next day: changes against the previous run.
    j.accept(vec![tick("push.daily", "2026-11-21T09:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 4).await;
    let day2 = to_sales(&o[2..4]);
    assert!(day2.contains("GMV: 1,100 ▲ 10.0%"), "{day2}");
    assert!(day2.contains("Orders: 8 ▼ 20.0%"), "{day2}");
    // A day without data: a note, no zeros.
    j.accept(vec![tick("push.daily", "2026-11-22T09:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 6).await;
    assert_eq!(
        to_sales(&o[4..6]),
        "Daily figures: the source has no figures for 2026-11-21 yet, so there is no push today."
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ops(&w).await.len(),
        6,
        "each slot pushed once to each target"
    );
}

#[tokio::test]
async fn greetings_on_the_day_from_a_csv_export() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("people.csv"), "name,birthday,joined,id\nAlice,1990-11-21,2020-03-01,ou_a\nBob,1985-02-29,2016-11-21,ou_b\nCarol,not a date,2019-01-02,ou_c\n").unwrap();
    let bots = format!(
        r#"
[connectors.hr]
kind = "file"
dir = "{dir}"
display_name = "HR export"

[bots.greet]
kind = "greetings"
source = "hr"
path = "/people.csv"
timezone = "Asia/Shanghai"
person_field = "id"
occasions = [{{ field = "birthday", title = "Happy birthday" }}, {{ field = "joined", title = "Happy work anniversary", show_years = true }}]
connector = "chat"
targets = ["oc_all"]

[[routes]]
kind = "tick"
topic = "greetings"
bots = ["greet"]
"#,
        dir = dir.path().display()
    );
    let t = TestPerch::start(&config(&w, &bots)).await;
    t.journal()
        .accept(vec![tick("greetings", "2026-11-21T08:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 4).await;
    let texts: Vec<String> = o.iter().map(text).collect();
    assert!(
        // Ages are not announced unless the occasion says so; years of service are.
        texts.contains(&"🎉 Happy birthday, Alice!".to_string()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"🎉 Happy work anniversary, Bob! (10 years)".to_string()),
        "{texts:?}"
    );
    assert_eq!(o.iter().filter(|x| x["to"]["id"] == "oc_all").count(), 2);
    assert!(
        o.iter()
            .any(|x| x["to"] == json!({"type": "person", "id": "ou_a"}))
    );
    // The schedule fires again the same day (another slot): nobody is greeted twice.
    t.journal()
        .accept(vec![tick("greetings", "2026-11-21T12:00:00+08:00")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ops(&w).await.len(), 4);
}

// ---- reminders -------------------------------------------------------------------

/// A Shanghai wall time.
fn sh(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
        .unwrap()
        .and_local_timezone(chrono_tz::Asia::Shanghai)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn system(topic: &str, id: &str, at: &str, payload: Value) -> Event {
    let mut e = Event::new("chat", EventKind::System, sh(at));
    e.topic = Some(topic.to_string());
    e.payload = payload;
    e.external_id = Some(id.to_string());
    e
}

fn click(bot: &str, action: &str, item: &str, who: &str, message_id: &str, n: u32) -> Event {
    let mut e = Event::new("chat", EventKind::CardAction, chrono::Utc::now());
    e.chat = Some(Chat {
        id: "oc_room".into(),
        chat_type: ChatType::Group,
    });
    e.sender = Some(Person {
        id: format!("ou_{}", who.to_lowercase()),
        name: Some(who.to_string()),
    });
    e.card_action = Some(perch::event::CardAction {
        bot: bot.into(),
        action: action.into(),
        args: json!({ "id": item, "days": 1 }),
        message_id: Some(message_id.into()),
    });
    e.message_id = Some(message_id.into());
    e.external_id = Some(format!("click-{n}"));
    e
}

/// Accept a click and wait for the bot's answer to it.
async fn press(t: &TestPerch, e: Event) -> perch::action::ClickAnswer {
    let id = t.journal().accept(vec![e]).await.unwrap()[0].id();
    t.click_answer(id, Duration::from_secs(10))
        .await
        .expect("the click is answered")
}

fn toast(a: &perch::action::ClickAnswer) -> String {
    a.toast.as_ref().map(|t| t.text.clone()).unwrap_or_default()
}

const TASKS: &str = r#"
[bots.tasks]
kind = "reminders"
timezone = "Asia/Shanghai"
lead_times = ["1d"]
escalate_after_days = 2
quiet_hours = "20:00-08:00"

[[bots.tasks.on]]
topic = "task.due_set"
id = "/task/id"
title = "{{payload.task.title}}"
owner = "/task/assignee"
owner_name = "/task/assignee_name"
due = "/task/due"
chat = "/task/chat"
escalate_to = "/task/manager"

[[bots.tasks.on]]
topic = "task.deleted"
does = "delete"
id = "/task/id"

[[routes]]
topic = "task.*"
bots = ["tasks"]

[[routes]]
kind = "tick"
topic = "reminders"
bots = ["tasks"]

[[routes]]
mention = "*"
bots = ["tasks"]
"#;

fn task(id: &str, due: &str) -> Value {
    json!({ "task": { "id": id, "title": "Submit the Q4 budget", "assignee": "ou_alice",
                      "assignee_name": "Alice", "due": due, "chat": "oc_room", "manager": "ou_boss" } })
}

async fn ticks(t: &TestPerch, slots: &[&str]) {
    for slot in slots {
        t.journal()
            .accept(vec![tick("reminders", slot)])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_reminder_card_until_its_owner_presses_done() {
    let w = world().await;
    let t = TestPerch::start(&config(&w, TASKS)).await;
    let j = t.journal();
    j.accept(vec![system(
        "task.due_set",
        "ev-1",
        "2026-11-20 10:00",
        task("T-1", "2026-11-25 18:00"),
    )])
    .await
    .unwrap();

    // One day before, at 09:00: the card, with its buttons, in the task's chat.
    ticks(&t, &["2026-11-24T09:00:00+08:00"]).await;
    let o = wait_ops(&w, 1).await;
    assert_eq!(o[0]["op"], "send");
    assert_eq!(o[0]["to"], json!({"type": "chat", "id": "oc_room"}));
    let card = &o[0]["body"]["card"];
    assert_eq!(card["header"]["title"], "Reminder: Submit the Q4 budget");
    let buttons = card.to_string();
    for b in ["\"Done\"", "\"Snooze 1 day\"", "\"Reassign\""] {
        assert!(buttons.contains(b), "{b} in {buttons}");
    }
    // Later ticks of the same day: nothing new (that step was sent).
    ticks(
        &t,
        &["2026-11-24T09:05:00+08:00", "2026-11-24T12:00:00+08:00"],
    )
    .await;

    // Someone else presses Done: a polite no, nothing changes.
    let a = press(&t, click("tasks", "done", "T-1", "Bob", "om_1", 1)).await;
    assert!(toast(&a).contains("only Alice (the owner)"), "{a:?}");
    assert!(a.card.is_none());

    // Alice presses Done: a toast, and the card is replaced in place.
    let a = press(&t, click("tasks", "done", "T-1", "Alice", "om_1", 2)).await;
    assert_eq!(toast(&a), "Done. No more reminders.");
    assert_eq!(
        a.card.as_ref().unwrap()["header"]["title"],
        "Done: Submit the Q4 budget"
    );
    let o = wait_ops(&w, 2).await;
    assert_eq!(o[1]["op"], "update");
    assert_eq!(o[1]["message_id"], "om_1");
    assert_eq!(
        o[1]["body"]["card"]["header"]["title"],
        "Done: Submit the Q4 budget"
    );
    assert!(
        !o[1]["body"]["card"].to_string().contains("Snooze"),
        "no buttons on a done card"
    );
    // The same click again (a platform retry): answered the same, handled once.
    let again = press(&t, click("tasks", "done", "T-1", "Alice", "om_1", 2)).await;
    assert_eq!(again, a);

    // The due time and the days after: no more reminders.
    ticks(
        &t,
        &[
            "2026-11-25T18:00:00+08:00",
            "2026-11-26T09:00:00+08:00",
            "2026-11-28T09:00:00+08:00",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ops(&w).await.len(), 2, "{:#?}", ops(&w).await);
}

#[tokio::test]
async fn overdue_reminders_daily_and_escalation_on_day_n() {
    let w = world().await;
    let t = TestPerch::start(&config(&w, TASKS)).await;
    let j = t.journal();
    j.accept(vec![system(
        "task.due_set",
        "ev-2",
        "2026-11-20 10:00",
        task("T-2", "2026-11-20 18:00"),
    )])
    .await
    .unwrap();
    // The due time; then 21:00 is quiet (nothing); overdue day 1 at 09:00.
    ticks(
        &t,
        &["2026-11-20T18:00:00+08:00", "2026-11-20T21:00:00+08:00"],
    )
    .await;
    let o = wait_ops(&w, 1).await;
    assert!(text(&o[0]).contains("due today"), "{}", text(&o[0]));
    ticks(&t, &["2026-11-21T09:00:00+08:00"]).await;
    let o = wait_ops(&w, 2).await;
    assert!(text(&o[1]).contains("overdue"), "{}", text(&o[1]));
    assert_eq!(o[1]["to"]["id"], "oc_room");
    // Day 2: the owner's chat again, and the manager, once.
    ticks(&t, &["2026-11-22T09:00:00+08:00"]).await;
    let o = wait_ops(&w, 4).await;
    let to_boss: Vec<&Value> = o
        .iter()
        .filter(|x| x["to"] == json!({"type": "person", "id": "ou_boss"}))
        .collect();
    assert_eq!(to_boss.len(), 1, "{o:#?}");
    assert_eq!(
        to_boss[0]["body"]["card"]["header"]["title"],
        "Escalated: Submit the Q4 budget"
    );
    // Day 3: the chat only.
    ticks(&t, &["2026-11-23T09:00:00+08:00"]).await;
    let o = wait_ops(&w, 5).await;
    assert_eq!(o[4]["to"]["id"], "oc_room");
    // A new due date restarts the schedule; deleting the item stops it.
    j.accept(vec![system(
        "task.deleted",
        "ev-3",
        "2026-11-23 10:00",
        json!({ "task": { "id": "T-2" } }),
    )])
    .await
    .unwrap();
    ticks(&t, &["2026-11-24T09:00:00+08:00"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ops(&w).await.len(), 5);
}

const LOANS: &str = r#"
[bots.loans]
kind = "reminders"
timezone = "Asia/Shanghai"
noun = "loan"
lead_times = []
list_command = "loans"
list_scope = "all"
remind_command = false

[[bots.loans.on]]
topic = "item.borrowed"
id = "/item/id"
title = "Return {{payload.item.name}}"
owner = "/borrower/id"
owner_name = "/borrower/name"
due = "/due_back"

[[bots.loans.on]]
topic = "item.returned"
does = "done"
id = "/item/id"

[[routes]]
topic = "item.*"
bots = ["loans"]

[[routes]]
kind = "tick"
bots = ["loans"]

[[routes]]
mention = "*"
bots = ["loans"]
"#;

#[tokio::test]
async fn a_loan_reminder_goes_to_the_borrower_until_returned() {
    let w = world().await;
    let t = TestPerch::start(&config(&w, LOANS)).await;
    let j = t.journal();
    j.accept(vec![system(
        "item.borrowed",
        "scan-1",
        "2026-11-18 15:00",
        json!({ "item": { "id": 8812, "name": "Tektronix scope #3" },
                "borrower": { "id": "ou_carol", "name": "Carol" }, "due_back": "2026-11-20" }),
    )])
    .await
    .unwrap();
    ticks(&t, &["2026-11-21T09:00:00+08:00"]).await;
    let o = wait_ops(&w, 1).await;
    assert_eq!(o[0]["to"], json!({"type": "person", "id": "ou_carol"}));
    assert_eq!(
        o[0]["body"]["card"]["header"]["title"],
        "Loan: Return Tektronix scope #3"
    );
    assert!(text(&o[0]).contains("overdue"), "{}", text(&o[0]));

    // Unreturned items, on demand.
    let mut ask = say("@bot loans", "m-1");
    ask.received_at = sh("2026-11-21 10:00");
    j.accept(vec![ask]).await.unwrap();
    let o = wait_ops(&w, 2).await;
    let list = text(&o[1]);
    assert!(
        list.contains("`8812` Return Tektronix scope #3 — Carol") && list.contains("overdue"),
        "{list}"
    );

    // Returned: no more reminders, and the list is empty.
    j.accept(vec![system(
        "item.returned",
        "scan-2",
        "2026-11-21 11:00",
        json!({ "item": { "id": 8812 } }),
    )])
    .await
    .unwrap();
    let mut ask = say("@bot loans", "m-2");
    ask.received_at = sh("2026-11-21 12:00");
    j.accept(vec![ask]).await.unwrap();
    let o = wait_ops(&w, 3).await;
    assert_eq!(text(&o[2]), "No open loans here.");
    ticks(&t, &["2026-11-22T09:00:00+08:00"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ops(&w).await.len(), 3);

    // A loan that is already overdue when it is recorded: reminded at the next tick.
    j.accept(vec![system(
        "item.borrowed",
        "scan-3",
        "2026-11-22 10:00",
        json!({ "item": { "id": "cam-1", "name": "Camera" },
                "borrower": { "id": "ou_dan", "name": "Dan" }, "due_back": "2026-11-21" }),
    )])
    .await
    .unwrap();
    ticks(
        &t,
        &["2026-11-22T10:01:00+08:00", "2026-11-22T10:02:00+08:00"],
    )
    .await;
    let o = wait_ops(&w, 4).await;
    assert_eq!(o[3]["to"], json!({"type": "person", "id": "ou_dan"}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ops(&w).await.len(), 4, "once");
}

#[tokio::test]
async fn remind_command_reads_natural_dates_and_lists_what_is_open() {
    let w = world().await;
    let t = TestPerch::start(&config(&w, TASKS)).await;
    let j = t.journal();
    // Saturday 21 November 2026, 10:00: 周五 is the 27th.
    let mut ask = say("@bot remind @bob 周五 17:00 submit the budget", "m-1");
    ask.received_at = sh("2026-11-21 10:00");
    j.accept(vec![ask]).await.unwrap();
    let o = wait_ops(&w, 1).await;
    let ok = text(&o[0]);
    assert!(
        ok.starts_with("OK: I'll remind bob about “submit the budget” on Fri 27 Nov 17:00 (`r-"),
        "{ok}"
    );
    let id = ok.rsplit('`').nth(1).unwrap().to_string();

    // What cannot be read gets the usage, and changes nothing.
    let mut bad = say("@bot remind @bob someday do it", "m-2");
    bad.received_at = sh("2026-11-21 10:01");
    j.accept(vec![bad]).await.unwrap();
    let o = wait_ops(&w, 2).await;
    assert!(
        text(&o[1]).starts_with("I can't read \"someday\" as a time."),
        "{}",
        text(&o[1])
    );

    // The list, in the chat it was asked in.
    let mut list = say("@bot reminders", "m-3");
    list.received_at = sh("2026-11-21 10:02");
    j.accept(vec![list]).await.unwrap();
    let o = wait_ops(&w, 3).await;
    assert!(
        text(&o[2]).contains(&format!(
            "`{id}` submit the budget — bob — Fri 27 Nov 17:00 (in 6 days)"
        )),
        "{}",
        text(&o[2])
    );
    // Only the owner may snooze it by command too.
    let mut snooze = say(&format!("@bot snooze {id}"), "m-4");
    snooze.received_at = sh("2026-11-21 10:03");
    j.accept(vec![snooze]).await.unwrap();
    let o = wait_ops(&w, 4).await;
    assert_eq!(
        text(&o[3]),
        format!("Only bob (the owner) can change reminder `{id}`.")
    );

    // The day before at 09:00, the reminder card goes to the chat it was asked in.
    ticks(&t, &["2026-11-26T09:00:00+08:00"]).await;
    let o = wait_ops(&w, 5).await;
    assert_eq!(o[4]["to"]["id"], "oc_room");
    assert_eq!(
        o[4]["body"]["card"]["header"]["title"],
        "Reminder: submit the budget"
    );
}

/// A query bot routed by mention alone, named with nothing after it, lists its commands
/// with the name it was called by (not "I don't know ``").
#[tokio::test]
async fn a_query_bot_named_alone_lists_what_it_answers() {
    let w = world().await;
    let bots = r#"
[bots.data]
kind = "query"
source = "bi"

[bots.data.commands.gmv]
path = "/gmv/{{day}}"
summary = "GMV of a day"
args = [{ name = "day", default = "昨天" }]

[[routes]]
mention = "*"
bots = ["data"]
"#;
    let hub = kit(&w, bots).await;
    let (_, o) = hub.post(say("@bot", "alone")).await;
    assert_eq!(o.len(), 1, "{o:?}");
    let list = o[0].text();
    assert_eq!(
        list,
        "Ask me one of these:\n- `@bot gmv [day: day]`: GMV of a day"
    );
}

/// With `previous_pointer`, the change is against the source's own day before, from the
/// first push on.
#[tokio::test]
async fn daily_push_compares_with_the_sources_day_before() {
    let w = world().await;
    Mock::given(path("/api/metrics"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"data": {"gmv": 1100.0, "orders": 8.0}, "previous": {"gmv": 1000.0, "orders": 10.0}}),
        ))
        .mount(&w.api)
        .await;
    let bots = DAILY.replace(
        "pointer = \"/data\"",
        "pointer = \"/data\"\nprevious_pointer = \"/previous\"",
    );
    let t = TestPerch::start(&config(&w, &bots)).await;
    t.journal()
        .accept(vec![tick("push.daily", "2026-11-20T09:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 2).await;
    // Two targets, two lanes: either may arrive first; both carry the same text.
    let first = text(&o[0]);
    assert!(first.contains("GMV: 1,100 ▲ 10.0%"), "{first}");
    assert!(first.contains("Orders: 8 ▼ 20.0%"), "{first}");
}

/// A bot that takes no commands, @mentioned: it says so itself, in its own name (the
/// outbox key names it, and the web chat shows the key's bot as the author), instead of
/// an anonymous "I don't know" with a guess at another bot's command.
#[tokio::test]
async fn a_bot_without_commands_says_so_when_mentioned() {
    let w = world().await;
    let bots = r#"
[bots.builds]
kind = "notify"
connector = "chat"
chat = "team"
text = "Build failed: {{payload.repo}}"

[[routes]]
topic = "build.failed"
bots = ["builds"]
"#;
    let hub = kit(&w, bots).await;
    let mut e = say("@builds hi", "nb1");
    e.mentions = vec![Mention {
        person: Person {
            id: "builds".into(),
            name: Some("builds".into()),
        },
        is_bot: true,
    }];
    let (_, o) = hub.post(e).await;
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(
        o[0].text(),
        "`@builds` does not take commands: it is a `notify` bot that reacts to events. Say `@help` for the bots you can ask."
    );
    assert!(o[0].key.ends_with("/builds/0000"), "{}", o[0].key);
}

/// A query card shows the declared fields, in order, with their labels and formats; an
/// undeclared answer is labelled from its keys with numbers grouped.
#[tokio::test]
async fn query_cards_label_order_and_format_their_fields() {
    let w = world().await;
    Mock::given(path("/api/gmv"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"gmv": 1234567.8, "orders": 8421, "new_customers": 312})),
        )
        .mount(&w.api)
        .await;
    let bots = r#"
[bots.data]
kind = "query"
source = "bi"

[bots.data.commands.gmv]
path = "/gmv"
template = "query_answer"
fields = [{ key = "orders", label = "Orders" }, { key = "gmv", label = "GMV", decimals = 2 }]

[bots.data.commands.raw]
path = "/gmv"
template = "query_answer"

[[routes]]
mention = "*"
bots = ["data"]
"#;
    let t = TestPerch::start(&config(&w, bots)).await;
    let j = t.journal();
    j.accept(vec![say("@bot gmv", "f1")]).await.unwrap();
    let o = wait_ops(&w, 1).await;
    let card = o[0]["body"]["card"].to_string();
    let (orders, gmv) = (card.find("Orders").unwrap(), card.find("GMV").unwrap());
    assert!(orders < gmv, "declared order: {card}");
    assert!(
        card.contains("1,234,567.80") && card.contains("8,421"),
        "{card}"
    );
    assert!(
        !card.contains("new_customers"),
        "only declared fields: {card}"
    );
    j.accept(vec![say("@bot raw", "f2")]).await.unwrap();
    let o = wait_ops(&w, 2).await;
    let card = o[1]["body"]["card"].to_string();
    assert!(
        card.contains("New customers") && card.contains("1,234,567.80"),
        "{card}"
    );
}

/// A bot kind from outside perch: its own config type and state, registered on the hub
/// builder exactly as the built-in kinds are.
mod outside {
    use perch::action::Action;
    use perch::bots::{Bot, BotContext, BotError, BotKind};
    use perch::event::Event;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CounterConfig {
        pub greeting: String,
    }

    pub struct Counter {
        greeting: String,
    }

    #[async_trait::async_trait]
    impl Bot for Counter {
        async fn handle(
            &self,
            _event: &Event,
            ctx: &mut BotContext,
        ) -> Result<Vec<Action>, BotError> {
            let n: u64 = ctx.state_get("count").await?.unwrap_or(0) + 1;
            ctx.state_put("count", &n).await?;
            Ok(vec![Action::reply_text(format!("{} #{n}", self.greeting))])
        }
    }

    impl BotKind for Counter {
        type Config = CounterConfig;
        fn build(_name: &str, config: CounterConfig) -> Result<Self, BotError> {
            Ok(Counter {
                greeting: config.greeting,
            })
        }
    }
}

#[tokio::test]
async fn a_bot_kind_from_outside_perch_registers_on_the_builder_and_keeps_state() {
    let config = "[bots.count]\nkind = \"counter\"\ngreeting = \"hello\"\n\n[[routes]]\nmention = \"*\"\nbots = [\"count\"]\n";
    // Without the registration, the kind is refused by name.
    let refused = perch::Hub::builder()
        .parse(config, std::path::Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("unknown kind `counter`"), "{refused}");
    let hub = perch::Hub::builder().bot_kind::<outside::Counter>("counter");
    // Its own settings are checked against its config type, like a built-in kind's.
    let typo = hub
        .parse(
            &config.replace("greeting =", "greetin ="),
            std::path::Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
    assert!(
        typo.contains("bot `count`: unknown field `greetin`, expected `greeting`"),
        "{typo}"
    );

    let t = perch::testing::TestHub::start(hub, config).await;
    let first = t.mention("@bot hi").await;
    let second = t.mention("@bot hi").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].text(), "hello #1");
    assert_eq!(
        second[0].text(),
        "hello #2",
        "its state persists between events"
    );
}
