//! The connector conformance suite (issue 19): one test body per check, run against
//! every connector kind, on the model of Vector's component compliance harness.
//!
//! Each platform is a `Platform` implementation: how to start its fake (the same strict
//! fakes the per-platform tests use) and a real perch pointed at it, and how to produce
//! each input as the platform would send it. The generic checks below take any
//! `Platform`; the `conformance!` macro turns each (check, platform) pair into its own
//! `#[tokio::test] fn <check>_<platform>()`, so a failure names both.
//!
//! Where a platform has no such thing (the web chat has no request signature, a webhook
//! has no handshake or mentions), the platform says so with a reason (`Na`) and the
//! check asserts exactly that, so a capability can neither appear nor vanish unnoticed.
//!
//! Matrix is not in the suite: its inbound side is `/sync` long-polling against a real
//! Synapse (tests/matrix.rs with tests/synapse), not signed webhooks, and starting
//! Synapse per check would cost minutes per test; tests/matrix.rs covers its checks.

use perch::testing::fake_feishu;
mod fake_slack;

use perch::action::{ChatSpec, MessageBody, Operation, Target};
use perch::connectors::{SendError, SharedConnector};
use perch::testing::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a platform has no such input or capability: asserted, never skipped.
type Na = &'static str;

/// An inbound HTTP request as a platform would send it to perch.
#[derive(Debug, Clone)]
struct Wire {
    /// `/hooks/<connector>[/<sub>]`, or the web chat's own API path.
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The inputs every chat platform can send.
#[derive(Debug, Clone, Copy)]
enum Input {
    /// A person @mentions the bot in a group chat.
    Mention,
    /// A person writes to the bot directly.
    Direct,
    /// A person presses a perch button on a card.
    Click,
}

/// What the neutral event decoded from an input must say.
struct Expected {
    kind: &'static str,
    chat: &'static str,
    chat_type: &'static str,
    sender: &'static str,
    /// A part of the text (platforms differ in how they strip the mention).
    text: Option<&'static str>,
    /// Id of the person mentioned (the bot), if any.
    mention: Option<&'static str>,
}

/// One outbound call the fake recorded, in the neutral terms the checks need.
#[derive(Debug, Clone)]
struct OutCall {
    at: Instant,
    /// The idempotency key the call carried (Feishu `uuid`, webhook `Idempotency-Key`).
    key: Option<String>,
    /// The call was a message creation (send or reply), not an update or chat call.
    creates_message: bool,
}

#[allow(async_fn_in_trait)]
trait Platform: Sized {
    /// The connector's name in the config (`/hooks/<name>`).
    const CONNECTOR: &'static str;
    async fn setup() -> Self;
    fn perch(&self) -> &TestPerch;

    /// `input`, correctly signed, stamped `ts` (Unix seconds), with delivery id `id`.
    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Wire, Na>;
    /// The signature headers of a request (removed to make it unsigned).
    fn signature_headers(&self) -> Result<&'static [&'static str], Na>;
    /// Whether a request stamped a day ago is refused (Na: the platform has no stamp).
    fn stamps_requests(&self) -> Result<(), Na>;
    /// The platform's URL handshake and the JSON answer it expects.
    fn handshake(&self) -> Result<(Wire, Value), Na>;
    fn expected(&self, input: Input) -> Result<Expected, Na>;

    /// Where outbound checks send, and a message there to reply to.
    fn chat(&self) -> String;
    fn message_to_reply_to(&self) -> String;
    /// Outbound calls the fake saw, in order.
    async fn out_calls(&self) -> Vec<OutCall>;
    /// Make the next outbound call answer the platform's rate-limit answer.
    fn rate_limit_next(&self, secs: u64) -> Result<(), Na>;
    /// Whether the platform takes an idempotency key (Na: it has none, and why).
    fn idempotency(&self) -> Result<(), Na>;
    /// Members that exist on the platform, for chat creation and invitations.
    fn members(&self) -> Vec<String>;
}

impl Wire {
    async fn post<P: Platform>(&self, p: &P) -> (u16, String) {
        let mut req = reqwest::Client::new()
            .post(p.perch().url(&self.path))
            .body(self.body.clone());
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("perch answers");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }
}

