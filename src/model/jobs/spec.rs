//! What a user submits: the JSON of `POST /api/v1/jobs` ([`JobRequest`]), and the job spec it
//! resolves to once every rule is checked and every default filled in ([`JobSpec`]). A bad
//! request is refused whole, naming the field at fault (`tasks[2].depends_on`), so that
//! nothing of it is queued.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::quota::NodeSize;
use crate::model::vcluster::{self, InputError};

/// Tasks of one job.
pub const MAX_TASKS: usize = 64;
/// Instances of one task (an array's length).
pub const MAX_ARRAY: u32 = 10_000;
/// Nodes one task instance asks for (one etcd transaction creates them).
pub const MAX_NODES: u32 = vcluster::MAX_NODES_PER_REQUEST;
/// A script, or the whole argv of a command, in bytes: one argument of an exec.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
pub const MAX_ENV: usize = 64;
/// How many times an instance may be retried after it failed.
pub const MAX_RETRIES: u32 = 10;
/// The longest a task may run: a week.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
pub const MAX_PRIORITY: i32 = 1000;
/// Backoff before a retry when the spec names none; it doubles at each retry, up to
/// [`MAX_BACKOFF_SECS`].
pub const DEFAULT_BACKOFF_SECS: u64 = 10;
pub const MAX_BACKOFF_SECS: u64 = 3600;
const MAX_TASK_NAME: usize = 16;
const MAX_JOB_NAME: usize = 64;

/// The body of `POST /api/v1/jobs`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// For people: 1 to 64 printable characters.
    pub name: String,
    /// The default priority of its tasks, -1000 to 1000 (default 0): higher runs first.
    #[serde(default)]
    pub priority: Option<i32>,
    pub tasks: Vec<TaskRequest>,
}

/// One task of a [`JobRequest`]. Absent sizes take the group's defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Unique in the job: a lower-case letter, then a-z, 0-9 and '-'; 16 characters at most.
    pub name: String,
    /// Tasks that must have succeeded (every instance) before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// A system image (`base`), the caller's own (`alice/web`) or a shared one.
    #[serde(default)]
    pub image: Option<String>,
    /// Nodes of each instance, started together (default 1).
    #[serde(default)]
    pub nodes: Option<u32>,
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// The program and its arguments, as a list (no shell). Exactly one of `command` and
    /// `script`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub command: Option<serde_json::Value>,
    /// A script run by bash.
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where it runs and writes its output, under `~/nfs` (default `~/nfs/jobs/<job id>`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// `first` (default): node 0 runs the command, with `$DOCKLET_HOSTFILE` listing every
    /// node; `all`: every node runs it.
    #[serde(default)]
    pub run_on: Option<String>,
    /// `N`, `A-B` or `A-B%L` (at most L at once): one instance per index, each with
    /// `$DOCKLET_TASK_INDEX`.
    #[serde(default)]
    pub array: Option<String>,
    /// Retries after a failed run (default 0).
    #[serde(default)]
    pub retries: Option<u32>,
    /// The wait before the first retry (seconds, or `30s`, `5m`), doubled at each one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub retry_backoff: Option<serde_json::Value>,
    /// Longest run of one instance (seconds, or `90s`, `10m`, `2h`, `1d`); none by default.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<serde_json::Value>,
    /// Overrides the job's priority for this task.
    #[serde(default)]
    pub priority: Option<i32>,
}

/// Which nodes of an instance run the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunOn {
    First,
    All,
}

/// A task's instances: indices `first..=last`, at most `limit` running at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArraySpec {
    pub first: u32,
    pub last: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl ArraySpec {
    pub fn len(&self) -> u32 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What runs: a command (argv) or a bash script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    Command(Vec<String>),
    Script(String),
}

