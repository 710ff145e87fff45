//! `config.toml`: what perch runs. Loaded in two phases:
//!
//! 1. **Parse** with serde and `deny_unknown_fields`: a typo, a wrong type or an unset
//!    `${VAR}` stops here, and `problems` then lists every such problem at once, each
//!    with line, column and what was expected.
//! 2. **Validate** (`Config::validate`): every semantic error at once (a route naming a
//!    missing bot or connector, a bad regex, a bot pointing at a missing connector), each
//!    with file:line:column.
//!
//! Every field has a doc comment: this file is the config reference.

pub(crate) mod env;
pub(crate) mod kinds;
mod problems;
mod schema;

use crate::bots::{BotKinds, BotSpec};
use crate::connectors::{ConnectorConfig, ConnectorKinds};
use crate::event::EventKind;
pub use env::{EnvString, Secret};
pub use schema::{DurationText, config_reference, config_schema};
use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server, storage and pipeline settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where perch keeps what it must not lose: the embedded store (default) or a
    /// PostgreSQL shared by several replicas.
    #[serde(default)]
    pub store: StoreConfig,
    /// Delivery settings for the outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Who is who on the web surfaces: sign-in mode, accounts, sessions.
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Connectors by name: `[connectors.<name>]` with a `kind`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub connectors: BTreeMap<String, Spanned<ConnectorConfig>>,
    /// Bots by name: `[bots.<name>]` with a `kind`.
    // Each table's keys other than `kind` are read into its kind's config during
    // validation, by the registry in `bot_kinds`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub bots: BTreeMap<String, Spanned<BotSpec>>,
    /// Routes, in order: `[[routes]]`.
    #[serde(default)]
    #[schemars(with = "Vec<RouteConfig>")]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// Who may run which bot's commands and press its buttons: `[[permissions]]`.
    #[serde(default)]
    #[schemars(with = "Vec<crate::permissions::PermissionRule>")]
    pub permissions: Vec<Spanned<crate::permissions::PermissionRule>>,
    /// Scheduled jobs by name: `[schedules.<name>]` with a `cron` and a `timezone`; each
    /// slot fires a tick event.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, crate::scheduler::ScheduleConfig>")]
    pub schedules: BTreeMap<String, Spanned<crate::scheduler::ScheduleConfig>>,
    /// Where the config was read from, for error messages. Not a config key.
    #[serde(skip)]
    pub source: ConfigSource,
    /// The bot kinds this config was validated against (and its bots are built with).
    /// Not a config key: `Hub::builder().bot_kind(...)` adds to it.
    #[serde(skip)]
    pub bot_kinds: BotKinds,
}

/// The bot and connector kinds a config is read with (`Hub::builder()` adds to them).
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    pub bots: BotKinds,
    pub connectors: ConnectorKinds,
}

impl Kinds {
    /// perch's own bot and connector kinds.
    pub fn builtin() -> Self {
        Kinds {
            bots: BotKinds::builtin(),
            connectors: ConnectorKinds::builtin(),
        }
    }
}

/// The text a config came from, to turn byte spans into line:column.
#[derive(Default, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
}

impl std::fmt::Debug for ConfigSource {
    // The text may hold literal secrets: show only where it came from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ConfigSource {
    /// `file:line:column` for a byte offset.
    pub fn locate(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{line}:{column}", self.path.display())
    }
}

/// The longest `server.click_answer_window`: Feishu's 3 s minus time for the network.
pub(crate) const MAX_CLICK_ANSWER_WINDOW: Duration = Duration::from_millis(2900);

/// A token a person can send in an `Authorization: Bearer` header: printable ASCII,
/// no spaces (a header value cannot carry control characters, and surrounding spaces
/// are stripped on the way).
pub(crate) fn sendable_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic())
}

/// Bounds on `server.header_read_timeout`, `body_read_timeout` and `idle_timeout`.
pub(crate) const MIN_CONNECTION_TIMEOUT: Duration = Duration::from_millis(10);
pub(crate) const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Upper bound on `server.max_connections`.
pub(crate) const MAX_CONNECTIONS: usize = 1 << 20;

