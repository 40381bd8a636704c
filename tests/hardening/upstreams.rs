//! B. Faulty upstreams: each test starts one or more [`Faulty`] servers (real
//! TLS on loopback), routes `/NAME/` to them next to the rig's genuine
//! provider, injects the fault through a request, asserts the behaviour of
//! `docs/security.md`, then the four after-fault conditions. The faulty servers
//! are stopped before `after_fault`, so the gateway's pooled connections to
//! them close and resources must return to the baseline.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::faulty::*;
use crate::harness::*;
use crate::support::*;

/// A POST of a fresh order to `path` on raw TCP, with `Connection: close`
/// so that the gateway closes the connection once the response is over.
async fn raw_post(rig: &Rig, path: &str) -> TcpStream {
    let body = order_body();
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// Body bytes after the head of a raw HTTP/1 response.
fn body_len(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| raw.len() - i - 4)
}

/// Audit records (parsed) whose `reason` is `reason`.
fn audit_with_reason(rig: &Rig, reason: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(rig.audit_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == reason)
        .collect()
}

/// The rig, its gateway also trusting `pki`'s CA: the faulty servers start
/// before the rig (which makes its own PKI), with certificates from `pki`.
/// `edit` changes the rig's configuration.
async fn rig_trusting(pki: &Pki, edit: impl FnOnce(GatewayToml) -> GatewayToml) -> Rig {
    let fx = Fixture::new().await;
    // `egress.ca_file` becomes a file with both CAs.
    let both = pki.dir.path().join("trusted.pem");
    std::fs::write(&both, fx.pki.ca.cert_pem() + &pki.ca.cert_pem()).unwrap();
    let toml = edit(Rig::config(&fx).egress_ca(&both));
    Rig::on(fx, toml, &[]).await
}

async fn post(rig: &Rig, path: &str) -> Reply {
    TestClient::new().post(&rig.url(path), &order_body()).await
}

/// B1 connection refused: 502 `upstream_unreachable`, with exactly one retry.
/// A refused connect leaves no trace on a server, so the attempts are
/// observed on three separate paths of the gateway: the counters
/// `signgate_upstream_errors_total{kind="connect"}` (every failed attempt)
/// and `signgate_signatures_total` (every attempt is signed afresh), exactly
/// 2 per request, and the debug log's one "retrying once" line per request.
/// A live server that accepts and closes at once (a TLS failure, not a
/// refusal) sees exactly one connection per request: nothing but a refused
/// connect is retried.
#[tokio::test]
async fn b01_refused_connect_is_502_unreachable_with_one_retry() {
    let pki_other = pki();
    let closer = Faulty::start(pki_other.server_tls.clone(), Behavior::AcceptClose).await;
    // A port bound but not listening: connects are refused (RST), and no
    // other test's listener can take it meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let down = held.local_addr().unwrap().port();
    let rig = Rig::with_env(
        |c| {
            c.route(route_to("down", &format!("https://127.0.0.1:{down}")))
                .route(route_to("closer", &format!("https://127.0.0.1:{}", closer.port())))
        },
        &[("SIGNGATE_LOG", "signgate=debug")],
    )
    .await;
    let before = rig.baseline().await;
    const N: usize = 3;
    for _ in 0..N {
        let r = post(&rig, "/down/api/v3/pg/order/create").await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (502, "upstream_unreachable"));
    }
    for i in 1..=N {
        let r = post(&rig, "/closer/api/v3/pg/order/create").await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (502, "upstream_tls"));
        assert_eq!(closer.accepted(), i, "a connection that was accepted is never retried");
    }
    assert_eq!(closer.requests(), 0);
    let retries = || {
        rig.gw
            .log_text()
            .lines()
            .filter(|l| l.contains("retrying once") && l.contains("down"))
            .count()
    };
    // The log is read from the child's stderr by a thread: give it a moment.
    eventually(Duration::from_secs(3), || async { retries() >= N }).await;
    assert_eq!(retries(), N, "one retry per refused request:\n{}", rig.gw.log_text());
    drop((closer, held));
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "down"), ("kind", "connect")],
                2.0 * N as f64,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "down"), ("reason", "upstream_unreachable")],
                N as f64,
            )
            .counter(
                "signgate_signatures_total",
                &[("route", "down"), ("credential", "kwikpaisa")],
                2.0 * N as f64,
            )
            .counter(
                "signgate_signatures_total",
                &[("route", "closer"), ("credential", "kwikpaisa")],
                N as f64,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "closer"), ("kind", "tls")],
                N as f64,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "closer"), ("kind", "connect")],
                0.0,
            ),
    )
    .await;
}

