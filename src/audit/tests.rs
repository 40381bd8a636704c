use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::fault::{Fault, FAULT_NONE, FAULT_SHORT, FAULT_SYNC, FAULT_WRITE};
use super::*;
use crate::config::{AuditConfig, AuditSink};

pub(super) fn cfg(path: &Path, max_bytes: u64) -> AuditConfig {
    AuditConfig {
        sink: AuditSink::File(path.to_path_buf()),
        hash_chain: true,
        max_bytes,
        max_files: 5,
        queue: 64,
        wait: Duration::from_millis(200),
        batch: crate::config::DEFAULT_AUDIT_BATCH,
        reserve_bytes: 64 * 1024,
        redact_query_keys: vec!["token".into()],
    }
}

pub(super) fn entry(i: usize) -> Entry {
    Entry {
        time: now_rfc3339(),
        request_id: format!("req-{i}"),
        client: "127.0.0.1:5000".parse().unwrap(),
        route: Some("kwikpaisa".into()),
        method: "POST".into(),
        path: "/kwikpaisa/x".into(),
        decision: "allowed",
        reason: None,
        status: 200,
        upstream_status: Some(200),
        duration_ms: 1.5,
        bytes_in: 10,
        bytes_out: Some(20),
        credential: Some("kwikpaisa".into()),
        secret_version: Some(1),
        signature_fp: Some("abcdef012345".into()),
        duplicate_key: None,
        fleet: None,
        upstream_error: None,
        note: None,
        amount: None,
        currency: None,
    }
}

async fn write_n(c: &AuditConfig, n: usize) {
    let (log, handle) = start(c, crate::metrics::Metrics::new()).unwrap();
    for i in 0..n {
        log.reserve().await.unwrap().write(entry(i));
    }
    drop(log);
    handle.await.unwrap();
}

pub(super) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn check(files: &[PathBuf]) -> Verdict {
    verify(files, false).unwrap()
}

/// The report of a chain that must hold.
pub(super) fn report(files: &[PathBuf]) -> Report {
    match check(files) {
        Verdict::Ok(r) => r,
        broken => panic!("{broken:?}"),
    }
}

/// A complete chain: its record count.
pub(super) fn clean(files: &[PathBuf]) -> u64 {
    let r = report(files);
    assert!(r.is_clean(), "{r:?}");
    r.records
}

#[tokio::test]
async fn chain_verifies_and_every_tampering_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_n(&cfg(&path, 1 << 30), 6).await;
    let original = lines(&path);
    assert_eq!(original.len(), 6);
    assert_eq!(clean(std::slice::from_ref(&path)), 6);
    let first: serde_json::Value = serde_json::from_str(&original[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], GENESIS);

    let rewrite = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").unwrap();
    for i in 0..6 {
        // Edit one line.
        let mut edited = original.clone();
        edited[i] = edited[i].replace("\"status\":200", "\"status\":201");
        rewrite(&edited);
        match check(std::slice::from_ref(&path)) {
            Verdict::Broken { line, .. } => {
                assert!(line == i as u64 + 2 || (i == 5 && line == 6), "edit {i}: line {line}")
            }
            ok => panic!("edit of line {} not detected: {ok:?}", i + 1),
        }
        // Delete one line.
        let mut deleted = original.clone();
        deleted.remove(i);
        rewrite(&deleted);
        assert!(
            matches!(check(std::slice::from_ref(&path)), Verdict::Broken { .. }),
            "deleting line {} not detected",
            i + 1
        );
        // Swap with the next.
        if i < 5 {
            let mut swapped = original.clone();
            swapped.swap(i, i + 1);
            rewrite(&swapped);
            match check(std::slice::from_ref(&path)) {
                Verdict::Broken { line, .. } => assert_eq!(line, i as u64 + 1, "swap {i}"),
                ok => panic!("swap not detected: {ok:?}"),
            }
        }
    }
    rewrite(&original);
    assert_eq!(clean(std::slice::from_ref(&path)), 6);
}

#[tokio::test]
async fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_n(&cfg(&path, 1 << 30), 3).await;
    write_n(&cfg(&path, 1 << 30), 4).await;
    let ls = lines(&path);
    assert_eq!(ls.len(), 7);
    let v: serde_json::Value = serde_json::from_str(&ls[3]).unwrap();
    assert_eq!(v["seq"], 4);
    assert_eq!(v["prev"], sha256_hex(ls[2].as_bytes()));
    assert_eq!(clean(&[path]), 7);
}

