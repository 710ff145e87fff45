//! A `/sync` answer → neutral `Event`s and the invites to accept. Pure: JSON in, events
//! out, no I/O (the sync loop, `sync.rs`, looks up the cards that reactions and replies
//! point at before calling this, and passes them in).
//!
//! Flow: homeserver → sync loop → **decode** → journal → router.
//!
//! What becomes an event (everything else in the answer is dropped, not journaled):
//! - `m.room.message` with msgtype `m.text` (or `m.emote`) from anyone but the bot:
//!   a Message event; `m.notice` is what bots send (the spec: "automated clients
//!   should not respond to notices"), so notices and edits (`m.replace`) are dropped;
//! - `m.reaction` (`m.annotation`) on a card perch sent, whose key is one of the card's
//!   buttons: a CardAction for the bot that sent the card;
//! - a reply (`m.in_reply_to`) to such a card whose text is one of its button labels:
//!   the same CardAction (for clients without reactions).
//!
//! Every event's external id is the Matrix event id, so a batch ingested again after
//! a crash (its `next_batch` was not stored yet) is a journal duplicate.

use crate::event::{CardAction, Chat, ChatType, Event, EventKind, Mention, Person};
use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// One perch button on a card sent to Matrix: pressing it is reacting with `key` (or
/// replying to the card with `key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardButton {
    /// The reaction key: the button's label.
    pub key: String,
    pub bot: String,
    pub action: String,
    #[serde(default)]
    pub args: Value,
}

/// What decoding needs besides the answer.
pub struct Context<'a> {
    pub connector: &'a str,
    /// The bot's own MXID (`@perch:example.org`): its messages are skipped, and mentions
    /// of it address perch.
    pub bot_user_id: &'a str,
    /// Names people write for the bot without a pill (`perch: help`): its display name
    /// and localpart.
    pub bot_names: &'a [String],
    /// Rooms known to be direct chats (the invite said `is_direct`).
    pub direct_rooms: &'a HashSet<String>,
    /// The buttons of the cards that this answer's reactions and replies point at, by
    /// the card's event id.
    pub cards: &'a HashMap<String, Vec<CardButton>>,
    pub now: DateTime<Utc>,
}

/// An invitation for the bot.
#[derive(Debug, Clone, PartialEq)]
pub struct Invite {
    pub room_id: String,
    pub is_direct: bool,
    pub inviter: Option<String>,
}

