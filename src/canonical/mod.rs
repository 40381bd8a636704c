//! Canonical JSON for request signing: validates a JSON body (RFC 8259, strict UTF-8, no duplicate
//! keys, bounded depth) and re-emits it compact, with object keys sorted by decoded UTF-8 bytes at
//! every depth, `/` unescaped, number text kept verbatim and strings re-escaped (optionally PHP-style
//! `\uXXXX` for non-ASCII). It never converts numbers, never allocates per string and never recurses.
//! Errors carry the byte offset into the input and a short static reason; nothing here panics on input.
//!
//! One pass over the input: bytes that need no change are copied in long verbatim runs, and an
//! object's members, already written, are reordered in place when the object closes (only if they
//! did not arrive sorted).

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

/// Largest input accepted (so that output offsets fit in u32).
const MAX_INPUT: usize = 1 << 30;

const F_ESCAPE: u8 = 1; // string contains a backslash
const F_NON_ASCII: u8 = 2; // string contains bytes >= 0x80

/// An object member awaiting the close of its object. The key bytes are `input[start..end]`
/// when the key has no escapes, else its decoded form in `keybuf[start..end]`. `prefix` holds the
/// first 8 key bytes big-endian, zero-padded: unequal prefixes order like the full keys.
/// `out_start..out_end` is the member (`"key":value`) as already written to the output.
#[derive(Clone, Copy, Debug)]
struct Member {
    prefix: u64,
    start: u32,
    end: u32,
    /// Input offset of the key's opening quote (error offsets; ties keep input order).
    quote: u32,
    decoded: bool,
    /// Output offsets relative to where this document's output starts.
    out_start: u32,
    out_end: u32,
}

/// An open container during parsing.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// Index of this object's first member in `members`.
    members: u32,
    is_obj: bool,
}

/// Reusable scratch space so the hot path does not allocate per request after warm-up.
#[derive(Default)]
pub struct Canonicalizer {
    members: Vec<Member>,
    keybuf: Vec<u8>,
    stack: Vec<Open>,
    /// Holds an unsorted object's members while they are written back in order.
    scratch: Vec<u8>,
}

#[derive(Clone, Copy)]
enum State {
    Value,
    Key,
    After,
}

/// The output side of the single pass. Input bytes that go out unchanged (compact
/// structure, numbers, literals, strings needing no re-escaping) are not copied one
/// token at a time: `run` marks where the pending verbatim stretch of input begins,
/// and it is copied in one piece when something else has to be written (skipped
/// whitespace, a re-escaped string, an object whose members must be reordered).
struct Sink<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
    /// `out.len()` before this document.
    base: usize,
    run: usize,
}

impl Sink<'_> {
    /// Output offset (from `base`) that input offset `i` (inside the pending run) maps to.
    /// Fits in u32: the output is at most three times the input, which is at most 1 GiB.
    fn pos(&self, i: usize) -> u32 {
        (self.out.len() - self.base + (i - self.run)) as u32
    }

    /// Copy the pending run up to input offset `i`; the run restarts at `resume`.
    fn flush(&mut self, i: usize, resume: usize) {
        self.out.extend_from_slice(&self.input[self.run..i]);
        self.run = resume;
    }

    /// Skip whitespace at `i`; whitespace is dropped from the output. Compact input (the
    /// common case) costs one comparison here.
    #[inline(always)]
    fn skip_ws(&mut self, i: usize) -> usize {
        match self.input.get(i) {
            Some(b' ' | b'\n' | b'\r' | b'\t') => self.drop_ws(i),
            _ => i,
        }
    }

    #[inline(never)]
    fn drop_ws(&mut self, i: usize) -> usize {
        let j = skip_ws(self.input, i);
        self.flush(i, j);
        j
    }
}

impl Canonicalizer {
    /// Creates an empty canonicalizer; buffers grow on first use and are then reused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the canonical encoding of `input` to `out` (out is NOT cleared). On error `out` is restored to its original length.
    pub fn encode(&mut self, input: &[u8], opts: &Options, out: &mut Vec<u8>) -> Result<(), Error> {
        let base = out.len();
        let r = self.run(input, opts, out);
        if r.is_err() {
            out.truncate(base);
        }
        r
    }

