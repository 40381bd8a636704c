//! Operations on the real binary: SIGTERM drains in-flight requests and exits
//! 0; SIGHUP (and `POST /reload`) swap the configuration without dropping
//! requests, and a bad file keeps the old configuration serving.

#![allow(clippy::unwrap_used)] // test helpers panic on failed setup

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use support::*;

struct Env {
    pki: Pki,
    provider: Provider,
    dir: tempfile::TempDir,
    config: PathBuf,
    cred: PathBuf,
}

fn gateway_toml(env_upstream: &str, ca: &Path, cred: &Path, audit: &Path, route_extra: &str) -> String {
    format!(
        r#"
[listener]
addr = "127.0.0.1:8080"
drain_timeout_ms = 5000
[access]
allow = ["127.0.0.0/8"]
[audit]
path = "{audit}"
[egress]
ca_file = "{ca}"
request_timeout_ms = 5000
[credentials.kwikpaisa]
source = "file"
path = "{cred}"
[[route]]
name = "kwikpaisa"
match_prefix = "/kwikpaisa/"
strip_prefix = true
upstream = "{env_upstream}"
credential = "kwikpaisa"
scheme = "kwikpaisa"
{route_extra}
"#,
        ca = ca.display(),
        cred = cred.display(),
        audit = audit.display(),
    )
}

async fn env(route_extra: &str) -> Env {
    let pki = pki();
    let provider = provider(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("cred.json");
    write_cred(&cred, &provider.api_key, &provider.secret);
    let config = dir.path().join("gateway.toml");
    let e = Env {
        pki,
        provider,
        dir,
        config,
        cred,
    };
    e.write(route_extra);
    e
}

impl Env {
    fn toml(&self, route_extra: &str) -> String {
        let upstream = format!("https://localhost:{}", self.provider.standin.addr().port());
        gateway_toml(
            &upstream,
            &self.pki.ca_path,
            &self.cred,
            &self.dir.path().join("audit.jsonl"),
            route_extra,
        )
    }

    fn write(&self, route_extra: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, self.toml(route_extra)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_zero() {
    let e = env("").await;
    let mut gw = GatewayProcess::start(&e.config, &[]);
    let url = gw.url("/kwikpaisa/slow/1500");
    let slow = tokio::spawn(async move { TestClient::new().post(&url, "{}").await });
    // Wait until the stand-in has the request, then ask the gateway to stop.
    assert!(e.provider.standin.next(Duration::from_secs(5)).await.is_some());
    gw.signal("TERM");
    // New connections are refused soon after the signal.
    let addr = gw.addr;
    let refused = eventually(Duration::from_secs(3), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "the listener must stop accepting");
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "gateway did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
    // The audit log was flushed and verifies.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signgate"))
        .args(["audit", "verify"])
        .arg(e.dir.path().join("audit.jsonl"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 1 records");
}

#[tokio::test]
async fn sighup_applies_a_new_route_limit_without_dropping_requests() {
    let e = env("limit = { rate = 10000, burst = 10000 }").await;
    let gw = GatewayProcess::start(&e.config, &[]);
    let url = gw.url("/kwikpaisa/x");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let client_loop = tokio::spawn(async move {
        let c = TestClient::new();
        let mut statuses = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            statuses.push(c.post(&url, "{}").await.status.as_u16());
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.write("limit = { rate = 1, burst = 1 }");
    gw.signal("HUP");
    let limited = eventually(Duration::from_secs(5), || async {
        TestClient::new().post(&gw.url("/kwikpaisa/x"), "{}").await.status == 429
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = client_loop.await.unwrap();
    assert!(limited, "the new limit applies\n{}", gw.log_text());
    assert!(statuses.len() > 5);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "no request dropped or failed: {statuses:?}"
    );
    assert!(statuses.contains(&200) && statuses.contains(&429));
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "signgate_config_reloads_total", &[("result", "ok")]), 1.0);
    // The log line can trail the counter through the stderr pipe.
    let logged = eventually(Duration::from_secs(5), || async {
        gw.log_text().contains("configuration reloaded")
    })
    .await;
    assert!(logged, "{}", gw.log_text());
}

#[tokio::test]
async fn sighup_with_an_invalid_file_keeps_the_old_config_serving() {
    let e = env("").await;
    let gw = GatewayProcess::start(&e.config, &[]);
    let c = TestClient::new();
    assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    std::fs::write(
        &e.config,
        "[listener]\naddr = \"127.0.0.1:8080\"\nmax_conections = 1\n[access]\nallow = []\n",
    )
    .unwrap();
    gw.signal("HUP");
    let counted = eventually(Duration::from_secs(5), || async {
        metric(
            &gw.metrics().await,
            "signgate_config_reloads_total",
            &[("result", "error")],
        ) == 1.0
    })
    .await;
    assert!(counted, "{}", gw.log_text());
    // The counter can be scraped before the child's log line has passed
    // through its stderr pipe and our reader thread: wait for the line too.
    let logged = eventually(Duration::from_secs(5), || async {
        let log = gw.log_text();
        log.contains("reload rejected") && log.contains("listener.max_conections") && log.contains("access.allow")
    })
    .await;
    assert!(logged, "{}", gw.log_text());
    assert_eq!(
        c.post(&gw.url("/kwikpaisa/x"), "{}").await.status,
        200,
        "the old config still serves"
    );
    assert_eq!(
        metric(
            &gw.metrics().await,
            "signgate_config_reloads_total",
            &[("result", "ok")]
        ),
        0.0
    );
}

#[tokio::test]
async fn reload_over_admin_and_listener_changes_need_a_restart() {
    let e = env("").await;
    let gw = GatewayProcess::start(&e.config, &[]);
    let c = TestClient::new();
    let reload = format!("http://{}/reload", gw.admin);
    // A new route through POST /reload.
    let mut toml = e.toml("");
    toml.push_str(&format!(
        "[[route]]\nname = \"second\"\nmatch_prefix = \"/second\"\nstrip_prefix = true\nupstream = \"https://localhost:{}\"\ncredential = \"kwikpaisa\"\nscheme = \"kwikpaisa\"\n",
        e.provider.standin.addr().port()
    ));
    std::fs::write(&e.config, &toml).unwrap();
    assert_eq!(c.post(&gw.url("/second/x"), "{}").await.status, 404);
    let r = c.send(Method::POST, &reload, &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(c.post(&gw.url("/second/x"), "{}").await.status, 200);
    // Changing a start-up setting is refused whole.
    std::fs::write(
        &e.config,
        toml.replace("drain_timeout_ms = 5000", "drain_timeout_ms = 6000")
            .replace("name = \"second\"", "name = \"third\""),
    )
    .unwrap();
    let r = c.send(Method::POST, &reload, &[], "").await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[listener] changed"),
        "{:?}",
        r.json()
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_requests_total",
            &[("route", "third"), ("method", "POST"), ("status", "200")]
        ),
        0.0
    );
    assert_eq!(metric(&m, "signgate_config_reloads_total", &[("result", "error")]), 1.0);
}
