//! The hardening suite: one test per scenario of the table in
//! `docs/security.md` (A hostile clients, B faulty upstreams, C secrets, D
//! process and host), each injecting its fault against the real binary and
//! then asserting the four after-fault conditions through
//! [`harness::Rig::after_fault`].

#![allow(clippy::unwrap_used, clippy::disallowed_types)] // test code: a failed step panics

#[path = "../support/mod.rs"]
mod support;

#[allow(dead_code)] // shared by every scenario module; not each uses all of it
mod harness;

mod clients;
mod faulty;
mod process;
mod refusals;
mod secrets;
mod upstreams;
