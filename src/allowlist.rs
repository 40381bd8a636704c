//! Client allowlists: `[access].allow` for every request and `route.allow`
//! that narrows it. Decisions use the TCP peer address only (never a header);
//! IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are treated as IPv4.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct Allowlist {
    nets: Vec<IpNet>,
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Allowlist {
    pub fn new(nets: &[IpNet]) -> Self {
        Allowlist {
            nets: nets.iter().map(IpNet::trunc).collect(),
        }
    }

    /// Whether `ip` (already normalized or not) is inside any allowed network.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &[&str]) -> Allowlist {
        Allowlist::new(&s.iter().map(|c| c.parse().unwrap()).collect::<Vec<IpNet>>())
    }

    #[test]
    fn edges() {
        let a = list(&["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        for (ip, ok) in [
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("::ffff:10.1.2.3", true),
            ("::ffff:11.1.2.3", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("::1", false),
        ] {
            assert_eq!(a.allows(ip.parse().unwrap()), ok, "{ip}");
        }
        let all4 = list(&["0.0.0.0/0"]);
        assert!(all4.allows("8.8.8.8".parse().unwrap()));
        assert!(all4.allows("::ffff:8.8.8.8".parse().unwrap()));
        assert!(!all4.allows("2001:db8::1".parse().unwrap()));
        let loop6 = list(&["::1/128"]);
        assert!(loop6.allows("::1".parse().unwrap()));
        assert!(!loop6.allows("127.0.0.1".parse().unwrap()));
    }
}
