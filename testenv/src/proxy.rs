//! A loopback TCP proxy that a test can cut: every live connection is shut down at once, and new
//! ones can be refused for a while. It stands between a client and kube-apiserver to play a
//! broken network (TLS passes through untouched).

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A running proxy from a free loopback port to `target`; its threads live as long as the
/// process (a test binary).
#[derive(Debug, Clone)]
pub struct TcpProxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    target: SocketAddr,
    /// Both ends of each live connection, by connection id.
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    refusing: AtomicBool,
    accepted: AtomicU64,
}

impl Inner {
    fn live(&self) -> MutexGuard<'_, HashMap<u64, (TcpStream, TcpStream)>> {
        match self.live.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            target,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let shared = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("adc-testenv-proxy".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    if shared.refusing.load(Ordering::Relaxed) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let _ = forward(&shared, client);
                }
            })?;
        Ok(Self { addr, inner })
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts down every live connection in both directions; returns how many there were.
    pub fn cut(&self) -> usize {
        let live: Vec<_> = self.inner.live().drain().collect();
        for (_, (client, server)) in &live {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        live.len()
    }

    /// While true, new connections are accepted and closed at once (a peer that resets).
    pub fn set_refusing(&self, refusing: bool) {
        self.inner.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }
}

/// Connects to the target and copies both ways on two threads; the pair is forgotten when
/// either side ends.
fn forward(inner: &Arc<Inner>, client: TcpStream) -> io::Result<()> {
    let server = TcpStream::connect(inner.target)?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    inner
        .live()
        .insert(id, (client.try_clone()?, server.try_clone()?));
    let pipe = |mut from: TcpStream, mut to: TcpStream, inner: Arc<Inner>| {
        move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            inner.live().remove(&id);
        }
    };
    std::thread::spawn(pipe(
        client.try_clone()?,
        server.try_clone()?,
        Arc::clone(inner),
    ));
    std::thread::spawn(pipe(server, client, Arc::clone(inner)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_and_cuts() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut conn in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = TcpProxy::start(target).unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).unwrap();
        conn.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        // The forwarding threads register the pair before the first byte can come back.
        assert_eq!(proxy.cut(), 1);
        let mut rest = Vec::new();
        assert_eq!(conn.read_to_end(&mut rest).unwrap_or(0), 0, "cut closes it");

        proxy.set_refusing(true);
        let mut refused = TcpStream::connect(proxy.addr()).unwrap();
        let _ = refused.write_all(b"x");
        assert_eq!(refused.read(&mut buf).unwrap_or(0), 0);
        proxy.set_refusing(false);
        let mut again = TcpStream::connect(proxy.addr()).unwrap();
        again.write_all(b"pong").unwrap();
        again.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(proxy.accepted(), 3);
    }
}
