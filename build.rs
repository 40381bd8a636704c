//! Build information for `signgate_build_info{revision}` and `--version`:
//! `SIGNGATE_BUILD_REVISION` is `SIGNGATE_GIT_REVISION` when set (a build
//! without `.git`, e.g. a container build: pass it as a build argument),
//! else `git rev-parse --short HEAD`, else `unknown`. Cargo reruns this when
//! the override changes or HEAD moves (a commit, a checkout), worktrees
//! included.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A label-safe revision: 1-64 of `[0-9A-Za-z._-]`, else `None`.
fn clean(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        .then(|| s.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SIGNGATE_GIT_REVISION");
    let overridden = std::env::var("SIGNGATE_GIT_REVISION").ok().and_then(|v| clean(&v));
    let revision = overridden
        .clone()
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]).and_then(|v| clean(&v)));
    if overridden.is_none() {
        // HEAD itself (a checkout), the branch it points to (a commit) and
        // packed refs; `--git-path` resolves them in a worktree too.
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(branch);
        }
        for name in watch {
            if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
                let path = PathBuf::from(path);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    }
    // Without any rerun-if-changed line cargo would rerun on every source change.
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rustc-env=SIGNGATE_BUILD_REVISION={}",
        revision.unwrap_or_else(|| "unknown".to_string())
    );
}
