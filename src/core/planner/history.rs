//! What the planner remembers between cycles. The reconciler keeps one
//! [`History`], moves it on after every cycle with
//! [`advance`](super::advance::advance) (the outcome of every enforced
//! action, the plan's pressure reclaim) and passes it back to the next
//! [`plan`](super::plan).

use crate::core::keys::head_word;
use crate::core::model::{Action, CpuQuota, DomainObs, IoTune};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How an enforced action ended, as the enforcer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// libvirt accepted the change.
    Ok,
    /// libvirt reported a timeout (e.g. QEMU did not finish a vCPU unplug
    /// in time): the change may still complete later.
    Timeout,
    /// libvirt refused or failed the change.
    Failed,
    /// The connection was lost: whether it happened is not known (it is
    /// tried again once the connection is back).
    Lost,
}

impl From<bool> for Outcome {
    /// `true` → [`Outcome::Ok`], `false` → [`Outcome::Failed`].
    fn from(ok: bool) -> Outcome {
        if ok {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

/// A vCPU change libvirt reported as timed out. It freezes the domain's
/// vCPU count for the rest of the domain's run (see
/// [`History::vcpus_frozen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingVcpus {
    /// vCPUs the domain had when the change was sent.
    pub from: u64,
    /// vCPUs requested.
    pub to: u64,
    /// When the timeout was recorded (caller's clock, seconds).
    pub since: u64,
    /// libvirt ID of the domain's run the change timed out in (`None`
    /// until [`History::observe`] saw the domain).
    #[serde(default)]
    pub run: Option<u32>,
}

impl PendingVcpus {
    /// A removal (fewer vCPUs) rather than an addition.
    pub fn is_removal(&self) -> bool {
        self.to < self.from
    }
}

/// One of the history's maps (per domain UUID), shared with the history it
/// moved on from until either changes it: a cycle that changes one map
/// copies that map, not every domain's whole history.
pub type Shared<V> = Arc<BTreeMap<Arc<str>, V>>;

fn is_empty<V>(map: &Shared<V>) -> bool {
    map.is_empty()
}

/// Forgets the entries of domains not `alive`, copying the map only when
/// one goes.
fn retain_alive<V: Clone>(map: &mut Shared<V>, alive: &impl Fn(&str) -> bool) {
    if !map.keys().all(|u| alive(u)) {
        Arc::make_mut(map).retain(|u, _| alive(u));
    }
}

/// What the planner remembers between cycles (kept by the reconciler).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    /// Per domain UUID: when (seconds, caller's clock) a vCPU change was
    /// last attempted (the cooldown runs from there).
    pub vcpu_changed_at: Shared<u64>,
    /// Per domain UUID: a vCPU change that timed out.
    pub vcpu_pending: Shared<PendingVcpus>,
    /// Per domain UUID: bytes by which host memory pressure currently
    /// lowers the member's memory target (grown and released gradually).
    pub reclaim: Shared<u64>,
    /// Per domain UUID: the libvirt run ID (see [`DomainObs::id`]) in which
    /// its balloon statistics period was set (or could not be: it is not
    /// tried again in that run).
    pub stats_period: Shared<Option<u32>>,
    /// Per domain UUID: the pool it is admitted to, and when (admission is
    /// sticky, see [`super::admission`]; the agent persists this).
    pub admitted: Shared<Admission>,
    /// Per domain UUID: the pool that refused to admit it (it is active and
    /// its floors did not fit); it waits for room before it is admitted
    /// again (see [`super::admission`]; the agent persists this).
    pub refused: Shared<String>,
    /// Per domain UUID: what it had before the agent first changed it,
    /// given back when it leaves management (the agent persists this).
    pub originals: Shared<Originals>,
    /// Domains given back (or left as they are, by `agent.on_release`)
    /// since they left management: the views say `released` until they
    /// join a pool again.
    pub released: Shared<Released>,
    /// Per domain UUID: when (seconds, caller's clock) its CPU-time limit
    /// was last raised (a demand pool lowers it again only after
    /// `cpu.cooldown`).
    #[serde(skip_serializing_if = "is_empty")]
    pub cpu_raised_at: Shared<u64>,
}

/// What a domain had before the agent first changed each of these
/// (`None`: never changed, or not known).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Originals {
    /// The domain's name when they were noted: another domain defined
    /// later with the same UUID is not given them.
    pub name: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    /// Bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Per disk target.
    #[serde(skip_serializing_if = "DiskLimits::is_empty")]
    pub iotune: DiskLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blkio_weight: Option<u64>,
    /// The scheduler quota and period it had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<CpuQuota>,
    /// A change also went to the persistent config (`persist = true`):
    /// giving back writes it there too, and it is kept across a stop.
    pub persisted: bool,
}

