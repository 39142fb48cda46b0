//! The portal port's connections. The port speaks HTTPS; a client that speaks plain HTTP to
//! it (its first byte is not a TLS handshake's) only gets a redirect to the same address over
//! HTTPS. Every HTTPS answer carries HSTS, so a browser that has seen the portal once never
//! again sends a request to the portal's name (on any port) without TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;
use tracing::{debug, warn};

use super::tls::PortalCertificate;

/// HSTS for a year. Not `includeSubDomains`: names below the portal's are not the portal's
/// to speak for (a site may put the ports host there).
pub const HSTS: &str = "max-age=31536000";

/// A client that has not said its first byte, or finished its TLS handshake, by then is
/// dropped.
const FIRST_BYTE_LIMIT: Duration = Duration::from_secs(30);
/// How long open connections (terminals, event streams) may finish after a stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The address a request reached this master at (the local end of its connection).
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub SocketAddr);

/// The local address of the request's connection, for handlers: where mapped ports are
/// reached when no `ports_host` is configured.
pub struct Reached(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Reached {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Reached(
            parts
                .extensions
                .get::<LocalAddr>()
                .map(|LocalAddr(a)| a.ip()),
        ))
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets open connections finish for
/// up to [`DRAIN_LIMIT`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    certificate: Arc<PortalCertificate>,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(super::tls::server_config(certificate.clone()));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: wait a moment instead of spinning.
                    warn!("accepting a portal connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            acceptor: acceptor.clone(),
            certificate: certificate.clone(),
            peer,
            local: stream.local_addr().unwrap_or(peer),
        };
        let watcher = graceful.watcher();
        tokio::spawn(async move { connection.run(stream, watcher).await });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("portal connections still open after {DRAIN_LIMIT:?}; exiting anyway");
    }
}

struct Connection {
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    certificate: Arc<PortalCertificate>,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream, watcher: hyper_util::server::graceful::Watcher) {
        let mut first = [0u8; 1];
        match tokio::time::timeout(FIRST_BYTE_LIMIT, stream.peek(&mut first)).await {
            Ok(Ok(1)) => {}
            _ => return,
        }
        let builder = Builder::new(TokioExecutor::new());
        // 0x16: a TLS handshake record.
        if first[0] != 0x16 {
            let certificate = self.certificate.clone();
            let service = hyper::service::service_fn(move |request| {
                let answer = redirect_to_https(&request, certificate.problem());
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!("plain HTTP connection from {}: {e}", self.peer);
            }
            return;
        }
        let tls = match tokio::time::timeout(FIRST_BYTE_LIMIT, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return debug!("TLS handshake with {}: {e}", self.peer),
            Err(_) => return debug!("TLS handshake with {}: not done in time", self.peer),
        };
        let (app, peer, local) = (self.app, self.peer, self.local);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(LocalAddr(local));
            let answer = app.clone().call(request);
            async move {
                let mut response = answer.await?;
                response.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS),
                );
                Ok::<_, Infallible>(response)
            }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            debug!("HTTPS connection from {peer}: {e}");
        }
    }
}

/// The answer to plain HTTP: the same URL over HTTPS (308 keeps the method and body), or,
/// while the portal has no certificate, what the administrator has to do.
pub fn redirect_to_https<B>(request: &Request<B>, problem: Option<String>) -> Response<Body> {
    let text = |status: StatusCode, message: String| {
        let mut response = Response::new(Body::from(message));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if let Some(problem) = problem {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "This portal has no TLS certificate yet ({problem}). Run `docklet-admin init` on \
                 the master host, or set tls_cert and tls_key in /etc/docklet/docklet.toml.\n"
            ),
        );
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
    let Some(host) = host else {
        return text(
            StatusCode::BAD_REQUEST,
            "This port speaks HTTPS only; use https://.\n".into(),
        );
    };
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = format!("https://{host}{path}");
    let mut response = text(
        StatusCode::PERMANENT_REDIRECT,
        format!("This port speaks HTTPS only: {location}\n"),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: Option<&str>, uri: &str) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn plain_http_is_sent_to_the_same_address_over_https() {
        let r = redirect_to_https(&request(Some("portal.example:8000"), "/clusters?x=1"), None);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://portal.example:8000/clusters?x=1"
        );
        // A Host that could break out of the URL is not echoed.
        let r = redirect_to_https(&request(Some("evil/x@y"), "/"), None);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get(header::LOCATION).is_none());
        let r = redirect_to_https(&request(None, "/"), None);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn without_a_certificate_plain_http_says_what_to_do() {
        let r = redirect_to_https(&request(Some("p:8000"), "/"), Some("no certificate".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(header::LOCATION).is_none());
    }
}
