//! Test harness: a throw-away PKI, the provider stand-in over real TLS on
//! loopback, the real gateway started in-process from a TOML string, a plain
//! HTTP client that can bind a chosen loopback source address, the real
//! binary as a child process, and (`bao`) a real OpenBao dev server.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_types)] // test harness: a failed setup step should panic; a std Mutex collects child logs

pub mod bao;
pub mod vault;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;
use signgate::devtools::pki::DevCa;
use signgate::devtools::standin::{Standin, StandinOptions};
use signgate::secrets::SecretBytes;
use tempfile::TempDir;

pub fn random_token(prefix: &str, n: usize) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..n).map(|_| A[rng.random_range(0..A.len())] as char).collect();
    format!("{prefix}{tail}")
}

/// A CA (trusted by the gateway through `egress.ca_file`) and a server
/// certificate for localhost / 127.0.0.1, all written to a temp dir.
pub struct Pki {
    pub dir: TempDir,
    pub ca: DevCa,
    pub ca_path: PathBuf,
    pub server_tls: Arc<rustls::ServerConfig>,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("signgate test CA").unwrap();
    let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let server_tls = rustls::ServerConfig::builder_with_provider(signgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())
        .unwrap();
    let ca_path = dir.path().join("provider-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    Pki {
        dir,
        ca,
        ca_path,
        server_tls: Arc::new(server_tls),
    }
}

/// The provider stand-in and the credentials it expects.
pub struct Provider {
    pub standin: Standin,
    pub api_key: String,
    pub secret: String,
}

pub async fn provider(pki: &Pki) -> Provider {
    provider_on(pki, "127.0.0.1:0").await
}

pub async fn provider_on(pki: &Pki, bind: &str) -> Provider {
    let api_key = random_token("pk_test_", 24);
    let secret = random_token("sk_test_", 32);
    let standin = Standin::start(StandinOptions {
        api_key: api_key.clone(),
        secret: SecretBytes::from(secret.clone()),
        tolerance: Duration::from_secs(60),
        tls: Some(pki.server_tls.clone()),
        bind: bind.parse().unwrap(),
    })
    .await
    .unwrap();
    Provider {
        standin,
        api_key,
        secret,
    }
}

/// Write a JSON credential file the gateway's `file` source reads.
pub fn write_cred(path: &Path, api_key: &str, secret: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::json!({"api_key": api_key, "secret_key": secret}).to_string(),
    )
    .unwrap();
    // Atomic replace, as Vault Agent and Kubernetes do.
    std::fs::rename(&tmp, path).unwrap();
}

/// A gateway config with one kwikpaisa route to `upstream`, a file
/// credential at `cred`, and `extra` appended (more tables or overrides).
pub fn config(upstream: &str, ca: &Path, cred: &Path, egress_extra: &str, route_extra: &str, extra: &str) -> String {
    format!(
        r#"
[listener]
addr = "127.0.0.1:0"
max_body_bytes = 4096
[admin]
addr = "127.0.0.1:0"
[audit]
path = "{audit}"
[access]
allow = ["127.0.0.0/8", "::1/128"]
[egress]
ca_file = "{ca}"
connect_timeout_ms = 1000
request_timeout_ms = 1500
{egress_extra}
[credentials.kwikpaisa]
source = "file"
path = "{cred}"
poll_ms = 50
[[route]]
name = "kwikpaisa"
match_prefix = "/kwikpaisa/"
strip_prefix = true
upstream = "{upstream}"
credential = "kwikpaisa"
scheme = "kwikpaisa"
methods = ["POST"]
{route_extra}
{extra}
"#,
        ca = ca.display(),
        cred = cred.display(),
        audit = ca.parent().unwrap().join("audit.jsonl").display(),
    )
}

pub async fn gateway(toml: &str) -> signgate::Running {
    let config = signgate::Config::from_toml_str(toml).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    signgate::start(config).await.unwrap()
}

/// Everything a typical signing-path test needs, wired together.
pub struct Setup {
    pub pki: Pki,
    pub provider: Provider,
    pub cred_path: PathBuf,
    pub gw: signgate::Running,
}

impl Setup {
    pub async fn new() -> Setup {
        Self::with("", "", "").await
    }

    pub async fn with(egress_extra: &str, route_extra: &str, extra: &str) -> Setup {
        Self::custom(egress_extra, route_extra, extra, |t| t).await
    }

