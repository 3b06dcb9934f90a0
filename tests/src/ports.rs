//! Free loopback port allocation.
//!
//! A port is found by binding `127.0.0.1:0`, reading the port the kernel chose and closing
//! the listener again, so the service under test can bind it a moment later. Two things can
//! go wrong in that window:
//!
//! * Another test in the same process asks for a port and the kernel hands out the same
//!   one (it is free again once we close our listener). A process-wide set of every port
//!   ever returned prevents that: a port is never handed out twice in one process, even
//!   after the service that used it is gone, because a killed member is restarted on the
//!   same ports later.
//! * Another process (a second test binary, or an outgoing connection's ephemeral port)
//!   takes the port. That is rare, and [`crate::EtcdClusterBuilder::start`] retries with
//!   fresh ports when a member fails with "address already in use".

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Every port [`free_port`] has returned in this process.
static ISSUED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a loopback TCP port that was free a moment ago and that this process has never
/// handed out before.
///
/// # Panics
///
/// Panics when no loopback socket can be bound at all, which means the machine is unusable
/// for these tests anyway.
pub fn free_port() -> u16 {
    // A panicking test must not poison the set for every other test in the binary.
    let mut issued = ISSUED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("read the local address of a bound listener")
            .port();
        // The listener is dropped here, releasing the port for the service to bind.
        if issued.insert(port) {
            return port;
        }
    }
    panic!(
        "no unused loopback port after 1000 tries ({} issued)",
        issued.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_never_repeated_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..50).map(|_| free_port()).collect::<Vec<_>>()))
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            for port in handle.join().expect("port thread") {
                assert!(port > 0);
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }
}
