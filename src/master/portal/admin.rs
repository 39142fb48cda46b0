//! The administrators' pages: users, groups with their quotas and default sizes, and hosts
//! with their capacity and drains. The actions refuse non-administrators themselves; the
//! pages only show what the actions return.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{
    CsrfOnly, DoneQuery, Session, given, notice, render, render_error, see_other, status_of,
};
use crate::master::Master;
use crate::master::actions::{GroupPatch, NewUser, QuotaPatch, UserPatch};
use crate::model::account::{AccountStatus, AuthMethod};
use crate::model::quota::{Group, NodeSize};

type Shared = State<Arc<Master>>;

/// Renders an admin page whose values come from `load`, or the error page.
macro_rules! admin_page {
    ($master:expr, $session:expr, $template:literal, $status:expr, $done:expr, $error:expr, { $($name:ident => $load:expr),* $(,)? }) => {{
        $(let $name = match $load.await {
            Ok(v) => v,
            Err(e) => return render_error(Some($session), status_of(&e), &e.to_string()),
        };)*
        render($master, Some($session), $template, $status, notice($done), $error,
               minijinja::context! { $($name => $name),* })
    }};
}

async fn users_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    admin_page!(master, session, "admin_users.html", status, done, error, {
        users => master.list_users(&session.caller),
        groups => master.list_groups(&session.caller),
    })
}

pub async fn users(
    State(master): Shared,
    session: Session,
    Query(q): Query<DoneQuery>,
) -> Response {
    users_page(&master, &session, StatusCode::OK, q.done.as_deref(), None).await
}

#[derive(Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    auth: String,
    password: Option<String>,
    group: Option<String>,
}

