//! Prometheus metrics: the names, types and labels of the design contract,
//! registered on a registry owned by the running gateway (never the global
//! default, so parallel tests do not collide). Label values come only from
//! configuration (route, credential, webhook names) and fixed codes, never
//! from request data: methods outside a fixed set count as `other`, and
//! requests that match no route count under route `none`.

use std::sync::Arc;
use std::time::SystemTime;

use http::Method;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::secrets::CredentialStore;

/// Label for requests that matched no route.
pub const NO_ROUTE: &str = "none";

/// Gateway overhead is sub-millisecond; upstream calls take up to seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why the listener closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnClose {
    /// Over `max_connections`: closed right after accept.
    Limit,
    TlsHandshake,
    HeaderTimeout,
    Idle,
    /// A response write stayed blocked for `write_idle_timeout` (slow reader).
    WriteTimeout,
    /// A request head over `max_header_bytes` / `max_headers` (431).
    HeadTooLarge,
    /// An unparseable request head or framing (400/501), answered by hyper.
    Malformed,
}

impl ConnClose {
    fn label(self) -> &'static str {
        match self {
            ConnClose::Limit => "limit",
            ConnClose::TlsHandshake => "tls_handshake",
            ConnClose::HeaderTimeout => "header_timeout",
            ConnClose::Idle => "idle",
            ConnClose::WriteTimeout => "write_timeout",
            ConnClose::HeadTooLarge => "head_too_large",
            ConnClose::Malformed => "malformed",
        }
    }
}

/// A bounded label for an HTTP method.
pub fn method_label(m: &Method) -> &'static str {
    METHOD_LABELS[method_index(m)]
}

/// The index of `m`'s label in [`METHOD_LABELS`].
fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The connection series of one listener (traffic or admin).
#[derive(Clone)]
pub struct ConnMetrics {
    pub open: IntGauge,
    pub closed: IntCounterVec,
    pub accept_errors: IntCounter,
}

impl ConnMetrics {
    pub fn closed(&self, why: ConnClose) {
        self.closed.with_label_values(&[why.label()]).inc();
    }

    fn register(r: &Registry, prefix: &str, what: &str) -> ConnMetrics {
        let m = ConnMetrics {
            open: reg(
                r,
                IntGauge::new(format!("{prefix}open_connections"), format!("{what} connections open now."))
                    .expect("valid metric"),
            ),
            closed: counter_vec(
                r,
                &format!("{prefix}connections_closed_total"),
                &format!("{what} connections the gateway closed itself, by reason (limit, tls_handshake, header_timeout, idle, write_timeout, head_too_large, malformed)."),
                &["reason"],
            ),
            accept_errors: reg(
                r,
                IntCounter::new(
                    format!("{prefix}accept_errors_total"),
                    format!("Failed accept() calls on the {} listener (e.g. out of file descriptors).", what.to_lowercase()),
                )
                .expect("valid metric"),
            ),
        };
        for reason in CONN_CLOSE_REASONS {
            m.closed.with_label_values(&[reason.label()]);
        }
        m
    }
}

