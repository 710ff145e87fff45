//! The scheduler: cron jobs that fire **ticks**, which are ordinary events.
//!
//! ```text
//!   scheduler ──tick──▶ journal ─▶ router ─▶ bots ─▶ outbox ─▶ connectors (out)
//! ```
//!
//! Each `[schedules.<name>]` job has a cron expression **with seconds** and an IANA time
//! zone (croner + chrono-tz). When one of its slots comes due, the scheduler builds an
//! `Event { kind: Tick, connector: "scheduler", topic, external_id: "<job>@<slot ms>" }`
//! and puts it in the journal with `Journal::accept`, so routes match ticks like any
//! other event (`kind = "tick"`, `topic = "push.daily"`).
//!
//! **Exactly once.** Per job the store keeps a *cursor*: every slot up to it has been
//! handled (fired, or given up by the misfire policy). A slot is fired by accepting its
//! tick (durable) and *then* moving the cursor. A crash between the two fires the slot
//! again on restart, and the journal's dedupe on `(connector, external id)` absorbs it.
//!
//! **Misfires.** A slot is *on time* if the scheduler sees it within [`MISFIRE_GRACE`]
//! (60 s) of its time; it always fires. Older slots (perch was down, or the machine
//! slept) are *missed* and follow the job's policy: `skip` fires none, `once` fires the
//! latest if it is within `catch_up_within` of now, `all` fires each in order (the latest
//! [`MAX_CATCH_UP`] at most). Missed slots that do not fire go to the run ledger and,
//! when `alert_chat` is set, raise one alert message per downtime. The very first start
//! of a job (no cursor stored) does not backfill: the job starts from now.
//!
//! **DST** is croner's: a fixed-time job whose time falls in a spring-forward gap runs
//! right after the gap; in a fall-back overlap it runs once, at the first pass.
//!
//! **Run ledger.** Every slot gets an entry in namespace `scheduler-runs` keyed
//! `<job>/<slot ms>`: when it fired, the tick's event id, and, once the router has
//! handled the tick, what the bots did (from the journal). A tick whose bots failed
//! raises an alert too. The last [`KEEP_RUNS`] entries per job are kept.
//!
//! **Testing.** The clock is injected. [`Scheduler::plan`] is pure; [`Scheduler::fire_due`]
//! does one step at a given "now"; [`Scheduler::run`] is the real loop, which sleeps on
//! tokio time until the next slot (at most [`MAX_SLEEP`], so clock jumps are noticed).

use crate::action::{MessageBody, Operation, Target};
use crate::clock::SharedClock;
use crate::config::{Config, Issues, de_duration};
use crate::event::{Event, EventId, EventKind};
use crate::journal::{Accepted, Journal, JournalError};
use crate::store::{BotFailure, Fate, OutboxItem, Store, StoreError};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The connector name ticks carry. Reserved: no configured connector may use it.
pub const CONNECTOR: &str = "scheduler";
/// Store namespace for each job's cursor.
const STATE_NS: &str = "scheduler";
/// Store namespace for the run ledger.
const RUNS_NS: &str = "scheduler-runs";
/// A slot seen at most this long after its time is on time, not a misfire (a restart
/// that takes a few seconds does not count as downtime).
pub const MISFIRE_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// The most missed slots `misfire = "all"` fires after one downtime (the latest ones).
pub const MAX_CATCH_UP: usize = 1000;
/// Ledger entries kept per job.
pub const KEEP_RUNS: usize = 50;
/// The loop never sleeps longer than this, so a jump of the wall clock is noticed.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Payload keys the tick sets itself.
const RESERVED_KEYS: [&str; 3] = ["job", "slot", "caught_up"];

// ---- config ---------------------------------------------------------------------

/// What to do with slots missed while perch was down.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Fire none of them.
    Skip,
    /// Fire the latest one, if it is within `catch_up_within` of now.
    #[default]
    Once,
    /// Fire each of them, in order (at most the latest 1000).
    All,
}

impl Misfire {
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::Once => "once",
            Misfire::All => "all",
        }
    }
}

