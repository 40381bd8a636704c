//! From the serde mirror to typed configuration. Every rule that can be
//! checked without I/O is checked here, and every violation is collected
//! (never just the first), each naming its key, the value and what is expected.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme as UriScheme};
use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;

use super::error::{ConfigError, ConfigErrors};
use super::raw::*;
use crate::sign::{self, Scheme};

pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_millis(5_000);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(60_000);
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_millis(20_000);
/// Longest pause allowed while a client sends its body (slow-upload cut-off).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_millis(15_000);
/// Envoy's default header-count limit.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Envoy's default header-size limit is 60 KiB; hyper needs at least 8 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3_000);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(15_000);
pub const DEFAULT_POOL_IDLE_PER_HOST: usize = 64;
pub const DEFAULT_AUDIT_PATH: &str = "audit/signgate.jsonl";
pub const DEFAULT_STATE_DIR: &str = "state";
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 100 * 1024 * 1024;
pub const DEFAULT_AUDIT_MAX_FILES: usize = 10;
pub const DEFAULT_AUDIT_QUEUE: usize = 8192;
pub const DEFAULT_AUDIT_WAIT: Duration = Duration::from_millis(1000);
pub const DEFAULT_FILE_POLL: Duration = Duration::from_millis(1_000);
pub const DEFAULT_VAULT_REFRESH: Duration = Duration::from_secs(300);
pub const DEFAULT_API_KEY_FIELD: &str = "api_key";
pub const DEFAULT_SECRET_FIELD: &str = "secret_key";
pub const DEFAULT_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(86_400);
/// Transaction references remembered per route by the duplicate guard.
pub const DEFAULT_DUPLICATE_CAPACITY: usize = 100_000;
pub const DEFAULT_WEBHOOK_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 10;
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(3_600);
/// Bound of the per-client rate-limit key store (idle keys are swept first).
pub const DEFAULT_PER_CLIENT_MAX_KEYS: usize = 100_000;

/// The validated configuration. Cheap to clone pieces of; built once per load.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listener: ListenerConfig,
    pub admin: AdminConfig,
    pub access: AccessConfig,
    pub limits: LimitsConfig,
    pub egress: EgressConfig,
    pub audit: AuditConfig,
    pub state: StateConfig,
    pub credentials: BTreeMap<String, CredentialSpec>,
    pub schemes: BTreeMap<String, Scheme>,
    pub routes: Vec<RouteConfig>,
    pub webhooks: Vec<WebhookConfig>,
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
    /// The whole body must arrive within this after the head.
    pub body_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
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
    pub pool_idle_per_host: usize,
    pub allow_plain_http: bool,
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
    /// Records that may wait for the writer.
    pub queue: usize,
    /// How long a request waits for room in a full queue before it is refused
    /// (503 `audit_unavailable`): no request is forwarded unaudited.
    pub wait: Duration,
    /// Query parameters whose values are replaced by `REDACTED` in the record.
    pub redact_query_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub dir: PathBuf,
}

/// Where a credential lives. Never the secret itself.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialSpec {
    pub name: String,
    pub source: SecretSource,
}

#[derive(Debug, Clone, PartialEq)]
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
    pub credential: String,
    pub scheme: String,
    pub methods: Vec<Method>,
    pub allow: Option<Vec<IpNet>>,
    pub allow_identities: Option<Vec<String>>,
    pub limit: Option<Quota>,
    pub duplicate_key: Option<String>,
    pub duplicate_window: Duration,
    pub duplicate_capacity: usize,
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

/// Collects errors while converting; `key` prefixes make every message precise.
struct V {
    errors: Vec<ConfigError>,
    base: Option<PathBuf>,
}

impl V {
    fn push(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        match &self.base {
            Some(base) if p.is_relative() && !base.as_os_str().is_empty() => base.join(p),
            _ => p.to_path_buf(),
        }
    }

    fn socket_addr(&mut self, key: &str, v: Option<&str>, default: &str) -> SocketAddr {
        let s = v.unwrap_or(default);
        match s.parse() {
            Ok(a) => a,
            Err(_) => {
                self.push(ConfigError::invalid(
                    key,
                    s,
                    "an IP:port address like 127.0.0.1:8080 or [::1]:8080",
                ));
                default.parse().expect("default socket address is valid")
            }
        }
    }

