//! What the API does, as typed actions on the cluster state. The HTTP handlers (`api`) and
//! the D-Bus interface (`bus`) parse their input into these calls and map [`ApiError`] to
//! their own errors. Every action takes the authenticated [`Caller`] and authorizes it here,
//! never only in a front-end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::agent_client::{AgentError, NodeEndpoint};
use super::{Master, now_secs};
use crate::model::account::{
    self, Account, AccountStatus, AuthMethod, TOKEN_PREFIX, TokenKind, TokenRecord,
};
use crate::model::host::HostRecord;
use crate::model::image::ImageRef;
use crate::model::placement::{self, HostLoad};
use crate::model::quota::{self, Group, NodeSize, Quota, Usage};
use crate::model::vcluster::{
    self, ClusterState, CreateClusterRequest, InputError, NodeSeen, NodeState, Operation,
    OperationKind, Progress, VCluster,
};
use crate::model::vnode::{self, DesiredState, VNodeSpec};
use crate::model::workspace::{self, WorkspaceGrant};
use crate::store::clusters::{NodeWrite, PlacementSnapshot};
use crate::store::network::AddressPlan;
use crate::store::vnodes::VNodeSeen;
use crate::store::{EtcdStore, Store, StoreError};

/// An API failure: an HTTP status, a machine-readable code and a message for people.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Input(InputError),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error("too many failed logins: try again in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// A service inside a vnode did not answer (nothing listens on its port).
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthenticated(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::BadRequest(_) => 400,
            ApiError::Input(_) | ApiError::QuotaExceeded(_) | ApiError::NoCapacity(_) => 422,
            ApiError::Throttled { .. } => 429,
            ApiError::Unavailable(_) => 503,
            ApiError::BadGateway(_) => 502,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Input(e) => e.code,
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::NoCapacity(_) => "no_capacity",
            ApiError::Throttled { .. } => "throttled",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn field(&self) -> Option<&'static str> {
        match self {
            ApiError::Input(e) => Some(e.field),
            _ => None,
        }
    }

    pub(crate) fn invalid(
        code: &'static str,
        field: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError::Input(InputError {
            code,
            field,
            message: message.into(),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Unauthenticated(_) => ApiError::Unavailable(
                format!("the cluster state (etcd) cannot be reached right now: {e}"),
            ),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::QuotaExceeded(m) => ApiError::QuotaExceeded(m),
            StoreError::Exhausted(m) | StoreError::NoCapacity(m) => ApiError::NoCapacity(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e.status() {
            _ if matches!(e, AgentError::Unreachable { .. }) => {
                ApiError::Unavailable(e.to_string())
            }
            // The node went away or stopped between the lookup and the agent's answer.
            Some(404 | 409) => ApiError::Conflict(e.to_string()),
            Some(400 | 422) => ApiError::BadRequest(e.to_string()),
            Some(502) => ApiError::BadGateway(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::Input(e)
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: Account,
    pub admin: bool,
    /// The digest of the token the call came with (`None` for local D-Bus administrators).
    pub token_digest: Option<String>,
    /// When that token expires (a login session), if it does.
    pub expires_at: Option<u64>,
    /// What kind of token it was.
    pub token_kind: Option<TokenKind>,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.account.name
    }

    /// The local administrator on D-Bus (root or group docklet-admin on the master's host).
    pub fn local_admin() -> Caller {
        Caller {
            account: Account {
                name: "root".into(),
                group: "root".into(),
                status: AccountStatus::Normal,
                auth: AuthMethod::Local,
                password_hash: None,
                created_at: 0,
            },
            admin: true,
            token_digest: None,
            expires_at: None,
            token_kind: None,
        }
    }

    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("administrators only".into()))
        }
    }

    /// The user whose clusters a call acts on: the caller, or (administrators only) `user`.
    pub(crate) fn owner(&self, user: Option<&str>) -> Result<String, ApiError> {
        match user {
            Some(user) if user != self.name() => {
                self.require_admin().map_err(|_| {
                    ApiError::Forbidden("you may only act on your own clusters".into())
                })?;
                Ok(user.to_owned())
            }
            _ => Ok(self.name().to_owned()),
        }
    }

    pub(crate) fn require_normal(&self) -> Result<(), ApiError> {
        match self.account.status {
            AccountStatus::Normal => Ok(()),
            AccountStatus::Applying => Err(ApiError::Forbidden(
                "your account is waiting for an administrator's approval".into(),
            )),
            AccountStatus::Locked => Err(ApiError::Forbidden("your account is locked".into())),
        }
    }
}

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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub index: u32,
    pub id: String,
    pub hostname: String,
    pub state: NodeState,
    #[schema(value_type = Option<String>, format = "ipv4")]
    pub address: Option<std::net::Ipv4Addr>,
    pub host: String,
    pub image: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub name: String,
    pub user: String,
    pub image: String,
    pub state: ClusterState,
    pub node_size: NodeSize,
    pub created_at: u64,
    pub nodes: Vec<NodeView>,
    /// Set when the cluster was stopped for being idle too long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<vcluster::IdleStop>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationView {
    #[serde(flatten)]
    pub operation: Operation,
    #[serde(flatten)]
    pub progress: Progress,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostView {
    pub name: String,
    pub addresses: Vec<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_free_bytes: u64,
    pub allocated: Usage,
    pub draining: bool,
    /// What the drain of this host is doing (moving its vnodes elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_note: Option<String>,
    pub images: Vec<String>,
    pub version: String,
}

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
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub status: Option<AccountStatus>,
    #[serde(default)]
    pub password: Option<String>,
    /// Required with `password` when users change their own: the one they have now.
    #[serde(default)]
    pub current_password: Option<String>,
}

