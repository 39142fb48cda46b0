//! Relays bytes both ways between two connections: the agent's tunnels (TLS to the master,
//! a socket inside the vnode), the master's port forwarder and its workspace relays (a
//! client's socket, a tunnel). What was already read from either side (the bytes an HTTP
//! layer buffered beyond an upgrade's answer) goes first. The tunnels' TLS keeps the bytes
//! in user space (this kernel offers no kTLS to hand them back), so the copies use large
//! buffers to move them in few calls.

use std::io;

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Each direction's buffer.
const BUFFER: usize = 256 << 10;

/// Any connection a relay can carry.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connection and what was already read from it.
pub struct Buffered<S> {
    pub stream: S,
    pub read: Bytes,
}

impl<S> Buffered<S> {
    /// A connection nothing was read from yet.
    pub fn new(stream: S) -> Self {
        Buffered {
            stream,
            read: Bytes::new(),
        }
    }
}

/// Carries bytes both ways between `a` and `b` until both directions have ended: the end of
/// one direction shuts down the writing side of its destination. Returns the bytes that
/// went a → b and b → a.
pub async fn relay<A, B>(mut a: Buffered<A>, mut b: Buffered<B>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    b.stream.write_all(&a.read).await?;
    a.stream.write_all(&b.read).await?;
    let (forward, backward) =
        tokio::io::copy_bidirectional_with_sizes(&mut a.stream, &mut b.stream, BUFFER, BUFFER)
            .await?;
    Ok((
        forward + a.read.len() as u64,
        backward + b.read.len() as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn carries_both_ways_with_leftovers_first_and_passes_each_end_on() {
        // left ⇄ (a | relay | b) ⇄ right
        let (mut left, a) = pair().await;
        let (b, mut right) = pair().await;
        let with = |stream, read: &'static [u8]| Buffered {
            stream,
            read: Bytes::from_static(read),
        };
        let relay = tokio::spawn(relay(with(a, b"head:"), with(b, b"back:")));
        // Several buffers full, so the copies turn many times.
        let big: Vec<u8> = (0..3 * BUFFER + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            left.write_all(&sent).await.unwrap();
            left.shutdown().await.unwrap();
            let mut back = Vec::new();
            left.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut received = Vec::new();
        right.read_to_end(&mut received).await.unwrap();
        assert_eq!(&received[..5], b"head:");
        assert!(
            received[5..] == big[..],
            "the bytes arrive whole and in order"
        );
        right.write_all(b"reply").await.unwrap();
        right.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"back:reply");
        let (forward, backward) = relay.await.unwrap().unwrap();
        assert_eq!(forward, 5 + big.len() as u64);
        assert_eq!(backward, 10);
    }

    #[tokio::test]
    async fn both_peers_closing_ends_the_relay() {
        let (left, a) = pair().await;
        let (b, right) = pair().await;
        let relay = tokio::spawn(relay(Buffered::new(a), Buffered::new(b)));
        drop(left);
        drop(right);
        let moved = tokio::time::timeout(std::time::Duration::from_secs(5), relay)
            .await
            .expect("the relay ends when both ends have closed")
            .unwrap()
            .unwrap();
        assert_eq!(moved, (0, 0));
    }
}
