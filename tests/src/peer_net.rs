//! A network between etcd members that tests can degrade: each member's peer
//! traffic passes through a TCP proxy in front of its peer listener (the
//! member advertises the proxy's URL), which can delay it or drop it.
//!
//! There is no `tc netem` on the test machines, and firewall rules would reach
//! every test on the host; a proxy per member touches only its own cluster.
//!
//! * **Delay** ([`PeerNet::delay_to`]): every byte to and from a member waits,
//!   both ways, so its peers measure a round trip of twice the delay.
//! * **Isolation** ([`PeerNet::isolate`]): a member's peer connections are
//!   ended and new ones refused or closed, in both directions, while its
//!   client port stays reachable. (Dropping bytes from the middle of an open
//!   stream would corrupt it, which a real network never does.) The proxy
//!   of the member being dialled drops what reaches the isolated member; the
//!   proxies of the others recognise connections *from* the isolated member by
//!   the `X-Server-From` header etcd's raft transport sends with each request.
//!   Connections without it (etcd's RTT prober, an agent's peer probe) are
//!   judged by their destination only. The isolated member's peer port takes
//!   no new connections, so a TCP connect to it fails.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The faults of the whole peer network, shared by every proxy.
#[derive(Default)]
struct Faults {
    /// Delay of each member's traffic, ms, by member index.
    delay_ms: Vec<AtomicU64>,
    /// Members cut off from their peers, by index.
    isolated: Mutex<HashSet<usize>>,
    /// Member ids (hex, as in `X-Server-From`) by index, once known.
    ids: Mutex<Vec<String>>,
}

impl Faults {
    fn isolated(&self, i: usize) -> bool {
        self.isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&i)
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .position(|known| known.eq_ignore_ascii_case(id))
    }
}

/// The proxies of one cluster (see the module docs). Dropping it stops them.
pub struct PeerNet {
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
    /// Each member's proxy port, by index.
    ports: Vec<u16>,
}

