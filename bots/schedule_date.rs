//! The day a scheduled run is about. Ticks carry their slot (`payload.slot`, RFC 3339 in
//! the job's zone); a daily push at 09:00 on the 21st reports on the 20th. Shared by the
//! bots that run on ticks (`daily_push`, `greetings`).

use super::BotError;
use crate::event::Event;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

/// Parse an IANA zone name, with a clear error.
pub fn zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?} (use an IANA name such as \"Asia/Shanghai\")")
    })
}

/// The tick's slot time, or the event's arrival when it has none (a manual trigger).
pub fn slot_time(event: &Event) -> DateTime<Utc> {
    event
        .payload
        .get("slot")
        .and_then(|v| v.as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(event.received_at)
}

/// The calendar day of the slot in `tz`, shifted by `offset_days`.
pub fn day(event: &Event, tz: Tz, offset_days: i64) -> Result<NaiveDate, BotError> {
    let local = slot_time(event).with_timezone(&tz).date_naive();
    local
        .checked_add_signed(chrono::Duration::days(offset_days))
        .ok_or_else(|| BotError::Other("date out of range".into()))
}
