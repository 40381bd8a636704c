//! A. Hostile or broken clients.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::support::{connect_from, eventually, quota, read_until_closed, Fixture, GatewayProcess, Route, TestClient};

const DENIED: &str = "signgate_denied_total";
const CLOSED: &str = "signgate_connections_closed_total";

/// A raw HTTP/1.1 POST to `path` with a JSON content type and `extra` head lines.
fn post_head(path: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{extra}\r\n")
}

/// The canonical JSON form the gateway signs and sends (sorted keys).
fn canonical(body: &[u8]) -> Vec<u8> {
    signgate::canonical::canonicalize(body, &signgate::canonical::Options::default()).unwrap()
}

/// One HTTP/1.1 chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

/// A TLS upstream on `listener` (certificate from the rig's PKI) answering
/// every request with `size` bytes, streamed in 64 KiB chunks as the reader
/// takes them (this process's memory, not the gateway's).
fn big_upstream(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    size: usize,
) -> tokio::task::JoinHandle<()> {
    use http_body_util::BodyExt as _;
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let piece = Bytes::from(vec![b'x'; 64 * 1024]);
                    let frames = futures_util::stream::iter(
                        (0..size / piece.len())
                            .map(move |_| Ok::<_, Infallible>(hyper::body::Frame::data(piece.clone()))),
                    );
                    Ok::<_, Infallible>(http::Response::new(http_body_util::StreamBody::new(frames)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    })
}

