//! The duplicate-transaction guard for outbound routes with `duplicate_key`.
//!
//! The value at that JSON pointer is the transaction reference. While a
//! request with a reference is in flight, or after one got a 2xx within
//! `duplicate_window_secs`, another with the same reference gets 409
//! `duplicate_request` and is never sent; a reference whose request failed
//! may be retried. State is per route, bounded by window and capacity, behind
//! [`DuplicateStore`]: in memory, and in the state database under
//! `[state].dir` ([`DurableStore`]), so a restart does not forget a claim;
//! with `[fleet]` the claims live in Redis instead ([`Guard::Fleet`]), under
//! the same rules, so no two instances send the same reference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{Claimed, Fleet, FleetError, Source};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

mod durable;
pub use durable::DurableStore;

/// Why a reference cannot be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    InFlight,
    Succeeded,
    /// An earlier attempt was sent and its outcome is unknown (timeout, cut
    /// response): held for the window, as if it had succeeded.
    Unknown,
    /// The store is full of in-flight references; fail closed.
    Full,
}

/// How a claimed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider answered 2xx: the reference is used for the window.
    Succeeded,
    /// A definite failure (nothing sent, or the provider refused it): the
    /// reference may be retried.
    Failed,
    /// Sent, but whether it took effect is not known: held for the window.
    Unknown,
}

/// Storage of transaction references. Implementations must make `begin`
/// atomic: of two concurrent calls with the same key, exactly one succeeds.
pub trait DuplicateStore: Send + Sync {
    /// Claim `key`; `Err` if it is in flight, succeeded or unknown within the window.
    fn begin(&self, key: &str, now: Instant) -> Result<(), Duplicate>;
    /// Record the outcome: a success or an unknown outcome keeps the key
    /// until `now + window`; a failure releases it.
    fn finish(&self, key: &str, outcome: Outcome, now: Instant);
    /// Forget every claim on `reference` (keys are `METHOD PATH REFERENCE`),
    /// whatever its state: an operator's manual release. How many were held.
    fn release_reference(&self, reference: &str) -> usize;
    /// Number of references held.
    fn len(&self) -> usize;
    /// Make the claim `begin` granted on `key` durable before its request
    /// is sent (blocking; a store in memory has nothing to do). An error
    /// refuses the request.
    fn persist(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }
    /// Whether [`DuplicateStore::persist`] writes anything (then it runs on
    /// the blocking pool).
    fn durable(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    InFlight,
    Done { until: Instant },
    Unknown { until: Instant },
}

impl State {
    fn refuses(self, now: Instant) -> Option<Duplicate> {
        match self {
            State::InFlight => Some(Duplicate::InFlight),
            State::Done { until } if until > now => Some(Duplicate::Succeeded),
            State::Unknown { until } if until > now => Some(Duplicate::Unknown),
            State::Done { .. } | State::Unknown { .. } => None,
        }
    }

    fn expiry(self) -> Option<Instant> {
        match self {
            State::InFlight => None,
            State::Done { until } | State::Unknown { until } => Some(until),
        }
    }
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

    /// Drop expired references; if still full, drop the settled ones that
    /// expire soonest (never an in-flight one). The keys dropped.
    fn make_room(&self, now: Instant) -> Vec<String> {
        let mut evicted = Vec::new();
        self.map.retain(|k, s| {
            let keep = s.expiry().is_none_or(|until| until > now);
            if !keep {
                evicted.push(k.clone());
            }
            keep
        });
        let excess = (self.map.len() + 1).saturating_sub(self.capacity);
        if excess == 0 {
            return evicted;
        }
        let mut settled: Vec<(Instant, String)> = self
            .map
            .iter()
            .filter_map(|e| e.value().expiry().map(|until| (until, e.key().clone())))
            .collect();
        settled.sort();
        for (_, k) in settled.into_iter().take(excess) {
            self.map.remove(&k);
            evicted.push(k);
        }
        evicted
    }

