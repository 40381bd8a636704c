use bytes::Bytes;

use super::prepare_body;
use super::*;

const SECRET: &[u8] = b"YOUR_SECRET_KEY";
const TS: &str = "1778659835";
const VECTORS: &str = include_str!("../../tests/data/kwikpaisa-vectors.json");

fn vectors() -> serde_json::Value {
    serde_json::from_str(VECTORS).unwrap()
}

/// (label, signed string, signature) of the row whose label starts with `id`.
fn row(id: &str) -> (String, String) {
    // The empty-body rows are only in the reference's prose (§5), not in the JSON.
    match id {
        "E1" => {
            return (
                "1778659835".into(),
                "bbca6fee03052323f33bb27708055465cf991719271f59e94f37e8501662a3dd".into(),
            )
        }
        "E2" => {
            return (
                "{}1778659835".into(),
                "2b6ecbf158024d10c78e18181c8373d4d157b298534fa1517cc6bd1d92546a5b".into(),
            )
        }
        _ => {}
    }
    let v = vectors();
    for group in ["a", "b", "webhook"] {
        for r in v[group].as_array().unwrap() {
            if r[0].as_str().unwrap().starts_with(id) {
                return (r[1].as_str().unwrap().to_string(), r[2].as_str().unwrap().to_string());
            }
        }
    }
    panic!("no vector {id}");
}

fn input<'a>(body: &'a [u8]) -> MessageInput<'a> {
    MessageInput {
        api_key: b"pk_test_x",
        timestamp: TS,
        method: "POST",
        path: "/api/v3/pg/order/create",
        query: "",
        body,
    }
}

fn sign_body(scheme: &Scheme, raw: &str) -> (Vec<u8>, String) {
    let body = prepare_body(scheme, Bytes::from(raw.to_string())).unwrap();
    let inp = input(&body);
    let sig = scheme.sign(&keyed_mac(SECRET), &inp);
    (scheme.message_bytes(&inp), sig.as_str().to_string())
}

#[test]
fn a1_through_the_kwikpaisa_scheme() {
    let (signed, sig) = row("A1");
    let (msg, got) = sign_body(
        &Scheme::kwikpaisa(),
        "{\n  \"order_id\": \"123456\",\n  \"amount\": \"100\"\n}\n",
    );
    assert_eq!(String::from_utf8(msg).unwrap(), signed);
    assert_eq!(got, sig);
    // A10 (upper-case hex) is a different string; we always emit lower case.
    assert_ne!(got, row("A10").1);
}

#[test]
fn b1_and_b2_per_escape_unicode() {
    let nested = r#"{"order_id":"ORD-2026-0001","order_amount":105.5,"quantity":2,
      "return_url":"https://merchant.example.com/pay/return?order=ORD-2026-0001","service_type":"DIGITAL",
      "customer":{"phone":"9816512345","name":"Ajay Kumar","email":"dev@merchant.example.com"},
      "order_note":"Fee ₹105.50 / कर","meta":{"tags":["z/1","a"],"b":{"y":1,"x":2.25}}}"#;
    let mut raw_utf8 = Scheme::kwikpaisa();
    raw_utf8.canonical.escape_unicode = false;
    let (msg, sig) = sign_body(&raw_utf8, nested);
    assert_eq!((String::from_utf8(msg).unwrap(), sig), row("B1"));
    let (msg, sig) = sign_body(&Scheme::kwikpaisa(), nested);
    assert_eq!((String::from_utf8(msg).unwrap(), sig), row("B2"));
}

#[test]
fn e1_e2_per_empty_body() {
    let mut s = Scheme::kwikpaisa();
    s.empty_body = EmptyBody::Empty;
    let (msg, sig) = sign_body(&s, "");
    assert_eq!((String::from_utf8(msg).unwrap(), sig), row("E1"));
    s.empty_body = EmptyBody::EmptyObject;
    let (msg, sig) = sign_body(&s, "");
    assert_eq!((String::from_utf8(msg).unwrap(), sig), row("E2"));
}

#[test]
fn w1_w2_raw_and_canonical() {
    let w1_body = r#"{"event":"payment.success","data":{"order_id":"6116229263036","amount":"105.00","currency":"INR","status":"PAID"}}"#;
    // Raw-body template: what a verifier over the bytes as received computes.
    let raw = Scheme {
        message: parse_template("{body}{timestamp}").unwrap(),
        body: BodyMode::Raw,
        ..Scheme::kwikpaisa()
    };
    let (msg, sig) = sign_body(&raw, w1_body);
    assert_eq!((String::from_utf8(msg).unwrap(), sig), row("W1"));
    let (msg, sig) = sign_body(&Scheme::kwikpaisa(), w1_body);
    assert_eq!((String::from_utf8(msg).unwrap(), sig), row("W2"));
}

