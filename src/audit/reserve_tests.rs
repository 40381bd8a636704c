//! The reservation through the writer: a full file system (simulated: the
//! top-up fails while writes into the reserved space still work) turns the
//! log unhealthy at once and loses no record of a request already admitted;
//! rotation gives the new file its reservation first and the old one's back.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::fault::{Fault, FAULT_NONE, FAULT_NO_FALLOCATE, FAULT_RESERVE};
use super::tests::{cfg, clean, counter, entry, faulty, until};
use super::{rotated, start_with};

const RESERVE: u64 = 64 * 1024;

/// Bytes allocated to `p` beyond its length.
fn allocated_past_end(p: &Path) -> i64 {
    let m = std::fs::metadata(p).unwrap();
    (m.blocks() * 512) as i64 - m.len() as i64
}

/// Whether this file system supports `fallocate` (else there is nothing to
/// check: the log works without a reservation).
fn fallocate_works(dir: &Path) -> bool {
    let f = std::fs::File::create(dir.join("fallocate-check")).unwrap();
    let ok = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 4096).is_ok();
    let _ = std::fs::remove_file(dir.join("fallocate-check"));
    if !ok {
        eprintln!("no fallocate on {}; skipped", dir.display());
    }
    ok
}

fn all_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=5).rev().map(|n| rotated(path, n)).filter(|p| p.exists()).collect();
    files.push(path.to_path_buf());
    files
}

#[tokio::test]
async fn a_full_file_system_refuses_at_once_and_loses_no_admitted_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    if !fallocate_works(dir.path()) {
        return;
    }
    let (log, handle, switch, metrics) = faulty(&cfg(&path, 1 << 30)).await;
    assert!(allocated_past_end(&path) >= RESERVE as i64);
    // Five requests admitted and on their way to the provider.
    let mut in_flight = Vec::new();
    for _ in 0..5 {
        in_flight.push(log.reserve().await.unwrap());
    }
    // The file system fills up; the next record is written into the
    // reserved space, and the top-up after it fails.
    switch.store(FAULT_RESERVE, Ordering::SeqCst);
    log.reserve().await.unwrap().write(entry(3));
    until("unhealthy", || !log.healthy()).await;
    assert_eq!(metrics.audit_healthy.get(), 0);
    let t = Instant::now();
    assert!(log.reserve().await.is_none(), "refused");
    assert!(t.elapsed() < Duration::from_millis(100), "refused at once");
    let problem = log.problem().unwrap();
    assert!(
        problem.contains("reserved ahead") && problem.contains("No space left on device"),
        "{problem}"
    );
    // Every request already admitted gets its record.
    for (i, slot) in in_flight.into_iter().enumerate() {
        slot.write(entry(10 + i));
    }
    until("9 written", || counter(&metrics, "written") == 9).await;
    assert_eq!(counter(&metrics, "failed"), 0);
    // The writer retries every second; still full.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!log.healthy());
    // Room again: healthy without a restart, and no gap anywhere.
    switch.store(FAULT_NONE, Ordering::SeqCst);
    until("healthy again", || log.healthy()).await;
    assert!(log.problem().is_none());
    log.reserve().await.unwrap().write(entry(20));
    drop(log);
    handle.await.unwrap();
    assert_eq!(metrics.audit_healthy.get(), 1);
    assert_eq!((counter(&metrics, "written"), counter(&metrics, "failed")), (10, 0));
    assert_eq!(clean(&[path]), 10);
}

#[tokio::test]
async fn rotation_reserves_the_new_file_first_and_gives_the_old_ones_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    if !fallocate_works(dir.path()) {
        return;
    }
    let c = cfg(&path, 4096);
    let (log, handle, switch, metrics) = faulty(&c).await;
    for i in 0..30 {
        log.reserve().await.unwrap().write(entry(i));
    }
    until("33 written", || counter(&metrics, "written") == 33).await;
    let files = all_files(&path);
    assert!(files.len() >= 3, "{files:?}");
    for f in &files[..files.len() - 1] {
        assert!(
            allocated_past_end(f) < 8192,
            "{}: its reservation was given back",
            f.display()
        );
    }
    assert!(allocated_past_end(&path) >= RESERVE as i64);
    assert!(!dir.path().join("a.jsonl.next").exists());

    // No room for the next file's reservation: the rotation is put off, the
    // log refuses new requests, and the records already promised go on
    // into the current file (past max_bytes) and its reservation.
    let mut in_flight = Vec::new();
    for _ in 0..12 {
        in_flight.push(log.reserve().await.unwrap());
    }
    switch.store(FAULT_RESERVE, Ordering::SeqCst);
    for (i, slot) in in_flight.into_iter().enumerate() {
        slot.write(entry(100 + i));
    }
    until("45 written", || counter(&metrics, "written") == 45).await;
    assert!(!log.healthy());
    assert!(
        std::fs::metadata(&path).unwrap().len() > 4096,
        "written on past max_bytes"
    );
    assert!(!dir.path().join("a.jsonl.next").exists());
    // Room again: the rotation is done, the log healthy.
    switch.store(FAULT_NONE, Ordering::SeqCst);
    until("healthy again", || log.healthy()).await;
    log.reserve().await.unwrap().write(entry(200));
    drop(log);
    handle.await.unwrap();
    assert_eq!(counter(&metrics, "failed"), 0);
    assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
    let files = all_files(&path);
    assert_eq!(
        clean(&files) as usize,
        files.iter().map(|f| super::tests::lines(f).len()).sum::<usize>()
    );
}

#[tokio::test]
async fn without_fallocate_the_log_works_as_without_a_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (fault, switch) = Fault::switch();
    switch.store(FAULT_NO_FALLOCATE, Ordering::SeqCst);
    let metrics = crate::metrics::Metrics::new();
    let (log, handle) = start_with(&cfg(&path, 4096), metrics.clone(), fault).unwrap();
    for i in 0..30 {
        log.reserve().await.unwrap().write(entry(i));
    }
    until("30 written", || counter(&metrics, "written") == 30).await;
    assert!(log.healthy());
    drop(log);
    handle.await.unwrap();
    assert!(allocated_past_end(&path) < 8192);
    assert!(!dir.path().join("a.jsonl.next").exists());
    assert_eq!(clean(&all_files(&path)), 30);
}
