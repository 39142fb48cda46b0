//! The batch job pages: the queue (a user's jobs with their place, reason and expected
//! start), the submit form (tasks as fieldsets, a script editor, "Check" to validate without
//! queueing, field errors shown where they belong, nothing typed lost), a job's page (its
//! tasks as a graph of levels, every instance with hosts, exit code and what it used,
//! cancel) with live output, and the administrators' page (every job, hold, release,
//! cancel, the fair-share table). Everything goes through the same actions as the API.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{
    CsrfOnly, DoneQuery, Session, form_number, given, notice, render, render_error, see_other,
    status_of,
};
use crate::master::Master;
use crate::master::actions::jobs::{JobFilter, JobSummary, JobView, OutputStream};
use crate::master::errors::ApiError;
use crate::model::jobs::spec::TaskRequest;
use crate::model::jobs::{JobRequest, JobSpec};

type Shared = State<Arc<Master>>;

/// The most instances of one task the job page lists (an array may have 10,000).
const INSTANCES_SHOWN: usize = 200;

/// A job in the queue tables: its counts as words.
#[derive(Serialize)]
struct JobRow<'a> {
    #[serde(flatten)]
    job: &'a JobSummary,
    counts_text: String,
}

fn job_row(job: &JobSummary) -> JobRow<'_> {
    let counts_text = job
        .counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ");
    JobRow { job, counts_text }
}

pub async fn jobs(
    State(master): Shared,
    session: Session,
    Query(query): Query<DoneQuery>,
) -> Response {
    let listed = master
        .list_jobs(&session.caller, &JobFilter::default())
        .await;
    let mut jobs = match listed {
        Ok(jobs) => jobs,
        Err(e) => return render_error(Some(&session), status_of(&e), &e.to_string()),
    };
    jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
    let (active, ended): (Vec<&JobSummary>, Vec<&JobSummary>) =
        jobs.iter().partition(|j| j.ended_at.is_none());
    render(
        &master,
        Some(&session),
        "jobs.html",
        StatusCode::OK,
        notice(query.done.as_deref()),
        None,
        minijinja::context! {
            active => active.into_iter().map(job_row).collect::<Vec<_>>(),
            ended => ended.into_iter().take(100).map(job_row).collect::<Vec<_>>(),
        },
    )
}

/// One task's fields as typed in the form, kept as text so that a refused form comes back
/// as it was.
#[derive(Debug, Clone, Default, Serialize)]
struct TaskFields {
    name: String,
    depends_on: String,
    image: String,
    nodes: String,
    cpu: String,
    memory: String,
    disk: String,
    script: String,
    command: String,
    env: String,
    workdir: String,
    run_on: String,
    array: String,
    retries: String,
    retry_backoff: String,
    timeout: String,
}

impl TaskFields {
    fn is_empty(&self) -> bool {
        self.name.trim().is_empty()
            && self.script.trim().is_empty()
            && self.command.trim().is_empty()
    }

    fn set(&mut self, field: &str, value: String) {
        let slot = match field {
            "name" => &mut self.name,
            "depends_on" => &mut self.depends_on,
            "image" => &mut self.image,
            "nodes" => &mut self.nodes,
            "cpu" => &mut self.cpu,
            "memory" => &mut self.memory,
            "disk" => &mut self.disk,
            "script" => &mut self.script,
            "command" => &mut self.command,
            "env" => &mut self.env,
            "workdir" => &mut self.workdir,
            "run_on" => &mut self.run_on,
            "array" => &mut self.array,
            "retries" => &mut self.retries,
            "retry_backoff" => &mut self.retry_backoff,
            "timeout" => &mut self.timeout,
            _ => return,
        };
        *slot = value;
    }
}

/// The whole submit form as typed.
#[derive(Debug, Clone, Default, Serialize)]
struct JobForm {
    name: String,
    priority: String,
    tasks: Vec<TaskFields>,
    /// Which button: `submit`, `check` or `add`.
    #[serde(skip)]
    action: String,
    #[serde(skip)]
    csrf: String,
}

/// The most tasks the form takes (the spec's own limit).
const MAX_FORM_TASKS: usize = crate::model::jobs::spec::MAX_TASKS;

