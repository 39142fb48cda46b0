//! Batch jobs: submit, list, show, cancel, hold and release, and an instance's output
//! (followed live with `follow=true`: the answer streams as the file grows and ends when the
//! instance has).

use super::*;
use crate::master::actions::jobs::{JobFilter, JobSummary, JobView, OutputStream};
use crate::model::jobs::JobRequest;

#[utoipa::path(get, path = "/api/v1/jobs", tag = "docklet", summary = "The caller's jobs (administrators: `?user=` or `?all=true`)", params(JobFilter), responses((status = 200, body = Vec<JobSummary>), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn list_jobs(
    State(master): Shared,
    Auth(caller): Auth,
    Params(filter): Params<JobFilter>,
) -> ApiResult<Response> {
    Ok(Json(master.list_jobs(&caller, &filter).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "docklet", summary = "Submits a job; a bad spec is refused whole (422, naming the field)", request_body = JobRequest, responses((status = 201, body = JobView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn submit_job(
    State(master): Shared,
    Auth(caller): Auth,
    Body(request): Body<JobRequest>,
) -> ApiResult<Response> {
    let view = master.submit_job(&caller, &request).await?;
    let mut response = (StatusCode::CREATED, Json(&view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", view.summary.id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// A job id in a path: a malformed one names nothing (404).
fn job_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::NotFound(format!("no job {text:?}")))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "docklet", summary = "A job with its tasks and every instance", params(("id" = u64, Path)), responses((status = 200, body = JobView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn show_job(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(master.show_job(&caller, job_id(&id)?).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "docklet", summary = "Cancels a job: nothing more starts, running instances stop and their nodes go", params(("id" = u64, Path)), responses((status = 200, body = JobView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn cancel_job(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(master.cancel_job(&caller, job_id(&id)?).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/hold", tag = "docklet", summary = "Holds a job: nothing more of it starts (administrators)", params(("id" = u64, Path)), responses((status = 200, body = JobView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn hold_job(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(master.hold_job(&caller, job_id(&id)?, true).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/release", tag = "docklet", summary = "Releases a held job (administrators)", params(("id" = u64, Path)), responses((status = 200, body = JobView), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn release_job(
    State(master): Shared,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(Json(master.hold_job(&caller, job_id(&id)?, false).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    /// `out` (default) or `err`.
    stream: Option<OutputStream>,
    /// Keep the answer open and send what is written, until the instance ends.
    #[serde(default)]
    follow: bool,
    /// Start at this byte.
    #[serde(default)]
    offset: u64,
}

/// How often a followed output is looked at for growth.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
const CHUNK: usize = 64 * 1024;
/// The most one answer without `follow` carries: past it, ask again with `offset`.
const WHOLE: usize = 16 << 20;

#[utoipa::path(get, path = "/api/v1/jobs/{id}/tasks/{task}/{index}/log", tag = "docklet", summary = "An instance's stdout or stderr, as text; `follow=true` streams it as it is written", params(("id" = u64, Path), ("task" = String, Path), ("index" = u32, Path), LogQuery), responses((status = 200, content_type = "text/plain", body = String), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn job_log(
    State(master): Shared,
    Auth(caller): Auth,
    Path((id, task, index)): Path<(String, String, String)>,
    Params(q): Params<LogQuery>,
) -> ApiResult<Response> {
    let id = job_id(&id)?;
    let index: u32 = index
        .parse()
        .map_err(|_| ApiError::NotFound(format!("task {task} has no instance {index:?}")))?;
    let stream = q.stream.unwrap_or(OutputStream::Out);
    let file = master.job_output(&caller, id, &task, index, stream).await?;
    let limit = if q.follow { CHUNK } else { WHOLE };
    let first = master.read_user_file(&file, q.offset, limit).await?;
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    if !q.follow {
        return Ok((headers, first.unwrap_or_default()).into_response());
    }
    // Followed: what is there, then whatever is appended, until the instance ends (and once
    // more after, for what it wrote last).
    let state = (master, file, q.offset, first, false);
    let body = futures_util::stream::unfold(state, move |(master, file, offset, pending, done)| {
        let task = task.clone();
        async move {
            if let Some(bytes) = pending.filter(|b| !b.is_empty()) {
                let next = offset + bytes.len() as u64;
                return Some((
                    Ok::<_, std::io::Error>(bytes),
                    (master, file, next, None, done),
                ));
            }
            if done {
                return None;
            }
            loop {
                let open = master
                    .job_instance_open(id, &task, index)
                    .await
                    .unwrap_or(false);
                let read = master
                    .read_user_file(&file, offset, CHUNK)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                if !read.is_empty() || !open {
                    let next = offset + read.len() as u64;
                    return Some((Ok(read), (master, file, next, None, !open)));
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        }
    });
    Ok((headers, axum::body::Body::from_stream(body)).into_response())
}
