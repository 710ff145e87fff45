//! The JSON Schema of `config.toml` and the config reference made from it
//! (`perch config-schema`, `docs/perch.schema.json`, `docs/config-reference.md`).
//!
//! The schema is derived from the config types themselves (`schemars::JsonSchema`, with
//! doc comments as descriptions), so it cannot drift from what perch reads. Values whose
//! TOML form is not their Rust type (durations, `${VAR}` strings, locales) say what the
//! TOML takes. `[bots.<name>]` and `[connectors.<name>]` get one branch per kind that
//! the registries know the config type of, plus an open branch for other kinds (a
//! user's own kind: `kind` and any keys).

use super::{Config, Kinds};
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// The schema of a duration as the TOML writes it (`"30s"`, `"5m"`, `"1h 30m"`): use
/// it with `#[schemars(with = "crate::config::DurationText")]` beside a duration's
/// `deserialize_with`.
pub struct DurationText;

/// Draft 7 (`definitions`), which taplo (Even Better TOML) understands: it promises draft 4
/// and its validator (the jsonschema crate) reads draft 7 [unverified for every editor],
/// while 2020-12's `$defs` could be lost on it.
const DEFS: &str = "definitions";
const REF_PREFIX: &str = "#/definitions/";

/// Marks duration schemas, so their defaults (serialised as `{secs, nanos}`) can be
/// written as `"30s"` (`tidy_defaults`).
const DURATION_FORMAT: &str = "duration";

impl JsonSchema for DurationText {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "format": DURATION_FORMAT,
            // humantime's syntax: numbers with units, optionally separated by spaces.
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Zµ]+\\s*)+$",
            "examples": ["500ms", "30s", "5m", "8h", "7d"],
        })
    }
}

/// The JSON Schema of a config file read with `kinds` (`perch config-schema` uses the
/// built-in ones).
pub fn config_schema(kinds: &Kinds) -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    // The kinds first, so the types they use land in the root's `$defs`.
    let bot_kinds = kinds.bots.config_schemas(&mut generator);
    let connector_kinds = kinds.connectors.config_schemas(&mut generator);
    let locale = generator.subschema_for::<crate::i18n::Locale>().to_value();
    let mut root = generator.into_root_schema_for::<Config>().to_value();
    root["title"] = json!("perch config.toml");

    let bot_extra = json!({ "locale": with_description(locale,
        "This bot's language for built-in texts; wins over `server.locale` and the connector's.") });
    let defs = root[DEFS].as_object_mut().map(std::mem::take);
    let mut defs = defs.unwrap_or_default();
    defs.insert(
        "Bot".into(),
        by_kind(
            "A bot: `kind` names how it works, the other keys are that kind's settings.",
            bot_kinds,
            &bot_extra,
        ),
    );
    defs.insert(
        "Connector".into(),
        by_kind(
            "A connector: `kind` names the platform or source, the other keys are that kind's settings.",
            connector_kinds,
            &json!({}),
        ),
    );
    root[DEFS] = Value::Object(defs);
    root["properties"]["bots"]["additionalProperties"] =
        json!({ "$ref": format!("{REF_PREFIX}Bot") });
    root["properties"]["connectors"]["additionalProperties"] =
        json!({ "$ref": format!("{REF_PREFIX}Connector") });
    tidy_defaults(&mut root);
    root
}

fn with_description(mut schema: Value, description: &str) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.insert("description".into(), json!(description));
    }
    schema
}

