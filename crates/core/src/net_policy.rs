//! Which addresses the crawler may connect to.
//!
//! A crawler that fetches any URL it is given is an SSRF tool: loopback,
//! private, link-local and cloud-metadata addresses are refused unless the
//! operator allows a network explicitly. The check runs on resolved
//! addresses, so a public name pointing at 127.0.0.1 is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {addr} is in a {kind} range; allow it with --allow-network")]
pub struct ForbiddenAddress {
    pub addr: IpAddr,
    pub kind: &'static str,
}

impl NetworkPolicy {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Parses comma-separated networks such as `127.0.0.0/8,::1/128`.
    pub fn parse_list(list: &str) -> Result<Vec<IpNet>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|e| format!("`{s}` is not a network such as 127.0.0.0/8: {e}"))
            })
            .collect()
    }

    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.allowed
    }

    /// An IPv6 address that carries an IPv4 address (see [`embedded_v4`])
    /// is judged by that IPv4 address too: it is where the packets end up.
    pub fn check(&self, addr: IpAddr) -> Result<(), ForbiddenAddress> {
        let carried = match canonical(addr) {
            IpAddr::V6(v6) => embedded_v4(v6),
            IpAddr::V4(_) => Vec::new(),
        };
        for judged in std::iter::once(canonical(addr)).chain(carried.into_iter().map(IpAddr::V4)) {
            if self.allowed.iter().any(|net| net.contains(&judged)) {
                continue;
            }
            if let Some(kind) = special_range(judged) {
                return Err(ForbiddenAddress { addr: judged, kind });
            }
        }
        Ok(())
    }
}

/// The address a URL names literally (`http://127.0.0.1/`, `http://[::1]/`):
/// such a URL is never resolved, so the policy must be applied to it directly.
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(v4.into()),
        url::Host::Ipv6(v6) => Some(v6.into()),
        url::Host::Domain(_) => None,
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is checked as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The IPv4 addresses an IPv6 address carries, for the forms that reach
/// them: IPv4-compatible `::a.b.c.d` (deprecated, still routed by some
/// stacks), NAT64 `64:ff9b::/96` (RFC 6052), 6to4 `2002::/16` (RFC 3056)
/// and Teredo `2001::/32` (RFC 4380: its server, and its client stored
/// inverted). IPv4-mapped `::ffff:a.b.c.d` is made IPv4 by [`canonical`].
fn embedded_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let compatible = s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 {
        vec![v4(s[6], s[7])]
    } else if s[0] == 0x2002 {
        vec![v4(s[1], s[2])]
    } else if s[0] == 0x2001 && s[1] == 0 {
        vec![v4(s[2], s[3]), v4(!s[6], !s[7])]
    } else {
        Vec::new()
    }
}

fn special_range(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16 holds the cloud metadata endpoint 169.254.169.254.
        Some("link-local/metadata")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if a == 0 || ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("reserved")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        // fc00::/7 includes fd00:ec2::254, a metadata endpoint.
        Some("private (unique local)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_refused_by_default() {
        let policy = NetworkPolicy::default();
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            assert!(policy.check(ip(addr)).is_err(), "{addr} should be refused");
        }
    }

    #[test]
    fn ipv6_forms_that_carry_an_ipv4_address_are_judged_by_it() {
        let policy = NetworkPolicy::default();
        let refused = [
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::ffff:169.254.169.254", "169.254.169.254"),
            ("::127.0.0.1", "127.0.0.1"),
            ("::10.0.0.1", "10.0.0.1"),
            ("64:ff9b::127.0.0.1", "127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
            ("2002:7f00:1::", "127.0.0.1"),
            ("2002:c0a8:101::1", "192.168.1.1"),
            // Teredo: server 65.54.227.120, client 127.0.0.1 stored inverted.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),
            // Teredo whose server is private.
            ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "10.0.0.1"),
        ];
        for (addr, carried) in refused {
            let refusal = policy.check(ip(addr)).expect_err(addr);
            assert_eq!(refusal.addr, ip(carried), "{addr}");
        }
        for addr in [
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2606:4700::1111",
        ] {
            assert!(policy.check(ip(addr)).is_ok(), "{addr} should be allowed");
        }
        // Allowing the IPv4 network allows its IPv6 forms too.
        let loopback = NetworkPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(loopback.check(ip("2002:7f00:1::")).is_ok());
        assert!(loopback.check(ip("64:ff9b::127.0.0.1")).is_ok());
        for addr in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(policy.check(ip(addr)).is_ok(), "{addr} should be allowed");
        }
    }

    #[test]
    fn an_allowed_network_opens_only_that_network() {
        let policy = NetworkPolicy::new(NetworkPolicy::parse_list("127.0.0.0/8").unwrap());
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        assert!(policy.check(ip("::ffff:127.0.0.2")).is_ok());
        assert!(policy.check(ip("10.0.0.1")).is_err());
        assert!(policy.check(ip("::1")).is_err());
    }

    #[test]
    fn bad_network_lists_are_explained() {
        let err = NetworkPolicy::parse_list("127.0.0.0/8, nonsense").unwrap_err();
        assert!(err.contains("nonsense"), "{err}");
        assert_eq!(NetworkPolicy::parse_list("").unwrap(), vec![]);
    }
}
