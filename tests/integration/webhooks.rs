//! Replays and duplicates, both directions: the verifying webhook receiver
//! with durable delivery to a loopback app, and the duplicate-transaction
//! guard on outbound routes.

use std::time::Duration;

use http::Method;

use crate::support::logs::Logs;
use crate::support::*;

/// The docs' webhook example, key order as shown (vector W1's shape).
const W1: &str = r#"{"event":"payment.success","data":{"order_id":"6116229263036","amount":"105.00","currency":"INR","status":"PAID"}}"#;

/// KwikPaisa's webhook, delivered to the app on `app_port`.
fn webhook(app_port: u16) -> Webhook {
    Webhook::kwikpaisa(&format!("http://127.0.0.1:{app_port}/payments/events"))
}

/// The in-process gateway with [`webhook`] as `edit` makes it.
async fn setup(app_port: u16, edit: impl FnOnce(Webhook) -> Webhook) -> Setup {
    Setup::with(|c| c.webhook(edit(webhook(app_port)))).await
}

async fn post_webhook(s: &Setup, body: &str, ts: &str, sig: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/json"), ("x-timestamp", ts)];
    if let Some(sig) = sig {
        headers.push(("x-signature", sig));
    }
    TestClient::new()
        .send(Method::POST, &s.url("/webhooks/kwikpaisa"), &headers, body.to_string())
        .await
}

async fn signed(s: &Setup, body: &str) -> Reply {
    let ts = unix_now().to_string();
    let sig = provider_signature(&s.provider.secret, body.as_bytes(), &ts);
    post_webhook(s, body, &ts, Some(&sig)).await
}

async fn wait_count(app: &App, n: usize, within: Duration) -> bool {
    eventually(within, || async { app.count().await >= n }).await
}

#[tokio::test]
async fn a_valid_webhook_is_acknowledged_then_delivered_once_with_verified_headers() {
    let app = App::start_on(0).await;
    let s = setup(app.addr.port(), |w| w).await;
    let ts = unix_now().to_string();
    let sig = provider_signature(&s.provider.secret, W1.as_bytes(), &ts);
    let r = post_webhook(&s, W1, &ts, Some(&sig)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["status"], "accepted");
    assert!(wait_count(&app, 1, Duration::from_secs(5)).await);
    let (headers, body) = app.received.lock().await[0].clone();
    assert_eq!(body, W1.as_bytes(), "delivered exactly as received");
    assert_eq!(headers["x-signgate-verified"], "1");
    assert_eq!(headers["x-signgate-timestamp"], ts.as_str());
    // The webhook's name and the canonical JSON array of the values at
    // dedup_keys, each as `[value]` (`[]` when absent).
    assert_eq!(
        headers["x-signgate-event-key"],
        r#"kwikpaisa-events|[["payment.success"],["6116229263036"],["PAID"]]"#
    );
    assert!(
        headers.get("x-signature").is_none(),
        "the provider's signature is never passed on"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.count().await, 1, "delivered once");
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_webhooks_total",
            &[("webhook", "kwikpaisa-events"), ("result", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "signgate_webhook_deliveries_total",
            &[("webhook", "kwikpaisa-events"), ("result", "delivered")]
        ),
        1.0
    );
}

#[tokio::test]
async fn forged_stale_and_malformed_webhooks_are_refused_and_never_delivered() {
    let app = App::start_on(0).await;
    let s = setup(app.addr.port(), |w| w).await;
    let now = unix_now();
    let ts = now.to_string();
    let good = provider_signature(&s.provider.secret, W1.as_bytes(), &ts);
    let tampered = W1.replace("105.00", "905.00");
    let cases: Vec<(&str, String, String, Option<String>, &str)> = vec![
        (
            "tampered body",
            tampered.clone(),
            ts.clone(),
            Some(good.clone()),
            "bad_signature",
        ),
        (
            "wrong secret",
            W1.into(),
            ts.clone(),
            Some(provider_signature(
                "sk_test_not_the_merchants_secret",
                W1.as_bytes(),
                &ts,
            )),
            "bad_signature",
        ),
        ("missing signature", W1.into(), ts.clone(), None, "bad_signature"),
        (
            "garbage signature",
            W1.into(),
            ts.clone(),
            Some("zz".into()),
            "bad_signature",
        ),
        (
            "stale",
            W1.into(),
            (now - 1000).to_string(),
            Some(provider_signature(
                &s.provider.secret,
                W1.as_bytes(),
                &(now - 1000).to_string(),
            )),
            "stale_timestamp",
        ),
        (
            "future",
            W1.into(),
            (now + 1000).to_string(),
            Some(provider_signature(
                &s.provider.secret,
                W1.as_bytes(),
                &(now + 1000).to_string(),
            )),
            "stale_timestamp",
        ),
    ];
    for (what, body, ts, sig, code) in &cases {
        let r = post_webhook(&s, body, ts, sig.as_deref()).await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (401, *code), "{what}");
    }
    // Signed but not JSON.
    let junk = "not json";
    let r = post_webhook(
        &s,
        junk,
        &ts,
        Some(&provider_signature(&s.provider.secret, junk.as_bytes(), &ts)),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "invalid_json"));
    // GET is not a webhook.
    let r = TestClient::new()
        .send(Method::GET, &s.url("/webhooks/kwikpaisa"), &[], "")
        .await;
    assert_eq!(r.status, 405);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.count().await, 0, "nothing refused is ever delivered");
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_webhooks_total",
            &[("webhook", "kwikpaisa-events"), ("result", "bad_signature")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &m,
            "signgate_webhooks_total",
            &[("webhook", "kwikpaisa-events"), ("result", "stale")]
        ),
        2.0
    );
}

