//! End-to-end: users' networks on the testbed (the networks issue, points 1–7). Vnodes are
//! created with `docklet-admin` on tb1; what is checked is what a user inside a vnode sees
//! (names, ping, ssh, HTTP to the internet stand-in at 203.0.113.254) and what reaches nothing.
//! Every test has users of its own and deletes what it made.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The testbed's stand-in for the internet (tools/testbed: a netns on the testbed bridge).
const INTERNET: &str = "203.0.113.254";
/// The same netns as a machine of the site's LAN that is not a Docklet host (an NFS server,
/// a metadata service): the hosts reach it, vnodes must not.
const LAN: &str = "10.213.0.254";
const LINK_LOCAL: &str = "169.254.213.254";
const SMALL: &str = "--memory 256M --disk 512M";

fn address(id: &str) -> String {
    let e = entry(id).unwrap_or_else(|| panic!("no vnode {id}"));
    e["spec"]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("vnode {id} has no address: {e:#}"))
        .to_owned()
}

fn host_of(id: &str) -> String {
    entry(id).unwrap()["host"].as_str().unwrap().to_owned()
}

/// Runs `script` in vnode `id` (on whichever host it is).
fn vsh(id: &str, script: &str) -> Run {
    exec(&host_of(id), id, script)
}

fn vok(id: &str, script: &str) -> String {
    exec_ok(&host_of(id), id, script)
}

fn pings(id: &str, target: &str) -> bool {
    vsh(id, &format!("ping -c1 -W2 {target}")).code == 0
}

/// Whether a TCP connection from vnode `id` to `ip:port` opens within 2 s.
fn tcp_opens(id: &str, ip: &str, port: u16) -> bool {
    let out = vok(
        id,
        &format!(
            "python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(2); \
             print(\"open\" if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else \"closed\")' {ip} {port}"
        ),
    );
    out.trim() == "open"
}

fn http_from(id: &str, url: &str) -> Run {
    vsh(
        id,
        &format!(
            "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' {url}"
        ),
    )
}

fn up(ids: &[(&str, &str, &str)]) {
    for (id, host, user) in ids {
        let run = create(id, host, user, SMALL);
        assert_eq!(run.code, 0, "create {id}: {run}");
    }
    for (id, _, _) in ids {
        wait_phase(id, "running");
    }
}

fn down(ids: &[&str]) {
    for id in ids {
        let _ = sh("tb1", &format!("docklet-admin vnode delete {id}"));
    }
    for id in ids {
        wait_gone(id);
    }
}

