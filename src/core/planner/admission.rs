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
    pub floors: [Option<u64>; 4],
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

/// The outcome for one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Admitted,
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
pub(super) fn admit(candidates: &[Candidate<'_>], budgets: [Option<u64>; 4]) -> Vec<Verdict> {
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
    let mut floors = [0u64; 4];
    let mut out = vec![Verdict::Admitted; candidates.len()];
    for i in order {
        let c = &candidates[i];
        let verdict = judge(c, budgets, &floors);
        if verdict == Verdict::Admitted {
            for k in 0..4 {
                if budgets[k].is_some() {
                    floors[k] = floors[k].saturating_add(c.floors[k].unwrap_or(0));
                }
            }
        }
        out[i] = verdict;
    }
    out
}

/// One candidate against the floors admitted so far.
fn judge(c: &Candidate<'_>, budgets: [Option<u64>; 4], floors: &[u64; 4]) -> Verdict {
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
            floors: [Some(vcpus), Some(mem), None, None],
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
        let r = admit(&c, [Some(4), Some(10), None, None]);
        assert_eq!(admitted(&r), [false, true, true]);
    }

    #[test]
    fn refused_for_one_resource_refused_for_all() {
        let c = [cand("a", false, 5, 1, 8), cand("b", false, 4, 1, 8)];
        let r = admit(&c, [Some(4), Some(10), None, None]);
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
        let r = admit(&c, [Some(4), None, None, None]);
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
        let r = admit(&c, [Some(4), None, None, None]);
        assert_eq!(admitted(&r), [true, false, false]);
        // Among sticky members, the earlier admission goes first.
        let mut a = cand("a", false, 1, 3, 1);
        a.sticky = Some(2);
        let mut b = cand("b", false, 1, 3, 1);
        b.sticky = Some(1);
        assert_eq!(
            admitted(&admit(&[a, b], [Some(4), None, None, None])),
            [false, true]
        );
    }

    #[test]
    fn the_shared_rule() {
        assert!(floor_fits(4, 6, 10));
        assert!(!floor_fits(5, 6, 10));
        assert!(!floor_fits(1, u64::MAX, 10));
    }
}
