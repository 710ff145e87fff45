//! The standup bot in a real perch, through the test kit: a mention gets a card with
//! everyone's answers, the state survives between events, a bad request gets its usage
//! line, and a typo in its config is refused with the bot's name.

use perch::testing::TestHub;

fn hub() -> perch::HubBuilder {
    perch::Hub::builder().bot_kind::<custom_bot::Standup>("standup")
}

fn config(card: &str) -> String {
    format!(
        r#"
[server]
cards_dir = "{dir}"

[bots.standup]
kind = "standup"
title = "Today's standup"
card = "{card}"

[[routes]]
mention = "*"
command = "standup"
bots = ["standup"]
"#,
        dir = concat!(env!("CARGO_MANIFEST_DIR"), "/cards"),
    )
}

#[tokio::test]
async fn answers_with_a_card_of_everyones_answers() {
    let t = TestHub::start(hub(), &config("standup")).await;
    let sent = t.mention("@bot standup write the release notes").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let card = sent[0].card().expect("a card").to_string();
    assert!(card.contains("Today's standup"), "{card}");
    assert!(card.contains("write the release notes"), "{card}");

    let sent = t.mention("@bot standup fix the build").await;
    let card = sent[0].card().expect("a card").to_string();
    assert!(card.contains("fix the build"), "the latest answer: {card}");
    assert!(
        !card.contains("write the release notes"),
        "replaces Alice's earlier one: {card}"
    );
    assert_eq!(t.platform().ops().len(), 2, "one card per mention");
}

#[tokio::test]
async fn an_empty_answer_gets_the_usage_line() {
    let t = TestHub::start(hub(), &config("standup")).await;
    let sent = t.mention("@bot standup").await;
    assert_eq!(sent[0].text(), "Usage: @bot standup <what you do today>");
}

#[test]
fn a_missing_card_template_is_refused_by_name() {
    let err = hub()
        .parse(&config("stnadup"), std::path::Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bot `standup` names card template `stnadup`"),
        "{err}"
    );
    assert!(err.contains("did you mean `standup`?"), "{err}");
}
