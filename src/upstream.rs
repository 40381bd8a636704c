//! The upstream client: one pooled hyper-util client for every route, over
//! rustls (TLS 1.2+, webpki roots plus `egress.ca_file`, ALPN h2/http1.1,
//! session resumption), every connection bound to `egress.source_addr`.
//!
//! The connector is ours (not hyper-rustls) so that TCP connect *and* the TLS
//! handshake share one `connect_timeout`, and failures come back typed
//! (connect / TLS / timeout) for the error table, the metrics and the
//! "retry only if nothing was written" rule. Redirects are never followed.
//!
//! With `egress.max_connections_per_host`, at most that many connections are
//! open (or opening) to one host: each holds a place, given back when it
//! closes, so a burst of requests waits for a pooled connection rather than
//! opening one each (that the pool would close again). Off by default: a
//! hard cap turns a slow provider into `504 upstream_timeout` for every
//! request past it. A connection's first response marks it
//! ([`Fresh`]) so the request that opened it is counted per route.
//!
//! hyper-util starts a connect for every request that finds no idle
//! connection, races it against the pool, and when the pool wins lets the
//! connect finish in the background. At the cap, such a connect only waits
//! for a place; it is given up as soon as the request that started it no
//! longer waits ([`Wanted`]), so a burst leaves no crowd of background
//! connects behind, each holding memory and a timer for `connect_timeout`.
//! A connect that already has its place finishes and pools its connection.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::EgressConfig;
use crate::tls;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Which part of the upstream exchange failed (also the metric `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Tls,
    Timeout,
    Reset,
    Protocol,
    /// The response head arrived but the body stalled for
    /// `egress.response_idle_timeout_ms` (the stream is cut; the client
    /// already has the head, so it never sees this as a JSON error).
    ResponseIdle,
}

impl UpstreamFailure {
    pub fn kind(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Protocol => "protocol",
            UpstreamFailure::ResponseIdle => "response_idle",
        }
    }
}

/// Why a connection could not be established (nothing was written yet).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("upstream scheme {0} is not allowed")]
    Scheme(String),
    /// Every one of the host's connections stayed busy for `connect_timeout`.
    #[error("all {0} connections to the upstream stayed busy for the connect timeout")]
    Busy(usize),
    /// The request that started this connect was answered on a pooled
    /// connection while this one still waited for a place (never reaches a
    /// request: only a background connect ends so).
    #[error("no request waits for this connection any more")]
    Unwanted,
}

/// A TCP or TLS connection to an upstream, holding its place among the
/// host's connections (given back when the connection closes).
pub struct UpstreamStream {
    io: Io,
    _place: Option<OwnedSemaphorePermit>,
    fresh: Fresh,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Set on a new connection, taken by the first response that comes over
/// it: that request opened the connection (`signgate_upstream_connections_opened_total`).
#[derive(Clone, Default)]
pub struct Fresh(Arc<AtomicBool>);

impl Fresh {
    fn new() -> Fresh {
        Fresh(Arc::new(AtomicBool::new(true)))
    }

    /// Whether `resp` is the first response over its connection.
    pub fn first_use<B>(resp: &Response<B>) -> bool {
        resp.extensions()
            .get::<Fresh>()
            .is_some_and(|f| f.0.swap(false, Ordering::Relaxed))
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let c = match &self.io {
            Io::Plain(s) => s.connected(),
            Io::Tls(s) => {
                let (tcp, session) = s.get_ref();
                let c = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        };
        c.extra(self.fresh.clone())
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// At most `per_host` connections to each upstream host (scheme and
/// authority), open or being opened: a burst of requests waits for a
/// pooled connection instead of opening one each. Unlimited when 0.
#[derive(Clone, Default)]
struct Places {
    per_host: usize,
    hosts: Arc<dashmap::DashMap<String, Arc<Semaphore>>>,
}

impl Places {
    /// A place for one more connection to `uri`'s host, waiting until
    /// `deadline` for one to close, or until `wanted` says the request that
    /// asked no longer waits. `Ok(None)`: unlimited.
    async fn take(
        &self,
        uri: &Uri,
        deadline: tokio::time::Instant,
        wanted: Wanted,
    ) -> Result<Option<OwnedSemaphorePermit>, ConnectError> {
        if self.per_host == 0 {
            return Ok(None);
        }
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        let sem = self
            .hosts
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone();
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        tokio::select! {
            biased;
            p = tokio::time::timeout_at(deadline, sem.acquire_owned()) => match p {
                Ok(Ok(p)) => Ok(Some(p)),
                Ok(Err(_)) => Err(ConnectError::Connect("the connection limit is closed".into())),
                Err(_) => Err(ConnectError::Busy(self.per_host)),
            },
            () = wanted.gone() => Err(ConnectError::Unwanted),
        }
    }
}

tokio::task_local! {
    /// Around one request's turn in the pool ([`Upstream::send`]): the
    /// guard of the connect started for it, if one was.
    static WAITING: RefCell<Option<DropGuard>>;
}

/// Whether the request that started a connect still waits for it: gone once
/// that request's turn in the pool is over (answered, failed or dropped).
struct Wanted(Option<CancellationToken>);

impl Wanted {
    /// Called as the pool starts a connect, inside the request's turn.
    /// Outside one (no [`WAITING`] scope) the connect is always wanted.
    fn by_current_request() -> Wanted {
        Wanted(
            WAITING
                .try_with(|slot| {
                    let token = CancellationToken::new();
                    *slot.borrow_mut() = Some(token.clone().drop_guard());
                    token
                })
                .ok(),
        )
    }

    async fn gone(&self) {
        match &self.0 {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

/// TCP (bound to the egress address) then TLS, under one deadline.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: TlsConnector,
    timeout: Duration,
    allow_plain_http: bool,
    places: Places,
}

impl Connector {
    pub fn new(egress: &EgressConfig, tls_config: Arc<rustls::ClientConfig>) -> Self {
        let mut c = Self::direct(tls_config, egress.connect_timeout, egress.allow_plain_http);
        c.http.set_local_address(egress.source_addr);
        // With a cap, a burst of requests waits for a pooled connection
        // (up to connect_timeout) rather than opening connections the pool
        // would then close (module doc).
        c.places = Places {
            per_host: egress.max_connections_per_host,
            hosts: Arc::default(),
        };
        c
    }

    /// The same TCP+TLS path under one deadline, without the egress binding:
    /// for the gateway's own clients (the Vault source).
    pub fn direct(tls_config: Arc<rustls::ClientConfig>, connect_timeout: Duration, allow_plain_http: bool) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        Connector {
            http,
            tls: TlsConnector::from(tls_config),
            timeout: connect_timeout,
            allow_plain_http,
            places: Places::default(),
        }
    }

    async fn connect(self, uri: Uri, wanted: Wanted) -> Result<TokioIo<UpstreamStream>, ConnectError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_plain_http => false,
            other => return Err(ConnectError::Scheme(other.unwrap_or("none").to_string())),
        };
        let place = self
            .places
            .take(&uri, tokio::time::Instant::now() + self.timeout, wanted)
            .await?;
        // Boxed: the TCP + TLS state is large, and a connect that waits for
        // a place should not carry it.
        Box::pin(self.dial(uri, https, place)).await
    }

    async fn dial(
        mut self,
        uri: Uri,
        https: bool,
        place: Option<OwnedSemaphorePermit>,
    ) -> Result<TokioIo<UpstreamStream>, ConnectError> {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let tcp = tokio::time::timeout_at(deadline, tower_service::Service::call(&mut self.http, uri))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| {
                // HttpConnector's own per-address timer fired: the connect
                // hung (a blackholed SYN), it was not refused. Not retried.
                if timed_out(&e) {
                    ConnectError::Timeout
                } else {
                    ConnectError::Connect(with_causes(&e))
                }
            })?
            .into_inner();
        let stream = |io| UpstreamStream {
            io,
            _place: place,
            fresh: Fresh::new(),
        };
        if !https {
            return Ok(TokioIo::new(stream(Io::Plain(tcp))));
        }
        let name = ServerName::try_from(host)
            .map_err(|e| ConnectError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let tls = tokio::time::timeout_at(deadline, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Tls)?;
        Ok(TokioIo::new(stream(Io::Tls(Box::new(tls)))))
    }
}

/// True when the upstream reset the request's HTTP/2 stream with
/// `REFUSED_STREAM`: closed before any processing (RFC 9113 §8.7), so it
/// can be sent again. A `GOAWAY` is not read so: its error reaches streams
/// below its last stream id too, which the provider may have processed.
fn refused_stream(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.is_reset() && h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// True when an I/O error of kind `TimedOut` is in the cause chain.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// An error and its causes on one line ("tcp connect error: Connection refused
/// (os error 111)"): hyper-util's connect error alone hides the reason.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri, Wanted::by_current_request()))
    }
}

/// One connection pool and the TLS configuration its connections use.
type Pool = Client<Connector, Full<Bytes>>;

/// The shared, pooled upstream client. Clones share the pool; a certificate
/// reload ([`Upstream::set_tls`]) puts a new pool in place for every request
/// that starts afterwards, while requests in flight finish on the old one.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<ArcSwap<Pool>>,
    egress: Arc<EgressConfig>,
}

/// Outcome of one attempt, typed for the retry rule.
#[derive(Debug)]
pub struct AttemptError {
    pub failure: UpstreamFailure,
    /// True when the provider cannot have acted on the request: no byte of
    /// it was written, or it refused the stream before processing it
    /// (HTTP/2 `REFUSED_STREAM`). Safe to send again; a claim is released.
    pub nothing_sent: bool,
    pub detail: String,
}

impl Upstream {
    pub fn new(egress: &EgressConfig) -> Result<Upstream, tls::TlsError> {
        Ok(Self::with_tls(egress, tls::client_config(egress)?))
    }

    /// The client for `egress` with an already built TLS configuration.
    pub fn with_tls(egress: &EgressConfig, tls_config: Arc<rustls::ClientConfig>) -> Upstream {
        Upstream {
            pool: Arc::new(ArcSwap::from_pointee(pool(egress, tls_config))),
            egress: Arc::new(egress.clone()),
        }
    }

    /// Use `tls_config` (a reloaded client certificate or CA) for every
    /// request from now on: a new pool, so no request after this goes out on
    /// a connection made with the old certificate. Requests in flight keep
    /// their connections; the old pool closes once they are done.
    pub fn set_tls(&self, tls_config: Arc<rustls::ClientConfig>) {
        self.pool.store(Arc::new(pool(&self.egress, tls_config)));
    }

    pub fn source_addr(&self) -> Option<IpAddr> {
        self.egress.source_addr
    }

    /// Longest pause allowed between two pieces of a response body.
    pub fn response_idle_timeout(&self) -> Duration {
        self.egress.response_idle_timeout
    }

    /// Send one request and wait for the response head, under `request_timeout`.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, AttemptError> {
        let timeout = self.egress.request_timeout;
        let pool = self.pool.load_full();
        let sent = if self.egress.max_connections_per_host == 0 {
            // No places to wait for: nothing to give up.
            tokio::time::timeout(timeout, pool.request(req)).await
        } else {
            // The request's turn in the pool: a connect it starts and no
            // longer needs at the end of it is given up if still waiting.
            tokio::time::timeout(timeout, WAITING.scope(RefCell::new(None), pool.request(req))).await
        };
        match sent {
            Err(_) => Err(AttemptError {
                failure: UpstreamFailure::Timeout,
                nothing_sent: false,
                detail: format!("no response within {} ms", timeout.as_millis()),
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

fn pool(egress: &EgressConfig, tls_config: Arc<rustls::ClientConfig>) -> Pool {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(egress.pool_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // We decide about retries ourselves (at most one, connect failures only).
        .retry_canceled_requests(false)
        .build(Connector::new(egress, tls_config))
}

fn classify(e: &hyper_util::client::legacy::Error) -> AttemptError {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(ce) = s.downcast_ref::<ConnectError>() {
            let failure = match ce {
                ConnectError::Connect(_) | ConnectError::Scheme(_) => UpstreamFailure::Connect,
                ConnectError::Tls(_) => UpstreamFailure::Tls,
                ConnectError::Timeout | ConnectError::Busy(_) | ConnectError::Unwanted => UpstreamFailure::Timeout,
            };
            return AttemptError {
                failure,
                nothing_sent: true,
                detail: ce.to_string(),
            };
        }
        if let Some(he) = s.downcast_ref::<hyper::Error>() {
            if he.is_canceled() {
                // hyper cancels only a request it never started on the
                // connection (queued when the connection closed or went
                // away, e.g. behind an HTTP/2 GOAWAY): not a byte of it
                // was written, so it is safe to send again.
                return AttemptError {
                    failure: UpstreamFailure::Reset,
                    nothing_sent: true,
                    detail: format!("the connection closed before the request was sent ({he})"),
                };
            }
            if refused_stream(he) {
                return AttemptError {
                    failure: UpstreamFailure::Reset,
                    nothing_sent: true,
                    detail: format!("the upstream refused the request before processing it ({he})"),
                };
            }
            let failure = if he.is_incomplete_message() || he.is_closed() {
                UpstreamFailure::Reset
            } else if he.is_timeout() {
                UpstreamFailure::Timeout
            } else if he.is_parse() || he.is_user() {
                UpstreamFailure::Protocol
            } else {
                UpstreamFailure::Reset
            };
            return AttemptError {
                failure,
                nothing_sent: false,
                detail: he.to_string(),
            };
        }
        source = s.source();
    }
    AttemptError {
        failure: if e.is_connect() {
            UpstreamFailure::Connect
        } else {
            UpstreamFailure::Reset
        },
        nothing_sent: e.is_connect(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;

    use super::*;

    /// Cancelling the token drops the connections open at that time.
    type Closer = Arc<ArcSwap<CancellationToken>>;

    fn close_all(closer: &Closer) {
        closer.swap(Arc::default()).cancel();
    }

    /// A plain HTTP upstream on loopback answering every request after
    /// `delay`, counting the connections it accepts; [`close_all`] drops
    /// the connections open at the time (it goes on accepting).
    async fn counting_upstream(delay: Duration, closer: Closer) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let close = CancellationToken::clone(&closer.load());
                tokio::spawn(async move {
                    let answer = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), answer);
                    tokio::select! {
                        _ = conn => {}
                        () = close.cancelled() => {}
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// At the cap, the requests past it start connects that wait for a
    /// place while the pool hands them a connection. Once they are answered
    /// those connects are given up: when the pooled connections close, no
    /// connection is opened for a request that no longer exists.
    #[tokio::test]
    async fn a_connect_waiting_for_a_place_is_given_up_once_its_request_is_answered() {
        let closer = Closer::default();
        let (addr, accepted) = counting_upstream(Duration::from_millis(100), closer.clone()).await;
        let egress = EgressConfig {
            source_addr: None,
            ca_file: None,
            client_cert: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            response_idle_timeout: Duration::from_secs(10),
            pool_idle_per_host: 2,
            max_connections_per_host: 2,
            allow_plain_http: true,
            source_check: None,
        };
        let up = Upstream::new(&egress).unwrap();
        let uri = format!("http://{addr}/");
        let bodies = futures_util::future::join_all((0..8).map(|_| async {
            let resp = up
                .send(Request::post(&uri).body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }))
        .await;
        assert!(bodies.iter().all(|b| b.as_ref() == b"ok"));
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "8 requests over the 2 connections of the cap"
        );

        // Both connections close, two places free up: a connect still
        // waiting would take one and dial now.
        close_all(&closer);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "a connect no request waits for dialled"
        );

        // The next request opens a connection as usual.
        let resp = up
            .send(Request::post(&uri).body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// An HTTP/2 upstream over TLS that processes the first request and
    /// refuses every other stream with `RST_STREAM(REFUSED_STREAM)`, which
    /// says the stream was closed before any processing (RFC 9113 §8.7).
    /// Those requests come back `nothing_sent` (safe to send again, a
    /// duplicate claim released); the processed one, answered, does not.
    #[tokio::test]
    async fn a_stream_the_upstream_refused_counts_as_not_sent() {
        let ca = crate::devtools::pki::DevCa::new("upstream test CA").unwrap();
        let server = ca.server(&["127.0.0.1"]).unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server.cert_der.clone()], server.key_der())
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let processed = Arc::new(dashmap::DashSet::<String>::new());
        let log = processed.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let stream = acceptor.accept(tcp).await.unwrap();
            let mut conn = h2::server::handshake(stream).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let id = req
                    .headers()
                    .get("x-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if id == "0" {
                    log.insert(id);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = respond.send_response(Response::new(()), true);
                    });
                } else {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            }
        });

        let egress = EgressConfig {
            source_addr: None,
            ca_file: Some(ca_file),
            client_cert: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            response_idle_timeout: Duration::from_secs(10),
            pool_idle_per_host: 1,
            max_connections_per_host: 0,
            allow_plain_http: false,
            source_check: None,
        };
        let up = Upstream::new(&egress).unwrap();
        let uri = format!("https://127.0.0.1:{}/", addr.port());
        let send = |id: &str| {
            let req = Request::post(&uri)
                .header("x-id", id)
                .body(Full::new(Bytes::new()))
                .unwrap();
            up.send(req)
        };
        // The first request opens the (HTTP/2) connection; the others share it.
        let first = send("0");
        tokio::pin!(first);
        tokio::select! {
            _ = &mut first => panic!("answered before the others were sent"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let refused = futures_util::future::join_all((1..6).map(|i| send(&i.to_string()))).await;
        assert_eq!(first.await.unwrap().status(), 200);
        for r in refused {
            let e = r.expect_err("refused");
            assert!(e.nothing_sent, "a refused stream was not processed: {e:?}");
            assert_eq!(e.failure, UpstreamFailure::Reset, "{e:?}");
        }
        assert_eq!(processed.len(), 1);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn a_timed_out_connect_is_told_from_a_refused_one() {
        let hung = Wrapper(io::Error::new(io::ErrorKind::TimedOut, "connect timeout"));
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(timed_out(&hung));
        assert!(!timed_out(&refused));
        assert!(timed_out(&io::Error::from(io::ErrorKind::TimedOut)));
    }
}
