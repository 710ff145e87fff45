//! Every metric perch emits, in one place. Labels stay bounded: connector and bot names
//! come from the config; chat and user ids never become labels.
//!
//! Served as Prometheus text at `/metrics`.

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
    counter!("perch_outbox_attempts_total", "connector" => connector.to_string(), "result" => result).increment(1);
}

/// Time from the item's creation to its delivery.
pub fn delivered(connector: &str, latency: Duration) {
    histogram!("perch_delivery_latency_seconds", "connector" => connector.to_string())
        .record(latency.as_secs_f64());
}

pub fn queue_depths(pending_events: usize, outbox: usize) {
    gauge!("perch_events_pending").set(pending_events as f64);
    gauge!("perch_outbox_depth").set(outbox as f64);
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
