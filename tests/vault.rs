//! The vault source against a real OpenBao dev server: token and AppRole auth
//! (AppRole over HTTPS, private CA), renewal and re-login, rotation under load
//! with no failed request, sealed/killed/late Vault, revoked tokens, the
//! fail-closed maximum age and `signgate check`. Each test captures the
//! in-process gateway's logs and checks that no secret is in them.

#![allow(clippy::unwrap_used)] // test helpers panic on failed setup

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signgate::secrets::{CredentialSlot, SecretBytes};
use signgate::standin::Verdict;
use support::bao::{vault_gateway_config, Bao};
use support::*;

const BODY: &str = r#"{"order_id":"ORD-V1"}"#;

/// Everything logged (at TRACE) while the guard lives.
struct Logs {
    rx: mpsc::Receiver<Vec<u8>>,
    text: String,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct LogWriter(mpsc::Sender<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tracing_subscriber::fmt::MakeWriter<'_> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&self) -> LogWriter {
        self.clone()
    }
}

impl Logs {
    fn capture() -> Logs {
        let (tx, rx) = mpsc::channel();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(LogWriter(tx))
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        Logs {
            rx,
            text: String::new(),
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&mut self) -> &str {
        while let Ok(chunk) = self.rx.try_recv() {
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
        &self.text
    }

    fn count(&mut self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    /// The capture worked, and no secret value is in it.
    fn assert_clean(&mut self, secrets: &[&str]) {
        let text = self.text().to_string();
        assert!(text.contains("credential loaded"), "the log capture saw nothing");
        for (i, s) in secrets.iter().enumerate() {
            assert!(!text.contains(s), "secret #{i} appears in the gateway's log output");
        }
    }
}

/// A stand-in provider, the PKI it serves with, and a log capture.
struct World {
    pki: Pki,
    provider: Provider,
    logs: Logs,
}

async fn world() -> World {
    let logs = Logs::capture();
    let pki = pki();
    let provider = provider(&pki).await;
    World { pki, provider, logs }
}

impl World {
    async fn gateway(&self, credential: &str) -> signgate::Running {
        let upstream = format!("https://localhost:{}", self.provider.standin.addr().port());
        gateway(&vault_gateway_config(&upstream, &self.pki.ca_path, credential)).await
    }

    /// The provider's current pair, stored at `secret/PATH`.
    async fn put_provider_pair(&self, bao: &Bao, path: &str) {
        let p = &self.provider;
        bao.kv_put(
            path,
            &[("api_key", &p.api_key), ("secret_key", &p.secret), ("note", "x")],
        )
        .await;
    }

    async fn last_record(&self) -> signgate::standin::Recorded {
        self.provider
            .standin
            .records()
            .await
            .pop()
            .expect("no request reached the provider")
    }
}

fn token_credential(addr: &str, path: &str, token_file: &Path, extra: &str) -> String {
    format!(
        "vault_addr = \"{addr}\"\nvault_path = \"{path}\"\nvault_auth = \"token\"\n\
         vault_token_file = \"{}\"\nrefresh_secs = 1\n{extra}",
        token_file.display()
    )
}

fn approle_credential(bao: &Bao, path: &str, role_id: &str, secret_id: &str, extra: &str) -> String {
    let (r, s) = (bao.dir().join("role-id"), bao.dir().join("secret-id"));
    std::fs::write(&r, role_id).unwrap();
    std::fs::write(&s, secret_id).unwrap();
    format!(
        "vault_addr = \"{}\"\nvault_path = \"{path}\"\nvault_auth = \"approle\"\n\
         vault_role_id_file = \"{}\"\nvault_secret_id_file = \"{}\"\nrefresh_secs = 1\n{extra}",
        bao.addr(),
        r.display(),
        s.display()
    )
}

/// Replace a token file atomically, as Vault Agent does.
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn slot(gw: &signgate::Running) -> Arc<CredentialSlot> {
    gw.gateway().snapshot().credentials.slot("kwikpaisa").unwrap().clone()
}

async fn post(gw: &signgate::Running) -> Reply {
    TestClient::new()
        .post(&format!("http://{}/kwikpaisa/api/v3/pg/order/status", gw.addr()), BODY)
        .await
}

fn pair() -> (String, String) {
    (random_token("pk_test_", 24), random_token("sk_test_", 32))
}

#[tokio::test]
async fn token_auth_loads_renews_the_token_and_requests_verify_at_the_provider() {
    let mut w = world().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/token").await;
    bao.read_policy("kp", "kp/token").await;
    // A short-lived renewable token: it only outlives its 4 s TTL if renewed.
    let token = bao.child_token("kp", "4s").await;
    let created = Instant::now();
    let token_file = bao.dir().join("token");
    write_token(&token_file, &token);
    let gw = w
        .gateway(&token_credential(&bao.addr(), "kp/token", &token_file, ""))
        .await;
    let slot = slot(&gw);

    let r = post(&gw).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rec = w.last_record().await;
    assert_eq!(rec.verdict, Verdict::Valid);
    assert_eq!(rec.headers["x-api-key"], w.provider.api_key.as_str());
    assert_eq!(
        slot.get().unwrap().version(),
        Some(1),
        "the KV version is the credential's"
    );

    // Wait past the original TTL; the token must still work then.
    let outlived = created + Duration::from_secs(5);
    while Instant::now() < outlived {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewals = w.logs.count("vault token renewed");
    assert!(
        renewals >= 1,
        "{renewals} renewals; polls {:?}, problem {:?}",
        slot.refresh_counts(),
        slot.problem()
    );
    assert_eq!(slot.refresh_counts().1, 0, "{:?}", slot.problem());
    let (k2, s2) = pair();
    w.provider.standin.accept(&k2, SecretBytes::from(s2.clone()));
    bao.kv_put("kp/token", &[("api_key", &k2), ("secret_key", &s2)]).await;
    let v2 = || async { slot.get().is_ok_and(|c| c.version() == Some(2)) };
    assert!(eventually(Duration::from_secs(5), v2).await, "{:?}", slot.problem());
    assert_eq!(post(&gw).await.status, 200);
    w.logs.assert_clean(&[&w.provider.secret, &s2, &token]);
}

#[tokio::test]
async fn approle_over_https_with_a_private_ca_loads_and_signs() {
    let mut w = world().await;
    let bao = Bao::start_tls().await;
    w.put_provider_pair(&bao, "kp/approle").await;
    bao.read_policy("kp", "kp/approle").await;
    let (role_id, secret_id) = bao.approle("signgate", "kp", "1h", "2h").await;
    let ca = format!("vault_ca_file = \"{}\"", bao.ca_file().display());
    let gw = w
        .gateway(&approle_credential(&bao, "kp/approle", &role_id, &secret_id, &ca))
        .await;
    let r = post(&gw).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);
    assert_eq!(slot(&gw).get().unwrap().version(), Some(1));

    // Without the private CA the certificate is not trusted: a clear reason, no secret.
    let untrusted = w
        .gateway(&approle_credential(&bao, "kp/approle", &role_id, &secret_id, ""))
        .await;
    let r = post(&untrusted).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("cannot reach Vault at https://127.0.0.1:") && msg.contains("certificate"),
        "{msg}"
    );
    w.logs.assert_clean(&[&w.provider.secret, &secret_id]);
}

#[tokio::test]
async fn rotation_under_load_switches_within_the_refresh_and_fails_nothing() {
    let mut w = world().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/rotate").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let gw = w
        .gateway(&token_credential(&bao.addr(), "kp/rotate", &token_file, ""))
        .await;
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

    let (k2, s2) = pair();
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
    assert_eq!(slot(&gw).get().unwrap().version(), Some(2));
    assert!(sent > 40, "only {sent} requests in the loop");
    w.logs.assert_clean(&[&w.provider.secret, &s2, &bao.root]);
}

#[tokio::test]
async fn sealed_or_dead_vault_keeps_the_last_good_secret_and_counts_failures() {
    let mut w = world().await;
    let mut bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/outage").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let gw = w
        .gateway(&token_credential(&bao.addr(), "kp/outage", &token_file, ""))
        .await;
    let slot = slot(&gw);
    assert_eq!(post(&gw).await.status, 200);

    bao.seal().await;
    let sealed = || async { slot.problem().is_some_and(|p| p.contains("sealed or unavailable (503")) };
    assert!(eventually(Duration::from_secs(5), sealed).await, "{:?}", slot.problem());
    assert_eq!(
        post(&gw).await.status,
        200,
        "sealed: still signing with the last good secret"
    );

    bao.kill();
    let (_, errors_at_kill) = slot.refresh_counts();
    let counted = || async {
        slot.problem()
            .is_some_and(|p| p.contains("cannot reach Vault at http://127.0.0.1:"))
            && slot.refresh_counts().1 >= errors_at_kill + 2
    };
    assert!(
        eventually(Duration::from_secs(8), counted).await,
        "{:?}",
        slot.problem()
    );
    let r = post(&gw).await;
    assert_eq!(r.status, 200, "down: still signing with the last good secret");
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);

    bao.restart().await;
    w.put_provider_pair(&bao, "kp/outage").await;
    assert!(eventually(Duration::from_secs(8), || async { slot.problem().is_none() }).await);
    assert_eq!(post(&gw).await.status, 200);
    // One log line per state change, not one per failed poll.
    let failures = slot.refresh_counts().1 as usize;
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
    let mut w = world().await;
    let port = closed_port();
    let root = random_token("root-", 20);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, &root);
    let addr = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let gw = w.gateway(&token_credential(&addr, "kp/late", &token_file, "")).await;
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
async fn approle_renews_logs_in_again_before_expiry_and_after_revocation() {
    let mut w = world().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/renew").await;
    bao.read_policy("kp", "kp/renew").await;
    // Short lives: renewal at 2/3 of 4 s; the max TTL (8 s) caps the second
    // renewal, which must turn into a fresh login before the token dies.
    let (role_id, secret_id) = bao.approle("short", "kp", "4s", "8s").await;
    let gw = w
        .gateway(&approle_credential(&bao, "kp/renew", &role_id, &secret_id, ""))
        .await;
    let slot = slot(&gw);
    assert_eq!(post(&gw).await.status, 200);
    let logs = &mut w.logs;
    let mut cycled = false;
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline && !cycled {
        cycled = logs.count("vault token renewed") >= 1 && logs.count("vault AppRole login") >= 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cycled, "no renewal and re-login within 12 s");
    assert_eq!(
        slot.refresh_counts().1,
        0,
        "the token never lapsed: {:?}",
        slot.problem()
    );
    assert_eq!(
        logs.count("rejected (403)"),
        0,
        "re-login was proactive, not after a 403"
    );
    assert_eq!(post(&gw).await.status, 200);

    // Revoked behind our back: the next read gets 403, logs in again, reads.
    bao.revoke_approle_tokens().await;
    let (k2, s2) = pair();
    w.provider.standin.accept(&k2, SecretBytes::from(s2.clone()));
    bao.kv_put("kp/renew", &[("api_key", &k2), ("secret_key", &s2)]).await;
    let v2 = || async { slot.get().is_ok_and(|c| c.version() == Some(2)) };
    assert!(eventually(Duration::from_secs(5), v2).await, "{:?}", slot.problem());
    assert!(
        w.logs
            .count("vault token rejected (403); logging in again with AppRole")
            >= 1
    );
    assert_eq!(slot.refresh_counts().1, 0, "re-login happened within the refresh");
    assert_eq!(post(&gw).await.status, 200);
    assert_eq!(w.last_record().await.headers["x-api-key"], k2.as_str());
    w.logs.assert_clean(&[&w.provider.secret, &s2, &secret_id]);
}

#[tokio::test]
async fn a_revoked_token_gives_a_clear_error_until_a_new_token_file_fixes_it() {
    let mut w = world().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/revoked").await;
    bao.read_policy("kp", "kp/revoked").await;
    let t1 = bao.child_token("kp", "1h").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &t1);
    let gw = w
        .gateway(&token_credential(&bao.addr(), "kp/revoked", &token_file, ""))
        .await;
    let slot = slot(&gw);
    assert_eq!(post(&gw).await.status, 200);

