//! The workspace proxy: `/go/<user>/<cluster>/<index>/…` on the user's own workspace host
//! (`<user>.<workspace_domain>`, on the portal's port) is the Jupyter server of that node
//! (port 8888 inside it, base URL `/go/<user>/<cluster>/<index>/`), for the node's owner
//! only. The portal's host serves no workspace: its `/go/…` gives the signed-in owner a
//! one-time grant and sends it to the workspace host, which exchanges it for a cookie of
//! its own, so what a node serves never runs on the portal's origin or another user's.
//! Requests (any method, bodies streamed both ways) and WebSocket
//! upgrades (kernels, terminals) travel through a tunnel of the node's worker agent
//! ([`agent_client::connect_tcp`]); tunnels are kept alive and reused per node. The proxy
//! swaps Docklet's credentials for the node's Jupyter token ([`super::proxy_headers`]): the
//! vnode never sees a Docklet token or cookie.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::{debug, warn};

use super::Master;
use super::agent_client::{self, AgentError, NodeEndpoint};
use super::errors::ApiError;
use super::extract::Auth;
use super::proxy_headers::{filter_response_headers, forwarded_request_headers, is_upgrade};
use super::session;
use crate::model::account::TokenKind;
use crate::model::workspace;
use crate::sys::streams::Buffered;

/// Jupyter's port inside every vnode (socket-activated).
pub const JUPYTER_PORT: u16 = 8888;
/// How long a node's endpoint (host, agent, Jupyter's token) is reused before it is looked
/// up again.
const ENDPOINT_TTL: Duration = Duration::from_secs(10);
/// Idle tunnels kept per node, and for how long.
const IDLE_PER_NODE: usize = 8;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The proxy's shared state: the HTTP client whose pool holds the tunnels, and the nodes'
/// endpoints it connects through.
pub struct Proxy {
    client: Client<TunnelConnector, Body>,
    endpoints: Arc<Mutex<HashMap<String, Known>>>,
}

/// A node's endpoint, its Jupyter's token, and when they were looked up.
type Known = (NodeEndpoint, String, Instant);

impl Default for Proxy {
    fn default() -> Self {
        let endpoints: Arc<Mutex<HashMap<String, Known>>> = Default::default();
        let connector = TunnelConnector {
            endpoints: endpoints.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_PER_NODE)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Proxy { client, endpoints }
    }
}

/// Opens tunnels for the client's pool. The pool keys connections by the URI's authority,
/// which is `<vnode id>:<port>`: one pool per node and port.
#[derive(Clone)]
struct TunnelConnector {
    endpoints: Arc<Mutex<HashMap<String, Known>>>,
}

impl tower_service::Service<Uri> for TunnelConnector {
    type Response = Tunnel;
    type Error = AgentError;
    type Future = Pin<Box<dyn Future<Output = Result<Tunnel, AgentError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AgentError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let id = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(JUPYTER_PORT);
        let endpoint = self
            .endpoints
            .lock()
            .unwrap()
            .get(&id)
            .map(|(e, _, _)| e.clone());
        Box::pin(async move {
            let endpoint = endpoint.ok_or_else(|| AgentError::Unreachable {
                host: "?".into(),
                reason: format!("no endpoint known for vnode {id}"),
            })?;
            let tunnel = agent_client::connect_tcp(&endpoint, port).await?;
            Ok(Tunnel {
                io: TokioIo::new(tunnel.stream),
                read_ahead: tunnel.read,
            })
        })
    }
}

/// A tunnel as a connection of the client's pool: the socket to the agent, and what was
/// read from it along with the agent's answer.
struct Tunnel {
    io: TokioIo<agent_client::AgentStream>,
    read_ahead: Bytes,
}

impl Tunnel {
    /// The connection again, with what is still unread of it (`then`: what the HTTP client
    /// buffered after it), for a relay.
    fn into_buffered(self, then: Bytes) -> Buffered<agent_client::AgentStream> {
        let read = if self.read_ahead.is_empty() {
            then
        } else {
            [self.read_ahead, then].concat().into()
        };
        Buffered {
            stream: self.io.into_inner(),
            read,
        }
    }
}

