//! Terminal sessions that outlive their WebSocket. Each session is a shell on a pty in a vnode
//! (an exec unit, see [`super::exec`]) with a random id; a pump task owns the pty, keeps the
//! last [`SCROLLBACK`] bytes of output and hands live output to the one connection attached.
//! When that connection drops, the shell keeps running for [`DETACH_GRACE`], so a reloaded
//! page or a flaky network reattaches (`?session=<id>`) to the same shell, replaying what it
//! missed. A session ends when its shell exits, when its vnode stops (the shell dies with the
//! vnode's PID namespace), when a client ends it on purpose, or when nobody reattaches in time.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::exec::{self, ExecRequest};
use super::vnode::{Runtime, VNodeError};

/// How long a shell without a connection waits for one before it is hung up.
pub const DETACH_GRACE: Duration = Duration::from_secs(60);
/// Output kept per session for a reattaching connection.
pub const SCROLLBACK: usize = 256 << 10;
/// Sessions per vnode, attached or waiting: a runaway client cannot fill a host with shells.
pub const MAX_PER_VNODE: usize = 32;
/// A connection that takes no output for this long is dropped (and may reattach): a dead
/// peer must not stall the shell forever.
const SEND_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error(
        "{max} terminals are already open in vnode {0} (a closed page keeps its shell for {grace} s): close one",
        max = MAX_PER_VNODE,
        grace = DETACH_GRACE.as_secs()
    )]
    TooMany(String),
    #[error("cannot open a terminal: {0}")]
    Pty(#[from] nix::Error),
    #[error("cannot open a terminal: {0}")]
    Io(#[from] std::io::Error),
}

/// What an attached connection receives.
#[derive(Debug)]
pub enum Output {
    Data(Bytes),
    /// The shell ended with this status (128 + signal when killed); nothing follows.
    Exit(i32),
    /// The session could not run: why.
    Failed(String),
}

/// What a connection asks of its session.
#[derive(Debug)]
enum Command {
    Input(Bytes),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// End the session now: the shell is hung up.
    End,
}

pub struct Session {
    pub id: String,
    pub vnode: String,
    pub user: String,
    commands: mpsc::Sender<Command>,
    state: Mutex<State>,
    /// Rung when the attached connection goes: the pump starts the grace period.
    detached: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    scrollback: VecDeque<u8>,
    /// The connection receiving live output, by generation.
    attached: Option<(u64, mpsc::Sender<Output>)>,
    generations: u64,
}

/// An attachment: replay `scrollback`, then read `output` until it ends. Dropping it
/// detaches the connection (the shell then waits [`DETACH_GRACE`] for another).
pub struct Attachment {
    pub session: Arc<Session>,
    pub generation: u64,
    pub scrollback: Vec<u8>,
    pub output: mpsc::Receiver<Output>,
    /// A session started for this connection (not a reattachment).
    pub new: bool,
}

impl Session {
    pub async fn input(&self, data: Bytes) {
        let _ = self.commands.send(Command::Input(data)).await;
    }

    pub async fn resize(&self, cols: u16, rows: u16) {
        let _ = self.commands.send(Command::Resize { cols, rows }).await;
    }

    /// Hangs the shell up.
    pub async fn end(&self) {
        let _ = self.commands.send(Command::End).await;
    }

    /// Makes a new connection the session's one (a previous one stops receiving): it gets the
    /// scrollback, and every output after it, with nothing lost or repeated in between.
    fn attach(self: &Arc<Self>, new: bool) -> Attachment {
        let (tx, rx) = mpsc::channel(64);
        let mut state = self.state.lock().unwrap();
        state.generations += 1;
        let generation = state.generations;
        state.attached = Some((generation, tx));
        Attachment {
            session: self.clone(),
            generation,
            scrollback: state.scrollback.iter().copied().collect(),
            output: rx,
            new,
        }
    }

    /// Keeps `data` in the scrollback and returns the connection to send it to. Both under
    /// one lock, so an attachment sees each output either in its scrollback or live.
    fn record(&self, data: &[u8]) -> Option<(u64, mpsc::Sender<Output>)> {
        let mut state = self.state.lock().unwrap();
        keep_last(&mut state.scrollback, data, SCROLLBACK);
        state.attached.clone()
    }

    fn detach_if(&self, generation: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        if state
            .attached
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
        {
            state.attached = None;
            return true;
        }
        false
    }

    fn attached(&self) -> Option<(u64, mpsc::Sender<Output>)> {
        self.state.lock().unwrap().attached.clone()
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.session.detach_if(self.generation) {
            self.session.detached.notify_one();
        }
    }
}

/// Appends `data` to `ring`, dropping the oldest bytes beyond `limit`.
fn keep_last(ring: &mut VecDeque<u8>, data: &[u8], limit: usize) {
    let data = &data[data.len().saturating_sub(limit)..];
    let overflow = (ring.len() + data.len()).saturating_sub(limit);
    ring.drain(..overflow);
    ring.extend(data);
}

/// Every session on this host, by id.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

/// How a new session's shell looks.
pub struct Spec {
    pub vnode: String,
    pub user: String,
    pub cols: u16,
    pub rows: u16,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions open in `vnode`.
    pub fn count(&self, vnode: &str) -> usize {
        let sessions = self.sessions.lock().unwrap();
        sessions.values().filter(|s| s.vnode == vnode).count()
    }

    /// Reattaches to session `id` when it lives and belongs to `vnode` and `user`.
    pub fn reattach(&self, id: &str, vnode: &str, user: &str) -> Option<Attachment> {
        let session = self.sessions.lock().unwrap().get(id).cloned()?;
        (session.vnode == vnode && session.user == user).then(|| session.attach(false))
    }

    /// Starts a shell in the vnode and attaches to it.
    pub fn open(
        self: &Arc<Self>,
        runtime: Arc<Runtime>,
        spec: Spec,
    ) -> Result<Attachment, TerminalError> {
        let size = nix::pty::Winsize {
            ws_row: spec.rows.max(1),
            ws_col: spec.cols.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let (master, slave, path) = open_pty(&size)?;
        nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the file owns the fd and lives inside the AsyncFd, so it outlives the
        // registration.
        let master = unsafe { AsyncFd::register(std::fs::File::from(master)) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (commands, receiver) = mpsc::channel(64);
        let session = Arc::new(Session {
            id: super::paths::random_suffix() + &super::paths::random_suffix(),
            vnode: spec.vnode.clone(),
            user: spec.user.clone(),
            commands,
            state: Mutex::new(State::default()),
            detached: tokio::sync::Notify::new(),
        });
        {
            let mut sessions = self.sessions.lock().unwrap();
            let open = sessions.values().filter(|s| s.vnode == spec.vnode).count();
            if open >= MAX_PER_VNODE {
                return Err(TerminalError::TooMany(spec.vnode));
            }
            sessions.insert(session.id.clone(), session.clone());
        }
        let attachment = session.attach(true);
        let request = ExecRequest {
            id: spec.vnode,
            user: spec.user,
            argv: ["bash", "-l"].map(String::from).to_vec(),
            term: "xterm-256color".into(),
            tty: Some(path),
        };
        let registry = self.clone();
        tokio::spawn(async move {
            let id = session.id.clone();
            pump(&session, runtime, request, master, slave, receiver).await;
            registry.sessions.lock().unwrap().remove(&id);
        });
        Ok(attachment)
    }
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, nix::pty::Winsize);

/// A pseudo-terminal pair and the slave's path. The slave is nobody's controlling terminal
/// yet (openpty(3) would make it the worker's own, the worker being a session leader): the
/// session unit takes it.
pub(super) fn open_pty(size: &nix::pty::Winsize) -> nix::Result<(OwnedFd, OwnedFd, String)> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    unsafe { set_window_size(slave.as_raw_fd(), size) }?;
    // SAFETY: posix_openpt returned an open descriptor we now own.
    let master = unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
            master,
        ))
    };
    Ok((master, slave, name))
}