#[test]
fn a11_base64_template() {
    let b64 = Scheme {
        encoding: Encoding::Base64,
        ..Scheme::kwikpaisa()
    };
    let (_, sig) = sign_body(&b64, r#"{"order_id":"123456","amount":"100"}"#);
    assert_eq!(sig, row("A11").1);
}

#[test]
fn template_placeholders_in_order() {
    let parts = parse_template("{timestamp}.{method}.{path}.{query}.{api_key}.{body}{{x}}").unwrap();
    let s = Scheme {
        message: parts,
        body: BodyMode::Raw,
        ..Scheme::kwikpaisa()
    };
    let body = b"raw body";
    let mut inp = input(body);
    inp.query = "a=1";
    assert_eq!(
        String::from_utf8(s.message_bytes(&inp)).unwrap(),
        "1778659835.POST./api/v3/pg/order/create.a=1.pk_test_x.raw body{x}"
    );
    // The signature is HMAC over exactly that string.
    let mut mac = keyed_mac(SECRET);
    mac.update(&s.message_bytes(&inp));
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(s.sign(&keyed_mac(SECRET), &inp).as_str(), expected);
}

#[test]
fn template_errors() {
    assert!(parse_template("{body}").unwrap_err().contains("{timestamp}"));
    assert!(parse_template("{timestamp}{nope}").unwrap_err().contains("nope"));
    assert!(parse_template("{timestamp").is_err());
    assert!(parse_template("{timestamp}}").is_err());
}

#[test]
fn verify_is_exact_and_case_tolerant_for_hex() {
    let s = Scheme::kwikpaisa();
    let (signed, sig) = row("A1");
    let body = signed.strip_suffix(TS).unwrap().as_bytes().to_vec();
    let inp = input(&body);
    let k = keyed_mac(SECRET);
    assert!(s.verify(&k, &inp, sig.as_bytes()));
    assert!(s.verify(&k, &inp, sig.to_uppercase().as_bytes()));
    assert!(!s.verify(&k, &inp, row("A2").1.as_bytes()));
    assert!(!s.verify(&k, &inp, b"zz"));
    assert!(!s.verify(&k, &inp, b""));
    assert!(!s.verify(&keyed_mac(b"another secret key"), &inp, sig.as_bytes()));
}

#[test]
fn timestamps_and_fingerprints() {
    assert_eq!(Timestamp::from_u64(0).as_str(), "0");
    assert_eq!(Timestamp::from_u64(u64::MAX).as_str(), u64::MAX.to_string());
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_778_659_835_123);
    assert_eq!(Scheme::kwikpaisa().timestamp(t).as_str(), TS);
    let ms = Scheme {
        timestamp_unit: TimestampUnit::Millis,
        ..Scheme::kwikpaisa()
    };
    assert_eq!(ms.timestamp(t).as_str(), "1778659835123");
    let fp = fingerprint(row("A1").1.as_bytes());
    assert_eq!(fp.len(), 12);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
    let sig = Scheme::kwikpaisa().sign(&keyed_mac(SECRET), &input(b"{}"));
    assert!(
        !format!("{sig:?}").contains(sig.as_str()),
        "Debug must not show the signature"
    );
}

/// What docs/signing.md says about importing a short secret into Vault
/// Transit, which takes HMAC keys of 32 to 512 bytes: HMAC first pads a key
/// shorter than the hash's block size (64 bytes for SHA-256) with zero bytes
/// (RFC 2104 §2), so a secret K and K followed by zeros up to 32 (or 64)
/// bytes key the same HMAC. Past the block size it is no longer so: a longer
/// key is hashed first.
#[test]
fn a_short_secret_and_the_same_secret_zero_padded_key_the_same_hmac() {
    use hmac::{Hmac, Mac};
    type H = Hmac<sha2::Sha256>;
    let mac = |key: &[u8], msg: &[u8]| {
        let mut m = <H as Mac>::new_from_slice(key).unwrap();
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    };
    let msg = b"{\"amount\":\"100\",\"order_id\":\"123456\"}1778659835";
    // YOUR_SECRET_KEY (15 bytes) is the provider's own documented example.
    for secret in [
        &b"YOUR_SECRET_KEY"[..],
        b"0123456789abcdef",
        b"sk_test_abcdefghijklmnopqrstuv1",
    ] {
        assert!(secret.len() < 32);
        for padded_len in [32, 48, 64] {
            let mut padded = secret.to_vec();
            padded.resize(padded_len, 0);
            assert_eq!(
                mac(secret, msg),
                mac(&padded, msg),
                "{} bytes padded to {padded_len}",
                secret.len()
            );
        }
        // One more zero past the block size changes everything.
        let mut too_long = secret.to_vec();
        too_long.resize(65, 0);
        assert_ne!(mac(secret, msg), mac(&too_long, msg));
        // Padding with anything but zeros is another key.
        let mut other = secret.to_vec();
        other.resize(32, b' ');
        assert_ne!(mac(secret, msg), mac(&other, msg));
    }
    // The documented vector A1 holds for the padded key as well.
    let mut padded = b"YOUR_SECRET_KEY".to_vec();
    padded.resize(32, 0);
    assert_eq!(
        hex::encode(mac(&padded, msg)),
        "6aafa6ffebb2465388bb65c4bcd41a125b218686fa305979d23b4c435af6d209"
    );
}
