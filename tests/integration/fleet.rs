//! Fleet mode: three real gateway processes on one configuration sharing one
//! real `redis-server` (persistence off, killed on drop), in front of the
//! provider stand-in that recomputes every signature. What one instance
//! decides holds on the others: the rate limits, the duplicate guard, the
//! webhook de-duplication, the provider's cooldown and the reflection guard.
//! Then Redis is killed, and slowed past `timeout_ms` by a fault proxy.

use std::time::{Duration, Instant};

use http::Method;

use crate::support::redis::{FaultProxy, RedisServer};
use crate::support::*;

const N: usize = 3;

/// The fixture, and three gateways whose `[fleet]` points at `redis_url`.
struct Fleet {
    fx: Fixture,
    gws: Vec<GatewayProcess>,
}

impl Fleet {
    /// `edit` changes the common configuration (routes, webhooks, `[fleet]`);
    /// it gets the stand-in's URL.
    async fn start(redis_url: &str, edit: impl Fn(GatewayToml, &str) -> GatewayToml) -> Fleet {
        let fx = Fixture::new().await;
        let gws = fx
            .fleet_processes(N, redis_url, |_| {
                edit(fx.config().fleet("expected_instances", N as u64), &fx.upstream())
            })
            .await;
        Fleet { fx, gws }
    }

    async fn wait_up(&self, gw: &GatewayProcess, up: bool) {
        let want = if up { 1.0 } else { 0.0 };
        let seen = eventually(Duration::from_secs(5), || async {
            gw.metric("signgate_fleet_redis_up", &[]).await == want
        })
        .await;
        assert!(seen, "signgate_fleet_redis_up never {want}:\n{}", gw.log_text());
    }

    /// Provider requests whose path starts with `prefix`.
    async fn received(&self, prefix: &str) -> usize {
        let recs = self.fx.provider.standin.records().await;
        recs.iter().filter(|r| r.path_and_query.starts_with(prefix)).count()
    }
}

async fn post(gw: &GatewayProcess, path: &str, body: &str) -> Reply {
    TestClient::new().post(&gw.url(path), body).await
}

