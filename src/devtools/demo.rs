//! `signgate demo`: the whole loop on loopback, with nothing to set up.
//!
//! Makes a throw-away CA and a random API key and secret, starts a provider
//! stand-in over TLS that recomputes every signature itself, starts the real
//! gateway pointed at it (verified TLS, a file credential), sends a few
//! requests as an internal app would, and prints what was signed and what the
//! provider said. Exit 0 only if every signed request was verified.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;

use crate::devtools::config::{GatewayToml, Route};
use crate::devtools::pki::DevCa;
use crate::devtools::standin::{Standin, StandinOptions, Verdict};
use crate::secrets::SecretBytes;

struct Case {
    what: &'static str,
    path: &'static str,
    body: &'static str,
    extra_header: Option<(&'static str, &'static str)>,
    /// `Some(status)` when the gateway itself must refuse (nothing reaches the provider).
    refused: Option<u16>,
}

const CASES: &[Case] = &[
    Case {
        what: "create order (nested customer, non-ASCII note, keys out of order)",
        path: "/kwikpaisa/api/v3/pg/order/create",
        body: r#"{
  "order_id": "ORD-2026-0001",
  "order_amount": "105.50",
  "order_currency": "INR",
  "order_note": "Fee ₹105.50 / कर",
  "service_type": "DIGITAL",
  "customer": { "phone": "9816512345", "name": "Ajay Kumar", "email": "dev@merchant.example.com" },
  "return_url": "https://merchant.example.com/pay/return?order=ORD-2026-0001"
}"#,
        extra_header: None,
        refused: None,
    },
    Case {
        what: "order status",
        path: "/kwikpaisa/api/v3/pg/order/status",
        body: r#"{"order_id": 6116229263036}"#,
        extra_header: None,
        refused: None,
    },
    Case {
        what: "client tries to send its own signature (it is replaced)",
        path: "/kwikpaisa/api/v3/payout/balance",
        body: r#"{"kwikx_wallet_id":"W-1"}"#,
        extra_header: Some(("x-signature", "forged-by-client")),
        refused: None,
    },
    Case {
        what: "malformed JSON (refused by the gateway, never signed)",
        path: "/kwikpaisa/api/v3/pg/order/create",
        body: r#"{"order_id": "1", "order_id": "2"}"#,
        extra_header: None,
        refused: Some(400),
    },
];

pub async fn run() -> ExitCode {
    match run_inner().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("signgate demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn random_token(prefix: &str, n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

async fn run_inner() -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("signgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());

    let api_key = random_token("pk_test_", 24);
    let secret = random_token("sk_test_", 32);
    let ca = DevCa::new("signgate demo CA")?;
    let server = ca.server(&["localhost", "127.0.0.1"])?;
    let tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())?;
    let standin = Standin::start(StandinOptions {
        api_key: api_key.clone(),
        secret: SecretBytes::from(secret.clone()),
        tolerance: Duration::from_secs(300),
        tls: Some(Arc::new(tls)),
        bind: "127.0.0.1:0".parse()?,
    })
    .await?;
    let ca_path = dir.join("provider-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem())?;
    let cred_path = dir.join("kwikpaisa.json");
    write_private(
        &cred_path,
        &serde_json::json!({"api_key": api_key, "secret_key": secret}).to_string(),
    )?;

    let config = GatewayToml::new()
        .listener("addr", "127.0.0.1:0")
        .admin("addr", "")
        .audit_path(&dir.join("audit.jsonl"))
        .allow(["127.0.0.0/8", "::1/128"])
        .egress_ca(&ca_path)
        .credential_file("kwikpaisa", &cred_path)
        .route(Route::kwikpaisa(&format!(
            "https://localhost:{}",
            standin.addr().port()
        )))
        .to_config()
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let gateway = crate::start(config).await?;
    let base = format!("http://{}", gateway.addr());
    println!("signgate demo");
    println!("  gateway           {base}  (plain HTTP on loopback, as a sidecar)");
    println!(
        "  provider stand-in https://localhost:{}  (TLS with a throw-away CA; recomputes every HMAC)",
        standin.addr().port()
    );
    println!("  API key           {api_key}   secret: generated, never printed");
    println!();

    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut all_ok = true;
    for (i, case) in CASES.iter().enumerate() {
        println!("[{}] {}", i + 1, case.what);
        println!("    app sends:      POST {}  {}", case.path, one_line(case.body));
        let mut req = Request::post(format!("{base}{}", case.path)).header("content-type", "application/json");
        if let Some((k, v)) = case.extra_header {
            req = req.header(k, v);
            println!("    app header:     {k}: {v}");
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from_static(case.body.as_bytes())))?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        match case.refused {
            Some(expected) => {
                let seen = standin.next(Duration::from_millis(200)).await;
                let ok = status.as_u16() == expected && seen.is_none();
                all_ok &= ok;
                println!("    gateway answer: {status} {}", String::from_utf8_lossy(&body));
                println!(
                    "    provider saw:   nothing   => {}",
                    if ok {
                        "OK (refused before signing)"
                    } else {
                        "UNEXPECTED"
                    }
                );
            }
            None => {
                let Some(rec) = standin.next(Duration::from_secs(5)).await else {
                    all_ok = false;
                    println!(
                        "    provider saw:   nothing (gateway answered {status}: {})  => FAILED",
                        String::from_utf8_lossy(&body)
                    );
                    continue;
                };
                let h = |n: &str| {
                    rec.headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                };
                println!("    upstream path:  {}", rec.path_and_query);
                println!("    signed payload: {}", String::from_utf8_lossy(&rec.body));
                println!("    X-TIMESTAMP:    {}", h("x-timestamp"));
                println!("    X-SIGNATURE:    {}", h("x-signature"));
                let ok = rec.verdict == Verdict::Valid && status == StatusCode::OK;
                all_ok &= ok;
                println!(
                    "    provider:       {:?} -> HTTP {status}  => {}",
                    rec.verdict,
                    if ok { "VERIFIED" } else { "FAILED" }
                );
            }
        }
        println!();
    }
    gateway.shutdown().await;
    println!(
        "{}",
        if all_ok {
            "every signed request was verified by the provider stand-in"
        } else {
            "SOME REQUESTS WERE NOT VERIFIED"
        }
    );
    Ok(all_ok)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(path)?, content.as_bytes())
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
