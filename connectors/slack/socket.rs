//! Slack Socket Mode, `mode = "socket"`: perch opens a WebSocket to Slack and receives
//! events and button clicks over it, so no public URL is needed (like the Feishu long
//! connection, `connectors/feishu/ws.rs`).
//!
//! Flow: `Slack::start` spawns `SocketClient::run` → `apps.connections.open` (app-level
//! token `xapp-…`) → WebSocket to the returned URL → JSON envelopes →
//! `Slack::socket_events` (the same decoding as over HTTP) → journal (durable, deduped
//! by `event_id`) → **then** the acknowledgement `{"envelope_id"}` → router → bots →
//! outbox (Web API with the bot token, as in HTTP mode).
//!
//! The protocol, as Slack's SDKs implement it (python-slack-sdk
//! `slack_sdk/socket_mode/`, bolt's socket mode adapter) — [unverified] against Slack
//! itself here, since tests use a fake:
//! - `POST apps.connections.open` with `Authorization: Bearer xapp-…` answers
//!   `{"ok":true,"url":"wss://…"}`; each URL is for one connection;
//! - the server first sends `{"type":"hello",…}`; envelopes are
//!   `{"envelope_id","type":"events_api"|"interactive"|"slash_commands","payload":{…},
//!   "retry_attempt","retry_reason","accepts_response_payload"}`; each is acknowledged
//!   with `{"envelope_id":…}` within 3 s, or Slack sends it again;
//! - `{"type":"disconnect","reason":"refresh_requested"|"warning"|…}` asks the client to
//!   open a new connection (Slack refreshes them every few hours).
//!
//! An envelope is acknowledged only once its events are durable (a redelivery of an
//! already-journaled event is a duplicate and acknowledged at once); an envelope perch
//! cannot decode is acknowledged without storing anything (a redelivery would not
//! decode either), and logged. Reconnects back off exponentially with jitter, forever.

use super::Slack;
use super::api::ApiClient;
use crate::clock::SharedClock;
use crate::journal::Journal;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// With no frame (Slack pings every few seconds) for this long, the connection is
/// taken for dead and replaced.
const SILENCE: Duration = Duration::from_secs(120);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What `describe()` shows of the connection.
#[derive(Debug, Default)]
pub struct LinkStatus {
    state: Mutex<(bool, Option<String>, u64)>,
}

impl LinkStatus {
    fn set(&self, f: impl FnOnce(&mut (bool, Option<String>, u64))) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }
    /// `connected`, `connecting`, or `disconnected: <why>`.
    pub fn describe(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (s.0, &s.1) {
            (true, _) => "connected".to_string(),
            (false, Some(e)) => format!("disconnected: {e}"),
            (false, None) => "connecting".to_string(),
        }
    }
}

/// Why a connection attempt or a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("apps.connections.open: {0}")]
    Open(String),
    #[error("the WebSocket handshake failed: {0}")]
    Handshake(String),
    #[error("WebSocket error: {0}")]
    Socket(String),
    #[error("Slack asked for a new connection ({0})")]
    Disconnect(String),
    #[error("the connection closed")]
    Closed,
    #[error("no frame from Slack for {0:?}")]
    Silent(Duration),
}

pub struct SocketClient {
    pub name: String,
    /// A Web API client with the app-level token (for `apps.connections.open` only).
    pub api: ApiClient,
    pub journal: Journal,
    pub clock: SharedClock,
    pub cancel: CancellationToken,
    pub status: Arc<LinkStatus>,
    /// The connector (weak: the connection ends when perch drops it).
    pub slack: Weak<Slack>,
}