/// Route 20/s burst 20, clients spread over three instances for 10 s: the
/// provider sees rate × time + burst, ±5 % (the server's clock decides).
#[tokio::test]
async fn a_route_limit_holds_across_three_instances() {
    let redis = RedisServer::start();
    let f = Fleet::start(&redis.url(), |c, up| c.route(Route::to("limited", up).limit(20, 20))).await;
    let (rate, burst, secs) = (20.0, 20.0, 10u64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for i in 0..6 {
        let url = f.gws[i % N].url("/limited/pay");
        clients.push(tokio::spawn(async move {
            let client = TestClient::new();
            let (mut ok, mut limited) = (0u32, 0u32);
            while Instant::now() < deadline {
                let r = client.post(&url, r#"{"n":1}"#).await;
                match r.status.as_u16() {
                    200 => ok += 1,
                    429 => {
                        assert_eq!(r.code(), "rate_limited");
                        limited += 1;
                    }
                    other => panic!("unexpected {other}: {:?}", r.body),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for c in clients {
        let (o, l) = c.await.unwrap();
        ok += o;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let got = f.received("/pay").await as f64;
    let expected = rate * secs as f64 + burst;
    println!("fleet limit: provider received {got} in {elapsed:.2} s (expected {expected}), answered 200 {ok}, 429 {limited}");
    assert_eq!(got, f64::from(ok), "every 200 reached the provider, nothing else did");
    assert!(limited > 0, "the clients asked for more than the limit");
    assert!(
        got >= expected * 0.95 && got <= expected * 1.05,
        "{got} requests reached the provider; expected {expected} ±5 %"
    );
}

/// Fifty concurrent requests with one `order_id` over three instances:
/// exactly one reaches the provider, the other 49 get 409.
#[tokio::test]
async fn one_order_id_over_three_instances_reaches_the_provider_once() {
    let redis = RedisServer::start();
    let f = Fleet::start(&redis.url(), |c, _| {
        c.edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"))
    })
    .await;
    let mut sends = Vec::new();
    for i in 0..50 {
        let url = f.gws[i % N].url("/kwikpaisa/api/v3/pg/order/create");
        sends.push(tokio::spawn(async move {
            TestClient::new()
                .post(&url, r#"{"order_id":"ORD-FLEET-1","amount":"10.00"}"#)
                .await
        }));
    }
    let (mut ok, mut dup) = (0, 0);
    for s in sends {
        let r = s.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            409 => {
                assert_eq!(r.code(), "duplicate_request");
                dup += 1;
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    println!("fleet duplicate guard: 50 sent, {ok} answered 200, {dup} answered 409");
    assert_eq!((ok, dup), (1, 49));
    assert_eq!(
        f.received("/api/v3/pg/order/create").await,
        1,
        "the provider saw it once"
    );
    // The claim is held for the window, fleet-wide.
    let again = post(
        &f.gws[2],
        "/kwikpaisa/api/v3/pg/order/create",
        r#"{"order_id":"ORD-FLEET-1"}"#,
    )
    .await;
    assert_eq!(again.status, 409);
    let keys = redis.cli(&["--scan", "--pattern", "{signgate:dup:kwikpaisa}:*"]);
    assert_eq!(keys.lines().count(), 1, "one claim key: {keys}");
    assert_eq!(redis.cli(&["GET", keys.trim()]), "s", "held as succeeded");
    // An operator's release on one instance frees the reference on all.
    let released = TestClient::new()
        .post(
            &f.gws[1].admin_url("/guard/release"),
            r#"{"route":"kwikpaisa","reference":"ORD-FLEET-1"}"#,
        )
        .await;
    assert_eq!(released.status, 200, "{:?}", released.body);
    assert_eq!(released.json()["released"], 1, "{:?}", released.body);
    let retried = post(
        &f.gws[2],
        "/kwikpaisa/api/v3/pg/order/create",
        r#"{"order_id":"ORD-FLEET-1"}"#,
    )
    .await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    assert_eq!(f.received("/api/v3/pg/order/create").await, 2);
}

/// One webhook event posted to all three instances at once: each
/// acknowledges it, the app receives it once.
#[tokio::test]
async fn one_webhook_event_posted_to_three_instances_is_delivered_once() {
    let redis = RedisServer::start();
    let app = App::start_on(0).await;
    let forward = format!("http://{}/events", app.addr);
    let f = Fleet::start(&redis.url(), |c, _| c.webhook(Webhook::kwikpaisa(&forward))).await;
    let body = r#"{"event":"payment.success","data":{"order_id":"WH-FLEET-1","status":"PAID"}}"#;
    let ts = unix_now().to_string();
    let sig = provider_signature(&f.fx.provider.secret, body.as_bytes(), &ts);
    let mut posts = Vec::new();
    for gw in &f.gws {
        let url = gw.url("/webhooks/kwikpaisa");
        let (ts, sig) = (ts.clone(), sig.clone());
        posts.push(tokio::spawn(async move {
            TestClient::new()
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("x-timestamp", &ts),
                        ("x-signature", &sig),
                    ],
                    body.to_string(),
                )
                .await
        }));
    }
    let mut statuses = Vec::new();
    for p in posts {
        let r = p.await.unwrap();
        statuses.push((
            r.status.as_u16(),
            r.json()["status"].as_str().unwrap_or_default().to_string(),
        ));
    }
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|(_, s)| s == "accepted").count(),
        1,
        "{statuses:?}"
    );
    assert!(eventually(Duration::from_secs(5), || async { app.count().await >= 1 }).await);
    // Long enough for the other instances' workers (250 ms ticks) to have sent theirs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = app.received.lock().await.clone();
    println!(
        "fleet webhooks: 3 posted, answers {statuses:?}, {} delivered",
        received.len()
    );
    assert_eq!(received.len(), 1, "delivered once");
    assert!(
        received[0].0.get("x-signgate-dedup").is_none(),
        "de-duplicated by the fleet"
    );
}

/// Redis killed under load: routes with a duplicate key answer 503 and send
/// nothing; other routes keep serving at this instance's share; Redis back,
/// the fleet recovers within a second without a restart.
#[tokio::test]
async fn redis_killed_then_back() {
    let mut redis = RedisServer::start();
    let f = Fleet::start(&redis.url(), |c, up| {
        c.edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"))
            // Share while Redis is down: rate 1/s, burst 10 per instance.
            .route(Route::to("plain", up).limit(3, 30))
    })
    .await;
    let ok = post(&f.gws[0], "/kwikpaisa/create", r#"{"order_id":"K-0"}"#).await;
    assert_eq!(ok.status, 200);
    // Load on two instances while Redis dies (the third is measured below).
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for gw in [&f.gws[0], &f.gws[2]] {
        let (url, stop) = (gw.url("/plain/status"), stop.clone());
        load.push(tokio::spawn(async move {
            let c = TestClient::new();
            while !stop.is_cancelled() {
                let _ = c.post(&url, r#"{"q":1}"#).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    for gw in &f.gws {
        f.wait_up(gw, false).await;
    }
    stop.cancel();
    for l in load {
        l.await.unwrap();
    }
    // The duplicate guard fails closed: nothing is sent.
    let before = f.received("/create").await;
    for (i, gw) in f.gws.iter().enumerate() {
        let started = Instant::now();
        let r = post(gw, "/kwikpaisa/create", &format!(r#"{{"order_id":"K-DOWN-{i}"}}"#)).await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.code(), "duplicate_guard_unavailable");
        assert!(started.elapsed() < Duration::from_millis(500), "answered at once");
    }
    assert_eq!(
        f.received("/create").await,
        before,
        "nothing sent while the guard cannot answer"
    );
    // Other routes serve at the local share: burst 30/3 = 10, rate 1/s.
    let started = Instant::now();
    let sends: Vec<_> = (0..15)
        .map(|_| {
            let url = f.gws[1].url("/plain/status");
            tokio::spawn(async move { TestClient::new().post(&url, r#"{"q":2}"#).await })
        })
        .collect();
    let mut ok = 0u64;
    for s in sends {
        let r = s.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            429 => assert_eq!(r.code(), "rate_limited"),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    let refill = started.elapsed().as_secs() + 1;
    println!("fleet redis down: 15 sent at once to one instance, {ok} served at the local share");
    assert!(
        ok >= 10 && ok <= 10 + refill,
        "the local share (burst 10, 1/s) served {ok}"
    );
    let m = f.gws[0].metrics().await;
    assert!(metric(&m, "signgate_fleet_fallback_total", &[("what", "guard_refused")]) >= 1.0);
    assert!(metric(&m, "signgate_fleet_fallback_total", &[("what", "limits_local")]) >= 1.0);
    // Whichever noticed first, a request's call, the probe or the route
    // switches' poll, counted it.
    let errors: f64 = ["limit", "ping", "claim", "route_switch"]
        .iter()
        .map(|op| metric(&m, "signgate_fleet_redis_errors_total", &[("op", op)]))
        .sum();
    assert!(errors >= 1.0, "{m}");
    assert!(
        f.gws[0].log_text().matches("fleet: Redis unavailable").count() == 1,
        "one line per episode"
    );
    // Back: the guard works again within a second, on every instance.
    redis.restart();
    let back = Instant::now();
    for (i, gw) in f.gws.iter().enumerate() {
        let body = format!(r#"{{"order_id":"K-BACK-{i}"}}"#);
        let recovered = eventually(Duration::from_secs(3), || async {
            post(gw, "/kwikpaisa/create", &body).await.status == 200
        })
        .await;
        assert!(recovered, "instance {i} did not recover:\n{}", gw.log_text());
    }
    let took = back.elapsed();
    println!("fleet redis back: all three instances served the guard again after {took:?}");
    assert!(took < Duration::from_secs(1), "recovery took {took:?}");
    assert!(f.gws[0].log_text().contains("fleet: Redis answers"));
}

/// Redis slower than `timeout_ms` (a proxy delays every byte): with
/// `limits_on_error = "deny"` limited routes answer 503, the guard 503,
/// nothing hangs; fast again, the fleet recovers.
#[tokio::test]
async fn redis_slower_than_timeout_ms() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr()).await;
    let f = Fleet::start(&proxy.url(), |c, up| {
        c.fleet("limits_on_error", "deny")
            .edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"))
            .route(Route::to("plain", up).limit(100, 100))
    })
    .await;
    assert_eq!(post(&f.gws[0], "/plain/x", "{}").await.status, 200);
    proxy.set_delay(Duration::from_millis(600));
    let mut worst = Duration::ZERO;
    for round in 0..2 {
        for (i, gw) in f.gws.iter().enumerate() {
            let started = Instant::now();
            let r = post(gw, "/plain/x", "{}").await;
            assert_eq!(r.status, 503, "{:?}", r.body);
            assert_eq!(r.code(), "rate_limit_unavailable");
            assert_eq!(r.headers["retry-after"], "1");
            let started2 = Instant::now();
            let g = post(gw, "/kwikpaisa/create", &format!(r#"{{"order_id":"S-{round}-{i}"}}"#)).await;
            assert_eq!(g.status, 503);
            assert_eq!(g.code(), "duplicate_guard_unavailable");
            worst = worst.max(started.elapsed().max(started2.elapsed()));
        }
    }
    println!("fleet slow redis: slowest answer {worst:?} (timeout_ms 250, Redis delayed 600 ms each way)");
    assert!(worst < Duration::from_millis(800), "a request waited {worst:?}");
    assert_eq!(f.received("/create").await, 0, "nothing sent");
    proxy.set_delay(Duration::ZERO);
    for gw in &f.gws {
        f.wait_up(gw, true).await;
    }
    assert_eq!(post(&f.gws[2], "/plain/x", "{}").await.status, 200);
    assert_eq!(
        post(&f.gws[2], "/kwikpaisa/create", r#"{"order_id":"S-back"}"#)
            .await
            .status,
        200
    );
}

/// A provider 429 with `Retry-After: 2` through one instance: the other two
/// answer 429 provider_cooldown without contacting the provider until it
/// runs out.
#[tokio::test]
async fn a_provider_429_cools_the_route_down_on_every_instance() {
    let redis = RedisServer::start();
    let f = Fleet::start(&redis.url(), |c, _| c).await;
    let r = post(&f.gws[0], "/kwikpaisa/status/429?retry_after=2", "{}").await;
    assert_eq!(r.status, 429, "the provider's own answer passes through");
    assert_eq!(r.headers["retry-after"], "2");
    let started = Instant::now();
    let before = f.fx.provider.standin.records().await.len();
    for gw in &f.gws[1..] {
        let r = post(gw, "/kwikpaisa/api/v3/pg/order/status", r#"{"order_id":"C-1"}"#).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.code(), "provider_cooldown");
        let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&after), "Retry-After {after}");
    }
    assert_eq!(
        f.fx.provider.standin.records().await.len(),
        before,
        "nothing sent during the cooldown"
    );
    // It runs out: served again.
    let served = eventually(Duration::from_secs(4), || async {
        post(&f.gws[1], "/kwikpaisa/api/v3/pg/order/status", r#"{"order_id":"C-2"}"#)
            .await
            .status
            == 200
    })
    .await;
    let took = started.elapsed();
    println!("fleet cooldown: Retry-After 2 held the other instances for {took:?}");
    assert!(
        served && took >= Duration::from_millis(1500),
        "served again after {took:?}"
    );
    let m = f.gws[2].metrics().await;
    assert!(
        metric(
            &m,
            "signgate_provider_cooldown_total",
            &[("route", "kwikpaisa"), ("result", "refused")]
        ) >= 1.0
    );
    // The audit record says the decision came from the fleet.
    let audit = std::fs::read_to_string(f.fx.path("audit-1.jsonl")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("provider_cooldown"))
        .expect("an audit record");
    assert!(line.contains(r#""fleet":"redis""#), "{line}");
}

/// An outbound signature sent through instance A, replayed as a webhook to
/// instance B, is refused 401 reflected_signature.
#[tokio::test]
async fn a_signature_sent_by_one_instance_is_refused_as_a_webhook_by_another() {
    let redis = RedisServer::start();
    let app = App::start_on(0).await;
    let forward = format!("http://{}/events", app.addr);
    let f = Fleet::start(&redis.url(), |c, _| c.webhook(Webhook::kwikpaisa(&forward))).await;
    let body = r#"{"event":"payment.success","order_id":"R-1"}"#;
    assert_eq!(
        post(&f.gws[0], "/kwikpaisa/api/v3/pg/order/status", body).await.status,
        200
    );
    let rec = f.fx.provider.standin.records().await.pop().unwrap();
    let (ts, sig) = (
        rec.headers["x-timestamp"].to_str().unwrap().to_string(),
        rec.headers["x-signature"].to_str().unwrap().to_string(),
    );
    let replay = |gw: &GatewayProcess| {
        let url = gw.url("/webhooks/kwikpaisa");
        let (ts, sig, body) = (ts.clone(), sig.clone(), rec.body.clone());
        async move {
            TestClient::new()
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
                .await
        }
    };
    for gw in &f.gws[1..] {
        let r = replay(gw).await;
        assert_eq!(r.status, 401, "{:?}", r.body);
        assert_eq!(r.code(), "reflected_signature");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count().await, 0, "nothing delivered");
}

/// A password-protected Redis: the password comes from
/// `redis_password_file`, works, and appears in no log line, metric or
/// error; `signgate check` names a missing password file by its key.
#[tokio::test]
async fn the_redis_password_is_used_and_never_shown() {
    let password = format!("pw-{}", random_token("", 24));
    let redis = RedisServer::start_with(Some(&password));
    let fx = Fixture::new().await;
    let pw_file = fx.path("redis-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let toml = fx
        .config()
        .edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"))
        .fleet("redis_url", redis.url())
        .fleet("redis_password_file", &pw_file)
        .fleet("timeout_ms", 250);
    let gw = fx.process(&toml, &[("SIGNGATE_LOG", "debug")]);
    let up = eventually(Duration::from_secs(5), || async {
        gw.metric("signgate_fleet_redis_up", &[]).await == 1.0
    })
    .await;
    assert!(up, "{}", gw.log_text());
    let r = post(&gw, "/kwikpaisa/create", r#"{"order_id":"PW-1"}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "{signgate:dup:kwikpaisa}:*"])
            .lines()
            .count(),
        1
    );
    let metrics = gw.metrics().await;
    assert!(!gw.log_text().contains(&password) && !metrics.contains(&password));
    // A wrong password: Redis refuses, the guard fails closed, still no password shown.
    let wrong = format!("pw-{}", random_token("", 24));
    std::fs::write(&pw_file, &wrong).unwrap();
    let gw2 = fx.process(
        &toml
            .clone()
            .audit_path(&fx.path("audit-2.jsonl"))
            .state_dir(&fx.path("state-2")),
        &[],
    );
    let r = post(&gw2, "/kwikpaisa/create", r#"{"order_id":"PW-2"}"#).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "duplicate_guard_unavailable")
    );
    assert!(!gw2.log_text().contains(&wrong), "{}", gw2.log_text());
    // `signgate check`: the missing file is named by its key, exit 64.
    std::fs::remove_file(&pw_file).unwrap();
    let out = std::process::Command::new(signgate_bin())
        .args(["check", "--config"])
        .arg(fx.write_config(&toml))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("fleet.redis_password_file"), "{err}");
}

/// Old builds dropped a reflection that Redis could not take: instance A
/// sent a request while Redis was down, and once Redis was back instance B
/// accepted that request's signature as a webhook and delivered the forged
/// event. Now A keeps the write and makes it once Redis answers; while
/// Redis is down, B cannot ask and the webhook's secret also signs outbound
/// requests, so B refuses it `503 reflection_check_unavailable` (the
/// provider retries) rather than accept it on its own memory.
#[tokio::test]
async fn a_signature_sent_while_redis_is_down_is_refused_by_another_instance_once_it_is_back() {
    let mut redis = RedisServer::start();
    let app = App::start_on(0).await;
    let forward = format!("http://{}/events", app.addr);
    let f = Fleet::start(&redis.url(), |c, _| c.webhook(Webhook::kwikpaisa(&forward))).await;
    let (a, b) = (&f.gws[0], &f.gws[1]);
    redis.kill();
    let body = r#"{"event":"payment.success","order_id":"FL-2"}"#;
    assert_eq!(post(a, "/kwikpaisa/api/v3/pg/order/status", body).await.status, 200);
    let rec = f.fx.provider.standin.records().await.pop().unwrap();
    let (ts, sig) = (
        rec.headers["x-timestamp"].to_str().unwrap().to_string(),
        rec.headers["x-signature"].to_str().unwrap().to_string(),
    );
    let replay = |gw: &GatewayProcess| {
        let url = gw.url("/webhooks/kwikpaisa");
        let (ts, sig, body) = (ts.clone(), sig.clone(), rec.body.clone());
        async move {
            TestClient::new()
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
                .await
        }
    };
    let r = replay(b).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (503, "reflection_check_unavailable"),
        "{:?}",
        r.body
    );
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(replay(a).await.code(), "reflected_signature", "A's own memory knows it");
    assert!(
        b.metric("signgate_fleet_fallback_total", &[("what", "reflection_refused")])
            .await
            >= 1.0
    );
    let kept = eventually(Duration::from_secs(5), || async {
        a.metric("signgate_reflection_guard_redis_pending", &[]).await == 1.0
    })
    .await;
    assert!(kept, "A keeps the write Redis did not take");

    redis.restart();
    f.wait_up(a, true).await;
    let written = eventually(Duration::from_secs(10), || async {
        a.metric("signgate_reflection_guard_redis_pending", &[]).await == 0.0
    })
    .await;
    assert!(written, "{}", a.log_text());
    assert!(redis.cli(&["--scan", "--pattern", "*refl*"]).lines().count() >= 1);
    f.wait_up(b, true).await;
    for gw in &f.gws[1..] {
        let r = replay(gw).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (401, "reflected_signature"),
            "{:?}",
            r.body
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count().await, 0, "nothing forged was delivered");
}
