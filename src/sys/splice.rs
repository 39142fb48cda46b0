//! Relays between two TCP sockets with `splice(2)`: the bytes go socket → pipe → socket
//! inside the kernel and never through a user-space buffer. The agent's tunnels, the
//! master's port forwarder and its WebSocket relays carry every byte of a workspace download
//! or a mapped port this way; the copy loop it replaced made the agent alone take about a
//! fifth of the machine's CPU during a download (docs/design.md, "Relays splice").

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use hyper::body::Bytes;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Each direction's pipe: how many bytes one splice may move.
const PIPE_SIZE: usize = 1 << 20;

/// A TCP connection and what was already read from it: after an HTTP upgrade, the bytes
/// the HTTP layer had buffered beyond the answer's head.
pub struct BufferedTcp {
    pub stream: TcpStream,
    pub read: Bytes,
}

impl BufferedTcp {
    /// A connection nothing was read from yet.
    pub fn new(stream: TcpStream) -> Self {
        BufferedTcp {
            stream,
            read: Bytes::new(),
        }
    }
}

/// Carries bytes both ways between `a` and `b` until both directions have ended, as
/// `tokio::io::copy_bidirectional` does: the end of one direction shuts down the writing
/// side of its destination. What was already read from either side is delivered first.
/// Returns the bytes that went a → b and b → a.
pub async fn relay(a: BufferedTcp, b: BufferedTcp) -> io::Result<(u64, u64)> {
    let forward = one_way(&a.stream, &a.read, &b.stream);
    let backward = one_way(&b.stream, &b.read, &a.stream);
    tokio::try_join!(forward, backward)
}

/// Moves bytes from `from` to `to` until `from` reaches its end, then shuts down `to`'s
/// writing side.
async fn one_way(from: &TcpStream, already_read: &[u8], to: &TcpStream) -> io::Result<u64> {
    let mut total = already_read.len() as u64;
    write_all(to, already_read).await?;
    let (pipe_out, pipe_in) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // A bigger pipe moves more per call; the default (64 KiB) stays if the limit refuses.
    let _ = fcntl(&pipe_in, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let filled = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, &pipe_in, None, PIPE_SIZE, flags)
                    .map_err(io::Error::from)
            })
            .await?;
        if filled == 0 {
            // `to` may be gone already (the other direction failed first): nothing to tell.
            let _ = shutdown(to.as_fd().as_raw_fd(), Shutdown::Write);
            return Ok(total);
        }
        drain(&pipe_out, to, filled, flags).await?;
        total += filled as u64;
    }
}

/// Moves exactly `len` bytes from the pipe to `to`.
async fn drain(
    pipe_out: &OwnedFd,
    to: &TcpStream,
    len: usize,
    flags: SpliceFFlags,
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let moved = to
            .async_io(Interest::WRITABLE, || {
                splice(pipe_out, None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            })
            .await?;
        if moved == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        left -= moved;
    }
    Ok(())
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
        let with = |stream, read: &'static [u8]| BufferedTcp {
            stream,
            read: Bytes::from_static(read),
        };
        let relay = tokio::spawn(relay(with(a, b"head:"), with(b, b"back:")));
        // Several pipe-fulls, so the loop turns many times.
        let big: Vec<u8> = (0..3 * PIPE_SIZE + 12345)
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
        let relay = tokio::spawn(relay(BufferedTcp::new(a), BufferedTcp::new(b)));
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
