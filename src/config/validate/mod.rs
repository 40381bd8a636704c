//! From the serde mirror to typed configuration. Every rule that can be
//! checked without I/O is checked here, and every violation is collected
//! (never just the first), each naming its key, the value and what is expected.
//! Sections live in submodules: credentials, schemes, routes and webhooks.

mod amounts;
mod credentials;
mod fleet;
mod routes;
mod schemes;
mod tracing;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Scheme as UriScheme;
use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;

use super::error::{ConfigError, ConfigErrors};
use super::raw::*;
use super::types::*;
use crate::sign::{self, Scheme};
use credentials::credential;
use routes::{routes, webhooks};
use schemes::scheme;

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

    /// The name of a route or webhook: it becomes a metric label and an
    /// audit field, so 1-64 of `A-Z a-z 0-9 - _ .`, unique among `taken`.
    /// `None` (after an error) when the entry cannot be used.
    fn label_name(
        &mut self,
        key: &str,
        value: Option<String>,
        taken: &mut BTreeSet<String>,
        what: &str,
    ) -> Option<String> {
        let name = match value {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                n
            }
            Some(n) => {
                self.push(ConfigError::invalid(
                    key,
                    n,
                    "1-64 characters of A-Z a-z 0-9 - _ . (used as a metric label)",
                ));
                return None;
            }
            None => {
                self.push(ConfigError::missing(
                    key,
                    format!("a unique {what} name (used in metrics and audit records)"),
                ));
                return None;
            }
        };
        if !taken.insert(name.clone()) {
            self.push(ConfigError::invalid(
                key,
                &name,
                format!("a name not used by another {what}"),
            ));
        }
        Some(name)
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
    crate::headers::HOP_BY_HOP.contains(h)
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

    let log = LogConfig {
        format: match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                v.push(ConfigError::invalid("log.format", other, "\"text\" or \"json\""));
                LogFormat::Text
            }
        },
    };
    let listener = listener(&mut v, raw.listener);
    let admin = AdminConfig {
        addr: match raw.admin.addr.as_deref() {
            Some("") => None,
            a => Some(v.socket_addr("admin.addr", a, DEFAULT_ADMIN_ADDR)),
        },
        token_file: raw.admin.token_file.as_deref().map(|p| v.path(p)),
    };
    if let Some(a) = admin.addr {
        if a == listener.addr && a.port() != 0 {
            v.push(ConfigError::invalid(
                "admin.addr",
                a,
                "an address different from listener.addr",
            ));
        }
        // The admin API changes state and returns payment events: off
        // loopback it must be locked.
        if admin.token_file.is_none() && !is_loopback(&a) {
            v.push(ConfigError::missing(
                "admin.token_file",
                format!("a file holding the admin Bearer token: admin.addr {a} is not a loopback address"),
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
    let audit_queue = v.positive("audit.queue", raw.audit.queue, DEFAULT_AUDIT_QUEUE);
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
        queue: audit_queue,
        wait: v.millis("audit.wait_ms", raw.audit.wait_ms, DEFAULT_AUDIT_WAIT),
        batch: match raw.audit.batch_ms {
            Some(ms) if ms > MAX_AUDIT_BATCH_MS => {
                v.push(ConfigError::invalid(
                    "audit.batch_ms",
                    ms,
                    format!("at most {MAX_AUDIT_BATCH_MS} milliseconds"),
                ));
                DEFAULT_AUDIT_BATCH
            }
            ms => v.millis("audit.batch_ms", ms, DEFAULT_AUDIT_BATCH),
        },
        reserve_bytes: raw
            .audit
            .reserve_bytes
            .unwrap_or_else(|| (audit_queue as u64).saturating_mul(DEFAULT_AUDIT_RESERVE_PER_RECORD)),
        redact_query_keys: raw.audit.redact_query_keys.unwrap_or_default(),
    };
    let state = StateConfig {
        dir: v.path(raw.state.dir.as_deref().unwrap_or(DEFAULT_STATE_DIR)),
    };
    let tracing = raw.tracing.and_then(|t| tracing::tracing(&mut v, t));

    let fleet = raw.fleet.map(|f| fleet::fleet(&mut v, f));

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
        tracing.is_some(),
    );
    let webhooks = webhooks(&mut v, raw.webhooks, &credentials, &schemes, &routes);

    if v.errors.is_empty() {
        Ok(Config {
            log,
            listener,
            admin,
            access,
            limits,
            egress,
            audit,
            state,
            tracing,
            fleet,
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
        body_idle_timeout: v.millis(
            "listener.body_idle_timeout_ms",
            r.body_idle_timeout_ms,
            DEFAULT_BODY_IDLE_TIMEOUT,
        ),
        write_idle_timeout: v.millis(
            "listener.write_idle_timeout_ms",
            r.write_idle_timeout_ms,
            DEFAULT_WRITE_IDLE_TIMEOUT,
        ),
        max_uri_bytes: v.positive("listener.max_uri_bytes", r.max_uri_bytes, DEFAULT_MAX_URI_BYTES),
        drain_timeout: v.millis("listener.drain_timeout_ms", r.drain_timeout_ms, DEFAULT_DRAIN_TIMEOUT),
        shutdown_delay: match r.shutdown_delay_ms.map(Duration::from_millis) {
            None => DEFAULT_SHUTDOWN_DELAY,
            Some(d) if d <= MAX_SHUTDOWN_DELAY => d,
            Some(d) => {
                v.push(ConfigError::invalid(
                    "listener.shutdown_delay_ms",
                    d.as_millis(),
                    format!(
                        "0 to {} milliseconds (0: stop accepting at once on SIGTERM)",
                        MAX_SHUTDOWN_DELAY.as_millis()
                    ),
                ));
                DEFAULT_SHUTDOWN_DELAY
            }
        },
        // 0 turns lingering off (the connection closes right after the answer).
        linger: r.linger_ms.map_or(DEFAULT_LINGER, Duration::from_millis),
        linger_bytes: r.linger_bytes.unwrap_or(DEFAULT_LINGER_BYTES),
        max_headers: v.positive("listener.max_headers", r.max_headers, DEFAULT_MAX_HEADERS),
        max_header_bytes: max_header_bytes.max(MIN_HEADER_BYTES),
        h2_max_concurrent_streams: match r.h2_max_concurrent_streams {
            None => DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            Some(n @ 1..=10_000) => n as u32,
            Some(n) => {
                v.push(ConfigError::invalid(
                    "listener.h2_max_concurrent_streams",
                    n,
                    "1 to 10000 streams per connection",
                ));
                DEFAULT_H2_MAX_CONCURRENT_STREAMS
            }
        },
        h2_max_pending_resets: v.positive(
            "listener.h2_max_pending_resets",
            r.h2_max_pending_resets,
            DEFAULT_H2_MAX_PENDING_RESETS,
        ),
        allow_plaintext,
    }
}

fn egress(v: &mut V, r: RawEgress) -> EgressConfig {
    let source_check = source_check(v, &r);
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
        response_idle_timeout: v.millis(
            "egress.response_idle_timeout_ms",
            r.response_idle_timeout_ms,
            DEFAULT_RESPONSE_IDLE_TIMEOUT,
        ),
        pool_idle_per_host: match r.pool_idle_per_host {
            None => DEFAULT_POOL_IDLE_PER_HOST,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        },
        max_connections_per_host: r
            .max_connections_per_host
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        allow_plain_http: r.allow_plain_http.unwrap_or(false),
        source_check,
    }
}

/// `expect_source_ip` and `source_check_url` go together.
fn source_check(v: &mut V, r: &RawEgress) -> Option<SourceCheck> {
    let allow_plain_http = r.allow_plain_http.unwrap_or(false);
    let interval = v.secs(
        "egress.source_check_interval_secs",
        r.source_check_interval_secs,
        DEFAULT_SOURCE_CHECK_INTERVAL,
    );
    let expect = match r.expect_source_ip.as_deref() {
        None => None,
        Some(s) => match s.trim().parse::<IpAddr>() {
            Ok(ip) => Some(crate::allowlist::normalize(ip)),
            Err(_) => {
                v.push(ConfigError::invalid(
                    "egress.expect_source_ip",
                    s,
                    "an IP address (no port): the address the provider has whitelisted",
                ));
                None
            }
        },
    };
    let url = match r.source_check_url.as_deref() {
        None => None,
        Some(s) => match s.parse::<Uri>() {
            Ok(u)
                if u.authority().is_some()
                    && (u.scheme() == Some(&UriScheme::HTTPS)
                        || (u.scheme() == Some(&UriScheme::HTTP) && allow_plain_http)) =>
            {
                Some(u)
            }
            _ => {
                v.push(ConfigError::invalid(
                    "egress.source_check_url",
                    s,
                    "an https:// URL that answers the caller's address as text or as JSON {\"ip\": …} (http:// only with egress.allow_plain_http = true)",
                ));
                None
            }
        },
    };
    match (r.expect_source_ip.is_some(), r.source_check_url.is_some()) {
        (true, false) => v.push(ConfigError::missing(
            "egress.source_check_url",
            "an endpoint that echoes the caller's address (text or JSON {\"ip\": …}), to check egress.expect_source_ip against",
        )),
        (false, true) => v.push(ConfigError::missing(
            "egress.expect_source_ip",
            "the address the provider has whitelisted, which egress.source_check_url must report",
        )),
        (false, false) if r.source_check_interval_secs.is_some() => v.push(ConfigError::invalid(
            "egress.source_check_interval_secs",
            "(set)",
            "to be set only with egress.expect_source_ip and egress.source_check_url",
        )),
        _ => {}
    }
    Some(SourceCheck {
        expect: expect?,
        url: url?,
        interval,
    })
}

fn names_of<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}
