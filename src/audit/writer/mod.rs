//! The writer task: numbers records, chains them, writes them in batches and
//! makes each batch durable before counting it written; turns the log
//! unhealthy when a write fails or the reservation cannot be kept, and
//! healthy again.
//!
//! Invariants (`written_seq` is the last record on disk and synced, `seq`
//! the last number given out):
//! - `prev` is the hash of the line at `written_seq`;
//! - every seq in `written_seq + 1 ..= seq` is lost: its record was not
//!   written and never will be; `lost` is `Some` exactly when that range is
//!   not empty, and the next line written is the `gap` record naming it;
//! - the file holds nothing past the last synced line: after a failed write
//!   or sync it is cut back (`good_len`) before anything else is written;
//! - with a reservation, every write is followed by a top-up, so at least
//!   `reserve_bytes` are allocated past the end whenever requests are
//!   admitted; when it cannot be made the log is unhealthy (`short`) but
//!   goes on writing the records of the requests already admitted (their
//!   slots are held until their batch is written, so there are at most
//!   `queue` of them) into what is reserved.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::fault::Fault;
use super::files::{Resume, Torn};
use super::head::HeadFile;
use super::health::{Health, State};
use super::notes::{recovered_line, Lost};
use super::out::Out;
use super::{sha256_hex, Msg, TICK};
use crate::metrics::Metrics;

/// Records taken off the queue into one write (and one sync).
const MAX_BATCH: usize = 1024;

mod batch;
mod room;

pub(super) struct Writer {
    out: Out,
    chain: bool,
    /// How long a batch that is not full waits for more records after its
    /// first one before it is written and synced (`audit.batch_ms`).
    linger: Duration,
    seq: u64,
    written_seq: u64,
    prev: String,
    lost: Option<Lost>,
    /// A torn line moved aside at start, recorded before anything else.
    recovered: Option<Torn>,
    state: State,
    metrics: Arc<Metrics>,
    fault: Fault,
    last_attempt: Option<Instant>,
    head: HeadFile,
    batch: batch::Batch,
}

impl Writer {
    /// The writer, with its first reservation made (or the log unhealthy)
    /// before any request is admitted.
    pub fn new(
        out: Out,
        chain: bool,
        linger: Duration,
        resumed: Resume,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        fault: Fault,
    ) -> Writer {
        let mut w = Writer {
            chain,
            linger,
            seq: resumed.seq,
            written_seq: resumed.seq,
            prev: resumed.prev,
            lost: None,
            recovered: resumed.torn,
            state: State::new(out.location(), health, metrics.clone()),
            out,
            metrics,
            fault,
            last_attempt: None,
            head: HeadFile::new(),
            batch: batch::Batch::default(),
        };
        w.keep_reserve();
        w
    }

    /// Write what comes until every sender is gone. `tick_queued` is set
    /// by the clock while a tick waits in the queue.
    pub fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Msg>, tick_queued: &AtomicBool) {
        self.settle(true);
        // Kept across batches: no allocation per batch once grown.
        let mut batch = Vec::new();
        // The batch's slots, given back once it is written (or lost).
        let mut slots = Vec::new();
        while let Some(msg) = rx.blocking_recv() {
            let mut tick = false;
            let mut next = Some(msg);
            let deadline = Instant::now() + self.linger;
            loop {
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Record(e, slot) => {
                            batch.push(e);
                            slots.push(slot);
                        }
                        Msg::Tick => {
                            tick_queued.store(false, Ordering::Release);
                            tick = true;
                        }
                    }
                    if batch.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                // Flush by size or by time: a batch that is not full waits
                // up to `linger` after its first record for more, so that
                // under load one write, one sync and one wake-up serve many
                // records (the senders do not wake a writer that sleeps).
                let left = deadline.saturating_duration_since(Instant::now());
                if batch.len() >= MAX_BATCH || batch.is_empty() || left.is_zero() {
                    break;
                }
                std::thread::sleep(left);
                next = rx.try_recv().ok();
                if next.is_none() {
                    break;
                }
            }
            if !batch.is_empty() {
                self.write_batch(&batch);
                batch.clear();
            }
            slots.clear();
            if tick {
                self.tick(false);
            }
        }
        self.tick(true);
    }

    /// The clock: retry while unhealthy, keep the head file fresh.
    fn tick(&mut self, last: bool) {
        if !self.state.healthy() || self.recovered.is_some() || self.lost.is_some() {
            self.settle(true);
        }
        if self.head.due(last) {
            match &self.out {
                Out::File(lf) => self.head.write(&lf.path, self.written_seq, &self.prev),
                Out::Stream { .. } => self.head.dirty = false,
            }
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

    /// Make the log writable with nothing pending (the recovered and gap
    /// records written). After a failed write, tries at most once a second
    /// unless `now`; a short reservation is retried when `now`. True when
    /// records can be written.
    pub(super) fn settle(&mut self, now: bool) -> bool {
        if !self.state.broken && self.recovered.is_none() && self.lost.is_none() {
            if now && self.state.short.is_some() {
                self.keep_reserve();
            }
            return true;
        }
        if self.state.broken && !now && self.last_attempt.is_some_and(|t| t.elapsed() < TICK) {
            return false;
        }
        self.last_attempt = Some(Instant::now());
        if self.state.broken {
            if let Err(e) = self.probe() {
                tracing::debug!(error = %e, "audit log still not writable");
                return false;
            }
        }
        if let Some(t) = self.recovered.clone() {
            if !self.write_note(|seq, prev| recovered_line(&t, seq, prev)) {
                return false;
            }
            self.recovered = None;
        }
        if let Some(lost) = self.lost.take() {
            let (from, to) = (self.written_seq + 1, self.seq);
            if !self.write_note(|seq, prev| lost.line(from, to, seq, prev)) {
                self.lost = Some(lost);
                return false;
            }
            self.state.gap_recorded();
            tracing::warn!(
                lost = to - from + 1,
                lost_from = from,
                lost_to = to,
                "audit log: a gap record names the records that could not be written"
            );
        }
        self.state.repaired();
        true
    }

    /// Write a `recovered` or `gap` record alone. Its seq is only taken when
    /// it was written: a failed attempt is cut off and retried with the same.
    pub(super) fn write_note(&mut self, line: impl FnOnce(u64, Option<&str>) -> serde_json::Result<Vec<u8>>) -> bool {
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
                self.head.dirty = true;
                true
            }
            Err((_, e)) => {
                // (stdout may have taken part of it: the next line starts anew.)
                self.fail(&e);
                false
            }
        }
    }

    /// A write failed: turn unhealthy (requests are refused from now on).
    pub(super) fn fail(&mut self, e: &io::Error) {
        self.state.fail(e);
    }

    /// The reservation could not be made: unhealthy at once, while the
    /// records of requests already admitted go on into what is reserved.
    pub(super) fn short(&mut self, e: &io::Error) {
        if let Out::File(lf) = &self.out {
            self.state.short(e, lf.reserve.want());
        }
    }

    /// `n` more records (already numbered) are lost.
    pub(super) fn note_lost(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        if self.lost.is_none() {
            let reason = self
                .state
                .failure
                .clone()
                .unwrap_or_else(|| "the audit log was not writable".into());
            self.lost = Some(Lost::now(reason));
        }
        self.state.lost(self.written_seq + 1, self.seq - self.written_seq, n);
    }
}