impl Connection for Tunnel {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            let first = self.read_ahead.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// `/go/<user>/<cluster>/<index>` → the same with its trailing slash (Jupyter's base URL).
fn add_slash(uri: &Uri) -> Response {
    let path = format!("{}/", uri.path());
    let location = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    redirect(StatusCode::PERMANENT_REDIRECT, &location)
}

fn redirect(status: StatusCode, location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (
            status,
            [
                (header::LOCATION, value),
                // A grant in a URL leaks to nobody through a Referer.
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => ApiError::BadRequest("an unusable path".into()).into_response(),
    }
}

/// What the portal answers for workspaces while the site has no `workspace_domain`.
pub fn no_workspace_domain() -> ApiError {
    ApiError::Unavailable(
        "workspaces are off: they are served only from host names of their own, never from the portal's. \
         An administrator sets workspace_domain in /etc/docklet/docklet.toml to a DNS domain whose names \
         (*.<workspace_domain>) lead to the masters, gives the portal's certificate that wildcard name \
         (docklet-admin init adds it to the certificate it makes), and restarts docklet-master"
            .into(),
    )
}

/// `/go/<user>/<cluster>/<index>/…` on the portal's host: the way into a workspace. The
/// signed-in owner gets a one-time grant and is sent with it to their workspace host, which
/// exchanges it for a cookie of its own ([`serve_host`]). Nothing is proxied here: a node's
/// pages never run on the portal's origin.
pub async fn enter_from_portal(master: Arc<Master>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let Some((user, _, _)) = workspace::path_parts(&path) else {
        return ApiError::NotFound("no such workspace".into()).into_response();
    };
    let caller = match Auth::from_request_parts(&mut parts, &master).await {
        Ok(Auth(caller)) => caller,
        Err(ApiError::Unauthenticated(message)) => {
            return if wants_login_page(&parts.method, &parts.headers) {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or(&path);
                redirect(StatusCode::SEE_OTHER, &super::portal::login_url(next))
            } else {
                ApiError::Unauthenticated(message).into_response()
            };
        }
        Err(e) => return e.into_response(),
    };
    // A workspace is its owner's alone, whoever else asks (administrators included), and
    // whether or not it exists.
    if caller.name() != user {
        return ApiError::Forbidden("this workspace belongs to another user".into())
            .into_response();
    }
    let Some(origin) = master.config.workspace_origin(user, &master.host) else {
        return no_workspace_domain().into_response();
    };
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(&path);
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return ApiError::NotFound(format!(
            "workspaces are served from their own host name: {origin}{next}"
        ))
        .into_response();
    }
    match master.issue_workspace_grant(&caller).await {
        Ok(grant) => redirect(
            StatusCode::SEE_OTHER,
            &format!(
                "{origin}{ENTER_PATH}?grant={grant}&next={}",
                super::portal::percent_encode(next)
            ),
        ),
        Err(e) => e.into_response(),
    }
}

/// Where a workspace host takes grants.
pub const ENTER_PATH: &str = "/_docklet/enter";

#[derive(serde::Deserialize)]
struct EnterQuery {
    grant: String,
    next: Option<String>,
}

/// Everything on the workspace host of `label` (a user's, see [`workspace::host_label`]):
/// the exchange of grants at [`ENTER_PATH`] and that user's workspaces under `/go/<user>/`.
/// Nothing of the portal is served here.
pub async fn serve_host(master: Arc<Master>, label: &str, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if path == ENTER_PATH {
        return enter(master, label, request).await;
    }
    let portal = master.config.portal_url_or(&master.host);
    let Some((user, _, _)) = workspace::path_parts(&path) else {
        return if path == "/" {
            redirect(StatusCode::SEE_OTHER, &portal)
        } else {
            ApiError::NotFound(
                "a workspace host serves its user's workspaces (/go/<user>/<cluster>/<node>/) only"
                    .into(),
            )
            .into_response()
        };
    };
    if !workspace::host_label(user).eq_ignore_ascii_case(label) {
        return ApiError::NotFound(
            "no such workspace on this host: every user's workspaces have a host name of their own"
                .into(),
        )
        .into_response();
    }
    if path.matches('/').count() == 4 && !path.ends_with('/') {
        return add_slash(request.uri());
    }
    match proxy(master, request, &portal).await {
        Ok(response) => response,
        Err(response) => response,
    }
}

/// `/_docklet/enter?grant=…&next=…`: a grant the portal issued, exchanged for this host's
/// workspace cookie, then on to `next` (one of this user's workspaces).
async fn enter(master: Arc<Master>, label: &str, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return ApiError::BadRequest(format!("{ENTER_PATH} takes GET only")).into_response();
    }
    let query =
        match axum::extract::Query::<EnterQuery>::from_request_parts(&mut parts, &master).await {
            Ok(axum::extract::Query(query)) => query,
            Err(_) => {
                return ApiError::BadRequest(format!(
                    "{ENTER_PATH} needs ?grant=: open the workspace from the portal"
                ))
                .into_response();
            }
        };
    let Ok(super::portal::Peer(source)) =
        super::portal::Peer::from_request_parts(&mut parts, &master).await;
    let (token, record) = match master.enter_workspace(&query.grant, label, &source).await {
        Ok(entered) => entered,
        Err(e) => return e.into_response(),
    };
    tracing::info!(
        user = record.user.as_str(),
        "workspace host entered from {source}"
    );
    let portal = master.config.portal_url_or(&master.host);
    let landing = workspace::landing_path(query.next.as_deref(), &record.user)
        .map(str::to_owned)
        .unwrap_or(portal);
    let max_age = record
        .expires_at
        .map_or(master.config.session_lifetime, |at| {
            at.saturating_sub(super::now_secs())
        });
    let mut response = redirect(StatusCode::SEE_OTHER, &landing);
    if let Ok(cookie) = HeaderValue::from_str(&session::workspace_cookie(&token, max_age)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The caller of a request on a workspace host: a bearer token (scripts), or this host's
/// workspace cookie (browsers), which is refused for a request another origin's page made.
async fn workspace_caller(
    master: &Arc<Master>,
    parts: &Parts,
) -> Result<super::actions::Caller, ApiError> {
    if let Some(token) = session::bearer(&parts.headers) {
        return master.authenticate_login(token).await;
    }
    let Some(token) = session::cookie(&parts.headers, session::WORKSPACE_COOKIE) else {
        return Err(ApiError::Unauthenticated(
            "open the workspace from the portal, or send Authorization: Bearer <token>".into(),
        ));
    };
    let changes = session::needs_proof(&parts.method, &parts.headers);
    if session::refused_from_elsewhere(&parts.method, &parts.headers)
        || (changes && !session::same_origin(&parts.headers))
    {
        return Err(ApiError::Forbidden(
            "a browser request from another site: send it from the workspace's own pages".into(),
        ));
    }
    let caller = master.authenticate(&token).await?;
    if caller.token_kind != Some(TokenKind::Workspace) {
        return Err(ApiError::Unauthenticated(
            "not a workspace cookie: open the workspace from the portal".into(),
        ));
    }
    Ok(caller)
}

/// Who asks for the workspace at `path`, which must be theirs, and which cluster and node
/// it is. Someone not signed in (or no longer) goes back through the portal's way in.
async fn workspace_caller_for(
    master: &Arc<Master>,
    parts: &Parts,
    path: &str,
    portal: &str,
) -> Result<(super::actions::Caller, String, u32), Response> {
    let (user, cluster, index) = workspace::path_parts(path)
        .ok_or_else(|| ApiError::NotFound("no such workspace".into()).into_response())?;
    let caller = match workspace_caller(master, parts).await {
        Ok(caller) => caller,
        Err(ApiError::Unauthenticated(message)) => {
            // Back through the portal's way in, which grants again (or asks to log in).
            return Err(if wants_login_page(&parts.method, &parts.headers) {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or(path);
                redirect(
                    StatusCode::SEE_OTHER,
                    &format!("{}{next}", portal.trim_end_matches('/')),
                )
            } else {
                ApiError::Unauthenticated(message).into_response()
            });
        }
        Err(e) => return Err(e.into_response()),
    };
    if caller.name() != user {
        return Err(
            ApiError::Forbidden("this workspace belongs to another user".into()).into_response(),
        );
    }
    let index: u32 = index.parse().map_err(|_| {
        ApiError::NotFound(format!("cluster {cluster} has no node {index:?}")).into_response()
    })?;
    Ok((caller, cluster.to_owned(), index))
}

async fn proxy(master: Arc<Master>, request: Request, portal: &str) -> Result<Response, Response> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let (caller, cluster, index) = workspace_caller_for(&master, &parts, &path, portal).await?;
    let (endpoint, token) = master
        .workspace
        .endpoint(&master, &caller, &cluster, index)
        .await
        .map_err(IntoResponse::into_response)?;

    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string());
    let upgrade = is_upgrade(&parts.headers);
    let mut headers = parts.headers.clone();
    // The portal's port speaks nothing but HTTPS.
    let proto = "https";
    forwarded_request_headers(&mut headers, &token, peer.as_deref(), proto, upgrade);
    let target: Uri = format!(
        "http://{}:{JUPYTER_PORT}{}",
        endpoint.vnode_id,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    )
    .parse()
    .map_err(|_| ApiError::BadRequest("an unusable path".into()).into_response())?;
    let mut outgoing = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .version(hyper::Version::HTTP_11)
        .body(if upgrade { Body::empty() } else { body })
        .map_err(|e| ApiError::Internal(e.to_string()).into_response())?;
    *outgoing.headers_mut() = headers;
    // The browser's side of an upgrade, taken before the request is consumed.
    let browser_upgrade = upgrade.then(|| {
        let mut request = Request::from_parts(parts, Body::empty());
        hyper::upgrade::on(&mut request)
    });

