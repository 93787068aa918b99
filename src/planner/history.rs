//! What the planner remembers between cycles. The monitor keeps one
//! [`History`], feeds it the outcome of every enforced action
//! ([`History::record`]) and the plan itself ([`History::record_plan`]),
//! and passes it back to the next [`plan`](super::plan).

use super::Plan;
use crate::model::Action;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// A vCPU change libvirt reported as timed out: the planner treats it as
/// pending (no retry) while the domain still shows `from` vCPUs and the
/// unplug back-off has not passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingVcpus {
    /// vCPUs the domain had when the change was sent.
    pub from: u64,
    /// vCPUs requested.
    pub to: u64,
    /// When the timeout was recorded (caller's clock, seconds).
    pub since: u64,
}

/// What the planner remembers between cycles (kept by the monitor).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Per domain UUID: when (seconds, caller's clock) a vCPU change was
    /// last attempted (the cooldown runs from there).
    #[serde(default)]
    pub vcpu_changed_at: BTreeMap<String, u64>,
    /// Per domain UUID: a vCPU change that timed out.
    #[serde(default)]
    pub vcpu_pending: BTreeMap<String, PendingVcpus>,
    /// Per domain UUID: bytes by which host memory pressure currently
    /// lowers the member's memory target (grown and released gradually).
    #[serde(default)]
    pub reclaim: BTreeMap<String, u64>,
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
        let Action::SetVcpus { uuid, from, to, .. } = action else {
            return;
        };
        self.vcpu_changed_at.insert(uuid.clone(), now);
        match outcome.into() {
            Outcome::Timeout => {
                self.vcpu_pending.insert(
                    uuid.clone(),
                    PendingVcpus {
                        from: *from,
                        to: *to,
                        since: now,
                    },
                );
            }
            Outcome::Ok | Outcome::Failed => {
                self.vcpu_pending.remove(uuid);
            }
        }
    }

    /// Carries what the plan decided about pressure reclaim into the next
    /// cycle. Call once per cycle with the plan that was enforced (also in
    /// observe mode).
    pub fn record_plan(&mut self, plan: &Plan) {
        self.reclaim.clone_from(&plan.reclaim);
    }

    /// Forgets domains that no longer exist.
    pub fn retain(&mut self, alive: impl Fn(&str) -> bool) {
        self.vcpu_changed_at.retain(|u, _| alive(u));
        self.vcpu_pending.retain(|u, _| alive(u));
        self.reclaim.retain(|u, _| alive(u));
    }

    /// The pending vCPU change of a domain that still shows `observed`
    /// vCPUs at `now`, if any.
    pub fn pending_vcpus(
        &self,
        uuid: &str,
        observed: u64,
        now: u64,
        backoff: u64,
    ) -> Option<PendingVcpus> {
        pending_at(self.vcpu_pending.get(uuid).copied(), observed, now, backoff)
    }

    /// Whether the vCPU cooldown of a domain is still running at `now`.
    pub fn in_cooldown(&self, uuid: &str, now: u64, cooldown: u64) -> bool {
        cooling_at(self.vcpu_changed_at.get(uuid).copied(), now, cooldown)
    }
}

/// [`History::pending_vcpus`] with the domain's entry already looked up.
pub(crate) fn pending_at(
    pending: Option<PendingVcpus>,
    observed: u64,
    now: u64,
    backoff: u64,
) -> Option<PendingVcpus> {
    pending.filter(|p| p.from == observed && now < p.since.saturating_add(backoff))
}

/// [`History::in_cooldown`] with the domain's entry already looked up.
pub(crate) fn cooling_at(changed_at: Option<u64>, now: u64, cooldown: u64) -> bool {
    changed_at.is_some_and(|t| now < t.saturating_add(cooldown))
}

/// One domain's entries in a [`History`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Entry {
    pub changed_at: Option<u64>,
    pub pending: Option<PendingVcpus>,
    pub reclaim: u64,
}

/// Looks up the history of domains visited in ascending UUID order: a
/// merge with the history's sorted maps, O(domains + entries) for a whole
/// cycle instead of a tree search per domain.
pub(crate) struct Cursor<'h> {
    changed_at: Seek<'h, u64>,
    pending: Seek<'h, PendingVcpus>,
    reclaim: Seek<'h, u64>,
}

struct Seek<'h, V>(std::iter::Peekable<std::collections::btree_map::Iter<'h, String, V>>);

impl<'h, V: Copy> Seek<'h, V> {
    fn new(m: &'h BTreeMap<String, V>) -> Self {
        Seek(m.iter().peekable())
    }

    /// The entry of `uuid`; later calls must not pass a smaller UUID.
    fn get(&mut self, uuid: &str) -> Option<V> {
        while let Some((k, _)) = self.0.peek() {
            if k.as_str() < uuid {
                self.0.next();
            } else {
                break;
            }
        }
        match self.0.peek() {
            Some((k, v)) if k.as_str() == uuid => Some(**v),
            _ => None,
        }
    }
}

impl<'h> Cursor<'h> {
    pub fn new(h: &'h History) -> Self {
        Cursor {
            changed_at: Seek::new(&h.vcpu_changed_at),
            pending: Seek::new(&h.vcpu_pending),
            reclaim: Seek::new(&h.reclaim),
        }
    }

    /// The entries of `uuid`; UUIDs must come in ascending order.
    pub fn get(&mut self, uuid: &str) -> Entry {
        Entry {
            changed_at: self.changed_at.get(uuid),
            pending: self.pending.get(uuid),
            reclaim: self.reclaim.get(uuid).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reason;

    fn set_vcpus(from: u64, to: u64) -> Action {
        Action::SetVcpus {
            uuid: "u".into(),
            domain: "d".into(),
            from,
            to,
            reason: Reason::Share,
            persist: false,
        }
    }

    #[test]
    fn timeout_is_pending_until_count_changes_or_backoff() {
        let mut h = History::default();
        h.record(&set_vcpus(4, 2), Outcome::Timeout, 100);
        assert!(h.pending_vcpus("u", 4, 150, 300).is_some());
        assert!(h.pending_vcpus("u", 3, 150, 300).is_none(), "count changed");
        assert!(
            h.pending_vcpus("u", 4, 400, 300).is_none(),
            "back-off passed"
        );
        h.record(&set_vcpus(4, 2), true, 400);
        assert!(h.vcpu_pending.is_empty());
        assert!(h.in_cooldown("u", 459, 60));
        assert!(!h.in_cooldown("u", 460, 60));
    }

    #[test]
    fn bool_outcomes_still_accepted() {
        let mut h = History::default();
        h.record(&set_vcpus(1, 2), false, 5);
        assert_eq!(h.vcpu_changed_at.get("u"), Some(&5));
        h.retain(|_| false);
        assert_eq!(h, History::default());
    }
}
