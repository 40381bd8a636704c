//! Where lines go: a stream (stdout, a FIFO, `/dev/null`) or the log file,
//! appended to and synced, cut back after a failed write, rotated, with its
//! reservation ([`Reserve`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::fault::Fault;
use super::files;
use super::reserve::Reserve;
use super::{at, rotated};

/// `write_all` that says how many bytes went out before an error.
pub(super) fn write_counted(f: &mut File, buf: &[u8], fault: &Fault) -> (usize, io::Result<()>) {
    if let Some(e) = fault.write() {
        return (0, Err(e));
    }
    if fault.short() && buf.len() > 1 {
        let half = buf.len() / 2;
        if let Err(e) = f.write_all(&buf[..half]) {
            return (0, Err(e));
        }
        return (half, Err(io::Error::from_raw_os_error(28))); // ENOSPC
    }
    let mut done = 0;
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
    /// rotation, no head file, no reservation. `partial`: a failed write
    /// left part of a line; the next write starts a new line first.
    Stream {
        f: File,
        partial: bool,
        name: String,
    },
    File(LogFile),
}

pub(super) struct LogFile {
    pub path: PathBuf,
    /// `None` after rotation could not open a new file (retried).
    pub file: Option<File>,
    /// The file's length up to the end of the last synced line.
    pub good_len: u64,
    /// The file may hold bytes past `good_len` (a failed write or sync).
    dirty_tail: bool,
    max_bytes: u64,
    max_files: usize,
    /// Renaming the rotated files failed: writing on in the current file.
    pub rotation_failing: bool,
    /// A rotation was put off for want of room for the new file's
    /// reservation: writing on in the current file (into its reservation).
    pub rotation_wanted: bool,
    pub reserve: Reserve,
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
    pub fn stream(path: &Path) -> io::Result<Out> {
        Ok(Out::Stream {
            f: std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| at(path, e))?,
            partial: false,
            name: path.display().to_string(),
        })
    }

    pub fn file(path: &Path, max_bytes: u64, max_files: usize, reserve_bytes: u64) -> io::Result<Out> {
        let f = files::open_log(path)?;
        // A rotation interrupted by a crash may have left its prepared file
        // (never written to) holding a reservation.
        let _ = std::fs::remove_file(next_path(path));
        let len = f.metadata().map_err(|e| at(path, e))?.len();
        let mut reserve = Reserve::new(reserve_bytes);
        reserve.forget(len);
        Ok(Out::File(LogFile {
            path: path.to_path_buf(),
            file: Some(f),
            good_len: len,
            dirty_tail: false,
            max_bytes,
            max_files,
            rotation_failing: false,
            rotation_wanted: false,
            reserve,
        }))
    }

    pub fn location(&self) -> String {
        match self {
            Out::Stream { name, .. } => name.clone(),
            Out::File(lf) => lf.path.display().to_string(),
        }
    }
}

impl LogFile {
    pub fn reopen(&mut self) -> io::Result<()> {
        let f = files::open_log(&self.path)?;
        self.good_len = f.metadata().map_err(|e| at(&self.path, e))?.len();
        self.dirty_tail = false;
        self.reserve.forget(self.good_len);
        self.file = Some(f);
        Ok(())
    }

    /// Cut what a failed write left past the last synced line (never extend
    /// a file that shrank behind our back). The cut also frees the space
    /// reserved past the end: it is topped up again before the log turns
    /// healthy.
    pub fn cut_tail(&mut self) -> io::Result<()> {
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
        self.reserve.forget(self.good_len);
        self.dirty_tail = false;
        Ok(())
    }

    /// Append `buf` and make it durable, or leave the file as it was.
    pub fn append(&mut self, buf: &[u8], fault: &Fault) -> io::Result<()> {
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

    /// Keep the reservation past the end of the file. `Ok(false)`: none is
    /// kept (off, unsupported, or the file is not open).
    pub fn top_up(&mut self, fault: &Fault) -> io::Result<bool> {
        let Some(f) = &self.file else { return Ok(false) };
        self.reserve
            .top_up(f, self.good_len, fault)
            .map_err(|e| at(&self.path, e))
    }

    /// Whether `incoming` bytes after `staged` ones would take a non-empty
    /// file past `max_bytes`.
    pub fn would_overflow(&self, staged: u64, incoming: u64) -> bool {
        let size = self.good_len + staged;
        size > 0 && size + incoming > self.max_bytes
    }

    /// The next file, with its reservation made, under a temporary name
    /// beside the log (`path.next`): `Ok(None)` when no reservation is kept
    /// (the new file is created in place after the shift, as without one).
    /// `Err`: no room for the new file's reservation.
    pub fn prepare_next(&mut self, fault: &Fault) -> io::Result<Option<(File, Reserve)>> {
        if !self.reserve.active() {
            return Ok(None);
        }
        let next = self.next_path();
        let _ = std::fs::remove_file(&next);
        let f = files::create_private(&next).map_err(|e| at(&next, e))?;
        let mut reserve = Reserve::new(self.reserve.want());
        match reserve.top_up(&f, 0, fault) {
            Ok(true) => Ok(Some((f, reserve))),
            Ok(false) => {
                // Unsupported after all: no reservation from now on.
                let _ = std::fs::remove_file(&next);
                self.reserve = reserve;
                Ok(None)
            }
            Err(e) => {
                drop(f);
                let _ = std::fs::remove_file(&next);
                Err(at(&next, e))
            }
        }
    }

    /// Drop a prepared next file (the shift failed).
    pub fn discard_next(&self) {
        let _ = std::fs::remove_file(self.next_path());
    }

    /// Put the prepared next file in place of the log (after the shift):
    /// false if the rename failed (then the log is created in place).
    pub fn install_next(&mut self, next: (File, Reserve)) -> bool {
        if let Err(e) = std::fs::rename(self.next_path(), &self.path) {
            tracing::warn!(error = %e, log = %self.path.display(), "audit log rotation: the prepared file could not be put in place; creating the log anew");
            self.discard_next();
            return false;
        }
        let (f, reserve) = next;
        self.file = Some(f);
        self.good_len = 0;
        self.dirty_tail = false;
        self.reserve = reserve;
        true
    }

    /// Give back what is reserved past the end of a rotated file: cut it to
    /// its last synced line, `old_len` (`ftruncate` frees the blocks
    /// allocated past the new end, even at the same size).
    pub fn release(&self, old: &File, old_len: u64) {
        if !self.reserve.active() {
            return;
        }
        let res = old.metadata().and_then(|m| old.set_len(m.len().min(old_len)));
        if let Err(e) = res {
            tracing::warn!(error = %e, log = %self.path.display(), "audit log rotation: the space reserved past the end of the rotated file could not be given back");
        }
    }

    fn next_path(&self) -> PathBuf {
        next_path(&self.path)
    }

    /// Shift `path.N` to `path.N+1` and the log to `path.1`.
    pub fn shift(&self) -> io::Result<()> {
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

/// Where the next file is prepared during a rotation.
fn next_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}
