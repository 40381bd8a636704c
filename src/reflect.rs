//! The signatures the gateway produced, remembered so that none of them can
//! come back as a webhook. KwikPaisa signs requests and webhooks with the
//! same rule (HMAC of body + timestamp) and, unless a webhook has its own
//! credential, the same secret: a signed outbound request's body,
//! `X-TIMESTAMP` and `X-SIGNATURE`, seen by anyone on the way (a logging
//! proxy, header-capturing monitoring, a provider echoing them), would verify
//! as a genuine webhook. The receiver refuses a webhook whose signature is
//! one of ours (`401 reflected_signature`).
//!
//! Only signatures of credentials a webhook verifies with are remembered,
//! for as long as such a webhook would still find their timestamp fresh
//! (its `tolerance_secs`). Memory is two generations of 128-bit MAC
//! prefixes, rotated every window, so an entry lives between one and two
//! windows and the size is bounded by the signing rate (about 40 bytes per
//! signature), with a hard cap past which a generation rotates early (the
//! oldest signatures are then forgotten first; counted).
//!
//! With `[fleet]`, every remembered signature is also written to Redis
//! (`{PREFIX:refl:CREDENTIAL}:MAC-PREFIX`, expiring after the window), and a
//! webhook's signature is looked up there when the local memory does not
//! know it: a signature instance A sent is refused when replayed to
//! instance B. While Redis cannot answer, the check falls back to the local
//! memory (counted `reflection_local`): refusing every webhook then would
//! stop the provider's events, and the signatures this instance sent are
//! still refused (docs/fleet.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashSet;

use crate::fleet::{Fleet, Source};

/// At most this many signatures per generation (two generations kept).
pub const CAPACITY: usize = 2_000_000;

struct Generation {
    started: Instant,
    macs: DashSet<u128>,
}

impl Generation {
    fn new() -> Self {
        Generation {
            started: Instant::now(),
            macs: DashSet::new(),
        }
    }
}

/// The produced signatures (see the module doc).
pub(crate) struct Reflections {
    current: ArcSwap<Generation>,
    previous: ArcSwap<Generation>,
    /// Generations rotated early because one was full.
    pub early_rotations: AtomicU64,
    fleet: Option<Arc<Fleet>>,
}

fn key(mac: &[u8; 32]) -> u128 {
    let mut first = [0u8; 16];
    first.copy_from_slice(&mac[..16]);
    u128::from_be_bytes(first)
}

impl Reflections {
    pub fn new(fleet: Option<Arc<Fleet>>) -> Self {
        Reflections {
            current: ArcSwap::from_pointee(Generation::new()),
            previous: ArcSwap::from_pointee(Generation::new()),
            early_rotations: AtomicU64::new(0),
            fleet,
        }
    }

    /// Remember a signature this gateway sent with `credential`, for at
    /// least `window`; with `[fleet]` in Redis too (written by a task of
    /// its own, so the request does not wait for it).
    pub fn remember_sent(&self, credential: &str, mac: &[u8; 32], window: Duration) {
        self.remember(mac, window);
        if let Some(fleet) = &self.fleet {
            let key = fleet.key_reflection(credential, key(mac));
            let f = fleet.clone();
            fleet.spawn(async move {
                // A failure is counted by the call; the local memory still holds it.
                let _ = f.remember("reflection", &key, window).await;
            });
        }
    }

    /// Whether a webhook's `mac` (verifying with `credential`) is a signature
    /// this gateway — or with `[fleet]`, any instance — sent lately, and
    /// where the answer came from (`None` without `[fleet]`).
    pub async fn seen_by_fleet(&self, credential: &str, mac: &[u8; 32]) -> (bool, Option<Source>) {
        if self.seen(mac) {
            return (true, self.fleet.as_ref().map(|_| Source::Local));
        }
        let Some(fleet) = &self.fleet else {
            return (false, None);
        };
        match fleet
            .exists("reflection", &fleet.key_reflection(credential, key(mac)))
            .await
        {
            Ok(seen) => (seen, Some(Source::Redis)),
            Err(_) => {
                fleet.fallback("reflection_local");
                (false, Some(Source::Local))
            }
        }
    }

    /// Remember a signature this gateway sent, for at least `window`.
    pub fn remember(&self, mac: &[u8; 32], window: Duration) {
        let current = self.current.load_full();
        let full = current.macs.len() >= CAPACITY;
        if full || current.started.elapsed() >= window {
            if full {
                self.early_rotations.fetch_add(1, Ordering::Relaxed);
            }
            // Current becomes previous, once even if two threads race here.
            let fresh = Arc::new(Generation::new());
            let was = self.current.compare_and_swap(&current, fresh);
            if Arc::ptr_eq(&was, &current) {
                self.previous.store(current);
            }
        }
        self.current.load().macs.insert(key(mac));
    }

    /// Whether `mac` is one of the signatures this gateway sent lately.
    pub fn seen(&self, mac: &[u8; 32]) -> bool {
        let k = key(mac);
        self.current.load().macs.contains(&k) || self.previous.load().macs.contains(&k)
    }

    pub fn len(&self) -> usize {
        self.current.load().macs.len() + self.previous.load().macs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_for_at_least_one_window() {
        let r = Reflections::new(None);
        let a = [7u8; 32];
        let b = [9u8; 32];
        assert!(!r.seen(&a));
        r.remember(&a, Duration::from_secs(60));
        assert!(r.seen(&a));
        assert!(!r.seen(&b));
        // A zero window rotates on every insert: `a` moves to the previous
        // generation (still seen), then out.
        r.remember(&b, Duration::ZERO);
        assert!(r.seen(&a) && r.seen(&b));
        r.remember(&[1u8; 32], Duration::ZERO);
        assert!(!r.seen(&a), "gone after two rotations");
        assert!(r.seen(&b));
        assert_eq!(r.len(), 2);
    }
}
