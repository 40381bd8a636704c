//! `GET /log-level` and `PUT /log-level`: the process's log filter, read and
//! changed while it runs (`EnvFilter` syntax: `debug`,
//! `info,signgate=debug`, `signgate::proxy=trace`…). The body of a PUT is
//! the filter as plain text. A filter that does not parse is refused with
//! 400 naming the problem, and the old one stays. The change lasts until the
//! process ends: a restart starts again from `SIGNGATE_LOG`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use tracing_subscriber::EnvFilter;

use super::{error, reply, JSON};
use crate::logging::FilterHandle;

/// Longest filter accepted.
const MAX_FILTER: usize = 4096;

fn unavailable() -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "log_level_unavailable",
        "this gateway does not own its log filter (started in-process, not by `signgate run`)",
    )
}

fn current(handle: &FilterHandle) -> Option<String> {
    handle.with_current(ToString::to_string).ok()
}

pub(super) fn get(handle: Option<&FilterHandle>) -> Response<Full<Bytes>> {
    let Some(filter) = handle.and_then(current) else {
        return unavailable();
    };
    reply(StatusCode::OK, JSON, serde_json::json!({"filter": filter}).to_string())
}

/// Parse `text` as a filter: the filter, or why not (for a 400).
pub(super) fn parse(text: &str) -> Result<EnvFilter, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the body is empty; send a filter such as `info` or `signgate=debug`".into());
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(text)
        .map_err(|e| format!("not a valid log filter: {e}"))
}

pub(super) async fn put(
    handle: Option<&FilterHandle>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let Some(handle) = handle else {
        return unavailable();
    };
    let body = match Limited::new(req.into_body(), MAX_FILTER).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("the request body could not be read (at most {MAX_FILTER} bytes)"),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_filter",
            "the filter is not UTF-8 text",
        );
    };
    let filter = match parse(text) {
        Ok(f) => f,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid_filter", &why),
    };
    let previous = current(handle).unwrap_or_default();
    let next = filter.to_string();
    if let Err(e) = handle.reload(filter) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "log_level_unavailable",
            &format!("the log filter could not be changed: {e}"),
        );
    }
    // At warn, so the change shows under the new filter and the old alike.
    tracing::warn!(%peer, previous, filter = next, "log filter changed through the admin API");
    reply(
        StatusCode::OK,
        JSON,
        serde_json::json!({"filter": next, "previous": previous}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_name_the_problem() {
        assert_eq!(parse("signgate=debug").unwrap().to_string(), "signgate=debug");
        assert!(parse(" info,hyper=warn \n").is_ok());
        for bad in ["", "   ", "signgate=loud", "[{"] {
            let why = parse(bad).unwrap_err();
            assert!(!why.is_empty(), "{bad:?}");
        }
        assert!(parse("signgate=loud").unwrap_err().contains("not a valid log filter"));
    }
}
