//! What a candidate change would do, as the difference of two plans made
//! on the same observation: today's and the candidate's. Which members'
//! targets move, which join or leave a pool, which become unadmitted (or
//! admitted), which pool budgets change and which no longer hold their
//! members' floors. Pure: the what-if endpoint (`POST /v1/plan`) computes
//! both plans and calls [`diff`].

use crate::core::model::{PerResource, Reason, Resource};
use crate::core::planner::{MemberPlan, Plan, PoolPlan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The difference of two plans.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanDiff {
    /// Pools with any difference, by name.
    pub pools: Vec<PoolDiff>,
    /// Members whose target of some resource moves (in a pool before and
    /// after, admitted both times).
    pub moved: usize,
    /// Active members admitted before and not after (or new and not
    /// admitted).
    pub unadmitted: usize,
    /// Active members not admitted before and admitted after.
    pub admitted: usize,
    /// Members that join a pool, leave one, or change pools.
    pub regrouped: usize,
    /// Pool resources whose budget no longer holds the floors of the
    /// pool's active members (and did before, or the pool is new).
    pub budgets_short: usize,
}

impl PlanDiff {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

/// Whether a pool is in both plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Both,
    /// Only in the candidate's plan.
    Added,
    /// Only in today's.
    Removed,
}

/// One pool's differences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolDiff {
    pub name: String,
    pub presence: Presence,
    /// Resources whose budget or allocation changes, or whose budget does
    /// not hold the floors after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceDiff>,
    /// Members that differ, by name: those in the pool after, then those
    /// that leave it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberDiff>,
}

impl PoolDiff {
    /// The difference of resource `r`, if it has one.
    pub fn resource(&self, r: Resource) -> Option<&ResourceDiff> {
        self.resources.iter().find(|x| x.resource == r)
    }
}

/// One resource of one pool, before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDiff {
    pub resource: Resource,
    /// `None` where the pool does not manage it (or is not there).
    pub budget_before: Option<u64>,
    pub budget_after: Option<u64>,
    pub allocated_before: u64,
    pub allocated_after: u64,
    /// Σ floors of the pool's active members after.
    pub floors_after: u64,
    /// Whether the budget after holds those floors (false: some members
    /// are left unadmitted).
    pub fits_after: bool,
}

/// One member's place and targets, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberDiff {
    pub name: String,
    pub uuid: String,
    /// Its pool before (`None`: unmanaged or not there).
    pub pool_before: Option<String>,
    pub pool_after: Option<String>,
    /// Whether it was / would be admitted (`None` outside a pool).
    pub admitted_before: Option<bool>,
    pub admitted_after: Option<bool>,
    /// Why it would not be admitted, or why nothing is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_after: Option<String>,
    /// Resources whose target differs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetMove>,
}

impl MemberDiff {
    /// Joins, leaves or changes pools.
    pub fn regrouped(&self) -> bool {
        self.pool_before != self.pool_after
    }

    /// Active and admitted before, not after (or new and not admitted).
    pub fn becomes_unadmitted(&self) -> bool {
        self.admitted_after == Some(false) && self.admitted_before != Some(false)
    }

    /// Not admitted before, admitted after.
    pub fn becomes_admitted(&self) -> bool {
        self.admitted_after == Some(true) && self.admitted_before == Some(false)
    }
}

/// A target that moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetMove {
    pub resource: Resource,
    /// `None`: no target on that side (not a member, unmanaged resource).
    pub before: Option<u64>,
    pub after: Option<u64>,
    /// Why the target after is what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// A member's place in a plan.
struct Side<'a> {
    pool: &'a PoolPlan,
    member: &'a MemberPlan,
}

fn members(plan: &Plan) -> HashMap<&str, Side<'_>> {
    let mut out = HashMap::new();
    for pool in &plan.pools {
        for member in &pool.members {
            out.insert(&*member.uuid, Side { pool, member });
        }
    }
    out
}

/// The targets of an admitted active member (others hold nothing).
fn targets(s: Option<&Side<'_>>) -> PerResource<Option<(u64, Reason)>> {
    PerResource::from_fn(|r| {
        let s = s.filter(|s| s.member.admitted && s.member.state.is_active())?;
        s.member.alloc.get(r).map(|a| (a.target, a.target_reason))
    })
}

fn floors(p: &PoolPlan, r: Resource) -> u64 {
    p.members
        .iter()
        .filter(|m| m.state.is_active())
        .filter_map(|m| m.alloc.get(r).map(|a| a.floor))
        .fold(0u64, u64::saturating_add)
}

fn fits(p: &PoolPlan, r: Resource) -> bool {
    p.budget.get(r).is_none_or(|b| floors(p, r) <= b)
}

