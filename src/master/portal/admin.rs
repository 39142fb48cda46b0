//! The administrators' pages: users, groups with their quotas and default sizes, hosts with
//! their capacity, drains and usage charts, and the usage accounting (totals per user, the
//! CSV export). The actions refuse non-administrators themselves; the pages only show what
//! the actions return.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{
    CsrfOnly, DoneQuery, Peer, Session, given, notice, render, render_error, see_other, status_of,
};
use crate::master::Master;
use crate::master::actions::{GroupPatch, NewUser, QuotaPatch, UserPatch};
use crate::model::account::{AccountStatus, AuthMethod};
use crate::model::metrics::{DAY_SECS, date_of_day, day_of_date};
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
    Peer(peer): Peer,
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
        ..Default::default()
    };
    match master
        .update_user(&session.caller, &name, &patch, &peer)
        .await
    {
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
    /// Destinations of the site the members' vnodes may also reach, separated by spaces or
    /// commas (`model::egress`); empty: none.
    egress_allow: Option<String>,
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
    let egress_allow = match &form.egress_allow {
        None => None,
        Some(text) => {
            let rules: Vec<String> = text
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|rule| !rule.is_empty())
                .map(str::to_owned)
                .collect();
            Some(crate::model::egress::parse_rules(&rules).map_err(|e| e.to_string())?)
        }
    };
    Ok(GroupPatch {
        admin: form.admin.as_ref().map(|a| a == "on" || a == "true"),
        quota: Some(quota),
        defaults,
        egress_allow,
        batch: None,
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
            egress_allow: patch.egress_allow.clone().unwrap_or_default(),
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

#[derive(Deserialize, Default)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

/// One user's (or everyone's) hours over the chosen days.
#[derive(Serialize, Default, Debug, PartialEq)]
struct UsageTotal {
    user: String,
    /// Days with a line in the ledger.
    days: u32,
    vnode_hours: f64,
    cpu_hours: f64,
    memory_gib_hours: f64,
}

/// The usage page's values: each user's sums over the ledger's CSV (`user,date,vnode_hours,
/// cpu_hours,memory_gib_hours`, a header line first), everyone's, and the days chosen.
fn usage_context(csv: &str, from: &str, to: &str) -> minijinja::Value {
    let mut users: BTreeMap<&str, UsageTotal> = BTreeMap::new();
    let mut sum = UsageTotal::default();
    for line in csv.lines().skip(1) {
        let [user, _date, vnode, cpu, memory] = line.split(',').collect::<Vec<_>>()[..] else {
            continue;
        };
        let hours = |text: &str| text.parse::<f64>().unwrap_or(0.0);
        for total in [users.entry(user).or_default(), &mut sum] {
            total.days += 1;
            total.vnode_hours += hours(vnode);
            total.cpu_hours += hours(cpu);
            total.memory_gib_hours += hours(memory);
        }
    }
    let totals: Vec<UsageTotal> = users
        .into_iter()
        .map(|(user, total)| UsageTotal {
            user: user.to_owned(),
            ..total
        })
        .collect();
    minijinja::context! { from => from, to => to, totals => totals, sum => sum }
}

/// Usage from `from` to `to` (`YYYY-MM-DD`, checked): totals per user and the CSV download.
fn usage_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    (from, to): (&str, &str),
    error: Option<&str>,
) -> Response {
    match master.usage_csv(&session.caller, from, to) {
        Ok(csv) => render(
            master,
            Some(session),
            "admin_usage.html",
            status,
            None,
            error,
            usage_context(&csv, from, to),
        ),
        Err(e) => render_error(Some(session), status_of(&e), &e.to_string()),
    }
}

/// The usage page, by default for this month so far (UTC).
pub async fn usage(
    State(master): Shared,
    session: Session,
    Query(q): Query<UsageQuery>,
) -> Response {
    let today = date_of_day(crate::master::now_secs() / DAY_SECS);
    let first = format!("{}-01", &today[..7]);
    let from = given(&q.from).unwrap_or(&first);
    let to = given(&q.to).unwrap_or(&today);
    // The dates come from the URL: checked here, so that a link cannot make the page repeat
    // text of someone's choosing in its error.
    match (day_of_date(from), day_of_date(to)) {
        (Some(f), Some(t)) if f <= t => {
            usage_page(&master, &session, StatusCode::OK, (from, to), None)
        }
        _ => usage_page(
            &master,
            &session,
            StatusCode::UNPROCESSABLE_ENTITY,
            (&first, &today),
            Some("Choose two dates (YYYY-MM-DD), the first not after the last."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::render_page;
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
        // Egress allowances: spaces or commas between; empty removes them; a bad one says so.
        let egress = |text: &str| {
            group_patch(&GroupForm {
                egress_allow: Some(text.into()),
                ..Default::default()
            })
        };
        let rules = egress("10.9.0.0/16:22, 192.168.1.5  172.16.0.0/12:8000-8099")
            .unwrap()
            .egress_allow
            .unwrap();
        let texts: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            texts,
            [
                "10.9.0.0/16:22",
                "192.168.1.5/32",
                "172.16.0.0/12:8000-8099"
            ]
        );
        assert_eq!(egress("  ").unwrap().egress_allow, Some(Vec::new()));
        assert!(
            egress("10.0.0.0/8 nowhere")
                .unwrap_err()
                .contains("not a destination")
        );
        assert_eq!(
            group_patch(&GroupForm::default()).unwrap().egress_allow,
            None
        );
    }

    #[test]
    fn the_groups_page_shows_each_groups_egress_allowances() {
        let mut groups = crate::model::quota::default_groups();
        let plain = groups.pop().unwrap();
        let mut open = groups.pop().unwrap();
        open.egress_allow = crate::model::egress::parse_rules(&["10.9.0.0/16:22".into()]).unwrap();
        let html = render_page(
            "admin_groups.html",
            true,
            serde_json::json!({ "groups": [open, plain], "default_group": "foundation" }),
        );
        assert!(
            html.contains(r#"name="egress_allow" value="10.9.0.0/16:22""#),
            "{html}"
        );
        assert!(html.contains(r#"name="egress_allow" value="""#), "{html}");
    }

    #[test]
    fn the_usage_page_adds_up_each_user_and_offers_the_csv() {
        let render = |csv| {
            let page = usage_context(csv, "2026-11-01", "2026-11-30");
            render_page("admin_usage.html", true, page)
        };
        let html = render(
            "user,date,vnode_hours,cpu_hours,memory_gib_hours\n\
             alice,2026-11-01,2.0000,1.0000,4.0000\n\
             alice,2026-11-02,1.5000,0.2500,3.0000\n\
             <bob>,2026-11-02,24.0000,0.0000,12.0000\n",
        );
        // The form downloads the CSV from the API, for the dates shown.
        assert!(html.contains(r#"formaction="/api/v1/usage""#), "{html}");
        assert!(html.contains(r#"name="from" type="date" required value="2026-11-01""#));
        assert!(html.contains(r#"name="to" type="date" required value="2026-11-30""#));
        assert!(
            html.contains(r#"<a href="/admin/usage">Usage</a>"#),
            "{html}"
        );
        assert!(html.contains(r#"<tr data-usage-user="alice">"#), "{html}");
        assert!(
            html.contains("<td>alice</td><td>2</td><td>3.5</td><td>1.25</td><td>7.0</td>"),
            "{html}"
        );
        // User names are escaped like everything else.
        assert!(
            html.contains("<td>&lt;bob&gt;</td><td>1</td><td>24.0</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td>27.5</td><td>1.25</td><td>19.0</td>"),
            "{html}"
        );
        let empty = render("user,date,vnode_hours,cpu_hours,memory_gib_hours\n");
        assert!(!empty.contains("usage-totals"), "{empty}");
        assert!(
            empty.contains("No node ran from 2026-11-01 to 2026-11-30"),
            "{empty}"
        );
    }
}