/// `[schedules.<name>]`: a job that fires tick events on a cron schedule.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron expression **with seconds**: `sec min hour day-of-month month day-of-week`,
    /// e.g. `"0 0 9 * * MON-FRI"` (09:00:00 on workdays). Weekday and month names work;
    /// 0 and 7 are Sunday.
    #[schemars(with = "String")]
    pub cron: Spanned<String>,
    /// IANA time zone the cron expression is read in: `"Asia/Shanghai"`, `"UTC"`.
    #[schemars(with = "String")]
    pub timezone: Spanned<String>,
    /// The tick event's topic. Default: the job's name.
    #[serde(default)]
    pub topic: Option<String>,
    /// Slots missed while perch was down: `"skip"`, `"once"` (default) or `"all"`.
    #[serde(default)]
    pub misfire: Misfire,
    /// With `misfire = "once"`: the latest missed slot fires only if it is at most this
    /// old. Default `"1h"`.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(default = "default_catch_up", deserialize_with = "de_duration")]
    pub catch_up_within: Duration,
    /// Extra fields copied into every tick's payload (beside `job`, `slot`, `caught_up`).
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub payload: toml::Table,
    /// `"<connector>:<chat id>"` that hears about slots that should have fired and did
    /// not (perch was down past the window) and ticks whose bots failed.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub alert_chat: Option<Spanned<String>>,
}

fn default_catch_up() -> Duration {
    Duration::from_secs(3600)
}

/// Parse a cron expression the way perch does: seconds required.
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .build()
        .parse(text)
        .map_err(|e| e.to_string())
}

fn valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Split `"<connector>:<chat id>"`.
fn split_alert_chat(s: &str) -> Option<(&str, &str)> {
    let (connector, chat) = s.split_once(':')?;
    (!connector.is_empty() && !chat.trim().is_empty()).then_some((connector, chat))
}

