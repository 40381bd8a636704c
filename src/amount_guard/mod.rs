//! The amount guard (`[route.amount_guard]`): caps on what a payout route
//! sends, per request and per UTC day, per caller or per route.
//!
//! A request's amount (and currency) is read from its canonical body as
//! JSON text and turned into integer minor units exactly ([`crate::money`]);
//! a missing or malformed one is refused (`400 invalid_amount`), one over
//! `max_per_request` too (`403 amount_limit_exceeded`). Then the day's sum
//! and count are checked and *reserved* in one step ([`AmountGuard::reserve`]):
//! locally in `store` (a table of the state database under `[state].dir`,
//! durable before the request goes on), or with `[fleet]` in Redis (`shared`, one Lua script; Redis not
//! answering refuses the request, `503 amount_guard_unavailable`). Over a
//! day's cap: `403 amount_limit_exceeded`, nothing sent.
//!
//! A [`Reservation`] is settled by the request's outcome, the duplicate
//! guard's [`Outcome`]: kept on a 2xx, kept and tallied as unknown when the
//! request may have taken effect (a timeout after sending, 408/504/522/524),
//! released on a definite failure or when nothing was sent. Dropped
//! unsettled (client gone, panic, shutdown), it is released if nothing was
//! sent and kept as unknown once bytes may have reached the provider, by
//! work spawned from `Drop`. Totals survive restarts (on disk or in Redis);
//! a reservation whose gateway died before settling stays counted.

mod payout;
mod reservation;
mod shared;
mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

use crate::config::{AmountGuardConfig, AmountPer};
use crate::dedup::Outcome;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::money;
pub use payout::{check_request, read as read_payout, Payout};
pub use reservation::Reservation;
pub use store::{LocalTotals, StoreError};

/// A UTC day: days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(pub u32);

impl Day {
    pub fn of(t: SystemTime) -> Day {
        let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Day(u32::try_from(secs / 86_400).unwrap_or(u32::MAX))
    }

    /// The host's clock: the day a payout is counted on.
    pub fn today() -> Day {
        Day::of(SystemTime::now())
    }

    /// `YYYY-MM-DD`.
    pub fn label(self) -> String {
        let date = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(i64::from(self.0));
        format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
    }
}

/// Where a reservation counts: one caller's (or the route's) day in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub day: Day,
    /// The route's `minor_units` the amounts are counted in: part of the
    /// bucket, so a changed `minor_units` never reads old totals wrongly.
    pub units: u8,
    pub currency: String,
    /// The caller (`127.0.0.2`, `uri:spiffe://…`), or `*` with `per = "route"`.
    pub caller: String,
}

/// The caller of `per = "route"`: everyone.
pub const EVERYONE: &str = "*";

/// The day caps a reservation is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_day: Option<u64>,
    pub max_count: Option<u64>,
}

/// The day caps' answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reserved,
    OverDay,
    OverCount,
}

impl Caps {
    /// One more request of `amount` on a day that holds `sum` over `count` requests.
    pub fn decide(self, sum: u64, count: u64, amount: u64) -> Verdict {
        if self.max_day.is_some_and(|max| amount > max.saturating_sub(sum)) {
            Verdict::OverDay
        } else if self.max_count.is_some_and(|max| count >= max) {
            Verdict::OverCount
        } else {
            Verdict::Reserved
        }
    }
}

/// One bucket's totals for a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    pub currency: String,
    pub caller: String,
    /// Reserved and kept: minor units, and requests.
    pub amount: u64,
    pub count: u64,
    /// Of those, sent with an unknown outcome.
    pub unknown_amount: u64,
    pub unknown_count: u64,
}

/// Why a request is refused; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `400 invalid_amount`: the message says what is wrong where.
    Invalid(String),
    /// `403 amount_limit_exceeded`: the message names the cap (never a total).
    OverRequest(String),
    OverDay(String),
    OverCount(String),
    /// `503 amount_guard_unavailable`: the totals cannot be read or written.
    Unavailable,
}