/// `[server]`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. perch refuses a non-loopback address unless `admin_token`
    /// is set.
    pub listen: SocketAddr,
    /// Directory for the embedded store.
    pub data_dir: PathBuf,
    /// Bearer token for `/api`. Empty means the admin API is open (loopback only).
    pub admin_token: Option<Secret>,
    /// Bearer token for `/metrics`. Unset means `/metrics` is open.
    pub metrics_token: Option<Secret>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// How long a client may take to send a request's headers (HTTP/1), counted from
    /// when perch starts waiting for them: also how long an idle keep-alive connection
    /// stays open. A slower client's connection is closed.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's whole body, from its headers on.
    /// A slower one is answered 408 and its connection closed.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub body_read_timeout: Duration,
    /// A connection that has no request in progress and sends nothing for this long is
    /// closed (one that never sends a request, an idle HTTP/2 connection).
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Most client connections open at once; further ones wait in the listen backlog
    /// until one closes. Keep it below the process's open-file limit.
    pub max_connections: usize,
    /// How long a platform's event id is remembered to drop its retries (Feishu re-sends
    /// for about 7.1 h, so at least 8 h).
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub dedupe_window: Duration,
    /// How long handled events stay in the journal.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub journal_retention: Duration,
    /// Store cache size in MiB (sled's default of 1 GiB is far more than perch needs).
    pub cache_mb: u64,
    /// How many chats' events are handled at once (events of one chat are in order).
    pub concurrency: usize,
    /// How long one bot may take on one event before it counts as failed.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub bot_timeout: Duration,
    /// How long the answer to a card click waits for the bot's toast or replacement
    /// card before answering without them (the card still updates through the outbox).
    /// Feishu drops an answer after 3 s (refs §1.7), so at most 2.9 s.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub click_answer_window: Duration,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Language of perch's built-in texts (usage lines, errors, toasts, card labels):
    /// `en` or `zh-CN`. A connector's or a bot's own `locale` wins over it.
    pub locale: crate::i18n::Locale,
    /// Directory of card templates (`<name>.hbs`, with `<name>.sample.json` beside each).
    /// All are compiled at start; a broken one stops `perch serve` and `perch check`
    /// with its file and line. A missing directory means no templates.
    pub cards_dir: PathBuf,
    /// On SIGTERM/SIGINT, how long in-flight bot runs and deliveries may take to finish.
    /// Nothing waits for a retry's backoff; what is not finished by then stays queued
    /// (nothing acknowledged is lost) and goes out after the next start.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            admin_token: None,
            metrics_token: None,
            body_limit: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            dedupe_window: Duration::from_secs(8 * 3600),
            journal_retention: Duration::from_secs(7 * 24 * 3600),
            cache_mb: 64,
            concurrency: 64,
            bot_timeout: Duration::from_secs(30),
            click_answer_window: Duration::from_millis(2500),
            log_format: LogFormat::Text,
            locale: crate::i18n::Locale::EN,
            cards_dir: PathBuf::from("cards"),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[store]`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sled`: the embedded store in `server.data_dir`, for one process. `postgres`:
    /// several perch replicas share one PostgreSQL (`url`).
    pub kind: StoreKind,
    /// For `kind = "postgres"`: `postgres://user:password@host:port/database`, usually
    /// `"${DATABASE_URL}"`. Connections are unencrypted (no TLS): keep the database on
    /// a private network.
    pub url: Option<Secret>,
    /// For `kind = "postgres"`: most connections one replica holds.
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sled,
            url: None,
            pool_size: 16,
        }
    }
}

#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Sled,
    Postgres,
}

