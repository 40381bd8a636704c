//! Certificate hot reload, on the real binary: the listener's certificate
//! replaced by rename, by a Kubernetes-style `..data` symlink swap (with the
//! client CA), and through `POST /reload`; a broken file keeps the old one;
//! the egress client certificate rotated under an unchanged configuration.
//! Each check is made from a rustls client: the serial of the certificate a
//! new connection is shown, while a keep-alive connection opened before the
//! swap goes on serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use signgate::devtools::pki::{DevCa, Issued};

use crate::support::*;

/// The serial number of a DER certificate, hex.
fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    hex::encode(cert.raw_serial())
}

fn not_after(der: &[u8]) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.validity().not_after.timestamp()
}

/// An open HTTP/1.1 keep-alive connection over TLS, and the serial of the
/// certificate the gateway showed when it was made.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    serial: String,
}

impl Conn {
    /// One request on this connection; its status.
    async fn get(&mut self, path: &str) -> Result<u16, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    }
}

/// A new TLS connection to `addr` trusting `ca`, with `client` as the client
/// certificate; `Err` is the handshake's error.
async fn connect(addr: std::net::SocketAddr, ca: &DevCa, client: Option<&Issued>) -> Result<Conn, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(signgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert_der.clone()], c.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut c = Conn {
        sender,
        serial: serial(&leaf),
    };
    // TLS 1.3: a refused client certificate shows only at the first read.
    c.get("/none").await.map(|_| c)
}

/// The serial a new connection is shown now.
async fn served_serial(addr: std::net::SocketAddr, ca: &DevCa) -> String {
    connect(addr, ca, None).await.unwrap().serial
}

/// Poll until a new connection is shown `want`; panics with the log.
async fn wait_for_serial(gw: &GatewayProcess, ca: &DevCa, want: &str) {
    let addr = gw.addr;
    let seen = eventually(Duration::from_secs(6), || async move {
        served_serial(addr, ca).await == want
    })
    .await;
    assert!(seen, "new connections never got the new certificate\n{}", gw.log_text());
}

fn write_pair(cert: &Path, key: &Path, issued: &Issued) {
    replace_file(key, &issued.key_pem);
    replace_file(cert, &issued.cert_pem);
}

async fn reloads(gw: &GatewayProcess, certificate: &str, result: &str) -> f64 {
    gw.metric(
        "signgate_certificate_reloads_total",
        &[("certificate", certificate), ("result", result)],
    )
    .await
}

/// The base configuration with a TLS listener on `cert`/`key`.
fn tls_toml(fx: &Fixture, cert: &Path, key: &Path) -> GatewayToml {
    fx.config().listener_tls(cert, key)
}

#[tokio::test]
async fn a_listener_certificate_replaced_by_rename_reaches_new_connections_and_a_broken_one_is_refused() {
    let fx = Fixture::new().await;
    let ca = DevCa::new("listener CA").unwrap();
    let (cert, key) = (fx.path("gateway.pem"), fx.path("gateway-key.pem"));
    let first = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    write_pair(&cert, &key, &first);
    let gw = fx.process(&tls_toml(&fx, &cert, &key), &[]);

    let mut kept = connect(gw.addr, &ca, None).await.unwrap();
    assert_eq!(kept.serial, serial(&first.cert_der));
    assert_eq!(kept.get("/none").await, Ok(404), "served on the first certificate");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "signgate_certificate_expiry_timestamp_seconds",
            &[("certificate", "listener")]
        ),
        not_after(&first.cert_der) as f64
    );

    // Rotated by rename (key first, then the certificate, as a tool might).
    let second = ca.server(&["localhost", "127.0.0.1", "rotated.test"]).unwrap();
    write_pair(&cert, &key, &second);
    wait_for_serial(&gw, &ca, &serial(&second.cert_der)).await;
    assert_eq!(reloads(&gw, "listener", "ok").await, 1.0);
    assert_eq!(reloads(&gw, "listener", "error").await, 0.0, "{}", gw.log_text());
    assert_eq!(
        gw.metric(
            "signgate_certificate_expiry_timestamp_seconds",
            &[("certificate", "listener")]
        )
        .await,
        not_after(&second.cert_der) as f64
    );
    // The connection made before the swap is untouched and still serves.
    assert_eq!(kept.get("/none").await, Ok(404));
    assert_eq!(kept.serial, serial(&first.cert_der));

    // A certificate that does not parse: refused, counted, logged; the
    // second certificate stays in use.
    replace_file(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let counted = eventually(Duration::from_secs(6), || async {
        reloads(&gw, "listener", "error").await == 1.0
    })
    .await;
    assert!(counted, "{}", gw.log_text());
    gw.wait_for_log("certificate rejected", Duration::from_secs(5)).await;
    assert_eq!(served_serial(gw.addr, &ca).await, serial(&second.cert_der));
    // A key of another certificate: refused as well.
    let third = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    replace_file(&cert, &third.cert_pem);
    let counted = eventually(Duration::from_secs(6), || async {
        reloads(&gw, "listener", "error").await == 2.0
    })
    .await;
    assert!(counted, "a key that does not match is refused\n{}", gw.log_text());
    assert_eq!(served_serial(gw.addr, &ca).await, serial(&second.cert_der));
    assert_eq!(kept.get("/none").await, Ok(404));
    assert!(!gw.log_text().contains("PRIVATE KEY"), "no key material in the log");
}

