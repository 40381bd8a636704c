//! Property checks shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and
//! the corpus replay test (`tests/fuzz_corpus.rs`). Each function takes
//! arbitrary bytes, runs one stage the way the gateway does, and panics only
//! when a property is violated (never on merely invalid input). No I/O, no
//! clock, no network. Hidden from the docs: not part of the gateway's API.

mod canonical;
mod config;
mod template;
mod webhook;

pub use canonical::canonical;
pub use config::config;
pub use template::template;
pub use webhook::webhook;

/// The targets, named as their fuzz targets and corpus directories.
pub const TARGETS: [&str; 4] = ["canonical", "template", "config", "webhook"];

/// Splits `data` at NUL bytes into at most `n` fields; the last field keeps
/// any further NULs, missing fields are empty.
fn fields<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    for (slot, field) in out.iter_mut().zip(data.splitn(N, |&b| b == 0)) {
        *slot = field;
    }
    out
}
