//! perch: a self-hosted chat-bot framework and integration hub.
//!
//! ```text
//!   chat platforms ─┐                                   ┌─▶ chat platforms
//!   internal systems┼─▶ connectors (in) ─▶ journal ─▶ router ─▶ bots ─▶ outbox ─▶ connectors (out)
//!   scheduler ticks ┘
//! ```
//!
//! The core lives in `src/`; the pluggable parts sit beside it in `bots/` and
//! `connectors/` and are mounted here as modules, so the whole thing is one crate
//! (fast builds on small machines).
//!
//! # For bot authors
//!
//! The names re-exported at the top of this crate are the surface a bot or connector
//! author needs: [`Bot`] and [`BotKind`] (a bot and how perch builds it from its
//! config), [`BotContext`] (state, cards, data sources, the clock), [`Event`] in,
//! [`Action`] out, [`Card`] (the neutral card), [`Connector`] and [`Store`] for
//! platform and backend authors, and [`Hub`] to run perch with your kinds:
//!
//! ```
//! use perch::{Action, Bot, BotContext, BotError, BotKind, Event};
//!
//! /// Answers every event it is routed with a fixed line.
//! struct Hello { line: String }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct HelloConfig { line: String }
//!
//! #[async_trait::async_trait]
//! impl Bot for Hello {
//!     async fn handle(&self, _: &Event, _: &mut BotContext) -> Result<Vec<Action>, BotError> {
//!         Ok(vec![Action::reply_text(self.line.clone())])
//!     }
//! }
//!
//! impl BotKind for Hello {
//!     type Config = HelloConfig;
//!     fn build(_name: &str, config: HelloConfig) -> Result<Self, BotError> {
//!         Ok(Hello { line: config.line })
//!     }
//! }
//!
//! let hub = perch::Hub::builder().bot_kind::<Hello>("hello");
//! let config = hub
//!     .parse("[bots.hi]\nkind = \"hello\"\nline = \"hi!\"\n", "perch.toml".as_ref())
//!     .expect("valid");
//! assert_eq!(config.bots["hi"].get_ref().kind.get_ref(), "hello");
//! // A binary would end with `hub.run()`: the `perch` command line with this kind.
//! ```
//!
//! Tests of such a bot use `perch::testing` (feature `testing`). Bots in other languages
//! are `kind = "http_bot"`: perch POSTs each event to the bot's URL and reads actions
//! back (the JSON Schemas are in `schemas/`, small bots in `examples/`).
//!
//! Beside those names, a few modules hold the parts of the same surface: [`action`]
//! (targets, bodies, operations), [`event`] (chats, people, mentions, clicks), [`cards`]
//! (the neutral card and its templates), [`bots`] and [`connectors`] (what a bot or a
//! connector sees of perch), [`store`] (the records a storage backend keeps),
//! [`config`] (checking a kind's own settings) and [`clock`]. Everything else (the
//! journal, the outbox, the scheduler, the server) is internal.

// The built-in texts, `locales/*.toml`, compiled in (see `i18n`).
rust_i18n::i18n!("locales", fallback = "en");

// The public modules: the data a bot or connector author handles, each holding only the
// parts an author needs (their internals are `pub(crate)`).
pub mod action;
pub mod cards;
pub mod clock;
pub mod config;
pub mod event;

#[path = "../bots/mod.rs"]
pub mod bots;
#[path = "../connectors/mod.rs"]
pub mod connectors;
pub mod store;

#[cfg(feature = "testing")]
pub mod testing;

// perch's own machinery: reachable only inside the crate (and, for perch's own tests,
// through the few kit functions of `testing`).
pub(crate) mod auth;
mod cli;
pub(crate) mod clicks;
pub(crate) mod command;
pub(crate) mod health;
pub(crate) mod hub;
pub(crate) mod i18n;
pub(crate) mod journal;
pub(crate) mod lanes;
pub(crate) mod live;
pub(crate) mod outbox;
pub(crate) mod permissions;
pub(crate) mod router;
pub(crate) mod runtime;
pub(crate) mod scheduler;
pub(crate) mod server;
pub(crate) mod telemetry;
pub(crate) mod throttle;

pub use action::Action;
pub use bots::{Bot, BotContext, BotError, BotKind};
pub use cards::Card;
pub use connectors::{Connector, ConnectorKind, SendError};
pub use event::Event;
pub use hub::{Hub, HubBuilder};
pub use runtime::{Perch, StartError};
pub use store::Store;
