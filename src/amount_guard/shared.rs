//! The amount guard's totals in the fleet's Redis (`[fleet]`), shared by
//! every instance. One hash per route and UTC day (and `minor_units`),
//! `{PREFIX:amt:ROUTE}:d:YYYY-MM-DD:uN`, with fields `a:CURRENCY:CALLER` (sum),
//! `n:…` (count), `ua:…`/`un:…` (unknown outcomes); it expires [`DAY_TTL`]
//! after the day's last reservation. A reservation is one script call that
//! checks the caps and adds itself, and leaves a token
//! (`{PREFIX:amt:ROUTE}:t:INSTANCE:ULID`, holding the amount) that its
//! settlement consumes: settling twice is harmless, and a release of a
//! reservation whose answer was lost leaves a tombstone in the token's
//! place, so the reservation, should it land later (it timed out on its
//! way), is refused. A token that expires unsettled leaves its reservation
//! counted.
//!
//! Redis not answering: no reservation (fail closed, 503); a settlement is
//! tried again every [`SETTLE_RETRY`] until the token would have expired.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AmountGuard, Bucket, Day, Total, Verdict};
use crate::dedup::Outcome;
use crate::fleet::{AmountAnswer, AmountSettlement, Fleet, FleetError};

/// A day's hash lives this long after its last reservation: today's and
/// yesterday's totals are always there.
pub const DAY_TTL: Duration = Duration::from_secs(2 * 86_400);

/// How often a settlement Redis could not take is tried again.
const SETTLE_RETRY: Duration = Duration::from_millis(250);

/// The hash fields of a bucket end with this.
fn suffix(b: &Bucket) -> String {
    format!(":{}:{}", b.currency, b.caller)
}

/// The day's hash, for the route's `minor_units` (a changed `minor_units`
/// counts in a hash of its own, never misreading the old sums).
fn day_key(g: &AmountGuard, fleet: &Fleet, day: Day) -> String {
    fleet.key_amount_day(&g.inner.route, &day.label(), g.inner.config.minor_units)
}

/// Check the caps and reserve; the token's key when reserved.
pub(super) async fn reserve(
    g: &AmountGuard,
    fleet: &Arc<Fleet>,
    b: &Bucket,
    amount: u64,
) -> Result<(Verdict, String), ()> {
    let day_key = day_key(g, fleet, b.day);
    let token_key = fleet.key_amount_token(&g.inner.route, &fleet.token());
    // Cancelled (or unanswered) while the script is on its way: release it
    // if it landed.
    let mut pending = Pending {
        guard: g.clone(),
        fleet: fleet.clone(),
        day_key,
        token_key,
        field: suffix(b),
        armed: true,
    };
    let c = &g.inner.config;
    let answer = fleet
        .amount_reserve(
            &pending.day_key,
            &pending.token_key,
            &pending.field,
            amount,
            c.max_per_day,
            c.max_count_per_day,
            g.inner.token_ttl,
            DAY_TTL,
        )
        .await;
    match answer {
        Ok(a) => {
            pending.armed = false;
            let verdict = match a {
                AmountAnswer::Reserved => Verdict::Reserved,
                AmountAnswer::OverDay => Verdict::OverDay,
                AmountAnswer::OverCount => Verdict::OverCount,
                // Never for a request still waiting (its release runs only
                // once it gave up): refuse it as unanswered.
                AmountAnswer::Released => return Err(()),
            };
            Ok((verdict, std::mem::take(&mut pending.token_key)))
        }
        Err(e) => {
            fleet.fallback("amount_refused");
            tracing::debug!(route = %g.inner.route, error = %e, "amount guard: Redis cannot answer; refused (503)");
            Err(())
        }
    }
}

/// A reservation whose answer has not arrived: released if dropped armed.
struct Pending {
    guard: AmountGuard,
    fleet: Arc<Fleet>,
    day_key: String,
    token_key: String,
    field: String,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let ttl = self.guard.inner.token_ttl;
            self.fleet.spawn(settle_until(
                self.guard.inner.route.clone(),
                self.fleet.clone(),
                std::mem::take(&mut self.day_key),
                std::mem::take(&mut self.token_key),
                std::mem::take(&mut self.field),
                AmountSettlement::Release,
                ttl,
            ));
        }
    }
}

