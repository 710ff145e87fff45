//! The neutral `Event`: what every connector turns an inbound request into, what the
//! journal stores, and what the router and bots see. Platform details stay in `payload`.
//!
//! Flow: connector (in) → **Event** → journal → router → bots.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The deepest JSON perch accepts inside an event (its `payload`, a card action's
/// `args`): `[[1]]` is 2 levels deep. Checked before an event is acknowledged
/// (`Event::check_storable`), so that whatever is acknowledged can be read back.
///
/// Why 64 and not serde_json's own limit: serde_json refuses to read anything nested
/// 128 levels deep, and every stored record wraps the JSON it received in more levels
/// (the event: +1 for `payload`, +2 for a card's `args`; an outbox item holding a card
/// rendered from the payload: a few more). A body that parsed fine on its own could then
/// be unreadable once stored, which is how a 127-level body once poisoned the journal.
/// 64 leaves room for every wrapper (`STORED_DEPTH_HEADROOM`).
pub const MAX_JSON_DEPTH: usize = 64;

/// Levels a stored record may add around an event's JSON. The depth limit plus this
/// stays below serde_json's recursion limit (a compile-time check below).
pub(crate) const STORED_DEPTH_HEADROOM: usize = 32;

/// serde_json's recursion limit: it reads at most this many levels minus one.
pub(crate) const SERDE_JSON_DEPTH_LIMIT: usize = 128;

const _: () = assert!(MAX_JSON_DEPTH + STORED_DEPTH_HEADROOM < SERDE_JSON_DEPTH_LIMIT);

/// The largest event perch stores, serialised (well below the ingest log's record limit,
/// `store::ingest_log::MAX_PAYLOAD`, so every acknowledged event can be replayed).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Why an event cannot be stored as it is. The HTTP edge answers it with a 4xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    #[error("JSON nested more than {limit} levels deep (in `{field}`)")]
    TooDeep { field: &'static str, limit: usize },
    #[error("event is {size} bytes as JSON; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
}

/// How deep `v` nests, counting each array or object as one level, up to `limit + 1`
/// (it stops looking there, so a hostile value cannot make it recurse far).
pub(crate) fn json_depth(v: &serde_json::Value, limit: usize) -> usize {
    fn walk(v: &serde_json::Value, here: usize, limit: usize) -> usize {
        if here > limit {
            return here;
        }
        match v {
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| walk(i, here + 1, limit))
                .max()
                .unwrap_or(here + 1)
                .max(here + 1),
            serde_json::Value::Object(map) => map
                .values()
                .map(|i| walk(i, here + 1, limit))
                .max()
                .unwrap_or(here + 1)
                .max(here + 1),
            _ => here,
        }
    }
    walk(v, 0, limit)
}

/// Counts bytes written, to size an event's JSON without keeping it.
struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// perch's own id for an event: a UUID v7, so ids sort by arrival time (good store keys).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(EventId)
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What sort of thing happened.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A person wrote in a chat (possibly @mentioning a bot).
    Message,
    /// A person pressed a button on a card perch sent.
    CardAction,
    /// An internal system posted a topic (`crm.opportunity.created`, `push`, …).
    System,
    /// The scheduler fired a job's slot.
    Tick,
    /// Actions a bot posted later for an earlier event (`bots/http_bot.rs`); routes do
    /// not apply: it goes to the bot named in `payload.bot`.
    BotActions,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Message,
        EventKind::CardAction,
        EventKind::System,
        EventKind::Tick,
        EventKind::BotActions,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::CardAction => "card_action",
            EventKind::System => "system",
            EventKind::Tick => "tick",
            EventKind::BotActions => "bot_actions",
        }
    }
}

/// Whether a chat is a group or a one-to-one conversation.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
    Default,
)]
#[serde(rename_all = "snake_case")]
pub enum ChatType {
    #[default]
    Group,
    Direct,
}

/// A chat on some connector's platform.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct Chat {
    /// The platform's id (`oc_…` on Feishu, a room id in the web chat).
    pub id: String,
    #[serde(default)]
    pub chat_type: ChatType,
}

/// A person or bot on a platform.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
    Default,
)]
pub struct Person {
    /// The platform's id for them (open_id, web-chat name, e-mail …).
    pub id: String,
    /// Display name, when the platform gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An @mention inside a message.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct Mention {
    pub person: Person,
    /// True when the mentioned account is one of ours (a perch bot, or the platform
    /// app that perch answers for).
    #[serde(default)]
    pub is_bot: bool,
}