/// A1 slowloris: headers trickled forever are cut at `header_timeout_ms`
/// (+1 s), nothing goes upstream, and other clients are served meanwhile.
#[tokio::test]
async fn a01_slowloris_is_cut_at_header_timeout() {
    let rig = Rig::start().await; // header_timeout_ms = 1000
    let before = rig.baseline().await;
    const N: usize = 5;
    let mut slow = Vec::new();
    // The gateway's header timer starts at the first byte, so each
    // connection is timed from just before its first write.
    let mut started = Vec::new();
    for _ in 0..N {
        let mut s = tokio::net::TcpStream::connect(rig.gw.addr).await.unwrap();
        started.push(Instant::now());
        s.write_all(format!("POST {PROBE_PATH} HTTP/1.1\r\nHost: gw\r\nX-Slow: a").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    // Trickle one byte every 200 ms on each, while a normal client is served.
    let trickle = tokio::spawn(async move {
        let mut closed_at = vec![None; N];
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline && closed_at.iter().any(Option::is_none) {
            for (i, s) in slow.iter_mut().enumerate() {
                if closed_at[i].is_none() && s.write_all(b"a").await.is_err() {
                    closed_at[i] = Some(Instant::now());
                }
                if closed_at[i].is_none() {
                    let mut b = [0u8; 64];
                    if let Ok(Ok(0)) =
                        tokio::time::timeout(Duration::from_millis(1), tokio::io::AsyncReadExt::read(s, &mut b)).await
                    {
                        closed_at[i] = Some(Instant::now());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        closed_at
    });
    rig.probe().await;
    let closed_at = trickle.await.unwrap();
    for (i, c) in closed_at.iter().enumerate() {
        let at = c.unwrap_or_else(|| panic!("slow connection {i} still open after 4 s"));
        // header_timeout_ms + 1 s from the first byte: the +1 s covers the
        // trickle loop's 200 ms polling and a busy scheduler.
        let took = at.duration_since(started[i]);
        assert!(
            took <= Duration::from_millis(2_000),
            "slow connection {i} closed {took:?} after its first byte, header_timeout is 1 s"
        );
    }
    rig.after_fault(
        &before,
        Expect::new().counter(
            "signgate_connections_closed_total",
            &[("reason", "header_timeout")],
            N as f64,
        ),
    )
    .await;
}

/// A2 slow body upload and slow readers (HTTP/1 and HTTP/2). A body that pauses longer than
/// `body_idle_timeout_ms` (gap timer) gets 408 long before `body_timeout_ms`
/// (total deadline); a body trickled under the gap still meets the total
/// deadline (408). A client that stops reading an endless-looking 64 MiB
/// response is dropped at `write_idle_timeout_ms` (800 ms; asserted within
/// 800 ms + 2 s of the stall, for buffers to fill and a busy machine), counted
/// `connections_closed{reason="write_timeout"}`, and the gateway's RSS
/// stays bounded meanwhile (the response is streamed, not buffered); so is
/// an HTTP/2 client that keeps reading but never opens its stream window.
#[tokio::test]
async fn a02_slow_body_and_slow_reader_hit_idle_timeouts() {
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = up.local_addr().unwrap().port();
    // body_timeout 3 s (total), body_idle_timeout 500 ms (gap): far apart, so
    // which one fired is unambiguous even on a busy machine.
    let rig = Rig::with(|c| {
        c.listener("body_idle_timeout_ms", 500)
            .listener("write_idle_timeout_ms", 800)
            .listener("body_timeout_ms", 3000)
            .route(Route::to("bulk", &format!("https://localhost:{port}")))
    })
    .await;
    const SIZE: usize = 64 << 20;
    let _upstream = big_upstream(up, rig.pki.server_tls.clone(), SIZE);
    let before = rig.baseline().await;

    // (a) a pause: 408 at the gap timer (500 ms), well before the 3 s total.
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(post_head(PROBE_PATH, "Content-Length: 100\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(b"{\"order_id\":").await.unwrap();
    let t = Instant::now();
    let raw = read_response(&mut s, Duration::from_secs(5)).await;
    let took = t.elapsed();
    assert_eq!(status_of(&raw), Some(408), "{}", String::from_utf8_lossy(&raw));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2_700),
        "gap timer fired after {took:?}; body_idle_timeout is 500 ms, body_timeout 3 s"
    );

    // (b) a trickle under the gap timer still meets the total deadline (3 s).
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(post_head(PROBE_PATH, "Content-Length: 100\r\n").as_bytes())
        .await
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < Duration::from_secs(8) {
        if s.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let took = t.elapsed();
    assert_eq!(status_of(&got), Some(408), "{}", String::from_utf8_lossy(&got));
    assert!(
        took >= Duration::from_millis(2_900) && took < Duration::from_millis(5_000),
        "total body deadline fired after {took:?}; body_timeout is 3 s"
    );
    // ... and its connection closes with the answer: a client refused for
    // being slow is not lingered on (reading on would undo the timer).
    let t = Instant::now();
    let closed = loop {
        if t.elapsed() > Duration::from_secs(3) {
            break false;
        }
        if s.write_all(b" ").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            _ => {}
        }
    };
    assert!(
        closed && t.elapsed() < Duration::from_millis(1_500),
        "the connection of a client refused by body_timeout stayed open {:?} after its 408",
        t.elapsed()
    );

    // (c) a reader that stops: 8 KiB receive buffer, reads the head, then nothing.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(8 * 1024).unwrap();
    let mut s = sock.connect(rig.gw.addr).await.unwrap();
    let body = order_body();
    s.write_all(
        format!(
            "{}{body}",
            post_head("/bulk/download", &format!("Content-Length: {}\r\n", body.len()))
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert_eq!(
        status_of(&first[..n]),
        Some(200),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    // The stall starts now: we read nothing more, and loopback buffers fill
    // within milliseconds. Poll the counter (50 ms) and time it from here.
    let stalled = Instant::now();
    let rss = RssSampler::start(rig.pid());
    let mut cut_after = None;
    while stalled.elapsed() < Duration::from_secs(8) {
        if rig.snapshot().await.metric(CLOSED, &[("reason", "write_timeout")])
            - before.metric(CLOSED, &[("reason", "write_timeout")])
            == 1.0
        {
            cut_after = Some(stalled.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let max_rss = rss.max_kib();
    let cut_after = cut_after.expect("the stalled reader was not cut within 8 s");
    // write_idle_timeout (800 ms) + 2 s for buffers to fill, the gateway's
    // timer granularity, metric polling and a busy machine.
    assert!(
        cut_after <= Duration::from_millis(2_800),
        "the stalled reader was cut {cut_after:?} after it stopped reading; write_idle_timeout is 800 ms"
    );
    let rest = read_until_closed(&mut s, Duration::from_secs(15)).await;
    let rest = rest.expect("connection still open after the write timeout");
    assert!(
        n + rest.len() < SIZE,
        "the whole response was delivered ({} bytes): nothing was cut",
        n + rest.len()
    );
    let grew = max_rss.saturating_sub(before.rss_kib);
    println!("A2: gateway RSS grew by at most {grew} KiB while a 64 MiB response was stalled");
    assert!(
        grew < 16 * 1024,
        "gateway RSS grew by {grew} KiB: the response is buffered"
    );

    // (d) HTTP/2: a client that reads everything but never opens its
    // flow-control window (SETTINGS_INITIAL_WINDOW_SIZE = 0): its socket never
    // fills, the response body is never asked for, and the connection is
    // dropped at write_idle_timeout all the same.
    let body = order_body();
    let frames = vec![
        h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]),
        h2_frame(1, 0x4, 1, &h2_post_block("/bulk/download")),
        h2_frame(0, 0x1, 1, body.as_bytes()),
    ];
    let t = Instant::now();
    let (seen, _) = h2_abuse(rig.gw.addr, frames, Duration::from_secs(8)).await;
    let took = t.elapsed();
    assert!(
        seen.closed,
        "h2 stalled stream: connection still open after {took:?}: {seen:?}"
    );
    // Timed from before the connect (so a little generous): the window is
    // shut from the first frame; write_idle_timeout (800 ms) + 2 s slack.
    assert!(
        took >= Duration::from_millis(700) && took <= Duration::from_millis(2_800),
        "h2 stalled stream closed after {took:?}; write_idle_timeout is 800 ms"
    );

    rig.after_fault(
        &before,
        Expect::new()
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "body_timeout")], 2.0)
            .counter(CLOSED, &[("reason", "write_timeout")], 2.0),
    )
    .await;
}

/// A3 many idle connections: plain TCP and half-sent requests up to
/// `max_connections`. Reports memory per idle connection (RSS delta / N);
/// connections beyond the limit are closed at once and counted
/// `connections_closed{reason="limit"}`; half-sent heads are cut at
/// `header_timeout_ms` (counted). N defaults to 300 (two busy cores); set
/// `SIGNGATE_A3_CONNS=10000` to run the Envoy-scale figure by hand. The
/// TLS-handshaken and stalled-ClientHello cases are in A11 (they need a TLS
/// listener, which the standard rig's probe cannot use).
#[tokio::test]
async fn a03_idle_connections_are_bounded_counted_and_cheap() {
    let limit: usize = std::env::var("SIGNGATE_A3_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // Long enough for every half-sent head to be open at once (3.3 s at N = 300).
    let header_timeout = Duration::from_millis(3_000 + limit as u64);
    let rig = Rig::with(|c| {
        c.listener("max_connections", limit)
            .listener("header_timeout_ms", header_timeout.as_millis() as u64)
            .listener("idle_timeout_ms", 60000)
    })
    .await;
    let before = rig.baseline().await;
    let base = before.open_connections as usize;
    let plain_n = (limit - base) * 3 / 4;
    let half_n = limit - base - plain_n;
    const EXTRA: usize = 20;

    let mut plain = Vec::with_capacity(plain_n);
    for _ in 0..plain_n {
        plain.push(TcpStream::connect(rig.gw.addr).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            rig.snapshot().await.open_connections as usize == base + plain_n
        })
        .await,
        "the gateway did not hold {plain_n} idle connections"
    );
    let s = rig.snapshot().await;
    let per_conn = (s.rss_kib.saturating_sub(before.rss_kib) * 1024) / plain_n as u64;
    println!(
        "A3: {plain_n} idle connections: RSS {} -> {} KiB, about {per_conn} bytes per connection; fds {} -> {}",
        before.rss_kib, s.rss_kib, before.fds, s.fds
    );
    assert!(per_conn < 64 * 1024, "{per_conn} bytes per idle connection");

    let mut half = Vec::with_capacity(half_n);
    for _ in 0..half_n {
        let mut c = TcpStream::connect(rig.gw.addr).await.unwrap();
        c.write_all(post_head(PROBE_PATH, "Content-Length: 2\r\n").trim_end().as_bytes())
            .await
            .unwrap();
        half.push(c);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            rig.snapshot().await.open_connections as usize == limit
        })
        .await,
        "the gateway did not reach max_connections"
    );
    // At the limit: each further connection is closed at once, unserved.
    for _ in 0..EXTRA {
        let mut c = TcpStream::connect(rig.gw.addr).await.unwrap();
        let _ = c
            .write_all(post_head(PROBE_PATH, "Content-Length: 2\r\n").as_bytes())
            .await;
        let _ = c.write_all(b"{}").await;
        let got = read_until_closed(&mut c, Duration::from_secs(2))
            .await
            .expect("a connection over max_connections was kept open");
        assert!(
            got.is_empty(),
            "served over the limit: {}",
            String::from_utf8_lossy(&got)
        );
    }
    let s = rig.snapshot().await;
    assert_eq!(
        s.metric(CLOSED, &[("reason", "limit")]) - before.metric(CLOSED, &[("reason", "limit")]),
        EXTRA as f64
    );
    // The half-sent heads are cut at header_timeout.
    for c in half.iter_mut() {
        read_until_closed(c, header_timeout + Duration::from_secs(5))
            .await
            .expect("a half-sent request outlived header_timeout");
    }
    drop(plain);
    rig.after_fault(
        &before,
        Expect::new()
            .counter(CLOSED, &[("reason", "limit")], EXTRA as f64)
            .counter(CLOSED, &[("reason", "header_timeout")], half_n as f64)
            .counter(CLOSED, &[("reason", "idle")], 0.0),
    )
    .await;
}

/// A4 oversized heads: one 70 KiB header sent in 1 KiB writes 2 ms apart → 431, 1000
/// header lines → 431 (both answered by hyper under `max_header_bytes` /
/// `max_headers`, counted `connections_closed{reason="head_too_large"}`), a
/// 10 KiB URI → 414 `uri_too_long` (`listener.max_uri_bytes`). Each
/// connection is closed, and nothing reaches the provider.
#[tokio::test]
async fn a04_oversized_heads_are_refused_before_upstream() {
    let rig = Rig::start().await;
    let before = rig.baseline().await;
    let within = Duration::from_secs(5);

    let big = format!(
        "{}{{}}",
        post_head(
            PROBE_PATH,
            &format!("X-Big: {}\r\nContent-Length: 2\r\n", "a".repeat(70 * 1024))
        )
    );
    // ~71 writes of 1 KiB, 2 ms apart: a bare yield between writes lets the
    // kernel merge them into one segment the gateway reads at once; a sleep
    // makes each piece its own read, so the limit must hold across reads.
    // (A write error after the gateway's 431 ends the loop early: fine.)
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    for piece in big.as_bytes().chunks(1024) {
        if s.write_all(piece).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let raw = read_until_closed(&mut s, within)
        .await
        .expect("70 KiB header: connection left open");
    assert_eq!(
        status_of(&raw),
        Some(431),
        "70 KiB header: {}",
        String::from_utf8_lossy(&raw)
    );

    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("{}{{}}", post_head(PROBE_PATH, &format!("{many}Content-Length: 2\r\n")));
    let raw = exchange(rig.gw.addr, &[req.as_bytes()], within)
        .await
        .expect("1000 headers: connection left open");
    assert_eq!(
        status_of(&raw),
        Some(431),
        "1000 headers: {}",
        String::from_utf8_lossy(&raw)
    );

    let uri = format!("{PROBE_PATH}?pad={}", "a".repeat(10 * 1024));
    let req = format!("{}{{}}", post_head(&uri, "Content-Length: 2\r\n"));
    let raw = exchange(rig.gw.addr, &[req.as_bytes()], within)
        .await
        .expect("10 KiB URI: connection left open");
    assert_eq!(
        status_of(&raw),
        Some(414),
        "10 KiB URI: {}",
        String::from_utf8_lossy(&raw)
    );
    assert!(String::from_utf8_lossy(&raw).contains("\"uri_too_long\""));

    rig.after_fault(
        &before,
        Expect::new()
            .counter(CLOSED, &[("reason", "head_too_large")], 2.0)
            .counter(DENIED, &[("route", "none"), ("reason", "uri_too_long")], 1.0),
    )
    .await;
}

/// A5 2 GiB bodies (body limit 1 MiB here): a declared 2 GiB Content-Length
/// gets 413 before any body byte is sent; a chunked upload gets 413 once the
/// running total passes the limit, the rest is read and discarded up to
/// `linger_bytes` and then the connection is cut while the client is still
/// sending (gateway RSS sampled throughout stays within 2× the limit +
/// 1 MiB, and the client gets to send at most the limit + the linger + 8 MiB
/// of socket buffers);
/// a Content-Length that is too small leaves the excess to
/// be parsed as a new (malformed) request, never as body; one that is too
/// big waits for bytes that never come and gets 408.
#[tokio::test]
async fn a05_huge_and_lying_bodies_are_bounded() {
    const LIMIT: usize = 1 << 20;
    // After the 413 the gateway reads and discards up to this much more
    // (lingering close), so the client reads its answer, not a reset.
    const LINGER: usize = 2 << 20;
    let rig = Rig::with(|c| c.listener("max_body_bytes", LIMIT).listener("linger_bytes", LINGER)).await;
    let before = rig.baseline().await;
    let rss = RssSampler::start(rig.pid());

    // Declared 2 GiB: refused from the head alone.
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(post_head(PROBE_PATH, "Content-Length: 2147483648\r\n").as_bytes())
        .await
        .unwrap();
    let raw = read_response(&mut s, Duration::from_secs(3)).await;
    assert_eq!(status_of(&raw), Some(413), "{}", String::from_utf8_lossy(&raw));
    drop(s);

    // Chunked: cut once the running total passes the limit.
    // 64 KiB send buffer: no autotuning on our side (tcp_wmem max is 4 MiB).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_send_buffer_size(64 * 1024).unwrap();
    let s = sock.connect(rig.gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let piece = chunk(&vec![b' '; 64 * 1024]);
        let mut sent = 0usize;
        if wr
            .write_all(post_head(PROBE_PATH, "Transfer-Encoding: chunked\r\n").as_bytes())
            .await
            .is_err()
        {
            return sent;
        }
        while sent < 256 << 20 {
            if wr.write_all(&piece).await.is_err() {
                return sent;
            }
            sent += piece.len();
        }
        sent
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let sent = writer.await.unwrap();
    assert_eq!(status_of(&got), Some(413), "chunked: {}", String::from_utf8_lossy(&got));
    // The client's send buffer is pinned small (below), so what it got to
    // send is the limit plus the gateway's receive buffer (loopback
    // autotunes it from the rate the gateway drains it, a few MiB at most
    // when reading stops at 1 MiB) plus hyper's read buffer: 8 MiB covers
    // that, on top of the linger allowance; a gateway that kept reading
    // past the limit and the linger would blow it.
    assert!(
        sent <= LIMIT + LINGER + (8 << 20),
        "the client sent {sent} bytes before the cut (limit {LIMIT})"
    );
    let max_rss = rss.max_kib();
    let grew = max_rss.saturating_sub(before.rss_kib);
    println!(
        "A5: RSS grew by at most {grew} KiB during the uploads (limit {} KiB); {sent} bytes sent before the cut",
        LIMIT / 1024
    );
    // 2x the limit (the body buffer and its canonical copy) + 1 MiB for
    // hyper's read buffers and allocator slack; measured growth ~0.4 MiB.
    assert!(
        grew <= (2 * LIMIT / 1024) as u64 + 1024,
        "RSS grew by {grew} KiB, over ~2x the {} KiB body limit",
        LIMIT / 1024
    );

    // Content-Length too small: the excess is a new request (malformed here).
    let req = format!(
        "{}{{x}}GARBAGE-NOT-HTTP\r\n\r\n",
        post_head(PROBE_PATH, "Content-Length: 3\r\n")
    );
    let raw = exchange(rig.gw.addr, &[req.as_bytes()], Duration::from_secs(5))
        .await
        .expect("short Content-Length: connection left open");
    assert_eq!(statuses_of(&raw), vec![400, 400], "{}", String::from_utf8_lossy(&raw));
    assert!(String::from_utf8_lossy(&raw).contains("\"invalid_json\""));

    // Content-Length too big: the body never completes → 408 at body_timeout.
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(format!("{}{{\"a\":1}}", post_head(PROBE_PATH, "Content-Length: 1000\r\n")).as_bytes())
        .await
        .unwrap();
    let raw = read_response(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), Some(408), "{}", String::from_utf8_lossy(&raw));

    rig.after_fault(
        &before,
        Expect::new()
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "body_too_large")], 2.0)
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "invalid_json")], 1.0)
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "body_timeout")], 1.0)
            .counter(CLOSED, &[("reason", "malformed")], 1.0),
    )
    .await;
}

