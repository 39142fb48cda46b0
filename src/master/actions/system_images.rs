//! System image updates as typed actions (see [`crate::model::system_image`]): anyone signed
//! in lists the system images and where each host is; administrators turn a saved user
//! image into the next version of a system image on every host. The building is the
//! workers' ([`crate::worker::system_images`]); the master checks the request and records it.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::images::invalid;
use super::{ApiError, Caller};
use crate::master::waits::Follow;
use crate::master::{Master, now_secs};
use crate::model::host::HostRecord;
use crate::model::image::{ImageRef, ImageVersion, Pending};
use crate::model::system_image::{self, BuildState, HostVersion, SystemImageUpdate};
use crate::store::EtcdStore;

/// `POST /system-images/{name}`: make the next version from a saved image.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemImageUpdateRequest {
    /// The user image (`owner/name`) whose layer goes on top of the current version; it
    /// must have been saved on this system image.
    pub from: String,
}

/// A system image as administrators see it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SystemImageView {
    pub name: String,
    /// `3 hosts on V`, `updating to V from alice/web: 1 of 3 hosts done (tb2: copying)`,
    /// `update to V failed on tb2: …`.
    pub state: String,
    /// The latest update asked for.
    pub update: Option<SystemImageUpdate>,
    /// The hosts that have it (whose workers are up).
    pub hosts: Vec<HostVersion>,
    /// Every host is done with the latest update (or one failed it).
    pub settled: bool,
}

impl Master {
    /// Every system image some host has.
    pub async fn list_system_images(
        &self,
        _signed_in: &Caller,
    ) -> Result<Vec<SystemImageView>, ApiError> {
        let store = self.store().await?;
        let hosts = store.list_hosts().await?;
        let mut names: Vec<&str> = hosts
            .iter()
            .flat_map(|h| h.images.iter().map(String::as_str))
            .collect();
        names.sort();
        names.dedup();
        let mut views = Vec::new();
        for name in names {
            views.push(view_with_hosts(&store, name, &hosts).await?);
        }
        Ok(views)
    }

    /// One system image, waiting up to `wait` while an update of it is under way.
    pub async fn show_system_image(
        &self,
        _signed_in: &Caller,
        name: &str,
        wait: Duration,
    ) -> Result<SystemImageView, ApiError> {
        let store = self.store().await?;
        let keys = store.keys();
        let (hosts, update, builds) = (
            keys.hosts(),
            keys.system_image(name),
            keys.system_image_builds(name),
        );
        let relevant = |k: &str| k.starts_with(&hosts) || k == update || k.starts_with(&builds);
        let deadline = tokio::time::Instant::now() + wait;
        let prefixes = [hosts.as_str(), update.as_str(), builds.as_str()];
        let mut follow = Follow::start(&store, &prefixes, deadline).await;
        loop {
            let view = system_image_view(&store, name).await?;
            if view.hosts.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "no host has a system image {name:?}"
                )));
            }
            if view.settled || !follow.changed(&relevant).await {
                return Ok(view);
            }
        }
    }

    /// Administrators: asks every host with system image `name` to make its next version
    /// from `request.from`. Running vnodes keep theirs until they restart.
    pub async fn update_system_image(
        &self,
        caller: &Caller,
        name: &str,
        request: &SystemImageUpdateRequest,
    ) -> Result<SystemImageView, ApiError> {
        caller.require_admin()?;
        if !matches!(ImageRef::parse(name), Ok(ImageRef::System(_))) {
            return Err(invalid(
                "name",
                format!("{name:?} is not a system image name"),
            ));
        }
        let Ok(ImageRef::User { owner, name: image }) = ImageRef::parse(&request.from) else {
            return Err(invalid(
                "from",
                format!("{:?}: name a saved image as owner/name", request.from),
            ));
        };
        let store = self.store().await?;
        // Read before the view: an update recorded after this read fails the write below.
        let (_, revision) = store.system_image_update(name).await?;
        let view = system_image_view(&store, name).await?;
        if view.hosts.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no host has a system image {name:?}"
            )));
        }
        let layer = saved_layer_on(&store, owner, image, &request.from, name).await?;
        if let Some(update) = view.update.as_ref().filter(|_| !view.settled) {
            return Err(ApiError::Conflict(format!(
                "an update of {name} to {} is under way ({}): wait for it to end",
                update.version, view.state
            )));
        }
        let update = SystemImageUpdate {
            name: name.to_owned(),
            version: system_image::version_at(now_secs()),
            from: request.from.clone(),
            layer,
            requested_by: caller.name().to_owned(),
            requested_at: now_secs(),
        };
        if let Some(newer) = view
            .hosts
            .iter()
            .find(|h| !system_image::needs_build(&h.current, &update))
        {
            return Err(ApiError::Conflict(format!(
                "host {} already has version {} of {name}, not older than {}: try again in a \
                 second",
                newer.host, newer.current, update.version
            )));
        }
        if !store.request_system_image_update(&update, revision).await? {
            return Err(ApiError::Conflict(format!(
                "another update of {name} was asked for meanwhile"
            )));
        }
        info!(image = name, version = %update.version, from = %update.from, by = %update.requested_by, "system image update requested");
        system_image_view(&store, name).await
    }
}

/// The saved layer of `owner/image` (named `from`), which must have been saved on system
/// image `base`.
async fn saved_layer_on(
    store: &EtcdStore,
    owner: &str,
    image: &str,
    from: &str,
    base: &str,
) -> Result<ImageVersion, ApiError> {
    let record = store
        .image(owner, image)
        .await?
        .map(|(record, _)| record)
        .ok_or_else(|| ApiError::NotFound(format!("there is no image {}", from)))?;
    if matches!(record.pending, Some(Pending::Deleting { .. })) {
        return Err(ApiError::Conflict(format!(
            "image {} is being deleted",
            from
        )));
    }
    let layer = record.current.clone().ok_or_else(|| {
        ApiError::Conflict(format!(
            "image {} has no saved layer yet ({})",
            from,
            record.state()
        ))
    })?;
    if layer.base != base {
        return Err(invalid(
            "from",
            format!(
                "image {} was saved on system image {:?}, not {base:?}",
                from, layer.base
            ),
        ));
    }
    Ok(layer)
}

/// Where every host with system image `name` is.
async fn system_image_view(store: &EtcdStore, name: &str) -> Result<SystemImageView, ApiError> {
    view_with_hosts(store, name, &store.list_hosts().await?).await
}

/// [`system_image_view`] with the registered hosts already read.
async fn view_with_hosts(
    store: &EtcdStore,
    name: &str,
    hosts: &[HostRecord],
) -> Result<SystemImageView, ApiError> {
    let (update, _) = store.system_image_update(name).await?;
    let mut builds: HashMap<String, _> = store
        .system_image_builds(name)
        .await?
        .into_iter()
        .map(|b| (b.host.clone(), b))
        .collect();
    let hosts: Vec<HostVersion> = hosts
        .iter()
        .filter_map(|host| {
            let mut current = host.image_versions.get(name)?.clone();
            let build = builds.remove(&host.name);
            // The host record is refreshed every half minute; a build says it sooner.
            if let Some(b) = &build
                && b.state == BuildState::Ready
                && b.version > current
            {
                current = b.version.clone();
            }
            Some(HostVersion {
                host: host.name.clone(),
                current,
                build,
            })
        })
        .collect();
    Ok(SystemImageView {
        name: name.to_owned(),
        state: system_image::summary(update.as_ref(), &hosts),
        settled: update
            .as_ref()
            .is_none_or(|u| system_image::settled(u, &hosts)),
        update,
        hosts,
    })
}
