//! The admin token: `Authorization: Bearer <token>`, the token read from
//! `[admin].token_file`. The file is read again on every protected request
//! (the admin path is cold), so rotating it needs no restart; if it becomes
//! unreadable the last good token stays in force. Compared in constant time.
//! Without a token file, protected endpoints are open — which validation
//! allows only on a loopback admin address.

use std::path::PathBuf;

use arc_swap::ArcSwapOption;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::secrets::SecretBytes;

/// Shortest token accepted: a guessable token is no lock.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("admin.token_file {path}: {error}")]
    Unreadable { path: PathBuf, error: std::io::Error },
    #[error("admin.token_file {path}: the token is shorter than {MIN_TOKEN_LEN} bytes")]
    TooShort { path: PathBuf },
}

pub(super) struct Token {
    path: Option<PathBuf>,
    last: ArcSwapOption<SecretBytes>,
}

fn read(path: &PathBuf) -> Result<SecretBytes, TokenError> {
    let raw = std::fs::read(path).map_err(|error| TokenError::Unreadable {
        path: path.clone(),
        error,
    })?;
    let token = SecretBytes::new(raw.trim_ascii().to_vec());
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort { path: path.clone() });
    }
    Ok(token)
}

/// Equal in time independent of where the inputs differ (and of their lengths).
fn same(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

impl Token {
    pub fn load(path: Option<PathBuf>) -> Result<Token, TokenError> {
        let last = match &path {
            Some(p) => Some(std::sync::Arc::new(read(p)?)),
            None => None,
        };
        Ok(Token {
            path,
            last: ArcSwapOption::new(last),
        })
    }

    /// `Ok` when the request may use a protected endpoint; else why not
    /// (safe to show: never the token).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        match read(path) {
            Ok(t) => self.last.store(Some(std::sync::Arc::new(t))),
            Err(e) => tracing::warn!("{e}; the last good admin token stays in force"),
        }
        let Some(want) = self.last.load_full() else {
            return Err("no admin token is configured");
        };
        let given = headers
            .get(http::header::AUTHORIZATION)
            .ok_or("this endpoint needs Authorization: Bearer <admin token>")?;
        let given = given
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or("Authorization must be: Bearer <admin token>")?;
        if same(given.trim_ascii(), want.expose()) {
            Ok(())
        } else {
            Err("wrong admin token")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef-admin\n").unwrap();
        let t = Token::load(Some(path.clone())).unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(t.check(&with("Bearer 0123456789abcdef-admin")).is_ok());
        assert!(t.check(&with("Bearer 0123456789abcdef-admiN")).is_err());
        assert!(t.check(&with("Basic 0123456789abcdef-admin")).is_err());
        assert!(t.check(&HeaderMap::new()).is_err());
        // Rotated by rewriting the file: the new token works at once.
        std::fs::write(&path, "fedcba9876543210-admin").unwrap();
        assert!(t.check(&with("Bearer 0123456789abcdef-admin")).is_err());
        assert!(t.check(&with("Bearer fedcba9876543210-admin")).is_ok());
        // Gone: the last good one stays.
        std::fs::remove_file(&path).unwrap();
        assert!(t.check(&with("Bearer fedcba9876543210-admin")).is_ok());
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(Token::load(Some(path)), Err(TokenError::TooShort { .. })));
        assert!(Token::load(None).unwrap().check(&HeaderMap::new()).is_ok());
    }
}
