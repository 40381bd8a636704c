//! The command-line tools around the gateway: `check` (validate a config and
//! optionally load its credentials), `sign` (show exactly what is signed, the
//! tool for debugging a signature mismatch), `certs dev` (a development PKI
//! on disk, in `cli/certs.rs`) and the shutdown signal.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use bytes::Bytes;

use crate::config::Config;
use crate::secrets::{CredentialStore, SecretBytes};
use crate::sign::{self, MessageInput, Scheme};

mod certs;
pub use certs::{certs, CertsArgs, CertsCommand, DevArgs};

pub const DEFAULT_CONFIG: &str = "gateway.toml";

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `signgate check`: exit 0 when valid, 1 listing every error otherwise.
/// Valid means what `run` accepts: the validation, then the preflight of
/// every file and directory it would open (`preflight`).
pub async fn check(path: &Path, credentials: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{}: {errors}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(errors) = crate::preflight::preflight(&config) {
        eprint!("{}: {errors}", path.display());
        return ExitCode::FAILURE;
    }
    println!(
        "{}: ok ({} route{}, {} credential{}, {} webhook{})",
        path.display(),
        config.routes.len(),
        plural(config.routes.len()),
        config.credentials.len(),
        plural(config.credentials.len()),
        config.webhooks.len(),
        plural(config.webhooks.len()),
    );
    if !credentials {
        return ExitCode::SUCCESS;
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let store = CredentialStore::start(&config.credentials, &cancel).await;
    cancel.cancel();
    let mut failed = false;
    for slot in store.slots() {
        match slot.get() {
            Ok(c) => println!(
                "credential {}: loaded (version {})",
                slot.name(),
                c.version().map_or("-".into(), |v| v.to_string())
            ),
            Err(why) => {
                failed = true;
                println!("credential {}: NOT loaded: {why}", slot.name());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// Scheme: the built-in `kwikpaisa`, or a [scheme.NAME] from the config.
    #[arg(long, default_value = sign::KWIKPAISA)]
    pub scheme: String,
    /// Timestamp to sign with (default: now, in the scheme's unit).
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// Environment variable holding the secret key.
    #[arg(long, default_value = "KWIKPAISA_SECRET_KEY")]
    pub secret_env: String,
    /// Environment variable holding the API key (only needed if the scheme signs it).
    #[arg(long, default_value = "KWIKPAISA_API_KEY")]
    pub api_key_env: String,
    /// Override the scheme's `escape_unicode` (true: non-ASCII as \uXXXX).
    #[arg(long)]
    pub escape_unicode: Option<bool>,
    /// Method, path and query, for schemes whose template uses them.
    #[arg(long, default_value = "POST")]
    pub method: String,
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long, default_value = "")]
    pub query: String,
}

/// `signgate sign`: read a body on stdin and print what the gateway would sign.
pub fn sign(args: &SignArgs, config: Option<&Path>) -> ExitCode {
    match sign_inner(args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signgate sign: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sign_inner(args: &SignArgs, config: Option<&Path>) -> Result<(), String> {
    let mut scheme = resolve_scheme(&args.scheme, config)?;
    if let Some(e) = args.escape_unicode {
        scheme.canonical.escape_unicode = e;
    }
    let secret = std::env::var(&args.secret_env).map(SecretBytes::from).map_err(|_| {
        format!(
            "set {} to the secret key (or name another variable with --secret-env)",
            args.secret_env
        )
    })?;
    if secret.len() < crate::secrets::MIN_SECRET_LEN {
        eprintln!(
            "note: the secret is shorter than {} bytes; the gateway would refuse to load it",
            crate::secrets::MIN_SECRET_LEN
        );
    }
    let api_key = std::env::var(&args.api_key_env).unwrap_or_default();
    if scheme.message.contains(&sign::Part::ApiKey) && api_key.is_empty() {
        return Err(format!(
            "scheme {} signs the API key: set {}",
            scheme.name, args.api_key_env
        ));
    }
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the body from stdin: {e}"))?;
    let body = crate::proxy::prepare_body(&scheme, Bytes::from(raw)).map_err(|e| e.message())?;
    let ts = match args.timestamp {
        Some(t) => sign::Timestamp::from_u64(t),
        None => scheme.timestamp(std::time::SystemTime::now()),
    };
    let input = MessageInput {
        api_key: api_key.as_bytes(),
        timestamp: ts.as_str(),
        method: &args.method,
        path: &args.path,
        query: &args.query,
        body: &body,
    };
    let keyed = sign::keyed_mac(secret.expose());
    let sig = scheme.sign(&keyed, &input);
    let message = scheme.message_bytes(&input);
    let mut out = std::io::stdout().lock();
    let w = |out: &mut std::io::StdoutLock<'_>, label: &str, v: &[u8]| -> std::io::Result<()> {
        out.write_all(label.as_bytes())?;
        out.write_all(v)?;
        out.write_all(b"\n")
    };
    (|| -> std::io::Result<()> {
        w(&mut out, "scheme:            ", scheme.name.as_bytes())?;
        w(&mut out, "canonical payload: ", &body)?;
        w(&mut out, "timestamp:         ", ts.as_str().as_bytes())?;
        w(&mut out, "signed string:     ", &message)?;
        w(&mut out, "signature:         ", sig.as_bytes())?;
        w(
            &mut out,
            "headers:           ",
            format!(
                "{}: <{}>, {}: {}, {}: {}",
                scheme.api_key_header,
                args.api_key_env,
                scheme.timestamp_header,
                ts.as_str(),
                scheme.signature_header,
                sig.as_str()
            )
            .as_bytes(),
        )
    })()
    .map_err(|e| format!("writing to stdout: {e}"))
}

fn resolve_scheme(name: &str, config: Option<&Path>) -> Result<Scheme, String> {
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    let explicit = config.is_some();
    if name == sign::KWIKPAISA && !explicit && !path.exists() {
        return Ok(Scheme::kwikpaisa());
    }
    match Config::load(path) {
        Ok(c) => c
            .schemes
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no scheme {name:?} in {} (built-in: kwikpaisa)", path.display())),
        Err(errors) if name == sign::KWIKPAISA && !explicit => {
            eprintln!(
                "note: {} does not validate; using the built-in kwikpaisa defaults\n{errors}",
                path.display()
            );
            Ok(Scheme::kwikpaisa())
        }
        Err(errors) => Err(format!("{}: {errors}", path.display())),
    }
}

/// `signgate audit verify`: exit 0 with `ok N records`, or 1 naming the first bad line.
pub fn audit_verify(files: &[std::path::PathBuf], continuation: bool) -> ExitCode {
    match crate::audit::verify(files, continuation) {
        Ok(crate::audit::Verdict::Ok { records }) => {
            println!("ok {records} records");
            ExitCode::SUCCESS
        }
        Ok(crate::audit::Verdict::Broken { file, line, why }) => {
            println!("{}: line {line}: {why}", file.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("signgate audit verify: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `signgate webhooks` should do.
pub enum WebhooksAction {
    List {
        failed: bool,
    },
    /// `None`: every failed event.
    Retry {
        id: Option<u64>,
    },
}

/// `signgate webhooks list|retry`: through the running gateway's admin
/// listener when it answers (the inbox is locked by the running process),
/// else directly on the inbox under `[state].dir`.
pub async fn webhooks(path: &Path, action: WebhooksAction) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{}: {errors}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let via_admin = match config.admin.addr {
        Some(addr) => webhooks_via_admin(addr, &action).await,
        None => None,
    };
    let result = match via_admin {
        Some(r) => r,
        None => webhooks_direct(&config.state.dir, &action),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("signgate webhooks: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render_events(events: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&format!(
            "{}\t{}\t{}\tattempts={}\t{}\t{}\n",
            e["id"],
            e["webhook"].as_str().unwrap_or("-"),
            e["state"].as_str().unwrap_or("-"),
            e["attempts"],
            e["key"].as_str().unwrap_or("-"),
            e["last_error"].as_str().unwrap_or(""),
        ));
    }
    if events.is_empty() {
        out.push_str("no events\n");
    }
    out
}

/// `None` when no gateway answers on the admin address.
async fn webhooks_via_admin(addr: std::net::SocketAddr, action: &WebhooksAction) -> Option<Result<String, String>> {
    use http_body_util::{BodyExt, Full};
    let (method, path) = match action {
        WebhooksAction::List { failed } => ("GET", format!("/webhooks{}", if *failed { "?failed=true" } else { "" })),
        WebhooksAction::Retry { id: Some(id) } => ("POST", format!("/webhooks/retry?id={id}")),
        WebhooksAction::Retry { id: None } => ("POST", "/webhooks/retry?all_failed=true".to_string()),
    };
    let stream = tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Some(Err(format!("admin listener at {addr}: {e}"))),
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Some(if !status.is_success() {
        Err(format!(
            "admin listener answered {status}: {}",
            String::from_utf8_lossy(&body)
        ))
    } else if let Some(events) = v["events"].as_array() {
        Ok(render_events(events))
    } else {
        Ok(format!("requeued {}\n", v["requeued"]))
    })
}

fn webhooks_direct(dir: &Path, action: &WebhooksAction) -> Result<String, String> {
    let store = crate::webhook::store::Store::open(dir).map_err(|e| e.to_string())?;
    match action {
        WebhooksAction::List { failed } => {
            let events = store.list(*failed).map_err(|e| e.to_string())?;
            let rows: Vec<serde_json::Value> = events.iter().map(crate::webhook::store::summary).collect();
            Ok(render_events(&rows))
        }
        WebhooksAction::Retry { id } => {
            let n = store.retry(*id).map_err(|e| e.to_string())?;
            Ok(format!("requeued {n} (delivered when the gateway runs)\n"))
        }
    }
}
