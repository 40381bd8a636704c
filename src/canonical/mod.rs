//! Canonical JSON for request signing: validates a JSON body (RFC 8259, strict UTF-8, no duplicate
//! keys, bounded depth) and re-emits it compact, with object keys sorted by decoded UTF-8 bytes at
//! every depth, `/` unescaped, number text kept verbatim and strings re-escaped (optionally PHP-style
//! `\uXXXX` for non-ASCII). It never converts numbers, never allocates per string and never recurses.
//! Errors carry the byte offset into the input and a short static reason; nothing here panics on input.

use std::cmp::Ordering;
use std::fmt;

/// Default maximum nesting depth of arrays/objects.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Encoding options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Write every non-ASCII char as lowercase `\uXXXX` (PHP default). Default: true.
    pub escape_unicode: bool,
    /// Maximum nesting depth of arrays/objects. Default: 128 (`DEFAULT_MAX_DEPTH`).
    pub max_depth: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            escape_unicode: true,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// Why and where the input was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    /// Byte offset into the input (`input.len()` for truncated input).
    pub offset: usize,
    /// Short description of the problem.
    pub reason: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for Error {}

const EOF: &str = "unexpected end of input";
const BAD_NUMBER: &str = "invalid number";
const BAD_UNICODE_ESCAPE: &str = "invalid \\u escape";
const UNPAIRED: &str = "unpaired surrogate";

fn fail<T>(offset: usize, reason: &'static str) -> Result<T, Error> {
    Err(Error { offset, reason })
}

const KIND_RAW: u8 = 0; // number or literal: span copied verbatim
const KIND_STR: u8 = 1; // string: span is the content between the quotes
const KIND_ARR: u8 = 2;
const KIND_OBJ: u8 = 3; // a..b: range in `order` holding the sorted key nodes

const F_ESCAPE: u8 = 1; // string contains a backslash
const F_NON_ASCII: u8 = 2; // string contains bytes >= 0x80

/// One tape entry. Children follow their container; `next` is the index just past this subtree.
#[derive(Clone, Copy, Debug)]
struct Node {
    kind: u8,
    flags: u8,
    a: u32,
    b: u32,
    next: u32,
}

/// An object member awaiting the close of its object. The key bytes are `input[start..end]`
/// when the key has no escapes, else its decoded form in `keybuf[start..end]`. `prefix` holds the
/// first 8 key bytes big-endian, zero-padded: unequal prefixes order like the full keys.
#[derive(Clone, Copy, Debug)]
struct Member {
    prefix: u64,
    key_node: u32,
    start: u32,
    end: u32,
    decoded: bool,
}

/// An open container during parsing.
#[derive(Clone, Copy, Debug)]
struct Open {
    node: u32,
    pending: u32,
    is_obj: bool,
}

/// A container being written during emission.
#[derive(Clone, Copy, Debug)]
struct Frame {
    is_obj: bool,
    first: bool,
    pos: u32,
    end: u32,
}

/// Reusable scratch space so the hot path does not allocate per request after warm-up.
#[derive(Default)]
pub struct Canonicalizer {
    tape: Vec<Node>,
    order: Vec<u32>,
    pending: Vec<Member>,
    keybuf: Vec<u8>,
    stack: Vec<Open>,
    frames: Vec<Frame>,
}

#[derive(Clone, Copy)]
enum State {
    Value,
    Key,
    After,
}

impl Canonicalizer {
    /// Creates an empty canonicalizer; buffers grow on first use and are then reused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the canonical encoding of `input` to `out` (out is NOT cleared). On error `out` is restored to its original length.
    pub fn encode(&mut self, input: &[u8], opts: &Options, out: &mut Vec<u8>) -> Result<(), Error> {
        let base = out.len();
        match self.parse(input, opts.max_depth) {
            Ok(()) => {
                self.emit(input, opts.escape_unicode, out);
                Ok(())
            }
            Err(e) => {
                out.truncate(base);
                Err(e)
            }
        }
    }

