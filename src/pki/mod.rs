//! The site's internal identities. `docklet-admin init` makes one CA per site on the master
//! host (its key root-only there, never on the shared filesystem) and a key and certificate
//! for that host's master and worker; other hosts get theirs with a one-time join token
//! ([`join`]). Masters present their certificate to the workers' agents, which answer
//! nothing else; workers present theirs as the agents' server certificate. etcd's
//! `identities/<host>` lists the certificates in force (by fingerprint), so removing a host
//! revokes its certificates at once, and re-keying a host keeps its previous ones valid until
//! the next re-key, so daemons switch without downtime.

pub mod join;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::sys::reload::Reloading;

/// Where a host keeps its identities: `ca.pem` (everyone may read it), `private/ca.key`
/// (the CA host alone, root 0600 in a 0700 directory), `worker.pem`/`worker.key` (root 0600) and `master.pem`/
/// `master.key` (the key readable by the master's group).
pub const PKI_DIR: &str = "/etc/docklet/pki";

/// The DNS suffix of the names in identity certificates (never resolved: a name a peer checks).
const DOMAIN: &str = "docklet.internal";
const CA_DAYS: i64 = 3650;
const IDENTITY_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Writes a whole file with `mode` (and group): see [`crate::sys::files::write_whole`].
pub fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    group: Option<nix::unistd::Gid>,
) -> Result<(), PkiError> {
    crate::sys::files::write_whole(path, contents.as_bytes(), mode, group).map_err(|source| {
        PkiError::File {
            path: path.to_owned(),
            source,
        }
    })
}

/// A random string of letters and digits, for passwords and secrets.
pub fn random_secret(len: usize) -> String {
    use rand::RngExt;
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Which daemon an identity belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Master, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }

    /// The certificate's DNS name, which a peer checks: `<host>.worker.docklet.internal`.
    pub fn dns_name(self, host: &str) -> String {
        format!("{host}.{}.{DOMAIN}", self.as_str())
    }

    /// The certificate's common name, also its etcd user: `docklet-worker-<host>`.
    pub fn common_name(self, host: &str) -> String {
        format!("docklet-{}-{host}", self.as_str())
    }

    pub fn cert_file(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.pem", self.as_str()))
    }

    pub fn key_file(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.key", self.as_str()))
    }
}

/// Does this host hold a key and certificate for `role`?
pub fn has_identity(dir: &Path, role: Role) -> bool {
    role.cert_file(dir).exists() && role.key_file(dir).exists()
}

pub fn ca_cert_file(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The CA key, in `private/` (root 0700), which the master's unit loads as credentials.
pub fn ca_key_file(dir: &Path) -> PathBuf {
    dir.join("private/ca.key")
}

/// SHA-256 of a certificate's DER, in lowercase hex: how etcd's records name certificates.
pub fn fingerprint(der: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(der))
}

