//! Hosts' identities on etcd: `identities/<host>` lists the certificates in force
//! ([`HostIdentity`]), `join-tickets/<host>` the one-time ticket of a pending join. A join
//! takes its ticket and records the new certificates in one transaction, so a ticket serves
//! one join however many race for it.

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};

use super::etcd::classify;
use super::{EtcdStore, StoreError, encode};
use crate::pki::join::{HostIdentity, JoinTicket};

impl EtcdStore {
    /// Every host's certificates in force.
    pub async fn host_identities(&self) -> Result<Vec<HostIdentity>, StoreError> {
        self.list_json(&self.keys.identities()).await
    }

    pub async fn host_identity(&self, host: &str) -> Result<Option<HostIdentity>, StoreError> {
        self.get_json(&self.keys.identity(host)).await
    }

    /// Records certificates issued outside a join (`init` on the CA host).
    pub async fn put_host_identity(&self, identity: &HostIdentity) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(self.keys.identity(&identity.host), encode(identity), None)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Records a new ticket for `host`, replacing an unused one.
    pub async fn put_join_ticket(&self, ticket: &JoinTicket) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(self.keys.join_ticket(&ticket.host), encode(ticket), None)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// The pending ticket of `host` and its revision.
    pub async fn join_ticket(&self, host: &str) -> Result<Option<(JoinTicket, i64)>, StoreError> {
        self.get_json_rev(&self.keys.join_ticket(host)).await
    }

    /// Takes the ticket read at `revision` and records `identity`, in one transaction:
    /// `Conflict` when the ticket was taken or replaced meanwhile.
    pub async fn complete_join(
        &self,
        revision: i64,
        identity: &HostIdentity,
    ) -> Result<(), StoreError> {
        let ticket = self.keys.join_ticket(&identity.host);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                ticket.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([
                TxnOp::delete(ticket, None::<DeleteOptions>),
                TxnOp::put(self.keys.identity(&identity.host), encode(identity), None),
            ]);
        let response = self.client.kv_client().txn(txn).await.map_err(classify)?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "the join token of {} was used meanwhile",
                identity.host
            )))
        }
    }

    /// Forgets a host's ticket (an expired one).
    pub async fn delete_join_ticket(&self, host: &str) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .delete(self.keys.join_ticket(host), None)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Revokes a host: its certificates and any pending ticket go. Returns whether it had
    /// either.
    pub async fn remove_host_identity(&self, host: &str) -> Result<bool, StoreError> {
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.identity(host), None::<DeleteOptions>),
            TxnOp::delete(self.keys.join_ticket(host), None::<DeleteOptions>),
        ]);
        let response = self.client.kv_client().txn(txn).await.map_err(classify)?;
        Ok(response.op_responses().iter().any(|op| match op {
            etcd_client::TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        }))
    }
}
