//! `perch check`: a valid config prints a summary and exits 0; a bad one prints every
//! problem with file:line:column and exits 1.

/// The `perch` command line these tests run as a process.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perch.toml");
    std::fs::write(&path, config).unwrap();
    let out = perch::testing::perch_command(PERCH, &["--config", path.to_str().unwrap(), "check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        text.replace(path.to_str().unwrap(), "perch.toml"),
    )
}

#[test]
fn the_shipped_config_is_valid() {
    // In place: its relative paths (`demo/`, `cards/`) are relative to its folder.
    let out = perch::testing::perch_command(PERCH, &["--config", "config.toml", "check"]);
    let code = out.status.code().unwrap_or(-1);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is valid"), "{out}");
    assert!(out.contains("web (local)"), "{out}");
}

#[test]
fn a_typo_is_located_and_the_known_names_listed() {
    let (code, out) = check("[server]\nlisten = \"127.0.0.1:8080\"\nbody_limt = 5\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("\n  perch.toml:3:1: unknown field `body_limt`, expected one of"),
        "{out}"
    );
    assert!(out.contains("`body_limit`"), "{out}");
}

#[test]
fn an_unknown_kind_lists_the_known_kinds() {
    let (code, out) = check("[connectors.gh]\nkind = \"webhok\"\n");
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "\n  perch.toml:2:8: connector `gh`: unknown kind `webhok` (did you mean `webhook`?); known kinds: feishu, feishu_webhook, file, http, local, matrix, slack, webhook"
        ),
        "{out}"
    );
    // Bot kinds come from a registry (built-in and a user's own): the error names the
    // closest registered kind and lists them all.
    let (code, out) = check("[bots.x]\nkind = \"ecko\"\n");
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "\n  perch.toml:2:8: bot `x`: unknown kind `ecko` (did you mean `echo`?); known kinds: auto_group, daily_push, echo, greetings, help, http_bot, notify, query, reminders\n"
        ),
        "{out}"
    );
}

#[test]
fn a_bot_setting_is_checked_against_its_kind_with_its_line_and_all_bots_at_once() {
    let (code, out) =
        check("[bots.a]\nkind = \"echo\"\nprefx = \">\"\n\n[bots.b]\nkind = \"help\"\nintro = 5\n");
    assert_eq!(code, 1);
    assert!(out.starts_with("2 problem(s) in the config:"), "{out}");
    assert!(
        out.contains("perch.toml:3:1: bot `a`: unknown field `prefx`, expected `prefix`"),
        "{out}"
    );
    assert!(
        out.contains("perch.toml:7:1: bot `b`: invalid type: integer `5`, expected a string"),
        "{out}"
    );
    let (code, out) = check("[bots.c]\nprefix = \"x\"\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("\n  perch.toml:1:1: missing field `kind`"),
        "{out}"
    );
}

#[test]
fn an_unknown_field_inside_a_connector_is_located_on_its_line() {
    let (code, out) =
        check("[connectors.gh]\nkind = \"webhook\"\nsecret = \"x\"\ntopic_pointr = \"/a\"\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("\n  perch.toml:4:1: connector `gh`: unknown field `topic_pointr`"),
        "{out}"
    );
}

#[test]
fn a_missing_variable_is_named_where_it_is_used() {
    let (code, out) =
        check("[connectors.gh]\nkind = \"webhook\"\nsecret = \"${PERCH_TEST_SURELY_UNSET}\"\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("perch.toml:3:11: connector `gh`: environment variable PERCH_TEST_SURELY_UNSET is not set"),
        "{out}"
    );
    let (_, out) = check(
        "[connectors.gh]\nkind = \"webhook\"\nsecret = \"${PERCH_TEST_SURELY_UNSET:?set the GitHub secret}\"\n",
    );
    assert!(out.contains("is required: set the GitHub secret"), "{out}");
}