/// The fingerprint of the first certificate of a PEM text.
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    Ok(fingerprint(&der))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::File {
        path: path.to_owned(),
        source,
    })
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as DER integers for serials must be.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// The site CA: its certificate and the key that signs identities.
pub struct SiteCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl SiteCa {
    /// A new CA (ECDSA P-256) that may sign end-entity certificates only.
    pub fn generate(cluster_name: &str) -> Result<SiteCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Docklet internal CA ({cluster_name})"),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Docklet");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + time::Duration::days(CA_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(SiteCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<SiteCa, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(SiteCa {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    pub fn load(dir: &Path) -> Result<SiteCa, PkiError> {
        SiteCa::from_pem(&read(&ca_cert_file(dir))?, &read(&ca_key_file(dir))?)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn fingerprint(&self) -> String {
        pem_fingerprint(&self.cert_pem).expect("the CA's own certificate parses")
    }

    /// A certificate for `role` on `host` for `public_key`, in PEM.
    pub fn issue(
        &self,
        role: Role,
        host: &str,
        public_key: &impl PublicKeyData,
    ) -> Result<String, PkiError> {
        crate::model::host::validate_host_name(host)
            .map_err(|e| PkiError::Invalid(e.to_string()))?;
        let dns = role.dns_name(host);
        ServerName::try_from(dns.clone())
            .map_err(|_| PkiError::Invalid(format!("host name {host:?} is not a DNS name")))?;
        let mut params = CertificateParams::new(vec![dns])?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, role.common_name(host));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Workers serve the agent; both are clients (of agents, of etcd). Their names keep
        // a master's certificate from passing for a worker's.
        self.sign_end_entity(params, public_key)
    }

    /// Signs an end-entity certificate for both TLS sides, valid from an hour ago (clocks
    /// differ) for [`IDENTITY_DAYS`].
    fn sign_end_entity(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<String, PkiError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now() - time::Duration::hours(1);
        params.not_after = now() + time::Duration::days(IDENTITY_DAYS);
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }
}

impl SiteCa {
    /// A certificate for etcd's server (and peer) side, naming the DNS names and addresses its
    /// clients dial, for `public_key`, in PEM.
    pub fn issue_etcd_server(
        &self,
        dns_names: &[String],
        addresses: &[std::net::IpAddr],
        public_key: &impl PublicKeyData,
    ) -> Result<String, PkiError> {
        if dns_names.is_empty() && addresses.is_empty() {
            return Err(PkiError::Invalid(
                "etcd's certificate needs at least one name or address its clients dial".into(),
            ));
        }
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params
            .subject_alt_names
            .extend(addresses.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, ETCD_SERVER_NAME);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // Members of a multi-member etcd also dial each other with it (client side).
        self.sign_end_entity(params, public_key)
    }
}

/// The common name of etcd's server certificate: no etcd user has it, so a stolen server
/// key opens nothing as a client once authentication is on.
pub const ETCD_SERVER_NAME: &str = "docklet-etcd-server";

/// Where `docklet-admin etcd-certificate` writes etcd's server certificate and key.
pub fn etcd_server_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("etcd/server.pem"), dir.join("etcd/server.key"))
}

/// Makes etcd's server key and certificate in `dir/etcd/` (the key readable by etcd's group)
/// and returns their paths.
pub fn write_etcd_server(
    dir: &Path,
    ca: &SiteCa,
    dns_names: &[String],
    addresses: &[std::net::IpAddr],
    etcd_group: Option<nix::unistd::Gid>,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let (cert_file, key_file) = etcd_server_files(dir);
    let parent = cert_file.parent().expect("in etcd/");
    std::fs::create_dir_all(parent).map_err(|source| PkiError::File {
        path: parent.to_owned(),
        source,
    })?;
    let key = KeyPair::generate()?;
    let cert = ca.issue_etcd_server(dns_names, addresses, &key)?;
    let key_mode = if etcd_group.is_some() { 0o640 } else { 0o600 };
    write_file(&key_file, &key.serialize_pem(), key_mode, etcd_group)?;
    write_file(&cert_file, &cert, 0o644, None)?;
    Ok((cert_file, key_file))
}

/// What `ensure_local` did, for `init` to tell.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalOutcome {
    pub made_ca: bool,
    /// Roles whose key and certificate were made now.
    pub issued: Vec<Role>,
}

