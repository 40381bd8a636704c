//! A15 early refusals reach the client; A16 a client that gives up after
//! the forward is still audited. Both from two independent clients, curl
//! (libcurl with nghttp2, Debian's package) and httpx (Python, h11/h2, run
//! through `tests/hardening/clients.py`): a client that gets a connection
//! or stream reset instead of its refusal cannot tell "refused" from
//! "network fault", and may retry a payment.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use signgate::devtools::standin::Verdict;

use crate::harness::*;
use crate::support::{closed_port, eventually, GatewayToml, Route};

const DENIED: &str = "signgate_denied_total";

// ---- Running the outside clients ----

/// What a child process reads on standard input.
enum Input {
    Null,
    Bytes(Vec<u8>),
    /// Another process's output.
    Pipe(Stdio),
}

/// Run `cmd` to its end on a blocking thread (the test's runtime keeps
/// serving the provider stand-in meanwhile), collecting its output; killed,
/// and a panic, after `within`. A missing program is a loud failure, never
/// a skip: `scripts/test.sh` installs curl and httpx.
async fn run(mut cmd: Command, input: Input, within: Duration) -> Output {
    tokio::task::spawn_blocking(move || {
        let bytes = match input {
            Input::Null => {
                cmd.stdin(Stdio::null());
                None
            }
            Input::Bytes(b) => {
                cmd.stdin(Stdio::piped());
                Some(b)
            }
            Input::Pipe(p) => {
                cmd.stdin(p);
                None
            }
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let prog = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{prog}: {e} (scripts/test.sh installs curl, python3 and httpx[http2])"));
        let writer = bytes.map(|b| {
            let mut w = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = w.write_all(&b);
            })
        });
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{prog}: still running after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    })
    .await
    .unwrap()
}

/// `tests/hardening/clients.py`, the httpx driver.
fn clients_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hardening/clients.py")
}

/// How a client reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    /// HTTP/2 over TLS (ALPN h2): curl's default for https.
    H2Tls,
    /// HTTP/1.1 over TLS.
    H1Tls,
    /// HTTP/1.1 on the plaintext listener.
    H1Plain,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::H2Tls => "h2+TLS",
            Proto::H1Tls => "h1+TLS",
            Proto::H1Plain => "h1 plain",
        }
    }
    /// curl's `%{http_version}` for it.
    fn curl_version(self) -> &'static str {
        match self {
            Proto::H2Tls => "2",
            _ => "1.1",
        }
    }
    /// clients.py's `protocol`.
    fn httpx(self) -> &'static str {
        match self {
            Proto::H2Tls => "h2",
            _ => "h1",
        }
    }
}

/// One request for a client to send.
struct Req {
    /// Also its `x-request-id`.
    id: String,
    method: &'static str,
    url: String,
    /// Source address to bind (`--interface`, httpx's `local_address`).
    source: &'static str,
    body: PathBuf,
}

/// What a client got for one request.
#[derive(Debug, Clone)]
struct Answer {
    id: String,
    /// 0: no response read.
    status: u16,
    /// `error.code` of the JSON body, `-` without one.
    code: String,
    /// The transport error, `-` without one.
    error: String,
}

