//! `GatewayError`: every way a request can be refused or fail on the gateway's
//! side, mapped in one place to its HTTP status, its error code (the JSON
//! `error.code`, the `reason` metric label and the audit reason) and a short
//! client-facing message that never carries internals or secrets.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::RequestId;
use crate::secrets::Unavailable;
pub use crate::upstream::UpstreamFailure;
use crate::webhook::Refusal;

/// nginx's "client closed request": only ever recorded, never sent.
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No route's `match_prefix` covers the path.
    NoRoute,
    /// The route exists but not for this method.
    MethodNotAllowed { route: String, allowed: String },
    /// The client's address is not in `[access].allow` or the route's `allow`.
    IpNotAllowed,
    /// mTLS identity not in the route's `allow_identities`.
    IdentityNotAllowed,
    /// The route picks its credential by caller, and no `credential_map`
    /// entry matches this one.
    NoCredentialForCaller,
    /// A rate limit is exhausted; `retry_after` in whole seconds (rounded up).
    RateLimited { scope: &'static str, retry_after: u64 },
    /// Declared or streamed body larger than `listener.max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// The client stopped sending the body for too long.
    BodyTimeout,
    /// The body could not be read (client aborted, bad chunking).
    BadBody,
    /// A body that is not acceptable JSON on a canonicalizing route.
    InvalidJson { offset: usize, reason: &'static str },
    /// `Content-Encoding` other than identity: we never sign bytes we do not send.
    UnsupportedEncoding,
    /// A `Transfer-Encoding` other than `chunked` (RFC 9112 §6.1: 501).
    UnsupportedTransferCoding,
    /// Dot segments or encoded separators in the path.
    InvalidPath,
    /// Request target (path + query) longer than `listener.max_uri_bytes`.
    UriTooLong { limit: usize },
    /// The duplicate guard holds this transaction reference: in flight,
    /// succeeded, or (`unknown`) sent before with an outcome nobody knows.
    DuplicateRequest { unknown: bool },
    /// A route with `duplicate_key` got a body without that reference.
    MissingReference { pointer: String },
    /// The duplicate guard is full of in-flight references (fail closed).
    DuplicateGuardFull,
    /// `[fleet]`: the duplicate guard's Redis cannot answer (fail closed).
    DuplicateGuardUnavailable,
    /// A route with `amount_guard` got no usable amount (or currency):
    /// missing, negative, not a plain decimal, too precise. The message
    /// says which and where.
    InvalidAmount { message: String },
    /// Over one of the route's amount caps; the message names the cap and
    /// its value (never a total).
    AmountLimitExceeded { message: String },
    /// The amount guard's totals cannot be read or written (Redis down,
    /// the store failing): fail closed.
    AmountGuardUnavailable,
    /// The provider answered 429/503 with `Retry-After` on this route: it is
    /// cooling down (fleet-wide with `[fleet]`); nothing was sent.
    ProviderCooldown { retry_after: u64 },
    /// `[fleet]` with `limits_on_error = "deny"`: the shared limits cannot
    /// be checked while Redis cannot answer.
    RateLimitUnavailable,
    /// `[fleet]`: another instance is storing this very webhook event.
    WebhookInProgress,
    /// `[fleet]`: a webhook whose secret also signs outbound requests, and
    /// Redis cannot say whether another instance sent its signature.
    ReflectionCheckUnavailable,
    /// A webhook without a valid signature (or without the headers).
    BadSignature,
    /// A webhook whose timestamp is outside `tolerance_secs`.
    StaleTimestamp,
    /// A webhook carrying a signature this gateway produced (an outbound
    /// request's headers replayed as an event).
    ReflectedSignature,
    /// The route's credential cannot sign; the reason says what to provide.
    CredentialUnavailable(Unavailable),
    /// Upstream failed before a response arrived.
    Upstream(UpstreamFailure),
    /// The route's `max_inflight` upstream calls were busy for `queue_timeout_ms`.
    UpstreamBusy,
    /// Operators disabled the route (its kill switch); nothing was sent.
    RouteDisabled { route: String },
    /// The gateway is draining for shutdown.
    ShuttingDown,
    /// No room in the audit queue in time: refused rather than unaudited.
    AuditUnavailable,
    /// A bug: a panic in the request task or an impossible state.
    Internal,
    /// The client went away (connection closed, HTTP/2 reset, drain deadline)
    /// before its answer; never sent, only recorded (nginx's 499).
    ClientGone,
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::BadSignature => GatewayError::BadSignature,
            Refusal::StaleTimestamp => GatewayError::StaleTimestamp,
            Refusal::ReflectedSignature => GatewayError::ReflectedSignature,
            Refusal::InvalidJson { offset, reason } => GatewayError::InvalidJson { offset, reason },
            Refusal::CredentialUnavailable(why) => GatewayError::CredentialUnavailable(why),
            Refusal::Store => GatewayError::Internal,
            Refusal::InProgress => GatewayError::WebhookInProgress,
            Refusal::ReflectionUnknown => GatewayError::ReflectionCheckUnavailable,
        }
    }
}

