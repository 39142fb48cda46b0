//! Groups, their quotas and what users hold against them: the records kept in etcd
//! (`groups/<name>`, `usage/<user>`), the groups `init` creates, the rules a group must follow,
//! and the admission check run before a user's vnodes grow.

use serde::{Deserialize, Serialize};

use crate::model::host::human_bytes;

const GIB: u64 = 1 << 30;

/// Additive amounts a user's vnodes hold. Stored per user in etcd as `usage/<user>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub vnodes: u32,
    /// The user's port mappings (always 0 in a host's allocation). Counted here, in the key
    /// every vnode create and removal already changes, so that the transaction that forgets
    /// a vnode also forgets its mappings and releases them.
    #[serde(default)]
    pub port_mappings: u32,
    /// The user's saved images, and the size of their layers (always 0 in a host's
    /// allocation).
    #[serde(default)]
    pub images: u32,
    #[serde(default)]
    pub image_bytes: u64,
}

impl Usage {
    /// What one vnode of `size` holds.
    pub fn of_node(size: &NodeSize) -> Usage {
        Usage {
            cpu_millis: size.cpu_millis.into(),
            memory_bytes: size.memory_bytes,
            disk_bytes: size.disk_bytes,
            vnodes: 1,
            ..Usage::default()
        }
    }

    pub fn plus(&self, other: &Usage) -> Usage {
        Usage {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
            vnodes: self.vnodes.saturating_add(other.vnodes),
            port_mappings: self.port_mappings.saturating_add(other.port_mappings),
            images: self.images.saturating_add(other.images),
            image_bytes: self.image_bytes.saturating_add(other.image_bytes),
        }
    }

    /// Saturates at zero: releasing more than is recorded (a record out of step with the
    /// vnodes) must not wrap around into a huge usage that locks the user out.
    pub fn minus(&self, other: &Usage) -> Usage {
        Usage {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(other.disk_bytes),
            vnodes: self.vnodes.saturating_sub(other.vnodes),
            port_mappings: self.port_mappings.saturating_sub(other.port_mappings),
            images: self.images.saturating_sub(other.images),
            image_bytes: self.image_bytes.saturating_sub(other.image_bytes),
        }
    }
}

/// The smallest cpu share of a vnode: a hundredth of a core.
pub const MIN_CPU_MILLIS: u32 = 10;
pub const MIN_MEMORY: u64 = 64 << 20;
pub const MIN_DISK: u64 = 64 << 20;

/// Per-vnode sizes (cpu in thousandths of a core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeSize {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// A group's limits. `cpu_millis`, `memory_bytes`, `disk_bytes` and `vnodes` are sums over all
/// of a member's vnodes; `images` and `port_mappings` are counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quota {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub vnodes: u32,
    pub images: u32,
    /// The total size of a member's saved images.
    #[serde(default = "default_image_bytes")]
    pub image_bytes: u64,
    pub port_mappings: u32,
    /// How long a cluster may stay idle before it is stopped, in seconds (0 = never).
    pub idle_secs: u64,
}

/// What groups written before images had a size limit get.
fn default_image_bytes() -> u64 {
    20 * GIB
}

/// Stored at `groups/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Group {
    pub name: String,
    /// Members are administrators.
    pub admin: bool,
    pub quota: Quota,
    /// Sizes a new node gets when the request names none.
    pub defaults: NodeSize,
    /// Destinations of the site its members' vnodes may reach besides what the site's egress
    /// policy allows everyone (`CIDR` or `ADDRESS`, optionally `:PORT` or `:FIRST-LAST`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub egress_allow: Vec<crate::model::egress::EgressRule>,
    /// What each member's batch jobs may hold at once, apart from `quota`.
    #[serde(default)]
    pub batch: BatchQuota,
}

/// A group's limits on each member's batch jobs: the nodes their running task instances hold
/// (sums, like [`Quota`]) and how many of their jobs may wait or run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct BatchQuota {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub vnodes: u32,
    /// Jobs not yet ended (queued, waiting or running).
    pub jobs: u32,
}

impl Default for BatchQuota {
    fn default() -> Self {
        BatchQuota {
            cpu_millis: 8000,
            memory_bytes: 16 * GIB,
            disk_bytes: 64 * GIB,
            vnodes: 16,
            jobs: 100,
        }
    }
}

impl BatchQuota {
    /// As a [`Quota`] for [`admit`]: nothing but the nodes' resources.
    pub fn as_quota(&self) -> Quota {
        Quota {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            disk_bytes: self.disk_bytes,
            vnodes: self.vnodes,
            images: 0,
            image_bytes: 0,
            port_mappings: 0,
            idle_secs: 0,
        }
    }
}

