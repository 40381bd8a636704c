//! The test harness shared by the integration binary (`tests/integration/`)
//! and the hardening suite (`tests/hardening/`):
//!
//! - [`fixture`]: one [`Fixture`] (a throw-away PKI, the provider stand-in
//!   over real TLS, its credential file, a temp dir for the audit log, state
//!   and config) and the gateway on it, in-process ([`Fixture::gateway`],
//!   [`Setup`]) or as the real binary ([`Fixture::process`],
//!   [`GatewayProcess`]). Configurations are written with
//!   `signgate::devtools::config`, starting from [`Fixture::config`].
//! - [`client`]: a plain HTTP client that can bind a chosen loopback source
//!   address, an HTTPS one, and the merchant's app that receives webhooks.
//! - [`vault`]: a real OpenBao dev server and the Vault credentials.
//! - [`logs`]: a per-test capture of the in-process gateway's log.
//! - [`redis`]: a real `redis-server` and a byte-delaying fault proxy (fleet).
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_types)] // test harness: a failed setup step should panic; a std Mutex collects child logs; not every binary uses every helper

pub mod client;
pub mod fixture;
pub mod logs;
pub mod redis;
pub mod vault;

use std::time::{Duration, Instant};

use rand::Rng as _;

pub use client::*;
pub use fixture::*;
#[allow(unused_imports)] // the hardening suite has no webhooks
pub use signgate::devtools::config::{quota, AmountGuard, Credential, GatewayToml, Route, Webhook};

pub fn random_token(prefix: &str, n: usize) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..n).map(|_| A[rng.random_range(0..A.len())] as char).collect();
    format!("{prefix}{tail}")
}

/// Poll `cond` until it holds or `within` passes (no fixed sleeps in tests).
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Value of one series in Prometheus text, e.g.
/// `metric(&text, "signgate_denied_total", &[("route","kwikpaisa"),("reason","no_route")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, lbls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(String, String)> = lbls
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once("=\""))
            .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
            .collect();
        if have.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            return value.parse().unwrap();
        }
    }
    0.0
}

/// Number of series (non-comment lines) in Prometheus text.
pub fn series_count(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count()
}

/// `hex(HMAC-SHA256(secret, body + timestamp))`, computed independently of
/// the gateway's signing code.
pub fn provider_signature(secret: &str, body: &[u8], timestamp: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.update(timestamp.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
