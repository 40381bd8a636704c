//! The amount guard (`[route.amount_guard]`), end to end: caps per request,
//! per UTC day and per day's count, with amounts as JSON strings and
//! numbers; what counts is money that moved (kept on a 2xx, released on a
//! refusal or a definite failure, kept when the outcome is unknown, also
//! when the client goes away at any stage); callers on 127.0.0.2 and
//! 127.0.0.3 counted apart (or together with `per = "route"`); invalid
//! amounts; totals across a real process restart and a UTC midnight
//! (libfaketime under the real binary); `signgate guard status`; and with
//! `[fleet]` two real gateways sharing one day's cap through a real
//! `redis-server`, failing closed when it dies.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::support::redis::RedisServer;
use crate::support::*;

/// Where Debian's `libfaketime` puts the preload library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The guard the tests start from: INR-style amounts at `/amount`,
/// currency at `/currency`, 500.00 per request, 1000.00 per caller and day.
fn caps() -> AmountGuard {
    AmountGuard::on("/amount")
        .currency("/currency")
        .max_per_request("500.00")
        .max_per_day("1000.00")
}

/// The fixture's configuration plus route `payouts` (on `/payouts/`) with `guard`.
fn with_payouts(fx: &Fixture, guard: AmountGuard) -> GatewayToml {
    fx.config()
        .route(Route::to("payouts", &fx.upstream()).amount_guard(guard))
}

/// A payout body; `amount` is JSON text (`"\"105.50\""` or `105.5`).
fn payout(amount: &str, currency: &str) -> String {
    format!(
        r#"{{"payout_id":"{}","amount":{amount},"currency":"{currency}"}}"#,
        random_token("PO-", 12)
    )
}

