//! `kind = "local"`: the built-in web chat, so perch runs with no platform account.
//!
//! A real connector, not a demo side door:
//! - **in**: a person's message (`POST /chat/api/rooms/{room}/messages`) is stored in the
//!   room's history and put in the journal as an `Event` (`Journal::accept` flushes the
//!   one store, so both are durable) before the browser gets its 200. The router and bots
//!   then see it like any platform's message. Card button clicks become `CardAction`
//!   events the same way.
//! - **out**: bots' answers come back through `execute` (send, update, create a room, add
//!   members), keyed by the outbox's idempotency key so a retry never posts twice.
//! - **live**: every new message, update and room is broadcast to the browsers over SSE,
//!   and announced to the other replicas sharing the store (`crate::live`): each relays
//!   it to its own browsers, read back from the store with the room's audience as stored
//!   (`Inner::relay`), so a browser on any replica hears what happened on any other.
//!
//! History, rooms and indexes live in the store's key-value space, namespace
//! `web/<connector name>` (see `keys` below), and survive restarts. The UI (plain
//! HTML/CSS/JS, no build step) is compiled into the binary; see `api.rs`.
//!
//! Flow: **browser → connector (in)** → journal → router → bots → outbox →
//! **connector (out) → browser**.

mod api;
pub mod markdown;

pub(crate) use api::openapi;

use super::*;
use crate::action::{ChatSpec, ClickAnswer, MessageBody, Target};
use crate::cards::markdown as md;
use crate::event::{CardAction, Chat, ChatType, EventKind, Mention, Person};
use crate::journal::{Accepted, JournalError};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use rust_i18n::t;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// `[connectors.<name>] kind = "local"`
///
/// Only one local connector per perch: its UI is served at `/` and its API at
/// `/chat/api`, which two of them cannot share.
#[derive(Debug, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Title shown in the browser tab and the sidebar (default "perch").
    #[serde(default)]
    pub title: Option<String>,
    /// Language of perch's built-in texts for people on this connector: `en` or
    /// `zh-CN` (default: `[server] locale`). A bot's own `locale` wins.
    #[serde(default)]
    pub locale: Option<crate::i18n::Locale>,
}

/// The room every web chat has, created on first use.
pub const DEFAULT_ROOM: &str = "general";
/// Longest display name a person can pick.
pub const MAX_AUTHOR_CHARS: usize = 40;
/// Longest message a person can post.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest room name.
pub const MAX_ROOM_NAME_CHARS: usize = 80;

/// A room (what other platforms call a group chat). Direct rooms hold one person's
/// conversation with the bots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Room {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub direct: bool,
    /// A private group: like a direct room, only its members read and write it.
    #[serde(default)]
    pub private: bool,
    /// Who was invited (sign-in names; in dev mode, any picked name).
    #[serde(default)]
    pub members: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl Room {
    /// Direct rooms and private groups are their members' only; other rooms are public.
    pub fn members_only(&self) -> bool {
        self.direct || self.private
    }

    /// Whether `person` may read and write this room.
    pub fn open_to(&self, person: &str) -> bool {
        !self.members_only() || self.members.iter().any(|m| m == person)
    }

    /// A stand-in for a room that is no longer stored: members-only, with no members.
    fn gone(id: &str) -> Room {
        Room {
            id: id.to_string(),
            name: id.to_string(),
            direct: false,
            private: true,
            members: Vec::new(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            created_by: None,
        }
    }

    /// Who may see live news of this room: `None` means everyone.
    fn audience(&self) -> Option<Arc<[String]>> {
        self.members_only().then(|| self.members.clone().into())
    }

    /// Fill in the event's chat (this room) and sender (`author`): what every event a
    /// person makes in the web chat carries.
    fn address(&self, event: &mut Event, author: String) {
        event.chat = Some(Chat {
            id: self.id.clone(),
            chat_type: if self.direct {
                ChatType::Direct
            } else {
                ChatType::Group
            },
        });
        event.sender = Some(Person {
            id: author.clone(),
            name: Some(author),
        });
    }
}

/// One message in a room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// A UUID v7: sorts by time, so history keys scan in order.
    pub id: String,
    pub room: String,
    pub author: String,
    pub from_bot: bool,
    pub body: MessageBody,
    pub at: DateTime<Utc>,
    /// The message this one answers (a bot's reply), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime<Utc>>,
}

/// Where a message is, for the client-id and idempotency-key indexes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MessageRef {
    room: String,
    id: String,
}

/// The last message of a room, kept so the room list can show unread markers without
/// scanning every history.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastMessage {
    id: String,
    at: DateTime<Utc>,
}

