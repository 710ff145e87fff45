//! `greetings`: birthdays and work anniversaries from an HR export (a `file` or `http`
//! source), a card on the day. Runs on a schedule; each greeting goes out once per
//! person, occasion, day and target (`Action::Once`), however often the schedule fires
//! that day. Ages and years of service are announced only where an occasion says
//! `show_years = true`: a birthday is nobody's business by default.
//!
//! Dates may be `YYYY-MM-DD`, `YYYY/MM/DD` or `MM-DD`. A 29 February date is greeted on
//! 28 February in years without one.

use super::daily_push::parse_target;
use super::schedule_date;
use super::*;
use crate::action::{MessageBody, Target};
use crate::connectors::DataRequest;
use chrono::{Datelike, NaiveDate};
use rust_i18n::t;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GreetingsConfig {
    /// The data source with the people (a list of objects).
    pub source: String,
    /// Path of the list in the source (`/people.csv`).
    pub path: String,
    /// IANA zone the day is counted in.
    pub timezone: String,
    /// Field with the person's name.
    #[serde(default = "default_name_field")]
    pub name_field: String,
    /// Field with the person's id, to message them directly too (optional).
    #[serde(default)]
    pub person_field: Option<String>,
    /// The occasions: which date field, and what to call it.
    pub occasions: Vec<Occasion>,
    /// Connector to send through. Default: the event's.
    #[serde(default)]
    pub connector: Option<String>,
    /// Chats (or `person:<id>`) that get every greeting.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Card template; data: `{name, occasion, years, date, person}`.
    #[serde(default)]
    pub template: Option<String>,
}

fn default_name_field() -> String {
    "name".to_string()
}

#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Occasion {
    /// Field holding the date.
    pub field: String,
    /// What the card says ("Happy birthday").
    pub title: String,
    /// Say how many years (an age, years of service) in the greeting. Off by default:
    /// greetings go to group chats.
    #[serde(default)]
    pub show_years: bool,
}

impl GreetingsConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        if let Some(t) = &self.template {
            config.check_template(issues, at, &format!("bot `{name}`: template"), t);
        }
        config.check_connector(issues, at, &format!("bot `{name}`: source"), &self.source);
        if let Err(e) = schedule_date::zone(&self.timezone) {
            issues.at(at, format!("bot `{name}`: {e}"));
        }
        if self.targets.is_empty() && self.person_field.is_none() {
            issues.at(
                at,
                format!("bot `{name}`: set `targets` or `person_field`, or greetings go nowhere"),
            );
        }
        if self.occasions.is_empty() {
            issues.at(at, format!("bot `{name}`: `occasions` is empty"));
        }
    }
}

/// Month and day (and year, when given) of a date field.
pub fn parse_day(s: &str) -> Option<(Option<i32>, u32, u32)> {
    let s = s.trim().replace('/', "-");
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y, m, d] => Some((Some(y.parse().ok()?), m.parse().ok()?, d.parse().ok()?)),
        [m, d] => Some((None, m.parse().ok()?, d.parse().ok()?)),
        _ => None,
    }
    .filter(|(_, m, d)| NaiveDate::from_ymd_opt(2000, *m, *d).is_some())
}

/// Whether an anniversary on `month`-`day` falls on `today`.
pub fn falls_on(month: u32, day: u32, today: NaiveDate) -> bool {
    if (month, day) == (today.month(), today.day()) {
        return true;
    }
    // 29 February in a year without one: greet on the 28th.
    (month, day) == (2, 29)
        && (today.month(), today.day()) == (2, 28)
        && NaiveDate::from_ymd_opt(today.year(), 2, 29).is_none()
}

pub struct Greetings {
    config: GreetingsConfig,
    tz: chrono_tz::Tz,
}

impl Greetings {
    pub fn new(config: GreetingsConfig) -> Result<Self, BotError> {
        let tz = schedule_date::zone(&config.timezone).map_err(BotError::Config)?;
        Ok(Greetings { config, tz })
    }
}

