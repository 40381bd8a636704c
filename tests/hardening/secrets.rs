//! C. Secrets (Vault / OpenBao).
//!
//! A real OpenBao dev server (`tests/support/vault.rs`) serves the secret of an
//! extra credential and route added to the rig (see [`vault_rig`]); the probe
//! keeps using its file credential, so every test also checks that the
//! gateway serves others while the vault-backed route fails. Faults a real
//! OpenBao cannot produce on demand (500s, 10 s answers, failing renewals)
//! come from [`FaultProxy`], a loopback HTTP proxy in front of the real
//! server that forwards everything else to it and counts what it sees.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use signgate::devtools::standin::Verdict;
use signgate::secrets::SecretBytes;
use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::support::vault::{token_credential, write_token, Bao};
use crate::support::*;

/// A path below the vault-backed route of credential `name` (see [`vault_rig`]).
fn vpath(name: &str) -> String {
    format!("/{name}/api/v3/pg/order/create")
}

/// The rig plus, for each `(name, credential)`, `[credentials.NAME]` and a
/// route `NAME` on `/NAME/` signing with it, to the same genuine provider as
/// the probe's route; `edit` changes the rest.
async fn vault_rig(edit: impl FnOnce(GatewayToml) -> GatewayToml, creds: Vec<(&str, Credential)>) -> Rig {
    let fx = Fixture::new().await;
    let mut toml = edit(Rig::config(&fx));
    for (name, cred) in creds {
        toml = toml
            .credential(name, cred)
            .route(Route::to(name, &fx.upstream()).credential(name));
    }
    Rig::on(fx, toml, &[]).await
}

/// A new provider key pair, accepted by the rig's provider from now on.
fn accepted_pair(rig: &Rig) -> (String, String) {
    let (k, s) = (random_token("pk_test_", 24), random_token("sk_test_", 32));
    rig.provider.standin.accept(&k, SecretBytes::from(s.clone()));
    (k, s)
}

/// A pair the provider accepts, written at `path` in Vault, once credential
/// `vaultcred` has loaded it.
async fn load_new_pair(rig: &Rig, bao: &Bao, path: &str) -> (String, String) {
    let pair = accepted_pair(rig);
    bao.put_pair(path, &pair).await;
    wait_for(Duration::from_secs(8), "the credential never loaded", || async {
        loaded(rig, "vaultcred").await == 1.0
    })
    .await;
    pair
}

async fn post_to(rig: &Rig, name: &str) -> Reply {
    rig.client.post(&rig.url(&vpath(name)), &order_body()).await
}

async fn loaded(rig: &Rig, name: &str) -> f64 {
    rig.snapshot()
        .await
        .metric("signgate_credential_loaded", &[("credential", name)])
}

async fn refresh_count(rig: &Rig, name: &str, result: &str) -> f64 {
    rig.snapshot().await.metric(
        "signgate_credential_refresh_total",
        &[("credential", name), ("result", result)],
    )
}

/// `(status, body)` of `GET /readyz`.
async fn readyz(rig: &Rig) -> (u16, serde_json::Value) {
    let r = rig
        .client
        .send(http::Method::GET, &rig.admin_url("/readyz"), &[], "")
        .await;
    (r.status.as_u16(), r.json())
}

/// The readiness problem reported for credential `name`, if any.
async fn ready_detail(rig: &Rig, name: &str) -> Option<String> {
    let (_, body) = readyz(rig).await;
    body["missing"].as_array().and_then(|m| {
        m.iter()
            .find(|p| p["credential"] == name)
            .map(|p| p["detail"].as_str().unwrap_or_default().to_string())
    })
}

/// Log lines of the gateway that contain every one of `needles`.
fn log_lines(rig: &Rig, needles: &[&str]) -> usize {
    rig.gw
        .log_text()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Waits until `cond` holds, polling every 20 ms; panics with `what`.
async fn wait_for<F, Fut>(within: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(eventually(within, cond).await, "{what} (not within {within:?})");
}

/// What [`FaultProxy`] does with a request whose path contains its filter.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Forward to the real server.
    Pass,
    /// Answer this status with a Vault-style error body.
    Status(u16),
    /// Hold the request this long, then forward it.
    Delay(Duration),
}

/// One request seen by the proxy.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    status: u16,
}

#[derive(Default)]
struct ProxyState {
    /// (path filter, fault); `None` filter: every path.
    fault: Mutex<Option<(Option<String>, Fault)>>,
    seen: Mutex<Vec<Seen>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    /// Paths in flight now, and every moment more than one was.
    current: Mutex<Vec<String>>,
    overlaps: Mutex<Vec<Vec<String>>>,
}

