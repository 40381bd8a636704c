//! The traffic listener: accept loop, connection limit, optional TLS/mTLS,
//! HTTP/1.1 and HTTP/2 (prior-knowledge h2c on plaintext, ALPN on TLS) on one
//! port, head-size limits, slow-header and idle cut-offs, graceful draining.
//!
//! Timing is ours, not hyper's, so the two limits stay distinct: a
//! connection with no request in progress is closed after `idle_timeout`; once
//! a byte of a new request arrives, the whole head must follow within
//! `header_timeout` (slowloris). Excess connections beyond `max_connections`
//! are closed at once; accept errors such as EMFILE back off instead of
//! spinning. A response write that stays blocked for `write_idle_timeout`
//! (a client that stopped reading) drops the connection, so a slow reader
//! cannot pin a response and its upstream connection forever. The TLS
//! handshake must complete within `header_timeout` (a stalled ClientHello is
//! a slowloris on the handshake). Each handshake uses the server config in
//! force when the connection was accepted (`tls::LiveServerConfig`), so a
//! certificate reload reaches new connections and leaves open ones alone.

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::ListenerConfig;
use crate::metrics::{ConnClose, ConnMetrics};
use crate::tls::LiveServerConfig;

/// What the listener serves: one request in, one response out (refusals
/// are responses too). The traffic listener serves the request pipeline.
pub(crate) trait Handler: Clone + Send + Sync + 'static {
    type Body: hyper::body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;
    /// Called on a clone per request (a handler is a few `Arc`s).
    fn call(
        self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the listener knows about a connection, shared by its requests.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// TCP peer, IPv4-mapped IPv6 normalized to IPv4.
    pub peer: SocketAddr,
    /// SAN URIs and DNS names of a verified client certificate (mTLS), typed.
    pub identities: Option<Arc<[crate::identity::Identity]>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr) -> Self {
        ConnInfo {
            peer: SocketAddr::new(crate::allowlist::normalize(peer.ip()), peer.port()),
            identities: None,
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.peer.ip()
    }
}

/// Pause after an accept error (EMFILE, ENFILE, ENOBUFS) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// HTTP/2: stream errors the gateway itself may reset on one connection
/// before it sends GOAWAY (a client provoking errors on purpose).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// At shutdown, how many connections already in the accept queue are still
/// taken in and drained (a bound under a connection flood).
const LATE_ACCEPTS: usize = 1024;
/// After a graceful close (GOAWAY / Connection: close) of an idle
/// connection, how long the peer gets before the socket is dropped.
const GRACEFUL_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Per-listener settings, fixed at start (a change needs a restart).
#[derive(Clone)]
pub struct Settings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub write_idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
}

impl From<&ListenerConfig> for Settings {
    fn from(c: &ListenerConfig) -> Self {
        Settings {
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
            max_headers: c.max_headers,
            max_header_bytes: c.max_header_bytes,
            max_connections: c.max_connections,
            write_idle_timeout: c.write_idle_timeout,
            h2_max_concurrent_streams: c.h2_max_concurrent_streams,
            h2_max_pending_resets: c.h2_max_pending_resets,
        }
    }
}