/// B2 connect or TLS handshake hangs: a server that accepts TCP and never
/// answers the ClientHello, and a blackholed connect (a listener whose
/// backlog is full, so the kernel drops further SYNs) both end in 504
/// `upstream_timeout` at `connect_timeout_ms` (1 s here; the request timeout
/// is raised to 6 s to tell them apart), once: a timed-out connect is not
/// retried (the blackhole, which counts nothing, answers within 1.8 s: a
/// second attempt would take ≥ 2 s), and the gateway lets go of the stalled socket.
#[tokio::test]
async fn b02_hanging_connect_or_handshake_is_504_at_connect_timeout() {
    let pki_rig = pki();
    let hang = Faulty::start(pki_rig.server_tls.clone(), Behavior::HangHandshake).await;
    // A listener with backlog 1 that never accepts; fill its queue first.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let blackhole = sock.listen(1).unwrap();
    let bh = blackhole.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(bh)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the backlog never filled: a connect to it would not hang");
    let rig = rig_trusting(&pki_rig, |c| {
        c.route(route_to("hang", &format!("https://localhost:{}", hang.port())))
            .route(route_to("blackhole", &format!("https://127.0.0.1:{}", bh.port())))
            .egress("request_timeout_ms", 6000)
    })
    .await;
    let before = rig.baseline().await;
    for path in ["/hang/x", "/blackhole/x"] {
        let t = Instant::now();
        let r = post(&rig, path).await;
        let took = t.elapsed();
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (504, "upstream_timeout"),
            "{path}"
        );
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(3_500),
            "{path}: answered after {took:?}; connect_timeout is 1 s, request_timeout 6 s"
        );
        if path == "/blackhole/x" {
            // The blackhole accepts nothing, so only the time can show a
            // retry: a second 1 s connect attempt would end at ≥ 2 s. 0.8 s
            // of slack for a loaded machine stays below that.
            assert!(
                took > Duration::from_millis(900) && took < Duration::from_millis(1_800),
                "{path}: answered after {took:?}; one 1 s connect attempt, no retry"
            );
        }
    }
    assert_eq!(hang.accepted(), 1, "a timed-out handshake is not retried");
    assert_eq!(hang.requests(), 0);
    assert!(
        eventually(Duration::from_secs(3), || async { hang.open() == 0 }).await,
        "the gateway kept the stalled handshake open"
    );
    drop(hang);
    drop(fillers);
    drop(blackhole);
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "hang"), ("kind", "timeout")],
                1.0,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "blackhole"), ("kind", "timeout")],
                1.0,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "blackhole"), ("kind", "connect")],
                0.0,
            ),
    )
    .await;
}