/// A loopback HTTP proxy in front of a real OpenBao.
struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultProxy {
    /// On its own thread and runtime: the rig blocks the test's thread
    /// while the gateway starts, and the proxy must answer meanwhile.
    async fn start(target: u16) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        let stop = CancellationToken::new();
        let (st, stp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
                loop {
                    let (s, _) = tokio::select! {
                        _ = stp.cancelled() => return,
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    };
                    let (st, client, stp) = (st.clone(), client.clone(), stp.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (st, client) = (st.clone(), client.clone());
                            async move { Ok::<_, Infallible>(proxy_one(&st, &client, target, req).await) }
                        });
                        tokio::select! {
                            _ = stp.cancelled() => {}
                            _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc) => {}
                        }
                    });
                }
            });
        });
        FaultProxy { addr, state, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Apply `fault` to requests whose path contains `filter` (all if `None`).
    fn set(&self, filter: Option<&str>, fault: Fault) {
        *self.state.fault.lock().unwrap() = Some((filter.map(String::from), fault));
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }
}

async fn proxy_one(
    st: &ProxyState,
    client: &Client<HttpConnector, Full<Bytes>>,
    target: u16,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let now = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_inflight.fetch_max(now, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    {
        let mut cur = st.current.lock().unwrap();
        cur.push(path.clone());
        if cur.len() > 1 {
            st.overlaps.lock().unwrap().push(cur.clone());
        }
    }
    let fault = match &*st.fault.lock().unwrap() {
        Some((Some(f), fault)) if path.contains(f.as_str()) => *fault,
        Some((None, fault)) => *fault,
        _ => Fault::Pass,
    };
    let resp = match fault {
        Fault::Status(code) => Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                r#"{"errors":["injected by the test's fault proxy"]}"#,
            )))
            .unwrap(),
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            forward(client, target, req).await
        }
        Fault::Pass => forward(client, target, req).await,
    };
    st.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        status: resp.status().as_u16(),
    });
    st.inflight.fetch_sub(1, Ordering::SeqCst);
    let mut cur = st.current.lock().unwrap();
    if let Some(i) = cur.iter().position(|p| *p == path) {
        cur.remove(i);
    }
    drop(cur);
    resp
}

async fn forward(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: u16,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    parts.uri = format!("http://127.0.0.1:{target}{pq}").parse().unwrap();
    parts.headers.remove(http::header::HOST);
    match client.request(Request::from_parts(parts, Full::new(body))).await {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(_) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    }
}

/// A Vault that is down: a loopback listener that reads each request head,
/// records its token (which tells the credentials apart) and the moment it
/// arrived (taken here, where the
/// attempt happens, not by a poll loop), and closes the connection without
/// a byte, so the gateway sees `cannot reach Vault`. Stopped (and its port
/// freed for the real server) by [`DownVault::stop`].
struct DownVault {
    port: u16,
    attempts: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DownVault {
    fn start() -> DownVault {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (att, stp) = (attempts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                let at = Instant::now();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let token = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("x-vault-token").then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                att.lock().unwrap().push((token, at));
            }
        });
        DownVault {
            port,
            attempts,
            stop,
            thread: Some(thread),
        }
    }

    /// Arrival times of the requests carrying `token`.
    fn times(&self, token: &str) -> Vec<Instant> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == token)
            .map(|(_, at)| *at)
            .collect()
    }

    fn tokens(&self) -> Vec<String> {
        self.attempts.lock().unwrap().iter().map(|(t, _)| t.clone()).collect()
    }

    /// Stop accepting and close the listener (its port is free on return).
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for DownVault {
    fn drop(&mut self) {
        self.stop();
    }
}

