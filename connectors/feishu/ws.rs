//! Feishu's long connection (长连接), `mode = "websocket"`: perch opens a WebSocket to
//! Feishu and receives events and card callbacks over it, so no public URL is needed.
//!
//! Flow: `Feishu::start` spawns `run` → endpoint request (app id + secret) → WebSocket →
//! binary protobuf frames → (fragments reassembled) → `Feishu::socket_inbound` (the
//! same decrypt/verify/decode as the webhook) → journal (durable, deduped by event id)
//! → **then** the answer frame → router → bots → outbox, exactly as for `/hooks/<name>`.
//!
//! The protocol, as the official SDK implements it (larksuite/oapi-sdk-go `ws/client.go`,
//! `ws/const.go`, `ws/model.go`, `ws/pbbp2.pb.go`):
//! - `POST {base_url}/callback/ws/endpoint` with `{"AppID","AppSecret"}` answers
//!   `{"code":0,"data":{"URL":"wss://…?device_id=…&service_id=…","ClientConfig":{…}}}`;
//!   code 1 (busy) and 1000040343 (internal) are transient, other codes refuse the app;
//! - frames are `pbbp2.Frame` (proto2; see `Frame` below); method 0 = control
//!   (header `type` = `ping`/`pong`; a pong's payload may carry a new `ClientConfig`),
//!   method 1 = data (`type` = `event`/`card`, `message_id`, `sum`, `seq`, `trace_id`);
//! - a data frame is answered with the same frame, header `biz_rt` (handling time in
//!   ms) added, payload `{"code":200,"headers":{},"data":<base64 of the answer JSON>}`;
//! - fragments (`sum` > 1) are joined by `message_id` in `seq` order (the SDK keeps
//!   parts 5 s); the ping frame is method 0, `service` = the URL's `service_id`, header
//!   `type: ping`; ping every `PingInterval` s (default 120 s); reconnect after a random
//!   wait below `ReconnectNonce` s (default 30 s), then every `ReconnectInterval` s.
//!
//! Frames of `type: card` are handled like `type: event` (the payload decides: a
//! `card.action.trigger` callback or a legacy card click). \[unverified\] The official
//! Go and Python SDKs drop card frames unanswered (`handleDataFrame` returns for
//! `MessageTypeCard`); an SDK issue (larksuite/oapi-sdk-python#126) reports card
//! callbacks lost that way, and the workaround there routes them through the event path.
//!
//! perch differs on purpose: it never stops retrying (the SDK stops on a refused app;
//! the issue asks for "forever, with backoff and jitter", and the state is shown in
//! `describe()` and logged), and it backs off exponentially from `ws_reconnect_min`
//! up to `ws_reconnect_max` (or the server's `ReconnectInterval`, if smaller).
//! \[unverified\] There is no explicit "reconnect" control frame in the SDKs: the server
//! closes the socket (a Close frame) and the client reconnects; perch treats any Close,
//! error or silence (no frame for 3 ping intervals) that way.

use super::Feishu;
use crate::clicks::Clicks;
use crate::clock::SharedClock;
use crate::config::Secret;
use crate::connectors::Inbound;
use crate::journal::Journal;
use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// `pbbp2.Header` (larksuite/oapi-sdk-go `ws/pbbp2.pb.go`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

/// `pbbp2.Frame` (larksuite/oapi-sdk-go `ws/pbbp2.pb.go`): fields 1–4 are proto2
/// `required`, 5 repeated, 6–9 optional.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<Header>,
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub payload: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

