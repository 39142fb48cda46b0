//! The drain's decisions: which vnodes leave a draining host, in what steps, and what to
//! tell the administrator. A move is: the spec becomes `exported` with a fresh
//! [`Handoff`](super::vnode::Handoff) (the old host's worker stops the vnode and hands its
//! disk over), then the spec moves to the host placement picks with the state it had
//! (the new worker takes the disk and starts it), then the handoff is dropped once the
//! vnode is up there. Each step is one etcd transaction, so a master killed between two
//! steps leaves a state the next leader's pass continues from.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::vnode::{DesiredState, Phase, VNodeSpec, VNodeStatus};

/// One step of one vnode's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainStep {
    /// Stop it and hand its disk over.
    Export(String),
    /// Handed over: recreate it on another host.
    Place(String),
    /// Handed over, but its host no longer drains: take it back where it is.
    Return(String),
    /// Up where it arrived: the move is over.
    Finish(String),
}

/// The note of a drained host once every vnode left it and is up where it went.
pub const EMPTY_NOTE: &str = "empty: every vnode moved";

/// What a pass should do, and a note per draining host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DrainPlan {
    pub steps: Vec<DrainStep>,
    pub notes: BTreeMap<String, String>,
}

/// `draining`: hosts being drained; `up`: hosts whose worker holds its lease; `specs`:
/// every vnode with its host; at most `at_once` vnodes are between export and arrival.
pub fn plan(
    draining: &HashSet<String>,
    up: &HashSet<String>,
    specs: &[(String, VNodeSpec)],
    statuses: &HashMap<String, VNodeStatus>,
    at_once: usize,
) -> DrainPlan {
    let mut plan = DrainPlan::default();
    let mut in_flight = 0;
    let mut candidates = Vec::new();
    // Per draining host: vnodes left, of which moving, and waiting for a down host.
    let mut left: BTreeMap<&str, (usize, usize)> =
        draining.iter().map(|h| (h.as_str(), (0, 0))).collect();
    let mut sorted: Vec<&(String, VNodeSpec)> = specs.iter().collect();
    sorted.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    for (host, spec) in sorted {
        if spec.state == DesiredState::Deleted {
            continue;
        }
        let status = statuses.get(&spec.id).filter(|s| &s.host == host);
        let phase = status.map(|s| s.phase);
        if let Some((count, moving)) = left.get_mut(host.as_str()) {
            *count += 1;
            if spec.state == DesiredState::Exported {
                *moving += 1;
            }
        }
        match spec.state {
            DesiredState::Exported => {
                in_flight += 1;
                if phase == Some(Phase::Exported) {
                    plan.steps.push(if draining.contains(host) {
                        DrainStep::Place(spec.id.clone())
                    } else {
                        DrainStep::Return(spec.id.clone())
                    });
                }
            }
            _ if spec.handoff.is_some() => {
                let from = spec.handoff.as_ref().map(|h| h.from.as_str()).unwrap_or("");
                if from != host
                    && let Some((count, moving)) = left.get_mut(from)
                {
                    // Not done leaving its old host until it is up here.
                    *count += 1;
                    *moving += 1;
                }
                if matches!(phase, Some(Phase::Running | Phase::Stopped)) {
                    plan.steps.push(DrainStep::Finish(spec.id.clone()));
                } else {
                    // Arrived, still taking its disk or starting.
                    in_flight += 1;
                }
            }
            _ if draining.contains(host) && up.contains(host) => candidates.push(spec.id.clone()),
            _ => {}
        }
    }
    let room = at_once.saturating_sub(in_flight);
    plan.steps
        .extend(candidates.into_iter().take(room).map(DrainStep::Export));
    for (host, (count, moving)) in left {
        let note = if count == 0 {
            EMPTY_NOTE.to_owned()
        } else if !up.contains(host) {
            format!("{count} vnode(s) wait for the host to come back (or recover them elsewhere)")
        } else {
            format!("{count} vnode(s) left, {moving} moving")
        };
        plan.notes.insert(host.to_owned(), note);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vnode::Handoff;
    use crate::model::vnode::tests::spec;

    fn node(id: &str, state: DesiredState) -> VNodeSpec {
        VNodeSpec {
            id: id.into(),
            state,
            handoff: (state == DesiredState::Exported).then(|| Handoff {
                token: "t".repeat(24),
                from: "tb2".into(),
                resume: DesiredState::Running,
            }),
            ..spec()
        }
    }

    fn status(id: &str, host: &str, phase: Phase) -> (String, VNodeStatus) {
        (
            id.into(),
            VNodeStatus {
                id: id.into(),
                host: host.into(),
                phase,
                ..Default::default()
            },
        )
    }

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_drains_nothing_moves() {
        let specs = vec![("tb1".into(), node("a-c-0", DesiredState::Running))];
        let plan = plan(&set(&[]), &set(&["tb1"]), &specs, &HashMap::new(), 4);
        assert_eq!(plan, DrainPlan::default());
    }

    #[test]
    fn a_draining_host_exports_its_vnodes_a_few_at_a_time() {
        let specs: Vec<(String, VNodeSpec)> = (0..6)
            .map(|i| {
                (
                    "tb2".into(),
                    node(&format!("a-c-{i}"), DesiredState::Running),
                )
            })
            .chain([("tb1".into(), node("b-c-0", DesiredState::Running))])
            .collect();
        let plan = plan(
            &set(&["tb2"]),
            &set(&["tb1", "tb2"]),
            &specs,
            &HashMap::new(),
            4,
        );
        assert_eq!(
            plan.steps,
            (0..4)
                .map(|i| DrainStep::Export(format!("a-c-{i}")))
                .collect::<Vec<_>>()
        );
        assert_eq!(plan.notes["tb2"], "6 vnode(s) left, 0 moving");
    }

    #[test]
    fn moves_in_flight_count_against_the_limit() {
        let specs = vec![
            ("tb2".into(), node("a-c-0", DesiredState::Exported)),
            ("tb2".into(), node("a-c-1", DesiredState::Exported)),
            ("tb2".into(), node("a-c-2", DesiredState::Stopped)),
            ("tb2".into(), node("a-c-3", DesiredState::Running)),
        ];
        let statuses = HashMap::from([status("a-c-0", "tb2", Phase::Exported)]);
        let plan = plan(&set(&["tb2"]), &set(&["tb1", "tb2"]), &specs, &statuses, 3);
        assert_eq!(
            plan.steps,
            vec![
                DrainStep::Place("a-c-0".into()),
                DrainStep::Export("a-c-2".into())
            ]
        );
        assert_eq!(plan.notes["tb2"], "4 vnode(s) left, 2 moving");
    }

    #[test]
    fn an_undrained_host_takes_its_exported_vnodes_back() {
        let specs = vec![("tb2".into(), node("a-c-0", DesiredState::Exported))];
        let statuses = HashMap::from([status("a-c-0", "tb2", Phase::Exported)]);
        let plan = plan(&set(&[]), &set(&["tb2"]), &specs, &statuses, 4);
        assert_eq!(plan.steps, vec![DrainStep::Return("a-c-0".into())]);
    }

    #[test]
    fn an_arrived_vnode_finishes_its_move_once_up_there() {
        let mut arrived = node("a-c-0", DesiredState::Running);
        arrived.handoff = node("x", DesiredState::Exported).handoff;
        let specs = vec![("tb1".into(), arrived)];
        // The status of the old host does not count.
        let old = HashMap::from([status("a-c-0", "tb2", Phase::Running)]);
        assert!(
            plan(&set(&["tb2"]), &set(&["tb1", "tb2"]), &specs, &old, 4)
                .steps
                .is_empty()
        );
        let starting = HashMap::from([status("a-c-0", "tb1", Phase::Creating)]);
        let plan_starting = plan(&set(&["tb2"]), &set(&["tb1", "tb2"]), &specs, &starting, 4);
        assert!(plan_starting.steps.is_empty());
        assert_eq!(plan_starting.notes["tb2"], "1 vnode(s) left, 1 moving");
        let up = HashMap::from([status("a-c-0", "tb1", Phase::Running)]);
        let plan = plan(&set(&["tb2"]), &set(&["tb1", "tb2"]), &specs, &up, 4);
        assert_eq!(plan.steps, vec![DrainStep::Finish("a-c-0".into())]);
        // Done leaving once the handoff is dropped (the next pass).
        let mut done = specs.clone();
        done[0].1.handoff = None;
        let after = super::plan(&set(&["tb2"]), &set(&["tb1", "tb2"]), &done, &up, 4);
        assert_eq!(after.notes["tb2"], EMPTY_NOTE);
    }

    #[test]
    fn a_down_host_cannot_hand_anything_over() {
        let specs = vec![("tb2".into(), node("a-c-0", DesiredState::Running))];
        let plan = plan(&set(&["tb2"]), &set(&["tb1"]), &specs, &HashMap::new(), 4);
        assert!(plan.steps.is_empty());
        assert!(
            plan.notes["tb2"].contains("wait for the host"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn deleted_vnodes_are_left_to_their_worker() {
        let specs = vec![("tb2".into(), node("a-c-0", DesiredState::Deleted))];
        let plan = plan(&set(&["tb2"]), &set(&["tb2"]), &specs, &HashMap::new(), 4);
        assert!(plan.steps.is_empty());
        assert_eq!(plan.notes["tb2"], EMPTY_NOTE);
    }
}
