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
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::Config;
use crate::delivery;
use crate::listener;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::secrets::CredentialStore;
use crate::state::{ReloadError, ReloadHandle, ReloadResult, ReloadSummary, Shared, Snapshot};
use crate::tls;
use crate::upstream::Upstream;
use crate::webhook::store::Store;

/// How long shutdown waits for the audit writer to flush.
const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle per-client rate-limit state is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Applies configurations: one at a time, whole or not at all.
struct Reloader {
    shared: Arc<Shared>,
    /// Where a reload reads the configuration from.
    config_path: Option<PathBuf>,
    /// Parent of the credential refreshers a reload starts.
    background: CancellationToken,
    /// One reload at a time (cold path; never held by requests).
    lock: Mutex<()>,
}

impl Reloader {
    /// Re-read the configuration file and apply it (SIGHUP, `POST /reload`).
    async fn reload(&self) -> ReloadResult {
        let Some(path) = &self.config_path else {
            return Err(ReloadError::NoConfigFile);
        };
        // The same checks as `signgate check` and start-up, files included.
        let result = match Config::load(path).and_then(|c| crate::preflight::preflight(&c).map(|()| c)) {
            Ok(c) => self.apply(c).await,
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

    /// Build a complete new snapshot and swap it in, or keep the old one.
    /// Requests in flight finish on the snapshot they started with. Settings
    /// bound at start-up (listener, admin, audit, state) cannot change here:
    /// such a reload is rejected whole, never half-applied.
    async fn apply(&self, new: Config) -> ReloadResult {
        let _one_at_a_time = self.lock.lock().await;
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
        if !new.webhooks.is_empty() && self.shared.inbox().is_none() {
            restart.push("[[webhook]] (the first webhook opens the inbox under [state].dir)");
        }
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let upstream = if new.egress == cur.egress {
            old.upstream.clone()
        } else {
            Upstream::new(&new.egress).map_err(|e| ReloadError::Egress(e.to_string()))?
        };
        let (credentials, credentials_cancel, reloaded) = if new.credentials == cur.credentials {
            (old.credentials.clone(), old.credentials_cancel.clone(), false)
        } else {
            let token = self.background.child_token();
            (CredentialStore::start(&new.credentials, &token).await, token, true)
        };
        let next = Snapshot::build(&new, credentials, credentials_cancel, upstream, Some(&old))?;
        prime(self.shared.metrics(), &new);
        self.shared.replace_snapshot(next);
        if reloaded {
            old.credentials_cancel.cancel();
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
        mut requests: mpsc::Receiver<oneshot::Sender<ReloadResult>>,
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
}

/// Pre-create the series a configuration can produce.
fn prime(metrics: &Metrics, config: &Config) {
    metrics.prime(
        &config
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.credential.clone()))
            .collect::<Vec<_>>(),
        &config.webhooks.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
    );
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

/// Bind the listener, load credentials, build the snapshot and start serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, None).await
}

/// Like [`start`]; with `config_path`, reloads re-read that file.
pub async fn start_with(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
    let background = CancellationToken::new();
    let upstream = Upstream::new(&config.egress).context("building the upstream TLS client")?;
    let acceptor = match &config.listener.tls {
        Some(t) => Some(TlsAcceptor::from(
            tls::server_config(t).context("building the listener TLS config")?,
        )),
        None => None,
    };
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
    let inbox = if config.webhooks.is_empty() {
        None
    } else {
        Some(Arc::new(Store::open(&config.state.dir).with_context(|| {
            format!("opening the webhook inbox in state.dir {}", config.state.dir.display())
        })?))
    };
    let metrics = Metrics::new();
    let (audit, audit_writer) =
        crate::audit::start(&config.audit, metrics.clone()).context("opening the audit log (audit.path)")?;
    let tracer = match &config.tracing {
        Some(t) => Some(Arc::new(
            crate::trace::Tracer::start(t, metrics.trace_spans.clone())
                .context("starting the trace exporter ([tracing])")?,
        )),
        None => None,
    };
    let snapshot = Snapshot::build(&config, credentials, credentials_cancel, upstream, None)?;
    prime(&metrics, &config);
    let shared = Arc::new(Shared::new(snapshot, metrics.clone(), audit, inbox.clone(), tracer));
    if let Some(store) = inbox {
        // Deliveries go to internal apps: not from the provider-facing egress address.
        let internal = crate::config::EgressConfig {
            source_addr: None,
            allow_plain_http: true,
            request_timeout: delivery::ATTEMPT_TIMEOUT,
            client_cert: None,
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
    let reloader = Arc::new(Reloader {
        shared: shared.clone(),
        config_path,
        background: background.clone(),
        lock: Mutex::new(()),
    });
    let (reload_handle, reload_requests) = ReloadHandle::new();
    let admin = match admin_listener {
        Some(l) => Some((
            l,
            Admin::new(shared.clone(), reload_handle, &config.admin).context("loading the admin token")?,
        )),
        None => None,
    };
    tokio::spawn(reloader.clone().serve(reload_requests, background.clone()));
    let listener = tokio::spawn(listener::serve(
        traffic,
        acceptor,
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
    })
}

fn spawn_sweeper(shared: Arc<Shared>, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => shared.snapshot().limits.sweep(),
            }
        }
    });
}

/// Serve until `shutdown` resolves, reloading `config_path` on SIGHUP; then
/// drain and return.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start_with(config, config_path).await?;
    let mut shutdown = std::pin::pin!(shutdown);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = running.reloader.reload().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    shutdown.await;
    tracing::info!("shutting down: no longer accepting, draining in-flight requests");
    let drained = running.shutdown().await;
    tracing::info!(drained, "stopped");
    Ok(())
}