    /// [`DuplicateStore::begin`], and the keys dropped to make room.
    fn begin_evicting(&self, key: &str, now: Instant) -> (Result<(), Duplicate>, Vec<String>) {
        // A known reference answers for itself, whatever the fill level.
        if let Some(why) = self.map.get(key).and_then(|s| s.refuses(now)) {
            return (Err(why), Vec::new());
        }
        let mut evicted = Vec::new();
        if self.map.len() >= self.capacity {
            evicted = self.make_room(now);
            if self.map.len() >= self.capacity {
                return (Err(Duplicate::Full), evicted);
            }
        }
        let result = match self.map.entry(key.to_string()) {
            Entry::Occupied(mut e) => match e.get().refuses(now) {
                Some(why) => Err(why),
                None => {
                    e.insert(State::InFlight);
                    Ok(())
                }
            },
            Entry::Vacant(e) => {
                e.insert(State::InFlight);
                Ok(())
            }
        };
        (result, evicted)
    }
}

impl DuplicateStore for MemoryStore {
    fn begin(&self, key: &str, now: Instant) -> Result<(), Duplicate> {
        self.begin_evicting(key, now).0
    }

    fn finish(&self, key: &str, outcome: Outcome, now: Instant) {
        let until = now + self.window;
        match outcome {
            Outcome::Succeeded => {
                self.map.insert(key.to_string(), State::Done { until });
            }
            Outcome::Unknown => {
                self.map.insert(key.to_string(), State::Unknown { until });
            }
            Outcome::Failed => {
                self.map.remove(key);
            }
        }
    }

