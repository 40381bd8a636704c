//! Signing schemes: what message is built from a request and how it is MACed.
//!
//! Pure: bytes, a key and a timestamp string in; a signature out. No I/O and no
//! clock (the caller passes the timestamp). The built-in `kwikpaisa` scheme is
//! the template `{body}{timestamp}` over canonical JSON, lowercase hex; a
//! `[scheme.NAME]` table describes any other HMAC-SHA256 rule the same way.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderName;
use sha2::{Digest, Sha256};

use crate::canonical;

pub type HmacSha256 = Hmac<Sha256>;

/// Name of the built-in KwikPaisa v3 scheme.
pub const KWIKPAISA: &str = "kwikpaisa";

/// One piece of a message template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(Box<[u8]>),
    ApiKey,
    Timestamp,
    Method,
    Path,
    Query,
    Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Sign (and send) the body bytes as received.
    Raw,
    /// Canonicalize the JSON body, then sign and send the canonical bytes.
    CanonicalJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// What is signed and sent when the request has no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyBody {
    /// Nothing (vector E1).
    Empty,
    /// `{}` (vector E2); the gateway then also sends `{}`.
    EmptyObject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampUnit {
    Seconds,
    Millis,
}

/// Apply the scheme's body rule: canonical JSON (or the configured empty
/// body), or the raw bytes as received. The result is what is signed and
/// what is sent.
pub fn prepare_body(scheme: &Scheme, raw: bytes::Bytes) -> Result<bytes::Bytes, canonical::Error> {
    if raw.is_empty() {
        return Ok(match scheme.empty_body {
            EmptyBody::Empty => bytes::Bytes::new(),
            EmptyBody::EmptyObject => bytes::Bytes::from_static(b"{}"),
        });
    }
    match scheme.body {
        BodyMode::Raw => Ok(raw),
        BodyMode::CanonicalJson => {
            let mut out = Vec::with_capacity(raw.len());
            CANONICALIZER.with(|c| c.borrow_mut().encode(&raw, &scheme.canonical, &mut out))?;
            Ok(bytes::Bytes::from(out))
        }
    }
}

thread_local! {
    /// Per-worker scratch space so canonicalization does not allocate its
    /// tape on every request.
    static CANONICALIZER: std::cell::RefCell<canonical::Canonicalizer> =
        std::cell::RefCell::new(canonical::Canonicalizer::new());
}

/// A signing scheme, built from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheme {
    pub name: String,
    pub message: Vec<Part>,
    pub body: BodyMode,
    pub encoding: Encoding,
    pub api_key_header: HeaderName,
    pub timestamp_header: HeaderName,
    pub signature_header: HeaderName,
    pub timestamp_unit: TimestampUnit,
    pub canonical: canonical::Options,
    pub empty_body: EmptyBody,
}

/// The request facts a message template can refer to.
#[derive(Debug, Clone, Copy)]
pub struct MessageInput<'a> {
    pub api_key: &'a [u8],
    pub timestamp: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
}

/// An encoded signature held on the stack (hex: 64 bytes, base64: 44 bytes).
#[derive(Clone, Copy)]
pub struct Signature {
    buf: [u8; 88],
    len: usize,
    /// The MAC itself, before encoding.
    mac: [u8; 32],
}

impl Signature {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex/base64 digits are ever written into `buf`.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The raw MAC (what a reflected signature is recognised by, whatever
    /// the case of its hex digits).
    pub fn mac(&self) -> &[u8; 32] {
        &self.mac
    }

    /// First 12 hex chars of SHA-256 of the signature: identifies it in audit
    /// records without making it replayable.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.as_bytes())
    }
}

/// The signature value is a credential for one request: keep it out of `Debug`.
impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(fp:{})", self.fingerprint())
    }
}

/// First 12 hex chars of SHA-256 of `sig`.
pub fn fingerprint(sig: &[u8]) -> String {
    let digest = Sha256::digest(sig);
    let mut out = [0u8; 64];
    // 32-byte input always fits 64 hex chars.
    let _ = hex::encode_to_slice(digest, &mut out);
    String::from_utf8_lossy(&out[..12]).into_owned()
}

/// A formatted timestamp held on the stack.
#[derive(Clone, Copy)]
pub struct Timestamp {
    buf: [u8; 20],
    len: usize,
}