    fn millis(&mut self, key: &str, v: Option<u64>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(0) => {
                self.push(ConfigError::invalid(key, 0, "a positive number of milliseconds"));
                default
            }
            Some(ms) => Duration::from_millis(ms),
        }
    }

    fn secs(&mut self, key: &str, v: Option<u64>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(0) => {
                self.push(ConfigError::invalid(key, 0, "a positive number of seconds"));
                default
            }
            Some(s) => Duration::from_secs(s),
        }
    }

    fn positive(&mut self, key: &str, v: Option<u64>, default: usize) -> usize {
        match v {
            None => default,
            Some(n) if n > 0 && usize::try_from(n).is_ok() => n as usize,
            Some(n) => {
                self.push(ConfigError::invalid(key, n, "a positive integer"));
                default
            }
        }
    }

    fn cidrs(&mut self, key: &str, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            match parse_cidr(s) {
                Some(net) => out.push(net),
                None => self.push(ConfigError::invalid(
                    format!("{key}[{i}]"),
                    s,
                    "a CIDR like 10.0.0.0/8 or ::1/128, or a single IP address",
                )),
            }
        }
        out
    }

    fn quota(&mut self, key: &str, q: Option<RawQuota>) -> Option<Quota> {
        let q = q?;
        let rate = match q.rate {
            None => {
                self.push(ConfigError::missing(
                    format!("{key}.rate"),
                    "requests per second, a positive integer",
                ));
                return None;
            }
            Some(r) => r,
        };
        let rate = match u32::try_from(rate).ok().and_then(NonZeroU32::new) {
            Some(r) => r,
            None => {
                self.push(ConfigError::invalid(
                    format!("{key}.rate"),
                    rate,
                    "requests per second, 1 to 4294967295",
                ));
                return None;
            }
        };
        let burst = match q.burst {
            None => rate,
            Some(b) => match u32::try_from(b).ok().and_then(NonZeroU32::new) {
                Some(b) => b,
                None => {
                    self.push(ConfigError::invalid(
                        format!("{key}.burst"),
                        b,
                        "a positive integer (requests allowed at once)",
                    ));
                    return None;
                }
            },
        };
        Some(Quota { rate, burst })
    }

    /// A value that must name an entry of `defined` (a credential, a scheme).
    fn reference<T>(&mut self, key: &str, value: Option<String>, defined: &BTreeMap<String, T>, what: &str) -> String {
        match value {
            Some(name) if defined.contains_key(&name) => name,
            Some(name) => {
                self.push(ConfigError::invalid(
                    key,
                    &name,
                    format!("the name of {what} (defined: {})", names_of(defined.keys())),
                ));
                name
            }
            None => {
                self.push(ConfigError::missing(key, format!("the name of {what}")));
                String::new()
            }
        }
    }

    fn header_name(&mut self, key: &str, v: Option<&str>, default: Option<&str>) -> HeaderName {
        let s = match v.or(default) {
            Some(s) => s,
            None => {
                self.push(ConfigError::missing(key, "an HTTP header name"));
                return HeaderName::from_static("x-invalid");
            }
        };
        match HeaderName::from_bytes(s.as_bytes()) {
            Ok(h) if !is_hop_by_hop(&h) && !is_reserved_header(&h) => h,
            _ => {
                self.push(ConfigError::invalid(
                    key,
                    s,
                    "a valid, end-to-end HTTP header name (not Host, Content-Length or a hop-by-hop header)",
                ));
                HeaderName::from_static("x-invalid")
            }
        }
    }
}

/// Parse `10.0.0.0/8`, `::1/128` or a bare address (as a host route).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

fn is_hop_by_hop(h: &HeaderName) -> bool {
    crate::proxy::headers::HOP_BY_HOP.contains(h)
}

fn is_reserved_header(h: &HeaderName) -> bool {
    h == http::header::HOST || h == http::header::CONTENT_LENGTH || h == http::header::CONTENT_TYPE
}

fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