/// What one `/sync` answer holds for perch.
#[derive(Debug, Default)]
pub struct Batch {
    pub next_batch: String,
    pub events: Vec<Event>,
    pub invites: Vec<Invite>,
    /// Rooms whose timeline the server cut (`limited`): some events were skipped.
    pub gaps: Vec<String>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The joined rooms' timeline events, with their room ids.
fn timeline(sync: &Value) -> impl Iterator<Item = (&str, &Value)> {
    sync.pointer("/rooms/join")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .flat_map(|(room, r)| {
            r.pointer("/timeline/events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |e| (room.as_str(), e))
        })
}

/// The event ids that reactions and replies in `sync` point at: the cards whose
/// buttons the caller must look up before `decode`.
pub fn referenced_events(sync: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (_, e) in timeline(sync) {
        let target = match str_at(e, "/type") {
            Some("m.reaction") => str_at(e, "/content/m.relates_to/event_id"),
            Some("m.room.message") => str_at(e, "/content/m.relates_to/m.in_reply_to/event_id"),
            _ => None,
        };
        if let Some(t) = target
            && !out.iter().any(|o| o == t)
        {
            out.push(t.to_string());
        }
    }
    out
}

/// Decode a `/sync` answer. `first` is true for a sync without `since` (perch's very
/// first): its timelines are history from before perch ran, and are not answered.
pub fn decode(sync: &Value, ctx: &Context, first: bool) -> Result<Batch, String> {
    let next_batch = str_at(sync, "/next_batch")
        .ok_or("the /sync answer has no next_batch")?
        .to_string();
    let mut batch = Batch {
        next_batch,
        ..Default::default()
    };
    for (room, r) in sync
        .pointer("/rooms/invite")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let me = r
            .pointer("/invite_state/events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| {
                str_at(e, "/type") == Some("m.room.member")
                    && str_at(e, "/state_key") == Some(ctx.bot_user_id)
            });
        batch.invites.push(Invite {
            room_id: room.clone(),
            is_direct: me
                .and_then(|e| e.pointer("/content/is_direct"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            inviter: me.and_then(|e| str_at(e, "/sender")).map(str::to_string),
        });
    }
    if first {
        return Ok(batch);
    }
    for (room, r) in sync
        .pointer("/rooms/join")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if r.pointer("/timeline/limited").and_then(Value::as_bool) == Some(true) {
            batch.gaps.push(room.clone());
        }
    }
    for (room, e) in timeline(sync) {
        if let Some(event) = decode_event(room, e, ctx) {
            batch.events.push(event);
        }
    }
    Ok(batch)
}

/// One timeline event → an event for perch, or `None` when perch ignores it.
pub fn decode_event(room: &str, e: &Value, ctx: &Context) -> Option<Event> {
    let sender = str_at(e, "/sender")?;
    let event_id = str_at(e, "/event_id")?;
    if sender == ctx.bot_user_id || e.pointer("/unsigned/redacted_because").is_some() {
        return None;
    }
    let content = e.get("content").filter(|c| c.is_object())?;
    let chat = Chat {
        id: room.to_string(),
        chat_type: if ctx.direct_rooms.contains(room) {
            ChatType::Direct
        } else {
            ChatType::Group
        },
    };
    let mut out = match str_at(e, "/type")? {
        "m.reaction" => {
            let rel = content.get("m.relates_to")?;
            if str_at(rel, "/rel_type") != Some("m.annotation") {
                return None;
            }
            let card = str_at(rel, "/event_id")?;
            let key = str_at(rel, "/key")?;
            click(card, key, ctx)?
        }
        "m.room.message" => {
            let msgtype = str_at(content, "/msgtype")?;
            if !matches!(msgtype, "m.text" | "m.emote")
                || str_at(content, "/m.relates_to/rel_type") == Some("m.replace")
            {
                return None;
            }
            let body = str_at(content, "/body").unwrap_or_default();
            let replied = str_at(content, "/m.relates_to/m.in_reply_to/event_id");
            let own_text = strip_reply_fallback(body);
            if let Some(card) = replied
                && let Some(c) = click(card, own_text.trim(), ctx)
            {
                c
            } else {
                let mut m = Event::new(ctx.connector, EventKind::Message, ctx.now);
                let (text, mentions) = decode_text(
                    &own_text,
                    str_at(content, "/formatted_body"),
                    content
                        .pointer("/m.mentions/user_ids")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                    ctx,
                );
                m.text = Some(text.trim().to_string());
                m.mentions = mentions;
                m.message_id = Some(event_id.to_string());
                m
            }
        }
        _ => return None,
    };
    out.chat = Some(chat);
    out.sender = Some(Person {
        id: sender.to_string(),
        name: None,
    });
    out.external_id = Some(event_id.to_string());
    let mut payload = e.clone();
    if let Some(o) = payload.as_object_mut() {
        o.insert("room_id".into(), Value::String(room.to_string()));
    }
    out.payload = payload;
    Some(out)
}

/// A press of the button `key` on the card `card`, if it is one of perch's.
fn click(card: &str, key: &str, ctx: &Context) -> Option<Event> {
    let button = ctx
        .cards
        .get(card)?
        .iter()
        .find(|b| b.key == key || b.key.eq_ignore_ascii_case(key))?;
    let mut e = Event::new(ctx.connector, EventKind::CardAction, ctx.now);
    e.card_action = Some(CardAction {
        bot: button.bot.clone(),
        action: button.action.clone(),
        args: button.args.clone(),
        message_id: Some(card.to_string()),
    });
    e.message_id = Some(card.to_string());
    Some(e)
}

/// A reply's body without the quoted fallback (`> <@a:b> original` lines and the blank
/// line after them) that clients put before the answer.
pub fn strip_reply_fallback(body: &str) -> String {
    let mut lines = body.lines().peekable();
    let mut quoted = false;
    while lines.peek().is_some_and(|l| l.starts_with('>')) {
        lines.next();
        quoted = true;
    }
    if quoted && lines.peek().is_some_and(|l| l.trim().is_empty()) {
        lines.next();
    }
    lines.collect::<Vec<_>>().join("\n")
}

/// A pill: `<a href="https://matrix.to/#/@user:server">Name</a>`.
static PILL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"<a\s+href=["']https://matrix\.to/#/(@[^"'?/]+)[^"']*["'][^>]*>(.*?)</a>"#)
        .expect("pill regex")
});

