//! Start-up, configuration and process hygiene, mostly through the real
//! binary: `check` and `run` agree (preflight), logs without escape codes
//! and as JSON, typed mTLS identities, the credential-age metric, secrets
//! out of `/proc/PID/environ` and a non-dumpable process, owner-only state
//! files, and the path tricks aimed at the frameworks behind a provider.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use signgate::devtools::pki::{ClientSan, DevCa};
use signgate::devtools::standin::Verdict;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_signgate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Run to completion, killed after `within` (a `run` that should have
/// refused to start must not hang the test).
fn run_to_exit(mut cmd: Command, within: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {within:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `signgate check` and `signgate run` on the same file: (check, run).
fn check_and_run(config: &Path) -> (Output, Output) {
    let cmd = |sub: &str| {
        let mut c = Command::new(BIN);
        // No SIGNGATE__ overrides from the test's own environment.
        c.env_clear().args([sub, "--config"]).arg(config);
        c
    };
    (
        run_to_exit(cmd("check"), Duration::from_secs(20)),
        run_to_exit(cmd("run"), Duration::from_secs(20)),
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The smallest valid configuration with its files under `dir`: loopback
/// listener and admin, loopback clients, the audit log in `dir/audit/`, the
/// state in `dir/state`; no route.
fn base_config(dir: &Path) -> GatewayToml {
    GatewayToml::new()
        .listener("addr", "127.0.0.1:0")
        .admin("addr", "127.0.0.1:0")
        .allow(["127.0.0.0/8"])
        .audit_path(&dir.join("audit/audit.jsonl"))
        .state_dir(&dir.join("state"))
}

/// Write `toml` to `dir/gateway.toml`; the path.
fn write_config(dir: &Path, toml: &GatewayToml) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    replace_file(&path, toml.render());
    path
}

// ------------------------------------------------------------------ preflight

#[test]
fn check_and_run_agree_on_the_systemd_config_without_its_tls_files() {
    let config = Path::new(ROOT).join("deploy/systemd/gateway.toml");
    if Path::new("/etc/signgate/tls/gateway.pem").exists() {
        eprintln!("skipped: this host has the systemd example's TLS files");
        return;
    }
    let (check, run) = check_and_run(&config);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert_eq!(
        run.status.code(),
        Some(64),
        "exit 64: systemd does not restart it\n{}",
        stderr(&run)
    );
    for out in [&check, &run] {
        let err = stderr(out);
        for needle in [
            "listener.tls_cert: /etc/signgate/tls/gateway.pem: cannot read: no such file",
            "listener.client_ca: /etc/signgate/tls/clients-ca.pem",
            "credentials.kwikpaisa.vault_ca_file: /etc/signgate/tls/vault-ca.pem",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }
    // The same list, word for word.
    assert_eq!(
        stderr(&run).trim_start_matches("signgate: "),
        stderr(&check),
        "check and run print the same errors"
    );
}

#[test]
fn check_and_run_refuse_a_key_of_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("edges CA").unwrap();
    let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let other = ca.server(&["other"]).unwrap();
    let (cert, key) = (dir.path().join("gw.pem"), dir.path().join("other-key.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &other.key_pem).unwrap();
    let config = write_config(dir.path(), &base_config(dir.path()).listener_tls(&cert, &key));
    let (check, run) = check_and_run(&config);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert_eq!(run.status.code(), Some(64), "{}", stderr(&run));
    for out in [&check, &run] {
        let err = stderr(out);
        assert!(
            err.contains("listener.tls_key: ")
                && err.contains("other-key.pem: does not match the certificate in listener.tls_cert"),
            "{err}"
        );
    }
    assert!(!dir.path().join("audit").exists(), "nothing was created");
}

#[test]
fn check_and_run_refuse_an_audit_directory_they_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file stands where the audit directory should be made.
    std::fs::write(dir.path().join("audit"), "").unwrap();
    let config = write_config(dir.path(), &base_config(dir.path()));
    let (check, run) = check_and_run(&config);
    assert_eq!((check.status.code(), run.status.code()), (Some(1), Some(64)));
    for out in [&check, &run] {
        let err = stderr(out);
        assert!(
            err.contains(&format!(
                "audit.path: {}/audit/audit.jsonl: {}/audit is not a directory",
                dir.path().display(),
                dir.path().display()
            )),
            "{err}"
        );
    }
    // A directory without write permission (root writes anyway: then only the above holds).
    if !is_root() {
        std::fs::remove_file(dir.path().join("audit")).unwrap();
        std::fs::create_dir(dir.path().join("audit")).unwrap();
        std::fs::set_permissions(dir.path().join("audit"), std::fs::Permissions::from_mode(0o500)).unwrap();
        let (check, run) = check_and_run(&config);
        assert_eq!((check.status.code(), run.status.code()), (Some(1), Some(64)));
        assert!(stderr(&run).contains("audit.path") && stderr(&run).contains("permission denied"));
    }
}

// ------------------------------------------------------------------ logs

#[tokio::test]
async fn logs_written_to_a_file_carry_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &base_config(dir.path()));
    let gw = GatewayProcess::launch(
        &config,
        &Launch::new()
            .unset("NO_COLOR")
            .unset("RUST_LOG")
            .env("SIGNGATE_LOG", "debug")
            .stderr_to(&dir.path().join("stderr.log")),
    );
    let r = TestClient::new()
        .send(
            http::Method::GET,
            &gw.url("/nowhere"),
            &[("x-request-id", "edges-text-1")],
            "",
        )
        .await;
    assert_eq!(r.status, 404);
    gw.wait_for_log("edges-text-1", Duration::from_secs(20)).await;
    let text = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!text.contains('\u{1b}'), "an ESC byte in a log file:\n{text:?}");
    assert!(text.contains("signgate listening"));
}

#[tokio::test]
async fn json_logs_parse_and_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &base_config(dir.path()).log("format", "json"));
    let gw = GatewayProcess::launch(
        &config,
        &Launch::new()
            .unset("NO_COLOR")
            .env("SIGNGATE_LOG", "debug")
            .stderr_to(&dir.path().join("stderr.log")),
    );
    let r = TestClient::new()
        .send(
            http::Method::GET,
            &gw.url("/nowhere"),
            &[("x-request-id", "edges-json-1")],
            "",
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (404, "no_route"));
    gw.wait_for_log("edges-json-1", Duration::from_secs(20)).await;
    let text = gw.log_text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    for v in &lines {
        for key in ["timestamp", "level", "target", "message", "fields"] {
            assert!(v.get(key).is_some(), "no {key} in {v}");
        }
    }
    let refused = lines
        .iter()
        .find(|v| v["request_id"] == "edges-json-1")
        .unwrap_or_else(|| panic!("no line with the request id at the top level:\n{text}"));
    assert_eq!(refused["message"], "refused");
    assert_eq!(refused["fields"]["code"], "no_route");
    assert_eq!(refused["level"], "DEBUG");
}

