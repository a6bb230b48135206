//! A TCP proxy that delays every chunk by half a round trip in each direction: the 1 ms link of the
//! benchmarks. (The development VM's kernel has no `sch_netem`, so `tc netem` cannot add the delay; a proxy
//! on loopback adds the same latency to every message, in both directions, without reordering.)

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A listening proxy to `target`; runs until the process ends.
pub struct DelayProxy {
    pub addr: SocketAddr,
}

impl DelayProxy {
    /// Listens on a free loopback port; each connection is forwarded to `target` with `rtt / 2` added to each
    /// direction.
    pub fn start(target: SocketAddr, rtt: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the delay proxy");
        let addr = listener.local_addr().expect("proxy address");
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else { continue };
                for s in [&client, &server] {
                    s.set_nodelay(true).ok();
                }
                let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                relay(client, server, rtt / 2);
                relay(s2, c2, rtt / 2);
            }
        });
        DelayProxy { addr }
    }
}

/// Copies `from` to `to`, each chunk leaving `delay` after it arrived.
fn relay(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
