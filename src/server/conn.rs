//! Serving connections: perch's own accept loop, so that slow and idle clients cannot
//! hold the server's resources (`axum::serve` has no timeouts and no connection cap).
//!
//! - **Connection cap** (`server.max_connections`): a semaphore permit per connection;
//!   at the cap perch stops accepting, and new connections wait in the listen backlog.
//! - **Header read timeout** (`server.header_read_timeout`): hyper's HTTP/1 timer,
//!   which runs whenever hyper waits for a request head: trickled headers, and idle
//!   keep-alive connections between requests.
//! - **Body read timeout** (`server.body_read_timeout`): a deadline for the whole body,
//!   applied by `read_body_within` (a layer of the app): a trickled body gets 408.
//! - **Idle timeout** (`server.idle_timeout`): a watchdog closes a connection that has no
//!   request in progress and has sent nothing for that long; it covers what hyper's
//!   timer does not (a client that never sends a byte while the protocol is being
//!   detected, an idle HTTP/2 connection).

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The limits on clients' connections (`[server]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        ConnectionLimits {
            header_read_timeout: server.header_read_timeout,
            body_read_timeout: server.body_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections: server.max_connections,
        }
    }
}

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting, let the
/// open connections finish their requests (the limits still apply) and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let (app, stop) = (app.clone(), stop.clone());
        connections.spawn(async move {
            serve_connection(stream, peer, app, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// When the connection last read bytes, and how many requests are in progress on it.
struct Activity {
    start: tokio::time::Instant,
    last_read_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }
    /// When the connection counts as idle if nothing happens before.
    fn idle_at(&self, idle: Duration) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed)) + idle
    }
}

/// Counts a request as in progress until its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity {
        start: tokio::time::Instant::now(),
        last_read_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut req: Request<hyper::body::Incoming>| {
            let guard = InFlight::new(&activity);
            let app = app.clone();
            // The peer's address: `[auth] proxy_addresses` trusts a header by it.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            async move {
                let res = app.oneshot(req.map(Body::new)).await?;
                // The request stays in progress until its body is sent: a long
                // response (the web chat's event stream) is not idleness.
                let (parts, body) = res.into_parts();
                let body = Body::new(Guarded {
                    inner: body,
                    _guard: guard,
                });
                Ok::<_, std::convert::Infallible>(Response::from_parts(parts, body))
            }
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let idle_at = activity.idle_at(limits.idle_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                if activity.in_flight.load(Ordering::SeqCst) == 0
                    && activity.idle_at(limits.idle_timeout) <= tokio::time::Instant::now()
                {
                    tracing::debug!("closing an idle connection");
                    return;
                }
                // Busy: look again one idle period from now.
                if activity.in_flight.load(Ordering::SeqCst) > 0 {
                    activity.touch();
                }
            }
        }
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A TCP stream that records when it last read bytes.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Limits for `read_body_within`.
#[derive(Debug, Clone, Copy)]
pub struct BodyRead {
    pub timeout: Duration,
    pub limit: usize,
}

/// Read the whole request body within `server.body_read_timeout` (a deadline for all
/// of it, not per chunk: a body trickled a byte at a time gets no more time) and at
/// most `server.body_limit` bytes, before the handler runs. Handlers read bodies whole
/// anyway; this bounds how long a slow client can hold a request.
pub async fn read_body_within(
    axum::extract::State(limits): axum::extract::State<BodyRead>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limits.limit);
    match tokio::time::timeout(limits.timeout, limited.collect()).await {
        Ok(Ok(collected)) => {
            next.run(Request::from_parts(parts, Body::from(collected.to_bytes())))
                .await
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => super::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body is larger than the configured limit (server.body_limit)",
        )
        .into_response(),
        Ok(Err(e)) => super::ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "cannot read body: {}",
                crate::telemetry::escape(&e.to_string())
            ),
        )
        .into_response(),
        Err(_) => {
            let mut res = super::ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "body not received within {:?} (server.body_read_timeout)",
                    limits.timeout
                ),
            )
            .into_response();
            // The rest of the body may still be coming: do not read it, close.
            res.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            res
        }
    }
}
