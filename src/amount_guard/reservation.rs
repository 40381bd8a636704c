//! A reservation of a payout's share of its day, and how it is settled:
//! by the request's outcome ([`Reservation::finish`]), or from `Drop` when
//! the request ends early (released if nothing was sent, kept as unknown
//! once it may have been), including while the reservation itself is on
//! its way to the store.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{shared, AmountGuard, Backend, Bucket, LocalTotals, StoreError, Verdict};
use crate::dedup::Outcome;

impl AmountGuard {
    pub(super) async fn reserve_local(
        &self,
        store: &Arc<LocalTotals>,
        bucket: &Bucket,
        amount: u64,
    ) -> Result<(Verdict, String), ()> {
        let (s, b, route, caps) = (store.clone(), bucket.clone(), self.inner.route.clone(), self.caps());
        let mut pending = PendingLocal {
            guard: self.clone(),
            bucket: bucket.clone(),
            amount,
            handle: Some(
                store
                    .tasks()
                    .spawn_blocking(move || s.reserve(&route, &b, amount, caps)),
            ),
        };
        let joined = match pending.handle.as_mut() {
            Some(h) => h.await,
            None => return Err(()),
        };
        pending.handle = None;
        match joined {
            Ok(Ok(verdict)) => Ok((verdict, String::new())),
            Ok(Err(e)) => {
                tracing::error!(route = %self.inner.route, error = %e, "amount guard: the totals cannot be written; refusing payouts (503)");
                Err(())
            }
            Err(e) => {
                tracing::error!(route = %self.inner.route, error = %e, "amount guard: a reservation failed");
                Err(())
            }
        }
    }

    /// Apply a settlement and count it (blocking or through Redis).
    pub(super) async fn settle(&self, bucket: Bucket, amount: u64, token: String, outcome: Outcome) {
        self.inner.counters.settled(outcome);
        match &self.inner.backend {
            Backend::Local(store) => {
                let (s, route) = (store.clone(), self.inner.route.clone());
                // Runs to its end even if this future is dropped.
                let job = store
                    .tasks()
                    .spawn_blocking(move || s.settle(&route, &bucket, amount, outcome));
                match job.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(route = %self.inner.route, ?outcome, error = %e, "amount guard: a settlement could not be written; the total stays high")
                    }
                    Err(e) => {
                        tracing::error!(route = %self.inner.route, ?outcome, error = %e, "amount guard: a settlement failed")
                    }
                }
            }
            Backend::Fleet(fleet) => shared::settle(self, fleet, &bucket, &token, outcome).await,
        }
    }

    /// Settle from `Drop`: the work is spawned (tracked, so shutdown waits).
    fn settle_detached(&self, bucket: Bucket, amount: u64, token: String, outcome: Outcome) {
        if tokio::runtime::Handle::try_current().is_ok() {
            let tasks = match &self.inner.backend {
                Backend::Local(store) => store.tasks().clone(),
                Backend::Fleet(fleet) => fleet.tasks().clone(),
            };
            let guard = self.clone();
            tasks.spawn(async move { guard.settle(bucket, amount, token, outcome).await });
            return;
        }
        // No runtime (a drop at the very end of the process): a local store
        // is still written; in Redis the token's expiry leaves it counted.
        self.inner.counters.settled(outcome);
        if let Backend::Local(store) = &self.inner.backend {
            if let Err(e) = store.settle(&self.inner.route, &bucket, amount, outcome) {
                tracing::error!(route = %self.inner.route, error = %e, "amount guard: a settlement could not be written");
            }
        }
    }
}

/// A local reservation on its way (in the blocking pool): dropped before
/// its answer, the reservation is released once it lands.
struct PendingLocal {
    guard: AmountGuard,
    bucket: Bucket,
    amount: u64,
    handle: Option<JoinHandle<Result<Verdict, StoreError>>>,
}

impl Drop for PendingLocal {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let (guard, bucket, amount) = (self.guard.clone(), self.bucket.clone(), self.amount);
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if let Backend::Local(store) = &guard.inner.backend {
            store.tasks().clone().spawn(async move {
                if let Ok(Ok(Verdict::Reserved)) = handle.await {
                    guard.inner.counters.allowed.inc();
                    guard.settle(bucket, amount, String::new(), Outcome::Failed).await;
                }
            });
        }
    }
}

struct Held {
    guard: AmountGuard,
    bucket: Bucket,
    amount: u64,
    /// `[fleet]`: the reservation's token in Redis.
    token: String,
}

/// A payout's reserved share of its day. Settled by [`Reservation::finish`];
/// if dropped before that, released when nothing was sent and kept (as
/// unknown) once the request may have reached the provider.
pub struct Reservation {
    held: Option<Held>,
    sent: bool,
}

impl Reservation {
    pub(super) fn new(guard: AmountGuard, bucket: Bucket, amount: u64, token: String) -> Reservation {
        Reservation {
            held: Some(Held {
                guard,
                bucket,
                amount,
                token,
            }),
            sent: false,
        }
    }

    /// From now on bytes may reach the provider: a drop means "unknown".
    pub fn sending(&mut self) {
        self.sent = true;
    }

    /// Settle by the outcome; done when this returns (a fleet settlement
    /// Redis cannot take now is retried in the background).
    pub async fn finish(mut self, outcome: Outcome) {
        if let Some(h) = self.held.take() {
            h.guard.settle(h.bucket, h.amount, h.token, outcome).await;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            let outcome = if self.sent { Outcome::Unknown } else { Outcome::Failed };
            h.guard.settle_detached(h.bucket, h.amount, h.token, outcome);
        }
    }
}
