//! The records the admin methods return, as D-Bus values `busctl` prints readably: a struct
//! per row with fixed fields, arrays of them for lists, and `a{sv}` where a field may be
//! absent. D-Bus has no optional values, so each type says how "none" travels: an empty
//! string, or a key missing from an `a{sv}`. Conversions from and to the model's types are
//! here; the master's views (which this layer may not import) convert in `master::bus`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zbus::{DeserializeDict, SerializeDict, Type};

use super::BusError;
use super::dict::{enum_text, parse_enum, parse_non_empty};
use crate::model::egress::EgressRule;
use crate::model::quota::{Group, NodeSize, Quota, Usage};
use crate::model::vnode::{DesiredState, Handoff, Phase, VNodeSpec, VNodeStatus};

/// A group's limits: `(cpu_millis, memory_bytes, disk_bytes, vnodes, images, image_bytes,
/// port_mappings, idle_secs)`, `(tttuutut)`; `idle_secs` 0 is never.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct QuotaRow {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub vnodes: u32,
    pub images: u32,
    pub image_bytes: u64,
    pub port_mappings: u32,
    pub idle_secs: u64,
}

impl From<Quota> for QuotaRow {
    fn from(q: Quota) -> Self {
        QuotaRow {
            cpu_millis: q.cpu_millis,
            memory_bytes: q.memory_bytes,
            disk_bytes: q.disk_bytes,
            vnodes: q.vnodes,
            images: q.images,
            image_bytes: q.image_bytes,
            port_mappings: q.port_mappings,
            idle_secs: q.idle_secs,
        }
    }
}

impl From<QuotaRow> for Quota {
    fn from(q: QuotaRow) -> Self {
        Quota {
            cpu_millis: q.cpu_millis,
            memory_bytes: q.memory_bytes,
            disk_bytes: q.disk_bytes,
            vnodes: q.vnodes,
            images: q.images,
            image_bytes: q.image_bytes,
            port_mappings: q.port_mappings,
            idle_secs: q.idle_secs,
        }
    }
}

/// What a user holds (or a host has allocated): `(cpu_millis, memory_bytes, disk_bytes,
/// vnodes, port_mappings, images, image_bytes)`, `(tttuuut)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UsageRow {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub vnodes: u32,
    pub port_mappings: u32,
    pub images: u32,
    pub image_bytes: u64,
}

impl From<Usage> for UsageRow {
    fn from(u: Usage) -> Self {
        UsageRow {
            cpu_millis: u.cpu_millis,
            memory_bytes: u.memory_bytes,
            disk_bytes: u.disk_bytes,
            vnodes: u.vnodes,
            port_mappings: u.port_mappings,
            images: u.images,
            image_bytes: u.image_bytes,
        }
    }
}

impl From<UsageRow> for Usage {
    fn from(u: UsageRow) -> Self {
        Usage {
            cpu_millis: u.cpu_millis,
            memory_bytes: u.memory_bytes,
            disk_bytes: u.disk_bytes,
            vnodes: u.vnodes,
            port_mappings: u.port_mappings,
            images: u.images,
            image_bytes: u.image_bytes,
        }
    }
}

/// One vnode's size: `(cpu_millis, memory_bytes, disk_bytes)`, `(utt)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NodeSizeRow {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl From<NodeSize> for NodeSizeRow {
    fn from(s: NodeSize) -> Self {
        NodeSizeRow {
            cpu_millis: s.cpu_millis,
            memory_bytes: s.memory_bytes,
            disk_bytes: s.disk_bytes,
        }
    }
}

impl From<NodeSizeRow> for NodeSize {
    fn from(s: NodeSizeRow) -> Self {
        NodeSize {
            cpu_millis: s.cpu_millis,
            memory_bytes: s.memory_bytes,
            disk_bytes: s.disk_bytes,
        }
    }
}

/// A group: `(name, admin, quota, defaults, egress_allow)`, `(sb(tttuutut)(utt)as)`;
/// `egress_allow` holds rules as `docklet-admin group egress` takes them (`10.0.0.0/8`,
/// `192.168.1.5/32:443`), empty for none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct GroupRow {
    pub name: String,
    pub admin: bool,
    pub quota: QuotaRow,
    pub defaults: NodeSizeRow,
    pub egress_allow: Vec<String>,
}

impl From<Group> for GroupRow {
    fn from(g: Group) -> Self {
        GroupRow {
            name: g.name,
            admin: g.admin,
            quota: g.quota.into(),
            defaults: g.defaults.into(),
            egress_allow: g.egress_allow.iter().map(ToString::to_string).collect(),
        }
    }
}

impl TryFrom<GroupRow> for Group {
    type Error = BusError;
    fn try_from(g: GroupRow) -> Result<Self, BusError> {
        Ok(Group {
            name: g.name,
            admin: g.admin,
            quota: g.quota.into(),
            defaults: g.defaults.into(),
            egress_allow: parse_rules(&g.egress_allow)?,
            batch: Default::default(),
        })
    }
}

