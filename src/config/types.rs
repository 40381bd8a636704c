//! The validated configuration types and their defaults (named constants
//! with units). Built only by `validate`; read by everything else.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme as UriScheme};
use http::{HeaderValue, Method, Uri};
use ipnet::IpNet;

use crate::sign::Scheme;

pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_millis(5_000);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(60_000);
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_millis(20_000);
/// On SIGTERM, how long the listener keeps accepting with readiness already
/// off (load balancers and meshes take the endpoint out meanwhile).
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// Largest `shutdown_delay_ms`: a shutdown must stay bounded.
pub const MAX_SHUTDOWN_DELAY: Duration = Duration::from_millis(300_000);
/// Longest pause allowed while a client sends its body (slow-upload cut-off).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_millis(15_000);
/// Longest gap between two pieces of a request body (nginx-style gap timer).
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Longest time a response write may stay blocked on a client that does not
/// read (nginx `send_timeout` is a 60 s gap timer).
pub const DEFAULT_WRITE_IDLE_TIMEOUT: Duration = Duration::from_millis(30_000);
/// After an answer sent before the request body was read: how long the
/// unread body is still read and discarded (nginx's lingering close), so the
/// client reads its answer instead of a connection reset.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5_000);
/// ... and how many bytes of it at most.
pub const DEFAULT_LINGER_BYTES: u64 = 8 * 1024 * 1024;
/// Longest request target (path and query) accepted; longer gets 414.
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;
/// HTTP/2: streams a client may have open at once on one connection.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2: streams reset by the client before the gateway handled them,
/// held at once, past which the connection gets GOAWAY (rapid reset,
/// CVE-2023-44487).
pub const DEFAULT_H2_MAX_PENDING_RESETS: usize = 20;
/// Upper bound for `scheme.NAME.max_json_depth`.
pub const MAX_JSON_DEPTH: usize = 1024;
/// Envoy's default header-count limit.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Envoy's default header-size limit is 60 KiB; hyper needs at least 8 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3_000);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(15_000);
/// Longest pause in an upstream response body before the stream is cut.
pub const DEFAULT_RESPONSE_IDLE_TIMEOUT: Duration = Duration::from_millis(15_000);
pub const DEFAULT_POOL_IDLE_PER_HOST: usize = 64;
/// `egress.source_check_interval_secs`: how often the egress address is checked.
pub const DEFAULT_SOURCE_CHECK_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_AUDIT_PATH: &str = "audit/signgate.jsonl";
pub const DEFAULT_STATE_DIR: &str = "state";
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub const DEFAULT_AUDIT_MAX_FILES: usize = 10;
pub const DEFAULT_AUDIT_QUEUE: usize = 8192;
pub const DEFAULT_AUDIT_WAIT: Duration = Duration::from_millis(1000);
/// `audit.batch_ms`: see docs/operations.md#audit-log (the measurement
/// behind the default is in docs/performance.md).
pub const DEFAULT_AUDIT_BATCH: Duration = Duration::from_millis(5);
/// The longest `audit.batch_ms`: a record is durable at most this late.
pub const MAX_AUDIT_BATCH_MS: u64 = 1000;
/// `audit.reserve_bytes` defaults to this many bytes per queue slot: a
/// generous record (a typical one is 400-600 bytes).
pub const DEFAULT_AUDIT_RESERVE_PER_RECORD: u64 = 1024;
pub const DEFAULT_FILE_POLL: Duration = Duration::from_millis(1_000);
pub const DEFAULT_VAULT_REFRESH: Duration = Duration::from_secs(300);
/// `vault_timeout_ms`: budget of one Vault refresh (login, renewal and read).
pub const DEFAULT_VAULT_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Largest accepted `vault_timeout_ms`: a refresh must stay bounded.
pub const MAX_VAULT_TIMEOUT: Duration = Duration::from_millis(60_000);
/// `transit_mount`: where the Transit secrets engine is mounted.
pub const DEFAULT_TRANSIT_MOUNT: &str = "transit";
/// `transit_timeout_ms`: budget of one HMAC (or verify) call to Transit,
/// made while a request waits.
pub const DEFAULT_TRANSIT_TIMEOUT: Duration = Duration::from_millis(2_000);
pub const DEFAULT_API_KEY_FIELD: &str = "api_key";
pub const DEFAULT_SECRET_FIELD: &str = "secret_key";
pub const DEFAULT_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(86_400);
/// Transaction references remembered per route by the duplicate guard.
pub const DEFAULT_DUPLICATE_CAPACITY: usize = 100_000;
/// Upstream calls in flight per route (pool-exhaustion bound).
pub const DEFAULT_MAX_INFLIGHT: usize = 512;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_millis(1_000);
pub const DEFAULT_WEBHOOK_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 10;
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(3_600);
/// `[tracing].sample_ratio`: the share of requests traced when no caller
/// decided (errors are always exported).
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// `[tracing].service_name`: the `service.name` of the exported spans.
pub const DEFAULT_SERVICE_NAME: &str = "signgate";
/// `[fleet].key_prefix`.
pub const DEFAULT_FLEET_KEY_PREFIX: &str = "signgate";
/// `[fleet].timeout_ms`: one Redis round trip's budget.
pub const DEFAULT_FLEET_TIMEOUT: Duration = Duration::from_millis(50);
pub const MAX_FLEET_TIMEOUT: Duration = Duration::from_millis(5_000);
/// `[fleet].route_switch_poll_ms`: how often each instance reads the route
/// switches from Redis (the bound on how long a change made through another
/// instance takes to hold here, plus one `timeout_ms`).
pub const DEFAULT_ROUTE_SWITCH_POLL: Duration = Duration::from_millis(1_000);
pub const MIN_ROUTE_SWITCH_POLL: Duration = Duration::from_millis(100);
pub const MAX_ROUTE_SWITCH_POLL: Duration = Duration::from_millis(60_000);
/// The longest provider cooldown a `Retry-After` can impose.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3_600);
/// Bound of the per-client rate-limit key store (idle keys are swept first).
pub const DEFAULT_PER_CLIENT_MAX_KEYS: usize = 100_000;
/// `amount_guard.minor_units`: decimal places of an amount (cents, paise).
pub const DEFAULT_MINOR_UNITS: u8 = 2;

