//! Feishu envelopes → neutral `Event`s. Pure: a decrypted, verified JSON document in,
//! events out; no I/O, no secrets (the caller checks signature and token first).
//!
//! Flow: connector (in) [verify → decrypt → **decode**] → journal → router.
//!
//! Shapes follow `../shared/refs/chat-platforms.md` §1.1–§1.3 and §1.7:
//! - schema 2.0: `{"schema":"2.0","header":{event_id,event_type,token,…},"event":{…}}`;
//! - schema 1.0: `{"uuid","token","ts","type":"event_callback","event":{"type",…}}`;
//! - the legacy card request body `{"open_id","open_message_id","open_chat_id","token",
//!   "action":{…}}` (whose `token` is the card-update token, not the verification token).

use crate::connectors::InboundError;
use crate::event::{CardAction, Chat, ChatType, Event, EventKind, Mention, Person};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Which envelope a document uses (refs §1.2: non-empty `schema` → 2.0, else non-empty
/// `uuid` → 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    V2,
    V1,
}

/// The routing facts of an event document.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    pub schema: Schema,
    /// `header.event_type` (2.0) or `event.type` (1.0).
    pub event_type: String,
    /// The dedupe key: `header.event_id` (2.0) or `uuid` (1.0).
    pub event_id: String,
    /// The verification token the document carries: `header.token` / `token`.
    pub token: Option<&'a str>,
    /// The `event` object.
    pub event: &'a Value,
}

/// What decoding needs to know besides the document.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The configured connector name (events carry it).
    pub connector: &'a str,
    /// This app bot's open_id, when known: mentions of it get `is_bot = true`.
    pub bot_open_id: Option<&'a str>,
    pub now: DateTime<Utc>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A URL-verification request: `(challenge, token)` (refs §1.1). Also recognised when the
/// document carries a 2.0 header (refs §7 vector B does); the token is then taken from
/// the header when there is no top-level one.
pub fn challenge(doc: &Value) -> Option<(&str, Option<&str>)> {
    if doc.get("type").and_then(Value::as_str) != Some("url_verification") {
        return None;
    }
    let challenge = doc.get("challenge").and_then(Value::as_str)?;
    let token = str_at(doc, "/token").or_else(|| str_at(doc, "/header/token"));
    Some((challenge, token))
}

/// Read the envelope of an event (or new-style callback) document.
pub fn envelope(doc: &Value) -> Result<Envelope<'_>, InboundError> {
    static NULL: Value = Value::Null;
    if str_at(doc, "/schema").is_some() {
        let event_type = str_at(doc, "/header/event_type").ok_or_else(|| {
            InboundError::Malformed("schema 2.0 envelope without header.event_type".into())
        })?;
        let event_id = str_at(doc, "/header/event_id").ok_or_else(|| {
            InboundError::Malformed("schema 2.0 envelope without header.event_id".into())
        })?;
        return Ok(Envelope {
            schema: Schema::V2,
            event_type: event_type.to_string(),
            event_id: event_id.to_string(),
            token: str_at(doc, "/header/token"),
            event: doc.get("event").unwrap_or(&NULL),
        });
    }
    if let Some(uuid) = str_at(doc, "/uuid") {
        let event_type = str_at(doc, "/event/type").ok_or_else(|| {
            InboundError::Malformed("schema 1.0 envelope without event.type".into())
        })?;
        return Ok(Envelope {
            schema: Schema::V1,
            event_type: event_type.to_string(),
            event_id: uuid.to_string(),
            token: str_at(doc, "/token"),
            event: doc.get("event").unwrap_or(&NULL),
        });
    }
    Err(InboundError::Malformed(
        "not a Feishu event: neither `schema` (2.0) nor `uuid` (1.0) is set".into(),
    ))
}

/// The document as it is journaled: the verification token removed (it is a secret;
/// the journal is readable through the admin API). A card click's `event.token` (`c-…`)
/// is kept: it is the card-update token a bot needs for a delayed update (valid 30 min,
/// 2 uses; refs §1.7), not the verification token.
pub fn payload_of(doc: &Value) -> Value {
    let mut p = doc.clone();
    if let Some(h) = p.get_mut("header").and_then(Value::as_object_mut) {
        h.remove("token");
    }
    if let Some(o) = p.as_object_mut()
        && (o.contains_key("uuid") || o.contains_key("type"))
    {
        // 1.0 envelopes and challenges carry the verification token at the top level.
        o.remove("token");
    }
    p
}

