//! The composition root: builds the running gateway from a [`Config`] and
//! owns its tasks and their shutdown order. It creates the [`Shared`] state,
//! hands each stage the handle it needs (the listener a handler and the
//! metrics, admin a read-only view and a reload channel, the delivery worker
//! the inbox), applies reloads, and stops everything under one cancellation
//! tree. Nothing imports this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::amount_guard::LocalTotals;
use crate::certs::{self, Certificates, EgressTls};
use crate::config::Config;
use crate::delivery;
use crate::fleet::Fleet;
use crate::listener;
use crate::logging::FilterHandle;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::sdnotify::Notifier;
use crate::secrets::CredentialStore;
use crate::state::{Backing, ReloadError, ReloadHandle, ReloadReport, ReloadResult, ReloadSummary, Shared, Snapshot};
use crate::switch::{self, Switches};
use crate::upstream::Upstream;
use crate::webhook::store::Store;

/// How long shutdown waits for the audit writer to flush.
const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for fleet settlements Redis has not taken yet.
const FLEET_SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often idle per-client rate-limit state is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Applies configurations (one at a time, whole or not at all) and keeps
/// the certificates current.
struct Reloader {
    shared: Arc<Shared>,
    /// Where a reload reads the configuration from.
    config_path: Option<PathBuf>,
    /// Parent of the credential refreshers a reload starts.
    background: CancellationToken,
    /// One reload at a time (cold path; never held by requests), and the
    /// certificates in use, which reloads and the file poll refresh.
    certs: Mutex<Certificates>,
    /// systemd: RELOADING=1 / READY=1 around a reload.
    notify: Notifier,
    /// Wakes the egress-IP self-check after a change of `[egress]`.
    egress_check: Arc<Notify>,
}

impl Reloader {
    /// Re-read the configuration file and apply it, and re-read every
    /// certificate file (SIGHUP, `POST /reload`).
    async fn reload(&self) -> ReloadReport {
        self.notify.reloading();
        let mut certs = self.certs.lock().await;
        let config = match &self.config_path {
            None => Err(ReloadError::NoConfigFile),
            Some(path) => {
                // The same checks as `signgate check` and start-up, files included.
                let result = match Config::load(path).and_then(|c| crate::preflight::preflight(&c).map(|()| c)) {
                    Ok(c) => self.apply(c, &mut certs).await,
                    Err(errors) => Err(ReloadError::Invalid(format!("{}: {errors}", path.display()))),
                };
                let label = if result.is_ok() { "ok" } else { "error" };
                self.shared.metrics().config_reloads.with_label_values(&[label]).inc();
                match &result {
                    Ok(summary) => tracing::info!("configuration reloaded: {summary}"),
                    Err(e) => tracing::error!("reload rejected, the running configuration keeps serving: {e}"),
                }
                result
            }
        };
        let refreshed = certs.reload();
        self.use_egress_tls(refreshed.egress);
        drop(certs);
        let rejected = refreshed.reports.iter().filter(|r| r.result != "ok").count();
        self.notify.ready(&match (&config, rejected) {
            (Ok(summary), 0) => format!("serving; reloaded: {summary}"),
            (Ok(summary), n) => format!("serving; reloaded: {summary}; {n} certificate(s) rejected"),
            (Err(e), _) => format!("serving; reload rejected: {e}"),
        });
        ReloadReport {
            config,
            certificates: refreshed.reports,
        }
    }

    /// Certificate files that changed on disk (every [`certs::POLL_EVERY`]).
    /// Skipped while a reload runs: the reload reads them all anyway.
    fn poll_certificates(&self) {
        let Ok(mut certs) = self.certs.try_lock() else {
            return;
        };
        let refreshed = certs.poll();
        self.use_egress_tls(refreshed.egress);
    }

    /// A reloaded egress client certificate or CA: every request from now
    /// on goes out through a pool made with it. (Called with the certificate
    /// lock held, so the snapshot is the one those certificates belong to.)
    fn use_egress_tls(&self, config: Option<Arc<rustls::ClientConfig>>) {
        if let Some(config) = config {
            self.shared.snapshot().upstream.set_tls(config);
        }
    }