impl Frame {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_str())
    }
    fn header_int(&self, key: &str) -> usize {
        self.header(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Frame methods (`ws/const.go` FrameType).
pub const METHOD_CONTROL: i32 = 0;
pub const METHOD_DATA: i32 = 1;

/// Endpoint answer codes (`ws/const.go`): anything else refuses the app.
const CODE_OK: i64 = 0;
const CODE_BUSY: i64 = 1;
const CODE_INTERNAL: i64 = 1_000_040_343;

/// How many data messages are handled at once on one connection; the reader waits for
/// a slot beyond that (a click holds one for up to `click_answer_window`).
const IN_FLIGHT: usize = 64;
/// Partial (fragmented) messages kept at once, and the largest joined message.
const MAX_PARTIALS: usize = 64;
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long an unanswered WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Long-connection settings, from the connector's `ws_*` keys.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint_path: String,
    pub ping_interval: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub reconnect_nonce: Duration,
    pub fragment_ttl: Duration,
}

/// What `describe()` shows of the connection, and the log repeats.
#[derive(Debug, Default)]
pub struct LinkStatus {
    state: Mutex<LinkState>,
}

#[derive(Debug, Default, Clone)]
struct LinkState {
    connected: bool,
    connects: u64,
    failures: u32,
    last_error: Option<String>,
}

impl LinkStatus {
    fn set(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }
    fn get(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// `connected`, or `disconnected: <why> (N failed attempts)`.
    pub fn describe(&self) -> String {
        let s = self.get();
        match (s.connected, &s.last_error) {
            (true, _) => "connected".to_string(),
            (false, Some(e)) => format!("disconnected: {e} ({} failed attempts)", s.failures),
            (false, None) => "connecting".to_string(),
        }
    }
    /// How many times a connection was established.
    pub fn connects(&self) -> u64 {
        self.get().connects
    }
}

/// Why a connection attempt or a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error(
        "Feishu refused the app's credentials or the app (code {code}: {msg}); check app_id and app_secret, and that the app uses long connection in the developer console"
    )]
    Refused { code: i64, msg: String },
    #[error("Feishu's endpoint is busy or failed (code {code}: {msg})")]
    Busy { code: i64, msg: String },
    #[error("the endpoint request failed: {0}")]
    Endpoint(String),
    #[error("the WebSocket handshake was refused: {0}")]
    Handshake(String),
    #[error("WebSocket error: {0}")]
    Socket(String),
    #[error("the server closed the connection ({0})")]
    Closed(String),
    #[error("no frame from the server for {0:?}")]
    Silent(Duration),
}

/// Server-sent connection settings (`ws/model.go` ClientConfig, seconds).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServerConfig {
    #[serde(default)]
    reconnect_interval: Option<u64>,
    #[serde(default)]
    reconnect_nonce: Option<u64>,
    #[serde(default)]
    ping_interval: Option<u64>,
}

#[derive(Deserialize)]
struct EndpointResp {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    data: Option<EndpointData>,
}

#[derive(Deserialize)]
struct EndpointData {
    #[serde(rename = "URL", default)]
    url: String,
    #[serde(rename = "ClientConfig", default)]
    client_config: Option<ServerConfig>,
}

/// Everything the long connection needs, taken from the connector and its environment.
pub struct Client {
    pub name: String,
    pub app_id: String,
    pub app_secret: Secret,
    pub base_url: String,
    pub settings: Settings,
    pub http: reqwest::Client,
    pub journal: Journal,
    pub clicks: Arc<Clicks>,
    pub click_answer_window: Duration,
    pub clock: SharedClock,
    pub status: Arc<LinkStatus>,
    pub cancel: CancellationToken,
    /// The connector (weak: the connection ends when perch drops it).
    pub feishu: Weak<Feishu>,
}

/// The settings in force on one connection (the server may change them).
#[derive(Debug, Clone)]
struct Live {
    ping_interval: Duration,
    reconnect_cap: Duration,
    nonce: Duration,
}

