//! The routes' kill switches: `POST /routes/{name}/disable|enable` and `GET
//! /routes` behind the admin token, the `503 route_disabled` answer (to the
//! in-house client, h2c, and curl over HTTP/1.1 and HTTP/2 with TLS) with
//! nothing sent to the provider stand-in, the metric and the audit records,
//! the switch kept across a restart and a reload, `signgate route` on the
//! real binary, and with `[fleet]` two gateways on one real `redis-server`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::support::redis::{FaultProxy, RedisServer};
use crate::support::*;

const TOKEN: &str = "switch-admin-token-0123456789";
const BODY: &str = r#"{"amount":"10.00","order_id":"ORD-SWITCH"}"#;

/// The admin token file in the fixture's dir.
fn token_file(fx: &Fixture) -> PathBuf {
    let p = fx.path("admin-token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p
}

/// An admin call: `body` as JSON, the token when `token`.
async fn admin(url: &str, method: Method, body: &str, token: bool) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![("content-type", "application/json")];
    if token {
        headers.push(("authorization", auth.as_str()));
    }
    TestClient::new().send(method, url, &headers, body.to_string()).await
}

async fn provider_count(fx: &Fixture) -> usize {
    fx.provider.standin.records().await.len()
}

/// Every JSON line of the audit log at `path` so far.
fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}")))
        .collect()
}

/// The audit records matching `keep`, once there are `n` (within 10 s).
async fn audited(path: &Path, n: usize, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let of = || -> Vec<Value> { audit_lines(path).into_iter().filter(|l| keep(l)).collect() };
    let found = eventually(Duration::from_secs(10), || async { of().len() >= n }).await;
    assert!(
        found,
        "fewer than {n} matching audit records:\n{:#?}",
        audit_lines(path)
    );
    of()
}

/// What curl got: its exit status, the body, the status code and the HTTP
/// version it spoke.
struct Curled {
    ok: bool,
    stderr: String,
    body: String,
    status: u16,
    version: String,
}

/// `curl ARGS URL` (off the runtime: an in-process gateway must keep
/// running), posting `body` from stdin. Panics, never skips, without curl.
async fn curl(args: &[&str], url: &str, body: Vec<u8>) -> Curled {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        "@-",
    ])
    .args(["-w", "\n%{http_code} %{http_version}", "--max-time", "20"])
    .args(args)
    .arg(url)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("curl could not start ({e}); scripts/test.sh installs it"));
        let mut stdin = child.stdin.take().unwrap();
        // The gateway may stop reading once it has answered: curl sees that.
        let _ = stdin.write_all(&body);
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = last.split_once(' ').unwrap_or((last, ""));
    Curled {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        body: body.to_string(),
        status: status.parse().unwrap_or(0),
        version: version.to_string(),
    }
}