fn member_diff(uuid: &str, b: Option<&Side<'_>>, a: Option<&Side<'_>>) -> Option<MemberDiff> {
    let (tb, ta) = (targets(b), targets(a));
    let moves: Vec<TargetMove> = Resource::ALL
        .iter()
        .filter(|r| tb.get(**r).map(|x| x.0) != ta.get(**r).map(|x| x.0))
        .map(|r| TargetMove {
            resource: *r,
            before: tb.get(*r).map(|x| x.0),
            after: ta.get(*r).map(|x| x.0),
            reason: ta.get(*r).map(|x| x.1),
        })
        .collect();
    let admitted =
        |s: Option<&Side<'_>>| s.map(|s| s.member.admitted || !s.member.state.is_active());
    let d = MemberDiff {
        name: a.or(b).map(|s| s.member.name.to_string())?,
        uuid: uuid.to_string(),
        pool_before: b.map(|s| s.pool.name.clone()),
        pool_after: a.map(|s| s.pool.name.clone()),
        // Inactive members hold nothing either way: not "unadmitted".
        admitted_before: admitted(b),
        admitted_after: admitted(a),
        note_after: a.and_then(|s| s.member.note.clone()),
        targets: moves,
    };
    let same = !d.regrouped() && d.admitted_before == d.admitted_after && d.targets.is_empty();
    (!same).then_some(d)
}