pub async fn create_user(
    State(master): Shared,
    session: Session,
    Form(form): Form<NewUserForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    let auth = if form.auth == "pam" {
        AuthMethod::Pam
    } else {
        AuthMethod::Local
    };
    let new = NewUser {
        name: form.name.trim().to_owned(),
        password: given(&form.password).map(str::to_owned),
        group: given(&form.group).map(str::to_owned),
        auth: Some(auth),
    };
    match master.create_user(&session.caller, &new).await {
        Ok(_) => see_other("/admin/users", "user-created"),
        Err(e) => users_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    csrf: String,
    group: Option<String>,
    status: Option<String>,
}

pub async fn update_user(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<UserForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    let status = match given(&form.status) {
        None => None,
        Some("normal") => Some(AccountStatus::Normal),
        Some("applying") => Some(AccountStatus::Applying),
        Some("locked") => Some(AccountStatus::Locked),
        Some(other) => {
            let message = format!("{other:?} is not an account status");
            return users_page(
                &master,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(&message),
            )
            .await;
        }
    };
    let patch = UserPatch {
        group: given(&form.group).map(str::to_owned),
        status,
        password: None,
    };
    match master.update_user(&session.caller, &name, &patch).await {
        Ok(_) => see_other("/admin/users", "user-saved"),
        Err(e) => users_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

pub async fn delete_user(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    match master.delete_user(&session.caller, &name).await {
        Ok(()) => see_other("/admin/users", "user-deleted"),
        Err(e) => users_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

async fn groups_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    admin_page!(master, session, "admin_groups.html", status, done, error, {
        groups => master.list_groups(&session.caller),
        default_group => master.default_group(&session.caller),
    })
}

pub async fn groups(
    State(master): Shared,
    session: Session,
    Query(q): Query<DoneQuery>,
) -> Response {
    groups_page(&master, &session, StatusCode::OK, q.done.as_deref(), None).await
}

/// A group's numbers as the form shows them: CPUs, MiB, GiB, minutes.
#[derive(Deserialize, Default)]
pub struct GroupForm {
    #[serde(default)]
    csrf: String,
    name: Option<String>,
    admin: Option<String>,
    cpus: Option<String>,
    memory_gib: Option<String>,
    disk_gib: Option<String>,
    vnodes: Option<String>,
    images: Option<String>,
    image_gib: Option<String>,
    port_mappings: Option<String>,
    idle_minutes: Option<String>,
    node_cpus: Option<String>,
    node_memory_mib: Option<String>,
    node_disk_gib: Option<String>,
}

fn number(field: &Option<String>, label: &str) -> Result<Option<f64>, String> {
    super::form_number(
        field,
        label,
        |v| (0.0..1e15).contains(&v),
        "a number of zero or more",
    )
}

fn whole(field: &Option<String>, label: &str) -> Result<Option<u32>, String> {
    match number(field, label)? {
        Some(v) if v.fract() != 0.0 || v > u32::MAX as f64 => {
            Err(format!("{label}: a whole number, please"))
        }
        v => Ok(v.map(|v| v as u32)),
    }
}

fn scaled(field: &Option<String>, label: &str, unit: f64) -> Result<Option<u64>, String> {
    Ok(number(field, label)?.map(|v| (v * unit).round() as u64))
}

/// The form as a patch: only the fields that were filled in change.
fn group_patch(form: &GroupForm) -> Result<GroupPatch, String> {
    let quota = QuotaPatch {
        cpu_millis: scaled(&form.cpus, "CPUs", 1000.0)?,
        memory_bytes: scaled(&form.memory_gib, "Memory", 1073741824.0)?,
        disk_bytes: scaled(&form.disk_gib, "Disk", 1073741824.0)?,
        vnodes: whole(&form.vnodes, "Nodes")?,
        images: whole(&form.images, "Images")?,
        image_bytes: scaled(&form.image_gib, "Image size", 1073741824.0)?,
        port_mappings: whole(&form.port_mappings, "Port mappings")?,
        idle_secs: scaled(&form.idle_minutes, "Idle time", 60.0)?,
    };
    let node_cpus = scaled(&form.node_cpus, "Node CPUs", 1000.0)?;
    let node_memory = scaled(&form.node_memory_mib, "Node memory", 1048576.0)?;
    let node_disk = scaled(&form.node_disk_gib, "Node disk", 1073741824.0)?;
    let defaults = match (node_cpus, node_memory, node_disk) {
        (None, None, None) => None,
        (Some(c), Some(m), Some(d)) => Some(NodeSize {
            cpu_millis: c.min(u32::MAX as u64) as u32,
            memory_bytes: m,
            disk_bytes: d,
        }),
        _ => return Err("A node's default size needs CPUs, memory and disk together.".into()),
    };
    Ok(GroupPatch {
        admin: form.admin.as_ref().map(|a| a == "on" || a == "true"),
        quota: Some(quota),
        defaults,
    })
}

pub async fn create_group(
    State(master): Shared,
    session: Session,
    Form(form): Form<GroupForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    let fail = |status, message: String| {
        let master = master.clone();
        let session = &session;
        async move { groups_page(&master, session, status, None, Some(&message)).await }
    };
    let name = given(&form.name).unwrap_or_default().to_owned();
    let patch = match group_patch(&form) {
        Ok(p) => p,
        Err(m) => return fail(StatusCode::UNPROCESSABLE_ENTITY, m).await,
    };
    // A new group starts from the default group's numbers; the form overrides them.
    let template = match master.list_groups(&session.caller).await {
        Ok(groups) => groups
            .into_iter()
            .find(|g| g.name == crate::model::quota::DEFAULT_GROUP),
        Err(e) => return fail(status_of(&e), e.to_string()).await,
    };
    let mut group = match template {
        Some(g) => Group {
            name: name.clone(),
            admin: false,
            ..g
        },
        None => return fail(StatusCode::CONFLICT, "the default group is missing".into()).await,
    };
    if let Some(quota) = &patch.quota {
        quota.apply(&mut group.quota);
    }
    if let Some(defaults) = patch.defaults {
        group.defaults = defaults;
    }
    group.admin = patch.admin.unwrap_or(false);
    match master.create_group(&session.caller, &group).await {
        Ok(_) => see_other("/admin/groups", "group-created"),
        Err(e) => fail(status_of(&e), e.to_string()).await,
    }
}

pub async fn update_group(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<GroupForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    let patch = match group_patch(&form) {
        Ok(mut p) => {
            // An unticked checkbox sends nothing: on this form that means "not an admin".
            p.admin = Some(p.admin.unwrap_or(false));
            p
        }
        Err(m) => {
            return groups_page(
                &master,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(&m),
            )
            .await;
        }
    };
    match master.update_group(&session.caller, &name, &patch).await {
        Ok(_) => see_other("/admin/groups", "group-saved"),
        Err(e) => groups_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

pub async fn delete_group(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    match master.delete_group(&session.caller, &name).await {
        Ok(()) => see_other("/admin/groups", "group-deleted"),
        Err(e) => groups_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

#[derive(Deserialize)]
pub struct DefaultGroupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    group: String,
}

pub async fn set_default_group(
    State(master): Shared,
    session: Session,
    Form(form): Form<DefaultGroupForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    match master.set_default_group(&session.caller, &form.group).await {
        Ok(()) => see_other("/admin/groups", "default-group"),
        Err(e) => groups_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

async fn hosts_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    admin_page!(master, session, "admin_hosts.html", status, done, error, {
        hosts => master.hosts(&session.caller),
    })
}

pub async fn hosts(
    State(master): Shared,
    session: Session,
    Query(q): Query<DoneQuery>,
) -> Response {
    hosts_page(&master, &session, StatusCode::OK, q.done.as_deref(), None).await
}

async fn set_drain(
    master: Arc<Master>,
    session: Session,
    name: String,
    csrf: String,
    drain: bool,
) -> Response {
    if let Some(r) = session.refuse_forged(&csrf) {
        return r;
    }
    match master.drain(&session.caller, &name, drain).await {
        Ok(()) => see_other("/admin/hosts", if drain { "draining" } else { "undrained" }),
        Err(e) => hosts_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

pub async fn drain(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    set_drain(master, session, name, form.csrf, true).await
}

pub async fn undrain(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    set_drain(master, session, name, form.csrf, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_forms_change_only_what_was_filled_in() {
        let form = GroupForm {
            cpus: Some("8".into()),
            memory_gib: Some("".into()),
            vnodes: Some("12".into()),
            idle_minutes: Some("90".into()),
            ..Default::default()
        };
        let patch = group_patch(&form).unwrap();
        let quota = patch.quota.unwrap();
        assert_eq!(quota.cpu_millis, Some(8000));
        assert_eq!(quota.memory_bytes, None);
        assert_eq!(quota.vnodes, Some(12));
        assert_eq!(quota.idle_secs, Some(5400));
        assert!(patch.defaults.is_none());
        let half = GroupForm {
            node_cpus: Some("1".into()),
            ..Default::default()
        };
        assert!(group_patch(&half).is_err());
        let bad = GroupForm {
            vnodes: Some("1.5".into()),
            ..Default::default()
        };
        assert!(group_patch(&bad).unwrap_err().contains("whole"));
    }
}
