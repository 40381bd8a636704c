//! The routes' kill switches (token): `GET /routes` lists every configured
//! route with its state (and the switches stored for routes no longer
//! configured); `POST /routes/{name}/disable` and `POST
//! /routes/{name}/enable`, with an optional JSON body `{"reason": "..."}`,
//! switch one. With `[fleet]` both first take what other instances changed
//! since the last poll, so what they show and decide is the fleet's. A change is audited or not made at all (an audit slot is
//! reserved first), runs as a task of its own (a client that goes away
//! does not leave it half done), and is logged and counted
//! (`signgate_route_disabled`). An unknown route is `404 no_route` naming it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;

use super::{audit_slot, error, reply, JSON};
use crate::state::Shared;
use crate::switch::{FleetWrite, Outcome, Switch};

/// Longest reason accepted, in characters.
pub const MAX_REASON: usize = 256;

/// Whether `path` is one of this module's (all need the token).
pub(super) fn covers(path: &str) -> bool {
    path == "/routes" || path.starts_with("/routes/")
}

/// Serve `GET /routes`, `POST /routes/{name}/disable|enable`.
pub(super) async fn serve(
    gw: Arc<Shared>,
    req: Request<Incoming>,
    path: &str,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    if path == "/routes" {
        return match method {
            Method::GET => {
                // With [fleet], what the others changed since the last poll.
                for (taken, s) in gw.switches().sync().await {
                    crate::switch::record_taken(&taken, &s, gw.audit()).await;
                }
                list(&gw)
            }
            _ => not_allowed("GET"),
        };
    }
    let rest = path.trim_start_matches("/routes/");
    let Some((name, action)) = rest.split_once('/') else {
        return not_found_path();
    };
    let disable = match action {
        "disable" => true,
        "enable" => false,
        _ => return not_found_path(),
    };
    if method != Method::POST {
        return not_allowed("POST");
    }
    let snap = gw.snapshot();
    if snap.router.by_name(name).is_none() {
        let mut known: Vec<&str> = snap.router.routes().map(|r| r.name()).collect();
        known.sort_unstable();
        let shown: String = name.chars().take(64).collect();
        return error(
            StatusCode::NOT_FOUND,
            "no_route",
            &format!(
                "no route {shown:?} in the configuration (routes: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
    let reason = match reason(req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let slot = match audit_slot(&gw, "change; nothing was changed").await {
        Ok(slot) => slot,
        Err(refused) => return refused,
    };
    let route = name.to_string();
    let task = tokio::spawn({
        let gw = gw.clone();
        async move {
            // With [fleet], first what the others changed (the last poll may
            // be up to a poll old): "already disabled" must be true fleet-wide.
            for (taken, s) in gw.switches().sync().await {
                crate::switch::record_taken(&taken, &s, gw.audit()).await;
            }
            let outcome = gw.switches().set(&route, disable, reason, peer).await;
            match &outcome {
                Outcome::Changed { switch, stored, fleet } => {
                    let shared = match fleet {
                        None => None,
                        Some(FleetWrite::Shared) => Some("redis"),
                        Some(FleetWrite::Pending(_)) => Some("local"),
                    };
                    slot.write(crate::switch::audit_entry(&route, switch, "operator", shared));
                    tracing::info!(
                        route,
                        reason = switch.reason.as_deref().unwrap_or(""),
                        by = %peer,
                        fleet = shared.unwrap_or("-"),
                        "route {} through the admin API{}",
                        switch.state(),
                        if switch.disabled { ": it answers 503 route_disabled" } else { "" }
                    );
                    if let Err(e) = stored {
                        tracing::error!(route, error = %e, "route switch: the change could not be stored; it holds until this instance restarts");
                    }
                    if let Some(FleetWrite::Pending(why)) = fleet {
                        tracing::warn!(route, error = %why, "route switch: Redis did not take the change; it holds on this instance and is shared once Redis answers");
                    }
                }
                // The later change found in Redis is in force here now.
                Outcome::Superseded(later) => {
                    slot.write(crate::switch::audit_entry(&route, later, "fleet", Some("redis")));
                    tracing::warn!(route, by = %peer, state = later.state(), "route switch: a later change made elsewhere is in force; this one was not made");
                }
                Outcome::Unchanged(_) => drop(slot),
            }
            outcome
        }
    });
    match task.await {
        Ok(outcome) => answer(name, &outcome),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error"),
    }
}

fn not_allowed(allowed: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "GET /routes; POST /routes/{name}/disable, /routes/{name}/enable",
    );
    r.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allowed));
    r
}

fn not_found_path() -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_FOUND,
        "no_route",
        "route switch endpoints: GET /routes; POST /routes/{name}/disable, /routes/{name}/enable",
    )
}