#[tokio::test]
async fn rotation_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let c = cfg(&path, 4096);
    write_n(&c, 40).await;
    let mut files: Vec<PathBuf> = (1..=5)
        .rev()
        .map(|n| rotated(&path, n))
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 2, "expected rotation, got {files:?}");
    files.push(path.clone());
    let total: usize = files.iter().map(|f| lines(f).len()).sum();
    assert_eq!(clean(&files), total as u64);
    assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
    // The newest file alone is a continuation.
    assert!(matches!(
        check(std::slice::from_ref(&path)),
        Verdict::Broken { line: 1, .. }
    ));
    assert!(matches!(
        verify(std::slice::from_ref(&path), true).unwrap(),
        Verdict::Ok(r) if r.is_clean()
    ));
    // A restart after rotation still continues from the newest record.
    write_n(&c, 1).await;
    let last: serde_json::Value = serde_json::from_str(lines(&path).last().unwrap()).unwrap();
    assert_eq!(last["seq"], 41);
}

#[tokio::test]
async fn records_cut_off_the_end_are_detected_by_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_n(&cfg(&path, 1 << 30), 5).await;
    let mut ls = lines(&path);
    ls.pop();
    std::fs::write(&path, ls.join("\n") + "\n").unwrap();
    match check(&[path]) {
        Verdict::Broken { why, .. } => assert!(why.contains("removed from the end"), "{why}"),
        ok => panic!("{ok:?}"),
    }
}

#[tokio::test]
async fn a_full_queue_refuses_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut c = cfg(&path, 1 << 30);
    c.queue = 2;
    let (log, handle) = start(&c, crate::metrics::Metrics::new()).unwrap();
    // Hold both slots: a third request must be refused within `wait`.
    let a = log.reserve().await.unwrap();
    let b = log.reserve().await.unwrap();
    let started = Instant::now();
    assert!(log.reserve().await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(150));
    a.write(entry(1));
    b.write(entry(2));
    drop(log);
    handle.await.unwrap();
    assert_eq!(lines(&path).len(), 2);
}

#[test]
fn query_values_of_sensitive_keys_are_redacted() {
    let keys: Arc<[String]> = vec!["token".to_string(), "otp".to_string()].into();
    assert_eq!(
        redact_query("a=1&token=s3cr3t&otp=9&b", &keys),
        "a=1&token=REDACTED&otp=REDACTED&b"
    );
}

pub(super) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

pub(super) fn counter(m: &crate::metrics::Metrics, result: &str) -> u64 {
    m.audit_records.with_label_values(&[result]).get()
}

/// A writer with a fault switch, and three records written.
pub(super) async fn faulty(
    c: &AuditConfig,
) -> (
    AuditLog,
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicU8>,
    Arc<crate::metrics::Metrics>,
) {
    let (fault, switch) = Fault::switch();
    let metrics = crate::metrics::Metrics::new();
    let (log, handle) = start_with(c, metrics.clone(), fault).unwrap();
    for i in 0..3 {
        log.reserve().await.unwrap().write(entry(i));
    }
    until("3 records written", || counter(&metrics, "written") == 3).await;
    (log, handle, switch, metrics)
}

