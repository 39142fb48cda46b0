//! Root tests of the network seams on this machine (tier 2): rtnetlink (bridge, VXLAN, flood
//! entries, veth into a vnode's netns), nftables, and the worker's start checks. Each test
//! runs on a thread of its own inside a fresh network namespace, so the machine's own network
//! is never touched and everything vanishes with the thread. `tools/test` runs them as root.

use std::future::Future;
use std::net::Ipv4Addr;

use docklet::config::Config;
use docklet::model::egress::EgressPolicy;
use docklet::model::network::{self, FirewallContext, NetView, UserNet};
use docklet::model::vnode::{DesiredState, VNodeSpec};
use docklet::sys::firewall::{Firewall, Nft};
use docklet::sys::mounts;
use docklet::sys::netlink::Netlink;
use docklet::worker::network::Network;

/// Runs `body` on a new thread, in a new network namespace with an uplink `up0`
/// (10.77.0.2/24, default route via 10.77.0.1), on a single-threaded runtime.
fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    assert_eq!(nix::unistd::geteuid().as_raw(), 0, "root tests need root");
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let nl = Netlink::connect().unwrap();
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            handle
                .link()
                .add(rtnetlink::LinkVeth::new("up0", "up0peer").mtu(1500).build())
                .execute()
                .await
                .unwrap();
            // (This kernel has no dummy driver: a veth pair stands for the uplink.)
            let up0 = nl.set_up("up0").await.unwrap();
            nl.set_up("up0peer").await.unwrap();
            nl.set_up("lo").await.unwrap();
            nl.ensure_address(up0.index, Ipv4Addr::new(10, 77, 0, 2), 24)
                .await
                .unwrap();
            nl.ensure_route(
                "0.0.0.0/0".parse().unwrap(),
                up0.index,
                Some(Ipv4Addr::new(10, 77, 0, 1)),
            )
            .await
            .unwrap();
            body().await;
        });
    })
    .join()
    .expect("the test thread panicked");
}

fn config(extra: &str) -> Config {
    Config::parse(std::path::Path::new("test.toml"), extra).unwrap()
}

#[test]
#[ignore = "root: network namespaces; run tools/test"]
fn the_worker_refuses_network_settings_that_cannot_work() {
    in_netns(|| async {
        let nft = || std::sync::Arc::new(Nft) as std::sync::Arc<dyn Firewall>;
        let err = |text: &'static str| async move {
            match Network::start(&config(text), "h1", nft()).await {
                Ok(_) => panic!("started with {text}"),
                Err(e) => e.to_string(),
            }
        };
        let e = err("network_device = \"nosuch0\"").await;
        assert!(
            e.contains("\"nosuch0\" does not exist") && e.contains("up0"),
            "{e}"
        );
        let e = err("cluster_net = \"10.0.0.0/8\"").await;
        assert!(e.contains("overlaps 10.77.0.0/24 on device up0"), "{e}");
        // Somebody else's VXLAN inside Docklet's VNI range, on the VXLAN port.
        let (conn, handle, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        handle
            .link()
            .add(
                rtnetlink::LinkVxlan::new("vxother", 1_000_042)
                    .port(4789)
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let e = err("").await;
        assert!(e.contains("vxother already uses VNI 1000042"), "{e}");
        // Outside the range it is no collision; the worker starts and forwards IPv4.
        let network = Network::start(&config("vni_base = 2000000"), "h1", nft())
            .await
            .unwrap();
        assert_eq!(network.vtep(), Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            "1\n"
        );
    });
}

#[test]
#[ignore = "root: network namespaces; run tools/test"]
fn the_data_path_is_made_idempotently() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        let up0 = nl.link("up0").await.unwrap().unwrap();
        let mac = network::mac_for(Ipv4Addr::new(172, 16, 0, 1));
        let vtep = Ipv4Addr::new(10, 77, 0, 2);
        for _ in 0..2 {
            let bridge = nl.ensure_bridge("dkb7", mac, 1450).await.unwrap();
            assert_eq!(
                (bridge.mtu, bridge.mac.as_slice(), bridge.up),
                (1450, &mac[..], true)
            );
            let vxlan = nl
                .ensure_vxlan("dkx7", 7, vtep, up0.index, 4789, 1450, bridge.index)
                .await
                .unwrap();
            assert_eq!((vxlan.vxlan_id, vxlan.vxlan_port), (Some(7), Some(4789)));
            assert_eq!(vxlan.controller, Some(bridge.index));
            for remote in [[10, 77, 0, 3], [10, 77, 0, 4], [10, 77, 0, 3]] {
                nl.add_flood_remote(vxlan.index, remote.into())
                    .await
                    .unwrap();
            }
            let mut remotes = nl.flood_remotes(vxlan.index).await.unwrap();
            remotes.sort();
            assert_eq!(
                remotes,
                [Ipv4Addr::new(10, 77, 0, 3), Ipv4Addr::new(10, 77, 0, 4)]
            );
            nl.delete_flood_remote(vxlan.index, Ipv4Addr::new(10, 77, 0, 4))
                .await
                .unwrap();
            nl.delete_flood_remote(vxlan.index, Ipv4Addr::new(10, 77, 0, 4))
                .await
                .unwrap();
            assert_eq!(
                nl.flood_remotes(vxlan.index).await.unwrap(),
                [Ipv4Addr::new(10, 77, 0, 3)]
            );
        }
        // A veth into a vnode's netns, configured from outside.
        let dir = tempfile::tempdir().unwrap();
        let netns = dir.path().join("ns");
        mounts::create_netns(&netns).unwrap();
        let bridge = nl.link("dkb7").await.unwrap().unwrap();
        let vnode_mac = network::mac_for(Ipv4Addr::new(172, 16, 0, 2));
        let veth = nl
            .create_veth("dkvtest", bridge.index, 1450, &netns, "eth0", vnode_mac)
            .await
            .unwrap();
        assert_eq!(veth.controller, Some(bridge.index));
        let inside = Netlink::connect_in(&netns).unwrap();
        let eth0 = inside.set_up("eth0").await.unwrap();
        assert_eq!((eth0.mac.as_slice(), eth0.mtu), (&vnode_mac[..], 1450));
        assert!(
            nl.link("eth0").await.unwrap().is_none(),
            "eth0 is only inside"
        );
        // A bridge remade under it: the veth goes back in and keeps its peer.
        nl.delete("dkb7").await.unwrap();
        let bridge = nl.ensure_bridge("dkb7", mac, 1450).await.unwrap();
        let veth = nl.link("dkvtest").await.unwrap().unwrap();
        assert_eq!(veth.controller, None);
        nl.enslave(&veth, bridge.index).await.unwrap();
        assert_eq!(
            nl.link("dkvtest").await.unwrap().unwrap().controller,
            Some(bridge.index)
        );
        assert!(inside.link("eth0").await.unwrap().is_some());
        mounts::remove_netns(&netns).unwrap();
    });
}

