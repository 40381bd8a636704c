//! Test-only fault injection, compiled in only with the cargo feature
//! `fault-injection` (off by default; the crate's own tests turn it on
//! through a self dev-dependency, so `cargo build --release` never has it).
//! A request carrying `x-signgate-fault: panic` makes the pipeline panic
//! after routing, so the hardening suite can prove that a panic costs that
//! one request a 500 `internal_error` and nothing else. The start-up log and
//! `signgate --version` say when it is compiled in.

use http::HeaderMap;

/// The request header that asks for a fault.
pub const HEADER: &str = "x-signgate-fault";

/// `true`: this binary was built with the `fault-injection` feature.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// Panic if the request asks for it (`x-signgate-fault: panic`).
#[cfg(feature = "fault-injection")]
pub fn inject(headers: &HeaderMap) {
    if headers.get(HEADER).is_some_and(|v| v.as_bytes() == b"panic") {
        panic!("fault injection: a panic requested by the {HEADER} header");
    }
}

/// Without the feature: nothing, ever.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn inject(_headers: &HeaderMap) {}