async fn journal(t: &TestPerch) -> Vec<Value> {
    let v: Value = reqwest::get(t.url("/api/events?limit=1000"))
        .await
        .expect("GET /api/events")
        .json()
        .await
        .expect("events JSON");
    v["events"].as_array().cloned().unwrap_or_default()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn connector<P: Platform>(p: &P) -> SharedConnector {
    p.perch().connector(P::CONNECTOR)
}

// ---------------------------------------------------------------------------------
// The checks.

/// A truncated, an unsigned, a tampered and a stale request each get a 4xx with a reason
/// and store nothing (unsigned and tampered where the platform signs, stale where it
/// stamps); the
/// same request, correctly signed and fresh, is then accepted (so the refusals were
/// about the signature, not something else).
async fn refuses_bad_requests<P: Platform>() {
    let p = P::setup().await;
    let good = p
        .inbound(Input::Mention, "ev-bad-1", now())
        .expect("every platform has an input");
    // A body cut short: refused everywhere, signed or not.
    let mut truncated = good.clone();
    truncated.body.truncate(good.body.len() / 2);
    let mut refused = vec![("truncated", truncated)];
    match p.signature_headers() {
        Ok(names) => {
            let mut unsigned = good.clone();
            unsigned
                .headers
                .retain(|(k, _)| !names.iter().any(|n| n.eq_ignore_ascii_case(k)));
            refused.push(("unsigned", unsigned));
            let mut tampered = good.clone();
            // Change one byte in the middle of the body; the signature stays.
            let mid = tampered.body.len() / 2;
            tampered.body[mid] = if tampered.body[mid] == b'A' {
                b'B'
            } else {
                b'A'
            };
            refused.push(("tampered", tampered));
        }
        Err(na) => assert!(!na.is_empty()),
    }
    if p.stamps_requests().is_ok() {
        let stale = p
            .inbound(Input::Mention, "ev-bad-1", now() - 86_400)
            .expect("a stamped input");
        refused.push(("stale", stale));
    }
    for (what, wire) in &refused {
        let (status, body) = wire.post(&p).await;
        assert!(
            (400..500).contains(&status),
            "{what} request answered {status}: {body}"
        );
        assert!(!body.is_empty(), "{what}: a reason is given");
    }
    assert!(journal(p.perch()).await.is_empty(), "nothing stored");
    let (status, body) = good.post(&p).await;
    assert_eq!(status, 200, "the good request: {body}");
    assert_eq!(journal(p.perch()).await.len(), 1);
}

async fn answers_the_handshake<P: Platform>() {
    let p = P::setup().await;
    let Ok((wire, answer)) = p.handshake() else {
        return;
    };
    let (status, body) = wire.post(&p).await;
    assert_eq!(status, 200, "{body}");
    let got: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(got, answer);
    assert!(
        journal(p.perch()).await.is_empty(),
        "a handshake is not an event"
    );
}

async fn decodes<P: Platform>(input: Input) {
    let p = P::setup().await;
    let e = match p.expected(input) {
        Ok(e) => e,
        Err(na) => {
            assert!(!na.is_empty());
            return;
        }
    };
    let wire = p
        .inbound(input, "ev-decode-1", now())
        .expect("a signed input");
    let (status, body) = wire.post(&p).await;
    assert_eq!(status, 200, "{body}");
    let events = eventually(10, "the event journaled", || {
        let t = p.perch();
        async move { Some(journal(t).await).filter(|v| !v.is_empty()) }
    })
    .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let ev = &events[0]["event"];
    assert_eq!(ev["connector"], P::CONNECTOR, "{ev:#}");
    assert_eq!(ev["kind"], e.kind, "{ev:#}");
    assert_eq!(ev["chat"]["id"], e.chat, "{ev:#}");
    assert_eq!(ev["chat"]["chat_type"], e.chat_type, "{ev:#}");
    assert_eq!(ev["sender"]["id"], e.sender, "{ev:#}");
    if let Some(text) = e.text {
        let got = ev["text"].as_str().unwrap_or_default();
        assert!(got.contains(text), "text {got:?} lacks {text:?}");
    }
    let mentions: Vec<&str> = ev["mentions"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["person"]["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    match e.mention {
        Some(id) => assert_eq!(mentions, [id], "{ev:#}"),
        None => assert!(mentions.is_empty(), "{ev:#}"),
    }
}

async fn dedupes_redelivery<P: Platform>() {
    let p = P::setup().await;
    let Ok(first) = p.inbound(Input::Mention, "ev-twice", now()) else {
        return;
    };
    // A redelivery is signed afresh (new timestamp, Feishu: new IV), same delivery id.
    let again = p
        .inbound(Input::Mention, "ev-twice", now())
        .expect("signed input");
    assert_eq!(first.post(&p).await.0, 200);
    assert_eq!(again.post(&p).await.0, 200);
    let other = p
        .inbound(Input::Mention, "ev-other", now())
        .expect("signed input");
    assert_eq!(other.post(&p).await.0, 200);
    assert_eq!(
        journal(p.perch()).await.len(),
        2,
        "the redelivery is one event"
    );
}

fn send(to: String, body: MessageBody, reply_to: Option<String>) -> Operation {
    Operation::Send {
        to: Target::chat(to),
        body,
        reply_to,
    }
}

fn neutral_card(title: &str) -> Value {
    json!({ "header": { "title": title }, "elements": [{ "type": "markdown", "text": "**hi**" }] })
}

/// Execute `op` once and check it made exactly one message-creating call.
async fn sends_one<P: Platform>(p: &P, op: Operation, key: &str) -> Option<String> {
    let before = p
        .out_calls()
        .await
        .iter()
        .filter(|c| c.creates_message)
        .count();
    let delivered = connector(p)
        .execute(&op, key)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", op.name()));
    let after = p
        .out_calls()
        .await
        .iter()
        .filter(|c| c.creates_message)
        .count();
    assert_eq!(after, before + 1, "one message created");
    delivered.id
}

async fn sends_text_markdown_and_card<P: Platform>() {
    let p = P::setup().await;
    sends_one(
        &p,
        send(p.chat(), MessageBody::text("plain"), None),
        "k-text",
    )
    .await;
    sends_one(
        &p,
        send(p.chat(), MessageBody::markdown("**md**"), None),
        "k-md",
    )
    .await;
    let card = MessageBody::Card {
        card: neutral_card("T"),
    };
    sends_one(&p, send(p.chat(), card, None), "k-card").await;
}

async fn replies_in_thread<P: Platform>() {
    let p = P::setup().await;
    let to = p.message_to_reply_to();
    let op = send(p.chat(), MessageBody::text("in thread"), Some(to));
    sends_one(&p, op, "k-reply").await;
}

async fn updates_a_card_in_place<P: Platform>() {
    let p = P::setup().await;
    let card = |t: &str| MessageBody::Card {
        card: neutral_card(t),
    };
    let id = sends_one(&p, send(p.chat(), card("before"), None), "k-card-1")
        .await
        .expect("the sent card's id");
    let creations = p
        .out_calls()
        .await
        .iter()
        .filter(|c| c.creates_message)
        .count();
    let update = Operation::Update {
        chat_id: Some(p.chat()),
        message_id: id,
        body: card("after"),
    };
    connector(&p)
        .execute(&update, "k-update-1")
        .await
        .expect("update");
    let calls = p.out_calls().await;
    assert_eq!(
        calls.iter().filter(|c| c.creates_message).count(),
        creations,
        "an update creates no new message"
    );
}

async fn creates_a_chat_and_adds_members<P: Platform>() {
    let p = P::setup().await;
    let members = p.members();
    let spec = ChatSpec {
        name: "conformance room".into(),
        members: members[..1].to_vec(),
        ..Default::default()
    };
    let created = connector(&p)
        .execute(&Operation::CreateChat { spec }, "k-create")
        .await
        .expect("create chat");
    let chat_id = created.id.expect("the new chat's id");
    let added = connector(&p)
        .execute(
            &Operation::AddMembers {
                chat_id,
                members: members[1..].to_vec(),
                member_id_type: None,
            },
            "k-add",
        )
        .await
        .expect("add members");
    // Chat platforms report who could not be added; a webhook sink reports nothing.
    if !added.detail.is_null() {
        assert_eq!(added.detail["not_added"], json!([]), "{:?}", added.detail);
    }
}

/// The platform's "too many requests" (429 + Retry-After, Feishu's reset header) is
/// reported as `RateLimited` with the wait; the next call waits it out and is made once.
async fn honours_the_rate_limit<P: Platform>() {
    let p = P::setup().await;
    if let Err(na) = p.rate_limit_next(1) {
        assert!(!na.is_empty());
        return;
    }
    let op = send(p.chat(), MessageBody::text("limited"), None);
    let c = connector(&p);
    match c.execute(&op, "k-429").await {
        Err(SendError::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    c.execute(&op, "k-429").await.expect("after the wait");
    let calls: Vec<OutCall> = p.out_calls().await;
    assert_eq!(calls.len(), 2, "one refused call, one retry: {calls:?}");
    let gap = calls[1].at - calls[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before the 1 s wait"
    );
}

/// The outbox key reaches the platform where it deduplicates; where it cannot, the
/// platform says why, and no call carries a stray key.
async fn sends_the_idempotency_key<P: Platform>() {
    let p = P::setup().await;
    let op = send(p.chat(), MessageBody::text("once"), None);
    connector(&p).execute(&op, "k-idem-1").await.expect("send");
    let calls = p.out_calls().await;
    match p.idempotency() {
        Ok(()) => {
            let key = calls[0].key.clone().expect("a key on the call");
            // A retry (same outbox key) carries the same platform key.
            connector(&p).execute(&op, "k-idem-1").await.expect("send");
            assert_eq!(p.out_calls().await.last().unwrap().key, Some(key));
        }
        Err(why) => {
            assert!(!why.is_empty());
            assert!(calls.iter().all(|c| c.key.is_none()), "{calls:?}");
        }
    }
}

/// Generate one `#[tokio::test]` per check for `$platform`, in module `$module`: the
/// test `feishu::dedupes_redelivery` is the check `dedupes_redelivery` on Feishu.
macro_rules! all_checks {
    ($module:ident, $platform:ty) => {
        mod $module {
            use super::*;
            #[tokio::test]
            async fn refuses_unsigned_tampered_and_stale() {
                refuses_bad_requests::<$platform>().await
            }
            #[tokio::test]
            async fn answers_the_handshake() {
                super::answers_the_handshake::<$platform>().await
            }
            #[tokio::test]
            async fn decodes_a_mention() {
                decodes::<$platform>(Input::Mention).await
            }
            #[tokio::test]
            async fn decodes_a_direct_message() {
                decodes::<$platform>(Input::Direct).await
            }
            #[tokio::test]
            async fn decodes_a_button_click() {
                decodes::<$platform>(Input::Click).await
            }
            #[tokio::test]
            async fn dedupes_redelivery() {
                super::dedupes_redelivery::<$platform>().await
            }
            #[tokio::test]
            async fn sends_text_markdown_and_card() {
                super::sends_text_markdown_and_card::<$platform>().await
            }
            #[tokio::test]
            async fn replies_in_thread() {
                super::replies_in_thread::<$platform>().await
            }
            #[tokio::test]
            async fn updates_a_card_in_place() {
                super::updates_a_card_in_place::<$platform>().await
            }
            #[tokio::test]
            async fn creates_a_chat_and_adds_members() {
                super::creates_a_chat_and_adds_members::<$platform>().await
            }
            #[tokio::test]
            async fn honours_the_rate_limit() {
                super::honours_the_rate_limit::<$platform>().await
            }
            #[tokio::test]
            async fn sends_the_idempotency_key() {
                super::sends_the_idempotency_key::<$platform>().await
            }
        }
    };
}

all_checks!(web_chat, WebChat);
all_checks!(feishu, Feishu);
all_checks!(slack, Slack);
all_checks!(webhook, Webhook);

// ---------------------------------------------------------------------------------
// The web chat (`kind = "local"`): perch is the platform. People post through its own
// API (`/chat/api/...`), behind perch's own login rather than a request signature.

struct WebChat {
    t: TestPerch,
    /// A card perch sent to `general` with an `echo` button (clicks must name one).
    card_id: String,
}

impl WebChat {
    fn post(path: &str, doc: Value) -> Wire {
        Wire {
            path: path.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: doc.to_string().into_bytes(),
        }
    }
}

impl Platform for WebChat {
    const CONNECTOR: &'static str = "web";

    async fn setup() -> Self {
        let t = TestPerch::start(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.web]\nkind = \"local\"\n\n[bots.echo]\nkind = \"echo\"\n",
        )
        .await;
        let card = json!({ "header": { "title": "Reminder" }, "elements": [
            { "type": "buttons", "buttons": [{ "label": "Done", "action": { "bot": "echo", "action": "done", "args": {} } }] }
        ] });
        let sent = t
            .connector("web")
            .execute(
                &send("general".into(), MessageBody::Card { card }, None),
                "k-setup-card",
            )
            .await
            .expect("the setup card");
        let card_id = sent.id.expect("a message id");
        // A person's direct room exists once perch has written to them (created on
        // demand); people then write there.
        t.connector("web")
            .execute(
                &Operation::Send {
                    to: Target::person("ann"),
                    body: MessageBody::text("hi ann"),
                    reply_to: None,
                },
                "k-setup-dm",
            )
            .await
            .expect("the setup direct message");
        WebChat { t, card_id }
    }

    fn perch(&self) -> &TestPerch {
        &self.t
    }

    fn inbound(&self, input: Input, id: &str, _ts: i64) -> Result<Wire, Na> {
        Ok(match input {
            Input::Mention => Self::post(
                "/chat/api/rooms/general/messages",
                json!({ "author": "ann", "text": "@echo hello", "client_id": id }),
            ),
            Input::Direct => Self::post(
                "/chat/api/rooms/%40ann/messages",
                json!({ "author": "ann", "text": "hello", "client_id": id }),
            ),
            Input::Click => Self::post(
                "/chat/api/rooms/general/actions",
                json!({ "message_id": self.card_id, "author": "ann", "client_id": id,
                        "action": { "bot": "echo", "action": "done", "args": {} } }),
            ),
        })
    }

    fn signature_headers(&self) -> Result<&'static [&'static str], Na> {
        Err(
            "the web chat is perch's own page: people are authenticated by its login \
             (`[auth]`), not by a signed request",
        )
    }

    fn stamps_requests(&self) -> Result<(), Na> {
        Err("the web chat's requests carry no timestamp; `client_id` dedupes resubmits")
    }

    fn handshake(&self) -> Result<(Wire, Value), Na> {
        Err("the web chat has no URL handshake")
    }

    fn expected(&self, input: Input) -> Result<Expected, Na> {
        Ok(match input {
            Input::Mention => Expected {
                kind: "message",
                chat: "general",
                chat_type: "group",
                sender: "ann",
                text: Some("hello"),
                mention: Some("echo"),
            },
            Input::Direct => Expected {
                kind: "message",
                chat: "@ann",
                chat_type: "direct",
                sender: "ann",
                text: Some("hello"),
                mention: None,
            },
            Input::Click => Expected {
                kind: "card_action",
                chat: "general",
                chat_type: "group",
                sender: "ann",
                text: None,
                mention: None,
            },
        })
    }

    fn chat(&self) -> String {
        "general".into()
    }

    fn message_to_reply_to(&self) -> String {
        self.card_id.clone()
    }

    async fn out_calls(&self) -> Vec<OutCall> {
        let v: Value = reqwest::get(self.t.url("/chat/api/rooms/general/messages"))
            .await
            .expect("GET messages")
            .json()
            .await
            .expect("messages JSON");
        // The web chat stores messages itself: each stored message is one creation.
        v["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|_| OutCall {
                        at: Instant::now(),
                        key: None,
                        creates_message: true,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn rate_limit_next(&self, _secs: u64) -> Result<(), Na> {
        Err("the web chat is perch's own store: there is no platform rate limit")
    }

    fn idempotency(&self) -> Result<(), Na> {
        Err(
            "the web chat is perch's own store: `Local::execute` keeps one message per \
             outbox key itself (tests/webchat.rs executing_one_key_twice_posts_one_message)",
        )
    }

    fn members(&self) -> Vec<String> {
        vec!["ann".into(), "bob".into()]
    }
}

// ---------------------------------------------------------------------------------
// Feishu: the app bot, encrypted and signed (tests/fake_feishu).

struct Feishu {
    fake: fake_feishu::FakeFeishu,
    t: TestPerch,
    sender: fake_feishu::EventSender,
}

impl Platform for Feishu {
    const CONNECTOR: &'static str = "feishu";

    async fn setup() -> Self {
        let fake = fake_feishu::FakeFeishu::start().await;
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n{}",
            fake_feishu::app_connector("feishu", &fake.base, true)
        );
        let t = TestPerch::start(&config).await;
        let c = t.connector("feishu");
        eventually(10, "bot open_id fetched", || {
            let c = c.clone();
            async move { c.describe().get("bot_open_id").cloned() }
        })
        .await;
        let sender = fake_feishu::EventSender::new(
            &t.url("/hooks/feishu"),
            fake_feishu::TOKEN,
            Some(fake_feishu::KEY),
        );
        fake.lock()
            .user_messages
            .insert("om_user_1".into(), "oc_team".into());
        Feishu { fake, t, sender }
    }

    fn perch(&self) -> &TestPerch {
        &self.t
    }

    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Wire, Na> {
        let doc = match input {
            Input::Mention => {
                self.sender
                    .text_message(&self.fake, id, "om_user_1", "oc_team", "hello", true)
            }
            Input::Direct => {
                let mut d = self.sender.text_message(
                    &self.fake, id, "om_user_2", "oc_p2p", "hello", false,
                );
                d["event"]["message"]["chat_type"] = json!("p2p");
                d
            }
            Input::Click => self.sender.envelope(
                "card.action.trigger",
                id,
                json!({
                    "operator": { "open_id": "ou_alice", "user_id": "alice", "union_id": "on_alice", "tenant_key": "tk" },
                    "token": "c-update", "host": "im_message",
                    "action": { "tag": "button", "value": { "perch": { "bot": "echo", "action": "done", "args": {} } } },
                    "context": { "open_message_id": "om_user_1", "open_chat_id": "oc_team" }
                }),
            ),
        };
        let sealed = self.sender.seal_at(&doc, ts);
        Ok(Wire {
            path: "/hooks/feishu".into(),
            headers: sealed.headers,
            body: sealed.body,
        })
    }

    fn signature_headers(&self) -> Result<&'static [&'static str], Na> {
        Ok(&["X-Lark-Signature"])
    }

    fn stamps_requests(&self) -> Result<(), Na> {
        Ok(())
    }

    fn handshake(&self) -> Result<(Wire, Value), Na> {
        let doc = json!({ "challenge": "c-123", "token": fake_feishu::TOKEN, "type": "url_verification" });
        let sealed = self.sender.seal(&doc);
        Ok((
            Wire {
                path: "/hooks/feishu".into(),
                headers: sealed.headers,
                body: sealed.body,
            },
            json!({ "challenge": "c-123" }),
        ))
    }

    fn expected(&self, input: Input) -> Result<Expected, Na> {
        Ok(match input {
            Input::Mention => Expected {
                kind: "message",
                chat: "oc_team",
                chat_type: "group",
                sender: "ou_alice",
                text: Some("hello"),
                mention: Some(fake_feishu::BOT_OPEN_ID),
            },
            Input::Direct => Expected {
                kind: "message",
                chat: "oc_p2p",
                chat_type: "direct",
                sender: "ou_alice",
                text: Some("hello"),
                mention: None,
            },
            Input::Click => Expected {
                kind: "card_action",
                chat: "oc_team",
                chat_type: "group",
                sender: "ou_alice",
                text: None,
                mention: None,
            },
        })
    }

    fn chat(&self) -> String {
        "oc_team".into()
    }

    fn message_to_reply_to(&self) -> String {
        "om_user_1".into()
    }

    async fn out_calls(&self) -> Vec<OutCall> {
        self.fake
            .lock()
            .calls
            .iter()
            .filter(|c| c.path.starts_with("/open-apis/im/"))
            .map(|c| OutCall {
                at: c.at,
                key: c.body["uuid"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| c.query.get("uuid").cloned()),
                creates_message: c.method == "POST"
                    && c.path.starts_with("/open-apis/im/v1/messages")
                    && c.fault.is_none(),
            })
            .collect()
    }

    fn rate_limit_next(&self, secs: u64) -> Result<(), Na> {
        self.fake
            .fail_next(1, fake_feishu::Fault::RateLimited { reset_secs: secs });
        Ok(())
    }

    fn idempotency(&self) -> Result<(), Na> {
        Ok(())
    }

    fn members(&self) -> Vec<String> {
        vec!["ou_alice".into(), "ou_bob".into()]
    }
}

// ---------------------------------------------------------------------------------
// Slack: Events API and interactivity, signed with the signing secret
// (tests/fake_slack).

struct Slack {
    fake: fake_slack::FakeSlack,
    t: TestPerch,
    sender: fake_slack::EventSender,
}

impl Platform for Slack {
    const CONNECTOR: &'static str = "slack";

    async fn setup() -> Self {
        let fake = fake_slack::FakeSlack::start().await;
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.slack]\nkind = \"slack\"\nbot_token = \"{}\"\nsigning_secret = \"{}\"\nbase_url = \"{}\"\nchat_rate_per_second = 20\n",
            fake_slack::BOT_TOKEN,
            fake_slack::SIGNING_SECRET,
            fake.base
        );
        let t = TestPerch::start(&config).await;
        let sender =
            fake_slack::EventSender::new(&t.url("/hooks/slack"), fake_slack::SIGNING_SECRET);
        fake.add_channel("C_TEAM", &["U_ALICE"]);
        fake.lock()
            .user_messages
            .push(("C_TEAM".into(), "1800000000.000100".into()));
        Slack { fake, t, sender }
    }

    fn perch(&self) -> &TestPerch {
        &self.t
    }

    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Wire, Na> {
        use fake_slack::EventSender as E;
        let (sub, d) = match input {
            Input::Mention => {
                let doc = E::mention(&self.fake, id, "C_TEAM", "1800000000.000100", "hello");
                (
                    "",
                    self.sender
                        .sign_at(doc.to_string().into_bytes(), "application/json", ts),
                )
            }
            Input::Direct => {
                let doc = E::direct(&self.fake, id, "U_ALICE", "1800000000.000200", "hello");
                (
                    "",
                    self.sender
                        .sign_at(doc.to_string().into_bytes(), "application/json", ts),
                )
            }
            Input::Click => {
                let button = json!({ "action_id": "done", "text": { "type": "plain_text", "text": "Done" },
                                     "value": "{\"bot\":\"echo\",\"action\":\"done\",\"args\":{}}" });
                let click = E::click("U_ALICE", "C_TEAM", "1800000000.000100", &button, id);
                let form = self.sender.form(&click);
                let body = form.body.clone();
                (
                    "/interactive",
                    self.sender
                        .sign_at(body, "application/x-www-form-urlencoded", ts),
                )
            }
        };
        Ok(Wire {
            path: format!("/hooks/slack{sub}"),
            headers: d.headers,
            body: d.body,
        })
    }

    fn signature_headers(&self) -> Result<&'static [&'static str], Na> {
        Ok(&["X-Slack-Signature"])
    }

    fn stamps_requests(&self) -> Result<(), Na> {
        Ok(())
    }

    fn handshake(&self) -> Result<(Wire, Value), Na> {
        let doc = json!({ "token": "legacy", "challenge": "c-123", "type": "url_verification" });
        let d = self.sender.json(&doc);
        Ok((
            Wire {
                path: "/hooks/slack".into(),
                headers: d.headers,
                body: d.body,
            },
            json!({ "challenge": "c-123" }),
        ))
    }

    fn expected(&self, input: Input) -> Result<Expected, Na> {
        Ok(match input {
            Input::Mention => Expected {
                kind: "message",
                chat: "C_TEAM",
                chat_type: "group",
                sender: "U_ALICE",
                text: Some("hello"),
                mention: Some(fake_slack::BOT_USER),
            },
            Input::Direct => Expected {
                kind: "message",
                chat: "DU_ALICE",
                chat_type: "direct",
                sender: "U_ALICE",
                text: Some("hello"),
                mention: None,
            },
            Input::Click => Expected {
                kind: "card_action",
                chat: "C_TEAM",
                chat_type: "group",
                sender: "U_ALICE",
                text: None,
                mention: None,
            },
        })
    }

    fn chat(&self) -> String {
        "C_TEAM".into()
    }

    fn message_to_reply_to(&self) -> String {
        "1800000000.000100".into()
    }

    async fn out_calls(&self) -> Vec<OutCall> {
        self.fake
            .lock()
            .calls
            .iter()
            .filter(|c| c.method.starts_with("chat.") || c.method.starts_with("conversations."))
            .map(|c| OutCall {
                at: c.at,
                // Slack's Web API has no idempotency key; any key-like field is stray.
                key: ["uuid", "idempotency_key", "client_msg_id"]
                    .iter()
                    .find_map(|k| c.body[*k].as_str().map(str::to_string)),
                creates_message: c.method == "chat.postMessage" && c.fault.is_none(),
            })
            .collect()
    }

    fn rate_limit_next(&self, secs: u64) -> Result<(), Na> {
        self.fake.fail_next(
            1,
            fake_slack::Fault::RateLimited {
                retry_after_secs: secs,
            },
        );
        Ok(())
    }

    fn idempotency(&self) -> Result<(), Na> {
        Err(
            "Slack's Web API takes no idempotency key (refs §5); the outbox's key \
             dedupes before the call, and a lost answer can still post twice",
        )
    }

    fn members(&self) -> Vec<String> {
        vec!["U_ALICE".into(), "U_BOB".into()]
    }
}

