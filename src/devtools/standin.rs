//! A local stand-in for the provider (KwikPaisa v3 rules), for `signgate demo`
//! and the tests. It serves TLS (or plain HTTP) on loopback, and for every
//! request recomputes `hex(HMAC-SHA256(secret, raw body + X-TIMESTAMP))`
//! itself, straight from the bytes it received (it shares no signing code
//! with the gateway), checks the API key and the timestamp window, records
//! what it saw, and answers 200 or 401 like the provider.
//!
//! More than one (API key, secret) pair can be accepted at once
//! ([`Standin::accept`]), as a provider does while a secret is rotated.
//!
//! Test hooks by path, compiled only with the `test-hooks` feature (the
//! crate's own tests): `/hang` never answers, `/slow/MS` answers after MS ms,
//! `/status/NNN` answers that status (with `Retry-After: 7` for 429/503,
//! or the value of `?retry_after=`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::secrets::SecretBytes;

/// What the stand-in concluded about a request's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    MissingHeader(&'static str),
    WrongApiKey,
    StaleTimestamp,
    BadSignature,
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// HTTP trailers that came after the body (empty when none).
    pub trailers: HeaderMap,
    pub peer: SocketAddr,
    pub verdict: Verdict,
}

pub struct StandinOptions {
    pub api_key: String,
    pub secret: SecretBytes,
    /// Accepted distance of `X-TIMESTAMP` from the stand-in's clock.
    pub tolerance: Duration,
    /// `Some((cert chain, key))` to serve TLS; `None` for plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub bind: SocketAddr,
}

/// The (API key, secret) pairs the stand-in accepts.
type Keys = ArcSwap<Vec<(String, SecretBytes)>>;

