//! The signing path end to end: the real gateway in-process, the provider
//! stand-in over real TLS on loopback recomputing every HMAC from the bytes it
//! received, and real sockets.

use std::time::{Duration, Instant};

use http::Method;
use signgate::devtools::standin::Verdict;

use crate::support::*;

const ORDER: &str = r#"{
  "order_id": "ORD-1",
  "order_amount": "105.50",
  "customer": {"phone": "9816512345", "name": "Ajay Kumar", "email": "a@b.example"},
  "return_url": "https://merchant.example.com/pay/return?x=1"
}"#;
const ORDER_CANONICAL: &str = r#"{"customer":{"email":"a@b.example","name":"Ajay Kumar","phone":"9816512345"},"order_amount":"105.50","order_id":"ORD-1","return_url":"https://merchant.example.com/pay/return?x=1"}"#;

#[tokio::test]
async fn signed_post_is_accepted_by_the_provider() {
    let s = Setup::new().await;
    let c = TestClient::new();
    let r = c
        .send(
            Method::POST,
            &s.url("/kwikpaisa/api/v3/pg/order/create?trace=1"),
            &[("content-type", "application/json"), ("x-request-id", "req-abc-123")],
            ORDER,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-request-id"], "req-abc-123");
    let recs = s.provider.standin.records().await;
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.verdict, Verdict::Valid);
    // The canonical bytes are the bytes sent, with Content-Length recomputed.
    assert_eq!(rec.body, ORDER_CANONICAL.as_bytes());
    assert_eq!(rec.headers["content-length"], ORDER_CANONICAL.len().to_string());
    assert_eq!(rec.headers["content-type"], "application/json");
    assert_eq!(rec.path_and_query, "/api/v3/pg/order/create?trace=1");
    assert_eq!(rec.headers["x-request-id"], "req-abc-123");
    assert_eq!(
        rec.headers["host"],
        format!("localhost:{}", s.provider.standin.addr().port())
    );
    assert_eq!(rec.headers["x-api-key"], s.provider.api_key.as_str());
    let sig = rec.headers["x-signature"].to_str().unwrap();
    assert_eq!(sig.len(), 64);
    assert!(sig.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let ts: u64 = rec.headers["x-timestamp"].to_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts) <= 2);
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_or_malformed() {
    let s = Setup::new().await;
    let c = TestClient::new();
    let r = c
        .send(
            Method::POST,
            &s.url("/kwikpaisa/x"),
            &[("x-request-id", "bad id <>")],
            "{}",
        )
        .await;
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 26, "a ULID");
    let rec = &s.provider.standin.records().await[0];
    assert_eq!(rec.headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn client_supplied_auth_headers_never_reach_upstream() {
    let s = Setup::new().await;
    let c = TestClient::new();
    let r = c
        .send(
            Method::POST,
            &s.url("/kwikpaisa/api/v3/payout/balance"),
            &[
                ("X-Signature", "forged"),
                ("x-signature", "forged-again"),
                ("X_SIGNATURE", "forged-underscore"),
                ("X-API-KEY", "pk_live_stolen"),
                ("x_api_key", "pk_live_stolen2"),
                ("X-Timestamp", "1"),
                ("X-Forwarded-For", "10.9.9.9"),
                ("Forwarded", "for=10.9.9.9"),
                ("X-Real-IP", "10.9.9.9"),
                ("Connection", "x-signature, x-api-key, x-custom-hop"),
                ("x-custom-hop", "gone"),
                ("X-Original-URL", "/api/v3/banking/payment/create"),
                ("X-Rewrite-URL", "/api/v3/banking/payment/create"),
                ("x_original_url", "/api/v3/banking/payment/create"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("x-app-header", "kept"),
            ],
            r#"{"kwikx_wallet_id":"W-1"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    let rec = &s.provider.standin.records().await[0];
    assert_eq!(rec.verdict, Verdict::Valid);
    for name in ["x-signature", "x-api-key", "x-timestamp"] {
        assert_eq!(rec.headers.get_all(name).iter().count(), 1, "{name} exactly once");
    }
    assert_eq!(rec.headers["x-api-key"], s.provider.api_key.as_str());
    assert_ne!(rec.headers["x-timestamp"], "1");
    for gone in [
        "x_signature",
        "x_api_key",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "x-custom-hop",
        "connection",
        "x-original-url",
        "x-rewrite-url",
        "x_original_url",
        "x-http-method-override",
    ] {
        assert!(rec.headers.get(gone).is_none(), "{gone} must not be forwarded");
    }
    assert_eq!(rec.headers["x-app-header"], "kept");
}

#[tokio::test]
async fn refusals_answer_json_and_send_nothing_upstream() {
    let s = Setup::new().await;
    let c = TestClient::new();

    let r = c.post(&s.url("/kwikpaisa/x"), r#"{"a":1,}"#).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "invalid_json"));
    assert!(
        r.json()["error"]["message"].as_str().unwrap().contains("at byte 7"),
        "{:?}",
        r.json()
    );

    let r = c.post(&s.url("/kwikpaisa/x"), "not json").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "invalid_json"));

    let r = c.post(&s.url("/elsewhere"), "{}").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (404, "no_route"));
    let r = c.post(&s.url("/kwikpaisax/y"), "{}").await;
    assert_eq!(r.status, 404, "prefix matches on a segment boundary only");

    let r = c.send(Method::GET, &s.url("/kwikpaisa/x"), &[], "").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (405, "method_not_allowed"));
    assert_eq!(r.headers["allow"], "POST");

    // Over max_body_bytes (4096): declared by Content-Length...
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
    let r = c.post(&s.url("/kwikpaisa/x"), &big).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (413, "body_too_large"));

    let r = c
        .send(
            Method::POST,
            &s.url("/kwikpaisa/x"),
            &[("content-encoding", "gzip")],
            "{}",
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (415, "unsupported_encoding"));

    let r = c.post(&s.url("/kwikpaisa/a/../b"), "{}").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "invalid_path"));
    let r = c.post(&s.url("/kwikpaisa/%2e%2e/admin"), "{}").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "invalid_path"));

    assert!(r.headers.contains_key("x-request-id"));
    assert_eq!(
        r.json()["error"]["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );
    assert!(
        s.provider.standin.records().await.is_empty(),
        "nothing may reach the provider"
    );
}

/// ...and streamed (chunked, no Content-Length): cut off once past the limit.
#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_while_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Setup::new().await;
    let mut sock = tokio::net::TcpStream::connect(s.gw.addr()).await.unwrap();
    sock.write_all(b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1000, "a".repeat(1000));
    // Send up to 8 KiB (twice the limit) and keep the body open: the gateway
    // must answer 413 without waiting for the end of the body.
    for _ in 0..8 {
        if sock.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("body_too_large"));
    assert!(s.provider.standin.records().await.is_empty());
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let s = Setup::new().await;
    let r = TestClient::h2c()
        .post(&s.url("/kwikpaisa/api/v3/pg/order/status"), r#"{"order_id":1}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.provider.standin.records().await[0].verdict, Verdict::Valid);
}

#[tokio::test]
async fn upstream_down_is_502_unreachable() {
    let fx = Fixture::new().await;
    let gw = fx
        .gateway(&fx.config_to(&format!("https://127.0.0.1:{}", closed_port())))
        .await;
    let r = TestClient::new()
        .post(&format!("http://{}/kwikpaisa/x", gw.addr()), "{}")
        .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (502, "upstream_unreachable"));
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_within_the_timeout() {
    let s = Setup::new().await; // request_timeout_ms = 1500
    let started = Instant::now();
    let r = TestClient::new().post(&s.url("/kwikpaisa/hang"), "{}").await;
    let took = started.elapsed();
    assert_eq!((r.status.as_u16(), r.code().as_str()), (504, "upstream_timeout"));
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    // Sent once: a request that may have been written is never retried.
    assert_eq!(s.provider.standin.records().await.len(), 1);
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502_upstream_tls() {
    let fx = Fixture::new().await;
    let other_ca = fx.path("other-ca.pem");
    std::fs::write(
        &other_ca,
        signgate::devtools::pki::DevCa::new("unrelated CA").unwrap().cert_pem(),
    )
    .unwrap();
    let gw = fx.gateway(&fx.config().egress_ca(&other_ca)).await;
    let r = TestClient::new()
        .post(&format!("http://{}/kwikpaisa/x", gw.addr()), "{}")
        .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (502, "upstream_tls"));
    assert!(
        fx.provider.standin.records().await.is_empty(),
        "nothing sent over an unverified connection"
    );
}

#[tokio::test]
async fn certificate_for_another_name_is_502_upstream_tls() {
    // The stand-in's certificate names localhost and 127.0.0.1, not 127.0.0.2.
    let fx = Fixture::with_provider_on("127.0.0.2:0").await;
    let upstream = format!("https://127.0.0.2:{}", fx.provider.standin.addr().port());
    let gw = fx.gateway(&fx.config_to(&upstream)).await;
    let r = TestClient::new()
        .post(&format!("http://{}/kwikpaisa/x", gw.addr()), "{}")
        .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (502, "upstream_tls"));
    assert!(fx.provider.standin.records().await.is_empty());
}

