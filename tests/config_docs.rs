//! The config's JSON Schema and reference are generated from the code and current
//! (`docs/perch.schema.json`, `docs/config-reference.md`), the configs shipped in the
//! repository validate against the schema, and wrong configs are refused by it as
//! perch itself refuses them.
//!
//! After changing a config type, regenerate both files with
//! `UPDATE_DOCS=1 cargo test --test config_docs`.

use perch::config::{Config, Kinds, config_reference, config_schema};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const SCHEMA_FILE: &str = "docs/perch.schema.json";
const REFERENCE_FILE: &str = "docs/config-reference.md";
const REGENERATE: &str = "UPDATE_DOCS=1 cargo test --test config_docs";

/// The schema as `perch config-schema` prints it.
fn schema_text() -> String {
    let schema = config_schema(&Kinds::builtin());
    format!(
        "{}\n",
        serde_json::to_string_pretty(&schema).expect("schema as JSON")
    )
}

fn validator() -> jsonschema::Validator {
    let schema = config_schema(&Kinds::builtin());
    jsonschema::validator_for(&schema).expect("the config schema is a valid JSON Schema")
}

/// A TOML text as the JSON value the schema describes.
fn as_json(toml_text: &str) -> Value {
    let table: toml::Table = toml::from_str(toml_text).expect("valid TOML");
    serde_json::to_value(table).expect("TOML as JSON")
}

/// The schema's complaints about `toml_text`, one line each.
fn schema_errors(validator: &jsonschema::Validator, toml_text: &str) -> Vec<String> {
    let instance = as_json(toml_text);
    validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Compare `expected` with the file at `path`; with `UPDATE_DOCS=1`, write it instead.
fn check_current(path: &str, expected: &str) {
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(path, expected).expect("write the generated file");
        return;
    }
    let found = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        found == expected,
        "{path} is stale (or missing): the config types changed. Regenerate it with `{REGENERATE}` \
         and commit the result."
    );
}

#[test]
fn the_checked_in_schema_and_reference_are_current() {
    let schema_text = schema_text();
    check_current(SCHEMA_FILE, &schema_text);
    let schema: Value = serde_json::from_str(&schema_text).expect("schema JSON");
    check_current(REFERENCE_FILE, &config_reference(&schema));
}

#[test]
fn the_reference_has_every_table_and_every_kind() {
    let reference = config_reference(&config_schema(&Kinds::builtin()));
    for table in [
        "`[server]`",
        "`[store]`",
        "`[outbox]`",
        "`[auth]`",
        "`[[routes]]`",
        "`[[permissions]]`",
        "`[schedules.<name>]`",
        "`[bots.<name>]`",
        "`[connectors.<name>]`",
    ] {
        assert!(
            reference.contains(&format!("## {table}")),
            "no section {table}"
        );
    }
    let kinds = Kinds::builtin();
    for kind in kinds.bots.names().chain(kinds.connectors.names()) {
        assert!(
            reference.contains(&format!("### `kind = \"{kind}\"`")),
            "no section for kind {kind}"
        );
    }
    // A key with its type, default and description.
    assert!(
        reference.contains("| `header_read_timeout` | duration | `\"10s\"` | How long a client"),
        "server.header_read_timeout is not documented with its type and default"
    );
}

