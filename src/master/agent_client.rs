//! The master's client for the workers' agent endpoints: TLS 1.3 to each host's agent on
//! the hosts' network, the master presenting its own certificate ([`crate::pki`]) and
//! checking the agent's (signed by the site CA, for that host's worker name). Commands, a
//! node's workspace token, and byte tunnels to a TCP port inside a vnode (terminals, the
//! workspace proxy and port mappings ride on them).

use std::sync::OnceLock;
use std::time::Duration;

use crate::pki::{self, IdentityFiles, PKI_DIR, Role};
use crate::sys::streams::Buffered;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// Longest a command through the agent may take before the master gives up waiting.
pub const EXEC_LIMIT: Duration = Duration::from_secs(600);

/// Longest the agent may take to answer a tunnel request (it connects inside the vnode
/// first, which a socket-activated service answers at once).
pub const CONNECT_LIMIT: Duration = Duration::from_secs(15);

pub use crate::daemon::TCP_UPGRADE;

/// Where a vnode is reached: its host's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The host running the vnode.
    pub host: String,
    /// `ip:port` of that host's worker agent.
    pub agent: String,
    pub vnode_id: String,
}

/// A TLS connection to an agent.
pub type AgentStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// This master's identity for dialling agents, read again when its files change.
fn identity() -> &'static IdentityFiles<rustls::ClientConfig> {
    static IDENTITY: OnceLock<IdentityFiles<rustls::ClientConfig>> = OnceLock::new();
    IDENTITY.get_or_init(|| pki::agent_client_files(std::path::Path::new(PKI_DIR)))
}

/// A TLS connection to `host`'s agent at `address` (`ip:port`).
pub async fn dial(host: &str, address: &str) -> Result<AgentStream, AgentError> {
    let unreachable = |reason: String| AgentError::Unreachable {
        host: host.to_owned(),
        reason,
    };
    let config = identity()
        .current()
        .map_err(|problem| unreachable(format!("this master has no identity: {problem}")))?;
    let name = ServerName::try_from(Role::Worker.dns_name(host))
        .map_err(|_| unreachable(format!("{host:?} is not a host name")))?;
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| unreachable(format!("{address}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable(format!("TLS with {address}: {e}")))
}

/// A failure reaching through an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No connection to the agent at all (the host or its worker is down).
    #[error("cannot reach the agent on {host}: {reason}")]
    Unreachable { host: String, reason: String },
    /// The agent answered with an error: 404 no such vnode there, 409 not running, 502 the
    /// port refused the connection inside the vnode.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The agent answered something that is not the protocol.
    #[error("the agent on {host} answered oddly: {reason}")]
    Protocol { host: String, reason: String },
}

impl AgentError {
    /// The agent's status for [`AgentError::Refused`].
    pub fn status(&self) -> Option<u16> {
        match self {
            AgentError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The message of an agent's error answer (`{"error": "..."}`), or the text itself.
fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned())
}

/// POSTs `body` as JSON to `path` of `host`'s agent; returns the status and the text.
pub async fn post_json(
    host: &str,
    address: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), AgentError> {
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, address)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| protocol(host, e.to_string()))?;
    exchange(host, address, request, EXEC_LIMIT).await
}

/// GETs `path` of `host`'s agent; returns the status and the text, within `limit`.
pub async fn get(
    host: &str,
    address: &str,
    path: &str,
    limit: Duration,
) -> Result<(u16, String), AgentError> {
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address)
        .body(Full::new(Bytes::new()))
        .map_err(|e| protocol(host, e.to_string()))?;
    exchange(host, address, request, limit).await
}

/// GETs `path` of `host`'s agent; returns the status and the body's bytes, within `limit`.
pub async fn get_bytes(
    host: &str,
    address: &str,
    path: &str,
    limit: Duration,
) -> Result<(u16, Bytes), AgentError> {
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address)
        .body(Full::new(Bytes::new()))
        .map_err(|e| protocol(host, e.to_string()))?;
    exchange_bytes(host, address, request, limit).await
}

fn protocol(host: &str, reason: String) -> AgentError {
    AgentError::Protocol {
        host: host.to_owned(),
        reason,
    }
}

async fn exchange(
    host: &str,
    address: &str,
    request: hyper::Request<Full<Bytes>>,
    limit: Duration,
) -> Result<(u16, String), AgentError> {
    let (status, bytes) = exchange_bytes(host, address, request, limit).await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

async fn exchange_bytes(
    host: &str,
    address: &str,
    request: hyper::Request<Full<Bytes>>,
    limit: Duration,
) -> Result<(u16, Bytes), AgentError> {
    let unreachable = |reason: String| AgentError::Unreachable {
        host: host.to_owned(),
        reason,
    };
    let exchange = async {
        let stream = dial(host, address).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("agent connection: {e}");
            }
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", limit.as_secs())))?
}

/// The token of the node's Jupyter (random per node, kept by its worker).
pub async fn workspace_token(endpoint: &NodeEndpoint) -> Result<String, AgentError> {
    let path = format!("/agent/v1/vnodes/{}/workspace-token", endpoint.vnode_id);
    match get(&endpoint.host, &endpoint.agent, &path, CONNECT_LIMIT).await? {
        (200, token) => Ok(token),
        (status, text) => Err(AgentError::Refused {
            status,
            message: error_message(&text),
        }),
    }
}

/// A TCP connection to `port` inside the vnode (its loopback, else its own address), through
/// its host's agent: `GET /agent/v1/vnodes/{id}/tcp/{port}` upgraded to [`TCP_UPGRADE`].
/// The stream ends when either side closes.
pub async fn connect_tcp(
    endpoint: &NodeEndpoint,
    port: u16,
) -> Result<Buffered<AgentStream>, AgentError> {
    let unreachable = |reason: String| AgentError::Unreachable {
        host: endpoint.host.clone(),
        reason,
    };
    let protocol = |reason: String| protocol(&endpoint.host, reason);
    let exchange = async {
        let stream = dial(&endpoint.host, &endpoint.agent).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection task hands the socket over to the upgrade once the 101 arrives.
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("agent tunnel connection: {e}");
            }
        });
        let request =
            hyper::Request::get(format!("/agent/v1/vnodes/{}/tcp/{port}", endpoint.vnode_id))
                .header(hyper::header::HOST, &endpoint.agent)
                .header(hyper::header::CONNECTION, "upgrade")
                .header(hyper::header::UPGRADE, TCP_UPGRADE)
                .body(Empty::<Bytes>::new())
                .map_err(|e| protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let text = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(AgentError::Refused {
                status: status.as_u16(),
                message: error_message(&text),
            });
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| protocol(format!("upgrade: {e}")))?;
        // The TLS connection itself, for relays.
        let parts = upgraded
            .downcast::<TokioIo<AgentStream>>()
            .map_err(|_| protocol("the tunnel is not the agent's TLS connection".into()))?;
        Ok(Buffered {
            stream: parts.io.into_inner(),
            read: parts.read_buf,
        })
    };
    tokio::time::timeout(CONNECT_LIMIT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_LIMIT.as_secs())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_errors_carry_the_agents_message() {
        assert_eq!(
            error_message(r#"{"error":"vnode a-b-0 is not running"}"#),
            "vnode a-b-0 is not running"
        );
        assert_eq!(error_message(" plain text\n"), "plain text");
    }
}
