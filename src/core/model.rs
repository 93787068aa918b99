//! The shared vocabulary of virtpool: what the agent observes (an
//! [`Observation`]), what the planner decides (a [`Plan`] of [`Action`]s with
//! [`Reason`]s), in units independent of libvirt.
//!
//! Units everywhere inside the agent: vCPUs as a count, memory in bytes,
//! disk bandwidth in bytes per second, disk operations per second. Only the
//! libvirt adapter converts (libvirt speaks KiB for memory).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

pub use crate::core::cpu::{CpuQuota, QuotaScope};

/// One of the resources a pool can budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Vcpus,
    Memory,
    DiskBytesSec,
    DiskIopsSec,
    /// CPU time, in millicores (1000 = one core busy all the time).
    Cpu,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::Vcpus,
        Resource::Memory,
        Resource::DiskBytesSec,
        Resource::DiskIopsSec,
        Resource::Cpu,
    ];
    /// How many resources there are.
    pub const COUNT: usize = Resource::ALL.len();

    /// Its index in [`Resource::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Resource::Vcpus => 0,
            Resource::Memory => 1,
            Resource::DiskBytesSec => 2,
            Resource::DiskIopsSec => 3,
            Resource::Cpu => 4,
        }
    }

    /// The key used in config files, the API and metrics.
    pub fn key(self) -> &'static str {
        match self {
            Resource::Vcpus => "vcpus",
            Resource::Memory => "memory",
            Resource::DiskBytesSec => "disk_bytes_sec",
            Resource::DiskIopsSec => "disk_iops_sec",
            Resource::Cpu => "cpu",
        }
    }

    /// Formats an amount of this resource for humans ("4", "8.0 GiB",
    /// "100.0 MiB/s", "0.5 cores").
    pub fn human(self, amount: u64) -> String {
        match self {
            Resource::Vcpus => amount.to_string(),
            Resource::Memory => crate::core::units::human_bytes(amount),
            Resource::DiskBytesSec => format!("{}/s", crate::core::units::human_bytes(amount)),
            Resource::DiskIopsSec => format!("{amount} IOPS"),
            Resource::Cpu => crate::core::cpu::human_cores(amount),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A value per resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub struct PerResource<T> {
    pub vcpus: T,
    pub memory: T,
    pub disk_bytes_sec: T,
    pub disk_iops_sec: T,
    /// Absent in what was written before CPU time was a resource.
    #[serde(default)]
    pub cpu: T,
}

impl<T> PerResource<T> {
    pub fn get(&self, r: Resource) -> &T {
        match r {
            Resource::Vcpus => &self.vcpus,
            Resource::Memory => &self.memory,
            Resource::DiskBytesSec => &self.disk_bytes_sec,
            Resource::DiskIopsSec => &self.disk_iops_sec,
            Resource::Cpu => &self.cpu,
        }
    }

    pub fn get_mut(&mut self, r: Resource) -> &mut T {
        match r {
            Resource::Vcpus => &mut self.vcpus,
            Resource::Memory => &mut self.memory,
            Resource::DiskBytesSec => &mut self.disk_bytes_sec,
            Resource::DiskIopsSec => &mut self.disk_iops_sec,
            Resource::Cpu => &mut self.cpu,
        }
    }

    pub fn from_fn(mut f: impl FnMut(Resource) -> T) -> Self {
        PerResource {
            vcpus: f(Resource::Vcpus),
            memory: f(Resource::Memory),
            disk_bytes_sec: f(Resource::DiskBytesSec),
            disk_iops_sec: f(Resource::DiskIopsSec),
            cpu: f(Resource::Cpu),
        }
    }
}

/// What the host has, read from the kernel (via `sysinfo`) each cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    /// Logical CPUs.
    pub cpus: u64,
    /// Total physical memory, bytes.
    pub memory_total: u64,
    /// Memory the kernel reports available, bytes.
    pub memory_available: u64,
}

/// libvirt run state, reduced to what the agent distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running,
    Paused,
    Shutoff,
    /// Crashed, pmsuspended, shutting down, blocked, no state.
    Other,
}

