//! The tamper-evident audit log: one JSON line per request, allowed or
//! denied, written off the hot path by one writer task.
//!
//! Every request reserves a slot in the bounded queue *before* anything is
//! forwarded; if none frees up within `audit.wait_ms`, the request is refused
//! (503 `audit_unavailable`) — fail closed: nothing reaches the provider
//! unaudited. With `hash_chain`, each line carries `seq` and `prev` (SHA-256
//! hex of the previous line); the chain continues across restarts and
//! rotations, and `<path>.head` records the last seq/hash about once a second
//! so that cutting records off the end is detectable too. The log never holds
//! the secret, the signature itself (only its fingerprint) or the body.

mod verify;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{AuditConfig, AuditSink};
use crate::metrics::Metrics;

pub use verify::{verify, Gap, HeadCheck, Recovery, Report, TornFile, Unterminated, Verdict};

/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How often `<path>.head` is refreshed while records flow.
const HEAD_EVERY: Duration = Duration::from_secs(1);
/// The longest line `verify` accepts. Records are far smaller (the path is
/// bounded by `listener.max_uri_bytes`).
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
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    #[serde(flatten)]
    entry: &'a Entry,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<&'a str>,
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
    hex::encode(Sha256::digest(line))
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

/// A reserved place in the queue: the request may proceed.
pub struct Slot(mpsc::OwnedPermit<Entry>);

impl Slot {
    pub fn write(self, e: Entry) {
        self.0.send(e);
    }
}

/// The request side of the audit log.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
    wait: Duration,
    redact: std::sync::Arc<[String]>,
}

impl AuditLog {
    /// Reserve room for this request's record, waiting at most `audit.wait_ms`.
    pub async fn reserve(&self) -> Option<Slot> {
        match tokio::time::timeout(self.wait, self.tx.clone().reserve_owned()).await {
            Ok(Ok(p)) => Some(Slot(p)),
            _ => None,
        }
    }

    pub fn redact_keys(&self) -> &[String] {
        &self.redact
    }
}

/// Where lines go.
enum Out {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        w: BufWriter<File>,
        size: u64,
        max_bytes: u64,
        max_files: usize,
    },
}

struct Writer {
    out: Out,
    chain: bool,
    seq: u64,
    prev: String,
    metrics: std::sync::Arc<Metrics>,
    last_head: Instant,
    head_dirty: bool,
}

/// Start the writer; the returned handle finishes after every queued record
/// is written and flushed, once all `AuditLog` clones are dropped.
pub fn start(c: &AuditConfig, metrics: std::sync::Arc<Metrics>) -> std::io::Result<(AuditLog, JoinHandle<()>)> {
    let (out, seq, prev) = match &c.sink {
        AuditSink::Stdout => (Out::Stdout(std::io::stdout()), 0, GENESIS.to_string()),
        AuditSink::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let (seq, prev) = resume(path)?;
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            let size = f.metadata()?.len();
            (
                Out::File {
                    path: path.clone(),
                    w: BufWriter::new(f),
                    size,
                    max_bytes: c.max_bytes,
                    max_files: c.max_files,
                },
                seq,
                prev,
            )
        }
    };
    let (tx, rx) = mpsc::channel(c.queue);
    let mut writer = Writer {
        out,
        chain: c.hash_chain,
        seq,
        prev,
        metrics,
        last_head: Instant::now(),
        head_dirty: false,
    };
    let handle = tokio::task::spawn_blocking(move || writer.run(rx));
    Ok((
        AuditLog {
            tx,
            wait: c.wait,
            redact: c.redact_query_keys.clone().into(),
        },
        handle,
    ))
}

/// Continue the chain: seq and hash of the last line of the current file, or
/// of the newest rotated file if the current one is empty or missing.
fn resume(path: &Path) -> std::io::Result<(u64, String)> {
    for p in [path.to_path_buf(), rotated(path, 1)] {
        if let Some(last) = last_line(&p)? {
            let seq = serde_json::from_slice::<serde_json::Value>(&last)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .unwrap_or(0);
            return Ok((seq, sha256_hex(&last)));
        }
    }
    Ok((0, GENESIS.to_string()))
}

