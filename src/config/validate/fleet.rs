//! `[fleet]`: the Redis (or Valkey) several gateways share. The password,
//! whether in `redis_url` or in `redis_password_file`, never appears in an
//! error: a URL is shown without it.

use super::*;

/// Keys prefixes end up in every Redis key and inside hash tags: no braces,
/// no spaces, nothing a glob pattern would read.
fn prefix_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// `value` as it may be shown: a URL with its password replaced.
fn shown(url: &url::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("REDACTED"));
    }
    u.to_string()
}

pub(super) fn fleet(v: &mut V, r: RawFleet) -> FleetConfig {
    let expected_url =
        "a redis:// or rediss:// URL like redis://redis.internal:6379/0 (a database number as the path, no query)";
    let mut tls = false;
    let mut url_text = String::new();
    let mut inline_password = None;
    match r.redis_url.as_deref() {
        None => v.push(ConfigError::missing("fleet.redis_url", expected_url)),
        Some(raw) => match url::Url::parse(raw) {
            Err(_) => {
                // Unparseable: the text may still hold a password; show none of it.
                let value = if raw.contains('@') {
                    "<hidden: it carries credentials>"
                } else {
                    raw
                };
                v.push(ConfigError::invalid("fleet.redis_url", value, expected_url));
            }
            Ok(mut u) => {
                let scheme_ok = matches!(u.scheme(), "redis" | "rediss");
                let db_ok = matches!(u.path(), "" | "/") || u.path()[1..].parse::<u16>().is_ok();
                if !scheme_ok || u.host_str().is_none_or(str::is_empty) || u.query().is_some() || !db_ok {
                    v.push(ConfigError::invalid("fleet.redis_url", shown(&u), expected_url));
                } else {
                    tls = u.scheme() == "rediss";
                    if let Some(p) = u.password() {
                        let decoded = percent_decode(p);
                        if !decoded.is_empty() {
                            inline_password = Some(Redacted::new(decoded));
                        }
                        let _ = u.set_password(None);
                    }
                    url_text = u.to_string();
                }
            }
        },
    }
    let password = match (inline_password, r.redis_password_file) {
        (Some(_), Some(_)) => {
            v.push(ConfigError::invalid(
                "fleet.redis_password_file",
                "set",
                "to be set only when fleet.redis_url carries no password (one source of the password)",
            ));
            None
        }
        (Some(p), None) => Some(RedisPassword::Inline(p)),
        (None, Some(f)) if f.is_empty() => {
            v.push(ConfigError::invalid(
                "fleet.redis_password_file",
                "",
                "the path of a file holding the Redis password",
            ));
            None
        }
        (None, Some(f)) => Some(RedisPassword::File(v.path(&f))),
        (None, None) => None,
    };
    let ca_file = r.redis_ca_file.as_deref().map(|p| v.path(p));
    if ca_file.is_some() && !tls && !url_text.is_empty() {
        v.push(ConfigError::invalid(
            "fleet.redis_ca_file",
            ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "to be set only with a rediss:// URL (TLS)",
        ));
    }
    let key_prefix = match r.key_prefix {
        None => DEFAULT_FLEET_KEY_PREFIX.to_string(),
        Some(p) if prefix_ok(&p) => p,
        Some(p) => {
            v.push(ConfigError::invalid(
                "fleet.key_prefix",
                p,
                "1-64 characters of A-Z a-z 0-9 - _ . : (no braces: the gateway adds the hash tags)",
            ));
            DEFAULT_FLEET_KEY_PREFIX.to_string()
        }
    };
    let timeout = match r.timeout_ms {
        None => DEFAULT_FLEET_TIMEOUT,
        Some(ms) if ms >= 1 && ms <= MAX_FLEET_TIMEOUT.as_millis() as u64 => Duration::from_millis(ms),
        Some(ms) => {
            v.push(ConfigError::invalid(
                "fleet.timeout_ms",
                ms,
                format!("1 to {} milliseconds", MAX_FLEET_TIMEOUT.as_millis()),
            ));
            DEFAULT_FLEET_TIMEOUT
        }
    };
    let instance = match r.instance {
        None => None,
        Some(i) if !i.is_empty() && i.len() <= 128 && i.bytes().all(|b| b.is_ascii_graphic()) => Some(i),
        Some(i) => {
            v.push(ConfigError::invalid(
                "fleet.instance",
                i,
                "1-128 visible ASCII characters naming this instance (default: the host name)",
            ));
            None
        }
    };
    let expected_instances = match r.expected_instances {
        None => 1,
        Some(n @ 1..=1000) => n as u32,
        Some(n) => {
            v.push(ConfigError::invalid(
                "fleet.expected_instances",
                n,
                "1 to 1000 (the instances sharing the limits; each enforces rate / expected_instances while Redis cannot answer)",
            ));
            1
        }
    };
    let limits_on_error = match r.limits_on_error.as_deref() {
        None | Some("local") => LimitsOnError::Local,
        Some("deny") => LimitsOnError::Deny,
        Some(other) => {
            v.push(ConfigError::invalid(
                "fleet.limits_on_error",
                other,
                "\"local\" or \"deny\"",
            ));
            LimitsOnError::Local
        }
    };
    let route_switch_poll = match r.route_switch_poll_ms {
        None => DEFAULT_ROUTE_SWITCH_POLL,
        Some(ms)
            if (MIN_ROUTE_SWITCH_POLL.as_millis() as u64..=MAX_ROUTE_SWITCH_POLL.as_millis() as u64).contains(&ms) =>
        {
            Duration::from_millis(ms)
        }
        Some(ms) => {
            v.push(ConfigError::invalid(
                "fleet.route_switch_poll_ms",
                ms,
                format!(
                    "{} to {} milliseconds (how often each instance reads the route switches from Redis)",
                    MIN_ROUTE_SWITCH_POLL.as_millis(),
                    MAX_ROUTE_SWITCH_POLL.as_millis()
                ),
            ));
            DEFAULT_ROUTE_SWITCH_POLL
        }
    };
    FleetConfig {
        url: url_text,
        tls,
        password,
        ca_file,
        key_prefix,
        timeout,
        instance,
        expected_instances,
        limits_on_error,
        route_switch_poll,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
