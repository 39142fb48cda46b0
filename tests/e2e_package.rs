//! End-to-end: the .deb's lifecycle on a real systemd host of the testbed (tb3): purge,
//! fresh install, upgrade to a higher version, remove, purge; then tb3 is put back as it was.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Builds a .deb with `tools/build-deb [--version V]` and returns its path.
fn build_deb(version: Option<&str>) -> String {
    let mut cmd = Command::new(repo().join("tools/build-deb"));
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("tools/build-deb");
    assert!(output.status.success(), "tools/build-deb failed");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let path = stdout.lines().last().expect("a path").to_owned();
    assert!(path.ends_with(".deb"), "{path}");
    path
}

/// Copies a file from this machine into a testbed host.
fn copy_into(host: &str, from: &str, to: &str) {
    let file = std::fs::File::open(from).unwrap();
    let status = Command::new(repo().join("tools/testbed"))
        .args(["exec", host, "bash", "-c", &format!("cat > {to}")])
        .stdin(file)
        .status()
        .unwrap();
    assert!(status.success());
}

fn installed_version(host: &str) -> String {
    sh(host, "dpkg-query -W -f '${Status} ${Version}' docklet").stdout
}

/// Where tb3's base image waits while the test purges the package: the testbed gives each host
/// its own copy below `/var/lib/docklet/local`, and a purge removes that directory.
const KEPT_IMAGES: &str = "/var/lib/docklet/e2e-kept-images";

/// tb3's base image, kept out of the purges and put back however the test ends.
struct KeptImages;

impl KeptImages {
    fn take() -> KeptImages {
        KeptImages.put_back(); // what a failed run left aside
        ok(
            "tb3",
            &format!("mv /var/lib/docklet/local/images {KEPT_IMAGES}"),
        );
        KeptImages
    }

    fn put_back(&self) {
        let _ = sh(
            "tb3",
            &format!(
                "if [ -d {KEPT_IMAGES} ]; then mkdir -p /var/lib/docklet/local && \
                 rm -rf /var/lib/docklet/local/images && \
                 mv {KEPT_IMAGES} /var/lib/docklet/local/images; fi"
            ),
        );
    }
}

impl Drop for KeptImages {
    fn drop(&mut self) {
        self.put_back();
    }
}

const APT: &str = "DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Options::=--force-confold -y -q";

/// Stops etcd (on tb1) for a while, and starts it again however the test ends.
struct EtcdDown;

impl EtcdDown {
    fn stop() -> EtcdDown {
        ok("tb1", "systemctl stop etcd");
        EtcdDown
    }
}

impl Drop for EtcdDown {
    fn drop(&mut self) {
        let _ = sh("tb1", "systemctl start etcd");
    }
}

/// Runs `command` on tb3 and checks that it finished within a minute.
fn within_a_minute(command: &str) {
    let started = std::time::Instant::now();
    ok("tb3", command);
    let took = started.elapsed();
    eprintln!("{command}: {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "{command} took {took:?} with etcd down"
    );
}

