//! The nftables ruleset of one host, from its network plan: users isolated from each other,
//! from the host and from the site's protected networks, egress by policy, masquerade out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{HostPlan, UserPlan, VNodeNet, VXLAN_PORT, format_mac, mac_for};
use crate::model::egress::{EgressPolicy, EgressRule};

/// What the firewall must know besides the plan.
#[derive(Debug, Clone)]
pub struct FirewallContext {
    pub cluster_net: Ipv4Net,
    /// The device outbound traffic leaves by (masqueraded).
    pub device: String,
    /// Addresses no vnode may reach: every host's management address, etcd.
    pub protected: BTreeSet<Ipv4Addr>,
    /// Hosts allowed to send VXLAN to this one.
    pub peers: BTreeSet<Ipv4Addr>,
    /// The site's egress policy (see [`crate::model::egress`]).
    pub egress: EgressPolicy,
    /// Extra destinations a user's vnodes may reach (their group's allowances), by user.
    pub user_allow: BTreeMap<String, Vec<EgressRule>>,
}

/// Name of Docklet's nftables tables (one per family); nothing else is ever touched.
pub const TABLE: &str = "docklet";

fn set_elements<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if items.is_empty() {
        String::new()
    } else {
        format!("elements = {{ {} }}", items.join(", "))
    }
}

/// Docklet's whole nftables ruleset for this host, applied in one transaction: its own
/// tables are (re)created, nobody else's are touched.
///
/// - `bridge docklet`: a vnode's port only passes frames with the vnode's own MAC and IPv4
///   address (ARP included), nothing but IPv4 and ARP; gateway ARP and gateway-sourced
///   frames never cross a VXLAN port.
/// - `inet docklet`: vnodes reach neither this host (but for ping of their gateway), nor
///   another user's network, nor a protected address; nothing enters a vnode from outside
///   but replies; VXLAN is accepted only from peers. Traffic within users' networks is not
///   connection-tracked (with br_netfilter, bridged frames would be). What leaves a user's
///   network meets the egress policy (chain `egress`, see [`crate::model::egress`]).
/// - `ip docklet`: outbound masquerade on the configured device; privileged source ports
///   become unprivileged ones, so nothing on the way out trusts a vnode as a host's root.
pub fn ruleset(plan: &HostPlan, ctx: &FirewallContext) -> String {
    let vnodes: Vec<&VNodeNet> = plan.users.values().flat_map(|u| &u.vnodes).collect();
    let ports = set_elements(
        vnodes
            .iter()
            .map(|v| format!("\"{}\" . {} . {}", v.veth, format_mac(&v.mac), v.address)),
    );
    let gateways = set_elements(plan.users.values().map(|u| u.gateway));
    let gateway_macs = set_elements(plan.users.values().map(|u| format_mac(&mac_for(u.gateway))));
    // With br_netfilter loaded (Docker does it), frames bridged within one user's network
    // pass the IP forward hook too, in and out of the same bridge: let those through.
    let own_bridges = set_elements(
        plan.users
            .values()
            .map(|u| format!("\"{0}\" . \"{0}\"", u.bridge())),
    );
    let protected = set_elements(&ctx.protected);
    let peers = set_elements(&ctx.peers);
    let net = ctx.cluster_net;
    let device = &ctx.device;
    let port = VXLAN_PORT;
    let egress = egress_chain(plan, ctx);
    format!(
        r#"table bridge {TABLE}
delete table bridge {TABLE}
table bridge {TABLE} {{
	set ports {{ type ifname . ether_addr . ipv4_addr; {ports} }}
	set gateways {{ type ipv4_addr; {gateways} }}
	set gateway_macs {{ type ether_addr; {gateway_macs} }}
	chain prerouting {{
		type filter hook prerouting priority -210; policy accept;
		iifname "dkv*" jump from_vnode
		iifname "dkx*" ether saddr @gateway_macs drop
		iifname "dkx*" arp saddr ip @gateways drop
		iifname "dkx*" arp daddr ip @gateways counter drop
	}}
	chain from_vnode {{
		ether type arp iifname . arp saddr ether . arp saddr ip @ports accept
		ether type ip iifname . ether saddr . ip saddr @ports accept
		drop
	}}
	chain forward {{
		type filter hook forward priority -210; policy accept;
		oifname "dkx*" ether saddr @gateway_macs drop
		oifname "dkx*" arp daddr ip @gateways counter drop
	}}
	chain output {{
		type filter hook output priority -210; policy accept;
		oifname "dkx*" ether saddr @gateway_macs drop
	}}
}}
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
	set gateways {{ type ipv4_addr; {gateways} }}
	set protected {{ type ipv4_addr; {protected} }}
	set peers {{ type ipv4_addr; {peers} }}
	chain input {{
		type filter hook input priority -10; policy accept;
		iifname "dkb*" ip daddr @gateways icmp type echo-request accept
		iifname "dkb*" drop
		udp dport {port} ip saddr != @peers drop
	}}
	set own_bridges {{ type ifname . ifname; {own_bridges} }}
	chain prerouting {{
		type filter hook prerouting priority raw; policy accept;
		iifname "dkb*" ip daddr {net} notrack
	}}
	chain forward {{
		type filter hook forward priority -10; policy accept;
		iifname . oifname @own_bridges accept
		iifname "dkb*" oifname "dkb*" drop
		iifname "dkb*" ip daddr {net} drop
		iifname "dkb*" ip daddr @protected drop
		iifname "dkb*" meta nfproto ipv6 drop
		iifname "dkb*" jump egress
		oifname "dkb*" ct state established,related accept
		oifname "dkb*" drop
	}}
{egress}}}
table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
	chain postrouting {{
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip saddr {net} ip daddr != {net} oifname "{device}" meta l4proto {{ tcp, udp }} masquerade to :1024-65535
		ip saddr {net} ip daddr != {net} oifname "{device}" masquerade
	}}
}}
"#
    )
}

