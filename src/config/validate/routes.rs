//! `[[route]]` and `[[webhook]]`: upstream targets, matching, guards.

use super::*;
use crate::identity::{Allowed, Identity};

pub(super) fn upstream(v: &mut V, key: &str, s: &str, egress: &EgressConfig) -> Option<UpstreamTarget> {
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
    let base = uri.path().trim_end_matches('/');
    if !base_path_is_plain(base) {
        v.push(ConfigError::invalid(
            key,
            s,
            "a base path of plain segments: letters, digits, - _ ~ and dots, no segment of dots only, no empty segment, no % escape (the base path is what a request cannot leave)",
        ));
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

/// An upstream base path a request can only go below: `/`-separated
/// segments of unreserved ASCII, none empty or dots only (`/a/../b`,
/// `/a//b`, `/%2e%2e` would let the provider resolve it elsewhere).
fn base_path_is_plain(base: &str) -> bool {
    base.is_empty()
        || base.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|seg| {
                seg.bytes().any(|c| c != b'.')
                    && seg
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~' | b'.'))
            })
        })
}

fn is_json_pointer(p: &str) -> bool {
    p.starts_with('/')
}

pub(super) fn routes(
    v: &mut V,
    raw: Vec<RawRoute>,
    egress: &EgressConfig,
    credentials: &BTreeMap<String, CredentialSpec>,
    schemes: &BTreeMap<String, Scheme>,
    tls: Option<&ServerTlsConfig>,
    tracing: bool,
) -> Vec<RouteConfig> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = BTreeSet::new();
    let mut prefixes = BTreeMap::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let Some(name) = v.label_name(&key("name"), r.name, &mut names, "route") else {
            continue;
        };
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
        let credential = match (r.credential, r.credential_map) {
            (Some(_), Some(_)) => {
                v.push(ConfigError::invalid(
                    key("credential_map"),
                    "(set)",
                    "either credential (one for every caller) or credential_map (one per caller), not both",
                ));
                None
            }
            (None, Some(map)) => credential_map(v, i, map, credentials, tls),
            (one, None) => Some(RouteCredential::One(v.reference(
                &key("credential"),
                one,
                credentials,
                "a [credentials.NAME] table (or credential_map, one per caller)",
            ))),
        };
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
                let mut entries = Vec::with_capacity(list.len());
                for (j, entry) in list.iter().enumerate() {
                    match Identity::parse_entry(entry) {
                        Ok(id) => entries.push(id),
                        Err(expected) => v.push(ConfigError::invalid(
                            format!("route[{i}].allow_identities[{j}]"),
                            entry,
                            expected,
                        )),
                    }
                }
                Some(Allowed::new(entries))
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
        let max_inflight = v.positive(&key("max_inflight"), r.max_inflight, DEFAULT_MAX_INFLIGHT);
        let queue_timeout = v.millis(&key("queue_timeout_ms"), r.queue_timeout_ms, DEFAULT_QUEUE_TIMEOUT);
        let duplicate_capacity = v.positive(
            &key("duplicate_capacity"),
            r.duplicate_capacity,
            DEFAULT_DUPLICATE_CAPACITY,
        );
        let limit = v.quota(&key("limit"), r.limit);
        let amount_guard = r
            .amount_guard
            .and_then(|g| super::amounts::amount_guard(v, i, g, schemes.get(&scheme)));
        let forward_traceparent = r.forward_traceparent.unwrap_or(false);
        if forward_traceparent && !tracing {
            v.push(ConfigError::invalid(
                key("forward_traceparent"),
                true,
                "false unless [tracing] is configured (without it there is no gateway span to forward)",
            ));
        }
        if let (Some(upstream), Some(credential)) = (upstream, credential) {
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
                max_inflight,
                queue_timeout,
                forward_traceparent,
                honor_retry_after: r.honor_retry_after.unwrap_or(true),
                amount_guard,
            });
        }
    }
    out
}

