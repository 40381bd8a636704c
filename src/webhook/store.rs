//! The durable webhook inbox: two tables of the embedded redb database under
//! `[state].dir` (`statedb`). An event is committed (fsync) here *before* the
//! provider gets its 200, and stays until delivered; the seen-keys table
//! de-duplicates resends.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// id → JSON-encoded [`StoredEvent`].
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// dedup key → unix seconds when first accepted.
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");

/// Seen keys are kept this much longer than the window before pruning.
pub const PRUNE_SLACK_SECS: u64 = 300;

#[derive(Debug, thiserror::Error)]
#[error("webhook store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Pending,
    Delivered,
    Failed,
}

/// One verified event and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: u64,
    pub webhook: String,
    pub key: String,
    /// `X-TIMESTAMP` as the provider sent it.
    pub timestamp: String,
    pub body: String,
    pub received_at: u64,
    pub state: EventState,
    pub attempts: u32,
    /// Unix milliseconds of the next delivery attempt.
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub delivered_at: Option<u64>,
    /// With `[fleet]`: accepted while Redis could not answer, so only this
    /// instance de-duplicated it (delivered with `X-Signgate-Dedup: local`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedup_local: bool,
}

pub enum Accepted {
    New(u64),
    Duplicate,
}

pub struct Store {
    db: Arc<Database>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub use crate::statedb::now_ms;

impl Store {
    /// Open (or create) the inbox in `dir`. A directory created here is
    /// owner-only (0700) and the database file is always owner-only (0600),
    /// whatever the umask: it holds the providers' event bodies.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::on(crate::statedb::open(dir).map_err(StoreError)?)
    }

