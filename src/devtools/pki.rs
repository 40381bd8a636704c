//! A throw-away PKI made at run time with rcgen: a CA, server certificates and
//! client certificates. Used by `signgate demo`, the tests and
//! `signgate certs dev`. Nothing here is for production trust.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// Validity of an issued (leaf) certificate: under the 398 days browsers and
/// scanners accept, so a dev certificate does not teach bad habits.
const LEAF_DAYS: i64 = 397;
/// Validity of the CA certificate.
const CA_DAYS: i64 = 5 * 365;
/// Back-dating, so a peer whose clock is slightly behind accepts the certificate.
const BACKDATE: Duration = Duration::hours(1);

/// `[now - BACKDATE, now + days]`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(days);
}

/// A certificate and its key, in PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Issued {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// One subject alternative name of a client certificate, with its type.
#[derive(Debug, Clone, Copy)]
pub enum ClientSan<'a> {
    Uri(&'a str),
    Dns(&'a str),
}

/// A certificate authority able to issue server and client certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl DevCa {
    pub fn new(common_name: &str) -> Result<DevCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        validity(&mut params, CA_DAYS);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(DevCa {
            issuer: CertifiedIssuer::self_signed(params, key)?,
            key_pem,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for DNS names and IP addresses.
    pub fn server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.issue(params)
    }

    /// A client certificate whose identities are SAN URIs (`spiffe://…`) or DNS names.
    pub fn client(&self, identities: &[&str]) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, identities.first().copied().unwrap_or("client"));
        for id in identities {
            params.subject_alt_names.push(if id.contains("://") {
                SanType::URI((*id).try_into()?)
            } else {
                SanType::DnsName((*id).try_into()?)
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params)
    }

    /// A client certificate with exactly these SANs, each of the type given:
    /// tests use it to make the confusing ones (`DNS:spiffe://…`).
    pub fn client_with(&self, common_name: &str, sans: &[ClientSan<'_>]) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        for san in sans {
            params.subject_alt_names.push(match san {
                ClientSan::Uri(u) => SanType::URI((*u).try_into()?),
                ClientSan::Dns(d) => SanType::DnsName((*d).try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, rcgen::Error> {
        validity(&mut params, LEAF_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}
