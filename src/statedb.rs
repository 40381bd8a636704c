//! The embedded database under `[state].dir` (`signgate.redb`, redb): the
//! durable local state the webhook inbox (`webhook::store`), the route
//! switches (`switch`), the duplicate guard's claims (`dedup::durable`),
//! the amount guard's day totals (`amount_guard`) and the reflection
//! memory (`reflect`) keep in tables of their own. One
//! process opens it once (redb locks the file) and hands the same
//! [`Database`] to all of them.
//!
//! The directory is created owner-only (0700) and the file is always
//! owner-only (0600), whatever the umask: it holds providers' event bodies.

use std::path::Path;
use std::sync::Arc;

use redb::Database;

/// The database file in `[state].dir`.
pub const DB_FILE: &str = "signgate.redb";

/// Wall-clock Unix milliseconds, the time base of every record kept in the
/// state database (it must survive a restart, so not `Instant`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// `create_dir_all` whose newly made directories are 0700 regardless of the
/// umask; an existing directory is left as the operator made it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // The umask may have taken bits away (never added any): set it exactly.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Create `path` as an empty 0600 file if it does not exist, and take group
/// and other access away from an existing one (a file made by an older
/// version under umask 022).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = f.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        // Best effort: a file this process may write but not chmod still serves.
        if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(mode & 0o700)) {
            tracing::warn!(path = %path.display(), error = %e, "the state database is readable by others and could not be made owner-only");
        }
    }
    Ok(())
}

/// Whether `config` needs the database at start-up: for the webhook
/// inbox, or, when there is no `[fleet]` (whose Redis keeps them), for the
/// duplicate guard's claims of a route with `duplicate_key` or the amount
/// guard's day totals of a route with `amount_guard`.
pub fn needed(config: &crate::config::Config) -> bool {
    !config.webhooks.is_empty()
        || (config.fleet.is_none() && config.routes.iter().any(|r| r.duplicate_key.is_some()))
        || config.needs_amount_store()
}

/// Whether `dir` already holds the database file (or something in its
/// place, which opening it then reports).
pub fn exists(dir: &Path) -> bool {
    dir.join(DB_FILE).symlink_metadata().is_ok()
}

/// Open (or create) the database in `dir`. The error names the path and
/// the cause.
pub fn open(dir: &Path) -> Result<Arc<Database>, String> {
    create_private_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(DB_FILE);
    create_private_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let db = Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Arc::new(db))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        drop(open(&state).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(DB_FILE)), 0o600);
        assert!(exists(&state));
        // A file left readable by an older version is tightened.
        std::fs::set_permissions(state.join(DB_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open(&state).unwrap());
        assert_eq!(mode(&state.join(DB_FILE)), 0o600);
        // An existing directory is left as the operator made it.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        drop(open(&state).unwrap());
        assert_eq!(mode(&state), 0o750);
        assert!(!exists(&dir.path().join("elsewhere")));
    }
}
