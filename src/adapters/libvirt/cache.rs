//! What the adapter keeps between observations so a steady cycle reads only
//! what can change without notice.
//!
//! Every observation reads each domain's state, vCPUs, balloon and guest
//! memory statistics and CPU time (bulk stats where the driver fills
//! them). The rest — what comes from the domain XML (disks, maximum vCPUs,
//! virtpool metadata) and the tunables the agent itself sets (disk I/O
//! limits, blkio weight, the scheduler's `cpu_shares` and CPU quota) —
//! changes only when someone redefines, hot-plugs, retunes or restarts
//! the domain. It is read once and reused until one of these
//! says it may have changed:
//! - a libvirt event about the domain: any lifecycle event (defined,
//!   started, stopped, ...), device added or removed, metadata changed,
//!   tunables changed ([`StaleMarks`], filled by the event callbacks);
//! - the agent applied an action to the domain: its next observation
//!   reads back only what that action wrote (a disk's I/O limits, a
//!   weight); a vCPU, balloon or stats-period write touches no slow fact;
//! - the domain's libvirt ID changed (it was restarted);
//! - the entry is older than the resync interval, a safety net for
//!   changes no event reports (each entry's deadline is spread over
//!   [½, 1] × the interval by its UUID, so the re-reads spread over cycles
//!   instead of arriving together);
//! - the connection was lost or reopened (everything is dropped).
//!
//! Without registered events nothing is reused: every observation reads
//! everything.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::model::{Action, CpuQuota, DiskObs};

/// Default resync interval (`agent.resync_interval`).
pub const DEFAULT_RESYNC: Duration = crate::core::config::DEFAULT_RESYNC;
/// How long an entry is kept when its resync interval would overflow the
/// clock (the config allows at most a day).
const MAX_KEEP: Duration = Duration::from_secs(24 * 3600);

/// UUIDs whose cached facts are stale, marked by event callbacks (on
/// libvirt's event thread) and taken by the next observation; and whether
/// an event the monitor must act on (lifecycle, device, metadata) arrived
/// since the current full observation began, which makes it give way.
/// Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct StaleMarks {
    set: Arc<Mutex<HashSet<String>>>,
    news: Arc<AtomicBool>,
}

impl StaleMarks {
    /// Marks one domain stale.
    pub fn mark(&self, uuid: &str) {
        // A poisoned lock only means a panic elsewhere while holding it;
        // the set itself is still a valid set.
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        if !set.contains(uuid) {
            set.insert(uuid.to_owned());
        }
    }

    /// Marks one domain stale, for an event the monitor acts on.
    pub fn mark_news(&self, uuid: &str) {
        self.mark(uuid);
        self.news.store(true, Ordering::Release);
    }

    /// Whether such an event arrived since the last call (and clears it).
    pub fn take_news(&self) -> bool {
        self.news.swap(false, Ordering::AcqRel)
    }

    /// Takes every mark (the set is left empty).
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.set.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The slowly changing part of a domain's observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Slow {
    pub vcpus_max: u64,
    pub metadata_pool: Option<String>,
    /// The domain has a balloon device (see [`super::xml::has_balloon`]).
    pub balloon_device: bool,
    pub disks: Arc<[DiskObs]>,
    pub cpu_shares: Option<u64>,
    pub blkio_weight: Option<u64>,
    /// The CPU-time limit (read with `cpu_shares`).
    pub cpu_quota: Option<CpuQuota>,
}

/// The parts of a cached [`Slow`] that must be read again before it is
/// used (the agent wrote them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refresh {
    /// The I/O limits of the domain's disks.
    pub iotune: bool,
    /// The scheduler parameters (`cpu_shares`, the CPU quota).
    pub scheduler: bool,
    pub blkio_weight: bool,
}

impl Refresh {
    /// Nothing to read again.
    pub fn is_empty(&self) -> bool {
        *self == Refresh::default()
    }

