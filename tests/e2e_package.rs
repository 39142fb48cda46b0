//! End-to-end: the .deb's lifecycle on a real systemd host of the testbed (tb3): purge,
//! fresh install, upgrade to a higher version, remove, purge; then tb3 is put back as it was.

mod common;

use std::process::{Command, Stdio};

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

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn deb_installs_upgrades_removes_and_purges() {
    let current = build_deb(None);
    let bumped = build_deb(Some(&format!("{}+e2e1", env!("CARGO_PKG_VERSION"))));
    copy_into("tb3", &current, "/root/docklet-current.deb");
    copy_into("tb3", &bumped, "/root/docklet-bumped.deb");
    // tb1 is never touched by this test; every testbed host has the same configuration.
    let testbed_config = ok("tb1", "cat /etc/docklet/docklet.toml");
    let restore_config = format!("cat > /etc/docklet/docklet.toml <<'EOF'\n{testbed_config}EOF");
    let apt = "DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Options::=--force-confold -y -q";

    // Start from a host without Docklet.
    let kept_images = KeptImages::take();
    ok("tb3", &format!("{apt} purge docklet"));
    assert!(!registered_hosts("tb1").contains(&"tb3".to_owned()));

    // Fresh install: users, directories, socket listening, worker enabled but waiting.
    ok("tb3", &format!("{apt} install /root/docklet-current.deb"));
    assert!(installed_version("tb3").starts_with("install ok installed"));
    ok("tb3", "getent group docklet-admin && getent passwd docklet");
    assert_eq!(
        ok("tb3", "stat -c '%U:%G %a' /var/lib/docklet/local").trim(),
        "root:root 755",
        "local/ is root's alone: the root worker follows what is there"
    );
    assert_eq!(
        unit_property("tb3", "docklet-master.socket", "ActiveState"),
        "active"
    );
    assert_eq!(
        unit_property("tb3", "docklet-master.socket", "UnitFileState"),
        "enabled"
    );
    assert_eq!(
        unit_property("tb3", "docklet-worker.service", "UnitFileState"),
        "enabled"
    );
    assert_eq!(
        unit_property("tb3", "docklet-master.service", "ActiveState"),
        "inactive"
    );
    ok(
        "tb3",
        "test -f /etc/pam.d/docklet && test -f /usr/share/dbus-1/system.d/org.docklet.conf",
    );
    ok(
        "tb3",
        "zcat /usr/share/man/man8/docklet-admin.8.gz | grep -q docklet-admin",
    );
    ok("tb3", &restore_config);
    // Purged, the host lost its identities: it joins again, as a new host would.
    join_tb3();
    ok("tb3", "systemctl start docklet-worker");
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
    let old_pid = unit_property("tb3", "docklet-worker.service", "MainPID");

    // Upgrade: the edited conffile stays, the running worker moves to the new binary.
    ok("tb3", &format!("{apt} install /root/docklet-bumped.deb"));
    assert!(
        installed_version("tb3").ends_with("+e2e1"),
        "{}",
        installed_version("tb3")
    );
    assert_eq!(ok("tb3", "cat /etc/docklet/docklet.toml"), testbed_config);
    let new_pid = unit_property("tb3", "docklet-worker.service", "MainPID");
    assert_ne!(old_pid, new_pid, "the worker was not restarted on upgrade");
    assert_eq!(
        unit_property("tb3", "docklet-worker.service", "ActiveState"),
        "active"
    );
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));

    // Remove: daemons stop (the host unregisters), configuration and state stay.
    ok("tb3", &format!("{apt} remove docklet"));
    assert_eq!(
        unit_property("tb3", "docklet-worker.service", "ActiveState"),
        "inactive"
    );
    assert_ne!(sh("tb3", "test -e /usr/sbin/docklet-worker").code, 0);
    assert!(!registered_hosts("tb1").contains(&"tb3".to_owned()));
    ok(
        "tb3",
        "test -f /etc/docklet/docklet.toml && test -d /var/lib/docklet/local",
    );

    // Purge: configuration and this host's state go; the shared filesystem stays.
    ok("tb1", "touch /var/lib/docklet/global/.e2e-package");
    ok("tb3", &format!("{apt} purge docklet"));
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

    // Put tb3 back as the testbed had it.
    ok("tb3", &format!("{apt} install /root/docklet-current.deb"));
    kept_images.put_back();
    ok("tb3", &restore_config);
    join_tb3();
    ok("tb3", "systemctl start docklet-worker");
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
}

/// tb3 gets identities from the site CA: a join token from tb1, used on tb3.
fn join_tb3() {
    let out = ok("tb1", "docklet-admin host add tb3 --valid-for 10m");
    let token = out
        .trim()
        .strip_prefix("docklet-admin join ")
        .unwrap_or_else(|| panic!("no join command in {out:?}"));
    ok("tb3", &format!("docklet-admin join {token}"));
}
