//! The masters' view of what everything uses. Every `metrics_interval` seconds each master
//! asks every worker's agent for its last sampling (`GET /agent/v1/samples`), and keeps:
//! a bounded [`History`] per vnode and per host (10 s for an hour, 1 min for a day, 15 min
//! for 30 days); the usage ledger (vnode, CPU and memory hours per user and day, 400 days);
//! and how long each running cluster has been idle. The leading master stops clusters idle
//! for longer than their group allows, marking the cluster record so that the portal and
//! the event stream say why. All of it is saved to the master's state directory every five
//! minutes and at a clean stop, and loaded at start: a restart loses at most those minutes.
//! A deleted vnode's history goes with it.
//!
//! Pulling from the agents (rather than workers writing samples into etcd) keeps the
//! samples' volume out of etcd; several masters each keep their own copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::actions::{ApiError, Caller, node_ids};
use super::{Master, now_secs};
use crate::model::metrics::{
    self, DAY_SECS, History, HostSample, Point, UsageLedger, VnodeSample, WorkerSamples,
};
use crate::model::vcluster::{IdleStop, OperationKind};
use crate::model::vnode::DesiredState;
use crate::store::EtcdStore;

/// How long the ledger keeps days.
const LEDGER_DAYS: u64 = 400;
/// How often the state is written to disk.
const SAVE_EVERY: Duration = Duration::from_secs(300);
/// How long one agent may take to answer.
const AGENT_LIMIT: Duration = Duration::from_secs(5);

/// What survives a restart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// `vnode:<id>` and `host:<name>` → history.
    histories: HashMap<String, History>,
    ledger: UsageLedger,
    /// `user/cluster` → since when it has been idle (seconds since the epoch).
    idle_since: BTreeMap<String, u64>,
}

#[derive(Default)]
struct State {
    saved: Saved,
    /// Each host's last sampling.
    latest: BTreeMap<String, WorkerSamples>,
    /// Each vnode's previous sample, for idleness.
    previous: HashMap<String, VnodeSample>,
}

/// The master's collected metrics (see the module's text).
#[derive(Default)]
pub struct Collected {
    state: Mutex<State>,
}

/// A node's figures: the last sample and the history asked for.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeMetrics {
    pub index: u32,
    pub id: String,
    #[schema(value_type = Option<Object>)]
    pub latest: Option<VnodeSample>,
    /// Seconds between points.
    pub step: u64,
    #[schema(value_type = Vec<Object>)]
    pub points: Vec<Point>,
}

/// `GET /clusters/{name}/metrics`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterMetrics {
    pub cluster: String,
    pub user: String,
    /// Seconds the cluster has been idle (none while it is busy or stopped).
    pub idle_secs: Option<u64>,
    pub nodes: Vec<NodeMetrics>,
}

/// `GET /hosts/{name}/metrics`: points carry the host's CPU, memory in use and disk in use.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HostMetrics {
    pub host: String,
    #[schema(value_type = Option<Object>)]
    pub latest: Option<HostSample>,
    pub step: u64,
    #[schema(value_type = Vec<Object>)]
    pub points: Vec<Point>,
}

fn state_file() -> PathBuf {
    crate::config::master_state_dir().join("metrics.json")
}

impl Collected {
    /// Loads what an earlier run saved (nothing, if it cannot be read: said in the log).
    pub fn load() -> Collected {
        let file = state_file();
        let saved = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => {
                    info!(
                        histories = saved.histories.len(),
                        "metrics history loaded from {}",
                        file.display()
                    );
                    saved
                }
                Err(e) => {
                    warn!(
                        "{} is unreadable ({e}); starting a new history",
                        file.display()
                    );
                    Saved::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => {
                warn!(
                    "cannot read {} ({e}); starting a new history",
                    file.display()
                );
                Saved::default()
            }
        };
        Collected {
            state: Mutex::new(State {
                saved,
                ..State::default()
            }),
        }
    }

