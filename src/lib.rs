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
//! are `kind = "http_bot"` ([`bots::http_bot`]).
//!
//! The modules below stay public because perch's integration tests and benches reach
//! into them (the journal, the store's records, the scheduler); only `clicks`,
//! `health`, `router` and `telemetry` are internal so far.

// The built-in texts, `locales/*.toml`, compiled in (see `i18n`).
rust_i18n::i18n!("locales", fallback = "en");

pub mod action;
pub mod auth;
pub mod cards;
mod cli;
pub(crate) mod clicks;
pub mod clock;
pub mod command;
pub mod config;
pub mod event;
pub(crate) mod health;
pub mod hub;
pub mod i18n;
pub mod journal;
pub mod lanes;
pub mod live;
pub mod outbox;
pub mod permissions;
pub(crate) mod router;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod store;
pub(crate) mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;

#[path = "../bots/mod.rs"]
pub mod bots;
#[path = "../connectors/mod.rs"]
pub mod connectors;

pub use action::Action;
pub use bots::{Bot, BotContext, BotError, BotKind};
pub use cards::model::Card;
pub use connectors::{Connector, ConnectorKind};
pub use event::Event;
pub use hub::{Hub, HubBuilder};
pub use store::Store;
