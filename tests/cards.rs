//! Cards end to end: every shipped template × every platform (insta snapshots), the
//! platforms' shape rules and limits, the web-chat HTML contract, JSON safety under
//! hostile data (proptest), strict-mode errors, broken templates stopping `Perch::start`
//! and `perch check`, the `card render` command and the `/api/cards` endpoints.

use perch::testing::*;

use perch::cards::{self, CardEngine, CardError};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::OnceLock;

/// The `perch` command line these tests run as a process.
const PERCH: &str = env!("CARGO_BIN_EXE_perch");

const TEMPLATES: &[&str] = &[
    "daily_metrics",
    "error",
    "notification",
    "query_answer",
    "reminder",
    "welcome",
];
// Every platform `render` knows, so a new one cannot go untested.
use perch::cards::PLATFORMS;

fn engine() -> &'static CardEngine {
    static ENGINE: OnceLock<CardEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        CardEngine::load_dir(Path::new("cards"))
            .unwrap_or_else(|e| panic!("shipped templates load: {e}"))
    })
}

fn sample(name: &str) -> Value {
    engine()
        .template(name)
        .and_then(|t| t.sample.clone())
        .unwrap_or_else(|| panic!("{name} has sample data"))
}

#[test]
fn every_template_ships_with_sample_data() {
    assert_eq!(engine().names(), TEMPLATES);
    for t in TEMPLATES {
        assert!(
            engine().template(t).unwrap().sample.is_some(),
            "{t} has no sample"
        );
    }
}

#[test]
fn snapshots_every_template_on_every_platform() {
    for t in TEMPLATES {
        for p in PLATFORMS {
            let out = engine()
                .render_for(t, &sample(t), p)
                .unwrap_or_else(|e| panic!("{t} on {p}: {e}"));
            let name = format!("{t}__{p}");
            match out {
                Value::String(s) => insta::assert_snapshot!(name, s),
                v => insta::assert_json_snapshot!(name, v),
            }
        }
    }
}

/// Every element of a Feishu 2.0 card, recursively (through column sets, columns, forms).
/// With `_locale = "zh-CN"` (what `BotContext::card` sets for a Chinese bot or chat),
/// no shipped template keeps an English fixed text: every label of `locales/en.toml`'s
/// `[card]` table that a template uses is shown in Chinese.
#[test]
fn every_template_speaks_chinese_where_the_card_is_chinese() {
    let en: toml::Table =
        toml::from_str(&std::fs::read_to_string("locales/en.toml").unwrap()).unwrap();
    let english: Vec<String> = en["card"]
        .as_table()
        .unwrap()
        .values()
        .filter_map(|v| v.as_str())
        .flat_map(|t| {
            t.split("%{")
                .map(|part| part.split('}').next_back().unwrap_or(part))
        })
        .chain([
            "Change against",
            "Source",
            "generated",
            "Welcome",
            "answered in",
        ])
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
        .filter(|t| t.chars().filter(|c| c.is_ascii_alphabetic()).count() >= 3 && !t.contains('%'))
        .collect();
    let mut translated = 0;
    for t in TEMPLATES {
        let mut data = sample(t);
        data["_locale"] = json!("zh-CN");
        let card = engine()
            .render_for(t, &data, "text")
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        let shown = card.to_string();
        // The sample's own values (names, titles) are data, not fixed texts.
        let values = sample(t).to_string();
        for word in &english {
            assert!(
                !shown.contains(word.as_str()) || values.contains(word.as_str()),
                "{t} in Chinese still says {word:?}: {shown}"
            );
        }
        let en_card = engine()
            .render_for(t, &sample(t), "text")
            .unwrap()
            .to_string();
        translated += english
            .iter()
            .filter(|w| en_card.contains(w.as_str()) && !values.contains(w.as_str()))
            .count();
    }
    // The check above must have had English fixed texts to look for.
    assert!(
        translated >= 15,
        "only {translated} English fixed texts seen in the samples"
    );
}

fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(o) => {
            if o.contains_key("tag") {
                out.push(v);
            }
            for x in o.values() {
                walk(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

fn assert_feishu_v2(card: &Value) {
    assert_eq!(card["schema"], "2.0");
    assert_eq!(card["config"]["update_multi"], true);
    assert!(
        card.get("elements").is_none(),
        "2.0 elements live under body"
    );
    assert!(card["body"]["elements"].is_array());
    let mut tags = Vec::new();
    walk(&card["body"], &mut tags);
    let mut tables = 0;
    for e in tags {
        let tag = e["tag"].as_str().unwrap_or("");
        assert!(
            !["action", "note", "div"].contains(&tag),
            "2.0 has no `{tag}` element: {e}"
        );
        if tag == "table" {
            tables += 1;
            let ps = e["page_size"].as_u64().unwrap();
            assert!((1..=10).contains(&ps));
        }
        if tag == "button" {
            let behaviors = e["behaviors"].as_array().expect("button has behaviors");
            assert!(!behaviors.is_empty());
            for b in behaviors {
                match b["type"].as_str() {
                    Some("callback") => {
                        let perch = &b["value"]["perch"];
                        assert!(
                            perch["bot"].is_string()
                                && perch["action"].is_string()
                                && perch["args"].is_object(),
                            "{b}"
                        );
                    }
                    Some("open_url") => {
                        assert!(b["default_url"].as_str().unwrap().starts_with("http"))
                    }
                    other => panic!("unexpected behavior {other:?}"),
                }
            }
        }
    }
    assert!(tables <= 3);
    assert!(serde_json::to_string(card).unwrap().len() <= 30 * 1024);
}

#[test]
fn feishu_cards_have_the_2_0_shape() {
    for t in TEMPLATES {
        let card = engine().render_for(t, &sample(t), "feishu").unwrap();
        assert_feishu_v2(&card);
    }
    // The reminder's three buttons call back to the bot named in the data.
    let card = engine()
        .render_for("reminder", &sample("reminder"), "feishu")
        .unwrap();
    let mut tags = Vec::new();
    walk(&card["body"], &mut tags);
    let callbacks: Vec<&Value> = tags
        .iter()
        .filter(|e| e["tag"] == "button")
        .filter_map(|e| e["behaviors"][0]["value"].get("perch"))
        .collect();
    assert_eq!(callbacks.len(), 3);
    for (perch, action) in callbacks.iter().zip(["done", "snooze", "reassign"]) {
        assert_eq!(perch["bot"], "reminders");
        assert_eq!(perch["action"], action);
        assert_eq!(perch["args"]["id"], "r-42");
    }
}

#[test]
fn feishu_webhook_gets_a_1_0_card_without_callback_buttons() {
    let card = engine()
        .render_for("reminder", &sample("reminder"), "feishu_webhook")
        .unwrap();
    assert!(card.get("schema").is_none());
    assert_eq!(card["config"]["update_multi"], true);
    let text = card.to_string();
    assert!(
        !text.contains("\"perch\""),
        "no callback values on a custom bot: {text}"
    );
    assert!(
        text.contains("https://pm.example.com/tasks/42"),
        "URL buttons stay"
    );
    assert!(
        text.contains("Done / Snooze 1 day / Reassign"),
        "dropped actions are named"
    );
}

fn big_table_card(rows: usize) -> Value {
    let rows: Vec<Value> = (0..rows)
        .map(|i| json!([format!("row {i} {}", "x".repeat(60)), i, "ok"]))
        .collect();
    json!({"header": {"title": "Big"}, "elements": [
        {"type": "table", "columns": ["name", "n", "state"], "rows": rows},
        {"type": "note", "text": "end"}]})
}

#[test]
fn oversized_tables_are_cut_with_a_more_line() {
    let card = big_table_card(2000);
    let feishu = cards::render("feishu", &card).unwrap();
    let s = serde_json::to_string(&feishu).unwrap();
    assert!(s.len() <= 30 * 1024, "{} bytes", s.len());
    assert!(s.contains("more\""), "a '… and N more' note");
    assert_feishu_v2(&feishu);

    let webhook = cards::render("feishu_webhook", &card).unwrap();
    assert!(serde_json::to_string(&webhook).unwrap().len() <= 19 * 1024);

    let wecom = cards::render("wecom", &card).unwrap();
    let content = wecom["markdown"]["content"].as_str().unwrap();
    assert!(
        content.len() <= 4096 && content.contains("… and "),
        "{} bytes",
        content.len()
    );

    let dingtalk = cards::render("dingtalk", &card).unwrap();
    assert!(serde_json::to_string(&dingtalk).unwrap().len() <= 20 * 1024);

    let slack = cards::render("slack", &card).unwrap();
    for b in slack["blocks"].as_array().unwrap() {
        if let Some(t) = b.pointer("/text/text").and_then(Value::as_str) {
            assert!(t.chars().count() <= 3000);
        }
    }
    assert!(slack.to_string().contains("… and "));
}

#[test]
fn slack_respects_block_kit_limits() {
    let elements: Vec<Value> = (0..80)
        .map(|i| json!({"type": "markdown", "text": format!("line {i}")}))
        .collect();
    let buttons: Vec<Value> =
        (0..30).map(|i| json!({"label": "b".repeat(100), "action": {"bot": "x", "action": format!("a{i}")}})).collect();
    let mut all = vec![json!({"type": "buttons", "buttons": buttons})];
    all.extend(elements);
    let card = json!({"header": {"title": "t".repeat(300)}, "elements": all});
    let out = cards::render("slack", &card).unwrap();
    let blocks = out["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50);
    assert!(!out["text"].as_str().unwrap().is_empty());
    assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
    let mut ids = std::collections::HashSet::new();
    for b in blocks.iter().filter(|b| b["type"] == "actions") {
        let els = b["elements"].as_array().unwrap();
        assert!(els.len() <= 25);
        for e in els {
            assert!(e["text"]["text"].as_str().unwrap().chars().count() <= 75);
            assert!(e["value"].as_str().unwrap().len() <= 2000);
            assert!(e.get("style").is_none(), "default style is omitted");
            assert!(
                ids.insert(e["action_id"].as_str().unwrap().to_string()),
                "action_id unique"
            );
        }
    }
    assert!(blocks.last().unwrap().to_string().contains("more"));
}

#[test]
fn html_keeps_the_web_chat_contract() {
    let card = json!({"header": {"title": "<b>T</b>", "colour": "carmine"}, "elements": [
        {"type": "markdown", "text": "<script>alert(1)</script> **x** [l](javascript:alert(1))"},
        {"type": "buttons", "buttons": [
            {"label": "Done", "style": "primary", "action": {"bot": "r", "action": "done", "args": {"q": "it's \"<x>\""}}},
            {"label": "Open", "url": "https://example.com/?a=1&b=2"}]}]});
    let html = cards::render("html", &card).unwrap();
    let html = html.as_str().unwrap();
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(!html.contains(" on"), "no inline handlers: {html}");
    assert!(html.contains("perch-card-header-carmine"));
    assert!(html.contains("&lt;b&gt;T&lt;/b&gt;"));
    assert!(html.contains(r#"<a class="perch-btn" href="https://example.com/?a=1&amp;b=2" target="_blank" rel="noopener">Open</a>"#));
    let start = html
        .find("<button class=\"perch-btn perch-btn-primary\" data-action='")
        .unwrap();
    let rest = &html[start..];
    let attr_start = rest.find("data-action='").unwrap() + "data-action='".len();
    let attr_end = rest[attr_start..].find('\'').unwrap();
    let attr = &rest[attr_start..attr_start + attr_end];
    let unescaped = attr
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let action: Value = serde_json::from_str(&unescaped).unwrap();
    assert_eq!(
        action,
        json!({"bot": "r", "action": "done", "args": {"q": "it's \"<x>\""}})
    );
    assert!(rest[attr_start + attr_end..].starts_with("'>Done</button>"));
    for class in [
        "perch-card",
        "perch-card-header-carmine",
        "perch-btn-primary",
        "perch-card-table",
        "perch-card-note",
    ] {
        assert!(
            cards::HTML_CSS.contains(&format!(".{class}")),
            "{class} styled"
        );
    }
}

#[test]
fn bad_cards_are_refused_with_one_line() {
    for (card, needle) in [
        (json!({"elements": [{"type": "markdown"}]}), "text"),
        (
            json!({"header": {"title": "x"}, "elements": [{"type": "buttons", "buttons": [{"label": "a", "url": "ftp://x"}]}]}),
            "buttons[0].url",
        ),
        (json!([1, 2]), "invalid card"),
    ] {
        let e = cards::render("slack", &card).unwrap_err();
        assert!(matches!(e, CardError::Invalid(_)));
        let msg = e.to_string();
        assert!(msg.contains(needle) && !msg.contains('\n'), "{msg}");
    }
    assert!(matches!(
        cards::render("telegram", &json!({"header": {"title": "x"}})),
        Err(CardError::UnknownPlatform(_))
    ));
    assert_eq!(
        cards::text_fallback(
            &json!({"header": {"title": "T"}, "elements": [{"type": "markdown", "text": "**hi**"}]})
        ),
        "T\nhi"
    );
}

#[test]
fn strict_mode_errors_name_the_template_and_line() {
    let mut data = sample("reminder");
    data.as_object_mut().unwrap().remove("assignee");
    let e = engine().card("reminder", &data).unwrap_err().to_string();
    assert!(
        e.contains("reminder") && e.contains("assignee") && e.contains("line "),
        "{e}"
    );

    let e = engine().card("nope", &json!({})).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("reminder"), "{e}");
}

#[test]
fn template_output_must_be_a_valid_card() {
    let mut e = CardEngine::empty();
    e.add(
        "t",
        "{\"header\": {\"title\": {{json n}}}}",
        Path::new("t.hbs"),
        None,
    )
    .unwrap();
    let err = e.card("t", &json!({"n": 5})).unwrap_err().to_string();
    assert!(
        err.contains("template `t`") && err.contains("string"),
        "{err}"
    );
    let err = CardEngine::empty()
        .add("t", "{\"a\": \"{{{x}}}\"}", Path::new("t.hbs"), None)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("t.hbs:1:8:"), "{err}");
}

#[test]
fn helper_errors_name_the_template_and_line() {
    let mut e = CardEngine::empty();
    let src = "{\n  \"header\": {\"title\": \"{{date t tz=\"Mars/Base\"}}\"}\n}";
    e.add("when", src, Path::new("cards/when.hbs"), None)
        .unwrap();
    let err = e.card("when", &json!({"t": 0})).unwrap_err().to_string();
    assert!(
        err.contains("template `when`") && err.contains("line 2") && err.contains("Mars/Base"),
        "{err}"
    );
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) {
    std::fs::write(dir.path().join(name), text).unwrap();
}

fn broken_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(&dir, "good.hbs", "{\"header\": {\"title\": \"{{t}}\"}}");
    write(
        &dir,
        "broken.hbs",
        "{\n  \"header\": {\"title\": \"{{t =}}\"}\n}\n",
    );
    dir
}

#[test]
fn a_broken_template_fails_loading_with_file_and_line() {
    let dir = broken_dir();
    let e = CardEngine::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("broken.hbs:"), "{e}");

    // A template that compiles but renders a bad card with its own sample is caught too.
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "x.hbs",
        "{\"header\": {\"title\": \"{{t}}\"}, \"elements\": [{{json items}}]}",
    );
    write(
        &dir,
        "x.sample.json",
        r#"{"t": "hi", "items": {"type": "mystery"}}"#,
    );
    let e = CardEngine::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("x.hbs") && e.contains("mystery"), "{e}");
}

