//! Logging in and out, sessions, API tokens, workspace grants, and who the caller is.

use super::*;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::master::{Master, now_secs};
use crate::model::account::{
    self, Account, AccountStatus, AuthMethod, TOKEN_PREFIX, TokenKind, TokenRecord,
};
use crate::model::quota::{NodeSize, Quota, Usage};
use crate::model::workspace::{self, WorkspaceGrant};
use crate::store::{EtcdStore, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginResult {
    pub token: String,
    pub user: String,
    pub admin: bool,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    pub token: String,
    #[serde(flatten)]
    pub record: TokenRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Me {
    pub user: String,
    pub group: String,
    pub admin: bool,
    pub status: AccountStatus,
    pub auth: AuthMethod,
    pub quota: Quota,
    pub usage: Usage,
    pub defaults: NodeSize,
}

impl Master {
    // ---- authentication ----

    /// Checks a user's password (local hash or PAM) under the login throttle; on success
    /// makes a session token. A PAM user's account is created at the first login.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        source: &str,
    ) -> Result<LoginResult, ApiError> {
        let now = now_secs();
        let refused = || ApiError::Unauthenticated("wrong user name or password".into());
        // No account opens with an empty password, whatever PAM's nullok says.
        if password.is_empty() || password.len() > account::MAX_PASSWORD || user.len() > 256 {
            return Err(refused());
        }
        let existing = match self
            .throttled_check(user, source, self.check_login(user, password))
            .await?
        {
            (true, existing) => existing,
            (false, _) => {
                info!(
                    user,
                    source,
                    action = "auth.login-refused",
                    "login of {user} from {source} refused"
                );
                return Err(refused());
            }
        };
        let store = self.store().await?;
        let account = match existing {
            Some(a) => a,
            None => sign_up(&store, user, now).await?,
        };
        if account.status == AccountStatus::Locked {
            return Err(ApiError::Forbidden("your account is locked".into()));
        }
        let admin = self.is_admin(&store, &account).await?;
        let expires_at = now + self.config.session_lifetime;
        let (token, record) = self
            .issue_token(
                &store,
                user,
                TokenKind::Session,
                source,
                Some(expires_at),
                None,
            )
            .await?;
        info!(
            user,
            source,
            token = %record.id,
            action = "auth.login",
            "{user} logged in from {source}"
        );
        Ok(LoginResult {
            token,
            user: user.to_owned(),
            admin,
            expires_at,
        })
    }

    /// Whether `password` is `user`'s (the local hash, else PAM), with the account if Docklet
    /// has one. The check runs on the bounded pool of
    /// [`super::logins::PasswordChecks`].
    pub(super) async fn check_login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(bool, Option<Account>), ApiError> {
        let store = self.store().await?;
        let existing = store.account(user).await?;
        let verified = match &existing {
            Some(a) if a.auth == AuthMethod::Local => {
                let (a, pw) = (a.clone(), password.to_owned());
                self.password_checks
                    .run(move || a.verify_password(&pw))
                    .await?
            }
            _ => {
                let (pam, u, pw) = (self.pam.clone(), user.to_owned(), password.to_owned());
                self.password_checks
                    .run(move || pam.check(&u, &pw))
                    .await?
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?
            }
        };
        Ok((verified, existing))
    }

    pub(super) async fn is_admin(
        &self,
        store: &EtcdStore,
        account: &Account,
    ) -> Result<bool, ApiError> {
        Ok(store.group(&account.group).await?.is_some_and(|g| g.admin))
    }

    pub(super) async fn issue_token(
        &self,
        store: &EtcdStore,
        user: &str,
        kind: TokenKind,
        name: &str,
        expires_at: Option<u64>,
        parent: Option<String>,
    ) -> Result<(String, TokenRecord), ApiError> {
        let secret = format!("{TOKEN_PREFIX}{}", crate::pki::random_secret(32));
        let digest = account::token_digest(&secret);
        let record = TokenRecord {
            id: account::token_id(&digest),
            user: user.to_owned(),
            kind,
            name: name.to_owned(),
            created_at: now_secs(),
            last_used_at: None,
            expires_at,
            parent,
        };
        store.put_token(&digest, &record).await?;
        Ok((secret, record))
    }

    /// The caller a bearer token stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        let refused = |why: &str| ApiError::Unauthenticated(why.to_owned());
        if !account::plausible_token(token) {
            return Err(refused("not a Docklet token"));
        }
        let store = self.store().await?;
        let digest = account::token_digest(token);
        let now = now_secs();
        let Some(mut record) = store.token(&digest).await? else {
            return Err(refused("unknown or revoked token: log in again"));
        };
        if record.expired(now) || record.idle_too_long(now, self.config.session_idle) {
            let _ = store.delete_token(&digest).await;
            return Err(refused("the session expired: log in again"));
        }
        let Some(account) = store.account(&record.user).await? else {
            return Err(refused("the account no longer exists"));
        };
        if account.status == AccountStatus::Locked {
            return Err(refused("the account is locked"));
        }
        if record.use_is_news(now) {
            record.last_used_at = Some(now);
            store.touch_token(&digest, &record).await?;
        }
        let admin = self.is_admin(&store, &account).await?;
        Ok(Caller {
            account,
            admin,
            token_digest: Some(digest),
            expires_at: record.expires_at,
            token_kind: Some(record.kind),
        })
    }

    /// The caller a login or API token stands for, for the portal and the API: a workspace
    /// cookie opens its user's workspaces and nothing else.
    pub async fn authenticate_login(&self, token: &str) -> Result<Caller, ApiError> {
        let caller = self.authenticate(token).await?;
        if caller.token_kind == Some(TokenKind::Workspace) {
            return Err(ApiError::Unauthenticated(
                "a workspace cookie opens its workspace host in a browser and nothing else: log in, or use an API token".into(),
            ));
        }
        Ok(caller)
    }

    /// Ends the caller's login, and the workspace cookies made from it.
    pub async fn logout(&self, caller: &Caller) -> Result<(), ApiError> {
        if let Some(digest) = &caller.token_digest {
            let store = self.store().await?;
            store.delete_token(digest).await?;
            self.revoke_with(&store, caller.name(), &account::token_id(digest))
                .await?;
        }
        Ok(())
    }

    /// Deletes the tokens of `user` that revoking the token `id` ends; how many went.
    pub(super) async fn revoke_with(
        &self,
        store: &EtcdStore,
        user: &str,
        id: &str,
    ) -> Result<usize, ApiError> {
        let mut revoked = 0;
        for (digest, token) in store.tokens_of(user).await? {
            if token.ends_with(id) && store.delete_token(&digest).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// A one-time grant for the caller's workspace host (see [`WorkspaceGrant`]): the
    /// secret, valid for [`workspace::GRANT_SECS`].
    pub async fn issue_workspace_grant(&self, caller: &Caller) -> Result<String, ApiError> {
        let Some(digest) = &caller.token_digest else {
            return Err(ApiError::Forbidden(
                "workspaces are for portal users".into(),
            ));
        };
        if caller.token_kind == Some(TokenKind::Workspace) {
            return Err(ApiError::Forbidden(
                "a workspace cookie cannot make grants: open the workspace from the portal".into(),
            ));
        }
        let secret = format!("{TOKEN_PREFIX}{}", crate::pki::random_secret(32));
        let grant = WorkspaceGrant {
            user: caller.name().to_owned(),
            parent_digest: digest.clone(),
            expires_at: now_secs() + workspace::GRANT_SECS,
        };
        self.store()
            .await?
            .put_workspace_grant(
                &account::token_digest(&secret),
                &grant,
                workspace::GRANT_SECS,
            )
            .await?;
        Ok(secret)
    }

    /// Exchanges a grant (once) on the workspace host of `label` for a workspace cookie:
    /// the cookie's secret and its record. A grant that is unknown, used, expired or for
    /// another user's host opens nothing.
    pub async fn enter_workspace(
        &self,
        grant: &str,
        label: &str,
        source: &str,
    ) -> Result<(String, TokenRecord), ApiError> {
        let refused = || {
            ApiError::Unauthenticated(
                "this link into the workspace was used already or has expired: open the workspace from the portal again"
                    .into(),
            )
        };
        if !account::plausible_token(grant) {
            return Err(refused());
        }
        let store = self.store().await?;
        let Some(grant) = store
            .take_workspace_grant(&account::token_digest(grant))
            .await?
        else {
            return Err(refused());
        };
        let now = now_secs();
        if now >= grant.expires_at
            || !workspace::host_label(&grant.user).eq_ignore_ascii_case(label)
        {
            return Err(refused());
        }
        // The login must still be there: a grant outliving a logout opens nothing.
        let Some(parent) = store
            .token(&grant.parent_digest)
            .await?
            .filter(|t| t.user == grant.user && !t.expired(now))
        else {
            return Err(refused());
        };
        let longest = now + self.config.session_lifetime;
        let expires_at = parent.expires_at.map_or(longest, |at| at.min(longest));
        self.issue_token(
            &store,
            &grant.user,
            TokenKind::Workspace,
            source,
            Some(expires_at),
            Some(parent.id),
        )
        .await
    }

    pub async fn create_api_token(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<NewToken, ApiError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_name",
                "name",
                "a token's name is 1 to 64 printable characters",
            ));
        }
        let store = self.store().await?;
        let (token, record) = self
            .issue_token(&store, caller.name(), TokenKind::Api, name, None, None)
            .await?;
        Ok(NewToken { token, record })
    }

    pub async fn list_tokens(&self, caller: &Caller) -> Result<Vec<TokenRecord>, ApiError> {
        let store = self.store().await?;
        Ok(store
            .tokens_of(caller.name())
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        let store = self.store().await?;
        match self.revoke_with(&store, caller.name(), id).await? {
            0 => Err(ApiError::NotFound(format!("you have no token {id}"))),
            _ => Ok(()),
        }
    }

    pub async fn me(&self, caller: &Caller) -> Result<Me, ApiError> {
        let store = self.store().await?;
        self.account_view(&store, &caller.account).await
    }

    pub(super) async fn account_view(
        &self,
        store: &EtcdStore,
        account: &Account,
    ) -> Result<Me, ApiError> {
        let group = self.group_of(store, account).await?;
        Ok(Me {
            user: account.name.clone(),
            group: group.name.clone(),
            admin: group.admin,
            status: account.status,
            auth: account.auth,
            quota: group.quota.clone(),
            usage: store.usage(&account.name).await?,
            defaults: group.defaults,
        })
    }
}

/// A PAM user's Docklet account, made at their first login in the default group (or the
/// one another login just made).
async fn sign_up(store: &EtcdStore, user: &str, now: u64) -> Result<Account, ApiError> {
    account::validate_account_name(user)
        .map_err(|e| ApiError::Forbidden(format!("{e}: this account cannot use Docklet")))?;
    let group = store.default_group().await?;
    let new = Account::pam(user, &group, now);
    match store.create_account(&new).await {
        Ok(()) => info!(
            user,
            group,
            action = "user.create",
            "PAM user {user} signed up at first login, in group {group}"
        ),
        Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    store
        .account(user)
        .await?
        .ok_or_else(|| ApiError::Internal("account vanished".into()))
}