/// `config.toml`, `deploy/*.toml` and every perch config under `examples/`.
fn shipped_configs() -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("config.toml")];
    let mut folders = vec![PathBuf::from("deploy"), PathBuf::from("examples")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read folder").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && name != "node_modules" {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") && name != "Cargo.toml" {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_shipped_config_validates_against_the_schema() {
    let validator = validator();
    let configs = shipped_configs();
    assert!(
        configs.iter().any(|p| p == Path::new("deploy/perch.toml"))
            && configs.iter().any(|p| p.starts_with("examples")),
        "the configs were not found: {configs:?}"
    );
    for path in configs {
        let text = std::fs::read_to_string(&path).expect("read config");
        let errors = schema_errors(&validator, &text);
        assert!(
            errors.is_empty(),
            "{} does not validate against {SCHEMA_FILE}:\n  {}",
            path.display(),
            errors.join("\n  ")
        );
    }
}

#[test]
fn config_toml_names_the_schema_for_editors() {
    let text = std::fs::read_to_string("config.toml").expect("config.toml");
    assert_eq!(
        text.lines().next(),
        Some("#:schema ./docs/perch.schema.json"),
        "config.toml's first line is taplo's schema directive"
    );
}

/// A small valid config, for the wrong ones below to change one thing of.
const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
bot_timeout = "30s"

[connectors.web]
kind = "local"

[bots.echo]
kind = "echo"

[[routes]]
connector = "web"
bots = ["echo"]
"#;

#[test]
fn the_base_config_is_valid_for_perch_and_the_schema() {
    assert!(Config::from_str(BASE, Path::new("base.toml")).is_ok());
    assert_eq!(schema_errors(&validator(), BASE), Vec::<String>::new());
}

/// Each wrong config is refused by perch and by the schema (so an editor shows what
/// `perch check` would say).
#[test]
fn wrong_configs_are_refused_by_the_schema_as_by_perch() {
    let validator = validator();
    let wrong = [
        (
            "an unknown key in [server]",
            BASE.replace("listen =", "listne ="),
        ),
        (
            "a misspelled key of a built-in bot kind",
            BASE.replace("kind = \"echo\"", "kind = \"echo\"\nprefx = \"> \""),
        ),
        (
            "a misspelled key of a built-in connector kind",
            BASE.replace("kind = \"local\"", "kind = \"local\"\ntitel = \"chat\""),
        ),
        (
            "a duration written as a number",
            BASE.replace("bot_timeout = \"30s\"", "bot_timeout = 30"),
        ),
        (
            "a duration without a unit",
            BASE.replace("bot_timeout = \"30s\"", "bot_timeout = \"30\""),
        ),
        (
            "a bot without a kind",
            BASE.replace("kind = \"echo\"", "locale = \"en\""),
        ),
        (
            "a route without bots",
            BASE.replace("bots = [\"echo\"]", ""),
        ),
        (
            "an unknown log format",
            BASE.replace("bot_timeout = \"30s\"", "log_format = \"xml\""),
        ),
    ];
    for (what, text) in wrong {
        assert!(
            Config::from_str(&text, Path::new("wrong.toml")).is_err(),
            "perch accepts {what}: the test's config is not wrong"
        );
        assert!(
            !schema_errors(&validator, &text).is_empty(),
            "the schema accepts {what}:\n{text}"
        );
    }
}

#[test]
fn a_kind_the_schema_does_not_know_may_have_any_keys() {
    let text =
        format!("{BASE}\n[bots.mine]\nkind = \"my_own_kind\"\nanything = 1\nelse = [\"x\"]\n");
    assert_eq!(schema_errors(&validator(), &text), Vec::<String>::new());
}

#[test]
fn a_built_in_kinds_schema_lists_its_keys() {
    let schema = config_schema(&Kinds::builtin());
    let bots = schema["definitions"]["Bot"]["allOf"]
        .as_array()
        .expect("bot kinds");
    let echo = bots
        .iter()
        .find(|b| b["if"]["properties"]["kind"]["enum"] == json!(["echo"]))
        .map(|b| &b["then"])
        .expect("the echo kind");
    assert_eq!(echo["additionalProperties"], json!(false));
    assert!(echo["properties"]["locale"].is_object());
    assert_eq!(echo["required"][0], json!("kind"));
}

/// The defaults the schema shows are values perch takes: `[server]`, `[store]`,
/// `[outbox]` and `[auth]` written out with every default the schema gives are read.
#[test]
fn every_default_the_schema_shows_is_accepted_by_perch() {
    let schema = config_schema(&Kinds::builtin());
    let mut config = serde_json::Map::new();
    for table in ["server", "store", "outbox", "auth"] {
        let reference = schema["properties"][table]["allOf"][0]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .unwrap_or_else(|| panic!("[{table}] is not a reference to its type"));
        let properties = schema["definitions"][reference]["properties"]
            .as_object()
            .expect("keys");
        let defaults: serde_json::Map<String, Value> = properties
            .iter()
            .filter_map(|(key, property)| Some((key.clone(), property.get("default")?.clone())))
            .collect();
        assert!(defaults.len() >= 2, "[{table}] shows only {defaults:?}");
        config.insert(table.into(), Value::Object(defaults));
    }
    let text = toml::to_string(&config).expect("defaults as TOML");
    assert!(text.contains("header_read_timeout = \"10s\""), "{text}");
    if let Err(e) = Config::from_str(&text, Path::new("defaults.toml")) {
        panic!("perch refuses the schema's defaults: {e}\n---\n{text}");
    }
}

/// `perch config-schema` prints what is checked in (the test above compares the library's
/// output; this is the program's).
#[test]
fn perch_config_schema_prints_the_checked_in_files() {
    for (args, file) in [
        (&["config-schema"][..], SCHEMA_FILE),
        (&["config-schema", "--markdown"][..], REFERENCE_FILE),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_perch"))
            .args(args)
            // It reads no config: a missing one must not matter.
            .args(["--config", "/nonexistent/perch.toml"])
            .output()
            .expect("run perch");
        assert!(output.status.success(), "perch {args:?} failed: {output:?}");
        let printed = String::from_utf8(output.stdout).expect("UTF-8");
        let checked_in = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            printed == checked_in,
            "`perch {}` differs from {file}: regenerate with `{REGENERATE}`",
            args.join(" ")
        );
    }
}

