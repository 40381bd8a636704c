//! The tamper-evident audit log: one JSON line per request, allowed or
//! denied, written off the hot path by one writer task.
//!
//! Every request reserves a slot in the bounded queue *before* anything is
//! forwarded; if none frees up within `audit.wait_ms`, or the log is
//! unhealthy, the request is refused (503 `audit_unavailable`): fail closed.
//! With `hash_chain`, each line carries `seq` and `prev` (SHA-256 hex of the
//! previous line); the chain continues across restarts and rotations, and
//! `<path>.head` records the last seq/hash about once a second so that
//! cutting records off the end is detectable too. The log never holds the
//! secret, the signature itself (only its fingerprint) or the body.
//!
//! Failures are explicit (docs/operations.md#audit-log):
//! - a record counts as written once the batch it is in was written to the
//!   file and `fdatasync`ed; a failed or short write, or a failed sync, cuts
//!   the file back to the last synced record, counts the batch's records as
//!   lost and turns the log unhealthy ([`AuditLog::healthy`]): from then on
//!   [`AuditLog::reserve`] refuses at once. The writer retries every second;
//!   when a write works again it first writes a `gap` record naming the lost
//!   sequence numbers, then becomes healthy;
//! - the space for the records of the requests already admitted is
//!   allocated ahead (`audit.reserve_bytes` past the end of the file, kept
//!   after every write, `reserve.rs`): when it cannot be kept the log turns
//!   unhealthy at once, and the records already promised are still written
//!   into what is reserved, so a full disk loses none of them;
//! - a torn last line found at start (a crash mid-write) is moved aside to
//!   `<path>.torn-<unix time>` and the chain continues with a `recovered`
//!   record;
//! - files are created owner-only (0600), directories 0700;
//! - SIGXFSZ (a write past `RLIMIT_FSIZE`) is caught, so such a write fails
//!   with EFBIG and is handled like a full disk instead of killing the process.

mod fault;
mod files;
mod head;
mod health;
mod notes;
mod out;
mod reserve;
mod verify;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{AuditConfig, AuditSink};
use crate::metrics::Metrics;

#[cfg(test)]
pub use verify::Report;
pub use verify::{verify, HeadCheck, TornFile, Verdict};

/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How often `<path>.head` is refreshed while records flow, and how often an
/// unhealthy writer tries again.
const TICK: Duration = Duration::from_secs(1);
/// The longest line `verify` and the start-up tail check accept. Records are
/// far smaller (the path is bounded by `listener.max_uri_bytes`).
const MAX_LINE: usize = 1 << 20;

/// One audit record as the request path hands it over (seq/prev are added by
/// the writer, which alone knows the order).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub time: String,
    pub request_id: String,
    pub client: SocketAddr,
    pub route: Option<String>,
    pub method: String,
    pub path: String,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: Option<u64>,
    pub credential: Option<String>,
    pub secret_version: Option<u64>,
    pub signature_fp: Option<String>,
    pub duplicate_key: Option<String>,
    /// With `[fleet]` only: `redis` when the request's shared decisions
    /// (limits, duplicate guard, webhook de-duplication, reflection) came
    /// from Redis, `local` when any fell back to this instance. Absent
    /// otherwise, so records without a fleet are byte-for-byte as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<&'static str>,
    /// How the upstream exchange failed (its error code), when it did: the
    /// only trace of a provider timeout for a request whose client had gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<&'static str>,
    /// A route switch's record only: the operator's reason for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A route with `amount_guard`: the payout's amount as decimal text with
    /// the route's `minor_units` (`"105.50"`), once it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// ... and its currency, upper-cased, when the guard has a `currency` pointer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl Entry {
    /// The record of something the gateway did itself rather than a proxied
    /// request (an operator's change, a webhook delivery): now, `POST`,
    /// status 200, nothing upstream, no credential; callers set what differs.
    pub fn event(request_id: String, client: SocketAddr, route: &str, path: String, decision: &'static str) -> Entry {
        Entry {
            time: now_rfc3339(),
            request_id,
            client,
            route: Some(route.to_string()),
            method: "POST".into(),
            path,
            decision,
            reason: None,
            status: 200,
            upstream_status: None,
            duration_ms: 0.0,
            bytes_in: 0,
            bytes_out: None,
            credential: None,
            secret_version: None,
            signature_fp: None,
            duplicate_key: None,
            fleet: None,
            upstream_error: None,
            note: None,
            amount: None,
            currency: None,
        }
    }
}

