//! [`Libvirt`]: the [`Hypervisor`] over a real libvirt connection.
//!
//! An observation lists the domains and keeps their handles, by UUID, until
//! the next one: the actions that follow use them (a domain the last
//! observation did not see is looked up by UUID). Handles are dropped on
//! disconnect.
//! Memory is converted between bytes (agent) and KiB (libvirt) here only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState as VirtState};
use virt::error::{Error as VirtError, ErrorDomain, ErrorNumber};
use virt::sys;

use super::cache::{ReadCache, Slow, StaleMarks};
use super::calls::{Call, CallCounter};
use super::events::{EventSender, Registration};
use super::{ffi, xml, HvError, Hypervisor};
use crate::core::model::{Action, BalloonStats, DiskObs, DomainObs, DomainState, IoTune};

/// Lowest and highest blkio weight accepted (cgroup v1 and v2 safe).
pub const BLKIO_WEIGHT_RANGE: std::ops::RangeInclusive<u64> = 100..=1000;
/// Lowest and highest `cpu_shares` accepted (cgroup v2 `cpu.weight` tops
/// out at 10000; libvirt passes larger values through and the kernel
/// rejects them).
pub const CPU_SHARES_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;

const KIB: u64 = 1024;

// Memory and vCPU setters take their own flag enums; `with_persist` passes
// the generic AFFECT_* values, which libvirt defines to be the same bits.
const _: () = assert!(
    sys::VIR_DOMAIN_MEM_LIVE == sys::VIR_DOMAIN_AFFECT_LIVE
        && sys::VIR_DOMAIN_MEM_CONFIG == sys::VIR_DOMAIN_AFFECT_CONFIG
        && sys::VIR_DOMAIN_VCPU_LIVE == sys::VIR_DOMAIN_AFFECT_LIVE
        && sys::VIR_DOMAIN_VCPU_CONFIG == sys::VIR_DOMAIN_AFFECT_CONFIG
);

static QUIET_ERRORS: Once = Once::new();

/// A libvirt connection (opened lazily by [`Hypervisor::connect`]).
#[derive(Debug)]
pub struct Libvirt {
    uri: String,
    conn: Option<Connect>,
    /// Where lifecycle/close events go (see [`super::events`]).
    events: Option<EventSender>,
    /// The callbacks registered on `conn`.
    registration: Option<Registration>,
    /// What the driver lacks (learnt on this connection).
    caps: ReadCaps,
    /// Handles of the domains of the last observation, by UUID: the
    /// actions that follow use them instead of a lookup round trip each.
    /// Replaced by every observation, dropped on disconnect.
    handles: HashMap<Arc<str>, Domain>,
    /// Slow facts kept between observations (see [`super::cache`]).
    cache: ReadCache,
    /// Domains the event callbacks marked as changed.
    stale: StaleMarks,
    /// Domains read in full (not from the cache) by the last observation.
    full_reads: usize,
    /// The calls made (see [`super::calls`]).
    calls: Arc<CallCounter>,
}

/// Where a libvirt error came from, for the message.
struct Failure {
    err: VirtError,
    what: String,
}

impl Failure {
    fn new(err: VirtError, what: impl Into<String>) -> Failure {
        Failure {
            err,
            what: what.into(),
        }
    }
}

type Res<T> = Result<T, Failure>;

/// Maps a libvirt error to the agent's terms (without looking at the
/// connection; [`Libvirt`] additionally checks `is_alive()`).
pub fn classify(err: &VirtError, what: &str) -> HvError {
    classify_parts(err.code(), err.domain(), err.message(), what)
}

/// [`classify`] on the parts of an error (testable without libvirt).
pub fn classify_parts(
    code: virt::error::ErrorNumberEnum,
    domain: virt::error::ErrorDomainEnum,
    msg: &str,
    what: &str,
) -> HvError {
    let text = format!("{what}: {msg}");
    let lower = msg.to_ascii_lowercase();
    if code.is(ErrorNumber::NoDomain) {
        HvError::NoDomain(text)
    } else if code.is(ErrorNumber::InvalidArg) {
        HvError::InvalidArg(text)
    } else if code.is(ErrorNumber::OperationInvalid) {
        HvError::OperationInvalid(text)
    } else if code.is(ErrorNumber::OperationTimeout) || code.is(ErrorNumber::AgentCommandTimeout) {
        HvError::Timeout(text)
    } else if (code.is(ErrorNumber::SystemError) && domain.is(ErrorDomain::Rpc))
        || code.is(ErrorNumber::NoConnect)
        || code.is(ErrorNumber::InvalidConn)
        || lower.contains("client socket is closed")
        || lower.contains("cannot recv data")
        || lower.contains("cannot write data")
        || lower.contains("end of file while reading data")
    {
        HvError::ConnectionLost(text)
    } else if lower.contains("timed out") {
        HvError::Timeout(text)
    } else {
        HvError::Other(text)
    }
}

/// "Flags LIVE and CONFIG are mutually exclusive": the driver wants one
/// call per target.
fn is_exclusive_flags(e: &VirtError) -> bool {
    e.code().is(ErrorNumber::InvalidArg) && e.message().contains("mutually exclusive")
}

