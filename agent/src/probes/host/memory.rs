//! Memory utilization and saturation (swap, pressure stall information).

use super::cpu::psi_field;
use super::local_failure;
use etcdmon_proto::v1::{Failure, MemoryMetrics};
use procfs::{Current, Meminfo};

pub(super) fn sample() -> Result<MemoryMetrics, Failure> {
    let m = Meminfo::current()
        .map_err(|e| local_failure("memory", format!("read /proc/meminfo: {e}")))?;
    // MemAvailable exists since Linux 3.14; estimate it on older kernels.
    let available = m.mem_available.unwrap_or(m.mem_free + m.cached + m.buffers);
    Ok(MemoryMetrics {
        total_bytes: m.mem_total,
        available_bytes: available,
        used_bytes: m.mem_total.saturating_sub(available),
        swap_total_bytes: m.swap_total,
        swap_used_bytes: m.swap_total.saturating_sub(m.swap_free),
        psi_some_avg10: psi_field("/proc/pressure/memory", "some"),
        psi_full_avg10: psi_field("/proc/pressure/memory", "full"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_host() {
        let m = super::sample().expect("meminfo");
        assert!(m.total_bytes > 0);
        assert!(m.available_bytes <= m.total_bytes);
        assert_eq!(m.used_bytes, m.total_bytes - m.available_bytes);
    }
}
