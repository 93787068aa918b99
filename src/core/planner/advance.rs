//! How the planner's [`History`] moves on after a cycle: one pure function
//! of what the cycle planned, what it enforced and how that ended.

use super::history::{Admission, History, Outcome, Shared};
use super::plan::{Plan, Release};
use crate::core::model::{Action, DomainObs};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What one cycle did, as the history needs it.
pub struct CycleFacts<'a> {
    /// The plan the cycle made.
    pub plan: &'a Plan,
    /// The domains after the cycle: as observed, with the changes libvirt
    /// accepted applied.
    pub domains: &'a [DomainObs],
    /// A scoped cycle: the domains (UUIDs) it observed and enforced; only
    /// their part of the plan is recorded. `None`: a full cycle.
    pub scope: Option<&'a HashSet<String>>,
    /// Whether the plan was enforced (enforce mode, agent not paused): in
    /// observe mode or while paused nothing is recorded but the domains
    /// that are gone.
    pub enforced: bool,
    /// The actions that ran, in order, with how each ended.
    pub outcomes: &'a [(&'a Action, Outcome)],
    /// The planner's clock (seconds).
    pub now: u64,
}

/// The history after a cycle. Shares `prev` (no copy) when the cycle
/// changed nothing in it.
pub fn advance(prev: &Arc<History>, c: &CycleFacts<'_>) -> Arc<History> {
    let mut h = Arc::clone(prev);
    if c.enforced {
        // Pressure reclaim carries over as planned (scoped: for the
        // scoped domains only).
        match c.scope {
            None => {
                if *h.reclaim != c.plan.reclaim {
                    Arc::make_mut(&mut h).reclaim = Arc::new(c.plan.reclaim.clone());
                }
            }
            Some(scope) => {
                for u in scope.iter().map(String::as_str) {
                    let want = c.plan.reclaim.get_key_value(u);
                    if h.reclaim.get(u) == want.map(|(_, v)| v) {
                        continue;
                    }
                    let reclaim = edit(&mut h, |h| &mut h.reclaim);
                    match want {
                        Some((k, v)) => reclaim.insert(k.clone(), *v),
                        None => reclaim.remove(u),
                    };
                }
            }
        }
        if !c.outcomes.is_empty() {
            let runs: HashMap<&str, Option<u32>> =
                c.domains.iter().map(|d| (&*d.uuid, d.id)).collect();
            let hist = Arc::make_mut(&mut h);
            for (action, outcome) in c.outcomes {
                let run = runs.get(action.uuid()).copied().flatten();
                hist.record_in_run(action, *outcome, c.now, run);
            }
        }
    }
    advance_admission(&mut h, c.plan);
    if c.enforced {
        advance_release(&mut h, c);
    }
    let alive: HashSet<&str> = c.domains.iter().map(|d| &*d.uuid).collect();
    if !h.all_alive(|u| alive.contains(u)) {
        Arc::make_mut(&mut h).retain(|u| alive.contains(u));
    }
    if !h.vcpu_pending.is_empty() {
        Arc::make_mut(&mut h).observe(c.domains);
    }
    h
}

/// One map of `h` to change: the history, then the map, are copied first
/// when another holds them.
fn edit<V: Clone>(
    h: &mut Arc<History>,
    map: impl FnOnce(&mut History) -> &mut Shared<V>,
) -> &mut BTreeMap<Arc<str>, V> {
    Arc::make_mut(map(Arc::make_mut(h)))
}

/// What domains had before the agent first changed them (from the
/// actions that ran on managed domains), and the releases that finished.
fn advance_release(h: &mut Arc<History>, c: &CycleFacts<'_>) {
    let unmanaged: HashMap<&str, Option<Release>> = c
        .plan
        .unmanaged
        .iter()
        .map(|u| (&*u.uuid, u.release))
        .collect();
    let in_scope = |u: &str| c.scope.is_none_or(|s| s.contains(u));
    for (action, _) in c.outcomes {
        let uuid = action.names().0;
        if unmanaged.contains_key(&**uuid) || !action.is_allocation() {
            continue;
        }
        let mut noted = h.originals.get(uuid).cloned().unwrap_or_default();
        noted.note(action);
        if h.originals.get(uuid) != Some(&noted) {
            edit(h, |h| &mut h.originals).insert(uuid.clone(), noted);
        }
    }
    // Originals noted for an earlier domain with a UUID now another's.
    let stale: Vec<&str> = c
        .plan
        .unmanaged
        .iter()
        .filter(|u| {
            h.originals
                .get(&*u.uuid)
                .is_some_and(|o| !o.belong_to(&u.name))
        })
        .map(|u| &*u.uuid)
        .collect();
    for uuid in stale {
        edit(h, |h| &mut h.originals).remove(uuid);
    }
    for u in &c.plan.unmanaged {
        if let (Some(Release::Done(how)), true) = (u.release, h.originals.contains_key(&u.uuid)) {
            if in_scope(&u.uuid) {
                edit(h, |h| &mut h.originals).remove(&u.uuid);
                edit(h, |h| &mut h.released).insert(u.uuid.clone(), how);
            }
        }
    }
    if !h.released.is_empty() {
        for m in c.plan.pools.iter().flat_map(|p| &p.members) {
            if h.released.contains_key(&*m.uuid) {
                edit(h, |h| &mut h.released).remove(&*m.uuid);
            }
        }
    }
}