    /// The inbox in an open state database (shared with the route switches).
    pub fn on(db: Arc<Database>) -> Result<Store, StoreError> {
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(EVENTS).map_err(err)?;
        txn.open_table(SEEN).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Store { db })
    }

    /// Record a verified event unless its key was seen within `window_secs`
    /// of `verified_at` (unix seconds of the freshness check, so the window
    /// is measured on the same clock readings as the tolerance, however long
    /// the commit waited). Durable when this returns `New`. `dedup_local`:
    /// the fleet's de-duplication could not be asked (the event is marked so
    /// its delivery says `X-Signgate-Dedup: local`).
    #[allow(clippy::too_many_arguments)] // one event's fields, as received
    pub fn accept(
        &self,
        webhook: &str,
        key: &str,
        timestamp: &str,
        body: &str,
        window_secs: u64,
        verified_at: u64,
        dedup_local: bool,
    ) -> Result<Accepted, StoreError> {
        let now = now_secs();
        let txn = self.db.begin_write().map_err(err)?;
        let outcome = {
            let mut seen = txn.open_table(SEEN).map_err(err)?;
            let first = seen.get(key).map_err(err)?.map(|g| g.value());
            if first.is_some_and(|t| t.saturating_add(window_secs) > verified_at) {
                Accepted::Duplicate
            } else {
                let mut events = txn.open_table(EVENTS).map_err(err)?;
                let id = events.last().map_err(err)?.map_or(1, |(k, _)| k.value() + 1);
                let ev = StoredEvent {
                    id,
                    webhook: webhook.to_string(),
                    key: key.to_string(),
                    timestamp: timestamp.to_string(),
                    body: body.to_string(),
                    received_at: now,
                    state: EventState::Pending,
                    attempts: 0,
                    next_attempt_ms: now_ms(),
                    last_error: None,
                    delivered_at: None,
                    dedup_local,
                };
                let bytes = serde_json::to_vec(&ev).map_err(err)?;
                events.insert(id, bytes.as_slice()).map_err(err)?;
                seen.insert(key, verified_at).map_err(err)?;
                Accepted::New(id)
            }
        };
        txn.commit().map_err(err)?;
        Ok(outcome)
    }

    fn scan(&self, mut keep: impl FnMut(&StoredEvent) -> bool, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let events = txn.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::new();
        for row in events.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            let ev: StoredEvent = serde_json::from_slice(v.value()).map_err(err)?;
            if keep(&ev) {
                out.push(ev);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Pending events whose next attempt is due.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.scan(|e| e.state == EventState::Pending && e.next_attempt_ms <= now_ms, limit)
    }

    /// Every event, or only the failed ones.
    pub fn list(&self, failed_only: bool) -> Result<Vec<StoredEvent>, StoreError> {
        self.scan(|e| !failed_only || e.state == EventState::Failed, usize::MAX)
    }

    pub fn put(&self, ev: &StoredEvent) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            let bytes = serde_json::to_vec(ev).map_err(err)?;
            events.insert(ev.id, bytes.as_slice()).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// Put failed events (one, or all) back in the queue with fresh attempts.
    /// Returns how many were re-queued.
    pub fn retry(&self, id: Option<u64>) -> Result<usize, StoreError> {
        let targets = self.scan(
            |e| e.state == EventState::Failed && id.is_none_or(|i| i == e.id),
            usize::MAX,
        )?;
        let now = now_ms();
        for mut ev in targets.iter().cloned() {
            ev.state = EventState::Pending;
            ev.attempts = 0;
            ev.next_attempt_ms = now;
            self.put(&ev)?;
        }
        Ok(targets.len())
    }

    /// After a restart, pending events are due at once.
    pub fn make_pending_due(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let pending = self.scan(
            |e| e.state == EventState::Pending && e.next_attempt_ms > now,
            usize::MAX,
        )?;
        for mut ev in pending.iter().cloned() {
            ev.next_attempt_ms = now;
            self.put(&ev)?;
        }
        Ok(pending.len())
    }

    /// Forget seen keys and delivered events older than `window_secs` (plus
    /// [`PRUNE_SLACK_SECS`], so a replay verified just inside the window but
    /// committed late still finds its key).
    pub fn prune(&self, window_secs: u64) -> Result<(), StoreError> {
        let cutoff = now_secs().saturating_sub(window_secs.saturating_add(PRUNE_SLACK_SECS));
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut seen = txn.open_table(SEEN).map_err(err)?;
            seen.retain(|_, t| t >= cutoff).map_err(err)?;
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            events
                .retain(|_, v| match serde_json::from_slice::<StoredEvent>(v) {
                    Ok(e) => !(e.state == EventState::Delivered && e.delivered_at.unwrap_or(0) < cutoff),
                    Err(_) => true,
                })
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// Per webhook: (pending count, oldest pending received_at, failed
    /// count). Failed events are parked: never sent again until an
    /// operator retries them.
    pub fn pending_stats(&self) -> Result<Vec<WebhookStats>, StoreError> {
        let mut stats: std::collections::BTreeMap<String, WebhookStats> = Default::default();
        for e in self.scan(
            |e| matches!(e.state, EventState::Pending | EventState::Failed),
            usize::MAX,
        )? {
            let s = stats.entry(e.webhook.clone()).or_insert_with(|| WebhookStats {
                webhook: e.webhook.clone(),
                pending: 0,
                oldest_pending: u64::MAX,
                failed: 0,
            });
            if e.state == EventState::Failed {
                s.failed += 1;
            } else {
                s.pending += 1;
                s.oldest_pending = s.oldest_pending.min(e.received_at);
            }
        }
        Ok(stats.into_values().collect())
    }
}

/// What [`Store::pending_stats`] counts for one webhook.
pub struct WebhookStats {
    pub webhook: String,
    pub pending: u64,
    /// `received_at` of the oldest pending event (`u64::MAX`: none).
    pub oldest_pending: u64,
    pub failed: u64,
}

/// What `webhooks list` shows of an event (never the body).
pub fn summary(e: &StoredEvent) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "webhook": e.webhook,
        "key": e.key,
        "state": e.state,
        "attempts": e.attempts,
        "received_at": e.received_at,
        "last_error": e.last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_a_duplicate_for_the_window_on_the_verification_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let t = 1_000_000;
        let accept = |at: u64| store.accept("hook", "hook|k", "0", "{}", 601, at, false).unwrap();
        assert!(matches!(accept(t), Accepted::New(_)));
        // The latest replay a 300 s tolerance lets through comes 600 s later.
        assert!(matches!(accept(t + 600), Accepted::Duplicate));
        assert!(matches!(accept(t + 601), Accepted::New(_)));
    }
}
