//! Unit tests of `alloc` (beside it, out of its file).
use super::*;

/// The sort-based allocator this one replaced: results must agree.
fn reference(budget: u64, claims: &[Claim]) -> Vec<u64> {
    let n = claims.len();
    let floor = |i: usize| claims[i].floor.min(claims[i].cap);
    let cap = |i: usize| claims[i].cap;
    let shares = |i: usize| claims[i].shares.max(1) as u128;
    let floors: u128 = (0..n).map(|i| floor(i) as u128).sum();
    if floors >= budget as u128 || n == 0 {
        return (0..n).map(floor).collect();
    }
    let caps: u128 = (0..n).map(|i| cap(i) as u128).sum();
    if caps <= budget as u128 {
        return (0..n).map(cap).collect();
    }
    let b = budget as u128;

    // Breakpoints of the water level: member i starts rising at
    // λ = floor/shares and stops at λ = cap/shares.
    // (approximate λ, value, member, is start)
    let mut events: Vec<(f64, u128, usize, bool)> = Vec::with_capacity(2 * n);
    for i in 0..n {
        let s = shares(i) as f64;
        events.push((floor(i) as f64 / s, floor(i) as u128, i, true));
        events.push((cap(i) as f64 / s, cap(i) as u128, i, false));
    }
    // By λ = value / shares(i) — exactly: the float only decides when the
    // two levels differ by far more than its rounding error — and at equal
    // λ, starts before stops.
    events.sort_unstable_by(|&(fa, va, ia, sa), &(fb, vb, ib, sb)| {
        let by_level = if (fa - fb).abs() > 1e-9 * fa.abs().max(fb.abs()) {
            fa.total_cmp(&fb)
        } else {
            (va * shares(ib)).cmp(&(vb * shares(ia)))
        };
        by_level.then(sb.cmp(&sa)).then(ia.cmp(&ib))
    });
    // Total at level λ = fixed + λ × slope, where `fixed` counts members
    // at their floor (not started) or cap (stopped), `slope` the shares of
    // the rising ones.
    let mut fixed: u128 = floors;
    let mut slope: u128 = 0;
    let mut state = vec![0u8; n]; // 0 at floor, 1 rising, 2 at cap
    let mut k = 0;
    while k < events.len() {
        let (_, v, i, _) = events[k];
        let (p, q) = (v, shares(i));
        // Total at this breakpoint ≥ budget: the level lies before it.
        if fixed * q + p * slope >= b * q {
            break;
        }
        // Apply every event at this same level.
        while k < events.len() {
            let (_, v2, j, start) = events[k];
            if v2 * q != p * shares(j) {
                break;
            }
            if start {
                fixed -= floor(j) as u128;
                slope += shares(j);
                state[j] = 1;
            } else {
                slope -= shares(j);
                fixed += cap(j) as u128;
                state[j] = 2;
            }
            k += 1;
        }
    }
    let mut out: Vec<u64> = (0..n)
        .map(|i| if state[i] == 2 { cap(i) } else { floor(i) })
        .collect();
    if slope == 0 {
        return out;
    }
    // The rising members share `rest` exactly in proportion to shares.
    let rest = b - fixed;
    let mut given: u128 = 0;
    let mut prio: Vec<usize> = Vec::new();
    for i in (0..n).filter(|&i| state[i] == 1) {
        let num = rest * shares(i);
        let e = num / slope;
        out[i] = e as u64;
        given += e;
        if num % slope != 0 {
            prio.push(i);
        }
    }
    let mut left = rest - given;
    // Leftover units (fewer than `prio`): highest shares first, then the
    // lower index. A priority that depends only on the member's own shares
    // keeps the result monotone in shares (largest remainder does not).
    prio.sort_unstable_by(|&a, &c| shares(c).cmp(&shares(a)).then(a.cmp(&c)));
    for &i in &prio {
        if left == 0 {
            break;
        }
        if out[i] < cap(i) {
            out[i] += 1;
            left -= 1;
        }
    }
    out
}

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
fn floor_is_a_guarantee_not_a_bonus() {
    // The share (5) is above the floor (4): the floor changes nothing.
    assert_eq!(water_fill(10, &[c(4, 100, 1), c(0, 100, 1)]), vec![5, 5]);
    // The floor (7) is above the share: it is honoured, the rest shared.
    assert_eq!(water_fill(10, &[c(7, 100, 1), c(0, 100, 1)]), vec![7, 3]);
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
fn same_as_reference_with_ties() {
    // Many equal levels, an unlimited cap, mixed shares.
    let mut cl: Vec<Claim> = (0..500).map(|i| c(1, 8, 500 + (i % 7) * 500)).collect();
    cl.push(c(3, u64::MAX, 1000));
    assert_eq!(water_fill(1200, &cl), reference(1200, &cl));
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

    /// Max-min fair up to rounding: no unit could move from a member
    /// above its floor to one below its cap and make the poorer (per
    /// share) richer than the richer one stays, beyond one unit each.
    #[test]
    fn max_min_fair((budget, cl) in claims()) {
        let floors: u64 = cl.iter().map(|x| x.floor).sum();
        if floors > budget { return Ok(()); }
        let r = water_fill(budget, &cl);
        for i in 0..cl.len() {
            for j in 0..cl.len() {
                if r[i] < cl[i].cap && r[j] > cl[j].floor {
                    let (si, sj) = (cl[i].shares as u128, cl[j].shares as u128);
                    proptest::prop_assert!(
                        (r[i] as u128 + 1) * sj >= (r[j] as u128 - 1) * si,
                        "{i}: {} of {:?}, {j}: {} of {:?}", r[i], cl[i], r[j], cl[j]
                    );
                }
            }
        }
    }

    /// Same results as the sort-based reference, also with huge values
    /// (unlimited caps) and many equal levels.
    /// Hundreds of members: many equal levels (small ranges), wide and
    /// huge caps, equal or different weights, 64- and 128-bit searches.
    #[test]
    fn many_members_same_as_reference(
        v in proptest::collection::vec((0u64..20, 0u64..60, 1u64..4), 256..600),
        budget_per in 1u64..60,
        scale in proptest::sample::select(vec![1u64, 1000, 1 << 50]),
        huge in 0usize..5,
        equal in proptest::bool::ANY,
    ) {
        let cl: Vec<Claim> = v
            .iter()
            .enumerate()
            .map(|(k, &(f, extra, s))| {
                let cap = if huge > 0 && k % (huge * 7) == 0 { u64::MAX } else { f + extra };
                c(f, cap, if equal { scale } else { s * scale })
            })
            .collect();
        let budget = (budget_per * cl.len() as u64).max(1);
        proptest::prop_assert_eq!(water_fill(budget, &cl), reference(budget, &cl));
    }

    #[test]
    fn same_as_reference((budget, cl) in claims(), big in 0usize..4, same in proptest::bool::ANY) {
        let mut cl = cl;
        for (k, c) in cl.iter_mut().enumerate() {
            if same {
                c.shares = 1000 * (1 + (k as u64 % 2));
                c.floor %= 3;
            }
            if big > 0 && k % big == 0 {
                c.cap = u64::MAX - (k as u64 % 3);
            }
        }
        proptest::prop_assert_eq!(water_fill(budget, &cl), reference(budget, &cl));
    }

    #[test]
    fn same_as_reference_large(
        budget in 0u64..(1 << 44),
        v in proptest::collection::vec((0u64..(1 << 34), 0u64..(1 << 36), 1u64..2_000_000), 0..60),
    ) {
        let cl: Vec<Claim> = v.into_iter().map(|(f, extra, s)| c(f, f + extra, s)).collect();
        proptest::prop_assert_eq!(water_fill(budget, &cl), reference(budget, &cl));
    }

    /// Small floors and large caps (every member rising at the fair
    /// level, as disk rates usually are), some floors or caps right at
    /// the fair level: the one-pass level agrees with the reference.
    #[test]
    fn all_rising_same_as_reference(
        v in proptest::collection::vec((0u64..4, 0u64..3, 1u64..5), 1..300),
        budget_per in 4u64..100,
        edge in 0usize..4,
        equal in proptest::bool::ANY,
    ) {
        let n = v.len() as u64;
        let budget = budget_per * n;
        let mut cl: Vec<Claim> = v
            .iter()
            .map(|&(f, big, s)| {
                let cap = if big == 0 { u64::MAX } else { budget * big };
                c(f, cap, if equal { 1 } else { s })
            })
            .collect();
        // One member's floor or cap exactly at its fair share.
        let total: u64 = cl.iter().map(|x| x.shares).sum();
        if edge > 0 {
            let k = edge % cl.len();
            let fair = budget * cl[k].shares / total;
            if budget * cl[k].shares % total == 0 {
                if edge % 2 == 0 { cl[k].cap = fair } else { cl[k].floor = fair }
                cl[k].cap = cl[k].cap.max(cl[k].floor);
            }
        }
        proptest::prop_assert_eq!(water_fill(budget, &cl), reference(budget, &cl));
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