/// The validated configuration. Cheap to clone pieces of; built once per load.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub log: LogConfig,
    pub listener: ListenerConfig,
    pub admin: AdminConfig,
    pub access: AccessConfig,
    pub limits: LimitsConfig,
    pub egress: EgressConfig,
    pub audit: AuditConfig,
    pub state: StateConfig,
    /// `[tracing]`: spans exported over OTLP; `None` records nothing.
    pub tracing: Option<TracingConfig>,
    /// `[fleet]`: state shared through Redis by several gateways; `None`
    /// keeps everything per instance.
    pub fleet: Option<FleetConfig>,
    pub credentials: BTreeMap<String, CredentialSpec>,
    pub schemes: BTreeMap<String, Scheme>,
    pub routes: Vec<RouteConfig>,
    pub webhooks: Vec<WebhookConfig>,
}

impl Config {
    /// Whether the amount guard keeps its totals on this host: a route has
    /// an `amount_guard` and there is no `[fleet]` (whose Redis keeps them).
    pub fn needs_amount_store(&self) -> bool {
        self.fleet.is_none() && self.routes.iter().any(|r| r.amount_guard.is_some())
    }
}

/// `[log]`: how log lines are written (the level comes from `SIGNGATE_LOG`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// `[log].format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colour only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (see docs/operations.md#logs).
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Option<ServerTlsConfig>,
    pub max_connections: usize,
    /// Whole request head must arrive within this (slowloris cut-off).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    pub max_body_bytes: u64,
    /// The whole body must arrive within this after the head (total deadline).
    pub body_timeout: Duration,
    /// Longest pause between two pieces of the body (gap timer).
    pub body_idle_timeout: Duration,
    /// A response write blocked this long on a client that does not read
    /// closes the connection.
    pub write_idle_timeout: Duration,
    /// Longest request target (path + query) in bytes; longer gets 414.
    pub max_uri_bytes: usize,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// On SIGTERM, how long the listener keeps accepting and serving after
    /// readiness turned 503, before the drain starts (0: drain at once).
    pub shutdown_delay: Duration,
    /// Lingering after an early answer: time and bytes (0 ms: no linger).
    pub linger: Duration,
    pub linger_bytes: u64,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a client CA, clients must present a certificate chained to it (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `None` when the admin listener is disabled (`addr = ""`).
    pub addr: Option<SocketAddr>,
    /// The Bearer token every admin endpoint but `/metrics`, `/healthz` and
    /// `/readyz` requires. Without it those endpoints are served only on a
    /// loopback admin address.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    pub allow: Vec<IpNet>,
}

