//! `deploy/grafana/signgate.json`: a valid Grafana dashboard (uid, title,
//! panels with a datasource and targets, the datasource variable), and every
//! metric name its PromQL uses is one a running gateway exports: the names
//! are taken from the expressions by a small PromQL tokenizer and compared
//! with the `/metrics` scrape of a real gateway (`[fleet]` on a real Redis,
//! a route, a webhook,
//! one signed request and one refusal, so every series the dashboard reads
//! exists). `rate`/`increase` read counters only (by the scrape's `# TYPE`).

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use serde_json::Value;

use crate::support::*;

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/signgate.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Every PromQL expression of the dashboard: panel targets, annotations and
/// the metric selectors of `label_values(...)` variables.
fn expressions(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {} target without expr", p["title"]));
            out.push((format!("panel {}", p["title"]), expr.to_string()));
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), expr.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map_or_else(
                    || panic!("variable {}: not label_values(METRIC, LABEL): {q}", v["name"]),
                    |(m, _)| m,
                );
            out.push((format!("variable {}", v["name"]), inner.to_string()));
        }
    }
    out
}

/// Keywords, and the aggregation operators (a modifier may stand between
/// one and its parenthesis: `sum by (route) (...)`).
#[rustfmt::skip]
const KEYWORDS: &[&str] = &[
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
];
/// Keywords whose parenthesised list holds label names, not expressions.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
const RANGE_OF_COUNTERS: &[&str] = &["rate", "irate", "increase"];

/// The metric names in `expr`, each with whether it is read by `rate`,
/// `irate` or `increase`. Strings, label matchers `{...}`, ranges `[...]`
/// and label lists (`by (...)`) are skipped; an identifier followed by `(`
/// is a function; keywords are no metrics.
fn metric_names(expr: &str) -> Vec<(String, bool)> {
    let b = expr.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    // Open parentheses: whether each was opened by a counter function.
    let mut parens: Vec<bool> = Vec::new();
    let skip_string = |i: &mut usize| {
        let q = b[*i];
        *i += 1;
        while *i < b.len() && b[*i] != q {
            if b[*i] == b'\\' {
                *i += 1;
            }
            *i += 1;
        }
        assert!(*i < b.len(), "unterminated string in {expr}");
        *i += 1;
    };
    let skip_until = |i: &mut usize, close: u8| {
        *i += 1;
        while *i < b.len() && b[*i] != close {
            if matches!(b[*i], b'"' | b'\'' | b'`') {
                skip_string(i);
            } else {
                *i += 1;
            }
        }
        assert!(*i < b.len(), "unbalanced {} in {expr}", close as char);
        *i += 1;
    };
    let next_non_space = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => skip_string(&mut i),
            b'{' => skip_until(&mut i, b'}'),
            b'[' => skip_until(&mut i, b']'),
            b'(' => {
                parens.push(false);
                i += 1;
            }
            b')' => {
                assert!(parens.pop().is_some(), "unbalanced ) in {expr}");
                i += 1;
            }
            b'$' => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                    i += 1;
                }
                let word = &expr[start..i];
                let after = next_non_space(i);
                let called = after < b.len() && b[after] == b'(';
                if LABEL_LISTS.contains(&word) {
                    if called {
                        i = after;
                        skip_until(&mut i, b')');
                    }
                } else if called {
                    i = after + 1;
                    parens.push(RANGE_OF_COUNTERS.contains(&word));
                } else if !KEYWORDS.contains(&word) {
                    out.push((word.to_string(), parens.last().copied().unwrap_or(false)));
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                // A number (durations only appear inside [...] or after offset).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    assert!(parens.is_empty(), "unbalanced ( in {expr}");
    out
}

