//! `signgate certs dev`: a throw-away PKI on disk for trying TLS and mTLS
//! locally: a CA, a server certificate for the listener and two client
//! certificates with different identities. Private keys are written with mode
//! 0600 and existing files are never overwritten without `--force`. Not for
//! production trust: see certs/README.md for real certificates.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::devtools::pki::{DevCa, Issued};

/// Names the server certificate always carries, so `https://localhost` and
/// `https://127.0.0.1` work out of the box.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Identity (SAN URI) of `client-payout.pem` unless `--client-identity` is given.
pub const DEFAULT_CLIENT_IDENTITY: &str = "spiffe://signgate.dev/payout-svc";
/// Identity of `client-other.pem`: a valid certificate that a route's
/// `allow_identities` can tell apart from the payout service.
pub const OTHER_CLIENT_IDENTITY: &str = "spiffe://signgate.dev/other-svc";

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Write a development CA, a server certificate and two client certificates.
    Dev(DevArgs),
}

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Directory to write into (created if missing; git ignores certs/dev/).
    #[arg(long, default_value = "certs/dev")]
    pub out: PathBuf,
    /// Extra DNS name or IP address for the server certificate (repeatable);
    /// localhost, 127.0.0.1 and ::1 are always included.
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Identity of client-payout.pem: a SAN URI (spiffe://…) or a DNS name
    /// (repeatable) [default: spiffe://signgate.dev/payout-svc].
    #[arg(long = "client-identity", value_name = "ID")]
    pub client_identities: Vec<String>,
    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
}

/// One file to write: its name in the output directory, contents, and
/// whether it is a private key (mode 0600).
struct Output {
    name: &'static str,
    contents: String,
    private: bool,
}

/// `signgate certs …`: exit 0 when every file was written, 1 otherwise.
pub fn certs(args: &CertsArgs) -> ExitCode {
    let CertsCommand::Dev(dev) = &args.command;
    match dev_certs(dev) {
        Ok(written) => {
            report(&dev.out, &written);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("signgate certs dev: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Generate everything in memory first, refuse if a file exists (unless
/// forced), then write. Returns the names written.
fn dev_certs(args: &DevArgs) -> Result<Vec<&'static str>, String> {
    let mut server_names: Vec<&str> = DEFAULT_SERVER_NAMES.to_vec();
    for n in &args.server_names {
        if !server_names.contains(&n.as_str()) {
            server_names.push(n);
        }
    }
    let payout: Vec<&str> = if args.client_identities.is_empty() {
        vec![DEFAULT_CLIENT_IDENTITY]
    } else {
        args.client_identities.iter().map(String::as_str).collect()
    };
    fn pki_err(what: &'static str) -> impl Fn(rcgen::Error) -> String {
        move |e| format!("cannot make the {what}: {e}")
    }
    let ca = DevCa::new("signgate dev CA (not for production)").map_err(pki_err("CA"))?;
    let server = ca.server(&server_names).map_err(pki_err("server certificate"))?;
    let client = ca.client(&payout).map_err(pki_err("client certificate"))?;
    let other = ca
        .client(&[OTHER_CLIENT_IDENTITY])
        .map_err(pki_err("second client certificate"))?;

    let mut outputs = vec![
        Output {
            name: "ca.pem",
            contents: ca.cert_pem(),
            private: false,
        },
        Output {
            name: "ca-key.pem",
            contents: ca.key_pem().to_string(),
            private: true,
        },
    ];
    push_pair(&mut outputs, "gateway.pem", "gateway-key.pem", server);
    push_pair(&mut outputs, "client-payout.pem", "client-payout-key.pem", client);
    push_pair(&mut outputs, "client-other.pem", "client-other-key.pem", other);

    std::fs::create_dir_all(&args.out).map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    if !args.force {
        let existing: Vec<String> = outputs
            .iter()
            .map(|o| args.out.join(o.name))
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(format!(
                "refusing to overwrite {} (use --force to replace them)",
                existing.join(", ")
            ));
        }
    }
    for o in &outputs {
        write_file(&args.out.join(o.name), &o.contents, o.private, args.force)?;
    }
    Ok(outputs.iter().map(|o| o.name).collect())
}

fn push_pair(outputs: &mut Vec<Output>, cert: &'static str, key: &'static str, issued: Issued) {
    outputs.push(Output {
        name: cert,
        contents: issued.cert_pem,
        private: false,
    });
    outputs.push(Output {
        name: key,
        contents: issued.key_pem,
        private: true,
    });
}

/// Create `path` with its final mode from the start (a key is never briefly
/// world-readable). With `force` an existing file is removed first, so an
/// old file's looser mode is not inherited.
fn write_file(path: &Path, contents: &str, private: bool, force: bool) -> Result<(), String> {
    let shown = path.display();
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot replace {shown}: {e}")),
        }
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!("refusing to overwrite {shown} (use --force to replace it)"),
        _ => format!("cannot create {shown}: {e}"),
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {shown}: {e}"))
}

fn report(dir: &Path, written: &[&str]) {
    let d = dir.display();
    println!("wrote {} files to {d} (private keys with mode 0600):", written.len());
    for name in written {
        println!("  {name}");
    }
    println!(
        "\nTo serve HTTPS with client certificates (mTLS), in gateway.toml:\n  \
         [listener]\n  \
         tls_cert  = \"{d}/gateway.pem\"\n  \
         tls_key   = \"{d}/gateway-key.pem\"\n  \
         client_ca = \"{d}/ca.pem\"\n\
         \nThen call it as the payout service:\n  \
         curl --cacert {d}/ca.pem --cert {d}/client-payout.pem --key {d}/client-payout-key.pem https://localhost:8080/\n\
         \nThese are development certificates: never trust ca.pem outside your machine."
    );
}