/// One curl process for all of `reqs`: a config file with one transfer per
/// request (separated by `next`), run `--parallel`; each transfer streams
/// its body from the file (`upload-file`, never held in memory), saves the
/// answer's body and writes `id status exitcode http_version errormsg`.
/// `Expect:` is suppressed (curl would add `Expect: 100-continue` to large
/// HTTP/1.1 uploads and hold the body back): the body is on its way when
/// the refusal comes.
async fn curl_batch(dir: &Path, proto: Proto, ca: &Path, reqs: &[Req], parallel: usize) -> Vec<Answer> {
    let out = dir.join("curl-out");
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg = String::new();
    for (i, r) in reqs.iter().enumerate() {
        if i > 0 {
            cfg.push_str("next\n");
        }
        let body_out = out.join(format!("{}.body", r.id));
        let _ = std::fs::remove_file(&body_out);
        cfg.push_str(&format!(
            "url = \"{}\"\nrequest = \"{}\"\nupload-file = \"{}\"\nheader = \"content-type: application/json\"\n\
             header = \"Expect:\"\nheader = \"x-request-id: {}\"\ninterface = \"{}\"\noutput = \"{}\"\n\
             write-out = \"{} %{{http_code}} %{{exitcode}} %{{http_version}} %{{errormsg}}\\n\"\n",
            r.url,
            r.method,
            r.body.display(),
            r.id,
            r.source,
            body_out.display(),
            r.id,
        ));
        match proto {
            Proto::H2Tls => cfg.push_str(&format!("cacert = \"{}\"\nhttp2\n", ca.display())),
            Proto::H1Tls => cfg.push_str(&format!("cacert = \"{}\"\nhttp1.1\n", ca.display())),
            Proto::H1Plain => cfg.push_str("http1.1\n"),
        }
    }
    let cfg_path = dir.join("curl.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--no-progress-meter", "--parallel", "--parallel-max"])
        .arg(parallel.to_string())
        .arg("--config")
        .arg(&cfg_path);
    let o = run(cmd, Input::Null, Duration::from_secs(300)).await;
    let text = String::from_utf8_lossy(&o.stdout);
    let mut answers = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(5, ' ').collect();
        assert!(f.len() >= 4, "curl -w line {line:?}");
        let (id, status, exit, version) = (f[0], f[1], f[2], f[3]);
        let msg = f.get(4).copied().unwrap_or("").trim();
        let status: u16 = status.parse().unwrap();
        let code = std::fs::read(out.join(format!("{id}.body")))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into());
        let error = if exit == "0" {
            if status != 0 {
                assert_eq!(version, proto.curl_version(), "{id}: curl spoke HTTP/{version}");
            }
            "-".to_string()
        } else {
            format!("curl exit {exit}: {msg}")
        };
        // A transfer that failed read no complete answer, whatever it saw.
        let status = if exit == "0" { status } else { 0 };
        answers.push(Answer {
            id: id.to_string(),
            status,
            code,
            error,
        });
    }
    assert_eq!(
        answers.len(),
        reqs.len(),
        "curl reported {} of {} transfers; stderr: {}",
        answers.len(),
        reqs.len(),
        String::from_utf8_lossy(&o.stderr)
    );
    answers
}

/// Run a job through clients.py (httpx): `job` is its JSON (see the
/// script); one [`Answer`] per request.
async fn httpx_job(job: serde_json::Value, within: Duration) -> Vec<Answer> {
    let n = job["requests"].as_array().map_or(0, Vec::len);
    let mut cmd = Command::new("python3");
    cmd.arg(clients_py());
    let o = run(cmd, Input::Bytes(job.to_string().into_bytes()), within).await;
    assert!(
        o.status.success(),
        "clients.py failed ({}); httpx missing? scripts/test.sh installs it: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let answers: Vec<Answer> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.splitn(4, ' ').collect();
            assert_eq!(f.len(), 4, "clients.py line {line:?}");
            Answer {
                id: f[0].to_string(),
                status: f[1].parse().unwrap(),
                code: f[2].to_string(),
                error: f[3].to_string(),
            }
        })
        .collect();
    assert_eq!(answers.len(), n, "clients.py answered {} of {n}", answers.len());
    answers
}

/// The httpx job for `reqs`.
async fn httpx_batch(proto: Proto, ca: &Path, reqs: &[Req], concurrency: usize) -> Vec<Answer> {
    let requests: Vec<serde_json::Value> = reqs
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id, "method": r.method, "url": r.url,
                "headers": {"content-type": "application/json", "x-request-id": r.id},
                "body_file": r.body, "local_address": r.source, "timeout": 60.0,
            })
        })
        .collect();
    let job = serde_json::json!({
        "protocol": proto.httpx(),
        "cacert": if proto == Proto::H1Plain { None } else { Some(ca) },
        "concurrency": concurrency,
        "requests": requests,
    });
    httpx_job(job, Duration::from_secs(300)).await
}

// ---- A15: early refusals ----

/// The refusals mixed in each batch, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    /// 403 `ip_not_allowed`: sent from 127.0.0.2, outside `[access] allow`.
    Ip,
    /// 404 `no_route`.
    NoRoute,
    /// 405 `method_not_allowed`: PUT on the POST-only route.
    Method,
    /// 429 `rate_limited` on the `limited` route (1 a second, burst 1).
    Limited,
}

impl Refusal {
    const ALL: [Refusal; 4] = [Refusal::Ip, Refusal::NoRoute, Refusal::Method, Refusal::Limited];