    fn release_reference(&self, reference: &str) -> usize {
        let before = self.map.len();
        self.map
            .retain(|k, _| k.splitn(3, ' ').nth(2).is_none_or(|r| r != reference));
        before - self.map.len()
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The transaction reference at `pointer` in a canonical JSON body, as the
/// guard compares it (see [`reference_key`]). `None` when the body has no
/// value there or it is `null`.
pub fn reference(body: &[u8], pointer: &str) -> Option<String> {
    match crate::canonical::pointer(body, pointer)? {
        "null" => None,
        text => Some(reference_key(text)),
    }
}

/// One reference, however the caller spelled it: a number is compared by its
/// exact decimal value (`777`, `777.0`, `7.77e2`, `0.777e3` are one
/// reference; `100000000000000000000001` and `…002` stay two: never read as
/// floats), and so is a string holding a JSON number (`"777"` is `777`: a
/// provider that parses the field as a number sees one order). Any other
/// value keeps its canonical JSON text, quotes included (`"00777"`, a string
/// a number parser would not take, stays apart). Stricter than any one
/// provider, never looser: at worst two references a provider keeps apart
/// share a claim (a 409), never one payment two claims.
pub fn reference_key(canonical: &str) -> String {
    let numeric = if canonical.starts_with('"') {
        serde_json::from_str::<String>(canonical).ok().and_then(|s| decimal(&s))
    } else {
        decimal(canonical)
    };
    numeric.unwrap_or_else(|| canonical.to_string())
}

/// The exact value of a JSON number text in one spelling: no exponent
/// (unless it is beyond ±40), no leading or trailing zeros, no `-0`.
/// `None` when `text` is not a JSON number.
fn decimal(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int = &text[int_start..i];
    if int.is_empty() || (int.len() > 1 && int.starts_with('0')) {
        return None;
    }
    let mut frac = "";
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac = &text[start..i];
        if frac.is_empty() {
            return None;
        }
    }
    let mut exp: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let sign = match b.get(i) {
            Some(b'-') => {
                i += 1;
                -1
            }
            Some(b'+') => {
                i += 1;
                1
            }
            _ => 1,
        };
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        if digits.is_empty() {
            return None;
        }
        // Absurd exponents are not references anyone means: keep the text.
        exp = sign * digits.parse::<i64>().ok().filter(|e| *e <= 1_000_000)?;
    }
    if i != b.len() {
        return None;
    }
    // value = digits × 10^(exp − len(frac)), digits without leading zeros.
    let all: String = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    if digits.is_empty() {
        return Some("0".to_string());
    }
    let trimmed = digits.trim_end_matches('0');
    let scale = exp - frac.len() as i64 + (digits.len() - trimmed.len()) as i64;
    let sign = if negative { "-" } else { "" };
    let n = trimmed.len() as i64;
    // The position of the decimal point counted from the left of `trimmed`.
    let point = n + scale;
    Some(if !(-40..=40).contains(&scale) {
        format!("{sign}{trimmed}e{scale}")
    } else if scale >= 0 {
        format!("{sign}{trimmed}{}", "0".repeat(scale as usize))
    } else if point > 0 {
        let (a, c) = trimmed.split_at(point as usize);
        format!("{sign}{a}.{c}")
    } else {
        format!("{sign}0.{}{trimmed}", "0".repeat((-point) as usize))
    })
}

/// The endpoint part of a claim: an upstream path as the frameworks behind
/// a provider compare it, so that one endpoint spelled differently is one
/// claim. Percent-encoded unreserved characters are decoded (RFC 3986
/// §6.2.2.2: `cr%65ate` is `create`), and so are `%3B` and `%20` (servers
/// that decode before routing see `;` and a space); letters are
/// lower-cased, `;` parameters are dropped from every segment
/// (`create;v=1`, `create%3Bv=1`), then trailing spaces and dots (IIS and
/// Windows drop them: `create.`, `create%20`), and trailing slashes. This
/// is stricter than any one framework, never looser:
/// at worst two paths that a provider keeps apart share a claim (a 409),
/// never one payment two claims. The result has no space (the store's keys
/// are `METHOD PATH REFERENCE`).
pub fn endpoint(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let unreserved = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b';' | b' '));
        match unreserved {
            Some(b) => {
                decoded.push(char::from(b));
                i += 3;
            }
            None => {
                let c = path[i..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
                decoded.push(c);
                i += c.len_utf8().max(1);
            }
        }
    }
    let lowered = decoded.to_lowercase();
    let mut out = lowered
        .split('/')
        .map(|segment| {
            let name = segment.split(';').next().unwrap_or("");
            match name.trim_end_matches([' ', '.']) {
                "" => name,
                trimmed => trimmed,
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    while out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out.replace(' ', "%20")
}

/// A route's duplicate guard: this instance's memory, or the fleet's Redis.
#[derive(Clone)]
pub enum Guard {
    Local(Arc<dyn DuplicateStore>),
    Fleet(FleetGuard),
}

/// The duplicate guard of one route in the fleet's Redis. A claim is the key
/// `{PREFIX:dup:ROUTE}:HASH(REFERENCE):METHOD PATH` holding `f:TOKEN` while
/// in flight (expiring after `ttl`, which covers the whole request: the
/// backstop should a settlement never arrive), then `s` (succeeded) or `u`
/// (unknown) for the window, or deleted after a definite failure.
#[derive(Clone)]
pub struct FleetGuard {
    fleet: Arc<Fleet>,
    route: String,
    window: Duration,
    ttl: Duration,
}

/// Why a claim was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Duplicate(Duplicate),
    /// The fleet's Redis cannot answer, or the state database cannot take
    /// the claim: fail closed, nothing is sent.
    Unavailable,
}

impl FleetGuard {
    pub fn new(fleet: Arc<Fleet>, route: &str, window: Duration, ttl: Duration) -> Self {
        FleetGuard {
            fleet,
            route: route.to_string(),
            window,
            ttl,
        }
    }
}

const IN_FLIGHT: &str = "f:";
const SUCCEEDED: &str = "s";
const UNKNOWN: &str = "u";

/// How often a settlement Redis could not take is tried again, and for how
/// long past the claim's own expiry.
const SETTLE_RETRY: Duration = Duration::from_millis(250);
const SETTLE_GRACE: Duration = Duration::from_secs(60);

impl Guard {
    /// Claim `reference` on `endpoint` (`METHOD PATH`).
    pub async fn begin(&self, endpoint: &str, reference: &str) -> Result<Claim, Refused> {
        match self {
            Guard::Local(store) => {
                let key = format!("{endpoint} {reference}");
                store.begin(&key, Instant::now()).map_err(Refused::Duplicate)?;
                // From here a drop (the client gone) releases the claim.
                let claim = Claim::local(store.clone(), key.clone());
                if store.durable() {
                    let s = store.clone();
                    let written = tokio::task::spawn_blocking(move || s.persist(&key))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                    if let Err(e) = written {
                        tracing::error!(error = %e, "duplicate guard: the claim could not be written to the state database; refused, nothing sent");
                        return Err(Refused::Unavailable);
                    }
                }
                Ok(claim)
            }
            Guard::Fleet(g) => {
                let key = g.fleet.key_claim(&g.route, reference, endpoint);
                let value = format!("{IN_FLIGHT}{}", g.fleet.token());
                // Cancelled while the claim is on its way: release it.
                let mut pending = Pending {
                    guard: g.clone(),
                    key,
                    value,
                    armed: true,
                };
                match g.fleet.claim("claim", &pending.key, &pending.value, g.ttl).await {
                    Ok(Claimed::Ours) => {
                        pending.armed = false;
                        Ok(Claim {
                            inner: Inner::Fleet {
                                guard: g.clone(),
                                key: std::mem::take(&mut pending.key),
                                value: std::mem::take(&mut pending.value),
                                claimed_at: Instant::now(),
                            },
                            sent: false,
                            done: false,
                        })
                    }
                    Ok(Claimed::Held(v)) => {
                        pending.armed = false;
                        Err(Refused::Duplicate(match v.as_str() {
                            SUCCEEDED => Duplicate::Succeeded,
                            UNKNOWN => Duplicate::Unknown,
                            _ => Duplicate::InFlight,
                        }))
                    }
                    // Whether the claim landed is unknown: `pending` releases it.
                    Err(_) => {
                        g.fleet.fallback("guard_refused");
                        Err(Refused::Unavailable)
                    }
                }
            }
        }
    }

    /// Forget every claim on `reference` (an operator's release); how many.
    pub async fn release_reference(&self, reference: &str) -> Result<usize, FleetError> {
        match self {
            Guard::Local(store) => Ok(store.release_reference(reference)),
            Guard::Fleet(g) => {
                let prefix = g.fleet.key_claim_prefix(&g.route, reference);
                g.fleet.delete_prefixed(&prefix).await
            }
        }
    }

    /// References held here (the fleet's are in Redis: not counted).
    pub fn len(&self) -> Option<usize> {
        match self {
            Guard::Local(store) => Some(store.len()),
            Guard::Fleet(_) => None,
        }
    }

    pub fn source(&self) -> Option<Source> {
        match self {
            Guard::Local(_) => None,
            Guard::Fleet(_) => Some(Source::Redis),
        }
    }
}

/// A fleet claim whose answer has not arrived: released if dropped armed.
struct Pending {
    guard: FleetGuard,
    key: String,
    value: String,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let (g, key, value) = (
                self.guard.clone(),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.value),
            );
            let deadline = Instant::now() + g.ttl;
            self.guard
                .fleet
                .spawn(settle_until(g, key, value, Outcome::Failed, deadline));
        }
    }
}

