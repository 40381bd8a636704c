//! `signgate certs dev` as an operator uses it: the binary writes a
//! development PKI (keys 0600, no silent overwrite), and the real gateway,
//! started on those files, serves mTLS: a client with `client-payout.pem`
//! gets through, `client-other.pem` is told apart by `allow_identities`, and a
//! client without a certificate (or with one from another CA) is refused in
//! the TLS handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_signgate");

const FILES: [&str; 8] = [
    "ca.pem",
    "ca-key.pem",
    "gateway.pem",
    "gateway-key.pem",
    "client-payout.pem",
    "client-payout-key.pem",
    "client-other.pem",
    "client-other-key.pem",
];

fn certs_dev(out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["certs", "dev", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_dev_writes_private_keys_0600_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dev");
    let first = certs_dev(&out, &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for f in FILES {
        let p = out.join(f);
        assert!(p.is_file(), "{f} missing");
        #[cfg(unix)]
        assert_eq!(mode(&p), if f.ends_with("-key.pem") { 0o600 } else { 0o644 }, "{f}");
    }
    let ca_before = std::fs::read(out.join("ca.pem")).unwrap();

    // A second run refuses, names the files and changes nothing.
    let again = certs_dev(&out, &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), ca_before);

    // --force replaces them, and a key that had a looser mode comes back 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(out.join("ca-key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let forced = certs_dev(&out, &["--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_ne!(std::fs::read(out.join("ca.pem")).unwrap(), ca_before);
    #[cfg(unix)]
    assert_eq!(mode(&out.join("ca-key.pem")), 0o600);
}

#[test]
fn generated_private_keys_are_ignored_by_git() {
    let gitignore = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore")).unwrap();
    let lines: Vec<&str> = gitignore.lines().map(str::trim).collect();
    for pattern in ["/certs/dev/", "*-key.pem", "*.key"] {
        assert!(lines.contains(&pattern), ".gitignore lacks {pattern}");
    }
}

/// A gateway serving HTTPS with the dev certificates and requiring client
/// certificates; the route admits only the payout identity. Its credential
/// file never exists, so a request that passes every check answers 503.
fn mtls_config(dir: &Path) -> GatewayToml {
    GatewayToml::new()
        .listener("addr", "127.0.0.1:0")
        .listener_tls(&dir.join("gateway.pem"), &dir.join("gateway-key.pem"))
        .listener("client_ca", dir.join("ca.pem"))
        .admin("addr", "")
        .allow(["127.0.0.0/8"])
        .credential("kwikpaisa", Credential::file(dir.join("no-such-credential.json")))
        .route(
            Route::new("kwikpaisa", "/kwikpaisa/", "https://localhost:1")
                .credential("kwikpaisa")
                .scheme("kwikpaisa")
                .allow_identities(["spiffe://signgate.dev/payout-svc"]),
        )
}

fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in signgate::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(signgate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                signgate::tls::load_certs(cert).unwrap(),
                signgate::tls::load_key(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Where an HTTPS exchange stopped.
#[derive(Debug)]
enum Failure {
    Handshake(String),
    Request(String),
}

/// One HTTP/1.1 request over rustls, on a fresh connection.
async fn https(
    cfg: Arc<ClientConfig>,
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, String), Failure> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| Failure::Handshake(format!("{e:?}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| Failure::Request(format!("{e:?}")))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::Request(format!("{e:?}")))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn dev_certificates_serve_mtls_and_refuse_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dev");
    let out = certs_dev(&d, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gw = start_gateway(&mtls_config(&d)).await;
    let addr = gw.addr();
    let ca = d.join("ca.pem");
    let all = rustls::ALL_VERSIONS;

    // The payout service's certificate completes the handshake and a request.
    let payout = client_config(
        &ca,
        Some((&d.join("client-payout.pem"), &d.join("client-payout-key.pem"))),
        all,
    );
    let (status, body) = https(payout.clone(), addr, Method::GET, "/").await.unwrap();
    assert_eq!((status.as_u16(), code(&body).as_str()), (404, "no_route"), "{body}");
    // Its identity passes allow_identities: the request gets as far as the credential.
    let (status, body) = https(payout, addr, Method::POST, "/kwikpaisa/api").await.unwrap();
    assert_eq!(
        (status.as_u16(), code(&body).as_str()),
        (503, "credential_unavailable"),
        "{body}"
    );

    // Another valid certificate from the same CA: in by TLS, out by identity.
    let other = client_config(
        &ca,
        Some((&d.join("client-other.pem"), &d.join("client-other-key.pem"))),
        all,
    );
    let (status, body) = https(other, addr, Method::POST, "/kwikpaisa/api").await.unwrap();
    assert_eq!(
        (status.as_u16(), code(&body).as_str()),
        (403, "identity_not_allowed"),
        "{body}"
    );

    // No client certificate, TLS 1.2: the handshake itself fails.
    let anon12 = client_config(&ca, None, &[&rustls::version::TLS12]);
    match https(anon12, addr, Method::GET, "/").await {
        Err(Failure::Handshake(_)) => {}
        other => panic!("TLS 1.2 without a client certificate: {other:?}"),
    }
    // No client certificate, TLS 1.3: the client's side of the handshake
    // completes before the server checks, so the server's alert arrives on
    // the first read; no HTTP response is ever served.
    let anon13 = client_config(&ca, None, &[&rustls::version::TLS13]);
    match https(anon13, addr, Method::GET, "/").await {
        Err(Failure::Handshake(e)) | Err(Failure::Request(e)) => {
            assert!(e.contains("CertificateRequired"), "{e}")
        }
        Ok(r) => panic!("TLS 1.3 without a client certificate was served: {r:?}"),
    }

    // A certificate from another CA (a second `certs dev` run) is refused too.
    // Both CAs carry the same name, so the server finds "its" CA and the
    // signature check fails: the alert is decrypt_error rather than unknown_ca.
    let foreign = dir.path().join("foreign");
    assert!(certs_dev(&foreign, &[]).status.success());
    let stranger = client_config(
        &ca,
        Some((
            &foreign.join("client-payout.pem"),
            &foreign.join("client-payout-key.pem"),
        )),
        &[&rustls::version::TLS13],
    );
    match https(stranger, addr, Method::GET, "/").await {
        Err(Failure::Handshake(e)) | Err(Failure::Request(e)) => {
            assert!(
                ["DecryptError", "UnknownCA", "BadCertificate"]
                    .iter()
                    .any(|a| e.contains(&format!("AlertReceived({a})"))),
                "{e}"
            )
        }
        Ok(r) => panic!("a certificate from another CA was served: {r:?}"),
    }

    gw.shutdown().await;
}
