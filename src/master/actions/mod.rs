//! What the API does, as typed actions on the cluster state. The HTTP handlers (`api`) and
//! the D-Bus interface (`bus`) parse their input into these calls and map [`ApiError`] to
//! their own errors. Every action takes the authenticated [`Caller`] and authorizes it here,
//! never only in a front-end.
//!
//! One file per resource: [`auth`], [`clusters`], [`nodes`], [`vnodes`], [`users`] (and
//! groups), [`hosts`], [`images`], [`ports`], [`system_images`]; the error, the caller and
//! what they share are here.

use crate::master::Master;
use crate::model::account::{Account, AccountStatus, AuthMethod, TokenKind};
use crate::store::network::AddressPlan;

mod auth;
mod clusters;
mod hosts;
pub mod images;
pub mod jobs;
mod nodes;
#[cfg(test)]
mod over_etcd;
pub mod ports;
pub mod system_images;
mod users;
mod vnodes;

pub use super::errors::ApiError;
pub use auth::{LoginResult, Me, NewToken};
pub(crate) use clusters::node_ids;
pub use clusters::{ClusterView, Created, NodeView, OperationView, host_load};
pub use hosts::HostView;
pub use nodes::{ExecRequest, ExecResult};
pub use users::{GroupPatch, NewUser, QuotaPatch, UserPatch};
pub use vnodes::{UserNetworkView, VNodeEntry};

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
    pub(crate) fn address_plan(&self) -> AddressPlan {
        AddressPlan {
            cluster_net: self.config.cluster_net,
            vni_base: self.config.vni_base,
        }
    }
}
