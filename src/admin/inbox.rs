//! `GET /webhooks` and `POST /webhooks/retry`: the webhook inbox, for
//! `signgate webhooks list|retry`.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{error, reply, JSON};
use crate::state::Shared;

fn no_webhooks() -> Response<Full<Bytes>> {
    error(StatusCode::NOT_FOUND, "no_webhooks", "no [[webhook]] is configured")
}

fn unreadable() -> Response<Full<Bytes>> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "webhook inbox unreadable",
    )
}

pub(super) async fn list(gw: &Shared, failed_only: bool) -> Response<Full<Bytes>> {
    let Some(store) = gw.inbox().cloned() else {
        return no_webhooks();
    };
    match tokio::task::spawn_blocking(move || store.list(failed_only)).await {
        Ok(Ok(events)) => {
            let rows: Vec<serde_json::Value> = events.iter().map(crate::webhook::store::summary).collect();
            reply(StatusCode::OK, JSON, serde_json::json!({ "events": rows }).to_string())
        }
        _ => unreadable(),
    }
}

/// `id=N` re-queues one failed event, `all_failed=true` every one.
pub(super) async fn retry(gw: &Shared, query: &str) -> Response<Full<Bytes>> {
    let id = query
        .split('&')
        .find_map(|p| p.strip_prefix("id="))
        .and_then(|v| v.parse::<u64>().ok());
    let all = query.split('&').any(|p| p == "all_failed=true");
    if id.is_none() && !all {
        return error(StatusCode::BAD_REQUEST, "bad_request", "give id=N or all_failed=true");
    }
    let Some(store) = gw.inbox().cloned() else {
        return no_webhooks();
    };
    match tokio::task::spawn_blocking(move || store.retry(id)).await {
        Ok(Ok(n)) => {
            gw.wake_delivery();
            reply(StatusCode::OK, JSON, serde_json::json!({ "requeued": n }).to_string())
        }
        _ => unreadable(),
    }
}