pub(super) fn validate(raw: RawConfig, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    let mut v = V {
        errors: Vec::new(),
        base: base.map(Path::to_path_buf),
    };

    let listener = listener(&mut v, raw.listener);
    let admin = AdminConfig {
        addr: match raw.admin.addr.as_deref() {
            Some("") => None,
            a => Some(v.socket_addr("admin.addr", a, DEFAULT_ADMIN_ADDR)),
        },
    };
    if let Some(a) = admin.addr {
        if a == listener.addr && a.port() != 0 {
            v.push(ConfigError::invalid(
                "admin.addr",
                a,
                "an address different from listener.addr",
            ));
        }
    }
    let access = match raw.access.and_then(|a| a.allow) {
        None => {
            v.push(ConfigError::missing(
                "access.allow",
                "a non-empty list of client CIDRs, e.g. [\"127.0.0.0/8\", \"::1/128\"] (there is no allow-all default)",
            ));
            AccessConfig { allow: Vec::new() }
        }
        Some(list) if list.is_empty() => {
            v.push(ConfigError::invalid(
                "access.allow",
                "[]",
                "a non-empty list of client CIDRs (an empty list would deny everyone; there is no allow-all default)",
            ));
            AccessConfig { allow: Vec::new() }
        }
        Some(list) => AccessConfig {
            allow: v.cidrs("access.allow", &list),
        },
    };
    let limits = LimitsConfig {
        global: v.quota("limits.global", raw.limits.global),
        per_client: v.quota("limits.per_client", raw.limits.per_client),
        per_client_max_keys: v.positive(
            "limits.per_client_max_keys",
            raw.limits.per_client_max_keys,
            DEFAULT_PER_CLIENT_MAX_KEYS,
        ),
    };
    let egress = egress(&mut v, raw.egress);
    let audit = AuditConfig {
        sink: match raw.audit.path.as_deref() {
            Some("-") => AuditSink::Stdout,
            Some("") => {
                v.push(ConfigError::invalid(
                    "audit.path",
                    "",
                    "a file path, or \"-\" for stdout",
                ));
                AuditSink::Stdout
            }
            p => AuditSink::File(v.path(p.unwrap_or(DEFAULT_AUDIT_PATH))),
        },
        hash_chain: raw.audit.hash_chain.unwrap_or(true),
        max_bytes: match raw.audit.max_bytes {
            Some(n) if n < 4096 => {
                v.push(ConfigError::invalid("audit.max_bytes", n, "at least 4096 bytes"));
                DEFAULT_AUDIT_MAX_BYTES
            }
            Some(n) => n,
            None => DEFAULT_AUDIT_MAX_BYTES,
        },
        max_files: v.positive("audit.max_files", raw.audit.max_files, DEFAULT_AUDIT_MAX_FILES),
        queue: v.positive("audit.queue", raw.audit.queue, DEFAULT_AUDIT_QUEUE),
        wait: v.millis("audit.wait_ms", raw.audit.wait_ms, DEFAULT_AUDIT_WAIT),
        redact_query_keys: raw.audit.redact_query_keys.unwrap_or_default(),
    };
    let state = StateConfig {
        dir: v.path(raw.state.dir.as_deref().unwrap_or(DEFAULT_STATE_DIR)),
    };

    let mut schemes = BTreeMap::new();
    schemes.insert(sign::KWIKPAISA.to_string(), Scheme::kwikpaisa());
    for (name, rs) in raw.schemes {
        let s = scheme(&mut v, &name, rs);
        schemes.insert(name, s);
    }

    let mut credentials = BTreeMap::new();
    for (name, rc) in raw.credentials {
        if let Some(source) = credential(&mut v, &name, rc) {
            credentials.insert(name.clone(), CredentialSpec { name, source });
        }
    }

    let routes = routes(
        &mut v,
        raw.routes,
        &egress,
        &credentials,
        &schemes,
        listener.tls.as_ref(),
    );
    let webhooks = webhooks(&mut v, raw.webhooks, &credentials, &schemes, &routes);

    if v.errors.is_empty() {
        Ok(Config {
            listener,
            admin,
            access,
            limits,
            egress,
            audit,
            state,
            credentials,
            schemes,
            routes,
            webhooks,
        })
    } else {
        Err(ConfigErrors(v.errors))
    }
}

fn listener(v: &mut V, r: RawListener) -> ListenerConfig {
    let addr = v.socket_addr("listener.addr", r.addr.as_deref(), DEFAULT_LISTEN_ADDR);
    let tls = match (r.tls_cert, r.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTlsConfig {
            cert: v.path(&cert),
            key: v.path(&key),
            client_ca: r.client_ca.as_deref().map(|p| v.path(p)),
        }),
        (None, None) => {
            if let Some(ca) = r.client_ca {
                v.push(ConfigError::invalid(
                    "listener.client_ca",
                    ca,
                    "to be set only together with listener.tls_cert and listener.tls_key (mTLS needs TLS)",
                ));
            }
            None
        }
        (Some(_), None) => {
            v.push(ConfigError::missing(
                "listener.tls_key",
                "the private key (PEM) for listener.tls_cert",
            ));
            None
        }
        (None, Some(_)) => {
            v.push(ConfigError::missing(
                "listener.tls_cert",
                "the certificate chain (PEM) for listener.tls_key",
            ));
            None
        }
    };
    let allow_plaintext = r.allow_plaintext.unwrap_or(false);
    if tls.is_none() && !allow_plaintext && !is_loopback(&addr) {
        v.push(ConfigError::invalid(
            "listener.addr",
            addr,
            "a loopback address for a plaintext listener; set listener.tls_cert/tls_key, or listener.allow_plaintext = true to serve plain HTTP on a non-loopback address",
        ));
    }
    let max_header_bytes = v.positive(
        "listener.max_header_bytes",
        r.max_header_bytes,
        DEFAULT_MAX_HEADER_BYTES,
    );
    if max_header_bytes < MIN_HEADER_BYTES {
        v.push(ConfigError::invalid(
            "listener.max_header_bytes",
            max_header_bytes,
            format!("at least {MIN_HEADER_BYTES} bytes"),
        ));
    }
    ListenerConfig {
        addr,
        tls,
        max_connections: v.positive("listener.max_connections", r.max_connections, DEFAULT_MAX_CONNECTIONS),
        header_timeout: v.millis(
            "listener.header_timeout_ms",
            r.header_timeout_ms,
            DEFAULT_HEADER_TIMEOUT,
        ),
        idle_timeout: v.millis("listener.idle_timeout_ms", r.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT),
        max_body_bytes: match r.max_body_bytes {
            Some(0) => {
                v.push(ConfigError::invalid(
                    "listener.max_body_bytes",
                    0,
                    "a positive number of bytes",
                ));
                DEFAULT_MAX_BODY_BYTES
            }
            Some(n) => n,
            None => DEFAULT_MAX_BODY_BYTES,
        },
        body_timeout: v.millis("listener.body_timeout_ms", r.body_timeout_ms, DEFAULT_BODY_TIMEOUT),
        drain_timeout: v.millis("listener.drain_timeout_ms", r.drain_timeout_ms, DEFAULT_DRAIN_TIMEOUT),
        max_headers: v.positive("listener.max_headers", r.max_headers, DEFAULT_MAX_HEADERS),
        max_header_bytes: max_header_bytes.max(MIN_HEADER_BYTES),
        allow_plaintext,
    }
}

