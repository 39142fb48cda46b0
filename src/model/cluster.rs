//! The cluster record written by `docklet-admin init`, and the etcd credentials it creates.

use serde::{Deserialize, Serialize};

/// Stored at `<prefix>cluster`; its presence means the cluster is initialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Docklet version that ran `init`.
    pub created_by_version: String,
}

/// Internal credentials for etcd, written by `init` to the shared filesystem
/// (`fs_prefix/global/secrets/etcd.toml`, mode 0600) so that every host of the cluster finds
/// them without anyone copying secrets by hand.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdCredentials {
    /// The etcd user master and workers authenticate as; limited to the cluster's key prefix.
    pub user: String,
    pub password: String,
    /// The etcd `root` user's password, for the administrator's own `etcdctl` work.
    pub root_password: String,
    /// The agent token of sites from before mutual TLS: read (so their files still parse)
    /// and dropped; `init` rewrites the file without it.
    #[serde(default, skip_serializing)]
    pub agent_token: Option<String>,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl EtcdCredentials {
    /// The etcd user and role that own one Docklet cluster's keys.
    pub fn user_for_cluster(cluster_name: &str) -> String {
        format!("docklet-{cluster_name}")
    }

    pub fn to_toml(&self) -> String {
        format!(
            "# Written by `docklet-admin init`. Internal etcd credentials: keep mode 0600.\n{}",
            toml::to_string(self).expect("credentials serialize")
        )
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_hide_secrets_in_debug() {
        let creds = EtcdCredentials {
            user: EtcdCredentials::user_for_cluster("docklet"),
            password: "s3cret-pw".into(),
            root_password: "r00t-pw".into(),
            agent_token: None,
        };
        let text = creds.to_toml();
        assert_eq!(EtcdCredentials::from_toml(&text).unwrap(), creds);
        // A file from before mutual TLS still reads; its agent token is never written again.
        let old = format!("{text}agent_token = \"t0ken\"\n");
        let read = EtcdCredentials::from_toml(&old).unwrap();
        assert_eq!(read.agent_token.as_deref(), Some("t0ken"));
        assert!(!read.to_toml().contains("t0ken"));
        let debug = format!("{creds:?}");
        assert!(debug.contains("docklet-docklet"));
        assert!(
            !debug.contains("s3cret") && !debug.contains("r00t"),
            "{debug}"
        );
    }

    #[test]
    fn malformed_credentials_are_an_error() {
        assert!(EtcdCredentials::from_toml("user = 1").is_err());
    }
}
