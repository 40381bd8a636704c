//! The hardening rig: the real `signgate` binary as a child process (so its
//! file descriptors, RSS and tasks can be measured on their own), the
//! provider stand-in over real TLS recomputing every signature, and the four
//! after-fault checks of `docs/security.md`:
//!
//! 1. a normal signed request still succeeds within its usual latency;
//! 2. open fds, runtime tasks and RSS return to baseline within one timeout
//!    period;
//! 3. the matching counter rose exactly as often as the fault was injected;
//! 4. nothing reached the provider that should not have.
//!
//! A scenario takes a [`Snapshot`] before injecting its fault, then calls
//! [`Rig::after_fault`] with what it expects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use signgate::devtools::standin::Verdict;

use crate::support::*;

/// The gateway binary on a [`Fixture`] (the genuine provider, its
/// credential, the temp dir), and what the after-fault checks need. Derefs
/// to the fixture.
pub struct Rig {
    pub gw: GatewayProcess,
    pub fx: Fixture,
    /// The configuration the gateway runs.
    pub toml: GatewayToml,
    /// Kept for probes and scrapes, so their pooled connections are part of
    /// the baseline rather than noise.
    pub client: TestClient,
    /// Median probe latency measured at start.
    pub usual_latency: Duration,
    /// Probes sent so far (each one reaches the provider once).
    probes: AtomicU64,
    /// Whether the listener serves TLS ([`Rig::tls_with`]): probes then go
    /// over TLS, on a new connection each.
    pub tls: bool,
}

impl std::ops::Deref for Rig {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

/// The probe's route prefix (`/kwikpaisa/` → the genuine provider).
pub const PROBE_PATH: &str = "/kwikpaisa/api/v3/pg/order/create";

static PROBES: AtomicU64 = AtomicU64::new(0);

/// A fresh order body with a unique `order_id`.
pub fn order_body() -> String {
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    format!(
        r#"{{"order_id":"ORD-{}-{n}","order_amount":"105.50","customer":{{"phone":"9816512345","name":"Ajay Kumar"}}}}"#,
        std::process::id()
    )
}

/// What the gateway process looked like at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub fds: usize,
    pub rss_kib: u64,
    pub threads: u64,
    pub tasks: f64,
    pub open_connections: f64,
    pub inflight: f64,
    /// Requests the provider has received so far.
    pub provider: usize,
    /// Probes sent so far (the provider legitimately received these).
    pub probes: u64,
    /// The whole `/metrics` text.
    pub metrics: String,
}

impl Snapshot {
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics, name, labels)
    }
}

/// One counter that must have moved by exactly `delta`.
pub struct CounterDelta {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub delta: f64,
}

/// What a scenario expects once its fault is over.
pub struct Expect {
    pub counters: Vec<CounterDelta>,
    /// Requests the fault itself legitimately delivered to the genuine
    /// provider, besides the rig's own probes (usually 0).
    pub provider: usize,
    /// One timeout period: how long resources get to return to baseline.
    pub within: Duration,
    /// Allowed excess over the baseline once settled (pooled upstream
    /// connections, for instance).
    pub fd_slack: usize,
    pub task_slack: f64,
    pub rss_slack_kib: u64,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            counters: Vec::new(),
            provider: 0,
            within: Duration::from_secs(6),
            fd_slack: 2,
            task_slack: 2.0,
            rss_slack_kib: 24 * 1024,
        }
    }
}

impl Expect {
    pub fn new() -> Self {
        Self::default()
    }
    /// `name{labels}` must rise by exactly `delta`.
    pub fn counter(mut self, name: &str, labels: &[(&str, &str)], delta: f64) -> Self {
        self.counters.push(CounterDelta {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            delta,
        });
        self
    }
    pub fn provider(mut self, n: usize) -> Self {
        self.provider = n;
        self
    }
    pub fn within(mut self, d: Duration) -> Self {
        self.within = d;
        self
    }
    pub fn fd_slack(mut self, n: usize) -> Self {
        self.fd_slack = n;
        self
    }
    pub fn task_slack(mut self, n: f64) -> Self {
        self.task_slack = n;
        self
    }
    pub fn rss_slack_kib(mut self, n: u64) -> Self {
        self.rss_slack_kib = n;
        self
    }
}

impl Rig {
    /// The rig's configuration on `fx`: the fixture's, with a 64 KiB body
    /// limit, short listener timers (header 1 s, body 2 s, idle 5 s, drain
    /// 2 s) and a 2 s request timeout. The listener and admin addresses are
    /// picked by the child ([`GatewayProcess::start`]).
    pub fn config(fx: &Fixture) -> GatewayToml {
        fx.config()
            .listener("max_body_bytes", 65536)
            .listener("header_timeout_ms", 1000)
            .listener("body_timeout_ms", 2000)
            .listener("idle_timeout_ms", 5000)
            .listener("drain_timeout_ms", 2000)
            .egress("request_timeout_ms", 2000)
    }

