use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::{AuditConfig, AuditSink};

fn cfg(path: &Path, max_bytes: u64) -> AuditConfig {
    AuditConfig {
        sink: AuditSink::File(path.to_path_buf()),
        hash_chain: true,
        max_bytes,
        max_files: 5,
        queue: 64,
        wait: Duration::from_millis(200),
        redact_query_keys: vec!["token".into()],
    }
}

fn entry(i: usize) -> Entry {
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

fn lines(path: &Path) -> Vec<String> {
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
fn report(files: &[PathBuf]) -> Report {
    match check(files) {
        Verdict::Ok(r) => r,
        broken => panic!("{broken:?}"),
    }
}

/// A complete chain: its record count.
fn clean(files: &[PathBuf]) -> u64 {
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