/// Hand a fleet claim's settlement to a task of the fleet's that retries
/// it until the claim would have expired (see `settle_until`).
fn settle_later(g: &FleetGuard, key: &str, value: &str, claimed_at: Instant, outcome: Outcome) {
    let deadline = claimed_at + g.ttl + SETTLE_GRACE;
    g.fleet.spawn(settle_until(
        g.clone(),
        key.to_string(),
        value.to_string(),
        outcome,
        deadline,
    ));
}

/// Settle a fleet claim, trying again while Redis cannot take it, until
/// `deadline` (past it the claim has expired on its own, or a success or
/// unknown outcome no longer matters more than the guard being open again).
async fn settle_until(g: FleetGuard, key: String, value: String, outcome: Outcome, deadline: Instant) {
    loop {
        if settle_once(&g, &key, &value, outcome).await.is_ok() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(route = %g.route, ?outcome, "duplicate guard: a claim could not be settled in Redis; its expiry releases it");
            return;
        }
        tokio::time::sleep(SETTLE_RETRY).await;
    }
}

async fn settle_once(g: &FleetGuard, key: &str, value: &str, outcome: Outcome) -> Result<(), FleetError> {
    let kept = match outcome {
        Outcome::Succeeded => Some(SUCCEEDED),
        Outcome::Unknown => Some(UNKNOWN),
        Outcome::Failed => None,
    };
    g.fleet.settle("settle", key, value, kept, g.window).await
}

