//! The audit files at rest: owner-only files and directories whatever the
//! umask, and the start-up check of the log's last line (a torn line is
//! moved aside, anything else that is not an audit record stops the start).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{at, rotated, sha256_hex, GENESIS, MAX_LINE};

/// Mode of every file the audit log creates (log, head, rotated, torn).
pub(super) const FILE_MODE: u32 = 0o600;
/// Mode of directories it creates.
pub(super) const DIR_MODE: u32 = 0o700;

/// Create `dir` and its missing parents, each 0700 whatever the umask.
/// Directories that exist are left as they are.
pub(super) fn create_private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a directory", dir.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(dir, e)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        // The umask may have taken bits away; chmod is not subject to it.
        Ok(()) => std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(|e| at(dir, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(at(dir, e)),
    }
}

/// Open the log for appending; a new file is created 0600. An existing
/// file keeps its mode.
pub(super) fn open_log(path: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(Permissions::from_mode(FILE_MODE))
                .map_err(|e| at(path, e))?;
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path).map_err(|e| at(path, e))
        }
        Err(e) => Err(at(path, e)),
    }
}

/// Create a new file 0600 (whatever the umask); fails if it exists.
pub(super) fn create_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Best effort: make a rename or a new file in `dir` durable.
pub(super) fn sync_dir(file_in_dir: &Path) {
    let dir = match file_in_dir.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A torn last line that was moved aside at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Torn {
    /// The file it was moved to (a name beside the log).
    pub file_name: String,
    pub bytes: u64,
    pub sha256: String,
    pub reason: &'static str,
}

/// Where the chain continues.
#[derive(Debug)]
pub(super) struct Resume {
    /// seq and hash of the last record on disk.
    pub seq: u64,
    pub prev: String,
    /// A torn line moved aside, to be recorded first.
    pub torn: Option<Torn>,
}

impl Resume {
    pub fn genesis() -> Resume {
        Resume {
            seq: 0,
            prev: GENESIS.to_string(),
            torn: None,
        }
    }
}

/// Continue the chain: seq and hash of the last line of the current file,
/// or of the newest rotated file if the current one is empty or missing.
/// A torn last line is moved aside first; a file whose end is not an audit
/// record at all is an error (nothing is appended to it).
pub(super) fn resume(path: &Path) -> io::Result<Resume> {
    let mut torn = None;
    for p in [path.to_path_buf(), rotated(path, 1)] {
        let tail = inspect_tail(&p)?;
        if let Some(t) = tail.torn {
            if torn.is_some() {
                return Err(not_a_log(&p, "its last line is torn too (after the current file's)"));
            }
            torn = Some(move_aside(&p, tail.keep_len, &t.bytes, t.reason)?);
        }
        if let Some((seq, line)) = tail.last {
            return Ok(Resume {
                seq,
                prev: sha256_hex(&line),
                torn,
            });
        }
    }
    Ok(Resume {
        torn,
        ..Resume::genesis()
    })
}

fn not_a_log(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: not a signgate audit log, or damaged beyond a torn last line: {why}; \
             move it away (and check it with `signgate audit verify`) to start a new log",
            path.display()
        ),
    )
}

struct TornPart {
    bytes: Vec<u8>,
    reason: &'static str,
}

struct Tail {
    /// The last audit record (seq, line without its newline), if any.
    last: Option<(u64, Vec<u8>)>,
    /// A torn end, and the length the file keeps without it.
    torn: Option<TornPart>,
    keep_len: u64,
}

/// The seq of an audit record line; `Err` if the line is JSON but no record,
/// `Ok(None)` if it is not JSON at all.
fn record_seq(line: &[u8]) -> Result<Option<u64>, ()> {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(v) => v.get("seq").and_then(serde_json::Value::as_u64).map(Some).ok_or(()),
        Err(_) => Ok(None),
    }
}

