//! A caller's standard streams (`docklet-admin exec`) relayed to a session's own streams, so
//! no descriptor of the caller ever enters a vnode, where its root could keep it and read or
//! write the administrator's terminal long after the command. With a terminal, the session
//! gets a pty of the worker's (the caller's size, followed while it runs); otherwise three
//! pipes. Threads copy the bytes: the caller's descriptors may be anything (a terminal, a
//! file, a socket), which only blocking reads handle, and each waits in `poll` on a stop pipe
//! too, so a terminal nobody types on never keeps a thread once the session is over.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::terminals::{open_pty, set_window_size};

/// How long output still left in the pipes or the pty is relayed once the session ended.
const DRAIN: Duration = Duration::from_secs(2);

nix::ioctl_read_bad!(get_window_size, libc::TIOCGWINSZ, nix::pty::Winsize);

/// What the caller handed over.
pub struct CallerStreams {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The session's side: what its unit gets.
pub struct SessionStreams {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The worker's pty the session runs on, when the caller has a terminal.
    pub tty: Option<String>,
}

pub struct Relay {
    /// Dropped to stop every copy.
    stop: Option<OwnedFd>,
    inputs: Vec<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
    /// With a pty: the caller's terminal, the pty's master and slave (held until the session
    /// ends, so the master does not read as hung up before the session opens its side), and
    /// the last size given.
    pty: Option<Pty>,
}

struct Pty {
    caller: OwnedFd,
    master: OwnedFd,
    slave: OwnedFd,
    size: Mutex<(u16, u16)>,
}

fn window_size(fd: &impl AsRawFd) -> Option<nix::pty::Winsize> {
    let mut size = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to a valid pointer.
    unsafe { get_window_size(fd.as_raw_fd(), &mut size) }.ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some(size)
}

/// Starts relaying `caller` and returns what the session's unit gets.
pub fn start(caller: CallerStreams) -> io::Result<(SessionStreams, Relay)> {
    let (stop_reader, stop) = nix::unistd::pipe()?;
    let copy = |from: OwnedFd, to: OwnedFd| -> io::Result<JoinHandle<()>> {
        let stop = stop_reader.try_clone()?;
        std::thread::Builder::new()
            .name("exec-relay".into())
            .spawn(move || copy_until_stopped(from, to, stop))
    };
    if nix::unistd::isatty(&caller.stdin).unwrap_or(false) {
        let size = window_size(&caller.stdin).unwrap_or(nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let (master, slave, path) = open_pty(&size)?;
        let inputs = vec![copy(caller.stdin.try_clone()?, master.try_clone()?)?];
        let outputs = vec![copy(master.try_clone()?, caller.stdout)?];
        let session = SessionStreams {
            stdin: slave.try_clone()?,
            stdout: slave.try_clone()?,
            stderr: slave.try_clone()?,
            tty: Some(path),
        };
        let pty = Pty {
            caller: caller.stdin,
            master,
            slave,
            size: Mutex::new((size.ws_row, size.ws_col)),
        };
        let relay = Relay {
            stop: Some(stop),
            inputs,
            outputs,
            pty: Some(pty),
        };
        return Ok((session, relay));
    }
    let (stdin, to_stdin) = nix::unistd::pipe()?;
    let (from_stdout, stdout) = nix::unistd::pipe()?;
    let (from_stderr, stderr) = nix::unistd::pipe()?;
    let relay = Relay {
        inputs: vec![copy(caller.stdin, to_stdin)?],
        outputs: vec![
            copy(from_stdout, caller.stdout)?,
            copy(from_stderr, caller.stderr)?,
        ],
        stop: Some(stop),
        pty: None,
    };
    let session = SessionStreams {
        stdin,
        stdout,
        stderr,
        tty: None,
    };
    Ok((session, relay))
}

/// Copies `from` to `to` until `from` ends or fails, `to` fails, or `stop` hangs up. Ending
/// drops `to`: a session reading the caller's input sees its end.
fn copy_until_stopped(from: OwnedFd, to: OwnedFd, stop: OwnedFd) {
    let mut from = File::from(from);
    let mut to = File::from(to);
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let mut fds = [
            PollFd::new(from.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        if fds[0].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        match from.read(&mut buffer) {
            // A pty's master reads EIO once nobody holds the other side: the end too.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

impl Relay {
    /// Gives the pty the caller's terminal size when it changed.
    pub fn follow_size(&self) {
        let Some(pty) = &self.pty else { return };
        let Some(size) = window_size(&pty.caller) else {
            return;
        };
        let mut last = pty.size.lock().unwrap();
        if *last != (size.ws_row, size.ws_col) {
            *last = (size.ws_row, size.ws_col);
            // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
            let _ = unsafe { set_window_size(pty.master.as_raw_fd(), &size) };
        }
    }

    /// After the session: what it left in the pipes or the pty reaches the caller (for up to
    /// [`DRAIN`]), then every copy stops.
    pub async fn finish(mut self) {
        // The session's side of the pty goes, so the master ends once the session's did.
        if let Some(pty) = self.pty.take() {
            drop(pty.slave);
        }
        let deadline = tokio::time::Instant::now() + DRAIN;
        while self.outputs.iter().any(|t| !t.is_finished())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(self.stop.take());
        let threads: Vec<JoinHandle<()>> = self
            .inputs
            .drain(..)
            .chain(self.outputs.drain(..))
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
