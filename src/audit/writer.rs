//! The writer task: numbers records, chains them, writes them in batches and
//! makes each batch durable before counting it written.
//!
//! Invariants (`written_seq` is the last record on disk and synced, `seq`
//! the last number given out):
//! - `prev` is the hash of the line at `written_seq`;
//! - every seq in `written_seq + 1 ..= seq` is lost: its record was not
//!   written and never will be; `lost` is `Some` exactly when that range is
//!   not empty, and the next line written is the `gap` record naming it;
//! - the file holds nothing past the last synced line: after a failed write
//!   or sync it is cut back (`good_len`) before anything else is written.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

use super::files::{self, Resume, Torn};
use super::{at, head_path, now_rfc3339, rotated, sha256_hex, Entry, Head, Health, Msg, TICK};
use crate::metrics::Metrics;

/// Records taken off the queue into one write (and one sync).
const MAX_BATCH: usize = 1024;
/// Before it turns healthy again the writer checks that this much can be
/// written beside the log, so that a disk with a few bytes free does not
/// flip between healthy and failing on every record.
const PROBE_BYTES: usize = 64 * 1024;

/// Test-only write faults (the unit tests drive the failure paths without a
/// full disk); always empty in the gateway.
#[derive(Clone)]
pub(super) struct Fault(Option<Arc<std::sync::atomic::AtomicU8>>);

pub(super) const FAULT_NONE: u8 = 0;
/// Every write fails with ENOSPC.
pub(super) const FAULT_WRITE: u8 = 1;
/// A write takes half the bytes, then fails with ENOSPC.
pub(super) const FAULT_SHORT: u8 = 2;
/// Writes work, fdatasync fails with EIO.
pub(super) const FAULT_SYNC: u8 = 3;

impl Fault {
    pub fn none() -> Fault {
        Fault(None)
    }

    #[cfg(test)]
    pub fn switch() -> (Fault, Arc<std::sync::atomic::AtomicU8>) {
        let s = Arc::new(std::sync::atomic::AtomicU8::new(FAULT_NONE));
        (Fault(Some(s.clone())), s)
    }

    fn mode(&self) -> u8 {
        self.0.as_ref().map_or(FAULT_NONE, |s| s.load(Ordering::SeqCst))
    }