    let mut response = master
        .workspace
        .client
        .request(outgoing)
        .await
        .map_err(|e| unreachable_response(&e, index))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(browser_upgrade) = browser_upgrade
    {
        let node_upgrade = hyper::upgrade::on(&mut response);
        // The WebSocket ends with the caller's token (a revocation, the session's end).
        tokio::spawn(splice_websocket(
            browser_upgrade,
            node_upgrade,
            master.live.open(&caller),
        ));
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    filter_response_headers(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Joins the browser's and the node's sides of an upgraded connection until either ends or
/// the caller's token does.
async fn splice_websocket(
    browser_upgrade: hyper::upgrade::OnUpgrade,
    node_upgrade: hyper::upgrade::OnUpgrade,
    mut live: super::live::Live,
) {
    let (browser, node) = match tokio::try_join!(browser_upgrade, node_upgrade) {
        Ok(both) => both,
        Err(e) => return debug!("workspace upgrade: {e}"),
    };
    let node = node
        .downcast::<Tunnel>()
        .map(|parts| parts.io.into_buffered(parts.read_buf));
    let Ok(mut node) = node else {
        return warn!("a workspace upgrade that is not over the agent's tunnel");
    };
    let mut browser = TokioIo::new(browser);
    if !node.read.is_empty()
        && let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut browser, &node.read).await
    {
        return debug!("workspace WebSocket: {e}");
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut browser, &mut node.stream) => {}
        _ = live.ended() => debug!("workspace WebSocket ended: its token was revoked or expired"),
    }
}

/// The failure of a request to the node, for people: what did not answer.
fn unreachable_response(e: &hyper_util::client::legacy::Error, index: u32) -> Response {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(agent) = error.downcast_ref::<AgentError>() {
            let api = match agent.status() {
                Some(502) => ApiError::BadGateway(format!(
                    "node {index}'s workspace does not answer (nothing listens on port {JUPYTER_PORT} in it)"
                )),
                Some(404 | 409) => ApiError::Conflict(format!("node {index} is not running")),
                _ => ApiError::Unavailable(format!("node {index} cannot be reached: {agent}")),
            };
            return api.into_response();
        }
        source = error.source();
    }
    ApiError::BadGateway(format!("node {index}'s workspace: {e}")).into_response()
}