/// A request that must never reach the provider: if a framing trick made
/// the gateway see it, the provider would record `/smuggled`.
const SMUGGLED: &str =
    "POST /kwikpaisa/smuggled HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// A6 ambiguous framing (RFC 9112 §6.1, §6.3): differing duplicate
/// Content-Length, obfuscated Transfer-Encoding (`xchunked`, a space before
/// the colon, `chunked, identity`), obs-fold, Transfer-Encoding on HTTP/1.0,
/// a NUL in a header → 400 from hyper, counted
/// `connections_closed{reason="malformed"}`; an unknown coding before
/// `chunked` (`gzip, chunked`) → 501 `unsupported_transfer_coding`; a bad
/// chunk size → 400 `bad_body`. Every connection is closed and nothing,
/// least of all the smuggled request behind each, reaches the provider.
///
/// CL+TE: hyper resolves it itself before the gateway sees the request
/// (Transfer-Encoding wins, Content-Length is dropped, keep-alive is turned
/// off), so a 400 cannot be enforced from the service. What is guaranteed,
/// and asserted: the body is read as chunked, the provider gets exactly
/// that body re-framed by the gateway (its own Content-Length), the
/// connection is closed after the response, and the request behind it is
/// never processed.
///
/// Identical duplicate Content-Length (`Content-Length: N` twice): allowed by
/// RFC 9112 §6.3 as one value, and hyper does so (it keeps one header). Not
/// ambiguous, so the safe outcome asserted is 200 with exactly the N body
/// bytes signed and sent, under one gateway-set Content-Length.
#[tokio::test]
async fn a06_ambiguous_framing_is_refused_and_nothing_is_smuggled() {
    let rig = Rig::start().await;
    let before = rig.baseline().await;
    let within = Duration::from_secs(5);
    let p = PROBE_PATH;
    let hyper_400: Vec<(&str, String)> = vec![
        (
            "differing Content-Length",
            format!("{}{{}}{SMUGGLED}", post_head(p, "Content-Length: 2\r\nContent-Length: 40\r\n")),
        ),
        (
            "xchunked",
            format!("{}0\r\n\r\n{SMUGGLED}", post_head(p, "Transfer-Encoding: xchunked\r\n")),
        ),
        (
            "space before colon",
            format!(
                "{}0\r\n\r\n{SMUGGLED}",
                post_head(p, "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n")
            ),
        ),
        (
            "chunked, identity",
            format!("{}0\r\n\r\n{SMUGGLED}", post_head(p, "Transfer-Encoding: chunked, identity\r\n")),
        ),
        (
            "obs-fold",
            format!(
                "{}0\r\n\r\n{SMUGGLED}",
                post_head(p, "Content-Length: 5\r\nTransfer-Encoding: identity\r\n chunked\r\n")
            ),
        ),
        (
            "TE on HTTP/1.0",
            format!(
                "POST {p} HTTP/1.0\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "NUL in a header",
            format!("{}{{}}{SMUGGLED}", post_head(p, "X-A: a\0b\r\nContent-Length: 2\r\n")),
        ),
    ];
    for (name, req) in &hyper_400 {
        let raw = exchange(rig.gw.addr, &[req.as_bytes()], within)
            .await
            .unwrap_or_else(|r| panic!("{name}: connection left open after {:?}", String::from_utf8_lossy(&r)));
        assert_eq!(
            statuses_of(&raw),
            vec![400],
            "{name}: {}",
            String::from_utf8_lossy(&raw)
        );
    }
    // A transfer coding hyper does not decode.
    let gz = chunk(b"\x1f\x8b\x08\x00");
    let req = [
        post_head(p, "Transfer-Encoding: gzip, chunked\r\n").into_bytes(),
        gz,
        b"0\r\n\r\n".to_vec(),
        SMUGGLED.as_bytes().to_vec(),
    ]
    .concat();
    let raw = exchange(rig.gw.addr, &[&req], within)
        .await
        .expect("gzip, chunked: left open");
    assert_eq!(
        statuses_of(&raw),
        vec![501],
        "gzip, chunked: {}",
        String::from_utf8_lossy(&raw)
    );
    // A bad chunk size.
    for bad in ["zz\r\n{}\r\n0\r\n\r\n", "fffffffffffffffffffff\r\n{}\r\n0\r\n\r\n"] {
        let req = format!("{}{bad}{SMUGGLED}", post_head(p, "Transfer-Encoding: chunked\r\n"));
        let raw = exchange(rig.gw.addr, &[req.as_bytes()], within)
            .await
            .expect("bad chunk size: left open");
        assert_eq!(
            statuses_of(&raw),
            vec![400],
            "bad chunk {bad:?}: {}",
            String::from_utf8_lossy(&raw)
        );
    }
    // CL+TE in both orders: read as chunked, re-framed, then the connection closes.
    for cl_first in [true, false] {
        let body = order_body();
        let framing = if cl_first {
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"
        } else {
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"
        };
        let req = [
            post_head(p, framing).into_bytes(),
            chunk(body.as_bytes()),
            b"0\r\n\r\n".to_vec(),
            SMUGGLED.as_bytes().to_vec(),
        ]
        .concat();
        let raw = exchange(rig.gw.addr, &[&req], within).await.expect("CL+TE: left open");
        assert_eq!(statuses_of(&raw), vec![200], "CL+TE: {}", String::from_utf8_lossy(&raw));
        let recs = rig.provider.standin.records().await;
        let last = recs.last().unwrap();
        assert_eq!(
            canonical(&last.body),
            canonical(body.as_bytes()),
            "CL+TE: the provider got another body"
        );
        assert_eq!(last.headers["content-length"], body.len().to_string().as_str());
        assert!(last.headers.get("transfer-encoding").is_none());
    }
    // Identical duplicate Content-Length (RFC 9112 §6.3 lets a recipient
    // treat it as one): hyper keeps one value, so the body is exactly those
    // bytes, and the provider gets it with the gateway's single length.
    // Nothing follows on the connection: with identical lengths a request
    // behind it would be a plain pipelined one, not smuggled.
    let body = order_body();
    let cl = format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", body.len());
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(format!("{}{body}", post_head(p, &cl)).as_bytes())
        .await
        .unwrap();
    let raw = read_response(&mut s, within).await;
    assert_eq!(
        statuses_of(&raw),
        vec![200],
        "identical CL: {}",
        String::from_utf8_lossy(&raw)
    );
    let recs = rig.provider.standin.records().await;
    let last = recs.last().unwrap();
    assert_eq!(canonical(&last.body), canonical(body.as_bytes()), "identical CL: body");
    assert_eq!(last.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(last.headers["content-length"], last.body.len().to_string().as_str());
    drop(s);
    let recs = rig.provider.standin.records().await;
    assert!(
        recs.iter().all(|r| !r.path_and_query.contains("smuggled")),
        "a smuggled request reached the provider"
    );
    rig.after_fault(
        &before,
        Expect::new()
            .provider(3)
            .counter(CLOSED, &[("reason", "malformed")], hyper_400.len() as f64)
            .counter(
                DENIED,
                &[("route", "kwikpaisa"), ("reason", "unsupported_transfer_coding")],
                1.0,
            )
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "bad_body")], 2.0),
    )
    .await;
}

