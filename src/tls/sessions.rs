//! The upstream client's TLS session store: more room than rustls's own
//! (`ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server,
//! and a ticket is used once), so that when the pooled connections to a
//! provider reconnect together — the provider closed them after N requests,
//! or a burst needed more — each can resume its session instead of a full
//! handshake.

use std::collections::VecDeque;

use dashmap::DashMap;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// TLS 1.3 tickets kept per server (the newest are used first).
pub const TICKETS_PER_SERVER: usize = 1024;
/// Servers remembered (upstream hosts; a few in practice). Past it, one is
/// forgotten to make room.
const MAX_SERVERS: usize = 256;

#[derive(Default)]
struct ServerData {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// A session store with room for [`TICKETS_PER_SERVER`] tickets per server
/// (touched once per handshake, never per request).
#[derive(Default)]
pub struct SessionStore {
    servers: DashMap<ServerName<'static>, ServerData>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore").finish_non_exhaustive()
    }
}

impl SessionStore {
    fn edit(&self, name: ServerName<'static>, f: impl FnOnce(&mut ServerData)) {
        if !self.servers.contains_key(&name) && self.servers.len() >= MAX_SERVERS {
            let old = self.servers.iter().next().map(|e| e.key().clone());
            if let Some(old) = old {
                self.servers.remove(&old);
            }
        }
        f(&mut self.servers.entry(name).or_default());
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.edit(server_name, |d| d.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        // (Owned: the map's keys are `'static`; once per handshake.)
        self.servers.get(&server_name.to_owned()).and_then(|d| d.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.edit(server_name, |d| d.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.servers.get(&server_name.to_owned()).and_then(|d| d.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(mut d) = self.servers.get_mut(server_name) {
            d.tls12 = None;
        }
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.edit(server_name, |d| {
            if d.tls13.len() >= TICKETS_PER_SERVER {
                d.tls13.pop_front();
            }
            d.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.servers.get_mut(server_name).and_then(|mut d| d.tls13.pop_back())
    }
}
