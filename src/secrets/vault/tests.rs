//! Unit tests of the vault source against a canned HTTP server on loopback:
//! parsing, status mapping (sealed, 500, 404, 403, slow), backoff and jitter.
//! The real OpenBao runs in `tests/vault.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use zeroize::Zeroizing;

use super::auth::login_body;
use super::parse::{self, Field};
use super::*;

const KV_OK: &str = r#"{"request_id":"x","data":{"data":{"api_key":"pk_unit","secret_key":"sk_unit_0123456789abcdef","other":[1,{"a":2}]},"metadata":{"created_time":"t","version":7}}}"#;

fn value(f: Field) -> String {
    match f {
        Field::Value(v) => String::from_utf8(v.expose().to_vec()).unwrap(),
        Field::Absent => "<absent>".into(),
        Field::NotString => "<not a string>".into(),
    }
}

#[test]
fn kv_answers_are_picked_apart_without_copying_other_fields() {
    let kv = parse::kv(KV_OK.as_bytes(), "api_key", Some("secret_key")).unwrap();
    assert_eq!(kv.version, Some(7));
    assert_eq!(value(kv.api_key), "pk_unit");
    assert_eq!(value(kv.secret), "sk_unit_0123456789abcdef");

    let kv = parse::kv(
        br#"{"data":{"data":{"api_key":5,"secret_key":{"x":1}},"metadata":{"version":2}}}"#,
        "api_key",
        Some("secret_key"),
    )
    .unwrap();
    assert_eq!(value(kv.api_key), "<not a string>");
    assert_eq!(value(kv.secret), "<not a string>");
    let kv = parse::kv(
        br#"{"data":{"data":{},"metadata":null}}"#,
        "api_key",
        Some("secret_key"),
    )
    .unwrap();
    assert_eq!((value(kv.api_key), kv.version), ("<absent>".to_string(), None));
    // A KV v1 mount answers with the fields right under `data`.
    assert!(parse::kv(
        br#"{"data":{"api_key":"a","secret_key":"b"}}"#,
        "api_key",
        Some("secret_key")
    )
    .is_none());
    assert!(parse::kv(br#"{"data":null}"#, "api_key", Some("secret_key")).is_none());
    assert!(parse::kv(b"not json", "api_key", Some("secret_key")).is_none());
    assert!(parse::kv(format!("{KV_OK} trailing").as_bytes(), "api_key", Some("secret_key")).is_none());
}

#[test]
fn auth_lookup_and_error_answers() {
    let g = parse::grant(br#"{"auth":{"client_token":"s.abc","lease_duration":60,"renewable":true}}"#).unwrap();
    assert_eq!(
        (g.token.as_str(), g.ttl, g.renewable),
        ("s.abc", Duration::from_secs(60), true)
    );
    assert!(parse::grant(br#"{"auth":null}"#).is_none());
    assert!(parse::grant(br#"{"auth":{"client_token":""}}"#).is_none());
    let l = parse::lookup(br#"{"data":{"id":"s.abc","ttl":0,"renewable":false}}"#).unwrap();
    assert_eq!(l, (Duration::ZERO, false));
    assert_eq!(
        parse::errors(br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#),
        "1 error occurred: * permission denied"
    );
    assert_eq!(parse::errors(b"<html>"), "");
    assert_eq!(scrub("bad s.abcd here".into(), &["s.abcd"]), "bad [redacted] here");
}

#[test]
fn login_body_is_exact_and_refuses_ids_that_need_escaping() {
    let b = login_body("role-1", "secret-2").unwrap();
    assert_eq!(&b[..], br#"{"role_id":"role-1","secret_id":"secret-2"}"#);
    assert_eq!(b.capacity(), b.len(), "no reallocation left a copy behind");
    assert!(login_body("ro\"le", "x").is_none());
    assert!(login_body("role", "se cret").is_none());
}

#[test]
fn answers_grow_in_zeroizing_buffers_up_to_the_limit() {
    let mut out = Zeroizing::new(Vec::new());
    for _ in 0..100 {
        http::append(&mut out, &[7u8; 1000]).unwrap();
    }
    assert_eq!(out.len(), 100_000);
    assert!(matches!(
        http::append(&mut out, &vec![0u8; http::MAX_ANSWER_BYTES]),
        Err(CallError::TooLarge)
    ));
}

#[test]
fn backoff_doubles_from_one_second_up_to_the_refresh_interval() {
    let refresh = Duration::from_secs(60);
    let seq: Vec<u64> = (1..=8).map(|n| backoff(n, refresh).as_secs()).collect();
    assert_eq!(seq, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(backoff(u32::MAX, refresh), refresh);
    for _ in 0..200 {
        let j = jitter(Duration::from_secs(100), REFRESH_JITTER);
        assert!(j >= Duration::from_secs(90) && j <= Duration::from_secs(110), "{j:?}");
    }
}

/// A canned Vault: `route(path)` gives status and body; `/slow` never answers.
async fn fake_vault(route: fn(&str) -> (u16, String)) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: ::http::Request<hyper::body::Incoming>| async move {
                    let (status, body) = route(req.uri().path());
                    if status == 0 {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    let mut resp = ::http::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = StatusCode::from_u16(status.max(200)).unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn source(addr: SocketAddr, dir: &tempfile::TempDir) -> VaultSource {
    let token_file: PathBuf = dir.path().join("token");
    std::fs::write(&token_file, "s.unit-token\n").unwrap();
    let spec = VaultSpec {
        addr: format!("http://{addr}").parse().unwrap(),
        mount: "secret".into(),
        path: "kp/unit".into(),
        auth: VaultAuth::Token {
            token_file: Some(token_file),
        },
        ca_file: None,
        api_key_field: "api_key".into(),
        secret_field: "secret_key".into(),
        refresh: Duration::from_secs(1),
        max_stale: None,
        timeout: crate::config::DEFAULT_VAULT_TIMEOUT,
    };
    VaultSource::new("kp", &spec)
        .unwrap()
        .with_timeout(Duration::from_millis(400))
}

async fn poll_error(route: fn(&str) -> (u16, String)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut s = source(fake_vault(route).await, &dir);
    let e = s.poll().await.unwrap_err().to_string();
    assert!(!e.contains("unit-token") && !e.contains("sk_unit"), "{e}");
    e
}

fn lookup_ok(path: &str) -> Option<(u16, String)> {
    (path == "/v1/auth/token/lookup-self").then(|| {
        (
            200,
            r#"{"data":{"id":"s.unit-token","ttl":0,"renewable":false}}"#.to_string(),
        )
    })
}

#[tokio::test]
async fn reads_a_version_once_then_reports_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let addr = fake_vault(|p| lookup_ok(p).unwrap_or((200, KV_OK.to_string()))).await;
    let mut s = source(addr, &dir);
    match s.poll().await.unwrap() {
        Poll::Changed(m) => {
            assert_eq!(m.version, Some(7));
            match &m.key {
                crate::secrets::KeyMaterial::Secret(s) => assert_eq!(s.expose(), b"sk_unit_0123456789abcdef"),
                crate::secrets::KeyMaterial::Transit(_) => panic!("a KV secret is held in memory"),
            }
            assert!(!format!("{m:?}").contains("sk_unit"));
        }
        Poll::Unchanged => panic!("first poll must hand the material over"),
    }
    assert!(matches!(s.poll().await.unwrap(), Poll::Unchanged));
    s.forget();
    assert!(matches!(s.poll().await.unwrap(), Poll::Changed(_)));
}

#[tokio::test]
async fn vault_failures_become_clear_stable_reasons() {
    let sealed = poll_error(|p| lookup_ok(p).unwrap_or((503, r#"{"errors":["Vault is sealed"]}"#.into()))).await;
    assert!(
        sealed.contains("sealed or unavailable (503 while reading secret/kp/unit): Vault is sealed"),
        "{sealed}"
    );
    let e500 = poll_error(|p| lookup_ok(p).unwrap_or((500, r#"{"errors":["internal error"]}"#.into()))).await;
    assert!(
        e500.contains("answered 500 while reading secret/kp/unit: internal error"),
        "{e500}"
    );
    let missing = poll_error(|p| lookup_ok(p).unwrap_or((404, r#"{"errors":[]}"#.into()))).await;
    assert!(missing.starts_with("no secret at secret/kp/unit"), "{missing}");
    let denied = poll_error(|_| (403, r#"{"errors":["permission denied"]}"#.into())).await;
    assert!(
        denied.starts_with("token rejected (403): provide a new token in "),
        "{denied}"
    );
    assert!(denied.contains("/token"), "{denied}");
    let slow = poll_error(|_| (0, String::new())).await;
    assert!(
        slow.contains("did not answer within the 0.4 s refresh budget"),
        "{slow}"
    );
    let short = poll_error(|p| {
        lookup_ok(p).unwrap_or((
            200,
            r#"{"data":{"data":{"api_key":"pk","secret_key":"sk_short"},"metadata":{"version":1}}}"#.into(),
        ))
    })
    .await;
    assert!(short.contains("too short"), "{short}");
    let wrong = poll_error(|p| {
        lookup_ok(p).unwrap_or((
            200,
            r#"{"data":{"data":{"api_key":"pk","secret_key":12},"metadata":{"version":1}}}"#.into(),
        ))
    })
    .await;
    assert_eq!(wrong, "Vault secret secret/kp/unit: field secret_key is not a string");
    let gone = poll_error(|_| (200, String::new())).await;
    assert!(gone.contains("is not a KV version 2 secret"), "{gone}");
}

#[tokio::test]
async fn unreachable_vault_is_reported_without_per_attempt_details() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s = source(port, &dir);
    let first = s.poll().await.unwrap_err().to_string();
    let second = s.poll().await.unwrap_err().to_string();
    assert!(
        first.starts_with(&format!("cannot reach Vault at http://{port}/")),
        "{first}"
    );
    assert!(first.contains("Connection refused"), "the cause is named: {first}");
    assert_eq!(first, second, "the same failure reads the same (one log line)");
    assert!(s.next_poll(false, 1).unwrap() <= Duration::from_millis(1200));
}
