//! The bot kinds perch knows: a registry from the `kind = "..."` of a `[bots.<name>]`
//! table to the Rust type that implements it.
//!
//! A kind is a type that implements [`BotKind`]: a [`Bot`] with a `DeserializeOwned`
//! config and a constructor. Built-in kinds and a user's own kinds register the same way
//! (`BotKinds::add::<MyBot>("my_kind")`, or `Hub::builder().bot_kind::<MyBot>("my_kind")`),
//! so each kind is named in exactly one place. The config keeps a bot's settings as raw
//! TOML until validation, where the registry turns them into the kind's typed config
//! with the bot's file:line:column on every error.

use super::{Bot, BotError};
use crate::config::kinds::KindTable;
use crate::config::{Config, Issues};
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A bot kind: how to read its config and build it. Implement it next to your `Bot`.
///
/// ```
/// use perch::bots::{Bot, BotContext, BotError, BotKind};
/// use perch::action::Action;
/// use perch::event::Event;
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct ShoutConfig { suffix: String }
///
/// struct Shout { suffix: String }
///
/// #[async_trait::async_trait]
/// impl Bot for Shout {
///     async fn handle(&self, event: &Event, _ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
///         let text = event.text.clone().unwrap_or_default().to_uppercase();
///         Ok(vec![Action::reply_text(format!("{text}{}", self.suffix))])
///     }
/// }
///
/// impl BotKind for Shout {
///     type Config = ShoutConfig;
///     fn build(_name: &str, config: ShoutConfig) -> Result<Self, BotError> {
///         Ok(Shout { suffix: config.suffix })
///     }
/// }
///
/// let mut kinds = perch::bots::BotKinds::builtin();
/// kinds.add::<Shout>("shout");
/// assert!(kinds.names().any(|k| k == "shout"));
/// ```
pub trait BotKind: Bot + Sized {
    /// The settings of a `[bots.<name>]` table, without `kind`. Use
    /// `#[serde(deny_unknown_fields)]` so a typo is refused with its line.
    type Config: DeserializeOwned;

    /// Build the bot `name` from its settings. An `Err` stops `perch serve` with the
    /// bot's name and the reason.
    fn build(name: &str, config: Self::Config) -> Result<Self, BotError>;

    /// Semantic checks beyond the types (a named connector or card template exists),
    /// reported with `issues.at(at, ...)`; `perch check` and the start run them.
    fn validate(
        _name: &str,
        _config: &Self::Config,
        _at: usize,
        _all: &Config,
        _issues: &mut Issues,
    ) {
    }
}

/// A `[bots.<name>]` table as written: its `kind` (with where it is) and the rest of its
/// keys, read into the kind's config by [`BotKinds`].
#[derive(Debug, Clone)]
pub struct BotSpec {
    pub kind: Spanned<String>,
    /// The bot's own language for built-in texts (`locale = "zh-CN"`), read here because
    /// every kind has it.
    pub locale: Option<crate::i18n::Locale>,
    pub settings: toml::Table,
}

impl<'de> serde::Deserialize<'de> for BotSpec {
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
        let locale = match table.remove("locale") {
            None => None,
            Some(v) => match v.into_inner() {
                toml::Value::String(s) => {
                    Some(crate::i18n::Locale::parse(&s).map_err(serde::de::Error::custom)?)
                }
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "`locale` must be a string, found {}",
                        other.type_str()
                    )));
                }
            },
        };
        let settings = table
            .into_iter()
            .map(|(k, v)| (k, v.into_inner()))
            .collect();
        Ok(BotSpec {
            kind,
            locale,
            settings,
        })
    }
}

type ValidateFn = fn(&str, &toml::Table, usize, &Config, &mut Issues) -> Result<(), String>;
type BuildFn = fn(&str, toml::Table) -> Result<Arc<dyn Bot>, BotError>;

/// What the registry keeps per kind: two functions made from the kind's type.
#[derive(Clone, Copy)]
struct Registered {
    validate: ValidateFn,
    build: BuildFn,
}

/// The registry of bot kinds. Cheap to clone (a map of function pointers).
#[derive(Clone, Default, Debug)]
pub struct BotKinds {
    kinds: KindTable<Registered>,
}

impl BotKinds {
    /// No kinds at all.
    pub fn empty() -> Self {
        BotKinds::default()
    }