    fn sync(&self) -> io::Result<()> {
        if self.mode() == FAULT_SYNC {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        Ok(())
    }
}

/// `write_all` that says how many bytes went out before an error.
fn write_counted(f: &mut File, buf: &[u8], fault: &Fault) -> (usize, io::Result<()>) {
    let mut done = 0;
    match fault.mode() {
        FAULT_WRITE => return (0, Err(io::Error::from_raw_os_error(28))), // ENOSPC
        FAULT_SHORT if buf.len() > 1 => {
            let half = buf.len() / 2;
            if let Err(e) = f.write_all(&buf[..half]) {
                return (0, Err(e));
            }
            return (half, Err(io::Error::from_raw_os_error(28)));
        }
        _ => {}
    }
    while done < buf.len() {
        match f.write(&buf[done..]) {
            Ok(0) => {
                return (
                    done,
                    Err(io::Error::new(io::ErrorKind::WriteZero, "the write took no bytes")),
                )
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// Where lines go.
pub(super) enum Out {
    /// stdout (a duplicate of fd 1, written without std's line buffer so
    /// that the writer knows which lines went out) or a path that is not a
    /// regular file (`/dev/null`, a FIFO): no sync, no truncation, no
    /// rotation, no head file. `partial`: a failed write left part of a
    /// line; the next write starts a new line first.
    Stream {
        f: File,
        partial: bool,
        name: String,
    },
    File(LogFile),
}

pub(super) struct LogFile {
    path: PathBuf,
    /// `None` after rotation could not open a new file (retried).
    file: Option<File>,
    /// The file's length up to the end of the last synced line.
    good_len: u64,
    /// The file may hold bytes past `good_len` (a failed write or sync).
    dirty_tail: bool,
    max_bytes: u64,
    max_files: usize,
    rotation_failing: bool,
}

impl Out {
    pub fn stdout() -> io::Result<Out> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(Out::Stream {
            f: File::from(fd),
            partial: false,
            name: "stdout".into(),
        })
    }

    /// A path that exists and is not a regular file.
    pub fn stream(path: &std::path::Path) -> io::Result<Out> {
        Ok(Out::Stream {
            f: std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| at(path, e))?,
            partial: false,
            name: path.display().to_string(),
        })
    }

    pub fn file(path: &std::path::Path, max_bytes: u64, max_files: usize) -> io::Result<Out> {
        let f = files::open_log(path)?;
        let len = f.metadata().map_err(|e| at(path, e))?.len();
        Ok(Out::File(LogFile {
            path: path.to_path_buf(),
            file: Some(f),
            good_len: len,
            dirty_tail: false,
            max_bytes,
            max_files,
            rotation_failing: false,
        }))
    }
}

impl LogFile {
    fn reopen(&mut self) -> io::Result<()> {
        let f = files::open_log(&self.path)?;
        self.good_len = f.metadata().map_err(|e| at(&self.path, e))?.len();
        self.dirty_tail = false;
        self.file = Some(f);
        Ok(())
    }

    /// Cut what a failed write left past the last synced line (never extend
    /// a file that shrank behind our back).
    fn cut_tail(&mut self) -> io::Result<()> {
        if !self.dirty_tail {
            return Ok(());
        }
        let Some(f) = &self.file else { return Ok(()) };
        let len = f.metadata()?.len();
        if len > self.good_len {
            f.set_len(self.good_len)?;
        } else {
            self.good_len = len;
        }
        self.dirty_tail = false;
        Ok(())
    }

    /// Append `buf` and make it durable, or leave the file as it was.
    fn append(&mut self, buf: &[u8], fault: &Fault) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        self.cut_tail()?;
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("the audit log is not open"));
        };
        self.dirty_tail = true;
        let (_, res) = write_counted(f, buf, fault);
        let res = res.and_then(|()| fault.sync()).and_then(|()| f.sync_data());
        match res {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                self.dirty_tail = false;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.cut_tail() {
                    tracing::error!(error = %cut, "audit log: could not cut a failed write off the end (retried before the next write)");
                }
                Err(e)
            }
        }
    }

    /// Whether `incoming` bytes after `staged` ones would take a non-empty
    /// file past `max_bytes`.
    fn would_overflow(&self, staged: u64, incoming: u64) -> bool {
        let size = self.good_len + staged;
        size > 0 && size + incoming > self.max_bytes
    }

    /// Shift `path.N` to `path.N+1` and the log to `path.1`.
    fn shift(&self) -> io::Result<()> {
        match std::fs::remove_file(rotated(&self.path, self.max_files)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..self.max_files).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
    }
}

/// One chained line of the log.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    #[serde(flatten)]
    entry: &'a Entry,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<&'a str>,
}

#[derive(Serialize)]
struct GapLine<'a> {
    seq: u64,
    record: &'static str,
    time: String,
    lost_from: u64,
    lost_to: u64,
    lost: u64,
    since: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<&'a str>,
}

#[derive(Serialize)]
struct RecoveredLine<'a> {
    seq: u64,
    record: &'static str,
    time: String,
    torn_file: &'a str,
    torn_bytes: u64,
    torn_sha256: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<&'a str>,
}

/// Records lost since the last written one.
struct Lost {
    since: String,
    reason: String,
}

/// Lines serialized for one write.
struct Batch {
    buf: Vec<u8>,
    /// seq, hash and end offset in `buf` of each line.
    lines: Vec<(u64, String, usize)>,
}

pub(super) struct Writer {
    out: Out,
    chain: bool,
    seq: u64,
    written_seq: u64,
    prev: String,
    lost: Option<Lost>,
    /// A torn line moved aside at start, recorded before anything else.
    recovered: Option<Torn>,
    /// What first failed since the log was last healthy.
    failure: Option<String>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    fault: Fault,
    last_attempt: Option<Instant>,
    head_written: Instant,
    head_dirty: bool,
    head_failing: bool,
}

