//! What a running gateway's stages share, below all of them: the immutable
//! [`Snapshot`] built from one configuration (swapped whole on reload), the
//! metrics, the audit log, the webhook inbox, the route switches and the
//! readiness flags, held together in [`Shared`]. The composition root
//! (`app`) builds it; each stage gets the handle it needs and imports nothing
//! above this module. Also the typed answers of a readiness check and of a
//! reload.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::allowlist::Allowlist;
use crate::amount_guard::{AmountGuard, Backend, LocalTotals};
use crate::audit::AuditLog;
use crate::certs::CertReload;
use crate::config::Config;
use crate::config::RouteCredential;
use crate::dedup::{DurableStore, Guard};
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::ratelimit::Limits;
use crate::reflect::Reflections;
use crate::router::{Kept, Route, RouteSlots, Router};
use crate::secrets::{Credential, CredentialSlot, CredentialStore, Unavailable};
use crate::switch::Switches;
use crate::trace::Tracer;
use crate::upstream::Upstream;
use crate::webhook::store::Store;
use crate::webhook::Hook;

/// Beyond the request's own timers, how long an in-flight duplicate-guard
/// claim lives in Redis before it expires on its own.
const CLAIM_SLACK: Duration = Duration::from_secs(10);
/// Beyond that, how long an amount reservation's token waits in Redis for
/// its settlement (retried meanwhile) before it expires and stays counted.
const AMOUNT_TOKEN_SLACK: Duration = Duration::from_secs(60);

/// Everything derived from one configuration; swapped whole, never edited.
pub(crate) struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub webhooks: Vec<Arc<Hook>>,
    pub access: Allowlist,
    pub upstream: Upstream,
    pub credentials: CredentialStore,
    pub limits: Limits,
    /// Stops this snapshot's credential refreshers once it is replaced by a
    /// snapshot with other credentials.
    pub credentials_cancel: CancellationToken,
}

/// A configuration that names something the snapshot cannot resolve
/// (validation makes this unreachable; kept typed rather than panicking).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("{what} {name}: unknown scheme {scheme}")]
    UnknownScheme {
        what: &'static str,
        name: String,
        scheme: String,
    },
    #[error("{what} {name}: unknown credential {credential}")]
    UnknownCredential {
        what: &'static str,
        name: String,
        credential: String,
    },
    /// The state database could not give a route its duplicate-guard claims.
    #[error("{0}")]
    State(String),
    #[error("route {route}: amount_guard needs the state database under [state].dir, opened at start-up: restart the gateway")]
    NoAmountStore { route: String },
}

/// Where a snapshot's routes keep what outlives it: the fleet's Redis, the
/// state database under `[state].dir` (the duplicate guard's claims), the
/// amount guard's totals on this host, and the metrics their counters live in.
#[derive(Clone, Copy)]
pub(crate) struct Backing<'a> {
    pub fleet: Option<&'a Arc<Fleet>>,
    pub state: Option<&'a Arc<redb::Database>>,
    pub amounts: Option<&'a Arc<LocalTotals>>,
    pub metrics: &'a Metrics,
}