impl Client {
    /// Connect, serve, reconnect — until perch stops or drops the connector.
    pub async fn run(self) {
        let mut live = Live {
            ping_interval: self.settings.ping_interval,
            reconnect_cap: self.settings.reconnect_max,
            nonce: self.settings.reconnect_nonce,
        };
        let mut backoff = self.settings.reconnect_min;
        let mut after_drop = false;
        loop {
            if self.cancel.is_cancelled() || self.feishu.strong_count() == 0 {
                return;
            }
            // The endpoint request and the handshake can take long: stop waiting on
            // shutdown, so the journal (and the store it holds) is let go at once.
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.connect_and_serve(&mut live) => r,
            };
            if self.cancel.is_cancelled() || self.feishu.strong_count() == 0 {
                return;
            }
            let served = match &result {
                Ok(()) => true,
                Err((served, _)) => *served,
            };
            let why = match result {
                Ok(()) => "closed".to_string(),
                Err((_, e)) => e.to_string(),
            };
            if served {
                // A connection that worked: start the backoff again, and spread the
                // replicas' reconnects over the nonce (the SDK's "first reconnect jitter").
                backoff = self.settings.reconnect_min;
                after_drop = true;
            }
            let failures = {
                let mut n = 0;
                self.status.set(|s| {
                    s.connected = false;
                    s.failures = if served { 0 } else { s.failures + 1 };
                    s.last_error = Some(why.clone());
                    n = s.failures;
                });
                n
            };
            let mut wait = jitter(backoff);
            if after_drop && !live.nonce.is_zero() {
                wait += live.nonce.mul_f64(rand::random::<f64>());
            }
            after_drop = false;
            if served {
                tracing::warn!(connector = %self.name, reason = %why, retry_in = ?wait, "Feishu long connection lost; reconnecting");
            } else {
                tracing::error!(connector = %self.name, reason = %why, attempt = failures, retry_in = ?wait, "Feishu long connection failed; retrying");
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(live.reconnect_cap.max(self.settings.reconnect_min));
        }
    }