/// What went wrong in the web chat's API. Input errors are 4xx and change nothing.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Keys in the connector's namespace. Room ids are escaped (`%` and `/`) so a room
/// called `a/b` cannot reach into another room's prefix.
mod keys {
    pub fn room_part(room: &str) -> String {
        room.replace('%', "%25").replace('/', "%2F")
    }
    /// `room/<room>` → `Room`
    pub fn room(room: &str) -> String {
        format!("room/{}", room_part(room))
    }
    /// `msg/<room>/<uuid v7>` → `ChatMessage`, in time order.
    pub fn messages(room: &str) -> String {
        format!("msg/{}/", room_part(room))
    }
    pub fn message(room: &str, id: &str) -> String {
        format!("msg/{}/{id}", room_part(room))
    }
    /// `where/<message id>` → room id, to find a message by id alone (updates).
    pub fn location(id: &str) -> String {
        format!("where/{id}")
    }
    /// `last/<room>` → `LastMessage`
    pub fn last(room: &str) -> String {
        format!("last/{}", room_part(room))
    }
    /// `person/<name>` → `{}`: someone who has written here (so `@name` is a person).
    pub fn person(name: &str) -> String {
        format!("person/{name}")
    }
    /// `client/<client id>` → `MessageRef`: the browser's id for a post, so a double
    /// submit returns the first message.
    pub fn client(client_id: &str) -> String {
        format!("client/{client_id}")
    }
    /// `sent/<outbox key>` → `MessageRef`: a bot message already posted under that key.
    pub fn sent(key: &str) -> String {
        format!("sent/{key}")
    }
    /// `created/<outbox key>` → room id: a room already created under that key.
    pub fn created(key: &str) -> String {
        format!("created/{key}")
    }
}

/// What the SSE stream carries: `message`, `update`, `room`.
#[derive(Debug, Clone)]
pub struct Live {
    pub kind: &'static str,
    pub data: Value,
    /// Who may receive it: the room's members for a direct room or private group,
    /// `None` for everyone.
    pub audience: Option<Arc<[String]>>,
}

pub struct Inner {
    name: String,
    title: String,
    ns: String,
    env: ConnectorEnv,
    /// Language of the notices this connector writes itself (`notice_for`).
    locale: &'static str,
    live: broadcast::Sender<Live>,
}

/// The web-chat connector. Cheap to clone; the HTTP routes hold a clone.
#[derive(Clone)]
pub struct Local {
    inner: Arc<Inner>,
}

impl Local {
    pub fn new(name: &str, config: LocalConfig, env: &ConnectorEnv) -> Self {
        let (live, _) = broadcast::channel(1024);
        let local = Local {
            inner: Arc::new(Inner {
                name: name.to_string(),
                title: config
                    .title
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or_else(|| "perch".to_string()),
                ns: format!("web/{name}"),
                locale: config.locale.unwrap_or(env.default_locale).as_str(),
                env: env.clone(),
                live,
            }),
        };
        crate::live::relay_notices(&*env.store, &local.inner, |inner, notice| async move {
            inner.relay(notice).await;
        });
        local
    }
}

/// The bot that sent an outbox item (its key names it: `crate::store::key_bot`); the
/// router's own hints and keys of any other shape are shown as "perch".
pub fn author_from_key(key: &str) -> String {
    crate::store::key_bot(key).unwrap_or("perch").to_string()
}

/// A room id from its name: lower-case letters and digits (any script), the rest as `-`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.chars().count() >= 48 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "room".to_string()
    } else {
        out
    }
}

