//! Micro-benchmarks of the per-request work that is not I/O:
//! canonicalize + sign (as `sign::prepare_body` and `Scheme::sign` do it on
//! the hot path) for 300 B, 4 KB and 64 KB bodies, the client allowlist and
//! the rate-limit check.
//!
//! `cargo bench --bench hot_path` (targets: 300 B ≤ 1.5 µs, 64 KB ≥ 300 MB/s).
//! `cargo test --all-targets` runs each benchmark once, as a smoke test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ipnet::IpNet;

use signgate::allowlist::Allowlist;
use signgate::config::{LimitsConfig, Quota};
use signgate::ratelimit::{Limits, RouteLimit};
use signgate::sign::{keyed_mac, prepare_body, MessageInput, Scheme};

/// The order body of benches/run.sh (~300 bytes, keys unsorted, one ₹).
pub const ORDER: &str = r#"{"order_id":"ORD-20260513-6116229263036","order_amount":"1050.00","order_currency":"INR","order_note":"Monthly plan ₹1050, invoice 2026/05","service_type":"DIGITAL","customer":{"phone":"9876543210","name":"Asha Verma","email":"asha.verma@example.in"},"return_url":"https://merchant.example.in/pay/return?order=6116229263036"}"#;

/// A create-order body with a cart of `items` line items: nested objects in
/// an array, unsorted keys, numbers, escapes and some non-ASCII text.
fn cart(target: usize) -> String {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        let item = format!(
            r#"{{"sku":"SKU-{i:06}","qty":{q},"unit_price":"{p}.00","name":"Item {i} \"deluxe\" – size M","tax":{{"rate":"18.00","code":"GST","hsn":"{h}"}},"tags":["gift","wrap/{i}"],"discount":null}}"#,
            q = i % 5 + 1,
            p = 100 + i * 7,
            h = 610_000 + i,
        );
        items.push(item);
        i += 1;
        let len: usize = items.iter().map(|s| s.len() + 1).sum();
        if len + ORDER.len() + 20 >= target {
            break;
        }
    }
    let body = format!(r#"{{"items":[{}],{}"#, items.join(","), &ORDER[1..]);
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    body
}

fn bodies() -> Vec<(&'static str, Bytes)> {
    vec![
        ("300B", Bytes::from_static(ORDER.as_bytes())),
        ("4KB", Bytes::from(cart(4 * 1024))),
        ("64KB", Bytes::from(cart(64 * 1024))),
    ]
}

fn canonicalize_and_sign(c: &mut Criterion) {
    let scheme = Scheme::kwikpaisa();
    let mac = keyed_mac(b"sk_test_0123456789abcdef0123456789abcdef");
    let ts = scheme.timestamp(UNIX_EPOCH + Duration::from_secs(1_778_659_835));
    let mut g = c.benchmark_group("canonicalize_sign");
    for (name, body) in bodies() {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| {
                let canonical = prepare_body(&scheme, black_box(body.clone())).unwrap();
                let sig = scheme.sign(
                    &mac,
                    &MessageInput {
                        api_key: b"pk_test_bench",
                        timestamp: ts.as_str(),
                        method: "POST",
                        path: "/api/v3/pg/order/create",
                        query: "",
                        body: &canonical,
                    },
                );
                black_box((canonical, sig))
            });
        });
    }
    g.finish();
    // The two halves on their own, to see which one dominates.
    let mut g = c.benchmark_group("canonicalize");
    for (name, body) in bodies() {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| black_box(prepare_body(&scheme, black_box(body.clone())).unwrap()));
        });
    }
    g.finish();
    let mut g = c.benchmark_group("hmac_sign");
    for (name, body) in bodies() {
        let canonical = prepare_body(&scheme, body).unwrap();
        g.throughput(Throughput::Bytes(canonical.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &canonical, |b, canonical| {
            b.iter(|| {
                black_box(scheme.sign(
                    &mac,
                    &MessageInput {
                        api_key: b"pk_test_bench",
                        timestamp: ts.as_str(),
                        method: "POST",
                        path: "/",
                        query: "",
                        body: black_box(canonical),
                    },
                ))
            });
        });
    }
    g.finish();
}

fn allowlist(c: &mut Criterion) {
    let nets = |s: &[&str]| s.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
    let sidecar = Allowlist::new(&nets(&["127.0.0.0/8", "::1/128"]));
    let office: Vec<String> = (0..16).map(|i| format!("10.{i}.0.0/16")).collect();
    let mut sixteen: Vec<&str> = office.iter().map(String::as_str).collect();
    sixteen.push("fd00::/8");
    let sixteen = Allowlist::new(&nets(&sixteen));
    let v4: IpAddr = "127.0.0.1".parse().unwrap();
    let last: IpAddr = "10.15.3.4".parse().unwrap();
    let mapped: IpAddr = "::ffff:10.15.3.4".parse().unwrap();
    let denied: IpAddr = "192.0.2.1".parse().unwrap();
    let mut g = c.benchmark_group("allowlist");
    g.bench_function("2 nets, allowed v4", |b| b.iter(|| sidecar.allows(black_box(v4))));
    g.bench_function("17 nets, last net", |b| b.iter(|| sixteen.allows(black_box(last))));
    g.bench_function("17 nets, v4-mapped v6", |b| {
        b.iter(|| sixteen.allows(black_box(mapped)))
    });
    g.bench_function("17 nets, denied", |b| b.iter(|| sixteen.allows(black_box(denied))));
    g.finish();
}

fn rate_limits(c: &mut Criterion) {
    let q = |rate: u32| Quota {
        rate: NonZeroU32::new(rate).unwrap(),
        burst: NonZeroU32::new(rate).unwrap(),
    };
    // Quotas high enough never to refuse: this measures the check itself.
    let none = Limits::new(&LimitsConfig {
        global: None,
        per_client: None,
        per_client_max_keys: 100_000,
    });
    let all = Limits::new(&LimitsConfig {
        global: Some(q(u32::MAX)),
        per_client: Some(q(u32::MAX)),
        per_client_max_keys: 100_000,
    });
    let route = RouteLimit::new(q(u32::MAX));
    let client: IpAddr = "127.0.0.1".parse().unwrap();
    let many: Vec<IpAddr> = (0..1024u32)
        .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
        .collect();
    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("no limits", |b| b.iter(|| none.check(black_box(client), None)));
    g.bench_function("client+route+global, one client", |b| {
        b.iter(|| all.check(black_box(client), Some(&route)))
    });
    let mut i = 0;
    g.bench_function("client+route+global, 1024 clients", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            all.check(black_box(many[i]), Some(&route))
        })
    });
    g.finish();
}

criterion_group!(benches, canonicalize_and_sign, allowlist, rate_limits);
criterion_main!(benches);
