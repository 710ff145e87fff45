//! The console's Bots page data, `GET /api/bots`: each bot's kind, its config with every
//! secret value as `***`, the routes that reach it, and what it did since start (events
//! handled, failures, last error; `crate::health::BotActivity`).

use crate::config::RouteConfig;
use crate::runtime::Shared;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Value, json};

/// What the page shows of one bot's config, fixed at start.
#[derive(Debug, Clone, Serialize)]
pub struct BotOverview {
    pub name: String,
    pub kind: String,
    /// The `[bots.<name>]` table without `kind`, each secret value replaced by `***`.
    pub config: Value,
    /// The `[[routes]]` that name this bot, as configured.
    pub routes: Vec<RouteConfig>,
}

impl BotOverview {
    /// `settings` as JSON with every occurrence of each of `secrets` (the values the
    /// bot holds as secrets, `Bot::secrets`) replaced by `***`, inside longer strings
    /// too (a URL with a token). An `${ENV}` reference is shown as written: it names
    /// where the secret comes from, not the secret.
    pub fn new(
        name: &str,
        kind: &str,
        settings: &toml::Table,
        secrets: &[&str],
        routes: &[RouteConfig],
    ) -> BotOverview {
        let mut config = serde_json::to_value(settings).unwrap_or(Value::Null);
        mask(&mut config, secrets);
        BotOverview {
            name: name.to_string(),
            kind: kind.to_string(),
            config,
            routes: routes
                .iter()
                .filter(|r| r.bots.iter().any(|b| b == name))
                .cloned()
                .collect(),
        }
    }
}

fn mask(value: &mut Value, secrets: &[&str]) {
    match value {
        Value::String(s) => {
            for secret in secrets.iter().filter(|x| !x.is_empty()) {
                if s.contains(secret) {
                    *s = s.replace(secret, crate::connectors::REDACTED);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| mask(v, secrets)),
        _ => {}
    }
}

/// `GET /api/bots`: every bot, by name, with its activity since start.
#[utoipa::path(
    get,
    path = "/bots",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"bots\": [...]}`: every bot with its kind, routes and activity since start", body = Object),
        (status = 401, description = "no admin token and no admin signed in", body = super::openapi::ErrorBody),
    )
)]
pub async fn bots(State(s): State<Shared>) -> Json<Value> {
    let bots: Vec<Value> = s
        .bot_overviews
        .iter()
        .map(|b| {
            json!({
                "name": b.name,
                "kind": b.kind,
                "config": b.config,
                "routes": b.routes,
                "activity": s.bot_activity.of(&b.name),
            })
        })
        .collect();
    Json(json!({ "bots": bots }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_masked_wherever_they_appear() {
        let settings: toml::Table = toml::from_str(
            r#"
url = "https://bot.example/hook?token=tok-123"
secret = "tok-123"
from_env = "${BOT_SECRET}"
nested = { list = ["a", "tok-123"] }
timeout = "5s"
"#,
        )
        .unwrap();
        let o = BotOverview::new("b", "http_bot", &settings, &["tok-123", ""], &[]);
        let text = o.config.to_string();
        assert!(!text.contains("tok-123"), "{text}");
        assert_eq!(o.config["url"], "https://bot.example/hook?token=***");
        assert_eq!(o.config["secret"], "***");
        assert_eq!(o.config["from_env"], "${BOT_SECRET}");
        assert_eq!(o.config["nested"]["list"][1], "***");
        assert_eq!(o.config["timeout"], "5s");
    }
}
