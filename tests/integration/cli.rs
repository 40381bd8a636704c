//! The `signgate` binary as an operator uses it: the shipped `gateway.toml`
//! starts with no secrets and no network, `check` lists every error, `sign`
//! reproduces the provider's vectors, and `demo` verifies every signature.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_signgate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[tokio::test]
async fn shipped_config_starts_without_secrets_and_answers_json() {
    let dir = tempfile::tempdir().unwrap();
    let (audit, state) = (dir.path().join("audit.jsonl"), dir.path().join("state"));
    let started = Instant::now();
    let mut gw = GatewayProcess::start_without(
        &Path::new(ROOT).join("gateway.toml"),
        &[
            ("SIGNGATE__AUDIT__PATH", audit.to_str().unwrap()),
            ("SIGNGATE__STATE__DIR", state.to_str().unwrap()),
        ],
        &["KWIKPAISA_API_KEY", "KWIKPAISA_SECRET_KEY"],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let c = TestClient::new();
    let r = c.get(&gw.url("/")).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (404, "no_route"));
    let r = c
        .post(&gw.url("/kwikpaisa/api/v3/pg/order/status"), r#"{"order_id":"1"}"#)
        .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("KWIKPAISA_API_KEY") && msg.contains("KWIKPAISA_SECRET_KEY"),
        "{msg}"
    );
    // SIGTERM: drains and exits 0.
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let bad = GatewayToml::new()
        .listener("addr", "0.0.0.0:8080")
        .listener("max_conections", 5)
        .allow(["10.0.0.0/33"])
        .route(
            Route::new("r", "/r/", "http://example.invalid")
                .credential("missing")
                .scheme("kwikpaisa"),
        );
    std::fs::write(&path, bad.render()).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "listener.addr",
        "allow_plaintext",
        "listener.max_conections",
        "access.allow[0]",
        "route[0].upstream",
        "route[0].credential",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
    let ok = Command::new(BIN)
        .args(["check", "--config", "gateway.toml"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The same file, served: a bad config exits 64 before binding anything.
    let run = Command::new(BIN).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(run.status.code(), Some(64));
}

/// A route that signs for the payout route's upstream and credential
/// without its guards could send payouts around them: `check` names both.
/// The shipped file keeps its payment route below `/api/v3/pg`: no warning,
/// and a payout path through it is no route at all.
#[test]
fn check_warns_when_a_route_goes_around_a_guard() {
    let check = |path: &Path| {
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let shipped = Path::new(ROOT).join("gateway.toml");
    assert!(!check(&shipped).contains("warning"), "{}", check(&shipped));
    let explain = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(&shipped)
        .args(["--path", "/kwikpaisa/api/v3/banking/payment/create", "--body"])
        .arg(r#"{"payout_order_id":"P1","transfer_amount":"9999999.00"}"#)
        .env("KWIKPAISA_API_KEY", "pk_test_cli")
        .env("KWIKPAISA_SECRET_KEY", "sk_test_cli_0123456789abcdef")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&explain.stdout);
    assert!(
        said.contains("404 no_route") && said.contains("sent:              nothing"),
        "{said}"
    );

    // The route as it was: every path of the host, so payouts too.
    let text = std::fs::read_to_string(&shipped).unwrap();
    let around = text
        .replace(
            r#"match_prefix = "/kwikpaisa/api/v3/pg/""#,
            r#"match_prefix = "/kwikpaisa/""#,
        )
        .replace(
            r#"upstream = "https://sandbox.kwikpaisa.com/api/v3/pg""#,
            r#"upstream = "https://sandbox.kwikpaisa.com""#,
        );
    assert_ne!(around, text, "the shipped route changed: update this test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, around).unwrap();
    let out = check(&path);
    assert!(
        out.contains(r#"warning: route "kwikpaisa" signs for the same upstream and credential as route "kwikpaisa-payouts", without its duplicate guard and amount guard"#),
        "{out}"
    );
}

#[test]
fn check_credentials_reports_without_printing_secrets() {
    let out = Command::new(BIN)
        .args(["check", "--credentials", "--config", "gateway.toml"])
        .current_dir(ROOT)
        .env("KWIKPAISA_API_KEY", "pk_test_cli")
        .env("KWIKPAISA_SECRET_KEY", "sk_test_do_not_print_me_0123")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("credential kwikpaisa: loaded"), "{all}");
    assert!(!all.contains("sk_test_do_not_print_me_0123"));
    let out = Command::new(BIN)
        .args(["check", "--credentials", "--config", "gateway.toml"])
        .current_dir(ROOT)
        .env_remove("KWIKPAISA_API_KEY")
        .env_remove("KWIKPAISA_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT loaded"));
}

fn sign(args: &[&str], body: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("sign")
        .args(args)
        .current_dir(std::env::temp_dir())
        .env("KWIKPAISA_SECRET_KEY", "YOUR_SECRET_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sign_reproduces_the_reference_vectors() {
    let out = sign(
        &["--scheme", "kwikpaisa", "--timestamp", "1778659835"],
        "{\"order_id\": \"123456\", \"amount\": \"100\"}\n",
    );
    assert!(
        out.contains("canonical payload: {\"amount\":\"100\",\"order_id\":\"123456\"}\n"),
        "{out}"
    );
    assert!(
        out.contains("signed string:     {\"amount\":\"100\",\"order_id\":\"123456\"}1778659835\n"),
        "{out}"
    );
    assert!(
        out.contains("signature:         6aafa6ffebb2465388bb65c4bcd41a125b218686fa305979d23b4c435af6d209"),
        "{out}"
    );
    let w1 = r#"{"event":"payment.success","data":{"order_id":"6116229263036","amount":"105.00","currency":"INR","status":"PAID"}}"#;
    let out = sign(&["--timestamp", "1778659835"], w1);
    assert!(
        out.contains("a872851246706ff26f6682ed90e9fdffda04da3deb53e790832351355e4840c7"),
        "W2: {out}"
    );
    let note = r#"{"n":"₹"}"#;
    assert!(sign(&["--timestamp", "1", "--escape-unicode", "false"], note).contains("{\"n\":\"₹\"}1"));
    assert!(sign(&["--timestamp", "1"], note).contains("{\"n\":\"\\u20b9\"}1"));
    assert!(!out.contains("YOUR_SECRET_KEY"));
}

#[test]
fn demo_verifies_every_signature() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every signed request was verified"), "{stdout}");
    assert_eq!(stdout.matches("=> VERIFIED").count(), 3, "{stdout}");
}
