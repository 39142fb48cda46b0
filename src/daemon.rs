//! What both daemons share: logging to journald, the sd_notify protocol, the portal listener
//! (handed over by systemd or bound by the daemon itself), shutdown signals, credentials and
//! the retry-with-backoff loop for etcd.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::config::Config;
use crate::model::cluster::EtcdCredentials;

/// Logs to journald when it is there, else to stderr. `DOCKLET_LOG` sets the filter
/// (default `info`). In the journal every field of an event or of the spans around it is
/// `DOCKLET_<NAME>` (`user` is `DOCKLET_USER`), so `journalctl DOCKLET_USER=alice` finds
/// what was done to alice's things; every entry also carries this daemon's host as
/// `DOCKLET_HOST` (an entry about another host has both).
pub fn init_logging(identifier: &str, host: &str) {
    let filter = EnvFilter::try_from_env("DOCKLET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = if Path::new("/run/systemd/journal/socket").exists() {
        tracing_journald::layer().ok().map(|layer| {
            layer
                .with_field_prefix(Some("DOCKLET".to_owned()))
                .with_syslog_identifier(identifier.to_owned())
                .with_custom_fields([("DOCKLET_HOST", host)])
        })
    } else {
        None
    };
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(io::stderr)
                    .with_target(false),
            )
            .init(),
    }
}

/// The sd_notify side of a daemon; a no-op when not started by systemd.
#[derive(Clone, Debug)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn send(&self, state: &[sd_notify::NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(state)
        {
            warn!("sd_notify failed: {e}");
        }
    }

    /// Sets the one-line status `systemctl status` shows, and logs it.
    pub fn status(&self, text: &str) {
        info!(status = text, "{text}");
        self.send(&[sd_notify::NotifyState::Status(text)]);
    }

    pub fn ready(&self, text: &str) {
        info!(status = text, "ready: {text}");
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(text),
        ]);
    }

    pub fn stopping(&self) {
        info!("stopping");
        self.send(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ]);
    }

    pub fn watchdog(&self) {
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }

    /// How often the live loop must call [`Notifier::watchdog`]: half the configured
    /// `WatchdogSec`, or every 10 s when there is none.
    pub fn watchdog_interval(&self) -> Duration {
        sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .unwrap_or(Duration::from_secs(10))
    }
}

/// A daemon's one-line status: what D-Bus `Status` returns, sent to systemd as `STATUS=` (what
/// `systemctl status` shows) and logged, each time it changes.
#[derive(Debug)]
pub struct StatusLine {
    text: std::sync::Mutex<String>,
    notifier: Notifier,
}

impl StatusLine {
    pub fn new(notifier: Notifier) -> StatusLine {
        StatusLine {
            text: std::sync::Mutex::new("starting".into()),
            notifier,
        }
    }

    pub fn get(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    pub fn set(&self, text: String) {
        let mut current = self.text.lock().unwrap();
        if *current != text {
            self.notifier.status(&text);
            *current = text;
        }
    }
}

/// The portal socket: systemd's (socket activation) when it passed one, else bound here on
/// every address at `port` (for development and hosts without the .socket unit).
pub fn portal_listener(port: u16) -> io::Result<(TcpListener, bool)> {
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(listener) = fds.take_tcp_listener(0)? {
        listener.set_nonblocking(true)?;
        return Ok((listener, true));
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))?;
    listener.set_nonblocking(true)?;
    Ok((listener, false))
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

/// Why the etcd credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no cluster credentials at {0} yet: run `docklet-admin init` on the master, and make sure the shared filesystem is mounted at the configured global directory"
    )]
    Missing(String),
    #[error("cannot read cluster credentials {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// Reads the credentials `docklet-admin init` wrote to the shared filesystem.
