//! This host's part of the users' networks: makes the kernel match
//! [`plan`](crate::model::network::plan) for the cluster's current view, and wires each vnode
//! in as it boots.
//!
//! Per user with a vnode meant to run here: bridge `dkb<vni>` (the gateway's address and MAC,
//! routes to the user's blocks), VXLAN `dkx<vni>` in it, flooding to the other hosts that run
//! the user's vnodes. Per vnode: veth `dkv<hash>` in the bridge, its peer `eth0` in the
//! vnode's netns with the vnode's address and a default route to the gateway. The nftables
//! ruleset and every vnode's `/etc/hosts` follow the same view. Everything is idempotent: a
//! restarted worker (or a rebooted host) runs the same steps and ends in the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::config::Config;
use crate::model::egress::{self, EgressPolicy};
use crate::model::network::{
    self, FirewallContext, HostPlan, NetView, UserNet, UserPlan, VXLAN_OVERHEAD, VXLAN_PORT,
};
use crate::model::vnode::{self, DesiredState, VNodeSpec};
use crate::store::{EtcdStore, StoreError};
use crate::sys::firewall::Firewall;
use crate::sys::netlink::{Link, Netlink, Rtnetlink, set_sysctl};
use crate::worker::paths::{VNodePaths, replace_file};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The configuration cannot work on this host: the worker refuses to start.
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let context = context.into();
    move |source| NetworkError::Io { context, source }
}

/// The name of a vnode's interface inside its netns.
pub const VNODE_IFACE: &str = "eth0";

struct NetState {
    view: NetView,
    /// The ruleset last applied (re-applied only when it changes, and at start).
    ruleset: Option<String>,
    /// The `/etc/hosts` last written per vnode.
    hosts_files: HashMap<String, String>,
    /// Vnodes being wired right now (id → VNI): a pass leaves their devices alone, even if it
    /// planned from a view read before their spec existed.
    attaching: HashMap<String, u32>,
}

pub struct Network {
    config: Config,
    host: String,
    device: String,
    device_index: u32,
    /// This host's VXLAN endpoint: the first IPv4 address of `device`.
    vtep: Ipv4Addr,
    mtu: u32,
    netlink: Arc<dyn Rtnetlink>,
    firewall: Arc<dyn Firewall>,
    /// Addresses of etcd and the portal, by whatever name the configuration gives them.
    control_addresses: BTreeSet<Ipv4Addr>,
    /// This host's DNS resolvers, which vnodes may ask.
    resolvers: BTreeSet<Ipv4Addr>,
    state: tokio::sync::Mutex<NetState>,
}

/// The device that carries the user networks, as checked at start.
struct HostDevice {
    name: String,
    index: u32,
    /// This host's VXLAN endpoint: the device's first IPv4 address.
    vtep: Ipv4Addr,
    /// The MTU left inside the VXLAN.
    mtu: u32,
}