/// On the CA host (as root): the site CA in `dir` (made when absent) and this host's master
/// and worker identities signed by it (made when absent or signed by another CA). The
/// master's key is readable by `master_group`.
pub fn ensure_local(
    dir: &Path,
    cluster_name: &str,
    host: &str,
    master_group: Option<nix::unistd::Gid>,
) -> Result<(SiteCa, LocalOutcome), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::File {
        path: dir.to_owned(),
        source,
    })?;
    let (ca, made_ca) = match (ca_cert_file(dir).exists(), ca_key_file(dir).exists()) {
        (true, true) => (SiteCa::load(dir)?, false),
        (false, false) => {
            let private = ca_key_file(dir).parent().expect("in private/").to_owned();
            std::fs::create_dir_all(&private).map_err(|source| PkiError::File {
                path: private.clone(),
                source,
            })?;
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| PkiError::File {
                    path: private.clone(),
                    source,
                },
            )?;
            let ca = SiteCa::generate(cluster_name)?;
            write_file(&ca_key_file(dir), &ca.key_pem(), 0o600, None)?;
            write_file(&ca_cert_file(dir), ca.cert_pem(), 0o644, None)?;
            (ca, true)
        }
        _ => {
            return Err(PkiError::Invalid(format!(
                "{} holds half a site CA (ca.pem and ca.key go together): restore the missing file",
                dir.display()
            )));
        }
    };
    let roots = roots_of(ca.cert_pem())?;
    let mut issued = Vec::new();
    for role in Role::ALL {
        let current = std::fs::read_to_string(role.cert_file(dir)).ok();
        let valid = current.is_some_and(|pem| verify_identity(&roots, &pem, role, host).is_ok())
            && role.key_file(dir).exists();
        if valid {
            continue;
        }
        let key = KeyPair::generate()?;
        let cert = ca.issue(role, host, &key)?;
        write_identity(dir, role, &cert, &key.serialize_pem(), master_group)?;
        issued.push(role);
    }
    Ok((ca, LocalOutcome { made_ca, issued }))
}

/// Writes one identity: the key before the certificate, so a daemon that sees the new
/// certificate finds its key.
pub fn write_identity(
    dir: &Path,
    role: Role,
    cert_pem: &str,
    key_pem: &str,
    master_group: Option<nix::unistd::Gid>,
) -> Result<(), PkiError> {
    let (mode, group) = match role {
        Role::Master => (0o640, master_group),
        Role::Worker => (0o600, None),
    };
    write_file(&role.key_file(dir), key_pem, mode, group)?;
    write_file(&role.cert_file(dir), cert_pem, 0o644, None)?;
    Ok(())
}

/// The CA certificates of a PEM text as rustls's trust anchors.
pub fn roots_of(pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| PkiError::Invalid(format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PkiError::Invalid("no CA certificate".into()));
    }
    Ok(roots)
}

/// Checks that `cert_pem` is a certificate of `role` on `host` signed by one of `roots`.
pub fn verify_identity(
    roots: &rustls::RootCertStore,
    cert_pem: &str,
    role: Role,
    host: &str,
) -> Result<(), PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        provider,
    )
    .build()
    .map_err(|e| PkiError::Invalid(e.to_string()))?;
    let name = ServerName::try_from(role.dns_name(host))
        .map_err(|_| PkiError::Invalid(format!("host name {host:?} is not a DNS name")))?;
    use rustls::client::danger::ServerCertVerifier;
    // Both roles' certificates name their host and role as a server's would; the name is
    // what tells a master's from a worker's.
    verifier
        .verify_server_cert(&der, &[], &name, &[], rustls::pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(|e| PkiError::Invalid(e.to_string()))
}

use rustls::server::danger::ClientCertVerifier;

/// The rustls configuration of one daemon's identity in a directory, read again when its
/// files change: a re-keyed host switches without a restart.
pub type IdentityFiles<T> = Reloading<T>;

fn identity_files<T: 'static>(
    dir: &Path,
    role: Role,
    build: fn(&Path, Role) -> Result<T, PkiError>,
) -> IdentityFiles<T> {
    let owned = dir.to_owned();
    Reloading::new(
        format!("the {} identity in {}", role.as_str(), dir.display()),
        vec![ca_cert_file(dir), role.cert_file(dir), role.key_file(dir)],
        format!(
            "no {} identity in {} yet (docklet-admin init on the CA host, docklet-admin join on others)",
            role.as_str(),
            dir.display()
        ),
        move || build(&owned, role).map_err(|e| e.to_string()),
    )
}

fn certified(
    dir: &Path,
    role: Role,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let cert = role.cert_file(dir);
    let key = role.key_file(dir);
    let chain = CertificateDer::pem_slice_iter(read(&cert)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Invalid(format!("{}: not PEM: {e}", cert.display())))?;
    let private = PrivateKeyDer::from_pem_slice(read(&key)?.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("{}: not a PEM private key: {e}", key.display())))?;
    Ok((chain, private))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The agent's server side: the worker's certificate; clients must present a certificate
