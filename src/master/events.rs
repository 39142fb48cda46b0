//! The lifecycle event stream (`GET /api/v1/events`, server-sent events): cluster records
//! created, changed and deleted, vnode states, long operations, images (a save's progress),
//! system image updates, batch jobs and their task instances, and (for administrators) hosts
//! joining and leaving, read from one
//! etcd watch of the cluster's prefix. A user sees only events of their own clusters and
//! images, and every system image's.

use std::collections::HashMap;

use serde::Serialize;
use tokio::sync::mpsc;

use super::Master;
use super::actions::{ApiError, Caller};
use crate::model::jobs::{Instance, Job};
use crate::model::vcluster::{Operation, VCluster};
use crate::model::vnode::VNodeStatus;
use crate::store::EtcdStore;

/// One event as sent: `event: <kind>` with this as its JSON data.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `cluster`, `node`, `operation`, `image`, `system-image`, `job`, `task` or `host`.
    pub kind: &'static str,
    /// `put` or `delete`.
    pub action: &'static str,
    /// The user whose cluster it is (none for hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The cluster record, node status or operation as stored (none on delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// The vnode id or host name the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub revision: i64,
}

impl Master {
    /// Starts watching for `caller`; events arrive on the returned channel until it is
    /// dropped.
    pub async fn events(&self, caller: Caller) -> Result<mpsc::Receiver<Event>, ApiError> {
        let store = self
            .store()
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut watch = store.watch_all().await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            // vnode id → (user, cluster), from the specs, for status events (which carry
            // neither). Ids of deleted vnodes stay: a late status delete still finds its owner.
            let mut owners: HashMap<String, (String, String)> = HashMap::new();
            loop {
                let response = tokio::select! {
                    r = watch.message() => r,
                    _ = tx.closed() => return,
                };
                let Ok(Some(response)) = response else {
                    tracing::debug!("event watch ended");
                    return;
                };
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let put = event.event_type() == etcd_client::EventType::Put;
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let Some(out) = classify(
                        &store,
                        &mut owners,
                        &key,
                        kv.value(),
                        put,
                        kv.mod_revision(),
                    )
                    .await
                    else {
                        continue;
                    };
                    let visible = caller.admin
                        || out.kind == "system-image"
                        || out.user.as_deref() == Some(caller.name());
                    if visible && tx.send(out).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The event a changed key stands for, if any.
async fn classify(
    store: &EtcdStore,
    owners: &mut HashMap<String, (String, String)>,
    key: &str,
    value: &[u8],
    put: bool,
    revision: i64,
) -> Option<Event> {
    let rest = key.strip_prefix(store.keys().prefix())?;
    let (section, name) = rest.split_once('/')?;
    let action = if put { "put" } else { "delete" };
    let json = || serde_json::from_slice::<serde_json::Value>(value).ok();
    let event =
        |kind, user: Option<String>, cluster: Option<String>, data, name: Option<String>| Event {
            kind,
            action,
            user,
            cluster,
            data,
            name,
            revision,
        };
    match section {
        "clusters" => {
            let (user, cluster) = name.split_once('/')?;
            let data = if put {
                serde_json::from_slice::<VCluster>(value).ok()?;
                json()
            } else {
                None
            };
            Some(event(
                "cluster",
                Some(user.into()),
                Some(cluster.into()),
                data,
                None,
            ))
        }
        "vnode-status" => {
            let id = name.to_owned();
            if !owners.contains_key(&id)
                && let Ok(Some((_, spec, _))) = store.vnode_spec(&id).await
            {
                owners.insert(id.clone(), (spec.user, spec.cluster));
            }
            let (user, cluster) = owners.get(&id).cloned()?;
            let data = if put {
                serde_json::from_slice::<VNodeStatus>(value).ok()?;
                json()
            } else {
                None
            };
            Some(event("node", Some(user), Some(cluster), data, Some(id)))
        }
        "operations" if put => {
            let op: Operation = serde_json::from_slice(value).ok()?;
            Some(event(
                "operation",
                Some(op.user.clone()),
                Some(op.cluster.clone()),
                json(),
                Some(op.id),
            ))
        }
        "images" | "system-images" | "system-image-builds" => {
            image_event(section, name, if put { json() } else { None }, event)
        }
        "jobs" | "jobs-done" if put => {
            let job: Job = serde_json::from_slice(value).ok()?;
            let data = serde_json::json!({
                "id": job.id,
                "name": job.spec.name,
                "held": job.held,
                "cancel": job.cancel,
                "ended": job.ended,
            });
            owners.insert(format!("job:{}", job.id), (job.user.clone(), String::new()));
            Some(event(
                "job",
                Some(job.user),
                None,
                Some(data),
                Some(job.id.to_string()),
            ))
        }
        "job-tasks" if put => {
            // <id>/<task>/<index>, the id zero-padded.
            let mut parts = name.splitn(3, '/');
            let id: u64 = parts.next()?.parse().ok()?;
            let (task, index) = (parts.next()?, parts.next()?.parse::<u32>().ok()?);
            let owner_key = format!("job:{id}");
            if !owners.contains_key(&owner_key)
                && let Ok(Some(stored)) = store.job(id).await
            {
                owners.insert(owner_key.clone(), (stored.job.user, String::new()));
            }
            let (user, _) = owners.get(&owner_key).cloned()?;
            serde_json::from_slice::<Instance>(value).ok()?;
            Some(event(
                "task",
                Some(user),
                None,
                json(),
                Some(format!("{id}/{task}/{index}")),
            ))
        }
        "hosts" => Some(event(
            "host",
            None,
            None,
            if put { json() } else { None },
            Some(name.into()),
        )),
        _ => None,
    }
}

/// A user image (`images/<owner>/<name>`, where saves write their progress), or a system
/// image's update and each host's build of it (`system-images/<name>`,
/// `system-image-builds/<name>/<host>`).
fn image_event(
    section: &str,
    name: &str,
    data: Option<serde_json::Value>,
    event: impl Fn(
        &'static str,
        Option<String>,
        Option<String>,
        Option<serde_json::Value>,
        Option<String>,
    ) -> Event,
) -> Option<Event> {
    if section == "images" {
        let (owner, _) = name.split_once('/')?;
        return Some(event(
            "image",
            Some(owner.into()),
            None,
            data,
            Some(name.into()),
        ));
    }
    // Everyone gets these: the name is enough to refresh what they see of it.
    let image = name.split('/').next()?;
    Some(event("system-image", None, None, None, Some(image.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        kind: &'static str,
        user: Option<String>,
        cluster: Option<String>,
        data: Option<serde_json::Value>,
        name: Option<String>,
    ) -> Event {
        Event {
            kind,
            action: "put",
            user,
            cluster,
            data,
            name,
            revision: 1,
        }
    }

    #[test]
    fn image_changes_go_to_their_owner_and_system_images_to_everyone() {
        let saved = image_event("images", "alice/web", None, event).unwrap();
        assert_eq!(
            (saved.kind, saved.user.as_deref()),
            ("image", Some("alice"))
        );
        assert_eq!(saved.name.as_deref(), Some("alice/web"));
        let record = Some(serde_json::json!({"host": "tb2"}));
        let build = image_event("system-image-builds", "base/tb2", record, event).unwrap();
        assert_eq!((build.kind, build.user), ("system-image", None));
        assert!(
            build.data.is_none(),
            "no host's build record goes to every user"
        );
        assert_eq!(build.name.as_deref(), Some("base"));
        assert!(image_event("images", "no-owner", None, event).is_none());
    }
}