/// `io::Error` with the path in its message.
fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn head_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// The last complete line of a file (reads only its tail).
fn last_line(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let trimmed = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if trimmed.is_empty() {
            return Ok(None);
        }
        match trimmed.iter().rposition(|&b| b == b'\n') {
            Some(i) => return Ok(Some(trimmed[i + 1..].to_vec())),
            None if start == 0 => return Ok(Some(trimmed.to_vec())),
            None => window *= 4,
        }
    }
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Entry>) {
        while let Some(e) = rx.blocking_recv() {
            self.write(&e);
            // Batch: write what is queued, then flush once.
            while let Ok(e) = rx.try_recv() {
                self.write(&e);
            }
            self.flush(false);
        }
        self.flush(true);
    }

    fn write(&mut self, e: &Entry) {
        let seq = self.seq + 1;
        let line = Line {
            seq,
            entry: e,
            prev: self.chain.then_some(self.prev.as_str()),
        };
        let Ok(mut bytes) = serde_json::to_vec(&line) else {
            self.metrics.audit_records.with_label_values(&["failed"]).inc();
            return;
        };
        if let Err(err) = self.rotate_if_needed(bytes.len() as u64 + 1) {
            tracing::error!(error = %err, "audit log rotation failed");
        }
        let hash = sha256_hex(&bytes);
        bytes.push(b'\n');
        let res = match &mut self.out {
            Out::Stdout(s) => s.write_all(&bytes),
            Out::File { w, size, .. } => {
                *size += bytes.len() as u64;
                w.write_all(&bytes)
            }
        };
        match res {
            Ok(()) => {
                self.seq = seq;
                self.prev = hash;
                self.head_dirty = true;
                self.metrics.audit_records.with_label_values(&["written"]).inc();
            }
            Err(err) => {
                self.metrics.audit_records.with_label_values(&["failed"]).inc();
                tracing::error!(error = %err, "audit record could not be written");
            }
        }
    }

    fn rotate_if_needed(&mut self, incoming: u64) -> std::io::Result<()> {
        let Out::File {
            path,
            w,
            size,
            max_bytes,
            max_files,
        } = &mut self.out
        else {
            return Ok(());
        };
        if *size == 0 || *size + incoming <= *max_bytes {
            return Ok(());
        }
        w.flush()?;
        let _ = std::fs::remove_file(rotated(path, *max_files));
        for n in (1..*max_files).rev() {
            let from = rotated(path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(path, n + 1))?;
            }
        }
        std::fs::rename(&*path, rotated(path, 1))?;
        *w = BufWriter::new(OpenOptions::new().create(true).append(true).open(&*path)?);
        *size = 0;
        Ok(())
    }

    fn flush(&mut self, last: bool) {
        let res = match &mut self.out {
            Out::Stdout(s) => s.flush(),
            Out::File { w, .. } => w.flush(),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "audit log flush failed");
        }
        if self.head_dirty && (last || self.last_head.elapsed() >= HEAD_EVERY) {
            if let Out::File { path, .. } = &self.out {
                let head = Head {
                    seq: self.seq,
                    hash: self.prev.clone(),
                };
                let hp = head_path(path);
                let tmp = hp.with_extension("head.tmp");
                let ok = serde_json::to_vec(&head)
                    .map_err(std::io::Error::other)
                    .and_then(|b| std::fs::write(&tmp, b))
                    .and_then(|()| std::fs::rename(&tmp, &hp));
                if let Err(e) = ok {
                    tracing::warn!(error = %e, "audit head file not updated");
                }
            }
            self.last_head = Instant::now();
            self.head_dirty = false;
        }
    }
}

#[cfg(test)]
mod tests;
