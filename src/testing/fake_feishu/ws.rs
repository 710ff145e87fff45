//! A fake Feishu long-connection server (长连接), written from the protocol of the
//! official SDK (larksuite/oapi-sdk-go `ws/client.go`, `ws/const.go`, `ws/model.go`,
//! `ws/pbbp2.pb.go`) and not from perch's code: its own protobuf structs, its own
//! framing. The endpoint request (`POST /callback/ws/endpoint`) is served by
//! `FakeFeishu` (it checks the app's credentials) and hands out this server's URL.
//!
//! It speaks: the WebSocket upgrade (refused without `device_id`/`service_id`), binary
//! `pbbp2.Frame`s, ping → pong (with a `ClientConfig` payload), data frames (`type` =
//! `event`/`card`, `message_id`, `sum`, `seq`, `trace_id`), fragments, a forced
//! disconnect (TCP dropped, no Close), a reconnect instruction (a Close frame), and
//! Feishu's redelivery: a message not answered when a connection ends is sent again on
//! the next one.
//!
//! **Strict**: a text frame, an undecodable frame, a ping without `type: ping` or with
//! the wrong `service`, an answer to an unknown message, without `biz_rt`, or whose
//! payload is not `{"code", "headers", "data"?}` JSON is recorded in `violations`.
//! **It counts every call**: connections, pings and every answer.

use base64::Engine;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub const SERVICE_ID: i32 = 33554678;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbHeader {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbFrame {
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<PbHeader>,
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub payload: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

impl PbFrame {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == k)
            .map(|h| h.value.as_str())
    }
}

/// One answer perch sent to a data message.
#[derive(Debug, Clone)]
pub struct Answer {
    pub message_id: String,
    /// The `code` of the response payload (200 = handled).
    pub code: i64,
    /// `data`, base64-decoded and parsed (the handler's answer JSON).
    pub data: Option<Value>,
    pub biz_rt_ms: u64,
    /// From the first frame of the message to the answer.
    pub after: Duration,
    pub connection: usize,
}

enum Cmd {
    Send(Vec<u8>),
    /// A Close frame: the server tells the client to go away and come back.
    Close,
    /// The TCP connection dropped, no Close.
    Drop,
}

/// A message sent and not answered yet (redelivered on the next connection).
#[derive(Clone)]
struct Outgoing {
    frames: Vec<Vec<u8>>,
    sent_at: Instant,
}

#[derive(Default)]
pub struct WsState {
    pub connections: usize,
    pub pings: usize,
    pub answers: Vec<Answer>,
    pub violations: Vec<String>,
    /// Messages sent (or to be sent) and not answered yet, by message id.
    unanswered: BTreeMap<String, Outgoing>,
    current: Option<(usize, mpsc::Sender<Cmd>)>,
    /// The pong payload (a `ClientConfig`).
    pub pong_config: Value,
    seq: u64,
}

#[derive(Clone)]
pub struct FakeLongConnection {
    /// `ws://127.0.0.1:<port>/ws?device_id=…&service_id=…`, as the endpoint hands it out.
    pub url: String,
    pub state: Arc<Mutex<WsState>>,
}

impl FakeLongConnection {
    pub async fn start() -> FakeLongConnection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake long connection");
        let url = format!(
            "ws://{}/ws?device_id=dev-1&service_id={SERVICE_ID}",
            listener.local_addr().unwrap()
        );
        let state = Arc::new(Mutex::new(WsState {
            pong_config: json!({ "PingInterval": 1, "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0 }),
            ..Default::default()
        }));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, s.clone()));
            }
        });
        FakeLongConnection { url, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, WsState> {
        self.state.lock().unwrap()
    }

    /// Send `payload` as one data message of `kind` (`event`/`card`) split into `parts`
    /// fragments, sent in reverse order; returns its message id.
    pub fn send(&self, kind: &str, payload: &[u8], parts: usize) -> String {
        let mut s = self.lock();
        s.seq += 1;
        let id = format!("msg-{}", s.seq);
        let chunk = payload.len().div_ceil(parts.max(1)).max(1);
        let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
        let sum = pieces.len();
        let mut frames: Vec<Vec<u8>> = pieces
            .iter()
            .enumerate()
            .map(|(seq, piece)| {
                PbFrame {
                    seq_id: s.seq,
                    log_id: s.seq,
                    service: SERVICE_ID,
                    method: 1,
                    headers: [
                        ("type", kind.to_string()),
                        ("message_id", id.clone()),
                        ("sum", sum.to_string()),
                        ("seq", seq.to_string()),
                        ("trace_id", format!("trace-{id}")),
                        ("timestamp", "1700000000000".to_string()),
                    ]
                    .into_iter()
                    .map(|(k, v)| PbHeader {
                        key: k.into(),
                        value: v,
                    })
                    .collect(),
                    payload: Some(piece.to_vec()),
                    ..Default::default()
                }
                .encode_to_vec()
            })
            .collect();
        frames.reverse();
        let out = Outgoing {
            frames: frames.clone(),
            sent_at: Instant::now(),
        };
        s.unanswered.insert(id.clone(), out);
        if let Some((_, tx)) = &s.current {
            for f in frames {
                let _ = tx.try_send(Cmd::Send(f));
            }
        }
        id
    }

    /// Drop the TCP connection without a Close frame.
    pub fn force_disconnect(&self) {
        if let Some((_, tx)) = self.lock().current.take() {
            let _ = tx.try_send(Cmd::Drop);
        }
    }

    /// Tell the client to reconnect (a Close frame).
    pub fn reconnect_instruction(&self) {
        if let Some((_, tx)) = self.lock().current.take() {
            let _ = tx.try_send(Cmd::Close);
        }
    }

    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    pub fn answers_for(&self, message_id: &str) -> Vec<Answer> {
        self.lock()
            .answers
            .iter()
            .filter(|a| a.message_id == message_id)
            .cloned()
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }
}