/// C1 Vault down at start: the gateway starts anyway, `/readyz` is 503
/// naming the credential and why, its route answers 503
/// `credential_unavailable` and forwards nothing unsigned, refreshes back off
/// (1 s then 2 s, ± 20 % jitter: each gap inside its jittered band, and
/// growing), and once OpenBao comes up the credential loads by itself.
/// The attempt times are taken by the down Vault itself ([`DownVault`]) as
/// each request arrives. Jitter: three credentials fail from the same start;
/// without jitter their k-th gaps would agree to scheduling noise (a few
/// ms), with ± 20 % they differ: the test asserts that for some k the gaps
/// spread over ≥ 50 ms (a jittering gateway misses that with probability
/// ≈ 0.1 %: uniform ± 200 ms and ± 400 ms bands, three draws each).
/// After-fault: the denied counter rose once per refused request, the
/// provider got only the requests signed after recovery.
#[tokio::test]
async fn c01_vault_down_at_start_is_not_ready_and_refuses_unsigned() {
    let mut down = DownVault::start();
    let port = down.port;
    let root = random_token("root-", 20);
    let tokdir = tempfile::tempdir().unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    // refresh_secs = 4: failed refreshes back off 1 s, 2 s, then 4 s (± 20 %).
    // Each credential its own token (root, and two created with these ids
    // once OpenBao is up), so the down Vault tells their calls apart.
    let names = ["vaultcred", "vaultcred2", "vaultcred3"];
    let tokens = [root.clone(), random_token("tok-", 20), random_token("tok-", 20)];
    let token_files: Vec<std::path::PathBuf> = (0..3).map(|i| tokdir.path().join(format!("token{i}"))).collect();
    let creds: Vec<(&str, Credential)> = (0..3)
        .map(|i| {
            write_token(&token_files[i], &tokens[i]);
            (
                names[i],
                token_credential(&addr, "kp/c1", &token_files[i]).refresh_secs(4),
            )
        })
        .collect();
    let rig = vault_rig(|c| c, creds).await;
    let before = rig.baseline().await;

    let (status, body) = readyz(&rig).await;
    assert_eq!(status, 503, "not ready while a credential is missing: {body}");
    let detail = ready_detail(&rig, "vaultcred")
        .await
        .expect("readyz names the credential");
    assert!(detail.contains(&format!("cannot reach Vault at {addr}/")), "{detail}");
    assert!(
        refresh_count(&rig, "vaultcred", "error").await >= 1.0,
        "the start-up poll failed and was counted"
    );

    let mut refused = 0u32;
    for _ in 0..5 {
        let r = post_to(&rig, "vaultcred").await;
        assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "credential_unavailable"));
        refused += 1;
    }
    // The start-up poll and two retries (1 s, 2 s: ≈ 3.6 s at most) for each.
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokens.iter().all(|t| down.times(t).len() >= 3)
        })
        .await,
        "fewer than 3 attempts per credential in 10 s: {:?}",
        tokens.iter().map(|t| down.times(t).len()).collect::<Vec<_>>()
    );
    let mut all_gaps: Vec<Vec<Duration>> = Vec::new();
    for (p, t) in names.iter().zip(&tokens) {
        let times = down.times(t);
        let gaps: Vec<Duration> = times.windows(2).take(2).map(|w| w[1] - w[0]).collect();
        for (k, gap) in gaps.iter().enumerate() {
            let nominal = Duration::from_secs(1 << k); // after failure k+1: 1 s, 2 s
                                                       // The jittered band (± 20 %); times are taken where the request
                                                       // arrives, so the slack is only the gateway's timer and our
                                                       // accept thread being scheduled late on a loaded machine
                                                       // (mostly positive: 50 ms below, 300 ms above).
            assert!(
                *gap >= nominal.mul_f64(0.8) - Duration::from_millis(50)
                    && *gap <= nominal.mul_f64(1.2) + Duration::from_millis(300),
                "{p}: gap after failure {} was {gap:?}; expected {nominal:?} ± 20 %: {gaps:?}",
                k + 1
            );
        }
        assert!(gaps[1] > gaps[0], "{p}: the backoff does not grow: {gaps:?}");
        all_gaps.push(gaps);
    }
    let spread = |k: usize| {
        let g: Vec<Duration> = all_gaps.iter().map(|g| g[k]).collect();
        *g.iter().max().unwrap() - *g.iter().min().unwrap()
    };
    assert!(
        spread(0).max(spread(1)) >= Duration::from_millis(50),
        "no jitter: the three credentials' gaps agree: {all_gaps:?}"
    );
    assert!(
        down.tokens().iter().all(|t| tokens.contains(t)),
        "calls at Vault without a credential's token"
    );
    assert!(
        rig.provider.standin.records().await.len() == before.provider,
        "nothing unsigned was forwarded"
    );

    // OpenBao comes up on the same port (freed just before): the
    // credentials load without help (the next retry is ≤ 4.8 s away).
    down.stop();
    let bao = Bao::start_on(port, &root).await;
    let pair = accepted_pair(&rig);
    for t in &tokens[1..] {
        bao.cli(&["token", "create", &format!("-id={t}"), "-ttl=1h"]).await;
    }
    bao.put_pair("kp/c1", &pair).await;
    for name in names {
        wait_for(Duration::from_secs(10), "a credential never loaded", || async {
            loaded(&rig, name).await == 1.0
        })
        .await;
    }
    assert_eq!(readyz(&rig).await.0, 200, "ready once the credential loaded");
    let r = post_to(&rig, "vaultcred").await;
    assert_eq!(r.status, 200);
    let rec = rig.provider.standin.records().await.pop().unwrap();
    assert_eq!(rec.verdict, Verdict::Valid);
    assert_eq!(rec.headers["x-api-key"], pair.0.as_str());
    assert!(
        !rig.gw.log_text().contains(&pair.1) && !rig.gw.log_text().contains(&root),
        "a secret was logged"
    );
    // The baseline was taken with no credential loaded; each of the three
    // now keeps one pooled keep-alive connection to OpenBao (1 fd, ≈ 2
    // tasks). The default slack covers one; add the two extra credentials'.
    rig.after_fault(
        &before,
        Expect::new()
            .fd_slack(2 + 2)
            .task_slack(2.0 + 2.0 * 2.0)
            .counter(
                "signgate_denied_total",
                &[("route", "vaultcred"), ("reason", "credential_unavailable")],
                f64::from(refused),
            )
            .provider(1),
    )
    .await;
}

