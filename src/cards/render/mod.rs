//! Renderers: one pure function per platform from a validated neutral `Card` to that
//! platform's payload. Each module's doc says how it degrades what its platform lacks.
//!
//! Size limits are met here, not refused by the platform: `fit` renders, measures, and
//! when the payload is too big cuts table rows (leaving a "… and N more" note), then long
//! texts, until it fits.

pub mod dingtalk;
pub mod feishu;
pub mod html;
pub mod matrix;
pub mod slack;
pub mod text;
pub mod wecom;

use super::CardError;
use super::model::{Button, Card, Element};
use serde_json::Value;

/// Render `card`; if `size(rendered) > limit`, cut table rows (binary search for the most
/// rows that fit), then texts, until it fits.
pub(crate) fn fit(
    card: &Card,
    platform: &str,
    limit: usize,
    size: impl Fn(&Value) -> usize,
    render: impl Fn(&Card) -> Result<Value, CardError>,
) -> Result<Value, CardError> {
    let full = render(card)?;
    if size(&full) <= limit {
        return Ok(full);
    }
    let rows = card.max_table_rows();
    if rows > 0 {
        // The largest `keep` in 0..rows that fits.
        let (mut lo, mut hi) = (0usize, rows);
        let mut best = None;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let v = render(&card.with_table_rows(mid))?;
            if size(&v) <= limit {
                best = Some(v);
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if let Some(v) = best {
            return Ok(v);
        }
    }
    let bare = card.with_table_rows(0);
    for max in [2000, 1000, 500, 200, 80] {
        let v = render(&bare.with_text_limit(max))?;
        if size(&v) <= limit {
            return Ok(v);
        }
    }
    Err(CardError::TooLarge {
        platform: platform.to_string(),
        limit,
    })
}

/// Serialized JSON length in bytes.
pub(crate) fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// How much of its platform's limit a rendered payload takes (the card studio shows it
/// beside each render).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SizeUse {
    pub used: usize,
    pub limit: usize,
    /// `bytes`, or `blocks` for Slack (whose limit is a count of blocks).
    pub unit: &'static str,
}

/// `output`'s size against `platform`'s limit, measured as its renderer measures when it
/// fits a card under the limit (the same constants). `None` where we know no limit.
pub fn size_use(platform: &str, output: &Value) -> Option<SizeUse> {
    let (used, limit, unit) = match platform {
        "feishu" | "feishu_v1" => (json_len(output), feishu::CARD_LIMIT, "bytes"),
        "feishu_webhook" => (json_len(output), feishu::WEBHOOK_CARD_LIMIT, "bytes"),
        "wecom" => (wecom::measured_len(output), wecom::MARKDOWN_LIMIT, "bytes"),
        "slack" => (
            output
                .get("blocks")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            slack::MAX_BLOCKS,
            "blocks",
        ),
        _ => return None,
    };
    Some(SizeUse { used, limit, unit })
}

/// Action buttons of a card, for platforms that cannot call back: their labels joined,
/// so the reader knows what the card offers elsewhere.
pub(crate) fn action_labels(buttons: &[Button]) -> Vec<&str> {
    buttons
        .iter()
        .filter(|b| b.action.is_some())
        .map(|b| b.label.as_str())
        .collect()
}

/// Short fields in pairs, long ones alone: the two-column layout every renderer shares.
pub(crate) fn field_rows(fields: &[super::model::Field]) -> Vec<Vec<&super::model::Field>> {
    let mut rows: Vec<Vec<&super::model::Field>> = Vec::new();
    for f in fields {
        match rows.last_mut() {
            Some(last) if f.short && last.len() == 1 && last[0].short => last.push(f),
            _ => rows.push(vec![f]),
        }
    }
    rows
}

/// A table as text lines: a header line, then one line per row, cells joined by ` | `.
pub(crate) fn table_lines(columns: &[String], rows: &[Vec<super::model::Cell>]) -> Vec<String> {
    let mut lines = vec![columns.join(" | ")];
    lines.extend(
        rows.iter()
            .map(|r| r.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" | ")),
    );
    lines
}

/// Whether the card has any element of this kind (for choosing a message type).
pub(crate) fn has_url_button(card: &Card) -> bool {
    card.elements.iter().any(
        |e| matches!(e, Element::Buttons { buttons } if buttons.iter().any(|b| b.url.is_some())),
    )
}

/// An HTML table (header row, then body rows), for the renderers that emit HTML (the web
/// chat, Matrix). Header cells are escaped; body cells go through `cell`, so each
/// renderer decides whether cells may carry markdown.
pub fn html_table(
    class: Option<&str>,
    columns: &[String],
    rows: &[Vec<super::model::Cell>],
    cell: impl Fn(&str) -> String,
) -> String {
    let mut h = match class {
        Some(c) => format!("<table class=\"{c}\"><thead><tr>"),
        None => "<table><thead><tr>".to_string(),
    };
    for c in columns {
        h.push_str(&format!("<th>{}</th>", super::markdown::escape_html(c)));
    }
    h.push_str("</tr></thead><tbody>");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            h.push_str(&format!("<td>{}</td>", cell(c.as_str())));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}
