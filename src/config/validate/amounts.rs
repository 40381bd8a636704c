//! `[route.amount_guard]`: the payout caps of a route. Every cap is parsed
//! exactly (`money::parse_decimal`, the same grammar as the amounts it
//! caps), and every error names its key (`route[N].amount_guard.KEY`).

use super::*;
use crate::money::{self, DecimalError, MAX_MINOR, MAX_MINOR_UNITS};

/// A cap in minor units: positive, with at most `minor_units` decimals.
fn cap(v: &mut V, key: &str, raw: Option<RawDecimal>, minor_units: u8) -> Option<u64> {
    let expected = || {
        format!(
            "a positive amount as a string, with at most {minor_units} decimal places and at most {}, e.g. \"{}\"",
            money::format_minor(MAX_MINOR, minor_units),
            money::format_minor(50_000 * 10u64.pow(u32::from(minor_units)), minor_units),
        )
    };
    let text = match raw? {
        RawDecimal::Text(t) => t,
        RawDecimal::Integer(n) => n.to_string(),
        RawDecimal::Float(f) => {
            v.push(ConfigError::invalid(
                key,
                f,
                format!(
                    "{}; a TOML float is not exact: write the amount as a string",
                    expected()
                ),
            ));
            return None;
        }
    };
    match money::parse_decimal(&text, minor_units) {
        Ok(0) => {
            v.push(ConfigError::invalid(key, &text, expected()));
            None
        }
        Ok(minor) => Some(minor),
        Err(why @ (DecimalError::TooPrecise { .. } | DecimalError::TooLarge | DecimalError::Negative)) => {
            v.push(ConfigError::invalid(
                key,
                &text,
                format!("{}; this value: {why}", expected()),
            ));
            None
        }
        Err(_) => {
            v.push(ConfigError::invalid(key, &text, expected()));
            None
        }
    }
}

pub(super) fn amount_guard(
    v: &mut V,
    route: usize,
    raw: RawAmountGuard,
    scheme: Option<&Scheme>,
) -> Option<AmountGuardConfig> {
    let key = |k: &str| format!("route[{route}].amount_guard.{k}");
    let errors_before = v.errors.len();
    let amount = match raw.amount {
        Some(p) if p.starts_with('/') => p,
        Some(p) => {
            v.push(ConfigError::invalid(
                key("amount"),
                p,
                "a JSON pointer like \"/amount\"",
            ));
            String::new()
        }
        None => {
            v.push(ConfigError::missing(
                key("amount"),
                "the JSON pointer of the amount in the request body, e.g. \"/amount\"",
            ));
            String::new()
        }
    };
    let currency = match raw.currency {
        Some(p) if p.starts_with('/') => Some(p),
        Some(p) => {
            v.push(ConfigError::invalid(
                key("currency"),
                p,
                "a JSON pointer like \"/currency\", or no key (one cap for every request)",
            ));
            None
        }
        None => None,
    };
    let minor_units = match raw.minor_units {
        None => DEFAULT_MINOR_UNITS,
        Some(n) if n <= u64::from(MAX_MINOR_UNITS) => n as u8,
        Some(n) => {
            v.push(ConfigError::invalid(
                key("minor_units"),
                n,
                format!("0 to {MAX_MINOR_UNITS} decimal places (2 for cents or paise)"),
            ));
            DEFAULT_MINOR_UNITS
        }
    };
    let max_per_request = cap(v, &key("max_per_request"), raw.max_per_request, minor_units);
    let max_per_day = cap(v, &key("max_per_day"), raw.max_per_day, minor_units);
    let max_count_per_day = match raw.max_count_per_day {
        None => None,
        Some(n @ 1..=MAX_MINOR) => Some(n),
        Some(n) => {
            v.push(ConfigError::invalid(
                key("max_count_per_day"),
                n,
                format!("a positive number of requests per UTC day (at most {MAX_MINOR})"),
            ));
            None
        }
    };
    if let (Some(req), Some(day)) = (max_per_request, max_per_day) {
        if req > day {
            v.push(ConfigError::invalid(
                key("max_per_request"),
                money::format_minor(req, minor_units),
                format!(
                    "at most max_per_day ({}): a request over the day's cap can never pass",
                    money::format_minor(day, minor_units)
                ),
            ));
        }
    }
    let per = match raw.per.as_deref() {
        None | Some("client") => AmountPer::Client,
        Some("route") => AmountPer::Route,
        Some(other) => {
            v.push(ConfigError::invalid(
                key("per"),
                other,
                "\"client\" (each caller's own day: its mTLS identity, else its address) or \"route\" (all callers together)",
            ));
            AmountPer::Client
        }
    };
    let capped = max_per_request.is_some() || max_per_day.is_some() || max_count_per_day.is_some();
    if !capped && v.errors.len() == errors_before {
        v.push(ConfigError::missing(
            key("max_per_day"),
            "at least one cap: max_per_request, max_per_day or max_count_per_day",
        ));
    }
    if scheme.is_some_and(|s| s.body != sign::BodyMode::CanonicalJson) {
        v.push(ConfigError::invalid(
            format!("route[{route}].amount_guard"),
            "[route.amount_guard]",
            "a route whose scheme parses JSON (body = \"canonical_json\")",
        ));
    }
    (v.errors.len() == errors_before).then_some(AmountGuardConfig {
        amount,
        currency,
        minor_units,
        max_per_request,
        max_per_day,
        max_count_per_day,
        per,
    })
}
