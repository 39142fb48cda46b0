//! What the API does, as typed actions on the cluster state. The HTTP handlers (`api`) and
//! the D-Bus interface (`bus`) parse their input into these calls and map [`ApiError`] to
//! their own errors. Every action takes the authenticated [`Caller`] and authorizes it here,
//! never only in a front-end.
//!
//! One file per resource: [`auth`], [`clusters`], [`nodes`], [`users`], [`hosts`]; the error,
//! the caller and what they share are here.

use crate::master::Master;
use crate::master::agent_client::AgentError;
use crate::model::account::{Account, AccountStatus, AuthMethod, TokenKind};
use crate::model::vcluster::InputError;
use crate::store::network::AddressPlan;
use crate::store::{EtcdStore, StoreError};

mod auth;
mod clusters;
mod hosts;
mod nodes;
#[cfg(test)]
mod over_etcd;
mod users;
mod vnodes;

pub use auth::{LoginResult, Me, NewToken};
pub(crate) use clusters::node_ids;
pub use clusters::{ClusterView, Created, NodeView, OperationView, host_load};
pub use hosts::HostView;
pub use nodes::{ExecRequest, ExecResult};
pub use users::{GroupPatch, NewUser, QuotaPatch, UserPatch};
pub use vnodes::{UserNetworkView, VNodeEntry};

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
    /// A create's idempotency key names an earlier operation (409, like any conflict).
    #[error("idempotency key already used by operation {operation}")]
    IdempotencyKeyUsed { operation: String },
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
            ApiError::Conflict(_) | ApiError::IdempotencyKeyUsed { .. } => 409,
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
            ApiError::Conflict(_) | ApiError::IdempotencyKeyUsed { .. } => "conflict",
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
            StoreError::IdempotencyKeyUsed { operation } => {
                ApiError::IdempotencyKeyUsed { operation }
            }
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

pub(crate) fn random_id(len: usize) -> String {
    crate::pki::random_secret(len).to_ascii_lowercase()
}

impl Master {
    pub(crate) async fn api_store(&self) -> Result<EtcdStore, ApiError> {
        self.store()
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    pub(super) fn address_plan(&self) -> AddressPlan {
        AddressPlan {
            cluster_net: self.config.cluster_net,
            vni_base: self.config.vni_base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_idempotency_key_is_a_conflict_known_by_its_kind() {
        let e = ApiError::from(StoreError::IdempotencyKeyUsed {
            operation: "op1".into(),
        });
        assert!(matches!(&e, ApiError::IdempotencyKeyUsed { operation } if operation == "op1"));
        assert_eq!((e.status(), e.code()), (409, "conflict"));
        assert_eq!(
            e.to_string(),
            "idempotency key already used by operation op1"
        );
        // Any other conflict, whatever its words, is not taken for one.
        let other = ApiError::from(StoreError::Conflict("idempotency key".into()));
        assert!(matches!(other, ApiError::Conflict(_)));
    }
}
