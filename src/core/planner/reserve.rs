//! Whether a runtime reservation (`allocate`) can be promised: the same
//! arithmetic admission uses, on the plans made without and with it, so
//! the API never promises what the next cycle would refuse.
//!
//! A reservation is refused, naming the number that blocks it, when it is
//! above the member's `max`, above what the domain can have (its maximum
//! vCPUs or memory), above the pool's budget, or when the member's floor
//! under it (the reservation, or more: a guest's used memory plus its
//! margin) does not fit beside the floors of the members admitted with it.

use super::plan::PoolPlan;
use crate::core::model::Resource;

/// Why a reservation cannot be promised. Amounts in the resource's unit
/// (bytes, vCPUs, bytes/s, IOPS).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveRefusal {
    #[error("{resource} reservation {} for {domain:?} is above its max {}", .resource.human(*.amount), .resource.human(*.max))]
    AboveMax {
        resource: Resource,
        domain: String,
        amount: u64,
        max: u64,
    },
    #[error("{resource} reservation {} for {domain:?} is above what the domain can have ({})", .resource.human(*.amount), .resource.human(*.hardware))]
    AboveHardware {
        resource: Resource,
        domain: String,
        amount: u64,
        hardware: u64,
    },
    #[error("{resource} reservation {} for {domain:?} is above the budget of pool {pool:?} ({})", .resource.human(*.amount), .resource.human(*.budget))]
    AboveBudget {
        resource: Resource,
        domain: String,
        pool: String,
        amount: u64,
        budget: u64,
    },
    #[error("{}", does_not_fit(.resource, .domain, .pool, *.amount, *.floor, *.others, *.budget))]
    DoesNotFit {
        resource: Resource,
        domain: String,
        pool: String,
        amount: u64,
        /// The member's floor with the reservation (at least `amount`).
        floor: u64,
        /// Σ floors of the other admitted members.
        others: u64,
        budget: u64,
    },
}

fn does_not_fit(
    r: &Resource,
    domain: &str,
    pool: &str,
    amount: u64,
    floor: u64,
    others: u64,
    budget: u64,
) -> String {
    let r = *r;
    let own = if floor > amount {
        format!(
            " its floor would be {} (more than the reservation: what the guest uses and its margin);",
            r.human(floor)
        )
    } else {
        String::new()
    };
    format!(
        "{r} reservation {} for {domain:?} does not fit pool {pool:?}:{own} the other admitted members hold {} of its {} budget, {} is free for reservations",
        r.human(amount),
        r.human(others),
        r.human(budget),
        r.human(budget.saturating_sub(others)),
    )
}

/// The bounds a reservation of `amount` must stay within.
pub struct Bounds {
    /// The member's `max` for the resource, if any.
    pub max: Option<u64>,
    /// What the domain can have (maximum vCPUs or memory; unbounded for
    /// disk rates).
    pub hardware: u64,
    /// The pool's budget for the resource.
    pub budget: u64,
}

/// Checks `amount` against the member's bounds.
pub fn within_bounds(
    resource: Resource,
    domain: &str,
    pool: &str,
    amount: u64,
    b: &Bounds,
) -> Result<(), ReserveRefusal> {
    let domain = || domain.to_string();
    if let Some(max) = b.max.filter(|m| amount > *m) {
        return Err(ReserveRefusal::AboveMax {
            resource,
            domain: domain(),
            amount,
            max,
        });
    }
    if amount > b.hardware {
        return Err(ReserveRefusal::AboveHardware {
            resource,
            domain: domain(),
            amount,
            hardware: b.hardware,
        });
    }
    if amount > b.budget {
        return Err(ReserveRefusal::AboveBudget {
            resource,
            domain: domain(),
            pool: pool.to_string(),
            amount,
            budget: b.budget,
        });
    }
    Ok(())
}

