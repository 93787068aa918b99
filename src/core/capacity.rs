//! What the host has and what the pools may share, as one cycle planned
//! with it: the capacity declared in `[host]` beside the one measured on
//! the machine (the declared one wins), the reservations, the allocation
//! ratios, the allocatable result, and host memory pressure.

use crate::core::config::{Allocatable, HostConfig, Tuning};
use crate::core::model::HostCapacity;
use serde::{Deserialize, Serialize};

/// One capacity: measured on the machine, declared in `[host]`, and the
/// one used (the declared one when there is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `host.cpus` / `host.memory`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<u64>,
    pub measured: u64,
    pub used: u64,
}

impl Source {
    fn of(declared: Option<u64>, measured: u64) -> Source {
        Source {
            declared,
            measured,
            used: declared.unwrap_or(measured),
        }
    }
}

/// CPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusMemory<T> {
    pub cpus: T,
    pub memory: T,
}

/// Host memory against `memory.pressure_threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    /// Memory available on the host (measured), bytes.
    pub available: u64,
    /// Below this the host is under memory pressure, bytes.
    pub threshold: u64,
    /// `available` < `threshold`: members' memory targets are lowered.
    pub under: bool,
}

/// The host's capacity as a cycle used it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// CPUs (count) and memory (bytes): declared, measured, used.
    pub host: CpusMemory<Source>,
    /// `host.reserved_cpus`, `host.reserved_memory` (bytes).
    pub reserved: CpusMemory<u64>,
    /// `host.cpu_allocation_ratio`, `host.memory_allocation_ratio`.
    pub ratio: CpusMemory<f64>,
    /// (used − reserved) × ratio, per resource (disk capacities as
    /// declared, 0 when not).
    pub allocatable: Allocatable,
    pub memory_pressure: Pressure,
}

impl Capacity {
    /// The capacity under `host` and `tuning` of a machine that measured
    /// `measured`.
    pub fn of(host: &HostConfig, tuning: &Tuning, measured: &HostCapacity) -> Capacity {
        let threshold = tuning.pressure_threshold.resolve(measured.memory_total);
        Capacity {
            host: CpusMemory {
                cpus: Source::of(host.cpus, measured.cpus),
                memory: Source::of(host.memory, measured.memory_total),
            },
            reserved: CpusMemory {
                cpus: host.reserved_cpus,
                memory: host.reserved_memory,
            },
            ratio: CpusMemory {
                cpus: host.cpu_allocation_ratio,
                memory: host.memory_allocation_ratio,
            },
            allocatable: host.allocatable(measured),
            memory_pressure: Pressure {
                available: measured.memory_available,
                threshold,
                under: measured.memory_available < threshold,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Config;
    use std::path::Path;

    #[test]
    fn declared_beside_measured() {
        let c = Config::parse(
            "[host]\ncpus = 32\nmemory = \"64GiB\"\n[memory]\npressure_threshold = \"4GiB\"\n",
            Path::new("t.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let m = HostCapacity {
            cpus: 2,
            memory_total: 23 << 30,
            memory_available: 3 << 30,
        };
        let cap = Capacity::of(&c.host, &c.tuning, &m);
        assert_eq!(
            cap.host.cpus,
            Source {
                declared: Some(32),
                measured: 2,
                used: 32
            }
        );
        assert_eq!(cap.host.memory.used, 64 << 30);
        assert_eq!(cap.host.memory.measured, 23 << 30);
        assert_eq!((cap.reserved.cpus, cap.reserved.memory), (1, 1 << 30));
        assert_eq!(cap.allocatable.vcpus, 124);
        assert_eq!(cap.allocatable.memory, 63 << 30);
        assert_eq!(
            cap.memory_pressure,
            Pressure {
                available: 3 << 30,
                threshold: 4 << 30,
                under: true
            }
        );
        let plain =
            Config::parse("[agent]\n", Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        let cap = Capacity::of(&plain.host, &plain.tuning, &m);
        assert_eq!(cap.host.cpus.declared, None);
        assert_eq!(cap.host.cpus.used, 2);
        assert_eq!(cap.allocatable.vcpus, 4);
    }
}
