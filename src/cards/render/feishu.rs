//! Feishu/Lark cards (refs §4): JSON 2.0 for app bots, 1.0 for the custom-bot webhook.
//!
//! **2.0** (`render_v2`): `schema:"2.0"`, `config.update_multi:true` always (2.0 accepts
//! nothing else, and PATCH needs it on old and new card), elements under `body.elements`.
//! - fields → a `column_set` per row (two short fields side by side, each a `markdown`
//!   `**label**\nvalue`); a long field is one `markdown`.
//! - table → the 2.0 `table` element (`page_size` ≤ 10, columns `c0..cN` as `lark_md`).
//!   Feishu refuses more than 3 tables (code 11310), so a 4th table onwards becomes
//!   markdown lines.
//! - image → `img` with `img_key`; an image known only by URL cannot be shown (Feishu
//!   wants an uploaded key), so it becomes a markdown link with its alt text.
//! - note → `markdown` with `text_size:"notation"` (2.0 has no `note` tag); divider → `hr`.
//! - buttons → one `column_set` (`flex_mode:"flow"`) with a `button` per column (2.0 has
//!   no `action` tag). Action buttons carry
//!   `behaviors:[{"type":"callback","value":{"perch":{"bot","action","args"}}}]`; URL
//!   buttons `behaviors:[{"type":"open_url","default_url":u,"pc_url":u,"ios_url":u,"android_url":u}]`.
//! - Over 30 KB, table rows are cut with a "… and N more" note.
//!
//! **1.0** (`render_v1`): the custom group bot (`feishu_webhook`, refs §3) takes a card
//! object in `card`, but neither the refs nor the docs we have say it accepts 2.0, and
//! 2.0 needs clients ≥ 7.20 while 1.0 shows everywhere; so the webhook gets 1.0. Custom
//! bots cannot receive card callbacks (refs §3), so action buttons are left out and a
//! note lists them; URL buttons stay. 1.0 has no table element in the refs, so tables
//! become `lark_md` lines. The webhook body must stay ≤ 20 KB; the card gets 19 KB,
//! leaving room for the envelope (`msg_type`, `timestamp`, `sign`).

use super::{field_rows, fit, json_len, table_lines};
use crate::cards::CardError;
use crate::cards::model::{Button, Card, Element, Header};
use serde_json::{Value, json};

/// Largest card Feishu accepts (refs §2.2, §4).
pub const CARD_LIMIT: usize = 30 * 1024;
/// What the webhook card may take of the 20 KB body limit (refs §3).
pub const WEBHOOK_CARD_LIMIT: usize = 19 * 1024;
/// Feishu refuses cards with more tables than this (refs §4, code 11310).
const MAX_TABLES: usize = 3;

fn plain(s: &str) -> Value {
    json!({ "tag": "plain_text", "content": s })
}

fn summary(card: &Card) -> String {
    let first = card
        .header
        .as_ref()
        .map(|h| h.title.clone())
        .unwrap_or_else(|| super::text::render(card));
    crate::cards::model::truncate_chars(first.lines().next().unwrap_or(""), 100)
}

fn header(h: &Header, subtitle: bool) -> Value {
    let mut v = json!({ "template": h.colour.name(), "title": plain(&h.title) });
    if let (true, Some(s)) = (subtitle, &h.subtitle) {
        v["subtitle"] = plain(s);
    }
    v
}

/// A card 2.0 object, fitted under 30 KB.
pub fn render_v2(card: &Card) -> Result<Value, CardError> {
    fit(card, "feishu", CARD_LIMIT, json_len, |c| Ok(v2(c)))
}

fn v2(card: &Card) -> Value {
    let mut elements = Vec::new();
    let mut tables = 0;
    for e in &card.elements {
        match e {
            Element::Markdown { text } => elements.push(json!({ "tag": "markdown", "content": text })),
            Element::Fields { fields } => {
                for row in field_rows(fields) {
                    if row.len() == 1 && !row[0].short {
                        elements.push(json!({ "tag": "markdown", "content": format!("**{}**\n{}", row[0].label, row[0].value) }));
                        continue;
                    }
                    let columns: Vec<Value> = row
                        .iter()
                        .map(|f| {
                            json!({ "tag": "column", "width": "weighted", "weight": 1, "elements": [
                                { "tag": "markdown", "content": format!("**{}**\n{}", f.label, f.value) }
                            ]})
                        })
                        .collect();
                    // A lone short field still takes half the width, like its paired neighbours.
                    let mut columns = columns;
                    if columns.len() == 1 {
                        columns.push(json!({ "tag": "column", "width": "weighted", "weight": 1, "elements": [] }));
                    }
                    elements.push(json!({ "tag": "column_set", "flex_mode": "none", "columns": columns }));
                }
            }
            Element::Table { columns, rows } => {
                tables += 1;
                if tables > MAX_TABLES {
                    elements.push(json!({ "tag": "markdown", "content": table_lines(columns, rows).join("\n") }));
                    continue;
                }
                let cols: Vec<Value> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| json!({ "name": format!("c{i}"), "display_name": c, "data_type": "lark_md", "width": "auto" }))
                    .collect();
                let rows: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        let mut o = serde_json::Map::new();
                        for (i, cell) in r.iter().enumerate() {
                            o.insert(format!("c{i}"), Value::String(cell.0.clone()));
                        }
                        Value::Object(o)
                    })
                    .collect();
                let page_size = rows.len().clamp(1, 10);
                elements.push(json!({ "tag": "table", "page_size": page_size, "columns": cols, "rows": rows }));
            }
            Element::Image { key: Some(k), alt, .. } => {
                elements.push(json!({ "tag": "img", "img_key": k, "alt": plain(alt) }))
            }
            Element::Image { url, alt, .. } => elements.push(json!({
                "tag": "markdown",
                "content": format!("[{}]({})", if alt.is_empty() { "image" } else { alt }, url.as_deref().unwrap_or(""))
            })),
            Element::Divider => elements.push(json!({ "tag": "hr" })),
            Element::Note { text } => elements.push(json!({ "tag": "markdown", "content": text, "text_size": "notation" })),
            Element::Buttons { buttons } => {
                let columns: Vec<Value> = buttons
                    .iter()
                    .map(|b| json!({ "tag": "column", "width": "auto", "elements": [button_v2(b)] }))
                    .collect();
                elements.push(json!({ "tag": "column_set", "flex_mode": "flow", "columns": columns }));
            }
        }
    }
    let mut v = json!({
        "schema": "2.0",
        "config": { "update_multi": true, "width_mode": "fill", "summary": { "content": summary(card) } },
        "body": { "elements": elements },
    });
    if let Some(h) = &card.header {
        v["header"] = header(h, true);
    }
    v
}

