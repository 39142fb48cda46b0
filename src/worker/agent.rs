//! The worker's agent endpoint: what masters use to reach inside this host's vnodes — a
//! command with its output (`POST /agent/v1/vnodes/{id}/exec`), an interactive terminal
//! over WebSocket (`GET /agent/v1/vnodes/{id}/pty`), a TCP tunnel to a port inside the
//! vnode (`GET /agent/v1/vnodes/{id}/tcp/{port}`, upgraded to `docklet-tcp`) and a node's
//! workspace token. It speaks TLS 1.3 only, with this host's worker certificate, and takes
//! connections from masters alone: a client must present a certificate of the site CA
//! whose fingerprint etcd lists as a master's ([`crate::pki`]); any other connection is
//! closed before a byte of HTTP is read.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto::upgrade::downcast;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::Worker;
use super::exec::{self, ExecRequest};
use super::terminals::{self, Output, TerminalError};
use super::tunnel;
use super::vnode::{Runtime, VNodeError};
use crate::daemon::TCP_UPGRADE;
use crate::pki::{self, PKI_DIR, Role};
use crate::sys::streams::{self, Buffered};

/// A master's connection to the agent.
type AgentTls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Output beyond this many bytes per stream is cut (and says so).
const OUTPUT_LIMIT: usize = 16 << 20;

#[derive(Debug, Deserialize)]
pub struct ExecBody {
    pub argv: Vec<String>,
    #[serde(default = "root")]
    pub user: String,
    /// Given to the command on its standard input, then end of file.
    #[serde(default)]
    pub stdin: String,
}

fn root() -> String {
    "root".into()
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Deserialize)]
pub struct PtyQuery {
    #[serde(default = "root")]
    pub user: String,
    #[serde(default = "default_cols")]
    pub cols: u16,
    #[serde(default = "default_rows")]
    pub rows: u16,
    /// Reattach to this session when it still runs.
    #[serde(default)]
    pub session: Option<String>,
}

/// The close code telling a connection that another one took its session over.
const TAKEN_OVER: u16 = 4001;

fn default_cols() -> u16 {
    80
}
fn default_rows() -> u16 {
    24
}

/// A terminal client's control message (text frames); keystrokes come as binary frames.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Control {
    Resize { cols: u16, rows: u16 },
}

