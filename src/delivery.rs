//! The delivery worker: forwards stored events to each webhook's
//! `forward_to`, with `X-Signgate-Verified: 1`, the event key, id and the
//! original timestamp (never the provider's signature). A 2xx marks the event
//! delivered; anything else retries with exponential backoff and jitter, and
//! after `max_attempts` the event is parked as failed until `webhooks retry`.
//! Every attempt is counted and audited. Events survive restarts: the store
//! is the queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;
use rand::Rng as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::audit::Entry;
use crate::state::Shared;
use crate::upstream::Upstream;
use crate::webhook::store::{now_ms, now_secs, EventState, Store, StoredEvent};

/// How often the queue is looked at when nothing wakes the worker.
const TICK: Duration = Duration::from_millis(250);
/// First retry delay; doubles per attempt up to `MAX_BACKOFF`.
const BASE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// One delivery attempt may take this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often seen keys and old delivered events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Delay before attempt `attempts + 1`, with ±20 % jitter.
pub fn backoff(attempts: u32) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    let base = exp.min(MAX_BACKOFF).as_millis() as f64;
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_millis((base * jitter) as u64)
}

pub(crate) struct Worker {
    /// The current hooks (their `forward_to`), metrics, audit log, and the
    /// signal that an event was accepted.
    pub shared: Arc<Shared>,
    pub store: Arc<Store>,
    pub client: Upstream,
}

impl Worker {
    pub async fn run(self, cancel: CancellationToken) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.make_pending_due()).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(events = n, "pending webhook events from before the restart are due now")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "webhook inbox unreadable"),
            _ => {}
        }
        let mut last_prune = Instant::now();
        let wake: Arc<Notify> = self.shared.delivery_signal();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            let store = self.store.clone();
            let due = match tokio::task::spawn_blocking(move || store.due(now_ms(), 64)).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "webhook inbox unreadable");
                    continue;
                }
                Err(_) => continue,
            };
            for ev in due {
                tokio::select! {
                    _ = cancel.cancelled() => return, // still pending: delivered after restart
                    _ = self.attempt(ev) => {}
                }
            }
            self.update_gauges().await;
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                let window = self
                    .shared
                    .snapshot()
                    .webhooks
                    .iter()
                    .map(|h| h.config.dedup_window.as_secs())
                    .max()
                    .unwrap_or(0);
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || store.prune(window)).await;
            }
        }
    }

    async fn update_gauges(&self) {
        let store = self.store.clone();
        let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || store.pending_stats()).await else {
            return;
        };
        let m = self.shared.metrics();
        let now = now_secs();
        for hook in self.shared.snapshot().webhooks.iter() {
            let (n, oldest, failed) = stats
                .iter()
                .find(|s| s.webhook == hook.name())
                .map_or((0, now, 0), |s| (s.pending, s.oldest_pending.min(now), s.failed));
            m.webhook_queue_depth.with_label_values(&[hook.name()]).set(n as i64);
            m.webhook_oldest_pending
                .with_label_values(&[hook.name()])
                .set(now.saturating_sub(oldest) as f64);
            m.webhook_parked.with_label_values(&[hook.name()]).set(failed as i64);
        }
    }

    async fn attempt(&self, mut ev: StoredEvent) {
        let snap = self.shared.snapshot();
        let Some(hook) = snap.webhooks.iter().find(|h| h.name() == ev.webhook) else {
            ev.state = EventState::Failed;
            ev.last_error = Some("webhook no longer configured".into());
            self.save(ev).await;
            return;
        };
        let started = Instant::now();
        // Audited or not attempted: without a slot the event stays pending
        // (its attempt count unchanged) and is tried again later.
        let slot = match self.shared.audit() {
            Some(a) => a.reserve().await,
            None => None,
        };
        let Some(slot) = slot else {
            tracing::debug!(webhook = %ev.webhook, id = ev.id, "no audit slot; delivery postponed");
            ev.next_attempt_ms = now_ms() + BASE_BACKOFF.as_millis() as u64;
            self.save(ev).await;
            return;
        };
        let result = self.post(hook.config.forward_to.clone(), &ev).await;
        ev.attempts += 1;
        let (label, status) = match &result {
            Ok(status) if (200..300).contains(status) => {
                ev.state = EventState::Delivered;
                ev.delivered_at = Some(now_secs());
                ev.last_error = None;
                ("delivered", Some(*status))
            }
            other => {
                ev.last_error = Some(match other {
                    Ok(status) => format!("internal app answered {status}"),
                    Err(e) => e.clone(),
                });
                if ev.attempts >= hook.config.max_attempts {
                    ev.state = EventState::Failed;
                    tracing::warn!(webhook = %ev.webhook, id = ev.id, attempts = ev.attempts, "webhook delivery failed; parked (signgate webhooks retry)");
                    ("failed", other.as_ref().ok().copied())
                } else {
                    ev.next_attempt_ms = now_ms() + backoff(ev.attempts).as_millis() as u64;
                    ("retry", other.as_ref().ok().copied())
                }
            }
        };
        self.shared
            .metrics()
            .webhook_deliveries
            .with_label_values(&[hook.name(), label])
            .inc();
        let decision = if label == "delivered" {
            "delivered"
        } else {
            "delivery_failed"
        };
        slot.write(Entry {
            reason: (label != "delivered").then_some("delivery_failed"),
            status: status.unwrap_or(0),
            upstream_status: status,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            bytes_in: ev.body.len() as u64,
            duplicate_key: Some(ev.key.clone()),
            fleet: ev.dedup_local.then_some("local"),
            ..Entry::event(
                format!("webhook-event-{}", ev.id),
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                hook.name(),
                hook.config.forward_to.path().to_string(),
                decision,
            )
        });
        self.save(ev).await;
    }

    async fn save(&self, ev: StoredEvent) {
        let store = self.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.put(&ev)).await {
            tracing::error!(error = %e, "webhook delivery state could not be saved");
        }
    }

    async fn post(&self, uri: http::Uri, ev: &StoredEvent) -> Result<u16, String> {
        let mut req = Request::new(Full::new(Bytes::from(ev.body.clone())));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        let val = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"));
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-signgate-verified", HeaderValue::from_static("1"));
        h.insert("x-signgate-webhook", val(&ev.webhook));
        h.insert("x-signgate-event-id", HeaderValue::from(ev.id));
        h.insert("x-signgate-event-key", val(&ev.key));
        h.insert("x-signgate-timestamp", val(&ev.timestamp));
        if ev.dedup_local {
            // Accepted while the fleet's Redis could not answer: another
            // instance may deliver the same event (at least once).
            h.insert("x-signgate-dedup", HeaderValue::from_static("local"));
        }
        match self.client.send(req).await {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(format!("{} ({})", e.failure.kind(), e.detail)),
        }
    }
}