    /// Validates `input` and fills the tape; no recursion, depth bounded by `max_depth`.
    fn parse(&mut self, input: &[u8], max_depth: usize) -> Result<(), Error> {
        let Self {
            tape,
            order,
            pending,
            keybuf,
            stack,
            ..
        } = self;
        tape.clear();
        order.clear();
        pending.clear();
        keybuf.clear();
        stack.clear();
        if u32::try_from(input.len()).is_err() {
            return fail(0, "input too large");
        }
        if input.starts_with(b"\xEF\xBB\xBF") {
            return fail(0, "UTF-8 BOM not allowed");
        }
        let mut i = skip_ws(input, 0);
        if i == input.len() {
            return fail(i, "expected a JSON value");
        }
        let mut state = State::Value;
        loop {
            match state {
                State::Value => {
                    i = skip_ws(input, i);
                    let Some(&c) = input.get(i) else {
                        return fail(i, EOF);
                    };
                    let idx = tape.len() as u32;
                    match c {
                        b'{' | b'[' => {
                            if stack.len() >= max_depth {
                                return fail(i, "nesting too deep");
                            }
                            let is_obj = c == b'{';
                            let kind = if is_obj { KIND_OBJ } else { KIND_ARR };
                            tape.push(node(kind, 0, 0, 0, idx + 1));
                            stack.push(Open {
                                node: idx,
                                pending: pending.len() as u32,
                                is_obj,
                            });
                            i = skip_ws(input, i + 1);
                            let close = if is_obj { b'}' } else { b']' };
                            if input.get(i) == Some(&close) {
                                i += 1;
                                close_container(tape, order, pending, stack, keybuf, input)?;
                                state = State::After;
                            } else {
                                state = if is_obj { State::Key } else { State::Value };
                            }
                        }
                        b'"' => {
                            let (end, flags) = scan_string(input, i)?;
                            tape.push(node(KIND_STR, flags, i as u32 + 1, end as u32, idx + 1));
                            i = end + 1;
                            state = State::After;
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                            let end = match c {
                                b't' => scan_literal(input, i, b"true")?,
                                b'f' => scan_literal(input, i, b"false")?,
                                b'n' => scan_literal(input, i, b"null")?,
                                _ => scan_number(input, i)?,
                            };
                            tape.push(node(KIND_RAW, 0, i as u32, end as u32, idx + 1));
                            i = end;
                            state = State::After;
                        }
                        _ => return fail(i, "expected a JSON value"),
                    }
                }
                State::Key => {
                    i = skip_ws(input, i);
                    match input.get(i) {
                        Some(b'"') => {}
                        Some(_) => return fail(i, "expected string key"),
                        None => return fail(i, EOF),
                    }
                    let (end, flags) = scan_string(input, i)?;
                    let idx = tape.len() as u32;
                    tape.push(node(KIND_STR, flags, i as u32 + 1, end as u32, idx + 1));
                    let decoded = flags & F_ESCAPE != 0;
                    let (start, key) = if decoded {
                        let start = keybuf.len();
                        unescape_into(&input[i + 1..end], keybuf);
                        (start, &keybuf[start..])
                    } else {
                        (i + 1, &input[i + 1..end])
                    };
                    pending.push(Member {
                        prefix: key_prefix(key),
                        key_node: idx,
                        start: start as u32,
                        end: (start + key.len()) as u32,
                        decoded,
                    });
                    i = skip_ws(input, end + 1);
                    match input.get(i) {
                        Some(b':') => i += 1,
                        Some(_) => return fail(i, "expected ':'"),
                        None => return fail(i, EOF),
                    }
                    state = State::Value;
                }
                State::After => {
                    let Some(top) = stack.last() else {
                        break;
                    };
                    let is_obj = top.is_obj;
                    i = skip_ws(input, i);
                    match (input.get(i), is_obj) {
                        (Some(b','), _) => {
                            i += 1;
                            state = if is_obj { State::Key } else { State::Value };
                        }
                        (Some(b'}'), true) | (Some(b']'), false) => {
                            i += 1;
                            close_container(tape, order, pending, stack, keybuf, input)?;
                        }
                        (None, _) => return fail(i, EOF),
                        (Some(_), true) => return fail(i, "expected ',' or '}'"),
                        (Some(_), false) => return fail(i, "expected ',' or ']'"),
                    }
                }
            }
        }
        i = skip_ws(input, i);
        if i != input.len() {
            return fail(i, "trailing characters");
        }
        Ok(())
    }

