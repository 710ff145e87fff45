//! Cards: perch's neutral card JSON and its renderers.
//!
//! SEAM (to be replaced by the cards work, which owns this module): connectors call
//! `render(platform, card)` to turn a neutral card into their platform's payload, and
//! `text_fallback(card)` where only text fits. Until then `render` returns the card as is.

/// Why a card could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("unknown platform `{0}`")]
    UnknownPlatform(String),
    #[error("invalid card: {0}")]
    Invalid(String),
}

/// Render a neutral card for `platform` (`feishu`, `feishu_webhook`, `slack`, `dingtalk`,
/// `wecom`, `matrix`, `text`, `html`). Text and HTML come back as JSON strings.
pub fn render(platform: &str, card: &serde_json::Value) -> Result<serde_json::Value, CardError> {
    match platform {
        "text" => Ok(serde_json::Value::String(text_fallback(card))),
        _ => Ok(card.clone()),
    }
}

/// A plain-text rendering of a neutral card: its title and text parts.
pub fn text_fallback(card: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    if let Some(t) = card.pointer("/header/title").and_then(|v| v.as_str()) {
        parts.push(t.to_string());
    }
    if let Some(elements) = card.get("elements").and_then(|v| v.as_array()) {
        for e in elements {
            if let Some(t) = e.get("text").and_then(|v| v.as_str()) {
                parts.push(t.to_string());
            }
        }
    }
    parts.join("\n")
}
