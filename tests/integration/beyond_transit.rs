//! `source = "vault_transit"` against a real OpenBao dev server: the
//! provider's secret is imported into Transit as a key of type `hmac` (with
//! `bao transit import`, the way docs/signing.md tells an operator to), the
//! gateway signs every request through `transit/hmac`, and the provider
//! stand-in, which knows only the secret, accepts the signatures. A secret
//! shorter than Transit's 32-byte minimum works zero-padded. A new key version
//! (`bao transit import-version`) signs once the refresh sees it and is the
//! audit record's `secret_version`. Failures (a missing key, a token without
//! the hmac policy, Vault down or hanging) answer `503 credential_unavailable`
//! with the reason and send nothing. Webhooks verify through `transit/verify`.
//! `signgate explain` shows a Transit credential's message (and, with
//! `--transit`, its signature). The latency test measures the cost of the
//! Transit call against the in-memory secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use signgate::devtools::standin::Verdict;
use signgate::secrets::SecretBytes;

use crate::support::vault::*;
use crate::support::*;

/// A policy for a Transit credential: read the key's metadata and the API
/// key, compute and verify HMACs with the key.
fn transit_policy(key: &str, api_path: &str) -> String {
    format!(
        "path \"transit/keys/{key}\" {{ capabilities = [\"read\"] }}\n\
         path \"transit/hmac/{key}/*\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/verify/{key}/*\" {{ capabilities = [\"update\"] }}\n\
         path \"secret/data/{api_path}\" {{ capabilities = [\"read\"] }}\n"
    )
}

/// `bao ARGS` against `bao`, its output whatever the outcome (never printed:
/// it may hold key material).
async fn bao_try(bao: &Bao, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bao_bin());
    cmd.args(args)
        .env("HOME", bao.dir())
        .env("BAO_ADDR", bao.addr())
        .env("BAO_TOKEN", &bao.root)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap()
}

