//! `POST /guard/release` `{"route": R, "reference": REF}`: an operator
//! releases a transaction reference the duplicate guard holds — typically
//! one whose first attempt's outcome is unknown, once the provider's status
//! API says it did not go through. Every endpoint's claim on that reference
//! is released; the release is audited.
//!
//! `GET /guard/status[?route=R]`: the amount guard's totals of the current
//! UTC day, per route, currency and caller, with the caps (read only).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{audit_slot, error, reply, JSON};
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
    let slot = match audit_slot(gw, "release; nothing was released").await {
        Ok(slot) => slot,
        Err(refused) => return refused,
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
        reason: Some("manual_release"),
        duplicate_key: Some(reference.clone()),
        fleet: store.source().map(crate::fleet::Source::label),
        ..Entry::event(
            format!("guard-release-{}", ulid::Ulid::new()),
            peer,
            name,
            "/guard/release".into(),
            "released",
        )
    });
    reply(
        StatusCode::OK,
        JSON,
        serde_json::json!({"route": name, "reference": reference, "released": released}).to_string(),
    )
}

/// `GET /guard/status[?route=NAME]`: today's amount-guard totals.
pub(super) async fn status(gw: &Shared, query: &str) -> Response<Full<Bytes>> {
    let only = query.split('&').find_map(|p| p.strip_prefix("route="));
    let snap = gw.snapshot();
    if let Some(name) = only {
        match snap.router.by_name(name) {
            None => return error(StatusCode::NOT_FOUND, "no_route", &format!("no route {name}")),
            Some(r) if r.amounts.is_none() => {
                return error(
                    StatusCode::NOT_FOUND,
                    "no_amount_guard",
                    &format!("route {name} has no [route.amount_guard]"),
                )
            }
            Some(_) => {}
        }
    }
    let mut names: Vec<&str> = snap
        .router
        .routes()
        .filter(|r| r.amounts.is_some() && only.is_none_or(|n| n == r.name()))
        .map(|r| r.name())
        .collect();
    names.sort_unstable();
    let mut routes = Vec::with_capacity(names.len());
    let mut day_label = crate::amount_guard::Day::today().label();
    for name in names {
        let Some(guard) = snap.router.by_name(name).and_then(|r| r.amounts.as_ref()) else {
            continue;
        };
        let (day, mut totals) = match guard.today().await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(route = name, error = %e, "amount guard: today's totals cannot be read");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "amount_guard_unavailable",
                    "the amount guard's totals cannot be read now",
                );
            }
        };
        day_label = day.label();
        totals.sort_by(|a, b| (&a.currency, &a.caller).cmp(&(&b.currency, &b.caller)));
        let c = guard.config();
        let cap = |v: Option<u64>| v.map(|m| guard.format(m));
        let rows: Vec<serde_json::Value> = totals
            .iter()
            .map(|t| {
                let (sum, count) = guard.shares(t);
                serde_json::json!({
                    "caller": t.caller,
                    "currency": t.currency,
                    "amount": guard.format(t.amount),
                    "count": t.count,
                    "unknown_amount": guard.format(t.unknown_amount),
                    "unknown_count": t.unknown_count,
                    "day_share": {"amount": sum, "count": count},
                })
            })
            .collect();
        routes.push(serde_json::json!({
            "route": name,
            "per": c.per.label(),
            "source": guard.source(),
            "caps": {
                "max_per_request": cap(c.max_per_request),
                "max_per_day": cap(c.max_per_day),
                "max_count_per_day": c.max_count_per_day,
            },
            "totals": rows,
        }));
    }
    reply(
        StatusCode::OK,
        JSON,
        serde_json::json!({"day": day_label, "routes": routes}).to_string(),
    )
}
