//! Accounts and groups: the administrators' side (list, create, change, delete) and a
//! user's own account.

use super::*;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::master::{Master, now_secs};
use crate::model::account::{self, Account, AccountStatus, AuthMethod};
use crate::model::quota::{self, Group, NodeSize, Quota};
use crate::store::EtcdStore;

#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    /// Only for local accounts; PAM accounts have none here.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub auth: Option<AuthMethod>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AccountStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Required with `password` when users change their own: the one they have now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
}

impl UserPatch {
    /// What it changes, for the journal: `group g2, status locked, password`.
    fn summary(&self) -> String {
        let mut changes = Vec::new();
        if let Some(group) = &self.group {
            changes.push(format!("group {group}"));
        }
        if let Some(status) = self.status {
            changes.push(format!("status {}", status.as_str()));
        }
        if self.password.is_some() {
            changes.push("password".to_owned());
        }
        changes.join(", ")
    }
}

/// Changes to a group; absent fields stay as they are.
#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaPatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<NodeSize>,
    /// Replaces the group's egress allowances (an empty list removes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub egress_allow: Option<Vec<crate::model::egress::EgressRule>>,
    /// Replaces the group's batch quota (fields left out take their defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::model::quota::BatchQuota>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnodes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
}

impl QuotaPatch {
    pub fn apply(&self, quota: &mut Quota) {
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { quota.$f = v; })* };
        }
        set!(
            cpu_millis,
            memory_bytes,
            disk_bytes,
            vnodes,
            images,
            image_bytes,
            port_mappings,
            idle_secs
        );
    }
}

impl Master {
    pub(crate) async fn group_of(
        &self,
        store: &EtcdStore,
        account: &Account,
    ) -> Result<Group, ApiError> {
        store.group(&account.group).await?.ok_or_else(|| {
            ApiError::Conflict(format!(
                "your group {} no longer exists: ask an administrator",
                account.group
            ))
        })
    }

    // ---- administration ----

