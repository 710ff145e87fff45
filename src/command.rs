//! `@bot command arg "quoted arg" @person` → `Command`.
//!
//! Leading @mentions of our bots address the message and are skipped; the first other
//! word is the command (lower-cased); later @mentions are people the command is about;
//! everything else is an argument. Double quotes (ASCII or “Chinese” quotes) group words.

use crate::event::{Event, Person};
use serde::Serialize;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Command {
    /// The bot account the message addressed (`@echo …` → `echo`), if any.
    pub addressed_to: Option<String>,
    /// The command word, lower-cased. Empty when the message had only mentions.
    pub name: String,
    pub args: Vec<String>,
    /// People @mentioned after the command word, in order.
    pub people: Vec<Person>,
}

impl Command {
    /// The arguments joined back into one string (`@echo hi  there` → `hi there`).
    pub fn rest(&self) -> String {
        self.args.join(" ")
    }
}

/// One bot command, as bots declare them for `help` and usage answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    pub name: String,
    /// One line: `gmv <day>`.
    pub usage: String,
    /// What it does.
    pub summary: String,
    /// For built-in bots: the summary as a built-in text (`locales/`), with the values of
    /// its `%{name}`s, so `help` can say it in the reader's language.
    #[serde(skip)]
    pub summary_text: Option<(&'static str, Vec<(&'static str, String)>)>,
}

impl CommandSpec {
    pub fn new(name: &str, usage: &str, summary: &str) -> Self {
        CommandSpec {
            name: name.to_string(),
            usage: usage.to_string(),
            summary: summary.to_string(),
            summary_text: None,
        }
    }

    /// A command whose summary is the built-in text `key` (English in `summary`).
    pub fn built_in(
        name: &str,
        usage: &str,
        key: &'static str,
        values: &[(&'static str, &str)],
    ) -> Self {
        let values: Vec<(&'static str, String)> =
            values.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let mut spec = CommandSpec::new(name, usage, "");
        spec.summary_text = Some((key, values));
        spec.summary = spec.summary_in("en");
        spec
    }

    /// The summary in `locale` (a bot's own summary stays as written).
    pub fn summary_in(&self, locale: &str) -> String {
        match &self.summary_text {
            Some((key, values)) => {
                let mut text = rust_i18n::t!(*key, locale = locale).into_owned();
                for (name, value) in values {
                    text = text.replace(&format!("%{{{name}}}"), value);
                }
                text
            }
            None => self.summary.clone(),
        }
    }
}

/// Split text into words, keeping quoted groups together.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut quoted_word = false;
    for c in text.chars() {
        match quote {
            Some(close) if c == close => {
                quote = None;
            }
            Some(_) => current.push(c),
            None if c == '"' => {
                quote = Some('"');
                quoted_word = true;
            }
            None if c == '“' => {
                quote = Some('”');
                quoted_word = true;
            }
            None if c.is_whitespace() => {
                if !current.is_empty() || quoted_word {
                    out.push(std::mem::take(&mut current));
                }
                quoted_word = false;
            }
            None => current.push(c),
        }
    }
    if !current.is_empty() || quoted_word {
        out.push(current);
    }
    out
}

/// Parse the command in a message event. `None` when the event has no text.
pub fn parse(event: &Event) -> Option<Command> {
    let text = event.text.as_deref()?;
    let mut cmd = Command::default();
    let mut seen_word = false;
    for word in tokenize(text) {
        if let Some(handle) = word.strip_prefix('@').filter(|h| !h.is_empty()) {
            let mention = event
                .mentions
                .iter()
                .find(|m| m.person.name.as_deref() == Some(handle) || m.person.id == handle);
            let is_bot = mention.is_some_and(|m| m.is_bot);
            if !seen_word && is_bot {
                if cmd.addressed_to.is_none() {
                    cmd.addressed_to = Some(handle.to_string());
                }
                continue;
            }
            if seen_word {
                let person = mention.map(|m| m.person.clone()).unwrap_or(Person {
                    id: handle.to_string(),
                    name: Some(handle.to_string()),
                });
                cmd.people.push(person);
                continue;
            }
        }
        if !seen_word {
            cmd.name = word.to_lowercase();
            seen_word = true;
        } else {
            cmd.args.push(word);
        }
    }
    Some(cmd)
}

/// The known command nearest to `unknown`, if any is close enough to be a likely typo.
pub fn nearest<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), k))
        .filter(|(d, k)| *d <= 2.max(k.chars().count() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Mention};

    fn msg(text: &str, bots: &[&str], people: &[&str]) -> Event {
        let mut e = Event::new("web", EventKind::Message, chrono::Utc::now());
        e.text = Some(text.to_string());
        for b in bots {
            e.mentions.push(Mention {
                person: Person {
                    id: b.to_string(),
                    name: Some(b.to_string()),
                },
                is_bot: true,
            });
        }
        for p in people {
            e.mentions.push(Mention {
                person: Person {
                    id: format!("id-{p}"),
                    name: Some(p.to_string()),
                },
                is_bot: false,
            });
        }
        e
    }

    #[test]
    fn parses_command_args_quotes_and_people() {
        let c = parse(&msg(
            r#"@bot 建群 "Acme Corp" P-12 @alice @bob"#,
            &["bot"],
            &["alice", "bob"],
        ))
        .unwrap();
        assert_eq!(c.addressed_to.as_deref(), Some("bot"));
        assert_eq!(c.name, "建群");
        assert_eq!(c.args, vec!["Acme Corp", "P-12"]);
        assert_eq!(
            c.people.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            vec!["id-alice", "id-bob"]
        );
    }

    #[test]
    fn chinese_quotes_and_empty_quotes() {
        assert_eq!(tokenize("a “b c” \"\" d"), vec!["a", "b c", "", "d"]);
    }

    #[test]
    fn command_is_lowercased_and_mention_only_is_empty() {
        assert_eq!(
            parse(&msg("@bot GMV 昨天", &["bot"], &[])).unwrap().name,
            "gmv"
        );
        let c = parse(&msg("@help", &["help"], &[])).unwrap();
        assert_eq!(
            (c.name.as_str(), c.addressed_to.as_deref()),
            ("", Some("help"))
        );
    }

    #[test]
    fn nearest_finds_typos_only() {
        let known = ["gmv", "ct", "remind", "reminders"];
        assert_eq!(nearest("gmb", known), Some("gmv"));
        assert_eq!(nearest("remnd", known), Some("remind"));
        assert_eq!(nearest("weather", known), None);
    }
}
