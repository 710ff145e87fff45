//! WeCom group robot (refs §6): the full `markdown` or `template_card` message body.
//!
//! - A card with a URL button becomes a `template_card` of type `text_notice`: the title
//!   and subtitle go to `main_title`, markdown and notes (as plain text) to
//!   `sub_title_text`, short fields to `horizontal_content_list` (≤ 6), URL buttons to
//!   `jump_list` (≤ 3) and the first URL to the required `card_action`. Tables degrade to
//!   `col | col` lines in `sub_title_text`; images are dropped (text_notice has none).
//! - Otherwise a `markdown` message (≤ 4096 bytes): the title as `## `, coloured with
//!   WeCom's three font colours where the header colour is close (red-ish → `warning`,
//!   green-ish → `info`, grey → `comment`); fields as `**label**: value`; tables as
//!   ` | ` lines (WeCom markdown has no tables); images as links (no inline images);
//!   notes in `comment` colour.
//! - Action buttons cannot work (a robot webhook gets no clicks): they are left out and
//!   a line names them.
//! - Over the limit, table rows are cut with "… and N more", then long texts.
//! - The refs give no per-field lengths for template_card; titles (36), key names (20),
//!   values (60) and jump titles (20) are cut to conservative lengths \[unverified\].

use super::{field_rows, fit, table_lines};
use crate::cards::CardError;
use crate::cards::markdown::to_plain;
use crate::cards::model::{Card, Colour, Element, truncate_chars};
use serde_json::{Value, json};

/// WeCom markdown content limit, in bytes.
pub const MARKDOWN_LIMIT: usize = 4096;

/// The message body to POST to the robot webhook.
pub fn render(card: &Card) -> Result<Value, CardError> {
    if super::has_url_button(card) {
        fit(card, "wecom", MARKDOWN_LIMIT, measured_len, |c| {
            Ok(template_card(c))
        })
    } else {
        fit(card, "wecom", MARKDOWN_LIMIT, measured_len, |c| {
            Ok(markdown(c))
        })
    }
}

/// What counts against `MARKDOWN_LIMIT`: a markdown message's content, or a template
/// card's whole JSON.
pub fn measured_len(v: &Value) -> usize {
    match v.pointer("/markdown/content").and_then(Value::as_str) {
        Some(content) => content.len(),
        None => super::json_len(v),
    }
}

fn font(colour: Colour) -> Option<&'static str> {
    match colour {
        Colour::Red | Colour::Carmine | Colour::Orange | Colour::Yellow => Some("warning"),
        Colour::Green | Colour::Turquoise => Some("info"),
        Colour::Grey => Some("comment"),
        _ => None,
    }
}

fn markdown(card: &Card) -> Value {
    let mut lines: Vec<String> = Vec::new();
    if let Some(h) = &card.header {
        lines.push(match font(h.colour) {
            Some(c) => format!("## <font color=\"{c}\">{}</font>", h.title),
            None => format!("## {}", h.title),
        });
        if let Some(s) = &h.subtitle {
            lines.push(format!("<font color=\"comment\">{s}</font>"));
        }
    }
    let mut actions = Vec::new();
    for e in &card.elements {
        match e {
            Element::Markdown { text } => lines.push(text.clone()),
            Element::Fields { fields } => lines.extend(
                fields
                    .iter()
                    .map(|f| format!("**{}**: {}", f.label, f.value)),
            ),
            Element::Table { columns, rows } => {
                let mut t = table_lines(columns, rows);
                t[0] = format!("**{}**", t[0]);
                lines.extend(t);
            }
            Element::Image {
                url: Some(u), alt, ..
            } => lines.push(format!(
                "[{}]({u})",
                if alt.is_empty() { "image" } else { alt }
            )),
            Element::Image { url: None, alt, .. } => lines.push(format!("[image: {alt}]")),
            Element::Divider => lines.push("———".into()),
            Element::Note { text } => lines.push(format!("<font color=\"comment\">{text}</font>")),
            Element::Buttons { buttons } => {
                for b in buttons {
                    match &b.url {
                        Some(u) => lines.push(format!("[{}]({u})", b.label)),
                        None => actions.push(b.label.clone()),
                    }
                }
            }
        }
    }
    if !actions.is_empty() {
        lines.push(format!(
            "<font color=\"comment\">Actions: {} (not available in WeCom)</font>",
            actions.join(" / ")
        ));
    }
    json!({ "msgtype": "markdown", "markdown": { "content": lines.join("\n") } })
}

fn template_card(card: &Card) -> Value {
    let mut sub: Vec<String> = Vec::new();
    let mut horizontal = Vec::new();
    let mut jumps = Vec::new();
    let mut actions = Vec::new();
    for e in &card.elements {
        match e {
            Element::Markdown { text } | Element::Note { text } => sub.push(to_plain(text)),
            Element::Fields { fields } => {
                for row in field_rows(fields) {
                    for f in row {
                        if f.short && horizontal.len() < 6 {
                            horizontal.push(json!({ "keyname": truncate_chars(&f.label, 20), "value": truncate_chars(&to_plain(&f.value), 60) }));
                        } else {
                            sub.push(format!("{}: {}", f.label, to_plain(&f.value)));
                        }
                    }
                }
            }
            Element::Table { columns, rows } => sub.extend(table_lines(columns, rows)),
            Element::Image { .. } | Element::Divider => {}
            Element::Buttons { buttons } => {
                for b in buttons {
                    match &b.url {
                        Some(u) if jumps.len() < 3 => jumps.push(
                            json!({ "type": 1, "url": u, "title": truncate_chars(&b.label, 20) }),
                        ),
                        Some(_) => {}
                        None => actions.push(b.label.clone()),
                    }
                }
            }
        }
    }
    if !actions.is_empty() {
        sub.push(format!(
            "Actions: {} (not available in WeCom)",
            actions.join(" / ")
        ));
    }
    let first_url = jumps
        .first()
        .and_then(|j| j["url"].as_str())
        .unwrap_or_default()
        .to_string();
    let (title, desc) = match &card.header {
        Some(h) => (h.title.clone(), h.subtitle.clone().unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    let mut tc = json!({
        "card_type": "text_notice",
        "main_title": { "title": truncate_chars(&title, 36), "desc": truncate_chars(&desc, 60) },
        "card_action": { "type": 1, "url": first_url },
    });
    if !sub.is_empty() {
        tc["sub_title_text"] = json!(sub.join("\n"));
    }
    if !horizontal.is_empty() {
        tc["horizontal_content_list"] = json!(horizontal);
    }
    if !jumps.is_empty() {
        tc["jump_list"] = json!(jumps);
    }
    json!({ "msgtype": "template_card", "template_card": tc })
}
