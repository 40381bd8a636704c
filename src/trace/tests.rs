use super::*;

fn outcome(status: u16, upstream_status: Option<u16>, code: Option<&'static str>, sent: bool) -> Outcome<'static> {
    Outcome {
        method: "POST",
        route: "kwikpaisa",
        status,
        request_id: "r1",
        code,
        upstream_status,
        sent,
    }
}

#[test]
fn which_outcomes_are_errors() {
    let rows = [
        (outcome(200, Some(200), None, true), false),
        (outcome(404, None, Some("no_route"), false), false),
        (outcome(429, None, Some("rate_limited"), false), false),
        (outcome(403, None, Some("ip_not_allowed"), false), false),
        (outcome(400, Some(400), None, true), false),
        // The provider refused the signature, key or timestamp.
        (outcome(401, Some(401), None, true), true),
        (outcome(403, Some(403), None, true), true),
        (outcome(500, None, Some("internal"), false), true),
        (outcome(502, None, Some("upstream_failed"), true), true),
        (outcome(503, None, Some("credential_unavailable"), false), true),
        (outcome(503, Some(503), None, true), true),
        (outcome(504, None, Some("upstream_timeout"), true), true),
        (outcome(499, Some(200), Some("client_gone"), true), true),
        (outcome(499, None, Some("client_gone"), false), false),
    ];
    for (o, want) in rows {
        assert_eq!(
            is_error(&o),
            want,
            "status {} upstream {:?} code {:?}",
            o.status,
            o.upstream_status,
            o.code
        );
    }
}

fn tracer(ratio: f64) -> Tracer {
    let config = TracingConfig {
        // Nothing is exported in these tests: no request ends.
        otlp_endpoint: "http://127.0.0.1:9/v1/traces".parse().unwrap(),
        sample_ratio: ratio,
        service_name: "signgate".into(),
    };
    let spans = prometheus::IntCounterVec::new(prometheus::Opts::new("spans", "spans"), &["result"]).unwrap();
    Tracer::start(&config, spans).expect("tracer")
}

fn headers(traceparent: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
    h
}

#[tokio::test]
async fn a_callers_trace_is_continued_and_its_flag_decides() {
    let t = tracer(0.0);
    let sampled = t.begin(&headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    assert_eq!(sampled.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        sampled.parent.map(|p| p.to_string()).as_deref(),
        Some("b7ad6b7169203331")
    );
    assert!(
        sampled.context.is_sampled(),
        "a sampled caller is sampled even at ratio 0"
    );
    assert_ne!(
        sampled.context.span_id().to_string(),
        "b7ad6b7169203331",
        "the request has its own span"
    );

    let t = tracer(1.0);
    let unsampled = t.begin(&headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
    assert!(
        !unsampled.context.is_sampled(),
        "an unsampled caller is not sampled even at ratio 1"
    );

    for bad in [
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    ] {
        let fresh = t.begin(&headers(bad));
        assert!(fresh.parent.is_none(), "{bad}: a new trace");
        assert_ne!(fresh.trace_id(), TraceId::INVALID);
        assert!(fresh.context.is_sampled(), "ratio 1 samples a root");
    }
}

#[tokio::test]
async fn the_ratio_decides_for_roots() {
    let none = tracer(0.0);
    let all = tracer(1.0);
    let half = tracer(0.5);
    let mut sampled = 0;
    for _ in 0..2000 {
        assert!(!none.begin(&HeaderMap::new()).context.is_sampled());
        assert!(all.begin(&HeaderMap::new()).context.is_sampled());
        sampled += usize::from(half.begin(&HeaderMap::new()).context.is_sampled());
    }
    assert!((800..1200).contains(&sampled), "about half of 2000: {sampled}");
}

#[tokio::test]
async fn the_forwarded_traceparent_names_the_gateways_span() {
    let t = tracer(1.0);
    let trace = t.begin(&headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    let child = Child::start("upstream", SpanKind::Client);
    let value = trace.parent().traceparent(child.span_id());
    assert_eq!(
        value.to_str().unwrap(),
        format!("00-0af7651916cd43dd8448eb211c80319c-{}-01", child.span_id())
    );
    // What a W3C propagator reads from it.
    let back = t.begin(&headers(value.to_str().unwrap()));
    assert_eq!(back.parent, Some(child.span_id()));
    assert_eq!(back.trace_id(), trace.trace_id());
}
