//! `template`: a signature template parsed as from `[scheme.NAME] message`,
//! rendered over arbitrary request facts and signed.
//!
//! Input: a flags byte, an 8-byte little-endian timestamp, then NUL-separated
//! fields: template, api key, method, path, query, body (the body keeps NULs).

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hmac::Mac as _;
use http::{HeaderName, HeaderValue};

use crate::canonical::{self, Options};
use crate::sign::prepare_body;
use crate::sign::{self, BodyMode, EmptyBody, Encoding, MessageInput, Part, Scheme, Timestamp, TimestampUnit};

/// The secret of the KwikPaisa reference vectors.
const SECRET: &[u8] = b"YOUR_SECRET_KEY";

/// Properties: a template that parses prints back to the same text and
/// always holds `{timestamp}`; the body is prepared as the scheme says; the
/// signature is deterministic, equals a one-shot HMAC over `message_bytes`,
/// is a valid header value of the scheme's encoding, verifies (hex in either
/// case) and stops verifying when one bit of it changes; timestamps print as
/// their number; `Debug` never shows the signature.
pub fn template(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((ts, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let [template, api_key, method, path, query, body] = super::fields::<6>(rest);
    let template = String::from_utf8_lossy(template);
    let message = match sign::parse_template(&template) {
        Ok(parts) => {
            check_parts(&template, &parts);
            parts
        }
        Err(why) => {
            assert!(!why.is_empty());
            // Still sign something: the built-in message.
            Scheme::kwikpaisa().message
        }
    };
    let scheme = Scheme {
        name: "fuzz".into(),
        message,
        body: if flags & 1 != 0 {
            BodyMode::CanonicalJson
        } else {
            BodyMode::Raw
        },
        encoding: if flags & 2 != 0 {
            Encoding::Base64
        } else {
            Encoding::Hex
        },
        timestamp_unit: if flags & 4 != 0 {
            TimestampUnit::Millis
        } else {
            TimestampUnit::Seconds
        },
        canonical: Options {
            escape_unicode: flags & 8 != 0,
            ..Options::default()
        },
        empty_body: if flags & 16 != 0 {
            EmptyBody::EmptyObject
        } else {
            EmptyBody::Empty
        },
        api_key_header: HeaderName::from_static("x-api-key"),
        timestamp_header: HeaderName::from_static("x-timestamp"),
        signature_header: HeaderName::from_static("x-signature"),
    };
    let Some(body) = check_body(&scheme, body) else {
        return;
    };
    let ts = check_timestamp(&scheme, u64::from_le_bytes(*ts));
    let (method, path, query) = (
        String::from_utf8_lossy(method),
        String::from_utf8_lossy(path),
        String::from_utf8_lossy(query),
    );
    let input = MessageInput {
        api_key,
        timestamp: ts.as_str(),
        method: &method,
        path: &path,
        query: &query,
        body: &body,
    };
    check_signature(&scheme, &input);
}

/// Prints parsed parts back as template text (`{` and `}` doubled in literals).
fn unparse(parts: &[Part]) -> String {
    let mut out = Vec::new();
    for p in parts {
        let name: &[u8] = match p {
            Part::Literal(b) => {
                for &c in b.iter() {
                    match c {
                        b'{' => out.extend_from_slice(b"{{"),
                        b'}' => out.extend_from_slice(b"}}"),
                        c => out.push(c),
                    }
                }
                continue;
            }
            Part::ApiKey => b"{api_key}",
            Part::Timestamp => b"{timestamp}",
            Part::Method => b"{method}",
            Part::Path => b"{path}",
            Part::Query => b"{query}",
            Part::Body => b"{body}",
        };
        out.extend_from_slice(name);
    }
    String::from_utf8(out).expect("literals are pieces of a str split at ASCII braces")
}

fn check_parts(template: &str, parts: &[Part]) {
    assert_eq!(unparse(parts), template, "the parsed template prints back differently");
    assert!(
        parts.contains(&Part::Timestamp),
        "a template without {{timestamp}} parsed"
    );
    for w in parts.windows(2) {
        let adjacent = matches!(w, [Part::Literal(_), Part::Literal(_)]);
        assert!(!adjacent, "two literals in a row");
    }
    for p in parts {
        assert!(!matches!(p, Part::Literal(b) if b.is_empty()), "an empty literal");
    }
}

/// The body as the proxy prepares it, or `None` if the proxy would refuse it.
fn check_body(scheme: &Scheme, raw: &[u8]) -> Option<Bytes> {
    let prepared = prepare_body(scheme, Bytes::copy_from_slice(raw));
    let expected = if raw.is_empty() {
        Ok(match scheme.empty_body {
            EmptyBody::Empty => Vec::new(),
            EmptyBody::EmptyObject => b"{}".to_vec(),
        })
    } else if scheme.body == BodyMode::Raw {
        Ok(raw.to_vec())
    } else {
        canonical::canonicalize(raw, &scheme.canonical)
    };
    match (prepared, expected) {
        (Ok(got), Ok(want)) => {
            assert_eq!(got, want, "prepare_body");
            Some(got)
        }
        (Err(got), Err(e)) => {
            assert_eq!((got.offset, got.reason), (e.offset, e.reason), "prepare_body error");
            None
        }
        (got, want) => panic!("prepare_body gave {got:?}, expected {want:?}"),
    }
}

fn check_timestamp(scheme: &Scheme, v: u64) -> Timestamp {
    let ts = Timestamp::from_u64(v);
    assert_eq!(ts.as_str(), v.to_string(), "Timestamp::from_u64");
    assert!(HeaderValue::from_str(ts.as_str()).is_ok());
    let since = match scheme.timestamp_unit {
        TimestampUnit::Seconds => Duration::from_secs(v),
        TimestampUnit::Millis => Duration::from_millis(v),
    };
    if let Some(now) = UNIX_EPOCH.checked_add(since) {
        assert_eq!(scheme.timestamp(now).as_str(), ts.as_str(), "Scheme::timestamp");
    }
    ts
}

fn check_signature(scheme: &Scheme, input: &MessageInput<'_>) {
    let keyed = sign::keyed_mac(SECRET);
    let sig = scheme.sign(&keyed, input);
    assert_eq!(
        scheme.sign(&sign::keyed_mac(SECRET), input).as_bytes(),
        sig.as_bytes(),
        "signing is not deterministic"
    );
    assert_eq!(
        scheme.sign(&keyed, input).as_bytes(),
        sig.as_bytes(),
        "the keyed MAC changed"
    );
    let message = scheme.message_bytes(input);
    let mut mac = sign::keyed_mac(SECRET);
    mac.update(&message);
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    let s = sig.as_str();
    match scheme.encoding {
        Encoding::Hex => {
            assert_eq!(s, hex::encode(digest), "streamed MAC differs from one shot");
            assert!(
                scheme.verify(&keyed, input, s.to_ascii_uppercase().as_bytes()),
                "upper-case hex"
            );
        }
        Encoding::Base64 => {
            let want = base64::engine::general_purpose::STANDARD.encode(digest);
            assert_eq!(s, want, "streamed MAC differs from one shot");
        }
    }
    assert!(
        HeaderValue::from_bytes(sig.as_bytes()).is_ok(),
        "signature is no header value"
    );
    assert!(
        scheme.verify(&keyed, input, sig.as_bytes()),
        "own signature does not verify"
    );
    assert!(
        !scheme.verify(&keyed, input, &sig.as_bytes()[1..]),
        "a truncated signature verifies"
    );
    let bit = message.len() % 256;
    let mut flipped = digest;
    flipped[bit / 8] ^= 1 << (bit % 8);
    let flipped = match scheme.encoding {
        Encoding::Hex => hex::encode(flipped),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(flipped),
    };
    assert!(
        !scheme.verify(&keyed, input, flipped.as_bytes()),
        "a 1-bit flip verifies"
    );
    assert!(!format!("{sig:?}").contains(s), "Debug shows the signature");
}
