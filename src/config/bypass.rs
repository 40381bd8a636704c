//! Guards another route can go around: a route with a duplicate guard or an
//! amount guard protects the provider endpoints it reaches only if no other
//! route signs for the same upstream with the same credential, for a method
//! the guarded route takes, with a base path at, above or below the guarded
//! route's (the endpoints the two reach overlap).
//! Such a configuration is valid (a route for status calls is a normal thing
//! to have) but a payout sent through the other route is neither capped nor
//! de-duplicated, so `check`, start-up and every reload warn about it. Two
//! routes with the same guards over overlapping endpoints are named too:
//! each keeps its own claims and totals, so one payout could pass each once.

use super::{Config, RouteConfig, SecretSource};

impl Config {
    /// One warning per (guarded route, route around it), and one per pair
    /// of routes guarded alike over overlapping endpoints, naming both.
    pub fn guard_bypasses(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (gi, guarded) in self.routes.iter().enumerate() {
            let guards = guard_names(guarded);
            if guards.is_empty() {
                continue;
            }
            for (oi, other) in self.routes.iter().enumerate() {
                if gi == oi || !self.reaches(other, guarded) {
                    continue;
                }
                let missing: Vec<&str> = guards
                    .iter()
                    .copied()
                    .filter(|g| !guard_names(other).contains(g))
                    .collect();
                if missing.is_empty() {
                    // Both guarded alike, each with its own claims and
                    // totals: said once per pair.
                    if gi < oi {
                        out.push(format!(
                            "routes \"{}\" and \"{}\" sign for overlapping endpoints of the same upstream with the same \
                             secret, and each keeps its own {}: the same payout can go once through each, and each \
                             route's caps count only its own requests. Keep one route per payout endpoint \
                             (docs/payouts.md#guard-every-way-in)",
                            guarded.name,
                            other.name,
                            guards.join(" and "),
                        ));
                    }
                    continue;
                }
                out.push(format!(
                    "route \"{}\" signs for the same upstream and credential as route \"{}\", without its {}: \
                     a request to {}'s endpoints sent through \"{}\" is not checked by {}. Give \"{}\" a credential \
                     of its own, or give \"{}\" an upstream base path that does not reach those endpoints \
                     (docs/payouts.md#guard-every-way-in)",
                    other.name,
                    guarded.name,
                    missing.join(" and "),
                    guarded.name,
                    other.name,
                    if missing.len() == 1 { "it" } else { "them" },
                    guarded.name,
                    other.name,
                ));
            }
        }
        out
    }
}

/// Whether `path` is `base` or below it, on a segment boundary (`""` is
/// the root).
fn below(path: &str, base: &str) -> bool {
    path.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn guard_names(r: &RouteConfig) -> Vec<&'static str> {
    let mut g = Vec::new();
    if r.duplicate_key.is_some() {
        g.push("duplicate guard");
    }
    if r.amount_guard.is_some() {
        g.push("amount guard");
    }
    g
}

impl Config {
    /// Whether `other` can send some of what `guarded` sends: same upstream
    /// origin, a credential in common, a method in common, and base paths of
    /// which one is at or below the other (their endpoints overlap).
    fn reaches(&self, other: &RouteConfig, guarded: &RouteConfig) -> bool {
        let (o, g) = (&other.upstream, &guarded.upstream);
        let (ob, gb) = (o.base_path.to_ascii_lowercase(), g.base_path.to_ascii_lowercase());
        origin(Some(o.scheme.as_str()), Some(&o.authority)) == origin(Some(g.scheme.as_str()), Some(&g.authority))
            && (below(&gb, &ob) || below(&ob, &gb))
            && other.methods.iter().any(|m| guarded.methods.contains(m))
            && other.credential.names().iter().any(|c| {
                guarded
                    .credential
                    .names()
                    .iter()
                    .any(|g| c == g || self.same_source(c, g))
            })
    }

    /// Whether two credentials read the same secret (two names for one
    /// source sign alike): where the secret lives, not how often it is read.
    fn same_source(&self, a: &str, b: &str) -> bool {
        matches!(
            (self.credentials.get(a), self.credentials.get(b)),
            (Some(x), Some(y)) if secret_location(&x.source) == secret_location(&y.source)
        )
    }
}