fn egress(v: &mut V, r: RawEgress) -> EgressConfig {
    let source_addr = match r.source_addr.as_deref() {
        None | Some("0.0.0.0") | Some("::") => None,
        Some(s) => match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                v.push(ConfigError::invalid(
                    "egress.source_addr",
                    s,
                    "an IP address (no port), or 0.0.0.0 to let the OS pick",
                ));
                None
            }
        },
    };
    let client_cert = match (r.client_cert, r.client_key) {
        (Some(c), Some(k)) => Some((v.path(&c), v.path(&k))),
        (None, None) => None,
        (Some(_), None) => {
            v.push(ConfigError::missing(
                "egress.client_key",
                "the private key (PEM) for egress.client_cert",
            ));
            None
        }
        (None, Some(_)) => {
            v.push(ConfigError::missing(
                "egress.client_cert",
                "the certificate (PEM) for egress.client_key",
            ));
            None
        }
    };
    EgressConfig {
        source_addr,
        ca_file: r.ca_file.as_deref().map(|p| v.path(p)),
        client_cert,
        connect_timeout: v.millis(
            "egress.connect_timeout_ms",
            r.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT,
        ),
        request_timeout: v.millis(
            "egress.request_timeout_ms",
            r.request_timeout_ms,
            DEFAULT_REQUEST_TIMEOUT,
        ),
        pool_idle_per_host: match r.pool_idle_per_host {
            None => DEFAULT_POOL_IDLE_PER_HOST,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        },
        allow_plain_http: r.allow_plain_http.unwrap_or(false),
    }
}

fn scheme(v: &mut V, name: &str, r: RawScheme) -> Scheme {
    let key = |k: &str| format!("scheme.{name}.{k}");
    let empty_body = match r.empty_body.as_deref() {
        None | Some("") => sign::EmptyBody::Empty,
        Some("{}") => sign::EmptyBody::EmptyObject,
        Some(other) => {
            v.push(ConfigError::invalid(
                key("empty_body"),
                other,
                "\"\" (sign and send nothing) or \"{}\"",
            ));
            sign::EmptyBody::Empty
        }
    };
    let escape_unicode = r.escape_unicode.unwrap_or(true);
    if name == sign::KWIKPAISA {
        // The built-in scheme only exposes its two documented knobs.
        for (k, set) in [
            ("message", r.message.is_some()),
            ("body", r.body.is_some()),
            ("encoding", r.encoding.is_some()),
            ("api_key_header", r.api_key_header.is_some()),
            ("timestamp_header", r.timestamp_header.is_some()),
            ("signature_header", r.signature_header.is_some()),
            ("timestamp_unit", r.timestamp_unit.is_some()),
        ] {
            if set {
                v.push(ConfigError::invalid(key(k), "(set)", "nothing: the built-in kwikpaisa scheme only takes escape_unicode and empty_body; define [scheme.OTHER] for another rule"));
            }
        }
        let mut s = Scheme::kwikpaisa();
        s.canonical.escape_unicode = escape_unicode;
        s.empty_body = empty_body;
        return s;
    }
    let message = match r.message.as_deref() {
        None => {
            v.push(ConfigError::missing(
                key("message"),
                "a template like \"{timestamp}.{body}\" (placeholders: api_key timestamp method path query body)",
            ));
            Vec::new()
        }
        Some(m) => match sign::parse_template(m) {
            Ok(parts) => parts,
            Err(why) => {
                v.push(ConfigError::invalid(key("message"), m, why));
                Vec::new()
            }
        },
    };
    let body = match r.body.as_deref() {
        None | Some("raw") => sign::BodyMode::Raw,
        Some("canonical_json") => sign::BodyMode::CanonicalJson,
        Some(o) => {
            v.push(ConfigError::invalid(key("body"), o, "\"raw\" or \"canonical_json\""));
            sign::BodyMode::Raw
        }
    };
    let encoding = match r.encoding.as_deref() {
        None | Some("hex") => sign::Encoding::Hex,
        Some("base64") => sign::Encoding::Base64,
        Some(o) => {
            v.push(ConfigError::invalid(key("encoding"), o, "\"hex\" or \"base64\""));
            sign::Encoding::Hex
        }
    };
    let timestamp_unit = match r.timestamp_unit.as_deref() {
        None | Some("seconds") => sign::TimestampUnit::Seconds,
        Some("millis") => sign::TimestampUnit::Millis,
        Some(o) => {
            v.push(ConfigError::invalid(
                key("timestamp_unit"),
                o,
                "\"seconds\" or \"millis\"",
            ));
            sign::TimestampUnit::Seconds
        }
    };
    let api_key_header = v.header_name(&key("api_key_header"), r.api_key_header.as_deref(), None);
    let timestamp_header = v.header_name(&key("timestamp_header"), r.timestamp_header.as_deref(), None);
    let signature_header = v.header_name(&key("signature_header"), r.signature_header.as_deref(), None);
    let distinct: BTreeSet<&str> = [&api_key_header, &timestamp_header, &signature_header]
        .into_iter()
        .map(HeaderName::as_str)
        .collect();
    if distinct.len() != 3 {
        v.push(ConfigError::invalid(
            key("signature_header"),
            signature_header.as_str(),
            "three distinct header names for api key, timestamp and signature",
        ));
    }
    Scheme {
        name: name.to_string(),
        message,
        body,
        encoding,
        api_key_header,
        timestamp_header,
        signature_header,
        timestamp_unit,
        canonical: crate::canonical::Options {
            escape_unicode,
            ..Default::default()
        },
        empty_body,
    }
}