const CONN_CLOSE_REASONS: [ConnClose; 7] = [
    ConnClose::Limit,
    ConnClose::TlsHandshake,
    ConnClose::HeaderTimeout,
    ConnClose::Idle,
    ConnClose::WriteTimeout,
    ConnClose::HeadTooLarge,
    ConnClose::Malformed,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub denied: IntCounterVec,
    pub signatures: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub credential_refresh: IntCounterVec,
    pub credential_age: prometheus::GaugeVec,
    pub credential_loaded: IntGaugeVec,
    pub webhooks: IntCounterVec,
    pub clock_skew: prometheus::GaugeVec,
    pub inflight: IntGauge,
    /// Client connections of the traffic listener.
    pub connections: ConnMetrics,
    /// Connections of the admin listener (its own cap and timers).
    pub admin_connections: ConnMetrics,
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    // Beyond the contract table.
    pub audit_records: IntCounterVec,
    pub audit_healthy: IntGauge,
    pub upstream_passthrough_backoff: IntCounterVec,
    /// Requests refused 429 `provider_cooldown`, by route.
    pub provider_cooldown: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_queue_depth: IntGaugeVec,
    pub webhook_parked: IntGaugeVec,
    pub webhook_oldest_pending: prometheus::GaugeVec,
    pub duplicate_guard_size: IntGaugeVec,
    pub runtime_tasks: IntGauge,
    pub ratelimit_clients: IntGauge,
    pub client_gone: IntCounterVec,
    pub admin_unauthorized: IntCounter,
    pub reflection_signatures: IntGauge,
    pub reflection_early_rotations: IntCounter,
    /// Outbound signatures whose row in the state database could not be written.
    pub reflection_persist_errors: IntCounter,
    /// With `[fleet]`: remembered signatures Redis has not taken yet.
    pub reflection_pending: IntGauge,
    /// 1 for a webhook whose secret also signs outbound requests.
    pub webhook_secret_shared: IntGaugeVec,
    /// 1 while the egress address the provider sees is `expect_source_ip`,
    /// 0 after a mismatch or a failed check; absent without the check.
    pub egress_source_ip_ok: IntGaugeVec,
    pub certificate_reloads: IntCounterVec,
    pub certificate_expiry: IntGaugeVec,
    pub trace_spans: IntCounterVec,
    /// 1 while an operator has the route disabled (its kill switch), else 0.
    pub route_disabled: IntGaugeVec,
    /// The amount guard's decisions and settlements, by route and result.
    pub amount_guard: IntCounterVec,
    /// The largest share of a day cap used today, by route and cap (read at scrape time).
    pub amount_guard_day_used: prometheus::GaugeVec,
    /// Upstream connections opened, by the route whose request opened them.
    pub upstream_connections_opened: IntCounterVec,
}

/// The methods of [`method_label`], in a fixed order (an index per label).
const METHOD_LABELS: [&str; 8] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"];

/// A route's series, resolved once when its configuration snapshot is
/// built, so that a request does not look its labels up again (a lookup
/// hashes every label value and takes the vector's lock).
pub struct RouteMetrics {
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    /// `signgate_signatures_total{route, credential}` of a route with one
    /// credential (with `credential_map`, looked up per request).
    pub signatures: Option<(String, IntCounter)>,
    pub connections_opened: IntCounter,
    /// `signgate_clock_skew_seconds`, created by the first provider `Date`.
    clock_skew: std::sync::OnceLock<prometheus::Gauge>,
    clock_skew_vec: prometheus::GaugeVec,
    /// `signgate_requests_total{route, method, "200"}`, by method label,
    /// resolved on first use (only series that happen are created).
    ok: [std::sync::OnceLock<IntCounter>; 8],
    requests: IntCounterVec,
    route: String,
}

impl RouteMetrics {
    /// The provider's clock minus ours, in seconds.
    pub fn clock_skew(&self, seconds: f64) {
        self.clock_skew
            .get_or_init(|| self.clock_skew_vec.with_label_values(&[self.route.as_str()]))
            .set(seconds);
    }

    /// Count an answered request (`signgate_requests_total`).
    pub fn answered(&self, method: &Method, status: http::StatusCode) {
        let i = method_index(method);
        let label = METHOD_LABELS[i];
        if status == http::StatusCode::OK {
            self.ok[i]
                .get_or_init(|| self.requests.with_label_values(&[self.route.as_str(), label, "200"]))
                .inc();
            return;
        }
        self.requests
            .with_label_values(&[self.route.as_str(), label, status.as_str()])
            .inc();
    }
}

/// The amount guard's results (the `result` label of
/// `signgate_amount_guard_total`): the decision on a request (`allowed`:
/// reserved and let through; `invalid`; `over_request`; `over_day`;
/// `over_count`; `unavailable`), then how each allowed one was settled
/// (`kept`: the provider answered 2xx; `released`: nothing was sent or the
/// provider refused it; `unknown`: sent, outcome unknown, kept counted).
pub const AMOUNT_GUARD_RESULTS: [&str; 9] = [
    "allowed",
    "invalid",
    "over_request",
    "over_day",
    "over_count",
    "unavailable",
    "kept",
    "released",
    "unknown",
];