/// Where a secret lives: the environment variable, the file (by device
/// and inode: links and `..` lead to the same one), the Vault server
/// (host and port as connected to), mount and path (without empty or `.`
/// segments), or the Transit key. Tuning (poll, refresh,
/// timeouts) and the API key's field are left out.
fn secret_location(s: &SecretSource) -> String {
    let path = |p: &str| {
        p.split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect::<Vec<_>>()
            .join("/")
    };
    // The file itself: device and inode (hard links, symbolic links, `..`).
    let file = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map_or_else(
            |_| {
                std::fs::canonicalize(p)
                    .unwrap_or_else(|_| p.to_path_buf())
                    .display()
                    .to_string()
            },
            |m| format!("{}:{}", m.dev(), m.ino()),
        )
    };
    match s {
        SecretSource::Env { secret_env, .. } => format!("env:{secret_env}"),
        SecretSource::File {
            path: p, secret_field, ..
        } => format!("file:{}#{secret_field}", file(p)),
        SecretSource::Vault(v) => format!(
            "vault:{}/{}/{}#{}",
            origin(v.addr.scheme_str(), v.addr.authority()),
            path(&v.mount),
            path(&v.path),
            v.secret_field
        ),
        SecretSource::VaultTransit(t) => format!(
            "transit:{}/{}/{}",
            origin(t.addr.scheme_str(), t.addr.authority()),
            path(&t.mount),
            t.key
        ),
    }
}