#[test]
fn the_log_section_is_validated_like_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &base_config(dir.path()));
    let none: Vec<(String, String)> = Vec::new();
    let c = signgate::Config::load_with_env(&path, none).unwrap();
    assert_eq!(c.log.format, signgate::config::LogFormat::Text);
    let c = signgate::Config::load_with_env(&path, [("SIGNGATE__LOG__FORMAT", "json")]).unwrap();
    assert_eq!(c.log.format, signgate::config::LogFormat::Json);
    // An invalid value and an unknown key (the builder passes both through).
    write_config(
        dir.path(),
        &base_config(dir.path()).log("format", "yaml").log("colour", true),
    );
    let none: Vec<(String, String)> = Vec::new();
    let errs = signgate::Config::load_with_env(&path, none).unwrap_err().to_string();
    assert!(errs.contains("log.colour: unknown key"), "{errs}");
    assert!(errs.contains("log.format: invalid value \"yaml\""), "{errs}");
}

// ------------------------------------------------------------------ replay window

#[test]
fn check_refuses_a_webhook_that_forgets_events_while_they_are_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = |window: u64| {
        base_config(dir.path())
            .credential("kp", Credential::env("EDGES_UNSET_KEY", "EDGES_UNSET_SECRET"))
            .webhook(
                Webhook::new("kp", "/webhooks/kp", "kp", "http://127.0.0.1:9/events")
                    .set("scheme", "kwikpaisa")
                    .tolerance_secs(300)
                    .dedup_window_secs(window),
            )
    };
    let path = write_config(dir.path(), &webhook(10));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("webhook[0].dedup_window_secs: invalid value \"10\"")
            && err.contains("webhook[0].tolerance_secs = 300")
            && err.contains("at least 601 seconds"),
        "{err}"
    );
    write_config(dir.path(), &webhook(601));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

// ------------------------------------------------------------------ identities