/// Turn a fault on, lose two records (one in flight), check the refusals,
/// turn it off, check the gap. Returns the log's lines.
async fn lose_two_then_recover(mode: u8) -> (Vec<serde_json::Value>, Report, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let c = cfg(&path, 1 << 30);
    let (log, handle, switch, metrics) = faulty(&c).await;
    assert!(log.healthy() && log.problem().is_none());
    assert_eq!(metrics.audit_healthy.get(), 1);
    // A request that reserved its slot before the failure is already on its
    // way: its record is lost, and so is the next in flight.
    let in_flight = log.reserve().await.unwrap();
    switch.store(mode, std::sync::atomic::Ordering::SeqCst);
    log.reserve().await.unwrap().write(entry(3));
    until("unhealthy", || !log.healthy()).await;
    in_flight.write(entry(4));
    until("2 failed", || counter(&metrics, "failed") == 2).await;
    assert_eq!(metrics.audit_healthy.get(), 0);
    let problem = log.problem().unwrap();
    assert!(problem.contains("seq 4-5") && problem.contains("refused"), "{problem}");
    // Refused at once, not after wait_ms.
    let t = Instant::now();
    assert!(log.reserve().await.is_none());
    assert!(t.elapsed() < Duration::from_millis(100));
    // Nothing past the last synced record, no partial line.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n') && text.lines().count() == 3, "{text:?}");
    // Writable again: the writer retries (once a second) and writes the gap.
    switch.store(FAULT_NONE, std::sync::atomic::Ordering::SeqCst);
    until("healthy again", || log.healthy()).await;
    assert!(log.problem().is_none());
    log.reserve().await.unwrap().write(entry(5));
    drop(log);
    handle.await.unwrap();
    assert_eq!(counter(&metrics, "written"), 4);
    assert_eq!(counter(&metrics, "failed"), 2);
    assert_eq!(metrics.audit_healthy.get(), 1);
    let v = json_lines(&path);
    let r = report(std::slice::from_ref(&path));
    (v, r, dir.keep())
}

fn assert_gap_4_5(v: &[serde_json::Value], r: &Report, reason: &str) {
    assert_eq!(v.len(), 5, "{v:?}");
    let gap = &v[3];
    assert_eq!(gap["record"], "gap");
    assert_eq!(gap["seq"], 6);
    assert_eq!(gap["lost_from"], 4);
    assert_eq!(gap["lost_to"], 5);
    assert_eq!(gap["lost"], 2);
    assert!(gap["reason"].as_str().unwrap().contains(reason), "{gap}");
    assert!(gap["since"].is_string() && gap["time"].is_string());
    assert_eq!(v[4]["seq"], 7);
    assert_eq!(v[4]["request_id"], "req-5");
    assert_eq!(r.records, 5);
    assert_eq!(r.lost(), 2);
    assert_eq!(r.gaps.len(), 1);
    assert_eq!((r.gaps[0].lost_from, r.gaps[0].lost_to, r.gaps[0].line), (4, 5, 4));
    assert_eq!(r.head, HeadCheck::Pinned);
    assert!(!r.is_clean());
}

#[tokio::test]
async fn a_failed_write_turns_unhealthy_and_the_gap_is_recorded() {
    let (v, r, dir) = lose_two_then_recover(FAULT_WRITE).await;
    assert_gap_4_5(&v, &r, "No space left on device");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_short_write_is_cut_back_and_recorded_as_a_gap() {
    let (v, r, dir) = lose_two_then_recover(FAULT_SHORT).await;
    assert_gap_4_5(&v, &r, "No space left on device");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_failed_sync_loses_the_batch_written_to_the_page_cache() {
    let (v, r, dir) = lose_two_then_recover(FAULT_SYNC).await;
    assert_gap_4_5(&v, &r, "Input/output error");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_gap_from_the_first_record_verifies_from_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (fault, switch) = Fault::switch();
    let metrics = crate::metrics::Metrics::new();
    let (log, handle) = start_with(&cfg(&path, 1 << 30), metrics.clone(), fault).unwrap();
    switch.store(FAULT_WRITE, std::sync::atomic::Ordering::SeqCst);
    log.reserve().await.unwrap().write(entry(0));
    until("unhealthy", || !log.healthy()).await;
    switch.store(FAULT_NONE, std::sync::atomic::Ordering::SeqCst);
    until("healthy again", || log.healthy()).await;
    drop(log);
    handle.await.unwrap();
    let v = json_lines(&path);
    assert_eq!((v[0]["seq"].as_u64(), v[0]["lost_from"].as_u64()), (Some(2), Some(1)));
    assert_eq!(v[0]["prev"], GENESIS);
    let r = report(&[path]);
    assert_eq!((r.records, r.lost()), (1, 1));
}

#[tokio::test]
async fn records_lost_at_shutdown_leave_the_file_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (log, handle, switch, metrics) = faulty(&cfg(&path, 1 << 30)).await;
    switch.store(FAULT_WRITE, std::sync::atomic::Ordering::SeqCst);
    log.reserve().await.unwrap().write(entry(3));
    drop(log);
    handle.await.unwrap();
    assert_eq!(counter(&metrics, "failed"), 1);
    assert_eq!(clean(std::slice::from_ref(&path)), 3);
    // The next start continues after the last written record.
    write_n(&cfg(&path, 1 << 30), 1).await;
    assert_eq!(json_lines(&path)[3]["seq"], 4);
}

#[tokio::test]
async fn a_gap_survives_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let c = cfg(&path, 4096);
    let (log, handle, switch, _m) = faulty(&c).await;
    switch.store(FAULT_WRITE, std::sync::atomic::Ordering::SeqCst);
    log.reserve().await.unwrap().write(entry(3));
    until("unhealthy", || !log.healthy()).await;
    switch.store(FAULT_NONE, std::sync::atomic::Ordering::SeqCst);
    until("healthy again", || log.healthy()).await;
    for i in 0..30 {
        log.reserve().await.unwrap().write(entry(i));
    }
    drop(log);
    handle.await.unwrap();
    let mut files: Vec<PathBuf> = (1..=5)
        .rev()
        .map(|n| rotated(&path, n))
        .filter(|p| p.exists())
        .collect();
    assert!(!files.is_empty());
    files.push(path.clone());
    let r = report(&files);
    assert_eq!((r.lost(), r.gaps.len(), r.head.clone_kind()), (1, 1, "pinned"));
}