    /// One connection. `Err((served, e))`: `served` is whether it got connected first.
    async fn connect_and_serve(&self, live: &mut Live) -> Result<(), (bool, WsError)> {
        let (url, config) = self.endpoint().await.map_err(|e| (false, e))?;
        if let Some(c) = &config {
            apply(live, c, &self.settings);
        }
        let service_id = service_id(&url);
        let connect = tokio_tungstenite::connect_async(url.as_str());
        let (mut socket, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return Err((false, WsError::Handshake("timed out".into()))),
            Ok(Err(e)) => return Err((false, handshake_error(e))),
            Ok(Ok(s)) => s,
        };
        self.status.set(|s| {
            s.connected = true;
            s.connects += 1;
            s.failures = 0;
            s.last_error = None;
        });
        tracing::info!(connector = %self.name, "Feishu long connection established");

        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(IN_FLIGHT);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut partials = Partials::default();
        let mut ping = tokio::time::interval(live.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let served = |e: WsError| (true, e);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                _ = ping.tick() => {
                    let silent = live.ping_interval * 3;
                    if last_seen.elapsed() > silent {
                        return Err(served(WsError::Silent(silent)));
                    }
                    let frame = ping_frame(service_id);
                    socket
                        .send(Message::Binary(frame.encode_to_vec().into()))
                        .await
                        .map_err(|e| served(WsError::Socket(e.to_string())))?;
                }
                Some(answer) = out_rx.recv() => {
                    socket
                        .send(Message::Binary(answer.encode_to_vec().into()))
                        .await
                        .map_err(|e| served(WsError::Socket(e.to_string())))?;
                }
                msg = socket.next() => {
                    let msg = match msg {
                        None => return Err(served(WsError::Closed("end of stream".into()))),
                        Some(Err(e)) => return Err(served(WsError::Socket(e.to_string()))),
                        Some(Ok(m)) => m,
                    };
                    last_seen = Instant::now();
                    match msg {
                        Message::Binary(bytes) => {
                            let Ok(frame) = Frame::decode(bytes.as_ref()) else {
                                tracing::warn!(connector = %self.name, "undecodable frame from Feishu ignored");
                                continue;
                            };
                            match frame.method {
                                METHOD_CONTROL => {
                                    if let Some(new) = self.control(&frame, live) {
                                        ping = tokio::time::interval_at(tokio::time::Instant::now() + new, new);
                                        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                                    }
                                }
                                METHOD_DATA => {
                                    let Some((frame, payload)) = partials.add(frame, self.settings.fragment_ttl, &self.name) else {
                                        continue;
                                    };
                                    // Wait for a slot: bounded work; pings wait too, briefly.
                                    let Ok(slot) = slots.clone().acquire_owned().await else { continue };
                                    let Some(feishu) = self.feishu.upgrade() else { return Ok(()) };
                                    let sink = self.sink();
                                    let out = out_tx.clone();
                                    tokio::spawn(async move {
                                        let answer = sink.answer(&feishu, frame, payload).await;
                                        drop(feishu);
                                        // The connection may be gone: unanswered, Feishu delivers it again.
                                        let _ = out.send(answer).await;
                                        drop(slot);
                                    });
                                }
                                other => tracing::debug!(connector = %self.name, method = other, "frame of unknown method ignored"),
                            }
                        }
                        Message::Close(c) => {
                            let why = c
                                .map(|c| format!("{} {}", u16::from(c.code), c.reason))
                                .unwrap_or_else(|| "no reason".into());
                            return Err(served(WsError::Closed(why)));
                        }
                        // tungstenite answers WebSocket pings itself.
                        _ => {}
                    }
                }
            }
        }
    }

    /// A control frame: a pong may carry new settings; returns a new ping interval.
    fn control(&self, frame: &Frame, live: &mut Live) -> Option<Duration> {
        if frame.header("type") != Some("pong") {
            return None;
        }
        let payload = frame.payload.as_deref().filter(|p| !p.is_empty())?;
        let config: ServerConfig = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(connector = %self.name, error = %e, "pong settings not understood");
                return None;
            }
        };
        let before = live.ping_interval;
        apply(live, &config, &self.settings);
        (live.ping_interval != before).then_some(live.ping_interval)
    }

    fn sink(&self) -> Sink {
        Sink {
            name: self.name.clone(),
            journal: self.journal.clone(),
            clicks: self.clicks.clone(),
            click_answer_window: self.click_answer_window,
            clock: self.clock.clone(),
        }
    }

    /// The WebSocket URL (and server settings) for this app.
    async fn endpoint(&self) -> Result<(String, Option<ServerConfig>), WsError> {
        let url = format!(
            "{}{}",
            self.base_url.trim_end_matches('/'),
            self.settings.endpoint_path
        );
        let resp = self
            .http
            .post(&url)
            .header("locale", "zh")
            .json(&json!({ "AppID": self.app_id, "AppSecret": self.app_secret.expose() }))
            .send()
            .await
            .map_err(|e| WsError::Endpoint(e.without_url().to_string()))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| WsError::Endpoint(e.without_url().to_string()))?;
        let parsed: Option<EndpointResp> = serde_json::from_slice(&body).ok();
        let Some(parsed) = parsed else {
            return Err(WsError::Endpoint(format!(
                "HTTP {status} with a body that is not the endpoint's JSON"
            )));
        };
        match parsed.code {
            CODE_OK if status.is_success() => {}
            CODE_OK => {
                return Err(WsError::Busy {
                    code: status.as_u16().into(),
                    msg: parsed.msg,
                });
            }
            CODE_BUSY | CODE_INTERNAL => {
                return Err(WsError::Busy {
                    code: parsed.code,
                    msg: parsed.msg,
                });
            }
            code => {
                return Err(WsError::Refused {
                    code,
                    msg: parsed.msg,
                });
            }
        }
        match parsed.data {
            Some(d) if !d.url.is_empty() => Ok((d.url, d.client_config)),
            _ => Err(WsError::Endpoint("the answer has no URL".into())),
        }
    }
}

/// Apply server-sent settings (seconds; 0 or absent keeps what is in force).
fn apply(live: &mut Live, c: &ServerConfig, settings: &Settings) {
    if let Some(p) = c.ping_interval.filter(|p| *p > 0) {
        live.ping_interval = Duration::from_secs(p);
    }
    if let Some(r) = c.reconnect_interval.filter(|r| *r > 0) {
        live.reconnect_cap = Duration::from_secs(r).min(settings.reconnect_max);
    }
    if let Some(n) = c.reconnect_nonce {
        live.nonce = Duration::from_secs(n).min(settings.reconnect_nonce);
    }
}

