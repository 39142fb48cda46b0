//! End-to-end: the Foundation issue on a running testbed (`tools/testbed up`): systemd
//! integration, D-Bus administration and its access rules, host registration in etcd, bad
//! configuration, and the .deb's lifecycle. `tools/test` brings the testbed up and runs these
//! one at a time; every test leaves the testbed as it found it.

mod common;

use std::time::Duration;

use common::*;

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn master_is_socket_activated_and_answers_the_first_request() {
    ok("tb1", "systemctl stop docklet-master.service");
    assert_eq!(
        unit_property("tb1", "docklet-master.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(
        unit_property("tb1", "docklet-master.socket", "ActiveState"),
        "active"
    );
    let run = sh("tb1", "pgrep -x docklet-master");
    assert_ne!(
        run.code, 0,
        "a master process runs before any connection: {run}"
    );

    // The very first connection goes to the socket and is answered by the activated master.
    let (code, body) = http_get(&format!("{PORTAL}/api/v1/health"));
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["initialized"], true);
    assert_eq!(
        unit_property("tb1", "docklet-master.service", "ActiveState"),
        "active"
    );
    assert_eq!(
        unit_property("tb1", "docklet-master.service", "User"),
        "docklet"
    );

    let (code, page) = http_get(&format!("{PORTAL}/login"));
    assert_eq!(code, 200);
    assert!(page.contains("<title>Log in · Docklet</title>"), "{page}");
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn systemctl_status_shows_what_the_daemons_do() {
    http_get(&format!("{PORTAL}/api/v1/health"));
    wait_for(
        "master status to count hosts",
        Duration::from_secs(15),
        || unit_property("tb1", "docklet-master.service", "StatusText").contains("has 3 hosts"),
    );
    let master = unit_property("tb1", "docklet-master.service", "StatusText");
    assert!(
        master.contains("etcd https://10.213.0.11:2379 ok"),
        "{master}"
    );
    let status = ok(
        "tb1",
        "systemctl status docklet-master.service --no-pager || true",
    );
    assert!(status.contains("Status: \"portal on"), "{status}");
    for host in ["tb1", "tb2", "tb3"] {
        let worker = unit_property(host, "docklet-worker.service", "StatusText");
        assert!(
            worker.contains(&format!("registered host {host} in cluster docklet")),
            "{host}: {worker}"
        );
        assert_eq!(
            unit_property(host, "docklet-worker.service", "Type"),
            "notify"
        );
        assert_ne!(
            unit_property(host, "docklet-worker.service", "WatchdogUSec"),
            "0"
        );
    }
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn journal_entries_carry_structured_fields() {
    let out = ok(
        "tb2",
        "journalctl -u docklet-worker DOCKLET_HOST=tb2 -o json --no-pager | tail -n 5",
    );
    let entry: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("an entry")).unwrap();
    assert_eq!(entry["DOCKLET_HOST"], "tb2");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "docklet-worker");
    let status_entries = ok(
        "tb2",
        "journalctl -u docklet-worker DOCKLET_HOST=tb2 -o json --no-pager | grep -c '\"DOCKLET_STATUS\"' || true",
    );
    assert!(status_entries.trim().parse::<u32>().unwrap() > 0);
    let other = ok(
        "tb2",
        "journalctl -u docklet-worker DOCKLET_HOST=tb9 -q --no-pager | wc -l",
    );
    assert_eq!(other.trim(), "0");
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn dbus_admits_root_and_docklet_admin_members_only() {
    ok(
        "tb1",
        "id alice >/dev/null 2>&1 || useradd -m -G docklet-admin alice; \
         id mallory >/dev/null 2>&1 || useradd -m mallory",
    );
    let introspection = ok(
        "tb1",
        "busctl introspect org.docklet.Master1 /org/docklet/Master1",
    );
    for member in [".ListHosts", ".Init", ".Version", ".Status"] {
        assert!(introspection.contains(member), "{introspection}");
    }
    let introspection = ok(
        "tb1",
        "busctl introspect org.docklet.Worker1 /org/docklet/Worker1",
    );
    assert!(introspection.contains(".ListVNodes"), "{introspection}");
    let root = ok(
        "tb1",
        "busctl call org.docklet.Master1 /org/docklet/Master1 org.docklet.Master1 ListHosts",
    );
    assert!(root.starts_with("a(sasuttst) 3 "), "{root}");
    let vnodes = ok(
        "tb1",
        "busctl call org.docklet.Worker1 /org/docklet/Worker1 org.docklet.Worker1 ListVNodes",
    );
    assert_eq!(vnodes.trim(), "a(sssss) 0");

    let member = ok("tb1", "runuser -u alice -- docklet-admin hosts");
    assert!(member.contains("tb3"), "{member}");

    let refused = sh("tb1", "runuser -u mallory -- docklet-admin hosts");
    assert_eq!(refused.code, 4, "{refused}");
    assert!(refused.stderr.contains("permission denied"), "{refused}");
    let refused = sh(
        "tb1",
        "runuser -u mallory -- busctl call org.docklet.Master1 /org/docklet/Master1 org.docklet.Master1 Init b true",
    );
    assert_ne!(refused.code, 0, "{refused}");
    assert!(refused.stderr.contains("Access denied"), "{refused}");
    let refused = sh(
        "tb1",
        "runuser -u mallory -- busctl get-property org.docklet.Worker1 /org/docklet/Worker1 org.docklet.Worker1 Status",
    );
    assert_ne!(refused.code, 0, "{refused}");
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn docklet_admin_prints_tables_and_json() {
    let table = ok("tb2", "docklet-admin hosts");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("HOST"), "{table}");
    assert!(
        lines[0].contains("ADDRESSES") && lines[0].contains("DISK FREE"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[2].starts_with("tb2 ") && lines[2].contains("10.213.0.12/24"),
        "{table}"
    );

    assert_eq!(registered_hosts("tb2"), ["tb1", "tb2", "tb3"]);

    let status: serde_json::Value =
        serde_json::from_str(&ok("tb2", "docklet-admin status --json")).unwrap();
    assert_eq!(status["host"], "tb2");
    assert_eq!(status["worker"]["running"], true);
    assert_eq!(status["worker"]["version"], env!("CARGO_PKG_VERSION"));

    let usage = sh("tb2", "docklet-admin frobnicate");
    assert_eq!(usage.code, 2, "{usage}");
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn killed_worker_disappears_and_returns_when_restarted() {
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
    // SIGKILL, then keep systemd from restarting it: no chance to unregister.
    ok(
        "tb3",
        "systemctl kill -s KILL docklet-worker && systemctl stop docklet-worker",
    );
    let gone = wait_for(
        "tb3 to leave the host list",
        Duration::from_secs(25),
        || !registered_hosts("tb1").contains(&"tb3".to_owned()),
    );
    eprintln!("killed worker left the host list after {gone:?}");
    ok("tb3", "systemctl start docklet-worker");
    wait_for("tb3 to return", Duration::from_secs(15), || {
        registered_hosts("tb1").contains(&"tb3".to_owned())
    });

    // A clean stop unregisters at once.
    ok("tb3", "systemctl stop docklet-worker");
    assert!(!registered_hosts("tb1").contains(&"tb3".to_owned()));
    ok(
        "tb3",
        "systemctl start docklet-worker && docklet-admin wait worker",
    );
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn bad_configuration_is_refused_with_key_value_and_reason() {
    ok(
        "tb2",
        "cp /etc/docklet/docklet.toml /root/docklet.toml.good",
    );
    let check = |text: &str, expect: &[&str]| {
        ok(
            "tb2",
            &format!("cat > /etc/docklet/docklet.toml <<'EOF'\n{text}\nEOF"),
        );
        for daemon in ["docklet-master", "docklet-worker"] {
            let run = sh("tb2", &format!("{daemon} --check-config"));
            assert_eq!(run.code, 78, "{daemon}: {run}");
            for word in expect {
                assert!(
                    run.stderr.contains(word),
                    "{daemon} should mention {word}: {run}"
                );
            }
        }
    };
    check("proxy_prot = 8000", &["proxy_prot", "unknown field"]);
    check(
        "cluster_net = \"172.16.0.1/16\"",
        &["cluster_net", "172.16.0.1/16", "host bits"],
    );
    check(
        "[etcd]\nendpoints = [\"etcd:2379\"]",
        &["etcd.endpoints", "etcd:2379"],
    );

    // The running worker is not disturbed by a bad file; a restart is refused and says why.
    let restart = sh("tb2", "systemctl restart docklet-worker");
    assert_ne!(restart.code, 0);
    let status = ok(
        "tb2",
        "systemctl status docklet-worker --no-pager -n 20 || true",
    );
    assert!(status.contains("configuration error"), "{status}");
    assert!(status.contains("etcd.endpoints"), "{status}");
    assert!(status.contains("status=78"), "{status}");
    // No crash loop: the unit does not restart on a configuration error.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        unit_property("tb2", "docklet-worker.service", "NRestarts"),
        "0"
    );

    ok(
        "tb2",
        "cp /root/docklet.toml.good /etc/docklet/docklet.toml && systemctl restart docklet-worker && \
         docklet-admin wait worker",
    );
    assert!(registered_hosts("tb1").contains(&"tb2".to_owned()));
    let good = ok("tb2", "docklet-worker --check-config");
    assert!(good.contains("configuration OK"), "{good}");
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn second_init_is_refused_and_keeps_the_password() {
    let before = ok("tb1", "cat /var/lib/docklet-master/generated_password.txt");
    assert_eq!(before.trim().len(), 20);
    let mode = ok(
        "tb1",
        "stat -c %a /var/lib/docklet-master/generated_password.txt",
    );
    assert_eq!(mode.trim(), "600");
    // etcd speaks TLS: daemons log in with their certificates, and no etcd password lies on
    // the shared filesystem (issue 17).
    assert_ne!(
        sh("tb1", "test -e /var/lib/docklet/global/secrets/etcd.toml").code,
        0,
        "etcd passwords on the shared filesystem"
    );
    // local/ is root's alone: the root worker follows what is there, so the master's user
    // (and its group) cannot write it (issue 17).
    let local = ok("tb1", "stat -c '%U:%G %a' /var/lib/docklet/local");
    assert_eq!(local.trim(), "root:root 755");
    let planted = sh(
        "tb1",
        "runuser -u docklet -- touch /var/lib/docklet/local/planted",
    );
    assert_ne!(planted.code, 0, "the master's user wrote local/: {planted}");

    let again = sh("tb1", "docklet-admin init");
    assert_eq!(again.code, 5, "{again}");
    assert!(again.stderr.contains("--force"), "{again}");
    let after = ok("tb1", "cat /var/lib/docklet-master/generated_password.txt");
    assert_eq!(before, after);
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn etcd_is_not_open_without_credentials() {
    // Internal endpoints are authenticated: etcd takes TLS clients with a certificate of the
    // site CA only, neither plain HTTP nor a client without a certificate.
    let plain = sh(
        "tb2",
        "ETCDCTL_API=3 etcdctl --endpoints=http://10.213.0.11:2379 --dial-timeout 3s \
         --command-timeout 5s get --prefix /docklet/",
    );
    assert_ne!(plain.code, 0, "{plain}");
    let anonymous = sh(
        "tb2",
        "ETCDCTL_API=3 etcdctl --endpoints=https://10.213.0.11:2379 --cacert /etc/docklet/pki/ca.pem \
         --dial-timeout 3s --command-timeout 5s get --prefix /docklet/",
    );
    assert_ne!(anonymous.code, 0, "{anonymous}");
    // A certificate of another CA with a master's name is refused as well.
    let foreign = sh(
        "tb2",
        "d=$(mktemp -d) && cd $d && \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
           -subj /CN=docklet-master-tb1 -keyout k.pem -out c.pem 2>/dev/null && \
         ETCDCTL_API=3 etcdctl --endpoints=https://10.213.0.11:2379 --cacert /etc/docklet/pki/ca.pem \
           --cert c.pem --key k.pem --dial-timeout 3s --command-timeout 5s get --prefix /docklet/; \
         r=$?; rm -rf $d; exit $r",
    );
    assert_ne!(foreign.code, 0, "{foreign}");
    // tb2's master certificate is etcd's root: the positive control.
    let master = ok(
        "tb2",
        &format!("{} get --keys-only /docklet/cluster", etcdctl_as("master")),
    );
    assert!(master.contains("/docklet/cluster"), "{master}");
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn unreachable_etcd_is_retried_without_crash_loop() {
    ok(
        "tb3",
        "cp /etc/docklet/docklet.toml /root/docklet.toml.good && \
         sed -i 's/10.213.0.11:2379/10.213.0.11:2399/' /etc/docklet/docklet.toml && \
         systemctl stop docklet-worker && systemctl start --no-block docklet-worker",
    );
    wait_for(
        "the worker to say it waits for etcd",
        Duration::from_secs(20),
        || {
            unit_property("tb3", "docklet-worker.service", "StatusText")
                .contains("waiting for etcd at https://10.213.0.11:2399")
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    // Started (READY means serving) and waiting, not a start that never ends.
    assert_eq!(
        unit_property("tb3", "docklet-worker.service", "ActiveState"),
        "active"
    );
    let waiting = sh("tb3", "docklet-admin wait worker --timeout 2s");
    assert_eq!(waiting.code, 6, "{waiting}");
    assert!(waiting.stderr.contains("waiting for etcd"), "{waiting}");
    assert_eq!(
        unit_property("tb3", "docklet-worker.service", "NRestarts"),
        "0"
    );
    let status = unit_property("tb3", "docklet-worker.service", "StatusText");
    assert!(status.contains("retrying in"), "{status}");
    ok(
        "tb3",
        "cp /root/docklet.toml.good /etc/docklet/docklet.toml && systemctl restart docklet-worker && \
         docklet-admin wait worker",
    );
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn worker_started_before_init_waits_and_says_why() {
    // A worker whose shared filesystem holds no credentials yet (no `init` has run).
    ok(
        "tb3",
        "systemctl stop docklet-worker && mkdir -p /etc/systemd/system/docklet-worker.service.d && \
         printf '[Service]\\nEnvironment=DOCKLET_CONFIG=/root/pre-init.toml\\n' \
           > /etc/systemd/system/docklet-worker.service.d/test.conf && \
         printf 'network_device = \"host0\"\\n[etcd]\\nendpoints = [\"http://10.213.0.11:2379\"]\\ncredentials_file = \"/root/none.toml\"\\n' \
           > /root/pre-init.toml && \
         systemctl daemon-reload && systemctl start --no-block docklet-worker",
    );
    wait_for(
        "the worker to ask for init",
        Duration::from_secs(15),
        || {
            unit_property("tb3", "docklet-worker.service", "StatusText")
                .contains("docklet-admin init")
        },
    );
    assert_eq!(
        unit_property("tb3", "docklet-worker.service", "NRestarts"),
        "0"
    );
    ok(
        "tb3",
        "rm -r /etc/systemd/system/docklet-worker.service.d && systemctl daemon-reload && \
         systemctl restart docklet-worker && docklet-admin wait worker",
    );
    assert!(registered_hosts("tb1").contains(&"tb3".to_owned()));
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn both_daemons_keep_their_sandbox_exposure() {
    // `systemd-analyze security`: the master at most 1.5, the worker (root, in the host's
    // mount namespace) at most 5.8.
    for (unit, most) in [
        ("docklet-master.service", 1.5),
        ("docklet-worker.service", 5.8),
    ] {
        let out = ok(
            "tb2",
            &format!("systemd-analyze security --no-pager {unit} | tail -n 1"),
        );
        let level: f64 = out
            .split(": ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in {out:?}"));
        assert!(level <= most, "{unit}: {out}");
    }
}
