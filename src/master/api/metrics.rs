//! Metrics, usage and the Prometheus exposition.

use super::*;

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsQuery {
    /// Administrators: another user's cluster.
    user: Option<String>,
    /// How far back, in seconds (default an hour, at most 31 days).
    #[param(maximum = 2678400)]
    since: Option<u64>,
}

/// The history asked for, checked.
pub(super) fn since(q: &MetricsQuery) -> Result<u64, ApiError> {
    match q.since {
        Some(s) if s > 31 * 86_400 => Err(ApiError::BadRequest(format!(
            "since={s}: at most 31 days (2678400 seconds)"
        ))),
        Some(s) => Ok(s),
        None => Ok(3600),
    }
}

#[utoipa::path(get, path = "/api/v1/clusters/{name}/metrics", tag = "docklet", summary = "Each node's last sample (CPU, memory, disk, network, processes, uptime) and history, and how long the cluster has been idle", params(("name" = String, Path), MetricsQuery), responses((status = 200, body = ClusterMetrics), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn cluster_metrics(
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
pub(super) async fn host_metrics(
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
pub(super) struct UsageQuery {
    /// First day, `YYYY-MM-DD` (UTC).
    from: String,
    /// Last day, `YYYY-MM-DD` (UTC).
    to: String,
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "docklet", summary = "Vnode, CPU and memory hours per user and day, as CSV (administrators)", params(UsageQuery), responses((status = 200, description = "`user,date,vnode_hours,cpu_hours,memory_gib_hours`", content_type = "text/csv"), (status = "default", description = "An error: see the code and message", body = ErrorBody)))]
pub(super) async fn usage(
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
pub(super) async fn prometheus(State(master): Shared, Auth(caller): Auth) -> ApiResult<Response> {
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
