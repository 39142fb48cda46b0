//! [`RecordingNetlink`]: rtnetlink in memory, for the tests of the worker's networks.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::{Link, Rtnetlink};

/// Rtnetlink for tests: the devices, addresses, routes and VXLAN peers of each namespace in
/// memory (the host's is `""`), and every change in order (`bridge NAME`, `vxlan NAME VNI`,
/// `veth NAME -> NETNS`, `address INDEX A/P`, `route DEST via GW`, `peer+ A`, `peer- A`,
/// `up NAME`, `enslave NAME`, `delete NAME`; inside a namespace prefixed with `[NETNS] `).
#[derive(Clone, Default)]
pub struct RecordingNetlink {
    namespace: String,
    pub kernel: std::sync::Arc<std::sync::Mutex<FakeKernel>>,
}

/// What [`RecordingNetlink`] remembers.
#[derive(Default)]
pub struct FakeKernel {
    pub calls: Vec<String>,
    /// Devices by namespace.
    pub links: std::collections::BTreeMap<String, Vec<Link>>,
    pub addresses: Vec<(String, Ipv4Net, Ipv4Addr, u32)>,
    pub routes: Vec<(String, Ipv4Net, Option<u32>, Option<Ipv4Addr>)>,
    pub remotes: std::collections::BTreeMap<u32, std::collections::BTreeSet<Ipv4Addr>>,
    next_index: u32,
}

impl FakeKernel {
    /// A device of the host, as the test's machine would have it.
    pub fn add_host_link(&mut self, link: Link) {
        self.next_index = self.next_index.max(link.index);
        self.links.entry(String::new()).or_default().push(link);
    }

    fn add(&mut self, namespace: &str, mut link: Link) -> Link {
        self.next_index = self.next_index.max(100) + 1;
        link.index = self.next_index;
        self.links
            .entry(namespace.to_owned())
            .or_default()
            .push(link.clone());
        link
    }
}

impl RecordingNetlink {
    fn record(&self, kernel: &mut FakeKernel, call: String) {
        let call = if self.namespace.is_empty() {
            call
        } else {
            format!("[{}] {call}", self.namespace)
        };
        kernel.calls.push(call);
    }

    fn find(&self, kernel: &FakeKernel, name: &str) -> Option<Link> {
        kernel
            .links
            .get(&self.namespace)?
            .iter()
            .find(|l| l.name == name)
            .cloned()
    }

    fn no_device(name: &str) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, format!("no device {name}"))
    }

    /// The changes so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.kernel.lock().unwrap().calls.clone()
    }
}

