//! The pages every user has: login, the dashboard with its one-click create, a cluster's
//! page with its actions, a node's terminal, and the account (password, API tokens). The
//! images page and the cluster page's save form are in [`super::images`].

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::{
    CsrfOnly, DoneQuery, Peer, Session, given, notice, render, render_error, safe_next, see_other,
    status_of,
};
use crate::master::Master;
use crate::master::actions::ports::MapPortRequest;
use crate::master::actions::{ApiError, Caller, ClusterView};
use crate::master::session;
use crate::model::vcluster::{CreateClusterRequest, NodeState};

type Shared = State<Arc<Master>>;

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

#[derive(Serialize)]
struct LoginPage<'a> {
    next: &'a str,
    user: &'a str,
    /// Why logging in cannot work right now, if it cannot.
    trouble: Option<&'static str>,
}

/// What keeps anyone from logging in at the moment, if anything.
async fn trouble(master: &Master) -> Option<&'static str> {
    match master.health().await {
        (false, _) => Some("The cluster's state store (etcd) cannot be reached right now."),
        (true, false) => Some(
            "This cluster is not initialized yet: an administrator runs docklet-admin init on the master.",
        ),
        (true, true) => None,
    }
}

pub async fn login_page(State(master): Shared, Query(query): Query<LoginQuery>) -> Response {
    let next = safe_next(query.next.as_deref());
    render(
        &master,
        None,
        "login.html",
        StatusCode::OK,
        None,
        None,
        LoginPage {
            next: &next,
            user: "",
            trouble: trouble(&master).await,
        },
    )
}

pub async fn login(
    State(master): Shared,
    Peer(peer): Peer,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let page = |status, message: &str| {
        render(
            &master,
            None,
            "login.html",
            status,
            None,
            Some(message),
            LoginPage {
                next: &next,
                user: &form.user,
                trouble: None,
            },
        )
    };
    // A login form posted from another site would sign the browser in as someone else.
    if headers.contains_key(header::ORIGIN) && !session::same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            "This login did not come from the portal's own page.",
        );
    }
    if form.user.is_empty() || form.password.is_empty() {
        return page(
            StatusCode::BAD_REQUEST,
            "Enter your user name and password.",
        );
    }
    match master.login(form.user.trim(), &form.password, &peer).await {
        Ok(result) => {
            let mut response = Redirect::to(&next).into_response();
            let cookie =
                session::session_cookie(Some(&result.token), master.config.session_lifetime);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(ApiError::Throttled { retry_after }) => page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed logins. Wait {retry_after} seconds before you try again."),
        ),
        Err(ApiError::Unauthenticated(_)) => {
            page(StatusCode::UNAUTHORIZED, "Wrong user name or password.")
        }
        Err(e) => page(status_of(&e), &e.to_string()),
    }
}

pub async fn logout(
    State(master): Shared,
    session: Session,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    if let Err(e) = master.logout(&session.caller).await {
        tracing::warn!("logout: {e}");
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&session::session_cookie(None, 0)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A node as the pages show it.
#[derive(Serialize)]
struct NodeRow<'a> {
    #[serde(flatten)]
    node: &'a crate::master::actions::NodeView,
    running: bool,
}

#[derive(Serialize)]
struct ClusterRow<'a> {
    #[serde(flatten)]
    cluster: &'a ClusterView,
    nodes: Vec<NodeRow<'a>>,
    running: usize,
}

fn cluster_row(cluster: &ClusterView) -> ClusterRow<'_> {
    let nodes: Vec<NodeRow> = cluster
        .nodes
        .iter()
        .map(|node| NodeRow {
            node,
            running: node.state == NodeState::Running,
        })
        .collect();
    ClusterRow {
        running: nodes.iter().filter(|n| n.running).count(),
        cluster,
        nodes,
    }
}

#[derive(Deserialize, Default)]
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    name: Option<String>,
    size: Option<String>,
    cpus: Option<String>,
    memory_mib: Option<String>,
    disk_gib: Option<String>,
    /// `base` or `owner/name`; empty means the default image.
    image: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct DashboardQuery {
    done: Option<String>,
    /// The image the create form preselects (the images page's "New cluster from this image").
    image: Option<String>,
}