struct AgentError(StatusCode, String);

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<VNodeError> for AgentError {
    fn from(e: VNodeError) -> Self {
        let status = match &e {
            VNodeError::Spec(_) => StatusCode::BAD_REQUEST,
            VNodeError::NoSuchVnode(_) => StatusCode::NOT_FOUND,
            VNodeError::NotRunning { .. } => StatusCode::CONFLICT,
            VNodeError::Refused(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        AgentError(status, e.to_string())
    }
}

type Shared = Arc<Worker>;

fn runtime(worker: &Worker) -> Result<Arc<Runtime>, AgentError> {
    worker.runtime.get().cloned().ok_or_else(|| {
        AgentError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the worker is still connecting to systemd".into(),
        )
    })
}

pub fn router(worker: Shared) -> Router {
    Router::new()
        .route("/agent/v1/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics_handler))
        .route("/agent/v1/samples", get(samples_handler))
        .route("/agent/v1/vnodes/{id}/exec", post(exec_handler))
        .route("/agent/v1/vnodes/{id}/pty", get(pty_handler))
        .route("/agent/v1/vnodes/{id}/tcp/{port}", get(tcp_handler))
        .route(
            "/agent/v1/vnodes/{id}/workspace-token",
            get(workspace_token_handler),
        )
        .route("/agent/v1/users/{user}/data", get(user_data_handler))
        .with_state(worker)
}

#[derive(serde::Deserialize)]
struct DataQuery {
    /// Relative to the user's `~/nfs`.
    path: String,
    #[serde(default)]
    offset: u64,
    limit: usize,
}

/// Bytes of a file in a user's `~/nfs` (a batch task's output), for the masters, which
/// cannot read users' directories themselves: opened beneath it without following links,
/// non-blocking, regular files only. 404 when it does not exist (yet).
async fn user_data_handler(
    State(worker): State<Shared>,
    Path(user): Path<String>,
    axum::extract::Query(q): axum::extract::Query<DataQuery>,
) -> Result<Vec<u8>, AgentError> {
    crate::model::vnode::validate_user_name(&user)
        .map_err(|e| AgentError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let root = crate::worker::paths::user_data_dir(&worker.config, &user);
    let path = root.join(q.path.trim_start_matches('/'));
    let limit = q.limit.min(16 << 20);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let refuse = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => AgentError(StatusCode::NOT_FOUND, e.to_string()),
            _ => AgentError(StatusCode::FORBIDDEN, e.to_string()),
        };
        let mut file =
            crate::sys::beneath::open_under(&root, &path, crate::sys::beneath::Access::Read)
                .map_err(refuse)?;
        let meta = file.metadata().map_err(refuse)?;
        if !meta.is_file() {
            return Err(AgentError(
                StatusCode::FORBIDDEN,
                "not a regular file".into(),
            ));
        }
        file.seek(SeekFrom::Start(q.offset)).map_err(refuse)?;
        let mut buffer =
            Vec::with_capacity(limit.min(meta.len().saturating_sub(q.offset) as usize));
        file.take(limit as u64)
            .read_to_end(&mut buffer)
            .map_err(refuse)?;
        Ok(buffer)
    })
    .await
    .map_err(|e| AgentError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// The token the node's Jupyter takes (random per node, see `vnodes`), for the masters'
/// workspace proxy.
async fn workspace_token_handler(
    State(worker): State<Shared>,
    Path(id): Path<String>,
) -> Result<String, AgentError> {
    let runtime = runtime(&worker)?;
    runtime
        .spec(&id)
        .ok_or_else(|| AgentError(StatusCode::NOT_FOUND, format!("no vnode {id} on this host")))?;
    runtime.workspace_token(&id).map_err(AgentError::from)
}

/// This host's and its vnodes' last samples, in the Prometheus text format.
async fn metrics_handler(State(worker): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::model::metrics::exposition(&[worker
            .metrics
            .samples(&worker.host, worker.config.metrics_interval)]),
    )
        .into_response()
}

/// This host's and its vnodes' last samples as JSON, for the masters' history.
async fn samples_handler(State(worker): State<Shared>) -> Response {
    axum::Json(
        worker
            .metrics
            .samples(&worker.host, worker.config.metrics_interval),
    )
    .into_response()
}

/// The fingerprints of the certificates etcd lists as masters', read again every
/// [`IDENTITIES_EVERY`]: a removed host's master is refused within that.
#[derive(Default)]
pub struct MasterCertificates(std::sync::RwLock<HashSet<String>>);

/// How often the agent reads the masters' certificates from etcd.
pub const IDENTITIES_EVERY: Duration = Duration::from_secs(2);

impl MasterCertificates {
    fn allows(&self, fingerprint: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fingerprint)
    }

    /// Follows `identities/` in etcd for ever.
    pub async fn follow(self: Arc<Self>, worker: Shared) {
        let mut backoff = crate::daemon::Backoff::default();
        loop {
            let store = worker.connect(&mut backoff).await;
            loop {
                match store.host_identities().await {
                    Ok(identities) => {
                        let masters: HashSet<String> = identities
                            .iter()
                            .flat_map(|i| i.fingerprints(Role::Master))
                            .map(str::to_owned)
                            .collect();
                        *self.0.write().unwrap_or_else(|e| e.into_inner()) = masters;
                    }
                    // Keep the last list: etcd being away must not lock masters out.
                    Err(e) => {
                        warn!("cannot read the masters' certificates: {e}");
                        break;
                    }
                }
                tokio::time::sleep(IDENTITIES_EVERY).await;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Serves the agent on `0.0.0.0:agent_port` until the worker stops.
pub async fn serve(worker: Shared) -> std::io::Result<()> {
    let address = std::net::SocketAddr::from(([0, 0, 0, 0], worker.config.agent_port));
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!("agent endpoint on {address} (mutual TLS)");
    let identity = Arc::new(pki::agent_server_files(std::path::Path::new(PKI_DIR)));
    let masters = Arc::new(MasterCertificates::default());
    tokio::spawn(masters.clone().follow(worker.clone()));
    let router = router(worker);
    let mut missing_identity_said = false;
    loop {
        let (tcp, peer) = listener.accept().await?;
        let config = match identity.current() {
            Ok(config) => {
                missing_identity_said = false;
                config
            }
            Err(problem) => {
                if !std::mem::replace(&mut missing_identity_said, true) {
                    warn!("the agent refuses every connection: {problem}");
                }
                continue;
            }
        };
        let (router, masters) = (router.clone(), masters.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let accepted = tokio::time::timeout(
                HANDSHAKE_LIMIT,
                tokio_rustls::TlsAcceptor::from(config).accept(tcp),
            )
            .await;
            let tls = match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return warn!(%peer, "agent: TLS handshake refused: {e}"),
                Err(_) => return warn!(%peer, "agent: no TLS handshake within {HANDSHAKE_LIMIT:?}"),
            };
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| pki::fingerprint(cert));
            match fingerprint {
                Some(f) if masters.allows(&f) => {}
                _ => {
                    return warn!(%peer, "agent: a certificate that is no master's in etcd (a removed host's?) refused");
                }
            }
            let service = hyper::service::service_fn(move |request| {
                tower_service::Service::call(&mut router.clone(), request)
            });
            let served =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            if let Err(e) = served {
                tracing::debug!(%peer, "agent connection: {e}");
            }
        });
    }
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| AgentError(StatusCode::INTERNAL_SERVER_ERROR, format!("pipe: {e}")))
}

