//! Process hygiene for `signgate run`: secrets out of `/proc/PID/environ`,
//! and no core dumps or same-user ptrace.
//!
//! **Environment secrets.** The kernel shows a process's *initial*
//! environment in `/proc/PID/environ` for its whole life; `unsetenv` (and
//! `std::env::remove_var`) only edit libc's copy, not what the kernel shows.
//! Only a new `execve` replaces it. So, before the runtime starts, `run`:
//!
//! 1. names the secret variables of the configuration ([`secret_vars`]): the
//!    `api_key_env` and `secret_env` of every `source = "env"` credential,
//!    and `VAULT_TOKEN` when a Vault credential uses token auth without
//!    `vault_token_file`;
//! 2. if any of them is set, writes their values into a pipe and re-executes
//!    its own binary (`/proc/self/exe`, same arguments, same PID) with those
//!    variables removed, the pipe as standard input and
//!    [`HANDOFF_VAR`]`=stdin` set ([`reexec_without_secrets`]);
//! 3. the new image reads the values back from standard input
//!    ([`adopt_handed_over`]), keeps them for the life of the process in
//!    zeroizing memory (`secrets::env::keep`), and puts `/dev/null` on
//!    standard input (the gateway never reads it).
//!
//! Credential loads and reloads read the kept values first
//! (`secrets::env::var`): a reload sees the values the process started
//! with. What a reload cannot do for env credentials: pick up a new value
//! (the environment of a running process never changes; restart), or read a
//! variable that was not named at start-up without it staying in
//! `/proc/PID/environ` (it was not taken out; restart to take it out).
//!
//! If the re-exec is impossible (no `/proc`, `execve` refused) the gateway
//! logs a warning and runs on with the variables where they were.
//! `signgate check --credentials` and `signgate sign` are short-lived and
//! read the environment directly.
//!
//! **Not dumpable.** `prctl(PR_SET_DUMPABLE, 0)` (through rustix): no core
//! dump can carry the secrets, other processes of the same user cannot
//! ptrace it or read its `/proc/PID/{environ,mem,maps…}` (those files become
//! root's). `execve` resets the flag, so it is set again in the new image.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::AsFd as _;

use zeroize::Zeroizing;

use crate::config::{Config, SecretSource, VaultAuth};
use crate::secrets::SecretBytes;

/// Set (to `stdin`) in the re-executed image: its standard input carries the
/// secret values taken out of the environment.
pub const HANDOFF_VAR: &str = "SIGNGATE_SECRETS_HANDOFF";
const HANDOFF_STDIN: &str = "stdin";
/// The largest hand-over (names and values together), well within the
/// smallest pipe buffer the kernel may grant after `F_SETPIPE_SZ`.
pub const MAX_HANDOFF_BYTES: usize = 64 * 1024;

/// No core dumps, no ptrace or `/proc/PID/*` reading by the same user.
/// (Linux; elsewhere a no-op.)
pub fn make_undumpable() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(io::Error::from);
    #[cfg(not(target_os = "linux"))]
    Ok(())
}

/// No transparent huge pages for this process (and the processes it
/// executes): on a host with THP `always`, each mostly empty malloc arena
/// and thread heap can be backed by 2 MiB pages, which would be most of an
/// idle gateway's memory; a proxy's small allocations gain nothing from
/// them. (Linux; a kernel without the setting, or elsewhere, leaves it as
/// it was.)
pub fn no_huge_pages() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return rustix::thread::disable_transparent_huge_pages(true).map_err(io::Error::from);
    #[cfg(not(target_os = "linux"))]
    Ok(())
}

/// Whether the process is dumpable (for tests and diagnostics).
pub fn is_dumpable() -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    return rustix::process::dumpable_behavior()
        .map(|d| d != rustix::process::DumpableBehavior::NotDumpable)
        .map_err(io::Error::from);
    #[cfg(not(target_os = "linux"))]
    Ok(true)
}