/// `scheme://host:port` as connected to: host lower-case without a trailing
/// dot, port with the scheme's default (`HOST`, `host.` and `host:443` are
/// one origin). For upstreams and Vault addresses alike.
fn origin(scheme: Option<&str>, authority: Option<&http::uri::Authority>) -> String {
    let scheme = scheme.unwrap_or("").to_ascii_lowercase();
    let default = if scheme == "http" { 80 } else { 443 };
    format!(
        "{scheme}://{}:{}",
        authority
            .map_or("", |a| a.host())
            .trim_end_matches('.')
            .to_ascii_lowercase(),
        authority.and_then(|a| a.port_u16()).unwrap_or(default)
    )
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn config(routes: &str) -> Config {
        Config::from_toml_str(&format!(
            r#"
[access]
allow = ["127.0.0.0/8"]
[credentials.kp]
source = "env"
api_key_env = "K"
secret_env = "S"
[credentials.payouts]
source = "env"
api_key_env = "K2"
secret_env = "S2"
{routes}
"#
        ))
        .unwrap()
    }

    fn route(name: &str, upstream: &str, credential: &str, extra: &str) -> String {
        format!(
            "[[route]]\nname = \"{name}\"\nmatch_prefix = \"/{name}/\"\nstrip_prefix = true\n\
             upstream = \"{upstream}\"\ncredential = \"{credential}\"\nscheme = \"kwikpaisa\"\n{extra}\n"
        )
    }

    const GUARDED: &str = "duplicate_key = \"/payout_order_id\"\n[route.amount_guard]\namount = \"/transfer_amount\"\nmax_per_request = \"10.00\"";

    #[test]
    fn an_unguarded_route_to_the_same_upstream_and_credential_is_named() {
        let c = config(&format!(
            "{}{}",
            route("general", "https://api.example.com", "kp", ""),
            route("payouts", "https://api.example.com", "kp", GUARDED)
        ));
        let w = c.guard_bypasses();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("route \"general\" signs for the same upstream and credential as route \"payouts\", without its duplicate guard and amount guard"), "{}", w[0]);
    }

    #[test]
    fn a_route_that_cannot_reach_the_guarded_endpoints_is_not_named() {
        for other in [
            route("general", "https://api.example.com", "payouts", ""), // another credential
            route("general", "https://other.example.com", "kp", ""),    // another host
            route("general", "https://api.example.com/api/v3/pg", "kp", ""), // a base path beside
            route("general", "https://api.example.com/api/v3/banking-x", "kp", ""),
            route("general", "https://api.example.com", "kp", "methods = [\"GET\"]"), // no method in common
        ] {
            let c = config(&format!(
                "{other}{}",
                route("payouts", "https://api.example.com/api/v3/banking", "kp", GUARDED)
            ));
            assert_eq!(c.guard_bypasses(), Vec::<String>::new(), "{other}");
        }
        // At, above or below the guarded base path, it reaches some of them.
        for base in ["", "/api", "/api/v3/banking", "/api/v3/banking/payment"] {
            let c = config(&format!(
                "{}{}",
                route("general", &format!("https://api.example.com{base}"), "kp", ""),
                route("payouts", "https://api.example.com/api/v3/banking", "kp", GUARDED)
            ));
            assert_eq!(c.guard_bypasses().len(), 1, "{base}");
        }
    }

    /// Spellings of one origin, one base path and one secret source (found
    /// by an adversarial pass: each silenced the warning).
    #[test]
    fn other_spellings_of_the_same_upstream_and_secret_are_named() {
        for (upstream, credential) in [
            ("https://api.example.com:443", "kp"),
            ("https://api.example.com.", "kp"),
            ("https://API.example.com", "kp"),
            ("https://api.example.com/API/v3/Banking", "kp"),
            ("https://api.example.com", "kp2"), // the same env variables as kp
        ] {
            let c = config(&format!(
                "[credentials.kp2]\nsource = \"env\"\napi_key_env = \"K\"\nsecret_env = \"S\"\n{}{}",
                route("general", upstream, credential, ""),
                route("payouts", "https://api.example.com/api/v3/banking", "kp", GUARDED)
            ));
            assert_eq!(c.guard_bypasses().len(), 1, "{upstream} {credential}");
        }
        let c = config(&format!(
            "{}{}",
            route("general", "https://api.example.com:8443", "kp", ""),
            route("payouts", "https://api.example.com/api/v3/banking", "kp", GUARDED)
        ));
        assert!(c.guard_bypasses().is_empty(), "another port is another origin");
    }

    /// One secret file under two names (a symbolic link, another poll
    /// interval) is one secret: found by an adversarial pass, where such a
    /// second credential sent the same payout twice without a warning.
    #[test]
    fn two_names_for_one_secret_file_are_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kp.json");
        std::fs::write(&file, r#"{"api_key":"k","secret_key":"s"}"#).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let cred = |name: &str, path: &std::path::Path, poll: u64| {
            format!(
                "[credentials.{name}]\nsource = \"file\"\npath = \"{}\"\npoll_ms = {poll}\n",
                path.display()
            )
        };
        let c = config(&format!(
            "{}{}{}{}",
            cred("f1", &file, 1000),
            cred("f2", &link, 2000),
            route("general", "https://api.example.com/api/v3", "f2", ""),
            route("payouts", "https://api.example.com/api/v3/banking", "f1", GUARDED)
        ));
        assert_eq!(c.guard_bypasses().len(), 1);
    }

    /// A hard link is the same file; a Vault address with its default
    /// port or a trailing dot is the same server (a fourth adversarial
    /// pass silenced the warning with each).
    #[test]
    fn hard_links_and_vault_address_spellings_are_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kp.json");
        std::fs::write(&file, r#"{"api_key":"k","secret_key":"s"}"#).unwrap();
        let hard = dir.path().join("hard.json");
        std::fs::hard_link(&file, &hard).unwrap();
        let c = config(&format!(
            "[credentials.f1]\nsource = \"file\"\npath = \"{}\"\n[credentials.f2]\nsource = \"file\"\npath = \"{}\"\n{}{}",
            file.display(),
            hard.display(),
            route("general", "https://api.example.com/api/v3", "f2", ""),
            route("payouts", "https://api.example.com/api/v3/banking", "f1", GUARDED)
        ));
        assert_eq!(c.guard_bypasses().len(), 1, "hard link");
        let loc = |addr: &str, path: &str| {
            let c = config(&format!(
                "[credentials.v]\nsource = \"vault\"\nvault_addr = \"{addr}\"\nvault_path = \"{path}\"\nvault_auth = \"approle\"\nvault_role_id_file = \"/run/r\"\nvault_secret_id_file = \"/run/s\"\n{}",
                route("r", "https://api.example.com", "v", "")
            ));
            super::secret_location(&c.credentials["v"].source)
        };
        let base = loc("https://vault.example.com", "kp/prod");
        assert_eq!(loc("https://vault.example.com:443", "kp/prod"), base);
        assert_eq!(loc("https://Vault.example.com.", "kp/./prod"), base);
        assert_ne!(loc("https://vault.example.com:8200", "kp/prod"), base);
    }

    /// Two routes with the same guards keep separate claims and totals:
    /// the same payout once through each (found live by a fourth pass).
    #[test]
    fn two_guarded_routes_to_the_same_endpoints_are_named_once() {
        let c = config(&format!(
            "{}{}",
            route("payouts", "https://api.example.com/api/v3/banking", "kp", GUARDED),
            route("batch", "https://api.example.com/api/v3/banking", "kp", GUARDED)
        ));
        let w = c.guard_bypasses();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("routes \"payouts\" and \"batch\" sign for overlapping endpoints"),
            "{}",
            w[0]
        );
    }

    /// A base path a request could climb out of is a configuration error.
    #[test]
    fn an_upstream_base_path_with_dot_or_empty_segments_is_refused() {
        for base in [
            "/api/v3/pg/..",
            "/api/v3/pg/../banking",
            "/api//banking",
            "/api/./x",
            "/api/...",
            "/api/%2e%2e",
        ] {
            let toml = format!(
                "[access]\nallow = [\"127.0.0.0/8\"]\n[credentials.kp]\nsource = \"env\"\napi_key_env = \"K\"\nsecret_env = \"S\"\n{}",
                route("general", &format!("https://api.example.com{base}"), "kp", "")
            );
            let errors = Config::from_toml_str(&toml).expect_err(base).0;
            assert!(
                errors.iter().any(|e| e.key() == "route[0].upstream"),
                "{base}: {errors:?}"
            );
        }
        for base in ["", "/", "/api/v3/pg", "/api/v1.2/x", "/a-b_c~d/"] {
            let c = config(&route("general", &format!("https://api.example.com{base}"), "kp", ""));
            assert_eq!(c.routes.len(), 1, "{base}");
        }
    }
}
