//! Virtual clusters: the record a user's cluster keeps in etcd, the rules for names and
//! requests, and long operations, whose progress is computed from the vnodes' observed
//! state each time it is read (so an operation survives any master restart: nothing about
//! it lives in a master's memory).

use serde::{Deserialize, Serialize};

use super::quota::{self, NodeSize};
use super::vnode::{self, DesiredState, Phase};

/// Stored at `clusters/<user>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VCluster {
    pub name: String,
    pub user: String,
    pub image: String,
    /// What a node added by scale-out gets.
    pub node_size: NodeSize,
    /// Indices of the cluster's nodes, ascending; node `i` is vnode [`node_id`] and has the
    /// hostname `host-<i>`.
    pub nodes: Vec<u32>,
    /// The index the next node gets: indices are never reused while the cluster exists, so
    /// a node being deleted never collides with a new one.
    pub next_index: u32,
    pub created_at: u64,
    /// Set when the cluster was stopped for being idle longer than its group allows;
    /// cleared when it starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop: Option<IdleStop>,
}

/// Why and when an idle cluster was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdleStop {
    /// Seconds since the epoch.
    pub at: u64,
    /// How long it had been idle.
    pub idle_secs: u64,
}

/// The vnode id of a cluster's node. User names have no dash (see
/// [`validate_account_name`](super::account::validate_account_name)) and the index is the
/// part after the last dash, so the id names one node only.
pub fn node_id(user: &str, cluster: &str, index: u32) -> String {
    format!("{user}-{cluster}-{index}")
}

pub const MAX_CLUSTER_NAME: usize = 24;
/// Nodes one request may create at once (an etcd transaction holds them all).
pub const MAX_NODES_PER_REQUEST: u32 = 32;
/// Tasks (processes and threads) per vnode.
pub const NODE_TASKS: u32 = 4096;

/// A bad request, said so that scripts can act on `code` and people on `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    /// Machine-readable, e.g. `invalid_name`, `invalid_size`.
    pub code: &'static str,
    /// The request field at fault.
    pub field: std::borrow::Cow<'static, str>,
    pub message: String,
}

fn input(code: &'static str, field: &'static str, message: impl Into<String>) -> InputError {
    InputError {
        code,
        field: field.into(),
        message: message.into(),
    }
}

/// Cluster names: a lower-case letter, then lower-case letters, digits and inner dashes;
/// 24 characters at most. They become part of vnode ids, hostnames' domain and URLs.
pub fn validate_cluster_name(name: &str) -> Result<(), InputError> {
    let bad = |why: &str| {
        Err(input(
            "invalid_name",
            "name",
            format!("cluster name {name:?} is invalid: {why}"),
        ))
    };
    if name.is_empty() || name.len() > MAX_CLUSTER_NAME {
        return bad("use 1 to 24 characters");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return bad("start with a lower-case letter a-z");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("use only a-z, 0-9 and '-'");
    }
    if name.ends_with('-') || name.contains("--") {
        return bad("no '-' at the end and no '--'");
    }
    Ok(())
}

/// The body of `POST /api/v1/clusters`. Absent fields take the group's defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterRequest {
    pub name: String,
    /// Number of nodes (default 1).
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

/// A create request with every default filled in and every rule checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateCluster {
    pub name: String,
    pub size: u32,
    pub image: String,
    pub node: NodeSize,
}

impl CreateClusterRequest {
    pub fn resolve(
        &self,
        defaults: &NodeSize,
        default_image: &str,
    ) -> Result<CreateCluster, InputError> {
        validate_cluster_name(&self.name)?;
        let size = self.size.unwrap_or(1);
        if size == 0 || size > MAX_NODES_PER_REQUEST {
            return Err(input(
                "invalid_size",
                "size",
                format!("size must be between 1 and {MAX_NODES_PER_REQUEST}, not {size}"),
            ));
        }
        let image = self
            .image
            .clone()
            .unwrap_or_else(|| default_image.to_owned());
        vnode::validate_image_name(&image)
            .map_err(|e| input("invalid_image", "image", e.to_string()))?;
        let node = NodeSize {
            cpu_millis: self.cpu_millis.unwrap_or(defaults.cpu_millis),
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            disk_bytes: self.disk_bytes.unwrap_or(defaults.disk_bytes),
        };
        validate_node_size(&node)?;
        Ok(CreateCluster {
            name: self.name.clone(),
            size,
            image,
            node,
        })
    }
}

