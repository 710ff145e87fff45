//! The console's Bots page data, `GET /api/bots`: each bot's kind, its config with every
//! secret value as `***`, the routes that reach it, and what it did since start (events
//! handled, failures, last error; `crate::health::BotActivity`).
//!
//! For bots that keep items (`reminders`): `GET /api/bots/<name>/items` lists the open
//! ones (owner, due, next step), and `POST /api/bots/<name>/items/<id>/press
//! {action, client_id}` presses one of the item's buttons from the page. A press is a
//! card click like one on the chat: a `card_action` event journaled from connector
//! `console`, sent by the signed-in person (never a name the browser makes up), checked
//! by `[[permissions]]` and the bot's own owner rule, and deduplicated by the page's
//! `client_id`, so pressing twice (a double click, a retried request) does one thing.

use super::ApiError;
use super::console::CONSOLE_CONNECTOR;
use crate::auth::Viewer;
use crate::bots::OpenItem;
use crate::config::RouteConfig;
use crate::event::{CardAction, Event, EventKind, Person};
use crate::runtime::Shared;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
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
        super::api::NotAdmin,
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

/// The open items of bot `name`, read now from its state.
async fn items_of(s: &Shared, name: &str) -> Result<Vec<OpenItem>, ApiError> {
    let bot = s
        .bots
        .get(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no bot named `{name}`")))?;
    match bot.open_items(s.store.as_ref(), s.clock.now()).await {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("bot `{name}` keeps no items (only `reminders` bots do)"),
        )),
        Some(Err(e)) => Err(ApiError::internal("reading the bot's items", e)),
        Some(Ok(items)) => Ok(items),
    }
}

/// `GET /api/bots/<name>/items`: the bot's open items, soonest due first.
#[utoipa::path(
    get,
    path = "/bots/{name}/items",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "A bot's name (a bot that keeps items, e.g. `reminders`)")),
    responses(
        (status = 200, description = "`{\"bot\": name, \"items\": [...]}`: open items with owner, due, next step and the buttons that apply", body = Object),
        super::api::NotAdmin,
        (status = 404, description = "no such bot, or a bot that keeps no items", body = super::openapi::ErrorBody),
    )
)]
pub async fn items(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let items = items_of(&s, &name).await?;
    Ok(Json(json!({ "bot": name, "items": items })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Press {
    /// One of the item's `actions` (`done`, `snooze`).
    action: String,
    /// Made by the page once per button shown: the same press sent again is one press.
    client_id: String,
    /// Dev mode only: who presses. Signed in, the server knows.
    #[serde(default, rename = "as")]
    as_person: Option<String>,
}

/// `POST /api/bots/<name>/items/<id>/press`: press one of an open item's buttons as the
/// signed-in person. Answers the bot's toast when it answers within the click window.
#[utoipa::path(
    post,
    path = "/bots/{name}/items/{id}/press",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The bot's name"),
        ("id" = String, Path, description = "The item's id"),
    ),
    request_body(content = Press, content_type = "application/json"),
    responses(
        (status = 200, description = "`{event_id, duplicate, answer}`: the press as a journaled card click, and the bot's answer if it came within the click window", body = Object),
        (status = 400, description = "a malformed body or an action the item does not offer", body = super::openapi::ErrorBody),
        (status = 401, description = "not signed in", body = super::openapi::ErrorBody),
        (status = 403, description = "a missing CSRF token, or a person the rules do not allow", body = super::openapi::ErrorBody),
        (status = 404, description = "no such bot or item", body = super::openapi::ErrorBody),
    )
)]
pub async fn press(
    State(s): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path((name, id)): Path<(String, String)>,
    body: Result<Json<Press>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(press) = body?;
    let person = crate::auth::routes::author_of(&viewer, press.as_person.as_deref())?;
    crate::auth::check_user_name(&person)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("`as`: {e}")))?;
    let client_id = press.client_id.trim();
    if client_id.is_empty() || client_id.len() > 100 || client_id.contains(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "`client_id` must be 1 to 100 characters",
        ));
    }
    // The same press again (a retried request after the item changed): its first answer.
    let press_key = format!("press/{name}/{person}/{client_id}");
    let pressed = s
        .store
        .kv_get(CONSOLE_CONNECTOR, &press_key)
        .await
        .map_err(|e| ApiError::internal("store error", e))?;
    if let Some(id) = pressed
        .and_then(|raw| serde_json::from_slice::<PressRecord>(&raw).ok())
        .and_then(|r| r.event_id.parse().ok())
        .map(crate::event::EventId)
    {
        return Ok(answer(&s, id, true).await);
    }
    // The button is one perch offers for this item, never what the browser makes up.
    let items = items_of(&s, &name).await?;
    let item = items.iter().find(|i| i.id == id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("bot `{name}` has no open item `{id}` (done, or never opened)"),
        )
    })?;
    if !item.actions.contains(&press.action) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "item `{id}` has no `{}` button (it has: {})",
                press.action,
                item.actions.join(", ")
            ),
        ));
    }
    let mut event = Event::new(CONSOLE_CONNECTOR, EventKind::CardAction, s.clock.now());
    event.sender = Some(Person {
        id: person.clone(),
        name: Some(person.clone()),
    });
    event.card_action = Some(CardAction {
        bot: name.clone(),
        action: press.action.clone(),
        args: json!({ "id": id }),
        message_id: None,
    });
    // Per person: one person's page cannot replay (or block) another's press.
    event.external_id = Some(format!("{person}/{client_id}"));
    event.payload = json!({ "from": "console bots page" });
    let accepted = s
        .journal
        .accept(vec![event])
        .await
        .map_err(|e| super::journal_error(CONSOLE_CONNECTOR, e))?;
    let first = accepted
        .first()
        .ok_or_else(|| ApiError::internal("journal", "the journal returned nothing"))?;
    let record = PressRecord {
        event_id: first.id().to_string(),
        at: s.clock.now(),
    };
    let raw = serde_json::to_vec(&record).map_err(|e| ApiError::internal("encoding", e))?;
    s.store
        .kv_put(CONSOLE_CONNECTOR, &press_key, &raw)
        .await
        .map_err(|e| ApiError::internal("store error", e))?;
    let duplicate = matches!(first, crate::journal::Accepted::Duplicate(_));
    Ok(answer(&s, first.id(), duplicate).await)
}