impl Program {
    /// The argv that runs it (a script is bash's `-c` text, named after its task).
    pub fn argv(&self, task: &str) -> Vec<String> {
        match self {
            Program::Command(argv) => argv.clone(),
            Program::Script(text) => vec![
                "/bin/bash".into(),
                "-c".into(),
                text.clone(),
                task.to_owned(),
            ],
        }
    }
}

/// A task with every rule checked and every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskSpec {
    pub name: String,
    pub depends_on: Vec<String>,
    pub image: String,
    pub nodes: u32,
    pub node: NodeSize,
    pub program: Program,
    pub env: BTreeMap<String, String>,
    /// Relative to `~/nfs`, without `..`: `jobs/42`.
    pub workdir: String,
    pub run_on: RunOn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArraySpec>,
    pub retries: u32,
    pub retry_backoff_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    pub priority: i32,
}

impl TaskSpec {
    /// The indices of its instances: `0..=0` for a task that is not an array.
    pub fn indices(&self) -> std::ops::RangeInclusive<u32> {
        match self.array {
            Some(a) => a.first..=a.last,
            None => 0..=0,
        }
    }

    pub fn instances(&self) -> u32 {
        self.array.map_or(1, |a| a.len())
    }

    /// Where an instance writes stdout and stderr, relative to `~/nfs`:
    /// `<workdir>/<task>[.<index>].out` and `.err`.
    pub fn output_paths(&self, index: u32) -> (String, String) {
        let stem = match self.array {
            Some(_) => format!("{}/{}.{index}", self.workdir, self.name),
            None => format!("{}/{}", self.workdir, self.name),
        };
        (format!("{stem}.out"), format!("{stem}.err"))
    }

    /// What one instance holds: its nodes' sizes added up.
    pub fn instance_size(&self) -> crate::model::quota::Usage {
        let one = crate::model::quota::Usage::of_node(&self.node);
        (0..self.nodes).fold(Default::default(), |sum: crate::model::quota::Usage, _| {
            sum.plus(&one)
        })
    }
}

/// A job with every rule checked: its tasks in the order submitted, each task's
/// dependencies named in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSpec {
    pub name: String,
    pub priority: i32,
    pub tasks: Vec<TaskSpec>,
}

impl JobSpec {
    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

/// A field-level refusal. Fields are paths into the request: `tasks[1].command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecRefusal {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl From<SpecRefusal> for InputError {
    fn from(r: SpecRefusal) -> Self {
        InputError {
            code: r.code,
            field: r.field.into(),
            message: r.message,
        }
    }
}

fn refuse(code: &'static str, field: String, message: impl Into<String>) -> SpecRefusal {
    SpecRefusal {
        code,
        field,
        message: message.into(),
    }
}

/// A duration in a request: whole seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_duration(value: &serde_json::Value) -> Result<u64, String> {
    match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a whole number of seconds")),
        serde_json::Value::String(text) => {
            let text = text.trim();
            let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
                Some(at) => text.split_at(at),
                None => (text, "s"),
            };
            let n: u64 = number
                .parse()
                .map_err(|_| format!("{text:?} is not a duration like 90, \"90s\" or \"10m\""))?;
            let scale = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86400,
                _ => {
                    return Err(format!("{text:?} has an unknown unit: use s, m, h or d"));
                }
            };
            n.checked_mul(scale)
                .ok_or_else(|| format!("{text:?} is too long"))
        }
        other => Err(format!("{other} is not a duration like 90 or \"10m\"")),
    }
}

/// `N`, `A-B` or `A-B%L`.
pub fn parse_array(text: &str) -> Result<ArraySpec, String> {
    let (range, limit) = match text.split_once('%') {
        Some((range, limit)) => (range, Some(limit)),
        None => (text, None),
    };
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{text:?} is not an array like \"0-99\" or \"0-99%4\""))
    };
    let (first, last) = match range.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (
            0,
            number(range)?
                .checked_sub(1)
                .ok_or("an array of 0 instances")?,
        ),
    };
    if last < first {
        return Err(format!("{text:?}: the range ends before it starts"));
    }
    if last - first >= MAX_ARRAY {
        return Err(format!(
            "{text:?} has {} instances: at most {MAX_ARRAY}",
            u64::from(last - first) + 1
        ));
    }
    let limit = limit.map(number).transpose()?;
    if limit == Some(0) {
        return Err(format!("{text:?}: a limit of 0 would never run anything"));
    }
    Ok(ArraySpec { first, last, limit })
}