impl Timestamp {
    pub fn from_u64(v: u64) -> Self {
        let mut buf = [0u8; 20];
        let mut tmp = [0u8; 20];
        let mut n = v;
        let mut i = 0;
        loop {
            tmp[i] = b'0' + (n % 10) as u8;
            n /= 10;
            i += 1;
            if n == 0 {
                break;
            }
        }
        for j in 0..i {
            buf[j] = tmp[i - 1 - j];
        }
        Timestamp { buf, len: i }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("0")
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Scheme {
    /// KwikPaisa v3: `X-SIGNATURE = hex(HMAC-SHA256(secret, canonical_json + X-TIMESTAMP))`.
    pub fn kwikpaisa() -> Scheme {
        Scheme {
            name: KWIKPAISA.to_string(),
            message: vec![Part::Body, Part::Timestamp],
            body: BodyMode::CanonicalJson,
            encoding: Encoding::Hex,
            api_key_header: HeaderName::from_static("x-api-key"),
            timestamp_header: HeaderName::from_static("x-timestamp"),
            signature_header: HeaderName::from_static("x-signature"),
            timestamp_unit: TimestampUnit::Seconds,
            canonical: canonical::Options::default(),
            empty_body: EmptyBody::Empty,
        }
    }

    /// The three headers this scheme sets; a client may never send its own.
    pub fn headers(&self) -> [&HeaderName; 3] {
        [&self.api_key_header, &self.timestamp_header, &self.signature_header]
    }

    /// The timestamp for `now` in this scheme's unit (wall clock).
    pub fn timestamp(&self, now: SystemTime) -> Timestamp {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        match self.timestamp_unit {
            TimestampUnit::Seconds => Timestamp::from_u64(since.as_secs()),
            TimestampUnit::Millis => Timestamp::from_u64(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Feed the message into `mac` piece by piece (no intermediate copy).
    fn feed(&self, mac: &mut HmacSha256, input: &MessageInput<'_>) {
        for part in &self.message {
            mac.update(self.part(part, input));
        }
    }

    fn part<'a>(&'a self, part: &'a Part, input: &MessageInput<'a>) -> &'a [u8] {
        match part {
            Part::Literal(b) => b,
            Part::ApiKey => input.api_key,
            Part::Timestamp => input.timestamp.as_bytes(),
            Part::Method => input.method.as_bytes(),
            Part::Path => input.path.as_bytes(),
            Part::Query => input.query.as_bytes(),
            Part::Body => input.body,
        }
    }

    /// The exact signed string (for `signgate sign` and debugging; the hot
    /// path never builds it).
    pub fn message_bytes(&self, input: &MessageInput<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for part in &self.message {
            out.extend_from_slice(self.part(part, input));
        }
        out
    }

    /// Sign with a MAC already keyed with the secret (cloned per request).
    pub fn sign(&self, keyed: &HmacSha256, input: &MessageInput<'_>) -> Signature {
        let mut mac = keyed.clone();
        self.feed(&mut mac, input);
        self.signature(mac.finalize().into_bytes().into())
    }

    /// The signature header value of a MAC computed elsewhere (Vault
    /// Transit), in this scheme's encoding.
    pub fn signature(&self, mac: [u8; 32]) -> Signature {
        let mut sig = Signature {
            buf: [0u8; 88],
            len: 0,
            mac,
        };
        match self.encoding {
            Encoding::Hex => {
                let _ = hex::encode_to_slice(mac, &mut sig.buf[..64]);
                sig.len = 64;
            }
            Encoding::Base64 => {
                sig.len = base64::engine::general_purpose::STANDARD
                    .encode_slice(mac, &mut sig.buf)
                    .unwrap_or(0);
            }
        }
        sig
    }

    /// Constant-time check of a received signature (webhooks). Hex is accepted
    /// in either case; anything undecodable is simply a mismatch.
    pub fn verify(&self, keyed: &HmacSha256, input: &MessageInput<'_>, received: &[u8]) -> bool {
        let Some(raw) = self.decode(received) else {
            return false;
        };
        let mut mac = keyed.clone();
        self.feed(&mut mac, input);
        mac.verify_slice(&raw).is_ok()
    }

    /// The MAC a received signature header carries, decoded as `verify`
    /// decodes it; `None` if it is not a well-formed signature.
    pub fn decode(&self, received: &[u8]) -> Option<[u8; 32]> {
        let mut raw = [0u8; 32];
        let decoded = match self.encoding {
            Encoding::Hex => hex::decode_to_slice(received, &mut raw).is_ok(),
            Encoding::Base64 => matches!(
                base64::engine::general_purpose::STANDARD.decode_slice(received, &mut raw),
                Ok(32)
            ),
        };
        decoded.then_some(raw)
    }

    /// Whether the message uses the body at all (a template may not).
    pub fn signs_body(&self) -> bool {
        self.message.contains(&Part::Body)
    }
}

/// Key an HMAC-SHA256 once per secret; the keyed state is cloned per request.
pub fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC-SHA256 accepts any key length")
}

/// Parse a message template: `{name}` placeholders, `{{`/`}}` for literal braces.
pub fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = Vec::new();
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' if b.get(i + 1) == Some(&b'{') => {
                lit.push(b'{');
                i += 2;
            }
            b'}' if b.get(i + 1) == Some(&b'}') => {
                lit.push(b'}');
                i += 2;
            }
            b'{' => {
                let end = t[i..].find('}').ok_or("an unclosed '{' in the template")? + i;
                let part = match &t[i + 1..end] {
                    "api_key" => Part::ApiKey,
                    "timestamp" => Part::Timestamp,
                    "method" => Part::Method,
                    "path" => Part::Path,
                    "query" => Part::Query,
                    "body" => Part::Body,
                    other => {
                        return Err(format!(
                            "placeholders from api_key, timestamp, method, path, query, body (found {{{other}}})"
                        ))
                    }
                };
                if !lit.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut lit).into_boxed_slice()));
                }
                parts.push(part);
                i = end + 1;
            }
            b'}' => return Err("a '}' without '{' (write '}}' for a literal brace)".into()),
            c => {
                lit.push(c);
                i += 1;
            }
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Literal(lit.into_boxed_slice()));
    }
    if !parts.contains(&Part::Timestamp) {
        return Err("a template containing {timestamp} (a signature without a fresh timestamp can be replayed)".into());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
