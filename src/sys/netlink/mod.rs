//! Links, addresses, routes and VXLAN forwarding entries through rtnetlink: the data path of
//! users' networks, made without shelling out to `ip`. Every call is idempotent (ensure or
//! remove), so a restarted worker simply runs the same steps again.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteScope, RouteType};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

mod recording;
pub use recording::{FakeKernel, RecordingNetlink};

/// What Docklet needs to know of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub controller: Option<u32>,
    pub mac: Vec<u8>,
    pub vxlan_id: Option<u32>,
    pub vxlan_port: Option<u16>,
}

/// An rtnetlink connection, in the worker's network namespace or in a vnode's.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn nl_err(context: &str, e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = m.code.map_or(0, |c| -c.get());
            let os = io::Error::from_raw_os_error(errno);
            io::Error::new(os.kind(), format!("{context}: {os}"))
        }
        other => io::Error::other(format!("{context}: {other}")),
    }
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| matches!(-c.get(), libc::ENODEV | libc::ENOENT | libc::ESRCH)))
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.is_some_and(|c| -c.get() == libc::EEXIST))
}

impl Netlink {
    /// A connection in the calling thread's network namespace; its task runs on the current
    /// tokio runtime.
    pub fn connect() -> io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// A connection inside the network namespace bound at `netns` (the socket belongs to the
    /// namespace it was opened in, whichever thread uses it later).
    pub fn connect_in(netns: &Path) -> io::Result<Netlink> {
        let file = std::fs::File::open(netns)?;
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle) = std::thread::spawn(move || -> io::Result<_> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("setns: {e}")))?;
            let _entered = runtime.enter();
            let (connection, handle, _) = rtnetlink::new_connection()?;
            Ok((connection, handle))
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))??;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> io::Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| nl_err("listing links", e))?
        {
            out.push(to_link(&msg));
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> io::Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(to_link)),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(nl_err(&format!("reading link {name}"), e)),
        }
    }

    async fn add_link(&self, what: &str, msg: LinkMessage) -> io::Result<()> {
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(nl_err(&format!("creating {what}"), e)),
        }
    }

    /// The bridge `name` with this MAC and MTU, up; made if missing.
    pub async fn ensure_bridge(&self, name: &str, mac: [u8; 6], mtu: u32) -> io::Result<Link> {
        if self.link(name).await?.is_none() {
            let msg = LinkBridge::new(name).address(mac.to_vec()).mtu(mtu).build();
            self.add_link(&format!("bridge {name}"), msg).await?;
        }
        let link = self.require(name).await?;
        if link.mac == mac && link.mtu == mtu && link.up {
            return Ok(link);
        }
        self.set(
            &link,
            LinkUnspec::new_with_index(link.index)
                .address(mac.to_vec())
                .mtu(mtu)
                .up()
                .build(),
        )
        .await?;
        self.require(name).await
    }

    /// The VXLAN `name` (VNI `vni`, from `local` over device `device`), enslaved to bridge
    /// `bridge` and up. A VNI already taken on this port by a device that is not ours is
    /// refused by the kernel with EEXIST: said plainly.
    #[allow(clippy::too_many_arguments)]
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        device: u32,
        port: u16,
        mtu: u32,
        bridge: u32,
    ) -> io::Result<Link> {
        let existing = self.link(name).await?;
        let stale = existing
            .as_ref()
            .is_some_and(|l| l.vxlan_id != Some(vni) || l.vxlan_port != Some(port));
        if stale {
            self.delete(name).await?;
        }
        if existing.is_none() || stale {
            let msg = LinkVxlan::new(name, vni)
                .local(local)
                .dev(device)
                .port(port)
                .learning(true)
                .mtu(mtu)
                .build();
            if let Err(e) = self.handle.link().add(msg).execute().await {
                if is_exists(&e) && self.link(name).await?.is_none() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "VNI {vni} on UDP port {port} is already used by a VXLAN device that is not Docklet's; change vni_base"
                        ),
                    ));
                }
                return Err(nl_err(&format!("creating VXLAN {name}"), e));
            }
        }
        let link = self.require(name).await?;
        if link.controller == Some(bridge) && link.mtu == mtu && link.up {
            return Ok(link);
        }
        self.set(
            &link,
            LinkUnspec::new_with_index(link.index)
                .controller(bridge)
                .mtu(mtu)
                .up()
                .build(),
        )
        .await?;
        self.require(name).await
    }

    /// A veth pair: `name` here, enslaved to `bridge` and up; its peer moved into the
    /// namespace at `netns` as `peer` with `peer_mac`. A pair left from an earlier try is
    /// replaced.
    pub async fn create_veth(
        &self,
        name: &str,
        bridge: u32,
        mtu: u32,
        netns: &Path,
        peer: &str,
        peer_mac: [u8; 6],
    ) -> io::Result<Link> {
        self.delete(name).await?;
        let ns = std::fs::File::open(netns)?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .address(peer_mac.to_vec())
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .mtu(mtu)
            .build();
        self.add_link(&format!("veth {name}"), msg).await?;
        drop(ns);
        let link = self.require(name).await?;
        self.set(
            &link,
            LinkUnspec::new_with_index(link.index)
                .controller(bridge)
                .up()
                .build(),
        )
        .await?;
        self.require(name).await
    }

    async fn set(&self, link: &Link, msg: LinkMessage) -> io::Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_err(&format!("configuring {}", link.name), e))
    }

    /// Puts an existing link (back) into `bridge` and brings it up.
    pub async fn enslave(&self, link: &Link, bridge: u32) -> io::Result<()> {
        self.set(
            link,
            LinkUnspec::new_with_index(link.index)
                .controller(bridge)
                .up()
                .build(),
        )
        .await
    }

    pub async fn set_up(&self, name: &str) -> io::Result<Link> {
        let link = self.require(name).await?;
        if !link.up {
            self.set(&link, LinkUnspec::new_with_index(link.index).up().build())
                .await?;
        }
        Ok(link)
    }

    async fn require(&self, name: &str) -> io::Result<Link> {
        self.link(name).await?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no network device {name}"))
        })
    }

    /// Removes a link; gone already is fine.
    pub async fn delete(&self, name: &str) -> io::Result<()> {
        let Some(link) = self.link(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.index).execute().await {
            Err(e) if !is_gone(&e) => Err(nl_err(&format!("removing {name}"), e)),
            _ => Ok(()),
        }
    }

    /// `(network, link index)` of every IPv4 address.
    pub async fn addresses(&self) -> io::Result<Vec<(Ipv4Net, Ipv4Addr, u32)>> {
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| nl_err("listing addresses", e))?
        {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(a)) = attr
                    && let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len)
                {
                    out.push((net.trunc(), *a, msg.header.index));
                }
            }
        }
        Ok(out)
    }

    /// Adds `address/prefix` to a link unless it has it.
    pub async fn ensure_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        let present = self
            .addresses()
            .await?
            .iter()
            .any(|(net, a, i)| *i == index && *a == address && net.prefix_len() == prefix);
        if present {
            return Ok(());
        }
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(address), prefix)
            .execute()
            .await
        {
            Err(e) if !is_exists(&e) => {
                Err(nl_err(&format!("adding address {address}/{prefix}"), e))
            }
            _ => Ok(()),
        }
    }

    /// `(destination, output link)` of every IPv4 route of the main table.
    pub async fn routes(&self) -> io::Result<Vec<(Ipv4Net, Option<u32>)>> {
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| nl_err("listing routes", e))?
        {
            if msg.header.table != libc::RT_TABLE_MAIN {
                continue;
            }
            let mut dest = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dest = *a,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Ok(net) = Ipv4Net::new(dest, msg.header.destination_prefix_length) {
                out.push((net, oif));
            }
        }
        Ok(out)
    }

    /// A route to `destination` through link `index` (via `gateway`, or on-link), replacing
    /// any route to the same destination.
    pub async fn ensure_route(
        &self,
        destination: Ipv4Net,
        index: u32,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .output_interface(index);
        builder = match gateway {
            Some(gw) => builder.gateway(gw),
            None => builder.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(&format!("adding the route to {destination}"), e))
    }

    pub async fn delete_route(&self, destination: Ipv4Net, index: u32) -> io::Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .output_interface(index)
            .build();
        match self.handle.route().del(msg).execute().await {
            Err(e) if !is_gone(&e) => {
                Err(nl_err(&format!("removing the route to {destination}"), e))
            }
            _ => Ok(()),
        }
    }

    /// The remote endpoints a VXLAN floods to: its all-zero forwarding entries.
    pub async fn flood_remotes(&self, vxlan: u32) -> io::Result<Vec<Ipv4Addr>> {
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| nl_err("listing FDB", e))?
        {
            if msg.header.ifindex != vxlan {
                continue;
            }
            let mut zero = false;
            let mut dst = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(mac) => zero = mac.iter().all(|b| *b == 0),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    // In AF_BRIDGE dumps the destination comes undecoded.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                        dst = <[u8; 4]>::try_from(bytes.as_slice())
                            .ok()
                            .map(Ipv4Addr::from)
                    }
                    _ => {}
                }
            }
            if let (true, Some(a)) = (zero, dst) {
                out.push(a);
            }
        }
        Ok(out)
    }

    fn flood_entry(vxlan: u32, remote: Ipv4Addr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = vxlan;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.kind = RouteType::Unspec;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                remote,
            )));
        msg
    }

    /// Floods broadcast and unknown frames of `vxlan` to `remote` too (`bridge fdb append`).
    pub async fn add_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(Self::flood_entry(
            vxlan, remote,
        )));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut handle = self.handle.clone();
        let mut response = handle
            .request(req)
            .map_err(|e| nl_err("adding an FDB entry", e))?;
        while let Some(message) = futures_util::StreamExt::next(&mut response).await {
            if let NetlinkPayload::Error(err) = message.payload
                && err.code.is_some_and(|c| -c.get() != libc::EEXIST)
            {
                return Err(nl_err(
                    &format!("adding the VXLAN peer {remote}"),
                    rtnetlink::Error::NetlinkError(err),
                ));
            }
        }
        Ok(())
    }

    pub async fn delete_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()> {
        match self
            .handle
            .neighbours()
            .del(Self::flood_entry(vxlan, remote))
            .execute()
            .await
        {
            Err(e) if !is_gone(&e) => Err(nl_err(&format!("removing the VXLAN peer {remote}"), e)),
            _ => Ok(()),
        }
    }
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        ..Link::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::Address(a) => link.mac = a.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        NlLinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                        NlLinkInfo::Data(InfoData::Vxlan(vx)) => {
                            for v in vx {
                                match v {
                                    InfoVxlan::Id(id) => link.vxlan_id = Some(*id),
                                    InfoVxlan::Port(p) => link.vxlan_port = Some(*p),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_name(kind: &InfoKind) -> String {
    kind.to_string()
}

/// What the worker's networks ask of rtnetlink, in one network namespace: the seam between
/// [`crate::worker::network::Network`] and the kernel, with [`Netlink`] for real and
/// [`RecordingNetlink`] for tests.
#[async_trait::async_trait]
pub trait Rtnetlink: Send + Sync {
    /// The same operations inside the network namespace bound at `netns`.
    fn inside(&self, netns: &Path) -> io::Result<Box<dyn Rtnetlink>>;
    async fn links(&self) -> io::Result<Vec<Link>>;
    async fn link(&self, name: &str) -> io::Result<Option<Link>>;
    async fn ensure_bridge(&self, name: &str, mac: [u8; 6], mtu: u32) -> io::Result<Link>;
    #[allow(clippy::too_many_arguments)]
    async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        device: u32,
        port: u16,
        mtu: u32,
        bridge: u32,
    ) -> io::Result<Link>;
    /// A veth on `bridge` whose peer goes into `netns` as `peer`.
    async fn create_veth(
        &self,
        name: &str,
        bridge: u32,
        mtu: u32,
        netns: &Path,
        peer: &str,
        peer_mac: [u8; 6],
    ) -> io::Result<Link>;
    async fn enslave(&self, link: &Link, bridge: u32) -> io::Result<()>;
    async fn set_up(&self, name: &str) -> io::Result<Link>;
    async fn delete(&self, name: &str) -> io::Result<()>;
    async fn addresses(&self) -> io::Result<Vec<(Ipv4Net, Ipv4Addr, u32)>>;
    async fn ensure_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> io::Result<()>;
    async fn routes(&self) -> io::Result<Vec<(Ipv4Net, Option<u32>)>>;
    async fn ensure_route(
        &self,
        destination: Ipv4Net,
        index: u32,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()>;
    async fn flood_remotes(&self, vxlan: u32) -> io::Result<Vec<Ipv4Addr>>;
    async fn add_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()>;
    async fn delete_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()>;
}

#[async_trait::async_trait]
impl Rtnetlink for Netlink {
    fn inside(&self, netns: &Path) -> io::Result<Box<dyn Rtnetlink>> {
        Ok(Box::new(Netlink::connect_in(netns)?))
    }
    async fn links(&self) -> io::Result<Vec<Link>> {
        Netlink::links(self).await
    }
    async fn link(&self, name: &str) -> io::Result<Option<Link>> {
        Netlink::link(self, name).await
    }
    async fn ensure_bridge(&self, name: &str, mac: [u8; 6], mtu: u32) -> io::Result<Link> {
        Netlink::ensure_bridge(self, name, mac, mtu).await
    }
    async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        device: u32,
        port: u16,
        mtu: u32,
        bridge: u32,
    ) -> io::Result<Link> {
        Netlink::ensure_vxlan(self, name, vni, local, device, port, mtu, bridge).await
    }
    async fn create_veth(
        &self,
        name: &str,
        bridge: u32,
        mtu: u32,
        netns: &Path,
        peer: &str,
        peer_mac: [u8; 6],
    ) -> io::Result<Link> {
        Netlink::create_veth(self, name, bridge, mtu, netns, peer, peer_mac).await
    }
    async fn enslave(&self, link: &Link, bridge: u32) -> io::Result<()> {
        Netlink::enslave(self, link, bridge).await
    }
    async fn set_up(&self, name: &str) -> io::Result<Link> {
        Netlink::set_up(self, name).await
    }
    async fn delete(&self, name: &str) -> io::Result<()> {
        Netlink::delete(self, name).await
    }
    async fn addresses(&self) -> io::Result<Vec<(Ipv4Net, Ipv4Addr, u32)>> {
        Netlink::addresses(self).await
    }
    async fn ensure_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
        Netlink::ensure_address(self, index, address, prefix).await
    }
    async fn routes(&self) -> io::Result<Vec<(Ipv4Net, Option<u32>)>> {
        Netlink::routes(self).await
    }
    async fn ensure_route(
        &self,
        destination: Ipv4Net,
        index: u32,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        Netlink::ensure_route(self, destination, index, gateway).await
    }
    async fn flood_remotes(&self, vxlan: u32) -> io::Result<Vec<Ipv4Addr>> {
        Netlink::flood_remotes(self, vxlan).await
    }
    async fn add_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()> {
        Netlink::add_flood_remote(self, vxlan, remote).await
    }
    async fn delete_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()> {
        Netlink::delete_flood_remote(self, vxlan, remote).await
    }
}

/// Writes an interface sysctl (`net/ipv4/conf/<dev>/arp_ignore`, ...) of the calling
/// thread's network namespace.
pub fn set_sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))
}