    fn method(self) -> &'static str {
        if self == Refusal::Method {
            "PUT"
        } else {
            "POST"
        }
    }

    fn path(self) -> &'static str {
        match self {
            Refusal::Ip | Refusal::Method => PROBE_PATH,
            Refusal::NoRoute => "/nowhere/order",
            Refusal::Limited => "/limited/order",
        }
    }

    fn source(self) -> &'static str {
        if self == Refusal::Ip {
            "127.0.0.2"
        } else {
            "127.0.0.1"
        }
    }

    /// The answer it must get: its status and JSON `error.code`. The
    /// `limited` route admits one request a second; an admitted one is
    /// still refused, from its body (never valid JSON here): 400
    /// `invalid_json` once read, or 413 `body_too_large` from its declared
    /// length (8 MiB over the 64 KiB limit, before it is read).
    fn accepts(self, a: &Answer) -> bool {
        let want: &[(u16, &str)] = match self {
            Refusal::Ip => &[(403, "ip_not_allowed")],
            Refusal::NoRoute => &[(404, "no_route")],
            Refusal::Method => &[(405, "method_not_allowed")],
            Refusal::Limited => &[(429, "rate_limited"), (400, "invalid_json"), (413, "body_too_large")],
        };
        want.iter().any(|(s, c)| a.status == *s && a.code == *c)
    }

    /// The `signgate_denied_total` series an answer counts in.
    fn counted_as(self, a: &Answer) -> (&'static str, String) {
        let route = match self {
            Refusal::Ip | Refusal::NoRoute => "none",
            Refusal::Method => "kwikpaisa",
            Refusal::Limited => "limited",
        };
        (route, a.code.clone())
    }
}

/// The A15 configuration: only 127.0.0.1 (and ::1) may send, so 127.0.0.2
/// is refused; a `limited` route at 1 request a second. Its upstream is
/// never reached (nothing admitted on it is valid JSON).
fn refusal_config(c: GatewayToml) -> GatewayToml {
    c.allow(["127.0.0.1/32", "::1/128"])
        .route(Route::to("limited", &format!("https://localhost:{}", closed_port())).limit(1, 1))
}

