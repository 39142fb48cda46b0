//! The portal's TLS. `docklet-admin init` makes a site certificate when none is configured:
//! a private CA, name-constrained to the site's own names so that trusting it in a browser
//! trusts nothing else, and a server certificate for the portal's names signed by it. The
//! master loads the certificate from its files for every handshake it serves, picking up a
//! replaced certificate within a second and without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{Config, TLS_DIR};
use crate::sys::reload::Reloading;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the site certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// How long the certificates `init` makes are valid. The CA outlives every server
/// certificate it signs; a new server certificate is one `docklet-admin certificate` away.
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 825;

/// The files of a site certificate made by `init`, all PEM.
pub struct SiteCertificate {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// The names the portal's certificate covers: `portal_url`'s host first, then `tls_names`,
/// then every workspace host (`*.<workspace_domain>`).
pub fn site_names(config: &Config, host: &str) -> Vec<String> {
    let mut names = vec![config.portal_host_or(host)];
    let workspaces = config.workspace_domain.iter().map(|d| format!("*.{d}"));
    for name in config.tls_names.iter().cloned().chain(workspaces) {
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A new site CA and a server certificate for `names` signed by it (ECDSA P-256). The CA may
/// sign certificates for these names (and names below them) only.
pub fn generate(cluster_name: &str, names: &[String]) -> Result<SiteCertificate, TlsError> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("Docklet site CA ({cluster_name})"),
    );
    ca.distinguished_name
        .push(DnType::OrganizationName, "Docklet");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: names
            .iter()
            .map(|n| GeneralSubtree::DnsName(n.trim_start_matches("*.").to_owned()))
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.to_vec())?;
    server.distinguished_name = DistinguishedName::new();
    server.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    server.not_before = now - time::Duration::hours(1);
    server.not_after = now + time::Duration::days(SERVER_DAYS);
    let issuer = Issuer::new(ca, &ca_key);
    let cert = server.signed_by(&key, &issuer)?;
    Ok(SiteCertificate {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        // The chain the portal presents: its certificate, then the CA's (browsers that
        // were given the CA find it either way; others see the whole chain).
        cert: format!("{}{}", cert.pem(), ca_cert.pem()),
        key: key.serialize_pem(),
    })
}

/// What `ensure_site_certificate` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The configured (or an earlier) certificate is there: nothing was written.
    Present { cert: PathBuf },
    /// A new site CA and portal certificate were written.
    Made { ca: PathBuf, cert: PathBuf },
}

/// Makes the site certificate in [`TLS_DIR`] unless the portal has one: a configured
/// `tls_cert` must exist (its absence is an error, never replaced by a made-up one). The
/// server key is readable by group `key_group` (the master's), the CA key by root alone.
pub fn ensure_site_certificate(
    config: &Config,
    host: &str,
    key_group: Option<nix::unistd::Gid>,
) -> Result<Outcome, TlsError> {
    let (cert, key) = (config.tls_cert_file(), config.tls_key_file());
    if !config.generated_certificate() {
        for path in [&cert, &key] {
            std::fs::metadata(path).map_err(|source| TlsError::File {
                path: path.clone(),
                source,
            })?;
        }
        return Ok(Outcome::Present { cert });
    }
    make_site_certificate(
        Path::new(TLS_DIR),
        &site_names(config, host),
        &config.cluster_name,
        key_group,
    )
}

/// Makes the site CA and the portal's certificate in `dir` (`ca.pem`, `ca.key`, `portal.pem`,
/// `portal.key`) unless the portal's two files are there.
fn make_site_certificate(
    dir: &Path,
    names: &[String],
    cluster_name: &str,
    key_group: Option<nix::unistd::Gid>,
) -> Result<Outcome, TlsError> {
    let (cert, key) = (dir.join("portal.pem"), dir.join("portal.key"));
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(Outcome::Present { cert }),
        (false, false) => {}
        // Half a certificate is an accident to repair, not a reason to replace the site CA.
        (has_cert, _) => {
            let (missing, present) = if has_cert {
                (&key, &cert)
            } else {
                (&cert, &key)
            };
            return Err(TlsError::Invalid {
                path: missing.clone(),
                message: format!(
                    "is missing while {} exists: restore it, or remove both to make a new site certificate",
                    present.display()
                ),
            });
        }
    }
    let site = generate(cluster_name, names)?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::File {
        path: dir.to_owned(),
        source,
    })?;
    let ca = dir.join("ca.pem");
    write_file(&dir.join("ca.key"), &site.ca_key, 0o600, None)?;
    write_file(&ca, &site.ca_cert, 0o644, None)?;
    // The key before the certificate: a master that sees the certificate finds its key.
    write_file(&key, &site.key, 0o640, key_group)?;
    write_file(&cert, &site.cert, 0o644, None)?;
    Ok(Outcome::Made { ca, cert })
}