/// The fixture's gateway serving mTLS with a clients CA of its own (which
/// also issues the gateway's certificate), the route admitting `allow`.
async fn mtls_setup(allow: &[&str]) -> (Setup, DevCa) {
    let clients = DevCa::new("edges clients CA").unwrap();
    let fx = Fixture::new().await;
    let server = clients.server(&["localhost", "127.0.0.1"]).unwrap();
    let (cert, key, ca) = (fx.path("gw.pem"), fx.path("gw-key.pem"), fx.path("clients-ca.pem"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    std::fs::write(&ca, clients.cert_pem()).unwrap();
    let toml = fx
        .config()
        .listener_tls(&cert, &key)
        .listener("client_ca", &ca)
        .edit_route("kwikpaisa", |r| r.allow_identities(allow.to_vec()));
    (Setup::on(fx, &toml).await, clients)
}

#[tokio::test]
async fn a_dns_san_spelled_like_a_spiffe_id_is_not_the_uri_identity() {
    let (s, ca) = mtls_setup(&["spiffe://prod/payouts", "dns:payouts.internal"]).await;
    let addr = s.gw.addr();
    let confused = ca
        .client_with("confused", &[ClientSan::Dns("spiffe://prod/payouts")])
        .unwrap();
    let r = https_post(addr, &ca, Some(&confused), "/kwikpaisa/x", "{}")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.code().as_str()), (403, "identity_not_allowed"));
    // A URI SAN with the DNS entry's text does not pass the dns: entry either.
    let uri_named_like_dns = ca
        .client_with("uri", &[ClientSan::Uri("https://payouts.internal")])
        .unwrap();
    let r = https_post(addr, &ca, Some(&uri_named_like_dns), "/kwikpaisa/x", "{}")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(
        s.provider.standin.records().await.is_empty(),
        "nothing refused was sent"
    );

    let uri = ca
        .client_with("payouts", &[ClientSan::Uri("spiffe://prod/payouts")])
        .unwrap();
    let r = https_post(addr, &ca, Some(&uri), "/kwikpaisa/x", "{}").await.unwrap();
    assert_eq!(r.status, 200);
    let dns = ca
        .client_with("payouts", &[ClientSan::Dns("PAYOUTS.internal")])
        .unwrap();
    let r = https_post(addr, &ca, Some(&dns), "/kwikpaisa/x", "{}").await.unwrap();
    assert_eq!(r.status, 200);
    let recs = s.provider.standin.records().await;
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.verdict == Verdict::Valid));
}

// ------------------------------------------------------------------ credential age

#[tokio::test]
async fn credential_age_has_no_sample_until_the_credential_loads() {
    let s = Setup::with(|c| {
        c.credential(
            "never",
            Credential::env("EDGES_NEVER_SET_KEY", "EDGES_NEVER_SET_SECRET"),
        )
    })
    .await;
    let m = s.metrics().await;
    let series = |cred: &str| format!("signgate_credential_age_seconds{{credential=\"{cred}\"}}");
    assert!(m.lines().any(|l| l.starts_with(&series("kwikpaisa"))), "{m}");
    assert!(
        !m.lines().any(|l| l.starts_with(&series("never"))),
        "a credential that never loaded has no age sample:\n{m}"
    );
    assert_eq!(
        metric(&m, "signgate_credential_loaded", &[("credential", "never")]),
        0.0
    );
    assert_eq!(
        metric(&m, "signgate_credential_loaded", &[("credential", "kwikpaisa")]),
        1.0
    );
}

// ------------------------------------------------------------------ secrets at rest

