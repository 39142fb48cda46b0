//! Port mappings: a TCP port of a vnode published on a port of the masters' public address.
//! The record kept in etcd (`ports/<public_port>`), the configured range of public ports, the
//! rules a request must follow, the choice of a free public port, and which mappings the
//! masters listen for (those whose vnode runs).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::vcluster::{self, InputError};
use crate::model::vnode::Phase;

/// The public ports mappings may use, both ends included (`port_range` in the
/// configuration, written `"30000-30999"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    /// Below Linux's default ephemeral range (32768-60999), so outgoing connections of the
    /// master's host never hold one of these ports.
    fn default() -> Self {
        PortRange {
            first: 30000,
            last: 30999,
        }
    }
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("port range {text:?} must look like FIRST-LAST, e.g. 30000-30999");
        let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(format!(
                "port range {text:?} is empty: {first} comes after {last}"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<PortRange> for String {
    fn from(range: PortRange) -> String {
        range.to_string()
    }
}

/// One mapping, stored at `ports/<public_port>`: the key itself makes public ports unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortMapping {
    pub user: String,
    pub cluster: String,
    /// The node's index in its cluster (`host-<node>`).
    pub node: u32,
    /// The TCP port inside the vnode.
    pub port: u16,
    /// The port on the masters' public address.
    pub public_port: u16,
    /// Unix seconds.
    pub created_at: u64,
}

impl PortMapping {
    /// The id of the vnode the mapping leads to.
    pub fn vnode_id(&self) -> String {
        vcluster::node_id(&self.user, &self.cluster, self.node)
    }
}

fn invalid_port(field: &'static str, message: String) -> InputError {
    InputError {
        code: "invalid_port",
        field: field.into(),
        message,
    }
}

/// A port inside a vnode: 1 to 65535.
pub fn validate_vnode_port(port: u64) -> Result<u16, InputError> {
    match u16::try_from(port) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(invalid_port(
            "port",
            format!("port {port} is not a TCP port: use 1 to 65535"),
        )),
    }
}

/// A public port a user asks for by number: it must lie in the configured range.
pub fn validate_public_port(port: u64, range: &PortRange) -> Result<u16, InputError> {
    match u16::try_from(port) {
        Ok(port) if range.contains(port) => Ok(port),
        _ => Err(invalid_port(
            "public_port",
            format!("public port {port} is outside the range mappings use here: {range}"),
        )),
    }
}

/// A free public port of `range`, `pick(n)` choosing among the `n` free ones (randomly, so
/// that concurrent requests rarely race for the same port, and a port just given up is not
/// handed to someone else at once). `None` when every port is taken.
pub fn free_public_port(
    range: &PortRange,
    taken: &HashSet<u16>,
    pick: impl FnOnce(usize) -> usize,
) -> Option<u16> {
    let free: Vec<u16> = range.ports().filter(|p| !taken.contains(p)).collect();
    if free.is_empty() {
        return None;
    }
    Some(free[pick(free.len()) % free.len()])
}

/// The mappings a master listens for: those whose vnode runs (by its last reported phase)
/// and whose public port lies in this master's range, by public port.
pub fn listening(
    mappings: &BTreeMap<u16, PortMapping>,
    phases: &HashMap<String, Phase>,
    range: &PortRange,
) -> BTreeMap<u16, PortMapping> {
    mappings
        .iter()
        .filter(|(public, m)| {
            range.contains(**public) && phases.get(&m.vnode_id()).copied() == Some(Phase::Running)
        })
        .map(|(public, m)| (*public, m.clone()))
        .collect()
}

/// The host users reach a public port at: the configured `ports_host`, else the address the
/// request reached the master at, else the master's name. Never the portal's own name
/// (unless a site sets it so, which the configuration refuses): browsers send the portal's
/// cookies to every port of its host name, so a link to a mapped port under that name
/// would hand them to whatever the node serves.
pub fn public_host(
    ports_host: Option<&str>,
    reached: Option<std::net::IpAddr>,
    master: &str,
) -> String {
    if let Some(host) = ports_host {
        return host.to_owned();
    }
    match reached.map(|ip| ip.to_canonical()) {
        Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
        None => master.to_owned(),
    }
}