/// Reads a pipe to its end on a blocking thread, keeping at most [`OUTPUT_LIMIT`] bytes.
fn drain(fd: OwnedFd) -> tokio::task::JoinHandle<String> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::from(fd);
        let mut kept = Vec::new();
        let mut buf = [0u8; 65536];
        let mut cut = false;
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_LIMIT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
            cut |= n > room;
        }
        let mut text = String::from_utf8_lossy(&kept).into_owned();
        if cut {
            text.push_str("\n[output cut at 16 MiB]\n");
        }
        text
    })
}

async fn exec_handler(
    State(worker): State<Shared>,
    Path(id): Path<String>,
    Json(body): Json<ExecBody>,
) -> Result<Json<ExecResult>, AgentError> {
    let runtime = runtime(&worker)?;
    let request = ExecRequest {
        id,
        user: body.user,
        argv: body.argv,
        term: "dumb".into(),
        tty: None,
    };
    exec::check_request(&request)?;
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let input = body.stdin.into_bytes();
    let feeder = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::from(stdin_write);
        let _ = file.write_all(&input);
    });
    let stdout = drain(stdout_read);
    let stderr = drain(stderr_read);
    let status = exec::run(
        &runtime,
        runtime.units(),
        &request,
        stdin_read,
        stdout_write,
        stderr_write,
    )
    .await;
    let _ = feeder.await;
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    Ok(Json(ExecResult {
        exit_code: status?,
        stdout,
        stderr,
    }))
}

/// Terminal WebSockets open now (see [`crate::daemon::OpenTerminals`]).
static TERMINAL_SOCKETS: crate::daemon::OpenTerminals = crate::daemon::OpenTerminals::new();

