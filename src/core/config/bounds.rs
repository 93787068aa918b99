//! Defaults and bounds of the settings, and the checks that name the key, the value and the range.

use crate::core::cpu;
use crate::core::model::Resource;
use crate::core::units;
use std::path::Path;
use std::time::Duration;

/// Default place of the config file.
pub const DEFAULT_PATH: &str = "/etc/virtpool/virtpool.toml";
/// Shares a member gets when none are configured.
pub const DEFAULT_SHARES: u64 = 1000;
/// Largest accepted `shares` value.
pub const MAX_SHARES: u64 = 1_000_000;
/// Default `agent.audit_max_size`: rotate the audit log past this.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 10 << 20;
/// Default `agent.audit_keep`: rotated audit files kept.
pub const DEFAULT_AUDIT_KEEP: usize = 3;
/// Default `agent.resync_interval`: slow facts read again at the latest
/// after this.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);

/// Smallest `agent.audit_max_size` (a rotation per few hundred records
/// below that would lose history for nothing).
pub const MIN_AUDIT_BYTES: u64 = 64 << 10;
/// Largest `agent.audit_max_size`.
pub const MAX_AUDIT_BYTES: u64 = 1 << 30;
/// Most rotated audit files (`agent.audit_keep`).
pub const MAX_AUDIT_KEEP: u64 = 100;

/// Largest vCPU amount anywhere (budgets, `min`, `max`, reservations,
/// `host.cpus`): 65,536.
pub const MAX_VCPUS: u64 = 1 << 16;
/// Largest byte amount (memory, disk bandwidth): 1 EiB.
pub const MAX_BYTES: u64 = 1 << 60;
/// Largest IOPS amount.
pub const MAX_IOPS: u64 = 1 << 40;

/// Largest amount of a resource, in its unit, in the config file, in an
/// API request and in the state file.
pub fn max_amount(r: Resource) -> u64 {
    match r {
        Resource::Vcpus => MAX_VCPUS,
        Resource::Memory | Resource::DiskBytesSec => MAX_BYTES,
        Resource::DiskIopsSec => MAX_IOPS,
        Resource::Cpu => cpu::MAX_MILLI,
    }
}

/// Shortest `agent.interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest duration of any setting (`agent.interval`,
/// `agent.resync_interval`, `memory.stats_period`, `vcpus.cooldown`,
/// `vcpus.unplug_backoff`): one day. Timers and deadlines are computed
/// from them; nothing longer is useful.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A duration outside `[min, max]`: the key, the value and the range.
pub(super) fn check_duration(
    key: &str,
    d: Duration,
    min: Duration,
    max: Duration,
    problems: &mut Vec<String>,
) {
    if d < min || d > max {
        problems.push(format!(
            "{key} ({}) is out of range: {} to {}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
}

/// An amount above the largest of its kind: the key, the value, the bound.
pub(super) fn check_at_most(key: &str, v: u64, max: u64, bytes: bool, problems: &mut Vec<String>) {
    if v > max {
        let show = |x: u64| {
            if bytes {
                units::human_bytes(x)
            } else {
                x.to_string()
            }
        };
        problems.push(format!(
            "{key} ({}) is out of range: at most {}",
            show(v),
            show(max)
        ));
    }
}

/// A path setting (`agent.state_dir`, `api.socket`) must be absolute: the
/// agent's working directory is not a place to keep anything.
pub(super) fn check_path(key: &str, p: &Path, problems: &mut Vec<String>) {
    if p.as_os_str().is_empty() {
        problems.push(format!("{key} is empty: give an absolute path"));
    } else if !p.is_absolute() {
        problems.push(format!("{key} ({}) is not an absolute path", p.display()));
    }
}