/// The lower bounds every vnode needs, as the worker enforces them.
pub fn validate_node_size(node: &NodeSize) -> Result<(), InputError> {
    if node.cpu_millis < quota::MIN_CPU_MILLIS {
        return Err(input(
            "invalid_size",
            "cpu_millis",
            format!(
                "cpu_millis must be at least {} (a hundredth of a core), not {}",
                quota::MIN_CPU_MILLIS,
                node.cpu_millis
            ),
        ));
    }
    if node.memory_bytes < quota::MIN_MEMORY {
        return Err(input(
            "invalid_size",
            "memory_bytes",
            format!(
                "memory_bytes must be at least {} (64 MiB), not {}",
                quota::MIN_MEMORY,
                node.memory_bytes
            ),
        ));
    }
    if node.disk_bytes < quota::MIN_DISK {
        return Err(input(
            "invalid_size",
            "disk_bytes",
            format!(
                "disk_bytes must be at least {} (64 MiB), not {}",
                quota::MIN_DISK,
                node.disk_bytes
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    Create,
    Start,
    Stop,
    ScaleOut,
    ScaleIn,
    Delete,
    /// A lost node recreated on another host.
    Recover,
}

impl OperationKind {
    /// What every node of the operation must reach.
    fn goal(self) -> Goal {
        match self {
            OperationKind::Create
            | OperationKind::Start
            | OperationKind::ScaleOut
            | OperationKind::Recover => Goal::Phase(Phase::Running),
            OperationKind::Stop => Goal::Phase(Phase::Stopped),
            OperationKind::ScaleIn | OperationKind::Delete => Goal::Gone,
        }
    }

    /// The journal's name for the action (`DOCKLET_ACTION`): `cluster.scale-out`.
    pub fn action(self) -> &'static str {
        match self {
            OperationKind::Create => "cluster.create",
            OperationKind::Start => "cluster.start",
            OperationKind::Stop => "cluster.stop",
            OperationKind::ScaleOut => "cluster.scale-out",
            OperationKind::ScaleIn => "cluster.scale-in",
            OperationKind::Delete => "cluster.delete",
            OperationKind::Recover => "cluster.recover",
        }
    }

    /// What was done, for a journal line: `alice <verb> cluster c1`.
    pub fn verb(self) -> &'static str {
        match self {
            OperationKind::Create => "created",
            OperationKind::Start => "started",
            OperationKind::Stop => "stopped",
            OperationKind::ScaleOut => "scaled out",
            OperationKind::ScaleIn => "scaled in",
            OperationKind::Delete => "deleted",
            OperationKind::Recover => "recovered a node of",
        }
    }
}

/// The journal line of an operation: `alice created cluster c1: 4 nodes on tb1, tb2`, or
/// `root stopped cluster c1 of alice: 4 nodes` when someone acts on another user's cluster.
pub fn operation_line(
    by: &str,
    kind: OperationKind,
    owner: &str,
    cluster: &str,
    detail: &str,
) -> String {
    let verb = kind.verb();
    let whose = if by == owner {
        String::new()
    } else {
        format!(" of {owner}")
    };
    if detail.is_empty() {
        format!("{by} {verb} cluster {cluster}{whose}")
    } else {
        format!("{by} {verb} cluster {cluster}{whose}: {detail}")
    }
}

/// `4 nodes on tb1, tb2`: how many nodes, and the hosts they were placed on (each once,
/// sorted).
pub fn placed_on(hosts: &[String]) -> String {
    let mut distinct: Vec<&str> = hosts.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    format!("{} on {}", nodes_count(hosts.len()), distinct.join(", "))
}

/// `1 node`, `4 nodes`.
pub fn nodes_count(n: usize) -> String {
    if n == 1 {
        "1 node".to_owned()
    } else {
        format!("{n} nodes")
    }
}

enum Goal {
    Phase(Phase),
    Gone,
}

/// Stored at `operations/<id>` (with a lease, so old ones go away by themselves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: String,
    pub kind: OperationKind,
    pub user: String,
    pub cluster: String,
    /// The vnode ids the operation waits for.
    pub nodes: Vec<String>,
    pub created_at: u64,
}

/// How long an operation may take before it is reported failed.
pub const OPERATION_TIMEOUT_SECS: u64 = 300;
/// How long operation records are kept.
pub const OPERATION_TTL_SECS: i64 = 24 * 3600;

/// What a vnode looks like now, to an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    /// The spec still exists.
    pub exists: bool,
    pub phase: Option<Phase>,
    pub reason: Option<String>,
    /// Its host's worker holds its lease.
    pub host_up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub state: OperationState,
    /// Nodes that reached the goal.
    pub done: u32,
    pub total: u32,
    pub message: String,
}