/// B3 hangs before the response head: 504 `upstream_timeout` at
/// `request_timeout_ms` (2 s), never retried (one request per call at the
/// upstream), and the connection is not reused: each call arrives on a new
/// connection and the gateway closes the stalled ones.
#[tokio::test]
async fn b03_no_response_head_is_504_at_request_timeout_and_not_reused() {
    let pki_rig = pki();
    let f = Faulty::start(pki_rig.server_tls.clone(), Behavior::HangBeforeHead).await;
    let rig = rig_trusting(&pki_rig, |c| c.route(faulty_route(f.port()))).await;
    let before = rig.baseline().await;
    for i in 1..=2 {
        let t = Instant::now();
        let r = post(&rig, "/faulty/api/v3/pg/order/create").await;
        let took = t.elapsed();
        assert_eq!((r.status.as_u16(), r.code().as_str()), (504, "upstream_timeout"));
        assert!(
            took >= Duration::from_millis(1_950) && took < Duration::from_millis(4_500),
            "answered after {took:?}; request_timeout is 2 s"
        );
        assert_eq!(f.requests(), i, "written once, never retried");
        assert_eq!(f.accepted(), i, "each call on a new connection");
        assert!(
            eventually(Duration::from_secs(3), || async { f.open() == 0 }).await,
            "the stalled connection was kept (it could be reused)"
        );
    }
    drop(f);
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "faulty"), ("kind", "timeout")],
                2.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "faulty"), ("reason", "upstream_timeout")],
                2.0,
            ),
    )
    .await;
}

/// B4 hangs after the head / trickles the body: with
/// `egress.response_idle_timeout_ms = 1000`, a body that stalls after 10
/// bytes, and one that trickles a byte every 2.5 s, are cut about 1 s into
/// the pause (the client sees the connection close short of Content-Length),
/// counted as `signgate_upstream_errors_total{kind="response_idle"}` and
/// audited with reason `upstream_response_idle`. A body trickling a byte
/// every 200 ms for longer than the timeout in total is delivered whole: the
/// timer measures gaps, not the whole body.
#[tokio::test]
async fn b04_stalled_or_trickled_body_hits_response_idle_timeout() {
    let pki_rig = pki();
    let stall = Faulty::start(pki_rig.server_tls.clone(), Behavior::HangAfterHead).await;
    let slow = Faulty::start(
        pki_rig.server_tls.clone(),
        Behavior::Trickle {
            every: Duration::from_millis(2_500),
            len: 5,
        },
    )
    .await;
    let steady = Faulty::start(
        pki_rig.server_tls.clone(),
        Behavior::Trickle {
            every: Duration::from_millis(200),
            len: 10,
        },
    )
    .await;
    let rig = rig_trusting(&pki_rig, |c| {
        c.egress("response_idle_timeout_ms", 1000)
            .route(route_to("stall", &format!("https://localhost:{}", stall.port())))
            .route(route_to("slow", &format!("https://localhost:{}", slow.port())))
            .route(route_to("steady", &format!("https://localhost:{}", steady.port())))
    })
    .await;
    let before = rig.baseline().await;
    assert_eq!(
        before.metric(
            "signgate_upstream_errors_total",
            &[("route", "stall"), ("kind", "response_idle")]
        ),
        0.0
    );
    assert!(
        before.metrics.contains("kind=\"response_idle\""),
        "the response_idle series is pre-created"
    );
    let (a, b, c) = tokio::join!(
        async {
            let t = Instant::now();
            let mut s = raw_post(&rig, "/stall/x").await;
            (read_until_closed(&mut s, Duration::from_secs(8)).await, t.elapsed())
        },
        async {
            let t = Instant::now();
            let mut s = raw_post(&rig, "/slow/x").await;
            (read_until_closed(&mut s, Duration::from_secs(8)).await, t.elapsed())
        },
        async {
            let t = Instant::now();
            let mut s = raw_post(&rig, "/steady/x").await;
            (read_until_closed(&mut s, Duration::from_secs(8)).await, t.elapsed())
        },
    );
    let (stall_raw, stall_took) = (a.0.expect("stalled body never cut"), a.1);
    assert_eq!(status_of(&stall_raw), Some(200));
    assert_eq!(body_len(&stall_raw), 10, "cut short of the announced 1000 bytes");
    assert!(
        stall_took >= Duration::from_millis(950) && stall_took < Duration::from_millis(4_000),
        "stalled body cut after {stall_took:?}; response_idle_timeout is 1 s"
    );
    let (slow_raw, slow_took) = (b.0.expect("trickled body never cut"), b.1);
    assert_eq!(status_of(&slow_raw), Some(200));
    assert!(body_len(&slow_raw) < 5, "cut short of the announced 5 bytes");
    assert!(
        slow_took < Duration::from_millis(4_500),
        "trickled body cut after {slow_took:?}; one byte per 2.5 s, response_idle_timeout 1 s"
    );
    let (steady_raw, steady_took) = (c.0.expect("steady body not finished"), c.1);
    assert_eq!(status_of(&steady_raw), Some(200));
    assert_eq!(body_len(&steady_raw), 10, "a steady trickle is delivered whole");
    assert!(steady_took >= Duration::from_millis(1_800), "{steady_took:?}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            audit_with_reason(&rig, "upstream_response_idle").len() == 2
        })
        .await,
        "each cut is audited once with its reason"
    );
    for rec in audit_with_reason(&rig, "upstream_response_idle") {
        assert_eq!(rec["status"], 200);
        assert!(rec["route"] == "stall" || rec["route"] == "slow", "{rec}");
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            stall.open() == 0 && slow.open() == 0
        })
        .await,
        "the gateway kept the stalled upstream connections"
    );
    assert_eq!((stall.requests(), slow.requests(), steady.requests()), (1, 1, 1));
    drop((stall, slow, steady));
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "stall"), ("kind", "response_idle")],
                1.0,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "slow"), ("kind", "response_idle")],
                1.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "stall"), ("reason", "upstream_response_idle")],
                1.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "slow"), ("reason", "upstream_response_idle")],
                1.0,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "steady"), ("kind", "response_idle")],
                0.0,
            ),
    )
    .await;
}