impl Snapshot {
    /// Resolve routes and webhooks against schemes and credentials. With
    /// `previous`, a route whose duplicate-guard settings did not change keeps
    /// its guard's memory (a reload must not forget in-flight payouts); the
    /// amount guard's totals live in `backing` (on disk or in Redis), keyed
    /// by route name, so every snapshot sees the same.
    pub fn build(
        config: &Config,
        credentials: CredentialStore,
        credentials_cancel: CancellationToken,
        upstream: Upstream,
        previous: Option<&Snapshot>,
        backing: Backing<'_>,
    ) -> Result<Snapshot, BuildError> {
        let (fleet, state) = (backing.fleet, backing.state);
        let schemes: BTreeMap<&str, Arc<crate::sign::Scheme>> = config
            .schemes
            .iter()
            .map(|(n, s)| (n.as_str(), Arc::new(s.clone())))
            .collect();
        let scheme = |what: &'static str, name: &str, scheme: &str| {
            schemes.get(scheme).cloned().ok_or_else(|| BuildError::UnknownScheme {
                what,
                name: name.to_string(),
                scheme: scheme.to_string(),
            })
        };
        let slot = |what: &'static str, name: &str, credential: &str| {
            credentials
                .slot(credential)
                .cloned()
                .ok_or_else(|| BuildError::UnknownCredential {
                    what,
                    name: name.to_string(),
                    credential: credential.to_string(),
                })
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let old = previous.and_then(|p| p.router.by_name(&r.name));
            let duplicates = old
                .filter(|old| {
                    old.config.duplicate_key == r.duplicate_key
                        && old.config.duplicate_window == r.duplicate_window
                        && old.config.duplicate_capacity == r.duplicate_capacity
                })
                .and_then(|old| old.duplicates.clone());
            // Without `[fleet]`, a route's claims live in the state database
            // too, so that a restart does not forget them (dedup::durable).
            let duplicates = match (duplicates, &r.duplicate_key, fleet, state) {
                (None, Some(_), None, Some(db)) => Some(Guard::Local(Arc::new(
                    DurableStore::load(db.clone(), &r.name, r.duplicate_window, r.duplicate_capacity)
                        .map_err(BuildError::State)?,
                ))),
                (kept, ..) => kept,
            };
            let kept = Kept {
                duplicates,
                cooldown: old.map(|o| o.cooldown.clone()),
            };
            // An in-flight claim lives as long as its request can: the
            // queue, the exchange and its one retry, and some slack.
            let claim_ttl = r.queue_timeout + config.egress.request_timeout * 2 + CLAIM_SLACK;
            let amounts = match &r.amount_guard {
                None => None,
                Some(g) => {
                    let store = match (fleet, backing.amounts) {
                        (Some(f), _) => Backend::Fleet(f.clone()),
                        (None, Some(s)) => Backend::Local(s.clone()),
                        (None, None) => return Err(BuildError::NoAmountStore { route: r.name.clone() }),
                    };
                    // An unsettled reservation's token outlives its request.
                    let token_ttl = claim_ttl + AMOUNT_TOKEN_SLACK;
                    Some(AmountGuard::new(&r.name, g.clone(), store, backing.metrics, token_ttl))
                }
            };
            let slots = match &r.credential {
                RouteCredential::One(c) => RouteSlots::One(slot("route", &r.name, c)?),
                RouteCredential::ByCaller(rules) => RouteSlots::ByCaller(
                    rules
                        .iter()
                        .map(|rule| Ok((rule.caller.clone(), slot("route", &r.name, &rule.credential)?)))
                        .collect::<Result<_, BuildError>>()?,
                ),
            };
            routes.push(Arc::new(Route::new(
                r.clone(),
                scheme("route", &r.name, &r.scheme)?,
                slots,
                kept,
                fleet.map(|f| (f, claim_ttl)),
                amounts,
                backing.metrics,
            )));
        }
        let mut webhooks = Vec::with_capacity(config.webhooks.len());
        for w in &config.webhooks {
            webhooks.push(Arc::new(Hook {
                allow: w.allow.as_deref().map(Allowlist::new),
                scheme: scheme("webhook", &w.name, &w.scheme)?,
                credential: slot("webhook", &w.name, &w.credential)?,
                config: w.clone(),
            }));
        }
        Ok(Snapshot {
            webhooks,
            config: Arc::new(config.clone()),
            credentials_cancel,
            router: Router::new(routes),
            access: Allowlist::new(&config.access.allow),
            upstream,
            credentials,
            limits: match fleet {
                // Used only while Redis cannot answer: this instance's share.
                Some(f) => Limits::new(&crate::ratelimit::share_config(&config.limits, f.expected_instances())),
                None => Limits::new(&config.limits),
            },
        })
    }

    /// How long the outbound signatures of `cred` must be remembered: the
    /// longest `tolerance_secs` of the webhooks whose secret (current, or
    /// the one a rotation just replaced) is `cred`'s, whatever their
    /// credentials' names; `None` when no webhook verifies with it.
    pub fn reflect_window(&self, cred: &Credential) -> Option<Duration> {
        self.webhooks
            .iter()
            .filter(|h| slot_holds(&h.credential, cred))
            .map(|h| h.config.tolerance)
            .max()
    }

    /// Whether `hook`'s secret also signs outbound requests (a route's
    /// credential holds it): its webhooks can be reflections.
    pub fn hook_shares_secret(&self, hook: &Hook) -> bool {
        self.router.routes().any(|r| {
            r.credential.slots().any(|slot| {
                slot.get().is_ok_and(|c| slot_holds(&hook.credential, &c))
                    || slot.previous().is_some_and(|(c, _)| slot_holds(&hook.credential, &c))
            })
        })
    }

    /// The webhooks whose secret also signs outbound requests, by name
    /// (`signgate_webhook_secret_shared`, the start-up and reload warning).
    pub fn shared_secret_hooks(&self) -> Vec<&Arc<Hook>> {
        self.webhooks.iter().filter(|h| self.hook_shares_secret(h)).collect()
    }

    pub fn webhook_for(&self, path: &str) -> Option<&Arc<Hook>> {
        self.webhooks.iter().find(|h| h.config.match_path == path)
    }
}

