//! The HTTP side of the vault source: one pooled hyper-util client over the
//! upstream client's TCP+rustls connector, every call under the caller's
//! deadline. Bodies (tokens, secret_ids, secrets) live in zeroizing buffers
//! (hyper's and rustls' own copies are out of reach); errors are stable words
//! naming the address, never a body, a token or a timing.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::upstream::{ConnectError, Connector};

/// Largest Vault answer read (a KV secret or a login answer is a few KiB).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// How long an idle connection to Vault is kept for the next refresh.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a call got no HTTP answer. Messages are stable (no timings, no
/// per-attempt values) so the runner logs one line per state change.
#[derive(Debug)]
pub enum CallError {
    /// No answer before the deadline.
    Timeout,
    /// Connect, TLS or protocol failure; the detail is hyper's/rustls' text.
    Unreachable(String),
    /// The answer exceeded `MAX_ANSWER_BYTES`.
    TooLarge,
}

/// A Vault answer: status and the whole body, zeroized on drop.
pub struct Answer {
    pub status: StatusCode,
    pub body: Zeroizing<Vec<u8>>,
}

pub struct VaultHttp {
    client: Client<Connector, SecretBody>,
    scheme: Scheme,
    authority: Authority,
}

impl VaultHttp {
    /// `tls` comes from `tls::vault_client_config`; plain `http://` is only
    /// accepted by validation for loopback addresses.
    /// `max_idle`: idle connections kept for the next call.
    pub fn new(
        addr: &Uri,
        tls: std::sync::Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Option<Self> {
        let scheme = addr.scheme().cloned()?;
        let authority = addr.authority().cloned()?;
        let connector = Connector::direct(tls, connect_timeout, scheme == Scheme::HTTP);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Some(VaultHttp {
            client,
            scheme,
            authority,
        })
    }

    /// The URI of an API path below `/v1/`, or `None` if the configured
    /// mount/path cannot form one.
    pub fn uri(&self, api_path: &str) -> Option<Uri> {
        let pq: PathAndQuery = format!("/v1/{api_path}").parse().ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    /// One call: `token` goes in `X-Vault-Token`, `body` (JSON) is sent from
    /// and dropped as a zeroizing buffer. Bounded by `deadline`.
    pub async fn call(
        &self,
        method: Method,
        uri: &Uri,
        token: Option<&str>,
        body: Option<Zeroizing<Vec<u8>>>,
        deadline: Instant,
    ) -> Result<Answer, CallError> {
        let mut req = Request::builder().method(method).uri(uri.clone());
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(t)
                .map_err(|_| CallError::Unreachable("the token is not a valid header value".into()))?;
            v.set_sensitive(true);
            req = req.header("x-vault-token", v);
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let req = req
            .body(SecretBody(body.map(|b| ZeroizingBuf { bytes: b, pos: 0 })))
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::Unreachable(describe(&e)))?;
            let (parts, body) = resp.into_parts();
            Ok(Answer {
                status: parts.status,
                body: collect(body).await?,
            })
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| CallError::Timeout)?
    }
}

/// The innermost useful cause, without addresses that change per attempt.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(ce) = s.downcast_ref::<ConnectError>() {
            return ce.to_string();
        }
        if let Some(he) = s.downcast_ref::<hyper::Error>() {
            return he.to_string();
        }
        source = s.source();
    }
    e.to_string()
}

/// Read the whole answer into a zeroizing buffer, growing it by hand: a `Vec`
/// reallocation would free the old buffer without wiping it.
async fn collect(mut body: Incoming) -> Result<Zeroizing<Vec<u8>>, CallError> {
    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(MAX_ANSWER_BYTES);
    let mut out = Zeroizing::new(Vec::with_capacity(hint.min(MAX_ANSWER_BYTES)));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CallError::Unreachable(format!("reading the answer: {e}")))?;
        if let Ok(data) = frame.into_data() {
            append(&mut out, &data)?;
        }
    }
    Ok(out)
}

pub fn append(out: &mut Zeroizing<Vec<u8>>, chunk: &[u8]) -> Result<(), CallError> {
    let need = out.len() + chunk.len();
    if need > MAX_ANSWER_BYTES {
        return Err(CallError::TooLarge);
    }
    if need > out.capacity() {
        let cap = need.max(out.capacity() * 2).clamp(1024, MAX_ANSWER_BYTES);
        let mut bigger = Zeroizing::new(Vec::with_capacity(cap));
        bigger.extend_from_slice(out);
        *out = bigger; // the old buffer is wiped as it drops
    }
    out.extend_from_slice(chunk);
    Ok(())
}

/// A request body sent from a zeroizing buffer (login JSON with the secret_id).
pub struct SecretBody(Option<ZeroizingBuf>);

pub struct ZeroizingBuf {
    bytes: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl Buf for ZeroizingBuf {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    fn advance(&mut self, cnt: usize) {
        self.pos = (self.pos + cnt).min(self.bytes.len());
    }
}

impl Body for SecretBody {
    type Data = ZeroizingBuf;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<ZeroizingBuf>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.remaining() as u64))
    }
}
