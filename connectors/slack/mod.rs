//! `kind = "slack"`: a Slack app bot over the Events API (HTTP) and the Web API.
//!
//! With `mode = "socket"` the same events and clicks arrive over Socket Mode instead
//! (`socket.rs`: perch connects out, no public URL) and go through the same decoding.
//!
//! Flow: Slack → `POST /hooks/<name>` (Events API and, form-encoded, interactivity;
//! `/hooks/<name>/interactive` also takes interactivity) → **this connector** (verify,
//! decode: `events.rs`) → journal → router → bots → outbox → **this connector**
//! (Web API: `api.rs`).
//!
//! Inbound (refs `../shared/refs/chat-platforms.md` §5):
//! 1. every request, `url_verification` included, must carry `X-Slack-Signature` =
//!    `v0=hex(HMAC-SHA256(signing_secret, "v0:" + X-Slack-Request-Timestamp + ":" +
//!    raw body))`, compared in constant time, and a timestamp within five minutes of
//!    perch's clock (either way); otherwise 401 and nothing is stored. Only
//!    `insecure = true` skips the signature (for local experiments);
//! 2. `url_verification` is answered `{"challenge": …}` without storing anything;
//! 3. `event_callback` envelopes become events whose external id is `event_id`, so a
//!    redelivery (`X-Slack-Retry-Num`, after a slow or failed answer) is a journal
//!    duplicate and is handled once; the answer is an empty 200 as soon as the event
//!    is durable (Slack wants it within 3 s);
//! 4. `block_actions` clicks on perch buttons become `card_action` events for the bot
//!    the button names, acknowledged with an empty 200 as soon as they are durable
//!    (not `Inbound::Click`: Slack's answer carries nothing from the bot, see
//!    `inbound_interaction`). The card changes through the outbox, as the bot's
//!    `Update` (`chat.update` with the channel and the message's `ts`). Slack has no
//!    toast for block actions; a bot's toast is recorded in the event's fate only.
//!
//! Outbound: `chat.postMessage` (text, markdown as mrkdwn, cards as Block Kit with a
//! `text` fallback; `reply_to` → `thread_ts`), `chat.update`, `conversations.create`
//! then `conversations.invite`, `users.lookupByEmail` for e-mail members and targets.
//! **No idempotency key:** `chat.postMessage` has none (refs §5), so a send retried
//! after a lost answer or a crash can post twice; perch's delivered-key record (the
//! outbox marks a key delivered once the platform answered) is what keeps retries of
//! delivered items from repeating.

pub mod api;
pub mod events;
pub mod socket;

use super::*;
use crate::action::{ChatSpec, MessageBody, Target};
use crate::config::{EnvString, Secret};
use api::{ApiClient, ApiError};
use serde_json::{Value, json};

fn default_base_url() -> EnvString {
    EnvString("https://slack.com/api".to_string())
}
fn default_true() -> bool {
    true
}
fn default_chat_rate() -> u32 {
    1
}
fn default_rate_per_minute() -> u32 {
    300
}
fn default_window() -> Duration {
    Duration::from_secs(300)
}

/// How Slack reaches perch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SlackMode {
    /// Events API and interactivity as HTTPS requests to `/hooks/<name>` (a public URL).
    #[default]
    Http,
    /// Socket Mode: perch opens a WebSocket to Slack (`socket.rs`); no public URL.
    Socket,
}

