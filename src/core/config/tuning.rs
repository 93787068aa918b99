//! `[memory]`, `[vcpus]`, `[disk]` and `[cpu]`: the planner's stability and safety knobs.

use super::bounds::{check_at_most, check_duration, MAX_BYTES, MAX_DURATION};
use super::spec::opt_bytes_amount;
use crate::core::cpu::{CpuTuning, RawCpuTuning};
use crate::core::units::{Amount, Bytes, Secs};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[memory]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemoryTuning {
    min_change: Option<Bytes>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    max_shrink: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    guest_free_min: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    target_free: Option<Amount>,
    #[serde(default, deserialize_with = "opt_bytes_amount")]
    pressure_threshold: Option<Amount>,
    stats_period: Option<Secs>,
}

/// `[vcpus]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVcpuTuning {
    cooldown: Option<Secs>,
    unplug_backoff: Option<Secs>,
}

/// `[disk]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiskTuning {
    burst_factor: Option<f64>,
}

/// Stability and safety knobs of the planner (`[memory]`, `[vcpus]`, `[disk]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuning {
    /// Memory changes smaller than this are not issued (bytes).
    pub memory_min_change: u64,
    /// Largest balloon shrink per cycle: bytes or a fraction of current memory.
    pub memory_max_shrink: Amount,
    /// Margin above guest used memory: bytes or a fraction of the domain's max memory.
    pub guest_free_min: Amount,
    /// Demand policy: free fraction to leave in the guest (0..1).
    pub target_free: f64,
    /// Host available memory below this is memory pressure: bytes or fraction of total.
    pub pressure_threshold: Amount,
    pub stats_period: Duration,
    pub vcpu_cooldown: Duration,
    /// `vcpus.unplug_backoff`: accepted for compatibility, not used. A
    /// timed-out vCPU change holds the domain's vCPUs for the rest of its
    /// run instead of being retried after a delay.
    pub vcpu_unplug_backoff: Duration,
    /// `*_max` sent with each disk rate = rate × burst_factor.
    pub disk_burst_factor: f64,
    /// `[cpu]`.
    pub cpu: CpuTuning,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            memory_min_change: 16 << 20,
            memory_max_shrink: Amount::Fraction(0.05),
            guest_free_min: Amount::Fraction(0.10),
            target_free: 0.20,
            pressure_threshold: Amount::Fraction(0.10),
            stats_period: Duration::from_secs(5),
            vcpu_cooldown: Duration::from_secs(60),
            vcpu_unplug_backoff: Duration::from_secs(300),
            disk_burst_factor: 1.0,
            cpu: CpuTuning::default(),
        }
    }
}

/// A share of the whole (`"10%"`) must be below all of it; a size may be anything.
fn below_all(key: &str, a: Amount, problems: &mut Vec<String>) {
    if let Amount::Fraction(f) = a {
        if f >= 1.0 {
            problems.push(format!("{key} ({a}) must be below 100%"));
        }
    }
}

/// `[memory]`, `[vcpus]`, `[disk]` and `[cpu]`, checked.
pub(super) fn build(
    m: RawMemoryTuning,
    vcpus: RawVcpuTuning,
    disk: RawDiskTuning,
    cpu: RawCpuTuning,
    problems: &mut Vec<String>,
) -> Tuning {
    let d = Tuning::default();
    let fraction_only =
        |key: &str, a: Option<Amount>, default: f64, problems: &mut Vec<String>| -> f64 {
            match a {
                None => default,
                Some(Amount::Fraction(f)) if f < 1.0 => f,
                Some(other) => {
                    problems.push(format!("{key} ({other}) must be a percentage below 100%"));
                    default
                }
            }
        };
    let max_shrink = m.max_shrink.unwrap_or(d.memory_max_shrink);
    if max_shrink == Amount::Absolute(0) || max_shrink == Amount::Fraction(0.0) {
        problems
            .push("memory.max_shrink must be more than 0 (it would forbid every shrink)".into());
    }
    if let Amount::Fraction(f) = max_shrink {
        if f > 1.0 {
            problems.push(format!(
                "memory.max_shrink ({max_shrink}) must be at most 100%"
            ));
        }
    }
    let guest_free_min = m.guest_free_min.unwrap_or(d.guest_free_min);
    below_all("memory.guest_free_min", guest_free_min, problems);
    let pressure_threshold = m.pressure_threshold.unwrap_or(d.pressure_threshold);
    below_all("memory.pressure_threshold", pressure_threshold, problems);
    let tuning = Tuning {
        memory_min_change: m.min_change.map_or(d.memory_min_change, |b| b.0),
        memory_max_shrink: max_shrink,
        guest_free_min,
        target_free: fraction_only("memory.target_free", m.target_free, d.target_free, problems),
        pressure_threshold,
        stats_period: m.stats_period.map_or(d.stats_period, |s| s.0),
        vcpu_cooldown: vcpus.cooldown.map_or(d.vcpu_cooldown, |s| s.0),
        vcpu_unplug_backoff: vcpus.unplug_backoff.map_or(d.vcpu_unplug_backoff, |s| s.0),
        disk_burst_factor: disk.burst_factor.unwrap_or(d.disk_burst_factor),
        cpu: cpu.build(MAX_DURATION, problems),
    };
    if !(tuning.disk_burst_factor.is_finite()
        && tuning.disk_burst_factor >= 1.0
        && tuning.disk_burst_factor <= 100.0)
    {
        problems.push(format!(
            "disk.burst_factor ({}) must be between 1.0 and 100.0 (libvirt rejects a max below the rate)",
            tuning.disk_burst_factor
        ));
    }
    for (key, d) in [
        ("memory.stats_period", tuning.stats_period),
        ("vcpus.cooldown", tuning.vcpu_cooldown),
        ("vcpus.unplug_backoff", tuning.vcpu_unplug_backoff),
    ] {
        check_duration(key, d, Duration::ZERO, MAX_DURATION, problems);
    }
    check_at_most(
        "memory.min_change",
        tuning.memory_min_change,
        MAX_BYTES,
        true,
        problems,
    );
    for (key, a) in [
        ("memory.max_shrink", tuning.memory_max_shrink),
        ("memory.guest_free_min", tuning.guest_free_min),
        ("memory.pressure_threshold", tuning.pressure_threshold),
    ] {
        if let Amount::Absolute(v) = a {
            check_at_most(key, v, MAX_BYTES, true, problems);
        }
    }
    tuning
}
