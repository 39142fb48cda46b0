//! The web terminal: `GET /api/v1/clusters/{name}/nodes/{index}/terminal` (a WebSocket) for
//! the owner of the cluster. The master authorizes the caller, connects to the pty WebSocket
//! of the node's worker agent and relays frames both ways unchanged, so the browser speaks the
//! agent's protocol: binary frames are bytes, `{"resize":{"cols","rows"}}` resizes, the first
//! server frame is `{"session": id, "new": bool}`, the last one `{"exit": N}`.

use std::sync::Arc;

use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tracing::debug;

use super::Master;
use super::actions::{ApiError, Caller};
use super::agent_client::{AgentError, CONNECT_LIMIT, NodeEndpoint};

/// How long a close waits for the agent's answer.
const CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Relays open now (see [`crate::daemon::OpenTerminals`]).
static RELAYS: crate::daemon::OpenTerminals = crate::daemon::OpenTerminals::new();

type AgentSocket = tokio_tungstenite::WebSocketStream<super::agent_client::AgentStream>;

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TerminalQuery {
    /// The terminal's width (default 80).
    pub cols: Option<u16>,
    /// The terminal's height (default 24).
    pub rows: Option<u16>,
    /// Reattach to this session (from the first frame of an earlier connection) when its
    /// shell still runs; otherwise a new one starts and says `"new": true`.
    pub session: Option<String>,
    /// Only the caller's own name is accepted: terminals are their owner's alone.
    pub user: Option<String>,
}

/// Session ids are the agent's own (alphanumeric); anything else cannot name one.
fn plausible_session(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Authorizes, then upgrades; what goes wrong reaching the shell is told inside the
/// WebSocket (see [`refuse`]), where a browser can read it.
pub async fn open(
    master: Arc<Master>,
    caller: Caller,
    name: String,
    index: String,
    query: TerminalQuery,
    upgrade: Result<WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let index: u32 = index
        .parse()
        .map_err(|_| ApiError::NotFound(format!("cluster {name} has no node {index:?}")))?;
    let endpoint = master
        .own_node_endpoint(&caller, query.user.as_deref(), &name, index)
        .await?;
    let upgrade = upgrade.map_err(|_| {
        ApiError::BadRequest(
            "the terminal is a WebSocket: connect with `Upgrade: websocket`".into(),
        )
    })?;
    let agent = connect_pty(&endpoint, &query).await;
    let mut live = master.live.open(&caller);
    Ok(upgrade
        .read_buffer_size(crate::daemon::TERMINAL_WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _open = RELAYS.open();
            match agent {
                // The terminal ends with the caller's token (a revocation, the session's end).
                Ok(agent) => tokio::select! {
                    _ = relay(socket, agent) => {}
                    _ = live.ended() => tracing::debug!("terminal ended: its token was revoked or expired"),
                },
                Err(e) => refuse(socket, e).await,
            }
        })
        .into_response())
}

/// The agent's pty WebSocket for this node.
async fn connect_pty(
    endpoint: &NodeEndpoint,
    query: &TerminalQuery,
) -> Result<AgentSocket, ApiError> {
    let mut url = format!(
        "ws://{}/agent/v1/vnodes/{}/pty?cols={}&rows={}",
        endpoint.agent,
        endpoint.vnode_id,
        query.cols.unwrap_or(80),
        query.rows.unwrap_or(24)
    );
    if let Some(session) = query.session.as_deref().filter(|s| plausible_session(s)) {
        url.push_str("&session=");
        url.push_str(session);
    }
    let unreachable = |reason: String| -> ApiError {
        AgentError::Unreachable {
            host: endpoint.host.clone(),
            reason,
        }
        .into()
    };
    let request = url
        .into_client_request()
        .map_err(|e| ApiError::Internal(format!("agent request: {e}")))?;
    let handshake = async {
        let stream = super::agent_client::dial(&endpoint.host, &endpoint.agent).await?;
        let config = tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(crate::daemon::TERMINAL_WS_READ_BUFFER);
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => {
                let text = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                Err(match response.status().as_u16() {
                    429 => ApiError::Conflict(message),
                    status => AgentError::Refused { status, message }.into(),
                })
            }
            Err(e) => Err(unreachable(e.to_string())),
        }
    };
    tokio::time::timeout(CONNECT_LIMIT, handshake)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_LIMIT.as_secs())))?
}

