//! The one fixture every gateway test starts from, and the two ways to run
//! the gateway on it.
//!
//! A [`Fixture`] is a throw-away [`Pki`], the provider stand-in serving TLS
//! with it ([`Provider`], which recomputes every signature), the stand-in's
//! key pair in a credential file, and a temp dir for the audit log, the
//! state dir and a config file. [`Fixture::config`] is the configuration
//! that wires them together; a test changes what it is about with the
//! `signgate::devtools::config` builder and then runs the gateway
//! in-process ([`Fixture::gateway`], or [`Setup`] for the common case) or as
//! the real binary ([`Fixture::process`], a [`GatewayProcess`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signgate::devtools::config::{Credential, GatewayToml, Route};
use signgate::devtools::pki::DevCa;
use signgate::devtools::standin::{Standin, StandinOptions};
use signgate::secrets::SecretBytes;
use tempfile::TempDir;

use super::{metric, random_token, TestClient};

/// A CA (trusted by the gateway through `egress.ca_file`) and a server
/// certificate for localhost / 127.0.0.1, the CA written to a temp dir.
pub struct Pki {
    pub dir: TempDir,
    pub ca: DevCa,
    pub ca_path: PathBuf,
    pub server_tls: Arc<rustls::ServerConfig>,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("signgate test CA").unwrap();
    let server = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let server_tls = rustls::ServerConfig::builder_with_provider(signgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())
        .unwrap();
    let ca_path = dir.path().join("provider-ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    Pki {
        dir,
        ca,
        ca_path,
        server_tls: Arc::new(server_tls),
    }
}

/// The provider stand-in and the credentials it expects.
pub struct Provider {
    pub standin: Standin,
    pub api_key: String,
    pub secret: String,
}

pub async fn provider(pki: &Pki) -> Provider {
    provider_on(pki, "127.0.0.1:0").await
}

pub async fn provider_on(pki: &Pki, bind: &str) -> Provider {
    provider_with(pki, bind, Duration::from_secs(60)).await
}

/// The stand-in accepting `X-TIMESTAMP`s within `tolerance` of its clock.
pub async fn provider_with(pki: &Pki, bind: &str, tolerance: Duration) -> Provider {
    let api_key = random_token("pk_test_", 24);
    let secret = random_token("sk_test_", 32);
    let standin = Standin::start(StandinOptions {
        api_key: api_key.clone(),
        secret: SecretBytes::from(secret.clone()),
        tolerance,
        tls: Some(pki.server_tls.clone()),
        bind: bind.parse().unwrap(),
    })
    .await
    .unwrap();
    Provider {
        standin,
        api_key,
        secret,
    }
}

/// Write `contents` to `path` through a temporary file and a rename, so a
/// reader sees the old file or the new one, never half of one (as Vault
/// Agent and Kubernetes replace files).
pub fn replace_file(path: &Path, contents: impl AsRef<[u8]>) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Write a JSON credential file the gateway's `file` source reads (atomically).
pub fn write_cred(path: &Path, api_key: &str, secret: &str) {
    replace_file(
        path,
        serde_json::json!({"api_key": api_key, "secret_key": secret}).to_string(),
    );
}

/// PKI, provider stand-in, credential file and a temp dir: what a gateway
/// test needs before it starts a gateway.
pub struct Fixture {
    pub pki: Pki,
    pub provider: Provider,
    /// The stand-in's key pair, as `[credentials.kwikpaisa]` reads it.
    pub cred_path: PathBuf,
    /// Audit log, state dir, config file, and whatever else a test writes.
    pub dir: TempDir,
}

impl Fixture {
    /// The audit record of request `rid` in this fixture's audit log, once written.
    pub async fn audit_record(&self, rid: &str) -> serde_json::Value {
        let find = || {
            std::fs::read_to_string(self.audit_path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|r| r["request_id"] == rid)
        };
        assert!(
            super::eventually(Duration::from_secs(10), || async { find().is_some() }).await,
            "no audit record for {rid}"
        );
        find().unwrap()
    }
}

