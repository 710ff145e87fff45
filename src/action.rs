//! What bots ask for: `Action`s. The router resolves each into an `Outbound` operation
//! for a named connector, and the outbox delivers it.
//!
//! Flow: bot → **Action** → (router resolves) → **Outbound** → outbox → connector (out).

use serde::{Deserialize, Serialize};

/// What a message says: plain text, markdown, or a card (the neutral card JSON that
/// the card engine produces; each connector renders it to its platform's format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageBody {
    Text { text: String },
    Markdown { text: String },
    Card { card: serde_json::Value },
}

impl MessageBody {
    pub fn text(s: impl Into<String>) -> Self {
        MessageBody::Text { text: s.into() }
    }
    pub fn markdown(s: impl Into<String>) -> Self {
        MessageBody::Markdown { text: s.into() }
    }
    /// A plain-text rendering, for platforms and logs that only take text.
    pub fn plain_text(&self) -> String {
        match self {
            MessageBody::Text { text } | MessageBody::Markdown { text } => text.clone(),
            MessageBody::Card { card } => crate::cards::text_fallback(card),
        }
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Target {
    /// A chat by its platform id.
    Chat { id: String },
    /// A person, by the platform's id for them. `id_type` says which kind of id when a
    /// platform has several (`open_id`, `user_id`, `email` on Feishu); `None` is the
    /// connector's default.
    Person {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_type: Option<String>,
    },
}

impl Target {
    pub fn chat(id: impl Into<String>) -> Self {
        Target::Chat { id: id.into() }
    }
    pub fn person(id: impl Into<String>) -> Self {
        Target::Person {
            id: id.into(),
            id_type: None,
        }
    }
    /// Id used for per-chat ordering and rate limits.
    pub fn lane_id(&self) -> String {
        match self {
            Target::Chat { id } => id.clone(),
            Target::Person { id, .. } => format!("person:{id}"),
        }
    }
}

/// Specification of a chat to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, Default)]
pub struct ChatSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Member ids (see `Target::Person`'s `id_type`).
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What a bot returns. `connector: None` means "the connector the event came from".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Send a message to a chat or a person.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connector: Option<String>,
        to: Target,
        body: MessageBody,
    },
    /// Answer in the chat the event came from (in the thread of its message, where the
    /// platform has threads).
    Reply { body: MessageBody },
    /// Replace the content of a message perch sent earlier (a card update).
    Update {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connector: Option<String>,
        message_id: String,
        body: MessageBody,
    },
    /// Create a chat. Bots that need the new chat's id use `BotContext::create_chat`
    /// instead, which awaits the result.
    CreateChat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connector: Option<String>,
        spec: ChatSpec,
    },
    /// Add members to a chat.
    AddMembers {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connector: Option<String>,
        chat_id: String,
        members: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_id_type: Option<String>,
    },
    /// Answer a card click with a short pop-up for the person who clicked (Feishu's
    /// toast; the web chat's notice). Only meaningful for `card_action` events; for any
    /// other event it is sent as a reply instead. The platform waits for it only a short
    /// while (`server.click_answer_ms`), so a bot answers a click first and works after.
    Toast { toast: Toast },
    /// Carry out `then` once per `key` for this bot, whichever event asks: its outbox
    /// key is `once/<bot>/<key>` instead of `<event>/<bot>/<index>`, and the outbox never
    /// queues a key twice. For bots that scan their state on a tick (reminders): if a
    /// crash makes them decide again, the same reminder is not sent twice.
    Once { key: String, then: Box<Action> },
}

/// A pop-up answer to a card click.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
pub struct Toast {
    #[serde(default)]
    pub kind: ToastKind,
    pub text: String,
}

/// Feishu's four toast types (refs §1.7); the web chat colours them.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ToastKind {
    #[default]
    Info,
    Success,
    Warning,
    Error,
}

impl ToastKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ToastKind::Info => "info",
            ToastKind::Success => "success",
            ToastKind::Warning => "warning",
            ToastKind::Error => "error",
        }
    }
}

/// What a bot answered to a card click, for the platform's synchronous answer: a toast
/// and/or the clicked card's replacement (the neutral card of an `Update` of the clicked
/// message; that update is also queued in the outbox, so the card changes even when the
/// platform's answer window is missed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClickAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toast: Option<Toast>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<serde_json::Value>,
}

impl ClickAnswer {
    pub fn is_empty(&self) -> bool {
        self.toast.is_none() && self.card.is_none()
    }
}

impl Action {
    pub fn reply(body: MessageBody) -> Self {
        Action::Reply { body }
    }
    pub fn reply_text(text: impl Into<String>) -> Self {
        Action::Reply {
            body: MessageBody::text(text),
        }
    }
    /// A markdown reply. Values from people or payloads go in through
    /// `cards::markdown::code` or `cards::markdown::escape`.
    pub fn reply_markdown(text: impl Into<String>) -> Self {
        Action::Reply {
            body: MessageBody::markdown(text),
        }
    }
    /// A pop-up for the person who clicked a card button.
    pub fn toast(kind: ToastKind, text: impl Into<String>) -> Self {
        Action::Toast {
            toast: Toast {
                kind,
                text: text.into(),
            },
        }
    }
    /// This action, carried out at most once per `key` (see `Action::Once`).
    pub fn once(self, key: impl Into<String>) -> Self {
        Action::Once {
            key: key.into(),
            then: Box::new(self),
        }
    }
    pub fn send(to: Target, body: MessageBody) -> Self {
        Action::Send {
            connector: None,
            to,
            body,
        }
    }
}

/// A resolved operation for one connector: what the outbox stores and delivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    Send {
        to: Target,
        body: MessageBody,
        /// Platform message id to reply to (threaded reply), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    Update {
        /// Chat the message is in, when known (ordering and rate limits).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat_id: Option<String>,
        message_id: String,
        body: MessageBody,
    },
    CreateChat {
        spec: ChatSpec,
    },
    AddMembers {
        chat_id: String,
        members: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_id_type: Option<String>,
    },
}

impl Operation {
    /// The chat this operation belongs to, for per-chat order and rate limits.
    pub fn lane_id(&self) -> String {
        match self {
            Operation::Send { to, .. } => to.lane_id(),
            Operation::Update {
                chat_id,
                message_id,
                ..
            } => chat_id
                .clone()
                .unwrap_or_else(|| format!("message:{message_id}")),
            Operation::CreateChat { spec } => format!("create:{}", spec.name),
            Operation::AddMembers { chat_id, .. } => chat_id.clone(),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Send { .. } => "send",
            Operation::Update { .. } => "update",
            Operation::CreateChat { .. } => "create_chat",
            Operation::AddMembers { .. } => "add_members",
        }
    }
}

/// What a connector reports after carrying out an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Delivered {
    /// The platform's id for the message or chat that was created, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Extra facts worth keeping. Convention for chat creation and adding members:
    /// `"not_added": [ids]` lists the members that are not in the chat afterwards.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}
