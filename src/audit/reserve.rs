//! The space kept allocated past the end of the log, so that a full file
//! system is noticed while the records of every request already admitted
//! still fit (docs/operations.md#the-reservation).
//!
//! After every write the writer keeps at least `audit.reserve_bytes`
//! allocated past the end of the file with `fallocate(FALLOC_FL_KEEP_SIZE)`:
//! the file's size does not change, and appends land in blocks that are
//! already allocated, so they do not fail for want of space. When that
//! cannot be done (ENOSPC, EDQUOT, or RLIMIT_FSIZE below the reserved end)
//! the log refuses new requests at once, while the records of the requests
//! already admitted (at most `audit.queue`) are written into what is
//! reserved.
//!
//! A file system without `fallocate` (EOPNOTSUPP) gets no reservation: the
//! log works as with `reserve_bytes = 0`, and says so once.

use std::fs::File;
use std::io;

use rustix::fs::{fallocate, FallocateFlags};

use super::fault::Fault;

const ENOSYS: i32 = 38;
const EOPNOTSUPP: i32 = 95;

/// What a top-up has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// At least `want` bytes past the end are allocated already.
    Enough,
    /// Allocate `from..to` (what lies before `from` is allocated already).
    Allocate { from: u64, to: u64 },
    /// RLIMIT_FSIZE ends before `len + want`: writes past it would fail with
    /// EFBIG whatever is allocated.
    OverLimit { limit: u64 },
}

/// The bookkeeping of one log file's reservation.
#[derive(Debug)]
pub(super) struct Reserve {
    /// Bytes to keep allocated past the end; 0: no reservation.
    want: u64,
    /// The offset up to which space is allocated, as far as we know.
    end: u64,
    /// The file system refused `fallocate` as unsupported.
    unsupported: bool,
}

impl Reserve {
    pub fn new(want: u64) -> Reserve {
        Reserve {
            want,
            end: 0,
            unsupported: false,
        }
    }

    /// Whether space is kept ahead (configured and supported).
    pub fn active(&self) -> bool {
        self.want > 0 && !self.unsupported
    }

    pub fn want(&self) -> u64 {
        self.want
    }

    /// Nothing is known to be allocated past `len`: the file is new, was
    /// reopened, or was cut back to `len` (`ftruncate` frees the blocks
    /// allocated past the new end, even to the same size).
    pub fn forget(&mut self, len: u64) {
        self.end = len;
    }

    /// What to allocate so that `want` bytes past `len` are allocated,
    /// within `limit` (RLIMIT_FSIZE; `None`: unlimited).
    pub fn plan(&self, len: u64, limit: Option<u64>) -> Plan {
        let need = len.saturating_add(self.want);
        if let Some(limit) = limit.filter(|l| need > *l) {
            return Plan::OverLimit { limit };
        }
        if self.end >= need {
            return Plan::Enough;
        }
        Plan::Allocate {
            from: self.end.max(len),
            to: need,
        }
    }