/// B5 resets mid-body / closes with no response: a reset after the head
/// cuts the client's stream (closed short of Content-Length, counted as
/// `kind="reset"`); a close with no response is 502 `upstream_failed`. The
/// POST was written, so neither is retried: exactly one request and one
/// connection at each upstream.
#[tokio::test]
async fn b05_reset_mid_body_or_close_without_response_is_never_retried() {
    let pki_rig = pki();
    let reset = Faulty::start(pki_rig.server_tls.clone(), Behavior::ResetMidBody).await;
    let close = Faulty::start(pki_rig.server_tls.clone(), Behavior::CloseWithoutResponse).await;
    let rig = rig_trusting(&pki_rig, |c| {
        c.route(route_to("reset", &format!("https://localhost:{}", reset.port())))
            .route(route_to("close", &format!("https://localhost:{}", close.port())))
    })
    .await;
    let before = rig.baseline().await;
    let mut s = raw_post(&rig, "/reset/x").await;
    let raw = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("stream not cut after the upstream reset");
    assert_eq!(status_of(&raw), Some(200), "{:?}", String::from_utf8_lossy(&raw));
    assert!(body_len(&raw) < 100_000, "cut short of the announced 100000 bytes");
    let r = post(&rig, "/close/x").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (502, "upstream_failed"));
    assert_eq!((reset.requests(), reset.accepted()), (1, 1), "reset: never retried");
    assert_eq!((close.requests(), close.accepted()), (1, 1), "close: never retried");
    assert!(
        eventually(Duration::from_secs(3), || async {
            audit_with_reason(&rig, "upstream_failed").len() == 2
        })
        .await,
        "both failures audited"
    );
    drop((reset, close));
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "reset"), ("kind", "reset")],
                1.0,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "close"), ("kind", "reset")],
                1.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "close"), ("reason", "upstream_failed")],
                1.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "reset"), ("reason", "upstream_failed")],
                1.0,
            ),
    )
    .await;
}

