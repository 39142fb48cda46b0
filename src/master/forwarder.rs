//! Every master listens on the public ports of the mappings whose vnode runs and forwards
//! each connection, as raw TCP, into the vnode through its worker's agent. What to listen
//! on comes from etcd only (mappings and the vnodes' reported phases, followed by watches),
//! so a listener opens when a node starts, closes when it stops or its mapping goes, and
//! everything comes back by itself after any restart.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::Master;
use crate::model::ports::{self, PortMapping, PortRange};
use crate::store::ports::PortsState;
use crate::sys::streams::{self, Buffered, Stream};

/// A way into a vnode's port.
pub type Inner = Buffered<Box<dyn Stream>>;

/// How long opening the way into a vnode may take before the client's connection is closed.
const DIAL_LIMIT: Duration = Duration::from_secs(10);
/// How often ports that could not be bound (taken by another program) are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// Opens a connection to a mapping's port inside its vnode.
pub trait Dial: Send + Sync + 'static {
    fn dial(&self, mapping: PortMapping) -> BoxFuture<'static, Result<Inner, String>>;
}

/// The master's way in: the worker agent's TCP tunnel into the vnode's network namespace.
struct AgentDial(Arc<Master>);

impl Dial for AgentDial {
    fn dial(&self, mapping: PortMapping) -> BoxFuture<'static, Result<Inner, String>> {
        let master = self.0.clone();
        Box::pin(async move {
            let endpoint = master
                .node_endpoint(&mapping.user, &mapping.cluster, mapping.node)
                .await
                .map_err(|e| e.to_string())?;
            let tunnel = super::agent_client::connect_tcp(&endpoint, mapping.port)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Buffered {
                stream: Box::new(tunnel.stream) as Box<dyn Stream>,
                read: tunnel.read,
            })
        })
    }
}

/// One open public port: its accept loop owns the listener and the connections, so ending
/// the loop closes the port and cuts them.
struct Listener {
    mapping: PortMapping,
    task: Option<JoinHandle<()>>,
}

impl Listener {
    /// Closes the port and waits until it is closed, so that it can be bound again at once.
    async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The public ports this master listens on.
pub struct Forwarder {
    dial: Arc<dyn Dial>,
    open: HashMap<u16, Listener>,
    /// The one address to listen on (`ports_address`), else all of them.
    address: Option<IpAddr>,
}

impl Forwarder {
    pub fn new(dial: Arc<dyn Dial>, address: Option<IpAddr>) -> Forwarder {
        Forwarder {
            dial,
            open: HashMap::new(),
            address,
        }
    }

    /// The ports open now.
    pub fn open_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.open.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// What to listen on: the mappings of `state` whose vnode runs, in this master's range.
    pub fn wanted(range: &PortRange, state: &PortsState) -> BTreeMap<u16, PortMapping> {
        ports::listening(&state.mappings, &state.phases, range)
    }

    /// Listens on exactly the ports of `wanted` (see [`Forwarder::wanted`]): closes the
    /// others (and ports whose mapping changed), opens the missing ones. A port that cannot
    /// be bound is left for the next call.
    pub async fn apply(&mut self, wanted: &BTreeMap<u16, PortMapping>) {
        let stale: Vec<u16> = self
            .open
            .iter()
            .filter(|(port, listener)| wanted.get(port) != Some(&listener.mapping))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(listener) = self.open.remove(&port) {
                info!(public_port = port, vnode = %listener.mapping.vnode_id(), "public port closed");
                listener.close().await;
            }
        }
        for (&port, mapping) in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            let mapping = mapping.clone();
            match bind(self.address, port) {
                Ok(listener) => {
                    info!(public_port = port, vnode = %mapping.vnode_id(), port = mapping.port, "public port open");
                    let task =
                        tokio::spawn(accept_loop(listener, mapping.clone(), self.dial.clone()));
                    let task = Some(task);
                    self.open.insert(port, Listener { mapping, task });
                }
                Err(e) => {
                    warn!(public_port = port, vnode = %mapping.vnode_id(), "cannot listen on public port {port}: {e}; trying again in {} s", RETRY_EVERY.as_secs());
                }
            }
        }
    }
}