/// A user id written out (`@name:server.org`, `@bot:localhost:8448`).
pub static MXID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"@[a-zA-Z0-9._=/+\-]+:[a-zA-Z0-9.\-]+(:\d+)?").expect("mxid regex")
});

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A message's text as perch reads it: every mention written as its MXID (pills, whose
/// visible text is a display name; the bot's name at the start, `perch: help`, the
/// classic convention), and the mentions: pills, written-out MXIDs and `m.mentions`
/// user ids, the bot's marked `is_bot`.
pub fn decode_text<'a>(
    body: &str,
    formatted: Option<&str>,
    mentioned: impl Iterator<Item = &'a str>,
    ctx: &Context,
) -> (String, Vec<Mention>) {
    let mut text = body.to_string();
    let mut ids: Vec<String> = Vec::new();
    for cap in PILL.captures_iter(formatted.unwrap_or_default()) {
        let id = percent_encoding::percent_decode_str(&cap[1])
            .decode_utf8_lossy()
            .into_owned();
        let shown = html_unescape(&cap[2]);
        if !shown.is_empty()
            && let Some(at) = text.find(&shown)
        {
            let end = at + shown.len();
            text.replace_range(at..end, &id);
        }
        ids.push(id);
    }
    // `perch: help` / `perch, help` / `@perch help`, with no pill.
    let trimmed = text.trim_start();
    let pilled = trimmed.starts_with(ctx.bot_user_id);
    for name in ctx.bot_names.iter().filter(|n| !n.is_empty() && !pilled) {
        let candidate = trimmed.strip_prefix('@').unwrap_or(trimmed);
        if candidate.len() >= name.len()
            && candidate.is_char_boundary(name.len())
            && candidate[..name.len()].eq_ignore_ascii_case(name)
        {
            let rest = &candidate[name.len()..];
            if rest.starts_with([':', ',']) || rest.starts_with(char::is_whitespace) {
                text = format!(
                    "{} {}",
                    ctx.bot_user_id,
                    rest.trim_start_matches([':', ','])
                );
                break;
            }
        }
    }
    // `@bot:server: help`: the separator after a mention is not part of the command.
    let mut cleaned = String::new();
    let mut last = 0;
    for m in MXID.find_iter(&text) {
        cleaned.push_str(&text[last..m.end()]);
        last = m.end();
        if text[last..].starts_with([':', ',']) {
            last += 1;
            cleaned.push(' ');
        }
        let id = m.as_str().to_string();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    cleaned.push_str(&text[last..]);
    for id in mentioned {
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }
    let mentions = ids
        .into_iter()
        .map(|id| Mention {
            is_bot: id == ctx.bot_user_id,
            // The name is the handle as written after `@` (what `command::parse` matches);
            // the id the full MXID, as invites and direct messages take it.
            person: Person {
                name: Some(id.trim_start_matches('@').to_string()),
                id,
            },
        })
        .collect();
    (cleaned, mentions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOT: &str = "@perch:example.org";

    fn with_ctx<T>(cards: HashMap<String, Vec<CardButton>>, f: impl FnOnce(&Context) -> T) -> T {
        let names = vec!["perch".to_string()];
        let direct = HashSet::from(["!dm:example.org".to_string()]);
        let ctx = Context {
            connector: "matrix",
            bot_user_id: BOT,
            bot_names: &names,
            direct_rooms: &direct,
            cards: &cards,
            now: Utc::now(),
        };
        f(&ctx)
    }

    fn sync(room: &str, events: Vec<Value>) -> Value {
        json!({ "next_batch": "s2", "rooms": { "join": { room: { "timeline": { "events": events, "limited": false } } } } })
    }

    fn message(id: &str, sender: &str, content: Value) -> Value {
        json!({ "type": "m.room.message", "event_id": id, "sender": sender,
                "origin_server_ts": 1, "content": content })
    }

    #[test]
    fn a_pill_mention_addresses_the_bot_and_the_command_follows() {
        let doc = sync(
            "!r:example.org",
            vec![message(
                "$1",
                "@ann:example.org",
                json!({ "msgtype": "m.text", "body": "perch: gmv today",
                    "format": "org.matrix.custom.html",
                    "formatted_body": "<a href=\"https://matrix.to/#/@perch:example.org\">perch</a>: gmv today",
                    "m.mentions": { "user_ids": [BOT] } }),
            )],
        );
        let batch = with_ctx(HashMap::new(), |c| decode(&doc, c, false)).unwrap();
        assert_eq!(batch.next_batch, "s2");
        let e = &batch.events[0];
        assert!(e.is_addressed());
        assert_eq!(e.text.as_deref(), Some("@perch:example.org  gmv today"));
        let cmd = crate::command::parse(e).unwrap();
        assert_eq!((cmd.name.as_str(), cmd.rest()), ("gmv", "today".into()));
        assert_eq!(e.external_id.as_deref(), Some("$1"));
        assert_eq!(e.message_id.as_deref(), Some("$1"));
        assert_eq!(e.chat.as_ref().unwrap().chat_type, ChatType::Group);
    }

    #[test]
    fn plain_name_mentions_dms_and_other_people() {
        with_ctx(HashMap::new(), |c| {
            let (t, m) = decode_text("Perch, help", None, std::iter::empty(), c);
            assert_eq!(t, "@perch:example.org  help");
            assert!(m[0].is_bot);
            let (t, m) = decode_text(
                "remind @bob:example.org tomorrow",
                None,
                std::iter::empty(),
                c,
            );
            assert_eq!(t, "remind @bob:example.org tomorrow");
            assert!(!m[0].is_bot);
            // Only m.mentions: addressed, text untouched.
            let (_, m) = decode_text("hi", None, [BOT].into_iter(), c);
            assert!(m[0].is_bot);
            // "perchance" is not a mention.
            let (_, m) = decode_text("perchance", None, std::iter::empty(), c);
            assert!(m.is_empty());
        });
        let doc = sync(
            "!dm:example.org",
            vec![message(
                "$2",
                "@ann:example.org",
                json!({ "msgtype": "m.text", "body": "help" }),
            )],
        );
        let batch = with_ctx(HashMap::new(), |c| decode(&doc, c, false)).unwrap();
        assert!(batch.events[0].is_addressed(), "a DM addresses the bot");
    }

    #[test]
    fn own_messages_notices_edits_and_history_are_skipped() {
        let doc = sync(
            "!r:example.org",
            vec![
                message("$1", BOT, json!({ "msgtype": "m.text", "body": "mine" })),
                message(
                    "$2",
                    "@other-bot:example.org",
                    json!({ "msgtype": "m.notice", "body": "beep" }),
                ),
                message(
                    "$3",
                    "@ann:example.org",
                    json!({ "msgtype": "m.text", "body": "* fixed",
                        "m.relates_to": { "rel_type": "m.replace", "event_id": "$0" } }),
                ),
                json!({ "type": "m.room.topic", "event_id": "$4", "sender": "@ann:example.org", "content": {} }),
            ],
        );
        let batch = with_ctx(HashMap::new(), |c| decode(&doc, c, false)).unwrap();
        assert!(batch.events.is_empty(), "{:?}", batch.events);
        let doc = sync(
            "!r:example.org",
            vec![message(
                "$5",
                "@ann:example.org",
                json!({ "msgtype": "m.text", "body": "old" }),
            )],
        );
        let batch = with_ctx(HashMap::new(), |c| decode(&doc, c, true)).unwrap();
        assert!(batch.events.is_empty(), "the first sync is history");
        assert!(with_ctx(HashMap::new(), |c| decode(&json!({}), c, false)).is_err());
    }

    #[test]
    fn invites_are_listed_with_is_direct() {
        let doc = json!({ "next_batch": "s1", "rooms": { "invite": { "!new:example.org": {
            "invite_state": { "events": [
                { "type": "m.room.member", "state_key": BOT, "sender": "@ann:example.org",
                  "content": { "membership": "invite", "is_direct": true } } ] } } } } });
        let batch = with_ctx(HashMap::new(), |c| decode(&doc, c, true)).unwrap();
        assert_eq!(
            batch.invites,
            vec![Invite {
                room_id: "!new:example.org".into(),
                is_direct: true,
                inviter: Some("@ann:example.org".into())
            }]
        );
    }

    #[test]
    fn reactions_and_reply_commands_on_a_card_are_clicks() {
        let cards = HashMap::from([(
            "$card".to_string(),
            vec![CardButton {
                key: "Done".into(),
                bot: "reminders".into(),
                action: "done".into(),
                args: json!({ "id": 4 }),
            }],
        )]);
        let doc = sync(
            "!r:example.org",
            vec![
                json!({ "type": "m.reaction", "event_id": "$r1", "sender": "@ann:example.org",
                    "content": { "m.relates_to": { "rel_type": "m.annotation", "event_id": "$card", "key": "Done" } } }),
                json!({ "type": "m.reaction", "event_id": "$r2", "sender": "@ann:example.org",
                    "content": { "m.relates_to": { "rel_type": "m.annotation", "event_id": "$card", "key": "👍" } } }),
                message(
                    "$m",
                    "@ann:example.org",
                    json!({ "msgtype": "m.text", "body": "> <@perch:example.org> Reminder\n\ndone",
                        "m.relates_to": { "m.in_reply_to": { "event_id": "$card" } } }),
                ),
            ],
        );
        assert_eq!(referenced_events(&doc), vec!["$card".to_string()]);
        let batch = with_ctx(cards, |c| decode(&doc, c, false)).unwrap();
        assert_eq!(batch.events.len(), 2, "the 👍 is not a button");
        for (e, id) in batch.events.iter().zip(["$r1", "$m"]) {
            assert_eq!(e.kind, EventKind::CardAction);
            let a = e.card_action.as_ref().unwrap();
            assert_eq!((a.bot.as_str(), a.action.as_str()), ("reminders", "done"));
            assert_eq!(a.message_id.as_deref(), Some("$card"));
            assert_eq!(e.external_id.as_deref(), Some(id));
            assert_eq!(e.chat.as_ref().unwrap().id, "!r:example.org");
        }
    }
}
