//! Every metric perch emits, in one place. Labels stay bounded: connector and bot names
//! come from the config; chat and user ids never become labels.
//!
//! Served as Prometheus text at `/metrics`. The console's charts read the same figures
//! per minute from `recent` (`RecentMinutes`), fed by the same calls: a small ring in
//! memory rather than reads from the store, because the figures are counters that exist
//! only in memory (like `/metrics`, they start again at a restart), and an O(1) update
//! per event costs nothing where a journal scan per chart refresh would not.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Install the Prometheus recorder once per process. Later calls return a handle
/// to the same recorder.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_string()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .map(|b| b.build_recorder());
            match recorder {
                Ok(r) => {
                    let handle = r.handle();
                    // A second install (tests in one process) keeps the first recorder.
                    let _ = metrics::set_global_recorder(r);
                    handle
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics recorder could not be built");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

pub fn event_received(connector: &str, new: bool) {
    let outcome = if new { "accepted" } else { "duplicate" };
    if new {
        recent().record(now_minute(), |m| m.events_in += 1);
    }
    counter!("perch_events_in_total", "connector" => connector.to_string(), "outcome" => outcome)
        .increment(1);
}

pub fn event_rejected(connector: &str, status: u16) {
    counter!("perch_events_rejected_total", "connector" => connector.to_string(), "status" => status.to_string()).increment(1);
}

/// The router's verdict on an event: `routed`, `unrouted` or `failed`.
pub fn event_handled(connector: &str, fate: &'static str) {
    counter!("perch_events_handled_total", "connector" => connector.to_string(), "fate" => fate)
        .increment(1);
}

pub fn bot_error(bot: &str) {
    counter!("perch_bot_errors_total", "bot" => bot.to_string()).increment(1);
}

pub fn journal_flush(batch: usize, took: Duration) {
    histogram!("perch_journal_flush_seconds").record(took.as_secs_f64());
    histogram!("perch_journal_flush_batch").record(batch as f64);
}

/// One delivery attempt's result: `delivered`, `retry` or `dead`.
/// 1 while deliveries are paused because the store refuses writes (a full disk).
pub fn outbox_blocked(blocked: bool) {
    gauge!("perch_outbox_blocked").set(if blocked { 1.0 } else { 0.0 });
}

pub fn delivery_attempt(connector: &str, result: &'static str) {
    match result {
        "delivered" => recent().record(now_minute(), |m| m.deliveries_out += 1),
        "dead" => recent().record(now_minute(), |m| m.dead_letters += 1),
        _ => {}
    }
    counter!("perch_outbox_attempts_total", "connector" => connector.to_string(), "result" => result).increment(1);
}

/// Time from the item's creation to its delivery.
pub fn delivered(connector: &str, latency: Duration) {
    let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    recent().record(now_minute(), |m| {
        m.latency_count += 1;
        m.latency_sum_ms = m.latency_sum_ms.saturating_add(ms);
        m.latency_max_ms = m.latency_max_ms.max(ms);
    });
    histogram!("perch_delivery_latency_seconds", "connector" => connector.to_string())
        .record(latency.as_secs_f64());
}

pub fn queue_depths(pending_events: usize, outbox: usize) {
    gauge!("perch_events_pending").set(pending_events as f64);
    gauge!("perch_outbox_depth").set(outbox as f64);
}

/// How many minutes the console's charts show.
pub const CHART_MINUTES: usize = 60;

/// One minute of the charted figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Minute {
    /// Unix time of the minute's start, in minutes.
    pub minute: i64,
    /// New events journaled (`perch_events_in_total{outcome="accepted"}`).
    pub events_in: u64,
    /// Deliveries that succeeded (`perch_outbox_attempts_total{result="delivered"}`).
    pub deliveries_out: u64,
    /// Items that became dead letters (`perch_outbox_attempts_total{result="dead"}`).
    pub dead_letters: u64,
    /// Delivery latency (`perch_delivery_latency_seconds`): count, sum and maximum.
    pub latency_count: u64,
    pub latency_sum_ms: u64,
    pub latency_max_ms: u64,
}

/// The last `CHART_MINUTES` minutes, one slot each (slot = minute mod the length); a
/// slot holding an older minute is reset when its minute comes round again.
#[derive(Debug)]
pub struct RecentMinutes {
    slots: std::sync::Mutex<[Minute; CHART_MINUTES]>,
}

impl Default for RecentMinutes {
    fn default() -> Self {
        RecentMinutes {
            slots: std::sync::Mutex::new([Minute::default(); CHART_MINUTES]),
        }
    }
}

impl RecentMinutes {
    /// Count something in `minute` (the lock is held for the update only).
    pub fn record(&self, minute: i64, update: impl FnOnce(&mut Minute)) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[minute.rem_euclid(CHART_MINUTES as i64) as usize];
        if slot.minute != minute {
            *slot = Minute {
                minute,
                ..Minute::default()
            };
        }
        update(slot);
    }

    /// The `CHART_MINUTES` minutes up to and including `now_minute`, oldest first; a
    /// minute with nothing recorded is all zeros.
    pub fn last_hour(&self, now_minute: i64) -> Vec<Minute> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        (0..CHART_MINUTES as i64)
            .rev()
            .map(|ago| {
                let minute = now_minute - ago;
                let slot = slots[minute.rem_euclid(CHART_MINUTES as i64) as usize];
                if slot.minute == minute {
                    slot
                } else {
                    Minute {
                        minute,
                        ..Minute::default()
                    }
                }
            })
            .collect()
    }
}

