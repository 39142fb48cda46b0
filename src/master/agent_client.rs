//! The master's client for the workers' agent endpoints (plain HTTP on the hosts' network,
//! authenticated with the cluster's agent token).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest a command through the agent may take before the master gives up waiting.
pub const EXEC_LIMIT: Duration = Duration::from_secs(600);

/// POSTs `body` as JSON; returns the status and the response text.
pub async fn post_json(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
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
    tokio::time::timeout(EXEC_LIMIT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", EXEC_LIMIT.as_secs()))?
}