impl HeadCheck {
    fn clone_kind(&self) -> &'static str {
        match self {
            HeadCheck::Pinned => "pinned",
            HeadCheck::Behind { .. } => "behind",
            HeadCheck::Missing => "missing",
            HeadCheck::Unreadable(_) => "unreadable",
        }
    }
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn torn_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    v.sort();
    v
}

async fn torn_case(tail: &[u8], reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_n(&cfg(&path, 1 << 30), 3).await;
    let before = std::fs::read(&path).unwrap();
    append(&path, tail);
    // Seen by verify before the restart: not a silent ok.
    assert!(!matches!(check(std::slice::from_ref(&path)), Verdict::Ok(r) if r.is_clean()));
    write_n(&cfg(&path, 1 << 30), 1).await;
    let torn = torn_files(dir.path());
    assert_eq!(torn.len(), 1, "{torn:?}");
    assert_eq!(std::fs::read(&torn[0]).unwrap(), tail);
    assert_eq!(std::fs::metadata(&torn[0]).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read(&path).unwrap();
    assert!(text.starts_with(&before));
    let v = json_lines(&path);
    assert_eq!(v.len(), 5);
    let rec = &v[3];
    assert_eq!(rec["record"], "recovered");
    assert_eq!(rec["seq"], 4);
    assert_eq!(rec["torn_bytes"], tail.len());
    assert_eq!(rec["torn_sha256"], sha256_hex(tail));
    assert_eq!(rec["reason"], reason);
    assert_eq!(rec["torn_file"], torn[0].file_name().unwrap().to_str().unwrap());
    assert_eq!(v[4]["seq"], 5);
    let r = report(&[path]);
    assert_eq!(r.records, 5);
    assert_eq!(r.recoveries.len(), 1);
    assert_eq!(r.recoveries[0].torn_found, TornFile::Matches);
    assert_eq!(r.recoveries[0].line, 4);
    assert!(r.gaps.is_empty() && r.head == HeadCheck::Pinned);
    // A changed torn file is noticed.
    std::fs::write(&torn[0], b"something else").unwrap();
    assert_eq!(
        report(&[dir.path().join("a.jsonl")]).recoveries[0].torn_found,
        TornFile::Differs
    );
}

#[tokio::test]
async fn a_torn_last_line_is_moved_aside_and_recorded() {
    torn_case(
        br#"{"seq":4,"time":"2024-01-01T00:00:00.000Z","requ"#,
        "the last line had no newline",
    )
    .await;
}

#[tokio::test]
async fn a_last_line_of_nul_bytes_is_moved_aside_and_recorded() {
    torn_case(&[0u8; 700], "the last line had no newline").await;
    torn_case(b"\0\0\0\0\n", "the last line was not JSON").await;
}

#[tokio::test]
async fn a_file_that_is_all_torn_starts_the_chain_from_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, br#"{"seq":1,"ti"#).unwrap();
    write_n(&cfg(&path, 1 << 30), 1).await;
    let v = json_lines(&path);
    assert_eq!(
        (v[0]["record"].as_str(), v[0]["seq"].as_u64()),
        (Some("recovered"), Some(1))
    );
    assert_eq!(v[0]["prev"], GENESIS);
    assert_eq!(report(&[path]).records, 2);
}