/// Enable Transit (once) and import `secret` as the HMAC key `name`, as the
/// docs say: `bao transit import transit/keys/NAME <base64> type=hmac`.
async fn import(bao: &Bao, name: &str, secret: &[u8]) {
    if !bao.cli(&["secrets", "list", "-format=json"]).await.contains("transit/") {
        bao.cli(&["secrets", "enable", "transit"]).await;
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    bao.cli(&["transit", "import", &format!("transit/keys/{name}"), &b64, "type=hmac"])
        .await;
}

/// A token file holding a token with the Transit policy for `key`.
async fn transit_token(bao: &Bao, key: &str, api_path: &str) -> (PathBuf, String) {
    let file = bao.dir().join(format!("{key}.hcl"));
    std::fs::write(&file, transit_policy(key, api_path)).unwrap();
    bao.cli(&["policy", "write", key, file.to_str().unwrap()]).await;
    let token = bao.child_token(key, "1h").await;
    let token_file = bao.dir().join(format!("{key}.token"));
    write_token(&token_file, &token);
    (token_file, token)
}

fn transit_credential(bao: &Bao, key: &str, api_path: &str, token_file: &Path) -> Credential {
    Credential::vault_transit(&bao.addr(), key)
        .token_file(token_file)
        .api_key_kv(api_path)
        .refresh_secs(1)
}

async fn post_as(gw: &signgate::Running, rid: &str) -> Reply {
    TestClient::new()
        .send(
            http::Method::POST,
            &format!("http://{}/kwikpaisa/api/v3/pg/order/status", gw.addr()),
            &[("content-type", "application/json"), ("x-request-id", rid)],
            BODY,
        )
        .await
}

#[tokio::test]
async fn transit_signs_and_the_provider_verifies_with_only_the_secret() {
    let w = World::new().await;
    let bao = Bao::start().await;
    import(&bao, "kp", w.provider.secret.as_bytes()).await;
    bao.kv_put(
        "kp/api",
        &[("api_key", &w.provider.api_key), ("secret_key", "never-read")],
    )
    .await;
    let (token_file, token) = transit_token(&bao, "kp", "kp/api").await;
    let gw = w.gateway(transit_credential(&bao, "kp", "kp/api", &token_file)).await;
    assert_eq!(gw.credential_version("kwikpaisa"), Some(1), "the key's latest version");

    let r = post_as(&gw, "transit-1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rec = w.last_record().await;
    assert_eq!(rec.verdict, Verdict::Valid);
    assert_eq!(rec.headers["x-api-key"], w.provider.api_key.as_str());
    let audit = w.audit_record("transit-1").await;
    assert_eq!(
        (audit["credential"].as_str(), audit["secret_version"].as_u64()),
        (Some("kwikpaisa"), Some(1))
    );

    // A rotation: the provider issues a new API key and a new secret. The
    // API key's secret pins the key version first, so importing the new
    // secret changes nothing yet...
    bao.kv_put(
        "kp/api",
        &[("api_key", &w.provider.api_key), ("transit_key_version", "1")],
    )
    .await;
    let (k2, s2) = new_pair();
    w.provider.standin.accept(&k2, SecretBytes::from(s2.clone()));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&s2);
    bao.cli(&["transit", "import-version", "transit/keys/kp", &b64]).await;
    let polls = refresh_count(&gw, "ok").await;
    let polled = || async { refresh_count(&gw, "ok").await >= polls + 2.0 };
    assert!(eventually(Duration::from_secs(6), polled).await, "{}", w.logs.text());
    assert_eq!(gw.credential_version("kwikpaisa"), Some(1), "pinned to version 1");
    let r = post_as(&gw, "transit-pinned").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.last_record().await.verdict, Verdict::Valid);
    assert_eq!(w.audit_record("transit-pinned").await["secret_version"], 1);
    // ...and one KV write moves the API key and the key version together.
    bao.kv_put("kp/api", &[("api_key", &k2), ("transit_key_version", "2")])
        .await;
    let v2 = || async { gw.credential_version("kwikpaisa") == Some(2) };
    assert!(eventually(Duration::from_secs(5), v2).await, "{}", w.logs.text());
    let r = post_as(&gw, "transit-2").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rec = w.last_record().await;
    assert_eq!(
        (rec.headers["x-api-key"].to_str().unwrap(), rec.verdict),
        (k2.as_str(), Verdict::Valid)
    );
    assert_eq!(w.audit_record("transit-2").await["secret_version"], 2);
    // A pin to a version not imported yet is refused (the gateway goes on
    // with the version it has, not ready until the pin can be honoured).
    bao.kv_put("kp/api", &[("api_key", &k2), ("transit_key_version", "3")])
        .await;
    let readyz = format!("http://{}/readyz", gw.admin_addr().unwrap());
    let refused = || async {
        let r = TestClient::new().get(&readyz).await;
        r.status == 503 && String::from_utf8_lossy(&r.body).contains("has no version 3")
    };
    assert!(eventually(Duration::from_secs(5), refused).await, "{}", w.logs.text());
    bao.kv_put("kp/api", &[("api_key", &k2), ("transit_key_version", "2")])
        .await;
    let ready = || async { TestClient::new().get(&readyz).await.status == 200 };
    assert!(eventually(Duration::from_secs(5), ready).await, "{}", w.logs.text());
    assert_eq!(
        metric(
            &admin_metrics(&gw).await,
            "signgate_signatures_total",
            &[("route", "kwikpaisa"), ("credential", "kwikpaisa")]
        ),
        3.0
    );
    w.logs.assert_clean(&[&w.provider.secret, &s2, &token]);
}