#[async_trait]
impl Bot for Greetings {
    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let today = schedule_date::day(event, self.tz, 0)?;
        let people = ctx
            .fetch(
                &self.config.source,
                DataRequest::get(self.config.path.clone()),
            )
            .await?;
        let Some(people) = people.as_array() else {
            return Err(BotError::Other(format!(
                "{} did not give a list of people",
                self.config.source
            )));
        };
        let mut actions = Vec::new();
        for person in people {
            let name = person
                .get(&self.config.name_field)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            for occasion in &self.config.occasions {
                let Some(raw) = person.get(&occasion.field).and_then(|v| v.as_str()) else {
                    continue;
                };
                let Some((year, month, day)) = parse_day(raw) else {
                    tracing::warn!(bot = %ctx.bot, %name, field = %occasion.field, value = %raw, "not a date; skipped");
                    continue;
                };
                if !falls_on(month, day, today) {
                    continue;
                }
                let years = year
                    .map(|y| today.year() - y)
                    .filter(|y| *y > 0 && occasion.show_years);
                let data = serde_json::json!({ "name": name, "occasion": occasion.title, "years": years, "date": today.to_string(), "person": person });
                let body = match &self.config.template {
                    Some(t) => ctx.card(t, &data)?,
                    None => MessageBody::text(match years {
                        Some(y) => t!(
                            if y == 1 {
                                "greetings.with_years.one"
                            } else {
                                "greetings.with_years.other"
                            },
                            locale = ctx.locale(),
                            occasion = occasion.title,
                            name = name,
                            count = y
                        ),
                        None => t!(
                            "greetings.plain",
                            locale = ctx.locale(),
                            occasion = occasion.title,
                            name = name
                        ),
                    }),
                };
                let mut to: Vec<Target> = self
                    .config
                    .targets
                    .iter()
                    .map(|t| parse_target(t))
                    .collect();
                if let Some(id) = self
                    .config
                    .person_field
                    .as_ref()
                    .and_then(|f| person.get(f))
                    .and_then(|v| v.as_str())
                {
                    to.push(Target::person(id));
                }
                // Once per person, occasion, day and target, whichever tick asks.
                let who = self
                    .config
                    .person_field
                    .as_ref()
                    .and_then(|f| person.get(f))
                    .and_then(|v| v.as_str())
                    .unwrap_or(&name)
                    .to_string();
                for t in to {
                    let key = format!("{today}/{}/{who}/{}", occasion.field, t.lane_id());
                    actions.push(
                        Action::Send {
                            connector: self.config.connector.clone(),
                            to: t,
                            body: body.clone(),
                        }
                        .once(key),
                    );
                }
            }
        }
        Ok(actions)
    }
}

/// `kind = "greetings"` (registered in `super::register_builtin`).
impl BotKind for Greetings {
    type Config = GreetingsConfig;
    fn build(_name: &str, config: GreetingsConfig) -> Result<Self, BotError> {
        Greetings::new(config)
    }
    fn validate(
        name: &str,
        config: &GreetingsConfig,
        at: usize,
        all: &Config,
        issues: &mut Issues,
    ) {
        config.validate(name, at, all, issues);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_leap_days() {
        assert_eq!(parse_day("1990-03-04"), Some((Some(1990), 3, 4)));
        assert_eq!(parse_day("1990/03/04"), Some((Some(1990), 3, 4)));
        assert_eq!(parse_day("12-31"), Some((None, 12, 31)));
        assert_eq!(parse_day("02-30"), None);
        assert_eq!(parse_day("soon"), None);
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        assert!(falls_on(2, 29, d(2027, 2, 28)));
        assert!(!falls_on(2, 29, d(2028, 2, 28)));
        assert!(falls_on(2, 29, d(2028, 2, 29)));
        assert!(falls_on(3, 4, d(2026, 3, 4)));
    }
}
