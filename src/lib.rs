//! signgate: a signing egress gateway for payment-provider APIs.
//!
//! Internal services send plain HTTP; signgate decides whether the caller may
//! send it, canonicalizes the body, signs it with a secret it holds, and
//! forwards it over verified TLS from a fixed egress address.
//!
//! ```text
//! app ──plain HTTP──▶ listener ─▶ proxy::pipeline ─▶ upstream ──TLS, signed──▶ provider
//!                                  admit · route · authorize · switch · limit · body
//!                                  · canonicalize · claim · amounts · credential · sign
//! provider ──webhook──▶ listener ─▶ proxy (webhook branch) ─▶ inbox ─▶ delivery ─▶ app
//! ```
//!
//! `app` is the composition root; `state` is what the stages share. The
//! order of the pipeline's steps is described once, in ARCHITECTURE.md, and
//! read in code in [`proxy`]'s `pipeline` function. Every refusal is a
//! [`proxy::GatewayError`], mapped in one place to status, code and message.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod allowlist;
pub(crate) mod amount_guard;
mod app;
pub(crate) mod audit;
pub mod canonical;
mod certs;
pub mod cli;
pub mod config;
pub(crate) mod dedup;
mod delivery;
pub mod devtools;
mod egress_ip;
pub mod fault;
pub(crate) mod fleet;
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
pub mod money;
mod permit;
pub mod preflight;
pub(crate) mod proxy;
pub mod ratelimit;
mod reflect;
pub(crate) mod router;
mod sdnotify;
pub mod secrets;
pub mod sign;
mod state;
pub(crate) mod statedb;
pub(crate) mod switch;
pub mod tls;
pub(crate) mod trace;
pub mod upstream;
pub(crate) mod webhook;

pub use app::{run, start, Options, Running};
pub use config::Config;