/// A GCRA quota: `rate` requests per second sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub rate: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub global: Option<Quota>,
    pub per_client: Option<Quota>,
    pub per_client_max_keys: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EgressConfig {
    /// `None` = let the OS pick (`0.0.0.0`).
    pub source_addr: Option<IpAddr>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Longest gap between two pieces of an upstream response body (after
    /// the head); past it the response is cut and counted.
    pub response_idle_timeout: Duration,
    pub pool_idle_per_host: usize,
    /// At most this many connections open (or opening) to one upstream
    /// host; a request beyond waits up to `connect_timeout` for one, then
    /// `504 upstream_timeout`. 0: no cap (the default).
    pub max_connections_per_host: usize,
    pub allow_plain_http: bool,
    /// `expect_source_ip` + `source_check_url`: the egress-IP self-check.
    pub source_check: Option<SourceCheck>,
}

/// The egress-IP self-check: the address the provider sees, asked of an
/// echo endpoint through the egress client, must be `expect`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceCheck {
    /// `expect_source_ip`: the address the provider has whitelisted.
    pub expect: IpAddr,
    /// `source_check_url`: answers the caller's address, as text or as
    /// JSON `{"ip": "…"}`.
    pub url: Uri,
    /// `source_check_interval_secs`.
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub sink: AuditSink,
    pub hash_chain: bool,
    /// Rotate the file when it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest … `path.N` oldest).
    pub max_files: usize,
    /// Records admitted and not yet written (each request holds a place
    /// from its admission until its record is written).
    pub queue: usize,
    /// How long a request waits for room in a full queue before it is refused
    /// (503 `audit_unavailable`): no request is forwarded unaudited.
    pub wait: Duration,
    /// How long a batch of records waits for more after its first before it
    /// is written and synced (one `write` and one `fdatasync` per batch).
    pub batch: Duration,
    /// Disk space kept allocated past the end of the log file, so that the
    /// records of the requests already admitted (at most `queue`) can be
    /// written when the file system fills up; 0: none.
    pub reserve_bytes: u64,
    /// Query parameters whose values are replaced by `REDACTED` in the record.
    pub redact_query_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub dir: PathBuf,
}

/// `[tracing]`: where and how many request traces go (docs/operations.md#traces).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL, used as is (e.g. `http://127.0.0.1:4318/v1/traces`).
    pub otlp_endpoint: Uri,
    /// 0.0 to 1.0: the share of requests without a caller's sampling
    /// decision whose spans are exported (by trace id).
    pub sample_ratio: f64,
    pub service_name: String,
}

