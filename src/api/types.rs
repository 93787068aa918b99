//! The typed requests and responses of the control API, shared by the
//! server (`virtpoold`) and the client (`virtpoolctl`) so the two can't
//! drift. Every request body rejects unknown fields.
//!
//! Units: vCPUs and IOPS are counts, memory and disk bandwidth are bytes
//! (bytes per second), CPU time is millicores (1000 = one core). Request
//! bodies accept sizes as integers (bytes) or strings with a unit
//! (`"4GiB"`), CPU time as cores (`0.5`, `"650%"`); responses always carry
//! integers.

use crate::agent::report::{CycleInfo, LibvirtStatus};
use crate::core::config::Mode;
use crate::core::cpu::Cores;
use crate::core::membership::Via;
use crate::core::model::{Action, DomainState, HostCapacity, PerResource, Reason, Resource};
use crate::core::planner::Release;
use crate::core::units::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::core::config::PoolSpec;

/// API version prefix.
pub const PREFIX: &str = "/v1";
/// Largest accepted request body, bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest accepted vCPU amount in a request (the config's bound).
pub const MAX_VCPUS: u64 = crate::core::config::MAX_VCPUS;
/// Largest accepted byte amount (memory, disk bandwidth) in a request: 1 EiB.
pub const MAX_BYTES: u64 = crate::core::config::MAX_BYTES;
/// Largest accepted IOPS amount in a request.
pub const MAX_IOPS: u64 = crate::core::config::MAX_IOPS;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// `bad_request`, `invalid_json`, `forbidden`, `not_found`, ...
    pub code: String,
    pub message: String,
}

/// Query string of every change: `?wait=true` returns after the cycle the
/// change triggered has run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    #[serde(default)]
    pub wait: bool,
}

// ------------------------------------------------------------------ requests

/// `POST /v1/pools/{pool}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Domain name or UUID.
    pub domain: String,
    /// Take the domain from the pool it is in (refused without).
    #[serde(default, rename = "move", skip_serializing_if = "std::ops::Not::not")]
    pub move_: bool,
}

/// `PUT /v1/pools/{pool}`: the pool, in the shape of a `[pools.NAME]`
/// table ([`PoolSpec`]), and `"move": true` to take the domains it lists
/// from the pools they are in (refused without).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutPool {
    pub spec: PoolSpec,
    pub move_: bool,
}

impl Serialize for PutPool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut v = serde_json::to_value(&self.spec).map_err(S::Error::custom)?;
        if let (true, Some(m)) = (self.move_, v.as_object_mut()) {
            m.insert("move".into(), serde_json::Value::Bool(true));
        }
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PutPool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let move_ = match map.remove("move") {
            None => false,
            Some(serde_json::Value::Bool(b)) => b,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "move: expected true or false, found {other}"
                )))
            }
        };
        // The spec's own errors keep their path (`vcpus.budget: ...`).
        let spec = serde_path_to_error::deserialize(serde_json::Value::Object(map))
            .map_err(D::Error::custom)?;
        Ok(PutPool { spec, move_ })
    }
}

/// `POST /v1/pools/{pool}/allocate`: sets the member's reservation (its
/// guaranteed minimum) of each given resource to the given amount.
/// `POST /v1/pools/{pool}/release`: lowers each given reservation by the
/// given amount (to zero at most, which clears it); with no amount, clears
/// every reservation of the member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// Domain name or UUID.
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    /// Bytes, or a size like `"4GiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    /// Bytes per second, or a size like `"100MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes_sec: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_iops_sec: Option<u64>,
    /// CPU time: cores (`0.5`, `"0.5"`) or a percentage of one core
    /// (`"50%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cores>,
}

impl Reservation {
    /// The requested amounts per resource.
    pub fn amounts(&self) -> PerResource<Option<u64>> {
        PerResource {
            vcpus: self.vcpus,
            memory: self.memory.map(|b| b.0),
            disk_bytes_sec: self.disk_bytes_sec.map(|b| b.0),
            disk_iops_sec: self.disk_iops_sec,
            cpu: self.cpu.map(|c| c.0),
        }
    }

    /// Whether no resource is named.
    pub fn is_empty(&self) -> bool {
        Resource::ALL
            .iter()
            .all(|r| self.amounts().get(*r).is_none())
    }
}

/// Largest amount a request may carry for a resource.
pub fn max_amount(r: Resource) -> u64 {
    crate::core::config::max_amount(r)
}

