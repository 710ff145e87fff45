//! Who is who (`crate::auth`) on a real server, by trying to break it: forged authors,
//! forged button values, reading someone else's direct room (API and SSE), CSRF
//! without the token, a session after sign-out, a proxy header from a stranger, and
//! the roles on `/api` and `/metrics`, throttled sign-ins, swept sessions, and Feishu
//! login against a strict fake (a wrong `state`, a replayed code, a wrong secret).

use perch::action::{MessageBody, Operation, Target};
use perch::testing::fake_feishu;
use perch::testing::*;
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::Duration;

const ANN_PASSWORD: &str = "ann-password-1";
const BOB_PASSWORD: &str = "bob-password-2";

/// Hashing is slow on purpose: once per test binary.
fn hashes() -> &'static (String, String) {
    static H: OnceLock<(String, String)> = OnceLock::new();
    H.get_or_init(|| {
        (
            perch::testing::hash_password(ANN_PASSWORD).unwrap(),
            perch::testing::hash_password(BOB_PASSWORD).unwrap(),
        )
    })
}

/// Two local accounts: ann (admin) and bob (member), the web chat and echo.
fn local_config(extra_server: &str) -> String {
    let (ann, bob) = hashes();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra_server}

[auth]
mode = "local"
[auth.users.ann]
password_hash = "{ann}"
role = "admin"
[auth.users.bob]
password_hash = "{bob}"

[connectors.web]
kind = "local"

[bots.echo]
kind = "echo"

