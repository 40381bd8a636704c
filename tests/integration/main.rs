//! The integration tests: one binary, one module per concern, all against
//! real sockets, real TLS, the provider stand-in and (for Vault) a real
//! OpenBao. The harness is `tests/support/`, shared with the hardening suite.
//!
//! - `signing_path`: a request end to end, refusals, upstream failures;
//! - `access`: allowlists, rate limits, inbound TLS and mTLS, connection limits;
//! - `observability`: metric deltas, label cardinality, readiness, the audit log;
//! - `ops`: the real binary: drain on SIGTERM, reload on SIGHUP and `POST /reload`;
//! - `ops_certs`: certificate hot reload (rename, symlink swap, `POST
//!   /reload`, rejected files, the egress client certificate);
//! - `ops_rollout`: `shutdown_delay_ms` across SIGTERM, systemd notifications;
//! - `ops_runtime`: `/log-level`, process and build metrics, completions,
//!   `man`, `SIGNGATE_CONFIG`;
//! - `webhooks`: the verifying receiver, durable delivery, the duplicate guard;
//! - `vault`, `vault_outage`: the Vault source working, and failing;
//! - `cli`: `check`, `sign`, `demo` and the shipped `gateway.toml`;
//! - `certs`: `signgate certs dev` and mTLS on its files;
//! - `deploy`: the artefacts under `deploy/`, checked as data;
//! - `dashboard`: the Grafana dashboard is valid and reads only metrics a
//!   running gateway exports;
//! - `edges`: the real binary's preflight, logs, typed mTLS identities, the
//!   credential-age metric, secrets at rest and path tricks;
//! - `money`: money safety on the real binary: unknown outcomes stay claimed,
//!   a client gone is audited, the authenticated guard release, duplicate
//!   references per endpoint and by their JSON text, webhook keys that
//!   cannot collide, refusals without `100 Continue`;
//! - `traces`: `[tracing]` against a real OTLP/HTTP receiver decoding the
//!   protobuf: spans and their parents, the caller's trace continued, what
//!   the provider sees, errors exported at ratio 0;
//! - `fleet`: three real gateway processes sharing one real `redis-server`:
//!   limits, the duplicate guard, webhook de-duplication, provider cooldown
//!   and reflections fleet-wide; Redis killed and slowed;
//! - `audit`: the audit log against a full disk, a torn line, a missing head
//!   file and umask 022, with the real binary;
//! - `beyond_transit`: `vault_transit` credentials against a real OpenBao
//!   (signing, short secrets, failures, webhooks, explain, the latency);
//! - `beyond_callers`: `credential_map`, by loopback address and by mTLS
//!   identity;
//! - `beyond_explain`: `signgate explain`, the real binary;
//! - `beyond_egress`: the egress-IP self-check against a loopback echo;
//! - `switch`: the routes' kill switches: the admin API and `signgate
//!   route`, `503 route_disabled` to the in-house client and curl (HTTP/1.1,
//!   HTTP/2 over TLS), restart and reload, two gateways on one Redis.
//!
//! Run one concern with `cargo test --test integration -- vault::`.

#![allow(clippy::unwrap_used)] // test helpers panic on failed setup

#[path = "../support/mod.rs"]
mod support;

mod access;
mod audit;
mod beyond_callers;
mod beyond_egress;
mod beyond_explain;
mod beyond_transit;
mod certs;
mod cli;
mod dashboard;
mod deploy;
mod edges;
mod fleet;
mod money;
mod observability;
mod ops;
mod ops_certs;
mod ops_rollout;
mod ops_runtime;
mod signing_path;
mod switch;
mod traces;
mod vault;
mod vault_outage;
mod webhooks;
