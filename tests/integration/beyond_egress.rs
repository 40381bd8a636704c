//! The egress-IP self-check: the gateway's upstream connections are bound to
//! `egress.source_addr = 127.0.0.2`, and an echo endpoint on loopback (over
//! TLS with the fixture's dev PKI, trusted like the provider) answers the
//! address it sees. Expecting 127.0.0.3 turns `/readyz` to 503 naming both
//! addresses and the gauge to 0 (traffic still flows); expecting 127.0.0.2
//! is ready with the gauge at 1; an echo endpoint that does not answer is
//! not ready either.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use signgate::devtools::standin::Verdict;
use tokio::net::TcpListener;

use crate::support::*;

/// An HTTPS server answering the peer's address: as text on `/ip`, as JSON
/// `{"ip": …}` anywhere else. Stops when the returned handle is dropped.
async fn echo(tls: Arc<rustls::ServerConfig>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/ip" {
                        format!("{}\n", peer.ip())
                    } else {
                        format!(r#"{{"ip":"{}"}}"#, peer.ip())
                    };
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The fixture's gateway with upstream connections from 127.0.0.2, the
/// check against `url`, expecting `expect`.
async fn gateway(fx: Fixture, url: &str, expect: &str) -> Setup {
    let toml = fx
        .config()
        .egress("source_addr", "127.0.0.2")
        .egress("expect_source_ip", expect)
        .egress("source_check_url", url)
        .egress("source_check_interval_secs", 1);
    Setup::on(fx, &toml).await
}

async fn readyz(s: &Setup) -> Reply {
    TestClient::new().get(&s.admin_url("/readyz")).await
}

/// The `egress_source_ip` entry of a not-ready answer.
fn egress_entry(r: &Reply) -> Option<serde_json::Value> {
    r.json()["missing"]
        .as_array()?
        .iter()
        .find(|m| m["what"] == "egress_source_ip")
        .cloned()
}

#[tokio::test]
async fn a_different_egress_address_is_not_ready_and_names_both() {
    let fx = Fixture::new().await;
    let (echo_addr, task) = echo(fx.pki.server_tls.clone()).await;
    let _echo = Aborting(task);
    let url = format!("https://localhost:{}/ip", echo_addr.port());
    let s = gateway(fx, &url, "127.0.0.3").await;

    let seen = eventually(Duration::from_secs(10), || async {
        egress_entry(&readyz(&s).await).is_some_and(|e| e["seen"] == "127.0.0.2")
    })
    .await;
    let r = readyz(&s).await;
    assert!(seen, "{:?}", r.body);
    assert_eq!(r.status, 503);
    let entry = egress_entry(&r).unwrap();
    assert_eq!(entry["expected"], "127.0.0.3");
    let detail = entry["detail"].as_str().unwrap();
    assert!(detail.contains("127.0.0.2") && detail.contains("127.0.0.3"), "{detail}");
    assert!(
        s.metrics()
            .await
            .contains("signgate_egress_source_ip_ok{expected=\"127.0.0.3\"} 0"),
        "the gauge is there, at 0"
    );
    // Not ready, but traffic is not blocked: the provider is the judge.
    let sent = TestClient::new()
        .post(&s.url("/kwikpaisa/api/v3/pg/order/status"), "{}")
        .await;
    assert_eq!(sent.status, 200);
    let rec = s.provider.standin.records().await.pop().unwrap();
    assert_eq!(
        (rec.verdict, rec.peer.ip().to_string().as_str()),
        (Verdict::Valid, "127.0.0.2")
    );
}

#[tokio::test]
async fn the_expected_egress_address_is_ready_also_as_json() {
    let fx = Fixture::new().await;
    let (echo_addr, task) = echo(fx.pki.server_tls.clone()).await;
    let _echo = Aborting(task);
    let url = format!("https://localhost:{}/json", echo_addr.port());
    let s = gateway(fx, &url, "127.0.0.2").await;
    let ready = eventually(Duration::from_secs(10), || async { readyz(&s).await.status == 200 }).await;
    assert!(ready, "{:?}", readyz(&s).await.body);
    assert_eq!(
        metric(
            &s.metrics().await,
            "signgate_egress_source_ip_ok",
            &[("expected", "127.0.0.2")]
        ),
        1.0
    );
}

#[tokio::test]
async fn an_echo_endpoint_that_fails_is_not_ready() {
    let fx = Fixture::new().await;
    // Nothing listens there: the check fails, and says why.
    let url = format!("https://localhost:{}/ip", closed_port());
    let s = gateway(fx, &url, "127.0.0.2").await;
    let failed = eventually(Duration::from_secs(10), || async {
        egress_entry(&readyz(&s).await).is_some_and(|e| {
            e["seen"].is_null()
                && e["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("could not be checked")
        })
    })
    .await;
    let r = readyz(&s).await;
    assert!(failed, "{:?}", r.body);
    assert_eq!(r.status, 503);
    assert!(s
        .metrics()
        .await
        .contains("signgate_egress_source_ip_ok{expected=\"127.0.0.2\"} 0"));
}