/// Egress rules from their text; refused naming the rule.
pub fn parse_rules(rules: &[String]) -> Result<Vec<EgressRule>, BusError> {
    rules
        .iter()
        .map(|r| {
            r.parse()
                .map_err(|e| BusError::InvalidArgument(format!("egress_allow: {e}")))
        })
        .collect()
}

/// An account with its group's quota and its usage: `(user, group, admin, status, auth,
/// quota, usage, defaults)`, `(ssbss(tttuutut)(tttuuut)(utt))`; `status` is `applying`,
/// `normal` or `locked`, `auth` is `local` or `pam`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UserRow {
    pub user: String,
    pub group: String,
    pub admin: bool,
    pub status: String,
    pub auth: String,
    pub quota: QuotaRow,
    pub usage: UsageRow,
    pub defaults: NodeSizeRow,
}

/// A host as the scheduler sees it: `(name, addresses, cpus, memory_bytes, disk_free_bytes,
/// allocated, draining, drain_note, images, version)`, `(sasutt(tttuuut)bsass)`;
/// `drain_note` is empty unless the host is draining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct HostLoadRow {
    pub name: String,
    pub addresses: Vec<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_free_bytes: u64,
    pub allocated: UsageRow,
    pub draining: bool,
    pub drain_note: String,
    pub images: Vec<String>,
    pub version: String,
}

/// A port mapping: `(user, cluster, node, port, public_port, created_at, vnode, address,
/// forwarding)`, `(ssuqqtssb)`; `address` is where to connect (`host:public_port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PortRow {
    pub user: String,
    pub cluster: String,
    pub node: u32,
    pub port: u16,
    pub public_port: u16,
    pub created_at: u64,
    pub vnode: String,
    pub address: String,
    pub forwarding: bool,
}

/// A batch job: `(id, user, name, state, reason, submitted_at, ended_at, counts, position)`,
/// `(tsssstta{su}u)`; `reason` is empty when there is none, `ended_at` and `position` 0 when
/// not ended or not queued, `counts` the number of instances in each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct JobRow {
    pub id: u64,
    pub user: String,
    pub name: String,
    pub state: String,
    pub reason: String,
    pub submitted_at: u64,
    pub ended_at: u64,
    pub counts: BTreeMap<String, u32>,
    pub position: u32,
}

/// A user's network: `(user, vni, blocks, gateway, capacity, quota, addresses)`,
/// `(suassuua{ss})`; `gateway` is empty while the network has no block, `addresses` maps an
/// address to the vnode holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NetworkRow {
    pub user: String,
    pub vni: u32,
    pub blocks: Vec<String>,
    pub gateway: String,
    pub capacity: u32,
    pub quota: u32,
    pub addresses: BTreeMap<String, String>,
}

/// A vnode move in progress: `(token, from, resume)`, `(sss)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct HandoffRow {
    pub token: String,
    pub from: String,
    pub resume: String,
}

/// A vnode's spec as `a{sv}`: `id`, `user`, `cluster`, `image`, `state` (s), `index`,
/// `cpu_millis`, `tasks` (u), `memory_bytes`, `disk_bytes` (t); `address` (s) and `handoff`
/// (`(sss)`) only when set.
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct VNodeSpecDict {
    pub id: String,
    pub user: String,
    pub cluster: String,
    pub index: u32,
    pub image: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub tasks: u32,
    pub state: String,
    pub address: Option<String>,
    pub handoff: Option<HandoffRow>,
}

impl From<VNodeSpec> for VNodeSpecDict {
    fn from(s: VNodeSpec) -> Self {
        VNodeSpecDict {
            state: enum_text(&s.state),
            address: s.address.map(|a| a.to_string()),
            handoff: s.handoff.map(|h| HandoffRow {
                token: h.token,
                from: h.from,
                resume: enum_text(&h.resume),
            }),
            id: s.id,
            user: s.user,
            cluster: s.cluster,
            index: s.index,
            image: s.image,
            cpu_millis: s.cpu_millis,
            memory_bytes: s.memory_bytes,
            disk_bytes: s.disk_bytes,
            tasks: s.tasks,
        }
    }
}

impl TryFrom<VNodeSpecDict> for VNodeSpec {
    type Error = BusError;
    fn try_from(s: VNodeSpecDict) -> Result<Self, BusError> {
        let handoff = match s.handoff {
            None => None,
            Some(h) => Some(Handoff {
                resume: parse_enum::<DesiredState>("handoff.resume", &h.resume)?,
                token: h.token,
                from: h.from,
            }),
        };
        Ok(VNodeSpec {
            state: parse_enum("state", &s.state)?,
            address: parse_non_empty("address", s.address.as_deref().unwrap_or(""))?,
            handoff,
            task: None,
            id: s.id,
            user: s.user,
            cluster: s.cluster,
            index: s.index,
            image: s.image,
            cpu_millis: s.cpu_millis,
            memory_bytes: s.memory_bytes,
            disk_bytes: s.disk_bytes,
            tasks: s.tasks,
        })
    }
}

