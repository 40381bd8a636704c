use super::*;

const GOOD: &str = r#"
[listener]
addr = "127.0.0.1:8080"
[access]
allow = ["127.0.0.0/8", "::1/128"]
[limits]
global = { rate = 2000, burst = 4000 }
per_client = { rate = 200 }
[credentials.kwikpaisa]
source = "env"
api_key_env = "KWIKPAISA_API_KEY"
secret_env = "KWIKPAISA_SECRET_KEY"
[[route]]
name = "kwikpaisa"
match_prefix = "/kwikpaisa/"
strip_prefix = true
upstream = "https://sandbox.kwikpaisa.com"
credential = "kwikpaisa"
scheme = "kwikpaisa"
[scheme.acme]
message = "{timestamp}.{method}.{path}.{body}"
api_key_header = "X-Acme-Key"
timestamp_header = "X-Acme-Timestamp"
signature_header = "X-Acme-Signature"
"#;

fn errors_of(toml: &str) -> Vec<ConfigError> {
    match Config::from_toml_str(toml) {
        Ok(_) => panic!("config should not validate:\n{toml}"),
        Err(e) => e.0,
    }
}

fn keys_of(toml: &str) -> Vec<String> {
    errors_of(toml).iter().map(|e| e.key().to_string()).collect()
}

#[test]
fn good_config_parses_into_types() {
    let c = Config::from_toml_str(GOOD).unwrap();
    assert_eq!(c.listener.addr.to_string(), "127.0.0.1:8080");
    assert_eq!(c.routes[0].match_prefix, "/kwikpaisa");
    assert_eq!(c.routes[0].methods, vec![http::Method::POST]);
    assert_eq!(c.limits.per_client.unwrap().burst.get(), 200, "burst defaults to rate");
    assert!(c.schemes.contains_key("kwikpaisa") && c.schemes.contains_key("acme"));
    assert_eq!(c.listener.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    assert!(c.egress.source_addr.is_none());
}

#[test]
fn the_shipped_gateway_toml_validates() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let c = Config::load_with_env(&path, Vec::<(String, String)>::new()).unwrap();
    assert!(c.listener.addr.ip().is_loopback());
    assert!(!c.routes.is_empty());
}

/// Each snippet replaces one line of GOOD; the error must name that key.
#[test]
fn bad_values_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("addr = \"127.0.0.1:8080\"", "addr = \"nonsense\"", "listener.addr"),
        ("addr = \"127.0.0.1:8080\"", "addr = \"0.0.0.0:8080\"", "listener.addr"),
        ("addr = \"127.0.0.1:8080\"", "adr = \"127.0.0.1:8080\"", "listener.adr"),
        (
            "addr = \"127.0.0.1:8080\"",
            "max_connections = \"many\"",
            "listener.max_connections",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "header_timeout_ms = 0",
            "listener.header_timeout_ms",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "body_idle_timeout_ms = 0",
            "listener.body_idle_timeout_ms",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "write_idle_timeout_ms = 0",
            "listener.write_idle_timeout_ms",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "max_uri_bytes = 0",
            "listener.max_uri_bytes",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "h2_max_concurrent_streams = 0",
            "listener.h2_max_concurrent_streams",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "h2_max_concurrent_streams = 100000",
            "listener.h2_max_concurrent_streams",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "h2_max_pending_resets = 0",
            "listener.h2_max_pending_resets",
        ),
        (
            "addr = \"127.0.0.1:8080\"",
            "client_ca = \"ca.pem\"",
            "listener.client_ca",
        ),
        ("allow = [\"127.0.0.0/8\", \"::1/128\"]", "allow = []", "access.allow"),
        (
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"127.0.0.0/8\"]\n[egress]\nresponse_idle_timeout_ms = 0",
            "egress.response_idle_timeout_ms",
        ),
        (
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"127.0.0.0/33\"]",
            "access.allow[0]",
        ),
        (
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "alow = [\"127.0.0.0/8\"]",
            "access.alow",
        ),
        (
            "global = { rate = 2000, burst = 4000 }",
            "global = { rate = 0 }",
            "limits.global.rate",
        ),
        (
            "global = { rate = 2000, burst = 4000 }",
            "global = { burst = 5 }",
            "limits.global.rate",
        ),
        (
            "source = \"env\"",
            "source = \"vaultt\"",
            "credentials.kwikpaisa.source",
        ),
        (
            "api_key_env = \"KWIKPAISA_API_KEY\"",
            "",
            "credentials.kwikpaisa.api_key_env",
        ),
        (
            "match_prefix = \"/kwikpaisa/\"",
            "match_prefix = \"kwikpaisa\"",
            "route[0].match_prefix",
        ),
        (
            "match_prefix = \"/kwikpaisa/\"",
            "match_prefix = \"/a/../b\"",
            "route[0].match_prefix",
        ),
        (
            "upstream = \"https://sandbox.kwikpaisa.com\"",
            "upstream = \"http://sandbox.kwikpaisa.com\"",
            "route[0].upstream",
        ),
        (
            "upstream = \"https://sandbox.kwikpaisa.com\"",
            "upstream = \"ftp://x\"",
            "route[0].upstream",
        ),
        (
            "upstream = \"https://sandbox.kwikpaisa.com\"",
            "upstream = \"https://x.com/?q=1\"",
            "route[0].upstream",
        ),
        (
            "credential = \"kwikpaisa\"",
            "credential = \"nope\"",
            "route[0].credential",
        ),
        ("scheme = \"kwikpaisa\"\n", "scheme = \"nope\"\n", "route[0].scheme"),
        (
            "strip_prefix = true",
            "strip_prefix = \"maybe\"",
            "route[0].strip_prefix",
        ),
        ("strip_prefix = true", "methods = [\"CONNECT\"]", "route[0].methods[0]"),
        ("strip_prefix = true", "allow = []", "route[0].allow"),
        (
            "strip_prefix = true",
            "allow_identities = [\"spiffe://x\"]",
            "route[0].allow_identities",
        ),
        (
            "strip_prefix = true",
            "duplicate_key = \"order_id\"",
            "route[0].duplicate_key",
        ),
        (
            "message = \"{timestamp}.{method}.{path}.{body}\"",
            "message = \"{body}\"",
            "scheme.acme.message",
        ),
        (
            "api_key_header = \"X-Acme-Key\"",
            "api_key_header = \"Connection\"",
            "scheme.acme.api_key_header",
        ),
        (
            "api_key_header = \"X-Acme-Key\"",
            "api_key_header = \"X-Acme-Signature\"",
            "scheme.acme.signature_header",
        ),
        (
            "[scheme.acme]",
            "[scheme.acme]\nencoding = \"b32\"",
            "scheme.acme.encoding",
        ),
        (
            "[scheme.acme]",
            "[scheme.acme]\nmax_json_depth = 0",
            "scheme.acme.max_json_depth",
        ),
        (
            "[scheme.acme]",
            "[scheme.kwikpaisa]\nmax_json_depth = 5000\n[scheme.acme]",
            "scheme.kwikpaisa.max_json_depth",
        ),
        (
            "[scheme.acme]",
            "[scheme.kwikpaisa]\nmessage = \"{timestamp}\"\n[scheme.x]",
            "scheme.kwikpaisa.message",
        ),
        ("[listener]", "[listenr]\n[listener]", "listenr"),
        ("[access]", "[audit]\nbatch_ms = 0\n[access]", "audit.batch_ms"),
        ("[access]", "[audit]\nbatch_ms = 1001\n[access]", "audit.batch_ms"),
    ];
    for (from, to, key) in cases {
        assert!(GOOD.contains(from), "fixture lacks {from:?}");
        let toml = GOOD.replacen(from, to, 1);
        let keys = keys_of(&toml);
        assert!(
            keys.iter().any(|k| k == key),
            "{to:?}: expected an error naming {key}, got {keys:?}"
        );
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let toml = GOOD
        .replacen(
            "addr = \"127.0.0.1:8080\"",
            "addr = \"127.0.0.1:8080\"\nmax_connections = \"x\"\ntypo = 1",
            1,
        )
        .replacen(
            "allow = [\"127.0.0.0/8\", \"::1/128\"]",
            "allow = [\"bad\", \"also bad\"]",
            1,
        )
        .replacen(
            "credential = \"kwikpaisa\"",
            "credential = \"missing\"\nunknown_route_key = 1",
            1,
        )
        .replacen("rate = 2000", "rate = 0", 1);
    let keys = keys_of(&toml);
    for key in [
        "listener.max_connections",
        "listener.typo",
        "access.allow[0]",
        "access.allow[1]",
        "route[0].credential",
        "route[0].unknown_route_key",
        "limits.global.rate",
    ] {
        assert!(keys.iter().any(|k| k == key), "missing {key} in {keys:?}");
    }
}

