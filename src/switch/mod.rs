//! The route kill switch: an operator disables a route through the admin API
//! (`POST /routes/{name}/disable`) and from then on it answers `503
//! route_disabled` before its body is read, and nothing goes to the provider;
//! `POST /routes/{name}/enable` turns it back on.
//!
//! [`Switches`] holds the last change of every route ever switched, in an
//! `ArcSwap` the pipeline reads once per request (one map lookup). Each
//! change is stored in the state database under `[state].dir` ([`Local`]),
//! so a restart comes up as it was, and a reload keeps it (the switches are
//! keyed by route name, outside the configuration's snapshot). A route
//! removed from the configuration keeps its record, unused; a route of that
//! name configured again takes it up again.
//!
//! With `[fleet]` the changes are also in one Redis hash (a field per
//! route), which every instance polls ([`Switches::poll`]). Every record
//! carries the time it was made: the later change wins, wherever it was
//! made, and a tie goes to the disable. An instance that cannot reach Redis
//! keeps what it knew; a change made while Redis cannot answer holds here at
//! once and is written to Redis by the first poll that reaches it, unless a
//! later change is there by then. An outage never turns a route on.

mod store;

pub(crate) use store::Local;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::core::Collector as _;
use prometheus::IntGaugeVec;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, Entry};
use crate::fleet::Fleet;

/// The `op` label of the switches' Redis calls.
const OP: &str = "route_switch";

/// The last change of one route's switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Switch {
    pub disabled: bool,
    /// When the change was made (Unix milliseconds of the instance that
    /// made it): the later change wins.
    pub at_ms: u64,
    /// The admin client that made it (`IP:port`).
    pub by: String,
    /// The operator's reason, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `[fleet]`: the instance whose admin API took the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Switch {
    /// Whether this change wins over `other`: later, or at the same
    /// millisecond a disable over an enable.
    pub fn supersedes(&self, other: &Switch) -> bool {
        (self.at_ms, self.disabled) > (other.at_ms, other.disabled)
    }

    /// `at_ms` as RFC 3339 (UTC, milliseconds).
    pub fn since(&self) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(self.at_ms)).to_string()
    }

    pub fn state(&self) -> &'static str {
        if self.disabled {
            "disabled"
        } else {
            "enabled"
        }
    }
}

/// With `[fleet]`: where a change stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FleetWrite {
    /// In Redis: every instance takes it within one poll.
    Shared,
    /// Redis did not take it (the reason): it holds on this instance, and
    /// the first poll that reaches Redis writes it there.
    Pending(String),
}

/// What [`Switches::set`] did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The route is switched: in force here at once; `stored` says whether
    /// it reached the state database (it holds until a restart either way).
    Changed {
        switch: Arc<Switch>,
        stored: Result<(), String>,
        fleet: Option<FleetWrite>,
    },
    /// The route is already in that state (its last change, if any).
    Unchanged(Option<Arc<Switch>>),
    /// `[fleet]`: a later change made elsewhere is in force; it is taken
    /// here, and this one was not made.
    Superseded(Arc<Switch>),
}

use crate::statedb::now_ms;

/// The route switches of a running gateway (see the module doc).
pub(crate) struct Switches {
    map: ArcSwap<BTreeMap<String, Arc<Switch>>>,
    local: Arc<Local>,
    fleet: Option<Arc<Fleet>>,
    /// `signgate_route_disabled{route}`.
    gauge: IntGaugeVec,
    /// One change at a time, from the admin API or the fleet poll (cold:
    /// never taken by requests, which only read `map`).
    lock: tokio::sync::Mutex<()>,
}

