//! A. Hostile or broken clients.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::harness::*;

/// A1 slowloris: headers trickled forever are cut at `header_timeout_ms`
/// (+1 s), nothing goes upstream, and other clients are served meanwhile.
#[tokio::test]
async fn a01_slowloris_is_cut_at_header_timeout() {
    let rig = Rig::start().await; // header_timeout_ms = 1000
    let before = rig.baseline().await;
    const N: usize = 5;
    let mut slow = Vec::new();
    for _ in 0..N {
        let mut s = tokio::net::TcpStream::connect(rig.gw.addr).await.unwrap();
        s.write_all(format!("POST {PROBE_PATH} HTTP/1.1\r\nHost: gw\r\nX-Slow: a").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
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
        assert!(
            at.duration_since(started) <= Duration::from_millis(2_300),
            "slow connection {i} closed after {:?}, header_timeout is 1 s",
            at.duration_since(started)
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
