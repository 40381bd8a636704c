//! `signgate explain`: what the gateway would do with one request, without
//! sending it. The request goes through the pipeline's own checks, in the
//! pipeline's order (client allowlist, target length, path tricks, route,
//! method, route allowlist and identities, the credential for the caller,
//! body size, canonical JSON, the duplicate guard's reference, the
//! payout's amount and per-request cap, the credential loaded from its
//! source), and either the gateway's answer is
//! printed (`403 ip_not_allowed: …`, exit 1), or what would be sent: the
//! upstream URL, the canonical body, the exact signed message, the headers
//! the gateway adds with the signature, and the credential and version that
//! sign. The secret is never shown (it is never even read for a Transit
//! credential); the API key is shown in part. Rate limits, the duplicate
//! guard's memory, the amount guard's day totals and the routes' kill
//! switches live in the running gateway and are not consulted.
//!
//! A Transit credential's HMAC is computed by Vault: explain shows the
//! message and the key instead, or, with `--transit`, asks Transit for the
//! signature (one HMAC call; nothing is sent upstream either way).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, Method};

use crate::allowlist::Allowlist;
use crate::config::{ApiKeySource, Config, RouteCredential, SecretSource};
use crate::identity::Identity;
use crate::proxy::GatewayError;
use crate::router::{path_is_safe, Kept, Route, RouteSlots, Router};
use crate::secrets::{Credential, CredentialStore, Key};
use crate::sign::{self, MessageInput, Timestamp};

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The route the request is meant for; explain says so when --path is
    /// routed elsewhere (the longest matching prefix wins).
    #[arg(long)]
    pub route: Option<String>,
    /// The caller's address (the TCP peer the gateway would see).
    #[arg(long, default_value = "127.0.0.1")]
    pub client: IpAddr,
    /// A SAN of the caller's mTLS client certificate, typed: uri:spiffe://…
    /// or dns:NAME (repeat for several).
    #[arg(long)]
    pub identity: Vec<String>,
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The request target as the app sends it (route prefix included), with
    /// an optional ?query.
    #[arg(long)]
    pub path: String,
    /// The request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// A file holding the request body.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Timestamp to sign with (default: now, in the scheme's unit).
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// With a Vault Transit credential: ask Transit for the signature (one
    /// HMAC call) instead of showing the message only.
    #[arg(long)]
    pub transit: bool,
}

/// Why explain stopped: the gateway's own answer, or a problem with the
/// question (bad arguments, a config that does not load).
enum Stop {
    Answer(GatewayError),
    Usage(String),
}

impl From<GatewayError> for Stop {
    fn from(e: GatewayError) -> Self {
        Stop::Answer(e)
    }
}

/// `signgate explain`: exit 0 when the gateway would sign and send the
/// request, 1 when it would refuse it (the answer is printed), 2 when the
/// question cannot be answered (bad arguments or configuration).
pub async fn explain(config_path: &Path, args: &ExplainArgs) -> ExitCode {
    let mut out = Vec::new();
    let result = run(config_path, args, &mut out).await;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Answer(e)) => {
            let _ = writeln!(
                stdout,
                "answer:            {} {}: {}",
                e.status().as_u16(),
                e.code(),
                e.message()
            );
            let _ = writeln!(
                stdout,
                "sent:              nothing (the gateway would refuse this request)"
            );
            ExitCode::FAILURE
        }
        Err(Stop::Usage(why)) => {
            let _ = stdout.flush();
            eprintln!("signgate explain: {why}");
            ExitCode::from(2)
        }
    }
}