/// Checks that the member `uuid` (named `domain`), with a reservation of
/// `amount`, fits pool `before`'s budget beside the members admitted
/// without it: its floor in `after` (the plan made with the reservation)
/// plus the floors of the other admitted members in `before` must not
/// exceed `budget`.
pub fn fits(
    resource: Resource,
    domain: &str,
    uuid: &str,
    amount: u64,
    budget: u64,
    before: Option<&PoolPlan>,
    after: Option<&PoolPlan>,
) -> Result<(), ReserveRefusal> {
    let floor_of = |m: &super::plan::MemberPlan| m.alloc.get(resource).map(|a| a.floor);
    let others: u64 = before
        .map(|p| {
            p.members
                .iter()
                .filter(|m| *m.uuid != *uuid && m.admitted)
                .filter_map(floor_of)
                .sum()
        })
        .unwrap_or(0);
    let floor = after
        .and_then(|p| p.members.iter().find(|m| *m.uuid == *uuid))
        .and_then(floor_of)
        .unwrap_or(0)
        .max(amount);
    if others.saturating_add(floor) > budget {
        return Err(ReserveRefusal::DoesNotFit {
            resource,
            domain: domain.to_string(),
            pool: before
                .or(after)
                .map_or_else(String::new, |p| p.name.clone()),
            amount,
            floor,
            others,
            budget,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::planner::testing::{self, *};
    use crate::core::planner::{plan, History, PlanInput};
    use std::collections::BTreeMap;

    const GIB: u64 = 1 << 30;

    /// Pool `db` (16 GiB of memory) with `db-1` (whose guest uses `used`)
    /// and `db-2` (its floor `min`), both running with 8 GiB maximum
    /// (db-2: 16 GiB); planned with `db-1` reserved `reserve` when given.
    fn plans(used: u64, min: u64, reserve: Option<u64>) -> (PoolPlan, PoolPlan) {
        let p = with_budget(testing::pool("db"), Resource::Memory, 16 * GIB, shares(1));
        let p = with_member(
            p,
            "db-2",
            Resource::Memory,
            crate::core::config::Limits {
                min: Some(min),
                ..shares(1)
            },
        );
        let cfg = config(8, 64 * GIB, vec![p]);
        let mut d1 = domain("db-1", Some("db"));
        d1.memory_max = 8 * GIB;
        d1.memory = 8 * GIB;
        d1.balloon = Some(balloon(8 * GIB, used));
        let mut d2 = domain("db-2", Some("db"));
        d2.memory_max = 16 * GIB;
        d2.memory = 8 * GIB;
        let domains = vec![d1, d2];
        let run = |res: &BTreeMap<String, BTreeMap<String, _>>| {
            plan(&PlanInput {
                config: &cfg,
                host: host(8, 64 * GIB),
                domains: &domains,
                reservations: res,
                history: &History::default(),
                now: 0,
                paused: false,
            })
            .pools
            .into_iter()
            .next()
            .unwrap()
        };
        let before = run(&BTreeMap::new());
        let mut res = BTreeMap::new();
        if let Some(v) = reserve {
            let mut r = crate::core::model::PerResource::<Option<u64>>::default();
            *r.get_mut(Resource::Memory) = Some(v);
            res.insert("db".to_string(), BTreeMap::from([("db-1".to_string(), r)]));
        }
        (before, run(&res))
    }

    fn uuid_of<'a>(p: &'a PoolPlan, name: &str) -> &'a str {
        &p.members.iter().find(|m| &*m.name == name).unwrap().uuid
    }

    /// [`fits`] for a memory reservation of `amount` for db-1, in a
    /// 16 GiB budget.
    fn db1_memory_fits(
        before: &PoolPlan,
        after: &PoolPlan,
        amount: u64,
    ) -> Result<(), ReserveRefusal> {
        let u = uuid_of(before, "db-1");
        fits(
            Resource::Memory,
            "db-1",
            u,
            amount,
            16 * GIB,
            Some(before),
            Some(after),
        )
    }

    #[test]
    fn a_reservation_that_fits_beside_the_others_floors_is_promised() {
        let (before, after) = plans(GIB, 2 * GIB, Some(6 * GIB));
        db1_memory_fits(&before, &after, 6 * GIB).unwrap();
    }

    #[test]
    fn a_reservation_beside_floors_that_leave_no_room_is_refused_with_the_numbers() {
        // db-2's floor is 12 GiB: 4 GiB is free for db-1.
        let (before, after) = plans(GIB, 12 * GIB, Some(6 * GIB));
        let e = db1_memory_fits(&before, &after, 6 * GIB).unwrap_err();
        assert!(
            matches!(e, ReserveRefusal::DoesNotFit { others, floor, .. } if others == 12 * GIB && floor == 6 * GIB),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("12.0 GiB of its 16.0 GiB budget, 4.0 GiB is free"),
            "{text}"
        );
        assert!(!text.contains("its floor would be"), "{text}");
    }

    #[test]
    fn a_reservation_below_what_the_guest_uses_names_the_members_own_floor() {
        // db-1's guest uses 5 GiB: its floor under a 1 GiB reservation is
        // more than 1 GiB, and that is what does not fit beside db-2's 12.
        let (before, after) = plans(5 * GIB, 12 * GIB, Some(GIB));
        let own = after
            .members
            .iter()
            .find(|m| &*m.name == "db-1")
            .unwrap()
            .alloc
            .memory
            .unwrap()
            .floor;
        assert!(own > 4 * GIB, "the guest's use sets the floor: {own}");
        let e = db1_memory_fits(&before, &after, GIB).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("its floor would be"), "{text}");
        assert!(
            text.contains(&Resource::Memory.human(own)),
            "the floor is named: {text}"
        );
    }

    #[test]
    fn bounds_refuse_in_order_max_hardware_budget() {
        let b = Bounds {
            max: Some(4),
            hardware: 8,
            budget: 6,
        };
        let r = Resource::Vcpus;
        assert!(matches!(
            within_bounds(r, "d", "p", 5, &b),
            Err(ReserveRefusal::AboveMax { max: 4, .. })
        ));
        let b = Bounds { max: None, ..b };
        assert!(matches!(
            within_bounds(r, "d", "p", 9, &b),
            Err(ReserveRefusal::AboveHardware { hardware: 8, .. })
        ));
        assert!(matches!(
            within_bounds(r, "d", "p", 7, &b),
            Err(ReserveRefusal::AboveBudget { budget: 6, .. })
        ));
        within_bounds(r, "d", "p", 6, &b).unwrap();
    }
}
