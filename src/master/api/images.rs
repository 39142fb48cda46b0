//! Users' images and the system images.

use super::*;

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ImagesQuery {
    /// Administrators: every user's images, private ones included.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/api/v1/images", tag = "docklet", summary = "The caller's images and everyone's public ones (administrators: `?all=true` for every image)", params(ImagesQuery), responses((status = 200, body = Vec<ImageView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn list_images(
    State(master): Shared,
    Auth(caller): Auth,
    Params(q): Params<ImagesQuery>,
) -> ApiResult<Response> {
    Ok(Json(master.list_images(&caller, q.all).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/images", tag = "docklet", summary = "Saves a node's own layer as an image (replacing one of the same name with `force`); follow the returned image until it is `ready`", params(OwnerQuery), request_body = SaveImageRequest, responses((status = 202, body = ImageView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn save_image(
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
pub(super) async fn show_image(
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
pub(super) async fn update_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path((owner, name)): Path<(String, String)>,
    Body(patch): Body<ImagePatch>,
) -> ApiResult<Response> {
    let view = master.update_image(&caller, &owner, &name, &patch).await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(delete, path = "/api/v1/images/{owner}/{name}", tag = "docklet", summary = "Deletes an image no cluster uses", params(("owner" = String, Path), ("name" = String, Path)), responses((status = 204, description = "Deleted"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn delete_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path((owner, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    master.delete_image(&caller, &owner, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/system-images", tag = "docklet", summary = "The system images the hosts have, each with every host's version and the latest update", responses((status = 200, body = Vec<SystemImageView>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn list_system_images(
    State(master): Shared,
    Auth(caller): Auth,
) -> ApiResult<Response> {
    Ok(Json(master.list_system_images(&caller).await?).into_response())
}

#[utoipa::path(get, path = "/api/v1/system-images/{name}", tag = "docklet", summary = "One system image, optionally waiting (`?wait=` seconds) while an update of it is under way", params(("name" = String, Path), WaitQuery), responses((status = 200, body = SystemImageView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn show_system_image(
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
pub(super) async fn update_system_image(
    State(master): Shared,
    Auth(caller): Auth,
    Path(name): Path<String>,
    Body(request): Body<SystemImageUpdateRequest>,
) -> ApiResult<Response> {
    let view = master.update_system_image(&caller, &name, &request).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