fn builder(s: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .max_headers(s.max_headers)
        .max_buf_size(s.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid-reset (CVE-2023-44487) bounds, made explicit.
        .max_pending_accept_reset_streams(s.h2_max_pending_resets)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    b
}

/// Run the accept loop until `stop`; then stop accepting and let open
/// connections finish their in-flight requests for up to `drain`. Returns
/// whether every connection finished in time.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<LiveServerConfig>,
    handler: H,
    metrics: ConnMetrics,
    settings: Settings,
    stop: CancellationToken,
    drain: Duration,
) -> bool {
    let builder = Arc::new(builder(&settings));
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let tracker = TaskTracker::new();
    // Cancelled when the drain period is over: remaining connections are dropped.
    let force = CancellationToken::new();
    // Consecutive accept errors: logged when they start and when they end,
    // not once per back-off (EMFILE would write 20 lines a second).
    let mut accept_failures: u64 = 0;
    // After `stop`: connections the kernel completed before it wait in the
    // accept queue, their requests possibly sent; closing the listener
    // would reset them. Take in what is queued (without waiting for more,
    // at most `LATE_ACCEPTS`) and drain those too.
    let mut late: Option<usize> = None;
    let mut listener = Some(listener);
    let mut queued: Option<std::net::TcpListener> = None;
    loop {
        let accepted = match (late, listener.as_ref()) {
            (Some(n), _) => {
                if n >= LATE_ACCEPTS {
                    break;
                }
                // Ask the kernel directly: the runtime's cached readiness may
                // not have seen the last connections yet (a loaded reactor),
                // and closing over them would reset requests already sent.
                if queued.is_none() {
                    match listener.take().map(TcpListener::into_std) {
                        Some(Ok(l)) => queued = Some(l),
                        _ => break,
                    }
                }
                let Some(Ok((s, peer))) = queued.as_ref().map(std::net::TcpListener::accept) else {
                    break;
                };
                late = Some(n + 1);
                s.set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(s))
                    .map(|s| (s, peer))
            }
            (None, Some(l)) => tokio::select! {
                _ = stop.cancelled() => {
                    late = Some(0);
                    continue;
                }
                a = l.accept() => a,
            },
            (None, None) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                metrics.accept_errors.inc();
                if accept_failures == 0 {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                accept_failures += 1;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if accept_failures > 0 {
            tracing::info!(failures = accept_failures, "accepting again after accept errors");
            accept_failures = 0;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.closed(ConnClose::Limit);
            tracing::debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let metrics = metrics.clone();
        let builder = builder.clone();
        let settings = settings.clone();
        let tls = tls.clone();
        let (stop, force) = (stop.clone(), force.clone());
        tracker.spawn(async move {
            let _permit = permit;
            metrics.open.inc();
            let conn = ConnInfo::new(peer);
            let ctx = ConnCtx {
                builder: &builder,
                settings: &settings,
                metrics: &metrics,
                stop,
                force,
            };
            match tls {
                None => serve_conn(ctx, stream, conn, handler).await,
                // The server config as it is now: a certificate reload
                // reaches the connections accepted after it.
                Some(live) => match handshake(
                    TlsAcceptor::from(live.load_full()),
                    stream,
                    conn,
                    settings.header_timeout,
                )
                .await
                {
                    Ok((tls_stream, conn)) => serve_conn(ctx, tls_stream, conn, handler).await,
                    Err(why) => metrics.closed(why),
                },
            }
            metrics.open.dec();
        });
    }
    drop((listener, queued));
    tracker.close();
    let drained = tokio::time::timeout(drain, tracker.wait()).await.is_ok();
    if drained {
        tracing::info!("all connections drained");
    } else {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "drain timeout; closing remaining connections"
        );
        force.cancel();
        tracker.wait().await;
    }
    drained
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    mut conn: ConnInfo,
    timeout: Duration,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo), ConnClose> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            if let Some(certs) = s.get_ref().1.peer_certificates() {
                conn.identities = certs.first().map(|c| crate::identity::san_identities(c).into());
            }
            Ok((s, conn))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake refused");
            Err(ConnClose::TlsHandshake)
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            Err(ConnClose::TlsHandshake)
        }
    }
}

/// What the connection is doing, shared by its IO wrapper and its requests.
struct Activity {
    origin: Instant,
    /// Milliseconds since `origin` of the last byte read or written.
    last_io: AtomicU64,
    /// Milliseconds since `origin` (+1) when a new request's first byte came
    /// in while idle; 0 when no head is being received.
    head_started: AtomicU64,
    inflight: AtomicUsize,
    /// Milliseconds since `origin` (+1) when a write first found the socket
    /// full; 0 while writes go through.
    write_blocked: AtomicU64,
    /// Whether a request has begun on this connection.
    served: AtomicBool,
    /// Response bodies being sent now, and when one was last asked for more.
    bodies: AtomicUsize,
    body_polled: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            write_blocked: AtomicU64::new(0),
            served: AtomicBool::new(false),
            bodies: AtomicUsize::new(0),
            body_polled: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Record whether a write (or flush) went through or found the socket full.
    fn wrote<T>(&self, r: &Poll<std::io::Result<T>>) {
        match r {
            Poll::Pending => {
                let now = self.now_ms();
                let _ = self
                    .write_blocked
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
            }
            Poll::Ready(_) => self.write_blocked.store(0, Ordering::Release),
        }
    }
}

/// Marks a request in progress while any clone of it lives. The listener
/// holds one until the handler has answered, and puts a clone in the
/// request's extensions: a handler that goes on reading the request after
/// its answer (the pipeline discarding a body it never read, see
/// `proxy::response`) keeps it, so those bytes neither start the header
/// timer of a next request nor leave the connection idle.
#[derive(Clone)]
pub(crate) struct InFlight {
    _marker: Arc<Marker>,
}

struct Marker(Arc<Activity>);