impl Refusal {
    /// The `result` label of `signgate_amount_guard_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid",
            Refusal::OverRequest(_) => "over_request",
            Refusal::OverDay(_) => "over_day",
            Refusal::OverCount(_) => "over_count",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// Where a route's totals live.
#[derive(Clone)]
pub enum Backend {
    Local(Arc<LocalTotals>),
    /// `[fleet]`: in Redis, shared with every instance.
    Fleet(Arc<Fleet>),
}

/// The per-route counters, resolved once.
struct Counters {
    allowed: IntCounter,
    kept: IntCounter,
    released: IntCounter,
    unknown: IntCounter,
    refused: Vec<(&'static str, IntCounter)>,
}

impl Counters {
    fn new(metrics: &Metrics, route: &str) -> Counters {
        let c = |result: &str| metrics.amount_guard.with_label_values(&[route, result]);
        Counters {
            allowed: c("allowed"),
            kept: c("kept"),
            released: c("released"),
            unknown: c("unknown"),
            refused: ["invalid", "over_request", "over_day", "over_count", "unavailable"]
                .into_iter()
                .map(|r| (r, c(r)))
                .collect(),
        }
    }

    fn refused(&self, why: &Refusal) {
        if let Some((_, c)) = self.refused.iter().find(|(r, _)| *r == why.result()) {
            c.inc();
        }
    }

    fn settled(&self, outcome: Outcome) {
        match outcome {
            Outcome::Succeeded => self.kept.inc(),
            Outcome::Failed => self.released.inc(),
            Outcome::Unknown => self.unknown.inc(),
        }
    }
}

struct Inner {
    route: String,
    config: AmountGuardConfig,
    backend: Backend,
    counters: Counters,
    /// `[fleet]`: how long an unsettled reservation's token lives.
    token_ttl: Duration,
}

/// One route's amount guard (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct AmountGuard {
    inner: Arc<Inner>,
}

impl AmountGuard {
    /// `token_ttl`: with `[fleet]`, how long a reservation may stay
    /// unsettled in Redis before its token expires (it then stays counted).
    pub fn new(
        route: &str,
        config: AmountGuardConfig,
        backend: Backend,
        metrics: &Metrics,
        token_ttl: Duration,
    ) -> AmountGuard {
        AmountGuard {
            inner: Arc::new(Inner {
                counters: Counters::new(metrics, route),
                route: route.to_string(),
                config,
                backend,
                token_ttl,
            }),
        }
    }

    pub fn config(&self) -> &AmountGuardConfig {
        &self.inner.config
    }

    /// `redis` or `local`: where the totals live.
    pub fn source(&self) -> &'static str {
        match self.inner.backend {
            Backend::Local(_) => "local",
            Backend::Fleet(_) => "redis",
        }
    }

    /// Minor units as the route writes amounts (`105.50`).
    pub fn format(&self, minor: u64) -> String {
        money::format_minor(minor, self.inner.config.minor_units)
    }

    /// Whose day a request counts on: `caller` (the mTLS identity, else the
    /// address), or everyone's with `per = "route"`.
    pub fn caller(&self, caller: impl FnOnce() -> String) -> String {
        match self.inner.config.per {
            AmountPer::Client => caller(),
            AmountPer::Route => EVERYONE.to_string(),
        }
    }

    fn caps(&self) -> Caps {
        Caps {
            max_day: self.inner.config.max_per_day,
            max_count: self.inner.config.max_count_per_day,
        }
    }

    /// Check the per-request caps, then the day's caps for `caller`, and
    /// reserve the payout (counted either way). Cancelled while the
    /// reservation is on its way, it is released once it lands.
    pub async fn reserve(&self, caller: String, payout: &Payout) -> Result<Reservation, Refusal> {
        if let Err(why) = check_request(&self.inner.config, payout) {
            self.inner.counters.refused(&why);
            return Err(why);
        }
        let bucket = Bucket {
            day: Day::today(),
            units: self.inner.config.minor_units,
            currency: payout.currency.clone(),
            caller,
        };
        let verdict = match &self.inner.backend {
            Backend::Local(store) => self.reserve_local(store, &bucket, payout.amount).await,
            Backend::Fleet(fleet) => shared::reserve(self, fleet, &bucket, payout.amount).await,
        };
        let result = match verdict {
            Ok((Verdict::Reserved, token)) => {
                self.inner.counters.allowed.inc();
                return Ok(Reservation::new(self.clone(), bucket, payout.amount, token));
            }
            Ok((Verdict::OverDay, _)) => Refusal::OverDay(self.over_day(&bucket)),
            Ok((Verdict::OverCount, _)) => Refusal::OverCount(self.over_count(&bucket)),
            Err(()) => Refusal::Unavailable,
        };
        self.inner.counters.refused(&result);
        Err(result)
    }

