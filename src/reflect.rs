//! The signatures the gateway produced, remembered so that none of them can
//! come back as a webhook. KwikPaisa signs requests and webhooks with the
//! same rule (HMAC of body + timestamp) and, unless a webhook's secret is
//! its own, the same secret: a signed outbound request's body,
//! `X-TIMESTAMP` and `X-SIGNATURE`, seen by anyone on the way (a logging
//! proxy, header-capturing monitoring, a provider echoing them), would verify
//! as a genuine webhook. The receiver refuses a webhook whose signature is
//! one of ours (`401 reflected_signature`).
//!
//! Only signatures of credentials whose secret a webhook verifies with are
//! remembered (compared by secret fingerprint, whatever the credentials'
//! names: `Snapshot::reflect_window`), for as long as such a webhook would
//! still find their timestamp fresh (its `tolerance_secs`). Memory is two
//! generations of 128-bit MAC prefixes, rotated every window, so an entry
//! lives between one and two windows and the size is bounded by the signing
//! rate (about 40 bytes per signature), with a hard cap past which a
//! generation rotates early (the oldest signatures are then forgotten first;
//! counted). The MAC is keyed by the secret, so one set serves every
//! credential.
//!
//! **Across a restart.** With the state database (always there when a
//! webhook is configured: the inbox lives in it), every remembered signature
//! is also a row of its table `reflections` (expiry, MAC prefix), committed
//! (synced) *before* its request is sent; concurrent signatures share one
//! commit (a writer thread takes whatever is queued). At start the rows not
//! yet expired are read back; expired rows are deleted every minute; at most
//! `2 × CAPACITY` rows are kept. A signature whose row could not be written
//! is still sent (its request is not refused over it): it is logged and
//! counted (`signgate_reflection_guard_persist_errors_total`), and this
//! process still refuses it; only a restart within its tolerance forgets it.
//!
//! **With `[fleet]`**, every remembered signature is also written to Redis
//! (`{PREFIX:refl:MAC-PREFIX}`, expiring after the window), and a webhook's
//! signature is looked up there when the local memory does not know it: a
//! signature instance A sent is refused when replayed to instance B. A write
//! Redis did not take is kept (bounded by [`PENDING_CAPACITY`], dropped at
//! its expiry) and written again once Redis answers. While Redis cannot
//! answer, a webhook whose secret also signs outbound requests is refused
//! with `503 reflection_check_unavailable` (the provider retries later); one
//! whose secret is its own is checked against the local memory (counted
//! `reflection_local`): no outbound signature can verify there anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::{DashMap, DashSet};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use crate::fleet::{Fleet, Source};

/// At most this many signatures per generation (two generations kept).
pub const CAPACITY: usize = 2_000_000;

/// At most this many Redis writes waiting for Redis to come back.
pub const PENDING_CAPACITY: usize = 100_000;

/// How often the writes Redis did not take are tried again.
const PENDING_RETRY: Duration = Duration::from_secs(1);

/// `(expiry unix ms, MAC prefix)` → nothing: ordered by expiry, so pruning
/// is a range.
const TABLE: TableDefinition<(u64, u128), ()> = TableDefinition::new("reflections");

/// How often the writer deletes expired rows.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

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

/// Whether a webhook's signature was sent by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Yes,
    No,
    /// Redis could not be asked, and the local memory does not know it.
    Unknown,
}

/// One signature for the writer, and who waits for its commit.
type Job = (u64, u128, oneshot::Sender<Result<(), String>>);

/// The produced signatures (see the module doc).
pub(crate) struct Reflections {
    current: ArcSwap<Generation>,
    previous: ArcSwap<Generation>,
    /// Generations rotated early because one was full.
    pub early_rotations: AtomicU64,
    /// Signatures whose row could not be written.
    pub persist_errors: AtomicU64,
    fleet: Option<Arc<Fleet>>,
    /// The writer thread's queue (with the state database).
    writer: Option<std::sync::mpsc::Sender<Job>>,
    /// Redis keys whose write failed → when they expire.
    pending: Arc<DashMap<String, Instant>>,
}

