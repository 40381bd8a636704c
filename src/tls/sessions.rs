//! The upstream client's TLS session store: more room than rustls's own
//! (`ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server,
//! and a ticket is used once), so that when the pooled connections to a
//! provider reconnect together — the provider closed them after N requests,
//! or a burst needed more — each can resume its session instead of a full
//! handshake.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// TLS 1.3 tickets kept per server (the newest are used first).
pub const TICKETS_PER_SERVER: usize = 1024;
/// Servers remembered (upstream hosts; a few in practice). Past it, the
/// server remembered first is forgotten.
const MAX_SERVERS: usize = 256;

#[derive(Default)]
struct ServerData {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

#[derive(Default)]
struct Servers {
    map: HashMap<ServerName<'static>, ServerData>,
    /// Insertion order, for eviction.
    order: VecDeque<ServerName<'static>>,
}

impl Servers {
    fn edit(&mut self, name: ServerName<'static>, f: impl FnOnce(&mut ServerData)) {
        if let Some(d) = self.map.get_mut(&name) {
            f(d);
            return;
        }
        if self.map.len() >= MAX_SERVERS {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        let mut d = ServerData::default();
        f(&mut d);
        self.order.push_back(name.clone());
        self.map.insert(name, d);
    }
}

/// A session store with room for [`TICKETS_PER_SERVER`] tickets per server.
#[derive(Default)]
pub struct SessionStore {
    servers: Mutex<Servers>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore").finish_non_exhaustive()
    }
}

impl SessionStore {
    fn with<T>(&self, f: impl FnOnce(&mut Servers) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-edit: the
        // data is a cache, still usable.
        let mut g = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(|s| s.edit(server_name, |d| d.kx_hint = Some(group)));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|s| s.map.get(server_name).and_then(|d| d.kx_hint))
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(|s| s.edit(server_name, |d| d.tls12 = Some(value)));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(|s| s.map.get(server_name).and_then(|d| d.tls12.clone()))
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(|s| {
            if let Some(d) = s.map.get_mut(server_name) {
                d.tls12 = None;
            }
        });
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(|s| {
            s.edit(server_name, |d| {
                if d.tls13.len() >= TICKETS_PER_SERVER {
                    d.tls13.pop_front();
                }
                d.tls13.push_back(value);
            })
        });
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(|s| s.map.get_mut(server_name).and_then(|d| d.tls13.pop_back()))
    }
}