/// The user's network as `docklet-admin network USER` shows it.
fn user_net(user: &str) -> Value {
    let out = ok("tb1", &format!("docklet-admin network {user}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("network of {user}: {e}: {out}"))
}

fn vni(user: &str) -> u64 {
    user_net(user)["vni"].as_u64().unwrap()
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_users_nodes_reach_each_other_by_name_and_ssh_across_hosts_and_the_internet_through_nat() {
    let ids = ["neta-c1-0", "neta-c1-1", "neta-c1-2"];
    up(&[
        (ids[0], "tb1", "neta"),
        (ids[1], "tb2", "neta"),
        (ids[2], "tb3", "neta"),
    ]);
    let addrs: Vec<String> = ids.iter().map(|id| address(id)).collect();
    let unique: HashSet<&String> = addrs.iter().collect();
    assert_eq!(unique.len(), 3, "addresses must differ: {addrs:?}");

    // Names: host-N and host-N.<cluster>, for every node, from every node.
    for id in ids {
        let hosts = vok(id, "getent hosts host-0 host-1.c1 host-2");
        for (n, addr) in addrs.iter().enumerate() {
            assert!(
                hosts.lines().any(|l| l.starts_with(&format!("{addr} ")) && l.contains(&format!("host-{n}"))),
                "{id} resolves host-{n} wrongly: {hosts}"
            );
        }
    }
    // One L2 across hosts: ping by name, and full-size frames pass (MTU accounts for VXLAN).
    let mtu: u32 = vok(ids[0], "cat /sys/class/net/eth0/mtu")
        .trim()
        .parse()
        .unwrap();
    let host_mtu: u32 = ok("tb1", "cat /sys/class/net/host0/mtu")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(mtu, host_mtu - 50, "vnode MTU leaves room for VXLAN");
    for target in ["host-1", "host-2.c1"] {
        let run = vsh(
            ids[0],
            &format!("ping -c2 -W2 -M do -s {} {target}", mtu - 28),
        );
        assert_eq!(run.code, 0, "full-size ping host-0 → {target}: {run}");
    }

    // The gateway is each host's own: ARP for it is answered locally and never crosses the
    // VXLAN (counted where it is dropped: leaving tb1, and arriving on tb2, which sees none).
    let gateway_arp = |host: &str, chain: &str| -> u64 {
        let rules = ok(host, &format!("nft list chain bridge docklet {chain}"));
        rules
            .lines()
            .find(|l| l.contains("arp daddr ip @gateways counter"))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no gateway ARP counter on {host}: {rules}"))
    };
    let leaving = gateway_arp("tb1", "forward");
    ok(
        "tb1",
        &format!(
            "nsenter --net=/run/docklet/netns/{} ip neigh flush all",
            ids[0]
        ),
    );
    assert!(pings(
        ids[0],
        vok(ids[0], "ip -4 route show default")
            .split_whitespace()
            .nth(2)
            .unwrap()
    ));
    assert!(
        gateway_arp("tb1", "forward") > leaving,
        "tb1 dropped no gateway ARP"
    );
    assert_eq!(
        gateway_arp("tb2", "prerouting"),
        0,
        "gateway ARP reached tb2"
    );

    // Passwordless SSH with no host-key prompt, in both directions across hosts.
    let run = vsh(
        ids[0],
        "ssh -o BatchMode=yes -o ConnectTimeout=10 host-1 hostname",
    );
    assert_eq!(run.code, 0, "ssh host-0 → host-1: {run}");
    assert_eq!(run.stdout.trim(), "host-1");
    let run = vsh(
        ids[2],
        "ssh -o BatchMode=yes -o ConnectTimeout=10 host-0.c1 hostname",
    );
    assert_eq!(run.code, 0, "ssh host-2 → host-0.c1: {run}");
    assert_eq!(run.stdout.trim(), "host-0");
    // The private key is in the vnodes and the user's own area of the shared filesystem
    // (global/users/<user>, stored in GlusterFS's bricks), and nowhere else on the host.
    vok(ids[1], "test -r /etc/docklet/ssh/id_ed25519");
    let found = ok(
        "tb2",
        "grep -rlF 'OPENSSH PRIVATE KEY' /var/lib/docklet/local /etc /root /run/docklet /var/log \
         --exclude-dir=vnodes --exclude-dir=images 2>/dev/null || true",
    );
    assert_eq!(found.trim(), "", "private keys outside users' areas");

    // The internet through NAT: the stand-in sees the vnode's host, not the vnode.
    for (id, host_addr) in [(ids[0], "10.213.0.11"), (ids[1], "10.213.0.12")] {
        assert!(
            pings(id, INTERNET),
            "{id} cannot ping the internet stand-in"
        );
        let run = http_from(id, &format!("http://{INTERNET}/"));
        assert_eq!(run.code, 0, "HTTP from {id}: {run}");
        assert!(
            run.stdout.contains(host_addr),
            "the internet should see {id}'s host {host_addr}: {}",
            run.stdout
        );
    }
    down(&ids);
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn addresses_are_unique_under_concurrent_creates_bounded_by_quota_and_freed_on_delete() {
    // 50 creates at once (stopped vnodes: no boot needed to get an address).
    ok("tb1", "docklet-admin quota --user netc --vnodes 60");
    let ids: Vec<String> = (0..50).map(|i| format!("netc-c1-{i}")).collect();
    let script = ids
        .iter()
        .map(|id| {
            format!(
                "docklet-admin vnode create {id} --host tb{} --user netc --cluster c1 --index {} {SMALL} --stopped &",
                1 + id.len() % 3,
                id.rsplit('-').next().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let run = sh(
        "tb1",
        &format!("{script}\nfail=0; for j in $(jobs -p); do wait $j || fail=1; done; exit $fail"),
    );
    assert_eq!(run.code, 0, "50 concurrent creates: {run}");
    let list: Value =
        serde_json::from_str(&ok("tb1", "docklet-admin vnodes --all --json")).unwrap();
    let addrs: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["spec"]["user"] == "netc")
        .map(|e| e["spec"]["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(addrs.len(), 50);
    let unique: HashSet<&String> = addrs.iter().collect();
    assert_eq!(unique.len(), 50, "an address was given twice: {addrs:?}");
    let net = user_net("netc");
    let blocks: Vec<ipnet::Ipv4Net> = net["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().parse().unwrap())
        .collect();
    for a in &addrs {
        let a: std::net::Ipv4Addr = a.parse().unwrap();
        assert!(
            blocks.iter().any(|b| b.contains(&a)),
            "{a} outside {blocks:?}"
        );
    }

    // A small quota: the third vnode is refused with a clear error; raising the quota adds a
    // block and leaves the addresses given so far alone.
    ok("tb1", "docklet-admin quota --user netd --vnodes 2");
    for i in 0..2 {
        let run = create(
            &format!("netd-c1-{i}"),
            "tb2",
            "netd",
            &format!("{SMALL} --stopped"),
        );
        assert_eq!(run.code, 0, "{run}");
    }
    let run = create("netd-c1-2", "tb2", "netd", &format!("{SMALL} --stopped"));
    assert_eq!(run.code, 9, "over quota must be exit 9 (exhausted): {run}");
    assert!(run.stderr.contains("used all"), "{run}");
    let before = (address("netd-c1-0"), address("netd-c1-1"));
    ok("tb1", "docklet-admin quota --user netd --vnodes 12");
    let run = create("netd-c1-2", "tb2", "netd", &format!("{SMALL} --stopped"));
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(user_net("netd")["blocks"].as_array().unwrap().len(), 2);
    assert_eq!(before, (address("netd-c1-0"), address("netd-c1-1")));

    // A quota no block of the pool can hold: a clear error, nothing written.
    ok("tb1", "docklet-admin quota --user netz --vnodes 1000000");
    let run = create("netz-c1-0", "tb2", "netz", &format!("{SMALL} --stopped"));
    assert_eq!(run.code, 9, "{run}");
    assert!(run.stderr.contains("has no free block"), "{run}");
    assert!(entry("netz-c1-0").is_none());

    // Deleting frees addresses: the 50 can be created again within the same blocks.
    let mut all: Vec<&str> = ids.iter().map(String::as_str).collect();
    all.extend(["netd-c1-0", "netd-c1-1", "netd-c1-2"]);
    down(&all);
    let left = ok("tb1", "docklet-admin vnodes --all --json");
    assert!(!left.contains("\"netc\""), "{left}");
    let run = create("netc-c1-0", "tb3", "netc", &format!("{SMALL} --stopped"));
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        user_net("netc")["blocks"],
        net["blocks"],
        "blocks stay with the user"
    );
    down(&["netc-c1-0"]);
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn users_reach_neither_each_other_nor_the_control_plane_and_cannot_spoof() {
    let (a0, a1, b0, b1) = ("isoa-c1-0", "isoa-c1-1", "isob-c1-0", "isob-c1-1");
    // Somebody else's firewall table on tb1: Docklet must leave it alone.
    ok(
        "tb1",
        "nft add table inet bystander; nft add chain inet bystander keep",
    );
    up(&[
        (a0, "tb1", "isoa"),
        (a1, "tb2", "isoa"),
        (b0, "tb1", "isob"),
        (b1, "tb2", "isob"),
    ]);
    let (addr_a1, addr_b0, addr_b1) = (address(a1), address(b0), address(b1));

    // The positive controls: a reaches its own node on the other host and the internet.
    assert!(pings(a0, &addr_a1));
    assert!(tcp_opens(a0, &addr_a1, 22));
    assert!(tcp_opens(a0, INTERNET, 80));
    // Another user's nodes: not on the same host, not across hosts, neither ping nor TCP.
    for target in [&addr_b0, &addr_b1] {
        assert!(!pings(a0, target), "isoa reached isob's {target}");
        assert!(!tcp_opens(a0, target, 22), "isoa opened isob's {target}:22");
    }
    assert!(!pings(b1, &address(a0)), "isob reached isoa across hosts");
    // The control plane and every host's management address.
    let gateway = vok(a0, "ip -4 route show default")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    for (ip, port) in [
        ("10.213.0.11", 2379),
        ("10.213.0.11", 8000),
        ("10.213.0.11", 8001),
        ("10.213.0.12", 8001),
        ("10.213.0.13", 8001),
        ("10.213.0.12", 22),
        (gateway.as_str(), 8001),
        (gateway.as_str(), 2379),
    ] {
        assert!(!tcp_opens(a0, ip, port), "a vnode reached {ip}:{port}");
    }
    for host in ["10.213.0.11", "10.213.0.12", "10.213.0.13"] {
        assert!(!pings(a0, host), "a vnode pinged host {host}");
    }
    // Root in a vnode has no network privileges: no address or MAC changes.
    let run = vsh(a0, "ip addr add 172.16.250.250/16 dev eth0");
    assert_ne!(run.code, 0, "root in a vnode changed its addresses");
    assert!(run.stderr.contains("Operation not permitted"), "{run}");
    // Even with host privileges in the vnode's netns, spoofed frames get nowhere: another
    // address, then another MAC.
    let netns = format!("/run/docklet/netns/{a0}");
    let spoofed = sh(
        "tb1",
        &format!(
            "nsenter --net={netns} sh -c 'ip addr add {addr_b0}/32 dev eth0 && ping -c2 -W2 -I {addr_b0} {addr_a1}; \
             r=$?; ip addr del {addr_b0}/32 dev eth0; exit $r'"
        ),
    );
    assert_ne!(
        spoofed.code, 0,
        "a spoofed source address got through: {spoofed}"
    );
    let mac = ok(
        "tb1",
        &format!("nsenter --net={netns} ip -br link show eth0"),
    );
    let mac = mac.split_whitespace().nth(2).unwrap_or_default().to_owned();
    let spoofed = sh(
        "tb1",
        &format!(
            "nsenter --net={netns} sh -c 'ip link set eth0 address 02:dc:01:02:03:04 && ping -c2 -W2 {addr_a1}; \
             r=$?; ip link set eth0 address {mac}; exit $r'"
        ),
    );
    assert_ne!(spoofed.code, 0, "a spoofed MAC got through: {spoofed}");
    assert!(
        pings(a0, &addr_a1),
        "the vnode works again once it stops spoofing"
    );

    // Docklet's tables are its own; the bystander's table is still there.
    let tables = ok("tb1", "nft list tables");
    assert!(tables.contains("table inet bystander"), "{tables}");
    for family in ["bridge", "inet", "ip"] {
        assert_eq!(
            tables.matches(&format!("table {family} docklet\n")).count(),
            1,
            "{tables}"
        );
    }
    ok("tb1", "nft delete table inet bystander");
    down(&[a0, a1, b0, b1]);
}

/// What the internet stand-in saw of a connection vnode `id` opens from source port `port`:
/// `(client address, client port)`.
fn seen_by_the_internet_from_port(id: &str, port: u16) -> (String, u16) {
    let body = vok(
        id,
        &format!(
            "python3 -c 'import socket,sys; s=socket.socket(); \
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"\", {port})); \
             s.settimeout(5); s.connect((sys.argv[1], 80)); \
             s.sendall(b\"GET /from-{port} HTTP/1.0\\r\\n\\r\\n\"); \
             print(s.makefile().read())' {INTERNET}"
        ),
    );
    let field = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .to_owned()
    };
    (field("client"), field("port").parse().unwrap())
}

/// Whether `host` itself opens `ip:port` (the positive control of a vnode that must not).
fn host_opens(host: &str, ip: &str, port: u16) -> bool {
    sh(
        host,
        &format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"),
    )
    .code
        == 0
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn vnodes_reach_the_internet_from_unprivileged_ports_and_nothing_of_the_site_unless_their_group_may()
 {
    let (plain, lab) = ("egra-c1-0", "egrb-c1-0");
    let _ = sh(
        "tb1",
        "docklet-admin user delete egrb; docklet-admin group delete egresslab",
    );
    // egrb's group may reach the LAN machine's web server, and nothing else of it.
    ok("tb1", "docklet-admin group add egresslab");
    ok(
        "tb1",
        "echo 'egress-lab-password' | docklet-admin user add egrb --group egresslab",
    );
    let shown = ok(
        "tb1",
        "docklet-admin group egress egresslab 10.213.0.254:80",
    );
    assert!(shown.contains("10.213.0.254/32:80"), "{shown}");
    let bad = sh(
        "tb1",
        "docklet-admin group egress egresslab nfs.example:2049",
    );
    assert_eq!(bad.code, 2, "{bad}");
    assert!(
        bad.stderr
            .contains("\"nfs.example:2049\" is not a destination"),
        "{bad}"
    );
    up(&[(plain, "tb1", "egra"), (lab, "tb2", "egrb")]);

    // The positive controls: the hosts reach every address of the LAN machine and the
    // internet; the vnodes reach the internet.
    for host in ["tb1", "tb2"] {
        for (ip, port) in [(LAN, 80), (LAN, 5201), (LINK_LOCAL, 80), (INTERNET, 80)] {
            assert!(host_opens(host, ip, port), "{host} cannot open {ip}:{port}");
        }
    }
    for id in [plain, lab] {
        assert!(
            tcp_opens(id, INTERNET, 80),
            "{id} cannot reach the internet"
        );
    }

    // Nothing of the site: the LAN machine, its link-local address, the hosts, etcd, agents.
    let site = [
        (LAN, 80),
        (LAN, 5201),
        (LINK_LOCAL, 80),
        ("10.213.0.11", 2379),
        ("10.213.0.11", 8001),
        ("10.213.0.12", 8001),
        ("10.213.0.13", 22),
    ];
    for (ip, port) in site {
        assert!(!tcp_opens(plain, ip, port), "{plain} reached {ip}:{port}");
        assert!(!pings(plain, ip), "{plain} pinged {ip}");
    }
    // The attack of issue 17: a connection from a privileged source port arrives from the
    // host's address, and from an unprivileged port.
    for (id, host_addr) in [(plain, "10.213.0.11"), (lab, "10.213.0.12")] {
        let (client, port) = seen_by_the_internet_from_port(id, 700);
        assert_eq!(client, host_addr, "{id}");
        assert!(
            port >= 1024,
            "{id}'s connection from port 700 arrived from port {port}"
        );
    }

    // The group's allowance: the LAN machine's port 80 and nothing else of the site.
    assert!(tcp_opens(lab, LAN, 80), "egresslab may reach {LAN}:80");
    for (ip, port) in [(LAN, 5201), (LINK_LOCAL, 80), ("10.213.0.11", 8001)] {
        assert!(!tcp_opens(lab, ip, port), "{lab} reached {ip}:{port}");
    }
    // Out of the group, out of the allowance (the workers follow within seconds).
    ok("tb1", "docklet-admin user set egrb --group foundation");
    wait_for(
        "egrb to lose the allowance",
        Duration::from_secs(20),
        || !tcp_opens(lab, LAN, 80),
    );

    // A worker restart keeps the rules (they are rebuilt from etcd, the same on every host).
    ok(
        "tb1",
        "systemctl restart docklet-worker && docklet-admin wait worker",
    );
    wait_phase(plain, "running");
    wait_for(
        "the internet after a worker restart",
        Duration::from_secs(20),
        || tcp_opens(plain, INTERNET, 80),
    );
    assert!(!tcp_opens(plain, LAN, 80), "the LAN after a worker restart");
    let egress = ok("tb1", "nft list chain inet docklet egress");
    assert!(egress.contains("ip daddr @site drop"), "{egress}");

    down(&[plain, lab]);
    ok(
        "tb1",
        "docklet-admin user delete egrb && docklet-admin group delete egresslab",
    );
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn names_and_peers_follow_scale_out_and_in_and_idle_hosts_drop_the_network() {
    let (n0, n1) = ("nete-c1-0", "nete-c1-1");
    up(&[(n0, "tb1", "nete")]);
    let leader_before = entry(n0).unwrap()["status"]["leader_pid"].clone();
    assert!(
        vsh(n0, "getent hosts host-1").code != 0,
        "host-1 resolves before it exists"
    );
    up(&[(n1, "tb2", "nete")]);
    let addr1 = address(n1);
    wait_for("host-0 to resolve host-1", Duration::from_secs(10), || {
        vsh(n0, "getent hosts host-1")
            .stdout
            .starts_with(&format!("{addr1} "))
    });
    assert!(pings(n0, "host-1"));
    assert_eq!(
        entry(n0).unwrap()["status"]["leader_pid"],
        leader_before,
        "no restart"
    );
    let vni = vni("nete");
    let fdb = |host: &str| {
        ok(
            host,
            &format!("bridge fdb show dev dkx{vni} | grep '^00:00:00:00:00:00' || true"),
        )
    };
    assert!(
        fdb("tb1").contains("dst 10.213.0.12"),
        "tb1 floods to tb2: {}",
        fdb("tb1")
    );

    // Scale in: the name goes, tb2 drops the user's devices, tb1 its peer.
    down(&[n1]);
    wait_for(
        "host-1 to go from host-0's names",
        Duration::from_secs(10),
        || vsh(n0, "getent hosts host-1").code != 0,
    );
    wait_for(
        "tb2 to drop nete's devices",
        Duration::from_secs(15),
        || {
            sh(
                "tb2",
                &format!("ip link show dkb{vni} || ip link show dkx{vni}"),
            )
            .code
                != 0
        },
    );
    assert!(!fdb("tb1").contains("10.213.0.12"), "{}", fdb("tb1"));
    down(&[n0]);
    wait_for(
        "tb1 to drop nete's devices",
        Duration::from_secs(15),
        || sh("tb1", &format!("ip link show dkb{vni}")).code != 0,
    );
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn worker_restarts_and_reboots_restore_the_network_without_duplicates() {
    let (f0, f1) = ("netf-c1-0", "netf-c1-1");
    up(&[(f0, "tb2", "netf"), (f1, "tb3", "netf")]);
    let addr0 = address(f0);
    let vni = vni("netf");
    // A TCP connection across hosts that must survive the worker's restart.
    vok(
        f0,
        "systemd-run --unit=echo-server python3 -c 'import socket\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"\", 7000)); s.listen()\n\
         c,_=s.accept()\n\
         while True:\n    d=c.recv(100)\n    if not d: break\n    c.sendall(d)'",
    );
    vok(
        f1,
        &format!(
            "systemd-run --unit=echo-client python3 -c 'import socket, time\n\
             c=socket.create_connection((\"{addr0}\", 7000), timeout=5)\n\
             for i in range(600):\n    c.sendall(b\"x\"); assert c.recv(1) == b\"x\"; open(\"/tmp/echoes\", \"w\").write(str(i)); time.sleep(0.1)'"
        ),
    );
    let echoes = || {
        vsh(f1, "cat /tmp/echoes")
            .stdout
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    wait_for("echoes to flow", Duration::from_secs(10), || echoes() > 3);

    let state = |host: &str| {
        ok(
            host,
            &format!(
                "bridge fdb show dev dkx{vni} | grep '^00:00:00:00:00:00' | sort; \
                 ip -br link show master dkb{vni} | awk '{{print $1}}' | sort; \
                 ip -4 -br addr show dkb{vni}; nft list tables | sort"
            ),
        )
    };
    let before = state("tb2");
    ok(
        "tb2",
        "systemctl restart docklet-worker && docklet-admin wait worker",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        state("tb2"),
        before,
        "a restarted worker changes nothing that was right"
    );
    let n = echoes();
    wait_for(
        "echoes to keep flowing after the restart",
        Duration::from_secs(10),
        || echoes() > n + 5,
    );
    assert_eq!(
        vsh(f1, "systemctl is-failed echo-client").stdout.trim(),
        "active",
        "the connection broke"
    );

    // The master's restart and the vnode's own stop and start keep its address.
    ok(
        "tb1",
        "systemctl restart docklet-master && docklet-admin wait master",
    );
    ok("tb1", &format!("docklet-admin vnode stop {f0}"));
    wait_phase(f0, "stopped");
    ok("tb1", &format!("docklet-admin vnode start {f0}"));
    wait_phase(f0, "running");
    assert_eq!(address(f0), addr0);
    let inside = vok(f0, "ip -4 -br addr show eth0");
    assert!(inside.contains(&format!("{addr0}/")), "{inside}");
    wait_for(
        "the restarted vnode to be reachable",
        Duration::from_secs(10),
        || pings(f1, &addr0),
    );
    let before = state("tb2");

    // Devices removed by hand come back within a resync.
    ok(
        "tb2",
        &format!("ip link del dkx{vni}; ip link del dkb{vni}"),
    );
    wait_for(
        "tb2 to rebuild the user's network",
        Duration::from_secs(20),
        || pings(f1, &addr0),
    );
    assert_eq!(state("tb2"), before);

    // A reboot of tb3: its vnode comes back and reaches tb2's again.
    let addr1 = address(f1);
    reboot("tb3");
    wait_phase(f1, "running");
    wait_for(
        "the rebooted host's vnode to reach tb2's",
        Duration::from_secs(20),
        || pings(f1, &addr0),
    );
    assert_eq!(address(f1), addr1, "address kept");
    let fdb = ok(
        "tb3",
        &format!("bridge fdb show dev dkx{vni} | grep '^00:00:00:00:00:00'"),
    );
    assert_eq!(fdb.lines().count(), 1, "one flood entry towards tb2: {fdb}");
    down(&[f0, f1]);
}

/// Puts tb3's own configuration back and restarts its worker, however the test ends.
struct RestoreConfig;

impl Drop for RestoreConfig {
    fn drop(&mut self) {
        let run = sh(
            "tb3",
            "if [ -f /etc/docklet/docklet.toml.e2e ]; then mv /etc/docklet/docklet.toml.e2e /etc/docklet/docklet.toml; fi; \
             ip link del vxother 2>/dev/null; systemctl reset-failed docklet-worker; systemctl restart docklet-worker",
        );
        assert_eq!(run.code, 0, "restoring tb3's worker: {run}");
    }
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn network_settings_that_cannot_work_are_refused_at_start() {
    let restore = RestoreConfig;
    // tb3's configuration with `line` in place of its own setting of the same key (keys go
    // before the [etcd] table).
    let top = |line: &str| {
        let key = line.split_whitespace().next().unwrap_or("#");
        ok(
            "tb3",
            &format!(
                "cp -n /etc/docklet/docklet.toml /etc/docklet/docklet.toml.e2e; \
                 {{ printf '%s\\n' {}; grep -v '^{key} ' /etc/docklet/docklet.toml.e2e; }} > /etc/docklet/docklet.toml",
                shell_quote(line)
            ),
        );
        let run = sh(
            "tb3",
            "systemctl reset-failed docklet-worker; systemctl restart docklet-worker",
        );
        let log = ok(
            "tb3",
            "journalctl -u docklet-worker -n 30 --no-pager -o cat",
        );
        if run.code != 0 {
            // A configuration error: systemd leaves the worker failed, no restart loop.
            std::thread::sleep(std::time::Duration::from_secs(3));
            let state = [
                unit_property("tb3", "docklet-worker", "ActiveState"),
                unit_property("tb3", "docklet-worker", "ExecMainStatus"),
            ];
            assert_eq!(state, ["failed", "78"], "{log}");
        }
        (run.code == 0, log)
    };
    let cases = [
        ("cluster_net = \"10.213.0.0/16\"", "overlaps 10.213.0.0/24"),
        (
            "network_device = \"nosuchdev0\"",
            "\"nosuchdev0\" does not exist",
        ),
    ];
    for (line, reason) in cases {
        let (started, log) = top(line);
        assert!(!started, "the worker started with {line}");
        assert!(
            log.contains(reason),
            "{line}: the journal should say {reason:?}: {log}"
        );
    }
    // Somebody else's VXLAN in Docklet's VNI range.
    ok(
        "tb3",
        "ip link add vxother type vxlan id 1000005 dstport 4789 dev host0",
    );
    let (started, log) = top("");
    ok("tb3", "ip link del vxother");
    assert!(!started, "the worker started beside a colliding VNI");
    assert!(log.contains("vxother already uses VNI 1000005"), "{log}");
    // Back to the real configuration: the worker starts (or the drop panics).
    drop(restore);
}
