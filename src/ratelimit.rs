//! Rate limits (GCRA, via governor): `[limits].global`, `[limits].per_client`
//! keyed by client IP, and each route's `limit`. A refusal carries the wait
//! until the next request would be allowed, rounded up to whole seconds for
//! `Retry-After`. Clocks are monotonic (a wall-clock jump changes nothing).
//!
//! The per-client key store is bounded: idle keys are swept periodically and
//! whenever the store passes `per_client_max_keys`; if a scan from many
//! addresses still overflows it, the overflowing clients share one bucket
//! (memory stays bounded, and they stay limited).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::SystemTime;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota as GQuota};

use crate::config::{LimitsConfig, Quota};

/// Least time between two inline sweeps of the per-client store.
const INLINE_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The shared bucket for clients beyond `per_client_max_keys`.
const OVERFLOW_KEY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// This instance's share of a fleet-wide quota (`[fleet].expected_instances`):
/// rate and burst divided, rounded up, at least 1.
pub fn share(q: Quota, instances: u32) -> Quota {
    let n = instances.max(1);
    let div = |v: NonZeroU32| NonZeroU32::new(v.get().div_ceil(n)).unwrap_or(NonZeroU32::MIN);
    Quota {
        rate: div(q.rate),
        burst: div(q.burst),
    }
}

/// `[limits]` with every quota replaced by this instance's share.
pub fn share_config(c: &LimitsConfig, instances: u32) -> LimitsConfig {
    LimitsConfig {
        global: c.global.map(|q| share(q, instances)),
        per_client: c.per_client.map(|q| share(q, instances)),
        per_client_max_keys: c.per_client_max_keys,
    }
}

fn gcra(q: Quota) -> GQuota {
    GQuota::per_second(q.rate).allow_burst(q.burst)
}

/// Which limit refused a request (the message names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    PerClient,
    Route,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::PerClient => "per-client",
            Scope::Route => "route",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    /// Seconds until a request would be allowed again, rounded up, at least 1.
    pub retry_after: u64,
}

fn retry_after(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// A route's provider cooldown on this instance: until when requests are
/// refused `429 provider_cooldown` (a provider 429/503 with `Retry-After`).
/// Milliseconds on a process-wide monotonic clock; 0 = none.
#[derive(Debug, Default)]
pub struct Cooldown(AtomicU64);

fn mono_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    // +1: a reading is never 0, which means "no cooldown".
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Cooldown {
    /// Cool down for `length` from now (never shortening one that runs).
    pub fn start(&self, length: Duration) {
        let until = mono_ms() + length.as_millis() as u64;
        self.0.fetch_max(until, Ordering::Relaxed);
    }

    /// The time left, if the route is cooling down.
    pub fn left(&self) -> Option<Duration> {
        let until = self.0.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = mono_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

/// How long a provider's `Retry-After` asks to wait: delta-seconds or an
/// HTTP date (RFC 9110 §10.2.3), bounded by `max`. `None` for a value that
/// is neither, or a wait of zero.
pub fn retry_after_header(value: &http::HeaderValue, now: SystemTime, max: Duration) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Very long digit strings are "forever": bounded below.
        Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        httpdate::parse_http_date(text).ok()?.duration_since(now).ok()?
    };
    (!wait.is_zero()).then(|| wait.min(max))
}

/// Seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    retry_after(wait)
}

/// A route's own limiter.
pub struct RouteLimit(DefaultDirectRateLimiter);

impl RouteLimit {
    pub fn new(q: Quota) -> Self {
        RouteLimit(DefaultDirectRateLimiter::direct(gcra(q)))
    }
}

pub struct Limits {
    global: Option<DefaultDirectRateLimiter>,
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    max_keys: usize,
    started: Instant,
    /// Milliseconds since `started` of the last inline sweep.
    last_sweep: AtomicU64,
    clock: DefaultClock,
}

impl Limits {
    pub fn new(c: &LimitsConfig) -> Self {
        Limits {
            global: c.global.map(|q| DefaultDirectRateLimiter::direct(gcra(q))),
            per_client: c.per_client.map(|q| DefaultKeyedRateLimiter::keyed(gcra(q))),
            max_keys: c.per_client_max_keys,
            started: Instant::now(),
            last_sweep: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }
    }

