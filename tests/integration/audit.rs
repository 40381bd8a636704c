//! The audit log against real faults, with the real binary: a full disk
//! (with the reservation: new requests refused at once, every request that
//! reached the provider audited, no gap; without one: the record in flight
//! lost and named by a gap record; either way healthy again without a
//! restart once the disk has room), a torn last line after a crash, a
//! missing head file, and owner-only files under umask 022.
//!
//! The full disk is a 256 KiB tmpfs mounted for the test (we run as root;
//! so does CI). Where mounting is not permitted, the test falls back to
//! RLIMIT_FSIZE set on the running gateway with `prlimit --pid` (writes past
//! it fail with EFBIG; signgate catches SIGXFSZ). `SIGNGATE_TEST_DISK_FAULT=
//! tmpfs|fsize` forces one.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_signgate");

/// A fixture whose configuration (written to its config file) keeps the
/// audit log at `audit`, with the rest of `[audit]` as `edit` makes it.
async fn env(audit: &Path, edit: impl FnOnce(GatewayToml) -> GatewayToml) -> Fixture {
    let fx = Fixture::new().await;
    fx.write_config(&edit(fx.config().audit_path(audit)));
    fx
}

async fn provider_got(fx: &Fixture) -> usize {
    fx.provider.standin.records().await.len()
}