impl JobForm {
    /// From the posted pairs: `name`, `priority`, `tasks[N].field`, `action`, `csrf`.
    fn parse(pairs: Vec<(String, String)>) -> JobForm {
        let mut form = JobForm::default();
        let mut tasks: BTreeMap<usize, TaskFields> = BTreeMap::new();
        for (key, value) in pairs {
            match key.as_str() {
                "name" => form.name = value,
                "priority" => form.priority = value,
                "action" => form.action = value,
                "csrf" => form.csrf = value,
                _ => {
                    let Some((index, field)) = key
                        .strip_prefix("tasks[")
                        .and_then(|rest| rest.split_once("]."))
                    else {
                        continue;
                    };
                    let Ok(index) = index.parse::<usize>() else {
                        continue;
                    };
                    if index < MAX_FORM_TASKS {
                        tasks.entry(index).or_default().set(field, value);
                    }
                }
            }
        }
        form.tasks = tasks.into_values().collect();
        form
    }

    /// The API request the form says, or the first field that says nothing sensible (its
    /// input's name and why). Empty tasks are left out.
    fn request(&self) -> Result<JobRequest, (String, String)> {
        let priority = form_number(
            &Some(self.priority.clone()),
            "Priority",
            |v| v.fract() == 0.0 && (-1000.0..=1000.0).contains(&v),
            "a whole number from -1000 to 1000",
        )
        .map_err(|e| ("priority".to_owned(), e))?;
        let mut tasks = Vec::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if t.is_empty() {
                continue;
            }
            tasks.push(t.request(i)?);
        }
        Ok(JobRequest {
            name: self.name.trim().to_owned(),
            priority: priority.map(|p| p as i32),
            tasks,
        })
    }
}

impl TaskFields {
    fn request(&self, i: usize) -> Result<TaskRequest, (String, String)> {
        let at = |field: &str| format!("tasks[{i}].{field}");
        let number = |field: &str, text: &str, label: &str, scale: f64, what: &str| {
            form_number(
                &Some(text.to_owned()),
                &format!("Task {}: {label}", i + 1),
                |v| v > 0.0 && v * scale < u64::MAX as f64,
                what,
            )
            .map(|v| v.map(|v| (v * scale).round() as u64))
            .map_err(|e| (at(field), e))
        };
        let nodes = number("nodes", &self.nodes, "nodes", 1.0, "a number of nodes")?;
        let retries = match given(&Some(self.retries.clone())) {
            None => None,
            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                (
                    at("retries"),
                    format!("Task {}: retries: {text:?} is not a whole number", i + 1),
                )
            })?),
        };
        let mut env = BTreeMap::new();
        for line in self.env.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                return Err((
                    at("env"),
                    format!("Task {}: environment: {line:?} is not NAME=value", i + 1),
                ));
            };
            env.insert(key.trim().to_owned(), value.to_owned());
        }
        let text = |value: &str| given(&Some(value.to_owned())).map(str::to_owned);
        let command: Vec<serde_json::Value> = self
            .command
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::Value::String(l.to_owned()))
            .collect();
        Ok(TaskRequest {
            name: self.name.trim().to_owned(),
            depends_on: self
                .depends_on
                .split([',', ' '])
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect(),
            image: text(&self.image),
            nodes: nodes.map(|n| n.min(u64::from(u32::MAX)) as u32),
            cpu_millis: number("cpu", &self.cpu, "CPUs", 1000.0, "a number of CPUs")?
                .map(|n| n.min(u64::from(u32::MAX)) as u32),
            memory_bytes: number("memory", &self.memory, "memory", 1048576.0, "MiB")?,
            disk_bytes: number("disk", &self.disk, "disk", 1073741824.0, "GiB")?,
            command: (!command.is_empty()).then_some(serde_json::Value::Array(command)),
            script: text(&self.script).map(|s| s.replace("\r\n", "\n")),
            env,
            workdir: text(&self.workdir),
            run_on: text(&self.run_on),
            array: text(&self.array),
            retries,
            retry_backoff: text(&self.retry_backoff).map(serde_json::Value::String),
            timeout: text(&self.timeout).map(serde_json::Value::String),
            priority: None,
        })
    }
}

/// The API's field path as the form's input name: sizes have units of their own there.
fn form_field(field: &str) -> String {
    for (api, form) in [
        (".cpu_millis", ".cpu"),
        (".memory_bytes", ".memory"),
        (".disk_bytes", ".disk"),
    ] {
        if let Some(task) = field.strip_suffix(api) {
            return format!("{task}{form}");
        }
    }
    field.to_owned()
}

