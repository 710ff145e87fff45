//! Template helpers and the JSON escaper: what makes card templates JSON-safe and
//! pleasant to write.
//!
//! Every `{{value}}` goes through `escape_json`, which produces JSON *string content*:
//! quotes, backslashes and control characters are escaped, and so are `<`, `>` and `&`
//! (as `\u003c`…) so `</script>` can never appear in a rendered card, plus U+2028/2029.
//! A person's text therefore cannot end a string early or add a field. To embed a whole
//! value (a number, an object, a list) outside a string, use `{{json x}}`.
//!
//! Helpers (all values they return are escaped like any `{{value}}`):
//! - `{{json x}}` — `x` as JSON (not escaped again; `<>&` as `\u003c`…).
//! - `{{date x "%a %d %b %H:%M" tz="Asia/Shanghai"}}` — `x` is RFC 3339 text, a
//!   `YYYY-MM-DD` date, or Unix seconds; format is chrono's strftime (default
//!   `%Y-%m-%d %H:%M`); `tz` an IANA zone (default UTC).
//! - `{{number x decimals=2}}` — thousands separators; decimals default to 0 for whole
//!   numbers and 2 otherwise. Numeric strings are accepted.
//! - `{{percent_change now before decimals=1}}` — `▲ 3.2%` / `▼ 1.0%` / `= 0.0%`;
//!   `—` when `before` is 0. With one argument, that argument is already a percentage.
//! - `{{default x "fallback"}}` — `x` unless missing, null or empty text.
//! - `{{pluralize n "day" "days"}}` — `1 day`, `3 days` (plural defaults to singular+s).
//! - `{{truncate s 40}}` — at most 40 characters, ending in `…` when cut.
//! - `{{abs n}}` — the absolute value (for "overdue by {{pluralize (abs days) "day"}}").
//! - Built in: `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `and`, `or`, `not`, `len`, `if`,
//!   `unless`, `each`, `with`, `lookup`.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;

/// Escape `s` as the content of a JSON string (without the surrounding quotes).
pub fn escape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// `v` as JSON text that is safe inside an HTML `<script>` too.
pub fn json_text(v: &Value) -> String {
    let s = v.to_string();
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Register the escaper and all helpers.
pub fn register(hb: &mut Handlebars<'static>) {
    hb.register_escape_fn(escape_json);
    hb.register_helper("json", Box::new(JsonHelper));
    hb.register_helper("date", Box::new(ValueHelper("date", date)));
    hb.register_helper("number", Box::new(ValueHelper("number", number)));
    hb.register_helper(
        "percent_change",
        Box::new(ValueHelper("percent_change", percent_change)),
    );
    hb.register_helper("default", Box::new(ValueHelper("default", default)));
    hb.register_helper("tr", Box::new(TranslateHelper));
    hb.register_helper("pluralize", Box::new(ValueHelper("pluralize", pluralize)));
    hb.register_helper("truncate", Box::new(ValueHelper("truncate", truncate)));
    hb.register_helper("abs", Box::new(ValueHelper("abs", abs)));
}

fn fail(helper: &str, msg: impl std::fmt::Display) -> RenderError {
    RenderErrorReason::Other(format!("`{helper}`: {msg}")).into()
}

/// The `i`th parameter; in strict mode a missing variable is an error naming it.
fn param<'a>(h: &'a Helper<'_>, i: usize, strict: bool) -> Result<&'a Value, String> {
    match h.param(i) {
        None => Err(format!("needs at least {} argument(s)", i + 1)),
        Some(p) if strict && p.is_value_missing() => Err(format!(
            "`{}` is missing (strict mode)",
            p.relative_path().map_or("?", String::as_str)
        )),
        Some(p) => Ok(p.value()),
    }
}

fn hash_u64(h: &Helper<'_>, key: &str) -> Result<Option<u64>, String> {
    match h.hash_get(key).map(|p| p.value()) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_f64(v)
            .filter(|n| *n >= 0.0 && n.fract() == 0.0)
            .map(|n| Some(n as u64))
            .ok_or_else(|| format!("`{key}` must be a whole number, got {v}")),
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', "").parse().ok(),
        _ => None,
    }
}