/// The process's ring, beside the process's Prometheus recorder.
pub fn recent() -> &'static RecentMinutes {
    static RECENT: std::sync::OnceLock<RecentMinutes> = std::sync::OnceLock::new();
    RECENT.get_or_init(RecentMinutes::default)
}

/// The current minute, in minutes since the Unix epoch.
pub fn now_minute() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(60)
}

/// Text from outside (names, message text, reasons that quote input) as it goes into a
/// log line: control characters (ANSI escapes, NUL, newlines, bidi overrides) are written
/// as `\u{…}` escapes, so input can neither forge log lines nor drive a terminal.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if needs_escape(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `Escaped` for a `&str`, for `tracing` fields: `reason = %escape(&text)`.
pub fn escape(s: &str) -> Escaped<'_> {
    Escaped(s)
}

/// Control characters, and the invisible format characters that reorder or hide text
/// (bidi controls, zero-width characters).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}' | '\u{180E}')
}

/// The text log format's field formatter: every field value and message goes through
/// `Escaped`, so a user's ANSI escapes, NULs or newlines cannot reach a log line raw,
/// whichever log call quotes them. (The JSON format escapes them by itself.)
pub fn escaping_fields()
-> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            write!(w, "{}", Escaped(&text))
        } else {
            write!(w, "{}={}", field.name(), Escaped(&text))
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        assert_eq!(
            escape("a\u{1b}[31mred\0\nfake line\u{202E}").to_string(),
            "a\\u{1b}[31mred\\u{0}\\u{a}fake line\\u{202e}"
        );
        assert_eq!(escape("普通 text").to_string(), "普通 text");
    }

    #[test]
    fn log_lines_carry_no_raw_control_characters() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(escaping_fields())
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let evil = "\u{1b}[2J\0fake\nline\u{202e}";
            tracing::info!(name = %evil, debug = ?evil, "refused {evil}");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(!text.contains(['\u{1b}', '\0', '\u{202e}']), "{text:?}");
        assert!(text.contains("\\u{1b}[2J"), "{text:?}");
    }
}

#[cfg(test)]
mod chart_tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_hour_and_forgets_older_minutes() {
        let ring = RecentMinutes::default();
        ring.record(1000, |m| m.events_in += 2);
        ring.record(1001, |m| m.deliveries_out += 1);
        ring.record(1001, |m| {
            m.latency_count += 1;
            m.latency_sum_ms += 40;
            m.latency_max_ms = 40;
        });
        let hour = ring.last_hour(1001);
        assert_eq!(hour.len(), CHART_MINUTES);
        assert_eq!(hour[0].minute, 1001 - 59);
        assert_eq!((hour[58].minute, hour[58].events_in), (1000, 2));
        assert_eq!(hour[59].deliveries_out, 1);
        assert_eq!(hour[59].latency_sum_ms, 40);
        // An hour later, slot 1000's minute comes round: the old count is gone.
        ring.record(1060, |m| m.dead_letters += 1);
        let hour = ring.last_hour(1060);
        assert_eq!(
            hour[59],
            Minute {
                minute: 1060,
                dead_letters: 1,
                ..Minute::default()
            }
        );
        assert_eq!(hour[0].minute, 1001);
        assert_eq!(hour[0].deliveries_out, 1);
        assert!(
            hour.iter().all(|m| m.events_in == 0),
            "minute 1000 fell out"
        );
    }
}
