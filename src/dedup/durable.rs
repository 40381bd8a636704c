//! The duplicate guard's claims on disk, for routes with `duplicate_key`
//! without `[fleet]`: one table (`duplicate_claims`) of the state database
//! under `[state].dir` (`statedb`), so that a restart does not forget which
//! references were sent. A row is `(route, METHOD PATH REFERENCE)` →
//! `(state, until)`, `until` in unix milliseconds.
//!
//! - A claim is committed (synced) as in flight *before* the request is
//!   sent ([`DurableStore::persist`], called by `Guard::begin`); a claim
//!   that cannot be written is refused (503 `duplicate_guard_unavailable`,
//!   nothing sent).
//! - Its settlement rewrites the row: succeeded or unknown until the end of
//!   the window, or deleted after a definite failure. A settlement that
//!   cannot be written leaves the row in flight, which the next start reads
//!   as unknown: a failed write can only hold a reference, never free one.
//! - At start ([`DurableStore::load`]) a row still in flight (the process
//!   ended with the request on its way) becomes **unknown**, held for the
//!   window from that start; settled rows keep their expiry; expired rows
//!   are deleted. At most `duplicate_capacity` rows per route are loaded
//!   (in-flight ones first, then those expiring last).
//! - Rows follow the memory: capacity evictions, expiry and an operator's
//!   release delete them too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Duplicate, DuplicateStore, MemoryStore, Outcome, State};

/// `(route, key)` → `(state, until unix ms)`.
const CLAIMS: TableDefinition<(&str, &str), (u8, u64)> = TableDefinition::new("duplicate_claims");

const IN_FLIGHT: u8 = 0;
const SUCCEEDED: u8 = 1;
const UNKNOWN: u8 = 2;

use crate::statedb::now_ms;

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A route's claims in memory (the authority for concurrent requests) and
/// in the state database (what a restart reads back).
pub struct DurableStore {
    mem: MemoryStore,
    db: Arc<Database>,
    route: String,
    window: Duration,
}

impl DurableStore {
    /// The route's store with the claims the database holds for it (see the
    /// module doc); the error names the cause.
    pub fn load(db: Arc<Database>, route: &str, window: Duration, capacity: usize) -> Result<DurableStore, String> {
        let e = |e: &dyn std::fmt::Display| format!("the duplicate guard's claims of route {route}: {e}");
        let now = now_ms();
        let held_until = now.saturating_add(millis(window));
        let mut rows: Vec<(String, u8, u64)> = Vec::new();
        let mut expired: Vec<String> = Vec::new();
        {
            let txn = db.begin_read().map_err(|x| e(&x))?;
            match txn.open_table(CLAIMS) {
                Ok(table) => {
                    for row in table.range((route, "")..).map_err(|x| e(&x))? {
                        let (k, v) = row.map_err(|x| e(&x))?;
                        let (r, key) = k.value();
                        if r != route {
                            break;
                        }
                        let (state, until) = v.value();
                        match state {
                            IN_FLIGHT => rows.push((key.to_string(), UNKNOWN, held_until)),
                            _ if until > now => rows.push((key.to_string(), state, until)),
                            _ => expired.push(key.to_string()),
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(x) => return Err(e(&x)),
            }
        }
        // In-flight ones (now unknown until `held_until`) and those expiring
        // last are kept when there are more than the capacity.
        rows.sort_by_key(|(_, _, until)| std::cmp::Reverse(*until));
        let dropped: Vec<(String, u8, u64)> = rows.split_off(rows.len().min(capacity));
        let mem = MemoryStore::new(window, capacity);
        let instant_now = Instant::now();
        for (key, state, until) in &rows {
            let at = instant_now + Duration::from_millis(until.saturating_sub(now));
            mem.map.insert(
                key.clone(),
                if *state == SUCCEEDED {
                    State::Done { until: at }
                } else {
                    State::Unknown { until: at }
                },
            );
        }
        let txn = db.begin_write().map_err(|x| e(&x))?;
        {
            let mut table = txn.open_table(CLAIMS).map_err(|x| e(&x))?;
            for key in expired.iter().chain(dropped.iter().map(|(k, _, _)| k)) {
                table.remove((route, key.as_str())).map_err(|x| e(&x))?;
            }
            for (key, state, until) in &rows {
                table
                    .insert((route, key.as_str()), (*state, *until))
                    .map_err(|x| e(&x))?;
            }
        }
        txn.commit().map_err(|x| e(&x))?;
        let unknown = rows.iter().filter(|(_, s, _)| *s == UNKNOWN).count();
        if !rows.is_empty() {
            tracing::info!(
                route,
                claims = rows.len(),
                unknown,
                "duplicate guard: claims read back from the state database (a request in flight when the gateway stopped is held as unknown for the window)"
            );
        }
        Ok(DurableStore {
            mem,
            db,
            route: route.to_string(),
            window,
        })
    }

    /// Apply `puts` and `removes` to the route's rows in one synced commit.
    fn write(&self, puts: &[(&str, u8, u64)], removes: &[&str]) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = txn.open_table(CLAIMS).map_err(|e| e.to_string())?;
            for key in removes {
                table.remove((self.route.as_str(), *key)).map_err(|e| e.to_string())?;
            }
            for (key, state, until) in puts {
                // An in-flight row is written only while the memory still
                // holds the claim in flight: a claim released (its request
                // dropped) before this commit leaves no row behind.
                if *state == IN_FLIGHT && !matches!(self.mem.map.get(*key).map(|s| *s), Some(State::InFlight)) {
                    continue;
                }
                table
                    .insert((self.route.as_str(), *key), (*state, *until))
                    .map_err(|e| e.to_string())?;
            }
        }
        txn.commit().map_err(|e| e.to_string())
    }

    fn report(&self, what: &str, result: Result<(), String>) {
        if let Err(e) = result {
            tracing::error!(route = self.route, error = %e, "duplicate guard: {what} could not be written to the state database");
        }
    }
}

impl DuplicateStore for DurableStore {
    fn begin(&self, key: &str, now: Instant) -> Result<(), Duplicate> {
        let (result, evicted) = self.mem.begin_evicting(key, now);
        if !evicted.is_empty() {
            let removes: Vec<&str> = evicted.iter().map(String::as_str).collect();
            self.report("an eviction", self.write(&[], &removes));
        }
        result
    }

