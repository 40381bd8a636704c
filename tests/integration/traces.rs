//! Traces (`[tracing]`): the gateway exports OTLP/HTTP protobuf to a real
//! receiver on loopback that decodes every request with the OTLP protobuf
//! types (`opentelemetry-proto`, prost). The provider stand-in records the
//! headers it received.
//!
//! - a request span and its three children (credential, sign, upstream),
//!   with the right parents, kinds and attributes, continuing a caller's
//!   W3C `traceparent`, and never carrying a secret, the body or the
//!   signature;
//! - the provider gets no `traceparent` by default (not the caller's
//!   either), and the gateway's own upstream span with `forward_traceparent`;
//! - with `sample_ratio = 0`, errors (a provider 502, a connect failure
//!   retried once) are exported and a success and a 404 are not; this one
//!   runs the real binary, which flushes its spans when SIGTERM stops it;
//! - `[tracing]` is bound at start-up (a reload that changes it is refused)
//!   while a route's `forward_traceparent` reloads.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::support::*;

/// One span as the receiver decoded it (ids in lowercase hex).
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: SpanKind,
    attrs: BTreeMap<String, String>,
    status: StatusCode,
    status_message: String,
}

impl Seen {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or_else(
            || panic!("span {} has no {key}: {:?}", self.name, self.attrs),
            String::as_str,
        )
    }
}

/// An OTLP/HTTP traces receiver on 127.0.0.1: every POST is decoded as an
/// `ExportTraceServiceRequest`; a request that is not one fails the test.
struct Collector {
    addr: SocketAddr,
    spans: mpsc::UnboundedReceiver<Seen>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, spans) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            assert_eq!(req.method(), Method::POST);
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                            for rs in export.resource_spans {
                                let service = rs
                                    .resource
                                    .as_ref()
                                    .map(|r| attrs(&r.attributes))
                                    .and_then(|a| a.get("service.name").cloned())
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("signgate"));
                                    for s in ss.spans {
                                        let status = s.status.clone().unwrap_or_default();
                                        let _ = tx.send(Seen {
                                            service: service.clone(),
                                            trace_id: hex::encode(&s.trace_id),
                                            span_id: hex::encode(&s.span_id),
                                            parent: hex::encode(&s.parent_span_id),
                                            name: s.name.clone(),
                                            kind: s.kind(),
                                            attrs: attrs(&s.attributes),
                                            status: status.code(),
                                            status_message: status.message,
                                        });
                                    }
                                }
                            }
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            let mut resp = http::Response::new(Full::new(Bytes::from(answer)));
                            resp.headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far (call after the gateway flushed).
    fn received(&mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Ok(s) = self.spans.try_recv() {
            out.push(s);
        }
        out
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// The spans of the request whose id is `rid`: its request span first.
fn request(spans: &[Seen], rid: &str) -> (Seen, Vec<Seen>) {
    let root = spans
        .iter()
        .find(|s| s.attrs.get("signgate.request_id").map(String::as_str) == Some(rid))
        .unwrap_or_else(|| panic!("no request span for {rid}: {spans:#?}"))
        .clone();
    let children = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.parent == root.span_id)
        .cloned()
        .collect();
    (root, children)
}