fn message(r: &Reply) -> String {
    r.json()["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// Requests the provider received under `/pay` (the payouts route's own
/// paths: `/pay`, and the stand-in's hooks are counted by their own prefix).
async fn provider_got(fx: &Fixture, prefix: &str) -> usize {
    let recs = fx.provider.standin.records().await;
    recs.iter().filter(|r| r.path_and_query.starts_with(prefix)).count()
}

/// `GET /guard/status[?route=R]` on an admin address.
async fn status(admin: std::net::SocketAddr, route: Option<&str>) -> Value {
    let q = route.map(|r| format!("?route={r}")).unwrap_or_default();
    let r = TestClient::new().get(&format!("http://{admin}/guard/status{q}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

/// The status row of `caller` in `currency` of route `route`.
fn row<'a>(status: &'a Value, route: &str, caller: &str, currency: &str) -> Option<&'a Value> {
    status["routes"].as_array()?.iter().find(|r| r["route"] == route)?["totals"]
        .as_array()?
        .iter()
        .find(|t| t["caller"] == caller && t["currency"] == currency)
}

/// (amount, count) of a status row; ("0", 0) when there is none.
fn used(status: &Value, route: &str, caller: &str, currency: &str) -> (String, u64) {
    row(status, route, caller, currency).map_or(("0".into(), 0), |t| {
        (t["amount"].as_str().unwrap().to_string(), t["count"].as_u64().unwrap())
    })
}

fn audit_lines(fx: &Fixture) -> Vec<Value> {
    std::fs::read_to_string(fx.audit_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The audit record of `rid`, once written.
async fn audit_of(fx: &Fixture, rid: &str) -> Value {
    let find = || audit_lines(fx).into_iter().find(|l| l["request_id"] == rid);
    assert!(
        eventually(Duration::from_secs(10), || async { find().is_some() }).await,
        "no audit record for {rid}"
    );
    find().unwrap()
}

async fn post_rid(c: &TestClient, url: &str, rid: &str, body: &str) -> Reply {
    c.send(
        http::Method::POST,
        url,
        &[("content-type", "application/json"), ("x-request-id", rid)],
        body.to_string(),
    )
    .await
}

fn guard_metric(m: &str, result: &str) -> f64 {
    metric(
        m,
        "signgate_amount_guard_total",
        &[("route", "payouts"), ("result", result)],
    )
}

// ------------------------------------------------------------------ caps

/// Per request and per day, with amounts as strings and as numbers, exact
/// to the last minor unit; per currency; counted, audited, visible.
#[tokio::test]
async fn per_request_and_per_day_caps_hold_for_string_and_number_amounts() {
    let fx = Fixture::new().await;
    let toml = with_payouts(&fx, caps());
    let s = Setup::on(fx, &toml).await;
    let c = TestClient::new();
    let url = s.url("/payouts/pay");

    assert_eq!(c.post(&url, &payout("\"400.00\"", "INR")).await.status, 200);
    let r = post_rid(&c, &url, "amt-number", &payout("400.5", "INR")).await;
    assert_eq!(r.status, 200, "a JSON number: {:?}", r.body);
    // 800.50 used: 200.00 more would pass 1000.00.
    let r = post_rid(&c, &url, "amt-over-day", &payout("\"200.00\"", "INR")).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (403, "amount_limit_exceeded"));
    let m = message(&r);
    assert!(m.contains("max_per_day (1000.00 INR)") && m.contains("(UTC)"), "{m}");
    assert!(m.contains("nothing was sent"), "{m}");
    assert!(!m.contains("800"), "the message never shows a total: {m}");
    // Exactly up to the cap, to the last paisa.
    assert_eq!(c.post(&url, &payout("\"199.50\"", "INR")).await.status, 200);
    let r = c.post(&url, &payout("0.01", "INR")).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (403, "amount_limit_exceeded"));
    // One request over max_per_request.
    let r = c.post(&url, &payout("\"500.01\"", "INR")).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (403, "amount_limit_exceeded"));
    assert_eq!(
        message(&r),
        "amount 500.01 INR is over this route's max_per_request (500.00 INR); nothing was sent"
    );
    // Caps apply per currency (and the currency is compared upper-cased).
    assert_eq!(c.post(&url, &payout("\"500.00\"", "usd")).await.status, 200);
    assert_eq!(c.post(&url, &payout("\"500.00\"", "USD")).await.status, 200);
    assert_eq!(c.post(&url, &payout("\"0.01\"", "Usd")).await.status, 403);

    assert_eq!(provider_got(&s, "/pay").await, 5, "only the allowed ones were sent");
    let m = s.metrics().await;
    for (result, n) in [
        ("allowed", 5.0),
        ("kept", 5.0),
        ("over_day", 3.0),
        ("over_request", 1.0),
        ("released", 0.0),
    ] {
        assert_eq!(guard_metric(&m, result), n, "{result}\n{m}");
    }
    assert_eq!(
        metric(
            &m,
            "signgate_denied_total",
            &[("route", "payouts"), ("reason", "amount_limit_exceeded")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &m,
            "signgate_amount_guard_day_used_ratio",
            &[("route", "payouts"), ("cap", "amount")]
        ),
        1.0,
        "a caller used its whole day"
    );

    let st = status(s.gw.admin_addr().unwrap(), Some("payouts")).await;
    assert_eq!(used(&st, "payouts", "127.0.0.1", "INR"), ("1000.00".into(), 3));
    assert_eq!(used(&st, "payouts", "127.0.0.1", "USD"), ("1000.00".into(), 2));
    let route = &st["routes"][0];
    assert_eq!(route["caps"]["max_per_day"], "1000.00");
    assert_eq!(route["per"], "client");
    assert_eq!(route["source"], "local");

    let kept = audit_of(&s, "amt-number").await;
    assert_eq!(
        (kept["amount"].as_str(), kept["currency"].as_str()),
        (Some("400.50"), Some("INR")),
        "{kept}"
    );
    assert_eq!(kept["decision"], "allowed");
    let refused = audit_of(&s, "amt-over-day").await;
    assert_eq!(refused["reason"], "amount_limit_exceeded", "{refused}");
    assert_eq!(refused["amount"], "200.00", "{refused}");
    assert!(refused.get("upstream_status").is_none_or(Value::is_null));
}

/// `max_count_per_day`: the day's requests, whatever their amounts.
#[tokio::test]
async fn the_count_cap_holds() {
    let fx = Fixture::new().await;
    let toml = with_payouts(&fx, AmountGuard::on("/amount").max_count_per_day(2));
    let s = Setup::on(fx, &toml).await;
    let c = TestClient::new();
    let url = s.url("/payouts/pay");
    for _ in 0..2 {
        assert_eq!(c.post(&url, &payout("\"1.00\"", "INR")).await.status, 200);
    }
    let r = c.post(&url, &payout("\"0.01\"", "INR")).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (403, "amount_limit_exceeded"));
    assert!(message(&r).contains("max_count_per_day (2)"), "{}", message(&r));
    assert_eq!(provider_got(&s, "/pay").await, 2);
    let m = s.metrics().await;
    assert_eq!(guard_metric(&m, "over_count"), 1.0);
    assert_eq!(
        metric(
            &m,
            "signgate_amount_guard_day_used_ratio",
            &[("route", "payouts"), ("cap", "count")]
        ),
        1.0
    );
    // Without a currency pointer the row has none.
    let st = status(s.gw.admin_addr().unwrap(), None).await;
    assert_eq!(used(&st, "payouts", "127.0.0.1", ""), ("2.00".into(), 2));
}

// ------------------------------------------------------------------ outcomes

/// Kept only when money moved: a provider 5xx or 4xx releases the
/// reservation, a 2xx keeps it.
#[tokio::test]
async fn a_provider_refusal_releases_the_reservation_and_a_2xx_keeps_it() {
    let fx = Fixture::new().await;
    let toml = with_payouts(&fx, AmountGuard::on("/amount").max_per_day("100.00"));
    let s = Setup::on(fx, &toml).await;
    let c = TestClient::new();
    for (path, answer) in [
        ("/payouts/status/500", 500),
        ("/payouts/status/502", 502),
        ("/payouts/status/409", 409),
    ] {
        let r = c.post(&s.url(path), &payout("\"100.00\"", "INR")).await;
        assert_eq!(r.status, answer, "{path}: the provider's answer passes through");
        let st = status(s.gw.admin_addr().unwrap(), None).await;
        assert_eq!(
            used(&st, "payouts", "127.0.0.1", ""),
            ("0".into(), 0),
            "{path}: released"
        );
    }
    assert_eq!(
        c.post(&s.url("/payouts/pay"), &payout("\"100.00\"", "INR"))
            .await
            .status,
        200
    );
    let r = c.post(&s.url("/payouts/pay"), &payout("\"0.01\"", "INR")).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "amount_limit_exceeded"),
        "kept"
    );
    let m = s.metrics().await;
    assert_eq!((guard_metric(&m, "released"), guard_metric(&m, "kept")), (3.0, 1.0));
}

