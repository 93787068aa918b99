//! Admission: when the members' floors do not all fit a pool's budget,
//! members are admitted in a stable order until no further one fits.
//!
//! Order: members with an explicit reservation first (a runtime
//! reservation made through the API, or a per-member `min` override in the
//! config), then the longest-running (`active_secs`, larger first), then by
//! UUID. Each member is tried in that order and admitted if its floors fit
//! what is left of the budget for **every** resource the pool manages
//! (first fit: a later, smaller member may still be admitted after a larger
//! one was refused — it never displaces an earlier one). A member refused
//! for one resource is unadmitted for all, so it is left untouched as a
//! whole and never half-managed.

use crate::core::model::Resource;
use std::cmp::Reverse;

/// One active member as admission sees it.
pub(super) struct Candidate<'a> {
    pub uuid: &'a str,
    pub explicit: bool,
    pub active_secs: u64,
    /// Floors per resource, in the resource's granularity units; `None`
    /// where the member takes no part (unmanaged resource, no tunable disk).
    pub floors: [Option<u64>; 4],
}

/// Why a member was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub resource: Resource,
    /// Floor of the member (units).
    pub floor: u64,
    /// Floors already admitted when it was tried (units).
    pub reserved: u64,
}

/// Decides admission; `budgets` are per resource in units (`None` =
/// unmanaged). Returns one entry per candidate: `Ok(())` admitted or the
/// first resource that did not fit.
pub(super) fn admit(
    candidates: &[Candidate<'_>],
    budgets: [Option<u64>; 4],
) -> Vec<Result<(), Refusal>> {
    // Everyone fits (the usual case): nothing to order.
    let mut total = [0u64; 4];
    for c in candidates {
        for (t, f) in total.iter_mut().zip(c.floors) {
            *t = t.saturating_add(f.unwrap_or(0));
        }
    }
    if total
        .iter()
        .zip(budgets)
        .all(|(t, b)| b.is_none_or(|b| *t <= b))
    {
        return vec![Ok(()); candidates.len()];
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (Reverse(c.explicit), Reverse(c.active_secs), c.uuid)
    });
    let mut sum = [0u64; 4];
    let mut out = vec![Ok(()); candidates.len()];
    for i in order {
        let c = &candidates[i];
        let mut refusal = None;
        for (k, r) in Resource::ALL.iter().enumerate() {
            let (Some(b), Some(f)) = (budgets[k], c.floors[k]) else {
                continue;
            };
            if sum[k].saturating_add(f) > b {
                refusal = Some(Refusal {
                    resource: *r,
                    floor: f,
                    reserved: sum[k],
                });
                break;
            }
        }
        match refusal {
            None => {
                for k in 0..4 {
                    if let (Some(_), Some(f)) = (budgets[k], c.floors[k]) {
                        sum[k] += f;
                    }
                }
            }
            Some(r) => out[i] = Err(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(uuid: &str, explicit: bool, secs: u64, vcpus: u64, mem: u64) -> Candidate<'_> {
        Candidate {
            uuid,
            explicit,
            active_secs: secs,
            floors: [Some(vcpus), Some(mem), None, None],
        }
    }

    #[test]
    fn reserved_then_oldest_then_uuid() {
        let c = [
            cand("a", false, 10, 2, 1),
            cand("b", true, 1, 2, 1),
            cand("c", false, 99, 2, 1),
        ];
        let r = admit(&c, [Some(4), Some(10), None, None]);
        assert!(r[0].is_err());
        assert!(r[1].is_ok());
        assert!(r[2].is_ok());
    }

    #[test]
    fn refused_for_one_resource_refused_for_all() {
        let c = [cand("a", false, 5, 1, 8), cand("b", false, 4, 1, 8)];
        let r = admit(&c, [Some(4), Some(10), None, None]);
        assert!(r[0].is_ok());
        assert_eq!(
            r[1],
            Err(Refusal {
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
        assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 2);
        assert!(r[1].is_err());
    }
}
