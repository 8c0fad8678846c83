//! A TCP proxy that injects network faults between two real processes:
//! pass traffic, black-hole it (connections stay open and new ones are
//! accepted, but nothing gets through, as on a partitioned network; what
//! was sent meanwhile arrives after the heal, as TCP's retransmissions
//! would deliver it), reset every connection and refuse new ones (as when a
//! host goes away), or delay each chunk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Keep connections open and accept new ones, but forward nothing
    /// until the fault changes.
    BlackHole,
    /// Reset every open connection, and reset new ones as they arrive.
    Reset,
    /// Forward each chunk after this delay.
    Delay(Duration),
}

pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    connections: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("bound");
        let (fault, watcher) = watch::channel(Fault::Pass);
        let connections = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (count, stopping) = (connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopping.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                let watcher = watcher.clone();
                let stopping = stopping.clone();
                tokio::spawn(async move {
                    if *watcher.borrow() == Fault::Reset {
                        reset(client);
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        reset(client);
                        return;
                    };
                    relay(client, server, watcher, stopping).await;
                });
            }
        });
        Self {
            addr,
            fault,
            connections,
            stop,
        }
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Closes with a TCP reset rather than a graceful FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    mut fault: watch::Receiver<Fault>,
    stop: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pump(&mut client_read, &mut server_write, fault.clone());
    let down = pump(&mut server_read, &mut client_write, fault.clone());
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = stop.cancelled() => {}
        _ = fault.wait_for(|f| *f == Fault::Reset) => {}
    }
    // Reset both sides, whatever ended the relay.
    if let (Ok(client), Ok(server)) = (
        client_read.reunite(client_write),
        server_read.reunite(server_write),
    ) {
        reset(client);
        reset(server);
    }
}

/// Copies one direction, applying the fault in force to each chunk.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    fault: watch::Receiver<Fault>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut fault = fault;
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A black hole holds the bytes (and, as the proxy stops reading,
        // the sender's buffers fill) until the network heals.
        let current = match fault.wait_for(|f| *f != Fault::BlackHole).await {
            Ok(current) => *current,
            Err(_) => return,
        };
        match current {
            Fault::Pass | Fault::BlackHole => {}
            Fault::Reset => return,
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut got = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut got)).await {
            Ok(Ok(_)) => Some(got.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn it_passes_black_holes_heals_and_resets() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut stream, Duration::from_secs(5))
                .await
                .as_deref(),
            Some(&b"ping"[..])
        );

        proxy.set(Fault::BlackHole);
        assert_eq!(
            round_trip(&mut stream, Duration::from_millis(200)).await,
            None,
            "nothing comes back through a black hole"
        );
        proxy.set(Fault::Pass);
        assert_eq!(
            round_trip(&mut stream, Duration::from_secs(5))
                .await
                .as_deref(),
            Some(&b"ping"[..]),
            "the same connection carries traffic again once healed"
        );
        let mut held = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut held))
            .await
            .expect("what was sent into the black hole arrives after the heal")
            .unwrap();
        assert_eq!(&held, b"ping");

        proxy.set(Fault::Reset);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the reset arrives");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut fresh, Duration::from_secs(5)).await, None);
        assert_eq!(proxy.connections(), 2);
    }
}