/// `[connectors.<name>] kind = "slack"`: a Slack app with a bot user.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Language of perch's built-in texts for people on this connector: `en` or
    /// `zh-CN` (default: `[server] locale`). A bot's own `locale` wins.
    #[serde(default)]
    pub locale: Option<crate::i18n::Locale>,
    /// `http` (default: Slack posts to `/hooks/<name>`) or `socket` (Socket Mode: perch
    /// connects out; needs `app_token`).
    #[serde(default)]
    pub mode: SlackMode,
    /// App-level token (`xapp-…`, scope `connections:write`), from "Basic Information"
    /// → "App-Level Tokens"; Socket Mode only. Use `${SLACK_APP_TOKEN}`.
    #[serde(default)]
    pub app_token: Option<Secret>,
    /// Bot User OAuth Token (`xoxb-…`), from "OAuth & Permissions" after installing the
    /// app. Use `${SLACK_BOT_TOKEN}`.
    pub bot_token: Secret,
    /// Signing Secret, from "Basic Information" → "App Credentials". Every inbound
    /// request is checked against it. Required unless `insecure = true`.
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    /// Accept unsigned requests (no signing secret). Only for local experiments:
    /// anyone who can reach perch could then post events as Slack.
    #[serde(default)]
    pub insecure: bool,
    /// Web API base URL (a test server in tests).
    #[serde(default = "default_base_url")]
    pub base_url: EnvString,
    /// The app's bot user id (`U…`), to tell "@this app" from "@someone". Optional:
    /// Slack names it in every event envelope (`authorizations`), and an `app_mention`
    /// addresses the app by definition.
    #[serde(default)]
    pub bot_user_id: Option<EnvString>,
    /// Answer a message in its thread (`thread_ts`); `false` answers in the channel.
    #[serde(default = "default_true")]
    pub reply_in_thread: bool,
    /// Create private channels (needs the `groups:write` scope) instead of public ones
    /// (`channels:manage`).
    #[serde(default)]
    pub private_channels: bool,
    /// Messages per second to one channel (Slack: about 1/s per channel for
    /// `chat.postMessage`, refs §5).
    #[serde(default = "default_chat_rate")]
    pub chat_rate_per_second: u32,
    /// Operations per minute across the workspace. \[unverified\] Slack documents a
    /// workspace-wide limit on `chat.postMessage` without a number; 300 is a guess on
    /// the safe side. A 429 with `Retry-After` pauses the connector whatever this says.
    #[serde(default = "default_rate_per_minute")]
    pub rate_per_minute: u32,
    /// Oldest `X-Slack-Request-Timestamp` accepted (Slack's SDKs: five minutes).
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_window",
        deserialize_with = "crate::config::de_duration"
    )]
    pub timestamp_window: Duration,
    /// How far ahead of perch's clock a request's timestamp may be.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(
        default = "default_window",
        deserialize_with = "crate::config::de_duration"
    )]
    pub clock_skew: Duration,
}

impl SlackConfig {
    pub fn validate(&self, name: &str, at: usize, issues: &mut crate::config::Issues) {
        let token = self.bot_token.expose();
        if token.trim().is_empty() {
            issues.at(at, format!("connector `{name}`: bot_token is empty (set it from the environment, e.g. \"${{SLACK_BOT_TOKEN}}\")"));
        } else if !token.starts_with("xoxb-") {
            issues.at(at, format!("connector `{name}`: bot_token is not a bot token (it starts with `xoxb-`; find it under OAuth & Permissions)"));
        }
        let has_secret = self.signing_secret.as_ref().is_some_and(|s| !s.is_empty());
        let app_token = self
            .app_token
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        match self.mode {
            SlackMode::Socket if app_token.trim().is_empty() => issues.at(at, format!("connector `{name}`: mode = \"socket\" needs `app_token` (an xapp-… token with connections:write, under Basic Information → App-Level Tokens)")),
            SlackMode::Socket if !app_token.starts_with("xapp-") => issues.at(at, format!("connector `{name}`: app_token is not an app-level token (it starts with `xapp-`)")),
            SlackMode::Http if !app_token.is_empty() => issues.at(at, format!("connector `{name}`: app_token is only used with mode = \"socket\"")),
            _ => {}
        }
        // Socket Mode needs no signing secret: nothing comes in over HTTP (requests to
        // /hooks/<name> are refused as unsigned unless one is set).
        if !has_secret && !self.insecure && self.mode == SlackMode::Http {
            issues.at(at, format!("connector `{name}`: set `signing_secret` (Basic Information → App Credentials), or `insecure = true` to accept unsigned requests"));
        }
        if has_secret && self.insecure {
            issues.at(at, format!("connector `{name}`: `insecure = true` together with a `signing_secret` is contradictory"));
        }
        match reqwest::Url::parse(&self.base_url) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => issues.at(at, format!("connector `{name}`: base_url {:?} is not an http(s) URL (e.g. https://slack.com/api)", self.base_url.0)),
        }
        for (field, v) in [
            ("chat_rate_per_second", self.chat_rate_per_second),
            ("rate_per_minute", self.rate_per_minute),
        ] {
            if v == 0 {
                issues.at(
                    at,
                    format!("connector `{name}`: {field} must be at least 1"),
                );
            }
        }
        if self.timestamp_window.is_zero() {
            issues.at(at, format!("connector `{name}`: timestamp_window must be longer than 0 s (Slack's SDKs use 5m)"));
        }
    }
}