/// Where a credential lives. Never the secret itself.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialSpec {
    pub name: String,
    pub source: SecretSource,
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per config load, never on the hot path
pub enum SecretSource {
    Env {
        api_key_env: String,
        secret_env: String,
    },
    File {
        path: PathBuf,
        api_key_field: String,
        secret_field: String,
        poll: Duration,
    },
    Vault(VaultSpec),
    /// The HMAC is computed by Vault/OpenBao Transit: the secret never
    /// enters the gateway.
    VaultTransit(TransitSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VaultSpec {
    pub addr: Uri,
    pub mount: String,
    pub path: String,
    pub auth: VaultAuth,
    pub ca_file: Option<PathBuf>,
    pub api_key_field: String,
    pub secret_field: String,
    pub refresh: Duration,
    /// `vault_max_stale_secs`: how long the last good secret keeps signing
    /// after refreshes start failing, counted from the last successful read;
    /// past it the credential fails closed (503). `None` (the default): keep
    /// signing with the last good secret for as long as Vault is down.
    pub max_stale: Option<Duration>,
    /// `vault_timeout_ms`: budget of one refresh, every call in it included
    /// (login, renewal, read); a slower Vault counts as a failed refresh.
    pub timeout: Duration,
}

/// `source = "vault_transit"`: the provider's secret is a Transit key of
/// type `hmac`; every signature is `POST {mount}/hmac/{key}/sha2-256`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitSpec {
    pub addr: Uri,
    pub auth: VaultAuth,
    pub ca_file: Option<PathBuf>,
    /// `transit_mount` (default `transit`).
    pub mount: String,
    /// `transit_key`: the name of the key.
    pub key: String,
    /// Where the API key (not a secret to the provider's scheme, but sent
    /// in a header) comes from.
    pub api_key: ApiKeySource,
    /// `refresh_secs`: how often the key's metadata (its latest version)
    /// and the API key are read again.
    pub refresh: Duration,
    /// `vault_timeout_ms`: budget of one refresh (login, renewal, reads).
    pub timeout: Duration,
    /// `transit_timeout_ms`: budget of one HMAC or verify call.
    pub sign_timeout: Duration,
}

/// The API key of a `vault_transit` credential.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiKeySource {
    /// `api_key_env`: an environment variable, read once.
    Env(String),
    /// `vault_mount`/`vault_path`/`api_key_field`: a field of a KV v2 secret.
    Kv { mount: String, path: String, field: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum VaultAuth {
    /// From `token_file`, else the `VAULT_TOKEN` environment variable.
    Token { token_file: Option<PathBuf> },
    AppRole {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
}

/// A parsed `upstream`: scheme and authority are fixed per route; the request
/// can only choose the path below `base_path`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTarget {
    pub scheme: UriScheme,
    pub authority: Authority,
    /// Without a trailing slash; empty for the root.
    pub base_path: String,
    pub host_header: HeaderValue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    /// Without a trailing slash; matches the prefix itself and anything below it.
    pub match_prefix: String,
    pub strip_prefix: bool,
    pub upstream: UpstreamTarget,
    /// `credential`, or `credential_map`: who signs for whom.
    pub credential: RouteCredential,
    pub scheme: String,
    pub methods: Vec<Method>,
    pub allow: Option<Vec<IpNet>>,
    /// With mTLS: the client certificate must carry one of these (typed) identities.
    pub allow_identities: Option<crate::identity::Allowed>,
    pub limit: Option<Quota>,
    pub duplicate_key: Option<String>,
    pub duplicate_window: Duration,
    pub duplicate_capacity: usize,
    /// Requests of this route waiting on the upstream at once; more wait
    /// up to `queue_timeout`, then get 503 `upstream_busy`.
    pub max_inflight: usize,
    pub queue_timeout: Duration,
    /// Send the gateway's own `traceparent` (its upstream span) to the
    /// provider; otherwise the provider gets none.
    pub forward_traceparent: bool,
    /// A provider 429/503 with `Retry-After` puts the route in cooldown
    /// (fleet-wide with `[fleet]`).
    pub honor_retry_after: bool,
    /// `[route.amount_guard]`: payout caps (none: no guard).
    pub amount_guard: Option<AmountGuardConfig>,
}

/// `[route.amount_guard]`: caps on the amounts a route pays out, per
/// request and per UTC day. Amounts are integers of minor units (cents for
/// `minor_units = 2`), parsed exactly from the configuration's decimal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmountGuardConfig {
    /// JSON pointer to the amount in the request body.
    pub amount: String,
    /// JSON pointer to the currency; with it, caps apply per currency.
    pub currency: Option<String>,
    /// Decimal places the provider accepts; an amount with more is refused.
    pub minor_units: u8,
    pub max_per_request: Option<u64>,
    /// Sum of amounts per caller (or per route) per UTC day.
    pub max_per_day: Option<u64>,
    /// Requests per caller (or per route) per UTC day.
    pub max_count_per_day: Option<u64>,
    pub per: AmountPer,
}

impl AmountGuardConfig {
    /// The day caps set, as the `cap` label of the day-use gauge:
    /// `amount` (`max_per_day`), `count` (`max_count_per_day`).
    pub fn day_caps(&self) -> Vec<&'static str> {
        let mut caps = Vec::with_capacity(2);
        if self.max_per_day.is_some() {
            caps.push("amount");
        }
        if self.max_count_per_day.is_some() {
            caps.push("count");
        }
        caps
    }
}

