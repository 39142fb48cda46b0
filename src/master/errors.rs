//! The master's one error type, [`ApiError`], and every map from and to it: from the store,
//! the node agents and input checks; to an HTTP status and code (rendered by `api`), and to
//! the D-Bus error names `docklet-admin` turns into exit codes. A failure is recognised by its
//! variant, never by its text.

use crate::dbus_api::BusError;
use crate::master::agent_client::AgentError;
use crate::model::vcluster::InputError;
use crate::store::StoreError;

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

    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Input(e) => Some(&e.field),
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
            field: field.into(),
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

/// The same failure on D-Bus as on HTTP, in D-Bus's terms.
impl From<ApiError> for BusError {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::Unauthenticated(_) | ApiError::Forbidden(_) => {
                BusError::AccessDenied(message)
            }
            ApiError::NotFound(_) => BusError::NotFound(message),
            ApiError::Conflict(_) | ApiError::IdempotencyKeyUsed { .. } => {
                BusError::Conflict(message)
            }
            ApiError::BadRequest(_) | ApiError::Input(_) => BusError::InvalidArgument(message),
            ApiError::QuotaExceeded(_) | ApiError::NoCapacity(_) => BusError::Exhausted(message),
            ApiError::Unavailable(_) => BusError::EtcdUnavailable(message),
            ApiError::Throttled { .. } | ApiError::BadGateway(_) | ApiError::Internal(_) => {
                BusError::Failed(message)
            }
        }
    }
}

/// A store failure met outside an action (`init`, joins): as an action would report it, but
/// `init` on an existing cluster keeps its own name.
impl From<StoreError> for BusError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyInitialized => BusError::AlreadyInitialized(e.to_string()),
            other => ApiError::from(other).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_has_the_same_kind_on_http_and_d_bus() {
        let quota = ApiError::QuotaExceeded("4 of 4 nodes".into());
        assert_eq!((quota.status(), quota.code()), (422, "quota_exceeded"));
        assert!(matches!(BusError::from(quota), BusError::Exhausted(m) if m == "4 of 4 nodes"));
        let denied = BusError::from(ApiError::Forbidden("not yours".into()));
        assert!(matches!(denied, BusError::AccessDenied(_)));
        let down = BusError::from(StoreError::Unavailable("connection refused".into()));
        assert!(matches!(down, BusError::EtcdUnavailable(m) if m.contains("connection refused")));
        let again = BusError::from(StoreError::AlreadyInitialized);
        assert!(matches!(again, BusError::AlreadyInitialized(_)));
    }

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
