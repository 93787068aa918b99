//! Admission: which active members of a pool the pool manages. A member is
//! admitted when its floors fit what is left of the budget for **every**
//! resource the pool manages; one refused for one resource is unadmitted
//! for all, so it is left untouched as a whole and never half-managed.
//!
//! Admission is sticky. Members admitted in an earlier cycle (the history
//! keeps them, and the agent persists it across restarts) go first, in
//! the order they were admitted: each stays admitted while its floors fit
//! after those admitted before it. Then the others, in a stable order:
//! an explicit reservation first (a runtime reservation made through the
//! API, or a per-member `min` override), then the longest running, then by
//! UUID; first fit, so a later, smaller member may still be admitted after
//! a larger one was refused — it never displaces an earlier one. Adding a
//! member therefore never evicts an admitted one.
//!
//! A member joins with what it holds; when that takes the pool over its
//! budget, the pool converges like one that started over it (the others
//! and the newcomer shrink at the shrink rate; nobody grows meanwhile).
//!
//! A member that was refused admission in an earlier cycle still holds
//! what it had, and the admitted members may have grown into its share
//! since. So that taking it back never puts the pool over its budget, it
//! **waits** when its floors fit but what it holds does not fit the room
//! the admitted members leave: it stays untouched, what it holds is kept
//! out of what they share (they shrink at the shrink rate to make room),
//! and it is admitted once the room is there. One that could not fit even
//! with every admitted member at its floor does not wait (it never
//! could): it is admitted and shrunk like any member over its target.

use crate::core::model::Resource;
use std::cmp::Reverse;

/// One active member as admission sees it.
pub(super) struct Candidate<'a> {
    pub uuid: &'a str,
    /// Its place in the order of earlier admissions (lower: admitted
    /// earlier), when it was admitted to this pool in an earlier cycle.
    pub sticky: Option<u64>,
    pub explicit: bool,
    pub active_secs: u64,
    /// Floors per resource, in the resource's granularity units; `None`
    /// where the member takes no part (unmanaged resource, no tunable disk).
    pub floors: [Option<u64>; Resource::COUNT],
    /// It was refused admission to this pool in an earlier cycle.
    pub refused_before: bool,
    /// What it holds now, in units, where holding counts against the
    /// budget before the agent changes it (vCPUs, memory).
    pub holds: [Option<u64>; Resource::COUNT],
}

/// Why a member was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub resource: Resource,
    /// Floor of the member (units).
    pub floor: u64,
    /// Floors already admitted when it was tried (units).
    pub reserved: u64,
}

/// Why a member refused before, whose floors now fit, waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub resource: Resource,
    /// What the member holds (units).
    pub holds: u64,
    /// What the members admitted before it hold (units).
    pub held: u64,
}

/// The outcome for one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Admitted,
    /// Floors fit, what it holds does not yet (see the module doc).
    Waiting(Wait),
    Refused(Refusal),
}

/// Whether a floor fits a budget of which `reserved` is already reserved
/// by floors admitted before it (units); the one rule admission and a
/// reservation request share.
pub fn floor_fits(floor: u64, reserved: u64, budget: u64) -> bool {
    reserved.saturating_add(floor) <= budget
}

/// Decides admission; `budgets` are per resource in units (`None` =
/// unmanaged). Returns one verdict per candidate.
pub(super) fn admit(
    candidates: &[Candidate<'_>],
    budgets: [Option<u64>; Resource::COUNT],
) -> Vec<Verdict> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (
            c.sticky.is_none(),
            c.sticky.unwrap_or(0),
            Reverse(c.explicit),
            Reverse(c.active_secs),
            c.uuid,
        )
    });
    let mut floors = [0u64; Resource::COUNT];
    let mut held = [0u64; Resource::COUNT];
    let mut out = vec![Verdict::Admitted; candidates.len()];
    for i in order {
        let c = &candidates[i];
        let verdict = judge(c, budgets, &floors, &held);
        // A waiting member keeps its place: later ones do not take the
        // floors or the room it waits for.
        if !matches!(verdict, Verdict::Refused(_)) {
            for k in 0..Resource::COUNT {
                if budgets[k].is_some() {
                    floors[k] = floors[k].saturating_add(c.floors[k].unwrap_or(0));
                    held[k] = held[k].saturating_add(c.holds[k].unwrap_or(0));
                }
            }
        }
        out[i] = verdict;
    }
    out
}