#[tokio::test]
async fn perch_start_fails_on_a_broken_template() {
    let dir = broken_dir();
    let data = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\ndata_dir = {:?}\ncards_dir = {:?}\n",
        data.path().display().to_string(),
        dir.path().display().to_string()
    );
    let config = perch::config::Config::from_str(&toml, Path::new("test.toml")).unwrap();
    let err =
        match perch::Perch::start(config, std::sync::Arc::new(perch::clock::SystemClock)).await {
            Ok(_) => panic!("started with a broken template"),
            Err(e) => e.to_string(),
        };
    assert!(err.contains("broken.hbs:2:"), "{err}");
}

#[test]
fn perch_check_reports_a_broken_template() {
    let dir = broken_dir();
    let config = dir.path().join("perch.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ncards_dir = {:?}\n",
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let out =
        perch::testing::perch_command(PERCH, &["--config", config.to_str().unwrap(), "check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.hbs:2:"), "{stderr}");

    // The project's own cards (a relative path would be relative to good.toml's folder).
    let good = dir.path().join("good.toml");
    let cards = std::env::current_dir().unwrap().join("cards");
    std::fs::write(
        &good,
        format!("[server]\ncards_dir = {:?}\n", cards.display().to_string()),
    )
    .unwrap();
    let out = perch::testing::perch_command(PERCH, &["--config", good.to_str().unwrap(), "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 card template(s)"));
}

#[test]
fn card_render_command_prints_platform_json() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("card.json");
    let out = perch::testing::perch_command(
        PERCH,
        &[
            "--config",
            "/nonexistent/perch.toml",
            "card",
            "render",
            "daily_metrics",
            "--data",
            "cards/daily_metrics.sample.json",
            "--platform",
            "feishu",
            "--out",
            out_file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_feishu_v2(&card);

    // Without a config file: the built-in cards and their samples.
    let render_reminder = |platform| {
        let args = [
            "--config",
            "/nonexistent/perch.toml",
            "card",
            "render",
            "reminder",
        ];
        perch::testing::perch_command(PERCH, &[&args[..], &["--platform", platform]].concat())
    };
    let out = render_reminder("text");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Reminder: Submit the Q4 budget"));

    let out = render_reminder("fax");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown platform `fax`"));
}

/// `GET path` at perch, read as JSON.
async fn get_json(t: &TestPerch, path: &str) -> Value {
    reqwest::get(t.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST path` at perch with a JSON body: the status and the JSON answer (null if none).
async fn post_json(t: &TestPerch, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(t.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_lists_and_renders_cards() {
    let t = TestPerch::start("[server]\nlisten = \"127.0.0.1:0\"\n").await;
    let list = get_json(&t, "/api/cards").await;
    let names: Vec<&str> = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, TEMPLATES);
    assert_eq!(list["templates"][4]["sample"]["bot"], "reminders");

    let (status, v) = post_json(
        &t,
        "/api/cards/render",
        &json!({"template": "reminder", "data": sample("reminder"), "platform": "slack"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["output"]["blocks"].is_array() && v["output"]["text"].is_string());
    assert_eq!(
        v["card"]["header"]["title"],
        "Reminder: Submit the Q4 budget"
    );
    // Beside each render, the platform's limit, measured as the renderer fits the card.
    let blocks = v["output"]["blocks"].as_array().unwrap().len();
    assert_eq!(
        v["size"],
        json!({"used": blocks, "limit": 50, "unit": "blocks"})
    );
    for (platform, limit) in [("feishu", 30 * 1024), ("feishu_webhook", 19 * 1024)] {
        let (_, v) = post_json(
            &t,
            "/api/cards/render",
            &json!({"template": "reminder", "platform": platform}),
        )
        .await;
        let bytes = serde_json::to_string(&v["output"]).unwrap().len();
        assert_eq!(
            v["size"],
            json!({"used": bytes, "limit": limit, "unit": "bytes"}),
            "{platform}"
        );
    }

    // Sample data is used when none is given; HTML comes back as a string.
    let (_, v) = post_json(
        &t,
        "/api/cards/render",
        &json!({"template": "welcome", "platform": "html"}),
    )
    .await;
    assert!(
        v["output"]
            .as_str()
            .unwrap()
            .starts_with("<div class=\"perch-card\">")
    );
    assert_eq!(v["size"], Value::Null, "no limit known for html");

    for (body, needle) in [
        (
            json!({"template": "reminder", "data": {}, "platform": "slack"}),
            "missing",
        ),
        (json!({"template": "nope", "platform": "slack"}), "nope"),
        (json!({"template": "reminder", "platform": "fax"}), "fax"),
        (
            json!({"card": {"elements": []}, "platform": "html"}),
            "invalid card",
        ),
        (json!({"platform": "html"}), "either"),
    ] {
        let (status, e) = post_json(&t, "/api/cards/render", &body).await;
        assert_eq!(status, 400, "{body}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{e}");
    }
}

/// Strings that have broken JSON, HTML and chat formats before.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\<>&'`*_\\[\\]()\n\r\t\u{0}\u{1f}\u{2028}]{0,20}",
        Just("</script><script>alert(1)</script>".to_string()),
        Just("\"},{\"type\":\"divider\"},{\"type\":\"note\",\"text\":\"".to_string()),
        Just("{{x}} {{{y}}} \\u0022".to_string()),
        Just("مرحبا بالعالم ‏עברית‎ 🦀👩‍👩‍👧 e\u{301}".to_string()),
        Just("<img src=x onerror=alert(1)>".to_string()),
    ]
}

/// `v` with every string made empty: the structure a platform sees.
fn skeleton(v: &Value) -> Value {
    match v {
        Value::String(_) => Value::String(String::new()),
        Value::Array(a) => Value::Array(a.iter().map(skeleton).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), skeleton(v))).collect())
        }
        other => other.clone(),
    }
}

