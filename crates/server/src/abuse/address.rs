//! Where a request comes from: the TCP peer, or, behind a trusted reverse
//! proxy, the address that proxy says it serves; and the key the per-address
//! limits count it under.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;

/// What the per-address limits count by: an IPv4 address, or an IPv6 /64
/// (one subscriber usually has a whole /64, so counting single IPv6
/// addresses would let one client be many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key of `addr`.
    pub fn of(addr: IpAddr) -> AddressKey {
        match addr {
            IpAddr::V4(v4) => AddressKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(IpAddr::V4(v4)),
                None => {
                    let net = u128::from(v6) & !((1u128 << 64) - 1);
                    AddressKey(IpAddr::V6(Ipv6Addr::from(net)))
                }
            },
        }
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The client's address: the TCP peer's, unless the peer is a trusted proxy;
/// then the last address of `X-Forwarded-For` that is not a trusted proxy
/// (each proxy appends the address it heard from, so the entries before the
/// last untrusted one are whatever the client chose to write).
pub fn source_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(*ip, trusted);
    if !is_trusted(&peer) {
        return peer;
    }
    let mut source = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // A malformed entry: trust nothing before it.
            break;
        };
        source = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    source
}

/// Whether `ip` is one of the `trusted` proxies (an IPv4-mapped IPv6
/// address matches its IPv4 form).
pub fn is_trusted_proxy(ip: IpAddr, trusted: &[IpAddr]) -> bool {
    trusted.iter().any(|t| canonical(*t) == canonical(ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn an_untrusted_peer_is_the_source_whatever_it_claims() {
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(
            source_address(ip("198.51.100.1"), &h, &[ip("127.0.0.1")]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_last_untrusted_hop_is_the_source() {
        let proxies = [ip("127.0.0.1"), ip("10.0.0.2")];
        // The client wrote a fake first entry; the proxies appended the truth.
        let h = forwarded(&["6.6.6.6, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(source_address(ip("127.0.0.1"), &h, &proxies), ip("203.0.113.9"));
        // No header: the proxy itself.
        assert_eq!(
            source_address(ip("127.0.0.1"), &HeaderMap::new(), &proxies),
            ip("127.0.0.1")
        );
        // A malformed hop stops the walk at the last good one.
        let h = forwarded(&["203.0.113.9, garbage"]);
        assert_eq!(source_address(ip("127.0.0.1"), &h, &proxies), ip("127.0.0.1"));
        // An IPv4-mapped peer matches its IPv4 proxy entry.
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(source_address(ip("::ffff:127.0.0.1"), &h, &proxies), ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ones_as_ipv4() {
        assert_eq!(
            AddressKey::of(ip("2001:db8::1")),
            AddressKey::of(ip("2001:db8::ffff:2"))
        );
        assert_ne!(AddressKey::of(ip("2001:db8::1")), AddressKey::of(ip("2001:db8:0:1::1")));
        assert_eq!(AddressKey::of(ip("::ffff:192.0.2.1")), AddressKey::of(ip("192.0.2.1")));
        assert_eq!(AddressKey::of(ip("2001:db8::1")).to_string(), "2001:db8::/64");
    }
}
