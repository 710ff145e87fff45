//! `${VAR}`, `${VAR:-default}` and `${VAR:?message}` in config strings, and `Secret`,
//! a string that never prints.
//!
//! Expansion happens inside deserialization, so an unset variable is reported at the
//! line and column of the string that names it. `$$` is a literal `$`. Expanded values
//! may not contain newlines (a value cannot smuggle extra config lines; after vector's
//! `src/config/vars.rs`).

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("environment variable {name} is required: {message}")]
    Required { name: String, message: String },
    #[error("environment variable {0} contains a newline")]
    Newline(String),
    #[error("unclosed `${{` in {0:?}")]
    Unclosed(String),
    #[error("bad variable name {0:?} (letters, digits and _ only)")]
    BadName(String),
}

/// Expand variables in `input`, reading them with `lookup`.
pub fn expand_with(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, EnvError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(inner_and_tail) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(close) = inner_and_tail.find('}') else {
            return Err(EnvError::Unclosed(input.to_string()));
        };
        let inner = &inner_and_tail[..close];
        rest = &inner_and_tail[close + 1..];
        let (name, op) = match inner.find(":-").or_else(|| inner.find(":?")) {
            Some(i) => (&inner[..i], Some((&inner[i..i + 2], &inner[i + 2..]))),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(EnvError::BadName(name.to_string()));
        }
        let value = lookup(name).filter(|v| !v.is_empty());
        let value = match (value, op) {
            (Some(v), _) => v,
            (None, Some((":-", default))) => default.to_string(),
            (None, Some((_, message))) => {
                return Err(EnvError::Required {
                    name: name.to_string(),
                    message: message.to_string(),
                });
            }
            (None, None) => return Err(EnvError::Unset(name.to_string())),
        };
        if value.contains('\n') || value.contains('\r') {
            return Err(EnvError::Newline(name.to_string()));
        }
        out.push_str(&value);
    }
    out.push_str(rest);
    Ok(out)
}

/// Expand variables from the process environment.
pub fn expand(input: &str) -> Result<String, EnvError> {
    expand_with(input, |name| std::env::var(name).ok())
}

/// A config string with `${VAR}` expanded.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct EnvString(pub String);

impl std::fmt::Debug for EnvString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Deref for EnvString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw)
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

/// A secret from the config (`${ENV}` expanded). Debug and Display print `***`; use
/// `expose()` only where the value is needed (signing, auth headers).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(SecretString::from(s.into()))
    }
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The JSON Schema of a `${VAR}`-expanded config string: any string.
fn env_string_schema(description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "description": description,
    })
}

impl schemars::JsonSchema for EnvString {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvString".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        env_string_schema(
            "A string; `${VAR}`, `${VAR:-default}` and `${VAR:?message}` are read from the environment, `$$` is a literal `$`.",
        )
    }
}

impl schemars::JsonSchema for Secret {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        env_string_schema(
            "A secret string, never printed; write `\"${VAR}\"` to read it from the environment (`${VAR:-default}`, `${VAR:?message}`; `$$` is a literal `$`).",
        )
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw)
            .map(Secret::new)
            .map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            "NL" => Some("x\ny".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_forms() {
        assert_eq!(expand_with("x ${A} y", env).unwrap(), "x alpha y");
        assert_eq!(expand_with("${B:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_with("${EMPTY:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_with("cost $$5 $x", env).unwrap(), "cost $5 $x");
        assert_eq!(expand_with("${B:-}", env).unwrap(), "");
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(expand_with("${B}", env), Err(EnvError::Unset("B".into())));
        assert_eq!(
            expand_with("${B:?set the app secret}", env),
            Err(EnvError::Required {
                name: "B".into(),
                message: "set the app secret".into()
            })
        );
        assert_eq!(
            expand_with("${NL}", env),
            Err(EnvError::Newline("NL".into()))
        );
        assert!(matches!(
            expand_with("${A", env),
            Err(EnvError::Unclosed(_))
        ));
        assert!(matches!(
            expand_with("${A B}", env),
            Err(EnvError::BadName(_))
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
