//! `reminders`: a due-item tracker. Task deadlines, device-calibration expiry and
//! equipment loans are three configurations of this one engine.
//!
//! **Items** come from system events (`[[bots.<name>.on]]`: a topic, what it does —
//! open/update, done or delete — and JSON pointers to the id, owner, due date, chat …) or
//! from `@bot remind @someone <when> <what>` (`when`: `tomorrow 17:00`, `2026-12-01`,
//! `in 3 days`, `friday`, `周五`, … — see `when.rs`). Each item lives in the bot's state
//! under `item/<id>`.
//!
//! **Reminders.** On every tick (a `[schedules.*]` job routed to this bot; every few
//! minutes) each open item is checked: a reminder card goes to its chat (or to its owner
//! directly) at each lead time before the due time (`"7d"`: at `remind_at` seven days
//! before; `"2h"`: two hours before), at the due time, then every day at `remind_at`
//! while overdue; after `escalate_after_days` overdue days a copy goes to the item's
//! escalation target (a manager, a chat). Reminders never go out in `quiet_hours` or on
//! days outside `working_days`: they wait for the next allowed moment. After downtime only
//! the latest missed reminder is sent, not one per missed step.
//!
//! **Buttons.** Every card has Done, Snooze 1 day and Reassign. Only the item's owner (or
//! one of `admins`) may press them; anyone else gets a polite toast. That is the default
//! rule: a `[[permissions]]` rule for this bot and the action (or command) replaces it,
//! and may name `owner` (`allow = ["owner", "group:leads"]`; `crate::permissions`). Done and Snooze update
//! the clicked card in place; Reassign explains the command (a button cannot ask whom).
//! Commands do the same: `done <id>`, `snooze <id> [days]`, `reassign <id> @person`, and
//! the list command (`reminders` by default) shows what is open.
//!
//! **Exactly once.** A reminder's outbox key is derived from the item, its due time and
//! the step (`Action::Once`), and the item remembers which event sent its last reminder:
//! if perch crashes while handling a tick, the tick is handled again and the same reminder
//! is decided again, and the outbox drops the repeat.
//!
//! ```toml
//! [bots.tasks]
//! kind = "reminders"
//! timezone = "Asia/Shanghai"
//! lead_times = ["1d", "0d"]
//! remind_at = "09:00"
//! escalate_after_days = 3
//! quiet_hours = "20:00-08:00"
//! working_days = ["mon", "tue", "wed", "thu", "fri"]
//!
//! [[bots.tasks.on]]
//! topic = "task.due_set"
//! id = "/task/id"
//! title = "{{payload.task.title}}"
//! owner = "/task/assignee"
//! due = "/task/due"
//! chat = "/task/chat_id"
//! escalate_to = "/task/manager"
//! ```

use super::daily_push::parse_target;
use super::schedule_date;
use super::text_template::{Escape, TextTemplates};
use super::when;
use super::*;
use crate::action::{MessageBody, Target, ToastKind};
use crate::cards::markdown as md;
use crate::event::EventKind;
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use rust_i18n::t;
use serde::Serialize;
use serde_json::{Value, json};

