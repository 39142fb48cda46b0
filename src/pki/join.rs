//! Joining a host: `docklet-admin host add NAME` records a ticket (a random secret with an
//! expiry) in etcd and prints a token holding the secret, the portal's address and the site
//! CA's fingerprint. On the new host, `docklet-admin join TOKEN` makes the host's two keys
//! and sends their public halves to the portal with a proof (an HMAC under the secret), so
//! whoever sees the exchange learns nothing that lets them join; the master checks the proof,
//! takes the ticket (once), signs the keys and answers with a proof of its own, which the
//! host checks along with the CA's fingerprint. The transport's own TLS is not what makes
//! this safe, so a host can join before it trusts the portal's certificate.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use super::{PkiError, Role};

const TOKEN_PREFIX: &str = "dkj1.";

/// What `host add` prints, encoded as `dkj1.<base64url JSON>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    pub host: String,
    pub secret: String,
    /// Where to send the request: the portal's URL.
    pub portal: String,
    /// SHA-256 of the site CA's certificate.
    pub ca: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl JoinToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("token serializes");
        format!(
            "{TOKEN_PREFIX}{}",
            data_encoding::BASE64URL_NOPAD.encode(&json)
        )
    }

    pub fn decode(text: &str) -> Result<JoinToken, PkiError> {
        let bad = |why: &str| PkiError::Invalid(format!("not a join token ({why})"));
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("it starts with dkj1."))?;
        let json = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| bad("damaged: copy all of it"))?;
        serde_json::from_slice(&json).map_err(|_| bad("damaged: copy all of it"))
    }
}

/// A token's record in etcd (`join-tickets/<host>`), taken by the join that uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    pub host: String,
    pub secret: String,
    pub created_at: u64,
    pub expires_at: u64,
}

/// What a joining host sends: its name, the public halves of its keys (SubjectPublicKeyInfo
/// DER, base64) and the proof that it holds the ticket's secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub host: String,
    pub master_key: String,
    pub worker_key: String,
    pub proof: String,
}

/// The master's answer: the CA's and the host's certificates (PEM), and its proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinResponse {
    pub ca: String,
    pub master: String,
    pub worker: String,
    pub proof: String,
}

fn mac(secret: &str, parts: &[&str]) -> Hmac<sha2::Sha256> {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    for part in parts {
        // Lengths first: no two different lists of parts feed the same bytes.
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

fn proof(secret: &str, parts: &[&str]) -> String {
    data_encoding::HEXLOWER.encode(&mac(secret, parts).finalize().into_bytes())
}

fn check(secret: &str, parts: &[&str], presented: &str) -> bool {
    let Ok(bytes) = data_encoding::HEXLOWER.decode(presented.as_bytes()) else {
        return false;
    };
    mac(secret, parts).verify_slice(&bytes).is_ok()
}

impl JoinRequest {
    pub fn new(token: &JoinToken, master_key: String, worker_key: String) -> JoinRequest {
        let proof = proof(
            &token.secret,
            &["join", &token.host, &master_key, &worker_key],
        );
        JoinRequest {
            host: token.host.clone(),
            master_key,
            worker_key,
            proof,
        }
    }

    /// Does the proof show the ticket's secret?
    pub fn proven_by(&self, ticket: &JoinTicket) -> bool {
        ticket.host == self.host
            && check(
                &ticket.secret,
                &["join", &self.host, &self.master_key, &self.worker_key],
                &self.proof,
            )
    }

    /// One key of the request, for signing.
    pub fn public_key(&self, role: Role) -> Result<rcgen::SubjectPublicKeyInfo, PkiError> {
        let text = match role {
            Role::Master => &self.master_key,
            Role::Worker => &self.worker_key,
        };
        let der = data_encoding::BASE64
            .decode(text.as_bytes())
            .map_err(|_| PkiError::Invalid(format!("the {} key is not base64", role.as_str())))?;
        rcgen::SubjectPublicKeyInfo::from_der(&der)
            .map_err(|e| PkiError::Invalid(format!("the {} key: {e}", role.as_str())))
    }
}

impl JoinResponse {
    pub fn new(ticket: &JoinTicket, ca: String, master: String, worker: String) -> JoinResponse {
        let proof = proof(&ticket.secret, &["joined", &ca, &master, &worker]);
        JoinResponse {
            ca,
            master,
            worker,
            proof,
        }
    }

    /// Checks the answer came from a holder of the secret, with the CA the token names.
    pub fn verify(&self, token: &JoinToken) -> Result<(), PkiError> {
        if !check(
            &token.secret,
            &["joined", &self.ca, &self.master, &self.worker],
            &self.proof,
        ) {
            return Err(PkiError::Invalid(
                "the answer does not prove it knows the token: not the site's master".into(),
            ));
        }
        let ca = super::pem_fingerprint(&self.ca)?;
        if ca != token.ca {
            return Err(PkiError::Invalid(format!(
                "the site CA sent ({ca}) is not the one the token names ({})",
                token.ca
            )));
        }
        let roots = super::roots_of(&self.ca)?;
        super::verify_identity(&roots, &self.master, Role::Master, &token.host)?;
        super::verify_identity(&roots, &self.worker, Role::Worker, &token.host)
    }
}

/// One certificate in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    pub role: Role,
    pub fingerprint: String,
    /// Unix seconds.
    pub issued_at: u64,
}

/// A host's certificates in force (`identities/<host>`): the latest of each role, and the
/// one before it (a re-keyed host's daemons switch to the new files within seconds; the old
/// certificate stays valid until the next re-key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    pub host: String,
    pub certificates: Vec<IssuedCertificate>,
}

