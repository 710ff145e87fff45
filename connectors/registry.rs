//! The connector kinds perch knows: a registry from the `kind = "..."` of a
//! `[connectors.<name>]` table to the Rust type that implements it.
//!
//! A kind is a type that implements [`ConnectorKind`]: a `DeserializeOwned` config (keep
//! `#[serde(deny_unknown_fields)]` on it) and a constructor. Built-in kinds and a user's
//! own kinds register the same way (`ConnectorKinds::add::<MyConnector>("my_kind")`, or
//! `Hub::builder().connector_kind::<MyConnector>("my_kind")`), so each kind is named in
//! exactly one place (`super::register_builtin`). A `[connectors.<name>]` table is read
//! as its `kind` plus raw TOML settings ([`ConnectorConfig`]); when the config is loaded
//! the registry reads the settings into the kind's typed config, and a problem is
//! reported at its file:line:column by `Config::validate`.

use super::{ConnectorEnv, SharedConnector};
use crate::config::Issues;
use crate::config::kinds::KindTable;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A connector kind: how to read its config and build it. Implement it on your
/// `Connector` type (or on any marker type), and register it with
/// `perch::Hub::builder().connector_kind::<T>("kind")`:
///
/// ```
/// use perch::action::{Delivered, Operation};
/// use perch::config::Issues;
/// use perch::connectors::{Connector, ConnectorEnv, ConnectorKind, SendError, SharedConnector};
/// use std::sync::Arc;
///
/// /// `[connectors.<name>] kind = "pager"`: where pages go.
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct PagerConfig { send_url: String }
///
/// struct Pager { name: String, send_url: String, http: reqwest::Client }
///
/// #[async_trait::async_trait]
/// impl Connector for Pager {
///     fn name(&self) -> &str { &self.name }
///     fn kind(&self) -> &'static str { "pager" }
///     async fn execute(&self, op: &Operation, key: &str) -> Result<Delivered, SendError> {
///         let response = self.http.post(&self.send_url)
///             .header("Idempotency-Key", key)
///             .json(op)
///             .send()
///             .await
///             .map_err(|e| SendError::retry(e.to_string()))?;
///         if !response.status().is_success() {
///             return Err(SendError::Permanent(format!("HTTP {}", response.status())));
///         }
///         Ok(Delivered::default())
///     }
/// }
///
/// impl ConnectorKind for Pager {
///     type Config = PagerConfig;
///     fn build(name: &str, config: PagerConfig, env: &ConnectorEnv) -> SharedConnector {
///         Arc::new(Pager { name: name.into(), send_url: config.send_url, http: env.http.clone() })
///     }
///     fn validate(name: &str, config: &PagerConfig, at: usize, issues: &mut Issues) {
///         if !config.send_url.starts_with("https://") {
///             issues.at(at, format!("connector `{name}`: send_url must be https"));
///         }
///     }
/// }
///
/// let hub = perch::Hub::builder().connector_kind::<Pager>("pager");
/// let ok = "[connectors.ops]\nkind = \"pager\"\nsend_url = \"https://pager.example/send\"\n";
/// assert!(hub.parse(ok, "perch.toml".as_ref()).is_ok());
/// let typo = "[connectors.ops]\nkind = \"pager\"\nsend_ulr = \"https://pager.example/send\"\n";
/// assert!(hub.parse(typo, "perch.toml".as_ref()).unwrap_err().to_string().contains("send_ulr"));
/// let plain = "[connectors.ops]\nkind = \"pager\"\nsend_url = \"http://pager.example/send\"\n";
/// assert!(hub.parse(plain, "perch.toml".as_ref()).unwrap_err().to_string().contains("must be https"));
/// ```
pub trait ConnectorKind: 'static {
    /// The settings of a `[connectors.<name>]` table, without `kind`. Use
    /// `#[serde(deny_unknown_fields)]` so a typo is refused with its line.
    type Config: DeserializeOwned + Send + Sync + 'static;

    /// Build the connector `name`. The registry wraps it in its rate limits.
    fn build(name: &str, config: Self::Config, env: &ConnectorEnv) -> SharedConnector;

    /// Semantic checks beyond the types, reported with `issues.at(at, ...)`; `perch
    /// check` and the start run them.
    fn validate(_name: &str, _config: &Self::Config, _at: usize, _issues: &mut Issues) {}

    /// The language set for people on this connector (chat connectors only).
    fn locale(_config: &Self::Config) -> Option<crate::i18n::Locale> {
        None
    }

    /// For connectors that accept signed, timestamped requests: how old a request may be
    /// and how far ahead its clock, so the config check can refuse a window wider than
    /// `server.dedupe_window` (a replay could be accepted after its id is forgotten).
    fn replay_window(
        _config: &Self::Config,
        _dedupe_window: Duration,
    ) -> Option<(Duration, Duration)> {
        None
    }

    /// Make the config's relative paths relative to the config file's folder.
    fn resolve_paths(_config: &mut Self::Config, _folder: &Path) {}
}