/// Read `n` bytes of a response body from `s`, sampling the gateway's RSS;
/// returns (time to the first body byte, highest RSS in KiB).
async fn read_sampling(s: &mut TcpStream, n: usize, pid: u32) -> (Duration, u64) {
    let t = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut got, mut first, mut peak, mut next_sample) = (0usize, None, 0u64, 0usize);
    while got < n {
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the stream stalled")
            .unwrap();
        assert!(k > 0, "closed after {got} bytes");
        first.get_or_insert_with(|| t.elapsed());
        got += k;
        if got >= next_sample {
            peak = peak.max(proc_status(pid).0);
            next_sample += 4 << 20;
        }
    }
    (first.unwrap(), peak)
}

/// B6 huge or endless response: a 1 GiB Content-Length body and an endless
/// chunked one are streamed, not buffered: the first bytes reach the client
/// at once, 96 MiB of each pass through while the gateway's RSS stays
/// within 48 MiB of its baseline, and when the client leaves, the upstream
/// connection is closed too.
#[tokio::test]
async fn b06_huge_or_endless_response_is_streamed_with_bounded_memory() {
    let pki_rig = pki();
    let huge = Faulty::start(pki_rig.server_tls.clone(), Behavior::Huge(1 << 30)).await;
    let endless = Faulty::start(pki_rig.server_tls.clone(), Behavior::Endless).await;
    let rig = rig_trusting(&pki_rig, |c| {
        c.route(route_to("huge", &format!("https://localhost:{}", huge.port())))
            .route(route_to("endless", &format!("https://localhost:{}", endless.port())))
    })
    .await;
    let before = rig.baseline().await;
    const READ: usize = 96 << 20;
    const SLACK_KIB: u64 = 48 * 1024;
    for (path, f) in [("/huge/x", &huge), ("/endless/x", &endless)] {
        let mut s = raw_post(&rig, path).await;
        let (first, peak) = read_sampling(&mut s, READ, rig.pid()).await;
        assert!(first < Duration::from_secs(2), "{path}: first bytes after {first:?}");
        assert!(
            peak <= before.rss_kib + SLACK_KIB,
            "{path}: RSS peaked at {peak} KiB, baseline {} KiB",
            before.rss_kib
        );
        drop(s);
        assert!(
            eventually(Duration::from_secs(5), || async { f.open() == 0 }).await,
            "{path}: the upstream connection outlived the client"
        );
        assert_eq!(f.requests(), 1);
    }
    drop((huge, endless));
    rig.after_fault(&before, Expect::new()).await;
}