impl PeerNet {
    /// One proxy per member: proxy `i` listens on `listen_ports[i]` and forwards
    /// to `127.0.0.1:target_ports[i]` (the member's own peer listener).
    pub fn start(listen_ports: &[u16], target_ports: &[u16]) -> Result<Self> {
        let faults = Arc::new(Faults {
            delay_ms: listen_ports.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Faults::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        for (i, (&listen, &target)) in listen_ports.iter().zip(target_ports).enumerate() {
            let listener = TcpListener::bind(("127.0.0.1", listen))
                .with_context(|| format!("bind the peer proxy of member {i} on {listen}"))?;
            listener.set_nonblocking(true)?;
            let (faults, stop) = (faults.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("peer-proxy-{i}"))
                .spawn(move || accept_loop(listener, i, target, faults, stop))?;
        }
        Ok(Self {
            faults,
            stop,
            ports: listen_ports.to_vec(),
        })
    }

    /// The port member `i`'s peers dial.
    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    /// Tells the proxies the members' ids (hex, as `etcdctl member list` shows
    /// them), by index, so that connections from an isolated member are known.
    pub fn set_ids(&self, ids: Vec<String>) {
        *self.faults.ids.lock().unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Delays all peer traffic to and from member `i` by `delay` each way.
    pub fn delay_to(&self, i: usize, delay: Duration) {
        self.faults.delay_ms[i].store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Cuts member `i` off from its peers (its clients still reach it).
    pub fn isolate(&self, i: usize) {
        self.faults
            .isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(i);
    }

    /// Undoes [`isolate`](Self::isolate) and [`delay_to`](Self::delay_to) for member `i`.
    pub fn heal(&self, i: usize) {
        self.faults
            .isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&i);
        self.delay_to(i, Duration::ZERO);
    }
}

impl std::fmt::Debug for PeerNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNet")
            .field("ports", &self.ports)
            .finish()
    }
}

impl Drop for PeerNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(
    listener: TcpListener,
    to: usize,
    target: u16,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut listener = Some(listener);
    while !stop.load(Ordering::Relaxed) {
        // An isolated member's peer port takes no new connections (a TCP
        // connect, as an agent's peer probe makes, fails); open ones go quiet.
        if faults.isolated(to) {
            listener = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            listener = TcpListener::bind(("127.0.0.1", port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .ok();
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                let (faults, stop) = (faults.clone(), stop.clone());
                let _ = std::thread::Builder::new()
                    .name(format!("peer-conn-{to}"))
                    .spawn(move || connection(client, to, target, faults, stop));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Forwards one connection to member `to` until either side closes.
fn connection(
    client: TcpStream,
    to: usize,
    target: u16,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Who dialled: the member id in the first request's headers, if it says.
    let from: Arc<Mutex<Option<String>>> = Arc::default();
    let link = Link {
        to,
        from: from.clone(),
        faults,
        stop,
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = {
        let link = link.clone();
        std::thread::spawn(move || pump(client, server, link, true))
    };
    pump(s2, c2, link, false);
    let _ = up.join();
}

/// What decides the fate of one connection's bytes.
#[derive(Clone)]
struct Link {
    to: usize,
    /// Read when the connection opens, judged at every chunk: the ids may be
    /// learnt after the members connected.
    from: Arc<Mutex<Option<String>>>,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// The dialling member's index, if known.
    fn from(&self) -> Option<usize> {
        let id = self.from.lock().unwrap_or_else(|p| p.into_inner()).clone();
        id.and_then(|id| self.faults.index_of(&id))
    }

    fn dropped(&self) -> bool {
        self.faults.isolated(self.to) || self.from().is_some_and(|f| self.faults.isolated(f))
    }

    fn delay(&self) -> Duration {
        let from = self.from();
        let ms = |i: usize| self.faults.delay_ms[i].load(Ordering::Relaxed);
        Duration::from_millis(ms(self.to).max(from.map_or(0, ms)))
    }
}

/// Copies `src` to `dst`, each chunk held back by the link's delay (without
/// slowing the stream: chunks queue) or dropped while the link is cut.
/// `request` is the direction from the dialler, whose headers name it.
fn pump(mut src: TcpStream, dst: TcpStream, link: Link, request: bool) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let mut dst = dst.try_clone().ok();
        std::thread::spawn(move || {
            for (due, chunk) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if dst.as_mut().is_none_or(|d| d.write_all(&chunk).is_err()) {
                    break;
                }
            }
        })
    };
    let _ = src.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen_headers = !request;
    loop {
        if link.stop.load(Ordering::Relaxed) {
            break;
        }
        // A cut link ends its connections (as a partition ends in timeouts and
        // resets) rather than dropping bytes from the middle of a stream, which
        // a real network never does and etcd is entitled to choke on.
        if link.dropped() {
            let _ = src.shutdown(Shutdown::Both);
            let _ = dst.shutdown(Shutdown::Both);
            break;
        }
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if !seen_headers {
            if let Some(id) = header(&buf[..n], "x-server-from") {
                *link.from.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
            }
            seen_headers = true;
        }
        if link.dropped() {
            continue; // ended at the top of the loop
        }
        if tx
            .send((Instant::now() + link.delay(), buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = dst.shutdown(Shutdown::Write);
}

/// The value of header `name` (lowercase) in the first request of `bytes`.
fn header(bytes: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialler_is_read_from_its_first_request() {
        let req = b"GET /raft/stream/msgappv2/8e9e05c52164694d HTTP/1.1\r\nHost: x\r\n\
                    X-Server-From: 91bc3c398fb3c146\r\nX-Raft-To: 8e9e05c52164694d\r\n\r\n";
        assert_eq!(
            header(req, "x-server-from").as_deref(),
            Some("91bc3c398fb3c146")
        );
        assert_eq!(header(b"PRI * HTTP/2.0\r\n\r\n", "x-server-from"), None);
    }
}