    /// Check the client's, the route's and the global limit, in that order
    /// (most specific first, so one noisy client drains its own bucket before
    /// the shared one).
    pub fn check(&self, client: IpAddr, route: Option<&RouteLimit>) -> Result<(), Limited> {
        // No limit applies: no clock read.
        if self.per_client.is_none() && route.is_none() && self.global.is_none() {
            return Ok(());
        }
        // The clock is read for a refusal only (the limiters read their own).
        let refuse = |scope, nu: governor::NotUntil<_>| Limited {
            scope,
            retry_after: retry_after(nu.wait_time_from(self.clock.now())),
        };
        if let Some(pc) = &self.per_client {
            let key = self.client_key(pc, client);
            pc.check_key(&key).map_err(|nu| refuse(Scope::PerClient, nu))?;
        }
        if let Some(r) = route {
            r.0.check().map_err(|nu| refuse(Scope::Route, nu))?;
        }
        if let Some(g) = &self.global {
            g.check().map_err(|nu| refuse(Scope::Global, nu))?;
        }
        Ok(())
    }

    fn client_key(&self, pc: &DefaultKeyedRateLimiter<IpAddr>, client: IpAddr) -> IpAddr {
        if pc.len() < self.max_keys {
            return client;
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= INLINE_SWEEP_EVERY.as_millis() as u64
            && self
                .last_sweep
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep();
        }
        if pc.len() < self.max_keys {
            client
        } else {
            OVERFLOW_KEY
        }
    }

    /// Drop per-client state of clients whose bucket is full again (idle).
    pub fn sweep(&self) {
        if let Some(pc) = &self.per_client {
            pc.retain_recent();
            pc.shrink_to_fit();
        }
    }

    /// Number of client addresses tracked now.
    pub fn tracked_clients(&self) -> usize {
        self.per_client.as_ref().map_or(0, |pc| pc.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn q(rate: u32, burst: u32) -> Quota {
        Quota {
            rate: NonZeroU32::new(rate).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn limits(global: Option<Quota>, per_client: Option<Quota>, max_keys: usize) -> Limits {
        Limits::new(&LimitsConfig {
            global,
            per_client,
            per_client_max_keys: max_keys,
        })
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let l = limits(None, None, 10);
        let route = RouteLimit::new(q(1, 3));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip, Some(&route)).is_ok());
        }
        let refused = l.check(ip, Some(&route)).unwrap_err();
        assert_eq!(
            refused,
            Limited {
                scope: Scope::Route,
                retry_after: 1
            }
        );
    }

    #[test]
    fn per_client_buckets_are_independent() {
        let l = limits(None, Some(q(1, 2)), 10);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.4".parse().unwrap();
        assert!(l.check(a, None).is_ok() && l.check(a, None).is_ok());
        assert_eq!(l.check(a, None).unwrap_err().scope, Scope::PerClient);
        assert!(l.check(b, None).is_ok() && l.check(b, None).is_ok());
    }

    #[test]
    fn key_store_is_bounded_under_an_address_scan() {
        let l = limits(None, Some(q(1000, 1000)), 1000);
        for i in 0..100_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check(ip, None);
        }
        assert!(l.tracked_clients() <= 1001, "{}", l.tracked_clients());
    }

    #[test]
    fn shares_round_up_and_stay_positive() {
        assert_eq!(share(q(20, 20), 3), q(7, 7));
        assert_eq!(share(q(1, 1), 3), q(1, 1));
        assert_eq!(share(q(100, 10), 1), q(100, 10));
    }

    #[test]
    fn cooldown_runs_out_and_never_shortens() {
        let c = Cooldown::default();
        assert_eq!(c.left(), None);
        c.start(Duration::from_secs(60));
        c.start(Duration::from_millis(1));
        assert!(c.left().unwrap() > Duration::from_secs(59));
        let short = Cooldown::default();
        short.start(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(short.left(), None);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max = Duration::from_secs(3600);
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(retry_after_header(&h("2"), now, max), Some(Duration::from_secs(2)));
        assert_eq!(retry_after_header(&h("0"), now, max), None);
        assert_eq!(retry_after_header(&h("99999999999999999999999"), now, max), Some(max));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after_header(&h(&date), now, max), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after_header(&h(&past), now, max), None);
        assert_eq!(retry_after_header(&h("soon"), now, max), None);
        assert_eq!(retry_after_header(&h("-1"), now, max), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(Duration::ZERO), 1);
    }
}
