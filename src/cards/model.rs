//! The neutral card: the typed model every template produces and every renderer reads.
//!
//! A template renders JSON; `Card::parse` turns it into this model (unknown fields are
//! refused, so a typo in a template is an error, not a silently missing part), then
//! `Card::validate` checks what serde cannot (a button has either a `url` or an
//! `action`, table rows have as many cells as there are columns, URLs are http(s)).
//! Renderers in `render/` only ever see a validated card.
//!
//! Not in the model (yet): select/input forms. Only Feishu (2.0 `form`) and Slack
//! (`static_select` in an actions block) could show them, none of the seed cards need
//! them, and the click round trip carries button actions only; buttons with `args`
//! cover the seed cases (Done / Snooze 1 day / Reassign).
//!
//! ```json
//! {"header": {"title": "Daily figures", "subtitle": "Mon 3 Nov", "colour": "blue"},
//!  "elements": [
//!    {"type": "markdown", "text": "**GMV** is up"},
//!    {"type": "fields", "fields": [{"label": "GMV", "value": "1,234", "short": true}]},
//!    {"type": "table", "columns": ["Region", "GMV"], "rows": [["North", "1,000"]]},
//!    {"type": "image", "url": "https://…/chart.png", "alt": "chart"},
//!    {"type": "divider"},
//!    {"type": "note", "text": "Source: BI"},
//!    {"type": "buttons", "buttons": [
//!      {"label": "Done", "style": "primary", "action": {"bot": "reminders", "action": "done", "args": {"id": 42}}},
//!      {"label": "Open", "url": "https://…"}]}]}
//! ```

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A neutral card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// The coloured title bar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<Header>,
    /// The body, top to bottom.
    #[serde(default)]
    pub elements: Vec<Element>,
}

/// Title, optional subtitle, and the header colour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitle: Option<String>,
    /// One of Feishu's header templates (the other platforms map it as best they can).
    #[serde(default, alias = "color")]
    pub colour: Colour,
}

/// Header colours: Feishu's header `template` list (refs §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    #[default]
    Blue,
    Wathet,
    Turquoise,
    Green,
    Yellow,
    Orange,
    Red,
    Carmine,
    Violet,
    Purple,
    Indigo,
    Grey,
}

impl Colour {
    /// The lowercase name (Feishu's `template` value and the HTML class suffix).
    pub fn name(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Wathet => "wathet",
            Colour::Turquoise => "turquoise",
            Colour::Green => "green",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Red => "red",
            Colour::Carmine => "carmine",
            Colour::Violet => "violet",
            Colour::Purple => "purple",
            Colour::Indigo => "indigo",
            Colour::Grey => "grey",
        }
    }

    /// An RGB approximation, for platforms that take a colour value (Matrix).
    pub fn hex(self) -> &'static str {
        match self {
            Colour::Blue => "#3370ff",
            Colour::Wathet => "#4ea8de",
            Colour::Turquoise => "#2ec4b6",
            Colour::Green => "#34c724",
            Colour::Yellow => "#d4a017",
            Colour::Orange => "#ff8800",
            Colour::Red => "#f54a45",
            Colour::Carmine => "#c62a5c",
            Colour::Violet => "#9b59d0",
            Colour::Purple => "#7f3bf5",
            Colour::Indigo => "#4954e6",
            Colour::Grey => "#8f959e",
        }
    }
}

/// One part of the card body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Element {
    /// Markdown text: `**bold**`, `*italic*`, `` `code` ``, `[link](https://…)`, line breaks.
    Markdown { text: String },
    /// Label/value pairs; consecutive short fields pair up in two columns.
    Fields { fields: Vec<Field> },
    /// A table of text cells.
    Table {
        columns: Vec<String>,
        rows: Vec<Vec<Cell>>,
    },
    /// An image by URL (http/https) or by a platform key (Feishu `img_key`), with alt text.
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default)]
        alt: String,
    },
    /// A horizontal rule.
    Divider,
    /// Small print (source, time, footer).
    Note { text: String },
    /// A row of buttons.
    Buttons { buttons: Vec<Button> },
}

impl Element {
    /// The element's `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Element::Markdown { .. } => "markdown",
            Element::Fields { .. } => "fields",
            Element::Table { .. } => "table",
            Element::Image { .. } => "image",
            Element::Divider => "divider",
            Element::Note { .. } => "note",
            Element::Buttons { .. } => "buttons",
        }
    }
}

/// A label/value pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub label: String,
    pub value: String,
    /// Short fields sit two to a row; long ones take the whole width. Default: short.
    #[serde(default = "yes")]
    pub short: bool,
}

fn yes() -> bool {
    true
}

