//! The HTTP side of the portal port: the portal's landing page and the versioned JSON API
//! under `/api/v1`. Handlers only parse requests into the typed actions of [`actions`] and
//! render their answers; authentication (a bearer token) and every authorization decision
//! happen there. Errors are `{"error": {"code", "message", "field"?}}` with the status of
//! [`ApiError::status`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::actions::images::{ImagePatch, ImageView, SaveImageRequest};
use super::actions::ports::{MapPortRequest, PortView};
use super::actions::system_images::{SystemImageUpdateRequest, SystemImageView};
use super::actions::{
    ApiError, ClusterView, ExecRequest, ExecResult, GroupPatch, HostView, LoginResult, Me,
    NewToken, NewUser, OperationView, UserPatch,
};
use super::extract::{Auth, Body, Params};
use super::metrics::{ClusterMetrics, HostMetrics};
use super::portal::Peer;
use super::serve::Reached;
use super::terminal::TerminalQuery;
use super::{Master, session};
use crate::model::account::TokenRecord;
use crate::model::quota::Group;
use crate::model::vcluster::CreateClusterRequest;

mod admin;
mod auth;
mod clusters;
mod images;
mod jobs;
mod metrics;

use admin::*;
use auth::*;
use clusters::*;
use images::*;
use jobs::*;
use metrics::*;

type Shared = State<Arc<Master>>;