#[tokio::test]
async fn egress_connections_come_from_source_addr() {
    let s = Setup::with(|c| c.egress("source_addr", "127.0.0.2")).await;
    let r = TestClient::new().post(&s.url("/kwikpaisa/x"), "{}").await;
    assert_eq!(r.status, 200);
    let rec = &s.provider.standin.records().await[0];
    assert_eq!(rec.peer.ip().to_string(), "127.0.0.2");
    assert_eq!(rec.verdict, Verdict::Valid);
}

#[tokio::test]
async fn plain_http_upstream_needs_allow_plain_http() {
    let fx = Fixture::new().await;
    let err = fx.config_to("http://127.0.0.1:1").to_config().unwrap_err().to_string();
    assert!(
        err.contains("route[0].upstream") && err.contains("allow_plain_http"),
        "{err}"
    );
}

#[tokio::test]
async fn upstream_429_and_503_are_passed_through_and_never_retried() {
    // Without the cooldown, each back-off answer passes through as it is.
    let s = Setup::with(|c| c.edit_route("kwikpaisa", |r| r.honor_retry_after(false))).await;
    for code in [429u16, 503] {
        let r = TestClient::new()
            .post(&s.url(&format!("/kwikpaisa/status/{code}")), "{}")
            .await;
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(r.headers["retry-after"], "7");
    }
    assert_eq!(s.provider.standin.records().await.len(), 2);
}

