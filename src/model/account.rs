//! Portal accounts stored in etcd. `init` creates the administrator `root` with a random
//! password; later issues add PAM users, groups and quotas.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    /// Argon2id PHC string; `None` for accounts that log in through PAM.
    pub password_hash: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash password: {0}")]
pub struct HashError(String);

/// Hashes a password with Argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

impl Account {
    pub fn local(name: &str, role: Role, password: &str) -> Result<Account, HashError> {
        Ok(Account {
            name: name.to_owned(),
            role,
            password_hash: Some(hash_password(password)?),
        })
    }

    /// True when `password` is this local account's password.
    pub fn verify_password(&self, password: &str) -> bool {
        let Some(stored) = &self.password_hash else {
            return false;
        };
        match PasswordHash::new(stored) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_account_verifies_only_its_password() {
        let account = Account::local("root", Role::Admin, "correct horse").unwrap();
        let hash = account.password_hash.as_deref().unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(account.verify_password("correct horse"));
        assert!(!account.verify_password("correct horsE"));
        assert!(!account.verify_password(""));
    }

    #[test]
    fn same_password_gets_different_salts() {
        assert_ne!(hash_password("pw").unwrap(), hash_password("pw").unwrap());
    }

    #[test]
    fn account_without_hash_or_with_garbage_never_verifies() {
        let mut account = Account {
            name: "alice".into(),
            role: Role::User,
            password_hash: None,
        };
        assert!(!account.verify_password("anything"));
        account.password_hash = Some("not-a-phc-string".into());
        assert!(!account.verify_password("not-a-phc-string"));
    }
}
