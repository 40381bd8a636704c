//! Run-time operations on the real binary: the log filter changed through
//! the admin API, the process and build metrics, and the command line's
//! completions, manual page and `SIGNGATE_CONFIG`.

use std::time::Duration;

use http::Method;

use crate::support::*;

const TOKEN: &str = "0123456789abcdef-log-level";

#[tokio::test]
async fn put_log_level_turns_on_debug_lines_get_reads_it_a_bad_filter_is_refused_and_the_token_is_required() {
    let fx = Fixture::new().await;
    let token = fx.path("admin-token");
    std::fs::write(&token, TOKEN).unwrap();
    let gw = fx.process(
        &fx.config().admin("token_file", &token),
        &[("SIGNGATE_LOG", "info"), ("RUST_LOG", "")],
    );
    let c = TestClient::new();
    let auth = [("authorization", &*format!("Bearer {TOKEN}"))];
    let url = gw.admin_url("/log-level");

    let r = c.send(Method::GET, &url, &auth, "").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["filter"].clone()),
        (200, "info".into()),
        "{:?}",
        r.body
    );
    // A refusal is logged at debug level: not yet.
    assert_eq!(c.get(&gw.url("/no-such-route")).await.status, 404);

    // Without the token: 401, nothing changes.
    let r = c.send(Method::PUT, &url, &[], "signgate=debug").await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "unauthorized".to_string()));
    let r = c.send(Method::GET, &url, &[], "").await;
    assert_eq!(r.status, 401);

    let r = c.send(Method::PUT, &url, &auth, "signgate=debug\n").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["filter"], "signgate=debug");
    assert_eq!(r.json()["previous"], "info");
    let r = c.send(Method::GET, &url, &auth, "").await;
    assert_eq!(r.json()["filter"], "signgate=debug");
    let r = c.get(&gw.url("/no-such-route")).await;
    assert_eq!(r.status, 404);
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let debug_line = eventually(Duration::from_secs(5), || async {
        gw.log_text().lines().any(|l| l.contains("DEBUG") && l.contains(&id))
    })
    .await;
    assert!(debug_line, "a debug line about request {id}:\n{}", gw.log_text());
    assert_eq!(
        gw.log_text().lines().filter(|l| l.contains("DEBUG")).count(),
        gw.log_text()
            .lines()
            .filter(|l| l.contains("DEBUG") && l.contains(&id))
            .count(),
        "debug lines appear only after the change (the first refusal had none)"
    );

    // A filter that does not parse: 400 naming the problem; the old one stays.
    let r = c.send(Method::PUT, &url, &auth, "signgate=chatty").await;
    assert_eq!((r.status.as_u16(), r.code()), (400, "invalid_filter".to_string()));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a valid log filter"));
    let r = c.send(Method::GET, &url, &auth, "").await;
    assert_eq!(r.json()["filter"], "signgate=debug");
    let r = c.send(Method::POST, &url, &auth, "").await;
    assert_eq!(r.status, 405);

    // `signgate log-level` does the same through the admin API, with the
    // token from the configuration.
    let admin = gw.admin.to_string();
    let config = fx.config_path();
    let cli = |args: &[&str]| {
        let mut full = vec!["log-level", "--config", config.to_str().unwrap()];
        full.extend_from_slice(args);
        signgate(&full, &[("SIGNGATE__ADMIN__ADDR", &admin)])
    };
    let out = cli(&["info,signgate=trace"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The filter as the gateway holds it: directives most specific first.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "signgate=trace,info (was signgate=debug)\n"
    );
    let out = cli(&[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "signgate=trace,info\n");
    let out = cli(&["signgate=chatty"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_filter"));
}

fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn metrics_carry_the_process_collector_and_the_build_revision() {
    let fx = Fixture::new().await;
    let gw = fx.process(&fx.config(), &[]);
    let m = gw.metrics().await;
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(metric(&m, name, &[]) > 0.0, "{name} in\n{m}");
    }
    assert!(m.contains("process_cpu_seconds_total"), "{m}");
    let revision = std::env::var("SIGNGATE_GIT_REVISION")
        .ok()
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        metric(
            &m,
            "signgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("revision", &revision)]
        ),
        1.0,
        "{}",
        m.lines()
            .filter(|l| l.contains("build_info"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn signgate(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signgate"));
    cmd.args(args).env_remove("SIGNGATE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn completions_and_the_manual_page_cover_the_commands() {
    let out = signgate(&["completions", "bash"], &[]);
    assert!(out.status.success());
    let bash = String::from_utf8(out.stdout).unwrap();
    assert!(bash.contains("guard") && bash.contains("webhooks"), "{bash}");
    assert!(bash.contains("complete -F"), "a bash completion script");
    for shell in ["zsh", "fish"] {
        let out = signgate(&["completions", shell], &[]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    assert!(!signgate(&["completions", "tcsh"], &[]).status.success());

    let out = signgate(&["man"], &[]);
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    assert!(roff.lines().any(|l| l.starts_with(".TH SIGNGATE 1")), "{roff}");
    assert!(roff.contains(".SH NAME") && roff.contains("SIGNGATE_CONFIG"), "{roff}");
}

#[test]
fn signgate_config_is_the_default_config_file_and_config_still_wins() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("elsewhere.toml");
    std::fs::write(
        &good,
        "[access]\nallow = [\"127.0.0.1\"]\n[audit]\npath = \"audit/a.jsonl\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[access]\nallow = []\n").unwrap();
    let var = good.to_str().unwrap();
    let out = signgate(&["check"], &[("SIGNGATE_CONFIG", var)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("{var}: ok")), "{stdout}");
    // --config overrides the variable.
    let out = signgate(
        &["check", "--config", bad.to_str().unwrap()],
        &[("SIGNGATE_CONFIG", var)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}