/// Picks the device (`auto`: the default route's) and refuses what cannot work: no such
/// device or no address on it, a `cluster_net` overlapping this host's networks, a VNI of
/// Docklet's range used by another VXLAN, an MTU too small for VXLAN.
fn host_device(
    config: &Config,
    links: &[Link],
    routes: &[(Ipv4Net, Option<u32>)],
    addresses: &[(Ipv4Net, Ipv4Addr, u32)],
) -> Result<HostDevice, NetworkError> {
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    };
    let device = if config.network_device == "auto" {
        routes
            .iter()
            .find(|(net, oif)| net.prefix_len() == 0 && oif.is_some())
            .and_then(|(_, oif)| *oif)
            .map(name_of)
            .ok_or_else(|| {
                NetworkError::Config(
                    "network_device = \"auto\" but this host has no default route; set network_device to the device that reaches the other hosts".into(),
                )
            })?
    } else {
        config.network_device.clone()
    };
    let Some(link) = links.iter().find(|l| l.name == device) else {
        let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        names.sort();
        return Err(NetworkError::Config(format!(
            "network_device {device:?} does not exist on this host (devices: {})",
            names.join(", ")
        )));
    };
    let vtep = addresses
        .iter()
        .find(|(_, _, index)| *index == link.index)
        .map(|(_, a, _)| *a)
        .ok_or_else(|| {
            NetworkError::Config(format!(
                "network_device {device} has no IPv4 address to carry VXLAN"
            ))
        })?;
    let host_nets: Vec<(Ipv4Net, String)> = addresses
        .iter()
        .filter(|(net, _, _)| !net.addr().is_loopback())
        .map(|(net, _, i)| (*net, name_of(*i)))
        .collect();
    let host_routes: Vec<(Ipv4Net, String)> = routes
        .iter()
        .filter(|(net, _)| !net.addr().is_loopback())
        .map(|(net, oif)| (*net, oif.map(name_of).unwrap_or_default()))
        .collect();
    network::check_cluster_net(config.cluster_net, &host_nets, &host_routes)
        .map_err(NetworkError::Config)?;
    let vnis = config.vni_base..config.vni_base + vnode::UID_SLOTS;
    for other in links {
        if let (Some(vni), Some(VXLAN_PORT)) = (other.vxlan_id, other.vxlan_port)
            && vnis.contains(&vni)
            && network::vni_of_device(&other.name) != Some(vni)
        {
            return Err(NetworkError::Config(format!(
                "VXLAN device {} already uses VNI {vni} on UDP port {VXLAN_PORT}, inside Docklet's range {}..{}; set vni_base to a range no other VXLAN uses",
                other.name, vnis.start, vnis.end
            )));
        }
    }
    if link.mtu < 576 + VXLAN_OVERHEAD {
        return Err(NetworkError::Config(format!(
            "network_device {device} has MTU {}, too small to carry VXLAN",
            link.mtu
        )));
    }
    Ok(HostDevice {
        name: device,
        index: link.index,
        vtep,
        mtu: link.mtu - VXLAN_OVERHEAD,
    })
}

/// What a vnode's start asks of the network: the seam between the reconciler and
/// [`Network`] (rtnetlink and nftables), so the reconciler's tests run without either.
#[async_trait::async_trait]
pub trait AttachVnode: Send + Sync {
    /// Wires the vnode into its user's network (see [`Network::attach`]); how long it took.
    async fn attach_vnode(
        &self,
        inputs: &AttachInputs,
        spec: &VNodeSpec,
        netns: &Path,
        etc_dir: &Path,
    ) -> Result<Duration, NetworkError>;
}

#[async_trait::async_trait]
impl AttachVnode for Network {
    async fn attach_vnode(
        &self,
        inputs: &AttachInputs,
        spec: &VNodeSpec,
        netns: &Path,
        etc_dir: &Path,
    ) -> Result<Duration, NetworkError> {
        self.attach(inputs, spec, netns, etc_dir).await
    }
}

/// What attaching a vnode needs from etcd, read with the rest of a start's plan before
/// anything on the host changes.
#[derive(Debug, Clone, Default)]
pub struct AttachInputs {
    /// The user's network (`None`: the user has none, and the attach is refused).
    pub user_net: Option<UserNet>,
    /// The user's assigned addresses: address → vnode id (for the hosts file).
    pub claims: BTreeMap<String, String>,
}

impl AttachInputs {
    pub async fn read(store: &EtcdStore, user: &str) -> Result<AttachInputs, StoreError> {
        Ok(AttachInputs {
            user_net: store.user_net(user).await?,
            claims: store.address_claims(user).await?,
        })
    }
}

impl Network {
    /// Checks that the configuration can work here and prepares the host. Refuses (with the
    /// reason) a missing network device, a `cluster_net` overlapping a network of this host
    /// and a VNI range used by a VXLAN that is not Docklet's.
    pub async fn start(
        config: &Config,
        host: &str,
        firewall: Arc<dyn Firewall>,
    ) -> Result<Network, NetworkError> {
        let netlink = Netlink::connect().map_err(io_err("opening rtnetlink"))?;
        let links = netlink.links().await.map_err(io_err("listing links"))?;
        let routes = netlink.routes().await.map_err(io_err("listing routes"))?;
        let addresses = netlink
            .addresses()
            .await
            .map_err(io_err("listing addresses"))?;
        let device = host_device(config, &links, &routes, &addresses)?;
        set_sysctl("net/ipv4/ip_forward", "1").map_err(io_err("enabling IPv4 forwarding"))?;
        Ok(Network::over(config, host, device, Arc::new(netlink), firewall).await)
    }

