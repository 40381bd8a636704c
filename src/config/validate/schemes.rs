//! `[scheme.NAME]`: the built-in kwikpaisa knobs, or a template scheme.

use super::*;

pub(super) fn scheme(v: &mut V, name: &str, r: RawScheme) -> Scheme {
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
    let max_depth = match r.max_json_depth {
        None => crate::canonical::DEFAULT_MAX_DEPTH,
        Some(n) if (1..=MAX_JSON_DEPTH as u64).contains(&n) => n as usize,
        Some(n) => {
            v.push(ConfigError::invalid(
                key("max_json_depth"),
                n,
                format!("1 to {MAX_JSON_DEPTH} levels of nesting"),
            ));
            crate::canonical::DEFAULT_MAX_DEPTH
        }
    };
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
                v.push(ConfigError::invalid(key(k), "(set)", "nothing: the built-in kwikpaisa scheme only takes escape_unicode, empty_body and max_json_depth; define [scheme.OTHER] for another rule"));
            }
        }
        let mut s = Scheme::kwikpaisa();
        s.canonical.escape_unicode = escape_unicode;
        s.canonical.max_depth = max_depth;
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
            max_depth,
        },
        empty_body,
    }
}