/// A7 a client's own signing headers: the API key, timestamp and signature
/// sent in other cases, with underscores, duplicated, named in
/// `Connection:` and as chunked trailers. The provider sees exactly one of
/// each, the gateway's own (it verifies the signature with the real
/// secret), no underscore look-alike, and no trailer.
#[tokio::test]
async fn a07_client_signing_headers_never_reach_the_provider() {
    let rig = Rig::start().await;
    let before = rig.baseline().await;
    let body = order_body();
    let forged = "X-API-KEY: pk_forged\r\nx-api-key: pk_forged2\r\nX_Api_Key: pk_forged3\r\n\
                  X-Timestamp: 1\r\nx_timestamp: 2\r\nX-SIGNATURE: forged-zz-sig1\r\nx-signature: forged-zz-sig2\r\n\
                  X_SIGNATURE: forged-zz-sig3\r\nConnection: keep-alive, X-Signature, X-Api-Key, X-Timestamp\r\n\
                  Trailer: X-Signature, X-Api-Key\r\nTransfer-Encoding: chunked\r\n";
    let req = [
        post_head(PROBE_PATH, forged).into_bytes(),
        chunk(body.as_bytes()),
        b"0\r\nX-Signature: trailer-forged\r\nX-Api-Key: trailer-key\r\nX-Timestamp: 3\r\n\r\n".to_vec(),
    ]
    .concat();
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(&req).await.unwrap();
    let raw = read_response(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&raw), Some(200), "{}", String::from_utf8_lossy(&raw));
    let recs = rig.provider.standin.records().await;
    let rec = recs.last().unwrap();
    assert_eq!(canonical(&rec.body), canonical(body.as_bytes()));
    assert_eq!(rec.verdict, signgate::devtools::standin::Verdict::Valid);
    for name in ["x-api-key", "x-timestamp", "x-signature"] {
        assert_eq!(rec.headers.get_all(name).iter().count(), 1, "{name} at the provider");
    }
    assert_eq!(rec.headers["x-api-key"], rig.provider.api_key.as_str());
    for (k, v) in &rec.headers {
        let folded = k.as_str().replace('_', "-");
        if k.as_str().contains('_') {
            assert!(
                !["x-api-key", "x-timestamp", "x-signature"].contains(&folded.as_str()),
                "look-alike {k} reached the provider"
            );
        }
        let v = v.to_str().unwrap_or("");
        assert!(
            !["pk_forged", "forged-zz", "trailer-forged", "trailer-key"]
                .iter()
                .any(|f| v.contains(f)),
            "a forged value reached the provider in {k}: {v}"
        );
    }
    assert!(rec.headers.get("trailer").is_none() && rec.headers.get("connection").is_none());
    // The stand-in keeps the trailers it received (`Recorded::trailers`):
    // none of the client's may arrive, forged names or otherwise.
    assert!(
        rec.trailers.is_empty(),
        "trailers reached the provider: {:?}",
        rec.trailers
    );
    rig.after_fault(&before, Expect::new().provider(1)).await;
}

/// A8 allowlist bypass: with `allow = ["127.0.0.1/32", "::1/128"]`, a client
/// on 127.0.0.3 claiming 127.0.0.1 through `X-Forwarded-For`, `Forwarded`
/// or `X-Real-IP` is refused (403 `ip_not_allowed`): the decision is on the
/// TCP peer only. An allowed client's spoofing headers are not forwarded.
/// IPv4-mapped IPv6 peers are normalised before the decision (unit tests
/// `allowlist::tests::edges` and `proxy::context::tests::mapped_peers_are_normalized`;
/// a mapped peer only exists on a dual-stack `[::]` listener, which is not
/// loopback-only, so it is not exercised here).
#[tokio::test]
async fn a08_allowlist_decides_on_the_tcp_peer_only() {
    let rig = Rig::with(|c| c.allow(["127.0.0.1/32", "::1/128"])).await;
    let before = rig.baseline().await;
    let denied = TestClient::from_addr("127.0.0.3");
    let spoofs: [&[(&str, &str)]; 4] = [
        &[("x-forwarded-for", "127.0.0.1")],
        &[("forwarded", "for=127.0.0.1;proto=https")],
        &[("x-real-ip", "127.0.0.1")],
        &[
            ("x-forwarded-for", "127.0.0.1, 127.0.0.1"),
            ("forwarded", "for=\"[::1]\""),
            ("x-real-ip", "::1"),
        ],
    ];
    for h in spoofs {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(h);
        let r = denied
            .send(Method::POST, &rig.url(PROBE_PATH), &headers, order_body())
            .await;
        assert_eq!(r.status, 403, "{h:?}");
        assert_eq!(r.code(), "ip_not_allowed");
    }
    let allowed = TestClient::from_addr("127.0.0.1");
    let r = allowed
        .send(
            Method::POST,
            &rig.url(PROBE_PATH),
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", "10.9.9.9"),
                ("forwarded", "for=10.9.9.9"),
                ("x-real-ip", "10.9.9.9"),
                ("x-forwarded-host", "evil.example"),
            ],
            order_body(),
        )
        .await;
    assert_eq!(r.status, 200);
    let recs = rig.provider.standin.records().await;
    let rec = recs.last().unwrap();
    for h in ["x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host"] {
        assert!(rec.headers.get(h).is_none(), "{h} was forwarded");
    }
    rig.after_fault(
        &before,
        Expect::new()
            .provider(1)
            .counter(DENIED, &[("route", "none"), ("reason", "ip_not_allowed")], 4.0),
    )
    .await;
}

