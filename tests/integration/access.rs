//! Who may send: allowlists on the TCP peer (real sockets bound to different
//! loopback addresses), rate limits, inbound TLS and mTLS identities, and the
//! listener's connection hardening.

use std::time::{Duration, Instant};

use signgate::devtools::standin::Verdict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn allowlists_decide_on_the_tcp_peer_and_nothing_denied_reaches_upstream() {
    let s = Setup::with(|c| {
        c.allow(["127.0.0.1/32", "127.0.0.3/32"])
            .edit_route("kwikpaisa", |r| r.allow(["127.0.0.1/32"]))
    })
    .await;
    let url = s.url("/kwikpaisa/api/v3/pg/order/status");
    let body = r#"{"order_id":"1"}"#;

    let ok = TestClient::from_addr("127.0.0.1").post(&url, body).await;
    assert_eq!(ok.status, 200);
    let denied_global = TestClient::from_addr("127.0.0.2").post(&url, body).await;
    assert_eq!(
        (denied_global.status.as_u16(), denied_global.code().as_str()),
        (403, "ip_not_allowed")
    );
    let denied_route = TestClient::from_addr("127.0.0.3").post(&url, body).await;
    assert_eq!(
        (denied_route.status.as_u16(), denied_route.code().as_str()),
        (403, "ip_not_allowed")
    );
    // Address claims in headers change nothing.
    let spoof = TestClient::from_addr("127.0.0.2")
        .send(
            http::Method::POST,
            &url,
            &[
                ("x-forwarded-for", "127.0.0.1"),
                ("x-real-ip", "127.0.0.1"),
                ("forwarded", "for=127.0.0.1"),
            ],
            body,
        )
        .await;
    assert_eq!(spoof.status, 403);

    // A denied client's body is never read: headers promise 1000 bytes that
    // never come, and the 403 arrives anyway.
    let mut sock = connect_from("127.0.0.2", s.gw.addr()).await;
    sock.write_all(b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 403"));

    let recs = s.provider.standin.records().await;
    assert_eq!(recs.len(), 1, "only the allowed request reached the provider");
    assert_eq!(recs[0].verdict, Verdict::Valid);

    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_denied_total",
            &[("route", "none"), ("reason", "ip_not_allowed")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "signgate_denied_total",
            &[("route", "kwikpaisa"), ("reason", "ip_not_allowed")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_burst_above_burst_gets_429_with_retry_after() {
    let s = Setup::with(|c| c.edit_route("kwikpaisa", |r| r.limit(1, 5))).await;
    let c = TestClient::new();
    let url = s.url("/kwikpaisa/x");
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..8 {
        let r = c.post(&url, "{}").await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => limited.push(r),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 5, "burst = 5");
    assert_eq!(limited.len(), 3);
    for r in &limited {
        assert_eq!(r.code(), "rate_limited");
        // rate = 1/s: the next token is at most 1 s away.
        assert_eq!(r.headers["retry-after"], "1");
    }
    assert_eq!(s.provider.standin.records().await.len(), 5);
    // Waiting Retry-After seconds is enough.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.post(&url, "{}").await.status, 200);
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_denied_total",
            &[("route", "kwikpaisa"), ("reason", "rate_limited")]
        ),
        3.0
    );
}

#[tokio::test]
async fn per_client_limits_are_independent_across_addresses() {
    let s = Setup::with(|c| c.limits("per_client", quota(1, 2))).await;
    let url = s.url("/kwikpaisa/x");
    let a = TestClient::from_addr("127.0.0.1");
    let b = TestClient::from_addr("127.0.0.4");
    let statuses_a: Vec<u16> = [
        a.post(&url, "{}").await,
        a.post(&url, "{}").await,
        a.post(&url, "{}").await,
    ]
    .iter()
    .map(|r| r.status.as_u16())
    .collect();
    assert_eq!(statuses_a, vec![200, 200, 429]);
    assert_eq!(b.post(&url, "{}").await.status, 200);
    assert_eq!(b.post(&url, "{}").await.status, 200);
}

/// A TLS listener with a certificate from a clients' CA, and (`client_ca`)
/// client certificates from that CA required; `route` changes the route.
async fn tls_setup(client_ca: bool, route: impl FnOnce(Route) -> Route) -> (Setup, signgate::devtools::pki::DevCa) {
    let clients = signgate::devtools::pki::DevCa::new("signgate test clients CA").unwrap();
    let fx = Fixture::new().await;
    let server = clients.server(&["localhost", "127.0.0.1"]).unwrap();
    let (cert, key, ca) = (fx.path("gw.pem"), fx.path("gw-key.pem"), fx.path("clients-ca.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca, clients.cert_pem()).unwrap();
    let mut toml = fx.config().listener_tls(&cert, &key).edit_route("kwikpaisa", route);
    if client_ca {
        toml = toml.listener("client_ca", &ca);
    }
    (Setup::on(fx, &toml).await, clients)
}

#[tokio::test]
async fn https_client_succeeds() {
    let (s, ca) = tls_setup(false, |r| r).await;
    let r = https_post(s.gw.addr(), &ca, None, "/kwikpaisa/x", "{}").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(s.provider.standin.records().await[0].verdict, Verdict::Valid);
    // Plain HTTP to the TLS port gets nowhere.
    let mut sock = TcpStream::connect(s.gw.addr()).await.unwrap();
    sock.write_all(b"POST /kwikpaisa/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let got = read_until_closed(&mut sock, Duration::from_secs(3)).await.unwrap();
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"));
    assert_eq!(s.provider.standin.records().await.len(), 1);
}

#[tokio::test]
async fn mtls_refuses_missing_and_foreign_certificates_and_checks_identities() {
    let (s, ca) = tls_setup(true, |r| r.allow_identities(["spiffe://signgate.test/payout-svc"])).await;
    let addr = s.gw.addr();
    // No certificate: refused in the handshake (TLS 1.3 reports it on first use).
    assert!(https_post(addr, &ca, None, "/kwikpaisa/x", "{}").await.is_err());
    // A certificate from another CA: refused.
    let stranger = signgate::devtools::pki::DevCa::new("stranger CA").unwrap();
    let foreign = stranger.client(&["spiffe://signgate.test/payout-svc"]).unwrap();
    assert!(https_post(addr, &ca, Some(&foreign), "/kwikpaisa/x", "{}")
        .await
        .is_err());
    // Right CA, wrong identity: 403.
    let other = ca.client(&["spiffe://signgate.test/reporting"]).unwrap();
    let r = https_post(addr, &ca, Some(&other), "/kwikpaisa/x", "{}").await.unwrap();
    assert_eq!((r.status.as_u16(), r.code().as_str()), (403, "identity_not_allowed"));
    assert!(s.provider.standin.records().await.is_empty());
    // Right identity: signed and forwarded.
    let payout = ca.client(&["spiffe://signgate.test/payout-svc"]).unwrap();
    let r = https_post(addr, &ca, Some(&payout), "/kwikpaisa/x", "{}")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let recs = s.provider.standin.records().await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].verdict, Verdict::Valid);
    let m = s.metrics().await;
    assert!(metric(&m, "signgate_connections_closed_total", &[("reason", "tls_handshake")]) >= 2.0);
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_others_are_unaffected() {
    let s = Setup::with(|c| c.listener("header_timeout_ms", 400)).await;
    let mut slow = TcpStream::connect(s.gw.addr()).await.unwrap();
    slow.write_all(b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nX-Slow: a")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile a normal client is served.
    let r = TestClient::new().post(&s.url("/kwikpaisa/x"), "{}").await;
    assert_eq!(r.status, 200);
    let got = read_until_closed(&mut slow, Duration::from_secs(3))
        .await
        .expect("slow connection closed");
    let took = started.elapsed();
    assert!(got.is_empty(), "no response for a head that never finished");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1400),
        "{took:?}"
    );
    assert_eq!(
        s.provider.standin.records().await.len(),
        1,
        "only the normal request went upstream"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "signgate_connections_closed_total", &[("reason", "header_timeout")]),
        1.0
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let s = Setup::with(|c| c.listener("idle_timeout_ms", 400)).await;
    let mut sock = TcpStream::connect(s.gw.addr()).await.unwrap();
    sock.write_all(b"POST /nope HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut sock, Duration::from_secs(3))
        .await
        .expect("idle connection closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 404"));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "signgate_connections_closed_total", &[("reason", "idle")]),
        1.0
    );
}

#[tokio::test]
async fn max_connections_closes_the_excess_early() {
    let s = Setup::with(|c| c.listener("max_connections", 2)).await;
    let _a = TcpStream::connect(s.gw.addr()).await.unwrap();
    let _b = TcpStream::connect(s.gw.addr()).await.unwrap();
    let mut c = TcpStream::connect(s.gw.addr()).await.unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(2))
        .await
        .expect("third connection closed at once");
    assert!(got.is_empty());
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "signgate_connections_closed_total", &[("reason", "limit")]),
        1.0
    );
}