    /// Build a complete new snapshot and swap it in, or keep the old one.
    /// Requests in flight finish on the snapshot they started with. Settings
    /// bound at start-up (listener, admin, audit, state) cannot change here:
    /// such a reload is rejected whole, never half-applied.
    async fn apply(&self, new: Config, certs: &mut Certificates) -> ReloadResult {
        let old = self.shared.snapshot();
        let cur = &old.config;
        let mut restart = Vec::new();
        if new.listener != cur.listener {
            restart.push("[listener]");
        }
        if new.admin != cur.admin {
            restart.push("[admin]");
        }
        if new.audit != cur.audit {
            restart.push("[audit]");
        }
        if new.state != cur.state {
            restart.push("[state]");
        }
        if new.log != cur.log {
            restart.push("[log]");
        }
        if new.tracing != cur.tracing {
            restart.push("[tracing]");
        }
        if new.fleet != cur.fleet {
            restart.push("[fleet]");
        }
        if !new.webhooks.is_empty() && self.shared.inbox().is_none() {
            restart.push("[[webhook]] (the first webhook opens the inbox under [state].dir)");
        }
        if crate::statedb::needed(&new) && self.shared.state_db().is_none() {
            restart.push(
                "[[route]] duplicate_key or [route.amount_guard] (the first one opens the state database under [state].dir)",
            );
        }
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let (upstream, egress_tls) = if new.egress == cur.egress {
            (old.upstream.clone(), None)
        } else {
            let egress_error = |e: crate::tls::TlsError| ReloadError::Egress(e.to_string());
            let tls = EgressTls::load(&new.egress).map_err(egress_error)?;
            let client = tls.client_config().map_err(egress_error)?;
            (Upstream::with_tls(&new.egress, client), Some(tls))
        };
        let (credentials, credentials_cancel, reloaded) = if new.credentials == cur.credentials {
            (old.credentials.clone(), old.credentials_cancel.clone(), false)
        } else {
            let token = self.background.child_token();
            (CredentialStore::start(&new.credentials, &token).await, token, true)
        };
        let next = Snapshot::build(
            &new,
            credentials,
            credentials_cancel,
            upstream,
            Some(&old),
            self.shared.backing(),
        )?;
        prime(self.shared.metrics(), &new);
        warn_shared_secrets(&next);
        warn_guard_bypasses(&next);
        self.shared.replace_snapshot(next);
        if let Some(tls) = egress_tls {
            certs.replace_egress(tls);
        }
        if reloaded {
            old.credentials_cancel.cancel();
        }
        if new.egress != cur.egress {
            self.egress_check.notify_one();
        }
        Ok(ReloadSummary {
            routes: new.routes.len(),
            credentials: new.credentials.len(),
            credentials_reloaded: reloaded,
        })
    }

    /// Serve reload requests from the admin listener until `stop`.
    async fn serve(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<oneshot::Sender<ReloadReport>>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                req = requests.recv() => match req {
                    Some(reply) => {
                        let _ = reply.send(self.reload().await);
                    }
                    None => return,
                },
            }
        }
    }

    /// Poll the certificate files until `stop`.
    async fn watch_certificates(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(certs::POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => self.poll_certificates(),
            }
        }
    }
}

/// A route that can send what a guarded route sends without its guards
/// (`Config::guard_bypasses`): said at start-up and on every reload.
fn warn_guard_bypasses(snapshot: &Snapshot) {
    for w in snapshot.config.guard_bypasses() {
        tracing::warn!("{w}");
    }
}

/// A webhook whose secret also signs outbound requests works (the
/// reflection guard refuses the gateway's own signatures coming back), but
/// its own secret is better: say so at start-up and on every reload. A
/// credential that has not loaded yet is not compared here; the gauge
/// `signgate_webhook_secret_shared` follows the secrets as they load and rotate.
fn warn_shared_secrets(snapshot: &Snapshot) {
    for hook in snapshot.shared_secret_hooks() {
        tracing::warn!(
            webhook = hook.name(),
            credential = hook.config.credential,
            "this webhook verifies with a secret that also signs outbound requests: the gateway remembers its outbound signatures to refuse them as webhooks (docs/security.md); give the webhook a secret of its own if the provider allows"
        );
    }
}