    /// What an action may have changed among the slow facts.
    fn of(action: &Action) -> Refresh {
        let mut r = Refresh::default();
        match action {
            Action::SetBlockIoTune { .. } => r.iotune = true,
            Action::SetCpuShares { .. } | Action::SetCpuQuota { .. } => r.scheduler = true,
            Action::SetBlkioWeight { .. } => r.blkio_weight = true,
            Action::SetVcpus { .. } | Action::SetMemory { .. } | Action::SetStatsPeriod { .. } => {}
        }
        r
    }

    fn add(&mut self, o: Refresh) {
        self.iotune |= o.iotune;
        self.scheduler |= o.scheduler;
        self.blkio_weight |= o.blkio_weight;
    }
}

#[derive(Debug)]
struct Entry {
    /// The domain's name as last read (the key holds its UUID): every
    /// observation reuses both strings while they match, instead of
    /// allocating them again.
    name: Arc<str>,
    id: Option<u32>,
    active: bool,
    /// What the agent's own writes made stale since the entry was read.
    refresh: Refresh,
    slow: Slow,
    expires: Instant,
}

/// Cached [`Slow`] facts by UUID.
#[derive(Debug)]
pub struct ReadCache {
    resync: Duration,
    /// Boxed: the table has up to twice as many slots as entries, and an
    /// empty slot then costs a pointer, not a whole entry.
    entries: HashMap<Arc<str>, Box<Entry>>,
    /// Stale marks taken at the start of the current observation.
    stale: HashSet<String>,
}

/// Where in [½, 1] of the resync interval an entry expires: a hash of the
/// UUID, so the same domain always gets the same share.
fn spread(uuid: &str, resync: Duration) -> Duration {
    let h = uuid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    resync / 2 + resync.mul_f64((h % 1024) as f64 / 2048.0)
}

impl ReadCache {
    /// A cache that keeps entries up to `resync` (zero: keeps nothing).
    pub fn new(resync: Duration) -> ReadCache {
        ReadCache {
            resync,
            entries: HashMap::new(),
            stale: HashSet::new(),
        }
    }

    /// Whether entries are kept at all.
    pub fn enabled(&self) -> bool {
        !self.resync.is_zero()
    }

    /// Starts an observation: takes the event marks.
    pub fn begin(&mut self, marks: &StaleMarks) {
        let taken = marks.take();
        if self.stale.is_empty() {
            self.stale = taken;
        } else {
            self.stale.extend(taken);
        }
    }

    /// The cached facts of a domain, if still valid for this (id,
    /// activity), with the parts the agent's writes made stale.
    pub fn get(
        &self,
        uuid: &str,
        id: Option<u32>,
        active: bool,
        now: Instant,
    ) -> Option<(&Slow, Refresh)> {
        if !self.enabled() || self.stale.contains(uuid) {
            return None;
        }
        let e = self.entries.get(uuid)?;
        (e.id == id && e.active == active && now < e.expires).then_some((&e.slow, e.refresh))
    }

