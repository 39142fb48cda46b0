//! Commands inside a vnode. Each runs as a transient unit of its own (not as a child of the
//! worker), so it has none of the worker's sandbox, survives a worker restart and sits in the
//! user's slice. Its main process is `nsenter` into every namespace of the vnode's PID 1, then
//! `setpriv` to the requested user with that user's environment, then the command.
//!
//! The namespaces are the ones the worker opened from the vnode's [`Leader`] and checked by
//! its pidfd, handed to nsenter as `/proc/<worker>/fd/<n>` and held open for the session:
//! nothing is looked up by the vnode's PID after that check. Standard streams are the
//! worker's own (a pty of its own or pipes, see [`relay`]): a caller's descriptor never
//! enters a vnode, where its root could keep it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use zbus::Variant;

use super::vnode::{Runtime, VNodeError};
use crate::model::vnode;
use crate::sys::systemd::{Property, Units, exec_property};

/// How an exec session should look inside the vnode.
pub struct ExecRequest {
    pub id: String,
    /// `root` or a user of the vnode.
    pub user: String,
    pub argv: Vec<String>,
    /// Value of `TERM` for the command.
    pub term: String,
    /// A terminal (the slave of a pty) to run on as the session's controlling terminal,
    /// instead of the given descriptors, so job control and Ctrl-C work.
    pub tty: Option<String>,
}

/// The argv of the session's unit; `namespaces` are nsenter's `--user=PATH`... options.
pub fn session_argv(namespaces: &[String], request: &ExecRequest) -> Vec<String> {
    let mut argv: Vec<String> = vec!["/usr/bin/nsenter".into()];
    argv.extend(namespaces.iter().cloned());
    argv.extend([
        "--".into(),
        "setpriv".into(),
        format!("--reuid={}", request.user),
        format!("--regid={}", request.user),
        "--init-groups".into(),
        "--reset-env".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        // Start in the user's home, like a login would.
        "cd \"$HOME\" 2>/dev/null; exec \"$@\"".into(),
        "sh".into(),
    ]);
    argv.extend(request.argv.iter().cloned());
    argv
}

pub fn check_request(request: &ExecRequest) -> Result<(), VNodeError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(VNodeError::Refused("no command given".into()));
    }
    vnode::validate_user_name(&request.user)?;
    if request.term.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(VNodeError::Refused(format!(
            "TERM {:?} is not a terminal name",
            request.term
        )));
    }
    Ok(())
}

/// Runs the request with the given standard streams and returns its exit status (128 + the
/// signal when killed).
pub async fn run(
    runtime: &Runtime,
    systemd: &dyn Units,
    request: &ExecRequest,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<i32, VNodeError> {
    check_request(request)?;
    let owner = runtime
        .spec(&request.id)
        .ok_or_else(|| VNodeError::NoSuchVnode(request.id.clone()))?
        .user;
    let not_running = || VNodeError::NotRunning {
        id: request.id.clone(),
        detail: String::new(),
    };
    let leader = runtime.leader(&request.id).await.ok_or_else(not_running)?;
    // Held until the session ends: nsenter opens them through the worker's /proc entry.
    let namespaces = leader.nsenter_namespaces().map_err(|_| not_running())?;
    let worker = std::process::id();
    let options: Vec<String> = namespaces
        .iter()
        .map(|(option, file)| format!("{option}=/proc/{worker}/fd/{}", file.as_raw_fd()))
        .collect();
    let unit = format!(
        "docklet-exec-{}-{}.service",
        request.id,
        super::paths::random_suffix()
    );
    let properties = exec_properties(request, &owner, &options, [stdin, stdout, stderr]);
    systemd
        .start_transient(&unit, properties, Duration::from_secs(30))
        .await?;
    let status = loop {
        match systemd.unit_info(&unit).await? {
            Some(info) if info.state() != vnode::UnitState::Absent => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(info) => break info.exit_status(),
            None => break -1,
        }
    };
    systemd.unref(&unit).await;
    drop(namespaces);
    Ok(status)
}

/// The session's transient unit: nsenter into the vnode's namespaces in the vnode's slice,
/// on the terminal systemd opens or on the caller's descriptors.
fn exec_properties(
    request: &ExecRequest,
    owner: &str,
    options: &[String],
    streams: [OwnedFd; 3],
) -> Vec<Property> {
    let mut properties: Vec<Property> = vec![
        (
            "Description",
            Variant::new(format!(
                "Docklet exec in vnode {} as {}",
                request.id, request.user
            )),
        ),
        (
            "Slice",
            Variant::new(vnode::vnode_slice(owner, &request.id)),
        ),
        ("Type", Variant::new("exec")),
        ("CollectMode", Variant::new("inactive-or-failed")),
        // Keeps the unit loaded after it ends until we have read its exit status.
        ("AddRef", Variant::new(true)),
        (
            "Environment",
            Variant::new(vec![
                format!("TERM={}", request.term),
                "LANG=C.UTF-8".to_owned(),
            ]),
        ),
        exec_property("ExecStart", &session_argv(options, request)),
    ];
    match &request.tty {
        // systemd opens the terminal and makes it the controlling terminal of the session
        // (nsenter's); the command inside inherits it. A passed descriptor cannot become one
        // from inside the vnode: TIOCSCTTY there lacks CAP_SYS_ADMIN in the host's namespace.
        Some(tty) => {
            properties.push(("TTYPath", Variant::new(tty.clone())));
            for stream in ["StandardInput", "StandardOutput", "StandardError"] {
                properties.push((stream, Variant::new("tty")));
            }
            drop(streams);
        }
        None => {
            let [stdin, stdout, stderr] = streams;
            properties.push(("StandardInputFileDescriptor", Variant::Fd(stdin.into())));
            properties.push(("StandardOutputFileDescriptor", Variant::Fd(stdout.into())));
            properties.push(("StandardErrorFileDescriptor", Variant::Fd(stderr.into())));
        }
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            id: "alice-c1-0".into(),
            user: "root".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            term: "xterm-256color".into(),
            tty: None,
        }
    }

    #[test]
    fn the_command_is_passed_as_arguments_never_through_a_shell_string() {
        let argv = session_argv(
            &["--user=/proc/7/fd/9".into()],
            &request(&["echo", "$(id)", "; rm -rf /"]),
        );
        assert_eq!(argv[1..3], ["--user=/proc/7/fd/9", "--"]);
        assert_eq!(&argv[argv.len() - 3..], ["echo", "$(id)", "; rm -rf /"]);
        assert!(argv.contains(&"--reuid=root".to_owned()));
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(check_request(&request(&[])).is_err());
        assert!(check_request(&request(&[""])).is_err());
        let mut r = request(&["id"]);
        r.user = "--reuid=0".into();
        assert!(check_request(&r).is_err());
        let mut r = request(&["id"]);
        r.term = "x\nterm".into();
        assert!(check_request(&r).is_err());
        assert!(check_request(&request(&["id"])).is_ok());
    }
}
