//! Reading "when" in reminder commands and due dates in event payloads.
//!
//! People write `tomorrow 17:00`, `2026-12-01`, `in 3 days`, `friday`, `周五`, `明天 9:30`,
//! `下周一`, `3天后`. Natural-language date crates cover English only (and each its own
//! idea of "next friday"), so this is a small explicit grammar with one meaning per form:
//!
//! - a day, optionally followed by a time (`17:00`, `9:30`, `5pm`, `17点`, `3点半`):
//!   `today`/`今天`, `tomorrow`/`明天`, `后天`; `2026-12-01`, `2026/12/01`, `12月1日`;
//!   a weekday (`friday`, `fri`, `周五`, `星期五`, `礼拜五`): its next date, today included
//!   while the time is still ahead; `next friday`/`下周五`: that day of next week (weeks
//!   start on Monday). Without a time, the bot's `remind_at`.
//! - a time alone: today at that time, or tomorrow once it has passed.
//! - `in 3 days`, `in 2 hours`, `in 30 minutes`, `in 1 week`, `in 3d`, `3天后`, `2小时后`:
//!   from now.
//!
//! A Chinese day and time may be written as one word (`周五17:00`, `明天9点`).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Read a time from the start of `words`: the instant and how many words it used.
pub fn parse_when(
    words: &[String],
    now: DateTime<Utc>,
    tz: Tz,
    default_time: NaiveTime,
) -> Option<(DateTime<Utc>, usize)> {
    let first = words.first()?.to_lowercase();
    let local_now = now.with_timezone(&tz);
    let today = local_now.date_naive();
    let at = |day: NaiveDate, time: NaiveTime| local(tz, day.and_time(time));

    // `in 3 days`, `in 3d`
    if first == "in" {
        let n_word = words.get(1)?.to_lowercase();
        if let Some(d) = compact_duration(&n_word) {
            return Some((now + d, 2));
        }
        let n: i64 = n_word.parse().ok().filter(|n| *n > 0 && *n <= 3650)?;
        let unit = unit_duration(&words.get(2)?.to_lowercase(), n)?;
        return Some((now + unit, 3));
    }
    // `3天后`, `2小时后`
    if let Some(d) = chinese_relative(&first) {
        return Some((now + d, 1));
    }
    // `next friday`
    if first == "next" {
        let wd = weekday(&words.get(1)?.to_lowercase())?;
        let day = next_week(today, wd);
        let (time, used) = time_after(words, 2, "", default_time);
        return Some((at(day, time)?, used));
    }
    // A day word, with a time glued on (`周五17:00`) or in the next word.
    if let Some((day, rest)) = day_prefix(&first, today) {
        let day = match day {
            DayWord::Date(d) => d,
            DayWord::Weekday(wd) => {
                // Today counts while the time is still ahead.
                let (time, _) = time_after(words, 1, rest, default_time);
                let mut d = today;
                while d.weekday() != wd || at(d, time).is_none_or(|t| t <= now) {
                    d = d.succ_opt()?;
                    if (d - today).num_days() > 7 {
                        break;
                    }
                }
                d
            }
        };
        let (time, used) = time_after(words, 1, rest, default_time);
        if !rest.is_empty() && used == 1 && parse_time(rest).is_none() {
            // Something glued on that is not a time: not a date word after all.
            return None;
        }
        return Some((at(day, time)?, used));
    }
    // A time alone: today, or tomorrow once passed.
    let time = parse_time(&first)?;
    let today_at = at(today, time)?;
    if today_at > now {
        Some((today_at, 1))
    } else {
        Some((at(today.succ_opt()?, time)?, 1))
    }
}

/// A due date from an event payload: RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]` (also with
/// `T`) in `tz`; a date alone means `default_time` that day.
pub fn parse_due(raw: &str, tz: Tz, default_time: NaiveTime) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, f) {
            return local(tz, naive);
        }
    }
    let day = parse_date(raw)?;
    local(tz, day.and_time(default_time))
}