    /// Like `with`, with a final rewrite of the generated TOML.
    pub async fn custom(
        egress_extra: &str,
        route_extra: &str,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Setup {
        let pki = pki();
        let provider = provider(&pki).await;
        let cred_path = pki.dir.path().join("kwikpaisa.json");
        write_cred(&cred_path, &provider.api_key, &provider.secret);
        let upstream = format!("https://localhost:{}", provider.standin.addr().port());
        let toml = config(&upstream, &pki.ca_path, &cred_path, egress_extra, route_extra, extra);
        let gw = gateway(&edit(toml)).await;
        Setup {
            pki,
            provider,
            cred_path,
            gw,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.addr(), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.admin_addr().unwrap(), path)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.pki.dir.path().join("audit.jsonl")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = TestClient::new()
            .send(Method::GET, &self.admin_url("/metrics"), &[], "")
            .await;
        assert_eq!(r.status, 200);
        String::from_utf8(r.body.to_vec()).unwrap()
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }

    /// `error.code` of the contract's error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// An HTTP/1.1 (or h2c) client, optionally bound to a loopback source address.
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new() -> Self {
        Self::build(None, false)
    }

    pub fn from_addr(ip: &str) -> Self {
        Self::build(Some(ip.parse().unwrap()), false)
    }

    pub fn h2c() -> Self {
        Self::build(None, true)
    }

    fn build(local: Option<IpAddr>, h2: bool) -> Self {
        let mut http = HttpConnector::new();
        http.set_local_address(local);
        let client = Client::builder(TokioExecutor::new()).http2_only(h2).build(http);
        TestClient { client }
    }

    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::new(body.into())).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
        }
    }

    pub async fn post(&self, url: &str, body: &str) -> Reply {
        self.send(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }
}

/// Poll `cond` until it holds or `within` passes (no fixed sleeps in tests).
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn peer_ip(addr: SocketAddr) -> IpAddr {
    addr.ip()
}

/// Value of one series in Prometheus text, e.g.
/// `metric(&text, "signgate_denied_total", &[("route","kwikpaisa"),("reason","no_route")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, lbls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(String, String)> = lbls
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once("=\""))
            .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
            .collect();
        if have.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            return value.parse().unwrap();
        }
    }
    0.0
}

/// Number of series (non-comment lines) in Prometheus text.
pub fn series_count(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

/// An HTTPS request over rustls with an optional client certificate. `Err`
/// carries the TLS or connection error (e.g. a refused handshake).
pub async fn https_post(
    addr: SocketAddr,
    ca: &DevCa,
    client_cert: Option<&signgate::devtools::pki::Issued>,
    path: &str,
    body: &str,
) -> Result<Reply, String> {
    use hyper_util::rt::TokioIo;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(signgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client_cert {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert_der.clone()], c.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let (parts, b) = resp.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: b.collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
    })
}

/// A `signgate` child process, killed when dropped (even if the test fails).
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// Start `signgate run --config <path>` with the listener and admin on
    /// ports the child picks itself (`127.0.0.1:0`, overridable through
    /// `env`), and wait until it reports listening; the addresses are read
    /// from that log line, so no port is picked here and then raced for.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signgate"));
        cmd.args(["run", "--config"])
            .arg(config)
            .env("SIGNGATE__LISTENER__ADDR", "127.0.0.1:0")
            .env("SIGNGATE__ADMIN__ADDR", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("gateway did not report listening:\n{}", log.lock().unwrap().join("\n")));
            if line.contains("signgate listening") {
                break line;
            }
        };
        // `... signgate listening addr=127.0.0.1:P admin=Some(127.0.0.1:Q) ...`
        let field = |prefix: &str| -> SocketAddr {
            let at = line.find(prefix).unwrap_or_else(|| panic!("no {prefix} in {line:?}"));
            let rest = &line[at + prefix.len()..];
            let end = rest.find(|c: char| c == ')' || c.is_whitespace()).unwrap_or(rest.len());
            rest[..end]
                .parse()
                .unwrap_or_else(|e| panic!("{prefix} in {line:?}: {e}"))
        };
        GatewayProcess {
            child,
            addr: field(" addr="),
            admin: field(" admin=Some("),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub async fn metrics(&self) -> String {
        let r = TestClient::new()
            .send(Method::GET, &format!("http://{}/metrics", self.admin), &[], "")
            .await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }
}

/// The merchant's internal app: receives delivered webhook events.
pub struct App {
    pub addr: SocketAddr,
    pub received: std::sync::Arc<tokio::sync::Mutex<Vec<(HeaderMap, Bytes)>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    pub async fn start_on(port: u16) -> App {
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (rx, st) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let rx = rx.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let rx = rx.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            rx.lock().await.push((parts.headers, body));
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    // A stopped app drops its keep-alive connections too.
                    tokio::select! {
                        _ = st.cancelled() => {}
                        _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc) => {}
                    }
                });
            }
        });
        App { addr, received, stop }
    }

    pub async fn count(&self) -> usize {
        self.received.lock().await.len()
    }
}

/// `hex(HMAC-SHA256(secret, body + timestamp))`, computed independently of
/// the gateway's signing code.
pub fn provider_signature(secret: &str, body: &[u8], timestamp: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.update(timestamp.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