    /// One pass over `input`: validate, drop whitespace, re-escape the strings that need it,
    /// and reorder each object's members (already written to `out`) when the object closes.
    /// No recursion; depth bounded by `max_depth`.
    fn run(&mut self, input: &[u8], opts: &Options, out: &mut Vec<u8>) -> Result<(), Error> {
        let Self {
            members,
            keybuf,
            stack,
            scratch,
        } = self;
        members.clear();
        keybuf.clear();
        stack.clear();
        if input.len() > MAX_INPUT {
            return fail(0, "input too large");
        }
        if input.starts_with(b"\xEF\xBB\xBF") {
            return fail(0, "UTF-8 BOM not allowed");
        }
        let esc = opts.escape_unicode;
        let mut i = skip_ws(input, 0);
        if i == input.len() {
            return fail(i, "expected a JSON value");
        }
        out.reserve(input.len() - i);
        let base = out.len();
        let mut sink = Sink {
            input,
            out,
            base,
            run: i,
        };
        let mut state = State::Value;
        loop {
            match state {
                State::Value => {
                    i = sink.skip_ws(i);
                    let Some(&c) = input.get(i) else {
                        return fail(i, EOF);
                    };
                    match c {
                        b'{' | b'[' => {
                            if stack.len() >= opts.max_depth {
                                return fail(i, "nesting too deep");
                            }
                            let is_obj = c == b'{';
                            i = sink.skip_ws(i + 1);
                            let close = if is_obj { b'}' } else { b']' };
                            if input.get(i) == Some(&close) {
                                i += 1;
                                state = State::After;
                            } else {
                                stack.push(Open {
                                    members: members.len() as u32,
                                    is_obj,
                                });
                                state = if is_obj { State::Key } else { State::Value };
                            }
                        }
                        b'"' => {
                            let (end, flags) = scan_string(input, i)?;
                            if needs_rewrite(flags, esc) {
                                sink.flush(i, end + 1);
                                write_string(&input[i + 1..end], esc, sink.out);
                            }
                            i = end + 1;
                            state = State::After;
                        }
                        b'-' | b'0'..=b'9' => {
                            i = scan_number(input, i)?;
                            state = State::After;
                        }
                        b't' => {
                            i = scan_literal(input, i, b"true")?;
                            state = State::After;
                        }
                        b'f' => {
                            i = scan_literal(input, i, b"false")?;
                            state = State::After;
                        }
                        b'n' => {
                            i = scan_literal(input, i, b"null")?;
                            state = State::After;
                        }
                        _ => return fail(i, "expected a JSON value"),
                    }
                }
                State::Key => {
                    i = sink.skip_ws(i);
                    match input.get(i) {
                        Some(b'"') => {}
                        Some(_) => return fail(i, "expected string key"),
                        None => return fail(i, EOF),
                    }
                    let (end, flags) = scan_string(input, i)?;
                    let out_start = sink.pos(i);
                    if needs_rewrite(flags, esc) {
                        sink.flush(i, end + 1);
                        write_string(&input[i + 1..end], esc, sink.out);
                    }
                    let decoded = flags & F_ESCAPE != 0;
                    let (start, key) = if decoded {
                        let start = keybuf.len();
                        unescape_into(&input[i + 1..end], keybuf);
                        (start, &keybuf[start..])
                    } else {
                        (i + 1, &input[i + 1..end])
                    };
                    members.push(Member {
                        prefix: key_prefix(key),
                        start: start as u32,
                        end: (start + key.len()) as u32,
                        quote: i as u32,
                        decoded,
                        out_start,
                        out_end: 0,
                    });
                    i = sink.skip_ws(end + 1);
                    match input.get(i) {
                        Some(b':') => i += 1,
                        Some(_) => return fail(i, "expected ':'"),
                        None => return fail(i, EOF),
                    }
                    state = State::Value;
                }
                State::After => {
                    let Some(&top) = stack.last() else {
                        break;
                    };
                    i = sink.skip_ws(i);
                    match (input.get(i), top.is_obj) {
                        (Some(b','), is_obj) => {
                            if is_obj {
                                end_member(members, sink.pos(i));
                            }
                            i += 1;
                            state = if is_obj { State::Key } else { State::Value };
                        }
                        (Some(b']'), false) => {
                            stack.pop();
                            i += 1;
                        }
                        (Some(b'}'), true) => {
                            end_member(members, sink.pos(i));
                            stack.pop();
                            close_object(&mut sink, i, top.members as usize, members, keybuf, scratch)?;
                            i += 1;
                        }
                        (None, _) => return fail(i, EOF),
                        (Some(_), true) => return fail(i, "expected ',' or '}'"),
                        (Some(_), false) => return fail(i, "expected ',' or ']'"),
                    }
                }
            }
        }
        sink.flush(i, i);
        let rest = skip_ws(input, i);
        if rest != input.len() {
            return fail(rest, "trailing characters");
        }
        Ok(())
    }
}

fn needs_rewrite(flags: u8, escape_unicode: bool) -> bool {
    flags & F_ESCAPE != 0 || (escape_unicode && flags & F_NON_ASCII != 0)
}

/// Records where the last member of the innermost object ends in the output.
fn end_member(members: &mut [Member], out_end: u32) {
    if let Some(m) = members.last_mut() {
        m.out_end = out_end;
    }
}