/// Pre-create the series a configuration can produce.
fn prime(metrics: &Metrics, config: &Config) {
    metrics.prime(
        &config
            .routes
            .iter()
            .flat_map(|r| {
                r.credential
                    .names()
                    .into_iter()
                    .map(|c| (r.name.clone(), c.to_string()))
            })
            .collect::<Vec<_>>(),
        &config.webhooks.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
    );
    for r in &config.routes {
        if let Some(g) = &r.amount_guard {
            metrics.prime_amount_guard(&r.name, &g.day_caps());
        }
    }
}

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    /// Stops the traffic listener (drain starts).
    cancel: CancellationToken,
    /// Stops the admin listener and background tasks, after the drain.
    background: CancellationToken,
    listener: JoinHandle<bool>,
    audit_writer: JoinHandle<()>,
    /// `listener.shutdown_delay_ms`.
    shutdown_delay: Duration,
}

impl Running {
    /// The traffic listener's bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's bound address, if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Whether `/readyz` would answer 200.
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// The version of the secret credential `name` signs with now, if loaded.
    pub fn credential_version(&self, name: &str) -> Option<u64> {
        self.shared.snapshot().credentials.slot(name)?.get().ok()?.version()
    }

    /// Stop accepting, drain, finish detached upstream exchanges, stop
    /// background tasks and flush the audit log; resolves with whether every
    /// connection finished within the drain period.
    pub async fn shutdown(self) -> bool {
        self.shared.set_draining();
        self.cancel.cancel();
        let drained = self.listener.await.unwrap_or(false);
        // Exchanges whose client went away still owe their audit record.
        let exchanges = self.shared.exchanges();
        exchanges.close();
        if tokio::time::timeout(self.shared.exchange_deadline(), exchanges.wait())
            .await
            .is_err()
        {
            tracing::error!("upstream exchanges still running at shutdown; their records are written as they end");
        }
        // Amount-guard settlements on this host (each one short write).
        if let Some(amounts) = self.shared.amounts() {
            amounts.tasks().close();
            if tokio::time::timeout(FLEET_SETTLE_TIMEOUT, amounts.tasks().wait())
                .await
                .is_err()
            {
                tracing::warn!("amount guard: settlements still running at shutdown");
            }
        }
        // Settlements of fleet claims whose requests ended (bounded: each
        // gives up by its claim's expiry).
        if let Some(fleet) = self.shared.fleet() {
            fleet.tasks().close();
            if tokio::time::timeout(FLEET_SETTLE_TIMEOUT, fleet.tasks().wait())
                .await
                .is_err()
            {
                tracing::warn!("fleet: settlements still pending at shutdown; the claims' expiry releases them");
            }
        }
        // Every request has ended: export the last spans.
        if let Some(tracer) = self.shared.tracer() {
            tracer.clone().flush().await;
        }
        self.background.cancel();
        // Close the audit queue; the writer flushes every queued record and exits.
        self.shared.close_audit();
        if tokio::time::timeout(AUDIT_FLUSH_TIMEOUT, self.audit_writer)
            .await
            .is_err()
        {
            tracing::error!("audit writer did not finish flushing in time");
        }
        drained
    }
}

/// How a process runs the gateway; the default is what an in-process
/// gateway ([`start`]) gets.
#[derive(Default)]
pub struct Options {
    /// Reloads re-read this file.
    pub config_path: Option<PathBuf>,
    /// The process's log filter, which the admin API's `/log-level` reads
    /// and changes (without it, that endpoint answers 501).
    pub log_filter: Option<FilterHandle>,
}

/// Bind the listener, load credentials, build the snapshot and start serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, None).await
}