/// The group new users join.
pub const DEFAULT_GROUP: &str = "foundation";

/// The groups `init` creates, as the original Docklet had: `root` and `admin` (administrators),
/// `primary`, and `foundation` (the default for new users). All start with the same quota.
pub fn default_groups() -> Vec<Group> {
    let quota = Quota {
        cpu_millis: 4000,
        memory_bytes: 8 * GIB,
        disk_bytes: 40 * GIB,
        vnodes: 8,
        images: 10,
        image_bytes: default_image_bytes(),
        port_mappings: 8,
        idle_secs: 24 * 3600,
    };
    let defaults = NodeSize {
        cpu_millis: 1000,
        memory_bytes: GIB,
        disk_bytes: 4 * GIB,
    };
    [
        ("root", true),
        ("admin", true),
        ("primary", false),
        (DEFAULT_GROUP, false),
    ]
    .into_iter()
    .map(|(name, admin)| Group {
        name: name.to_owned(),
        admin,
        quota: quota.clone(),
        defaults,
        egress_allow: Vec::new(),
        batch: BatchQuota::default(),
    })
    .collect()
}

/// CPU for people: 4 cores, 2.5 cores, 0.25 cores, 1 core.
pub fn human_cores(millis: u64) -> String {
    let whole = millis / 1000;
    let number = match millis % 1000 {
        0 => whole.to_string(),
        frac => format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_owned(),
    };
    let unit = if millis == 1000 { "core" } else { "cores" };
    format!("{number} {unit}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("{resource} quota exceeded: {used} in use, {requested} requested, limit {limit}")]
    Exceeded {
        resource: &'static str,
        used: String,
        requested: String,
        limit: String,
    },
}

impl QuotaError {
    /// Which resource ran out: `vnodes`, `cpu`, `memory`, `disk`, `port mappings`, `images`
    /// or `image size`.
    pub fn resource(&self) -> &'static str {
        match self {
            QuotaError::Exceeded { resource, .. } => resource,
        }
    }
}

