//! Who makes a directory on the shared filesystem: `dir-claims/<user>/<path>`, taken in a
//! transaction only when absent and bound to a short lease. Nodes on several hosts need the
//! same new directory at once (a user's first nodes, a job's working directory), and
//! GlusterFS has no safe way for several clients to make one name at once: two mkdirs can
//! split its replicas on what the directory is, and a rename can replace a directory another
//! host's node is already in. The host that takes the claim makes it; the others wait for it
//! to appear. The lease lets a later need claim again if the maker died first.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{EtcdStore, StoreError};

/// How long a claim lasts: far longer than making a few directories takes.
const CLAIM_SECS: i64 = 60;

impl EtcdStore {
    /// Takes the claim on `user`'s `path` for `host`; false when another host holds it.
    pub async fn claim_dir(&self, user: &str, path: &str, host: &str) -> Result<bool, StoreError> {
        let lease = self.grant_lease(CLAIM_SECS).await?;
        let key = self.keys.dir_claim(user, path);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                host,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.txn_ok(txn).await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::memory_etcd::TestSite;

    #[tokio::test]
    async fn one_host_makes_a_directory_the_others_wait() {
        let site = TestSite::new().await;
        let store = &site.store;
        assert!(store.claim_dir("alice", "data", "h1").await.unwrap());
        assert!(!store.claim_dir("alice", "data", "h2").await.unwrap());
        assert!(store.claim_dir("alice", "data/jobs/7", "h2").await.unwrap());
        assert!(store.claim_dir("bob", "data", "h2").await.unwrap());
    }
}
