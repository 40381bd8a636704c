//! The amount guard's totals on this host: a table of the state database
//! under `[state].dir` (`statedb`, redb, shared with the webhook inbox, the
//! duplicate guard's claims and the route switches).
//!
//! One row per (UTC day, route, `minor_units`, currency, caller): the day's
//! reserved sum and count, and how much of it ended with an unknown outcome. A
//! reservation checks the caps and adds itself in one write transaction
//! (redb runs one at a time: two requests cannot both take the last room
//! under a cap), committed durably before the request goes on. Releases and
//! the unknown tally are committed without an fsync of their own: one lost
//! to a crash leaves the total too high, never too low. Every call blocks;
//! the guard runs them on tokio's blocking pool.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio_util::task::TaskTracker;

use super::{Bucket, Caps, Day, Total, Verdict};
use crate::dedup::Outcome;

/// (day, route, minor units, currency, caller) → [sum, count, unknown sum,
/// unknown count], the sums in those minor units.
const TOTALS: TableDefinition<(u32, &str, u8, &str, &str), [u64; 4]> = TableDefinition::new("amount_totals");

/// A bucket's row in `TOTALS`.
fn row_key<'a>(route: &'a str, bucket: &'a Bucket) -> (u32, &'a str, u8, &'a str, &'a str) {
    (
        bucket.day.0,
        route,
        bucket.units,
        bucket.currency.as_str(),
        bucket.caller.as_str(),
    )
}

/// Days kept: today and yesterday (a reservation made before midnight is
/// settled on its own day).
const KEEP_DAYS: u32 = 2;

#[derive(Debug, thiserror::Error)]
#[error("amount guard store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The totals of one host (see the module doc).
pub struct LocalTotals {
    db: Arc<Database>,
    /// Settlements and releases run on the blocking pool; shutdown waits.
    tasks: TaskTracker,
    /// The day rows were last pruned for.
    pruned: AtomicU32,
}

impl std::fmt::Debug for LocalTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTotals").finish_non_exhaustive()
    }
}

impl LocalTotals {
    /// The totals' table in the state database (created if missing). Rows
    /// older than yesterday are dropped.
    pub fn new(db: Arc<Database>) -> Result<LocalTotals, StoreError> {
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(TOTALS).map_err(err)?;
        txn.commit().map_err(err)?;
        let totals = LocalTotals {
            db,
            tasks: TaskTracker::new(),
            pruned: AtomicU32::new(0),
        };
        totals.prune(Day::today())?;
        Ok(totals)
    }

