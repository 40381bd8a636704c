//! Builds the running gateway from a [`Config`]: the immutable [`Snapshot`]
//! every request reads (routes, allowlists, schemes, credentials, upstream
//! client), the listener task, and the background tasks, all under one
//! cancellation token so shutdown stops everything in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::allowlist::Allowlist;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::listener;
use crate::metrics::Metrics;
use crate::ratelimit::Limits;
use crate::router::{Route, Router};
use crate::secrets::CredentialStore;
use crate::tls;
use crate::upstream::Upstream;
use crate::webhook::store::Store;
use crate::webhook::Hook;

/// How long shutdown waits for the audit writer to flush.
const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything derived from one configuration; swapped whole, never edited.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub webhooks: Vec<Arc<Hook>>,
    pub access: Allowlist,
    pub upstream: Upstream,
    pub credentials: CredentialStore,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub max_uri_bytes: usize,
    /// Stops this snapshot's credential refreshers once it is replaced by a
    /// snapshot with other credentials.
    credentials_cancel: CancellationToken,
}

impl Snapshot {
    fn build(
        config: &Config,
        credentials: CredentialStore,
        credentials_cancel: CancellationToken,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        previous: Option<&Snapshot>,
    ) -> anyhow::Result<Snapshot> {
        let schemes: BTreeMap<&str, Arc<crate::sign::Scheme>> = config
            .schemes
            .iter()
            .map(|(n, s)| (n.as_str(), Arc::new(s.clone())))
            .collect();
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let scheme = schemes
                .get(r.scheme.as_str())
                .cloned()
                .with_context(|| format!("route {}: unknown scheme {}", r.name, r.scheme))?;
            let slot = credentials
                .slot(&r.credential)
                .cloned()
                .with_context(|| format!("route {}: unknown credential {}", r.name, r.credential))?;
            // Keep the duplicate guard's memory when the route's guard settings are unchanged.
            let kept = previous
                .and_then(|p| p.router.by_name(&r.name))
                .filter(|old| {
                    old.config.duplicate_key == r.duplicate_key
                        && old.config.duplicate_window == r.duplicate_window
                        && old.config.duplicate_capacity == r.duplicate_capacity
                })
                .and_then(|old| old.duplicates.clone());
            routes.push(Arc::new(Route::new(r.clone(), scheme, slot, kept)));
        }
        let mut webhooks = Vec::with_capacity(config.webhooks.len());
        for w in &config.webhooks {
            let scheme = schemes
                .get(w.scheme.as_str())
                .cloned()
                .with_context(|| format!("webhook {}: unknown scheme {}", w.name, w.scheme))?;
            let credential = credentials
                .slot(&w.credential)
                .cloned()
                .with_context(|| format!("webhook {}: unknown credential {}", w.name, w.credential))?;
            webhooks.push(Arc::new(Hook {
                allow: w.allow.as_deref().map(Allowlist::new),
                config: w.clone(),
                scheme,
                credential,
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
            limits: Limits::new(&config.limits),
            metrics,
            max_body_bytes: config.listener.max_body_bytes,
            body_timeout: config.listener.body_timeout,
            body_idle_timeout: config.listener.body_idle_timeout,
            max_uri_bytes: config.listener.max_uri_bytes,
        })
    }
}

/// The shared state of a running gateway.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Set once the traffic listener is bound and accepting.
    accepting: AtomicBool,
    /// Set as soon as shutdown starts, so load balancers stop sending.
    draining: AtomicBool,
    /// Taken away at shutdown so the writer can flush and finish.
    audit: ArcSwapOption<AuditLog>,
    /// Where a reload reads the configuration from.
    config_path: Option<PathBuf>,
    /// One reload at a time (cold path; never held by requests).
    reload_lock: tokio::sync::Mutex<()>,
    /// Parent of the background tasks a reload starts.
    background: CancellationToken,
    /// The durable webhook inbox (when webhooks are configured).
    webhook_store: Option<Arc<Store>>,
    /// Wakes the delivery worker when an event arrives.
    webhook_wake: Arc<Notify>,
}