impl DomainState {
    /// Running and paused domains hold allocations; others hold nothing.
    pub fn is_active(self) -> bool {
        matches!(self, DomainState::Running | DomainState::Paused)
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::Shutoff => "shut off",
            DomainState::Other => "other",
        })
    }
}

/// Guest memory statistics from the balloon driver, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Current balloon size (what the guest has).
    pub actual: u64,
    /// Memory the guest reports unused, if it reports it.
    pub unused: Option<u64>,
    /// Memory the guest sees in total (MemTotal), if reported.
    pub available: Option<u64>,
    /// Memory the guest could use without swapping (MemAvailable), if reported.
    pub usable: Option<u64>,
}

impl BalloonStats {
    /// Memory the guest cannot give back, in the balloon's terms, when the
    /// guest reports enough to say: the balloon's size less what the guest
    /// could still use (`actual - usable`: reclaimable caches count as
    /// free), falling back to `actual - unused`. Counted against the
    /// balloon rather than the guest's MemTotal: the part of the balloon
    /// the guest never sees (its kernel's reserved memory, about 42 MiB of
    /// a 512 MiB guest) is taken too, so a balloon set to used + margin
    /// leaves the guest that margin free.
    pub fn used(&self) -> Option<u64> {
        let free = self.usable.or(self.unused)?;
        Some(self.actual.saturating_sub(free))
    }
}

/// Block I/O limits on one disk as libvirt reports them (0 = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoTune {
    pub total_bytes_sec: u64,
    pub total_bytes_sec_max: u64,
    pub total_iops_sec: u64,
    pub total_iops_sec_max: u64,
}

/// One disk of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskObs {
    /// Target device name, e.g. `vda` (shared with the actions on it).
    pub target: Arc<str>,
    /// `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    pub readonly: bool,
    /// Current limits; `None` when they could not be read.
    pub iotune: Option<IoTune>,
}

impl DiskObs {
    /// Whether this disk takes part in the domain's disk I/O allocation.
    pub fn is_tunable(&self) -> bool {
        self.device == "disk" && !self.readonly
    }
}

fn yes() -> bool {
    true
}

/// Everything the agent knows about one domain at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainObs {
    /// Shared with the plans made from this observation (cloning is a
    /// reference count, not a copy).
    pub name: Arc<str>,
    pub uuid: Arc<str>,
    /// libvirt's ID of the running domain: set while it is active, new on
    /// every start (the same across a guest reboot or a libvirtd restart).
    #[serde(default)]
    pub id: Option<u32>,
    pub state: DomainState,
    /// Live vCPUs (current), 0 when shut off.
    pub vcpus: u64,
    /// Maximum vCPUs the domain can hot-plug to.
    pub vcpus_max: u64,
    /// Current memory (balloon target), bytes.
    pub memory: u64,
    /// Maximum memory, bytes.
    pub memory_max: u64,
    /// Guest balloon statistics, when the guest reports them.
    pub balloon: Option<BalloonStats>,
    /// Read from the domain XML and kept by the adapter's read cache:
    /// shared between the cache and every observation made from it.
    pub disks: Arc<[DiskObs]>,
    /// Pool named in the domain's `<virtpool:pool>` metadata element.
    pub metadata_pool: Option<String>,
    /// It has a memory balloon device (`<memballoon model='none'/>` has
    /// none: its memory is reported, not managed).
    #[serde(default = "yes")]
    pub balloon_device: bool,
    /// CPU weight (`cpu_shares` scheduler parameter), if read.
    pub cpu_shares: Option<u64>,
    /// blkio weight, if read.
    pub blkio_weight: Option<u64>,
    /// CPU-time limit (scheduler quota and period), if the hypervisor has
    /// one (`None`: it offers neither `global_quota` nor `vcpu_quota`).
    #[serde(default)]
    pub cpu_quota: Option<CpuQuota>,
    /// CPU time the domain has used since it started, nanoseconds
    /// (libvirt's `cpu.time`), when read.
    #[serde(default)]
    pub cpu_time: Option<u64>,
    /// CPU time it used per second of late (millicores), from the change
    /// of `cpu_time` since an earlier observation; `None` until two
    /// observations of the same run exist (filled by the agent).
    #[serde(default)]
    pub cpu_used: Option<u64>,
    /// Seconds since the agent first saw this domain active (admission order:
    /// oldest first). `None` when not active.
    pub active_secs: Option<u64>,
}