/// The head of the chain, persisted beside the log.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn sha256_hex(line: &[u8]) -> String {
    HexHash::of(line).as_str().to_string()
}

/// A SHA-256 in lowercase hex, held on the stack.
#[derive(Clone, Copy)]
struct HexHash([u8; 64]);

impl HexHash {
    fn of(line: &[u8]) -> HexHash {
        let mut out = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(Sha256::digest(line), &mut out);
        HexHash(out)
    }

    /// A hash read back as text (always 64 hex digits: `GENESIS`, or a
    /// hash this writer computed); anything else is kept as far as it fits.
    fn from_str(s: &str) -> HexHash {
        let mut out = [b'0'; 64];
        let n = s.len().min(64);
        out[..n].copy_from_slice(&s.as_bytes()[..n]);
        HexHash(out)
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or(GENESIS)
    }
}

/// Replace the values of sensitive query parameters.
///
/// A parameter matches a key of `keys` when the two are equal after
/// percent-decoding, lower-casing and dropping trailing `[]` / `[N]` array
/// brackets (so `CARD_NUMBER`, `card%5Fnumber`, `card_number[]` and
/// `card_number%5B%5D` all match `card_number`). The key is kept as sent.
pub fn redact_query(query: &str, keys: &[String]) -> String {
    if keys.is_empty() {
        return query.to_string();
    }
    let wanted: Vec<String> = keys.iter().map(|k| normalize_key(k)).collect();
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if wanted.contains(&normalize_key(k)) => format!("{k}=REDACTED"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A query key as a server would see it: percent-decoded (`+` is a space),
/// lower-cased, without trailing `[]` or `[digits]`.
fn normalize_key(key: &str) -> String {
    let mut decoded = Vec::with_capacity(key.len());
    let bytes = key.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        decoded.push(b);
                        i += 3;
                        continue;
                    }
                    None => decoded.push(b'%'),
                }
            }
            b'+' => decoded.push(b' '),
            b => decoded.push(b),
        }
        i += 1;
    }
    let mut key = String::from_utf8_lossy(&decoded).to_lowercase();
    while key.ends_with(']') {
        let Some(open) = key.rfind('[') else { break };
        if !key[open + 1..key.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        key.truncate(open);
    }
    key
}

/// What goes through the queue: a record with its slot (given back once the
/// record is written or lost), or the writer's clock.
// A tick is rare and the queue holds records by value anyway; boxing them
// would add an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Entry, OwnedSemaphorePermit),
    Tick,
}

/// A reserved place for one record: the request may proceed. Dropped
/// unwritten, the place is given back.
pub struct Slot {
    permit: OwnedSemaphorePermit,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Slot {
    pub fn write(self, e: Entry) {
        let _ = self.tx.send(Msg::Record(e, self.permit));
    }
}

/// The request side of the audit log.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
    /// `audit.queue` places: records admitted and not yet written (queued
    /// or in the writer's hands). The reservation is sized for them.
    slots: Arc<Semaphore>,
    wait: Duration,
    redact: Arc<[String]>,
    health: Arc<health::Health>,
}

impl AuditLog {
    /// Reserve room for this request's record, waiting at most
    /// `audit.wait_ms`. `None` (refuse the request, 503 `audit_unavailable`)
    /// when no slot frees up in time, and at once while the log is unhealthy.
    pub async fn reserve(&self) -> Option<Slot> {
        if !self.healthy() {
            return None;
        }
        match crate::permit::acquire_within(&self.slots, self.wait).await {
            // The log may have failed while this request waited.
            Ok(permit) if self.healthy() => Some(Slot {
                permit,
                tx: self.tx.clone(),
            }),
            _ => None,
        }
    }

