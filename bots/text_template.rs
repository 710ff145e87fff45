//! Small Handlebars templates for bots' strings: message texts, chat names, recipients,
//! data-source paths. Strict mode (a missing field is an error, never a blank), compiled
//! at start. Two escapings: none (plain text), or percent-encoding for values placed in a
//! URL path or query (`/ct/{{arg.0}}` with `arg.0 = "a/b c"` → `/ct/a%2Fb%20c`).
//!
//! Cards have their own engine (`crate::cards`); this is only for one-line strings.

use super::BotError;
use handlebars::Handlebars;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters left as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Plain text: values go in as they are.
    None,
    /// Values are percent-encoded (for paths and query strings).
    Url,
}

/// A set of named one-line templates.
pub struct TextTemplates {
    hb: Handlebars<'static>,
    owner: String,
}

impl TextTemplates {
    /// `owner` names the bot in error messages.
    pub fn new(owner: &str, escape: Escape) -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        match escape {
            Escape::None => hb.register_escape_fn(handlebars::no_escape),
            Escape::Url => hb.register_escape_fn(|s| utf8_percent_encode(s, SEGMENT).to_string()),
        }
        TextTemplates {
            hb,
            owner: owner.to_string(),
        }
    }

    /// Compile `template` under `name`.
    pub fn add(&mut self, name: &str, template: &str) -> Result<(), BotError> {
        self.hb
            .register_template_string(name, template)
            .map_err(|e| {
                // One line: handlebars' own text draws the source over several lines.
                let at = e
                    .pos()
                    .map(|(line, col)| format!(" at line {line}, column {col}"))
                    .unwrap_or_default();
                let reason = e.reason().to_string();
                let reason = reason
                    .split(": expected")
                    .next()
                    .unwrap_or(&reason)
                    .trim()
                    .to_string();
                BotError::Template(format!(
                    "bot `{}`, `{name}` template{at}: {reason}",
                    self.owner
                ))
            })
    }

    /// Render `name` over `data`.
    pub fn render<T: serde::Serialize>(&self, name: &str, data: &T) -> Result<String, BotError> {
        self.render_in(name, &self.context(data)?)
    }

    /// `data` as templates see it: serialise once, then `render_in` several templates.
    pub fn context<T: serde::Serialize>(&self, data: &T) -> Result<handlebars::Context, BotError> {
        handlebars::Context::wraps(data)
            .map_err(|e| BotError::Template(format!("bot `{}`: template data: {e}", self.owner)))
    }

    /// Render `name` over a `context`.
    pub fn render_in(&self, name: &str, context: &handlebars::Context) -> Result<String, BotError> {
        self.hb
            .render_with_context(name, context)
            .map_err(|e| BotError::Template(format!("bot `{}`, {name} template: {e}", self.owner)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_escaping_keeps_values_inside_their_segment() {
        let mut t = TextTemplates::new("q", Escape::Url);
        t.add("p", "/ct/{{arg.[0]}}?d={{day}}").unwrap();
        let out = t
            .render(
                "p",
                &serde_json::json!({"arg": ["a/b c?x=1"], "day": "昨天"}),
            )
            .unwrap();
        assert_eq!(out, "/ct/a%2Fb%20c%3Fx%3D1?d=%E6%98%A8%E5%A4%A9");
    }

    #[test]
    fn missing_fields_are_errors_naming_bot_and_template() {
        let mut t = TextTemplates::new("groups", Escape::None);
        t.add("name", "【项目】{{customer}}-{{code}}").unwrap();
        let e = t
            .render("name", &serde_json::json!({"customer": "Acme"}))
            .unwrap_err();
        assert!(e.to_string().contains("bot `groups`, name template"), "{e}");
        assert!(t.add("bad", "{{#if}}").is_err());
    }
}