/// Tells the browser why there is no shell: `{"error": {"code", "message"}}`, then a close
/// with code 4000 + the HTTP status the same failure would have (4409: the node is not
/// running or has too many terminals, 4503: its host cannot be reached).
async fn refuse(mut socket: WebSocket, error: ApiError) {
    let body = serde_json::json!({"error": {"code": error.code(), "message": error.to_string()}});
    let _ = socket
        .send(ws::Message::Text(body.to_string().into()))
        .await;
    // A close reason is at most 123 bytes.
    let mut reason = error.to_string();
    while reason.len() > 120 {
        reason.pop();
    }
    let _ = socket
        .send(ws::Message::Close(Some(ws::CloseFrame {
            code: 4000 + error.status(),
            reason: reason.into(),
        })))
        .await;
}

/// Relays frames between the browser and the agent until either ends. A browser that goes
/// without a close frame leaves the agent's side dropped the same way, so the session is
/// kept for reattaching; a close frame is passed on with its code (1000 ends the session).
async fn relay(browser: WebSocket, agent: AgentSocket) {
    let (mut to_browser, mut from_browser) = browser.split();
    let (mut to_agent, mut from_agent) = agent.split();
    loop {
        tokio::select! {
            message = from_browser.next() => match message {
                Some(Ok(message)) => {
                    let close = matches!(message, ws::Message::Close(_));
                    if let Some(message) = to_agent_message(message)
                        && to_agent.send(message).await.is_err()
                    {
                        break;
                    }
                    if close {
                        // Wait for the agent's answering close, so it reads ours before it
                        // sees the connection go (and takes it for a drop, not an end).
                        let answered = async {
                            while let Some(Ok(message)) = from_agent.next().await {
                                if matches!(message, tungstenite::Message::Close(_)) {
                                    break;
                                }
                            }
                        };
                        let _ = tokio::time::timeout(CLOSE_LIMIT, answered).await;
                        break;
                    }
                }
                _ => break,
            },
            message = from_agent.next() => match message {
                Some(Ok(message)) => {
                    let close = matches!(message, tungstenite::Message::Close(_));
                    if let Some(message) = to_browser_message(message)
                        && to_browser.send(message).await.is_err()
                    {
                        break;
                    }
                    if close {
                        break;
                    }
                }
                other => {
                    debug!("terminal: the agent's side ended: {other:?}");
                    let _ = to_browser.send(ws::Message::Close(None)).await;
                    break;
                }
            },
        }
    }
}

/// A browser's frame for the agent; pings and pongs stay on their own hop.
fn to_agent_message(message: ws::Message) -> Option<tungstenite::Message> {
    use tungstenite::protocol::CloseFrame;
    Some(match message {
        ws::Message::Text(text) => tungstenite::Message::Text(text.as_str().into()),
        ws::Message::Binary(data) => tungstenite::Message::Binary(data),
        ws::Message::Close(frame) => tungstenite::Message::Close(frame.map(|f| CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
        ws::Message::Ping(_) | ws::Message::Pong(_) => return None,
    })
}

/// An agent's frame for the browser.
fn to_browser_message(message: tungstenite::Message) -> Option<ws::Message> {
    Some(match message {
        tungstenite::Message::Text(text) => ws::Message::Text(text.as_str().into()),
        tungstenite::Message::Binary(data) => ws::Message::Binary(data),
        tungstenite::Message::Close(frame) => ws::Message::Close(frame.map(|f| ws::CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_unchanged_with_their_close_codes() {
        let text = to_agent_message(ws::Message::Text("{\"resize\":{}}".into())).unwrap();
        assert_eq!(text, tungstenite::Message::Text("{\"resize\":{}}".into()));
        let close = to_agent_message(ws::Message::Close(Some(ws::CloseFrame {
            code: 1001,
            reason: "away".into(),
        })))
        .unwrap();
        let tungstenite::Message::Close(Some(frame)) = close else {
            panic!("{close:?}")
        };
        assert_eq!(u16::from(frame.code), 1001);
        let back = to_browser_message(tungstenite::Message::Binary(vec![3u8].into())).unwrap();
        assert_eq!(back, ws::Message::Binary(vec![3u8].into()));
        assert!(to_agent_message(ws::Message::Ping(Default::default())).is_none());
    }

    #[test]
    fn only_agent_style_session_ids_are_passed_on() {
        assert!(plausible_session("abc123XYZ"));
        assert!(!plausible_session(""));
        assert!(!plausible_session("a&user=x"));
        assert!(!plausible_session(&"a".repeat(65)));
    }
}