fn key(mac: &[u8; 32]) -> u128 {
    let mut first = [0u8; 16];
    first.copy_from_slice(&mac[..16]);
    u128::from_be_bytes(first)
}

use crate::statedb::now_ms;

impl Reflections {
    /// The memory, read back from `db` (the signatures not yet expired)
    /// when there is one, and its writer thread.
    pub fn new(fleet: Option<Arc<Fleet>>, db: Option<Arc<Database>>) -> Result<Self, String> {
        let r = Reflections {
            current: ArcSwap::from_pointee(Generation::new()),
            previous: ArcSwap::from_pointee(Generation::new()),
            early_rotations: AtomicU64::new(0),
            persist_errors: AtomicU64::new(0),
            fleet,
            writer: None,
            pending: Arc::new(DashMap::new()),
        };
        let Some(db) = db else {
            return Ok(r);
        };
        let current = r.current.load_full();
        let loaded = load(&db, &current.macs)
            .map_err(|e| format!("the reflection guard's memory in the state database: {e}"))?;
        if loaded > 0 {
            tracing::info!(
                signatures = loaded,
                "reflection guard: outbound signatures still fresh read back from the state database"
            );
        }
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("signgate-reflections".into())
            .spawn(move || write_loop(&db, &rx))
            .map_err(|e| format!("starting the reflection guard's writer: {e}"))?;
        Ok(Reflections { writer: Some(tx), ..r })
    }