    /// The networks of this host over `device`, made through `netlink` and `firewall`.
    async fn over(
        config: &Config,
        host: &str,
        device: HostDevice,
        netlink: Arc<dyn Rtnetlink>,
        firewall: Arc<dyn Firewall>,
    ) -> Network {
        let HostDevice {
            name: device,
            index,
            vtep,
            mtu,
        } = device;
        let control_addresses = control_addresses(config).await;
        let resolvers = host_resolvers();
        if !resolvers.is_empty() {
            info!(resolvers = ?resolvers, "vnodes may ask this host's DNS resolvers");
        }
        info!(device, %vtep, mtu, "user networks over {device} ({vtep})");
        Network {
            config: config.clone(),
            host: host.to_owned(),
            device,
            device_index: index,
            vtep,
            mtu,
            netlink,
            firewall,
            control_addresses,
            resolvers,
            state: tokio::sync::Mutex::new(NetState {
                view: NetView::default(),
                ruleset: None,
                hosts_files: HashMap::new(),
                attaching: HashMap::new(),
            }),
        }
    }

    pub fn vtep(&self) -> Ipv4Addr {
        self.vtep
    }

    /// Makes this host match the cluster's current view: devices of users who left go, those
    /// of users who run here are made or repaired, then the firewall and the hosts files.
    pub async fn sync(&self, store: &EtcdStore) -> Result<(), NetworkError> {
        let mut state = self.state.lock().await;
        state.view = store.net_view().await?;
        let plan = network::plan(&state.view, &self.host);
        let mut errors = Vec::new();
        if let Err(e) = self.remove_stale(&plan, &state.attaching).await {
            errors.push(e);
        }
        for user in plan.users.values() {
            if let Err(e) = self.ensure_user(user).await {
                errors.push(e);
                continue;
            }
            for vnode in &user.vnodes {
                if state.attaching.contains_key(&vnode.id) {
                    continue;
                }
                if let Err(e) = self.repair_vnode(user, vnode).await {
                    errors.push(e);
                }
            }
        }
        self.write_hosts_files(&mut state);
        // Replacing the tables takes tens of milliseconds (RCU grace periods): without the
        // lock, so vnodes starting meanwhile are not held up. Their element additions and this
        // replacement are each one nftables transaction; the replacement holds every vnode
        // of the view it was planned from.
        let ruleset = self.ruleset_for(&state, &plan);
        if state.ruleset.as_ref() != Some(&ruleset) {
            drop(state);
            match self.run_nft(ruleset.clone()).await {
                Ok(()) => self.state.lock().await.ruleset = Some(ruleset),
                Err(e) => errors.push(io_err("applying the firewall")(e)),
            }
        }
        // The first error is returned (and logged by the caller); the rest are logged here.
        let mut errors = errors.into_iter();
        let first = errors.next();
        for e in errors {
            warn!("user networks: {e}");
        }
        first.map_or(Ok(()), Err)
    }

    /// Wires a vnode into its user's network before it boots: the user's devices, its veth
    /// and address, the firewall, its hosts file. Returns how long it took. Only the shared
    /// part (view, the user's devices) holds the lock: vnodes starting together are wired in
    /// parallel.
    pub async fn attach(
        &self,
        inputs: &AttachInputs,
        spec: &VNodeSpec,
        netns: &Path,
        etc_dir: &Path,
    ) -> Result<Duration, NetworkError> {
        let started = Instant::now();
        let (user, vnode, hosts_text, firewall_done) = self.attach_shared(inputs, spec).await?;
        let result = async {
            self.wire_vnode(&user, &vnode, netns).await?;
            if !firewall_done {
                self.run_nft(network::ruleset_additions(&user, &vnode))
                    .await
                    .map_err(io_err("adding the vnode to the firewall"))?;
            }
            replace_file(&etc_dir.join("hosts"), hosts_text.as_bytes(), 0o644)
                .map_err(io_err(format!("writing the hosts file of {}", spec.id)))
        }
        .await;
        let mut state = self.state.lock().await;
        state.attaching.remove(&spec.id);
        result?;
        state.hosts_files.insert(spec.id.clone(), hosts_text);
        Ok(started.elapsed())
    }

