//! `signgate explain`, the real binary: what would be sent (the canonical
//! body, the exact signed message, the upstream URL, the headers added with
//! the signature, the credential and version that sign) for the fixture's
//! configuration, checked against an HMAC computed here; and the gateway's
//! own answers (`403 ip_not_allowed`, `404`, `405`, `400 invalid_json`,
//! `400 missing_duplicate_key`, `403 no_credential_for_caller`) for requests
//! it would refuse. The stand-in is never contacted and the secret never
//! printed.

use std::process::Output;

use signgate::devtools::config::CredentialRule;

use crate::support::*;

const PATH: &str = "/kwikpaisa/api/v3/pg/order/status";
const TS: &str = "1778659835";

fn explain(fx: &Fixture, toml: &GatewayToml, args: &[&str]) -> Output {
    let config = fx.write_config(toml);
    std::process::Command::new(signgate_bin())
        .arg("explain")
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of the `label:` line of explain's output.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
        .trim()
}

#[tokio::test]
async fn explain_shows_exactly_what_would_be_signed_and_sent() {
    let fx = Fixture::new().await;
    let toml = fx.config().edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"));
    let out = explain(
        &fx,
        &toml,
        &[
            "--route",
            "kwikpaisa",
            "--path",
            &format!("{PATH}?trace=1"),
            "--body",
            r#"{ "order_id": "ORD-9", "amount": "100" }"#,
            "--timestamp",
            TS,
        ],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let canonical = r#"{"amount":"100","order_id":"ORD-9"}"#;
    assert_eq!(field(&text, "canonical body:"), canonical);
    assert_eq!(field(&text, "signed message:"), format!("{canonical}{TS}"));
    let expected = provider_signature(&fx.provider.secret, canonical.as_bytes(), TS);
    assert_eq!(field(&text, "signature:"), expected);
    assert_eq!(
        field(&text, "upstream:"),
        format!("POST {}/api/v3/pg/order/status?trace=1", fx.upstream())
    );
    assert!(field(&text, "credential:").starts_with("kwikpaisa (file "), "{text}");
    assert!(field(&text, "credential:").contains("version 1"), "{text}");
    assert!(
        field(&text, "duplicate key:").starts_with(r#"/order_id = "ORD-9""#),
        "{text}"
    );
    assert!(text.contains(&format!("  x-signature: {expected}")), "{text}");
    assert!(text.contains(&format!("  x-timestamp: {TS}")), "{text}");
    assert!(
        text.contains(&format!("  content-length: {}", canonical.len())),
        "{text}"
    );
    // The API key in part, the secret never.
    assert!(
        text.contains(&format!("  x-api-key: {}…", &fx.provider.api_key[..8])),
        "{text}"
    );
    assert!(!text.contains(&fx.provider.api_key), "{text}");
    assert!(!text.contains(&fx.provider.secret), "{text}");
    assert!(fx.provider.standin.records().await.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn explain_prints_the_gateways_answer_for_requests_it_would_refuse() {
    let fx = Fixture::new().await;
    let (key_b, secret_b) = (random_token("pk_test_b_", 20), random_token("sk_test_b_", 32));
    let cred_b = fx.path("merchant_b.json");
    write_cred(&cred_b, &key_b, &secret_b);
    let toml = fx
        .config()
        .credential("merchant_b", Fixture::file_credential(&cred_b))
        .edit_route("kwikpaisa", |r| r.duplicate_key("/order_id"))
        .route(Route::to("payouts", &fx.upstream()).credential_map([
            CredentialRule::client("10.1.0.0/16", "kwikpaisa"),
            CredentialRule::client("127.0.0.2", "merchant_b"),
        ]))
        .allow(["127.0.0.0/8", "10.0.0.0/8"]);
    let body = r#"{"order_id":"ORD-1"}"#;
    for (args, answer) in [
        (
            vec!["--client", "192.0.2.7", "--path", PATH, "--body", body],
            "403 ip_not_allowed: client address is not allowed",
        ),
        (vec!["--path", "/nowhere", "--body", body], "404 no_route:"),
        (
            vec!["--method", "GET", "--path", PATH],
            "405 method_not_allowed: route kwikpaisa accepts only POST",
        ),
        (
            vec!["--path", PATH, "--body", r#"{"a":1,"a":2}"#],
            "400 invalid_json: request body is not valid JSON at byte",
        ),
        (
            vec!["--path", PATH, "--body", r#"{"amount":"1"}"#],
            "400 missing_duplicate_key: this route needs a transaction reference at JSON pointer /order_id",
        ),
        (vec!["--path", "/kwikpaisa/a/../b", "--body", body], "400 invalid_path:"),
        (
            vec!["--client", "127.0.0.9", "--path", "/payouts/x", "--body", body],
            "403 no_credential_for_caller:",
        ),
    ] {
        let out = explain(&fx, &toml, &args);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(field(&text, "answer:").starts_with(answer), "{args:?}: {text}");
        assert!(text.contains("sent:              nothing"), "{text}");
        assert!(!text.contains(&fx.provider.secret) && !text.contains(&secret_b));
    }
    // The credential picked by caller is the one shown and used.
    let out = explain(
        &fx,
        &toml,
        &[
            "--client",
            "127.0.0.2",
            "--path",
            "/payouts/x",
            "--body",
            body,
            "--timestamp",
            TS,
        ],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        field(&text, "credential:").starts_with("merchant_b (file ")
            && text.contains("credential_map: client 127.0.0.2/32"),
        "{text}"
    );
    assert_eq!(
        field(&text, "signature:"),
        provider_signature(&secret_b, body.as_bytes(), TS)
    );
    // The route named must be the one the path takes.
    let out = explain(&fx, &toml, &["--route", "payouts", "--path", PATH, "--body", body]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is routed to route \"kwikpaisa\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A credential that cannot load is the gateway's 503, with the reason.
    std::fs::remove_file(&cred_b).unwrap();
    let out = explain(
        &fx,
        &toml,
        &["--client", "127.0.0.2", "--path", "/payouts/x", "--body", body],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        field(&text, "answer:")
            .starts_with("503 credential_unavailable: credential merchant_b is not available: create the file"),
        "{text}"
    );
    assert!(fx.provider.standin.records().await.is_empty(), "nothing was ever sent");
}