#[tokio::test]
async fn a_file_that_is_no_audit_log_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"foo\":1}\n".to_vec(), "no seq"),
        (b"hello\n\0\0\0\n".to_vec(), "not an audit record"),
        (b"not json\npartial".to_vec(), "not JSON either"),
        (vec![b'x'; 3 << 20], "no line break"),
        (vec![b'x'; (1 << 20) + 10], "longer than 1 MiB"),
        (
            [b"x\n".as_slice(), &vec![b'y'; (1 << 20) + 10], b"\n"].concat(),
            "longer than 1 MiB",
        ),
    ];
    for (content, why) in cases {
        std::fs::write(&path, &content).unwrap();
        let err = match start(&cfg(&path, 1 << 30), crate::metrics::Metrics::new()) {
            Ok(_) => panic!("started on {why}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("not a signgate audit log") && err.contains(why),
            "{why}: {err}"
        );
        // Nothing was appended or cut.
        assert_eq!(std::fs::read(&path).unwrap(), content);
        // And verify says what is wrong without panicking.
        assert!(matches!(
            check(std::slice::from_ref(&path)),
            Verdict::Broken { .. } | Verdict::Ok(_)
        ));
    }
    assert!(torn_files(dir.path()).is_empty());
}

#[test]
fn verify_never_panics_on_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.jsonl");
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        b"\n".to_vec(),
        b"[]\n1\n\"s\"\nnull\n".to_vec(),
        b"{\"seq\":-1,\"prev\":\"x\"}\n".to_vec(),
        b"{\"seq\":18446744073709551615,\"prev\":\"0\"}\n".to_vec(),
        format!("{{\"seq\":1,\"prev\":\"{GENESIS}\",\"record\":\"gap\",\"lost_from\":0,\"lost_to\":0,\"lost\":1}}\n").into_bytes(),
        format!("{{\"seq\":1,\"prev\":\"{GENESIS}\",\"record\":\"gap\",\"lost_from\":5,\"lost_to\":18446744073709551615,\"lost\":0}}\n").into_bytes(),
        format!("{{\"seq\":0,\"prev\":\"{GENESIS}\",\"record\":\"gap\",\"lost_from\":1,\"lost_to\":1,\"lost\":1}}\n").into_bytes(),
        format!("{{\"seq\":1,\"prev\":\"{GENESIS}\",\"record\":7}}\n").into_bytes(),
        format!("{{\"seq\":1,\"prev\":\"{GENESIS}\",\"record\":\"recovered\",\"torn_file\":\"../../etc/passwd\",\"torn_bytes\":1,\"torn_sha256\":\"x\"}}\n").into_bytes(),
        vec![0xff; 5000],
        vec![b'{'; (1 << 20) + 5],
    ];
    for c in cases {
        std::fs::write(&path, &c).unwrap();
        let _ = verify(std::slice::from_ref(&path), false).unwrap();
        let _ = verify(std::slice::from_ref(&path), true).unwrap();
        std::fs::write(head_path(&path), &c).unwrap();
        let _ = verify(std::slice::from_ref(&path), true).unwrap();
        std::fs::remove_file(head_path(&path)).unwrap();
    }
    let missing = verify(&[dir.path().join("nope")], false).unwrap_err().to_string();
    assert!(missing.contains("nope"), "{missing}");
}

#[tokio::test]
async fn without_the_head_file_the_end_is_reported_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_n(&cfg(&path, 1 << 30), 3).await;
    std::fs::remove_file(head_path(&path)).unwrap();
    let r = report(std::slice::from_ref(&path));
    assert_eq!((r.records, &r.head), (3, &HeadCheck::Missing));
    assert!(!r.is_clean());
    // An edited last record is still a chained one: only the head would see it.
    let mut ls = lines(&path);
    ls[2] = ls[2].replace("\"status\":200", "\"status\":201");
    std::fs::write(&path, ls.join("\n") + "\n").unwrap();
    assert_eq!(report(std::slice::from_ref(&path)).head, HeadCheck::Missing);
    std::fs::write(head_path(&path), b"garbage").unwrap();
    assert!(matches!(
        report(std::slice::from_ref(&path)).head,
        HeadCheck::Unreadable(_)
    ));
}