pub fn router(master: Arc<Master>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/me", get(me))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/clusters", get(list_clusters).post(create_cluster))
        .route(
            "/api/v1/clusters/{name}",
            get(show_cluster).delete(delete_cluster),
        )
        .route("/api/v1/clusters/{name}/start", post(start_cluster))
        .route("/api/v1/clusters/{name}/stop", post(stop_cluster))
        .route("/api/v1/clusters/{name}/scale-out", post(scale_out))
        .route("/api/v1/clusters/{name}/scale-in", post(scale_in))
        .route("/api/v1/clusters/{name}/nodes/{index}/exec", post(exec))
        .route(
            "/api/v1/clusters/{name}/nodes/{index}/terminal",
            get(terminal),
        )
        .route(
            "/api/v1/clusters/{name}/nodes/{index}/recover",
            post(recover_node),
        )
        .route(
            "/api/v1/clusters/{name}/nodes/{index}/ports",
            post(map_port),
        )
        .route("/api/v1/ports", get(list_ports))
        .route(
            "/api/v1/ports/{public_port}",
            axum::routing::delete(unmap_port),
        )
        .route("/api/v1/clusters/{name}/metrics", get(cluster_metrics))
        .route("/api/v1/hosts/{name}/metrics", get(host_metrics))
        .route("/api/v1/usage", get(usage))
        .route("/metrics", get(prometheus))
        .route("/api/v1/images", get(list_images).post(save_image))
        .route(
            "/api/v1/images/{owner}/{name}",
            get(show_image).patch(update_image).delete(delete_image),
        )
        .route("/api/v1/system-images", get(list_system_images))
        .route(
            "/api/v1/system-images/{name}",
            get(show_system_image).post(update_system_image),
        )
        .route("/api/v1/jobs", get(list_jobs).post(submit_job))
        .route("/api/v1/jobs/{id}", get(show_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/hold", post(hold_job))
        .route("/api/v1/jobs/{id}/release", post(release_job))
        .route("/api/v1/jobs/{id}/tasks/{task}/{index}/log", get(job_log))
        .route("/api/v1/operations/{id}", get(operation))
        .route("/api/v1/events", get(events))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route(
            "/api/v1/users/{name}",
            get(show_user).patch(update_user).delete(delete_user),
        )
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route(
            "/api/v1/groups/{name}",
            axum::routing::patch(update_group).delete(delete_group),
        )
        .route(
            "/api/v1/settings/default-group",
            get(default_group).put(set_default_group),
        )
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/hosts/{name}/drain", post(drain))
        .route("/api/v1/hosts/{name}/undrain", post(undrain))
        // Hosts joining the site (not the users' API): authenticated by the join token.
        .route("/hosts/v1/join", post(join_host))
        // The way into a workspace (see `workspace`): a grant for its own host name.
        .route("/go/{user}/{cluster}/{index}", any(enter_workspace))
        .route("/go/{user}/{cluster}/{index}/", any(enter_workspace))
        .route("/go/{user}/{cluster}/{index}/{*rest}", any(enter_workspace))
        .merge(super::portal::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(session::refuse_cross_site))
        .layer(axum::middleware::from_fn(baseline_headers))
        .layer(axum::middleware::from_fn_with_state(
            master.clone(),
            workspace_hosts,
        ))
        .with_state(master)
}

/// What every answer of the portal's host carries, the API's and refusals included (pages
/// add their policies, see `portal`): never framed, never sniffed, no referrer elsewhere.
async fn baseline_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// Requests for a name under `workspace_domain` go to that user's workspace host
/// ([`super::workspace::serve_host`]) and never reach the portal's routes; the rest are
/// the portal's.
async fn workspace_hosts(State(master): Shared, request: Request, next: Next) -> Response {
    use crate::model::workspace::{HostKind, host_kind};
    let Some(domain) = master.config.workspace_domain.clone() else {
        return next.run(request).await;
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match host_kind(&host, &domain) {
        HostKind::Portal => next.run(request).await,
        HostKind::Workspace(label) => {
            let label = label.to_owned();
            super::workspace::serve_host(master, &label, request).await
        }
        HostKind::Nobody => {
            ApiError::NotFound(format!("no workspace is served at {host}")).into_response()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = self.code(), "API error: {self}");
        }
        let mut error = serde_json::json!({"code": self.code(), "message": self.to_string()});
        if let Some(field) = self.field() {
            error["field"] = field.into();
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if let ApiError::Throttled { retry_after } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::BadRequest("this endpoint does not take that method".into()).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint (see /api/v1/openapi.json)".into())
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OwnerQuery {
    /// Administrators act on another user's clusters with `?user=`.
    user: Option<String>,
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Seconds to wait for the operation to end (at most 120).
    #[serde(default)]
    #[param(maximum = 120)]
    wait: u64,
}

impl WaitQuery {
    /// The wait asked for, checked.
    fn duration(&self) -> Result<Duration, ApiError> {
        if self.wait > 120 {
            return Err(ApiError::BadRequest(format!(
                "wait={}: at most 120 seconds",
                self.wait
            )));
        }
        Ok(Duration::from_secs(self.wait))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Every error answer: `{"error": {...}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// Machine-readable: unauthenticated, forbidden, not_found, conflict, bad_request,
    /// invalid_body, invalid_name, invalid_size, invalid_image, unknown_image,
    /// quota_exceeded, no_capacity, throttled, unavailable, internal, ...
    code: String,
    /// For people.
    message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Docklet API", description = "Private virtual clusters: accounts, clusters, operations and administration. Authenticate with `Authorization: Bearer <token>` from /api/v1/auth/login or an API token."),
    paths(
        login, logout, me, list_tokens, create_token, revoke_token, list_clusters,
        create_cluster, show_cluster, delete_cluster, start_cluster, stop_cluster, scale_out,
        scale_in, exec, terminal, recover_node, map_port, list_ports, unmap_port, list_images, save_image, show_image, update_image, delete_image, list_system_images, show_system_image, update_system_image, cluster_metrics, host_metrics, usage, prometheus, operation, events, list_users, create_user, show_user, update_user,
        delete_user, list_groups, create_group, update_group, delete_group, default_group,
        set_default_group, hosts, drain, undrain, health, list_jobs, submit_job, show_job,
        cancel_job, hold_job, release_job, job_log
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI 3.1 description of this API.
async fn openapi_json() -> Response {
    use utoipa::OpenApi;
    Json(ApiDoc::openapi()).into_response()
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
    version: &'static str,
    etcd: &'static str,
    initialized: bool,
    /// This master leads (runs the controllers); the others stand by and serve the API.
    leading: bool,
}

/// 200 when etcd answers, 503 otherwise; tells nothing an anonymous caller should not know.
#[utoipa::path(get, path = "/api/v1/health", tag = "docklet", summary = "Liveness: whether etcd answers", responses((status = 200, body = Health), (status = 503, body = Health)), security(()))]
async fn health(State(master): Shared) -> impl IntoResponse {
    let (etcd_ok, initialized) = master.health().await;
    let body = Health {
        status: if etcd_ok { "ok" } else { "degraded" },
        version: crate::VERSION,
        etcd: if etcd_ok { "ok" } else { "unreachable" },
        initialized,
        leading: master.leading(),
    };
    let code = if etcd_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// `/go/<user>/<cluster>/<index>/…` on the portal: a one-time grant for the owner's
/// workspace host.
async fn enter_workspace(State(master): Shared, request: Request) -> Response {
    super::workspace::enter_from_portal(master, request).await
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route_with_bearer_auth() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/v1/auth/login",
            "/api/v1/clusters",
            "/api/v1/clusters/{name}",
            "/api/v1/clusters/{name}/scale-in",
            "/api/v1/clusters/{name}/nodes/{index}/exec",
            "/api/v1/clusters/{name}/nodes/{index}/terminal",
            "/api/v1/operations/{id}",
            "/api/v1/events",
            "/api/v1/users/{name}",
            "/api/v1/groups/{name}",
            "/api/v1/settings/default-group",
            "/api/v1/hosts/{name}/drain",
            "/api/v1/clusters/{name}/nodes/{index}/ports",
            "/api/v1/ports",
            "/api/v1/ports/{public_port}",
            "/api/v1/images",
            "/api/v1/images/{owner}/{name}",
            "/api/v1/system-images",
            "/api/v1/system-images/{name}",
            "/api/v1/clusters/{name}/metrics",
            "/api/v1/hosts/{name}/metrics",
            "/api/v1/usage",
            "/metrics",
            "/api/v1/jobs",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}/cancel",
            "/api/v1/jobs/{id}/hold",
            "/api/v1/jobs/{id}/release",
            "/api/v1/jobs/{id}/tasks/{task}/{index}/log",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(paths.len(), 42, "{:?}", paths.keys().collect::<Vec<_>>());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        // Login and health need no token.
        assert_eq!(
            doc["paths"]["/api/v1/auth/login"]["post"]["security"],
            serde_json::json!([{}])
        );
    }

    #[test]
    fn errors_render_with_code_message_and_field() {
        let response = ApiError::Input(crate::model::vcluster::InputError {
            code: "invalid_name",
            field: "name".into(),
            message: "bad".into(),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let throttled = ApiError::Throttled { retry_after: 30 }.into_response();
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(throttled.headers()[header::RETRY_AFTER], "30");
    }
}