fn shape(name: &str, data: &Value) -> Vec<&'static str> {
    engine()
        .card(name, data)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .shape()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn hostile_strings_never_break_or_reshape_a_card(a in hostile(), b in hostile(), c in hostile()) {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("reminder", vec!["/title", "/project", "/assignee", "/note", "/bot"]),
            ("notification", vec!["/title", "/text", "/fields/0/value", "/fields/2/label", "/source"]),
            ("welcome", vec!["/group", "/project", "/members/1", "/links/0/label", "/owner"]),
            ("query_answer", vec!["/question", "/answer", "/table/rows/0/1", "/fields/3/value", "/title"]),
            ("error", vec!["/message", "/hint", "/event_id", "/bot", "/title"]),
            ("daily_metrics", vec!["/title", "/metrics/0/name", "/table/columns/0", "/table/rows/1/0", "/source"]),
        ];
        let values = [&a, &b, &c];
        for (name, pointers) in cases {
            let plain = sample(name);
            let mut data = plain.clone();
            for (i, p) in pointers.iter().enumerate() {
                let mut s = values[i % 3].clone();
                if s.trim().is_empty() {
                    // Empty optional parts are left out by design (`{{#if note}}`), and
                    // empty titles/labels are refused: neither is what this test is about.
                    s.insert(0, 't');
                }
                *data.pointer_mut(p).unwrap_or_else(|| panic!("{name}{p}")) = Value::String(s);
            }
            let card = engine().card(name, &data);
            prop_assert!(card.is_ok(), "{}: {:?}", name, card.err().map(|e| e.to_string()));
            let card = card.unwrap();
            prop_assert_eq!(card.shape(), shape(name, &plain), "{} changed shape", name);
            for p in PLATFORMS {
                let out = cards::render_card(p, &card);
                prop_assert!(out.is_ok(), "{} on {}: {:?}", name, p, out.err().map(|e| e.to_string()));
                let out = out.unwrap();
                // What a value can do wrong on a platform is add or remove structure
                // (an element, a field, a block): the rendering's skeleton — its JSON
                // with every string blanked — is the plain sample's.
                let plain_out = cards::render_card(p, &engine().card(name, &plain).unwrap()).unwrap();
                prop_assert_eq!(skeleton(&out), skeleton(&plain_out), "{} on {} changed structure", name, p);
                if *p == "html" {
                    let html = out.as_str().unwrap().to_lowercase();
                    prop_assert!(!html.contains("<script") && !html.contains("<img src=x"), "{}", html);
                }
                if *p == "feishu" {
                    assert_feishu_v2(&out);
                }
            }
        }
    }
}

