//! The master's views as the D-Bus records of [`crate::dbus_api`], both ways, and the D-Bus
//! patches as the actions' patches. They live here because `dbus_api` sits below the master
//! and may not name its types; `docklet-admin` turns the records back into the views it
//! prints, so both directions keep every field.

use crate::dbus_api::dict::{enum_text, parse_enum, parse_non_empty, text_or_empty};
use crate::dbus_api::records::{NodeRow, NodeSizeRow, parse_rules};
use crate::dbus_api::{
    BusError, ClusterRow, GroupPatchDict, HostLoadRow, ImageRow, JobRow, NetworkRow, PortRow,
    SystemImageRow, UserPatchDict, UserRow, VNodeEntryRow,
};
use crate::master::actions::images::ImageView;
use crate::master::actions::jobs::{JobSummary, JobView};
use crate::master::actions::ports::PortView;
use crate::master::actions::system_images::SystemImageView;
use crate::master::actions::{
    ClusterView, GroupPatch, HostView, Me, NodeView, QuotaPatch, UserNetworkView, UserPatch,
    VNodeEntry,
};
use crate::model::ports::PortMapping;

impl From<Me> for UserRow {
    fn from(me: Me) -> Self {
        UserRow {
            user: me.user,
            group: me.group,
            admin: me.admin,
            status: me.status.as_str().to_owned(),
            auth: enum_text(&me.auth),
            quota: me.quota.into(),
            usage: me.usage.into(),
            defaults: me.defaults.into(),
        }
    }
}

impl TryFrom<UserRow> for Me {
    type Error = BusError;
    fn try_from(row: UserRow) -> Result<Self, BusError> {
        Ok(Me {
            status: parse_enum("status", &row.status)?,
            auth: parse_enum("auth", &row.auth)?,
            user: row.user,
            group: row.group,
            admin: row.admin,
            quota: row.quota.into(),
            usage: row.usage.into(),
            defaults: row.defaults.into(),
        })
    }
}

impl From<HostView> for HostLoadRow {
    fn from(h: HostView) -> Self {
        HostLoadRow {
            name: h.name,
            addresses: h.addresses,
            cpus: h.cpus,
            memory_bytes: h.memory_bytes,
            disk_free_bytes: h.disk_free_bytes,
            allocated: h.allocated.into(),
            draining: h.draining,
            drain_note: h.drain_note.unwrap_or_default(),
            images: h.images,
            version: h.version,
        }
    }
}

impl From<HostLoadRow> for HostView {
    fn from(h: HostLoadRow) -> Self {
        HostView {
            name: h.name,
            addresses: h.addresses,
            cpus: h.cpus,
            memory_bytes: h.memory_bytes,
            disk_free_bytes: h.disk_free_bytes,
            allocated: h.allocated.into(),
            draining: h.draining,
            drain_note: (!h.drain_note.is_empty()).then_some(h.drain_note),
            images: h.images,
            version: h.version,
        }
    }
}

impl From<JobSummary> for JobRow {
    fn from(j: JobSummary) -> Self {
        JobRow {
            id: j.id,
            user: j.user,
            name: j.name,
            state: enum_text(&j.state),
            reason: text_or_empty(j.reason),
            submitted_at: j.submitted_at,
            ended_at: j.ended_at.unwrap_or(0),
            counts: j.counts.into_iter().collect(),
            position: j.position.map_or(0, |p| p as u32),
        }
    }
}

impl From<JobView> for JobRow {
    fn from(j: JobView) -> Self {
        j.summary.into()
    }
}

impl TryFrom<JobRow> for JobSummary {
    type Error = BusError;
    fn try_from(j: JobRow) -> Result<Self, BusError> {
        Ok(JobSummary {
            id: j.id,
            name: j.name,
            user: j.user,
            // The row does not carry it: the listing is by user.
            group: String::new(),
            state: parse_enum("state", &j.state)?,
            reason: (!j.reason.is_empty()).then_some(j.reason),
            submitted_at: j.submitted_at,
            ended_at: (j.ended_at != 0).then_some(j.ended_at),
            held: j.state == "held",
            counts: j.counts.into_iter().collect(),
            position: (j.position != 0).then_some(j.position as usize),
            eta: None,
        })
    }
}

