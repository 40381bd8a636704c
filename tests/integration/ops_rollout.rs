//! Rollouts on the real binary: `listener.shutdown_delay_ms` keeps a
//! terminating gateway accepting while its readiness is already 503, and
//! the systemd notifications (`NOTIFY_SOCKET`) say when it is ready,
//! reloading and stopping.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::*;

/// One request on a new connection: its status, or the connection error.
async fn fresh_request(addr: std::net::SocketAddr) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"GET /none HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))
}

#[tokio::test]
async fn with_a_shutdown_delay_sigterm_turns_readiness_off_at_once_and_keeps_accepting_for_the_delay() {
    const DELAY: Duration = Duration::from_millis(2000);
    let fx = Fixture::new().await;
    let toml = fx
        .config()
        .listener("shutdown_delay_ms", DELAY.as_millis() as u64)
        .listener("drain_timeout_ms", 2000);
    let mut gw = fx.process(&toml, &[]);
    let c = TestClient::new();
    assert_eq!(c.get(&gw.admin_url("/readyz")).await.status, 200);
    assert_eq!(fresh_request(gw.addr).await, Ok(404));

    gw.signal("TERM");
    let signalled = Instant::now();
    // "At once": as soon as the process has handled the signal, well before
    // the delay is over (the poll allows for a loaded machine).
    let admin = gw.admin_url("/readyz");
    let off = eventually(DELAY / 2, || async { c.get(&admin).await.status == 503 }).await;
    let readyz_after = signalled.elapsed();
    assert!(
        off,
        "readiness still 200 {readyz_after:?} after SIGTERM\n{}",
        gw.log_text()
    );
    let r = c.get(&admin).await;
    assert_eq!(r.json()["missing"][0]["what"], "draining", "{:?}", r.body);

    // A client opening a new connection for every request, across the delay.
    let mut outcomes = Vec::new();
    while signalled.elapsed() < DELAY + Duration::from_secs(3) {
        let at = signalled.elapsed();
        let outcome = fresh_request(gw.addr).await;
        let refused = outcome.is_err();
        outcomes.push((at, outcome));
        if refused && at > DELAY {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let within: Vec<_> = outcomes
        .iter()
        .filter(|(at, _)| *at + Duration::from_millis(250) < DELAY)
        .collect();
    assert!(within.len() >= 10, "the loop ran during the delay: {outcomes:?}");
    assert!(
        within.iter().all(|(_, o)| *o == Ok(404)),
        "every new connection during the delay was served (readyz answered 503 after {readyz_after:?}): {outcomes:?}\n{}",
        gw.log_text()
    );
    let (last_at, last) = outcomes.last().unwrap();
    assert!(
        last.is_err() && *last_at >= DELAY - Duration::from_millis(250),
        "after the delay the listener stops accepting: {outcomes:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
    assert!(gw.log_text().contains("still accepting for listener.shutdown_delay_ms"));
}

/// Every datagram that reaches `sock` within `within`, until `until` matches one.
fn notifications_until(sock: &UnixDatagram, until: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = msg.lines().any(|l| l == until);
                got.push(msg);
                if done {
                    return got;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no {until} within {within:?}; got {got:?}");
}

fn first_lines(msgs: &[String]) -> Vec<&str> {
    msgs.iter().filter_map(|m| m.lines().next()).collect()
}

#[tokio::test]
async fn systemd_hears_ready_after_the_listener_answers_reloading_and_ready_around_sighup_and_stopping_at_sigterm() {
    let fx = Fixture::new().await;
    let sock_path = fx.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let toml = fx.config();
    let mut gw = fx.process_with(&toml, &Launch::new().env("NOTIFY_SOCKET", sock_path.to_str().unwrap()));

    let ready = notifications_until(&sock, "READY=1", Duration::from_secs(10));
    assert_eq!(first_lines(&ready), ["READY=1"], "nothing before READY: {ready:?}");
    // Ready means serving: the listener answers right away.
    assert_eq!(TestClient::new().post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);

    gw.signal("HUP");
    let reload = notifications_until(&sock, "READY=1", Duration::from_secs(10));
    assert_eq!(first_lines(&reload), ["RELOADING=1", "READY=1"], "{reload:?}");
    let usec: u64 = reload[0]
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 carries MONOTONIC_USEC: {:?}", reload[0]))
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert!(reload[1].contains("STATUS=serving; reloaded"), "{reload:?}");

    gw.signal("TERM");
    let stop = notifications_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert_eq!(first_lines(&stop), ["STOPPING=1"], "{stop:?}");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
}
