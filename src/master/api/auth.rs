//! Logging in and out, the caller's own account and API tokens.

use super::*;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    user: String,
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenBody {
    name: String,
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "docklet", summary = "Logs in with a PAM or local password and returns a session token", request_body = LoginBody, responses((status = 200, body = LoginResult), (status = "default", description = "An error: see the code and message", body = ErrorBody)), security(()))]
pub(super) async fn login(
    State(master): Shared,
    Peer(peer): Peer,
    Body(body): Body<LoginBody>,
) -> ApiResult<Response> {
    let result = master.login(&body.user, &body.password, &peer).await?;
    Ok(Json(result).into_response())
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "docklet", summary = "Revokes the token of this request", responses((status = 204, description = "The token is revoked"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn logout(State(master): Shared, Auth(caller): Auth) -> ApiResult<StatusCode> {
    master.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/me", tag = "docklet", summary = "The caller's account, quota and usage", responses((status = 200, body = Me), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn me(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.me(&caller).await?).into_response())
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "docklet", summary = "The caller's tokens (never their secrets)", responses((status = 200, body = Vec<TokenRecord>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn list_tokens(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
    Ok(Json(master.list_tokens(&caller).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "docklet", summary = "A new API token; its secret is shown once", request_body = TokenBody, responses((status = 201, body = NewToken), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn create_token(
    State(master): Shared,
    Auth(caller): Auth,
    Body(body): Body<TokenBody>,
) -> ApiResult<Response> {
    let token = master.create_api_token(&caller, &body.name).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "docklet", summary = "Revokes one of the caller's tokens", params(("id" = String, Path)), responses((status = 204, description = "Revoked"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    master.revoke_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