/// An operation's progress from what its nodes look like (`seen`, in the order of
/// `op.nodes`) at `now`.
pub fn progress(op: &Operation, seen: &[NodeSeen], now: u64) -> Progress {
    let total = op.nodes.len() as u32;
    let goal = op.kind.goal();
    let mut done = 0;
    let mut failures = Vec::new();
    for (id, node) in op.nodes.iter().zip(seen) {
        let reached = match goal {
            Goal::Gone => !node.exists,
            Goal::Phase(phase) => node.exists && node.phase == Some(phase),
        };
        let deleting = matches!(goal, Goal::Gone);
        if reached {
            done += 1;
        } else if !node.exists {
            failures.push(format!("{id} was deleted"));
        } else if node.phase == Some(Phase::Failed) && !deleting {
            // A deletion goes on whatever state the node was in (a boot it interrupted may
            // report failed on the way).
            failures.push(format!(
                "{id} failed: {}",
                node.reason.as_deref().unwrap_or("no reason given")
            ));
        } else if !node.host_up {
            failures.push(format!("{id}: its host is down"));
        }
    }
    let (state, message) = if !failures.is_empty() {
        (OperationState::Failed, failures.join("; "))
    } else if done == total {
        (OperationState::Succeeded, format!("{done} of {total} done"))
    } else if now >= op.created_at + OPERATION_TIMEOUT_SECS {
        (
            OperationState::Failed,
            format!("timed out with {done} of {total} done"),
        )
    } else {
        (OperationState::Running, format!("{done} of {total} done"))
    };
    Progress {
        state,
        done,
        total,
        message,
    }
}

/// What a node of a cluster is, as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Pending,
    Creating,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Its host's lease expired: the node is unreachable until the host returns or the node
    /// is recreated elsewhere.
    Lost,
    Deleting,
    /// On its way to another host (its host is being drained), data and address with it.
    Moving,
}

