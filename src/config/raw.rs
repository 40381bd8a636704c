//! The serde mirror of `gateway.toml`: every key optional, no semantics.
//!
//! Unknown keys are not rejected here but collected by `serde_ignored` in
//! `load.rs`, so that *all* of them are reported at once. Conversion into real
//! types (addresses, CIDRs, durations, header names) happens in `validate.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawLog {
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawListener {
    pub addr: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub client_ca: Option<String>,
    pub max_connections: Option<u64>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub body_idle_timeout_ms: Option<u64>,
    pub write_idle_timeout_ms: Option<u64>,
    pub max_uri_bytes: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
    pub shutdown_delay_ms: Option<u64>,
    pub linger_ms: Option<u64>,
    pub linger_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub h2_max_concurrent_streams: Option<u64>,
    pub h2_max_pending_resets: Option<u64>,
    pub allow_plaintext: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub addr: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAccess {
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct RawQuota {
    pub rate: Option<u64>,
    pub burst: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLimits {
    pub global: Option<RawQuota>,
    pub per_client: Option<RawQuota>,
    pub per_client_max_keys: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawEgress {
    pub source_addr: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub response_idle_timeout_ms: Option<u64>,
    pub pool_idle_per_host: Option<u64>,
    pub max_connections_per_host: Option<u64>,
    pub allow_plain_http: Option<bool>,
    pub expect_source_ip: Option<String>,
    pub source_check_url: Option<String>,
    pub source_check_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAudit {
    pub path: Option<String>,
    pub hash_chain: Option<bool>,
    pub max_bytes: Option<u64>,
    pub max_files: Option<u64>,
    pub queue: Option<u64>,
    pub wait_ms: Option<u64>,
    pub batch_ms: Option<u64>,
    pub reserve_bytes: Option<u64>,
    pub redact_query_keys: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawState {
    pub dir: Option<String>,
}

/// `[fleet]`. `redis_url` may carry a password: this type has no `Debug`
/// of its own fields beyond what `Deserialize` needs, and is never logged.
#[derive(Default, Deserialize)]
pub struct RawFleet {
    pub redis_url: Option<String>,
    pub redis_password_file: Option<String>,
    pub redis_ca_file: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout_ms: Option<u64>,
    pub instance: Option<String>,
    pub expected_instances: Option<u64>,
    pub limits_on_error: Option<String>,
    pub route_switch_poll_ms: Option<u64>,
}

impl std::fmt::Debug for RawFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawFleet").finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTracing {
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawCredential {
    pub source: Option<String>,
    // env
    pub api_key_env: Option<String>,
    pub secret_env: Option<String>,
    // file
    pub path: Option<String>,
    pub poll_ms: Option<u64>,
    // file and vault
    pub api_key_field: Option<String>,
    pub secret_field: Option<String>,
    // vault
    pub vault_addr: Option<String>,
    pub vault_mount: Option<String>,
    pub vault_path: Option<String>,
    pub vault_auth: Option<String>,
    pub vault_role_id_file: Option<String>,
    pub vault_secret_id_file: Option<String>,
    pub vault_token_file: Option<String>,
    pub vault_ca_file: Option<String>,
    pub vault_max_stale_secs: Option<u64>,
    pub vault_timeout_ms: Option<u64>,
    pub refresh_secs: Option<u64>,
    // vault_transit (with the vault connection and auth keys above)
    pub transit_mount: Option<String>,
    pub transit_key: Option<String>,
    pub transit_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoute {
    pub name: Option<String>,
    pub match_prefix: Option<String>,
    pub strip_prefix: Option<bool>,
    pub upstream: Option<String>,
    pub credential: Option<String>,
    pub credential_map: Option<Vec<RawCredentialRule>>,
    pub scheme: Option<String>,
    pub methods: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    pub allow_identities: Option<Vec<String>>,
    pub limit: Option<RawQuota>,
    pub duplicate_key: Option<String>,
    pub duplicate_window_secs: Option<u64>,
    pub duplicate_capacity: Option<u64>,
    pub max_inflight: Option<u64>,
    pub queue_timeout_ms: Option<u64>,
    pub forward_traceparent: Option<bool>,
    pub honor_retry_after: Option<bool>,
    pub amount_guard: Option<RawAmountGuard>,
}

/// A money value in the configuration: a string (`"50000.00"`, exact) or a
/// whole number; a TOML float is read only to be refused with a hint.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDecimal {
    Text(String),
    Integer(i64),
    Float(f64),
}

/// `[route.amount_guard]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawAmountGuard {
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub minor_units: Option<u64>,
    pub max_per_request: Option<RawDecimal>,
    pub max_per_day: Option<RawDecimal>,
    pub max_count_per_day: Option<u64>,
    pub per: Option<String>,
}

/// One entry of a route's `credential_map`.
#[derive(Debug, Default, Deserialize)]
pub struct RawCredentialRule {
    pub client: Option<String>,
    pub identity: Option<String>,
    pub credential: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawWebhook {
    pub name: Option<String>,
    pub match_path: Option<String>,
    pub credential: Option<String>,
    pub scheme: Option<String>,
    pub tolerance_secs: Option<u64>,
    pub forward_to: Option<String>,
    pub verify_canonical: Option<bool>,
    pub dedup_keys: Option<Vec<String>>,
    pub dedup_window_secs: Option<u64>,
    pub allow: Option<Vec<String>>,
    pub max_attempts: Option<u64>,
    pub rotation_grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawScheme {
    pub message: Option<String>,
    pub body: Option<String>,
    pub encoding: Option<String>,
    pub api_key_header: Option<String>,
    pub timestamp_header: Option<String>,
    pub signature_header: Option<String>,
    pub timestamp_unit: Option<String>,
    pub escape_unicode: Option<bool>,
    pub empty_body: Option<String>,
    pub max_json_depth: Option<u64>,
}

/// The whole file. Sections are deserialized one by one (see `load.rs`) so a
/// type error in one section does not hide the errors of the others.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub log: RawLog,
    pub listener: RawListener,
    pub admin: RawAdmin,
    pub access: Option<RawAccess>,
    pub limits: RawLimits,
    pub egress: RawEgress,
    pub audit: RawAudit,
    pub state: RawState,
    pub tracing: Option<RawTracing>,
    pub fleet: Option<RawFleet>,
    pub credentials: BTreeMap<String, RawCredential>,
    pub routes: Vec<RawRoute>,
    pub webhooks: Vec<RawWebhook>,
    pub schemes: BTreeMap<String, RawScheme>,
}
