//! Where a vnode may send traffic, as data. By default a vnode reaches its own cluster's
//! nodes and the internet through NAT, and nothing of the site: not the hosts' networks, not
//! any private, shared, link-local, loopback, multicast or reserved IPv4 range, not etcd, the
//! agents or the masters. A site adjusts that with `egress_allow` / `egress_deny` in its
//! configuration, and a group may get extra allowances (its members' vnodes only). IPv6 is
//! off in vnodes: their ports pass only IPv4 and ARP.
//!
//! The order a packet meets the rules in, first match wins: the control plane (never
//! reachable, whatever the rules say), the site's denials, the member's group allowances, the
//! site's allowances, DNS to the hosts' resolvers, the site's ranges (dropped); the rest is
//! the internet.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Ranges that belong to some site rather than to the internet (RFC 6890 and friends):
/// this network, RFC 1918, shared address space (carrier-grade NAT), loopback, link-local
/// (cloud metadata services live there), IETF protocol assignments, benchmarking, multicast
/// and reserved. The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)
/// are not in it: nothing real lives there, and the testbed's internet stand-in does.
pub const SITE_RANGES: [&str; 11] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Destinations as a site writes them: `CIDR` or `ADDRESS`, optionally `:PORT` or
/// `:FIRST-LAST` (TCP and UDP; without ports, every protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EgressRule {
    pub net: Ipv4Net,
    pub ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a destination: write CIDR or ADDRESS, optionally :PORT or :FIRST-LAST (IPv4; IPv6 is off in vnodes)"
)]
pub struct EgressRuleError(pub String);

impl FromStr for EgressRule {
    type Err = EgressRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || EgressRuleError(text.to_owned());
        let (address, ports) = match text.trim().split_once(':') {
            Some((address, ports)) => (address, Some(ports)),
            None => (text.trim(), None),
        };
        let net = match address.parse::<Ipv4Net>() {
            Ok(net) => net.trunc(),
            Err(_) => Ipv4Net::from(address.parse::<Ipv4Addr>().map_err(|_| bad())?),
        };
        let ports = match ports {
            None => None,
            Some(ports) => {
                let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
                let first: u16 = first.parse().map_err(|_| bad())?;
                let last: u16 = last.parse().map_err(|_| bad())?;
                if first == 0 || last < first {
                    return Err(bad());
                }
                Some((first, last))
            }
        };
        Ok(EgressRule { net, ports })
    }
}

impl TryFrom<String> for EgressRule {
    type Error = EgressRuleError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<EgressRule> for String {
    fn from(rule: EgressRule) -> String {
        rule.to_string()
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ports {
            None => write!(f, "{}", self.net),
            Some((first, last)) if first == last => write!(f, "{}:{first}", self.net),
            Some((first, last)) => write!(f, "{}:{first}-{last}", self.net),
        }
    }
}

impl EgressRule {
    /// The rule as an nftables match (without a verdict).
    pub fn nft_match(&self) -> String {
        match self.ports {
            None => format!("ip daddr {}", self.net),
            Some((first, last)) if first == last => {
                format!(
                    "ip daddr {} meta l4proto {{ tcp, udp }} th dport {first}",
                    self.net
                )
            }
            Some((first, last)) => format!(
                "ip daddr {} meta l4proto {{ tcp, udp }} th dport {first}-{last}",
                self.net
            ),
        }
    }
}

/// The site's policy and what it is applied to on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// `egress_deny`: never reachable, whatever a group is allowed.
    pub deny: Vec<EgressRule>,
    /// `egress_allow`: reachable by every vnode although inside the site's ranges.
    pub allow: Vec<EgressRule>,
    /// The networks of every host's network device.
    pub host_networks: BTreeSet<Ipv4Net>,
    /// The hosts' DNS resolvers: vnodes may ask them (TCP and UDP port 53) and nothing else.
    pub resolvers: BTreeSet<Ipv4Addr>,
}

