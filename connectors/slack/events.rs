//! Slack envelopes → neutral `Event`s. Pure: a verified request body in, events out; no
//! I/O, no secrets (the caller checks the signature and the timestamp first).
//!
//! Flow: connector (in) [verify → **decode**] → journal → router.
//!
//! Shapes follow `../shared/refs/chat-platforms.md` §5:
//! - Events API (JSON): `url_verification` `{"challenge"}`, and `event_callback`
//!   envelopes `{"event_id","event":{…},"authorizations":[{"user_id","is_bot"}]}` with
//!   `app_mention` and `message` events;
//! - interactivity (form-encoded `payload=<JSON>`): `block_actions` clicks.

use crate::connectors::InboundError;
use crate::event::{CardAction, Chat, ChatType, Event, EventKind, Mention, Person};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What decoding needs to know besides the document.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The configured connector name (events carry it).
    pub connector: &'a str,
    /// The app's bot user id from the config (`U…`), when set. Envelopes also name it
    /// in `authorizations[].user_id`; both count.
    pub bot_user_id: Option<&'a str>,
    pub now: DateTime<Utc>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A URL-verification request's challenge (refs §5).
pub fn challenge(doc: &Value) -> Option<&str> {
    if doc.get("type").and_then(Value::as_str) != Some("url_verification") {
        return None;
    }
    doc.get("challenge").and_then(Value::as_str)
}

/// The document as it is journaled: the deprecated verification `token` removed (Slack
/// still sends it; it is a credential of sorts and nobody downstream needs it).
fn payload_of(doc: &Value) -> Value {
    let mut p = doc.clone();
    if let Some(o) = p.as_object_mut() {
        o.remove("token");
    }
    p
}

/// The bot user ids an envelope names: the config's, and `authorizations[]` entries
/// with `is_bot` (refs §5: the envelope carries `authorizations` or `authed_users`).
fn bot_ids(doc: &Value, ctx: &Context) -> Vec<String> {
    let mut ids: Vec<String> = ctx.bot_user_id.map(str::to_string).into_iter().collect();
    for a in doc
        .get("authorizations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if a.get("is_bot").and_then(Value::as_bool) == Some(true)
            && let Some(id) = str_at(a, "/user_id")
        {
            ids.push(id.to_string());
        }
    }
    ids
}

/// Decode an `event_callback` envelope into one event. `app_mention` and `message`
/// become Message events; anything else (and messages with a `subtype` or a `bot_id`,
/// such as perch's own posts echoed back in a DM) a System event with topic
/// `slack.<type>[.<subtype>]`, journaled but not answered by message routes.
pub fn event_callback(doc: &Value, ctx: &Context) -> Result<Event, InboundError> {
    let event_id = str_at(doc, "/event_id")
        .ok_or_else(|| InboundError::Malformed("event_callback without event_id".into()))?;
    let ev = doc
        .get("event")
        .filter(|e| e.is_object())
        .ok_or_else(|| InboundError::Malformed("event_callback without `event`".into()))?;
    let event_type = str_at(ev, "/type")
        .ok_or_else(|| InboundError::Malformed("event without `type`".into()))?;
    let from_a_bot = ev.get("bot_id").is_some() || ev.get("subtype").is_some();
    let mut e = match event_type {
        "app_mention" if !from_a_bot => message_event(ev, doc, ctx, true)?,
        "message" if !from_a_bot => message_event(ev, doc, ctx, false)?,
        _ => {
            let mut e = Event::new(ctx.connector, EventKind::System, ctx.now);
            e.topic = Some(match str_at(ev, "/subtype") {
                Some(sub) => format!("slack.{event_type}.{sub}"),
                None => format!("slack.{event_type}"),
            });
            if let Some(ch) = str_at(ev, "/channel") {
                e.chat = Some(Chat {
                    id: ch.to_string(),
                    chat_type: chat_type(ev, ch),
                });
            }
            e.sender = str_at(ev, "/user").map(person);
            e
        }
    };
    e.external_id = Some(event_id.to_string());
    e.payload = payload_of(doc);
    Ok(e)
}

fn person(id: &str) -> Person {
    Person {
        id: id.to_string(),
        name: None,
    }
}