/// B7 wrong hostname, unknown CA, expired certificate, TLS 1.0-only: each
/// is 502 `upstream_tls` after one handshake attempt (the server sees its
/// connection) and nothing is sent: no request reaches any of them (the TLS
/// 1.0 server is `openssl s_server -tls1`, whose output shows the failed
/// handshake and no request bytes). A certificate made like the expired one
/// but still valid is accepted, so the refusal is the expiry's.
#[tokio::test]
async fn b07_bad_upstream_tls_is_502_and_nothing_is_sent() {
    let pki_rig = pki();
    let wrong_name = Faulty::start(
        server_config(&pki_rig.ca.server(&["other.example"]).unwrap()),
        Behavior::Slow(Duration::ZERO),
    )
    .await;
    let other_ca = signgate::devtools::pki::DevCa::new("unrelated CA").unwrap();
    let unknown_ca = Faulty::start(
        server_config(&other_ca.server(&["localhost"]).unwrap()),
        Behavior::Slow(Duration::ZERO),
    )
    .await;
    let old = OldTls::start(&pki_rig.ca.server(&["localhost"]).unwrap());
    let expired = Faulty::start(
        rig_ca_server_config("signgate test CA", pki_rig.ca.key_pem(), true),
        Behavior::Slow(Duration::ZERO),
    )
    .await;
    // The control: made the same way, not expired, and accepted.
    let fresh = Faulty::start(
        rig_ca_server_config("signgate test CA", pki_rig.ca.key_pem(), false),
        Behavior::Slow(Duration::ZERO),
    )
    .await;
    let routes = [
        route_to("wrongname", &format!("https://localhost:{}", wrong_name.port())),
        route_to("unknownca", &format!("https://localhost:{}", unknown_ca.port())),
        route_to("expired", &format!("https://localhost:{}", expired.port())),
        route_to("tls10", &format!("https://localhost:{}", old.port)),
        route_to("fresh", &format!("https://localhost:{}", fresh.port())),
    ];
    let rig = rig_trusting(&pki_rig, |c| c.routes(routes)).await;
    let before = rig.baseline().await;
    let control = post(&rig, "/fresh/api/v3/pg/order/create").await;
    assert_eq!(control.status, 200, "the unexpired control certificate was refused");
    assert_eq!(fresh.requests(), 1);
    for route in ["wrongname", "unknownca", "expired", "tls10"] {
        let r = post(&rig, &format!("/{route}/api/v3/pg/order/create")).await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (502, "upstream_tls"), "{route}");
    }
    for (name, f) in [
        ("wrongname", &wrong_name),
        ("unknownca", &unknown_ca),
        ("expired", &expired),
    ] {
        assert_eq!(f.accepted(), 1, "{name}: one handshake attempt, not retried");
        assert_eq!(f.requests(), 0, "{name}: a request crossed an unverified connection");
        assert!(
            eventually(Duration::from_secs(3), || async { f.handshake_failures() == 1 }).await,
            "{name}: the handshake did not fail"
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            old.err.lock().unwrap().contains("ERROR")
        })
        .await,
        "the TLS 1.0 server saw no failed handshake: {}",
        old.err.lock().unwrap()
    );
    assert!(
        !old.out.lock().unwrap().contains("POST"),
        "bytes reached the TLS 1.0 server"
    );
    drop((wrong_name, unknown_ca, expired, fresh, old));
    let mut e = Expect::new();
    for route in ["wrongname", "unknownca", "expired", "tls10"] {
        e = e
            .counter(
                "signgate_upstream_errors_total",
                &[("route", route), ("kind", "tls")],
                1.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", route), ("reason", "upstream_tls")],
                1.0,
            );
    }
    rig.after_fault(&before, e).await;
}

/// B8 redirects are never followed: 301, 302, 307 and 308 pointing at
/// another live server are passed back to the client as they are (status
/// and `Location`), the POST reaches the redirecting upstream once, and the
/// redirect target receives no connection at all.
#[tokio::test]
async fn b08_redirects_are_passed_through_never_followed() {
    let pki_rig = pki();
    let target = Faulty::start(pki_rig.server_tls.clone(), Behavior::Slow(Duration::ZERO)).await;
    let location = format!("https://localhost:{}/api/v3/pg/order/create", target.port());
    let mut servers = Vec::new();
    let mut routes = Vec::new();
    for status in [301u16, 302, 307, 308] {
        let f = Faulty::start(
            pki_rig.server_tls.clone(),
            Behavior::Respond {
                status,
                headers: vec![("location".into(), location.clone())],
                body: String::new(),
            },
        )
        .await;
        routes.push(route_to(
            &format!("r{status}"),
            &format!("https://localhost:{}", f.port()),
        ));
        servers.push((status, f));
    }
    let rig = rig_trusting(&pki_rig, |c| c.routes(routes)).await;
    let before = rig.baseline().await;
    for (status, f) in &servers {
        let r = post(&rig, &format!("/r{status}/api/v3/pg/order/create")).await;
        assert_eq!(r.status.as_u16(), *status);
        assert_eq!(r.headers["location"], location.as_str());
        assert_eq!(f.requests(), 1, "{status}: sent once");
    }
    assert_eq!(target.accepted(), 0, "the redirect target was contacted");
    drop(servers);
    drop(target);
    rig.after_fault(&before, Expect::new()).await;
}

