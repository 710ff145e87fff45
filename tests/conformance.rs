//! The connector conformance suite (issue 19): one test body per check, run against
//! every connector kind, on the model of Vector's component compliance harness.
//!
//! Each platform is a `Platform` implementation: how to start its fake (the same strict
//! fakes the per-platform tests use) and a real perch pointed at it, and how to produce
//! each input as the platform would deliver it. The generic checks below take any
//! `Platform`; the `all_checks!` macro turns each (check, platform) pair into its own
//! `#[tokio::test]` `<platform>::<check>`, so a failure names both.
//!
//! An input reaches perch one of two ways (`Inbound`): **posted** (a signed webhook
//! request, the web chat's API) or **synced** (Matrix: perch long-polls the
//! homeserver's `/sync`, and the fake puts the event in its next batch; the input is
//! delivered once perch syncs from a later token, which it stores only after the
//! journal write). For a synced platform, "bad requests" are a damaged `/sync` answer
//! (cut short, no `next_batch`: perch reports why and stores nothing) and malformed
//! timeline events (dropped).
//!
//! Where a platform has no such thing (the web chat has no request signature, a webhook
//! has no handshake or mentions, Matrix has no inbound request to sign), the platform
//! says so with a reason (`Na`) and the check asserts exactly that, so a capability can
//! neither appear nor vanish unnoticed. Matrix runs against `tests/fake_matrix`;
//! tests/matrix.rs runs the same connector against a real Synapse.

use perch::testing::fake_feishu;
mod fake_matrix;
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

/// How an input reaches perch.
#[derive(Debug, Clone)]
enum Inbound {
    /// The platform POSTs it to perch.
    Posted(Wire),
    /// perch fetches it: the fake's next `/sync` batch carries `event` in `room`.
    Synced { room: String, event: Value },
}

/// A damaged answer to perch's long poll.
#[derive(Debug, Clone, Copy)]
enum SyncFault {
    /// Valid JSON cut in the middle.
    Truncated,
    /// A JSON object without `next_batch`.
    NoNextBatch,
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
    /// The message a creation answers (Feishu's reply path, Slack `thread_ts`, Matrix
    /// `m.in_reply_to`).
    replies_to: Option<String>,
    /// The message an update changes in place.
    edits: Option<String>,
}

#[allow(async_fn_in_trait)]
trait Platform: Sized {
    /// The connector's name in the config (`/hooks/<name>`).
    const CONNECTOR: &'static str;
    async fn setup() -> Self;
    fn perch(&self) -> &TestPerch;

