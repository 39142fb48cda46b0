//! TCP connections made inside a vnode's network namespace, for the agent's tunnels
//! (`GET /agent/v1/vnodes/{id}/tcp/{port}`): the master reaches Jupyter, terminals' peers and
//! mapped ports through them without ever joining a user's network.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Longest a connection inside the vnode may take to be accepted.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Connects to `port` on the loopback of the network namespace `netns` (a vnode's, from its
/// [`Leader`](super::vnode::Leader)), or, when loopback refuses, on `fallback` (the vnode's
/// own address: a service may listen only there).
///
/// `setns` changes the namespace of the calling thread only, and for good: it happens on a
/// short-lived thread of its own, never on a tokio worker or blocking-pool thread, whose
/// later tasks would run in the vnode's namespace. The socket keeps the namespace it was
/// made in, so the connected stream works from any thread afterwards.
pub async fn connect(
    netns: std::fs::File,
    port: u16,
    fallback: Option<Ipv4Addr>,
) -> io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-connect-{port}"))
        .spawn(move || {
            let result = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("setns into the vnode's network: {e}")))
                .and_then(|()| connect_here(port, fallback));
            let _ = tx.send(result);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread died"))??;
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    tokio::net::TcpStream::from_std(stream)
}

/// Connects in the calling thread's namespace: loopback first, then `fallback`.
fn connect_here(port: u16, fallback: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&loopback, CONNECT_LIMIT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fallback {
            Some(address) => {
                TcpStream::connect_timeout(&SocketAddr::from((address, port)), CONNECT_LIMIT)
            }
            None => Err(e),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_first_then_the_vnodes_own_address() {
        // Listening on 127.0.0.2 only: loopback's 127.0.0.1 refuses, the "address" answers.
        let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = connect_here(port, None).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let stream = connect_here(port, Some(Ipv4Addr::new(127, 0, 0, 2))).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener.local_addr().unwrap());
        let on_loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = on_loopback.local_addr().unwrap().port();
        let stream = connect_here(port, Some(Ipv4Addr::new(127, 0, 0, 2))).unwrap();
        assert_eq!(
            stream.peer_addr().unwrap(),
            on_loopback.local_addr().unwrap()
        );
    }
}