const SIGNATURE: &str = "X-Slack-Signature";
const TIMESTAMP: &str = "X-Slack-Request-Timestamp";
const RETRY_NUM: &str = "X-Slack-Retry-Num";
const RETRY_REASON: &str = "X-Slack-Retry-Reason";

#[cfg(test)]
/// `v0=` + hex HMAC-SHA256 over `v0:<ts>:<body>` (refs §0.9, §7 vector C).
pub fn signature(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut base = format!("v0:{ts}:").into_bytes();
    base.extend_from_slice(body);
    format!(
        "v0={}",
        crate::connectors::webhook::sign(secret.as_bytes(), &base)
    )
}

pub struct Slack {
    name: String,
    config: SlackConfig,
    api: ApiClient,
    /// The Socket Mode connection's state (`mode = "socket"` only).
    link: Option<Arc<socket::LinkStatus>>,
}

/// An empty 200: what Slack wants as an acknowledgement (a `Null` reply body is sent as
/// no body at all).
fn empty_ack() -> Reply {
    Reply::ok(Value::Null)
}

impl Slack {
    /// Build the connector and, in Socket Mode, start its connection.
    pub fn start(name: &str, config: SlackConfig, env: &ConnectorEnv) -> Arc<Self> {
        Arc::new_cyclic(|me| {
            let mut slack = Slack::new(name, config, env);
            if slack.config.mode == SlackMode::Socket {
                let status = Arc::new(socket::LinkStatus::default());
                slack.link = Some(status.clone());
                let app_token = slack
                    .config
                    .app_token
                    .clone()
                    .unwrap_or_else(|| Secret::new(""));
                let client = socket::SocketClient {
                    name: name.to_string(),
                    api: ApiClient::new(env.http.clone(), &slack.config.base_url, app_token),
                    journal: env.journal.clone(),
                    clock: env.clock.clone(),
                    cancel: env.cancel.clone(),
                    status,
                    slack: me.clone(),
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(client.run());
                    }
                    Err(_) => {
                        tracing::error!(connector = %name, "no async runtime: Socket Mode is not started")
                    }
                }
            }
            slack
        })
    }

    pub fn new(name: &str, config: SlackConfig, env: &ConnectorEnv) -> Self {
        Slack {
            name: name.to_string(),
            api: ApiClient::new(env.http.clone(), &config.base_url, config.bot_token.clone()),
            config,
            link: None,
        }
    }

    /// A Socket Mode envelope's payload → events (`events_api`: an `event_callback`
    /// envelope; `interactive`: a `block_actions` payload). The same decoding as over
    /// HTTP; other envelope types carry nothing for perch.
    pub fn socket_events(
        &self,
        envelope_type: &str,
        payload: &Value,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::event::Event>, InboundError> {
        let ctx = self.context_at(now);
        match envelope_type {
            "events_api"
                if payload.get("type").and_then(Value::as_str) == Some("event_callback") =>
            {
                Ok(vec![events::event_callback(payload, &ctx)?])
            }
            "interactive" => Ok(vec![events::interaction(payload, &ctx)?]),
            _ => Ok(Vec::new()),
        }
    }

    fn header<'a>(req: &'a InboundRequest, name: &str) -> Option<&'a str> {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// The signature and then the timestamp window (a forged request is told about its
    /// signature, not about the clock).
    fn verify(&self, req: &InboundRequest) -> Result<(), InboundError> {
        let secret = self
            .config
            .signing_secret
            .as_ref()
            .map(Secret::expose)
            .filter(|s| !s.is_empty());
        let ts = Self::header(req, TIMESTAMP);
        match secret {
            None if self.config.insecure => {}
            None => {
                // `perch check` refuses this config; never accept unsigned by accident.
                return Err(InboundError::MissingSignature(SIGNATURE.into()));
            }
            Some(secret) => {
                let (Some(given), Some(ts)) = (Self::header(req, SIGNATURE), ts) else {
                    return Err(InboundError::MissingSignature(format!(
                        "{SIGNATURE} (with {TIMESTAMP})"
                    )));
                };
                let message = {
                    let mut m = format!("v0:{ts}:").into_bytes();
                    m.extend_from_slice(&req.body);
                    m
                };
                if !crate::connectors::webhook::verify_signature(
                    secret.as_bytes(),
                    &message,
                    given,
                    "v0=",
                ) {
                    return Err(InboundError::BadSignature);
                }
            }
        }
        match ts {
            Some(ts) => check_timestamp(
                TIMESTAMP,
                ts,
                req.now,
                self.config.timestamp_window,
                self.config.clock_skew,
            ),
            None => Ok(()), // only reachable when insecure
        }
    }

    fn context<'a>(&'a self, req: &InboundRequest) -> events::Context<'a> {
        self.context_at(req.now)
    }

    fn context_at(&self, now: chrono::DateTime<chrono::Utc>) -> events::Context<'_> {
        events::Context {
            connector: &self.name,
            bot_user_id: self
                .config
                .bot_user_id
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty()),
            now,
        }
    }

    fn is_form(req: &InboundRequest) -> bool {
        Self::header(req, "content-type").is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        }) || req.body.starts_with(b"payload=")
    }

    /// Events API: the handshake, or an `event_callback`.
    fn inbound_event(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        if req.body.is_empty() {
            return Err(InboundError::Malformed(
                "empty body (expected a JSON document)".into(),
            ));
        }
        let doc: Value = serde_json::from_slice(&req.body)
            .map_err(|e| InboundError::Malformed(format!("not JSON: {e}")))?;
        if !doc.is_object() {
            return Err(InboundError::Malformed("expected a JSON object".into()));
        }
        if let Some(challenge) = events::challenge(&doc) {
            return Ok(Inbound::Respond(Reply::ok(
                json!({ "challenge": challenge }),
            )));
        }
        match doc.get("type").and_then(Value::as_str) {
            Some("event_callback") => {
                if let Some(n) = Self::header(req, RETRY_NUM) {
                    // Deduplicated by event_id in the journal; worth a line, since
                    // retries mean Slack did not get the first answer in 3 s.
                    tracing::info!(connector = %self.name, retry = %n,
                        reason = Self::header(req, RETRY_REASON).unwrap_or("-"),
                        "Slack redelivered an event");
                }
                let event = events::event_callback(&doc, &self.context(req))?;
                Ok(Inbound::Events {
                    events: vec![event],
                    ack: empty_ack(),
                })
            }
            // `app_rate_limited` and other notices without an event: acknowledged, kept
            // in the log only.
            Some(other) => {
                tracing::warn!(connector = %self.name, kind = %other, "Slack notice acknowledged without storing it");
                Ok(Inbound::Respond(empty_ack()))
            }
            None => Err(InboundError::Malformed(
                "not a Slack Events API document: no `type`".into(),
            )),
        }
    }

    /// Interactivity: `payload=<JSON>`. A click is journaled and acknowledged at once
    /// like any event, not as an `Inbound::Click` that waits for the bot: Slack's answer
    /// to a `block_actions` request carries nothing from the bot (an empty 200), so
    /// waiting (up to `server.click_answer_window`) would only eat into Slack's 3 s. The
    /// router still handles it as a click (`card_action`), and the bot's card update
    /// goes out through the outbox as `chat.update`; a toast has no Slack equivalent
    /// and stays in the event's fate.
    fn inbound_interaction(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        let doc = events::form_payload(&req.body)?;
        let event = events::interaction(&doc, &self.context(req))?;
        Ok(Inbound::Events {
            events: vec![event],
            ack: empty_ack(),
        })
    }
}

