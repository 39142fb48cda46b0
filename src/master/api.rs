//! The HTTP side of the portal port. For now: the portal's landing page and a health
//! endpoint; accounts, vclusters and the workspace proxy arrive with later issues.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use serde::Serialize;

use super::Master;

pub fn router(master: Arc<Master>) -> Router {
    Router::new()
        .route("/", get(portal))
        .route("/api/v1/health", get(health))
        .with_state(master)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    etcd: &'static str,
    initialized: bool,
}

/// 200 when etcd answers, 503 otherwise; tells nothing an anonymous caller should not know.
async fn health(State(master): State<Arc<Master>>) -> impl IntoResponse {
    let (etcd_ok, initialized) = master.health().await;
    let body = Health {
        status: if etcd_ok { "ok" } else { "degraded" },
        version: crate::VERSION,
        etcd: if etcd_ok { "ok" } else { "unreachable" },
        initialized,
    };
    let code = if etcd_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn portal(State(master): State<Arc<Master>>) -> Html<String> {
    let (etcd_ok, initialized) = master.health().await;
    let state = match (etcd_ok, initialized) {
        (false, _) => "The cluster's state store (etcd) cannot be reached right now.",
        (true, false) => {
            "This cluster is not initialized yet: run <code>docklet-admin init</code> on the master."
        }
        (true, true) => "Sign-in opens here soon.",
    };
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Docklet</title></head>\n\
         <body><h1>Docklet</h1><p>Private virtual clusters, in your browser.</p>\n\
         <p id=\"state\">{state}</p><footer>cluster {} · version {}</footer></body></html>\n",
        html_escape(&master.config.cluster_name),
        crate::VERSION
    ))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