/// `channel_type: "im"` (or a `D…` channel id) is a direct message.
fn chat_type(ev: &Value, channel: &str) -> ChatType {
    match str_at(ev, "/channel_type") {
        Some("im") => ChatType::Direct,
        Some(_) => ChatType::Group,
        None if channel.starts_with('D') => ChatType::Direct,
        None => ChatType::Group,
    }
}

/// An `app_mention` (`mention_event`) or a `message`. Mentions of the bot count only in
/// `app_mention` events and direct messages: an app subscribed to `message.channels`
/// gets a channel mention twice (as `message` and as `app_mention`), and only the
/// `app_mention` may address the bot, or it would answer twice.
fn message_event(
    ev: &Value,
    doc: &Value,
    ctx: &Context,
    mention_event: bool,
) -> Result<Event, InboundError> {
    let channel = str_at(ev, "/channel")
        .ok_or_else(|| InboundError::Malformed("message event without channel".into()))?;
    let mut e = Event::new(ctx.connector, EventKind::Message, ctx.now);
    let ct = if mention_event {
        ChatType::Group
    } else {
        chat_type(ev, channel)
    };
    e.chat = Some(Chat {
        id: channel.to_string(),
        chat_type: ct,
    });
    // What a reply threads under (`reply_to` → `thread_ts`): the thread's root when the
    // message is in one (Slack: "avoid using a reply's ts value; use its parent
    // instead"), else the message itself — except a top-level direct message, which is
    // answered in the DM as a conversation, not in a thread (its `ts` stays in the
    // payload).
    let thread_ts = str_at(ev, "/thread_ts");
    e.message_id = match (thread_ts, ct) {
        (Some(root), _) => Some(root.to_string()),
        (None, ChatType::Direct) => None,
        (None, ChatType::Group) => str_at(ev, "/ts").map(str::to_string),
    };
    e.sender = str_at(ev, "/user").map(person);
    let bots = bot_ids(doc, ctx);
    let flag_bots = mention_event || ct == ChatType::Direct;
    let (text, mut mentions) = decode_text(str_at(ev, "/text").unwrap_or_default());
    for m in &mut mentions {
        m.is_bot = flag_bots && bots.contains(&m.person.id);
    }
    // An app_mention is about this app by definition: when no bot id is known yet, its
    // first user mention is the bot.
    if mention_event
        && bots.is_empty()
        && let Some(first) = mentions.first_mut()
    {
        first.is_bot = true;
    }
    e.text = Some(text.trim().to_string());
    e.mentions = mentions;
    Ok(e)
}