/// A running stand-in. Dropping it stops it.
pub struct Standin {
    addr: SocketAddr,
    keys: Arc<Keys>,
    records: Arc<Mutex<Vec<Recorded>>>,
    events: Mutex<mpsc::UnboundedReceiver<Recorded>>,
    cancel: CancellationToken,
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Shared {
    keys: Arc<Keys>,
    tolerance: Duration,
    records: Arc<Mutex<Vec<Recorded>>>,
    events: mpsc::UnboundedSender<Recorded>,
    /// Releases `/hang` requests at stop (test hooks only).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    cancel: CancellationToken,
}

impl Standin {
    pub async fn start(opts: StandinOptions) -> std::io::Result<Standin> {
        let listener = TcpListener::bind(opts.bind).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let records = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let keys = Arc::new(ArcSwap::from_pointee(vec![(opts.api_key, opts.secret)]));
        let shared = Arc::new(Shared {
            keys: keys.clone(),
            tolerance: opts.tolerance,
            records: records.clone(),
            events: tx,
            cancel: cancel.clone(),
        });
        let acceptor = opts.tls.map(TlsAcceptor::from);
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| respond(shared.clone(), peer, req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let served = async {
                        match acceptor {
                            Some(a) => {
                                if let Ok(tls) = a.accept(stream).await {
                                    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                                }
                            }
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = served => {}
                    }
                });
            }
        });
        Ok(Standin {
            addr,
            keys,
            records,
            events: Mutex::new(rx),
            cancel,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Also accept this (API key, secret) pair from now on (a rotation: the
    /// provider honours the old and the new secret for a while).
    pub fn accept(&self, api_key: &str, secret: SecretBytes) {
        self.keys.rcu(|keys| {
            let mut keys = Vec::clone(keys);
            keys.push((api_key.to_string(), secret.clone()));
            keys
        });
    }

    /// Everything received so far.
    pub async fn records(&self) -> Vec<Recorded> {
        self.records.lock().await.clone()
    }

    /// Wait for the next request (with a deadline).
    pub async fn next(&self, within: Duration) -> Option<Recorded> {
        tokio::time::timeout(within, async { self.events.lock().await.recv().await })
            .await
            .ok()
            .flatten()
    }

    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

fn verify(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Verdict {
    let get = |name: &'static str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(key), Some(ts), Some(sig)) = (get("x-api-key"), get("x-timestamp"), get("x-signature")) else {
        return Verdict::MissingHeader(if get("x-api-key").is_none() {
            "X-API-KEY"
        } else if get("x-timestamp").is_none() {
            "X-TIMESTAMP"
        } else {
            "X-SIGNATURE"
        });
    };
    if headers.get_all("x-signature").iter().count() != 1 || headers.get_all("x-api-key").iter().count() != 1 {
        return Verdict::BadSignature;
    }
    let keys = shared.keys.load();
    let Some((_, secret)) = keys.iter().find(|(k, _)| k == key) else {
        return Verdict::WrongApiKey;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    match ts.parse::<u64>() {
        Ok(t) if now.abs_diff(t) <= shared.tolerance.as_secs() => {}
        _ => return Verdict::StaleTimestamp,
    }
    let Ok(expected) = hex::decode(sig) else {
        return Verdict::BadSignature;
    };
    if sig.bytes().any(|b| b.is_ascii_uppercase()) {
        return Verdict::BadSignature;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose()) else {
        return Verdict::BadSignature;
    };
    mac.update(body);
    mac.update(ts.as_bytes());
    if mac.verify_slice(&expected).is_ok() {
        Verdict::Valid
    } else {
        Verdict::BadSignature
    }
}

async fn respond(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Keep the trailers: `to_bytes()` alone would drop them, and the tests
    // must see any that reach the provider.
    let (body, trailers) = match body.collect().await {
        Ok(c) => {
            let trailers = c.trailers().cloned().unwrap_or_default();
            (c.to_bytes(), trailers)
        }
        Err(_) => Default::default(),
    };
    let verdict = verify(&shared, &parts.headers, &body);
    let path = parts.uri.path().to_string();
    let rec = Recorded {
        method: parts.method.clone(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
        trailers,
        peer,
        verdict,
    };
    shared.records.lock().await.push(rec.clone());
    let _ = shared.events.send(rec);

    let (status, body) = if let Some(hooked) = hooks::apply(&shared, &path).await {
        hooked
    } else if verdict == Verdict::Valid {
        (
            StatusCode::OK,
            r#"{"status":"success","code":"200","message":"signature verified by the stand-in","return_data":{}}"#
                .to_string(),
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            format!(r#"{{"status":false,"code":401,"message":"Invalid signature. ({verdict:?})"}}"#),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let retry_after = hooks::retry_after(parts.uri.query().unwrap_or("")).unwrap_or(HeaderValue::from_static("7"));
        resp.headers_mut().insert(http::header::RETRY_AFTER, retry_after);
    }
    Ok(resp)
}

/// The test hooks (see the module doc); without the feature, none.
mod hooks {
    use super::Shared;
    use http::StatusCode;

    #[cfg(feature = "test-hooks")]
    pub(super) async fn apply(shared: &Shared, path: &str) -> Option<(StatusCode, String)> {
        if path == "/hang" {
            shared.cancel.cancelled().await;
        }
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|s| s.parse::<u64>().ok()) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let code = path.strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok())?;
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Some((
            status,
            format!(r#"{{"status":false,"code":{code},"message":"stand-in status {code}"}}"#),
        ))
    }

    /// `?retry_after=VALUE` on a `/status/NNN` hook: the `Retry-After` to
    /// answer (seconds or an HTTP date) instead of 7.
    #[cfg(feature = "test-hooks")]
    pub(super) fn retry_after(query: &str) -> Option<http::HeaderValue> {
        let raw = query.split('&').find_map(|p| p.strip_prefix("retry_after="))?;
        let decoded = raw.replace("%20", " ").replace("%2C", ",").replace("%3A", ":");
        http::HeaderValue::from_str(&decoded).ok()
    }

    #[cfg(not(feature = "test-hooks"))]
    pub(super) fn retry_after(_query: &str) -> Option<http::HeaderValue> {
        None
    }

    #[cfg(not(feature = "test-hooks"))]
    pub(super) async fn apply(_shared: &Shared, _path: &str) -> Option<(StatusCode, String)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Trailers sent after a chunked body are recorded (so a test that
    /// asserts none reached the provider could see one that did).
    #[tokio::test]
    async fn trailers_are_recorded() {
        let s = Standin::start(StandinOptions {
            api_key: "k".into(),
            secret: SecretBytes::from("s".to_string()),
            tolerance: Duration::from_secs(60),
            tls: None,
            bind: "127.0.0.1:0".parse().unwrap(),
        })
        .await
        .unwrap();
        let mut c = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
        c.write_all(
            b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              2\r\n{}\r\n0\r\nX-Signature: forged-zz-sig\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        let rec = s.records().await.pop().expect("a record");
        assert_eq!(rec.body.as_ref(), b"{}");
        assert_eq!(rec.trailers["x-signature"], "forged-zz-sig");
    }
}
