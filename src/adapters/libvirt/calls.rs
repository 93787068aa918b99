//! Counts the libvirt calls the adapter makes, by kind. Each counted call
//! is one round trip to the libvirt daemon; calls answered by the client
//! library alone (a domain's name, UUID or ID, "is the connection alive")
//! are not counted. Connection set-up and event registration are not
//! counted either: the counts describe what cycles cost.
//!
//! The monitor takes the difference over each cycle (`last_cycle` in
//! `/v1/status`) and metrics export the running totals
//! (`virtpool_libvirt_calls_total`).

use std::sync::atomic::{AtomicU64, Ordering};

/// One kind of libvirt call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Call {
    /// `virConnectListAllDomains`.
    List,
    /// `virConnectGetAllDomainStats`.
    BulkStats,
    /// `virDomainLookupByUUIDString` (a domain not in the last observation).
    Lookup,
    /// `virDomainGetInfo`.
    Info,
    /// `virDomainMemoryStats`.
    MemoryStats,
    /// `virDomainGetVcpusFlags(MAXIMUM)`.
    MaxVcpus,
    /// `virDomainGetXMLDesc`.
    Xml,
    /// `virDomainGetBlockIoTune`.
    GetIoTune,
    /// `virDomainGetSchedulerParametersFlags` (`cpu_shares` and the CPU
    /// quota together).
    GetCpuShares,
    /// `virDomainGetBlkioParameters`.
    GetBlkioWeight,
    /// `virDomainSetVcpusFlags`.
    SetVcpus,
    /// `virDomainSetMemoryFlags`.
    SetMemory,
    /// `virDomainSetBlockIoTune`.
    SetIoTune,
    /// `virDomainSetSchedulerParametersFlags`.
    SetCpuShares,
    /// `virDomainSetBlkioParameters`.
    SetBlkioWeight,
    /// `virDomainSetMemoryStatsPeriod`.
    SetStatsPeriod,
    /// `virDomainSetSchedulerParametersFlags` (a CPU quota and period).
    SetCpuQuota,
}

impl Call {
    /// Every kind, in label order.
    pub const ALL: [Call; 17] = [
        Call::List,
        Call::BulkStats,
        Call::Lookup,
        Call::Info,
        Call::MemoryStats,
        Call::MaxVcpus,
        Call::Xml,
        Call::GetIoTune,
        Call::GetCpuShares,
        Call::GetBlkioWeight,
        Call::SetVcpus,
        Call::SetMemory,
        Call::SetIoTune,
        Call::SetCpuShares,
        Call::SetBlkioWeight,
        Call::SetStatsPeriod,
        Call::SetCpuQuota,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Call::List => "list",
            Call::BulkStats => "bulk_stats",
            Call::Lookup => "lookup",
            Call::Info => "info",
            Call::MemoryStats => "memory_stats",
            Call::MaxVcpus => "max_vcpus",
            Call::Xml => "xml",
            Call::GetIoTune => "get_iotune",
            Call::GetCpuShares => "get_cpu_shares",
            Call::GetBlkioWeight => "get_blkio_weight",
            Call::SetVcpus => "set_vcpus",
            Call::SetMemory => "set_memory",
            Call::SetIoTune => "set_iotune",
            Call::SetCpuShares => "set_cpu_shares",
            Call::SetBlkioWeight => "set_blkio_weight",
            Call::SetStatsPeriod => "set_stats_period",
            Call::SetCpuQuota => "set_cpu_quota",
        }
    }

    /// Whether the call changes a domain.
    pub fn is_write(self) -> bool {
        self >= Call::SetVcpus
    }
}

/// Running counts, shared between the adapter (which adds) and the monitor
/// (which reads). Relaxed atomics: each count is exact, a snapshot taken
/// while calls run may mix before and after.
#[derive(Debug, Default)]
pub struct CallCounter {
    counts: [AtomicU64; Call::ALL.len()],
}

impl CallCounter {
    /// Counts one call.
    pub fn add(&self, call: Call) {
        self.counts[call as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> CallCounts {
        CallCounts(std::array::from_fn(|i| {
            self.counts[i].load(Ordering::Relaxed)
        }))
    }
}

/// Counts of each kind of call at one moment (or between two moments, see
/// [`CallCounts::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts([u64; Call::ALL.len()]);

impl CallCounts {
    pub fn get(&self, call: Call) -> u64 {
        self.0[call as usize]
    }

    /// The calls made after `earlier`.
    pub fn since(&self, earlier: &CallCounts) -> CallCounts {
        CallCounts(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    /// Calls that only read.
    pub fn reads(&self) -> u64 {
        Call::ALL
            .iter()
            .filter(|c| !c.is_write())
            .map(|c| self.get(*c))
            .sum()
    }

    /// Calls that change a domain (each attempt, failed ones included).
    pub fn writes(&self) -> u64 {
        Call::ALL
            .iter()
            .filter(|c| c.is_write())
            .map(|c| self.get(*c))
            .sum()
    }

    /// `(label, count)` of every kind.
    pub fn by_label(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Call::ALL.iter().map(|c| (c.label(), self.get(*c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_split_by_kind() {
        let c = CallCounter::default();
        c.add(Call::List);
        c.add(Call::Info);
        c.add(Call::Info);
        c.add(Call::SetMemory);
        let before = c.snapshot();
        c.add(Call::MemoryStats);
        c.add(Call::SetStatsPeriod);
        let now = c.snapshot();
        assert_eq!((now.reads(), now.writes()), (4, 2));
        let d = now.since(&before);
        assert_eq!((d.reads(), d.writes()), (1, 1));
        assert_eq!(d.get(Call::MemoryStats), 1);
        assert_eq!(d.get(Call::Info), 0);
    }

    #[test]
    fn labels_are_unique_and_writes_are_the_setters() {
        let labels: std::collections::BTreeSet<_> = Call::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), Call::ALL.len());
        for c in Call::ALL {
            assert_eq!(c.is_write(), c.label().starts_with("set_"), "{c:?}");
            assert_eq!(Call::ALL[c as usize], c, "ALL is in declaration order");
        }
    }
}