fn yes() -> bool {
    true
}
fn default_leads() -> Vec<String> {
    vec!["1d".into(), "0d".into()]
}
fn default_remind_at() -> String {
    "09:00".into()
}
fn default_template() -> String {
    "reminder".into()
}
fn default_noun() -> String {
    "reminder".into()
}
fn default_list() -> String {
    "reminders".into()
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemindersConfig {
    /// IANA zone for dates, `remind_at`, quiet hours and working days.
    pub timezone: String,
    /// When to remind before the due time: whole days (`"7d"`, `"1d"`, `"0d"` = the due
    /// day) remind at `remind_at` on that day; other durations (`"2h"`) that long before.
    /// Default `["1d", "0d"]`. There is always a reminder at the due time itself.
    #[serde(default = "default_leads")]
    pub lead_times: Vec<String>,
    /// Local time of day for day-based and overdue reminders, and the time a date-only
    /// due date means. Default `"09:00"`.
    #[serde(default = "default_remind_at")]
    pub remind_at: String,
    /// Remind every day while overdue (default true); `false`: once, the day after.
    #[serde(default = "yes")]
    pub overdue_daily: bool,
    /// After this many overdue days, send a copy to the escalation target (0: never).
    #[serde(default)]
    pub escalate_after_days: u32,
    /// Escalation target when an item has none of its own: a chat id or `person:<id>`.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// Local window with no reminders, e.g. `"20:00-08:00"`; they wait until it ends.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// Days reminders may go out on (`["mon", …]`). Default: every day.
    #[serde(default)]
    pub working_days: Option<Vec<String>>,
    /// People who may press any item's buttons besides its owner (person ids).
    #[serde(default)]
    pub admins: Vec<String>,
    /// Connector reminders go through. Default: the one the item came from.
    #[serde(default)]
    pub connector: Option<String>,
    /// Chat for items from events that name none. Default: directly to the owner.
    #[serde(default)]
    pub chat: Option<String>,
    /// Card template. Default `"reminder"` (see `cards/reminder.hbs` for its data).
    #[serde(default = "default_template")]
    pub template: String,
    /// What an item is called in messages: `"reminder"`, `"loan"`, `"calibration"`.
    #[serde(default = "default_noun")]
    pub noun: String,
    /// The command that lists open items. Default `"reminders"`.
    #[serde(default = "default_list")]
    pub list_command: String,
    /// Which items the list shows: `"chat"` (those of the chat it is asked in, the
    /// default) or `"all"` (every open item: loans, say, that reach people directly).
    #[serde(default)]
    pub list_scope: ListScope,
    /// Whether `remind @someone <when> <what>` is offered (default true).
    #[serde(default = "yes")]
    pub remind_command: bool,
    /// System events that open, update, close or delete items.
    #[serde(default)]
    pub on: Vec<ItemEvent>,
}

#[derive(
    Debug, Deserialize, serde::Serialize, Default, Clone, Copy, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ListScope {
    #[default]
    Chat,
    All,
}

/// What a system event does to an item.
#[derive(
    Debug, Deserialize, serde::Serialize, Default, Clone, Copy, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ItemChange {
    /// Create the item, or update it (a new due date restarts its reminders).
    #[default]
    Open,
    /// Close it: no more reminders.
    Done,
    /// Forget it.
    Delete,
}

/// `[[bots.<name>.on]]`: one system topic and where its fields are.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemEvent {
    /// The event topic, exactly (`task.due_set`, `item.borrowed`).
    pub topic: String,
    /// `"open"` (default), `"done"` or `"delete"`.
    #[serde(default)]
    pub does: ItemChange,
    /// JSON pointer to the item's id (a string or number).
    pub id: String,
    /// Title: a text template over the event (`"{{payload.task.title}}"`). Needed to open.
    #[serde(default)]
    pub title: Option<String>,
    /// Pointer to the owner's person id (who is reminded). Needed to open.
    #[serde(default)]
    pub owner: Option<String>,
    /// Pointer to the owner's display name (default: the id).
    #[serde(default)]
    pub owner_name: Option<String>,
    /// Pointer to the due time: RFC 3339, or `YYYY-MM-DD [HH:MM]` in the bot's zone.
    /// Needed to open.
    #[serde(default)]
    pub due: Option<String>,
    /// Pointer to the chat reminders go to (default: directly to the owner).
    #[serde(default)]
    pub chat: Option<String>,
    /// Pointer to the escalation target: a person id, or `chat:<id>` for a chat.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// Pointers to an optional link and note shown on the card.
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

impl RemindersConfig {
    pub fn validate(&self, name: &str, at: usize, config: &Config, issues: &mut Issues) {
        config.check_template(
            issues,
            at,
            &format!("bot `{name}`: template"),
            &self.template,
        );
        if let Err(e) = Rules::new(self) {
            issues.at(at, format!("bot `{name}`: {e}"));
        }
        if let Some(c) = &self.connector {
            config.check_connector(issues, at, &format!("bot `{name}`"), c);
        }
        for on in &self.on {
            if on.does == ItemChange::Open {
                for (field, value) in [("title", &on.title), ("owner", &on.owner), ("due", &on.due)]
                {
                    if value.is_none() {
                        issues.at(
                            at,
                            format!(
                                "bot `{name}`: `on` topic `{}` opens items, so it needs `{field}`",
                                on.topic
                            ),
                        );
                    }
                }
            }
            let pointers = [
                Some(&on.id),
                on.owner.as_ref(),
                on.owner_name.as_ref(),
                on.due.as_ref(),
                on.chat.as_ref(),
                on.escalate_to.as_ref(),
                on.link.as_ref(),
                on.note.as_ref(),
            ];
            for p in pointers.into_iter().flatten() {
                if !p.is_empty() && !p.starts_with('/') {
                    issues.at(
                        at,
                        format!(
                            "bot `{name}`: `{p}` is not a JSON pointer (they start with `/`, e.g. `/task/id`)"
                        ),
                    );
                }
            }
        }
    }
}

/// A lead time, parsed.
#[derive(Debug, Clone, PartialEq)]
enum Lead {
    /// At `remind_at` on the day this many days before the due day.
    Days(i64),
    /// Exactly this long before the due time.
    Before(chrono::Duration),
}

/// The timing rules, parsed from the config.
#[derive(Debug, Clone)]
pub struct Rules {
    tz: Tz,
    leads: Vec<(String, Lead)>,
    remind_at: NaiveTime,
    overdue_daily: bool,
    escalate_after_days: u32,
    quiet: Option<(NaiveTime, NaiveTime)>,
    working_days: Option<Vec<Weekday>>,
}

fn parse_clock(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map_err(|_| format!("{s:?} is not a time of day; write e.g. \"09:00\""))
}

impl Rules {
    pub fn new(c: &RemindersConfig) -> Result<Rules, String> {
        let tz = schedule_date::zone(&c.timezone)?;
        let mut leads = Vec::new();
        for l in &c.lead_times {
            let d = humantime::parse_duration(l.trim()).map_err(|e| {
                format!("lead time {l:?}: {e}; write e.g. \"7d\", \"1d\", \"0d\", \"2h\"")
            })?;
            let secs = d.as_secs() as i64;
            let lead = if secs % 86_400 == 0 {
                Lead::Days(secs / 86_400)
            } else {
                Lead::Before(chrono::Duration::seconds(secs))
            };
            leads.push((l.trim().to_string(), lead));
        }
        let remind_at = parse_clock(&c.remind_at).map_err(|e| format!("remind_at: {e}"))?;
        let quiet = match &c.quiet_hours {
            None => None,
            Some(q) => {
                let (a, b) = q.split_once('-').ok_or_else(|| {
                    format!("quiet_hours {q:?}: write a range like \"20:00-08:00\"")
                })?;
                let (a, b) = (parse_clock(a), parse_clock(b));
                let (a, b) = (
                    a.map_err(|e| format!("quiet_hours: {e}"))?,
                    b.map_err(|e| format!("quiet_hours: {e}"))?,
                );
                if a == b {
                    return Err(format!(
                        "quiet_hours {q:?} is empty or the whole day; give two different times"
                    ));
                }
                Some((a, b))
            }
        };
        let working_days = match &c.working_days {
            None => None,
            Some(days) => {
                let mut out = Vec::new();
                for d in days {
                    out.push(d.parse::<Weekday>().map_err(|_| {
                        format!("working_days: {d:?} is not a weekday; write \"mon\" … \"sun\"")
                    })?);
                }
                if out.is_empty() {
                    return Err("working_days is empty: reminders could never go out".into());
                }
                Some(out)
            }
        };
        Ok(Rules {
            tz,
            leads,
            remind_at,
            overdue_daily: c.overdue_daily,
            escalate_after_days: c.escalate_after_days,
            quiet,
            working_days,
        })
    }

    /// The instant a local date and time means (the later side of a DST gap).
    fn at(&self, day: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let naive = day.and_time(time);
        match self.tz.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
            chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            // In a spring-forward gap: the same wall time an hour later exists.
            chrono::LocalResult::None => self
                .tz
                .from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|| Utc.from_utc_datetime(&naive)),
        }
    }

    fn local_day(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    fn quiet_at(&self, time: NaiveTime) -> bool {
        match self.quiet {
            None => false,
            Some((start, end)) if start < end => time >= start && time < end,
            Some((start, end)) => time >= start || time < end,
        }
    }

    fn working(&self, day: Weekday) -> bool {
        self.working_days.as_ref().is_none_or(|d| d.contains(&day))
    }

    /// Whether a reminder may go out at `t`.
    pub fn allowed(&self, t: DateTime<Utc>) -> bool {
        let local = t.with_timezone(&self.tz);
        self.working(local.weekday()) && !self.quiet_at(local.time())
    }

    /// The first moment at or after `t` when a reminder may go out.
    pub fn next_allowed(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let mut t = t;
        // Two weeks of steps is more than any quiet window and weekday list needs.
        for _ in 0..30 {
            let local = t.with_timezone(&self.tz);
            if !self.working(local.weekday()) {
                t = self.at(
                    local.date_naive().succ_opt().unwrap_or(local.date_naive()),
                    NaiveTime::MIN,
                );
                continue;
            }
            if let Some((start, end)) = self.quiet
                && self.quiet_at(local.time())
            {
                let day = if start > end && local.time() >= start {
                    local.date_naive().succ_opt().unwrap_or(local.date_naive())
                } else {
                    local.date_naive()
                };
                t = self.at(day, end);
                continue;
            }
            return t;
        }
        t
    }

    /// The reminder steps of an item due at `due` whose time is in `(after, now]`, with
    /// their (allowed) times; the latest last.
    fn steps(&self, due: DateTime<Utc>, after: DateTime<Utc>, now: DateTime<Utc>) -> Vec<Step> {
        let due_day = self.local_day(due);
        let mut out = Vec::new();
        let mut push = |key: String, t: DateTime<Utc>| {
            let t = self.next_allowed(t);
            if t > after && t <= now {
                out.push(Step { key, at: t });
            }
        };
        for (label, lead) in &self.leads {
            let t = match lead {
                Lead::Days(d) => due_day
                    .checked_sub_signed(chrono::Duration::days(*d))
                    .map(|day| self.at(day, self.remind_at).min(due)),
                Lead::Before(d) => due.checked_sub_signed(*d),
            };
            if let Some(t) = t {
                push(format!("lead-{label}"), t);
            }
        }
        push("due".into(), due);
        // Overdue days: only those that can fall in the window matter.
        let today = self.local_day(now);
        let overdue_days = (today - due_day).num_days();
        if overdue_days >= 1 {
            let from = ((self.local_day(after) - due_day).num_days() - 1).max(1);
            let to = if self.overdue_daily { overdue_days } else { 1 };
            for k in from..=to {
                if let Some(day) = due_day.checked_add_signed(chrono::Duration::days(k)) {
                    push(format!("overdue-{k}"), self.at(day, self.remind_at));
                }
            }
        }
        out.sort_by_key(|s| s.at);
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Step {
    key: String,
    at: DateTime<Utc>,
}

/// An item, as kept in the bot's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub id: String,
    pub title: String,
    /// Who is reminded and may press the buttons (a person id on the platform).
    pub owner: String,
    #[serde(default)]
    pub owner_name: Option<String>,
    pub due: DateTime<Utc>,
    /// Chat the reminders go to; `None`: directly to the owner.
    #[serde(default)]
    pub chat: Option<String>,
    pub connector: String,
    #[serde(default)]
    pub escalate_to: Option<String>,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// Reminder steps up to this time are dealt with (sent, or skipped after downtime).
    pub handled_through: DateTime<Utc>,
    /// The last reminder: its step and the event that decided it (handling that event
    /// again repeats the decision; the outbox drops the repeat).
    #[serde(default)]
    pub last: Option<Sent>,
    /// The event that escalated the item, once it has been.
    #[serde(default)]
    pub escalated_by: Option<String>,
    #[serde(default)]
    pub snoozed_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub snoozed_by: Option<String>,
    #[serde(default)]
    pub done_by: Option<String>,
    #[serde(default)]
    pub done_at: Option<DateTime<Utc>>,
    /// The `once` keys of every card sent for this item (reminders and escalation
    /// copies), so a change made on one copy (Done, Snooze, a new owner) updates them all.
    #[serde(default)]
    pub copies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sent {
    pub step: String,
    pub event: String,
}

impl Item {
    /// A new open item whose reminders start after `handled_through`.
    pub fn new(
        id: &str,
        owner: String,
        due: DateTime<Utc>,
        connector: String,
        handled_through: DateTime<Utc>,
    ) -> Item {
        Item {
            id: id.to_string(),
            title: String::new(),
            owner,
            owner_name: None,
            due,
            chat: None,
            connector,
            escalate_to: None,
            link: None,
            note: None,
            handled_through,
            last: None,
            escalated_by: None,
            snoozed_until: None,
            snoozed_by: None,
            done_by: None,
            done_at: None,
            copies: Vec::new(),
        }
    }

    /// Remember a card sent under `once` key `key`; true if it is new.
    fn add_copy(&mut self, key: &str) -> bool {
        if self.copies.iter().any(|k| k == key) {
            return false;
        }
        self.copies.push(key.to_string());
        true
    }

    fn owner_display(&self) -> &str {
        self.owner_name.as_deref().unwrap_or(&self.owner)
    }
    fn is_open(&self) -> bool {
        self.done_by.is_none()
    }
    /// Where its reminders go.
    fn target(&self) -> Target {
        match &self.chat {
            Some(chat) => Target::chat(chat.clone()),
            None => Target::person(self.owner.clone()),
        }
    }
}

/// Done items are kept this long (so a late click on an old card is answered), then
/// forgotten.
const KEEP_DONE_DAYS: i64 = 30;

pub struct Reminders {
    name: String,
    config: RemindersConfig,
    rules: Rules,
    titles: TextTemplates,
}

impl Reminders {
    pub fn new(name: &str, config: RemindersConfig) -> Result<Self, BotError> {
        let rules = Rules::new(&config).map_err(BotError::Config)?;
        let mut titles = TextTemplates::new(name, Escape::None);
        for (i, on) in config.on.iter().enumerate() {
            if let Some(t) = &on.title {
                titles.add(&format!("title{i}"), t)?;
            }
        }
        Ok(Reminders {
            name: name.to_string(),
            config,
            rules,
            titles,
        })
    }

    fn key(id: &str) -> String {
        format!("item/{id}")
    }

    fn heading(&self) -> String {
        let mut c = self.config.noun.chars();
        match c.next() {
            Some(f) => f.to_uppercase().chain(c).collect(),
            None => String::new(),
        }
    }

    /// The card for `item` as of `now`.
    fn card(
        &self,
        ctx: &BotContext,
        item: &Item,
        now: DateTime<Utc>,
        escalated: bool,
    ) -> Result<MessageBody, BotError> {
        let tz = self.rules.tz;
        let days_left = (self.rules.local_day(item.due) - self.rules.local_day(now)).num_days();
        let snoozed = match (&item.snoozed_until, &item.snoozed_by) {
            (Some(until), by) if *until > now && item.is_open() => Some(format!(
                "Snoozed until {}{}",
                until.with_timezone(&tz).format("%a %d %b %H:%M"),
                by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
            )),
            _ => None,
        };
        let data = json!({
            "bot": self.name,
            "heading": self.heading(),
            "id": item.id,
            "title": item.title,
            "project": null,
            "due": item.due.with_timezone(&tz).to_rfc3339(),
            "tz": self.config.timezone,
            "days_left": days_left,
            "assignee": item.owner_display(),
            "note": item.note,
            "link": item.link,
            "done_by": item.done_by,
            "snoozed": snoozed,
            "escalated": escalated,
        });
        ctx.card(&self.config.template, &data)
    }

    /// An update of every delivered copy of the item's card (reminders and escalation
    /// copies) to its current state, except the message `skip` (the clicked card, which
    /// the click's own answer updates). A copy still queued was rendered before the
    /// change and is left as it is.
    async fn update_copies(
        &self,
        ctx: &BotContext,
        item: &Item,
        now: DateTime<Utc>,
        skip: Option<&str>,
    ) -> Result<Vec<Action>, BotError> {
        let mut out = Vec::new();
        for once in &item.copies {
            let key = format!("once/{}/{once}", self.name);
            let sent = ctx
                .services()
                .store
                .sent(&key)
                .await
                .map_err(|e| BotError::Other(format!("reading sent card {key}: {e}")))?;
            let Some(message_id) = sent.and_then(|s| s.delivered.id) else {
                continue;
            };
            if skip == Some(message_id.as_str()) {
                continue;
            }
            out.push(Action::Update {
                connector: Some(item.connector.clone()),
                message_id,
                body: self.card(ctx, item, now, once.ends_with("/escalate"))?,
            });
        }
        Ok(out)
    }

    /// The next reminder step the ticks will decide for `item` as of `now`: the snooze's
    /// end while snoozed, else the first step after what was already dealt with.
    fn next_step(&self, item: &Item, now: DateTime<Utc>) -> Option<NextStep> {
        if let Some(until) = item.snoozed_until.filter(|u| *u > now) {
            return Some(NextStep {
                step: "snoozed".into(),
                at: self.rules.next_allowed(until),
            });
        }
        // Every step lies before the due time or on the days after it; a week covers
        // quiet hours and weekends pushing the next allowed moment out.
        let horizon = now.max(item.due) + chrono::Duration::days(8);
        self.rules
            .steps(item.due, item.handled_through, horizon)
            .into_iter()
            .next()
            .map(|s| NextStep {
                step: s.key,
                at: s.at,
            })
    }

    /// Whether the person behind `event` may act on `item`: by the `[[permissions]]`
    /// rules for this bot and action (where `owner` is the item's owner); where none
    /// matches, by the default rule: the owner and `admins`.
    fn may_press(&self, ctx: &BotContext, event: &Event, item: &Item, who: &str) -> bool {
        match ctx
            .services()
            .permissions
            .decide(&self.name, event, &item.owner)
        {
            Some(allowed) => allowed,
            None => item.owner == who || self.config.admins.iter().any(|a| a == who),
        }
    }

    fn due_text(&self, due: DateTime<Utc>) -> String {
        due.with_timezone(&self.rules.tz)
            .format("%a %d %b %H:%M")
            .to_string()
    }

    /// The connector an item's reminders go through.
    fn connector_for(&self, event: &Event) -> String {
        self.config
            .connector
            .clone()
            .unwrap_or_else(|| event.connector.clone())
    }

    // ---- ticks ---------------------------------------------------------------------

    async fn tick(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let now = schedule_date::slot_time(event);
        let this = event.id.to_string();
        let mut items: Vec<(String, Item)> = ctx.state_scan("item/").await?;
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut actions = Vec::new();
        for (key, mut item) in items {
            if !item.is_open() {
                if item
                    .done_at
                    .is_some_and(|at| now - at > chrono::Duration::days(KEEP_DONE_DAYS))
                {
                    ctx.state_delete(&key).await?;
                }
                continue;
            }
            let mut changed = false;
            let mut out = Vec::new();
            // The reminder step.
            let step = if item.last.as_ref().is_some_and(|l| l.event == this) {
                // This tick was handled before a crash: decide the same again.
                item.last.as_ref().map(|l| l.step.clone())
            } else if item.snoozed_until.is_some_and(|u| u > now) {
                None
            } else {
                let mut steps = self.rules.steps(item.due, item.handled_through, now);
                if let Some(until) = item.snoozed_until {
                    let at = self.rules.next_allowed(until);
                    if at > item.handled_through && at <= now {
                        steps.push(Step {
                            key: format!("snooze-{}", until.timestamp()),
                            at,
                        });
                    }
                }
                let latest = steps.into_iter().max_by_key(|s| s.at).map(|s| s.key);
                if let Some(step) = &latest {
                    item.handled_through = now;
                    item.last = Some(Sent {
                        step: step.clone(),
                        event: this.clone(),
                    });
                    changed = true;
                }
                latest
            };
            if let Some(step) = step {
                let body = self.card(ctx, &item, now, false)?;
                let once = format!("{}/{}/{step}", item.id, item.due.timestamp());
                changed |= item.add_copy(&once);
                out.push(
                    Action::Send {
                        connector: Some(item.connector.clone()),
                        to: item.target(),
                        body,
                    }
                    .once(once),
                );
            }
            // Escalation, once, on an allowed moment.
            let overdue_days =
                (self.rules.local_day(now) - self.rules.local_day(item.due)).num_days();
            let target = item
                .escalate_to
                .clone()
                .or_else(|| self.config.escalate_to.clone());
            let escalate = match (&item.escalated_by, &target) {
                (Some(by), Some(_)) => *by == this,
                (None, Some(_)) => {
                    self.rules.escalate_after_days > 0
                        && now > item.due
                        && overdue_days >= i64::from(self.rules.escalate_after_days)
                        && item.snoozed_until.is_none_or(|u| u <= now)
                        && self.rules.allowed(now)
                }
                (_, None) => false,
            };
            if let (true, Some(target)) = (escalate, target) {
                if item.escalated_by.is_none() {
                    item.escalated_by = Some(this.clone());
                    changed = true;
                }
                let body = self.card(ctx, &item, now, true)?;
                let once = format!("{}/{}/escalate", item.id, item.due.timestamp());
                changed |= item.add_copy(&once);
                out.push(
                    Action::Send {
                        connector: Some(item.connector.clone()),
                        to: parse_target(&target),
                        body,
                    }
                    .once(once),
                );
            }
            if changed {
                // Saved before the actions are returned: if the save fails, this item
                // sends nothing now and is decided again on the next tick.
                if let Err(e) = ctx.state_put(&key, &item).await {
                    tracing::warn!(bot = %self.name, item = %item.id, error = %e, "cannot save a reminder's state; retrying on the next tick");
                    continue;
                }
            }
            actions.extend(out);
        }
        Ok(actions)
    }

    // ---- system events -------------------------------------------------------------

    async fn system(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let topic = event.topic.as_deref().unwrap_or_default();
        for (i, on) in self.config.on.iter().enumerate() {
            if on.topic != topic {
                continue;
            }
            let id = string_at(&event.payload, &on.id).ok_or_else(|| {
                BotError::Other(format!(
                    "bot `{}`: event `{topic}` has no item id at `{}`",
                    self.name, on.id
                ))
            })?;
            let key = Self::key(&id);
            let existing: Option<Item> = ctx.state_get(&key).await?;
            let now = event.received_at;
            match on.does {
                ItemChange::Delete => ctx.state_delete(&key).await?,
                ItemChange::Done => {
                    if let Some(mut item) = existing.filter(Item::is_open) {
                        item.done_by = Some(format!("`{topic}`"));
                        item.done_at = Some(now);
                        ctx.state_put(&key, &item).await?;
                    }
                }
                ItemChange::Open => {
                    let item = self.item_from_event(event, on, i, &id, existing, ctx)?;
                    ctx.state_put(&key, &item).await?;
                }
            }
        }
        Ok(Vec::new())
    }

    fn item_from_event(
        &self,
        event: &Event,
        on: &ItemEvent,
        index: usize,
        id: &str,
        existing: Option<Item>,
        _ctx: &BotContext,
    ) -> Result<Item, BotError> {
        let topic = on.topic.as_str();
        let missing = |field: &str, pointer: &str| {
            BotError::Other(format!(
                "bot `{}`: event `{topic}` (item `{id}`) has no {field} at `{pointer}`",
                self.name
            ))
        };
        let p = |pointer: &Option<String>| {
            pointer
                .as_deref()
                .and_then(|p| string_at(&event.payload, p))
        };
        let owner_ptr = on.owner.as_deref().unwrap_or_default();
        let owner = p(&on.owner).ok_or_else(|| missing("owner", owner_ptr))?;
        let due_ptr = on.due.as_deref().unwrap_or_default();
        let due_raw = p(&on.due).ok_or_else(|| missing("due date", due_ptr))?;
        let due = when::parse_due(&due_raw, self.rules.tz, self.rules.remind_at).ok_or_else(|| {
            BotError::Other(format!(
                "bot `{}`: event `{topic}` (item `{id}`): due date {due_raw:?} is not RFC 3339 or YYYY-MM-DD [HH:MM]",
                self.name
            ))
        })?;
        let data = serde_json::to_value(event).unwrap_or(Value::Null);
        let title = self.titles.render(&format!("title{index}"), &data)?;
        let now = event.received_at;
        // Lead times already past when the item arrives are skipped; an item that arrives
        // overdue is reminded at the next tick.
        let start = if due < now {
            due - chrono::Duration::seconds(1)
        } else {
            now
        };
        let mut item = match existing {
            // An update: a new due date (or a reopening) restarts the reminders.
            Some(mut old) => {
                if old.due != due || !old.is_open() {
                    old.handled_through = start;
                    old.last = None;
                    old.escalated_by = None;
                    old.snoozed_until = None;
                    old.snoozed_by = None;
                    old.done_by = None;
                    old.done_at = None;
                }
                old
            }
            None => Item::new(id, owner.clone(), due, self.connector_for(event), start),
        };
        item.title = title;
        item.owner = owner;
        item.owner_name = p(&on.owner_name);
        item.due = due;
        item.chat = p(&on.chat).or_else(|| self.config.chat.clone());
        // A payload names a person (a manager) unless it says `chat:<id>`.
        item.escalate_to = p(&on.escalate_to).map(|t| match t.strip_prefix("chat:") {
            Some(chat) => chat.to_string(),
            None if t.starts_with("person:") => t,
            None => format!("person:{t}"),
        });
        item.link = p(&on.link);
        item.note = p(&on.note);
        Ok(item)
    }

    // ---- commands ------------------------------------------------------------------

    async fn command(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let Some(cmd) = ctx.command.clone() else {
            return Ok(Vec::new());
        };
        let who = event
            .sender
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let who_name = event
            .sender
            .as_ref()
            .map(|s| s.name.clone().unwrap_or_else(|| s.id.clone()))
            .unwrap_or_default();
        let now = event.received_at;
        let bot = &self.name;
        let noun = &self.config.noun;
        match cmd.name.as_str() {
            "remind" if self.config.remind_command => self.remind(event, ctx, &cmd).await,
            name if name == self.config.list_command => self.list(event, ctx).await,
            "done" | "snooze" | "reassign" => {
                let Some(id) = cmd.args.first() else {
                    return Err(BotError::User(format!(
                        "usage: `@{bot} {} <id>{}` (the id is on the {noun} card and in `@{bot} {}`)",
                        cmd.name,
                        match cmd.name.as_str() {
                            "snooze" => " [days]",
                            "reassign" => " @person",
                            _ => "",
                        },
                        self.config.list_command
                    )));
                };
                let key = Self::key(id);
                let locale = ctx.locale();
                let Some(mut item) = ctx.state_get::<Item>(&key).await? else {
                    return Err(BotError::User(
                        t!(
                            "reminders.no_such",
                            locale = locale,
                            noun = noun,
                            id = md::code(id)
                        )
                        .into_owned(),
                    ));
                };
                if !self.may_press(ctx, event, &item, &who) {
                    return Err(BotError::User(
                        t!(
                            "reminders.only_owner",
                            locale = locale,
                            owner = md::escape(&item.owner_display()),
                            noun = noun,
                            id = md::code(id)
                        )
                        .into_owned(),
                    ));
                }
                let text = match cmd.name.as_str() {
                    "done" => {
                        if !item.is_open() {
                            return Ok(vec![Action::reply_markdown(t!(
                                "reminders.already_done",
                                locale = locale,
                                id = md::code(id)
                            ))]);
                        }
                        item.done_by = Some(who_name);
                        item.done_at = Some(now);
                        t!(
                            "reminders.done",
                            locale = locale,
                            id = md::code(id),
                            title = md::escape(&item.title)
                        )
                        .into_owned()
                    }
                    "snooze" => {
                        let days = match cmd.args.get(1) {
                            None => 1,
                            Some(d) => d.parse::<u32>().ok().filter(|d| (1..=365).contains(d)).ok_or_else(|| {
                                BotError::User(format!("usage: `@{bot} snooze <id> [days]`, days from 1 to 365; got {d:?}"))
                            })?,
                        };
                        let until = self.snooze_until(now, days);
                        item.snoozed_until = Some(until);
                        item.snoozed_by = Some(who_name);
                        t!(
                            "reminders.snoozed",
                            locale = locale,
                            id = md::code(id),
                            until = self.due_text(until)
                        )
                        .into_owned()
                    }
                    _ => {
                        let Some(new_owner) = cmd.people.first() else {
                            return Err(BotError::User(format!(
                                "usage: `@{bot} reassign {id} @person`"
                            )));
                        };
                        item.owner = new_owner.id.clone();
                        item.owner_name = new_owner.name.clone();
                        t!(
                            "reminders.reassigned",
                            locale = locale,
                            id = md::code(id),
                            title = md::escape(&item.title),
                            owner = md::escape(&item.owner_display())
                        )
                        .into_owned()
                    }
                };
                ctx.state_put(&key, &item).await?;
                let mut actions = vec![Action::reply_markdown(text)];
                actions.extend(self.update_copies(ctx, &item, now, None).await?);
                if cmd.name == "reassign" && item.is_open() {
                    // The new owner hears it from the bot, with the card to act on.
                    actions.push(Action::Send {
                        connector: Some(item.connector.clone()),
                        to: crate::action::Target::person(item.owner.clone()),
                        body: self.card(ctx, &item, now, false)?,
                    });
                }
                Ok(actions)
            }
            _ => Err(BotError::User(self.usage())),
        }
    }

    fn usage(&self) -> String {
        let bot = &self.name;
        let mut lines = Vec::new();
        if self.config.remind_command {
            lines.push(format!("`@{bot} remind @someone <when> <what>` (when: `tomorrow 17:00`, `2026-12-01`, `in 3 days`, `friday`, `周五`)"));
        }
        lines.push(format!(
            "`@{bot} {}` lists what is open",
            self.config.list_command
        ));
        lines.push(format!(
            "`@{bot} done <id>`, `@{bot} snooze <id> [days]`, `@{bot} reassign <id> @person`"
        ));
        lines.join("\n")
    }

    /// The end of a snooze of `days` days from `now`: that day at `remind_at` (or the
    /// next allowed moment after it).
    fn snooze_until(&self, now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
        let day = self.rules.local_day(now) + chrono::Duration::days(i64::from(days));
        self.rules
            .next_allowed(self.rules.at(day, self.rules.remind_at))
    }

    async fn remind(
        &self,
        event: &Event,
        ctx: &mut BotContext,
        cmd: &Command,
    ) -> Result<Vec<Action>, BotError> {
        let bot = &self.name;
        let usage = || {
            BotError::User(format!(
                "usage: `@{bot} remind @someone <when> <what>`, e.g. `@{bot} remind @alice tomorrow 17:00 send the report`; when: `tomorrow 17:00`, `2026-12-01`, `in 3 days`, `friday`, `周五`"
            ))
        };
        let mut args = cmd.args.as_slice();
        let (owner, owner_name) = match (cmd.people.first(), args.first()) {
            (Some(p), _) => (p.id.clone(), p.name.clone()),
            (None, Some(me)) if me == "me" || me == "我" => {
                args = &args[1..];
                let sender = event.sender.clone().ok_or_else(usage)?;
                (sender.id, sender.name)
            }
            _ => return Err(usage()),
        };
        let now = event.received_at;
        let (due, used) = when::parse_when(args, now, self.rules.tz, self.rules.remind_at)
            .ok_or_else(|| match args.first() {
                Some(w) => BotError::User(format!("I can't read {w:?} as a time. {}", usage())),
                None => usage(),
            })?;
        let what = args[used..].join(" ");
        if what.trim().is_empty() {
            return Err(usage());
        }
        if due <= now {
            return Err(BotError::User(format!(
                "{} is already past; give a time in the future.",
                self.due_text(due)
            )));
        }
        // The id comes from the event, so handling this message again makes the same item.
        let hex = event.id.to_string().replace('-', "");
        let id = format!("r-{}", &hex[hex.len().saturating_sub(6)..]);
        let item = Item {
            title: what,
            owner_name,
            chat: event.chat.as_ref().map(|c| c.id.clone()),
            ..Item::new(&id, owner, due, self.connector_for(event), now)
        };
        ctx.state_put(&Self::key(&id), &item).await?;
        Ok(vec![Action::reply_markdown(t!(
            "reminders.created",
            locale = ctx.locale(),
            owner = md::escape(&item.owner_display()),
            title = md::escape(&item.title),
            due = self.due_text(due),
            id = md::code(&id)
        ))])
    }

    async fn list(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let now = event.received_at;
        let chat = event.chat.as_ref().map(|c| c.id.as_str());
        let mut open: Vec<Item> = ctx
            .state_scan::<Item>("item/")
            .await?
            .into_iter()
            .map(|(_, item)| item)
            .filter(Item::is_open)
            .filter(|item| self.config.list_scope == ListScope::All || item.chat.as_deref() == chat)
            .collect();
        open.sort_by(|a, b| a.due.cmp(&b.due).then_with(|| a.id.cmp(&b.id)));
        let noun = &self.config.noun;
        let locale = ctx.locale();
        if open.is_empty() {
            return Ok(vec![Action::reply_markdown(t!(
                "reminders.none_open",
                locale = locale,
                noun = noun
            ))]);
        }
        let mut text = format!(
            "**{} ({})**",
            t!("reminders.open_items", locale = locale, noun = noun).trim_end_matches([':', '：']),
            open.len()
        );
        for item in &open {
            let days = (self.rules.local_day(item.due) - self.rules.local_day(now)).num_days();
            let plural = |n: i64| if n == 1 { "one" } else { "other" };
            let when = match days {
                d if d < 0 => t!(
                    &format!("reminders.overdue_days.{}", plural(-d)),
                    locale = locale,
                    count = -d
                ),
                0 => t!("reminders.due_today", locale = locale),
                d => t!(
                    &format!("reminders.in_days.{}", plural(d)),
                    locale = locale,
                    count = d
                ),
            };
            text.push_str(&format!(
                "\n- {} {} — {} — {} ({when})",
                md::code(&item.id),
                md::escape(&item.title),
                md::escape(&item.owner_display()),
                self.due_text(item.due)
            ));
        }
        Ok(vec![Action::reply(MessageBody::markdown(text))])
    }

    // ---- clicks --------------------------------------------------------------------

    async fn click(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        let Some(click) = &event.card_action else {
            return Ok(Vec::new());
        };
        let noun = &self.config.noun;
        let locale = ctx.locale();
        let id = match &click.args["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Ok(vec![Action::toast(
                    ToastKind::Error,
                    t!("reminders.button_no_id", locale = locale),
                )]);
            }
        };
        let key = Self::key(&id);
        let Some(mut item) = ctx.state_get::<Item>(&key).await? else {
            return Ok(vec![Action::toast(
                ToastKind::Warning,
                t!("reminders.gone", locale = locale, noun = noun),
            )]);
        };
        let who = event
            .sender
            .as_ref()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let who_name = event
            .sender
            .as_ref()
            .map(|s| s.name.clone().unwrap_or_else(|| s.id.clone()))
            .unwrap_or_default();
        if !self.may_press(ctx, event, &item, &who) {
            return Ok(vec![Action::toast(
                ToastKind::Warning,
                t!(
                    "reminders.owner_only_toast",
                    locale = locale,
                    owner = item.owner_display()
                ),
            )]);
        }
        let now = event.received_at;
        let message_id = click.message_id.clone();
        let toast = match click.action.as_str() {
            "done" if !item.is_open() => Action::toast(
                ToastKind::Info,
                t!(
                    "reminders.already_done_by",
                    locale = locale,
                    who = item.done_by.as_deref().unwrap_or("?")
                ),
            ),
            "done" => {
                item.done_by = Some(who_name);
                item.done_at = Some(now);
                ctx.state_put(&key, &item).await?;
                Action::toast(
                    ToastKind::Success,
                    t!("reminders.done_toast", locale = locale),
                )
            }
            "snooze" if !item.is_open() => Action::toast(
                ToastKind::Info,
                t!("reminders.already_done_toast", locale = locale, noun = noun),
            ),
            "snooze" => {
                let days = click.args["days"].as_u64().unwrap_or(1).clamp(1, 365) as u32;
                let until = self.snooze_until(now, days);
                item.snoozed_until = Some(until);
                item.snoozed_by = Some(who_name);
                ctx.state_put(&key, &item).await?;
                Action::toast(
                    ToastKind::Success,
                    t!(
                        "reminders.snoozed_toast",
                        locale = locale,
                        until = self.due_text(until)
                    ),
                )
            }
            "reassign" => {
                return Ok(vec![Action::toast(
                    ToastKind::Info,
                    t!(
                        "reminders.reassign_how",
                        locale = locale,
                        command = format!("@{} reassign {id} @someone", self.name)
                    ),
                )]);
            }
            other => {
                return Ok(vec![Action::toast(
                    ToastKind::Error,
                    t!(
                        "reminders.unknown_button",
                        locale = locale,
                        button = format!("{other:?}")
                    ),
                )]);
            }
        };
        let mut actions = vec![toast];
        actions.extend(
            self.update_copies(ctx, &item, now, message_id.as_deref())
                .await?,
        );
        if let Some(message_id) = message_id {
            actions.push(Action::Update {
                connector: None,
                message_id,
                body: self.card(ctx, &item, now, false)?,
            });
        }
        Ok(actions)
    }
}