/// `host:port`, with the brackets an IPv6 literal already carries.
pub fn public_address(host: &str, public_port: u16) -> String {
    format!("{host}:{public_port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(user: &str, cluster: &str, node: u32, public_port: u16) -> PortMapping {
        PortMapping {
            user: user.into(),
            cluster: cluster.into(),
            node,
            port: 22,
            public_port,
            created_at: 1,
        }
    }

    #[test]
    fn ranges_parse_show_and_refuse_nonsense() {
        let range: PortRange = "30000-30999".parse().unwrap();
        assert_eq!(range, PortRange::default());
        assert_eq!(range.to_string(), "30000-30999");
        assert_eq!(range.len(), 1000);
        assert!(range.contains(30000) && range.contains(30999));
        assert!(!range.contains(29999) && !range.contains(31000));
        assert_eq!("40000-40000".parse::<PortRange>().unwrap().len(), 1);
        for bad in ["", "30000", "a-b", "30000-70000", "-1-5", "31000-30000"] {
            let err = bad.parse::<PortRange>().unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn vnode_ports_are_1_to_65535() {
        assert_eq!(validate_vnode_port(22).unwrap(), 22);
        assert_eq!(validate_vnode_port(65535).unwrap(), 65535);
        for bad in [0, 65536, u64::MAX] {
            let err = validate_vnode_port(bad).unwrap_err();
            assert_eq!((err.code, &*err.field), ("invalid_port", "port"));
            assert!(err.message.contains("1 to 65535"), "{err}");
        }
    }

    #[test]
    fn a_requested_public_port_lies_in_the_range() {
        let range = PortRange::default();
        assert_eq!(validate_public_port(30500, &range).unwrap(), 30500);
        for bad in [22, 8000, 29999, 31000, 70000] {
            let err = validate_public_port(bad, &range).unwrap_err();
            assert_eq!((err.code, &*err.field), ("invalid_port", "public_port"));
            assert!(err.message.contains("30000-30999"), "{err}");
        }
    }

    #[test]
    fn free_ports_skip_taken_ones_and_run_out() {
        let range: PortRange = "100-103".parse().unwrap();
        let taken: HashSet<u16> = [100, 102].into();
        assert_eq!(free_public_port(&range, &taken, |_| 0), Some(101));
        assert_eq!(free_public_port(&range, &taken, |n| n - 1), Some(103));
        // A picker out of bounds still lands on a free port.
        assert_eq!(free_public_port(&range, &taken, |_| 7), Some(103));
        let all: HashSet<u16> = range.ports().collect();
        assert_eq!(free_public_port(&range, &all, |_| 0), None);
    }

    #[test]
    fn masters_listen_only_for_running_vnodes_in_their_range() {
        let mappings: BTreeMap<u16, PortMapping> = [
            (30001, mapping("alice", "c1", 0, 30001)),
            (30002, mapping("alice", "c1", 1, 30002)),
            (30003, mapping("bob", "c1", 0, 30003)),
            (30004, mapping("carol", "web", 0, 30004)),
            (20000, mapping("dave", "c1", 0, 20000)),
        ]
        .into();
        let phases: HashMap<String, Phase> = [
            ("alice-c1-0".to_owned(), Phase::Running),
            ("alice-c1-1".to_owned(), Phase::Stopping),
            ("bob-c1-0".to_owned(), Phase::Stopped),
            ("dave-c1-0".to_owned(), Phase::Running),
        ]
        .into();
        let open = listening(&mappings, &phases, &PortRange::default());
        assert_eq!(open.keys().copied().collect::<Vec<_>>(), vec![30001]);
        assert_eq!(open[&30001].vnode_id(), "alice-c1-0");
    }

    #[test]
    fn the_public_host_is_the_ports_host_then_the_address_reached() {
        let v4 = Some("10.213.0.11".parse().unwrap());
        assert_eq!(
            public_host(Some("ports.example"), v4, "tb1"),
            "ports.example"
        );
        assert_eq!(public_host(None, v4, "tb1"), "10.213.0.11");
        let mapped = Some("::ffff:10.0.0.5".parse().unwrap());
        assert_eq!(public_host(None, mapped, "tb1"), "10.0.0.5");
        let v6 = Some("fd00::1".parse().unwrap());
        assert_eq!(public_host(None, v6, "tb1"), "[fd00::1]");
        assert_eq!(public_host(None, None, "tb1"), "tb1");
        assert_eq!(public_address("[fd00::1]", 30022), "[fd00::1]:30022");
    }
}