/// A table cell: written as a string, number or boolean in the card JSON, kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Cell(pub String);

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Cell(s)),
            Value::Number(n) => Ok(Cell(n.to_string())),
            Value::Bool(b) => Ok(Cell(b.to_string())),
            Value::Null => Ok(Cell(String::new())),
            other => Err(serde::de::Error::custom(format!(
                "a table cell must be a string, number, boolean or null, not {}",
                json_kind(&other)
            ))),
        }
    }
}

impl Cell {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A button: opens a `url`, or sends an `action` back to a bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Button {
    pub label: String,
    #[serde(default)]
    pub style: ButtonStyle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonStyle {
    #[default]
    Default,
    Primary,
    Danger,
}

impl ButtonStyle {
    pub fn name(self) -> &'static str {
        match self {
            ButtonStyle::Default => "default",
            ButtonStyle::Primary => "primary",
            ButtonStyle::Danger => "danger",
        }
    }
}

/// What a button press sends back: the bot that owns the card, the action's name and its
/// arguments. This is the value every platform carries in its button (Feishu
/// `{"perch": {...}}` in the callback value, Slack the button `value`, the web chat
/// `data-action`), and what becomes `event::CardAction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRef {
    pub bot: String,
    pub action: String,
    #[serde(default = "empty_object")]
    pub args: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl ActionRef {
    /// The action as a JSON object `{"bot","action","args"}`.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "bot": self.bot, "action": self.action, "args": self.args })
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_web_url(u: &str) -> bool {
    let lower = u.trim_start().to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Card {
    /// Parse and validate a neutral card from JSON. The error is one line naming the field.
    pub fn parse(v: &Value) -> Result<Card, String> {
        let card = Card::deserialize(v).map_err(|e| one_line(&e.to_string()))?;
        card.validate()?;
        Ok(card)
    }

    /// Parse JSON text (a template's output) into a validated card.
    pub fn parse_str(s: &str) -> Result<Card, String> {
        let v: Value = serde_json::from_str(s)
            .map_err(|e| format!("not valid JSON: {}", one_line(&e.to_string())))?;
        Card::parse(&v)
    }

    /// What serde cannot check.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .header
            .as_ref()
            .is_some_and(|h| h.title.trim().is_empty())
        {
            return Err("header.title is empty".into());
        }
        if self.header.is_none() && self.elements.is_empty() {
            return Err("the card has neither a header nor elements".into());
        }
        for (i, e) in self.elements.iter().enumerate() {
            let at = format!("elements[{i}]");
            match e {
                Element::Fields { fields } if fields.is_empty() => {
                    return Err(format!("{at}.fields is empty"));
                }
                Element::Table { columns, rows } => {
                    if columns.is_empty() {
                        return Err(format!("{at}.columns is empty"));
                    }
                    for (r, row) in rows.iter().enumerate() {
                        if row.len() != columns.len() {
                            return Err(format!(
                                "{at}.rows[{r}] has {} cell(s) but there are {} column(s)",
                                row.len(),
                                columns.len()
                            ));
                        }
                    }
                }
                Element::Image { url, key, .. } => match (url, key) {
                    (None, None) => return Err(format!("{at}: an image needs a `url` or a `key`")),
                    (Some(u), _) if !is_web_url(u) => {
                        return Err(format!(
                            "{at}.url must be an http(s) URL, got {:?}",
                            truncate_chars(u, 60)
                        ));
                    }
                    _ => {}
                },
                Element::Buttons { buttons } => {
                    if buttons.is_empty() {
                        return Err(format!("{at}.buttons is empty"));
                    }
                    for (b, button) in buttons.iter().enumerate() {
                        let at = format!("{at}.buttons[{b}]");
                        if button.label.trim().is_empty() {
                            return Err(format!("{at}.label is empty"));
                        }
                        match (&button.url, &button.action) {
                            (Some(_), Some(_)) => {
                                return Err(format!(
                                    "{at}: give either `url` or `action`, not both"
                                ));
                            }
                            (None, None) => {
                                return Err(format!("{at}: a button needs a `url` or an `action`"));
                            }
                            (Some(u), None) if !is_web_url(u) => {
                                return Err(format!(
                                    "{at}.url must be an http(s) URL, got {:?}",
                                    truncate_chars(u, 60)
                                ));
                            }
                            (None, Some(a)) => {
                                if a.bot.trim().is_empty() {
                                    return Err(format!("{at}.action.bot is empty"));
                                }
                                if a.action.trim().is_empty() {
                                    return Err(format!("{at}.action.action is empty"));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The element kinds in order (used to check that data never changes a card's shape).
    pub fn shape(&self) -> Vec<&'static str> {
        self.elements.iter().map(Element::kind).collect()
    }

    /// The most rows any table holds.
    pub fn max_table_rows(&self) -> usize {
        self.elements
            .iter()
            .filter_map(|e| match e {
                Element::Table { rows, .. } => Some(rows.len()),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// A copy where every table keeps at most `keep` rows, followed by a note
    /// "… and N more" for what was cut.
    pub fn with_table_rows(&self, keep: usize) -> Card {
        let mut elements = Vec::with_capacity(self.elements.len() + 2);
        for e in &self.elements {
            match e {
                Element::Table { columns, rows } if rows.len() > keep => {
                    elements.push(Element::Table {
                        columns: columns.clone(),
                        rows: rows[..keep].to_vec(),
                    });
                    elements.push(Element::Note {
                        text: format!("… and {} more", rows.len() - keep),
                    });
                }
                other => elements.push(other.clone()),
            }
        }
        Card {
            header: self.header.clone(),
            elements,
        }
    }

    /// A copy where every free text (markdown, field values, notes) is cut to `max` chars.
    pub fn with_text_limit(&self, max: usize) -> Card {
        let cut = |s: &String| truncate_chars(s, max);
        let elements = self
            .elements
            .iter()
            .map(|e| match e {
                Element::Markdown { text } => Element::Markdown { text: cut(text) },
                Element::Note { text } => Element::Note { text: cut(text) },
                Element::Fields { fields } => Element::Fields {
                    fields: fields
                        .iter()
                        .map(|f| Field {
                            label: cut(&f.label),
                            value: cut(&f.value),
                            short: f.short,
                        })
                        .collect(),
                },
                Element::Table { columns, rows } => Element::Table {
                    columns: columns.iter().map(cut).collect(),
                    rows: rows
                        .iter()
                        .map(|r| r.iter().map(|c| Cell(cut(&c.0))).collect())
                        .collect(),
                },
                other => other.clone(),
            })
            .collect();
        Card {
            header: self.header.clone(),
            elements,
        }
    }
}

/// Cut `s` to at most `max` characters, ending with `…` when cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
/// Cut `s` to at most `max` UTF-8 bytes on a character boundary, ending with `…` when cut.
pub fn truncate_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let budget = max.saturating_sub('…'.len_utf8());
    let mut end = budget.min(s.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Errors on one line (serde_json messages can carry newlines from the input).
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_full_card() {
        let v = json!({"header": {"title": "T", "color": "red"}, "elements": [
            {"type": "markdown", "text": "hi"},
            {"type": "table", "columns": ["a", "b"], "rows": [["x", 1], [true, null]]},
            {"type": "buttons", "buttons": [{"label": "Done", "action": {"bot": "r", "action": "done"}}]}]});
        let card = Card::parse(&v).unwrap();
        assert_eq!(card.header.as_ref().unwrap().colour, Colour::Red);
        assert_eq!(card.shape(), vec!["markdown", "table", "buttons"]);
    }

    #[test]
    fn bad_cards_name_the_field() {
        let cases = [
            (json!({"header": {"title": "T", "colr": "red"}}), "colr"),
            (json!({"elements": [{"type": "tabel"}]}), "tabel"),
            (
                json!({"elements": [{"type": "table", "columns": ["a"], "rows": [["1", "2"]]}]}),
                "elements[0].rows[0]",
            ),
            (
                json!({"elements": [{"type": "buttons", "buttons": [{"label": "x"}]}]}),
                "elements[0].buttons[0]",
            ),
            (
                json!({"elements": [{"type": "buttons", "buttons": [{"label": "x", "url": "javascript:alert(1)"}]}]}),
                "url",
            ),
            (
                json!({"elements": [{"type": "image", "alt": "x"}]}),
                "elements[0]",
            ),
            (json!({"header": {"title": "T", "colour": "pink"}}), "pink"),
            (json!({}), "neither"),
        ];
        for (v, needle) in cases {
            let e = Card::parse(&v).unwrap_err();
            assert!(e.contains(needle), "{e:?} should mention {needle}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn truncation_adds_a_more_line() {
        let v = json!({"elements": [{"type": "table", "columns": ["a"], "rows": [["1"], ["2"], ["3"]]}]});
        let card = Card::parse(&v).unwrap().with_table_rows(1);
        assert_eq!(card.shape(), vec!["table", "note"]);
        assert_eq!(
            card.elements[1],
            Element::Note {
                text: "… and 2 more".into()
            }
        );
        assert_eq!(truncate_bytes("ééé", 4), "…");
        assert_eq!(truncate_chars("abcdef", 4), "abc…");
    }
}
