//! A typed builder for `gateway.toml`, for the demo and the tests.
//!
//! Every section and key is set through a method; the document is a
//! [`toml::Table`] underneath and is rendered only at the end, either as
//! text (for a child process, written to a file) or straight into a
//! validated [`Config`]. Setting a key again replaces its value, so a test
//! starts from a shared base and changes only what it is about:
//!
//! ```
//! use std::path::Path;
//!
//! use signgate::devtools::config::{Credential, GatewayToml, Route};
//!
//! let toml = GatewayToml::new()
//!     .listener("addr", "127.0.0.1:0")
//!     .allow(["127.0.0.0/8", "::1/128"])
//!     .credential_file("kwikpaisa", "/run/signgate/kwikpaisa.json")
//!     .route(Route::kwikpaisa("https://localhost:8443").duplicate_key("/order_id"))
//!     .egress_ca(Path::new("/etc/signgate/provider-ca.pem"))
//!     .listener("max_body_bytes", 4096)
//!     .edit_route("kwikpaisa", |r| r.limit(1, 5))
//!     .edit_credential("kwikpaisa", |c| c.poll_ms(50))
//!     .credential("backup", Credential::env("BACKUP_API_KEY", "BACKUP_SECRET_KEY"));
//! assert!(toml.to_config().is_ok(), "{toml}");
//! ```
//!
//! Keys are not checked here (a test may well want an unknown or invalid
//! one); the gateway's own validation judges the result.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::config::{Config, ConfigErrors};

/// A value that can stand on the right of `key = `: strings, paths (as
/// strings), booleans, integers, arrays of these, and TOML values and tables.
pub trait ToToml {
    fn to_toml(self) -> Value;
}

impl ToToml for Value {
    fn to_toml(self) -> Value {
        self
    }
}

impl ToToml for Table {
    fn to_toml(self) -> Value {
        Value::Table(self)
    }
}

impl ToToml for &str {
    fn to_toml(self) -> Value {
        Value::String(self.to_string())
    }
}

impl ToToml for String {
    fn to_toml(self) -> Value {
        Value::String(self)
    }
}

impl ToToml for &String {
    fn to_toml(self) -> Value {
        Value::String(self.clone())
    }
}

impl ToToml for bool {
    fn to_toml(self) -> Value {
        Value::Boolean(self)
    }
}

macro_rules! integer_to_toml {
    ($($t:ty),*) => {$(
        impl ToToml for $t {
            /// # Panics
            /// When the number does not fit TOML's 64-bit signed integers.
            fn to_toml(self) -> Value {
                Value::Integer(i64::try_from(self).expect("a TOML integer is at most i64::MAX"))
            }
        }
    )*};
}

integer_to_toml!(i32, i64, u16, u32, u64, usize);

impl ToToml for f64 {
    fn to_toml(self) -> Value {
        Value::Float(self)
    }
}

impl ToToml for &Path {
    fn to_toml(self) -> Value {
        Value::String(self.to_string_lossy().into_owned())
    }
}

impl ToToml for &PathBuf {
    fn to_toml(self) -> Value {
        self.as_path().to_toml()
    }
}

impl ToToml for PathBuf {
    fn to_toml(self) -> Value {
        self.as_path().to_toml()
    }
}

impl<T: ToToml> ToToml for Vec<T> {
    fn to_toml(self) -> Value {
        Value::Array(self.into_iter().map(ToToml::to_toml).collect())
    }
}

impl<T: ToToml, const N: usize> ToToml for [T; N] {
    fn to_toml(self) -> Value {
        Value::Array(self.into_iter().map(ToToml::to_toml).collect())
    }
}

impl<T: ToToml + Clone> ToToml for &[T] {
    fn to_toml(self) -> Value {
        Value::Array(self.iter().cloned().map(ToToml::to_toml).collect())
    }
}

