//! Per-caller credentials (`credential_map`): one route, two merchants'
//! key pairs, picked by the caller's loopback address or by its mTLS client
//! certificate; the provider stand-in accepts both pairs and recomputes each
//! signature with the secret of the API key it received. A caller that
//! matches no entry gets `403 no_credential_for_caller` and nothing is sent.
//! Metrics, readiness and the audit record follow the chosen credential.

use std::time::Duration;

use serde_json::Value;
use signgate::devtools::config::CredentialRule;
use signgate::devtools::standin::Verdict;
use signgate::secrets::SecretBytes;

use crate::support::*;

const PATH: &str = "/kwikpaisa/api/v3/pg/order/status";

/// Merchant B's key pair: a second credential file, accepted by the stand-in.
fn merchant_b(fx: &Fixture) -> (String, std::path::PathBuf) {
    let (key, secret) = (random_token("pk_test_b_", 20), random_token("sk_test_b_", 32));
    fx.provider.standin.accept(&key, SecretBytes::from(secret.clone()));
    let path = fx.path("merchant_b.json");
    write_cred(&path, &key, &secret);
    (key, path)
}

#[tokio::test]
async fn callers_by_address_sign_with_their_own_credential() {
    let fx = Fixture::new().await;
    let (key_b, cred_b) = merchant_b(&fx);
    let toml = fx
        .config()
        .credential("merchant_a", Fixture::file_credential(&fx.cred_path))
        .credential("merchant_b", Fixture::file_credential(&cred_b))
        .edit_route("kwikpaisa", |r| {
            r.credential_map([
                CredentialRule::client("127.0.0.2/32", "merchant_a"),
                CredentialRule::client("127.0.0.3", "merchant_b"),
            ])
        });
    let s = Setup::on(fx, &toml).await;
    let send = |from: &'static str, rid: &'static str| {
        let url = s.url(PATH);
        async move {
            TestClient::from_addr(from)
                .send(
                    http::Method::POST,
                    &url,
                    &[("content-type", "application/json"), ("x-request-id", rid)],
                    r#"{"order_id":"ORD-1"}"#,
                )
                .await
        }
    };

    let a = send("127.0.0.2", "caller-a").await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let b = send("127.0.0.3", "caller-b").await;
    assert_eq!(b.status, 200, "{:?}", b.body);
    let recs = s.provider.standin.records().await;
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].headers["x-api-key"], s.provider.api_key.as_str());
    assert_eq!(recs[1].headers["x-api-key"], key_b.as_str());
    assert!(recs.iter().all(|r| r.verdict == Verdict::Valid), "{recs:?}");

    // A caller no entry is for: refused before anything is read or sent.
    let stranger = send("127.0.0.4", "caller-none").await;
    assert_eq!(
        (stranger.status.as_u16(), stranger.code().as_str()),
        (403, "no_credential_for_caller")
    );
    assert_eq!(s.provider.standin.records().await.len(), 2, "nothing was sent");

    // The audit record and the metrics name the credential that signed.
    assert_eq!(s.audit_record("caller-a").await["credential"], "merchant_a");
    assert_eq!(s.audit_record("caller-b").await["credential"], "merchant_b");
    let none = s.audit_record("caller-none").await;
    assert_eq!(none["reason"], "no_credential_for_caller");
    assert_eq!(none["credential"], Value::Null);
    let m = s.metrics().await;
    for (cred, n) in [("merchant_a", 1.0), ("merchant_b", 1.0)] {
        assert_eq!(
            metric(
                &m,
                "signgate_signatures_total",
                &[("route", "kwikpaisa"), ("credential", cred)]
            ),
            n,
            "{cred}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "signgate_denied_total",
            &[("route", "kwikpaisa"), ("reason", "no_credential_for_caller")]
        ),
        1.0
    );
    let r = TestClient::new().get(&s.admin_url("/readyz")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn readiness_waits_for_every_mapped_credential() {
    let fx = Fixture::new().await;
    let missing = fx.path("merchant_b.json");
    let toml = fx
        .config()
        .credential("merchant_b", Fixture::file_credential(&missing))
        .edit_route("kwikpaisa", |r| {
            r.credential_map([
                CredentialRule::client("127.0.0.2", "kwikpaisa"),
                CredentialRule::client("127.0.0.0/8", "merchant_b"),
            ])
        });
    let s = Setup::on(fx, &toml).await;
    let r = TestClient::new().get(&s.admin_url("/readyz")).await;
    assert_eq!(r.status, 503);
    let body = r.json();
    let missing_creds: Vec<&str> = body["missing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["credential"].as_str())
        .collect();
    assert_eq!(missing_creds, ["merchant_b"], "{body}");
    // The loaded credential signs; the other answers 503 with what to provide.
    let ok = TestClient::from_addr("127.0.0.2").post(&s.url(PATH), "{}").await;
    assert_eq!(ok.status, 200);
    let other = TestClient::from_addr("127.0.0.5").post(&s.url(PATH), "{}").await;
    assert_eq!(
        (other.status.as_u16(), other.code().as_str()),
        (503, "credential_unavailable")
    );
    assert!(other.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("merchant_b"));
    // Once its file is there, the gateway is ready.
    let (key_b, secret_b) = (random_token("pk_test_b_", 20), random_token("sk_test_b_", 32));
    s.provider.standin.accept(&key_b, SecretBytes::from(secret_b.clone()));
    write_cred(&missing, &key_b, &secret_b);
    let ready = eventually(Duration::from_secs(5), || async {
        TestClient::new().get(&s.admin_url("/readyz")).await.status == 200
    })
    .await;
    assert!(ready);
    let b = TestClient::from_addr("127.0.0.5").post(&s.url(PATH), "{}").await;
    assert_eq!(b.status, 200);
    let last = s.provider.standin.records().await.pop().unwrap();
    assert_eq!(
        (last.headers["x-api-key"].to_str().unwrap(), last.verdict),
        (key_b.as_str(), Verdict::Valid)
    );
}

#[tokio::test]
async fn callers_by_mtls_identity_sign_with_their_own_credential() {
    let clients = signgate::devtools::pki::DevCa::new("signgate test clients CA").unwrap();
    let fx = Fixture::new().await;
    let (key_b, cred_b) = merchant_b(&fx);
    let server = clients.server(&["localhost", "127.0.0.1"]).unwrap();
    let (cert, key, ca) = (fx.path("gw.pem"), fx.path("gw-key.pem"), fx.path("clients-ca.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca, clients.cert_pem()).unwrap();
    let toml = fx
        .config()
        .listener_tls(&cert, &key)
        .listener("client_ca", &ca)
        .credential("merchant_b", Fixture::file_credential(&cred_b))
        .edit_route("kwikpaisa", |r| {
            r.credential_map([
                CredentialRule::identity("uri:spiffe://signgate.test/merchant-a", "kwikpaisa"),
                CredentialRule::identity("uri:spiffe://signgate.test/merchant-b", "merchant_b"),
            ])
        });
    let s = Setup::on(fx, &toml).await;
    let addr = s.gw.addr();

    let a = clients.client(&["spiffe://signgate.test/merchant-a"]).unwrap();
    let r = https_post(addr, &clients, Some(&a), PATH, "{}").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = clients.client(&["spiffe://signgate.test/merchant-b"]).unwrap();
    let r = https_post(addr, &clients, Some(&b), PATH, "{}").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let recs = s.provider.standin.records().await;
    assert_eq!(recs[0].headers["x-api-key"], s.provider.api_key.as_str());
    assert_eq!(recs[1].headers["x-api-key"], key_b.as_str());
    assert!(recs.iter().all(|r| r.verdict == Verdict::Valid));

    // The same text as a DNS SAN is another identity: no credential for it.
    let confused = clients
        .client_with(
            "confused",
            &[signgate::devtools::pki::ClientSan::Dns(
                "spiffe://signgate.test/merchant-b",
            )],
        )
        .unwrap();
    let r = https_post(addr, &clients, Some(&confused), PATH, "{}").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "no_credential_for_caller")
    );
    let other = clients.client(&["spiffe://signgate.test/reporting"]).unwrap();
    let r = https_post(addr, &clients, Some(&other), PATH, "{}").await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "no_credential_for_caller")
    );
    assert_eq!(s.provider.standin.records().await.len(), 2, "nothing more was sent");
}