/// The optional body `{"reason": "..."}`: nothing, or a reason of at most
/// [`MAX_REASON`] characters without control characters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    reason: Option<String>,
}

async fn reason(req: Request<Incoming>) -> Result<Option<String>, Response<Full<Bytes>>> {
    let bytes = super::small_body(req).await?;
    if bytes.trim_ascii().is_empty() {
        return Ok(None);
    }
    let cmd: Command = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!(r#"request body: {e}; send nothing or {{"reason": "..."}}"#),
        )
    })?;
    let Some(text) = cmd.reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > MAX_REASON {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("the reason is longer than {MAX_REASON} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the reason holds control characters (line breaks, tabs); send one line of text",
        ));
    }
    Ok(Some(text))
}

/// One route as `GET /routes` and the changes show it.
fn describe(name: &str, switch: Option<&Switch>) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "state": switch.map_or("enabled", Switch::state),
        "since": switch.map(Switch::since),
        "by": switch.map(|s| s.by.as_str()),
        "reason": switch.and_then(|s| s.reason.as_deref()),
        "instance": switch.and_then(|s| s.instance.as_deref()),
    })
}

fn list(gw: &Shared) -> Response<Full<Bytes>> {
    let snap = gw.snapshot();
    let all = gw.switches().all();
    let mut routes: Vec<serde_json::Value> = snap
        .router
        .routes()
        .map(|r| {
            let mut v = describe(r.name(), all.get(r.name()).map(|s| &**s));
            v["match_prefix"] = r.config.match_prefix.clone().into();
            v
        })
        .collect();
    routes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let unconfigured: Vec<serde_json::Value> = all
        .iter()
        .filter(|(name, _)| snap.router.by_name(name).is_none())
        .map(|(name, s)| describe(name, Some(s)))
        .collect();
    reply(
        StatusCode::OK,
        JSON,
        serde_json::json!({"routes": routes, "not_configured": unconfigured}).to_string(),
    )
}

/// The answer to a change: the route as it is now, whether this call
/// changed it, and what did not go through.
fn answer(name: &str, outcome: &Outcome) -> Response<Full<Bytes>> {
    match outcome {
        Outcome::Changed { switch, stored, fleet } => {
            let mut v = describe(name, Some(switch));
            let mut warnings = Vec::new();
            if let Err(e) = stored {
                warnings.push(format!(
                    "the change could not be stored under state.dir ({e}): it holds on this instance until it restarts"
                ));
            }
            if let Some(FleetWrite::Pending(why)) = fleet {
                warnings.push(format!(
                    "Redis did not take the change ({why}): it holds on this instance now and reaches the other instances once Redis answers"
                ));
            }
            v["changed"] = true.into();
            v["stored"] = stored.is_ok().into();
            if let Some(f) = fleet {
                v["fleet"] = match f {
                    FleetWrite::Shared => "shared",
                    FleetWrite::Pending(_) => "pending",
                }
                .into();
            }
            v["warnings"] = warnings.into();
            reply(StatusCode::OK, JSON, v.to_string())
        }
        Outcome::Unchanged(switch) => {
            let mut v = describe(name, switch.as_deref());
            v["changed"] = false.into();
            reply(StatusCode::OK, JSON, v.to_string())
        }
        Outcome::Superseded(later) => {
            let mut body = serde_json::json!({"error": {
                "code": "route_switch_conflict",
                "message": format!(
                    "a later change made through {} is in force: route {name} is {}; nothing was changed",
                    later.instance.as_deref().unwrap_or("another instance"),
                    later.state()
                ),
            }});
            body["route"] = describe(name, Some(later));
            reply(StatusCode::CONFLICT, JSON, body.to_string())
        }
    }
}