/// An outcome nobody knows stays counted: the provider received the payout
/// and did not answer in time (504 `upstream_timeout`), or answered 504
/// itself; both are tallied as unknown.
#[tokio::test]
async fn an_unknown_outcome_stays_reserved() {
    let fx = Fixture::new().await;
    let toml = with_payouts(&fx, AmountGuard::on("/amount").max_per_day("200.00")).egress("request_timeout_ms", 1000);
    let s = Setup::on(fx, &toml).await;
    let c = TestClient::new();
    let r = c.post(&s.url("/payouts/slow/2500"), &payout("\"60.00\"", "INR")).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (504, "upstream_timeout"));
    assert_eq!(provider_got(&s, "/slow").await, 1, "the provider received it");
    let r = c.post(&s.url("/payouts/status/504"), &payout("\"60.00\"", "INR")).await;
    assert_eq!(r.status, 504, "the provider's own 504 passes through");
    let r = c.post(&s.url("/payouts/pay"), &payout("\"80.01\"", "INR")).await;
    assert_eq!(r.status, 403, "120.00 stays counted: {:?}", r.body);
    assert_eq!(
        c.post(&s.url("/payouts/pay"), &payout("\"80.00\"", "INR")).await.status,
        200
    );
    let st = status(s.gw.admin_addr().unwrap(), None).await;
    let t = row(&st, "payouts", "127.0.0.1", "").unwrap();
    assert_eq!(
        (&t["amount"], &t["count"], &t["unknown_amount"], &t["unknown_count"]),
        (
            &Value::from("200.00"),
            &Value::from(3),
            &Value::from("120.00"),
            &Value::from(2)
        ),
        "{t}"
    );
    let m = s.metrics().await;
    assert_eq!((guard_metric(&m, "unknown"), guard_metric(&m, "kept")), (2.0, 1.0));
}