impl Gateway {
    /// The current snapshot; a request keeps the one it started with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn webhook_store(&self) -> Option<&Arc<Store>> {
        self.webhook_store.as_ref()
    }

    /// Tell the delivery worker there is work.
    pub fn wake_delivery(&self) {
        self.webhook_wake.notify_one();
    }

    /// The audit log, or `None` once shutdown has closed it.
    pub fn audit(&self) -> Option<Arc<AuditLog>> {
        self.audit.load_full()
    }

    /// Why the gateway is not ready, one entry per problem; empty when ready.
    pub fn readiness_problems(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            out.push(serde_json::json!({"what": "draining", "detail": "the gateway is shutting down"}));
        }
        if !self.accepting.load(Ordering::Acquire) {
            out.push(serde_json::json!({"what": "listener", "detail": "the traffic listener is not accepting yet"}));
        }
        let snap = self.snapshot();
        let mut seen = std::collections::BTreeSet::new();
        for route in snap.router.routes() {
            let slot = &route.credential;
            if seen.insert(slot.name().to_string()) {
                if let Err(why) = slot.get() {
                    out.push(serde_json::json!({"what": "credential", "credential": slot.name(), "detail": why}));
                }
            }
        }
        out
    }

    pub fn is_ready(&self) -> bool {
        self.readiness_problems().is_empty()
    }

    /// Re-read the configuration file and apply it (SIGHUP, `POST /reload`).
    pub async fn reload(&self) -> Result<String, String> {
        let Some(path) = &self.config_path else {
            return Err("this gateway was not started from a file; nothing to reload".into());
        };
        match Config::load(path) {
            Ok(c) => self.apply(c).await,
            Err(errors) => {
                self.metrics.config_reloads.with_label_values(&["error"]).inc();
                let msg = format!("{}: {errors}", path.display());
                tracing::error!("reload rejected, the running configuration keeps serving: {msg}");
                Err(msg)
            }
        }
    }

    /// Apply a validated configuration: build a complete new snapshot and swap
    /// it in, or keep the old one. Requests in flight finish on the snapshot
    /// they started with. Settings bound at start-up (listener, admin, audit)
    /// cannot change here: such a reload is rejected whole, never half-applied.
    pub async fn apply(&self, new: Config) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.build_next(new).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(summary) => tracing::info!("configuration reloaded: {summary}"),
            Err(e) => tracing::error!("reload rejected, the running configuration keeps serving: {e}"),
        }
        result
    }

    async fn build_next(&self, new: Config) -> Result<String, String> {
        let old = self.snapshot();
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
        if !new.webhooks.is_empty() && self.webhook_store.is_none() {
            restart.push("[[webhook]] (the first webhook opens the inbox under [state].dir)");
        }
        if !restart.is_empty() {
            return Err(format!(
                "{} changed: these settings are bound at start-up and need a restart; nothing was applied",
                restart.join(", ")
            ));
        }
        let upstream = if new.egress == cur.egress {
            old.upstream.clone()
        } else {
            Upstream::new(&new.egress).map_err(|e| format!("egress: {e}"))?
        };
        let (credentials, credentials_cancel, creds_changed) = if new.credentials == cur.credentials {
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
            self.metrics.clone(),
            Some(&old),
        )
        .map_err(|e| format!("{e:#}"))?;
        self.metrics.prime(
            &new.routes
                .iter()
                .map(|r| (r.name.clone(), r.credential.clone()))
                .collect::<Vec<_>>(),
            &new.webhooks.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
        );
        self.snapshot.store(Arc::new(next));
        if creds_changed {
            old.credentials_cancel.cancel();
        }
        Ok(format!(
            "{} route(s), {} credential(s){}",
            new.routes.len(),
            new.credentials.len(),
            if creds_changed { " (credentials reloaded)" } else { "" }
        ))
    }
}

