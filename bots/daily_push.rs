//! `daily_push`: on a schedule, fetch the day's figures from a data source and push a card
//! (each figure with its change against the previous run, up/down marked, and an optional
//! table) to a list of chats and people.
//!
//! Exactly once per day: the tick that triggers it is deduplicated per slot by the
//! journal, and each target's push is an `Action::Once` keyed by the reported day, so
//! a second tick for that day (another event id) sends nothing more. The fan-out goes
//! through the outbox (one item per target, under the platform's rate limits). The figures of each day are kept in the bot's state under
//! their date and the comparison is with the latest earlier day, so running the same tick
//! again (after a crash) gives the same card. No data for the day: the targets get a short
//! note instead of a card of zeros.
//!
//! ```toml
//! [bots.daily]
//! kind = "daily_push"
//! source = "bi"
//! path = "/metrics/daily?day={{date}}"
//! pointer = "/data"
//! timezone = "Asia/Shanghai"
//! figures = [{ key = "gmv", label = "GMV" }, { key = "orders", label = "Orders" }]
//! targets = ["oc_sales", "person:ou_boss"]
//! template = "daily_metrics"
//! ```

use super::schedule_date;
use super::text_template::{Escape, TextTemplates};
use super::*;
use crate::action::{MessageBody, Target};
use crate::cards::helpers::{format_change, format_number};
use crate::cards::markdown as md;
use crate::connectors::DataRequest;
use rust_i18n::t;

fn default_offset() -> i64 {
    -1
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DailyPushConfig {
    /// The data source (an `http` or `file` connector).
    pub source: String,
    /// Path template over `date` (YYYY-MM-DD of the day reported on).
    pub path: String,
    /// Pointer to the object holding the figures (default: the whole answer).
    #[serde(default)]
    pub pointer: Option<String>,
    /// Pointer to an array of rows shown as a table (optional).
    #[serde(default)]
    pub table_pointer: Option<String>,
    /// Pointer to the day before's figures in the same answer, when the source sends
    /// them (many BI APIs do). Set: the change is against those. Unset: against the
    /// figures of the latest earlier day this bot pushed (kept in its state).
    #[serde(default)]
    pub previous_pointer: Option<String>,
    /// IANA zone the day is counted in.
    pub timezone: String,
    /// Which day to report on, relative to the run's day (-1: yesterday).
    #[serde(default = "default_offset")]
    pub day_offset: i64,
    /// The figures to show, in order.
    pub figures: Vec<Figure>,
    /// Connector to push through. Default: the event's.
    #[serde(default)]
    pub connector: Option<String>,
    /// Chat ids, or `person:<id>` for a direct message.
    pub targets: Vec<String>,
    /// Card template; without one, a markdown message.
    #[serde(default)]
    pub template: Option<String>,
    /// Title of the push (default: "Daily figures" in the bot's language).
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Figure {
    /// Field name in the figures object.
    pub key: String,
    /// Label on the card.
    pub label: String,
}

use serde::Serialize;

impl DailyPushConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        if let Some(t) = &self.template {
            config.check_template(issues, at, &format!("bot `{name}`: template"), t);
        }
        config.check_connector(issues, at, &format!("bot `{name}`: source"), &self.source);
        if let Some(c) = &self.connector {
            config.check_connector(issues, at, &format!("bot `{name}`"), c);
        }
        if let Err(e) = schedule_date::zone(&self.timezone) {
            issues.at(at, format!("bot `{name}`: {e}"));
        }
        for (field, p) in [
            ("pointer", &self.pointer),
            ("table_pointer", &self.table_pointer),
            ("previous_pointer", &self.previous_pointer),
        ] {
            if let Some(p) = p
                && !p.starts_with('/')
            {
                issues.at(
                    at,
                    format!(
                        "bot `{name}`: {field} {p:?} is not a JSON pointer (it must start with `/`)"
                    ),
                );
            }
        }
        if self.targets.is_empty() {
            issues.at(
                at,
                format!(
                    "bot `{name}`: `targets` is empty: name the chats (or person:<id>) to push to"
                ),
            );
        }
        if self.figures.is_empty() {
            issues.at(at, format!("bot `{name}`: `figures` is empty"));
        }
        if let Err(e) = TextTemplates::new(name, Escape::Url).add("path", &self.path) {
            issues.at(at, e.to_string());
        }
    }
}

/// Parse a target: a chat id, or `person:<id>`.
pub fn parse_target(t: &str) -> Target {
    match t.strip_prefix("person:") {
        Some(id) => Target::person(id),
        None => Target::chat(t),
    }
}

pub struct DailyPush {
    config: DailyPushConfig,
    tz: chrono_tz::Tz,
    paths: TextTemplates,
}

impl DailyPush {
    pub fn new(name: &str, config: DailyPushConfig) -> Result<Self, BotError> {
        let tz = schedule_date::zone(&config.timezone).map_err(BotError::Config)?;
        let mut paths = TextTemplates::new(name, Escape::Url);
        paths.add("path", &config.path)?;
        Ok(DailyPush { config, tz, paths })
    }

    /// One send per target, each at most once per reported day (`Action::Once`): a
    /// second tick for the same day — a catch-up after a restart, another replica, a
    /// tick sent by hand — pushes nothing more, whatever its event id.
    fn send_all(&self, date: &str, body: MessageBody) -> Vec<Action> {
        self.config
            .targets
            .iter()
            .map(|t| {
                Action::Send {
                    connector: self.config.connector.clone(),
                    to: parse_target(t),
                    body: body.clone(),
                }
                .once(format!("{date}/{t}"))
            })
            .collect()
    }
}

