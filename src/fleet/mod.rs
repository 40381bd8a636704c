//! Fleet mode (`[fleet]`): several gateways in front of one provider account
//! share their rate limits, duplicate-guard claims, webhook de-duplication,
//! provider cooldowns and reflection memory through one Redis (or Valkey).
//!
//! One multiplexed, reconnecting connection (`redis::aio::ConnectionManager`)
//! carries every call; each call is bounded by `timeout_ms`. Health is one
//! flag: an error or a timeout marks Redis down at once, and from then on
//! calls fail fast (no request waits on a dead Redis) while a background
//! probe sends `PING` every [`PROBE_EVERY`]; the first answer marks it up
//! again. Each change is logged once (one line per episode, never per
//! request) and shown as `signgate_fleet_redis_up`. What each caller does
//! while Redis is down is its own rule (docs/fleet.md, "Failure semantics").
//!
//! Keys (`keys`): every key starts with `{PREFIX:…}`, a hash tag, and the
//! keys one script touches share it, so each script runs on one Redis
//! Cluster slot. Secrets never reach a key, a log line or an error: the
//! password is only handed to the client.

mod scripts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{FleetConfig, LimitsOnError, RedisPassword};
use crate::metrics::FleetMetrics;

/// How often a down Redis is probed (and an up one checked).
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a connection attempt may take (a probe's budget when down).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long start-up waits for a first answer before serving without one.
const FIRST_ANSWER: Duration = Duration::from_secs(1);

/// Why a fleet call did not answer. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// Redis is marked down; the call was not tried.
    #[error("Redis is unavailable")]
    Down,
    #[error("Redis did not answer within timeout_ms")]
    Timeout,
    #[error("Redis: {0}")]
    Redis(String),
}

/// Where a decision came from (the audit record's `fleet` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Redis,
    Local,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::Local => "local",
        }
    }
}

/// The scripts, loaded once (`EVALSHA`, with `EVAL` on a cold server).
struct Scripts {
    limit: Script,
    claim: Script,
    settle: Script,
    cooldown: Script,
    switch: Script,
}

/// A limit the fleet checks: its key and its quota.
pub struct FleetLimit {
    pub key: String,
    pub rate: u32,
    pub burst: u32,
}

/// What the limit script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAnswer {
    Allowed,
    /// The route is in a provider cooldown for this long.
    Cooldown(Duration),
    /// Limit `index` (of those passed) refuses for this long.
    Limited {
        index: usize,
        wait: Duration,
    },
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The key is ours now.
    Ours,
    /// Someone holds it: the value they set.
    Held(String),
}

/// The shared state of a fleet, reached through Redis (see the module doc).
pub struct Fleet {
    conn: ConnectionManager,
    prefix: String,
    instance: String,
    timeout: Duration,
    expected_instances: u32,
    limits_on_error: LimitsOnError,
    up: AtomicBool,
    /// Milliseconds since `started` when Redis was marked down.
    down_at: AtomicU64,
    started: Instant,
    metrics: FleetMetrics,
    /// Settlements and releases spawned from `Drop`; shutdown waits for them.
    tasks: TaskTracker,
    scripts: Scripts,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// The host name (the default `instance`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "signgate".to_string())
}

/// Read `redis_password_file` (trailing newline dropped). The error names
/// the file, never its content.
pub fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pw = text.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(pw)
}

fn client(config: &FleetConfig) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo as _;
    let password = match &config.password {
        None => None,
        Some(RedisPassword::Inline(p)) => Some(p.expose().to_string()),
        Some(RedisPassword::File(path)) => Some(read_password_file(path)?),
    };
    let mut info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("fleet.redis_url {}: {e}", config.url))?;
    if let Some(pw) = password {
        let settings = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(settings);
    }
    if config.tls {
        // redis-rs builds its rustls config with the process default
        // provider: make it ring, the gateway's one TLS stack.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match &config.ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("fleet.redis_ca_file {}: {e}", ca.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| format!("fleet.redis_ca_file {}: {e}", ca.display()))
        }
        None => redis::Client::open(info).map_err(|e| format!("fleet.redis_url {}: {e}", config.url)),
    }
}

