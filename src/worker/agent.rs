//! The worker's agent endpoint: what masters use to reach inside this host's vnodes — a
//! command with its output (`POST /agent/v1/vnodes/{id}/exec`), an interactive terminal
//! over WebSocket (`GET /agent/v1/vnodes/{id}/pty`) and a TCP tunnel to a port inside the
//! vnode (`GET /agent/v1/vnodes/{id}/tcp/{port}`, upgraded to `docklet-tcp`). Every request
//! carries the cluster's agent token (`Authorization: Bearer`, from the internal credentials
//! file); nothing else gets in.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::Worker;
use super::exec::{self, ExecRequest};
use super::tunnel;
use super::vnodes::{Runtime, VNodeError};

/// The `Upgrade` protocol of a tunnel (shared with the master's client).
const TCP_UPGRADE: &str = crate::master::agent_client::TCP_UPGRADE;
/// Each direction's copy buffer in a tunnel.
const TUNNEL_BUFFER: usize = 64 << 10;

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
}

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
            VNodeError::Refused(m) if m.starts_with("no vnode") => StatusCode::NOT_FOUND,
            VNodeError::Refused(m) if m.contains("not running") => StatusCode::CONFLICT,
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
        .route("/agent/v1/vnodes/{id}/exec", post(exec_handler))
        .route("/agent/v1/vnodes/{id}/pty", get(pty_handler))
        .route("/agent/v1/vnodes/{id}/tcp/{port}", get(tcp_handler))
        .layer(axum::middleware::from_fn_with_state(
            worker.clone(),
            require_token,
        ))
        .with_state(worker)
}

/// Serves the agent on `0.0.0.0:agent_port` until the worker stops.
pub async fn serve(worker: Shared) -> std::io::Result<()> {
    let address = std::net::SocketAddr::from(([0, 0, 0, 0], worker.config.agent_port));
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!("agent endpoint on {address}");
    axum::serve(listener, router(worker)).await
}

async fn require_token(State(worker): State<Shared>, request: Request, next: Next) -> Response {
    let expected = match crate::daemon::read_credentials(&worker.config) {
        Ok(creds) if !creds.agent_token.is_empty() => creds.agent_token,
        _ => {
            return AgentError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no agent token yet: run `docklet-admin init`".into(),
            )
            .into_response();
        }
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !crate::model::account::same_secret(presented, &expected) {
        warn!(path = %request.uri().path(), "agent request without a valid token refused");
        return AgentError(
            StatusCode::UNAUTHORIZED,
            "a valid agent token is required".into(),
        )
        .into_response();
    }
    next.run(request).await
}

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
        runtime.systemd(),
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

async fn pty_handler(
    State(worker): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<PtyQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, AgentError> {
    let runtime = runtime(&worker)?;
    let request = ExecRequest {
        id,
        user: query.user,
        argv: ["bash", "-l"].map(String::from).to_vec(),
        term: "xterm-256color".into(),
        tty: None,
    };
    exec::check_request(&request)?;
    if runtime.leader(&request.id).await.is_none() {
        return Err(AgentError(
            StatusCode::CONFLICT,
            format!("vnode {} is not running", request.id),
        ));
    }
    let size = nix::pty::Winsize {
        ws_row: query.rows.max(1),
        ws_col: query.cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (master, slave, path) = open_pty(&size)
        .map_err(|e| AgentError(StatusCode::INTERNAL_SERVER_ERROR, format!("pty: {e}")))?;
    let request = ExecRequest {
        tty: Some(path),
        ..request
    };
    Ok(upgrade.on_upgrade(move |socket| async move {
        if let Err(e) = terminal(socket, runtime, request, master, slave).await {
            warn!("terminal session: {e}");
        }
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
    let leader = runtime
        .leader(&id)
        .await
        .ok_or_else(|| AgentError(StatusCode::CONFLICT, format!("vnode {id} is not running")))?;
    let mut stream = tunnel::connect(leader, port, spec.address)
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
        match upgrade.await {
            Ok(upgraded) => {
                let mut upgraded = hyper_util::rt::TokioIo::new(upgraded);
                // 64 KiB buffers: bulk transfers (downloads from a workspace) go at
                // the links' speed instead of in 8 KiB steps.
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut upgraded,
                    &mut stream,
                    TUNNEL_BUFFER,
                    TUNNEL_BUFFER,
                )
                .await;
            }
            Err(e) => warn!(vnode = %id, port, "tunnel upgrade failed: {e}"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, TCP_UPGRADE)
        .body(axum::body::Body::empty())
        .expect("a static response"))
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, nix::pty::Winsize);

/// A pseudo-terminal pair and the slave's path. The slave is nobody's controlling terminal
/// yet (openpty(3) would make it the worker's own, the worker being a session leader): the
/// session unit takes it.
fn open_pty(size: &nix::pty::Winsize) -> nix::Result<(OwnedFd, OwnedFd, String)> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    unsafe { set_window_size(slave.as_raw_fd(), size) }?;
    // SAFETY: posix_openpt returned an open descriptor we now own.
    let master = unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
            master,
        ))
    };
    Ok((master, slave, name))
}