/// Between half and all of `d`: replicas that lost Feishu together do not all come back
/// in the same instant.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// The `service_id` query parameter of the WebSocket URL (0 when absent).
fn service_id(url: &str) -> i32 {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "service_id")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The ping frame (`ws/model.go` NewPingFrame).
pub fn ping_frame(service: i32) -> Frame {
    Frame {
        method: METHOD_CONTROL,
        service,
        headers: vec![Header {
            key: "type".into(),
            value: "ping".into(),
        }],
        ..Default::default()
    }
}

/// A refused handshake: Feishu says why in `Handshake-Status` / `Handshake-Msg`
/// (`ws/const.go`, `parseErr` in `ws/client.go`).
fn handshake_error(e: tokio_tungstenite::tungstenite::Error) -> WsError {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => {
            let h = |k: &str| {
                resp.headers()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            WsError::Handshake(format!(
                "HTTP {} (Handshake-Status {:?}, Handshake-Msg {:?})",
                resp.status(),
                h("Handshake-Status"),
                h("Handshake-Msg")
            ))
        }
        other => WsError::Handshake(other.to_string()),
    }
}

/// Fragmented data messages being joined (`combine` in `ws/client.go`).
#[derive(Default)]
struct Partials {
    open: HashMap<String, Partial>,
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
    since: Instant,
}

impl Partials {
    /// Add a data frame; returns the whole message once every part is there.
    fn add(&mut self, mut frame: Frame, ttl: Duration, name: &str) -> Option<(Frame, Bytes)> {
        let payload = frame.payload.take().unwrap_or_default();
        let sum = frame.header_int("sum");
        if sum <= 1 {
            return Some((frame, Bytes::from(payload)));
        }
        let seq = frame.header_int("seq");
        let id = frame.header("message_id").unwrap_or_default().to_string();
        if seq >= sum || sum > 1024 || id.is_empty() {
            tracing::warn!(connector = %name, sum, seq, "fragment with impossible numbering dropped");
            return None;
        }
        self.open.retain(|_, p| p.since.elapsed() < ttl);
        if !self.open.contains_key(&id) && self.open.len() >= MAX_PARTIALS {
            // Full: the oldest is the least likely to complete (Feishu resends it anyway).
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| k.clone())
            {
                self.open.remove(&oldest);
            }
        }
        let p = self.open.entry(id.clone()).or_insert_with(|| Partial {
            parts: vec![None; sum],
            bytes: 0,
            since: Instant::now(),
        });
        if p.parts.len() != sum {
            tracing::warn!(connector = %name, message_id = %id, "fragments disagree on their count; dropped");
            self.open.remove(&id);
            return None;
        }
        p.bytes += payload.len();
        if p.bytes > MAX_MESSAGE_BYTES {
            tracing::warn!(connector = %name, message_id = %id, "fragmented message too large; dropped");
            self.open.remove(&id);
            return None;
        }
        p.parts[seq] = Some(payload);
        if p.parts.iter().any(Option::is_none) {
            return None;
        }
        let p = self.open.remove(&id)?;
        let whole: Vec<u8> = p.parts.into_iter().flatten().flatten().collect();
        Some((frame, Bytes::from(whole)))
    }
}

/// What a handler task needs: the same journal and click answers as the HTTP edge.
struct Sink {
    name: String,
    journal: Journal,
    clicks: Arc<Clicks>,
    click_answer_window: Duration,
    clock: SharedClock,
}

impl Sink {
    /// Handle one whole data message and build its answer frame. The answer says 200
    /// only once the event is durable in the journal (a duplicate is journaled already).
    async fn answer(&self, feishu: &Feishu, mut frame: Frame, payload: Bytes) -> Frame {
        let started = Instant::now();
        let (code, data) = self.handle(feishu, payload).await;
        let mut response = json!({ "code": code, "headers": {} });
        if let Some(data) = data {
            // `Response.Data` is `[]byte` in the SDK: JSON carries it as base64.
            response["data"] = json!(
                base64::engine::general_purpose::STANDARD.encode(data.to_string().as_bytes())
            );
        }
        frame.headers.push(Header {
            key: "biz_rt".into(),
            value: started.elapsed().as_millis().to_string(),
        });
        frame.payload = Some(response.to_string().into_bytes());
        frame
    }