/// Writes a whole file with `mode` (and group) by renaming a complete temporary file over it.
pub fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    group: Option<nix::unistd::Gid>,
) -> Result<(), TlsError> {
    crate::sys::files::write_whole(path, contents.as_bytes(), mode, group).map_err(|source| {
        TlsError::File {
            path: path.to_owned(),
            source,
        }
    })
}

/// Reads a PEM certificate chain and its private key into what rustls serves.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let invalid = |path: &Path, message: String| TlsError::Invalid {
        path: path.to_owned(),
        message,
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::File {
            path: path.to_owned(),
            source,
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "holds no certificate".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| invalid(key, format!("not a PEM private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| invalid(key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| invalid(key, format!("does not belong to {}: {e}", cert.display())))?;
    Ok(certified)
}

/// The portal's certificate as the master serves it: read from its files, and read again
/// when they change (checked at most once a second), so a renewed certificate needs no
/// restart. A broken replacement keeps the last good one in service.
pub struct PortalCertificate {
    cert: PathBuf,
    files: Reloading<CertifiedKey>,
}

impl std::fmt::Debug for PortalCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortalCertificate({})", self.cert.display())
    }
}

impl PortalCertificate {
    pub fn new(config: &Config) -> PortalCertificate {
        let (cert, key) = (config.tls_cert_file(), config.tls_key_file());
        let missing = format!("no certificate at {} and {}", cert.display(), key.display());
        let (c, k) = (cert.clone(), key.clone());
        PortalCertificate {
            files: Reloading::new(
                format!("the portal's certificate {}", cert.display()),
                vec![cert.clone(), key],
                missing,
                move || load_certified_key(&c, &k).map_err(|e| e.to_string()),
            ),
            cert,
        }
    }

    /// The certificate to present now, if there is one.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.files.current().ok()
    }

    /// Why the portal cannot serve HTTPS, while it cannot.
    pub fn problem(&self) -> Option<String> {
        self.files.current().err()
    }
}