#[test]
fn every_parse_problem_is_reported_at_once_each_on_its_line() {
    let config = r#"[server]
listen = "127.0.0.1:0"
bogus_key = 1

[connectors.web]
kind = "local"
title = 5

[connectors.hook]
kind = "webhook"
secret = "${PERCH_TEST_UNSET_ONE}"
send_url = "https://x.test/${PERCH_TEST_UNSET_TWO}"

[bots.echo]
kind = "echo"

[[routes]]
connector = "web"
bots = "echo"
"#;
    let (code, out) = check(config);
    assert_eq!(code, 1);
    for expected in [
        "perch.toml:3:1: unknown field `bogus_key`",
        "perch.toml:7:1: connector `web`: invalid type: integer `5`, expected a string",
        "perch.toml:11:11: environment variable PERCH_TEST_UNSET_ONE is not set",
        "perch.toml:12:28: environment variable PERCH_TEST_UNSET_TWO is not set",
        "perch.toml:19:8: invalid type: string \"echo\", expected a sequence",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.starts_with("5 problem(s) in the config:"), "{out}");

    // TOML syntax: every error the parser meets, not only the first.
    let (code, out) = check("[server\nlisten = \"127.0.0.1:0\"\n[x]\na = = 2\n");
    assert_eq!(code, 1);
    assert!(out.contains("perch.toml:1:8: unclosed table"), "{out}");
    assert!(out.contains("perch.toml:4:5: extra `=`"), "{out}");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let config = r#"[server]
listen = "0.0.0.0:8080"
journal_retention = "1h"

[connectors.gh]
kind = "webhook"

[bots.e]
kind = "echo"

[bots.n]
kind = "notify"
connector = "missing"
text = "{{#if}}"

[[routes]]
connector = "gx"
text = "(["
topic = "a[b"
bots = ["e", "nope"]
"#;
    let (code, out) = check(config);
    assert_eq!(code, 1);
    for expected in [
        "perch.toml:2:1: listen = 0.0.0.0:8080 is not a loopback address",
        "perch.toml:3:1: server.journal_retention = 3600s is shorter than server.dedupe_window = 28800s",
        "perch.toml:5:1: connector `gh`: set `secret`",
        "perch.toml:11:1: bot `n`: set exactly one of `chat` or `person`",
        "perch.toml:13:1: bot `n` names connector `missing`, which is not defined (defined: gh)",
        "perch.toml:14:1: bot `n`, `text` template at line 1, column 8: invalid handlebars syntax",
        "perch.toml:17:1: route names connector `gx`, which is not defined (defined: gh)",
        "perch.toml:20:1: route names bot `nope`, which is not defined (defined: e, n)",
        "perch.toml:18:1: bad regex in `text`",
        "perch.toml:19:1: bad glob in `topic`",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.starts_with("10 problem(s) in the config:"), "{out}");
}

#[test]
fn a_feishu_timestamp_window_wider_than_the_dedupe_window_is_refused() {
    let feishu = |window: &str| {
        format!(
            "[server]\ndedupe_window = \"8h\"\n\n[connectors.feishu]\nkind = \"feishu\"\napp_id = \"cli_x\"\napp_secret = \"s\"\nverification_token = \"t\"\n{window}\n"
        )
    };
    let (code, out) = check(&feishu("timestamp_window = \"9h\""));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "timestamp_window 32400s plus clock_skew 300s is wider than server.dedupe_window 28800s"
        ),
        "{out}"
    );
    // Exactly the dedupe window is too wide too (the clock skew is added), the default fits.
    let (code, _) = check(&feishu("timestamp_window = \"8h\""));
    assert_eq!(code, 1);
    let (code, out) = check(&feishu(""));
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(&feishu("timestamp_window = \"5m\""));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_cli_error_is_one_clean_line_even_with_backtraces_on() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_perch"))
        .args(["--config", "/nonexistent/perch.toml", "serve"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("perch: cannot read /nonexistent/perch.toml"),
        "{err}"
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mycards")).unwrap();
    std::fs::copy(
        "cards/notification.hbs",
        dir.path().join("mycards/note.hbs"),
    )
    .unwrap();
    let (code, out) = check(
        "[server]\ncards_dir = \"mycards\"\ndata_dir = \"state\"\n\n[connectors.web]\nkind = \"local\"\n\n[bots.n]\nkind = \"notify\"\nchat = \"general\"\ncard = \"note\"\n",
    );
    // `check` writes the config into its own temporary folder: there is no mycards/.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("mycards (there: none)"), "{out}");
    let config = dir.path().join("perch.toml");
    std::fs::write(
        &config,
        "[server]\ncards_dir = \"mycards\"\n\n[connectors.web]\nkind = \"local\"\n\n[bots.n]\nkind = \"notify\"\nchat = \"general\"\ncard = \"note\"\n",
    )
    .unwrap();
    // Run from elsewhere (the package root): `mycards` is found beside the config.
    let out =
        perch::testing::perch_command(PERCH, &["--config", config.to_str().unwrap(), "check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("note"), "{text}");
}

#[test]
fn a_postgres_store_needs_a_valid_url_and_a_usable_pool() {
    let (code, out) = check("[store]\nkind = \"postgres\"\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("perch.toml:2:1: store.kind = \"postgres\" needs store.url"),
        "{out}"
    );
    let (code, out) =
        check("[store]\nkind = \"postgres\"\nurl = \"postgres://h/db?bogus=1\"\npool_size = 1\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("perch.toml:3:1: store.url is not a PostgreSQL URL"),
        "{out}"
    );
    assert!(
        out.contains("perch.toml:4:1: store.pool_size must be at least 2"),
        "{out}"
    );
    let (code, out) = check("[store]\nkind = \"mysql\"\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("unknown variant `mysql`, expected `sled` or `postgres`"),
        "{out}"
    );
    // The URL comes from the environment, like every `${VAR}`.
    let (code, out) = check("[store]\nkind = \"postgres\"\nurl = \"${PERCH_TEST_UNSET_DB_URL}\"\n");
    assert_eq!(code, 1);
    assert!(out.contains("PERCH_TEST_UNSET_DB_URL"), "{out}");
    let (code, out) =
        check("[store]\nkind = \"postgres\"\nurl = \"postgres://u:p@db:5432/perch\"\n");
    assert_eq!(code, 0, "{out}");
}