    /// perch's own kinds (`help`, `echo`, `notify`, ...): see `super::register_builtin`.
    pub fn builtin() -> Self {
        let mut kinds = BotKinds::empty();
        super::register_builtin(&mut kinds);
        kinds
    }

    /// Register `B` as `kind`. A second registration of the same name replaces the
    /// first (so a user can swap a built-in kind for their own).
    pub fn add<B: BotKind>(&mut self, kind: &'static str) -> &mut Self {
        self.kinds.insert(
            kind,
            Registered {
                validate: validate_as::<B>,
                build: build_as::<B>,
            },
        );
        self
    }

    /// `add`, for a kind whose config describes itself (`schemars::JsonSchema`): its
    /// keys then appear in `perch config-schema` and the config reference.
    pub fn add_with_schema<B: BotKind>(&mut self, kind: &'static str) -> &mut Self
    where
        B::Config: schemars::JsonSchema,
    {
        self.add::<B>(kind);
        self.kinds
            .set_schema(kind, <B::Config as schemars::JsonSchema>::json_schema);
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

    /// The registered name equal to `kind` (as a `'static` str for `BotInfo`).
    pub fn name_of(&self, kind: &str) -> Option<&'static str> {
        self.kinds.get_key_value(kind).map(|(k, _)| k)
    }

    /// Check the bot `name` (its table at byte `at`): a known kind, settings that read
    /// as the kind's config, then the kind's own checks.
    pub fn validate(
        &self,
        name: &str,
        spec: &Spanned<BotSpec>,
        config: &Config,
        issues: &mut Issues,
    ) {
        let at = spec.span().start;
        let bot = spec.get_ref();
        let kind = bot.kind.get_ref();
        let Some(registered) = self.kinds.get(kind.as_str()) else {
            issues.at(bot.kind.span().start, self.unknown_kind(name, kind));
            return;
        };
        if let Err(message) = (registered.validate)(name, &bot.settings, at, config, issues) {
            let offset = crate::config::refine_offset(&config.source.text, spec.span(), &message);
            issues.at(offset, format!("bot `{name}`: {message}"));
        }
    }

    /// Build the bot `name`; the config was validated with this registry.
    pub fn build(&self, name: &str, spec: &BotSpec) -> Result<Arc<dyn Bot>, BotError> {
        let kind = spec.kind.get_ref();
        let registered = self
            .kinds
            .get(kind.as_str())
            .ok_or_else(|| BotError::Config(self.unknown_kind(name, kind)))?;
        (registered.build)(name, spec.settings.clone())
    }

    fn unknown_kind(&self, name: &str, kind: &str) -> String {
        let known: Vec<String> = self.names().map(str::to_string).collect();
        let hint = crate::config::strsim_closest(kind, &known)
            .map(|close| format!(" (did you mean `{close}`?)"))
            .unwrap_or_default();
        format!(
            "bot `{name}`: unknown kind `{kind}`{hint}; known kinds: {}",
            crate::config::names(known.iter())
        )
    }
}

/// Read a kind's settings from TOML; a serde error comes back as its one-line message.
fn settings_as<B: BotKind>(settings: toml::Table) -> Result<B::Config, String> {
    B::Config::deserialize_from(settings)
}

fn validate_as<B: BotKind>(
    name: &str,
    settings: &toml::Table,
    at: usize,
    all: &Config,
    issues: &mut Issues,
) -> Result<(), String> {
    let config = settings_as::<B>(settings.clone())?;
    B::validate(name, &config, at, all, issues);
    Ok(())
}

fn build_as<B: BotKind>(name: &str, settings: toml::Table) -> Result<Arc<dyn Bot>, BotError> {
    let config = settings_as::<B>(settings).map_err(BotError::Config)?;
    Ok(Arc::new(B::build(name, config)?))
}

/// `DeserializeOwned` from a TOML table, with the error's message only (the caller knows
/// where the table is).
trait FromTable: Sized {
    fn deserialize_from(table: toml::Table) -> Result<Self, String>;
}

impl<T: DeserializeOwned> FromTable for T {
    fn deserialize_from(table: toml::Table) -> Result<Self, String> {
        T::deserialize(toml::Value::Table(table)).map_err(|e| e.message().trim().to_string())
    }
}
