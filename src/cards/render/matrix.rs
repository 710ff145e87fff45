//! Matrix (`m.room.message`): `{"msgtype":"m.text","body":plain,"format":
//! "org.matrix.custom.html","formatted_body":html}`.
//!
//! `body` is the plain-text rendering. `formatted_body` uses only tags the Matrix spec
//! lists for `org.matrix.custom.html`, every text escaped:
//! - header → `<h4>` with `<font data-mx-color>` for the header colour; subtitle `<em>`.
//! - fields → `<b>label</b>: value` lines; tables → `<table>` with `<thead>`/`<tbody>`.
//! - images: Matrix clients only load `mxc://` sources, so an image whose `key` is an
//!   `mxc://` URI is an `<img>`; an http(s) image becomes a link with its alt text.
//! - divider `<hr>`; note `<sub>`.
//! - buttons: Matrix messages have none. URL buttons become links; action buttons are
//!   named in a closing line ("React with: Done / Snooze"): the Matrix connector adds
//!   the bot's reaction for each, and a person's click on one presses the button
//!   (`connectors/matrix/mod.rs`).
//! - Events are capped at 65 KB; over 60 KB, table rows are cut with "… and N more".

use super::fit;
use crate::cards::CardError;
use crate::cards::markdown::{escape_html, to_html};
use crate::cards::model::{Card, Element};
use serde_json::{Value, json};

const LIMIT: usize = 60_000;

/// The `m.room.message` content.
pub fn render(card: &Card) -> Result<Value, CardError> {
    fit(card, "matrix", LIMIT, super::json_len, |c| Ok(content(c)))
}

fn content(card: &Card) -> Value {
    let mut h = String::new();
    if let Some(head) = &card.header {
        h.push_str(&format!(
            "<h4><font data-mx-color=\"{}\">{}</font></h4>",
            head.colour.hex(),
            escape_html(&head.title)
        ));
        if let Some(s) = &head.subtitle {
            h.push_str(&format!("<p><em>{}</em></p>", escape_html(s)));
        }
    }
    let mut actions = Vec::new();
    for e in &card.elements {
        match e {
            Element::Markdown { text } => h.push_str(&format!("<p>{}</p>", to_html(text))),
            Element::Fields { fields } => {
                let lines: Vec<String> = fields
                    .iter()
                    .map(|f| format!("<b>{}</b>: {}", escape_html(&f.label), to_html(&f.value)))
                    .collect();
                h.push_str(&format!("<p>{}</p>", lines.join("<br>")));
            }
            Element::Table { columns, rows } => {
                h.push_str(&super::html_table(None, columns, rows, escape_html));
            }
            Element::Image {
                key: Some(k), alt, ..
            } if k.starts_with("mxc://") => h.push_str(&format!(
                "<img src=\"{}\" alt=\"{}\">",
                escape_html(k),
                escape_html(alt)
            )),
            Element::Image {
                url: Some(u), alt, ..
            } => h.push_str(&format!(
                "<p><a href=\"{}\">{}</a></p>",
                escape_html(u),
                escape_html(if alt.is_empty() { "image" } else { alt })
            )),
            Element::Image { alt, .. } => {
                h.push_str(&format!("<p><em>[image: {}]</em></p>", escape_html(alt)))
            }
            Element::Divider => h.push_str("<hr>"),
            Element::Note { text } => h.push_str(&format!("<p><sub>{}</sub></p>", to_html(text))),
            Element::Buttons { buttons } => {
                let links: Vec<String> = buttons
                    .iter()
                    .filter_map(|b| {
                        b.url.as_ref().map(|u| {
                            format!(
                                "<a href=\"{}\">{}</a>",
                                escape_html(u),
                                escape_html(&b.label)
                            )
                        })
                    })
                    .collect();
                if !links.is_empty() {
                    h.push_str(&format!("<p>{}</p>", links.join(" · ")));
                }
                actions.extend(super::action_labels(buttons).into_iter().map(escape_html));
            }
        }
    }
    if !actions.is_empty() {
        h.push_str(&format!(
            "<p><sub>React with: {}</sub></p>",
            actions.join(" / ")
        ));
    }
    json!({
        "msgtype": "m.text",
        "body": super::text::render(card),
        "format": "org.matrix.custom.html",
        "formatted_body": h,
    })
}
