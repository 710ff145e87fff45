//! The README's examples are true: every ```toml block, with the connectors it uses but
//! does not define, is a config `perch check` accepts (keys, kinds, routes, templates),
//! and the notification card example renders with the event the README describes.

/// The README's ```toml blocks, in order.
fn toml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Connectors the examples refer to, for blocks that do not define them.
const STUBS: [(&str, &str); 5] = [
    ("web", "kind = \"local\""),
    ("events", "kind = \"webhook\"\ninsecure = true"),
    ("bi", "kind = \"http\"\nbase_url = \"http://127.0.0.1:9\""),
    ("hr", "kind = \"file\"\ndir = \"demo\""),
    (
        "feishu",
        "kind = \"feishu\"\napp_id = \"cli_x\"\napp_secret = \"s\"\nverification_token = \"t\"",
    ),
];

#[test]
fn every_toml_block_of_the_readme_is_a_valid_config() {
    let blocks = toml_blocks();
    assert!(blocks.len() >= 8, "found {} toml blocks", blocks.len());
    // `${VAR}` is read from the environment at load: each one gets a default here.
    let env_var = regex::Regex::new(r"\$\{([A-Z0-9_]+)\}").unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let mut text = String::new();
        for (name, body) in STUBS {
            if !block.contains(&format!("[connectors.{name}]")) {
                text.push_str(&format!("[connectors.{name}]\n{body}\n\n"));
            }
        }
        let with_defaults = env_var.replace_all(block, "$${${1}:-from-the-environment}");
        text.push_str(&with_defaults);
        if let Err(e) = perch::config::Config::from_str(&text, std::path::Path::new("README.md")) {
            panic!(
                "README toml block {} is not a valid config: {e}\n---\n{block}",
                i + 1
            );
        }
    }
}

#[test]
fn a_template_name_typo_is_refused_by_check() {
    let text = "[connectors.web]\nkind = \"local\"\n\n[bots.n]\nkind = \"notify\"\nchat = \"general\"\ncard = \"notifcation\"\n";
    let e = perch::config::Config::from_str(text, std::path::Path::new("t.toml"))
        .expect_err("a missing template is refused");
    let e = e.to_string();
    assert!(
        e.contains("names card template `notifcation`")
            && e.contains("did you mean `notification`?"),
        "{e}"
    );
}

/// The notify example's card renders from the event the README shows.
#[tokio::test]
async fn the_readme_notification_card_renders_from_its_event() {
    let block = toml_blocks()
        .into_iter()
        .find(|b| b.contains("[bots.task_changed]"))
        .expect("the notify example");
    let config = format!(
        "[connectors.chat]\nkind = \"webhook\"\ninsecure = true\nsend_url = \"{{SINK}}/send\"\n\n{}\nconnector = \"chat\"\n\n[[routes]]\ntopic = \"task.changed\"\nbots = [\"task_changed\"]\n",
        block.trim_end()
    );
    let sink = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "m"})),
        )
        .mount(&sink)
        .await;
    let t = perch::testing::TestPerch::start(&config.replace("{SINK}", &sink.uri())).await;
    let mut e =
        perch::event::Event::new("chat", perch::event::EventKind::System, chrono::Utc::now());
    e.topic = Some("task.changed".into());
    e.payload = serde_json::json!({"assignee": {"email": "ann@corp.com"}, "task": {"title": "Ship 1.0", "state": "done"}});
    t.journal().accept(vec![e]).await.unwrap();
    let sent = perch::testing::wait_received(&sink, 1).await;
    assert_eq!(sent[0]["to"]["id"], "ann@corp.com");
    let card = sent[0]["body"]["card"].to_string();
    assert!(
        card.contains("Task Ship 1.0") && card.contains("Now **done**"),
        "{card}"
    );
}

#[test]
fn every_toml_block_of_the_readme_validates_against_the_config_schema() {
    let schema = perch::config::config_schema(&perch::config::Kinds::builtin());
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    for (i, block) in toml_blocks().iter().enumerate() {
        let table: toml::Table = toml::from_str(block).expect("README toml block is TOML");
        let instance = serde_json::to_value(table).expect("TOML as JSON");
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "README toml block {} does not validate against docs/perch.schema.json:\n  {}\n---\n{block}",
            i + 1,
            errors.join("\n  ")
        );
    }
}