    bao.revoke(&t1).await;
    let (k2, s2) = pair();
    w.provider.standin.accept(&k2, SecretBytes::from(s2.clone()));
    bao.kv_put("kp/revoked", &[("api_key", &k2), ("secret_key", &s2)]).await;
    let expected = format!("token rejected (403): provide a new token in {}", token_file.display());
    let rejected = || async { slot.problem().is_some_and(|p| p.contains(&expected)) };
    assert!(
        eventually(Duration::from_secs(5), rejected).await,
        "{:?}",
        slot.problem()
    );
    assert_eq!(post(&gw).await.status, 200, "the last good secret still signs");
    assert_eq!(w.last_record().await.headers["x-api-key"], w.provider.api_key.as_str());

    // A gateway that never loaded says why in the 503.
    let revoked_file = bao.dir().join("revoked-token");
    write_token(&revoked_file, &t1);
    let fresh = w
        .gateway(&token_credential(&bao.addr(), "kp/revoked", &revoked_file, ""))
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
    let v2 = || async { slot.get().is_ok_and(|c| c.version() == Some(2)) && slot.problem().is_none() };
    assert!(eventually(Duration::from_secs(8), v2).await, "{:?}", slot.problem());
    assert_eq!(post(&gw).await.status, 200);
    assert_eq!(w.last_record().await.headers["x-api-key"], k2.as_str());
    w.logs.assert_clean(&[&w.provider.secret, &s2, &t1, &t2]);
}

#[tokio::test]
async fn past_vault_max_stale_secs_the_gateway_fails_closed_then_recovers() {
    let mut w = world().await;
    let mut bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/stale").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let cred = token_credential(&bao.addr(), "kp/stale", &token_file, "vault_max_stale_secs = 2");
    let gw = w.gateway(&cred).await;
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
    assert!(!slot(&gw).is_loaded());

    bao.restart().await;
    w.put_provider_pair(&bao, "kp/stale").await;
    let back = || async { post(&gw).await.status == 200 };
    assert!(
        eventually(Duration::from_secs(8), back).await,
        "{:?}",
        slot(&gw).problem()
    );
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);
    w.logs.assert_clean(&[&w.provider.secret, &bao.root]);
}

#[tokio::test]
async fn signgate_check_loads_a_vault_credential_and_prints_no_secret() {
    let w = world().await;
    let bao = Bao::start().await;
    w.put_provider_pair(&bao, "kp/check").await;
    let config = bao.dir().join("gateway.toml");
    let credential = format!("vault_addr = \"{}\"\nvault_path = \"kp/check\"", bao.addr());
    std::fs::write(
        &config,
        vault_gateway_config("https://localhost:9", &w.pki.ca_path, &credential),
    )
    .unwrap();
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