fn file_fields(r: &RawCredential) -> (String, String) {
    (
        r.api_key_field.clone().unwrap_or_else(|| DEFAULT_API_KEY_FIELD.into()),
        r.secret_field.clone().unwrap_or_else(|| DEFAULT_SECRET_FIELD.into()),
    )
}

fn credential(v: &mut V, name: &str, r: RawCredential) -> Option<SecretSource> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    // Keys that belong to another source are a sign of a mix-up: say so.
    let env_keys = [
        ("api_key_env", r.api_key_env.is_some()),
        ("secret_env", r.secret_env.is_some()),
    ];
    let file_keys = [("path", r.path.is_some()), ("poll_ms", r.poll_ms.is_some())];
    let field_keys = [
        ("api_key_field", r.api_key_field.is_some()),
        ("secret_field", r.secret_field.is_some()),
    ];
    let vault_keys = [
        ("vault_addr", r.vault_addr.is_some()),
        ("vault_mount", r.vault_mount.is_some()),
        ("vault_path", r.vault_path.is_some()),
        ("vault_auth", r.vault_auth.is_some()),
        ("vault_role_id_file", r.vault_role_id_file.is_some()),
        ("vault_secret_id_file", r.vault_secret_id_file.is_some()),
        ("vault_token_file", r.vault_token_file.is_some()),
        ("vault_ca_file", r.vault_ca_file.is_some()),
        ("vault_max_stale_secs", r.vault_max_stale_secs.is_some()),
        ("refresh_secs", r.refresh_secs.is_some()),
    ];
    let foreign = |v: &mut V, keys: &[(&str, bool)], source: &str| {
        for (k, set) in keys {
            if *set {
                v.push(ConfigError::invalid(
                    key(k),
                    "(set)",
                    format!("nothing for source = \"{source}\""),
                ));
            }
        }
    };
    match r.source.as_deref() {
        Some("env") => {
            foreign(v, &file_keys, "env");
            foreign(v, &field_keys, "env");
            foreign(v, &vault_keys, "env");
            let api_key_env = r.api_key_env.clone();
            let secret_env = r.secret_env.clone();
            if api_key_env.is_none() {
                v.push(ConfigError::missing(
                    key("api_key_env"),
                    "the name of the environment variable holding the API key",
                ));
            }
            if secret_env.is_none() {
                v.push(ConfigError::missing(
                    key("secret_env"),
                    "the name of the environment variable holding the secret key",
                ));
            }
            Some(SecretSource::Env {
                api_key_env: api_key_env?,
                secret_env: secret_env?,
            })
        }
        Some("file") => {
            foreign(v, &env_keys, "file");
            foreign(v, &vault_keys, "file");
            let (api_key_field, secret_field) = file_fields(&r);
            let Some(path) = r.path.as_deref() else {
                v.push(ConfigError::missing(
                    key("path"),
                    "the path of a TOML or JSON file holding the API key and secret fields",
                ));
                return None;
            };
            Some(SecretSource::File {
                path: v.path(path),
                api_key_field,
                secret_field,
                poll: v.millis(&key("poll_ms"), r.poll_ms, DEFAULT_FILE_POLL),
            })
        }
        Some("vault") => {
            foreign(v, &env_keys, "vault");
            foreign(v, &file_keys, "vault");
            let (api_key_field, secret_field) = file_fields(&r);
            let addr = match r.vault_addr.as_deref() {
                None => {
                    v.push(ConfigError::missing(
                        key("vault_addr"),
                        "the Vault/OpenBao address, e.g. https://vault.internal:8200",
                    ));
                    None
                }
                Some(a) => match a.parse::<Uri>() {
                    Ok(u) if u.scheme() == Some(&UriScheme::HTTPS) && u.authority().is_some() => Some(u),
                    Ok(u) if u.scheme() == Some(&UriScheme::HTTP) && u.host().is_some_and(host_is_loopback) => Some(u),
                    _ => {
                        v.push(ConfigError::invalid(
                            key("vault_addr"),
                            a,
                            "an https:// URL (http:// only for a loopback address)",
                        ));
                        None
                    }
                },
            };
            let auth = match r.vault_auth.as_deref() {
                None | Some("token") => {
                    for (k, set) in [
                        ("vault_role_id_file", r.vault_role_id_file.is_some()),
                        ("vault_secret_id_file", r.vault_secret_id_file.is_some()),
                    ] {
                        if set {
                            v.push(ConfigError::invalid(
                                key(k),
                                "(set)",
                                "nothing for vault_auth = \"token\"",
                            ));
                        }
                    }
                    Some(VaultAuth::Token {
                        token_file: r.vault_token_file.as_deref().map(|p| v.path(p)),
                    })
                }
                Some("approle") => match (&r.vault_role_id_file, &r.vault_secret_id_file) {
                    (Some(role), Some(secret)) => Some(VaultAuth::AppRole {
                        role_id_file: v.path(role),
                        secret_id_file: v.path(secret),
                    }),
                    (role, secret) => {
                        if role.is_none() {
                            v.push(ConfigError::missing(
                                key("vault_role_id_file"),
                                "the file holding the AppRole role_id",
                            ));
                        }
                        if secret.is_none() {
                            v.push(ConfigError::missing(
                                key("vault_secret_id_file"),
                                "the file holding the AppRole secret_id",
                            ));
                        }
                        None
                    }
                },
                Some(o) => {
                    v.push(ConfigError::invalid(key("vault_auth"), o, "\"token\" or \"approle\""));
                    None
                }
            };
            let mount = r.vault_mount.clone().unwrap_or_else(|| "secret".into());
            let Some(path) = r.vault_path.clone() else {
                v.push(ConfigError::missing(
                    key("vault_path"),
                    "the KV v2 path of the secret, e.g. kwikpaisa/prod",
                ));
                return None;
            };
            let refresh = v.secs(&key("refresh_secs"), r.refresh_secs, DEFAULT_VAULT_REFRESH);
            let max_stale = r
                .vault_max_stale_secs
                .map(|s| v.secs(&key("vault_max_stale_secs"), Some(s), Duration::ZERO));
            Some(SecretSource::Vault(VaultSpec {
                addr: addr?,
                mount: mount.trim_matches('/').to_string(),
                path: path.trim_matches('/').to_string(),
                auth: auth?,
                ca_file: r.vault_ca_file.as_deref().map(|p| v.path(p)),
                api_key_field,
                secret_field,
                refresh,
                max_stale,
            }))
        }
        Some(o) => {
            v.push(ConfigError::invalid(key("source"), o, "\"env\", \"file\" or \"vault\""));
            None
        }
        None => {
            v.push(ConfigError::missing(key("source"), "\"env\", \"file\" or \"vault\""));
            None
        }
    }
}

