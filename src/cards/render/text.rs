//! Plain text: the fallback for notifications, logs and platforms that show only text.
//!
//! Title (and subtitle) first, then each element: markdown with its markers dropped,
//! fields as `Label: value` (two short fields share a line, ` · ` between them), tables
//! as ` | `-separated lines, images as `[image: alt] url`, a divider as a line of `—`,
//! notes as is, URL buttons as `Label: url` and action buttons as `[Label]` (text cannot
//! be pressed; the labels say what the card offers on platforms with buttons).

use crate::cards::markdown::to_plain;
use crate::cards::model::{Card, Element};

/// The card as plain text.
pub fn render(card: &Card) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(h) = &card.header {
        parts.push(h.title.clone());
        if let Some(s) = &h.subtitle {
            parts.push(s.clone());
        }
    }
    for e in &card.elements {
        match e {
            Element::Markdown { text } => parts.push(to_plain(text)),
            Element::Fields { fields } => {
                let lines: Vec<String> = super::field_rows(fields)
                    .iter()
                    .map(|row| {
                        row.iter()
                            .map(|f| format!("{}: {}", f.label, to_plain(&f.value)))
                            .collect::<Vec<_>>()
                            .join(" · ")
                    })
                    .collect();
                parts.push(lines.join("\n"));
            }
            Element::Table { columns, rows } => {
                parts.push(super::table_lines(columns, rows).join("\n"))
            }
            Element::Image { url, alt, .. } => parts.push(match url {
                Some(u) => format!("[image: {alt}] {u}"),
                None => format!("[image: {alt}]"),
            }),
            Element::Divider => parts.push("——————".into()),
            Element::Note { text } => parts.push(to_plain(text)),
            Element::Buttons { buttons } => {
                let b: Vec<String> = buttons
                    .iter()
                    .map(|b| match &b.url {
                        Some(u) => format!("{}: {u}", b.label),
                        None => format!("[{}]", b.label),
                    })
                    .collect();
                parts.push(b.join("  "));
            }
        }
    }
    parts.join("\n")
}