/// C2 Vault down after start: the last good secret keeps signing for up to
/// `vault_max_stale_secs` (counted from the last good read), then the route
/// fails closed with 503 `credential_unavailable` naming the key; the state
/// shows in `signgate_credential_loaded` (1 → 0 → 1) and in exactly one log
/// line per state change (refresh failing, expired, loaded again), not one
/// per failed poll. After-fault: one denial per refused request; the
/// provider got exactly the requests signed with the last good secret.
#[tokio::test]
async fn c02_vault_down_after_start_keeps_last_good_then_fails_closed() {
    let mut bao = Bao::start().await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let cred = token_credential(&bao.addr(), "kp/c2", &token_file).vault_max_stale_secs(3);
    let rig = vault_rig(|c| c, vec![("vaultcred", cred)]).await;
    let pair = load_new_pair(&rig, &bao, "kp/c2").await;
    let before = rig.baseline().await;
    let errors_before = refresh_count(&rig, "vaultcred", "error").await;

    // Kill OpenBao right after a successful refresh, and take that moment as
    // the last good read: the max age counts from it. The counter is scraped
    // every 20 ms, so the real read was at most a scrape (tens of ms, more
    // on a loaded machine) before `last_ok`.
    let oks = refresh_count(&rig, "vaultcred", "ok").await;
    wait_for(Duration::from_secs(5), "no successful refresh", || async {
        refresh_count(&rig, "vaultcred", "ok").await > oks
    })
    .await;
    let last_ok = Instant::now();
    bao.kill();
    let killed = Instant::now();
    let mut signed = 0usize;
    let mut refused = 0u32;
    let closed_after = loop {
        let r = post_to(&rig, "vaultcred").await;
        match r.status.as_u16() {
            200 => signed += 1,
            503 => {
                assert_eq!(r.code(), "credential_unavailable");
                let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
                assert!(
                    msg.contains("vault_max_stale_secs") && msg.contains("cannot reach Vault"),
                    "{msg}"
                );
                refused += 1;
                break killed.elapsed();
            }
            s => panic!("unexpected status {s} while Vault is down"),
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "never failed closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let closed_after_ok = last_ok.elapsed();
    // Max age 3 s from the last good read: the refresh task wakes when it is
    // reached (whatever its backoff), its poll fails at once (refused), and
    // the slot expires. Lower bound: the read was up to a scrape before
    // `last_ok` (0.5 s allowed). Upper bound max age + 1 s: our 100 ms
    // request cadence, one request round trip and scheduling on a loaded
    // 2-core machine; a gateway that expires only on its next backoff poll
    // (≈ 4.3 s here) fails it.
    assert!(signed >= 5, "the last good secret signed only {signed} requests");
    assert!(
        closed_after_ok >= Duration::from_millis(2_500) && closed_after_ok <= Duration::from_millis(4_000),
        "failed closed {closed_after_ok:?} after the last good read ({closed_after:?} after the kill); max age 3 s"
    );
    assert_eq!(
        loaded(&rig, "vaultcred").await,
        0.0,
        "the loaded gauge shows the expiry"
    );
    for _ in 0..3 {
        assert_eq!(post_to(&rig, "vaultcred").await.status, 503);
        refused += 1;
    }
    let failed_polls = refresh_count(&rig, "vaultcred", "error").await - errors_before;
    assert!(failed_polls >= 3.0, "{failed_polls} failed polls");

    bao.restart().await;
    bao.put_pair("kp/c2", &pair).await;
    wait_for(Duration::from_secs(8), "the credential never came back", || async {
        loaded(&rig, "vaultcred").await == 1.0
    })
    .await;
    assert_eq!(post_to(&rig, "vaultcred").await.status, 200);
    signed += 1;
    // One line per state change, however many polls failed.
    assert_eq!(
        log_lines(
            &rig,
            &[
                "credential refresh failed; still signing with the last good version",
                "vaultcred"
            ]
        ),
        1,
        "{}",
        rig.gw.log_text()
    );
    assert_eq!(
        log_lines(&rig, &["credential expired", "vaultcred", "vault_max_stale_secs"]),
        1
    );
    // The gauge moves before the log writer has flushed the line (a CI run
    // on a loaded machine read the log in between): wait for it, then
    // require exactly two.
    wait_for(Duration::from_secs(5), "no log line for the recovery", || async {
        log_lines(&rig, &["credential loaded", "vaultcred"]) >= 2
    })
    .await;
    assert_eq!(
        log_lines(&rig, &["credential loaded", "vaultcred"]),
        2,
        "first load and recovery"
    );
    assert!(!rig.gw.log_text().contains(&pair.1), "the secret was logged");
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_denied_total",
                &[("route", "vaultcred"), ("reason", "credential_unavailable")],
                f64::from(refused),
            )
            .provider(signed),
    )
    .await;
}

