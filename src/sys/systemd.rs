//! systemd over D-Bus (zbus): transient units for vnodes and exec sessions, their state, and
//! waiting for jobs. Never `systemd-run`: the worker talks to the manager directly, so it sees
//! job results and unit properties as systemd reports them.
//!
//! One task reads systemd's signals for the whole connection and hands them out. (A zbus
//! signal stream that is not polled all the time fills up and then stalls every call on the
//! connection, replies included.)

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use crate::model::vnode::UnitState;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait SystemdManager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Variant<'_>)],
        aux: &[(&str, &[(&str, Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn try_restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Variant<'_>)],
    ) -> zbus::Result<()>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn unref_unit(&self, name: &str) -> zbus::Result<()>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    /// `systemctl enable`: returns whether the unit has install information, and the
    /// symlinks made.
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn reload(&self) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn unit_removed(&self, unit: String, path: OwnedObjectPath) -> zbus::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemd D-Bus call failed: {0}")]
    Bus(#[from] zbus::Error),
    #[error("job for {unit} finished with result {result:?}")]
    JobFailed { unit: String, result: String },
    #[error("timed out after {secs}s waiting for the job of {unit}")]
    Timeout { unit: String, secs: u64 },
}

/// What the worker reads of a unit.
#[derive(Debug, Clone, Default)]
pub struct UnitInfo {
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    pub main_pid: u32,
    pub control_group: String,
    /// `CLD_EXITED` (1), `CLD_KILLED` (2) or `CLD_DUMPED` (3), 0 while running.
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    /// Microseconds since the epoch.
    pub active_enter_usec: u64,
    pub inactive_exit_usec: u64,
}

impl UnitInfo {
    pub fn state(&self) -> UnitState {
        unit_state(&self.active_state)
    }

    /// The exit status as a shell reports it: the code, or 128 + the signal.
    pub fn exit_status(&self) -> i32 {
        match self.exec_main_code {
            1 => self.exec_main_status,
            2 | 3 => 128 + self.exec_main_status,
            _ => -1,
        }
    }
}

pub fn unit_state(active_state: &str) -> UnitState {
    match active_state {
        "active" | "reloading" => UnitState::Active,
        "activating" => UnitState::Starting,
        "deactivating" => UnitState::Stopping,
        _ => UnitState::Absent,
    }
}

/// One property of a transient unit, owned so lists of them can be built and passed around.
pub type Property = (&'static str, Variant<'static>);

/// `ExecStart=`/`ExecStopPost=` entries: `a(sasb)` of (path, argv, ignore-failure).
pub fn exec_property(name: &'static str, argv: &[String]) -> Property {
    let entry = (argv[0].clone(), argv.to_vec(), false);
    (name, Variant::new(vec![entry]))
}

#[derive(Clone)]
pub struct Systemd {
    connection: zbus::Connection,
    manager: SystemdManagerProxy<'static>,
    events: Arc<Events>,
    /// dbus-daemon allows a connection 128 calls awaiting replies; with hundreds of vnodes
    /// reconciled at once the worker would pass it ("LimitsExceeded").
    calls: Arc<tokio::sync::Semaphore>,
}

/// Method calls in flight on the worker's systemd connection at most.
const CALLS_IN_FLIGHT: usize = 32;

/// What the signal task hands out: results of jobs (to whoever waits for them) and "a vnode
/// unit went away".
#[derive(Default)]
struct Events {
    jobs: Mutex<JobBook>,
    vnode_unit_removed: tokio::sync::Notify,
}

#[derive(Default)]
struct JobBook {
    waiters: HashMap<String, tokio::sync::oneshot::Sender<String>>,
    /// Results that came before anyone asked (the signal can beat the method reply).
    finished: VecDeque<(String, String)>,
}

const FINISHED_KEPT: usize = 1024;

impl Events {
    fn job_removed(&self, job: String, result: String) {
        let mut book = self.jobs.lock().unwrap();
        match book.waiters.remove(&job) {
            Some(waiter) => {
                let _ = waiter.send(result);
            }
            None => {
                book.finished.push_back((job, result));
                if book.finished.len() > FINISHED_KEPT {
                    book.finished.pop_front();
                }
            }
        }
    }

    fn wait_for(&self, job: &str) -> tokio::sync::oneshot::Receiver<String> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let mut book = self.jobs.lock().unwrap();
        if let Some(i) = book.finished.iter().position(|(j, _)| j == job) {
            let (_, result) = book.finished.remove(i).expect("index from position");
            let _ = sender.send(result);
        } else {
            book.waiters.insert(job.to_owned(), sender);
        }
        receiver
    }
}

impl Systemd {
    pub async fn connect() -> Result<Systemd, SystemdError> {
        let connection = zbus::Connection::system().await?;
        let manager = SystemdManagerProxy::new(&connection).await?;
        let events = Arc::new(Events::default());
        let mut jobs = manager.receive_job_removed().await?;
        let mut removed = manager.receive_unit_removed().await?;
        // JobRemoved is only sent to subscribers.
        manager.subscribe().await?;
        let task_events = events.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    signal = jobs.next() => match signal {
                        Some(signal) => {
                            if let Ok(args) = signal.args() {
                                task_events.job_removed(args.job.to_string(), args.result.clone());
                            }
                        }
                        None => break,
                    },
                    signal = removed.next() => match signal {
                        Some(signal) => {
                            let ours = signal
                                .args()
                                .is_ok_and(|a| crate::model::vnode::id_from_unit(&a.unit).is_some());
                            if ours {
                                task_events.vnode_unit_removed.notify_one();
                            }
                        }
                        None => break,
                    },
                }
            }
            tracing::error!("systemd's signal stream ended");
        });
        Ok(Systemd {
            connection,
            manager,
            events,
            calls: Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT)),
        })
    }

    /// Completes when a vnode unit was unloaded (stopped, failed, collected) since the last call.
    pub async fn vnode_unit_removed(&self) {
        self.events.vnode_unit_removed.notified().await
    }

    async fn wait_job(
        &self,
        job: OwnedObjectPath,
        unit: &str,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        let result = self.events.wait_for(job.as_str());
        match tokio::time::timeout(timeout, result).await {
            Ok(Ok(result)) if result == "done" => Ok(()),
            Ok(Ok(result)) => Err(SystemdError::JobFailed {
                unit: unit.to_owned(),
                result,
            }),
            Ok(Err(_)) => Err(SystemdError::Bus(zbus::Error::Failure(
                "systemd's signal stream ended".into(),
            ))),
            Err(_) => Err(SystemdError::Timeout {
                unit: unit.to_owned(),
                secs: timeout.as_secs(),
            }),
        }
    }
}

