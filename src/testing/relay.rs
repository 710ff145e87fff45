//! A relay under load, for the process tests (crash, replicas): a sink that counts
//! deliveries by idempotency key, a loader that posts signed events per chat, and the
//! journal read back through the admin API.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One delivery as the sink saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub key: String,
    /// The chat it went to and the event's sequence number in that chat.
    pub chat: String,
    pub seq: u64,
    pub at: std::time::Instant,
}

#[derive(Default, Clone)]
pub struct Sink {
    /// Idempotency key → how many times it arrived.
    pub keys: HashMap<String, usize>,
    /// Every delivery, in arrival order.
    pub log: Vec<Delivery>,
}

pub async fn start_sink() -> (String, Arc<Mutex<Sink>>) {
    let sink = Arc::new(Mutex::new(Sink::default()));
    let app =
        axum::Router::new()
            .route(
                "/send",
                post(
                    |State(s): State<Arc<Mutex<Sink>>>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        if let Some(why) = crate::testing::malformed(&headers, body.len()) {
                            panic!("malformed delivery: {why}");
                        }
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let op: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        // The relay bot's text is `<chat> <seq>`.
                        let text = op["body"]["text"].as_str().unwrap_or("").to_string();
                        let (chat, seq) = text.split_once(' ').unwrap_or(("", "0"));
                        let mut s = s.lock().unwrap();
                        *s.keys.entry(key.clone()).or_default() += 1;
                        s.log.push(Delivery {
                            key,
                            chat: chat.to_string(),
                            seq: seq.parse().unwrap_or(0),
                            at: std::time::Instant::now(),
                        });
                        axum::Json(serde_json::json!({"id": "ok"}))
                    },
                ),
            )
            .with_state(sink.clone());
    let url = crate::testing::serve_fake(app).await;
    (url, sink)
}

/// What a loader got acknowledged: the event id, its chat and sequence number.
pub type Acked = (String, String, u64);

/// Post events signed with `secret` from one task per chat (so each chat's events have
/// an order) until `stop`; returns what was acknowledged. Sequence numbers grow across
/// rounds. With several `bases` (replicas behind a load balancer) the requests take
/// turns, and a request that fails is tried on the next base, as a balancer would; a
/// chat's task stops when every base failed it (killed mid-request: not acknowledged,
/// so no promise was made).
pub async fn load(
    bases: Vec<String>,
    secret: &'static str,
    chats: usize,
    stop: tokio_util::sync::CancellationToken,
    round: usize,
) -> Vec<Acked> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..chats {
        let (bases, stop, acked) = (bases.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let chat = format!("chat{w}");
            let mut n = 0u64;
            'posting: while !stop.is_cancelled() {
                n += 1;
                let seq = round as u64 * 1_000_000 + n;
                let body = format!(r#"{{"chat":"{chat}","n":"{chat} {seq}"}}"#);
                let sig = crate::testing::sign(secret, body.as_bytes());
                for attempt in 0..bases.len() {
                    let base = &bases[(w + n as usize + attempt) % bases.len()];
                    let resp = client
                        .post(format!("{base}/hooks/in"))
                        .header("X-Topic", "crash.test")
                        .header("X-Delivery", format!("{chat}-{seq}"))
                        .header("X-Signature", format!("sha256={sig}"))
                        .body(body.clone())
                        .send()
                        .await;
                    if let Ok(r) = resp
                        && r.status() == 200
                    {
                        let v: Value = r.json().await.unwrap();
                        acked.lock().unwrap().push((
                            v["event_id"].as_str().unwrap().to_string(),
                            chat.clone(),
                            seq,
                        ));
                        continue 'posting;
                    }
                }
                break;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

pub async fn all_events(base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/events?limit=1000");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        before = events.last().unwrap()["event"]["id"]
            .as_str()
            .map(str::to_string);
        out.extend(events);
    }
}

/// Wait (up to 30 s) until no event is pending and the outbox is empty.
pub async fn wait_settled(base: &str) {
    let mut settled = false;
    for _ in 0..1500 {
        let s: Value = reqwest::get(format!("{base}/api/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["pending_events"] == 0 && s["outbox_depth"] == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(settled, "pending events and outbox drained after restart");
}

/// The promises of the relay under kills, checked on the journal (`all_events`), what
/// was acknowledged and what the sink saw: every acknowledged event is journaled, every
/// journaled event was routed and delivered under one key, first deliveries of a chat
/// arrive in acknowledgement order, and a key arrived twice only if first confirmed at
/// most `repeat_bound` before a kill (on the wire when it landed). Returns how many
/// events were journaled, how many deliveries were repeats, and the oldest repeat's age.
pub fn check_delivered_once(
    events: &[Value],
    acked: &[Acked],
    sink: &Sink,
    killed_at: &[std::time::Instant],
    repeat_bound: Duration,
) -> (usize, usize, Duration) {
    let journal: HashSet<String> = events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect();
    for (id, _, _) in acked {
        assert!(
            journal.contains(id),
            "acknowledged event {id} is in the journal after SIGKILL"
        );
    }
    for e in events {
        assert_eq!(e["fate"]["state"], "routed", "every event was handled: {e}");
    }
    // One key per event: an event delivered under two keys would be a real double.
    let mut keys_of: HashMap<&str, HashSet<&str>> = HashMap::new();
    for key in sink.keys.keys() {
        keys_of
            .entry(key.split('/').next().unwrap())
            .or_default()
            .insert(key.as_str());
    }
    for (event, keys) in &keys_of {
        assert_eq!(keys.len(), 1, "event {event} was delivered under {keys:?}");
        assert!(
            journal.contains(*event),
            "delivered event {event} is journaled"
        );
    }
    for id in &journal {
        assert!(
            keys_of.contains_key(id.as_str()),
            "event {id} was delivered"
        );
    }
    // Per-chat order among acknowledged events: their first deliveries arrive in the
    // order they were acknowledged.
    let acked_ids: HashSet<&str> = acked.iter().map(|(id, _, _)| id.as_str()).collect();
    let mut first_seen: HashSet<&str> = HashSet::new();
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    for d in &sink.log {
        let event = d.key.split('/').next().unwrap();
        if !first_seen.insert(&d.key) || !acked_ids.contains(event) {
            continue;
        }
        let last = last_seq.entry(d.chat.as_str()).or_default();
        assert!(
            d.seq > *last,
            "{}: #{} arrived after #{}",
            d.chat,
            d.seq,
            *last
        );
        *last = d.seq;
    }
    // Repeats: only deliveries confirmed just before a kill.
    let mut repeats = 0;
    let mut oldest = Duration::ZERO;
    for (key, n) in &sink.keys {
        if *n < 2 {
            continue;
        }
        repeats += n - 1;
        let first = sink.log.iter().find(|d| &d.key == key).unwrap().at;
        // A SIGKILL takes a moment to land: a request already written by perch may
        // reach the sink just after the kill was sent. Such a delivery is on the wire.
        let kill = killed_at
            .iter()
            .find(|k| **k + Duration::from_millis(50) >= first)
            .expect("a repeated delivery was first confirmed before a kill");
        let age = kill.saturating_duration_since(first);
        oldest = oldest.max(age);
        assert!(
            age <= repeat_bound,
            "{key} was confirmed {age:?} before a kill and sent again after it"
        );
    }
    (journal.len(), repeats, oldest)
}
