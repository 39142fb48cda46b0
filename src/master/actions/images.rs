//! User images as typed actions: save a node as an image, list, show, share or unshare,
//! describe, delete. Authorized here like every action: a user saves only their own nodes,
//! sees their own images and the public ones, and changes only their own; administrators
//! see all and act on anyone's. The saving itself is the worker's
//! ([`crate::worker::images`]); the master records the request in the catalog.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{ApiError, Caller};
use crate::master::waits::Follow;
use crate::master::{Master, now_secs};
use crate::model::image::{self, ImageRecord, Pending};
use crate::model::vcluster;
use crate::store::images::SaveRequest;

/// `POST /images`: save node `node` of cluster `cluster` as image `name`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveImageRequest {
    pub cluster: String,
    pub node: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Replace an image of the same name.
    #[serde(default)]
    pub force: bool,
}

/// `PATCH /images/{owner}/{name}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePatch {
    /// Share with everyone (true) or make private again (false).
    pub public: Option<bool>,
    pub description: Option<String>,
}

/// An image as users see it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ImageView {
    #[serde(flatten)]
    pub record: ImageRecord,
    /// `owner/name`: what a new cluster's `image` names.
    pub reference: String,
    /// `ready`, `saving (… written)`, `deleting`, `failed: …`.
    pub state: String,
    /// Size of the saved layer.
    pub bytes: u64,
}

impl From<ImageRecord> for ImageView {
    fn from(record: ImageRecord) -> Self {
        ImageView {
            reference: record.reference(),
            state: record.state(),
            bytes: record.bytes(),
            record,
        }
    }
}

/// How long a delete waits for a worker to remove the image's files.
const DELETE_WAIT: Duration = Duration::from_secs(60);

pub(super) fn invalid(field: &'static str, e: impl ToString) -> ApiError {
    ApiError::invalid("invalid_image", field, e.to_string())
}