    /// Writes the state (through a temporary file, renamed).
    pub fn save(&self) {
        let file = state_file();
        let bytes = {
            let state = self.state.lock().unwrap();
            serde_json::to_vec(&state.saved).expect("metrics serialize")
        };
        let part = file.with_extension("json.part");
        let written = std::fs::write(&part, &bytes).and_then(|()| std::fs::rename(&part, &file));
        match written {
            Ok(()) => debug!(bytes = bytes.len(), "metrics saved"),
            Err(e) => warn!("cannot save metrics to {}: {e}", file.display()),
        }
    }

    /// Takes in one round of samplings; returns the clusters (`user/cluster`) and since
    /// when they have been idle.
    fn record(&self, samplings: Vec<WorkerSamples>, now: u64) -> BTreeMap<String, u64> {
        let mut state = self.state.lock().unwrap();
        let State {
            saved,
            latest,
            previous,
        } = &mut *state;
        let mut busy: BTreeMap<String, bool> = BTreeMap::new();
        for sampling in &samplings {
            if let Some(h) = &sampling.host_sample {
                saved
                    .histories
                    .entry(format!("host:{}", sampling.host))
                    .or_default()
                    .record(&host_point(h));
            }
            for node in &sampling.vnodes {
                saved
                    .histories
                    .entry(format!("vnode:{}", node.id))
                    .or_default()
                    .record(&Point::of(&node.sample));
                saved
                    .ledger
                    .add(&node.user, &node.sample, sampling.interval_secs);
                let is_busy = metrics::vnode_busy(previous.get(&node.id), &node.sample);
                *busy
                    .entry(format!("{}/{}", node.user, node.cluster))
                    .or_default() |= is_busy;
                previous.insert(node.id.clone(), node.sample);
            }
        }
        // Clusters with no running node are not idle: they are stopped (or gone).
        saved.idle_since.retain(|key, _| busy.contains_key(key));
        for (key, is_busy) in busy {
            if is_busy {
                saved.idle_since.remove(&key);
            } else {
                saved.idle_since.entry(key).or_insert(now);
            }
        }
        let running: Vec<String> = samplings
            .iter()
            .flat_map(|s| s.vnodes.iter().map(|n| n.id.clone()))
            .collect();
        previous.retain(|id, _| running.contains(id));
        saved
            .ledger
            .forget_before((now / DAY_SECS).saturating_sub(LEDGER_DAYS));
        for sampling in samplings {
            latest.insert(sampling.host.clone(), sampling);
        }
        saved.idle_since.clone()
    }

    /// Forgets what hosts no longer registered reported, the histories of vnodes that no
    /// longer exist (`vnodes`: every vnode id in etcd), and those of hosts silent for the
    /// history's whole span: what is kept is bounded by what exists.
    fn forget(&self, hosts: &[String], vnodes: &HashSet<String>, now: u64) {
        let mut state = self.state.lock().unwrap();
        state.latest.retain(|host, _| hosts.contains(host));
        let span = metrics::DEFAULT_RESOLUTIONS
            .iter()
            .map(|r| r.step_secs * r.points as u64)
            .max()
            .unwrap_or(0);
        state
            .saved
            .histories
            .retain(|key, history| match key.split_once(':') {
                Some(("vnode", id)) => vnodes.contains(id),
                _ => history
                    .latest()
                    .is_some_and(|t| now.saturating_sub(t) < span),
            });
    }

    fn latest_of(&self, id: &str) -> Option<VnodeSample> {
        let state = self.state.lock().unwrap();
        state
            .latest
            .values()
            .flat_map(|s| &s.vnodes)
            .find(|n| n.id == id)
            .map(|n| n.sample)
    }

    fn history(&self, key: &str, from: u64) -> (u64, Vec<Point>) {
        let state = self.state.lock().unwrap();
        state
            .saved
            .histories
            .get(key)
            .map(|h| h.since(from))
            .unwrap_or((0, Vec::new()))
    }
}

