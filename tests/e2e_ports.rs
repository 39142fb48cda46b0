//! End-to-end: port mappings on the testbed, as a user sees them from outside. A user maps
//! port 22 of a node and reads sshd's banner at the master's public address from this
//! machine; the group's quota, bad input and other users are refused; the port closes when
//! the cluster stops and opens when it starts; it comes back after the master restarts and
//! after the master host reboots; and deleting the cluster removes the mapping and closes
//! the port.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::rest::*;
use common::*;
use serde_json::{Value, json};

/// The master's address on the testbed network, where public ports are.
const MASTER: &str = "10.213.0.11";

// ---- raw TCP, from outside the testbed ----

/// What a connection to a public port gives.
#[derive(Debug, PartialEq)]
enum Probe {
    /// The first line the server sent.
    Line(String),
    /// Nothing listens there.
    Refused,
    /// Accepted, then closed or silent without a line.
    NoLine(String),
}

fn probe(public_port: u16) -> Probe {
    let address: SocketAddr = format!("{MASTER}:{public_port}").parse().unwrap();
    let mut stream = match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Probe::Refused,
        Err(e) => return Probe::NoLine(format!("connect: {e}")),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Ok(_) => return Probe::NoLine(format!("closed after {line:?}")),
            Err(e) => return Probe::NoLine(format!("read: {e} after {line:?}")),
        }
    }
    Probe::Line(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// Probes until `wanted` says yes (or `limit` passes, failing with the last probe).
#[track_caller]
fn probe_until(public_port: u16, what: &str, limit: Duration, wanted: impl Fn(&Probe) -> bool) {
    let start = Instant::now();
    loop {
        let seen = probe(public_port);
        if wanted(&seen) {
            eprintln!("{what}: after {:?}", start.elapsed());
            return;
        }
        if start.elapsed() > limit {
            panic!("{what}: not within {limit:?}; port {public_port} last gave {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn is_ssh(probe: &Probe) -> bool {
    matches!(probe, Probe::Line(line) if line.starts_with("SSH-2.0-OpenSSH"))
}

// ---- the test ----

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_mapped_port_reaches_sshd_within_quota_and_follows_the_node() {
    let started = Instant::now();
    let (a, b, group) = ("pmapa", "pmapb", "pmapg");
    let _cleanup = Cleanup(&["pmapa", "pmapb"], "pmapg");
    let token_a = fresh_user(a);
    let token_b = fresh_user(b);

    // A's group allows one mapping.
    group_for(group, json!({"port_mappings": 1}), json!({}), &[a]);

    let r = post("/clusters", &token_a, &json!({"name": "web", "size": 1}));
    succeeds(&token_a, &r);

    // Port 22 of node 0, on a public port of the range.
    let r = post(
        "/clusters/web/nodes/0/ports",
        &token_a,
        &json!({"port": 22}),
    );
    assert_eq!(r.status, 201, "{r}");
    let public_port = r.json["public_port"].as_u64().expect("public_port") as u16;
    assert!((30000..=30999).contains(&public_port), "{r}");
    assert_eq!(
        (
            &r.json["user"],
            &r.json["cluster"],
            &r.json["node"],
            &r.json["port"]
        ),
        (&json!(a), &json!("web"), &json!(0), &json!(22)),
        "{r}"
    );
    assert_eq!(r.json["vnode"], format!("{a}-web-0"), "{r}");
    // Announced under the ports' own name, never the portal's (whose cookies a browser
    // would send to any port of it).
    assert_eq!(
        r.json["address"],
        format!("{PORTS_NAME}:{public_port}"),
        "{r}"
    );
    assert_eq!(r.json["forwarding"], true, "{r}");
    probe_until(
        public_port,
        "sshd's banner",
        Duration::from_secs(20),
        is_ssh,
    );
    assert_eq!(get("/me", &token_a).json["usage"]["port_mappings"], 1);

    // A second mapping is over the group's quota; bad requests say what is wrong.
    post(
        "/clusters/web/nodes/0/ports",
        &token_a,
        &json!({"port": 80}),
    )
    .assert_error(422, "quota_exceeded");
    for (body, field) in [
        (json!({"port": 0}), "port"),
        (json!({"port": 70000}), "port"),
        (json!({"port": 80, "public_port": 22}), "public_port"),
        (json!({"port": 80, "public_port": 31000}), "public_port"),
    ] {
        let r = post("/clusters/web/nodes/0/ports", &token_a, &body);
        r.assert_error(422, "invalid_port");
        assert_eq!(r.json["error"]["field"], field, "{r}");
    }
    post(
        "/clusters/web/nodes/0/ports",
        &token_a,
        &json!({"port": "ssh"}),
    )
    .assert_error(422, "invalid_body");
    post(
        "/clusters/web/nodes/7/ports",
        &token_a,
        &json!({"port": 80}),
    )
    .assert_error(404, "not_found");
    post(
        "/clusters/nope/nodes/0/ports",
        &token_a,
        &json!({"port": 80}),
    )
    .assert_error(404, "not_found");

    // With room for two: a taken public port and a port mapped twice are conflicts; a
    // mapping of its own is made and deleted, and its port closes.
    let r = api(
        "PATCH",
        &format!("/groups/{group}"),
        root(),
        Some(&json!({"quota": {"port_mappings": 2}})),
    );
    assert_eq!(r.status, 200, "{r}");
    post(
        "/clusters/web/nodes/0/ports",
        &token_a,
        &json!({"port": 80, "public_port": public_port}),
    )
    .assert_error(409, "conflict");
    post(
        "/clusters/web/nodes/0/ports",
        &token_a,
        &json!({"port": 22}),
    )
    .assert_error(409, "conflict");
    let r = post(
        "/clusters/web/nodes/0/ports",
        &token_a,
        &json!({"port": 80}),
    );
    assert_eq!(r.status, 201, "{r}");
    let second = r.json["public_port"].as_u64().unwrap() as u16;
    assert_ne!(second, public_port);
    let r = api("DELETE", &format!("/ports/{second}"), &token_a, None);
    assert_eq!(r.status, 204, "{r}");
    api("DELETE", &format!("/ports/{second}"), &token_a, None).assert_error(404, "not_found");
    probe_until(
        second,
        "the deleted mapping's port closed",
        Duration::from_secs(10),
        |p| *p == Probe::Refused,
    );

    // Another user neither sees nor deletes it; the administrator sees it.
    let r = get("/ports", &token_b);
    assert_eq!((r.status, &r.json), (200, &json!([])), "{r}");
    get(&format!("/ports?user={a}"), &token_b).assert_error(403, "forbidden");
    api("DELETE", &format!("/ports/{public_port}"), &token_b, None).assert_error(404, "not_found");
    api(
        "DELETE",
        &format!("/ports/{public_port}?user={a}"),
        &token_b,
        None,
    )
    .assert_error(403, "forbidden");
    post(
        "/clusters/web/nodes/0/ports",
        &token_b,
        &json!({"port": 22}),
    )
    .assert_error(404, "not_found");
    let listed = get("/ports", &token_a);
    assert_eq!(listed.status, 200, "{listed}");
    let ports: Vec<u64> = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["public_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [u64::from(public_port)], "{listed}");
    let admin_view = get(&format!("/ports?user={a}"), root());
    assert_eq!(admin_view.json, listed.json, "{admin_view}");
    assert!(is_ssh(&probe(public_port)), "still forwarding");
    // Local administrators list them over D-Bus.
    let local: Value = serde_json::from_str(&ok(
        "tb1",
        &format!("docklet-admin ports --user {a} --json"),
    ))
    .expect("docklet-admin ports --json");
    assert_eq!(local[0]["public_port"], public_port, "{local}");
    assert_eq!(local[0]["forwarding"], true, "{local}");
    let table = ok("tb1", "docklet-admin ports");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&public_port.to_string())
                && l.contains(a)
                && l.ends_with("yes")),
        "{table}"
    );

    // Stopping the cluster closes the port; starting it opens it again.
    succeeds(&token_a, &post("/clusters/web/stop", &token_a, &json!({})));
    probe_until(
        public_port,
        "the port closed on stop",
        Duration::from_secs(10),
        |p| *p == Probe::Refused,
    );
    assert_eq!(get("/ports", &token_a).json[0]["forwarding"], false);
    succeeds(&token_a, &post("/clusters/web/start", &token_a, &json!({})));
    probe_until(
        public_port,
        "sshd again after start",
        Duration::from_secs(30),
        is_ssh,
    );

    // A restarted master listens again by itself.
    ok(
        "tb1",
        "systemctl restart docklet-master.service && docklet-admin wait master",
    );
    probe_until(
        public_port,
        "sshd after the master restarted",
        Duration::from_secs(60),
        is_ssh,
    );

    // So does the master host after a reboot, with no portal request to start its master:
    // `docklet-admin init` enabled it there.
    assert_eq!(
        unit_property("tb1", "docklet-master.service", "UnitFileState"),
        "enabled"
    );
    reboot("tb1");
    probe_until(
        public_port,
        "sshd after the master host rebooted",
        Duration::from_secs(180),
        is_ssh,
    );
    assert_eq!(
        unit_property("tb1", "docklet-master.service", "ActiveState"),
        "active"
    );

    // Deleting the cluster removes the mapping, releases it and closes the port.
    let r = api("DELETE", "/clusters/web?force=true", &token_a, None);
    succeeds(&token_a, &r);
    let r = get("/ports", &token_a);
    assert_eq!((r.status, &r.json), (200, &json!([])), "{r}");
    assert_eq!(get("/me", &token_a).json["usage"]["port_mappings"], 0);
    probe_until(
        public_port,
        "the port closed on delete",
        Duration::from_secs(10),
        |p| *p == Probe::Refused,
    );
    eprintln!("e2e_ports: {:?}", started.elapsed());
}
