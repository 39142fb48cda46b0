//! Which master leads: the one whose name is in `leader`, a key bound to that master's
//! lease and taken only when absent. Every master serves the API; only the leader runs the
//! controllers. A killed leader's key goes with its lease (after the TTL), a stopped one's
//! at once (it revokes the lease), and the next master to try takes it.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::etcd::classify;
use super::{EtcdStore, StoreError};

impl EtcdStore {
    /// A new lease of `ttl_secs` for a master's candidacy.
    pub async fn grant_lease(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        Ok(self
            .client
            .lease_client()
            .grant(ttl_secs, None)
            .await
            .map_err(classify)?
            .id())
    }

    /// Takes the leadership for `name` under `lease` if nobody holds it; true when this
    /// lease holds it now (taken now or before).
    pub async fn try_lead(&self, name: &str, lease: i64) -> Result<bool, StoreError> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                name,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = self.client.kv_client().txn(txn).await.map_err(classify)?;
        if response.succeeded() {
            return Ok(true);
        }
        Ok(response.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().iter().any(|kv| kv.lease() == lease),
            _ => false,
        }))
    }

    /// The leading master's name, if any.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        self.get_text(&self.keys.leader()).await
    }
}