/// Text as Slack's `text` field takes it: `&`, `<`, `>` escaped (they start Slack's
/// control sequences), and `mrkdwn: false` so `*` and `_` stay as written.
fn message_fields(body: &MessageBody) -> Result<Value, SendError> {
    Ok(match body {
        MessageBody::Text { text } => json!({
            "text": crate::cards::markdown::escape_slack(text),
            "mrkdwn": false,
        }),
        MessageBody::Markdown { text } => json!({
            "text": crate::cards::markdown::to_slack(text),
            "mrkdwn": true,
        }),
        MessageBody::Card { card } => {
            let rendered = crate::cards::render("slack", card)
                .map_err(|e| SendError::Permanent(format!("card: {e}")))?;
            if rendered.get("blocks").is_none() {
                return Err(SendError::Permanent(
                    "card: the Slack renderer produced no blocks".into(),
                ));
            }
            rendered
        }
    })
}

/// A channel name Slack accepts: lower case, no spaces, at most 80 characters
/// (\[unverified\] refs §5). Other characters are left for Slack to judge: it answers
/// `invalid_name_specials`, which is reported as it is.
pub fn channel_name(name: &str) -> String {
    name.trim()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .chars()
        .take(80)
        .collect()
}

impl Slack {
    /// `users.lookupByEmail` → the user id, `None` when Slack knows no such user.
    async fn lookup_email(&self, email: &str) -> Result<Option<String>, SendError> {
        match self
            .api
            .get("users.lookupByEmail", &[("email", email)])
            .await
        {
            Ok(doc) => Ok(doc
                .pointer("/user/id")
                .and_then(Value::as_str)
                .map(str::to_string)),
            Err(e) if e.code() == Some("users_not_found") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Members as Slack user ids: e-mails are looked up first. Returns the ids and the
    /// inputs that could not be resolved.
    async fn resolve_members(
        &self,
        members: &[String],
        id_type: Option<&str>,
    ) -> Result<(Vec<String>, Vec<String>), SendError> {
        match id_type.unwrap_or("user_id") {
            "user_id" | "id" => Ok((members.to_vec(), Vec::new())),
            "email" => {
                let (mut ids, mut missing) = (Vec::new(), Vec::new());
                for m in members {
                    match self.lookup_email(m).await? {
                        Some(id) => ids.push(id),
                        None => missing.push(m.clone()),
                    }
                }
                Ok((ids, missing))
            }
            other => Err(SendError::Permanent(format!(
                "member_id_type {other:?} is not one of user_id, email (Slack)"
            ))),
        }
    }

    /// Where a message goes: a channel id, or a user id (Slack posts to the app's DM
    /// with that user), or an e-mail looked up first.
    async fn channel_of(&self, to: &Target) -> Result<String, SendError> {
        match to {
            Target::Chat { id } => Ok(id.clone()),
            Target::Person { id, id_type } => match id_type.as_deref() {
                None | Some("user_id") | Some("id") => Ok(id.clone()),
                Some("email") => self.lookup_email(id).await?.ok_or_else(|| {
                    SendError::Permanent(format!("no Slack user has the e-mail {id}"))
                }),
                Some(other) => Err(SendError::Permanent(format!(
                    "id_type {other:?} is not one of user_id, email (Slack)"
                ))),
            },
        }
    }

    async fn send(
        &self,
        to: &Target,
        body: &MessageBody,
        reply_to: Option<&str>,
    ) -> Result<Delivered, SendError> {
        let mut payload = message_fields(body)?;
        payload["channel"] = json!(self.channel_of(to).await?);
        if let Some(ts) = reply_to.filter(|_| self.config.reply_in_thread) {
            payload["thread_ts"] = json!(ts);
        }
        let doc = self.api.call("chat.postMessage", &payload).await?;
        let ts = doc.get("ts").and_then(Value::as_str).ok_or_else(|| {
            SendError::Permanent("chat.postMessage: Slack answered without a ts".into())
        })?;
        let channel = doc
            .get("channel")
            .cloned()
            .unwrap_or_else(|| payload["channel"].clone());
        Ok(Delivered {
            id: Some(ts.to_string()),
            detail: json!({ "chat_id": channel }),
        })
    }

    /// `chat.update`: needs the channel and the message's `ts`. The channel comes from
    /// the operation (`chat_id`, which the router fills from the clicked card's event),
    /// or from a qualified id `<channel>:<ts>`. Setting the whole content is safe to
    /// repeat, so no idempotency key is needed.
    async fn update(
        &self,
        chat_id: Option<&str>,
        message_id: &str,
        body: &MessageBody,
    ) -> Result<Delivered, SendError> {
        let (channel, ts) = match (chat_id, message_id.split_once(':')) {
            (_, Some((c, ts))) => (c, ts),
            (Some(c), None) => (c, message_id),
            (None, None) => {
                return Err(SendError::Permanent(format!(
                    "cannot update Slack message {message_id}: its channel is unknown (chat.update needs channel and ts)"
                )));
            }
        };
        let mut payload = message_fields(body)?;
        if payload.get("blocks").is_none() {
            // A text update replaces a card: clear its blocks.
            payload["blocks"] = json!([]);
        }
        payload["channel"] = json!(channel);
        payload["ts"] = json!(ts);
        self.api.call("chat.update", &payload).await?;
        Ok(Delivered {
            id: Some(ts.to_string()),
            detail: json!({ "chat_id": channel }),
        })
    }

    /// `conversations.invite` with `force`, so valid users are added even when some
    /// are not ([doc]; the per-user `errors` list's shape is [unverified] and read
    /// leniently). `already_in_channel` counts as added: the invite is safe to repeat.
    async fn invite(
        &self,
        channel: &str,
        users: &[String],
        report: &mut MemberReport,
    ) -> Result<(), SendError> {
        for chunk in users.chunks(1000) {
            let body = json!({ "channel": channel, "users": chunk.join(","), "force": true });
            match self.api.call("conversations.invite", &body).await {
                Ok(doc) => {
                    let failed: Vec<String> = doc
                        .get("errors")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e.get("user").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect();
                    for u in chunk {
                        if failed.contains(u) {
                            report.not_added.push(u.clone());
                        } else {
                            report.added.push(u.clone());
                        }
                    }
                }
                Err(e) if matches!(e.code(), Some("already_in_channel")) => {
                    report.added.extend(chunk.iter().cloned());
                }
                Err(e @ ApiError::Platform { .. })
                    if matches!(
                        e.code(),
                        Some(
                            "user_not_found"
                                | "cant_invite"
                                | "cant_invite_self"
                                | "user_is_restricted"
                        )
                    ) =>
                {
                    report.errors.push(e.to_string());
                    report.not_added.extend(chunk.iter().cloned());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `conversations.create`, then the members. Slack has no idempotency key for
    /// creation: a retry after a lost answer finds the name taken (`name_taken`), which
    /// is reported as a permanent error naming the channel, never a second channel.
    async fn create_chat(&self, spec: &ChatSpec) -> Result<Delivered, SendError> {
        let mut wanted = spec.members.clone();
        if let Some(owner) = &spec.owner
            && !wanted.contains(owner)
        {
            // Slack channels have no owner to set at creation: the owner is a member.
            wanted.push(owner.clone());
        }
        let (members, unresolved) = self
            .resolve_members(&wanted, spec.member_id_type.as_deref())
            .await?;
        let name = channel_name(&spec.name);
        let created = self
            .api
            .call(
                "conversations.create",
                &json!({ "name": name, "is_private": self.config.private_channels }),
            )
            .await;
        let doc = match created {
            Ok(doc) => doc,
            Err(e) if e.code() == Some("name_taken") => {
                return Err(SendError::Permanent(format!(
                    "conversations.create: a channel named #{name} exists already (perhaps made by an earlier attempt whose answer was lost; Slack has no idempotency key for creation): use it with add_members, or rename"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let chat_id = doc
            .pointer("/channel/id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                SendError::Permanent(
                    "conversations.create: Slack answered without channel.id".into(),
                )
            })?
            .to_string();
        let mut report = MemberReport {
            not_added: unresolved,
            ..Default::default()
        };
        // The channel exists now: failing to invite must not fail the creation (a caller
        // would create it again); it is reported for a later `AddMembers`.
        let members_error = self.invite(&chat_id, &members, &mut report).await.err();
        let mut detail = report.detail(&chat_id);
        detail["name"] = json!(name);
        if let Some(e) = members_error {
            detail["members_error"] = json!(e.to_string());
            detail["not_added"] = json!(wanted);
        }
        if spec.description.is_some() {
            detail["description_not_set"] = json!(true);
        }
        Ok(Delivered {
            id: Some(chat_id),
            detail,
        })
    }

    async fn add_members(
        &self,
        chat_id: &str,
        members: &[String],
        id_type: Option<&str>,
    ) -> Result<Delivered, SendError> {
        let (ids, unresolved) = self.resolve_members(members, id_type).await?;
        let mut report = MemberReport {
            not_added: unresolved,
            ..Default::default()
        };
        self.invite(chat_id, &ids, &mut report).await?;
        Ok(Delivered {
            id: Some(chat_id.to_string()),
            detail: report.detail(chat_id),
        })
    }
}

#[async_trait]
impl Connector for Slack {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "slack"
    }

    fn secrets(&self) -> Vec<&str> {
        let c = &self.config;
        [
            Some(&c.bot_token),
            c.signing_secret.as_ref(),
            c.app_token.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .collect()
    }

    fn handle_inbound(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        match req.sub_path.as_str() {
            "" | "interactive" => {}
            other => {
                return Err(InboundError::NotFound(format!(
                    "{other:?} (Slack uses /hooks/{0} for events and /hooks/{0} or /hooks/{0}/interactive for interactivity)",
                    self.name
                )));
            }
        }
        self.verify(req)?;
        if Self::is_form(req) {
            self.inbound_interaction(req)
        } else {
            self.inbound_event(req)
        }
    }

    async fn execute(
        &self,
        op: &Operation,
        _idempotency_key: &str,
    ) -> Result<Delivered, SendError> {
        // `_idempotency_key`: Slack's Web API takes none (see the module docs).
        match op {
            Operation::Send { to, body, reply_to } => {
                self.send(to, body, reply_to.as_deref()).await
            }
            Operation::Update {
                chat_id,
                message_id,
                body,
            } => self.update(chat_id.as_deref(), message_id, body).await,
            Operation::CreateChat { spec } => self.create_chat(spec).await,
            Operation::AddMembers {
                chat_id,
                members,
                member_id_type,
            } => {
                self.add_members(chat_id, members, member_id_type.as_deref())
                    .await
            }
        }
    }

    /// Slack's limits (refs §5): about 1 message/s per channel, and a workspace-wide
    /// budget; the per-method tiers are paced in `api.rs`.
    fn rate_limits(&self) -> RateLimits {
        RateLimits {
            per_second: None,
            burst: None,
            per_chat_per_second: Some(self.config.chat_rate_per_second),
            per_minute: Some(self.config.rate_per_minute),
        }
    }

    fn describe(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        if let Some(id) = self.config.bot_user_id.as_deref() {
            m.insert("bot_user_id", id.to_string());
        }
        if let Some(link) = &self.link {
            m.insert("socket_mode", link.describe());
        }
        m
    }
}

impl crate::connectors::ConnectorKind for Slack {
    type Config = SlackConfig;

    fn build(
        name: &str,
        config: SlackConfig,
        env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        Slack::start(name, config, env)
    }

    fn validate(name: &str, config: &SlackConfig, at: usize, issues: &mut crate::config::Issues) {
        config.validate(name, at, issues);
    }

    fn locale(config: &SlackConfig) -> Option<crate::i18n::Locale> {
        config.locale
    }

    fn replay_window(
        config: &SlackConfig,
        _dedupe_window: std::time::Duration,
    ) -> Option<(std::time::Duration, std::time::Duration)> {
        Some((config.timestamp_window, config.clock_skew))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    fn connector(insecure: bool) -> Slack {
        let config = SlackConfig {
            locale: None,
            mode: SlackMode::Http,
            app_token: None,
            bot_token: Secret::new("xoxb-test"),
            signing_secret: (!insecure).then(|| Secret::new(SECRET)),
            insecure,
            base_url: default_base_url(),
            bot_user_id: None,
            reply_in_thread: true,
            private_channels: false,
            chat_rate_per_second: 1,
            rate_per_minute: 300,
            timestamp_window: default_window(),
            clock_skew: default_window(),
        };
        Slack {
            name: "slack".into(),
            api: ApiClient::new(
                reqwest::Client::new(),
                &config.base_url,
                config.bot_token.clone(),
            ),
            config,
            link: None,
        }
    }

    fn request(body: &[u8], ts: i64, sig: Option<String>, now: i64) -> InboundRequest {
        let mut headers = HeaderMap::new();
        headers.insert(TIMESTAMP, ts.to_string().parse().unwrap());
        if let Some(s) = sig {
            headers.insert(SIGNATURE, s.parse().unwrap());
        }
        InboundRequest {
            sub_path: String::new(),
            headers,
            body: Bytes::copy_from_slice(body),
            now: chrono::DateTime::from_timestamp(now, 0).unwrap(),
        }
    }

    /// refs §7 vector C (python-slack-sdk's signature test).
    #[test]
    fn signature_matches_the_sdk_vector() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            signature(SECRET, "1531420618", body.as_bytes()),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
        let c = connector(false);
        let sig = signature(SECRET, "1531420618", body.as_bytes());
        // Verified (then refused as a form without `payload`, not as unsigned).
        let e = c
            .handle_inbound(&request(
                body.as_bytes(),
                1531420618,
                Some(sig),
                1531420618 + 10,
            ))
            .unwrap_err();
        assert!(matches!(e, InboundError::Malformed(_)), "{e}");
    }

    #[test]
    fn unsigned_tampered_and_stale_requests_are_refused() {
        let c = connector(false);
        let body = br#"{"type":"url_verification","challenge":"abc","token":"t"}"#;
        let now = 1_700_000_000;
        let ok = c
            .handle_inbound(&request(
                body,
                now,
                Some(signature(SECRET, &now.to_string(), body)),
                now,
            ))
            .unwrap();
        assert!(matches!(ok, Inbound::Respond(r) if r.body == json!({ "challenge": "abc" })));
        assert!(matches!(
            c.handle_inbound(&request(body, now, None, now))
                .unwrap_err(),
            InboundError::MissingSignature(_)
        ));
        let tampered = br#"{"type":"url_verification","challenge":"xyz","token":"t"}"#;
        assert_eq!(
            c.handle_inbound(&request(
                tampered,
                now,
                Some(signature(SECRET, &now.to_string(), body)),
                now
            ))
            .unwrap_err(),
            InboundError::BadSignature
        );
        for at in [now + 301, now - 301] {
            let e = c
                .handle_inbound(&request(
                    body,
                    now,
                    Some(signature(SECRET, &now.to_string(), body)),
                    at,
                ))
                .unwrap_err();
            assert!(matches!(e, InboundError::StaleTimestamp(_)), "{e}");
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        }
        // insecure: no signature needed.
        assert!(
            connector(true)
                .handle_inbound(&request(body, now, None, now))
                .is_ok()
        );
    }

    #[test]
    fn bodies_by_kind() {
        let (t, _) = (
            message_fields(&MessageBody::text("a <b> & *c*")).unwrap(),
            (),
        );
        assert_eq!(
            t,
            json!({ "text": "a &lt;b&gt; &amp; *c*", "mrkdwn": false })
        );
        let m = message_fields(&MessageBody::markdown("**b**")).unwrap();
        assert_eq!(m, json!({ "text": "*b*", "mrkdwn": true }));
        let c = message_fields(&MessageBody::Card {
            card: json!({ "header": { "title": "T" }, "elements": [] }),
        })
        .unwrap();
        assert!(c["blocks"].is_array() && c["text"].is_string());
        assert_eq!(channel_name("  Proj Acme  X1 "), "proj-acme-x1");
        assert_eq!(channel_name(&"a".repeat(100)).len(), 80);
    }
}