[[routes]]
connector = "web"
mention = "echo"
bots = ["echo"]
"#
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A signed-in browser: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn sign_in(t: &TestPerch, name: &str, password: &str) -> Session {
    let resp = client()
        .post(t.url("/auth/login"))
        .json(&json!({ "name": name, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "sign-in of {name}");
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie} lacks {attr}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    Session {
        cookie,
        csrf: body["csrf"].as_str().unwrap().to_string(),
    }
}

impl Session {
    async fn get(&self, t: &TestPerch, path: &str) -> (u16, Value) {
        let resp = client()
            .get(t.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// A POST with the cookie and, if `csrf` is given, that CSRF header.
    async fn post_with(
        &self,
        t: &TestPerch,
        path: &str,
        body: &Value,
        csrf: Option<&str>,
    ) -> (u16, Value) {
        let mut req = client()
            .post(t.url(path))
            .header("cookie", &self.cookie)
            .json(body);
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        let resp = req.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    async fn post(&self, t: &TestPerch, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(t, path, body, Some(&self.csrf.clone()))
            .await
    }

    /// Post `text` in `room` (a path segment: `general`, `%40ann`) as this session.
    async fn post_message(
        &self,
        t: &TestPerch,
        room: &str,
        text: &str,
        client_id: &str,
    ) -> (u16, Value) {
        let body = json!({ "text": text, "client_id": client_id });
        self.post(t, &format!("/chat/api/rooms/{room}/messages"), &body)
            .await
    }
}

async fn journal_len(t: &TestPerch) -> usize {
    let resp = client()
        .get(t.url("/api/events?limit=1000"))
        .header("authorization", "Bearer test-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["events"].as_array().map(Vec::len).unwrap_or(0)
}

async fn history(t: &TestPerch, s: &Session, room: &str) -> Vec<Value> {
    let (status, v) = s.get(t, &format!("/chat/api/rooms/{room}/messages")).await;
    assert_eq!(status, 200, "{v}");
    v["messages"].as_array().cloned().unwrap_or_default()
}

fn web(t: &TestPerch) -> perch::connectors::SharedConnector {
    t.connector("web")
}

const TOKEN: &str = r#"admin_token = "test-admin-token""#;

#[tokio::test]
async fn sign_in_refuses_wrong_passwords_and_strangers_alike() {
    let t = TestPerch::start(&local_config(TOKEN)).await;
    for (name, pw) in [("ann", "nope-nope-nope"), ("zed", ANN_PASSWORD)] {
        let resp = client()
            .post(t.url("/auth/login"))
            .json(&json!({ "name": name, "password": pw }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get("set-cookie").is_none());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "wrong name or password");
    }
    // Not signed in: the page sends you to sign in, the chat API refuses.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(t.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login?next=/");
    let resp = client()
        .get(t.url("/chat/api/rooms/general/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let (status, me) = ann.get(&t, "/auth/session").await;
    assert_eq!(status, 200);
    assert_eq!(
        (me["user"].clone(), me["role"].clone()),
        (json!("ann"), json!("admin"))
    );
    assert_eq!(me["csrf"], ann.csrf.as_str());
}

#[tokio::test]
async fn the_server_decides_the_author() {
    let t = TestPerch::start(&local_config(TOKEN)).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let before = journal_len(&t).await;
    let (status, body) = bob
        .post(
            &t,
            "/chat/api/rooms/general/messages",
            &json!({ "author": "ann", "text": "I am ann, honest", "client_id": "forged-1" }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        "author is decided by your sign-in: you are `bob`, not `ann`"
    );
    assert_eq!(journal_len(&t).await, before, "nothing journaled");
    assert!(history(&t, &bob, "general").await.is_empty());

    // Without an author, the post is bob's.
    let (status, body) = bob.post_message(&t, "general", "hello", "real-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["author"], "bob");
    assert_eq!(journal_len(&t).await, before + 1);
}

/// A card with one Done button for reminder 7, posted by a bot in `room`.
async fn card_with_done_button(t: &TestPerch, room: Target) -> String {
    let card = json!({ "header": { "title": "Reminder" }, "elements": [
        { "type": "buttons", "buttons": [
            { "label": "Done", "action": { "bot": "echo", "action": "done", "args": { "id": 7 } } }
        ] }
    ] });
    web(t)
        .execute(
            &Operation::Send {
                to: room,
                body: MessageBody::Card { card },
                reply_to: None,
            },
            "k/echo/0001",
        )
        .await
        .unwrap()
        .id
        .unwrap()
}

#[tokio::test]
async fn a_forged_button_value_is_refused() {
    let t = TestPerch::start(&local_config(TOKEN)).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let message_id = card_with_done_button(&t, Target::chat("general")).await;
    let before = journal_len(&t).await;
    let click = |args: Value, bot: &str, client_id: &str| json!({ "message_id": message_id, "action": { "bot": bot, "action": "done", "args": args }, "client_id": client_id });
    for forged in [
        click(json!({ "id": 8 }), "echo", "f-1"),
        click(json!({ "id": 7, "owner": "bob" }), "echo", "f-2"),
        click(json!({ "id": 7 }), "reminders", "f-3"),
    ] {
        let (status, body) = bob
            .post(&t, "/chat/api/rooms/general/actions", &forged)
            .await;
        assert_eq!(status, 400, "{forged}: {body}");
        assert_eq!(
            body["error"],
            format!("message `{message_id}` has no button with that action")
        );
    }
    assert_eq!(journal_len(&t).await, before, "no forged click journaled");

    // The real button, pressed by bob: the event says bob, whatever the browser claims.
    let (status, body) = bob
        .post(
            &t,
            "/chat/api/rooms/general/actions",
            &click(json!({ "id": 7 }), "echo", "real-1"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event_id = body["event_id"].as_str().unwrap();
    let resp = client()
        .get(t.url(&format!("/api/events/{event_id}")))
        .header("authorization", "Bearer test-admin-token")
        .send()
        .await
        .unwrap();
    let entry: Value = resp.json().await.unwrap();
    assert_eq!(entry["event"]["sender"]["id"], "bob");
    // And a click "as ann" is refused like a forged post.
    let mut as_ann = click(json!({ "id": 7 }), "echo", "f-4");
    as_ann["author"] = json!("ann");
    let (status, _) = bob
        .post(&t, "/chat/api/rooms/general/actions", &as_ann)
        .await;
    assert_eq!(status, 403);
}

/// An SSE connection with a cookie, read chunk by chunk.
struct Stream {
    resp: reqwest::Response,
    text: String,
}

impl Stream {
    async fn open(t: &TestPerch, s: &Session) -> Stream {
        let resp = client()
            .get(t.url("/chat/api/stream"))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut st = Stream {
            resp,
            text: String::new(),
        };
        st.until("event: hello").await;
        st
    }

    /// Read until `needle` has arrived; everything read so far stays in `text`.
    async fn until(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.text.contains(needle) {
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no `{needle}` on the stream; got {}", self.text))
                .unwrap()
                .unwrap_or_else(|| panic!("stream ended before `{needle}`"));
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn direct_rooms_are_their_members_only_in_the_api_and_over_sse() {
    let t = TestPerch::start(&local_config(TOKEN)).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let mut ann_stream = Stream::open(&t, &ann).await;
    let mut bob_stream = Stream::open(&t, &bob).await;

    // A bot writes to ann directly (room `@ann`), then to everyone.
    let dm = web(&t)
        .execute(
            &Operation::Send {
                to: Target::Person {
                    id: "ann".into(),
                    id_type: None,
                },
                body: MessageBody::text("ann-secret-figure"),
                reply_to: None,
            },
            "k/echo/dm",
        )
        .await;
    assert!(dm.is_ok(), "{dm:?}");
    web(&t)
        .execute(
            &Operation::Send {
                to: Target::chat("general"),
                body: MessageBody::text("public-news"),
                reply_to: None,
            },
            "k/echo/pub",
        )
        .await
        .unwrap();

    ann_stream.until("public-news").await;
    assert!(ann_stream.text.contains("ann-secret-figure"));
    // Broadcasts keep their order: bob has seen everything sent before public-news.
    bob_stream.until("public-news").await;
    assert!(
        !bob_stream.text.contains("ann-secret-figure") && !bob_stream.text.contains("@ann"),
        "bob heard of ann's direct room: {}",
        bob_stream.text
    );

    // The API: ann reads it, bob is refused, and bob's room list does not show it.
    assert_eq!(history(&t, &ann, "%40ann").await.len(), 1);
    let (status, body) = bob.get(&t, "/chat/api/rooms/%40ann/messages").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "room `@ann` is open to its members only");
    let (status, body) = bob
        .post_message(&t, "%40ann", "let me in", "bob-in-1")
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, rooms) = bob.get(&t, "/chat/api/rooms?me=ann").await;
    let ids: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(!ids.contains(&"@ann"), "{ids:?}");
    assert_eq!(
        history(&t, &ann, "%40ann").await.len(),
        1,
        "bob wrote nothing there"
    );

    // A private group: only its creator, until members are added.
    let (status, room) = ann
        .post(
            &t,
            "/chat/api/rooms",
            &json!({ "name": "Board", "private": true }),
        )
        .await;
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["members"], json!(["ann"]));
    let (status, _) = bob.get(&t, "/chat/api/rooms/board/messages").await;
    assert_eq!(status, 403);
    // Asking for a private room's name does not hand it over either.
    let (status, other) = bob
        .post(&t, "/chat/api/rooms", &json!({ "name": "Board" }))
        .await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["id"], "board");
}

#[tokio::test]
async fn state_changes_without_the_csrf_token_are_refused() {
    let t = TestPerch::start(&local_config(TOKEN)).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let before = journal_len(&t).await;
    let post = json!({ "text": "hi", "client_id": "csrf-1" });
    for csrf in [None, Some("wrong-token"), Some("")] {
        let (status, body) = ann
            .post_with(&t, "/chat/api/rooms/general/messages", &post, csrf)
            .await;
        assert_eq!(status, 403, "{csrf:?}: {body}");
        assert_eq!(
            body["error"],
            "missing or wrong CSRF token (X-CSRF-Token; reload the page)"
        );
    }
    // Another session's token does not fit this session.
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let (status, _) = ann
        .post_with(
            &t,
            "/chat/api/rooms/general/messages",
            &post,
            Some(&bob.csrf),
        )
        .await;
    assert_eq!(status, 403);
    // Also on the admin API and on sign-out.
    let (status, _) = ann
        .post_with(&t, "/api/dead-letters/replay?key=x", &json!({}), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = ann.post_with(&t, "/auth/logout", &json!({}), None).await;
    assert_eq!(status, 403);
    assert_eq!(journal_len(&t).await, before);
    assert!(history(&t, &ann, "general").await.is_empty());
    // With the token it goes through (and the session is still alive).
    let (status, _) = ann
        .post(&t, "/chat/api/rooms/general/messages", &post)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_session_is_dead_after_sign_out_also_after_a_restart() {
    let mut t = TestPerch::start(&local_config(TOKEN)).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    assert_eq!(bob.get(&t, "/chat/api/rooms").await.0, 200);
    // Sessions survive a restart…
    t.restart().await;
    assert_eq!(bob.get(&t, "/chat/api/rooms").await.0, 200);
    let (status, _) = bob.post(&t, "/auth/logout", &json!({})).await;
    assert_eq!(status, 200);
    // …a signed-out one does not come back, with or without a restart.
    assert_eq!(bob.get(&t, "/chat/api/rooms").await.0, 401);
    assert_eq!(bob.get(&t, "/auth/session").await.0, 401);
    let (status, _) = bob.post_message(&t, "general", "ghost", "after-out").await;
    assert_eq!(status, 401);
    t.restart().await;
    assert_eq!(bob.get(&t, "/chat/api/rooms").await.0, 401);
}

#[tokio::test]
async fn roles_guard_the_admin_api_and_the_token_still_works() {
    let t = TestPerch::start(&local_config(&format!(
        "{TOKEN}\nmetrics_token = \"metrics-token-1\""
    )))
    .await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    assert_eq!(ann.get(&t, "/api/status").await.0, 200);
    let (status, body) = bob.get(&t, "/api/status").await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "`bob` is not an admin");
    assert_eq!(
        client()
            .get(t.url("/api/status"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(journal_len(&t).await, 0, "the token works for scripts");

    let metrics = |token: Option<&'static str>| {
        let mut req = client().get(t.url("/metrics"));
        if let Some(tok) = token {
            req = req.header("authorization", format!("Bearer {tok}"));
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(metrics(None).await, 401);
    assert_eq!(metrics(Some("wrong")).await, 401);
    assert_eq!(metrics(Some("metrics-token-1")).await, 200);
}

#[tokio::test]
async fn the_console_is_for_admins() {
    let t = TestPerch::start(&local_config(TOKEN)).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects.get(t.url("/console")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login?next=/console");
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let (status, body) = bob.get(&t, "/console").await;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("`bob` is not an admin"))
    );
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let page = client()
        .get(t.url("/console"))
        .header("cookie", &ann.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("perch console"));
    // What the console's event view calls, as ann.
    assert_eq!(ann.get(&t, "/api/events?limit=200").await.0, 200);
}

/// Post `text` in `general` as the session's person.
async fn say(t: &TestPerch, s: &Session, text: &str, client_id: &str) {
    let (status, b) = s.post_message(t, "general", text, client_id).await;
    assert_eq!(status, 200, "{b}");
}

const PERMISSIONS: &str = r#"
[auth.groups]
ops = ["ann"]

[[permissions]]
bot = "echo"
command = "deploy"
allow = ["group:ops"]

[[permissions]]
bot = "echo"
action = "done"
allow = ["ann"]
"#;

#[tokio::test]
async fn permissions_refuse_commands_and_buttons_in_one_line() {
    let t = TestPerch::start(&format!("{}{PERMISSIONS}", local_config(TOKEN))).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    say(&t, &bob, "@echo deploy now", "b-1").await;
    let refusal = eventually(10, "bob's refusal", || async {
        history(&t, &bob, "general")
            .await
            .into_iter()
            .find(|m| m["from_bot"] == true)
    })
    .await;
    assert_eq!(
        refusal["body"]["text"],
        "Sorry, you may not run `deploy` of @echo."
    );
    // ann is in `ops`: echo answers her.
    say(&t, &ann, "@echo deploy now", "a-1").await;
    eventually(10, "echo answers ann", || async {
        let bot_msgs: Vec<Value> = history(&t, &ann, "general")
            .await
            .into_iter()
            .filter(|m| m["from_bot"] == true)
            .collect();
        (bot_msgs.len() == 2).then_some(())
    })
    .await;
    let all = history(&t, &ann, "general").await;
    assert_eq!(
        all.iter().filter(|m| m["from_bot"] == true).count(),
        2,
        "one refusal, one echo: {all:?}"
    );
    // Other commands are not guarded.
    say(&t, &bob, "@echo hello", "b-2").await;

    // The Done button: bob gets a toast and nothing else; ann may press it.
    let message_id = card_with_done_button(&t, Target::chat("general")).await;
    let click = |id: &str| json!({ "message_id": message_id, "action": { "bot": "echo", "action": "done", "args": { "id": 7 } }, "client_id": id });
    let (status, body) = bob
        .post(&t, "/chat/api/rooms/general/actions", &click("bc-1"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["toast"]["text"],
        "Sorry, you may not press this button."
    );
    let (_, body) = ann
        .post(&t, "/chat/api/rooms/general/actions", &click("ac-1"))
        .await;
    assert_ne!(
        body["toast"]["text"],
        "Sorry, you may not press this button."
    );

    // A rule naming an unknown group is refused at start.
    let err = perch::config::Config::from_str(
        &format!(
            "{}{}",
            local_config(TOKEN),
            PERMISSIONS.replace("group:ops", "group:nope")
        ),
        std::path::Path::new("perch.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("names group `nope`, which is not in [auth.groups]"),
        "{err}"
    );
}

fn proxy_config(proxies: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[auth]
mode = "proxy"
proxy_addresses = [{proxies}]
[auth.users.ann]
role = "admin"

[connectors.web]
kind = "local"
"#
    )
}

#[tokio::test]
async fn the_proxy_header_counts_only_from_the_proxy() {
    // perch's tests connect from 127.0.0.1, which is not the configured proxy here.
    let t = TestPerch::start(&proxy_config(r#""10.9.8.7""#)).await;
    for path in ["/auth/session", "/chat/api/rooms", "/api/status"] {
        let resp = client()
            .get(t.url(path))
            .header("x-forwarded-user", "ann")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }

    let t = TestPerch::start(&proxy_config(r#""127.0.0.1""#)).await;
    let resp = client()
        .get(t.url("/auth/session"))
        .header("x-forwarded-user", "ann")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let me: Value = resp.json().await.unwrap();
    assert_eq!(
        (me["user"].clone(), me["role"].clone()),
        (json!("ann"), json!("admin"))
    );
    let csrf = me["csrf"].as_str().unwrap();
    let post = |user: &'static str| {
        client()
            .post(t.url("/chat/api/rooms/general/messages"))
            .header("x-forwarded-user", user)
            .header("cookie", &cookie)
            .header("x-csrf-token", csrf)
            .json(&json!({ "text": "via proxy", "client_id": format!("p-{user}") }))
            .send()
    };
    let resp = post("ann").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["author"], "ann");
    // ann's session (and CSRF token) do not carry over to whoever the proxy names next.
    assert_eq!(post("bob").await.unwrap().status(), 403);
}

#[test]
fn dev_mode_is_refused_off_loopback() {
    let err = perch::config::Config::from_str(
        "[server]\nlisten = \"0.0.0.0:8080\"\nadmin_token = \"t0ken-1234\"\n[auth]\nmode = \"dev\"\n[connectors.web]\nkind = \"local\"\n",
        std::path::Path::new("perch.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("perch.toml:5:") && err.contains("loopback"),
        "{err}"
    );
    let err = perch::config::Config::from_str(
        "[auth]\nmode = \"local\"\n[auth.users.ann]\npassword_hash = \"plain-text\"\n",
        std::path::Path::new("perch.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a PHC string"), "{err}");
}

/// A `reminders` bot `tasks` on the web chat, and carol: an admin who does not own
/// ann's items (her password is bob's).
fn tasks_config() -> String {
    let (_, bob_hash) = hashes();
    format!(
        r#"{}
[auth.users.carol]
password_hash = "{bob_hash}"
role = "admin"

[bots.tasks]
kind = "reminders"
timezone = "UTC"

[[routes]]
connector = "web"
mention = "tasks"
bots = ["tasks"]
"#,
        local_config(TOKEN)
    )
}

/// The open items of `tasks` as the console reads them, as `s`.
async fn open_items(t: &TestPerch, s: &Session) -> Vec<Value> {
    let (status, body) = s.get(t, "/api/bots/tasks/items").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// ann asks `tasks` for a reminder in `general` and waits for it among her open
/// items: the items, and the path where the first one's buttons are pressed.
async fn ann_reminds_herself(t: &TestPerch, ann: &Session) -> (Vec<Value>, String) {
    say(
        t,
        ann,
        "@tasks remind me in 2 hours call the supplier",
        "a-1",
    )
    .await;
    let items = eventually(10, "ann's item on the Bots page", || async {
        let items = open_items(t, ann).await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    let id = items[0]["id"].as_str().unwrap_or_default().to_string();
    (items, format!("/api/bots/tasks/items/{id}/press"))
}

/// The Bots page's Done goes the way a card click goes: as the signed-in person, past
/// the owner rule, with CSRF, journaled once however often it is pressed.
#[tokio::test]
async fn done_from_the_bots_page_is_a_click_by_the_signed_in_owner_only() {
    let t = TestPerch::start(&tasks_config()).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let carol = sign_in(&t, "carol", BOB_PASSWORD).await;
    let (items, press_path) = ann_reminds_herself(&t, &ann).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item["owner"], "ann");
    assert_eq!(item["title"], "call the supplier");
    assert_eq!(item["actions"], json!(["done", "snooze"]));
    assert!(
        item["due"].is_string() && item["next_step"]["at"].is_string(),
        "{item}"
    );
    let id = item["id"].as_str().unwrap().to_string();
    let done = |client_id: &str| json!({ "action": "done", "client_id": client_id });

    // A member cannot reach the page's calls at all.
    assert_eq!(bob.get(&t, "/api/bots/tasks/items").await.0, 403);
    assert_eq!(bob.post(&t, &press_path, &done("b-1")).await.0, 403);
    // Without the CSRF token, nothing happens.
    let before = journal_len(&t).await;
    let (status, _) = ann.post_with(&t, &press_path, &done("a-x"), None).await;
    assert_eq!(status, 403);
    // Pressing as someone else, a button the item has not, an item that is not there.
    let mut forged = done("a-y");
    forged["as"] = json!("carol");
    let (status, body) = ann.post(&t, &press_path, &forged).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = ann
        .post(
            &t,
            &press_path,
            &json!({ "action": "delete", "client_id": "a-z" }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        format!("item `{id}` has no `delete` button (it has: done, snooze)")
    );
    let (status, _) = ann
        .post(&t, "/api/bots/tasks/items/nope/press", &done("a-w"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(journal_len(&t).await, before, "no refused press journaled");

    // carol is an admin but not the owner: the bot's owner rule refuses her, as on a card.
    let (status, body) = carol.post(&t, &press_path, &done("c-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["toast"]["text"],
        "Sorry, only ann (the owner) can do that."
    );
    assert_eq!(open_items(&t, &ann).await.len(), 1, "still open");

    // ann presses Done twice (a double click): one event, one Done.
    let (status, first) = ann.post(&t, &press_path, &done("a-1")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["toast"]["text"], "Done. No more reminders.");
    assert_eq!(first["duplicate"], false);
    let (_, again) = ann.post(&t, &press_path, &done("a-1")).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(
        journal_len(&t).await,
        before + 2,
        "carol's press and ann's one"
    );
    assert!(open_items(&t, &ann).await.is_empty());
    let (_, entry) = ann
        .get(
            &t,
            &format!("/api/events/{}", first["event_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(entry["event"]["sender"]["id"], "ann");
    assert_eq!(entry["event"]["connector"], "console");
    assert_eq!(entry["event"]["kind"], "card_action");
    // Done is done: a later press finds no open item and changes nothing.
    let (status, _) = ann.post(&t, &press_path, &done("a-2")).await;
    assert_eq!(status, 404);

    // The card studio's test render is an admin's, with CSRF, too.
    let before = journal_len(&t).await;
    let send =
        json!({ "template": "welcome", "connector": "web", "chat": "general", "client_id": "s-1" });
    assert_eq!(
        ann.post_with(&t, "/api/cards/send", &send, None).await.0,
        403
    );
    assert_eq!(bob.post(&t, "/api/cards/send", &send).await.0, 403);
    assert_eq!(journal_len(&t).await, before);
    let (status, body) = ann.post(&t, "/api/cards/send", &send).await;
    assert_eq!(status, 200, "{body}");
    let (_, entry) = ann
        .get(
            &t,
            &format!("/api/events/{}", body["event_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(entry["event"]["sender"]["id"], "ann", "{entry}");
}

/// One sign-in attempt; the status, the `Retry-After` header and the body.
async fn attempt(t: &TestPerch, name: &str, password: &str) -> (u16, Option<String>, Value) {
    let resp = client()
        .post(t.url("/auth/login"))
        .json(&json!({ "name": name, "password": password }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn repeated_failed_sign_ins_are_refused_per_account_and_per_address() {
    let t = TestPerch::start(&local_config("")).await;
    // Five wrong passwords for ann: refused as wrong…
    for _ in 0..5 {
        assert_eq!(attempt(&t, "ann", "guess").await.0, 401);
    }
    // …then even the right one waits, with when to come back; no session is made.
    let (status, retry_after, body) = attempt(&t, "ann", ANN_PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("too many sign-in attempts for this account; try again in "),
        "{error}"
    );
    let wait: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another account from the same address is not locked by ann's.
    sign_in(&t, "bob", BOB_PASSWORD).await;

    // One address trying many names is stopped by the per-address allowance.
    let t = TestPerch::start(&local_config("").replace(
        "mode = \"local\"",
        "mode = \"local\"\nsign_in_attempts_per_address = 3",
    ))
    .await;
    for name in ["x1", "x2", "x3"] {
        assert_eq!(attempt(&t, name, "guess").await.0, 401);
    }
    let (status, _, body) = attempt(&t, "bob", BOB_PASSWORD).await;
    assert_eq!(status, 429);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("too many sign-in attempts from this address"),
        "{body}"
    );
}

#[tokio::test]
async fn expired_sessions_are_refused_and_swept_from_the_store() {
    let clock = perch::clock::ManualClock::new(chrono::Utc::now());
    let config = local_config("").replace(
        "mode = \"local\"",
        "mode = \"local\"\nsession_ttl = \"1m\"\nsweep_every = \"1s\"",
    );
    let dir = tempfile::tempdir().unwrap().keep();
    let t = TestPerch::start_in(&config, &dir, std::sync::Arc::new(clock.clone())).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let sessions = || async { t.store().kv_scan("auth", "session/").await.unwrap().len() };
    assert_eq!(sessions().await, 2);
    assert_eq!(bob.get(&t, "/auth/session").await.0, 200);
    clock.advance(chrono::Duration::minutes(2));
    // Expired: refused at once…
    assert_eq!(bob.get(&t, "/auth/session").await.0, 401);
    // …and ann's, never used again, is deleted by the sweeper.
    eventually(10, "the sweeper deletes expired sessions", || async {
        (sessions().await == 0).then_some(())
    })
    .await;
    assert_eq!(ann.get(&t, "/auth/session").await.0, 401);
}

/// perch in `feishu` mode on a known port, signing in against the fake.
async fn feishu_perch(
    fake: &fake_feishu::FakeFeishu,
    secret: &str,
    tenant: Option<&str>,
) -> TestPerch {
    let base = "https://perch.example.com";
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{TOKEN}\n{}\n[auth.users.ou_ann]\nrole = \"admin\"\n[connectors.web]\nkind = \"local\"\n",
        fake_feishu::login_config(&fake.base, secret, base, tenant)
    );
    TestPerch::start(&config).await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()["location"].to_str().unwrap().to_string()
}

/// The `name=value` of the cookie `name` among a response's `Set-Cookie`s.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_string())
        .find(|c| c.starts_with(&format!("{name}=")) && c.len() > name.len() + 1)
}

/// Start a sign-in at perch and let the fake's authorize page answer: the state cookie
/// and the callback URL Feishu sends the browser to.
async fn feishu_round(t: &TestPerch) -> (String, String) {
    let http = no_redirects();
    let resp = http
        .get(t.url("/auth/feishu/start?next=/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let state_cookie = set_cookie(&resp, "perch_oauth_state").expect("a state cookie");
    let authorize = location(&resp);
    let resp = http.get(&authorize).send().await.unwrap();
    assert_eq!(resp.status(), 302, "the fake's authorize page");
    // The configured redirect URI names perch's public address; the test server
    // listens on its own port, so the browser's next hop is re-aimed there.
    let back = location(&resp);
    let path = &back[back.find("/auth/feishu/callback").unwrap()..];
    (state_cookie, t.url(path))
}

/// The browser's hop back to perch's callback with the state cookie it was given.
async fn back_to_perch(
    http: &reqwest::Client,
    callback: &str,
    state_cookie: &str,
) -> reqwest::Response {
    http.get(callback)
        .header("cookie", state_cookie)
        .send()
        .await
        .unwrap()
}

/// The `code` query value of a callback URL.
fn code_of(callback: &str) -> &str {
    let after = callback
        .split("code=")
        .nth(1)
        .expect("a code in the callback");
    after.split('&').next().unwrap_or(after)
}

#[tokio::test]
async fn feishu_login_makes_the_open_id_the_person_and_refuses_forged_callbacks() {
    let fake = fake_feishu::FakeFeishu::start().await;
    fake.lock().oauth_person = Some(("ou_ann".into(), "Ann Li".into(), "tenant-1".into()));
    let t = feishu_perch(&fake, fake_feishu::APP_SECRET, Some("tenant-1")).await;
    let http = no_redirects();

    // The console sends a stranger to Feishu.
    let resp = http.get(t.url("/console")).send().await.unwrap();
    assert_eq!(location(&resp), "/login?next=/console");
    let resp = http
        .get(t.url("/login?next=/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(location(&resp), "/auth/feishu/start?next=%2Fconsole");

    // The real round: signed in as ann's open_id, an admin by config, back to /console.
    let (state_cookie, callback) = feishu_round(&t).await;
    assert!(
        callback.contains("code=") && callback.contains("state="),
        "{callback}"
    );
    let resp = back_to_perch(&http, &callback, &state_cookie).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(location(&resp), "/console");
    let session = set_cookie(&resp, SESSION).expect("a session cookie");
    let me: Value = client()
        .get(t.url("/auth/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["user"].clone(), me["role"].clone()),
        (json!("ou_ann"), json!("admin"))
    );

    // The same callback again (a replay): the state is used up; Feishu is not asked.
    let exchanges = fake.lock().oauth_exchanges.len();
    let resp = back_to_perch(&http, &callback, &state_cookie).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        "this sign-in link is unknown, used or expired (state); start again at /login"
    );
    // A wrong state, and a right state from another browser (no cookie): refused the
    // same way, and the code is not spent.
    let (state_cookie2, callback2) = feishu_round(&t).await;
    let forged = callback2.replace("state=", "state=x");
    assert_eq!(
        back_to_perch(&http, &forged, &state_cookie2).await.status(),
        400
    );
    let (_, callback3) = feishu_round(&t).await;
    assert_eq!(http.get(&callback3).send().await.unwrap().status(), 400);
    assert_eq!(
        fake.lock().oauth_exchanges.len(),
        exchanges,
        "no code exchanged"
    );

    // A fresh state with a code used before: Feishu refuses it, no session.
    let (state_cookie4, callback4) = feishu_round(&t).await;
    let old_code = code_of(&callback);
    let new_code = code_of(&callback4);
    let replayed = callback4.replace(new_code, old_code);
    let resp = back_to_perch(&http, &replayed, &state_cookie4).await;
    assert_eq!(resp.status(), 401);
    assert!(set_cookie(&resp, SESSION).is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        "Feishu refused the sign-in: the code is invalid, used or expired (code 20003)"
    );

    // Someone of another tenant is refused.
    fake.lock().oauth_person = Some(("ou_eve".into(), "Eve".into(), "tenant-2".into()));
    let (state_cookie5, callback5) = feishu_round(&t).await;
    let resp = back_to_perch(&http, &callback5, &state_cookie5).await;
    assert_eq!(resp.status(), 403);

    // A perch with the wrong app secret gets no session either, and says why.
    fake.lock().oauth_person = Some(("ou_ann".into(), "Ann Li".into(), "tenant-1".into()));
    let wrong = feishu_perch(&fake, "not-the-secret", None).await;
    let (state_cookie6, callback6) = feishu_round(&wrong).await;
    let resp = back_to_perch(&http, &callback6, &state_cookie6).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("client_id or client_secret is wrong"),
        "{body}"
    );
    assert!(
        fake.lock().refused.is_empty(),
        "perch's calls were well-formed: {:?}",
        fake.lock().refused
    );
}

const SESSION: &str = "perch_session";

/// A group `auto_group` makes in the web chat for named people is theirs only.
#[tokio::test]
async fn a_group_made_for_people_is_private_to_them() {
    let t = TestPerch::start(&local_config(TOKEN)).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let bob = sign_in(&t, "bob", BOB_PASSWORD).await;
    let spec = perch::action::ChatSpec {
        name: "【项目】Acme-P01".into(),
        members: vec!["ann".into(), "cy".into()],
        ..Default::default()
    };
    let made = web(&t)
        .execute(
            &Operation::CreateChat { spec },
            "0190aaaa-0000-7000-8000-000000000009/auto_group/0000",
        )
        .await
        .unwrap();
    let id = made.id.unwrap();
    let path = format!("/chat/api/rooms/{id}/messages");
    assert_eq!(ann.get(&t, &path).await.0, 200);
    assert_eq!(bob.get(&t, &path).await.0, 403);
    let (_, rooms) = bob.get(&t, "/chat/api/rooms").await;
    assert!(
        !rooms.to_string().contains("Acme-P01"),
        "bob does not see it listed: {rooms}"
    );
    let (status, _) = bob
        .post(
            &t,
            &path,
            &json!({ "text": "let me in", "client_id": "b-in" }),
        )
        .await;
    assert_eq!(status, 403);
}

/// The reminders' owner rule is one use of `[[permissions]]`: a rule for the bot's
/// Done replaces the default (the owner and the bot's `admins`).
#[tokio::test]
async fn the_owner_rule_is_a_permission_a_config_overrides() {
    let rule = |allow: &str| {
        format!(
            "{}\n[auth.groups]\nleads = [\"carol\"]\n\n[[permissions]]\nbot = \"tasks\"\naction = \"done\"\nallow = {allow}\n",
            tasks_config()
        )
    };
    // `owner` or a lead: carol, a lead, may press ann's Done now.
    let t = TestPerch::start(&rule(r#"["owner", "group:leads"]"#)).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let carol = sign_in(&t, "carol", BOB_PASSWORD).await;
    let (_, path) = ann_reminds_herself(&t, &ann).await;
    let (status, body) = carol
        .post(&t, &path, &json!({ "action": "done", "client_id": "c-1" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["toast"]["text"], "Done. No more reminders.");
    assert!(open_items(&t, &ann).await.is_empty());

    // Only carol: the owner herself is refused, by the rule, in one line.
    let t = TestPerch::start(&rule(r#"["carol"]"#)).await;
    let ann = sign_in(&t, "ann", ANN_PASSWORD).await;
    let (_, path) = ann_reminds_herself(&t, &ann).await;
    let (status, body) = ann
        .post(&t, &path, &json!({ "action": "done", "client_id": "a-2" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["toast"]["text"],
        "Sorry, you may not press this button."
    );
    assert_eq!(open_items(&t, &ann).await.len(), 1, "still open");
}