impl Proxy {
    /// The endpoint of the caller's node and its Jupyter's token, looked up at most every
    /// [`ENDPOINT_TTL`]; the connector finds the endpoint here when the pool needs a tunnel.
    async fn endpoint(
        &self,
        master: &Master,
        caller: &super::actions::Caller,
        cluster: &str,
        index: u32,
    ) -> Result<(NodeEndpoint, String), ApiError> {
        let id = crate::model::vcluster::node_id(caller.name(), cluster, index);
        let now = Instant::now();
        if let Some((endpoint, token, at)) = self.endpoints.lock().unwrap().get(&id)
            && now.duration_since(*at) < ENDPOINT_TTL
        {
            return Ok((endpoint.clone(), token.clone()));
        }
        let endpoint = master
            .own_node_endpoint(caller, None, cluster, index)
            .await?;
        let token = agent_client::workspace_token(&endpoint).await?;
        let mut endpoints = self.endpoints.lock().unwrap();
        // Forget nodes nobody asked for in a while (deleted clusters).
        endpoints.retain(|_, (_, _, at)| now.duration_since(*at) < ENDPOINT_TTL * 30);
        endpoints.insert(id, (endpoint.clone(), token.clone(), now));
        Ok((endpoint, token))
    }
}

/// A browser navigating (not a script): shown the login page instead of a 401.
fn wants_login_page(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::session::tests::headers;

    #[test]
    fn without_a_workspace_domain_workspaces_are_refused_saying_what_to_configure() {
        let refusal = no_workspace_domain();
        assert_eq!(refusal.status(), 503);
        let message = refusal.to_string();
        for needed in [
            "workspace_domain",
            "/etc/docklet/docklet.toml",
            "*.<workspace_domain>",
        ] {
            assert!(message.contains(needed), "{message}");
        }
    }

    #[test]
    fn workspace_paths_and_login_redirects() {
        assert_eq!(
            workspace::path_parts("/go/alice/c1/0/"),
            Some(("alice", "c1", "0"))
        );
        assert_eq!(
            crate::master::portal::login_url("/go/a/c/0/tree?x=1&y=é"),
            "/login?next=/go/a/c/0/tree%3Fx%3D1%26y%3D%C3%A9"
        );
        let html = headers(&[("accept", "text/html,application/xhtml+xml")]);
        assert!(wants_login_page(&Method::GET, &html));
        assert!(!wants_login_page(&Method::POST, &html));
        assert!(!wants_login_page(
            &Method::GET,
            &headers(&[("accept", "application/json")])
        ));
    }
}