/// A terminal: a new shell, or with `?session=<id>` the live one of that id (its missed
/// output replayed first). The first text frame says which: `{"session": id, "new": bool}`.
async fn pty_handler(
    State(worker): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<PtyQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AgentError> {
    let runtime = runtime(&worker)?;
    crate::model::vnode::validate_user_name(&query.user)
        .map_err(|e| AgentError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if runtime.spec(&id).is_none() {
        return Err(AgentError(
            StatusCode::NOT_FOUND,
            format!("no vnode {id} on this host"),
        ));
    }
    if runtime.leader(&id).await.is_none() {
        return Err(AgentError(
            StatusCode::CONFLICT,
            format!("vnode {id} is not running"),
        ));
    }
    let registry = worker.terminals.clone();
    let reattached = query
        .session
        .as_deref()
        .and_then(|session| registry.reattach(session, &id, &query.user));
    let attachment = match reattached {
        Some(attachment) => {
            attachment.session.resize(query.cols, query.rows).await;
            attachment
        }
        None => registry
            .open(
                runtime,
                terminals::Spec {
                    vnode: id,
                    user: query.user,
                    cols: query.cols,
                    rows: query.rows,
                },
            )
            .map_err(|e| match e {
                TerminalError::TooMany(_) => {
                    AgentError(StatusCode::TOO_MANY_REQUESTS, e.to_string())
                }
                _ => AgentError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            })?,
    };
    Ok(upgrade
        .read_buffer_size(crate::daemon::TERMINAL_WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _open = TERMINAL_SOCKETS.open();
            terminal(socket, attachment).await
        }))
}

/// Answers `101 Switching Protocols` and then carries the bytes of a TCP connection made
/// inside the vnode to `127.0.0.1:<port>` (or the vnode's address, when loopback refuses).
/// The connection is made before the answer, so failures have a status: 404 no such vnode
/// here, 409 not running, 502 nothing listens on that port inside.
async fn tcp_handler(
    State(worker): State<Shared>,
    Path((id, port)): Path<(String, u16)>,
    mut request: Request,
) -> Result<Response, AgentError> {
    let upgrade_asked = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(TCP_UPGRADE));
    if !upgrade_asked {
        return Err(AgentError(
            StatusCode::UPGRADE_REQUIRED,
            format!("a tunnel needs `Connection: upgrade` and `Upgrade: {TCP_UPGRADE}`"),
        ));
    }
    let runtime = runtime(&worker)?;
    let spec = runtime
        .spec(&id)
        .ok_or_else(|| AgentError(StatusCode::NOT_FOUND, format!("no vnode {id} on this host")))?;
    let not_running = || AgentError(StatusCode::CONFLICT, format!("vnode {id} is not running"));
    let netns = runtime
        .leader(&id)
        .await
        .ok_or_else(not_running)?
        .namespace("net")
        .map_err(|_| not_running())?;
    let stream = tunnel::connect(netns, port, spec.address)
        .await
        .map_err(|e| {
            let status = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => StatusCode::BAD_GATEWAY,
                std::io::ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
                // The vnode stopped meanwhile (its PID 1 and namespace are gone).
                std::io::ErrorKind::NotFound => StatusCode::CONFLICT,
                _ => StatusCode::BAD_GATEWAY,
            };
            AgentError(
                status,
                format!("cannot connect to port {port} inside vnode {id}: {e}"),
            )
        })?;
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return warn!(vnode = %id, port, "tunnel upgrade failed: {e}"),
        };
        // The master's TLS connection itself, and what was read beyond the request.
        match downcast::<TokioIo<AgentTls>>(upgraded) {
            Ok(parts) => {
                let master = Buffered {
                    stream: parts.io.into_inner(),
                    read: parts.read_buf,
                };
                let _ = streams::relay(master, Buffered::new(stream)).await;
            }
            Err(_) => warn!(vnode = %id, port, "a tunnel that is not the master's TLS connection"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, TCP_UPGRADE)
        .body(axum::body::Body::empty())
        .expect("a static response"))
}

/// Whether a client's close ends its session: an explicit close (code 1000, or none) does;
/// a page going away (1001) or a lost connection only detaches it.
fn close_ends_session(frame: Option<&axum::extract::ws::CloseFrame>) -> bool {
    frame.is_none_or(|f| f.code == axum::extract::ws::close_code::NORMAL)
}

