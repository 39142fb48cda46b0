//! The long-lived connections of each token (event streams, terminals, workspace WebSockets),
//! so that they end when their token does. Every master watches the token records in etcd:
//! a token that goes (logout, revocation, a password change, a lock, a demotion, a deleted
//! account) ends its connections on every master within moments, and a connection also ends
//! when its session expires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, info};

use super::Master;
use super::actions::Caller;

/// The open connections, by token digest.
#[derive(Default)]
pub struct LiveConnections {
    next: AtomicU64,
    by_token: Mutex<HashMap<String, HashMap<u64, oneshot::Sender<()>>>>,
}

/// One open connection: [`Live::ended`] resolves when its token is revoked or expires;
/// dropping it deregisters the connection.
pub struct Live {
    registry: Option<(Arc<LiveConnections>, String, u64)>,
    revoked: Option<oneshot::Receiver<()>>,
    expires_at: Option<u64>,
}

impl LiveConnections {
    /// Registers a connection of `caller` (one without a token, a local administrator on
    /// D-Bus, is never revoked this way).
    pub fn open(self: &Arc<Self>, caller: &Caller) -> Live {
        let Some(digest) = caller.token_digest.clone() else {
            return Live {
                registry: None,
                revoked: None,
                expires_at: None,
            };
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock()
            .entry(digest.clone())
            .or_default()
            .insert(id, tx);
        Live {
            registry: Some((self.clone(), digest, id)),
            revoked: Some(rx),
            expires_at: caller.expires_at,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, oneshot::Sender<()>>>> {
        self.by_token.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every connection of the token `digest`; returns how many there were.
    pub fn revoke(&self, digest: &str) -> usize {
        let ended = self.lock().remove(digest).unwrap_or_default();
        let count = ended.len();
        for (_, tx) in ended {
            let _ = tx.send(());
        }
        count
    }

    /// The tokens with open connections now.
    pub fn tokens(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

impl Live {
    /// Resolves when the connection must end: its token was revoked, or its session expired.
    pub async fn ended(&mut self) {
        let expiry = async {
            match self.expires_at {
                Some(at) => {
                    let left = at.saturating_sub(super::now_secs());
                    tokio::time::sleep(Duration::from_secs(left)).await
                }
                None => std::future::pending().await,
            }
        };
        let revoked = async {
            match self.revoked.as_mut() {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expiry => {}
            _ = revoked => {}
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some((registry, digest, id)) = self.registry.take() {
            let mut map = registry.lock();
            if let Some(connections) = map.get_mut(&digest) {
                connections.remove(&id);
                if connections.is_empty() {
                    map.remove(&digest);
                }
            }
        }
    }
}

impl Master {
    /// Follows the token records in etcd, on every master, and ends the connections of the
    /// tokens that go. After each (re)start of the watch, connections whose token went
    /// meanwhile are ended too.
    pub async fn follow_revocations(self: Arc<Self>) {
        loop {
            let Some(store) = self.connected_store(Duration::from_secs(3600)).await else {
                continue;
            };
            let mut watch = match store.watch_tokens().await {
                Ok(watch) => watch,
                Err(e) => {
                    debug!("token watch: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for digest in self.live.tokens() {
                if matches!(store.token(&digest).await, Ok(None)) {
                    self.live.revoke(&digest);
                }
            }
            loop {
                match watch.next_deleted().await {
                    Ok(digests) => {
                        for digest in digests {
                            let ended = self.live.revoke(&digest);
                            if ended > 0 {
                                info!(
                                    connections = ended,
                                    "ended the open connections of a revoked token"
                                );
                            }
                        }
                    }
                    Err(e) => {
                        debug!("token watch: {e}; starting over");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::account::Account;

    fn caller(digest: Option<&str>, expires_at: Option<u64>) -> Caller {
        Caller {
            account: Account::pam("alice", "users", 0),
            admin: false,
            token_digest: digest.map(str::to_owned),
            expires_at,
            token_kind: None,
        }
    }

    #[tokio::test]
    async fn a_revoked_token_ends_its_connections_and_only_its() {
        let live = Arc::new(LiveConnections::default());
        let mut a1 = live.open(&caller(Some("a"), None));
        let mut a2 = live.open(&caller(Some("a"), None));
        let mut b = live.open(&caller(Some("b"), None));
        assert_eq!(live.revoke("a"), 2);
        tokio::time::timeout(Duration::from_secs(1), a1.ended())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), a2.ended())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.ended())
                .await
                .is_err()
        );
        drop(b);
        assert!(live.tokens().is_empty());
    }

    #[tokio::test]
    async fn an_expired_session_ends_its_connections() {
        let live = Arc::new(LiveConnections::default());
        let mut expired = live.open(&caller(Some("a"), Some(super::super::now_secs())));
        tokio::time::timeout(Duration::from_secs(1), expired.ended())
            .await
            .unwrap();
        let mut local = live.open(&caller(None, None));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), local.ended())
                .await
                .is_err()
        );
    }
}
