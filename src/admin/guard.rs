//! `POST /guard/release` `{"route": R, "reference": REF}`: an operator
//! releases a transaction reference the duplicate guard holds — typically
//! one whose first attempt's outcome is unknown, once the provider's status
//! API says it did not go through. Every endpoint's claim on that reference
//! is released; the release is audited.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{error, reply, JSON};
use crate::audit::Entry;
use crate::state::Shared;

/// The reference as the guard stores it (`dedup::reference_key` of its
/// canonical JSON text). A value that is not JSON is taken as a string
/// (`ORD-1` → `"ORD-1"`).
fn canonical_reference(given: &str, opts: &crate::canonical::Options) -> Option<String> {
    let json = if serde_json::from_str::<serde_json::Value>(given).is_ok() {
        given.to_string()
    } else {
        serde_json::to_string(given).ok()?
    };
    let c = crate::canonical::canonicalize(json.as_bytes(), opts).ok()?;
    String::from_utf8(c).ok().map(|c| crate::dedup::reference_key(&c))
}

pub(super) async fn release(gw: &Shared, cmd: &serde_json::Value, peer: SocketAddr) -> Response<Full<Bytes>> {
    let (Some(name), Some(given)) = (cmd["route"].as_str(), cmd["reference"].as_str()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            r#"give {"route": "NAME", "reference": "REF"}"#,
        );
    };
    let snap = gw.snapshot();
    let Some(route) = snap.router.by_name(name) else {
        return error(StatusCode::NOT_FOUND, "no_route", &format!("no route {name}"));
    };
    let Some(store) = &route.duplicates else {
        return error(
            StatusCode::NOT_FOUND,
            "no_duplicate_guard",
            &format!("route {name} has no duplicate_key"),
        );
    };
    let Some(reference) = canonical_reference(given, &route.scheme.canonical) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the reference is not valid JSON text",
        );
    };
    // Audited or not done at all.
    let slot = match gw.audit() {
        Some(log) => log.reserve().await,
        None => None,
    };
    let Some(slot) = slot else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot record the release; nothing was released",
        );
    };
    let released = match store.release_reference(&reference).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(route = name, error = %e, "duplicate guard: release failed; nothing was released");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "duplicate_guard_unavailable",
                "the duplicate guard's shared store cannot answer; nothing was released",
            );
        }
    };
    tracing::warn!(route = name, reference, released, %peer, "duplicate guard: reference released by an operator");
    slot.write(Entry {
        time: crate::audit::now_rfc3339(),
        request_id: format!("guard-release-{}", ulid::Ulid::new()),
        client: peer,
        route: Some(name.to_string()),
        method: "POST".into(),
        path: "/guard/release".into(),
        decision: "released",
        reason: Some("manual_release"),
        status: 200,
        upstream_status: None,
        duration_ms: 0.0,
        bytes_in: 0,
        bytes_out: None,
        credential: None,
        secret_version: None,
        signature_fp: None,
        duplicate_key: Some(reference.clone()),
        fleet: store.source().map(crate::fleet::Source::label),
        upstream_error: None,
        note: None,
    });
    reply(
        StatusCode::OK,
        JSON,
        serde_json::json!({"route": name, "reference": reference, "released": released}).to_string(),
    )
}
