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