pub fn read_credentials(config: &Config) -> Result<EtcdCredentials, CredentialsError> {
    let path = config.credentials_file();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            EtcdCredentials::from_toml(&text).map_err(|reason| CredentialsError::Unreadable {
                path: path.display().to_string(),
                reason,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(CredentialsError::Missing(path.display().to_string()))
        }
        Err(e) => Err(CredentialsError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Exponential backoff for reconnecting: 1 s doubling to 30 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(30);

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// This machine's host name, as registered in etcd and logged as `DOCKLET_HOST`.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Exit status for a configuration error (sysexits EX_CONFIG); the units do not restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// Command line shared by both daemons.
#[derive(clap::Parser, Debug)]
#[command(version)]
pub struct DaemonArgs {
    /// Configuration file.
    #[arg(long, default_value = crate::config::DEFAULT_PATH, env = "DOCKLET_CONFIG")]
    pub config: std::path::PathBuf,
    /// Validate the configuration file and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Create the directories the daemon writes, with their owners, and exit (run as root
    /// before the daemon drops privileges, as docklet-master.service's ExecStartPre=+ does).
    #[arg(long)]
    pub prepare_dirs: bool,
}

/// A daemon's name and what it is: its command line's name and help, its log identifier and
/// its man page (which `docklet-admin generate-manuals` builds from the same [`daemon_command`]).
#[derive(Debug, Clone, Copy)]
pub struct DaemonName {
    pub identifier: &'static str,
    /// One line: `-h`, and the man page's NAME.
    pub about: &'static str,
    /// More about it: `--help`, and the man page's DESCRIPTION.
    pub description: &'static str,
}

pub const MASTER: DaemonName = DaemonName {
    identifier: "docklet-master",
    about: "Docklet master: portal, API and control plane",
    description: "Docklet master: the web portal, the JSON API, the workspace and port proxies, \
                  D-Bus administration (org.docklet.Master1) and the controllers, one master \
                  leading. It keeps no state of its own: everything lives in etcd. Normally \
                  started by docklet-master.socket on the first connection to proxy_port (or by \
                  D-Bus), as user docklet; run by hand it binds proxy_port itself.",
};

pub const WORKER: DaemonName = DaemonName {
    identifier: "docklet-worker",
    about: "Docklet worker: registers this host and runs its vnodes",
    description: "Docklet worker: registers this host in etcd under a lease, makes the host \
                  match the vnode specs etcd holds for it (files, mounts, networks, transient \
                  units), serves org.docklet.Worker1 on D-Bus and the agent (exec, terminals, \
                  tunnels) to masters over mutual TLS. Started by docklet-worker.service, as \
                  root.",
};

/// The command line of one daemon: [`DaemonArgs`] under the daemon's name and help.
pub fn daemon_command(daemon: DaemonName) -> clap::Command {
    use clap::CommandFactory;
    DaemonArgs::command()
        .name(daemon.identifier)
        .about(daemon.about)
        .long_about(daemon.description)
}

/// What `--prepare-dirs` does for one daemon.
pub type PrepareDirs = fn(&Config) -> io::Result<()>;

/// The `main` of both daemons: parses the command line, loads the configuration (refusing a
/// bad one with the key, the value and the reason), sets up logging and runs `run`.
/// An error that ends a daemon, with the exit status it ends with: [`EXIT_CONFIG`] for a
/// configuration that cannot work here (systemd does not restart on it), else 1.
pub trait DaemonError: std::fmt::Display {
    fn exit_code(&self) -> u8 {
        1
    }
}

pub fn daemon_main<F, Fut, E>(
    daemon: DaemonName,
    prepare_dirs: PrepareDirs,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: DaemonError,
{
    use clap::FromArgMatches;
    use std::process::ExitCode;
    let identifier = daemon.identifier;
    let matches = daemon_command(daemon).get_matches();
    let args = DaemonArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            // Logging is not set up yet; stderr reaches the journal and `systemctl status`.
            eprintln!("{identifier}: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("{}: configuration OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    if args.prepare_dirs {
        return match prepare_dirs(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "{identifier}: cannot prepare directories under {}: {e}",
                    config.fs_prefix.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    init_logging(identifier, &host_name());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Read buffer of a terminal's WebSocket. Keystrokes and screen updates are small; the
/// default (128 KiB per socket, allocated up front) made 200 open terminals cost the master
/// 50 MiB.
pub const TERMINAL_WS_READ_BUFFER: usize = 16 << 10;

/// Counts open terminals (relays in the master, sessions in the worker). glibc keeps freed
/// heap for reuse, so after a burst of many at once a daemon would stay at its peak; when
/// the last one closes, the free memory goes back to the system.
pub struct OpenTerminals(std::sync::atomic::AtomicUsize);

/// One open terminal; dropping it closes it.
pub struct OpenTerminal(&'static OpenTerminals);

impl OpenTerminals {
    pub const fn new() -> OpenTerminals {
        OpenTerminals(std::sync::atomic::AtomicUsize::new(0))
    }

    pub fn open(&'static self) -> OpenTerminal {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenTerminal(self)
    }
}

impl Default for OpenTerminals {
    fn default() -> Self {
        OpenTerminals::new()
    }
}

impl Drop for OpenTerminal {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            // SAFETY: malloc_trim only returns free memory to the system; it touches no
            // live allocation.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Seconds since the epoch, as records in etcd keep time.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `Upgrade` protocol of a worker agent's TCP tunnel (`GET /agent/v1/vnodes/{id}/tcp/{port}`):
/// the master asks for it, the agent grants it.
pub const TCP_UPGRADE: &str = "docklet-tcp";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_secs(), 1);
    }

    /// Every option of both daemons says what it is in `--help` and in their man pages.
    #[test]
    fn every_daemon_option_has_help() {
        for daemon in [MASTER, WORKER] {
            let mut command = daemon_command(daemon);
            command.build();
            assert_eq!(command.get_name(), daemon.identifier);
            assert!(command.get_subcommands().next().is_none());
            let missing: Vec<&str> = command
                .get_arguments()
                .filter(|arg| arg.get_help().is_none())
                .map(|arg| arg.get_id().as_str())
                .collect();
            // clap's own --help and --version have help of their own.
            assert!(
                missing.is_empty(),
                "{}: without help text: {missing:?}",
                daemon.identifier
            );
            assert!(command.get_arguments().count() >= 5);
        }
    }

    #[test]
    fn missing_credentials_tell_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            fs_prefix: dir.path().to_owned(),
            ..Config::default()
        };
        let err = read_credentials(&config).unwrap_err().to_string();
        assert!(err.contains("docklet-admin init"), "{err}");
        assert!(err.contains("global/secrets/etcd.toml"), "{err}");

        let file = dir.path().join("creds.toml");
        std::fs::write(&file, "garbage = [").unwrap();
        config.etcd.credentials_file = Some(file);
        let err = read_credentials(&config).unwrap_err().to_string();
        assert!(err.contains("cannot read cluster credentials"), "{err}");
    }
}
