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

// The built-in texts, `locales/*.toml`, compiled in (see `i18n`).
rust_i18n::i18n!("locales", fallback = "en");

pub mod action;
pub mod cards;
mod cli;
pub mod clicks;
pub mod clock;
pub mod command;
pub mod config;
pub mod event;
pub mod health;
pub mod hub;
pub mod i18n;
pub mod journal;
pub mod lanes;
pub mod outbox;
pub mod router;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;

#[path = "../bots/mod.rs"]
pub mod bots;
#[path = "../connectors/mod.rs"]
pub mod connectors;

pub use hub::{Hub, HubBuilder};