/// C3 OpenBao answering 500, answering after 10 s, revoking the AppRole
/// token, then sealed (503); and a token-auth credential whose token is
/// revoked. Every refresh is bounded by its `vault_timeout_ms` budget (1.5 s
/// here: a 10 s answer is abandoned at 1.5 s, counted and logged), AppRole logs in again after
/// the 403 without a failed refresh, token auth reports a clear reason
/// naming the token file, and through all of it the last good secrets keep
/// signing. After-fault: no request was refused, the provider got exactly
/// the signed ones.
#[tokio::test]
async fn c03_sealed_500_slow_and_revoked_are_bounded_and_clear() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    bao.read_policy("kp", "kp/c3").await;
    let role = bao.approle("c3", "kp", "1h", "2h").await;
    let t1 = bao.child_token("kp", "1h").await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &t1);
    let creds = vec![
        (
            "approle",
            bao.approle_credential(&proxy.url(), "kp/c3", &role)
                .vault_timeout_ms(1500),
        ),
        (
            "tokencred",
            token_credential(&proxy.url(), "kp/c3", &token_file).vault_timeout_ms(1500),
        ),
    ];
    let rig = vault_rig(|c| c, creds).await;
    let pair = accepted_pair(&rig);
    bao.put_pair("kp/c3", &pair).await;
    for name in ["approle", "tokencred"] {
        wait_for(Duration::from_secs(8), "a credential never loaded", || async {
            loaded(&rig, name).await == 1.0
        })
        .await;
    }
    let before = rig.baseline().await;
    let mut signed = 0usize;
    let both_sign = || async {
        for name in ["approle", "tokencred"] {
            let r = post_to(&rig, name).await;
            assert_eq!(r.status, 200, "{name}: the last good secret must keep signing");
        }
    };

    // 500s: counted as failed refreshes, reason in the log once.
    let errs = refresh_count(&rig, "approle", "error").await;
    proxy.set(None, Fault::Status(500));
    wait_for(Duration::from_secs(5), "500s not counted", || async {
        refresh_count(&rig, "approle", "error").await >= errs + 2.0
    })
    .await;
    assert_eq!(
        log_lines(&rig, &["answered 500 while", "approle"]),
        1,
        "{}",
        rig.gw.log_text()
    );
    both_sign().await;
    signed += 2;

    // 10 s answers: each refresh gives up at its 1.5 s budget (the next
    // refresh starts within the 1 s ± 20 % backoff).
    proxy.set(None, Fault::Delay(Duration::from_secs(10)));
    let slow_from = Instant::now();
    let budget_lines = log_lines(
        &rig,
        &[
            "did not answer within the 1.5 s refresh budget (vault_timeout_ms)",
            "approle",
        ],
    );
    wait_for(
        Duration::from_secs(4),
        "a 10 s answer was not abandoned at the budget",
        || async {
            log_lines(
                &rig,
                &[
                    "did not answer within the 1.5 s refresh budget (vault_timeout_ms)",
                    "approle",
                ],
            ) == budget_lines + 1
        },
    )
    .await;
    assert!(
        slow_from.elapsed() >= Duration::from_millis(1_200),
        "gave up after {:?}, before the budget: {}",
        slow_from.elapsed(),
        rig.gw.log_text()
    );
    both_sign().await;
    signed += 2;

    // Back to normal, then the tokens are revoked behind the gateway's back.
    proxy.set(None, Fault::Pass);
    wait_for(Duration::from_secs(8), "no recovery after the slow phase", || async {
        log_lines(&rig, &["credential source healthy again", "approle"]) >= 1
    })
    .await;
    let approle_errors = refresh_count(&rig, "approle", "error").await;
    bao.revoke_approle_tokens().await;
    bao.revoke(&t1).await;
    let expected = format!("token rejected (403): provide a new token in {}", token_file.display());
    wait_for(Duration::from_secs(5), "token auth gave no clear reason", || async {
        log_lines(&rig, &[&expected, "tokencred"]) == 1
    })
    .await;
    wait_for(Duration::from_secs(5), "AppRole did not log in again", || async {
        log_lines(
            &rig,
            &["vault token rejected (403); logging in again with AppRole", "approle"],
        ) >= 1
    })
    .await;
    // A new version is only visible to a token that can read: AppRole's fresh one.
    let pair2 = accepted_pair(&rig);
    bao.put_pair("kp/c3", &pair2).await;
    let sent = AtomicUsize::new(0);
    wait_for(
        Duration::from_secs(5),
        "AppRole did not read with its new token",
        || async {
            let r = post_to(&rig, "approle").await;
            assert_eq!(r.status, 200, "the last good secret must keep signing");
            sent.fetch_add(1, Ordering::SeqCst);
            rig.provider.standin.records().await.pop().unwrap().headers["x-api-key"] == pair2.0.as_str()
        },
    )
    .await;
    signed += sent.load(Ordering::SeqCst);
    assert_eq!(
        refresh_count(&rig, "approle", "error").await,
        approle_errors,
        "the AppRole re-login happened within the refresh"
    );
    both_sign().await;
    signed += 2;

    // Sealed: 503 from the real server, the reason says so.
    bao.seal().await;
    wait_for(Duration::from_secs(5), "sealed not reported", || async {
        log_lines(&rig, &["sealed or unavailable (503", "approle"]) == 1
    })
    .await;
    both_sign().await;
    signed += 2;
    assert!(rig.alive());
    assert!(
        !rig.gw.log_text().contains(&pair.1) && !rig.gw.log_text().contains(&t1),
        "a secret was logged"
    );
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_denied_total",
                &[("route", "approle"), ("reason", "credential_unavailable")],
                0.0,
            )
            .counter(
                "signgate_denied_total",
                &[("route", "tokencred"), ("reason", "credential_unavailable")],
                0.0,
            )
            .provider(signed),
    )
    .await;
}