/// `[outbox]`
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Attempts before an operation goes to the dead letters.
    pub max_attempts: u32,
    /// First retry delay (doubles each attempt, with jitter).
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub min_backoff: Duration,
    /// Longest retry delay.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub max_backoff: Duration,
    /// How many operations may be in flight at once across all chats.
    pub concurrency: usize,
    /// How long one delivery attempt may take.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(deserialize_with = "de_duration")]
    pub attempt_timeout: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_attempts: 8,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            concurrency: 64,
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// `[[routes]]`: which events go to which bots.
///
/// Routes are checked in order and **every** matching route fires (a bot gets an event
/// at most once), unless a matching route says `stop = true`, which ends the search.
/// All conditions given on a route must hold.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Only events from this connector.
    #[serde(default)]
    pub connector: Option<String>,
    /// Only events of this kind: `message`, `card_action`, `system`, `tick`.
    #[serde(default)]
    pub kind: Option<EventKind>,
    /// Topic glob for system events and ticks: `crm.opportunity.*`.
    #[serde(default)]
    pub topic: Option<String>,
    /// The message must @mention this bot account (`"*"`: any of ours, or a direct chat).
    #[serde(default)]
    pub mention: Option<String>,
    /// The command word (first word after the mention), case-insensitive.
    #[serde(default)]
    pub command: Option<String>,
    /// Regular expression the message text must match.
    #[serde(default)]
    pub text: Option<String>,
    /// Payload fields that must equal the given values, by JSON pointer:
    /// `payload = { "/action" = "opened" }`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub payload: BTreeMap<String, toml::Value>,
    /// The bots that get matching events.
    pub bots: Vec<String>,
    /// Stop checking later routes when this one matches.
    #[serde(default)]
    pub stop: bool,
}

/// Parse a duration like `30s`, `5m`, `8h`, `7d`.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "bad duration {s:?} ({e}); write e.g. \"30s\", \"5m\", \"8h\""
        ))
    })
}

/// Parse an optional duration.
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A config problem with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// `file:line:column`
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{} problem(s) in the config:\n{}", .0.len(), .0.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

/// Collects validation problems with their locations.
pub struct Issues<'a> {
    source: &'a ConfigSource,
    found: Vec<ConfigIssue>,
}

impl<'a> Issues<'a> {
    pub fn new(source: &'a ConfigSource) -> Self {
        Issues {
            source,
            found: Vec::new(),
        }
    }
    /// Record a problem at byte `offset` of the config text. When `offset` is a table's
    /// header, the problem is placed on the table's line it is about (see `key_line`).
    pub fn at(&mut self, offset: usize, message: impl Into<String>) {
        let message = message.into();
        let offset = key_line(&self.source.text, offset, &message).unwrap_or(offset);
        self.found.push(ConfigIssue {
            at: self.source.locate(offset),
            message,
        });
    }
    pub fn into_vec(self) -> Vec<ConfigIssue> {
        self.found
    }
}