/// Requests per (protocol, body size, client): 200, and 50 with 8 MiB
/// bodies (see A15's doc). `SIGNGATE_A15_N` and `SIGNGATE_A15_N_8M`
/// override them (e.g. 1000 and 200 by hand).
fn batch_size(size: usize) -> usize {
    let (var, default) = if size >= 8 << 20 {
        ("SIGNGATE_A15_N_8M", 50)
    } else {
        ("SIGNGATE_A15_N", 200)
    };
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const SIZES: [(&str, usize); 3] = [("2B", 2), ("64KiB", 64 << 10), ("8MiB", 8 << 20)];

/// A body of `size` bytes of `x` (not JSON) in `dir`.
fn body_file(dir: &Path, size: usize) -> PathBuf {
    let p = dir.join(format!("body-{size}"));
    if !p.exists() {
        std::fs::write(&p, vec![b'x'; size]).unwrap();
    }
    p
}

/// One cell of the matrix: what a client got, and the tally.
struct Tally {
    answered: usize,
    transport_errors: Vec<Answer>,
    wrong: Vec<Answer>,
}

/// Send `n` refusals (the kinds in turn) of `size` over `proto` from
/// `client` ("curl" or "httpx"); tally them and add what they counted to
/// `counted`.
async fn refusal_batch(
    rig: &Rig,
    proto: Proto,
    (size_label, size): (&str, usize),
    client: &str,
    counted: &mut BTreeMap<(&'static str, String), f64>,
) -> Tally {
    let n = batch_size(size);
    let body = body_file(rig.dir.path(), size);
    let base = rig.base_url();
    let tag = proto.label().replace([' ', '+'], "-");
    let mut kinds: BTreeMap<String, Refusal> = BTreeMap::new();
    let reqs: Vec<Req> = (0..n)
        .map(|i| {
            let k = Refusal::ALL[i % Refusal::ALL.len()];
            let id = format!("a15-{tag}-{size_label}-{client}-{i}");
            kinds.insert(id.clone(), k);
            Req {
                id,
                method: k.method(),
                url: format!("{base}{}", k.path()),
                source: k.source(),
                body: body.clone(),
            }
        })
        .collect();
    // Python's h2 is CPU-heavy (~0.2 s of CPU per 8 MiB, four times its
    // HTTP/1.1): one 8 MiB upload at a time, so that each is through well
    // within linger_ms even on a loaded machine.
    let answers = match client {
        "curl" => curl_batch(rig.dir.path(), proto, &rig.pki.ca_path, &reqs, 8).await,
        _ => httpx_batch(proto, &rig.pki.ca_path, &reqs, if size >= 8 << 20 { 1 } else { 8 }).await,
    };
    let mut tally = Tally {
        answered: 0,
        transport_errors: Vec::new(),
        wrong: Vec::new(),
    };
    for a in answers {
        let k = *kinds.get(&a.id).unwrap_or_else(|| panic!("unknown id {}", a.id));
        if a.status == 0 {
            tally.transport_errors.push(a);
        } else if k.accepts(&a) {
            tally.answered += 1;
            *counted.entry(k.counted_as(&a)).or_default() += 1.0;
        } else {
            tally.wrong.push(a);
        }
    }
    tally
}

/// Run every (size, client) batch over each of `protos` on `rig`, print the
/// tally, assert every refusal reached its client, then the after-fault
/// checks with each refusal counted exactly once.
async fn refusal_matrix(rig: &Rig, protos: &[Proto]) {
    let before = rig.baseline().await;
    let mut counted = BTreeMap::new();
    let mut failures = Vec::new();
    for &proto in protos {
        for size in SIZES {
            for client in ["curl", "httpx"] {
                let t0 = Instant::now();
                let t = refusal_batch(rig, proto, size, client, &mut counted).await;
                let n = batch_size(size.1);
                println!(
                    "A15: {:<8} {:>5} {:<5}: {}/{n} refusals received, {} transport errors, {} wrong answers ({:.1} s)",
                    proto.label(),
                    size.0,
                    client,
                    t.answered,
                    t.transport_errors.len(),
                    t.wrong.len(),
                    t0.elapsed().as_secs_f64()
                );
                for a in t.transport_errors.iter().chain(&t.wrong).take(5) {
                    failures.push(format!("{} {}: {a:?}", proto.label(), size.0));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "refusals that did not reach their client (first 5 per batch):\n{}",
        failures.join("\n")
    );
    let mut e = Expect::new().within(Duration::from_secs(8));
    for ((route, reason), n) in &counted {
        e = e.counter(DENIED, &[("route", route), ("reason", reason)], *n);
    }
    rig.after_fault(&before, e).await;
}

/// A15 early refusals reach the client. Refusals per protocol (HTTP/2 over
/// TLS, HTTP/1.1 over TLS, HTTP/1.1 on the plaintext listener), per body
/// size (2 B, 64 KiB, 8 MiB, each sent while the refusal comes: no
/// `Expect`) and per client (curl `--parallel`, 8 at once, bodies streamed
/// from a file; httpx, 8 at once, one at a time for 8 MiB), the kinds
/// mixed in turn: 403 `ip_not_allowed` (from 127.0.0.2), 404 `no_route`,
/// 405 `method_not_allowed`, 429 `rate_limited` (a route at 1 a second;
/// what it admits is refused from its body, 400 or 413). Every one must get
/// its status and JSON `error.code`, with zero transport errors (curl exit
/// 0 and the HTTP version asked for, no httpx exception), and count exactly
/// once in `signgate_denied_total`; then the after-fault checks on each
/// gateway (TLS, then plaintext). Defaults throughout: `linger_ms` 5000,
/// `linger_bytes` 8 MiB.
///
/// 200 per (protocol, size, client) for 2 B and 64 KiB, 50 for 8 MiB:
/// 8 MiB bodies are sent whole (on HTTP/2 the answer waits for them; httpx
/// always sends all), and Python's HTTP/2 needs about a second of a loaded
/// 2-core machine per 8 MiB through the debug build, most of this test's
/// time (about 2 minutes in all on 2 cores under a load average of 15).
/// `SIGNGATE_A15_N` / `SIGNGATE_A15_N_8M` raise the counts by hand.
#[tokio::test]
async fn a15_early_refusals_reach_the_client() {
    let t0 = Instant::now();
    let tls = Rig::tls_with(refusal_config).await;
    refusal_matrix(&tls, &[Proto::H2Tls, Proto::H1Tls]).await;
    drop(tls);
    let plain = Rig::with(refusal_config).await;
    refusal_matrix(&plain, &[Proto::H1Plain]).await;
    println!("A15: matrix done in {:.1} s", t0.elapsed().as_secs_f64());
}

/// One curl transfer's `-w '%{http_code} %{exitcode} %{errormsg}'` and
/// the `error.code` of the body it saved to `body_out`.
fn curl_answer(id: &str, o: &Output, body_out: &Path) -> Answer {
    let text = String::from_utf8_lossy(&o.stdout);
    let f: Vec<&str> = text.splitn(3, ' ').collect();
    assert!(
        f.len() >= 2,
        "{id}: curl -w {text:?}; stderr {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let exit = f[1].trim();
    let code = std::fs::read(body_out)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into());
    Answer {
        id: id.to_string(),
        status: if exit == "0" { f[0].parse().unwrap_or(0) } else { 0 },
        code,
        error: if exit == "0" {
            "-".into()
        } else {
            format!("curl exit {exit}: {}", f.get(2).unwrap_or(&"").trim())
        },
    }
}

/// A15, the endless upload: a 200 MiB chunked body to a route with a 1 MiB
/// limit on the plaintext listener, 10 times from curl (`-T -` from a
/// generator, `Expect:` suppressed, so the body is on its way) and 10 times
/// from httpx (a generator body) → `413 body_too_large` with its JSON
/// every time, never a reset. The gateway answers once the running total
/// passes the limit, reads and discards up to `linger_bytes` (8 MiB) more,
/// then closes; curl stops sending when it reads the 413, httpx (which
/// sends its whole body before it reads) gets a write error and then reads
/// its answer from the socket. Gateway RSS, sampled throughout, stays
/// within 4× the limit + 1 MiB whatever was sent (4 GiB in all): the body
/// buffer grows to the limit, and the allocator keeps what it freed in the
/// arena of each of the runtime's two worker threads (measured: 2.7–3.2
/// MiB over the baseline, the same after 40 uploads as after 10).
///
/// httpx runs its blocking client here. Its async client cannot read any
/// answer once a write has failed: asyncio's transport closes the socket on
/// the write error, dropping what the server had sent (ReadError, 10 of 10;
/// `clients.py` says more). No server can avoid that for a body larger
/// than what it is willing to read and discard, short of reading all of
/// it.
#[tokio::test]
async fn a15_a_chunked_upload_over_the_limit_gets_its_413() {
    const LIMIT: usize = 1 << 20;
    const TOTAL: usize = 200 << 20;
    const TRIES: usize = 10;
    let rig = Rig::with(|c| c.listener("max_body_bytes", LIMIT)).await;
    let before = rig.baseline().await;
    let rss = RssSampler::start(rig.pid());
    let url = rig.url(PROBE_PATH);
    let t0 = Instant::now();
    let mut answers = Vec::new();
    for i in 0..TRIES {
        let id = format!("a15-chunked-curl-{i}");
        let mut gen = Command::new("head")
            .args(["-c", &TOTAL.to_string(), "/dev/zero"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = Stdio::from(gen.stdout.take().unwrap());
        let body_out = rig.path(&format!("{id}.body"));
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--http1.1", "-X", "POST", "-T", "-"])
            .args(["-H", "content-type: application/json", "-H", "Expect:"])
            .args(["-H", &format!("x-request-id: {id}"), "-o"])
            .arg(&body_out)
            .args(["-w", "%{http_code} %{exitcode} %{errormsg}"])
            .arg(&url);
        let o = run(cmd, Input::Pipe(stdin), Duration::from_secs(60)).await;
        let _ = gen.kill();
        let _ = gen.wait();
        answers.push(curl_answer(&id, &o, &body_out));
    }
    let curl_took = t0.elapsed();
    let requests: Vec<serde_json::Value> = (0..TRIES)
        .map(|i| {
            let id = format!("a15-chunked-httpx-{i}");
            serde_json::json!({
                "id": id, "method": "POST", "url": url,
                "headers": {"content-type": "application/json", "x-request-id": id},
                "generate": {"total": TOTAL, "piece": 65536}, "timeout": 60.0,
            })
        })
        .collect();
    // httpx's blocking client: see the test's doc for why not the async one.
    let job = serde_json::json!({"protocol": "h1", "sync": true, "requests": requests});
    answers.extend(httpx_job(job, Duration::from_secs(300)).await);
    let max_rss = rss.max_kib();
    let grew = max_rss.saturating_sub(before.rss_kib);
    let got = answers
        .iter()
        .filter(|a| a.status == 413 && a.code == "body_too_large")
        .count();
    println!(
        "A15 chunked: {got}/{} uploads of {} MiB got 413 body_too_large (curl {:.1} s, all {:.1} s); RSS grew by at most {grew} KiB",
        2 * TRIES,
        TOTAL >> 20,
        curl_took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let bad: Vec<&Answer> = answers
        .iter()
        .filter(|a| !(a.status == 413 && a.code == "body_too_large"))
        .collect();
    assert!(bad.is_empty(), "uploads that did not get their 413: {bad:#?}");
    assert!(
        grew <= (2 * LIMIT / 1024) as u64 + 1024,
        "RSS grew by {grew} KiB, over ~2x the {} KiB body limit",
        LIMIT / 1024
    );
    rig.after_fault(
        &before,
        Expect::new().within(Duration::from_secs(8)).counter(
            DENIED,
            &[("route", "kwikpaisa"), ("reason", "body_too_large")],
            (2 * TRIES) as f64,
        ),
    )
    .await;
}

/// Status lines curl `-v` printed for received responses, in order (`< HTTP/1.1 100 Continue` included).
fn curl_statuses(stderr: &str) -> Vec<u16> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("< HTTP/"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// A15, `Expect: 100-continue` (HTTP/1.1 on the plaintext listener, curl
/// `-v`): the checks that need no body run before `100 Continue`, so a
/// refused request (403 from 127.0.0.2, 404, 405, 413 from a declared
/// 100 KiB over the 64 KiB limit) shows only its final status with its JSON
/// `error.code`, never `HTTP/1.1 100 Continue`, and curl never gives up
/// waiting for it (no "Done waiting for 100-continue": the answer came
/// first). An allowed request gets its 100, then 200, and the provider
/// receives and verifies it once.
#[tokio::test]
async fn a15_expect_100_continue_refusals_get_no_100() {
    let rig = Rig::with(refusal_config).await;
    let before = rig.baseline().await;
    let small = rig.path("expect-small.json");
    std::fs::write(&small, order_body()).unwrap();
    let big = body_file(rig.dir.path(), 100 << 10);
    let cases: [(&str, &str, &str, &str, &Path, u16, &str); 4] = [
        ("403", "POST", PROBE_PATH, "127.0.0.2", &small, 403, "ip_not_allowed"),
        ("404", "POST", "/nowhere/order", "127.0.0.1", &small, 404, "no_route"),
        ("405", "PUT", PROBE_PATH, "127.0.0.1", &small, 405, "method_not_allowed"),
        ("413", "POST", PROBE_PATH, "127.0.0.1", &big, 413, "body_too_large"),
    ];
    let expect_curl = |id: &str, method: &str, path: &str, source: &str, body: &Path| {
        let mut cmd = Command::new("curl");
        cmd.args(["--verbose", "--silent", "--http1.1", "-X", method, "--data-binary"])
            .arg(format!("@{}", body.display()))
            .args(["-H", "content-type: application/json", "-H", "Expect: 100-continue"])
            .args(["-H", &format!("x-request-id: {id}"), "--interface", source, "-o"])
            .arg(rig.path(&format!("{id}.body")))
            .args(["-w", "%{http_code} %{exitcode} %{errormsg}"])
            .arg(rig.url(path));
        cmd
    };
    for (name, method, path, source, body, status, code) in cases {
        let id = format!("a15-expect-{name}");
        let o = run(
            expect_curl(&id, method, path, source, body),
            Input::Null,
            Duration::from_secs(20),
        )
        .await;
        let verbose = String::from_utf8_lossy(&o.stderr);
        let a = curl_answer(&id, &o, &rig.path(&format!("{id}.body")));
        assert_eq!((a.status, a.code.as_str()), (status, code), "{id}: {a:?}\n{verbose}");
        assert_eq!(
            curl_statuses(&verbose),
            vec![status],
            "{id}: a 100 before the refusal?\n{verbose}"
        );
        assert!(
            !verbose.contains("Done waiting for 100-continue"),
            "{id}: curl waited for a 100 that never came, then sent the body\n{verbose}"
        );
    }
    // Allowed: 100, then the signed request's 200.
    let id = "a15-expect-allowed";
    let n0 = rig.provider.standin.records().await.len();
    let o = run(
        expect_curl(id, "POST", PROBE_PATH, "127.0.0.1", &small),
        Input::Null,
        Duration::from_secs(20),
    )
    .await;
    let verbose = String::from_utf8_lossy(&o.stderr);
    assert_eq!(curl_statuses(&verbose), vec![100, 200], "{verbose}");
    let recs = rig.provider.standin.records().await;
    let mine: Vec<_> = recs[n0..]
        .iter()
        .filter(|r| r.headers.get("x-request-id").is_some_and(|v| v == id))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "the provider got the allowed request {} times",
        mine.len()
    );
    assert_eq!(mine[0].verdict, Verdict::Valid);
    let sent: serde_json::Value = serde_json::from_slice(&std::fs::read(&small).unwrap()).unwrap();
    let got: serde_json::Value = serde_json::from_slice(&mine[0].body).unwrap();
    assert_eq!(got, sent, "the provider got another body");
    rig.after_fault(
        &before,
        Expect::new()
            .provider(1)
            .counter(DENIED, &[("route", "none"), ("reason", "ip_not_allowed")], 1.0)
            .counter(DENIED, &[("route", "none"), ("reason", "no_route")], 1.0)
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "method_not_allowed")], 1.0)
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "body_too_large")], 1.0),
    )
    .await;
}

// ---- A16: the client gives up after the forward ----

/// The audit log's records (parsed).
fn audit_records(rig: &Rig) -> Vec<serde_json::Value> {
    std::fs::read_to_string(rig.audit_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `signgate audit verify` on the rig's log: it must accept every record
/// (the last ones may still be on their way to the file: the writer is a
/// task of its own, so a few tries).
async fn audit_verifies(rig: &Rig) {
    let mut last = String::new();
    for _ in 0..20 {
        let lines = std::fs::read_to_string(rig.audit_path()).unwrap().lines().count();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_signgate"));
        cmd.args(["audit", "verify"]).arg(rig.audit_path());
        let o = run(cmd, Input::Null, Duration::from_secs(30)).await;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && out.lines().last() == Some(&format!("ok {lines} records")) {
            return;
        }
        last = format!(
            "{} with {lines} lines in the log: {out}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("audit verify: {last}");
}

/// The stand-in path that answers after 1.5 s (the route strips `/kwikpaisa`).
const SLOW_PATH: &str = "/kwikpaisa/slow/1500";
/// How long the clients wait: well short of the provider.
const PATIENCE: f64 = 0.5;

/// Send `n` signed requests per protocol in `protos` from curl
/// (`--max-time 0.5`) and from httpx (timeout 0.5 s, a connection of its
/// own, closed when it gives up), all at once; each must give up (curl exit
/// 28, an httpx timeout). Returns the request ids.
async fn give_up(rig: &Rig, protos: &[Proto], n: usize) -> Vec<String> {
    let mut curls = Vec::new();
    let mut jobs = Vec::new();
    let mut ids = Vec::new();
    let url = format!("{}{SLOW_PATH}", rig.base_url());
    for &proto in protos {
        let tag = proto.label().replace([' ', '+'], "-");
        for i in 0..n {
            let id = format!("a16-{tag}-curl-{i}");
            let body = rig.path(&format!("{id}.json"));
            std::fs::write(&body, order_body()).unwrap();
            let mut cmd = Command::new("curl");
            cmd.args([
                "--silent",
                "--max-time",
                &PATIENCE.to_string(),
                "-X",
                "POST",
                "--data-binary",
            ])
            .arg(format!("@{}", body.display()))
            .args([
                "-H",
                "content-type: application/json",
                "-H",
                &format!("x-request-id: {id}"),
            ])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{exitcode} %{errormsg}"]);
            match proto {
                Proto::H2Tls => cmd.arg("--http2").arg("--cacert").arg(&rig.pki.ca_path),
                Proto::H1Tls => cmd.arg("--http1.1").arg("--cacert").arg(&rig.pki.ca_path),
                Proto::H1Plain => cmd.arg("--http1.1"),
            };
            cmd.arg(&url);
            ids.push(id.clone());
            curls.push(async move { (id, run(cmd, Input::Null, Duration::from_secs(20)).await) });
        }
        let requests: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let id = format!("a16-{tag}-httpx-{i}");
                let body = rig.path(&format!("{id}.json"));
                std::fs::write(&body, order_body()).unwrap();
                ids.push(id.clone());
                serde_json::json!({
                    "id": id, "method": "POST", "url": url,
                    "headers": {"content-type": "application/json", "x-request-id": id},
                    "body_file": body, "timeout": PATIENCE,
                })
            })
            .collect();
        jobs.push(serde_json::json!({
            "protocol": proto.httpx(),
            "cacert": if proto == Proto::H1Plain { None } else { Some(&rig.pki.ca_path) },
            "concurrency": n,
            "client_per_request": true,
            "requests": requests,
        }));
    }
    let (curled, httpxed) = tokio::join!(
        futures_util::future::join_all(curls),
        futures_util::future::join_all(jobs.into_iter().map(|j| httpx_job(j, Duration::from_secs(60))))
    );
    for (id, o) in curled {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.starts_with("000 28 "),
            "{id}: curl should have given up (exit 28) before the provider answered: {text}"
        );
    }
    for a in httpxed.into_iter().flatten() {
        assert!(
            a.status == 0 && a.error.contains("Timeout"),
            "{}: httpx should have timed out before the provider answered: {a:?}",
            a.id
        );
    }
    ids
}

/// A16 on one gateway: the clients of [`give_up`], then what the gateway
/// must have done for each once the provider answered.
async fn gives_up_after_the_forward(rig: &Rig, protos: &[Proto], n: usize) {
    let before = rig.baseline().await;
    let n0 = rig.provider.standin.records().await.len();
    let ids = give_up(rig, protos, n).await;
    // The provider answers 1.5 s after each request; then the record.
    let all_audited = eventually(Duration::from_secs(10), || async {
        let recs = audit_records(rig);
        ids.iter().all(|id| recs.iter().any(|r| r["request_id"] == id.as_str()))
    })
    .await;
    let recs = audit_records(rig);
    assert!(all_audited, "not every abandoned request was audited: {recs:#?}");
    for id in &ids {
        let mine: Vec<&serde_json::Value> = recs.iter().filter(|r| r["request_id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 1, "{id}: {} audit records: {mine:#?}", mine.len());
        let r = mine[0];
        assert_eq!(r["upstream_status"], 200, "{id}: {r}");
        assert_eq!(r["reason"], "client_gone", "{id}: {r}");
        assert_eq!(r["status"], 499, "{id}: {r}");
        assert_eq!(r["decision"], "allowed", "{id}: {r}");
        assert!(r["signature_fp"].is_string(), "{id}: no signature fingerprint: {r}");
    }
    let got = rig.provider.standin.records().await;
    for id in &ids {
        let mine: Vec<_> = got[n0..]
            .iter()
            .filter(|r| r.headers.get("x-request-id").is_some_and(|v| v == id.as_str()))
            .collect();
        assert_eq!(mine.len(), 1, "{id}: the provider received it {} times", mine.len());
        assert_eq!(
            mine[0].verdict,
            Verdict::Valid,
            "{id}: the provider rejected its signature"
        );
    }
    let k = ids.len() as f64;
    rig.after_fault(
        &before,
        Expect::new()
            .provider(ids.len())
            .counter(
                "signgate_client_gone_total",
                &[("route", "kwikpaisa"), ("upstream", "sent")],
                k,
            )
            .counter(
                "signgate_requests_total",
                &[("route", "kwikpaisa"), ("method", "POST"), ("status", "499")],
                k,
            )
            .counter(DENIED, &[("route", "kwikpaisa"), ("reason", "client_gone")], k),
    )
    .await;
    audit_verifies(rig).await;
    println!(
        "A16: {} requests abandoned after the forward over {:?}: each verified once by the provider, audited once with upstream_status 200 and reason client_gone",
        ids.len(),
        protos.iter().map(|p| p.label()).collect::<Vec<_>>()
    );
}

/// A16 a client that gives up after the forward: the provider answers after
/// 1.5 s, the clients give up after 0.5 s (curl `--max-time 0.5`, which
/// closes its connection, or resets its HTTP/2 stream and closes; httpx with
/// a 0.5 s timeout on a connection of its own, closed when it gives up), 3
/// each over HTTP/1.1 on the plaintext listener and over HTTP/2 with TLS.
/// The gateway completes every exchange: the provider receives and verifies
/// each request exactly once; once it has answered, the audit log holds
/// exactly one record per request id, with `upstream_status` 200, status
/// 499, reason `client_gone`; `signgate_client_gone_total{upstream="sent"}`,
/// `signgate_requests_total{status="499"}` and `signgate_denied_total
/// {reason="client_gone"}` rose by the number of requests; `signgate audit
/// verify` accepts the log; and the after-fault checks hold (in-flight
/// gauge back to 0, fds and tasks back to baseline).
#[tokio::test]
async fn a16_a_client_that_gives_up_after_the_forward_is_still_audited() {
    // One idle upstream connection kept: the six concurrent exchanges'
    // pooled connections are not a leak.
    let pool = |c: GatewayToml| c.egress("pool_idle_per_host", 1);
    let plain = Rig::with(pool).await;
    gives_up_after_the_forward(&plain, &[Proto::H1Plain], 3).await;
    drop(plain);
    let tls = Rig::tls_with(pool).await;
    gives_up_after_the_forward(&tls, &[Proto::H2Tls], 3).await;
}