impl From<PortView> for PortRow {
    fn from(p: PortView) -> Self {
        PortRow {
            user: p.mapping.user,
            cluster: p.mapping.cluster,
            node: p.mapping.node,
            port: p.mapping.port,
            public_port: p.mapping.public_port,
            created_at: p.mapping.created_at,
            vnode: p.vnode,
            address: p.address,
            forwarding: p.forwarding,
        }
    }
}

impl From<PortRow> for PortView {
    fn from(p: PortRow) -> Self {
        PortView {
            mapping: PortMapping {
                user: p.user,
                cluster: p.cluster,
                node: p.node,
                port: p.port,
                public_port: p.public_port,
                created_at: p.created_at,
            },
            vnode: p.vnode,
            address: p.address,
            forwarding: p.forwarding,
        }
    }
}

impl From<ImageView> for ImageRow {
    fn from(view: ImageView) -> Self {
        // The view's derived fields as the master computed them, not recomputed.
        ImageRow {
            reference: view.reference,
            state: view.state,
            bytes: view.bytes,
            ..ImageRow::from(view.record)
        }
    }
}

impl TryFrom<ImageRow> for ImageView {
    type Error = BusError;
    fn try_from(row: ImageRow) -> Result<Self, BusError> {
        Ok(ImageView {
            reference: row.reference.clone(),
            state: row.state.clone(),
            bytes: row.bytes,
            record: row.try_into()?,
        })
    }
}

impl From<SystemImageView> for SystemImageRow {
    fn from(v: SystemImageView) -> Self {
        SystemImageRow {
            name: v.name,
            state: v.state,
            settled: v.settled,
            hosts: v.hosts.into_iter().map(Into::into).collect(),
            optional: crate::dbus_api::images::SystemImageOptional {
                update: v.update.map(Into::into),
            },
        }
    }
}

impl TryFrom<SystemImageRow> for SystemImageView {
    type Error = BusError;
    fn try_from(row: SystemImageRow) -> Result<Self, BusError> {
        Ok(SystemImageView {
            name: row.name,
            state: row.state,
            settled: row.settled,
            hosts: row
                .hosts
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            update: row.optional.update.map(Into::into),
        })
    }
}

impl From<VNodeEntry> for VNodeEntryRow {
    fn from(e: VNodeEntry) -> Self {
        VNodeEntryRow::new(e.host, e.spec, e.status)
    }
}

impl TryFrom<VNodeEntryRow> for VNodeEntry {
    type Error = BusError;
    fn try_from(row: VNodeEntryRow) -> Result<Self, BusError> {
        let (host, spec, status) = row.into_parts()?;
        Ok(VNodeEntry { host, spec, status })
    }
}

impl From<UserNetworkView> for NetworkRow {
    fn from(n: UserNetworkView) -> Self {
        NetworkRow {
            user: n.user,
            vni: n.vni,
            blocks: n.blocks.iter().map(ToString::to_string).collect(),
            gateway: text_or_empty(n.gateway),
            capacity: n.capacity,
            quota: n.quota,
            addresses: n.addresses,
        }
    }
}

impl TryFrom<NetworkRow> for UserNetworkView {
    type Error = BusError;
    fn try_from(n: NetworkRow) -> Result<Self, BusError> {
        Ok(UserNetworkView {
            blocks: n
                .blocks
                .iter()
                .map(|b| {
                    b.parse()
                        .map_err(|e| BusError::InvalidArgument(format!("blocks {b:?}: {e}")))
                })
                .collect::<Result<_, _>>()?,
            gateway: parse_non_empty("gateway", &n.gateway)?,
            user: n.user,
            vni: n.vni,
            capacity: n.capacity,
            quota: n.quota,
            addresses: n.addresses,
        })
    }
}