/// The keys perch's own error names as expected after an unknown key `zz_unknown` in
/// `text` (serde's "unknown field `zz_unknown`, expected one of `a`, `b`").
fn keys_perch_expects(text: &str) -> std::collections::BTreeSet<String> {
    let error = Config::from_str(text, Path::new("keys.toml"))
        .expect_err("an unknown key is refused")
        .to_string();
    let line = error
        .lines()
        .find(|l| l.contains("unknown field `zz_unknown`"))
        .unwrap_or_else(|| panic!("no unknown-field message in:\n{error}"));
    let expected = line.split_once("expected").map_or("", |(_, rest)| rest);
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn keys_in_schema(table: &Value) -> std::collections::BTreeSet<String> {
    table["properties"]
        .as_object()
        .expect("keys")
        .keys()
        .cloned()
        .collect()
}

/// The schema lists exactly the keys perch reads: for every top-level table, routes,
/// permissions, schedules, accounts and every built-in kind, the keys perch's own "unknown field" error expects are the schema's.
#[test]
fn the_schema_lists_exactly_the_keys_perch_reads() {
    let schema = config_schema(&Kinds::builtin());
    let definitions = &schema["definitions"];
    for table in ["server", "store", "outbox", "auth"] {
        let reference = schema["properties"][table]["allOf"][0]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .expect("a reference");
        assert_eq!(
            keys_in_schema(&definitions[reference]),
            keys_perch_expects(&format!("[{table}]\nzz_unknown = 1\n")),
            "[{table}]"
        );
    }
    for (header, definition) in [
        ("[[routes]]", "RouteConfig"),
        ("[[permissions]]", "PermissionRule"),
        ("[schedules.x]", "ScheduleConfig"),
        ("[auth.users.x]", "UserConfig"),
    ] {
        assert_eq!(
            keys_in_schema(&definitions[definition]),
            keys_perch_expects(&format!("{header}\nzz_unknown = 1\n")),
            "{header}"
        );
    }
    for (section, definition) in [("bots", "Bot"), ("connectors", "Connector")] {
        let kinds = definitions[definition]["allOf"].as_array().expect("kinds");
        let mut checked = 0;
        for kind_schema in kinds.iter().map(|branch| &branch["then"]) {
            let Some(kind) = kind_schema["properties"]["kind"]["enum"][0].as_str() else {
                continue;
            };
            let mut in_schema = keys_in_schema(kind_schema);
            // `kind` (and a bot's `locale`) are read by the table itself, not the kind.
            in_schema.remove("kind");
            if section == "bots" {
                in_schema.remove("locale");
            }
            let text = format!("[{section}.x]\nkind = \"{kind}\"\nzz_unknown = 1\n");
            assert_eq!(
                in_schema,
                keys_perch_expects(&text),
                "{section} kind {kind}"
            );
            checked += 1;
        }
        assert!(checked >= 8, "only {checked} {section} kinds checked");
    }
}

/// An editor names the misspelled key of a built-in kind, not only "no branch matched".
#[test]
fn the_schema_names_a_misspelled_key_of_a_built_in_kind() {
    let text = BASE.replace("kind = \"echo\"", "kind = \"echo\"\nprefx = \"> \"");
    let errors = schema_errors(&validator(), &text);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("prefx") && e.contains("/bots/echo")),
        "no error names `prefx` at /bots/echo: {errors:?}"
    );
}
