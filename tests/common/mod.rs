//! Driving the testbed from end-to-end tests: commands inside its hosts, HTTP from outside.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod rest;

/// The portal as users reach it: HTTPS on a DNS name (the testbed resolves it to tb1 on this
/// machine and in its hosts), verified against the site CA `docklet-admin init` made.
pub const PORTAL_NAME: &str = "portal.docklet.test";
pub const PORTAL: &str = "https://portal.docklet.test:8000";
/// The host name port mappings are announced under.
pub const PORTS_NAME: &str = "ports.docklet.test";
/// tb1, where the testbed's names lead.
pub const MASTER_ADDRESS: &str = "10.213.0.11";
/// Every user's workspaces are served at `<user>.<WORKSPACE_DOMAIN>` (on tb1 for the
/// tests, which resolve those names themselves: /etc/hosts has no wildcards).
pub const WORKSPACE_DOMAIN: &str = "ws.docklet.test";
/// The cookie a workspace host sets.
pub const WORKSPACE_COOKIE: &str = "__Host-docklet_workspace";
/// The site CA, as `tools/testbed up` copied it from tb1.
pub const SITE_CA: &str = "/var/lib/docklet-testbed/site-ca.pem";
/// The session cookie of the portal.
pub const SESSION_COOKIE: &str = "__Host-docklet_session";

/// curl as the tests use it against the portal: certificates verified against the site CA.
pub fn curl() -> Command {
    let mut command = Command::new("curl");
    command.args(["--cacert", SITE_CA]);
    command
}

/// The host name of `user`'s workspaces.
pub fn workspace_host(user: &str) -> String {
    docklet::model::workspace::host_name(user, WORKSPACE_DOMAIN)
}

/// The origin of `user`'s workspaces: `https://<their host>:8000`.
pub fn workspace_origin(user: &str) -> String {
    format!("https://{}:8000", workspace_host(user))
}

/// curl for `url`: a workspace host's name is resolved to tb1 (as the site's DNS would).
pub fn curl_for(url: &str) -> Command {
    let mut command = curl();
    let host = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    if host.ends_with(&format!(".{WORKSPACE_DOMAIN}")) {
        command.args(["--resolve", &format!("{host}:8000:{MASTER_ADDRESS}")]);
    }
    command
}

/// curl reaching the portal's name at `address` (the master of another host), still
/// verifying the certificate for the portal's name.
pub fn curl_via(address: &str) -> Command {
    let mut command = curl();
    command.args(["--resolve", &format!("{PORTAL_NAME}:8000:{address}")]);
    command
}

/// A TLS connection to the portal port at `address`, verified against the site CA for the
/// portal's name (for WebSockets).
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

pub fn tls_connect(address: &str, timeout: Duration) -> TlsStream {
    tls_connect_to(PORTAL_NAME, address, timeout)
}