// ---------------------------------------------------------------------------------
// Webhook: HMAC-signed JSON from internal systems in, a JSON sink out. It has no
// chats, mentions, buttons or handshake; its sink forwards every operation.

struct Webhook {
    t: TestPerch,
    sink: Sink,
}

const WEBHOOK_SECRET: &str = "webhook-secret-for-conformance";

/// A strict JSON sink for the webhook connector's outbound side: refuses a request that
/// is not JSON, unsigned or without `Idempotency-Key`, records every call, and answers
/// 429 with `Retry-After` when told to.
#[derive(Clone, Default)]
struct Sink {
    calls: Arc<Mutex<Vec<(Instant, Value, Option<String>, u16)>>>,
    limit_next: Arc<Mutex<Option<u64>>>,
}

impl Sink {
    async fn start(&self) -> String {
        let sink = self.clone();
        let app = axum::Router::new().route(
            "/sink",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let sink = sink.clone();
                    async move { sink.handle(&headers, &body) }
                },
            ),
        );
        serve_fake(app).await
    }

    fn handle(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> axum::response::Response {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let refuse = |why: &str| (StatusCode::BAD_REQUEST, why.to_string()).into_response();
        if header("content-type").as_deref() != Some("application/json") {
            return refuse("content-type is not application/json");
        }
        let Some(sig) = header("x-perch-signature") else {
            return refuse("no signature");
        };
        if sig != format!("sha256={}", sign(WEBHOOK_SECRET, body)) {
            return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
        }
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return refuse("not JSON");
        };
        let Some(key) = header("idempotency-key") else {
            return refuse("no Idempotency-Key");
        };
        if doc["key"] != key.as_str() {
            return refuse("body key differs from Idempotency-Key");
        }
        let limited = self.limit_next.lock().unwrap().take();
        let status = if limited.is_some() { 429 } else { 200 };
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), doc.clone(), Some(key.clone()), status));
        if let Some(secs) = limited {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "slow down",
            )
                .into_response();
        }
        let n = self.calls.lock().unwrap().len();
        axum::Json(json!({ "id": format!("sink-{n}") })).into_response()
    }
}

