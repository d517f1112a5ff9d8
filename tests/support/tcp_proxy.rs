//! A TCP proxy on loopback that forwards bytes to one address until it is killed: then it
//! stops listening and cuts every connection it carries, as a server that dies does. It reads
//! nothing of what it forwards, so TLS passes through it untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct TcpProxy {
    addr: String,
    dead: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpProxy {
    /// Forward connections to `target` (host:port) from a free loopback port.
    pub fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("address").to_string();
        let dead = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, d, c) = (target.to_string(), dead.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    // Killed: the wake-up connection (or a late one) ends the loop, and the
                    // listener closes with it.
                    return;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut held = c.lock().expect("lock");
                for s in [&client, &server] {
                    held.push(s.try_clone().expect("clone"));
                }
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        TcpProxy { addr, dead, conns }
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> String {
        self.addr.clone()
    }

    /// Die: every carried connection cut, and the port closed. Returns once it is closed.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for s in self.conns.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees it is dead and drops the listener, then wait until
        // a connection is refused.
        let _ = TcpStream::connect(&self.addr);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while TcpStream::connect(&self.addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy at {} still accepts after 10 s",
                self.addr
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if !self.dead.load(Ordering::SeqCst) {
            self.kill();
        }
    }
}