/// The chain a packet leaving a user's network for elsewhere meets (first match wins).
fn egress_chain(plan: &HostPlan, ctx: &FirewallContext) -> String {
    let policy = &ctx.egress;
    let mut rules = Vec::new();
    for rule in &policy.deny {
        rules.push(format!("{} drop", rule.nft_match()));
    }
    for (user, allowed) in &ctx.user_allow {
        let Some(plan) = plan.users.get(user) else {
            continue;
        };
        for rule in allowed {
            rules.push(format!(
                "iifname \"{}\" {} accept",
                plan.bridge(),
                rule.nft_match()
            ));
        }
    }
    for rule in &policy.allow {
        rules.push(format!("{} accept", rule.nft_match()));
    }
    if !policy.resolvers.is_empty() {
        rules.push("ip daddr @resolvers meta l4proto { tcp, udp } th dport 53 accept".into());
    }
    rules.push("ip daddr @site drop".into());
    let resolvers = set_elements(&policy.resolvers);
    let site = set_elements(policy.site_ranges());
    let body: String = rules.iter().map(|r| format!("\t\t{r}\n")).collect();
    format!(
        "\tset resolvers {{ type ipv4_addr; {resolvers} }}\n\
         \tset site {{ type ipv4_addr; flags interval; {site} }}\n\
         \tchain egress {{\n{body}\t}}\n"
    )
}