impl HostIdentity {
    /// The record after issuing `new` certificates, given the one before.
    pub fn after_issuing(
        host: &str,
        previous: Option<&HostIdentity>,
        new: Vec<IssuedCertificate>,
    ) -> HostIdentity {
        let mut certificates = new.clone();
        for role in Role::ALL {
            let renewed = new.iter().any(|c| c.role == role);
            let kept = previous
                .into_iter()
                .flat_map(|p| p.certificates.iter())
                .filter(|c| c.role == role && !certificates.contains(c))
                .max_by_key(|c| c.issued_at);
            // A role issued now keeps its latest earlier certificate; others keep theirs.
            let kept: Vec<&IssuedCertificate> = if renewed {
                kept.into_iter().collect()
            } else {
                previous
                    .into_iter()
                    .flat_map(|p| p.certificates.iter())
                    .filter(|c| c.role == role)
                    .collect()
            };
            certificates.extend(kept.into_iter().cloned());
        }
        HostIdentity {
            host: host.to_owned(),
            certificates,
        }
    }

    /// Fingerprints of this host's certificates of `role`.
    pub fn fingerprints(&self, role: Role) -> impl Iterator<Item = &str> {
        self.certificates
            .iter()
            .filter(move |c| c.role == role)
            .map(|c| c.fingerprint.as_str())
    }
}

/// The path of the join exchange on the portal.
pub const JOIN_PATH: &str = "/hosts/v1/join";

/// Sends `request` to the portal the token names and checks the answer: the site's
/// certificates for this host, proven to come from a holder of the token's secret.
pub async fn exchange(token: &JoinToken, request: &JoinRequest) -> Result<JoinResponse, PkiError> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    let fail =
        |why: String| PkiError::Invalid(format!("cannot reach the portal {}: {why}", token.portal));
    let uri: hyper::Uri = token.portal.parse().map_err(|_| fail("not a URL".into()))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(fail("neither http:// nor https://".into())),
    };
    let host = uri.host().ok_or_else(|| fail("no host".into()))?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let body = serde_json::to_vec(request).expect("request serializes");
    let http = hyper::Request::post(JOIN_PATH)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| fail(e.to_string()))?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let response = if tls {
        // The portal's certificate is not checked: this host may not trust it yet, and
        // the exchange is authenticated by the token's secret both ways, not by TLS.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(bare.clone())
            .map_err(|_| fail("not a host name".into()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(e.to_string()))?;
        send(TokioIo::new(stream), http).await
    } else {
        send(TokioIo::new(tcp), http).await
    }
    .map_err(fail)?;
    let (status, text) = response;
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(PkiError::Invalid(message));
    }
    let response: JoinResponse = serde_json::from_str(&text)
        .map_err(|e| PkiError::Invalid(format!("the portal's answer is no join answer: {e}")))?;
    response.verify(token)?;
    Ok(response)
}