/// `address` alone, else all addresses: IPv6 and IPv4 where the host has IPv6, else IPv4
/// only (as the portal).
fn bind(address: Option<IpAddr>, port: u16) -> std::io::Result<TcpListener> {
    let listener = match address {
        Some(address) => std::net::TcpListener::bind(SocketAddr::from((address, port)))?,
        None => std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .or_else(|_| std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))?,
    };
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn accept_loop(listener: TcpListener, mapping: PortMapping, dial: Arc<dyn Dial>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    connections.spawn(forward(client, peer, mapping.clone(), dial.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    warn!(public_port = mapping.public_port, "accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(client: TcpStream, peer: SocketAddr, mapping: PortMapping, dial: Arc<dyn Dial>) {
    let vnode = mapping.vnode_id();
    let (public_port, port) = (mapping.public_port, mapping.port);
    let inner = match tokio::time::timeout(DIAL_LIMIT, dial.dial(mapping)).await {
        Ok(Ok(inner)) => inner,
        Ok(Err(e)) => {
            warn!(public_port, vnode, port, %peer, "cannot reach the vnode's port: {e}");
            return;
        }
        Err(_) => {
            warn!(public_port, vnode, port, %peer, "the vnode's port did not answer within {} s", DIAL_LIMIT.as_secs());
            return;
        }
    };
    let _ = client.set_nodelay(true);
    match streams::relay(Buffered::new(client), inner).await {
        Ok((up, down)) => debug!(public_port, vnode, %peer, up, down, "connection closed"),
        Err(e) => debug!(public_port, vnode, %peer, "connection ended: {e}"),
    }
}

/// Keeps this master's public ports in step with etcd, forever. While etcd cannot be
/// reached the ports stay as they were: users' connections outlive a short etcd outage.
pub async fn run(master: Arc<Master>) {
    let dial: Arc<dyn Dial> = Arc::new(AgentDial(master.clone()));
    run_with(master, dial).await
}

async fn run_with(master: Arc<Master>, dial: Arc<dyn Dial>) {
    let range = master.config.port_range;
    let (publish, mut state) = watch::channel::<Option<BTreeMap<u16, PortMapping>>>(None);
    let follow = {
        let master = master.clone();
        tokio::spawn(async move {
            loop {
                let Some(store) = master.connected_store(Duration::from_secs(3600)).await else {
                    continue;
                };
                let select = |state: &PortsState| Forwarder::wanted(&range, state);
                let error = store.follow_ports(select, &publish).await;
                debug!("port mappings: {error}; reloading");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let _follow = AbortOnDrop(follow);
    let mut forwarder = Forwarder::new(dial, master.config.ports_address);
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = retry.tick() => {}
        }
        let current = state.borrow_and_update().clone();
        if let Some(current) = current {
            forwarder.apply(&current).await;
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::model::vnode::Phase;

    /// Stands for the agent's tunnel: connects to a local server that greets with the
    /// mapping's vnode port, like sshd with its banner.
    struct LocalDial(SocketAddr);

    impl Dial for LocalDial {
        fn dial(&self, _: PortMapping) -> BoxFuture<'static, Result<Inner, String>> {
            let to = self.0;
            Box::pin(async move {
                let stream = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
                Ok(Buffered::new(Box::new(stream) as Box<dyn Stream>))
            })
        }
    }

    /// A server that writes a banner, then echoes.
    async fn banner_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    s.write_all(b"SSH-2.0-Test\r\n").await.unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    /// A port nobody listens on now (asked from the kernel, then given back).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn state(public_port: u16, phase: Phase) -> BTreeMap<u16, PortMapping> {
        let mapping = PortMapping {
            user: "alice".into(),
            cluster: "c1".into(),
            node: 0,
            port: 22,
            public_port,
            created_at: 0,
        };
        let state = PortsState {
            phases: HashMap::from([(mapping.vnode_id(), phase)]),
            mappings: BTreeMap::from([(public_port, mapping)]),
        };
        let range = PortRange {
            first: public_port,
            last: public_port,
        };
        Forwarder::wanted(&range, &state)
    }

    async fn banner(port: u16) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut buf = [0u8; 14];
        s.read_exact(&mut buf).await?;
        s.write_all(b"ping").await?;
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await?;
        assert_eq!(&echo, b"ping");
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[tokio::test]
    async fn ports_open_while_the_vnode_runs_and_close_when_it_stops_or_goes() {
        let server = banner_server().await;
        let port = free_port();
        let mut forwarder = Forwarder::new(Arc::new(LocalDial(server)), None);

        forwarder.apply(&state(port, Phase::Creating)).await;
        assert!(forwarder.open_ports().is_empty());
        assert!(
            banner(port).await.is_err(),
            "nothing listens before it runs"
        );

        forwarder.apply(&state(port, Phase::Running)).await;
        assert_eq!(forwarder.open_ports(), vec![port]);
        assert_eq!(banner(port).await.unwrap(), "SSH-2.0-Test\r\n");

        // An open connection is cut when the port closes.
        let mut open = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 14];
        open.read_exact(&mut buf).await.unwrap();
        forwarder.apply(&state(port, Phase::Stopping)).await;
        assert!(forwarder.open_ports().is_empty());
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
        assert!(cut.is_ok(), "the open connection ends with the port");
        assert!(
            banner(port).await.is_err(),
            "connection refused once stopped"
        );

        forwarder.apply(&state(port, Phase::Running)).await;
        assert_eq!(banner(port).await.unwrap(), "SSH-2.0-Test\r\n");
        forwarder.apply(&BTreeMap::new()).await;
        assert!(
            banner(port).await.is_err(),
            "refused once the mapping is gone"
        );
    }

    #[tokio::test]
    async fn a_port_taken_by_another_program_is_tried_again() {
        let server = banner_server().await;
        let squatter = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        let mut forwarder = Forwarder::new(Arc::new(LocalDial(server)), None);
        forwarder.apply(&state(port, Phase::Running)).await;
        assert!(forwarder.open_ports().is_empty());
        drop(squatter);
        forwarder.apply(&state(port, Phase::Running)).await;
        assert_eq!(forwarder.open_ports(), vec![port]);
        assert_eq!(banner(port).await.unwrap(), "SSH-2.0-Test\r\n");
    }

    #[tokio::test]
    async fn a_vnode_that_cannot_be_reached_closes_the_client_connection() {
        // The dial goes to a port where nothing listens.
        let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let port = free_port();
        let mut forwarder = Forwarder::new(Arc::new(LocalDial(nowhere)), None);
        forwarder.apply(&state(port, Phase::Running)).await;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed, not left hanging")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