/// Requests at the proxy whose path contains `part` and answered `status`.
fn count_seen(proxy: &FaultProxy, part: &str, status: u16) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| s.path.contains(part) && s.status == status)
        .count()
}

/// C4 AppRole token with a 3 s TTL capped at 6 s: the gateway renews it,
/// logs in again when the max TTL caps a renewal, and when renewals fail
/// (the proxy answers 500 to `renew-self`) it logs in again before the
/// token expires: no read is ever refused (no 403 at the proxy), no refresh
/// fails, and the route signs throughout. After-fault: nothing refused, the
/// provider got exactly the signed requests.
#[tokio::test]
async fn c04_token_renewal_failure_and_max_ttl_relogin_before_expiry() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    bao.read_policy("kp", "kp/c4").await;
    let role = bao.approle("c4", "kp", "3s", "6s").await;
    let cred = bao.approle_credential(&proxy.url(), "kp/c4", &role);
    let rig = vault_rig(|c| c, vec![("vaultcred", cred)]).await;
    load_new_pair(&rig, &bao, "kp/c4").await;
    let before = rig.baseline().await;
    let errors = refresh_count(&rig, "vaultcred", "error").await;
    let signed = AtomicUsize::new(0);
    let sign = || async {
        let r = post_to(&rig, "vaultcred").await;
        assert_eq!(
            r.status, 200,
            "a request failed while the token was cycled: {:?}",
            r.body
        );
        signed.fetch_add(1, Ordering::SeqCst);
    };

    // Renewal at 2/3 of the TTL, then the 6 s cap forces a fresh login.
    let logins0 = count_seen(&proxy, "auth/approle/login", 200);
    wait_for(
        Duration::from_secs(10),
        "no renewal then re-login at the max TTL",
        || async {
            sign().await;
            count_seen(&proxy, "renew-self", 200) >= 1 && count_seen(&proxy, "auth/approle/login", 200) > logins0
        },
    )
    .await;

    // Renewals fail: the token must be replaced by a login before it dies.
    proxy.set(Some("renew-self"), Fault::Status(500));
    let logins1 = count_seen(&proxy, "auth/approle/login", 200);
    wait_for(Duration::from_secs(8), "no re-login after failed renewals", || async {
        sign().await;
        count_seen(&proxy, "renew-self", 500) >= 1 && count_seen(&proxy, "auth/approle/login", 200) > logins1
    })
    .await;
    // One more full TTL on the new token, renewals still failing.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        sign().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count_seen(&proxy, "kp/c4", 403),
        0,
        "a read was refused: a token lapsed"
    );
    assert_eq!(
        refresh_count(&rig, "vaultcred", "error").await,
        errors,
        "a refresh failed"
    );
    assert_eq!(
        log_lines(&rig, &["rejected (403)"]),
        0,
        "re-login was proactive, not after a 403"
    );
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_denied_total",
                &[("route", "vaultcred"), ("reason", "credential_unavailable")],
                0.0,
            )
            .provider(signed.load(Ordering::SeqCst)),
    )
    .await;
}

