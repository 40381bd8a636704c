//! `webhook`: the receive path's signature and freshness checks
//! ([`crate::webhook::Verifier`]) on arbitrary header values and bodies.
//!
//! Input: a flags byte, a flip byte, then NUL-separated fields: timestamp
//! header, signature header, body (the body keeps NULs).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};

use crate::canonical;
use crate::config::WebhookConfig;
use crate::secrets::{Credential, Material, SecretBytes};
use crate::sign::{self, Encoding, MessageInput, Scheme, TimestampUnit};
use crate::webhook::Refusal as GatewayError;
use crate::webhook::{signed_headers, Verifier};

/// The clock for fuzzed timestamps (the reference vectors' timestamp).
const NOW: u64 = 1_778_659_835;
const TOLERANCE: Duration = Duration::from_secs(300);
const MATCH_PATH: &str = "/webhooks/kwikpaisa";

struct Fixture {
    /// The built-in kwikpaisa scheme, and a template scheme (base64, millis,
    /// raw UTF-8, method and path signed).
    schemes: [Scheme; 2],
    /// The current credential and the one a rotation replaced.
    creds: [Arc<Credential>; 2],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cred = |name: &str, secret: &str| {
            let m = Material::secret(
                SecretBytes::from(format!("pk_{name}")),
                SecretBytes::from(secret.to_string()),
                None,
            );
            Arc::new(Credential::from_material(name, &m).expect("fixture credential is valid"))
        };
        let mut template = Scheme::kwikpaisa();
        template.name = "template".into();
        template.message = sign::parse_template("{timestamp}.{method}.{path}.{body}").expect("fixture template");
        template.encoding = Encoding::Base64;
        template.timestamp_unit = TimestampUnit::Millis;
        template.canonical.escape_unicode = false;
        Fixture {
            schemes: [Scheme::kwikpaisa(), template],
            creds: [
                cred("current", "fuzz-current-secret-0123456789"),
                cred("previous", "fuzz-previous-secret-987654321"),
            ],
        }
    })
}

fn config(verify_canonical: bool) -> WebhookConfig {
    WebhookConfig {
        name: "fuzz".into(),
        match_path: MATCH_PATH.into(),
        credential: "current".into(),
        scheme: "kwikpaisa".into(),
        tolerance: TOLERANCE,
        forward_to: http::Uri::from_static("http://127.0.0.1:9/"),
        verify_canonical,
        dedup_keys: Vec::new(),
        dedup_window: Duration::from_secs(60),
        allow: None,
        max_attempts: 1,
        rotation_grace: Duration::from_secs(60),
    }
}

