//! The lines of the log: a chained record, and the two notes about the log
//! itself (`gap`: records were lost; `recovered`: a torn last line was moved
//! aside at start). Notes take a `seq` and a `prev` like any record.

use serde::Serialize;

use super::files::Torn;
use super::{now_rfc3339, Entry};

/// One chained line of the log: `seq`, the entry's fields in their order,
/// then `prev`. Written out field by field (no `#[serde(flatten)]`, which
/// buffers every field of the entry before writing it), with the same bytes.
pub(super) struct Line<'a> {
    pub seq: u64,
    pub entry: &'a Entry,
    pub prev: Option<&'a str>,
}

impl Serialize for Line<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let e = self.entry;
        let mut m = s.serialize_struct("Line", 24)?;
        m.serialize_field("seq", &self.seq)?;
        m.serialize_field("time", &e.time)?;
        m.serialize_field("request_id", &e.request_id)?;
        m.serialize_field("client", &e.client)?;
        m.serialize_field("route", &e.route)?;
        m.serialize_field("method", &e.method)?;
        m.serialize_field("path", &e.path)?;
        m.serialize_field("decision", e.decision)?;
        m.serialize_field("reason", &e.reason)?;
        m.serialize_field("status", &e.status)?;
        m.serialize_field("upstream_status", &e.upstream_status)?;
        m.serialize_field("duration_ms", &e.duration_ms)?;
        m.serialize_field("bytes_in", &e.bytes_in)?;
        m.serialize_field("bytes_out", &e.bytes_out)?;
        m.serialize_field("credential", &e.credential)?;
        m.serialize_field("secret_version", &e.secret_version)?;
        m.serialize_field("signature_fp", &e.signature_fp)?;
        m.serialize_field("duplicate_key", &e.duplicate_key)?;
        if let Some(fleet) = e.fleet {
            m.serialize_field("fleet", fleet)?;
        }
        if let Some(err) = e.upstream_error {
            m.serialize_field("upstream_error", err)?;
        }
        if let Some(note) = &e.note {
            m.serialize_field("note", note)?;
        }
        if let Some(amount) = &e.amount {
            m.serialize_field("amount", amount)?;
        }
        if let Some(currency) = &e.currency {
            m.serialize_field("currency", currency)?;
        }
        if let Some(prev) = self.prev {
            m.serialize_field("prev", prev)?;
        }
        m.end()
    }
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

/// Records lost since the last written one: when the first was lost, and
/// why.
pub(super) struct Lost {
    pub since: String,
    pub reason: String,
}

impl Lost {
    pub fn now(reason: String) -> Lost {
        Lost {
            since: now_rfc3339(),
            reason,
        }
    }

    /// The `gap` record naming `from..=to`, as line `seq` after `prev`.
    pub fn line(&self, from: u64, to: u64, seq: u64, prev: Option<&str>) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&GapLine {
            seq,
            record: "gap",
            time: now_rfc3339(),
            lost_from: from,
            lost_to: to,
            lost: to - from + 1,
            since: &self.since,
            reason: &self.reason,
            prev,
        })
    }
}

/// The `recovered` record of a torn line moved aside, as line `seq` after
/// `prev`.
pub(super) fn recovered_line(t: &Torn, seq: u64, prev: Option<&str>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&RecoveredLine {
        seq,
        record: "recovered",
        time: now_rfc3339(),
        torn_file: &t.file_name,
        torn_bytes: t.bytes,
        torn_sha256: &t.sha256,
        reason: t.reason,
        prev,
    })
}
