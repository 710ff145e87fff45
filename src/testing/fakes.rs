//! Fakes and waits for tests: serve a fake platform or sink, the strict gateway every
//! fake puts in front of its handlers (a malformed request fails the test instead of
//! passing a lenient fake), wiremock helpers, a Server-Sent Events reader, and polling
//! waits with a deadline.

use std::time::Duration;

/// Poll `check` every 20 ms until it returns `Some`, or panic after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (up to `secs`) until `get` returns at least `n` things (messages at a fake
/// platform, requests at a sink); return them.
pub async fn at_least<T, F>(secs: u64, n: usize, what: &str, get: F) -> Vec<T>
where
    F: Fn() -> Vec<T>,
{
    eventually(secs, &format!("{n} {what}"), || {
        let got = get();
        async move { (got.len() >= n).then_some(got) }
    })
    .await
}

/// Serve `app` (a fake platform or sink) on 127.0.0.1 and a free port, in the
/// background; its base URL, `http://127.0.0.1:<port>`.
pub async fn serve_fake(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a fake on 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().expect("a bound address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// One call a fake platform recorded, as `calls_inside_waits` sees it.
pub struct Seen {
    pub at: std::time::Instant,
    /// The wait the fake ordered with its answer (a 429's reset or Retry-After).
    pub ordered_wait: Option<Duration>,
    /// Whether the platform's limit covers this call.
    pub limited: bool,
    pub name: String,
}

/// Calls that arrived while an earlier answer said to wait: a client that honours rate
/// limits makes none. Requests already on the wire when the 429 was answered cannot be
/// called back, so a window opens 100 ms after its call. Pairs of (the call that was
/// told to wait, a call inside its window), by name.
pub fn calls_inside_waits(calls: &[Seen]) -> Vec<(String, String)> {
    let mut inside = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        let Some(wait) = c.ordered_wait else {
            continue;
        };
        let (from, until) = (c.at + Duration::from_millis(100), c.at + wait);
        for later in &calls[i + 1..] {
            if later.limited && later.at > from && later.at < until {
                inside.push((c.name.clone(), later.name.clone()));
            }
        }
    }
    inside
}

/// `calls_inside_waits` over a fake's own call records, each seen through `seen`.
pub fn calls_inside_waits_by<C>(calls: &[C], seen: impl Fn(&C) -> Seen) -> Vec<(String, String)> {
    calls_inside_waits(&calls.iter().map(seen).collect::<Vec<_>>())
}

/// Headers a request may carry once (RFC 9110 §5.3: a repeated singleton is malformed).
pub const SINGLETON_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "authorization",
    "host",
    "idempotency-key",
];

/// Why a strict server (a production API gateway) would refuse a request before any
/// handler runs, or `None`: a repeated singleton header, or a body without a JSON
/// Content-Type. Every fake platform in `tests/` applies it, so a malformed request
/// fails a test instead of passing a lenient fake.
pub fn malformed(headers: &axum::http::HeaderMap, body_len: usize) -> Option<String> {
    for name in SINGLETON_HEADERS {
        let n = headers.get_all(name).iter().count();
        if n > 1 {
            return Some(format!("header {name} appears {n} times"));
        }
    }
    if body_len > 0 {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Some(format!(
                "a body with content-type {ct:?}, not application/json"
            ));
        }
    }
    None
}

/// The gateway in front of every fake platform: the request, whole, if a strict server
/// would take it; else why not ("POST /path: header content-type appears 2 times") and
/// the gateway's answer (400, an HTML page, not the platform's JSON envelope).
pub async fn gateway_admits(
    req: axum::extract::Request,
) -> Result<axum::extract::Request, (String, axum::response::Response)> {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        let why = format!("{} {}: body too large", parts.method, parts.uri.path());
        return Err((
            why,
            (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response(),
        ));
    };
    if let Some(why) = malformed(&parts.headers, bytes.len()) {
        let why = format!("{} {}: {why}", parts.method, parts.uri.path());
        let refusal = (
            axum::http::StatusCode::BAD_REQUEST,
            "<html><body>400 Bad Request</body></html>",
        )
            .into_response();
        return Err((why, refusal));
    }
    Ok(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
}

/// A fake platform's state that keeps the requests its gateway refused.
pub trait RecordsRefusals: Send + 'static {
    /// Where the refusals go, in arrival order ("POST /path: why").
    fn refused(&mut self) -> &mut Vec<String>;
}