#[async_trait::async_trait]
impl Rtnetlink for RecordingNetlink {
    fn inside(&self, netns: &Path) -> io::Result<Box<dyn Rtnetlink>> {
        Ok(Box::new(RecordingNetlink {
            namespace: netns.display().to_string(),
            kernel: self.kernel.clone(),
        }))
    }
    async fn links(&self) -> io::Result<Vec<Link>> {
        let kernel = self.kernel.lock().unwrap();
        Ok(kernel
            .links
            .get(&self.namespace)
            .cloned()
            .unwrap_or_default())
    }
    async fn link(&self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.find(&self.kernel.lock().unwrap(), name))
    }
    async fn ensure_bridge(&self, name: &str, mac: [u8; 6], mtu: u32) -> io::Result<Link> {
        let mut kernel = self.kernel.lock().unwrap();
        if let Some(link) = self.find(&kernel, name) {
            return Ok(link);
        }
        self.record(&mut kernel, format!("bridge {name}"));
        let link = Link {
            name: name.into(),
            kind: Some("bridge".into()),
            mtu,
            up: true,
            mac: mac.to_vec(),
            ..Link::default()
        };
        Ok(kernel.add(&self.namespace, link))
    }
    async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        _: Ipv4Addr,
        _: u32,
        port: u16,
        mtu: u32,
        bridge: u32,
    ) -> io::Result<Link> {
        let mut kernel = self.kernel.lock().unwrap();
        if let Some(link) = self.find(&kernel, name) {
            return Ok(link);
        }
        self.record(&mut kernel, format!("vxlan {name} {vni}"));
        let link = Link {
            name: name.into(),
            kind: Some("vxlan".into()),
            mtu,
            up: true,
            controller: Some(bridge),
            vxlan_id: Some(vni),
            vxlan_port: Some(port),
            ..Link::default()
        };
        Ok(kernel.add(&self.namespace, link))
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
        let mut kernel = self.kernel.lock().unwrap();
        self.record(&mut kernel, format!("veth {name} -> {}", netns.display()));
        let link = Link {
            name: name.into(),
            kind: Some("veth".into()),
            mtu,
            up: true,
            controller: Some(bridge),
            ..Link::default()
        };
        let inside = Link {
            name: peer.into(),
            kind: Some("veth".into()),
            mtu,
            mac: peer_mac.to_vec(),
            ..Link::default()
        };
        kernel.add(&netns.display().to_string(), inside);
        Ok(kernel.add(&self.namespace, link))
    }
    async fn enslave(&self, link: &Link, bridge: u32) -> io::Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        self.record(&mut kernel, format!("enslave {}", link.name));
        let namespace = self.namespace.clone();
        for l in kernel.links.entry(namespace).or_default() {
            if l.name == link.name {
                l.controller = Some(bridge);
                l.up = true;
            }
        }
        Ok(())
    }
    async fn set_up(&self, name: &str) -> io::Result<Link> {
        let mut kernel = self.kernel.lock().unwrap();
        self.record(&mut kernel, format!("up {name}"));
        let namespace = self.namespace.clone();
        let link = kernel
            .links
            .entry(namespace)
            .or_default()
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| Self::no_device(name))?;
        link.up = true;
        Ok(link.clone())
    }
    async fn delete(&self, name: &str) -> io::Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        self.record(&mut kernel, format!("delete {name}"));
        let namespace = self.namespace.clone();
        kernel
            .links
            .entry(namespace)
            .or_default()
            .retain(|l| l.name != name);
        Ok(())
    }
    async fn addresses(&self) -> io::Result<Vec<(Ipv4Net, Ipv4Addr, u32)>> {
        let kernel = self.kernel.lock().unwrap();
        Ok(kernel
            .addresses
            .iter()
            .filter(|(ns, ..)| *ns == self.namespace)
            .map(|(_, net, a, i)| (*net, *a, *i))
            .collect())
    }
    async fn ensure_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        let net = Ipv4Net::new(address, prefix)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
            .trunc();
        let entry = (self.namespace.clone(), net, address, index);
        if !kernel.addresses.contains(&entry) {
            self.record(&mut kernel, format!("address {index} {address}/{prefix}"));
            kernel.addresses.push(entry);
        }
        Ok(())
    }
    async fn routes(&self) -> io::Result<Vec<(Ipv4Net, Option<u32>)>> {
        let kernel = self.kernel.lock().unwrap();
        Ok(kernel
            .routes
            .iter()
            .filter(|(ns, ..)| *ns == self.namespace)
            .map(|(_, net, index, _)| (*net, *index))
            .collect())
    }
    async fn ensure_route(
        &self,
        destination: Ipv4Net,
        index: u32,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        let entry = (self.namespace.clone(), destination, Some(index), gateway);
        if !kernel.routes.contains(&entry) {
            let via = gateway.map_or(format!("dev {index}"), |g| format!("via {g}"));
            self.record(&mut kernel, format!("route {destination} {via}"));
            kernel.routes.push(entry);
        }
        Ok(())
    }
    async fn flood_remotes(&self, vxlan: u32) -> io::Result<Vec<Ipv4Addr>> {
        let kernel = self.kernel.lock().unwrap();
        Ok(kernel
            .remotes
            .get(&vxlan)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default())
    }
    async fn add_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        self.record(&mut kernel, format!("peer+ {remote}"));
        kernel.remotes.entry(vxlan).or_default().insert(remote);
        Ok(())
    }
    async fn delete_flood_remote(&self, vxlan: u32, remote: Ipv4Addr) -> io::Result<()> {
        let mut kernel = self.kernel.lock().unwrap();
        self.record(&mut kernel, format!("peer- {remote}"));
        kernel.remotes.entry(vxlan).or_default().remove(&remote);
        Ok(())
    }
}