impl Config {
    /// Read, parse and validate a config file. Relative paths in it (`data_dir`,
    /// `cards_dir`, a file source's `dir`) are relative to the file's folder, so
    /// `perch serve --config /etc/perch/perch.toml` works from anywhere.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, Kinds::builtin())
    }

    /// `load`, with these bot kinds instead of only the built-in ones.
    pub fn load_with(path: &Path, kinds: Kinds) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        Self::parse(&text, path, folder, kinds)
    }

    /// Parse and validate config text; `path` is only used in messages, and relative
    /// paths stay relative to the working directory.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse(text, path, None, Kinds::builtin())
    }

    /// `from_str`, with these bot kinds instead of only the built-in ones.
    pub fn from_str_with(text: &str, path: &Path, kinds: Kinds) -> Result<Config, ConfigError> {
        Self::parse(text, path, None, kinds)
    }

    /// Make the config's relative paths relative to `folder`.
    fn resolve_paths(&mut self, folder: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = folder.join(&*p);
            }
        };
        resolve(&mut self.server.data_dir);
        resolve(&mut self.server.cards_dir);
        for c in self.connectors.values_mut() {
            c.get_mut().resolve_paths(folder);
        }
    }

    fn parse(
        text: &str,
        path: &Path,
        folder: Option<&Path>,
        kinds: Kinds,
    ) -> Result<Config, ConfigError> {
        let source = ConfigSource {
            path: path.to_path_buf(),
            text: text.to_string(),
        };
        let mut config: Config = match toml::from_str(text) {
            Ok(config) => config,
            Err(e) => {
                // Explain the failure with every problem, not only serde's first one.
                let problems = problems::parse_problems(&source, &kinds.connectors);
                if !problems.is_empty() {
                    return Err(ConfigError::Invalid(problems));
                }
                let at = e
                    .span()
                    .map(|s| source.locate(refine_offset(text, s, e.message())))
                    .unwrap_or_else(|| path.display().to_string());
                return Err(ConfigError::Parse(format!("{at}: {}", e.message().trim())));
            }
        };
        config.source = source;
        config.bot_kinds = kinds.bots;
        for (name, connector) in config.connectors.iter_mut() {
            kinds.connectors.read(name, connector.get_mut());
        }
        if let Some(folder) = folder {
            config.resolve_paths(folder);
        }
        let issues = config.validate();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Every semantic problem, each with its location. Empty means valid.
    /// Report `connector` if no `[connectors.<name>]` defines it; `who` names it, e.g.
    /// "bot `push`" or "bot `push`: source".
    pub fn check_connector(&self, issues: &mut Issues, at: usize, who: &str, connector: &str) {
        if !self.connectors.contains_key(connector) {
            issues.at(
                at,
                undefined(who, "connector", connector, self.connectors.keys()),
            );
        }
    }

    /// Report a card template `name` that is not in `server.cards_dir` (`<name>.hbs`),
    /// so a typo is refused by `perch check` and at start, not when someone asks. `who`
    /// names the bot and the key.
    pub fn check_template(&self, issues: &mut Issues, at: usize, who: &str, name: &str) {
        let dir = &self.server.cards_dir;
        if dir.join(format!("{name}.hbs")).is_file() {
            return;
        }
        let mut known: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".hbs"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        known.sort();
        let hint = match strsim_closest(name, &known) {
            Some(close) => format!(" (did you mean `{close}`?)"),
            None => String::new(),
        };
        issues.at(
            at,
            format!(
                "{who} names card template `{name}`, which is not in {} (there: {}){hint}",
                dir.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }

    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Issues::new(&self.source);
        let server_at = key_offset(&self.source.text, "[server]", "listen");
        let token = self.server.admin_token.as_ref().filter(|t| !t.is_empty());
        if let Some(t) = token
            && !sendable_token(t.expose())
        {
            issues.at(
                key_offset(&self.source.text, "[server]", "admin_token"),
                "server.admin_token must be printable ASCII without spaces: it is sent as `Authorization: Bearer <token>`, and no request could carry this one",
            );
        }
        if !self.server.listen.ip().is_loopback()
            && !token.is_some_and(|t| sendable_token(t.expose()))
        {
            issues.at(
                server_at,
                format!(
                    "listen = {} is not a loopback address: set server.admin_token to expose perch",
                    self.server.listen
                ),
            );
        }
        self.validate_store(&mut issues);
        self.validate_connection_limits(&mut issues);
        let web_chat = self
            .connectors
            .values()
            .any(|c| c.get_ref().kind() == "local");
        for (key, message) in self.auth.problems(&self.server.listen, web_chat) {
            // Without an [auth] table the default mode is at fault where perch listens.
            let at = if self.source.text.contains("[auth]") {
                key_offset(&self.source.text, "[auth]", key)
            } else {
                server_at
            };
            issues.at(at, format!("auth: {message}"));
        }
        for rule in &self.permissions {
            for message in crate::permissions::Permissions::problems(
                std::slice::from_ref(rule.get_ref()),
                &self.auth.groups,
                self.bots.keys(),
            ) {
                issues.at(rule.span().start, message);
            }
        }
        if self
            .server
            .metrics_token
            .as_ref()
            .is_some_and(|t| !sendable_token(t.expose()))
        {
            issues.at(
                key_offset(&self.source.text, "[server]", "metrics_token"),
                "server.metrics_token must be printable ASCII without spaces (it is sent as `Authorization: Bearer <token>`)",
            );
        }
        if self.server.concurrency == 0 || self.outbox.concurrency == 0 {
            issues.at(server_at, "concurrency must be at least 1");
        }
        if self.server.journal_retention < self.server.dedupe_window {
            // A retry is recognised by its original event, which must still be there.
            issues.at(
                key_offset(&self.source.text, "[server]", "journal_retention"),
                format!(
                    "server.journal_retention = {:?} is shorter than server.dedupe_window = {:?}: events must be kept at least as long as their retries are recognised",
                    self.server.journal_retention, self.server.dedupe_window
                ),
            );
        }
        if self.server.click_answer_window > MAX_CLICK_ANSWER_WINDOW {
            issues.at(
                key_offset(&self.source.text, "[server]", "click_answer_window"),
                format!(
                    "server.click_answer_window = {:?} is longer than {:?}: Feishu gives a card click's answer 3 s",
                    self.server.click_answer_window, MAX_CLICK_ANSWER_WINDOW
                ),
            );
        }
        if self.outbox.max_attempts == 0 {
            issues.at(
                self.source.text.find("[outbox]").unwrap_or(0),
                "outbox.max_attempts must be at least 1",
            );
        }
        for (name, connector) in &self.connectors {
            // The console's presses and test renders come from this name; a connector
            // taking it could forge them. (`scheduler` is checked by the scheduler.)
            if name == crate::server::console::CONSOLE_CONNECTOR {
                issues.at(
                    connector.span().start,
                    format!(
                        "connector name `{name}` is reserved for the console's own events: pick another name"
                    ),
                );
                continue;
            }
            if let Some(problem) = connector.get_ref().read_error(name) {
                let offset = problem.at_kind.unwrap_or_else(|| {
                    refine_offset(&self.source.text, connector.span(), &problem.detail)
                });
                issues.at(offset, problem.message);
                continue;
            }
            connector
                .get_ref()
                .validate(name, connector.span().start, &mut issues);
            let window = connector.get_ref().replay_window(self.server.dedupe_window);
            if let Some((window, clock_skew)) = window
                && window + clock_skew > self.server.dedupe_window
            {
                // A replay accepted after its event id was forgotten would be handled again.
                issues.at(
                    connector.span().start,
                    format!(
                        "connector `{name}`: timestamp_window {:?} plus clock_skew {:?} is wider than server.dedupe_window {:?}: a replayed request could be accepted after its event id is forgotten",
                        window, clock_skew, self.server.dedupe_window
                    ),
                );
            }
        }
        for (name, bot) in &self.bots {
            self.bot_kinds.validate(name, bot, self, &mut issues);
        }
        for route in &self.routes {
            self.validate_route(route, &mut issues);
        }
        crate::scheduler::validate(self, &mut issues);
        issues.into_vec()
    }

    /// The `[server]` limits on slow and many clients: each must be able to do its job
    /// (a zero timeout would refuse every request, a week-long one none).
    fn validate_store(&self, issues: &mut Issues) {
        let at = |k| key_offset(&self.source.text, "[store]", k);
        let store = &self.store;
        if store.kind == StoreKind::Postgres {
            match &store.url {
                None => issues.at(
                    at("kind"),
                    "store.kind = \"postgres\" needs store.url (for example \"${DATABASE_URL}\")",
                ),
                Some(url) => {
                    if let Err(e) = url.expose().parse::<tokio_postgres::Config>() {
                        issues.at(at("url"), format!("store.url is not a PostgreSQL URL: {e}"));
                    }
                }
            }
            if store.pool_size < 2 {
                issues.at(
                    at("pool_size"),
                    "store.pool_size must be at least 2 (ingests and the rest each hold one)",
                );
            }
        } else if store.url.is_some() {
            issues.at(
                at("url"),
                "store.url is only used with store.kind = \"postgres\"",
            );
        }
    }

    fn validate_connection_limits(&self, issues: &mut Issues) {
        let server = &self.server;
        let at = |key: &str| key_offset(&self.source.text, "[server]", key);
        for (key, value) in [
            ("header_read_timeout", server.header_read_timeout),
            ("body_read_timeout", server.body_read_timeout),
            ("idle_timeout", server.idle_timeout),
        ] {
            if value < MIN_CONNECTION_TIMEOUT || value > MAX_CONNECTION_TIMEOUT {
                issues.at(
                    at(key),
                    format!(
                        "server.{key} = {value:?}: give between {MIN_CONNECTION_TIMEOUT:?} and {MAX_CONNECTION_TIMEOUT:?}"
                    ),
                );
            }
        }
        if server.max_connections == 0 || server.max_connections > MAX_CONNECTIONS {
            issues.at(
                at("max_connections"),
                format!(
                    "server.max_connections = {}: give between 1 and {MAX_CONNECTIONS}",
                    server.max_connections
                ),
            );
        }
        if server.body_limit == 0 || server.body_limit > crate::event::MAX_EVENT_BYTES / 2 {
            // An event holds its body (and may repeat parts of it): it must stay storable.
            issues.at(
                at("body_limit"),
                format!(
                    "server.body_limit = {}: give between 1 and {} bytes",
                    server.body_limit,
                    crate::event::MAX_EVENT_BYTES / 2
                ),
            );
        }
    }

    fn validate_route(&self, route: &Spanned<RouteConfig>, issues: &mut Issues) {
        let at = route.span().start;
        let r = route.get_ref();
        if let Some(c) = &r.connector {
            // `scheduler` is the reserved connector of schedule ticks.
            if !self.connectors.contains_key(c) && c != crate::scheduler::CONNECTOR {
                issues.at(
                    at,
                    undefined("route", "connector", c, self.connectors.keys()),
                );
            }
        }
        if r.bots.is_empty() {
            issues.at(at, "route has no bots: add `bots = [\"...\"]`");
        }
        for b in &r.bots {
            if !self.bots.contains_key(b) {
                issues.at(at, undefined("route", "bot", b, self.bots.keys()));
            }
        }
        if let Some(t) = &r.text
            && let Err(e) = regex::Regex::new(t)
        {
            issues.at(at, format!("bad regex in `text`: {}", regex_problem(&e)));
        }
        if let Some(t) = &r.topic
            && let Err(e) = crate::router::compile_glob(t)
        {
            issues.at(at, format!("bad glob in `topic` ({t:?}): {e}"));
        }
        for pointer in r.payload.keys() {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                issues.at(
                    at,
                    format!(
                        "payload key {pointer:?} is not a JSON pointer (it must start with `/`)"
                    ),
                );
            }
        }
    }

    /// A one-screen summary for `perch check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "listen {} · data {}\n",
            self.server.listen,
            self.server.data_dir.display()
        ));
        out.push_str(&format!("{} connector(s):", self.connectors.len()));
        for (name, c) in &self.connectors {
            out.push_str(&format!(" {name} ({})", c.get_ref().kind()));
        }
        out.push_str(&format!("\n{} bot(s):", self.bots.len()));
        for (name, b) in &self.bots {
            out.push_str(&format!(" {name} ({})", b.get_ref().kind.get_ref()));
        }
        out.push_str(&format!("\n{} route(s)\n", self.routes.len()));
        out.push_str(&format!("{} schedule(s)\n", self.schedules.len()));
        out
    }
}