fn how(outcome: Outcome) -> AmountSettlement {
    match outcome {
        Outcome::Succeeded => AmountSettlement::Keep,
        Outcome::Failed => AmountSettlement::Release,
        Outcome::Unknown => AmountSettlement::Unknown,
    }
}

/// Settle once; if Redis cannot take it now, keep trying in the background
/// until the token would have expired.
pub(super) async fn settle(g: &AmountGuard, fleet: &Arc<Fleet>, b: &Bucket, token_key: &str, outcome: Outcome) {
    let day_key = day_key(g, fleet, b.day);
    let field = suffix(b);
    let ttl = g.inner.token_ttl;
    if fleet
        .amount_settle(&day_key, token_key, &field, how(outcome), ttl)
        .await
        .is_err()
    {
        fleet.spawn(settle_until(
            g.inner.route.clone(),
            fleet.clone(),
            day_key,
            token_key.to_string(),
            field,
            how(outcome),
            ttl,
        ));
    }
}

/// Settle, trying again while Redis cannot answer, until the token would
/// have expired (`ttl` from now: past it, the reservation stays counted).
async fn settle_until(
    route: String,
    fleet: Arc<Fleet>,
    day_key: String,
    token_key: String,
    field: String,
    how: AmountSettlement,
    ttl: Duration,
) {
    let deadline = Instant::now() + ttl;
    loop {
        if fleet
            .amount_settle(&day_key, &token_key, &field, how, ttl)
            .await
            .is_ok()
        {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                route,
                ?how,
                "amount guard: a reservation could not be settled in Redis; it stays counted"
            );
            return;
        }
        tokio::time::sleep(SETTLE_RETRY).await;
    }
}

/// A route's totals of `day`, from its hash.
pub(super) async fn day(g: &AmountGuard, fleet: &Fleet, day: Day) -> Result<Vec<Total>, FleetError> {
    let fields = fleet.amount_totals(&day_key(g, fleet, day)).await?;
    Ok(totals(fields))
}

/// The hash's fields as totals, by (currency, caller).
fn totals(fields: Vec<(String, String)>) -> Vec<Total> {
    let mut by: BTreeMap<(String, String), Total> = BTreeMap::new();
    for (field, value) in fields {
        let mut parts = field.splitn(3, ':');
        let (Some(kind), Some(currency), Some(caller)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let v: u64 = value.parse::<i64>().map_or(0, |v| u64::try_from(v).unwrap_or(0));
        let t = by
            .entry((currency.to_string(), caller.to_string()))
            .or_insert_with(|| Total {
                currency: currency.to_string(),
                caller: caller.to_string(),
                amount: 0,
                count: 0,
                unknown_amount: 0,
                unknown_count: 0,
            });
        match kind {
            "a" => t.amount = v,
            "n" => t.count = v,
            "ua" => t.unknown_amount = v,
            "un" => t.unknown_count = v,
            _ => {}
        }
    }
    by.into_values().filter(|t| t.amount > 0 || t.count > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_fields_become_totals_by_currency_and_caller() {
        let f = |k: &str, v: &str| (k.to_string(), v.to_string());
        let t = totals(vec![
            f("a:INR:127.0.0.2", "10550"),
            f("n:INR:127.0.0.2", "2"),
            f("ua:INR:127.0.0.2", "550"),
            f("un:INR:127.0.0.2", "1"),
            f("a::uri:spiffe://corp/pay", "7"),
            f("n::uri:spiffe://corp/pay", "1"),
            f("a:USD:::1", "0"),
            f("n:USD:::1", "0"),
            f("junk", "1"),
        ]);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(
            (t[0].caller.as_str(), t[0].amount, t[0].count),
            ("uri:spiffe://corp/pay", 7, 1)
        );
        assert_eq!(
            (
                t[1].currency.as_str(),
                t[1].amount,
                t[1].count,
                t[1].unknown_amount,
                t[1].unknown_count
            ),
            ("INR", 10_550, 2, 550, 1)
        );
    }
}
