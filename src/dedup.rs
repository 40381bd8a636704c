//! The duplicate-transaction guard for outbound routes with `duplicate_key`.
//!
//! The value at that JSON pointer is the transaction reference. While a
//! request with a reference is in flight, or after one got a 2xx within
//! `duplicate_window_secs`, another with the same reference gets 409
//! `duplicate_request` and is never sent; a reference whose request failed
//! may be retried. State is per route, bounded by window and capacity, behind
//! [`DuplicateStore`] so a shared store (Redis) can replace the in-memory one
//! for fleets.

use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// Why a reference cannot be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    InFlight,
    Succeeded,
    /// The store is full of in-flight references; fail closed.
    Full,
}

/// Storage of transaction references. Implementations must make `begin`
/// atomic: of two concurrent calls with the same key, exactly one succeeds.
pub trait DuplicateStore: Send + Sync {
    /// Claim `key`; `Err` if it is in flight or succeeded within the window.
    fn begin(&self, key: &str, now: Instant) -> Result<(), Duplicate>;
    /// Record the outcome: a success keeps the key until `now + window`; a
    /// failure releases it.
    fn finish(&self, key: &str, succeeded: bool, now: Instant);
    /// Number of references held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    InFlight,
    Done { until: Instant },
}

/// In-memory store for one gateway process.
pub struct MemoryStore {
    map: DashMap<String, State>,
    window: Duration,
    capacity: usize,
}

impl MemoryStore {
    pub fn new(window: Duration, capacity: usize) -> Self {
        MemoryStore {
            map: DashMap::new(),
            window,
            capacity,
        }
    }

    /// Drop expired references; if still full, drop the successes that
    /// expire soonest (never an in-flight one).
    fn make_room(&self, now: Instant) {
        self.map
            .retain(|_, s| !matches!(s, State::Done { until } if *until <= now));
        let excess = (self.map.len() + 1).saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        let mut done: Vec<(Instant, String)> = self
            .map
            .iter()
            .filter_map(|e| match e.value() {
                State::Done { until } => Some((*until, e.key().clone())),
                State::InFlight => None,
            })
            .collect();
        done.sort();
        for (_, k) in done.into_iter().take(excess) {
            self.map.remove(&k);
        }
    }
}

impl DuplicateStore for MemoryStore {
    fn begin(&self, key: &str, now: Instant) -> Result<(), Duplicate> {
        // A known reference answers for itself, whatever the fill level.
        match self.map.get(key).map(|s| *s) {
            Some(State::InFlight) => return Err(Duplicate::InFlight),
            Some(State::Done { until }) if until > now => return Err(Duplicate::Succeeded),
            _ => {}
        }
        if self.map.len() >= self.capacity {
            self.make_room(now);
            if self.map.len() >= self.capacity {
                return Err(Duplicate::Full);
            }
        }
        match self.map.entry(key.to_string()) {
            Entry::Occupied(mut e) => match *e.get() {
                State::InFlight => Err(Duplicate::InFlight),
                State::Done { until } if until > now => Err(Duplicate::Succeeded),
                State::Done { .. } => {
                    e.insert(State::InFlight);
                    Ok(())
                }
            },
            Entry::Vacant(e) => {
                e.insert(State::InFlight);
                Ok(())
            }
        }
    }

    fn finish(&self, key: &str, succeeded: bool, now: Instant) {
        if succeeded {
            self.map.insert(
                key.to_string(),
                State::Done {
                    until: now + self.window,
                },
            );
        } else {
            self.map.remove(key);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The transaction reference at `pointer` in a JSON body, as JSON text
/// (strings keep their quotes, so `"1"` and `1` stay distinct); `None` when
/// the body has no value there.
pub fn reference(body: &[u8], pointer: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.pointer(pointer)? {
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Releases an in-flight reference if the request is dropped before
/// `finish` (client gone, panic): never leave a key stuck "in flight".
pub struct Claim<'a> {
    store: &'a dyn DuplicateStore,
    key: String,
    done: bool,
}

impl<'a> Claim<'a> {
    pub fn new(store: &'a dyn DuplicateStore, key: String) -> Self {
        Claim {
            store,
            key,
            done: false,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn finish(mut self, succeeded: bool) {
        self.store.finish(&self.key, succeeded, Instant::now());
        self.done = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.store.finish(&self.key, false, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_then_success_window_then_expiry() {
        let s = MemoryStore::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(s.begin("a", t0), Ok(()));
        assert_eq!(s.begin("a", t0), Err(Duplicate::InFlight));
        s.finish("a", true, t0);
        assert_eq!(s.begin("a", t0 + Duration::from_secs(9)), Err(Duplicate::Succeeded));
        assert_eq!(s.begin("a", t0 + Duration::from_secs(11)), Ok(()));
        s.finish("a", false, t0);
        assert_eq!(s.begin("a", t0), Ok(()), "a failed request may be retried");
    }

    #[test]
    fn bounded_by_capacity_never_evicting_in_flight() {
        let s = MemoryStore::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            s.begin(k, t0).unwrap();
        }
        assert_eq!(s.begin("d", t0), Err(Duplicate::Full));
        s.finish("a", true, t0);
        assert_eq!(s.begin("d", t0), Ok(()), "the oldest success makes room");
        assert_eq!(s.len(), 3);
        assert_eq!(s.begin("b", t0), Err(Duplicate::InFlight));
    }

    #[test]
    fn concurrent_begins_admit_exactly_one() {
        let s = std::sync::Arc::new(MemoryStore::new(Duration::from_secs(60), 1000));
        let wins: usize = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|_| sc.spawn(|| s.begin("same", Instant::now()).is_ok()))
                .collect();
            hs.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn references_keep_their_json_type() {
        assert_eq!(reference(br#"{"order_id":"1"}"#, "/order_id").as_deref(), Some("\"1\""));
        assert_eq!(reference(br#"{"order_id":1}"#, "/order_id").as_deref(), Some("1"));
        assert_eq!(
            reference(br#"{"a":{"b":[5,{"c":"x"}]}}"#, "/a/b/1/c").as_deref(),
            Some("\"x\"")
        );
        assert_eq!(reference(br#"{"order_id":null}"#, "/order_id"), None);
        assert_eq!(reference(br#"{}"#, "/order_id"), None);
    }
}