/// A `[connectors.<name>]` table: its `kind` (with where it is), its raw settings, and
/// once loaded, the kind's typed config (or why the settings did not read as it).
pub struct ConnectorConfig {
    pub kind: Spanned<String>,
    pub settings: toml::Table,
    read: Result<Typed, ReadError>,
}

/// A connector table that did not read, for `Config::validate` to report.
pub struct ReadProblem {
    /// One line naming the connector.
    pub message: String,
    /// Where: the `kind` value (an unknown kind), or `None` for somewhere in the table,
    /// found from the key `detail` names (`unknown field `send_ur`, expected ...`).
    pub at_kind: Option<usize>,
    pub detail: String,
}

/// Why a connector's settings were not read as its kind's config.
#[derive(Debug, Clone)]
enum ReadError {
    /// No registered kind has that name: the whole one-line message.
    UnknownKind(String),
    /// serde's message about the settings (`unknown field `x`, expected ...`), without
    /// the connector's name, so the config can find the key it names.
    Settings(String),
    /// Not read with a registry yet.
    NotRead,
}

/// A connector's settings read as its kind's config, with the kind's functions.
struct Typed {
    kind: &'static str,
    config: Box<dyn Any + Send + Sync>,
    registered: Registered,
}

impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Settings hold secrets: name only the kind.
        f.debug_struct("ConnectorConfig")
            .field("kind", self.kind.get_ref())
            .finish_non_exhaustive()
    }
}

impl<'de> serde::Deserialize<'de> for ConnectorConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table: BTreeMap<String, Spanned<toml::Value>> = BTreeMap::deserialize(d)?;
        let kind = table
            .remove("kind")
            .ok_or_else(|| serde::de::Error::missing_field("kind"))?;
        let span = kind.span();
        let kind = match kind.into_inner() {
            toml::Value::String(s) => Spanned::new(span, s),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "`kind` must be a string, found {}",
                    other.type_str()
                )));
            }
        };
        let settings = table
            .into_iter()
            .map(|(k, v)| (k, v.into_inner()))
            .collect();
        Ok(ConnectorConfig {
            kind,
            settings,
            read: Err(ReadError::NotRead),
        })
    }
}

impl ConnectorConfig {
    /// The registered kind name (`local`, `webhook`, ...), or the kind as written when
    /// it is not a registered one.
    pub fn kind(&self) -> &str {
        match &self.read {
            Ok(typed) => typed.kind,
            Err(_) => self.kind.get_ref(),
        }
    }

    /// The typed config, when this connector is of the kind whose config is `C`
    /// (`config.typed::<WebhookConfig>()`).
    pub fn typed<C: 'static>(&self) -> Option<&C> {
        self.read.as_ref().ok()?.config.downcast_ref::<C>()
    }

    /// The language set for people on this connector, if any.
    pub fn locale(&self) -> Option<crate::i18n::Locale> {
        let typed = self.read.as_ref().ok()?;
        (typed.registered.locale)(&*typed.config)
    }

    /// See [`ConnectorKind::replay_window`].
    pub fn replay_window(&self, dedupe_window: Duration) -> Option<(Duration, Duration)> {
        let typed = self.read.as_ref().ok()?;
        (typed.registered.replay_window)(&*typed.config, dedupe_window)
    }

    pub(crate) fn resolve_paths(&mut self, folder: &Path) {
        if let Ok(typed) = &mut self.read {
            (typed.registered.resolve_paths)(&mut *typed.config, folder);
        }
    }

    /// Why the settings did not read as the kind's config (`None`: they did).
    pub fn read_error(&self, name: &str) -> Option<ReadProblem> {
        let at_kind = Some(self.kind.span().start);
        Some(match self.read.as_ref().err()? {
            ReadError::UnknownKind(message) => ReadProblem {
                message: message.clone(),
                at_kind,
                detail: message.clone(),
            },
            ReadError::Settings(detail) => ReadProblem {
                message: format!("connector `{name}`: {detail}"),
                at_kind: None,
                detail: detail.clone(),
            },
            ReadError::NotRead => ReadProblem {
                message: format!("connector `{name}`: not read with a connector registry"),
                at_kind,
                detail: String::new(),
            },
        })
    }

    /// The kind's own checks (nothing when the settings did not read). `at` is the
    /// connector's table.
    pub fn validate(&self, name: &str, at: usize, issues: &mut Issues) {
        if let Ok(typed) = &self.read {
            (typed.registered.validate)(name, &*typed.config, at, issues);
        }
    }
}

type ReadFn = fn(toml::Table) -> Result<Box<dyn Any + Send + Sync>, String>;
type ValidateFn = fn(&str, &(dyn Any + Send + Sync), usize, &mut Issues);
type BuildFn = fn(&str, Box<dyn Any + Send + Sync>, &ConnectorEnv) -> SharedConnector;
type LocaleFn = fn(&(dyn Any + Send + Sync)) -> Option<crate::i18n::Locale>;
type ReplayWindowFn = fn(&(dyn Any + Send + Sync), Duration) -> Option<(Duration, Duration)>;
type ResolvePathsFn = fn(&mut (dyn Any + Send + Sync), &Path);