#[tokio::test]
async fn a_short_secret_signs_zero_padded_to_transits_minimum() {
    let w = World::new().await;
    let bao = Bao::start().await;
    // A 16-byte secret: Transit refuses it as an HMAC key (32 to 512 bytes)...
    let short = random_token("sk_", 13);
    assert_eq!(short.len(), 16);
    if !bao.cli(&["secrets", "list", "-format=json"]).await.contains("transit/") {
        bao.cli(&["secrets", "enable", "transit"]).await;
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(short.as_bytes());
    let refused = bao_try(&bao, &["transit", "import", "transit/keys/kp-raw", &b64, "type=hmac"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid key size 16 bytes"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // ...zero-padded to 32 bytes it is the same HMAC key.
    let mut padded = short.as_bytes().to_vec();
    padded.resize(32, 0);
    import(&bao, "kp-short", &padded).await;
    let api_key = random_token("pk_test_s_", 16);
    w.provider.standin.accept(&api_key, SecretBytes::from(short.clone()));
    bao.kv_put("kp/short", &[("api_key", &api_key)]).await;
    let (token_file, _) = transit_token(&bao, "kp-short", "kp/short").await;
    let gw = w
        .gateway(transit_credential(&bao, "kp-short", "kp/short", &token_file))
        .await;
    let r = post(&gw).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rec = w.last_record().await;
    assert_eq!(
        (rec.headers["x-api-key"].to_str().unwrap(), rec.verdict),
        (api_key.as_str(), Verdict::Valid)
    );
}

#[tokio::test]
async fn transit_failures_answer_503_with_the_reason_and_send_nothing() {
    let w = World::new().await;
    let bao = Bao::start().await;
    import(&bao, "kp", w.provider.secret.as_bytes()).await;
    bao.kv_put("kp/api", &[("api_key", &w.provider.api_key)]).await;
    let (token_file, _) = transit_token(&bao, "kp", "kp/api").await;
    let message = |r: &Reply| r.json()["error"]["message"].as_str().unwrap_or_default().to_string();

    // A key that is not there: the credential never loads.
    write_token(&bao.dir().join("root.token"), &bao.root);
    let missing = w
        .gateway(transit_credential(
            &bao,
            "absent",
            "kp/api",
            &bao.dir().join("root.token"),
        ))
        .await;
    let r = post(&missing).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    assert!(message(&r).contains("transit"), "{}", message(&r));

    // A token that may read the key but not compute HMACs: refused (403).
    let policy = bao.dir().join("read-only.hcl");
    std::fs::write(
        &policy,
        "path \"transit/keys/kp\" { capabilities = [\"read\"] }\npath \"secret/data/kp/api\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    bao.cli(&["policy", "write", "read-only", policy.to_str().unwrap()])
        .await;
    let ro_file = bao.dir().join("ro.token");
    write_token(&ro_file, &bao.child_token("read-only", "1h").await);
    let denied = w.gateway(transit_credential(&bao, "kp", "kp/api", &ro_file)).await;
    assert_eq!(denied.credential_version("kwikpaisa"), Some(1), "it loads");
    let r = post(&denied).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    assert!(
        message(&r).contains("(403)") && message(&r).contains("transit/keys/kp"),
        "{}",
        message(&r)
    );

    // Vault hanging (the process stopped): bounded by transit_timeout_ms.
    let gw = w
        .gateway(transit_credential(&bao, "kp", "kp/api", &token_file).transit_timeout_ms(500))
        .await;
    assert_eq!(post(&gw).await.status, 200);
    let pid = bao_pid(&bao);
    signal(pid, "STOP");
    let started = Instant::now();
    let r = post(&gw).await;
    let took = started.elapsed();
    signal(pid, "CONT");
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    assert!(message(&r).contains("transit_timeout_ms"), "{}", message(&r));
    assert!(took < Duration::from_secs(3), "bounded: {took:?}");

    // Vault down: 503 at once, then not ready.
    let before = w.provider.standin.records().await.len();
    let mut bao = bao;
    bao.kill();
    let r = post(&gw).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    assert!(message(&r).contains("cannot reach Vault"), "{}", message(&r));
    let not_ready = eventually(Duration::from_secs(5), || async {
        TestClient::new()
            .get(&format!("http://{}/readyz", gw.admin_addr().unwrap()))
            .await
            .status
            == 503
    })
    .await;
    assert!(not_ready, "{}", w.logs.text());
    assert_eq!(
        w.provider.standin.records().await.len(),
        before,
        "nothing was sent while Transit could not sign"
    );
    w.logs.assert_clean(&[&w.provider.secret, &bao.root]);
}

/// The pid of this test's OpenBao server (started by the test itself).
fn bao_pid(bao: &Bao) -> u32 {
    let out = Command::new("pgrep")
        .args(["-f", &format!("dev-listen-address=127.0.0.1:{} ", bao.port)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(pids.len(), 1, "one bao server on port {}: {text}", bao.port);
    pids[0]
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test]
async fn webhooks_verify_through_transit() {
    let w = World::new().await;
    let bao = Bao::start().await;
    import(&bao, "kp", w.provider.secret.as_bytes()).await;
    bao.kv_put("kp/api", &[("api_key", &w.provider.api_key)]).await;
    let (token_file, _) = transit_token(&bao, "kp", "kp/api").await;
    let app = App::start_on(0).await;
    let toml = w
        .config(transit_credential(&bao, "kp", "kp/api", &token_file))
        .webhook(Webhook::kwikpaisa(&format!("http://{}/payments/events", app.addr)));
    let gw = w.fx.gateway(&toml).await;
    let url = format!("http://{}/webhooks/kwikpaisa", gw.addr());
    let event = r#"{"event":"payment.success","data":{"order_id":"ORD-W1","status":"paid"}}"#;
    let ts = unix_now().to_string();
    let send = |sig: String| {
        let (url, ts) = (url.clone(), ts.clone());
        async move {
            TestClient::new()
                .send(
                    http::Method::POST,
                    &url,
                    &[("x-timestamp", ts.as_str()), ("x-signature", sig.as_str())],
                    event,
                )
                .await
        }
    };
    // Signed by the provider with the secret only Transit holds: accepted.
    let genuine = provider_signature(&w.provider.secret, event.as_bytes(), &ts);
    let r = send(genuine.to_uppercase()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["status"], "accepted");
    // Forged: another key, or not a signature at all.
    let forged = provider_signature("sk_test_not_the_secret_0123456789", event.as_bytes(), &ts);
    let r = send(forged).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (401, "bad_signature"));
    let r = send("zz".into()).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (401, "bad_signature"));
    assert!(eventually(Duration::from_secs(5), || async { app.count().await == 1 }).await);
}

#[tokio::test]
async fn explain_shows_the_message_transit_would_sign_and_with_transit_the_signature() {
    let w = World::new().await;
    let bao = Bao::start().await;
    import(&bao, "kp", w.provider.secret.as_bytes()).await;
    bao.kv_put("kp/api", &[("api_key", &w.provider.api_key)]).await;
    let (token_file, token) = transit_token(&bao, "kp", "kp/api").await;
    let toml = w.config(transit_credential(&bao, "kp", "kp/api", &token_file));
    let config = w.write_config(&toml);
    let explain = |extra: &[&str]| {
        let out = Command::new(signgate_bin())
            .args(["explain", "--config"])
            .arg(&config)
            .args([
                "--path",
                "/kwikpaisa/api/v3/pg/order/status",
                "--body",
                BODY,
                "--timestamp",
                "1778659835",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = explain(&[]);
    assert!(text.contains(&format!("signed message:    {BODY}1778659835")), "{text}");
    assert!(
        text.contains("signature:         computed by Vault Transit (transit/keys/kp at http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("add --transit"), "{text}");
    let text = explain(&["--transit"]);
    let expected = provider_signature(&w.provider.secret, BODY.as_bytes(), "1778659835");
    assert!(
        text.contains(&format!("signature:         {expected} (computed by Vault Transit")),
        "{text}"
    );
    assert!(text.contains(&format!("  x-signature: {expected}")), "{text}");
    for secret in [&w.provider.secret, &token] {
        assert!(!text.contains(secret.as_str()));
    }
    assert!(w.provider.standin.records().await.is_empty(), "nothing was sent");
}

/// p50 and p99 of `samples`, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (u128, u128) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)].as_micros();
    (at(0.50), at(0.99))
}

/// 1000 signed requests through the gateway to the stand-in, one at a time,
/// with the secret in memory and with Transit, interleaved in rounds of 100
/// so that both see the same background load. The gateways are the real
/// binary: `SIGNGATE_TEST_BINARY=target/release/signgate` measures a release
/// build. The figures in docs/signing.md come from this test (run it with
/// `--nocapture`).
#[tokio::test]
async fn transit_signing_latency_against_the_in_memory_secret() {
    const N: usize = 1000;
    const ROUND: usize = 100;
    let w = World::new().await;
    let bao = Bao::start().await;
    import(&bao, "kp", w.provider.secret.as_bytes()).await;
    bao.kv_put("kp/api", &[("api_key", &w.provider.api_key)]).await;
    let (token_file, _) = transit_token(&bao, "kp", "kp/api").await;
    let own_files = |toml: GatewayToml, name: &str| {
        toml.audit_path(&w.path(&format!("audit-{name}.jsonl")))
            .state_dir(&w.path(&format!("state-{name}")))
    };
    let memory = w.process(&own_files(w.fx.config(), "memory"), &[]);
    let transit = w.process(
        &own_files(
            w.config(transit_credential(&bao, "kp", "kp/api", &token_file)),
            "transit",
        ),
        &[],
    );
    let client = TestClient::new();
    let urls = [&memory, &transit].map(|gw| gw.url("/kwikpaisa/api/v3/pg/order/status"));
    for url in &urls {
        for _ in 0..50 {
            assert_eq!(client.post(url, BODY).await.status, 200, "warm-up");
        }
    }
    let mut samples = [Vec::with_capacity(N), Vec::with_capacity(N)];
    for _ in 0..N / ROUND {
        for (url, samples) in urls.iter().zip(samples.iter_mut()) {
            for _ in 0..ROUND {
                let started = Instant::now();
                let r = client.post(url, BODY).await;
                samples.push(started.elapsed());
                assert_eq!(r.status, 200, "{url}: {:?}", r.body);
            }
        }
    }
    let [memory_samples, transit_samples] = samples;
    let figures = [("in-memory", memory_samples), ("transit", transit_samples)].map(|(label, samples)| {
        let (p50, p99) = percentiles(samples);
        println!("{label}: {N} signed requests through the gateway to the stand-in: p50 {p50} µs, p99 {p99} µs");
        (p50, p99)
    });
    let recs = w.provider.standin.records().await;
    assert_eq!(recs.len(), 2 * (N + 50));
    assert!(recs.iter().all(|r| r.verdict == Verdict::Valid));
    println!(
        "transit adds: p50 {} µs, p99 {} µs",
        figures[1].0.saturating_sub(figures[0].0),
        figures[1].1.saturating_sub(figures[0].1)
    );
}