impl Fleet {
    /// Connect (waiting at most a second for a first answer: the gateway
    /// serves on its fallbacks until Redis answers) and start the probe.
    pub async fn start(
        config: &FleetConfig,
        metrics: FleetMetrics,
        cancel: CancellationToken,
    ) -> Result<Arc<Fleet>, String> {
        let client = client(config)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(config.timeout.max(CONNECT_TIMEOUT)))
            // The probe drives reconnection; the manager tries once per call.
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, manager).map_err(|e| format!("fleet: {e}"))?;
        metrics.redis_up.set(0);
        let fleet = Arc::new(Fleet {
            conn,
            prefix: config.key_prefix.clone(),
            instance: config.instance.clone().unwrap_or_else(hostname),
            timeout: config.timeout,
            expected_instances: config.expected_instances,
            limits_on_error: config.limits_on_error,
            up: AtomicBool::new(false),
            down_at: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
            tasks: TaskTracker::new(),
            scripts: Scripts {
                limit: Script::new(scripts::LIMIT),
                claim: Script::new(scripts::CLAIM),
                settle: Script::new(scripts::SETTLE),
                cooldown: Script::new(scripts::COOLDOWN),
                switch: Script::new(scripts::SWITCH),
            },
        });
        let first = tokio::time::timeout(FIRST_ANSWER, fleet.probe()).await;
        if !matches!(first, Ok(true)) {
            tracing::warn!(
                redis = %config.url,
                "fleet: Redis does not answer at start-up; serving on the fallbacks until it does (docs/fleet.md)"
            );
        }
        tokio::spawn(fleet.clone().probe_loop(cancel));
        Ok(fleet)
    }

    /// This instance's name (`[fleet].instance`, or the host name).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn expected_instances(&self) -> u32 {
        self.expected_instances
    }

    pub fn limits_on_error(&self) -> LimitsOnError {
        self.limits_on_error
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Count a decision taken without Redis.
    pub fn fallback(&self, what: &'static str) {
        self.metrics.fallback.with_label_values(&[what]).inc();
    }

    /// Work spawned by this module (settlements from `Drop`): shutdown waits.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Run `f` under the instance's lifetime (tracked), if a runtime is there.
    pub fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(f);
        }
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.down_at
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.metrics.redis_up.set(0);
            tracing::warn!(
                error = why,
                "fleet: Redis unavailable; limits fall back per [fleet].limits_on_error, the duplicate guard refuses (503), webhooks de-duplicate per instance, route switches hold as last known"
            );
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.redis_up.set(1);
            let now = self.started.elapsed().as_millis() as u64;
            let down = now.saturating_sub(self.down_at.load(Ordering::Relaxed));
            tracing::info!(down_ms = down, "fleet: Redis answers; shared state in use");
        }
    }

    /// One call to Redis under the health rule and `timeout_ms`.
    async fn call<T, F>(&self, op: &'static str, fut: F) -> Result<T, FleetError>
    where
        F: std::future::Future<Output = RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(FleetError::Down);
        }
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => {
                self.metrics
                    .redis_duration
                    .with_label_values(&[op])
                    .observe(started.elapsed().as_secs_f64());
                Ok(v)
            }
            Ok(Err(e)) => {
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                let msg = e.to_string();
                // A script error is ours, not Redis being down.
                if e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) {
                    self.mark_down(&msg);
                }
                Err(FleetError::Redis(msg))
            }
            Err(_) => {
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                self.mark_down("no answer within timeout_ms");
                Err(FleetError::Timeout)
            }
        }
    }

    /// `PING`; marks the state. Whether Redis answered. A down Redis is
    /// marked up only once a second `PING` on the (re)made connection
    /// answers within `timeout_ms`: a Redis slower than that is not usable.
    async fn probe(&self) -> bool {
        let was_up = self.is_up();
        let first = if was_up {
            self.timeout.max(Duration::from_millis(250))
        } else {
            CONNECT_TIMEOUT
        };
        let mut result = self.ping(first).await;
        if result.is_ok() && !was_up {
            result = self.ping(self.timeout).await;
        }
        match result {
            Ok(()) => {
                self.mark_up();
                true
            }
            Err(why) => {
                if was_up {
                    self.metrics.redis_errors.with_label_values(&["ping"]).inc();
                }
                self.mark_down(&why);
                false
            }
        }
    }

    async fn ping(&self, budget: Duration) -> Result<(), String> {
        let mut c = self.conn.clone();
        let started = Instant::now();
        let answer: Result<RedisResult<String>, _> =
            tokio::time::timeout(budget, redis::cmd("PING").query_async(&mut c)).await;
        match answer {
            Ok(Ok(_)) => {
                self.metrics
                    .redis_duration
                    .with_label_values(&["ping"])
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer to PING within its budget".into()),
        }
    }

    async fn probe_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            // While up, requests themselves show a failure at once; the
            // probe is what brings a down Redis back.
            self.probe().await;
        }
    }

    // ---- keys ----

    /// Rate-limit and cooldown keys share one tag: a request's limits are
    /// checked in one script, so they live in one slot.
    fn lim(&self) -> String {
        format!("{{{}:lim}}", self.prefix)
    }

    pub fn key_global(&self) -> String {
        format!("{}:g", self.lim())
    }

    pub fn key_route(&self, route: &str) -> String {
        format!("{}:r:{route}", self.lim())
    }

    pub fn key_client(&self, client: std::net::IpAddr) -> String {
        format!("{}:c:{client}", self.lim())
    }

    pub fn key_cooldown(&self, route: &str) -> String {
        format!("{}:cd:{route}", self.lim())
    }

    /// A duplicate-guard claim: the route's tag, the reference's SHA-256
    /// (bounded, and a glob-safe handle for `release_reference`), then the
    /// endpoint.
    pub fn key_claim(&self, route: &str, reference: &str, endpoint: &str) -> String {
        format!("{}{endpoint}", self.key_claim_prefix(route, reference))
    }

    /// Every claim on `reference` of `route` starts with this.
    pub fn key_claim_prefix(&self, route: &str, reference: &str) -> String {
        format!("{{{}:dup:{route}}}:{}:", self.prefix, short_hash(reference.as_bytes()))
    }

    pub fn key_seen(&self, webhook: &str, event_key: &str) -> String {
        format!("{{{}:wh:{webhook}}}:{}", self.prefix, short_hash(event_key.as_bytes()))
    }

    /// The route switches: one hash, a field per route.
    pub fn key_routes(&self) -> String {
        format!("{{{}:routes}}", self.prefix)
    }

    pub fn key_reflection(&self, mac_prefix: u128) -> String {
        format!("{{{}:refl:{mac_prefix:032x}}}", self.prefix)
    }

    // ---- operations ----

    /// The cooldown (when `cooldown` names the route's key) and every limit,
    /// in one round trip.
    pub async fn check_limits(&self, cooldown: Option<&str>, limits: &[FleetLimit]) -> Result<LimitAnswer, FleetError> {
        let mut inv = self.scripts.limit.prepare_invoke();
        inv.key(cooldown.unwrap_or(""));
        inv.arg(if cooldown.is_some() { "1" } else { "0" });
        for l in limits {
            let interval = 1_000_000f64 / f64::from(l.rate.max(1));
            inv.key(&l.key);
            inv.arg(interval);
            inv.arg(interval * f64::from(l.burst.max(1)));
        }
        let mut c = self.conn.clone();
        let (i, ms): (i64, i64) = self.call("limit", inv.invoke_async(&mut c)).await?;
        let wait = Duration::from_millis(ms.max(0) as u64);
        Ok(match i {
            -1 => LimitAnswer::Allowed,
            0 => LimitAnswer::Cooldown(wait),
            i => LimitAnswer::Limited {
                index: (i - 1) as usize,
                wait,
            },
        })
    }

    /// Start a cooldown on `key` (never shortening one that runs).
    pub async fn start_cooldown(&self, key: &str, length: Duration) -> Result<(), FleetError> {
        let ms = length.as_millis().max(1) as u64;
        let mut c = self.conn.clone();
        let _: i64 = self
            .call("cooldown", self.scripts.cooldown.key(key).arg(ms).invoke_async(&mut c))
            .await?;
        Ok(())
    }

    /// Take `key` with `value` for `ttl`, unless someone holds it.
    pub async fn claim(&self, op: &'static str, key: &str, value: &str, ttl: Duration) -> Result<Claimed, FleetError> {
        let mut c = self.conn.clone();
        let ms = ttl.as_millis().max(1) as u64;
        let answer: String = self
            .call(op, self.scripts.claim.key(key).arg(value).arg(ms).invoke_async(&mut c))
            .await?;
        Ok(if answer == "ok" {
            Claimed::Ours
        } else {
            Claimed::Held(answer)
        })
    }

    /// Settle a claim made with `ours`: `Some(value)` keeps the key as
    /// `value` for `ttl`, `None` releases it (if still ours).
    pub async fn settle(
        &self,
        op: &'static str,
        key: &str,
        ours: &str,
        value: Option<&str>,
        ttl: Duration,
    ) -> Result<(), FleetError> {
        let mut c = self.conn.clone();
        let ms = ttl.as_millis().max(1) as u64;
        let _: i64 = self
            .call(
                op,
                self.scripts
                    .settle
                    .key(key)
                    .arg(ours)
                    .arg(value.unwrap_or(""))
                    .arg(ms)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(())
    }

    /// `SET key 1 PX ttl`.
    pub async fn remember(&self, op: &'static str, key: &str, ttl: Duration) -> Result<(), FleetError> {
        let mut c = self.conn.clone();
        let ms = ttl.as_millis().max(1) as u64;
        self.call(
            op,
            redis::cmd("SET")
                .arg(key)
                .arg("1")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c),
        )
        .await
    }

    pub async fn exists(&self, op: &'static str, key: &str) -> Result<bool, FleetError> {
        let mut c = self.conn.clone();
        let n: i64 = self.call(op, redis::cmd("EXISTS").arg(key).query_async(&mut c)).await?;
        Ok(n > 0)
    }

    /// Delete every key starting with `prefix` (which holds no glob
    /// characters but those of the caller's making); how many. One `SCAN`
    /// pass: an operator's release, not a hot path.
    pub async fn delete_prefixed(&self, prefix: &str) -> Result<usize, FleetError> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0usize;
        loop {
            let mut c = self.conn.clone();
            let (next, keys): (u64, Vec<String>) = self
                .call(
                    "release",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c),
                )
                .await?;
            if !keys.is_empty() {
                let mut c = self.conn.clone();
                let n: i64 = self
                    .call("release", redis::cmd("DEL").arg(&keys).query_async(&mut c))
                    .await?;
                deleted += n.max(0) as usize;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Every field of the hash `key` (`HGETALL`).
    pub async fn hash_all(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<std::collections::HashMap<String, String>, FleetError> {
        let mut c = self.conn.clone();
        self.call(op, redis::cmd("HGETALL").arg(key).query_async(&mut c)).await
    }

    /// Set `field` of the hash `key` to `value` (JSON) unless the value
    /// there supersedes it (the `SWITCH` script: last writer wins by `at_ms`,
    /// a tie goes to `disabled`); the value in force afterwards.
    pub async fn hash_set_newer(
        &self,
        op: &'static str,
        key: &str,
        field: &str,
        value: &str,
        at_ms: u64,
        disabled: bool,
    ) -> Result<String, FleetError> {
        let mut c = self.conn.clone();
        let mut invocation = self.scripts.switch.prepare_invoke();
        invocation
            .key(key)
            .arg(field)
            .arg(value)
            .arg(at_ms)
            .arg(if disabled { "1" } else { "0" });
        self.call(op, invocation.invoke_async(&mut c)).await
    }

    /// A fresh value for a claim: this instance and a random token.
    pub fn token(&self) -> String {
        format!("{}:{}", self.instance, ulid::Ulid::new())
    }
}

/// 128 bits of SHA-256, hex: a bounded, glob-safe stand-in for a value.
pub fn short_hash(v: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(v)[..16])
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_script_share_a_hash_tag() {
        let tag = |k: &str| k[..=k.find('}').unwrap()].to_string();
        let lim = "{p:lim}";
        for k in [
            format!("{lim}:g"),
            format!("{lim}:r:route"),
            format!("{lim}:c:127.0.0.1"),
            format!("{lim}:cd:route"),
        ] {
            assert_eq!(tag(&k), lim);
        }
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(short_hash(b"x").len(), 32);
    }
}