/// C5 rotation under load: four clients post continuously while a new KV
/// version (a new key pair the provider accepts) is written; the new pair is
/// in use within `refresh_secs` (1 s + 10 %) plus 1.4 s slack, not one
/// request fails, every signature verifies, and the last requests all use
/// the new pair. After-fault: nothing refused, the provider got exactly the
/// requests sent.
#[tokio::test]
async fn c05_rotation_under_load_fails_nothing_and_switches_in_time() {
    let bao = Bao::start().await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let cred = token_credential(&bao.addr(), "kp/c5", &token_file);
    // One idle upstream connection kept: the workers' extra ones close, so
    // the fds return to the baseline.
    let rig = vault_rig(|c| c.egress("pool_idle_per_host", 1), vec![("vaultcred", cred)]).await;
    load_new_pair(&rig, &bao, "kp/c5").await;
    let before = rig.baseline().await;

    let stop = Arc::new(AtomicBool::new(false));
    let url = rig.url(&vpath("vaultcred"));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.clone());
            tokio::spawn(async move {
                let c = TestClient::new();
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(c.post(&url, &order_body()).await.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let standin = &rig.provider.standin;
    let n0 = before.provider;
    wait_for(Duration::from_secs(5), "no load", || async {
        standin.records().await.len() > n0 + 20
    })
    .await;

    let pair2 = accepted_pair(&rig);
    // Timed from when the write returned: the `bao` CLI's start-up (slow on
    // a loaded machine) is not the gateway's time to switch.
    bao.put_pair("kp/c5", &pair2).await;
    let put_at = Instant::now();
    let seen_new = || async {
        standin
            .records()
            .await
            .iter()
            .any(|r| r.headers["x-api-key"] == pair2.0.as_str())
    };
    wait_for(Duration::from_secs(5), "the new version was never used", seen_new).await;
    let switched_after = put_at.elapsed();
    assert!(
        switched_after < Duration::from_millis(2_500),
        "switched after {switched_after:?}"
    );
    let n1 = standin.records().await.len();
    wait_for(Duration::from_secs(5), "load stopped", || async {
        standin.records().await.len() > n1 + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for w in workers {
        let statuses = w.await.unwrap();
        sent += statuses.len();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "a request failed during rotation: {statuses:?}"
        );
    }
    let records = standin.records().await;
    assert!(
        records[n0..].iter().all(|r| r.verdict == Verdict::Valid),
        "a signature did not verify"
    );
    assert!(records[records.len() - 10..]
        .iter()
        .all(|r| r.headers["x-api-key"] == pair2.0.as_str()));
    assert!(sent > 40, "only {sent} requests under load");
    assert!(!rig.gw.log_text().contains(&pair2.1), "the secret was logged");
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_denied_total",
                &[("route", "vaultcred"), ("reason", "credential_unavailable")],
                0.0,
            )
            .provider(sent),
    )
    .await;
}

/// C6 unusable secrets: a path with no secret, a secret whose field is a
/// JSON number, a secret key shorter than 16 bytes (`MIN_SECRET_LEN`), and a
/// working credential rotated to a too-short version. The first three answer
/// 503 `credential_unavailable` whose message says why, `/readyz` lists each
/// with the same reason, the log has one line each; the rotated one keeps
/// signing with its last good version and logs why the new one was refused.
/// No panic. After-fault: one denial per refused request; the provider got
/// only the good credential's requests.
#[tokio::test]
async fn c06_missing_wrong_type_and_short_secrets_are_refused_with_a_reason() {
    let bao = Bao::start().await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let json = bao.dir().join("wrongtype.json");
    std::fs::write(
        &json,
        r#"{"api_key":"pk_test_wrongtype","secret_key":1234567890123456789}"#,
    )
    .unwrap();
    bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "kp/wrongtype",
        &format!("@{}", json.display()),
    ])
    .await;
    bao.kv_put(
        "kp/short",
        &[("api_key", "pk_test_short"), ("secret_key", "only-12bytes")],
    )
    .await;
    let a = bao.addr();
    let creds = vec![
        ("missing", token_credential(&a, "kp/none", &token_file)),
        ("wrongtype", token_credential(&a, "kp/wrongtype", &token_file)),
        ("short", token_credential(&a, "kp/short", &token_file)),
        ("goodcred", token_credential(&a, "kp/good", &token_file)),
    ];
    let rig = vault_rig(|c| c, creds).await;
    let pair = accepted_pair(&rig);
    bao.put_pair("kp/good", &pair).await;
    wait_for(Duration::from_secs(8), "the good credential never loaded", || async {
        loaded(&rig, "goodcred").await == 1.0
    })
    .await;
    let before = rig.baseline().await;

    let reasons = [
        ("missing", "no secret at secret/kp/none"),
        ("wrongtype", "field secret_key is not a string"),
        ("short", "the secret key is too short (12 bytes; at least 16 expected)"),
    ];
    for (name, why) in reasons {
        let r = post_to(&rig, name).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (503, "credential_unavailable"),
            "{name}"
        );
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(why), "{name}: {msg}");
        let detail = ready_detail(&rig, name).await.unwrap_or_default();
        assert!(detail.contains(why), "{name}: readyz says {detail:?}");
        assert_eq!(log_lines(&rig, &["credential unavailable", name, why]), 1, "{name}");
    }
    assert_eq!(readyz(&rig).await.0, 503);

    // A bad new version does not replace the good one.
    bao.kv_put("kp/good", &[("api_key", &pair.0), ("secret_key", "tiny")])
        .await;
    wait_for(
        Duration::from_secs(5),
        "the short rotation was not reported",
        || async { log_lines(&rig, &["credential refresh failed", "goodcred", "too short (4 bytes"]) == 1 },
    )
    .await;
    let r = post_to(&rig, "goodcred").await;
    assert_eq!(r.status, 200, "the last good version keeps signing");
    assert_eq!(
        rig.provider.standin.records().await.pop().unwrap().verdict,
        Verdict::Valid
    );
    assert!(rig.alive());
    assert!(!rig.gw.log_text().contains("only-12bytes"), "a secret was logged");
    let mut e = Expect::new().provider(1);
    for (name, _) in reasons {
        e = e.counter(
            "signgate_denied_total",
            &[("route", name), ("reason", "credential_unavailable")],
            1.0,
        );
    }
    rig.after_fault(&before, e).await;
}