/// Changes to a group; absent fields stay as they are.
#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    #[serde(default)]
    pub admin: Option<bool>,
    #[serde(default)]
    pub quota: Option<QuotaPatch>,
    #[serde(default)]
    pub defaults: Option<NodeSize>,
    /// Replaces the group's egress allowances (an empty list removes them).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub egress_allow: Option<Vec<crate::model::egress::EgressRule>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaPatch {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub vnodes: Option<u32>,
    pub images: Option<u32>,
    pub image_bytes: Option<u64>,
    pub port_mappings: Option<u32>,
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

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub stdin: String,
    /// The user inside the vnode (default root).
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A create's answer: the operation, and whether it is an earlier one found by its
/// idempotency key.
pub struct Created {
    pub operation: OperationView,
    pub replayed: bool,
}

pub(crate) fn random_id(len: usize) -> String {
    super::init::random_secret(len).to_ascii_lowercase()
}

impl Master {
    pub(crate) async fn api_store(&self) -> Result<EtcdStore, ApiError> {
        self.store()
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    fn address_plan(&self) -> AddressPlan {
        AddressPlan {
            cluster_net: self.config.cluster_net,
            vni_base: self.config.vni_base,
        }
    }

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
                info!(user, source, "login refused");
                return Err(refused());
            }
        };
        let store = self.api_store().await?;
        let account = match existing {
            Some(a) => a,
            None => {
                account::validate_account_name(user).map_err(|e| {
                    ApiError::Forbidden(format!("{e}: this account cannot use Docklet"))
                })?;
                let group = store.default_group().await?;
                let new = Account::pam(user, &group, now);
                match store.create_account(&new).await {
                    Ok(()) => info!(user, group, "PAM user signed up at first login"),
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                store
                    .account(user)
                    .await?
                    .ok_or_else(|| ApiError::Internal("account vanished".into()))?
            }
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
        info!(user, source, token = %record.id, "login");
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
    async fn check_login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(bool, Option<Account>), ApiError> {
        let store = self.api_store().await?;
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

    async fn is_admin(&self, store: &EtcdStore, account: &Account) -> Result<bool, ApiError> {
        Ok(store.group(&account.group).await?.is_some_and(|g| g.admin))
    }

    async fn issue_token(
        &self,
        store: &EtcdStore,
        user: &str,
        kind: TokenKind,
        name: &str,
        expires_at: Option<u64>,
        parent: Option<String>,
    ) -> Result<(String, TokenRecord), ApiError> {
        let secret = format!("{TOKEN_PREFIX}{}", super::init::random_secret(32));
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
        let store = self.api_store().await?;
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
            let store = self.api_store().await?;
            store.delete_token(digest).await?;
            self.revoke_with(&store, caller.name(), &account::token_id(digest))
                .await?;
        }
        Ok(())
    }

    /// Deletes the tokens of `user` that revoking the token `id` ends; how many went.
    async fn revoke_with(
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
        let secret = format!("{TOKEN_PREFIX}{}", super::init::random_secret(32));
        let grant = WorkspaceGrant {
            user: caller.name().to_owned(),
            parent_digest: digest.clone(),
            expires_at: now_secs() + workspace::GRANT_SECS,
        };
        self.api_store()
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
        let store = self.api_store().await?;
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
        let store = self.api_store().await?;
        let (token, record) = self
            .issue_token(&store, caller.name(), TokenKind::Api, name, None, None)
            .await?;
        Ok(NewToken { token, record })
    }

    pub async fn list_tokens(&self, caller: &Caller) -> Result<Vec<TokenRecord>, ApiError> {
        let store = self.api_store().await?;
        Ok(store
            .tokens_of(caller.name())
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        let store = self.api_store().await?;
        match self.revoke_with(&store, caller.name(), id).await? {
            0 => Err(ApiError::NotFound(format!("you have no token {id}"))),
            _ => Ok(()),
        }
    }

    pub async fn me(&self, caller: &Caller) -> Result<Me, ApiError> {
        let store = self.api_store().await?;
        self.account_view(&store, &caller.account).await
    }

    async fn account_view(&self, store: &EtcdStore, account: &Account) -> Result<Me, ApiError> {
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

    // ---- clusters ----

    pub async fn create_cluster(
        &self,
        caller: &Caller,
        request: &CreateClusterRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Created, ApiError> {
        caller.require_normal()?;
        let user = caller.name().to_owned();
        if let Some(key) = idempotency_key
            && (key.is_empty()
                || key.len() > 128
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(ApiError::BadRequest(
                "Idempotency-Key: 1 to 128 characters of A-Z, a-z, 0-9, '-', '_' and '.'".into(),
            ));
        }
        let store = self.api_store().await?;
        if let Some(key) = idempotency_key
            && let Some(view) = self.replay(&store, &user, key).await?
        {
            return Ok(Created {
                operation: view,
                replayed: true,
            });
        }
        let group = self.group_of(&store, &caller.account).await?;
        let create = request.resolve(&group.defaults, &self.config.default_image)?;
        let now = now_secs();
        let cluster = VCluster {
            name: create.name.clone(),
            user: user.clone(),
            image: create.image.clone(),
            node_size: create.node,
            nodes: (0..create.size).collect(),
            next_index: create.size,
            created_at: now,
            idle_stop: None,
        };
        let operation = Operation {
            id: random_id(16),
            kind: OperationKind::Create,
            user: user.clone(),
            cluster: cluster.name.clone(),
            nodes: cluster
                .nodes
                .iter()
                .map(|i| vcluster::node_id(&user, &cluster.name, *i))
                .collect(),
            created_at: now,
        };
        let sizes = vec![create.node; create.size as usize];
        let result = self
            .place_and_write(
                &store,
                &cluster,
                None,
                &sizes,
                &HashMap::new(),
                &group.quota,
                &operation,
                idempotency_key,
            )
            .await;
        match result {
            Ok(()) => {}
            Err(ApiError::Conflict(m)) if m.contains("idempotency key") => {
                let key = idempotency_key.expect("only with a key");
                if let Some(view) = self.replay(&store, &user, key).await? {
                    return Ok(Created {
                        operation: view,
                        replayed: true,
                    });
                }
                return Err(ApiError::Conflict(m));
            }
            Err(e) => return Err(e),
        }
        info!(user, cluster = %cluster.name, size = create.size, operation = %operation.id, "cluster created");
        Ok(Created {
            operation: self.operation_view(&store, operation).await?,
            replayed: false,
        })
    }

    async fn replay(
        &self,
        store: &EtcdStore,
        user: &str,
        key: &str,
    ) -> Result<Option<OperationView>, ApiError> {
        let Some(id) = store.idempotent_operation(user, key).await? else {
            return Ok(None);
        };
        match store.operation(&id).await? {
            Some(op) => Ok(Some(self.operation_view(store, op).await?)),
            None => Ok(None),
        }
    }

    /// Places `sizes` new nodes of `cluster` (whose new record already lists their indices,
    /// the last `sizes.len()` of `nodes`) and writes everything in one transaction.
    /// `existing` counts the cluster's nodes per host, for spreading.
    #[allow(clippy::too_many_arguments)]
    async fn place_and_write(
        &self,
        store: &EtcdStore,
        cluster: &VCluster,
        revision: Option<i64>,
        sizes: &[NodeSize],
        existing: &HashMap<String, u32>,
        quota: &Quota,
        operation: &Operation,
        idempotency_key: Option<&str>,
    ) -> Result<(), ApiError> {
        // The quota first: its message is the more useful one when both would fail.
        let wanted = sizes
            .iter()
            .fold(Usage::default(), |sum, s| sum.plus(&Usage::of_node(s)));
        quota::admit(quota, &store.usage(&cluster.user).await?, &wanted)
            .map_err(|e| ApiError::QuotaExceeded(e.to_string()))?;
        let (system_image, image_guard) = self
            .image_to_start(store, &cluster.image, &cluster.user, revision.is_none())
            .await?;
        let mut last_error = None;
        for _ in 0..3 {
            let PlacementSnapshot {
                hosts,
                drained,
                allocations,
            } = self.placement.snapshot(store).await?;
            let image_hosts: Vec<&HostRecord> = hosts
                .iter()
                .filter(|h| h.images.contains(&system_image))
                .collect();
            if image_hosts.is_empty() {
                let known: HashSet<&String> = hosts.iter().flat_map(|h| &h.images).collect();
                let mut known: Vec<&String> = known.into_iter().collect();
                known.sort();
                return Err(ApiError::invalid(
                    "unknown_image",
                    "image",
                    format!(
                        "no host has image {system_image}; images: {}",
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let loads: Vec<HostLoad> = image_hosts
                .iter()
                .map(|h| host_load(h, &allocations, &drained, existing))
                .collect();
            let chosen = placement::place(&loads, sizes, self.config.overcommit)
                .map_err(|e| ApiError::NoCapacity(e.to_string()))?;
            let first_new = cluster.nodes.len() - sizes.len();
            let nodes: Vec<(String, VNodeSpec)> = chosen
                .iter()
                .zip(sizes)
                .zip(&cluster.nodes[first_new..])
                .map(|((host, size), index)| {
                    (loads[*host].name.clone(), node_spec(cluster, *index, size))
                })
                .collect();
            let capacity: HashMap<String, HostLoad> =
                loads.iter().map(|l| (l.name.clone(), l.clone())).collect();
            let overcommit = self.config.overcommit;
            let check = move |after: &BTreeMap<String, Usage>| -> Result<(), StoreError> {
                for (host, allocated) in after {
                    if let Some(load) = capacity.get(host) {
                        let mut load = load.clone();
                        load.allocated = *allocated;
                        load.draining = false;
                        if !placement::within(&load, overcommit) {
                            return Err(StoreError::NoCapacity(format!(
                                "host {host} filled up meanwhile"
                            )));
                        }
                    }
                }
                Ok(())
            };
            let write = NodeWrite {
                user: &cluster.user,
                quota: Some(quota),
                cluster: Some((cluster, revision)),
                nodes,
                operation: Some(operation),
                idempotency_key,
                check_hosts: &check,
                image: image_guard.clone(),
            };
            match store.write_nodes(&write, &self.address_plan()).await {
                Ok(_) => return Ok(()),
                Err(StoreError::NoCapacity(m)) => last_error = Some(m),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::NoCapacity(last_error.unwrap_or_default()))
    }

    /// The system image under the vnodes of a cluster that starts from `image`, and for a
    /// user's image the revision of its record that the write must still find. A new
    /// cluster may use the user's own images and public ones; an existing cluster keeps
    /// growing from its image even if it was unshared since.
    async fn image_to_start(
        &self,
        store: &EtcdStore,
        image: &str,
        user: &str,
        new_cluster: bool,
    ) -> Result<(String, Option<(String, i64)>), ApiError> {
        let refuse = |message: String| ApiError::invalid("unusable_image", "image", message);
        match ImageRef::parse(image).map_err(|e| refuse(e.to_string()))? {
            ImageRef::System(name) => Ok((name.to_owned(), None)),
            ImageRef::User { owner, name } => {
                let Some((record, revision)) = store.image(owner, name).await? else {
                    return Err(refuse(format!("there is no image {image}")));
                };
                let reason = record.refuse_use(user);
                match reason {
                    Some(reason) if new_cluster || !reason.ends_with("is private") => {
                        Err(refuse(reason))
                    }
                    _ => {
                        let base = record.current.map(|v| v.base).unwrap_or_default();
                        Ok((base, Some((store.keys().image(owner, name), revision))))
                    }
                }
            }
        }
    }

    pub async fn list_clusters(
        &self,
        caller: &Caller,
        user: Option<&str>,
    ) -> Result<Vec<ClusterView>, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.api_store().await?;
        let hosts_up = hosts_up(&store).await?;
        let mut views = Vec::new();
        for cluster in store.clusters_of(&owner).await? {
            views.push(self.cluster_view(&store, cluster, &hosts_up).await?);
        }
        Ok(views)
    }

    pub async fn show_cluster(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
    ) -> Result<ClusterView, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.api_store().await?;
        let cluster = self.find_cluster(&store, &owner, name).await?.0;
        let hosts_up = hosts_up(&store).await?;
        self.cluster_view(&store, cluster, &hosts_up).await
    }

    pub(crate) async fn find_cluster(
        &self,
        store: &EtcdStore,
        owner: &str,
        name: &str,
    ) -> Result<(VCluster, i64), ApiError> {
        // A malformed name cannot name anything: the same 404 as an absent cluster.
        if vcluster::validate_cluster_name(name).is_err() {
            return Err(ApiError::NotFound(format!("no cluster named {name:?}")));
        }
        store
            .cluster(owner, name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no cluster named {name}")))
    }

    async fn cluster_view(
        &self,
        store: &EtcdStore,
        cluster: VCluster,
        hosts_up: &HashSet<String>,
    ) -> Result<ClusterView, ApiError> {
        let mut nodes = Vec::new();
        let ids = node_ids(&cluster);
        let found = store.vnodes_seen(&ids).await?;
        for ((index, id), found) in cluster.nodes.iter().zip(ids).zip(found) {
            let Some(VNodeSeen { host, spec, status }) = found else {
                continue;
            };
            let seen = NodeSeen {
                exists: true,
                phase: status.as_ref().map(|s| s.phase),
                reason: status.as_ref().and_then(|s| s.reason.clone()),
                host_up: hosts_up.contains(&host),
            };
            nodes.push(NodeView {
                index: *index,
                id: id.clone(),
                hostname: vnode::hostname(*index),
                state: vcluster::node_state(&seen, spec.state),
                address: spec.address,
                host,
                image: spec.image.clone(),
                cpu_millis: spec.cpu_millis,
                memory_bytes: spec.memory_bytes,
                disk_bytes: spec.disk_bytes,
                reason: seen.reason,
            });
        }
        let states: Vec<NodeState> = nodes.iter().map(|n| n.state).collect();
        Ok(ClusterView {
            state: vcluster::cluster_state(&states),
            name: cluster.name,
            user: cluster.user,
            image: cluster.image,
            node_size: cluster.node_size,
            created_at: cluster.created_at,
            nodes,
            idle_stop: cluster.idle_stop,
        })
    }

    /// Start or stop every node of a cluster.
    pub async fn set_cluster_state(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        running: bool,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        if running {
            caller.require_normal()?;
        }
        let store = self.api_store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        let state = if running {
            DesiredState::Running
        } else {
            DesiredState::Stopped
        };
        let ids: Vec<String> = node_ids(&cluster);
        store
            .change_cluster(&owner, name, |c| {
                let mut c = c.clone();
                if running {
                    c.idle_stop = None;
                }
                let states = node_ids(&c).into_iter().map(|id| (id, state)).collect();
                Ok((Some(c), states))
            })
            .await?;
        let kind = if running {
            OperationKind::Start
        } else {
            OperationKind::Stop
        };
        self.record_operation(&store, kind, &owner, name, ids).await
    }

    pub(crate) async fn record_operation(
        &self,
        store: &EtcdStore,
        kind: OperationKind,
        owner: &str,
        cluster: &str,
        nodes: Vec<String>,
    ) -> Result<OperationView, ApiError> {
        let operation = Operation {
            id: random_id(16),
            kind,
            user: owner.to_owned(),
            cluster: cluster.to_owned(),
            nodes,
            created_at: now_secs(),
        };
        store.put_operation(&operation).await?;
        info!(user = owner, cluster, kind = ?kind, operation = %operation.id, "cluster operation");
        self.operation_view(store, operation).await
    }

    pub async fn scale_out(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        let store = self.api_store().await?;
        let (mut cluster, revision) = self.find_cluster(&store, &owner, name).await?;
        let account = store
            .account(&owner)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {owner}")))?;
        let group = self.group_of(&store, &account).await?;
        let mut existing: HashMap<String, u32> = HashMap::new();
        for id in node_ids(&cluster) {
            if let Some(host) = store.vnode_host(&id).await? {
                *existing.entry(host).or_default() += 1;
            }
        }
        let index = cluster.next_index;
        cluster.nodes.push(index);
        cluster.next_index += 1;
        let operation = Operation {
            id: random_id(16),
            kind: OperationKind::ScaleOut,
            user: owner.clone(),
            cluster: name.to_owned(),
            nodes: vec![vcluster::node_id(&owner, name, index)],
            created_at: now_secs(),
        };
        let size = cluster.node_size;
        self.place_and_write(
            &store,
            &cluster,
            Some(revision),
            &[size],
            &existing,
            &group.quota,
            &operation,
            None,
        )
        .await?;
        info!(user = owner, cluster = name, index, "scale out");
        self.operation_view(&store, operation).await
    }

    pub async fn scale_in(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.api_store().await?;
        self.find_cluster(&store, &owner, name).await?;
        let id = vcluster::node_id(&owner, name, index);
        store
            .change_cluster(&owner, name, |c| {
                if !c.nodes.contains(&index) {
                    return Err(StoreError::NotFound(format!(
                        "cluster {name} has no node {index}"
                    )));
                }
                if c.nodes.len() == 1 {
                    return Err(StoreError::Conflict(format!(
                        "node {index} is the last node of cluster {name}: delete the cluster instead"
                    )));
                }
                let mut c = c.clone();
                c.nodes.retain(|i| *i != index);
                Ok((Some(c), vec![(id.clone(), DesiredState::Deleted)]))
            })
            .await?;
        self.record_operation(&store, OperationKind::ScaleIn, &owner, name, vec![id])
            .await
    }

    pub async fn delete_cluster(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        force: bool,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.api_store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        if !force {
            for id in node_ids(&cluster) {
                let phase = store.vnode_status(&id).await?.map(|s| s.phase);
                let stopped = matches!(
                    phase,
                    Some(vnode::Phase::Stopped) | Some(vnode::Phase::Failed)
                );
                if !stopped {
                    return Err(ApiError::Conflict(format!(
                        "cluster {name} is not stopped ({id} is {}): stop it first, or delete with force",
                        phase.map_or("pending", |p| p.as_str())
                    )));
                }
            }
        }
        store
            .change_cluster(&owner, name, |c| {
                Ok((
                    None,
                    node_ids(c)
                        .into_iter()
                        .map(|id| (id, DesiredState::Deleted))
                        .collect(),
                ))
            })
            .await?;
        self.record_operation(
            &store,
            OperationKind::Delete,
            &owner,
            name,
            node_ids(&cluster),
        )
        .await
    }

    /// An operation's progress, waiting up to `wait` for it to end.
    pub async fn operation(
        &self,
        caller: &Caller,
        id: &str,
        wait: Duration,
    ) -> Result<OperationView, ApiError> {
        let store = self.api_store().await?;
        let missing = || ApiError::NotFound(format!("no operation {id}"));
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(missing());
        }
        let operation = store.operation(id).await?.ok_or_else(missing)?;
        if operation.user != caller.name() && !caller.admin {
            return Err(missing());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let view = self.operation_view(&store, operation.clone()).await?;
            if view.progress.state != vcluster::OperationState::Running
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn operation_view(
        &self,
        store: &EtcdStore,
        operation: Operation,
    ) -> Result<OperationView, ApiError> {
        let hosts_up = hosts_up(store).await?;
        let seen: Vec<NodeSeen> = store
            .vnodes_seen(&operation.nodes)
            .await?
            .into_iter()
            .map(|found| match found {
                Some(VNodeSeen { host, status, .. }) => NodeSeen {
                    exists: true,
                    phase: status.as_ref().map(|s| s.phase),
                    reason: status.and_then(|s| s.reason),
                    host_up: hosts_up.contains(&host),
                },
                None => NodeSeen {
                    exists: false,
                    phase: None,
                    reason: None,
                    host_up: true,
                },
            })
            .collect();
        let progress = vcluster::progress(&operation, &seen, now_secs());
        Ok(OperationView {
            operation,
            progress,
        })
    }

    /// Recreates a lost node (its host's lease expired) on another host, with its index,
    /// address and the user's shared data; what it had on the lost host's disk stays there.
    pub async fn recover_node(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
    ) -> Result<OperationView, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        let store = self.api_store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        let missing = || ApiError::NotFound(format!("cluster {name} has no node {index}"));
        if !cluster.nodes.contains(&index) {
            return Err(missing());
        }
        let id = vcluster::node_id(&owner, name, index);
        let (lost_host, spec, _) = store.vnode_spec(&id).await?.ok_or_else(missing)?;
        let hosts = store.list_hosts().await?;
        if hosts.iter().any(|h| h.name == lost_host) {
            return Err(ApiError::Conflict(format!(
                "node {index} is not lost: its host {lost_host} is up"
            )));
        }
        let to = self
            .relocate(&store, &node_ids(&cluster), &spec, |spec| {
                // Its disk stayed with the lost host: it starts afresh, address kept.
                spec.state = DesiredState::Running;
                spec.handoff = None;
                Ok(())
            })
            .await?;
        info!(
            user = owner,
            cluster = name,
            index,
            from = lost_host,
            to,
            "lost node recovered"
        );
        self.record_operation(&store, OperationKind::Recover, &owner, name, vec![id])
            .await
    }

    /// Moves a node to the host placement picks among those up, not draining, with its
    /// image and room for it (away from its `siblings`, as at create); `arrive` says
    /// what its spec becomes there. Returns the new host.
    pub(crate) async fn relocate(
        &self,
        store: &EtcdStore,
        siblings: &[String],
        spec: &VNodeSpec,
        arrive: impl Fn(&mut VNodeSpec) -> Result<(), StoreError>,
    ) -> Result<String, ApiError> {
        let target = self.choose_host(store, siblings, spec).await?;
        let to = target.name.clone();
        let overcommit = self.config.overcommit;
        let check = move |after: &BTreeMap<String, Usage>| -> Result<(), StoreError> {
            let mut load = target.clone();
            load.allocated = after.get(&target.name).copied().unwrap_or_default();
            if placement::within(&load, overcommit) {
                Ok(())
            } else {
                Err(StoreError::NoCapacity(format!(
                    "host {} filled up meanwhile: try again",
                    target.name
                )))
            }
        };
        store.move_vnode(&spec.id, &to, &check, arrive).await?;
        Ok(to)
    }

    /// Where [`Self::relocate`] would put a node now, without moving it.
    pub(crate) async fn choose_host(
        &self,
        store: &EtcdStore,
        siblings: &[String],
        spec: &VNodeSpec,
    ) -> Result<HostLoad, ApiError> {
        let PlacementSnapshot {
            hosts,
            drained,
            allocations,
        } = self.placement.snapshot(store).await?;
        let mut existing: HashMap<String, u32> = HashMap::new();
        for other in siblings {
            if *other != spec.id
                && let Some(host) = store.vnode_host(other).await?
            {
                *existing.entry(host).or_default() += 1;
            }
        }
        let (system_image, _) = self
            .image_to_start(store, &spec.image, &spec.user, false)
            .await?;
        let loads: Vec<HostLoad> = hosts
            .iter()
            .filter(|h| h.images.contains(&system_image))
            .map(|h| host_load(h, &allocations, &drained, &existing))
            .collect();
        let size = NodeSize {
            cpu_millis: spec.cpu_millis,
            memory_bytes: spec.memory_bytes,
            disk_bytes: spec.disk_bytes,
        };
        let chosen = placement::place(&loads, &[size], self.config.overcommit)
            .map_err(|e| ApiError::NoCapacity(e.to_string()))?;
        Ok(loads[chosen[0]].clone())
    }

    /// Runs a command in a node through its worker's agent.
    pub async fn exec(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
        request: &ExecRequest,
    ) -> Result<ExecResult, ApiError> {
        let owner = caller.owner(user)?;
        caller.require_normal()?;
        if request.argv.is_empty() || request.argv[0].is_empty() {
            return Err(ApiError::invalid(
                "invalid_command",
                "argv",
                "argv lists the command and its arguments: at least the command",
            ));
        }
        let endpoint = self.node_endpoint(&owner, name, index).await?;
        let body = serde_json::json!({
            "argv": request.argv,
            "stdin": request.stdin,
            "user": request.user.clone().unwrap_or_else(|| "root".into()),
        });
        let path = format!("/agent/v1/vnodes/{}/exec", endpoint.vnode_id);
        let host = &endpoint.host;
        let (status, text) = super::agent_client::post_json(host, &endpoint.agent, &path, &body)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        match status {
            200 => serde_json::from_str(&text)
                .map_err(|e| ApiError::Internal(format!("agent answer: {e}"))),
            409 | 404 => Err(ApiError::Conflict(format!("node {index}: {}", text.trim()))),
            400 | 422 => Err(ApiError::BadRequest(text.trim().to_owned())),
            other => Err(ApiError::Internal(format!(
                "agent on {host} answered {other}: {}",
                text.trim()
            ))),
        }
    }

    /// The endpoint of one of the caller's own nodes, for its terminals and workspace: those
    /// are the owner's alone, so `user` (an administrator's `?user=`) naming anyone else is
    /// refused (403) whatever the caller's role; a cluster or node of the caller's that does
    /// not exist is 404.
    pub async fn own_node_endpoint(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        index: u32,
    ) -> Result<NodeEndpoint, ApiError> {
        if user.is_some_and(|user| user != caller.name()) {
            return Err(ApiError::Forbidden(
                "only the owner of a cluster may open its terminals and workspaces".into(),
            ));
        }
        caller.require_normal()?;
        self.node_endpoint(caller.name(), name, index).await
    }

    /// Where node `index` of `owner`'s cluster is reached: its host's agent and token. 404
    /// for a cluster or node that does not exist, 409 when its host is down. It authorizes
    /// nothing: the caller decided that `owner`'s node may be reached.
    pub async fn node_endpoint(
        &self,
        owner: &str,
        cluster: &str,
        index: u32,
    ) -> Result<NodeEndpoint, ApiError> {
        let store = self.api_store().await?;
        let (record, _) = self.find_cluster(&store, owner, cluster).await?;
        let missing = || ApiError::NotFound(format!("cluster {cluster} has no node {index}"));
        if !record.nodes.contains(&index) {
            return Err(missing());
        }
        let id = vcluster::node_id(owner, cluster, index);
        let (host, _, _) = store.vnode_spec(&id).await?.ok_or_else(missing)?;
        let host_record = store
            .list_hosts()
            .await?
            .into_iter()
            .find(|h| h.name == host)
            .ok_or_else(|| ApiError::Conflict(format!("node {index}'s host {host} is down")))?;
        let address = host_record
            .addresses
            .first()
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| ApiError::Internal(format!("host {host} has no address")))?
            .to_owned();
        let port = self.config.agent_port;
        Ok(NodeEndpoint {
            agent: match address.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
                Err(_) => format!("{address}:{port}"),
            },
            host,
            vnode_id: id,
        })
    }

    // ---- administration ----

    pub async fn list_users(&self, caller: &Caller) -> Result<Vec<Me>, ApiError> {
        caller.require_admin()?;
        let store = self.api_store().await?;
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
        let store = self.api_store().await?;
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
        let store = self.api_store().await?;
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
        info!(user = %account.name, group = %account.group, by = caller.name(), "user created");
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
        let store = self.api_store().await?;
        let before = store
            .account(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
        let hash = match &patch.password {
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
                    self.check_current_password(&before, current, source)
                        .await?;
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
        };
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
        info!(user = name, by = caller.name(), "user changed");
        let locked = account.status == AccountStatus::Locked;
        let demoted = was_admin && !self.is_admin(&store, &account).await?;
        let why = if locked {
            Some("locked")
        } else if demoted {
            Some("no longer an administrator")
        } else if hash.is_some() {
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
            info!(user = name, revoked, "sessions and API tokens ended: {why}");
        }
        self.account_view(&store, &account).await
    }

    /// Checks a user's current local password before a change, under the login throttle.
    async fn check_current_password(
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
        self.api_store().await?.delete_account(name).await?;
        info!(user = name, by = caller.name(), "user deleted");
        Ok(())
    }

    pub async fn list_groups(&self, caller: &Caller) -> Result<Vec<Group>, ApiError> {
        caller.require_admin()?;
        Ok(self.api_store().await?.list_groups().await?)
    }

    pub async fn create_group(&self, caller: &Caller, group: &Group) -> Result<Group, ApiError> {
        caller.require_admin()?;
        quota::validate_group(group)
            .map_err(|e| ApiError::invalid("invalid_group", "group", e.to_string()))?;
        self.api_store().await?.put_group(group, false).await?;
        info!(group = %group.name, by = caller.name(), "group created");
        Ok(group.clone())
    }

    pub async fn update_group(
        &self,
        caller: &Caller,
        name: &str,
        patch: &GroupPatch,
    ) -> Result<Group, ApiError> {
        caller.require_admin()?;
        let store = self.api_store().await?;
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
        quota::validate_group(&group)
            .map_err(|e| ApiError::invalid("invalid_group", "group", e.to_string()))?;
        store.put_group(&group, true).await?;
        let egress: Vec<String> = group.egress_allow.iter().map(|r| r.to_string()).collect();
        info!(group = name, by = caller.name(), egress_allow = ?egress, "group changed");
        if demoted {
            // Its members are no longer administrators: their sessions and tokens end.
            for member in store.list_accounts().await? {
                if member.group == name {
                    let revoked = store.revoke_tokens_of(&member.name, None).await?;
                    info!(user = %member.name, revoked, "sessions and API tokens ended: no longer an administrator");
                }
            }
        }
        Ok(group)
    }

    pub async fn delete_group(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        self.api_store().await?.delete_group(name).await?;
        Ok(())
    }

    pub async fn set_default_group(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        caller.require_admin()?;
        self.api_store().await?.set_default_group(name).await?;
        Ok(())
    }

    pub async fn default_group(&self, caller: &Caller) -> Result<String, ApiError> {
        caller.require_admin()?;
        Ok(self.api_store().await?.default_group().await?)
    }

    pub async fn hosts(&self, caller: &Caller) -> Result<Vec<HostView>, ApiError> {
        caller.require_admin()?;
        let store = self.api_store().await?;
        let allocations = store.allocations().await?;
        let mut notes = store.drain_notes().await?;
        Ok(store
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| HostView {
                allocated: allocations.get(&h.name).copied().unwrap_or_default(),
                draining: notes.contains_key(&h.name),
                drain_note: notes.remove(&h.name),
                name: h.name,
                addresses: h.addresses,
                cpus: h.capacity.cpus,
                memory_bytes: h.capacity.memory_bytes,
                disk_free_bytes: h.capacity.disk_free_bytes,
                images: h.images,
                version: h.version,
            })
            .collect())
    }

    /// Marks a host as taking no new vnodes (or takes the mark away).
    pub async fn drain(&self, caller: &Caller, host: &str, drain: bool) -> Result<(), ApiError> {
        caller.require_admin()?;
        if crate::model::host::validate_host_name(host).is_err() {
            return Err(ApiError::NotFound(format!("no host {host:?}")));
        }
        let store = self.api_store().await?;
        let known = store.list_hosts().await?.iter().any(|h| h.name == host)
            || store.allocations().await?.contains_key(host);
        if !known {
            return Err(ApiError::NotFound(format!("no host {host}")));
        }
        store.set_drain(host, drain).await?;
        info!(host, drain, by = caller.name(), "drain changed");
        Ok(())
    }
}

pub(crate) fn node_ids(cluster: &VCluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|i| vcluster::node_id(&cluster.user, &cluster.name, *i))
        .collect()
}

fn node_spec(cluster: &VCluster, index: u32, size: &NodeSize) -> VNodeSpec {
    VNodeSpec {
        id: vcluster::node_id(&cluster.user, &cluster.name, index),
        user: cluster.user.clone(),
        cluster: cluster.name.clone(),
        index,
        image: cluster.image.clone(),
        cpu_millis: size.cpu_millis,
        memory_bytes: size.memory_bytes,
        disk_bytes: size.disk_bytes,
        tasks: vcluster::NODE_TASKS,
        state: DesiredState::Running,
        address: None,
        handoff: None,
    }
}

/// What the scheduler sees of one host.
pub fn host_load(
    host: &HostRecord,
    allocations: &BTreeMap<String, Usage>,
    drained: &HashSet<String>,
    existing: &HashMap<String, u32>,
) -> HostLoad {
    let allocated = allocations.get(&host.name).copied().unwrap_or_default();
    HostLoad {
        name: host.name.clone(),
        cpu_millis: u64::from(host.capacity.cpus) * 1000,
        memory_bytes: host.capacity.memory_bytes,
        // What is free now plus what the vnodes here were promised: sparse disks use
        // little until written, and counting them twice would refuse too early.
        disk_bytes: host.capacity.disk_free_bytes + allocated.disk_bytes,
        allocated,
        draining: drained.contains(&host.name),
        cluster_nodes: existing.get(&host.name).copied().unwrap_or(0),
    }
}

async fn hosts_up(store: &EtcdStore) -> Result<HashSet<String>, ApiError> {
    Ok(store.host_names().await?.into_iter().collect())
}