    /// The UUID and name strings kept for a domain, whatever the state of
    /// its entry; the name only if it is still `name`.
    pub fn ids(&self, uuid: &str, name: &str) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let (k, e) = self.entries.get_key_value(uuid)?;
        Some((k.clone(), (*e.name == *name).then(|| e.name.clone())))
    }

    /// Stores what was just read.
    pub fn put(
        &mut self,
        uuid: &Arc<str>,
        name: &Arc<str>,
        id: Option<u32>,
        active: bool,
        slow: Slow,
        now: Instant,
    ) {
        self.stale.remove(&**uuid);
        if !self.enabled() {
            return;
        }
        // The config bounds the interval; a longer one must not panic.
        let expires = now
            .checked_add(spread(uuid, self.resync))
            .unwrap_or(now + MAX_KEEP);
        let entry = Entry {
            name: name.clone(),
            id,
            active,
            refresh: Refresh::default(),
            slow,
            expires,
        };
        match self.entries.get_mut(&**uuid) {
            // In place: no new allocation for a domain read again.
            Some(e) => **e = entry,
            None => {
                self.entries.insert(uuid.clone(), Box::new(entry));
            }
        }
    }

    /// Notes an action applied to a domain: what it may have changed is
    /// read again by the next observation (the rest stays cached).
    pub fn touched(&mut self, action: &Action) {
        let parts = Refresh::of(action);
        if parts.is_empty() {
            return;
        }
        if let Some(e) = self.entries.get_mut(action.uuid()) {
            e.refresh.add(parts);
        }
    }

    /// Stores the parts read again (see [`Refresh`]) without moving the
    /// entry's resync deadline.
    pub fn refreshed(&mut self, uuid: &str, slow: Slow) {
        self.stale.remove(uuid);
        if let Some(e) = self.entries.get_mut(uuid) {
            e.slow = slow;
            e.refresh = Refresh::default();
        }
    }

    /// Keeps only the domains in `seen` (after a full listing), and drops
    /// the marks of domains that were not read.
    pub fn retain(&mut self, seen: &HashSet<&str>) {
        self.entries.retain(|u, _| seen.contains(&**u));
        self.stale.retain(|u| seen.contains(u.as_str()));
    }

    /// Drops everything (connection lost or reopened).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.stale.clear();
    }

    /// Number of cached domains.
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.refresh.is_empty())
            .count()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores an entry named like its UUID.
    fn put(c: &mut ReadCache, uuid: &str, id: Option<u32>, active: bool, s: Slow, now: Instant) {
        c.put(&Arc::from(uuid), &Arc::from(uuid), id, active, s, now);
    }

    #[test]
    fn only_events_the_monitor_acts_on_are_news() {
        let marks = StaleMarks::default();
        let seen_by_callbacks = marks.clone();
        seen_by_callbacks.mark("a");
        assert!(!marks.take_news(), "a tunable change is not news");
        seen_by_callbacks.mark_news("b");
        assert!(marks.take_news());
        assert!(!marks.take_news(), "taken once");
        let mut set: Vec<String> = marks.take().into_iter().collect();
        set.sort();
        assert_eq!(set, ["a", "b"], "both are stale");
    }

    #[test]
    fn identity_strings_are_kept_while_they_match() {
        let t0 = Instant::now();
        let mut c = ReadCache::new(Duration::from_secs(300));
        assert!(c.ids("u1", "web").is_none());
        let (uuid, name): (Arc<str>, Arc<str>) = ("u1".into(), "web".into());
        c.put(&uuid, &name, Some(1), true, slow(4), t0);
        let (u, n) = c.ids("u1", "web").expect("kept");
        assert!(Arc::ptr_eq(&u, &uuid) && Arc::ptr_eq(&n.expect("same name"), &name));
        // Renamed: the UUID is still shared, the name is not.
        let (u, n) = c.ids("u1", "web2").expect("kept");
        assert!(Arc::ptr_eq(&u, &uuid) && n.is_none());
        // Kept when an action makes a part stale.
        c.touched(&weight("u1"));
        assert!(!c.get("u1", Some(1), true, t0).unwrap().1.is_empty());
        assert!(c.ids("u1", "web").is_some());
        // Gone with a domain that is no longer listed.
        c.retain(&HashSet::new());
        assert!(c.ids("u1", "web").is_none());
    }

    fn slow(max: u64) -> Slow {
        Slow {
            vcpus_max: max,
            metadata_pool: None,
            balloon_device: true,
            disks: Arc::from([]),
            cpu_shares: None,
            blkio_weight: Some(500),
            cpu_quota: None,
        }
    }

    #[test]
    fn entry_is_reused_until_something_says_it_changed() {
        let t0 = Instant::now();
        let marks = StaleMarks::default();
        let mut c = ReadCache::new(Duration::from_secs(300));
        c.begin(&marks);
        assert!(c.get("a", Some(1), true, t0).is_none(), "empty");
        put(&mut c, "a", Some(1), true, slow(4), t0);
        assert_eq!(c.get("a", Some(1), true, t0).unwrap().0.vcpus_max, 4);
        // Restarted (new ID), shut off, or a different activity: miss.
        assert!(c.get("a", Some(2), true, t0).is_none());
        assert!(c.get("a", None, false, t0).is_none());
        // An event mark: miss for the observation that takes it, then the
        // re-read clears it.
        marks.mark("a");
        c.begin(&marks);
        assert!(c.get("a", Some(1), true, t0).is_none());
        put(&mut c, "a", Some(1), true, slow(8), t0);
        assert_eq!(c.get("a", Some(1), true, t0).unwrap().0.vcpus_max, 8);
        // An applied action makes stale only what it wrote.
        let vcpus = Action::SetVcpus {
            uuid: "a".into(),
            domain: "a".into(),
            from: 1,
            to: 2,
            reason: crate::core::model::Reason::Share,
            persist: false,
        };
        c.touched(&vcpus);
        assert!(c.get("a", Some(1), true, t0).unwrap().1.is_empty());
        c.touched(&weight("a"));
        let (_, refresh) = c.get("a", Some(1), true, t0).unwrap();
        assert_eq!(
            refresh,
            Refresh {
                blkio_weight: true,
                ..Refresh::default()
            }
        );
        assert_eq!(c.len(), 0, "an entry with a stale part is not counted");
        // Read back: whole again, the deadline unmoved.
        c.refreshed("a", slow(8));
        assert!(c.get("a", Some(1), true, t0).unwrap().1.is_empty());
        assert_eq!(c.len(), 1);
    }

    fn weight(uuid: &str) -> Action {
        Action::SetBlkioWeight {
            uuid: uuid.into(),
            domain: uuid.into(),
            from: None,
            to: 500,
            persist: false,
        }
    }

    #[test]
    fn marks_survive_until_the_domain_is_read() {
        let t0 = Instant::now();
        let marks = StaleMarks::default();
        let mut c = ReadCache::new(Duration::from_secs(300));
        put(&mut c, "a", Some(1), true, slow(4), t0);
        marks.mark("a");
        c.begin(&marks);
        // Not read in this observation (e.g. a scoped one for another
        // domain): the next observation still sees the mark.
        c.begin(&marks);
        assert!(c.get("a", Some(1), true, t0).is_none());
    }

    #[test]
    fn entries_expire_between_half_and_all_of_the_resync_interval() {
        let t0 = Instant::now();
        let r = Duration::from_secs(100);
        let mut c = ReadCache::new(r);
        let uuids: Vec<String> = (0..200).map(|i| format!("uuid-{i}")).collect();
        for u in &uuids {
            put(&mut c, u, None, false, slow(1), t0);
        }
        for u in &uuids {
            assert!(c
                .get(u, None, false, t0 + r / 2 - Duration::from_millis(1))
                .is_some());
            assert!(c.get(u, None, false, t0 + r).is_none());
        }
        // Spread: at 75 % of the interval some have expired, some not.
        let live = uuids
            .iter()
            .filter(|u| c.get(u, None, false, t0 + r * 3 / 4).is_some())
            .count();
        assert!(live > 40 && live < 160, "{live} of 200 still valid");
    }

    #[test]
    fn a_resync_interval_past_the_clock_does_not_panic() {
        let t0 = Instant::now();
        let mut c = ReadCache::new(Duration::from_secs(u64::MAX));
        put(&mut c, "a", None, false, slow(1), t0);
        assert!(c.get("a", None, false, t0).is_some());
    }

    #[test]
    fn zero_resync_keeps_nothing_and_retain_drops_vanished_domains() {
        let t0 = Instant::now();
        let mut c = ReadCache::new(Duration::ZERO);
        put(&mut c, "a", None, false, slow(1), t0);
        assert!(c.is_empty() && c.get("a", None, false, t0).is_none());
        let mut c = ReadCache::new(Duration::from_secs(60));
        put(&mut c, "a", None, false, slow(1), t0);
        put(&mut c, "b", None, false, slow(1), t0);
        c.retain(&["b"].into_iter().collect());
        assert_eq!(c.len(), 1);
        assert!(c.get("b", None, false, t0).is_some());
        c.clear();
        assert!(c.is_empty());
    }
}