impl Fixture {
    /// `n` gateway processes of one fleet on `redis_url`: `toml(i)` plus,
    /// for each, its own audit log, state dir and `[fleet]` instance name
    /// (`gw-{i}`) and a `timeout_ms` generous for a loaded machine; each is
    /// waited for until it sees Redis up.
    pub async fn fleet_processes(
        &self,
        n: usize,
        redis_url: &str,
        toml: impl Fn(usize) -> GatewayToml,
    ) -> Vec<GatewayProcess> {
        let mut gws = Vec::with_capacity(n);
        for i in 0..n {
            let config = toml(i)
                .audit_path(&self.path(&format!("audit-{i}.jsonl")))
                .state_dir(&self.path(&format!("state-{i}")))
                .fleet("redis_url", redis_url)
                .fleet("instance", format!("gw-{i}"))
                .fleet("timeout_ms", 250);
            let path = self.path(&format!("gw-{i}.toml"));
            replace_file(&path, config.render());
            gws.push(GatewayProcess::start(&path, &[]));
        }
        for gw in &gws {
            let up = super::eventually(Duration::from_secs(5), || async {
                gw.metric("signgate_fleet_redis_up", &[]).await == 1.0
            })
            .await;
            assert!(up, "signgate_fleet_redis_up never 1:\n{}", gw.log_text());
        }
        gws
    }
}

impl Fixture {
    /// The stand-in on 127.0.0.1, its credential file written.
    pub async fn new() -> Fixture {
        Self::with_provider_on("127.0.0.1:0").await
    }

    /// The stand-in bound to `bind` (its certificate names only localhost
    /// and 127.0.0.1).
    pub async fn with_provider_on(bind: &str) -> Fixture {
        Self::with_provider(bind, Duration::from_secs(60)).await
    }

    /// The stand-in accepting timestamps within `tolerance` of its own
    /// clock (a gateway under a fake clock).
    pub async fn with_provider_tolerance(tolerance: Duration) -> Fixture {
        Self::with_provider("127.0.0.1:0", tolerance).await
    }

    async fn with_provider(bind: &str, tolerance: Duration) -> Fixture {
        let pki = pki();
        let provider = provider_with(&pki, bind, tolerance).await;
        let dir = tempfile::tempdir().unwrap();
        let cred_path = dir.path().join("kwikpaisa.json");
        write_cred(&cred_path, &provider.api_key, &provider.secret);
        Fixture {
            pki,
            provider,
            cred_path,
            dir,
        }
    }

    /// The stand-in's URL (`https://localhost:PORT`).
    pub fn upstream(&self) -> String {
        format!("https://localhost:{}", self.provider.standin.addr().port())
    }

    /// `name` in the fixture's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.path("audit.jsonl")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// Where [`Fixture::write_config`] writes.
    pub fn config_path(&self) -> PathBuf {
        self.path("gateway.toml")
    }

    /// A `file` credential at `path`, polled every 50 ms.
    pub fn file_credential(path: &Path) -> Credential {
        Credential::file(path).poll_ms(50)
    }

    /// The base configuration, its `kwikpaisa` route to the stand-in.
    pub fn config(&self) -> GatewayToml {
        self.config_to(&self.upstream())
    }

    /// The base configuration with the `kwikpaisa` route to `upstream`:
    /// loopback listener and admin on ports of their own choosing, a 4 KiB
    /// body limit, the audit log and state in the temp dir, loopback-only
    /// access, the fixture's CA as the only trusted one, short upstream
    /// timeouts (connect 1 s, request 1.5 s), and the credential file.
    pub fn config_to(&self, upstream: &str) -> GatewayToml {
        GatewayToml::new()
            .listener("addr", "127.0.0.1:0")
            .listener("max_body_bytes", 4096)
            .admin("addr", "127.0.0.1:0")
            .audit_path(&self.audit_path())
            .state_dir(&self.state_dir())
            .allow(["127.0.0.0/8", "::1/128"])
            .egress_ca(&self.pki.ca_path)
            .egress("connect_timeout_ms", 1000)
            .egress("request_timeout_ms", 1500)
            .credential("kwikpaisa", Self::file_credential(&self.cred_path))
            .route(Route::kwikpaisa(upstream))
    }

    /// The gateway in-process on `toml` (`signgate::start`).
    pub async fn gateway(&self, toml: &GatewayToml) -> signgate::Running {
        start_gateway(toml).await
    }

    /// Write `toml` to [`Fixture::config_path`] (atomically); the path.
    pub fn write_config(&self, toml: &GatewayToml) -> PathBuf {
        let path = self.config_path();
        replace_file(&path, toml.render());
        path
    }

    /// The real binary on `toml` (written to [`Fixture::config_path`]) with
    /// `env` added to its environment.
    pub fn process(&self, toml: &GatewayToml, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start(&self.write_config(toml), env)
    }