impl ResolvesServerCert for PortalCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The rustls server configuration of the portal port: HTTP/1.1 over TLS 1.2 or 1.3.
pub fn server_config(certificate: Arc<PortalCertificate>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS client configuration that trusts the CA certificates of `ca_file` alone (the site
/// CA), for tools and benchmarks that talk to the portal.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let invalid = |message: String| TlsError::Invalid {
        path: ca_file.to_owned(),
        message,
    };
    let pem = std::fs::read(ca_file).map_err(|source| TlsError::File {
        path: ca_file.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| invalid(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("not a CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connector of hyper's client for tools and benchmarks: `https://` URLs over TLS, the
/// server's certificate verified with the given configuration ([`client_config`]); plain
/// `http://` URLs (etcd's, an agent's) over TCP.
#[derive(Clone)]
pub struct HttpsConnector(tokio_rustls::TlsConnector);

/// One TLS connection of [`HttpsConnector`].
pub type TlsClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl HttpsConnector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> HttpsConnector {
        HttpsConnector(tokio_rustls::TlsConnector::from(config))
    }

    /// A TLS connection to `host:port`, its certificate verified for `host`.
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<TlsClientStream> {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        self.0.connect(name, tcp).await
    }
}

impl tower_service::Service<axum::http::Uri> for HttpsConnector {
    type Response = HttpsConnection;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<HttpsConnection>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: axum::http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_owned();
            if uri.scheme_str() == Some("http") {
                let tcp =
                    tokio::net::TcpStream::connect((host, uri.port_u16().unwrap_or(80))).await?;
                tcp.set_nodelay(true)?;
                return Ok(HttpsConnection::Plain(hyper_util::rt::TokioIo::new(tcp)));
            }
            let stream = connector
                .connect(&host, uri.port_u16().unwrap_or(443))
                .await?;
            Ok(HttpsConnection::Tls(Box::new(
                hyper_util::rt::TokioIo::new(stream),
            )))
        })
    }
}

/// A connection of hyper's client pool.
pub enum HttpsConnection {
    Plain(hyper_util::rt::TokioIo<tokio::net::TcpStream>),
    Tls(Box<hyper_util::rt::TokioIo<TlsClientStream>>),
}

impl hyper_util::client::legacy::connect::Connection for HttpsConnection {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for HttpsConnection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpsConnection::Plain(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            HttpsConnection::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for HttpsConnection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            HttpsConnection::Plain(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            HttpsConnection::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpsConnection::Plain(io) => std::pin::Pin::new(io).poll_flush(cx),
            HttpsConnection::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            HttpsConnection::Plain(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            HttpsConnection::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn verify(ca_pem: &str, chain_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &chain[0],
            &chain[1..],
            &server_name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map(|_| ())
    }

    #[test]
    fn the_site_certificate_verifies_for_its_names_only() {
        let names = vec!["portal.example".to_owned(), "*.ws.example".to_owned()];
        let site = generate("lab", &names).unwrap();
        verify(&site.ca_cert, &site.cert, "portal.example").unwrap();
        verify(&site.ca_cert, &site.cert, "alice.ws.example").unwrap();
        assert!(verify(&site.ca_cert, &site.cert, "other.example").is_err());
        assert!(verify(&site.ca_cert, &site.cert, "ws.example").is_err());
        // Another site's CA does not vouch for it.
        let other = generate("lab", &names).unwrap();
        assert!(verify(&other.ca_cert, &site.cert, "portal.example").is_err());
    }

    #[test]
    fn the_portal_serves_what_its_files_hold_and_follows_a_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            tls_cert: Some(dir.path().join("c.pem")),
            tls_key: Some(dir.path().join("k.pem")),
            ..Config::default()
        };
        let portal = PortalCertificate::new(&config);
        assert!(portal.current().is_none());
        assert!(portal.problem().unwrap().contains("no certificate at"));

        let first = generate("lab", &["a.example".into()]).unwrap();
        std::fs::write(dir.path().join("k.pem"), &first.key).unwrap();
        std::fs::write(dir.path().join("c.pem"), &first.cert).unwrap();
        portal.files.recheck();
        let served = portal.current().expect("a certificate");
        assert_eq!(
            served.cert[0].as_ref(),
            CertificateDer::pem_slice_iter(first.cert.as_bytes())
                .next()
                .unwrap()
                .unwrap()
                .as_ref()
        );

        // A key that does not fit is refused; the good certificate stays in service.
        let second = generate("lab", &["a.example".into()]).unwrap();
        std::fs::write(dir.path().join("c.tmp"), &second.cert).unwrap();
        std::fs::rename(dir.path().join("c.tmp"), dir.path().join("c.pem")).unwrap();
        portal.files.recheck();
        assert!(Arc::ptr_eq(&portal.current().unwrap(), &served));
        assert!(portal.files.last_problem().is_some());

        std::fs::write(dir.path().join("k.tmp"), &second.key).unwrap();
        std::fs::rename(dir.path().join("k.tmp"), dir.path().join("k.pem")).unwrap();
        portal.files.recheck();
        assert!(!Arc::ptr_eq(&portal.current().unwrap(), &served));
        assert!(portal.problem().is_none());
    }

    #[test]
    fn init_makes_the_site_certificate_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["portal.example".to_owned()];
        let made = make_site_certificate(dir.path(), &names, "lab", None).unwrap();
        assert!(matches!(made, Outcome::Made { .. }));
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            [
                mode("ca.key"),
                mode("ca.pem"),
                mode("portal.key"),
                mode("portal.pem")
            ],
            [0o600, 0o644, 0o640, 0o644]
        );
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let chain = std::fs::read_to_string(dir.path().join("portal.pem")).unwrap();
        verify(&ca, &chain, "portal.example").unwrap();
        load_certified_key(
            &dir.path().join("portal.pem"),
            &dir.path().join("portal.key"),
        )
        .unwrap();
        // A second init keeps it.
        let again = make_site_certificate(dir.path(), &names, "lab", None).unwrap();
        assert!(matches!(again, Outcome::Present { .. }));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            ca
        );
        // Half of it missing is an error, and the CA stays.
        std::fs::remove_file(dir.path().join("portal.key")).unwrap();
        let err = make_site_certificate(dir.path(), &names, "lab", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("portal.key") && err.contains("is missing"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            ca
        );
    }

    #[test]
    fn the_names_are_the_portals_host_then_the_configured_ones() {
        let config = Config {
            portal_url: Some("https://Portal.Example:8443/".into()),
            tls_names: vec!["portal.example".into(), "*.ws.example".into()],
            ..Config::default()
        };
        assert_eq!(
            site_names(&config, "tb1"),
            ["portal.example", "*.ws.example"]
        );
        assert_eq!(site_names(&Config::default(), "tb1"), ["tb1"]);
        let with_workspaces = Config {
            tls_names: vec!["portal2.example".into()],
            workspace_domain: Some("ws.example".into()),
            ..config
        };
        assert_eq!(
            site_names(&with_workspaces, "tb1"),
            ["portal.example", "portal2.example", "*.ws.example"]
        );
    }
}