/// What the worker asks of systemd's manager: the seam between the vnode reconciler (and
/// exec sessions) and the host, with [`Systemd`] for real and [`RecordingUnits`] for tests.
#[async_trait::async_trait]
pub trait Units: Send + Sync {
    /// Starts a transient unit and waits for its start job: for `Type=notify` that is when
    /// the service reported ready.
    async fn start_transient(
        &self,
        name: &str,
        properties: Vec<Property>,
        timeout: Duration,
    ) -> Result<(), SystemdError>;
    /// A transient slice with `properties` (its resource limits): made, or, if it is there
    /// already (an earlier run of the same vnode), given them for this boot.
    async fn ensure_slice(
        &self,
        name: &str,
        properties: Vec<Property>,
        timeout: Duration,
    ) -> Result<(), SystemdError>;
    /// Sends SIGKILL to every process of a unit (no unit: nothing to do).
    async fn kill(&self, name: &str) -> Result<(), SystemdError>;
    /// Stops a unit and waits until it is down. A unit that is not loaded is stopped already.
    async fn stop(&self, name: &str, timeout: Duration) -> Result<(), SystemdError>;
    /// The unit's state and main facts, `None` when it is not loaded.
    async fn unit_info(&self, name: &str) -> Result<Option<UnitInfo>, SystemdError>;
    /// Loaded units whose names match `pattern` (a glob), with their active state.
    async fn list_units(&self, pattern: &str) -> Result<Vec<(String, String)>, SystemdError>;
    /// Forgets a failed unit of an earlier run, which would block the name.
    async fn reset_failed(&self, name: &str);
    /// Drops the reference a transient unit started with `AddRef=yes` holds for us.
    async fn unref(&self, name: &str);
}

#[async_trait::async_trait]
impl Units for Systemd {
    /// Starts a transient unit and waits for its start job: for `Type=notify` that is when the
    /// service reported ready.
    async fn start_transient(
        &self,
        name: &str,
        properties: Vec<Property>,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        let props = borrowed(&properties)?;
        let permit = self.calls.acquire().await.expect("never closed");
        let job = self
            .manager
            .start_transient_unit(name, "fail", &props, &[])
            .await?;
        drop(permit);
        self.wait_job(job, name, timeout).await
    }