/// `amount_guard.per`: whose day the daily caps count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AmountPer {
    /// Each caller on its own: its mTLS identity, else its address.
    #[default]
    Client,
    /// Every caller of the route together.
    Route,
}

impl AmountPer {
    pub fn label(self) -> &'static str {
        match self {
            AmountPer::Client => "client",
            AmountPer::Route => "route",
        }
    }
}

/// Which credential signs a route's requests.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteCredential {
    /// `credential = "NAME"`: the same for every caller.
    One(String),
    /// `credential_map`: the first entry that matches the caller; a caller
    /// that matches none is refused (`403 no_credential_for_caller`).
    ByCaller(Vec<CredentialRule>),
}

impl RouteCredential {
    /// Every credential the route may sign with, each once, in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            RouteCredential::One(n) => vec![n.as_str()],
            RouteCredential::ByCaller(rules) => {
                let mut out: Vec<&str> = Vec::with_capacity(rules.len());
                for r in rules {
                    if !out.contains(&r.credential.as_str()) {
                        out.push(&r.credential);
                    }
                }
                out
            }
        }
    }

    /// The credential, when it does not depend on the caller.
    pub fn single(&self) -> Option<&str> {
        match self {
            RouteCredential::One(n) => Some(n),
            RouteCredential::ByCaller(_) => None,
        }
    }
}

/// One entry of `credential_map`.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRule {
    pub caller: Caller,
    pub credential: String,
}

/// Who a `credential_map` entry is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// `client = "CIDR"`: the TCP peer address is in it.
    Client(IpNet),
    /// `identity = "uri:…"` or `"dns:…"`: a SAN of the mTLS client certificate.
    Identity(crate::identity::Identity),
}

impl Caller {
    /// Whether a caller with this address and these certificate identities
    /// is the one meant (`ip` normalized: IPv4-mapped IPv6 as IPv4).
    pub fn matches(&self, ip: IpAddr, identities: Option<&[crate::identity::Identity]>) -> bool {
        match self {
            Caller::Client(net) => net.contains(&ip),
            Caller::Identity(want) => identities.is_some_and(|have| have.iter().any(|h| want.matches(h))),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Client(net) => write!(f, "client {net}"),
            Caller::Identity(id) => write!(f, "identity {id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub name: String,
    pub match_path: String,
    pub credential: String,
    pub scheme: String,
    /// Accepted distance of `X-TIMESTAMP` from the local clock, both ways.
    pub tolerance: Duration,
    pub forward_to: Uri,
    pub verify_canonical: bool,
    /// JSON pointers whose values identify an event (joined in order).
    pub dedup_keys: Vec<String>,
    /// How long a seen event key is remembered.
    pub dedup_window: Duration,
    /// Who may post (the provider's addresses or your ingress); default `[access].allow`.
    pub allow: Option<Vec<IpNet>>,
    /// Delivery attempts before an event is parked as failed.
    pub max_attempts: u32,
    /// After a secret rotation, how long the previous version still verifies.
    pub rotation_grace: Duration,
}

/// A secret string in the configuration (the Redis password): compared, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    pub fn new(s: impl Into<String>) -> Self {
        Redacted(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[fleet].limits_on_error`: what the rate limits do while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitsOnError {
    /// Each instance enforces `rate / expected_instances` itself.
    #[default]
    Local,
    /// Refuse (503 `rate_limit_unavailable`).
    Deny,
}

/// Where the Redis password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisPassword {
    /// Given in `redis_url` (kept out of `url`).
    Inline(Redacted),
    /// `redis_password_file`: read at start-up, trailing newline dropped.
    File(PathBuf),
}

/// `[fleet]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://` or `rediss://` URL without its password (safe to show).
    pub url: String,
    pub tls: bool,
    pub password: Option<RedisPassword>,
    /// `redis_ca_file`: the CA that signed the Redis server's certificate
    /// (`rediss://`); without it the system roots.
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub timeout: Duration,
    /// `None`: the host name, read at start-up.
    pub instance: Option<String>,
    pub expected_instances: u32,
    pub limits_on_error: LimitsOnError,
    /// How often the route switches are read from Redis.
    pub route_switch_poll: Duration,
}