fn check_task_name(name: &str, field: String) -> Result<(), SpecRefusal> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TASK_NAME
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(refuse(
            "invalid_name",
            field,
            format!(
                "task name {name:?} is invalid: a lower-case letter, then a-z, 0-9 and '-', \
                 {MAX_TASK_NAME} characters at most"
            ),
        ))
    }
}

/// A path under `~/nfs`, returned relative to it. `~/nfs/x`, `/root/nfs/x` and `x` name the
/// same directory; `..`, empty segments beyond slashes and control characters are refused.
pub fn resolve_workdir(text: &str) -> Result<String, String> {
    let relative = text
        .strip_prefix("~/nfs")
        .or_else(|| text.strip_prefix("/root/nfs"))
        .unwrap_or(text);
    if text.starts_with('/') && relative.len() == text.len() {
        return Err(format!("{text:?} is not under ~/nfs"));
    }
    let parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("{text:?} may not contain . or .."));
    }
    if relative.chars().any(|c| c.is_control()) || relative.len() > 512 {
        return Err(format!("{text:?} has control characters or is too long"));
    }
    if relative.len() == text.len() && text.starts_with('~') {
        return Err(format!("{text:?} is not under ~/nfs"));
    }
    Ok(parts.join("/"))
}

fn check_env(env: &BTreeMap<String, String>, field: &str) -> Result<(), SpecRefusal> {
    if env.len() > MAX_ENV {
        return Err(refuse(
            "invalid_env",
            field.to_owned(),
            format!("at most {MAX_ENV} variables"),
        ));
    }
    for (key, value) in env {
        let name_ok = !key.is_empty()
            && key.len() <= 128
            && !key.as_bytes()[0].is_ascii_digit()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(refuse(
                "invalid_env",
                format!("{field}.{key}"),
                format!("{key:?} is not a variable name (letters, digits and '_')"),
            ));
        }
        if key.starts_with("DOCKLET_") {
            return Err(refuse(
                "invalid_env",
                format!("{field}.{key}"),
                "DOCKLET_ variables are set by Docklet",
            ));
        }
        if value.contains('\0') || value.len() > 4096 {
            return Err(refuse(
                "invalid_env",
                format!("{field}.{key}"),
                "values are at most 4096 bytes, without NUL",
            ));
        }
    }
    Ok(())
}

fn program(task: &TaskRequest, field: &str) -> Result<Program, SpecRefusal> {
    match (&task.command, &task.script) {
        (Some(_), Some(_)) => Err(refuse(
            "invalid_command",
            format!("{field}.command"),
            "give either command or script, not both",
        )),
        (None, None) => Err(refuse(
            "invalid_command",
            format!("{field}.command"),
            "give a command (a list: [\"prog\", \"arg\"]) or a script",
        )),
        (None, Some(script)) => {
            if script.trim().is_empty() || script.len() > MAX_COMMAND_BYTES || script.contains('\0')
            {
                return Err(refuse(
                    "invalid_command",
                    format!("{field}.script"),
                    format!("a script is 1 to {MAX_COMMAND_BYTES} bytes, without NUL"),
                ));
            }
            Ok(Program::Script(script.clone()))
        }
        (Some(value), None) => {
            let not_list = || {
                refuse(
                    "invalid_command",
                    format!("{field}.command"),
                    "command must be a list of strings, like [\"python3\", \"train.py\"] \
                     (use script for a shell command line)",
                )
            };
            let items = value.as_array().ok_or_else(not_list)?;
            let argv: Vec<String> = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(not_list))
                .collect::<Result<_, _>>()?;
            let bytes: usize = argv.iter().map(|a| a.len() + 1).sum();
            if argv.is_empty() || argv[0].is_empty() {
                return Err(refuse(
                    "invalid_command",
                    format!("{field}.command"),
                    "the command list is empty",
                ));
            }
            if bytes > MAX_COMMAND_BYTES || argv.iter().any(|a| a.contains('\0')) {
                return Err(refuse(
                    "invalid_command",
                    format!("{field}.command"),
                    format!("a command is at most {MAX_COMMAND_BYTES} bytes, without NUL"),
                ));
            }
            Ok(Program::Command(argv))
        }
    }
}