/// The value at `pointer` as a string (numbers too); `None` when absent or empty.
fn string_at(payload: &Value, pointer: &str) -> Option<String> {
    match payload.pointer(pointer)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl Bot for Reminders {
    fn commands(&self) -> Vec<CommandSpec> {
        let noun = &self.config.noun;
        let mut out = Vec::new();
        if self.config.remind_command {
            out.push(CommandSpec::built_in(
                "remind",
                "remind @someone <when> <what>",
                "summary.remind",
                &[],
            ));
        }
        let noun = &[("noun", noun.as_str())];
        let list = &self.config.list_command;
        out.push(CommandSpec::built_in(list, list, "summary.list", noun));
        out.push(CommandSpec::built_in(
            "done",
            "done <id>",
            "summary.done",
            noun,
        ));
        out.push(CommandSpec::built_in(
            "snooze",
            "snooze <id> [days]",
            "summary.snooze",
            noun,
        ));
        out.push(CommandSpec::built_in(
            "reassign",
            "reassign <id> @person",
            "summary.reassign",
            noun,
        ));
        out
    }

    async fn open_items(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
    ) -> Option<Result<Vec<OpenItem>, BotError>> {
        let read = async {
            let mut out = Vec::new();
            for (_, raw) in store.kv_scan(&state_namespace(&self.name), "item/").await? {
                let item: Item = serde_json::from_slice(&raw).map_err(StoreError::from)?;
                if !item.is_open() {
                    continue;
                }
                out.push(OpenItem {
                    next_step: self.next_step(&item, now),
                    id: item.id,
                    title: item.title,
                    owner: item.owner,
                    owner_name: item.owner_name,
                    due: item.due,
                    chat: item.chat,
                    connector: item.connector,
                    snoozed_until: item.snoozed_until.filter(|u| *u > now),
                    actions: vec!["done".into(), "snooze".into()],
                });
            }
            out.sort_by(|a, b| (a.due, &a.id).cmp(&(b.due, &b.id)));
            Ok(out)
        };
        Some(read.await)
    }

    async fn handle(&self, event: &Event, ctx: &mut BotContext) -> Result<Vec<Action>, BotError> {
        match event.kind {
            EventKind::Tick => self.tick(event, ctx).await,
            EventKind::System => self.system(event, ctx).await,
            EventKind::CardAction => self.click(event, ctx).await,
            EventKind::Message => self.command(event, ctx).await,
            // Only `http_bot` bots get these.
            EventKind::BotActions => Ok(Vec::new()),
        }
    }
}

/// `kind = "reminders"` (registered in `super::register_builtin`).
impl BotKind for Reminders {
    type Config = RemindersConfig;
    fn build(name: &str, config: RemindersConfig) -> Result<Self, BotError> {
        Reminders::new(name, config)
    }
    fn validate(
        name: &str,
        config: &RemindersConfig,
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

    fn rules(extra: &str) -> Rules {
        let c: RemindersConfig =
            toml::from_str(&format!("timezone = \"Asia/Shanghai\"\n{extra}")).unwrap();
        Rules::new(&c).unwrap()
    }

    /// A Shanghai wall time.
    fn sh(s: &str) -> DateTime<Utc> {
        when::parse_due(s, chrono_tz::Asia::Shanghai, NaiveTime::MIN).unwrap()
    }

    fn keys(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.key.as_str()).collect()
    }

    #[test]
    fn lead_times_due_and_overdue_days() {
        let r = rules(r#"lead_times = ["7d", "1d", "0d", "2h"]"#);
        let due = sh("2026-12-01 17:00");
        let all = r.steps(due, sh("2026-11-01 00:00"), sh("2026-12-04 12:00"));
        let at: Vec<String> = all
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.key,
                    s.at.with_timezone(&r.tz).format("%m-%d %H:%M")
                )
            })
            .collect();
        assert_eq!(
            at,
            [
                "lead-7d 11-24 09:00",
                "lead-1d 11-30 09:00",
                "lead-0d 12-01 09:00",
                "lead-2h 12-01 15:00",
                "due 12-01 17:00",
                "overdue-1 12-02 09:00",
                "overdue-2 12-03 09:00",
                "overdue-3 12-04 09:00",
            ]
        );
        // Only the steps in the window.
        let window = r.steps(due, sh("2026-11-30 09:00"), sh("2026-12-01 16:00"));
        assert_eq!(keys(&window), ["lead-0d", "lead-2h"]);
        // Not daily: one overdue reminder.
        let once = rules("overdue_daily = false");
        let late = once.steps(due, sh("2026-12-01 18:00"), sh("2026-12-09 12:00"));
        assert_eq!(keys(&late), ["overdue-1"]);
    }

    #[test]
    fn quiet_hours_and_working_days_postpone() {
        let r = rules(
            r#"quiet_hours = "20:00-08:00"
working_days = ["mon", "tue", "wed", "thu", "fri"]"#,
        );
        // Friday 21:00 is quiet, Saturday and Sunday are off: Monday 08:00.
        let fmt = |t: DateTime<Utc>| t.with_timezone(&r.tz).format("%a %m-%d %H:%M").to_string();
        assert_eq!(
            fmt(r.next_allowed(sh("2026-11-27 21:00"))),
            "Mon 11-30 08:00"
        );
        assert_eq!(
            fmt(r.next_allowed(sh("2026-11-26 06:30"))),
            "Thu 11-26 08:00"
        );
        assert_eq!(
            fmt(r.next_allowed(sh("2026-11-26 12:00"))),
            "Thu 11-26 12:00"
        );
        assert!(!r.allowed(sh("2026-11-28 12:00")), "Saturday");
        // A daytime quiet window.
        let lunch = rules(r#"quiet_hours = "12:00-13:30""#);
        assert_eq!(
            fmt(lunch.next_allowed(sh("2026-11-26 12:10"))),
            "Thu 11-26 13:30"
        );
        // Overdue steps on a weekend wait for Monday.
        let due = sh("2026-11-27 17:00");
        let steps = r.steps(due, sh("2026-11-27 18:00"), sh("2026-11-30 09:00"));
        assert!(
            steps.iter().all(|s| fmt(s.at).starts_with("Mon")),
            "{steps:?}"
        );
    }

    #[test]
    fn bad_settings_are_explained() {
        let err = |extra: &str| {
            let c: RemindersConfig =
                toml::from_str(&format!("timezone = \"Asia/Shanghai\"\n{extra}")).unwrap();
            Rules::new(&c).unwrap_err()
        };
        assert!(err(r#"lead_times = ["soon"]"#).contains("lead time \"soon\""));
        assert!(err(r#"remind_at = "9am""#).contains("not a time of day"));
        assert!(err(r#"quiet_hours = "22:00""#).contains("range"));
        assert!(err(r#"working_days = ["funday"]"#).contains("not a weekday"));
        assert!(err("working_days = []").contains("empty"));
    }
}
