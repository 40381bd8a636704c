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

impl Line<'_> {
    /// Append the line's JSON to `out`: the bytes `serde_json` writes for
    /// the flattened form (a test pins them), without its per-byte escaping
    /// of the keys and of values that need none.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let e = self.entry;
        let mut w = Json { out, first: true };
        w.key("seq").num(self.seq);
        w.key("time").str(&e.time);
        w.key("request_id").str(&e.request_id);
        w.key("client").addr(&e.client)?;
        w.key("route").opt_str(e.route.as_deref());
        w.key("method").str(&e.method);
        w.key("path").str(&e.path);
        w.key("decision").str(e.decision);
        w.key("reason").opt_str(e.reason);
        w.key("status").num(e.status);
        w.key("upstream_status").opt_num(e.upstream_status);
        w.key("duration_ms").value(&e.duration_ms)?;
        w.key("bytes_in").num(e.bytes_in);
        w.key("bytes_out").opt_num(e.bytes_out);
        w.key("credential").opt_str(e.credential.as_deref());
        w.key("secret_version").opt_num(e.secret_version);
        w.key("signature_fp").opt_str(e.signature_fp.as_deref());
        w.key("duplicate_key").opt_str(e.duplicate_key.as_deref());
        let optional = [
            ("fleet", e.fleet),
            ("upstream_error", e.upstream_error),
            ("note", e.note.as_deref()),
            ("amount", e.amount.as_deref()),
            ("currency", e.currency.as_deref()),
            ("prev", self.prev),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                w.key(k).str(v);
            }
        }
        w.out.push(b'}');
        Ok(())
    }
}

/// A JSON object written straight into a buffer; keys are literals that
/// need no escaping.
struct Json<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Json<'_> {
    fn key(&mut self, k: &str) -> &mut Self {
        self.out.push(if std::mem::take(&mut self.first) { b'{' } else { b',' });
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        self
    }

    /// A string as `serde_json` writes it; copied as is when it holds
    /// nothing JSON escapes (`"`, `\\`, control characters below 0x20).
    fn str(&mut self, v: &str) {
        if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.out.push(b'"');
            self.out.extend_from_slice(v.as_bytes());
            self.out.push(b'"');
        } else {
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *self.out, v);
        }
    }

    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.str(v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    fn num(&mut self, v: impl Into<u64>) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n: u64 = v.into();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.out.extend_from_slice(&buf[i..]);
    }

    fn opt_num(&mut self, v: Option<impl Into<u64>>) {
        match v {
            Some(v) => self.num(v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// A socket address as its `Display` string: IPv4 digit by digit (most
    /// clients), IPv6 through `serde_json`.
    fn addr(&mut self, a: &std::net::SocketAddr) -> serde_json::Result<()> {
        let std::net::SocketAddr::V4(v4) = a else {
            return self.value(a);
        };
        self.out.push(b'"');
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                self.out.push(b'.');
            }
            self.num(octet);
        }
        self.out.push(b':');
        self.num(v4.port());
        self.out.push(b'"');
        Ok(())
    }

    /// Anything else (a float, an IPv6 address) through `serde_json`.
    fn value(&mut self, v: &impl Serialize) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *self.out, v)
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