/// Slack's message text → perch's: `<@U1>` / `<@U1|name>` become `@U1` / `@name` (and a
/// `Mention`), `<#C1|general>` → `#general`, `<!here>` → `@here`, `<url|label>` →
/// `label (url)`, `<url>` → `url`; `&lt; &gt; &amp;` unescaped.
pub fn decode_text(text: &str) -> (String, Vec<Mention>) {
    let mut out = String::new();
    let mut mentions = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&unescape(&rest[..start]));
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else {
            out.push_str(&unescape(&rest[start..]));
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (target, label) = match inner.split_once('|') {
            Some((t, l)) => (t, Some(l)),
            None => (inner, None),
        };
        if let Some(id) = target.strip_prefix('@') {
            let handle = label
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join("_"))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| id.to_string());
            out.push('@');
            out.push_str(&handle);
            mentions.push(Mention {
                person: Person {
                    id: id.to_string(),
                    name: Some(handle),
                },
                is_bot: false,
            });
        } else if let Some(ch) = target.strip_prefix('#') {
            out.push('#');
            out.push_str(&unescape(label.unwrap_or(ch)));
        } else if let Some(special) = target.strip_prefix('!') {
            out.push('@');
            out.push_str(&unescape(label.unwrap_or(special)));
        } else {
            match label {
                Some(l) => {
                    out.push_str(&unescape(l));
                    out.push_str(" (");
                    out.push_str(&unescape(target));
                    out.push(')');
                }
                None => out.push_str(&unescape(target)),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(&unescape(rest));
    (out, mentions)
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The perch action in a button's `value`: the JSON text `{"bot","action","args"}` the
/// Block Kit renderer writes (`src/cards/render/slack.rs`).
fn perch_action(value: Option<&str>, message_ts: Option<&str>) -> Option<CardAction> {
    let v: Value = serde_json::from_str(value?).ok()?;
    Some(CardAction {
        bot: v.get("bot")?.as_str()?.to_string(),
        action: v.get("action")?.as_str()?.to_string(),
        args: v.get("args").cloned().unwrap_or(Value::Null),
        message_id: message_ts.map(str::to_string),
    })
}

/// An interactivity payload (already URL-decoded JSON) → one event. A `block_actions`
/// click on a perch button is a CardAction for the bot its value names, with the
/// message's `ts` as `message_id` and its channel as the chat (what `chat.update`
/// needs). Anything else (other payload types, other apps' buttons) is a System event
/// with topic `slack.<type>`.
///
/// Interactions carry no event id, so the dedupe key is a hash of what identifies one
/// click: `trigger_id` (unique per interaction), the user, the message and the
/// action's `action_ts`. A redelivered click counts once; a second click is handled.
pub fn interaction(doc: &Value, ctx: &Context) -> Result<Event, InboundError> {
    let kind = str_at(doc, "/type")
        .ok_or_else(|| InboundError::Malformed("interaction payload without `type`".into()))?;
    let action = doc
        .get("actions")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let message_ts = str_at(doc, "/container/message_ts").or_else(|| str_at(doc, "/message/ts"));
    let channel = str_at(doc, "/container/channel_id").or_else(|| str_at(doc, "/channel/id"));
    let card_action = match (kind, action) {
        ("block_actions", Some(a)) => {
            perch_action(a.get("value").and_then(Value::as_str), message_ts)
        }
        _ => None,
    };
    let mut e = Event::new(
        ctx.connector,
        if card_action.is_some() {
            EventKind::CardAction
        } else {
            EventKind::System
        },
        ctx.now,
    );
    if card_action.is_none() {
        e.topic = Some(format!("slack.{kind}"));
    }
    e.card_action = card_action;
    e.sender = str_at(doc, "/user/id").map(person);
    e.chat = channel.map(|id| Chat {
        id: id.to_string(),
        chat_type: if id.starts_with('D') {
            ChatType::Direct
        } else {
            ChatType::Group
        },
    });
    e.message_id = message_ts.map(str::to_string);
    let mut h = Sha256::new();
    for part in [
        str_at(doc, "/trigger_id").unwrap_or_default(),
        str_at(doc, "/user/id").unwrap_or_default(),
        message_ts.unwrap_or_default(),
        action
            .and_then(|a| str_at(a, "/action_ts"))
            .unwrap_or_default(),
        action
            .and_then(|a| str_at(a, "/action_id"))
            .unwrap_or_default(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    e.external_id = Some(format!("interaction:{}", hex::encode(&h.finalize()[..16])));
    e.payload = payload_of(doc);
    Ok(e)
}

/// The `payload` field of a form-encoded interactivity body
/// (`application/x-www-form-urlencoded`, refs §5), decoded.
pub fn form_payload(body: &[u8]) -> Result<Value, InboundError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| InboundError::Malformed("form body is not UTF-8".into()))?;
    let raw = text
        .split('&')
        .find_map(|pair| pair.strip_prefix("payload="))
        .ok_or_else(|| InboundError::Malformed("form body without `payload`".into()))?;
    let plus_as_space = raw.replace('+', " ");
    let json = percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map_err(|_| InboundError::Malformed("`payload` is not UTF-8".into()))?;
    let doc: Value = serde_json::from_str(&json)
        .map_err(|e| InboundError::Malformed(format!("`payload` is not JSON: {e}")))?;
    if doc.is_object() {
        Ok(doc)
    } else {
        Err(InboundError::Malformed(
            "`payload` is not a JSON object".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context<'static> {
        Context {
            connector: "slack",
            bot_user_id: None,
            now: Utc::now(),
        }
    }

    #[test]
    fn mention_text_and_links_are_decoded() {
        let (t, m) = decode_text(
            "<@U_BOT> gmv &lt;today&gt; <@U2|ann lee> <#C1|general> <!here> <https://x.y|site> <https://z>",
        );
        assert_eq!(
            t,
            "@U_BOT gmv <today> @ann_lee #general @here site (https://x.y) https://z"
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].person.id, "U2");
        assert_eq!(m[1].person.name.as_deref(), Some("ann_lee"));
        assert_eq!(decode_text("a < b").0, "a < b");
    }

    #[test]
    fn app_mention_addresses_the_bot_named_in_authorizations() {
        let doc = json!({
            "type": "event_callback", "event_id": "Ev1", "token": "legacy",
            "authorizations": [{ "user_id": "U_BOT", "is_bot": true }],
            "event": { "type": "app_mention", "user": "U1", "text": "<@U_BOT> help <@U2>",
                       "ts": "1.2", "channel": "C1", "thread_ts": "1.0" }
        });
        let e = event_callback(&doc, &ctx()).unwrap();
        assert_eq!(e.kind, EventKind::Message);
        assert!(e.is_addressed());
        assert!(!e.mentions[1].is_bot);
        assert_eq!(e.message_id.as_deref(), Some("1.0"), "the thread's root");
        assert_eq!(e.external_id.as_deref(), Some("Ev1"));
        assert!(e.payload.get("token").is_none());
    }

    #[test]
    fn channel_messages_do_not_address_the_bot_but_dms_do() {
        let doc = |ev: Value| {
            json!({ "type": "event_callback", "event_id": "Ev2",
                    "authorizations": [{ "user_id": "U_BOT", "is_bot": true }], "event": ev })
        };
        let ch = event_callback(
            &doc(
                json!({ "type": "message", "channel_type": "channel", "user": "U1",
                         "text": "<@U_BOT> hi", "ts": "1.1", "channel": "C1" }),
            ),
            &ctx(),
        )
        .unwrap();
        assert!(!ch.is_addressed(), "the app_mention twin answers");
        let dm = event_callback(
            &doc(
                json!({ "type": "message", "channel_type": "im", "user": "U1",
                         "text": "help", "ts": "1.1", "channel": "D1" }),
            ),
            &ctx(),
        )
        .unwrap();
        assert!(dm.is_addressed());
        assert_eq!(
            dm.message_id, None,
            "a DM is answered in the DM, not in a thread"
        );
        let own = event_callback(
            &doc(
                json!({ "type": "message", "channel_type": "im", "bot_id": "B1",
                         "text": "my answer", "ts": "1.3", "channel": "D1" }),
            ),
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            own.kind,
            EventKind::System,
            "perch's own posts are not commands"
        );
    }

    #[test]
    fn block_actions_carry_the_perch_action() {
        let doc = json!({
            "type": "block_actions", "user": { "id": "U1" }, "trigger_id": "t1",
            "container": { "type": "message", "message_ts": "9.9", "channel_id": "C1" },
            "actions": [{ "action_id": "perch:1", "type": "button", "action_ts": "10.0",
                          "value": "{\"bot\":\"rem\",\"action\":\"done\",\"args\":{\"id\":4}}" }]
        });
        let e = interaction(&doc, &ctx()).unwrap();
        assert_eq!(e.kind, EventKind::CardAction);
        let a = e.card_action.as_ref().unwrap();
        assert_eq!((a.bot.as_str(), a.action.as_str()), ("rem", "done"));
        assert_eq!(a.message_id.as_deref(), Some("9.9"));
        assert_eq!(e.chat.as_ref().unwrap().id, "C1");
        let again = interaction(&doc, &ctx()).unwrap();
        assert_eq!(e.external_id, again.external_id);
        let mut other = doc.clone();
        other["actions"][0]["value"] = json!("42");
        assert_eq!(interaction(&other, &ctx()).unwrap().kind, EventKind::System);
    }

    #[test]
    fn form_payload_is_url_decoded() {
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%2C%22x%22%3A%22a+b%22%7D";
        assert_eq!(
            form_payload(body).unwrap(),
            json!({ "type": "block_actions", "x": "a b" })
        );
        assert!(form_payload(b"nope=1").is_err());
        assert!(form_payload(b"payload=%7B").is_err());
    }
}