/// A request may end at any `.await`: the client goes away while waiting for
/// a `max_inflight` slot (nothing sent: released), after its payout reached
/// a provider that then answers 200 (kept), and after it reached one that
/// never answers in time (kept, unknown).
#[tokio::test]
async fn a_client_gone_at_any_stage_leaves_the_totals_right() {
    let fx = Fixture::new().await;
    let toml = with_payouts(&fx, AmountGuard::on("/amount").max_per_day("1000.00"))
        .edit_route("payouts", |r| r.max_inflight(1).queue_timeout_ms(5000));
    let s = Setup::on(fx, &toml).await;
    let admin = s.gw.admin_addr().unwrap();
    let total = || async move { used(&status(admin, None).await, "payouts", "127.0.0.1", "") };

    // 1. The occupant holds the only slot for 1 s; the next one queues, is
    // reserved, and its client leaves before anything is sent.
    let url = s.url("/payouts/slow/1000");
    let occupant = tokio::spawn(async move { TestClient::new().post(&url, &payout("\"10.00\"", "INR")).await.status });
    assert!(
        eventually(Duration::from_secs(5), || async {
            provider_got(&s, "/slow").await == 1
        })
        .await
    );
    let queued = raw_post(s.gw.addr(), "/payouts/pay", "gone-queued", &payout("\"20.00\"", "INR")).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            total().await == ("30.00".into(), 2)
        })
        .await,
        "the queued one is reserved: {:?}",
        total().await
    );
    drop(queued);
    assert!(
        eventually(Duration::from_secs(5), || async {
            total().await == ("10.00".into(), 1)
        })
        .await,
        "released when its client left: {:?}",
        total().await
    );
    assert_eq!(occupant.await.unwrap(), 200);
    assert_eq!(provider_got(&s, "/pay").await, 0, "the queued one was never sent");
    let rec = audit_of(&s, "gone-queued").await;
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str()),
        (Some("abandoned"), Some("client_gone"))
    );
    assert_eq!(rec["amount"], "20.00");

    // 2. Sent; the client leaves; the provider answers 200 after 1 s: kept.
    let started = Instant::now();
    let sent = raw_post(
        s.gw.addr(),
        "/payouts/slow/1000",
        "gone-kept",
        &payout("\"30.00\"", "INR"),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            provider_got(&s, "/slow").await == 2
        })
        .await
    );
    drop(sent);
    let rec = audit_of(&s, "gone-kept").await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
    assert_eq!(
        (rec["upstream_status"].as_u64(), rec["reason"].as_str()),
        (Some(200), Some("client_gone"))
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            total().await == ("40.00".into(), 2)
        })
        .await,
        "kept: {:?}",
        total().await
    );

    // 3. Sent; the client leaves; the provider never answers within the
    // request timeout (1.5 s): kept, as an unknown outcome.
    let sent = raw_post(
        s.gw.addr(),
        "/payouts/slow/4000",
        "gone-unknown",
        &payout("\"40.00\"", "INR"),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            provider_got(&s, "/slow").await == 3
        })
        .await
    );
    drop(sent);
    let rec = audit_of(&s, "gone-unknown").await;
    assert_eq!(rec["upstream_error"], "upstream_timeout", "{rec}");
    let st = status(admin, None).await;
    let t = row(&st, "payouts", "127.0.0.1", "").unwrap();
    assert_eq!(
        (&t["amount"], &t["unknown_amount"]),
        (&Value::from("80.00"), &Value::from("40.00")),
        "{t}"
    );
    let m = s.metrics().await;
    for (result, n) in [("allowed", 4.0), ("kept", 2.0), ("released", 1.0), ("unknown", 1.0)] {
        assert_eq!(guard_metric(&m, result), n, "{result}");
    }
}