    /// Work this store runs in the background: shutdown waits for it.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Check the day's caps for `bucket` and reserve `amount` (one more
    /// request) if they allow it; durable when this returns `Reserved`.
    pub(super) fn reserve(&self, route: &str, bucket: &Bucket, amount: u64, caps: Caps) -> Result<Verdict, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let verdict = {
            let mut table = txn.open_table(TOTALS).map_err(err)?;
            let key = row_key(route, bucket);
            let row = table.get(key).map_err(err)?.map_or([0; 4], |g| g.value());
            let verdict = caps.decide(row[0], row[1], amount);
            if verdict == Verdict::Reserved {
                let next = [row[0].saturating_add(amount), row[1].saturating_add(1), row[2], row[3]];
                table.insert(key, next).map_err(err)?;
            }
            verdict
        };
        if verdict == Verdict::Reserved {
            txn.commit().map_err(err)?;
        } else {
            txn.abort().map_err(err)?;
        }
        Ok(verdict)
    }

    /// Settle a reservation: a definite failure takes it back, an unknown
    /// outcome is tallied as such (it stays counted), a success changes
    /// nothing.
    pub(super) fn settle(&self, route: &str, bucket: &Bucket, amount: u64, outcome: Outcome) -> Result<(), StoreError> {
        if outcome == Outcome::Succeeded {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(err)?;
        // Lost to a crash, a settlement leaves the total high: no fsync.
        txn.set_durability(Durability::None).map_err(err)?;
        {
            let mut table = txn.open_table(TOTALS).map_err(err)?;
            let key = row_key(route, bucket);
            let Some(row) = table.get(key).map_err(err)?.map(|g| g.value()) else {
                return Ok(());
            };
            let next = match outcome {
                Outcome::Failed => [row[0].saturating_sub(amount), row[1].saturating_sub(1), row[2], row[3]],
                Outcome::Unknown => [row[0], row[1], row[2].saturating_add(amount), row[3].saturating_add(1)],
                Outcome::Succeeded => row,
            };
            if next == [0; 4] {
                table.remove(key).map_err(err)?;
            } else {
                table.insert(key, next).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// The totals of `day` for `route` counted in `units`, by currency and caller.
    pub(super) fn day(&self, day: Day, route: &str, units: u8) -> Result<Vec<Total>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(TOTALS).map_err(err)?;
        let mut out = Vec::new();
        for row in table
            .range((day.0, route, units, "", "")..(day.0 + 1, "", 0, "", ""))
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            let (_, r, u, currency, caller) = k.value();
            if r != route || u != units {
                continue;
            }
            let [amount, count, unknown_amount, unknown_count] = v.value();
            out.push(Total {
                currency: currency.to_string(),
                caller: caller.to_string(),
                amount,
                count,
                unknown_amount,
                unknown_count,
            });
        }
        Ok(out)
    }

    /// Drop the rows of days before yesterday, once per day.
    pub fn prune(&self, today: Day) -> Result<(), StoreError> {
        if self.pruned.swap(today.0, Ordering::AcqRel) == today.0 {
            return Ok(());
        }
        let keep_from = today.0.saturating_sub(KEEP_DAYS - 1);
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::None).map_err(err)?;
        {
            let mut table = txn.open_table(TOTALS).map_err(err)?;
            table.retain(|(day, _, _, _, _), _| day >= keep_from).map_err(err)?;
        }
        txn.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> LocalTotals {
        LocalTotals::new(crate::statedb::open(dir).unwrap()).unwrap()
    }

    fn bucket(day: u32, caller: &str) -> Bucket {
        Bucket {
            day: Day(day),
            units: 2,
            currency: "INR".into(),
            caller: caller.into(),
        }
    }

    const CAPS: Caps = Caps {
        max_day: Some(1_000),
        max_count: Some(3),
    };

    #[test]
    fn caps_are_checked_and_reserved_in_one_step_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let today = Day::today().0;
        let s = open(dir.path());
        let a = bucket(today, "127.0.0.2");
        assert_eq!(s.reserve("r", &a, 600, CAPS).unwrap(), Verdict::Reserved);
        assert_eq!(s.reserve("r", &a, 401, CAPS).unwrap(), Verdict::OverDay);
        assert_eq!(s.reserve("r", &a, 400, CAPS).unwrap(), Verdict::Reserved);
        assert_eq!(s.reserve("r", &a, 0, CAPS).unwrap(), Verdict::Reserved);
        assert_eq!(s.reserve("r", &a, 0, CAPS).unwrap(), Verdict::OverCount);
        // Another caller, route or day is another bucket.
        assert_eq!(
            s.reserve("r", &bucket(today, "127.0.0.3"), 1_000, CAPS).unwrap(),
            Verdict::Reserved
        );
        assert_eq!(s.reserve("other", &a, 1_000, CAPS).unwrap(), Verdict::Reserved);
        assert_eq!(
            s.reserve("r", &bucket(today - 1, "127.0.0.2"), 1, CAPS).unwrap(),
            Verdict::Reserved
        );
        s.settle("r", &a, 400, Outcome::Failed).unwrap();
        s.settle("r", &a, 0, Outcome::Unknown).unwrap();
        s.settle("r", &a, 600, Outcome::Succeeded).unwrap();
        drop(s);
        let s = open(dir.path());
        let mut day = s.day(Day(today), "r", 2).unwrap();
        day.sort_by(|x, y| x.caller.cmp(&y.caller));
        assert_eq!(
            day.iter()
                .map(|t| (t.caller.as_str(), t.amount, t.count, t.unknown_amount, t.unknown_count))
                .collect::<Vec<_>>(),
            [("127.0.0.2", 600, 2, 0, 1), ("127.0.0.3", 1_000, 1, 0, 0)]
        );
        assert_eq!(s.day(Day(today - 1), "r", 2).unwrap().len(), 1, "yesterday is kept");
    }

    #[test]
    fn a_release_takes_the_row_back_and_old_days_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let today = Day::today().0;
        let old = bucket(today - 2, "c");
        s.reserve("r", &old, 5, CAPS).unwrap();
        let b = bucket(today, "c");
        s.reserve("r", &b, 5, CAPS).unwrap();
        s.settle("r", &b, 5, Outcome::Failed).unwrap();
        assert!(
            s.day(Day(today), "r", 2).unwrap().is_empty(),
            "nothing left of a release"
        );
        // A release that finds no row (pruned, or never landed) changes nothing.
        s.settle("r", &b, 5, Outcome::Failed).unwrap();
        assert_eq!(s.day(Day(today - 2), "r", 2).unwrap().len(), 1);
        s.prune(Day(today + 1)).unwrap();
        assert!(s.day(Day(today - 2), "r", 2).unwrap().is_empty());
    }
}
