//! signgate: a signing egress gateway for payment-provider APIs.
//!
//! Internal services send plain HTTP; signgate decides whether the caller may
//! send it, canonicalizes the body, signs it with a secret it holds, and
//! forwards it over verified TLS from a fixed egress address.
//!
//! ```text
//! accept (TCP, conn limit) ─ TLS/mTLS (optional) ─ HTTP/1.1 + HTTP/2   listener.rs, tls.rs
//!   → client allowlist ([access])        403 ip_not_allowed              allowlist.rs
//!   → path check, route match            400 invalid_path, 404 no_route  router.rs
//!   → method                             405 method_not_allowed
//!   → route allowlist / mTLS identity    403 ip_not_allowed / identity_not_allowed
//!   → rate limits: client, route, global 429 rate_limited + Retry-After   ratelimit.rs
//!   → read body under max_body_bytes     413 body_too_large, 408, 415
//!   → canonicalize (scheme)              400 invalid_json                canonical.rs
//!   → duplicate guard (route)            409 duplicate_request           dedup.rs
//!   → credential                         503 credential_unavailable      secrets/
//!   → sign: timestamp, HMAC              (last, and again on a retry)    sign.rs
//!   → header hygiene                     client auth/hop-by-hop removed  proxy/headers.rs
//!   → upstream: pooled, TLS-verified, bound to egress.source_addr        upstream.rs
//!                                        502 upstream_unreachable / upstream_tls,
//!                                        504 upstream_timeout
//!   → response streamed back with x-request-id
//! ```
//! Webhooks (`[[webhook]]`, exact path, POST) take their own path: verify
//! signature and timestamp, de-duplicate, commit to the on-disk inbox, 200;
//! a worker delivers to the internal app (webhook/).
//!
//! The pipeline itself is one function: [`proxy::handle`]. Every refusal is
//! a [`proxy::GatewayError`], mapped in one place to status, code and message.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod allowlist;
mod app;
pub(crate) mod audit;
pub mod canonical;
pub mod cli;
pub mod config;
pub(crate) mod dedup;
mod delivery;
pub mod devtools;
pub mod fault;
/// Property checks shared by the cargo-fuzz targets and the corpus replay test.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod headers;
pub mod hygiene;
pub(crate) mod identity;
pub(crate) mod listener;
pub mod logging;
pub(crate) mod metrics;
#[cfg(test)]
mod module_graph;
pub mod preflight;
pub(crate) mod proxy;
pub mod ratelimit;
mod reflect;
pub(crate) mod router;
pub mod secrets;
pub mod sign;
mod state;
pub mod tls;
pub mod upstream;
pub(crate) mod webhook;

pub use app::{run, start, Running};
pub use config::Config;