/// The `Uid:` (real) of a process, from `/proc/PID/status`.
fn proc_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn env_secrets_leave_the_process_environment_and_still_sign() {
    let fx = Fixture::new().await;
    let dir = fx.dir.path();
    let provider = &fx.provider;
    // Only an env credential (named `name`): route `kp` and a webhook use it.
    let cred = |name: &str| {
        base_config(dir)
            .egress_ca(&fx.pki.ca_path)
            .credential(name, Credential::env("EDGES_KP_KEY", "EDGES_KP_SECRET"))
            .route(Route::to("kp", &fx.upstream()).credential(name))
            .webhook(Webhook::new("hook", "/hooks/kp", name, "http://127.0.0.1:9/events").set("scheme", "kwikpaisa"))
    };
    // Root runs the gateway as nobody, so that "non-dumpable" can be seen:
    // /proc/PID files then belong to root instead of to the process's user.
    let as_nobody = is_root();
    if as_nobody {
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&fx.pki.ca_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(fx.pki.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // umask 022, the usual default: the state files must still be owner-only.
    let mut launch = Launch::new()
        .umask("022")
        .env("EDGES_KP_KEY", &provider.api_key)
        .env("EDGES_KP_SECRET", &provider.secret);
    if as_nobody {
        launch = launch.user(65534);
    }
    let gw = fx.process_with(&cred("kp"), &launch);
    let pid = gw.child.id();

    // 1. Not in /proc/PID/environ (as root the test may read it; another user may not).
    let environ = |pid: u32| std::fs::read(format!("/proc/{pid}/environ"));
    match environ(pid) {
        Ok(env) => {
            let env = String::from_utf8_lossy(&env);
            for needle in [provider.secret.as_str(), provider.api_key.as_str(), "EDGES_KP_"] {
                assert!(!env.contains(needle), "{needle} still in /proc/{pid}/environ");
            }
            assert!(env.contains("SIGNGATE_SECRETS_HANDOFF=stdin"), "{env:?}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
    }
    gw.wait_for_log(
        "secret environment variables taken out of the environment",
        Duration::from_secs(20),
    )
    .await;

    // 2. ...and the route signs with it: the stand-in checks the HMAC itself.
    let c = TestClient::new();
    let r = c
        .post(&gw.url("/kp/api/v3/pg/order/status"), r#"{"order_id":"1"}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, gw.log_text());
    let recs = provider.standin.records().await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].verdict, Verdict::Valid);
    assert_eq!(recs[0].headers["x-api-key"], provider.api_key.as_str());

    // 3. Non-dumpable: /proc/PID/* belong to root although the process does not run as root.
    let uid = proc_uid(pid);
    assert_ne!(uid, 0, "the check needs a gateway that is not root");
    let owner = std::fs::metadata(format!("/proc/{pid}/status")).unwrap().uid();
    assert_eq!(owner, 0, "a dumpable process would own its /proc files (uid {uid})");
    // ... and no transparent huge pages (on a THP `always` host they would
    // back mostly empty malloc arenas with 2 MiB pages: docs/performance.md).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "THP_enabled in /proc/{pid}/status");

    // 4. Owner-only state under umask 022.
    let state = dir.join("state");
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    let inbox = state.join("signgate.redb");
    assert_eq!(std::fs::metadata(&inbox).unwrap().permissions().mode() & 0o777, 0o600);

    // 5. A reload that reloads credentials still has the values.
    fx.write_config(&cred("kp_renamed"));
    gw.signal("HUP");
    gw.wait_for_log("(credentials reloaded)", Duration::from_secs(20)).await;
    let r = c
        .post(&gw.url("/kp/api/v3/pg/order/status"), r#"{"order_id":"2"}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, gw.log_text());
    let recs = provider.standin.records().await;
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].verdict, Verdict::Valid);
    if let Ok(env) = environ(pid) {
        assert!(!String::from_utf8_lossy(&env).contains(provider.secret.as_str()));
    }
    // Never in the log either.
    let log = gw.log_text();
    assert!(!log.contains(provider.secret.as_str()) && !log.contains(provider.api_key.as_str()));
}

// ------------------------------------------------------------------ paths

#[tokio::test]
async fn path_tricks_for_upstream_frameworks_get_400_and_reach_nothing() {
    let s = Setup::new().await;
    let c = TestClient::new();
    for path in [
        "/kwikpaisa/..;/admin",
        "/kwikpaisa/..;a/admin",
        "/kwikpaisa/.;/admin",
        "/kwikpaisa/%2e%2e;/admin",
        "/kwikpaisa/..%3b/admin",
        "/kwikpaisa/%252e%252e/admin",
        "/kwikpaisa/%c0%af%c0%afetc",
        "/kwikpaisa/%u002e%u002e/admin",
        "/kwikpaisa/a%0d%0aX-Injected:%201",
        "/kwikpaisa/%ef%bc%8e%ef%bc%8e/admin",
    ] {
        let r = c.post(&s.url(path), "{}").await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "invalid_path"), "{path}");
        assert_eq!(r.headers["content-type"], "application/json", "{path}");
    }
    assert!(
        s.provider.standin.records().await.is_empty(),
        "the provider received a refused path"
    );
    // The route itself still works.
    let r = c.post(&s.url("/kwikpaisa/api/v3/pg/order/status;v=1"), "{}").await;
    assert_eq!(r.status, 200);
    assert_eq!(s.provider.standin.records().await.len(), 1);
}
