//! Weighted max-min fair sharing ("water filling") of one budget among
//! members with floors, caps and shares. Resource-generic: amounts are
//! plain integers in a granularity (1 vCPU, 1 MiB, 1 byte/s, 1 IOPS).

/// One member's claim on a budget, in units of the granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Guaranteed amount.
    pub floor: u64,
    /// Most it may get (≥ floor; callers clamp).
    pub cap: u64,
    /// Weight, ≥ 1.
    pub shares: u64,
}

/// Splits `budget` among `claims`: each gets its floor, then the rest is
/// shared in proportion to shares, capped at each cap; what a capped member
/// cannot take goes to the others. Integer results, Σ ≤ budget whenever
/// Σ floors ≤ budget. Work-conserving: Σ = min(budget, Σ caps).
///
/// Rounding: every uncapped member first gets the whole units of its exact
/// share; the few units left over go one each to members whose exact share
/// has a fractional part, highest shares first, then the earlier claim. Each result
/// is within one unit of the exact fair share, and — unlike largest
/// remainder — raising one member's shares never lowers its result
/// (monotone in shares, SPEC §2 invariant 6).
///
/// The caller guarantees Σ floors ≤ budget (admission); if not, floors are
/// returned as they are.
pub fn water_fill(budget: u64, claims: &[Claim]) -> Vec<u64> {
    let n = claims.len();
    let mut out: Vec<u64> = claims.iter().map(|c| c.floor.min(c.cap)).collect();
    let floors: u128 = out.iter().map(|&f| f as u128).sum();
    if floors >= budget as u128 || n == 0 {
        return out;
    }
    let mut rest = budget as u128 - floors;

    // Members by headroom per share, ascending: those that saturate first.
    let room: Vec<u128> = (0..n)
        .map(|i| claims[i].cap.saturating_sub(out[i]) as u128)
        .collect();
    let headroom = |i: usize| room[i];
    let shares = |i: usize| claims[i].shares.max(1) as u128;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        (headroom(a) * shares(b))
            .cmp(&(headroom(b) * shares(a)))
            .then(a.cmp(&b))
    });
    let mut total_shares: u128 = order.iter().map(|&i| shares(i)).sum();
    let mut k = 0;
    // Cap every member whose headroom is below its proportional share of
    // what is left; the level only rises as capped members drop out.
    while k < n {
        let i = order[k];
        if headroom(i) * total_shares <= rest * shares(i) {
            let h = headroom(i);
            out[i] += h as u64;
            rest -= h;
            total_shares -= shares(i);
            k += 1;
        } else {
            break;
        }
    }
    if k == n || rest == 0 {
        return out;
    }
    // The uncapped members share `rest` exactly in proportion to shares.
    let uncapped = &order[k..];
    let mut given: u128 = 0;
    // Members whose exact share has a fractional part: only they may
    // receive a leftover unit (a member with an exact whole share never
    // gets more than it).
    let mut prio: Vec<usize> = Vec::new();
    for &i in uncapped {
        let num = rest * shares(i);
        let e = num / total_shares;
        out[i] += e as u64;
        given += e;
        if num % total_shares != 0 {
            prio.push(i);
        }
    }
    let mut left = rest - given;
    if left == 0 {
        return out;
    }
    // Leftover units (fewer than `prio`): highest shares first, then the
    // lower index. A priority that depends only on the member's own shares
    // keeps the result monotone in shares (largest remainder does not).
    prio.sort_by(|&a, &b| shares(b).cmp(&shares(a)).then(a.cmp(&b)));
    for &i in &prio {
        if left == 0 {
            break;
        }
        if out[i] < claims[i].cap {
            out[i] += 1;
            left -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(floor: u64, cap: u64, shares: u64) -> Claim {
        Claim { floor, cap, shares }
    }

    #[test]
    fn split_by_shares() {
        assert_eq!(
            water_fill(12, &[c(0, 100, 1000), c(0, 100, 2000)]),
            vec![4, 8]
        );
    }

    #[test]
    fn floor_then_share() {
        assert_eq!(water_fill(10, &[c(4, 100, 1), c(0, 100, 1)]), vec![7, 3]);
    }

    #[test]
    fn capped_member_rest_reshared() {
        assert_eq!(
            water_fill(12, &[c(0, 2, 1), c(0, 100, 1), c(0, 100, 1)]),
            vec![2, 5, 5]
        );
    }

    #[test]
    fn all_at_cap_leaves_budget_unused() {
        assert_eq!(water_fill(100, &[c(1, 3, 1), c(1, 4, 1)]), vec![3, 4]);
    }

    #[test]
    fn rounding_never_exceeds_budget() {
        let r = water_fill(10, &[c(1, 100, 1), c(1, 100, 1), c(1, 100, 1)]);
        assert_eq!(r.iter().sum::<u64>(), 10);
        assert_eq!(r, vec![4, 3, 3]);
    }

    #[test]
    fn single_member_gets_up_to_cap() {
        assert_eq!(water_fill(10, &[c(1, 6, 1000)]), vec![6]);
        assert_eq!(water_fill(10, &[c(1, 60, 1000)]), vec![10]);
    }

    #[test]
    fn floors_over_budget_returned_unchanged() {
        assert_eq!(water_fill(3, &[c(2, 5, 1), c(2, 5, 1)]), vec![2, 2]);
    }

    #[test]
    fn exact_whole_shares_get_no_leftover() {
        // Exact shares 2⅔, 2⅔, 2⅔, 8: the two leftover units go to members
        // with a fraction, not to the one whose share is exactly 8.
        let r = water_fill(
            16,
            &[
                c(0, 99, 1000),
                c(0, 99, 1000),
                c(0, 99, 1000),
                c(0, 99, 3000),
            ],
        );
        assert_eq!(r, vec![3, 3, 2, 8]);
    }

    fn claims() -> impl proptest::strategy::Strategy<Value = (u64, Vec<Claim>)> {
        use proptest::prelude::*;
        (
            0u64..2000,
            proptest::collection::vec((0u64..50, 0u64..200, 1u64..5000), 0..40),
        )
            .prop_map(|(budget, v)| {
                let claims: Vec<Claim> = v
                    .into_iter()
                    .map(|(f, extra, s)| c(f, f + extra, s))
                    .collect();
                (budget, claims)
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..Default::default()
        })]

        #[test]
        fn sum_bounds_and_work_conservation((budget, cl) in claims()) {
            let r = water_fill(budget, &cl);
            let floors: u64 = cl.iter().map(|x| x.floor).sum();
            let caps: u64 = cl.iter().map(|x| x.cap).sum();
            let sum: u64 = r.iter().sum();
            for (x, k) in r.iter().zip(&cl) {
                proptest::prop_assert!(k.floor <= *x && *x <= k.cap);
            }
            if floors <= budget {
                proptest::prop_assert_eq!(sum, budget.min(caps));
            }
        }

        #[test]
        fn monotone_in_own_shares((budget, cl) in claims(), pick in 0usize..40, mult in 2u64..10) {
            if cl.is_empty() { return Ok(()); }
            let i = pick % cl.len();
            let before = water_fill(budget, &cl);
            let mut more = cl.clone();
            more[i].shares *= mult;
            let after = water_fill(budget, &more);
            proptest::prop_assert!(after[i] >= before[i], "{} → {}", before[i], after[i]);
        }
    }
}
