//! `signgate audit verify`: check the hash chain over a set of files and say
//! everything that is not a plain, complete chain (gaps, recovered torn
//! lines, an end the head file does not pin, an unfinished last line).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{at, head_path, sha256_hex, Head, GENESIS, MAX_LINE};

/// Result of `signgate audit verify`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The chain holds; the report says what else there is to know.
    Ok(Report),
    /// The chain is broken at this line (edited, removed, reordered, not a
    /// record).
    Broken { file: PathBuf, line: u64, why: String },
}

/// What an unbroken chain holds besides its records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Chained lines checked (request records, gap and recovered records).
    pub records: u64,
    pub gaps: Vec<Gap>,
    pub recoveries: Vec<Recovery>,
    pub head: HeadCheck,
    /// The last file ends in a line without a newline.
    pub unterminated: Option<Unterminated>,
}

impl Report {
    /// Records named lost by gap records.
    pub fn lost(&self) -> u64 {
        self.gaps.iter().map(|g| g.lost_to - g.lost_from + 1).sum()
    }

    /// A complete chain with nothing to report.
    #[cfg(test)]
    pub fn is_clean(&self) -> bool {
        self.gaps.is_empty()
            && self.recoveries.is_empty()
            && self.unterminated.is_none()
            && matches!(self.head, HeadCheck::Pinned | HeadCheck::Behind { .. })
    }
}

/// A `gap` record: records the writer could not write.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    pub file: PathBuf,
    pub line: u64,
    pub lost_from: u64,
    pub lost_to: u64,
    pub reason: String,
}

/// A `recovered` record: a torn last line moved aside at start.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovery {
    pub file: PathBuf,
    pub line: u64,
    pub torn_file: String,
    pub torn_bytes: u64,
    pub torn_sha256: String,
    pub torn_found: TornFile,
}

/// The moved-aside bytes, looked up beside the log.
#[derive(Debug, PartialEq, Eq)]
pub enum TornFile {
    Matches,
    Differs,
    Missing,
}

/// What the `.head` file says about the end of the chain.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum HeadCheck {
    /// The last record is the one the writer recorded.
    Pinned,
    /// The head pins an earlier record (it is refreshed about once a second:
    /// a running writer, or a crash); the `after` records past it are chained
    /// but their end is not pinned.
    Behind { head_seq: u64, after: u64 },
    /// No head file: the end of the log cannot be checked.
    #[default]
    Missing,
    /// A head file that cannot be read.
    Unreadable(String),
}

/// A last line without its newline: a write in progress, or torn by a crash.
#[derive(Debug, PartialEq, Eq)]
pub struct Unterminated {
    pub file: PathBuf,
    pub line: u64,
    pub bytes: u64,
}

/// Read the next line (without its newline) into `buf`. `Ok(false)` at the
/// end; `terminated` says whether it ended in a newline. Lines longer than
/// `MAX_LINE` are cut there (and reported by the caller).
fn next_line(r: &mut BufReader<File>, buf: &mut Vec<u8>, terminated: &mut bool) -> io::Result<bool> {
    buf.clear();
    let n = r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    *terminated = buf.last() == Some(&b'\n');
    if *terminated {
        buf.pop();
    }
    Ok(true)
}

