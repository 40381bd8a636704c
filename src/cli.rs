//! The command-line tools around the gateway: `check` (validate a config and
//! optionally load its credentials), `sign` (show exactly what is signed, the
//! tool for debugging a signature mismatch), `explain` (what the gateway
//! would send for one request, in `cli/explain.rs`), `certs dev` (a development PKI
//! on disk, in `cli/certs.rs`), the admin API clients (`webhooks`, `guard`,
//! `log-level`, `route`, in `cli/admin.rs`) and the shutdown signal.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use bytes::Bytes;

use crate::config::Config;
use crate::secrets::{CredentialStore, SecretBytes};
use crate::sign::{self, MessageInput, Scheme};

mod admin;
mod certs;
mod explain;
pub use admin::{guard_release, guard_status, log_level, route_list, route_switch, webhooks, WebhooksAction};
pub use certs::{certs, CertsArgs, CertsCommand, DevArgs};
pub use explain::{explain, ExplainArgs};

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
pub async fn check(path: &Path, credentials: bool, config_only: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{}: {errors}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if !config_only {
        if let Err(errors) = crate::preflight::preflight(&config) {
            eprint!("{}: {errors}", path.display());
            return ExitCode::FAILURE;
        }
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
    for w in config.guard_bypasses() {
        println!("warning: {w}");
    }
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
                "credential {}: loaded (version {}{})",
                slot.name(),
                c.version().map_or("-".into(), |v| v.to_string()),
                c.transit()
                    .map(|t| format!("; signs in Vault Transit: {}", t.describe()))
                    .unwrap_or_default()
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
    let body = crate::sign::prepare_body(&scheme, Bytes::from(raw))
        .map_err(|e| format!("request body is not valid JSON at byte {}: {}", e.offset, e.reason))?;
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

/// How `signgate audit verify` judges what it finds besides a broken chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// The first file continues an older one that is not given.
    pub continuation: bool,
    /// Gap records do not fail the check (they are still listed).
    pub allow_gaps: bool,
    /// Recovered (torn, moved-aside) lines fail the check.
    pub strict: bool,
    /// A missing or unreadable head file does not fail the check.
    pub no_head: bool,
}

/// Exit status of `audit verify` when the chain holds but is not complete
/// (a gap, no head file, a recovered line with `--strict`, an unfinished
/// last line). 1 is a broken chain or an unreadable file; 2 a usage error.
pub const VERIFY_INCOMPLETE: u8 = 3;

/// `signgate audit verify`: exit 0 with `ok N records`, 1 naming the first
/// bad line, or 3 when the chain holds but is incomplete. Every gap,
/// recovery and head finding is printed on its own line before the verdict;
/// the verdict is plain `ok N records` only for a complete chain.
pub fn audit_verify(files: &[std::path::PathBuf], opts: VerifyOptions) -> ExitCode {
    use crate::audit::{HeadCheck, TornFile, Verdict};
    let report = match crate::audit::verify(files, opts.continuation) {
        Ok(Verdict::Ok(report)) => report,
        Ok(Verdict::Broken { file, line, why }) => {
            println!("{}: line {line}: {why}", file.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("signgate audit verify: {e}");
            return ExitCode::FAILURE;
        }
    };
    for g in &report.gaps {
        println!(
            "{}: line {}: gap: seq {}-{} lost ({} records): {}",
            g.file.display(),
            g.line,
            g.lost_from,
            g.lost_to,
            g.lost_to - g.lost_from + 1,
            g.reason
        );
    }
    for r in &report.recoveries {
        let found = match r.torn_found {
            TornFile::Matches => "it is there and matches",
            TornFile::Differs => "it is there but DIFFERS from what was recorded",
            TornFile::Missing => "it is not beside the log",
        };
        println!(
            "{}: line {}: recovered: a torn last line ({} bytes, sha256 {}) was moved to {} ({found})",
            r.file.display(),
            r.line,
            r.torn_bytes,
            r.torn_sha256,
            r.torn_file
        );
    }
    let head = files.last().map(|f| {
        let mut s = f.as_os_str().to_owned();
        s.push(".head");
        std::path::PathBuf::from(s).display().to_string()
    });
    let head = head.unwrap_or_default();
    match &report.head {
        HeadCheck::Pinned => {}
        HeadCheck::Behind { head_seq, after } => println!(
            "{head}: pins seq {head_seq}; the {after} record(s) after it are chained but their end is not pinned \
             (the head is refreshed about once a second: a running gateway, or one that crashed)"
        ),
        HeadCheck::Missing => println!(
            "{head}: missing: the end of the log cannot be checked (an edited or removed last record would go unnoticed)"
        ),
        HeadCheck::Unreadable(why) => println!("{head}: unreadable ({why}): the end of the log cannot be checked"),
    }
    if let Some(u) = &report.unterminated {
        println!(
            "{}: line {}: no newline at the end ({} bytes): a write in progress, or a line torn by a crash \
             (the gateway moves a torn line aside when it starts)",
            u.file.display(),
            u.line,
            u.bytes
        );
    }
    // What keeps the verdict from a plain "ok", and whether it is accepted.
    let mut notes: Vec<(String, Option<&str>)> = Vec::new();
    if !report.gaps.is_empty() {
        notes.push((
            format!("{} gap(s), {} record(s) lost", report.gaps.len(), report.lost()),
            (!opts.allow_gaps).then_some("--allow-gaps accepts gaps"),
        ));
    }
    if !report.recoveries.is_empty() {
        notes.push((
            format!("{} torn line(s) recovered", report.recoveries.len()),
            opts.strict.then_some("--strict refuses recovered lines"),
        ));
    }
    if matches!(report.head, HeadCheck::Missing | HeadCheck::Unreadable(_)) {
        notes.push((
            "the end is not checked (no head file)".into(),
            (!opts.no_head).then_some("--no-head accepts that"),
        ));
    }
    if report.unterminated.is_some() {
        notes.push((
            "the last line is unfinished".into(),
            Some("run again once it is complete"),
        ));
    }
    let records = report.records;
    if notes.is_empty() {
        println!("ok {records} records");
        return ExitCode::SUCCESS;
    }
    let what = notes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join("; ");
    let refused: Vec<&str> = notes.iter().filter_map(|(_, r)| *r).collect();
    if refused.is_empty() {
        println!("ok {records} records, with findings: {what}");
        ExitCode::SUCCESS
    } else {
        println!("incomplete: {records} records: {what} ({})", refused.join("; "));
        ExitCode::from(VERIFY_INCOMPLETE)
    }
}
