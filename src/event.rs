//! The neutral `Event`: what every connector turns an inbound request into, what the
//! journal stores, and what the router and bots see. Platform details stay in `payload`.
//!
//! Flow: connector (in) → **Event** → journal → router → bots.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// perch's own id for an event: a UUID v7, so ids sort by arrival time (good store keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Message,
        EventKind::CardAction,
        EventKind::System,
        EventKind::Tick,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::CardAction => "card_action",
            EventKind::System => "system",
            EventKind::Tick => "tick",
        }
    }
}

/// Whether a chat is a group or a one-to-one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChatType {
    #[default]
    Group,
    Direct,
}

/// A chat on some connector's platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// The platform's id (`oc_…` on Feishu, a room id in the web chat).
    pub id: String,
    #[serde(default)]
    pub chat_type: ChatType,
}

/// A person or bot on a platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Person {
    /// The platform's id for them (open_id, web-chat name, e-mail …).
    pub id: String,
    /// Display name, when the platform gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An @mention inside a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mention {
    pub person: Person,
    /// True when the mentioned account is one of ours (a perch bot, or the platform
    /// app that perch answers for).
    #[serde(default)]
    pub is_bot: bool,
}

/// A button press on a card: which bot's card, which action, with what arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

    /// The key per-chat ordering uses: events of one chat are handled in order.
    pub fn lane_key(&self) -> String {
        match &self.chat {
            Some(chat) => format!("{}/{}", self.connector, chat.id),
            None => format!("{}/-", self.connector),
        }
    }
}
