//! The vault source against a real OpenBao dev server, working: token and
//! AppRole auth (AppRole over HTTPS with a private CA), token renewal and
//! re-login, rotation under load with no failed request, `signgate check`.
//! Each test captures the in-process gateway's logs and checks no secret is
//! in them. Outages and failures: `vault_outage`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signgate::devtools::standin::Verdict;
use signgate::secrets::SecretBytes;

use crate::support::vault::*;
use crate::support::*;

#[tokio::test]
async fn token_auth_loads_renews_the_token_and_requests_verify_at_the_provider() {
    let w = World::new().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/token").await;
    bao.read_policy("kp", "kp/token").await;
    // A short-lived renewable token: it only outlives its 4 s TTL if renewed.
    let token = bao.child_token("kp", "4s").await;
    let created = Instant::now();
    let token_file = bao.dir().join("token");
    write_token(&token_file, &token);
    let gw = w.gateway(token_credential(&bao.addr(), "kp/token", &token_file)).await;

    let r = post(&gw).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rec = w.last_record().await;
    assert_eq!(rec.verdict, Verdict::Valid);
    assert_eq!(rec.headers["x-api-key"], w.provider.api_key.as_str());
    assert_eq!(
        gw.credential_version("kwikpaisa"),
        Some(1),
        "the KV version is the credential's"
    );

    // Wait past the original TTL; the token must still work then.
    let outlived = created + Duration::from_secs(5);
    while Instant::now() < outlived {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewals = w.logs.count("vault token renewed");
    assert!(renewals >= 1, "{renewals} renewals; log:\n{}", w.logs.text());
    assert_eq!(refresh_count(&gw, "error").await, 0.0, "{}", w.logs.text());
    let (k2, s2) = new_pair();
    w.provider.standin.accept(&k2, SecretBytes::from(s2.clone()));
    bao.kv_put("kp/token", &[("api_key", &k2), ("secret_key", &s2)]).await;
    let v2 = || async { gw.credential_version("kwikpaisa") == Some(2) };
    assert!(eventually(Duration::from_secs(5), v2).await, "{}", w.logs.text());
    assert_eq!(post(&gw).await.status, 200);
    w.logs.assert_clean(&[&w.provider.secret, &s2, &token]);
}

#[tokio::test]
async fn approle_over_https_with_a_private_ca_loads_and_signs() {
    let w = World::new().await;
    let bao = Bao::start_tls().await;
    w.put_provider_pair(&bao, "kp/approle").await;
    bao.read_policy("kp", "kp/approle").await;
    let (role_id, secret_id) = bao.approle("signgate", "kp", "1h", "2h").await;
    let role = (role_id, secret_id);
    let credential = bao.approle_credential(&bao.addr(), "kp/approle", &role);
    let gw = w.gateway(credential.clone().vault_ca_file(&bao.ca_file())).await;
    let r = post(&gw).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);
    assert_eq!(gw.credential_version("kwikpaisa"), Some(1));

    // Without the private CA the certificate is not trusted: a clear reason, no secret.
    let untrusted = w.gateway(credential).await;
    let r = post(&untrusted).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("cannot reach Vault at https://127.0.0.1:") && msg.contains("certificate"),
        "{msg}"
    );
    w.logs.assert_clean(&[&w.provider.secret, &role.1]);
}