/// `{ rate = R, burst = B }`: a route's `limit`, or `[limits]` `global` and
/// `per_client`.
pub fn quota(rate: u64, burst: u64) -> Table {
    let mut t = Table::new();
    t.insert("rate".into(), rate.to_toml());
    t.insert("burst".into(), burst.to_toml());
    t
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayToml {
    table: Table,
}

impl GatewayToml {
    /// An empty file (every key at its default; `[access].allow` is required).
    pub fn new() -> Self {
        Self::default()
    }

    /// `[section] key = value`, replacing an earlier value. `section` may be
    /// dotted (`"scheme.acme"`) for nested tables.
    ///
    /// # Panics
    /// When a part of `section` is already something other than a table.
    pub fn set(mut self, section: &str, key: &str, value: impl ToToml) -> Self {
        let mut t = &mut self.table;
        for part in section.split('.') {
            t = t
                .entry(part)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("[{section}]: {part} is not a table"));
        }
        t.insert(key.to_string(), value.to_toml());
        self
    }

    /// Remove `[section] key` (the key then takes its default).
    pub fn unset(mut self, section: &str, key: &str) -> Self {
        let mut t = Some(&mut self.table);
        for part in section.split('.') {
            t = t.and_then(|t| t.get_mut(part)).and_then(Value::as_table_mut);
        }
        if let Some(t) = t {
            t.remove(key);
        }
        self
    }

    /// The value of `[section] key`, if set.
    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        let mut t = &self.table;
        for part in section.split('.') {
            t = t.get(part)?.as_table()?;
        }
        t.get(key)
    }

    /// `[log] key = value` (`format = "text" | "json"`).
    pub fn log(self, key: &str, value: impl ToToml) -> Self {
        self.set("log", key, value)
    }

    /// `[listener] key = value`.
    pub fn listener(self, key: &str, value: impl ToToml) -> Self {
        self.set("listener", key, value)
    }

    /// `[admin] key = value` (`addr = ""` turns the admin listener off).
    pub fn admin(self, key: &str, value: impl ToToml) -> Self {
        self.set("admin", key, value)
    }

    /// `[access] key = value`.
    pub fn access(self, key: &str, value: impl ToToml) -> Self {
        self.set("access", key, value)
    }

    /// `[limits] key = value` (see [`quota`]).
    pub fn limits(self, key: &str, value: impl ToToml) -> Self {
        self.set("limits", key, value)
    }

    /// `[egress] key = value`.
    pub fn egress(self, key: &str, value: impl ToToml) -> Self {
        self.set("egress", key, value)
    }

    /// `[audit] key = value`.
    pub fn audit(self, key: &str, value: impl ToToml) -> Self {
        self.set("audit", key, value)
    }

    /// `[state] key = value`.
    pub fn state(self, key: &str, value: impl ToToml) -> Self {
        self.set("state", key, value)
    }

    /// `[tracing] key = value` (`otlp_endpoint`, `sample_ratio`, `service_name`).
    pub fn tracing(self, key: &str, value: impl ToToml) -> Self {
        self.set("tracing", key, value)
    }

    /// `[fleet] key = value` (`redis_url`, `expected_instances`, ...).
    pub fn fleet(self, key: &str, value: impl ToToml) -> Self {
        self.set("fleet", key, value)
    }

    /// `[listener] tls_cert` and `tls_key`: a TLS listener.
    pub fn listener_tls(self, cert: &Path, key: &Path) -> Self {
        self.listener("tls_cert", cert).listener("tls_key", key)
    }

    /// `[access] allow`: who may send anything.
    pub fn allow<S: ToToml>(self, cidrs: impl IntoIterator<Item = S>) -> Self {
        self.access("allow", cidrs.into_iter().collect::<Vec<_>>())
    }

    /// `[egress] ca_file`: the only CA trusted for upstreams.
    pub fn egress_ca(self, ca_file: &Path) -> Self {
        self.egress("ca_file", ca_file)
    }

    /// `[audit] path`.
    pub fn audit_path(self, path: &Path) -> Self {
        self.audit("path", path)
    }

    /// `[state] dir`.
    pub fn state_dir(self, dir: &Path) -> Self {
        self.state("dir", dir)
    }

    /// `[credentials.NAME]`, replacing an earlier one of that name whole.
    pub fn credential(mut self, name: &str, credential: Credential) -> Self {
        let creds = self
            .table
            .entry("credentials")
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("credentials is a table");
        creds.insert(name.to_string(), Value::Table(credential.0));
        self
    }

    /// `[credentials.NAME]` from a JSON file (`source = "file"`).
    pub fn credential_file(self, name: &str, path: impl AsRef<Path>) -> Self {
        self.credential(name, Credential::file(path))
    }

    /// Change `[credentials.NAME]`.
    ///
    /// # Panics
    /// When there is no such credential.
    pub fn edit_credential(mut self, name: &str, edit: impl FnOnce(Credential) -> Credential) -> Self {
        let slot = self
            .table
            .get_mut("credentials")
            .and_then(Value::as_table_mut)
            .and_then(|c| c.get_mut(name))
            .and_then(Value::as_table_mut)
            .unwrap_or_else(|| panic!("no [credentials.{name}] to edit"));
        *slot = edit(Credential(std::mem::take(slot))).0;
        self
    }

    /// Append a `[[route]]` (routes are tried longest prefix first; their
    /// order in the file only shows in error messages, `route[N]`).
    pub fn route(self, route: Route) -> Self {
        self.push("route", route.0)
    }

    /// Append each of `routes`.
    pub fn routes(self, routes: impl IntoIterator<Item = Route>) -> Self {
        routes.into_iter().fold(self, Self::route)
    }

    /// Change the `[[route]]` named `name`.
    ///
    /// # Panics
    /// When there is no such route.
    pub fn edit_route(self, name: &str, edit: impl FnOnce(Route) -> Route) -> Self {
        self.edit_named("route", name, |t| edit(Route(t)).0)
    }

    /// Remove the `[[route]]` named `name`, if there is one.
    pub fn remove_route(mut self, name: &str) -> Self {
        if let Some(routes) = self.table.get_mut("route").and_then(Value::as_array_mut) {
            routes.retain(|r| r.get("name").and_then(Value::as_str) != Some(name));
        }
        self
    }

    /// Append a `[[webhook]]`.
    pub fn webhook(self, webhook: Webhook) -> Self {
        self.push("webhook", webhook.0)
    }

    /// Change the `[[webhook]]` named `name`.
    ///
    /// # Panics
    /// When there is no such webhook.
    pub fn edit_webhook(self, name: &str, edit: impl FnOnce(Webhook) -> Webhook) -> Self {
        self.edit_named("webhook", name, |t| edit(Webhook(t)).0)
    }

    fn push(mut self, key: &str, item: Table) -> Self {
        self.table
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .unwrap_or_else(|| panic!("{key} is an array of tables"))
            .push(Value::Table(item));
        self
    }

    fn edit_named(mut self, key: &str, name: &str, edit: impl FnOnce(Table) -> Table) -> Self {
        let item = self
            .table
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .and_then(|a| {
                a.iter_mut()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            })
            .and_then(Value::as_table_mut)
            .unwrap_or_else(|| panic!("no [[{key}]] named {name} to edit"));
        *item = edit(std::mem::take(item));
        self
    }

    /// The document as TOML text.
    pub fn render(&self) -> String {
        toml::to_string(&self.table).expect("a table of TOML values always serializes")
    }

    /// Parse and validate the document as the gateway does.
    pub fn to_config(&self) -> Result<Config, ConfigErrors> {
        Config::from_toml_str(&self.render())
    }

    /// The underlying table.
    pub fn as_table(&self) -> &Table {
        &self.table
    }
}