enum Inner {
    Local {
        store: Arc<dyn DuplicateStore>,
        key: String,
    },
    Fleet {
        guard: FleetGuard,
        key: String,
        value: String,
        claimed_at: Instant,
    },
}

/// A claimed reference. Resolved by [`Claim::finish`]; if dropped before
/// that (client gone, panic, shutdown), it is released when nothing was sent
/// and held as unknown once the request may have reached the provider. A
/// fleet claim is settled by a task spawned from `Drop` (tried again while
/// Redis cannot answer); its expiry is the backstop.
pub struct Claim {
    inner: Inner,
    sent: bool,
    done: bool,
}

impl Claim {
    pub fn local(store: Arc<dyn DuplicateStore>, key: String) -> Self {
        Claim {
            inner: Inner::Local { store, key },
            sent: false,
            done: false,
        }
    }

    /// From now on bytes may reach the provider: a drop means "unknown".
    pub fn sending(&mut self) {
        self.sent = true;
    }

    /// Settle by the outcome. A fleet claim is settled in Redis before this
    /// returns, or (Redis not answering) by a task that keeps trying.
    pub async fn finish(mut self, outcome: Outcome) {
        self.done = true;
        match &self.inner {
            Inner::Local { store, key } if store.durable() => {
                let (s, k, now) = (store.clone(), key.clone(), Instant::now());
                // Runs to its end even if this task is cancelled meanwhile.
                let _ = tokio::task::spawn_blocking(move || s.finish(&k, outcome, now)).await;
            }
            Inner::Local { store, key } => store.finish(key, outcome, Instant::now()),
            Inner::Fleet {
                guard,
                key,
                value,
                claimed_at,
            } => {
                if settle_once(guard, key, value, outcome).await.is_err() {
                    settle_later(guard, key, value, *claimed_at, outcome);
                }
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let outcome = if self.sent { Outcome::Unknown } else { Outcome::Failed };
        match &self.inner {
            Inner::Local { store, key } => store.finish(key, outcome, Instant::now()),
            Inner::Fleet {
                guard,
                key,
                value,
                claimed_at,
            } => settle_later(guard, key, value, *claimed_at, outcome),
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
        s.finish("a", Outcome::Succeeded, t0);
        assert_eq!(s.begin("a", t0 + Duration::from_secs(9)), Err(Duplicate::Succeeded));
        assert_eq!(s.begin("a", t0 + Duration::from_secs(11)), Ok(()));
        s.finish("a", Outcome::Failed, t0);
        assert_eq!(s.begin("a", t0), Ok(()), "a failed request may be retried");
        s.finish("a", Outcome::Unknown, t0);
        assert_eq!(
            s.begin("a", t0 + Duration::from_secs(9)),
            Err(Duplicate::Unknown),
            "an unknown outcome stays claimed for the window"
        );
        assert_eq!(s.begin("a", t0 + Duration::from_secs(11)), Ok(()));
        s.finish("a", Outcome::Unknown, t0);
        s.begin("POST /create \"a b\"", t0).unwrap();
        s.begin("POST /status \"a b\"", t0).unwrap();
        s.begin("POST /create \"a\"", t0).unwrap();
        assert_eq!(
            s.release_reference("\"a b\""),
            2,
            "an operator releases a reference on every endpoint"
        );
        assert_eq!(s.begin("POST /create \"a b\"", t0), Ok(()));
        assert_eq!(s.begin("POST /create \"a\"", t0), Err(Duplicate::InFlight));
    }

    #[test]
    fn bounded_by_capacity_never_evicting_in_flight() {
        let s = MemoryStore::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            s.begin(k, t0).unwrap();
        }
        assert_eq!(s.begin("d", t0), Err(Duplicate::Full));
        s.finish("a", Outcome::Succeeded, t0);
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
    fn a_dropped_claim_is_released_before_sending_and_unknown_after() {
        let s: Arc<dyn DuplicateStore> = Arc::new(MemoryStore::new(Duration::from_secs(60), 10));
        s.begin("k", Instant::now()).unwrap();
        drop(Claim::local(s.clone(), "k".into()));
        assert_eq!(s.begin("k", Instant::now()), Ok(()), "nothing was sent: released");
        let mut c = Claim::local(s.clone(), "k".into());
        c.sending();
        drop(c);
        assert_eq!(s.begin("k", Instant::now()), Err(Duplicate::Unknown));
    }

    #[test]
    fn large_numeric_references_keep_their_digits() {
        let a = reference(br#"{"order_id":100000000000000000000001}"#, "/order_id");
        let b = reference(br#"{"order_id":100000000000000000000002}"#, "/order_id");
        assert_eq!(a.as_deref(), Some("100000000000000000000001"));
        assert_ne!(a, b);
        assert_eq!(reference(br#"{"a~b":{"c/d":7}}"#, "/a~0b/c~1d").as_deref(), Some("7"));
        assert_eq!(reference(br#"{"a":[1]}"#, "/a/x"), None);
    }

    #[test]
    fn one_reference_spelled_differently_is_one_reference() {
        let key = |body: &str| reference(body.as_bytes(), "/order_id");
        for spelled in [
            "777",
            "777.0",
            "7.77e2",
            "7.770E+2",
            "777e0",
            "0.777e3",
            "77700e-2",
            "\"777\"",
            "\"7.77e2\"",
        ] {
            assert_eq!(
                key(&format!(r#"{{"order_id":{spelled}}}"#)).as_deref(),
                Some("777"),
                "{spelled}"
            );
        }
        assert_eq!(key(r#"{"order_id":-0.0}"#).as_deref(), Some("0"));
        assert_eq!(key(r#"{"order_id":0.5e-1}"#).as_deref(), Some("0.05"));
        assert_eq!(key(r#"{"order_id":-12.50}"#).as_deref(), Some("-12.5"));
        assert_eq!(key(r#"{"order_id":1e50}"#).as_deref(), Some("1e50"));
        assert_eq!(key(r#"{"order_id":10e49}"#).as_deref(), Some("1e50"));
        // Strings that are not JSON numbers keep their quotes.
        assert_eq!(key(r#"{"order_id":"00777"}"#).as_deref(), Some("\"00777\""));
        assert_eq!(key(r#"{"order_id":"ORD-1"}"#).as_deref(), Some("\"ORD-1\""));
        assert_eq!(key(r#"{"order_id":" 777"}"#).as_deref(), Some("\" 777\""));
        assert_eq!(key(r#"{"order_id":true}"#).as_deref(), Some("true"));
        assert_eq!(
            reference(br#"{"a":{"b":[5,{"c":"x"}]}}"#, "/a/b/1/c").as_deref(),
            Some("\"x\"")
        );
        assert_eq!(key(r#"{"order_id":null}"#), None);
        assert_eq!(key(r#"{}"#), None);
    }

    #[test]
    fn one_endpoint_spelled_differently_is_one_endpoint() {
        for spelled in [
            "/api/v3/pg/order/create",
            "/api/v3/pg/order/create/",
            "/api/v3/pg/order/create///",
            "/api/v3/pg/order/cr%65ate",
            "/api/v3/pg/order/cr%65%61te/",
            "/API/v3/pg/Order/CREATE",
            "/api/v3/pg/order/create;v=1",
            "/api/v3/pg/order;x=1/create;jsessionid=2/",
            "/api/v3/pg/order/create%3B",
            "/api/v3/pg/order/create%3bv=1",
            "/api/v3/pg/order/create%20",
            "/api/v3/pg/order/create.",
            "/api/v3/pg/order/create%20.%20/",
            "/api/v3/pg/order%20/create",
        ] {
            assert_eq!(endpoint(spelled), "/api/v3/pg/order/create", "{spelled}");
        }
        assert_eq!(endpoint("/api/v3/pg/order/status"), "/api/v3/pg/order/status");
        assert_eq!(endpoint("/"), "/");
        assert_eq!(endpoint(""), "");
        // Reserved and other encoded bytes stay encoded (lower-cased).
        assert_eq!(endpoint("/a%2Fb"), "/a%2fb");
        assert_eq!(endpoint("/a%20b c"), "/a%20b%20c", "no space in a store key");
        assert_eq!(endpoint("/a%zz/%4"), "/a%zz/%4");
        assert_eq!(endpoint("/caf\u{e9}/%C3%A9"), "/caf\u{e9}/%c3%a9");
    }
}