    /// Writes the tape in canonical order; cannot fail once `parse` succeeded.
    fn emit(&mut self, input: &[u8], escape_unicode: bool, out: &mut Vec<u8>) {
        let Self {
            tape, order, frames, ..
        } = self;
        frames.clear();
        out.reserve(input.len());
        let mut idx = 0usize;
        loop {
            let n = tape[idx];
            match n.kind {
                KIND_RAW => out.extend_from_slice(&input[n.a as usize..n.b as usize]),
                KIND_STR => write_string(input, n, escape_unicode, out),
                kind => {
                    let is_obj = kind == KIND_OBJ;
                    let (pos, end) = if is_obj { (n.a, n.b) } else { (idx as u32 + 1, n.next) };
                    out.push(if is_obj { b'{' } else { b'[' });
                    frames.push(Frame {
                        is_obj,
                        first: true,
                        pos,
                        end,
                    });
                }
            }
            // Find the next node to write, closing finished containers.
            loop {
                let Some(f) = frames.last_mut() else {
                    return;
                };
                if f.pos == f.end {
                    out.push(if f.is_obj { b'}' } else { b']' });
                    frames.pop();
                    continue;
                }
                if !f.first {
                    out.push(b',');
                }
                f.first = false;
                if f.is_obj {
                    let key = order[f.pos as usize] as usize;
                    f.pos += 1;
                    write_string(input, tape[key], escape_unicode, out);
                    out.push(b':');
                    idx = key + 1;
                } else {
                    idx = f.pos as usize;
                    f.pos = tape[idx].next;
                }
                break;
            }
        }
    }
}

/// Convenience: fresh Canonicalizer, returns a new Vec.
pub fn canonicalize(input: &[u8], opts: &Options) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    Canonicalizer::new().encode(input, opts, &mut out)?;
    Ok(out)
}

fn node(kind: u8, flags: u8, a: u32, b: u32, next: u32) -> Node {
    Node {
        kind,
        flags,
        a,
        b,
        next,
    }
}

/// Pops the innermost container; for objects sorts members, rejects duplicates, records the order.
fn close_container(
    tape: &mut [Node],
    order: &mut Vec<u32>,
    pending: &mut Vec<Member>,
    stack: &mut Vec<Open>,
    keybuf: &[u8],
    input: &[u8],
) -> Result<(), Error> {
    let Some(open) = stack.pop() else {
        return Ok(()); // unreachable: callers only close an open container
    };
    let next = tape.len() as u32;
    let n = &mut tape[open.node as usize];
    n.next = next;
    if !open.is_obj {
        return Ok(());
    }
    let key = |m: &Member| -> &[u8] {
        let src = if m.decoded { keybuf } else { input };
        &src[m.start as usize..m.end as usize]
    };
    let members = &mut pending[open.pending as usize..];
    if members.len() > 1 {
        let cmp = |x: &Member, y: &Member| match x.prefix.cmp(&y.prefix) {
            Ordering::Equal => key(x).cmp(key(y)),
            o => o,
        };
        members.sort_unstable_by(|x, y| cmp(x, y).then(x.key_node.cmp(&y.key_node)));
        // Report the earliest second occurrence of any key.
        let mut dup: Option<u32> = None;
        for w in members.windows(2) {
            if cmp(&w[0], &w[1]) == Ordering::Equal {
                let at = w[1].key_node;
                dup = Some(dup.map_or(at, |d| d.min(at)));
            }
        }
        if let Some(at) = dup {
            return fail(tape[at as usize].a as usize - 1, "duplicate key");
        }
    }
    let start = order.len() as u32;
    order.extend(members.iter().map(|m| m.key_node));
    let n = &mut tape[open.node as usize];
    n.a = start;
    n.b = order.len() as u32;
    pending.truncate(open.pending as usize);
    Ok(())
}

fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

