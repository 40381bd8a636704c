//! Route table: longest `match_prefix` wins, matched on a path-segment
//! boundary (`/kwikpaisa` matches `/kwikpaisa` and `/kwikpaisa/...`, never
//! `/kwikpaisax`). A route fixes the upstream scheme and host; the request can
//! only choose the path below the upstream's base path, so the gateway is not
//! an open proxy.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, Uri};

use crate::allowlist::Allowlist;
use crate::config::RouteConfig;
use crate::dedup::{DuplicateStore, MemoryStore};
use crate::ratelimit::RouteLimit;
use crate::secrets::CredentialSlot;
use crate::sign::Scheme;

/// A route with everything it needs resolved at config time.
pub struct Route {
    pub config: RouteConfig,
    pub scheme: Arc<Scheme>,
    pub credential: Arc<CredentialSlot>,
    pub allow: Option<Allowlist>,
    /// `Allow` header value for 405 answers.
    pub allow_methods: String,
    pub limit: Option<RouteLimit>,
    /// The duplicate guard, for routes with `duplicate_key`.
    pub duplicates: Option<Arc<dyn DuplicateStore>>,
    /// Bounds the route's concurrent upstream calls (`max_inflight`).
    pub inflight: Arc<tokio::sync::Semaphore>,
}

impl Route {
    /// `duplicates` carries the guard's state over from the previous
    /// configuration (a reload must not forget in-flight payouts).
    pub fn new(
        config: RouteConfig,
        scheme: Arc<Scheme>,
        credential: Arc<CredentialSlot>,
        duplicates: Option<Arc<dyn DuplicateStore>>,
    ) -> Route {
        let allow = config.allow.as_deref().map(Allowlist::new);
        let allow_methods = config.methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let duplicates = match (&config.duplicate_key, duplicates) {
            (None, _) => None,
            (Some(_), Some(kept)) => Some(kept),
            (Some(_), None) => Some(
                Arc::new(MemoryStore::new(config.duplicate_window, config.duplicate_capacity))
                    as Arc<dyn DuplicateStore>,
            ),
        };
        Route {
            inflight: Arc::new(tokio::sync::Semaphore::new(config.max_inflight)),
            duplicates,
            limit: config.limit.map(RouteLimit::new),
            config,
            scheme,
            credential,
            allow,
            allow_methods,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn allows_method(&self, m: &Method) -> bool {
        self.config.methods.contains(m)
    }

    fn matches(&self, path: &str) -> bool {
        let p = self.config.match_prefix.as_str();
        match path.strip_prefix(p) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || p.is_empty(),
            None => false,
        }
    }

    /// The path sent upstream: base path + (request path, prefix stripped if configured).
    pub fn upstream_path(&self, path: &str) -> String {
        let rest = if self.config.strip_prefix {
            path.strip_prefix(self.config.match_prefix.as_str()).unwrap_or(path)
        } else {
            path
        };
        let base = self.config.upstream.base_path.as_str();
        let mut out = String::with_capacity(base.len() + rest.len() + 1);
        out.push_str(base);
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        out
    }

    /// Absolute upstream URI for `path` (already prefix-stripped) and query.
    pub fn upstream_uri(&self, upstream_path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let pq = match query {
            Some(q) => PathAndQuery::try_from(format!("{upstream_path}?{q}"))?,
            None => PathAndQuery::try_from(upstream_path)?,
        };
        Uri::builder()
            .scheme(self.config.upstream.scheme.clone())
            .authority(self.config.upstream.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

pub struct Router {
    /// Longest prefix first.
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(mut routes: Vec<Arc<Route>>) -> Router {
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.match_prefix.len()));
        Router { routes }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name() == name)
    }

    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(path))
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

/// Paths with dot segments, empty segments, backslashes or percent-encoded
/// dots/separators are refused: they are how a request escapes a base path
/// on a server that normalizes differently from us.
pub fn path_is_safe(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') || path.contains("//") {
        return false;
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return false;
    }
    let b = path.as_bytes();
    !b.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c') | (b'0', b'0')
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        for (p, ok) in [
            ("/kwikpaisa/api/v3/pg/order/create", true),
            ("/", true),
            ("/a/../b", false),
            ("/a/./b", false),
            ("/a/%2e%2e/b", false),
            ("/a/%2E%2E/b", false),
            ("/a%2fb", false),
            ("/a%5Cb", false),
            ("/a//b", false),
            ("/a\\b", false),
            ("/a/%00", false),
            ("/a/b%20c", true),
        ] {
            assert_eq!(path_is_safe(p), ok, "{p}");
        }
    }
}