/// The strict gateway as an axum middleware, for every fake platform:
/// `.layer(axum::middleware::from_fn_with_state(state.clone(), strict_gateway::<FakeState>))`.
/// It refuses what [`gateway_admits`] refuses, before any handler, and records why.
pub async fn strict_gateway<S: RecordsRefusals>(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<std::sync::Mutex<S>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match gateway_admits(req).await {
        Ok(req) => next.run(req).await,
        Err((why, refusal)) => {
            // A test that panicked while holding the lock still wants the record.
            let mut state = state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.refused().push(why);
            refusal
        }
    }
}

/// The JSON bodies a wiremock server received, in arrival order. Panics on a request a
/// strict server would have refused (`malformed`).
pub async fn received_json(server: &wiremock::MockServer) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            if let Some(why) = malformed(&r.headers, r.body.len()) {
                panic!("{} {}: malformed request: {why}", r.method, r.url);
            }
            serde_json::from_slice(&r.body).expect("a JSON body")
        })
        .collect()
}

/// Wait (up to 10 s) until `server` has received at least `n` JSON bodies; return them.
pub async fn wait_received(server: &wiremock::MockServer, n: usize) -> Vec<serde_json::Value> {
    eventually(
        10,
        &format!("{n} requests at the fake endpoint"),
        || async {
            let got = received_json(server).await;
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

/// An SSE connection (the web chat's live stream, the console's live events), read
/// chunk by chunk.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// Send `request`, expect 200, and read until the stream's first `hello`.
    pub async fn open(request: reqwest::RequestBuilder) -> Sse {
        let resp = request.send().await.expect("stream");
        assert_eq!(resp.status(), 200, "the stream opens");
        let mut s = Sse {
            resp,
            buf: String::new(),
        };
        s.until("event: hello").await;
        s
    }

    /// Read until the stream has shown `needle`; returns everything read so far.
    pub async fn until(&mut self, needle: &str) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.buf.contains(needle) {
                match self.resp.chunk().await.expect("stream chunk") {
                    Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                    None => panic!("stream ended before {needle:?}; got {}", self.buf),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} on the stream; got {}", self.buf));
        self.buf.clone()
    }

    /// Everything read so far.
    pub fn seen(&self) -> &str {
        &self.buf
    }
}

/// A fake endpoint that answers `first` to the first `times` requests of `method`, then
/// `then`: a platform that fails for a while.
pub async fn fails_then(
    method: &str,
    first: wiremock::ResponseTemplate,
    times: u64,
    then: wiremock::ResponseTemplate,
) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method(method))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::method(method))
        .respond_with(then)
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A fake's state: what its gateway refused, and how often its one handler ran.
    #[derive(Default)]
    struct GatedState {
        refused: Vec<String>,
        handled: usize,
    }

    impl RecordsRefusals for GatedState {
        fn refused(&mut self) -> &mut Vec<String> {
            &mut self.refused
        }
    }

    #[tokio::test]
    async fn the_strict_gateway_refuses_and_records_before_any_handler() {
        let state = Arc::new(Mutex::new(GatedState::default()));
        let handler_state = state.clone();
        let app = axum::Router::new()
            .route(
                "/send",
                axum::routing::post(move || async move {
                    handler_state.lock().unwrap().handled += 1;
                    "ok"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                strict_gateway::<GatedState>,
            ));
        let url = format!("{}/send", serve_fake(app).await);
        let http = reqwest::Client::new();
        let json = "application/json";

        // A repeated singleton header, and a body that is not JSON: 400, recorded, unhandled.
        let twice = http
            .post(&url)
            .header("content-type", json)
            .header("content-type", json)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(twice.status(), 400);
        let form = http.post(&url).body("a=1").send().await.unwrap();
        assert_eq!(form.status(), 400);
        {
            let seen = state.lock().unwrap();
            assert_eq!(seen.handled, 0, "no handler ran for a refused request");
            assert_eq!(
                seen.refused,
                vec![
                    "POST /send: header content-type appears 2 times".to_string(),
                    "POST /send: a body with content-type \"\", not application/json".to_string(),
                ]
            );
        }

        // A well-formed request reaches the handler with its body whole.
        let fine = http
            .post(&url)
            .header("content-type", json)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(fine.status(), 200);
        let seen = state.lock().unwrap();
        assert_eq!((seen.handled, seen.refused.len()), (1, 2));
    }
}