/// The instant of a local wall time; in a DST gap, an hour later; when doubled, the first.
fn local(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

enum DayWord {
    Date(NaiveDate),
    Weekday(chrono::Weekday),
}

/// A day word at the start of `word`, and what follows it in the same word.
fn day_prefix(word: &str, today: NaiveDate) -> Option<(DayWord, &str)> {
    let plus = |n: i64| today.checked_add_signed(Duration::days(n));
    for (w, n) in [
        ("today", 0),
        ("tomorrow", 1),
        ("今天", 0),
        ("明天", 1),
        ("后天", 2),
    ] {
        if let Some(rest) = word.strip_prefix(w) {
            return Some((DayWord::Date(plus(n)?), rest));
        }
    }
    if let Some(rest) = word
        .strip_prefix("下周")
        .or_else(|| word.strip_prefix("下星期"))
    {
        let (wd, rest) = chinese_weekday(rest)?;
        return Some((DayWord::Date(next_week(today, wd)), rest));
    }
    for p in ["周", "星期", "礼拜"] {
        if let Some(rest) = word.strip_prefix(p) {
            let (wd, rest) = chinese_weekday(rest)?;
            return Some((DayWord::Weekday(wd), rest));
        }
    }
    if let Some(wd) = weekday(word) {
        return Some((DayWord::Weekday(wd), ""));
    }
    if let Some(d) = parse_date(word) {
        return Some((DayWord::Date(d), ""));
    }
    // `12月1日` (this year, or next once passed), maybe with a time glued on.
    if let Some((m, rest)) = word.split_once('月') {
        let (d, rest) = rest.split_once('日').or_else(|| rest.split_once('号'))?;
        let (m, d): (u32, u32) = (m.parse().ok()?, d.parse().ok()?);
        let this = NaiveDate::from_ymd_opt(today.year(), m, d)?;
        let day = if this < today {
            NaiveDate::from_ymd_opt(today.year() + 1, m, d)?
        } else {
            this
        };
        return Some((DayWord::Date(day), rest));
    }
    None
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%Y/%m/%d"))
        .ok()
}

/// The time glued on (`rest`) or in `words[index]`, and how many words were used in all.
fn time_after(
    words: &[String],
    index: usize,
    rest: &str,
    default: NaiveTime,
) -> (NaiveTime, usize) {
    if !rest.is_empty() {
        return (parse_time(rest).unwrap_or(default), index);
    }
    match words.get(index).and_then(|w| parse_time(&w.to_lowercase())) {
        Some(t) => (t, index + 1),
        None => (default, index),
    }
}

/// `17:00`, `9:30`, `5pm`, `5:30pm`, `17点`, `3点半`, `下午3点`, `上午9点`.
fn parse_time(s: &str) -> Option<NaiveTime> {
    let s = s.trim();
    let (pm, s) = if let Some(r) = s.strip_prefix("下午").or_else(|| s.strip_prefix("晚上")) {
        (Some(true), r)
    } else if let Some(r) = s.strip_prefix("上午").or_else(|| s.strip_prefix("早上")) {
        (Some(false), r)
    } else if let Some(r) = s.strip_suffix("pm") {
        (Some(true), r)
    } else if let Some(r) = s.strip_suffix("am") {
        (Some(false), r)
    } else {
        (None, s)
    };
    let (h, m) = if let Some(r) = s.strip_suffix("点半") {
        (r.parse::<u32>().ok()?, 30)
    } else if let Some(r) = s.strip_suffix('点') {
        (r.parse::<u32>().ok()?, 0)
    } else if let Some((h, m)) = s.split_once(':') {
        if m.len() != 2 {
            return None;
        }
        (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)
    } else if pm.is_some() {
        (s.parse::<u32>().ok()?, 0)
    } else {
        return None;
    };
    let h = match pm {
        Some(true) if (1..12).contains(&h) => h + 12,
        Some(false) if h == 12 => 0,
        Some(_) if h > 12 => return None,
        _ => h,
    };
    NaiveTime::from_hms_opt(h, m, 0)
}

fn weekday(s: &str) -> Option<chrono::Weekday> {
    use chrono::Weekday::*;
    Some(match s {
        "monday" | "mon" => Mon,
        "tuesday" | "tue" | "tues" => Tue,
        "wednesday" | "wed" => Wed,
        "thursday" | "thu" | "thur" | "thurs" => Thu,
        "friday" | "fri" => Fri,
        "saturday" | "sat" => Sat,
        "sunday" | "sun" => Sun,
        _ => return None,
    })
}

/// `一` … `六`, `日`/`天` at the start of `s`, and the rest.
fn chinese_weekday(s: &str) -> Option<(chrono::Weekday, &str)> {
    use chrono::Weekday::*;
    let c = s.chars().next()?;
    let wd = match c {
        '一' | '1' => Mon,
        '二' | '2' => Tue,
        '三' | '3' => Wed,
        '四' | '4' => Thu,
        '五' | '5' => Fri,
        '六' | '6' => Sat,
        '日' | '天' | '7' => Sun,
        _ => return None,
    };
    Some((wd, &s[c.len_utf8()..]))
}

/// That weekday in the week after `today`'s (weeks start on Monday).
fn next_week(today: NaiveDate, wd: chrono::Weekday) -> NaiveDate {
    let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
    monday + Duration::days(7 + i64::from(wd.num_days_from_monday()))
}

fn unit_duration(unit: &str, n: i64) -> Option<Duration> {
    Some(match unit {
        "day" | "days" | "d" => Duration::days(n),
        "hour" | "hours" | "h" | "hr" | "hrs" => Duration::hours(n),
        "minute" | "minutes" | "min" | "mins" | "m" => Duration::minutes(n),
        "week" | "weeks" | "w" => Duration::weeks(n),
        _ => return None,
    })
}

/// `3d`, `2h`, `30m`, `1w`.
fn compact_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = s[..split].parse().ok().filter(|n| *n > 0 && *n <= 3650)?;
    unit_duration(&s[split..], n)
}