    /// The real binary on `toml` (written to [`Fixture::config_path`]),
    /// started as `launch` says (umask, user, environment, stderr).
    pub fn process_with(&self, toml: &GatewayToml, launch: &Launch) -> GatewayProcess {
        GatewayProcess::launch(&self.write_config(toml), launch)
    }
}

/// The gateway in-process on `toml`; panics with the validation errors.
pub async fn start_gateway(toml: &GatewayToml) -> signgate::Running {
    let config = toml
        .to_config()
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"));
    signgate::start(config).await.unwrap()
}

/// The `/metrics` text of an in-process gateway's admin listener.
pub async fn admin_metrics(gw: &signgate::Running) -> String {
    let admin = gw.admin_addr().expect("the admin listener is on");
    let r = TestClient::new().get(&format!("http://{admin}/metrics")).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The common case: a [`Fixture`] and the in-process gateway on its
/// configuration (as changed by the test). Derefs to the fixture.
pub struct Setup {
    pub fx: Fixture,
    pub gw: signgate::Running,
}

impl std::ops::Deref for Setup {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

impl Setup {
    /// The base configuration as it is.
    pub async fn new() -> Setup {
        Self::with(|c| c).await
    }

    /// The base configuration, changed by `edit`.
    pub async fn with(edit: impl FnOnce(GatewayToml) -> GatewayToml) -> Setup {
        let fx = Fixture::new().await;
        let toml = edit(fx.config());
        Self::on(fx, &toml).await
    }

    /// `toml` on `fx` (for a configuration that needs the fixture first).
    pub async fn on(fx: Fixture, toml: &GatewayToml) -> Setup {
        let gw = fx.gateway(toml).await;
        Setup { fx, gw }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.addr(), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.admin_addr().unwrap(), path)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        admin_metrics(&self.gw).await
    }
}

/// The `signgate` binary that [`GatewayProcess`] runs: this build's, or the
/// one `SIGNGATE_TEST_BINARY` names. The variable is for showing that a test
/// fails on another build (say, a release from before a fix):
/// `SIGNGATE_TEST_BINARY=/path/to/old/signgate cargo test --test integration money::`.
pub fn signgate_bin() -> PathBuf {
    match std::env::var_os("SIGNGATE_TEST_BINARY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_signgate")),
    }
}

/// How [`GatewayProcess::launch`] starts `signgate run --config <path>`.
/// The defaults are those of [`GatewayProcess::start`]: the listener and the
/// admin listener on `127.0.0.1:0` (the child picks the ports), `NO_COLOR=1`,
/// the test's own environment otherwise, stderr captured through a pipe.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    env: Vec<(String, String)>,
    unset: Vec<String>,
    umask: Option<String>,
    user: Option<u32>,
    stderr: Option<PathBuf>,
}

impl Launch {
    pub fn new() -> Launch {
        Launch::default()
    }

    /// Add `key=value` to the child's environment (after the defaults, so
    /// it may replace one).
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Each of `vars` added to the child's environment.
    pub fn envs(self, vars: &[(&str, &str)]) -> Launch {
        vars.iter().fold(self, |l, (k, v)| l.env(k, v))
    }

    /// Remove `key` from the environment the child inherits, a default
    /// included (`unset("NO_COLOR")`).
    pub fn unset(mut self, key: &str) -> Launch {
        self.unset.push(key.to_string());
        self
    }

    /// Run under this umask (`"022"`): through `sh -c 'umask U && exec
    /// signgate ...'`, so the gateway itself is the child (same pid).
    pub fn umask(mut self, umask: &str) -> Launch {
        self.umask = Some(umask.to_string());
        self
    }

    /// Run as this user id (and the same group id); needs root.
    pub fn user(mut self, uid: u32) -> Launch {
        self.user = Some(uid);
        self
    }

    /// Send stderr to this file (created here) instead of a pipe.
    pub fn stderr_to(mut self, path: &Path) -> Launch {
        self.stderr = Some(path.to_path_buf());
        self
    }
}

