//! The vault source against a real OpenBao dev server, failing: Vault sealed,
//! killed, or down at start-up; a revoked token; the fail-closed maximum age.
//! The last good secret keeps signing, failures are counted and logged once
//! per state change, and the gateway recovers by itself. No secret is logged.

use std::time::{Duration, Instant};

use signgate::devtools::standin::Verdict;
use signgate::secrets::SecretBytes;

use crate::support::vault::*;
use crate::support::*;

#[tokio::test]
async fn sealed_or_dead_vault_keeps_the_last_good_secret_and_counts_failures() {
    let w = World::new().await;
    let mut bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/outage").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let gw = w.gateway(token_credential(&bao.addr(), "kp/outage", &token_file)).await;
    assert_eq!(post(&gw).await.status, 200);

    // The reason of a failing refresh is in its log line (the last good
    // secret still signs, so the gateway is ready and /readyz names nothing).
    bao.seal().await;
    let sealed = || async { w.logs.text().contains("sealed or unavailable (503") };
    assert!(eventually(Duration::from_secs(5), sealed).await, "{}", w.logs.text());
    assert_eq!(
        post(&gw).await.status,
        200,
        "sealed: still signing with the last good secret"
    );

    bao.kill();
    let errors_at_kill = refresh_count(&gw, "error").await;
    let counted = || async {
        w.logs.text().contains("cannot reach Vault at http://127.0.0.1:")
            && refresh_count(&gw, "error").await >= errors_at_kill + 2.0
    };
    assert!(eventually(Duration::from_secs(8), counted).await, "{}", w.logs.text());
    let r = post(&gw).await;
    assert_eq!(r.status, 200, "down: still signing with the last good secret");
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);

    // Healthy again: a refresh succeeds (and clears the problem).
    let oks = refresh_count(&gw, "ok").await;
    bao.restart().await;
    w.put_provider_pair(&bao, "kp/outage").await;
    assert!(
        eventually(Duration::from_secs(8), || async {
            refresh_count(&gw, "ok").await > oks
        })
        .await
    );
    assert_eq!(post(&gw).await.status, 200);
    // One log line per state change, not one per failed poll.
    let failures = refresh_count(&gw, "error").await as usize;
    let lines = w.logs.count("credential refresh failed");
    assert!(
        lines >= 2 && lines < failures,
        "{lines} warning lines for {failures} failed polls"
    );
    assert_eq!(w.logs.count("credential source healthy again"), 1);
    w.logs.assert_clean(&[&w.provider.secret, &bao.root]);
}

#[tokio::test]
async fn a_gateway_started_while_vault_is_down_answers_503_then_recovers_alone() {
    let w = World::new().await;
    let port = closed_port();
    let root = random_token("root-", 20);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, &root);
    let addr = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let gw = w.gateway(token_credential(&addr, "kp/late", &token_file)).await;
    assert!(started.elapsed() < Duration::from_secs(6), "start-up waited on Vault");
    let r = post(&gw).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains(&format!("cannot reach Vault at {addr}/")), "{msg}");
    assert!(
        w.provider.standin.records().await.is_empty(),
        "nothing unsigned was forwarded"
    );

    let bao = Bao::start_on(port, &root).await;
    w.put_provider_pair(&bao, "kp/late").await;
    let recovered = || async { post(&gw).await.status == 200 };
    assert!(eventually(Duration::from_secs(8), recovered).await);
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);
    w.logs.assert_clean(&[&w.provider.secret, &root]);
}

#[tokio::test]
async fn a_revoked_token_gives_a_clear_error_until_a_new_token_file_fixes_it() {
    let w = World::new().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/revoked").await;
    bao.read_policy("kp", "kp/revoked").await;
    let t1 = bao.child_token("kp", "1h").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &t1);
    let gw = w
        .gateway(token_credential(&bao.addr(), "kp/revoked", &token_file))
        .await;
    assert_eq!(post(&gw).await.status, 200);

    bao.revoke(&t1).await;
    let (k2, s2) = new_pair();
    w.provider.standin.accept(&k2, SecretBytes::from(s2.clone()));
    bao.kv_put("kp/revoked", &[("api_key", &k2), ("secret_key", &s2)]).await;
    let expected = format!("token rejected (403): provide a new token in {}", token_file.display());
    let rejected = || async { w.logs.text().contains(&expected) };
    assert!(eventually(Duration::from_secs(5), rejected).await, "{}", w.logs.text());
    assert_eq!(post(&gw).await.status, 200, "the last good secret still signs");
    assert_eq!(w.last_record().await.headers["x-api-key"], w.provider.api_key.as_str());

    // A gateway that never loaded says why in the 503.
    let revoked_file = bao.dir().join("revoked-token");
    write_token(&revoked_file, &t1);
    let fresh = w
        .gateway(token_credential(&bao.addr(), "kp/revoked", &revoked_file))
        .await;
    let r = post(&fresh).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("token rejected (403)"));

    // A new token in the file is picked up by the next retry.
    let t2 = bao.child_token("kp", "1h").await;
    write_token(&token_file, &t2);
    let v2 = || async { gw.credential_version("kwikpaisa") == Some(2) };
    assert!(eventually(Duration::from_secs(8), v2).await, "{}", w.logs.text());
    assert_eq!(post(&gw).await.status, 200);
    assert_eq!(w.last_record().await.headers["x-api-key"], k2.as_str());
    w.logs.assert_clean(&[&w.provider.secret, &s2, &t1, &t2]);
}

#[tokio::test]
async fn past_vault_max_stale_secs_the_gateway_fails_closed_then_recovers() {
    let w = World::new().await;
    let mut bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/stale").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let cred = token_credential(&bao.addr(), "kp/stale", &token_file).vault_max_stale_secs(2);
    let gw = w.gateway(cred).await;
    assert_eq!(post(&gw).await.status, 200);

    bao.kill();
    let killed_at = Instant::now();
    assert_eq!(post(&gw).await.status, 200, "within the maximum age: still signing");
    let closed = || async { post(&gw).await.status == 503 };
    assert!(eventually(Duration::from_secs(10), closed).await, "never failed closed");
    // The age counts from the last successful read, up to one refresh (1 s
    // + 10 %) before the kill.
    let after = killed_at.elapsed();
    assert!(
        after >= Duration::from_millis(850),
        "failed closed too early: {after:?}"
    );
    let r = post(&gw).await;
    assert_eq!(r.code(), "credential_unavailable");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("vault_max_stale_secs") && msg.contains("cannot reach Vault"),
        "{msg}"
    );
    assert_eq!(loaded(&gw).await, 0.0, "the credential is no longer loaded");
    assert_eq!(gw.credential_version("kwikpaisa"), None);

    bao.restart().await;
    w.put_provider_pair(&bao, "kp/stale").await;
    let back = || async { post(&gw).await.status == 200 };
    assert!(eventually(Duration::from_secs(8), back).await, "{}", w.logs.text());
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);
    w.logs.assert_clean(&[&w.provider.secret, &bao.root]);
}