/// A button press on a card: which bot's card, which action, with what arguments.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct CardAction {
    /// The bot that sent the card (the button's value names it).
    pub bot: String,
    /// The action's name (`done`, `snooze`, …).
    pub action: String,
    /// The action's arguments, as the card put them in the button value.
    #[serde(default)]
    pub args: serde_json::Value,
    /// The platform id of the message that carries the card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// The neutral event.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct Event {
    pub id: EventId,
    /// The configured name of the connector it came through (`web`, `github`, `feishu`).
    pub connector: String,
    pub kind: EventKind,
    /// The topic for system events (`crm.opportunity.created`), the job name for ticks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<Chat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Person>,
    /// Message text with mentions written as `@name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Mention>,
    /// The platform message id, so bots can reply in its thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Set for card-action events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_action: Option<CardAction>,
    /// The decoded request body (or a connector-specific object).
    #[serde(default)]
    pub payload: serde_json::Value,
    /// The platform's or sender's id for this delivery (`X-GitHub-Delivery`, Feishu
    /// `event_id`): the dedupe key together with the connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

impl Event {
    /// A bare event of `kind` from `connector`, received now. Connectors fill in the rest.
    pub fn new(connector: &str, kind: EventKind, received_at: DateTime<Utc>) -> Self {
        Event {
            id: EventId::new(),
            connector: connector.to_string(),
            kind,
            topic: None,
            chat: None,
            sender: None,
            text: None,
            mentions: Vec::new(),
            message_id: None,
            card_action: None,
            payload: serde_json::Value::Null,
            external_id: None,
            received_at,
        }
    }

    /// True when the message addresses one of our bots: it @mentions one, or it is a
    /// direct chat (where every message is for the bot).
    pub fn is_addressed(&self) -> bool {
        self.mentions.iter().any(|m| m.is_bot)
            || self
                .chat
                .as_ref()
                .is_some_and(|c| c.chat_type == ChatType::Direct)
    }

    /// Refuse an event the store could not read back: JSON nested deeper than
    /// `MAX_JSON_DEPTH`, or larger than `MAX_EVENT_BYTES`. The journal calls this before
    /// storing anything, for every connector.
    pub fn check_storable(&self) -> Result<(), Unstorable> {
        let deep = |field, v| {
            if json_depth(v, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
                Err(Unstorable::TooDeep {
                    field,
                    limit: MAX_JSON_DEPTH,
                })
            } else {
                Ok(())
            }
        };
        deep("payload", &self.payload)?;
        if let Some(action) = &self.card_action {
            deep("card_action.args", &action.args)?;
        }
        let mut size = CountingWriter(0);
        // Serialising an Event cannot fail (string keys only); if it did, the store's
        // own serialisation would report it.
        let _ = serde_json::to_writer(&mut size, self);
        if size.0 > MAX_EVENT_BYTES {
            return Err(Unstorable::TooLarge {
                size: size.0,
                limit: MAX_EVENT_BYTES,
            });
        }
        Ok(())
    }

    /// The key per-chat ordering uses: events of one chat are handled in order.
    pub fn lane_key(&self) -> String {
        match &self.chat {
            Some(chat) => format!("{}/{}", self.connector, chat.id),
            None => format!("{}/-", self.connector),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn nested(depth: usize) -> Value {
        // Built by hand: serde_json would not parse the deepest ones.
        let mut v = Value::Array(Vec::new());
        for _ in 1..depth {
            v = Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(json_depth(&Value::Null, 64), 0);
        assert_eq!(json_depth(&serde_json::json!([]), 64), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": []}]}), 64), 4);
        assert_eq!(json_depth(&nested(64), 64), 64);
        assert_eq!(json_depth(&nested(127), 64), 65, "stops one past the limit");
    }

    /// What `check_storable` lets through, the decoder reads back: at the limit in
    /// both places, the event round-trips through serde_json; one past is refused.
    #[test]
    fn every_storable_event_reads_back() {
        let mut e = Event::new("hooks", EventKind::CardAction, Utc::now());
        e.payload = nested(MAX_JSON_DEPTH);
        e.card_action = Some(CardAction {
            bot: "b".into(),
            action: "a".into(),
            args: nested(MAX_JSON_DEPTH),
            message_id: None,
        });
        e.check_storable().unwrap();
        // Wrapped in the headroom's worth of levels too.
        let mut wrapped = serde_json::to_value(&e).unwrap();
        for _ in 0..STORED_DEPTH_HEADROOM - 3 {
            wrapped = Value::Array(vec![wrapped]);
        }
        let text = serde_json::to_string(&wrapped).unwrap();
        serde_json::from_str::<Value>(&text).expect("readable with the headroom");
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);

        e.payload = nested(MAX_JSON_DEPTH + 1);
        assert_eq!(
            e.check_storable(),
            Err(Unstorable::TooDeep {
                field: "payload",
                limit: MAX_JSON_DEPTH
            })
        );
        e.payload = Value::Null;
        e.card_action.as_mut().unwrap().args = nested(127);
        assert!(matches!(
            e.check_storable(),
            Err(Unstorable::TooDeep {
                field: "card_action.args",
                ..
            })
        ));
        e.card_action = None;
        e.text = Some("x".repeat(MAX_EVENT_BYTES));
        assert!(matches!(
            e.check_storable(),
            Err(Unstorable::TooLarge { .. })
        ));
    }
}
