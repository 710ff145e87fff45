//! `query`: data commands. `@bot gmv 昨天` or `@bot ct SN12345` calls an internal API and
//! answers with a card in seconds.
//!
//! Each command is a table: the data source, a path template filled from the arguments
//! (`/ct/{{arg.[0]}}` or by name `/ct/{{serial}}`; values are percent-encoded), an argument
//! schema (required/optional, a pattern, a default) and a card template. Wrong or missing
//! arguments answer with that command's usage; a failing source answers with what failed
//! ("BI API timed out after 5 s"), never with silence.
//!
//! ```toml
//! [bots.data]
//! kind = "query"
//! source = "bi"
//! [bots.data.commands.gmv]
//! path = "/gmv/{{day}}"
//! summary = "GMV of a day"
//! args = [{ name = "day", pattern = "^(今天|昨天|\\d{4}-\\d{2}-\\d{2})$", default = "昨天" }]
//! template = "query_answer"
//! ```
//! Routes send the command words to this bot: `mention = "*"`, `command = "gmv"`.

use super::text_template::{Escape, TextTemplates};
use super::*;
use crate::cards::markdown as md;
use crate::connectors::DataRequest;
use rust_i18n::t;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Default data source (an `http` or `file` connector) for the commands.
    #[serde(default)]
    pub source: Option<String>,
    /// The commands, by command word.
    pub commands: BTreeMap<String, CommandConfig>,
}

#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Data source for this command (overrides the bot's).
    #[serde(default)]
    pub source: Option<String>,
    /// Path template below the source's base, over `arg` (positional) and the named args.
    pub path: String,
    /// The arguments, in order.
    #[serde(default)]
    pub args: Vec<ArgConfig>,
    /// JSON pointer to the part of the answer the card shows (default: all of it).
    #[serde(default)]
    pub pointer: Option<String>,
    /// Card template; data: `{command, args, result}`. Without one, the answer is shown as
    /// a short list of its fields.
    #[serde(default)]
    pub template: Option<String>,
    /// One line for `help`.
    #[serde(default)]
    pub summary: String,
    /// The fields the card shows, in this order, with their labels and number formats
    /// (`[{ key = "gmv", label = "GMV", decimals = 2 }]`). Unset: every plain field of the
    /// answer, labelled from its key (`new_customers` → "New customers"), numbers with
    /// thousands separators.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
}

/// One field of a query's answer as the card shows it.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// The key in the answer object.
    pub key: String,
    /// The label (default: from the key).
    #[serde(default)]
    pub label: Option<String>,
    /// Decimals for a number (default: none for whole numbers, else 2).
    #[serde(default)]
    pub decimals: Option<usize>,
}

/// `new_customers` → "New customers".
fn label_of(key: &str) -> String {
    let words = key.replace(['_', '-'], " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A value as a card shows it: numbers with thousands separators.
fn shown(v: &serde_json::Value, decimals: Option<usize>) -> String {
    match v.as_f64() {
        Some(n) if v.is_number() => {
            let decimals = decimals.unwrap_or(if n.fract() == 0.0 { 0 } else { 2 });
            crate::cards::helpers::format_number(n, decimals)
        }
        _ => cell_text(v),
    }
}

#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArgConfig {
    pub name: String,
    /// A regular expression the whole value must match. `\d` and `\D` mean the ASCII
    /// digits 0-9 here (perch rewrites them, `ascii_digits`): the regex crate's `\d`
    /// also matches the digits of every other script (`١٢٣`, `１２３`), which an API
    /// expecting `2026-11-20` would choke on. Write `\p{Nd}` for any script's digits.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Value when the argument is left out; an argument with no default is required.
    #[serde(default)]
    pub default: Option<String>,
    /// Words shown in the usage line (`YYYY-MM-DD`); default: the pattern.
    #[serde(default)]
    pub hint: Option<String>,
}

impl QueryConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        if self.commands.is_empty() {
            issues.at(
                at,
                format!("bot `{name}`: add at least one [bots.{name}.commands.<word>]"),
            );
        }
        for (word, c) in &self.commands {
            if let Some(t) = &c.template {
                config.check_template(
                    issues,
                    at,
                    &format!("bot `{name}`, command `{word}`: template"),
                    t,
                );
            }
            match c.source.as_ref().or(self.source.as_ref()) {
                None => issues.at(at, format!("bot `{name}`, command `{word}`: no `source`")),
                Some(s) => config.check_connector(
                    issues,
                    at,
                    &format!("bot `{name}`, command `{word}`: source"),
                    s,
                ),
            }
            for a in &c.args {
                if let Some(p) = &a.pattern
                    && let Err(e) = regex::Regex::new(&ascii_digits(p))
                {
                    issues.at(
                        at,
                        format!(
                            "bot `{name}`, command `{word}`, arg `{}`: bad pattern: {}",
                            a.name,
                            crate::config::regex_problem(&e)
                        ),
                    );
                }
            }
            let mut optional_seen = false;
            for a in &c.args {
                if a.default.is_some() {
                    optional_seen = true;
                } else if optional_seen {
                    issues.at(at, format!("bot `{name}`, command `{word}`: required arg `{}` after an optional one", a.name));
                }
            }
            if let Err(e) = TextTemplates::new(name, Escape::Url).add(word, &c.path) {
                issues.at(at, e.to_string());
            }
        }
    }
}