/// A TLS connection to `address`, verified against the site CA for `name`.
pub fn tls_connect_to(name: &str, address: &str, timeout: Duration) -> TlsStream {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(SITE_CA).expect("the site CA") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let stream = std::net::TcpStream::connect(address).expect("connect to the portal port");
    stream.set_read_timeout(Some(timeout)).unwrap();
    rustls::StreamOwned::new(connection, stream)
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Result of a command run inside a testbed host.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// How long one command in a testbed host may take: a hung command fails its test with the
/// command named, instead of hanging the suite.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// Runs a shell command inside a testbed host.
/// `etcdctl` as a host's root could run it there: over TLS with that host's certificate of
/// `role` ("master" or "worker"), whose common name is its etcd user.
pub fn etcdctl_as(role: &str) -> String {
    format!(
        "ETCDCTL_API=3 etcdctl --endpoints https://10.213.0.11:2379 --cacert /etc/docklet/pki/ca.pem \
         --cert /etc/docklet/pki/{role}.pem --key /etc/docklet/pki/{role}.key"
    )
}

pub fn sh(host: &str, script: &str) -> Run {
    sh_within(host, script, COMMAND_LIMIT).unwrap_or_else(|run| {
        panic!("`{script}` on {host} did not finish within {COMMAND_LIMIT:?}: {run}")
    })
}

/// Runs a shell command inside a testbed host, stopped after `limit`: `Err` then, with what
/// it printed so far.
pub fn sh_within(host: &str, script: &str, limit: Duration) -> Result<Run, Run> {
    let output = Command::new("timeout")
        .args(["--kill-after=5", &format!("{}", limit.as_secs())])
        .arg(repo().join("tools/testbed"))
        .args(["exec", host, "bash", "-c", script])
        .output()
        .expect("run tools/testbed exec");
    let run = Run::from(output);
    // 124: timeout's own status when it had to stop the command (137 after the kill).
    if run.code == 124 || run.code == 137 {
        return Err(run);
    }
    Ok(run)
}

/// Runs a shell command that must succeed, returning its stdout.
pub fn ok(host: &str, script: &str) -> String {
    let run = sh(host, script);
    assert_eq!(run.code, 0, "`{script}` on {host} failed: {run}");
    run.stdout
}

/// Polls `check` every 200 ms until it returns true or `limit` passes; returns the time it took.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// `systemctl show -p PROP --value UNIT` inside a host.
pub fn unit_property(host: &str, unit: &str, property: &str) -> String {
    ok(
        host,
        &format!("systemctl show -p {property} --value {unit}"),
    )
    .trim()
    .to_owned()
}

/// Names of the hosts `docklet-admin hosts --json` lists, asked on `host`.
pub fn registered_hosts(host: &str) -> Vec<String> {
    let out = ok(host, "docklet-admin hosts --json");
    let hosts: serde_json::Value = serde_json::from_str(&out).expect("hosts JSON");
    hosts
        .as_array()
        .expect("array")
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect()
}

/// An HTTP GET from this machine (outside the testbed), returning (status, body).
pub fn http_get(url: &str) -> (u16, String) {
    http_get_with(curl(), url)
}

/// The same GET with a curl of the caller's (e.g. [`curl_via`]).
pub fn http_get_with(mut curl: Command, url: &str) -> (u16, String) {
    let output = curl
        .args(["-s", "-m", "20", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

// Vnodes, driven with `docklet-admin` on tb1 (through the master into etcd).

pub const BOOT_LIMIT: Duration = Duration::from_secs(90);

/// Writes a new spec; a vnode of that id left by an earlier, interrupted run goes first.
pub fn create(id: &str, host: &str, user: &str, extra: &str) -> Run {
    if entry(id).is_some() {
        delete(id);
    }
    sh(
        "tb1",
        &format!(
            "docklet-admin vnode create {id} --host {host} --user {user} --cluster {} --index {} {extra}",
            cluster_of(id),
            index_of(id)
        ),
    )
}

/// Ids in these tests are `<user>-<cluster>-<index>`.
pub fn cluster_of(id: &str) -> &str {
    id.split('-').nth(1).unwrap()
}

pub fn index_of(id: &str) -> &str {
    id.rsplit('-').next().unwrap()
}

/// `{"host", "spec", "status"}` of a vnode, `None` once it is gone.
pub fn entry(id: &str) -> Option<Value> {
    let run = sh("tb1", &format!("docklet-admin vnode show {id}"));
    if run.code == 7 {
        return None;
    }
    assert_eq!(run.code, 0, "vnode show {id}: {run}");
    Some(serde_json::from_str(&run.stdout).expect("vnode JSON"))
}

pub fn phase(id: &str) -> String {
    entry(id)
        .and_then(|e| e["status"]["phase"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn wait_phase(id: &str, wanted: &str) -> Value {
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    while start.elapsed() < BOOT_LIMIT {
        if let Some(e) = entry(id) {
            if e["status"]["phase"] == wanted {
                return e;
            }
            last = e;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("vnode {id} did not reach {wanted} in {BOOT_LIMIT:?}; last: {last:#}");
}

pub fn wait_gone(id: &str) {
    wait_for(&format!("vnode {id} to be deleted"), BOOT_LIMIT, || {
        entry(id).is_none()
    });
}

/// A command inside a vnode through `docklet-admin exec` on its host.
pub fn exec(host: &str, id: &str, script: &str) -> Run {
    sh(
        host,
        &format!("docklet-admin exec {id} -- sh -c {}", shell_quote(script)),
    )
}

pub fn exec_ok(host: &str, id: &str, script: &str) -> String {
    let run = exec(host, id, script);
    assert_eq!(run.code, 0, "`{script}` in {id} failed: {run}");
    run.stdout
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn delete(id: &str) {
    let _ = sh("tb1", &format!("docklet-admin vnode delete {id}"));
    wait_gone(id);
}

/// Everything a vnode can leave on a host: units, mounts, netns, directories.
pub fn leftovers(host: &str, id: &str) -> String {
    sh(
        host,
        &format!(
            "systemctl list-units --all --no-legend 'docklet-vnode-{id}.service' 'docklet-exec-{id}-*'; \
             grep -F '/{id}/' /proc/self/mountinfo; grep -F 'netns/{id}' /proc/self/mountinfo; \
             ls -d /run/docklet/netns/{id} /run/docklet/vnodes/{id} /var/lib/docklet/local/vnodes/{id} 2>/dev/null; true"
        ),
    )
    .stdout
    .trim()
    .to_owned()
}

/// Reboots a testbed host and waits until it is back with its worker active.
pub fn reboot(host: &str) {
    let boot_id = || {
        ok(host, "cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_owned()
    };
    let before = boot_id();
    let _ = sh_within(host, "systemctl reboot", Duration::from_secs(30));
    // While the host goes down and comes up, a command entering it can meet a systemd that
    // does not answer yet (or any more), or a namespace half made: each probe is bounded
    // and one that hangs only counts as "not yet".
    // If it does not come back, the failure shows the end of the host's console (what its
    // systemd was doing), which CI keeps while the testbed goes.
    let _console = ConsoleOnPanic(host.to_owned());
    wait_for(
        &format!("{host} to boot again"),
        Duration::from_secs(300),
        || {
            let Ok(run) = sh_within(
                host,
                "cat /proc/sys/kernel/random/boot_id; timeout -k 2 10 systemctl is-active docklet-worker.service",
                Duration::from_secs(20),
            ) else {
                eprintln!("{host}: a probe hung while it reboots; trying again");
                return false;
            };
            let lines: Vec<&str> = run.stdout.lines().collect();
            lines.len() == 2 && lines[0] != before && lines[1] == "active"
        },
    );
}

/// Prints the last lines of a testbed host's console if the test panics meanwhile.
struct ConsoleOnPanic(String);

impl Drop for ConsoleOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let path = format!("/var/lib/docklet-testbed/hosts/{}/console.log", self.0);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("{path}: {e}"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        eprintln!("--- the last lines of {path}:\n{tail}\n---");
    }
}