#[tokio::test]
async fn a_provider_retry_after_cools_the_route_down_and_nothing_is_sent_meanwhile() {
    let s = Setup::new().await;
    let r = TestClient::new().post(&s.url("/kwikpaisa/status/503"), "{}").await;
    assert_eq!(
        r.status.as_u16(),
        503,
        "the provider's answer passes through, never retried"
    );
    assert_eq!(r.headers["retry-after"], "7");
    for path in ["/kwikpaisa/status/429", "/kwikpaisa/api/v3/pg/order/status"] {
        let r = TestClient::new().post(&s.url(path), "{}").await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (429, "provider_cooldown"));
        let left: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=7).contains(&left), "Retry-After {left}");
    }
    assert_eq!(
        s.provider.standin.records().await.len(),
        1,
        "nothing sent during the cooldown"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_provider_cooldown_total",
            &[("route", "kwikpaisa"), ("result", "refused")]
        ),
        2.0
    );
    assert!(!m.contains("signgate_fleet_"), "no fleet series without [fleet]");
}

#[tokio::test]
async fn credential_unavailable_until_the_file_appears() {
    let fx = Fixture::new().await;
    let cred = fx.path("later.json");
    let gw = fx
        .gateway(&fx.config().credential("kwikpaisa", Fixture::file_credential(&cred)))
        .await;
    let provider = &fx.provider;
    let c = TestClient::new();
    let url = format!("http://{}/kwikpaisa/x", gw.addr());
    let r = c.post(&url, "{}").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("later.json") && msg.contains("secret_key"), "{msg}");
    assert!(provider.standin.records().await.is_empty());

    write_cred(&cred, &provider.api_key, &provider.secret);
    let ok = eventually(Duration::from_secs(5), || async {
        c.post(&url, "{}").await.status == 200
    })
    .await;
    assert!(ok, "the credential file was picked up");
    assert!(provider
        .standin
        .records()
        .await
        .iter()
        .all(|r| r.verdict == Verdict::Valid));
}