impl From<crate::amount_guard::Refusal> for GatewayError {
    fn from(r: crate::amount_guard::Refusal) -> Self {
        use crate::amount_guard::Refusal;
        match r {
            Refusal::Invalid(message) => GatewayError::InvalidAmount { message },
            Refusal::OverRequest(message) | Refusal::OverDay(message) | Refusal::OverCount(message) => {
                GatewayError::AmountLimitExceeded { message }
            }
            Refusal::Unavailable => GatewayError::AmountGuardUnavailable,
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::IpNotAllowed => StatusCode::FORBIDDEN,
            GatewayError::IdentityNotAllowed => StatusCode::FORBIDDEN,
            GatewayError::NoCredentialForCaller => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BadBody => StatusCode::BAD_REQUEST,
            GatewayError::InvalidJson { .. } => StatusCode::BAD_REQUEST,
            GatewayError::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            GatewayError::InvalidPath => StatusCode::BAD_REQUEST,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::DuplicateRequest { .. } => StatusCode::CONFLICT,
            GatewayError::MissingReference { .. } => StatusCode::BAD_REQUEST,
            GatewayError::DuplicateGuardFull => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::DuplicateGuardUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::InvalidAmount { .. } => StatusCode::BAD_REQUEST,
            GatewayError::AmountLimitExceeded { .. } => StatusCode::FORBIDDEN,
            GatewayError::AmountGuardUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ProviderCooldown { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::RateLimitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::WebhookInProgress => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ReflectionCheckUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BadSignature => StatusCode::UNAUTHORIZED,
            GatewayError::StaleTimestamp => StatusCode::UNAUTHORIZED,
            GatewayError::ReflectedSignature => StatusCode::UNAUTHORIZED,
            GatewayError::CredentialUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Upstream(UpstreamFailure::Timeout | UpstreamFailure::ResponseIdle) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            GatewayError::Upstream(
                UpstreamFailure::Connect | UpstreamFailure::Tls | UpstreamFailure::Reset | UpstreamFailure::Protocol,
            ) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RouteDisabled { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::ClientGone => client_closed_request(),
        }
    }

    /// The stable error code: JSON `error.code`, metric `reason`, audit reason.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::IpNotAllowed => "ip_not_allowed",
            GatewayError::IdentityNotAllowed => "identity_not_allowed",
            GatewayError::NoCredentialForCaller => "no_credential_for_caller",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::BodyTimeout => "body_timeout",
            GatewayError::BadBody => "bad_body",
            GatewayError::InvalidJson { .. } => "invalid_json",
            GatewayError::UnsupportedEncoding => "unsupported_encoding",
            GatewayError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            GatewayError::InvalidPath => "invalid_path",
            GatewayError::UriTooLong { .. } => "uri_too_long",
            GatewayError::DuplicateRequest { .. } => "duplicate_request",
            GatewayError::MissingReference { .. } => "missing_duplicate_key",
            GatewayError::DuplicateGuardFull => "duplicate_guard_full",
            GatewayError::DuplicateGuardUnavailable => "duplicate_guard_unavailable",
            GatewayError::InvalidAmount { .. } => "invalid_amount",
            GatewayError::AmountLimitExceeded { .. } => "amount_limit_exceeded",
            GatewayError::AmountGuardUnavailable => "amount_guard_unavailable",
            GatewayError::ProviderCooldown { .. } => "provider_cooldown",
            GatewayError::RateLimitUnavailable => "rate_limit_unavailable",
            GatewayError::WebhookInProgress => "webhook_in_progress",
            GatewayError::ReflectionCheckUnavailable => "reflection_check_unavailable",
            GatewayError::BadSignature => "bad_signature",
            GatewayError::StaleTimestamp => "stale_timestamp",
            GatewayError::ReflectedSignature => "reflected_signature",
            GatewayError::CredentialUnavailable(_) => "credential_unavailable",
            GatewayError::Upstream(UpstreamFailure::Connect) => "upstream_unreachable",
            GatewayError::Upstream(UpstreamFailure::Tls) => "upstream_tls",
            GatewayError::Upstream(UpstreamFailure::Timeout) => "upstream_timeout",
            GatewayError::Upstream(UpstreamFailure::Reset | UpstreamFailure::Protocol) => "upstream_failed",
            GatewayError::Upstream(UpstreamFailure::ResponseIdle) => "upstream_response_idle",
            GatewayError::UpstreamBusy => "upstream_busy",
            GatewayError::RouteDisabled { .. } => "route_disabled",
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::AuditUnavailable => "audit_unavailable",
            GatewayError::Internal => "internal_error",
            GatewayError::ClientGone => "client_gone",
        }
    }