fn u64_field(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

/// Check the hash chain over `files` (oldest first; rotated files included).
/// Unless `continuation`, the first record must be seq 1 with the genesis
/// prev (or a gap from seq 1).
pub fn verify(files: &[PathBuf], continuation: bool) -> io::Result<Verdict> {
    let mut report = Report::default();
    let mut prev_hash: Option<String> = None;
    let mut prev_seq: Option<u64> = None;
    let mut first_seq: Option<u64> = None;
    let head_file = files.last().map(|f| head_path(f));
    let head = match &head_file {
        None => Err(HeadCheck::Missing),
        Some(p) => match std::fs::read(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(HeadCheck::Missing),
            Err(e) => Err(HeadCheck::Unreadable(e.to_string())),
            Ok(b) => {
                serde_json::from_slice::<Head>(&b).map_err(|e| HeadCheck::Unreadable(format!("not a head record: {e}")))
            }
        },
    };
    // The hash of the line the head names, once seen.
    let mut at_head: Option<String> = None;
    let mut buf = Vec::new();
    for (fi, file) in files.iter().enumerate() {
        let last_file = fi + 1 == files.len();
        let broken = |line: u64, why: String| Verdict::Broken {
            file: file.clone(),
            line,
            why,
        };
        let mut reader = BufReader::new(File::open(file).map_err(|e| at(file, e))?);
        let mut n = 0u64;
        let mut terminated = true;
        while next_line(&mut reader, &mut buf, &mut terminated).map_err(|e| at(file, e))? {
            n += 1;
            if !terminated {
                if buf.len() > MAX_LINE {
                    return Ok(broken(n, "longer than 1 MiB: not an audit record".into()));
                }
                if last_file {
                    report.unterminated = Some(Unterminated {
                        file: file.clone(),
                        line: n,
                        bytes: buf.len() as u64,
                    });
                    break;
                }
                return Ok(broken(
                    n,
                    "the last line of a file that is not the newest has no newline".into(),
                ));
            }
            let line = buf.as_slice();
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                return Ok(broken(n, "not a JSON record".into()));
            };
            let (Some(seq), Some(prev)) = (u64_field(&v, "seq"), v.get("prev").and_then(Value::as_str)) else {
                return Ok(broken(n, "no seq/prev fields (was hash_chain off?)".into()));
            };
            // What seq the previous record must have had, and what to report.
            let kind = v.get("record");
            let expect_prev_seq = match kind {
                None => seq.checked_sub(1),
                Some(k) if k == "recovered" => {
                    let (Some(torn_file), Some(torn_bytes), Some(torn_sha256)) = (
                        v.get("torn_file").and_then(Value::as_str),
                        u64_field(&v, "torn_bytes"),
                        v.get("torn_sha256").and_then(Value::as_str),
                    ) else {
                        return Ok(broken(
                            n,
                            "a recovered record without torn_file/torn_bytes/torn_sha256".into(),
                        ));
                    };
                    report.recoveries.push(Recovery {
                        file: file.clone(),
                        line: n,
                        torn_file: torn_file.to_string(),
                        torn_bytes,
                        torn_sha256: torn_sha256.to_string(),
                        torn_found: check_torn(file, torn_file, torn_bytes, torn_sha256),
                    });
                    seq.checked_sub(1)
                }
                Some(k) if k == "gap" => {
                    let (Some(from), Some(to), Some(lost)) = (
                        u64_field(&v, "lost_from"),
                        u64_field(&v, "lost_to"),
                        u64_field(&v, "lost"),
                    ) else {
                        return Ok(broken(n, "a gap record without lost_from/lost_to/lost".into()));
                    };
                    if from == 0 || from > to || seq.checked_sub(1) != Some(to) || to - from + 1 != lost {
                        return Ok(broken(
                            n,
                            format!("a gap record that does not add up (seq {seq}, lost_from {from}, lost_to {to}, lost {lost})"),
                        ));
                    }
                    report.gaps.push(Gap {
                        file: file.clone(),
                        line: n,
                        lost_from: from,
                        lost_to: to,
                        reason: v.get("reason").and_then(Value::as_str).unwrap_or_default().to_string(),
                    });
                    Some(from - 1)
                }
                Some(k) => return Ok(broken(n, format!("unknown record kind {k}"))),
            };
            match (&prev_hash, prev_seq) {
                (Some(h), Some(s)) => {
                    if prev != h {
                        return Ok(broken(n, format!("prev does not match the record before it (seq {s}): a record was edited, deleted or reordered")));
                    }
                    if expect_prev_seq != Some(s) {
                        return Ok(broken(n, format!("seq {seq} follows seq {s}")));
                    }
                }
                _ if !continuation && (expect_prev_seq != Some(0) || prev != GENESIS) => {
                    return Ok(broken(n, format!("the log starts at seq {seq}, not at seq 1 with the genesis prev: earlier records are missing (give rotated files oldest first, or --continuation)")));
                }
                _ => {}
            }
            let hash = sha256_hex(line);
            if let Ok(h) = &head {
                if h.seq == seq {
                    at_head = Some(hash.clone());
                }
            }
            prev_hash = Some(hash);
            prev_seq = Some(seq);
            first_seq.get_or_insert(seq);
            report.records += 1;
        }
    }
    // The writer's head record catches records cut off (or edited at) the end.
    report.head = match head {
        Err(missing) => missing,
        Ok(h) => {
            let file = files.last().cloned().unwrap_or_default();
            let seen = prev_seq.unwrap_or(0);
            if seen < h.seq {
                return Ok(Verdict::Broken {
                    file,
                    line: report.records + 1,
                    why: format!(
                        "the log ends at seq {seen} but the writer recorded seq {}: records were removed from the end",
                        h.seq
                    ),
                });
            }
            // (A head older than the first file given cannot be compared.)
            let reached = first_seq.is_some_and(|f| f <= h.seq);
            if reached && at_head.as_deref() != Some(h.hash.as_str()) {
                let why = if seen == h.seq {
                    "the last record differs from the one the writer recorded".to_string()
                } else {
                    format!(
                        "the record at seq {} differs from the one the writer recorded (head file)",
                        h.seq
                    )
                };
                return Ok(Verdict::Broken {
                    file,
                    line: report.records,
                    why,
                });
            }
            if seen == h.seq {
                HeadCheck::Pinned
            } else {
                HeadCheck::Behind {
                    head_seq: h.seq,
                    after: seen - h.seq,
                }
            }
        }
    };
    Ok(Verdict::Ok(report))
}

/// Look for the moved-aside bytes beside `log`.
fn check_torn(log: &Path, name: &str, bytes: u64, sha256: &str) -> TornFile {
    // Only a plain file name, beside the log.
    if Path::new(name).file_name().and_then(|n| n.to_str()) != Some(name) {
        return TornFile::Missing;
    }
    let path = log.parent().map_or_else(|| PathBuf::from(name), |d| d.join(name));
    match std::fs::metadata(&path) {
        Err(_) => TornFile::Missing,
        Ok(m) if m.len() != bytes => TornFile::Differs,
        Ok(_) => match std::fs::read(&path) {
            Ok(b) if sha256_hex(&b) == sha256 => TornFile::Matches,
            Ok(_) => TornFile::Differs,
            Err(_) => TornFile::Missing,
        },
    }
}