type HelperFn = fn(&Helper<'_>, bool) -> Result<Value, String>;

/// A helper that computes a value (usable as `{{h x}}` and as a subexpression `(h x)`).
struct ValueHelper(&'static str, HelperFn);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.1)(h, r.strict_mode())
            .map(ScopedJson::Derived)
            .map_err(|m| fail(self.0, m))
    }
}

/// `{{tr "card.due"}}`: a built-in text (`locales/`) in the card's language, the data's
/// `_locale` (set by `BotContext::card`; English without it). Hash arguments fill the
/// text's `%{name}`s; `count=n` picks the key's `.one` or `.other` form.
struct TranslateHelper;

impl HelperDef for TranslateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let key = match param(h, 0, r.strict_mode()).map_err(|m| fail("tr", m))? {
            Value::String(k) => k.clone(),
            other => return Err(fail("tr", format!("the key must be text, got {other}"))),
        };
        let locale = ctx.data()["_locale"].as_str().unwrap_or("en");
        let key = match h.hash_get("count").map(|c| c.value()) {
            Some(n) => format!(
                "{key}.{}",
                if as_f64(n) == Some(1.0) {
                    "one"
                } else {
                    "other"
                }
            ),
            None => key,
        };
        if crate::_rust_i18n_try_translate("en", &key).is_none() {
            return Err(fail("tr", format!("no text {key:?} in locales/")));
        }
        let mut text = rust_i18n::t!(&key, locale = locale).into_owned();
        for (name, value) in h.hash() {
            let shown = match value.value() {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text = text.replace(&format!("%{{{name}}}"), &shown);
        }
        Ok(ScopedJson::Derived(Value::String(text)))
    }
}

/// `{{json x}}`: writes JSON text unescaped (it is JSON already, with `<>&` escaped).
struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        param(h, 0, r.strict_mode())
            .map(|v| ScopedJson::Derived(v.clone()))
            .map_err(|m| fail("json", m))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let v = param(h, 0, r.strict_mode()).map_err(|m| fail("json", m))?;
        out.write(&json_text(v)).map_err(|e| fail("json", e))
    }
}

fn date(h: &Helper<'_>, strict: bool) -> Result<Value, String> {
    let v = param(h, 0, strict)?;
    let format = match h.param(1).map(|p| p.value()) {
        None => "%Y-%m-%d %H:%M",
        Some(Value::String(f)) => f.as_str(),
        Some(other) => return Err(format!("the format must be text, got {other}")),
    };
    let tz: chrono_tz::Tz = match h.hash_get("tz").map(|p| p.value()) {
        None | Some(Value::Null) => chrono_tz::UTC,
        Some(Value::String(name)) => name.parse().map_err(|_| {
            format!("unknown time zone {name:?} (use an IANA name like \"Asia/Shanghai\")")
        })?,
        Some(other) => return Err(format!("`tz` must be text, got {other}")),
    };
    let instant: DateTime<Utc> = match v {
        Value::Number(n) => {
            let secs = n
                .as_i64()
                .ok_or_else(|| format!("{n} is not whole Unix seconds"))?;
            Utc.timestamp_opt(secs, 0)
                .single()
                .ok_or_else(|| format!("{secs} is out of range"))?
        }
        Value::String(s) => {
            if let Ok(d) = DateTime::parse_from_rfc3339(s.trim()) {
                d.with_timezone(&Utc)
            } else if let Ok(d) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
                // A plain date is a calendar day: format it as is, without shifting zones.
                let naive = d.and_hms_opt(0, 0, 0).ok_or("bad date")?;
                return written(naive.format(format), format).map(Value::String);
            } else {
                return Err(format!(
                    "cannot read {s:?} as a date (RFC 3339 like 2026-11-21T09:00:00Z, or 2026-11-21)"
                ));
            }
        }
        other => return Err(format!("expected a date, got {other}")),
    };
    // Zoned, so `%z`, `%:z` and `%Z` name the zone (cards label their times with it).
    written(instant.with_timezone(&tz).format(format), format).map(Value::String)
}

/// A chrono format written out; a bad format string is an error, not a panic.
fn written(formatted: impl std::fmt::Display, format: &str) -> Result<String, String> {
    use std::fmt::Write;
    let mut s = String::new();
    write!(s, "{formatted}").map_err(|_| format!("bad date format {format:?}"))?;
    Ok(s)
}