impl Originals {
    /// Whether these were noted for the domain named `name` (not for an
    /// earlier domain with the same UUID).
    pub fn belong_to(&self, name: &str) -> bool {
        self.name.is_empty() || *self.name == *name
    }

    /// Notes the value an action found, if none is noted for it yet
    /// (starting afresh when the action is on a domain of another name:
    /// the UUID was given to a new domain).
    pub fn note(&mut self, action: &Action) {
        if !self.belong_to(action.domain()) {
            *self = Originals::default();
        }
        if self.name.is_empty() {
            self.name = action.names().1.clone();
        }
        match action {
            Action::SetVcpus { from, persist, .. } => {
                self.vcpus.get_or_insert(*from);
                self.persisted |= persist;
            }
            Action::SetMemory { from, persist, .. } => {
                self.memory.get_or_insert(*from);
                self.persisted |= persist;
            }
            Action::SetBlockIoTune {
                disk,
                from,
                persist,
                ..
            } => {
                self.iotune.note(disk, *from);
                self.persisted |= persist;
            }
            Action::SetCpuShares { from, persist, .. } => {
                if self.cpu_shares.is_none() {
                    self.cpu_shares = *from;
                }
                self.persisted |= persist;
            }
            Action::SetBlkioWeight { from, persist, .. } => {
                if self.blkio_weight.is_none() {
                    self.blkio_weight = *from;
                }
                self.persisted |= persist;
            }
            Action::SetCpuQuota { was, persist, .. } => {
                if self.cpu_quota.is_none() {
                    self.cpu_quota = *was;
                }
                self.persisted |= persist;
            }
            Action::SetStatsPeriod { .. } => {}
        }
    }

    /// Whether nothing is noted.
    pub fn is_empty(&self) -> bool {
        self.vcpus.is_none()
            && self.memory.is_none()
            && self.iotune.is_empty()
            && self.cpu_shares.is_none()
            && self.blkio_weight.is_none()
            && self.cpu_quota.is_none()
    }
}

/// A domain's disks' I/O limits by target, as they were before the agent
/// first changed them: a short list sorted by target (a domain has a few
/// disks; a map node would hold room for eleven), a JSON object in
/// `history.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskLimits(Vec<(Arc<str>, IoTune)>);

impl DiskLimits {
    /// The limits noted for `disk`.
    pub fn get(&self, disk: &str) -> Option<&IoTune> {
        self.find(disk).ok().map(|i| &self.0[i].1)
    }

    /// Notes `limits` for `disk` unless some are noted already.
    pub fn note(&mut self, disk: &Arc<str>, limits: IoTune) {
        if let Err(i) = self.find(disk) {
            self.0.reserve_exact(1);
            self.0.insert(i, (disk.clone(), limits));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The disk targets noted, in order.
    pub fn disks(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(d, _)| &**d)
    }

    fn find(&self, disk: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(d, _)| (**d).cmp(disk))
    }
}

impl Serialize for DiskLimits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(d, t)| (d, t)))
    }
}

impl<'de> Deserialize<'de> for DiskLimits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<Arc<str>, IoTune>::deserialize(d)?;
        Ok(DiskLimits(m.into_iter().collect()))
    }
}

/// How a domain was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Released {
    /// What the agent changed was given back.
    Restored,
    /// Left as the agent had set it (`agent.on_release = "keep"`).
    Kept,
}

/// A member's admission to a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub pool: String,
    /// Increasing with every admission: the order of admissions.
    pub seq: u64,
}

impl History {
    /// Records the outcome of one enforced action at time `now` (seconds on
    /// the same clock as [`PlanInput::now`](super::PlanInput::now)).
    ///
    /// `outcome` is an [`Outcome`] or a plain `bool` (`true` = ok).
    /// Every attempted vCPU change (ok, timed out or failed) starts the
    /// domain's cooldown, so a failing change is retried at most once per
    /// cooldown; a timed-out one is also remembered as pending.
    pub fn record(&mut self, action: &Action, outcome: impl Into<Outcome>, now: u64) {
        self.record_in_run(action, outcome.into(), now, None);
    }