impl Platform for Webhook {
    const CONNECTOR: &'static str = "hooks";

    async fn setup() -> Self {
        let sink = Sink::default();
        let url = sink.start().await;
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.hooks]\nkind = \"webhook\"\nsecret = \"{WEBHOOK_SECRET}\"\ntimestamp_header = \"X-Perch-Timestamp\"\nid_header = \"X-Delivery\"\ntopic_pointer = \"/type\"\nsend_url = \"{url}/sink\"\n"
        );
        let t = TestPerch::start(&config).await;
        Webhook { t, sink }
    }

    fn perch(&self) -> &TestPerch {
        &self.t
    }

    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Wire, Na> {
        if !matches!(input, Input::Mention) {
            return Err("a webhook carries system events: no direct messages or buttons");
        }
        // The generic input of a webhook: a system event (there are no mentions).
        let body = json!({ "type": "deploy.finished", "service": "api" })
            .to_string()
            .into_bytes();
        let ts = ts.to_string();
        let signed = [ts.as_bytes(), &b"."[..], body.as_slice()].concat();
        Ok(Wire {
            path: "/hooks/hooks".into(),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("X-Perch-Timestamp".into(), ts),
                ("X-Delivery".into(), id.into()),
                (
                    "X-Perch-Signature".into(),
                    format!("sha256={}", sign(WEBHOOK_SECRET, &signed)),
                ),
            ],
            body,
        })
    }

    fn signature_headers(&self) -> Result<&'static [&'static str], Na> {
        Ok(&["X-Perch-Signature"])
    }

    fn stamps_requests(&self) -> Result<(), Na> {
        Ok(())
    }

    fn handshake(&self) -> Result<(Wire, Value), Na> {
        Err("a generic webhook has no URL handshake")
    }

    fn expected(&self, input: Input) -> Result<Expected, Na> {
        match input {
            Input::Mention => Err("a webhook carries system events: no mentions"),
            _ => Err("a webhook carries system events: no direct messages or buttons"),
        }
    }

    fn chat(&self) -> String {
        "ops".into()
    }

    fn message_to_reply_to(&self) -> String {
        "sink-0".into()
    }

    async fn out_calls(&self) -> Vec<OutCall> {
        self.sink
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|(at, doc, key, status)| OutCall {
                at: *at,
                key: key.clone(),
                creates_message: *status == 200 && doc["op"] == "send",
            })
            .collect()
    }

    fn rate_limit_next(&self, secs: u64) -> Result<(), Na> {
        *self.sink.limit_next.lock().unwrap() = Some(secs);
        Ok(())
    }

    fn idempotency(&self) -> Result<(), Na> {
        Ok(())
    }

    fn members(&self) -> Vec<String> {
        vec!["alice".into(), "bob".into()]
    }
}

/// A receive-only webhook (no `send_url`) answers every operation with `Unsupported`,
/// naming what is missing, rather than pretending to deliver.
#[tokio::test]
async fn a_receive_only_webhook_refuses_operations_as_unsupported() {
    let t = TestPerch::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.hooks]\nkind = \"webhook\"\nsecret = \"{WEBHOOK_SECRET}\"\n"
    ))
    .await;
    let hooks = t.connector("hooks");
    let ops = [
        send("ops".into(), MessageBody::text("x"), None),
        Operation::CreateChat {
            spec: ChatSpec {
                name: "x".into(),
                ..Default::default()
            },
        },
    ];
    for op in ops {
        match hooks.execute(&op, "k-unsupported").await {
            Err(SendError::Unsupported(what)) => assert!(what.contains("send_url"), "{what}"),
            other => panic!("{}: expected Unsupported, got {other:?}", op.name()),
        }
    }
}