/// Errors inside `[connectors.x]` and `[bots.x]` tables (kind-tagged, so serde buffers
/// them) carry the span of the whole table. Point at the line that names the offending
/// field (`unknown field \`x\``) or variable (`variable X`) when it is inside that table.
pub(crate) fn refine_offset(text: &str, span: std::ops::Range<usize>, message: &str) -> usize {
    // The span is the table's header; the table runs to the next header.
    let from = span.start.min(text.len());
    let after_header = span.end.clamp(from, text.len());
    let end = text[after_header..]
        .find("\n[")
        .map_or(text.len(), |i| after_header + i);
    let within = &text[from..end];
    // A wrong value inside a buffered table (a `kind`-tagged connector or bot) is
    // reported at the table: find the key that holds that value.
    if let Some(value) = wrong_value(message)
        && let Some(i) = within.find(&format!("= {value}"))
    {
        let line_start = within[..i].rfind('\n').map_or(0, |n| n + 1);
        return from + line_start;
    }
    let needle = if let Some(var) = message
        .split("variable ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
    {
        Some(format!("${{{var}"))
    } else {
        message.split('`').nth(1).map(|field| format!("\n{field}"))
    };
    needle
        .and_then(|n| {
            within
                .find(n.as_str())
                .map(|i| span.start + i + usize::from(n.starts_with('\n')))
        })
        .unwrap_or(span.start)
}

/// The line of the table at `table` (a `[header]` offset) that a problem is about: the
/// first name the message quotes in backticks that is a key of that table (`` bad regex in
/// `text` `` → the `text = …` line) or a string value in it (`` names connector `missing` ``
/// → the `connector = "missing"` line). `None` when the message quotes nothing there
/// (a key that is missing is reported at the header, where it belongs).
fn key_line(text: &str, table: usize, message: &str) -> Option<usize> {
    let body_start = table
        + text
            .get(table..)?
            .strip_prefix('[')
            .map(|_| text[table..].find('\n'))??;
    let body_end = text[body_start..]
        .find("\n[")
        .map_or(text.len(), |i| body_start + i);
    let lines: Vec<(usize, &str, &str)> = text[body_start..body_end]
        .split_inclusive('\n')
        .scan(body_start, |pos, line| {
            let start = *pos;
            *pos += line.len();
            Some((start, line))
        })
        .filter_map(|(start, line)| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim().trim_matches('"');
            let indent = line.len() - line.trim_start().len();
            Some((start + indent, key, value))
        })
        .collect();
    if let Some(value) = wrong_value(message)
        && let Some((start, _, _)) = lines.iter().find(|(_, _, v)| v.trim() == value.as_str())
    {
        return Some(*start);
    }
    message.split('`').skip(1).step_by(2).find_map(|name| {
        let quoted = format!("\"{name}\"");
        lines
            .iter()
            .find(|(_, key, _)| *key == name)
            .or_else(|| lines.iter().find(|(_, _, value)| value.contains(&quoted)))
            .map(|(start, _, _)| *start)
    })
}