/// The 503 of a disabled route, as the contract's JSON.
fn assert_disabled(status: u16, body: &str, route: &str, what: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
    assert_eq!(v["error"]["code"], "route_disabled", "{what}: {v}");
    assert_eq!(
        v["error"]["message"],
        format!("route {route} is disabled by the gateway's operators; nothing was sent"),
        "{what}"
    );
    assert!(
        v["error"]["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{what}: {v}"
    );
}

/// `signgate ARGS --config CONFIG` (the real binary, pointed at `admin`).
fn signgate(args: &[&str], config: &Path, admin: std::net::SocketAddr) -> std::process::Output {
    std::process::Command::new(signgate_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SIGNGATE__ADMIN__ADDR", admin.to_string())
        .output()
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{:?}: {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Disabled: the in-house client (HTTP/1.1 and h2c) and curl over HTTP/1.1
/// get `503 route_disabled`, a body over the limit too (the switch comes
/// before the body is read), the provider gets nothing, another route goes
/// on; counted, audited, listed. Enabled: forwarded again. Without the
/// token: 401, for an unknown route too; with it, an unknown route is a 404
/// naming it.
#[tokio::test]
async fn a_disabled_route_refuses_before_anything_is_sent_and_forwards_again_once_enabled() {
    let fx = Fixture::new().await;
    let token = token_file(&fx);
    let toml = fx
        .config()
        .admin("token_file", &token)
        .edit_route("kwikpaisa", |r| r.allow(["127.0.0.1/32"]))
        .route(Route::to("other", &fx.upstream()));
    let s = Setup::on(fx, &toml).await;
    let c = TestClient::new();
    let url = s.url("/kwikpaisa/api/v3/pg/order/create");
    assert_eq!(c.post(&url, BODY).await.status, 200);
    assert_eq!(provider_count(&s).await, 1);

    // The token is required, also for a route that does not exist.
    let unauthorized = |m: &str| metric(m, "signgate_admin_unauthorized_total", &[]);
    let before = unauthorized(&s.metrics().await);
    for (method, path) in [
        (Method::GET, "/routes"),
        (Method::POST, "/routes/kwikpaisa/disable"),
        (Method::POST, "/routes/kwikpaisa/enable"),
        (Method::POST, "/routes/nope/disable"),
    ] {
        let r = admin(&s.admin_url(path), method.clone(), "", false).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (401, "unauthorized".into()),
            "{method} {path}"
        );
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    assert_eq!(unauthorized(&s.metrics().await), before + 4.0);
    assert_eq!(c.post(&url, BODY).await.status, 200, "the 401s changed nothing");

    // An unknown route, a bad body, a bad reason, a wrong method.
    let r = admin(&s.admin_url("/routes/nope/disable"), Method::POST, "", true).await;
    assert_eq!((r.status.as_u16(), r.code()), (404, "no_route".into()));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("\"nope\"") && msg.contains("kwikpaisa, other"), "{msg}");
    for (body, code) in [
        ("{\"reason\": 5}", "invalid_json"),
        ("{\"reasn\": \"typo\"}", "invalid_json"),
        ("not json", "invalid_json"),
        ("{\"reason\": \"two\\nlines\"}", "bad_request"),
    ] {
        let r = admin(&s.admin_url("/routes/kwikpaisa/disable"), Method::POST, body, true).await;
        assert_eq!((r.status.as_u16(), r.code()), (400, code.into()), "{body}");
    }
    let long = serde_json::json!({"reason": "x".repeat(257)}).to_string();
    let r = admin(&s.admin_url("/routes/kwikpaisa/disable"), Method::POST, &long, true).await;
    assert_eq!((r.status.as_u16(), r.code()), (400, "bad_request".into()));
    let r = admin(&s.admin_url("/routes/kwikpaisa/disable"), Method::GET, "", true).await;
    assert_eq!((r.status.as_u16(), r.headers["allow"].to_str().unwrap()), (405, "POST"));
    assert_eq!(
        c.post(&url, BODY).await.status,
        200,
        "nothing was disabled by the refusals"
    );
    assert_eq!(provider_count(&s).await, 3);

    // Disable.
    let r = admin(
        &s.admin_url("/routes/kwikpaisa/disable"),
        Method::POST,
        r#"{"reason": "provider incident INC-42"}"#,
        true,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(
        (v["state"].as_str(), v["changed"].as_bool()),
        (Some("disabled"), Some(true))
    );
    assert_eq!(v["reason"], "provider incident INC-42");
    assert_eq!(
        (v["stored"].as_bool(), v["warnings"].as_array().map(Vec::len)),
        (Some(true), Some(0))
    );
    assert!(v["by"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert!(v.get("fleet").is_none(), "no [fleet]: {v}");

    let h1 = c.post(&url, BODY).await;
    assert_disabled(
        h1.status.as_u16(),
        &String::from_utf8_lossy(&h1.body),
        "kwikpaisa",
        "HTTP/1.1",
    );
    assert!(h1.headers.get("retry-after").is_none());
    let h2 = TestClient::h2c().post(&url, BODY).await;
    assert_disabled(
        h2.status.as_u16(),
        &String::from_utf8_lossy(&h2.body),
        "kwikpaisa",
        "h2c",
    );
    // Over max_body_bytes (4 KiB): still route_disabled, not 413.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
    let r = c.post(&url, &big).await;
    assert_disabled(
        r.status.as_u16(),
        &String::from_utf8_lossy(&r.body),
        "kwikpaisa",
        "a large body",
    );
    let curled = curl(&["--http1.1"], &url, BODY.as_bytes().to_vec()).await;
    assert!(curled.ok, "curl: {}", curled.stderr);
    assert_eq!(curled.version, "1.1");
    assert_disabled(curled.status, &curled.body, "kwikpaisa", "curl HTTP/1.1");
    let big_curl = curl(&["--http1.1"], &url, big.clone().into_bytes()).await;
    assert!(big_curl.ok, "curl with a large body: {}", big_curl.stderr);
    assert_disabled(
        big_curl.status,
        &big_curl.body,
        "kwikpaisa",
        "curl HTTP/1.1, large body",
    );
    assert_eq!(provider_count(&s).await, 3, "nothing reached the provider");
    // A caller the route does not allow still gets its 403 (the switch
    // comes after the route's allowlist: it tells outsiders nothing).
    let outsider = TestClient::from_addr("127.0.0.2").post(&url, BODY).await;
    assert_eq!(
        (outsider.status.as_u16(), outsider.code()),
        (403, "ip_not_allowed".into())
    );
    // Another route goes on.
    assert_eq!(c.post(&s.url("/other/x"), BODY).await.status, 200);
    assert_eq!(provider_count(&s).await, 4);

    // Disabling again changes nothing.
    let r = admin(&s.admin_url("/routes/kwikpaisa/disable"), Method::POST, "", true).await;
    assert_eq!((r.status.as_u16(), r.json()["changed"].as_bool()), (200, Some(false)));
    assert_eq!(
        r.json()["reason"],
        "provider incident INC-42",
        "the first change stands"
    );

    // Listed, counted.
    let r = admin(&s.admin_url("/routes"), Method::GET, "", true).await;
    assert_eq!(r.status, 200);
    let routes = r.json()["routes"].as_array().unwrap().clone();
    assert_eq!(routes.len(), 2);
    assert_eq!(
        (routes[0]["name"].as_str(), routes[0]["state"].as_str()),
        (Some("kwikpaisa"), Some("disabled"))
    );
    assert_eq!(routes[0]["reason"], "provider incident INC-42");
    assert_eq!(routes[0]["match_prefix"], "/kwikpaisa");
    assert!(routes[0]["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        (routes[1]["name"].as_str(), routes[1]["state"].as_str()),
        (Some("other"), Some("enabled"))
    );
    assert!(routes[1]["since"].is_null() && routes[1]["by"].is_null());
    let m = s.metrics().await;
    assert_eq!(metric(&m, "signgate_route_disabled", &[("route", "kwikpaisa")]), 1.0);
    assert_eq!(metric(&m, "signgate_route_disabled", &[("route", "other")]), 0.0);
    assert_eq!(
        metric(
            &m,
            "signgate_denied_total",
            &[("route", "kwikpaisa"), ("reason", "route_disabled")]
        ),
        5.0
    );

    // Enable: forwarded again.
    let r = admin(
        &s.admin_url("/routes/kwikpaisa/enable"),
        Method::POST,
        r#"{"reason": "INC-42 resolved"}"#,
        true,
    )
    .await;
    assert_eq!((r.status.as_u16(), r.json()["state"].as_str()), (200, Some("enabled")));
    assert_eq!(c.post(&url, BODY).await.status, 200);
    assert_eq!(provider_count(&s).await, 5);
    let m = s.metrics().await;
    assert_eq!(metric(&m, "signgate_route_disabled", &[("route", "kwikpaisa")]), 0.0);

    // Audited: the two changes, and each refusal as a denied request.
    let audit = s.audit_path();
    let changes = audited(&audit, 2, |l| {
        l["path"].as_str().is_some_and(|p| p.starts_with("/routes/"))
    })
    .await;
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(
        (changes[0]["decision"].as_str(), changes[0]["reason"].as_str()),
        (Some("disabled"), Some("operator"))
    );
    assert_eq!(changes[0]["route"], "kwikpaisa");
    assert_eq!(changes[0]["note"], "provider incident INC-42");
    assert!(changes[0]["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        (changes[1]["decision"].as_str(), changes[1]["note"].as_str()),
        (Some("enabled"), Some("INC-42 resolved"))
    );
    let refused = audited(&audit, 5, |l| l["reason"] == "route_disabled").await;
    assert!(
        refused
            .iter()
            .all(|l| l["decision"] == "denied" && l["status"] == 503 && l["route"] == "kwikpaisa"),
        "{refused:#?}"
    );
}

/// Over TLS: the in-house client (HTTP/1.1) and curl over HTTP/2 and
/// HTTP/1.1, with a small body and with one far past the HTTP/2 window
/// (the refusal comes before the body is read, the linger takes the rest):
/// each reads its 503, not a reset.
#[tokio::test]
async fn over_tls_curl_reads_the_refusal_on_http2_and_http1() {
    let fx = Fixture::new().await;
    let token = token_file(&fx);
    let server = fx.pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let (cert, key) = (fx.path("gw.pem"), fx.path("gw-key.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let toml = fx.config().admin("token_file", &token).listener_tls(&cert, &key);
    let s = Setup::on(fx, &toml).await;
    let path = "/kwikpaisa/api/v3/pg/order/create";
    let r = https_post(s.gw.addr(), &s.pki.ca, None, path, BODY).await.unwrap();
    assert_eq!(r.status, 200);
    let r = admin(&s.admin_url("/routes/kwikpaisa/disable"), Method::POST, "", true).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let r = https_post(s.gw.addr(), &s.pki.ca, None, path, BODY).await.unwrap();
    assert_disabled(
        r.status.as_u16(),
        &String::from_utf8_lossy(&r.body),
        "kwikpaisa",
        "in-house HTTPS",
    );
    let url = format!("https://localhost:{}{path}", s.gw.addr().port());
    let ca = s.pki.ca_path.to_str().unwrap().to_string();
    let resolve = format!("localhost:{}:127.0.0.1", s.gw.addr().port());
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(512 * 1024)).into_bytes();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        for body in [BODY.as_bytes().to_vec(), big.clone()] {
            let len = body.len();
            let got = curl(&[flag, "--cacert", &ca, "--resolve", &resolve], &url, body).await;
            assert!(got.ok, "curl {flag}, {len} bytes: {}", got.stderr);
            assert_eq!(got.version, version, "curl {flag}");
            assert_disabled(got.status, &got.body, "kwikpaisa", &format!("curl {flag}, {len} bytes"));
        }
    }
    assert_eq!(provider_count(&s).await, 1, "nothing refused reached the provider");
}

/// A request that waited for the route's one upstream slot while the route
/// was disabled is refused when it gets it: nothing is sent.
#[tokio::test]
async fn a_request_waiting_for_an_upstream_slot_is_refused_once_the_route_is_disabled() {
    let fx = Fixture::new().await;
    let token = token_file(&fx);
    let toml = fx
        .config()
        .admin("token_file", &token)
        .egress("request_timeout_ms", 5000)
        .edit_route("kwikpaisa", |r| r.max_inflight(1).queue_timeout_ms(10_000));
    let s = Setup::on(fx, &toml).await;
    let slow = tokio::spawn({
        let url = s.url("/kwikpaisa/slow/1500");
        async move { TestClient::new().post(&url, BODY).await }
    });
    let sent = eventually(Duration::from_secs(5), || async { provider_count(&s).await == 1 }).await;
    assert!(sent, "the slow request reached the provider");
    let waiting = tokio::spawn({
        let url = s.url("/kwikpaisa/x");
        async move { TestClient::new().post(&url, BODY).await }
    });
    let queued = eventually(Duration::from_secs(5), || async {
        metric(&s.metrics().await, "signgate_inflight_requests", &[]) == 2.0
    })
    .await;
    assert!(queued, "the second request waits for the slot");
    let r = admin(&s.admin_url("/routes/kwikpaisa/disable"), Method::POST, "", true).await;
    assert_eq!(r.status, 200);
    assert_eq!(slow.await.unwrap().status, 200, "a request already sent completes");
    let r = waiting.await.unwrap();
    assert_disabled(
        r.status.as_u16(),
        &String::from_utf8_lossy(&r.body),
        "kwikpaisa",
        "the waiting request",
    );
    assert_eq!(provider_count(&s).await, 1);
}

/// The real binary and `signgate route`: disabled with a reason, listed;
/// still disabled after a restart on the same state dir and after a reload;
/// a route taken out of the configuration keeps its switch, unused, and
/// takes it up again when configured again; enabled, forwarded.
#[tokio::test]
async fn the_cli_switches_a_route_and_the_switch_survives_restart_and_reload() {
    let fx = Fixture::new().await;
    let token = token_file(&fx);
    let toml = fx
        .config()
        .admin("token_file", &token)
        .route(Route::to("payouts", &fx.upstream()));
    let config = fx.write_config(&toml);
    let mut gw = GatewayProcess::start(&config, &[]);
    let c = TestClient::new();
    let url = gw.url("/payouts/v1/transfer");
    assert_eq!(c.post(&url, BODY).await.status, 200);

    let out = signgate(
        &["route", "disable", "payouts", "--reason", "compromised caller 10.1.2.3"],
        &config,
        gw.admin,
    );
    assert_eq!(
        stdout(&out),
        "route payouts disabled (reason: compromised caller 10.1.2.3)\n"
    );
    let r = c.post(&url, BODY).await;
    assert_disabled(
        r.status.as_u16(),
        &String::from_utf8_lossy(&r.body),
        "payouts",
        "after the CLI",
    );
    assert_eq!(
        c.post(&gw.url("/kwikpaisa/x"), BODY).await.status,
        200,
        "the other route goes on"
    );
    let list = stdout(&signgate(&["route", "list"], &config, gw.admin));
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(
        (rows[0][0], rows[0][1], rows[0][3]),
        ("kwikpaisa", "enabled", "-"),
        "{list}"
    );
    assert_eq!(
        (rows[1][0], rows[1][1], rows[1][4]),
        ("payouts", "disabled", "compromised caller 10.1.2.3")
    );
    assert!(rows[1][3].starts_with("127.0.0.1:"), "by the CLI's address: {list}");
    let again = signgate(&["route", "disable", "payouts"], &config, gw.admin);
    assert!(
        stdout(&again).starts_with("route payouts was already disabled since "),
        "{}",
        stdout(&again)
    );
    let bad = signgate(&["route", "enable", "nope"], &config, gw.admin);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    std::fs::write(fx.path("wrong-token"), "not-the-admin-token-0123").unwrap();
    let wrong = std::process::Command::new(signgate_bin())
        .args(["route", "list", "--config"])
        .arg(&config)
        .env("SIGNGATE__ADMIN__ADDR", gw.admin.to_string())
        .env("SIGNGATE__ADMIN__TOKEN_FILE", fx.path("wrong-token"))
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong token fails");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    gw.wait_for_log("route disabled through the admin API", Duration::from_secs(5))
        .await;
    assert!(
        gw.log_text().contains("compromised caller 10.1.2.3"),
        "{}",
        gw.log_text()
    );

    // A restart on the same state dir comes up disabled, and says so.
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(15)).await.success());
    let gw = GatewayProcess::start(&config, &[]);
    assert!(
        gw.log_text().contains("route is disabled (kill switch)"),
        "{}",
        gw.log_text()
    );
    let url = gw.url("/payouts/v1/transfer");
    let r = c.post(&url, BODY).await;
    assert_disabled(
        r.status.as_u16(),
        &String::from_utf8_lossy(&r.body),
        "payouts",
        "after a restart",
    );
    assert_eq!(gw.metric("signgate_route_disabled", &[("route", "payouts")]).await, 1.0);

    // A reload keeps it.
    fx.write_config(&toml.clone().egress("request_timeout_ms", 2000));
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded", Duration::from_secs(10)).await;
    let r = c.post(&url, BODY).await;
    assert_disabled(
        r.status.as_u16(),
        &String::from_utf8_lossy(&r.body),
        "payouts",
        "after a reload",
    );

    // Taken out of the configuration: kept, unused, listed apart.
    fx.write_config(&toml.clone().remove_route("payouts"));
    gw.signal("HUP");
    let reloaded = eventually(Duration::from_secs(10), || async {
        gw.log_text().matches("configuration reloaded").count() == 2
    })
    .await;
    assert!(reloaded, "{}", gw.log_text());
    assert_eq!(c.post(&url, BODY).await.code(), "no_route");
    let list = stdout(&signgate(&["route", "list"], &config, gw.admin));
    assert!(list.contains("# not configured: payouts\tdisabled\t"), "{list}");
    let m = gw.metrics().await;
    assert!(
        !m.contains("signgate_route_disabled{route=\"payouts\"}"),
        "no series for a route not configured"
    );
    // Configured again: disabled again.
    fx.write_config(&toml);
    gw.signal("HUP");
    let reloaded = eventually(Duration::from_secs(10), || async {
        gw.log_text().matches("configuration reloaded").count() == 3
    })
    .await;
    assert!(reloaded, "{}", gw.log_text());
    assert_eq!(c.post(&url, BODY).await.code(), "route_disabled");

    let out = signgate(&["route", "enable", "payouts"], &config, gw.admin);
    assert_eq!(stdout(&out), "route payouts enabled\n");
    assert_eq!(c.post(&url, BODY).await.status, 200);
    let changes = audited(&fx.audit_path(), 2, |l| {
        l["request_id"].as_str().is_some_and(|r| r.starts_with("route-"))
    })
    .await;
    let decisions: Vec<&str> = changes.iter().map(|l| l["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["disabled", "enabled"]);
    assert_eq!(changes[0]["note"], "compromised caller 10.1.2.3");
}

/// Two gateway processes, one `[fleet]`, one real Redis: disabled through
/// one, the other refuses within the poll interval (measured). Redis gone:
/// both keep the switch. Enabled through one while Redis is gone: it holds
/// there; Redis back, empty: the later change wins on both.
#[tokio::test]
async fn with_fleet_a_switch_holds_on_every_instance_and_survives_a_redis_outage() {
    let mut redis = RedisServer::start();
    let fx = Fixture::new().await;
    let token = token_file(&fx);
    let gws = fx
        .fleet_processes(2, &redis.url(), |_| {
            fx.config()
                .admin("token_file", &token)
                .fleet("route_switch_poll_ms", 500)
        })
        .await;
    let (a, b) = (&gws[0], &gws[1]);
    let c = TestClient::new();
    let path = "/kwikpaisa/api/v3/pg/order/create";
    assert_eq!(c.post(&b.url(path), BODY).await.status, 200);

    let r = admin(
        &a.admin_url("/routes/kwikpaisa/disable"),
        Method::POST,
        r#"{"reason":"fleet test"}"#,
        true,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.json()["fleet"].as_str(), r.json()["instance"].as_str()),
        (Some("shared"), Some("gw-0"))
    );
    let disabled_at = Instant::now();
    let stored = redis.cli(&["HGET", "{signgate:routes}", "kwikpaisa"]);
    assert!(
        stored.contains("\"disabled\":true") && stored.contains("fleet test"),
        "{stored}"
    );
    let seen = eventually(Duration::from_secs(5), || async {
        c.post(&b.url(path), BODY).await.status == 503
    })
    .await;
    let took = disabled_at.elapsed();
    assert!(seen, "instance B never refused:\n{}", b.log_text());
    println!("route switch: instance B refused {took:?} after the disable on A (poll 500 ms, timeout 250 ms)");
    assert!(
        took < Duration::from_millis(500 + 250 + 1000),
        "bound: poll + timeout_ms (+ slack): {took:?}"
    );
    let r = c.post(&b.url(path), BODY).await;
    assert_disabled(
        r.status.as_u16(),
        &String::from_utf8_lossy(&r.body),
        "kwikpaisa",
        "instance B",
    );
    assert_eq!(
        b.metric("signgate_route_disabled", &[("route", "kwikpaisa")]).await,
        1.0
    );
    let taken = audited(&fx.path("audit-1.jsonl"), 1, |l| l["decision"] == "disabled").await;
    assert_eq!(
        (taken[0]["reason"].as_str(), taken[0]["fleet"].as_str()),
        (Some("fleet"), Some("redis"))
    );
    assert_eq!(taken[0]["note"], "fleet test");
    b.wait_for_log("route disabled through the fleet", Duration::from_secs(5))
        .await;

    // Redis gone: the switch holds on both, poll after poll.
    redis.kill();
    for gw in &gws {
        let down = eventually(Duration::from_secs(5), || async {
            gw.metric("signgate_fleet_redis_up", &[]).await == 0.0
        })
        .await;
        assert!(down);
    }
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        for gw in &gws {
            assert_eq!(c.post(&gw.url(path), BODY).await.code(), "route_disabled");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Enabled through A while Redis is gone: here at once, pending there.
    let r = admin(&a.admin_url("/routes/kwikpaisa/enable"), Method::POST, "", true).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["fleet"], "pending");
    assert!(r.json()["warnings"][0]
        .as_str()
        .unwrap()
        .contains("Redis did not take the change"));
    assert_eq!(c.post(&a.url(path), BODY).await.status, 200);
    assert_eq!(
        c.post(&b.url(path), BODY).await.code(),
        "route_disabled",
        "B cannot know yet"
    );

    // Redis back, empty (no persistence): A's later enable wins everywhere.
    redis.restart();
    let on = eventually(Duration::from_secs(10), || async {
        c.post(&b.url(path), BODY).await.status == 200
    })
    .await;
    assert!(on, "B never took the enable:\n{}", b.log_text());
    let stored = redis.cli(&["HGET", "{signgate:routes}", "kwikpaisa"]);
    assert!(stored.contains("\"disabled\":false"), "{stored}");
    assert_eq!(c.post(&a.url(path), BODY).await.status, 200);
}

/// A disable whose admin client goes away while the change waits on a slow
/// Redis still completes: in force, shared and audited.
#[tokio::test]
async fn a_change_whose_client_goes_away_still_completes_and_is_audited() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let fx = Fixture::new().await;
    let token = token_file(&fx);
    let toml = fx
        .config()
        .admin("token_file", &token)
        .fleet("redis_url", proxy.url())
        .fleet("timeout_ms", 5000);
    let gw = fx.process(&toml, &[]);
    let up = eventually(Duration::from_secs(5), || async {
        gw.metric("signgate_fleet_redis_up", &[]).await == 1.0
    })
    .await;
    assert!(up, "{}", gw.log_text());
    // Every Redis round trip now takes ~800 ms (both ways), within timeout_ms.
    proxy.set_delay(Duration::from_millis(400));
    let body = r#"{"reason": "abandoned"}"#;
    let request = format!(
        "POST /routes/kwikpaisa/disable HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    {
        use tokio::io::AsyncWriteExt as _;
        let mut s = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Gone before the answer.
    }
    let done = eventually(Duration::from_secs(10), || async {
        TestClient::new().post(&gw.url("/kwikpaisa/x"), BODY).await.status == 503
    })
    .await;
    assert!(done, "the change was dropped with its client:\n{}", gw.log_text());
    let changes = audited(&fx.audit_path(), 1, |l| l["decision"] == "disabled").await;
    assert_eq!(
        (changes[0]["note"].as_str(), changes[0]["fleet"].as_str()),
        (Some("abandoned"), Some("redis"))
    );
    proxy.set_delay(Duration::ZERO);
    let stored = redis.cli(&["HGET", "{signgate:routes}", "kwikpaisa"]);
    assert!(stored.contains("\"disabled\":true"), "{stored}");
}

/// With `[fleet]` the admin API answers for the fleet, not for the last
/// poll: with polls a minute apart, a route disabled through A is "already
/// disabled" through B, and an enable through B is a change; A lists it
/// and serves again without waiting for its poll.
#[tokio::test]
async fn with_fleet_the_admin_api_answers_with_the_fleets_state_not_the_last_polls() {
    let redis = RedisServer::start();
    let fx = Fixture::new().await;
    let token = token_file(&fx);
    let gws = fx
        .fleet_processes(2, &redis.url(), |_| {
            fx.config()
                .admin("token_file", &token)
                .fleet("route_switch_poll_ms", 60_000)
        })
        .await;
    let (a, b) = (&gws[0], &gws[1]);
    let path = "/kwikpaisa/api/v3/pg/order/create";
    let r = admin(&a.admin_url("/routes/kwikpaisa/disable"), Method::POST, "", true).await;
    assert_eq!((r.status.as_u16(), r.json()["changed"].as_bool()), (200, Some(true)));
    let r = admin(&b.admin_url("/routes/kwikpaisa/disable"), Method::POST, "", true).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.json()["changed"].as_bool(), r.json()["instance"].as_str()),
        (Some(false), Some("gw-0")),
        "already disabled, through gw-0: {}",
        r.json()
    );
    assert_eq!(
        TestClient::new().post(&b.url(path), BODY).await.code(),
        "route_disabled"
    );
    let r = admin(&b.admin_url("/routes/kwikpaisa/enable"), Method::POST, "", true).await;
    assert_eq!(
        (r.json()["changed"].as_bool(), r.json()["state"].as_str()),
        (Some(true), Some("enabled")),
        "{}",
        r.json()
    );
    assert_eq!(
        TestClient::new().post(&a.url(path), BODY).await.code(),
        "route_disabled",
        "A's poll is a minute away"
    );
    let r = admin(&a.admin_url("/routes"), Method::GET, "", true).await;
    let listed = &r.json()["routes"][0];
    assert_eq!(
        (listed["state"].as_str(), listed["instance"].as_str()),
        (Some("enabled"), Some("gw-1"))
    );
    assert_eq!(TestClient::new().post(&a.url(path), BODY).await.status, 200);
    let taken = audited(&fx.path("audit-0.jsonl"), 1, |l| l["decision"] == "enabled").await;
    assert_eq!(taken[0]["reason"], "fleet");
}