impl From<NodeView> for NodeRow {
    fn from(n: NodeView) -> Self {
        NodeRow {
            index: n.index,
            id: n.id,
            hostname: n.hostname,
            state: enum_text(&n.state),
            address: text_or_empty(n.address),
            host: n.host,
            image: n.image,
            cpu_millis: n.cpu_millis,
            memory_bytes: n.memory_bytes,
            disk_bytes: n.disk_bytes,
            reason: n.reason.unwrap_or_default(),
        }
    }
}

impl From<ClusterView> for ClusterRow {
    fn from(c: ClusterView) -> Self {
        ClusterRow {
            name: c.name,
            user: c.user,
            image: c.image,
            state: enum_text(&c.state),
            node_size: NodeSizeRow::from(c.node_size),
            created_at: c.created_at,
            nodes: c.nodes.into_iter().map(Into::into).collect(),
            idle_stopped_at: c.idle_stop.map_or(0, |s| s.at),
            idle_secs: c.idle_stop.map_or(0, |s| s.idle_secs),
        }
    }
}

impl TryFrom<UserPatchDict> for UserPatch {
    type Error = BusError;
    fn try_from(p: UserPatchDict) -> Result<Self, BusError> {
        Ok(UserPatch {
            group: p.group,
            status: p.status.map(|s| parse_enum("status", &s)).transpose()?,
            password: p.password,
            // An administrator sets a password without knowing the old one.
            current_password: None,
        })
    }
}