fn host_is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn upstream(v: &mut V, key: &str, s: &str, egress: &EgressConfig) -> Option<UpstreamTarget> {
    let expected = "an https:// URL with a host and optional base path, no query (http:// only with egress.allow_plain_http = true)";
    let uri: Uri = match s.parse() {
        Ok(u) => u,
        Err(_) => {
            v.push(ConfigError::invalid(key, s, expected));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        v.push(ConfigError::invalid(key, s, expected));
        return None;
    };
    if scheme == UriScheme::HTTP && !egress.allow_plain_http {
        v.push(ConfigError::invalid(
            key,
            s,
            "an https:// URL; plain http:// upstreams need egress.allow_plain_http = true (meant for loopback tests)",
        ));
        return None;
    }
    if scheme != UriScheme::HTTP && scheme != UriScheme::HTTPS {
        v.push(ConfigError::invalid(key, s, expected));
        return None;
    }
    if uri.query().is_some() || authority.as_str().contains('@') {
        v.push(ConfigError::invalid(key, s, expected));
        return None;
    }
    let host_header = HeaderValue::from_str(authority.as_str()).ok()?;
    Some(UpstreamTarget {
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_string(),
        host_header,
    })
}

fn is_json_pointer(p: &str) -> bool {
    p.starts_with('/')
}

fn routes(
    v: &mut V,
    raw: Vec<RawRoute>,
    egress: &EgressConfig,
    credentials: &BTreeMap<String, CredentialSpec>,
    schemes: &BTreeMap<String, Scheme>,
    tls: Option<&ServerTlsConfig>,
) -> Vec<RouteConfig> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = BTreeSet::new();
    let mut prefixes = BTreeMap::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let name = match r.name {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                n
            }
            Some(n) => {
                v.push(ConfigError::invalid(
                    key("name"),
                    n,
                    "1-64 characters of A-Z a-z 0-9 - _ . (used as a metric label)",
                ));
                continue;
            }
            None => {
                v.push(ConfigError::missing(
                    key("name"),
                    "a unique route name (used in metrics and audit records)",
                ));
                continue;
            }
        };
        if !names.insert(name.clone()) {
            v.push(ConfigError::invalid(
                key("name"),
                &name,
                "a name not used by another route",
            ));
        }
        let match_prefix = match r.match_prefix.as_deref() {
            Some(p)
                if p.starts_with('/')
                    && !p.contains(['?', '#', '%'])
                    && !p.split('/').any(|seg| seg == "." || seg == "..") =>
            {
                let trimmed = p.trim_end_matches('/').to_string();
                if let Some(other) = prefixes.insert(trimmed.clone(), name.clone()) {
                    v.push(ConfigError::invalid(
                        key("match_prefix"),
                        p,
                        format!("a prefix not already used by route {other:?}"),
                    ));
                }
                trimmed
            }
            Some(p) => {
                v.push(ConfigError::invalid(
                    key("match_prefix"),
                    p,
                    "a path prefix starting with '/', without '?', '#', '%' or dot segments",
                ));
                String::new()
            }
            None => {
                v.push(ConfigError::missing(
                    key("match_prefix"),
                    "a path prefix like \"/kwikpaisa/\"",
                ));
                String::new()
            }
        };
        let upstream = match r.upstream.as_deref() {
            Some(u) => upstream(v, &key("upstream"), u, egress),
            None => {
                v.push(ConfigError::missing(
                    key("upstream"),
                    "the provider's base URL, e.g. https://sandbox.kwikpaisa.com",
                ));
                None
            }
        };
        let credential = v.reference(
            &key("credential"),
            r.credential,
            credentials,
            "a [credentials.NAME] table",
        );
        let scheme = v.reference(
            &key("scheme"),
            r.scheme,
            schemes,
            "\"kwikpaisa\" or a [scheme.NAME] table",
        );
        let methods = match r.methods {
            None => vec![Method::POST],
            Some(list) if list.is_empty() => {
                v.push(ConfigError::invalid(
                    key("methods"),
                    "[]",
                    "a non-empty list of HTTP methods, e.g. [\"POST\"]",
                ));
                Vec::new()
            }
            Some(list) => {
                let mut ms = Vec::with_capacity(list.len());
                for (j, m) in list.iter().enumerate() {
                    match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                        Ok(method) if method != Method::CONNECT && method != Method::TRACE => ms.push(method),
                        _ => v.push(ConfigError::invalid(
                            format!("route[{i}].methods[{j}]"),
                            m,
                            "an HTTP method such as GET, POST, PUT, PATCH, DELETE (not CONNECT or TRACE)",
                        )),
                    }
                }
                ms
            }
        };
        let allow = match r.allow {
            None => None,
            Some(list) if list.is_empty() => {
                v.push(ConfigError::invalid(
                    key("allow"),
                    "[]",
                    "a non-empty list of client CIDRs, or no key at all to use [access].allow",
                ));
                None
            }
            Some(list) => Some(v.cidrs(&key("allow"), &list)),
        };
        let allow_identities = match r.allow_identities {
            None => None,
            Some(list) if list.is_empty() => {
                v.push(ConfigError::invalid(
                    key("allow_identities"),
                    "[]",
                    "a non-empty list of client certificate SAN URIs or DNS names",
                ));
                None
            }
            Some(list) => {
                if tls.and_then(|t| t.client_ca.as_ref()).is_none() {
                    v.push(ConfigError::invalid(
                        key("allow_identities"),
                        list.join(","),
                        "to be used only with mTLS (listener.client_ca set)",
                    ));
                }
                Some(list)
            }
        };
        let duplicate_key = match r.duplicate_key {
            Some(p) if is_json_pointer(&p) => Some(p),
            Some(p) => {
                v.push(ConfigError::invalid(
                    key("duplicate_key"),
                    p,
                    "a JSON pointer like \"/order_id\"",
                ));
                None
            }
            None => None,
        };
        if duplicate_key.is_some() {
            if let Some(s) = schemes.get(&scheme) {
                if s.body != sign::BodyMode::CanonicalJson {
                    v.push(ConfigError::invalid(
                        key("duplicate_key"),
                        duplicate_key.clone().unwrap_or_default(),
                        "a route whose scheme parses JSON (body = \"canonical_json\")",
                    ));
                }
            }
        }
        let duplicate_window = v.secs(
            &key("duplicate_window_secs"),
            r.duplicate_window_secs,
            DEFAULT_DUPLICATE_WINDOW,
        );
        let duplicate_capacity = v.positive(
            &key("duplicate_capacity"),
            r.duplicate_capacity,
            DEFAULT_DUPLICATE_CAPACITY,
        );
        let limit = v.quota(&key("limit"), r.limit);
        if let Some(upstream) = upstream {
            out.push(RouteConfig {
                name,
                match_prefix,
                strip_prefix: r.strip_prefix.unwrap_or(false),
                upstream,
                credential,
                scheme,
                methods,
                allow,
                allow_identities,
                limit,
                duplicate_key,
                duplicate_window,
                duplicate_capacity,
            });
        }
    }
    out
}

