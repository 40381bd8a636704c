//! A misbehaving upstream for the B scenarios: a real TLS server on
//! 127.0.0.1 (certificates from the rig's CA, so the gateway trusts it
//! through `egress.ca_file`, or deliberately not), speaking raw HTTP/1.1 so
//! that it can hang, trickle, reset or lie at any byte. It counts accepted
//! connections, complete requests received, requests in progress (and their
//! maximum) and records every peer address, for the "nothing sent", "never
//! retried", "bounded concurrency" and "source address" assertions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::Route;

/// What the server does with each connection (or each request on it).
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Answer every request with this status, extra headers and body
    /// (keep-alive): redirects, 429/503 with `Retry-After`, plain 200s.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A 200 after `delay` (a slow provider), keep-alive.
    Slow(Duration),
    /// Read the request, never answer.
    HangBeforeHead,
    /// Send a head announcing `Content-Length: 1000` and 10 bytes, then stall.
    HangAfterHead,
    /// Send a head announcing `len` bytes, then one byte every `every`.
    Trickle { every: Duration, len: usize },
    /// Send a head announcing 100 000 bytes and 1 000 of them, wait 0.5 s,
    /// then reset the connection (SO_LINGER 0, then close).
    ResetMidBody,
    /// Read the request, then close the connection without a byte.
    CloseWithoutResponse,
    /// A chunked body of zeros that never ends.
    Endless,
    /// A `Content-Length: len` body of zeros.
    Huge(u64),
    /// Accept TCP and never answer the ClientHello.
    HangHandshake,
    /// Accept TCP and close at once.
    AcceptClose,
}

/// Counters shared with the connection tasks.
#[derive(Default)]
pub struct Seen {
    pub accepted: AtomicUsize,
    /// Complete requests (head and body) received.
    pub requests: AtomicUsize,
    /// Requests received and not yet fully answered.
    pub concurrent: AtomicUsize,
    pub max_concurrent: AtomicUsize,
    /// Connections currently open (closed by either side: decremented).
    pub open: AtomicUsize,
    /// TLS handshakes that failed on the server side.
    pub handshake_failures: AtomicUsize,
    pub peers: Mutex<Vec<SocketAddr>>,
    /// The first request's head (to check what was sent, e.g. signed headers).
    pub heads: Mutex<Vec<String>>,
}