impl std::fmt::Display for GatewayToml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// One `[credentials.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credential(Table);

impl Credential {
    fn source(source: &str) -> Self {
        Credential::default().set("source", source)
    }

    /// `source = "env"`: the API key and secret from two variables.
    pub fn env(api_key_env: &str, secret_env: &str) -> Self {
        Self::source("env")
            .set("api_key_env", api_key_env)
            .set("secret_env", secret_env)
    }

    /// `source = "file"`: a JSON file with `api_key` and `secret_key`.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self::source("file").set("path", path.as_ref())
    }

    /// `source = "vault"` at `vault_addr`, KV path `vault_path`; with no
    /// `vault_auth` the token comes from `VAULT_TOKEN`.
    pub fn vault(addr: &str, path: &str) -> Self {
        Self::source("vault").set("vault_addr", addr).set("vault_path", path)
    }

    /// [`Credential::vault`] with `vault_auth = "token"` read from `token_file`.
    pub fn vault_token(addr: &str, path: &str, token_file: &Path) -> Self {
        Self::vault(addr, path)
            .set("vault_auth", "token")
            .set("vault_token_file", token_file)
    }

    /// [`Credential::vault`] with `vault_auth = "approle"` and the ids in files.
    pub fn vault_approle(addr: &str, path: &str, role_id_file: &Path, secret_id_file: &Path) -> Self {
        Self::vault(addr, path)
            .set("vault_auth", "approle")
            .set("vault_role_id_file", role_id_file)
            .set("vault_secret_id_file", secret_id_file)
    }

    /// Any key, replacing an earlier value.
    pub fn set(mut self, key: &str, value: impl ToToml) -> Self {
        self.0.insert(key.to_string(), value.to_toml());
        self
    }

    /// `poll_ms` (file source).
    pub fn poll_ms(self, ms: u64) -> Self {
        self.set("poll_ms", ms)
    }

    /// `refresh_secs` (Vault source).
    pub fn refresh_secs(self, secs: u64) -> Self {
        self.set("refresh_secs", secs)
    }

    /// `vault_ca_file`: a private CA for the Vault server.
    pub fn vault_ca_file(self, path: &Path) -> Self {
        self.set("vault_ca_file", path)
    }

    /// `vault_max_stale_secs`: fail closed past this age.
    pub fn vault_max_stale_secs(self, secs: u64) -> Self {
        self.set("vault_max_stale_secs", secs)
    }

    /// `vault_timeout_ms`: the budget of one refresh.
    pub fn vault_timeout_ms(self, ms: u64) -> Self {
        self.set("vault_timeout_ms", ms)
    }

    /// `source = "vault_transit"` at `vault_addr`: the HMAC is computed by
    /// the Transit key `transit_key` (the API key still has to be given:
    /// [`Credential::api_key_env`] or [`Credential::api_key_kv`]); with no
    /// `vault_auth` the token comes from `VAULT_TOKEN`.
    pub fn vault_transit(addr: &str, transit_key: &str) -> Self {
        Self::source("vault_transit")
            .set("vault_addr", addr)
            .set("transit_key", transit_key)
    }

    /// `vault_auth = "token"` read from `token_file`.
    pub fn token_file(self, token_file: &Path) -> Self {
        self.set("vault_auth", "token").set("vault_token_file", token_file)
    }

    /// `api_key_env`: a Transit credential's API key from a variable.
    pub fn api_key_env(self, var: &str) -> Self {
        self.set("api_key_env", var)
    }

    /// `vault_path` (KV v2 under `vault_mount`, default `secret`): a Transit
    /// credential's API key from the field `api_key` of that secret.
    pub fn api_key_kv(self, path: &str) -> Self {
        self.set("vault_path", path)
    }

    /// `transit_mount` (default `transit`).
    pub fn transit_mount(self, mount: &str) -> Self {
        self.set("transit_mount", mount)
    }

    /// `transit_timeout_ms`: the budget of one HMAC call.
    pub fn transit_timeout_ms(self, ms: u64) -> Self {
        self.set("transit_timeout_ms", ms)
    }
}