    /// [`History::record`] for an action on a domain in its run `run`
    /// (its libvirt ID when the action was planned).
    pub fn record_in_run(&mut self, action: &Action, outcome: Outcome, now: u64, run: Option<u32>) {
        if let Action::SetStatsPeriod { uuid, .. } = action {
            if outcome != Outcome::Lost {
                Arc::make_mut(&mut self.stats_period).insert(uuid.clone(), run);
            }
            return;
        }
        if let Action::SetCpuQuota { uuid, from, to, .. } = action {
            if to > from && outcome == Outcome::Ok {
                Arc::make_mut(&mut self.cpu_raised_at).insert(uuid.clone(), now);
            }
            return;
        }
        let Action::SetVcpus { uuid, from, to, .. } = action else {
            return;
        };
        Arc::make_mut(&mut self.vcpu_changed_at).insert(uuid.clone(), now);
        match outcome {
            Outcome::Timeout => {
                Arc::make_mut(&mut self.vcpu_pending).insert(
                    uuid.clone(),
                    PendingVcpus {
                        from: *from,
                        to: *to,
                        since: now,
                        run: None,
                    },
                );
            }
            Outcome::Ok | Outcome::Failed | Outcome::Lost => {
                // A timed-out removal holds for the whole run, whatever
                // happens after it; a timed-out addition ends here.
                if self
                    .vcpu_pending
                    .get(&**uuid)
                    .is_some_and(|p| !p.is_removal())
                {
                    Arc::make_mut(&mut self.vcpu_pending).remove(&**uuid);
                }
            }
        }
    }

    /// Keeps timed-out vCPU changes tied to the run of the domain they
    /// happened in: pins the libvirt run ID of new ones, and forgets those
    /// whose domain stopped or restarted (run ID changed). Call once per
    /// cycle, after enforcement, with the domains the plan was made from.
    pub fn observe(&mut self, domains: &[DomainObs]) {
        let by_uuid: HashMap<&str, &DomainObs> = domains.iter().map(|d| (&*d.uuid, d)).collect();
        Arc::make_mut(&mut self.vcpu_pending).retain(|uuid, p| {
            let Some(d) = by_uuid.get(&**uuid) else {
                return true;
            };
            if !d.state.is_active() {
                return false;
            }
            match (p.run, d.id) {
                (None, id) => {
                    p.run = id;
                    true
                }
                (Some(run), Some(id)) => run == id,
                (Some(_), None) => true,
            }
        });
    }

    /// Whether every domain mentioned is alive (then [`History::retain`]
    /// would change nothing).
    pub fn all_alive(&self, alive: impl Fn(&str) -> bool) -> bool {
        self.vcpu_changed_at.keys().all(|u| alive(u))
            && self.vcpu_pending.keys().all(|u| alive(u))
            && self.reclaim.keys().all(|u| alive(u))
            && self.stats_period.keys().all(|u| alive(u))
            && self.admitted.keys().all(|u| alive(u))
            && self.refused.keys().all(|u| alive(u))
            && self.originals.keys().all(|u| alive(u))
            && self.released.keys().all(|u| alive(u))
            && self.cpu_raised_at.keys().all(|u| alive(u))
    }

    /// Forgets domains that no longer exist.
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        retain_alive(&mut self.vcpu_changed_at, &alive);
        retain_alive(&mut self.vcpu_pending, &alive);
        retain_alive(&mut self.reclaim, &alive);
        retain_alive(&mut self.stats_period, &alive);
        retain_alive(&mut self.admitted, &alive);
        retain_alive(&mut self.refused, &alive);
        retain_alive(&mut self.originals, &alive);
        retain_alive(&mut self.released, &alive);
        retain_alive(&mut self.cpu_raised_at, &alive);
    }

    /// The timed-out vCPU change that forbids moving domain `d` to `want`
    /// vCPUs now, if any. In the run a vCPU change timed out in:
    ///
    /// - while libvirt does not show the requested count, no vCPU change
    ///   at all (the hypervisor may still be working on it, or its state
    ///   may be out of step with libvirt's; a retry can fail or crash it);
    /// - after a timed-out removal, never more vCPUs than the domain has
    ///   (re-adding a CPU whose removal went wrong is what crashes QEMU).
    ///
    /// A new run (another libvirt ID, see [`History::observe`]) starts
    /// clean. `None` IDs count as the same run.
    pub fn vcpus_frozen(&self, d: &DomainObs, want: u64) -> Option<PendingVcpus> {
        frozen_at(self.vcpu_pending.get(&*d.uuid).copied(), d, want)
    }

    /// Whether the vCPU cooldown of a domain is still running at `now`.
    pub fn in_cooldown(&self, uuid: &str, now: u64, cooldown: u64) -> bool {
        cooling_at(self.vcpu_changed_at.get(uuid).copied(), now, cooldown)
    }
}

