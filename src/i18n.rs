//! Built-in texts in the reader's language: English (`en`) and Simplified Chinese
//! (`zh-CN`).
//!
//! The texts live in `locales/<locale>.toml` and are compiled in by `rust-i18n` (the
//! `i18n!` call in `lib.rs`); code asks for one with `t!("area.key", locale = …)`, and
//! card templates with `{{tr "area.key"}}` (the card's data carries `_locale`). A key
//! missing from `zh-CN` falls back to `en`; a test checks both files have the same keys.
//!
//! Which language: a bot's own `locale`, else the locale of the connector the event came
//! from, else `[server] locale` (default `en`). A Feishu tenant that works in Chinese
//! sets `locale = "zh-CN"` on its Feishu connector.

use serde::{Deserialize, Deserializer};
use std::collections::HashMap;

/// The locales of `locales/` (a test checks the two agree).
const KNOWN: [&str; 2] = ["en", "zh-CN"];

/// A locale perch has texts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Locale(&'static str);

impl Locale {
    pub const EN: Locale = Locale("en");

    /// The locale named `name` (`en`, `zh-CN`; `zh`, `zh_CN` and case variants too).
    pub fn parse(name: &str) -> Result<Locale, String> {
        let wanted = name.replace('_', "-").to_ascii_lowercase();
        let wanted = if wanted == "zh" {
            "zh-cn".to_string()
        } else {
            wanted
        };
        KNOWN
            .into_iter()
            .find(|l| l.to_ascii_lowercase() == wanted)
            .map(Locale)
            .ok_or_else(|| {
                format!(
                    "unknown locale {name:?}: perch has texts for {}",
                    KNOWN.join(", ")
                )
            })
    }

    pub fn as_str(&self) -> &'static str {
        if self.0.is_empty() { "en" } else { self.0 }
    }
}

impl<'de> Deserialize<'de> for Locale {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Locale::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Locale {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl schemars::JsonSchema for Locale {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Locale".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // `parse` also takes `zh`, `zh_CN` and any case: the pattern admits those, the
        // enum is what an editor offers.
        schemars::json_schema!({
            "description": format!("A language perch has texts for: {}.", KNOWN.join(", ")),
            "anyOf": [
                { "enum": KNOWN },
                { "type": "string", "pattern": "^([Ee][Nn]|[Zz][Hh]([-_][Cc][Nn])?)$" }
            ]
        })
    }
}

/// Who speaks which language, from the config.
#[derive(Debug, Clone, Default)]
pub struct Locales {
    pub default: Locale,
    pub connectors: HashMap<String, Locale>,
    pub bots: HashMap<String, Locale>,
}

impl Locales {
    /// The language of `bot`'s answer to an event from `connector`.
    pub fn pick(&self, bot: Option<&str>, connector: &str) -> &'static str {
        bot.and_then(|b| self.bots.get(b))
            .or_else(|| self.connectors.get(connector))
            .unwrap_or(&self.default)
            .as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(locale: &str) -> Vec<String> {
        let text = std::fs::read_to_string(format!(
            "{}/locales/{locale}.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(t) => walk(&key, t, out),
                    _ => out.push(key),
                }
            }
        }
        let mut out = Vec::new();
        walk("", &table, &mut out);
        out.sort();
        out
    }

    #[test]
    fn the_known_locales_are_the_compiled_ones() {
        let mut compiled: Vec<String> = rust_i18n::available_locales!()
            .into_iter()
            .map(|l| l.to_string())
            .collect();
        compiled.sort();
        assert_eq!(compiled, KNOWN.map(String::from));
    }

    #[test]
    fn every_text_is_in_both_languages() {
        assert_eq!(keys("en"), keys("zh-CN"));
        assert!(keys("en").len() > 20);
    }

    #[test]
    fn locales_parse_leniently_and_refuse_unknown_ones() {
        assert_eq!(Locale::parse("zh_CN").unwrap().as_str(), "zh-CN");
        assert_eq!(Locale::parse("zh").unwrap().as_str(), "zh-CN");
        assert_eq!(Locale::parse("EN").unwrap().as_str(), "en");
        assert!(Locale::parse("fr").unwrap_err().contains("en, zh-CN"));
    }

    #[test]
    fn a_text_comes_in_the_asked_language_with_its_values() {
        let en = rust_i18n::t!("router.unknown_command", locale = "en", what = "`x`");
        let zh = rust_i18n::t!("router.unknown_command", locale = "zh-CN", what = "`x`");
        assert!(en.contains("`x`") && zh.contains("`x`"), "{en} / {zh}");
        assert_ne!(en, zh);
    }
}