/// One candidate against the floors admitted so far and what the members
/// admitted so far hold.
fn judge(
    c: &Candidate<'_>,
    budgets: [Option<u64>; Resource::COUNT],
    floors: &[u64; Resource::COUNT],
    held: &[u64; Resource::COUNT],
) -> Verdict {
    for (k, r) in Resource::ALL.iter().enumerate() {
        let (Some(b), Some(f)) = (budgets[k], c.floors[k]) else {
            continue;
        };
        if !floor_fits(f, floors[k], b) {
            return Verdict::Refused(Refusal {
                resource: *r,
                floor: f,
                reserved: floors[k],
            });
        }
    }
    if !c.refused_before {
        return Verdict::Admitted;
    }
    for (k, r) in Resource::ALL.iter().enumerate() {
        let (Some(b), Some(h)) = (budgets[k], c.holds[k]) else {
            continue;
        };
        let fits_now = held[k].saturating_add(h) <= b;
        // Room can be made only down to the admitted members' floors.
        let could_fit = floors[k].saturating_add(h) <= b;
        if !fits_now && could_fit {
            return Verdict::Waiting(Wait {
                resource: *r,
                holds: h,
                held: held[k],
            });
        }
    }
    Verdict::Admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(uuid: &str, explicit: bool, secs: u64, vcpus: u64, mem: u64) -> Candidate<'_> {
        Candidate {
            uuid,
            sticky: None,
            explicit,
            active_secs: secs,
            floors: [Some(vcpus), Some(mem), None, None, None],
            refused_before: false,
            holds: [None; Resource::COUNT],
        }
    }

    fn admitted(v: &[Verdict]) -> Vec<bool> {
        v.iter().map(|x| *x == Verdict::Admitted).collect()
    }

    #[test]
    fn reserved_then_oldest_then_uuid() {
        let c = [
            cand("a", false, 10, 2, 1),
            cand("b", true, 1, 2, 1),
            cand("c", false, 99, 2, 1),
        ];
        let r = admit(&c, [Some(4), Some(10), None, None, None]);
        assert_eq!(admitted(&r), [false, true, true]);
    }

    #[test]
    fn refused_for_one_resource_refused_for_all() {
        let c = [cand("a", false, 5, 1, 8), cand("b", false, 4, 1, 8)];
        let r = admit(&c, [Some(4), Some(10), None, None, None]);
        assert_eq!(r[0], Verdict::Admitted);
        assert_eq!(
            r[1],
            Verdict::Refused(Refusal {
                resource: Resource::Memory,
                floor: 8,
                reserved: 8
            })
        );
    }

    #[test]
    fn first_fit_admits_smaller_later_member() {
        let c = [
            cand("a", false, 3, 3, 1),
            cand("b", false, 2, 3, 1),
            cand("c", false, 1, 1, 1),
        ];
        let r = admit(&c, [Some(4), None, None, None, None]);
        assert_eq!(admitted(&r), [true, false, true]);
    }

    #[test]
    fn admitted_members_stay_ahead_of_new_ones() {
        // "young" was admitted before: a newcomer that runs longer, and
        // one with a reservation, do not displace it.
        let mut young = cand("young", false, 1, 3, 1);
        young.sticky = Some(7);
        let c = [
            young,
            cand("old", false, 999, 3, 1),
            cand("reserved", true, 5, 3, 1),
        ];
        let r = admit(&c, [Some(4), None, None, None, None]);
        assert_eq!(admitted(&r), [true, false, false]);
        // Among sticky members, the earlier admission goes first.
        let mut a = cand("a", false, 1, 3, 1);
        a.sticky = Some(2);
        let mut b = cand("b", false, 1, 3, 1);
        b.sticky = Some(1);
        assert_eq!(
            admitted(&admit(&[a, b], [Some(4), None, None, None, None])),
            [false, true]
        );
    }

    #[test]
    fn one_refused_before_waits_until_the_room_it_holds_is_free() {
        // "a", admitted before, holds `a_holds` vCPUs; "n" holds `n_holds`.
        let pair = |a_holds, n_holds, refused_before| {
            let mut a = cand("a", false, 9, 1, 1);
            a.sticky = Some(1);
            a.holds = [Some(a_holds), None, None, None, None];
            let mut n = cand("n", false, 1, 1, 1);
            n.holds = [Some(n_holds), None, None, None, None];
            n.refused_before = refused_before;
            [a, n]
        };
        let budgets = [Some(10), None, None, None, None];
        let r = admit(&pair(8, 4, true), budgets);
        assert_eq!(
            r[1],
            Verdict::Waiting(Wait {
                resource: Resource::Vcpus,
                holds: 4,
                held: 8
            })
        );
        // Never refused before (a domain that just started): admitted.
        assert_eq!(admitted(&admit(&pair(8, 4, false), budgets)), [true, true]);
        // Once "a" is down to 6, it fits.
        assert_eq!(admitted(&admit(&pair(6, 4, true), budgets)), [true, true]);
        // One that could never fit (the others' floors leave 9) is
        // admitted at once, to be shrunk.
        assert_eq!(admitted(&admit(&pair(8, 12, true), budgets)), [true, true]);
    }

    #[test]
    fn the_shared_rule() {
        assert!(floor_fits(4, 6, 10));
        assert!(!floor_fits(5, 6, 10));
        assert!(!floor_fits(1, u64::MAX, 10));
    }
}