/// The card studio: an edited template's errors (compile and render) come with line and
/// column, the edit is never saved, and a test render goes to a chat through the
/// journal and the outbox, once however often it is sent.
#[tokio::test]
async fn the_studio_points_at_template_errors_and_sends_a_test_render_once() {
    let t = TestPerch::start(
        "[server]\nlisten = \"127.0.0.1:0\"\n[connectors.web]\nkind = \"local\"\n",
    )
    .await;
    let render =
        |source: &str| json!({ "template": "welcome", "source": source, "platform": "text" });
    // An unclosed block, a `{{{`, a variable the data lacks: each with where it is.
    let unclosed = "{\n  \"header\": {\"title\": \"x\"},\n  {{#if group}}\n  \"elements\": []\n}";
    let (status, e) = post_json(&t, "/api/cards/render", &render(unclosed)).await;
    assert_eq!(status, 400, "{e}");
    // The error's own text names the same place as its `line` and `column`.
    let (line, column) = (e["line"].as_u64().unwrap(), e["column"].as_u64().unwrap());
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains(&format!("welcome.hbs:{line}:{column}: ")),
        "{e}"
    );
    let (status, e) = post_json(
        &t,
        "/api/cards/render",
        &render("{\n  \"x\": {{{group}}}\n}"),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(
        (e["line"].clone(), e["column"].clone()),
        (json!(2), json!(8)),
        "{e}"
    );
    let missing = "{\n  \"header\": {\"title\": \"{{group}}\"},\n  \"elements\": [{\"type\": \"markdown\", \"text\": \"{{nope}}\"}]\n}";
    let (status, e) = post_json(&t, "/api/cards/render", &render(missing)).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("variable `nope` is missing"),
        "{e}"
    );
    assert_eq!(e["line"], 3, "{e}");
    // A good edit renders; the template itself is unchanged.
    let good = "{\n  \"header\": {\"title\": \"Edited {{group}}\"},\n  \"elements\": [{\"type\": \"markdown\", \"text\": \"hi\"}]\n}";
    let (status, v) = post_json(&t, "/api/cards/render", &render(good)).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["output"]
            .as_str()
            .unwrap()
            .contains("Edited 【项目】Acme-P123"),
        "{v}"
    );
    let (_, v) = post_json(
        &t,
        "/api/cards/render",
        &json!({ "template": "welcome", "platform": "text" }),
    )
    .await;
    assert!(
        v["output"]
            .as_str()
            .unwrap()
            .contains("Welcome to 【项目】Acme-P123"),
        "{v}"
    );

    // Refused sends change nothing.
    let events_before = t.store().recent_events(None, 1000).await.unwrap().len();
    let send = |extra: Value| {
        let mut body = json!({ "template": "welcome", "connector": "web", "chat": "general", "client_id": "s-1" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (body, needle) in [
        (
            send(json!({ "connector": "nope" })),
            "no connector `nope` (connectors: web)",
        ),
        (send(json!({ "chat": " " })), "`chat` must be a chat id"),
        (send(json!({ "source": unclosed })), "welcome.hbs:"),
        (send(json!({ "data": {} })), "is missing"),
    ] {
        let (status, e) = post_json(&t, "/api/cards/send", &body).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{e}");
    }
    assert_eq!(
        t.store().recent_events(None, 1000).await.unwrap().len(),
        events_before
    );

    // The real one, sent twice (a double click): one event, one message in the room.
    let (status, first) = post_json(&t, "/api/cards/send", &send(json!({ "source": good }))).await;
    assert_eq!(status, 200, "{first}");
    let event_id = first["event_id"].as_str().unwrap().to_string();
    assert_eq!(first["outbox_key"], format!("{event_id}/console/0000"));
    let (_, again) = post_json(&t, "/api/cards/send", &send(json!({ "source": good }))).await;
    assert_eq!(
        (again["duplicate"].clone(), again["event_id"].clone()),
        (json!(true), json!(event_id))
    );
    let deliveries = eventually(10, "the test render delivered", || async {
        let v = get_json(&t, &format!("/api/events/{event_id}/deliveries")).await;
        (v["sent"].as_array().is_some_and(|s| s.len() == 1)).then_some(v)
    })
    .await;
    assert_eq!(
        deliveries["sent"][0]["key"],
        format!("{event_id}/console/0000")
    );
    let history = get_json(&t, "/chat/api/rooms/general/messages").await;
    let cards: Vec<&Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["from_bot"] == true)
        .collect();
    assert_eq!(cards.len(), 1, "{history}");
    assert!(cards[0].to_string().contains("Edited"), "{}", cards[0]);

    // No connector may take the console's name: it could forge its events.
    let err = perch::config::Config::from_str(
        "[connectors.console]\nkind = \"local\"\n",
        Path::new("perch.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("connector name `console` is reserved"),
        "{err}"
    );
}
