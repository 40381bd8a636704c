//! Test-only write faults: the unit tests drive the failure paths without a
//! full disk. Always empty in the gateway.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub(super) struct Fault(Option<Arc<AtomicU8>>);

pub(super) const FAULT_NONE: u8 = 0;
/// Every write fails with ENOSPC (and so does the reservation: the disk is full).
pub(super) const FAULT_WRITE: u8 = 1;
/// A write takes half the bytes, then fails with ENOSPC (the reservation too).
pub(super) const FAULT_SHORT: u8 = 2;
/// Writes work, fdatasync fails with EIO.
pub(super) const FAULT_SYNC: u8 = 3;
/// Writes work, the reservation cannot be topped up (ENOSPC): a full file
/// system with the reserved space still there.
pub(super) const FAULT_RESERVE: u8 = 4;
/// `fallocate` is not supported (EOPNOTSUPP); writes work.
pub(super) const FAULT_NO_FALLOCATE: u8 = 5;

const ENOSPC: i32 = 28;
const EIO: i32 = 5;
const EOPNOTSUPP: i32 = 95;

impl Fault {
    pub fn none() -> Fault {
        Fault(None)
    }

    #[cfg(test)]
    pub fn switch() -> (Fault, Arc<AtomicU8>) {
        let s = Arc::new(AtomicU8::new(FAULT_NONE));
        (Fault(Some(s.clone())), s)
    }

    pub fn mode(&self) -> u8 {
        self.0.as_ref().map_or(FAULT_NONE, |s| s.load(Ordering::SeqCst))
    }

    /// The error a write gets before any byte is written.
    pub fn write(&self) -> Option<io::Error> {
        (self.mode() == FAULT_WRITE).then(|| io::Error::from_raw_os_error(ENOSPC))
    }

    /// Whether a write takes half its bytes, then fails with ENOSPC.
    pub fn short(&self) -> bool {
        self.mode() == FAULT_SHORT
    }

    /// The error fdatasync gets.
    pub fn sync(&self) -> io::Result<()> {
        if self.mode() == FAULT_SYNC {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(())
    }

    /// Whether room beside the log is refused (the disk is full).
    pub fn disk_full(&self) -> bool {
        matches!(self.mode(), FAULT_WRITE | FAULT_SHORT)
    }

    /// The error `fallocate` gets.
    pub fn fallocate(&self) -> Option<io::Error> {
        match self.mode() {
            FAULT_WRITE | FAULT_SHORT | FAULT_RESERVE => Some(io::Error::from_raw_os_error(ENOSPC)),
            FAULT_NO_FALLOCATE => Some(io::Error::from_raw_os_error(EOPNOTSUPP)),
            _ => None,
        }
    }
}