/// The dashboard: usage against quota, the one-click create (from `image` if one is
/// chosen), and the clusters.
async fn dashboard_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
    image: Option<&str>,
) -> Response {
    let me = match master.me(&session.caller).await {
        Ok(me) => me,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let clusters = match master.list_clusters(&session.caller, None).await {
        Ok(c) => c,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let images = match usable_images(master, &session.caller).await {
        Ok(i) => i,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let rows: Vec<ClusterRow> = clusters.iter().map(cluster_row).collect();
    render(
        master,
        Some(session),
        "dashboard.html",
        status,
        notice(done),
        error,
        minijinja::context! {
            me => me,
            clusters => rows,
            suggested_name => free_name(&clusters),
            default_image => master.config.default_image,
            images => images,
            image => image,
        },
    )
}

pub async fn dashboard(
    State(master): Shared,
    session: Session,
    Query(query): Query<DashboardQuery>,
) -> Response {
    dashboard_page(
        &master,
        &session,
        StatusCode::OK,
        query.done.as_deref(),
        None,
        given(&query.image),
    )
    .await
}

/// The first of `c1`, `c2`, ... that the user has not taken.
fn free_name(clusters: &[ClusterView]) -> String {
    (1..)
        .map(|n| format!("c{n}"))
        .find(|name| !clusters.iter().any(|c| &c.name == name))
        .unwrap()
}

/// A number a person typed, in a form field.
fn parse_number(field: &Option<String>, label: &str) -> Result<Option<f64>, String> {
    super::form_number(field, label, |v| v > 0.0, "a positive number")
}

fn create_request(
    form: &CreateForm,
    fallback_name: String,
) -> Result<CreateClusterRequest, String> {
    let size = parse_number(&form.size, "Nodes")?;
    if size.is_some_and(|s| s.fract() != 0.0 || s > 1000.0) {
        return Err("Nodes: a whole number, please".into());
    }
    let cpus = parse_number(&form.cpus, "CPUs")?;
    let memory = parse_number(&form.memory_mib, "Memory")?;
    let disk = parse_number(&form.disk_gib, "Disk")?;
    Ok(CreateClusterRequest {
        name: given(&form.name)
            .map(str::to_owned)
            .unwrap_or(fallback_name),
        size: size.map(|s| s as u32),
        image: given(&form.image).map(str::to_owned),
        cpu_millis: cpus.map(|c| (c * 1000.0).round().min(u32::MAX as f64) as u32),
        memory_bytes: memory.map(|m| (m * 1048576.0).round().min(u64::MAX as f64) as u64),
        disk_bytes: disk.map(|d| (d * 1073741824.0).round().min(u64::MAX as f64) as u64),
    })
}

pub async fn create_cluster(
    State(master): Shared,
    session: Session,
    Form(form): Form<CreateForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    // Only a one-click create (no name typed) needs the user's clusters, for a free name.
    let fallback = match given(&form.name) {
        Some(name) => name.to_owned(),
        None => match master.list_clusters(&session.caller, None).await {
            Ok(clusters) => free_name(&clusters),
            Err(e) => return render_error(Some(&session), status_of(&e), &e.to_string()),
        },
    };
    let request = match create_request(&form, fallback) {
        Ok(r) => r,
        Err(message) => {
            return dashboard_page(
                &master,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(&message),
                given(&form.image),
            )
            .await;
        }
    };
    match master.create_cluster(&session.caller, &request, None).await {
        Ok(_) => see_other(&format!("/clusters/{}", request.name), "created"),
        Err(e) => {
            dashboard_page(
                &master,
                &session,
                status_of(&e),
                None,
                Some(&e.to_string()),
                given(&form.image),
            )
            .await
        }
    }
}

async fn cluster_page(
    master: &Master,
    session: &Session,
    name: &str,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    let cluster = match master.show_cluster(&session.caller, None, name).await {
        Ok(c) => c,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let ports = match master
        .list_ports(&session.caller, None, session.reached)
        .await
    {
        Ok(ports) => ports
            .into_iter()
            .filter(|p| p.mapping.cluster == name)
            .collect::<Vec<_>>(),
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let row = cluster_row(&cluster);
    render(
        master,
        Some(session),
        "cluster.html",
        status,
        notice(done),
        error,
        minijinja::context! { cluster => row, ports => ports },
    )
}

pub async fn cluster(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Query(query): Query<DoneQuery>,
) -> Response {
    cluster_page(
        &master,
        &session,
        &name,
        StatusCode::OK,
        query.done.as_deref(),
        None,
    )
    .await
}

/// Runs a cluster action from its page: back to the page with `done`, or the page again
/// with the error.
async fn cluster_action<T>(
    master: &Master,
    session: &Session,
    name: &str,
    csrf: &str,
    done: &str,
    action: impl Future<Output = Result<T, ApiError>>,
) -> Response {
    let target = format!("/clusters/{name}");
    cluster_action_to(master, session, name, csrf, &target, done, action).await
}

/// The images new clusters of the caller may start from (`owner/name`), for the create
/// form's choice.
pub(super) async fn usable_images(
    master: &Master,
    caller: &Caller,
) -> Result<Vec<String>, ApiError> {
    Ok(master
        .list_images(caller, false)
        .await?
        .into_iter()
        .filter(|image| image.record.refuse_use(caller.name()).is_none())
        .map(|image| image.reference)
        .collect())
}

/// Runs an action from cluster `name`'s page: on to `target` with `done`, or the cluster's
/// page again with the error.
pub(super) async fn cluster_action_to<T>(
    master: &Master,
    session: &Session,
    name: &str,
    csrf: &str,
    target: &str,
    done: &str,
    action: impl Future<Output = Result<T, ApiError>>,
) -> Response {
    if let Some(r) = session.refuse_forged(csrf) {
        return r;
    }
    match action.await {
        Ok(_) => see_other(target, done),
        Err(e) => {
            cluster_page(
                master,
                session,
                name,
                status_of(&e),
                None,
                Some(&e.to_string()),
            )
            .await
        }
    }
}

pub async fn start_cluster(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let action = master.set_cluster_state(&session.caller, None, &name, true);
    cluster_action(&master, &session, &name, &form.csrf, "started", action).await
}

pub async fn stop_cluster(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let action = master.set_cluster_state(&session.caller, None, &name, false);
    cluster_action(&master, &session, &name, &form.csrf, "stopped", action).await
}

pub async fn scale_out(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let action = master.scale_out(&session.caller, None, &name);
    cluster_action(&master, &session, &name, &form.csrf, "scaled-out", action).await
}

#[derive(Deserialize)]
pub struct ScaleInForm {
    #[serde(default)]
    csrf: String,
    node: u32,
}

pub async fn scale_in(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<ScaleInForm>,
) -> Response {
    let action = master.scale_in(&session.caller, None, &name, form.node);
    cluster_action(&master, &session, &name, &form.csrf, "scaled-in", action).await
}

#[derive(Deserialize)]
pub struct MapPortForm {
    #[serde(default)]
    csrf: String,
    node: u32,
    #[serde(default)]
    port: String,
    public_port: Option<String>,
}

pub async fn map_port(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<MapPortForm>,
) -> Response {
    let number = |text: &str, label: &str| {
        text.trim()
            .parse::<u64>()
            .map_err(|_| format!("{label}: {text:?} is not a port number (1 to 65535)"))
    };
    let request = number(&form.port, "Port in the node").and_then(|port| {
        Ok(MapPortRequest {
            port,
            public_port: given(&form.public_port)
                .map(|p| number(p, "Public port"))
                .transpose()?,
        })
    });
    let request = match request {
        Ok(r) => r,
        Err(message) => {
            return cluster_page(
                &master,
                &session,
                &name,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(&message),
            )
            .await;
        }
    };
    let action = master.map_port(
        &session.caller,
        None,
        &name,
        form.node,
        &request,
        session.reached,
    );
    cluster_action(&master, &session, &name, &form.csrf, "mapped", action).await
}

pub async fn unmap_port(
    State(master): Shared,
    session: Session,
    Path((name, public_port)): Path<(String, u16)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let action = master.unmap_port(&session.caller, None, public_port);
    cluster_action(&master, &session, &name, &form.csrf, "unmapped", action).await
}

pub async fn confirm_delete(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
) -> Response {
    match master.show_cluster(&session.caller, None, &name).await {
        Ok(cluster) => render(
            &master,
            Some(&session),
            "confirm_delete.html",
            StatusCode::OK,
            None,
            None,
            minijinja::context! { cluster => cluster },
        ),
        Err(e) => render_error(Some(&session), status_of(&e), &e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    /// The user typed the cluster's name to confirm.
    #[serde(default)]
    confirm: String,
}

pub async fn delete_cluster(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    if form.confirm.trim() != name {
        return render_error(
            Some(&session),
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!(
                "Type the cluster's name ({name}) to confirm the delete. Nothing was deleted."
            ),
        );
    }
    // Typing the name was the confirmation: running nodes are stopped on the way.
    match master
        .delete_cluster(&session.caller, None, &name, true)
        .await
    {
        Ok(_) => see_other("/", "deleted"),
        Err(e) => {
            cluster_page(
                &master,
                &session,
                &name,
                status_of(&e),
                None,
                Some(&e.to_string()),
            )
            .await
        }
    }
}

pub async fn terminal(
    State(master): Shared,
    session: Session,
    Path((name, index)): Path<(String, u32)>,
) -> Response {
    let cluster = match master.show_cluster(&session.caller, None, &name).await {
        Ok(c) => c,
        Err(e) => return render_error(Some(&session), status_of(&e), &e.to_string()),
    };
    let Some(node) = cluster.nodes.iter().find(|n| n.index == index) else {
        return render_error(
            Some(&session),
            StatusCode::NOT_FOUND,
            &format!("Cluster {name} has no node {index}."),
        );
    };
    render(
        &master,
        Some(&session),
        "terminal.html",
        StatusCode::OK,
        None,
        None,
        minijinja::context! {
            cluster => cluster.name,
            node => node,
            socket => format!("/api/v1/clusters/{name}/nodes/{index}/terminal"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::render_page;
    use super::*;
    use crate::master::actions::NodeView;
    use crate::model::quota::NodeSize;
    use crate::model::vcluster::{ClusterState, IdleStop};

    fn stopped_cluster(nodes: u32, idle_stop: Option<IdleStop>) -> ClusterView {
        let size = NodeSize {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 10 << 30,
        };
        ClusterView {
            name: "c1".into(),
            user: "alice".into(),
            image: "base".into(),
            state: ClusterState::Stopped,
            node_size: size,
            created_at: 1_795_000_000,
            nodes: (0..nodes)
                .map(|index| NodeView {
                    index,
                    id: crate::model::vcluster::node_id("alice", "c1", index),
                    hostname: crate::model::vnode::hostname(index),
                    state: NodeState::Stopped,
                    address: None,
                    host: "h1".into(),
                    image: "base".into(),
                    cpu_millis: size.cpu_millis,
                    memory_bytes: size.memory_bytes,
                    disk_bytes: size.disk_bytes,
                    reason: None,
                })
                .collect(),
            idle_stop,
        }
    }

    fn render_cluster(cluster: &ClusterView) -> String {
        let page =
            minijinja::context! { cluster => cluster_row(cluster), ports => Vec::<()>::new() };
        render_page("cluster.html", false, page)
    }

    #[test]
    fn a_cluster_stopped_for_idleness_says_so_until_it_starts() {
        let stop = IdleStop {
            at: 1_795_000_000,
            idle_secs: 5400,
        };
        let html = render_cluster(&stopped_cluster(1, Some(stop)));
        assert!(
            html.contains(
                "Stopped on 2026-11-18 11:06 UTC after 1 h 30 min of inactivity (your group's \
                 idle limit). Start it again when you need it."
            ),
            "{html}"
        );
        // In the live region, which a start re-renders without it.
        let live = html.find(r#"id="live""#).unwrap();
        assert!(html.find(r#"id="idle-stop""#).unwrap() > live, "{html}");
        let html = render_cluster(&stopped_cluster(1, None));
        assert!(!html.contains("idle-stop"), "{html}");
    }

    #[test]
    fn the_cluster_page_has_a_usage_section_with_a_card_per_node() {
        let html = render_cluster(&stopped_cluster(2, None));
        assert!(
            html.contains(r#"data-metrics="cluster" data-source="/api/v1/clusters/c1/metrics""#),
            "{html}"
        );
        assert!(html.contains(r#"data-node-index="1""#), "{html}");
        assert!(html.contains("data-total"), "{html}");
        assert!(
            html.contains(r#"<script src="/static/charts.js">"#),
            "{html}"
        );
        assert!(html.contains(r#"href="/static/uPlot.min.css""#), "{html}");
        // The charts stay out of the live region, whose refreshes would replace them.
        let live = html.find(r#"id="live""#).unwrap();
        let live_end = live + html[live..].find("</section>").unwrap();
        assert!(html.find(r#"id="usage""#).unwrap() > live_end, "{html}");
        // One node: its own charts are the cluster's.
        let html = render_cluster(&stopped_cluster(1, None));
        assert!(!html.contains("data-total"), "{html}");
    }

    #[test]
    fn create_forms_read_people_units() {
        let form = CreateForm {
            size: Some("3".into()),
            cpus: Some("0.5".into()),
            memory_mib: Some("512".into()),
            disk_gib: Some(" ".into()),
            ..Default::default()
        };
        let request = create_request(&form, "c2".into()).unwrap();
        assert_eq!(request.name, "c2");
        assert_eq!(request.size, Some(3));
        assert_eq!(request.cpu_millis, Some(500));
        assert_eq!(request.memory_bytes, Some(512 << 20));
        assert_eq!(request.disk_bytes, None);
        // The default image unless one is chosen.
        assert_eq!(request.image, None);
        let from_image = CreateForm {
            image: Some("alice/web".into()),
            ..Default::default()
        };
        let request = create_request(&from_image, "c1".into()).unwrap();
        assert_eq!(request.image.as_deref(), Some("alice/web"));
        let bad = CreateForm {
            size: Some("2.5".into()),
            ..Default::default()
        };
        assert!(create_request(&bad, "c1".into()).is_err());
        let bad = CreateForm {
            cpus: Some("-1".into()),
            ..Default::default()
        };
        assert!(
            create_request(&bad, "c1".into())
                .unwrap_err()
                .contains("CPUs")
        );
    }
}
