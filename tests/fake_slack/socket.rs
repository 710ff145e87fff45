//! A fake Slack Socket Mode server, written from Slack's SDKs (python-slack-sdk
//! `slack_sdk/socket_mode/`) and not from perch's code. `FakeSlack` hands out its URL
//! from `apps.connections.open` (which checks the app-level token).
//!
//! It speaks: the WebSocket upgrade (refused without the `ticket` the URL carries),
//! `hello` first, envelopes `{"envelope_id","type","payload","retry_attempt",…}`, and
//! `{"type":"disconnect","reason":"refresh_requested"}` then a close. Like Slack, an
//! envelope not acknowledged when a connection ends is sent again on the next one,
//! with `retry_attempt` raised.
//!
//! **Strict**: an acknowledgement that is not JSON, has keys other than `envelope_id`
//! and `payload`, or names an envelope that was never sent (or was acknowledged already)
//! is recorded in `violations`. **It counts** connections and every acknowledgement.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

pub const TICKET: &str = "fake-ticket";

#[derive(Debug, Default)]
pub struct SocketState {
    pub connections: usize,
    /// Envelopes sent and not yet acknowledged, in order: (id, type, payload, attempts).
    pub unacked: Vec<(String, String, Value, u32)>,
    /// Envelope ids in the order they were acknowledged.
    pub acks: Vec<String>,
    pub violations: Vec<String>,
    /// The live connection's outgoing queue.
    live: Option<mpsc::UnboundedSender<Message>>,
    seq: u64,
}

#[derive(Clone)]
pub struct FakeSocket {
    /// `ws://127.0.0.1:<port>/link/?ticket=…`
    pub url: String,
    pub state: Arc<Mutex<SocketState>>,
}

impl FakeSocket {
    pub async fn start() -> FakeSocket {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "ws://{}/link/?ticket={TICKET}",
            listener.local_addr().unwrap()
        );
        let state: Arc<Mutex<SocketState>> = Arc::default();
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, s.clone()));
            }
        });
        FakeSocket { url, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, SocketState> {
        self.state.lock().unwrap()
    }

    /// Send an envelope of `kind` (`events_api`, `interactive`) on the live connection
    /// (or on the next one); its id.
    pub fn push(&self, kind: &str, payload: Value) -> String {
        let mut st = self.lock();
        st.seq += 1;
        let id = format!("env-{}", st.seq);
        st.unacked
            .push((id.clone(), kind.to_string(), payload.clone(), 0));
        if let Some(tx) = &st.live {
            let _ = tx.send(Message::Text(envelope(&id, kind, &payload, 0).into()));
        }
        id
    }

    /// Ask the client to reconnect, as Slack does when it refreshes connections.
    pub fn disconnect(&self) {
        if let Some(tx) = self.lock().live.take() {
            let _ = tx.send(Message::Text(
                json!({ "type": "disconnect", "reason": "refresh_requested" })
                    .to_string()
                    .into(),
            ));
            let _ = tx.send(Message::Close(None));
        }
    }

    pub fn acks(&self) -> Vec<String> {
        self.lock().acks.clone()
    }
    pub fn connections(&self) -> usize {
        self.lock().connections
    }
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }
}

fn envelope(id: &str, kind: &str, payload: &Value, attempt: u32) -> String {
    json!({
        "envelope_id": id, "type": kind, "payload": payload,
        "accepts_response_payload": false, "retry_attempt": attempt,
        "retry_reason": if attempt > 0 { "timeout" } else { "" },
    })
    .to_string()
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<Mutex<SocketState>>) {
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().query() == Some(&format!("ticket={TICKET}")) {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("no ticket".into()));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
            Err(e)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
        state.lock().unwrap().violations.push("bad upgrade".into());
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    {
        let mut st = state.lock().unwrap();
        st.connections += 1;
        let _ = tx.send(Message::Text(
            json!({ "type": "hello", "num_connections": 1,
                    "connection_info": { "app_id": "A_PERCH" } })
            .to_string()
            .into(),
        ));
        // Redelivery of what the last connection left unacknowledged.
        for (id, kind, payload, attempts) in st.unacked.iter_mut() {
            *attempts += 1;
            let _ = tx.send(Message::Text(envelope(id, kind, payload, *attempts).into()));
        }
        st.live = Some(tx);
    }
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    while let Some(Ok(m)) = stream.next().await {
        let Message::Text(text) = m else { continue };
        let mut st = state.lock().unwrap();
        let Ok(doc) = serde_json::from_str::<Value>(&text) else {
            st.violations.push(format!("not JSON: {text}"));
            continue;
        };
        let keys_ok = doc
            .as_object()
            .is_some_and(|o| o.keys().all(|k| k == "envelope_id" || k == "payload"));
        let id = doc.get("envelope_id").and_then(Value::as_str).unwrap_or("");
        match st.unacked.iter().position(|(e, ..)| e == id) {
            Some(i) if keys_ok => {
                st.unacked.remove(i);
                st.acks.push(id.to_string());
            }
            _ => st.violations.push(format!("bad ack: {text}")),
        }
    }
    writer.abort();
}