/// What one more vnode adds to a ruleset made by [`ruleset`]: its port and its user's
/// gateway and bridge, as element additions (adding what is there already is no error). The
/// kernel takes these in a few milliseconds, where replacing the tables waits for RCU grace
/// periods; the next full pass replaces the tables with the same content anyway.
pub fn ruleset_additions(user: &UserPlan, vnode: &VNodeNet) -> String {
    let gateway = user.gateway;
    let bridge = user.bridge();
    format!(
        "add element bridge {TABLE} ports {{ \"{}\" . {} . {} }}\n\
         add element bridge {TABLE} gateways {{ {gateway} }}\n\
         add element bridge {TABLE} gateway_macs {{ {} }}\n\
         add element inet {TABLE} gateways {{ {gateway} }}\n\
         add element inet {TABLE} own_bridges {{ \"{bridge}\" . \"{bridge}\" }}\n",
        vnode.veth,
        format_mac(&vnode.mac),
        vnode.address,
        format_mac(&mac_for(gateway)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::tests::{ip, net, view};
    use crate::model::network::{plan, veth_name};

    #[test]
    fn ruleset_names_every_port_gateway_and_peer() {
        let v = view();
        let ctx = FirewallContext {
            cluster_net: net("172.16.0.0/16"),
            device: "host0".into(),
            protected: BTreeSet::from([ip("10.0.0.11"), ip("10.0.0.12")]),
            peers: BTreeSet::from([ip("10.0.0.12")]),
            egress: EgressPolicy {
                deny: vec!["203.0.113.0/24".parse().unwrap()],
                allow: vec!["10.0.0.50:2049".parse().unwrap()],
                host_networks: BTreeSet::from([net("10.0.0.0/24")]),
                resolvers: BTreeSet::from([ip("10.0.0.53")]),
            },
            user_allow: BTreeMap::from([
                ("alice".to_owned(), vec!["10.0.0.60:80".parse().unwrap()]),
                ("nobody-here".to_owned(), vec!["10.0.0.61".parse().unwrap()]),
            ]),
        };
        let rules = ruleset(&plan(&v, "tb1"), &ctx);
        // Egress: denials, then the group's and the site's allowances, DNS, the site.
        let egress: Vec<&str> = rules
            .split("chain egress {\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| l.trim() != "}")
            .map(str::trim)
            .collect();
        assert_eq!(
            egress,
            [
                "ip daddr 203.0.113.0/24 drop",
                "iifname \"dkb100\" ip daddr 10.0.0.60/32 meta l4proto { tcp, udp } th dport 80 accept",
                "ip daddr 10.0.0.50/32 meta l4proto { tcp, udp } th dport 2049 accept",
                "ip daddr @resolvers meta l4proto { tcp, udp } th dport 53 accept",
                "ip daddr @site drop",
            ]
        );
        assert!(rules.contains("set resolvers { type ipv4_addr; elements = { 10.0.0.53 } }"));
        assert!(
            rules.contains("elements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10,"),
            "{rules}"
        );
        assert!(rules.contains("masquerade to :1024-65535"), "{rules}");
        let a0 = veth_name("a0");
        assert!(
            rules.contains(&format!("\"{a0}\" . 02:dc:ac:10:00:02 . 172.16.0.2")),
            "{rules}"
        );
        assert!(
            rules.contains("elements = { 172.16.0.1, 172.16.0.9 }"),
            "{rules}"
        );
        assert!(rules.contains("oifname \"host0\" masquerade"));
        assert!(rules.contains("iifname \"dkb*\" ip daddr 172.16.0.0/16 notrack"));
        assert!(
            rules.contains("elements = { \"dkb100\" . \"dkb100\", \"dkb101\" . \"dkb101\" }"),
            "{rules}"
        );
        assert!(rules.contains("set peers { type ipv4_addr; elements = { 10.0.0.12 } }"));
        // Only Docklet's own tables are ever deleted.
        for line in rules.lines().filter(|l| l.starts_with("delete")) {
            assert!(line.ends_with(" docklet"), "{line}");
        }
        let alice = &plan(&v, "tb1").users["alice"];
        let more = ruleset_additions(alice, &alice.vnodes[0]);
        assert!(
            more.contains(&format!(
                "ports {{ \"{a0}\" . 02:dc:ac:10:00:02 . 172.16.0.2 }}"
            )),
            "{more}"
        );
        assert!(
            more.contains("own_bridges { \"dkb100\" . \"dkb100\" }"),
            "{more}"
        );
        // With nothing to carry, the sets are empty but valid.
        let empty = ruleset(&HostPlan::default(), &ctx);
        assert!(empty.contains("set ports { type ifname . ether_addr . ipv4_addr;  }"));
    }
}
