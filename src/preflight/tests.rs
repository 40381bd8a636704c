#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;
use crate::devtools::pki::DevCa;

/// A TLS listener with mTLS, an egress CA, an audit file and a webhook, all
/// under `dir`; `extra` is appended (overrides go in their own tables).
fn toml(dir: &Path, listener: &str, egress: &str, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[listener]
addr = "127.0.0.1:0"
{listener}
[access]
allow = ["127.0.0.0/8"]
[egress]
{egress}
[audit]
path = "{d}/logs/audit.jsonl"
[state]
dir = "{d}/state"
[credentials.kp]
source = "env"
api_key_env = "PREFLIGHT_TEST_KEY"
secret_env = "PREFLIGHT_TEST_SECRET"
[[webhook]]
name = "hook"
match_path = "/hooks/kp"
credential = "kp"
scheme = "kwikpaisa"
forward_to = "http://127.0.0.1:1/events"
{extra}
"#
    )
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    /// A CA, a server certificate and key, and a second key that belongs to
    /// another certificate.
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("preflight CA").unwrap();
        let server = ca.server(&["localhost"]).unwrap();
        let other = ca.server(&["other"]).unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w("ca.pem", &ca.cert_pem());
        w("server.pem", &server.cert_pem);
        w("server-key.pem", &server.key_pem);
        w("other-key.pem", &other.key_pem);
        w("garbage.pem", "not a certificate\n");
        Files { dir }
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn tls(&self, cert: &str, key: &str, ca: &str) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"",
            self.p(cert),
            self.p(key),
            self.p(ca)
        )
    }

    fn config(&self, listener: &str, egress: &str, extra: &str) -> Config {
        let text = toml(self.dir.path(), listener, egress, extra);
        Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = walk(self.dir.path());
        names.sort();
        names
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path().display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn errors(c: &Config) -> Vec<ConfigError> {
    match preflight(c) {
        Ok(()) => Vec::new(),
        Err(ConfigErrors(e)) => e,
    }
}

fn keys(errs: &[ConfigError]) -> Vec<&str> {
    errs.iter().map(ConfigError::key).collect()
}

#[test]
fn a_good_configuration_passes_and_leaves_nothing_behind() {
    let f = Files::new();
    let before = f.listing();
    let c = f.config(
        &f.tls("server.pem", "server-key.pem", "ca.pem"),
        &format!("ca_file = \"{}\"", f.p("ca.pem")),
        "",
    );
    assert_eq!(errors(&c), vec![]);
    assert_eq!(
        f.listing(),
        before,
        "no probe file, no audit or state directory left behind"
    );
}

#[test]
fn absent_tls_files_name_each_key_and_file() {
    let f = Files::new();
    let c = f.config(&f.tls("gone.pem", "gone-key.pem", "gone-ca.pem"), "", "");
    let errs = errors(&c);
    assert_eq!(
        keys(&errs),
        ["listener.tls_cert", "listener.tls_key", "listener.client_ca"]
    );
    let text = ConfigErrors(errs).to_string();
    for needle in ["gone.pem: cannot read: no such file", "gone-key.pem", "gone-ca.pem"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let f = Files::new();
    let c = f.config(&f.tls("server.pem", "other-key.pem", "ca.pem"), "", "");
    let errs = errors(&c);
    assert_eq!(keys(&errs), ["listener.tls_key"]);
    let text = errs[0].to_string();
    assert!(
        text.contains("other-key.pem") && text.contains("does not match the certificate in listener.tls_cert"),
        "{text}"
    );
}

#[test]
fn files_that_are_not_pem_are_refused() {
    let f = Files::new();
    let c = f.config(
        &f.tls("garbage.pem", "garbage.pem", "garbage.pem"),
        &format!("ca_file = \"{}\"", f.p("garbage.pem")),
        "",
    );
    let errs = errors(&c);
    assert_eq!(
        keys(&errs),
        [
            "listener.tls_cert",
            "listener.tls_key",
            "listener.client_ca",
            "egress.ca_file"
        ]
    );
    assert!(errs[0].to_string().contains("no certificate found"), "{}", errs[0]);
    // A directory is not a certificate either.
    let c = f.config(&f.tls("", "server-key.pem", "ca.pem"), "", "");
    assert_eq!(keys(&errors(&c)), ["listener.tls_cert"]);
}

#[test]
fn egress_client_certificate_and_key_must_match() {
    let f = Files::new();
    let egress = format!(
        "client_cert = \"{}\"\nclient_key = \"{}\"",
        f.p("server.pem"),
        f.p("other-key.pem")
    );
    let errs = errors(&f.config("", &egress, ""));
    assert_eq!(keys(&errs), ["egress.client_key"]);
    let egress = format!(
        "client_cert = \"{}\"\nclient_key = \"{}\"",
        f.p("server.pem"),
        f.p("server-key.pem")
    );
    assert_eq!(errors(&f.config("", &egress, "")), vec![]);
}

#[test]
fn vault_ca_file_is_checked() {
    let f = Files::new();
    let vault = |ca: &str| {
        format!(
            "[credentials.v]\nsource = \"vault\"\nvault_addr = \"https://vault.example:8200\"\nvault_path = \"kp/prod\"\nvault_ca_file = \"{}\"",
            f.p(ca)
        )
    };
    let errs = errors(&f.config("", "", &vault("missing-ca.pem")));
    assert_eq!(keys(&errs), ["credentials.v.vault_ca_file"]);
    assert!(errs[0].to_string().contains("missing-ca.pem"));
    assert_eq!(errors(&f.config("", "", &vault("ca.pem"))), vec![]);
}

#[test]
fn audit_path_must_be_a_writable_file_location() {
    let f = Files::new();
    // Its directory cannot exist: a regular file is in the way.
    let blocked = format!("[audit]\npath = \"{}/audit.jsonl\"", f.p("ca.pem"));
    let text = toml(f.dir.path(), "", "", "").replace(
        &format!("[audit]\npath = \"{}/logs/audit.jsonl\"", f.dir.path().display()),
        &blocked,
    );
    let errs = errors(&Config::from_toml_str(&text).unwrap());
    assert_eq!(keys(&errs), ["audit.path"]);
    assert!(errs[0].to_string().contains("is not a directory"), "{}", errs[0]);

    // A directory where the file should be.
    std::fs::create_dir_all(f.dir.path().join("logs/audit.jsonl")).unwrap();
    let errs = errors(&f.config("", "", ""));
    assert_eq!(keys(&errs), ["audit.path"]);
    assert!(errs[0].to_string().contains("is a directory"), "{}", errs[0]);
}

#[test]
fn an_unwritable_audit_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Files::new();
    let logs = f.dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root writes anywhere: then there is nothing this test can show.
    let root = std::fs::write(logs.join("probe"), "").is_ok();
    if !root {
        let errs = errors(&f.config("", "", ""));
        assert_eq!(keys(&errs), ["audit.path"]);
        assert!(errs[0].to_string().contains("permission denied"), "{}", errs[0]);
    }
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn the_state_dir_matters_only_with_webhooks() {
    let f = Files::new();
    let text = toml(f.dir.path(), "", "", "").replace(
        &format!("dir = \"{}/state\"", f.dir.path().display()),
        &format!("dir = \"{}/state\"", f.p("ca.pem")),
    );
    let errs = errors(&Config::from_toml_str(&text).unwrap());
    assert_eq!(keys(&errs), ["state.dir"]);
    let without_webhook = text.split("[[webhook]]").next().unwrap().to_string();
    assert_eq!(errors(&Config::from_toml_str(&without_webhook).unwrap()), vec![]);
}

#[test]
fn an_existing_state_database_is_checked_without_webhooks_too() {
    // It holds the route switches: `run` opens it whenever it exists.
    let f = Files::new();
    let text = toml(f.dir.path(), "", "", "");
    let without_webhook = text.split("[[webhook]]").next().unwrap().to_string();
    let config = Config::from_toml_str(&without_webhook).unwrap();
    assert_eq!(errors(&config), vec![]);
    let db = f.dir.path().join("state").join(crate::statedb::DB_FILE);
    std::fs::create_dir_all(&db).unwrap();
    let errs = errors(&config);
    assert_eq!(keys(&errs), ["state.dir"]);
    assert!(errs[0].to_string().contains("is not a regular file"), "{}", errs[0]);
}

#[test]
fn writable_dir_probes_without_creating() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("a/b/c");
    assert_eq!(writable_dir(&deep), Ok(()));
    assert!(!dir.path().join("a").exists(), "nothing was created");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    std::fs::write(dir.path().join("f"), "").unwrap();
    let err = writable_dir(&dir.path().join("f/sub")).unwrap_err();
    assert!(err.contains("is not a directory"), "{err}");
}