/// The value serde quotes in "invalid type: integer `5`, expected …" (`5`) or
/// "invalid type: string \"x\", expected …" (`"x"`), as it is written in TOML.
fn wrong_value(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (what, _) = rest.split_once(", expected")?;
    if let Some(quoted) = what.strip_prefix("string ") {
        return Some(quoted.to_string());
    }
    let (_, value) = what.split_once(" `")?;
    Some(value.strip_suffix('`')?.to_string())
}

/// Offset of `key = …` inside the table that starts with `header` (or of the header, or 0).
fn key_offset(text: &str, header: &str, key: &str) -> usize {
    let Some(start) = text.find(header) else {
        return 0;
    };
    let table_end = text[start + header.len()..]
        .find("\n[")
        .map_or(text.len(), |i| start + header.len() + i);
    text[start..table_end]
        .find(&format!("\n{key}"))
        .map_or(start, |i| start + i + 1)
}

/// A list of names for an error message, or "none".
/// How every check words a reference to something the config does not define:
/// "<who> names <kind> `<name>`, which is not defined (defined: …)".
pub(crate) fn undefined<'a>(
    who: &str,
    kind: &str,
    name: &str,
    defined: impl Iterator<Item = &'a String>,
) -> String {
    format!(
        "{who} names {kind} `{name}`, which is not defined (defined: {})",
        names(defined)
    )
}

/// The name in `known` closest to `name`, if one is close (a typo).
pub(crate) fn strsim_closest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// A regex error in one line: its last (the lines before it draw the pattern).
pub(crate) fn regex_problem(e: &regex::Error) -> String {
    e.to_string().lines().last().unwrap_or("").to_string()
}

pub(crate) fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}
