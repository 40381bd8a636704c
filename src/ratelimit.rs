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

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota as GQuota};

use crate::config::{LimitsConfig, Quota};

/// Least time between two inline sweeps of the per-client store.
const INLINE_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The shared bucket for clients beyond `per_client_max_keys`.
const OVERFLOW_KEY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

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
        let now = self.clock.now();
        let refuse = |scope, nu: governor::NotUntil<_>| Limited {
            scope,
            retry_after: retry_after(nu.wait_time_from(now)),
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
    fn retry_after_rounds_up() {
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(Duration::ZERO), 1);
    }
}