fn verify(args: &[&str], files: &[&Path]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["audit", "verify"]).args(args);
    for f in files {
        c.arg(f);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// SIGTERM, and wait for a clean exit (the writer flushes and writes the head).
async fn stop(gw: &mut GatewayProcess) {
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
}

/// The gateway on `fx`'s config file, under `umask 022`.
fn start_with_umask_022(fx: &Fixture) -> GatewayProcess {
    GatewayProcess::launch(&fx.config_path(), &Launch::new().umask("022"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn audit_metric(gw: &GatewayProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metric(name, labels).await
}

async fn written(gw: &GatewayProcess) -> f64 {
    audit_metric(gw, "signgate_audit_records_total", &[("result", "written")]).await
}

async fn failed(gw: &GatewayProcess) -> f64 {
    audit_metric(gw, "signgate_audit_records_total", &[("result", "failed")]).await
}

/// How the test takes the disk away from the audit log.
enum DiskFault {
    /// A small tmpfs holding the log; filled by a filler file.
    Tmpfs { mount: PathBuf, filler: PathBuf },
    /// RLIMIT_FSIZE on the gateway, set to the log's current size.
    Fsize,
}

impl DiskFault {
    /// Mount a 256 KiB tmpfs at `dir`, or fall back to RLIMIT_FSIZE.
    fn new(dir: &Path) -> DiskFault {
        let forced = std::env::var("SIGNGATE_TEST_DISK_FAULT").unwrap_or_default();
        if forced != "fsize" {
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs"])
                .arg(dir)
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    eprintln!("disk fault: a 256 KiB tmpfs at {}", dir.display());
                    return DiskFault::Tmpfs {
                        mount: dir.to_path_buf(),
                        filler: dir.join("filler"),
                    };
                }
                other => {
                    assert!(forced != "tmpfs", "cannot mount a tmpfs: {other:?}");
                    eprintln!("disk fault: mount not permitted ({other:?}); using RLIMIT_FSIZE through prlimit");
                }
            }
        }
        eprintln!("disk fault: RLIMIT_FSIZE through prlimit");
        DiskFault::Fsize
    }

    /// Take the free space away. With RLIMIT_FSIZE, `room` bytes are left
    /// past the log's end (on the tmpfs, what is left is the log's
    /// reservation).
    fn fill(&self, gw: &GatewayProcess, log: &Path, room: u64) {
        match self {
            DiskFault::Tmpfs { filler, .. } => {
                use std::io::Write;
                let mut f = std::fs::File::create(filler).unwrap();
                // Whole pages first, then the filler's last page byte by byte.
                for chunk in [4096usize, 1] {
                    while f.write_all(&vec![b'x'; chunk]).is_ok() {}
                }
                let _ = f.sync_all();
            }
            DiskFault::Fsize => {
                let size = std::fs::metadata(log).unwrap().len() + room;
                prlimit(gw, &format!("--fsize={size}:")); // the soft limit: raising a hard one back needs CAP_SYS_RESOURCE
            }
        }
    }

    fn free(&self, gw: &GatewayProcess) {
        match self {
            DiskFault::Tmpfs { filler, .. } => std::fs::remove_file(filler).unwrap(),
            DiskFault::Fsize => prlimit(gw, "--fsize=unlimited:"),
        }
    }

    /// The error the writer must have seen.
    fn error(&self) -> &'static str {
        match self {
            DiskFault::Tmpfs { .. } => "No space left on device",
            DiskFault::Fsize => "File too large",
        }
    }
}

fn prlimit(gw: &GatewayProcess, arg: &str) {
    let out = Command::new("prlimit")
        .args(["--pid", &gw.child.id().to_string(), arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "prlimit {arg}: {out:?}");
}

impl Drop for DiskFault {
    fn drop(&mut self) {
        if let DiskFault::Tmpfs { mount, .. } = self {
            let _ = Command::new("umount").arg("-l").arg(&*mount).status();
        }
    }
}

/// The reservation of the full-disk test: `queue` (64) x 1 KiB, the rule of
/// the default.
const RESERVE: u64 = 64 * 1024;

/// POST with our own request id: (id, status, error code).
async fn send(c: &TestClient, url: &str, id: &str) -> (String, u16, String) {
    let r = c.send(Method::POST, url, &[("x-request-id", id)], "{}").await;
    let code = if r.status == 200 { String::new() } else { r.code() };
    (id.to_string(), r.status.as_u16(), code)
}

/// The request ids the provider received.
async fn provider_ids(fx: &Fixture) -> BTreeSet<String> {
    fx.provider
        .standin
        .records()
        .await
        .iter()
        .map(|r| r.headers["x-request-id"].to_str().unwrap().to_string())
        .collect()
}

/// The request ids of the records in the log.
fn audited_ids(log: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn a_full_disk_refuses_new_requests_and_every_forwarded_request_keeps_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let fault = DiskFault::new(dir.path());
    let log = dir.path().join("audit/signgate.jsonl");
    let e = env(&log, |c| {
        c.audit("queue", 64)
            .audit("reserve_bytes", RESERVE)
            .egress("request_timeout_ms", 5000)
    })
    .await;
    let mut gw = GatewayProcess::start(&e.config_path(), &[]);
    let c = Arc::new(TestClient::new());
    let fast = gw.url("/kwikpaisa/api/v3/pg/order/status");
    let slow = gw.url("/kwikpaisa/slow/1500");
    for i in 0..3 {
        assert_eq!(send(&c, &fast, &format!("disk-before-{i}")).await.1, 200);
    }
    assert!(eventually(Duration::from_secs(5), || async { written(&gw).await == 3.0 }).await);

    // Eight requests on their way: the provider holds them for 1.5 s.
    let in_flight: Vec<_> = (0..8)
        .map(|i| {
            let (c, url) = (c.clone(), slow.clone());
            tokio::spawn(async move { send(&c, &url, &format!("disk-in-flight-{i}")).await })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || async { provider_got(&e).await == 11 }).await);
    // The disk fills up while they are in flight, and more keep arriving.
    fault.fill(&gw, &log, RESERVE / 2);
    let mut arriving = Vec::new();
    for wave in 0..3 {
        for i in 0..10 {
            let (c, url) = (c.clone(), fast.clone());
            arriving.push(tokio::spawn(async move {
                send(&c, &url, &format!("disk-arriving-{wave}-{i}")).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut replies = Vec::new();
    for t in in_flight {
        let r = t.await.unwrap();
        assert_eq!(r.1, 200, "a request already on its way is answered: {r:?}");
        replies.push(r);
    }
    for t in arriving {
        replies.push(t.await.unwrap());
    }
    // The first record written after the fill could not be followed by a
    // top-up: the log is unhealthy, new requests are refused at once and
    // readiness is off.
    assert!(
        eventually(Duration::from_secs(5), || async {
            audit_metric(&gw, "signgate_audit_healthy", &[]).await == 0.0
        })
        .await,
        "{}",
        gw.log_text()
    );
    for i in 0..5 {
        let r = send(&c, &fast, &format!("disk-refused-{i}")).await;
        assert_eq!((r.1, r.2.as_str()), (503, "audit_unavailable"));
        replies.push(r);
    }
    let ready = c.get(&gw.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503);
    let why = String::from_utf8_lossy(&ready.body).into_owned();
    assert!(why.contains("reserved ahead of the audit log"), "{why}");

    // Every answer is a 200 (forwarded) or a 503 audit_unavailable (not).
    for r in &replies {
        assert!(r.1 == 200 || (r.1, r.2.as_str()) == (503, "audit_unavailable"), "{r:?}");
    }
    let answered: BTreeSet<String> = replies.iter().filter(|r| r.1 == 200).map(|r| r.0.clone()).collect();
    let refused = replies.iter().filter(|r| r.1 == 503).count();
    let at_provider = provider_ids(&e).await;
    let mut expected = answered.clone();
    expected.extend((0..3).map(|i| format!("disk-before-{i}")));
    assert_eq!(
        at_provider, expected,
        "exactly the requests answered 200 reached the provider"
    );
    // ... and every one of them has its record: none lost, no gap.
    let n = at_provider.len() as f64;
    assert!(
        eventually(Duration::from_secs(5), || async { written(&gw).await == n }).await,
        "{}",
        gw.log_text()
    );
    assert_eq!(failed(&gw).await, 0.0);
    assert_eq!(
        audited_ids(&log),
        at_provider,
        "every request that reached the provider is audited"
    );
    eprintln!(
        "after the fill: {} answered 200 (8 in flight, {} arriving), {refused} refused 503; \
         provider got {} in all, the log holds {} records",
        answered.len(),
        answered.len() - 8,
        at_provider.len(),
        audited_ids(&log).len()
    );

    // Room again: healthy within about a second, without a restart.
    fault.free(&gw);
    assert!(
        eventually(Duration::from_secs(5), || async {
            audit_metric(&gw, "signgate_audit_healthy", &[]).await == 1.0
        })
        .await,
        "{}",
        gw.log_text()
    );
    for i in 0..3 {
        assert_eq!(send(&c, &fast, &format!("disk-after-{i}")).await.1, 200);
    }
    stop(&mut gw).await;

    // A complete chain: no gap record, a plain ok.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("\"record\":\"gap\""), "{text}");
    let lines = text.lines().count();
    assert_eq!(lines, at_provider.len() + 3);
    let out = verify(&[], &[&log]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), format!("ok {lines} records\n")),
        "{out:?}"
    );
}

/// Without a reservation (`reserve_bytes = 0`, and so on a file system
/// without `fallocate`), the full disk is noticed by the first write that
/// fails: that record, of a request already forwarded, is lost and named by
/// a gap record.
#[tokio::test]
async fn without_a_reservation_a_full_disk_loses_the_record_in_flight_and_a_gap_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let fault = DiskFault::new(dir.path());
    let log = dir.path().join("audit/signgate.jsonl");
    let e = env(&log, |c| c.audit("reserve_bytes", 0)).await;
    let mut gw = GatewayProcess::start(&e.config_path(), &[]);
    let c = TestClient::new();
    let url = gw.url("/kwikpaisa/api/v3/pg/order/status");
    for _ in 0..3 {
        assert_eq!(c.post(&url, "{}").await.status, 200);
    }
    assert!(eventually(Duration::from_secs(5), || async { written(&gw).await == 3.0 }).await);
    assert_eq!(audit_metric(&gw, "signgate_audit_healthy", &[]).await, 1.0);

    fault.fill(&gw, &log, 0);
    // Until a write fails nothing knows the disk is full: records may still
    // fit in the file's last page, and the request whose record is the first
    // to fail was already forwarded. One request at a time, so exactly one
    // record is lost.
    let mut slack = 0;
    loop {
        assert_eq!(c.post(&url, "{}").await.status, 200, "{}", gw.log_text());
        let before = 3.0 + slack as f64;
        assert!(
            eventually(Duration::from_secs(5), || async {
                written(&gw).await > before || failed(&gw).await > 0.0
            })
            .await
        );
        if failed(&gw).await > 0.0 {
            break;
        }
        slack += 1;
        assert!(slack < 40, "the disk never filled up");
    }
    let lost_seq = 3 + slack + 1;
    eprintln!("records written into the last page after the fill: {slack}; lost: seq {lost_seq}");
    assert_eq!(failed(&gw).await, 1.0);
    assert_eq!(audit_metric(&gw, "signgate_audit_healthy", &[]).await, 0.0);

    // From now on every request is refused and nothing reaches the provider.
    let got = provider_got(&e).await;
    for _ in 0..10 {
        let r = c.post(&url, "{}").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.code(), "audit_unavailable");
    }
    // (The writer retries every second; the disk is still full.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c.post(&url, "{}").await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (503, "audit_unavailable"));
    assert_eq!(provider_got(&e).await, got, "nothing is forwarded unaudited");
    assert_eq!(
        audit_metric(&gw, "signgate_audit_records_total", &[("result", "refused")]).await,
        11.0
    );

    // Room again: healthy within about a second, without a restart.
    fault.free(&gw);
    assert!(
        eventually(Duration::from_secs(5), || async {
            audit_metric(&gw, "signgate_audit_healthy", &[]).await == 1.0
        })
        .await,
        "{}",
        gw.log_text()
    );
    for _ in 0..3 {
        assert_eq!(c.post(&url, "{}").await.status, 200);
    }
    assert_eq!(provider_got(&e).await, got + 3);
    stop(&mut gw).await;

    // The gap is in the chain: named by verify, never a plain "ok".
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let gap = lines.iter().find(|l| l["record"] == "gap").expect("a gap record");
    assert_eq!(gap["lost_from"], lost_seq);
    assert_eq!(gap["lost_to"], lost_seq);
    assert_eq!(gap["lost"], 1);
    assert_eq!(gap["seq"], lost_seq + 1);
    assert!(gap["reason"].as_str().unwrap().contains(fault.error()), "{gap}");
    assert_eq!(lines.len() as u64, 3 + slack + 1 + 3);
    assert!(lines.iter().all(|l| l["seq"] != lost_seq), "the lost seq is on no line");

    let out = verify(&[], &[&log]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let s = stdout(&out);
    assert!(
        s.contains(&format!("gap: seq {lost_seq}-{lost_seq} lost (1 records)")),
        "{s}"
    );
    assert!(s.lines().last().unwrap().starts_with("incomplete:"), "{s}");
    let out = verify(&["--allow-gaps"], &[&log]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let n = lines.len();
    assert!(
        stdout(&out).ends_with(&format!("ok {n} records, with findings: 1 gap(s), 1 record(s) lost\n")),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn a_torn_last_line_is_moved_aside_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signgate.jsonl");
    let e = env(&log, |c| c).await;
    let c = TestClient::new();
    let mut gw = GatewayProcess::start(&e.config_path(), &[]);
    for _ in 0..2 {
        assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    }
    stop(&mut gw).await;
    // A crash in the middle of writing the third line: half a line, no newline.
    let whole = std::fs::read(&log).unwrap();
    let last_line_start = whole[..whole.len() - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let torn = whole[last_line_start..last_line_start + (whole.len() - last_line_start) / 2].to_vec();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);
    let out = verify(&[], &[&log]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("no newline at the end"), "{}", stdout(&out));

    let mut gw = start_with_umask_022(&e);
    assert!(
        gw.log_text().contains("torn last line was moved aside"),
        "{}",
        gw.log_text()
    );
    assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    stop(&mut gw).await;

    let torn_files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("signgate.jsonl.torn-"))
        .collect();
    assert_eq!(torn_files.len(), 1, "{torn_files:?}");
    assert_eq!(std::fs::read(&torn_files[0]).unwrap(), torn);
    assert_eq!(mode(&torn_files[0]), 0o600);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2]["record"], "recovered");
    assert_eq!(lines[2]["seq"], 3);
    assert_eq!(lines[2]["torn_bytes"], torn.len());
    assert_eq!(lines[3]["seq"], 4);

    let out = verify(&[], &[&log]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s = stdout(&out);
    assert!(s.contains("line 3: recovered: a torn last line"), "{s}");
    assert!(s.contains("it is there and matches"), "{s}");
    assert!(
        s.ends_with("ok 4 records, with findings: 1 torn line(s) recovered\n"),
        "{s}"
    );
    let out = verify(&["--strict"], &[&log]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[tokio::test]
async fn without_the_head_file_verify_says_the_end_is_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signgate.jsonl");
    let e = env(&log, |c| c).await;
    let c = TestClient::new();
    let mut gw = GatewayProcess::start(&e.config_path(), &[]);
    for _ in 0..2 {
        assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    }
    stop(&mut gw).await;
    let out = verify(&[], &[&log]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), "ok 2 records\n".to_string())
    );

    // Edit the last record and drop the head file: the chain alone cannot
    // tell, so verify must not say ok.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last = lines[1].replace("\"status\":200", "\"status\":201");
    assert_ne!(last, lines[1]);
    lines[1] = &last;
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    // (With the head file, that is caught.)
    let out = verify(&[], &[&log]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("differs from the one the writer recorded"),
        "{}",
        stdout(&out)
    );
    std::fs::remove_file(dir.path().join("signgate.jsonl.head")).unwrap();
    let out = verify(&[], &[&log]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let s = stdout(&out);
    assert!(
        s.contains("signgate.jsonl.head: missing: the end of the log cannot be checked"),
        "{s}"
    );
    assert!(s.contains("--no-head"), "{s}");
    let out = verify(&["--no-head"], &[&log]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout(&out).ends_with("ok 2 records, with findings: the end is not checked (no head file)\n"),
        "{}",
        stdout(&out)
    );
    drop(e);
}

#[tokio::test]
async fn audit_files_are_owner_only_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/audit/signgate.jsonl");
    let e = env(&log, |c| c.audit("max_bytes", 4096)).await;
    let mut gw = start_with_umask_022(&e);
    let c = TestClient::new();
    for _ in 0..20 {
        assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    }
    stop(&mut gw).await;
    assert_eq!(mode(&dir.path().join("logs")), 0o700);
    assert_eq!(mode(&dir.path().join("logs/audit")), 0o700);
    assert_eq!(mode(&log), 0o600);
    assert_eq!(mode(&dir.path().join("logs/audit/signgate.jsonl.head")), 0o600);
    assert_eq!(mode(&dir.path().join("logs/audit/signgate.jsonl.1")), 0o600);
    // The same umask for a file the test creates, to show it is in effect.
    let out = Command::new("sh")
        .args(["-c", "umask 022 && touch \"$0\" && stat -c %a \"$0\""])
        .arg(dir.path().join("probe"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "644");
    let mut files: Vec<PathBuf> = (1..=10)
        .rev()
        .map(|n| dir.path().join(format!("logs/audit/signgate.jsonl.{n}")))
        .filter(|p| p.exists())
        .collect();
    files.push(log.clone());
    let present: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = verify(&[], &present);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    drop(e);
}