#[tokio::test]
async fn rotation_under_load_switches_within_the_refresh_and_fails_nothing() {
    let w = World::new().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/rotate").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let gw = w.gateway(token_credential(&bao.addr(), "kp/rotate", &token_file)).await;
    assert_eq!(post(&gw).await.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://{}/kwikpaisa/api/v3/pg/order/create", gw.addr());
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.clone());
            tokio::spawn(async move {
                let c = TestClient::new();
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(c.post(&url, BODY).await.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let standin = &w.provider.standin;
    assert!(eventually(Duration::from_secs(5), || async { standin.records().await.len() > 20 }).await);

    let (k2, s2) = new_pair();
    standin.accept(&k2, SecretBytes::from(s2.clone()));
    let put_at = Instant::now();
    bao.kv_put("kp/rotate", &[("api_key", &k2), ("secret_key", &s2)]).await;
    let seen_new = || async {
        standin
            .records()
            .await
            .iter()
            .any(|r| r.headers["x-api-key"] == k2.as_str())
    };
    assert!(
        eventually(Duration::from_secs(5), seen_new).await,
        "the new version was never used"
    );
    let switched_after = put_at.elapsed();
    // refresh_secs = 1 (+10 % jitter) plus slack for the read and the request.
    assert!(
        switched_after < Duration::from_millis(2500),
        "switched after {switched_after:?}"
    );
    let before = standin.records().await.len();
    assert!(
        eventually(Duration::from_secs(5), || async {
            standin.records().await.len() > before + 20
        })
        .await
    );
    stop.store(true, Ordering::Relaxed);

    let mut sent = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        sent += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "a request failed during rotation: {statuses:?}"
        );
    }
    let records = standin.records().await;
    assert!(records.iter().all(|r| r.verdict == Verdict::Valid));
    assert!(records[records.len() - 10..]
        .iter()
        .all(|r| r.headers["x-api-key"] == k2.as_str()));
    assert_eq!(gw.credential_version("kwikpaisa"), Some(2));
    assert!(sent > 40, "only {sent} requests in the loop");
    w.logs.assert_clean(&[&w.provider.secret, &s2, &bao.root]);
}

#[tokio::test]
async fn approle_renews_logs_in_again_before_expiry_and_after_revocation() {
    let w = World::new().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/renew").await;
    bao.read_policy("kp", "kp/renew").await;
    // Short lives: renewal at 2/3 of 4 s; the max TTL (8 s) caps the second
    // renewal, which must turn into a fresh login before the token dies.
    let role = bao.approle("short", "kp", "4s", "8s").await;
    let gw = w.gateway(bao.approle_credential(&bao.addr(), "kp/renew", &role)).await;
    assert_eq!(post(&gw).await.status, 200);
    let logs = &w.logs;
    let mut cycled = false;
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline && !cycled {
        cycled = logs.count("vault token renewed") >= 1 && logs.count("vault AppRole login") >= 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cycled, "no renewal and re-login within 12 s");
    assert_eq!(
        refresh_count(&gw, "error").await,
        0.0,
        "the token never lapsed: {}",
        logs.text()
    );
    assert_eq!(
        logs.count("rejected (403)"),
        0,
        "re-login was proactive, not after a 403"
    );
    assert_eq!(post(&gw).await.status, 200);

    // Revoked behind our back: the next read gets 403, logs in again, reads.
    bao.revoke_approle_tokens().await;
    let (k2, s2) = new_pair();
    w.provider.standin.accept(&k2, SecretBytes::from(s2.clone()));
    bao.kv_put("kp/renew", &[("api_key", &k2), ("secret_key", &s2)]).await;
    let v2 = || async { gw.credential_version("kwikpaisa") == Some(2) };
    assert!(eventually(Duration::from_secs(5), v2).await, "{}", w.logs.text());
    assert!(
        w.logs
            .count("vault token rejected (403); logging in again with AppRole")
            >= 1
    );
    assert_eq!(
        refresh_count(&gw, "error").await,
        0.0,
        "re-login happened within the refresh"
    );
    assert_eq!(post(&gw).await.status, 200);
    assert_eq!(w.last_record().await.headers["x-api-key"], k2.as_str());
    w.logs.assert_clean(&[&w.provider.secret, &s2, &role.1]);
}

#[tokio::test]
async fn signgate_check_loads_a_vault_credential_and_prints_no_secret() {
    let w = World::new().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/check").await;
    let config = w.write_config(
        &w.config(Credential::vault(&bao.addr(), "kp/check"))
            .edit_route("kwikpaisa", |r| r.upstream("https://localhost:9")),
    );
    let run = |token: String, config: PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_signgate"))
                .args(["check", "--credentials", "--config"])
                .arg(config)
                .env("VAULT_TOKEN", token)
                .env("SIGNGATE_LOG", "trace")
                .output()
                .unwrap()
        })
    };
    let ok = run(bao.root.clone(), config.clone()).await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    assert!(ok.status.success(), "{stdout}");
    assert!(stdout.contains("credential kwikpaisa: loaded (version 1)"), "{stdout}");
    for s in [&w.provider.secret, &bao.root] {
        assert!(
            !stdout.contains(s.as_str()) && !stderr.contains(s.as_str()),
            "a secret was printed"
        );
    }

    let bad = run("not-a-token".into(), config).await.unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success());
    assert!(
        stdout.contains("NOT loaded: token rejected (403): provide a new token in VAULT_TOKEN"),
        "{stdout}"
    );
}