#[tokio::test]
async fn the_head_pins_its_record_even_with_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_n(&cfg(&path, 1 << 30), 3).await;
    let head = std::fs::read(head_path(&path)).unwrap();
    write_n(&cfg(&path, 1 << 30), 2).await;
    // An old head (as after a crash): the two records after it are reported.
    std::fs::write(head_path(&path), &head).unwrap();
    assert_eq!(
        report(std::slice::from_ref(&path)).head,
        HeadCheck::Behind { head_seq: 3, after: 2 }
    );
    // Rewriting the chain from seq 3 on is caught at seq 3.
    let ls = lines(&path);
    let mut prev = sha256_hex(ls[1].as_bytes());
    let mut out = ls[..2].to_vec();
    for l in &ls[2..] {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["status"] = 299.into();
        v["prev"] = prev.clone().into();
        let s = serde_json::to_string(&v).unwrap();
        prev = sha256_hex(s.as_bytes());
        out.push(s);
    }
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
    match check(&[path]) {
        Verdict::Broken { why, .. } => assert!(why.contains("seq 3"), "{why}"),
        ok => panic!("{ok:?}"),
    }
}

#[tokio::test]
async fn files_are_owner_only_and_a_new_directory_is_0700() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/sub/a.jsonl");
    write_n(&cfg(&path, 4096), 30).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    assert_eq!(mode(&dir.path().join("new/sub")), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&head_path(&path)), 0o600);
    assert!(rotated(&path, 1).exists());
    assert_eq!(mode(&rotated(&path, 1)), 0o600);
    // An existing directory and file keep their modes.
    let pre = dir.path().join("pre");
    std::fs::create_dir(&pre).unwrap();
    std::fs::set_permissions(&pre, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(pre.join("a.jsonl"), b"").unwrap();
    std::fs::set_permissions(pre.join("a.jsonl"), std::fs::Permissions::from_mode(0o640)).unwrap();
    write_n(&cfg(&pre.join("a.jsonl"), 4096), 1).await;
    assert_eq!(mode(&pre), 0o750);
    assert_eq!(mode(&pre.join("a.jsonl")), 0o640);
    // Only the probe's leftovers would be odd: there are none.
    assert!(!dir.path().join("new/sub/a.jsonl.probe").exists());
}

#[test]
fn redaction_matches_keys_as_a_server_decodes_them() {
    let keys: Arc<[String]> = vec!["card_number".to_string()].into();
    for (q, want) in [
        ("card_number=4111", "card_number=REDACTED"),
        ("CARD_NUMBER=4111", "CARD_NUMBER=REDACTED"),
        ("Card_Number=4111", "Card_Number=REDACTED"),
        ("card%5Fnumber=4111", "card%5Fnumber=REDACTED"),
        ("card%5fnumber=4111", "card%5fnumber=REDACTED"),
        ("%63ard_number=4111", "%63ard_number=REDACTED"),
        ("card_number[]=4111", "card_number[]=REDACTED"),
        ("card_number%5B%5D=4111", "card_number%5B%5D=REDACTED"),
        ("card_number%5b%5d=4111", "card_number%5b%5d=REDACTED"),
        ("CARD%5FNUMBER%5B%5D=4111", "CARD%5FNUMBER%5B%5D=REDACTED"),
        (
            "card_number[0]=4111&card_number[1]=5500",
            "card_number[0]=REDACTED&card_number[1]=REDACTED",
        ),
        ("a=1&card_number=4111&b=2", "a=1&card_number=REDACTED&b=2"),
        // Not the same key.
        ("card_numbers=4111", "card_numbers=4111"),
        ("card[number]=4111", "card[number]=4111"),
        ("xcard_number=4111", "xcard_number=4111"),
        ("card_number", "card_number"),
        // Broken escapes stay as they are and do not match.
        ("card%5_number=4111", "card%5_number=4111"),
        ("card_number%=4111", "card_number%=4111"),
        ("card_number%E2=4111", "card_number%E2=4111"),
        ("", ""),
    ] {
        assert_eq!(redact_query(q, &keys), want, "{q}");
    }
    // Configured keys are normalized the same way.
    let keys: Arc<[String]> = vec!["CARD_Number[]".to_string()].into();
    assert_eq!(redact_query("card_number=1", &keys), "card_number=REDACTED");
    assert_eq!(redact_query("card_number=1", &[]), "card_number=1");
}