/// The driver does not have this call (or these flags) at all.
fn is_unsupported(e: &VirtError) -> bool {
    e.code().is(ErrorNumber::NoSupport)
        || (e.code().is(ErrorNumber::InvalidArg) && e.message().contains("unsupported flags"))
}

/// What the connected driver turned out not to offer; reset on reconnect.
#[derive(Debug, Default, Clone, Copy)]
struct ReadCaps {
    /// `cpu_shares` cannot be read: skip the two round trips per domain.
    no_cpu_shares: bool,
    /// Bulk stats filled no group beyond `state.*` (the test driver): the
    /// per-domain reads give everything, so the bulk call is skipped.
    bulk_state_only: bool,
}

fn is_no_domain(e: &VirtError) -> bool {
    e.code().is(ErrorNumber::NoDomain)
}

/// Errors that make a whole observation fail (the rest are per-field).
fn is_fatal_for_read(e: &VirtError) -> bool {
    is_no_domain(e) || matches!(classify(e, ""), HvError::ConnectionLost(_))
}

fn map_state(s: virt::domain::DomainStateEnum) -> DomainState {
    if s.is(VirtState::Running) {
        DomainState::Running
    } else if s.is(VirtState::Paused) {
        DomainState::Paused
    } else if s.is(VirtState::Shutoff) {
        DomainState::Shutoff
    } else {
        DomainState::Other
    }
}

/// Turns `memory_stats` tags into [`BalloonStats`] (bytes). `None` when the
/// guest reports neither `unused` nor `available`.
pub fn balloon_from_stats(stats: &[(u32, u64)], fallback_actual_kib: u64) -> Option<BalloonStats> {
    let get = |tag: u32| {
        stats
            .iter()
            .rev()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.saturating_mul(KIB))
    };
    let unused = get(sys::VIR_DOMAIN_MEMORY_STAT_UNUSED);
    let available = get(sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE);
    if unused.is_none() && available.is_none() {
        return None;
    }
    Some(BalloonStats {
        actual: get(sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON)
            .unwrap_or(fallback_actual_kib.saturating_mul(KIB)),
        unused,
        available,
        usable: get(sys::VIR_DOMAIN_MEMORY_STAT_USABLE),
    })
}

/// Makes an I/O limit acceptable to libvirt/QEMU: each `*_max` must be at
/// least its rate (libvirt rejects rate > max, even when max is 0), and a
/// max without a rate is rejected by QEMU, so it is cleared.
pub fn normalize_iotune(t: &IoTune) -> IoTune {
    let fix = |rate: u64, max: u64| if rate == 0 { 0 } else { max.max(rate) };
    IoTune {
        total_bytes_sec: t.total_bytes_sec,
        total_bytes_sec_max: fix(t.total_bytes_sec, t.total_bytes_sec_max),
        total_iops_sec: t.total_iops_sec,
        total_iops_sec_max: fix(t.total_iops_sec, t.total_iops_sec_max),
    }
}

/// Bulk stats groups asked for in one call per observation. Where a driver
/// leaves a group empty (the test driver fills only `state.*`), the values
/// are read per domain instead.
const BULK_GROUPS: u32 =
    sys::VIR_DOMAIN_STATS_STATE | sys::VIR_DOMAIN_STATS_VCPU | sys::VIR_DOMAIN_STATS_BALLOON;

/// The bulk stats parameters the observation reads (the others are not
/// copied out of libvirt).
const BULK_FIELDS: [&str; 8] = [
    "state.state",
    "vcpu.current",
    "vcpu.maximum",
    "balloon.current",
    "balloon.maximum",
    "balloon.unused",
    "balloon.available",
    "balloon.usable",
];

/// Live (current, maximum) vCPUs from a bulk record, when the `vcpu` group
/// is filled.
pub fn bulk_vcpus(rec: &ffi::StatsRecord) -> Option<(u64, u64)> {
    Some((rec.number("vcpu.current")?, rec.number("vcpu.maximum")?))
}

/// Balloon stats from a bulk record: `None` when the `balloon` group is
/// missing (read per domain then), `Some(None)` when it is there but the
/// guest reports neither `unused` nor `available`.
pub fn bulk_balloon(rec: &ffi::StatsRecord) -> Option<Option<BalloonStats>> {
    let current = rec.number("balloon.current")?;
    let mut pairs = vec![(sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, current)];
    for (key, tag) in [
        ("balloon.unused", sys::VIR_DOMAIN_MEMORY_STAT_UNUSED),
        ("balloon.available", sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE),
        ("balloon.usable", sys::VIR_DOMAIN_MEMORY_STAT_USABLE),
    ] {
        if let Some(v) = rec.number(key) {
            pairs.push((tag, v));
        }
    }
    Some(balloon_from_stats(&pairs, current))
}

/// State, vCPUs and memory (KiB) from a bulk record, when its `state`,
/// `vcpu` and `balloon` groups are all filled (real QEMU): no `info` call.
pub fn bulk_info(rec: &ffi::StatsRecord) -> Option<(DomainState, u64, u64, u64, u64)> {
    let state = rec.number("state.state")?;
    let state = match u32::try_from(state).ok()? {
        sys::VIR_DOMAIN_RUNNING => DomainState::Running,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::Shutoff,
        _ => DomainState::Other,
    };
    let (vcpus, vcpus_max) = bulk_vcpus(rec)?;
    let current = rec.number("balloon.current")?;
    let maximum = rec.number("balloon.maximum")?;
    Some((state, vcpus, vcpus_max, current, maximum))
}