    fn persist(&self, key: &str) -> Result<(), String> {
        let until = now_ms().saturating_add(millis(self.window));
        self.write(&[(key, IN_FLIGHT, until)], &[])
    }

    fn finish(&self, key: &str, outcome: Outcome, now: Instant) {
        self.mem.finish(key, outcome, now);
        let until = now_ms().saturating_add(millis(self.window));
        let result = match outcome {
            Outcome::Succeeded => self.write(&[(key, SUCCEEDED, until)], &[]),
            Outcome::Unknown => self.write(&[(key, UNKNOWN, until)], &[]),
            Outcome::Failed => self.write(&[], &[key]),
        };
        // Left in flight on disk: read back as unknown (held), never freed.
        self.report("a settlement", result);
    }

    fn release_reference(&self, reference: &str) -> usize {
        let released = self.mem.release_reference(reference);
        let result = (|| {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(CLAIMS).map_err(|e| e.to_string())?;
                let mut keys = Vec::new();
                for row in table.range((self.route.as_str(), "")..).map_err(|e| e.to_string())? {
                    let (k, _) = row.map_err(|e| e.to_string())?;
                    let (r, key) = k.value();
                    if r != self.route {
                        break;
                    }
                    if key.splitn(3, ' ').nth(2) == Some(reference) {
                        keys.push(key.to_string());
                    }
                }
                for key in keys {
                    table
                        .remove((self.route.as_str(), key.as_str()))
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        self.report("a release", result);
        released
    }

    fn len(&self) -> usize {
        self.mem.len()
    }

    fn durable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata as _;

    fn db(dir: &std::path::Path) -> Arc<Database> {
        crate::statedb::open(dir).unwrap()
    }

    #[test]
    fn claims_survive_a_restart_and_in_flight_ones_come_back_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let w = Duration::from_secs(600);
        {
            let s = DurableStore::load(db(dir.path()), "payouts", w, 10).unwrap();
            let t = Instant::now();
            for k in [
                "POST /p \"done\"",
                "POST /p \"unk\"",
                "POST /p \"failed\"",
                "POST /p \"flying\"",
            ] {
                s.begin(k, t).unwrap();
                s.persist(k).unwrap();
            }
            s.finish("POST /p \"done\"", Outcome::Succeeded, t);
            s.finish("POST /p \"unk\"", Outcome::Unknown, t);
            s.finish("POST /p \"failed\"", Outcome::Failed, t);
            // "flying" is still on its way when the process ends.
        }
        let s = DurableStore::load(db(dir.path()), "payouts", w, 10).unwrap();
        let t = Instant::now();
        assert_eq!(s.begin("POST /p \"done\"", t), Err(Duplicate::Succeeded));
        assert_eq!(s.begin("POST /p \"unk\"", t), Err(Duplicate::Unknown));
        assert_eq!(
            s.begin("POST /p \"flying\"", t),
            Err(Duplicate::Unknown),
            "in flight at a crash: unknown"
        );
        assert_eq!(s.begin("POST /p \"failed\"", t), Ok(()), "a failed one may be retried");
        // Another route's claims are its own.
        let other = DurableStore::load(db_reopen(&s), "refunds", w, 10).unwrap();
        assert_eq!(other.begin("POST /p \"done\"", t), Ok(()));
        // An operator's release frees it on disk too.
        assert_eq!(s.release_reference("\"done\""), 1);
        let s2 = DurableStore::load(db_reopen(&s), "payouts", w, 10).unwrap();
        assert_eq!(s2.begin("POST /p \"done\"", t), Ok(()));
    }

    fn db_reopen(s: &DurableStore) -> Arc<Database> {
        s.db.clone()
    }

    #[test]
    fn expired_rows_are_pruned_and_a_dropped_claim_leaves_no_row() {
        let dir = tempfile::tempdir().unwrap();
        let d = db(dir.path());
        let s = DurableStore::load(d.clone(), "r", Duration::ZERO, 10).unwrap();
        let t = Instant::now();
        s.begin("k1", t).unwrap();
        s.persist("k1").unwrap();
        s.finish("k1", Outcome::Succeeded, t);
        // Released in memory before its in-flight row was written: no row.
        s.begin("k2", t).unwrap();
        s.mem.finish("k2", Outcome::Failed, t);
        s.persist("k2").unwrap();
        let rows = |d: &Database| d.begin_read().unwrap().open_table(CLAIMS).unwrap().len().unwrap();
        assert_eq!(rows(&d), 1);
        std::thread::sleep(Duration::from_millis(5));
        let _ = DurableStore::load(d.clone(), "r", Duration::ZERO, 10).unwrap();
        assert_eq!(rows(&d), 0, "an expired row is deleted at start");
    }
}