/// Decode an event document whose envelope is `env` into one neutral event.
/// Unknown event types become System events with topic `feishu.<event_type>`.
pub fn to_event(doc: &Value, env: &Envelope, ctx: &Context) -> Result<Event, InboundError> {
    let mut event = match (env.schema, env.event_type.as_str()) {
        (Schema::V2, "im.message.receive_v1") => message_event(env.event, ctx)?,
        (Schema::V2, "card.action.trigger") => card_trigger_event(env.event, ctx),
        _ => system_event(env, ctx),
    };
    event.external_id = Some(env.event_id.clone());
    event.payload = payload_of(doc);
    Ok(event)
}

/// A System event: topic `feishu.<type>`, with the chat and the acting person when the
/// event names them (`im.chat.member.bot.added_v1`, `im.chat.disbanded_v1`, …).
fn system_event(env: &Envelope, ctx: &Context) -> Event {
    let mut e = Event::new(ctx.connector, EventKind::System, ctx.now);
    e.topic = Some(format!("feishu.{}", env.event_type));
    let ev = env.event;
    if let Some(chat_id) = str_at(ev, "/chat_id").or_else(|| str_at(ev, "/open_chat_id")) {
        e.chat = Some(Chat {
            id: chat_id.to_string(),
            chat_type: ChatType::Group,
        });
    }
    if let Some(id) = str_at(ev, "/operator_id/open_id").or_else(|| str_at(ev, "/open_id")) {
        e.sender = Some(Person {
            id: id.to_string(),
            name: None,
        });
    }
    e
}

/// `im.message.receive_v1` (refs §1.3).
fn message_event(ev: &Value, ctx: &Context) -> Result<Event, InboundError> {
    let msg = ev
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| InboundError::Malformed("im.message.receive_v1 without `message`".into()))?;
    let chat_id = str_at(msg, "/chat_id")
        .ok_or_else(|| InboundError::Malformed("message without chat_id".into()))?;
    let mut e = Event::new(ctx.connector, EventKind::Message, ctx.now);
    e.chat = Some(Chat {
        id: chat_id.to_string(),
        chat_type: if str_at(msg, "/chat_type") == Some("p2p") {
            ChatType::Direct
        } else {
            ChatType::Group
        },
    });
    e.message_id = str_at(msg, "/message_id").map(str::to_string);
    e.sender = str_at(ev, "/sender/sender_id/open_id")
        .or_else(|| str_at(ev, "/sender/sender_id/user_id"))
        .map(|id| Person {
            id: id.to_string(),
            name: None,
        });

    // Mentions: `@_user_N` placeholders in the text, resolved through `mentions[]`.
    let mut placeholders: Vec<(String, String)> = Vec::new();
    for m in msg
        .get("mentions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = m.get("key").and_then(Value::as_str).unwrap_or_default();
        let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
        let open_id = str_at(m, "/id/open_id");
        let id = open_id
            .or_else(|| str_at(m, "/id/user_id"))
            .or_else(|| str_at(m, "/id/union_id"))
            .map(str::to_string)
            .unwrap_or_else(|| {
                if key == "@_all" {
                    "all".to_string()
                } else {
                    key.to_string()
                }
            });
        let handle = mention_handle(name, &id);
        e.mentions.push(Mention {
            is_bot: open_id.is_some() && open_id == ctx.bot_open_id,
            person: Person {
                id,
                name: Some(handle.clone()),
            },
        });
        if !key.is_empty() {
            placeholders.push((key.to_string(), format!("@{handle}")));
        }
    }
    // Longest key first, so `@_user_1` never eats the start of `@_user_10`.
    placeholders.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));

    let content: Option<Value> = str_at(msg, "/content").and_then(|c| serde_json::from_str(c).ok());
    let text = match (str_at(msg, "/message_type"), &content) {
        (Some("text"), Some(c)) => c.get("text").and_then(Value::as_str).map(str::to_string),
        (Some("post"), Some(c)) => post_text(c),
        _ => None,
    };
    e.text = text.map(|mut t| {
        for (key, with) in &placeholders {
            t = t.replace(key.as_str(), with);
        }
        t.trim().to_string()
    });
    Ok(e)
}

/// How a mentioned person is written in the event text: their name with whitespace
/// replaced by `_`, so the command parser sees one word (`@Perch Bot` → `@Perch_Bot`).
/// The same handle is the `Mention`'s name, so text and mentions match.
fn mention_handle(name: &str, id: &str) -> String {
    let joined = name.split_whitespace().collect::<Vec<_>>().join("_");
    if joined.is_empty() {
        id.to_string()
    } else {
        joined
    }
}

