//! Administration: accounts, groups and hosts (draining and joining).

use super::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DefaultGroupBody {
    group: String,
}

#[utoipa::path(get, path = "/api/v1/users", tag = "docklet", summary = "Every account (administrators)", responses((status = 200, body = Vec<Me>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn list_users(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.list_users(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/users", tag = "docklet", summary = "Creates a local or PAM account (administrators)", request_body = NewUser, responses((status = 201, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn create_user(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<NewUser>,
) -> ApiResult<Response> {
    let user = master.create_user(&caller, &body).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "docklet", summary = "One account (administrators, or the account itself)", params(("name" = String, Path)), responses((status = 200, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn show_user(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(master.show_user(&caller, &name).await?).into_response())
}

#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "docklet", summary = "Changes an account's group, status or local password", params(("name" = String, Path)), request_body = UserPatch, responses((status = 200, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn update_user(
    State(master): Shared,
    Auth(caller): Auth,
    Peer(peer): Peer,
    Path(name): Path<String>,
    Body(body): Body<UserPatch>,
) -> ApiResult<Response> {
    Ok(Json(master.update_user(&caller, &name, &body, &peer).await?).into_response())
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "docklet", summary = "Deletes an account without clusters (administrators)", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn delete_user(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.delete_user(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/groups", tag = "docklet", summary = "Groups and their quotas (administrators)", responses((status = 200, body = Vec<Group>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn list_groups(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.list_groups(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "docklet", summary = "Creates a group (administrators)", request_body = Group, responses((status = 201, body = Group), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn create_group(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<Group>,
) -> ApiResult<Response> {
    let group = master.create_group(&caller, &body).await?;
    Ok((StatusCode::CREATED, Json(group)).into_response())
}

#[utoipa::path(patch, path = "/api/v1/groups/{name}", tag = "docklet", summary = "Changes a group's quota, defaults or admin flag", params(("name" = String, Path)), request_body = GroupPatch, responses((status = 200, body = Group), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn update_group(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Body(body): Body<GroupPatch>,
) -> ApiResult<Response> {
    Ok(Json(master.update_group(&caller, &name, &body).await?).into_response())
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "docklet", summary = "Deletes an empty group that is not the default", params(("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn delete_group(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.delete_group(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/settings/default-group", tag = "docklet", summary = "Chooses the group new users join", request_body = DefaultGroupBody, responses((status = 204, description = "Changed"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn set_default_group(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<DefaultGroupBody>,
) -> ApiResult<StatusCode> {
    master.set_default_group(&caller, &body.group).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/settings/default-group", tag = "docklet", summary = "The group new users join", responses((status = 200, body = DefaultGroupBody), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn default_group(
    State(master): Shared,
    Auth(caller): Auth,
) -> ApiResult<Response> {
    let group = master.default_group(&caller).await?;
    Ok(Json(serde_json::json!({ "group": group })).into_response())
}

#[utoipa::path(get, path = "/api/v1/hosts", tag = "docklet", summary = "Hosts with capacity, allocations and drain state (administrators)", responses((status = 200, body = Vec<HostView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn hosts(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.hosts(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/hosts/{name}/drain", tag = "docklet", summary = "The host takes no new vnodes", params(("name" = String, Path)), responses((status = 204, description = "Draining"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn drain(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.drain(&caller, &name, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/hosts/{name}/undrain", tag = "docklet", summary = "The host takes new vnodes again", params(("name" = String, Path)), responses((status = 204, description = "Back in service"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn undrain(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    master.drain(&caller, &name, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new host's join exchange ([`super::hosts`]): its keys signed, for the token's proof.
pub(super) async fn join_host(
    State(master): Shared,
    body: Result<Json<crate::pki::join::JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<crate::pki::join::JoinResponse>, ApiError> {
    let Json(request) =
        body.map_err(|e| ApiError::BadRequest(format!("not a join request: {e}")))?;
    master.join(request).await.map(Json).map_err(|e| match e {
        crate::master::hosts::JoinError::Refused(m) => ApiError::Forbidden(m),
        crate::master::hosts::JoinError::Invalid(m) => ApiError::BadRequest(m),
        crate::master::hosts::JoinError::Unavailable(m) => ApiError::Unavailable(m),
    })
}