/// `n` with `,` between thousands and exactly `decimals` decimals.
pub fn format_number(n: f64, decimals: usize) -> String {
    let fixed = format!("{:.*}", decimals, n.abs());
    let (int, frac) = match fixed.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (fixed, None),
    };
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let negative = n < 0.0 && fixed_is_nonzero(&grouped, frac.as_deref());
    format!(
        "{}{}{}",
        if negative { "-" } else { "" },
        grouped,
        frac.map(|f| format!(".{f}")).unwrap_or_default()
    )
}

fn fixed_is_nonzero(int: &str, frac: Option<&str>) -> bool {
    int.chars()
        .chain(frac.unwrap_or("").chars())
        .any(|c| c.is_ascii_digit() && c != '0')
}

fn number(h: &Helper<'_>, strict: bool) -> Result<Value, String> {
    let v = param(h, 0, strict)?;
    let n = as_f64(v).ok_or_else(|| format!("expected a number, got {v}"))?;
    let decimals = match hash_u64(h, "decimals")? {
        Some(d) => d.min(10) as usize,
        None if n.fract() == 0.0 => 0,
        None => 2,
    };
    Ok(Value::String(format_number(n, decimals)))
}

/// `▲ 3.2%`, `▼ 1.0%`, `= 0.0%` for a change in percent.
pub fn format_change(pct: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, pct.abs());
    let zero = !text.chars().any(|c| c.is_ascii_digit() && c != '0');
    let sign = if zero {
        "="
    } else if pct > 0.0 {
        "▲"
    } else {
        "▼"
    };
    format!("{sign} {text}%")
}

fn percent_change(h: &Helper<'_>, strict: bool) -> Result<Value, String> {
    let decimals = hash_u64(h, "decimals")?.unwrap_or(1).min(6) as usize;
    let now = param(h, 0, strict)?;
    let now = as_f64(now).ok_or_else(|| format!("expected a number, got {now}"))?;
    if h.param(1).is_none() {
        return Ok(Value::String(format_change(now, decimals)));
    }
    let before = param(h, 1, strict)?;
    let before = as_f64(before).ok_or_else(|| format!("expected a number, got {before}"))?;
    if before == 0.0 {
        return Ok(Value::String("—".into()));
    }
    Ok(Value::String(format_change(
        (now - before) / before.abs() * 100.0,
        decimals,
    )))
}

fn default(h: &Helper<'_>, _strict: bool) -> Result<Value, String> {
    // Never strict about its first argument: being missing is the point.
    let v = h.param(0).ok_or("needs a value and a fallback")?;
    let fallback = h.param(1).ok_or("needs a value and a fallback")?.value();
    let empty = v.is_value_missing()
        || matches!(v.value(), Value::Null)
        || v.value().as_str().is_some_and(str::is_empty);
    Ok(if empty {
        fallback.clone()
    } else {
        v.value().clone()
    })
}

fn pluralize(h: &Helper<'_>, strict: bool) -> Result<Value, String> {
    let n = param(h, 0, strict)?;
    let count = as_f64(n).ok_or_else(|| format!("expected a count, got {n}"))?;
    let singular = match param(h, 1, strict)? {
        Value::String(s) => s.clone(),
        other => return Err(format!("the word must be text, got {other}")),
    };
    let plural = match h.param(2).map(|p| p.value()) {
        Some(Value::String(s)) => s.clone(),
        _ => format!("{singular}s"),
    };
    let shown = if count.fract() == 0.0 {
        format!("{}", count as i64)
    } else {
        count.to_string()
    };
    Ok(Value::String(format!(
        "{shown} {}",
        if count == 1.0 { singular } else { plural }
    )))
}

