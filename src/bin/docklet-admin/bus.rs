//! Talking to the daemons over D-Bus, and what a failure exits with.

use anyhow::Result;
use docklet::dbus_api::{BusError, Master1Proxy, Worker1Proxy};

/// A failure with the exit code documented above.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

pub(crate) fn failure(e: BusError, what: &str) -> Failure {
    let (code, message) = match e {
        BusError::AccessDenied(m) => (4, format!("permission denied: {m}")),
        BusError::AlreadyInitialized(m) => (5, m),
        BusError::EtcdUnavailable(m) => (6, m),
        BusError::NotInitialized(m) | BusError::Failed(m) => (1, m),
        BusError::InvalidArgument(m) => (2, m),
        BusError::NotFound(m) => (7, m),
        BusError::Conflict(m) => (8, m),
        BusError::Exhausted(m) => (9, m),
        BusError::ZBus(e) => zbus_failure(e, what),
    };
    Failure { code, message }
}

pub(crate) fn zbus_failure(e: zbus::Error, what: &str) -> (u8, String) {
    use zbus::DBusError;
    // The bus's own refusals arrive either as a raw method error or as a decoded fdo error.
    let (name, detail) = match &e {
        zbus::Error::MethodError(name, detail, _) => {
            (name.to_string(), detail.clone().unwrap_or_default())
        }
        zbus::Error::FDO(fdo) => (
            fdo.name().to_string(),
            fdo.description().unwrap_or_default().to_owned(),
        ),
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) => {
            return (3, format!("cannot reach the system bus: {e}"));
        }
        _ => return (1, e.to_string()),
    };
    match name.as_str() {
        "org.freedesktop.DBus.Error.AccessDenied" => (
            4,
            format!("permission denied: be root or in group docklet-admin ({detail})"),
        ),
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner"
        | "org.freedesktop.DBus.Error.Spawn.ChildExited"
        | "org.freedesktop.DBus.Error.Spawn.Failed" => (
            3,
            format!("the {what} is not running on this host ({detail})"),
        ),
        _ => (1, format!("{name}: {detail}")),
    }
}

pub(crate) async fn connect() -> Result<zbus::Connection, Failure> {
    zbus::Connection::system().await.map_err(|e| Failure {
        code: 3,
        message: format!("cannot reach the system bus: {e}"),
    })
}

pub(crate) fn usage(message: String) -> Failure {
    Failure { code: 2, message }
}

pub(crate) async fn master_proxy(conn: &zbus::Connection) -> Result<Master1Proxy<'_>, Failure> {
    Master1Proxy::new(conn)
        .await
        .map_err(|e| failure(e.into(), "master"))
}

pub(crate) async fn worker_proxy(conn: &zbus::Connection) -> Result<Worker1Proxy<'_>, Failure> {
    Worker1Proxy::new(conn)
        .await
        .map_err(|e| failure(e.into(), "worker"))
}

/// A record from the bus as the view `docklet-admin` prints (the master's, as its REST API
/// shows it); a record that does not convert is an answer this version cannot read.
pub(crate) fn from_wire<R, T>(record: R) -> Result<T, Failure>
where
    T: TryFrom<R>,
    T::Error: std::fmt::Display,
{
    T::try_from(record).map_err(|e| Failure {
        code: 1,
        message: format!("the master sent an unreadable answer: {e}"),
    })
}

/// [`from_wire`] for a method's one record (a struct in one out argument).
pub(crate) fn from_single<R, T>((record,): (R,)) -> Result<T, Failure>
where
    T: TryFrom<R>,
    T::Error: std::fmt::Display,
{
    from_wire(record)
}

/// [`from_wire`] for a listing.
pub(crate) fn all_from_wire<R, T>(records: Vec<R>) -> Result<Vec<T>, Failure>
where
    T: TryFrom<R>,
    T::Error: std::fmt::Display,
{
    records.into_iter().map(from_wire).collect()
}