    /// `input`, correctly signed, stamped `ts` (Unix seconds), with delivery id `id`.
    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Inbound, Na>;
    /// Put `event` in the fake's next `/sync` batch for `room` (also while perch is
    /// down: the homeserver keeps it); its place in the fake's log. Na: inputs are
    /// posted.
    fn queue_by_sync(&self, room: &str, event: &Value) -> Result<usize, Na> {
        let _ = (room, event);
        Err("this platform posts its inputs to perch")
    }
    /// Wait until perch has acknowledged the batch holding log place `pos` (synced from
    /// a later token, which it stores only after the journal write).
    async fn synced_past(&self, pos: usize) {
        let _ = pos;
        unreachable!("only a synced platform queues inputs")
    }
    /// Damage the next `/sync` answer; return what perch then reports (its sync status).
    async fn break_next_sync(&self, fault: SyncFault) -> Result<String, Na> {
        let _ = fault;
        Err("this platform posts its inputs to perch")
    }
    fn perch_mut(&mut self) -> &mut TestPerch;
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

impl Inbound {
    /// Deliver the input to perch: POST it, or hand it out in a `/sync` batch (then
    /// 200 means perch acknowledged the batch).
    async fn deliver<P: Platform>(&self, p: &P) -> (u16, String) {
        match self {
            Inbound::Posted(wire) => wire.post(p).await,
            Inbound::Synced { room, event } => {
                let pos = p
                    .queue_by_sync(room, event)
                    .unwrap_or_else(|na| panic!("a synced input on a posting platform: {na}"));
                p.synced_past(pos).await;
                (200, String::new())
            }
        }
    }
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

/// The journal once it holds at least `n` events (at most 10 s).
async fn journaled(t: &TestPerch, n: usize) -> Vec<Value> {
    eventually(10, &format!("{n} events journaled"), || async move {
        Some(journal(t).await).filter(|v| v.len() >= n)
    })
    .await
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
/// stamps); the same request, correctly signed and fresh, is then accepted (so the
/// refusals were about the signature, not something else). On a synced platform: a
/// damaged `/sync` answer is reported with a reason and malformed timeline events are
/// dropped, storing nothing; the good event is then taken.
async fn refuses_bad_requests<P: Platform>() {
    let p = P::setup().await;
    let good = p
        .inbound(Input::Mention, "ev-bad-1", now())
        .expect("every platform has an input");
    match &good {
        Inbound::Posted(wire) => refuses_bad_posts(&p, wire).await,
        Inbound::Synced { room, event } => refuses_bad_syncs(&p, room, event).await,
    }
    assert!(journal(p.perch()).await.is_empty(), "nothing stored");
    let (status, body) = good.deliver(&p).await;
    assert_eq!(status, 200, "the good request: {body}");
    let events = eventually(10, "the good input journaled", || {
        let t = p.perch();
        async move { Some(journal(t).await).filter(|v| !v.is_empty()) }
    })
    .await;
    assert_eq!(events.len(), 1, "{events:#?}");
}

async fn refuses_bad_posts<P: Platform>(p: &P, good: &Wire) {
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
        let Ok(Inbound::Posted(stale)) = p.inbound(Input::Mention, "ev-bad-1", now() - 86_400)
        else {
            panic!("a stamped, posted input");
        };
        refused.push(("stale", stale));
    }
    for (what, wire) in &refused {
        let (status, body) = wire.post(p).await;
        assert!(
            (400..500).contains(&status),
            "{what} request answered {status}: {body}"
        );
        assert!(!body.is_empty(), "{what}: a reason is given");
    }
}

async fn refuses_bad_syncs<P: Platform>(p: &P, room: &str, good: &Value) {
    // Nothing to sign: perch calls the homeserver with its own token.
    assert!(p.signature_headers().is_err_and(|na| !na.is_empty()));
    for fault in [SyncFault::Truncated, SyncFault::NoNextBatch] {
        let why = p
            .break_next_sync(fault)
            .await
            .expect("a synced platform can damage its answer");
        assert!(!why.is_empty(), "{fault:?}: a reason is given");
    }
    // Timeline events missing what every event has: dropped, the batch goes on.
    let mut broken = Vec::new();
    for (i, field) in ["sender", "event_id", "type", "content"].iter().enumerate() {
        let mut e = good.clone();
        e["event_id"] = json!(format!(
            "{}-broken-{i}",
            good["event_id"].as_str().unwrap_or("$x")
        ));
        if let Some(o) = e.as_object_mut() {
            o.remove(*field);
        }
        broken.push(e);
    }
    let mut not_an_object = good.clone();
    not_an_object["event_id"] = json!("$broken-content");
    not_an_object["content"] = json!("hello");
    broken.push(not_an_object);
    for e in &broken {
        let pos = p.queue_by_sync(room, e).expect("a synced platform");
        p.synced_past(pos).await;
    }
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
    let input = p
        .inbound(input, "ev-decode-1", now())
        .expect("a signed input");
    let (status, body) = input.deliver(&p).await;
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

/// The same delivery id twice is one event, also when the second comes after a restart
/// (perch resumes from what it stored), and a new input after the restart is taken. A
/// synced platform holds both while perch is down (perch must resume from its stored
/// `next_batch`: a fresh first sync would skip them as history).
async fn dedupes_redelivery<P: Platform>() {
    let mut p = P::setup().await;
    let Ok(first) = p.inbound(Input::Mention, "ev-twice", now()) else {
        return;
    };
    // A redelivery is signed afresh (new timestamp, Feishu: new IV), same delivery id.
    let again = |p: &P| {
        p.inbound(Input::Mention, "ev-twice", now())
            .expect("signed input")
    };
    assert_eq!(first.deliver(&p).await.0, 200);
    assert_eq!(again(&p).deliver(&p).await.0, 200);
    let other = p
        .inbound(Input::Mention, "ev-other", now())
        .expect("signed input");
    assert_eq!(other.deliver(&p).await.0, 200);
    assert_eq!(
        journaled(p.perch(), 2).await.len(),
        2,
        "the redelivery is one event"
    );

    p.perch_mut().stop().await;
    let after = p
        .inbound(Input::Mention, "ev-after-restart", now())
        .expect("signed input");
    let held: Vec<usize> = [again(&p), after.clone()]
        .iter()
        .filter_map(|i| match i {
            Inbound::Synced { room, event } => p.queue_by_sync(room, event).ok(),
            Inbound::Posted(_) => None,
        })
        .collect();
    p.perch_mut().start_again().await;
    match held.last() {
        Some(pos) => p.synced_past(*pos).await,
        None => {
            assert_eq!(again(&p).deliver(&p).await.0, 200);
            assert_eq!(after.deliver(&p).await.0, 200);
        }
    }
    let events = journaled(p.perch(), 3).await;
    assert_eq!(
        events.len(),
        3,
        "after a restart the redelivery is still one event: {events:#?}"
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
    let op = send(p.chat(), MessageBody::text("in thread"), Some(to.clone()));
    sends_one(&p, op, "k-reply").await;
    let calls = p.out_calls().await;
    let reply = calls
        .iter()
        .rfind(|c| c.creates_message)
        .expect("the reply");
    assert_eq!(reply.replies_to, Some(to), "{calls:?}");
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
        message_id: id.clone(),
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
    assert!(
        calls
            .iter()
            .any(|c| c.edits.as_deref() == Some(id.as_str())),
        "the update changes the sent card: {calls:?}"
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
            // A retry (same outbox key) carries the same platform key, and the platform
            // creates nothing new for it: nothing is sent twice.
            connector(&p).execute(&op, "k-idem-1").await.expect("send");
            let after = p.out_calls().await;
            assert_eq!(after.last().unwrap().key, Some(key));
            let created = |c: &[OutCall]| c.iter().filter(|c| c.creates_message).count();
            assert_eq!(created(&after), created(&calls), "{after:?}");
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
all_checks!(matrix, Matrix);

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

    fn perch_mut(&mut self) -> &mut TestPerch {
        &mut self.t
    }

    fn inbound(&self, input: Input, id: &str, _ts: i64) -> Result<Inbound, Na> {
        Ok(Inbound::Posted(match input {
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
        }))
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
                    .map(|m| OutCall {
                        at: Instant::now(),
                        key: None,
                        creates_message: true,
                        replies_to: m["reply_to"].as_str().map(str::to_string),
                        edits: m["edited_at"]
                            .is_string()
                            .then(|| m["id"].as_str().unwrap_or_default().to_string()),
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

    fn perch_mut(&mut self) -> &mut TestPerch {
        &mut self.t
    }

    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Inbound, Na> {
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
        Ok(Inbound::Posted(Wire {
            path: "/hooks/feishu".into(),
            headers: sealed.headers,
            body: sealed.body,
        }))
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
        // A repeated `uuid` gets the first message back: only a new one creates.
        let mut keys = std::collections::HashSet::new();
        self.fake
            .lock()
            .calls
            .iter()
            .filter(|c| c.path.starts_with("/open-apis/im/"))
            .map(|c| {
                let key = c.body["uuid"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| c.query.get("uuid").cloned());
                let creates = c.method == "POST"
                    && c.path.starts_with("/open-apis/im/v1/messages")
                    && c.fault.is_none();
                // `/open-apis/im/v1/messages/{id}/reply` (POST), `…/messages/{id}`
                // (PATCH, PUT: an update).
                let target = c
                    .path
                    .strip_prefix("/open-apis/im/v1/messages/")
                    .map(|rest| rest.trim_end_matches("/reply").to_string());
                OutCall {
                    at: c.at,
                    creates_message: creates && key.clone().is_none_or(|k| keys.insert(k)),
                    key,
                    replies_to: target.clone().filter(|_| c.path.ends_with("/reply")),
                    edits: target.filter(|_| c.method == "PATCH" || c.method == "PUT"),
                }
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

    fn perch_mut(&mut self) -> &mut TestPerch {
        &mut self.t
    }

    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Inbound, Na> {
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
        Ok(Inbound::Posted(Wire {
            path: format!("/hooks/slack{sub}"),
            headers: d.headers,
            body: d.body,
        }))
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
                replies_to: c.body["thread_ts"].as_str().map(str::to_string),
                edits: (c.method == "chat.update")
                    .then(|| c.body["ts"].as_str().map(str::to_string))
                    .flatten(),
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

    fn perch_mut(&mut self) -> &mut TestPerch {
        &mut self.t
    }

    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Inbound, Na> {
        if !matches!(input, Input::Mention) {
            return Err("a webhook carries system events: no direct messages or buttons");
        }
        // The generic input of a webhook: a system event (there are no mentions).
        let body = json!({ "type": "deploy.finished", "service": "api" })
            .to_string()
            .into_bytes();
        let ts = ts.to_string();
        let signed = [ts.as_bytes(), &b"."[..], body.as_slice()].concat();
        Ok(Inbound::Posted(Wire {
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
        }))
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
        let mut keys = std::collections::HashSet::new();
        self.sink
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|(at, doc, key, status)| OutCall {
                at: *at,
                key: key.clone(),
                // The receiver keeps one delivery per Idempotency-Key.
                creates_message: *status == 200
                    && doc["op"] == "send"
                    && key.clone().is_none_or(|k| keys.insert(k)),
                replies_to: doc["reply_to"].as_str().map(str::to_string),
                edits: (doc["op"] == "update")
                    .then(|| doc["message_id"].as_str().map(str::to_string))
                    .flatten(),
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

// ---------------------------------------------------------------------------------
// Matrix: perch long-polls the homeserver's `/sync` with the bot's access token and
// sends with `PUT /rooms/{room}/send/{type}/{txnId}` (tests/fake_matrix).

struct Matrix {
    fake: fake_matrix::FakeMatrix,
    t: TestPerch,
    /// A card perch sent to the team room with an `echo` button (reacting with its
    /// label is the click).
    card_id: String,
    /// Calls the fake saw during setup, which the checks do not count.
    setup_calls: usize,
}

const MATRIX_TEAM: &str = "!team:fake.test";
const MATRIX_DM: &str = "!dm-alice:fake.test";
/// Alice's message in the team room, from before perch ran (to reply to).
const MATRIX_USER_MESSAGE: &str = "$alice-1:fake.test";

impl Matrix {
    fn message(id: &str, ts: i64, content: Value) -> Value {
        json!({ "type": "m.room.message", "event_id": format!("${id}:fake.test"),
                "sender": fake_matrix::ALICE, "origin_server_ts": ts * 1000, "content": content })
    }

    /// perch's sync status (`syncing`, `failing: <why>`).
    fn sync_status(&self) -> String {
        connector(self)
            .describe()
            .get("sync")
            .cloned()
            .unwrap_or_default()
    }
}

impl Platform for Matrix {
    const CONNECTOR: &'static str = "matrix";

    async fn setup() -> Self {
        let fake = fake_matrix::FakeMatrix::start().await;
        fake.add_room(MATRIX_TEAM, &[fake_matrix::ALICE, fake_matrix::BOT_USER]);
        // History: perch's first sync sees it and must not answer it.
        fake.add_history(
            MATRIX_TEAM,
            MATRIX_USER_MESSAGE,
            fake_matrix::ALICE,
            "perch: from before perch ran",
        );
        // Alice opens a direct chat with the bot; perch accepts it on its first sync.
        fake.invite_bot(MATRIX_DM, fake_matrix::ALICE, true);
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.matrix]\nkind = \"matrix\"\nhomeserver = \"{}\"\nuser_id = \"{}\"\naccess_token = \"{}\"\nsync_timeout = \"1s\"\nrate_per_second = 20\n\n[bots.echo]\nkind = \"echo\"\n",
            fake.base,
            fake_matrix::BOT_USER,
            fake_matrix::ACCESS_TOKEN
        );
        let t = TestPerch::start(&config).await;
        // perch's first sync accepted the invitation and stored its token: inputs
        // pushed from now on are news to it.
        eventually(
            10,
            "the direct room joined and a sync from a stored token",
            || {
                let fake = fake.clone();
                async move {
                    let s = fake.lock();
                    let joined = s.rooms[MATRIX_DM].members[fake_matrix::BOT_USER] == "join";
                    let resumed = s
                        .calls
                        .iter()
                        .any(|c| c.is_sync() && c.query.contains_key("since"));
                    (joined && resumed).then_some(())
                }
            },
        )
        .await;
        let card = json!({ "header": { "title": "Reminder" }, "elements": [
            { "type": "buttons", "buttons": [{ "label": "Done", "action": { "bot": "echo", "action": "done", "args": {} } }] }
        ] });
        let sent = t
            .connector("matrix")
            .execute(
                &send(MATRIX_TEAM.into(), MessageBody::Card { card }, None),
                "k-setup-card",
            )
            .await
            .expect("the setup card");
        let card_id = sent.id.expect("the card's event id");
        let setup_calls = fake.lock().calls.len();
        Matrix {
            fake,
            t,
            card_id,
            setup_calls,
        }
    }

    fn perch(&self) -> &TestPerch {
        &self.t
    }

    fn perch_mut(&mut self) -> &mut TestPerch {
        &mut self.t
    }

    fn inbound(&self, input: Input, id: &str, ts: i64) -> Result<Inbound, Na> {
        let bot = fake_matrix::BOT_USER;
        let (room, event) = match input {
            // Element's mention: a pill in the HTML body and the bot in `m.mentions`.
            Input::Mention => (
                MATRIX_TEAM,
                Self::message(
                    id,
                    ts,
                    json!({ "msgtype": "m.text", "body": "perch: hello",
                            "format": "org.matrix.custom.html",
                            "formatted_body": format!("<a href=\"https://matrix.to/#/{bot}\">perch</a>: hello"),
                            "m.mentions": { "user_ids": [bot] } }),
                ),
            ),
            Input::Direct => (
                MATRIX_DM,
                Self::message(id, ts, json!({ "msgtype": "m.text", "body": "hello" })),
            ),
            // Clicking the card's `Done` chip: a reaction with the button's label.
            Input::Click => (
                MATRIX_TEAM,
                json!({ "type": "m.reaction", "event_id": format!("${id}:fake.test"),
                        "sender": fake_matrix::ALICE, "origin_server_ts": ts * 1000,
                        "content": { "m.relates_to": { "rel_type": "m.annotation",
                                                       "event_id": self.card_id, "key": "Done" } } }),
            ),
        };
        Ok(Inbound::Synced {
            room: room.into(),
            event,
        })
    }

    fn queue_by_sync(&self, room: &str, event: &Value) -> Result<usize, Na> {
        Ok(self.fake.push_timeline(room, event.clone()))
    }

    async fn synced_past(&self, pos: usize) {
        let fake = self.fake.clone();
        eventually(10, "perch acknowledges the sync batch", || {
            let fake = fake.clone();
            async move { fake.acknowledged(pos).then_some(()) }
        })
        .await;
    }

    async fn break_next_sync(&self, fault: SyncFault) -> Result<String, Na> {
        let (damage, words) = match fault {
            SyncFault::Truncated => (
                fake_matrix::SyncFault::Truncated,
                "HTTP 200 without a Matrix answer",
            ),
            SyncFault::NoNextBatch => (fake_matrix::SyncFault::NoNextBatch, "no next_batch"),
        };
        self.fake.break_next_sync(damage);
        Ok(eventually(10, &format!("perch reports {words:?}"), || {
            let status = self.sync_status();
            async move { status.contains(words).then_some(status) }
        })
        .await)
    }

    fn signature_headers(&self) -> Result<&'static [&'static str], Na> {
        Err(
            "perch polls the homeserver's /sync with its own access token: there is no \
             inbound request to sign (the fake refuses a missing or wrong token)",
        )
    }

    fn stamps_requests(&self) -> Result<(), Na> {
        Err(
            "events come over perch's own authenticated /sync; an old origin_server_ts \
             (a late federated event) is no reason to refuse, and history before the first \
             sync is skipped instead",
        )
    }

    fn handshake(&self) -> Result<(Wire, Value), Na> {
        Err("Matrix has no URL handshake: perch calls out, nothing calls in")
    }

    fn expected(&self, input: Input) -> Result<Expected, Na> {
        Ok(match input {
            Input::Mention => Expected {
                kind: "message",
                chat: MATRIX_TEAM,
                chat_type: "group",
                sender: fake_matrix::ALICE,
                text: Some("hello"),
                mention: Some(fake_matrix::BOT_USER),
            },
            Input::Direct => Expected {
                kind: "message",
                chat: MATRIX_DM,
                chat_type: "direct",
                sender: fake_matrix::ALICE,
                text: Some("hello"),
                mention: None,
            },
            Input::Click => Expected {
                kind: "card_action",
                chat: MATRIX_TEAM,
                chat_type: "group",
                sender: fake_matrix::ALICE,
                text: None,
                mention: None,
            },
        })
    }

    fn chat(&self) -> String {
        MATRIX_TEAM.into()
    }

    fn message_to_reply_to(&self) -> String {
        MATRIX_USER_MESSAGE.into()
    }

    async fn out_calls(&self) -> Vec<OutCall> {
        // Every request perch made was one a homeserver takes, and none came inside a
        // rate-limit window.
        assert_eq!(self.fake.refused(), Vec::<String>::new());
        assert_eq!(
            self.fake.calls_inside_rate_limit_windows(),
            Vec::<(String, String)>::new()
        );
        self.fake.lock().calls[self.setup_calls..]
            .iter()
            .filter(|c| !c.is_sync() && !c.path.starts_with("/join/"))
            .map(|c| OutCall {
                at: c.at,
                key: c.txn.clone(),
                // A repeated txnId is answered with the first event: it creates nothing.
                creates_message: c.event_type.as_deref() == Some("m.room.message")
                    && c.body.pointer("/m.relates_to/rel_type") != Some(&json!("m.replace"))
                    && c.fault.is_none()
                    && !c.repeated_txn,
                replies_to: c
                    .body
                    .pointer("/m.relates_to/m.in_reply_to/event_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                edits: (c.body.pointer("/m.relates_to/rel_type") == Some(&json!("m.replace")))
                    .then(|| {
                        c.body
                            .pointer("/m.relates_to/event_id")?
                            .as_str()
                            .map(str::to_string)
                    })
                    .flatten(),
            })
            .collect()
    }

    fn rate_limit_next(&self, secs: u64) -> Result<(), Na> {
        self.fake.fail_next(
            1,
            fake_matrix::Fault::RateLimited {
                retry_after_ms: secs * 1000,
            },
        );
        Ok(())
    }

    fn idempotency(&self) -> Result<(), Na> {
        Ok(())
    }

    fn members(&self) -> Vec<String> {
        vec![fake_matrix::ALICE.into(), fake_matrix::BOB.into()]
    }
}

/// The fake homeserver is as strict as the checks assume: it refuses a missing or wrong
/// token, a body that is not a JSON object, a wrong content type and a repeated header;
/// it answers a repeated txnId with the first event and creates nothing; it answers
/// `M_LIMIT_EXCEEDED` when told to.
#[tokio::test]
async fn the_fake_homeserver_refuses_what_a_homeserver_refuses() {
    let fake = fake_matrix::FakeMatrix::start().await;
    fake.add_room(MATRIX_TEAM, &[fake_matrix::ALICE, fake_matrix::BOT_USER]);
    let url = format!(
        "{}/_matrix/client/v3/rooms/%21team%3Afake.test/send/m.room.message/t1",
        fake.base
    );
    let bearer = format!("Bearer {}", fake_matrix::ACCESS_TOKEN);
    let body = json!({ "msgtype": "m.text", "body": "hi" }).to_string();
    let http = reqwest::Client::new();
    let put = |auth: Option<&str>, ct: &str, body: &str| {
        let mut r = http
            .put(&url)
            .header("content-type", ct)
            .body(body.to_string());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r
    };
    let answer = |r: reqwest::RequestBuilder| async move {
        let resp = r.send().await.expect("the fake answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    };
    let (s, b) = answer(put(None, "application/json", &body)).await;
    assert_eq!((s, b.contains("M_MISSING_TOKEN")), (401, true), "{b}");
    let (s, b) = answer(put(Some("Bearer nope"), "application/json", &body)).await;
    assert_eq!((s, b.contains("M_UNKNOWN_TOKEN")), (401, true), "{b}");
    let (s, b) = answer(put(Some(&bearer), "application/json", "[1]")).await;
    assert_eq!((s, b.contains("M_NOT_JSON")), (400, true), "{b}");
    let (s, _) = answer(put(Some(&bearer), "text/plain", &body)).await;
    assert_eq!(s, 400, "a body without a JSON content type");
    let (s, _) = answer(
        put(Some(&bearer), "application/json", &body).header("authorization", bearer.as_str()),
    )
    .await;
    assert_eq!(s, 400, "a repeated Authorization header");
    let (s, b) = answer(put(
        Some(&bearer),
        "application/json",
        &json!({ "msgtype": "m.text" }).to_string(),
    ))
    .await;
    assert_eq!((s, b.contains("M_BAD_JSON")), (400, true), "no body: {b}");
    assert_eq!(fake.refused().len(), 2, "{:?}", fake.refused());

    let (s, first) = answer(put(Some(&bearer), "application/json", &body)).await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = answer(put(Some(&bearer), "application/json", &body)).await;
    assert_eq!(
        (s, &again),
        (200, &first),
        "a repeated txnId: the first event"
    );
    assert_eq!(fake.sent().len(), 1, "one event created");

    fake.fail_next(
        1,
        fake_matrix::Fault::RateLimited {
            retry_after_ms: 1500,
        },
    );
    let (s, b) = answer(put(Some(&bearer), "application/json", &body)).await;
    let doc: Value = serde_json::from_str(&b).expect("a JSON error");
    assert_eq!(s, 429);
    assert_eq!(
        doc,
        json!({ "errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests", "retry_after_ms": 1500 })
    );
}

/// perch polls with its own access token: a token the homeserver refuses stops nothing
/// but the sync, which reports why (with the fix) without printing the token, and
/// stores nothing.
#[tokio::test]
async fn a_refused_matrix_token_is_reported_without_the_token() {
    let fake = fake_matrix::FakeMatrix::start().await;
    let token = "syt_wrong_token_that_must_not_leak";
    let t = TestPerch::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[connectors.matrix]\nkind = \"matrix\"\nhomeserver = \"{}\"\nuser_id = \"{}\"\naccess_token = \"{token}\"\nsync_timeout = \"1s\"\n",
        fake.base,
        fake_matrix::BOT_USER
    ))
    .await;
    let matrix = t.connector("matrix");
    let status = eventually(10, "the sync reports the refused token", || {
        let s = matrix.describe().get("sync").cloned().unwrap_or_default();
        async move { s.contains("M_UNKNOWN_TOKEN").then_some(s) }
    })
    .await;
    assert!(status.contains("access token"), "a hint: {status}");
    assert!(!status.contains(token), "{status}");
    assert!(journal(&t).await.is_empty());
    assert!(
        fake.calls()
            .iter()
            .all(|c| c.is_sync() && !c.query.contains_key("since")),
        "no token was stored, nothing else was called"
    );
}

/// A card whose button chips fail half-way (the card and its first chip are posted, the
/// second chip gets a 500) resumes on the retry with the same key: the same card, each chip once, no
/// second card and no duplicate reaction.
#[tokio::test]
async fn a_matrix_card_failing_half_way_resumes_without_a_second_card() {
    let p = Matrix::setup().await;
    let card = json!({ "header": { "title": "Reminder" }, "elements": [
        { "type": "buttons", "buttons": [
            { "label": "Done", "action": { "bot": "echo", "action": "done", "args": {} } },
            { "label": "Snooze", "action": { "bot": "echo", "action": "snooze", "args": {} } } ] }
    ] });
    let op = send(MATRIX_TEAM.into(), MessageBody::Card { card }, None);
    p.fake.fail_after(2, fake_matrix::Fault::ServerError);
    match connector(&p).execute(&op, "k-half").await {
        Err(SendError::Retry { .. }) => {}
        other => panic!("expected a retry after the failed chip, got {other:?}"),
    }
    let first = p.fake.sent();
    let card_id = first
        .iter()
        .find(|s| s.txn == "k-half")
        .expect("the card was posted before the chip failed")
        .event_id
        .clone();
    let delivered = connector(&p).execute(&op, "k-half").await.expect("resumed");
    assert_eq!(
        delivered.id.as_deref(),
        Some(card_id.as_str()),
        "the same card"
    );
    let sent = p.fake.sent();
    let cards = sent
        .iter()
        .filter(|s| s.event_type == "m.room.message" && s.txn == "k-half")
        .count();
    assert_eq!(cards, 1, "one card: {sent:?}");
    let mut chips: Vec<&str> = sent
        .iter()
        .filter(|s| {
            s.event_type == "m.reaction" && s.content["m.relates_to"]["event_id"] == card_id
        })
        .filter_map(|s| s.content["m.relates_to"]["key"].as_str())
        .collect();
    chips.sort();
    assert_eq!(chips, ["Done", "Snooze"], "each chip once");
    assert_eq!(p.fake.refused(), Vec::<String>::new());
}