struct Command {
    config: CommandConfig,
    source: String,
    patterns: Vec<Option<regex::Regex>>,
}

pub struct Query {
    commands: BTreeMap<String, Command>,
    paths: TextTemplates,
}

impl Query {
    pub fn new(name: &str, config: &QueryConfig) -> Result<Self, BotError> {
        let mut paths = TextTemplates::new(name, Escape::Url);
        let mut commands = BTreeMap::new();
        for (word, c) in &config.commands {
            paths.add(word, &c.path)?;
            let source = c
                .source
                .clone()
                .or_else(|| config.source.clone())
                .ok_or_else(|| BotError::Config(format!("command `{word}` has no source")))?;
            let patterns = c
                .args
                .iter()
                .map(|a| {
                    a.pattern
                        .as_deref()
                        .map(|p| regex::Regex::new(&format!("^(?:{})$", ascii_digits(p))))
                        .transpose()
                })
                .collect::<Result<_, _>>()
                .map_err(|e| BotError::Config(e.to_string()))?;
            commands.insert(
                word.to_lowercase(),
                Command {
                    config: c.clone(),
                    source,
                    patterns,
                },
            );
        }
        Ok(Query { commands, paths })
    }

    fn usage(word: &str, c: &CommandConfig) -> String {
        let mut line = format!("@bot {word}");
        for a in &c.args {
            let shown = a
                .hint
                .clone()
                .or_else(|| a.pattern.clone())
                .unwrap_or_else(|| a.name.clone());
            if a.default.is_some() {
                line.push_str(&format!(" [{}: {shown}]", a.name));
            } else {
                line.push_str(&format!(" <{}: {shown}>", a.name));
            }
        }
        line
    }