/// A9 rate limits (per client: rate 20/s, burst 20; `per_client_max_keys`
/// 64): a burst from one address admits exactly the burst; a sustained
/// flood for ~2 s admits at most rate·t + burst; 600 distinct source
/// addresses (127.1.x.y, as many as is practical here) leave the key store
/// at or under its bound (`signgate_ratelimit_clients`), and the probe's own
/// address is unaffected throughout.
#[tokio::test]
async fn a09_rate_limits_hold_for_burst_sustained_and_many_sources() {
    const RATE: f64 = 20.0;
    const BURST: usize = 20;
    const MAX_KEYS: usize = 64;
    // Few idle upstream connections kept, so the burst's pool does not
    // count as a leak.
    let rig = Rig::with(|c| {
        c.egress("pool_idle_per_host", 2)
            .limits("per_client", quota(RATE as u64, BURST as u64))
            .limits("per_client_max_keys", MAX_KEYS)
    })
    .await;
    let before = rig.baseline().await;
    let c = TestClient::from_addr("127.0.0.2");
    let send = || async {
        c.send(
            Method::POST,
            &rig.url(PROBE_PATH),
            &[("content-type", "application/json")],
            order_body(),
        )
        .await
        .status
    };
    // Burst: fired at once.
    let t0 = Instant::now();
    let burst: Vec<_> = futures_util::future::join_all((0..BURST * 2).map(|_| send())).await;
    let burst_time = t0.elapsed().as_secs_f64();
    let ok = burst.iter().filter(|s| **s == 200).count();
    let limited = burst.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, BURST * 2, "{burst:?}");
    assert!(
        ok >= BURST && ok as f64 <= BURST as f64 + RATE * burst_time + 1.0,
        "burst admitted {ok} in {burst_time:.2} s"
    );
    // Sustained: ~2 s of back-to-back requests.
    let t0 = Instant::now();
    let (mut admitted, mut refused) = (0usize, 0usize);
    while t0.elapsed() < Duration::from_secs(2) {
        match send().await.as_u16() {
            200 => admitted += 1,
            429 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    let t = t0.elapsed().as_secs_f64();
    let total_t = t + burst_time;
    println!(
        "A9: burst admitted {ok}/{}; sustained admitted {admitted}, refused {refused} in {t:.2} s",
        BURST * 2
    );
    assert!(
        (ok + admitted) as f64 <= BURST as f64 + RATE * total_t + 1.0,
        "{} admitted in {total_t:.2} s; rate·t + burst = {:.1}",
        ok + admitted,
        BURST as f64 + RATE * total_t
    );
    assert!(refused > 0, "the sustained flood was never limited");
    // Many sources: each sends one request the limiter admits or refuses
    // before any upstream work (invalid JSON).
    const SOURCES: usize = 600;
    let statuses: Vec<u16> = futures_util::future::join_all((0..SOURCES).map(|i| {
        let addr = rig.gw.addr;
        async move {
            let src = format!("127.1.{}.{}", i / 250, i % 250 + 1);
            let mut s = connect_from(&src, addr).await;
            s.write_all(format!("{}{{x", post_head(PROBE_PATH, "Content-Length: 2\r\n")).as_bytes())
                .await
                .unwrap();
            status_of(&read_response(&mut s, Duration::from_secs(10)).await).unwrap_or(0)
        }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 400 || *s == 429), "{statuses:?}");
    let limited_sources = statuses.iter().filter(|s| **s == 429).count();
    let tracked = rig.snapshot().await.metric("signgate_ratelimit_clients", &[]);
    println!(
        "A9: {SOURCES} sources: {limited_sources} shared the overflow bucket; {tracked} keys tracked (max {MAX_KEYS})"
    );
    assert!(
        tracked <= (MAX_KEYS + 1) as f64,
        "{tracked} keys tracked, bound {MAX_KEYS}"
    );
    let refused_total = (limited + refused + limited_sources) as f64;
    rig.after_fault(
        &before,
        Expect::new()
            .provider(ok + admitted)
            .counter(
                DENIED,
                &[("route", "kwikpaisa"), ("reason", "rate_limited")],
                refused_total,
            )
            .counter(
                DENIED,
                &[("route", "kwikpaisa"), ("reason", "invalid_json")],
                (SOURCES - limited_sources) as f64,
            ),
    )
    .await;
}

/// A12 hostile JSON on the canonicalizing route: depth 100k, duplicate keys,
/// invalid UTF-8, lone surrogates, a BOM and trailing garbage each get 400
/// `invalid_json` with the reason in the message (no stack overflow: the
/// gateway lives on); a 10 MB string exceeds the body limit (413). A string
/// just under the limit and a 300-digit number are valid and reach the
/// provider byte for byte (the number is signed as sent, never rounded).
#[tokio::test]
async fn a12_hostile_json_is_refused_with_a_reason() {
    let rig = Rig::start().await; // max_body_bytes = 65536
    let before = rig.baseline().await;
    // As deep as the 64 KiB body limit allows (100k levels exceed it: 413).
    let deep = "[".repeat(60_000);
    let deep_obj = "{\"a\":".repeat(12_000);
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("depth 60k arrays", deep.into_bytes(), "nesting too deep"),
        ("depth 12k objects", deep_obj.into_bytes(), "nesting too deep"),
        (
            "duplicate keys",
            br#"{"order_id":"A","order_amount":"1","order_id":"B"}"#.to_vec(),
            "duplicate key",
        ),
        ("escaped duplicate", br#"{"a":1,"\u0061":2}"#.to_vec(), "duplicate key"),
        ("invalid UTF-8", b"{\"name\":\"a\xFF\xFEb\"}".to_vec(), "invalid UTF-8"),
        ("overlong UTF-8", b"{\"name\":\"\xC0\xAF\"}".to_vec(), "invalid UTF-8"),
        ("lone surrogate", br#"{"name":"\ud800"}"#.to_vec(), "unpaired surrogate"),
        ("BOM", b"\xEF\xBB\xBF{\"a\":1}".to_vec(), "BOM"),
        (
            "trailing garbage",
            br#"{"a":1} {"b":2}"#.to_vec(),
            "trailing characters",
        ),
        ("NaN", br#"{"a":NaN}"#.to_vec(), "expected a JSON value"),
    ];
    for (name, body, reason) in &bad {
        let r = rig
            .client
            .send(
                Method::POST,
                &rig.url(PROBE_PATH),
                &[("content-type", "application/json")],
                body.clone(),
            )
            .await;
        assert_eq!(r.status, 400, "{name}");
        assert_eq!(r.code(), "invalid_json", "{name}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(reason), "{name}: message {msg:?} lacks {reason:?}");
    }
    assert!(rig.alive(), "the gateway died on hostile JSON");
    // Over the body limit (sent as a client would: head, then the body as
    // far as the gateway takes it): 413 body_too_large.
    for (name, len, start) in [
        ("10 MB string", 10_000_008usize, "{\"s\":\"aaaa"),
        ("depth 100k", 100_000, "[[[[[[[["),
    ] {
        let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
        s.write_all(post_head(PROBE_PATH, &format!("Content-Length: {len}\r\n")).as_bytes())
            .await
            .unwrap();
        let _ = s.write_all(start.as_bytes()).await;
        let raw = read_response(&mut s, Duration::from_secs(5)).await;
        assert_eq!(status_of(&raw), Some(413), "{name}: {}", String::from_utf8_lossy(&raw));
        assert!(String::from_utf8_lossy(&raw).contains("\"body_too_large\""), "{name}");
    }
    for body in [
        format!("{{\"order_id\":\"ORD-big\",\"s\":\"{}\"}}", "a".repeat(65_000)),
        format!("{{\"order_id\":\"ORD-num\",\"order_amount\":{}}}", "9".repeat(300)),
    ] {
        let r = rig.client.post(&rig.url(PROBE_PATH), &body).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let recs = rig.provider.standin.records().await;
        let rec = recs.last().unwrap();
        assert_eq!(rec.verdict, signgate::devtools::standin::Verdict::Valid);
        // Canonical form (sorted keys), the big value byte for byte.
        let big = if body.contains("ORD-big") {
            "a".repeat(65_000)
        } else {
            "9".repeat(300)
        };
        assert!(
            rec.body.windows(big.len()).any(|w| w == big.as_bytes()),
            "the provider did not get the value as sent"
        );
    }
    rig.after_fault(
        &before,
        Expect::new()
            .provider(2)
            .counter(
                DENIED,
                &[("route", "kwikpaisa"), ("reason", "invalid_json")],
                bad.len() as f64,
            )
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "body_too_large")], 2.0),
    )
    .await;
}

/// A13 compressed request bodies: `Content-Encoding` gzip, deflate, br,
/// stacked (`identity, gzip`), upper case, and a gzip bomb → 415
/// `unsupported_encoding` before the body is read (so never decoded, never
/// signed); a compressing transfer coding (`gzip, chunked`) → 501.
/// `identity` is no compression: accepted, and the provider gets exactly
/// the bytes sent.
#[tokio::test]
async fn a13_compressed_bodies_are_refused_never_decoded() {
    let rig = Rig::start().await;
    let before = rig.baseline().await;
    // 10 KiB of gzip header + zeros: what a bomb looks like on the wire.
    let mut bomb = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03];
    bomb.extend(std::iter::repeat_n(0u8, 10 * 1024));
    let encodings = ["gzip", "deflate", "br", "identity, gzip", "GZIP", "x-gzip", "compress"];
    for enc in encodings {
        let r = rig
            .client
            .send(
                Method::POST,
                &rig.url(PROBE_PATH),
                &[("content-type", "application/json"), ("content-encoding", enc)],
                bomb.clone(),
            )
            .await;
        assert_eq!(r.status, 415, "{enc}");
        assert_eq!(r.code(), "unsupported_encoding", "{enc}");
    }
    let req = [
        post_head(PROBE_PATH, "Transfer-Encoding: gzip, chunked\r\n").into_bytes(),
        chunk(&bomb),
        b"0\r\n\r\n".to_vec(),
    ]
    .concat();
    let raw = exchange(rig.gw.addr, &[&req], Duration::from_secs(5))
        .await
        .expect("gzip transfer coding: connection left open");
    assert_eq!(status_of(&raw), Some(501), "{}", String::from_utf8_lossy(&raw));
    let body = order_body();
    let r = rig
        .client
        .send(
            Method::POST,
            &rig.url(PROBE_PATH),
            &[("content-type", "application/json"), ("content-encoding", "identity")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200);
    let recs = rig.provider.standin.records().await;
    assert_eq!(canonical(&recs.last().unwrap().body), canonical(body.as_bytes()));
    rig.after_fault(
        &before,
        Expect::new()
            .provider(1)
            .counter(
                DENIED,
                &[("route", "kwikpaisa"), ("reason", "unsupported_encoding")],
                encodings.len() as f64,
            )
            .counter(
                DENIED,
                &[("route", "kwikpaisa"), ("reason", "unsupported_transfer_coding")],
                1.0,
            ),
    )
    .await;
}

/// A14 path tricks: `..`, `%2e%2e`, `//`, `%2F`, `%5C`, `%00` and dot
/// segments that would climb out of the route → 400 `invalid_path`; a
/// look-alike prefix → 404; `CONNECT` and `OPTIONS *` → refused. An
/// absolute-form target naming another host, and a spoofed `Host`, are
/// routed by path to the route's own upstream only: the provider receives
/// them with its own Host. The targets named are loopback decoy listeners
/// (`127.0.0.9:P` and `localhost:P2`) that count connections: they accept
/// none (the route fixes scheme, host and port). Not an open proxy.
#[tokio::test]
async fn a14_path_tricks_cannot_leave_the_route() {
    let rig = Rig::start().await;
    let before = rig.baseline().await;
    let invalid = [
        "/kwikpaisa/../admin",
        "/kwikpaisa/api/../../x",
        "/kwikpaisa/%2e%2e/x",
        "/kwikpaisa/%2E%2E/%2E%2E/x",
        "/kwikpaisa//evil.example/x",
        "/kwikpaisa%2Fapi",
        "/kwikpaisa/api%2f..%2fx",
        "/kwikpaisa/a%5c..%5cb",
        "/kwikpaisa/a%00b",
        "/other/../kwikpaisa/api",
    ];
    for path in invalid {
        let req = format!("{}{{}}", post_head(path, "Content-Length: 2\r\n"));
        let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let raw = read_response(&mut s, Duration::from_secs(5)).await;
        assert_eq!(status_of(&raw), Some(400), "{path}: {}", String::from_utf8_lossy(&raw));
        assert!(String::from_utf8_lossy(&raw).contains("\"invalid_path\""), "{path}");
    }
    let req = format!("{}{{}}", post_head("/kwikpaisax/api", "Content-Length: 2\r\n"));
    let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(
        status_of(&read_response(&mut s, Duration::from_secs(5)).await),
        Some(404)
    );
    // Decoys: listeners on loopback that an open proxy would reach. One on
    // 127.0.0.9 (named by address) and one named `localhost` (on 127.0.0.1;
    // also on ::1 when that port is free there, as `localhost` may resolve
    // to either). They count every connection they accept.
    let decoy_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let decoy = |l: std::net::TcpListener| {
        l.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        let hits = decoy_hits.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = l.accept().await {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let far = std::net::TcpListener::bind("127.0.0.9:0").unwrap();
    let far_addr = far.local_addr().unwrap().to_string();
    let near = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let near_port = near.local_addr().unwrap().port();
    let near_addr = format!("localhost:{near_port}");
    let mut decoys = vec![decoy(far), decoy(near)];
    if let Ok(l) = std::net::TcpListener::bind(("::1", near_port)) {
        decoys.push(decoy(l));
    }
    for req in [
        format!("CONNECT {far_addr} HTTP/1.1\r\nHost: {far_addr}\r\n\r\n"),
        format!("CONNECT {near_addr} HTTP/1.1\r\nHost: {near_addr}\r\n\r\n"),
        "OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(),
    ] {
        let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let raw = read_response(&mut s, Duration::from_secs(5)).await;
        assert_eq!(status_of(&raw), Some(400), "{req:?}: {}", String::from_utf8_lossy(&raw));
    }
    // Absolute form and a spoofed Host: only the route's upstream, with its own Host.
    let provider_host = format!("localhost:{}", rig.provider.standin.addr().port());
    let targets = [
        (format!("http://{far_addr}{PROBE_PATH}"), far_addr.clone()),
        (format!("http://{near_addr}{PROBE_PATH}"), near_addr.clone()),
        (PROBE_PATH.to_string(), far_addr.clone()),
        (PROBE_PATH.to_string(), near_addr.clone()),
    ];
    for (target, host) in &targets {
        let body = order_body();
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Forwarded-Host: {host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut s = TcpStream::connect(rig.gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let raw = read_response(&mut s, Duration::from_secs(5)).await;
        assert_eq!(
            status_of(&raw),
            Some(200),
            "{target}: {}",
            String::from_utf8_lossy(&raw)
        );
        let recs = rig.provider.standin.records().await;
        let rec = recs.last().unwrap();
        assert_eq!(canonical(&rec.body), canonical(body.as_bytes()));
        assert_eq!(rec.path_and_query, "/api/v3/pg/order/create");
        assert_eq!(rec.headers["host"], provider_host.as_str());
        // Host is pinned above; nothing else may carry the client's target.
        for (k, v) in rec.headers.iter().filter(|(k, _)| *k != http::header::HOST) {
            let v = v.to_str().unwrap_or("");
            assert!(
                !v.contains("127.0.0.9") && !v.contains(near_addr.as_str()),
                "{k}: {v:?} reached the provider"
            );
        }
    }
    rig.after_fault(
        &before,
        Expect::new()
            .provider(targets.len())
            .counter(
                DENIED,
                &[("route", "none"), ("reason", "invalid_path")],
                invalid.len() as f64 + 3.0,
            )
            .counter(DENIED, &[("route", "none"), ("reason", "no_route")], 1.0),
    )
    .await;
    // after_fault took a while: any late connection attempt has landed.
    let hits = decoy_hits.load(std::sync::atomic::Ordering::SeqCst);
    for d in decoys {
        d.abort();
    }
    assert_eq!(hits, 0, "the gateway connected to a target the client named");
}

/// A hand-built ClientHello with record/legacy `version` (only its first
/// bytes are sent, to stall a handshake; version refusal uses openssl).
fn old_client_hello(version: u16) -> Vec<u8> {
    let [hi, lo] = version.to_be_bytes();
    let mut body = vec![hi, lo];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0x00, 0x2f, 0x00, 0x35]); // AES128-SHA, AES256-SHA
    body.extend_from_slice(&[1, 0]); // no compression
    let mut hs = vec![1, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, hi, lo, 0, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// Run `prog args` with stdin closed; killed and a panic after `within`.
/// Panics (loudly) when `prog` is missing: scripts/test.sh installs openssl.
fn run_bounded(prog: &str, args: &[String], within: Duration) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{prog}: {e} (scripts/test.sh installs openssl)"));
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{prog} {args:?}: still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A gateway with a TLS listener (certificate from a test CA), as a child
/// process, with its own probe over TLS.
struct TlsGateway {
    gw: GatewayProcess,
    fx: Fixture,
}

impl TlsGateway {
    async fn start() -> TlsGateway {
        let fx = Fixture::new().await;
        let server = fx.pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
        let (cert, key) = (fx.path("gw.pem"), fx.path("gw-key.pem"));
        std::fs::write(&cert, &server.cert_pem).unwrap();
        std::fs::write(&key, &server.key_pem).unwrap();
        let toml = Rig::config(&fx)
            .listener_tls(&cert, &key)
            .listener("idle_timeout_ms", 2000);
        let gw = fx.process(&toml, &[]);
        let t = TlsGateway { gw, fx };
        assert!(
            eventually(Duration::from_secs(10), || async {
                t.gw.metric("signgate_credential_loaded", &[("credential", "kwikpaisa")])
                    .await
                    == 1.0
            })
            .await
        );
        t
    }

    /// A signed request over TLS that the provider verifies; its latency.
    async fn probe(&self) -> Duration {
        let before = self.fx.provider.standin.records().await.len();
        let t = Instant::now();
        let r = crate::support::https_post(self.gw.addr, &self.fx.pki.ca, None, PROBE_PATH, &order_body())
            .await
            .unwrap();
        let took = t.elapsed();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let recs = self.fx.provider.standin.records().await;
        assert_eq!(recs.len(), before + 1);
        assert_eq!(
            recs.last().unwrap().verdict,
            signgate::devtools::standin::Verdict::Valid
        );
        took
    }

    /// A TLS client that offers only `versions`.
    async fn connect(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.fx.pki.ca.cert_der()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(signgate::tls::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.gw.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A11 TLS abuse on a TLS listener: plaintext HTTP, garbage, a stalled
/// ClientHello (cut at `header_timeout_ms`, which bounds the handshake),
/// TLS 1.0 and TLS 1.1 handshakes from `openssl s_client -tls1`/`-tls1_1`
/// (refused with an alert while `-tls1_2` with the same suites succeeds:
/// only TLS 1.2 and 1.3 are served, both checked to work) → each closed and counted
/// `connections_closed{reason="tls_handshake"}`; a handshaken connection
/// left idle is closed at `idle_timeout_ms` (the TLS part of A3), a
/// handshaken half-sent request at `header_timeout_ms`.
///
/// Known deviation, not asserted: the refusal of TLS 1.0/1.1 carries alert
/// handshake_failure (40), not protocol_version (70) as RFC 5246 E.1 asks.
/// rustls (0.23) requires the signature_algorithms extension, which a
/// pre-1.2 ClientHello never has, and fails on that before its version
/// check (which would send protocol_version). The gateway uses rustls'
/// acceptor as is; the test asserts alert 40 so a change is noticed.
///
/// The standard rig cannot be used (its probe speaks plain HTTP), so this
/// test checks the four after-fault conditions itself with a TLS probe: the
/// process lives, counters moved exactly, fds and open connections return
/// to baseline, nothing but probes reached the provider, and a probe
/// succeeds within its usual latency.
#[tokio::test]
async fn a11_tls_abuse_is_cut_and_counted() {
    let t = TlsGateway::start().await;
    let pid = t.gw.child.id();
    let mut lat: Vec<Duration> = Vec::new();
    for _ in 0..5 {
        lat.push(t.probe().await);
    }
    lat.sort();
    let usual = lat[2];
    let before_fds = proc_fds(pid);
    let before = t.gw.metrics().await;
    let before_provider = t.fx.provider.standin.records().await.len();
    let within = Duration::from_secs(5);

    // Plaintext HTTP and garbage to the TLS port.
    let plain = format!("{}{{}}", post_head(PROBE_PATH, "Content-Length: 2\r\n"));
    let raw = exchange(t.gw.addr, &[plain.as_bytes()], within)
        .await
        .expect("plaintext: left open");
    assert!(status_of(&raw).is_none(), "plaintext was answered as HTTP");
    let garbage: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    exchange(t.gw.addr, &[&garbage], within)
        .await
        .expect("garbage: left open");
    // A ClientHello that stops after its first bytes: cut at header_timeout (1 s).
    let hello = old_client_hello(0x0303);
    let mut s = TcpStream::connect(t.gw.addr).await.unwrap();
    s.write_all(&hello[..12]).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut s, within)
        .await
        .expect("stalled ClientHello: left open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(2_500),
        "stalled handshake closed after {took:?}; header_timeout is 1 s"
    );
    // TLS 1.0 and 1.1 from a real client (openssl s_client, its default
    // modern suites, security level 0 so that openssl itself is willing to
    // speak them) are refused; the same client with `-tls1_2` and the same
    // suites completes its handshake, so the refusal is about the version.
    // The alert is handshake_failure (40), not protocol_version (70) as RFC
    // 5246 E.1 asks: rustls checks for the signature_algorithms extension
    // (which pre-1.2 clients never send) before it checks the version. See
    // the doc comment. "no protocols available" (openssl refusing on its
    // own without connecting) is never accepted; the tls_handshake counter
    // below also proves both connections reached the gateway.
    for flag in ["-tls1", "-tls1_1", "-tls1_2"] {
        let addr = t.gw.addr.to_string();
        let args = [
            "s_client",
            "-connect",
            &addr,
            "-servername",
            "localhost",
            flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ]
        .map(String::from);
        let out = tokio::task::spawn_blocking(move || run_bounded("openssl", &args, Duration::from_secs(5)))
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if flag == "-tls1_2" {
            assert!(
                out.status.success() && text.contains("Protocol  : TLSv1.2"),
                "openssl s_client {flag}: the control handshake failed:\n{text}"
            );
            continue;
        }
        assert!(
            !out.status.success(),
            "openssl s_client {flag}: handshake succeeded:\n{text}"
        );
        assert!(
            text.contains("CONNECTED(")
                && text.contains("alert handshake failure:")
                && text.contains("SSL alert number 40"),
            "openssl s_client {flag}: not refused by the server with an alert:\n{text}"
        );
    }
    // TLS 1.2 and 1.3 work.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut c = t.connect(&[v]).await.unwrap_or_else(|e| panic!("{v:?}: {e}"));
        let body = order_body();
        c.write_all(
            format!(
                "{}{body}",
                post_head(
                    PROBE_PATH,
                    &format!("Content-Length: {}\r\nConnection: close\r\n", body.len())
                )
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(within, c.read_to_end(&mut raw)).await;
        assert_eq!(status_of(&raw), Some(200), "{v:?}: {}", String::from_utf8_lossy(&raw));
    }
    // Handshaken, then idle: closed at idle_timeout (2 s); half a head: header_timeout.
    let mut idle = t.connect(&[&rustls::version::TLS13]).await.unwrap();
    let mut half = t.connect(&[&rustls::version::TLS13]).await.unwrap();
    half.write_all(post_head(PROBE_PATH, "").trim_end().as_bytes())
        .await
        .unwrap();
    half.flush().await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, half.read_to_end(&mut buf)).await;
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "half-sent head over TLS outlived header_timeout"
    );
    let _ = tokio::time::timeout(within, idle.read_to_end(&mut buf)).await;
    assert!(
        started.elapsed() < Duration::from_millis(4_500),
        "idle TLS connection outlived idle_timeout"
    );

    // The four conditions, checked here.
    assert!(
        std::path::Path::new(&format!("/proc/{pid}/status")).exists(),
        "the gateway died"
    );
    let provider_now = t.fx.provider.standin.records().await.len();
    assert_eq!(
        provider_now - before_provider,
        2,
        "only the two version checks may reach the provider"
    );
    let want = [("tls_handshake", 5.0), ("idle", 1.0), ("header_timeout", 1.0)];
    let ok = eventually(Duration::from_secs(6), || async {
        let now = t.gw.metrics().await;
        want.iter().all(|(reason, d)| {
            crate::support::metric(&now, CLOSED, &[("reason", reason)])
                - crate::support::metric(&before, CLOSED, &[("reason", reason)])
                == *d
        })
    })
    .await;
    let now = t.gw.metrics().await;
    assert!(
        ok,
        "counters: {:?}",
        want.iter()
            .map(|(r, _)| (
                r,
                crate::support::metric(&now, CLOSED, &[("reason", r)])
                    - crate::support::metric(&before, CLOSED, &[("reason", r)])
            ))
            .collect::<Vec<_>>()
    );
    let ok = eventually(Duration::from_secs(6), || async {
        let m = t.gw.metrics().await;
        proc_fds(pid) <= before_fds + 2
            && crate::support::metric(&m, "signgate_open_connections", &[])
                <= crate::support::metric(&before, "signgate_open_connections", &[])
    })
    .await;
    assert!(
        ok,
        "fds {} (baseline {before_fds}) or open connections did not settle",
        proc_fds(pid)
    );
    let took = t.probe().await;
    assert!(
        took <= usual * 5 + Duration::from_millis(500),
        "probe took {took:?}; usual {usual:?}"
    );
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `POST http://gw{path}` with static-table names only (RFC 7541).
fn h2_post_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 2, b'g', b'w']);
    b
}

/// What the server sent back on an abused HTTP/2 connection.
#[derive(Debug, Default)]
struct H2Seen {
    frames: usize,
    /// SETTINGS or PING frames with the ACK flag.
    acks: usize,
    /// (last stream id, error code) of a GOAWAY.
    goaway: Option<(u32, u32)>,
    closed: bool,
}

/// Read frames until GOAWAY, EOF or `within`.
async fn h2_read(mut rd: tokio::net::tcp::OwnedReadHalf, within: Duration) -> H2Seen {
    let mut seen = H2Seen::default();
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            seen.frames += 1;
            if (buf[3] == 4 || buf[3] == 6) && buf[4] & 0x1 != 0 {
                seen.acks += 1;
            }
            if buf[3] == 7 && len >= 8 {
                let last = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]) & 0x7fff_ffff;
                seen.goaway = Some((last, u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]])));
            }
            buf.drain(..9 + len);
        }
        if seen.goaway.is_some() {
            return seen;
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => return seen,
        }
    }
}