/// The environment variables of `config` that hold secrets.
pub fn secret_vars(config: &Config) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for spec in config.credentials.values() {
        match &spec.source {
            SecretSource::Env {
                api_key_env,
                secret_env,
            } => {
                out.insert(api_key_env.clone());
                out.insert(secret_env.clone());
            }
            SecretSource::Vault(v) if matches!(v.auth, VaultAuth::Token { token_file: None }) => {
                out.insert("VAULT_TOKEN".to_string());
            }
            SecretSource::VaultTransit(t) => {
                if let crate::config::ApiKeySource::Env(var) = &t.api_key {
                    out.insert(var.clone());
                }
                if matches!(t.auth, VaultAuth::Token { token_file: None }) {
                    out.insert("VAULT_TOKEN".to_string());
                }
            }
            _ => {}
        }
    }
    out
}

/// What happened at start-up, to be logged once logging is set up.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff {
    /// This is the original image and nothing was handed over.
    None,
    /// This is the re-executed image; these variables were handed over.
    Adopted(Vec<String>),
}

/// In the re-executed image: read the handed-over values from standard
/// input, keep them, and put `/dev/null` on standard input. Does nothing
/// without [`HANDOFF_VAR`]. Call before any other thread starts.
pub fn adopt_handed_over() -> Result<Handoff, String> {
    match std::env::var(HANDOFF_VAR) {
        Err(_) => return Ok(Handoff::None),
        Ok(v) if v == HANDOFF_STDIN => {}
        Ok(v) => return Err(format!("{HANDOFF_VAR}={v:?}: unknown hand-over; ignored")),
    }
    // Single-threaded here (before the runtime): editing the environment is sound.
    std::env::remove_var(HANDOFF_VAR);
    let payload = read_stdin_to_end();
    // The pipe is drained; the gateway reads nothing from standard input.
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"));
    let restored = null.and_then(|f| rustix::stdio::dup2_stdin(&f).map_err(|e| format!("replacing stdin: {e}")));
    let values = decode(&payload?)?;
    let names = values.keys().cloned().collect();
    crate::secrets::env::keep(values);
    restored?;
    Ok(Handoff::Adopted(names))
}

