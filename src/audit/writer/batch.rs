//! Writing records: a batch serialized and chained, written in one go and
//! synced; what a failed write leaves is counted lost.

use std::io;

use super::super::notes::Line;
use super::super::out::{write_counted, Out};
use super::super::{Entry, HexHash};
use super::Writer;

/// Lines serialized for one write. Kept by the writer and reused, so a
/// batch allocates nothing once the buffers have grown to its size.
#[derive(Default)]
pub(super) struct Batch {
    buf: Vec<u8>,
    /// seq, hash and end offset in `buf` of each line.
    lines: Vec<(u64, HexHash, usize)>,
    /// One line being serialized.
    line: Vec<u8>,
}

impl Writer {
    pub(super) fn write_batch(&mut self, entries: &[Entry]) {
        if !self.settle(false) {
            self.seq += entries.len() as u64;
            self.note_lost(entries.len() as u64);
            return;
        }
        let mut b = std::mem::take(&mut self.batch);
        self.stage(&mut b, entries);
        b.buf.clear();
        b.lines.clear();
        self.batch = b;
    }

    fn stage(&mut self, b: &mut Batch, entries: &[Entry]) {
        let mut staged_prev = HexHash::from_str(&self.prev);
        for (i, e) in entries.iter().enumerate() {
            let seq = self.seq + 1;
            let line = Line {
                seq,
                entry: e,
                prev: self.chain.then_some(staged_prev.as_str()),
            };
            b.line.clear();
            if let Err(err) = line.write_json(&mut b.line) {
                // Not expected for an `Entry`; handled like a lost write.
                tracing::error!(error = %err, "audit record could not be serialized");
                if !self.commit_batch(b) {
                    self.seq += (entries.len() - i) as u64;
                    self.note_lost((entries.len() - i) as u64);
                    return;
                }
                self.state
                    .failure
                    .get_or_insert_with(|| format!("serializing a record: {err}"));
                self.seq = seq;
                self.note_lost(1);
                if !self.settle(true) {
                    self.seq += (entries.len() - i - 1) as u64;
                    self.note_lost((entries.len() - i - 1) as u64);
                    return;
                }
                staged_prev = HexHash::from_str(&self.prev);
                continue;
            }
            let hash = HexHash::of(&b.line);
            b.line.push(b'\n');
            // (A rotation put off for want of room is retried after the
            // batch: meanwhile lines go on into the current file.)
            let overflow = matches!(&self.out, Out::File(lf)
                if !lf.rotation_wanted && lf.would_overflow(b.buf.len() as u64, b.line.len() as u64));
            if overflow && (!self.commit_batch(b) || !self.rotate()) {
                self.seq += (entries.len() - i) as u64;
                self.note_lost((entries.len() - i) as u64);
                return;
            }
            b.buf.extend_from_slice(&b.line);
            b.lines.push((seq, hash, b.buf.len()));
            self.seq = seq;
            staged_prev = hash;
        }
        if self.commit_batch(b) {
            self.keep_reserve();
        }
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
                self.prev.clear();
                self.prev.push_str(hash.as_str());
                written += 1;
            }
        }
        b.buf.clear();
        if written > 0 {
            self.metrics
                .audit_records
                .with_label_values(&["written"])
                .inc_by(written);
            self.head.dirty = true;
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
    pub(super) fn commit(&mut self, buf: &[u8]) -> Result<(), (usize, io::Error)> {
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
}
