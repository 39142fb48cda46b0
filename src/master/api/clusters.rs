//! Clusters, their nodes (exec, terminals, recovery), port mappings, operations and the
//! event stream.

use super::*;

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    user: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ScaleInBody {
    node: u32,
}

pub(super) fn accepted(view: OperationView) -> Response {
    let location = format!("/api/v1/operations/{}", view.operation.id);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[utoipa::path(get, path = "/api/v1/clusters", tag = "docklet", summary = "The caller's clusters (administrators: `?user=`)", params(OwnerQuery), responses((status = 200, body = Vec<ClusterView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn list_clusters(
    State(master): Shared,
    Auth(caller): Auth,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    Ok(Json(master.list_clusters(&caller, q.user.as_deref()).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/clusters", tag = "docklet", summary = "Creates a cluster; returns the operation that brings it up", request_body = CreateClusterRequest, params(("Idempotency-Key" = Option<String>, Header, description = "Repeats return the first operation")), responses((status = 202, body = OperationView), (status = 200, body = OperationView, description = "An earlier create with the same Idempotency-Key"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn create_cluster(
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
pub(super) async fn show_cluster(
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
pub(super) async fn delete_cluster(
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
pub(super) async fn start_cluster(
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
pub(super) async fn stop_cluster(
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
pub(super) async fn scale_out(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Params(q): Params<OwnerQuery>,
) -> ApiResult<Response> {
    let view = master.scale_out(&caller, q.user.as_deref(), &name).await?;
    Ok(accepted(view))
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/scale-in", tag = "docklet", summary = "Removes the named node", params(("name" = String, Path), OwnerQuery), request_body = ScaleInBody, responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn scale_in(
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
pub(super) async fn exec(
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
pub(super) async fn terminal(
    State(master): Shared,
    Auth(caller): Auth,
    Path((name, index)): Path<(String, String)>,
    Params(q): Params<TerminalQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    crate::master::terminal::open(master, caller, name, index, q, upgrade).await
}

#[utoipa::path(post, path = "/api/v1/clusters/{name}/nodes/{index}/recover", tag = "docklet", summary = "Recreates a lost node (its host is down) on another host, keeping its index and address", params(("name" = String, Path), ("index" = u32, Path), OwnerQuery), responses((status = 202, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn recover_node(
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
pub(super) async fn map_port(
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
pub(super) async fn list_ports(
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
pub(super) async fn unmap_port(
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

#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "docklet", summary = "An operation's progress, optionally waiting for its end", params(("id" = String, Path), WaitQuery), responses((status = 200, body = OperationView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn operation(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Params(q): Params<WaitQuery>,
) -> ApiResult<Response> {
    let wait = q.duration()?;
    Ok(Json(master.operation(&caller, &id, wait).await?).into_response())
}

/// Server-sent events: `event: <kind>`, `data: <JSON>`, kept alive with comments.
#[utoipa::path(get, path = "/api/v1/events", tag = "docklet", summary = "The lifecycle event stream", responses((status = 200, description = "Server-sent events: cluster, node, operation, image, system image and host changes", content_type = "text/event-stream"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn events(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
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