/// The text of a received `post`: the title, then each paragraph's text runs joined
/// (`text`, `a`, `md`, `code_block`; `at` as its placeholder or `@name`). The content
/// comes either bare (`{"title","content"}`) or under a locale key (`{"zh_cn":{…}}`).
pub fn post_text(content: &Value) -> Option<String> {
    let body = if content.get("content").is_some() {
        content
    } else {
        content
            .as_object()?
            .values()
            .find(|v| v.get("content").is_some())?
    };
    let mut lines = Vec::new();
    if let Some(title) = body
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
    {
        lines.push(title.to_string());
    }
    for paragraph in body
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut line = String::new();
        for run in paragraph.as_array().into_iter().flatten() {
            match run.get("tag").and_then(Value::as_str) {
                Some("text" | "a" | "md" | "code_block") => {
                    line.push_str(run.get("text").and_then(Value::as_str).unwrap_or_default());
                }
                Some("at") => {
                    let id = run
                        .get("user_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if id.starts_with("@_") {
                        line.push_str(id); // a placeholder, resolved through `mentions`
                    } else if let Some(n) = run.get("user_name").and_then(Value::as_str) {
                        line.push('@');
                        line.push_str(n);
                    }
                }
                _ => {} // images, media, emotions: no text
            }
        }
        lines.push(line);
    }
    Some(lines.join("\n"))
}

/// The perch action in a button value: `{"perch": {"bot", "action", "args"}}` (how the
/// card renderer embeds perch actions).
fn perch_action(value: &Value, message_id: Option<&str>) -> Option<CardAction> {
    let p = value.get("perch")?;
    Some(CardAction {
        bot: p.get("bot")?.as_str()?.to_string(),
        action: p.get("action")?.as_str()?.to_string(),
        args: p.get("args").cloned().unwrap_or(Value::Null),
        message_id: message_id.map(str::to_string),
    })
}

/// Build the event for a card click: CardAction when the button names a perch action,
/// else a System event (topic `feishu.<kind>`) that routes can still match.
fn click_event(
    ctx: &Context,
    topic: &str,
    value: &Value,
    operator: Option<&str>,
    chat: Option<&str>,
    message_id: Option<&str>,
) -> Event {
    let action = perch_action(value, message_id);
    let mut e = Event::new(
        ctx.connector,
        if action.is_some() {
            EventKind::CardAction
        } else {
            EventKind::System
        },
        ctx.now,
    );
    if action.is_none() {
        e.topic = Some(format!("feishu.{topic}"));
    }
    e.card_action = action;
    e.sender = operator.map(|id| Person {
        id: id.to_string(),
        name: None,
    });
    e.chat = chat.map(|id| Chat {
        id: id.to_string(),
        chat_type: ChatType::Group,
    });
    e.message_id = message_id.map(str::to_string);
    e
}

/// The new `card.action.trigger` callback (refs §1.7).
fn card_trigger_event(ev: &Value, ctx: &Context) -> Event {
    static NULL: Value = Value::Null;
    click_event(
        ctx,
        "card.action.trigger",
        ev.pointer("/action/value").unwrap_or(&NULL),
        str_at(ev, "/operator/open_id"),
        str_at(ev, "/context/open_chat_id"),
        str_at(ev, "/context/open_message_id"),
    )
}