// ----------------------------------------------------------------- responses

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub agent: AgentInfo,
    pub libvirt: LibvirtStatus,
    /// Cycles run since start (0 before the first).
    pub cycle: u64,
    pub last_cycle: Option<CycleInfo>,
    /// The host as measured (see `capacity` for what the agent uses).
    pub host: Option<HostCapacity>,
    /// Allocatable capacity from the last plan.
    pub allocatable: Option<PerResource<u64>>,
    /// The host's available memory was below the pressure threshold in
    /// the last plan (memory targets lowered). Absent when it was not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_pressure: bool,
    /// The capacity the last cycle used: declared (`[host]`) beside
    /// measured, reserved, ratios, allocatable, host memory pressure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<crate::core::capacity::Capacity>,
    pub pools: usize,
    pub domains: DomainCounts,
    /// The last config / runtime state error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
}

/// The agent itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub mode: Mode,
    /// Agent-wide pause (runtime).
    pub paused: bool,
    /// Pools paused at run time.
    pub paused_pools: Vec<String>,
}

/// How many domains are where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainCounts {
    pub total: usize,
    pub active: usize,
    pub managed: usize,
    pub unmanaged: usize,
    /// Active members whose floors did not fit their pool's budget.
    pub unadmitted: usize,
}

/// `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolsResponse {
    pub pools: Vec<PoolView>,
}

/// Where a pool is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolSource {
    Config,
    Runtime,
}

/// One pool: budget, allocated, free, members. `GET /v1/pools/{pool}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub source: PoolSource,
    /// Its members are left untouched: paused in the config file, or
    /// through the API (shown at once, before the next cycle).
    pub paused: bool,
    /// `None` for resources the pool does not manage.
    #[serde(with = "sparse")]
    pub budget: PerResource<Option<u64>>,
    /// Σ targets of admitted active members.
    pub allocated: PerResource<u64>,
    #[serde(with = "sparse")]
    pub free: PerResource<Option<u64>>,
    /// Σ runtime reservations of the members.
    pub reserved: PerResource<u64>,
    /// Number of members (also when `members` is left out).
    pub member_count: usize,
    /// Empty with `GET /v1/pools?members=false`.
    pub members: Vec<MemberView>,
    /// Names of active members whose floors did not fit.
    pub unadmitted: Vec<String>,
    /// Domains added to the pool through the API that no cycle has
    /// planned yet: members from the next cycle on. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// Members removed from the pool through the API that the last cycle
    /// still planned: they leave with the next cycle. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<String>,
}

/// One member of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    pub via: Via,
    pub admitted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Runtime reservation per resource (set with `allocate`).
    #[serde(with = "sparse")]
    pub reservation: PerResource<Option<u64>>,
    /// Per managed resource; `None` when unmanaged or the domain is inactive.
    #[serde(with = "sparse")]
    pub resources: PerResource<Option<ResourceView>>,
}

/// One member's allocation of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceView {
    /// Guaranteed amount (reservation, guest need).
    pub floor: u64,
    /// Most it may get; `null` when nothing caps it (a disk rate without a
    /// `max`: up to the pool's budget). Never `u64::MAX`, which most JSON
    /// readers (jq, JavaScript) cannot represent.
    pub cap: Option<u64>,
    pub shares: u64,
    /// Its fair allocation.
    pub target: u64,
    /// What this cycle sets (moves toward target within stability rules).
    pub next: u64,
    /// What libvirt reports.
    pub actual: u64,
    /// What the guest uses: memory, when the guest reports it; CPU time,
    /// once two observations measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    pub reason: Reason,
}

/// `GET /v1/domains`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainsResponse {
    pub domains: Vec<DomainView>,
}

/// One domain as last observed, with its pool. `GET /v1/domains/{domain}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainView {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    /// Its pool, `None` when unmanaged.
    pub pool: Option<String>,
    pub via: Option<Via>,
    pub admitted: Option<bool>,
    pub vcpus: u64,
    pub vcpus_max: u64,
    pub memory: u64,
    pub memory_max: u64,
    /// Guest used memory, when the guest reports it.
    pub memory_used: Option<u64>,
    /// CPU time it used per second of late (millicores), once measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_used: Option<u64>,
    /// Its CPU-time limit (millicores), when a scheduler quota limits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<u64>,
    /// Tunable disks (target names).
    pub disks: Vec<String>,
    #[serde(with = "sparse")]
    pub reservation: PerResource<Option<u64>>,
    /// The member's allocation (managed, active domains only).
    #[serde(with = "sparse")]
    pub resources: PerResource<Option<ResourceView>>,
    /// An unmanaged domain the agent changed while it was managed: where
    /// giving that back stands (`giving`, `waiting`, or `{"done":
    /// "restored"|"kept"}`). Absent when the agent never changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
}

