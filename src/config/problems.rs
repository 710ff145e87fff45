//! Phase 1 of loading a config, when it fails: **every** parse problem at once, each at
//! its exact place, instead of serde's first error.
//!
//! - TOML syntax: the parser recovers and reports every error it meets.
//! - `${ENV}`: every string is expanded on its own, so each unset variable is reported
//!   at the string that names it.
//! - Types and keys: each entry (a connector, a bot's `kind`, a route, a schedule, the
//!   `[server]` and `[outbox]` tables) is deserialized on its own, so one typo per entry
//!   is found in every entry, not only in the first one. (A bot's settings are read by
//!   its kind during validation, `bots::registry`, which reports them all too.)
//!
//! Only used to explain a failure: a config that parses is deserialized whole, by one
//! `toml::from_str`, so there is one way to read a config.

use super::{ConfigIssue, ConfigSource, OutboxConfig, RouteConfig, ServerConfig};
use crate::bots::BotSpec;
use crate::connectors::{ConnectorConfig, ConnectorKinds};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// Every problem that keeps `source.text` from parsing as a config, in file order.
pub fn parse_problems(source: &ConfigSource, connector_kinds: &ConnectorKinds) -> Vec<ConfigIssue> {
    let text = source.text.as_str();
    let (root, syntax) = DeTable::parse_recoverable(text);
    let at = |offset: usize, message: &str| ConfigIssue {
        at: source.locate(offset),
        message: message.trim().to_string(),
    };
    if !syntax.is_empty() {
        return syntax
            .iter()
            .map(|e| at(e.span().map_or(0, |s| s.start), e.message()))
            .collect();
    }

    let mut found: Vec<(usize, ConfigIssue)> = Vec::new();
    let mut env = |value: &Spanned<DeValue<'_>>| {
        each_string(value, &mut |s, offset| {
            if let Err(e) = super::env::expand(s) {
                // At the `${` that fails, not at the string's opening quote.
                let offset = offset + text[offset..].find("${").unwrap_or(0);
                found.push((offset, at(offset, &e.to_string())));
            }
        })
    };
    for (_, value) in root.get_ref().iter() {
        env(value);
    }

    let mut typed: Vec<(usize, ConfigIssue)> = Vec::new();
    // Connector settings, read by their kinds (a typo inside a `[connectors.x]` table).
    let mut settings: Vec<(usize, ConfigIssue)> = Vec::new();
    let mut check =
        |value: &Spanned<DeValue<'_>>,
         one: fn(ValueDeserializer<'_>) -> Option<toml::de::Error>| {
            if let Some(e) = one(ValueDeserializer::from(value.clone())) {
                // Unset variables were reported above, each at its own string.
                if e.message().contains("environment variable") {
                    return;
                }
                let span = e.span().unwrap_or_else(|| value.span());
                let offset = super::refine_offset(text, span, e.message());
                typed.push((offset, at(offset, e.message())));
            }
        };
    for (key, value) in root.get_ref().iter() {
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("server", _) => check(value, first_error::<ServerConfig>),
            ("outbox", _) => check(value, first_error::<OutboxConfig>),
            ("connectors", DeValue::Table(t)) => {
                for (name, v) in t.iter() {
                    check(v, first_error::<ConnectorConfig>);
                    // Its settings, read by its kind as when the config parses.
                    let Ok(mut connector) =
                        ConnectorConfig::deserialize(ValueDeserializer::from(v.clone()))
                    else {
                        continue;
                    };
                    let name: &str = name.get_ref().as_ref();
                    connector_kinds.read(name, &mut connector);
                    if let Some(problem) = connector.read_error(name)
                        && !problem.detail.contains("environment variable")
                    {
                        let offset = problem.at_kind.unwrap_or_else(|| {
                            super::refine_offset(text, v.span(), &problem.detail)
                        });
                        settings.push((offset, at(offset, &problem.message)));
                    }
                }
            }
            ("bots", DeValue::Table(t)) => {
                t.iter().for_each(|(_, v)| check(v, first_error::<BotSpec>))
            }
            ("schedules", DeValue::Table(t)) => t
                .iter()
                .for_each(|(_, v)| check(v, first_error::<crate::scheduler::ScheduleConfig>)),
            ("routes", DeValue::Array(a)) => {
                a.iter().for_each(|v| check(v, first_error::<RouteConfig>))
            }
            // Anything else (an unknown section, a section of the wrong type) is found by
            // the whole-config parse below.
            _ => {}
        }
    }
    found.extend(typed);
    found.extend(settings);
    if found.is_empty() {
        // What only the whole config shows (an unknown top-level key, …).
        if let Err(e) = toml::from_str::<super::Config>(text) {
            let offset = e
                .span()
                .map_or(0, |s| super::refine_offset(text, s, e.message()));
            found.push((offset, at(offset, e.message())));
        }
    }
    found.sort_by_key(|(offset, _)| *offset);
    found.dedup_by(|a, b| a.1 == b.1);
    found.into_iter().map(|(_, issue)| issue).collect()
}

fn first_error<T: DeserializeOwned>(d: ValueDeserializer<'_>) -> Option<toml::de::Error> {
    T::deserialize(d).err()
}

/// Call `f` with every string in `value` (keys excluded) and its byte offset.
fn each_string(value: &Spanned<DeValue<'_>>, f: &mut dyn FnMut(&str, usize)) {
    match value.get_ref() {
        DeValue::String(s) => f(s, value.span().start),
        DeValue::Array(items) => items.iter().for_each(|v| each_string(v, f)),
        DeValue::Table(t) => t.iter().for_each(|(_, v)| each_string(v, f)),
        _ => {}
    }
}
