//! `[tracing]`: the OTLP/HTTP endpoint and the sampling ratio.

use super::*;

pub(super) fn tracing(v: &mut V, r: RawTracing) -> Option<TracingConfig> {
    let otlp_endpoint = match r.otlp_endpoint.as_deref() {
        None => {
            v.push(ConfigError::missing(
                "tracing.otlp_endpoint",
                "the OTLP/HTTP traces URL, e.g. \"http://127.0.0.1:4318/v1/traces\" (or no [tracing] section)",
            ));
            None
        }
        Some(s) => endpoint(v, s),
    };
    let sample_ratio = match r.sample_ratio {
        None => DEFAULT_SAMPLE_RATIO,
        Some(x) if (0.0..=1.0).contains(&x) => x,
        Some(x) => {
            v.push(ConfigError::invalid(
                "tracing.sample_ratio",
                x,
                "a number from 0.0 (only errors) to 1.0 (every request)",
            ));
            DEFAULT_SAMPLE_RATIO
        }
    };
    let service_name = match r.service_name {
        None => DEFAULT_SERVICE_NAME.to_string(),
        Some(s) if !s.trim().is_empty() && s.len() <= 255 && !s.chars().any(char::is_control) => s,
        Some(s) => {
            v.push(ConfigError::invalid(
                "tracing.service_name",
                s,
                "1-255 printable characters (the service.name of the exported spans)",
            ));
            DEFAULT_SERVICE_NAME.to_string()
        }
    };
    Some(TracingConfig {
        otlp_endpoint: otlp_endpoint?,
        sample_ratio,
        service_name,
    })
}

/// An `http://` or `https://` URL with a host, no credentials, no fragment.
fn endpoint(v: &mut V, s: &str) -> Option<Uri> {
    let expected = "an http:// or https:// URL with a host and the traces path, e.g. \"http://127.0.0.1:4318/v1/traces\" (no user:password@)";
    let ok = s.parse::<Uri>().ok().filter(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.host().is_some_and(|h| !h.is_empty())
            && !u.authority().is_some_and(|a| a.as_str().contains('@'))
    });
    if ok.is_none() {
        v.push(ConfigError::invalid("tracing.otlp_endpoint", s, expected));
    }
    ok
}