    /// Short, specific, safe to show the client.
    pub fn message(&self) -> String {
        match self {
            GatewayError::NoRoute => "no route matches this path".into(),
            GatewayError::MethodNotAllowed { route, allowed } => {
                format!("route {route} accepts only {allowed}")
            }
            GatewayError::IpNotAllowed => "client address is not allowed".into(),
            GatewayError::IdentityNotAllowed => "client certificate identity is not allowed on this route".into(),
            GatewayError::NoCredentialForCaller => {
                "this route signs with a credential chosen by caller, and none is configured for this client address or certificate identity".into()
            }
            GatewayError::RateLimited { scope, retry_after } => {
                format!("{scope} rate limit exceeded; retry after {retry_after} s")
            }
            GatewayError::BodyTooLarge { limit } => format!("request body exceeds {limit} bytes"),
            GatewayError::BodyTimeout => "request body was not received in time".into(),
            GatewayError::BadBody => "request body could not be read".into(),
            GatewayError::InvalidJson { offset, reason } => {
                format!("request body is not valid JSON at byte {offset}: {reason}")
            }
            GatewayError::UnsupportedEncoding => {
                "compressed request bodies are not accepted; send the body uncompressed".into()
            }
            GatewayError::UnsupportedTransferCoding => "only the chunked transfer coding is accepted".into(),
            GatewayError::InvalidPath => "path contains dot segments or encoded separators".into(),
            GatewayError::UriTooLong { limit } => format!("request target exceeds {limit} bytes"),
            GatewayError::DuplicateRequest { unknown: false } => {
                "a request with the same transaction reference is in flight or already succeeded".into()
            }
            GatewayError::DuplicateRequest { unknown: true } => {
                "an earlier request with the same transaction reference was sent and its outcome is unknown \
                 (timeout or cut response); nothing was sent now: check its status with the provider"
                    .into()
            }
            GatewayError::MissingReference { pointer } => {
                format!("this route needs a transaction reference at JSON pointer {pointer}")
            }
            GatewayError::DuplicateGuardFull => {
                "too many transactions in flight to guard against duplicates; retry shortly".into()
            }
            GatewayError::DuplicateGuardUnavailable => {
                "the duplicate guard's store cannot answer; refused, nothing was sent".into()
            }
            GatewayError::InvalidAmount { message } | GatewayError::AmountLimitExceeded { message } => {
                format!("{message}; nothing was sent")
            }
            GatewayError::AmountGuardUnavailable => {
                "the amount guard cannot read or write the day's totals; refused, nothing was sent".into()
            }
            GatewayError::ProviderCooldown { retry_after } => {
                format!("the provider asked to back off on this route; nothing was sent; retry after {retry_after} s")
            }
            GatewayError::RateLimitUnavailable => {
                "the shared rate limits cannot be checked now; refused, nothing was sent".into()
            }
            GatewayError::WebhookInProgress => "another gateway instance is storing this event; retry shortly".into(),
            GatewayError::ReflectionCheckUnavailable => {
                "the shared store cannot say whether this signature is one the gateway sent; not accepted, retry later"
                    .into()
            }
            GatewayError::BadSignature => "signature missing or invalid".into(),
            GatewayError::StaleTimestamp => "timestamp outside the accepted window".into(),
            GatewayError::ReflectedSignature => {
                "this signature was produced by the gateway for an outbound request; it is not a provider event".into()
            }
            GatewayError::CredentialUnavailable(why) => {
                format!("credential {} is not available: {}", why.credential, why.reason)
            }
            GatewayError::Upstream(failure) => upstream_message(*failure).into(),
            GatewayError::UpstreamBusy => "too many requests are waiting for the upstream; retry shortly".into(),
            GatewayError::RouteDisabled { route } => {
                format!("route {route} is disabled by the gateway's operators; nothing was sent")
            }
            GatewayError::ShuttingDown => "the gateway is shutting down".into(),
            GatewayError::AuditUnavailable => {
                "the audit log cannot record this request (queue full or writes failing); refused, nothing was sent"
                    .into()
            }
            GatewayError::Internal => "internal error".into(),
            GatewayError::ClientGone => "the client closed the request before its answer".into(),
        }
    }

