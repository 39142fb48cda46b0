//! etcd's users and roles. On a site whose etcd speaks TLS and requires client certificates
//! (issue 17), a daemon's etcd user is its certificate's common name: each host has
//! `docklet-master-<host>` (etcd's `root` role: masters manage users as hosts join and
//! leave) and `docklet-worker-<host>` (the cluster's workers' role, which reads everything of
//! the cluster but accounts, tokens and join tickets, and writes only what workers report).
//! Removing a host deletes its users, so etcd refuses its certificates at once. Sites whose
//! etcd has no TLS keep the password scheme of before: one user limited to the cluster's
//! prefix, its password on the shared filesystem; the master converts such a site when it
//! finds TLS and its own identity.

use etcd_client::{Permission, PermissionType};

use super::etcd::classify;
use super::{EtcdStore, Keys, StoreError};
use crate::model::cluster::EtcdCredentials;
use crate::pki::Role;

/// Under the cluster's prefix, what workers may not read: accounts (password hashes), API
/// tokens, workspace grants, pending join tickets and requests' idempotency records. Sorted.
const SECRET_TO_WORKERS: [&str; 5] = [
    "idempotency/",
    "join-tickets/",
    "tokens/",
    "users/",
    "workspace_grants/",
];

/// Under the cluster's prefix, what workers write: their host's registration and its
/// allocations, vnodes' specs (forgetting a deleted one, with its usage, address and port
/// mappings), statuses and hosts, network endpoints, the images they save and build, and
/// claims on new directories of the shared filesystem.
const WRITTEN_BY_WORKERS: [&str; 12] = [
    "allocations/",
    "batch-usage/",
    "dir-claims/",
    "hosts/",
    "images/",
    "network/",
    "ports/",
    "system-image-builds/",
    "usage/",
    "vnode-hosts/",
    "vnode-status/",
    "vnodes/",
];

/// The end of the range of keys starting with `prefix` (etcd's `--prefix`): its last byte
/// that can be raised, raised.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One key range `[start, end)` and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub access: PermissionType,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

/// The workers' role: read every range of the cluster's prefix between the secret ones, and
/// read-write what workers report. etcd adds up a role's ranges, so "all but" is written as
/// the ranges in between.
pub fn worker_grants(keys: &Keys) -> Vec<Grant> {
    let prefix = keys.prefix();
    let mut grants = Vec::new();
    let mut start = prefix.as_bytes().to_vec();
    for secret in SECRET_TO_WORKERS {
        let hole = format!("{prefix}{secret}");
        grants.push(Grant {
            access: PermissionType::Read,
            start: std::mem::replace(&mut start, prefix_end(&hole)),
            end: hole.into_bytes(),
        });
    }
    grants.push(Grant {
        access: PermissionType::Read,
        start,
        end: prefix_end(prefix),
    });
    grants.extend(WRITTEN_BY_WORKERS.iter().map(|written| {
        let key = format!("{prefix}{written}");
        Grant {
            access: PermissionType::Readwrite,
            end: prefix_end(&key),
            start: key.into_bytes(),
        }
    }));
    grants
}

/// The role of a cluster's workers.
fn workers_role(keys: &Keys) -> String {
    format!(
        "{}-workers",
        EtcdCredentials::user_for_cluster(keys.prefix().trim_matches('/'))
    )
}

/// etcd's "already exists" answers (a user, a role), which setting up again may meet.
fn exists_ok(r: Result<(), StoreError>) -> Result<(), StoreError> {
    match r {
        Err(StoreError::Conflict(_)) => Ok(()),
        other => other,
    }
}

/// etcd's "not found" answers (a user, a role), which removing again may meet.
fn missing_ok(r: Result<(), StoreError>) -> Result<(), StoreError> {
    match r {
        Err(StoreError::NotFound(_)) => Ok(()),
        other => other,
    }
}

fn random_password() -> String {
    crate::pki::random_secret(32)
}

impl EtcdStore {
    async fn add_role(&self, role: &str) -> Result<(), StoreError> {
        let mut auth = self.client.auth_client();
        exists_ok(auth.role_add(role).await.map(|_| ()).map_err(classify))
    }