/// Like [`start`]; with `config_path`, reloads re-read that file.
pub async fn start_with(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Running> {
    start_opts(
        config,
        Options {
            config_path,
            ..Options::default()
        },
        Notifier::none(),
    )
    .await
}

async fn start_opts(config: Config, options: Options, notify: Notifier) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
    let background = CancellationToken::new();
    let metrics = Metrics::new();
    let certificates = Certificates::load(config.listener.tls.as_ref(), &config.egress, metrics.clone())
        .context("loading the certificates")?;
    let upstream = Upstream::with_tls(
        &config.egress,
        certificates
            .egress()
            .client_config()
            .context("building the upstream TLS client")?,
    );
    let listener_tls = certificates.listener();
    let traffic = TcpListener::bind(config.listener.addr)
        .await
        .with_context(|| format!("binding listener.addr {}", config.listener.addr))?;
    let addr = traffic.local_addr()?;
    let admin_listener = match config.admin.addr {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding admin.addr {a}"))?,
        ),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let credentials_cancel = background.child_token();
    let credentials = CredentialStore::start(&config.credentials, &credentials_cancel).await;
    // The state database: opened now when the inbox or the duplicate
    // guard's claims need it or it holds route switches; else the first
    // route switch creates it.
    let state_dir = &config.state.dir;
    let state_db = if crate::statedb::needed(&config) || crate::statedb::exists(state_dir) {
        Some(
            crate::statedb::open(state_dir)
                .map_err(|e| anyhow::anyhow!("opening the state database in state.dir: {e}"))?,
        )
    } else {
        None
    };
    let inbox = match (&state_db, config.webhooks.is_empty()) {
        (Some(db), false) => {
            Some(Arc::new(Store::on(db.clone()).with_context(|| {
                format!("opening the webhook inbox in state.dir {}", state_dir.display())
            })?))
        }
        _ => None,
    };
    // The amount guard's day totals: tables of the state database, whenever
    // it is open (a reload may add the first guard then).
    let amounts = match &state_db {
        Some(db) => Some(Arc::new(LocalTotals::new(db.clone()).with_context(|| {
            format!("opening the amount guard's totals in state.dir {}", state_dir.display())
        })?)),
        None => None,
    };
    let (audit, audit_writer) =
        crate::audit::start(&config.audit, metrics.clone()).context("opening the audit log (audit.path)")?;
    let tracer = match &config.tracing {
        Some(t) => Some(Arc::new(
            crate::trace::Tracer::start(t, metrics.trace_spans.clone())
                .context("starting the trace exporter ([tracing])")?,
        )),
        None => None,
    };
    let fleet = match &config.fleet {
        Some(f) => Some(
            Fleet::start(f, metrics.register_fleet(), background.clone())
                .await
                .map_err(|e| anyhow::anyhow!("starting [fleet]: {e}"))?,
        ),
        None => None,
    };
    let switches = Arc::new(
        Switches::load(
            switch::Local::new(state_dir.clone(), state_db.clone()),
            fleet.clone(),
            metrics.route_disabled.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    for route in &config.routes {
        if let Some(s) = switches.get(&route.name).filter(|s| s.disabled) {
            tracing::warn!(
                route = route.name,
                since = s.since(),
                by = s.by,
                reason = s.reason.as_deref().unwrap_or(""),
                "route is disabled (kill switch): it answers 503 route_disabled until `signgate route enable`"
            );
        }
    }
    let backing = Backing {
        fleet: fleet.as_ref(),
        state: state_db.as_ref(),
        amounts: amounts.as_ref(),
        metrics: &metrics,
    };
    let snapshot = Snapshot::build(&config, credentials, credentials_cancel, upstream, None, backing)?;
    prime(&metrics, &config);
    let reflections = Arc::new(
        crate::reflect::Reflections::new(fleet.clone(), state_db.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    if fleet.is_some() {
        tokio::spawn(reflections.clone().retry_pending(background.clone()));
    }
    warn_shared_secrets(&snapshot);
    warn_guard_bypasses(&snapshot);
    let shared = Arc::new(Shared::new(
        snapshot,
        metrics.clone(),
        audit,
        inbox.clone(),
        state_db,
        amounts,
        reflections,
        fleet,
        tracer,
        switches.clone(),
    ));
    if let Some(f) = &config.fleet {
        let audit_of = shared.clone();
        tokio::spawn(switches.poll(f.route_switch_poll, background.clone(), move || audit_of.audit()));
    }
    if let Some(store) = inbox {
        // Deliveries go to internal apps: not from the provider-facing egress address.
        let internal = crate::config::EgressConfig {
            source_addr: None,
            allow_plain_http: true,
            request_timeout: delivery::ATTEMPT_TIMEOUT,
            client_cert: None,
            source_check: None,
            ..config.egress.clone()
        };
        let worker = delivery::Worker {
            shared: shared.clone(),
            store,
            client: Upstream::new(&internal).context("building the webhook delivery client")?,
        };
        tokio::spawn(worker.run(background.clone()));
    }
    spawn_sweeper(shared.clone(), background.clone());
    let egress_check = Arc::new(Notify::new());
    tokio::spawn(crate::egress_ip::run(
        shared.clone(),
        egress_check.clone(),
        background.clone(),
    ));
    let reloader = Arc::new(Reloader {
        shared: shared.clone(),
        config_path: options.config_path,
        background: background.clone(),
        certs: Mutex::new(certificates),
        notify,
        egress_check,
    });
    let (reload_handle, reload_requests) = ReloadHandle::new();
    let admin = match admin_listener {
        Some(l) => Some((
            l,
            Admin::new(shared.clone(), reload_handle, options.log_filter, &config.admin)
                .context("loading the admin token")?,
        )),
        None => None,
    };
    tokio::spawn(reloader.clone().serve(reload_requests, background.clone()));
    tokio::spawn(reloader.clone().watch_certificates(background.clone()));
    let listener = tokio::spawn(listener::serve(
        traffic,
        listener_tls,
        Proxy::new(shared.clone()),
        metrics.connections.clone(),
        listener::Settings::from(&config.listener),
        cancel.clone(),
        config.listener.drain_timeout,
    ));
    shared.set_accepting();
    if let Some((l, admin)) = admin {
        tokio::spawn(crate::admin::serve(l, admin, background.clone()));
    }
    if crate::fault::ENABLED {
        tracing::warn!(
            header = crate::fault::HEADER,
            "fault injection is compiled in (test build): never run this binary in production"
        );
    }
    tracing::info!(%addr, admin = ?admin_addr, tls = config.listener.tls.is_some(), routes = config.routes.len(), "signgate listening");
    if let Some(t) = &config.tracing {
        tracing::info!(endpoint = %t.otlp_endpoint, sample_ratio = t.sample_ratio, "exporting request traces (OTLP/HTTP)");
    }
    Ok(Running {
        addr,
        admin_addr,
        shared,
        reloader,
        cancel,
        background,
        listener,
        audit_writer,
        shutdown_delay: config.listener.shutdown_delay,
    })
}

fn spawn_sweeper(shared: Arc<Shared>, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {
                    shared.snapshot().limits.sweep();
                    // Past days' amount totals, once a day (a short write).
                    if let Some(amounts) = shared.amounts().cloned() {
                        let pruned = tokio::task::spawn_blocking(move || {
                            amounts.prune(crate::amount_guard::Day::today())
                        })
                        .await;
                        if let Ok(Err(e)) = pruned {
                            tracing::warn!(error = %e, "amount guard: old days could not be pruned");
                        }
                    }
                }
            }
        }
    });
}

/// Serve until `shutdown` resolves, reloading on SIGHUP; then turn
/// readiness off, keep serving for `listener.shutdown_delay_ms`, drain and
/// return. Tells systemd (`NOTIFY_SOCKET`) when it is ready, reloading and
/// stopping.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let notify = Notifier::from_env();
    let running = start_opts(config, options, notify.clone()).await?;
    notify.ready(&format!("serving on {}", running.addr));
    let mut shutdown = std::pin::pin!(shutdown);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration and the certificates");
                    let _ = running.reloader.reload().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    shutdown.await;
    notify.stopping("shutting down: readiness off, then draining");
    running.shared.set_draining();
    let delay = running.shutdown_delay;
    if !delay.is_zero() {
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "shutting down: readiness is off; still accepting for listener.shutdown_delay_ms, then draining (a second SIGTERM or SIGINT drains at once)"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = second_signal() => tracing::info!("second signal: draining now"),
        }
    }
    tracing::info!("shutting down: no longer accepting, draining in-flight requests");
    let drained = running.shutdown().await;
    tracing::info!(drained, "stopped");
    Ok(())
}

/// Resolves on the next SIGTERM or SIGINT (never, if neither can be caught).
async fn second_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}