    /// Check the arguments against the schema; the named values, or the usage answer
    /// (written with the mention the person used: `@data gmv …`).
    fn bind(
        &self,
        word: &str,
        cmd: &Command,
        given: &[String],
        mention: &str,
        locale: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, BotError> {
        let usage = || {
            let line = format!(
                "@{mention} {}",
                Self::usage(word, &cmd.config).trim_start_matches("@bot ")
            );
            t!("query.usage", locale = locale, usage = md::code(&line)).into_owned()
        };
        if given.len() > cmd.config.args.len() {
            return Err(BotError::User(
                t!("query.too_many", locale = locale, usage = usage()).into_owned(),
            ));
        }
        let mut named = serde_json::Map::new();
        let mut positional = Vec::new();
        for (i, (spec, pattern)) in cmd.config.args.iter().zip(&cmd.patterns).enumerate() {
            let value = match given.get(i).cloned().or_else(|| spec.default.clone()) {
                Some(v) => v,
                None => {
                    return Err(BotError::User(
                        t!(
                            "query.missing",
                            locale = locale,
                            what = md::code(&format!("<{}>", spec.name)),
                            usage = usage()
                        )
                        .into_owned(),
                    ));
                }
            };
            if pattern.as_ref().is_some_and(|p| !p.is_match(&value)) {
                return Err(BotError::User(
                    t!(
                        "query.not_valid",
                        locale = locale,
                        value = md::code(&value),
                        what = md::escape(&spec.name),
                        usage = usage()
                    )
                    .into_owned(),
                ));
            }
            positional.push(serde_json::Value::String(value.clone()));
            named.insert(spec.name.clone(), serde_json::Value::String(value));
        }
        named.insert("arg".into(), serde_json::Value::Array(positional));
        Ok(named)
    }
}

/// The parts of an answer a card shows: an object's scalar fields as `fields`, an
/// array of objects as a `table`, anything else as the `answer` text.
fn card_data(
    result: &serde_json::Value,
    wanted: &[FieldConfig],
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{Value, json};
    let mut data = serde_json::Map::new();
    match result {
        Value::Object(map) if !wanted.is_empty() => {
            let fields: Vec<Value> = wanted
                .iter()
                .map(|f| {
                    let label = f.label.clone().unwrap_or_else(|| label_of(&f.key));
                    let value = map
                        .get(&f.key)
                        .map(|v| shown(v, f.decimals))
                        .unwrap_or_else(|| "—".to_string());
                    json!({ "label": label, "value": value })
                })
                .collect();
            data.insert("fields".into(), Value::Array(fields));
        }
        Value::Object(map) => {
            let fields: Vec<Value> = map
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| json!({ "label": label_of(k), "value": shown(v, None) }))
                .collect();
            data.insert("fields".into(), Value::Array(fields));
        }
        Value::Array(rows) if rows.iter().all(Value::is_object) && !rows.is_empty() => {
            data.insert("table".into(), table_of(rows).unwrap_or_default());
        }
        other => {
            data.insert("answer".into(), Value::String(cell_text(other)));
        }
    }
    data
}

/// A card-less answer: the fields of an object, or the JSON itself.
fn plain_answer(word: &str, result: &serde_json::Value) -> crate::action::MessageBody {
    let mut text = format!("**{word}**\n");
    match result {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                text.push_str(&format!("- {k}: {v}\n"));
            }
        }
        other => text.push_str(&format!("{}\n", md::code(&other.to_string()))),
    }
    crate::action::MessageBody::markdown(text)
}

#[async_trait]
impl Bot for Query {
    fn commands(&self) -> Vec<CommandSpec> {
        self.commands
            .iter()
            .map(|(w, c)| {
                CommandSpec::new(
                    w,
                    Self::usage(w, &c.config).trim_start_matches("@bot "),
                    &c.config.summary,
                )
            })
            .collect()
    }

