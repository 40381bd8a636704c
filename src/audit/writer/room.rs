//! Room to write: the probe before the log turns healthy again, the
//! reservation kept after every write, and rotation (the new file gets its
//! reservation before it is used, the old one's is given back).

use std::io::{self, Write};
use std::path::PathBuf;

use super::super::files;
use super::super::out::Out;
use super::Writer;

/// Without a reservation, before it turns healthy again the writer checks
/// that this much can be written beside the log, so that a disk with a few
/// bytes free does not flip between healthy and failing on every record.
const PROBE_BYTES: usize = 64 * 1024;

impl Writer {
    /// Whether there is room to write again: the log is open, cut back to
    /// its last synced line, and its reservation made (without one:
    /// `PROBE_BYTES` fit beside it).
    pub(super) fn probe(&mut self) -> io::Result<()> {
        let Out::File(lf) = &mut self.out else { return Ok(()) };
        if lf.file.is_none() {
            lf.reopen()?;
        }
        lf.cut_tail()?;
        if self.fault.disk_full() {
            return Err(io::Error::from_raw_os_error(28));
        }
        if lf.top_up(&self.fault)? {
            self.state.reserved();
            return Ok(());
        }
        let mut s = lf.path.as_os_str().to_owned();
        s.push(".probe");
        let p = PathBuf::from(s);
        let _ = std::fs::remove_file(&p);
        let res = files::create_private(&p).and_then(|mut f| f.write_all(&vec![0u8; PROBE_BYTES]));
        let _ = std::fs::remove_file(&p);
        res
    }

    /// After a write, and every second while it is short: keep the
    /// reservation past the end of the log (doing first a rotation that was
    /// put off for want of room). Turns the log unhealthy when it cannot,
    /// healthy again when it can (unless a write failed).
    pub(super) fn keep_reserve(&mut self) {
        if self.state.broken {
            return; // `probe` makes it before the log turns healthy.
        }
        if matches!(&self.out, Out::File(lf) if lf.rotation_wanted) {
            self.rotate();
            if matches!(&self.out, Out::File(lf) if lf.rotation_wanted) || self.state.broken {
                return;
            }
        }
        let Out::File(lf) = &mut self.out else { return };
        match lf.top_up(&self.fault) {
            Ok(_) => self.state.reserved(),
            Err(e) => self.short(&e),
        }
    }

    /// Rotate before a line that would overflow the file. False if the log
    /// could not be reopened (then unhealthy).
    pub(super) fn make_room(&mut self, incoming: u64) -> bool {
        match &self.out {
            Out::File(lf) if lf.would_overflow(0, incoming) => self.rotate(),
            _ => true,
        }
    }

    /// Start a new file. With a reservation, the new file gets its own
    /// before the rotation is made, and the old one's is given back after;
    /// without room for it the rotation is put off (the log turns
    /// unhealthy, lines go on into the current file and its reservation).
    /// False if the log could not be reopened (then unhealthy).
    pub(super) fn rotate(&mut self) -> bool {
        let Out::File(lf) = &mut self.out else { return true };
        let next = match lf.prepare_next(&self.fault) {
            Ok(next) => next,
            Err(e) => {
                lf.rotation_wanted = true;
                self.short(&e);
                return true;
            }
        };
        if let Err(e) = lf.shift() {
            if next.is_some() {
                lf.discard_next();
            }
            if !lf.rotation_failing {
                tracing::error!(error = %e, log = %lf.path.display(), "audit log rotation failed; writing on in the current file");
            }
            lf.rotation_failing = true;
            return true;
        }
        lf.rotation_failing = false;
        lf.rotation_wanted = false;
        let (old, old_len) = (lf.file.take(), lf.good_len);
        let installed = next.is_some_and(|n| lf.install_next(n));
        if let Some(old) = old {
            lf.release(&old, old_len);
        }
        files::sync_dir(&lf.path);
        if installed {
            return true;
        }
        if let Err(e) = lf.reopen() {
            self.fail(&e);
            return false;
        }
        if let Err(e) = lf.top_up(&self.fault) {
            self.short(&e);
        }
        true
    }
}
