//! Client identities for mTLS: the SAN URIs (e.g. SPIFFE ids) and DNS names of
//! a verified client certificate, matched against `route.allow_identities`.
//! The certificate chain itself was verified by rustls during the handshake.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// SAN URI and DNS entries of `cert`; empty if it has none or does not parse.
pub fn san_identities(cert: &CertificateDer<'_>) -> Vec<String> {
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
            GeneralName::URI(u) => Some((*u).to_string()),
            GeneralName::DNSName(d) => Some((*d).to_string()),
            _ => None,
        })
        .collect()
}