impl InFlight {
    fn start(a: &Arc<Activity>) -> Self {
        a.inflight.fetch_add(1, Ordering::AcqRel);
        a.head_started.store(0, Ordering::Release);
        a.served.store(true, Ordering::Release);
        InFlight {
            _marker: Arc::new(Marker(a.clone())),
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        self.0.last_io.store(self.0.now_ms(), Ordering::Release);
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `Activity::body_polled` while a body waits on the upstream.
const UPSTREAM_TURN: u64 = u64::MAX;

/// A response body that notes when the connection last asked it for more.
/// hyper asks only when the client can take more (HTTP/1: room in the
/// socket; HTTP/2: flow-control window), so a body not asked for during
/// `write_idle_timeout` belongs to a client that stopped reading — including
/// an HTTP/2 client that never opens its window, whose socket never fills.
/// (Per connection: with several HTTP/2 streams, progress on any counts.)
struct Progress<B> {
    inner: B,
    act: Arc<Activity>,
    open: bool,
}

impl<B> Progress<B> {
    fn new(inner: B, act: Arc<Activity>) -> Self {
        act.body_polled.store(act.now_ms(), Ordering::Release);
        act.bodies.fetch_add(1, Ordering::AcqRel);
        Progress { inner, act, open: true }
    }

    fn close(&mut self) {
        if std::mem::take(&mut self.open) {
            self.act.bodies.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B> Drop for Progress<B> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Progress<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        // Pending: waiting on the upstream (its own timers apply), not on the
        // client; the stall clock restarts when a frame has been handed over.
        let mark = if r.is_pending() {
            UPSTREAM_TURN
        } else {
            self.act.now_ms()
        };
        self.act.body_polled.store(mark, Ordering::Release);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.close();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Stream wrapper that timestamps activity.
struct Tracked<S> {
    inner: S,
    act: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.act.now_ms();
            self.act.last_io.store(now, Ordering::Release);
            if self.act.inflight.load(Ordering::Acquire) == 0 {
                let _ = self
                    .act
                    .head_started
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.act.wrote(&r);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.last_io.store(self.act.now_ms(), Ordering::Release);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.act.wrote(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.act.wrote(&r);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.act.last_io.store(self.act.now_ms(), Ordering::Release);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why the timer closed a connection, if it did.
fn timed_out(act: &Activity, s: &Settings) -> Option<ConnClose> {
    let now = act.now_ms();
    // A client that stopped reading: checked even mid-request.
    let blocked = act.write_blocked.load(Ordering::Acquire);
    if blocked > 0 && now.saturating_sub(blocked - 1) >= s.write_idle_timeout.as_millis() as u64 {
        return Some(ConnClose::WriteTimeout);
    }
    let polled = act.body_polled.load(Ordering::Acquire);
    if act.bodies.load(Ordering::Acquire) > 0
        && polled != UPSTREAM_TURN
        && now.saturating_sub(polled) >= s.write_idle_timeout.as_millis() as u64
    {
        return Some(ConnClose::WriteTimeout);
    }
    if act.inflight.load(Ordering::Acquire) > 0 {
        return None;
    }
    let head = act.head_started.load(Ordering::Acquire);
    if head > 0 {
        return (now.saturating_sub(head - 1) >= s.header_timeout.as_millis() as u64)
            .then_some(ConnClose::HeaderTimeout);
    }
    let last = act.last_io.load(Ordering::Acquire);
    (now.saturating_sub(last) >= s.idle_timeout.as_millis() as u64).then_some(ConnClose::Idle)
}

/// Whether a draining connection can be shut down gracefully now without
/// dropping a request the client has sent: one is in flight (it finishes),
/// or the connection is idle between requests. Not while a head is arriving
/// (the header timeout bounds that), nor on a fresh connection whose first
/// request may already sit in the socket (given `GRACEFUL_CLOSE_GRACE`):
/// hyper-util closes a connection still detecting its protocol, and hyper
/// one that has not begun a request, without answering what was sent.
fn drain_now(act: &Activity) -> bool {
    act.inflight.load(Ordering::Acquire) > 0
        || (act.served.load(Ordering::Acquire) && act.head_started.load(Ordering::Acquire) == 0)
}

/// A malformed or oversized request head, which hyper refused itself.
fn parse_failure(e: &hyper::Error) -> Option<ConnClose> {
    if e.is_parse_too_large() {
        Some(ConnClose::HeadTooLarge)
    } else if e.is_parse() {
        Some(ConnClose::Malformed)
    } else {
        None
    }
}

/// What every connection of one listener shares.
struct ConnCtx<'a> {
    builder: &'a auto::Builder<TokioExecutor>,
    settings: &'a Settings,
    metrics: &'a ConnMetrics,
    /// Draining: finish in-flight requests, take no new ones.
    stop: CancellationToken,
    /// The drain period is over: drop the connection.
    force: CancellationToken,
}

async fn serve_conn<S, H>(ctx: ConnCtx<'_>, stream: S, conn: ConnInfo, handler: Arc<H>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let ConnCtx {
        builder,
        settings,
        metrics,
        stop,
        force,
    } = ctx;
    let act = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        act: act.clone(),
    });
    let conn = Arc::new(conn);
    let peer = conn.peer;
    let req_act = act.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let guard = InFlight::start(&req_act);
        req.extensions_mut().insert(guard.clone());
        let fut = H::call((*handler).clone(), req, conn.clone());
        let act = req_act.clone();
        async move {
            let resp = fut.await;
            drop(guard);
            Ok::<_, std::convert::Infallible>(resp.map(|body| Progress::new(body, act)))
        }
    });
    let mut connection = pin!(builder.serve_connection(io, service));
    let tick = (settings
        .header_timeout
        .min(settings.idle_timeout)
        .min(settings.write_idle_timeout)
        / 4)
    .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    let mut closing: Option<Instant> = None;
    // Draining, but a first request may be on its way: see `drain_now`.
    let mut stop_pending: Option<Instant> = None;
    // Waiting on the two tokens is set up once per connection, not each
    // time the connection wakes (a waiter is queued and dequeued per poll).
    let mut stopped = pin!(stop.cancelled());
    let mut forced = pin!(force.cancelled());
    loop {
        tokio::select! {
            // The connection first: it is what wakes the loop under load.
            biased;
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                    // hyper answered 400/414/431 itself and closed: count it.
                    if let Some(why) = e.downcast_ref::<hyper::Error>().and_then(parse_failure) {
                        metrics.closed(why);
                    }
                }
                return;
            }
            _ = stopped.as_mut(), if closing.is_none() && stop_pending.is_none() => {
                // Draining: finish in-flight requests, take no new ones.
                if drain_now(&act) {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + Duration::from_secs(3600));
                } else {
                    stop_pending = Some(Instant::now() + settings.header_timeout.min(GRACEFUL_CLOSE_GRACE));
                }
            }
            _ = forced.as_mut() => return,
            _ = ticker.tick() => {
                if let Some(deadline) = closing {
                    if Instant::now() >= deadline {
                        return;
                    }
                    continue;
                }
                if let Some(grace) = stop_pending {
                    if drain_now(&act) || Instant::now() >= grace {
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + Duration::from_secs(3600));
                        stop_pending = None;
                        continue;
                    }
                }
                match timed_out(&act, settings) {
                    Some(ConnClose::HeaderTimeout) => {
                        // A slow head gets no courtesy: drop the socket now.
                        metrics.closed(ConnClose::HeaderTimeout);
                        tracing::debug!(%peer, "request head not received in time; closing");
                        return;
                    }
                    Some(ConnClose::WriteTimeout) => {
                        // Nothing more can be written: a graceful close would
                        // wait on the same full socket. Drop it (and the
                        // response it was holding) now.
                        metrics.closed(ConnClose::WriteTimeout);
                        tracing::debug!(%peer, "client stopped reading the response; closing");
                        return;
                    }
                    Some(why) => {
                        metrics.closed(why);
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + GRACEFUL_CLOSE_GRACE);
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_peers_are_normalized() {
        let c = ConnInfo::new("[::ffff:127.0.0.3]:4000".parse().unwrap());
        assert_eq!(c.ip(), "127.0.0.3".parse::<IpAddr>().unwrap());
        let c = ConnInfo::new("[::1]:4000".parse().unwrap());
        assert_eq!(c.ip(), "::1".parse::<IpAddr>().unwrap());
    }

    fn settings(write_idle: Duration) -> Settings {
        Settings {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_connections: 10,
            write_idle_timeout: write_idle,
            h2_max_concurrent_streams: crate::config::DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_max_pending_resets: crate::config::DEFAULT_H2_MAX_PENDING_RESETS,
        }
    }

    #[test]
    fn write_idle_timer() {
        let (now, later) = (settings(Duration::ZERO), settings(Duration::from_secs(60)));
        let act = Activity::new();
        assert_eq!(timed_out(&act, &now), None, "nothing blocked, nothing sending");
        // A write found the socket full.
        act.wrote::<usize>(&Poll::Pending);
        assert_eq!(timed_out(&act, &now), Some(ConnClose::WriteTimeout));
        assert_eq!(timed_out(&act, &later), None);
        act.wrote(&Poll::Ready(Ok(1usize)));
        assert_eq!(timed_out(&act, &now), None, "a write went through");
        // A response body not asked for (HTTP/2 window closed), vs one
        // waiting on the upstream.
        act.bodies.store(1, Ordering::Release);
        act.body_polled.store(act.now_ms(), Ordering::Release);
        assert_eq!(timed_out(&act, &now), Some(ConnClose::WriteTimeout));
        assert_eq!(timed_out(&act, &later), None);
        act.body_polled.store(UPSTREAM_TURN, Ordering::Release);
        assert_eq!(
            timed_out(&act, &now),
            None,
            "waiting on the upstream is not the client's stall"
        );
    }
}
