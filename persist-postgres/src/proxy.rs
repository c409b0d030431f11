//! [`CuttingProxy`]: a TCP proxy between a store and its server that cuts the connection
//! around the next COMMIT, for tests of the ambiguous commit.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Where [`CuttingProxy::arm`] cuts the next connection that sends a COMMIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The COMMIT is dropped and the connection closed: the server never commits.
    BeforeCommit,
    /// The COMMIT is passed on, then the connection closed before the server's answer
    /// comes back: the server commits, the client never hears of it.
    AfterCommit,
}

/// A proxy on a free port of 127.0.0.1 to a server's port. It passes bytes both ways until
/// armed; then it cuts the first connection that sends a COMMIT, once.
#[derive(Debug)]
pub struct CuttingProxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// 0: pass; 1: cut before; 2: cut after.
    armed: AtomicU8,
    fired: AtomicBool,
}

impl CuttingProxy {
    /// Starts a proxy to `host:port`; it runs until the process ends.
    pub fn start(host: &str, port: u16) -> std::io::Result<CuttingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let local = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let target = format!("{host}:{port}");
        let s = shared.clone();
        std::thread::Builder::new()
            .name("cutting-proxy".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(&target) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pump(client, server, s.clone());
                }
            })?;
        Ok(CuttingProxy {
            port: local,
            shared,
        })
    }

    /// The port to connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the next connection that sends a COMMIT, at `cut`.
    pub fn arm(&self, cut: Cut) {
        self.shared.fired.store(false, Ordering::SeqCst);
        let v = match cut {
            Cut::BeforeCommit => 1,
            Cut::AfterCommit => 2,
        };
        self.shared.armed.store(v, Ordering::SeqCst);
    }

    /// Whether the armed cut happened (it disarms itself when it does).
    pub fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }
}

/// Copies both ways on two threads; the client-to-server one watches for COMMIT.
fn pump(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (c3, s3) = (client.try_clone().ok(), server.try_clone().ok());
    std::thread::spawn(move || {
        let (mut from, mut to) = (s2, c2);
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let (mut from, mut to) = (client, server);
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            let commit = chunk.windows(6).any(|w| w == b"COMMIT");
            let armed = shared.armed.load(Ordering::SeqCst);
            if commit && armed != 0 && shared.armed.swap(0, Ordering::SeqCst) == armed {
                if armed == 2 {
                    let _ = to.write_all(chunk);
                    let _ = to.flush();
                }
                // Marked before the cut: the client learns of the cut from the closed socket
                // and may ask `fired` before this thread runs again.
                shared.fired.store(true, Ordering::SeqCst);
                // Cut both sides now: the server's answer to a passed COMMIT never returns.
                for s in [&from, &to].into_iter().chain(c3.iter()).chain(s3.iter()) {
                    let _ = s.shutdown(Shutdown::Both);
                }
                return;
            }
            if to.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
