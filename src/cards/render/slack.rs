//! Slack Block Kit (refs §5): `{"text": fallback, "blocks": [...]}`.
//!
//! - header → `header` block (plain text ≤ 150); subtitle → a `context` block.
//! - markdown → `section` blocks with mrkdwn (`**b**` → `*b*`, links → `<url|text>`),
//!   split into pieces of ≤ 3000 characters.
//! - fields → `section` blocks with ≤ 10 `fields` each (`*label*\nvalue`, ≤ 2000 chars);
//!   a long field gets a section of its own (Slack lays fields out in two columns itself).
//! - table → Slack messages have no table block in the refs, so a monospace code block
//!   with padded columns; rows that do not fit the 3000-character section are cut with a
//!   "… and N more" line.
//! - image → `image` block by URL; an image known only by a platform key becomes a
//!   `context` line with its alt text.
//! - divider → `divider`; note → `context` (mrkdwn).
//! - buttons → `actions` blocks (≤ 25 elements each). Action buttons: `action_id`
//!   `perch:<n>` (unique per message, ≤ 255), `value` the JSON `{"bot","action","args"}`
//!   (≤ 2000, else the card is refused as invalid: Slack would refuse it anyway). URL
//!   buttons carry `url` (≤ 3000) and an action_id too (Slack still sends a click).
//!   Style `primary`/`danger`, omitted for default; label ≤ 75 characters.
//! - More than 50 blocks: the first 49 are kept and a context block says how many more.

use super::fit;
use crate::cards::CardError;
use crate::cards::markdown::{escape_slack, to_slack};
use crate::cards::model::{Card, Element, truncate_chars};
use serde_json::{Value, json};

/// Slack's limit on blocks in one message.
pub const MAX_BLOCKS: usize = 50;
const SECTION_TEXT: usize = 3000;
const FIELD_TEXT: usize = 2000;
const HEADER_TEXT: usize = 150;
const BUTTON_TEXT: usize = 75;
const BUTTON_VALUE: usize = 2000;
const ACTIONS_PER_BLOCK: usize = 25;
const FIELDS_PER_SECTION: usize = 10;

/// `{"text", "blocks"}` for chat.postMessage / chat.update / response_url.
pub fn render(card: &Card) -> Result<Value, CardError> {
    // Slack's limit is a block count, which table rows do not change; `fit` only guards
    // the overall message size (40k characters of text).
    fit(card, "slack", 40_000, super::json_len, blocks)
}

fn section(text: String) -> Value {
    json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })
}

fn context(text: String) -> Value {
    json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": truncate_chars(&text, SECTION_TEXT) }] })
}

/// Split `s` into pieces of at most `max` characters, preferring line breaks.
fn chunks(s: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in s.split_inclusive('\n') {
        if cur.chars().count() + line.chars().count() > max && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if line.chars().count() > max {
            let chars: Vec<char> = line.chars().collect();
            for piece in chars.chunks(max) {
                out.push(piece.iter().collect());
            }
        } else {
            cur.push_str(line);
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

fn code_table(columns: &[String], rows: &[Vec<crate::cards::model::Cell>]) -> String {
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].as_str().chars().count())
                .chain([columns[i].chars().count()])
                .max()
                .unwrap_or(0)
                .min(40)
        })
        .collect();
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c = truncate_chars(&c.replace('`', "'").replace('\n', " "), 40);
                format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count())))
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let header = line(columns.iter().map(String::as_str).collect());
    let mut kept = vec![escape_slack(&header)];
    let mut used = header.len() + 8;
    for (n, r) in rows.iter().enumerate() {
        let l = escape_slack(&line(r.iter().map(|c| c.as_str()).collect()));
        // Room for the "… and N more" line.
        if used + l.chars().count() + 1 > SECTION_TEXT - 40 {
            kept.push(format!("… and {} more", rows.len() - n));
            break;
        }
        used += l.chars().count() + 1;
        kept.push(l);
    }
    format!("```\n{}\n```", kept.join("\n"))
}

fn blocks(card: &Card) -> Result<Value, CardError> {
    let mut blocks: Vec<Value> = Vec::new();
    if let Some(h) = &card.header {
        blocks.push(json!({ "type": "header", "text": { "type": "plain_text", "text": truncate_chars(&h.title, HEADER_TEXT), "emoji": true } }));
        if let Some(s) = &h.subtitle {
            blocks.push(context(escape_slack(s)));
        }
    }
    let mut action_n = 0usize;
    for e in &card.elements {
        match e {
            Element::Markdown { text } => {
                for piece in chunks(&to_slack(text), SECTION_TEXT) {
                    blocks.push(section(piece));
                }
            }
            Element::Fields { fields } => {
                let mut pending: Vec<Value> = Vec::new();
                let flush = |pending: &mut Vec<Value>, blocks: &mut Vec<Value>| {
                    for group in pending.chunks(FIELDS_PER_SECTION) {
                        blocks.push(json!({ "type": "section", "fields": group }));
                    }
                    pending.clear();
                };
                for f in fields {
                    let text = truncate_chars(&format!("*{}*\n{}", escape_slack(&f.label), to_slack(&f.value)), FIELD_TEXT);
                    if f.short {
                        pending.push(json!({ "type": "mrkdwn", "text": text }));
                    } else {
                        flush(&mut pending, &mut blocks);
                        blocks.push(section(truncate_chars(&text, SECTION_TEXT)));
                    }
                }
                flush(&mut pending, &mut blocks);
            }
            Element::Table { columns, rows } => blocks.push(section(code_table(columns, rows))),
            Element::Image { url: Some(u), alt, .. } => blocks.push(json!({
                "type": "image", "image_url": u, "alt_text": if alt.is_empty() { "image" } else { alt.as_str() }
            })),
            Element::Image { url: None, alt, .. } => blocks.push(context(format!("[image: {}]", escape_slack(alt)))),
            Element::Divider => blocks.push(json!({ "type": "divider" })),
            Element::Note { text } => blocks.push(context(to_slack(text))),
            Element::Buttons { buttons } => {
                let mut elements = Vec::new();
                for b in buttons {
                    action_n += 1;
                    let mut v = json!({
                        "type": "button",
                        "action_id": format!("perch:{action_n}"),
                        "text": { "type": "plain_text", "text": truncate_chars(&b.label, BUTTON_TEXT), "emoji": true },
                    });
                    if let Some(u) = &b.url {
                        v["url"] = json!(u);
                    }
                    if let Some(a) = &b.action {
                        let value = a.to_value().to_string();
                        if value.len() > BUTTON_VALUE {
                            return Err(CardError::Invalid(format!(
                                "button `{}`: its action is {} bytes as JSON; Slack allows {BUTTON_VALUE}",
                                b.label,
                                value.len()
                            )));
                        }
                        v["value"] = json!(value);
                    }
                    if b.style != crate::cards::model::ButtonStyle::Default {
                        v["style"] = json!(b.style.name());
                    }
                    elements.push(v);
                }
                for group in elements.chunks(ACTIONS_PER_BLOCK) {
                    blocks.push(json!({ "type": "actions", "elements": group }));
                }
            }
        }
    }
    if blocks.len() > MAX_BLOCKS {
        let more = blocks.len() - (MAX_BLOCKS - 1);
        blocks.truncate(MAX_BLOCKS - 1);
        blocks.push(context(format!("… and {more} more")));
    }
    let text = truncate_chars(&super::text::render(card), SECTION_TEXT);
    Ok(json!({ "text": text, "blocks": blocks }))
}