/// `[bots.<name>]` / `[connectors.<name>]`: for each kind with a known config, `if` the
/// table's `kind` is it, `then` the table is that config (its keys plus `kind` and
/// `extra`, nothing else). Any other kind (a user's own) only needs `kind`.
///
/// `if`/`then` rather than `oneOf`: with `oneOf`, a misspelled key of a built-in kind is
/// reported as "not valid under any of the schemas listed in 'oneOf'"; with `if`/`then`
/// the editor (checked with taplo 0.9) says "'prefx' was unexpected" on the table.
fn by_kind(description: &str, kinds: Vec<(&'static str, Option<Schema>)>, extra: &Value) -> Value {
    let mut branches = Vec::new();
    let mut described = Vec::new();
    for (kind, schema) in kinds {
        let Some(schema) = schema else { continue };
        described.push(kind);
        let mut schema = schema.to_value();
        // `enum` of one rather than `const`: taplo promises JSON Schema draft 4, which has no `const`.
        let kind_schema = json!({ "enum": [kind], "description": "This table's kind." });
        let object = schema.as_object_mut();
        match object {
            Some(object) if object.get("type") == Some(&json!("object")) => {
                let properties = object
                    .entry("properties")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                if let Some(properties) = properties {
                    let mut with_kind = Map::new();
                    with_kind.insert("kind".into(), kind_schema);
                    if let Some(extra) = extra.as_object() {
                        with_kind.extend(extra.clone());
                    }
                    with_kind.extend(std::mem::take(properties));
                    *properties = with_kind;
                }
                let required = object.entry("required").or_insert_with(|| json!([]));
                if let Some(required) = required.as_array_mut() {
                    required.insert(0, json!("kind"));
                }
            }
            // Not a plain table (an enum of shapes): ask for the kind beside it.
            _ => {
                schema = json!({
                    "allOf": [schema, { "properties": { "kind": kind_schema }, "required": ["kind"] }]
                });
            }
        }
        branches.push(json!({
            "if": { "properties": { "kind": { "enum": [kind] } }, "required": ["kind"] },
            "then": schema,
        }));
    }
    json!({
        "description": description,
        "type": "object",
        "properties": {
            "kind": {
                "description": format!("How this one works: {}, or a kind registered by the program embedding perch (then any keys).", described.join(", ")),
                // The known kinds for completion; any other string is a user's kind.
                "anyOf": [{ "enum": described }, { "type": "string" }],
            }
        },
        "required": ["kind"],
        "allOf": branches,
    })
}

/// Defaults as the TOML writes them: durations are `Duration`s in Rust, whose serialised
/// defaults read `{secs, nanos}`, so write them `"30s"`; and drop `null` defaults of
/// optional keys (TOML has no null: such a key is simply left out).
fn tidy_defaults(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.get("default") == Some(&Value::Null) {
                object.remove("default");
            }
            let is_duration = object.get("format") == Some(&json!(DURATION_FORMAT))
                || object
                    .get("anyOf")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|s| s["format"] == json!(DURATION_FORMAT)));
            if is_duration
                && let Some(default) = object.get_mut("default")
                && let (Some(secs), Some(nanos)) =
                    (default["secs"].as_u64(), default["nanos"].as_u64())
                && let Ok(nanos) = u32::try_from(nanos)
            {
                let duration = std::time::Duration::new(secs, nanos);
                *default = json!(humantime::format_duration(duration).to_string());
            }
            for child in object.values_mut() {
                tidy_defaults(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy_defaults),
        _ => {}
    }
}

/// `docs/config-reference.md`: every table and key of `schema` (from `config_schema`)
/// with its type, default and description; one section per bot and connector kind.
pub fn config_reference(schema: &Value) -> String {
    let defs = schema[DEFS].as_object().cloned().unwrap_or_default();
    let mut out = String::new();
    out.push_str("# perch config reference\n\n");
    out.push_str(
        "<!-- Generated from the code by `perch config-schema --markdown`; do not edit. \
         Regenerate with `UPDATE_DOCS=1 cargo test --test config_docs`. -->\n\n",
    );
    out.push_str(
        "Every table and key of `config.toml`. Durations are written like `\"30s\"`, \
         `\"5m\"`, `\"8h\"`, `\"7d\"`; strings may use `${VAR}`, `${VAR:-default}` and \
         `${VAR:?message}` where noted. The same facts as a JSON Schema: \
         [`perch.schema.json`](perch.schema.json).\n",
    );
    let mut mentioned = Vec::new();
    let empty = Map::new();
    let properties = schema["properties"].as_object().unwrap_or(&empty);
    for (key, property) in properties {
        match key.as_str() {
            "bots" | "connectors" => continue,
            _ => {}
        }
        let property = resolve(property, &defs);
        let (header, table) = if property["type"] == json!("array") {
            (format!("[[{key}]]"), resolve(&property["items"], &defs))
        } else if property["additionalProperties"].is_object() {
            (
                format!("[{key}.<name>]"),
                resolve(&property["additionalProperties"], &defs),
            )
        } else {
            (format!("[{key}]"), property.clone())
        };
        blank_line(&mut out);
        let _ = write!(out, "## `{header}`\n\n");
        let said = properties[key].get("description");
        write_description(&mut out, said);
        // The table type's own doc, unless it only repeats the header or the key's doc.
        let own = table.get("description");
        if own != said && own.and_then(Value::as_str).map(str::trim) != Some(&format!("`{header}`"))
        {
            write_description(&mut out, own);
        }
        write_keys(&mut out, &table, &defs, &mut mentioned);
    }
    for (key, title) in [("bots", "Bot"), ("connectors", "Connector")] {
        blank_line(&mut out);
        let _ = write!(out, "## `[{key}.<name>]`\n\n");
        write_description(
            &mut out,
            properties.get(key).and_then(|p| p.get("description")),
        );
        let kinds = defs[title]["allOf"].as_array().cloned().unwrap_or_default();
        let other = json!({ "description": "A kind registered by the program embedding perch: `kind` and its own keys." });
        for kind in kinds.iter().map(|branch| &branch["then"]).chain([&other]) {
            match kind["properties"]["kind"]["enum"][0].as_str() {
                Some(name) => {
                    blank_line(&mut out);
                    let _ = write!(out, "### `kind = \"{name}\"`\n\n");
                    // A doc that is only the table's header says nothing the title does not.
                    let description = kind.get("description").filter(|d| {
                        d.as_str()
                            .is_some_and(|d| !d.trim().starts_with(&format!("`[{key}.")))
                    });
                    write_description(&mut out, description);
                    write_keys(&mut out, kind, &defs, &mut mentioned);
                }
                None => {
                    blank_line(&mut out);
                    let _ = write!(out, "### Other kinds\n\n");
                    write_description(&mut out, kind.get("description"));
                }
            }
        }
    }
    // The tables nested in the ones above (`[auth.users.<name>]`, a query's commands).
    let mut written = Vec::new();
    while let Some(name) = mentioned.iter().find(|n| !written.contains(*n)).cloned() {
        written.push(name.clone());
        let Some(def) = defs.get(&name) else { continue };
        blank_line(&mut out);
        let _ = write!(out, "## {name}\n\n");
        write_description(&mut out, def.get("description"));
        if def.get("properties").is_some() {
            write_keys(&mut out, def, &defs, &mut mentioned);
        } else {
            let _ = writeln!(out, "One of: {}.", type_of(def, &defs, &mut mentioned));
        }
    }
    out
}