fn names_of<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn webhooks(
    v: &mut V,
    raw: Vec<RawWebhook>,
    credentials: &BTreeMap<String, CredentialSpec>,
    schemes: &BTreeMap<String, Scheme>,
    routes: &[RouteConfig],
) -> Vec<WebhookConfig> {
    let mut out = Vec::with_capacity(raw.len());
    let mut paths = BTreeSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("webhook[{i}].{k}");
        let Some(name) = r.name.filter(|n| !n.is_empty()) else {
            v.push(ConfigError::missing(key("name"), "a unique webhook name"));
            continue;
        };
        let match_path = match r.match_path {
            Some(p) if p.starts_with('/') && !p.contains(['?', '#', '%']) => {
                if !paths.insert(p.clone()) {
                    v.push(ConfigError::invalid(
                        key("match_path"),
                        &p,
                        "a path not used by another webhook",
                    ));
                }
                if routes
                    .iter()
                    .any(|rt| p == rt.match_prefix || p.starts_with(&format!("{}/", rt.match_prefix)))
                {
                    v.push(ConfigError::invalid(
                        key("match_path"),
                        &p,
                        "a path outside every route's match_prefix",
                    ));
                }
                p
            }
            Some(p) => {
                v.push(ConfigError::invalid(
                    key("match_path"),
                    p,
                    "an exact path starting with '/'",
                ));
                continue;
            }
            None => {
                v.push(ConfigError::missing(
                    key("match_path"),
                    "the exact path the provider posts to, e.g. /webhooks/kwikpaisa",
                ));
                continue;
            }
        };
        let credential = v.reference(
            &key("credential"),
            r.credential,
            credentials,
            "a [credentials.NAME] table",
        );
        let scheme = v.reference(
            &key("scheme"),
            r.scheme,
            schemes,
            "\"kwikpaisa\" or a [scheme.NAME] table",
        );
        let forward_to = match r.forward_to.as_deref().map(str::parse::<Uri>) {
            Some(Ok(u)) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => u,
            other => {
                v.push(ConfigError::invalid(
                    key("forward_to"),
                    format!("{other:?}"),
                    "the internal app's URL, e.g. http://127.0.0.1:3000/payments/events",
                ));
                continue;
            }
        };
        let dedup_keys = r
            .dedup_keys
            .unwrap_or_else(|| vec!["/event".into(), "/data/order_id".into(), "/data/status".into()]);
        for (j, p) in dedup_keys.iter().enumerate() {
            if !is_json_pointer(p) {
                v.push(ConfigError::invalid(
                    format!("webhook[{i}].dedup_keys[{j}]"),
                    p,
                    "a JSON pointer like \"/data/order_id\"",
                ));
            }
        }
        let tolerance = v.secs(&key("tolerance_secs"), r.tolerance_secs, DEFAULT_WEBHOOK_TOLERANCE);
        let dedup_window = v.secs(
            &key("dedup_window_secs"),
            r.dedup_window_secs,
            DEFAULT_WEBHOOK_DEDUP_WINDOW,
        );
        let allow = match r.allow {
            None => None,
            Some(list) if list.is_empty() => {
                v.push(ConfigError::invalid(
                    key("allow"),
                    "[]",
                    "a non-empty list of CIDRs the provider posts from, or no key to use [access].allow",
                ));
                None
            }
            Some(list) => Some(v.cidrs(&key("allow"), &list)),
        };
        let max_attempts = match r.max_attempts {
            None => DEFAULT_WEBHOOK_MAX_ATTEMPTS,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                v.push(ConfigError::invalid(
                    key("max_attempts"),
                    n,
                    "1 to 1000 delivery attempts",
                ));
                DEFAULT_WEBHOOK_MAX_ATTEMPTS
            }
        };
        let rotation_grace = match r.rotation_grace_secs {
            None => DEFAULT_ROTATION_GRACE,
            Some(s) => Duration::from_secs(s),
        };
        if let Some(s) = schemes.get(&scheme) {
            if !s.signs_body() {
                v.push(ConfigError::invalid(
                    key("scheme"),
                    &scheme,
                    "a scheme whose message includes {body}: a webhook signature must cover the event",
                ));
            }
        }
        out.push(WebhookConfig {
            name,
            match_path,
            credential,
            scheme,
            tolerance,
            forward_to,
            verify_canonical: r.verify_canonical.unwrap_or(false),
            dedup_keys,
            dedup_window,
            allow,
            max_attempts,
            rotation_grace,
        });
    }
    out
}