/// What a vnode's worker last reported, as `a{sv}`: empty before the first report; else
/// `id`, `host`, `phase`, `unit` (s), `restarts` (u), `updated_at` (t), and when known
/// `reason`, `image_version` (s), `leader_pid`, `uid_base` (u), `booted_at`, `boot_ms`,
/// `net_us` (t).
#[derive(Debug, Clone, PartialEq, Eq, Default, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct VNodeStatusDict {
    pub id: Option<String>,
    pub host: Option<String>,
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub unit: Option<String>,
    pub leader_pid: Option<u32>,
    pub booted_at: Option<u64>,
    pub boot_ms: Option<u64>,
    pub net_us: Option<u64>,
    pub uid_base: Option<u32>,
    pub image_version: Option<String>,
    pub restarts: Option<u32>,
    pub updated_at: Option<u64>,
}

impl From<Option<VNodeStatus>> for VNodeStatusDict {
    fn from(status: Option<VNodeStatus>) -> Self {
        let Some(s) = status else {
            return VNodeStatusDict::default();
        };
        VNodeStatusDict {
            id: Some(s.id),
            host: Some(s.host),
            phase: Some(s.phase.as_str().to_owned()),
            reason: s.reason,
            unit: Some(s.unit),
            leader_pid: s.leader_pid,
            booted_at: s.booted_at,
            boot_ms: s.boot_ms,
            net_us: s.net_us,
            uid_base: s.uid_base,
            image_version: s.image_version,
            restarts: Some(s.restarts),
            updated_at: Some(s.updated_at),
        }
    }
}

impl TryFrom<VNodeStatusDict> for Option<VNodeStatus> {
    type Error = BusError;
    fn try_from(s: VNodeStatusDict) -> Result<Self, BusError> {
        let Some(id) = s.id else {
            return Ok(None);
        };
        let missing = |key: &str| BusError::InvalidArgument(format!("vnode status without {key}"));
        Ok(Some(VNodeStatus {
            id,
            host: s.host.ok_or_else(|| missing("host"))?,
            phase: parse_enum::<Phase>("phase", s.phase.as_deref().unwrap_or(""))?,
            reason: s.reason,
            unit: s.unit.ok_or_else(|| missing("unit"))?,
            leader_pid: s.leader_pid,
            booted_at: s.booted_at,
            boot_ms: s.boot_ms,
            net_us: s.net_us,
            uid_base: s.uid_base,
            image_version: s.image_version,
            restarts: s.restarts.unwrap_or(0),
            task: None,
            updated_at: s.updated_at.ok_or_else(|| missing("updated_at"))?,
        }))
    }
}

/// A vnode with its host, spec and last status: `(host, spec, status)`, `(sa{sv}a{sv})`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct VNodeEntryRow {
    pub host: String,
    pub spec: VNodeSpecDict,
    pub status: VNodeStatusDict,
}

impl VNodeEntryRow {
    pub fn new(host: String, spec: VNodeSpec, status: Option<VNodeStatus>) -> VNodeEntryRow {
        VNodeEntryRow {
            host,
            spec: spec.into(),
            status: status.into(),
        }
    }

    /// Host, spec and status back as the model's.
    pub fn into_parts(self) -> Result<(String, VNodeSpec, Option<VNodeStatus>), BusError> {
        Ok((
            self.host,
            self.spec.try_into()?,
            Option::<VNodeStatus>::try_from(self.status)?,
        ))
    }
}

/// A cluster's node: `(index, id, hostname, state, address, host, image, cpu_millis,
/// memory_bytes, disk_bytes, reason)`, `(ussssssutts)`; `address` and `reason` are empty
/// when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NodeRow {
    pub index: u32,
    pub id: String,
    pub hostname: String,
    pub state: String,
    pub address: String,
    pub host: String,
    pub image: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub reason: String,
}

/// A user's cluster: `(name, user, image, state, node_size, created_at, nodes,
/// idle_stopped_at, idle_secs)`, `(ssss(utt)ta(ussssssutts)tt)`; `idle_stopped_at` is 0
/// unless the cluster was stopped for being idle `idle_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ClusterRow {
    pub name: String,
    pub user: String,
    pub image: String,
    pub state: String,
    pub node_size: NodeSizeRow,
    pub created_at: u64,
    pub nodes: Vec<NodeRow>,
    pub idle_stopped_at: u64,
    pub idle_secs: u64,
}
