//! Password checks under the login throttle: every attempt at a password (a login, the
//! current password of a change) is reserved in the throttle before it is checked, and the
//! check itself runs on a bounded pool, so a burst of guesses is refused before it costs a
//! hash and cannot exhaust the master.

use std::future::Future;

use super::Master;
use super::errors::ApiError;
use super::now_secs;

impl Master {
    /// Runs `check` (whether the password was right, and what else it found) as one attempt
    /// at `user` from `source`: refused while throttled; a right password clears the
    /// attempt, a wrong one keeps it counted, an undecided one (an error) gives it back.
    pub(crate) async fn throttled_check<T>(
        &self,
        user: &str,
        source: &str,
        check: impl Future<Output = Result<(bool, T), ApiError>>,
    ) -> Result<(bool, T), ApiError> {
        if let Err(wait) = self
            .throttle
            .lock()
            .unwrap()
            .reserve(user, source, now_secs())
        {
            return Err(ApiError::Throttled { retry_after: wait });
        }
        let checked = check.await;
        let mut throttle = self.throttle.lock().unwrap();
        match &checked {
            Ok((true, _)) => throttle.succeeded(user, source),
            Ok((false, _)) => {}
            Err(_) => throttle.release(user, source),
        }
        checked
    }
}

/// Password checks and hashes (Argon2: 19 MiB and tens of milliseconds each; PAM) run on a
/// bounded pool: as many at once as the machine has cores, and at most [`QUEUED_CHECKS`]
/// more waiting; beyond that a request is answered "busy" at once. So a burst of logins
/// cannot exhaust the master's memory or its blocking threads.
pub struct PasswordChecks {
    running: tokio::sync::Semaphore,
    admitted: tokio::sync::Semaphore,
}

/// How many password checks may wait for the pool.
pub const QUEUED_CHECKS: usize = 64;

impl Default for PasswordChecks {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasswordChecks {
            running: tokio::sync::Semaphore::new(cores),
            admitted: tokio::sync::Semaphore::new(cores + QUEUED_CHECKS),
        }
    }
}

impl PasswordChecks {
    /// Runs `check` on the pool, or refuses at once when too many wait.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let busy =
            || ApiError::Unavailable("too many logins at once: try again in a moment".into());
        let _admitted = self.admitted.try_acquire().map_err(|_| busy())?;
        let _running = self.running.acquire().await.map_err(|_| busy())?;
        tokio::task::spawn_blocking(check)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}