/// Whether `slot`'s current or previous credential holds `cred`'s secret.
fn slot_holds(slot: &CredentialSlot, cred: &Credential) -> bool {
    slot.get().is_ok_and(|c| c.same_secret(cred)) || slot.previous().is_some_and(|(c, _)| c.same_secret(cred))
}

/// One reason the gateway is not ready (the `/readyz` body lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// Shutdown has begun: load balancers should stop sending.
    Draining,
    /// The traffic listener is not accepting yet.
    NotAccepting,
    /// A credential a route signs with cannot sign.
    Credential(Unavailable),
    /// The audit log cannot write: requests are refused (fail closed).
    Audit(String),
    /// The egress-IP self-check failed or saw another address than
    /// `egress.expect_source_ip` (traffic is not blocked).
    EgressSourceIp(EgressCheck),
}

/// The last egress-IP self-check: what was expected, what the echo endpoint
/// saw (if it answered), and when they differ or it failed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EgressCheck {
    pub expected: std::net::IpAddr,
    pub seen: Option<std::net::IpAddr>,
    /// `None`: `seen` is `expected`.
    pub problem: Option<String>,
}

impl Serialize for NotReady {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(None)?;
        match self {
            NotReady::Draining => {
                m.serialize_entry("what", "draining")?;
                m.serialize_entry("detail", "the gateway is shutting down")?;
            }
            NotReady::NotAccepting => {
                m.serialize_entry("what", "listener")?;
                m.serialize_entry("detail", "the traffic listener is not accepting yet")?;
            }
            NotReady::Credential(why) => {
                m.serialize_entry("what", "credential")?;
                m.serialize_entry("credential", &why.credential)?;
                m.serialize_entry("detail", &why.reason)?;
            }
            NotReady::Audit(why) => {
                m.serialize_entry("what", "audit")?;
                m.serialize_entry("detail", why)?;
            }
            NotReady::EgressSourceIp(check) => {
                m.serialize_entry("what", "egress_source_ip")?;
                m.serialize_entry("expected", &check.expected.to_string())?;
                m.serialize_entry("seen", &check.seen.map(|ip| ip.to_string()))?;
                m.serialize_entry("detail", check.problem.as_deref().unwrap_or_default())?;
            }
        }
        m.end()
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadSummary {
    pub routes: usize,
    pub credentials: usize,
    pub credentials_reloaded: bool,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} route(s), {} credential(s){}",
            self.routes,
            self.credentials,
            if self.credentials_reloaded {
                " (credentials reloaded)"
            } else {
                ""
            }
        )
    }
}