    /// The part of [`attach`](Self::attach) that needs the lock: the view, the plan, the
    /// user's devices, and the whole ruleset if none was applied yet.
    async fn attach_shared(
        &self,
        inputs: &AttachInputs,
        spec: &VNodeSpec,
    ) -> Result<(UserPlan, network::VNodeNet, String, bool), NetworkError> {
        let mut state = self.state.lock().await;
        let known = spec.address.is_some_and(|a| {
            state
                .view
                .users
                .get(&spec.user)
                .is_some_and(|net| net.contains(a))
        });
        // A user new on this host, or a network that grew: the start read its network (the
        // next pass brings the rest of the view).
        if !known && let Some(net) = &inputs.user_net {
            state.view.users.insert(spec.user.clone(), net.clone());
        }
        // The spec read from etcd may lag the one being started: plan with the latter.
        state.view.specs.retain(|(_, s)| s.id != spec.id);
        state.view.specs.push((self.host.clone(), spec.clone()));
        let plan = network::plan(&state.view, &self.host);
        let user = plan.users.get(&spec.user).ok_or_else(|| {
            NetworkError::Config(format!(
                "vnode {} has no address on a network of user {} (created before networks?)",
                spec.id, spec.user
            ))
        })?;
        let vnode = user
            .vnodes
            .iter()
            .find(|v| v.id == spec.id)
            .expect("the plan holds the vnode it was made for");
        self.ensure_user(user).await?;
        let firewall_done = state.ruleset.is_none();
        if firewall_done {
            self.apply_firewall(&mut state, &plan).await?;
        }
        let claimed =
            network::claimed_nodes(&state.view, &spec.user, &spec.cluster, &inputs.claims);
        let text = network::hosts_file(&state.view, &spec.user, &spec.cluster, &claimed);
        state.attaching.insert(spec.id.clone(), user.vni);
        Ok((user.clone(), vnode.clone(), text, firewall_done))
    }

    async fn ensure_user(&self, user: &UserPlan) -> Result<(), NetworkError> {
        let nl = self.netlink.as_ref();
        let bridge_name = user.bridge();
        let context = |what: &str| format!("{what} of user {}", user.user);
        let bridge = nl
            .ensure_bridge(&bridge_name, network::mac_for(user.gateway), self.mtu)
            .await
            .map_err(io_err(context("bridge")))?;
        // Answer ARP only for the bridge's own address, and no IPv6 on users' networks.
        for (key, value) in [
            (format!("net/ipv4/conf/{bridge_name}/arp_ignore"), "1"),
            (format!("net/ipv6/conf/{bridge_name}/disable_ipv6"), "1"),
        ] {
            if let Err(e) = set_sysctl(&key, value) {
                warn!("{e}");
            }
        }
        nl.ensure_address(bridge.index, user.gateway, 32)
            .await
            .map_err(io_err(context("gateway address")))?;
        for block in &user.blocks {
            nl.ensure_route(*block, bridge.index, None)
                .await
                .map_err(io_err(context("route")))?;
        }
        let vxlan = nl
            .ensure_vxlan(
                &user.vxlan(),
                user.vni,
                self.vtep,
                self.device_index,
                VXLAN_PORT,
                self.mtu,
                bridge.index,
            )
            .await
            .map_err(io_err(context("VXLAN")))?;
        let present: BTreeSet<Ipv4Addr> = nl
            .flood_remotes(vxlan.index)
            .await
            .map_err(io_err(context("VXLAN peers")))?
            .into_iter()
            .collect();
        for remote in user.remotes.difference(&present) {
            nl.add_flood_remote(vxlan.index, *remote)
                .await
                .map_err(io_err(context("VXLAN peer")))?;
        }
        for gone in present.difference(&user.remotes) {
            nl.delete_flood_remote(vxlan.index, *gone)
                .await
                .map_err(io_err(context("VXLAN peer")))?;
        }
        Ok(())
    }

