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
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use super::cache::{ReadCache, StaleMarks};
use super::calls::{Call, CallCounter};
use super::errors::{classify, is_no_domain, Failure, Res};
use super::events::{EventSender, Registration};
use super::hypervisor::{HvError, Hypervisor};
use super::read::{
    bulk_balloon, bulk_vcpus, read_domain, ReadCaps, SlowFrom, BULK_FIELDS, BULK_GROUPS,
};
use super::{ffi, write};
use crate::core::model::{Action, DomainObs};

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
                cache
                    .get(u, id, active, now)
                    .map(|(slow, refresh)| (slow.clone(), refresh))
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
                    let o = &read.obs;
                    match read.slow {
                        SlowFrom::Cache => {}
                        SlowFrom::Refreshed(slow) => self.cache.refreshed(&o.uuid, slow),
                        SlowFrom::Read(slow) => {
                            self.full_reads += 1;
                            if reuse {
                                let active = o.state.is_active();
                                self.cache.put(&o.uuid, &o.name, o.id, active, slow, now);
                            }
                        }
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
        write::validate(action)?;
        // Whatever the outcome, the next observation reads back what this
        // action may have changed (and only that).
        self.cache.touched(action);
        let calls = Arc::clone(&self.calls);
        self.with_domain(action.uuid(), action.domain(), |d| {
            write::write(d, action, &calls)
        })
    }

    fn call_counter(&self) -> Option<Arc<CallCounter>> {
        Some(Arc::clone(&self.calls))
    }
}
