//! System image updates: an administrator turns a saved user image into the next version of
//! a system image (`base`) on every host, as the original Docklet's `updatebase` did.
//!
//! A system image lives on each host as `FS_PREFIX/local/images/<name>/<version>/` with
//! `current` pointing at the newest; `tools/build-image` makes versions by hand. An update is
//! a record at `system-images/<name>` ([`SystemImageUpdate`]) naming the user image and the
//! version to make; every worker that has the system image builds that version (its current
//! version with the image's layer applied), moves `current` to it and reports at
//! `system-image-builds/<name>/<host>` ([`SystemImageBuild`]). Vnodes that run keep the
//! version they started on; new and restarted ones get the new one.

use serde::{Deserialize, Serialize};

use crate::model::image::ImageVersion;
use crate::model::metrics::date_of_day;

/// `system-images/<name>`: the latest update an administrator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SystemImageUpdate {
    pub name: String,
    /// The version every host makes (a directory name, as `tools/build-image` names them).
    pub version: String,
    /// The user image (`owner/name`) whose layer goes on top.
    pub from: String,
    /// That image's layer when the update was asked for.
    pub layer: ImageVersion,
    pub requested_by: String,
    pub requested_at: u64,
}

/// Where one host is with an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BuildState {
    /// Working: `step` says on what (unpacking the layer, copying), `since` when it began.
    Building {
        step: String,
        since: u64,
    },
    /// The version is built and `current` points at it.
    Ready,
    Failed {
        error: String,
    },
}

/// `system-image-builds/<name>/<host>`: one host's work on an update, written by its worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SystemImageBuild {
    pub host: String,
    pub version: String,
    #[serde(flatten)]
    pub state: BuildState,
    pub updated_at: u64,
}

/// The version name of an update asked for at `now` (unix seconds): UTC time as
/// `tools/build-image` writes it, `20261129T130101Z`, so versions sort by age.
pub fn version_at(now: u64) -> String {
    let (day, seconds) = (now / 86_400, now % 86_400);
    format!(
        "{}T{:02}{:02}{:02}Z",
        date_of_day(day).replace('-', ""),
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

/// Is `version` a name [`version_at`] could have made (it becomes a directory name)?
pub fn valid_version(version: &str) -> bool {
    let bytes = version.as_bytes();
    bytes.len() == 16
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes[..8]
            .iter()
            .chain(&bytes[9..15])
            .all(u8::is_ascii_digit)
}

/// Should a host whose current version is `installed` build `update`? Only if the update is
/// newer: a host where an administrator installed a later version by hand keeps it.
pub fn needs_build(installed: &str, update: &SystemImageUpdate) -> bool {
    update.version.as_str() > installed
}

/// One host of a system image, as the summary reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostVersion {
    pub host: String,
    /// The version `current` points at (as the host last reported it).
    pub current: String,
    /// The host's work on the latest update, if it has any.
    pub build: Option<SystemImageBuild>,
}

/// What a system image's page says: `3 hosts on 20261129T130101Z`, `updating to V: 1 of 3
/// hosts done (tb2: copying)`, `update to V failed on tb2: …`.
pub fn summary(update: Option<&SystemImageUpdate>, hosts: &[HostVersion]) -> String {
    let Some(update) = update.filter(|u| hosts.iter().any(|h| needs_build(&h.current, u))) else {
        let mut versions: Vec<&str> = hosts.iter().map(|h| h.current.as_str()).collect();
        versions.sort();
        versions.dedup();
        return format!(
            "{} host{} on {}",
            hosts.len(),
            if hosts.len() == 1 { "" } else { "s" },
            versions.join(", ")
        );
    };
    let failed: Vec<String> = hosts
        .iter()
        .filter_map(|h| match build_of(h, update).map(|b| &b.state) {
            Some(BuildState::Failed { error }) => Some(format!("{}: {error}", h.host)),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return format!(
            "update to {} failed on {}",
            update.version,
            failed.join("; ")
        );
    }
    let done = hosts
        .iter()
        .filter(|h| {
            !needs_build(&h.current, update)
                || build_of(h, update).is_some_and(|b| b.state == BuildState::Ready)
        })
        .count();
    let steps: Vec<String> = hosts
        .iter()
        .filter_map(|h| match build_of(h, update).map(|b| &b.state) {
            Some(BuildState::Building { step, .. }) => Some(format!("{}: {step}", h.host)),
            _ => None,
        })
        .collect();
    let mut text = format!(
        "updating to {} from {}: {done} of {} hosts done",
        update.version,
        update.from,
        hosts.len()
    );
    if !steps.is_empty() {
        text += &format!(" ({})", steps.join(", "));
    }
    text
}

/// The host's work on `update`, if that is what it last worked on.
fn build_of<'a>(host: &'a HostVersion, update: &SystemImageUpdate) -> Option<&'a SystemImageBuild> {
    host.build.as_ref().filter(|b| b.version == update.version)
}