/// One labelled line of output (label padded like `signgate sign`).
fn line(out: &mut Vec<u8>, label: &str, value: &[u8]) {
    out.extend_from_slice(format!("{label:<19}").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

async fn run(config_path: &Path, args: &ExplainArgs, out: &mut Vec<u8>) -> Result<(), Stop> {
    let config = Config::load(config_path).map_err(|e| Stop::Usage(format!("{}: {e}", config_path.display())))?;
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Stop::Usage(format!("--method {:?} is not an HTTP method", args.method)))?;
    let target: PathAndQuery = args
        .path
        .parse()
        .map_err(|_| Stop::Usage(format!("--path {:?} is not a request target (/path?query)", args.path)))?;
    if !target.path().starts_with('/') {
        return Err(Stop::Usage(format!("--path {:?} must start with '/'", args.path)));
    }
    let identities = args
        .identity
        .iter()
        .map(|s| {
            Identity::parse_entry(s)
                .map_err(|_| Stop::Usage(format!("--identity {s:?}: expected uri:SCHEME:… or dns:NAME")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => Bytes::from(b.clone().into_bytes()),
        (None, Some(f)) => {
            Bytes::from(std::fs::read(f).map_err(|e| Stop::Usage(format!("--body-file {}: {e}", f.display())))?)
        }
        (None, None) => Bytes::new(),
    };
    let client = crate::allowlist::normalize(args.client);

    // Every route, resolved as the gateway resolves them; no credential is
    // loaded yet (only the one that signs will be).
    let store = CredentialStore::unloaded(&config.credentials);
    let router = router(&config, &store)?;

    // admit
    if !Allowlist::new(&config.access.allow).allows(client) {
        return Err(GatewayError::IpNotAllowed.into());
    }
    if target.as_str().len() > config.listener.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            limit: config.listener.max_uri_bytes,
        }
        .into());
    }
    if !path_is_safe(target.path()) {
        return Err(GatewayError::InvalidPath.into());
    }
    if config.webhooks.iter().any(|w| w.match_path == target.path()) {
        return Err(Stop::Usage(format!(
            "{} is a [[webhook]] path: explain covers outbound requests only",
            target.path()
        )));
    }
    // route
    let route = router.find(target.path()).ok_or(GatewayError::NoRoute)?;
    if let Some(want) = &args.route {
        if want != route.name() {
            if router.by_name(want).is_none() {
                return Err(Stop::Usage(format!(
                    "there is no route {want:?} in {}",
                    config_path.display()
                )));
            }
            return Err(Stop::Usage(format!(
                "{} is routed to route {:?} (match_prefix {:?}), not {want:?}: the longest matching prefix wins",
                target.path(),
                route.name(),
                route.config.match_prefix
            )));
        }
    }
    line(
        out,
        "route:",
        format!(
            "{} (match_prefix {:?}, scheme {})",
            route.name(),
            route.config.match_prefix,
            route.scheme.name
        )
        .as_bytes(),
    );
    if !route.allows_method(&method) {
        return Err(GatewayError::MethodNotAllowed {
            route: route.name().to_string(),
            allowed: route.allow_methods.clone(),
        }
        .into());
    }
    // authorize
    if route.allow.as_ref().is_some_and(|a| !a.allows(client)) {
        return Err(GatewayError::IpNotAllowed.into());
    }
    let shown_ids = if identities.is_empty() {
        "no client certificate".to_string()
    } else {
        identities
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    line(out, "caller:", format!("{client} ({shown_ids})").as_bytes());
    if let Some(allowed) = &route.config.allow_identities {
        if !allowed.matches(&identities) {
            return Err(GatewayError::IdentityNotAllowed.into());
        }
    }
    // the credential for this caller
    let slot = route
        .credential
        .pick(client, Some(&identities))
        .ok_or(GatewayError::NoCredentialForCaller)?
        .clone();
    let spec = config
        .credentials
        .get(slot.name())
        .ok_or_else(|| Stop::Usage(format!("credential {} is not configured", slot.name())))?;
    let chosen = match &route.config.credential {
        RouteCredential::One(_) => "the route's credential".to_string(),
        RouteCredential::ByCaller(rules) => rules
            .iter()
            .find(|r| r.credential == slot.name() && r.caller.matches(client, Some(&identities)))
            .map_or_else(
                || "credential_map".to_string(),
                |r| format!("credential_map: {}", r.caller),
            ),
    };
    // the body
    if body.len() as u64 > config.listener.max_body_bytes {
        return Err(GatewayError::BodyTooLarge {
            limit: config.listener.max_body_bytes,
        }
        .into());
    }
    let body = sign::prepare_body(&route.scheme, body).map_err(|e| GatewayError::InvalidJson {
        offset: e.offset,
        reason: e.reason,
    })?;
    let upstream_path = route.upstream_path(target.path());
    if let (Some(_), Some(pointer)) = (&route.duplicates, &route.config.duplicate_key) {
        let reference = crate::dedup::reference(&body, pointer).ok_or_else(|| GatewayError::MissingReference {
            pointer: pointer.clone(),
        })?;
        line(
            out,
            "duplicate key:",
            format!(
                "{pointer} = {reference} (guarded on {method} {upstream_path}: while it is in flight, after a 2xx for {} s, or after an unknown outcome, a repeat gets 409 duplicate_request)",
                route.config.duplicate_window.as_secs()
            )
            .as_bytes(),
        );
    }
    if let Some(g) = &route.config.amount_guard {
        let payout = crate::amount_guard::read_payout(g, &body).map_err(GatewayError::from)?;
        crate::amount_guard::check_request(g, &payout).map_err(GatewayError::from)?;
        let amount = crate::money::format_minor(payout.amount, g.minor_units);
        let currency = if payout.currency.is_empty() {
            String::new()
        } else {
            format!(" {}", payout.currency)
        };
        line(
            out,
            "amount:",
            format!(
                "{amount}{currency} at {} (within the per-request cap; the day's caps, per {}, are checked and reserved by the running gateway: signgate guard status)",
                g.amount,
                g.per.label()
            )
            .as_bytes(),
        );
    }
    // the credential, from its source
    let one: std::collections::BTreeMap<_, _> = [(slot.name().to_string(), spec.clone())].into();
    let cancel = tokio_util::sync::CancellationToken::new();
    let loaded = CredentialStore::start(&one, &cancel).await;
    cancel.cancel();
    let cred = loaded
        .slot(slot.name())
        .ok_or_else(|| Stop::Usage(format!("credential {} did not start", slot.name())))?
        .get()
        .map_err(GatewayError::CredentialUnavailable)?;
    line(
        out,
        "credential:",
        format!(
            "{} ({}; {chosen}; version {})",
            cred.name(),
            source_of(&spec.source),
            cred.version().map_or("-".into(), |v| v.to_string())
        )
        .as_bytes(),
    );
    // prepare and sign
    let uri = route
        .upstream_uri(&upstream_path, target.query())
        .map_err(|_| GatewayError::InvalidPath)?;
    line(out, "upstream:", format!("{method} {uri}").as_bytes());
    line(out, "canonical body:", &body);
    let scheme = &route.scheme;
    let ts = match args.timestamp {
        Some(t) => Timestamp::from_u64(t),
        None => scheme.timestamp(std::time::SystemTime::now()),
    };
    line(out, "timestamp:", ts.as_str().as_bytes());
    let api_key_shown = partly(cred.api_key().as_bytes());
    let input = MessageInput {
        api_key: cred.api_key().as_bytes(),
        timestamp: ts.as_str(),
        method: method.as_str(),
        path: &upstream_path,
        query: uri.query().unwrap_or(""),
        body: &body,
    };
    let shown_input = MessageInput {
        api_key: api_key_shown.as_bytes(),
        ..input
    };
    line(out, "signed message:", &scheme.message_bytes(&shown_input));
    if scheme.message.contains(&sign::Part::ApiKey) {
        line(
            out,
            "",
            b"(the API key is shown in part here; the signed message holds it in full)",
        );
    }
    let signature = sign_it(args, &cred, scheme, &input, out).await?;
    out.extend_from_slice(b"headers added:\n");
    let mut header = |name: &HeaderName, value: &[u8]| {
        out.extend_from_slice(format!("  {name}: ").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    };
    if scheme.body == sign::BodyMode::CanonicalJson {
        header(&http::header::CONTENT_TYPE, b"application/json");
    }
    header(&http::header::CONTENT_LENGTH, body.len().to_string().as_bytes());
    header(
        &crate::headers::X_REQUEST_ID,
        b"(the caller's well-formed id, else a new ULID)",
    );
    header(&scheme.api_key_header, api_key_shown.as_bytes());
    header(&scheme.timestamp_header, ts.as_str().as_bytes());
    header(&scheme.signature_header, &signature);
    line(
        out,
        "sent:",
        b"nothing (explain never contacts the upstream; the gateway would send this now, signed with a fresh timestamp)",
    );
    Ok(())
}

/// The signature, or what stands for it when Transit computes it.
async fn sign_it(
    args: &ExplainArgs,
    cred: &Credential,
    scheme: &sign::Scheme,
    input: &MessageInput<'_>,
    out: &mut Vec<u8>,
) -> Result<Vec<u8>, Stop> {
    match cred.key() {
        Key::Local(mac) => {
            let sig = scheme.sign(mac, input);
            line(out, "signature:", sig.as_bytes());
            Ok(sig.as_bytes().to_vec())
        }
        Key::Transit(t) if args.transit => {
            let (version, mac) = t.hmac(&scheme.message_bytes(input)).await.map_err(|reason| {
                GatewayError::CredentialUnavailable(crate::secrets::Unavailable {
                    credential: cred.name().to_string(),
                    expired: false,
                    reason,
                })
            })?;
            let sig = scheme.signature(mac);
            line(
                out,
                "signature:",
                format!(
                    "{} (computed by Vault Transit, {}, key version {version})",
                    sig.as_str(),
                    t.describe()
                )
                .as_bytes(),
            );
            Ok(sig.as_bytes().to_vec())
        }
        Key::Transit(t) => {
            let note = format!(
                "computed by Vault Transit ({}, key version {}) when the request is sent; not computed here: add --transit to ask Transit",
                t.describe(),
                cred.version().map_or("-".into(), |v| v.to_string())
            );
            line(out, "signature:", note.as_bytes());
            Ok(b"(the HMAC from Vault Transit)".to_vec())
        }
    }
}

/// The routes of `config`, resolved as the running gateway resolves them.
fn router(config: &Config, store: &CredentialStore) -> Result<Router, Stop> {
    let slot = |name: &str| {
        store
            .slot(name)
            .cloned()
            .ok_or_else(|| Stop::Usage(format!("credential {name} is not configured")))
    };
    let mut routes = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        let scheme = config
            .schemes
            .get(&r.scheme)
            .cloned()
            .ok_or_else(|| Stop::Usage(format!("route {}: scheme {} is not configured", r.name, r.scheme)))?;
        let slots = match &r.credential {
            RouteCredential::One(c) => RouteSlots::One(slot(c)?),
            RouteCredential::ByCaller(rules) => RouteSlots::ByCaller(
                rules
                    .iter()
                    .map(|rule| Ok((rule.caller.clone(), slot(&rule.credential)?)))
                    .collect::<Result<_, Stop>>()?,
            ),
        };
        routes.push(Arc::new(Route::new(
            r.clone(),
            Arc::new(scheme),
            slots,
            Kept::default(),
            None,
            None,
            &crate::metrics::Metrics::new(),
        )));
    }
    Ok(Router::new(routes))
}

/// Where a credential comes from, in words (names, never values).
fn source_of(source: &SecretSource) -> String {
    match source {
        SecretSource::Env {
            api_key_env,
            secret_env,
        } => format!("env {api_key_env}, {secret_env}"),
        SecretSource::File { path, .. } => format!("file {}", path.display()),
        SecretSource::Vault(v) => format!("vault {}/{} at {}", v.mount, v.path, v.addr),
        SecretSource::VaultTransit(t) => format!(
            "vault_transit {}/keys/{} at {}, API key from {}",
            t.mount,
            t.key,
            t.addr,
            match &t.api_key {
                ApiKeySource::Env(var) => format!("env {var}"),
                ApiKeySource::Kv { mount, path, field } => format!("{mount}/{path} field {field}"),
            }
        ),
    }
}

/// An API key shown in part: its first 8 bytes (of a key of at least 16;
/// none of a shorter one) and its length.
fn partly(key: &[u8]) -> String {
    let shown = if key.len() >= 16 { &key[..8] } else { &[][..] };
    format!(
        "{}… ({} bytes; shown in part)",
        String::from_utf8_lossy(shown),
        key.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_shown_in_part_only() {
        assert_eq!(
            partly(b"pk_test_0123456789abcdef"),
            "pk_test_… (24 bytes; shown in part)"
        );
        assert_eq!(partly(b"short_key"), "… (9 bytes; shown in part)");
    }
}
