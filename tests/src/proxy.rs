//! A TCP proxy for fault injection: listens on 127.0.0.1 (a free port),
//! forwards every connection to one target, and can [`stall`](Proxy::stall)
//! the traffic (no byte forwarded either way, every socket left open: a
//! network that silently stops delivering) and [`resume`](Proxy::resume) it.
//!
//! Standard threads only: one that accepts, two per connection that pump
//! bytes. Bounded: at most [`MAX_CONNECTIONS`] connections at once (more are
//! closed as they come), one buffer of [`BUFFER_BYTES`] per direction.
//! Dropping the proxy closes every connection and joins every thread.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most connections forwarded at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The buffer of one direction of one connection.
pub const BUFFER_BYTES: usize = 16 * 1024;

/// A running proxy; see the [module](self).
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    stalled: bool,
    stopping: bool,
    /// Connections accepted and forwarded so far.
    accepted: usize,
    /// The live connections by number: both sockets (clones, to shut them
    /// down at drop) and how many of their two pumps still run.
    live: HashMap<u64, (TcpStream, TcpStream, u8)>,
    pumps: Vec<JoinHandle<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` that forwards to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        // Polled, so that the acceptor sees `stopping` without a wake-up connection.
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("proxy-accept".into())
                .spawn(move || accept_loop(listener, target, &shared))?
        };
        Ok(Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where the proxy listens (127.0.0.1 and its port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding bytes, in both directions, on every connection
    /// (and on the ones accepted while stalled); sockets stay open.
    pub fn stall(&self) {
        self.shared.lock().stalled = true;
        self.shared.changed.notify_all();
    }

    /// Forwards again, starting with what was held back.
    pub fn resume(&self) {
        self.shared.lock().stalled = false;
        self.shared.changed.notify_all();
    }

    /// Closes every live connection at once (both sockets, both ways), as
    /// a network that drops them would; new connections are still accepted.
    pub fn close_all(&self) {
        let state = self.shared.lock();
        for (a, b, _) in state.live.values() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// How many connections the proxy has accepted and forwarded so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().accepted
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let pumps = {
            let mut state = self.shared.lock();
            for (a, b, _) in state.live.values() {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut state.pumps)
        };
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    loop {
        if shared.lock().stopping {
            return;
        }
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        {
            let mut state = shared.lock();
            state.pumps.retain(|p| !p.is_finished());
            if state.live.len() >= MAX_CONNECTIONS {
                // Over the bound: closed at once (dropped).
                continue;
            }
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            continue;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client2), Ok(server2), Ok(client3), Ok(server3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        let mut state = shared.lock();
        state.accepted += 1;
        state.live.insert(id, (client3, server3, 2));
        for (name, from, to) in [("up", client, server), ("down", server2, client2)] {
            let shared = Arc::clone(shared);
            let spawned = std::thread::Builder::new()
                .name(format!("proxy-{name}-{id}"))
                .spawn(move || pump(id, from, to, &shared));
            match spawned {
                Ok(handle) => state.pumps.push(handle),
                Err(_) => {
                    // No thread: close the connection (the other pump, if
                    // any, sees it and ends).
                    if let Some((a, b, _)) = state.live.get(&id) {
                        let _ = a.shutdown(Shutdown::Both);
                        let _ = b.shutdown(Shutdown::Both);
                    }
                }
            }
        }
    }
}

/// Copies `from` to `to` until either ends, holding bytes back while the
/// proxy is stalled.
fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; BUFFER_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut state = shared.lock();
            while state.stalled && !state.stopping {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if state.stopping {
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // The end of one direction ends the other's writes: pass the close on.
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
    let mut state = shared.lock();
    if let Some(entry) = state.live.get_mut(&id) {
        entry.2 -= 1;
        if entry.2 == 0 {
            state.live.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1 for one connection at a time.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut read = stream.try_clone().unwrap();
                    let mut write = stream;
                    let _ = io::copy(&mut read, &mut write);
                });
            }
        });
        addr
    }

    #[test]
    fn forwards_stalls_and_resumes() {
        let proxy = Proxy::start(echo()).unwrap();
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 5];
        client.write_all(b"hello").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        proxy.stall();
        client.write_all(b"again").unwrap();
        let err = client.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        proxy.resume();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"again");
        assert_eq!(proxy.connections(), 1);

        // Cutting the connections ends them; new ones still come through.
        proxy.close_all();
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.write_all(b"third").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"third");

        // Dropping the proxy closes the connection, stalled or not.
        proxy.stall();
        drop(proxy);
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }
}