/// How one domain was read.
struct Read {
    obs: DomainObs,
    /// The slow facts were read now (not taken from the cache).
    slow_read: Option<Slow>,
}

/// Reads one domain: state, vCPUs and memory (from `bulk` when its groups
/// are filled, else `info`), balloon stats (bulk or per domain), and the
/// slow facts (XML, I/O limits, weights) unless `cached` has them.
/// `uuid` is the domain's UUID if the caller has read it already; `ids`
/// gives the UUID and name strings kept from earlier observations, to be
/// shared instead of allocated again.
/// Per-field read errors that are not fatal (see [`is_fatal_for_read`])
/// leave the field empty.
fn read_domain(
    dom: &Domain,
    uuid: Option<&str>,
    bulk: Option<&ffi::StatsRecord>,
    caps: &mut ReadCaps,
    calls: &CallCounter,
    ids: impl FnOnce(&str, &str) -> Option<(Arc<str>, Option<Arc<str>>)>,
    cached: impl FnOnce(Option<u32>, bool) -> Option<Slow>,
) -> Res<Read> {
    let name = dom
        .name()
        .map_err(|e| Failure::new(e, "reading a domain name"))?;
    let ctx = |what: &str| format!("domain {name}: {what}");
    let read_uuid;
    let uuid = match uuid {
        Some(u) => u,
        None => {
            read_uuid = dom
                .uuid_string()
                .map_err(|e| Failure::new(e, ctx("uuid")))?;
            &read_uuid
        }
    };

    // Optional reads: fatal errors propagate, others leave the field empty.
    let soft = |r: Result<Option<u64>, VirtError>, what: &str| -> Res<Option<u64>> {
        match r {
            Ok(v) => Ok(v),
            Err(e) if is_fatal_for_read(&e) => Err(Failure::new(e, ctx(what))),
            Err(e) => {
                tracing::debug!(domain = %name, error = %e, "{what} not read");
                Ok(None)
            }
        }
    };

    // (state, live vCPUs, max vCPUs if known, memory KiB, max memory KiB)
    let (state, nr_vcpus, bulk_max, mem_kib, max_kib) = match bulk.and_then(bulk_info) {
        Some((state, vcpus, max, cur, maxmem)) => (state, vcpus, Some(max), cur, maxmem),
        None => {
            calls.add(Call::Info);
            let info = dom.info().map_err(|e| Failure::new(e, ctx("info")))?;
            let state = map_state(info.state);
            // info's vCPU count is the live one for a running domain (the
            // same value `vcpus_flags(LIVE)` returns).
            let from_bulk = bulk.and_then(bulk_vcpus);
            (
                state,
                from_bulk.map_or(u64::from(info.nr_virt_cpu), |v| v.0),
                from_bulk.map(|v| v.1),
                info.memory,
                info.max_mem,
            )
        }
    };
    let active = state.is_active();
    let id = dom.id().filter(|_| active);

    let balloon = if !active {
        None
    } else if let Some(b) = bulk.and_then(bulk_balloon) {
        b
    } else {
        calls.add(Call::MemoryStats);
        match dom.memory_stats(0) {
            Ok(stats) => {
                let pairs: Vec<(u32, u64)> = stats.iter().map(|s| (s.tag, s.val)).collect();
                balloon_from_stats(&pairs, mem_kib)
            }
            Err(e) if is_fatal_for_read(&e) => return Err(Failure::new(e, ctx("memory stats"))),
            Err(_) => None,
        }
    };

    let (slow, slow_read) = match cached(id, active) {
        Some(slow) => (slow, None),
        None => {
            let slow = read_slow(dom, &name, active, nr_vcpus, caps, calls, &soft)?;
            (slow.clone(), Some(slow))
        }
    };

    let (uuid, name) = match ids(uuid, &name) {
        Some((u, n)) => (u, n.unwrap_or_else(|| name.as_str().into())),
        None => (uuid.into(), name.as_str().into()),
    };
    Ok(Read {
        obs: DomainObs {
            name,
            uuid,
            id,
            state,
            vcpus: if active { nr_vcpus } else { 0 },
            vcpus_max: bulk_max.filter(|_| active).unwrap_or(slow.vcpus_max),
            memory: mem_kib.saturating_mul(KIB),
            memory_max: max_kib.saturating_mul(KIB),
            balloon,
            disks: slow.disks,
            metadata_pool: slow.metadata_pool,
            cpu_shares: slow.cpu_shares,
            blkio_weight: slow.blkio_weight,
            active_secs: None,
        },
        slow_read,
    })
}

/// Maps an optional read's error: fatal ones propagate, others give `None`.
type SoftRead<'a> = dyn Fn(Result<Option<u64>, VirtError>, &str) -> Res<Option<u64>> + 'a;

