//! Host capacity from the kernel, via `sysinfo`.

use crate::core::model::HostCapacity;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Reads the host's CPUs and memory; keep one and call [`Host::refresh`]
/// each cycle (cheap: reads /proc/meminfo).
pub struct Host {
    sys: System,
}

/// The host could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read host capacity: {0}")]
pub struct HostError(String);

impl Host {
    pub fn new() -> Result<Host, HostError> {
        let mut sys = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .map_err(|e| HostError(e.to_string()))?;
        sys.refresh_cpu_list(CpuRefreshKind::nothing());
        Ok(Host { sys })
    }

    /// Current capacity.
    pub fn refresh(&mut self) -> HostCapacity {
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        // Logical CPUs of the host, not only those this process may use.
        let cpus = (self.sys.cpus().len() as u64).max(1);
        HostCapacity {
            cpus,
            memory_total: self.sys.total_memory(),
            memory_available: self.sys.available_memory(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_host() {
        let c = Host::new().unwrap().refresh();
        assert!(c.cpus >= 1);
        assert!(c.memory_total > 0);
        assert!(c.memory_available <= c.memory_total);
    }
}