    /// `user` with `password`: made, or given the password if it exists.
    async fn set_password(&self, user: &str, password: &str) -> Result<(), StoreError> {
        let mut auth = self.client.auth_client();
        match auth.user_add(user, password, None).await {
            Ok(_) => Ok(()),
            Err(e) => match classify(e) {
                StoreError::Conflict(_) => auth
                    .user_change_password(user, password)
                    .await
                    .map(|_| ())
                    .map_err(classify),
                other => Err(other),
            },
        }
    }

    async fn grant_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        let mut auth = self.client.auth_client();
        auth.user_grant_role(user, role)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// etcd's `root` user, which etcd requires before authentication goes on, with
    /// `password` (a new one if it exists).
    async fn ensure_root(&self, password: &str) -> Result<(), StoreError> {
        self.add_role("root").await?;
        self.set_password("root", password).await?;
        self.grant_role("root", "root").await
    }

    /// A user with `role`, made when absent. Certificate users get a random password no one
    /// keeps: etcd 3.4 has no password-less users, and only the certificate logs them in.
    async fn ensure_user(&self, user: &str, role: &str) -> Result<(), StoreError> {
        let mut auth = self.client.auth_client();
        exists_ok(
            auth.user_add(user, random_password(), None)
                .await
                .map(|_| ())
                .map_err(classify),
        )?;
        self.grant_role(user, role).await
    }

    /// The workers' role with its ranges.
    async fn ensure_workers_role(&self) -> Result<String, StoreError> {
        let role = workers_role(&self.keys);
        self.add_role(&role).await?;
        let mut auth = self.client.auth_client();
        for grant in worker_grants(&self.keys) {
            let permission = Permission::new(grant.access, grant.start).with_range_end(grant.end);
            auth.role_grant_permission(role.as_str(), permission)
                .await
                .map_err(classify)?;
        }
        Ok(role)
    }

    /// Gives the workers' role the ranges this version's workers write (a site made by an
    /// earlier version lacks the newer ones). Only where certificate users are set up.
    pub async fn refresh_workers_role(&self) -> Result<(), StoreError> {
        let role = workers_role(&self.keys);
        let exists = self
            .client
            .auth_client()
            .role_get(role.as_str())
            .await
            .is_ok();
        if exists {
            self.ensure_workers_role().await?;
        }
        Ok(())
    }

    /// `host`'s two certificate users: its master as etcd's root, its worker in the
    /// workers' role.
    pub async fn ensure_host_users(&self, host: &str) -> Result<(), StoreError> {
        let workers = self.ensure_workers_role().await?;
        self.ensure_user(&Role::Master.common_name(host), "root")
            .await?;
        self.ensure_user(&Role::Worker.common_name(host), &workers)
            .await
    }

    /// Deletes `host`'s certificate users: etcd refuses its certificates from then on.
    pub async fn remove_host_users(&self, host: &str) -> Result<(), StoreError> {
        for role in Role::ALL {
            self.delete_user(&role.common_name(host)).await?;
        }
        Ok(())
    }

