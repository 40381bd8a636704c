//! The egress-IP self-check: is the address the provider sees the one it
//! whitelisted? With `egress.expect_source_ip` and `egress.source_check_url`,
//! a background task asks the echo endpoint, through the egress client (the
//! same `source_addr` binding, the same TLS trust as real traffic), at start
//! and every `source_check_interval_secs`, and after a reload that changes
//! `[egress]`. A mismatch or a failed check turns readiness off (naming the
//! expected and the seen address) and sets `signgate_egress_source_ip_ok`
//! to 0; a match sets it to 1. One log line per change of state. Traffic is
//! never blocked by it: the provider is the judge of its own allowlist.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::SourceCheck;
use crate::state::{EgressCheck, Shared};
use crate::upstream::Upstream;

/// Largest echo answer read (an address, or a small JSON object).
const MAX_ANSWER_BYTES: usize = 4096;
/// How long the echo endpoint may take to send its (tiny) body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Check now, then every interval, or when `wake` is signalled (a reload),
/// until `cancel`.
pub(crate) async fn run(shared: Arc<Shared>, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut last: Option<EgressCheck> = None;
    loop {
        let snap = shared.snapshot();
        let wait = match snap.config.egress.source_check.clone() {
            Some(check) => {
                let now = check_once(&snap.upstream, &check).await;
                publish(&shared, &mut last, now);
                check.interval
            }
            None => {
                if let Some(old) = last.take() {
                    let _ = shared
                        .metrics()
                        .egress_source_ip_ok
                        .remove_label_values(&[&old.expected.to_string()]);
                    shared.set_egress_check(None);
                }
                Duration::MAX
            }
        };
        drop(snap);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = sleep(wait) => {}
        }
    }
}

async fn sleep(d: Duration) {
    match tokio::time::Instant::now().checked_add(d) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Store the outcome, set the gauge, and log when the state changed.
fn publish(shared: &Shared, last: &mut Option<EgressCheck>, now: EgressCheck) {
    let gauge = &shared.metrics().egress_source_ip_ok;
    if let Some(old) = last.as_ref().filter(|o| o.expected != now.expected) {
        let _ = gauge.remove_label_values(&[&old.expected.to_string()]);
    }
    gauge
        .with_label_values(&[&now.expected.to_string()])
        .set(i64::from(now.problem.is_none()));
    if last.as_ref() != Some(&now) {
        match &now.problem {
            None => {
                tracing::info!(expected = %now.expected, "egress source address checked: the provider sees the expected address")
            }
            Some(problem) => tracing::error!(
                expected = %now.expected,
                seen = %now.seen.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
                "egress source address check failed (not ready; traffic is not blocked): {problem}"
            ),
        }
    }
    shared.set_egress_check(Some(now.clone()));
    *last = Some(now);
}

/// One check: ask the echo endpoint which address it sees.
pub(crate) async fn check_once(upstream: &Upstream, check: &SourceCheck) -> EgressCheck {
    let expected = check.expect;
    match seen_address(upstream, check).await {
        Ok(seen) if seen == expected => EgressCheck {
            expected,
            seen: Some(seen),
            problem: None,
        },
        Ok(seen) => EgressCheck {
            expected,
            seen: Some(seen),
            problem: Some(format!(
                "{} reports this gateway's requests from {seen}, not {expected} (egress.expect_source_ip): the provider would refuse them; check egress.source_addr and the NAT in front of it",
                check.url
            )),
        },
        Err(why) => EgressCheck {
            expected,
            seen: None,
            problem: Some(format!(
                "the egress address could not be checked against {expected} (egress.expect_source_ip): {why}"
            )),
        },
    }
}

async fn seen_address(upstream: &Upstream, check: &SourceCheck) -> Result<IpAddr, String> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = check.url.clone();
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("text/plain, application/json"),
    );
    let url = &check.url;
    let resp = upstream
        .send(req)
        .await
        .map_err(|e| format!("GET {url} failed ({}): {}", e.failure.kind(), e.detail))?;
    let status = resp.status();
    let body = tokio::time::timeout(BODY_TIMEOUT, Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect())
        .await
        .map_err(|_| {
            format!(
                "GET {url}: the answer did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("GET {url}: reading the answer failed: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("GET {url} answered {}", status.as_u16()));
    }
    parse_address(&body).ok_or_else(|| {
        format!("GET {url} answered something that is not an address (expected text such as 203.0.113.7, or JSON {{\"ip\": \"203.0.113.7\"}})")
    })
}

/// An address as text, or the `ip` of a JSON object; IPv4-mapped IPv6 as IPv4.
pub(crate) fn parse_address(body: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let ip = if text.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Echo {
            ip: String,
        }
        serde_json::from_str::<Echo>(text).ok()?.ip.trim().parse().ok()?
    } else {
        text.parse().ok()?
    };
    Some(crate::allowlist::normalize(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_answers_as_text_or_json() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(parse_address(b"203.0.113.7\n"), Some(v4));
        assert_eq!(parse_address(br#"{"ip":"203.0.113.7"}"#), Some(v4));
        assert_eq!(parse_address(br#" {"ip": "203.0.113.7", "country": "IN"} "#), Some(v4));
        assert_eq!(parse_address(b"::ffff:203.0.113.7"), Some(v4), "IPv4-mapped is IPv4");
        assert_eq!(parse_address(b"2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        for bad in [
            &b""[..],
            b"<html>",
            br#"{"address":"203.0.113.7"}"#,
            br#"{"ip":7}"#,
            b"203.0.113.7:443",
            b"\xff",
        ] {
            assert_eq!(parse_address(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
