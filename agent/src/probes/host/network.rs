//! Bytes, packets, errors and drops per network interface (raw counters;
//! rates are computed downstream like etcd's own counters).

use super::local_failure;
use etcdmon_proto::v1::{Failure, NetworkInterface};

pub(super) struct NetworkSampler {
    only: Vec<String>,
}

impl NetworkSampler {
    pub(super) fn new(only: Vec<String>) -> Self {
        Self { only }
    }

    pub(super) fn sample(&self) -> Result<Vec<NetworkInterface>, Failure> {
        let devs = procfs::net::dev_status()
            .map_err(|e| local_failure("network", format!("read /proc/net/dev: {e}")))?;
        let mut out: Vec<NetworkInterface> = devs
            .into_values()
            .filter(|d| self.only.is_empty() || self.only.contains(&d.name))
            .map(|d| NetworkInterface {
                name: d.name,
                rx_bytes: d.recv_bytes,
                tx_bytes: d.sent_bytes,
                rx_errors: d.recv_errs,
                tx_errors: d.sent_errs,
                rx_drops: d.recv_drop,
                tx_drops: d.sent_drop,
                rx_packets: d.recv_packets,
                tx_packets: d.sent_packets,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_listed_and_filter_works() {
        let all = super::NetworkSampler::new(vec![]).sample().expect("net");
        assert!(all.iter().any(|i| i.name == "lo"));
        let lo = super::NetworkSampler::new(vec!["lo".into()])
            .sample()
            .expect("net");
        assert_eq!(lo.len(), 1);
    }
}