/// A blank form: one task running a script on the default image.
fn blank_form() -> JobForm {
    JobForm {
        tasks: vec![TaskFields {
            name: "main".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn form_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    form: &JobForm,
    checked: Option<&JobSpec>,
    error: Option<(&str, &str)>,
) -> Response {
    let images = match super::pages::usable_images(master, &session.caller).await {
        Ok(i) => i,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let me = match master.me(&session.caller).await {
        Ok(me) => me,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let checked = checked.map(|spec| {
        let instances: u32 = spec.tasks.iter().map(|t| t.instances()).sum();
        format!(
            "The job is valid: {} task(s), {instances} instance(s). Nothing has been queued yet.",
            spec.tasks.len()
        )
    });
    render(
        master,
        Some(session),
        "job_new.html",
        status,
        checked.as_deref(),
        error.map(|(_, message)| message),
        minijinja::context! {
            form => form,
            invalid => error.map(|(field, _)| form_field(field)),
            images => images,
            default_image => master.config.default_image,
            defaults => me.defaults,
            max_tasks => MAX_FORM_TASKS,
        },
    )
}

pub async fn new_job(State(master): Shared, session: Session) -> Response {
    form_page(&master, &session, StatusCode::OK, &blank_form(), None, None).await
}

/// The submit form's buttons: add a task (the form again with one more), check (validated
/// against the site, nothing queued), or submit (on to the job's page).
pub async fn submit_job(
    State(master): Shared,
    session: Session,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let mut form = JobForm::parse(pairs);
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    if form.action == "add" {
        if form.tasks.len() < MAX_FORM_TASKS {
            form.tasks.push(TaskFields::default());
        }
        return form_page(&master, &session, StatusCode::OK, &form, None, None).await;
    }
    let request = match form.request() {
        Ok(r) => r,
        Err((field, message)) => {
            return form_page(
                &master,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                &form,
                None,
                Some((&field, &message)),
            )
            .await;
        }
    };
    let outcome = if form.action == "check" {
        master
            .check_job(&session.caller, &request)
            .await
            .map(|spec| (None, Some(spec)))
    } else {
        master
            .submit_job(&session.caller, &request)
            .await
            .map(|job| (Some(job.summary.id), None))
    };
    match outcome {
        Ok((Some(id), _)) => see_other(&format!("/jobs/{id}"), "job-submitted"),
        Ok((None, spec)) => {
            form_page(
                &master,
                &session,
                StatusCode::OK,
                &form,
                spec.as_ref(),
                None,
            )
            .await
        }
        Err(e) => {
            let field = match &e {
                ApiError::Input(input) => input.field.to_string(),
                _ => String::new(),
            };
            form_page(
                &master,
                &session,
                status_of(&e),
                &form,
                None,
                Some((&field, &e.to_string())),
            )
            .await
        }
    }
}

/// The tasks of a job by level: level 0 needs nothing, level n needs something of level n-1.
fn levels(job: &JobView) -> Vec<Vec<usize>> {
    let mut level: Vec<usize> = vec![0; job.tasks.len()];
    // Tasks come in an order where dependencies may follow: settle by repeated passes
    // (the spec has no cycles; at most one pass per task).
    for _ in 0..job.tasks.len() {
        let mut changed = false;
        for (i, task) in job.tasks.iter().enumerate() {
            let wanted = task
                .depends_on
                .iter()
                .filter_map(|d| job.tasks.iter().position(|t| &t.name == d))
                .map(|d| level[d] + 1)
                .max()
                .unwrap_or(0);
            if wanted != level[i] {
                level[i] = wanted;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let depth = level.iter().max().map_or(0, |m| m + 1);
    (0..depth)
        .map(|l| (0..job.tasks.len()).filter(|&i| level[i] == l).collect())
        .collect()
}

fn job_context(job: &JobView, admin: bool, owner: bool) -> minijinja::Value {
    let tasks: Vec<minijinja::Value> = job
        .tasks
        .iter()
        .map(|task| {
            let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
            for i in &task.instances {
                *counts.entry(i.state.as_str()).or_default() += 1;
            }
            let counts_text = counts
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ");
            let spec = job.spec.task(&task.name);
            minijinja::context! {
                name => task.name,
                state => task.state,
                depends_on => task.depends_on,
                counts_text => counts_text,
                array => spec.is_some_and(|s| s.array.is_some()),
                nodes => spec.map_or(1, |s| s.nodes),
                image => spec.map(|s| s.image.clone()),
                instances => task.instances.iter().take(INSTANCES_SHOWN).collect::<Vec<_>>(),
                hidden => task.instances.len().saturating_sub(INSTANCES_SHOWN),
            }
        })
        .collect();
    let levels: Vec<Vec<&str>> = levels(job)
        .into_iter()
        .map(|l| l.into_iter().map(|i| job.tasks[i].name.as_str()).collect())
        .collect();
    let active = job.summary.ended_at.is_none();
    minijinja::context! {
        job => job.summary,
        tasks => tasks,
        levels => levels,
        active => active,
        can_cancel => active && (owner || admin),
    }
}

pub async fn job(
    State(master): Shared,
    session: Session,
    Path(id): Path<u64>,
    Query(query): Query<DoneQuery>,
) -> Response {
    job_page(
        &master,
        &session,
        id,
        StatusCode::OK,
        query.done.as_deref(),
        None,
    )
    .await
}

async fn job_page(
    master: &Master,
    session: &Session,
    id: u64,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    let job = match master.show_job(&session.caller, id).await {
        Ok(job) => job,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let owner = job.summary.user == session.caller.name();
    render(
        master,
        Some(session),
        "job.html",
        status,
        notice(done),
        error,
        job_context(&job, session.caller.admin, owner),
    )
}

pub async fn cancel_job(
    State(master): Shared,
    session: Session,
    Path(id): Path<u64>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    match master.cancel_job(&session.caller, id).await {
        Ok(_) => see_other(&format!("/jobs/{id}"), "job-cancelled"),
        Err(e) => {
            job_page(
                &master,
                &session,
                id,
                status_of(&e),
                None,
                Some(&e.to_string()),
            )
            .await
        }
    }
}

#[derive(Deserialize, Default)]
pub struct LogQuery {
    stream: Option<String>,
}

/// An instance's output, followed live by the page's script through the API (same origin,
/// the session's cookie).
pub async fn job_log(
    State(master): Shared,
    session: Session,
    Path((id, task, index)): Path<(u64, String, u32)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let stream = match query.stream.as_deref() {
        Some("err") => OutputStream::Err,
        _ => OutputStream::Out,
    };
    let job = match master.show_job(&session.caller, id).await {
        Ok(job) => job,
        Err(e) => return render_error(Some(&session), status_of(&e), &e.to_string()),
    };
    let Some(instance) = job
        .tasks
        .iter()
        .find(|t| t.name == task)
        .and_then(|t| t.instances.iter().find(|i| i.index == index))
    else {
        return render_error(
            Some(&session),
            StatusCode::NOT_FOUND,
            &format!("job {id} has no instance {index} of a task {task:?}"),
        );
    };
    let err = stream == OutputStream::Err;
    let api = format!(
        "/api/v1/jobs/{id}/tasks/{}/{index}/log?stream={}&follow=true",
        super::percent_encode(&task),
        if err { "err" } else { "out" }
    );
    render(
        &master,
        Some(&session),
        "job_log.html",
        StatusCode::OK,
        None,
        None,
        minijinja::context! {
            job => job.summary,
            task => task,
            instance => instance,
            err => err,
            path => if err { &instance.stderr } else { &instance.stdout },
            follow => api,
        },
    )
}

pub async fn admin_jobs(
    State(master): Shared,
    session: Session,
    Query(query): Query<DoneQuery>,
) -> Response {
    admin_jobs_page(
        &master,
        &session,
        StatusCode::OK,
        query.done.as_deref(),
        None,
    )
    .await
}

async fn admin_jobs_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    let filter = JobFilter {
        all: true,
        ..Default::default()
    };
    let listed = async {
        let jobs = master.list_jobs(&session.caller, &filter).await?;
        let table = master.fair_share_table(&session.caller, &jobs).await?;
        Ok::<_, ApiError>((jobs, table))
    };
    let (mut jobs, (groups, users)) = match listed.await {
        Ok(listed) => listed,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    jobs.sort_by_key(|j| std::cmp::Reverse(j.id));
    let (active, ended): (Vec<&JobSummary>, Vec<&JobSummary>) =
        jobs.iter().partition(|j| j.ended_at.is_none());
    render(
        master,
        Some(session),
        "admin_jobs.html",
        status,
        notice(done),
        error,
        minijinja::context! {
            active => active.into_iter().map(job_row).collect::<Vec<_>>(),
            ended => ended.into_iter().take(100).map(job_row).collect::<Vec<_>>(),
            groups => groups,
            users => users,
        },
    )
}

/// An administrator's hold, release or cancel from the jobs page: back to it with what
/// was done, or the page again with the error.
pub async fn admin_job_action(
    State(master): Shared,
    session: Session,
    Path((id, action)): Path<(u64, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    let caller = &session.caller;
    let (result, done) = match action.as_str() {
        "hold" => (master.hold_job(caller, id, true).await, "job-held"),
        "release" => (master.hold_job(caller, id, false).await, "job-released"),
        "cancel" => (master.cancel_job(caller, id).await, "job-cancelled"),
        _ => {
            return render_error(
                Some(&session),
                StatusCode::NOT_FOUND,
                "no such action on a job",
            );
        }
    };
    match result {
        Ok(_) => see_other("/admin/jobs", done),
        Err(e) => {
            admin_jobs_page(&master, &session, status_of(&e), None, Some(&e.to_string())).await
        }
    }
}

#[cfg(test)]
mod tests;