/// The usage after adding `add`, or the first resource (in the order vnodes, cpu, memory,
/// disk, port mappings, images, image size) it would exceed. A resource `add` does not grow is not checked, so a member left above
/// a lowered quota is only stopped from taking more of what is already over.
pub fn admit(quota: &Quota, usage: &Usage, add: &Usage) -> Result<Usage, QuotaError> {
    /// Resource name, in use, requested, limit, and how to show an amount of it.
    type Check = (&'static str, u64, u64, u64, fn(u64) -> String);
    let checks: [Check; 7] = [
        (
            "vnodes",
            u64::from(usage.vnodes),
            u64::from(add.vnodes),
            u64::from(quota.vnodes),
            |n| n.to_string(),
        ),
        (
            "cpu",
            usage.cpu_millis,
            add.cpu_millis,
            quota.cpu_millis,
            human_cores,
        ),
        (
            "memory",
            usage.memory_bytes,
            add.memory_bytes,
            quota.memory_bytes,
            human_bytes,
        ),
        (
            "disk",
            usage.disk_bytes,
            add.disk_bytes,
            quota.disk_bytes,
            human_bytes,
        ),
        (
            "port mappings",
            u64::from(usage.port_mappings),
            u64::from(add.port_mappings),
            u64::from(quota.port_mappings),
            |n| n.to_string(),
        ),
        (
            "images",
            u64::from(usage.images),
            u64::from(add.images),
            u64::from(quota.images),
            |n| n.to_string(),
        ),
        (
            "image size",
            usage.image_bytes,
            add.image_bytes,
            quota.image_bytes,
            human_bytes,
        ),
    ];
    for (resource, used, requested, limit, show) in checks {
        if requested > 0 && used.saturating_add(requested) > limit {
            return Err(QuotaError::Exceeded {
                resource,
                used: show(used),
                requested: show(requested),
                limit: show(limit),
            });
        }
    }
    Ok(usage.plus(add))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group name {0:?} is invalid: {1}")]
    InvalidName(String, &'static str),
    #[error("group {group}: default {field} {value} is below the minimum of {minimum}")]
    DefaultTooSmall {
        group: String,
        field: &'static str,
        value: String,
        minimum: String,
    },
    /// Nobody in the group could create a node of the defaults.
    #[error("group {group}: the quota cannot hold one node of the defaults ({exceeded})")]
    DefaultsExceedQuota { group: String, exceeded: QuotaError },
}

/// Group names: 1 to 32 characters, lower-case ASCII letters, digits and inner '-', starting
/// with a letter. They become etcd key segments, so they stay plain.
pub fn validate_group_name(name: &str) -> Result<(), GroupError> {
    let invalid = |reason| Err(GroupError::InvalidName(name.to_owned(), reason));
    if name.is_empty() || name.len() > 32 {
        return invalid("must be 1 to 32 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid("must start with a letter a-z");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("may only contain a-z, 0-9 and '-'");
    }
    if name.ends_with('-') {
        return invalid("must not end with '-'");
    }
    Ok(())
}

/// The rules a group follows: a valid name, defaults a vnode spec would accept, and a quota
/// that holds at least one node of those defaults.
pub fn validate_group(group: &Group) -> Result<(), GroupError> {
    validate_group_name(&group.name)?;
    let defaults = &group.defaults;
    let too_small = |field, value: String, minimum: String| {
        Err(GroupError::DefaultTooSmall {
            group: group.name.clone(),
            field,
            value,
            minimum,
        })
    };
    if defaults.cpu_millis < MIN_CPU_MILLIS {
        return too_small(
            "cpu",
            human_cores(defaults.cpu_millis.into()),
            human_cores(MIN_CPU_MILLIS.into()),
        );
    }
    if defaults.memory_bytes < MIN_MEMORY {
        return too_small(
            "memory",
            human_bytes(defaults.memory_bytes),
            human_bytes(MIN_MEMORY),
        );
    }
    if defaults.disk_bytes < MIN_DISK {
        return too_small(
            "disk",
            human_bytes(defaults.disk_bytes),
            human_bytes(MIN_DISK),
        );
    }
    admit(&group.quota, &Usage::default(), &Usage::of_node(defaults)).map_err(|exceeded| {
        GroupError::DefaultsExceedQuota {
            group: group.name.clone(),
            exceeded,
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foundation() -> Group {
        default_groups()
            .into_iter()
            .find(|g| g.name == DEFAULT_GROUP)
            .unwrap()
    }

    fn usage(cpu_millis: u64, memory_bytes: u64, disk_bytes: u64, vnodes: u32) -> Usage {
        Usage {
            cpu_millis,
            memory_bytes,
            disk_bytes,
            vnodes,
            ..Usage::default()
        }
    }

    fn mappings(n: u32) -> Usage {
        Usage {
            port_mappings: n,
            ..Usage::default()
        }
    }

    #[test]
    fn port_mappings_count_against_their_own_quota() {
        let quota = foundation().quota;
        assert_eq!(quota.port_mappings, 8);
        // A user over every vnode resource may still map ports, up to the limit.
        let busy = usage(4000, 8 * GIB, 40 * GIB, 8).plus(&mappings(7));
        assert_eq!(admit(&quota, &busy, &mappings(1)).unwrap().port_mappings, 8);
        let e = admit(&quota, &busy.plus(&mappings(1)), &mappings(1)).unwrap_err();
        assert_eq!(e.resource(), "port mappings");
        assert_eq!(
            e.to_string(),
            "port mappings quota exceeded: 8 in use, 1 requested, limit 8"
        );
        // Nodes are admitted whatever the mappings hold.
        assert!(admit(&quota, &mappings(8), &usage(1000, GIB, GIB, 1)).is_ok());
        assert_eq!(mappings(3).minus(&mappings(5)), Usage::default());
    }

    #[test]
    fn admit_allows_exactly_the_limit() {
        let quota = foundation().quota;
        let used = usage(3000, 6 * GIB, 30 * GIB, 7);
        let add = usage(1000, 2 * GIB, 10 * GIB, 1);
        assert_eq!(
            admit(&quota, &used, &add),
            Ok(usage(4000, 8 * GIB, 40 * GIB, 8))
        );
    }

    #[test]
    fn one_over_names_the_resource_with_readable_numbers() {
        let quota = foundation().quota;
        let used = usage(1000, 6 * GIB, 0, 1);
        let e = admit(&quota, &used, &usage(500, 4 * GIB, GIB, 1)).unwrap_err();
        assert_eq!(e.resource(), "memory");
        assert_eq!(
            e.to_string(),
            "memory quota exceeded: 6.0G in use, 4.0G requested, limit 8.0G"
        );

        let e = admit(&quota, &used, &usage(3001, GIB, GIB, 1)).unwrap_err();
        assert_eq!(e.resource(), "cpu");
        assert_eq!(
            e.to_string(),
            "cpu quota exceeded: 1 core in use, 3.001 cores requested, limit 4 cores"
        );

        let e = admit(&quota, &usage(0, 0, 40 * GIB, 1), &usage(10, 0, 1, 1)).unwrap_err();
        assert_eq!(e.resource(), "disk");
        assert!(e.to_string().contains("limit 40.0G"), "{e}");
    }

    #[test]
    fn vnodes_are_checked_first() {
        let quota = foundation().quota;
        let full = usage(4000, 8 * GIB, 40 * GIB, 8);
        let e = admit(&quota, &full, &usage(1000, GIB, GIB, 1)).unwrap_err();
        assert_eq!(e.resource(), "vnodes");
        assert_eq!(
            e.to_string(),
            "vnodes quota exceeded: 8 in use, 1 requested, limit 8"
        );
    }

    #[test]
    fn only_what_grows_is_checked() {
        let quota = foundation().quota;
        // Above a lowered cpu quota, the member may still grow memory.
        let over_cpu = usage(6000, GIB, GIB, 2);
        assert!(admit(&quota, &over_cpu, &usage(0, GIB, 0, 0)).is_ok());
        assert_eq!(
            admit(&quota, &over_cpu, &usage(10, 0, 0, 0))
                .unwrap_err()
                .resource(),
            "cpu"
        );
    }

    #[test]
    fn usage_adds_and_releases_without_wrapping() {
        let size = NodeSize {
            cpu_millis: 1500,
            memory_bytes: GIB,
            disk_bytes: 4 * GIB,
        };
        let one = Usage::of_node(&size);
        assert_eq!(one, usage(1500, GIB, 4 * GIB, 1));
        assert_eq!(one.plus(&one).minus(&one), one);
        assert_eq!(one.minus(&one.plus(&one)), Usage::default());
        let max = usage(u64::MAX, u64::MAX, u64::MAX, u32::MAX);
        assert_eq!(max.plus(&one), max);
    }

    #[test]
    fn cores_read_well() {
        assert_eq!(human_cores(0), "0 cores");
        assert_eq!(human_cores(10), "0.01 cores");
        assert_eq!(human_cores(250), "0.25 cores");
        assert_eq!(human_cores(1000), "1 core");
        assert_eq!(human_cores(2500), "2.5 cores");
        assert_eq!(human_cores(4000), "4 cores");
    }

    #[test]
    fn default_groups_are_valid_with_one_default() {
        let groups = default_groups();
        for group in &groups {
            assert_eq!(validate_group(group), Ok(()), "{}", group.name);
        }
        assert_eq!(groups.iter().filter(|g| g.name == DEFAULT_GROUP).count(), 1);
        let admins: Vec<&str> = groups
            .iter()
            .filter(|g| g.admin)
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(admins, ["root", "admin"]);
        assert!(!foundation().admin);
        let mut names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), groups.len());
    }

    #[test]
    fn bad_group_names_are_refused() {
        for good in ["a", "root", "lab-2", "x1-y2", &"a".repeat(32)] {
            assert_eq!(validate_group_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "1lab",
            "-lab",
            "lab-",
            "Lab",
            "la_b",
            "la b",
            "a/b",
            "../x",
            "é",
            &"a".repeat(33),
        ] {
            assert!(
                matches!(validate_group_name(bad), Err(GroupError::InvalidName(..))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn defaults_must_be_usable_and_fit_the_quota() {
        let mut group = foundation();
        group.defaults.memory_bytes = 16 * GIB;
        let e = validate_group(&group).unwrap_err();
        match &e {
            GroupError::DefaultsExceedQuota { exceeded, .. } => {
                assert_eq!(exceeded.resource(), "memory")
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("limit 8.0G"), "{e}");

        let mut group = foundation();
        group.quota.vnodes = 0;
        assert!(matches!(
            validate_group(&group),
            Err(GroupError::DefaultsExceedQuota { .. })
        ));

        type Case = (&'static str, fn(&mut NodeSize));
        let cases: [Case; 6] = [
            ("cpu", |d| d.cpu_millis = 0),
            ("cpu", |d| d.cpu_millis = MIN_CPU_MILLIS - 1),
            ("memory", |d| d.memory_bytes = 0),
            ("memory", |d| d.memory_bytes = MIN_MEMORY - 1),
            ("disk", |d| d.disk_bytes = 0),
            ("disk", |d| d.disk_bytes = MIN_DISK - 1),
        ];
        for (field, shrink) in cases {
            let mut group = foundation();
            shrink(&mut group.defaults);
            match validate_group(&group) {
                Err(GroupError::DefaultTooSmall { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }

        let mut group = foundation();
        group.name = "Bad".into();
        assert!(matches!(
            validate_group(&group),
            Err(GroupError::InvalidName(..))
        ));
    }

    #[test]
    fn group_is_json_round_trippable() {
        let group = foundation();
        let json = serde_json::to_string(&group).unwrap();
        assert_eq!(serde_json::from_str::<Group>(&json).unwrap(), group);
    }
}
