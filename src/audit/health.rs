//! Whether requests are admitted: the flag every `AuditLog` clone reads
//! ([`Health`]) and the writer's side of it ([`State`]): a failed write
//! (records are lost until a write works again and the gap is recorded) or
//! a short reservation (records are still written; new requests are not
//! admitted until the reservation can be made again).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::metrics::Metrics;

/// Whether requests are admitted, shared between the writer and every
/// `AuditLog` clone.
pub(super) struct Health {
    pub healthy: AtomicBool,
    /// What failed, while unhealthy.
    pub problem: ArcSwapOption<String>,
    /// Records lost since the last written one (and their first seq).
    pub lost: AtomicU64,
    pub lost_from: AtomicU64,
}

impl Health {
    pub fn new() -> Health {
        Health {
            healthy: AtomicBool::new(true),
            problem: ArcSwapOption::empty(),
            lost: AtomicU64::new(0),
            lost_from: AtomicU64::new(0),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// What is wrong, while unhealthy: for readiness and the admin API.
    pub fn problem(&self) -> Option<String> {
        if self.healthy() {
            return None;
        }
        let what = self
            .problem
            .load_full()
            .map_or_else(|| "the audit log is not writable".to_string(), |p| p.to_string());
        let lost = self.lost.load(Ordering::Acquire);
        let from = self.lost_from.load(Ordering::Acquire);
        Some(if lost == 0 {
            format!("{what}; requests are refused until it is writable again (retried every second)")
        } else {
            format!(
                "{what}; {lost} audit record(s) lost (seq {from}-{}); requests are refused until it is writable again (retried every second)",
                from + lost - 1
            )
        })
    }
}

/// The writer's side: why the log is unhealthy, and publishing it.
pub(super) struct State {
    /// A write failed: records are lost until a write works again (and the
    /// gap is recorded).
    pub broken: bool,
    /// What first failed since the log was last healthy.
    pub failure: Option<String>,
    /// The reservation could not be kept: requests are refused, the records
    /// of those already admitted are still written.
    pub short: Option<String>,
    /// Where the log is (for messages).
    log: String,
    shared: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl State {
    pub fn new(log: String, shared: Arc<Health>, metrics: Arc<Metrics>) -> State {
        State {
            broken: false,
            failure: None,
            short: None,
            log,
            shared,
            metrics,
        }
    }

    pub fn healthy(&self) -> bool {
        self.shared.healthy()
    }

    /// A write failed: turn unhealthy (requests are refused from now on).
    pub fn fail(&mut self, e: &io::Error) {
        let what = format!("writing the audit log ({}) failed: {e}", self.log);
        self.failure.get_or_insert_with(|| what.clone());
        if self.broken {
            tracing::debug!(error = %e, "audit log write failed again");
            return;
        }
        self.broken = true;
        self.shared.problem.store(Some(Arc::new(what)));
        self.publish();
        tracing::error!(
            error = %e,
            log = %self.log,
            "audit log write failed: requests are refused until it is writable again (retried every second)"
        );
    }

    /// The reservation (`want` bytes past the end of the log) could not be
    /// made: turn unhealthy at once, while the records of requests already
    /// admitted go on into what is reserved.
    pub fn short(&mut self, e: &io::Error, want: u64) {
        let what = format!(
            "no room to keep {want} bytes reserved ahead of the audit log ({}): {e}",
            self.log
        );
        if self.short.is_none() {
            if !self.broken {
                self.shared.problem.store(Some(Arc::new(what.clone())));
            }
            tracing::error!(
                error = %e,
                log = %self.log,
                reserve_bytes = want,
                "audit log: no room for its reservation: requests are refused until there is (retried every second); \
                 the records of requests already admitted are written into the reserved space"
            );
        }
        self.short = Some(what);
        self.publish();
    }

    /// The reservation is made again.
    pub fn reserved(&mut self) {
        if self.short.take().is_some() {
            self.publish();
        }
    }

    /// A write worked again and the gap is recorded.
    pub fn repaired(&mut self) {
        self.failure = None;
        if self.broken {
            self.broken = false;
            self.publish();
        }
    }

    /// `count` records from `from` on are lost so far, `new` of them just now.
    pub fn lost(&self, from: u64, count: u64, new: u64) {
        self.shared.lost_from.store(from, Ordering::Release);
        self.shared.lost.store(count, Ordering::Release);
        self.metrics.audit_records.with_label_values(&["failed"]).inc_by(new);
    }

    /// The gap record is written.
    pub fn gap_recorded(&self) {
        self.shared.lost.store(0, Ordering::Release);
    }

    /// Publish whether requests are admitted: neither a failed write nor a
    /// short reservation.
    fn publish(&mut self) {
        let ok = !self.broken && self.short.is_none();
        if ok == self.healthy() {
            return;
        }
        if ok {
            self.shared.problem.store(None);
            self.shared.healthy.store(true, Ordering::Release);
            self.metrics.audit_healthy.set(1);
            tracing::info!(log = %self.log, "audit log writable again; requests are accepted");
        } else {
            self.shared.healthy.store(false, Ordering::Release);
            self.metrics.audit_healthy.set(0);
        }
    }
}