/// One entry of a route's `credential_map` ([`Route::credential_map`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CredentialRule(Table);

impl CredentialRule {
    /// `{ client = "CIDR", credential = "NAME" }`.
    pub fn client(cidr: &str, credential: &str) -> Self {
        let mut t = Table::new();
        t.insert("client".into(), cidr.to_toml());
        t.insert("credential".into(), credential.to_toml());
        CredentialRule(t)
    }

    /// `{ identity = "uri:…" | "dns:…", credential = "NAME" }`.
    pub fn identity(identity: &str, credential: &str) -> Self {
        let mut t = Table::new();
        t.insert("identity".into(), identity.to_toml());
        t.insert("credential".into(), credential.to_toml());
        CredentialRule(t)
    }
}

/// One `[[route]]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route(Table);

impl Route {
    /// `name`, `match_prefix` and `upstream`; nothing else.
    pub fn new(name: &str, match_prefix: &str, upstream: &str) -> Self {
        Route::default()
            .set("name", name)
            .set("match_prefix", match_prefix)
            .set("upstream", upstream)
    }

    /// Route `name` on `/name/` (prefix stripped) to `upstream`, signing
    /// with credential `kwikpaisa` and the `kwikpaisa` scheme, POST only.
    pub fn to(name: &str, upstream: &str) -> Self {
        Self::new(name, &format!("/{name}/"), upstream)
            .strip_prefix(true)
            .credential("kwikpaisa")
            .scheme("kwikpaisa")
            .methods(["POST"])
    }

