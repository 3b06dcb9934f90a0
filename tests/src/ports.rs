//! Free loopback port allocation.
//!
//! A port is found by binding it on `127.0.0.1` and closing the listener again, so the
//! service under test can bind it a moment later. Two things can go wrong in that window:
//!
//! * Another test in the same process asks for a port and gets the same one (it is free
//!   again once we close our listener). A process-wide set of every port ever returned
//!   prevents that: a port is never handed out twice in one process, even after the service
//!   that used it is gone, because a killed member is restarted on the same ports later.
//! * The kernel gives the port to someone else: a service that binds port 0 (the
//!   collector's internal gRPC port in `etcdmon up`, for one) or an outgoing connection's
//!   local end. Both take ports from the kernel's ephemeral range
//!   (`net.ipv4.ip_local_port_range`, 32768-60999 by default), which is exactly where
//!   binding port 0 here used to look; CI once lost a run to `--listen: Address already in
//!   use` that way. So ports are picked below that range instead, where the kernel never
//!   hands out a port on its own, starting at a point that differs per process so that two
//!   test processes rarely try the same ones.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Every port [`free_port`] has returned in this process.
static ISSUED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The lowest port handed out: clear of the well-known and most registered service ports.
const LOWEST: u16 = 10_000;

/// The first port of the kernel's ephemeral range, read once; 32768 when it cannot be read.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Returns a loopback TCP port that was free a moment ago, lies outside the kernel's
/// ephemeral range, and that this process has never handed out before.
///
/// # Panics
///
/// Panics when no such port can be bound at all, which means the machine is unusable for
/// these tests anyway.
pub fn free_port() -> u16 {
    // A panicking test must not poison the set for every other test in the binary.
    let mut issued = ISSUED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let end = ephemeral_start().max(LOWEST + 1_000);
    let span = u32::from(end - LOWEST);
    // Where this process starts looking, then onwards from the highest port issued.
    let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
    let start = issued
        .last()
        .map_or(seed, |last| u32::from(last - LOWEST) + 1);
    for i in 0..span {
        let port = LOWEST + ((start + i) % span) as u16;
        if issued.contains(&port) {
            continue;
        }
        // The listener is dropped at once, releasing the port for the service to bind.
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            issued.insert(port);
            return port;
        }
    }
    panic!(
        "no unused loopback port in {LOWEST}..{end} ({} issued)",
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
                assert!((LOWEST..ephemeral_start()).contains(&port), "{port}");
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }
}