/// Reads what changes only on redefinition, hot-plug, retuning or restart:
/// maximum vCPUs, the XML (disks, virtpool metadata), each tunable disk's
/// I/O limits and the weights.
fn read_slow(
    dom: &Domain,
    name: &str,
    active: bool,
    fallback_max: u64,
    caps: &mut ReadCaps,
    calls: &CallCounter,
    soft: &SoftRead,
) -> Res<Slow> {
    let ctx = |what: &str| format!("domain {name}: {what}");
    calls.add(Call::MaxVcpus);
    let vcpus_max = soft(
        dom.vcpus_flags(sys::VIR_DOMAIN_VCPU_MAXIMUM)
            .map(|v| Some(u64::from(v))),
        "max vcpus",
    )?
    .unwrap_or(fallback_max);

    calls.add(Call::Xml);
    let domain_xml = dom.xml_desc(0).map_err(|e| Failure::new(e, ctx("xml")))?;
    // The metadata element is in the XML just read: no second round trip.
    let metadata_pool = xml::metadata_pool(&domain_xml);

    let mut disks = Vec::new();
    for d in xml::disks(&domain_xml) {
        let mut obs = DiskObs {
            target: d.target.into(),
            device: d.device,
            readonly: d.readonly,
            iotune: None,
        };
        if active && obs.is_tunable() {
            calls.add(Call::GetIoTune);
            match ffi::get_block_iotune(dom, &obs.target, sys::VIR_DOMAIN_AFFECT_LIVE) {
                Ok(t) => obs.iotune = Some(t),
                Err(e) if is_fatal_for_read(&e) => {
                    return Err(Failure::new(e, ctx(&format!("iotune of {}", obs.target))))
                }
                Err(e) => {
                    tracing::debug!(domain = %name, disk = %obs.target, error = %e, "iotune not read");
                }
            }
        }
        disks.push(obs);
    }

    // Weights: current values (live when active, config when shut off).
    // A driver without `cpu_shares` (the test driver rejects the call) is
    // not asked again on this connection.
    let cpu_shares = if caps.no_cpu_shares {
        None
    } else {
        calls.add(Call::GetCpuShares);
        let r = ffi::get_cpu_shares(dom, sys::VIR_DOMAIN_AFFECT_CURRENT);
        if matches!(&r, Err(e) if is_unsupported(e)) {
            caps.no_cpu_shares = true;
        }
        soft(r, "cpu_shares")?
    };
    calls.add(Call::GetBlkioWeight);
    let blkio_weight = soft(
        ffi::get_blkio_weight(dom, sys::VIR_DOMAIN_AFFECT_CURRENT).map(|w| w.map(u64::from)),
        "blkio weight",
    )?;
    Ok(Slow {
        vcpus_max,
        metadata_pool,
        disks: disks.into(),
        cpu_shares,
        blkio_weight,
    })
}

/// Runs a setter on the live domain and, with `persist`, on its persistent
/// config too. Tries both in one call (atomic on QEMU); drivers that take
/// one target per call (the test driver) get LIVE then CONFIG.
fn with_persist(
    persist: bool,
    mut call: impl FnMut(u32) -> Result<(), VirtError>,
) -> Result<(), VirtError> {
    let live = sys::VIR_DOMAIN_AFFECT_LIVE;
    if !persist {
        return call(live);
    }
    match call(live | sys::VIR_DOMAIN_AFFECT_CONFIG) {
        Err(e) if is_exclusive_flags(&e) => {
            call(live)?;
            call(sys::VIR_DOMAIN_AFFECT_CONFIG)
        }
        other => other,
    }
}

/// A full observation lets libvirt's event loop dispatch pending events
/// after this many domains (about 20–40 ms of reads on the test driver).
const EVENTS_EVERY: usize = 64;

impl Libvirt {
    /// A handle for `uri`; nothing is opened until [`Hypervisor::connect`].
    pub fn new(uri: &str) -> Libvirt {
        Libvirt {
            uri: uri.to_owned(),
            conn: None,
            events: None,
            registration: None,
            caps: ReadCaps::default(),
            handles: HashMap::new(),
            cache: ReadCache::new(super::cache::DEFAULT_RESYNC),
            stale: StaleMarks::default(),
            full_reads: 0,
            calls: Arc::default(),
        }
    }

    /// How many domains the last observation read in full (XML, I/O
    /// limits, weights), the rest coming from the cache.
    pub fn last_full_reads(&self) -> usize {
        self.full_reads
    }

    /// How long the slow facts of a domain (XML, I/O limits, weights) may
    /// be reused between reads when no event says they changed (zero:
    /// read everything on every observation). Used only while events are
    /// registered; see [`super::cache`].
    pub fn with_resync(mut self, resync: std::time::Duration) -> Libvirt {
        self.cache = ReadCache::new(resync);
        self
    }

    /// Domains whose slow facts are cached now.
    pub fn cached_domains(&self) -> usize {
        self.cache.len()
    }

    /// Sends domain lifecycle events (and connection closes) to `tx`: each
    /// connection `connect()` opens registers for them, and they are
    /// deregistered before it closes. Starts the process's libvirt event
    /// loop if needed, which must happen before any connection is opened
    /// (`virtpoold` does it first thing).
    pub fn with_events(mut self, tx: EventSender) -> Libvirt {
        self.events = Some(tx);
        self
    }