/// A Kubernetes Secret volume: `tls.crt`, `tls.key` and `ca.crt` are
/// symlinks into `..data`, itself a symlink to a timestamped directory that
/// the kubelet replaces by renaming a new `..data` over it.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = SecretVolume { dir, generation: 0 };
        v.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), v.dir.join(name)).unwrap();
        }
        v
    }

    /// Write a new generation and swap `..data` to it atomically.
    fn swap(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let gen = format!("..2025_01_01_00_00_0{}.{}", self.generation, 1000 + self.generation);
        let gen_dir = self.dir.join(&gen);
        std::fs::create_dir(&gen_dir).unwrap();
        for (name, contents) in files {
            std::fs::write(gen_dir.join(name), contents).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&gen, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[tokio::test]
async fn a_secret_volume_symlink_swap_rotates_the_listener_certificate_and_the_client_ca() {
    let fx = Fixture::new().await;
    let server_ca = DevCa::new("server CA").unwrap();
    let (old_clients, new_clients) = (DevCa::new("clients CA 1").unwrap(), DevCa::new("clients CA 2").unwrap());
    let first = server_ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let mut volume = SecretVolume::new(
        fx.path("signgate-tls"),
        &[
            ("tls.crt", &first.cert_pem),
            ("tls.key", &first.key_pem),
            ("ca.crt", &old_clients.cert_pem()),
        ],
    );
    let toml =
        tls_toml(&fx, &volume.path("tls.crt"), &volume.path("tls.key")).listener("client_ca", volume.path("ca.crt"));
    let gw = fx.process(&toml, &[]);
    let (old_client, new_client) = (
        old_clients.client(&["spiffe://test/old"]).unwrap(),
        new_clients.client(&["spiffe://test/new"]).unwrap(),
    );
    let mut kept = connect(gw.addr, &server_ca, Some(&old_client)).await.unwrap();
    assert_eq!(kept.serial, serial(&first.cert_der));
    assert!(
        connect(gw.addr, &server_ca, Some(&new_client)).await.is_err(),
        "the new clients' CA is not trusted yet"
    );

    let second = server_ca.server(&["localhost", "127.0.0.1"]).unwrap();
    volume.swap(&[
        ("tls.crt", &second.cert_pem),
        ("tls.key", &second.key_pem),
        ("ca.crt", &new_clients.cert_pem()),
    ]);
    let addr = gw.addr;
    let (ca, want, client) = (&server_ca, serial(&second.cert_der), &new_client);
    let swapped = eventually(Duration::from_secs(6), || {
        let want = want.clone();
        async move { connect(addr, ca, Some(client)).await.is_ok_and(|c| c.serial == want) }
    })
    .await;
    assert!(swapped, "the swap never reached new connections\n{}", gw.log_text());
    assert!(
        connect(gw.addr, &server_ca, Some(&old_client)).await.is_err(),
        "the old clients' CA is no longer trusted for new connections"
    );
    // The mTLS connection made before the swap goes on.
    assert_eq!(kept.get("/none").await, Ok(404));
    assert_eq!(reloads(&gw, "listener", "ok").await, 1.0);
    assert_eq!(reloads(&gw, "client_ca", "ok").await, 1.0);
}

#[tokio::test]
async fn post_reload_reads_certificates_at_once_and_reports_a_rejected_one() {
    let fx = Fixture::new().await;
    let ca = DevCa::new("listener CA").unwrap();
    let (cert, key) = (fx.path("gateway.pem"), fx.path("gateway-key.pem"));
    let first = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    write_pair(&cert, &key, &first);
    let token = fx.path("admin-token");
    std::fs::write(&token, "0123456789abcdef-ops-token").unwrap();
    let gw = fx.process(&tls_toml(&fx, &cert, &key).admin("token_file", &token), &[]);
    let auth = [("authorization", "Bearer 0123456789abcdef-ops-token")];
    let reload = || async {
        TestClient::new()
            .send(http::Method::POST, &gw.admin_url("/reload"), &auth, "")
            .await
    };

    let second = ca.server(&["localhost", "127.0.0.1"]).unwrap();
    write_pair(&cert, &key, &second);
    // No waiting for the file poll: the reload reads the files itself.
    let r = reload().await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["certificates"][0]["certificate"], "listener", "{:?}", r.body);
    assert_eq!(r.json()["certificates"][0]["result"], "ok");
    assert_eq!(served_serial(gw.addr, &ca).await, serial(&second.cert_der));
    // Nothing new: nothing reported.
    let r = reload().await;
    assert_eq!(
        (r.status.as_u16(), r.json()["certificates"].clone()),
        (200, serde_json::json!([]))
    );

    replace_file(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let r = reload().await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(
        r.code(),
        "reload_rejected",
        "preflight refuses the configuration's broken key too"
    );
    assert_eq!(r.json()["certificates"][0]["result"], "error", "{:?}", r.body);
    let detail = r.json()["certificates"][0]["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("gateway-key.pem") && !detail.contains("AAAA"),
        "{detail}"
    );
    assert_eq!(served_serial(gw.addr, &ca).await, serial(&second.cert_der));
    assert_eq!(reloads(&gw, "listener", "error").await, 1.0);
}

/// Records the serial of every client certificate the stand-in is shown.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    seen: std::sync::mpsc::Sender<String>,
}

impl rustls::server::danger::ClientCertVerifier for Recording {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let _ = self.seen.send(serial(end_entity));
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[tokio::test]
async fn an_egress_client_certificate_rotated_on_disk_is_presented_by_new_upstream_connections() {
    use signgate::devtools::standin::{Standin, StandinOptions};
    let fx = Fixture::new().await;
    // A provider stand-in that requires a client certificate from `clients`
    // and records each one it is shown.
    let clients = DevCa::new("provider's client CA").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(clients.cert_der()).unwrap();
    let (tx, seen) = std::sync::mpsc::channel();
    let verifier = Recording {
        inner: rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), signgate::tls::provider())
            .build()
            .unwrap(),
        seen: tx,
    };
    let server = fx.pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(signgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())
        .unwrap();
    let standin = Standin::start(StandinOptions {
        api_key: fx.provider.api_key.clone(),
        secret: signgate::secrets::SecretBytes::from(fx.provider.secret.clone()),
        tolerance: Duration::from_secs(60),
        tls: Some(Arc::new(tls)),
        bind: "127.0.0.1:0".parse().unwrap(),
    })
    .await
    .unwrap();
    let (cert, key) = (fx.path("egress.pem"), fx.path("egress-key.pem"));
    let first = clients.client(&["spiffe://merchant/egress"]).unwrap();
    write_pair(&cert, &key, &first);
    let toml = fx
        .config_to(&format!("https://localhost:{}", standin.addr().port()))
        .egress("client_cert", &cert)
        .egress("client_key", &key);
    let gw = fx.process(&toml, &[]);
    let c = TestClient::new();
    assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    assert_eq!(seen.try_iter().last(), Some(serial(&first.cert_der)));

    let second = clients.client(&["spiffe://merchant/egress"]).unwrap();
    write_pair(&cert, &key, &second);
    let reloaded = eventually(Duration::from_secs(6), || async {
        reloads(&gw, "egress_client", "ok").await == 1.0
    })
    .await;
    assert!(reloaded, "{}", gw.log_text());
    // The configuration did not change; the next request goes out on a
    // new connection with the new certificate.
    assert_eq!(c.post(&gw.url("/kwikpaisa/x"), "{}").await.status, 200);
    let shown: Vec<String> = seen.try_iter().collect();
    assert_eq!(shown, vec![serial(&second.cert_der)], "{}", gw.log_text());
    assert_eq!(
        gw.metric(
            "signgate_certificate_expiry_timestamp_seconds",
            &[("certificate", "egress_client")]
        )
        .await,
        not_after(&second.cert_der) as f64
    );
}