/// The upgrade must carry the ids the endpoint handed out.
// The callback's signature is tungstenite's: its error type is what it is.
#[allow(clippy::result_large_err)]
fn check_upgrade(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    let q = req.uri().query().unwrap_or("");
    if q.contains("device_id=dev-1") && q.contains(&format!("service_id={SERVICE_ID}")) {
        Ok(resp)
    } else {
        let mut e = ErrorResponse::new(Some("missing device_id/service_id".into()));
        *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
        Err(e)
    }
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<Mutex<WsState>>) {
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, check_upgrade).await else {
        state
            .lock()
            .unwrap()
            .violations
            .push("upgrade refused".into());
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Cmd>(1024);
    let (conn, redeliver) = {
        let mut s = state.lock().unwrap();
        s.connections += 1;
        let conn = s.connections;
        s.current = Some((conn, tx));
        // Feishu delivers again what no connection answered.
        let redeliver: Vec<Vec<u8>> = s
            .unanswered
            .values()
            .flat_map(|o| o.frames.clone())
            .collect();
        (conn, redeliver)
    };
    for f in redeliver {
        if ws.send(Message::Binary(f.into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Send(f)) => {
                    if ws.send(Message::Binary(f.into())).await.is_err() { return; }
                }
                Some(Cmd::Close) => {
                    let _ = ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "reconnect".into() }))).await;
                    // Give the client a moment to see it, then hang up.
                    let _ = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
                    return;
                }
                Some(Cmd::Drop) | None => return, // dropping `ws` drops the TCP connection
            },
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { return };
                let bytes = match msg {
                    Message::Binary(b) => b,
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => continue,
                    other => {
                        state.lock().unwrap().violations.push(format!("non-binary frame: {other:?}"));
                        continue;
                    }
                };
                let frame = match PbFrame::decode(bytes.as_ref()) {
                    Ok(f) => f,
                    Err(e) => {
                        state.lock().unwrap().violations.push(format!("undecodable frame: {e}"));
                        continue;
                    }
                };
                if let Some(pong) = on_frame(&state, conn, frame)
                    && ws.send(Message::Binary(pong.into())).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Record one client frame; returns a pong to send.
fn on_frame(state: &Arc<Mutex<WsState>>, conn: usize, frame: PbFrame) -> Option<Vec<u8>> {
    let mut s = state.lock().unwrap();
    match frame.method {
        0 => {
            if frame.header("type") != Some("ping") || frame.service != SERVICE_ID {
                s.violations.push(format!("bad control frame: {frame:?}"));
                return None;
            }
            s.pings += 1;
            let pong = PbFrame {
                method: 0,
                service: SERVICE_ID,
                headers: vec![PbHeader {
                    key: "type".into(),
                    value: "pong".into(),
                }],
                payload: Some(s.pong_config.to_string().into_bytes()),
                ..Default::default()
            };
            Some(pong.encode_to_vec())
        }
        1 => {
            let id = frame.header("message_id").unwrap_or("").to_string();
            let Some(out) = s.unanswered.remove(&id) else {
                s.violations
                    .push(format!("answer to an unknown or answered message {id:?}"));
                return None;
            };
            let biz_rt = frame.header("biz_rt").and_then(|v| v.parse::<u64>().ok());
            let body: Option<Value> = frame
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_slice(p).ok());
            let (Some(biz_rt), Some(body)) = (biz_rt, body) else {
                s.violations
                    .push(format!("answer without biz_rt or JSON payload: {frame:?}"));
                return None;
            };
            let code = body["code"].as_i64();
            if code.is_none() || !body["headers"].is_object() {
                s.violations
                    .push(format!("answer payload is not a Response: {body}"));
            }
            let data = body["data"].as_str().map(|d| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(d)
                    .unwrap_or_default();
                serde_json::from_slice(&raw).unwrap_or(Value::Null)
            });
            s.answers.push(Answer {
                message_id: id,
                code: code.unwrap_or(-1),
                data,
                biz_rt_ms: biz_rt,
                after: out.sent_at.elapsed(),
                connection: conn,
            });
            None
        }
        m => {
            s.violations.push(format!("frame of unknown method {m}"));
            None
        }
    }
}