/// Look at the end of a log file (reading at most about 2 MiB).
fn inspect_tail(path: &Path) -> io::Result<Tail> {
    let empty = Tail {
        last: None,
        torn: None,
        keep_len: 0,
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(empty),
        Err(e) => return Err(at(path, e)),
    };
    let len = f.metadata().map_err(|e| at(path, e))?.len();
    if len == 0 {
        return Ok(empty);
    }
    let window = len.min(2 * MAX_LINE as u64 + 2);
    let base = len - window;
    f.seek(SeekFrom::Start(base)).map_err(|e| at(path, e))?;
    let mut buf = Vec::with_capacity(window as usize);
    Read::by_ref(&mut f)
        .take(window)
        .read_to_end(&mut buf)
        .map_err(|e| at(path, e))?;
    // The bytes after the last newline: a line the writer did not finish.
    let end_of_lines = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if end_of_lines == 0 && base > 0 {
        return Err(not_a_log(path, "its last 2 MiB hold no line break"));
    }
    let mut torn = None;
    let mut keep = end_of_lines;
    if end_of_lines < buf.len() {
        if buf.len() - end_of_lines > MAX_LINE {
            return Err(not_a_log(path, "its unfinished last line is longer than 1 MiB"));
        }
        torn = Some(TornPart {
            bytes: buf[end_of_lines..].to_vec(),
            reason: "the last line had no newline",
        });
    }
    // The last complete line: `buf[start..keep - 1]`.
    let line_start = |keep: usize| -> Option<usize> {
        if keep == 0 {
            return None;
        }
        match buf[..keep - 1].iter().rposition(|&b| b == b'\n') {
            Some(i) => Some(i + 1),
            None if base == 0 => Some(0),
            None => Some(usize::MAX), // longer than the window: checked below
        }
    };
    let mut last = None;
    if let Some(start) = line_start(keep) {
        if start == usize::MAX {
            return Err(not_a_log(path, "its last line is longer than 1 MiB"));
        }
        let line = &buf[start..keep - 1];
        if line.len() > MAX_LINE {
            return Err(not_a_log(path, "its last line is longer than 1 MiB"));
        }
        match record_seq(line) {
            Ok(Some(seq)) => last = Some((seq, line.to_vec())),
            Err(()) => {
                return Err(not_a_log(
                    path,
                    "its last line is JSON but not an audit record (no seq)",
                ))
            }
            Ok(None) if torn.is_some() => {
                return Err(not_a_log(path, "the line before its torn end is not JSON either"))
            }
            Ok(None) => {
                // A complete last line that is not JSON (a torn write the
                // file system completed with garbage, e.g. NUL bytes).
                torn = Some(TornPart {
                    bytes: buf[start..keep].to_vec(),
                    reason: "the last line was not JSON",
                });
                keep = start;
                if let Some(s) = line_start(keep) {
                    if s == usize::MAX {
                        return Err(not_a_log(path, "a line before its end is longer than 1 MiB"));
                    }
                    let line = &buf[s..keep - 1];
                    match record_seq(line) {
                        Ok(Some(seq)) => last = Some((seq, line.to_vec())),
                        _ => return Err(not_a_log(path, "the line before its torn end is not an audit record")),
                    }
                }
            }
        }
    }
    Ok(Tail {
        last,
        torn,
        keep_len: base + keep as u64,
    })
}

/// Copy a torn end to `<path>.torn-<unix time>` (0600, synced), then cut
/// the log back to `keep_len`.
fn move_aside(path: &Path, keep_len: u64, bytes: &[u8], reason: &'static str) -> io::Result<Torn> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut n = 0u32;
    let (torn_path, mut f) = loop {
        let mut s = path.as_os_str().to_owned();
        s.push(if n == 0 {
            format!(".torn-{now}")
        } else {
            format!(".torn-{now}-{n}")
        });
        let p = PathBuf::from(s);
        match create_private(&p) {
            Ok(f) => break (p, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(at(&p, e)),
        }
    };
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| at(&torn_path, e))?;
    sync_dir(&torn_path);
    let log = OpenOptions::new().write(true).open(path).map_err(|e| at(path, e))?;
    log.set_len(keep_len)
        .and_then(|()| log.sync_all())
        .map_err(|e| at(path, e))?;
    Ok(Torn {
        file_name: torn_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        reason,
    })
}