#[test]
fn the_promql_tokenizer_finds_metrics_and_only_metrics() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(r#"histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{x="}", y=~"$v"}[$__rate_interval])))"#),
        [("a_bucket".to_string(), true)]
    );
    assert_eq!(
        names("max by (credential) (gauge_x) and on (credential) increase(c_total[1h]) > 0"),
        [("gauge_x".to_string(), false), ("c_total".to_string(), true)]
    );
    assert_eq!(
        names("(min by (certificate) (expiry{i=\"a\"}) - time()) / 86400"),
        [("expiry".to_string(), false)]
    );
    assert_eq!(
        names("sum without (le) (rate(x[5m] offset 1h))"),
        [("x".to_string(), true)]
    );
}

/// Names and types of the series in a Prometheus text scrape.
fn scraped(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut names = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap();
            names.insert(line[..end].to_string());
        }
    }
    (names, types)
}

/// The family a series belongs to (`x_bucket` of histogram `x`).
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<(&'a str, &'a str)> {
    if types.contains_key(name) {
        return Some((name, ""));
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)).map(|f| (f, *s)))
}

#[test]
fn the_dashboard_is_a_valid_grafana_dashboard() {
    let d = dashboard();
    let uid = d["uid"].as_str().expect("uid");
    assert!(
        !uid.is_empty() && uid.len() <= 40 && uid.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "uid {uid:?}"
    );
    assert!(!d["title"].as_str().expect("title").is_empty());
    assert!(d["schemaVersion"].as_u64().expect("schemaVersion") >= 36);
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(
        (ds["type"].as_str(), ds["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel id of {title} is taken"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0 && g["y"].is_u64(),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(
            matches!(
                p["type"].as_str(),
                Some("timeseries" | "stat" | "gauge" | "table" | "bargauge")
            ),
            "{title}: type {}",
            p["type"]
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}: refId twice");
            assert!(
                !t["expr"].as_str().unwrap_or("").trim().is_empty(),
                "{title}: empty expr"
            );
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}

#[tokio::test]
async fn every_metric_the_dashboard_reads_is_one_the_gateway_exports() {
    // With [fleet] on a real Redis, so the fleet panels' series exist too.
    let redis = crate::support::redis::RedisServer::start();
    let s = Setup::with(|c| {
        c.webhook(Webhook::kwikpaisa("http://127.0.0.1:9/events"))
            .fleet("redis_url", redis.url())
    })
    .await;
    let c = TestClient::new();
    assert_eq!(c.post(&s.url("/kwikpaisa/api/v3/order"), "{}").await.status, 200);
    assert_eq!(c.send(Method::POST, &s.url("/nowhere"), &[], "{}").await.status, 404);
    let (exported, types) = scraped(&s.metrics().await);

    let mut missing = BTreeMap::new();
    let mut not_counters = BTreeMap::new();
    let mut used = BTreeSet::new();
    for (place, expr) in expressions(&dashboard()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for (name, in_rate) in names {
            used.insert(name.clone());
            if !exported.contains(&name) {
                missing.entry(name).or_insert(place.clone());
                continue;
            }
            let (fam, suffix) = family(&name, &types).unwrap_or_else(|| panic!("{name}: no # TYPE"));
            let counter = types[fam] == "counter" || (types[fam] == "histogram" && !suffix.is_empty());
            if in_rate && !counter {
                let kind = types[fam].clone();
                not_counters.insert(name.clone(), format!("{place} ({kind})"));
            }
        }
    }
    assert!(missing.is_empty(), "metrics the gateway does not export: {missing:#?}");
    assert!(not_counters.is_empty(), "rate/increase over gauges: {not_counters:#?}");
    // The panels the dashboard promises, by the metrics they read.
    for name in [
        "signgate_requests_total",
        "signgate_denied_total",
        "signgate_upstream_duration_seconds_bucket",
        "signgate_credential_age_seconds",
        "signgate_webhook_queue_depth",
        "signgate_audit_healthy",
        "signgate_audit_records_total",
        "signgate_client_gone_total",
        "signgate_admin_unauthorized_total",
    ] {
        assert!(used.contains(name), "the dashboard has no panel on {name}");
    }
}