/// Admission is sticky: the members admitted by this plan keep their place
/// (a new one gets the next), the others lose theirs; active members not
/// admitted are noted as refused (they wait for room to come back).
fn advance_admission(h: &mut Arc<History>, plan: &Plan) {
    let refused: Vec<(&Arc<str>, &str)> = plan
        .pools
        .iter()
        .flat_map(|p| {
            p.members
                .iter()
                .filter(|m| !m.admitted && m.state.is_active())
                .map(move |m| (&m.uuid, p.name.as_str()))
        })
        .collect();
    // A domain is a member of one pool at most: one entry per UUID.
    let same = h.refused.len() == refused.len()
        && refused
            .iter()
            .all(|(u, p)| h.refused.get(&***u).map(String::as_str) == Some(*p));
    if !same {
        Arc::make_mut(h).refused = Arc::new(
            refused
                .into_iter()
                .map(|(u, p)| (u.clone(), p.to_string()))
                .collect(),
        );
    }
    let mut admitted: HashMap<&str, &str> = HashMap::new();
    for p in &plan.pools {
        for m in p.members.iter().filter(|m| m.admitted) {
            admitted.insert(&*m.uuid, p.name.as_str());
        }
    }
    let same = h.admitted.len() == admitted.len()
        && h.admitted
            .iter()
            .all(|(u, a)| admitted.get(&**u) == Some(&a.pool.as_str()));
    if same {
        return;
    }
    let held = edit(h, |h| &mut h.admitted);
    held.retain(|u, a| admitted.get(&**u) == Some(&a.pool.as_str()));
    let mut next = held.values().map(|a| a.seq + 1).max().unwrap_or(0);
    // New admissions in plan order (pools by name, members by UUID):
    // deterministic.
    for p in &plan.pools {
        for m in p.members.iter().filter(|m| m.admitted) {
            if !held.contains_key(&*m.uuid) {
                held.insert(
                    m.uuid.clone(),
                    Admission {
                        pool: p.name.clone(),
                        seq: next,
                    },
                );
                next += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Reason;
    use crate::core::planner::testing;

    fn plan_with_reclaim(reclaim: &[(&str, u64)]) -> Plan {
        let mut p = testing::empty_plan();
        p.reclaim = reclaim.iter().map(|(u, v)| ((*u).into(), *v)).collect();
        p
    }

    fn dom(uuid: &str, id: u32) -> DomainObs {
        let mut d = testing::domain(uuid, None);
        d.uuid = uuid.into();
        d.id = Some(id);
        d
    }

    /// [`advance`] after a full, enforced cycle.
    fn full_cycle(
        prev: &Arc<History>,
        plan: &Plan,
        domains: &[DomainObs],
        outcomes: &[(&Action, Outcome)],
        now: u64,
    ) -> Arc<History> {
        advance(
            prev,
            &CycleFacts {
                plan,
                domains,
                scope: None,
                enforced: true,
                outcomes,
                now,
            },
        )
    }

    #[test]
    fn nothing_changed_shares_the_history() {
        let prev = Arc::new(History::default());
        let plan = plan_with_reclaim(&[]);
        let next = full_cycle(&prev, &plan, &[dom("a", 1)], &[], 5);
        assert!(Arc::ptr_eq(&prev, &next));
    }

    #[test]
    fn records_outcomes_reclaim_and_forgets_the_gone() {
        let mut h = History::default();
        Arc::make_mut(&mut h.reclaim).insert("gone".into(), 7);
        let prev = Arc::new(h);
        let plan = plan_with_reclaim(&[("a", 64), ("b", 32)]);
        let domains = [dom("a", 3), dom("b", 4)];
        let vcpus = Action::SetVcpus {
            uuid: "a".into(),
            domain: "a".into(),
            from: 2,
            to: 1,
            reason: Reason::Share,
            persist: false,
        };
        let stats = Action::SetStatsPeriod {
            uuid: "b".into(),
            domain: "b".into(),
            secs: 5,
        };
        let outcomes = [(&vcpus, Outcome::Timeout), (&stats, Outcome::Failed)];
        let scope: HashSet<String> = ["a".to_string()].into();
        let next = advance(
            &prev,
            &CycleFacts {
                plan: &plan,
                domains: &domains,
                scope: Some(&scope),
                enforced: true,
                outcomes: &outcomes,
                now: 9,
            },
        );
        // Scoped: only a's reclaim is taken from the plan.
        assert_eq!(next.reclaim.get("a"), Some(&64));
        assert_eq!(next.reclaim.get("b"), None);
        assert!(!next.reclaim.contains_key("gone"));
        assert_eq!(next.vcpu_changed_at.get("a"), Some(&9));
        assert_eq!(
            next.vcpu_pending["a"].run,
            Some(3),
            "pending pinned to the run"
        );
        // A stats period that failed is not tried again in that run.
        assert_eq!(next.stats_period.get("b"), Some(&Some(4)));
        // Observe mode records nothing.
        let still = advance(
            &prev,
            &CycleFacts {
                plan: &plan,
                domains: &domains,
                scope: None,
                enforced: false,
                outcomes: &[],
                now: 9,
            },
        );
        assert!(
            still.reclaim.is_empty(),
            "gone domain forgotten, nothing recorded"
        );
    }

    #[test]
    fn a_lost_stats_period_is_tried_again() {
        let prev = Arc::new(History::default());
        let plan = plan_with_reclaim(&[]);
        let stats = Action::SetStatsPeriod {
            uuid: "b".into(),
            domain: "b".into(),
            secs: 5,
        };
        let next = full_cycle(&prev, &plan, &[dom("b", 4)], &[(&stats, Outcome::Lost)], 1);
        assert!(next.stats_period.is_empty());
    }
}
