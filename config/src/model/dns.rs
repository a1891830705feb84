//! Upstream addresses as written (`HOST:PORT`) and how host names are resolved (`upstreamDns`).
//!
//! A literal IP address is used as it is, for ever. A host name is resolved by the control plane
//! (never by this crate: `weir validate` works offline), to every address it has (up to
//! [`UpstreamDns::max_addresses`]), and re-resolved every [`UpstreamDns::refresh_rate`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One upstream as written in `services[].stable.upstreams` / `canary.upstreams`: a literal
/// address, or a host name that stands for every address it resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// As written in the file (`127.0.0.1:9001`, `api.internal:9001`).
    pub name: String,
    /// The host part: a literal IP, or a DNS name (lower-case).
    pub host: UpstreamHost,
    /// The port.
    pub port: u16,
    /// The socket addresses this upstream stands for now, each a separate endpoint of its
    /// version (round-robin across them). A literal address gives exactly one, set by parsing; a
    /// host name gives none until the control plane resolves it (`weir run` fills them in before
    /// a table is built, and refreshes them).
    pub addrs: Vec<SocketAddr>,
}

/// The host part of an [`Upstream`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamHost {
    /// A literal IP address: never resolved.
    Ip(IpAddr),
    /// A DNS name, lower-case: resolved at load and every `upstreamDns.refreshRate`.
    Name(String),
}

impl Upstream {
    /// The DNS name to resolve, `None` for a literal address.
    pub fn hostname(&self) -> Option<&str> {
        match &self.host {
            UpstreamHost::Name(name) => Some(name),
            UpstreamHost::Ip(_) => None,
        }
    }
}

/// Which address families of a host name are used (`upstreamDns.family`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// `auto` (default): the IPv4 addresses when the name has any, else its IPv6 ones (so
    /// `localhost` is `127.0.0.1`, where local backends usually listen).
    #[default]
    Auto,
    /// `ipv4`: IPv4 addresses only.
    Ipv4,
    /// `ipv6`: IPv6 addresses only.
    Ipv6,
    /// `any`: every address of both families.
    Any,
}

/// `upstreamDns` (top level): how upstream host names are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamDns {
    /// `refreshRate` (default 30 s, between 100 ms and 24 h): every host name is resolved again
    /// this often; a new route table is published only when a name's address set changed. A
    /// failed or empty answer keeps the last good addresses (and is counted in
    /// `weir_dns_resolution_failures_total{host}`).
    pub refresh_rate: Duration,
    /// `maxAddresses` (default 16, between 1 and 256): addresses used per host name (the lowest
    /// ones, in sorted order), so a name with a huge answer cannot blow up the route table or the
    /// upstream pools.
    pub max_addresses: usize,
    /// `family` (default `auto`): which address families are used.
    pub family: AddressFamily,
}

impl UpstreamDns {
    /// Default of [`UpstreamDns::refresh_rate`].
    pub const DEFAULT_REFRESH_RATE: Duration = Duration::from_secs(30);
    /// Default of [`UpstreamDns::max_addresses`].
    pub const DEFAULT_MAX_ADDRESSES: usize = 16;

    /// The addresses of an answer that are used: filtered by family, sorted, deduplicated, at
    /// most `max_addresses`.
    pub fn select(&self, answer: &[IpAddr]) -> Vec<IpAddr> {
        let has_v4 = answer.iter().any(IpAddr::is_ipv4);
        let mut ips: Vec<IpAddr> = answer
            .iter()
            .copied()
            .filter(|ip| match self.family {
                AddressFamily::Auto => ip.is_ipv4() == has_v4,
                AddressFamily::Ipv4 => ip.is_ipv4(),
                AddressFamily::Ipv6 => ip.is_ipv6(),
                AddressFamily::Any => true,
            })
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ips.truncate(self.max_addresses);
        ips
    }
}

impl Default for UpstreamDns {
    fn default() -> Self {
        UpstreamDns {
            refresh_rate: UpstreamDns::DEFAULT_REFRESH_RATE,
            max_addresses: UpstreamDns::DEFAULT_MAX_ADDRESSES,
            family: AddressFamily::Auto,
        }
    }
}