#[tokio::test]
async fn the_same_event_three_times_is_delivered_once() {
    let app = App::start_on(0).await;
    let s = setup(app.addr.port(), |w| w).await;
    let statuses: Vec<String> = [signed(&s, W1).await, signed(&s, W1).await, signed(&s, W1).await]
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200);
            r.json()["status"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(statuses, ["accepted", "duplicate", "duplicate"]);
    // A resend with another key order is the same event too.
    let reordered = r#"{"data":{"status":"PAID","currency":"INR","amount":"105.00","order_id":"6116229263036"},"event":"payment.success"}"#;
    assert_eq!(signed(&s, reordered).await.json()["status"], "duplicate");
    // A new status of the same order is a new event.
    assert_eq!(
        signed(&s, &W1.replace("PAID", "REFUNDED")).await.json()["status"],
        "accepted"
    );
    assert!(wait_count(&app, 2, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.count().await, 2);
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_webhooks_total",
            &[("webhook", "kwikpaisa-events"), ("result", "duplicate")]
        ),
        3.0
    );
}

#[tokio::test]
async fn canonical_signatures_only_with_verify_canonical() {
    let app = App::start_on(0).await;
    // W2's shape: the provider signs its own canonical form but sends W1's bytes.
    let canonical = r#"{"data":{"amount":"105.00","currency":"INR","order_id":"6116229263036","status":"PAID"},"event":"payment.success"}"#;
    for (verify_canonical, expected) in [(false, 401), (true, 200)] {
        let s = setup(app.addr.port(), |w| w.verify_canonical(verify_canonical)).await;
        let ts = unix_now().to_string();
        let sig = provider_signature(&s.provider.secret, canonical.as_bytes(), &ts);
        let r = post_webhook(&s, W1, &ts, Some(&sig)).await;
        assert_eq!(r.status.as_u16(), expected, "verify_canonical = {verify_canonical}");
    }
}

#[tokio::test]
async fn the_previous_secret_verifies_during_the_rotation_grace() {
    let app = App::start_on(0).await;
    let s = setup(app.addr.port(), |w| w.rotation_grace_secs(600)).await;
    let old_secret = s.provider.secret.clone();
    let new_secret = random_token("sk_test_", 32);
    write_cred(&s.cred_path, &s.provider.api_key, &new_secret);
    // The webhook verifies with credential kwikpaisa: its second version.
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.gw.credential_version("kwikpaisa") == Some(2)
        })
        .await
    );
    let ts = unix_now().to_string();
    let r = post_webhook(&s, W1, &ts, Some(&provider_signature(&old_secret, W1.as_bytes(), &ts))).await;
    assert_eq!(r.status, 200, "old secret within the grace");
    let other = W1.replace("PAID", "SETTLED");
    let r = post_webhook(
        &s,
        &other,
        &ts,
        Some(&provider_signature(&new_secret, other.as_bytes(), &ts)),
    )
    .await;
    assert_eq!(r.status, 200, "new secret");
}

#[tokio::test]
async fn app_down_then_up_gets_the_event() {
    let port = closed_port();
    let s = setup(port, |w| w).await;
    assert_eq!(
        signed(&s, W1).await.status,
        200,
        "acknowledged before the app is contacted"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let app = App::start_on(port).await;
    assert!(
        wait_count(&app, 1, Duration::from_secs(10)).await,
        "delivered once the app is up"
    );
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            "signgate_webhook_deliveries_total",
            &[("webhook", "kwikpaisa-events"), ("result", "retry")]
        ) >= 1.0
    );
}