    pub async fn list_users(&self, caller: &Caller) -> Result<Vec<Me>, ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        let mut out = Vec::new();
        for account in store.list_accounts().await? {
            out.push(self.account_view(&store, &account).await?);
        }
        Ok(out)
    }

    pub async fn show_user(&self, caller: &Caller, name: &str) -> Result<Me, ApiError> {
        if name != caller.name() {
            caller.require_admin()?;
        }
        let store = self.store().await?;
        let account = store
            .account(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
        self.account_view(&store, &account).await
    }

    pub async fn create_user(&self, caller: &Caller, new: &NewUser) -> Result<Me, ApiError> {
        caller.require_admin()?;
        account::validate_account_name(&new.name)
            .map_err(|e| ApiError::invalid("invalid_name", "name", e.to_string()))?;
        let store = self.store().await?;
        let group = match &new.group {
            Some(g) => g.clone(),
            None => store.default_group().await?,
        };
        let now = now_secs();
        let account = match (new.auth.unwrap_or(AuthMethod::Local), &new.password) {
            (AuthMethod::Local, Some(password)) => {
                account::validate_password(password).map_err(|e| {
                    ApiError::invalid("invalid_password", "password", e.to_string())
                })?;
                let (name, group, pw) = (new.name.clone(), group.clone(), password.clone());
                self.password_checks
                    .run(move || Account::local(&name, &group, &pw, now))
                    .await?
                    .map_err(|e| ApiError::Internal(e.to_string()))?
            }
            (AuthMethod::Local, None) => {
                return Err(ApiError::invalid(
                    "invalid_password",
                    "password",
                    "a local account needs a password",
                ));
            }
            (AuthMethod::Pam, None) => Account::pam(&new.name, &group, now),
            (AuthMethod::Pam, Some(_)) => {
                return Err(ApiError::invalid(
                    "invalid_password",
                    "password",
                    "a PAM account's password is the system's: give none",
                ));
            }
        };
        store.create_account(&account).await?;
        info!(
            user = %account.name,
            group = %account.group,
            by = caller.name(),
            action = "user.create",
            "{} created user {} in group {}",
            caller.name(),
            account.name,
            account.group
        );
        self.account_view(&store, &account).await
    }

    /// Changes an account. A new password, a lock or a demotion ends every other session
    /// and API token of the account (and their open connections, see [`super::live`]); users
    /// changing their own password keep the session they changed it from, and must give the
    /// current one (checked under the login throttle, from `source`).
    pub async fn update_user(
        &self,
        caller: &Caller,
        name: &str,
        patch: &UserPatch,
        source: &str,
    ) -> Result<Me, ApiError> {
        // Users may change their own local password; everything else is for administrators.
        let own = name == caller.name();
        let own_password_only =
            own && patch.group.is_none() && patch.status.is_none() && patch.password.is_some();
        if !own_password_only {
            caller.require_admin()?;
        }
        if patch.current_password.is_some() && patch.password.is_none() {
            return Err(ApiError::invalid(
                "invalid_body",
                "current_password",
                "current_password goes with a new password",
            ));
        }
        let store = self.store().await?;
        let before = store
            .account(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
        let hash = self
            .new_password_hash(caller, &before, patch, source)
            .await?;
        let was_admin = self.is_admin(&store, &before).await?;
        let account = store
            .update_account(name, |a| {
                if let Some(group) = &patch.group {
                    a.group = group.clone();
                }
                if let Some(status) = patch.status {
                    a.status = status;
                }
                if let Some(hash) = &hash {
                    a.password_hash = Some(hash.clone());
                }
            })
            .await?;
        info!(
            user = name,
            by = caller.name(),
            action = "user.change",
            "{} changed user {name}: {}",
            caller.name(),
            patch.summary()
        );
        let demoted = was_admin && !self.is_admin(&store, &account).await?;
        let password_changed = hash.is_some();
        self.end_sessions_after(&store, caller, &account, demoted, password_changed)
            .await?;
        self.account_view(&store, &account).await
    }

    /// The hash of a new local password the patch sets, checked: not for PAM accounts, and
    /// with the current password when users change their own from a session (a session
    /// alone, stolen or left open, cannot take the account).
    async fn new_password_hash(
        &self,
        caller: &Caller,
        before: &Account,
        patch: &UserPatch,
        source: &str,
    ) -> Result<Option<String>, ApiError> {
        let own = before.name == caller.name();
        Ok(match &patch.password {
            Some(password) => {
                if before.auth == AuthMethod::Pam {
                    return Err(ApiError::invalid(
                        "invalid_password",
                        "password",
                        "a PAM account's password is changed on the system, not here",
                    ));
                }
                account::validate_password(password).map_err(|e| {
                    ApiError::invalid("invalid_password", "password", e.to_string())
                })?;
                // A session alone (stolen, or a browser left open) cannot take the account.
                if own && caller.token_digest.is_some() {
                    let current = patch.current_password.as_deref().ok_or_else(|| {
                        ApiError::invalid(
                            "missing_current_password",
                            "current_password",
                            "give your current password to change it",
                        )
                    })?;
                    self.check_current_password(before, current, source).await?;
                }
                let pw = password.clone();
                Some(
                    self.password_checks
                        .run(move || account::hash_password(&pw))
                        .await?
                        .map_err(|e| ApiError::Internal(e.to_string()))?,
                )
            }
            None => None,
        })
    }

    /// After a change of `account`: a lock or a demotion ends every session and API token of
    /// it; a new password ends all but the session that set it (when users set their own).
    async fn end_sessions_after(
        &self,
        store: &EtcdStore,
        caller: &Caller,
        account: &Account,
        demoted: bool,
        password_changed: bool,
    ) -> Result<(), ApiError> {
        let name = account.name.as_str();
        let own = name == caller.name();
        let locked = account.status == AccountStatus::Locked;
        let why = if locked {
            Some("locked")
        } else if demoted {
            Some("no longer an administrator")
        } else if password_changed {
            Some("new password")
        } else {
            None
        };
        if let Some(why) = why {
            // The session that set its own new password stays; a lock or demotion ends all.
            let keep = (own && !locked && !demoted)
                .then_some(caller.token_digest.as_deref())
                .flatten();
            let revoked = store.revoke_tokens_of(name, keep).await?;
            info!(
                user = name,
                revoked,
                action = "user.revoke",
                "{revoked} sessions and API tokens of {name} ended: {why}"
            );
        }
        Ok(())
    }

    /// Checks a user's current local password before a change, under the login throttle.
    pub(super) async fn check_current_password(
        &self,
        account: &Account,
        password: &str,
        source: &str,
    ) -> Result<(), ApiError> {
        let name = account.name.as_str();
        let check = async {
            if password.is_empty() || password.len() > account::MAX_PASSWORD {
                return Ok((false, ()));
            }
            let (a, pw) = (account.clone(), password.to_owned());
            let right = self
                .password_checks
                .run(move || a.verify_password(&pw))
                .await?;
            Ok((right, ()))
        };
        if self.throttled_check(name, source, check).await?.0 {
            return Ok(());
        }
        info!(
            user = name,
            source, "password change refused: wrong current password"
        );
        Err(ApiError::invalid(
            "wrong_password",
            "current_password",
            "your current password is not right",
        ))
    }

    pub async fn delete_user(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        if name == caller.name() {
            return Err(ApiError::Conflict("you cannot delete yourself".into()));
        }
        let store = self.store().await?;
        store.delete_account(name).await?;
        info!(
            user = name,
            by = caller.name(),
            action = "user.delete",
            "{} deleted user {name}",
            caller.name()
        );
        // Nobody could cancel them any more, and a later account of the same name must not
        // see them: running ones are cancelled (and forgotten once they end), ended ones
        // forgotten now.
        for stored in store.all_jobs().await? {
            if stored.job.user != name {
                continue;
            }
            if stored.done {
                store.forget_job(stored.job.id).await?;
            } else {
                self.cancel_job(caller, stored.job.id).await?;
            }
        }
        Ok(())
    }

    pub async fn list_groups(&self, caller: &Caller) -> Result<Vec<Group>, ApiError> {
        caller.require_admin()?;
        Ok(self.store().await?.list_groups().await?)
    }

    pub async fn create_group(&self, caller: &Caller, group: &Group) -> Result<Group, ApiError> {
        caller.require_admin()?;
        quota::validate_group(group)
            .map_err(|e| ApiError::invalid("invalid_group", "group", e.to_string()))?;
        self.store().await?.put_group(group, false).await?;
        info!(
            group = %group.name,
            by = caller.name(),
            action = "group.create",
            "{} created group {}",
            caller.name(),
            group.name
        );
        Ok(group.clone())
    }

    pub async fn update_group(
        &self,
        caller: &Caller,
        name: &str,
        patch: &GroupPatch,
    ) -> Result<Group, ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        let mut group = store
            .group(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no group {name}")))?;
        let demoted = group.admin && patch.admin == Some(false);
        if let Some(admin) = patch.admin {
            group.admin = admin;
        }
        if let Some(quota) = &patch.quota {
            quota.apply(&mut group.quota);
        }
        if let Some(defaults) = patch.defaults {
            group.defaults = defaults;
        }
        if let Some(allow) = &patch.egress_allow {
            group.egress_allow = allow.clone();
        }
        if let Some(batch) = patch.batch {
            group.batch = batch;
        }
        quota::validate_group(&group)
            .map_err(|e| ApiError::invalid("invalid_group", "group", e.to_string()))?;
        store.put_group(&group, true).await?;
        let egress: Vec<String> = group.egress_allow.iter().map(|r| r.to_string()).collect();
        info!(
            group = name,
            by = caller.name(),
            action = "group.change",
            "{} changed group {name} (egress allowed to: {})",
            caller.name(),
            if egress.is_empty() {
                "nothing".to_owned()
            } else {
                egress.join(", ")
            }
        );
        if demoted {
            // Its members are no longer administrators: their sessions and tokens end.
            for member in store.list_accounts().await? {
                if member.group == name {
                    let revoked = store.revoke_tokens_of(&member.name, None).await?;
                    info!(
                        user = %member.name,
                        revoked,
                        action = "user.revoke",
                        "{revoked} sessions and API tokens of {} ended: no longer an administrator",
                        member.name
                    );
                }
            }
        }
        Ok(group)
    }

    pub async fn delete_group(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        self.store().await?.delete_group(name).await?;
        Ok(())
    }

    pub async fn set_default_group(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        self.store().await?.set_default_group(name).await?;
        Ok(())
    }

    pub async fn default_group(&self, caller: &Caller) -> Result<String, ApiError> {
        caller.require_admin()?;
        Ok(self.store().await?.default_group().await?)
    }
}