/// Runs the session: starts the shell's unit, moves bytes between the pty and the attached
/// connection, and ends the shell when asked or when nobody came back in time.
async fn pump(
    session: &Arc<Session>,
    runtime: Arc<Runtime>,
    request: ExecRequest,
    master: AsyncFd<std::fs::File>,
    slave: OwnedFd,
    mut commands: mpsc::Receiver<Command>,
) {
    let (stdin, stdout, stderr) = match pty_streams(&slave) {
        Ok(streams) => streams,
        Err(e) => return finish(session, Output::Failed(format!("pty: {e}"))).await,
    };
    // Held until the session ends: without an open slave the master reads EIO (hang-up)
    // before the session's unit has opened its terminal.
    let slave_held = slave;
    let mut unit = tokio::spawn(async move {
        exec::run(&runtime, runtime.units(), &request, stdin, stdout, stderr).await
    });
    let mut buf = vec![0u8; 16384];
    // Keystrokes not written yet: the shell may not read while its output waits for us.
    let mut pending: VecDeque<u8> = VecDeque::new();
    let mut detached_until: Option<Instant> = None;
    let mut finished = None;
    loop {
        tokio::select! {
            result = &mut unit => {
                finished = Some(result);
                break;
            }
            readable = master.readable() => {
                let Ok(mut guard) = readable else { break };
                match guard.try_io(|inner| inner.get_ref().read(&mut buf)) {
                    Ok(Ok(0)) | Ok(Err(_)) => break, // EIO: the shell's side closed
                    Ok(Ok(n)) => {
                        if let Some(generation) = emit(session, &buf[..n]).await
                            && session.detach_if(generation)
                        {
                            detached_until = Some(Instant::now() + DETACH_GRACE);
                        }
                    }
                    Err(_would_block) => continue,
                }
            }
            writable = master.writable(), if !pending.is_empty() => {
                let Ok(mut guard) = writable else { break };
                let (front, _) = pending.as_slices();
                match guard.try_io(|inner| inner.get_ref().write(front)) {
                    Ok(Ok(n)) => { pending.drain(..n); }
                    Ok(Err(_)) => break,
                    Err(_would_block) => continue,
                }
            }
            command = commands.recv(), if pending.len() < SCROLLBACK => match command {
                Some(Command::Input(data)) => {
                    detached_until = None;
                    pending.extend(data.iter());
                }
                Some(Command::Resize { cols, rows }) => resize(&master, cols, rows),
                Some(Command::End) | None => break,
            },
            () = session.detached.notified() => {
                if session.attached().is_none() && detached_until.is_none() {
                    detached_until = Some(Instant::now() + DETACH_GRACE);
                }
            }
            _ = sleep_until(detached_until) => {
                // Reattached meanwhile: keep going.
                if session.attached().is_some() {
                    detached_until = None;
                    continue;
                }
                break;
            }
        }
    }
    conclude(session, finished, master, slave_held, unit, &mut buf).await;
}

