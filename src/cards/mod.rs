//! Cards: perch's neutral message card, its templates, and one renderer per platform.
//!
//! ```text
//!   cards/<name>.hbs + data ──engine──▶ neutral card JSON ──render(platform)──▶ payload
//!        (bots)                          (in the Action)        (connectors)
//! ```
//!
//! - `model`: the neutral card (header, markdown, fields, table, image, divider, note,
//!   buttons) with strict parsing and validation.
//! - `engine` + `helpers`: Handlebars templates in strict mode with a JSON-string
//!   escaper, so data can never break a card.
//! - `render/*`: Feishu 2.0 (and 1.0 for the custom-bot webhook), Slack Block Kit,
//!   DingTalk, WeCom, Matrix, plain text and HTML for the web chat; each within its
//!   platform's size limits.
//!
//! Connectors call `render(platform, card)` and `text_fallback(card)`; both parse the
//! card first, so a bad card is a `CardError::Invalid` with a one-line reason.

pub(crate) mod engine;
pub(crate) mod helpers;
pub(crate) mod markdown;
pub(crate) mod model;
pub(crate) mod render;

pub use engine::{CardEngine, TemplateInfo};
pub use model::Card;
pub use render::html::HTML_CSS;

use serde_json::Value;

/// The platforms `render` knows.
pub const PLATFORMS: &[&str] = &[
    "feishu",
    "feishu_webhook",
    "feishu_v1",
    "slack",
    "dingtalk",
    "wecom",
    "matrix",
    "text",
    "html",
];

/// Why a card could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(
        "unknown platform `{0}` (known: feishu, feishu_webhook, feishu_v1, slack, dingtalk, wecom, matrix, text, html)"
    )]
    UnknownPlatform(String),
    #[error("invalid card: {0}")]
    Invalid(String),
    #[error(
        "the card does not fit {platform}'s limit of {limit} bytes even with tables and texts cut"
    )]
    TooLarge { platform: String, limit: usize },
    #[error("no card template `{name}` (templates: {known})")]
    UnknownTemplate { name: String, known: String },
    #[error("{file}:{line}:{column}: {message}")]
    Template {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("template `{template}` ({file}{}): {message}", position(.line, .column))]
    Render {
        template: String,
        file: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error("template `{template}` produced a bad card: {message}")]
    Output { template: String, message: String },
    #[error("{file}: rendering the sample data failed: {message}")]
    Sample { file: String, message: String },
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<CardError>),
}

fn position(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" line {l}, column {c}"),
        (Some(l), None) => format!(" line {l}"),
        _ => String::new(),
    }
}

/// Render a neutral card for `platform`:
/// - `feishu`: card JSON 2.0 object (for im/v1 messages, PATCH, callback replies);
/// - `feishu_webhook`: card JSON 1.0 object for the custom bot's `card` field;
/// - `feishu_v1`: card JSON 1.0 object with callback buttons (legacy card callbacks);
/// - `slack`: `{"text", "blocks"}`;
/// - `dingtalk`, `wecom`: the full robot message body;
/// - `matrix`: `m.room.message` content with `org.matrix.custom.html`;
/// - `text`, `html`: a JSON string.
pub fn render(platform: &str, card: &Value) -> Result<Value, CardError> {
    if !PLATFORMS.contains(&platform) {
        return Err(CardError::UnknownPlatform(platform.to_string()));
    }
    let card = Card::parse(card).map_err(CardError::Invalid)?;
    render_card(platform, &card)
}

/// Render an already validated card for `platform`.
pub fn render_card(platform: &str, card: &Card) -> Result<Value, CardError> {
    match platform {
        "feishu" => render::feishu::render_v2(card),
        "feishu_webhook" => render::feishu::render_webhook(card),
        "feishu_v1" => render::feishu::render_v1(card),
        "slack" => render::slack::render(card),
        "dingtalk" => render::dingtalk::render(card),
        "wecom" => render::wecom::render(card),
        "matrix" => render::matrix::render(card),
        "text" => Ok(Value::String(render::text::render(card))),
        "html" => Ok(Value::String(render::html::render(card))),
        other => Err(CardError::UnknownPlatform(other.to_string())),
    }
}

/// A plain-text rendering of a neutral card. A card that does not parse still gives
/// its title and texts (best effort: this feeds logs and notification previews).
pub fn text_fallback(card: &Value) -> String {
    match Card::parse(card) {
        Ok(c) => render::text::render(&c),
        Err(_) => {
            let mut parts = Vec::new();
            if let Some(t) = card.pointer("/header/title").and_then(Value::as_str) {
                parts.push(t.to_string());
            }
            for e in card
                .get("elements")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(t) = e.get("text").and_then(Value::as_str) {
                    parts.push(t.to_string());
                }
            }
            parts.join("\n")
        }
    }
}