impl JobRequest {
    /// Checks every rule that needs nothing but the request: names, the DAG, commands, sizes'
    /// lower bounds, arrays, durations. Images, quotas and capacity are the master's (they
    /// need the site). `job_id` names the default working directory.
    pub fn resolve(
        &self,
        job_id: u64,
        defaults: &NodeSize,
        default_image: &str,
    ) -> Result<JobSpec, SpecRefusal> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > MAX_JOB_NAME || name.chars().any(char::is_control) {
            return Err(refuse(
                "invalid_name",
                "name".into(),
                format!("a job's name is 1 to {MAX_JOB_NAME} printable characters"),
            ));
        }
        let priority = check_priority(self.priority.unwrap_or(0), "priority".into())?;
        if self.tasks.is_empty() || self.tasks.len() > MAX_TASKS {
            return Err(refuse(
                "invalid_tasks",
                "tasks".into(),
                format!("a job has 1 to {MAX_TASKS} tasks"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, task) in self.tasks.iter().enumerate() {
            check_task_name(&task.name, format!("tasks[{i}].name"))?;
            if !seen.insert(task.name.as_str()) {
                return Err(refuse(
                    "invalid_name",
                    format!("tasks[{i}].name"),
                    format!("two tasks are named {:?}", task.name),
                ));
            }
        }
        let tasks = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| resolve_task(t, i, job_id, priority, defaults, default_image, &seen))
            .collect::<Result<Vec<_>, _>>()?;
        check_acyclic(&tasks)?;
        Ok(JobSpec {
            name: name.to_owned(),
            priority,
            tasks,
        })
    }
}

fn check_priority(priority: i32, field: String) -> Result<i32, SpecRefusal> {
    if priority.abs() > MAX_PRIORITY {
        return Err(refuse(
            "invalid_priority",
            field,
            format!("priority is between -{MAX_PRIORITY} and {MAX_PRIORITY}"),
        ));
    }
    Ok(priority)
}

fn resolve_task(
    task: &TaskRequest,
    i: usize,
    job_id: u64,
    job_priority: i32,
    defaults: &NodeSize,
    default_image: &str,
    names: &HashSet<&str>,
) -> Result<TaskSpec, SpecRefusal> {
    let field = format!("tasks[{i}]");
    let at = |name: &str| format!("{field}.{name}");
    for dep in &task.depends_on {
        if dep == &task.name {
            return Err(refuse(
                "invalid_dependency",
                at("depends_on"),
                format!("task {:?} depends on itself", task.name),
            ));
        }
        if !names.contains(dep.as_str()) {
            return Err(refuse(
                "invalid_dependency",
                at("depends_on"),
                format!(
                    "task {:?} depends on {dep:?}, which is not a task of this job",
                    task.name
                ),
            ));
        }
    }
    let image = task
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_owned());
    crate::model::vnode::validate_image_name(&image)
        .map_err(|e| refuse("invalid_image", at("image"), e.to_string()))?;
    let nodes = task.nodes.unwrap_or(1);
    if nodes == 0 || nodes > MAX_NODES {
        return Err(refuse(
            "invalid_size",
            at("nodes"),
            format!("nodes is between 1 and {MAX_NODES}, not {nodes}"),
        ));
    }
    let node = NodeSize {
        cpu_millis: task.cpu_millis.unwrap_or(defaults.cpu_millis),
        memory_bytes: task.memory_bytes.unwrap_or(defaults.memory_bytes),
        disk_bytes: task.disk_bytes.unwrap_or(defaults.disk_bytes),
    };
    vcluster::validate_node_size(&node)
        .map_err(|e| refuse(e.code, at(e.field.as_ref()), e.message))?;
    let program = program(task, &field)?;
    check_env(&task.env, &at("env"))?;
    let workdir = match &task.workdir {
        Some(dir) => {
            resolve_workdir(dir).map_err(|m| refuse("invalid_workdir", at("workdir"), m))?
        }
        None => format!("jobs/{job_id}"),
    };
    let run_on = match task.run_on.as_deref() {
        None | Some("first") => RunOn::First,
        Some("all") => RunOn::All,
        Some(other) => {
            return Err(refuse(
                "invalid_run_on",
                at("run_on"),
                format!("run_on is \"first\" or \"all\", not {other:?}"),
            ));
        }
    };
    let array = task
        .array
        .as_deref()
        .map(parse_array)
        .transpose()
        .map_err(|m| refuse("invalid_array", at("array"), m))?;
    let retries = task.retries.unwrap_or(0);
    if retries > MAX_RETRIES {
        return Err(refuse(
            "invalid_retries",
            at("retries"),
            format!("at most {MAX_RETRIES} retries"),
        ));
    }
    let retry_backoff_secs = match &task.retry_backoff {
        Some(v) => {
            parse_duration(v).map_err(|m| refuse("invalid_duration", at("retry_backoff"), m))?
        }
        None => DEFAULT_BACKOFF_SECS,
    }
    .min(MAX_BACKOFF_SECS);
    let timeout_secs = match &task.timeout {
        Some(v) => {
            let secs =
                parse_duration(v).map_err(|m| refuse("invalid_duration", at("timeout"), m))?;
            if secs == 0 || secs > MAX_TIMEOUT_SECS {
                return Err(refuse(
                    "invalid_duration",
                    at("timeout"),
                    format!("a timeout is 1 s to {MAX_TIMEOUT_SECS} s"),
                ));
            }
            Some(secs)
        }
        None => None,
    };
    let priority = check_priority(task.priority.unwrap_or(job_priority), at("priority"))?;
    Ok(TaskSpec {
        name: task.name.clone(),
        depends_on: task.depends_on.clone(),
        image,
        nodes,
        node,
        program,
        env: task.env.clone(),
        workdir,
        run_on,
        array,
        retries,
        retry_backoff_secs,
        timeout_secs,
        priority,
    })
}

/// Refuses a dependency cycle, naming one task on it.
fn check_acyclic(tasks: &[TaskSpec]) -> Result<(), SpecRefusal> {
    let position: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; tasks.len()];
    fn visit(
        i: usize,
        tasks: &[TaskSpec],
        position: &HashMap<&str, usize>,
        mark: &mut [u8],
    ) -> Result<(), usize> {
        match mark[i] {
            1 => return Err(i),
            2 => return Ok(()),
            _ => {}
        }
        mark[i] = 1;
        for dep in &tasks[i].depends_on {
            visit(position[dep.as_str()], tasks, position, mark)?;
        }
        mark[i] = 2;
        Ok(())
    }
    for i in 0..tasks.len() {
        if let Err(at) = visit(i, tasks, &position, &mut mark) {
            return Err(refuse(
                "dependency_cycle",
                format!("tasks[{at}].depends_on"),
                format!(
                    "the tasks' dependencies form a cycle through {:?}",
                    tasks[at].name
                ),
            ));
        }
    }
    Ok(())
}