/// Is the update done on every host (or failed on one)?
pub fn settled(update: &SystemImageUpdate, hosts: &[HostVersion]) -> bool {
    let state = |h| build_of(h, update).map(|b| &b.state);
    hosts
        .iter()
        .all(|h| !needs_build(&h.current, update) || matches!(state(h), Some(BuildState::Ready)))
        || hosts
            .iter()
            .any(|h| matches!(state(h), Some(BuildState::Failed { .. })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(version: &str) -> SystemImageUpdate {
        SystemImageUpdate {
            name: "base".into(),
            version: version.into(),
            from: "root/next".into(),
            layer: ImageVersion {
                version: "1-00000000".into(),
                base: "base".into(),
                bytes: 1,
                sha256: "x".into(),
                saved_at: 1,
                saved_from: "v".into(),
            },
            requested_by: "root".into(),
            requested_at: 1,
        }
    }

    fn host(name: &str, current: &str, build: Option<(&str, BuildState)>) -> HostVersion {
        HostVersion {
            host: name.into(),
            current: current.into(),
            build: build.map(|(version, state)| SystemImageBuild {
                host: name.into(),
                version: version.into(),
                state,
                updated_at: 1,
            }),
        }
    }

    #[test]
    fn versions_are_utc_times_that_sort_by_age() {
        assert_eq!(version_at(1_795_957_261), "20261129T130101Z");
        assert_eq!(version_at(0), "19700101T000000Z");
        assert!(version_at(1_795_957_262) > version_at(1_795_957_261));
        assert!(valid_version("20261129T100101Z"));
        for bad in ["", "current", "../x", "20261129T100101", "2026112XT100101Z"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn only_older_hosts_build() {
        let u = update("20261129T100101Z");
        assert!(needs_build("20261128T173236Z", &u));
        assert!(!needs_build("20261129T100101Z", &u));
        assert!(!needs_build("20261130T000000Z", &u));
    }

    #[test]
    fn the_summary_says_where_an_update_is() {
        let u = update("20261129T100101Z");
        let old = "20261128T173236Z";
        let hosts = [
            host(
                "tb1",
                "20261129T100101Z",
                Some((&u.version, BuildState::Ready)),
            ),
            host(
                "tb2",
                old,
                Some((
                    &u.version,
                    BuildState::Building {
                        step: "copying".into(),
                        since: 1,
                    },
                )),
            ),
            host("tb3", old, None),
        ];
        assert_eq!(
            summary(Some(&u), &hosts),
            "updating to 20261129T100101Z from root/next: 1 of 3 hosts done (tb2: copying)"
        );
        assert!(!settled(&u, &hosts));
        let failed = [
            hosts[0].clone(),
            host(
                "tb2",
                old,
                Some((
                    &u.version,
                    BuildState::Failed {
                        error: "no room".into(),
                    },
                )),
            ),
        ];
        assert_eq!(
            summary(Some(&u), &failed),
            "update to 20261129T100101Z failed on tb2: no room"
        );
        assert!(settled(&u, &failed));
        let done = [hosts[0].clone(), host("tb2", &u.version, None)];
        assert_eq!(summary(Some(&u), &done), "2 hosts on 20261129T100101Z");
        assert!(settled(&u, &done));
        assert_eq!(
            summary(None, &[host("tb1", old, None)]),
            "1 host on 20261128T173236Z"
        );
    }
}