/// `3天后`, `2小时后`, `30分钟后`, `1周后`.
fn chinese_relative(s: &str) -> Option<Duration> {
    let s = s.strip_suffix('后')?;
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: i64 = s[..split].parse().ok().filter(|n| *n > 0 && *n <= 3650)?;
    Some(match &s[split..] {
        "天" => Duration::days(n),
        "小时" | "个小时" => Duration::hours(n),
        "分钟" => Duration::minutes(n),
        "周" | "星期" => Duration::weeks(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TZ: Tz = chrono_tz::Asia::Shanghai;

    fn nine() -> NaiveTime {
        NaiveTime::from_hms_opt(9, 0, 0).unwrap()
    }

    /// Saturday 2026-11-21 10:00 in Shanghai.
    fn now() -> DateTime<Utc> {
        local(
            TZ,
            NaiveDate::from_ymd_opt(2026, 11, 21)
                .unwrap()
                .and_hms_opt(10, 0, 0)
                .unwrap(),
        )
        .unwrap()
    }

    fn when(text: &str) -> Option<(String, usize)> {
        let words: Vec<String> = text.split_whitespace().map(String::from).collect();
        parse_when(&words, now(), TZ, nine())
            .map(|(t, n)| (t.with_timezone(&TZ).format("%Y-%m-%d %H:%M").to_string(), n))
    }

    fn at(s: &str, used: usize) -> Option<(String, usize)> {
        Some((s.to_string(), used))
    }

    #[test]
    fn the_documented_forms() {
        assert_eq!(when("tomorrow 17:00 send it"), at("2026-11-22 17:00", 2));
        assert_eq!(when("tomorrow send it"), at("2026-11-22 09:00", 1));
        assert_eq!(when("2026-12-01 budget"), at("2026-12-01 09:00", 1));
        assert_eq!(when("2026/12/01 14:30 x"), at("2026-12-01 14:30", 2));
        assert_eq!(when("in 3 days x"), at("2026-11-24 10:00", 3));
        assert_eq!(when("in 2h x"), at("2026-11-21 12:00", 2));
        assert_eq!(when("in 30 minutes"), at("2026-11-21 10:30", 3));
        // 2026-11-21 is a Saturday: 周五 is the coming Friday.
        assert_eq!(when("周五 提交预算"), at("2026-11-27 09:00", 1));
        assert_eq!(when("周五17:00 提交"), at("2026-11-27 17:00", 1));
        assert_eq!(when("friday 5pm x"), at("2026-11-27 17:00", 2));
        assert_eq!(when("星期一 x"), at("2026-11-23 09:00", 1));
        assert_eq!(when("下周一 x"), at("2026-11-23 09:00", 1));
        assert_eq!(when("next saturday x"), at("2026-11-28 09:00", 2));
        assert_eq!(when("明天 下午3点 x"), at("2026-11-22 15:00", 2));
        assert_eq!(when("明天9点半 x"), at("2026-11-22 09:30", 1));
        assert_eq!(when("后天 x"), at("2026-11-23 09:00", 1));
        assert_eq!(when("3天后 x"), at("2026-11-24 10:00", 1));
        assert_eq!(when("12月1日 x"), at("2026-12-01 09:00", 1));
        assert_eq!(when("11月1日 x"), at("2027-11-01 09:00", 1));
    }

    #[test]
    fn weekdays_and_times_count_today_while_ahead() {
        // Saturday 10:00: "saturday 17:00" is today; "saturday 08:00" is next week.
        assert_eq!(when("saturday 17:00 x"), at("2026-11-21 17:00", 2));
        assert_eq!(when("saturday 08:00 x"), at("2026-11-28 08:00", 2));
        assert_eq!(when("17:00 x"), at("2026-11-21 17:00", 1));
        assert_eq!(when("08:00 x"), at("2026-11-22 08:00", 1));
    }

    #[test]
    fn what_is_not_a_time() {
        for text in [
            "budget",
            "in",
            "in x days",
            "in 3 parsecs",
            "周八",
            "2026-13-01",
            "25:00",
            "明天abc",
            "",
        ] {
            assert_eq!(when(text), None, "{text:?}");
        }
    }

    #[test]
    fn due_dates_from_payloads() {
        let d = |s| {
            parse_due(s, TZ, nine())
                .map(|t| t.with_timezone(&TZ).format("%Y-%m-%d %H:%M").to_string())
        };
        assert_eq!(
            d("2026-12-01T08:00:00Z").as_deref(),
            Some("2026-12-01 16:00")
        );
        assert_eq!(d("2026-12-01").as_deref(), Some("2026-12-01 09:00"));
        assert_eq!(d("2026-12-01 17:30").as_deref(), Some("2026-12-01 17:30"));
        assert_eq!(
            d("2026-12-01T17:30:00").as_deref(),
            Some("2026-12-01 17:30")
        );
        assert_eq!(d("next week"), None);
    }
}
