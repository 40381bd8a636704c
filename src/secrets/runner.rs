//! The per-credential refresh task: the first poll before the gateway serves,
//! then polls on the source's schedule; installs new material, keeps the last
//! good credential when a poll fails (failing closed past `Source::max_stale`),
//! counts polls, and logs one line per state change, never per retry.
//! One task per credential, so at most one refresh is ever in flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Credential, CredentialSlot, LoadError, Poll, Source};

/// First poll now (so a gateway with its secrets present is ready at once),
/// then keep polling in the background as the source schedules.
pub(super) async fn start_source<S: Source>(slot: Arc<CredentialSlot>, mut source: S, cancel: CancellationToken) {
    let mut state = RunState::default();
    let ok = poll_once(&slot, &mut source, &mut state).await;
    let Some(first_wait) = next_wait(&slot, &source, &state, ok) else {
        return;
    };
    let wake = source.wake();
    tokio::spawn(async move {
        let mut wait = first_wait;
        let mut last_poll = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                // The credential's users saw the source fail: poll again now,
                // but never more often than once per `BACKOFF_START`.
                _ = woken(wake.as_deref()) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(last_poll + super::BACKOFF_START) => {}
                    }
                }
            }
            last_poll = Instant::now();
            let ok = poll_once(&slot, &mut source, &mut state).await;
            match next_wait(&slot, &source, &state, ok) {
                Some(w) => wait = w,
                None => return,
            }
        }
    });
}

/// Resolves when `wake` is signalled; never without one.
async fn woken(wake: Option<&tokio::sync::Notify>) {
    match wake {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

#[derive(Default)]
struct RunState {
    failures: u32,
    /// Logged once per state change, not once per retry.
    last_logged_error: Option<String>,
    /// The last poll that succeeded (for `Source::max_stale`).
    last_success: Option<Instant>,
    /// Set while the slot is expired (stale beyond the maximum age).
    stale_note: Option<String>,
}

async fn poll_once<S: Source>(slot: &CredentialSlot, source: &mut S, state: &mut RunState) -> bool {
    let ok = poll_and_install(slot, source, state).await;
    let counter = if ok { &slot.refresh_ok } else { &slot.refresh_error };
    counter.fetch_add(1, Ordering::Relaxed);
    if source.signs_remotely() {
        slot.remote_down.store(!ok, Ordering::Relaxed);
    }
    if ok {
        state.last_success = Some(Instant::now());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        slot.last_ok.store(now.as_secs().max(1), Ordering::Relaxed);
    } else {
        expire_if_stale(slot, source, state);
    }
    ok
}

/// When the last good material is older than the source allows, fail closed.
/// Checked after a failed poll only: a healthy source is never expired by a
/// late timer.
fn expire_if_stale<S: Source>(slot: &CredentialSlot, source: &mut S, state: &mut RunState) {
    let (Some(max), Some(last)) = (source.max_stale(), state.last_success) else {
        return;
    };
    if !slot.is_loaded() || last.elapsed() < max {
        return;
    }
    let note = format!(
        "not refreshed for more than {} s (vault_max_stale_secs), failing closed",
        max.as_secs()
    );
    let why = format!("{note}: {}", slot.problem().unwrap_or_default());
    tracing::error!(credential = %slot.name, error = %why, "credential expired");
    slot.expire(why);
    source.forget();
    state.stale_note = Some(note);
}

/// The source's schedule, but while polls fail with a loaded credential and a
/// maximum age, wake up no later than when that age is reached.
fn next_wait<S: Source>(slot: &CredentialSlot, source: &S, state: &RunState, ok: bool) -> Option<Duration> {
    let wait = source.next_poll(ok, state.failures)?;
    match (ok, source.max_stale(), state.last_success) {
        (false, Some(max), Some(last)) if slot.is_loaded() => {
            Some(wait.min((last + max).saturating_duration_since(Instant::now())))
        }
        _ => Some(wait),
    }
}

async fn poll_and_install<S: Source>(slot: &CredentialSlot, source: &mut S, state: &mut RunState) -> bool {
    match source.poll().await {
        Ok(Poll::Changed(material)) => match Credential::from_material(&slot.name, &material) {
            Ok(c) => {
                tracing::info!(credential = %slot.name, version = ?c.version(), "credential loaded");
                slot.install(c);
                state.failures = 0;
                state.last_logged_error = None;
                state.stale_note = None;
                true
            }
            Err(e) => {
                record_failure(slot, state, e);
                false
            }
        },
        Ok(Poll::Unchanged) => {
            if state.failures > 0 {
                tracing::info!(credential = %slot.name, "credential source healthy again");
            }
            state.failures = 0;
            state.last_logged_error = None;
            if slot.is_loaded() {
                slot.problem.store(Arc::new(None));
            }
            true
        }
        Err(e) => {
            record_failure(slot, state, e);
            false
        }
    }
}

fn record_failure(slot: &CredentialSlot, state: &mut RunState, e: LoadError) {
    state.failures = state.failures.saturating_add(1);
    let msg = e.to_string();
    if state.last_logged_error.as_deref() != Some(msg.as_str()) {
        if slot.is_loaded() {
            tracing::warn!(credential = %slot.name, error = %msg, "credential refresh failed; still signing with the last good version");
        } else {
            tracing::warn!(credential = %slot.name, error = %msg, "credential unavailable");
        }
        state.last_logged_error = Some(msg.clone());
    }
    match &state.stale_note {
        Some(note) => slot.fail(format!("{note}: {msg}")),
        None => slot.fail(msg),
    }
}