/// Follow a `$ref` into the definitions (draft 7 wraps a `$ref` with a description of
/// its own in a one-element `allOf`).
fn resolve(schema: &Value, defs: &Map<String, Value>) -> Value {
    let schema = unwrap_all_of(schema);
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix(REF_PREFIX))
    {
        Some(name) => defs.get(name).cloned().unwrap_or(Value::Null),
        None => schema.clone(),
    }
}

/// `{"allOf": [x], ...}` → `x`.
fn unwrap_all_of(schema: &Value) -> &Value {
    match schema["allOf"].as_array().map(Vec::as_slice) {
        Some([only]) => only,
        _ => schema,
    }
}

/// End `out` with one empty line, before a heading.
fn blank_line(out: &mut String) {
    let text_end = out.trim_end_matches('\n').len();
    out.truncate(text_end);
    out.push_str("\n\n");
}

fn write_description(out: &mut String, description: Option<&Value>) {
    if let Some(text) = description.and_then(Value::as_str) {
        out.push_str(text.trim());
        out.push_str("\n\n");
    }
}

fn write_keys(
    out: &mut String,
    table: &Value,
    defs: &Map<String, Value>,
    mentioned: &mut Vec<String>,
) {
    let empty = Map::new();
    let properties = table["properties"].as_object().unwrap_or(&empty);
    if properties.is_empty() {
        out.push_str("No keys.\n");
        return;
    }
    let required: Vec<&str> = table["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
    for (key, property) in properties {
        let default = match property.get("default") {
            Some(value) => format!("`{value}`"),
            None if required.contains(&key.as_str()) => "required".to_string(),
            None => String::new(),
        };
        let description = property["description"]
            .as_str()
            .or_else(|| resolve(property, defs)["description"].as_str().map(|_| ""))
            .unwrap_or("");
        let _ = writeln!(
            out,
            "| `{key}` | {} | {default} | {} |",
            type_of(property, defs, mentioned),
            one_line(description)
        );
    }
}

/// A description as one table cell.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// A short type name: `string`, `duration`, `"a" \| "b"`, `array of X`, a link to a
/// nested table's section.
fn type_of(schema: &Value, defs: &Map<String, Value>, mentioned: &mut Vec<String>) -> String {
    let schema = unwrap_all_of(schema);
    if let Some(name) = schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix(REF_PREFIX))
    {
        let def = &defs.get(name).cloned().unwrap_or(Value::Null);
        if def.get("properties").is_none() && def.get("oneOf").is_none() {
            // An enum or alias: show it in place.
            return type_of(def, defs, mentioned);
        }
        if !mentioned.iter().any(|m| m == name) {
            mentioned.push(name.to_string());
        }
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if schema["format"] == json!(DURATION_FORMAT) {
        return "duration".into();
    }
    if let Some(value) = schema.get("const") {
        return format!("`{value}`");
    }
    if let Some(values) = schema["enum"].as_array() {
        let names: Vec<String> = values
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| format!("`{v}`"))
            .collect();
        return names.join(" \\| ");
    }
    for combinator in ["anyOf", "oneOf"] {
        if let Some(choices) = schema[combinator].as_array() {
            let mut names: Vec<String> = choices
                .iter()
                .filter(|c| c["type"] != json!("null"))
                .map(|c| type_of(c, defs, mentioned))
                .collect();
            names.dedup();
            return names.join(" \\| ");
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    match types.as_slice() {
        ["array"] => format!("array of {}", type_of(&schema["items"], defs, mentioned)),
        ["object"] if schema["additionalProperties"].is_object() => format!(
            "table of {}",
            type_of(&schema["additionalProperties"], defs, mentioned)
        ),
        ["object"] => "table".into(),
        ["integer"] if schema["minimum"] == json!(0) => "integer ≥ 0".into(),
        [] => "any".into(),
        types => types.join(" \\| "),
    }
}