/// A started gateway: its bound address and the handle to stop it.
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    gateway: Arc<Gateway>,
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

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stop accepting, drain, stop background tasks; resolves when done
    /// with whether every connection finished within the drain period.
    pub async fn shutdown(self) -> bool {
        self.gateway.draining.store(true, Ordering::Release);
        self.cancel.cancel();
        let drained = self.listener.await.unwrap_or(false);
        self.background.cancel();
        // Close the audit queue; the writer flushes every queued record and exits.
        self.gateway.audit.store(None);
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

/// Like [`start`]; with `config_path`, `reload` re-reads that file.
pub async fn start_with(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Running> {
    let drain = config.listener.drain_timeout;
    let cancel = CancellationToken::new();
    let background = CancellationToken::new();
    let upstream = Upstream::new(&config.egress).context("building the upstream TLS client")?;
    let acceptor = match &config.listener.tls {
        Some(t) => Some(TlsAcceptor::from(
            tls::server_config(t).context("building the listener TLS config")?,
        )),
        None => None,
    };
    let listener = TcpListener::bind(config.listener.addr)
        .await
        .with_context(|| format!("binding listener.addr {}", config.listener.addr))?;
    let addr = listener.local_addr()?;
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
    let webhook_store = if config.webhooks.is_empty() {
        None
    } else {
        Some(Arc::new(Store::open(&config.state.dir).with_context(|| {
            format!("opening the webhook inbox in state.dir {}", config.state.dir.display())
        })?))
    };
    let metrics = Metrics::new();
    let (audit, audit_writer) =
        crate::audit::start(&config.audit, metrics.clone()).context("opening the audit log (audit.path)")?;
    let snapshot = Snapshot::build(
        &config,
        credentials,
        credentials_cancel,
        upstream,
        metrics.clone(),
        None,
    )?;
    metrics.prime(
        &config
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.credential.clone()))
            .collect::<Vec<_>>(),
        &config.webhooks.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
    );
    let gateway = Arc::new(Gateway {
        snapshot: ArcSwap::from_pointee(snapshot),
        metrics,
        accepting: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        audit: ArcSwapOption::from_pointee(audit),
        config_path,
        reload_lock: tokio::sync::Mutex::new(()),
        background: background.clone(),
        webhook_store: webhook_store.clone(),
        webhook_wake: Arc::new(Notify::new()),
    });
    if let Some(store) = webhook_store {
        // Deliveries go to internal apps: not from the provider-facing egress address.
        let internal = crate::config::EgressConfig {
            source_addr: None,
            allow_plain_http: true,
            request_timeout: crate::webhook::deliver::ATTEMPT_TIMEOUT,
            client_cert: None,
            ..config.egress.clone()
        };
        let worker = crate::webhook::deliver::Worker {
            gw: gateway.clone(),
            store,
            client: Upstream::new(&internal).context("building the webhook delivery client")?,
            wake: gateway.webhook_wake.clone(),
        };
        tokio::spawn(worker.run(background.clone()));
    }
    spawn_sweeper(gateway.clone(), background.clone());
    let settings = listener::Settings::from(&config.listener);
    let listener = tokio::spawn(listener::serve(
        listener,
        acceptor,
        gateway.clone(),
        settings,
        cancel.clone(),
        drain,
    ));
    gateway.accepting.store(true, Ordering::Release);
    if let Some(l) = admin_listener {
        tokio::spawn(crate::admin::serve(l, gateway.clone(), background.clone()));
    }
    tracing::info!(%addr, admin = ?admin_addr, tls = config.listener.tls.is_some(), routes = config.routes.len(), "signgate listening");
    Ok(Running {
        addr,
        admin_addr,
        gateway,
        cancel,
        background,
        listener,
        audit_writer,
    })
}

/// How often idle per-client rate-limit state is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

fn spawn_sweeper(gw: Arc<Gateway>, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => gw.snapshot().limits.sweep(),
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
                    let _ = running.gateway().reload().await;
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