    /// A transient slice with `properties` (its resource limits): made, or, if it is
    /// there already (an earlier run of the same vnode), given them for this boot.
    async fn ensure_slice(
        &self,
        name: &str,
        properties: Vec<Property>,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        // Not every property can change at run time; the limits can.
        let limits: Vec<Property> = properties
            .iter()
            .filter(|(k, _)| *k != "Description")
            .map(|(k, v)| v.try_clone().map(|v| (*k, v)))
            .collect::<Result<_, _>>()?;
        let props = borrowed(&limits)?;
        match self.start_transient(name, properties, timeout).await {
            Err(SystemdError::Bus(zbus::Error::MethodError(error, _, _)))
                if error.as_str() == "org.freedesktop.systemd1.UnitExists" =>
            {
                let _permit = self.calls.acquire().await.expect("never closed");
                Ok(self.manager.set_unit_properties(name, true, &props).await?)
            }
            other => other,
        }
    }

    /// Sends SIGKILL to every process of a unit (no unit: nothing to do).
    async fn kill(&self, name: &str) -> Result<(), SystemdError> {
        let _permit = self.calls.acquire().await.expect("never closed");
        match self.manager.kill_unit(name, "all", libc::SIGKILL).await {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops a unit and waits until it is down. A unit that is not loaded is stopped already.
    async fn stop(&self, name: &str, timeout: Duration) -> Result<(), SystemdError> {
        let permit = self.calls.acquire().await.expect("never closed");
        let job = match self.manager.stop_unit(name, "replace").await {
            Ok(job) => job,
            Err(e) if is_no_such_unit(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        drop(permit);
        match self.wait_job(job, name, timeout).await {
            // "failed"/"done" both leave it stopped; only a timeout is a failure to stop.
            Err(SystemdError::JobFailed { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The unit's state and main facts, `None` when it is not loaded.
    async fn unit_info(&self, name: &str) -> Result<Option<UnitInfo>, SystemdError> {
        let _permit = self.calls.acquire().await.expect("never closed");
        let path = match self.manager.get_unit(name).await {
            Ok(path) => path,
            Err(e) if is_no_such_unit(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let props = zbus::fdo::PropertiesProxy::builder(&self.connection)
            .destination("org.freedesktop.systemd1")
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let unit: HashMap<String, OwnedVariant> = props
            .get_all("org.freedesktop.systemd1.Unit".try_into()?)
            .await
            .map_err(zbus::Error::from)?;
        let service: HashMap<String, OwnedVariant> = props
            .get_all("org.freedesktop.systemd1.Service".try_into()?)
            .await
            .unwrap_or_default();
        Ok(Some(UnitInfo {
            active_state: prop::<String>(&unit, "ActiveState"),
            sub_state: prop::<String>(&unit, "SubState"),
            result: prop::<String>(&service, "Result"),
            main_pid: prop::<u32>(&service, "MainPID"),
            control_group: prop::<String>(&service, "ControlGroup"),
            exec_main_code: prop::<i32>(&service, "ExecMainCode"),
            exec_main_status: prop::<i32>(&service, "ExecMainStatus"),
            active_enter_usec: prop::<u64>(&unit, "ActiveEnterTimestamp"),
            inactive_exit_usec: prop::<u64>(&unit, "InactiveExitTimestamp"),
        }))
    }

    /// Loaded units whose names match `pattern` (a glob), with their active state.
    async fn list_units(&self, pattern: &str) -> Result<Vec<(String, String)>, SystemdError> {
        let _permit = self.calls.acquire().await.expect("never closed");
        Ok(self
            .manager
            .list_units_by_patterns(&[], &[pattern])
            .await?
            .into_iter()
            .map(|u| (u.0, u.3))
            .collect())
    }

    async fn reset_failed(&self, name: &str) {
        let _permit = self.calls.acquire().await.expect("never closed");
        let _ = self.manager.reset_failed_unit(name).await;
    }

    async fn unref(&self, name: &str) {
        if let Err(e) = self.manager.unref_unit(name).await {
            tracing::debug!("UnrefUnit {name}: {e}");
        }
        let _ = self.manager.reset_failed_unit(name).await;
    }
}

/// Units for tests: every call in order (`start NAME`, `slice NAME`, `stop NAME`, `kill NAME`,
/// `reset-failed NAME`, `unref NAME`), the properties each start was given, and the units it
/// started, active until stopped or killed. With `fail_starts` set, a start's job ends with
/// that result and no unit stays.
#[derive(Default)]
pub struct RecordingUnits {
    pub calls: Mutex<Vec<String>>,
    pub units: Mutex<std::collections::BTreeMap<String, UnitInfo>>,
    /// `Name=value` of each started unit's properties.
    pub properties: Mutex<HashMap<String, Vec<String>>>,
    pub fail_starts: Mutex<Option<String>>,
}

impl RecordingUnits {
    fn record(&self, call: &str, name: &str) {
        self.calls.lock().unwrap().push(format!("{call} {name}"));
    }

    /// The calls so far that name `unit`, without it (`start`, `stop`, ...).
    pub fn calls_for(&self, unit: &str) -> Vec<String> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| c.strip_suffix(unit)?.strip_suffix(' ').map(str::to_owned))
            .collect()
    }

    /// A unit left running by an earlier worker, as systemd would show it.
    pub fn add_active(&self, name: &str) {
        self.units
            .lock()
            .unwrap()
            .insert(name.to_owned(), active_unit());
    }
}

fn active_unit() -> UnitInfo {
    UnitInfo {
        active_state: "active".into(),
        sub_state: "running".into(),
        result: "success".into(),
        active_enter_usec: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl Units for RecordingUnits {
    async fn start_transient(
        &self,
        name: &str,
        properties: Vec<Property>,
        _: Duration,
    ) -> Result<(), SystemdError> {
        self.record("start", name);
        let shown = properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.properties
            .lock()
            .unwrap()
            .insert(name.to_owned(), shown);
        if let Some(result) = self.fail_starts.lock().unwrap().clone() {
            return Err(SystemdError::JobFailed {
                unit: name.to_owned(),
                result,
            });
        }
        self.units
            .lock()
            .unwrap()
            .insert(name.to_owned(), active_unit());
        Ok(())
    }
    async fn ensure_slice(
        &self,
        name: &str,
        _: Vec<Property>,
        _: Duration,
    ) -> Result<(), SystemdError> {
        self.record("slice", name);
        self.units
            .lock()
            .unwrap()
            .insert(name.to_owned(), active_unit());
        Ok(())
    }
    async fn kill(&self, name: &str) -> Result<(), SystemdError> {
        self.record("kill", name);
        self.units.lock().unwrap().remove(name);
        Ok(())
    }
    async fn stop(&self, name: &str, _: Duration) -> Result<(), SystemdError> {
        self.record("stop", name);
        self.units.lock().unwrap().remove(name);
        Ok(())
    }
    async fn unit_info(&self, name: &str) -> Result<Option<UnitInfo>, SystemdError> {
        Ok(self.units.lock().unwrap().get(name).cloned())
    }
    async fn list_units(&self, pattern: &str) -> Result<Vec<(String, String)>, SystemdError> {
        // Patterns with one `*`, as the worker uses them.
        let (prefix, suffix) = pattern.split_once('*').unwrap_or((pattern, ""));
        let units = self.units.lock().unwrap();
        Ok(units
            .iter()
            .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix))
            .map(|(name, info)| (name.clone(), info.active_state.clone()))
            .collect())
    }
    async fn reset_failed(&self, name: &str) {
        self.record("reset-failed", name);
    }
    async fn unref(&self, name: &str) {
        self.record("unref", name);
    }
}

/// One property out of a `GetAll` answer; missing or of another type reads as the default.
fn prop<T>(map: &HashMap<String, OwnedVariant>, key: &str) -> T
where
    T: TryFrom<OwnedVariant> + Default,
{
    map.get(key)
        .and_then(|v| T::try_from(v.clone()).ok())
        .unwrap_or_default()
}

/// Properties as the D-Bus calls take them.
fn borrowed(properties: &[Property]) -> Result<Vec<(&str, Variant<'_>)>, SystemdError> {
    Ok(properties
        .iter()
        .map(|(k, v)| v.try_clone().map(|v| (*k, v)))
        .collect::<Result<_, _>>()?)
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => {
            name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_states_map_to_unit_states() {
        assert_eq!(unit_state("active"), UnitState::Active);
        assert_eq!(unit_state("activating"), UnitState::Starting);
        assert_eq!(unit_state("deactivating"), UnitState::Stopping);
        assert_eq!(unit_state("failed"), UnitState::Absent);
        assert_eq!(unit_state("inactive"), UnitState::Absent);
    }

    #[test]
    fn exit_status_follows_the_shell_convention() {
        let mut info = UnitInfo {
            exec_main_code: 1,
            exec_main_status: 3,
            ..Default::default()
        };
        assert_eq!(info.exit_status(), 3);
        info.exec_main_code = 2;
        info.exec_main_status = 9;
        assert_eq!(info.exit_status(), 137);
    }
}
