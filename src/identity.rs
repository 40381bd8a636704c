//! Client identities for mTLS: the SAN URIs (e.g. SPIFFE ids) and DNS names of
//! a verified client certificate, matched against `route.allow_identities`.
//! The certificate chain itself was verified by rustls during the handshake.
//!
//! Identities are typed: a URI SAN and a DNS SAN with the same text are two
//! different identities, so `DNS:spiffe://prod/payouts` (a DNS name any CA
//! that may issue DNS names can put in a certificate) never passes an
//! allowlist entry meant for the URI SAN `spiffe://prod/payouts`.
//!
//! Allowlist entries (`allow_identities`) are written `uri:…` or `dns:…`. An
//! untyped entry is typed by its shape, which keeps existing configurations
//! meaning what they were written for: with a `:` it is a URI (a DNS name
//! never contains one), without one it is a DNS name.

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One identity of a client certificate, or one allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A `uniformResourceIdentifier` SAN, e.g. `spiffe://prod/payouts`.
    Uri(String),
    /// A `dNSName` SAN, e.g. `payouts.internal.example`.
    Dns(String),
}

/// Why an `allow_identities` entry is refused (the config error's "expected").
pub const ENTRY_EXPECTED: &str = "\"uri:SCHEME:…\" (a SAN URI such as uri:spiffe://prod/payouts) or \"dns:NAME\" (a SAN DNS name such as dns:payouts.internal); an untyped entry with a ':' is a URI, one without is a DNS name";

impl Identity {
    /// Parse an `allow_identities` entry: `uri:…`, `dns:…` (prefixes in any
    /// case), or untyped: a URI if it contains `:`, else a DNS name. The
    /// value must be a well-formed URI (with a scheme) or DNS name.
    pub fn parse_entry(s: &str) -> Result<Identity, &'static str> {
        let typed = |prefix: &str| {
            s.get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| &s[prefix.len()..])
        };
        let id = if let Some(rest) = typed("uri:") {
            Identity::Uri(rest.to_string())
        } else if let Some(rest) = typed("dns:") {
            Identity::Dns(rest.to_string())
        } else if s.contains(':') {
            Identity::Uri(s.to_string())
        } else {
            Identity::Dns(s.to_string())
        };
        let ok = match &id {
            Identity::Uri(u) => is_uri(u),
            Identity::Dns(d) => is_dns_name(d),
        };
        if ok {
            Ok(id)
        } else {
            Err(ENTRY_EXPECTED)
        }
    }

    /// Whether a certificate identity `have` is this allowed one: the same
    /// type, and the same text (DNS names compare without regard to ASCII
    /// case, as DNS does; URIs compare exactly).
    pub fn matches(&self, have: &Identity) -> bool {
        match (self, have) {
            (Identity::Uri(want), Identity::Uri(have)) => want == have,
            (Identity::Dns(want), Identity::Dns(have)) => want.eq_ignore_ascii_case(have),
            _ => false,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Uri(u) => write!(f, "uri:{u}"),
            Identity::Dns(d) => write!(f, "dns:{d}"),
        }
    }
}

/// `scheme ":" rest`, printable ASCII without spaces (an IA5String SAN).
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut sb = scheme.bytes();
    sb.next().is_some_and(|b| b.is_ascii_alphabetic())
        && sb.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Dot-separated labels of `A-Z a-z 0-9 - _`, each 1–63 long, 253 at most
/// in all; no wildcard (matching is exact).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A route's `allow_identities`: a client passes when one of its
/// certificate identities matches one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed(Vec<Identity>);

impl Allowed {
    pub fn new(entries: Vec<Identity>) -> Allowed {
        Allowed(entries)
    }

    pub fn entries(&self) -> &[Identity] {
        &self.0
    }

    /// Whether any of the certificate's identities is allowed.
    pub fn matches(&self, have: &[Identity]) -> bool {
        have.iter().any(|h| self.0.iter().any(|want| want.matches(h)))
    }
}