/// `signgate_build_info`'s `revision`: the git revision the binary was built
/// from (build.rs: `SIGNGATE_GIT_REVISION`, else `git rev-parse --short
/// HEAD`, else `unknown`).
pub const REVISION: &str = env!("SIGNGATE_BUILD_REVISION");

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are static and unique: registering can only fail on a duplicate,
    // which is a programming error caught by the tests.
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    reg(r, HistogramVec::new(opts, labels).expect("valid metric"))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    reg(
        r,
        prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// The `[fleet]` series, registered only when `[fleet]` is configured (a
/// gateway without it exposes none of them, so no alert fires on it).
#[derive(Clone)]
pub struct FleetMetrics {
    /// 1 while Redis answers, 0 while the gateway runs on its fallbacks.
    pub redis_up: IntGauge,
    pub redis_errors: IntCounterVec,
    pub redis_duration: HistogramVec,
    /// Decisions taken without Redis, by what (limits_local, limits_denied,
    /// guard_refused, amount_refused, webhook_local, reflection_local).
    pub fallback: IntCounterVec,
}

/// The Redis operations (the `op` label).
pub const FLEET_OPS: [&str; 12] = [
    "limit",
    "claim",
    "settle",
    "release",
    "cooldown",
    "webhook_seen",
    "reflection",
    "route_switch",
    "amount_reserve",
    "amount_settle",
    "amount_totals",
    "ping",
];
/// The fallbacks (the `what` label).
pub const FLEET_FALLBACKS: [&str; 7] = [
    "limits_local",
    "limits_denied",
    "guard_refused",
    "amount_refused",
    "webhook_local",
    "reflection_local",
    "reflection_refused",
];

/// Redis round trips on loopback take tens of microseconds.
const REDIS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl Metrics {
    /// Register the `[fleet]` series (once, at start-up).
    pub fn register_fleet(&self) -> FleetMetrics {
        let r = &self.registry;
        let m = FleetMetrics {
            redis_up: reg(
                r,
                IntGauge::new(
                    "signgate_fleet_redis_up",
                    "1 while the fleet's Redis answers; 0 while this instance runs on its fallbacks.",
                )
                .expect("valid metric"),
            ),
            redis_errors: counter_vec(
                r,
                "signgate_fleet_redis_errors_total",
                "Redis calls that failed or took longer than fleet.timeout_ms, by operation.",
                &["op"],
            ),
            redis_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "signgate_fleet_redis_duration_seconds",
                        "Round trips to the fleet's Redis that answered, by operation.",
                    )
                    .buckets(REDIS_BUCKETS.to_vec()),
                    &["op"],
                )
                .expect("valid metric"),
            ),
            fallback: counter_vec(
                r,
                "signgate_fleet_fallback_total",
                "Decisions taken without Redis, by what (limits_local, limits_denied, guard_refused, amount_refused, webhook_local, reflection_local, reflection_refused).",
                &["what"],
            ),
        };
        for op in FLEET_OPS {
            m.redis_errors.with_label_values(&[op]);
        }
        for what in FLEET_FALLBACKS {
            m.fallback.with_label_values(&[what]);
        }
        m
    }

    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let m = Metrics {
            requests: counter_vec(
                &r,
                "signgate_requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration: histogram_vec(
                &r,
                "signgate_request_duration_seconds",
                "Time from request head to response head, by route.",
                &["route"],
            ),
            upstream_duration: histogram_vec(
                &r,
                "signgate_upstream_duration_seconds",
                "Time waiting for the upstream's response head, by route.",
                &["route"],
            ),
            denied: counter_vec(
                &r,
                "signgate_denied_total",
                "Requests refused or failed by the gateway, by route and error code.",
                &["route", "reason"],
            ),
            signatures: counter_vec(
                &r,
                "signgate_signatures_total",
                "Signatures made, by route and credential.",
                &["route", "credential"],
            ),
            upstream_errors: counter_vec(
                &r,
                "signgate_upstream_errors_total",
                "Upstream failures, by route and kind (connect, tls, timeout, reset, protocol, response_idle).",
                &["route", "kind"],
            ),
            credential_refresh: counter_vec(
                &r,
                "signgate_credential_refresh_total",
                "Credential source polls, by credential and result (ok, error).",
                &["credential", "result"],
            ),
            credential_age: gauge_vec(
                &r,
                "signgate_credential_age_seconds",
                "Seconds since the credential in use was loaded.",
                &["credential"],
            ),
            credential_loaded: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("signgate_credential_loaded", "1 once the credential has loaded."),
                    &["credential"],
                )
                .expect("valid metric"),
            ),
            webhooks: counter_vec(
                &r,
                "signgate_webhooks_total",
                "Webhook decisions, by webhook and result.",
                &["webhook", "result"],
            ),
            clock_skew: gauge_vec(
                &r,
                "signgate_clock_skew_seconds",
                "Provider Date header minus the local clock, by route.",
                &["route"],
            ),
            inflight: reg(
                &r,
                IntGauge::new("signgate_inflight_requests", "Requests being handled now.").expect("valid metric"),
            ),
            connections: ConnMetrics::register(&r, "signgate_", "Client"),
            admin_connections: ConnMetrics::register(&r, "signgate_admin_", "Admin"),
            config_reloads: counter_vec(
                &r,
                "signgate_config_reloads_total",
                "Configuration reloads, by result (ok, error).",
                &["result"],
            ),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_build_info",
                        "Build information (version, git revision); the value is 1.",
                    ),
                    &["version", "revision"],
                )
                .expect("valid metric"),
            ),
            runtime_tasks: reg(
                &r,
                IntGauge::new(
                    "signgate_runtime_tasks",
                    "Tasks alive in the async runtime (connections, requests, background work), read at scrape time.",
                )
                .expect("valid metric"),
            ),
            ratelimit_clients: reg(
                &r,
                IntGauge::new(
                    "signgate_ratelimit_clients",
                    "Client addresses the per-client rate limiter tracks now (bounded by per_client_max_keys), read at scrape time.",
                )
                .expect("valid metric"),
            ),
            audit_records: counter_vec(
                &r,
                "signgate_audit_records_total",
                "Audit records, by result (written: on disk and synced; failed: lost, named by a gap record; refused: requests refused without a slot).",
                &["result"],
            ),
            audit_healthy: reg(
                &r,
                IntGauge::new(
                    "signgate_audit_healthy",
                    "1 while the audit log is writable; 0 while writes fail and requests are refused.",
                )
                .expect("valid metric"),
            ),
            upstream_passthrough_backoff: counter_vec(
                &r,
                "signgate_upstream_backoff_total",
                "Upstream 429/503 answers passed through (never retried), by route and status.",
                &["route", "status"],
            ),
            provider_cooldown: counter_vec(
                &r,
                "signgate_provider_cooldown_total",
                "Cooldowns started by a provider 429/503 with Retry-After (started), and requests refused during one (refused), by route.",
                &["route", "result"],
            ),
            webhook_deliveries: counter_vec(
                &r,
                "signgate_webhook_deliveries_total",
                "Webhook delivery attempts to the internal app, by webhook and result (delivered, retry, failed).",
                &["webhook", "result"],
            ),
            webhook_queue_depth: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_webhook_queue_depth",
                        "Verified webhook events waiting for delivery.",
                    ),
                    &["webhook"],
                )
                .expect("valid metric"),
            ),
            webhook_parked: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_webhook_parked",
                        "Verified webhook events whose delivery failed max_attempts times: parked, never sent again until `signgate webhooks retry`.",
                    ),
                    &["webhook"],
                )
                .expect("valid metric"),
            ),
            webhook_oldest_pending: gauge_vec(
                &r,
                "signgate_webhook_oldest_pending_seconds",
                "Age of the oldest undelivered webhook event.",
                &["webhook"],
            ),
            duplicate_guard_size: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_duplicate_guard_references",
                        "Transaction references held by the duplicate guard.",
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            client_gone: counter_vec(
                &r,
                "signgate_client_gone_total",
                "Requests whose client went away before its answer, by route and whether the request had been sent upstream (sent: the exchange completed and was audited with the provider's status).",
                &["route", "upstream"],
            ),
            admin_unauthorized: reg(
                &r,
                IntCounter::new(
                    "signgate_admin_unauthorized_total",
                    "Admin requests refused 401 (no or wrong Bearer token).",
                )
                .expect("valid metric"),
            ),
            reflection_signatures: reg(
                &r,
                IntGauge::new(
                    "signgate_reflection_guard_signatures",
                    "Outbound signatures remembered so they cannot come back as webhooks (read at scrape time).",
                )
                .expect("valid metric"),
            ),
            reflection_early_rotations: reg(
                &r,
                IntCounter::new(
                    "signgate_reflection_guard_early_rotations_total",
                    "Times the remembered signatures hit their cap and the oldest generation was forgotten early.",
                )
                .expect("valid metric"),
            ),
            reflection_persist_errors: reg(
                &r,
                IntCounter::new(
                    "signgate_reflection_guard_persist_errors_total",
                    "Outbound signatures sent whose row in the state database could not be written (a restart forgets them).",
                )
                .expect("valid metric"),
            ),
            reflection_pending: reg(
                &r,
                IntGauge::new(
                    "signgate_reflection_guard_redis_pending",
                    "[fleet]: remembered outbound signatures Redis did not take yet, written again once it answers (read at scrape time).",
                )
                .expect("valid metric"),
            ),
            webhook_secret_shared: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_webhook_secret_shared",
                        "1 when the webhook's secret also signs outbound requests (read at scrape time).",
                    ),
                    &["webhook"],
                )
                .expect("valid metric"),
            ),
            egress_source_ip_ok: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_egress_source_ip_ok",
                        "1 while egress.source_check_url reports the address egress.expect_source_ip names, 0 after a mismatch or a failed check; label: the expected address.",
                    ),
                    &["expected"],
                )
                .expect("valid metric"),
            ),
            certificate_reloads: counter_vec(
                &r,
                "signgate_certificate_reloads_total",
                "Certificate files re-read after a change or a reload, by certificate (listener, client_ca, egress_client, egress_ca) and result (ok: in use for new connections; error: rejected, the previous one stays).",
                &["certificate", "result"],
            ),
            certificate_expiry: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_certificate_expiry_timestamp_seconds",
                        "notAfter of the certificate in use (for a CA file, of its first certificate to expire), as Unix seconds, by certificate.",
                    ),
                    &["certificate"],
                )
                .expect("valid metric"),
            ),
            trace_spans: counter_vec(
                &r,
                "signgate_trace_spans_total",
                "Spans sent to the OTLP collector ([tracing]), by result (exported, failed: the export failed and the spans were lost).",
                &["result"],
            ),
            route_disabled: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "signgate_route_disabled",
                        "1 while operators have the route disabled (it answers 503 route_disabled), else 0; by configured route.",
                    ),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            amount_guard: counter_vec(
                &r,
                "signgate_amount_guard_total",
                "Amount guard decisions and settlements, by route and result (allowed, invalid, over_request, over_day, over_count, unavailable; then kept, released, unknown).",
                &["route", "result"],
            ),
            amount_guard_day_used: gauge_vec(
                &r,
                "signgate_amount_guard_day_used_ratio",
                "Largest share of a day cap used today (UTC) by one caller, or by the route with per = \"route\", by route and cap (amount: max_per_day, count: max_count_per_day); read at scrape time.",
                &["route", "cap"],
            ),
            upstream_connections_opened: counter_vec(
                &r,
                "signgate_upstream_connections_opened_total",
                "Upstream connections opened (TCP, and TLS for https), by the route whose request opened them; \
                 1 - this / sum by (route) (signgate_signatures_total) is the share of requests sent on a reused connection.",
                &["route"],
            ),
            registry: r,
        };
        // CPU, memory, file descriptors, threads and start time from /proc
        // (Linux), on the gateway's own registry like everything else.
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registered once");
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
            .set(1);
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for result in ["written", "failed", "refused"] {
            m.audit_records.with_label_values(&[result]);
        }
        for result in ["exported", "failed"] {
            m.trace_spans.with_label_values(&[result]);
        }
        Arc::new(m)
    }

    /// The series of route `route`, signing with `credential` when it has one.
    pub fn route(&self, route: &str, credential: Option<&str>) -> RouteMetrics {
        RouteMetrics {
            request_duration: self.request_duration.with_label_values(&[route]),
            upstream_duration: self.upstream_duration.with_label_values(&[route]),
            signatures: credential.map(|c| (c.to_string(), self.signatures.with_label_values(&[route, c]))),
            connections_opened: self.upstream_connections_opened.with_label_values(&[route]),
            clock_skew: std::sync::OnceLock::new(),
            clock_skew_vec: self.clock_skew.clone(),
            ok: Default::default(),
            requests: self.requests.clone(),
            route: route.to_string(),
        }
    }

    /// Pre-create the series a configuration can produce, so dashboards and
    /// alerts see zeros instead of absent series.
    pub fn prime(&self, routes: &[(String, String)], webhooks: &[String]) {
        for (route, credential) in routes {
            self.signatures
                .with_label_values(&[route.as_str(), credential.as_str()]);
            self.request_duration.with_label_values(&[route.as_str()]);
            self.upstream_duration.with_label_values(&[route.as_str()]);
            self.upstream_connections_opened.with_label_values(&[route.as_str()]);
            // A stalled body is cut silently on the wire: make the series visible at 0.
            self.upstream_errors
                .with_label_values(&[route.as_str(), "response_idle"]);
            self.route_disabled.with_label_values(&[route.as_str()]);
            for upstream in ["sent", "not_sent"] {
                self.client_gone.with_label_values(&[route.as_str(), upstream]);
            }
        }
        for w in webhooks {
            for result in [
                "accepted",
                "bad_signature",
                "stale",
                "duplicate",
                "invalid_json",
                "reflected_signature",
                "reflection_unknown",
            ] {
                self.webhooks.with_label_values(&[w.as_str(), result]);
            }
            for result in ["delivered", "retry", "failed"] {
                self.webhook_deliveries.with_label_values(&[w.as_str(), result]);
            }
            self.webhook_queue_depth.with_label_values(&[w.as_str()]);
            self.webhook_oldest_pending.with_label_values(&[w.as_str()]);
        }
    }

    /// Pre-create the amount guard's series of a guarded route.
    pub fn prime_amount_guard(&self, route: &str, caps: &[&str]) {
        for result in AMOUNT_GUARD_RESULTS {
            self.amount_guard.with_label_values(&[route, result]);
        }
        for cap in caps {
            self.amount_guard_day_used.with_label_values(&[route, cap]);
        }
    }

    /// Bring credential series up to date (called at scrape time).
    pub fn observe_credentials(&self, store: &CredentialStore) {
        let now = SystemTime::now();
        for slot in store.slots() {
            let name = slot.name();
            let (ok, err) = slot.refresh_counts();
            for (result, total) in [("ok", ok), ("error", err)] {
                let c = self.credential_refresh.with_label_values(&[name, result]);
                let seen = c.get();
                if total > seen {
                    c.inc_by(total - seen);
                }
            }
            self.credential_loaded
                .with_label_values(&[name])
                .set(i64::from(slot.is_loaded()));
            // No sample until the credential has loaded once: a 0 would
            // read as "fresh". (A slot replaced by a reload starts over.)
            match slot.last_ok() {
                Some(t) => {
                    let age = now.duration_since(t).map_or(0.0, |d| d.as_secs_f64());
                    self.credential_age.with_label_values(&[name]).set(age);
                }
                None => {
                    let _ = self.credential_age.remove_label_values(&[name]);
                }
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks
                .set(i64::try_from(rt.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