    /// Deletes etcd user `name`; one that is not there is fine.
    async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let mut auth = self.client.auth_client();
        missing_ok(auth.user_delete(name).await.map(|_| ()).map_err(classify))
    }

    /// etcd's `root` user with a password no one keeps, when there is none yet. An existing
    /// `root` keeps its password: whoever is logged in as root by it (a site moving from
    /// passwords) would lose its session mid-way ([`Self::forget_passwords`] replaces it).
    async fn ensure_root_exists(&self) -> Result<(), StoreError> {
        self.add_role("root").await?;
        let mut auth = self.client.auth_client();
        exists_ok(
            auth.user_add("root", random_password(), None)
                .await
                .map(|_| ())
                .map_err(classify),
        )?;
        self.grant_role("root", "root").await
    }

    /// Certificate authentication for a site whose etcd requires client certificates:
    /// `root` (with a password no one keeps if it is new), the users of every host in
    /// `hosts` (this one's first among them, or nothing would let us in afterwards), then
    /// authentication on. Safe to repeat.
    pub async fn setup_certificate_auth(&self, hosts: &[String]) -> Result<(), StoreError> {
        self.ensure_root_exists().await?;
        for host in hosts {
            self.ensure_host_users(host).await?;
        }
        self.client
            .auth_client()
            .auth_enable()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// The password scheme, for an etcd without TLS: the user and role that own this
    /// cluster's prefix, etcd's `root` with the given password, then authentication on. Safe
    /// to repeat: existing users get the given passwords.
    pub async fn setup_password_auth(&self, creds: &EtcdCredentials) -> Result<(), StoreError> {
        self.ensure_root(&creds.root_password).await?;
        let role = creds.user.as_str();
        self.add_role(role).await?;
        let mut auth = self.client.auth_client();
        auth.role_grant_permission(
            role,
            Permission::read_write(self.keys.prefix()).with_prefix(),
        )
        .await
        .map_err(classify)?;
        self.set_password(&creds.user, &creds.password).await?;
        self.grant_role(&creds.user, role).await?;
        auth.auth_enable().await.map(|_| ()).map_err(classify)
    }

    /// The last step from passwords to certificates, logged in by certificate (a password
    /// session would end with root's password): the password user goes and `root` gets a
    /// password no one keeps, so the passwords on the shared filesystem open nothing.
    pub async fn forget_passwords(&self, creds: &EtcdCredentials) -> Result<(), StoreError> {
        self.delete_user(&creds.user).await?;
        let mut auth = self.client.auth_client();
        missing_ok(
            auth.role_delete(creds.user.as_str())
                .await
                .map(|_| ())
                .map_err(classify),
        )?;
        auth.user_change_password("root", random_password())
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(grants: &[Grant], key: &str) -> bool {
        grants
            .iter()
            .any(|g| g.start.as_slice() <= key.as_bytes() && key.as_bytes() < g.end.as_slice())
    }

    fn writable(grants: &[Grant], key: &str) -> bool {
        grants.iter().any(|g| {
            g.access == PermissionType::Readwrite
                && g.start.as_slice() <= key.as_bytes()
                && key.as_bytes() < g.end.as_slice()
        })
    }

    #[test]
    fn workers_read_all_but_secrets_and_write_only_their_reports() {
        let keys = Keys::new("/docklet/");
        let grants = worker_grants(&keys);
        for key in [
            keys.cluster(),
            keys.host("tb2"),
            keys.vnode("tb2", "alice-c-0"),
            keys.network_user("alice"),
            keys.group("default"),
            keys.identity("tb1"),
            keys.uid_slot(3),
            keys.usage("alice"),
            keys.image("alice", "img"),
            keys.system_image("base"),
            keys.leader(),
        ] {
            assert!(readable(&grants, &key), "{key}");
        }
        for key in [
            keys.user("alice"),
            keys.token("abcd"),
            keys.workspace_grant("abcd"),
            keys.join_ticket("tb3"),
            keys.idempotency("alice", "k"),
            // other clusters sharing the etcd
            "/other/users/alice".to_owned(),
            "/docklet0".to_owned(),
            "/docklet".to_owned(),
        ] {
            assert!(!readable(&grants, &key), "{key}");
        }
        for key in [
            keys.host("tb2"),
            keys.vnode_status("x"),
            keys.vnode_host("x"),
            keys.vnode("tb2", "x"),
            keys.allocation("tb2"),
            keys.usage("alice"),
            keys.port(30001),
            keys.system_image_build("base", "tb2"),
            keys.image("alice", "img"),
            format!("{}vtep", keys.network_vteps()),
        ] {
            assert!(writable(&grants, &key), "{key}");
        }
        for key in [
            keys.cluster(),
            keys.group("default"),
            keys.identity("tb2"),
            keys.leader(),
            keys.system_image("base"),
            keys.uid_slot(1),
            keys.drain("tb2"),
            keys.user("alice"),
        ] {
            assert!(!writable(&grants, &key), "{key}");
        }
    }

    #[test]
    fn prefix_end_raises_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