    /// The shipped route: `kwikpaisa` on `/kwikpaisa/` to `upstream`.
    pub fn kwikpaisa(upstream: &str) -> Self {
        Self::to("kwikpaisa", upstream)
    }

    /// Any key, replacing an earlier value.
    pub fn set(mut self, key: &str, value: impl ToToml) -> Self {
        self.0.insert(key.to_string(), value.to_toml());
        self
    }

    /// The route's `name`.
    pub fn name(&self) -> Option<&str> {
        self.0.get("name").and_then(Value::as_str)
    }

    pub fn upstream(self, upstream: &str) -> Self {
        self.set("upstream", upstream)
    }

    pub fn strip_prefix(self, strip: bool) -> Self {
        self.set("strip_prefix", strip)
    }

    pub fn credential(self, name: &str) -> Self {
        self.set("credential", name)
    }

    /// `credential_map`: the credential by caller, first match (replaces
    /// `credential`, which cannot go with it).
    pub fn credential_map(mut self, rules: impl IntoIterator<Item = CredentialRule>) -> Self {
        self.0.remove("credential");
        self.set(
            "credential_map",
            rules.into_iter().map(|r| Value::Table(r.0)).collect::<Vec<_>>(),
        )
    }

    pub fn scheme(self, name: &str) -> Self {
        self.set("scheme", name)
    }

    pub fn methods<S: ToToml>(self, methods: impl IntoIterator<Item = S>) -> Self {
        self.set("methods", methods.into_iter().collect::<Vec<_>>())
    }

    /// The route's own allowlist (on top of `[access]`).
    pub fn allow<S: ToToml>(self, cidrs: impl IntoIterator<Item = S>) -> Self {
        self.set("allow", cidrs.into_iter().collect::<Vec<_>>())
    }

    /// mTLS identities (SAN URIs or DNS names) admitted on this route.
    pub fn allow_identities<S: ToToml>(self, ids: impl IntoIterator<Item = S>) -> Self {
        self.set("allow_identities", ids.into_iter().collect::<Vec<_>>())
    }

    /// `limit = { rate, burst }`.
    pub fn limit(self, rate: u64, burst: u64) -> Self {
        self.set("limit", quota(rate, burst))
    }

    /// `duplicate_key`: the JSON pointer of the reference the duplicate guard keys on.
    pub fn duplicate_key(self, pointer: &str) -> Self {
        self.set("duplicate_key", pointer)
    }

    pub fn duplicate_window_secs(self, secs: u64) -> Self {
        self.set("duplicate_window_secs", secs)
    }

    pub fn max_inflight(self, n: u64) -> Self {
        self.set("max_inflight", n)
    }

    pub fn queue_timeout_ms(self, ms: u64) -> Self {
        self.set("queue_timeout_ms", ms)
    }

    /// Send the gateway's own `traceparent` to the upstream (needs `[tracing]`).
    pub fn forward_traceparent(self, on: bool) -> Self {
        self.set("forward_traceparent", on)
    }

    /// `honor_retry_after`: a provider 429/503 with `Retry-After` cools the route down.
    pub fn honor_retry_after(self, honor: bool) -> Self {
        self.set("honor_retry_after", honor)
    }
}

/// One `[[webhook]]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Webhook(Table);

impl Webhook {
    /// `name`, `match_path`, `credential` and `forward_to`; nothing else.
    pub fn new(name: &str, match_path: &str, credential: &str, forward_to: &str) -> Self {
        Webhook::default()
            .set("name", name)
            .set("match_path", match_path)
            .set("credential", credential)
            .set("forward_to", forward_to)
    }

