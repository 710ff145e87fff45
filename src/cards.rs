//! Cards: perch's neutral card JSON and its renderers. (Seam for the cards work: for
//! now only the plain-text fallback that text-only platforms and logs use.)

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