fn button_v2(b: &Button) -> Value {
    let behaviors = match (&b.url, &b.action) {
        (Some(u), _) => {
            json!([{ "type": "open_url", "default_url": u, "pc_url": u, "ios_url": u, "android_url": u }])
        }
        (None, Some(a)) => json!([{ "type": "callback", "value": { "perch": a.to_value() } }]),
        (None, None) => json!([]),
    };
    json!({ "tag": "button", "text": plain(&b.label), "type": b.style.name(), "behaviors": behaviors })
}

/// A card 1.0 object for the custom-bot webhook (no callbacks), fitted under 19 KB.
pub fn render_webhook(card: &Card) -> Result<Value, CardError> {
    fit(card, "feishu_webhook", WEBHOOK_CARD_LIMIT, json_len, |c| {
        Ok(v1(c, false))
    })
}

/// A card 1.0 object with action buttons (`value: {"perch": …}`), for the legacy card
/// callback, which answers with a 1.0 card (refs §1.7). Fitted under 30 KB.
pub fn render_v1(card: &Card) -> Result<Value, CardError> {
    fit(card, "feishu_v1", CARD_LIMIT, json_len, |c| Ok(v1(c, true)))
}

fn v1(card: &Card, callbacks: bool) -> Value {
    let md = |s: &str| json!({ "tag": "lark_md", "content": s });
    let mut elements = Vec::new();
    if let Some(s) = card.header.as_ref().and_then(|h| h.subtitle.as_ref()) {
        elements.push(json!({ "tag": "div", "text": md(s) }));
    }
    for e in &card.elements {
        match e {
            Element::Markdown { text } => elements.push(json!({ "tag": "markdown", "content": text })),
            Element::Fields { fields } => {
                let fs: Vec<Value> = fields
                    .iter()
                    .map(|f| json!({ "is_short": f.short, "text": md(&format!("**{}**\n{}", f.label, f.value)) }))
                    .collect();
                elements.push(json!({ "tag": "div", "fields": fs }));
            }
            Element::Table { columns, rows } => {
                let mut lines = table_lines(columns, rows);
                lines[0] = format!("**{}**", lines[0]);
                elements.push(json!({ "tag": "div", "text": md(&lines.join("\n")) }));
            }
            Element::Image { key: Some(k), alt, .. } => {
                elements.push(json!({ "tag": "img", "img_key": k, "alt": plain(alt), "mode": "fit_horizontal" }))
            }
            Element::Image { url, alt, .. } => elements.push(json!({
                "tag": "markdown",
                "content": format!("[{}]({})", if alt.is_empty() { "image" } else { alt }, url.as_deref().unwrap_or(""))
            })),
            Element::Divider => elements.push(json!({ "tag": "hr" })),
            Element::Note { text } => elements.push(json!({ "tag": "note", "elements": [plain(text)] })),
            Element::Buttons { buttons } => {
                let actions: Vec<Value> = buttons
                    .iter()
                    .filter_map(|b| {
                        let mut v = json!({ "tag": "button", "text": plain(&b.label), "type": b.style.name() });
                        match (&b.url, &b.action) {
                            (Some(u), _) => v["url"] = json!(u),
                            (None, Some(a)) if callbacks => v["value"] = json!({ "perch": a.to_value() }),
                            _ => return None,
                        }
                        Some(v)
                    })
                    .collect();
                if !actions.is_empty() {
                    elements.push(json!({ "tag": "action", "layout": "flow", "actions": actions }));
                }
                let dropped = if callbacks { Vec::new() } else { super::action_labels(buttons) };
                if !dropped.is_empty() {
                    let text = format!("Actions ({}) need the Feishu app bot; this group bot cannot receive clicks.", dropped.join(" / "));
                    elements.push(json!({ "tag": "note", "elements": [plain(&text)] }));
                }
            }
        }
    }
    let mut v = json!({
        "config": { "wide_screen_mode": true, "update_multi": true, "enable_forward": true },
        "elements": elements,
    });
    if let Some(h) = &card.header {
        v["header"] = header(h, false);
    }
    v
}