/// A legacy card request-URL callback (refs §1.7). It has no event id, so the dedupe key
/// is a hash of (message, operator, action, `token`): `token` is the card-update token
/// Feishu issues for each callback, so a retry of one callback (same body) counts once,
/// while a second click on the same button is a new callback with its own token and is
/// handled (a bot's Snooze pressed twice snoozes twice; Done is idempotent in the bot).
pub fn legacy_card_event(doc: &Value, ctx: &Context) -> Result<Event, InboundError> {
    static NULL: Value = Value::Null;
    let action = doc
        .get("action")
        .filter(|a| a.is_object())
        .ok_or_else(|| InboundError::Malformed("card callback without `action`".into()))?;
    let message_id = str_at(doc, "/open_message_id");
    let operator = str_at(doc, "/open_id").or_else(|| str_at(doc, "/user_id"));
    let mut e = click_event(
        ctx,
        "card.action.trigger_v1",
        action.get("value").unwrap_or(&NULL),
        operator,
        str_at(doc, "/open_chat_id"),
        message_id,
    );
    let mut h = Sha256::new();
    for part in [
        message_id.unwrap_or_default(),
        operator.unwrap_or_default(),
        str_at(doc, "/token").unwrap_or_default(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    // serde_json maps are sorted, so equal actions serialize to equal bytes.
    h.update(action.to_string().as_bytes());
    e.external_id = Some(format!("card:{}", hex::encode(&h.finalize()[..16])));
    e.payload = doc.clone();
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context<'static> {
        Context {
            connector: "feishu",
            bot_open_id: Some("ou_bot"),
            now: Utc::now(),
        }
    }

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/feishu/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        )
        .unwrap()
    }

    fn decode(doc: &Value) -> Event {
        to_event(doc, &envelope(doc).unwrap(), &ctx()).unwrap()
    }

    #[test]
    fn group_text_message_with_bot_mention() {
        let doc = fixture("message_group_mention.json");
        let e = decode(&doc);
        assert_eq!(e.kind, EventKind::Message);
        assert_eq!(e.external_id.as_deref(), Some("ev_group_1"));
        assert_eq!(e.text.as_deref(), Some("@Perch_Bot hello @Alice"));
        assert_eq!(
            e.chat,
            Some(Chat {
                id: "oc_group".into(),
                chat_type: ChatType::Group
            })
        );
        assert_eq!(e.sender.as_ref().unwrap().id, "ou_sender");
        assert_eq!(e.message_id.as_deref(), Some("om_1"));
        assert_eq!(e.mentions.len(), 2);
        assert!(e.mentions[0].is_bot && e.mentions[0].person.id == "ou_bot");
        assert!(!e.mentions[1].is_bot && e.mentions[1].person.name.as_deref() == Some("Alice"));
        assert!(e.is_addressed());
        // Thread facts stay in the payload; the verification token does not.
        assert_eq!(
            e.payload
                .pointer("/event/message/root_id")
                .and_then(Value::as_str),
            Some("om_root")
        );
        assert!(e.payload.pointer("/header/token").is_none());
    }

    #[test]
    fn mention_of_someone_else_is_not_the_bot() {
        let doc = fixture("message_group_mention.json");
        let other = Context {
            bot_open_id: Some("ou_other"),
            ..ctx()
        };
        let e = to_event(&doc, &envelope(&doc).unwrap(), &other).unwrap();
        assert!(!e.is_addressed());
        let unknown = Context {
            bot_open_id: None,
            ..ctx()
        };
        assert!(
            !to_event(&doc, &envelope(&doc).unwrap(), &unknown)
                .unwrap()
                .is_addressed()
        );
    }

    #[test]
    fn p2p_post_message_joins_runs() {
        let doc = fixture("message_p2p_post.json");
        let e = decode(&doc);
        assert_eq!(e.chat.as_ref().unwrap().chat_type, ChatType::Direct);
        assert_eq!(
            e.text.as_deref(),
            Some("Weekly\ngmv yesterday link\n**bold**")
        );
        assert!(e.is_addressed());
    }

    #[test]
    fn many_placeholders_do_not_collide() {
        let mut mentions = Vec::new();
        let mut text = String::new();
        for i in 1..=11 {
            mentions.push(json!({"key": format!("@_user_{i}"), "id": {"open_id": format!("ou_{i}")}, "name": format!("P{i}")}));
            text.push_str(&format!("@_user_{i} "));
        }
        let doc = json!({"schema":"2.0","header":{"event_id":"e","event_type":"im.message.receive_v1"},
            "event":{"message":{"chat_id":"oc","chat_type":"group","message_type":"text",
            "content": json!({"text": text}).to_string(), "mentions": mentions}}});
        let t = decode(&doc).text.unwrap();
        assert!(t.starts_with("@P1 @P2 ") && t.ends_with("@P10 @P11"), "{t}");
    }

    #[test]
    fn at_all_and_non_text_messages() {
        let doc = json!({"schema":"2.0","header":{"event_id":"e","event_type":"im.message.receive_v1"},
            "event":{"message":{"chat_id":"oc","chat_type":"group","message_type":"image",
            "content":"{\"image_key\":\"img_1\"}","mentions":[{"key":"@_all","id":{},"name":"所有人"}]}}});
        let e = decode(&doc);
        assert_eq!(e.text, None);
        assert_eq!(e.mentions[0].person.id, "all");
        assert!(!e.mentions[0].is_bot);
    }

    #[test]
    fn bot_added_disbanded_and_unknown_types_are_system_events() {
        let added = decode(&fixture("bot_added.json"));
        assert_eq!(added.kind, EventKind::System);
        assert_eq!(
            added.topic.as_deref(),
            Some("feishu.im.chat.member.bot.added_v1")
        );
        assert_eq!(added.chat.as_ref().unwrap().id, "oc_new");
        let gone = decode(
            &json!({"schema":"2.0","header":{"event_id":"d","event_type":"im.chat.disbanded_v1"},"event":{"chat_id":"oc_x"}}),
        );
        assert_eq!(gone.topic.as_deref(), Some("feishu.im.chat.disbanded_v1"));
        let unknown = decode(
            &json!({"schema":"2.0","header":{"event_id":"u","event_type":"contact.user.created_v3"},"event":{}}),
        );
        assert_eq!(
            unknown.topic.as_deref(),
            Some("feishu.contact.user.created_v3")
        );
        assert_eq!(unknown.external_id.as_deref(), Some("u"));
    }

    #[test]
    fn schema_1_envelope() {
        let doc = json!({"uuid":"41b5f371157e3d5341b38b20396e77a3","token":"secret","ts":"1608725718.8121","type":"event_callback",
            "event":{"type":"p2p_chat_create","app_id":"cli_x","chat_id":"oc_p2p"}});
        let env = envelope(&doc).unwrap();
        assert_eq!((env.schema, env.token), (Schema::V1, Some("secret")));
        let e = decode(&doc);
        assert_eq!(e.topic.as_deref(), Some("feishu.p2p_chat_create"));
        assert_eq!(
            e.external_id.as_deref(),
            Some("41b5f371157e3d5341b38b20396e77a3")
        );
        assert!(e.payload.get("token").is_none());
    }

    #[test]
    fn envelopes_missing_parts_are_malformed() {
        for doc in [
            json!({}),
            json!({"schema":"2.0","header":{"event_type":"x"}}),
            json!({"schema":"2.0","header":{"event_id":"x"}}),
            json!({"uuid":"u","event":{}}),
            json!([1]),
        ] {
            assert!(
                matches!(envelope(&doc), Err(InboundError::Malformed(_))),
                "{doc}"
            );
        }
        let no_message = json!({"schema":"2.0","header":{"event_id":"e","event_type":"im.message.receive_v1"},"event":{}});
        assert!(matches!(
            to_event(&no_message, &envelope(&no_message).unwrap(), &ctx()),
            Err(InboundError::Malformed(_))
        ));
    }

    #[test]
    fn challenge_detection() {
        let c = json!({"challenge":"abc","token":"t","type":"url_verification"});
        assert_eq!(challenge(&c), Some(("abc", Some("t"))));
        let b = json!({"schema":"2.0","header":{"token":"v"},"challenge":"1212","type":"url_verification"});
        assert_eq!(challenge(&b), Some(("1212", Some("v"))));
        assert_eq!(challenge(&json!({"type":"event_callback"})), None);
    }

    #[test]
    fn card_action_trigger_decodes_perch_value() {
        let doc = fixture("card_action_trigger.json");
        let e = decode(&doc);
        assert_eq!(e.kind, EventKind::CardAction);
        let a = e.card_action.unwrap();
        assert_eq!((a.bot.as_str(), a.action.as_str()), ("reminders", "done"));
        assert_eq!(a.args, json!({"id": "42"}));
        assert_eq!(a.message_id.as_deref(), Some("om_card"));
        assert_eq!(e.sender.unwrap().id, "ou_operator");
        assert_eq!(e.chat.unwrap().id, "oc_group");
        assert_eq!(e.external_id.as_deref(), Some("ev_card_1"));
    }

    #[test]
    fn foreign_card_click_is_a_system_event() {
        let doc = json!({"schema":"2.0","header":{"event_id":"c","event_type":"card.action.trigger"},
            "event":{"operator":{"open_id":"ou_o"},"action":{"value":{"cmd":"x"}},"context":{"open_chat_id":"oc"}}});
        let e = decode(&doc);
        assert_eq!(
            (e.kind, e.topic.as_deref()),
            (EventKind::System, Some("feishu.card.action.trigger"))
        );
    }

    #[test]
    fn legacy_card_dedupe_key_is_stable_per_click() {
        let doc = fixture("card_legacy.json");
        let a = legacy_card_event(&doc, &ctx()).unwrap();
        let b = legacy_card_event(&doc, &ctx()).unwrap();
        assert_eq!(a.kind, EventKind::CardAction);
        assert_eq!(a.card_action.as_ref().unwrap().action, "snooze");
        assert_eq!(a.external_id, b.external_id);
        let mut other = doc.clone();
        other["open_id"] = json!("ou_someone_else");
        assert_ne!(
            legacy_card_event(&other, &ctx()).unwrap().external_id,
            a.external_id
        );
        // The same button pressed again: a new callback with its own card-update token.
        let mut again = doc.clone();
        again["token"] = json!("c-another-callback-token");
        assert_ne!(
            legacy_card_event(&again, &ctx()).unwrap().external_id,
            a.external_id
        );
        assert!(matches!(
            legacy_card_event(&json!({"open_id":"x"}), &ctx()),
            Err(InboundError::Malformed(_))
        ));
    }
}
