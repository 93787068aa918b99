//! `[host]`: declared capacity, reservations and ratios, and what is allocatable.

use super::bounds::{check_at_most, MAX_BYTES, MAX_IOPS, MAX_VCPUS};
use crate::core::cpu;
use crate::core::model::{HostCapacity, PerResource};
use crate::core::units::{self, Bytes};
use serde::{Deserialize, Serialize};

/// `[host]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    cpus: Option<u64>,
    memory: Option<Bytes>,
    reserved_cpus: Option<u64>,
    reserved_memory: Option<Bytes>,
    cpu_allocation_ratio: Option<f64>,
    memory_allocation_ratio: Option<f64>,
    disk_bytes_sec: Option<Bytes>,
    disk_iops_sec: Option<u64>,
}

/// Host capacity settings (`[host]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostConfig {
    /// Declared CPUs instead of measured ones.
    pub cpus: Option<u64>,
    /// Declared memory instead of measured memory, bytes.
    pub memory: Option<u64>,
    pub reserved_cpus: u64,
    pub reserved_memory: u64,
    pub cpu_allocation_ratio: f64,
    pub memory_allocation_ratio: f64,
    pub disk_bytes_sec: Option<u64>,
    pub disk_iops_sec: Option<u64>,
}

/// Allocatable capacity per resource (0 where the host declares none).
pub type Allocatable = PerResource<u64>;

impl HostConfig {
    /// The reservations that take more than this host has, each named by
    /// its key (empty when they fit).
    pub(super) fn reservation_problems(&self, cap: &HostCapacity) -> Vec<String> {
        let mut problems = Vec::new();
        let (cpus, cpus_from) = declared_or_measured(self.cpus, "host.cpus", cap.cpus);
        if self.reserved_cpus > cpus {
            problems.push(format!(
                "host.reserved_cpus ({}) is more than the host's {cpus} CPUs ({cpus_from})",
                self.reserved_cpus
            ));
        }
        let (mem, mem_from) = declared_or_measured(self.memory, "host.memory", cap.memory_total);
        if self.reserved_memory > mem {
            problems.push(format!(
                "host.reserved_memory ({}) is more than the host's memory, {} ({mem_from})",
                units::human_bytes(self.reserved_memory),
                units::human_bytes(mem)
            ));
        }
        problems
    }

    /// Allocatable = (capacity − reserved) × ratio, per resource.
    pub fn allocatable(&self, cap: &HostCapacity) -> Allocatable {
        let cpus = self.cpus.unwrap_or(cap.cpus);
        let mem = self.memory.unwrap_or(cap.memory_total);
        let scale = |v: u64, ratio: f64| -> u64 {
            let x = (v as f64 * ratio).floor();
            if x >= u64::MAX as f64 {
                u64::MAX
            } else {
                x as u64
            }
        };
        PerResource {
            vcpus: scale(
                cpus.saturating_sub(self.reserved_cpus),
                self.cpu_allocation_ratio,
            ),
            memory: units::floor_mib(scale(
                mem.saturating_sub(self.reserved_memory),
                self.memory_allocation_ratio,
            )),
            disk_bytes_sec: self.disk_bytes_sec.unwrap_or(0),
            disk_iops_sec: self.disk_iops_sec.unwrap_or(0),
            // Real cores, not overcommitted: CPU time is a rate of the
            // host's cores (see docs/allocation.md, "CPU time").
            cpu: cpus
                .saturating_sub(self.reserved_cpus)
                .saturating_mul(cpu::MILLI),
        }
    }
}

/// The amount declared under `key`, else the one measured, with where it
/// comes from (`key` or `measured`).
fn declared_or_measured(
    declared: Option<u64>,
    key: &'static str,
    measured: u64,
) -> (u64, &'static str) {
    declared.map_or((measured, "measured"), |v| (v, key))
}

/// `[host]`, checked.
pub(super) fn build(h: RawHost, problems: &mut Vec<String>) -> HostConfig {
    let host = HostConfig {
        cpus: h.cpus,
        memory: h.memory.map(|b| b.0),
        reserved_cpus: h.reserved_cpus.unwrap_or(1),
        reserved_memory: h.reserved_memory.map_or(1 << 30, |b| b.0),
        cpu_allocation_ratio: h.cpu_allocation_ratio.unwrap_or(4.0),
        memory_allocation_ratio: h.memory_allocation_ratio.unwrap_or(1.0),
        disk_bytes_sec: h.disk_bytes_sec.map(|b| b.0),
        disk_iops_sec: h.disk_iops_sec,
    };
    if host.cpus == Some(0) {
        problems.push("host.cpus must be at least 1".into());
    }
    if host.memory == Some(0) {
        problems.push("host.memory must be more than 0".into());
    }
    for (key, v, max, bytes) in [
        ("host.cpus", host.cpus, MAX_VCPUS, false),
        ("host.memory", host.memory, MAX_BYTES, true),
        (
            "host.reserved_cpus",
            Some(host.reserved_cpus),
            MAX_VCPUS,
            false,
        ),
        (
            "host.reserved_memory",
            Some(host.reserved_memory),
            MAX_BYTES,
            true,
        ),
        ("host.disk_bytes_sec", host.disk_bytes_sec, MAX_BYTES, true),
        ("host.disk_iops_sec", host.disk_iops_sec, MAX_IOPS, false),
    ] {
        if let Some(v) = v {
            check_at_most(key, v, max, bytes, problems);
        }
    }
    for (key, v, hi) in [
        ("host.cpu_allocation_ratio", host.cpu_allocation_ratio, 64.0),
        (
            "host.memory_allocation_ratio",
            host.memory_allocation_ratio,
            4.0,
        ),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= hi) {
            problems.push(format!("{key} ({v}) must be > 0 and ≤ {hi}"));
        }
    }
    host
}
