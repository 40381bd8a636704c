//! Taking a slot of a bounded resource (a semaphore permit) within a time
//! limit, without arming a timer when a slot is free: the common case on
//! the request path (the audit queue, a route's `max_inflight`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why no slot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// None freed up within the wait.
    TimedOut,
    /// The semaphore was closed.
    Closed,
}

/// A free slot at once; otherwise wait up to `wait` for one. The waiting
/// future (timer included) is boxed: only a request that waits carries it.
pub(crate) async fn acquire_within(sem: &Arc<Semaphore>, wait: Duration) -> Result<OwnedSemaphorePermit, NoSlot> {
    match sem.clone().try_acquire_owned() {
        Ok(permit) => Ok(permit),
        Err(_) => match Box::pin(tokio::time::timeout(wait, sem.clone().acquire_owned())).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(NoSlot::Closed),
            Err(_) => Err(NoSlot::TimedOut),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_free_slot_at_once_a_full_one_after_the_wait_a_closed_one_never() {
        let sem = Arc::new(Semaphore::new(1));
        let held = acquire_within(&sem, Duration::from_secs(5)).await.unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(
            acquire_within(&sem, Duration::from_millis(50)).await.err(),
            Some(NoSlot::TimedOut)
        );
        assert!(t0.elapsed() >= Duration::from_millis(50));
        drop(held);
        assert!(acquire_within(&sem, Duration::from_millis(50)).await.is_ok());
        sem.close();
        assert_eq!(
            acquire_within(&sem, Duration::from_millis(50)).await.err(),
            Some(NoSlot::Closed)
        );
    }
}