    /// The rig on its configuration as it is.
    pub async fn start() -> Rig {
        Self::with(|c| c).await
    }

    /// The rig on its configuration as `edit` changes it.
    pub async fn with(edit: impl FnOnce(GatewayToml) -> GatewayToml) -> Rig {
        Self::with_env(edit, &[]).await
    }

    /// Like [`Rig::with`], with `env` added to the child's environment.
    pub async fn with_env(edit: impl FnOnce(GatewayToml) -> GatewayToml, env: &[(&str, &str)]) -> Rig {
        let fx = Fixture::new().await;
        let toml = edit(Self::config(&fx));
        Self::on(fx, toml, env).await
    }

    /// The rig with a TLS listener (a certificate for localhost and
    /// 127.0.0.1 from the fixture's CA, `pki.ca_path`), on its configuration
    /// as `edit` changes it. Its probes go over TLS.
    pub async fn tls_with(edit: impl FnOnce(GatewayToml) -> GatewayToml) -> Rig {
        let fx = Fixture::new().await;
        let server = fx.pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
        let (cert, key) = (fx.path("listener.pem"), fx.path("listener-key.pem"));
        std::fs::write(&cert, &server.cert_pem).unwrap();
        std::fs::write(&key, &server.key_pem).unwrap();
        let toml = edit(Self::config(&fx).listener_tls(&cert, &key));
        Self::on(fx, toml, &[]).await
    }

    /// The rig on `toml` (made from [`Rig::config`] of `fx`, for scenarios
    /// whose configuration needs the fixture, e.g. its upstream).
    pub async fn on(fx: Fixture, toml: GatewayToml, env: &[(&str, &str)]) -> Rig {
        let gw = fx.process(&toml, env);
        let tls = toml.get("listener", "tls_cert").is_some();
        let mut rig = Rig {
            gw,
            fx,
            toml,
            client: TestClient::new(),
            usual_latency: Duration::ZERO,
            probes: AtomicU64::new(0),
            tls,
        };
        // Wait for the credential, then learn the usual latency (median of 5).
        assert!(
            eventually(Duration::from_secs(10), || async {
                rig.snapshot()
                    .await
                    .metric("signgate_credential_loaded", &[("credential", "kwikpaisa")])
                    == 1.0
            })
            .await,
            "credential never loaded"
        );
        let mut lat: Vec<Duration> = Vec::new();
        for _ in 0..5 {
            lat.push(rig.probe().await);
        }
        lat.sort();
        rig.usual_latency = lat[2];
        rig
    }

    pub fn pid(&self) -> u32 {
        self.gw.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        self.gw.admin_url(path)
    }