impl TryFrom<GroupPatchDict> for GroupPatch {
    type Error = BusError;
    fn try_from(p: GroupPatchDict) -> Result<Self, BusError> {
        Ok(GroupPatch {
            admin: p.admin,
            quota: p.quota.map(|q| QuotaPatch {
                cpu_millis: q.cpu_millis,
                memory_bytes: q.memory_bytes,
                disk_bytes: q.disk_bytes,
                vnodes: q.vnodes,
                images: q.images,
                image_bytes: q.image_bytes,
                port_mappings: q.port_mappings,
                idle_secs: q.idle_secs,
            }),
            defaults: p.defaults.map(Into::into),
            egress_allow: p.egress_allow.as_deref().map(parse_rules).transpose()?,
            batch: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use zbus::Type;
    use zbus::wire::serialized::Context;
    use zbus::wire::{LE, to_bytes};

    use super::*;
    use crate::model::account::{AccountStatus, AuthMethod};
    use crate::model::image::ImageRecord;
    use crate::model::quota::{Usage, default_groups};
    use crate::model::vnode::{DesiredState, VNodeSpec};

    /// `view` as a D-Bus record, encoded, decoded and made a view again: `docklet-admin`'s
    /// path. Its JSON (what `--json` prints) must not change on the way.
    fn through_the_bus<V, R>(view: V) -> V
    where
        V: Serialize + Clone + TryFrom<R, Error: std::fmt::Debug>,
        R: From<V> + Serialize + DeserializeOwned + Type,
    {
        let bytes = to_bytes(Context::new(LE, 0), &R::from(view.clone())).unwrap();
        let back = V::try_from(bytes.deserialize::<R>().unwrap().0).unwrap();
        let json = |v: &V| serde_json::to_string_pretty(v).unwrap();
        assert_eq!(json(&back), json(&view));
        back
    }

    #[test]
    fn the_views_docklet_admin_prints_survive_the_bus() {
        let group = default_groups().remove(0);
        through_the_bus::<Me, UserRow>(Me {
            user: "alice".into(),
            group: group.name.clone(),
            admin: false,
            status: AccountStatus::Applying,
            auth: AuthMethod::Pam,
            quota: group.quota.clone(),
            usage: Usage {
                vnodes: 2,
                ..Usage::default()
            },
            defaults: group.defaults,
        });
        let record = ImageRecord {
            owner: "alice".into(),
            name: "web".into(),
            description: String::new(),
            public: false,
            created_at: 1,
            current: None,
            pending: None,
            last_error: Some("no space".into()),
        };
        through_the_bus::<ImageView, ImageRow>(record.into());
        through_the_bus::<UserNetworkView, NetworkRow>(UserNetworkView {
            user: "alice".into(),
            vni: 4097,
            blocks: vec!["10.200.0.0/28".parse().unwrap()],
            gateway: Some("10.200.0.1".parse().unwrap()),
            capacity: 12,
            quota: 8,
            addresses: [("10.200.0.2".to_owned(), "alice-web-0".to_owned())].into(),
        });
        // No block yet: no gateway, an empty string on the wire.
        through_the_bus::<UserNetworkView, NetworkRow>(UserNetworkView {
            user: "bob".into(),
            vni: 1,
            blocks: vec![],
            gateway: None,
            capacity: 0,
            quota: 0,
            addresses: Default::default(),
        });
        through_the_bus::<PortView, PortRow>(PortView {
            mapping: PortMapping {
                user: "alice".into(),
                cluster: "web".into(),
                node: 1,
                port: 80,
                public_port: 20001,
                created_at: 5,
            },
            vnode: "alice-web-1".into(),
            address: "example.org:20001".into(),
            forwarding: false,
        });
        through_the_bus::<VNodeEntry, VNodeEntryRow>(VNodeEntry {
            host: "tb2".into(),
            spec: VNodeSpec {
                id: "alice-web-1".into(),
                user: "alice".into(),
                cluster: "web".into(),
                index: 1,
                image: "alice/py".into(),
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 4 << 30,
                tasks: 512,
                state: DesiredState::Stopped,
                address: Some("10.200.0.3".parse().unwrap()),
                handoff: None,
                task: None,
            },
            status: None,
        });
    }

    #[test]
    fn an_empty_drain_note_is_none() {
        let view = HostView {
            name: "tb1".into(),
            addresses: vec!["10.213.0.11/24".into()],
            cpus: 2,
            memory_bytes: 1 << 30,
            disk_free_bytes: 1 << 33,
            allocated: Usage::default(),
            draining: true,
            drain_note: Some("3 vnode(s) left, 2 moving".into()),
            images: vec!["base".into()],
            version: "0.1.0".into(),
        };
        let row = HostLoadRow::from(view.clone());
        assert_eq!(HostView::from(row).drain_note, view.drain_note);
        let idle = HostLoadRow::from(HostView {
            draining: false,
            drain_note: None,
            ..view
        });
        assert_eq!(idle.drain_note, "");
        assert_eq!(HostView::from(idle).drain_note, None);
    }

    #[test]
    fn patches_become_the_actions_patches_or_are_refused_naming_the_field() {
        let patch = UserPatch::try_from(UserPatchDict {
            status: Some("locked".into()),
            ..UserPatchDict::default()
        })
        .unwrap();
        assert_eq!(patch.status, Some(AccountStatus::Locked));
        assert!(patch.current_password.is_none());
        let bad = UserPatch::try_from(UserPatchDict {
            status: Some("asleep".into()),
            ..UserPatchDict::default()
        });
        assert!(matches!(bad, Err(BusError::InvalidArgument(m)) if m.starts_with("status:")));
        let bad = GroupPatch::try_from(GroupPatchDict {
            egress_allow: Some(vec!["nowhere".into()]),
            ..GroupPatchDict::default()
        });
        assert!(matches!(bad, Err(BusError::InvalidArgument(m)) if m.starts_with("egress_allow:")));
        let patch = GroupPatch::try_from(GroupPatchDict {
            egress_allow: Some(vec!["10.0.0.0/8".into()]),
            ..GroupPatchDict::default()
        })
        .unwrap();
        assert_eq!(patch.egress_allow.map(|r| r.len()), Some(1));
        assert!(patch.quota.is_none() && patch.admin.is_none());
    }
}