/// What the registry keeps per kind: functions made from the kind's type.
#[derive(Clone, Copy)]
struct Registered {
    read: ReadFn,
    validate: ValidateFn,
    build: BuildFn,
    locale: LocaleFn,
    replay_window: ReplayWindowFn,
    resolve_paths: ResolvePathsFn,
}

/// The registry of connector kinds. Cheap to clone (a map of function pointers).
#[derive(Clone, Default, Debug)]
pub struct ConnectorKinds {
    kinds: KindTable<Registered>,
}

impl ConnectorKinds {
    /// No kinds at all.
    pub fn empty() -> Self {
        ConnectorKinds::default()
    }

    /// perch's own kinds (`local`, `webhook`, `feishu`, ...): see `super::register_builtin`.
    pub fn builtin() -> Self {
        let mut kinds = ConnectorKinds::empty();
        super::register_builtin(&mut kinds);
        kinds
    }

    /// Register `K` as `kind`. A second registration of the same name replaces the
    /// first (so a user can swap a built-in kind for their own).
    pub fn add<K: ConnectorKind>(&mut self, kind: &'static str) -> &mut Self {
        self.kinds.insert(
            kind,
            Registered {
                read: read_as::<K>,
                validate: validate_as::<K>,
                build: build_as::<K>,
                locale: |c| K::locale(config_of::<K>(c)?),
                replay_window: |c, d| K::replay_window(config_of::<K>(c)?, d),
                resolve_paths: |c, folder| {
                    if let Some(c) = c.downcast_mut::<K::Config>() {
                        K::resolve_paths(c, folder)
                    }
                },
            },
        );
        self
    }

    /// `add`, for a kind whose config describes itself (`schemars::JsonSchema`): its
    /// keys then appear in `perch config-schema` and the config reference.
    pub fn add_with_schema<K: ConnectorKind>(&mut self, kind: &'static str) -> &mut Self
    where
        K::Config: schemars::JsonSchema,
    {
        self.add::<K>(kind);
        self.kinds
            .set_schema(kind, <K::Config as schemars::JsonSchema>::json_schema);
        self
    }

    /// Each kind with its config's JSON Schema (`None`: registered without one).
    pub fn config_schemas(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Vec<(&'static str, Option<schemars::Schema>)> {
        self.kinds.config_schemas(generator)
    }

    /// The registered kind names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.names()
    }

    /// Read the settings of connector `name` as its kind's config. What goes wrong is
    /// kept in `config` and reported by [`ConnectorConfig::validate`].
    pub fn read(&self, name: &str, config: &mut ConnectorConfig) {
        let kind = config.kind.get_ref().clone();
        config.read = match self.kinds.get_key_value(kind.as_str()) {
            None => Err(ReadError::UnknownKind(self.unknown_kind(name, &kind))),
            Some((registered_name, registered)) => (registered.read)(config.settings.clone())
                .map(|typed| Typed {
                    kind: registered_name,
                    config: typed,
                    registered: *registered,
                })
                .map_err(ReadError::Settings),
        };
    }

    fn unknown_kind(&self, name: &str, kind: &str) -> String {
        let known: Vec<String> = self.names().map(str::to_string).collect();
        let hint = crate::config::strsim_closest(kind, &known)
            .map(|close| format!(" (did you mean `{close}`?)"))
            .unwrap_or_default();
        format!(
            "connector `{name}`: unknown kind `{kind}`{hint}; known kinds: {}",
            crate::config::names(known.iter())
        )
    }
}

/// Build the connector `name` from its loaded config. `Err`: the config was not read
/// with a registry that knows its kind (its `validate` says why).
pub(crate) fn build(
    name: &str,
    config: ConnectorConfig,
    env: &ConnectorEnv,
) -> Result<SharedConnector, String> {
    if let Some(problem) = config.read_error(name) {
        return Err(problem.message);
    }
    let typed = config
        .read
        .map_err(|_| format!("connector `{name}`: not read"))?;
    Ok((typed.registered.build)(name, typed.config, env))
}

fn config_of<K: ConnectorKind>(config: &(dyn Any + Send + Sync)) -> Option<&K::Config> {
    config.downcast_ref::<K::Config>()
}

fn read_as<K: ConnectorKind>(settings: toml::Table) -> Result<Box<dyn Any + Send + Sync>, String> {
    K::Config::deserialize(toml::Value::Table(settings))
        .map(|c| Box::new(c) as Box<dyn Any + Send + Sync>)
        .map_err(|e| e.message().trim().to_string())
}

fn validate_as<K: ConnectorKind>(
    name: &str,
    config: &(dyn Any + Send + Sync),
    at: usize,
    issues: &mut Issues,
) {
    if let Some(config) = config_of::<K>(config) {
        K::validate(name, config, at, issues);
    }
}

fn build_as<K: ConnectorKind>(
    name: &str,
    config: Box<dyn Any + Send + Sync>,
    env: &ConnectorEnv,
) -> SharedConnector {
    match config.downcast::<K::Config>() {
        Ok(config) => K::build(name, *config, env),
        // `read_as::<K>` made it, so it is a `K::Config`.
        Err(_) => unreachable!("connector `{name}`: config of another kind"),
    }
}
