//! DingTalk group robot (refs §6): the full `actionCard` or `markdown` message body.
//!
//! - A card with URL buttons becomes an `actionCard` (one button: `singleTitle`/
//!   `singleURL`; more: `btns` with `title`/`actionURL`); otherwise a `markdown` message.
//! - Action buttons cannot work: a DingTalk robot webhook has no click callback and
//!   `btns` only open URLs. They are left out and the card says which actions exist
//!   ("Actions: Done / Snooze (not available in DingTalk)") so nobody waits for a button.
//! - The header colour has no equivalent and is dropped; the title is a `###` heading
//!   and the message `title` (what the chat list shows).
//! - fields → `**label**: value` lines; tables → ` | ` lines under a bold header line;
//!   images by URL → `![alt](url)`, by key → alt text; divider → `---`; note → quote.
//! - Lines are separated by blank lines (DingTalk drops single newlines).
//! - Over 20 KB (the body limit), table rows are cut with "… and N more".

use super::{fit, json_len, table_lines};
use crate::cards::CardError;
use crate::cards::model::{Card, Element};
use serde_json::{Value, json};

/// Body limit for robot messages.
pub const LIMIT: usize = 20 * 1024;

/// The message body to POST to the robot webhook.
pub fn render(card: &Card) -> Result<Value, CardError> {
    fit(card, "dingtalk", LIMIT, json_len, |c| Ok(body(c)))
}

fn body(card: &Card) -> Value {
    let mut parts: Vec<String> = Vec::new();
    let title = card
        .header
        .as_ref()
        .map(|h| h.title.clone())
        .unwrap_or_else(|| {
            crate::cards::model::truncate_chars(
                super::text::render(card).lines().next().unwrap_or("perch"),
                64,
            )
        });
    if let Some(h) = &card.header {
        parts.push(format!("### {}", h.title));
        if let Some(s) = &h.subtitle {
            parts.push(s.clone());
        }
    }
    let mut links: Vec<(String, String)> = Vec::new();
    let mut actions: Vec<String> = Vec::new();
    for e in &card.elements {
        match e {
            Element::Markdown { text } => parts.push(text.clone()),
            Element::Fields { fields } => {
                parts.extend(
                    fields
                        .iter()
                        .map(|f| format!("**{}**: {}", f.label, f.value)),
                );
            }
            Element::Table { columns, rows } => {
                let mut lines = table_lines(columns, rows);
                lines[0] = format!("**{}**", lines[0]);
                parts.extend(lines);
            }
            Element::Image {
                url: Some(u), alt, ..
            } => parts.push(format!("![{alt}]({u})")),
            Element::Image { url: None, alt, .. } => parts.push(format!("[image: {alt}]")),
            Element::Divider => parts.push("---".into()),
            Element::Note { text } => parts.push(format!("> {text}")),
            Element::Buttons { buttons } => {
                for b in buttons {
                    match (&b.url, &b.action) {
                        (Some(u), _) => links.push((b.label.clone(), u.clone())),
                        (None, Some(_)) => actions.push(b.label.clone()),
                        _ => {}
                    }
                }
            }
        }
    }
    if !actions.is_empty() {
        parts.push(format!(
            "> Actions: {} (not available in DingTalk)",
            actions.join(" / ")
        ));
    }
    let text = parts.join("\n\n");
    match links.len() {
        0 => json!({ "msgtype": "markdown", "markdown": { "title": title, "text": text } }),
        1 => json!({ "msgtype": "actionCard", "actionCard": {
            "title": title, "text": text, "btnOrientation": "0", "singleTitle": links[0].0, "singleURL": links[0].1 } }),
        _ => json!({ "msgtype": "actionCard", "actionCard": {
            "title": title, "text": text, "btnOrientation": "0",
            "btns": links.iter().map(|(t, u)| json!({ "title": t, "actionURL": u })).collect::<Vec<_>>() } }),
    }
}