impl Master {
    /// Asks the worker of the node's host to save the node's layer as `owner/name`.
    pub async fn save_image(
        &self,
        caller: &Caller,
        user: Option<&str>,
        request: &SaveImageRequest,
    ) -> Result<ImageView, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        image::validate_image_name(&request.name).map_err(|e| invalid("name", e))?;
        image::validate_description(&request.description).map_err(|e| invalid("description", e))?;
        let store = self.store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, &request.cluster).await?;
        let missing = || {
            ApiError::NotFound(format!(
                "cluster {} has no node {}",
                request.cluster, request.node
            ))
        };
        if !cluster.nodes.contains(&request.node) {
            return Err(missing());
        }
        let id = vcluster::node_id(&owner, &request.cluster, request.node);
        let (host, _, _) = store.vnode_spec(&id).await?.ok_or_else(missing)?;
        if !store.list_hosts().await?.iter().any(|h| h.name == host) {
            return Err(ApiError::Conflict(format!(
                "node {}'s host {host} is down: its disk cannot be read now",
                request.node
            )));
        }
        let account = store
            .account(&owner)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {owner}")))?;
        let group = self.group_of(&store, &account).await?;
        let record = store
            .begin_image_save(&SaveRequest {
                owner: &owner,
                name: &request.name,
                description: &request.description,
                vnode: &id,
                host: &host,
                force: request.force,
                quota: &group.quota,
                now: now_secs(),
            })
            .await?;
        info!(
            user = owner,
            image = %record.reference(),
            vnode = %id,
            host,
            by = caller.name(),
            action = "image.save",
            "{} asked to save node {id} as image {}",
            caller.name(),
            record.reference()
        );
        Ok(record.into())
    }

    /// The caller's images and everyone's public ones; administrators with `all`: every one.
    pub async fn list_images(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<Vec<ImageView>, ApiError> {
        if all {
            caller.require_admin()?;
        }
        let store = self.store().await?;
        Ok(store
            .all_images()
            .await?
            .into_iter()
            .filter(|r| {
                if all {
                    true
                } else {
                    r.visible_to(caller.name(), false)
                }
            })
            .map(ImageView::from)
            .collect())
    }

    /// One image the caller may see, waiting up to `wait` while it is being saved.
    pub async fn show_image(
        &self,
        caller: &Caller,
        owner: &str,
        name: &str,
        wait: Duration,
    ) -> Result<ImageView, ApiError> {
        let store = self.store().await?;
        let key = store.keys().image(owner, name);
        let deadline = tokio::time::Instant::now() + wait;
        let mut follow = Follow::start(&store, &[&key], deadline).await;
        loop {
            let record = store
                .image(owner, name)
                .await?
                .map(|(r, _)| r)
                .filter(|r| r.visible_to(caller.name(), caller.admin))
                .ok_or_else(|| ApiError::NotFound(format!("there is no image {owner}/{name}")))?;
            let saving = matches!(record.pending, Some(Pending::Saving { .. }));
            if !saving || !follow.changed(|k| k == key).await {
                return Ok(record.into());
            }
        }
    }

    /// Shares, unshares or describes one of the caller's images (administrators: anyone's).
    pub async fn update_image(
        &self,
        caller: &Caller,
        owner: &str,
        name: &str,
        patch: &ImagePatch,
    ) -> Result<ImageView, ApiError> {
        self.may_change(caller, owner)?;
        if let Some(description) = &patch.description {
            image::validate_description(description).map_err(|e| invalid("description", e))?;
        }
        let store = self.store().await?;
        let record = store
            .update_image(owner, name, patch.public, patch.description.as_deref())
            .await?;
        let shared = if record.public { "public" } else { "private" };
        info!(
            user = owner,
            image = %record.reference(),
            public = record.public,
            by = caller.name(),
            action = "image.change",
            "{} changed image {}: {shared}",
            caller.name(),
            record.reference()
        );
        Ok(record.into())
    }

    /// Deletes one of the caller's images (administrators: anyone's), refused while a
    /// cluster uses it. Its files go before its record, so an interrupted delete is finished
    /// by trying again (or by the workers, once confirmed).
    pub async fn delete_image(
        &self,
        caller: &Caller,
        owner: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        self.may_change(caller, owner)?;
        let store = self.store().await?;
        let hosts: Vec<String> = store
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| h.name)
            .collect();
        let record = store
            .begin_image_delete(owner, name, now_secs(), |host| {
                hosts.iter().any(|h| h == host)
            })
            .await?;
        let reference = record.reference();
        let mut users: Vec<String> = store
            .all_clusters()
            .await?
            .into_iter()
            .filter(|c| c.image == reference)
            .map(|c| format!("{}/{}", c.user, c.name))
            .collect();
        users.extend(
            store
                .all_vnode_specs()
                .await?
                .into_iter()
                .filter(|(_, spec)| spec.image == reference)
                .map(|(_, spec)| format!("{}/{}", spec.user, spec.cluster)),
        );
        users.sort();
        users.dedup();
        if !users.is_empty() {
            store.cancel_image_delete(owner, name).await?;
            return Err(ApiError::Conflict(format!(
                "image {reference} is used by cluster(s) {}: delete those first",
                users.join(", ")
            )));
        }
        // The files are root's, on the shared filesystem: a worker removes them, then the
        // record ([`crate::worker::images`]).
        store.confirm_image_delete(owner, name).await?;
        let key = store.keys().image(owner, name);
        let deadline = tokio::time::Instant::now() + DELETE_WAIT;
        let mut follow = Follow::start(&store, &[&key], deadline).await;
        while store.image(owner, name).await?.is_some() {
            if follow.changed(|k| k == key).await {
                continue;
            }
            return Err(ApiError::Unavailable(format!(
                "no worker removed image {reference}'s files within {} s (are the workers \
                 up?); the delete goes on when one is",
                DELETE_WAIT.as_secs()
            )));
        }
        info!(
            user = owner,
            image = %reference,
            by = caller.name(),
            action = "image.delete",
            "{} deleted image {reference}",
            caller.name()
        );
        Ok(())
    }

    fn may_change(&self, caller: &Caller, owner: &str) -> Result<(), ApiError> {
        caller.require_normal()?;
        if owner != caller.name() && !caller.admin {
            return Err(ApiError::Forbidden(
                "only an image's owner may change or delete it".into(),
            ));
        }
        Ok(())
    }
}