    async fn handle(&self, feishu: &Feishu, payload: Bytes) -> (u16, Option<Value>) {
        let inbound = match feishu.socket_inbound(payload, self.clock.now()) {
            Ok(i) => i,
            Err(e) => {
                crate::telemetry::event_rejected(&self.name, e.status().as_u16());
                tracing::info!(connector = %self.name, reason = %e, "long-connection message refused");
                return (e.status().as_u16(), None);
            }
        };
        // As at the HTTP edge: secrets echoed in envelopes never reach the journal.
        let secrets = crate::connectors::Connector::secrets(feishu);
        match inbound {
            Inbound::Respond(reply) => (reply.status.as_u16(), Some(reply.body)),
            Inbound::Events { mut events, ack } => {
                for e in &mut events {
                    crate::connectors::redact(e, &secrets);
                }
                match self.journal.accept(events).await {
                    Ok(_) => (ack.status.as_u16(), Some(ack.body)),
                    Err(e) => self.refused(e),
                }
            }
            Inbound::Click { mut event, reply } => {
                crate::connectors::redact(&mut event, &secrets);
                let accepted = match self.journal.accept(vec![*event]).await {
                    Ok(a) => a,
                    Err(e) => return self.refused(e),
                };
                let answer = match accepted.first() {
                    // A redelivered click gets the first one's answer.
                    Some(a) => self.clicks.answer(a.id(), self.click_answer_window).await,
                    None => None,
                };
                let reply = (reply.0)(answer.as_ref());
                (reply.status.as_u16(), Some(reply.body))
            }
        }
    }

    fn refused(&self, e: crate::journal::JournalError) -> (u16, Option<Value>) {
        let status = e.status().as_u16();
        crate::telemetry::event_rejected(&self.name, status);
        tracing::warn!(connector = %self.name, error = %e, "long-connection message not stored; Feishu will deliver it again");
        (status, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(id: &str, sum: usize, seq: usize, payload: &[u8]) -> Frame {
        let h = |k: &str, v: String| Header {
            key: k.into(),
            value: v,
        };
        Frame {
            method: METHOD_DATA,
            headers: vec![
                h("type", "event".into()),
                h("message_id", id.into()),
                h("sum", sum.to_string()),
                h("seq", seq.to_string()),
            ],
            payload: Some(payload.to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn frames_round_trip_with_required_fields_on_the_wire() {
        let f = ping_frame(7);
        let bytes = f.encode_to_vec();
        // Required fields are written even when zero (as gogo-protobuf does).
        assert_eq!(&bytes[..2], &[0x08, 0x00]);
        assert_eq!(Frame::decode(bytes.as_slice()).unwrap(), f);
    }

    #[test]
    fn fragments_join_in_seq_order_whatever_order_they_come_in() {
        let mut p = Partials::default();
        let ttl = Duration::from_secs(5);
        assert!(p.add(data("m", 3, 2, b"c"), ttl, "t").is_none());
        assert!(p.add(data("m", 3, 0, b"a"), ttl, "t").is_none());
        let (_, whole) = p.add(data("m", 3, 1, b"b"), ttl, "t").unwrap();
        assert_eq!(&whole[..], b"abc");
        assert!(p.open.is_empty());
        // Unfragmented messages pass straight through; nonsense numbering is dropped.
        assert_eq!(&p.add(data("x", 1, 0, b"z"), ttl, "t").unwrap().1[..], b"z");
        assert!(p.add(data("y", 2, 5, b"z"), ttl, "t").is_none());
    }

    #[test]
    fn service_id_comes_from_the_url() {
        assert_eq!(service_id("wss://x/ws?device_id=d&service_id=42"), 42);
        assert_eq!(service_id("wss://x/ws"), 0);
    }
}