/// The command's stdin, stdout and stderr: the terminal's slave side.
fn pty_streams(slave: &OwnedFd) -> std::io::Result<(OwnedFd, OwnedFd, OwnedFd)> {
    Ok((slave.try_clone()?, slave.try_clone()?, slave.try_clone()?))
}

fn resize(master: &AsyncFd<std::fs::File>, cols: u16, rows: u16) {
    let size = nix::pty::Winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    let _ = unsafe { set_window_size(master.get_ref().as_raw_fd(), &size) };
}

/// Ends a terminal session: with its command's status once the command ended (after what it
/// wrote last), or by hanging the terminal up and waiting for the command.
async fn conclude(
    session: &Arc<Session>,
    finished: Option<Result<Result<i32, VNodeError>, tokio::task::JoinError>>,
    master: AsyncFd<std::fs::File>,
    slave_held: OwnedFd,
    unit: tokio::task::JoinHandle<Result<i32, VNodeError>>,
    buf: &mut [u8],
) {
    let status = match finished {
        Some(result) => {
            // What the shell wrote last is still in the terminal.
            while let Ok(n) = master.get_ref().read(buf) {
                if n == 0 {
                    break;
                }
                emit(session, &buf[..n]).await;
            }
            result
        }
        None => {
            // Closing the terminal hangs the shell up.
            drop(master);
            drop(slave_held);
            unit.await
        }
    };
    let output = match status {
        Ok(Ok(code)) => Output::Exit(code),
        Ok(Err(e)) => Output::Failed(e.to_string()),
        Err(e) => Output::Failed(e.to_string()),
    };
    finish(session, output).await;
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Records output and sends it to the attached connection; returns that connection's
/// generation when it could not take it (gone, or stalled for [`SEND_LIMIT`]).
async fn emit(session: &Session, data: &[u8]) -> Option<u64> {
    let (generation, tx) = session.record(data)?;
    let sent = tokio::time::timeout(
        SEND_LIMIT,
        tx.send(Output::Data(Bytes::copy_from_slice(data))),
    )
    .await;
    (!matches!(sent, Ok(Ok(())))).then_some(generation)
}

/// Tells the attached connection how the session ended.
async fn finish(session: &Session, output: Output) {
    let attached = session.state.lock().unwrap().attached.take();
    if let Some((_, tx)) = attached {
        let _ = tokio::time::timeout(SEND_LIMIT, tx.send(output)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrollback_keeps_the_last_bytes() {
        let mut ring = VecDeque::new();
        keep_last(&mut ring, b"hello ", 8);
        keep_last(&mut ring, b"world", 8);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), b"lo world");
        keep_last(&mut ring, b"0123456789", 8);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), b"23456789");
        assert!(ring.len() <= 8);
    }

    fn session() -> Arc<Session> {
        let (commands, _) = mpsc::channel(1);
        Arc::new(Session {
            id: "s".into(),
            vnode: "a-c-0".into(),
            user: "root".into(),
            commands,
            state: Mutex::new(State::default()),
            detached: tokio::sync::Notify::new(),
        })
    }

    #[tokio::test]
    async fn a_reattachment_sees_each_output_once_in_replay_or_live() {
        let s = session();
        let mut first = s.attach(true);
        let (g, tx) = s.record(b"one ").unwrap();
        assert_eq!(g, first.generation);
        tx.send(Output::Data(Bytes::from_static(b"one ")))
            .await
            .unwrap();
        // The pump drops its copy of the sender after each output.
        drop(tx);
        assert!(matches!(first.output.recv().await, Some(Output::Data(d)) if &d[..] == b"one "));
        // The second connection takes over: the first one's stream ends.
        let mut second = s.attach(false);
        assert_eq!(second.scrollback, b"one ");
        assert!(first.output.recv().await.is_none());
        let (g, tx) = s.record(b"two").unwrap();
        assert_eq!(g, second.generation);
        tx.send(Output::Data(Bytes::from_static(b"two")))
            .await
            .unwrap();
        drop(tx);
        assert!(matches!(second.output.recv().await, Some(Output::Data(d)) if &d[..] == b"two"));
        // The first connection going changes nothing; the current one's going detaches.
        drop(first);
        assert!(s.attached().is_some());
        drop(second);
        assert!(s.attached().is_none());
        assert!(s.record(b"three").is_none());
        assert_eq!(s.attach(false).scrollback, b"one twothree");
    }
}