/// The misbehaving server; stopped when dropped.
pub struct Faulty {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stop: CancellationToken,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Faulty {
    /// Start on `bind` (an address on 127.0.0.0/8, port 0) with `tls` as its
    /// server config.
    pub async fn start_on(bind: &str, tls: Arc<rustls::ServerConfig>, behavior: Behavior) -> Faulty {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = CancellationToken::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let (st, sn) = (stop.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = st.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                sn.accepted.fetch_add(1, Ordering::SeqCst);
                sn.peers.lock().unwrap().push(peer);
                sn.open.fetch_add(1, Ordering::SeqCst);
                let (st, sn, acceptor, behavior) = (st.clone(), sn.clone(), acceptor.clone(), behavior.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = st.cancelled() => {}
                        _ = serve(tcp, acceptor, behavior, sn.clone()) => {}
                    }
                    sn.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Faulty { addr, seen, stop }
    }

    /// Start on 127.0.0.1 with the rig CA's certificate for localhost.
    pub async fn start(tls: Arc<rustls::ServerConfig>, behavior: Behavior) -> Faulty {
        Self::start_on("127.0.0.1:0", tls, behavior).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.seen.open.load(Ordering::SeqCst)
    }

    pub fn max_concurrent(&self) -> usize {
        self.seen.max_concurrent.load(Ordering::SeqCst)
    }

    pub fn handshake_failures(&self) -> usize {
        self.seen.handshake_failures.load(Ordering::SeqCst)
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.seen.peers.lock().unwrap().clone()
    }
}

/// A route `/faulty/` → this server through `localhost`.
pub fn faulty_route(port: u16) -> Route {
    route_to("faulty", &format!("https://localhost:{port}"))
}

/// A route named `name` (prefix `/name/`) to `upstream`, POST and GET.
pub fn route_to(name: &str, upstream: &str) -> Route {
    Route::to(name, upstream).methods(["POST", "GET"])
}

async fn serve(tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor, behavior: Behavior, seen: Arc<Seen>) {
    match behavior {
        Behavior::AcceptClose => return,
        Behavior::HangHandshake => {
            // Swallow the ClientHello, never answer; return once the peer gives up.
            let mut io: Box<dyn Io> = Box::new(tcp);
            drain(&mut io).await;
            return;
        }
        Behavior::ResetMidBody => {
            tcp.set_zero_linger().unwrap();
        }
        _ => {}
    }
    let mut io: Box<dyn Io> = match acceptor.accept(tcp).await {
        Ok(tls) => Box::new(tls),
        Err(_) => {
            seen.handshake_failures.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_request(&mut io, &mut buf).await else {
            return;
        };
        seen.heads.lock().unwrap().push(head);
        seen.requests.fetch_add(1, Ordering::SeqCst);
        let now = seen.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_concurrent.fetch_max(now, Ordering::SeqCst);
        let keep = respond(&mut io, &behavior).await;
        seen.concurrent.fetch_sub(1, Ordering::SeqCst);
        if !keep {
            if matches!(behavior, Behavior::ResetMidBody | Behavior::CloseWithoutResponse) {
                // Drop without close_notify (with linger 0 for the reset: a RST).
                return;
            }
            // Stalled: keep the connection until the gateway drops it.
            drain(&mut io).await;
            return;
        }
    }
}

/// Read one request (head, then a `Content-Length` body); `None` at EOF.
async fn read_request(io: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + len);
    Some(head)
}

/// Read until the peer closes (or errs).
async fn drain(io: &mut Box<dyn Io>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = io.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}

/// Answer one request; `true` to keep the connection for the next one.
async fn respond(io: &mut Box<dyn Io>, behavior: &Behavior) -> bool {
    let zeros = vec![0u8; 64 * 1024];
    match behavior {
        Behavior::Respond { status, headers, body } => {
            let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            head.push_str(body);
            io.write_all(head.as_bytes()).await.is_ok() && io.flush().await.is_ok()
        }
        Behavior::Slow(d) => {
            tokio::time::sleep(*d).await;
            let body = r#"{"status":"success"}"#;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            io.write_all(head.as_bytes()).await.is_ok() && io.flush().await.is_ok()
        }
        Behavior::HangBeforeHead | Behavior::CloseWithoutResponse => false,
        Behavior::HangAfterHead => {
            let _ = io
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                .await;
            let _ = io.flush().await;
            false
        }
        Behavior::Trickle { every, len } => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            if io.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for _ in 0..*len {
                if io.flush().await.is_err() {
                    return false;
                }
                // Pause, but notice at once when the gateway gives up on us.
                let mut probe = [0u8; 1];
                tokio::select! {
                    _ = tokio::time::sleep(*every) => {}
                    _ = io.read(&mut probe) => return false,
                }
                if io.write_all(b"x").await.is_err() {
                    return false;
                }
            }
            io.flush().await.is_ok()
        }
        Behavior::ResetMidBody => {
            let _ = io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n").await;
            let _ = io.write_all(&zeros[..1000]).await;
            let _ = io.flush().await;
            // Linux discards received-but-unread data when a RST arrives: give
            // the gateway time to take the head and first bytes, so the reset
            // lands mid-body rather than before the head.
            tokio::time::sleep(Duration::from_millis(500)).await;
            false
        }
        Behavior::Endless => {
            if io
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .is_err()
            {
                return false;
            }
            let mut frame = format!("{:x}\r\n", zeros.len()).into_bytes();
            frame.extend_from_slice(&zeros);
            frame.extend_from_slice(b"\r\n");
            while io.write_all(&frame).await.is_ok() {}
            false
        }
        Behavior::Huge(len) => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            if io.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let mut left = *len;
            while left > 0 {
                let n = usize::try_from(left.min(zeros.len() as u64)).unwrap();
                if io.write_all(&zeros[..n]).await.is_err() {
                    return false;
                }
                left -= n as u64;
            }
            io.flush().await.is_ok()
        }
        Behavior::HangHandshake | Behavior::AcceptClose => false,
    }
}