/// Open an h2c (prior knowledge) connection, send `frames` from a writer
/// task (stopping at the first write error) while reading the server's
/// frames. Returns what came back and how many bytes were written.
async fn h2_abuse(addr: std::net::SocketAddr, frames: Vec<Vec<u8>>, within: Duration) -> (H2Seen, usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        let mut batch = H2_PREFACE.to_vec();
        batch.extend(h2_frame(4, 0, 0, &[]));
        for f in frames {
            batch.extend(f);
            if batch.len() >= 64 * 1024 {
                if wr.write_all(&batch).await.is_err() {
                    return (sent, wr);
                }
                sent += batch.len();
                batch.clear();
            }
        }
        if wr.write_all(&batch).await.is_ok() {
            sent += batch.len();
        }
        (sent, wr)
    });
    let seen = h2_read(rd, within).await;
    // Stop writing once the server has given its answer.
    let sent = match tokio::time::timeout(Duration::from_secs(2), writer).await {
        Ok(Ok((sent, _wr))) => sent,
        _ => usize::MAX,
    };
    (seen, sent)
}

/// A10 HTTP/2 abuse over h2c: rapid reset (HEADERS + RST_STREAM × 10 000,
/// CVE-2023-44487) and a CONTINUATION flood (one header block that never
/// ends, up to 16 MiB, CVE-2024-27316) each end in GOAWAY (or a close)
/// before the flood is through; SETTINGS and PING floods (50 000 each) are
/// answered one ACK per frame at most (no amplification; h2 reads no
/// further until each ACK is written, so nothing queues) without growing
/// memory. The gateway's CPU time (from /proc, robust to load) stays under
/// 1.5 s per flood and 3 s for all four. Nothing reaches the provider.
#[tokio::test]
async fn a10_http2_floods_are_bounded() {
    let rig = Rig::start().await;
    let before = rig.baseline().await;
    let pid = rig.pid();
    let within = Duration::from_secs(10);
    let cpu0 = proc_cpu_ticks(pid);
    let rss = RssSampler::start(pid);

    // Rapid reset: open and cancel streams as fast as possible.
    const RESETS: u32 = 10_000;
    let block = h2_post_block(PROBE_PATH);
    let frames: Vec<Vec<u8>> = (0..RESETS)
        .map(|i| {
            let id = 2 * i + 1;
            [h2_frame(1, 0x4, id, &block), h2_frame(3, 0, id, &8u32.to_be_bytes())].concat()
        })
        .collect();
    let total: usize = frames.iter().map(Vec::len).sum();
    let mut flood_cpu = Vec::new();
    let t0 = proc_cpu_ticks(pid);
    let (seen, sent) = h2_abuse(rig.gw.addr, frames, within).await;
    flood_cpu.push(("rapid reset", proc_cpu_ticks(pid) - t0));
    println!("A10 rapid reset: {seen:?}; {sent} of {total} bytes written");
    let (last, code) = seen.goaway.expect("rapid reset: no GOAWAY");
    assert_eq!(code, 11, "rapid reset: GOAWAY code {code}, expected ENHANCE_YOUR_CALM");
    assert!(
        last < 2 * RESETS / 10,
        "rapid reset: the server took streams up to {last} of {} before GOAWAY",
        2 * RESETS - 1
    );
    // The reset streams' tasks wind down just after the GOAWAY: poll.
    let drained = eventually(Duration::from_secs(3), || async {
        rig.snapshot().await.metric("signgate_inflight_requests", &[]) == 0.0
    })
    .await;
    assert!(drained, "rapid-reset streams still in flight 3 s after the GOAWAY");

    // CONTINUATION flood: one header block that never ends.
    let mut filler = Vec::new();
    while filler.len() < 16_000 {
        filler.extend_from_slice(&[0x00, 3, b'x', b'-', b'a', 100]);
        filler.extend_from_slice(&[b'v'; 100]);
    }
    let mut frames = vec![h2_frame(1, 0, 1, &block)];
    frames.extend((0..1024).map(|_| h2_frame(9, 0, 1, &filler)));
    let total: usize = frames.iter().map(Vec::len).sum();
    let t0 = proc_cpu_ticks(pid);
    let (seen, sent) = h2_abuse(rig.gw.addr, frames, within).await;
    flood_cpu.push(("CONTINUATION", proc_cpu_ticks(pid) - t0));
    println!("A10 CONTINUATION flood: {seen:?}; {sent} of {total} bytes written");
    assert!(
        seen.goaway.is_some() || seen.closed,
        "CONTINUATION flood: no GOAWAY or close"
    );
    assert!(sent < total, "the whole 16 MiB CONTINUATION flood was accepted");

    // SETTINGS and PING floods, read concurrently. The gateway (h2) answers
    // each with one ACK and reads no further until that ACK is written, so
    // the flood is back-pressured rather than queued. It may also GOAWAY or
    // close early; either way it must never send more ACKs than it got
    // frames (no amplification) nor more than a handshake's worth of
    // anything else, and each flood must cost little CPU.
    const FLOOD: usize = 50_000;
    for (name, frame) in [
        ("SETTINGS", h2_frame(4, 0, 0, &[])),
        ("PING", h2_frame(6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])),
    ] {
        let frames = vec![frame; FLOOD];
        let t0 = proc_cpu_ticks(pid);
        let (seen, sent) = h2_abuse(rig.gw.addr, frames, Duration::from_secs(3)).await;
        // Let the gateway finish with what it already read before sampling.
        tokio::time::sleep(Duration::from_millis(200)).await;
        flood_cpu.push((name, proc_cpu_ticks(pid) - t0));
        println!("A10 {name} flood: {seen:?}; {sent} bytes written");
        // FLOOD + 1: the client's preface SETTINGS is acknowledged too.
        assert!(
            seen.acks <= FLOOD + 1,
            "{name} flood: {} ACKs back for {} frames",
            seen.acks,
            FLOOD + 1
        );
        // Besides ACKs: the server's SETTINGS, a WINDOW_UPDATE, a GOAWAY.
        assert!(
            seen.frames - seen.acks <= 4,
            "{name} flood: {} non-ACK frames back",
            seen.frames - seen.acks
        );
        // Answered in full, or refused: a connection left open and silent
        // after 3 s fails. (`closed` alone also follows our half-close
        // after the last frame, which the gateway sees only after reading
        // every frame before it.)
        assert!(
            seen.goaway.is_some() || seen.closed || seen.acks == FLOOD + 1,
            "{name} flood: neither answered in full nor refused (GOAWAY/close): {seen:?}"
        );
    }
    let cpu = proc_cpu_ticks(pid) - cpu0;
    let grew = rss.max_kib().saturating_sub(before.rss_kib);
    println!("A10: gateway CPU (1/100 s ticks) per flood {flood_cpu:?}, {cpu} in all; RSS grew by at most {grew} KiB");
    // CPU time, not wall time, so a loaded machine does not inflate it;
    // measured ~0.3-0.4 s for all four together, so 1.5 s per flood and
    // 3 s in all leave room for a slower machine but not for a spin.
    for (name, ticks) in &flood_cpu {
        assert!(*ticks < 150, "the {name} flood cost the gateway {ticks} ticks of CPU");
    }
    assert!(cpu < 300, "the floods cost the gateway {cpu} ticks of CPU");
    assert!(grew < 32 * 1024, "RSS grew by {grew} KiB during the floods");
    rig.after_fault(&before, Expect::new()).await;
}