fn skip_ws(input: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = input.get(i) {
        i += 1;
        // Pretty-printed bodies: skip indentation eight spaces at a time.
        while input.get(i..i + 8) == Some(b"        ") {
            i += 8;
        }
    }
    i
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Nonzero iff some byte of `w` is `"`, `\`, < 0x20 or >= 0x80; the lowest set bit marks the first.
fn special_mask(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(LO) & !v;
    (zero(w ^ (LO * 0x22)) | zero(w ^ (LO * 0x5C)) | w.wrapping_sub(LO * 0x20) & !w | w) & HI
}

/// Validates a string starting at the opening quote `open`; returns (index of closing quote, flags).
fn scan_string(input: &[u8], open: usize) -> Result<(usize, u8), Error> {
    let mut i = open + 1;
    let mut flags = 0;
    loop {
        while let Some(chunk) = input.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let m = special_mask(u64::from_le_bytes(w));
            if m != 0 {
                i += (m.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        let Some(&c) = input.get(i) else {
            return fail(input.len(), EOF);
        };
        match c {
            b'"' => return Ok((i, flags)),
            b'\\' => {
                flags |= F_ESCAPE;
                i = scan_escape(input, i)?;
            }
            0x80.. => {
                flags |= F_NON_ASCII;
                i += utf8_len(input, i)?;
            }
            0..0x20 => return fail(i, "unescaped control character in string"),
            _ => i += 1,
        }
    }
}

/// Validates one escape at `input[i] == b'\\'`; returns the index after it.
fn scan_escape(input: &[u8], i: usize) -> Result<usize, Error> {
    match input.get(i + 1) {
        None => fail(input.len(), EOF),
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => match hex4(input, i + 2, i)? {
            0xD800..=0xDBFF => match (input.get(i + 6), input.get(i + 7)) {
                (Some(b'\\'), Some(b'u')) => match hex4(input, i + 8, i + 6)? {
                    0xDC00..=0xDFFF => Ok(i + 12),
                    _ => fail(i, UNPAIRED),
                },
                (None, _) | (Some(b'\\'), None) => fail(input.len(), EOF),
                _ => fail(i, UNPAIRED),
            },
            0xDC00..=0xDFFF => fail(i, UNPAIRED),
            _ => Ok(i + 6),
        },
        Some(_) => fail(i, "invalid escape"),
    }
}

/// Parses four hex digits at `p`; errors point at the escape's backslash `esc`.
fn hex4(input: &[u8], p: usize, esc: usize) -> Result<u32, Error> {
    let mut v = 0;
    for k in p..p + 4 {
        let d = match input.get(k) {
            None => return fail(input.len(), EOF),
            Some(&h) => match h {
                b'0'..=b'9' => h - b'0',
                b'a'..=b'f' => h - b'a' + 10,
                b'A'..=b'F' => h - b'A' + 10,
                _ => return fail(esc, BAD_UNICODE_ESCAPE),
            },
        };
        v = v << 4 | u32::from(d);
    }
    Ok(v)
}

/// Length of the well-formed UTF-8 sequence starting at `i` (Unicode Table 3-7), or an error at `i`.
fn utf8_len(input: &[u8], i: usize) -> Result<usize, Error> {
    let (len, lo, hi) = match input[i] {
        0xC2..=0xDF => (2, 0x80, 0xBF),
        0xE0 => (3, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE | 0xEF => (3, 0x80, 0xBF),
        0xED => (3, 0x80, 0x9F),
        0xF0 => (4, 0x90, 0xBF),
        0xF1..=0xF3 => (4, 0x80, 0xBF),
        0xF4 => (4, 0x80, 0x8F),
        _ => return fail(i, "invalid UTF-8 in string"),
    };
    let in_range = |k: usize, lo: u8, hi: u8| input.get(i + k).is_some_and(|b| (lo..=hi).contains(b));
    if in_range(1, lo, hi) && (2..len).all(|k| in_range(k, 0x80, 0xBF)) {
        Ok(len)
    } else {
        fail(i, "invalid UTF-8 in string")
    }
}

/// Matches `true`/`false`/`null` at `i`; returns the index after it.
fn scan_literal(input: &[u8], i: usize, lit: &[u8]) -> Result<usize, Error> {
    match input.get(i..i + lit.len()) {
        Some(s) if s == lit => Ok(i + lit.len()),
        _ if lit.starts_with(&input[i..]) => fail(input.len(), EOF),
        _ => fail(i, "invalid literal"),
    }
}

/// Validates an RFC 8259 number starting at `start`; returns the index after it.
fn scan_number(input: &[u8], start: usize) -> Result<usize, Error> {
    let digit = |k: usize| matches!(input.get(k), Some(b'0'..=b'9'));
    let digits1 = |mut k: usize| {
        if !digit(k) {
            return fail(k, BAD_NUMBER);
        }
        while digit(k) {
            k += 1;
        }
        Ok(k)
    };
    let mut i = start;
    if input.get(i) == Some(&b'-') {
        i += 1;
    }
    if input.get(i) == Some(&b'0') {
        i += 1;
        if digit(i) {
            return fail(i, "leading zero in number");
        }
    } else {
        i = digits1(i)?;
    }
    if input.get(i) == Some(&b'.') {
        i = digits1(i + 1)?;
    }
    if let Some(b'e' | b'E') = input.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = input.get(i) {
            i += 1;
        }
        i = digits1(i)?;
    }
    Ok(i)
}

/// Decodes the (validated) escape at `raw[i] == b'\\'`: (code point, bytes consumed).
fn decode_escape(raw: &[u8], i: usize) -> (u32, usize) {
    let hex = |p: usize| {
        (p..p + 4).fold(0u32, |v, k| {
            let h = raw.get(k).copied().unwrap_or(b'0');
            let d = match h {
                b'a'..=b'f' => h - b'a' + 10,
                b'A'..=b'F' => h - b'A' + 10,
                _ => h.wrapping_sub(b'0'),
            };
            v << 4 | u32::from(d & 0xF)
        })
    };
    match raw.get(i + 1).copied().unwrap_or(b'\\') {
        b'b' => (0x08, 2),
        b'f' => (0x0C, 2),
        b'n' => (0x0A, 2),
        b'r' => (0x0D, 2),
        b't' => (0x09, 2),
        b'u' => {
            let cp = hex(i + 2);
            if (0xD800..0xDC00).contains(&cp) {
                let lo = hex(i + 8);
                (0x10000 + ((cp - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF), 12)
            } else {
                (cp, 6)
            }
        }
        c => (u32::from(c), 2),
    }
}

/// Decodes the (validated) UTF-8 char at `raw[i]`: (code point, bytes consumed).
fn decode_utf8(raw: &[u8], i: usize) -> (u32, usize) {
    let b = |k: usize| u32::from(raw.get(i + k).copied().unwrap_or(0x80) & 0x3F);
    let b0 = u32::from(raw[i]);
    match b0 {
        0..0x80 => (b0, 1),
        0x80..0xE0 => ((b0 & 0x1F) << 6 | b(1), 2),
        0xE0..0xF0 => ((b0 & 0x0F) << 12 | b(1) << 6 | b(2), 3),
        _ => ((b0 & 0x07) << 18 | b(1) << 12 | b(2) << 6 | b(3), 4),
    }
}

/// Appends the decoded (UTF-8) form of validated string content `raw`.
fn unescape_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut run = 0;
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            out.extend_from_slice(&raw[run..i]);
            let (cp, n) = decode_escape(raw, i);
            let c = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            i += n;
            run = i;
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(&raw[run..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_u16_escape(u: u32, out: &mut Vec<u8>) {
    let h = |s: u32| HEX[(u >> s & 0xF) as usize];
    out.extend_from_slice(&[b'\\', b'u', h(12), h(8), h(4), h(0)]);
}

/// Writes one decoded code point in canonical escaped form.
fn write_char(cp: u32, escape_unicode: bool, out: &mut Vec<u8>) {
    match cp {
        0x22 => out.extend_from_slice(b"\\\""),
        0x5C => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0C => out.extend_from_slice(b"\\f"),
        0x0A => out.extend_from_slice(b"\\n"),
        0x0D => out.extend_from_slice(b"\\r"),
        0x09 => out.extend_from_slice(b"\\t"),
        0..0x20 => push_u16_escape(cp, out),
        0x20..0x80 => out.push(cp as u8),
        0x80..0x10000 if escape_unicode => push_u16_escape(cp, out),
        _ if escape_unicode => {
            let v = cp - 0x10000;
            push_u16_escape(0xD800 | v >> 10, out);
            push_u16_escape(0xDC00 | (v & 0x3FF), out);
        }
        _ => {
            let c = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
    }
}

/// Writes a string node (quotes included) in canonical form.
fn write_string(input: &[u8], n: Node, escape_unicode: bool, out: &mut Vec<u8>) {
    let escape_non_ascii = escape_unicode && n.flags & F_NON_ASCII != 0;
    if n.flags & F_ESCAPE == 0 && !escape_non_ascii {
        // Verbatim, including the input's own quotes.
        out.extend_from_slice(&input[n.a as usize - 1..n.b as usize + 1]);
        return;
    }
    let raw = &input[n.a as usize..n.b as usize];
    out.push(b'"');
    let (mut run, mut i) = (0, 0);
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' && (c < 0x80 || !escape_unicode) {
            i += 1;
            continue;
        }
        out.extend_from_slice(&raw[run..i]);
        let (cp, len) = if c == b'\\' {
            decode_escape(raw, i)
        } else {
            decode_utf8(raw, i)
        };
        write_char(cp, escape_unicode, out);
        i += len;
        run = i;
    }
    out.extend_from_slice(&raw[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests;