impl DomainObs {
    /// A domain that has just started, of which only its size is known:
    /// `vcpus` and `memory` bytes (its maximums too), no disks, no balloon
    /// statistics, no pool metadata, no tunables read.
    pub fn started(name: &str, uuid: &str, vcpus: u64, memory: u64) -> DomainObs {
        DomainObs {
            name: name.into(),
            uuid: uuid.into(),
            id: None,
            state: DomainState::Running,
            vcpus,
            vcpus_max: vcpus,
            memory,
            memory_max: memory,
            balloon: None,
            disks: Arc::from([]),
            metadata_pool: None,
            balloon_device: true,
            cpu_shares: None,
            blkio_weight: None,
            cpu_quota: None,
            cpu_time: None,
            cpu_used: None,
            active_secs: Some(0),
        }
    }

    /// The observed amount of a resource. Disk rates sum the tunable disks'
    /// current limits (0 = unlimited on any disk makes the sum unlimited: 0).
    pub fn actual(&self, r: Resource) -> u64 {
        match r {
            Resource::Vcpus => self.vcpus,
            Resource::Cpu => self.cpu_limit(),
            Resource::Memory => self.memory,
            Resource::DiskBytesSec | Resource::DiskIopsSec => {
                let mut sum = 0u64;
                for d in self.disks.iter().filter(|d| d.is_tunable()) {
                    let v = d.iotune.map_or(0, |t| {
                        if r == Resource::DiskBytesSec {
                            t.total_bytes_sec
                        } else {
                            t.total_iops_sec
                        }
                    });
                    if v == 0 {
                        return 0;
                    }
                    sum = sum.saturating_add(v);
                }
                sum
            }
        }
    }
}

impl DomainObs {
    /// Its CPU-time limit in millicores: all its online vCPUs when nothing
    /// limits it (or the hypervisor has no quota).
    pub fn cpu_limit(&self) -> u64 {
        match self.cpu_quota {
            Some(q) => q.millicores(self.vcpus),
            None => self.vcpus.saturating_mul(crate::core::cpu::MILLI),
        }
    }

    /// Updates this observation with the effect of an action libvirt
    /// accepted, so what the agent publishes after a cycle is what the
    /// domain has now (not what it had before the cycle).
    pub fn apply(&mut self, action: &Action) {
        match action {
            Action::SetVcpus { to, .. } => self.vcpus = *to,
            Action::SetMemory { to, .. } => self.memory = *to,
            Action::SetBlockIoTune { disk, to, .. } => {
                if let Some(i) = self.disks.iter().position(|d| &d.target == disk) {
                    Arc::make_mut(&mut self.disks)[i].iotune = Some(*to);
                }
            }
            Action::SetCpuShares { to, .. } => self.cpu_shares = Some(*to),
            Action::SetBlkioWeight { to, .. } => self.blkio_weight = Some(*to),
            Action::SetCpuQuota { quota, .. } => self.cpu_quota = Some(*quota),
            Action::SetStatsPeriod { .. } => {}
        }
    }
}

/// What one cycle observed of the whole host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub host: HostCapacity,
    pub domains: Vec<DomainObs>,
}

/// Why a target has the value it has. Machine-readable; shown by status,
/// logs and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its weighted share of the pool budget.
    Share,
    /// Held at its floor (reservation or guest need).
    Floor,
    /// Capped by the member's configured `max`.
    Max,
    /// Capped by the domain's hardware maximum.
    HardwareMax,
    /// Capped by guest demand (memory policy `demand`).
    Demand,
    /// Lowered because the host is short of memory.
    Pressure,
    /// Shrink limited by `memory.max_shrink`.
    RateLimited,
    /// Change smaller than the dead band: left as is.
    DeadBand,
    /// vCPU change waiting for `vcpus.cooldown`.
    Cooldown,
    /// A vCPU removal the hypervisor has not completed yet.
    Pending,
    /// Floors did not fit the budget: left untouched.
    Unadmitted,
    /// The pool (or the agent) is paused: left untouched.
    Paused,
    /// The domain is paused: its changes wait until it runs (a paused
    /// guest answers no balloon or vCPU request).
    DomainPaused,
    /// The domain has no balloon device: its memory is reported, not
    /// managed.
    NoBalloon,
    /// Set back to what it had before the agent changed it (the domain
    /// left management).
    Released,
    /// The hypervisor offers no CPU quota for the domain (neither
    /// `global_quota` nor `vcpu_quota`): its CPU time is planned and
    /// reported, not set.
    NoQuota,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// A change to make on a live domain. Domains are named by UUID (stable
