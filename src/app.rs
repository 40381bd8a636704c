//! Builds the running gateway from a [`Config`]: the immutable [`Snapshot`]
//! every request reads (routes, allowlists, schemes, credentials, upstream
//! client), the listener task, and the background tasks, all under one
//! cancellation token so shutdown stops everything in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::allowlist::Allowlist;
use crate::config::Config;
use crate::listener;
use crate::router::{Route, Router};
use crate::secrets::CredentialStore;
use crate::tls;
use crate::upstream::Upstream;

/// How long in-flight requests may take to finish after shutdown starts.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(20);

/// Everything derived from one configuration; swapped whole, never edited.
pub struct Snapshot {
    pub router: Router,
    pub access: Allowlist,
    pub upstream: Upstream,
    pub credentials: CredentialStore,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
}

impl Snapshot {
    fn build(config: &Config, credentials: CredentialStore, upstream: Upstream) -> anyhow::Result<Snapshot> {
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
            routes.push(Arc::new(Route::new(r.clone(), scheme, slot)));
        }
        Ok(Snapshot {
            router: Router::new(routes),
            access: Allowlist::new(&config.access.allow),
            upstream,
            credentials,
            max_body_bytes: config.listener.max_body_bytes,
            body_timeout: config.listener.body_timeout,
        })
    }
}

/// The shared state of a running gateway.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
}

impl Gateway {
    /// The current snapshot; a request keeps the one it started with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// A started gateway: its bound address and the handle to stop it.
pub struct Running {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    cancel: CancellationToken,
    listener: JoinHandle<()>,
}

impl Running {
    /// The traffic listener's bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stop accepting, drain, stop background tasks; resolves when done.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.listener.await;
    }
}

/// Bind the listener, load credentials, build the snapshot and start serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_drain(config, DEFAULT_DRAIN).await
}

pub async fn start_with_drain(config: Config, drain: Duration) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
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
    let credentials = CredentialStore::start(&config.credentials, &cancel).await;
    let snapshot = Snapshot::build(&config, credentials, upstream)?;
    let gateway = Arc::new(Gateway {
        snapshot: ArcSwap::from_pointee(snapshot),
    });
    let settings = listener::Settings::from(&config.listener);
    let listener = tokio::spawn(listener::serve(
        listener,
        acceptor,
        gateway.clone(),
        settings,
        cancel.clone(),
        drain,
    ));
    tracing::info!(%addr, tls = config.listener.tls.is_some(), routes = config.routes.len(), "signgate listening");
    Ok(Running {
        addr,
        gateway,
        cancel,
        listener,
    })
}

/// Serve until `shutdown` resolves, then drain and return.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down: no longer accepting, draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