fn named<'a>(spans: &'a [Seen], name: &str) -> Vec<&'a Seen> {
    spans.iter().filter(|s| s.name == name).collect()
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_request_span_has_its_three_children_and_continues_the_callers_trace() {
    let mut collector = Collector::start().await;
    let s = Setup::with(|c| {
        c.tracing("otlp_endpoint", collector.endpoint())
            .tracing("sample_ratio", 1.0)
    })
    .await;
    let body = r#"{"order_id":"ORD-7","amount":"10.00"}"#;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = TestClient::new()
        .send(
            Method::POST,
            &s.url("/kwikpaisa/api/v3/order"),
            &[
                ("content-type", "application/json"),
                ("x-request-id", "trace-1"),
                ("traceparent", &traceparent),
                ("tracestate", "internal=tenant-7"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = s.provider.standin.records().await;
    assert_eq!(seen.len(), 1);
    let sent = &seen[0];
    // The provider learns nothing of the caller's trace.
    assert!(sent.headers.get("traceparent").is_none(), "{:?}", sent.headers);
    assert!(sent.headers.get("tracestate").is_none(), "{:?}", sent.headers);
    let signature = sent.headers["x-signature"].to_str().unwrap().to_string();

    let Setup { fx, gw } = s;
    assert!(gw.shutdown().await, "drained");
    let spans = collector.received();
    assert_eq!(spans.len(), 4, "{spans:#?}");

    let (root, children) = request(&spans, "trace-1");
    assert_eq!(root.service, "signgate");
    assert_eq!(root.trace_id, CALLER_TRACE, "the caller's trace is continued");
    assert_eq!(root.parent, CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(root.name, "POST kwikpaisa");
    assert_eq!(root.kind, SpanKind::Server);
    assert_eq!(root.attr("signgate.route"), "kwikpaisa");
    assert_eq!(root.attr("http.request.method"), "POST");
    assert_eq!(root.attr("http.response.status_code"), "200");
    assert_eq!(root.attr("signgate.trace.reason"), "sampled");
    assert_eq!(root.status, StatusCode::Unset);

    assert_eq!(children.len(), 3, "{children:#?}");
    let credential = named(&children, "credential");
    let sign = named(&children, "sign");
    let upstream = named(&children, "upstream");
    assert_eq!(
        (credential.len(), sign.len(), upstream.len()),
        (1, 1, 1),
        "{children:#?}"
    );
    assert_eq!(credential[0].kind, SpanKind::Internal);
    assert_eq!(credential[0].attr("signgate.credential"), "kwikpaisa");
    assert_eq!(sign[0].kind, SpanKind::Internal);
    assert_eq!(sign[0].attr("signgate.scheme"), "kwikpaisa");
    assert_eq!(sign[0].attr("signgate.attempt"), "1");
    assert_eq!(upstream[0].kind, SpanKind::Client);
    assert_eq!(upstream[0].attr("server.address"), "localhost");
    assert_eq!(
        upstream[0].attr("server.port"),
        fx.provider.standin.addr().port().to_string()
    );
    assert_eq!(upstream[0].attr("http.response.status_code"), "200");
    for c in &children {
        assert_eq!(c.trace_id, CALLER_TRACE);
        assert_ne!(c.span_id, root.span_id);
    }

    // Never a secret, the body, the signature or the caller's trace state.
    for span in &spans {
        for (k, v) in &span.attrs {
            for secret in [
                fx.provider.secret.as_str(),
                fx.provider.api_key.as_str(),
                signature.as_str(),
                "ORD-7",
                "tenant-7",
            ] {
                assert!(!v.contains(secret), "{} {k}={v} leaks {secret:?}", span.name);
            }
        }
    }
}

#[tokio::test]
async fn forward_traceparent_sends_the_gateways_upstream_span() {
    let mut collector = Collector::start().await;
    let s = Setup::with(|c| {
        c.tracing("otlp_endpoint", collector.endpoint())
            .tracing("sample_ratio", 1.0)
            .edit_route("kwikpaisa", |r| r.forward_traceparent(true))
    })
    .await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = TestClient::new()
        .send(
            Method::POST,
            &s.url("/kwikpaisa/api/v3/order"),
            &[
                ("x-request-id", "fwd-1"),
                ("traceparent", &traceparent),
                ("tracestate", "internal=tenant-7"),
            ],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    // A request without a caller's trace context gets one from the gateway too.
    let r = TestClient::new()
        .send(
            Method::POST,
            &s.url("/kwikpaisa/api/v3/order"),
            &[("x-request-id", "fwd-2")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = s.provider.standin.records().await;
    assert_eq!(seen.len(), 2);

    let Setup { fx: _fx, gw } = s;
    assert!(gw.shutdown().await);
    let spans = collector.received();

    for (rid, record) in [("fwd-1", &seen[0]), ("fwd-2", &seen[1])] {
        let (root, children) = request(&spans, rid);
        let upstream = named(&children, "upstream");
        assert_eq!(upstream.len(), 1, "{children:#?}");
        let forwarded = record.headers["traceparent"].to_str().unwrap();
        assert_eq!(
            forwarded,
            format!("00-{}-{}-01", root.trace_id, upstream[0].span_id),
            "the provider's parent is the gateway's upstream span"
        );
        assert!(
            record.headers.get("tracestate").is_none(),
            "tracestate is never forwarded"
        );
        assert_eq!(record.verdict, signgate::devtools::standin::Verdict::Valid);
    }
    let (first, _) = request(&spans, "fwd-1");
    assert_eq!(first.trace_id, CALLER_TRACE);
    assert!(!seen[0].headers["traceparent"].to_str().unwrap().contains(CALLER_SPAN));
}

#[tokio::test]
async fn with_ratio_zero_errors_are_exported_and_successes_are_not() {
    let mut collector = Collector::start().await;
    let fx = Fixture::new().await;
    let down = format!("https://127.0.0.1:{}", closed_port());
    let toml = fx
        .config()
        .tracing("otlp_endpoint", collector.endpoint())
        .tracing("sample_ratio", 0)
        .route(
            Route::new("down", "/down", &down)
                .credential("kwikpaisa")
                .scheme("kwikpaisa"),
        );
    let mut gw = fx.process(&toml, &[]);
    let c = TestClient::new();
    let post = |path: &'static str, rid: &'static str| {
        let url = gw.url(path);
        let c = &c;
        async move { c.send(Method::POST, &url, &[("x-request-id", rid)], "{}").await.status }
    };
    assert_eq!(post("/kwikpaisa/api/v3/order", "ok-1").await, 200);
    assert_eq!(post("/nowhere", "notfound-1").await, 404);
    assert_eq!(post("/kwikpaisa/status/502", "provider-502").await, 502);
    assert_eq!(post("/down/api", "connect-failed").await, 502);

    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        gw.log_text()
    );
    let spans = collector.received();
    let rids: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter_map(|s| s.attrs.get("signgate.request_id").map(String::as_str))
        .collect();
    assert_eq!(
        rids,
        ["connect-failed", "provider-502"].into_iter().collect(),
        "only errors at ratio 0: {spans:#?}"
    );

    let (root, children) = request(&spans, "provider-502");
    assert_eq!(root.status, StatusCode::Error);
    assert_eq!(root.attr("http.response.status_code"), "502");
    assert_eq!(root.attr("signgate.trace.reason"), "error");
    let upstream = named(&children, "upstream");
    assert_eq!(upstream.len(), 1);
    assert_eq!(upstream[0].attr("http.response.status_code"), "502");
    assert_eq!(upstream[0].status, StatusCode::Error);
    assert_eq!(named(&children, "credential").len(), 1);
    assert_eq!(named(&children, "sign").len(), 1);

    // A connect failure is retried once, signed afresh: two signings, two calls.
    let (root, children) = request(&spans, "connect-failed");
    assert_eq!(root.status, StatusCode::Error);
    assert_eq!(root.status_message, "upstream_unreachable");
    assert_eq!(root.attr("signgate.code"), "upstream_unreachable");
    let mut attempts: Vec<(&str, &str)> = named(&children, "upstream")
        .iter()
        .map(|s| (s.attr("signgate.attempt"), s.attr("error.type")))
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [("1", "connect"), ("2", "connect")]);
    assert_eq!(named(&children, "sign").len(), 2);
    assert_eq!(children.len(), 5, "credential, 2 signings, 2 calls: {children:#?}");
}

#[tokio::test]
async fn tracing_is_bound_at_start_up_and_forward_traceparent_reloads() {
    let collector = Collector::start().await;
    let fx = Fixture::new().await;
    let toml = fx.config().tracing("otlp_endpoint", collector.endpoint());
    let gw = fx.process(&toml, &[]);
    let c = TestClient::new();
    let reload = gw.admin_url("/reload");
    assert_eq!(c.post(&gw.url("/kwikpaisa/a"), "{}").await.status, 200);

    fx.write_config(&toml.clone().edit_route("kwikpaisa", |r| r.forward_traceparent(true)));
    let r = c.send(Method::POST, &reload, &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(c.post(&gw.url("/kwikpaisa/b"), "{}").await.status, 200);
    let seen = fx.provider.standin.records().await;
    assert!(seen[0].headers.get("traceparent").is_none());
    assert!(
        seen[1].headers.get("traceparent").is_some(),
        "forward_traceparent reloaded"
    );

    fx.write_config(&toml.tracing("sample_ratio", 0.5));
    let r = c.send(Method::POST, &reload, &[], "").await;
    assert_eq!(r.status, 422);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("[tracing] changed"), "{message}");
}
