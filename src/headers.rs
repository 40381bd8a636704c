//! Header hygiene between client, gateway and upstream: pure rules over a
//! `HeaderMap`, used by the request pipeline and by config validation (which
//! refuses scheme headers that are hop-by-hop).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) never cross the gateway, nor do the
//! headers a `Connection` header names. Client-supplied address headers
//! (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`) are dropped: decisions use the
//! TCP peer only, and the provider must not see a client's claim. Any header
//! that a server could read as one of the scheme's headers (any case, `_` for
//! `-`) is removed before the gateway adds its own, so a client can never
//! choose the key, timestamp or signature. A caller's W3C trace context
//! (`traceparent`, `tracestate`) is dropped too: the provider must not learn
//! internal trace ids (a route with `forward_traceparent` gets the gateway's
//! own span context instead, added when the request is signed). Path and
//! method overrides (`X-Original-URL`, `X-Rewrite-URL`,
//! `X-HTTP-Method-Override`…) are dropped: the provider acts on the path
//! and method the gateway routed and guarded.

use http::header::{self, HeaderMap, HeaderName};

/// RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies
/// still see (`Keep-Alive`, `Proxy-Connection`) and the proxy auth pair.
pub static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Address claims a client could use to spoof its origin.
static SPOOFABLE: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
];

/// Headers some frameworks and rewriters take as the request's real path or
/// method (Symfony before CVE-2018-14773, zend-http, IIS URL Rewrite;
/// method overrides): a signed request must reach the endpoint it was
/// routed and guarded for, with the method the route allowed.
static OVERRIDES: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// The caller's trace context, never forwarded as sent.
static TRACE_CONTEXT: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Remove hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    remove_named_in_connection(h);
    remove_where(h, |k| HOP_BY_HOP.contains(k));
}

/// Names listed in Connection are removed first, while Connection is there.
fn remove_named_in_connection(h: &mut HeaderMap) {
    if !h.contains_key(header::CONNECTION) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
}

/// Remove every header whose name `gone` picks, looking at each name once
/// (a request has a handful; the rules list twenty-odd names, which would
/// otherwise be as many hash lookups).
fn remove_where(h: &mut HeaderMap, gone: impl Fn(&HeaderName) -> bool) {
    // Usually none or two (Host, Content-Length): kept on the stack.
    let mut few: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    let mut more = Vec::new();
    for k in h.keys() {
        if gone(k) {
            match few.get_mut(n) {
                Some(slot) => {
                    *slot = Some(k.clone());
                    n += 1;
                }
                None => more.push(k.clone()),
            }
        }
    }
    for k in few.iter().take(n).flatten().chain(more.iter()) {
        h.remove(k);
    }
}

/// Prepare a client's headers for the upstream: hop-by-hop, framing and
/// address claims removed, and every look-alike of `protected` names removed.
/// Host is left out: the client builds it from the route's upstream URI.
pub fn sanitize_request(h: &mut HeaderMap, protected: &[&HeaderName]) {
    remove_named_in_connection(h);
    remove_where(h, |k| {
        HOP_BY_HOP.contains(k)
            || k == header::HOST
            || k == header::CONTENT_LENGTH
            || k == header::EXPECT
            || k == X_REQUEST_ID
            || SPOOFABLE.contains(k)
            || TRACE_CONTEXT.contains(k)
            || OVERRIDES.contains(k)
            || protected.contains(&k)
            // Underscore and other spellings that some servers (PHP's
            // $_SERVER, CGI) fold into the same variable as the real header.
            || (k.as_str().contains('_')
                && (protected.iter().any(|p| same_cgi_name(k.as_str(), p.as_str()))
                    || OVERRIDES.iter().any(|o| same_cgi_name(k.as_str(), o.as_str()))
                    || SPOOFABLE.iter().any(|o| same_cgi_name(k.as_str(), o.as_str()))))
    });
}

/// Whether two header names map to the same CGI variable (`-` and `_` fold).
fn same_cgi_name(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
            fold(x) == fold(y)
        })
}

/// Prepare an upstream response's headers for the client.
pub fn sanitize_response(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn client_cannot_smuggle_scheme_headers() {
        let sig = HeaderName::from_static("x-signature");
        let key = HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        h.append("X-Signature", HeaderValue::from_static("forged"));
        h.append("x-signature", HeaderValue::from_static("forged2"));
        h.append("X_SIGNATURE", HeaderValue::from_static("forged3"));
        h.append("x_api_key", HeaderValue::from_static("stolen"));
        h.append("connection", HeaderValue::from_static("x-keep-me, x-drop-me"));
        h.append("x-drop-me", HeaderValue::from_static("1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("content-type", HeaderValue::from_static("application/json"));
        h.append(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        h.append("tracestate", HeaderValue::from_static("internal=tenant-7"));
        h.append(
            "X-Original-URL",
            HeaderValue::from_static("/api/v3/banking/payment/create"),
        );
        h.append(
            "x_rewrite_url",
            HeaderValue::from_static("/api/v3/banking/payment/create"),
        );
        h.append("X-HTTP-Method-Override", HeaderValue::from_static("DELETE"));
        h.append("x-method-override", HeaderValue::from_static("PUT"));
        h.append("x_forwarded_for", HeaderValue::from_static("10.0.0.1"));
        h.append("x_forwarded_host", HeaderValue::from_static("evil.example"));
        sanitize_request(&mut h, &[&sig, &key]);
        for gone in [
            "x-original-url",
            "x_rewrite_url",
            "x-http-method-override",
            "x-method-override",
            "x_forwarded_for",
            "x_forwarded_host",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert!(h.get(&sig).is_none());
        assert!(h.get("x_signature").is_none());
        assert!(h.get("x_api_key").is_none());
        assert!(h.get("x-drop-me").is_none());
        assert!(h.get("x-keep-me").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("x-forwarded-for").is_none());
        assert!(h.get("traceparent").is_none());
        assert!(h.get("tracestate").is_none());
        assert_eq!(h["content-type"], "application/json");
    }
}
