//! Helpers for the vault integration tests: a per-test log capture (every
//! line the in-process gateway logs, checked for secrets), the stand-in
//! provider plus PKI, credential snippets for token and AppRole auth, and
//! small request helpers.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use signgate::secrets::CredentialSlot;

use super::bao::{vault_gateway_config, Bao};
use super::*;

pub const BODY: &str = r#"{"order_id":"ORD-V1"}"#;

/// Everything logged (at TRACE) while the guard lives. `#[tokio::test]` runs
/// the in-process gateway's tasks on the test's own thread, so this
/// thread-local subscriber sees all of them and no other test's.
pub struct Logs {
    rx: mpsc::Receiver<Vec<u8>>,
    text: String,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
pub struct LogWriter(mpsc::Sender<Vec<u8>>);

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
    pub fn capture() -> Logs {
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

    pub fn text(&mut self) -> &str {
        while let Ok(chunk) = self.rx.try_recv() {
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
        &self.text
    }

    pub fn count(&mut self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    /// The capture worked, and no secret value is in it.
    pub fn assert_clean(&mut self, secrets: &[&str]) {
        let text = self.text().to_string();
        assert!(text.contains("credential loaded"), "the log capture saw nothing");
        for (i, s) in secrets.iter().enumerate() {
            assert!(!text.contains(s), "secret #{i} appears in the gateway's log output");
        }
    }
}

/// A stand-in provider, the PKI it serves with, and a log capture.
pub struct World {
    pub pki: Pki,
    pub provider: Provider,
    pub logs: Logs,
}

pub async fn world() -> World {
    let logs = Logs::capture();
    let pki = pki();
    let provider = provider(&pki).await;
    World { pki, provider, logs }
}

impl World {
    pub async fn gateway(&self, credential: &str) -> signgate::Running {
        let upstream = format!("https://localhost:{}", self.provider.standin.addr().port());
        gateway(&vault_gateway_config(&upstream, &self.pki.ca_path, credential)).await
    }

    /// The provider's current pair, stored at `secret/PATH`.
    pub async fn put_provider_pair(&self, bao: &Bao, path: &str) {
        let p = &self.provider;
        bao.kv_put(
            path,
            &[("api_key", &p.api_key), ("secret_key", &p.secret), ("note", "x")],
        )
        .await;
    }

    pub async fn last_record(&self) -> signgate::devtools::standin::Recorded {
        self.provider
            .standin
            .records()
            .await
            .pop()
            .expect("no request reached the provider")
    }
}

pub fn token_credential(addr: &str, path: &str, token_file: &Path, extra: &str) -> String {
    format!(
        "vault_addr = \"{addr}\"\nvault_path = \"{path}\"\nvault_auth = \"token\"\n\
         vault_token_file = \"{}\"\nrefresh_secs = 1\n{extra}",
        token_file.display()
    )
}

pub fn approle_credential(bao: &Bao, path: &str, role_id: &str, secret_id: &str, extra: &str) -> String {
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
pub fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn slot(gw: &signgate::Running) -> Arc<CredentialSlot> {
    gw.credential_slot("kwikpaisa").unwrap()
}

pub async fn post(gw: &signgate::Running) -> Reply {
    TestClient::new()
        .post(&format!("http://{}/kwikpaisa/api/v3/pg/order/status", gw.addr()), BODY)
        .await
}

pub fn pair() -> (String, String) {
    (random_token("pk_test_", 24), random_token("sk_test_", 32))
}
