//! The seed bots end to end: wiremock plays the chat platform (through the webhook
//! connector's `send_url`, which carries every operation as JSON) and the internal API.
//! Ticks are injected as the scheduler makes them: `kind = tick`, `payload.slot`, and an
//! external id per slot.

mod common;
use common::*;
use perch::event::{Chat, ChatType, Event, EventKind, Mention, Person};
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

fn tick(job: &str, slot: &str) -> Event {
    let mut e = Event::new("scheduler", EventKind::Tick, chrono::Utc::now());
    e.topic = Some(job.to_string());
    e.payload = json!({ "job": job, "slot": slot });
    e.external_id = Some(format!("{job}@{slot}"));
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
    let j = &t.perch().shared.journal;

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
        "`12345` is not a valid serial. Usage: @bot ct <serial: SN\\d+>"
    );

    j.accept(vec![say("@bot ct", "q4")]).await.unwrap();
    let o = wait_ops(&w, 4).await;
    assert!(
        text(&o[3]).starts_with("Missing <serial>. Usage: @bot ct"),
        "{}",
        text(&o[3])
    );

    j.accept(vec![say("@bot gmv 2026-13", "q5")]).await.unwrap();
    let o = wait_ops(&w, 5).await;
    assert!(
        text(&o[4]).contains("Usage: @bot gmv [day: 今天|昨天|YYYY-MM-DD]"),
        "{}",
        text(&o[4])
    );

    j.accept(vec![say("@bot ct SN999", "q6")]).await.unwrap();
    let o = wait_ops(&w, 6).await;
    assert_eq!(
        text(&o[5]),
        "Sorry, I could not get the data: BI API timed out after 0.3 s."
    );
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
    let j = &t.perch().shared.journal;

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
        "`【项目】Acme/East-P13` contains characters that are not allowed: /. The rule: 【项目】<customer>-<CODE>, at most 30 characters."
    );
    j.accept(vec![say("@bot 建群 Acme", "g4")]).await.unwrap();
    let o = wait_ops(&w, 7).await;
    assert!(
        text(&o[6]).starts_with("Usage: @bot 建群 <customer> <code>"),
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
    let j = &t.perch().shared.journal;

    // 09:00 Shanghai on the 20th reports the 19th.
    j.accept(vec![tick("push.daily", "2026-11-20T09:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 2).await;
    assert_eq!(o[0]["to"], json!({"type": "chat", "id": "oc_sales"}));
    assert_eq!(o[1]["to"], json!({"type": "person", "id": "ou_boss"}));
    assert!(
        text(&o[0]).contains("Daily figures — 2026-11-19"),
        "{}",
        text(&o[0])
    );
    // The same slot again (a restart re-firing it): nothing more.
    j.accept(vec![tick("push.daily", "2026-11-20T09:00:00+08:00")])
        .await
        .unwrap();
    // Next day: changes against the previous run.
    j.accept(vec![tick("push.daily", "2026-11-21T09:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 4).await;
    let day2 = text(&o[2]);
    assert!(day2.contains("GMV: 1100 ▲ 10.0%"), "{day2}");
    assert!(day2.contains("Orders: 8 ▼ 20.0%"), "{day2}");
    // A day without data: a note, no zeros.
    j.accept(vec![tick("push.daily", "2026-11-22T09:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 6).await;
    assert_eq!(
        text(&o[4]),
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
occasions = [{{ field = "birthday", title = "Happy birthday" }}, {{ field = "joined", title = "Happy work anniversary" }}]
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
    t.perch()
        .shared
        .journal
        .accept(vec![tick("greetings", "2026-11-21T08:00:00+08:00")])
        .await
        .unwrap();
    let o = wait_ops(&w, 4).await;
    let texts: Vec<String> = o.iter().map(text).collect();
    assert!(
        texts.contains(&"🎉 Happy birthday, Alice! (36 years)".to_string()),
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ops(&w).await.len(), 4);
}