    /// KwikPaisa's events: `kwikpaisa-events` on `/webhooks/kwikpaisa`,
    /// verified with credential and scheme `kwikpaisa`, 300 s tolerance.
    pub fn kwikpaisa(forward_to: &str) -> Self {
        Self::new("kwikpaisa-events", "/webhooks/kwikpaisa", "kwikpaisa", forward_to)
            .set("scheme", "kwikpaisa")
            .tolerance_secs(300)
    }

    /// Any key, replacing an earlier value.
    pub fn set(mut self, key: &str, value: impl ToToml) -> Self {
        self.0.insert(key.to_string(), value.to_toml());
        self
    }

    /// `tolerance_secs`: accepted timestamp age, either direction.
    pub fn tolerance_secs(self, secs: u64) -> Self {
        self.set("tolerance_secs", secs)
    }

    /// `dedup_window_secs`: how long an event key counts as seen.
    pub fn dedup_window_secs(self, secs: u64) -> Self {
        self.set("dedup_window_secs", secs)
    }

    pub fn verify_canonical(self, on: bool) -> Self {
        self.set("verify_canonical", on)
    }

    pub fn max_attempts(self, n: u64) -> Self {
        self.set("max_attempts", n)
    }

    pub fn rotation_grace_secs(self, secs: u64) -> Self {
        self.set("rotation_grace_secs", secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> GatewayToml {
        GatewayToml::new()
            .listener("addr", "127.0.0.1:0")
            .admin("addr", "")
            .allow(["127.0.0.0/8", "::1/128"])
            .egress_ca(Path::new("/tmp/ca.pem"))
            .credential("kwikpaisa", Credential::file("/tmp/kwikpaisa.json").poll_ms(50))
            .route(Route::kwikpaisa("https://localhost:8443"))
    }

    #[test]
    fn renders_what_the_gateway_reads() {
        let toml = base()
            .edit_route("kwikpaisa", |r| r.limit(1, 5).duplicate_key("/order_id"))
            .limits("per_client", quota(1, 2))
            .route(Route::to("second", "https://localhost:9443").methods(["POST", "GET"]))
            .webhook(Webhook::kwikpaisa("http://127.0.0.1:9/events").max_attempts(2))
            .set("scheme.acme", "message", "{body}{timestamp}");
        let text = toml.render();
        let parsed: Table = text.parse().unwrap();
        assert_eq!(&parsed, toml.as_table(), "{text}");
        assert_eq!(parsed["route"][0]["limit"]["burst"].as_integer(), Some(5));
        assert_eq!(parsed["route"][1]["methods"][1].as_str(), Some("GET"));
        assert_eq!(parsed["scheme"]["acme"]["message"].as_str(), Some("{body}{timestamp}"));
        let config = base()
            .edit_route("kwikpaisa", |r| r.limit(1, 5).duplicate_key("/order_id"))
            .to_config()
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.routes[0].name, "kwikpaisa");
    }

    #[test]
    fn set_replaces_and_unset_removes() {
        let toml = base()
            .listener("max_body_bytes", 4096)
            .listener("max_body_bytes", 65536u64)
            .unset("listener", "addr")
            .unset("nowhere", "addr");
        assert_eq!(toml.get("listener", "max_body_bytes"), Some(&Value::Integer(65536)));
        assert_eq!(toml.get("listener", "addr"), None);
        let toml = toml
            .credential("kwikpaisa", Credential::env("K", "S"))
            .edit_credential("kwikpaisa", |c| c.set("secret_env", "T"));
        assert_eq!(
            toml.get("credentials.kwikpaisa", "secret_env").and_then(Value::as_str),
            Some("T")
        );
        assert_eq!(toml.get("credentials.kwikpaisa", "path"), None, "replaced whole");
        let toml = toml.remove_route("kwikpaisa");
        assert_eq!(toml.as_table()["route"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn unknown_keys_reach_the_gateways_validation() {
        let err = base()
            .listener("max_conections", 5)
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("listener.max_conections"), "{err}");
    }

    #[test]
    #[should_panic(expected = "no [[route]] named missing")]
    fn editing_a_missing_route_panics() {
        let _ = base().edit_route("missing", |r| r);
    }
}