    /// Keep `want` bytes allocated past `len` in `f`. `Ok(false)`: no
    /// reservation is kept (none configured, or unsupported: said once).
    /// `Err`: there is no room for it.
    pub fn top_up(&mut self, f: &File, len: u64, fault: &Fault) -> io::Result<bool> {
        if !self.active() {
            return Ok(false);
        }
        let (from, to) = match self.plan(len, fsize_limit()) {
            Plan::Enough => return Ok(true),
            Plan::OverLimit { limit } => {
                return Err(io::Error::other(format!(
                    "File too large: RLIMIT_FSIZE ({limit} bytes) leaves no room for {} bytes past the end of the log ({len} bytes)",
                    self.want
                )))
            }
            Plan::Allocate { from, to } => (from, to),
        };
        match allocate(f, from, to, fault) {
            Ok(()) => {
                self.end = to;
                Ok(true)
            }
            Err(e) if is_unsupported(&e) => {
                self.unsupported = true;
                tracing::warn!(
                    error = %e,
                    "audit log: the file system does not support fallocate, so no space is reserved ahead of the log \
                     (audit.reserve_bytes); when it fills up, the records of requests already on their way are lost \
                     and named by a gap record"
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// `fallocate(FALLOC_FL_KEEP_SIZE)` of `from..to`.
fn allocate(f: &File, from: u64, to: u64, fault: &Fault) -> io::Result<()> {
    if let Some(e) = fault.fallocate() {
        return Err(e);
    }
    loop {
        match fallocate(f, FallocateFlags::KEEP_SIZE, from, to - from) {
            Err(rustix::io::Errno::INTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The soft RLIMIT_FSIZE: writes past it fail with EFBIG.
fn fsize_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EOPNOTSUPP | ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::super::fault::{FAULT_NONE, FAULT_NO_FALLOCATE, FAULT_RESERVE};
    use super::*;
    use std::sync::atomic::Ordering;

    const K: u64 = 1024;

    #[test]
    fn a_new_file_gets_the_whole_reservation() {
        let r = Reserve::new(64 * K);
        assert!(r.active());
        assert_eq!(r.plan(0, None), Plan::Allocate { from: 0, to: 64 * K });
    }

    #[test]
    fn after_a_write_only_what_it_used_is_allocated_again() {
        let mut r = Reserve::new(64 * K);
        r.end = 64 * K; // after the first top-up
        assert_eq!(r.plan(0, None), Plan::Enough);
        // 450 bytes written: they took reserved space; as much again is
        // allocated past the old end.
        assert_eq!(
            r.plan(450, None),
            Plan::Allocate {
                from: 64 * K,
                to: 64 * K + 450
            }
        );
        // (As if a top-up had failed for a while: the whole shortfall.)
        assert_eq!(
            r.plan(10 * K, None),
            Plan::Allocate {
                from: 64 * K,
                to: 74 * K
            }
        );
        // Written past what was reserved (only a failed top-up allows it).
        assert_eq!(
            r.plan(100 * K, None),
            Plan::Allocate {
                from: 100 * K,
                to: 164 * K
            }
        );
    }

    #[test]
    fn a_cut_forgets_what_was_allocated() {
        let mut r = Reserve::new(64 * K);
        r.end = 200 * K;
        assert_eq!(r.plan(100 * K, None), Plan::Enough);
        r.forget(100 * K);
        assert_eq!(
            r.plan(100 * K, None),
            Plan::Allocate {
                from: 100 * K,
                to: 164 * K
            }
        );
    }

    #[test]
    fn a_reservation_past_rlimit_fsize_is_refused() {
        let r = Reserve::new(64 * K);
        assert_eq!(r.plan(0, Some(64 * K)), Plan::Allocate { from: 0, to: 64 * K });
        assert_eq!(r.plan(1, Some(64 * K)), Plan::OverLimit { limit: 64 * K });
        // Even when the space is allocated already: writes past the limit
        // fail with EFBIG whatever is allocated.
        let mut r = Reserve::new(64 * K);
        r.end = 1 << 30;
        assert_eq!(r.plan(10 * K, Some(70 * K)), Plan::OverLimit { limit: 70 * K });
        assert_eq!(r.plan(6 * K, Some(70 * K)), Plan::Enough);
    }

    #[test]
    fn no_reservation_when_off_or_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("a")).unwrap();
        let mut off = Reserve::new(0);
        assert!(!off.active());
        assert!(!off.top_up(&f, 0, &Fault::none()).unwrap());

        let (fault, switch) = Fault::switch();
        switch.store(FAULT_NO_FALLOCATE, Ordering::SeqCst);
        let mut r = Reserve::new(64 * K);
        assert!(!r.top_up(&f, 0, &fault).unwrap());
        assert!(!r.active());
        // And it stays off (said once), even when the fault is gone.
        switch.store(FAULT_NONE, Ordering::SeqCst);
        assert!(!r.top_up(&f, 0, &fault).unwrap());
    }

    #[test]
    fn a_real_file_gets_its_reservation_past_the_end_and_a_cut_gives_it_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("a")).unwrap();
        let mut r = Reserve::new(256 * K);
        match r.top_up(&f, 0, &Fault::none()) {
            Ok(true) => {}
            other => {
                eprintln!("no fallocate here ({other:?}); skipped");
                return;
            }
        }
        // Allocated past the end; the size is unchanged.
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 0);
        assert!(m.blocks() * 512 >= 256 * K, "{} blocks", m.blocks());
        assert_eq!(r.end, 256 * K);
        assert!(r.top_up(&f, 0, &Fault::none()).unwrap());
        // Cut to its size: the blocks past the end are given back.
        f.set_len(0).unwrap();
        r.forget(0);
        assert!(f.metadata().unwrap().blocks() * 512 < 256 * K);
        // No room: an error, and nothing is taken as allocated.
        let (fault, switch) = Fault::switch();
        switch.store(FAULT_RESERVE, Ordering::SeqCst);
        let e = r.top_up(&f, 0, &fault).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
        assert_eq!(r.end, 0);
    }
}