/// [`History::vcpus_frozen`] with the domain's entry already looked up.
pub(crate) fn frozen_at(p: Option<PendingVcpus>, d: &DomainObs, want: u64) -> Option<PendingVcpus> {
    frozen_with(p, d.id, d.vcpus, want)
}

/// [`frozen_at`] with the domain's run ID and vCPU count.
pub(crate) fn frozen_with(
    p: Option<PendingVcpus>,
    id: Option<u32>,
    vcpus: u64,
    want: u64,
) -> Option<PendingVcpus> {
    let p = p?;
    let same_run = match (p.run, id) {
        (Some(run), Some(id)) => run == id,
        _ => true,
    };
    let unsettled = vcpus != p.to;
    let regrow = p.is_removal() && want > vcpus;
    (same_run && (unsettled || regrow)).then_some(p)
}

/// [`History::in_cooldown`] with the domain's entry already looked up.
pub(crate) fn cooling_at(changed_at: Option<u64>, now: u64, cooldown: u64) -> bool {
    changed_at.is_some_and(|t| now < t.saturating_add(cooldown))
}

/// One domain's entries in a [`History`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Entry<'h> {
    pub changed_at: Option<u64>,
    pub pending: Option<PendingVcpus>,
    pub reclaim: u64,
    /// The run in which the stats period was set, if it was.
    pub stats_period: Option<Option<u32>>,
    /// Its admission, if it is admitted to a pool.
    pub admitted: Option<&'h Admission>,
    /// The pool that refused it, if one did.
    pub refused: Option<&'h String>,
    /// What it had before the agent changed it, if it did.
    pub originals: Option<&'h Originals>,
    /// How it was released, if it was.
    pub released: Option<&'h Released>,
    /// When its CPU-time limit was last raised.
    pub cpu_raised_at: Option<u64>,
}

/// Looks up the history of domains visited in ascending UUID order: a
/// merge with the history's sorted maps, O(domains + entries) for a whole
/// cycle instead of a tree search per domain.
pub(crate) struct Cursor<'h> {
    changed_at: Seek<'h, u64>,
    pending: Seek<'h, PendingVcpus>,
    reclaim: Seek<'h, u64>,
    stats_period: Seek<'h, Option<u32>>,
    admitted: Seek<'h, Admission>,
    refused: Seek<'h, String>,
    originals: Seek<'h, Originals>,
    released: Seek<'h, Released>,
    cpu_raised_at: Seek<'h, u64>,
}

struct Seek<'h, V>(std::iter::Peekable<std::collections::btree_map::Iter<'h, Arc<str>, V>>);

impl<'h, V> Seek<'h, V> {
    fn new(m: &'h BTreeMap<Arc<str>, V>) -> Self {
        Seek(m.iter().peekable())
    }

    /// The entry of `uuid` (`key`: its [`head_word`]); later calls must
    /// not pass a smaller UUID. The keys decide most comparisons without
    /// reading the strings.
    fn get(&mut self, uuid: &str, key: u64) -> Option<&'h V> {
        while let Some(&(k, v)) = self.0.peek() {
            let kk = head_word(k);
            if kk < key || (kk == key && &**k < uuid) {
                self.0.next();
                continue;
            }
            return (kk == key && &**k == uuid).then_some(v);
        }
        None
    }
}

impl<'h> Cursor<'h> {
    pub fn new(h: &'h History) -> Self {
        Cursor {
            changed_at: Seek::new(&h.vcpu_changed_at),
            pending: Seek::new(&h.vcpu_pending),
            reclaim: Seek::new(&h.reclaim),
            stats_period: Seek::new(&h.stats_period),
            admitted: Seek::new(&h.admitted),
            refused: Seek::new(&h.refused),
            originals: Seek::new(&h.originals),
            released: Seek::new(&h.released),
            cpu_raised_at: Seek::new(&h.cpu_raised_at),
        }
    }

    /// The entries of `uuid` (`key`: its [`head_word`]); UUIDs must come
    /// in ascending order.
    pub fn get(&mut self, uuid: &str, key: u64) -> Entry<'h> {
        Entry {
            changed_at: self.changed_at.get(uuid, key).copied(),
            pending: self.pending.get(uuid, key).copied(),
            reclaim: self.reclaim.get(uuid, key).copied().unwrap_or(0),
            stats_period: self.stats_period.get(uuid, key).copied(),
            admitted: self.admitted.get(uuid, key),
            refused: self.refused.get(uuid, key),
            originals: self.originals.get(uuid, key),
            released: self.released.get(uuid, key),
            cpu_raised_at: self.cpu_raised_at.get(uuid, key).copied(),
        }
    }
}

#[cfg(test)]
mod tests;