/// C7 recovery after an outage: a loaded credential (refresh 1 s,
/// `vault_max_stale_secs = 2`) loses OpenBao (the proxy answers 503),
/// fails closed, and 40 clients keep hitting its route. Refreshes stay on
/// the backoff schedule whatever the load (a handful of calls at the proxy
/// against hundreds of requests), never more than one call in flight, and
/// when OpenBao is back one read restores the credential for every client
/// (the calls at the proxy during recovery are bounded by the periodic
/// refreshes of that window plus two, not by the 40 clients).
/// After-fault: one denial per refused request, the provider got exactly
/// the signed ones.
#[tokio::test]
async fn c07_recovery_after_outage_is_one_refresh_not_a_herd() {
    let bao = Bao::start().await;
    let proxy = FaultProxy::start(bao.port).await;
    let token_file = bao.dir().join("token");
    write_token(&token_file, &bao.root);
    let cred = token_credential(&proxy.url(), "kp/c7", &token_file).vault_max_stale_secs(2);
    // One idle upstream connection kept: the herd's extra ones close.
    let rig = vault_rig(|c| c.egress("pool_idle_per_host", 1), vec![("vaultcred", cred)]).await;
    load_new_pair(&rig, &bao, "kp/c7").await;
    let before = rig.baseline().await;

    proxy.set(None, Fault::Status(503));
    wait_for(Duration::from_secs(8), "never failed closed", || async {
        loaded(&rig, "vaultcred").await == 0.0
    })
    .await;
    let outage_from = proxy.seen().len();
    let outage_at = Instant::now();
    let url = rig.url(&vpath("vaultcred"));
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = TestClient::new();
                let (mut ok, mut refused) = (0usize, 0usize);
                let deadline = Instant::now() + Duration::from_secs(12);
                // Until this client has been served twice after recovery.
                while ok < 2 && Instant::now() < deadline {
                    let r = c.post(&url, &order_body()).await;
                    match r.status.as_u16() {
                        200 => ok += 1,
                        503 => {
                            assert_eq!(r.code(), "credential_unavailable");
                            assert_eq!(ok, 0, "503 after being served");
                            refused += 1;
                        }
                        s => panic!("status {s}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, refused)
            })
        })
        .collect();
    // Two seconds of herd against a failing Vault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = proxy.seen().len() - outage_from;
    let outage_secs = outage_at.elapsed().as_secs_f64();
    assert!(
        (during as f64) <= outage_secs / 0.8 + 1.0,
        "{during} calls at Vault in {outage_secs:.1} s of outage: refreshes follow the clients"
    );
    let recover_from = proxy.seen().len();
    let recover_at = Instant::now();
    proxy.set(None, Fault::Pass);
    let (mut signed, mut refused) = (0usize, 0usize);
    for c in clients {
        let (ok, r) = c.await.unwrap();
        assert_eq!(ok, 2, "a client was not served after recovery");
        signed += ok;
        refused += r;
    }
    let recovery: Vec<Seen> = proxy.seen()[recover_from..].to_vec();
    let window = recover_at.elapsed().as_secs_f64();
    // Vault calls while the herd was being served again: the retry that
    // finds Vault back, at most one more (a call already in flight when the
    // fault was lifted), and the periodic refreshes of the window (every
    // 1 s, jitter down to 0.8 s). A gateway that refreshed for each waiting
    // client, even one after the other, would make ~40.
    assert!(
        (recovery.len() as f64) <= 2.0 + window / 0.8,
        "{} calls at Vault in the {window:.1} s recovery window: {recovery:?}",
        recovery.len()
    );
    let first_ok = recovery
        .iter()
        .position(|s| s.status == 200)
        .expect("no successful refresh");
    assert!(
        first_ok <= 1,
        "{first_ok} failed calls after Vault came back: {recovery:?}"
    );
    assert!(refused > 40, "the herd sent only {refused} refused requests");
    assert_eq!(
        proxy.max_inflight(),
        1,
        "more than one refresh in flight at once: {:?}",
        proxy.state.overlaps.lock().unwrap()
    );
    rig.after_fault(
        &before,
        Expect::new()
            .counter(
                "signgate_denied_total",
                &[("route", "vaultcred"), ("reason", "credential_unavailable")],
                refused as f64,
            )
            .provider(signed),
    )
    .await;
}