/// of the site CA (which masters' are is checked after the handshake, against etcd).
fn agent_server(dir: &Path, role: Role) -> Result<rustls::ServerConfig, PkiError> {
    let roots = roots_of(&read(&ca_cert_file(dir))?)?;
    let verifier: Arc<dyn ClientCertVerifier> =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| PkiError::Invalid(e.to_string()))?;
    let (chain, key) = certified(dir, role)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", role.key_file(dir).display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The master's client side: its certificate, and workers' certificates checked against the
/// site CA and the worker name of the host dialled.
fn agent_client(dir: &Path, role: Role) -> Result<rustls::ClientConfig, PkiError> {
    let roots = roots_of(&read(&ca_cert_file(dir))?)?;
    let (chain, key) = certified(dir, role)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", role.key_file(dir).display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The worker's agent TLS configuration from its identity files.
pub fn agent_server_files(dir: &Path) -> IdentityFiles<rustls::ServerConfig> {
    identity_files(dir, Role::Worker, agent_server)
}

/// The master's TLS configuration for dialling agents, from its identity files.
pub fn agent_client_files(dir: &Path) -> IdentityFiles<rustls::ClientConfig> {
    identity_files(dir, Role::Master, agent_client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_verify_for_their_role_and_host_only() {
        let ca = SiteCa::generate("site").unwrap();
        let roots = roots_of(ca.cert_pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let worker = ca.issue(Role::Worker, "tb2", &key).unwrap();
        let master = ca.issue(Role::Master, "tb2", &key).unwrap();
        verify_identity(&roots, &worker, Role::Worker, "tb2").unwrap();
        verify_identity(&roots, &master, Role::Master, "tb2").unwrap();
        assert!(verify_identity(&roots, &worker, Role::Worker, "tb3").is_err());
        assert!(verify_identity(&roots, &master, Role::Master, "tb3").is_err());
        // A master's certificate is no worker's, and the other way round.
        assert!(verify_identity(&roots, &master, Role::Worker, "tb2").is_err());
        assert!(verify_identity(&roots, &worker, Role::Master, "tb2").is_err());
        // Another site's CA signs nothing of this one.
        let other = SiteCa::generate("other").unwrap();
        let foreign = other.issue(Role::Master, "tb2", &key).unwrap();
        assert!(verify_identity(&roots, &foreign, Role::Master, "tb2").is_err());
        assert_ne!(
            pem_fingerprint(&worker).unwrap(),
            pem_fingerprint(&master).unwrap()
        );
    }

    #[test]
    fn a_reloaded_ca_signs_what_its_certificate_verifies() {
        let ca = SiteCa::generate("site").unwrap();
        let again = SiteCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = again.issue(Role::Worker, "h1", &key).unwrap();
        verify_identity(&roots_of(ca.cert_pem()).unwrap(), &cert, Role::Worker, "h1").unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
    }

    #[test]
    fn ensure_local_makes_the_ca_once_and_keeps_valid_identities() {
        let dir = std::env::temp_dir().join(format!("docklet-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, first) = ensure_local(&dir, "site", "h1", None).unwrap();
        assert!(first.made_ca);
        assert_eq!(first.issued, vec![Role::Master, Role::Worker]);
        let (again, second) = ensure_local(&dir, "site", "h1", None).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(
            second,
            LocalOutcome {
                made_ca: false,
                issued: vec![]
            }
        );
        use std::os::unix::fs::MetadataExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(ca_key_file(&dir)), 0o600);
        assert_eq!(mode(Role::Worker.key_file(&dir)), 0o600);
        assert_eq!(mode(Role::Master.key_file(&dir)), 0o640);
        // Both halves of the agent's TLS build from what it wrote.
        agent_server_files(&dir).current().unwrap();
        agent_client_files(&dir).current().unwrap();
        // Half a CA is an accident to repair, not a reason to make a new one.
        std::fs::remove_file(ca_key_file(&dir)).unwrap();
        assert!(ensure_local(&dir, "site", "h1", None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