/// An HTTP/1.1 POST on a connection of its own, left open.
async fn raw_post(addr: std::net::SocketAddr, path: &str, rid: &str, body: &str) -> tokio::net::TcpStream {
    let mut s = connect_from("127.0.0.1", addr).await;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         x-request-id: {rid}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

// ------------------------------------------------------------------ callers

/// `per = "client"`: 127.0.0.2 and 127.0.0.3 have a day each; `per =
/// "route"`: they share one.
#[tokio::test]
async fn callers_are_counted_apart_or_together() {
    let fx = Fixture::new().await;
    let toml = with_payouts(&fx, caps()).route(Route::to("pooled", &fx.upstream()).amount_guard(caps().per("route")));
    let s = Setup::on(fx, &toml).await;
    let (two, three) = (TestClient::from_addr("127.0.0.2"), TestClient::from_addr("127.0.0.3"));
    let url = s.url("/payouts/pay");
    for _ in 0..2 {
        assert_eq!(two.post(&url, &payout("\"500.00\"", "INR")).await.status, 200);
    }
    let r = two.post(&url, &payout("\"0.01\"", "INR")).await;
    assert_eq!(r.status, 403);
    assert!(message(&r).contains("your total"), "{}", message(&r));
    // 127.0.0.3 has its own day.
    for _ in 0..2 {
        assert_eq!(three.post(&url, &payout("\"500.00\"", "INR")).await.status, 200);
    }
    assert_eq!(three.post(&url, &payout("\"0.01\"", "INR")).await.status, 403);
    let st = status(s.gw.admin_addr().unwrap(), Some("payouts")).await;
    assert_eq!(used(&st, "payouts", "127.0.0.2", "INR"), ("1000.00".into(), 2));
    assert_eq!(used(&st, "payouts", "127.0.0.3", "INR"), ("1000.00".into(), 2));

    // Together: what one spends, the other cannot.
    let pooled = s.url("/pooled/pay");
    assert_eq!(two.post(&pooled, &payout("\"500.00\"", "INR")).await.status, 200);
    assert_eq!(three.post(&pooled, &payout("\"400.00\"", "INR")).await.status, 200);
    let r = three.post(&pooled, &payout("\"100.01\"", "INR")).await;
    assert_eq!(r.status, 403);
    assert!(message(&r).contains("route pooled's total"), "{}", message(&r));
    let st = status(s.gw.admin_addr().unwrap(), Some("pooled")).await;
    assert_eq!(used(&st, "pooled", "*", "INR"), ("900.00".into(), 2));
    assert_eq!(st["routes"].as_array().unwrap().len(), 1, "only the route asked for");
}

// ------------------------------------------------------------------ invalid

/// Anything but a plain, non-negative decimal with at most `minor_units`
/// places is refused before anything is reserved or sent.
#[tokio::test]
async fn invalid_amounts_are_refused_with_the_reason() {
    let fx = Fixture::new().await;
    let toml = with_payouts(&fx, caps());
    let s = Setup::on(fx, &toml).await;
    let c = TestClient::new();
    let url = s.url("/payouts/pay");
    let cases = [
        (
            r#"{"currency":"INR"}"#.to_string(),
            "invalid amount at /amount: missing",
        ),
        (
            r#"{"amount":null,"currency":"INR"}"#.to_string(),
            "invalid amount at /amount: missing",
        ),
        (payout("\"-5.00\"", "INR"), "negative"),
        (payout("-5", "INR"), "negative"),
        (payout("\"1.234\"", "INR"), "more than 2 decimal places"),
        (payout("1.234", "INR"), "more than 2 decimal places"),
        (payout("\"abc\"", "INR"), "not a plain decimal number"),
        (payout("1e3", "INR"), "exponent"),
        (payout("\"1E3\"", "INR"), "exponent"),
        (payout("true", "INR"), "not a number or a numeric string"),
        (payout("{\"v\":1}", "INR"), "not a number or a numeric string"),
        (payout("\" 5.00\"", "INR"), "not a plain decimal number"),
        (
            r#"{"amount":"5.00"}"#.to_string(),
            "invalid currency at /currency: missing",
        ),
        (payout("\"5.00\"", "IN R"), "invalid currency at /currency"),
    ];
    for (body, why) in &cases {
        let r = c.post(&url, body).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (400, "invalid_amount"),
            "{body}"
        );
        assert!(message(&r).contains(why), "{body}: {}", message(&r));
    }
    assert_eq!(provider_got(&s, "/pay").await, 0, "nothing was sent");
    let m = s.metrics().await;
    assert_eq!(guard_metric(&m, "invalid"), cases.len() as f64);
    assert_eq!(guard_metric(&m, "allowed"), 0.0);
    assert_eq!(
        metric(
            &m,
            "signgate_denied_total",
            &[("route", "payouts"), ("reason", "invalid_amount")]
        ),
        cases.len() as f64
    );
    let st = status(s.gw.admin_addr().unwrap(), None).await;
    assert!(st["routes"][0]["totals"].as_array().unwrap().is_empty(), "{st}");
    // The guard is still good for a valid one.
    assert_eq!(c.post(&url, &payout("5", "INR")).await.status, 200);
}

// ------------------------------------------------------------------ restart, day