/// A host's sample as a history point: CPU, memory in use, disk in use.
fn host_point(h: &HostSample) -> Point {
    Point {
        t: h.at,
        cpu_percent: h.cpu_percent.unwrap_or(0.0) as f32,
        memory_bytes: h
            .memory_total_bytes
            .saturating_sub(h.memory_available_bytes),
        disk_bytes: h.disk_used_bytes,
        rx_bytes: 0,
        tx_bytes: 0,
    }
}

impl Master {
    /// Collects every worker's samples every `metrics_interval` seconds, forever; saves the
    /// state every few minutes.
    pub async fn collect_metrics(self: std::sync::Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(self.config.metrics_interval));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = Instant::now();
        loop {
            every.tick().await;
            if let Err(e) = self.collect_once().await {
                debug!("metrics: {e}");
            }
            if last_save.elapsed() >= SAVE_EVERY {
                let master = self.clone();
                let _ = tokio::task::spawn_blocking(move || master.metrics.save()).await;
                last_save = Instant::now();
            }
        }
    }

    async fn collect_once(&self) -> Result<(), ApiError> {
        let store = self.store().await?;
        let hosts = store.list_hosts().await?;
        let port = self.config.agent_port;
        let fetches = hosts.iter().map(|host| async move {
            let address = host.addresses.first()?.split('/').next()?.to_owned();
            let agent = match address.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
                Err(_) => format!("{address}:{port}"),
            };
            let samples = "/agent/v1/samples";
            match super::agent_client::get(&host.name, &agent, samples, AGENT_LIMIT).await {
                Ok((200, text)) => serde_json::from_str::<WorkerSamples>(&text)
                    .map_err(|e| warn!(host = %host.name, "odd samples: {e}"))
                    .ok(),
                Ok((status, text)) => {
                    warn!(host = %host.name, "samples: HTTP {status} {}", text.trim());
                    None
                }
                Err(e) => {
                    debug!(host = %host.name, "samples: {e}");
                    None
                }
            }
        });
        let samplings: Vec<WorkerSamples> = futures_util::future::join_all(fetches)
            .await
            .into_iter()
            .flatten()
            .collect();
        let now = now_secs();
        let idle = self.metrics.record(samplings, now);
        let vnodes: HashSet<String> = store
            .all_vnode_specs()
            .await?
            .into_iter()
            .map(|(_, spec)| spec.id)
            .collect();
        let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        self.metrics.forget(&names, &vnodes, now);
        if self.leading.load(Ordering::SeqCst) {
            self.stop_idle_clusters(&store, &idle, now).await;
        }
        Ok(())
    }

    /// Stops the clusters idle for longer than their owner's group allows.
    async fn stop_idle_clusters(&self, store: &EtcdStore, idle: &BTreeMap<String, u64>, now: u64) {
        for (key, since) in idle {
            let Some((user, cluster)) = key.split_once('/') else {
                continue;
            };
            // A batch task's nodes end with their command: the job's time limit applies.
            if crate::model::vnode::is_batch_cluster(cluster) {
                continue;
            }
            let Ok(Some(account)) = store.account(user).await else {
                continue;
            };
            let Ok(group) = self.group_of(store, &account).await else {
                continue;
            };
            let limit = group.quota.idle_secs;
            if !metrics::idle_expired(*since, now, limit) {
                continue;
            }
            let stop = IdleStop {
                at: now,
                idle_secs: now - since,
            };
            let stopped = store
                .change_cluster(user, cluster, |c| {
                    let mut c = c.clone();
                    c.idle_stop = Some(stop);
                    let states = node_ids(&c)
                        .into_iter()
                        .map(|id| (id, DesiredState::Stopped))
                        .collect();
                    Ok((Some(c), states))
                })
                .await;
            match stopped {
                Ok(_) => {
                    let ids = match store.cluster(user, cluster).await {
                        Ok(Some((c, _))) => node_ids(&c),
                        _ => Vec::new(),
                    };
                    let detail = format!("idle for {} s (limit {limit} s)", stop.idle_secs);
                    let _ = self
                        .record_operation(
                            store,
                            "docklet",
                            OperationKind::Stop,
                            user,
                            cluster,
                            ids,
                            &detail,
                        )
                        .await;
                    self.metrics
                        .state
                        .lock()
                        .unwrap()
                        .saved
                        .idle_since
                        .remove(key);
                }
                Err(e) => warn!(user, cluster, "cannot stop the idle cluster: {e}"),
            }
        }
    }

    /// A cluster's nodes' figures from `since` seconds ago on.
    pub async fn cluster_metrics(
        &self,
        caller: &Caller,
        user: Option<&str>,
        name: &str,
        since: u64,
    ) -> Result<ClusterMetrics, ApiError> {
        let owner = caller.owner(user)?;
        let store = self.store().await?;
        let (cluster, _) = self.find_cluster(&store, &owner, name).await?;
        let from = now_secs().saturating_sub(since);
        let nodes = cluster
            .nodes
            .iter()
            .map(|&index| {
                let id = crate::model::vcluster::node_id(&owner, name, index);
                let (step, points) = self.metrics.history(&format!("vnode:{id}"), from);
                NodeMetrics {
                    index,
                    latest: self.metrics.latest_of(&id),
                    id,
                    step,
                    points,
                }
            })
            .collect();
        let idle_secs = self
            .metrics
            .state
            .lock()
            .unwrap()
            .saved
            .idle_since
            .get(&format!("{owner}/{name}"))
            .map(|since| now_secs().saturating_sub(*since));
        Ok(ClusterMetrics {
            cluster: name.to_owned(),
            user: owner,
            idle_secs,
            nodes,
        })
    }

    /// A host's figures from `since` seconds ago on (administrators).
    pub async fn host_metrics(
        &self,
        caller: &Caller,
        host: &str,
        since: u64,
    ) -> Result<HostMetrics, ApiError> {
        caller.require_admin()?;
        let store = self.store().await?;
        if !store.list_hosts().await?.iter().any(|h| h.name == host) {
            return Err(ApiError::NotFound(format!("no host {host} is up")));
        }
        let from = now_secs().saturating_sub(since);
        let (step, points) = self.metrics.history(&format!("host:{host}"), from);
        let latest = self
            .metrics
            .state
            .lock()
            .unwrap()
            .latest
            .get(host)
            .and_then(|s| s.host_sample.clone());
        Ok(HostMetrics {
            host: host.to_owned(),
            latest,
            step,
            points,
        })
    }

    /// Every host's and vnode's last sample in the Prometheus text format (administrators).
    pub fn prometheus(&self, caller: &Caller) -> Result<String, ApiError> {
        caller.require_admin()?;
        let state = self.metrics.state.lock().unwrap();
        let samplings: Vec<WorkerSamples> = state.latest.values().cloned().collect();
        Ok(metrics::exposition(&samplings))
    }

    /// The usage ledger for days `from..=to` (`YYYY-MM-DD`) as CSV (administrators).
    pub fn usage_csv(&self, caller: &Caller, from: &str, to: &str) -> Result<String, ApiError> {
        caller.require_admin()?;
        let day = |field: &'static str, text: &str| {
            metrics::day_of_date(text).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_date",
                    field,
                    format!("{text:?} is not a YYYY-MM-DD date"),
                )
            })
        };
        let (from, to) = (day("from", from)?, day("to", to)?);
        if from > to {
            return Err(ApiError::invalid(
                "invalid_date",
                "to",
                "the last day comes before the first",
            ));
        }
        Ok(self
            .metrics
            .state
            .lock()
            .unwrap()
            .saved
            .ledger
            .csv(from, to))
    }
}