/// Serves one connection of a session: the session frame, the replay, then live bytes both
/// ways until the shell exits (`{"exit": N}`) or the connection goes.
async fn terminal(mut socket: WebSocket, mut attachment: terminals::Attachment) {
    let session = attachment.session.clone();
    let hello = serde_json::json!({ "session": session.id, "new": attachment.new });
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let replay = std::mem::take(&mut attachment.scrollback);
    for chunk in replay.chunks(64 << 10) {
        if socket
            .send(Message::Binary(chunk.to_vec().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    drop(replay);
    loop {
        tokio::select! {
            output = attachment.output.recv() => match output {
                Some(Output::Data(data)) => {
                    if socket.send(Message::Binary(data)).await.is_err() {
                        // The peer may have closed on purpose just before: its close frame
                        // can still be waiting to be read.
                        linger(&mut socket, &session).await;
                        return;
                    }
                }
                Some(Output::Exit(code)) => {
                    let exit = serde_json::json!({ "exit": code }).to_string();
                    let _ = socket.send(Message::Text(exit.into())).await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                Some(Output::Failed(message)) => {
                    let error = serde_json::json!({ "error": message }).to_string();
                    let _ = socket.send(Message::Text(error.into())).await;
                    let exit = serde_json::json!({ "exit": -1 }).to_string();
                    let _ = socket.send(Message::Text(exit.into())).await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                None => {
                    // Another connection took the session over (or this one stalled).
                    let _ = socket
                        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                            code: TAKEN_OVER,
                            reason: "another connection took this terminal over".into(),
                        })))
                        .await;
                    return;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => session.input(data).await,
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                    Ok(Control::Resize { cols, rows }) => session.resize(cols, rows).await,
                    Err(_) => session.input(hyper::body::Bytes::copy_from_slice(text.as_bytes())).await,
                },
                Some(Ok(Message::Close(frame))) => {
                    if close_ends_session(frame.as_ref()) {
                        session.end().await;
                    }
                    return;
                }
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Reads what a failing connection still holds, briefly, for an explicit close.
async fn linger(socket: &mut WebSocket, session: &terminals::Session) {
    let pending = async {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Close(frame) = message {
                return close_ends_session(frame.as_ref());
            }
        }
        false
    };
    if let Ok(true) = tokio::time::timeout(std::time::Duration::from_millis(500), pending).await {
        session.end().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnode_errors_answer_by_their_kind_not_their_text() {
        let status = |e: VNodeError| AgentError::from(e).0;
        assert_eq!(
            status(VNodeError::NoSuchVnode("a-c-0".into())),
            StatusCode::NOT_FOUND
        );
        let stopped = VNodeError::NotRunning {
            id: "a-c-0".into(),
            detail: String::new(),
        };
        assert_eq!(stopped.to_string(), "vnode a-c-0 is not running");
        assert_eq!(status(stopped), StatusCode::CONFLICT);
        // A refusal whose words look like another kind is still a refusal.
        let refused = VNodeError::Refused("no vnode here is not running".into());
        assert_eq!(status(refused), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn only_an_explicit_close_ends_a_terminal_session() {
        use axum::extract::ws::CloseFrame;
        let frame = |code| CloseFrame {
            code,
            reason: "".into(),
        };
        assert!(close_ends_session(None));
        assert!(close_ends_session(Some(&frame(1000))));
        assert!(!close_ends_session(Some(&frame(1001))));
        assert!(!close_ends_session(Some(&frame(1006))));
    }

    #[test]
    fn terminal_control_messages_parse() {
        let c: Control = serde_json::from_str(r#"{"resize":{"cols":120,"rows":40}}"#).unwrap();
        assert!(matches!(
            c,
            Control::Resize {
                cols: 120,
                rows: 40
            }
        ));
    }
}
