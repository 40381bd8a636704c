//! `<path>.head`: the last written seq and its hash, refreshed about once a
//! second while records flow (and at stop), so that records cut off the end
//! are detected.

use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use super::{files, head_path, Head, TICK};

pub(super) struct HeadFile {
    written: Instant,
    /// Records were written since the head file was.
    pub dirty: bool,
    failing: bool,
}

impl HeadFile {
    pub fn new() -> HeadFile {
        HeadFile {
            written: Instant::now(),
            dirty: false,
            failing: false,
        }
    }

    /// Whether to write it now (`last`: the writer stops).
    pub fn due(&self, last: bool) -> bool {
        self.dirty && (last || self.written.elapsed() >= TICK)
    }

    /// Record `seq`/`hash` as the head of the log at `log` (a temporary file
    /// renamed over the old one); a failure is logged once and retried.
    pub fn write(&mut self, log: &Path, seq: u64, hash: &str) {
        let head = Head {
            seq,
            hash: hash.to_string(),
        };
        let hp = head_path(log);
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
                if self.failing {
                    tracing::info!("audit head file updated again");
                }
                self.failing = false;
                self.dirty = false;
                self.written = Instant::now();
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if !self.failing {
                    tracing::warn!(error = %e, head = %hp.display(), "audit head file not updated (retried every second)");
                }
                self.failing = true;
            }
        }
    }
}