/// Flags: bit 0 the template scheme, bit 1 `verify_canonical`, bit 2 the
/// previous credential is still a candidate, bit 3 sign with the previous one,
/// bits 4-6 which bit to flip (in the byte the flip byte points at).
///
/// Properties: arbitrary headers are refused with `bad_signature`,
/// `stale_timestamp` or `invalid_json`, and accepted only with a signature
/// this test computes too; a correct signature (raw or, when configured,
/// canonical) over the fuzzed body and timestamp is accepted unless the body
/// is not JSON or the timestamp is not fresh, and is refused when made with a
/// credential that is not a candidate; a signature with one bit flipped, or
/// a timestamp or raw body with one bit flipped, is refused.
pub fn webhook(data: &[u8]) {
    let [flags, flip] = match data.first_chunk::<2>() {
        Some(&h) => h,
        None => return,
    };
    let [ts, sig, body] = super::fields::<3>(&data[2..]);
    let fx = fixture();
    let scheme = &fx.schemes[usize::from(flags & 1)];
    let config = config(flags & 2 != 0);
    let creds = if flags & 4 != 0 { &fx.creds[..] } else { &fx.creds[..1] };
    let signer = &fx.creds[usize::from(flags >> 3 & 1)];
    let verifier = Verifier {
        scheme,
        config: &config,
        creds,
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW);

    // Arbitrary header bytes, as hyper would hand them over.
    let mut headers = HeaderMap::new();
    for (name, value) in [(&scheme.timestamp_header, ts), (&scheme.signature_header, sig)] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name.clone(), v);
        }
    }
    let Some((sig_header, ts_header)) = signed_headers(scheme, &headers) else {
        return;
    };
    assert_eq!((sig_header.as_bytes(), ts_header.as_bytes()), (sig, ts));
    match verifier.verify(sig_header, ts_header, body, now) {
        Ok(()) => {
            let genuine = creds.iter().any(|c| {
                let expect = |b: &[u8]| signature(scheme, c, ts_header, b);
                let canonical = canonical::canonicalize(body, &scheme.canonical).ok();
                same_signature(scheme, sig_header, &expect(body))
                    || config.verify_canonical
                        && canonical.is_some_and(|c| same_signature(scheme, sig_header, &expect(&c)))
            });
            assert!(genuine, "accepted a signature nobody made");
        }
        Err(GatewayError::BadSignature | GatewayError::StaleTimestamp | GatewayError::InvalidJson { .. }) => {}
        Err(e) => panic!("unexpected refusal {e:?}"),
    }

    // A genuine signature over the fuzzed body and timestamp.
    let canonical = canonical::canonicalize(body, &scheme.canonical);
    let ts_num: Option<u64> = ts_header.parse().ok();
    let ts_secs = ts_num.map(|t| match scheme.timestamp_unit {
        TimestampUnit::Seconds => t,
        TimestampUnit::Millis => t / 1000,
    });
    // The clock at the signed time, where a SystemTime can hold it; else the
    // fixed clock, against which such a timestamp is stale.
    let at_ts = ts_secs.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)));
    let fresh_now = at_ts.unwrap_or(now);
    let clock = fresh_now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let fresh = ts_secs.is_some_and(|s| s.abs_diff(clock) <= TOLERANCE.as_secs());
    let candidate = creds.iter().any(|c| Arc::ptr_eq(c, signer));
    let raw_sig = signature(scheme, signer, ts_header, body);
    let got = verifier.verify(&raw_sig, ts_header, body, fresh_now);
    let want = if !candidate {
        Err(GatewayError::BadSignature)
    } else if let Err(e) = &canonical {
        Err(GatewayError::InvalidJson {
            offset: e.offset,
            reason: e.reason,
        })
    } else if !fresh {
        Err(GatewayError::StaleTimestamp)
    } else {
        Ok(())
    };
    assert_eq!(got, want, "a signature over the raw body");
    if scheme.encoding == Encoding::Hex {
        let upper = raw_sig.to_ascii_uppercase();
        assert_eq!(
            verifier.verify(&upper, ts_header, body, fresh_now),
            want,
            "upper-case hex"
        );
    }
    if let (Ok(()), Some(s)) = (&want, ts_secs) {
        let later = s
            .checked_add(TOLERANCE.as_secs() + 1)
            .and_then(|l| UNIX_EPOCH.checked_add(Duration::from_secs(l)));
        if let Some(later) = later {
            assert_eq!(
                verifier.verify(&raw_sig, ts_header, body, later),
                Err(GatewayError::StaleTimestamp),
                "an old signature"
            );
        }
    }
    if let Ok(c) = &canonical {
        let canon_sig = signature(scheme, signer, ts_header, c);
        let got = verifier.verify(&canon_sig, ts_header, body, fresh_now);
        let genuine = candidate && (config.verify_canonical || c[..] == body[..]);
        let want = match (genuine, fresh) {
            (false, _) => Err(GatewayError::BadSignature),
            (true, false) => Err(GatewayError::StaleTimestamp),
            (true, true) => Ok(()),
        };
        assert_eq!(got, want, "a signature over the canonical body");
    }
    if want.is_err() {
        return;
    }

    // One bit flipped: in the MAC, in the timestamp, in the body.
    let mut digest = decode(scheme, &raw_sig);
    let (pos, bit) = (usize::from(flip), flags >> 4 & 7);
    digest[pos % 32] ^= 1 << bit;
    let flipped = encode(scheme, &digest);
    assert_eq!(
        verifier.verify(&flipped, ts_header, body, fresh_now),
        Err(GatewayError::BadSignature),
        "a flipped signature bit"
    );
    if !ts_header.is_empty() {
        let mut t = ts_header.as_bytes().to_vec();
        let at = pos % t.len();
        t[at] ^= 1 << bit;
        if let Ok(t) = std::str::from_utf8(&t) {
            let r = verifier.verify(&raw_sig, t, body, fresh_now);
            assert_eq!(r, Err(GatewayError::BadSignature), "a flipped timestamp bit");
        }
    }
    if !body.is_empty() {
        let mut b = body.to_vec();
        let at = pos % b.len();
        b[at] ^= 1 << bit;
        if verifier.verify(&raw_sig, ts_header, &b, fresh_now).is_ok() {
            // Only the canonical re-encoding may make another body genuine.
            let same = canonical::canonicalize(&b, &scheme.canonical).is_ok_and(|c| c[..] == body[..]);
            assert!(config.verify_canonical && same, "a flipped body bit verifies");
        }
    }
}

fn signature(scheme: &Scheme, cred: &Credential, timestamp: &str, body: &[u8]) -> String {
    let input = MessageInput {
        api_key: cred.api_key().as_bytes(),
        timestamp,
        method: "POST",
        path: MATCH_PATH,
        query: "",
        body,
    };
    let mac = cred.mac().expect("fixture credentials are held in memory");
    scheme.sign(mac, &input).as_str().to_string()
}

fn same_signature(scheme: &Scheme, received: &str, expected: &str) -> bool {
    match scheme.encoding {
        Encoding::Hex => received.eq_ignore_ascii_case(expected),
        Encoding::Base64 => received == expected,
    }
}

fn decode(scheme: &Scheme, s: &str) -> Vec<u8> {
    let d = match scheme.encoding {
        Encoding::Hex => hex::decode(s).ok(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(s).ok(),
    };
    d.expect("own signature decodes")
}

fn encode(scheme: &Scheme, digest: &[u8]) -> String {
    match scheme.encoding {
        Encoding::Hex => hex::encode(digest),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(digest),
    }
}