/// `GET /v1/plan`: what the next cycle would do, with reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanResponse {
    /// Cycle whose observation the plan was computed from.
    pub cycle: u64,
    pub mode: Mode,
    /// Agent paused or observe mode: the actions would not be issued.
    pub paused: bool,
    pub allocatable: PerResource<u64>,
    pub pressure: bool,
    pub actions: Vec<PlannedAction>,
    pub pools: Vec<PoolView>,
}

/// One action with its reason in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    pub pool: Option<String>,
    pub action: Action,
}

/// Answer to every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeResponse {
    /// What was done, in words.
    pub message: String,
    /// Whether anything changed (false for an idempotent repeat).
    pub changed: bool,
    /// With `?wait=true`: the cycle that ran after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<CycleResult>,
}

/// `POST /v1/pools/{pool}/allocate` and `/release`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReservationResponse {
    pub pool: String,
    pub domain: String,
    /// The member's reservations after the change.
    #[serde(with = "sparse")]
    pub reservation: PerResource<Option<u64>>,
    pub changed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<CycleResult>,
}

/// A cycle's outcome, for `?wait=true` and `POST /v1/reconcile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleResult {
    pub cycle: u64,
    pub actions: usize,
    pub failed: usize,
    pub libvirt_connected: bool,
}

/// `POST /v1/reconcile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileResponse {
    /// Whether the call waited for the cycle (`?wait=true`).
    pub waited: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<CycleResult>,
}

/// `POST /v1/reload`: the config file was valid and is in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadResponse {
    /// The file read.
    pub file: String,
    /// Changed settings that apply only on restart (they keep their
    /// running values until then).
    #[serde(default)]
    pub restart_only: Vec<String>,
    /// Runtime state entries that no longer fit the file (of a pool it no
    /// longer has, a runtime pool whose name it now uses, ...): taken out
    /// of the state and kept in `set_aside_file`. The rest stays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_aside: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_aside_file: Option<String>,
}

/// `GET /v1/events`: records of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsResponse {
    /// Oldest first.
    pub events: Vec<Event>,
}

/// An audit record and what happened, as written to `audit.jsonl`.
pub use crate::agent::audit::{Event, EventKind};

/// `GET /v1/pools` query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsQuery {
    /// `false`: budgets and totals only, no member list (default `true`).
    #[serde(default)]
    pub members: Option<bool>,
}

/// Serde adapter: a per-resource value with absent resources left out of
/// the JSON (`{"vcpus": 4}` rather than four keys with nulls) — pool views
/// of a thousand members stay small.
mod sparse {
    use crate::core::model::PerResource;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct Ref<'a, T> {
        #[serde(skip_serializing_if = "Option::is_none")]
        vcpus: Option<&'a T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        memory: Option<&'a T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        disk_bytes_sec: Option<&'a T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        disk_iops_sec: Option<&'a T>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cpu: Option<&'a T>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Owned<T> {
        #[serde(default = "Option::default")]
        vcpus: Option<T>,
        #[serde(default = "Option::default")]
        memory: Option<T>,
        #[serde(default = "Option::default")]
        disk_bytes_sec: Option<T>,
        #[serde(default = "Option::default")]
        disk_iops_sec: Option<T>,
        #[serde(default = "Option::default")]
        cpu: Option<T>,
    }

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &PerResource<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        Ref {
            vcpus: v.vcpus.as_ref(),
            memory: v.memory.as_ref(),
            disk_bytes_sec: v.disk_bytes_sec.as_ref(),
            disk_iops_sec: v.disk_iops_sec.as_ref(),
            cpu: v.cpu.as_ref(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<PerResource<Option<T>>, D::Error> {
        let o = Owned::<T>::deserialize(d)?;
        Ok(PerResource {
            vcpus: o.vcpus,
            memory: o.memory,
            disk_bytes_sec: o.disk_bytes_sec,
            disk_iops_sec: o.disk_iops_sec,
            cpu: o.cpu,
        })
    }
}

/// `GET /v1/events` query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with `seq` greater than this.
    #[serde(default)]
    pub since: Option<u64>,
    /// Only events with `seq` less than this: with the first `seq` of an
    /// answer, pages back through older events.
    #[serde(default)]
    pub before: Option<u64>,
    /// At most this many (the newest), default 100, at most 1000.
    #[serde(default)]
    pub limit: Option<usize>,
}