/// Why a reload was rejected; the running configuration keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("this gateway was not started from a file; nothing to reload")]
    NoConfigFile,
    /// The new file does not validate (every error, as `signgate check` prints them).
    #[error("{0}")]
    Invalid(String),
    #[error("{} changed: these settings are bound at start-up and need a restart; nothing was applied", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    #[error("egress: {0}")]
    Egress(String),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// What applying a configuration file did.
pub(crate) type ReloadResult = Result<ReloadSummary, ReloadError>;

/// The answer to one reload request: the configuration, and every
/// certificate whose files had new contents (read again by every reload).
#[derive(Debug, Clone)]
pub(crate) struct ReloadReport {
    pub config: ReloadResult,
    pub certificates: Vec<CertReload>,
}

impl ReloadReport {
    fn shutting_down() -> ReloadReport {
        ReloadReport {
            config: Err(ReloadError::ShuttingDown),
            certificates: Vec::new(),
        }
    }
}

/// Asks the composition root to reload (admin `POST /reload`); the stage
/// that asks never builds a snapshot itself.
#[derive(Clone)]
pub(crate) struct ReloadHandle(mpsc::Sender<oneshot::Sender<ReloadReport>>);

impl ReloadHandle {
    pub fn new() -> (ReloadHandle, mpsc::Receiver<oneshot::Sender<ReloadReport>>) {
        let (tx, rx) = mpsc::channel(4);
        (ReloadHandle(tx), rx)
    }

    pub async fn reload(&self) -> ReloadReport {
        let (tx, rx) = oneshot::channel();
        if self.0.send(tx).await.is_err() {
            return ReloadReport::shutting_down();
        }
        rx.await.unwrap_or_else(|_| ReloadReport::shutting_down())
    }
}

