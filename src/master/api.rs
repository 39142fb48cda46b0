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

use super::actions::{
    ApiError, ClusterView, ExecRequest, ExecResult, GroupPatch, HostView, LoginResult, Me,
    NewToken, NewUser, OperationView, UserPatch,
};
use super::extract::{Auth, Body, Params};
use super::images::{ImagePatch, ImageView, SaveImageRequest};
use super::metrics::{ClusterMetrics, HostMetrics};
use super::portal::Peer;
use super::ports::{MapPortRequest, PortView};
use super::serve::Reached;
use super::system_images::{SystemImageUpdateRequest, SystemImageView};
use super::terminal::TerminalQuery;
use super::{Master, session};
use crate::model::account::TokenRecord;
use crate::model::quota::Group;
use crate::model::vcluster::CreateClusterRequest;

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
struct DeleteQuery {
    user: Option<String>,
    #[serde(default)]
    force: bool,
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ScaleInBody {
    node: u32,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DefaultGroupBody {
    group: String,
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
        set_default_group, hosts, drain, undrain, health
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

fn accepted(view: OperationView) -> Response {
    let location = format!("/api/v1/operations/{}", view.operation.id);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "docklet", summary = "Logs in with a PAM or local password and returns a session token", request_body = LoginBody, responses((status = 200, body = LoginResult), (status = "default", description = "An error: see the code and message", body = ErrorBody)), security(()))]
async fn login(
    State(master): Shared,
    Peer(peer): Peer,
    Body(body): Body<LoginBody>,
) -> ApiResult<Response> {
    let result = master.login(&body.user, &body.password, &peer).await?;
    Ok(Json(result).into_response())
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "docklet", summary = "Revokes the token of this request", responses((status = 204, description = "The token is revoked"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn logout(State(master): Shared, Auth(caller): Auth) -> ApiResult<StatusCode> {
    master.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/me", tag = "docklet", summary = "The caller's account, quota and usage", responses((status = 200, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn me(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.me(&caller).await?).into_response())
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "docklet", summary = "The caller's tokens (never their secrets)", responses((status = 200, body = Vec<TokenRecord>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn list_tokens(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.list_tokens(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "docklet", summary = "A new API token; its secret is shown once", request_body = TokenBody, responses((status = 201, body = NewToken), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn create_token(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<TokenBody>,
) -> ApiResult<Response> {
    let token = master.create_api_token(&caller, &body.name).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "docklet", summary = "Revokes one of the caller's tokens", params(("id" = String, Path)), responses((status = 204, description = "Revoked"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn revoke_token(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    master.revoke_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/clusters", tag = "docklet", summary = "The caller's clusters (administrators: `?user=`)", params(OwnerQuery), responses((status = 200, body = Vec<ClusterView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn list_clusters(
    State(master): Shared,
    Auth(caller): Auth,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    Ok(Json(master.list_clusters(&caller, q.user.as_deref()).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/clusters", tag = "docklet", summary = "Creates a cluster; returns the operation that brings it up", request_body = CreateClusterRequest, params(("Idempotency-Key" = Option<String>, Header, description = "Repeats return the first operation")), responses((status = 202, body = OperationView), (status = 200, body = OperationView, description = "An earlier create with the same Idempotency-Key"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn create_cluster(
    State(master): Shared,
    Auth(caller): Auth,
    headers: HeaderMap,
    Body(request): Body<CreateClusterRequest>,
) -> ApiResult<Response> {
    let key =
        match headers.get("idempotency-key") {
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::BadRequest("Idempotency-Key must be printable ASCII".into())
            })?),
            None => None,
        };
    let created = master.create_cluster(&caller, &request, key).await?;
    if created.replayed {
        Ok(Json(created.operation).into_response())
    } else {
        Ok(accepted(created.operation))
    }
}

#[utoipa::path(get, path = "/api/v1/clusters/{name}", tag = "docklet", summary = "A cluster with its nodes", params(("name" = String, Path), OwnerQuery), responses((status = 200, body = ClusterView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn show_cluster(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    Ok(Json(
        master
            .show_cluster(&caller, q.user.as_deref(), &name)
            .await?,
    )
    .into_response())
}

#[utoipa::path(delete, path = "/api/v1/clusters/{name}", tag = "docklet", summary = "Deletes a stopped cluster (or any, with `force=true`)", params(("name" = String, Path), DeleteQuery), responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn delete_cluster(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<DeleteQuery>,
) -> ApiResult<Response> {
    let view = master
        .delete_cluster(&caller, q.user.as_deref(), &name, q.force)
        .await?;
    Ok(accepted(view))
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/start", tag = "docklet", summary = "Starts every node", params(("name" = String, Path), OwnerQuery), responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn start_cluster(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    let view = master
        .set_cluster_state(&caller, q.user.as_deref(), &name, true)
        .await?;
    Ok(accepted(view))
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/stop", tag = "docklet", summary = "Stops every node", params(("name" = String, Path), OwnerQuery), responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn stop_cluster(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    let view = master
        .set_cluster_state(&caller, q.user.as_deref(), &name, false)
        .await?;
    Ok(accepted(view))
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/scale-out", tag = "docklet", summary = "Adds a node", params(("name" = String, Path), OwnerQuery), responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn scale_out(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    let view = master.scale_out(&caller, q.user.as_deref(), &name).await?;
    Ok(accepted(view))
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/scale-in", tag = "docklet", summary = "Removes the named node", params(("name" = String, Path), OwnerQuery), request_body = ScaleInBody, responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn scale_in(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<OwnerQuery>,
    Body(body): Body<ScaleInBody>,
) -> ApiResult<Response> {
    let view = master
        .scale_in(&caller, q.user.as_deref(), &name, body.node)
        .await?;
    Ok(accepted(view))
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/nodes/{index}/exec", tag = "docklet", summary = "Runs a command (an argv list) in a node and returns its exit code and output", params(("name" = String, Path), ("index" = u32, Path), OwnerQuery), request_body = ExecRequest, responses((status = 200, body = ExecResult), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn exec(
    State(master): Shared,
    Auth(caller): Auth,
    Path((name, index)): Path<(String, String)>,
    Params(q): Params<OwnerQuery>,
    Body(request): Body<ExecRequest>,
) -> ApiResult<Response> {
    let index: u32 = index
        .parse()
        .map_err(|_| ApiError::NotFound(format!("cluster {name} has no node {index:?}")))?;
    let result = master
        .exec(&caller, q.user.as_deref(), &name, index, &request)
        .await?;
    Ok(Json(result).into_response())
}

/// A WebSocket: see docs/api.md, "Terminals".
#[utoipa::path(get, path = "/api/v1/clusters/{name}/nodes/{index}/terminal", tag = "docklet", summary = "A terminal in one of the caller's own nodes, over WebSocket (binary frames are bytes; text frames are JSON control messages)", params(("name" = String, Path), ("index" = u32, Path), TerminalQuery), responses((status = 101, description = "The terminal: first frame `{\"session\": id, \"new\": bool}`, last `{\"exit\": N}`"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn terminal(
    State(master): Shared,
    Auth(caller): Auth,
    Path((name, index)): Path<(String, String)>,
    Params(q): Params<TerminalQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    super::terminal::open(master, caller, name, index, q, upgrade).await
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/nodes/{index}/recover", tag = "docklet", summary = "Recreates a lost node (its host is down) on another host, keeping its index and address", params(("name" = String, Path), ("index" = u32, Path), OwnerQuery), responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn recover_node(
    State(master): Shared,
    Auth(caller): Auth,
    Path((name, index)): Path<(String, String)>,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    let index: u32 = index
        .parse()
        .map_err(|_| ApiError::NotFound(format!("cluster {name} has no node {index:?}")))?;
    let view = master
        .recover_node(&caller, q.user.as_deref(), &name, index)
        .await?;
    Ok(accepted(view))
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/nodes/{index}/ports", tag = "docklet", summary = "Maps a TCP port of a node to a public port of the masters' address, within the quota", params(("name" = String, Path), ("index" = u32, Path), OwnerQuery), request_body = MapPortRequest, responses((status = 201, body = PortView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn map_port(
    State(master): Shared,
    Auth(caller): Auth,
    Reached(reached): Reached,
    Path((name, index)): Path<(String, String)>,
    Params(q): Params<OwnerQuery>,
    Body(request): Body<MapPortRequest>,
) -> ApiResult<Response> {
    let index: u32 = index
        .parse()
        .map_err(|_| ApiError::NotFound(format!("cluster {name} has no node {index:?}")))?;
    let view = master
        .map_port(&caller, q.user.as_deref(), &name, index, &request, reached)
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/api/v1/ports", tag = "docklet", summary = "The caller's port mappings (administrators: `?user=`)", params(OwnerQuery), responses((status = 200, body = Vec<PortView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn list_ports(
    State(master): Shared,
    Auth(caller): Auth,
    Reached(reached): Reached,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    let views = master
        .list_ports(&caller, q.user.as_deref(), reached)
        .await?;
    Ok(Json(views).into_response())
}

#[utoipa::path(delete, path = "/api/v1/ports/{public_port}", tag = "docklet", summary = "Deletes a port mapping; the masters close its public port", params(("public_port" = u16, Path), OwnerQuery), responses((status = 204, description = "Deleted"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn unmap_port(
    State(master): Shared,
    Auth(caller): Auth,
    Path(public_port): Path<String>,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<StatusCode> {
    let public_port: u16 = public_port.parse().map_err(|_| {
        ApiError::NotFound(format!(
            "you have no port mapping on public port {public_port:?}"
        ))
    })?;
    master
        .unmap_port(&caller, q.user.as_deref(), public_port)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    /// Administrators: another user's cluster.
    user: Option<String>,
    /// How far back, in seconds (default an hour, at most 31 days).
    #[param(maximum = 2678400)]
    since: Option<u64>,
}

/// The history asked for, checked.
fn since(q: &MetricsQuery) -> Result<u64, ApiError> {
    match q.since {
        Some(s) if s > 31 * 86_400 => Err(ApiError::BadRequest(format!(
            "since={s}: at most 31 days (2678400 seconds)"
        ))),
        Some(s) => Ok(s),
        None => Ok(3600),
    }
}

#[utoipa::path(get, path = "/api/v1/clusters/{name}/metrics", tag = "docklet", summary = "Each node's last sample (CPU, memory, disk, network, processes, uptime) and history, and how long the cluster has been idle", params(("name" = String, Path), MetricsQuery), responses((status = 200, body = ClusterMetrics), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn cluster_metrics(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<MetricsQuery>,
) -> ApiResult<Response> {
    let view = master
        .cluster_metrics(&caller, q.user.as_deref(), &name, since(&q)?)
        .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(get, path = "/api/v1/hosts/{name}/metrics", tag = "docklet", summary = "A host's last sample and history (administrators)", params(("name" = String, Path), MetricsQuery), responses((status = 200, body = HostMetrics), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn host_metrics(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<MetricsQuery>,
) -> ApiResult<Response> {
    let view = master.host_metrics(&caller, &name, since(&q)?).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// First day, `YYYY-MM-DD` (UTC).
    from: String,
    /// Last day, `YYYY-MM-DD` (UTC).
    to: String,
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "docklet", summary = "Vnode, CPU and memory hours per user and day, as CSV (administrators)", params(UsageQuery), responses((status = 200, description = "`user,date,vnode_hours,cpu_hours,memory_gib_hours`", content_type = "text/csv"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn usage(
    State(master): Shared,
    Auth(caller): Auth,
    Params(q): Params<UsageQuery>,
) -> ApiResult<Response> {
    let csv = master.usage_csv(&caller, &q.from, &q.to)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"docklet-usage-{}-{}.csv\"",
                    q.from, q.to
                ),
            ),
        ],
        csv,
    )
        .into_response())
}

#[utoipa::path(get, path = "/metrics", tag = "docklet", summary = "Every host's and vnode's last sample in the Prometheus text format, labelled with user, cluster, node, vnode and host (administrators)", responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn prometheus(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    let text = master.prometheus(&caller)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ImagesQuery {
    /// Administrators: every user's images, private ones included.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/api/v1/images", tag = "docklet", summary = "The caller's images and everyone's public ones (administrators: `?all=true` for every image)", params(ImagesQuery), responses((status = 200, body = Vec<ImageView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn list_images(
    State(master): Shared,
    Auth(caller): Auth,
    Params(q): Params<ImagesQuery>,
) -> ApiResult<Response> {
    Ok(Json(master.list_images(&caller, q.all).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/images", tag = "docklet", summary = "Saves a node's own layer as an image (replacing one of the same name with `force`); follow the returned image until it is `ready`", params(OwnerQuery), request_body = SaveImageRequest, responses((status = 202, body = ImageView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn save_image(
    State(master): Shared,
    Auth(caller): Auth,
    Params(q): Params<OwnerQuery>,
    Body(request): Body<SaveImageRequest>,
) -> ApiResult<Response> {
    let view = master
        .save_image(&caller, q.user.as_deref(), &request)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/api/v1/images/{owner}/{name}", tag = "docklet", summary = "One image, optionally waiting (`?wait=` seconds) while it is being saved", params(("owner" = String, Path), ("name" = String, Path), WaitQuery), responses((status = 200, body = ImageView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn show_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path((owner, name)): Path<(String, String)>,
    Params(q): Params<WaitQuery>,
) -> ApiResult<Response> {
    let view = master
        .show_image(&caller, &owner, &name, q.duration()?)
        .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(patch, path = "/api/v1/images/{owner}/{name}", tag = "docklet", summary = "Shares (`public: true`) or unshares an image, or changes its description", params(("owner" = String, Path), ("name" = String, Path)), request_body = ImagePatch, responses((status = 200, body = ImageView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn update_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path((owner, name)): Path<(String, String)>,
    Body(patch): Body<ImagePatch>,
) -> ApiResult<Response> {
    let view = master.update_image(&caller, &owner, &name, &patch).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(delete, path = "/api/v1/images/{owner}/{name}", tag = "docklet", summary = "Deletes an image no cluster uses", params(("owner" = String, Path), ("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn delete_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path((owner, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    master.delete_image(&caller, &owner, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/system-images", tag = "docklet", summary = "The system images the hosts have, each with every host's version and the latest update", responses((status = 200, body = Vec<SystemImageView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn list_system_images(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.list_system_images(&caller).await?).into_response())
}

#[utoipa::path(get, path = "/api/v1/system-images/{name}", tag = "docklet", summary = "One system image, optionally waiting (`?wait=` seconds) while an update of it is under way", params(("name" = String, Path), WaitQuery), responses((status = 200, body = SystemImageView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn show_system_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<WaitQuery>,
) -> ApiResult<Response> {
    let view = master
        .show_system_image(&caller, &name, q.duration()?)
        .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(post, path = "/api/v1/system-images/{name}", tag = "docklet", summary = "Administrators: makes the next version of a system image on every host from a saved image (running nodes keep theirs until restarted); follow the returned system image until it is settled", params(("name" = String, Path)), request_body = SystemImageUpdateRequest, responses((status = 202, body = SystemImageView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn update_system_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Body(request): Body<SystemImageUpdateRequest>,
) -> ApiResult<Response> {
    let view = master.update_system_image(&caller, &name, &request).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "docklet", summary = "An operation's progress, optionally waiting for its end", params(("id" = String, Path), WaitQuery), responses((status = 200, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn operation(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<WaitQuery>,
) -> ApiResult<Response> {
    let wait = q.duration()?;
    Ok(Json(master.operation(&caller, &id, wait).await?).into_response())
}

/// Server-sent events: `event: <kind>`, `data: <JSON>`, kept alive with comments.
#[utoipa::path(get, path = "/api/v1/events", tag = "docklet", summary = "The lifecycle event stream", responses((status = 200, description = "Server-sent events: cluster, node, operation and host changes", content_type = "text/event-stream"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn events(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // The stream ends with the caller's token (a revocation, the session's end).
    let mut live = master.live.open(&caller);
    let rx = master.events(caller).await?;
    let ended = Box::pin(async move { live.ended().await });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let sse = Event::default()
            .event(event.kind)
            .id(event.revision.to_string())
            .json_data(&event)
            .unwrap_or_else(|_| Event::default().comment("unencodable event"));
        Some((Ok::<_, std::convert::Infallible>(sse), rx))
    });
    let stream = futures_util::StreamExt::take_until(stream, ended);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/users", tag = "docklet", summary = "Every account (administrators)", responses((status = 200, body = Vec<Me>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn list_users(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.list_users(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/users", tag = "docklet", summary = "Creates a local or PAM account (administrators)", request_body = NewUser, responses((status = 201, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn create_user(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<NewUser>,
) -> ApiResult<Response> {
    let user = master.create_user(&caller, &body).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "docklet", summary = "One account (administrators, or the account itself)", params(("name" = String, Path)), responses((status = 200, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn show_user(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(master.show_user(&caller, &name).await?).into_response())
}

#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "docklet", summary = "Changes an account's group, status or local password", params(("name" = String, Path)), request_body = UserPatch, responses((status = 200, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn update_user(
    State(master): Shared,
    Auth(caller): Auth,
    Peer(peer): Peer,
    Path(name): Path<String>,
    Body(body): Body<UserPatch>,
) -> ApiResult<Response> {
    Ok(Json(master.update_user(&caller, &name, &body, &peer).await?).into_response())
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "docklet", summary = "Deletes an account without clusters (administrators)", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn delete_user(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.delete_user(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/groups", tag = "docklet", summary = "Groups and their quotas (administrators)", responses((status = 200, body = Vec<Group>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn list_groups(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.list_groups(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "docklet", summary = "Creates a group (administrators)", request_body = Group, responses((status = 201, body = Group), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn create_group(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<Group>,
) -> ApiResult<Response> {
    let group = master.create_group(&caller, &body).await?;
    Ok((StatusCode::CREATED, Json(group)).into_response())
}

#[utoipa::path(patch, path = "/api/v1/groups/{name}", tag = "docklet", summary = "Changes a group's quota, defaults or admin flag", params(("name" = String, Path)), request_body = GroupPatch, responses((status = 200, body = Group), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn update_group(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Body(body): Body<GroupPatch>,
) -> ApiResult<Response> {
    Ok(Json(master.update_group(&caller, &name, &body).await?).into_response())
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "docklet", summary = "Deletes an empty group that is not the default", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn delete_group(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.delete_group(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/settings/default-group", tag = "docklet", summary = "Chooses the group new users join", request_body = DefaultGroupBody, responses((status = 204, description = "Changed"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn set_default_group(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<DefaultGroupBody>,
) -> ApiResult<StatusCode> {
    master.set_default_group(&caller, &body.group).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/settings/default-group", tag = "docklet", summary = "The group new users join", responses((status = 200, body = DefaultGroupBody), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn default_group(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    let group = master.default_group(&caller).await?;
    Ok(Json(serde_json::json!({ "group": group })).into_response())
}

#[utoipa::path(get, path = "/api/v1/hosts", tag = "docklet", summary = "Hosts with capacity, allocations and drain state (administrators)", responses((status = 200, body = Vec<HostView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn hosts(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.hosts(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/hosts/{name}/drain", tag = "docklet", summary = "The host takes no new vnodes", params(("name" = String, Path)), responses((status = 204, description = "Draining"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn drain(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.drain(&caller, &name, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/hosts/{name}/undrain", tag = "docklet", summary = "The host takes new vnodes again", params(("name" = String, Path)), responses((status = 204, description = "Back in service"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
async fn undrain(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.drain(&caller, &name, false).await?;
    Ok(StatusCode::NO_CONTENT)
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

/// A new host's join exchange ([`super::hosts`]): its keys signed, for the token's proof.
async fn join_host(
    State(master): Shared,
    body: Result<Json<crate::pki::join::JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::pki::join::JoinResponse>, ApiError> {
    let Json(request) =
        body.map_err(|e| ApiError::BadRequest(format!("not a join request: {e}")))?;
    master.join(request).await.map(Json).map_err(|e| match e {
        super::hosts::JoinError::Refused(m) => ApiError::Forbidden(m),
        super::hosts::JoinError::Invalid(m) => ApiError::BadRequest(m),
        super::hosts::JoinError::Unavailable(m) => ApiError::Unavailable(m),
    })
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
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(paths.len(), 36, "{:?}", paths.keys().collect::<Vec<_>>());
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
            field: "name",
            message: "bad".into(),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let throttled = ApiError::Throttled { retry_after: 30 }.into_response();
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(throttled.headers()[header::RETRY_AFTER], "30");
    }
}