    /// The veth of a vnode and its configuration inside the netns.
    async fn wire_vnode(
        &self,
        user: &UserPlan,
        vnode: &network::VNodeNet,
        netns: &Path,
    ) -> Result<(), NetworkError> {
        let context = format!("network of vnode {}", vnode.id);
        let bridge = self
            .netlink
            .link(&user.bridge())
            .await
            .map_err(io_err(&context))?
            .ok_or_else(|| NetworkError::Config(format!("{context}: no bridge")))?;
        self.netlink
            .create_veth(
                &vnode.veth,
                bridge.index,
                self.mtu,
                netns,
                VNODE_IFACE,
                vnode.mac,
            )
            .await
            .map_err(io_err(&context))?;
        let _ = set_sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", vnode.veth), "1");
        let inside = self.netlink.inside(netns).map_err(io_err(&context))?;
        let eth0 = inside.set_up(VNODE_IFACE).await.map_err(io_err(&context))?;
        inside
            .ensure_address(
                eth0.index,
                vnode.address,
                self.config.cluster_net.prefix_len(),
            )
            .await
            .map_err(io_err(&context))?;
        inside
            .ensure_route(
                "0.0.0.0/0".parse().expect("valid"),
                eth0.index,
                Some(user.gateway),
            )
            .await
            .map_err(io_err(&context))?;
        Ok(())
    }

    /// A running vnode whose veth left its bridge (the bridge was remade) goes back in, so
    /// its connections live on; one whose veth is gone is wired again; one without a netns
    /// is not running here and is left alone.
    async fn repair_vnode(
        &self,
        user: &UserPlan,
        vnode: &network::VNodeNet,
    ) -> Result<(), NetworkError> {
        let netns = VNodePaths::new(&self.config, &vnode.id).netns;
        if !crate::sys::mounts::is_mount_point(&netns) {
            return Ok(());
        }
        let bridge = self.netlink.link(&user.bridge()).await.ok().flatten();
        let veth = self.netlink.link(&vnode.veth).await.ok().flatten();
        match (bridge, veth) {
            (Some(bridge), Some(veth)) if veth.controller == Some(bridge.index) && veth.up => {
                Ok(())
            }
            (Some(bridge), Some(veth)) => {
                info!(vnode = %vnode.id, "putting {} back into {}", veth.name, bridge.name);
                self.netlink
                    .enslave(&veth, bridge.index)
                    .await
                    .map_err(io_err(format!("network of vnode {}", vnode.id)))
            }
            _ => {
                warn!(vnode = %vnode.id, "vnode's network was incomplete; wiring it again");
                self.wire_vnode(user, vnode, &netns).await
            }
        }
    }

    /// Removes devices of users with no vnode meant to run here, and veths of vnodes gone.
    async fn remove_stale(
        &self,
        plan: &HostPlan,
        attaching: &HashMap<String, u32>,
    ) -> Result<(), NetworkError> {
        let mut vnis: BTreeSet<u32> = plan.users.values().map(|u| u.vni).collect();
        vnis.extend(attaching.values());
        let attaching_veths: Vec<String> =
            attaching.keys().map(|id| network::veth_name(id)).collect();
        let veths: BTreeSet<&str> = plan
            .users
            .values()
            .flat_map(|u| u.vnodes.iter().map(|v| v.veth.as_str()))
            .chain(attaching_veths.iter().map(String::as_str))
            .collect();
        let links = self
            .netlink
            .links()
            .await
            .map_err(io_err("listing links"))?;
        // VXLANs before their bridges, so no frame is flooded into a half-removed network.
        let mut stale: Vec<&str> = Vec::new();
        for link in &links {
            let ours_stale = match network::vni_of_device(&link.name) {
                Some(vni) => !vnis.contains(&vni),
                None => link.name.starts_with("dkv") && !veths.contains(link.name.as_str()),
            };
            if ours_stale {
                stale.push(&link.name);
            }
        }
        stale.sort_by_key(|n| !n.starts_with("dkx"));
        for name in stale {
            info!("removing {name}: no vnode of its network runs here any more");
            self.netlink
                .delete(name)
                .await
                .map_err(io_err(format!("removing {name}")))?;
        }
        Ok(())
    }

