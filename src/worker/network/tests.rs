//! The device checks, and a user's network over recording fakes of rtnetlink and nftables.

use super::*;

fn eth0() -> Vec<Link> {
    vec![
        Link {
            index: 1,
            name: "lo".into(),
            mtu: 65536,
            ..Link::default()
        },
        Link {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            ..Link::default()
        },
    ]
}

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

#[test]
fn the_default_routes_device_carries_the_user_networks() {
    let routes = [(net("0.0.0.0/0"), Some(2)), (net("10.0.0.0/24"), Some(2))];
    let addresses = [
        (net("127.0.0.0/8"), "127.0.0.1".parse().unwrap(), 1),
        (net("10.0.0.0/24"), "10.0.0.5".parse().unwrap(), 2),
    ];
    let config = Config::default();
    let device = host_device(&config, &eth0(), &routes, &addresses).unwrap();
    assert_eq!(device.name, "eth0");
    assert_eq!(device.index, 2);
    assert_eq!(device.vtep, Ipv4Addr::new(10, 0, 0, 5));
    assert_eq!(device.mtu, 1500 - VXLAN_OVERHEAD);
}

#[test]
fn a_host_that_cannot_carry_them_is_refused_with_the_reason() {
    let addresses = [(net("10.0.0.0/24"), "10.0.0.5".parse().unwrap(), 2)];
    let refused =
        |config: &Config, links: &[Link], routes: &[(Ipv4Net, Option<u32>)]| match host_device(
            config, links, routes, &addresses,
        ) {
            Err(NetworkError::Config(why)) => why,
            other => panic!("not refused: {:?}", other.map(|d| d.name)),
        };
    let auto = Config::default();
    assert!(refused(&auto, &eth0(), &[]).contains("no default route"));
    let named = Config {
        network_device: "eth9".into(),
        ..Config::default()
    };
    let why = refused(&named, &eth0(), &[]);
    assert!(
        why.contains("\"eth9\" does not exist") && why.contains("eth0, lo"),
        "{why}"
    );
    let routes = [(net("0.0.0.0/0"), Some(2))];
    let mut small = eth0();
    small[1].mtu = 600;
    assert!(refused(&auto, &small, &routes).contains("too small"));
    let mut clash = eth0();
    clash.push(Link {
        index: 3,
        name: "vx-other".into(),
        vxlan_id: Some(auto.vni_base + 1),
        vxlan_port: Some(VXLAN_PORT),
        ..Link::default()
    });
    assert!(refused(&auto, &clash, &routes).contains("already uses VNI"));
}

mod over_fakes {
    //! A user's network made, grown and taken down through recording fakes of
    //! rtnetlink and nftables, over an etcd in this process.

    use super::*;
    use crate::store::memory_etcd::TestSite;
    use crate::store::network::AddressPlan;
    use crate::sys::firewall::RecordingFirewall;
    use crate::sys::netlink::RecordingNetlink;

    const GIB: u64 = 1 << 30;

    fn spec(id: &str, index: u32) -> VNodeSpec {
        VNodeSpec {
            id: id.into(),
            user: "alice".into(),
            cluster: "c1".into(),
            index,
            image: "base".into(),
            cpu_millis: 1000,
            memory_bytes: GIB,
            disk_bytes: 4 * GIB,
            tasks: 512,
            state: DesiredState::Running,
            address: None,
            handoff: None,
            task: None,
        }
    }

    #[tokio::test]
    async fn a_users_network_is_made_wired_to_peers_and_taken_down() {
        let TestSite {
            etcd: _etcd,
            store,
            config,
            dir,
        } = TestSite::new().await;
        let plan = AddressPlan {
            cluster_net: config.cluster_net,
            vni_base: config.vni_base,
        };
        let here = store
            .create_vnode("h1", &spec("alice-c1-0", 0), &plan)
            .await
            .unwrap();
        let there = store
            .create_vnode("h2", &spec("alice-c1-1", 1), &plan)
            .await
            .unwrap();
        store
            .put_vtep("h1", Ipv4Addr::new(10, 0, 0, 5))
            .await
            .unwrap();
        store
            .put_vtep("h2", Ipv4Addr::new(10, 0, 0, 6))
            .await
            .unwrap();

        let netlink = RecordingNetlink::default();
        netlink.kernel.lock().unwrap().add_host_link(Link {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            up: true,
            ..Link::default()
        });
        let firewall = Arc::new(RecordingFirewall::default());
        let device = HostDevice {
            name: "eth0".into(),
            index: 2,
            vtep: Ipv4Addr::new(10, 0, 0, 5),
            mtu: 1450,
        };
        let network = Network::over(
            &config,
            "h1",
            device,
            Arc::new(netlink.clone()),
            firewall.clone(),
        )
        .await;

        let netns = dir.path().join("netns-alice-c1-0");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let inputs = AttachInputs::read(&store, "alice").await.unwrap();
        network.attach(&inputs, &here, &netns, &etc).await.unwrap();
        // A start reads the user's network alone; the next pass brings the peers.
        assert!(!netlink.calls().iter().any(|c| c.starts_with("peer")));
        network.sync(&store).await.unwrap();
        let net = store.user_net("alice").await.unwrap().unwrap();
        let (bridge, vxlan) = (network::bridge_name(net.vni), network::vxlan_name(net.vni));
        let gateway = net.gateway().unwrap();
        let address = here.address.unwrap();
        let veth = network::veth_name("alice-c1-0");
        let inside = format!("[{}]", netns.display());
        let calls = netlink.calls();
        let expected = [
            format!("bridge {bridge}"),
            format!("vxlan {vxlan} {}", net.vni),
            "peer+ 10.0.0.6".to_owned(),
            format!("veth {veth} -> {}", netns.display()),
            format!("{inside} up {VNODE_IFACE}"),
            format!("{inside} route 0.0.0.0/0 via {gateway}"),
        ];
        for call in &expected {
            assert!(calls.contains(call), "{call} not in {calls:#?}");
        }
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with(&format!("{inside} address"))
                    && c.contains(&address.to_string())),
            "{calls:#?}"
        );
        let position = |call: &str| calls.iter().position(|c| c == call).unwrap();
        assert!(
            position(&expected[0]) < position(&expected[3]),
            "the bridge comes first"
        );
        // The whole ruleset, naming the vnode's port; the hosts file names the node.
        let applied = firewall.applied.lock().unwrap().clone();
        assert!(applied[0].contains(&veth) && applied[0].contains(&address.to_string()));
        let hosts = std::fs::read_to_string(etc.join("hosts")).unwrap();
        assert!(
            hosts.contains("host-0") && hosts.contains(&address.to_string()),
            "{hosts}"
        );

        // The node on h2 goes: its host is no peer any more.
        store.remove_vnode("h2", &there).await.unwrap();
        network.sync(&store).await.unwrap();
        assert_eq!(netlink.calls().last().unwrap(), "peer- 10.0.0.6");

        // The last node here goes: its devices go, the VXLAN before the bridge.
        store.remove_vnode("h1", &here).await.unwrap();
        network.sync(&store).await.unwrap();
        let calls = netlink.calls();
        let deleted: Vec<&str> = calls
            .iter()
            .filter_map(|c| c.strip_prefix("delete "))
            .collect();
        assert_eq!(deleted.len(), 3, "{calls:#?}");
        assert_eq!(deleted[0], vxlan);
        assert!(deleted.contains(&bridge.as_str()) && deleted.contains(&veth.as_str()));
        let links = netlink.links().await.unwrap();
        assert_eq!(links.len(), 1, "only eth0 is left: {links:?}");
    }
}
