//! The clients around the gateway: [`TestClient`] (plain HTTP/1.1 or h2c,
//! optionally from a chosen loopback source address), [`https_post`] (TLS,
//! optionally with a client certificate), and [`App`], the merchant's
//! internal app that receives delivered webhook events; and raw TCP
//! helpers ([`connect_from`], [`read_until_closed`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use signgate::devtools::pki::{DevCa, Issued};

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

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
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

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, &[], "").await
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

/// An HTTPS request over rustls with an optional client certificate. `Err`
/// carries the TLS or connection error (e.g. a refused handshake).
pub async fn https_post(
    addr: SocketAddr,
    ca: &DevCa,
    client_cert: Option<&Issued>,
    path: &str,
    body: &str,
) -> Result<Reply, String> {
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

/// Read from `s` until the peer closes it or `within` passes. `Ok(bytes)`
/// when closed (EOF or reset), `Err(bytes)` when still open at the deadline.
pub async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A TCP connection from a chosen loopback source address.
pub async fn connect_from(src: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}