/// Closes the object whose members are `members[first..]` (its `}` is at input offset
/// `close`): rejects duplicate keys and, unless the members already came in order, rewrites
/// them in `out` sorted by key. Nothing moves for an object that arrives sorted.
fn close_object(
    sink: &mut Sink<'_>,
    close: usize,
    first: usize,
    members: &mut Vec<Member>,
    keybuf: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), Error> {
    let input = sink.input;
    let key = |m: &Member| -> &[u8] {
        let src = if m.decoded { keybuf } else { input };
        &src[m.start as usize..m.end as usize]
    };
    let cmp = |x: &Member, y: &Member| match x.prefix.cmp(&y.prefix) {
        Ordering::Equal => key(x).cmp(key(y)),
        o => o,
    };
    let ms = &mut members[first..];
    if ms.windows(2).all(|w| cmp(&w[0], &w[1]) == Ordering::Less) {
        members.truncate(first);
        return Ok(());
    }
    // In input order the members cover out[from..to], separated by commas.
    let base = sink.base;
    let (from, to) = (ms[0].out_start as usize, ms[ms.len() - 1].out_end as usize);
    let order = |x: &Member, y: &Member| cmp(x, y).then(x.quote.cmp(&y.quote));
    if ms.len() <= 16 {
        // Typical objects are small: a plain insertion sort beats the general sort here.
        for k in 1..ms.len() {
            let m = ms[k];
            let mut j = k;
            while j > 0 && order(&ms[j - 1], &m) == Ordering::Greater {
                ms[j] = ms[j - 1];
                j -= 1;
            }
            ms[j] = m;
        }
    } else {
        ms.sort_unstable_by(order);
    }
    // Report the earliest second occurrence of any key.
    let mut dup: Option<u32> = None;
    for w in ms.windows(2) {
        if cmp(&w[0], &w[1]) == Ordering::Equal {
            dup = Some(dup.map_or(w[1].quote, |d| d.min(w[1].quote)));
        }
    }
    if let Some(at) = dup {
        return fail(at as usize, "duplicate key");
    }
    sink.flush(close, close);
    let out = &mut *sink.out;
    scratch.clear();
    scratch.extend_from_slice(&out[base + from..base + to]);
    let mut pos = base + from;
    for (k, m) in ms.iter().enumerate() {
        if k > 0 {
            out[pos] = b',';
            pos += 1;
        }
        let (a, b) = (m.out_start as usize - from, m.out_end as usize - from);
        out[pos..pos + (b - a)].copy_from_slice(&scratch[a..b]);
        pos += b - a;
    }
    members.truncate(first);
    Ok(())
}

/// The JSON text of the value at an RFC 6901 `pointer` in `json`, exactly
/// as written (numbers keep their digits: nothing is read as a float).
/// `None` when the document does not parse or has no value there; a JSON
/// `null` there is `Some("null")`.
pub fn pointer<'a>(json: &'a [u8], pointer: &str) -> Option<&'a str> {
    use serde_json::value::RawValue;
    let mut value: &RawValue = serde_json::from_slice(json).ok()?;
    if !pointer.is_empty() {
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = token.replace("~1", "/").replace("~0", "~");
            let text = value.get().trim_start();
            value = if text.starts_with('{') {
                let members: std::collections::HashMap<String, &RawValue> = serde_json::from_str(value.get()).ok()?;
                members.get(&token).copied()?
            } else if text.starts_with('[') {
                let index: usize = token.parse().ok()?;
                let items: Vec<&RawValue> = serde_json::from_str(value.get()).ok()?;
                items.get(index).copied()?
            } else {
                return None;
            };
        }
    }
    Some(value.get().trim())
}

/// Convenience: fresh Canonicalizer, returns a new Vec.
pub fn canonicalize(input: &[u8], opts: &Options) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    Canonicalizer::new().encode(input, opts, &mut out)?;
    Ok(out)
}

fn key_prefix(key: &[u8]) -> u64 {
    if let Some(&b) = key.first_chunk::<8>() {
        return u64::from_be_bytes(b);
    }
    // Shorter keys, zero-padded (a variable-length copy would call memcpy for every key).
    key.iter()
        .enumerate()
        .fold(0, |v, (k, &c)| v | u64::from(c) << (56 - 8 * k))
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

/// Index of the first byte at or after `i` that is a backslash or, with `escape_unicode`,
/// non-ASCII (eight bytes at a time); `raw.len()` if there is none.
fn next_rewrite(raw: &[u8], mut i: usize, escape_unicode: bool) -> usize {
    let high = if escape_unicode { HI } else { 0 };
    while let Some(chunk) = raw.get(i..i + 8).and_then(|c| c.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let zero = (w ^ (LO * 0x5C)).wrapping_sub(LO) & !(w ^ (LO * 0x5C));
        let m = (zero | w & high) & HI;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = raw.get(i) {
        if c == b'\\' || (escape_unicode && c >= 0x80) {
            return i;
        }
        i += 1;
    }
    i
}

/// Writes validated string content `raw` (without its quotes) in canonical form, quoted.
fn write_string(raw: &[u8], escape_unicode: bool, out: &mut Vec<u8>) {
    out.push(b'"');
    let mut run = 0;
    loop {
        let i = next_rewrite(raw, run, escape_unicode);
        out.extend_from_slice(&raw[run..i]);
        if i == raw.len() {
            break;
        }
        let (cp, len) = if raw[i] == b'\\' {
            decode_escape(raw, i)
        } else {
            decode_utf8(raw, i)
        };
        write_char(cp, escape_unicode, out);
        run = i + len;
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests;
