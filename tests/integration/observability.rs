//! Observability: exact metric deltas for every decision, bounded label
//! cardinality, readiness, clock skew, and the audit log written by the real
//! gateway (checked with the real `signgate audit verify`).

use std::time::Duration;

use http::Method;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_signgate");

/// A gateway with extra routes: one whose credential is missing, one to a
/// closed port, one to a stand-in whose certificate does not name its address.
async fn rich_setup() -> (Setup, Provider) {
    let other_pki = pki();
    let wrong_name = provider_on(&other_pki, "127.0.0.2:0").await;
    let down = format!("https://127.0.0.1:{}", closed_port());
    let badtls = format!("https://127.0.0.2:{}", wrong_name.standin.addr().port());
    let s = Setup::with(|c| {
        c.allow(["127.0.0.1/32"])
            .edit_route("kwikpaisa", |r| r.limit(1, 2))
            .credential("missing", Credential::file("/nonexistent/signgate-test/missing.json"))
            .route(
                Route::new("nocred", "/nocred", "https://localhost:1")
                    .credential("missing")
                    .scheme("kwikpaisa"),
            )
            .route(
                Route::new("down", "/down", &down)
                    .credential("kwikpaisa")
                    .scheme("kwikpaisa"),
            )
            .route(
                Route::new("badtls", "/badtls", &badtls)
                    .credential("kwikpaisa")
                    .scheme("kwikpaisa"),
            )
    })
    .await;
    (s, wrong_name)
}

#[tokio::test]
async fn every_decision_moves_exactly_its_counters() {
    let (s, _wrong) = rich_setup().await;
    let c = TestClient::new();
    let before = s.metrics().await;
    let denied = |m: &str, route: &str, reason: &str| {
        metric(m, "signgate_denied_total", &[("route", route), ("reason", reason)])
    };
    let requests = |m: &str, route: &str, method: &str, status: &str| {
        metric(
            m,
            "signgate_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(
        metric(
            &before,
            "signgate_signatures_total",
            &[("route", "kwikpaisa"), ("credential", "kwikpaisa")]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &before,
            "signgate_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", env!("SIGNGATE_BUILD_REVISION"))
            ]
        ),
        1.0
    );

    assert_eq!(c.post(&s.url("/kwikpaisa/ok"), "{}").await.status, 200);
    assert_eq!(c.post(&s.url("/kwikpaisa/ok"), "{}").await.status, 200);
    assert_eq!(c.post(&s.url("/kwikpaisa/ok"), "{}").await.status, 429);
    assert_eq!(c.post(&s.url("/nowhere"), "{}").await.status, 404);
    assert_eq!(c.send(Method::GET, &s.url("/nocred/x"), &[], "").await.status, 405);
    assert_eq!(c.post(&s.url("/nocred/x"), "{bad").await.status, 400);
    assert_eq!(c.post(&s.url("/nocred/x"), "{}").await.status, 503);
    assert_eq!(c.post(&s.url("/nocred/a/../b"), "{}").await.status, 400);
    assert_eq!(c.post(&s.url("/nocred/x"), &"x".repeat(5000)).await.status, 413);
    assert_eq!(
        c.send(Method::POST, &s.url("/nocred/x"), &[("content-encoding", "br")], "{}")
            .await
            .status,
        415
    );
    assert_eq!(c.post(&s.url("/down/x"), "{}").await.status, 502);
    assert_eq!(c.post(&s.url("/badtls/x"), "{}").await.status, 502);
    assert_eq!(
        TestClient::from_addr("127.0.0.9")
            .send(Method::from_bytes(b"BREW").unwrap(), &s.url("/x"), &[], "")
            .await
            .status,
        403
    );

    let m = s.metrics().await;
    assert_eq!(requests(&m, "kwikpaisa", "POST", "200"), 2.0);
    assert_eq!(requests(&m, "kwikpaisa", "POST", "429"), 1.0);
    assert_eq!(denied(&m, "kwikpaisa", "rate_limited"), 1.0);
    assert_eq!(requests(&m, "none", "POST", "404"), 1.0);
    assert_eq!(denied(&m, "none", "no_route"), 1.0);
    assert_eq!(requests(&m, "nocred", "GET", "405"), 1.0);
    assert_eq!(denied(&m, "nocred", "method_not_allowed"), 1.0);
    assert_eq!(denied(&m, "nocred", "invalid_json"), 1.0);
    assert_eq!(denied(&m, "nocred", "credential_unavailable"), 1.0);
    assert_eq!(
        denied(&m, "none", "invalid_path"),
        1.0,
        "path checks run before routing"
    );
    assert_eq!(denied(&m, "nocred", "body_too_large"), 1.0);
    assert_eq!(denied(&m, "nocred", "unsupported_encoding"), 1.0);
    assert_eq!(denied(&m, "down", "upstream_unreachable"), 1.0);
    // The one retry of a failed connect is counted too.
    assert_eq!(
        metric(
            &m,
            "signgate_upstream_errors_total",
            &[("route", "down"), ("kind", "connect")]
        ),
        2.0
    );
    assert_eq!(denied(&m, "badtls", "upstream_tls"), 1.0);
    assert_eq!(
        metric(
            &m,
            "signgate_upstream_errors_total",
            &[("route", "badtls"), ("kind", "tls")]
        ),
        1.0
    );
    assert_eq!(
        requests(&m, "none", "other", "403"),
        1.0,
        "unknown methods share one label"
    );
    assert_eq!(denied(&m, "none", "ip_not_allowed"), 1.0);
    assert_eq!(
        metric(
            &m,
            "signgate_signatures_total",
            &[("route", "kwikpaisa"), ("credential", "kwikpaisa")]
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "signgate_request_duration_seconds_count", &[("route", "kwikpaisa")]),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "signgate_upstream_duration_seconds_count",
            &[("route", "kwikpaisa")]
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "signgate_credential_loaded", &[("credential", "kwikpaisa")]),
        1.0
    );
    assert_eq!(
        metric(&m, "signgate_credential_loaded", &[("credential", "missing")]),
        0.0
    );
    assert!(
        metric(
            &m,
            "signgate_credential_refresh_total",
            &[("credential", "missing"), ("result", "error")]
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "signgate_credential_refresh_total",
            &[("credential", "kwikpaisa"), ("result", "ok")]
        ) >= 1.0
    );
    let skew = metric(&m, "signgate_clock_skew_seconds", &[("route", "kwikpaisa")]);
    assert!(skew.abs() <= 1.0, "same host clock: {skew}");
    assert_eq!(metric(&m, "signgate_inflight_requests", &[]), 0.0);
}