    /// Remember a signature this gateway is about to send, for at least
    /// `window`: in memory, then durably in the state database (this
    /// returns once the row is committed, or its write failed: logged and
    /// counted), and with `[fleet]` in Redis (by a task of its own, kept
    /// for a retry when Redis does not take it).
    pub async fn remember_sent(&self, mac: &[u8; 32], window: Duration) {
        let k = key(mac);
        self.remember(mac, window);
        if let Some(fleet) = &self.fleet {
            let redis_key = fleet.key_reflection(k);
            let (f, pending) = (fleet.clone(), self.pending.clone());
            fleet.spawn(async move {
                if f.remember("reflection", &redis_key, window).await.is_err() {
                    keep_pending(&pending, redis_key, Instant::now() + window);
                }
            });
        }
        if let Some(writer) = &self.writer {
            let until = now_ms().saturating_add(window.as_millis().try_into().unwrap_or(u64::MAX));
            let (tx, rx) = oneshot::channel();
            let written = match writer.send((until, k, tx)) {
                Ok(()) => rx.await.unwrap_or_else(|_| Err("the writer stopped".into())),
                Err(_) => Err("the writer stopped".into()),
            };
            if let Err(e) = written {
                self.persist_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "reflection guard: an outbound signature could not be written to the state database; sent anyway, refused by this process until its tolerance ends, but forgotten by a restart");
            }
        }
    }

    /// Whether a webhook's `mac` is a signature this gateway — or with
    /// `[fleet]`, any instance — sent lately, and where the answer came
    /// from (`None` without `[fleet]`).
    pub async fn seen_by_fleet(&self, mac: &[u8; 32]) -> (Seen, Option<Source>) {
        if self.seen(mac) {
            return (Seen::Yes, self.fleet.as_ref().map(|_| Source::Local));
        }
        let Some(fleet) = &self.fleet else {
            return (Seen::No, None);
        };
        match fleet.exists("reflection", &fleet.key_reflection(key(mac))).await {
            Ok(true) => (Seen::Yes, Some(Source::Redis)),
            Ok(false) => (Seen::No, Some(Source::Redis)),
            Err(_) => (Seen::Unknown, Some(Source::Local)),
        }
    }

    /// Write the Redis keys whose write failed, while Redis takes them
    /// (every [`PENDING_RETRY`], until `stop`). Expired ones are dropped.
    pub async fn retry_pending(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let mut every = tokio::time::interval(PENDING_RETRY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = Instant::now();
            self.pending.retain(|_, until| *until > now);
            let due: Vec<(String, Instant)> = self.pending.iter().map(|e| (e.key().clone(), *e.value())).collect();
            let mut written = 0usize;
            for (k, until) in due {
                let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                    self.pending.remove(&k);
                    continue;
                };
                if fleet.remember("reflection", &k, left).await.is_err() {
                    break; // Redis still down: the next tick tries again.
                }
                self.pending.remove(&k);
                written += 1;
            }
            if written > 0 {
                tracing::info!(
                    signatures = written,
                    "reflection guard: outbound signatures Redis missed are written to it now"
                );
            }
        }
    }

    /// Redis writes waiting for Redis.
    pub fn pending(&self) -> usize {
        self.pending.len()
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

/// Keep a Redis write for later, within [`PENDING_CAPACITY`] (when full,
/// the one expiring soonest goes).
fn keep_pending(pending: &DashMap<String, Instant>, key: String, until: Instant) {
    if pending.len() >= PENDING_CAPACITY {
        let now = Instant::now();
        pending.retain(|_, u| *u > now);
        if pending.len() >= PENDING_CAPACITY {
            let soonest = pending.iter().min_by_key(|e| *e.value()).map(|e| e.key().clone());
            if let Some(k) = soonest {
                pending.remove(&k);
            }
        }
    }
    pending.insert(key, until);
}

/// Read the rows not yet expired into `macs`; how many.
fn load(db: &Database, macs: &DashSet<u128>) -> Result<usize, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = match txn.open_table(TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let mut n = 0;
    for row in table.range((now_ms(), 0u128)..).map_err(|e| e.to_string())? {
        let (k, _) = row.map_err(|e| e.to_string())?;
        macs.insert(k.value().1);
        n += 1;
    }
    Ok(n)
}

/// The writer thread: takes whatever is queued, commits it in one synced
/// transaction, answers each waiter; deletes expired rows every
/// [`PRUNE_EVERY`]. Ends when the memory is dropped.
fn write_loop(db: &Database, rx: &std::sync::mpsc::Receiver<Job>) {
    let mut pruned = Instant::now();
    loop {
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(job) => Some(job),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        batch.extend(rx.try_iter());
        let prune = pruned.elapsed() >= PRUNE_EVERY;
        if prune {
            pruned = Instant::now();
        }
        let result = commit(db, &batch, prune);
        if let Err(e) = &result {
            if batch.is_empty() {
                tracing::warn!(error = %e, "reflection guard: pruning the state database's expired rows failed");
            }
        }
        for (_, _, tx) in batch {
            let _ = tx.send(result.clone());
        }
    }
}

fn commit(db: &Database, batch: &[Job], prune: bool) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
        for (until, mac, _) in batch {
            table.insert((*until, *mac), ()).map_err(|e| e.to_string())?;
        }
        if prune {
            let now = now_ms();
            table
                .retain_in(..(now, 0u128), |_, _| false)
                .map_err(|e| e.to_string())?;
            let over = table
                .len()
                .map_err(|e| e.to_string())?
                .saturating_sub(2 * CAPACITY as u64);
            if over > 0 {
                let oldest: Vec<(u64, u128)> = table
                    .iter()
                    .map_err(|e| e.to_string())?
                    .take(usize::try_from(over).unwrap_or(usize::MAX))
                    .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                    .collect();
                for k in oldest {
                    table.remove(k).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_for_at_least_one_window() {
        let r = Reflections::new(None, None).unwrap();
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

    #[tokio::test]
    async fn a_restart_reads_back_the_signatures_still_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::statedb::open(dir.path()).unwrap();
        let (fresh, stale) = ([3u8; 32], [4u8; 32]);
        {
            let r = Reflections::new(None, Some(db.clone())).unwrap();
            r.remember_sent(&fresh, Duration::from_secs(300)).await;
            r.remember_sent(&stale, Duration::from_millis(1)).await;
            assert_eq!(r.persist_errors.load(Ordering::Relaxed), 0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = Reflections::new(None, Some(db)).unwrap();
        assert!(r.seen(&fresh), "committed before remember_sent returned");
        assert!(!r.seen(&stale), "expired: not read back");
    }
}
