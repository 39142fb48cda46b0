//! Hosts joining and leaving the site ([`crate::pki::join`]): join tickets for
//! `docklet-admin host add`, the join exchange the portal serves at `POST /hosts/v1/join`
//! (signed with the site CA's key, which systemd hands the master as the credential
//! `docklet_ca.key` on the CA host only), revocation for `host remove`, and the CA host's own
//! identities, recorded at `init`.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::Master;
use crate::daemon::now_secs;
use crate::dbus_api::BusError;
use crate::pki::join::{
    HostIdentity, IssuedCertificate, JoinRequest, JoinResponse, JoinTicket, JoinToken,
};
use crate::pki::{self, PKI_DIR, Role, SiteCa};
use crate::store::StoreError;

/// How long a join token is valid unless `host add` says otherwise.
pub const DEFAULT_TOKEN_SECONDS: u64 = 3600;
/// The longest a join token may be valid.
pub const MAX_TOKEN_SECONDS: u64 = 7 * 86400;

/// Why a join was refused (the portal answers 403, 400 and 503), with a message for the host.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No valid ticket, a wrong proof, an expired or used token: 403.
    #[error("{0}")]
    Refused(String),
    /// A request that is not one: 400.
    #[error("{0}")]
    Invalid(String),
    /// This master cannot sign, or etcd is away: 503.
    #[error("{0}")]
    Unavailable(String),
}

fn store_error(e: StoreError) -> JoinError {
    match e {
        StoreError::Conflict(m) => JoinError::Refused(m),
        other => JoinError::Unavailable(other.to_string()),
    }
}

/// Where systemd puts the master's credentials (`LoadCredential=`).
fn credential(name: &str) -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY").map(|dir| Path::new(&dir).join(name))
}

/// The site CA, when this master holds its key.
fn site_ca() -> Result<SiteCa, JoinError> {
    let unavailable = |why: String| {
        JoinError::Unavailable(format!(
            "this master cannot sign host certificates ({why}): join through the master on the host where `docklet-admin init` ran"
        ))
    };
    let key_path =
        credential("docklet_ca.key").ok_or_else(|| unavailable("no credentials".into()))?;
    let key = std::fs::read_to_string(&key_path).unwrap_or_default();
    if key.trim().is_empty() {
        return Err(unavailable("no site CA key on this host".into()));
    }
    let cert = std::fs::read_to_string(pki::ca_cert_file(Path::new(PKI_DIR)))
        .map_err(|e| unavailable(format!("{PKI_DIR}/ca.pem: {e}")))?;
    SiteCa::from_pem(&cert, &key).map_err(|e| unavailable(e.to_string()))
}

/// Whether systemd handed this master the site CA's key.
pub fn holds_site_ca() -> bool {
    credential("docklet_ca.key")
        .and_then(|path| std::fs::metadata(path).ok())
        .is_some_and(|m| m.len() > 0)
}

impl Master {
    /// `docklet-admin host add NAME`: a one-time join token for `host`, valid `seconds`.
    pub async fn add_host(&self, host: &str, seconds: u64) -> Result<String, BusError> {
        crate::model::host::validate_host_name(host)
            .map_err(|e| BusError::InvalidArgument(e.to_string()))?;
        if !(1..=MAX_TOKEN_SECONDS).contains(&seconds) {
            return Err(BusError::InvalidArgument(format!(
                "a join token is valid for 1 s to {} days",
                MAX_TOKEN_SECONDS / 86400
            )));
        }
        let ca = std::fs::read_to_string(pki::ca_cert_file(Path::new(PKI_DIR))).map_err(|e| {
            BusError::Failed(format!(
                "no site CA here ({PKI_DIR}/ca.pem: {e}): run `docklet-admin host add` on the host where `docklet-admin init` ran"
            ))
        })?;
        let ca = pki::pem_fingerprint(&ca).map_err(|e| BusError::Failed(e.to_string()))?;
        let store = self.store().await?;
        let now = now_secs();
        let ticket = JoinTicket {
            host: host.to_owned(),
            secret: crate::pki::random_secret(43),
            created_at: now,
            expires_at: now + seconds,
        };
        store.put_join_ticket(&ticket).await?;
        info!(
            host = host,
            "join token for host {host} made, valid {seconds} s"
        );
        Ok(JoinToken {
            host: ticket.host,
            secret: ticket.secret,
            portal: self.config.portal_url_or(&self.host),
            ca,
            expires_at: ticket.expires_at,
        }
        .encode())
    }