    async fn apply_firewall(
        &self,
        state: &mut NetState,
        plan: &HostPlan,
    ) -> Result<(), NetworkError> {
        let ruleset = self.ruleset_for(state, plan);
        if state.ruleset.as_ref() == Some(&ruleset) {
            return Ok(());
        }
        self.run_nft(ruleset.clone())
            .await
            .map_err(io_err("applying the firewall"))?;
        state.ruleset = Some(ruleset);
        Ok(())
    }

    fn ruleset_for(&self, state: &NetState, plan: &HostPlan) -> String {
        let mut protected = self.control_addresses.clone();
        protected.extend(state.view.vteps.values());
        protected.extend(&state.view.host_addresses);
        protected.insert(self.vtep);
        let peers = state
            .view
            .vteps
            .values()
            .copied()
            .filter(|a| *a != self.vtep)
            .collect();
        let ctx = FirewallContext {
            cluster_net: self.config.cluster_net,
            device: self.device.clone(),
            protected,
            peers,
            egress: EgressPolicy {
                deny: self.config.egress_deny.clone(),
                allow: self.config.egress_allow.clone(),
                host_networks: state.view.host_networks.clone(),
                resolvers: self.resolvers.clone(),
            },
            user_allow: state.view.user_allow(plan),
        };
        network::ruleset(plan, &ctx)
    }

    async fn run_nft(&self, text: String) -> io::Result<()> {
        let firewall = self.firewall.clone();
        tokio::task::spawn_blocking(move || firewall.apply(&text))
            .await
            .map_err(io::Error::other)?
    }

    fn write_hosts_files(&self, state: &mut NetState) {
        let local: Vec<VNodeSpec> = state
            .view
            .specs
            .iter()
            .filter(|(h, s)| h == &self.host && s.state != DesiredState::Deleted)
            .map(|(_, s)| s.clone())
            .collect();
        state
            .hosts_files
            .retain(|id, _| local.iter().any(|s| &s.id == id));
        for spec in local {
            let text = network::hosts_file(&state.view, &spec.user, &spec.cluster, &[]);
            if state.hosts_files.get(&spec.id) == Some(&text) {
                continue;
            }
            let etc = VNodePaths::new(&self.config, &spec.id).etc;
            if !etc.is_dir() {
                continue;
            }
            match replace_file(&etc.join("hosts"), text.as_bytes(), 0o644) {
                Ok(()) => {
                    state.hosts_files.insert(spec.id.clone(), text);
                }
                Err(e) => warn!(vnode = %spec.id, "cannot write its hosts file: {e}"),
            }
        }
    }
}

/// The addresses of etcd's endpoints and of the portal, resolved once at start: vnodes reach
/// none of them, whether the configuration names them by address or by DNS name.
async fn control_addresses(config: &Config) -> BTreeSet<Ipv4Addr> {
    let mut names: Vec<String> = config
        .etcd
        .endpoints
        .iter()
        .filter_map(|e| {
            let rest = e.split_once("://").map_or(e.as_str(), |(_, rest)| rest);
            Some(rest.split('/').next()?.to_owned())
        })
        .collect();
    if config.portal_url.is_some() {
        names.push(format!("{}:0", config.portal_host_or("")));
    }
    let mut addresses = BTreeSet::new();
    for name in names {
        let lookup = name.clone();
        match tokio::net::lookup_host(lookup).await {
            Ok(found) => addresses.extend(found.filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })),
            Err(e) => warn!("cannot resolve {name} to fence it off vnodes: {e}"),
        }
    }
    addresses
}

/// The host's upstream resolvers: resolv.conf's, or systemd-resolved's when resolv.conf names
/// only its local stub.
fn host_resolvers() -> BTreeSet<Ipv4Addr> {
    ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| egress::nameservers(&text))
        .find(|found| !found.is_empty())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests;