/// Percent change from `previous` to `value`, if both are there and previous is not 0.
pub fn change_pct(value: Option<f64>, previous: Option<f64>) -> Option<f64> {
    match (value, previous) {
        (Some(v), Some(p)) if p != 0.0 => Some((v - p) / p.abs() * 100.0),
        _ => None,
    }
}

impl DailyPush {
    /// The push's title: the configured one, else "Daily figures" in the bot's language.
    fn title(&self, ctx: &BotContext) -> String {
        self.config
            .title
            .clone()
            .unwrap_or_else(|| t!("daily_push.title", locale = ctx.locale()).into_owned())
    }
}

#[async_trait]
impl Bot for DailyPush {
    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let date = schedule_date::day(event, self.tz, self.config.day_offset)?.to_string();
        let path = self
            .paths
            .render("path", &serde_json::json!({ "date": date }))?;
        let req = DataRequest::from_rendered(&path);
        let answer = match ctx.fetch(&self.config.source, req).await {
            Ok(a) => a,
            Err(BotError::Source(e)) => {
                // The people waiting for the push learn why it is not there.
                let text = t!(
                    "daily_push.no_push",
                    locale = ctx.locale(),
                    title = self.title(ctx),
                    date = date,
                    error = e.to_string()
                );
                return Ok(self.send_all(&date, MessageBody::text(text)));
            }
            Err(e) => return Err(e),
        };
        let figures_obj = match &self.config.pointer {
            Some(p) => answer
                .pointer(p)
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            None => answer.clone(),
        };
        let values: serde_json::Map<String, serde_json::Value> = self
            .config
            .figures
            .iter()
            .filter_map(|f| {
                figures_obj
                    .get(&f.key)
                    .and_then(|v| v.as_f64())
                    .map(|v| (f.key.clone(), serde_json::json!(v)))
            })
            .collect();
        if values.is_empty() {
            let text = t!(
                "daily_push.no_figures",
                locale = ctx.locale(),
                title = self.title(ctx),
                date = date
            );
            return Ok(self.send_all(&date, MessageBody::text(text)));
        }
        // Keep today's figures; compare with the latest earlier day we pushed.
        ctx.state_put(&format!("figures/{date}"), &values).await?;
        let history: Vec<(String, serde_json::Map<String, serde_json::Value>)> =
            ctx.state_scan("figures/").await?;
        let stored = history
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() < format!("figures/{date}").as_str())
            .map(|(k, v)| (k.trim_start_matches("figures/").to_string(), v.clone()));
        // The source's own "day before", when it sends one, wins over what we stored.
        let previous: Option<(String, serde_json::Map<String, serde_json::Value>)> = match self
            .config
            .previous_pointer
            .as_deref()
            .and_then(|p| answer.pointer(p))
            .and_then(|v| v.as_object())
        {
            Some(obj) => {
                let day_before = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.pred_opt())
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                Some((day_before, obj.clone()))
            }
            None => stored,
        };
        // Bounded state: keep about two months of days.
        for (k, _) in history.iter().take(history.len().saturating_sub(62)) {
            ctx.state_delete(k).await?;
        }
        let rows: Vec<serde_json::Value> = self
            .config
            .figures
            .iter()
            .map(|f| {
                let value = values.get(&f.key).and_then(|v| v.as_f64());
                let prev = previous
                    .as_ref()
                    .and_then(|(_, p)| p.get(&f.key))
                    .and_then(|v| v.as_f64());
                let change = change_pct(value, prev);
                serde_json::json!({
                    "key": f.key, "label": f.label, "value": value, "previous": prev,
                    "change_pct": change, "up": change.map(|c| c >= 0.0),
                })
            })
            .collect();
        let table = self
            .config
            .table_pointer
            .as_deref()
            .and_then(|p| answer.pointer(p))
            .and_then(|v| v.as_array())
            .and_then(|rows| table_of(rows));
        // Shaped for cards/daily_metrics.hbs (`metrics`), plus the computed `figures`.
        let metrics: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({ "name": r["label"], "value": r["value"], "previous": r["previous"] }))
            .collect();
        let mut data = serde_json::json!({
            "title": self.title(ctx),
            "date": date,
            "tz": self.config.timezone,
            "generated_at": ctx.clock.now().to_rfc3339(),
            "source": self.config.source,
            "previous_date": previous.as_ref().map(|(day, _)| day.clone()),
            "metrics": metrics,
            "figures": rows,
        });
        if let Some(t) = table {
            data["table"] = t;
        }
        let body = match &self.config.template {
            Some(t) => ctx.card(t, &data)?,
            None => {
                let mut text = format!("**{} — {date}**\n", md::escape(&self.title(ctx)));
                for r in &rows {
                    // Formatted as the card's `number` and `percent_change` helpers do.
                    let value = r["value"]
                        .as_f64()
                        .map(|v| format_number(v, if v.fract() == 0.0 { 0 } else { 2 }))
                        .unwrap_or_else(|| "—".into());
                    let change = r["change_pct"]
                        .as_f64()
                        .map(|c| format!(" {}", format_change(c, 1)))
                        .unwrap_or_default();
                    text.push_str(&format!(
                        "- {}: {value}{change}\n",
                        r["label"].as_str().unwrap_or("")
                    ));
                }
                MessageBody::markdown(text)
            }
        };
        Ok(self.send_all(&date, body))
    }
}

/// `kind = "daily_push"` (registered in `super::register_builtin`).
impl BotKind for DailyPush {
    type Config = DailyPushConfig;
    fn build(name: &str, config: DailyPushConfig) -> Result<Self, BotError> {
        DailyPush::new(name, config)
    }
    fn validate(
        name: &str,
        config: &DailyPushConfig,
        at: usize,
        all: &Config,
        issues: &mut Issues,
    ) {
        config.validate(name, at, all, issues);
    }
}
