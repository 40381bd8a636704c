//! The `signgate` binary: parse the command line, set up logging, and hand
//! over to the library. Nothing else lives here: `run`'s start-up steps are
//! `signgate::hygiene`, `signgate::preflight` and `signgate::logging`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

/// `--version`: says so when test-only fault injection is compiled in.
/// The git revision follows the version (build.rs).
const VERSION: &str = if signgate::fault::ENABLED {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("SIGNGATE_BUILD_REVISION"),
        "; fault injection compiled in: test build)"
    )
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("SIGNGATE_BUILD_REVISION"), ")")
};

/// Exit code for a configuration that does not validate (EX_USAGE-style).
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "signgate",
    version = VERSION,
    about = "Signing egress gateway for payment-provider APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file [default: gateway.toml].
    #[arg(long, global = true, env = "SIGNGATE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default command).
    Run,
    /// Validate the configuration; exit 1 listing every error found.
    Check {
        /// Also try to load every credential (reports failures, never secret material).
        #[arg(long)]
        credentials: bool,
        /// Check the configuration alone, not the files it names (certificates,
        /// keys, token files, writable directories): for validating a deployment's
        /// config away from the host it runs on. `run` always checks the files.
        #[arg(long, conflicts_with = "credentials")]
        config_only: bool,
    },
    /// Print the canonical payload, the signed string and the signature of a body read from stdin.
    Sign(signgate::cli::SignArgs),
    /// Show what the gateway would send for one request (or its refusal), without sending it.
    Explain(signgate::cli::ExplainArgs),
    /// Run the whole loop locally: the gateway plus a provider stand-in that checks every signature.
    Demo,
    /// Make certificates: `certs dev` writes a development CA, server and client certificates.
    Certs(signgate::cli::CertsArgs),
    /// The webhook inbox: list events, re-queue failed ones.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// The duplicate and amount guards of a running gateway (through its admin API).
    Guard {
        #[command(subcommand)]
        command: GuardCommand,
    },
    /// The routes' kill switches of a running gateway (through its admin API).
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Print the running gateway's log filter, or replace it (through its admin API).
    LogLevel {
        /// A new filter, e.g. `info,signgate=debug` (`SIGNGATE_LOG` syntax); without it, print the current one.
        filter: Option<String>,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a shell completion script on stdout (e.g. `signgate completions bash > /etc/bash_completion.d/signgate`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout (e.g. `signgate man | gzip > /usr/share/man/man1/signgate.1.gz`).
    Man,
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// List stored events (all, or only those parked as failed).
    List {
        #[arg(long)]
        failed: bool,
    },
    /// Re-queue a failed event by id, or every failed event.
    Retry {
        /// Event id (from `webhooks list`).
        id: Option<u64>,
        #[arg(long, conflicts_with = "id")]
        all_failed: bool,
    },
}

#[derive(Subcommand)]
enum GuardCommand {
    /// Release a transaction reference the guard holds (every endpoint of
    /// the route), e.g. one whose first attempt's outcome is unknown once the
    /// provider's status API says it did not go through. Audited.
    Release {
        /// The route name.
        route: String,
        /// The reference as JSON text (`'"ORD-1"'`, `12345`); text that is not
        /// JSON is taken as a string (`ORD-1`).
        reference: String,
    },
    /// The amount guard's totals of the current UTC day, per route, caller
    /// and currency, with the caps.
    Status {
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Every configured route, enabled or disabled, with since when, by whom and why.
    List,
    /// Turn a route off: it answers 503 route_disabled and sends nothing to
    /// the provider until enabled again (on every instance with [fleet]).
    /// Survives restarts and reloads. Audited.
    Disable {
        /// The route name.
        name: String,
        /// Why (kept with the switch, shown by `route list`, audited).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Turn a disabled route back on. Audited.
    Enable {
        /// The route name.
        name: String,
        /// Why (audited).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain: `ok N records` (exit 0), the first bad line
    /// (exit 1), or gaps / an unchecked end (exit 3, see the flags).
    Verify {
        /// Log files, oldest first (e.g. signgate.jsonl.2 signgate.jsonl.1 signgate.jsonl).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Accept a first file that continues an older, absent one.
        #[arg(long)]
        continuation: bool,
        /// Accept gap records (records the writer could not write); they are still listed.
        #[arg(long)]
        allow_gaps: bool,
        /// Refuse recovered records (torn last lines moved aside at start).
        #[arg(long)]
        strict: bool,
        /// Accept a missing or unreadable FILE.head (the end of the log is then not checked).
        #[arg(long)]
        no_head: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(signgate::cli::DEFAULT_CONFIG));
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => serve(&config_path),
        Command::Check {
            credentials,
            config_only,
        } => tool(|rt| rt.block_on(signgate::cli::check(&config_path, credentials, config_only))),
        Command::Sign(args) => tool(|_| signgate::cli::sign(&args, cli.config.as_deref())),
        Command::Explain(args) => tool(|rt| rt.block_on(signgate::cli::explain(&config_path, &args))),
        Command::Demo => tool(|rt| rt.block_on(signgate::devtools::demo::run())),
        Command::Certs(args) => tool(|_| signgate::cli::certs(&args)),
        Command::Webhooks { command } => {
            let action = match command {
                WebhooksCommand::List { failed } => signgate::cli::WebhooksAction::List { failed },
                WebhooksCommand::Retry { id, all_failed } => {
                    if id.is_none() && !all_failed {
                        eprintln!("signgate webhooks retry: give an event id or --all-failed");
                        return ExitCode::from(2);
                    }
                    signgate::cli::WebhooksAction::Retry { id }
                }
            };
            tool(|rt| rt.block_on(signgate::cli::webhooks(&config_path, action)))
        }
        Command::Guard {
            command: GuardCommand::Release { route, reference },
        } => tool(|rt| rt.block_on(signgate::cli::guard_release(&config_path, &route, &reference))),
        Command::Guard {
            command: GuardCommand::Status { route },
        } => tool(|rt| rt.block_on(signgate::cli::guard_status(&config_path, route.as_deref()))),
        Command::Route { command } => match command {
            RouteCommand::List => tool(|rt| rt.block_on(signgate::cli::route_list(&config_path))),
            RouteCommand::Disable { name, reason } => tool(|rt| {
                rt.block_on(signgate::cli::route_switch(
                    &config_path,
                    &name,
                    true,
                    reason.as_deref(),
                ))
            }),
            RouteCommand::Enable { name, reason } => tool(|rt| {
                rt.block_on(signgate::cli::route_switch(
                    &config_path,
                    &name,
                    false,
                    reason.as_deref(),
                ))
            }),
        },
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    continuation,
                    allow_gaps,
                    strict,
                    no_head,
                },
        } => tool(|_| {
            signgate::cli::audit_verify(
                &files,
                signgate::cli::VerifyOptions {
                    continuation,
                    allow_gaps,
                    strict,
                    no_head,
                },
            )
        }),
        Command::LogLevel { filter } => {
            tool(|rt| rt.block_on(signgate::cli::log_level(&config_path, filter.as_deref())))
        }
        // Neither needs a configuration, logging or a runtime.
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
    }
}

/// `signgate completions SHELL`.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "signgate", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `signgate man`: the manual page of the command and its subcommands.
fn man() -> ExitCode {
    let cmd = Cli::command();
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd).title("SIGNGATE").render(&mut out) {
        eprintln!("signgate man: {e}");
        return ExitCode::FAILURE;
    }
    use std::io::Write as _;
    match std::io::stdout().write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signgate man: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The commands other than `run`: text logs on stderr, and a runtime.
fn tool(f: impl FnOnce(&tokio::runtime::Runtime) -> ExitCode) -> ExitCode {
    signgate::logging::init(signgate::config::LogFormat::Text);
    match runtime() {
        Ok(rt) => f(&rt),
        Err(code) => code,
    }
}

/// `signgate run`. The order matters: no core dumps before any secret is
/// read; the configuration (errors on plain stderr, exit 64) before logging,
/// whose format it sets; preflight (exit 64); the secrets out of the
/// environment (a re-exec of this binary, see `signgate::hygiene`) before
/// the runtime starts a thread; then serve (a failure there is exit 1).
fn serve(config_path: &Path) -> ExitCode {
    let undumpable = signgate::hygiene::make_undumpable();
    // Before the runtime's threads allocate their heaps (best effort: the
    // gateway works the same with huge pages, it only uses more memory).
    let _ = signgate::hygiene::no_huge_pages();
    let handoff = signgate::hygiene::adopt_handed_over();
    let config = match signgate::Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("signgate: {}: {errors}", config_path.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Err(errors) = signgate::preflight::preflight(&config) {
        eprint!("signgate: {}: {errors}", config_path.display());
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let reexec = match &handoff {
        Ok(signgate::hygiene::Handoff::None) => signgate::hygiene::reexec_without_secrets(&config),
        _ => Ok(false),
    };
    let logging = signgate::logging::init(config.log.format);
    if let Err(e) = undumpable {
        tracing::warn!("cannot mark the process non-dumpable (core dumps and ptrace stay possible): {e}");
    }
    match handoff {
        Ok(signgate::hygiene::Handoff::Adopted(names)) => {
            tracing::info!(variables = %names.join(","), "secret environment variables taken out of the environment")
        }
        Ok(signgate::hygiene::Handoff::None) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    if let Err(e) = reexec {
        tracing::warn!("{e}");
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let options = signgate::Options {
        config_path: Some(config_path.to_path_buf()),
        log_filter: Some(logging.filter().clone()),
    };
    match runtime.block_on(signgate::run(config, options, signgate::cli::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The tokio runtime; `Err` is the exit code to leave with.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // SIGNGATE_WORKER_THREADS=N pins the number of runtime worker threads
    // (default: one per core). The benchmark uses it to give signgate the
    // same number of workers as nginx's `worker_processes`.
    match worker_threads() {
        Ok(Some(n)) => {
            builder.worker_threads(n);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("signgate: {e}");
            return Err(ExitCode::from(EXIT_BAD_CONFIG));
        }
    }
    builder.build().map_err(|e| {
        eprintln!("signgate: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `SIGNGATE_WORKER_THREADS`: unset or empty = tokio's default (one per core).
fn worker_threads() -> Result<Option<usize>, String> {
    match std::env::var("SIGNGATE_WORKER_THREADS") {
        Err(_) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!(
                "SIGNGATE_WORKER_THREADS={v:?}: expected a whole number of worker threads, at least 1"
            )),
        },
    }
}
