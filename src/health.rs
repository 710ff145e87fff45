//! Whether perch can store right now, as the journal (ingest) and the outbox (delivery
//! records) find it. `/healthz` answers 503 while either cannot, `/api/status` says why,
//! and both recover by themselves: the next write that succeeds clears the problem.

use std::sync::Mutex;

/// The store's health as the writers see it. Std mutexes: held only to copy a value.
#[derive(Debug, Default)]
pub struct StoreHealth {
    ingest: Mutex<Option<String>>,
    outbox: Mutex<Option<String>>,
}

/// Who found the problem.
#[derive(Debug, Clone, Copy)]
pub enum Writer {
    /// The journal could not make accepted events durable: new events get 503.
    Ingest,
    /// The outbox could not record a delivery: deliveries are paused.
    Outbox,
}

impl StoreHealth {
    fn slot(&self, w: Writer) -> &Mutex<Option<String>> {
        match w {
            Writer::Ingest => &self.ingest,
            Writer::Outbox => &self.outbox,
        }
    }

    /// A write failed with `why`. Returns whether this is news (it was healthy).
    pub fn failed(&self, w: Writer, why: &str) -> bool {
        let mut s = self.slot(w).lock().unwrap_or_else(|e| e.into_inner());
        let news = s.is_none();
        *s = Some(why.to_string());
        news
    }

    /// A write succeeded. Returns whether this ends a problem.
    pub fn ok(&self, w: Writer) -> bool {
        self.slot(w)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }

    /// The problem `w` has now, if any.
    pub fn problem(&self, w: Writer) -> Option<String> {
        self.slot(w)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every current problem, worded for an operator.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = self.problem(Writer::Ingest) {
            out.push(format!(
                "cannot make new events durable (new events get 503): {why}"
            ));
        }
        if let Some(why) = self.problem(Writer::Outbox) {
            out.push(format!(
                "cannot record deliveries (deliveries paused): {why}"
            ));
        }
        out
    }
}

/// The longest failure reason kept per connector (a platform's error page can be long).
const REASON_CHARS: usize = 300;

/// What each connector last did well and badly, sending and taking in events, for
/// `/api/status` and the console's Connectors page. Recorded where deliveries are
/// attempted (the outbox) and where events come in (the journal, the inbound HTTP
/// route). In memory only: a store write per event would cost more than it tells, so a
/// restart starts blank. Std mutex: held only to update or copy a record.
#[derive(Debug, Default)]
pub struct ConnectorHealth {
    by_name: Mutex<std::collections::HashMap<String, ConnectorRecord>>,
}

/// One connector's record (`ConnectorHealth`).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ConnectorRecord {
    pub last_send_ok: Option<chrono::DateTime<chrono::Utc>>,
    pub last_send_failure: Option<Failure>,
    pub last_ingest_ok: Option<chrono::DateTime<chrono::Utc>>,
    pub last_ingest_failure: Option<Failure>,
    /// Counts since start: attempts that delivered, attempts that failed, events
    /// accepted, inbound requests refused.
    pub sends_ok: u64,
    pub sends_failed: u64,
    pub events_in: u64,
    pub ingests_failed: u64,
}

/// When something failed and why (one line).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
}

impl Failure {
    fn new(at: chrono::DateTime<chrono::Utc>, reason: &str) -> Failure {
        let one_line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        let reason = match one_line.char_indices().nth(REASON_CHARS) {
            Some((cut, _)) => format!("{}…", &one_line[..cut]),
            None => one_line,
        };
        Failure { at, reason }
    }
}

impl ConnectorHealth {
    fn update(&self, connector: &str, change: impl FnOnce(&mut ConnectorRecord)) {
        let mut all = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = all.get_mut(connector) {
            change(record);
        } else {
            change(all.entry(connector.to_string()).or_default());
        }
    }

    /// A delivery attempt through `connector` succeeded.
    pub fn sent(&self, connector: &str, at: chrono::DateTime<chrono::Utc>) {
        self.update(connector, |r| {
            r.last_send_ok = Some(at);
            r.sends_ok += 1;
        });
    }

    /// A delivery attempt through `connector` failed (it may be retried).
    pub fn send_failed(&self, connector: &str, at: chrono::DateTime<chrono::Utc>, reason: &str) {
        self.update(connector, |r| {
            r.last_send_failure = Some(Failure::new(at, reason));
            r.sends_failed += 1;
        });
    }

    /// `count` events from `connector` were accepted (durable).
    pub fn ingested(&self, connector: &str, at: chrono::DateTime<chrono::Utc>, count: u64) {
        self.update(connector, |r| {
            r.last_ingest_ok = Some(at);
            r.events_in += count;
        });
    }

    /// An inbound request for `connector` was refused, or its events could not be stored.
    pub fn ingest_failed(&self, connector: &str, at: chrono::DateTime<chrono::Utc>, reason: &str) {
        self.update(connector, |r| {
            r.last_ingest_failure = Some(Failure::new(at, reason));
            r.ingests_failed += 1;
        });
    }

    /// A copy of `connector`'s record (blank if nothing happened yet).
    pub fn of(&self, connector: &str) -> ConnectorRecord {
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(connector)
            .cloned()
            .unwrap_or_default()
    }
}

/// What each bot did since start, for the console's Bots page: events handled, those
/// where it failed, and its last error. In memory, like `ConnectorHealth`.
#[derive(Debug, Default)]
pub struct BotActivity {
    by_name: Mutex<std::collections::HashMap<String, BotRecord>>,
}

/// One bot's record (`BotActivity`).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct BotRecord {
    pub events_handled: u64,
    pub failures: u64,
    pub last_error: Option<Failure>,
}

impl BotActivity {
    /// `bot` handled an event (its fate is recorded), failing with `error` if given.
    pub fn handled(&self, bot: &str, at: chrono::DateTime<chrono::Utc>, error: Option<&str>) {
        let mut all = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains_key(bot) {
            all.insert(bot.to_string(), BotRecord::default());
        }
        let Some(record) = all.get_mut(bot) else {
            return;
        };
        record.events_handled += 1;
        if let Some(error) = error {
            record.failures += 1;
            record.last_error = Some(Failure::new(at, error));
        }
    }

    /// A copy of `bot`'s record (blank if it handled nothing yet).
    pub fn of(&self, bot: &str) -> BotRecord {
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(bot)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connector_keeps_its_last_success_and_failure_in_one_line() {
        let health = ConnectorHealth::default();
        let t0 = chrono::Utc::now();
        assert_eq!(health.of("chat"), ConnectorRecord::default());
        health.sent("chat", t0);
        health.send_failed("chat", t0, "HTTP 502:\n<html>\n bad gateway</html>");
        health.ingested("chat", t0, 3);
        health.ingest_failed("chat", t0, &"x".repeat(1000));
        let r = health.of("chat");
        assert_eq!(r.last_send_ok, Some(t0));
        assert_eq!(
            r.last_send_failure.unwrap().reason,
            "HTTP 502: <html> bad gateway</html>"
        );
        assert_eq!(
            (r.sends_ok, r.sends_failed, r.events_in, r.ingests_failed),
            (1, 1, 3, 1)
        );
        let long = r.last_ingest_failure.unwrap().reason;
        assert_eq!(
            long.chars().count(),
            REASON_CHARS + 1,
            "cut, with an ellipsis"
        );
        assert_eq!(health.of("other"), ConnectorRecord::default());
    }
}
