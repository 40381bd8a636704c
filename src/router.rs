//! Route table: longest `match_prefix` wins, matched on a path-segment
//! boundary (`/kwikpaisa` matches `/kwikpaisa` and `/kwikpaisa/...`, never
//! `/kwikpaisax`). A route fixes the upstream scheme and host; the request can
//! only choose the path below the upstream's base path, so the gateway is not
//! an open proxy.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, Uri};

use crate::allowlist::Allowlist;
use crate::amount_guard::AmountGuard;
use crate::config::{Caller, RouteConfig};
use crate::dedup::{FleetGuard, Guard, MemoryStore};
use crate::fleet::Fleet;
use crate::identity::Identity;
use crate::ratelimit::{Cooldown, RouteLimit};
use crate::secrets::CredentialSlot;
use crate::sign::Scheme;

/// A route with everything it needs resolved at config time.
pub struct Route {
    pub config: RouteConfig,
    pub scheme: Arc<Scheme>,
    /// Which credential signs: one, or one per caller (`credential_map`).
    pub credential: RouteSlots,
    pub allow: Option<Allowlist>,
    /// `Allow` header value for 405 answers.
    pub allow_methods: String,
    /// This instance's limiter: the route's `limit`, or with `[fleet]` this
    /// instance's share of it (used while Redis cannot answer).
    pub limit: Option<RouteLimit>,
    /// The duplicate guard, for routes with `duplicate_key`.
    pub duplicates: Option<Guard>,
    /// The provider's cooldown as this instance knows it (kept across reloads).
    pub cooldown: Arc<Cooldown>,
    /// Bounds the route's concurrent upstream calls (`max_inflight`).
    pub inflight: Arc<tokio::sync::Semaphore>,
    /// The payout caps, for routes with `amount_guard` (totals on disk or in Redis).
    pub amounts: Option<AmountGuard>,
    /// The route's metric series, resolved once.
    pub metrics: crate::metrics::RouteMetrics,
}