#[tokio::test]
async fn label_cardinality_does_not_grow_with_request_data() {
    let s = Setup::new().await;
    let c = TestClient::new();
    // One request of each kind first: the set of series is bounded, so after
    // this no request data can add one.
    c.post(&s.url("/warmup"), "{}").await;
    c.send(Method::from_bytes(b"MKCOL").unwrap(), &s.url("/warmup"), &[], "{}")
        .await;
    c.send(Method::from_bytes(b"MKCOL").unwrap(), &s.url("/kwikpaisa/x"), &[], "")
        .await;
    c.post(&s.url("/kwikpaisa/x"), "{bad").await;
    let baseline = series_count(&s.metrics().await);
    for _ in 0..200 {
        let path = format!("/{}/{}", random_token("", 12), random_token("", 8));
        let method = Method::from_bytes(random_token("X", 6).to_uppercase().as_bytes()).unwrap();
        c.send(
            method,
            &s.url(&path),
            &[("x-request-id", &random_token("id-", 10))],
            "{}",
        )
        .await;
        c.post(&s.url(&format!("/kwikpaisa/{}", random_token("", 10))), "{bad")
            .await;
    }
    assert_eq!(series_count(&s.metrics().await), baseline);
}

#[tokio::test]
async fn readyz_flips_when_the_missing_credential_appears() {
    let fx = Fixture::new().await;
    let cred = fx.path("appears-later.json");
    let gw = fx
        .gateway(&fx.config().credential("kwikpaisa", Fixture::file_credential(&cred)))
        .await;
    let provider = &fx.provider;
    let admin = format!("http://{}", gw.admin_addr().unwrap());
    let c = TestClient::new();
    assert_eq!(
        c.send(Method::GET, &format!("{admin}/healthz"), &[], "").await.status,
        200
    );
    let r = c.send(Method::GET, &format!("{admin}/readyz"), &[], "").await;
    assert_eq!(r.status, 503);
    let j = r.json();
    assert_eq!(j["missing"][0]["what"], "credential");
    assert_eq!(j["missing"][0]["credential"], "kwikpaisa");
    assert!(j["missing"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("appears-later.json"));
    write_cred(&cred, &provider.api_key, &provider.secret);
    let ready = eventually(Duration::from_secs(5), || async {
        c.send(Method::GET, &format!("{admin}/readyz"), &[], "").await.status == 200
    })
    .await;
    assert!(ready);
    assert!(gw.is_ready());
    // Draining turns readiness off at once: /readyz says so while a slow
    // request keeps the drain (and so the admin listener) going.
    let slow = format!("http://{}/kwikpaisa/slow/1000", gw.addr());
    let in_flight = tokio::spawn(async move { TestClient::new().post(&slow, "{}").await });
    assert!(provider.standin.next(Duration::from_secs(5)).await.is_some());
    let stop = tokio::spawn(gw.shutdown());
    let draining = std::cell::RefCell::new(serde_json::Value::Null);
    let not_ready = eventually(Duration::from_secs(2), || async {
        let r = c.send(Method::GET, &format!("{admin}/readyz"), &[], "").await;
        *draining.borrow_mut() = r.json();
        r.status == 503
    })
    .await;
    let draining = draining.into_inner();
    assert!(not_ready, "/readyz still 200 while draining: {draining}");
    assert_eq!(draining["missing"][0]["what"], "draining", "{draining}");
    assert_eq!(in_flight.await.unwrap().status, 200, "the in-flight request completes");
    stop.await.unwrap();
}

#[tokio::test]
async fn audit_log_has_one_chained_record_per_request_and_no_secrets() {
    let s = Setup::new().await;
    let c = TestClient::new();
    let n_ok = 4;
    for i in 0..n_ok {
        let r = c
            .send(
                Method::POST,
                &s.url(&format!("/kwikpaisa/api/v3/pg/order/create?n={i}")),
                &[("x-request-id", &format!("audit-{i}"))],
                r#"{"order_id":"ORD-77","amount":"1.00"}"#,
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(c.post(&s.url("/nowhere"), "{}").await.status, 404);
    assert_eq!(c.post(&s.url("/kwikpaisa/x"), "{bad").await.status, 400);
    let audit = s.audit_path();
    let provider_secret = s.provider.secret.clone();
    let recorded_sigs: Vec<String> = s
        .provider
        .standin
        .records()
        .await
        .iter()
        .map(|r| r.headers["x-signature"].to_str().unwrap().to_string())
        .collect();
    let Setup { gw, fx } = s;
    gw.shutdown().await; // flushes the writer
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), n_ok + 2);
    for (i, rec) in lines.iter().take(n_ok).enumerate() {
        for field in [
            "seq",
            "time",
            "request_id",
            "client",
            "route",
            "method",
            "path",
            "decision",
            "status",
            "upstream_status",
            "duration_ms",
            "bytes_in",
            "credential",
            "secret_version",
            "signature_fp",
            "prev",
        ] {
            assert!(!rec[field].is_null(), "record {i} lacks {field}: {rec}");
        }
        assert_eq!(rec["request_id"], format!("audit-{i}"));
        assert_eq!(rec["decision"], "allowed");
        assert_eq!(rec["route"], "kwikpaisa");
        assert_eq!(rec["upstream_status"], 200);
        assert_eq!(rec["signature_fp"].as_str().unwrap().len(), 12);
    }
    assert_eq!(lines[n_ok]["decision"], "denied");
    assert_eq!(lines[n_ok]["reason"], "no_route");
    assert_eq!(lines[n_ok + 1]["reason"], "invalid_json");
    assert!(!text.contains(&provider_secret), "the secret is never audited");
    assert!(!text.contains("ORD-77"), "the body is never audited");
    for sig in recorded_sigs {
        assert!(!text.contains(&sig), "only fingerprints of signatures");
    }
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok {} records", n_ok + 2)
    );

    // Tampering is named by line.
    let mut tampered: Vec<&str> = text.lines().collect();
    tampered.swap(1, 2);
    std::fs::write(&audit, tampered.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(fx);
}

#[tokio::test]
async fn the_audit_chain_continues_across_a_restart() {
    let s = Setup::new().await;
    let c = TestClient::new();
    c.post(&s.url("/kwikpaisa/a"), "{}").await;
    let audit = s.audit_path();
    let Setup { gw, fx } = s;
    gw.shutdown().await;
    let gw2 = fx.gateway(&fx.config()).await;
    c.post(&format!("http://{}/kwikpaisa/b", gw2.addr()), "{}").await;
    gw2.shutdown().await;
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 2 records");
    drop(fx);
}

/// A burst of requests to a slow provider opens no more upstream
/// connections than `egress.pool_idle_per_host`: the rest wait for a pooled
/// one instead of each opening its own. Every request is answered, and
/// `signgate_upstream_connections_opened_total` counts the two opened.
#[tokio::test]
async fn a_burst_opens_no_more_connections_than_the_pool_keeps() {
    let s = Setup::with(|c| c.egress("pool_idle_per_host", 2).egress("max_connections_per_host", 2)).await;
    let url = s.url("/kwikpaisa/slow/300");
    let c = TestClient::new();
    let replies = futures_util::future::join_all((0..8).map(|_| c.post(&url, "{}"))).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let m = s.metrics().await;
    let opened = metric(
        &m,
        "signgate_upstream_connections_opened_total",
        &[("route", "kwikpaisa")],
    );
    let sent = metric(
        &m,
        "signgate_signatures_total",
        &[("route", "kwikpaisa"), ("credential", "kwikpaisa")],
    );
    assert_eq!(sent, 8.0);
    assert_eq!(opened, 2.0, "8 requests in flight at once, at most 2 connections");
}