    async fn handle(&self, _event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let locale = ctx.locale();
        let Some(parsed) = ctx.command.clone() else {
            return Err(BotError::User(
                t!(
                    "query.ask_a_command",
                    locale = locale,
                    example = md::code(&format!("@{} help", ctx.bot))
                )
                .into_owned(),
            ));
        };
        // The bot named with nothing after it: say what it answers, not "I don't know ``".
        if parsed.name.is_empty() {
            let mention = parsed.addressed_to.as_deref().unwrap_or("bot");
            let lines: Vec<String> = self
                .commands
                .iter()
                .map(|(w, c)| {
                    let usage =
                        Self::usage(w, &c.config).replacen("@bot", &format!("@{mention}"), 1);
                    if c.config.summary.is_empty() {
                        format!("- `{usage}`")
                    } else {
                        format!("- `{usage}`: {}", c.config.summary)
                    }
                })
                .collect();
            return Err(BotError::User(format!(
                "{}\n{}",
                t!("query.ask_one_of", locale = locale),
                lines.join("\n")
            )));
        }
        let Some(cmd) = self.commands.get(&parsed.name) else {
            let known: Vec<&str> = self.commands.keys().map(String::as_str).collect();
            let hint = crate::command::nearest(&parsed.name, known.iter().copied())
                .map(|n| t!("query.did_you_mean", locale = locale, near = md::code(n)).into_owned())
                .unwrap_or_default();
            return Err(BotError::User(
                t!(
                    "query.unknown",
                    locale = locale,
                    what = md::code(&parsed.name),
                    hint = hint,
                    known = known
                        .iter()
                        .map(|k| md::code(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into_owned(),
            ));
        };
        let mention = parsed
            .addressed_to
            .clone()
            .unwrap_or_else(|| "bot".to_string());
        let args = self.bind(&parsed.name, cmd, &parsed.args, &mention, locale)?;
        let path = self.paths.render(&parsed.name, &args)?;
        let req = DataRequest::from_rendered(&path);
        let started = std::time::Instant::now();
        let answer = ctx.fetch(&cmd.source, req).await?;
        let took_ms = started.elapsed().as_millis() as u64;
        let result = match &cmd.config.pointer {
            Some(p) => answer.pointer(p).cloned().ok_or_else(|| {
                BotError::User(
                    t!(
                        "query.no_field",
                        locale = locale,
                        what = md::code(&parsed.name),
                        field = md::code(p)
                    )
                    .into_owned(),
                )
            })?,
            None => answer,
        };
        let body = match &cmd.config.template {
            Some(t) => {
                // What the person typed, with the name they called the bot by.
                let mut question = format!("@{mention} {}", parsed.name);
                for a in &parsed.args {
                    question.push(' ');
                    question.push_str(a);
                }
                let title = if cmd.config.summary.is_empty() {
                    parsed.name.clone()
                } else {
                    cmd.config.summary.clone()
                };
                let mut data = card_data(&result, &cmd.config.fields);
                data.insert("question".into(), question.into());
                data.insert("title".into(), title.into());
                data.insert("command".into(), parsed.name.clone().into());
                data.insert("args".into(), serde_json::Value::Object(args));
                data.insert("result".into(), result.clone());
                data.insert("source".into(), cmd.source.clone().into());
                data.insert("took_ms".into(), took_ms.into());
                ctx.card(t, &serde_json::Value::Object(data))?
            }
            None => plain_answer(&parsed.name, &result),
        };
        Ok(vec![Action::reply(body)])
    }
}

/// `pattern` with `\d` as `[0-9]` and `\D` as `[^0-9]` (inside a class, `\d` as `0-9`):
/// ASCII digits, whatever the regex crate's Unicode `\d` would take.
pub fn ascii_digits(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars().peekable();
    let mut class_depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('d') if class_depth > 0 => out.push_str("0-9"),
                Some('d') => out.push_str("[0-9]"),
                Some('D') if class_depth == 0 => out.push_str("[^0-9]"),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            },
            '[' => {
                class_depth += 1;
                out.push('[');
                // `]` first in a class (after an optional `^`) is a literal.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if class_depth > 0 => {
                class_depth -= 1;
                out.push(']');
            }
            c => out.push(c),
        }
    }
    out
}

/// `kind = "query"` (registered in `super::register_builtin`).
impl BotKind for Query {
    type Config = QueryConfig;
    fn build(name: &str, config: QueryConfig) -> Result<Self, BotError> {
        Query::new(name, &config)
    }
    fn validate(name: &str, config: &QueryConfig, at: usize, all: &Config, issues: &mut Issues) {
        config.validate(name, at, all, issues);
    }
}

#[cfg(test)]
mod ascii_digit_tests {
    use super::ascii_digits;

    #[test]
    fn backslash_d_means_ascii_digits() {
        assert_eq!(ascii_digits(r"SN\d+"), "SN[0-9]+");
        assert_eq!(ascii_digits(r"[\d-]\D\\d"), r"[0-9-][^0-9]\\d");
        assert_eq!(ascii_digits(r"[]\d]"), "[]0-9]");
        let re = regex::Regex::new(&format!(
            "^(?:{})$",
            ascii_digits(r"今天|昨天|\d{4}-\d{2}-\d{2}")
        ))
        .unwrap();
        assert!(re.is_match("2026-11-20") && re.is_match("昨天"));
        assert!(!re.is_match("２０２６-１１-２０"), "full-width digits");
        assert!(!re.is_match("٢٠٢٦-١١-٢٠"), "Arabic-Indic digits");
        // Unicode digits stay available, said out loud.
        assert!(
            regex::Regex::new(&ascii_digits(r"^\p{Nd}+$"))
                .unwrap()
                .is_match("١٢٣")
        );
    }
}