/// `desired`: the state its spec asks for.
pub fn node_state(seen: &NodeSeen, desired: DesiredState) -> NodeState {
    match desired {
        DesiredState::Deleted => return NodeState::Deleting,
        DesiredState::Exported if seen.host_up => return NodeState::Moving,
        _ => {}
    }
    if !seen.host_up {
        return NodeState::Lost;
    }
    match seen.phase {
        None | Some(Phase::Pending) => NodeState::Pending,
        Some(Phase::Creating) => NodeState::Creating,
        Some(Phase::Running) => NodeState::Running,
        Some(Phase::Stopping) => NodeState::Stopping,
        Some(Phase::Stopped) => NodeState::Stopped,
        Some(Phase::Failed) => NodeState::Failed,
        // Exported but asked to be running or stopped again: about to take its disk back.
        Some(Phase::Exported) => NodeState::Moving,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Running,
    Stopped,
    /// Nodes are on their way up or down.
    Changing,
    /// Some node is failed or lost.
    Degraded,
    Empty,
}

pub fn cluster_state(nodes: &[NodeState]) -> ClusterState {
    if nodes.is_empty() {
        return ClusterState::Empty;
    }
    if nodes
        .iter()
        .any(|n| matches!(n, NodeState::Failed | NodeState::Lost))
    {
        ClusterState::Degraded
    } else if nodes.iter().all(|n| *n == NodeState::Running) {
        ClusterState::Running
    } else if nodes.iter().all(|n| *n == NodeState::Stopped) {
        ClusterState::Stopped
    } else {
        ClusterState::Changing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_lines_read_as_sentences() {
        let hosts = ["tb2", "tb1", "tb2", "tb1"].map(String::from);
        assert_eq!(
            operation_line(
                "alice",
                OperationKind::Create,
                "alice",
                "c1",
                &placed_on(&hosts)
            ),
            "alice created cluster c1: 4 nodes on tb1, tb2"
        );
        assert_eq!(
            operation_line("root", OperationKind::Stop, "alice", "c1", "4 nodes"),
            "root stopped cluster c1 of alice: 4 nodes"
        );
        assert_eq!(
            operation_line(
                "bob",
                OperationKind::ScaleOut,
                "bob",
                "web",
                &placed_on(&hosts[..1])
            ),
            "bob scaled out cluster web: 1 node on tb2"
        );
        assert_eq!(
            operation_line("bob", OperationKind::Delete, "bob", "web", ""),
            "bob deleted cluster web"
        );
    }

    fn defaults() -> NodeSize {
        NodeSize {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 4 << 30,
        }
    }

    #[test]
    fn cluster_names_are_checked() {
        for good in ["c1", "my-cluster", "a", "abcdefghijklmnopqrstuvwx"] {
            assert!(validate_cluster_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1c",
            "-c",
            "c-",
            "a--b",
            "C1",
            "c_1",
            "c.1",
            "../etc",
            "abcdefghijklmnopqrstuvwxy",
            "c 1",
            "c;rm",
        ] {
            let e = validate_cluster_name(bad).unwrap_err();
            assert_eq!(e.code, "invalid_name", "{bad}");
            assert!(e.message.contains("cluster name"), "{}", e.message);
        }
    }

    #[test]
    fn a_request_takes_the_group_defaults_and_checks_sizes() {
        let request = CreateClusterRequest {
            name: "c1".into(),
            ..Default::default()
        };
        let create = request.resolve(&defaults(), "base").unwrap();
        assert_eq!(create.size, 1);
        assert_eq!(create.image, "base");
        assert_eq!(create.node, defaults());

        let request = CreateClusterRequest {
            name: "c1".into(),
            size: Some(4),
            memory_bytes: Some(256 << 20),
            ..Default::default()
        };
        let create = request.resolve(&defaults(), "base").unwrap();
        assert_eq!((create.size, create.node.memory_bytes), (4, 256 << 20));

        for (request, field) in [
            (
                CreateClusterRequest {
                    name: "c1".into(),
                    size: Some(0),
                    ..Default::default()
                },
                "size",
            ),
            (
                CreateClusterRequest {
                    name: "c1".into(),
                    size: Some(MAX_NODES_PER_REQUEST + 1),
                    ..Default::default()
                },
                "size",
            ),
            (
                CreateClusterRequest {
                    name: "c1".into(),
                    cpu_millis: Some(5),
                    ..Default::default()
                },
                "cpu_millis",
            ),
            (
                CreateClusterRequest {
                    name: "c1".into(),
                    memory_bytes: Some(1),
                    ..Default::default()
                },
                "memory_bytes",
            ),
            (
                CreateClusterRequest {
                    name: "c1".into(),
                    image: Some("../../etc".into()),
                    ..Default::default()
                },
                "image",
            ),
        ] {
            let e = request.resolve(&defaults(), "base").unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn node_ids_are_unique_for_names_without_dashes_in_users() {
        assert_eq!(node_id("alice", "my-c", 3), "alice-my-c-3");
        // The longest names still make a valid vnode id.
        let id = node_id(&"a".repeat(16), &"c".repeat(MAX_CLUSTER_NAME), 99_999);
        assert!(vnode::validate_id(&id).is_ok(), "{id}");
    }

    fn op(kind: OperationKind, n: usize) -> Operation {
        Operation {
            id: "op1".into(),
            kind,
            user: "alice".into(),
            cluster: "c1".into(),
            nodes: (0..n).map(|i| format!("alice-c1-{i}")).collect(),
            created_at: 1000,
        }
    }

    fn seen(phase: Phase) -> NodeSeen {
        NodeSeen {
            exists: true,
            phase: Some(phase),
            reason: None,
            host_up: true,
        }
    }

    #[test]
    fn progress_counts_nodes_at_the_goal() {
        let create = op(OperationKind::Create, 2);
        let p = progress(
            &create,
            &[seen(Phase::Running), seen(Phase::Creating)],
            1001,
        );
        assert_eq!((p.state, p.done, p.total), (OperationState::Running, 1, 2));
        let p = progress(&create, &[seen(Phase::Running), seen(Phase::Running)], 1001);
        assert_eq!(p.state, OperationState::Succeeded);
        let p = progress(
            &create,
            &[seen(Phase::Running), seen(Phase::Creating)],
            1000 + OPERATION_TIMEOUT_SECS,
        );
        assert_eq!(p.state, OperationState::Failed);
        assert!(p.message.contains("timed out"), "{}", p.message);
    }

    #[test]
    fn progress_reports_failures_with_their_reasons() {
        let mut failed = seen(Phase::Failed);
        failed.reason = Some("image base2 is not installed".into());
        let p = progress(
            &op(OperationKind::Create, 2),
            &[seen(Phase::Running), failed],
            1001,
        );
        assert_eq!(p.state, OperationState::Failed);
        assert!(
            p.message.contains("alice-c1-1 failed: image base2"),
            "{}",
            p.message
        );

        let mut lost = seen(Phase::Running);
        lost.host_up = false;
        let p = progress(&op(OperationKind::Stop, 1), &[lost], 1001);
        assert_eq!(p.state, OperationState::Failed);
        assert!(p.message.contains("host is down"));
    }

    #[test]
    fn deletes_succeed_when_the_nodes_are_gone() {
        let gone = NodeSeen {
            exists: false,
            phase: None,
            reason: None,
            host_up: true,
        };
        let p = progress(
            &op(OperationKind::Delete, 2),
            &[gone.clone(), seen(Phase::Stopping)],
            1001,
        );
        assert_eq!((p.state, p.done), (OperationState::Running, 1));
        let p = progress(
            &op(OperationKind::Delete, 2),
            &[gone.clone(), gone.clone()],
            1001,
        );
        assert_eq!(p.state, OperationState::Succeeded);
        let p = progress(
            &op(OperationKind::Delete, 2),
            &[gone, seen(Phase::Failed)],
            1001,
        );
        assert_eq!(
            p.state,
            OperationState::Running,
            "a failed node is still being deleted"
        );
    }

    #[test]
    fn cluster_state_follows_its_nodes() {
        use NodeState::*;
        assert_eq!(cluster_state(&[]), ClusterState::Empty);
        assert_eq!(cluster_state(&[Running, Running]), ClusterState::Running);
        assert_eq!(cluster_state(&[Stopped]), ClusterState::Stopped);
        assert_eq!(cluster_state(&[Running, Creating]), ClusterState::Changing);
        assert_eq!(cluster_state(&[Running, Lost]), ClusterState::Degraded);
        let mut s = seen(Phase::Running);
        s.host_up = false;
        assert_eq!(node_state(&s, DesiredState::Running), Lost);
        assert_eq!(node_state(&s, DesiredState::Deleted), Deleting);
        assert_eq!(node_state(&s, DesiredState::Exported), Lost);
        s.host_up = true;
        assert_eq!(node_state(&s, DesiredState::Exported), Moving);
        s.phase = Some(Phase::Exported);
        assert_eq!(node_state(&s, DesiredState::Running), Moving);
    }
}