/// B9 429 and 503 with `Retry-After` are passed through with their
/// `Retry-After`, counted in `signgate_upstream_backoff_total`, and never
/// retried (exactly one request at the upstream each).
#[tokio::test]
async fn b09_429_and_503_with_retry_after_pass_through_once() {
    let pki_rig = pki();
    let mut servers = Vec::new();
    let mut routes = Vec::new();
    for (status, after) in [(429u16, "7"), (503, "120")] {
        let f = Faulty::start(
            pki_rig.server_tls.clone(),
            Behavior::Respond {
                status,
                headers: vec![("retry-after".into(), after.into())],
                body: format!(r#"{{"status":false,"code":{status}}}"#),
            },
        )
        .await;
        routes.push(route_to(
            &format!("s{status}"),
            &format!("https://localhost:{}", f.port()),
        ));
        servers.push((status, after, f));
    }
    let rig = rig_trusting(&pki_rig, |c| c.routes(routes)).await;
    let before = rig.baseline().await;
    for (status, after, f) in &servers {
        let r = post(&rig, &format!("/s{status}/api/v3/pg/order/create")).await;
        assert_eq!(r.status.as_u16(), *status);
        assert_eq!(r.headers["retry-after"], *after);
        assert!(String::from_utf8_lossy(&r.body).contains(&format!("\"code\":{status}")));
        assert_eq!(f.requests(), 1, "{status}: never retried");
    }
    drop(servers);
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_upstream_backoff_total",
                &[("route", "s429"), ("status", "429")],
                1.0,
            )
            .counter(
                "signgate_upstream_backoff_total",
                &[("route", "s503"), ("status", "503")],
                1.0,
            ),
    )
    .await;
}

/// B10 every upstream connection comes from `egress.source_addr`
/// (127.0.0.2): pooled connections reused by sequential calls, new ones
/// opened by concurrent calls, connections replaced after a timed-out call,
/// and the genuine provider's probes. (A retry follows only a refused
/// connect, whose source no server can record; it is made by the same
/// connector, which binds every socket it opens.)
#[tokio::test]
async fn b10_every_upstream_connection_comes_from_source_addr() {
    let pki_rig = pki();
    let ok = Faulty::start(pki_rig.server_tls.clone(), Behavior::Slow(Duration::from_millis(100))).await;
    let hang = Faulty::start(pki_rig.server_tls.clone(), Behavior::HangBeforeHead).await;
    let rig = rig_trusting(&pki_rig, |c| {
        c.egress("source_addr", "127.0.0.2")
            .route(route_to("ok", &format!("https://localhost:{}", ok.port())))
            .route(route_to("hang", &format!("https://localhost:{}", hang.port())))
    })
    .await;
    let before = rig.baseline().await;
    for _ in 0..3 {
        assert_eq!(post(&rig, "/ok/x").await.status, 200);
    }
    let (a, b, c) = tokio::join!(post(&rig, "/ok/x"), post(&rig, "/ok/x"), post(&rig, "/ok/x"));
    assert!([a.status, b.status, c.status].iter().all(|s| *s == 200));
    for _ in 0..2 {
        assert_eq!(post(&rig, "/hang/x").await.status, 504);
    }
    assert!(ok.accepted() >= 3, "the concurrent calls opened new connections");
    assert_eq!(ok.requests(), 6);
    assert_eq!(hang.accepted(), 2);
    let peers: Vec<_> = ok.peers().into_iter().chain(hang.peers()).collect();
    assert!(
        peers.iter().all(|p| p.ip().to_string() == "127.0.0.2"),
        "connections not from source_addr: {peers:?}"
    );
    drop((ok, hang));
    let after = rig
        .after_fault(
            &before,
            Expect::new().counter(
                "signgate_upstream_errors_total",
                &[("route", "hang"), ("kind", "timeout")],
                2.0,
            ),
        )
        .await;
    assert!(after.provider > 0);
    for rec in rig.provider.standin.records().await {
        assert_eq!(
            rec.peer.ip().to_string(),
            "127.0.0.2",
            "a probe left from another address"
        );
    }
}