    /// Whether requests are admitted: false from the first failed write
    /// until a write works again and the gap is recorded, and while the
    /// reservation cannot be kept. Cheap (an atomic).
    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }

    /// What is wrong, while unhealthy: for readiness and the admin API.
    pub fn problem(&self) -> Option<String> {
        self.health.problem()
    }

    pub fn redact_keys(&self) -> &[String] {
        &self.redact
    }
}

/// Start the writer; the returned handle finishes after every queued record
/// is written and synced, once all `AuditLog` clones are dropped.
///
/// Must be called within a tokio runtime (it starts the writer's clock and
/// catches SIGXFSZ).
pub fn start(c: &AuditConfig, metrics: Arc<Metrics>) -> std::io::Result<(AuditLog, JoinHandle<()>)> {
    start_with(c, metrics, fault::Fault::none())
}

fn start_with(
    c: &AuditConfig,
    metrics: Arc<Metrics>,
    fault: fault::Fault,
) -> std::io::Result<(AuditLog, JoinHandle<()>)> {
    catch_sigxfsz();
    let (out, resumed) = match &c.sink {
        AuditSink::Stdout => (out::Out::stdout()?, files::Resume::genesis()),
        // `/dev/null`, a FIFO: written as a stream (no chain to resume).
        AuditSink::File(path) if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) => {
            (out::Out::stream(path)?, files::Resume::genesis())
        }
        AuditSink::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                files::create_private_dir(dir)?;
            }
            let resumed = files::resume(path)?;
            let out = out::Out::file(path, c.max_bytes, c.max_files, c.reserve_bytes)?;
            (out, resumed)
        }
    };
    if let Some(t) = &resumed.torn {
        tracing::warn!(
            torn_file = %t.file_name,
            bytes = t.bytes,
            reason = t.reason,
            "audit log: a torn last line was moved aside; the chain continues with a recovered record"
        );
    }
    let health = Arc::new(health::Health::new());
    metrics.audit_healthy.set(1);
    // Unbounded, but every record holds one of the `queue` slots until it is
    // written, and at most one tick waits.
    let (tx, rx) = mpsc::unbounded_channel();
    let tick_queued = Arc::new(AtomicBool::new(false));
    // The writer's clock: a tick a second (head file, retries). A weak
    // sender, so it never keeps the queue open at shutdown.
    let weak = tx.downgrade();
    let queued = tick_queued.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(tx) = weak.upgrade() else { return };
            // A tick still queued means the writer is busy anyway.
            if !queued.swap(true, Ordering::AcqRel) && tx.send(Msg::Tick).is_err() {
                return;
            }
        }
    });
    // (The first reservation is made here, before any request is admitted.)
    let mut w = writer::Writer::new(out, c.hash_chain, c.batch, resumed, health.clone(), metrics, fault);
    let handle = tokio::task::spawn_blocking(move || w.run(rx, &tick_queued));
    Ok((
        AuditLog {
            tx,
            slots: Arc::new(Semaphore::new(c.queue.min(Semaphore::MAX_PERMITS))),
            wait: c.wait,
            redact: c.redact_query_keys.clone().into(),
            health,
        },
        handle,
    ))
}

/// A write past `RLIMIT_FSIZE` raises SIGXFSZ, whose default action kills
/// the process. With a handler installed (tokio keeps it for the life of the
/// process) the write fails with EFBIG instead, which the writer handles like
/// a full disk.
fn catch_sigxfsz() {
    #[cfg(all(target_os = "linux", any(target_arch = "mips", target_arch = "mips64")))]
    const SIGXFSZ: i32 = 31;
    #[cfg(not(all(target_os = "linux", any(target_arch = "mips", target_arch = "mips64"))))]
    const SIGXFSZ: i32 = 25;
    use tokio::signal::unix::{signal, SignalKind};
    if let Err(e) = signal(SignalKind::from_raw(SIGXFSZ)) {
        tracing::warn!(error = %e, "could not catch SIGXFSZ; a write past RLIMIT_FSIZE would end the process");
    }
}

/// `io::Error` with the path in its message.
fn at(path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn rotated(path: &std::path::Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn head_path(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

#[cfg(test)]
mod reserve_tests;
#[cfg(test)]
mod tests;