fn truncate(h: &Helper<'_>, strict: bool) -> Result<Value, String> {
    let s = match param(h, 0, strict)? {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let max = param(h, 1, strict)?;
    let max = as_f64(max)
        .filter(|n| *n >= 1.0)
        .ok_or_else(|| format!("the length must be a positive number, got {max}"))?;
    Ok(Value::String(super::model::truncate_chars(
        &s,
        max as usize,
    )))
}

fn abs(h: &Helper<'_>, strict: bool) -> Result<Value, String> {
    let v = param(h, 0, strict)?;
    match v {
        Value::Number(n) if n.is_i64() => Ok(Value::from(n.as_i64().unwrap_or(0).unsigned_abs())),
        _ => as_f64(v)
            .map(|n| Value::from(n.abs()))
            .ok_or_else(|| format!("expected a number, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hb() -> Handlebars<'static> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        register(&mut hb);
        hb
    }

    fn r(t: &str, data: Value) -> String {
        hb().render_template(t, &data).unwrap()
    }

    #[test]
    fn tr_gives_the_cards_language_with_counts_and_values() {
        assert_eq!(r("{{tr \"card.due\"}}", json!({})), "Due");
        assert_eq!(
            r("{{tr \"card.due\"}}", json!({ "_locale": "zh-CN" })),
            "截止时间"
        );
        assert_eq!(
            r("{{tr \"card.status_in_days\" count=n}}", json!({ "n": 1 })),
            "in 1 day"
        );
        assert_eq!(
            r("{{tr \"card.status_in_days\" count=n}}", json!({ "n": 3 })),
            "in 3 days"
        );
        assert_eq!(
            r(
                "{{tr \"card.marked_done_by\" who=w}}",
                json!({ "w": "Ann", "_locale": "zh-CN" })
            ),
            "由 Ann 标记完成"
        );
        let e = hb()
            .render_template("{{tr \"card.nope\"}}", &json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no text \"card.nope\""), "{e}");
    }

    #[test]
    fn escaping_is_json_string_content() {
        let nasty = "a\"b\\c\nd</script>&\u{1}\u{2028}";
        let out = r("\"{{x}}\"", json!({ "x": nasty }));
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), nasty);
        assert!(!out.contains("</script>"));
    }

    #[test]
    fn json_helper_embeds_values() {
        let out = r("{{json x}}", json!({ "x": {"a": [1, "</b>"]} }));
        assert_eq!(out, r#"{"a":[1,"\u003c/b\u003e"]}"#);
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"a": [1, "</b>"]})
        );
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(r("{{number x}}", json!({"x": 1234567})), "1,234,567");
        assert_eq!(
            r("{{number x decimals=2}}", json!({"x": -1234.5})),
            "-1,234.50"
        );
        assert_eq!(r("{{number x}}", json!({"x": "999.456"})), "999.46");
        assert_eq!(
            r("{{percent_change a b}}", json!({"a": 103.2, "b": 100})),
            "▲ 3.2%"
        );
        assert_eq!(
            r("{{percent_change a b}}", json!({"a": 99, "b": 100})),
            "▼ 1.0%"
        );
        assert_eq!(r("{{percent_change a b}}", json!({"a": 5, "b": 0})), "—");
        assert_eq!(r("{{percent_change a}}", json!({"a": -0.01})), "= 0.0%");
        assert_eq!(r("{{default a \"n/a\"}}", json!({})), "n/a");
        assert_eq!(r("{{default a \"n/a\"}}", json!({"a": "x"})), "x");
        assert_eq!(r("{{pluralize n \"day\"}}", json!({"n": 1})), "1 day");
        assert_eq!(
            r("{{pluralize n \"person\" \"people\"}}", json!({"n": 3})),
            "3 people"
        );
        assert_eq!(r("{{truncate s 4}}", json!({"s": "abcdef"})), "abc…");
        assert_eq!(r("{{truncate (default s \"none\") 3}}", json!({})), "no…");
        assert_eq!(
            r(
                "{{date t \"%a %d %b %H:%M\" tz=\"Asia/Shanghai\"}}",
                json!({"t": "2026-11-19T01:00:00Z"})
            ),
            "Thu 19 Nov 09:00"
        );
        assert_eq!(
            r("{{date t \"%d/%m\"}}", json!({"t": "2026-11-19"})),
            "19/11"
        );
        assert_eq!(r("{{date t}}", json!({"t": 0})), "1970-01-01 00:00");
        assert_eq!(r("{{#if (gt a 1)}}big{{/if}}", json!({"a": 2})), "big");
    }

    #[test]
    fn helper_errors_are_clear() {
        let e = hb()
            .render_template("{{date t tz=\"Mars/Base\"}}", &json!({"t": 0}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Mars/Base"), "{e}");
        let e = hb()
            .render_template("{{number missing}}", &json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let e = hb()
            .render_template("{{number x}}", &json!({"x": "abc"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a number"), "{e}");
    }
}