impl Route {
    /// `kept` carries state over from the previous configuration (a reload
    /// must not forget in-flight payouts nor a provider's cooldown). With
    /// `fleet`, the guard's claims live in Redis (`claim_ttl`: how long an
    /// in-flight claim may live) and the local limiter is this instance's
    /// share. `amounts`: the amount guard built for `config.amount_guard`.
    pub fn new(
        config: RouteConfig,
        scheme: Arc<Scheme>,
        credential: RouteSlots,
        kept: Kept,
        fleet: Option<(&Arc<Fleet>, std::time::Duration)>,
        amounts: Option<AmountGuard>,
        metrics: &crate::metrics::Metrics,
    ) -> Route {
        let allow = config.allow.as_deref().map(Allowlist::new);
        let allow_methods = config.methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let duplicates = match (&config.duplicate_key, kept.duplicates, fleet) {
            (None, _, _) => None,
            (Some(_), _, Some((fleet, ttl))) => Some(Guard::Fleet(FleetGuard::new(
                fleet.clone(),
                &config.name,
                config.duplicate_window,
                ttl,
            ))),
            (Some(_), Some(kept @ Guard::Local(_)), None) => Some(kept),
            (Some(_), _, None) => Some(Guard::Local(Arc::new(MemoryStore::new(
                config.duplicate_window,
                config.duplicate_capacity,
            )))),
        };
        let limit = match fleet {
            Some((f, _)) => config
                .limit
                .map(|q| RouteLimit::new(crate::ratelimit::share(q, f.expected_instances()))),
            None => config.limit.map(RouteLimit::new),
        };
        Route {
            metrics: metrics.route(
                &config.name,
                match &config.credential {
                    crate::config::RouteCredential::One(c) => Some(c.as_str()),
                    crate::config::RouteCredential::ByCaller(_) => None,
                },
            ),
            inflight: Arc::new(tokio::sync::Semaphore::new(config.max_inflight)),
            amounts,
            duplicates,
            cooldown: kept.cooldown.unwrap_or_default(),
            limit,
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

/// A route's credential slots, resolved from `credential` or `credential_map`.
pub enum RouteSlots {
    One(Arc<CredentialSlot>),
    /// In `credential_map` order: the first entry matching the caller.
    ByCaller(Vec<(Caller, Arc<CredentialSlot>)>),
}

impl RouteSlots {
    /// The slot that signs for this caller (`ip` normalized); `None`: the
    /// caller matches no `credential_map` entry.
    pub fn pick(&self, ip: std::net::IpAddr, identities: Option<&[Identity]>) -> Option<&Arc<CredentialSlot>> {
        match self {
            RouteSlots::One(slot) => Some(slot),
            RouteSlots::ByCaller(rules) => rules
                .iter()
                .find(|(caller, _)| caller.matches(ip, identities))
                .map(|(_, slot)| slot),
        }
    }

    /// Every slot the route may sign with (a slot may appear twice).
    pub fn slots(&self) -> impl Iterator<Item = &Arc<CredentialSlot>> {
        let (one, many) = match self {
            RouteSlots::One(slot) => (Some(slot), &[][..]),
            RouteSlots::ByCaller(rules) => (None, &rules[..]),
        };
        one.into_iter().chain(many.iter().map(|(_, slot)| slot))
    }
}

/// What a route keeps from its predecessor of the same name on reload.
#[derive(Default)]
pub struct Kept {
    pub duplicates: Option<Guard>,
    pub cooldown: Option<Arc<Cooldown>>,
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

/// Whether a request path may be routed and forwarded. Refused are the
/// tricks that make a server behind us see another path than the one we
/// routed (normalizers differ: Tomcat, Jetty, Spring, IIS, Node…):
///
/// - a segment without an ASCII letter or digit before its `;`: dot
///   segments (`.`, `..`), and what trimming, folding or form-decoding
///   servers turn into one (`...`, `..%20`, `..+`, `..` + U+200B, `-`);
///   empty segments (`//`), backslashes, and percent-encoded
///   dots, slashes, backslashes, `?`, `#` and NUL (`%2e %2f %5c %3f %23
///   %00`);
/// - path parameters on a dot-only segment: `..;a`, `.;`, `;x` (Tomcat and
///   Spring drop `;…` and then see `..`), also when the `;` is encoded;
/// - double encoding: `%25` followed by a hex pair or by `u` (`%252e`),
///   or any escape left once the path is decoded (`%25%32%65`);
/// - percent escapes that are malformed (`%zz`, a lone `%`) or IIS-style
///   `%uXXXX`;
/// - escapes whose bytes are not valid UTF-8, overlong forms included
///   (`%c0%af` is a `/` to a lenient decoder);
/// - control characters, raw or encoded (`%0d %0a %09 %7f`, C1 controls):
///   header and log injection;
/// - Unicode look-alikes of `.`, `/`, `\`, `;`, `?`, `#` and `%` that
///   NFKC-normalizing servers fold into them (fullwidth `．／＼；？＃％`,
///   `․ ‥ … ︰ ︙ ∕ ﹨ ℀`, …: [`LOOKALIKES`]).
///
/// Linear in the path, and it allocates only for a path with escapes.
pub fn path_is_safe(path: &str) -> bool {
    match plain_path_is_safe(path.as_bytes()) {
        Some(verdict) => verdict,
        None => escaped_path_is_safe(path),
    }
}

/// The verdict on a path made only of unreserved ASCII and `/` (every
/// provider path in practice), in one pass: it must start with `/` and
/// every segment but a trailing empty one needs a letter or a digit. `None`: the path has other bytes (escapes,
/// parameters, non-ASCII, controls) and needs the full check.
fn plain_path_is_safe(b: &[u8]) -> Option<bool> {
    let mut safe = b.first() == Some(&b'/');
    // Bytes of the current segment, and how many are letters or digits.
    let (mut len, mut alnum) = (0usize, 0usize);
    for &c in b.iter().skip(1) {
        match c {
            b'/' => {
                // Every segment names something: a letter or a digit.
                safe &= alnum > 0;
                (len, alnum) = (0, 0);
            }
            b'.' | b'-' | b'_' | b'~' => len += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (len, alnum) = (len + 1, alnum + 1),
            _ => return None,
        }
    }
    // The last segment may be empty (`/`, `/a/`).
    Some(safe && (alnum > 0 || len == 0))
}

fn escaped_path_is_safe(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') || path.contains("//") {
        return false;
    }
    let b = path.as_bytes();
    // Every `%` starts a well-formed escape of a byte that may be encoded.
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'%') {
        let at = i + off;
        let (Some(&h), Some(&l)) = (b.get(at + 1), b.get(at + 2)) else {
            return false;
        };
        let (Some(h), Some(l)) = (hex(h), hex(l)) else {
            return false; // `%zz`, `%u002e`
        };
        match (h << 4) | l {
            // Dots, separators, the query and fragment delimiters and NUL
            // stay literal or are refused (a server that decodes before
            // parsing would cut the path at an encoded `?` or `#`).
            b'.' | b'/' | b'\\' | b'?' | b'#' | 0 => return false,
            // `%25` then a hex pair or `u`: a second decoding would yield an escape.
            b'%' => {
                if matches!(b.get(at + 3), Some(c) if c.is_ascii_hexdigit() || *c == b'u' || *c == b'U') {
                    return false;
                }
            }
            _ => {}
        }
        i = at + 3;
    }
    // The decoded path must be valid UTF-8 without controls or look-alikes.
    let decoded_owned;
    let decoded: &str = if b.contains(&b'%') {
        match String::from_utf8(percent_decode(b)) {
            Ok(s) => {
                decoded_owned = s;
                &decoded_owned
            }
            Err(_) => return false, // overlong forms, lone continuation bytes, surrogates
        }
    } else {
        path
    };
    if decoded.chars().any(|c| c.is_control() || LOOKALIKES.contains(&c)) {
        return false;
    }
    // Nested double encoding: once decoded, the path must hold no escape a
    // second decoding would act on (`%25%32%65` is `%2e`, then `.`).
    let d = decoded.as_bytes();
    if d.iter().enumerate().any(|(i, &c)| {
        c == b'%' && matches!(d.get(i + 1), Some(n) if n.is_ascii_hexdigit() || *n == b'u' || *n == b'U')
    }) {
        return false;
    }
    // Segment by segment, on the raw `/` (an encoded one was refused above).
    path.split('/').all(|raw| {
        if raw.is_empty() {
            return true; // before the leading `/`, or after a trailing one
        }
        let seg = percent_decode(raw.as_bytes());
        let stem = seg.split(|&c| c == b';').next().unwrap_or_default();
        // Every segment names something: its stem has an ASCII letter or
        // digit. A stem of dots, spaces, invisible or other characters
        // (`..`, `...`, `..%20`, `..+`, `..` + U+200B, `;x`) is what servers
        // that trim, fold or strip turn into a dot segment or an empty one.
        // And any segment with parameters that starts with `..` (`..;x`,
        // `..a;x` to a lenient parser).
        stem.iter().any(u8::is_ascii_alphanumeric) && !(seg.contains(&b';') && seg.starts_with(b".."))
    })
}

/// Characters NFKC folds into (or into text with) `.`, `/`, `\`, `;`, `?`,
/// `#` or `%`, which some servers normalize before they route.
const LOOKALIKES: &[char] = &[
    // . .. ...
    '\u{ff0e}', '\u{2024}', '\u{fe52}', '\u{2025}', '\u{2026}', '\u{fe30}', '\u{fe19}',
    // / (and a/c, a/s, c/o, c/u) \
    '\u{ff0f}', '\u{2215}', '\u{2100}', '\u{2101}', '\u{2105}', '\u{2106}', '\u{ff3c}', '\u{fe68}',
    // ; ? # %
    '\u{ff1b}', '\u{fe54}', '\u{037e}', '\u{ff1f}', '\u{fe56}', '\u{2047}', '\u{2048}', '\u{2049}', '\u{ff03}',
    '\u{fe5f}', '\u{ff05}', '\u{fe6a}', '\u{fe14}', '\u{fe16}',
    // Windows best-fit mappings to `\` (code pages 932 and 949): ¥ ₩
    '\u{a5}', '\u{20a9}',
];

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One decoding pass; a malformed escape is kept as is.
fn percent_decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                out.push((h << 4) | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check of plain paths agrees with the full check on
    /// every path of up to 8 bytes over `/ . a` (where they differ: empty,
    /// dot and dot-dot segments, the leading slash).
    #[test]
    fn plain_paths_agree_with_the_full_check() {
        let alphabet = [b'/', b'.', b'a'];
        let mut checked = 0;
        for len in 0..=8u32 {
            for n in 0..3usize.pow(len) {
                let mut k = n;
                let p: Vec<u8> = (0..len)
                    .map(|_| {
                        let c = alphabet[k % 3];
                        k /= 3;
                        c
                    })
                    .collect();
                let s = std::str::from_utf8(&p).unwrap();
                assert_eq!(plain_path_is_safe(&p), Some(escaped_path_is_safe(s)), "{s:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, (0..=8).map(|l| 3usize.pow(l)).sum::<usize>());
        assert_eq!(plain_path_is_safe(b"/a%2e"), None);
        assert_eq!(plain_path_is_safe(b"/a;b"), None);
        assert_eq!(plain_path_is_safe("/\u{ff0e}".as_bytes()), None);
    }

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

    fn refused(paths: &[&str]) {
        for p in paths {
            assert!(!path_is_safe(p), "{p:?} was accepted");
        }
    }

    fn accepted(paths: &[&str]) {
        for p in paths {
            assert!(path_is_safe(p), "{p:?} was refused");
        }
    }

    /// What a Windows server trims (trailing dots and spaces) or an NFKC
    /// normalizer folds must not turn a segment into a dot segment (found
    /// by an adversarial pass: `/pg/..%20/banking/...` reached another API
    /// below the route's base path on such a server).
    #[test]
    fn segments_of_dots_and_spaces_are_dot_segments() {
        refused(&[
            "/kp/.../x",
            "/kp/....",
            "/kp/x/..../banking",
            "/kp/..%20/banking",
            "/kp/.%20/x",
            "/kp/..%20%20/x",
            "/kp/..%C2%A0/banking",
            "/kp/..%E3%80%80/banking",
            "/kp/%20/x",
            "/kp/..%e2%80%a6/banking",
            "/kp/%ef%b9%a8..%ef%b9%a8banking",
            "/kp/\u{2026}/x",
            "/kp/create%3F",
            "/kp/create%3fx=1",
            "/kp/create%23",
            // A third pass: folds, invisible characters, form decoding, nesting.
            "/kp/%EF%B8%B0/banking",
            "/kp/%ef%b8%99/banking",
            "/kp/..%E2%80%8B/banking",
            "/kp/..%EF%BB%BF/banking",
            "/kp/..%C2%AD/banking",
            "/kp/..%CC%81/banking",
            "/kp/..+/banking",
            "/kp/..%2B/banking",
            "/kp/%25%32%65%25%32%65/banking",
            "/kp/..%EF%BC%9Bx/banking",
            "/kp/..%CD%BEx/banking",
            "/kp/%EF%BC%852e%EF%BC%852e/banking",
            "/kp/%E2%84%80",
            "/kp/-/x",
            "/kp/~",
            // A fourth pass: vertical-form `;` and `?`, best-fit backslashes.
            "/kp/..%EF%B8%94a/..%EF%B8%94a/banking",
            "/kp/order%EF%B8%96/create",
            "/kp/a%C2%A5..%C2%A5..%C2%A5banking",
            "/kp/a%E2%82%A9..%E2%82%A9banking",
        ]);
        accepted(&[
            "/kp/create.",
            "/kp/v1.",
            "/kp/a%20b",
            "/kp/x..",
            "/kp/.well-known/x",
            "/kp/a/%20b",
            "/kp/100%25",
            "/kp/caf%C3%A9",
            "/kp/a-b_c~d",
        ]);
    }

    #[test]
    fn path_parameters_on_dot_segments() {
        refused(&[
            "/kp/..;/admin",
            "/kp/..;a/admin",
            "/kp/..;a=b;c/admin",
            "/kp/.;/admin",
            "/kp/.;x",
            "/kp/;/admin",
            "/kp/;jsessionid=1/admin",
            "/kp/...;/admin",
            "/kp/..%3b/admin",
            "/kp/..%3B/admin",
            "/kp/.%2e;/admin",
            "/kp/%2e%2e;/admin",
            "/kp/..x;y/admin",
        ]);
        accepted(&["/kp/order;v=1", "/kp/a.b;c", "/kp/x/..foo", "/kp/v1.2/x", "/kp/a..b"]);
    }

    #[test]
    fn double_encoding() {
        refused(&[
            "/kp/%252e%252e/admin",
            "/kp/%252E%252e/admin",
            "/kp/%252f",
            "/kp/%255c",
            "/kp/%2500",
            "/kp/%2541",
            "/kp/%25u002e",
            "/kp/%25U002E",
        ]);
        accepted(&["/kp/100%25", "/kp/100%25off", "/kp/%25-x"]);
    }

    #[test]
    fn overlong_and_invalid_utf8() {
        refused(&[
            "/kp/%c0%af",       // overlong '/'
            "/kp/%c0%ae%c0%ae", // overlong '.'
            "/kp/%e0%80%af",    // 3-byte overlong '/'
            "/kp/%f0%80%80%af", // 4-byte overlong '/'
            "/kp/%c1%9c",       // overlong '\\'
            "/kp/%80",          // lone continuation byte
            "/kp/%c3",          // truncated sequence
            "/kp/%ed%a0%80",    // a UTF-16 surrogate
            "/kp/%f4%90%80%80", // past U+10FFFF
            "/kp/%ff",
        ]);
        accepted(&["/kp/caf%c3%a9", "/kp/%e2%82%b9100", "/kp/caf\u{e9}"]);
    }

    #[test]
    fn iis_u_escapes_and_malformed_escapes() {
        refused(&[
            "/kp/%u002e%u002e/admin",
            "/kp/%U002F",
            "/kp/%uff0e",
            "/kp/%zz",
            "/kp/%4",
            "/kp/%",
            "/kp/a%g1",
        ]);
    }

    #[test]
    fn control_characters() {
        refused(&[
            "/kp/a%0d%0aSet-Cookie:x",
            "/kp/%0a",
            "/kp/%0D",
            "/kp/%09",
            "/kp/%1b[31m",
            "/kp/%7f",
            "/kp/%c2%85", // NEL, a C1 control
            "/kp/a\u{7}b",
        ]);
    }

    #[test]
    fn unicode_lookalikes() {
        refused(&[
            "/kp/%ef%bc%8e%ef%bc%8e/admin", // fullwidth full stops
            "/kp/a%ef%bc%8fb",              // fullwidth solidus
            "/kp/a%ef%bc%bcb",              // fullwidth reverse solidus
            "/kp/%e2%80%a5",                // two dot leader
            "/kp/a%e2%88%95b",              // division slash
            "/kp/\u{ff0e}\u{ff0e}/admin",
        ]);
    }
}