/// Pumps bytes between the WebSocket and the terminal until either side ends; the shell's
/// exit status goes out as a last text frame `{"exit": N}`.
async fn terminal(
    mut socket: WebSocket,
    runtime: Arc<Runtime>,
    request: ExecRequest,
    master: OwnedFd,
    slave: OwnedFd,
) -> std::io::Result<()> {
    let (stdin, stdout, stderr) = (slave.try_clone()?, slave.try_clone()?, slave.try_clone()?);
    // Held until the session ends: without an open slave the master reads EIO (hang-up)
    // before the session has opened its terminal.
    let slave_held = slave;
    let mut session = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            exec::run(&runtime, runtime.systemd(), &request, stdin, stdout, stderr).await
        })
    };
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: the file owns the fd and lives inside the AsyncFd, so it outlives the
    // registration.
    let master = unsafe { AsyncFd::register(std::fs::File::from(master)) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = vec![0u8; 16384];
    let mut finished = None;
    loop {
        tokio::select! {
            result = &mut session => {
                finished = Some(result);
                break;
            }
            readable = master.readable() => {
                let mut guard = readable?;
                match guard.try_io(|inner| inner.get_ref().read(&mut buf)) {
                    Ok(Ok(0)) | Ok(Err(_)) => break, // EIO: the shell's side closed
                    Ok(Ok(n)) => {
                        if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                            break;
                        }
                    }
                    Err(_would_block) => continue,
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => write_all(&master, &data).await?,
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<Control>(&text) {
                        Ok(Control::Resize { cols, rows }) => {
                            let size = nix::pty::Winsize { ws_row: rows.max(1), ws_col: cols.max(1), ws_xpixel: 0, ws_ypixel: 0 };
                            // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
                            let _ = unsafe { set_window_size(master.get_ref().as_raw_fd(), &size) };
                        }
                        Err(_) => write_all(&master, text.as_bytes()).await?,
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let result = match finished {
        Some(result) => {
            // What the shell wrote last is still in the terminal.
            while let Ok(n) = master.get_ref().read(&mut buf) {
                if n == 0
                    || socket
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            result
        }
        None => {
            // Closing the terminal hangs the shell up.
            drop(master);
            drop(slave_held);
            session.await
        }
    };
    let status = match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            let _ = socket
                .send(Message::Text(
                    serde_json::json!({ "error": e.to_string() })
                        .to_string()
                        .into(),
                ))
                .await;
            -1
        }
        Err(_) => -1,
    };
    let _ = socket
        .send(Message::Text(
            serde_json::json!({ "exit": status }).to_string().into(),
        ))
        .await;
    let _ = socket.send(Message::Close(None)).await;
    Ok(())
}

async fn write_all(master: &AsyncFd<std::fs::File>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|inner| inner.get_ref().write(data)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