impl EgressPolicy {
    /// The site's ranges with the hosts' networks, merged so the nftables interval set gets
    /// no overlapping elements.
    pub fn site_ranges(&self) -> Vec<Ipv4Net> {
        let mut nets: Vec<Ipv4Net> = SITE_RANGES
            .iter()
            .map(|r| r.parse().expect("a valid range"))
            .collect();
        nets.extend(self.host_networks.iter().map(Ipv4Net::trunc));
        Ipv4Net::aggregate(&nets)
    }
}

/// The IPv4 `nameserver`s of a resolv.conf, loopback ones left out (a vnode cannot use them).
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<Ipv4Addr>().ok()
        })
        .filter(|a| !a.is_loopback())
        .collect()
}

/// Checks a list of rules as written in a configuration or a group, naming the first bad one.
pub fn parse_rules(texts: &[String]) -> Result<Vec<EgressRule>, EgressRuleError> {
    texts.iter().map(|t| t.parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_as_sites_write_them() {
        let cases = [
            ("10.1.2.0/24", "10.1.2.0/24", "ip daddr 10.1.2.0/24"),
            ("10.1.2.3", "10.1.2.3/32", "ip daddr 10.1.2.3/32"),
            (
                "10.1.2.3:2049",
                "10.1.2.3/32:2049",
                "ip daddr 10.1.2.3/32 meta l4proto { tcp, udp } th dport 2049",
            ),
            (
                "10.1.2.77/24:8000-8100",
                "10.1.2.0/24:8000-8100",
                "ip daddr 10.1.2.0/24 meta l4proto { tcp, udp } th dport 8000-8100",
            ),
        ];
        for (text, shown, nft) in cases {
            let rule: EgressRule = text.parse().unwrap();
            assert_eq!(rule.to_string(), shown);
            assert_eq!(rule.nft_match(), nft);
            assert_eq!(shown.parse::<EgressRule>().unwrap(), rule);
        }
    }

    #[test]
    fn bad_rules_are_refused_with_the_text() {
        for bad in [
            "",
            "nfs.example.org",
            "10.1.2.0/33",
            "10.1.2.3:0",
            "10.1.2.3:80-79",
            "10.1.2.3:http",
            "fd00::/8",
            "10.1.2.3:1:2",
            "10.1.2.3:65536",
        ] {
            let e = bad.parse::<EgressRule>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let e = parse_rules(&["10.0.0.1".into(), "x".into()]).unwrap_err();
        assert_eq!(e.0, "x");
    }

    #[test]
    fn nameservers_are_read_without_loopback_ones() {
        let text = "# by NetworkManager\nsearch example.org\nnameserver 127.0.0.53\n\
                    nameserver 10.0.0.2 # office\n  nameserver\t192.168.1.1\nnameserver fe80::1\n";
        assert_eq!(
            nameservers(text),
            [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(192, 168, 1, 1)]
        );
    }

    #[test]
    fn rules_read_and_write_as_strings() {
        let rules: Vec<EgressRule> =
            serde_json::from_str(r#"["10.1.0.0/16", "8.8.8.8:53"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&rules).unwrap(),
            r#"["10.1.0.0/16","8.8.8.8/32:53"]"#
        );
        assert!(serde_json::from_str::<Vec<EgressRule>>(r#"["10.1.0.0/99"]"#).is_err());
    }

    #[test]
    fn the_site_is_the_private_ranges_and_the_hosts_networks_merged() {
        let policy = EgressPolicy {
            host_networks: ["10.213.0.0/24", "192.0.2.0/25", "192.0.2.128/25"]
                .iter()
                .map(|n| n.parse().unwrap())
                .collect(),
            ..Default::default()
        };
        let site = policy.site_ranges();
        let has = |n: &str| site.contains(&n.parse().unwrap());
        // Inside 10.0.0.0/8 already; the two halves merge into one element.
        assert!(has("10.0.0.0/8") && !has("10.213.0.0/24"));
        assert!(has("192.0.2.0/24"));
        assert!(has("169.254.0.0/16") && has("172.16.0.0/12") && has("100.64.0.0/10"));
        // The internet's documentation ranges are not the site's unless a host sits there.
        assert!(
            !site
                .iter()
                .any(|n| n.contains(&"203.0.113.1".parse::<Ipv4Addr>().unwrap()))
        );
        for (i, a) in site.iter().enumerate() {
            for b in &site[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
            }
        }
    }
}
