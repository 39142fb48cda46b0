//! Accounts, groups and tokens on etcd. Writes that must not race (a new name, a changed
//! record, a group in use) are compare-and-swap transactions.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, PutOptions, Txn, TxnOp, WatchOptions,
};

use super::etcd::classify;
use super::{EtcdStore, StoreError, decode, encode};
use crate::model::account::{Account, TokenRecord};
use crate::model::quota::{DEFAULT_GROUP, Group, Usage};
use crate::model::workspace::WorkspaceGrant;

impl EtcdStore {
    pub async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        self.get_json(&self.keys.user(name)).await
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.list_json(&self.keys.users()).await
    }

    /// Creates `account`; [`StoreError::Conflict`] when the name is taken.
    pub async fn create_account(&self, account: &Account) -> Result<(), StoreError> {
        let key = self.keys.user(&account.name);
        let group = self.keys.group(&account.group);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(group, CompareOp::Greater, 0),
            ])
            .and_then([
                TxnOp::put(key, encode(account), None),
                self.member_put(account),
            ]);
        if self.txn_ok(txn).await? {
            return Ok(());
        }
        if self.account(&account.name).await?.is_some() {
            Err(StoreError::Conflict(format!(
                "user {} already exists",
                account.name
            )))
        } else {
            Err(StoreError::NotFound(format!(
                "no group {} (see `docklet-admin groups`)",
                account.group
            )))
        }
    }

    /// Applies `change` to an account atomically; the new group must exist.
    pub async fn update_account(
        &self,
        name: &str,
        change: impl Fn(&mut Account),
    ) -> Result<Account, StoreError> {
        let key = self.keys.user(name);
        loop {
            let (mut account, revision) = self
                .get_json_rev::<Account>(&key)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no user {name}")))?;
            change(&mut account);
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                    Compare::create_revision(
                        self.keys.group(&account.group),
                        CompareOp::Greater,
                        0,
                    ),
                ])
                .and_then([
                    TxnOp::put(key.clone(), encode(&account), None),
                    self.member_put(&account),
                ]);
            if self.txn_ok(txn).await? {
                return Ok(account);
            }
            if self.group(&account.group).await?.is_none() {
                return Err(StoreError::NotFound(format!("no group {}", account.group)));
            }
        }
    }

    /// Deletes an account that owns no cluster, with its tokens.
    pub async fn delete_account(&self, name: &str) -> Result<(), StoreError> {
        let clusters = self.keys_under(&self.keys.user_clusters(name)).await?;
        if !clusters.is_empty() {
            return Err(StoreError::Conflict(format!(
                "user {name} still has clusters ({}): delete them first",
                clusters.join(", ")
            )));
        }
        let images = self
            .keys_under(&format!("{}{name}/", self.keys.images()))
            .await?;
        if !images.is_empty() {
            return Err(StoreError::Conflict(format!(
                "user {name} still has images ({}): delete them first",
                images.join(", ")
            )));
        }
        let addresses = self.keys_under(&self.keys.network_addrs(name)).await?;
        if !addresses.is_empty() {
            return Err(StoreError::Conflict(format!(
                "user {name} still has nodes being deleted ({}): try again when they are gone",
                addresses.join(", ")
            )));
        }
        let key = self.keys.user(name);
        let mut ops = vec![
            TxnOp::delete(key.clone(), None::<DeleteOptions>),
            TxnOp::delete(self.keys.network_member(name), None::<DeleteOptions>),
        ];
        for (digest, _) in self.tokens_of(name).await? {
            ops.push(TxnOp::delete(
                self.keys.token(&digest),
                None::<DeleteOptions>,
            ));
        }
        // The user's network goes (its address blocks are free for others; a user of that
        // name gets a network again with their first node). The uid range stays theirs:
        // their `/root/nfs` data stays on the shared filesystem, owned by it.
        let net_key = self.keys.network_user(name);
        let (net, net_revision) = self
            .get_json_rev::<crate::model::network::UserNet>(&net_key)
            .await?
            .map_or((None, 0), |(net, revision)| (Some(net), revision));
        for block in net.iter().flat_map(|n| &n.blocks) {
            ops.push(TxnOp::delete(
                format!("{}{block}", self.keys.network_blocks()),
                None::<DeleteOptions>,
            ));
        }
        ops.push(TxnOp::delete(net_key.clone(), None::<DeleteOptions>));
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Greater, 0),
                Compare::mod_revision(net_key, CompareOp::Equal, net_revision),
            ])
            .and_then(ops);
        if self.txn_ok(txn).await? {
            Ok(())
        } else if self.account(name).await?.is_some() {
            Err(StoreError::Conflict(format!(
                "user {name}'s network changed meanwhile (a new cluster?): try again"
            )))
        } else {
            Err(StoreError::NotFound(format!("no user {name}")))
        }
    }

    /// `network/members/<user>`: the account's group, for the workers, which apply its egress
    /// allowances and read no accounts. Written with every account change.
    fn member_put(&self, account: &Account) -> TxnOp {
        TxnOp::put(
            self.keys.network_member(&account.name),
            account.group.as_bytes(),
            None,
        )
    }

    /// Writes the membership keys accounts made by an older version lack; returns how many.
    pub async fn ensure_members(&self) -> Result<usize, StoreError> {
        let members = self.get_text_map(&self.keys.network_members()).await?;
        let mut written = 0;
        for account in self.list_accounts().await? {
            if members.get(&account.name) == Some(&account.group) {
                continue;
            }
            // Written only if the account did not change meanwhile (its change writes it).
            let key = self.keys.user(&account.name);
            let Some((account, revision)) = self.get_json_rev::<Account>(&key).await? else {
                continue;
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
                .and_then([self.member_put(&account)]);
            written += usize::from(self.txn_ok(txn).await?);
        }
        Ok(written)
    }

    pub async fn group(&self, name: &str) -> Result<Option<Group>, StoreError> {
        self.get_json(&self.keys.group(name)).await
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        self.list_json(&self.keys.groups()).await
    }

    /// Creates a group, or replaces it when `replace`.
    pub async fn put_group(&self, group: &Group, replace: bool) -> Result<(), StoreError> {
        let key = self.keys.group(&group.name);
        let exists = if replace {
            CompareOp::Greater
        } else {
            CompareOp::Equal
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), exists, 0)])
            .and_then([TxnOp::put(key, encode(group), None)]);
        if self.txn_ok(txn).await? {
            Ok(())
        } else if replace {
            Err(StoreError::NotFound(format!("no group {}", group.name)))
        } else {
            Err(StoreError::Conflict(format!(
                "group {} already exists",
                group.name
            )))
        }
    }

    /// Creates those of `groups` that do not exist (clusters initialized before groups
    /// existed get them at the master's next start); returns how many it created.
    pub async fn ensure_groups(&self, groups: &[Group]) -> Result<usize, StoreError> {
        let mut created = 0;
        for group in groups {
            match self.put_group(group, false).await {
                Ok(()) => created += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(created)
    }

    /// Deletes a group nobody belongs to that is not the default.
    pub async fn delete_group(&self, name: &str) -> Result<(), StoreError> {
        if self.default_group().await? == name {
            return Err(StoreError::Conflict(format!(
                "group {name} is the default group for new users: choose another default first"
            )));
        }
        let members: Vec<String> = self
            .list_accounts()
            .await?
            .into_iter()
            .filter(|a| a.group == name)
            .map(|a| a.name)
            .collect();
        if !members.is_empty() {
            return Err(StoreError::Conflict(format!(
                "group {name} still has members: {}",
                members.join(", ")
            )));
        }
        let key = self.keys.group(name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(key, None::<DeleteOptions>)]);
        if self.txn_ok(txn).await? {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no group {name}")))
        }
    }

    /// The group new users join.
    pub async fn default_group(&self) -> Result<String, StoreError> {
        Ok(self
            .get_json(&self.keys.default_group())
            .await?
            .unwrap_or_else(|| DEFAULT_GROUP.to_owned()))
    }

    pub async fn set_default_group(&self, name: &str) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.group(name),
                CompareOp::Greater,
                0,
            )])
            .and_then([TxnOp::put(self.keys.default_group(), encode(&name), None)]);
        if self.txn_ok(txn).await? {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no group {name}")))
        }
    }

    pub async fn token(&self, digest: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get_json(&self.keys.token(digest)).await
    }

    pub async fn put_token(&self, digest: &str, record: &TokenRecord) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(self.keys.token(digest), encode(record), None)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Stores a workspace grant under the digest of its secret, gone after `ttl_secs`
    /// (an etcd lease) if nobody takes it.
    pub async fn put_workspace_grant(
        &self,
        digest: &str,
        grant: &WorkspaceGrant,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let lease = self
            .client
            .lease_client()
            .grant(ttl_secs as i64, None)
            .await
            .map_err(classify)?
            .id();
        self.client
            .kv_client()
            .put(
                self.keys.workspace_grant(digest),
                encode(grant),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Takes a workspace grant: deleted in the same request that reads it, so of two
    /// exchanges of one grant (on any masters) one alone gets it.
    pub async fn take_workspace_grant(
        &self,
        digest: &str,
    ) -> Result<Option<WorkspaceGrant>, StoreError> {
        let key = self.keys.workspace_grant(digest);
        let response = self
            .client
            .kv_client()
            .delete(key.clone(), Some(DeleteOptions::new().with_prev_key()))
            .await
            .map_err(classify)?;
        response
            .prev_kvs()
            .first()
            .map(|kv| decode(&key, kv.value()))
            .transpose()
    }

    /// Records a use of a token that still exists (a revoked one stays revoked).
    pub async fn touch_token(&self, digest: &str, record: &TokenRecord) -> Result<(), StoreError> {
        let key = self.keys.token(digest);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(key, encode(record), None)]);
        self.txn_ok(txn).await.map(|_| ())
    }

    pub async fn delete_token(&self, digest: &str) -> Result<bool, StoreError> {
        let response = self
            .client
            .kv_client()
            .delete(self.keys.token(digest), None)
            .await
            .map_err(classify)?;
        Ok(response.deleted() > 0)
    }

    /// Deletes every token (sessions and API tokens) of `user` but `keep` (a digest); returns
    /// how many went. Every master then ends their open connections ([`TokenWatch`]).
    pub async fn revoke_tokens_of(
        &self,
        user: &str,
        keep: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mut revoked = 0;
        for (digest, _) in self.tokens_of(user).await? {
            if Some(digest.as_str()) != keep && self.delete_token(&digest).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Watches the token records from now on, for the digests of those that go.
    pub async fn watch_tokens(&self) -> Result<TokenWatch, StoreError> {
        let prefix = self.keys.tokens();
        let watch = self
            .client
            .watch_client()
            .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(classify)?;
        Ok(TokenWatch { watch, prefix })
    }

    /// A user's tokens with their digests, oldest first.
    pub async fn tokens_of(&self, user: &str) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        let prefix = self.keys.tokens();
        let response = self.get_prefix(&prefix).await?;
        let mut tokens = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let record: TokenRecord = decode(&key, kv.value())?;
            if record.user == user {
                tokens.push((key[prefix.len()..].to_owned(), record));
            }
        }
        tokens.sort_by_key(|(_, t)| t.created_at);
        Ok(tokens)
    }

    /// What a user's vnodes hold now.
    pub async fn usage(&self, user: &str) -> Result<Usage, StoreError> {
        Ok(self
            .get_json(&self.keys.usage(user))
            .await?
            .unwrap_or_default())
    }

    pub(super) async fn txn_ok(&self, txn: Txn) -> Result<bool, StoreError> {
        Ok(self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(classify)?
            .succeeded())
    }
}

/// The token records' watch (see [`EtcdStore::watch_tokens`]).
pub struct TokenWatch {
    watch: etcd_client::WatchStream,
    prefix: String,
}

impl TokenWatch {
    /// The digests of the tokens deleted in the next change, or why the watch has to start
    /// over.
    pub async fn next_deleted(&mut self) -> Result<Vec<String>, StoreError> {
        let response = match self.watch.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(StoreError::Unavailable("the watch ended".into())),
            Err(e) => return Err(classify(e)),
        };
        if response.canceled() {
            return Err(StoreError::Unavailable("the watch was cancelled".into()));
        }
        Ok(response
            .events()
            .iter()
            .filter(|e| e.event_type() == EventType::Delete)
            .filter_map(|e| e.kv())
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                key.strip_prefix(&self.prefix).map(str::to_owned)
            })
            .collect())
    }
}