impl SocketClient {
    /// Connect, serve, reconnect — until perch stops or drops the connector.
    pub async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.cancel.is_cancelled() || self.slack.strong_count() == 0 {
                return;
            }
            let (served, why) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.connect_and_serve() => r,
            };
            self.status.set(|s| {
                s.0 = false;
                s.1 = Some(why.to_string());
            });
            if served {
                backoff = BACKOFF_MIN;
            }
            // A requested refresh reconnects at once; anything else backs off.
            let wait = match why {
                SocketError::Disconnect(_) => Duration::ZERO,
                _ => backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0),
            };
            tracing::warn!(connector = %self.name, reason = %why, retry_in = ?wait, "Slack Socket Mode connection ended; reconnecting");
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if !served {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// One connection: `(whether it got to hello, why it ended)`.
    async fn connect_and_serve(&self) -> (bool, SocketError) {
        let url = match self.api.call("apps.connections.open", &json!({})).await {
            Ok(doc) => match doc.get("url").and_then(Value::as_str) {
                Some(u) => u.to_string(),
                None => return (false, SocketError::Open("no url in the answer".into())),
            },
            Err(e) => return (false, SocketError::Open(e.to_string())),
        };
        let connect = tokio_tungstenite::connect_async(url.as_str());
        let mut ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return (false, SocketError::Handshake("timed out".into())),
            Ok(Err(e)) => return (false, SocketError::Handshake(e.to_string())),
            Ok(Ok((ws, _))) => ws,
        };
        let mut served = false;
        loop {
            let frame = tokio::select! {
                _ = self.cancel.cancelled() => {
                    let _ = ws.close(None).await;
                    return (served, SocketError::Closed);
                }
                f = tokio::time::timeout(SILENCE, ws.next()) => f,
            };
            let text = match frame {
                Err(_) => return (served, SocketError::Silent(SILENCE)),
                Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                    return (served, SocketError::Closed);
                }
                Ok(Some(Err(e))) => return (served, SocketError::Socket(e.to_string())),
                Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
                // Pings are answered by tungstenite itself; binary frames are not Slack's.
                Ok(Some(Ok(_))) => continue,
            };
            let Ok(doc) = serde_json::from_str::<Value>(&text) else {
                tracing::warn!(connector = %self.name, "Slack sent a frame that is not JSON; ignored");
                continue;
            };
            match doc.get("type").and_then(Value::as_str) {
                Some("hello") => {
                    served = true;
                    self.status.set(|s| {
                        s.0 = true;
                        s.1 = None;
                        s.2 += 1;
                    });
                    tracing::info!(connector = %self.name, "Slack Socket Mode connected");
                }
                Some("disconnect") => {
                    let reason = doc
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_string();
                    let _ = ws.close(None).await;
                    return (served, SocketError::Disconnect(reason));
                }
                _ => {
                    if let Some(ack) = self.envelope(&doc).await
                        && let Err(e) = ws.send(Message::Text(ack.to_string().into())).await
                    {
                        return (served, SocketError::Socket(e.to_string()));
                    }
                }
            }
        }
    }

    /// Handle one envelope; the acknowledgement to send, or `None` when it must not be
    /// acknowledged (its events could not be made durable: Slack will send it again).
    async fn envelope(&self, doc: &Value) -> Option<Value> {
        let id = doc.get("envelope_id").and_then(Value::as_str)?;
        let ack = json!({ "envelope_id": id });
        let kind = doc.get("type").and_then(Value::as_str).unwrap_or_default();
        let payload = doc.get("payload").cloned().unwrap_or(Value::Null);
        let slack = self.slack.upgrade()?;
        let mut events = match slack.socket_events(kind, &payload, self.clock.now()) {
            Ok(events) => events,
            Err(e) => {
                crate::telemetry::event_rejected(&self.name, e.status().as_u16());
                tracing::warn!(connector = %self.name, envelope = %id, reason = %e, "Slack envelope refused; acknowledged without storing it");
                return Some(ack);
            }
        };
        if events.is_empty() {
            return Some(ack);
        }
        let secrets = crate::connectors::Connector::secrets(slack.as_ref());
        for e in &mut events {
            crate::connectors::redact(e, &secrets);
        }
        drop(slack);
        match self.journal.accept(events).await {
            Ok(_) => Some(ack),
            Err(e) if e.status().is_client_error() => {
                tracing::warn!(connector = %self.name, envelope = %id, error = %e, "Slack envelope cannot be stored; acknowledged");
                Some(ack)
            }
            Err(e) => {
                tracing::warn!(connector = %self.name, envelope = %id, error = %e, "Slack envelope not stored; not acknowledged, Slack will send it again");
                None
            }
        }
    }
}
