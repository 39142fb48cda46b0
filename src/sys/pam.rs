//! Password checks through PAM (service `docklet`, `/etc/pam.d/docklet` from the package), so
//! system and directory accounts log in to the portal with their own passwords. PAM is
//! blocking and may be slow on purpose (pam_faildelay): callers run it on a blocking thread.

/// Checks a user's password; `Ok(false)` for a wrong password or an unknown or expired
/// account, `Err` when PAM itself cannot be used.
pub trait PasswordCheck: Send + Sync {
    fn check(&self, user: &str, password: &str) -> Result<bool, PamError>;
}

#[derive(Debug, thiserror::Error)]
#[error("PAM service {service} cannot be used: {reason}")]
pub struct PamError {
    pub service: String,
    pub reason: String,
}

/// The host's PAM stack.
pub struct Pam {
    pub service: String,
}

impl PasswordCheck for Pam {
    fn check(&self, user: &str, password: &str) -> Result<bool, PamError> {
        let mut client = pam::Client::with_password(&self.service).map_err(|e| PamError {
            service: self.service.clone(),
            reason: e.to_string(),
        })?;
        client.conversation_mut().set_credentials(user, password);
        // `authenticate` runs pam_authenticate and then pam_acct_mgmt, so expired and locked
        // system accounts are refused as well.
        match client.authenticate() {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::debug!(user, error = %e, "PAM refused a login");
                Ok(false)
            }
        }
    }
}

/// Accounts and passwords given up front, for unit tests of the login logic.
#[derive(Default)]
pub struct FakePam {
    pub accounts: Vec<(String, String)>,
}

impl PasswordCheck for FakePam {
    fn check(&self, user: &str, password: &str) -> Result<bool, PamError> {
        Ok(self
            .accounts
            .iter()
            .any(|(u, p)| u == user && p == password))
    }
}