/// Each `@word` in `text`: a configured bot (`is_bot`, named as configured) or a person.
pub fn mentions(text: &str, bots: &[String]) -> Vec<Mention> {
    let mut out: Vec<Mention> = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-' || c == '.';
    let mut i = 0;
    while i < chars.len() {
        // Only at the start of a word: `a@b.c` is an e-mail address, not a mention.
        if chars[i] == '@' && (i == 0 || !word(chars[i - 1])) {
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && word(chars[end]) {
                end += 1;
            }
            let name: String = chars[start..end].iter().collect();
            let name = name.trim_end_matches(['.', '-']).to_string();
            if !name.is_empty() {
                let bot = bots.iter().find(|b| b.eq_ignore_ascii_case(&name));
                let id = bot.cloned().unwrap_or(name);
                if !out.iter().any(|m| m.person.id == id) {
                    out.push(Mention {
                        person: Person {
                            id: id.clone(),
                            name: Some(id),
                        },
                        is_bot: bot.is_some(),
                    });
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Names perch itself writes as authors (its own hints, the scheduler): nobody may post
/// under them, or a person could pass for perch.
pub const RESERVED_NAMES: [&str; 2] = ["perch", "scheduler"];

/// A name as people type it, normalised: trimmed, each run of whitespace one space.
/// Refused: control characters, and invisible ones (zero-width, bidi controls), which
/// make two different names look alike or reorder the text around them.
pub fn normalise_name(what: &str, name: &str) -> Result<String, ChatError> {
    if name.chars().any(char::is_control) {
        return Err(ChatError::BadInput(format!(
            "{what} contains control characters (newline, tab, …)"
        )));
    }
    if name.chars().any(crate::telemetry::needs_escape) {
        return Err(ChatError::BadInput(format!(
            "{what} contains invisible characters (zero-width or bidi controls)"
        )));
    }
    Ok(name.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Two room names that mean the same room: equal once normalised, ignoring case.
pub fn same_room_name(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    norm(a) == norm(b)
}

/// A display name: 1..=40 characters, no control or invisible characters, not a bot's
/// or perch's own. Returns it normalised (`normalise_name`).
pub fn check_author(author: &str, bots: &[String]) -> Result<String, ChatError> {
    let a = normalise_name("author", author)?;
    let a = a.as_str();
    if a.is_empty() {
        return Err(ChatError::BadInput("author is empty: pick a name".into()));
    }
    if a.chars().count() > MAX_AUTHOR_CHARS {
        return Err(ChatError::BadInput(format!(
            "author is longer than {MAX_AUTHOR_CHARS} characters"
        )));
    }
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(a)) {
        return Err(ChatError::BadInput(format!(
            "the name `{a}` is perch's own; pick another"
        )));
    }
    if bots.iter().any(|b| b.eq_ignore_ascii_case(a)) {
        return Err(ChatError::BadInput(format!(
            "the name `{a}` belongs to a bot; pick another"
        )));
    }
    Ok(a.to_string())
}

/// A browser's id for one submit (so a double submit is deduplicated): 1..=100
/// printable characters.
fn check_client_id(id: &str) -> Result<(), ChatError> {
    if id.is_empty()
        || id.chars().count() > 100
        || id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ChatError::BadInput(
            "client_id must be 1 to 100 characters without spaces".into(),
        ));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), ChatError> {
    if text.trim().is_empty() {
        return Err(ChatError::BadInput("text is empty".into()));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ChatError::BadInput(format!(
            "text is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

/// The HTML a browser shows for a message body. Cards go through the card engine's
/// `html` renderer (which escapes all text); until it returns HTML, the card's text.
pub fn body_html(body: &MessageBody) -> String {
    match body {
        MessageBody::Text { text } => markdown::text_to_html(text),
        MessageBody::Markdown { text } => markdown::markdown_to_html(text),
        MessageBody::Card { card } => match crate::cards::render("html", card) {
            Ok(Value::String(html)) => format!(r#"<div class="card">{html}</div>"#),
            _ => format!(
                r#"<div class="card">{}</div>"#,
                markdown::text_to_html(&crate::cards::text_fallback(card))
            ),
        },
    }
}

/// Whether `body` is a card with an action button that is exactly `action` (bot,
/// action and arguments).
fn card_has_button(body: &MessageBody, action: &CardAction) -> bool {
    let MessageBody::Card { card } = body else {
        return false;
    };
    let Ok(card) = serde_json::from_value::<crate::cards::model::Card>(card.clone()) else {
        return false;
    };
    card.elements.iter().any(|e| match e {
        crate::cards::model::Element::Buttons { buttons } => buttons.iter().any(|b| {
            b.action.as_ref().is_some_and(|a| {
                a.bot == action.bot && a.action == action.action && a.args == action.args
            })
        }),
        _ => false,
    })
}

/// A message as the browser gets it: the stored fields plus its finished `html`.
pub fn message_view(m: &ChatMessage) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("html".into(), Value::String(body_html(&m.body)));
    }
    v
}

impl Inner {
    fn bots(&self) -> &[String] {
        &self.env.bot_names
    }

    /// Tell the open pages about `room` (a new message, an update, the room itself);
    /// only its members hear of a members-only room.
    /// The other replicas are told the kind and id only (`relay` reads the rest).
    fn broadcast(&self, kind: &'static str, data: Value, room: &Room) {
        if let Some(id) = data["id"].as_str() {
            self.env.store.announce(
                crate::live::Topic::WebChat,
                &format!("{} {kind} {id}", self.name),
            );
        }
        self.broadcast_here(kind, data, room);
    }

    /// Tell this replica's open pages only.
    fn broadcast_here(&self, kind: &'static str, data: Value, room: &Room) {
        // No receivers is fine: nobody has the page open.
        let _ = self.live.send(Live {
            kind,
            data,
            audience: room.audience(),
        });
    }

    /// Pass news from another replica (`broadcast` there) to this replica's pages: the
    /// message or room read from the store, to the room's audience as stored.
    async fn relay(&self, notice: crate::live::Notice) {
        use crate::live::{Notice, Topic};
        let about = match notice {
            Notice::Changed {
                topic: Topic::WebChat,
                about,
            } => about,
            Notice::Changed { .. } => return,
            Notice::Resync => {
                // Pages reload what they show (the browser's `catchUp`).
                let _ = self.live.send(Live {
                    kind: "resync",
                    data: json!({}),
                    audience: None,
                });
                return;
            }
        };
        let mut parts = about.splitn(3, ' ');
        let (Some(connector), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        // Not ours, or no page open here: nothing to read.
        if connector != self.name || self.live.receiver_count() == 0 {
            return;
        }
        let read = async {
            match kind {
                "message" | "update" => {
                    let Some(msg) = self.message(id).await? else {
                        return Ok(None);
                    };
                    let room = self
                        .room(&msg.room)
                        .await?
                        .unwrap_or_else(|| Room::gone(&msg.room));
                    let kind = if kind == "message" {
                        "message"
                    } else {
                        "update"
                    };
                    Ok(Some((kind, message_view(&msg), room)))
                }
                "room" => match self.room(id).await? {
                    Some(room) => Ok(Some(("room", self.room_view(&room).await?, room))),
                    None => Ok(None),
                },
                _ => Ok(None),
            }
        };
        match read.await {
            Ok(Some((kind, data, room))) => self.broadcast_here(kind, data, &room),
            // Gone since (or another perch version's kind): nothing to show.
            Ok(None) => {}
            Err::<_, StoreError>(e) => {
                tracing::warn!(connector = %self.name, error = %e, "could not read web-chat news from another replica; pages will reload");
                let _ = self.live.send(Live {
                    kind: "resync",
                    data: json!({}),
                    audience: None,
                });
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.env.store.kv_get(&self.ns, key).await? {
            Some(raw) => Ok(Some(serde_json::from_slice(&raw)?)),
            None => Ok(None),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.env
            .store
            .kv_put(&self.ns, key, &serde_json::to_vec(value)?)
            .await
    }

    /// A room by id. `general` always exists: until something is stored for it, it is
    /// the default below.
    async fn room(&self, id: &str) -> Result<Option<Room>, StoreError> {
        match self.get_json::<Room>(&keys::room(id)).await? {
            Some(r) => Ok(Some(r)),
            None if id == DEFAULT_ROOM => Ok(Some(Room {
                id: DEFAULT_ROOM.into(),
                name: DEFAULT_ROOM.into(),
                direct: false,
                private: false,
                members: Vec::new(),
                created_at: DateTime::<Utc>::UNIX_EPOCH,
                created_by: None,
            })),
            None => Ok(None),
        }
    }

    async fn rooms(&self) -> Result<Vec<Room>, StoreError> {
        let mut rooms: Vec<Room> = Vec::new();
        for (_, raw) in self.env.store.kv_scan(&self.ns, "room/").await? {
            rooms.push(serde_json::from_slice(&raw)?);
        }
        if !rooms.iter().any(|r| r.id == DEFAULT_ROOM)
            && let Some(general) = self.room(DEFAULT_ROOM).await?
        {
            rooms.push(general);
        }
        rooms.sort_by(|a, b| {
            (a.id != DEFAULT_ROOM, a.name.to_lowercase())
                .cmp(&(b.id != DEFAULT_ROOM, b.name.to_lowercase()))
        });
        Ok(rooms)
    }

    /// A room for the browser: the stored fields plus its last message (unread markers).
    async fn room_view(&self, room: &Room) -> Result<Value, StoreError> {
        let mut v = serde_json::to_value(room)?;
        let last: Option<LastMessage> = self.get_json(&keys::last(&room.id)).await?;
        if let (Some(obj), Some(last)) = (v.as_object_mut(), last) {
            obj.insert("last_message_id".into(), json!(last.id));
            obj.insert("last_at".into(), json!(last.at));
        }
        Ok(v)
    }

    /// Store a new room under a free id derived from `name` (`name`, `name-2`, …).
    async fn create_room(
        &self,
        name: &str,
        direct: bool,
        private: bool,
        members: Vec<String>,
        by: Option<String>,
    ) -> Result<Room, StoreError> {
        let base = slug(name);
        let mut n = 1;
        loop {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let room = Room {
                id: id.clone(),
                name: name.to_string(),
                direct,
                private,
                members: members.clone(),
                created_at: self.env.clock.now(),
                created_by: by.clone(),
            };
            let raw = serde_json::to_vec(&room)?;
            // Claim the id atomically: two creators of one name get two rooms, not one
            // overwritten room. `general` is taken even before it is stored.
            if id != DEFAULT_ROOM
                && self
                    .env
                    .store
                    .kv_compare_and_swap(&self.ns, &keys::room(&id), None, Some(&raw))
                    .await?
            {
                return Ok(room);
            }
            n += 1;
        }
    }

    /// Store `room` at its id (creating or replacing it).
    async fn save_room(&self, room: &Room) -> Result<(), StoreError> {
        self.put_json(&keys::room(&room.id), room).await
    }

    async fn history(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let mut out = Vec::new();
        for (key, raw) in self
            .env
            .store
            .kv_scan(&self.ns, &keys::messages(room))
            .await?
        {
            if let Some(after) = after {
                // Keys end with the message id, a UUID v7, which sorts by time.
                if key.rsplit('/').next().is_none_or(|id| id <= after) {
                    continue;
                }
            }
            out.push(serde_json::from_slice::<ChatMessage>(&raw)?);
        }
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }

    async fn message(&self, id: &str) -> Result<Option<ChatMessage>, StoreError> {
        let Some(room) = self.get_json::<String>(&keys::location(id)).await? else {
            return Ok(None);
        };
        self.get_json(&keys::message(&room, id)).await
    }

    /// Write a message and its indexes (location, the room's last message).
    async fn store_message(&self, m: &ChatMessage) -> Result<(), StoreError> {
        self.put_json(&keys::message(&m.room, &m.id), m).await?;
        self.put_json(&keys::location(&m.id), &m.room).await?;
        let last_key = keys::last(&m.room);
        let new = serde_json::to_vec(&LastMessage {
            id: m.id.clone(),
            at: m.at,
        })?;
        // Only move `last` forward, also when two posts race.
        for _ in 0..8 {
            let old = self.env.store.kv_get(&self.ns, &last_key).await?;
            if let Some(raw) = &old {
                let old_last: LastMessage = serde_json::from_slice(raw)?;
                if old_last.id >= m.id {
                    return Ok(());
                }
            }
            if self
                .env
                .store
                .kv_compare_and_swap(&self.ns, &last_key, old.as_deref(), Some(&new))
                .await?
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Undo `store_message` (used when the journal refused the event).
    async fn unstore_message(&self, m: &ChatMessage) -> Result<(), StoreError> {
        self.env
            .store
            .kv_delete(&self.ns, &keys::message(&m.room, &m.id))
            .await?;
        self.env
            .store
            .kv_delete(&self.ns, &keys::location(&m.id))
            .await
    }

    /// A person posts `text` in `room`. Returns the message and whether it was a repeat
    /// of an earlier submit with the same `client_id` (then nothing new is stored).
    pub async fn post(
        &self,
        room_id: &str,
        author: &str,
        text: &str,
        client_id: &str,
    ) -> Result<(ChatMessage, bool), ChatError> {
        let author = check_author(author, self.bots())?;
        check_text(text)?;
        check_client_id(client_id)?;
        let room = self
            .room(room_id)
            .await?
            .ok_or_else(|| ChatError::NotFound(format!("no room `{room_id}`")))?;

        let now = self.env.clock.now();
        let msg = ChatMessage {
            id: uuid::Uuid::now_v7().to_string(),
            room: room.id.clone(),
            author: author.clone(),
            from_bot: false,
            body: MessageBody::text(text),
            at: now,
            reply_to: None,
            edited_at: None,
        };
        // Claim the client id before storing anything: a second submit finds the first.
        let claim = serde_json::to_vec(&MessageRef {
            room: msg.room.clone(),
            id: msg.id.clone(),
        })
        .map_err(StoreError::from)?;
        let client_key = keys::client(client_id);
        if !self
            .env
            .store
            .kv_compare_and_swap(&self.ns, &client_key, None, Some(&claim))
            .await?
        {
            let first: Option<MessageRef> = self.get_json(&client_key).await?;
            let found = match first {
                Some(r) => {
                    self.get_json::<ChatMessage>(&keys::message(&r.room, &r.id))
                        .await?
                }
                None => None,
            };
            return match found {
                Some(m) => Ok((m, true)),
                None => Err(ChatError::Conflict(
                    "a message with this client_id is still being stored; try again".into(),
                )),
            };
        }
        if room.id == DEFAULT_ROOM
            && self
                .get_json::<Room>(&keys::room(DEFAULT_ROOM))
                .await?
                .is_none()
        {
            self.save_room(&room).await?;
        }
        self.store_message(&msg).await?;

        let mut event = Event::new(&self.name, EventKind::Message, now);
        room.address(&mut event, author);
        event.text = Some(text.to_string());
        event.mentions = mentions(text, self.bots());
        event.message_id = Some(msg.id.clone());
        event.external_id = Some(client_id.to_string());
        event.payload = json!({ "room": { "id": room.id, "name": room.name } });

        match self.env.journal.accept(vec![event]).await {
            Ok(accepted) if matches!(accepted.first(), Some(Accepted::Duplicate(_))) => {
                // The journal saw this client id before (our index lost it?): keep one copy.
                self.unstore_message(&msg).await?;
                Ok((msg, true))
            }
            Ok(_) => {
                self.broadcast("message", message_view(&msg), &room);
                // Remembered after the event is safe (a failure here only costs a
                // notice), written once per person, not once per message.
                let key = keys::person(&msg.author);
                if let Ok(None) = self.env.store.kv_get(&self.ns, &key).await {
                    let _ = self.env.store.kv_put(&self.ns, &key, b"{}").await;
                }
                Ok((msg, false))
            }
            Err(e) => {
                // Not accepted: take back what was stored, so a retry starts clean.
                let _ = self.unstore_message(&msg).await;
                let _ = self.env.store.kv_delete(&self.ns, &client_key).await;
                Err(e.into())
            }
        }
    }

    /// What to tell the author of `text` that nobody else will: a message that starts
    /// with `@name` where `name` is neither a bot nor anyone who has written in this web
    /// chat notifies no one, and would otherwise get silence. Said to the author only
    /// (returned with their post, as plain text for the page's notice line), not posted
    /// to the room.
    pub async fn notice_for(&self, text: &str, author: &str) -> Option<String> {
        let first = mentions(text.trim_start(), self.bots())
            .into_iter()
            .next()
            .filter(|m| !m.is_bot && text.trim_start().starts_with('@'))?;
        let name = first.person.id;
        if name == author
            || matches!(
                self.env.store.kv_get(&self.ns, &keys::person(&name)).await,
                Ok(Some(_)) | Err(_)
            )
        {
            return None;
        }
        let mut bots: Vec<String> = self.bots().iter().map(|b| format!("@{b}")).collect();
        bots.sort();
        let notice = t!(
            "webchat.nobody_here",
            locale = self.locale,
            name = md::code(&format!("@{name}")),
            bots = bots
                .iter()
                .map(|b| md::code(b))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(md::to_plain(&notice))
    }

    /// A person clicked a card button. Journals a `CardAction` event for the bot the
    /// button names and waits (up to `server.click_answer_window`) for the bot's answer.
    /// Returns the event id, whether it was a repeat, and the answer (`None`: not in
    /// time). A replacement card reaches the room through the outbox as an update.
    pub async fn card_action(
        &self,
        room_id: &str,
        author: &str,
        client_id: &str,
        message_id: &str,
        action: CardAction,
    ) -> Result<(String, bool, Option<ClickAnswer>), ChatError> {
        let author = check_author(author, self.bots())?;
        check_client_id(client_id)?;
        let name_ok =
            |s: &str| !s.is_empty() && s.chars().count() <= 100 && !s.chars().any(char::is_control);
        if !name_ok(&action.bot) || !name_ok(&action.action) {
            return Err(ChatError::BadInput(
                "action needs `bot` and `action`: 1 to 100 characters each".into(),
            ));
        }
        let room = self
            .room(room_id)
            .await?
            .ok_or_else(|| ChatError::NotFound(format!("no room `{room_id}`")))?;
        let msg = self
            .message(message_id)
            .await?
            .filter(|m| m.room == room.id);
        let Some(msg) = msg else {
            return Err(ChatError::NotFound(format!(
                "no message `{message_id}` in room `{}`",
                room.id
            )));
        };
        // The button's value is what perch put on the card, never what the browser makes
        // up: the click must name one of this card's own buttons, exactly.
        if !(msg.from_bot && card_has_button(&msg.body, &action)) {
            return Err(ChatError::BadInput(format!(
                "message `{message_id}` has no button with that action"
            )));
        }
        let mut event = Event::new(&self.name, EventKind::CardAction, self.env.clock.now());
        room.address(&mut event, author);
        event.message_id = Some(message_id.to_string());
        event.card_action = Some(CardAction {
            message_id: Some(message_id.to_string()),
            ..action
        });
        event.external_id = Some(client_id.to_string());
        event.payload = json!({ "room": { "id": room.id, "name": room.name } });
        let accepted = self.env.journal.accept(vec![event]).await?;
        let Some(first) = accepted.first() else {
            return Err(ChatError::Journal(JournalError::Flush(
                "the journal returned nothing".into(),
            )));
        };
        let answer = self
            .env
            .clicks
            .answer(first.id(), self.env.click_answer_window)
            .await;
        Ok((
            first.id().to_string(),
            matches!(first, Accepted::Duplicate(_)),
            answer,
        ))
    }

    /// The room a `Target` means, created if needed: a chat id names a room (a bot
    /// may post to a room nobody opened yet); a person gets their direct room `@<id>`.
    async fn target_room(&self, to: &Target) -> Result<Room, SendError> {
        let (id, direct, members) = match to {
            Target::Chat { id } => (id.clone(), false, Vec::new()),
            Target::Person { id, .. } => (format!("@{id}"), true, vec![id.clone()]),
        };
        if id.is_empty() || id.chars().count() > 200 || id.chars().any(char::is_control) {
            return Err(SendError::Permanent(format!(
                "not a web-chat room id: {id:?}"
            )));
        }
        if let Some(room) = self.room(&id).await.map_err(retry)? {
            return Ok(room);
        }
        let name = if direct {
            id.trim_start_matches('@').to_string()
        } else {
            id.clone()
        };
        let room = Room {
            id: id.clone(),
            name,
            direct,
            private: false,
            members,
            created_at: self.env.clock.now(),
            created_by: None,
        };
        let raw = serde_json::to_vec(&room).map_err(|e| SendError::Permanent(e.to_string()))?;
        if self
            .env
            .store
            .kv_compare_and_swap(&self.ns, &keys::room(&id), None, Some(&raw))
            .await
            .map_err(retry)?
        {
            self.broadcast("room", self.room_view(&room).await.map_err(retry)?, &room);
            Ok(room)
        } else {
            self.room(&id)
                .await
                .map_err(retry)?
                .ok_or_else(|| SendError::retry("room vanished while being created"))
        }
    }

    async fn send(
        &self,
        to: &Target,
        body: &MessageBody,
        reply_to: Option<&String>,
        key: &str,
    ) -> Result<Delivered, SendError> {
        // Executed before under this key (a retry after a crash): the same message,
        // written again only if it did not make it to the store.
        let prior: Option<MessageRef> = self.get_json(&keys::sent(key)).await.map_err(retry)?;
        let room = match &prior {
            Some(p) => match self.room(&p.room).await.map_err(retry)? {
                Some(r) => r,
                None => self.target_room(to).await?,
            },
            None => self.target_room(to).await?,
        };
        let id = prior
            .map(|p| p.id)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        if let Some(existing) = self
            .get_json::<ChatMessage>(&keys::message(&room.id, &id))
            .await
            .map_err(retry)?
        {
            return Ok(Delivered {
                id: Some(existing.id),
                detail: Value::Null,
            });
        }
        self.put_json(
            &keys::sent(key),
            &MessageRef {
                room: room.id.clone(),
                id: id.clone(),
            },
        )
        .await
        .map_err(retry)?;
        let msg = ChatMessage {
            id: id.clone(),
            room: room.id.clone(),
            author: author_from_key(key),
            from_bot: true,
            body: body.clone(),
            at: self.env.clock.now(),
            reply_to: reply_to.cloned(),
            edited_at: None,
        };
        self.store_message(&msg).await.map_err(retry)?;
        self.broadcast("message", message_view(&msg), &room);
        Ok(Delivered {
            id: Some(id),
            detail: Value::Null,
        })
    }

    async fn update(&self, message_id: &str, body: &MessageBody) -> Result<Delivered, SendError> {
        let Some(mut msg) = self.message(message_id).await.map_err(retry)? else {
            return Err(SendError::Permanent(format!(
                "no message `{message_id}` in web chat `{}`",
                self.name
            )));
        };
        if msg.body != *body {
            msg.body = body.clone();
            msg.edited_at = Some(self.env.clock.now());
            self.put_json(&keys::message(&msg.room, &msg.id), &msg)
                .await
                .map_err(retry)?;
        }
        // A room that vanished is told to nobody but its (unknown) members: no one.
        let room = self
            .room(&msg.room)
            .await
            .map_err(retry)?
            .unwrap_or_else(|| Room::gone(&msg.room));
        self.broadcast("update", message_view(&msg), &room);
        Ok(Delivered {
            id: Some(msg.id),
            detail: Value::Null,
        })
    }

    async fn create_chat(&self, spec: &ChatSpec, key: &str) -> Result<Delivered, SendError> {
        if let Some(id) = self
            .get_json::<String>(&keys::created(key))
            .await
            .map_err(retry)?
        {
            return Ok(Delivered {
                id: Some(id),
                detail: Value::Null,
            });
        }
        let name = spec.name.trim();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(SendError::Permanent(format!(
                "not a usable room name: {:?}",
                spec.name
            )));
        }
        let mut members: Vec<String> = Vec::new();
        for m in spec.owner.iter().chain(&spec.members) {
            if !members.contains(m) {
                members.push(m.clone());
            }
        }
        // A group made for named people (auto_group's 建群 with its members and the
        // person who asked) is theirs only, like a private group made on the page; one
        // made for nobody in particular stays public.
        let private = !members.is_empty();
        let room = self
            .create_room(name, false, private, members, Some(author_from_key(key)))
            .await
            .map_err(retry)?;
        self.put_json(&keys::created(key), &room.id)
            .await
            .map_err(retry)?;
        self.broadcast("room", self.room_view(&room).await.map_err(retry)?, &room);
        Ok(Delivered {
            id: Some(room.id),
            detail: Value::Null,
        })
    }

    async fn add_members(&self, chat_id: &str, members: &[String]) -> Result<Delivered, SendError> {
        let Some(mut room) = self.room(chat_id).await.map_err(retry)? else {
            return Err(SendError::Permanent(format!(
                "no room `{chat_id}` in web chat `{}`",
                self.name
            )));
        };
        // No account directory here: any name is a member.
        let mut added = Vec::new();
        for m in members {
            if !room.members.contains(m) {
                room.members.push(m.clone());
                added.push(m.clone());
            }
        }
        if !added.is_empty() {
            self.save_room(&room).await.map_err(retry)?;
            self.broadcast("room", self.room_view(&room).await.map_err(retry)?, &room);
        }
        Ok(Delivered {
            id: Some(room.id),
            // `not_added` per the `Delivered::detail` convention: with no account
            // directory, everyone named is a member afterwards.
            detail: json!({ "added": added, "not_added": [] }),
        })
    }
}

fn retry(e: StoreError) -> SendError {
    SendError::retry(format!("web-chat store: {e}"))
}

#[async_trait]
impl Connector for Local {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn execute(&self, op: &Operation, idempotency_key: &str) -> Result<Delivered, SendError> {
        let inner = &self.inner;
        match op {
            Operation::Send { to, body, reply_to } => {
                inner
                    .send(to, body, reply_to.as_ref(), idempotency_key)
                    .await
            }
            Operation::Update {
                message_id, body, ..
            } => inner.update(message_id, body).await,
            Operation::CreateChat { spec } => inner.create_chat(spec, idempotency_key).await,
            Operation::AddMembers {
                chat_id, members, ..
            } => inner.add_members(chat_id, members).await,
        }
    }

    fn http_routes(&self) -> Option<axum::Router> {
        Some(api::routes(self.inner.clone()))
    }

    fn describe(&self) -> BTreeMap<&'static str, String> {
        let mut d = BTreeMap::new();
        d.insert("ui", "/".to_string());
        d.insert("api", "/chat/api".to_string());
        d.insert("bots", self.inner.bots().join(", "));
        d
    }
}

impl crate::connectors::ConnectorKind for Local {
    type Config = LocalConfig;

    fn build(
        name: &str,
        config: LocalConfig,
        env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        std::sync::Arc::new(Local::new(name, config, env))
    }

    fn locale(config: &LocalConfig) -> Option<crate::i18n::Locale> {
        config.locale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bot_is_the_middle_of_the_outbox_key() {
        assert_eq!(author_from_key("0190-aaaa/echo/0000"), "echo");
        assert_eq!(author_from_key("0190-aaaa/router/0000"), "perch");
        assert_eq!(author_from_key("manual-key"), "perch");
        assert_eq!(author_from_key("once/tasks/r-1/1795/due"), "tasks");
        assert_eq!(author_from_key("a//0"), "perch");
    }

    #[test]
    fn mentions_split_bots_from_people() {
        let bots = vec!["echo".to_string(), "help".to_string()];
        let m = mentions("@Echo hi @ann, mail a@b.c and @help. @echo", &bots);
        let got: Vec<(&str, bool)> = m.iter().map(|m| (m.person.id.as_str(), m.is_bot)).collect();
        assert_eq!(got, vec![("echo", true), ("ann", false), ("help", true)]);
    }

    #[test]
    fn slugs_keep_letters_of_any_script() {
        assert_eq!(slug("Project X!"), "project-x");
        assert_eq!(slug("【项目】客户-A01"), "项目-客户-a01");
        assert_eq!(slug("!!!"), "room");
    }

    #[test]
    fn authors_are_checked() {
        let bots = vec!["echo".to_string()];
        assert_eq!(check_author("  ann ", &bots).unwrap(), "ann");
        assert!(check_author("", &bots).is_err());
        assert!(check_author("a\nb", &bots).is_err());
        assert!(check_author(&"x".repeat(41), &bots).is_err());
        assert!(check_author("ECHO", &bots).is_err());
        assert!(check_author(&"é".repeat(40), &bots).is_ok());
    }

    #[test]
    fn cards_without_an_html_renderer_show_their_text_escaped() {
        let card = json!({"header": {"title": "<b>Hi</b>"}, "elements": [{"text": "line"}]});
        let h = body_html(&MessageBody::Card { card });
        assert!(h.starts_with(r#"<div class="card">"#), "{h}");
        assert!(!h.contains("<b>"), "{h}");
    }
}
