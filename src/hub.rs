//! `Hub`: perch as a library. A user's own crate adds its bot kinds (and connector kinds,
//! `connector_kind::<MyConnector>("my_platform")`, see `crate::connectors::registry`)
//! and gets the whole `perch` program (or an in-process hub for tests) with them:
//!
//! ```no_run
//! # struct MyBot;
//! # #[async_trait::async_trait]
//! # impl perch::bots::Bot for MyBot {
//! #     async fn handle(&self, _: &perch::event::Event, _: &mut perch::bots::BotContext)
//! #         -> Result<Vec<perch::action::Action>, perch::bots::BotError> { Ok(vec![]) }
//! # }
//! # impl perch::bots::BotKind for MyBot {
//! #     type Config = serde_json::Value;
//! #     fn build(_: &str, _: serde_json::Value) -> Result<Self, perch::bots::BotError> { Ok(MyBot) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     perch::Hub::builder().bot_kind::<MyBot>("my_kind").run()
//! }
//! ```
//!
//! The built-in kinds are registered by `Hub::builder()` through the same calls
//! (`crate::bots::register_builtin`, `crate::connectors::register_builtin`);
//! `src/main.rs` is `Hub::builder().run()`.

use crate::bots::{BotKind, BotKinds};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError, Kinds};
use crate::connectors::{ConnectorKind, ConnectorKinds};
use crate::runtime::{Perch, StartError};
use std::path::Path;

/// perch as a library: see the module docs.
pub struct Hub;

impl Hub {
    /// A builder with perch's built-in bot and connector kinds registered.
    pub fn builder() -> HubBuilder {
        HubBuilder {
            kinds: Kinds::builtin(),
        }
    }
}

/// Collects the bot and connector kinds, then loads a config with them, starts in-process, or runs
/// the `perch` command line.
#[derive(Debug, Clone)]
pub struct HubBuilder {
    kinds: Kinds,
}

impl HubBuilder {
    /// Make `kind = "<kind>"` in a `[bots.<name>]` table build a `B`. Registering a
    /// built-in kind's name replaces it.
    pub fn bot_kind<B: BotKind>(mut self, kind: &'static str) -> Self {
        self.kinds.bots.add::<B>(kind);
        self
    }

    /// Make `kind = "<kind>"` in a `[connectors.<name>]` table build a `C`. Registering
    /// a built-in kind's name replaces it.
    pub fn connector_kind<C: ConnectorKind>(mut self, kind: &'static str) -> Self {
        self.kinds.connectors.add::<C>(kind);
        self
    }

    /// The registered bot kinds.
    pub fn bot_kinds(&self) -> &BotKinds {
        &self.kinds.bots
    }

    /// The registered connector kinds.
    pub fn connector_kinds(&self) -> &ConnectorKinds {
        &self.kinds.connectors
    }

    /// Read and validate a config file against these kinds.
    pub fn load(&self, path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, self.kinds.clone())
    }

    /// Validate config text against these kinds (`path` is only used in messages).
    pub fn parse(&self, text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::from_str_with(text, path, self.kinds.clone())
    }

    /// Start in this process on the store in `server.data_dir`; serve `perch.app()`
    /// yourself. For tests, `crate::runtime::Perch::start_with_store` takes a store.
    pub async fn start(&self, config: Config, clock: SharedClock) -> Result<Perch, StartError> {
        Perch::start(config, clock).await
    }

    /// The `perch` command line (`serve`, `check`, `send`, `schedule`, `card render`)
    /// with these kinds: `--config` (or `PERCH_CONFIG`) names the config file.
    pub fn run(self) -> std::process::ExitCode {
        crate::cli::main(self.kinds)
    }
}
