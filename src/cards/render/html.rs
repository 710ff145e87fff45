//! HTML for perch's built-in web chat.
//!
//! The contract with the web chat: every text is HTML-escaped here; class names start
//! with `perch-card-` (styles in `HTML_CSS`); no `<script>`, no inline event handlers,
//! no inline styles. Action buttons are
//! `<button class="perch-btn perch-btn-<style>" data-action='{"bot","action","args"}'>`
//! (the JSON attribute-escaped); the web chat's own script reads `data-action` and posts
//! the click. URL buttons are `<a class="perch-btn" href target="_blank" rel="noopener">`
//! and only ever http(s) (the model refuses other schemes). Images by platform key have
//! no URL a browser can load, so they show their alt text.

use crate::cards::markdown::{escape_html, to_html};
use crate::cards::model::{Card, Element};

/// The card as an HTML fragment.
pub fn render(card: &Card) -> String {
    let mut h = String::from("<div class=\"perch-card\">");
    if let Some(head) = &card.header {
        h.push_str(&format!(
            "<div class=\"perch-card-header perch-card-header-{}\"><div class=\"perch-card-title\">{}</div>",
            head.colour.name(),
            escape_html(&head.title)
        ));
        if let Some(s) = &head.subtitle {
            h.push_str(&format!(
                "<div class=\"perch-card-subtitle\">{}</div>",
                escape_html(s)
            ));
        }
        h.push_str("</div>");
    }
    h.push_str("<div class=\"perch-card-body\">");
    for e in &card.elements {
        match e {
            Element::Markdown { text } => h.push_str(&format!(
                "<div class=\"perch-card-markdown\">{}</div>",
                to_html(text)
            )),
            Element::Fields { fields } => {
                h.push_str("<div class=\"perch-card-fields\">");
                for f in fields {
                    h.push_str(&format!(
                        "<div class=\"perch-card-field perch-card-field-{}\"><div class=\"perch-card-field-label\">{}</div><div class=\"perch-card-field-value\">{}</div></div>",
                        if f.short { "short" } else { "long" },
                        escape_html(&f.label),
                        to_html(&f.value)
                    ));
                }
                h.push_str("</div>");
            }
            Element::Table { columns, rows } => {
                h.push_str(&super::html_table(
                    Some("perch-card-table"),
                    columns,
                    rows,
                    to_html,
                ));
            }
            Element::Image {
                url: Some(u), alt, ..
            } => h.push_str(&format!(
                "<img class=\"perch-card-image\" src=\"{}\" alt=\"{}\" loading=\"lazy\">",
                escape_html(u),
                escape_html(alt)
            )),
            Element::Image { url: None, alt, .. } => h.push_str(&format!(
                "<div class=\"perch-card-image-missing\">{}</div>",
                escape_html(alt)
            )),
            Element::Divider => h.push_str("<hr class=\"perch-card-divider\">"),
            Element::Note { text } => h.push_str(&format!(
                "<div class=\"perch-card-note\">{}</div>",
                to_html(text)
            )),
            Element::Buttons { buttons } => {
                h.push_str("<div class=\"perch-card-actions\">");
                for b in buttons {
                    match (&b.url, &b.action) {
                        (Some(u), _) => h.push_str(&format!(
                            "<a class=\"perch-btn\" href=\"{}\" target=\"_blank\" rel=\"noopener\">{}</a>",
                            escape_html(u),
                            escape_html(&b.label)
                        )),
                        (None, Some(a)) => h.push_str(&format!(
                            "<button class=\"perch-btn perch-btn-{}\" data-action='{}'>{}</button>",
                            b.style.name(),
                            escape_html(&a.to_value().to_string()),
                            escape_html(&b.label)
                        )),
                        (None, None) => {}
                    }
                }
                h.push_str("</div>");
            }
        }
    }
    h.push_str("</div></div>");
    h
}

/// Styles for the classes `render` uses; the web chat includes this once.
pub const HTML_CSS: &str = r#".perch-card{border:1px solid #dee0e3;border-radius:8px;overflow:hidden;max-width:560px;background:#fff;font:14px/1.5 system-ui,sans-serif;color:#1f2329}
.perch-card-header{padding:10px 14px;color:#fff}
.perch-card-title{font-weight:600;font-size:16px}
.perch-card-subtitle{opacity:.85;font-size:13px}
.perch-card-header-blue{background:#3370ff}.perch-card-header-wathet{background:#4ea8de}.perch-card-header-turquoise{background:#2ec4b6}
.perch-card-header-green{background:#34c724}.perch-card-header-yellow{background:#d4a017}.perch-card-header-orange{background:#ff8800}
.perch-card-header-red{background:#f54a45}.perch-card-header-carmine{background:#c62a5c}.perch-card-header-violet{background:#9b59d0}
.perch-card-header-purple{background:#7f3bf5}.perch-card-header-indigo{background:#4954e6}.perch-card-header-grey{background:#8f959e}
.perch-card-body{padding:10px 14px;display:flex;flex-direction:column;gap:8px}
.perch-card-markdown{white-space:normal;overflow-wrap:anywhere}
.perch-card-fields{display:grid;grid-template-columns:1fr 1fr;gap:6px 16px}
.perch-card-field-long{grid-column:1/-1}
.perch-card-field-label{font-weight:600;font-size:13px;color:#646a73}
.perch-card-field-value{overflow-wrap:anywhere}
.perch-card-table{border-collapse:collapse;width:100%;font-size:13px}
.perch-card-table th,.perch-card-table td{border-bottom:1px solid #eff0f1;padding:4px 6px;text-align:left}
.perch-card-table th{color:#646a73;font-weight:600}
.perch-card-image{max-width:100%;border-radius:4px}
.perch-card-image-missing{color:#8f959e;font-style:italic}
.perch-card-divider{border:0;border-top:1px solid #dee0e3;margin:2px 0}
.perch-card-note{font-size:12px;color:#8f959e}
.perch-card-actions{display:flex;flex-wrap:wrap;gap:8px}
.perch-btn{display:inline-block;padding:4px 12px;border:1px solid #d0d3d6;border-radius:6px;background:#fff;color:#1f2329;font:inherit;cursor:pointer;text-decoration:none}
.perch-btn-primary{border-color:#3370ff;color:#3370ff}
.perch-btn-danger{border-color:#f54a45;color:#f54a45}
.perch-btn:disabled{opacity:.5;cursor:default}
"#;