/// Read standard input (the hand-over pipe) without buffering copies.
fn read_stdin_to_end() -> Result<Zeroizing<Vec<u8>>, String> {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let mut buf = Zeroizing::new(vec![0u8; MAX_HANDOFF_BYTES + 1]);
    let mut len = 0;
    loop {
        match rustix::io::read(fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len > MAX_HANDOFF_BYTES {
                    return Err(format!("the secret hand-over exceeds {MAX_HANDOFF_BYTES} bytes"));
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("reading the secret hand-over: {e}")),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// `(u32 LE length, name) (u32 LE length, value)` per variable.
pub fn encode(values: &[(String, Vec<u8>)]) -> Zeroizing<Vec<u8>> {
    let size = values.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut out = Zeroizing::new(Vec::with_capacity(size));
    for (name, value) in values {
        for part in [name.as_bytes(), value.as_slice()] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The inverse of [`encode`]; an error for anything malformed.
pub fn decode(mut data: &[u8]) -> Result<BTreeMap<String, SecretBytes>, String> {
    fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, rest) = data.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (part, rest) = rest.split_at(len);
        *data = rest;
        Some(part)
    }
    let malformed = || "the secret hand-over is malformed; nothing was kept".to_string();
    let mut out = BTreeMap::new();
    while !data.is_empty() {
        let name = take(&mut data).ok_or_else(malformed)?;
        let value = take(&mut data).ok_or_else(malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| malformed())?;
        out.insert(name.to_string(), SecretBytes::new(value.to_vec()));
    }
    Ok(out)
}

/// Re-execute this binary without the secret variables of `config` (see the
/// module documentation). Returns `Ok(false)` when none is set (nothing to
/// do), and an error when the re-exec failed; on success it does not return.
/// Linux only (`/proc/self/exe`); elsewhere it does nothing.
#[cfg(not(target_os = "linux"))]
pub fn reexec_without_secrets(_config: &Config) -> Result<bool, String> {
    Ok(false)
}

/// See the other `reexec_without_secrets`.
#[cfg(target_os = "linux")]
pub fn reexec_without_secrets(config: &Config) -> Result<bool, String> {
    let present: Vec<(String, Vec<u8>)> = secret_vars(config)
        .into_iter()
        .filter_map(|name| {
            use std::os::unix::ffi::OsStringExt as _;
            std::env::var_os(&name).map(|v| (name, v.into_vec()))
        })
        .collect();
    if present.is_empty() {
        return Ok(false);
    }
    let payload = encode(&present);
    if payload.len() > MAX_HANDOFF_BYTES {
        return Err(format!(
            "the secret variables hold more than {MAX_HANDOFF_BYTES} bytes; left in the environment"
        ));
    }
    let (read_end, write_end) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // Never block on a pipe smaller than the payload: grow it, or give up.
    rustix::fs::fcntl_setfl(&write_end, rustix::fs::OFlags::NONBLOCK).map_err(|e| format!("pipe: {e}"))?;
    if payload.len() > 4096 {
        let _ = rustix::pipe::fcntl_setpipe_size(&write_end, payload.len());
    }
    let mut written = 0;
    while written < payload.len() {
        match rustix::io::write(&write_end, &payload[written..]) {
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("writing the secret hand-over: {e}")),
        }
    }
    drop(write_end);
    // exec() installs the pipe as stdin before execve: keep the real one to
    // put back should execve fail.
    let saved_stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("saving stdin: {e}"))?;
    let err = {
        use std::os::unix::process::CommandExt as _;
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        cmd.args(args).env(HANDOFF_VAR, HANDOFF_STDIN).stdin(read_end);
        for (name, _) in &present {
            cmd.env_remove(name);
        }
        cmd.exec()
    };
    // Still here: execve failed. Put stdin back (this drops the last handle on the pipe).
    let restored = rustix::stdio::dup2_stdin(&saved_stdin);
    Err(format!(
        "cannot re-execute /proc/self/exe ({err}){}; the secret variables stay in /proc/PID/environ",
        if restored.is_err() {
            "; stdin could not be restored"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_round_trips_and_refuses_garbage() {
        let values = vec![
            ("KP_KEY".to_string(), b"pk_live".to_vec()),
            ("KP_SECRET".to_string(), b"s\0\xffcret with bytes".to_vec()),
            ("EMPTY".to_string(), Vec::new()),
        ];
        let data = encode(&values);
        let back = decode(&data).unwrap();
        assert_eq!(back.len(), 3);
        for (name, value) in &values {
            assert_eq!(back[name].expose(), value.as_slice());
        }
        assert!(decode(&[]).unwrap().is_empty());
        // Cut anywhere but between two variables: refused whole.
        let mut boundaries = vec![0];
        for (n, v) in &values {
            boundaries.push(boundaries.last().unwrap() + 8 + n.len() + v.len());
        }
        for cut in 0..data.len() {
            let got = decode(&data[..cut]);
            assert_eq!(got.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
        assert!(decode(&[9, 0, 0, 0, b'a']).is_err());
        assert!(
            decode(&[1, 0, 0, 0, 0xff, 0, 0, 0, 0]).is_err(),
            "a name that is not UTF-8"
        );
        // The Debug of what is kept never shows a value.
        assert!(!format!("{back:?}").contains("pk_live"));
    }

    #[test]
    fn the_secret_variables_of_a_config() {
        let config = Config::from_toml_str(
            r#"
[access]
allow = ["127.0.0.0/8"]
[credentials.a]
source = "env"
api_key_env = "A_KEY"
secret_env = "A_SECRET"
[credentials.b]
source = "vault"
vault_addr = "https://vault.example:8200"
vault_path = "b"
[credentials.c]
source = "vault"
vault_addr = "https://vault.example:8200"
vault_path = "c"
vault_token_file = "/run/token"
[credentials.d]
source = "file"
path = "/run/d.json"
[credentials.e]
source = "vault_transit"
vault_addr = "https://vault.example:8200"
vault_token_file = "/run/token"
transit_key = "e"
api_key_env = "E_KEY"
"#,
        )
        .unwrap();
        assert_eq!(
            secret_vars(&config).into_iter().collect::<Vec<_>>(),
            ["A_KEY", "A_SECRET", "E_KEY", "VAULT_TOKEN"]
        );
        let config = Config::from_toml_str("[access]\nallow = [\"127.0.0.0/8\"]").unwrap();
        assert!(secret_vars(&config).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_can_be_made_undumpable() {
        // The test process itself: harmless, and shows the wrapper works.
        make_undumpable().unwrap();
        assert!(!is_dumpable().unwrap());
    }
}