/// One HTTP/1.1 request on a connection: its status and text.
async fn send<T>(
    io: hyper_util::rt::TokioIo<T>,
    request: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> Result<(u16, String), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Accepts whatever certificate the portal shows, for the join exchange alone (see
/// [`exchange`]); signatures are still checked, so the handshake itself is sound.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::SiteCa;
    use super::*;
    use rcgen::{KeyPair, PublicKeyData};

    fn token() -> (JoinToken, JoinTicket) {
        let ticket = JoinTicket {
            host: "tb4".into(),
            secret: "s3cret".into(),
            created_at: 1,
            expires_at: 100,
        };
        let token = JoinToken {
            host: "tb4".into(),
            secret: "s3cret".into(),
            portal: "https://portal:8000".into(),
            ca: String::new(),
            expires_at: 100,
        };
        (token, ticket)
    }

    fn b64(key: &KeyPair) -> String {
        data_encoding::BASE64.encode(&key.subject_public_key_info())
    }

    #[test]
    fn tokens_round_trip_and_damage_is_named() {
        let (token, _) = token();
        assert_eq!(JoinToken::decode(&token.encode()).unwrap(), token);
        let text = token.encode();
        let err = JoinToken::decode(&text[..text.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        let err = JoinToken::decode("hello").unwrap_err();
        assert!(err.to_string().contains("dkj1."), "{err}");
    }

    #[test]
    fn a_join_proves_the_secret_both_ways_and_binds_the_keys() {
        let (mut token, ticket) = token();
        let ca = SiteCa::generate("site").unwrap();
        token.ca = ca.fingerprint();
        let (master, worker) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let request = JoinRequest::new(&token, b64(&master), b64(&worker));
        assert!(request.proven_by(&ticket));
        // Someone who saw the request cannot swap a key of theirs in.
        let mallory = KeyPair::generate().unwrap();
        let swapped = JoinRequest {
            worker_key: b64(&mallory),
            ..request.clone()
        };
        assert!(!swapped.proven_by(&ticket));
        // Nor use it for another host's ticket.
        assert!(!request.proven_by(&JoinTicket {
            host: "tb5".into(),
            ..ticket.clone()
        }));
        let sign = |role| {
            ca.issue(role, &ticket.host, &request.public_key(role).unwrap())
                .unwrap()
        };
        let response = JoinResponse::new(
            &ticket,
            ca.cert_pem().to_owned(),
            sign(Role::Master),
            sign(Role::Worker),
        );
        response.verify(&token).unwrap();
        // An answer made without the secret is refused, and so is another CA.
        let forged = JoinResponse::new(
            &JoinTicket {
                secret: "guess".into(),
                ..ticket.clone()
            },
            response.ca.clone(),
            response.master.clone(),
            response.worker.clone(),
        );
        assert!(forged.verify(&token).is_err());
        let other = SiteCa::generate("other").unwrap();
        let foreign = JoinResponse::new(
            &ticket,
            other.cert_pem().to_owned(),
            response.master.clone(),
            response.worker.clone(),
        );
        assert!(
            foreign
                .verify(&token)
                .unwrap_err()
                .to_string()
                .contains("not the one")
        );
    }

    fn issued(role: Role, fingerprint: &str, at: u64) -> IssuedCertificate {
        IssuedCertificate {
            role,
            fingerprint: fingerprint.into(),
            issued_at: at,
        }
    }

    #[test]
    fn a_rekey_keeps_the_previous_certificate_of_each_role_only() {
        let first = HostIdentity::after_issuing(
            "h",
            None,
            vec![issued(Role::Master, "m1", 1), issued(Role::Worker, "w1", 1)],
        );
        assert_eq!(first.fingerprints(Role::Master).collect::<Vec<_>>(), ["m1"]);
        let second = HostIdentity::after_issuing(
            "h",
            Some(&first),
            vec![issued(Role::Master, "m2", 2), issued(Role::Worker, "w2", 2)],
        );
        assert_eq!(
            second.fingerprints(Role::Master).collect::<Vec<_>>(),
            ["m2", "m1"]
        );
        let third =
            HostIdentity::after_issuing("h", Some(&second), vec![issued(Role::Master, "m3", 3)]);
        assert_eq!(
            third.fingerprints(Role::Master).collect::<Vec<_>>(),
            ["m3", "m2"]
        );
        // The role not re-keyed keeps what it had.
        assert_eq!(
            third.fingerprints(Role::Worker).collect::<Vec<_>>(),
            ["w2", "w1"]
        );
    }
}