#[tokio::test]
async fn the_secret_never_appears_in_responses() {
    let s = Setup::new().await;
    let c = TestClient::new();
    for (path, body) in [
        ("/kwikpaisa/x", "{}"),
        ("/kwikpaisa/x", "{bad"),
        ("/nope", ""),
        ("/kwikpaisa/hang", "{}"),
    ] {
        let r = c.post(&s.url(path), body).await;
        let all = format!("{:?}{:?}", r.headers, r.body);
        assert!(!all.contains(&s.provider.secret), "{path}");
    }
}

#[tokio::test]
async fn egress_client_certificate_for_mtls_to_the_provider() {
    use std::sync::Arc;
    let fx = Fixture::new().await;
    let pki = &fx.pki;
    // The provider demands a client certificate from our CA.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), signgate::tls::provider())
            .build()
            .unwrap();
    let server = pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(signgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())
        .unwrap();
    let (api_key, secret) = (random_token("pk_test_", 20), random_token("sk_test_", 32));
    let standin = signgate::devtools::standin::Standin::start(signgate::devtools::standin::StandinOptions {
        api_key: api_key.clone(),
        secret: signgate::secrets::SecretBytes::from(secret.clone()),
        tolerance: Duration::from_secs(60),
        tls: Some(Arc::new(tls)),
        bind: "127.0.0.1:0".parse().unwrap(),
    })
    .await
    .unwrap();
    let cred = fx.path("c.json");
    write_cred(&cred, &api_key, &secret);
    let client = pki.ca.client(&["signgate-egress"]).unwrap();
    let (cert, key) = (fx.path("egress.pem"), fx.path("egress-key.pem"));
    std::fs::write(&cert, &client.cert_pem).unwrap();
    std::fs::write(&key, &client.key_pem).unwrap();
    let upstream = format!("https://localhost:{}", standin.addr().port());
    let toml = fx
        .config_to(&upstream)
        .credential("kwikpaisa", Fixture::file_credential(&cred));
    let gw = fx
        .gateway(&toml.clone().egress("client_cert", &cert).egress("client_key", &key))
        .await;
    let r = TestClient::new()
        .post(&format!("http://{}/kwikpaisa/x", gw.addr()), "{}")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(standin.records().await[0].verdict, Verdict::Valid);
    gw.shutdown().await;
    // Without the certificate the provider refuses the connection.
    let gw = fx.gateway(&toml).await;
    let r = TestClient::new()
        .post(&format!("http://{}/kwikpaisa/x", gw.addr()), "{}")
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(standin.records().await.len(), 1);
}

/// Hardening B11: a slow provider cannot pile up unbounded upstream calls.
#[tokio::test]
async fn pool_exhaustion_is_bounded_per_route() {
    let s = Setup::with(|c| c.edit_route("kwikpaisa", |r| r.max_inflight(1).queue_timeout_ms(200))).await;
    let url = s.url("/kwikpaisa/slow/800");
    let first = tokio::spawn(async move { TestClient::new().post(&url, "{}").await });
    assert!(s.provider.standin.next(Duration::from_secs(5)).await.is_some());
    let started = Instant::now();
    let r = TestClient::new().post(&s.url("/kwikpaisa/x"), "{}").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "upstream_busy"));
    assert!(started.elapsed() >= Duration::from_millis(180));
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(s.provider.standin.records().await.len(), 1);
    // The slot is free again.
    assert_eq!(TestClient::new().post(&s.url("/kwikpaisa/x"), "{}").await.status, 200);
}