/// The shared state of a running gateway (see the module doc).
pub(crate) struct Shared {
    snapshot: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Taken away at shutdown so the writer can flush and finish.
    audit: ArcSwapOption<AuditLog>,
    /// The durable webhook inbox (when webhooks are configured).
    inbox: Option<Arc<Store>>,
    /// The state database under `[state].dir`, when opened at start-up
    /// (the inbox, the duplicate guard's claims or the reflection memory
    /// need it, or it exists).
    state_db: Option<Arc<redb::Database>>,
    /// Wakes the delivery worker when an event arrives.
    delivery: Arc<Notify>,
    /// Set once the traffic listener is bound and accepting.
    accepting: AtomicBool,
    /// Set as soon as shutdown starts.
    draining: AtomicBool,
    /// Upstream exchanges, which finish even when their client goes away;
    /// shutdown waits for them before closing the audit log.
    exchanges: TaskTracker,
    /// The signatures this gateway sent, refused when they come back as webhooks.
    reflections: Arc<Reflections>,
    /// Request traces (`[tracing]`, bound at start-up); `None`: not traced.
    tracer: Option<Arc<Tracer>>,
    /// `[fleet]`: the state shared with the other instances (bound at start-up).
    fleet: Option<Arc<Fleet>>,
    /// The amount guard's totals on this host: tables of the state
    /// database, whenever it is open (used by routes with `amount_guard`
    /// and no `[fleet]`).
    amounts: Option<Arc<LocalTotals>>,
    /// The last egress-IP self-check (`None`: none made yet).
    egress_check: ArcSwapOption<EgressCheck>,
    /// The routes' kill switches (outside the snapshot: a reload keeps them).
    switches: Arc<Switches>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)] // the composition root's parts, each built once in `app`
    pub fn new(
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        inbox: Option<Arc<Store>>,
        state_db: Option<Arc<redb::Database>>,
        amounts: Option<Arc<LocalTotals>>,
        reflections: Arc<Reflections>,
        fleet: Option<Arc<Fleet>>,
        tracer: Option<Arc<Tracer>>,
        switches: Arc<Switches>,
    ) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            audit: ArcSwapOption::from_pointee(audit),
            inbox,
            state_db,
            delivery: Arc::new(Notify::new()),
            accepting: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            exchanges: TaskTracker::new(),
            reflections,
            fleet,
            amounts,
            egress_check: ArcSwapOption::empty(),
            tracer,
            switches,
        }
    }

    /// The routes' kill switches.
    pub fn switches(&self) -> &Arc<Switches> {
        &self.switches
    }

    /// The amount guard's totals on this host, when the state database is open.
    pub fn amounts(&self) -> Option<&Arc<LocalTotals>> {
        self.amounts.as_ref()
    }

    /// What a snapshot built now keeps its routes' state in.
    pub fn backing(&self) -> Backing<'_> {
        Backing {
            fleet: self.fleet.as_ref(),
            state: self.state_db.as_ref(),
            amounts: self.amounts.as_ref(),
            metrics: &self.metrics,
        }
    }

    /// The fleet's shared state, with `[fleet]`.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// The current snapshot; a request keeps the one it started with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn replace_snapshot(&self, next: Snapshot) {
        self.snapshot.store(Arc::new(next));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The audit log, or `None` once shutdown has closed it.
    pub fn audit(&self) -> Option<Arc<AuditLog>> {
        self.audit.load_full()
    }

    /// Close the audit queue (shutdown): the writer flushes and exits once
    /// the last reserved slot is used.
    pub fn close_audit(&self) {
        self.audit.store(None);
    }

    pub fn inbox(&self) -> Option<&Arc<Store>> {
        self.inbox.as_ref()
    }

    /// The state database, when it was opened at start-up.
    pub fn state_db(&self) -> Option<&Arc<redb::Database>> {
        self.state_db.as_ref()
    }

    /// Tell the delivery worker there is work.
    pub fn wake_delivery(&self) {
        self.delivery.notify_one();
    }

    pub fn delivery_signal(&self) -> Arc<Notify> {
        self.delivery.clone()
    }

    pub fn exchanges(&self) -> &TaskTracker {
        &self.exchanges
    }

    pub fn reflections(&self) -> &Arc<Reflections> {
        &self.reflections
    }

    /// Record the outcome of an egress-IP self-check.
    pub fn set_egress_check(&self, check: Option<EgressCheck>) {
        self.egress_check.store(check.map(Arc::new));
    }

    pub fn egress_check(&self) -> Option<Arc<EgressCheck>> {
        self.egress_check.load_full()
    }

    pub fn tracer(&self) -> Option<&Arc<Tracer>> {
        self.tracer.as_ref()
    }

    pub fn set_accepting(&self) {
        self.accepting.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why the gateway is not ready; empty when ready.
    pub fn readiness(&self) -> Vec<NotReady> {
        let mut out = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            out.push(NotReady::Draining);
        }
        if !self.accepting.load(Ordering::Acquire) {
            out.push(NotReady::NotAccepting);
        }
        if let Some(problem) = self.audit().and_then(|log| log.problem()) {
            out.push(NotReady::Audit(problem));
        }
        let snap = self.snapshot();
        if let Some(want) = &snap.config.egress.source_check {
            // A check made for another expected address (before a reload)
            // does not count.
            match self.egress_check().filter(|c| c.expected == want.expect) {
                Some(c) if c.problem.is_none() => {}
                Some(c) => out.push(NotReady::EgressSourceIp(EgressCheck::clone(&c))),
                None => out.push(NotReady::EgressSourceIp(EgressCheck {
                    expected: want.expect,
                    seen: None,
                    problem: Some("the egress address has not been checked yet".into()),
                })),
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for slot in snap.router.routes().flat_map(|r| r.credential.slots()) {
            if seen.insert(slot.name()) {
                if let Err(why) = slot.ready() {
                    out.push(NotReady::Credential(why));
                }
            }
        }
        out
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_empty()
    }

    /// How long shutdown waits for detached upstream exchanges.
    pub fn exchange_deadline(&self) -> Duration {
        self.snapshot().config.egress.request_timeout + Duration::from_secs(1)
    }
}
