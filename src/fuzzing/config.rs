//! `config`: `Config::from_toml_str` on arbitrary UTF-8. Reading a config
//! from a string touches no file, no network and no process: validation
//! only resolves paths, it never opens them.

use std::collections::BTreeSet;

use crate::config::Config;
use crate::sign::Part;

/// Properties: parsing returns a config or a non-empty list of errors, each
/// naming a key, and the same answer twice; a config that validates is
/// never open to all (`access.allow` is non-empty), refers only to defined
/// schemes and credentials, and signs every scheme's message with a timestamp
/// under three distinct header names.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Config::from_toml_str(text);
    let second = Config::from_toml_str(text);
    match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the same text gave two configs");
            check_config(&a);
        }
        (Err(a), Err(b)) => {
            assert!(!a.0.is_empty(), "an error without errors");
            for e in &a.0 {
                assert!(!e.to_string().is_empty());
            }
            // The `config` crate's tables are hash maps: compare as sets.
            let set = |e: &crate::config::ConfigErrors| e.0.iter().map(|e| e.to_string()).collect::<BTreeSet<_>>();
            assert_eq!(set(&a), set(&b), "the same text gave other errors");
        }
        (a, b) => panic!("the same text gave {:?} then {:?}", a.is_ok(), b.is_ok()),
    }
}

fn check_config(c: &Config) {
    assert!(!c.access.allow.is_empty(), "a config without access.allow validated");
    for (name, s) in &c.schemes {
        assert!(s.message.contains(&Part::Timestamp), "scheme {name} signs no timestamp");
        let headers: BTreeSet<_> = s.headers().into_iter().map(|h| h.as_str()).collect();
        assert_eq!(headers.len(), 3, "scheme {name} reuses a header name");
    }
    for r in &c.routes {
        assert!(
            c.schemes.contains_key(&r.scheme),
            "route {} names an unknown scheme",
            r.name
        );
        assert!(
            r.credential.names().iter().all(|n| c.credentials.contains_key(*n)),
            "route {} names an unknown credential",
            r.name
        );
    }
    for w in &c.webhooks {
        assert!(
            c.schemes.contains_key(&w.scheme),
            "webhook {} names an unknown scheme",
            w.name
        );
        assert!(
            c.credentials.contains_key(&w.credential),
            "webhook {} names an unknown credential",
            w.name
        );
    }
}
