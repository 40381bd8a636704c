//! The traffic listener: accept loop, connection limit, optional TLS/mTLS,
//! HTTP/1.1 and HTTP/2 (prior-knowledge h2c on plaintext, ALPN on TLS) on one
//! port, head-size and slow-header limits, and graceful draining.
//!
//! Excess connections beyond `max_connections` are closed at once; accept
//! errors such as EMFILE back off instead of spinning.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::app::Gateway;
use crate::config::ListenerConfig;
use crate::proxy::{self, ConnInfo};

/// Pause after an accept error (EMFILE, ENFILE, ENOBUFS) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// HTTP/2: streams a client may open at once on one connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Per-listener settings, fixed at start (a change needs a restart).
#[derive(Clone)]
pub struct Settings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

impl From<&ListenerConfig> for Settings {
    fn from(c: &ListenerConfig) -> Self {
        Settings {
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
            max_headers: c.max_headers,
            max_header_bytes: c.max_header_bytes,
            max_connections: c.max_connections,
        }
    }
}

fn builder(s: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_timeout)
        .max_headers(s.max_headers)
        .max_buf_size(s.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid-reset (CVE-2023-44487) bounds: hyper's defaults made explicit.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Some(s.idle_timeout))
        .keep_alive_timeout(s.header_timeout);
    b
}

/// Run the accept loop until `cancel`; then stop accepting and let open
/// connections finish their in-flight requests for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gw: Arc<Gateway>,
    settings: Settings,
    cancel: CancellationToken,
    drain: Duration,
) {
    let builder = Arc::new(builder(&settings));
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let builder = builder.clone();
        let settings = settings.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = ConnInfo::new(peer);
            match tls {
                None => serve_conn(&builder, TokioIo::new(stream), conn, gw, watcher).await,
                Some(acceptor) => {
                    let Some((tls_stream, conn)) = handshake(acceptor, stream, conn, settings.header_timeout).await
                    else {
                        return;
                    };
                    serve_conn(&builder, TokioIo::new(tls_stream), conn, gw, watcher).await
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(drain_ms = drain.as_millis() as u64, "drain timeout; closing remaining connections"),
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    mut conn: ConnInfo,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnInfo)> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            if let Some(certs) = s.get_ref().1.peer_certificates() {
                conn.identities = certs.first().map(|c| crate::identity::san_identities(c).into());
            }
            Some((s, conn))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            None
        }
    }
}

async fn serve_conn<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    conn: ConnInfo,
    gw: Arc<Gateway>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let peer = conn.peer;
    let service = service_fn(move |req| proxy::handle(gw.clone(), conn.clone(), req));
    let connection = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