    /// `https://127.0.0.1:PORT` on a TLS rig, else `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.gw.addr)
    }

    /// A normal signed request through the gateway on the rig's pooled
    /// connection: it must succeed and the provider must have verified its
    /// signature over this very body. Returns its latency.
    pub async fn probe(&self) -> Duration {
        self.probe_with(&self.client).await
    }

    /// Like [`Rig::probe`], on a new connection (so the accept path, the
    /// connection limit and the listener's timers are exercised too).
    pub async fn probe_fresh(&self) -> Duration {
        self.probe_with(&TestClient::new()).await
    }

    async fn probe_with(&self, client: &TestClient) -> Duration {
        let before = self.provider.standin.records().await.len();
        self.probes.fetch_add(1, Ordering::SeqCst);
        let body = order_body();
        let t = Instant::now();
        let r = if self.tls {
            https_post(self.gw.addr, &self.fx.pki.ca, None, PROBE_PATH, &body)
                .await
                .unwrap_or_else(|e| panic!("probe over TLS failed: {e}"))
        } else {
            client.post(&self.url(PROBE_PATH), &body).await
        };
        let took = t.elapsed();
        assert_eq!(r.status, 200, "probe failed: {:?}", String::from_utf8_lossy(&r.body));
        let recs = self.provider.standin.records().await;
        assert_eq!(recs.len(), before + 1, "probe did not reach the provider exactly once");
        let rec = recs.last().unwrap();
        assert_eq!(rec.verdict, Verdict::Valid, "provider rejected the probe's signature");
        let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&rec.body).expect("provider got non-JSON");
        assert_eq!(got, sent, "the provider got another body than the probe's");
        took
    }

    pub async fn snapshot(&self) -> Snapshot {
        let r = self
            .client
            .send(Method::GET, &self.admin_url("/metrics"), &[], "")
            .await;
        assert_eq!(r.status, 200, "metrics scrape failed");
        let metrics = String::from_utf8(r.body.to_vec()).unwrap();
        let (rss_kib, threads) = proc_status(self.pid());
        Snapshot {
            fds: proc_fds(self.pid()),
            rss_kib,
            threads,
            tasks: metric(&metrics, "signgate_runtime_tasks", &[]),
            open_connections: metric(&metrics, "signgate_open_connections", &[]),
            inflight: metric(&metrics, "signgate_inflight_requests", &[]),
            provider: self.provider.standin.records().await.len(),
            probes: self.probes.load(Ordering::SeqCst),
            metrics,
        }
    }

    /// A baseline taken after a probe, so pooled connections exist already.
    pub async fn baseline(&self) -> Snapshot {
        self.probe().await;
        self.snapshot().await
    }

    /// The four after-fault checks against `before`. Returns the snapshot
    /// that satisfied them.
    pub async fn after_fault(&self, before: &Snapshot, e: Expect) -> Snapshot {
        assert!(self.alive(), "the gateway process died");
        // (iv) nothing extra reached the provider (checked before the probe adds one).
        let now = self.snapshot().await;
        let probes = usize::try_from(now.probes - before.probes).unwrap();
        assert_eq!(
            now.provider - before.provider - probes,
            e.provider,
            "the provider received {} request(s) during the fault besides {probes} probe(s); expected {}",
            now.provider - before.provider - probes,
            e.provider
        );
        // (iii) each counter moved exactly as often as the fault was injected.
        // Counters may be bumped when a timer fires, so give them the period.
        let deadline = Instant::now() + e.within;
        let mut snap = now;
        loop {
            let bad: Vec<String> = e
                .counters
                .iter()
                .filter_map(|c| {
                    let labels: Vec<(&str, &str)> = c.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let got = snap.metric(&c.name, &labels) - before.metric(&c.name, &labels);
                    (got != c.delta).then(|| format!("{}{:?}: rose by {got}, expected {}", c.name, c.labels, c.delta))
                })
                .collect();
            if bad.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "counters: {}", bad.join("; "));
            tokio::time::sleep(Duration::from_millis(100)).await;
            snap = self.snapshot().await;
        }
        // (ii) resources back to baseline within one timeout period.
        let deadline = Instant::now() + e.within;
        loop {
            let s = self.snapshot().await;
            let ok = s.fds <= before.fds + e.fd_slack
                && s.tasks <= before.tasks + e.task_slack
                && s.rss_kib <= before.rss_kib + e.rss_slack_kib
                && s.open_connections <= before.open_connections
                && s.inflight == 0.0;
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "resources did not return to baseline within {:?}: before fds={} tasks={} rss={} KiB conns={}; \
                 now fds={} tasks={} rss={} KiB conns={} inflight={}",
                e.within,
                before.fds,
                before.tasks,
                before.rss_kib,
                before.open_connections,
                s.fds,
                s.tasks,
                s.rss_kib,
                s.open_connections,
                s.inflight
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // (i) a normal signed request still succeeds within its usual latency,
        // on a new connection. The slack covers a loaded 2-core CI machine.
        let took = self.probe_fresh().await;
        let bound = self.usual_latency * 4 + Duration::from_millis(250);
        assert!(
            took <= bound,
            "probe took {took:?} after the fault; usual {:?}",
            self.usual_latency
        );
        self.snapshot().await
    }

    pub fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}/status", self.pid())).exists()
            && !proc_state(self.pid()).starts_with('Z')
    }
}

pub fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// (VmRSS in KiB, threads) of a process.
pub fn proc_status(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

fn proc_state(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("State:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Status code of the first response in raw HTTP/1 bytes, if any.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

// ---- Helpers for the A scenarios (hostile clients) ----

/// Write `pieces` one at a time (each flushed, with a yield between, so the
/// gateway sees split writes), then read until the peer closes or `within`
/// passes. A write error (the gateway closed early) stops the writing, not
/// the reading. `Ok(bytes)` when closed, `Err(bytes)` when still open.
pub async fn exchange(to: std::net::SocketAddr, pieces: &[&[u8]], within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    for p in pieces {
        if s.write_all(p).await.is_err() || s.flush().await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    read_until_closed(&mut s, within).await
}

/// Read one HTTP/1 response (head, and a body framed by Content-Length) from
/// `s` within `within`. Returns the bytes read, or what arrived by then.
pub async fn read_response(s: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return got;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return got,
        }
    }
}

/// Every status line in raw HTTP/1 bytes, in order.
pub fn statuses_of(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// CPU time (user + system) a process has used, in clock ticks (1/100 s).
pub fn proc_cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Samples a process's VmRSS every 10 ms on a thread, keeping the maximum.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(proc_status(pid).0);
                std::thread::sleep(Duration::from_millis(10));
            }
            max.max(proc_status(pid).0)
        });
        RssSampler { stop, handle }
    }

    /// Stop sampling; the highest VmRSS seen, in KiB.
    pub fn max_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}