    /// The JSON error response of the design contract.
    pub fn to_response(&self, request_id: &RequestId) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.message(),
                "request_id": request_id.as_str(),
            }
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            GatewayError::RateLimited { retry_after, .. } | GatewayError::ProviderCooldown { retry_after } => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            GatewayError::RateLimitUnavailable
            | GatewayError::WebhookInProgress
            | GatewayError::ReflectionCheckUnavailable => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::MethodNotAllowed { allowed, .. } => {
                if let Ok(v) = HeaderValue::from_str(allowed) {
                    h.insert(http::header::ALLOW, v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// What went wrong with the upstream, in the words of the error body.
fn upstream_message(failure: UpstreamFailure) -> &'static str {
    match failure {
        UpstreamFailure::Connect => "could not connect to the upstream",
        UpstreamFailure::Tls => "TLS with the upstream failed (certificate not trusted or handshake refused)",
        UpstreamFailure::Timeout => "the upstream did not answer in time",
        UpstreamFailure::Reset => "the upstream closed the connection",
        UpstreamFailure::Protocol => "the upstream sent an invalid response",
        UpstreamFailure::ResponseIdle => "the upstream stopped sending its response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table, pinned: a change here is a change of the public contract.
    #[test]
    fn status_and_code_table() {
        let rows: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::NoRoute, 404, "no_route"),
            (
                GatewayError::MethodNotAllowed {
                    route: "r".into(),
                    allowed: "POST".into(),
                },
                405,
                "method_not_allowed",
            ),
            (GatewayError::IpNotAllowed, 403, "ip_not_allowed"),
            (GatewayError::IdentityNotAllowed, 403, "identity_not_allowed"),
            (GatewayError::NoCredentialForCaller, 403, "no_credential_for_caller"),
            (
                GatewayError::RateLimited {
                    scope: "global",
                    retry_after: 1,
                },
                429,
                "rate_limited",
            ),
            (GatewayError::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
            (GatewayError::BodyTimeout, 408, "body_timeout"),
            (GatewayError::BadBody, 400, "bad_body"),
            (
                GatewayError::InvalidJson { offset: 3, reason: "x" },
                400,
                "invalid_json",
            ),
            (GatewayError::UnsupportedEncoding, 415, "unsupported_encoding"),
            (
                GatewayError::UnsupportedTransferCoding,
                501,
                "unsupported_transfer_coding",
            ),
            (GatewayError::InvalidPath, 400, "invalid_path"),
            (GatewayError::UriTooLong { limit: 1 }, 414, "uri_too_long"),
            (
                GatewayError::DuplicateRequest { unknown: false },
                409,
                "duplicate_request",
            ),
            (
                GatewayError::DuplicateRequest { unknown: true },
                409,
                "duplicate_request",
            ),
            (
                GatewayError::MissingReference { pointer: "/o".into() },
                400,
                "missing_duplicate_key",
            ),
            (GatewayError::DuplicateGuardFull, 503, "duplicate_guard_full"),
            (
                GatewayError::DuplicateGuardUnavailable,
                503,
                "duplicate_guard_unavailable",
            ),
            (
                GatewayError::ProviderCooldown { retry_after: 2 },
                429,
                "provider_cooldown",
            ),
            (
                GatewayError::InvalidAmount { message: "m".into() },
                400,
                "invalid_amount",
            ),
            (
                GatewayError::AmountLimitExceeded { message: "m".into() },
                403,
                "amount_limit_exceeded",
            ),
            (GatewayError::AmountGuardUnavailable, 503, "amount_guard_unavailable"),
            (GatewayError::RateLimitUnavailable, 503, "rate_limit_unavailable"),
            (GatewayError::WebhookInProgress, 503, "webhook_in_progress"),
            (
                GatewayError::ReflectionCheckUnavailable,
                503,
                "reflection_check_unavailable",
            ),
            (GatewayError::BadSignature, 401, "bad_signature"),
            (GatewayError::StaleTimestamp, 401, "stale_timestamp"),
            (GatewayError::ReflectedSignature, 401, "reflected_signature"),
            (
                GatewayError::CredentialUnavailable(Unavailable {
                    credential: "c".into(),
                    expired: false,
                    reason: "h".into(),
                }),
                503,
                "credential_unavailable",
            ),
            (
                GatewayError::Upstream(UpstreamFailure::Connect),
                502,
                "upstream_unreachable",
            ),
            (GatewayError::Upstream(UpstreamFailure::Tls), 502, "upstream_tls"),
            (
                GatewayError::Upstream(UpstreamFailure::Timeout),
                504,
                "upstream_timeout",
            ),
            (GatewayError::Upstream(UpstreamFailure::Reset), 502, "upstream_failed"),
            (
                GatewayError::Upstream(UpstreamFailure::Protocol),
                502,
                "upstream_failed",
            ),
            (
                GatewayError::Upstream(UpstreamFailure::ResponseIdle),
                504,
                "upstream_response_idle",
            ),
            (GatewayError::UpstreamBusy, 503, "upstream_busy"),
            (GatewayError::RouteDisabled { route: "r".into() }, 503, "route_disabled"),
            (GatewayError::ShuttingDown, 503, "shutting_down"),
            (GatewayError::AuditUnavailable, 503, "audit_unavailable"),
            (GatewayError::Internal, 500, "internal_error"),
            (GatewayError::ClientGone, 499, "client_gone"),
        ];
        for (e, status, code) in rows {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code, "{e:?}");
        }
    }

    #[test]
    fn response_is_the_contract_json() {
        let rid = RequestId::parse_or_new(None);
        let resp = GatewayError::RateLimited {
            scope: "route kwikpaisa",
            retry_after: 2,
        }
        .to_response(&rid);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["content-type"], "application/json");
    }
}