/// B11 pool exhaustion: with `max_inflight = 2` and `queue_timeout_ms =
/// 400`, six concurrent calls to an upstream that takes 1.5 s: two are
/// served, four wait 0.4 s and get 503 `upstream_busy` (nothing signed or
/// sent), and the upstream never has more than two requests in progress.
/// Queued calls within the deadline are served in turn (`max_inflight = 1`,
/// three calls of 0.3 s each). A slot stays taken while a response body
/// streams, so a stalled body also counts against the bound.
#[tokio::test]
async fn b11_pool_exhaustion_is_bounded_queued_then_503() {
    let pki_rig = pki();
    let slow = Faulty::start(pki_rig.server_tls.clone(), Behavior::Slow(Duration::from_millis(1_500))).await;
    let turn = Faulty::start(pki_rig.server_tls.clone(), Behavior::Slow(Duration::from_millis(300))).await;
    let stall = Faulty::start(pki_rig.server_tls.clone(), Behavior::HangAfterHead).await;
    let rig = rig_trusting(&pki_rig, |c| {
        c.egress("response_idle_timeout_ms", 1500)
            .route(
                route_to("slow", &format!("https://localhost:{}", slow.port()))
                    .max_inflight(2)
                    .queue_timeout_ms(400),
            )
            .route(
                route_to("turn", &format!("https://localhost:{}", turn.port()))
                    .max_inflight(1)
                    .queue_timeout_ms(3000),
            )
            .route(
                route_to("stall", &format!("https://localhost:{}", stall.port()))
                    .max_inflight(1)
                    .queue_timeout_ms(300),
            )
    })
    .await;
    let before = rig.baseline().await;
    let t = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|_| async {
            let t = Instant::now();
            let r = post(&rig, "/slow/x").await;
            (r, t.elapsed())
        })
        .collect();
    let timed = futures_util::future::join_all(calls).await;
    for (r, took) in &timed {
        if r.status == 503 {
            assert!(
                *took >= Duration::from_millis(380),
                "refused after {took:?}, before the queue deadline"
            );
        }
    }
    let replies: Vec<Reply> = timed.into_iter().map(|(r, _)| r).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        (ok, busy.len()),
        (2, 4),
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(busy.iter().all(|r| r.code() == "upstream_busy"));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(slow.requests(), 2, "refused calls reached the upstream");
    assert_eq!(slow.max_concurrent(), 2);
    // Within the queue deadline, excess calls wait their turn.
    let calls: Vec<_> = (0..3).map(|_| post(&rig, "/turn/x")).collect();
    let replies = futures_util::future::join_all(calls).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!((turn.requests(), turn.max_concurrent()), (3, 1));
    // A streaming (here stalled) body keeps its slot until it is over.
    let mut s = raw_post(&rig, "/stall/x").await;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(status_of(&head), Some(200));
    let r = post(&rig, "/stall/x").await;
    assert_eq!(
        r.status, 503,
        "a second call got past the slot held by a streaming body"
    );
    assert_eq!(r.code(), "upstream_busy");
    assert_eq!(stall.requests(), 1);
    read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("stalled body not cut");
    drop((slow, turn, stall));
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_denied_total",
                &[("route", "slow"), ("reason", "upstream_busy")],
                4.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "stall"), ("reason", "upstream_busy")],
                1.0,
            )
            .counter(
                "signgate_upstream_errors_total",
                &[("route", "stall"), ("kind", "response_idle")],
                1.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "stall"), ("reason", "upstream_response_idle")],
                1.0,
            ),
    )
    .await;
}