impl Writer {
    pub fn new(
        out: Out,
        chain: bool,
        resumed: Resume,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        fault: Fault,
    ) -> Writer {
        Writer {
            out,
            chain,
            seq: resumed.seq,
            written_seq: resumed.seq,
            prev: resumed.prev,
            lost: None,
            recovered: resumed.torn,
            failure: None,
            health,
            metrics,
            fault,
            last_attempt: None,
            head_written: Instant::now(),
            head_dirty: false,
            head_failing: false,
        }
    }

    pub fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        self.settle(true);
        while let Some(msg) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut tick = false;
            match msg {
                Msg::Record(e) => batch.push(e),
                Msg::Tick => tick = true,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Record(e)) => batch.push(e),
                    Ok(Msg::Tick) => tick = true,
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write_batch(&batch);
            }
            if tick {
                self.tick(false);
            }
        }
        self.tick(true);
    }

    fn healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Acquire)
    }

    fn location(&self) -> String {
        match &self.out {
            Out::Stream { name, .. } => name.clone(),
            Out::File(lf) => lf.path.display().to_string(),
        }
    }

    /// The clock: retry while unhealthy, keep the head file fresh.
    fn tick(&mut self, last: bool) {
        if !self.healthy() || self.recovered.is_some() || self.lost.is_some() {
            self.settle(true);
        }
        if self.head_dirty && (last || self.head_written.elapsed() >= TICK) {
            self.write_head();
        }
        if last && self.lost.is_some() {
            tracing::error!(
                lost = self.seq - self.written_seq,
                lost_from = self.written_seq + 1,
                lost_to = self.seq,
                "the audit writer stops with records lost that no gap record names (the log stayed unwritable); \
                 this message is their only trace"
            );
        }
    }

    /// Make the log healthy with nothing pending (the recovered and gap
    /// records written). While unhealthy, tries at most once a second
    /// unless `now`. True when records can be written.
    fn settle(&mut self, now: bool) -> bool {
        let healthy = self.healthy();
        if healthy && self.recovered.is_none() && self.lost.is_none() {
            return true;
        }
        if !healthy && !now && self.last_attempt.is_some_and(|t| t.elapsed() < TICK) {
            return false;
        }
        self.last_attempt = Some(Instant::now());
        if !healthy {
            if let Err(e) = self.probe() {
                tracing::debug!(error = %e, "audit log still not writable");
                return false;
            }
        }
        if let Some(t) = self.recovered.clone() {
            let time = now_rfc3339();
            let ok = self.write_note(|seq, prev| {
                serde_json::to_vec(&RecoveredLine {
                    seq,
                    record: "recovered",
                    time: time.clone(),
                    torn_file: &t.file_name,
                    torn_bytes: t.bytes,
                    torn_sha256: &t.sha256,
                    reason: t.reason,
                    prev,
                })
            });
            if !ok {
                return false;
            }
            self.recovered = None;
        }
        if let Some(lost) = self.lost.take() {
            let (from, to) = (self.written_seq + 1, self.seq);
            let time = now_rfc3339();
            let ok = self.write_note(|seq, prev| {
                serde_json::to_vec(&GapLine {
                    seq,
                    record: "gap",
                    time: time.clone(),
                    lost_from: from,
                    lost_to: to,
                    lost: to - from + 1,
                    since: &lost.since,
                    reason: &lost.reason,
                    prev,
                })
            });
            if !ok {
                self.lost = Some(lost);
                return false;
            }
            self.health.lost.store(0, Ordering::Release);
            tracing::warn!(
                lost = to - from + 1,
                lost_from = from,
                lost_to = to,
                "audit log: a gap record names the records that could not be written"
            );
        }
        self.failure = None;
        if !healthy {
            self.health.problem.store(None);
            self.health.healthy.store(true, Ordering::Release);
            self.metrics.audit_healthy.set(1);
            tracing::info!(log = %self.location(), "audit log writable again; requests are accepted");
        }
        true
    }

    /// Whether there is room to write again: the log is open, cut back to
    /// its last synced line, and `PROBE_BYTES` fit beside it.
    fn probe(&mut self) -> io::Result<()> {
        let Out::File(lf) = &mut self.out else { return Ok(()) };
        if lf.file.is_none() {
            lf.reopen()?;
        }
        lf.cut_tail()?;
        if matches!(self.fault.mode(), FAULT_WRITE | FAULT_SHORT) {
            return Err(io::Error::from_raw_os_error(28));
        }
        let mut s = lf.path.as_os_str().to_owned();
        s.push(".probe");
        let p = PathBuf::from(s);
        let _ = std::fs::remove_file(&p);
        let res = files::create_private(&p).and_then(|mut f| f.write_all(&vec![0u8; PROBE_BYTES]));
        let _ = std::fs::remove_file(&p);
        res
    }

    /// Write a `recovered` or `gap` record alone. Its seq is only taken when
    /// it was written: a failed attempt is cut off and retried with the same.
    fn write_note(&mut self, line: impl FnOnce(u64, Option<&str>) -> serde_json::Result<Vec<u8>>) -> bool {
        let seq = self.seq + 1;
        let mut bytes = match line(seq, self.chain.then_some(self.prev.as_str())) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be serialized");
                return false;
            }
        };
        let hash = sha256_hex(&bytes);
        bytes.push(b'\n');
        if !self.make_room(bytes.len() as u64) {
            return false;
        }
        match self.commit(&bytes) {
            Ok(()) => {
                self.seq = seq;
                self.written_seq = seq;
                self.prev = hash;
                self.head_dirty = true;
                true
            }
            Err((_, e)) => {
                // (stdout may have taken part of it: the next line starts anew.)
                self.fail(&e);
                false
            }
        }
    }

    fn write_batch(&mut self, entries: &[Entry]) {
        if !self.settle(false) {
            self.seq += entries.len() as u64;
            self.note_lost(entries.len() as u64);
            return;
        }
        let mut b = Batch {
            buf: Vec::new(),
            lines: Vec::new(),
        };
        let mut staged_prev = self.prev.clone();
        for (i, e) in entries.iter().enumerate() {
            let seq = self.seq + 1;
            let line = Line {
                seq,
                entry: e,
                prev: self.chain.then_some(staged_prev.as_str()),
            };
            let mut bytes = match serde_json::to_vec(&line) {
                Ok(b) => b,
                Err(err) => {
                    // Not expected for an `Entry`; handled like a lost write.
                    tracing::error!(error = %err, "audit record could not be serialized");
                    if !self.commit_batch(&mut b) {
                        self.seq += (entries.len() - i) as u64;
                        self.note_lost((entries.len() - i) as u64);
                        return;
                    }
                    self.failure
                        .get_or_insert_with(|| format!("serializing a record: {err}"));
                    self.seq = seq;
                    self.note_lost(1);
                    if !self.settle(true) {
                        self.seq += (entries.len() - i - 1) as u64;
                        self.note_lost((entries.len() - i - 1) as u64);
                        return;
                    }
                    staged_prev = self.prev.clone();
                    continue;
                }
            };
            let hash = sha256_hex(&bytes);
            bytes.push(b'\n');
            let overflow =
                matches!(&self.out, Out::File(lf) if lf.would_overflow(b.buf.len() as u64, bytes.len() as u64));
            if overflow && (!self.commit_batch(&mut b) || !self.rotate()) {
                self.seq += (entries.len() - i) as u64;
                self.note_lost((entries.len() - i) as u64);
                return;
            }
            b.buf.extend_from_slice(&bytes);
            b.lines.push((seq, hash.clone(), b.buf.len()));
            self.seq = seq;
            staged_prev = hash;
        }
        self.commit_batch(&mut b);
    }

    /// Write the staged lines; true if they are all durable.
    fn commit_batch(&mut self, b: &mut Batch) -> bool {
        if b.lines.is_empty() {
            return true;
        }
        let res = self.commit(&b.buf);
        let durable = match &res {
            Ok(()) => b.buf.len(),
            Err((d, _)) => *d,
        };
        let staged = b.lines.len() as u64;
        let mut written = 0u64;
        for (seq, hash, end) in b.lines.drain(..) {
            if end <= durable {
                self.written_seq = seq;
                self.prev = hash;
                written += 1;
            }
        }
        b.buf.clear();
        if written > 0 {
            self.metrics
                .audit_records
                .with_label_values(&["written"])
                .inc_by(written);
            self.head_dirty = true;
        }
        match res {
            Ok(()) => true,
            Err((_, e)) => {
                self.fail(&e);
                self.note_lost(staged - written);
                false
            }
        }
    }

    /// Write `buf` at the end of the log and make it durable. On error: how
    /// many bytes are out for good (stdout only; a file is cut back to its
    /// last synced line, so 0) and the error.
    fn commit(&mut self, buf: &[u8]) -> Result<(), (usize, io::Error)> {
        match &mut self.out {
            Out::Stream { f, partial, .. } => {
                if *partial {
                    let (_, r) = write_counted(f, b"\n", &self.fault);
                    r.map_err(|e| (0, e))?;
                    *partial = false;
                }
                let (n, r) = write_counted(f, buf, &self.fault);
                r.map_err(|e| {
                    *partial = n > 0 && buf[n - 1] != b'\n';
                    (n, e)
                })
            }
            Out::File(lf) => lf.append(buf, &self.fault).map_err(|e| (0, e)),
        }
    }

    /// Rotate before a line that would overflow the file. False if the log
    /// could not be reopened (then unhealthy).
    fn make_room(&mut self, incoming: u64) -> bool {
        match &self.out {
            Out::File(lf) if lf.would_overflow(0, incoming) => self.rotate(),
            _ => true,
        }
    }

    fn rotate(&mut self) -> bool {
        let Out::File(lf) = &mut self.out else { return true };
        if let Err(e) = lf.shift() {
            if !lf.rotation_failing {
                tracing::error!(error = %e, log = %lf.path.display(), "audit log rotation failed; writing on in the current file");
            }
            lf.rotation_failing = true;
            return true;
        }
        lf.rotation_failing = false;
        lf.file = None;
        files::sync_dir(&lf.path);
        match lf.reopen() {
            Ok(()) => true,
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// A write failed: turn unhealthy (requests are refused from now on).
    fn fail(&mut self, e: &io::Error) {
        let what = format!("writing the audit log ({}) failed: {e}", self.location());
        self.failure.get_or_insert_with(|| what.clone());
        if self.health.healthy.swap(false, Ordering::AcqRel) {
            self.health.problem.store(Some(Arc::new(what.clone())));
            self.metrics.audit_healthy.set(0);
            tracing::error!(
                error = %e,
                log = %self.location(),
                "audit log write failed: requests are refused until it is writable again (retried every second)"
            );
        } else {
            tracing::debug!(error = %e, "audit log write failed again");
        }
    }

    /// `n` more records (already numbered) are lost.
    fn note_lost(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        if self.lost.is_none() {
            self.lost = Some(Lost {
                since: now_rfc3339(),
                reason: self
                    .failure
                    .clone()
                    .unwrap_or_else(|| "the audit log was not writable".into()),
            });
            self.health.lost_from.store(self.written_seq + 1, Ordering::Release);
        }
        self.health.lost.store(self.seq - self.written_seq, Ordering::Release);
        self.metrics.audit_records.with_label_values(&["failed"]).inc_by(n);
    }

    fn write_head(&mut self) {
        let Out::File(lf) = &self.out else {
            self.head_dirty = false;
            return;
        };
        let head = Head {
            seq: self.written_seq,
            hash: self.prev.clone(),
        };
        let hp = head_path(&lf.path);
        let tmp = hp.with_extension("head.tmp");
        let _ = std::fs::remove_file(&tmp);
        let res = serde_json::to_vec(&head)
            .map_err(io::Error::other)
            .and_then(|b| {
                let mut f = files::create_private(&tmp)?;
                f.write_all(&b)?;
                f.sync_data()
            })
            .and_then(|()| std::fs::rename(&tmp, &hp));
        match res {
            Ok(()) => {
                if self.head_failing {
                    tracing::info!("audit head file updated again");
                }
                self.head_failing = false;
                self.head_dirty = false;
                self.head_written = Instant::now();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if !self.head_failing {
                    tracing::warn!(error = %e, head = %hp.display(), "audit head file not updated (retried every second)");
                }
                self.head_failing = true;
            }
        }
    }
}