#[test]
#[ignore = "root: network namespaces; run tools/test"]
fn the_firewall_replaces_its_own_tables_and_nobody_elses() {
    in_netns(|| async {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("nft")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "nft {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        run(&["add", "table", "inet", "bystander"]);
        run(&["add", "chain", "inet", "bystander", "keep"]);
        let mut spec = VNodeSpec {
            id: "alice-c1-0".into(),
            user: "alice".into(),
            cluster: "c1".into(),
            index: 0,
            image: "base".into(),
            cpu_millis: 1000,
            memory_bytes: 256 << 20,
            disk_bytes: 512 << 20,
            tasks: 512,
            state: DesiredState::Running,
            address: Some(Ipv4Addr::new(172, 16, 0, 2)),
            handoff: None,
            task: None,
        };
        let mut view = NetView::default();
        view.specs.push(("h1".into(), spec.clone()));
        view.users.insert(
            "alice".into(),
            UserNet {
                vni: 7,
                blocks: vec!["172.16.0.0/29".parse().unwrap()],
            },
        );
        let ctx = FirewallContext {
            cluster_net: "172.16.0.0/16".parse().unwrap(),
            device: "up0".into(),
            protected: [Ipv4Addr::new(10, 77, 0, 2)].into(),
            peers: [Ipv4Addr::new(10, 77, 0, 3)].into(),
            // Every kind of rule, so the kernel is shown each one's syntax.
            egress: EgressPolicy {
                deny: vec!["198.51.100.0/24".parse().unwrap()],
                allow: vec![
                    "10.77.0.50:2049".parse().unwrap(),
                    "10.77.1.0/24:8000-8100".parse().unwrap(),
                ],
                host_networks: ["10.77.0.0/24".parse().unwrap()].into(),
                resolvers: [Ipv4Addr::new(10, 77, 0, 53)].into(),
            },
            user_allow: [("alice".to_owned(), vec!["10.77.0.60".parse().unwrap()])].into(),
        };
        let plan = network::plan(&view, "h1");
        for _ in 0..2 {
            Nft.apply(&network::ruleset(&plan, &ctx)).unwrap();
        }
        // One more vnode, added element-wise.
        spec.id = "alice-c1-1".into();
        spec.address = Some(Ipv4Addr::new(172, 16, 0, 3));
        view.specs.push(("h1".into(), spec));
        let plan = network::plan(&view, "h1");
        let user = &plan.users["alice"];
        Nft.apply(&network::ruleset_additions(user, &user.vnodes[1]))
            .unwrap();
        let ports = run(&["list", "set", "bridge", "docklet", "ports"]);
        assert!(
            ports.contains("172.16.0.2") && ports.contains("172.16.0.3"),
            "{ports}"
        );
        let tables = run(&["list", "tables"]);
        assert_eq!(
            tables,
            "table inet bystander\ntable bridge docklet\ntable inet docklet\ntable ip docklet\n"
        );
        Nft.remove().unwrap();
        Nft.remove().unwrap();
        assert_eq!(run(&["list", "tables"]), "table inet bystander\n");
    });
}
