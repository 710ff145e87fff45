//! The built-in web chat (`kind = "local"`) end to end, on a real server: the page, the
//! API, the journal, the bots' answers through the outbox, SSE, and restarts.

use perch::action::{ChatSpec, MessageBody, Operation, Target};
use perch::testing::*;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[connectors.web]
kind = "local"
title = "Acme <chat>"

[bots.echo]
kind = "echo"

[bots.help]
kind = "help"

[[routes]]
connector = "web"
mention = "echo"
bots = ["echo"]

[[routes]]
connector = "web"
mention = "help"
bots = ["help"]
"#;

/// The web chat config with a `tasks` reminders bot (its `extra` settings appended),
/// mentioned as `@tasks` and ticked by the scheduler.
fn tasks_config(extra: &str) -> String {
    format!(
        r#"{CONFIG}
[bots.tasks]
kind = "reminders"
timezone = "UTC"
{extra}

[[routes]]
connector = "web"
mention = "tasks"
bots = ["tasks"]

[[routes]]
kind = "tick"
bots = ["tasks"]
"#
    )
}

/// Ann asks `@tasks` to remind her to call the supplier in two hours; the bot's answer.
async fn remind_ann_to_call_the_supplier(t: &TestPerch) -> Value {
    say(
        t,
        "general",
        "ann",
        "@tasks remind me in 2 hours call the supplier",
        "c-1",
    )
    .await;
    reply_from(t, "general", "tasks").await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post_json(t: &TestPerch, path: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .post(t.url(path))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_json(t: &TestPerch, path: &str) -> Value {
    let resp = client().get(t.url(path)).send().await.expect("request");
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().await.expect("json")
}

async fn say(t: &TestPerch, room: &str, author: &str, text: &str, client_id: &str) -> Value {
    let (status, body) = post_json(
        t,
        &format!("/chat/api/rooms/{room}/messages"),
        &json!({ "author": author, "text": text, "client_id": client_id }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn messages(t: &TestPerch, room: &str) -> Vec<Value> {
    get_json(t, &format!("/chat/api/rooms/{room}/messages")).await["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Wait for a message by `author` in `room`.
async fn reply_from(t: &TestPerch, room: &str, author: &str) -> Value {
    eventually(
        10,
        &format!("a message from {author} in {room}"),
        || async {
            messages(t, room)
                .await
                .into_iter()
                .find(|m| m["author"] == author)
        },
    )
    .await
}

async fn events(t: &TestPerch) -> Vec<Value> {
    get_json(t, "/api/events?limit=1000").await["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn web(t: &TestPerch) -> perch::connectors::SharedConnector {
    t.connector("web")
}

/// The web chat's live stream, read until its `hello`.
async fn open_stream(t: &TestPerch) -> Sse {
    Sse::open(client().get(t.url("/chat/api/stream"))).await
}

#[tokio::test]
async fn the_page_is_served_with_its_title_escaped() {
    let t = TestPerch::start(CONFIG).await;
    let resp = client().get(t.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("<title>Acme &lt;chat&gt;</title>"), "{html}");
    for asset in ["/chat/app.js", "/chat/style.css"] {
        let resp = client().get(t.url(asset)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        assert!(!resp.text().await.unwrap().is_empty());
    }
    let bots = get_json(&t, "/chat/api/bots").await;
    assert_eq!(
        bots["bots"],
        json!([{ "name": "echo" }, { "name": "help" }])
    );
}

#[tokio::test]
async fn echo_answers_in_the_room_and_on_the_stream() {
    let t = TestPerch::start(CONFIG).await;
    let mut sse = open_stream(&t).await;
    let posted = say(&t, "general", "ann", "@echo hi", "c-1").await;
    assert_eq!(posted["author"], "ann");
    assert_eq!(posted["from_bot"], false);
    assert_eq!(posted["duplicate"], false);
    assert!(
        posted["html"]
            .as_str()
            .unwrap()
            .contains(r#"<span class="mention">@echo</span>"#)
    );

    let reply = reply_from(&t, "general", "echo").await;
    assert_eq!(reply["from_bot"], true);
    assert_eq!(reply["body"], json!({ "type": "text", "text": "hi" }));
    assert_eq!(reply["reply_to"], posted["id"]);

    // The person's message and the bot's answer both went out live.
    let seen = sse.until(r#""author":"echo""#).await;
    assert!(seen.contains("event: message"), "{seen}");
    assert!(seen.contains(r#""author":"ann""#), "{seen}");

    // The message went through the journal like any platform's.
    let evs = events(&t).await;
    assert_eq!(evs.len(), 1);
    let e = &evs[0]["event"];
    assert_eq!(e["kind"], "message");
    assert_eq!(e["connector"], "web");
    assert_eq!(e["chat"], json!({ "id": "general", "chat_type": "group" }));
    assert_eq!(e["sender"], json!({ "id": "ann", "name": "ann" }));
    assert_eq!(e["message_id"], posted["id"]);
    assert_eq!(e["external_id"], "c-1");
    assert_eq!(
        e["mentions"],
        json!([{ "person": { "id": "echo", "name": "echo" }, "is_bot": true }])
    );
}

#[tokio::test]
async fn help_lists_the_commands() {
    let t = TestPerch::start(CONFIG).await;
    say(&t, "general", "ann", "@help", "c-help").await;
    let reply = reply_from(&t, "general", "help").await;
    assert_eq!(reply["body"]["type"], "markdown");
    let text = reply["body"]["text"].as_str().unwrap();
    assert!(
        text.contains("- `@echo <text>` — repeats the text back\n"),
        "{text}"
    );
    let html = reply["html"].as_str().unwrap();
    assert!(
        html.contains("<strong>Commands here</strong>") && html.contains("<li>"),
        "{html}"
    );
}

/// Where the web chat speaks Chinese, `help` says what each built-in command does in
/// Chinese (a bot's own `summary` stays as its config wrote it).
#[tokio::test]
async fn help_lists_built_in_commands_in_the_chats_language() {
    let config = CONFIG.replace(
        "title = \"Acme <chat>\"",
        "title = \"Acme <chat>\"\nlocale = \"zh-CN\"",
    );
    let t = TestPerch::start(&config).await;
    say(&t, "general", "ann", "@help", "c-help-zh").await;
    let reply = reply_from(&t, "general", "help").await;
    let text = reply["body"]["text"].as_str().unwrap();
    assert!(
        text.contains("- `@echo <text>` — 把文字原样发回\n"),
        "{text}"
    );
    assert!(!text.contains("repeats"), "{text}");
}

/// A reply that quotes what a person typed shows it as code, whole, whatever it holds:
/// markdown is rendered (no raw backticks) and nothing typed becomes markup.
#[tokio::test]
async fn a_quoted_command_is_shown_as_code_not_markup() {
    let config = format!(
        r#"{CONFIG}
[bots.tasks]
kind = "reminders"
timezone = "UTC"

[[routes]]
connector = "web"
mention = "tasks"
bots = ["tasks"]
"#
    );
    let t = TestPerch::start(&config).await;
    say(
        &t,
        "general",
        "ann",
        "@tasks done de`ploy<b>*x*</b>",
        "c-quoted",
    )
    .await;
    let reply = reply_from(&t, "general", "tasks").await;
    assert_eq!(reply["body"]["type"], "markdown", "{reply}");
    let html = reply["html"].as_str().unwrap();
    assert!(
        html.contains("<code>de`ploy&lt;b&gt;*x*&lt;/b&gt;</code>"),
        "{html}"
    );
    assert!(!html.contains("<b>") && !html.contains("<em>"), "{html}");
}

/// The connector's `locale` picks the language of built-in texts; a bot's own wins.
#[tokio::test]
async fn built_in_texts_follow_the_connector_or_the_bots_locale() {
    let config = CONFIG.replace(
        "title = \"Acme <chat>\"",
        "title = \"Acme <chat>\"\nlocale = \"zh-CN\"",
    );
    let config = format!(
        r#"{config}
[bots.tasks]
kind = "reminders"
timezone = "UTC"

[bots.tasks_en]
kind = "reminders"
timezone = "UTC"
locale = "en"

[[routes]]
connector = "web"
mention = "tasks"
bots = ["tasks"]

[[routes]]
connector = "web"
mention = "tasks_en"
bots = ["tasks_en"]
"#
    );
    let t = TestPerch::start(&config).await;
    say(&t, "general", "ann", "@tasks done r-nope", "c-zh").await;
    let zh = reply_from(&t, "general", "tasks").await;
    assert_eq!(
        zh["body"]["text"], "没有编号为 `r-nope` 的reminder。",
        "{zh}"
    );
    say(&t, "general", "ann", "@tasks_en done r-nope", "c-en").await;
    let en = reply_from(&t, "general", "tasks_en").await;
    assert_eq!(en["body"]["text"], "There is no reminder `r-nope`.", "{en}");
}

/// `@nobody …` (no bot, nobody who has written here) would notify no one: the author is
/// told so with their post, and nothing is posted to the room. A person who has written
/// here, a bot, a mention later in the text, and the author's own name get no notice.
#[tokio::test]
async fn a_mention_of_nobody_is_told_to_its_author() {
    let t = TestPerch::start(CONFIG).await;
    let posted = say(&t, "general", "ann", "@nobody are you there?", "c-nobody").await;
    let notice = posted["notice"].as_str().expect("a notice");
    assert!(notice.starts_with("@nobody is not a bot here"), "{notice}");
    assert!(
        notice.contains("@echo") && notice.contains("@help"),
        "{notice}"
    );
    assert!(
        !notice.contains('`'),
        "plain text for the notice line: {notice}"
    );

    say(&t, "general", "bob", "hi all", "c-bob").await;
    for (i, text) in [
        "@bob are you there?",
        "@echo hi",
        "hi @nobody",
        "@ann note to self",
    ]
    .iter()
    .enumerate()
    {
        let posted = say(&t, "general", "ann", text, &format!("c-{i}")).await;
        assert!(posted.get("notice").is_none(), "{text}: {posted}");
    }
    // The notice is the author's alone: only people's posts and echo's answer are stored.
    // Events of a chat are handled in order, so once echo has answered the later post,
    // any answer to `@nobody` would be there too.
    reply_from(&t, "general", "echo").await;
    let msgs = messages(&t, "general").await;
    let mut authors: Vec<&str> = msgs.iter().map(|m| m["author"].as_str().unwrap()).collect();
    authors.sort_unstable();
    assert_eq!(
        authors,
        ["ann", "ann", "ann", "ann", "ann", "bob", "echo"],
        "{msgs:?}"
    );
}

/// In Chinese where the web chat speaks Chinese.
#[tokio::test]
async fn the_nobody_notice_follows_the_connectors_locale() {
    let config = CONFIG.replace(
        "title = \"Acme <chat>\"",
        "title = \"Acme <chat>\"\nlocale = \"zh-CN\"",
    );
    let t = TestPerch::start(&config).await;
    let posted = say(&t, "general", "ann", "@nobody 在吗", "c-zh-nobody").await;
    let notice = posted["notice"].as_str().expect("a notice");
    assert!(
        notice.starts_with("这里没有名为 @nobody 的机器人"),
        "{notice}"
    );
}

#[tokio::test]
async fn a_double_submit_is_one_message_and_one_event() {
    let t = TestPerch::start(CONFIG).await;
    let first = say(&t, "general", "ann", "hello there", "same-id").await;
    let second = say(&t, "general", "ann", "hello there", "same-id").await;
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["id"], second["id"]);
    let msgs = messages(&t, "general").await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let evs = events(&t).await;
    assert_eq!(
        evs.iter()
            .filter(|e| e["event"]["external_id"] == "same-id")
            .count(),
        1
    );
}

#[tokio::test]
async fn bad_input_is_refused_and_stores_nothing() {
    let t = TestPerch::start(CONFIG).await;
    let ok = |text: &str| json!({ "author": "ann", "text": text, "client_id": "x" });
    let cases: Vec<(&str, Value, u16)> = vec![
        ("/chat/api/rooms/nowhere/messages", ok("hi"), 404),
        ("/chat/api/rooms/general/messages", ok(""), 400),
        ("/chat/api/rooms/general/messages", ok("   \n "), 400),
        (
            "/chat/api/rooms/general/messages",
            ok(&"a".repeat(5000)),
            400,
        ),
        (
            "/chat/api/rooms/general/messages",
            json!({ "author": "ann\nbob", "text": "hi", "client_id": "x" }),
            400,
        ),
        (
            "/chat/api/rooms/general/messages",
            json!({ "author": "", "text": "hi", "client_id": "x" }),
            400,
        ),
        (
            "/chat/api/rooms/general/messages",
            json!({ "author": "x".repeat(41), "text": "hi", "client_id": "x" }),
            400,
        ),
        (
            "/chat/api/rooms/general/messages",
            json!({ "author": "echo", "text": "hi", "client_id": "x" }),
            400,
        ),
        (
            "/chat/api/rooms/general/messages",
            json!({ "author": "ann", "text": "hi" }),
            422,
        ),
        (
            "/chat/api/rooms/general/messages",
            json!({ "author": "ann", "text": "hi", "client_id": "" }),
            400,
        ),
        ("/chat/api/rooms", json!({ "name": "" }), 400),
        ("/chat/api/rooms", json!({ "name": "a\u{7}b" }), 400),
        (
            "/chat/api/rooms/general/actions",
            json!({ "message_id": "nope", "action": { "bot": "echo", "action": "done" }, "author": "ann", "client_id": "y" }),
            404,
        ),
    ];
    for (path, body, want) in cases {
        let (status, answer) = post_json(&t, path, &body).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error line: {answer}"));
        assert!(!error.is_empty() && !error.contains('\n'), "{error:?}");
    }
    // Malformed JSON, and a body that is not JSON at all.
    for raw in ["{\"author\": \"ann\", \"text\": ", "not json"] {
        let resp = client()
            .post(t.url("/chat/api/rooms/general/messages"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{raw}");
        let answer: Value = resp.json().await.unwrap();
        assert!(answer["error"].is_string(), "{answer}");
    }
    for path in [
        "/chat/api/rooms/nowhere/messages",
        "/chat/api/rooms/general/messages?limit=lots",
    ] {
        let resp = client().get(t.url(path)).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
    }
    assert!(messages(&t, "general").await.is_empty());
    assert!(events(&t).await.is_empty());
    let rooms = get_json(&t, "/chat/api/rooms").await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1, "{rooms}");
    // The refused client id "x" is still free.
    say(&t, "general", "ann", "now it works", "x").await;
    assert_eq!(messages(&t, "general").await.len(), 1);
}

#[tokio::test]
async fn rooms_and_history_survive_a_restart() {
    let mut t = TestPerch::start(CONFIG).await;
    let (status, room) = post_json(
        &t,
        "/chat/api/rooms",
        &json!({ "name": "Project X", "author": "ann" }),
    )
    .await;
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["id"], "project-x");
    // Creating it again opens the same room.
    let (status, again) = post_json(&t, "/chat/api/rooms", &json!({ "name": "project x" })).await;
    assert_eq!((status, &again["id"]), (200, &json!("project-x")));

    say(&t, "project-x", "ann", "@echo remember me", "c-r1").await;
    reply_from(&t, "project-x", "echo").await;
    say(&t, "general", "bob", "hi all", "c-r2").await;

    t.restart().await;

    let rooms = get_json(&t, "/chat/api/rooms").await;
    let ids: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["general", "project-x"]);
    let px = messages(&t, "project-x").await;
    let texts: Vec<(&str, &str)> = px
        .iter()
        .map(|m| {
            (
                m["author"].as_str().unwrap(),
                m["body"]["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        texts,
        vec![("ann", "@echo remember me"), ("echo", "remember me")]
    );
    assert_eq!(messages(&t, "general").await.len(), 1);
    // `after` pages forward from a message id.
    let after = get_json(
        &t,
        &format!(
            "/chat/api/rooms/project-x/messages?after={}",
            px[0]["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(after["messages"].as_array().unwrap().len(), 1);
    // Still deduplicated after the restart.
    let repeat = say(&t, "general", "bob", "hi all", "c-r2").await;
    assert_eq!(repeat["duplicate"], true);
}

#[tokio::test]
async fn executing_one_key_twice_posts_one_message() {
    let t = TestPerch::start(CONFIG).await;
    let web = web(&t);
    let op = Operation::Send {
        to: Target::chat("general"),
        body: MessageBody::markdown("**done**"),
        reply_to: None,
    };
    let key = "0190aaaa-0000-7000-8000-000000000000/builds/0000";
    let a = web.execute(&op, key).await.unwrap();
    let b = web.execute(&op, key).await.unwrap();
    assert!(a.id.is_some());
    assert_eq!(a.id, b.id);
    let msgs = messages(&t, "general").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["author"], "builds");
    assert_eq!(msgs[0]["html"], "<p><strong>done</strong></p>");

    // To a person: their direct room, created on demand, listed only for them.
    let dm = Operation::Send {
        to: Target::person("ann"),
        body: MessageBody::text("psst"),
        reply_to: None,
    };
    web.execute(&dm, "0190aaaa-0000-7000-8000-000000000001/notify/0000")
        .await
        .unwrap();
    let mine = get_json(&t, "/chat/api/rooms?me=ann").await;
    assert!(
        mine["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "@ann" && r["direct"] == true),
        "{mine}"
    );
    let others = get_json(&t, "/chat/api/rooms?me=bob").await;
    assert!(
        !others["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "@ann"),
        "{others}"
    );
    assert_eq!(messages(&t, "%40ann").await.len(), 1);

    // A person writing in their direct room is a direct chat for the router.
    say(&t, "%40ann", "ann", "@echo back", "c-dm").await;
    let evs = events(&t).await;
    assert_eq!(
        evs[0]["event"]["chat"],
        json!({ "id": "@ann", "chat_type": "direct" })
    );
}

#[tokio::test]
async fn create_chat_update_and_add_members() {
    let t = TestPerch::start(CONFIG).await;
    let web = web(&t);
    let mut sse = open_stream(&t).await;
    let spec = ChatSpec {
        name: "【项目】Acme-P01".into(),
        members: vec!["ann".into(), "bob".into()],
        ..Default::default()
    };
    let op = Operation::CreateChat { spec };
    let key = "0190aaaa-0000-7000-8000-000000000002/auto_group/0000";
    let made = web.execute(&op, key).await.unwrap();
    let again = web.execute(&op, key).await.unwrap();
    let id = made.id.clone().expect("room id");
    assert_eq!(again.id.as_deref(), Some(id.as_str()));
    sse.until("event: room").await;

    // A group made for named people is theirs: listed to a member (and private).
    let rooms = get_json(&t, "/chat/api/rooms?me=ann").await;
    let list = rooms["rooms"].as_array().unwrap();
    assert_eq!(list.len(), 2, "one room created, not two: {rooms}");
    let room = list
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("new room listed");
    assert_eq!(room["name"], "【项目】Acme-P01");
    assert_eq!(room["members"], json!(["ann", "bob"]));
    assert_eq!(room["private"], true);

    let added = web
        .execute(
            &Operation::AddMembers {
                chat_id: id.clone(),
                members: vec!["bob".into(), "cy".into()],
                member_id_type: None,
            },
            "k/auto_group/0001",
        )
        .await
        .unwrap();
    assert_eq!(added.detail, json!({ "added": ["cy"], "not_added": [] }));
    let unknown = web
        .execute(
            &Operation::AddMembers {
                chat_id: "nope".into(),
                members: vec!["x".into()],
                member_id_type: None,
            },
            "k/x/0",
        )
        .await;
    assert!(
        matches!(unknown, Err(perch::connectors::SendError::Permanent(_))),
        "{unknown:?}"
    );

    // A card, then an update of it in place.
    let card =
        json!({ "header": { "title": "Deploy <prod>" }, "elements": [{ "text": "waiting" }] });
    let sent = web
        .execute(
            &Operation::Send {
                to: Target::chat(id.clone()),
                body: MessageBody::Card { card },
                reply_to: None,
            },
            "k/deploy/0000",
        )
        .await
        .unwrap();
    let msg_id = sent.id.unwrap();
    let new_card =
        json!({ "header": { "title": "Deploy <prod>" }, "elements": [{ "text": "done" }] });
    web.execute(
        &Operation::Update {
            chat_id: Some(id.clone()),
            message_id: msg_id.clone(),
            body: MessageBody::Card { card: new_card },
        },
        "k/deploy/0001",
    )
    .await
    .unwrap();
    let seen = sse.until("event: update").await;
    assert!(seen.contains(&msg_id), "{seen}");
    let msgs = messages(&t, &urlencode(&id)).await;
    assert_eq!(msgs.len(), 1);
    let html = msgs[0]["html"].as_str().unwrap();
    assert!(
        html.contains("done") && html.contains("Deploy &lt;prod&gt;") && !html.contains("<prod>"),
        "{html}"
    );
    assert!(msgs[0]["edited_at"].is_string());
    let missing = web
        .execute(
            &Operation::Update {
                chat_id: None,
                message_id: "nope".into(),
                body: MessageBody::text("x"),
            },
            "k/x/1",
        )
        .await;
    assert!(
        matches!(missing, Err(perch::connectors::SendError::Permanent(_))),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_card_click_becomes_a_card_action_event_for_the_named_bot() {
    let t = TestPerch::start(CONFIG).await;
    let web = web(&t);
    // Clicks must name a button perch put on the card: one for `echo`, one for a bot
    // that does not exist.
    let button = |bot: &str| json!({ "label": bot, "action": { "bot": bot, "action": "done", "args": { "id": 7 } } });
    let card = json!({ "header": { "title": "Reminder" }, "elements": [
        { "type": "buttons", "buttons": [button("echo"), button("ghost")] }
    ] });
    let sent = web
        .execute(
            &Operation::Send {
                to: Target::chat("general"),
                body: MessageBody::Card { card },
                reply_to: None,
            },
            "k/reminders/0000",
        )
        .await
        .unwrap();
    let message_id = sent.id.unwrap();

    let click = |bot: &str, client_id: &str| json!({ "message_id": message_id, "action": { "bot": bot, "action": "done", "args": { "id": 7 } }, "author": "ann", "client_id": client_id });
    let (status, first) = post_json(
        &t,
        "/chat/api/rooms/general/actions",
        &click("echo", "click-1"),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (_, again) = post_json(
        &t,
        "/chat/api/rooms/general/actions",
        &click("echo", "click-1"),
    )
    .await;
    assert_eq!(
        (again["duplicate"].clone(), again["event_id"].clone()),
        (json!(true), first["event_id"].clone())
    );

    let event_id = first["event_id"].as_str().unwrap().to_string();
    let entry = eventually(10, "the click is routed", || async {
        let e = get_json(&t, &format!("/api/events/{event_id}")).await;
        (e["fate"]["state"] != "pending").then_some(e)
    })
    .await;
    let ev = &entry["event"];
    assert_eq!(ev["kind"], "card_action");
    assert_eq!(ev["chat"]["id"], "general");
    assert_eq!(ev["sender"]["id"], "ann");
    assert_eq!(ev["external_id"], "click-1");
    assert_eq!(
        ev["card_action"],
        json!({ "bot": "echo", "action": "done", "args": { "id": 7 }, "message_id": message_id })
    );
    assert_eq!(entry["fate"]["state"], "routed");
    assert_eq!(entry["fate"]["bots"], json!(["echo"]));

    // A bot that does not exist: journaled, and the fate says so.
    let (status, ghost) = post_json(
        &t,
        "/chat/api/rooms/general/actions",
        &click("ghost", "click-2"),
    )
    .await;
    assert_eq!(status, 200);
    let ghost_id = ghost["event_id"].as_str().unwrap().to_string();
    let entry = eventually(10, "the ghost click is handled", || async {
        let e = get_json(&t, &format!("/api/events/{ghost_id}")).await;
        (e["fate"]["state"] != "pending").then_some(e)
    })
    .await;
    assert_eq!(entry["fate"]["failures"][0]["bot"], "ghost");

    // A click on a message of another room is refused.
    let (status, _) = post_json(
        &t,
        "/chat/api/rooms/elsewhere/actions",
        &click("echo", "click-3"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_default_config_serves_the_chat() {
    let config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let t = TestPerch::start(&config).await;
    let html = client()
        .get(t.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<title>perch</title>"));
    say(&t, "general", "ann", "@help", "c-d1").await;
    let reply = reply_from(&t, "general", "help").await;
    assert!(reply["body"]["text"].as_str().unwrap().contains("@echo"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Issue 3's round trip: a bot's card with buttons in a room; a click by someone who may
/// not press gets a polite notice; the owner's click gets a notice and the card is
/// replaced in place, for everyone who reads the room.
#[tokio::test]
async fn a_click_on_a_reminder_card_updates_it_in_place() {
    let t = TestPerch::start(&tasks_config("")).await;
    let ok = remind_ann_to_call_the_supplier(&t).await;
    assert!(
        ok["body"]["text"]
            .as_str()
            .unwrap()
            .starts_with("OK: I'll remind ann"),
        "{ok}"
    );
    // The scheduler's tick, just after the due time.
    let slot = chrono::Utc::now() + chrono::Duration::minutes(121);
    t.journal()
        .accept(vec![tick("reminders", &slot.to_rfc3339())])
        .await
        .unwrap();
    let card = eventually(10, "the reminder card", || async {
        messages(&t, "general")
            .await
            .into_iter()
            .find(|m| m["body"]["type"] == "card")
    })
    .await;
    assert_eq!(
        card["body"]["card"]["header"]["title"],
        "Reminder: call the supplier"
    );
    assert_eq!(card["author"], "tasks");
    assert!(
        card["html"].as_str().unwrap().contains("data-action"),
        "buttons render"
    );
    let message_id = card["id"].as_str().unwrap().to_string();
    // The item id, from the Done button's action.
    let buttons = card["body"]["card"]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "buttons")
        .unwrap();
    let item = buttons["buttons"][0]["action"]["args"]["id"].clone();
    let press = |who: &str, client_id: &str| json!({ "message_id": message_id, "action": { "bot": "tasks", "action": "done", "args": { "id": item } }, "author": who, "client_id": client_id });

    let (status, bob) =
        post_json(&t, "/chat/api/rooms/general/actions", &press("bob", "k-1")).await;
    assert_eq!(status, 200, "{bob}");
    assert_eq!(bob["toast"]["kind"], "warning");
    assert_eq!(
        bob["toast"]["text"],
        "Sorry, only ann (the owner) can do that."
    );
    assert_eq!(bob["card_updated"], false);

    let (status, ann) =
        post_json(&t, "/chat/api/rooms/general/actions", &press("ann", "k-2")).await;
    assert_eq!(status, 200, "{ann}");
    assert_eq!(
        ann["toast"],
        json!({ "kind": "success", "text": "Done. No more reminders." })
    );
    assert_eq!(ann["card_updated"], true);
    let updated = eventually(10, "the card is replaced", || async {
        messages(&t, "general").await.into_iter().find(|m| {
            m["id"] == message_id
                && m["body"]["card"]["header"]["title"] == "Done: call the supplier"
        })
    })
    .await;
    assert!(
        !updated["html"].as_str().unwrap().contains("data-action"),
        "no buttons on a done card"
    );
    assert_eq!(
        messages(&t, "general")
            .await
            .iter()
            .filter(|m| m["body"]["type"] == "card")
            .count(),
        1,
        "replaced in place, not sent again"
    );
}

/// Done on one copy of a reminder card (here by command) turns every copy into a done
/// card: the reminder and the escalation copy (both sent to this room here).
#[tokio::test]
async fn done_updates_every_copy_of_the_card() {
    let t = TestPerch::start(&tasks_config(
        "escalate_after_days = 1\nescalate_to = \"general\"",
    ))
    .await;
    let ok = remind_ann_to_call_the_supplier(&t).await;
    let text = ok["body"]["text"].as_str().unwrap().to_string();
    let id = text
        .rsplit('`')
        .nth(1)
        .expect("the item id in backticks")
        .to_string();
    let slot = chrono::Utc::now() + chrono::Duration::days(3);
    t.journal()
        .accept(vec![tick("reminders", &slot.to_rfc3339())])
        .await
        .unwrap();
    let titles = || async {
        let mut titles: Vec<String> = messages(&t, "general")
            .await
            .into_iter()
            .filter(|m| m["body"]["type"] == "card")
            .map(|m| {
                m["body"]["card"]["header"]["title"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        titles.sort();
        titles
    };
    let before = eventually(10, "the reminder and its escalation copy", || async {
        Some(titles().await).filter(|t| t.len() == 2)
    })
    .await;
    assert_eq!(
        before,
        [
            "Escalated: call the supplier",
            "Reminder: call the supplier"
        ]
    );

    say(&t, "general", "ann", &format!("@tasks done {id}"), "c-2").await;
    eventually(10, "every copy shows done", || async {
        Some(titles().await).filter(|t| t.iter().all(|t| t == "Done: call the supplier"))
    })
    .await;
    assert_eq!(
        titles().await.len(),
        2,
        "updated in place, nothing sent again"
    );
}
