//! The master's client for the workers' agent endpoints (plain HTTP on the hosts' network,
//! authenticated with the cluster's agent token): commands, and byte tunnels to a TCP port
//! inside a vnode (terminals, the workspace proxy and port mappings ride on them).

use std::time::Duration;

use crate::sys::splice::BufferedTcp;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Longest a command through the agent may take before the master gives up waiting.
pub const EXEC_LIMIT: Duration = Duration::from_secs(600);

/// Longest the agent may take to answer a tunnel request (it connects inside the vnode
/// first, which a socket-activated service answers at once).
pub const CONNECT_LIMIT: Duration = Duration::from_secs(15);

pub use crate::daemon::TCP_UPGRADE;

/// Where a vnode is reached: its host's agent, and the credentials it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The host running the vnode.
    pub host: String,
    /// `ip:port` of that host's worker agent.
    pub agent: String,
    /// The cluster's agent token.
    pub token: String,
    pub vnode_id: String,
}

/// A failure reaching through an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No connection to the agent at all (the host or its worker is down).
    #[error("cannot reach the agent on {host}: {reason}")]
    Unreachable { host: String, reason: String },
    /// The agent answered with an error: 404 no such vnode there, 409 not running, 502 the
    /// port refused the connection inside the vnode, 401 a wrong agent token.
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

/// POSTs `body` as JSON; returns the status and the response text.
pub async fn post_json(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    let request = hyper::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    exchange(request, EXEC_LIMIT).await
}

/// GETs `url`; returns the status and the response text, within `limit`.
pub async fn get(url: &str, token: &str, limit: Duration) -> Result<(u16, String), String> {
    let request = hyper::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    exchange(request, limit).await
}

async fn exchange(
    request: hyper::Request<Full<Bytes>>,
    limit: Duration,
) -> Result<(u16, String), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", limit.as_secs()))?
}

/// A TCP connection to `port` inside the vnode (its loopback, else its own address), through
/// its host's agent: `GET /agent/v1/vnodes/{id}/tcp/{port}` upgraded to [`TCP_UPGRADE`].
/// The stream ends when either side closes.
pub async fn connect_tcp(endpoint: &NodeEndpoint, port: u16) -> Result<BufferedTcp, AgentError> {
    let unreachable = |reason: String| AgentError::Unreachable {
        host: endpoint.host.clone(),
        reason,
    };
    let protocol = |reason: String| AgentError::Protocol {
        host: endpoint.host.clone(),
        reason,
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&endpoint.agent)
            .await
            .map_err(|e| unreachable(format!("{}: {e}", endpoint.agent)))?;
        let _ = stream.set_nodelay(true);
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
                .header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", endpoint.token),
                )
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
        // The socket itself, so relays can splice it.
        let parts = upgraded
            .downcast::<TokioIo<tokio::net::TcpStream>>()
            .map_err(|_| protocol("the tunnel is not a TCP connection".into()))?;
        Ok(BufferedTcp {
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