#[tokio::test]
async fn a_path_that_is_no_regular_file_is_written_as_a_stream() {
    // /dev/null cannot be synced, cut or rotated (renaming it would be a
    // disaster): records go out as on stdout, and the log stays healthy.
    let mut c = cfg(Path::new("/dev/null"), 4096);
    c.queue = 8;
    let metrics = crate::metrics::Metrics::new();
    let (log, handle) = start(&c, metrics.clone()).unwrap();
    for i in 0..50 {
        log.reserve().await.unwrap().write(entry(i));
    }
    until("50 written", || counter(&metrics, "written") == 50).await;
    assert!(log.healthy());
    drop(log);
    handle.await.unwrap();
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(!Path::new("/dev/null.1").exists() && !Path::new("/dev/null.head").exists());
}

/// The line as `#[serde(flatten)]` wrote it before the writer serialized
/// it field by field: the bytes (and so the chain's hashes) are the same.
#[test]
fn a_line_has_the_bytes_of_the_flattened_form() {
    #[derive(serde::Serialize)]
    struct Flat<'a> {
        seq: u64,
        #[serde(flatten)]
        entry: &'a Entry,
        #[serde(skip_serializing_if = "Option::is_none")]
        prev: Option<&'a str>,
    }
    let full = Entry {
        route: None,
        reason: Some("upstream_timeout"),
        upstream_status: None,
        bytes_out: None,
        credential: None,
        secret_version: None,
        signature_fp: None,
        duplicate_key: Some("ORD-\"1\"\n₹".into()),
        fleet: Some("redis"),
        upstream_error: Some("upstream_timeout"),
        note: Some("INC-\"42\"".into()),
        amount: Some("105.50".into()),
        currency: Some("INR".into()),
        path: "/kwikpaisa/x?token=REDACTED&a=\u{7f}".into(),
        duration_ms: 0.1 + 0.2,
        client: "[2001:db8::1]:8443".parse().unwrap(),
        method: "PO\"ST\\".into(),
        ..entry(7)
    };
    // Every field of `Entry` is set in `full` (a field added to `Entry` but
    // not to `notes::Line` must fail here): count them in the Debug output.
    let fields = format!("{full:?}").matches(": ").count();
    let written = serde_json::to_value(&full).unwrap().as_object().unwrap().len();
    assert_eq!(written, fields, "set every field of Entry in `full`: {full:?}");
    let v4 = |a: &str| Entry {
        client: a.parse().unwrap(),
        ..entry(2)
    };
    for e in [entry(1), full, v4("10.0.255.0:65535"), v4("0.0.0.0:0")] {
        for prev in [None, Some(GENESIS)] {
            let line = notes::Line {
                seq: 42,
                entry: &e,
                prev,
            };
            let flat = Flat {
                seq: 42,
                entry: &e,
                prev,
            };
            let mut written = Vec::new();
            line.write_json(&mut written).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&flat).unwrap()
            );
        }
    }
}

/// `audit.batch_ms`: a batch waits that long after its first record for
/// more, then its records are written and synced together; none of them
/// counts as written before.
#[tokio::test]
async fn a_batch_waits_batch_ms_for_more_records_then_is_written_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut c = cfg(&path, 1 << 20);
    c.batch = Duration::from_millis(1500);
    let metrics = crate::metrics::Metrics::new();
    let (log, handle) = start(&c, metrics.clone()).unwrap();
    let first = Instant::now();
    log.reserve().await.unwrap().write(entry(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    log.reserve().await.unwrap().write(entry(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checked = first.elapsed();
    let (written, on_disk) = (counter(&metrics, "written"), lines(&path).len());
    if checked < Duration::from_millis(1400) {
        assert_eq!((written, on_disk), (0, 0), "written before the batch's window ended");
    }
    let mut seen = 0;
    until("the batch written", || {
        seen = counter(&metrics, "written");
        seen > 0
    })
    .await;
    assert_eq!(seen, 2, "the two records of one window are written together");
    assert!(
        first.elapsed() >= Duration::from_millis(1500),
        "written after {:?}",
        first.elapsed()
    );
    assert_eq!(lines(&path).len(), 2);
    drop(log);
    handle.await.unwrap();
}
