//! The D-Bus records through the wire and back (encoded with zbus, decoded, converted to the
//! model again), and the strict reading of patches.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zbus::wire::serialized::Context;
use zbus::wire::{LE, to_bytes};
use zbus::{OwnedVariant, Type, Variant};

use super::images::{ImageRow, SystemImageRow};
use super::records::{GroupRow, NetworkRow, VNodeEntryRow};
use super::*;
use crate::model::image::{ImageRecord, ImageVersion, Pending};
use crate::model::quota::{Group, default_groups};
use crate::model::system_image::{BuildState, HostVersion, SystemImageBuild, SystemImageUpdate};
use crate::model::vnode::{DesiredState, Handoff, Phase, VNodeSpec, VNodeStatus};

/// Encodes `value` as a method's body would carry it and decodes it again.
fn through_the_wire<T: Serialize + DeserializeOwned + Type>(value: &T) -> T {
    let bytes = to_bytes(Context::new(LE, 0), value).unwrap();
    bytes.deserialize::<T>().unwrap().0
}

/// A patch as the daemon receives it: encoded by the caller, decoded as a plain `a{sv}`.
fn received<T: Serialize + Type>(patch: &T) -> VariantDict {
    let bytes = to_bytes(Context::new(LE, 0), patch).unwrap();
    bytes.deserialize::<VariantDict>().unwrap().0
}