    /// Today's totals of this route, by currency and caller.
    pub async fn today(&self) -> Result<(Day, Vec<Total>), String> {
        let day = Day::today();
        let totals = match &self.inner.backend {
            Backend::Local(store) => {
                let (s, route, units) = (store.clone(), self.inner.route.clone(), self.inner.config.minor_units);
                tokio::task::spawn_blocking(move || s.day(day, &route, units))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            Backend::Fleet(fleet) => shared::day(self, fleet, day).await.map_err(|e| e.to_string())?,
        };
        Ok((day, totals))
    }

    /// The largest share of each day cap any bucket uses today, as the
    /// gauge's `cap` label says it: `amount`, `count` (capped ones only).
    pub async fn day_use(&self) -> Result<Vec<(&'static str, f64)>, String> {
        let (_, totals) = self.today().await?;
        let (mut sum, mut count) = (0f64, 0f64);
        for t in &totals {
            let (s, n) = self.shares(t);
            sum = sum.max(s.unwrap_or(0.0));
            count = count.max(n.unwrap_or(0.0));
        }
        Ok(self
            .inner
            .config
            .day_caps()
            .into_iter()
            .map(|cap| (cap, if cap == "amount" { sum } else { count }))
            .collect())
    }

    /// The shares of the day caps one bucket uses: (sum, count), each when capped.
    pub fn shares(&self, t: &Total) -> (Option<f64>, Option<f64>) {
        let share = |used: u64, max: Option<u64>| max.map(|m| used as f64 / m as f64);
        (
            share(t.amount, self.inner.config.max_per_day),
            share(t.count, self.inner.config.max_count_per_day),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(edit: impl FnOnce(&mut AmountGuardConfig)) -> (AmountGuard, tempfile::TempDir) {
        let mut config = AmountGuardConfig {
            amount: "/amount".into(),
            currency: Some("/currency".into()),
            minor_units: 2,
            max_per_request: Some(50_000),
            max_per_day: Some(100_000),
            max_count_per_day: Some(3),
            per: AmountPer::Client,
        };
        edit(&mut config);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalTotals::new(crate::statedb::open(dir.path()).unwrap()).unwrap());
        let metrics = Metrics::new();
        let g = AmountGuard::new(
            "payouts",
            config,
            Backend::Local(store),
            &metrics,
            Duration::from_secs(60),
        );
        (g, dir)
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(Day(0).label(), "1970-01-01");
        let t = UNIX_EPOCH + Duration::from_secs(1_778_716_799); // 2026-05-13T23:59:59Z
        assert_eq!(Day::of(t).label(), "2026-05-13");
        assert_eq!(Day::of(t + Duration::from_secs(1)).label(), "2026-05-14");
    }

    #[test]
    fn caps_decide_on_the_sum_then_the_count() {
        let caps = Caps {
            max_day: Some(100),
            max_count: Some(2),
        };
        assert_eq!(caps.decide(0, 0, 100), Verdict::Reserved);
        assert_eq!(caps.decide(1, 0, 100), Verdict::OverDay);
        assert_eq!(caps.decide(50, 2, 10), Verdict::OverCount);
        assert_eq!(
            caps.decide(200, 0, 0),
            Verdict::Reserved,
            "a zero amount fits under a lowered cap"
        );
        let none = Caps {
            max_day: None,
            max_count: None,
        };
        assert_eq!(none.decide(u64::MAX, u64::MAX, u64::MAX), Verdict::Reserved);
    }

    #[test]
    fn payouts_are_read_exactly_and_refused_with_their_reason() {
        let (g, _dir) = guard(|_| {});
        let p = |b: &str| g.payout(b.as_bytes());
        assert_eq!(
            p(r#"{"amount":"105.50","currency":"inr"}"#),
            Ok(Payout {
                amount: 10_550,
                currency: "INR".into()
            })
        );
        assert_eq!(p(r#"{"amount":105.5,"currency":"INR"}"#).unwrap().amount, 10_550);
        let invalid = |b: &str| match p(b) {
            Err(Refusal::Invalid(m)) => m,
            other => panic!("{b}: {other:?}"),
        };
        assert!(invalid(r#"{"currency":"INR"}"#).contains("at /amount: missing"));
        assert!(invalid(r#"{"amount":"-1","currency":"INR"}"#).contains("negative"));
        assert!(invalid(r#"{"amount":"1.234","currency":"INR"}"#).contains("more than 2 decimal places"));
        assert!(invalid(r#"{"amount":"abc","currency":"INR"}"#).contains("not a plain decimal"));
        assert!(invalid(r#"{"amount":1e3,"currency":"INR"}"#).contains("exponent"));
        assert!(invalid(r#"{"amount":true,"currency":"INR"}"#).contains("not a number"));
        assert!(invalid(r#"{"amount":"1.00"}"#).contains("at /currency: missing"));
        assert!(invalid(r#"{"amount":"1.00","currency":"IN R"}"#).contains("currency"));
        assert!(invalid(r#"{"amount":"1.00","currency":356}"#).contains("not a string"));
        assert_eq!(
            p(r#"{"amount":"500.01","currency":"INR"}"#).map(|p| p.amount),
            Ok(50_001),
            "the caps are the reservation's business"
        );
    }

    #[tokio::test]
    async fn one_payout_over_a_cap_is_refused_before_the_store() {
        let (g, _dir) = guard(|_| {});
        let payout = g.payout(br#"{"amount":"500.01","currency":"INR"}"#).unwrap();
        match g.reserve("c".into(), &payout).await {
            Err(Refusal::OverRequest(m)) => {
                assert_eq!(m, "amount 500.01 INR is over this route's max_per_request (500.00 INR)")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("over max_per_request"),
        }
        assert!(g.today().await.unwrap().1.is_empty(), "nothing reserved");
    }

    #[tokio::test]
    async fn reservations_settle_by_outcome_and_on_drop() {
        let (g, _dir) = guard(|c| c.max_count_per_day = None);
        let pay = |v: u64| Payout {
            amount: v,
            currency: "INR".into(),
        };
        let caller = || "127.0.0.2".to_string();
        let total = || async { g.today().await.unwrap().1.first().map_or(0, |t| t.amount) };
        let r = g.reserve(caller(), &pay(40_000)).await.unwrap();
        r.finish(Outcome::Succeeded).await;
        let r = g.reserve(caller(), &pay(40_000)).await.unwrap();
        r.finish(Outcome::Failed).await;
        assert_eq!(total().await, 40_000, "kept, then released");
        let mut r = g.reserve(caller(), &pay(40_000)).await.unwrap();
        r.sending();
        drop(r);
        g.inner_tasks_wait().await;
        assert_eq!(total().await, 80_000, "dropped after sending: kept as unknown");
        let r = g.reserve(caller(), &pay(20_000)).await.unwrap();
        drop(r);
        g.inner_tasks_wait().await;
        assert_eq!(total().await, 80_000, "dropped before sending: released");
        match g.reserve(caller(), &pay(20_001)).await {
            Err(Refusal::OverDay(m)) => {
                assert!(
                    m.contains("your total for") && m.contains("max_per_day (1000.00 INR)"),
                    "{m}"
                );
                assert!(!m.contains("800"), "never the total: {m}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("over the day's cap"),
        }
        assert!(
            g.reserve("127.0.0.3".into(), &pay(50_000)).await.is_ok(),
            "another caller"
        );
        let (_, totals) = g.today().await.unwrap();
        let mine = totals.iter().find(|t| t.caller == "127.0.0.2").unwrap();
        assert_eq!((mine.count, mine.unknown_amount, mine.unknown_count), (2, 40_000, 1));
    }

    #[tokio::test]
    async fn a_reservation_cancelled_on_its_way_is_released_once_it_lands() {
        let (g, _dir) = guard(|_| {});
        let pay = Payout {
            amount: 10_000,
            currency: "INR".into(),
        };
        for _ in 0..20 {
            // Polled once (the write starts on the blocking pool), then dropped.
            let cancelled = tokio::time::timeout(Duration::ZERO, g.reserve("c".into(), &pay)).await;
            drop(cancelled);
        }
        g.inner_tasks_wait().await;
        assert!(g.today().await.unwrap().1.is_empty(), "every one released");
        let c = &g.inner.counters;
        assert_eq!(c.allowed.get(), c.released.get(), "each one that landed was released");
    }

    impl AmountGuard {
        async fn inner_tasks_wait(&self) {
            if let Backend::Local(store) = &self.inner.backend {
                store.tasks().close();
                store.tasks().wait().await;
                store.tasks().reopen();
            }
        }
    }
}