/// SAN URI and DNS entries of `cert`, typed; empty if it has none or does not parse.
pub fn san_identities(cert: &CertificateDer<'_>) -> Vec<Identity> {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(Identity::Uri((*u).to_string())),
            GeneralName::DNSName(d) => Some(Identity::Dns((*d).to_string())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtools::pki::{ClientSan, DevCa};

    fn uri(s: &str) -> Identity {
        Identity::Uri(s.into())
    }

    fn dns(s: &str) -> Identity {
        Identity::Dns(s.into())
    }

    #[test]
    fn entries_are_typed_by_prefix_or_by_shape() {
        for (entry, want) in [
            ("uri:spiffe://prod/payouts", uri("spiffe://prod/payouts")),
            ("URI:spiffe://prod/payouts", uri("spiffe://prod/payouts")),
            ("dns:payouts.internal", dns("payouts.internal")),
            ("DNS:payouts.internal", dns("payouts.internal")),
            // Untyped: a ':' makes it a URI, its absence a DNS name.
            ("spiffe://prod/payouts", uri("spiffe://prod/payouts")),
            ("urn:example:payouts", uri("urn:example:payouts")),
            ("payouts.internal", dns("payouts.internal")),
            ("payouts", dns("payouts")),
            // A URI whose scheme is `dns` must be written typed.
            ("uri:dns://resolver/x", uri("dns://resolver/x")),
        ] {
            assert_eq!(Identity::parse_entry(entry), Ok(want), "{entry}");
        }
    }

    #[test]
    fn malformed_entries_are_refused() {
        for entry in [
            "",
            "uri:",
            "dns:",
            "dns:spiffe://prod/payouts", // not a DNS name: the confusion this module exists to stop
            "dns://resolver/x",          // read as typed dns: "//resolver/x"
            "uri:no-scheme",
            "uri:1abc:x",
            "spiffe://prod/pay outs",
            "pay outs",
            "a..b",
            "*.example.com",
            "uri:spiffe://x/\u{e9}",
            &"a".repeat(64),
        ] {
            assert!(Identity::parse_entry(entry).is_err(), "{entry:?} accepted");
        }
    }

    #[test]
    fn types_never_cross() {
        let allowed = Allowed::new(vec![Identity::parse_entry("spiffe://prod/payouts").unwrap()]);
        assert!(allowed.matches(&[uri("spiffe://prod/payouts")]));
        assert!(!allowed.matches(&[dns("spiffe://prod/payouts")]));
        assert!(!allowed.matches(&[uri("spiffe://prod/payouts/x"), uri("SPIFFE://prod/payouts")]));
        assert!(!allowed.matches(&[]));

        let allowed = Allowed::new(vec![Identity::parse_entry("payouts.internal").unwrap()]);
        assert!(allowed.matches(&[dns("payouts.internal")]));
        assert!(
            allowed.matches(&[dns("PAYOUTS.Internal")]),
            "DNS names ignore ASCII case"
        );
        assert!(!allowed.matches(&[uri("payouts.internal")]));
        assert!(
            allowed.matches(&[uri("spiffe://x/y"), dns("payouts.internal")]),
            "any one SAN will do"
        );
    }

    #[test]
    fn san_extraction_keeps_the_type() {
        let ca = DevCa::new("test CA").unwrap();
        let cert = ca
            .client_with(
                "mixed",
                &[
                    ClientSan::Uri("spiffe://prod/payouts"),
                    ClientSan::Dns("spiffe://prod/payouts"),
                    ClientSan::Dns("payouts.internal"),
                ],
            )
            .unwrap();
        assert_eq!(
            san_identities(&cert.cert_der),
            vec![
                uri("spiffe://prod/payouts"),
                dns("spiffe://prod/payouts"),
                dns("payouts.internal")
            ]
        );
        assert!(san_identities(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }

    #[test]
    fn display_is_the_typed_syntax() {
        assert_eq!(uri("spiffe://a/b").to_string(), "uri:spiffe://a/b");
        assert_eq!(dns("a.b").to_string(), "dns:a.b");
        for id in [uri("spiffe://a/b"), dns("a.b"), uri("dns://x/y")] {
            assert_eq!(Identity::parse_entry(&id.to_string()), Ok(id));
        }
    }
}