    /// `docklet-admin host remove NAME`: the host's certificates are refused from now on.
    pub async fn remove_host(&self, host: &str) -> Result<(), BusError> {
        crate::model::host::validate_host_name(host)
            .map_err(|e| BusError::InvalidArgument(e.to_string()))?;
        let store = self.store().await?;
        if !store.remove_host_identity(host).await? {
            return Err(BusError::NotFound(format!(
                "host {host} has no identity and no join token"
            )));
        }
        if self.certificate_login() {
            store.remove_host_users(host).await?;
        }
        info!(
            host = host,
            "host {host} removed: its certificates are revoked (agents and etcd)"
        );
        Ok(())
    }

    /// The join exchange: checks the proof, takes the ticket, signs the host's keys.
    pub async fn join(&self, request: JoinRequest) -> Result<JoinResponse, JoinError> {
        let host = request.host.clone();
        let refused = |why: &str| {
            warn!(host = %host, "join of host {host} refused: {why}");
            JoinError::Refused(format!("join refused: {why}"))
        };
        crate::model::host::validate_host_name(&host)
            .map_err(|e| JoinError::Invalid(e.to_string()))?;
        let store = self
            .connected_store(std::time::Duration::from_secs(10))
            .await
            .ok_or_else(|| JoinError::Unavailable("not connected to etcd".into()))?;
        let (ticket, revision) = store
            .join_ticket(&host)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                refused("no join token for this host (used already, or never made: `docklet-admin host add`)")
            })?;
        if !request.proven_by(&ticket) {
            return Err(refused(
                "the token does not match (an older token of this host?)",
            ));
        }
        let now = now_secs();
        if now >= ticket.expires_at {
            let _ = store.delete_join_ticket(&host).await;
            return Err(refused(
                "the token has expired: make a new one with `docklet-admin host add`",
            ));
        }
        let ca = site_ca()?;
        let mut certificates = Vec::new();
        let mut pems = Vec::new();
        for role in [Role::Master, Role::Worker] {
            let key = request
                .public_key(role)
                .map_err(|e| JoinError::Invalid(e.to_string()))?;
            let pem = ca
                .issue(role, &host, &key)
                .map_err(|e| JoinError::Invalid(e.to_string()))?;
            certificates.push(IssuedCertificate {
                role,
                fingerprint: pki::pem_fingerprint(&pem)
                    .map_err(|e| JoinError::Unavailable(e.to_string()))?,
                issued_at: now,
            });
            pems.push(pem);
        }
        let previous = store.host_identity(&host).await.map_err(store_error)?;
        let identity = HostIdentity::after_issuing(&host, previous.as_ref(), certificates);
        if self.certificate_login() {
            // Before the ticket goes: a join that fails here can be tried again.
            store.ensure_host_users(&host).await.map_err(store_error)?;
        }
        store
            .complete_join(revision, &identity)
            .await
            .map_err(store_error)?;
        info!(
            host = %host,
            "host {host} joined{}",
            if previous.is_some() { " again (re-keyed; its previous certificates stay valid until the next re-key)" } else { "" }
        );
        let worker = pems.pop().expect("two certificates");
        let master = pems.pop().expect("two certificates");
        Ok(JoinResponse::new(
            &ticket,
            ca.cert_pem().to_owned(),
            master,
            worker,
        ))
    }

    /// Records this host's own identities (made by `docklet-admin init` on the CA host), when
    /// they are not recorded yet.
    pub(super) async fn register_local_identity(
        &self,
        store: &crate::store::EtcdStore,
    ) -> Result<(), BusError> {
        let dir = Path::new(PKI_DIR);
        let failed = |e: pki::PkiError| BusError::Failed(format!("this host's identity: {e}"));
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .map_err(|e| BusError::Failed(format!("{}: {e}", path.display())))
        };
        let roots = pki::roots_of(&read(pki::ca_cert_file(dir))?).map_err(failed)?;
        let previous = store.host_identity(&self.host).await?;
        let mut new = Vec::new();
        for role in Role::ALL {
            let pem = read(role.cert_file(dir))?;
            pki::verify_identity(&roots, &pem, role, &self.host).map_err(failed)?;
            let fingerprint = pki::pem_fingerprint(&pem).map_err(failed)?;
            let known = previous
                .as_ref()
                .is_some_and(|p| p.fingerprints(role).any(|f| f == fingerprint));
            if !known {
                new.push(IssuedCertificate {
                    role,
                    fingerprint,
                    issued_at: now_secs(),
                });
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let identity = HostIdentity::after_issuing(&self.host, previous.as_ref(), new);
        store.put_host_identity(&identity).await?;
        info!(host = %self.host, "recorded the identities of host {}", self.host);
        Ok(())
    }
}