/// `credential_map = [{ client = "CIDR", credential = "NAME" },
/// { identity = "uri:…", credential = "NAME" }, …]`: first match wins.
fn credential_map(
    v: &mut V,
    i: usize,
    map: Vec<RawCredentialRule>,
    credentials: &BTreeMap<String, CredentialSpec>,
    tls: Option<&ServerTlsConfig>,
) -> Option<RouteCredential> {
    if map.is_empty() {
        v.push(ConfigError::invalid(
            format!("route[{i}].credential_map"),
            "[]",
            "a non-empty list of { client = \"CIDR\" | identity = \"uri:…\", credential = \"NAME\" }",
        ));
        return None;
    }
    let mtls = tls.and_then(|t| t.client_ca.as_ref()).is_some();
    let mut rules = Vec::with_capacity(map.len());
    let mut ok = true;
    for (j, entry) in map.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].credential_map[{j}].{k}");
        let caller = match (entry.client, entry.identity) {
            (Some(c), None) => match parse_cidr(&c) {
                Some(net) => Some(Caller::Client(net)),
                None => {
                    v.push(ConfigError::invalid(
                        key("client"),
                        c,
                        "a CIDR like 10.1.0.0/16 or ::1/128, or a single IP address",
                    ));
                    None
                }
            },
            (None, Some(id)) => {
                if !mtls {
                    v.push(ConfigError::invalid(
                        key("identity"),
                        &id,
                        "to be used only with mTLS (listener.client_ca set)",
                    ));
                }
                match Identity::parse_entry(&id) {
                    Ok(identity) => Some(Caller::Identity(identity)),
                    Err(expected) => {
                        v.push(ConfigError::invalid(key("identity"), id, expected));
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                v.push(ConfigError::invalid(
                    key("identity"),
                    "(set)",
                    "either client or identity in one entry, not both (write two entries)",
                ));
                None
            }
            (None, None) => {
                v.push(ConfigError::missing(
                    key("client"),
                    "who the entry is for: client = \"CIDR\" or identity = \"uri:…\" / \"dns:…\"",
                ));
                None
            }
        };
        let credential = v.reference(
            &key("credential"),
            entry.credential,
            credentials,
            "a [credentials.NAME] table",
        );
        match caller {
            Some(caller) => rules.push(CredentialRule { caller, credential }),
            None => ok = false,
        }
    }
    ok.then_some(RouteCredential::ByCaller(rules))
}

pub(super) fn webhooks(
    v: &mut V,
    raw: Vec<RawWebhook>,
    credentials: &BTreeMap<String, CredentialSpec>,
    schemes: &BTreeMap<String, Scheme>,
    routes: &[RouteConfig],
) -> Vec<WebhookConfig> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("webhook[{i}].{k}");
        let Some(name) = v.label_name(&key("name"), r.name, &mut names, "webhook") else {
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
        if r.tolerance_secs != Some(0) && r.dedup_window_secs != Some(0) {
            replay_window(v, i, r.tolerance_secs.is_some(), tolerance, dedup_window);
        }
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

/// A webhook event is fresh while its timestamp is within `tolerance` of
/// the local clock, in either direction (`|now - ts| <= tolerance`, whole
/// seconds). Its key is remembered from the moment it is first accepted,
/// for `dedup_window` (it is a duplicate while `first + window > now`). The
/// first delivery can come as early as `ts - tolerance` (a timestamp in the
/// future is accepted too) and a replay as late as `ts + tolerance`: 2 ×
/// tolerance apart. So the window must be *longer* than 2 × tolerance,
/// at least 2 × tolerance + 1 s, or a captured event replayed at the edge of
/// its freshness is neither stale nor remembered, and is delivered twice.
pub(super) fn replay_window(v: &mut V, i: usize, tolerance_set: bool, tolerance: Duration, window: Duration) {
    let needed = tolerance.as_secs().saturating_mul(2).saturating_add(1);
    if window.as_secs() < needed {
        let tolerance_note = if tolerance_set { "" } else { " (its default)" };
        v.push(ConfigError::invalid(
            format!("webhook[{i}].dedup_window_secs"),
            window.as_secs(),
            format!(
                "at least {needed} seconds: more than twice webhook[{i}].tolerance_secs = {}{tolerance_note}, since an event is fresh from tolerance_secs before its timestamp to tolerance_secs after it, and a replay inside that span must still be remembered; raise dedup_window_secs or lower tolerance_secs",
                tolerance.as_secs()
            ),
        ));
    }
}