/// Semantic checks for `[schedules]` (and the reserved connector name), each at its
/// place in the file. Called from `Config::validate`.
pub fn validate(config: &Config, issues: &mut Issues) {
    if let Some(c) = config.connectors.get(CONNECTOR) {
        issues.at(
            c.span().start,
            format!(
                "connector name `{CONNECTOR}` is reserved for schedule ticks: pick another name"
            ),
        );
    }
    for (name, job) in &config.schedules {
        let at = job.span().start;
        let j = job.get_ref();
        if !valid_job_name(name) {
            issues.at(
                at,
                format!("schedule name {name:?} may only use letters, digits, `_`, `-` and `.`"),
            );
        }
        if let Err(e) = parse_cron(j.cron.get_ref()) {
            issues.at(
                j.cron.span().start,
                format!(
                    "schedule `{name}`: bad cron {:?}: {e}; expected six fields with seconds, e.g. \"0 0 9 * * MON-FRI\"",
                    j.cron.get_ref()
                ),
            );
        }
        if j.timezone.get_ref().parse::<Tz>().is_err() {
            issues.at(
                j.timezone.span().start,
                format!(
                    "schedule `{name}`: unknown time zone {:?}; expected an IANA name such as \"Asia/Shanghai\" or \"UTC\"",
                    j.timezone.get_ref()
                ),
            );
        }
        if j.topic.as_deref().is_some_and(|t| t.trim().is_empty()) {
            issues.at(
                at,
                format!("schedule `{name}`: `topic` is empty (leave it out to use the job name)"),
            );
        }
        for key in RESERVED_KEYS {
            if j.payload.contains_key(key) {
                issues.at(
                    at,
                    format!(
                        "schedule `{name}`: payload key `{key}` is reserved (the tick sets it)"
                    ),
                );
            }
        }
        if let Some(alert) = &j.alert_chat {
            match split_alert_chat(alert.get_ref()) {
                None => issues.at(
                    alert.span().start,
                    format!(
                        "schedule `{name}`: alert_chat {:?} must be \"<connector>:<chat id>\"",
                        alert.get_ref()
                    ),
                ),
                Some((c, _)) if !config.connectors.contains_key(c) => issues.at(
                    alert.span().start,
                    crate::config::undefined(
                        &format!("schedule `{name}`: alert_chat"),
                        "connector",
                        c,
                        config.connectors.keys(),
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

// ---- compiled jobs --------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("schedule `{job}`: bad cron {cron:?}: {why}")]
    Cron {
        job: String,
        cron: String,
        why: String,
    },
    #[error("schedule `{job}`: unknown time zone {zone:?}")]
    Zone { job: String, zone: String },
    #[error("schedule `{job}`: {why}")]
    Invalid { job: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot put ticks in the journal: {0}")]
    Journal(#[from] JournalError),
}

/// One job, compiled.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub cron_text: String,
    cron: Cron,
    pub zone: Tz,
    pub topic: String,
    pub misfire: Misfire,
    pub catch_up_within: chrono::TimeDelta,
    payload: Map<String, Value>,
    /// `(connector, chat id)` for alerts.
    pub alert: Option<(String, String)>,
}

impl Job {
    pub fn compile(name: &str, c: &ScheduleConfig) -> Result<Job, SchedulerError> {
        let cron = parse_cron(c.cron.get_ref()).map_err(|why| SchedulerError::Cron {
            job: name.to_string(),
            cron: c.cron.get_ref().clone(),
            why,
        })?;
        let zone = c
            .timezone
            .get_ref()
            .parse::<Tz>()
            .map_err(|_| SchedulerError::Zone {
                job: name.to_string(),
                zone: c.timezone.get_ref().clone(),
            })?;
        let payload = match serde_json::to_value(&c.payload) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let alert = match &c.alert_chat {
            Some(a) => {
                let (conn, chat) =
                    split_alert_chat(a.get_ref()).ok_or_else(|| SchedulerError::Invalid {
                        job: name.to_string(),
                        why: format!(
                            "alert_chat {:?} must be \"<connector>:<chat id>\"",
                            a.get_ref()
                        ),
                    })?;
                Some((conn.to_string(), chat.to_string()))
            }
            None => None,
        };
        Ok(Job {
            name: name.to_string(),
            cron_text: c.cron.get_ref().clone(),
            cron,
            zone,
            topic: c.topic.clone().unwrap_or_else(|| name.to_string()),
            misfire: c.misfire,
            catch_up_within: chrono::TimeDelta::from_std(c.catch_up_within)
                .unwrap_or(chrono::TimeDelta::MAX),
            payload,
            alert,
        })
    }

    /// `t` in the job's zone.
    pub fn local(&self, t: DateTime<Utc>) -> DateTime<Tz> {
        t.with_timezone(&self.zone)
    }

    /// The first slot strictly after `t`. The search runs on the job's zone from the
    /// exact instant, so it is on the right pass of a fall-back overlap.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&self.local(t), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last slot strictly before `t`.
    pub fn prev_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&self.local(t), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The next `n` slots after `t`, in the job's zone.
    pub fn next_fires(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(n);
        let mut cur = t;
        while out.len() < n {
            match self.next_after(cur) {
                Some(s) => {
                    out.push(self.local(s));
                    cur = s;
                }
                None => break,
            }
        }
        out
    }

    /// The slot as the tick shows it: RFC 3339 in the job's zone.
    pub fn slot_text(&self, slot: DateTime<Utc>) -> String {
        self.local(slot).to_rfc3339()
    }

    /// The tick event for `slot`, fired at `now`.
    pub fn tick(&self, slot: DateTime<Utc>, caught_up: bool, now: DateTime<Utc>) -> Event {
        let mut e = Event::new(CONNECTOR, EventKind::Tick, now);
        e.topic = Some(self.topic.clone());
        let mut payload = self.payload.clone();
        payload.insert("job".into(), json!(self.name));
        payload.insert("slot".into(), json!(self.slot_text(slot)));
        payload.insert("caught_up".into(), json!(caught_up));
        e.payload = Value::Object(payload);
        e.external_id = Some(external_id(&self.name, slot));
        e
    }
}

/// The tick's dedupe key: `<job>@<slot unix ms>`.
pub fn external_id(job: &str, slot: DateTime<Utc>) -> String {
    format!("{job}@{}", slot.timestamp_millis())
}

fn run_key(job: &str, slot_ms: i64) -> String {
    // Zero-padded so the ledger scans in slot order.
    format!("{job}/{slot_ms:013}")
}

/// Every configured job, compiled. Shared by the scheduler task, the API and the CLI.
#[derive(Debug, Default)]
pub struct Schedules {
    pub jobs: Vec<Job>,
}

impl Schedules {
    pub fn from_config(
        schedules: &BTreeMap<String, Spanned<ScheduleConfig>>,
    ) -> Result<Schedules, SchedulerError> {
        let jobs = schedules
            .iter()
            .map(|(name, c)| Job::compile(name, c.get_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Schedules { jobs })
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn get(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// What `perch schedule` prints: each job's next `count` fire times in its zone.
    pub fn describe_next(&self, now: DateTime<Utc>, count: usize) -> String {
        if self.jobs.is_empty() {
            return "no schedules configured ([schedules.<name>] in the config)\n".to_string();
        }
        let mut out = String::new();
        for job in &self.jobs {
            out.push_str(&format!(
                "{}  cron \"{}\"  zone {}  topic {}  misfire {}",
                job.name,
                job.cron_text,
                job.zone.name(),
                job.topic,
                job.misfire.as_str()
            ));
            if job.misfire == Misfire::Once {
                out.push_str(&format!(" within {}", humanize(job.catch_up_within)));
            }
            out.push('\n');
            let next = job.next_fires(now, count);
            if next.is_empty() {
                out.push_str("  (never fires again)\n");
            }
            for t in next {
                out.push_str(&format!(
                    "  {}  {}\n",
                    t.format("%Y-%m-%d %H:%M:%S %a"),
                    t.format("%:z")
                ));
            }
        }
        out
    }
}

fn humanize(d: chrono::TimeDelta) -> String {
    d.to_std()
        .map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_else(|_| "forever".into())
}

fn floor_second(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_opt(t.timestamp(), 0).single().unwrap_or(t)
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

// ---- persisted records ----------------------------------------------------------

/// A job's cursor, in namespace `scheduler` under the job's name.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct JobState {
    /// Every slot at or before this instant (unix ms) has been handled.
    pub cursor_ms: i64,
    /// The last slot that fired (unix ms).
    #[serde(default)]
    pub last_fired_ms: Option<i64>,
}

/// What happened to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Fired on time.
    Fired,
    /// Missed while perch was down, fired late by the misfire policy.
    CaughtUp,
    /// Missed and not fired (policy `skip`, outside `catch_up_within`, or over the cap).
    Missed,
}

/// What the routed bots did with a tick, read back from the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every bot succeeded.
    Ok { bots: Vec<String>, actions: usize },
    /// At least one bot failed.
    BotsFailed {
        bots: Vec<String>,
        failures: Vec<BotFailure>,
    },
    /// No route took the tick.
    Unrouted,
    /// The router could not handle the tick.
    RouterFailed { error: String },
    /// The journal no longer has the event (aged out before it was checked).
    Unknown,
}

impl RunOutcome {
    fn from_fate(fate: &Fate) -> Option<RunOutcome> {
        Some(match fate {
            Fate::Pending => return None,
            Fate::Routed {
                bots,
                actions,
                failures,
                ..
            } if failures.is_empty() => RunOutcome::Ok {
                bots: bots.clone(),
                actions: *actions,
            },
            Fate::Routed { bots, failures, .. } => RunOutcome::BotsFailed {
                bots: bots.clone(),
                failures: failures.clone(),
            },
            Fate::Unrouted => RunOutcome::Unrouted,
            Fate::Failed { error } => RunOutcome::RouterFailed {
                error: error.clone(),
            },
        })
    }
    fn failed(&self) -> bool {
        matches!(
            self,
            RunOutcome::BotsFailed { .. } | RunOutcome::RouterFailed { .. }
        )
    }
}

/// One slot in the run ledger (namespace `scheduler-runs`, key `<job>/<slot ms>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    pub job: String,
    /// The slot, RFC 3339 in the job's zone.
    pub slot: String,
    pub slot_ms: i64,
    pub status: RunStatus,
    /// When the tick was accepted (fired) or the miss was noticed.
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// Filled in once the router has handled the tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

// ---- the scheduler --------------------------------------------------------------

/// What one job should do at some "now": slots to fire (in order, each with whether it
/// is a late catch-up) and missed slots that will not fire.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub job: usize,
    pub fire: Vec<(DateTime<Utc>, bool)>,
    pub missed: Missed,
    /// The cursor after this step: the latest slot at or before now.
    pub new_cursor: DateTime<Utc>,
}

/// Missed slots that will not fire.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Missed {
    /// The latest of them, in order (at most `MAX_CATCH_UP`).
    pub slots: Vec<DateTime<Utc>>,
    /// True when there were more than `slots` holds.
    pub more: bool,
    /// Why they do not fire.
    pub why: String,
}

/// One fired slot, as `fire_due` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub job: String,
    pub slot: DateTime<Utc>,
    pub caught_up: bool,
    /// `New(id)`, or `Duplicate(original)` when the journal had this slot's tick already.
    pub accepted: Accepted,
}

/// What one step did.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub fired: Vec<Fired>,
    /// Per job: missed slots that did not fire.
    pub missed: Vec<(String, Missed)>,
}

#[derive(Debug, Clone)]
struct Cursor {
    cursor: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
    last_fired: Option<DateTime<Utc>>,
}

/// A tick fired whose outcome is not yet in the ledger.
#[derive(Debug, Clone)]
struct Unresolved {
    job: usize,
    slot_ms: i64,
    event: EventId,
}

/// The running scheduler: the jobs, each job's cursor, and what it needs to fire ticks.
pub struct Scheduler {
    schedules: Arc<Schedules>,
    store: Arc<dyn Store>,
    journal: Journal,
    clock: SharedClock,
    outbox: Arc<crate::outbox::OutboxDoor>,
    cursors: Vec<Cursor>,
    unresolved: Vec<Unresolved>,
}

impl Scheduler {
    /// Load each job's cursor from the store. A job with none starts from now (no
    /// backfill), and that start is stored, so a crash before its first slot still
    /// counts that slot as missed on restart.
    pub async fn open(
        schedules: Arc<Schedules>,
        store: Arc<dyn Store>,
        journal: Journal,
        clock: SharedClock,
        outbox: Arc<crate::outbox::OutboxDoor>,
    ) -> Result<Scheduler, SchedulerError> {
        let now = floor_second(clock.now());
        let mut cursors = Vec::with_capacity(schedules.jobs.len());
        let mut unresolved = Vec::new();
        for (i, job) in schedules.jobs.iter().enumerate() {
            let state = match store.kv_get(STATE_NS, &job.name).await? {
                Some(raw) => serde_json::from_slice::<JobState>(&raw).map_err(StoreError::from)?,
                None => {
                    let s = JobState {
                        cursor_ms: now.timestamp_millis(),
                        last_fired_ms: None,
                    };
                    store
                        .kv_put(
                            STATE_NS,
                            &job.name,
                            &serde_json::to_vec(&s).map_err(StoreError::from)?,
                        )
                        .await?;
                    tracing::info!(job = %job.name, "new schedule: starting from now, no backfill");
                    s
                }
            };
            let cursor = from_ms(state.cursor_ms);
            cursors.push(Cursor {
                cursor,
                next: job.next_after(cursor),
                last_fired: state.last_fired_ms.map(from_ms),
            });
            for (_, raw) in store.kv_scan(RUNS_NS, &format!("{}/", job.name)).await? {
                let Ok(run) = serde_json::from_slice::<Run>(&raw) else {
                    continue;
                };
                if let (Some(event), None) = (run.event_id, &run.outcome) {
                    unresolved.push(Unresolved {
                        job: i,
                        slot_ms: run.slot_ms,
                        event,
                    });
                }
            }
        }
        Ok(Scheduler {
            schedules,
            store,
            journal,
            clock,
            outbox,
            cursors,
            unresolved,
        })
    }

    /// The earliest slot any job is waiting for.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.cursors.iter().filter_map(|c| c.next).min()
    }

    /// Pure: what each job with something due should do at `now`.
    pub fn plan(&self, now: DateTime<Utc>) -> Vec<JobPlan> {
        let now = floor_second(now);
        let mut plans = Vec::new();
        for (i, (job, cur)) in self.schedules.jobs.iter().zip(&self.cursors).enumerate() {
            if cur.next.is_none_or(|n| n > now) {
                continue;
            }
            plans.push(plan_job(i, job, cur.cursor, cur.next, now));
        }
        plans
    }

    /// Pure: the slots that fire at `now`, as `(job, slot)`.
    #[cfg(any(test, feature = "testing"))]
    pub fn due(&self, now: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
        self.plan(now)
            .into_iter()
            .flat_map(|p| {
                let name = self.schedules.jobs[p.job].name.clone();
                p.fire.into_iter().map(move |(s, _)| (name.clone(), s))
            })
            .collect()
    }

    /// One step at the clock's now: fire what is due (ticks accepted durably first, then
    /// the cursors moved), record missed slots, raise alerts.
    pub async fn fire_due(&mut self) -> Result<Step, SchedulerError> {
        let now = self.clock.now();
        let plans = self.plan(now);
        let mut step = Step::default();
        if plans.is_empty() {
            return Ok(step);
        }
        let mut events = Vec::new();
        for p in &plans {
            let job = &self.schedules.jobs[p.job];
            for &(slot, caught_up) in &p.fire {
                events.push(job.tick(slot, caught_up, now));
            }
        }
        // 1. The ticks, durably, in one flush. A crash after this re-fires them on
        //    restart, and the journal's dedupe answers `Duplicate`.
        let accepted = if events.is_empty() {
            Vec::new()
        } else {
            self.journal.accept(events).await?
        };
        // 2. The ledger and the cursors.
        let mut accepted = accepted.into_iter();
        for p in plans {
            let job = self.schedules.jobs[p.job].clone();
            let mut runs = Vec::new();
            let mut last_fired = self.cursors[p.job].last_fired;
            for &(slot, caught_up) in &p.fire {
                let Some(a) = accepted.next() else { break };
                runs.push(Run {
                    job: job.name.clone(),
                    slot: job.slot_text(slot),
                    slot_ms: slot.timestamp_millis(),
                    status: if caught_up {
                        RunStatus::CaughtUp
                    } else {
                        RunStatus::Fired
                    },
                    at: now,
                    event_id: Some(a.id()),
                    outcome: None,
                    note: matches!(a, Accepted::Duplicate(_)).then(|| {
                        "fired again after a restart; the journal kept the first".to_string()
                    }),
                });
                self.unresolved.push(Unresolved {
                    job: p.job,
                    slot_ms: slot.timestamp_millis(),
                    event: a.id(),
                });
                last_fired = Some(slot);
                step.fired.push(Fired {
                    job: job.name.clone(),
                    slot,
                    caught_up,
                    accepted: a,
                });
            }
            if !p.missed.slots.is_empty() {
                tracing::warn!(
                    job = %job.name,
                    missed = p.missed.slots.len(),
                    more = p.missed.more,
                    why = %p.missed.why,
                    "schedule slots missed"
                );
                // Only the latest make it into the ledger; it keeps KEEP_RUNS anyway.
                let from = p.missed.slots.len().saturating_sub(KEEP_RUNS);
                for &slot in &p.missed.slots[from..] {
                    runs.push(Run {
                        job: job.name.clone(),
                        slot: job.slot_text(slot),
                        slot_ms: slot.timestamp_millis(),
                        status: RunStatus::Missed,
                        at: now,
                        event_id: None,
                        outcome: None,
                        note: Some(p.missed.why.clone()),
                    });
                }
                self.alert_missed(&job, &p.missed, now).await?;
                step.missed.push((job.name.clone(), p.missed.clone()));
            }
            self.write_runs(&job.name, &runs).await?;
            let state = JobState {
                cursor_ms: p.new_cursor.timestamp_millis(),
                last_fired_ms: last_fired.map(|t| t.timestamp_millis()),
            };
            self.store
                .kv_put(
                    STATE_NS,
                    &job.name,
                    &serde_json::to_vec(&state).map_err(StoreError::from)?,
                )
                .await?;
            let cur = &mut self.cursors[p.job];
            cur.cursor = p.new_cursor;
            cur.next = job.next_after(p.new_cursor);
            cur.last_fired = last_fired;
        }
        Ok(step)
    }

    /// Read back from the journal what the bots did with fired ticks; record it in the
    /// ledger, and alert when they failed. Ticks still pending stay for the next call.
    pub async fn check_outcomes(&mut self) -> Result<(), SchedulerError> {
        let mut still = Vec::new();
        for u in std::mem::take(&mut self.unresolved) {
            let outcome = match self.store.event(u.event).await? {
                Some(entry) => match RunOutcome::from_fate(&entry.fate) {
                    Some(o) => o,
                    None => {
                        still.push(u);
                        continue;
                    }
                },
                None => RunOutcome::Unknown,
            };
            let job = self.schedules.jobs[u.job].clone();
            let key = run_key(&job.name, u.slot_ms);
            // The entry may have been pruned meanwhile (a busy job keeps KEEP_RUNS).
            let run = self.store.kv_get(RUNS_NS, &key).await?;
            if let Some(mut run) = run.and_then(|raw| serde_json::from_slice::<Run>(&raw).ok()) {
                run.outcome = Some(outcome.clone());
                let raw = serde_json::to_vec(&run).map_err(StoreError::from)?;
                self.store.kv_put(RUNS_NS, &key, &raw).await?;
            }
            if outcome.failed() {
                let why = match &outcome {
                    RunOutcome::BotsFailed { failures, .. } => failures
                        .iter()
                        .map(|f| format!("bot `{}`: {}", f.bot, f.error))
                        .collect::<Vec<_>>()
                        .join("; "),
                    RunOutcome::RouterFailed { error } => format!("the router failed: {error}"),
                    _ => String::new(),
                };
                tracing::warn!(job = %job.name, event_id = %u.event, %why, "scheduled tick failed");
                let slot = from_ms(u.slot_ms);
                let text = format!(
                    "Schedule `{}`: the run for {} (event {}) failed: {why}",
                    job.name,
                    job.slot_text(slot),
                    u.event
                );
                self.alert(&job, u.slot_ms, text, self.clock.now()).await?;
            }
        }
        self.unresolved = still;
        Ok(())
    }

    /// How many fired ticks still wait for the router.
    #[cfg(any(test, feature = "testing"))]
    pub fn unresolved(&self) -> usize {
        self.unresolved.len()
    }

    /// The real loop: step, then sleep until the next slot (at most `MAX_SLEEP`, and
    /// briefly while ticks wait for their outcome), until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let mut wait = MAX_SLEEP;
            if let Err(e) = self.fire_due().await {
                tracing::error!(error = %e, "scheduler step failed; retrying");
                wait = Duration::from_secs(1);
            }
            if let Err(e) = self.check_outcomes().await {
                tracing::warn!(error = %e, "checking scheduled runs failed");
            }
            if !self.unresolved.is_empty() {
                wait = wait.min(Duration::from_secs(1));
            }
            if let Some(next) = self.next_due() {
                let until = (next - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
                wait = wait.min(until);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    async fn write_runs(&self, job: &str, runs: &[Run]) -> Result<(), SchedulerError> {
        if runs.is_empty() {
            return Ok(());
        }
        for run in runs {
            self.store
                .kv_put(
                    RUNS_NS,
                    &run_key(job, run.slot_ms),
                    &serde_json::to_vec(run).map_err(StoreError::from)?,
                )
                .await?;
        }
        let all = self.store.kv_scan(RUNS_NS, &format!("{job}/")).await?;
        if all.len() > KEEP_RUNS {
            for (key, _) in &all[..all.len() - KEEP_RUNS] {
                self.store.kv_delete(RUNS_NS, key).await?;
            }
        }
        Ok(())
    }

    async fn alert_missed(
        &self,
        job: &Job,
        missed: &Missed,
        now: DateTime<Utc>,
    ) -> Result<(), SchedulerError> {
        let Some(&latest) = missed.slots.last() else {
            return Ok(());
        };
        let count = if missed.more {
            format!("more than {}", missed.slots.len())
        } else {
            missed.slots.len().to_string()
        };
        let shown: Vec<String> = missed
            .slots
            .iter()
            .rev()
            .take(3)
            .map(|s| job.slot_text(*s))
            .collect();
        let text = format!(
            "Schedule `{}` ({} in {}) missed {count} slot(s) that did not fire: {}{} ({}).",
            job.name,
            job.cron_text,
            job.zone.name(),
            shown.join(", "),
            if missed.slots.len() > 3 { ", …" } else { "" },
            missed.why
        );
        self.alert(job, latest.timestamp_millis(), text, now).await
    }

    /// Queue an alert message to the job's `alert_chat`, keyed so it is sent once.
    async fn alert(
        &self,
        job: &Job,
        slot_ms: i64,
        text: String,
        now: DateTime<Utc>,
    ) -> Result<(), SchedulerError> {
        let Some((connector, chat)) = &job.alert else {
            return Ok(());
        };
        let item = OutboxItem::new(
            format!("scheduler-alert/{}/{slot_ms}", job.name),
            connector.clone(),
            Operation::Send {
                to: Target::chat(chat.clone()),
                body: MessageBody::text(text),
                reply_to: None,
            },
            now,
        );
        if self.store.enqueue(&[item]).await? > 0 {
            self.outbox.ring();
        }
        Ok(())
    }
}

/// The plan for one job whose next slot (`next`, after `cursor`) is at or before `now`
/// (whole seconds).
fn plan_job(
    i: usize,
    job: &Job,
    cursor: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> JobPlan {
    let boundary = now - MISFIRE_GRACE;
    // On time: slots in [boundary, now] after the cursor. At most 61 (one a second).
    let mut on_time = Vec::new();
    let mut t = cursor.max(boundary - chrono::TimeDelta::seconds(1));
    while let Some(s) = job.next_after(t) {
        if s > now {
            break;
        }
        on_time.push(s);
        t = s;
    }
    // Missed: slots in (cursor, boundary). Walk back from the boundary, so the work is
    // bounded by the cap however long perch was down.
    let mut missed = Vec::new();
    let mut more = false;
    if next.is_some_and(|n| n < boundary) {
        let mut t = boundary;
        while let Some(s) = job.prev_before(t) {
            if s <= cursor {
                break;
            }
            if missed.len() == MAX_CATCH_UP {
                more = true;
                break;
            }
            missed.push(s);
            t = s;
        }
        missed.reverse();
    }
    let new_cursor = on_time
        .last()
        .or(missed.last())
        .copied()
        .unwrap_or(cursor)
        .max(cursor);
    let mut fire = Vec::new();
    let mut not_fired = Missed::default();
    if !missed.is_empty() {
        match job.misfire {
            Misfire::Skip => {
                not_fired = Missed {
                    slots: missed,
                    more,
                    why: "misfire = \"skip\"".into(),
                };
            }
            Misfire::Once => {
                let latest = missed.pop().unwrap_or(cursor);
                if now - latest <= job.catch_up_within {
                    fire.push((latest, true));
                    not_fired = Missed {
                        slots: missed,
                        more,
                        why: "misfire = \"once\" fired only the latest missed slot".into(),
                    };
                } else {
                    missed.push(latest);
                    not_fired = Missed {
                        slots: missed,
                        more,
                        why: format!(
                            "misfire = \"once\": the latest was more than {} ago (catch_up_within)",
                            humanize(job.catch_up_within)
                        ),
                    };
                }
            }
            Misfire::All => {
                if more {
                    tracing::warn!(job = %job.name, cap = MAX_CATCH_UP, "more missed slots than the catch-up cap; firing only the latest");
                    // The older slots are not listed (there may be millions): the latest
                    // of them stands for all.
                    let older = missed
                        .first()
                        .and_then(|&s| job.prev_before(s))
                        .filter(|&s| s > cursor);
                    not_fired = Missed {
                        slots: older.into_iter().collect(),
                        more: true,
                        why: format!(
                            "misfire = \"all\" fires at most the latest {MAX_CATCH_UP} missed slots"
                        ),
                    };
                }
                fire.extend(missed.into_iter().map(|s| (s, true)));
            }
        }
    }
    fire.extend(on_time.into_iter().map(|s| (s, false)));
    JobPlan {
        job: i,
        fire,
        missed: not_fired,
        new_cursor,
    }
}

// ---- status for the API ---------------------------------------------------------

/// One job as `GET /api/schedules` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub topic: String,
    pub misfire: Misfire,
    pub catch_up_within: String,
    /// The next fire times, RFC 3339 in the job's zone.
    pub next: Vec<String>,
    pub last_fired: Option<String>,
    /// The ledger, newest first.
    pub runs: Vec<Run>,
    /// Slots that should have fired and did not: missed by policy, or overdue now
    /// (the scheduler has not reached them).
    pub missed: Vec<MissedSlot>,
    /// Runs whose bots failed.
    pub failed: Vec<Run>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MissedSlot {
    pub slot: String,
    pub why: String,
}

/// Every job's status at `now`, with `count` next fire times each.
pub async fn status(
    schedules: &Schedules,
    store: &dyn Store,
    now: DateTime<Utc>,
    count: usize,
) -> Result<Vec<JobStatus>, StoreError> {
    let mut out = Vec::new();
    for job in &schedules.jobs {
        let state = match store.kv_get(STATE_NS, &job.name).await? {
            Some(raw) => Some(serde_json::from_slice::<JobState>(&raw)?),
            None => None,
        };
        let mut runs = Vec::new();
        for (_, raw) in store.kv_scan(RUNS_NS, &format!("{}/", job.name)).await? {
            let Ok(mut run) = serde_json::from_slice::<Run>(&raw) else {
                continue;
            };
            if let (Some(id), None) = (run.event_id, &run.outcome) {
                // Not checked yet by the scheduler: look in the journal now.
                if let Some(entry) = store.event(id).await? {
                    run.outcome = RunOutcome::from_fate(&entry.fate);
                }
            }
            runs.push(run);
        }
        runs.reverse();
        let mut missed: Vec<MissedSlot> = runs
            .iter()
            .filter(|r| r.status == RunStatus::Missed)
            .map(|r| MissedSlot {
                slot: r.slot.clone(),
                why: r.note.clone().unwrap_or_default(),
            })
            .collect();
        if let Some(s) = state {
            // Slots past the grace that the scheduler has not handled (it is not running,
            // or stuck): overdue.
            let mut t = from_ms(s.cursor_ms);
            let mut overdue = Vec::new();
            while let Some(slot) = job.next_after(t) {
                if slot >= now - MISFIRE_GRACE || overdue.len() == 20 {
                    break;
                }
                overdue.push(MissedSlot {
                    slot: job.slot_text(slot),
                    why: "overdue: not fired yet".into(),
                });
                t = slot;
            }
            overdue.reverse();
            overdue.append(&mut missed);
            missed = overdue;
        }
        let failed = runs
            .iter()
            .filter(|r| r.outcome.as_ref().is_some_and(RunOutcome::failed))
            .cloned()
            .collect();
        out.push(JobStatus {
            name: job.name.clone(),
            cron: job.cron_text.clone(),
            timezone: job.zone.name().to_string(),
            topic: job.topic.clone(),
            misfire: job.misfire,
            catch_up_within: humanize(job.catch_up_within),
            next: job
                .next_fires(now, count)
                .iter()
                .map(|t| t.to_rfc3339())
                .collect(),
            last_fired: state
                .and_then(|s| s.last_fired_ms)
                .map(|ms| job.slot_text(from_ms(ms))),
            runs,
            missed,
            failed,
        });
    }
    Ok(out)
}