/// A press remembered (store namespace `console`, `press/<bot>/<person>/<client id>`),
/// so the same press sent again gets its first answer; kept as long as the journal's
/// dedupe keys (`sweep_presses`).
#[derive(Serialize, Deserialize)]
struct PressRecord {
    event_id: String,
    at: chrono::DateTime<chrono::Utc>,
}

/// Forget presses remembered before `before` (the upkeep task calls this with the
/// dedupe window's start). Returns how many were forgotten.
pub async fn sweep_presses(
    store: &dyn crate::store::Store,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<usize, crate::store::StoreError> {
    let mut forgotten = 0;
    for (key, raw) in store.kv_scan(CONSOLE_CONNECTOR, "press/").await? {
        let old = serde_json::from_slice::<PressRecord>(&raw).map_or(true, |r| r.at < before);
        if old {
            store.kv_delete(CONSOLE_CONNECTOR, &key).await?;
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

/// The answer to a press: the bot's toast once it answered (within the click window).
async fn answer(s: &Shared, id: crate::event::EventId, duplicate: bool) -> Json<Value> {
    let answer = s.clicks.answer(id, s.click_answer_window).await;
    Json(json!({
        "event_id": id.to_string(),
        "duplicate": duplicate,
        "answered": answer.is_some(),
        "toast": answer.as_ref().and_then(|a| a.toast.as_ref()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn presses_older_than_the_cut_are_forgotten() {
        use crate::store::Store;
        let store = crate::store::SledStore::temporary().unwrap();
        let now = chrono::Utc::now();
        for (key, at) in [
            ("press/b/ann/1", now - chrono::Duration::hours(9)),
            ("press/b/ann/2", now),
        ] {
            let raw = serde_json::to_vec(&PressRecord {
                event_id: "x".into(),
                at,
            })
            .unwrap();
            store.kv_put(CONSOLE_CONNECTOR, key, &raw).await.unwrap();
        }
        let n = sweep_presses(&store, now - chrono::Duration::hours(8))
            .await
            .unwrap();
        assert_eq!(n, 1);
        let left = store.kv_scan(CONSOLE_CONNECTOR, "press/").await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, "press/b/ann/2");
    }

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