/// The real binary, killed with SIGKILL after a payout, restarted on the same
/// state dir: the day's total is still there (and `signgate guard status`
/// reads it through the admin API with the token).
#[tokio::test]
async fn totals_survive_a_process_restart() {
    let fx = Fixture::new().await;
    let token_file = fx.path("admin-token");
    std::fs::write(&token_file, "amounts-admin-token-0123456789\n").unwrap();
    let toml = with_payouts(&fx, caps()).admin("token_file", &token_file);
    let gw = fx.process(&toml, &[]);
    let c = TestClient::new();
    assert_eq!(
        c.post(&gw.url("/payouts/pay"), &payout("\"400.00\"", "INR"))
            .await
            .status,
        200
    );
    assert_eq!(
        c.post(&gw.url("/payouts/pay"), &payout("\"200.00\"", "INR"))
            .await
            .status,
        200
    );
    drop(gw); // SIGKILL: no shutdown, no flush.

    let gw = fx.process(&toml, &[]);
    let r = c.post(&gw.url("/payouts/pay"), &payout("\"400.01\"", "INR")).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "amount_limit_exceeded"),
        "{:?}",
        r.body
    );
    assert_eq!(
        c.post(&gw.url("/payouts/pay"), &payout("\"400.00\"", "INR"))
            .await
            .status,
        200
    );
    assert_eq!(provider_got(&fx, "/pay").await, 3);

    // The status needs the admin token; the CLI sends it.
    let r = c.get(&gw.admin_url("/guard/status")).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (401, "unauthorized"));
    let out = std::process::Command::new(signgate_bin())
        .args(["guard", "status", "--route", "payouts", "--config"])
        .arg(fx.config_path())
        .env("SIGNGATE__ADMIN__ADDR", gw.admin.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let today = signgate_day_label(unix_now());
    assert!(text.starts_with(&format!("day {today} (UTC)\n")), "{text}");
    assert!(
        text.contains("route payouts (per client, totals in the local store): max_per_request 500.00, max_per_day 1000.00, max_count_per_day -"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("127.0.0.1"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[..4], ["127.0.0.1", "INR", "1000.00", "3"], "{text}");
    assert_eq!(cols.last(), Some(&"100.0%"), "{text}");
    let out = std::process::Command::new(signgate_bin())
        .args(["guard", "status", "--route", "kwikpaisa", "--config"])
        .arg(fx.config_path())
        .env("SIGNGATE__ADMIN__ADDR", gw.admin.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_amount_guard"));
}

/// `YYYY-MM-DD` of a Unix time, computed here (not with the gateway's code).
fn signgate_day_label(unix: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The day is the UTC date of the gateway's clock: the real binary under
/// libfaketime, 20 s before midnight, spends its day; moved 20 s past
/// midnight, it has a new one (yesterday's total is left behind).
#[tokio::test]
async fn a_new_utc_day_starts_new_totals() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: run ./scripts/test.sh (installs Debian's faketime) or apt-get install faketime"
    );
    // The stand-in checks signed timestamps against the real clock: allow
    // the fake one to be a day off.
    let fx = Fixture::with_provider_tolerance(Duration::from_secs(2 * 86_400)).await;
    let offset_file = fx.path("faketime.rc");
    let midnight = (unix_now() / 86_400 + 1) * 86_400;
    let set_fake = |at: u64| replace_file(&offset_file, format!("+{}\n", at as i64 - unix_now() as i64));
    set_fake(midnight - 20);
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let toml = with_payouts(
        &fx,
        AmountGuard::on("/amount").max_per_day("100.00").max_count_per_day(1),
    );
    let gw = fx.process(&toml, &env);
    let c = TestClient::new();
    let before = signgate_day_label(midnight - 20);
    let after = signgate_day_label(midnight + 20);

    assert_eq!(
        c.post(&gw.url("/payouts/pay"), &payout("\"100.00\"", "INR"))
            .await
            .status,
        200
    );
    let r = c.post(&gw.url("/payouts/pay"), &payout("\"1.00\"", "INR")).await;
    assert_eq!(r.status, 403);
    assert!(message(&r).contains(&format!("for {before} (UTC)")), "{}", message(&r));
    let st = status(gw.admin, None).await;
    assert_eq!(st["day"], before.as_str());
    assert_eq!(used(&st, "payouts", "127.0.0.1", ""), ("100.00".into(), 1));

    set_fake(midnight + 20);
    let r = c.post(&gw.url("/payouts/pay"), &payout("\"100.00\"", "INR")).await;
    assert_eq!(r.status, 200, "a new day: {:?}", r.body);
    let st = status(gw.admin, None).await;
    assert_eq!(st["day"], after.as_str());
    assert_eq!(used(&st, "payouts", "127.0.0.1", ""), ("100.00".into(), 1));
    assert_eq!(
        c.post(&gw.url("/payouts/pay"), &payout("\"1.00\"", "INR")).await.status,
        403
    );
    assert_eq!(provider_got(&fx, "/pay").await, 2);
}

// ------------------------------------------------------------------ fleet

/// Two real gateways sharing one real `redis-server`: one day's cap holds
/// across both under concurrent payouts; a refusal is released fleet-wide;
/// with Redis gone the guard fails closed.
#[tokio::test]
async fn two_instances_share_one_days_cap_through_redis() {
    let mut redis = RedisServer::start();
    let fx = Fixture::new().await;
    let gws = fx
        .fleet_processes(2, &redis.url(), |_| {
            with_payouts(&fx, AmountGuard::on("/amount").max_per_day("100.00"))
        })
        .await;
    // A provider refusal on one instance is released for both.
    let r = TestClient::new()
        .post(&gws[0].url("/payouts/status/502"), &payout("\"100.00\"", "INR"))
        .await;
    assert_eq!(r.status, 502);

    let mut sends = Vec::new();
    for i in 0..20 {
        let url = gws[i % 2].url("/payouts/pay");
        sends.push(tokio::spawn(async move {
            TestClient::new().post(&url, &payout("\"10.00\"", "INR")).await
        }));
    }
    let (mut ok, mut over) = (0, 0);
    for s in sends {
        let r = s.await.unwrap();
        match (r.status.as_u16(), r.code().as_str()) {
            (200, _) => ok += 1,
            (403, "amount_limit_exceeded") => over += 1,
            other => panic!("unexpected {other:?}: {:?}", r.body),
        }
    }
    assert_eq!((ok, over), (10, 10), "exactly the day's cap across both instances");
    assert_eq!(provider_got(&fx, "/pay").await, 10);
    for gw in &gws {
        let st = status(gw.admin, None).await;
        assert_eq!(used(&st, "payouts", "127.0.0.1", ""), ("100.00".into(), 10), "{st}");
        assert_eq!(st["routes"][0]["source"], "redis");
        assert_eq!(
            gw.metric(
                "signgate_amount_guard_day_used_ratio",
                &[("route", "payouts"), ("cap", "amount")]
            )
            .await,
            1.0
        );
    }
    let day = signgate_day_label(unix_now());
    let key = format!("{{signgate:amt:payouts}}:d:{day}:u2");
    assert_eq!(redis.cli(&["HGET", &key, "a::127.0.0.1"]), "10000");
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!(
        (86_400..=2 * 86_400).contains(&ttl),
        "the day's hash expires in ~2 days: {ttl}"
    );

    // Redis gone: refused (fail closed), nothing sent.
    redis.kill();
    let r = TestClient::new()
        .post(&gws[1].url("/payouts/pay"), &payout("\"0.00\"", "INR"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "amount_guard_unavailable"),
        "{:?}",
        r.body
    );
    assert!(message(&r).contains("nothing was sent"));
    assert_eq!(provider_got(&fx, "/pay").await, 10);
    let m = gws[1].metrics().await;
    assert!(guard_metric(&m, "unavailable") >= 1.0, "{m}");
    assert!(metric(&m, "signgate_fleet_fallback_total", &[("what", "amount_refused")]) >= 1.0);
    let r = TestClient::new().get(&gws[1].admin_url("/guard/status")).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "amount_guard_unavailable")
    );
}

/// A reservation whose answer never reaches its request is released once it
/// lands: the client leaves while the script is on its way to a slow Redis
/// (a fault proxy delays every byte), and a script that outlives
/// `timeout_ms` (503, fail closed). Nothing stays counted, no token is left
/// holding an amount.
#[tokio::test]
async fn a_reservation_cut_short_on_its_way_to_redis_is_released() {
    use crate::support::redis::FaultProxy;
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let fx = Fixture::new().await;
    // No cooldown check: the reservation is the request's first Redis call.
    let toml = with_payouts(&fx, AmountGuard::on("/amount").max_per_day("100.00"))
        .edit_route("payouts", |r| r.honor_retry_after(false))
        .fleet("redis_url", proxy.url())
        .fleet("timeout_ms", 500);
    let gw = fx.process(&toml, &[]);
    let up = |want: f64| {
        let gw = &gw;
        async move {
            eventually(Duration::from_secs(10), || async {
                gw.metric("signgate_fleet_redis_up", &[]).await == want
            })
            .await
        }
    };
    assert!(up(1.0).await, "{}", gw.log_text());
    // Reservation tokens still holding an amount (a release leaves `x`).
    let tokens = || {
        let keys = redis.cli(&["--scan", "--pattern", "{signgate:amt:payouts}:t:*"]);
        keys.lines()
            .filter(|k| redis.cli(&["GET", k]) != "x")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let day = format!("{{signgate:amt:payouts}}:d:{}:u2", signgate_day_label(unix_now()));
    let count = || redis.cli(&["HGET", &day, "n::127.0.0.1"]);
    // Scripts Redis has run: a reservation and its settlement are one each.
    let scripts_run = || {
        let info = redis.cli(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    // A payout that passes: its token is consumed by the settlement.
    assert_eq!(
        TestClient::new()
            .post(&gw.url("/payouts/pay"), &payout("\"1.00\"", "INR"))
            .await
            .status,
        200
    );
    assert_eq!((count(), tokens()), ("1".to_string(), String::new()));

    // 1. The client leaves while the script is on its way (200 ms each way).
    proxy.set_delay(Duration::from_millis(200));
    let ran = scripts_run();
    let conn = raw_post(gw.addr, "/payouts/pay", "cut-on-the-way", &payout("\"5.00\"", "INR")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(conn);
    let rec = audit_of(&fx, "cut-on-the-way").await;
    assert_eq!(rec["decision"], "abandoned", "{rec}");
    assert_eq!(rec["amount"], "5.00", "it reached the amount guard: {rec}");
    // Both reached Redis (the reservation, then its release), in that order.
    assert!(
        eventually(Duration::from_secs(5), || async { scripts_run() >= ran + 2 }).await,
        "the reservation and its release ran: {} scripts",
        scripts_run() - ran
    );
    assert!(
        count() == "1" && tokens().is_empty(),
        "the reservation that landed after its client left is released: n={} tokens={}",
        count(),
        tokens()
    );

    // 2. Slower than timeout_ms: refused (fail closed); the script lands
    // anyway, and is released once Redis answers again.
    proxy.set_delay(Duration::from_millis(800));
    let ran = scripts_run();
    let r = TestClient::new()
        .post(&gw.url("/payouts/pay"), &payout("\"5.00\"", "INR"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "amount_guard_unavailable")
    );
    proxy.set_delay(Duration::ZERO);
    assert!(up(1.0).await, "{}", gw.log_text());
    assert!(
        eventually(Duration::from_secs(10), || async { scripts_run() >= ran + 2 }).await,
        "the reservation and its release ran: {} scripts",
        scripts_run() - ran
    );
    // The count of scripts says the reservation landed; it may also count a
    // settlement of step 1 tried again after its answer came too late (a
    // no-op on a released token): the release of this one is waited for.
    assert!(
        eventually(Duration::from_secs(5), || async {
            count() == "1" && tokens().is_empty()
        })
        .await,
        "the timed-out reservation is released: n={} tokens={}",
        count(),
        tokens()
    );
    assert_eq!(provider_got(&fx, "/pay").await, 1, "only the first was sent");
    // The day still has its room: 99.00 more fit, 99.01 do not.
    assert_eq!(
        TestClient::new()
            .post(&gw.url("/payouts/pay"), &payout("\"99.00\"", "INR"))
            .await
            .status,
        200
    );
    assert_eq!(
        TestClient::new()
            .post(&gw.url("/payouts/pay"), &payout("\"0.01\"", "INR"))
            .await
            .status,
        403
    );
}

/// `signgate explain` reads the amount as the gateway does and applies the
/// per-request caps; the day's totals stay with the running gateway.
#[tokio::test]
async fn explain_reads_the_amount_and_the_per_request_cap() {
    let fx = Fixture::new().await;
    let config = fx.write_config(&with_payouts(&fx, caps()));
    let explain = |body: &str| {
        std::process::Command::new(signgate_bin())
            .args(["explain", "--config"])
            .arg(&config)
            .args(["--route", "payouts", "--path", "/payouts/pay", "--body", body])
            .output()
            .unwrap()
    };
    let ok = explain(&payout("\"105.5\"", "inr"));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}{}", String::from_utf8_lossy(&ok.stderr));
    let line = text
        .lines()
        .find(|l| l.starts_with("amount:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("105.50 INR at /amount"), "{line}");
    for (body, answer) in [
        (
            payout("\"500.01\"", "INR"),
            "403 amount_limit_exceeded: amount 500.01 INR is over this route's max_per_request (500.00 INR)",
        ),
        (
            payout("1e3", "INR"),
            "400 invalid_amount: invalid amount at /amount: an exponent form",
        ),
    ] {
        let out = explain(&body);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains(answer), "{text}");
        assert!(text.contains("sent:              nothing"), "{text}");
    }
    assert!(fx.provider.standin.records().await.is_empty());
}