fn dict(entries: Vec<(&str, Variant<'static>)>) -> VariantDict {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), OwnedVariant::try_from(v).unwrap()))
        .collect()
}

fn layer() -> ImageVersion {
    ImageVersion {
        version: "1700000000-0badcafe".into(),
        base: "base".into(),
        bytes: 3 << 20,
        sha256: "ab".repeat(32),
        saved_at: 1_700_000_000,
        saved_from: "alice-web-0".into(),
    }
}

/// The signatures the doc comments and docs/api.md state.
#[test]
fn records_have_the_documented_signatures() {
    let signatures = [
        (
            records::UserRow::SIGNATURE,
            "(ssbss(tttuutut)(tttuuut)(utt))",
        ),
        (records::HostLoadRow::SIGNATURE, "(sasutt(tttuuut)bsass)"),
        (records::PortRow::SIGNATURE, "(ssuqqtssb)"),
        (
            records::ClusterRow::SIGNATURE,
            "(ssss(utt)ta(ussssssutts)tt)",
        ),
        (SystemImageRow::SIGNATURE, "(ssba(ssa{sv})a{sv})"),
        (images::PendingRow::SIGNATURE, "(ssstttstb)"),
        (images::BuildRow::SIGNATURE, "(sssstst)"),
        (images::SystemImageUpdateRow::SIGNATURE, "(sss(sststs)st)"),
    ];
    for (signature, documented) in signatures {
        assert_eq!(signature.to_string(), documented);
    }
}

#[test]
fn a_group_goes_through_the_wire_whole() {
    let mut group = default_groups().remove(0);
    group.egress_allow = vec![
        "10.0.0.0/8".parse().unwrap(),
        "192.168.1.5:443".parse().unwrap(),
    ];
    let row = through_the_wire(&GroupRow::from(group.clone()));
    assert_eq!(GroupRow::SIGNATURE.to_string(), "(sb(tttuutut)(utt)as)");
    assert_eq!(row.egress_allow, ["10.0.0.0/8", "192.168.1.5/32:443"]);
    assert_eq!(Group::try_from(row).unwrap(), group);
}

#[test]
fn an_image_keeps_its_optional_parts() {
    let saving = ImageRecord {
        owner: "alice".into(),
        name: "web".into(),
        description: "nginx\nand more".into(),
        public: true,
        created_at: 1_700_000_000,
        current: Some(layer()),
        pending: Some(Pending::Saving {
            vnode: "alice-web-0".into(),
            host: "tb2".into(),
            requested_at: 1_700_000_100,
            max_bytes: 1 << 30,
            written_bytes: 1 << 20,
            description: "next".into(),
        }),
        last_error: Some("disk full".into()),
    };
    let deleting = ImageRecord {
        current: None,
        pending: Some(Pending::Deleting {
            since: 5,
            confirmed: true,
        }),
        last_error: None,
        ..saving.clone()
    };
    assert_eq!(ImageRow::SIGNATURE.to_string(), "(ssssbtsta{sv})");
    for record in [saving, deleting] {
        let row = through_the_wire(&ImageRow::from(record.clone()));
        assert_eq!(row.reference, "alice/web");
        assert_eq!(row.state, record.state());
        assert_eq!(ImageRecord::try_from(row).unwrap(), record);
    }
}

#[test]
fn a_system_image_keeps_its_update_and_builds() {
    let build = |state| SystemImageBuild {
        host: "tb1".into(),
        version: "20261129T130101Z".into(),
        state,
        updated_at: 9,
    };
    let hosts = vec![
        HostVersion {
            host: "tb1".into(),
            current: "20261101T000000Z".into(),
            build: Some(build(BuildState::Building {
                step: "copying".into(),
                since: 7,
            })),
        },
        HostVersion {
            host: "tb2".into(),
            current: "20261129T130101Z".into(),
            build: Some(build(BuildState::Failed {
                error: "no space".into(),
            })),
        },
        HostVersion {
            host: "tb3".into(),
            current: "20261129T130101Z".into(),
            build: None,
        },
    ];
    let update = SystemImageUpdate {
        name: "base".into(),
        version: "20261129T130101Z".into(),
        from: "alice/web".into(),
        layer: layer(),
        requested_by: "root".into(),
        requested_at: 6,
    };
    let row = SystemImageRow {
        name: "base".into(),
        state: "updating".into(),
        settled: false,
        hosts: hosts.clone().into_iter().map(Into::into).collect(),
        optional: images::SystemImageOptional {
            update: Some(update.clone().into()),
        },
    };
    let back = through_the_wire(&row);
    assert_eq!(back, row);
    let hosts_back: Vec<HostVersion> = back
        .hosts
        .into_iter()
        .map(|h| h.try_into().unwrap())
        .collect();
    assert_eq!(hosts_back, hosts);
    assert_eq!(
        back.optional.update.map(SystemImageUpdate::from),
        Some(update)
    );
}

fn spec() -> VNodeSpec {
    VNodeSpec {
        id: "alice-web-0".into(),
        user: "alice".into(),
        cluster: "web".into(),
        index: 0,
        image: "base".into(),
        cpu_millis: 500,
        memory_bytes: 1 << 30,
        disk_bytes: 4 << 30,
        tasks: 512,
        state: DesiredState::Exported,
        address: Some("10.200.0.2".parse().unwrap()),
        handoff: Some(Handoff {
            token: "t".repeat(24),
            from: "tb1".into(),
            resume: DesiredState::Running,
        }),
        task: None,
    }
}

#[test]
fn a_vnode_entry_keeps_spec_and_status_and_their_absent_fields() {
    let status = VNodeStatus {
        id: "alice-web-0".into(),
        host: "tb2".into(),
        phase: Phase::Running,
        reason: Some("restarted".into()),
        unit: "docklet-vnode@alice-web-0.service".into(),
        leader_pid: Some(4242),
        booted_at: Some(1_700_000_000),
        boot_ms: Some(900),
        net_us: None,
        uid_base: Some(1 << 20),
        image_version: None,
        restarts: 2,
        task: None,
        updated_at: 1_700_000_001,
    };
    assert_eq!(VNodeEntryRow::SIGNATURE.to_string(), "(sa{sv}a{sv})");
    let bare = VNodeSpec {
        address: None,
        handoff: None,
        task: None,
        state: DesiredState::Running,
        ..spec()
    };
    for (spec, status) in [(spec(), Some(status)), (bare, None)] {
        let row = VNodeEntryRow::new("tb2".into(), spec.clone(), status.clone());
        let back = through_the_wire(&row).into_parts().unwrap();
        assert_eq!(back, ("tb2".to_owned(), spec, status));
    }
    // Absent means absent on the wire: no key, not an empty value.
    let empty = received(&VNodeEntryRow::new("tb2".into(), spec(), None).status);
    assert!(empty.is_empty(), "{empty:?}");
}

#[test]
fn a_network_row_carries_its_address_map() {
    let row = NetworkRow {
        user: "alice".into(),
        vni: 4097,
        blocks: vec!["10.200.0.0/28".into()],
        gateway: "10.200.0.1".into(),
        capacity: 12,
        quota: 8,
        addresses: [("10.200.0.2".to_owned(), "alice-web-0".to_owned())].into(),
    };
    assert_eq!(NetworkRow::SIGNATURE.to_string(), "(suassuua{ss})");
    assert_eq!(through_the_wire(&row), row);
}

#[test]
fn patches_are_read_back_as_they_were_built() {
    let user = UserPatchDict {
        status: Some("locked".into()),
        ..UserPatchDict::default()
    };
    assert_eq!(UserPatchDict::from_dict(received(&user)).unwrap(), user);
    let group = GroupPatchDict {
        admin: Some(true),
        quota: Some(QuotaPatchDict {
            vnodes: Some(4),
            memory_bytes: Some(1 << 30),
            ..QuotaPatchDict::default()
        }),
        defaults: Some(records::NodeSizeRow {
            cpu_millis: 500,
            memory_bytes: 1 << 29,
            disk_bytes: 1 << 32,
        }),
        egress_allow: Some(vec![]),
    };
    assert_eq!(GroupPatchDict::from_dict(received(&group)).unwrap(), group);
    assert_eq!(
        GroupPatchDict::from_dict(HashMap::new()).unwrap(),
        GroupPatchDict::default()
    );
}

fn refusal(result: Result<impl std::fmt::Debug, BusError>) -> String {
    match result {
        Err(BusError::InvalidArgument(message)) => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn patches_with_unknown_keys_or_wrong_types_are_refused_naming_the_key() {
    let unknown = refusal(UserPatchDict::from_dict(dict(vec![
        ("group", Variant::from("g2")),
        ("shell", Variant::from("/bin/sh")),
    ])));
    assert!(unknown.contains("\"shell\""), "{unknown}");
    let wrong = refusal(UserPatchDict::from_dict(dict(vec![(
        "status",
        Variant::from(1u32),
    )])));
    assert!(
        wrong.starts_with("status:") && wrong.contains("type s"),
        "{wrong}"
    );

    let wrong = refusal(GroupPatchDict::from_dict(dict(vec![(
        "admin",
        Variant::from("yes"),
    )])));
    assert!(wrong.starts_with("admin:"), "{wrong}");
    let quota = |entries| Variant::from(dict(entries));
    let nested = refusal(GroupPatchDict::from_dict(dict(vec![(
        "quota",
        quota(vec![("vnodes", Variant::from(4u64))]),
    )])));
    assert!(
        nested.starts_with("quota.vnodes:") && nested.contains("type u"),
        "{nested}"
    );
    let nested = refusal(GroupPatchDict::from_dict(dict(vec![(
        "quota",
        quota(vec![("cpus", Variant::from(4u64))]),
    )])));
    assert!(nested.contains("\"quota.cpus\""), "{nested}");
    let shape = refusal(GroupPatchDict::from_dict(dict(vec![(
        "defaults",
        Variant::from(4u32),
    )])));
    assert!(
        shape.starts_with("defaults:") && shape.contains("(utt)"),
        "{shape}"
    );
}