/// A rustls server config presenting `cert` (for TLS variants of B7).
pub fn server_config(cert: &signgate::devtools::pki::Issued) -> Arc<rustls::ServerConfig> {
    server_config_der(cert.cert_der.clone(), cert.key_der())
}

pub fn server_config_der(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<rustls::ServerConfig> {
    Arc::new(
        rustls::ServerConfig::builder_with_provider(signgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    )
}

/// A server config whose localhost certificate is issued by the trusted CA
/// (`ca_name`, `ca_key_pem`: the rig's `DevCa`) and expired in 2021, or
/// (`expired = false`, the control) valid from 2020 to 2100.
pub fn rig_ca_server_config(ca_name: &str, ca_key_pem: &str, expired: bool) -> Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    // The issuer is rebuilt from the CA's name and key: the same subject and
    // key identifier as the CA certificate the gateway trusts.
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let issuer = Issuer::new(ca, KeyPair::from_pem(ca_key_pem).unwrap());
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p.subject_alt_names
        .push(SanType::DnsName("localhost".try_into().unwrap()));
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(if expired { 2021 } else { 2100 }, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    server_config_der(
        cert.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// An `openssl s_server` that speaks only TLS 1.0 (SECLEVEL 0), killed on
/// drop. Its stderr tells whether a handshake was attempted; its stdout
/// would show any request bytes it received.
pub struct OldTls {
    pub port: u16,
    child: std::process::Child,
    _stdin: std::process::ChildStdin,
    pub out: Arc<Mutex<String>>,
    pub err: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Drop for OldTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OldTls {
    /// Panics when `openssl` is not installed (scripts/test.sh installs it).
    /// The port is probed free, then bound by s_server: when another
    /// process took it in between, s_server exits without `ACCEPT` and the
    /// start is retried on another free port (a few times).
    pub fn start(cert: &signgate::devtools::pki::Issued) -> OldTls {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        for _ in 0..5 {
            let port = crate::support::closed_port();
            if let Some((child, stdin, out, err)) = Self::spawn(port, &c, &k) {
                return OldTls {
                    port,
                    child,
                    _stdin: stdin,
                    out,
                    err,
                    _dir: dir,
                };
            }
        }
        panic!("openssl s_server could not bind a free port in 5 tries");
    }

    /// `None` when s_server exited before listening (its port was taken).
    #[allow(clippy::type_complexity)]
    fn spawn(
        port: u16,
        c: &std::path::Path,
        k: &std::path::Path,
    ) -> Option<(
        std::process::Child,
        std::process::ChildStdin,
        Arc<Mutex<String>>,
        Arc<Mutex<String>>,
    )> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(c)
            .arg("-key")
            .arg(k)
            .args(["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is needed for the TLS 1.0 upstream (scripts/test.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let (out, err) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
        let (tx, rx) = std::sync::mpsc::channel();
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                out.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), err.clone()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        drop(tx);
        // s_server prints ACCEPT once it listens; both pipes close if it exits.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(line) if line.contains("ACCEPT") => return Some((child, stdin, out, err)),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    let text = err.lock().unwrap().clone();
                    assert!(
                        text.to_ascii_lowercase().contains("address already in use"),
                        "openssl s_server exited ({status}) without listening: {text}"
                    );
                    return None;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "openssl s_server did not report ACCEPT in 10 s: {}",
                        err.lock().unwrap()
                    );
                }
            }
        }
    }
}