/// The ports tb3 listens on (TCP, IPv4 and IPv6).
fn listening_ports(host: &str) -> Vec<u16> {
    ok(host, "cat /proc/net/tcp /proc/net/tcp6")
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit(':').next()?;
            (fields.get(3) == Some(&"0A")).then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// Every unit the package installs that can be enabled or run.
const UNITS: [&str; 3] = [
    "docklet-master.socket",
    "docklet-master.service",
    "docklet-worker.service",
];

/// Checks `units`' enablement and state on tb3.
fn units_are(units: &[&str], file_state: &str, active_state: &str) {
    for unit in units {
        assert_eq!(
            [
                unit_property("tb3", unit, "UnitFileState"),
                unit_property("tb3", unit, "ActiveState")
            ],
            [file_state, active_state],
            "{unit}"
        );
    }
}

fn ip_forward(host: &str) -> String {
    ok(host, "cat /proc/sys/net/ipv4/ip_forward")
        .trim()
        .to_owned()
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn deb_installs_upgrades_removes_and_purges() {
    let current = build_deb(None);
    let bumped = build_deb(Some(&format!("{}+e2e1", env!("CARGO_PKG_VERSION"))));
    copy_into("tb3", &current, "/root/docklet-current.deb");
    copy_into("tb3", &bumped, "/root/docklet-bumped.deb");
    // tb1 is never touched by this test but for etcd; every testbed host has the same
    // configuration.
    let testbed_config = ok("tb1", "cat /etc/docklet/docklet.toml");
    let restore_config = format!("cat > /etc/docklet/docklet.toml <<'EOF'\n{testbed_config}EOF");
    let apt = APT;

    // Start from a host without Docklet, whose forwarding is off (tb3 has a network
    // namespace of its own).
    let kept_images = KeptImages::take();
    let _back = Tb3Back {
        restore_config: restore_config.clone(),
    };
    ok("tb3", &format!("{apt} purge docklet"));
    assert!(!registered_hosts("tb1").contains(&"tb3".to_owned()));
    ok("tb3", "echo 0 > /proc/sys/net/ipv4/ip_forward");

    // Fresh install: users and directories, and nothing else until asked: no unit enabled
    // or running, no port, no kernel setting.
    ok("tb3", &format!("{apt} install /root/docklet-current.deb"));
    assert!(installed_version("tb3").starts_with("install ok installed"));
    ok("tb3", "getent group docklet-admin && getent passwd docklet");
    assert_eq!(
        ok("tb3", "stat -c '%U:%G %a' /var/lib/docklet/local").trim(),
        "root:root 755",
        "local/ is root's alone: the root worker follows what is there"
    );
    units_are(&UNITS, "disabled", "inactive");
    let ports = listening_ports("tb3");
    assert!(
        !ports.contains(&8000),
        "port 8000 listens after install: {ports:?}"
    );
    assert_eq!(ip_forward("tb3"), "0", "the install turned forwarding on");
    assert_eq!(
        ok(
            "tb3",
            "ls /usr/lib/sysctl.d /etc/sysctl.d | grep -i docklet || true"
        ),
        ""
    );
    ok(
        "tb3",
        "test -f /etc/pam.d/docklet && test -f /usr/share/dbus-1/system.d/org.docklet.conf && \
         test -f /usr/lib/sysusers.d/docklet.conf && test -f /usr/lib/tmpfiles.d/docklet.conf",
    );
    // Manuals (one page per subcommand, the configuration file's) and completions.
    let page = |name: &str| ok("tb3", &format!("zcat /usr/share/man/{name}.gz"));
    assert!(page("man8/docklet-admin.8").contains("EXIT STATUS"));
    assert!(page("man8/docklet-admin-quota.8").contains("vnodes"));
    assert!(page("man8/docklet-admin-user-add.8").contains("password"));
    assert!(page("man5/docklet.toml.5").contains("proxy_port"));
    assert!(page("man8/docklet-worker.8").contains("registers this host"));
    ok(
        "tb3",
        "grep -q quota /usr/share/bash-completion/completions/docklet-admin && \
         grep -q quota /usr/share/zsh/vendor-completions/_docklet-admin && \
         grep -q quota /usr/share/fish/vendor_completions.d/docklet-admin.fish",
    );

    // `docklet-admin join` enables and starts what the host runs: the socket and the worker.
    ok("tb3", &restore_config);
    join_tb3();
    ok("tb3", "docklet-admin wait worker");
    units_are(&[UNITS[0], UNITS[2]], "enabled", "active");
    assert!(listening_ports("tb3").contains(&8000));
    assert_eq!(
        ip_forward("tb3"),
        "1",
        "the running worker turns forwarding on"
    );
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
    // Both daemons run (D-Bus activation starts the master).
    ok("tb3", "docklet-admin wait master");
    let old_pids = [
        unit_property("tb3", "docklet-worker.service", "MainPID"),
        unit_property("tb3", "docklet-master.service", "MainPID"),
    ];

    // Upgrade with etcd down: it finishes, the edited conffile stays, the running daemons
    // move to the new binary and serve (waiting for etcd).
    let etcd_down = EtcdDown::stop();
    within_a_minute(&format!("{apt} install /root/docklet-bumped.deb"));
    assert!(
        installed_version("tb3").ends_with("+e2e1"),
        "{}",
        installed_version("tb3")
    );
    assert_eq!(ok("tb3", "cat /etc/docklet/docklet.toml"), testbed_config);
    for (unit, old_pid) in ["docklet-worker.service", "docklet-master.service"]
        .iter()
        .zip(&old_pids)
    {
        assert_ne!(
            &unit_property("tb3", unit, "MainPID"),
            old_pid,
            "{unit} was not restarted on upgrade"
        );
        assert_eq!(
            unit_property("tb3", unit, "ActiveState"),
            "active",
            "{unit}"
        );
    }
    drop(etcd_down);
    ok("tb3", "docklet-admin wait --timeout 90s");
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));

    // Remove with etcd down: the daemons and the socket stop; configuration and state stay.
    let etcd_down = EtcdDown::stop();
    within_a_minute(&format!("{apt} remove docklet"));
    for unit in UNITS {
        assert_eq!(
            unit_property("tb3", unit, "ActiveState"),
            "inactive",
            "{unit}"
        );
    }
    assert!(!listening_ports("tb3").contains(&8000));
    assert_ne!(sh("tb3", "test -e /usr/sbin/docklet-worker").code, 0);
    ok(
        "tb3",
        "test -f /etc/docklet/docklet.toml && test -d /var/lib/docklet/local",
    );

    // Purge with etcd down: configuration and this host's state go; the shared filesystem
    // stays.
    ok("tb1", "touch /var/lib/docklet/global/.e2e-package");
    within_a_minute(&format!("{apt} purge docklet"));
    assert_ne!(sh("tb3", "test -e /etc/docklet/docklet.toml").code, 0);
    assert_eq!(
        ok(
            "tb3",
            "find /var/lib/docklet/local -mindepth 1 2>/dev/null || true"
        ),
        ""
    );
    ok(
        "tb3",
        "test -f /var/lib/docklet/global/.e2e-package && rm /var/lib/docklet/global/.e2e-package",
    );
    drop(etcd_down);
    // The stopped worker could not unregister: its lease runs out instead.
    wait_for(
        "tb3 to leave the host list",
        Duration::from_secs(60),
        || !registered_hosts("tb1").contains(&"tb3".to_owned()),
    );

    // Put tb3 back as the testbed had it.
    ok("tb3", &format!("{apt} install /root/docklet-current.deb"));
    kept_images.put_back();
    ok("tb3", &restore_config);
    join_tb3();
    ok("tb3", "docklet-admin wait worker");
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
    // The other hosts' daemons are back on etcd too, for the tests that follow.
    for host in ["tb1", "tb2"] {
        ok(host, "docklet-admin wait --timeout 90s");
    }
}

/// tb3 gets identities from the site CA: a join token from tb1, used on tb3.
fn join_tb3() {
    let out = ok("tb1", "docklet-admin host add tb3 --valid-for 10m");
    let join = out
        .trim()
        .strip_prefix("docklet-admin join ")
        .unwrap_or_else(|| panic!("no join command in {out:?}"));
    ok("tb3", &format!("docklet-admin join {join}"));
}

/// When the test fails half-way, puts tb3 back as the testbed had it (installed, configured,
/// joined), so that the suites after this one find three hosts.
struct Tb3Back {
    restore_config: String,
}

impl Drop for Tb3Back {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return; // the test's own end did it, with its checks
        }
        let _ = sh("tb1", "systemctl start etcd");
        let _ = sh("tb3", &format!("{APT} install /root/docklet-current.deb"));
        let _ = sh("tb3", &self.restore_config);
        let out = sh("tb1", "docklet-admin host add tb3 --valid-for 10m").stdout;
        if let Some(join) = out.trim().strip_prefix("docklet-admin join ") {
            let _ = sh("tb3", &format!("docklet-admin join {join}"));
        }
        let _ = sh("tb3", "docklet-admin wait --timeout 90s");
    }
}