/// The binary with a config file: kill -9 after the 200, restart, delivered;
/// parked after max attempts, listed and re-queued by the CLI.
#[tokio::test]
async fn events_survive_a_crash_and_failed_ones_are_retried_from_the_cli() {
    let fx = Fixture::new().await;
    let provider = &fx.provider;
    let app_port = closed_port();
    // The listener and admin addresses come from the environment alone.
    let toml = fx
        .config()
        .unset("listener", "addr")
        .unset("admin", "addr")
        .webhook(webhook(app_port).max_attempts(2));
    let config_path = fx.write_config(&toml);
    let post = |gw: &GatewayProcess, body: &str| {
        let ts = unix_now().to_string();
        let sig = provider_signature(&provider.secret, body.as_bytes(), &ts);
        let url = gw.url("/webhooks/kwikpaisa");
        let body = body.to_string();
        async move {
            TestClient::new()
                .send(Method::POST, &url, &[("x-timestamp", &ts), ("x-signature", &sig)], body)
                .await
        }
    };
    // 1. Acknowledged, then the gateway dies before it could deliver.
    let mut gw = GatewayProcess::start(&config_path, &[]);
    assert_eq!(post(&gw, W1).await.status, 200);
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let app = App::start_on(app_port).await;
    let gw = GatewayProcess::start(&config_path, &[]);
    assert!(
        wait_count(&app, 1, Duration::from_secs(10)).await,
        "delivered after the restart\n{}",
        gw.log_text()
    );
    drop(app);

    // 2. The app is gone again: two attempts, then parked as failed.
    let second = W1.replace("PAID", "REVERSED");
    assert_eq!(post(&gw, &second).await.status, 200);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signgate"))
            .args(["webhooks"])
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env("SIGNGATE__ADMIN__ADDR", gw.admin.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let parked = eventually(Duration::from_secs(10), || async {
        cli(&["list", "--failed"]).contains("REVERSED")
    })
    .await;
    assert!(parked, "{}", cli(&["list"]));
    let listed = cli(&["list", "--failed"]);
    assert!(listed.contains("failed") && listed.contains("attempts=2"), "{listed}");
    // A parked event shows on /metrics (SigngateWebhookEventsParked pages on it).
    let parked_gauge = || gw.metric("signgate_webhook_parked", &[("webhook", "kwikpaisa-events")]);
    assert!(
        eventually(Duration::from_secs(5), || async { parked_gauge().await == 1.0 }).await,
        "signgate_webhook_parked never 1:\n{}",
        gw.metrics().await
    );
    let app = App::start_on(app_port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count().await, 0, "a parked event waits for an operator");
    assert!(cli(&["retry", "--all-failed"]).contains("requeued 1"));
    assert!(wait_count(&app, 1, Duration::from_secs(10)).await);
    assert!(app.received.lock().await[0].1.windows(8).any(|w| w == b"REVERSED"));
    assert_eq!(cli(&["list", "--failed"]).trim(), "no events");
    assert!(eventually(Duration::from_secs(5), || async { parked_gauge().await == 0.0 }).await);
}

#[tokio::test]
async fn concurrent_requests_with_one_order_id_reach_the_provider_once() {
    let s =
        Setup::with(|c| c.edit_route("kwikpaisa", |r| r.duplicate_key("/order_id").duplicate_window_secs(60))).await;
    let body = r#"{"order_id":"ORD-DUP-1","amount":"10.00"}"#;
    let url = s.url("/kwikpaisa/slow/600");
    let first = tokio::spawn({
        let url = url.clone();
        async move { TestClient::new().post(&url, body).await }
    });
    assert!(
        s.provider.standin.next(Duration::from_secs(5)).await.is_some(),
        "first is in flight"
    );
    let second = TestClient::new().post(&url, body).await;
    assert_eq!(
        (second.status.as_u16(), second.code().as_str()),
        (409, "duplicate_request")
    );
    assert_eq!(first.await.unwrap().status, 200);
    // After a 2xx, a repeat within the window is refused too.
    let again = TestClient::new().post(&url, body).await;
    assert_eq!(again.status, 409);
    assert_eq!(
        s.provider.standin.records().await.len(),
        1,
        "exactly one reached the provider"
    );
    // The guard is per endpoint: a status call with the same reference is
    // its own request and never locks (nor is locked by) a create.
    let status = TestClient::new()
        .post(&s.url("/kwikpaisa/api/v3/pg/order/status"), body)
        .await;
    assert_eq!(status.status, 200);
    assert_eq!(s.provider.standin.records().await.len(), 2);
    // Another reference goes through; a body without one is refused.
    assert_eq!(
        TestClient::new()
            .post(&s.url("/kwikpaisa/x"), r#"{"order_id":"ORD-DUP-2"}"#)
            .await
            .status,
        200
    );
    let r = TestClient::new()
        .post(&s.url("/kwikpaisa/x"), r#"{"amount":"1"}"#)
        .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "missing_duplicate_key"));
    // The audit record carries the reference.
    let Setup { gw, fx } = s;
    gw.shutdown().await;
    let audit = std::fs::read_to_string(fx.audit_path()).unwrap();
    assert!(audit.contains(r#""duplicate_key":"\"ORD-DUP-1\"""#), "{audit}");
}

#[tokio::test]
async fn a_failed_request_may_be_retried() {
    let s = Setup::with(|c| c.edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"))).await;
    let body = r#"{"order_id":"ORD-RETRY"}"#;
    assert_eq!(
        TestClient::new()
            .post(&s.url("/kwikpaisa/status/500"), body)
            .await
            .status,
        500
    );
    assert_eq!(
        TestClient::new()
            .post(&s.url("/kwikpaisa/status/502"), body)
            .await
            .status,
        502
    );
    assert_eq!(TestClient::new().post(&s.url("/kwikpaisa/x"), body).await.status, 200);
    assert_eq!(TestClient::new().post(&s.url("/kwikpaisa/x"), body).await.status, 409);
    assert_eq!(s.provider.standin.records().await.len(), 3);
}

/// An outbound request's body, `X-TIMESTAMP` and `X-SIGNATURE` — as anyone
/// who sees outbound headers has them — posted to the webhook path: the
/// gateway signs requests and verifies webhooks with the same credential
/// and rule, so old builds accepted it (200 `accepted`) and delivered a
/// forged event to the app. It is refused `401 reflected_signature`, also
/// with its hex digits upper-cased, counted and audited, while a genuine
/// event (the provider's own signature) still goes through.
#[tokio::test]
async fn an_outbound_signature_replayed_as_a_webhook_is_refused() {
    let app = App::start_on(0).await;
    let s = setup(app.addr.port(), |w| w).await;
    let sent = TestClient::new()
        .send(
            Method::POST,
            &s.url("/kwikpaisa/api/v3/pg/order/status"),
            &[("content-type", "application/json"), ("x-request-id", "reflect-out-1")],
            W1.to_string(),
        )
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    let seen = s.provider.standin.records().await;
    let out = seen.last().expect("the provider got the outbound request");
    let ts = out.headers["x-timestamp"].to_str().unwrap().to_string();
    let sig = out.headers["x-signature"].to_str().unwrap().to_string();
    let body = String::from_utf8(out.body.to_vec()).unwrap();
    // The signature is genuine: the provider's own rule accepts it for this body.
    assert_eq!(sig, provider_signature(&s.provider.secret, body.as_bytes(), &ts));
    for replayed in [sig.clone(), sig.to_uppercase()] {
        let r = post_webhook(&s, &body, &ts, Some(&replayed)).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (401, "reflected_signature"),
            "{:?}",
            r.body
        );
    }
    // A genuine event still goes through.
    let genuine = W1.replace("PAID", "SETTLED");
    assert_eq!(signed(&s, &genuine).await.status, 200);
    assert!(wait_count(&app, 1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = app.received.lock().await.clone();
    assert_eq!(received.len(), 1, "only the genuine event was delivered");
    assert_eq!(received[0].1, genuine.as_bytes());
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_webhooks_total",
            &[("webhook", "kwikpaisa-events"), ("result", "reflected_signature")]
        ),
        2.0
    );
    assert!(metric(&m, "signgate_reflection_guard_signatures", &[]) >= 1.0, "{m}");
    let Setup { gw, fx } = s;
    gw.shutdown().await;
    let audit = std::fs::read_to_string(fx.audit_path()).unwrap();
    assert_eq!(
        audit.matches(r#""reason":"reflected_signature""#).count(),
        2,
        "both refusals audited: {audit}"
    );
}

/// Sends `W1` through the gateway at `url` and takes what the provider got:
/// the canonical body, `X-TIMESTAMP` and `X-SIGNATURE` an eavesdropper on
/// the outbound leg would have.
async fn capture_outbound(fx: &Fixture, url: &str) -> (String, String, String) {
    let sent = TestClient::new().post(url, W1).await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    let seen = fx.provider.standin.records().await;
    let out = seen.last().expect("the provider got the outbound request");
    (
        String::from_utf8(out.body.to_vec()).unwrap(),
        out.headers["x-timestamp"].to_str().unwrap().to_string(),
        out.headers["x-signature"].to_str().unwrap().to_string(),
    )
}

async fn replay(url: &str, (body, ts, sig): &(String, String, String)) -> Reply {
    TestClient::new()
        .send(
            Method::POST,
            url,
            &[
                ("content-type", "application/json"),
                ("x-timestamp", ts),
                ("x-signature", sig),
            ],
            body.clone(),
        )
        .await
}

/// Old builds kept the memory of sent signatures in the process only: after
/// a restart, an outbound request's body and headers replayed to the
/// webhook path (within `tolerance_secs`) were accepted and delivered to the
/// app as verified. The signature is in the state database before the
/// request is sent, and a restart (`SIGKILL`, nothing flushed on the way
/// out) reads it back.
#[tokio::test]
async fn an_outbound_signature_is_still_refused_after_a_restart() {
    let app = App::start_on(0).await;
    let fx = Fixture::new().await;
    let toml = fx.config().webhook(webhook(app.addr.port()));
    let mut gw = fx.process(&toml, &[]);
    let captured = capture_outbound(&fx, &gw.url("/kwikpaisa/api/v3/pg/order/status")).await;
    let hook_url = |gw: &GatewayProcess| gw.url("/webhooks/kwikpaisa");
    assert_eq!(replay(&hook_url(&gw), &captured).await.code(), "reflected_signature");
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5)).await;

    let gw = fx.process(&toml, &[]);
    let r = replay(&hook_url(&gw), &captured).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (401, "reflected_signature"),
        "{:?}",
        r.body
    );
    assert!(
        gw.log_text().contains("read back from the state database"),
        "{}",
        gw.log_text()
    );
    // A genuine event still goes through, and only it reaches the app.
    let ts = unix_now().to_string();
    let genuine = W1.replace("PAID", "SETTLED");
    let sig = provider_signature(&fx.provider.secret, genuine.as_bytes(), &ts);
    let r = replay(&hook_url(&gw), &(genuine.clone(), ts, sig)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(wait_count(&app, 1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count().await, 1);
    assert_eq!(
        gw.metric("signgate_reflection_guard_persist_errors_total", &[]).await,
        0.0
    );
}

/// Old builds remembered outbound signatures by credential name: a webhook
/// verifying with a credential of another name holding the same secret
/// (`[credentials.kwikpaisa-hook]`, the same file) turned the guard off, and
/// the replay was accepted. The secrets are compared (by a fingerprint), the
/// replay is refused, and the shared secret is reported (a log line and
/// `signgate_webhook_secret_shared`); a webhook with a secret of its own is not.
#[tokio::test]
async fn a_second_credential_holding_the_same_secret_keeps_the_guard_on() {
    let app = App::start_on(0).await;
    let fx = Fixture::new().await;
    let logs = Logs::capture();
    let other = fx.path("other-hook.json");
    write_cred(&other, "pk_other_0123456789", &random_token("sk_other_", 32));
    let toml = fx
        .config()
        .credential("kwikpaisa-hook", Fixture::file_credential(&fx.cred_path))
        .credential("other-hook", Fixture::file_credential(&other))
        .webhook(webhook(app.addr.port()).set("credential", "kwikpaisa-hook"))
        .webhook(
            Webhook::new(
                "other-events",
                "/webhooks/other",
                "other-hook",
                &format!("http://127.0.0.1:{}/other", app.addr.port()),
            )
            .set("scheme", "kwikpaisa"),
        );
    let s = Setup::on(fx, &toml).await;
    let captured = capture_outbound(&s, &s.url("/kwikpaisa/api/v3/pg/order/status")).await;
    let r = replay(&s.url("/webhooks/kwikpaisa"), &captured).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (401, "reflected_signature"),
        "{:?}",
        r.body
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count().await, 0, "nothing forged was delivered");
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "signgate_webhook_secret_shared", &[("webhook", "kwikpaisa-events")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "signgate_webhook_secret_shared", &[("webhook", "other-events")]),
        0.0
    );
    assert_eq!(
        logs.count("verifies with a secret that also signs outbound requests"),
        1,
        "{}",
        logs.text()
    );
    logs.assert_clean(&[&s.provider.secret]);
}
