//! Money safety, end to end on the real binary: a payment whose outcome is
//! unknown is never sent twice, a client that goes away never leaves a
//! forwarded payment unaudited, an operator releases a held reference
//! through the authenticated admin API, duplicate references are per
//! endpoint and keep their JSON text, webhook event keys cannot be forged
//! into a collision, and a refusal answers an `Expect: 100-continue`
//! request without inviting its body.
//!
//! Each test is a finding reproduced on an older build (evidence in the
//! project's baseline); the gateway runs as a process (`GatewayProcess`), so
//! `SIGNGATE_TEST_BINARY=/path/to/old/signgate cargo test --test integration
//! money::` shows them failing there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::*;

/// The fixture's configuration with the duplicate guard on `/order_id` and
/// upstream requests given `timeout_ms` for the response head.
fn guarded(fx: &Fixture, timeout_ms: u64) -> GatewayToml {
    fx.config()
        .egress("request_timeout_ms", timeout_ms)
        .edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"))
}

/// The canonical bodies the provider received, in order.
async fn provider_bodies(fx: &Fixture) -> Vec<String> {
    fx.provider
        .standin
        .records()
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

/// How many requests carrying `body` (canonical) the provider received.
async fn provider_got(fx: &Fixture, body: &str) -> usize {
    provider_bodies(fx).await.iter().filter(|b| *b == body).count()
}

/// How many requests with this `x-request-id` the provider received.
async fn provider_got_rid(fx: &Fixture, rid: &str) -> usize {
    fx.provider
        .standin
        .records()
        .await
        .iter()
        .filter(|r| r.headers.get("x-request-id").is_some_and(|v| v == rid))
        .count()
}

/// Every JSON line of the audit log so far.
fn audit_lines(fx: &Fixture) -> Vec<Value> {
    std::fs::read_to_string(fx.audit_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}")))
        .collect()
}

/// The audit records of `rid`, once there is at least one (within 10 s).
async fn audit_records_of(fx: &Fixture, rid: &str) -> Vec<Value> {
    let of = || -> Vec<Value> { audit_lines(fx).into_iter().filter(|l| l["request_id"] == rid).collect() };
    let found = eventually(Duration::from_secs(10), || async { !of().is_empty() }).await;
    assert!(found, "no audit record for {rid}:\n{:#?}", audit_lines(fx));
    of()
}

fn message(r: &Reply) -> String {
    r.json()["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// Stop the gateway cleanly (the head file is written) and verify the log
/// with the real `signgate audit verify`: a complete chain of every line.
async fn stop_and_verify(mut gw: GatewayProcess, fx: &Fixture) {
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
    let out = std::process::Command::new(signgate_bin())
        .args(["audit", "verify"])
        .arg(fx.audit_path())
        .output()
        .unwrap();
    let n = audit_lines(fx).len();
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()),
        (Some(0), format!("ok {n} records\n")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------ raw HTTP/1.1

/// An HTTP/1.1 POST of `body` on a connection of its own from `src`,
/// written whole; the connection is left open.
async fn raw_post(src: &str, addr: SocketAddr, path: &str, rid: &str, body: &str) -> TcpStream {
    let mut s = connect_from(src, addr).await;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         x-request-id: {rid}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// One response read off a raw connection: the interim (1xx) statuses seen
/// before it, its status, head and body.
#[derive(Debug)]
struct RawResponse {
    interim: Vec<u16>,
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

/// A complete response at the start of `buf` (interim responses first), or
/// `None` when more bytes are needed.
fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let mut at = 0;
    let mut interim = Vec::new();
    loop {
        let rest = &buf[at..];
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        if (100..200).contains(&status) {
            interim.push(status);
            at += end;
            continue;
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let body = rest.get(end..end + len)?.to_vec();
        return Some(RawResponse {
            interim,
            status,
            head,
            body,
        });
    }
}

/// Read one response off `s` (within 10 s), then whatever else the gateway
/// writes for `grace` more (or until it closes): (the response, every byte read).
async fn read_response(s: &mut TcpStream, grace: Duration) -> (RawResponse, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let resp = loop {
        if let Some(r) = parse_response(&buf) {
            break r;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no complete response ({other:?}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    };
    let (Ok(more) | Err(more)) = read_until_closed(s, grace).await;
    buf.extend_from_slice(&more);
    (resp, buf)
}

// ------------------------------------------------------------------ 1. unknown outcome

/// Old builds released the reference on a timeout: each retry went out again
/// (504, 504, 504; the provider, which did answer 200 each time, got three).
#[tokio::test]
async fn a_timed_out_payment_stays_claimed_and_reaches_the_provider_once() {
    let fx = Fixture::new().await;
    let gw = fx.process(&guarded(&fx, 1000), &[]);
    let body = r#"{"amount":"100","order_id":"ORD-UNKNOWN-1"}"#;
    let url = gw.url("/kwikpaisa/slow/1500");
    let c = TestClient::new();
    let started = Instant::now();
    let first = c.post(&url, body).await;
    assert_eq!(
        (first.status.as_u16(), first.code().as_str()),
        (504, "upstream_timeout")
    );
    for _ in 0..2 {
        let r = c.post(&url, body).await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
        assert!(message(&r).contains("outcome is unknown"), "{}", message(&r));
    }
    // The stand-in records a request on receipt and answers it 200 after
    // 1.5 s: past that, a second copy would have shown.
    assert!(eventually(Duration::from_secs(5), || async { provider_got(&fx, body).await >= 1 }).await);
    tokio::time::sleep(Duration::from_millis(1800).saturating_sub(started.elapsed())).await;
    assert_eq!(provider_got(&fx, body).await, 1, "{:?}", provider_bodies(&fx).await);
}

/// Old builds released the claim when the client's connection dropped: the
/// retry was sent again at once.
#[tokio::test]
async fn a_client_that_drops_the_connection_mid_payment_cannot_resend_it() {
    let fx = Fixture::new().await;
    let gw = fx.process(&guarded(&fx, 1000), &[]);
    let body = r#"{"amount":"100","order_id":"ORD-UNKNOWN-2"}"#;
    let url = gw.url("/kwikpaisa/slow/1500");
    let started = Instant::now();
    let conn = raw_post("127.0.0.1", gw.addr, "/kwikpaisa/slow/1500", "money-drop-1", body).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            provider_got_rid(&fx, "money-drop-1").await == 1
        })
        .await,
        "the first attempt reached the provider"
    );
    drop(conn);
    let c = TestClient::new();
    // Still in flight upstream: refused.
    let r = c.post(&url, body).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
    // Once the exchange has timed out (its record is written then), the
    // reference is held as unknown.
    let recs = audit_records_of(&fx, "money-drop-1").await;
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["reason"], "client_gone", "{}", recs[0]);
    assert_eq!(recs[0]["decision"], "allowed", "it was signed and sent: {}", recs[0]);
    assert!(recs[0].get("upstream_status").is_none_or(Value::is_null), "{}", recs[0]);
    // ... and the record says how the exchange ended.
    assert_eq!(recs[0]["upstream_error"], "upstream_timeout", "{}", recs[0]);
    // The upstream timed out, with or without its client: counted as such.
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_upstream_errors_total",
            &[("route", "kwikpaisa"), ("kind", "timeout")]
        ),
        1.0,
        "{m}"
    );
    let r = c.post(&url, body).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
    assert!(message(&r).contains("outcome is unknown"), "{}", message(&r));
    tokio::time::sleep(Duration::from_millis(1800).saturating_sub(started.elapsed())).await;
    assert_eq!(provider_got(&fx, body).await, 1, "{:?}", provider_bodies(&fx).await);
}

// ------------------------------------------------------------------ 2. client gone

/// How a test client walks away from a request in flight.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// HTTP/1.1: close the TCP connection.
    Http1Close,
    /// HTTP/2 (h2c, prior knowledge): reset the stream (RST_STREAM CANCEL)
    /// by dropping the response future; the connection stays open.
    Http2Reset,
}

/// The provider answers after 1.5 s (within the request timeout); the
/// client leaves at 0.5 s. Old builds wrote no audit record, counted
/// nothing and leaked `signgate_inflight_requests` for good.
async fn a_client_gone_after_the_forward_is_audited(leave: Leave) {
    let fx = Fixture::new().await;
    let gw = fx.process(&guarded(&fx, 5000), &[]);
    let rid = format!("money-gone-{leave:?}");
    let body = r#"{"amount":"100","order_id":"ORD-GONE"}"#;
    let path = "/kwikpaisa/slow/1500";
    let sent = [("route", "kwikpaisa"), ("upstream", "sent")];
    let gone_before = gw.metric("signgate_client_gone_total", &sent).await;

    let started = Instant::now();
    let h2 = Arc::new(TestClient::h2c());
    let leaving: Box<dyn FnOnce()> = match leave {
        Leave::Http1Close => {
            let conn = raw_post("127.0.0.1", gw.addr, path, &rid, body).await;
            Box::new(move || drop(conn))
        }
        Leave::Http2Reset => {
            let (client, url, rid) = (h2.clone(), gw.url(path), rid.clone());
            let task = tokio::spawn(async move {
                client
                    .send(
                        Method::POST,
                        &url,
                        &[("content-type", "application/json"), ("x-request-id", &rid)],
                        body,
                    )
                    .await
            });
            Box::new(move || task.abort())
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            provider_got_rid(&fx, &rid).await == 1
        })
        .await,
        "the request reached the provider"
    );
    tokio::time::sleep(Duration::from_millis(500).saturating_sub(started.elapsed())).await;
    leaving();

    // The exchange completes without the client (at 1.5 s) and is audited
    // once, with the provider's status.
    let recs = audit_records_of(&fx, &rid).await;
    if let Leave::Http2Reset = leave {
        // Only the stream went: its connection is still open.
        assert_eq!(gw.metric("signgate_open_connections", &[]).await, 1.0);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recs_later = audit_records_of(&fx, &rid).await;
    assert_eq!((recs.len(), recs_later.len()), (1, 1), "{recs_later:#?}");
    let rec = &recs[0];
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "written when the exchange ended"
    );
    assert_eq!(rec["upstream_status"], 200, "{rec}");
    assert_eq!(rec["reason"], "client_gone", "{rec}");
    assert_eq!(rec["decision"], "allowed", "{rec}");
    assert_eq!(rec["status"], 499, "{rec}");
    assert_eq!(rec["duplicate_key"], r#""ORD-GONE""#, "{rec}");
    assert_eq!(provider_got_rid(&fx, &rid).await, 1);
    assert_eq!(gw.metric("signgate_client_gone_total", &sent).await, gone_before + 1.0);
    let settled = eventually(Duration::from_secs(5), || async {
        gw.metric("signgate_inflight_requests", &[]).await == 0.0
    })
    .await;
    assert!(
        settled,
        "signgate_inflight_requests = {}",
        gw.metric("signgate_inflight_requests", &[]).await
    );

    // The provider's 2xx committed the reference: the client's retry is
    // refused, not paid out again.
    let r = TestClient::new().post(&gw.url(path), body).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
    assert_eq!(provider_got(&fx, body).await, 1);
    drop(h2);
    stop_and_verify(gw, &fx).await;
}

#[tokio::test]
async fn an_http1_client_gone_after_the_forward_is_audited_with_the_providers_status() {
    a_client_gone_after_the_forward_is_audited(Leave::Http1Close).await;
}

#[tokio::test]
async fn an_http2_stream_reset_after_the_forward_is_audited_with_the_providers_status() {
    a_client_gone_after_the_forward_is_audited(Leave::Http2Reset).await;
}

/// A client that goes away while its request waits for a `max_inflight`
/// slot: nothing was signed or sent, the record says `abandoned`, and the
/// reference is free again. Old builds wrote no record at all.
#[tokio::test]
async fn a_client_gone_before_anything_was_sent_is_recorded_as_abandoned() {
    let fx = Fixture::new().await;
    let toml = guarded(&fx, 5000).edit_route("kwikpaisa", |r| r.max_inflight(1).queue_timeout_ms(5000));
    let gw = fx.process(&toml, &[]);
    let not_sent = [("route", "kwikpaisa"), ("upstream", "not_sent")];
    let gone_before = gw.metric("signgate_client_gone_total", &not_sent).await;

    // One payment takes the route's only slot for 1.5 s...
    let url = gw.url("/kwikpaisa/slow/1500");
    let occupant = tokio::spawn(async move { TestClient::new().post(&url, r#"{"order_id":"ORD-SLOT"}"#).await.status });
    assert!(
        eventually(Duration::from_secs(5), || async {
            provider_got(&fx, r#"{"order_id":"ORD-SLOT"}"#).await == 1
        })
        .await
    );
    // ...so the next one waits in the queue, and its client leaves.
    let body = r#"{"order_id":"ORD-QUEUED"}"#;
    let path = "/kwikpaisa/api/v3/pg/order/create";
    let conn = raw_post("127.0.0.1", gw.addr, path, "money-queued", body).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);

    let recs = audit_records_of(&fx, "money-queued").await;
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let rec = &recs[0];
    assert_eq!(rec["decision"], "abandoned", "{rec}");
    assert_eq!(rec["reason"], "client_gone", "{rec}");
    assert_eq!(rec["status"], 499, "{rec}");
    for unset in ["upstream_status", "signature_fp"] {
        assert!(rec.get(unset).is_none_or(Value::is_null), "{unset}: {rec}");
    }
    assert_eq!(
        gw.metric("signgate_client_gone_total", &not_sent).await,
        gone_before + 1.0
    );
    assert_eq!(occupant.await.unwrap(), 200);
    assert_eq!(provider_got_rid(&fx, "money-queued").await, 0, "nothing was sent");
    assert_eq!(provider_got(&fx, body).await, 0);
    // Nothing went out, so the reference is free.
    let r = TestClient::new().post(&gw.url(path), body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(provider_got(&fx, body).await, 1);
    let settled = eventually(Duration::from_secs(5), || async {
        gw.metric("signgate_inflight_requests", &[]).await == 0.0
    })
    .await;
    assert!(settled, "signgate_inflight_requests stays raised");
    stop_and_verify(gw, &fx).await;
}

// ------------------------------------------------------------------ 3. guard release

const ADMIN_TOKEN: &str = "money-admin-token-0123456789";

/// Held as unknown, released by `signgate guard release` through the
/// token-guarded admin API (audited), then sent once more and committed.
/// Old builds had no admin token (`admin.token_file` was an unknown key)
/// and no release.
#[tokio::test]
async fn an_operator_releases_an_unknown_outcome_through_the_authenticated_admin_api() {
    let fx = Fixture::new().await;
    let token_file = fx.path("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let toml = guarded(&fx, 1000).admin("token_file", &token_file);
    let gw = fx.process(&toml, &[]);
    let body = r#"{"amount":"100","order_id":"ORD-RELEASE"}"#;
    let url = gw.url("/kwikpaisa/slow/1500");
    let c = TestClient::new();
    assert_eq!(c.post(&url, body).await.status, 504);
    let r = c.post(&url, body).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
    assert!(message(&r).contains("outcome is unknown"), "{}", message(&r));

    // The admin API: no token, a wrong token → 401; the open endpoints stay open.
    let unauthorized = |m: &str| metric(m, "signgate_admin_unauthorized_total", &[]);
    let before = unauthorized(&gw.metrics().await);
    let release = serde_json::json!({"route": "kwikpaisa", "reference": "\"ORD-RELEASE\""}).to_string();
    let basic = format!("Basic {ADMIN_TOKEN}");
    for auth in [None, Some("Bearer money-wrong-token-0123456789"), Some(basic.as_str())] {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(auth.map(|a| ("authorization", a)));
        let r = c
            .send(Method::POST, &gw.admin_url("/guard/release"), &headers, release.clone())
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (401, "unauthorized"),
            "{auth:?}"
        );
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(c.get(&gw.admin_url(open)).await.status, 200, "{open}");
    }
    assert_eq!(unauthorized(&gw.metrics().await), before + 3.0);
    assert_eq!(c.post(&url, body).await.status, 409, "the 401s released nothing");

    // A longer request timeout, so the stand-in's 1.5 s answer comes in
    // time; the guard's state survives the reload.
    fx.write_config(&toml.clone().egress("request_timeout_ms", 5000));
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", Duration::from_secs(10)).await;
    assert_eq!(c.post(&url, body).await.status, 409, "still held after the reload");

    // The operator releases it (the CLI reads the admin address and token file from the config).
    let out = std::process::Command::new(signgate_bin())
        .args(["guard", "release", "kwikpaisa", "\"ORD-RELEASE\"", "--config"])
        .arg(fx.config_path())
        .env("SIGNGATE__ADMIN__ADDR", gw.admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "released 1 claim(s) on \"ORD-RELEASE\" in route kwikpaisa\n"
    );
    assert_eq!(
        unauthorized(&gw.metrics().await),
        before + 3.0,
        "the CLI sent the token"
    );
    // The release's record is queued before the answer and written by the
    // audit writer soon after: wait for it.
    let released_records = || -> Vec<Value> {
        audit_lines(&fx)
            .into_iter()
            .filter(|l| l["decision"] == "released")
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || async { !released_records().is_empty() }).await);
    let released = released_records();
    assert_eq!(released.len(), 1, "{released:#?}");
    assert_eq!(released[0]["reason"], "manual_release");
    assert_eq!(released[0]["route"], "kwikpaisa");
    assert_eq!(released[0]["duplicate_key"], "\"ORD-RELEASE\"");
    assert!(
        released[0]["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{}",
        released[0]
    );

    // The next attempt goes through, once, and commits the reference.
    let r = c.post(&url, body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(c.post(&url, body).await.status, 409);
    assert_eq!(
        provider_got(&fx, body).await,
        2,
        "the timed-out one and the released retry"
    );
    stop_and_verify(gw, &fx).await;
}

/// The admin API changes state and returns payment events: off loopback it
/// must be locked. Old builds accepted such a file.
#[test]
fn a_non_loopback_admin_address_without_a_token_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let base = GatewayToml::new()
        .listener("addr", "127.0.0.1:0")
        .allow(["127.0.0.0/8"])
        .audit_path(&dir.path().join("audit/audit.jsonl"))
        .state_dir(&dir.path().join("state"));
    for addr in ["0.0.0.0:9090", "10.20.0.10:9090", "[::]:9090"] {
        let err = base
            .clone()
            .admin("addr", addr)
            .to_config()
            .expect_err(addr)
            .to_string();
        assert!(err.contains("admin.token_file"), "{addr}: {err}");
        assert!(
            base.clone()
                .admin("addr", addr)
                .admin("token_file", &token_file)
                .to_config()
                .is_ok(),
            "{addr} with a token file"
        );
    }
    for addr in ["127.0.0.1:9090", "[::1]:9090"] {
        assert!(base.clone().admin("addr", addr).to_config().is_ok(), "{addr}");
    }
    let config = dir.path().join("gateway.toml");
    replace_file(&config, base.clone().admin("addr", "0.0.0.0:9090").render());
    let out = std::process::Command::new(signgate_bin())
        .args(["check", "--config"])
        .arg(&config)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("admin.token_file"), "{err}");
}

// ------------------------------------------------------------------ 4, 5. references

/// Old builds keyed the guard on the reference alone: a status query locked
/// the order's creation (409), and the reverse.
#[tokio::test]
async fn duplicate_references_are_per_endpoint() {
    let fx = Fixture::new().await;
    let gw = fx.process(&guarded(&fx, 5000), &[]);
    let c = TestClient::new();
    let status = gw.url("/kwikpaisa/api/v3/pg/order/status");
    let create = gw.url("/kwikpaisa/api/v3/pg/order/create");
    let (s1, s2) = (r#"{"order_id":"S1"}"#, r#"{"order_id":"S2"}"#);
    for (first, then, body) in [(&status, &create, s1), (&create, &status, s2)] {
        assert_eq!(c.post(first, body).await.status, 200, "{first}");
        assert_eq!(c.post(then, body).await.status, 200, "{then} after {first}");
        assert_eq!(provider_got(&fx, body).await, 2);
    }
    for (url, body) in [(&status, s1), (&create, s1), (&create, s2), (&status, s2)] {
        let r = c.post(url, body).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (409, "duplicate_request"),
            "{url}"
        );
    }
    assert_eq!(provider_bodies(&fx).await.len(), 4);
}

/// One endpoint spelled differently (a trailing slash, a percent-encoded
/// letter, a `;` parameter, other letter case) is the same endpoint to the
/// frameworks behind a provider, and was one claim before the guard became
/// per endpoint: a retry spelled differently must not pay out twice.
#[tokio::test]
async fn one_endpoint_spelled_differently_is_one_claim() {
    let fx = Fixture::new().await;
    let gw = fx.process(&guarded(&fx, 5000), &[]);
    let c = TestClient::new();
    let body = r#"{"order_id":"ORD-SPELLED"}"#;
    assert_eq!(
        c.post(&gw.url("/kwikpaisa/api/v3/pg/order/create"), body).await.status,
        200
    );
    for path in [
        "/kwikpaisa/api/v3/pg/order/create/",
        "/kwikpaisa/api/v3/pg/order/cr%65ate",
        "/kwikpaisa/api/v3/pg/order/cr%65ate/",
        "/kwikpaisa/api/v3/pg/order/CREATE",
        "/kwikpaisa/api/v3/pg/order/create;v=1",
        "/kwikpaisa/api/v3/pg/order;x/create",
        "/kwikpaisa/api/v3/pg/order/create?retry=1",
    ] {
        let r = c.post(&gw.url(path), body).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (409, "duplicate_request"),
            "{path}: {:?}",
            r.body
        );
    }
    let seen: Vec<String> = fx
        .provider
        .standin
        .records()
        .await
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(seen, ["/api/v3/pg/order/create"]);
    // Another endpoint is still another claim.
    assert_eq!(
        c.post(&gw.url("/kwikpaisa/api/v3/pg/order/status"), body).await.status,
        200
    );
}

/// Old builds read numeric references as floats: `…0001` and `…0002` were
/// one order, and the second was refused.
#[tokio::test]
async fn large_numeric_references_keep_their_digits() {
    let fx = Fixture::new().await;
    let gw = fx.process(&guarded(&fx, 5000), &[]);
    let c = TestClient::new();
    let url = gw.url("/kwikpaisa/api/v3/pg/order/create");
    let one = r#"{"order_id":100000000000000000000001}"#;
    let two = r#"{"order_id":100000000000000000000002}"#;
    assert_eq!(c.post(&url, one).await.status, 200);
    assert_eq!(c.post(&url, two).await.status, 200);
    let r = c.post(&url, one).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
    assert_eq!(provider_bodies(&fx).await, [one, two], "sent once each, digits intact");
    // The audit records carry the reference as its JSON text.
    assert!(eventually(Duration::from_secs(5), || async { audit_lines(&fx).len() == 3 }).await);
    let seen: Vec<(Value, Value)> = audit_lines(&fx)
        .into_iter()
        .map(|l| (l["duplicate_key"].clone(), l["status"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("100000000000000000000001".into(), 200.into()),
            ("100000000000000000000002".into(), 200.into()),
            ("100000000000000000000001".into(), 409.into()),
        ]
    );
}

/// One order id spelled as different JSON numbers (or as a string holding
/// the number) is one order to a provider that parses numbers: a retry
/// spelled differently must not pay out twice (an adversarial review sent
/// seven payouts for `777`). A string a number parser would not take stays
/// its own reference.
#[tokio::test]
async fn one_reference_spelled_differently_is_one_claim() {
    let fx = Fixture::new().await;
    let gw = fx.process(&guarded(&fx, 5000), &[]);
    let c = TestClient::new();
    let url = gw.url("/kwikpaisa/api/v3/pg/order/create");
    assert_eq!(c.post(&url, r#"{"order_id":777}"#).await.status, 200);
    for spelled in ["7.77e2", "777.0", "7.770E+2", "777e0", "0.777e3", r#""777""#] {
        let r = c.post(&url, &format!(r#"{{"order_id":{spelled}}}"#)).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (409, "duplicate_request"),
            "{spelled}: {:?}",
            r.body
        );
    }
    assert_eq!(c.post(&url, r#"{"order_id":"00777"}"#).await.status, 200);
    assert_eq!(
        provider_bodies(&fx).await,
        [r#"{"order_id":777}"#, r#"{"order_id":"00777"}"#]
    );
}

// ------------------------------------------------------------------ 6. webhook keys

/// Pairs (and a triple) of different events that old builds keyed alike
/// (`|`-joined text, `-` for absent, strings and numbers alike, a constant
/// for events without any of the fields): each must be accepted and
/// delivered. The same event twice is still delivered once.
#[tokio::test]
async fn different_webhook_events_never_share_a_key() {
    let app = App::start_on(0).await;
    let fx = Fixture::new().await;
    let forward = format!("http://127.0.0.1:{}/payments/events", app.addr.port());
    let gw = fx.process(&fx.config().webhook(Webhook::kwikpaisa(&forward)), &[]);
    let post = |body: &str| {
        let ts = unix_now().to_string();
        let sig = provider_signature(&fx.provider.secret, body.as_bytes(), &ts);
        let url = gw.url("/webhooks/kwikpaisa");
        let body = body.to_string();
        async move {
            let r = TestClient::new()
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("x-timestamp", &ts),
                        ("x-signature", &sig),
                    ],
                    body,
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.json()["status"].as_str().unwrap().to_string()
        }
    };
    let groups: [&[&str]; 4] = [
        &[
            r#"{"event":"a|7","data":{"order_id":"x"}}"#,
            r#"{"event":"a","data":{"order_id":"7|x"}}"#,
        ],
        &[
            r#"{"event":"e","data":{"order_id":"5"}}"#,
            r#"{"event":"e","data":{"order_id":5}}"#,
        ],
        &[
            r#"{"event":"d","data":{"order_id":"o","status":null}}"#,
            r#"{"event":"d","data":{"order_id":"o"}}"#,
            r#"{"event":"d","data":{"order_id":"o","status":"-"}}"#,
        ],
        &[r#"{"kind":"k1","payload":1}"#, r#"{"kind":"k2","payload":2}"#],
    ];
    let events: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    for body in &events {
        assert_eq!(post(body).await, "accepted", "{body}");
    }
    // The same event again, with or without the key fields: a duplicate.
    for body in [events[0], events[3], events[5], events[7]] {
        assert_eq!(post(body).await, "duplicate", "{body}");
    }
    let n = events.len();
    assert!(
        eventually(Duration::from_secs(10), || async { app.count().await >= n }).await,
        "delivered {} of {n}\n{}",
        app.count().await,
        gw.log_text()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut delivered: Vec<String> = app
        .received
        .lock()
        .await
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    delivered.sort();
    let mut expected: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    expected.sort();
    assert_eq!(delivered, expected, "each event delivered exactly once");
}

// ------------------------------------------------------------------ 7. Expect: 100-continue

/// A request refused from its head never gets `100 Continue`: the client
/// keeps its body and reads the final status. (A regression guard for the
/// linger, which reads the unread body after the answer: read before it, a
/// body with `Expect` would make hyper send `100 Continue`.)
#[tokio::test]
async fn refusals_from_the_head_answer_expect_100_continue_with_the_final_status() {
    let fx = Fixture::new().await;
    let gw = fx.process(&fx.config().allow(["127.0.0.1/32"]), &[]);
    let cases = [
        (
            "127.0.0.2",
            "POST",
            "/kwikpaisa/api/v3/pg/order/create",
            65536,
            403,
            "ip_not_allowed",
        ),
        ("127.0.0.1", "POST", "/nowhere/x", 65536, 404, "no_route"),
        (
            "127.0.0.1",
            "PUT",
            "/kwikpaisa/api/v3/pg/order/create",
            65536,
            405,
            "method_not_allowed",
        ),
        (
            "127.0.0.1",
            "POST",
            "/kwikpaisa/api/v3/pg/order/create",
            8 << 20,
            413,
            "body_too_large",
        ),
    ];
    for (src, method, path, len, status, code) in cases {
        let mut s = connect_from(src, gw.addr).await;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // No body is sent; whatever comes back within a second more is read.
        let (resp, all) = read_response(&mut s, Duration::from_millis(1000)).await;
        assert_eq!(resp.interim, Vec::<u16>::new(), "{method} {path}: {}", resp.head);
        assert_eq!(resp.status, status, "{method} {path}: {}", resp.head);
        assert_eq!(resp.json()["error"]["code"], code, "{method} {path}");
        let text = String::from_utf8_lossy(&all);
        assert!(
            !text.contains("100 Continue"),
            "{method} {path}: 100 Continue after the answer:\n{text}"
        );
    }
    assert!(provider_bodies(&fx).await.is_empty(), "nothing refused was sent");
}

/// Old builds kept the duplicate guard's claims in memory only: after a
/// restart the same payout reference was sent again (the provider paid it
/// twice). Now a claim is in the state database before its request is sent:
/// a settled one keeps its answer across a restart, a failed one may still
/// be retried, and one whose request was on its way when the process was
/// killed (`SIGKILL`, nothing settled) comes back as unknown, held.
#[tokio::test]
async fn claims_survive_a_restart_and_a_payment_in_flight_at_a_crash_stays_held() {
    let fx = Fixture::new().await;
    let toml = guarded(&fx, 5000);
    let c = TestClient::new();
    let paid = r#"{"amount":"100","order_id":"PAYOUT-R1"}"#;
    let refused = r#"{"amount":"100","order_id":"PAYOUT-R2"}"#;
    let flying = r#"{"amount":"100","order_id":"PAYOUT-R3"}"#;

    let gw = fx.process(&toml, &[]);
    assert_eq!(c.post(&gw.url("/kwikpaisa/pay"), paid).await.status, 200);
    let r = c.post(&gw.url("/kwikpaisa/pay"), paid).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
    // A definite refusal by the provider releases the reference.
    assert_eq!(c.post(&gw.url("/kwikpaisa/status/400"), refused).await.status, 400);
    stop_and_verify(gw, &fx).await;

    let mut gw = fx.process(&toml, &[]);
    let r = c.post(&gw.url("/kwikpaisa/pay"), paid).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (409, "duplicate_request"),
        "a payout that succeeded before the restart is not sent again"
    );
    assert_eq!(provider_got(&fx, paid).await, 1, "{:?}", provider_bodies(&fx).await);
    // Sent, then the process is killed while the provider holds it.
    let url = gw.url("/kwikpaisa/hang");
    let sending = tokio::spawn(async move { TestClient::new().post(&url, flying).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            provider_got(&fx, flying).await == 1
        })
        .await
    );
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5)).await;
    let _ = sending.await;

    let gw = fx.process(&toml, &[]);
    let r = c.post(&gw.url("/kwikpaisa/hang"), flying).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (409, "duplicate_request"));
    assert!(message(&r).contains("outcome is unknown"), "{}", message(&r));
    let r = c.post(&gw.url("/kwikpaisa/pay"), paid).await;
    assert_eq!(r.status, 409, "still held after a second restart");
    assert_eq!(
        c.post(&gw.url("/kwikpaisa/status/400"), refused).await.status,
        400,
        "a reference the provider refused may be sent again"
    );
    assert_eq!(provider_got(&fx, refused).await, 2);
    assert_eq!(provider_got(&fx, flying).await, 1);
    assert_eq!(provider_got(&fx, paid).await, 1);
    assert!(
        gw.log_text().contains("claims read back from the state database"),
        "{}",
        gw.log_text()
    );
}