#[test]
fn missing_access_section_is_an_error_not_allow_all() {
    let toml = GOOD.replacen("[access]\nallow = [\"127.0.0.0/8\", \"::1/128\"]", "", 1);
    let errs = errors_of(&toml);
    assert!(errs
        .iter()
        .any(|e| e.key() == "access.allow" && e.to_string().contains("no allow-all")));
}

#[test]
fn plaintext_on_a_public_address_names_allow_plaintext() {
    let toml = GOOD.replacen("addr = \"127.0.0.1:8080\"", "addr = \"0.0.0.0:8080\"", 1);
    let errs = errors_of(&toml);
    assert!(
        errs.iter().any(|e| e.to_string().contains("allow_plaintext")),
        "{errs:?}"
    );
    let ok = GOOD.replacen(
        "addr = \"127.0.0.1:8080\"",
        "addr = \"0.0.0.0:8080\"\nallow_plaintext = true",
        1,
    );
    assert!(Config::from_toml_str(&ok).is_ok());
}

#[test]
fn environment_overrides_use_double_underscores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, GOOD).unwrap();
    let c = Config::load_with_env(
        &path,
        [
            ("SIGNGATE__LISTENER__ADDR", "127.0.0.1:9999"),
            ("SIGNGATE__LISTENER__MAX_BODY_BYTES", "2048"),
            ("SIGNGATE__ACCESS__ALLOW", "10.0.0.0/8,192.168.0.0/16"),
        ],
    )
    .unwrap();
    assert_eq!(c.listener.addr.port(), 9999);
    assert_eq!(c.listener.max_body_bytes, 2048);
    assert_eq!(c.access.allow.len(), 2);
    // A single underscore (Kubernetes service variables) is not config.
    let c = Config::load_with_env(&path, [("SIGNGATE_LISTENER_ADDR", "127.0.0.1:1")]).unwrap();
    assert_eq!(c.listener.addr.port(), 8080);
    // A misspelt override is as fatal as a misspelt key.
    let errs = Config::load_with_env(&path, [("SIGNGATE__LISTENER__ADR", "x")]).unwrap_err();
    assert!(errs.0.iter().any(|e| e.key() == "listener.adr"), "{errs}");
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let toml = GOOD.replacen(
        "source = \"env\"\napi_key_env = \"KWIKPAISA_API_KEY\"\nsecret_env = \"KWIKPAISA_SECRET_KEY\"",
        "source = \"file\"\npath = \"secrets/kp.json\"",
        1,
    );
    std::fs::write(&path, toml).unwrap();
    let c = Config::load_with_env(&path, Vec::<(String, String)>::new()).unwrap();
    match &c.credentials["kwikpaisa"].source {
        SecretSource::File { path: p, .. } => assert_eq!(p, &dir.path().join("secrets/kp.json")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn error_messages_are_specific() {
    let toml = GOOD
        .replacen("max_connections", "x", 0)
        .replacen("addr = \"127.0.0.1:8080\"", "addr = \"nonsense\"", 1);
    let msg = ConfigErrors(errors_of(&toml)).to_string();
    assert!(msg.contains("listener.addr"), "{msg}");
    assert!(msg.contains("\"nonsense\""), "{msg}");
    assert!(msg.contains("expected an IP:port address"), "{msg}");
}

#[test]
fn vault_credentials_parse_with_an_optional_maximum_age() {
    let vault = |extra: &str| {
        GOOD.replacen(
            "source = \"env\"\napi_key_env = \"KWIKPAISA_API_KEY\"\nsecret_env = \"KWIKPAISA_SECRET_KEY\"",
            &format!(
                "source = \"vault\"\nvault_addr = \"https://vault.internal:8200\"\nvault_path = \"/kp/prod/\"\n\
                 vault_auth = \"approle\"\nvault_role_id_file = \"/run/r\"\nvault_secret_id_file = \"/run/s\"\n{extra}"
            ),
            1,
        )
    };
    let c = Config::from_toml_str(&vault("")).unwrap();
    let SecretSource::Vault(spec) = &c.credentials["kwikpaisa"].source else {
        panic!("not a vault source");
    };
    assert_eq!((spec.mount.as_str(), spec.path.as_str()), ("secret", "kp/prod"));
    assert_eq!(spec.refresh, DEFAULT_VAULT_REFRESH);
    assert_eq!(
        spec.max_stale, None,
        "by default the last good secret serves for as long as Vault is down"
    );
    let c = Config::from_toml_str(&vault("refresh_secs = 60\nvault_max_stale_secs = 3600")).unwrap();
    let SecretSource::Vault(spec) = &c.credentials["kwikpaisa"].source else {
        panic!("not a vault source");
    };
    assert_eq!(spec.max_stale, Some(std::time::Duration::from_secs(3600)));
    assert!(keys_of(&vault("vault_max_stale_secs = 0")).contains(&"credentials.kwikpaisa.vault_max_stale_secs".into()));
    let on_env = GOOD.replacen("source = \"env\"", "source = \"env\"\nvault_max_stale_secs = 60", 1);
    assert!(keys_of(&on_env).contains(&"credentials.kwikpaisa.vault_max_stale_secs".into()));
    let plain = vault("").replacen("https://vault.internal:8200", "http://vault.internal:8200", 1);
    assert!(keys_of(&plain).contains(&"credentials.kwikpaisa.vault_addr".into()));
}

#[test]
fn vault_timeout_ms_defaults_to_five_seconds_and_refuses_zero_or_unbounded() {
    let vault = |extra: &str| {
        GOOD.replacen(
            "source = \"env\"\napi_key_env = \"KWIKPAISA_API_KEY\"\nsecret_env = \"KWIKPAISA_SECRET_KEY\"",
            &format!("source = \"vault\"\nvault_addr = \"https://vault.internal:8200\"\nvault_path = \"kp\"\n{extra}"),
            1,
        )
    };
    let timeout = |extra: &str| {
        let c = Config::from_toml_str(&vault(extra)).unwrap();
        match &c.credentials["kwikpaisa"].source {
            SecretSource::Vault(spec) => spec.timeout,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(timeout(""), DEFAULT_VAULT_TIMEOUT);
    assert_eq!(
        timeout("vault_timeout_ms = 1500"),
        std::time::Duration::from_millis(1500)
    );
    for bad in ["vault_timeout_ms = 0", "vault_timeout_ms = 60001"] {
        assert!(
            keys_of(&vault(bad)).contains(&"credentials.kwikpaisa.vault_timeout_ms".into()),
            "{bad}"
        );
    }
    let on_env = GOOD.replacen("source = \"env\"", "source = \"env\"\nvault_timeout_ms = 1000", 1);
    assert!(keys_of(&on_env).contains(&"credentials.kwikpaisa.vault_timeout_ms".into()));
}

#[test]
fn hardening_limits_reach_the_typed_config() {
    let c = Config::from_toml_str(GOOD).unwrap();
    assert_eq!(c.listener.h2_max_concurrent_streams, DEFAULT_H2_MAX_CONCURRENT_STREAMS);
    assert_eq!(c.listener.h2_max_pending_resets, DEFAULT_H2_MAX_PENDING_RESETS);
    assert_eq!(
        c.schemes["acme"].canonical.max_depth,
        crate::canonical::DEFAULT_MAX_DEPTH
    );
    let toml = GOOD
        .replacen(
            "addr = \"127.0.0.1:8080\"",
            "addr = \"127.0.0.1:8080\"\nh2_max_concurrent_streams = 8\nh2_max_pending_resets = 4",
            1,
        )
        .replacen(
            "[scheme.acme]",
            "[scheme.kwikpaisa]\nmax_json_depth = 3\n[scheme.acme]\nmax_json_depth = 7",
            1,
        );
    let c = Config::from_toml_str(&toml).unwrap();
    assert_eq!(c.listener.h2_max_concurrent_streams, 8);
    assert_eq!(c.listener.h2_max_pending_resets, 4);
    assert_eq!(c.schemes["kwikpaisa"].canonical.max_depth, 3);
    assert_eq!(c.schemes["acme"].canonical.max_depth, 7);
    // The depth is enforced by the scheme's canonicalizer: 3 levels pass, 4 do not.
    let opts = c.schemes["kwikpaisa"].canonical;
    let mut out = Vec::new();
    assert!(crate::canonical::Canonicalizer::new()
        .encode(br#"{"a":{"b":[1]}}"#, &opts, &mut out)
        .is_ok());
    out.clear();
    assert!(crate::canonical::Canonicalizer::new()
        .encode(br#"{"a":{"b":[[1]]}}"#, &opts, &mut out)
        .is_err());
}

#[test]
fn route_and_webhook_names_are_unique_metric_labels() {
    let hook = |name: &str, path: &str| {
        format!(
            "[[webhook]]\nname = \"{name}\"\nmatch_path = \"{path}\"\ncredential = \"kwikpaisa\"\nscheme = \"kwikpaisa\"\nforward_to = \"http://127.0.0.1:3000/events\"\n"
        )
    };
    let with = |extra: &str| GOOD.replacen("[scheme.acme]", &format!("{extra}[scheme.acme]"), 1);
    assert!(Config::from_toml_str(&with(&hook("events", "/hooks/a"))).is_ok());
    for (extra, key) in [
        (hook("bad name", "/hooks/a"), "webhook[0].name"),
        (hook("events", "/hooks/a") + &hook("events", "/hooks/b"), "webhook[1].name"),
        (
            "[[route]]\nname = \"kwikpaisa\"\nmatch_prefix = \"/other/\"\nupstream = \"https://sandbox.kwikpaisa.com\"\ncredential = \"kwikpaisa\"\nscheme = \"kwikpaisa\"\n".to_string(),
            "route[1].name",
        ),
    ] {
        let keys = keys_of(&with(&extra));
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }
}

#[test]
fn allow_identities_are_typed_in_the_route_config() {
    use crate::identity::Identity;
    let mtls = GOOD.replace(
        "addr = \"127.0.0.1:8080\"",
        "addr = \"127.0.0.1:8080\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nclient_ca = \"ca.pem\"",
    );
    let with = |list: &str| {
        mtls.replace(
            "strip_prefix = true",
            &format!("strip_prefix = true\nallow_identities = {list}"),
        )
    };
    let c = Config::from_toml_str(&with(
        r#"["spiffe://prod/payouts", "payouts.internal", "uri:urn:x:y", "dns:a.b"]"#,
    ))
    .unwrap();
    let allowed = c.routes[0].allow_identities.as_ref().unwrap();
    assert_eq!(
        allowed.entries(),
        [
            Identity::Uri("spiffe://prod/payouts".into()),
            Identity::Dns("payouts.internal".into()),
            Identity::Uri("urn:x:y".into()),
            Identity::Dns("a.b".into()),
        ]
    );
    let errs = errors_of(&with(r#"["ok.example", "dns:spiffe://prod/payouts", "pay outs"]"#));
    let keys: Vec<&str> = errs.iter().map(ConfigError::key).collect();
    assert_eq!(keys, ["route[0].allow_identities[1]", "route[0].allow_identities[2]"]);
    assert!(errs[0].to_string().contains("uri:"), "{}", errs[0]);
}

/// GOOD plus a webhook with these two settings (absent when `None`).
fn with_webhook(tolerance: Option<u64>, window: Option<u64>) -> String {
    let mut t = format!(
        "{GOOD}\n[[webhook]]\nname = \"hook\"\nmatch_path = \"/webhooks/kp\"\ncredential = \"kwikpaisa\"\nscheme = \"kwikpaisa\"\nforward_to = \"http://127.0.0.1:3000/events\"\n"
    );
    if let Some(s) = tolerance {
        t.push_str(&format!("tolerance_secs = {s}\n"));
    }
    if let Some(s) = window {
        t.push_str(&format!("dedup_window_secs = {s}\n"));
    }
    t
}

#[test]
fn the_dedup_window_must_outlast_twice_the_tolerance() {
    // 10 s of memory for 600 s of freshness: a replay 11-600 s later would be new again.
    let errs = errors_of(&with_webhook(Some(300), Some(10)));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key(), "webhook[0].dedup_window_secs");
    let msg = errs[0].to_string();
    assert!(
        msg.contains("webhook[0].tolerance_secs = 300") && msg.contains("at least 601 seconds"),
        "{msg}"
    );
    // Exactly twice is not enough: first seen at ts - 300, replayed at ts + 300.
    assert_eq!(
        keys_of(&with_webhook(Some(300), Some(600))),
        ["webhook[0].dedup_window_secs"]
    );
    assert!(Config::from_toml_str(&with_webhook(Some(300), Some(601))).is_ok());
    // The defaults (300 s, 7 days) pass; a short window against the default tolerance says so.
    assert!(Config::from_toml_str(&with_webhook(None, None)).is_ok());
    let msg = errors_of(&with_webhook(None, Some(60)))[0].to_string();
    assert!(msg.contains("= 300 (its default)"), "{msg}");
    // A zero is reported once, as itself.
    assert_eq!(keys_of(&with_webhook(Some(0), Some(10))), ["webhook[0].tolerance_secs"]);
}

#[test]
fn vault_mount_and_path_must_form_a_url_path() {
    let vault = |path: &str| {
        GOOD.replace(
            "source = \"env\"\napi_key_env = \"KWIKPAISA_API_KEY\"\nsecret_env = \"KWIKPAISA_SECRET_KEY\"",
            &format!("source = \"vault\"\nvault_addr = \"https://vault.example:8200\"\nvault_path = \"{path}\""),
        )
    };
    assert!(Config::from_toml_str(&vault("kwikpaisa/prod")).is_ok());
    for bad in ["kp/prod?x=1", "kp prod", "kp/%2e%2e", "kp#frag"] {
        assert_eq!(keys_of(&vault(bad)), ["credentials.kwikpaisa.vault_path"], "{bad}");
    }
}

#[test]
fn log_format_is_text_or_json() {
    assert_eq!(Config::from_toml_str(GOOD).unwrap().log.format, LogFormat::Text);
    let json = format!("[log]\nformat = \"json\"\n{GOOD}");
    assert_eq!(Config::from_toml_str(&json).unwrap().log.format, LogFormat::Json);
    assert_eq!(keys_of(&format!("[log]\nformat = \"JSON\"\n{GOOD}")), ["log.format"]);
    assert_eq!(keys_of(&format!("[log]\nlevel = \"debug\"\n{GOOD}")), ["log.level"]);
}

#[test]
fn tracing_is_off_unless_configured_and_its_errors_name_their_keys() {
    assert!(Config::from_toml_str(GOOD).unwrap().tracing.is_none());
    assert!(!Config::from_toml_str(GOOD).unwrap().routes[0].forward_traceparent);

    let on = format!("{GOOD}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n");
    let t = Config::from_toml_str(&on).unwrap().tracing.unwrap();
    assert_eq!(
        t.otlp_endpoint.to_string(),
        "http://127.0.0.1:4318/v1/traces",
        "used as is"
    );
    assert!((t.sample_ratio - DEFAULT_SAMPLE_RATIO).abs() < f64::EPSILON);
    assert_eq!(t.service_name, "signgate");
    // Integers are ratios too.
    for (text, want) in [("0", 0.0), ("1", 1.0), ("0.25", 0.25)] {
        let c = Config::from_toml_str(&format!("{on}sample_ratio = {text}\n")).unwrap();
        assert!((c.tracing.unwrap().sample_ratio - want).abs() < f64::EPSILON, "{text}");
    }

    for (extra, key) in [
        ("[tracing]\nsample_ratio = 0.5\n", "tracing.otlp_endpoint"),
        (
            "[tracing]\notlp_endpoint = \"127.0.0.1:4318\"\n",
            "tracing.otlp_endpoint",
        ),
        (
            "[tracing]\notlp_endpoint = \"grpc://collector:4317\"\n",
            "tracing.otlp_endpoint",
        ),
        (
            "[tracing]\notlp_endpoint = \"https://user:pw@collector/v1/traces\"\n",
            "tracing.otlp_endpoint",
        ),
        (
            "[tracing]\notlp_endpoint = \"http://c/v1/traces\"\nsample_ratio = 1.5\n",
            "tracing.sample_ratio",
        ),
        (
            "[tracing]\notlp_endpoint = \"http://c/v1/traces\"\nsample_ratio = -0.1\n",
            "tracing.sample_ratio",
        ),
        (
            "[tracing]\notlp_endpoint = \"http://c/v1/traces\"\nservice_name = \"\"\n",
            "tracing.service_name",
        ),
        (
            "[tracing]\notlp_endpoint = \"http://c/v1/traces\"\nheaders = \"x\"\n",
            "tracing.headers",
        ),
    ] {
        assert_eq!(keys_of(&format!("{GOOD}\n{extra}")), vec![key.to_string()], "{extra}");
    }
}

#[test]
fn forward_traceparent_needs_tracing() {
    let route = GOOD.replace(
        "scheme = \"kwikpaisa\"\n",
        "scheme = \"kwikpaisa\"\nforward_traceparent = true\n",
    );
    assert_eq!(keys_of(&route), vec!["route[0].forward_traceparent".to_string()]);
    let traced = format!("{route}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n");
    assert!(Config::from_toml_str(&traced).unwrap().routes[0].forward_traceparent);
}

#[test]
fn fleet_section_parses_with_defaults_and_keeps_the_password_out_of_sight() {
    assert!(
        Config::from_toml_str(GOOD).unwrap().fleet.is_none(),
        "no [fleet]: per instance"
    );
    let c = Config::from_toml_str(&format!(
        "{GOOD}\n[fleet]\nredis_url = \"redis://:s3cr%40t-pw@127.0.0.1:6390/2\"\nexpected_instances = 3\n"
    ))
    .unwrap();
    let f = c.fleet.as_ref().unwrap();
    assert_eq!(f.url, "redis://127.0.0.1:6390/2");
    assert!(!f.tls);
    assert_eq!(f.password, Some(RedisPassword::Inline(Redacted::new("s3cr@t-pw"))));
    assert_eq!(f.key_prefix, DEFAULT_FLEET_KEY_PREFIX);
    assert_eq!(f.timeout, DEFAULT_FLEET_TIMEOUT);
    assert_eq!(f.expected_instances, 3);
    assert_eq!(f.limits_on_error, LimitsOnError::Local);
    assert_eq!(f.instance, None, "the host name, read at start-up");
    assert_eq!(f.route_switch_poll, DEFAULT_ROUTE_SWITCH_POLL);
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cr"), "the password is never in Debug: {shown}");
    assert!(
        c.routes.iter().all(|r| r.honor_retry_after),
        "honor_retry_after defaults to true"
    );

    let tls = Config::from_toml_str(&format!(
        "{GOOD}\n[fleet]\nredis_url = \"rediss://redis.internal:6380\"\nredis_password_file = \"/run/secrets/redis\"\nredis_ca_file = \"ca.pem\"\nkey_prefix = \"pay:eu\"\ntimeout_ms = 20\ninstance = \"egress-1\"\nlimits_on_error = \"deny\"\nroute_switch_poll_ms = 250\n"
    ))
    .unwrap();
    let f = tls.fleet.unwrap();
    assert_eq!(f.route_switch_poll, std::time::Duration::from_millis(250));
    assert!(f.tls);
    assert_eq!(f.password, Some(RedisPassword::File("/run/secrets/redis".into())));
    assert_eq!(f.limits_on_error, LimitsOnError::Deny);
    assert_eq!(f.timeout, std::time::Duration::from_millis(20));
    assert_eq!(f.instance.as_deref(), Some("egress-1"));
}

#[test]
fn fleet_errors_name_their_key_and_never_the_password() {
    let bad = |body: &str| errors_of(&format!("{GOOD}\n[fleet]\n{body}\n"));
    let keys = |body: &str| bad(body).iter().map(|e| e.key().to_string()).collect::<Vec<_>>();
    assert_eq!(keys("key_prefix = \"x\""), ["fleet.redis_url"]);
    assert_eq!(keys("redis_url = \"http://127.0.0.1:6379\""), ["fleet.redis_url"]);
    assert_eq!(keys("redis_url = \"redis://h:1/x\""), ["fleet.redis_url"]);
    assert_eq!(
        keys("redis_url = \"redis://h:1\"\ntimeout_ms = 0"),
        ["fleet.timeout_ms"]
    );
    assert_eq!(
        keys("redis_url = \"redis://h:1\"\nkey_prefix = \"{a}\""),
        ["fleet.key_prefix"]
    );
    assert_eq!(
        keys("redis_url = \"redis://h:1\"\nexpected_instances = 0"),
        ["fleet.expected_instances"]
    );
    assert_eq!(
        keys("redis_url = \"redis://h:1\"\nlimits_on_error = \"open\""),
        ["fleet.limits_on_error"]
    );
    assert_eq!(
        keys("redis_url = \"redis://h:1\"\nredis_ca_file = \"ca.pem\""),
        ["fleet.redis_ca_file"]
    );
    assert_eq!(keys("redis_url = \"redis://h:1\"\nsentinel = true"), ["fleet.sentinel"]);
    for poll in ["99", "60001", "0"] {
        assert_eq!(
            keys(&format!("redis_url = \"redis://h:1\"\nroute_switch_poll_ms = {poll}")),
            ["fleet.route_switch_poll_ms"]
        );
    }
    let both = bad("redis_url = \"redis://:pw-in-url-123@h:1\"\nredis_password_file = \"/p\"");
    assert_eq!(both[0].key(), "fleet.redis_password_file");
    for body in [
        "redis_url = \"redis://:pw-in-url-123@h:1/x\"",
        "redis_url = \"http://u:pw-in-url-123@h:1\"",
        "redis_url = \"redis://:pw-in-url-123@[::1\"",
        "redis_url = \"redis://:pw-in-url-123@h:1\"\nredis_password_file = \"/p\"",
    ] {
        let text = ConfigErrors(bad(body)).to_string();
        assert!(!text.contains("pw-in-url-123"), "{text}");
    }
    let route = errors_of(&GOOD.replace(
        "scheme = \"kwikpaisa\"\n[scheme.acme]",
        "scheme = \"kwikpaisa\"\nhonor_retry_after = [1]\n[scheme.acme]",
    ));
    assert_eq!(route[0].key(), "route[0].honor_retry_after");
}

#[test]
fn shutdown_delay_defaults_to_zero_and_is_bounded() {
    let c = Config::from_toml_str(GOOD).unwrap();
    assert_eq!(c.listener.shutdown_delay, std::time::Duration::ZERO);
    let with = |ms: u64| {
        GOOD.replacen(
            "addr = \"127.0.0.1:8080\"",
            &format!("addr = \"127.0.0.1:8080\"\nshutdown_delay_ms = {ms}"),
            1,
        )
    };
    let c = Config::from_toml_str(&with(5000)).unwrap();
    assert_eq!(c.listener.shutdown_delay, std::time::Duration::from_millis(5000));
    assert!(Config::from_toml_str(&with(0)).is_ok(), "0: drain at once");
    let errs = errors_of(&with(300_001));
    assert!(
        errs.iter()
            .any(|e| e.key() == "listener.shutdown_delay_ms" && e.to_string().contains("0 to 300000")),
        "{errs:?}"
    );
    assert!(
        keys_of("[listener]\nshutdown_delay = 5\n[access]\nallow = [\"127.0.0.1\"]\n")
            .contains(&"listener.shutdown_delay".to_string())
    );
}

/// GOOD with `[credentials.kwikpaisa]` replaced by these lines.
fn with_credential(lines: &str) -> String {
    GOOD.replacen(
        "source = \"env\"\napi_key_env = \"KWIKPAISA_API_KEY\"\nsecret_env = \"KWIKPAISA_SECRET_KEY\"",
        lines,
        1,
    )
}

#[test]
fn vault_transit_credentials_take_the_vault_connection_and_a_transit_key() {
    let transit = |extra: &str| {
        with_credential(&format!(
            "source = \"vault_transit\"\nvault_addr = \"https://vault.internal:8200\"\n\
             vault_auth = \"approle\"\nvault_role_id_file = \"/run/r\"\nvault_secret_id_file = \"/run/s\"\n\
             transit_key = \"kwikpaisa-prod\"\n{extra}"
        ))
    };
    let spec = |toml: &str| match Config::from_toml_str(toml).unwrap().credentials["kwikpaisa"]
        .source
        .clone()
    {
        SecretSource::VaultTransit(t) => t,
        other => panic!("{other:?}"),
    };
    let t = spec(&transit("api_key_env = \"KP_API_KEY\""));
    assert_eq!((t.mount.as_str(), t.key.as_str()), ("transit", "kwikpaisa-prod"));
    assert_eq!(t.api_key, ApiKeySource::Env("KP_API_KEY".into()));
    assert_eq!(t.sign_timeout, DEFAULT_TRANSIT_TIMEOUT);
    assert_eq!((t.refresh, t.timeout), (DEFAULT_VAULT_REFRESH, DEFAULT_VAULT_TIMEOUT));
    assert!(matches!(t.auth, VaultAuth::AppRole { .. }));
    let t = spec(&transit(
        "transit_mount = \"/payments/transit/\"\nvault_path = \"kp/prod\"\napi_key_field = \"key\"\ntransit_timeout_ms = 800",
    ));
    assert_eq!(t.mount, "payments/transit");
    assert_eq!(
        t.api_key,
        ApiKeySource::Kv {
            mount: "secret".into(),
            path: "kp/prod".into(),
            field: "key".into()
        }
    );
    assert_eq!(t.sign_timeout, std::time::Duration::from_millis(800));

    // An unusable credential also leaves the route's reference dangling.
    let keys_of = |toml: &str| {
        let mut keys = keys_of(toml);
        keys.retain(|k| k != "route[0].credential");
        keys
    };
    // Where the API key comes from: exactly one place.
    assert_eq!(keys_of(&transit("")), ["credentials.kwikpaisa.api_key_env"]);
    assert_eq!(
        keys_of(&transit("api_key_env = \"K\"\nvault_path = \"kp\"")),
        ["credentials.kwikpaisa.api_key_env"]
    );
    assert_eq!(
        keys_of(&transit("api_key_env = \"K\"\napi_key_field = \"key\"")),
        ["credentials.kwikpaisa.api_key_field"]
    );
    // No secret in the gateway: no secret field, no stale secret.
    for (extra, key) in [
        ("secret_field = \"s\"", "secret_field"),
        ("secret_env = \"S\"", "secret_env"),
        ("vault_max_stale_secs = 60", "vault_max_stale_secs"),
        ("transit_timeout_ms = 0", "transit_timeout_ms"),
        ("transit_timeout_ms = 60001", "transit_timeout_ms"),
        ("transit_mount = \"tr?x\"", "transit_mount"),
    ] {
        assert_eq!(
            keys_of(&transit(&format!("api_key_env = \"K\"\n{extra}"))),
            [format!("credentials.kwikpaisa.{key}")],
            "{extra}"
        );
    }
    assert_eq!(
        keys_of(&transit("api_key_env = \"K\"").replace("transit_key = \"kwikpaisa-prod\"", "transit_key = \"a/b\"")),
        ["credentials.kwikpaisa.transit_key"]
    );
    assert_eq!(
        keys_of(&transit("api_key_env = \"K\"").replace("transit_key = \"kwikpaisa-prod\"\n", "")),
        ["credentials.kwikpaisa.transit_key"]
    );
    // Transit keys belong to vault_transit only.
    let on_vault = with_credential(
        "source = \"vault\"\nvault_addr = \"https://vault.internal:8200\"\nvault_path = \"kp\"\ntransit_key = \"k\"",
    );
    assert_eq!(keys_of(&on_vault), ["credentials.kwikpaisa.transit_key"]);
    let unknown = with_credential("source = \"transit\"");
    assert!(errors_of(&unknown)[0].to_string().contains("vault_transit"));
}

/// GOOD plus `[credentials.merchant_b]` and the route's `credential` line
/// replaced by `lines`; `mtls` turns on a TLS listener with a client CA.
fn with_route_credential(lines: &str, mtls: bool) -> String {
    let mut toml = GOOD.replacen("credential = \"kwikpaisa\"", lines, 1);
    toml.push_str("[credentials.merchant_b]\nsource = \"env\"\napi_key_env = \"B_KEY\"\nsecret_env = \"B_SECRET\"\n");
    if mtls {
        toml = toml.replace(
            "addr = \"127.0.0.1:8080\"",
            "addr = \"127.0.0.1:8080\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nclient_ca = \"ca.pem\"",
        );
    }
    toml
}

#[test]
fn credential_map_picks_a_credential_per_caller() {
    use crate::identity::Identity;
    let c = Config::from_toml_str(&with_route_credential(
        r#"credential_map = [
            { client = "10.1.0.0/16", credential = "kwikpaisa" },
            { identity = "uri:spiffe://prod/merchant-b", credential = "merchant_b" },
            { client = "10.2.0.7", credential = "merchant_b" },
        ]"#,
        true,
    ))
    .unwrap();
    let RouteCredential::ByCaller(rules) = &c.routes[0].credential else {
        panic!("{:?}", c.routes[0].credential);
    };
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0].caller, Caller::Client("10.1.0.0/16".parse().unwrap()));
    assert_eq!(
        rules[1].caller,
        Caller::Identity(Identity::Uri("spiffe://prod/merchant-b".into()))
    );
    assert_eq!(rules[2].caller, Caller::Client("10.2.0.7/32".parse().unwrap()));
    assert_eq!(c.routes[0].credential.names(), ["kwikpaisa", "merchant_b"]);
    assert_eq!(c.routes[0].credential.single(), None);
    let ip = |s: &str| s.parse().unwrap();
    assert!(rules[0].caller.matches(ip("10.1.2.3"), None));
    assert!(!rules[0].caller.matches(ip("10.3.2.3"), None));
    let b = [Identity::Uri("spiffe://prod/merchant-b".into())];
    assert!(rules[1].caller.matches(ip("10.9.9.9"), Some(&b)));
    assert!(!rules[1].caller.matches(
        ip("10.9.9.9"),
        Some(&[Identity::Dns("spiffe://prod/merchant-b".into())])
    ));
    assert!(!rules[1].caller.matches(ip("10.9.9.9"), None));

    let keys = |lines: &str, mtls: bool| keys_of(&with_route_credential(lines, mtls));
    assert_eq!(
        keys(
            "credential = \"kwikpaisa\"\ncredential_map = [{ client = \"10.0.0.0/8\", credential = \"kwikpaisa\" }]",
            false
        ),
        ["route[0].credential_map"]
    );
    assert_eq!(keys("", false), ["route[0].credential"]);
    assert_eq!(keys("credential_map = []", false), ["route[0].credential_map"]);
    assert_eq!(
        keys(
            r#"credential_map = [{ client = "10.0.0.0/33", credential = "kwikpaisa" }, { client = "10.0.0.1", credential = "nope" }]"#,
            false
        ),
        [
            "route[0].credential_map[0].client",
            "route[0].credential_map[1].credential"
        ]
    );
    assert_eq!(
        keys(
            r#"credential_map = [{ identity = "uri:spiffe://x/y", credential = "kwikpaisa" }]"#,
            false
        ),
        ["route[0].credential_map[0].identity"],
        "identities need mTLS"
    );
    assert_eq!(
        keys(
            r#"credential_map = [{ identity = "dns:spiffe://x/y", credential = "kwikpaisa" }]"#,
            true
        ),
        ["route[0].credential_map[0].identity"]
    );
    assert_eq!(
        keys(
            r#"credential_map = [{ client = "10.0.0.1", identity = "uri:spiffe://x/y", credential = "kwikpaisa" }, { credential = "kwikpaisa" }]"#,
            true
        ),
        [
            "route[0].credential_map[0].identity",
            "route[0].credential_map[1].client"
        ]
    );
    assert_eq!(
        keys(
            r#"credential_map = [{ client = "10.0.0.1", credential = "kwikpaisa", cred = "x" }]"#,
            false
        ),
        ["route[0].credential_map[0].cred"],
        "unknown keys inside an entry are errors"
    );
}

#[test]
fn the_egress_source_check_needs_both_keys() {
    let egress = |lines: &str| format!("[egress]\n{lines}\n{GOOD}");
    let c = Config::from_toml_str(&egress(
        "expect_source_ip = \"203.0.113.7\"\nsource_check_url = \"https://ifconfig.example/ip\"",
    ))
    .unwrap();
    let check = c.egress.source_check.unwrap();
    assert_eq!(check.expect, "203.0.113.7".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(check.url.to_string(), "https://ifconfig.example/ip");
    assert_eq!(check.interval, DEFAULT_SOURCE_CHECK_INTERVAL);
    assert!(Config::from_toml_str(GOOD).unwrap().egress.source_check.is_none());
    for (lines, key) in [
        ("expect_source_ip = \"203.0.113.7\"", "egress.source_check_url"),
        ("source_check_url = \"https://ifconfig.example/ip\"", "egress.expect_source_ip"),
        ("source_check_interval_secs = 60", "egress.source_check_interval_secs"),
        (
            "expect_source_ip = \"203.0.113.7:443\"\nsource_check_url = \"https://ifconfig.example/ip\"",
            "egress.expect_source_ip",
        ),
        (
            "expect_source_ip = \"203.0.113.7\"\nsource_check_url = \"http://ifconfig.example/ip\"",
            "egress.source_check_url",
        ),
        (
            "expect_source_ip = \"203.0.113.7\"\nsource_check_url = \"https://ifconfig.example/ip\"\nsource_check_interval_secs = 0",
            "egress.source_check_interval_secs",
        ),
    ] {
        assert_eq!(keys_of(&egress(lines)), [key], "{lines}");
    }
    let plain = egress(
        "allow_plain_http = true\nexpect_source_ip = \"::ffff:127.0.0.2\"\nsource_check_url = \"http://127.0.0.1:9/\"\nsource_check_interval_secs = 5",
    );
    let check = Config::from_toml_str(&plain).unwrap().egress.source_check.unwrap();
    assert_eq!(
        check.expect,
        "127.0.0.2".parse::<std::net::IpAddr>().unwrap(),
        "IPv4-mapped is IPv4"
    );
    assert_eq!(check.interval, std::time::Duration::from_secs(5));
}

/// GOOD with `[route.amount_guard]` holding `body` on its one route.
fn guarded(body: &str) -> String {
    GOOD.replace(
        "scheme = \"kwikpaisa\"\n[scheme.acme]",
        &format!("scheme = \"kwikpaisa\"\n[route.amount_guard]\n{body}\n[scheme.acme]"),
    )
}

#[test]
fn amount_guard_parses_caps_exactly_with_defaults() {
    let c = Config::from_toml_str(&guarded(
        "amount = \"/amount\"\ncurrency = \"/currency\"\nmax_per_request = \"50000.00\"\nmax_per_day = \"500000.05\"\nmax_count_per_day = 1000",
    ))
    .unwrap();
    let g = c.routes[0].amount_guard.as_ref().unwrap();
    assert_eq!(g.amount, "/amount");
    assert_eq!(g.currency.as_deref(), Some("/currency"));
    assert_eq!(g.minor_units, DEFAULT_MINOR_UNITS);
    assert_eq!(g.max_per_request, Some(5_000_000));
    assert_eq!(g.max_per_day, Some(50_000_005), "exact: never through a float");
    assert_eq!(g.max_count_per_day, Some(1000));
    assert_eq!(g.per, AmountPer::Client);
    assert!(c.needs_amount_store());
    let whole = Config::from_toml_str(&guarded(
        "amount = \"/a\"\nminor_units = 0\nmax_per_day = 700\nper = \"route\"",
    ))
    .unwrap();
    let g = whole.routes[0].amount_guard.as_ref().unwrap();
    assert_eq!((g.minor_units, g.max_per_day, g.per), (0, Some(700), AmountPer::Route));
    assert!(Config::from_toml_str(GOOD).unwrap().routes[0].amount_guard.is_none());
    assert!(!Config::from_toml_str(GOOD).unwrap().needs_amount_store());
    let fleet = format!(
        "{}\n[fleet]\nredis_url = \"redis://127.0.0.1:6379\"\n",
        guarded("amount = \"/a\"\nmax_per_day = \"1\"")
    );
    assert!(
        !Config::from_toml_str(&fleet).unwrap().needs_amount_store(),
        "Redis keeps them"
    );
}

#[test]
fn amount_guard_errors_name_their_key() {
    let key = |k: &str| format!("route[0].amount_guard.{k}");
    for (body, want) in [
        ("max_per_day = \"1.00\"", key("amount")),
        ("amount = \"amount\"\nmax_per_day = \"1\"", key("amount")),
        (
            "amount = \"/a\"\ncurrency = \"cur\"\nmax_per_day = \"1\"",
            key("currency"),
        ),
        ("amount = \"/a\"", key("max_per_day")),
        ("amount = \"/a\"\nmax_per_day = \"1.234\"", key("max_per_day")),
        ("amount = \"/a\"\nmax_per_day = 1000.5", key("max_per_day")),
        ("amount = \"/a\"\nmax_per_day = \"-5\"", key("max_per_day")),
        ("amount = \"/a\"\nmax_per_day = \"0\"", key("max_per_day")),
        ("amount = \"/a\"\nmax_per_day = \"1e6\"", key("max_per_day")),
        ("amount = \"/a\"\nmax_per_day = \"lots\"", key("max_per_day")),
        (
            "amount = \"/a\"\nmax_per_day = \"99999999999999999\"",
            key("max_per_day"),
        ),
        ("amount = \"/a\"\nmax_per_request = \"1.001\"", key("max_per_request")),
        (
            "amount = \"/a\"\nmax_per_request = \"10\"\nmax_per_day = \"5\"",
            key("max_per_request"),
        ),
        ("amount = \"/a\"\nmax_count_per_day = 0", key("max_count_per_day")),
        (
            "amount = \"/a\"\nmax_per_day = \"1\"\nminor_units = 10",
            key("minor_units"),
        ),
        ("amount = \"/a\"\nmax_per_day = \"1\"\nper = \"caller\"", key("per")),
        (
            "amount = \"/a\"\nmax_per_day = \"1\"\nmax_per_week = \"5\"",
            key("max_per_week"),
        ),
        (
            "amount = \"/a\"\nmax_per_day = \"1\"\nmax_count_per_day = \"many\"",
            key("max_count_per_day"),
        ),
    ] {
        let errors = errors_of(&guarded(body));
        assert_eq!(
            errors.iter().map(ConfigError::key).collect::<Vec<_>>(),
            [want.as_str()],
            "{body}: {errors:?}"
        );
    }
    let text = ConfigErrors(errors_of(&guarded("amount = \"/a\"\nmax_per_day = 1000.5"))).to_string();
    assert!(text.contains("write the amount as a string"), "{text}");
    let raw = errors_of(
        &guarded("amount = \"/a\"\nmax_per_day = \"1\"")
            .replace("[scheme.acme]", "[scheme.acme]\nbody = \"raw\"")
            .replace("scheme = \"kwikpaisa\"\n[route", "scheme = \"acme\"\n[route"),
    );
    assert_eq!(
        raw.iter().map(ConfigError::key).collect::<Vec<_>>(),
        ["route[0].amount_guard"]
    );
}
