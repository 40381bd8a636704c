//! Operations on the real binary: SIGTERM drains in-flight requests and exits
//! 0; SIGHUP (and `POST /reload`) swap the configuration without dropping
//! requests, and a bad file keeps the old configuration serving.

use std::time::Duration;

use http::Method;

use crate::support::*;

/// The fixture's configuration for a gateway process: a 5 s drain and a 5 s
/// request timeout (longer than the slow requests below), and the route as
/// `route` makes it.
fn toml(fx: &Fixture, route: impl FnOnce(Route) -> Route) -> GatewayToml {
    fx.config()
        .listener("drain_timeout_ms", 5000)
        .egress("request_timeout_ms", 5000)
        .edit_route("kwikpaisa", route)
}

/// A fixture with its configuration file written.
async fn env(route: impl FnOnce(Route) -> Route) -> Fixture {
    let fx = Fixture::new().await;
    fx.write_config(&toml(&fx, route));
    fx
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_zero() {
    let e = env(|r| r).await;
    let mut gw = GatewayProcess::start(&e.config_path(), &[]);
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
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
    // The audit log was flushed and verifies.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signgate"))
        .args(["audit", "verify"])
        .arg(e.audit_path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 1 records");
}

#[tokio::test]
async fn sighup_applies_a_new_route_limit_without_dropping_requests() {
    let e = env(|r| r.limit(10000, 10000)).await;
    let gw = GatewayProcess::start(&e.config_path(), &[]);
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
    e.write_config(&toml(&e, |r| r.limit(1, 1)));
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
    let e = env(|r| r).await;
    let gw = GatewayProcess::start(&e.config_path(), &[]);
    let c = TestClient::new();
    assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    e.write_config(
        &GatewayToml::new()
            .listener("addr", "127.0.0.1:8080")
            .listener("max_conections", 1)
            .allow(Vec::<&str>::new()),
    );
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
    let e = env(|r| r).await;
    let gw = GatewayProcess::start(&e.config_path(), &[]);
    let c = TestClient::new();
    let reload = gw.admin_url("/reload");
    // A new route through POST /reload.
    let toml = toml(&e, |r| r).route(
        Route::new("second", "/second", &e.upstream())
            .strip_prefix(true)
            .credential("kwikpaisa")
            .scheme("kwikpaisa"),
    );
    e.write_config(&toml);
    assert_eq!(c.post(&gw.url("/second/x"), "{}").await.status, 404);
    let r = c.send(Method::POST, &reload, &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(c.post(&gw.url("/second/x"), "{}").await.status, 200);
    // Changing a start-up setting is refused whole.
    e.write_config(
        &toml
            .listener("drain_timeout_ms", 6000)
            .edit_route("second", |r| r.set("name", "third")),
    );
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
