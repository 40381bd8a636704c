//! `canonical`: the JSON canonicalizer, with both escape modes.

use std::cell::RefCell;

use crate::canonical::{canonicalize, Canonicalizer, Options};

thread_local! {
    /// Reused across inputs like the proxy's per-worker canonicalizer, so
    /// state left behind by one input would show up in the next.
    static REUSED: RefCell<Canonicalizer> = RefCell::new(Canonicalizer::new());
}

/// What `encode` must append after, and leave alone on error.
const PREFIX: &[u8] = b"prefix:";

/// Rejections that serde_json (last key wins, its own depth limit) need not share.
const CANONICAL_ONLY: [&str; 3] = ["duplicate key", "nesting too deep", "input too large"];

/// Properties: a fresh and a reused canonicalizer agree; errors are the typed
/// error with an offset inside the input; a success is valid UTF-8 JSON that
/// means what the input meant (per serde_json), is at most 3x the input (1x
/// without escaping), and canonicalizes to itself; both escape modes accept the
/// same inputs and convert into each other; serde_json rejects what we reject.
pub fn canonical(data: &[u8]) {
    let modes = [true, false].map(|escape_unicode| {
        let opts = Options {
            escape_unicode,
            ..Options::default()
        };
        let fresh = canonicalize(data, &opts);
        let mut out = PREFIX.to_vec();
        let reused = REUSED.with(|c| c.borrow_mut().encode(data, &opts, &mut out));
        match (&fresh, reused) {
            (Ok(c), Ok(())) => {
                assert_eq!(&out[PREFIX.len()..], &c[..], "a reused canonicalizer gives other bytes");
                check_output(data, c, &opts);
            }
            (Err(e), Err(e2)) => {
                assert_eq!(*e, e2, "a reused canonicalizer gives another error");
                assert_eq!(out, PREFIX, "encode left output behind on error");
                assert!(e.offset <= data.len(), "error offset {} past the input", e.offset);
                assert!(!e.reason.is_empty());
            }
            (f, r) => panic!("fresh {f:?} but reused {r:?}"),
        }
        (opts, fresh)
    });
    let [(esc, escaped), (raw, unescaped)] = modes;
    match (&escaped, &unescaped) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                canonicalize(a, &raw).as_ref(),
                Ok(b),
                "unescaping the escaped form differs"
            );
            assert_eq!(
                canonicalize(b, &esc).as_ref(),
                Ok(a),
                "escaping the unescaped form differs"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the escape modes reject differently"),
        (a, b) => panic!("escape_unicode decides validity: {a:?} vs {b:?}"),
    }
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match (&escaped, theirs) {
        (Err(e), Ok(_)) if !CANONICAL_ONLY.contains(&e.reason) => {
            panic!("rejected ({e}) what serde_json accepts")
        }
        (Ok(out), Ok(theirs)) => {
            let ours = serde_json::from_slice::<serde_json::Value>(out).expect("output parses where input did");
            assert_eq!(ours, theirs, "the canonical form means something else");
        }
        (Ok(_), Err(e)) => assert!(serde_json_limit(&e), "accepted what serde_json rejects: {e}"),
        _ => {}
    }
}

/// serde_json errors that do not mean invalid JSON: its depth limit (127
/// levels against our 128) and numbers beyond f64 (we keep number text).
fn serde_json_limit(e: &serde_json::Error) -> bool {
    let m = e.to_string();
    m.starts_with("recursion limit exceeded") || m.starts_with("number out of range")
}

fn check_output(input: &[u8], out: &[u8], opts: &Options) {
    let bound = if opts.escape_unicode {
        3 * input.len()
    } else {
        input.len()
    };
    assert!(out.len() <= bound, "{} bytes out of {} in", out.len(), input.len());
    assert!(std::str::from_utf8(out).is_ok(), "output is not UTF-8");
    if opts.escape_unicode {
        assert!(out.is_ascii(), "escaped output is not ASCII");
    }
    // Idempotence also proves the output is compact and sorted: a second pass
    // would drop any whitespace and reorder any unsorted object.
    let again = canonicalize(out, opts);
    assert_eq!(again.as_deref(), Ok(out), "canonical form is not a fixed point");
    match serde_json::from_slice::<serde::de::IgnoredAny>(out) {
        Ok(_) => {}
        Err(e) => assert!(serde_json_limit(&e), "output is not JSON: {e}"),
    }
}
