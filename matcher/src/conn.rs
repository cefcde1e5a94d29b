//! The connection layer: our own accept loop over hyper's HTTP/1 server, because `axum::serve`
//! exposes no connection limit and no header or idle timeout.
//!
//! - At most `limits.max_connections` connections are open; one beyond it is answered 503
//!   `overloaded` (the standard JSON envelope, without a request id) and closed at once.
//! - A new connection must send a complete request head within `header_read_timeout_ms` of being
//!   accepted; a later head must be complete within `header_read_timeout_ms` of its first byte;
//!   a keep-alive connection with no request begun `idle_timeout_ms` after its last response is
//!   closed. [`TimedIo`] enforces these on the socket's reads, knowing from the service wrapper
//!   whether a request is in flight (then the body rules of [`crate::middleware::read_body`] and
//!   the request timeout apply instead). hyper's own `header_read_timeout` (with `TokioTimer`)
//!   stays on as a backstop at the sum of both.
//! - Shutdown: stop accepting, let every connection finish the requests it has in flight
//!   (hyper's graceful shutdown: idle ones close at once), then return.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The connection limits, from `[limits]`.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry_after_s: u64,
    /// How long shutdown waits for connections to finish their requests in flight.
    pub drain_timeout: Duration,
}

impl ConnLimits {
    pub fn from_config(l: &crate::config::Limits) -> Self {
        let ms = Duration::from_millis;
        ConnLimits {
            max_connections: l.max_connections,
            header_read_timeout: ms(l.header_read_timeout_ms),
            idle_timeout: ms(l.idle_timeout_ms),
            retry_after_s: l.retry_after_s,
            drain_timeout: ms(l.request_timeout_ms + l.body_timeout_ms + l.header_read_timeout_ms)
                + Duration::from_secs(5),
        }
    }
}

/// What the service wrapper tells the socket reader: whether a request is in flight, and since
/// when the connection has been waiting for the next one. Times are ms since `epoch`.
#[derive(Debug)]
struct ConnClock {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Responses sent on this connection.
    served: AtomicU64,
    /// When the connection became idle (accepted, or its last response was produced).
    idle_since: AtomicU64,
    /// First byte of the next request head (`u64::MAX`: none yet).
    head_since: AtomicU64,
}

impl ConnClock {
    fn new() -> Self {
        ConnClock {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(u64::MAX),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(u64::MAX, Ordering::SeqCst);
    }

    fn end(&self) {
        self.served.fetch_add(1, Ordering::SeqCst);
        self.idle_since.store(self.now(), Ordering::SeqCst);
        self.head_since.store(u64::MAX, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ends a request on the clock when dropped (answered, or dropped with the connection).
struct InFlight(Arc<ConnClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A socket whose reads fail with `TimedOut` when the connection waits too long for a request
/// head (see the module docs). Writes pass through.
struct TimedIo {
    io: TcpStream,
    clock: Arc<ConnClock>,
    header: u64,
    idle: u64,
    sleep: Pin<Box<Sleep>>,
}

impl TimedIo {
    /// The deadline (ms since the clock's epoch) for the next head, if no request is in flight.
    fn deadline(&self) -> Option<u64> {
        let c = &self.clock;
        if c.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let head = c.head_since.load(Ordering::SeqCst);
        Some(if head != u64::MAX {
            head + self.header
        } else if c.served.load(Ordering::SeqCst) == 0 {
            c.idle_since.load(Ordering::SeqCst) + self.header
        } else {
            c.idle_since.load(Ordering::SeqCst) + self.idle
        })
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let c = &self.clock;
                if buf.filled().len() > before
                    && c.in_flight.load(Ordering::SeqCst) == 0
                    && c.head_since.load(Ordering::SeqCst) == u64::MAX
                {
                    c.head_since.store(c.now(), Ordering::SeqCst);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = self.deadline() else { return Poll::Pending };
                let at = self.clock.epoch + Duration::from_millis(deadline);
                if Instant::now() >= at {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head in time",
                    )));
                }
                self.sleep.as_mut().reset(at);
                if self.sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting and wait (at most
/// `drain_timeout`) for the open connections to finish their requests in flight.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let app = app.clone();
                let limits = limits.clone();
                let drain = drain_rx.clone();
                tokio::spawn(async move {
                    serve_one(stream, app, &limits, drain).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream, limits.retry_after_s));
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all)).await.is_err() {
        tracing::warn!(
            open = limits.max_connections - slots.available_permits(),
            "connections still open after the drain timeout: closing them"
        );
    }
    Ok(())
}

async fn serve_one(
    stream: TcpStream,
    app: Router,
    limits: &ConnLimits,
    mut drain: watch::Receiver<bool>,
) {
    let clock = Arc::new(ConnClock::new());
    let io = TimedIo {
        io: stream,
        clock: clock.clone(),
        header: limits.header_read_timeout.as_millis() as u64,
        idle: limits.idle_timeout.as_millis() as u64,
        sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        clock.begin();
        let guard = InFlight(clock.clone());
        async move {
            let r = app.oneshot(req.map(Body::new)).await;
            drop(guard);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout + limits.idle_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection closed");
                }
                return;
            }
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answer a connection over the limit with 503 and close it.
async fn refuse(mut stream: TcpStream, retry_after_s: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"code":"overloaded","message":"too many open connections; retry later","request_id":""}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {retry_after_s}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent so that closing does not reset the connection before it
        // has read the answer.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}
