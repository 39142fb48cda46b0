//! Waits of the API's `?wait=` (operations, images being saved, system image updates): the
//! answer is looked at again as soon as etcd says a key it depends on changed, instead of on
//! a timer, so a wait ends within one etcd event of its end, not up to a poll period later.
//!
//! ```text
//! let mut follow = Follow::start(&store, &prefixes, deadline).await;
//! loop {
//!     let answer = look().await?;
//!     if done(&answer) || !follow.changed(relevant).await {
//!         return Ok(answer);
//!     }
//! }
//! ```

use std::time::Duration;

use tokio::time::Instant;

use crate::store::EtcdStore;
use crate::store::etcd::Watches;

/// Looked at again this often even without an event: a safety net for a watch that went
/// quiet without saying so.
const LOOK_AGAIN_EVERY: Duration = Duration::from_secs(2);
/// How often to look while no watch can be had (etcd refusing watches, or one that broke).
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Changes under some prefixes, followed until a deadline.
pub(crate) struct Follow {
    watches: Option<Watches>,
    deadline: Instant,
}

impl Follow {
    /// Starts watching `prefixes` (before the caller's first look, so no change after it is
    /// missed).
    pub(crate) async fn start(store: &EtcdStore, prefixes: &[&str], deadline: Instant) -> Follow {
        let watches = if Instant::now() < deadline {
            store.watch_prefixes(prefixes, None).await.ok()
        } else {
            None
        };
        Follow { watches, deadline }
    }

    /// Waits until a key for which `relevant` holds changed (or a safety-net period passed):
    /// time to look again. False once the deadline has passed: answer with what there is.
    pub(crate) async fn changed(&mut self, relevant: impl Fn(&str) -> bool) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let Some(watches) = self.watches.as_mut() else {
            tokio::time::sleep_until(self.deadline.min(now + POLL_EVERY)).await;
            return true;
        };
        let until = self.deadline.min(now + LOOK_AGAIN_EVERY);
        loop {
            let response = tokio::select! {
                r = watches.next() => r,
                _ = tokio::time::sleep_until(until) => return true,
            };
            let Ok(response) = response else {
                // The watch broke: poll from now on.
                self.watches = None;
                return true;
            };
            let hit = response.events().iter().any(|event| {
                event
                    .kv()
                    .and_then(|kv| kv.key_str().ok())
                    .is_some_and(&relevant)
            });
            if hit {
                return true;
            }
        }
    }
}