/// across renames); the name is carried for logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    SetVcpus {
        uuid: Arc<str>,
        domain: Arc<str>,
        from: u64,
        to: u64,
        reason: Reason,
        /// Also write the persistent config.
        persist: bool,
    },
    SetMemory {
        uuid: Arc<str>,
        domain: Arc<str>,
        /// Bytes.
        from: u64,
        /// Bytes (a multiple of 1 MiB).
        to: u64,
        reason: Reason,
        /// Also write the persistent config.
        persist: bool,
    },
    SetBlockIoTune {
        uuid: Arc<str>,
        domain: Arc<str>,
        disk: Arc<str>,
        from: IoTune,
        to: IoTune,
        persist: bool,
    },
    SetCpuShares {
        uuid: Arc<str>,
        domain: Arc<str>,
        from: Option<u64>,
        to: u64,
        persist: bool,
    },
    SetBlkioWeight {
        uuid: Arc<str>,
        domain: Arc<str>,
        from: Option<u64>,
        to: u64,
        persist: bool,
    },
    /// A CPU-time limit: the scheduler quota and period of the whole
    /// domain (or of each vCPU where libvirt has no global quota).
    SetCpuQuota {
        uuid: Arc<str>,
        domain: Arc<str>,
        /// Millicores it had.
        from: u64,
        /// Millicores it gets (every online vCPU's worth: no limit).
        to: u64,
        /// What libvirt had (given back when the domain is released).
        was: Option<CpuQuota>,
        /// What is written.
        quota: CpuQuota,
        reason: Reason,
        persist: bool,
    },
    /// How often the guest's balloon driver reports memory statistics
    /// (seconds): set once per run of a domain whose memory is managed,
    /// so that guest statistics exist. Not an allocation change: not in
    /// the cycle's results or the audit log.
    SetStatsPeriod {
        uuid: Arc<str>,
        domain: Arc<str>,
        secs: u32,
    },
}

impl Action {
    /// The domain it changes: (UUID, name).
    /// The UUID and name of the domain it changes, shared with the
    /// observation it was planned from.
    pub fn names(&self) -> (&Arc<str>, &Arc<str>) {
        match self {
            Action::SetVcpus { uuid, domain, .. }
            | Action::SetMemory { uuid, domain, .. }
            | Action::SetBlockIoTune { uuid, domain, .. }
            | Action::SetCpuShares { uuid, domain, .. }
            | Action::SetBlkioWeight { uuid, domain, .. }
            | Action::SetCpuQuota { uuid, domain, .. }
            | Action::SetStatsPeriod { uuid, domain, .. } => (uuid, domain),
        }
    }

    pub fn uuid(&self) -> &str {
        self.names().0
    }

    pub fn domain(&self) -> &str {
        self.names().1
    }

    /// Short label of what is changed, for logs and metrics.
    pub fn resource_label(&self) -> &'static str {
        match self {
            Action::SetVcpus { .. } => "vcpus",
            Action::SetMemory { .. } => "memory",
            Action::SetBlockIoTune { .. } => "block_iotune",
            Action::SetCpuShares { .. } => "cpu_shares",
            Action::SetBlkioWeight { .. } => "blkio_weight",
            Action::SetCpuQuota { .. } => "cpu",
            Action::SetStatsPeriod { .. } => "stats_period",
        }
    }

    /// Whether the action changes what a domain is allocated (everything
    /// but the balloon statistics period): these are the cycle's results,
    /// logged and audited.
    pub fn is_allocation(&self) -> bool {
        !matches!(self, Action::SetStatsPeriod { .. })
    }
}