/// The differences from `before` (today's plan) to `after` (the
/// candidate's), both made on the same observation.
pub fn diff(before: &Plan, after: &Plan) -> PlanDiff {
    let (mb, ma) = (members(before), members(after));
    let mut by_pool: BTreeMap<String, Vec<MemberDiff>> = BTreeMap::new();
    let mut uuids: Vec<&str> = mb.keys().chain(ma.keys()).copied().collect();
    uuids.sort_unstable();
    uuids.dedup();
    let mut out = PlanDiff::default();
    for uuid in uuids {
        let (b, a) = (mb.get(uuid), ma.get(uuid));
        let Some(d) = member_diff(uuid, b, a) else {
            continue;
        };
        if d.regrouped() {
            out.regrouped += 1;
        } else if !d.targets.is_empty() && d.admitted_after == Some(true) {
            out.moved += 1;
        }
        if d.becomes_unadmitted() {
            out.unadmitted += 1;
        }
        if d.becomes_admitted() {
            out.admitted += 1;
        }
        let home = d.pool_after.clone().or_else(|| d.pool_before.clone());
        by_pool.entry(home.unwrap_or_default()).or_default().push(d);
    }
    let pb: BTreeMap<&str, &PoolPlan> = before.pools.iter().map(|p| (&*p.name, p)).collect();
    let pa: BTreeMap<&str, &PoolPlan> = after.pools.iter().map(|p| (&*p.name, p)).collect();
    let mut names: Vec<&str> = pb.keys().chain(pa.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let (b, a) = (pb.get(name).copied(), pa.get(name).copied());
        let presence = match (b, a) {
            (Some(_), Some(_)) => Presence::Both,
            (None, _) => Presence::Added,
            (_, None) => Presence::Removed,
        };
        let mut resources = Vec::new();
        for r in Resource::ALL {
            let budget = |p: Option<&PoolPlan>| p.and_then(|p| *p.budget.get(r));
            let allocated = |p: Option<&PoolPlan>| p.map_or(0, |p| *p.allocated.get(r));
            let (bb, ba) = (budget(b), budget(a));
            if bb.is_none() && ba.is_none() {
                continue;
            }
            let fits_after = a.is_none_or(|p| fits(p, r));
            let fitted_before = b.is_none_or(|p| fits(p, r)) || presence == Presence::Added;
            let rd = ResourceDiff {
                resource: r,
                budget_before: bb,
                budget_after: ba,
                allocated_before: allocated(b),
                allocated_after: allocated(a),
                floors_after: a.map_or(0, |p| floors(p, r)),
                fits_after,
            };
            if !fits_after && fitted_before {
                out.budgets_short += 1;
            }
            if bb != ba || rd.allocated_before != rd.allocated_after || !fits_after {
                resources.push(rd);
            }
        }
        let mut members = by_pool.remove(name).unwrap_or_default();
        // Those in the pool after first, then those leaving; by name.
        members.sort_by(|x, y| {
            (x.pool_after.as_deref() != Some(name), &x.name)
                .cmp(&(y.pool_after.as_deref() != Some(name), &y.name))
        });
        if presence != Presence::Both || !resources.is_empty() || !members.is_empty() {
            out.pools.push(PoolDiff {
                name: name.to_string(),
                presence,
                resources,
                members,
            });
        }
    }
    // Members that leave every pool were filed under their old pool;
    // nothing is left in `by_pool` but members of no pool either side.
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::config::Config;
    use crate::core::model::DomainObs;
    use crate::core::planner::{plan, History, PlanInput};
    use std::path::Path;

    const GIB: u64 = 1 << 30;

    fn dom(name: &str, vcpus: u64, vcpus_max: u64, gib: u64) -> DomainObs {
        let mut d = crate::core::planner::testing::domain(name, None);
        d.vcpus = vcpus;
        d.vcpus_max = vcpus_max;
        d.memory = gib * GIB;
        d.memory_max = gib * GIB;
        d
    }

    fn plan_of(toml: &str, domains: &[DomainObs]) -> Plan {
        let cfg = Config::parse(toml, Path::new("t.toml")).unwrap();
        plan(&PlanInput {
            config: &cfg,
            host: crate::core::model::HostCapacity {
                cpus: 32,
                memory_total: 128 * GIB,
                memory_available: 100 * GIB,
            },
            domains,
            reservations: &Default::default(),
            history: &History::default(),
            now: 0,
            paused: false,
        })
    }

    const TODAY: &str = "[pools.web]\nmatch = \"web-*\"\nvcpus = { budget = 8 }\nmemory = { budget = \"16GiB\", min = \"2GiB\" }\n";

    #[test]
    fn same_plan_no_difference() {
        let ds = vec![dom("web-1", 2, 8, 8), dom("web-2", 2, 8, 8)];
        let p = plan_of(TODAY, &ds);
        let d = diff(&p, &p);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            (d.moved, d.unadmitted, d.regrouped, d.budgets_short),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn a_smaller_budget_moves_members_and_a_new_domain_joins() {
        let ds = vec![dom("web-1", 2, 8, 8), dom("web-2", 2, 8, 8)];
        let today = plan_of(TODAY, &ds);
        let cand = TODAY.replace("16GiB", "12GiB");
        let mut more = ds.clone();
        more.push(dom("web-3", 2, 8, 8));
        let after = plan_of(&cand, &more);
        let d = diff(&today, &after);
        assert_eq!(d.pools.len(), 1);
        let web = &d.pools[0];
        let mem = web.resource(Resource::Memory).unwrap();
        assert_eq!(
            (mem.budget_before, mem.budget_after),
            (Some(16 * GIB), Some(12 * GIB))
        );
        assert!(mem.fits_after);
        assert_eq!(d.regrouped, 1, "web-3 joins");
        assert_eq!(d.moved, 2, "web-1 and web-2 get less memory");
        let joined = web.members.iter().find(|m| m.name == "web-3").unwrap();
        assert_eq!(joined.pool_before, None);
        assert_eq!(joined.pool_after.as_deref(), Some("web"));
        let w1 = web.members.iter().find(|m| m.name == "web-1").unwrap();
        let m = w1
            .targets
            .iter()
            .find(|t| t.resource == Resource::Memory)
            .unwrap();
        assert_eq!((m.before, m.after), (Some(8 * GIB), Some(4 * GIB)));
    }

    #[test]
    fn a_budget_below_the_floors_leaves_members_unadmitted() {
        let ds = vec![dom("web-1", 2, 8, 8), dom("web-2", 2, 8, 8)];
        let today = plan_of(TODAY, &ds);
        let after = plan_of(&TODAY.replace("16GiB", "3GiB"), &ds);
        let d = diff(&today, &after);
        assert_eq!(d.budgets_short, 1, "{d:?}");
        assert!(d.unadmitted >= 1, "{d:?}");
        let mem = d.pools[0].resource(Resource::Memory).unwrap();
        assert!(!mem.fits_after && mem.floors_after == 4 * GIB, "{mem:?}");
        assert!(d.pools[0].members.iter().any(|m| m.becomes_unadmitted()));
    }

    #[test]
    fn a_removed_pool_lists_its_members_leaving() {
        let ds = vec![dom("web-1", 2, 8, 8), dom("db-1", 2, 8, 8)];
        let two = format!("{TODAY}[pools.db]\ndomains = [\"db-1\"]\nvcpus = {{ budget = 4 }}\n");
        let d = diff(&plan_of(&two, &ds), &plan_of(TODAY, &ds));
        assert_eq!(d.pools.len(), 1);
        assert_eq!(d.pools[0].presence, Presence::Removed);
        let m = &d.pools[0].members[0];
        assert_eq!((m.name.as_str(), m.pool_after.as_deref()), ("db-1", None));
        assert_eq!(d.regrouped, 1);
    }
}