#[tokio::test]
async fn oversized_heads_are_refused_before_any_upstream_work() {
    let s = Setup::new().await;
    // One 70 KiB header, written in pieces.
    let mut sock = TcpStream::connect(s.gw.addr()).await.unwrap();
    sock.write_all(b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        .await
        .unwrap();
    for _ in 0..70 {
        if sock.write_all(&[b'a'; 1024]).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"\r\nContent-Length: 2\r\n\r\n{}").await;
    let got = read_until_closed(&mut sock, Duration::from_secs(3))
        .await
        .unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // 1000 header lines.
    let mut sock = TcpStream::connect(s.gw.addr()).await.unwrap();
    let mut head = String::from("POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\n");
    for i in 0..1000 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("Content-Length: 2\r\n\r\n{}");
    let _ = sock.write_all(head.as_bytes()).await;
    let got = read_until_closed(&mut sock, Duration::from_secs(3))
        .await
        .unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(s.provider.standin.records().await.is_empty());
}

#[test]
fn plaintext_on_a_public_address_refuses_to_start_naming_allow_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signgate"))
        .args(["run", "--config", "gateway.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SIGNGATE__LISTENER__ADDR", "0.0.0.0:0")
        .env("SIGNGATE__AUDIT__PATH", dir.path().join("a.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listener.allow_plaintext"), "{err}");
}

/// RFC 9112 §6.3: ambiguous framing never reaches the upstream.
#[tokio::test]
async fn ambiguous_framing_is_refused_and_nothing_goes_upstream() {
    let s = Setup::new().await;
    // CL+TE: hyper follows RFC 9112 §6.3 (Transfer-Encoding wins, the
    // Content-Length is dropped, the connection closes after the answer).
    // The gateway re-frames every body it forwards, so what reaches the
    // provider is the decoded body with the gateway's own Content-Length,
    // and a smuggled second request cannot follow on that connection.
    let mut sock = TcpStream::connect(s.gw.addr()).await.unwrap();
    sock.write_all(
        b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nPOST /kwikpaisa/smuggled HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut sock, Duration::from_secs(3))
        .await
        .expect("connection closed after CL+TE");
    let head = String::from_utf8_lossy(&got);
    assert_eq!(head.matches("HTTP/1.1 ").count(), 1, "one answer only: {head}");
    assert!(head.contains("connection: close"), "{head}");
    let recs = s.provider.standin.records().await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].path_and_query, "/x");
    assert_eq!(recs[0].body, b"{}".as_slice());
    assert_eq!(recs[0].headers["content-length"], "2");
    assert!(recs[0].headers.get("transfer-encoding").is_none());

    let cases: &[(&str, &[u8])] = &[
        (
            "two different CLs",
            b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
        ),
        (
            "obfuscated TE",
            b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n  folded\r\nContent-Length: 2\r\n\r\n{}",
        ),
        (
            "bad chunk size",
            b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "NUL in a header",
            b"POST /kwikpaisa/x HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\n{}",
        ),
    ];
    for (what, raw) in cases {
        let mut sock = TcpStream::connect(s.gw.addr()).await.unwrap();
        sock.write_all(raw).await.unwrap();
        let got = read_until_closed(&mut sock, Duration::from_secs(3))
            .await
            .unwrap_or_default();
        let head = String::from_utf8_lossy(&got);
        assert!(
            head.is_empty() || head.starts_with("HTTP/1.1 400") || head.starts_with("HTTP/1.1 501"),
            "{what}: {head}"
        );
    }
    assert_eq!(
        s.provider.standin.records().await.len(),
        1,
        "zero bytes upstream for the refused ones"
    );
}