impl Switches {
    /// The switches stored in `local`. Fails when they cannot be read: a
    /// gateway must not start with a disabled route turned on.
    pub fn load(local: Local, fleet: Option<Arc<Fleet>>, gauge: IntGaugeVec) -> Result<Switches, String> {
        let stored = local
            .load()
            .map_err(|e| format!("reading the route switches in {}: {e}", local.path().display()))?;
        for (route, s) in &stored {
            gauge.with_label_values(&[route.as_str()]).set(i64::from(s.disabled));
        }
        Ok(Switches {
            map: ArcSwap::from_pointee(stored.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            local: Arc::new(local),
            fleet,
            gauge,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether `route` is disabled (the pipeline's check: one lookup).
    pub fn is_disabled(&self, route: &str) -> bool {
        self.map.load().get(route).is_some_and(|s| s.disabled)
    }

    /// The last change of `route`, if it was ever switched.
    pub fn get(&self, route: &str) -> Option<Arc<Switch>> {
        self.map.load().get(route).cloned()
    }

    /// Every route ever switched, with its last change.
    pub fn all(&self) -> Arc<BTreeMap<String, Arc<Switch>>> {
        self.map.load_full()
    }

    /// Disable or enable `route` (whose name the caller has checked), for
    /// the admin client `by`. With `[fleet]` the change is written to Redis
    /// first (unless a later one is there); then it is in force here, then
    /// stored. The caller runs this as a task of its own, so a client that
    /// goes away does not leave it half done.
    pub async fn set(&self, route: &str, disabled: bool, reason: Option<String>, by: SocketAddr) -> Outcome {
        let _one = self.lock.lock().await;
        let current = self.get(route);
        if current.as_ref().map_or(!disabled, |c| c.disabled == disabled) {
            return Outcome::Unchanged(current);
        }
        let switch = Arc::new(Switch {
            disabled,
            // Later than the change it replaces, even if the clock stepped back.
            at_ms: now_ms().max(current.map_or(0, |c| c.at_ms + 1)),
            by: by.to_string(),
            reason,
            instance: self.fleet.as_ref().map(|f| f.instance().to_string()),
        });
        let fleet = match &self.fleet {
            None => None,
            Some(f) => match push(f, route, &switch).await {
                Ok(in_force) if in_force == switch => Some(FleetWrite::Shared),
                Ok(later) => {
                    if let Err(e) = self.apply(route, later.clone()).await {
                        tracing::error!(route, error = %e, "route switch: storing the fleet's later change failed; it holds until a restart");
                    }
                    return Outcome::Superseded(later);
                }
                Err(why) => Some(FleetWrite::Pending(why)),
            },
        };
        let stored = self.apply(route, switch.clone()).await;
        Outcome::Changed { switch, stored, fleet }
    }

    /// Put `switch` in force for `route` (at once), then store it.
    async fn apply(&self, route: &str, switch: Arc<Switch>) -> Result<(), String> {
        self.map.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(route.to_string(), switch.clone());
            m
        });
        self.gauge.with_label_values(&[route]).set(i64::from(switch.disabled));
        let (local, route) = (self.local.clone(), route.to_string());
        tokio::task::spawn_blocking(move || local.put(&route, &switch))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", self.local.path().display()))
    }

    /// `[fleet]`: one round with Redis: take every change there that is
    /// later than what this instance knows, and write there every change of
    /// this instance that Redis lacks or has older (made while Redis could
    /// not answer, or lost by Redis). Without an answer nothing changes.
    /// The changes taken, for the log and the audit.
    pub async fn sync(&self) -> Vec<(String, Arc<Switch>)> {
        let Some(fleet) = &self.fleet else {
            return Vec::new();
        };
        let Ok(remote) = fleet.hash_all(OP, &fleet.key_routes()).await else {
            return Vec::new();
        };
        let _one = self.lock.lock().await;
        let parse = |text: &String| serde_json::from_str::<Switch>(text).ok().map(Arc::new);
        let remote: BTreeMap<&String, Arc<Switch>> = remote
            .iter()
            .filter_map(|(route, text)| {
                let parsed = parse(text);
                if parsed.is_none() {
                    tracing::debug!(
                        route,
                        "route switch: a value in Redis does not parse; this instance's is written over it"
                    );
                }
                Some((route, parsed?))
            })
            .collect();
        let known = self.map.load_full();
        let mut taken = Vec::new();
        for (route, theirs) in &remote {
            if known.get(*route).is_none_or(|ours| theirs.supersedes(ours)) {
                if let Err(e) = self.apply(route, theirs.clone()).await {
                    tracing::error!(route = route.as_str(), error = %e, "route switch: storing the fleet's change failed; it holds until a restart");
                }
                taken.push(((*route).clone(), theirs.clone()));
            }
        }
        for (route, ours) in known.iter() {
            if remote.get(route).is_some_and(|theirs| !ours.supersedes(theirs)) {
                continue;
            }
            match push(fleet, route, ours).await {
                Ok(in_force) if in_force == *ours => {
                    tracing::info!(
                        route = route.as_str(),
                        state = ours.state(),
                        "route switch: a change Redis did not have is shared with the fleet now"
                    );
                }
                Ok(later) => {
                    if let Err(e) = self.apply(route, later.clone()).await {
                        tracing::error!(route = route.as_str(), error = %e, "route switch: storing the fleet's change failed; it holds until a restart");
                    }
                    taken.push((route.clone(), later));
                }
                // Redis went away meanwhile: the next round tries again.
                Err(_) => break,
            }
        }
        taken
    }

    /// `[fleet]`: [`Switches::sync`] every `every` until `stop`; each change
    /// taken from the fleet is logged and audited (`reason: "fleet"`), with
    /// the audit log `audit` gives (taken even when none is there).
    pub async fn poll<A>(self: Arc<Self>, every: Duration, stop: CancellationToken, audit: A)
    where
        A: Fn() -> Option<Arc<AuditLog>> + Send + 'static,
    {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (route, s) in self.sync().await {
                record_taken(&route, &s, audit()).await;
            }
        }
    }

    /// Bring `signgate_route_disabled` in line with the configured routes
    /// (at scrape time): 0 or 1 for each, no series for any other name.
    pub fn observe<'a>(&self, configured: impl IntoIterator<Item = &'a str>) {
        let map = self.map.load();
        let mut keep = BTreeSet::new();
        for route in configured {
            let disabled = map.get(route).is_some_and(|s| s.disabled);
            self.gauge.with_label_values(&[route]).set(i64::from(disabled));
            keep.insert(route);
        }
        let mut stale = Vec::new();
        for family in self.gauge.collect() {
            for m in family.get_metric() {
                for label in m.get_label() {
                    if label.name() == "route" && !keep.contains(label.value()) {
                        stale.push(label.value().to_string());
                    }
                }
            }
        }
        for route in stale {
            let _ = self.gauge.remove_label_values(&[route.as_str()]);
        }
    }
}

/// Log and audit (`reason: "fleet"`) a change [`Switches::sync`] took from
/// the fleet; it is in force whether or not `audit` can record it.
pub(crate) async fn record_taken(route: &str, s: &Switch, audit: Option<Arc<AuditLog>>) {
    tracing::info!(
        route,
        state = s.state(),
        by = s.by,
        instance = s.instance.as_deref().unwrap_or("-"),
        reason = s.reason.as_deref().unwrap_or(""),
        "route {} through the fleet",
        s.state()
    );
    let slot = match audit {
        Some(log) => log.reserve().await,
        None => None,
    };
    match slot {
        Some(slot) => slot.write(audit_entry(route, s, "fleet", Some("redis"))),
        None => tracing::error!(
            route,
            "route switch taken from the fleet, but the audit log cannot record it"
        ),
    }
}

/// Write `switch` to the fleet's hash unless a later change is there; the
/// change in force afterwards (`switch` itself, or the later one).
async fn push(fleet: &Fleet, route: &str, switch: &Arc<Switch>) -> Result<Arc<Switch>, String> {
    let text = serde_json::to_string(&**switch).map_err(|e| e.to_string())?;
    let in_force = fleet
        .hash_set_newer(OP, &fleet.key_routes(), route, &text, switch.at_ms, switch.disabled)
        .await
        .map_err(|e| e.to_string())?;
    if in_force == text {
        return Ok(switch.clone());
    }
    serde_json::from_str::<Switch>(&in_force)
        .map(Arc::new)
        .map_err(|e| format!("the value in Redis does not parse: {e}"))
}

/// The audit record of a change: `decision` `disabled` or `enabled`,
/// `reason` `operator` (through this instance's admin API) or `fleet`
/// (taken from another instance through Redis), `client` the admin client
/// that made it, `note` the operator's reason.
pub(crate) fn audit_entry(route: &str, s: &Switch, source: &'static str, fleet: Option<&'static str>) -> Entry {
    let action = if s.disabled { "disable" } else { "enable" };
    Entry {
        reason: Some(source),
        fleet,
        note: s.reason.clone(),
        ..Entry::event(
            format!("route-{action}-{}", ulid::Ulid::new()),
            s.by.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            route,
            format!("/routes/{route}/{action}"),
            s.state(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(disabled: bool, at_ms: u64) -> Switch {
        Switch {
            disabled,
            at_ms,
            by: "127.0.0.1:1".into(),
            reason: None,
            instance: None,
        }
    }

    #[test]
    fn the_later_change_wins_and_a_tie_goes_to_the_disable() {
        assert!(switch(false, 2).supersedes(&switch(true, 1)));
        assert!(!switch(true, 1).supersedes(&switch(false, 2)));
        assert!(switch(true, 5).supersedes(&switch(false, 5)));
        assert!(!switch(false, 5).supersedes(&switch(true, 5)));
        assert!(!switch(true, 5).supersedes(&switch(true, 5)));
        assert_eq!(switch(true, 1_700_000_000_123).since(), "2023-11-14T22:13:20.123Z");
    }

    #[tokio::test]
    async fn changes_are_stored_and_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let gauge = || IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["route"]).unwrap();
        let by: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        let s = Switches::load(Local::new(state.clone(), None), None, gauge()).unwrap();
        assert!(
            !crate::statedb::exists(&state),
            "nothing is written before the first change"
        );
        assert!(matches!(s.set("r", false, None, by).await, Outcome::Unchanged(None)));
        let Outcome::Changed { switch, stored, fleet } = s.set("r", true, Some("incident".into()), by).await else {
            panic!("not changed");
        };
        assert_eq!((stored, fleet), (Ok(()), None));
        assert_eq!(
            (switch.by.as_str(), switch.reason.as_deref()),
            ("127.0.0.9:4000", Some("incident"))
        );
        assert!(s.is_disabled("r") && !s.is_disabled("other"));
        assert!(matches!(s.set("r", true, None, by).await, Outcome::Unchanged(Some(_))));
        s.observe(["r", "q"]);
        assert_eq!(s.gauge.with_label_values(&["r"]).get(), 1);
        drop(s);
        let again = Switches::load(
            Local::new(state.clone(), Some(crate::statedb::open(&state).unwrap())),
            None,
            gauge(),
        )
        .unwrap();
        assert!(again.is_disabled("r"));
        assert_eq!(again.get("r").unwrap().reason.as_deref(), Some("incident"));
        let Outcome::Changed { switch: on, .. } = again.set("r", false, None, by).await else {
            panic!("not changed");
        };
        assert!(on.at_ms > switch.at_ms && !again.is_disabled("r"));
        // A route no longer configured: its series goes.
        again.observe(["q"]);
        let names: Vec<String> = again.gauge.collect()[0]
            .get_metric()
            .iter()
            .map(|m| m.get_label()[0].value().to_string())
            .collect();
        assert_eq!(names, ["q"]);
    }

    #[test]
    fn a_record_that_does_not_parse_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::statedb::open(dir.path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("route_switches"))
                .unwrap();
            t.insert("r", b"{not json".as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let gauge = IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["route"]).unwrap();
        let err = Switches::load(Local::new(dir.path().to_path_buf(), Some(db)), None, gauge)
            .err()
            .unwrap();
        assert!(err.contains("route r"), "{err}");
    }
}