    /// Whether the open connection is registered for lifecycle events.
    pub fn events_registered(&self) -> bool {
        self.registration
            .as_ref()
            .is_some_and(Registration::has_lifecycle)
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Closes the connection (if any); the next `connect()` reopens it.
    pub fn disconnect(&mut self) {
        if let (Some(reg), Some(c)) = (self.registration.take(), &self.conn) {
            reg.deregister(c);
        }
        // Domain handles hold the connection: drop them first.
        self.handles.clear();
        self.caps = ReadCaps::default();
        self.cache.clear();
        self.stale.take();
        // Dropping a Connect runs virConnectClose, which only fails (and the
        // crate then panics) for an invalid pointer, which we never hold.
        self.conn = None;
    }

    fn conn(&self) -> Result<&Connect, HvError> {
        self.conn
            .as_ref()
            .ok_or_else(|| HvError::ConnectionLost(format!("not connected to {}", self.uri)))
    }

    /// Maps an error and drops the connection when it is gone (by error
    /// kind, or because the connection no longer reports alive).
    fn fail(&mut self, f: Failure) -> HvError {
        let mapped = classify(&f.err, &f.what);
        let alive = self
            .conn
            .as_ref()
            .is_some_and(|c| matches!(c.is_alive(), Ok(true)));
        match mapped {
            HvError::ConnectionLost(_) => {
                self.disconnect();
                mapped
            }
            other if !alive => {
                self.disconnect();
                HvError::ConnectionLost(other.to_string())
            }
            other => other,
        }
    }

    /// Lists every domain and reads each (see [`Hypervisor::observe`]);
    /// `None` when `stop` was set before the last domain was read.
    fn observe_full(
        &mut self,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<Vec<DomainObs>>, HvError> {
        self.calls.add(Call::List);

        let listed = self
            .conn()?
            .list_all_domains(0)
            .map_err(|e| Failure::new(e, "listing domains"));
        let domains = match listed {
            Ok(d) => d,
            Err(f) => return Err(self.fail(f)),
        };
        // Bulk stats are an optimisation: on any non-connection error,
        // everything is read per domain. NOWAIT: a domain busy with a job
        // reports fewer groups instead of stalling the whole call.
        let bulk = if self.caps.bulk_state_only {
            Ok(Vec::new())
        } else {
            self.calls.add(Call::BulkStats);
            self.conn().map(|c| {
                ffi::all_domain_stats(
                    c,
                    BULK_GROUPS,
                    sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
                    &BULK_FIELDS,
                )
            })?
        };
        let records = match bulk {
            Ok(records) => {
                // Judged on running domains only (shut-off ones have no
                // vCPU or balloon group on any driver).
                let running = u64::from(sys::VIR_DOMAIN_RUNNING);
                let mut running = records
                    .iter()
                    .filter(|r| r.number("state.state") == Some(running))
                    .peekable();
                if running.peek().is_some()
                    && running.all(|r| bulk_vcpus(r).is_none() && bulk_balloon(r).is_none())
                {
                    self.caps.bulk_state_only = true;
                }
                records
            }
            Err(e) => {
                let err = self.fail(Failure::new(e, "bulk domain stats"));
                if err.is_connection() {
                    return Err(err);
                }
                tracing::debug!(error = %err, "bulk stats unavailable, reading per domain");
                Vec::new()
            }
        };
        let bulk: HashMap<&str, &ffi::StatsRecord> =
            records.iter().map(|r| (r.uuid.as_str(), r)).collect();
        let mut handles = HashMap::with_capacity(domains.len());
        let Some(out) = self.read_domains(domains, &bulk, &mut handles, stop)? else {
            return Ok(None);
        };
        self.cache.retain(&out.iter().map(|d| &*d.uuid).collect());
        tracing::debug!(
            domains = out.len(),
            read_in_full = self.full_reads,
            "domains observed"
        );
        self.handles = handles;
        Ok(Some(out))
    }

    /// Reads each domain (vCPUs and balloon from `bulk` when there), sorted
    /// by name; keeps the handles of the ones read in `handles`. A domain
    /// that vanished or cannot be read is left out; a lost connection fails
    /// the whole read.
    fn read_domains(
        &mut self,
        domains: Vec<Domain>,
        bulk: &HashMap<&str, &ffi::StatsRecord>,
        handles: &mut HashMap<Arc<str>, Domain>,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<Vec<DomainObs>>, HvError> {
        let mut out = Vec::with_capacity(domains.len());
        let mut caps = self.caps;
        // Reuse cached facts only while events can say they changed.
        let reuse = self.events_registered();
        // A full observation that may give way does so for a domain event
        // too: it lets the event loop run every so many domains (its
        // callbacks would otherwise wait for the end of this job).
        // Only events from now on count: those before are the monitor's
        // to handle after this cycle.
        let yields = stop.is_some() && reuse;
        self.stale.take_news();
        self.cache.begin(&self.stale);
        self.full_reads = 0;
        let now = std::time::Instant::now();
        for (i, dom) in domains.into_iter().enumerate() {
            if yields && i > 0 && i % EVENTS_EVERY == 0 {
                super::events::dispatch_pending();
            }
            // Given up between two domains: what was read stays cached,
            // the event marks not yet used stay in the cache's set.
            if stop.is_some_and(|s| s.load(Ordering::Acquire)) || (yields && self.stale.take_news())
            {
                return Ok(None);
            }
            let uuid = dom.uuid_string().ok();
            let rec = uuid.as_deref().and_then(|u| bulk.get(u).copied());
            let cache = &self.cache;
            let ids = |u: &str, name: &str| cache.ids(u, name);
            let cached = |id: Option<u32>, active: bool| {
                let u = uuid.as_deref().filter(|_| reuse)?;
                cache.get(u, id, active, now).cloned()
            };
            match read_domain(
                &dom,
                uuid.as_deref(),
                rec,
                &mut caps,
                &self.calls,
                ids,
                cached,
            ) {
                Ok(read) => {
                    self.full_reads += usize::from(read.slow_read.is_some());
                    if let Some(slow) = read.slow_read.filter(|_| reuse) {
                        let o = &read.obs;
                        self.cache
                            .put(&o.uuid, &o.name, o.id, o.state.is_active(), slow, now);
                    }
                    handles.insert(read.obs.uuid.clone(), dom);
                    out.push(read.obs);
                }
                // Vanished between list and read.
                Err(f) if is_no_domain(&f.err) => {
                    tracing::debug!(what = %f.what, "domain vanished while observed");
                }
                Err(f) => {
                    let err = self.fail(f);
                    if err.is_connection() {
                        return Err(err);
                    }
                    // One unreadable domain does not hide the others.
                    tracing::warn!(error = %err, "domain skipped in observation");
                }
            }
        }
        self.caps = ReadCaps {
            bulk_state_only: self.caps.bulk_state_only,
            ..caps
        };
        // Names are unique within a connection: the unstable sort gives the
        // same order without a buffer of its own.
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(out))
    }

    fn lookup(&self, uuid: &str, name: &str) -> Result<Res<Domain>, HvError> {
        let conn = self.conn()?;
        self.calls.add(Call::Lookup);
        Ok(conn
            .lookup_domain_by_uuid_string(uuid)
            .map_err(|e| Failure::new(e, format!("domain {name} ({uuid})"))))
    }

    /// Runs `op` on the domain with this UUID (the handle from the last
    /// observation, else a lookup), mapping every error.
    fn with_domain<T>(
        &mut self,
        uuid: &str,
        name: &str,
        op: impl FnOnce(&Domain) -> Res<T>,
    ) -> Result<T, HvError> {
        let res = match self.handles.get(uuid) {
            Some(dom) => op(dom),
            None => self.lookup(uuid, name)?.and_then(|dom| op(&dom)),
        };
        res.map_err(|f| self.fail(f))
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        // Deregister callbacks before the connection closes.
        self.disconnect();
    }
}

impl Hypervisor for Libvirt {
    fn connect(&mut self) -> Result<(), HvError> {
        QUIET_ERRORS.call_once(virt::error::clear_error_callback);
        if let Some(c) = &self.conn {
            if matches!(c.is_alive(), Ok(true)) {
                return Ok(());
            }
            self.disconnect();
        }
        if self.events.is_some() {
            if let Err(e) = super::events::start_event_loop() {
                tracing::warn!(error = %e, "no libvirt event loop: lifecycle events off");
            }
        }
        match Connect::open(Some(&self.uri)) {
            Ok(c) => {
                if let Some(tx) = &self.events {
                    self.registration =
                        Some(Registration::register(&c, tx, &self.uri, &self.stale));
                }
                self.conn = Some(c);
                Ok(())
            }
            Err(e) => {
                let what = format!("opening {}", self.uri);
                Err(match classify(&e, &what) {
                    HvError::Other(m) if e.code().is(ErrorNumber::SystemError) => {
                        HvError::ConnectionLost(m)
                    }
                    mapped => mapped,
                })
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| matches!(c.is_alive(), Ok(true)))
    }

    fn observe(&mut self) -> Result<Vec<DomainObs>, HvError> {
        Ok(self.observe_full(None)?.unwrap_or_default())
    }

    fn observe_until(&mut self, stop: &AtomicBool) -> Result<Option<Vec<DomainObs>>, HvError> {
        self.observe_full(Some(stop))
    }

    fn observe_domains(&mut self, uuids: &[String]) -> Result<Vec<DomainObs>, HvError> {
        let mut domains = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            match self.lookup(uuid, uuid)? {
                Ok(dom) => domains.push(dom),
                Err(f) if is_no_domain(&f.err) => {
                    tracing::debug!(what = %f.what, "domain gone");
                }
                Err(f) => return Err(self.fail(f)),
            }
        }
        // No bulk stats: one call for all domains costs more than the
        // per-domain reads of a few.
        let mut handles = HashMap::with_capacity(domains.len());
        let out = self
            .read_domains(domains, &HashMap::new(), &mut handles, None)?
            .unwrap_or_default();
        // Handles of the other domains stay as the last full observation left them.
        self.handles.extend(handles);
        Ok(out)
    }

    fn apply(&mut self, action: &Action) -> Result<(), HvError> {
        let name = action.domain().to_owned();
        let uuid = action.uuid().to_owned();
        // Whatever the outcome, the next observation reads back what
        // libvirt holds for this domain.
        self.cache.forget(&uuid);
        let calls = Arc::clone(&self.calls);
        let count = |call: Call| calls.add(call);
        let ctx = |what: String| format!("domain {name}: {what}");
        match action {
            Action::SetVcpus { to, persist, .. } => {
                let n = u32::try_from(*to)
                    .map_err(|_| HvError::InvalidArg(ctx(format!("{to} vCPUs"))))?;
                self.with_domain(&uuid, &name, |d| {
                    with_persist(*persist, |flags| {
                        count(Call::SetVcpus);
                        d.set_vcpus_flags(n, flags)
                    })
                    .map_err(|e| Failure::new(e, ctx(format!("set vCPUs to {n}"))))
                })
            }
            Action::SetMemory { to, persist, .. } => {
                let kib = to / KIB;
                self.with_domain(&uuid, &name, |d| {
                    // Never Domain::set_memory: it discards the error.
                    // (VIR_DOMAIN_MEM_LIVE/CONFIG equal AFFECT_LIVE/CONFIG.)
                    with_persist(*persist, |flags| {
                        count(Call::SetMemory);
                        d.set_memory_flags(kib, flags)
                    })
                    .map_err(|e| Failure::new(e, ctx(format!("set memory to {kib} KiB"))))
                })
            }
            Action::SetBlockIoTune {
                disk, to, persist, ..
            } => {
                let tune = normalize_iotune(to);
                self.with_domain(&uuid, &name, |d| {
                    with_persist(*persist, |flags| {
                        count(Call::SetIoTune);
                        ffi::set_block_iotune(d, disk, &tune, flags)
                    })
                    .map_err(|e| Failure::new(e, ctx(format!("set I/O limits of {disk}"))))
                })
            }
            Action::SetCpuShares { to, persist, .. } => {
                if !CPU_SHARES_RANGE.contains(to) {
                    return Err(HvError::InvalidArg(ctx(format!(
                        "cpu_shares {to} outside {}..={}",
                        CPU_SHARES_RANGE.start(),
                        CPU_SHARES_RANGE.end()
                    ))));
                }
                self.with_domain(&uuid, &name, |d| {
                    with_persist(*persist, |flags| {
                        count(Call::SetCpuShares);
                        ffi::set_cpu_shares(d, *to, flags)
                    })
                    .map_err(|e| Failure::new(e, ctx(format!("set cpu_shares to {to}"))))
                })
            }
            Action::SetBlkioWeight { to, persist, .. } => {
                let weight = match u32::try_from(*to) {
                    Ok(w) if BLKIO_WEIGHT_RANGE.contains(to) => w,
                    _ => {
                        return Err(HvError::InvalidArg(ctx(format!(
                            "blkio weight {to} outside {}..={}",
                            BLKIO_WEIGHT_RANGE.start(),
                            BLKIO_WEIGHT_RANGE.end()
                        ))))
                    }
                };
                self.with_domain(&uuid, &name, |d| {
                    with_persist(*persist, |flags| {
                        count(Call::SetBlkioWeight);
                        ffi::set_blkio_weight(d, weight, flags)
                    })
                    .map_err(|e| Failure::new(e, ctx(format!("set blkio weight to {weight}"))))
                })
            }
        }
    }

    fn call_counter(&self) -> Option<Arc<CallCounter>> {
        Some(Arc::clone(&self.calls))
    }

    fn set_stats_period(&mut self, uuid: &str, secs: u32) -> Result<(), HvError> {
        let period = i32::try_from(secs)
            .map_err(|_| HvError::InvalidArg(format!("stats period {secs} s too large")))?;
        let calls = Arc::clone(&self.calls);
        self.with_domain(uuid, uuid, |d| {
            let label = d.name().unwrap_or_else(|_| uuid.to_owned());
            calls.add(Call::SetStatsPeriod);
            d.set_memory_stats_period(period, sys::VIR_DOMAIN_MEM_LIVE)
                .map_err(|e| {
                    Failure::new(
                        e,
                        format!("domain {label}: set memory stats period to {secs} s"),
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iotune_max_never_below_rate() {
        let t = normalize_iotune(&IoTune {
            total_bytes_sec: 100,
            total_bytes_sec_max: 0,
            total_iops_sec: 50,
            total_iops_sec_max: 80,
        });
        assert_eq!(t.total_bytes_sec_max, 100);
        assert_eq!(t.total_iops_sec_max, 80);
        let cleared = normalize_iotune(&IoTune {
            total_bytes_sec: 0,
            total_bytes_sec_max: 500,
            total_iops_sec: 0,
            total_iops_sec_max: 0,
        });
        assert_eq!(cleared, IoTune::default());
    }

    #[test]
    fn balloon_needs_unused_or_available() {
        let actual = sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON;
        assert_eq!(balloon_from_stats(&[(actual, 1024)], 1024), None);
        let b = balloon_from_stats(
            &[
                (actual, 2048),
                (sys::VIR_DOMAIN_MEMORY_STAT_UNUSED, 512),
                (sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE, 2000),
                (sys::VIR_DOMAIN_MEMORY_STAT_USABLE, 1000),
            ],
            1,
        )
        .expect("stats reported");
        assert_eq!(b.actual, 2048 * 1024);
        assert_eq!(b.unused, Some(512 * 1024));
        assert_eq!(b.available, Some(2000 * 1024));
        assert_eq!(b.usable, Some(1000 * 1024));
        let fallback = balloon_from_stats(&[(sys::VIR_DOMAIN_MEMORY_STAT_UNUSED, 1)], 4096)
            .expect("unused reported");
        assert_eq!(fallback.actual, 4096 * 1024);
        assert_eq!(fallback.available, None);
    }

    #[test]
    fn persist_adds_config_and_splits_when_driver_wants_one_target() {
        let mut seen = Vec::new();
        with_persist(false, |f| {
            seen.push(f);
            Ok(())
        })
        .expect("ok");
        assert_eq!(seen, vec![sys::VIR_DOMAIN_AFFECT_LIVE]);
        seen.clear();
        with_persist(true, |f| {
            seen.push(f);
            Ok(())
        })
        .expect("ok");
        assert_eq!(
            seen,
            vec![sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG]
        );
        // Any other error is returned as is, without a retry.
        seen.clear();
        let bad = || VirtError::from(std::ffi::CString::new("\0").expect_err("NUL"));
        assert!(with_persist(true, |f| {
            seen.push(f);
            Err(bad())
        })
        .is_err());
        assert_eq!(seen.len(), 1);
    }

    fn record(pairs: &[(&str, u64)]) -> ffi::StatsRecord {
        ffi::StatsRecord {
            uuid: "u".into(),
            numbers: pairs
                .iter()
                .filter_map(|&(k, v)| BULK_FIELDS.iter().find(|f| **f == k).map(|f| (*f, v)))
                .collect(),
        }
    }

    #[test]
    fn bulk_groups_used_only_when_filled() {
        // What the test driver returns: state only.
        let state_only = record(&[("state.state", 1), ("state.reason", 1)]);
        assert_eq!(bulk_vcpus(&state_only), None);
        assert_eq!(bulk_balloon(&state_only), None);

        // What QEMU returns with a guest that reports stats (KiB).
        let qemu = record(&[
            ("vcpu.current", 3),
            ("vcpu.maximum", 8),
            ("balloon.current", 2048),
            ("balloon.maximum", 4096),
            ("balloon.unused", 1024),
            ("balloon.available", 2000),
            ("balloon.usable", 1500),
        ]);
        assert_eq!(bulk_vcpus(&qemu), Some((3, 8)));
        let b = bulk_balloon(&qemu).expect("group filled").expect("stats");
        assert_eq!(b.actual, 2048 * KIB);
        assert_eq!(b.unused, Some(1024 * KIB));
        assert_eq!(b.available, Some(2000 * KIB));
        assert_eq!(b.usable, Some(1500 * KIB));

        // Balloon group present but the guest reports nothing: known empty.
        let silent = record(&[("balloon.current", 2048), ("balloon.maximum", 4096)]);
        assert_eq!(bulk_balloon(&silent), Some(None));
    }

    #[test]
    fn error_table_maps_as_measured() {
        use virt::error::{ErrorDomainEnum, ErrorNumberEnum};
        let c = |n: ErrorNumber, d: ErrorDomain, m: &str| {
            classify_parts(
                ErrorNumberEnum::from(n),
                ErrorDomainEnum::from(d),
                m,
                "dom web-1",
            )
        };
        let no_dom = c(
            ErrorNumber::NoDomain,
            ErrorDomain::Test,
            "no domain with matching uuid",
        );
        assert_eq!(
            no_dom,
            HvError::NoDomain("dom web-1: no domain with matching uuid".into())
        );
        assert!(matches!(
            c(
                ErrorNumber::InvalidArg,
                ErrorDomain::Test,
                "requested vcpus is greater than max"
            ),
            HvError::InvalidArg(_)
        ));
        assert!(matches!(
            c(
                ErrorNumber::OperationInvalid,
                ErrorDomain::Test,
                "domain is not running"
            ),
            HvError::OperationInvalid(_)
        ));
        assert!(matches!(
            c(
                ErrorNumber::OperationTimeout,
                ErrorDomain::Qemu,
                "vcpu unplug request timed out"
            ),
            HvError::Timeout(_)
        ));
        assert!(matches!(
            c(
                ErrorNumber::OperationFailed,
                ErrorDomain::Qemu,
                "unplug timed out"
            ),
            HvError::Timeout(_)
        ));
        assert!(matches!(
            c(
                ErrorNumber::SystemError,
                ErrorDomain::Rpc,
                "Failed to connect socket"
            ),
            HvError::ConnectionLost(_)
        ));
        assert!(matches!(
            c(
                ErrorNumber::InternalError,
                ErrorDomain::Rpc,
                "client socket is closed"
            ),
            HvError::ConnectionLost(_)
        ));
        assert!(matches!(
            c(
                ErrorNumber::SystemError,
                ErrorDomain::Rpc,
                "Cannot recv data: Connection timed out"
            ),
            HvError::ConnectionLost(_)
        ));
        assert!(matches!(
            c(
                ErrorNumber::ConfigUnsupported,
                ErrorDomain::Test,
                "bytes cannot be higher than max"
            ),
            HvError::Other(_)
        ));
        // A plain system error (e.g. a cgroup write) is not a lost connection.
        assert!(matches!(
            c(
                ErrorNumber::SystemError,
                ErrorDomain::Qemu,
                "Unable to write to cgroup"
            ),
            HvError::Other(_)
        ));
    }

    #[test]
    fn nul_in_name_maps_to_invalid_arg() {
        // The only virt::error::Error constructible without libvirt.
        let e = VirtError::from(std::ffi::CString::new("a\0b").expect_err("has NUL"));
        assert!(matches!(classify(&e, "x"), HvError::InvalidArg(m) if m.starts_with("x: ")));
    }
}