/// Where a child's stderr goes: lines read from a pipe, or a file.
enum Log {
    Pipe(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
    File(PathBuf),
}

/// A `signgate` child process, killed when dropped (even if the test fails).
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    log: Log,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// Start `signgate run --config <path>` with the listener and admin on
    /// ports the child picks itself (`127.0.0.1:0`, overridable through
    /// `env`), and wait until it reports listening; the addresses are read
    /// from that log line, so no port is picked here and then raced for.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        Self::launch(config, &Launch::new().envs(env))
    }

    /// Like [`GatewayProcess::start`], with the variables `unset` removed
    /// from the environment the child inherits.
    pub fn start_without(config: &Path, env: &[(&str, &str)], unset: &[&str]) -> GatewayProcess {
        let launch = unset.iter().fold(Launch::new(), |l, k| l.unset(k)).envs(env);
        Self::launch(config, &launch)
    }

    /// Start `signgate run --config <path>` as `launch` says, and wait until
    /// it reports listening (in the text or the JSON log format); panics
    /// with its log if it exits or stays silent for 20 s.
    pub fn launch(config: &Path, launch: &Launch) -> GatewayProcess {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt as _;
        let bin = signgate_bin();
        let mut cmd = match &launch.umask {
            Some(umask) => {
                let mut c = std::process::Command::new("/bin/sh");
                c.args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
                    .arg(&bin);
                c
            }
            None => std::process::Command::new(&bin),
        };
        cmd.args(["run", "--config"])
            .arg(config)
            .env("SIGNGATE__LISTENER__ADDR", "127.0.0.1:0")
            .env("SIGNGATE__ADMIN__ADDR", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        for k in &launch.unset {
            cmd.env_remove(k);
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        if let Some(uid) = launch.user {
            cmd.uid(uid).gid(uid);
        }
        let log = match &launch.stderr {
            Some(path) => {
                cmd.stderr(std::fs::File::create(path).unwrap());
                Log::File(path.clone())
            }
            None => {
                cmd.stderr(std::process::Stdio::piped());
                Log::Pipe(std::sync::Arc::new(std::sync::Mutex::new(Vec::new())))
            }
        };
        let mut child = cmd.spawn().unwrap();
        if let Log::Pipe(sink) = &log {
            let stderr = child.stderr.take().unwrap();
            let sink = sink.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut gw = GatewayProcess {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            if let Some(line) = gw.log_text().lines().find(|l| l.contains("signgate listening")) {
                break line.to_string();
            }
            if let Some(status) = gw.child.try_wait().unwrap() {
                // Let the pipe reader take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!("gateway exited ({status}):\n{}", gw.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not report listening:\n{}",
                gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (gw.addr, gw.admin) = listening_addrs(&line);
        gw
    }

    /// Everything the child wrote to stderr so far.
    pub fn log_text(&self) -> String {
        match &self.log {
            Log::Pipe(lines) => lines.lock().unwrap().join("\n"),
            Log::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    /// Wait (polling, so the runtime keeps going) until the log contains
    /// `needle`; panics with the log after `within`.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let found = super::eventually(within, || async { self.log_text().contains(needle) }).await;
        assert!(found, "no {needle:?} in the gateway's log:\n{}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait (polling, so the runtime keeps going) until the process exits;
    /// panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(started.elapsed() < within, "the gateway did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let r = TestClient::new().get(&self.admin_url("/metrics")).await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// The value of one series of `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics().await, name, labels)
    }
}

/// `addr` and `admin` of the "signgate listening" line, text
/// (`... signgate listening addr=127.0.0.1:P admin=Some(127.0.0.1:Q) ...`)
/// or JSON (`{"fields":{"addr":"127.0.0.1:P","admin":"Some(127.0.0.1:Q)",...}}`).
fn listening_addrs(line: &str) -> (SocketAddr, SocketAddr) {
    let (addr, admin) = match line.find('{') {
        Some(at) if line.trim_end().ends_with('}') => {
            let v: serde_json::Value = serde_json::from_str(&line[at..]).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            let field = |k: &str| {
                v["fields"][k]
                    .as_str()
                    .unwrap_or_else(|| panic!("no fields.{k} in {line:?}"))
                    .to_string()
            };
            (field("addr"), field("admin"))
        }
        _ => {
            let field = |prefix: &str| {
                let at = line.find(prefix).unwrap_or_else(|| panic!("no {prefix} in {line:?}"));
                line[at + prefix.len()..].split_whitespace().next().unwrap().to_string()
            };
            (field(" addr="), field(" admin="))
        }
    };
    let admin = admin.trim_start_matches("Some(").trim_end_matches(')');
    (
        addr.parse().unwrap_or_else(|e| panic!("addr in {line:?}: {e}")),
        admin.parse().unwrap_or_else(|e| panic!("admin in {line:?}: {e}")),
    )
}
