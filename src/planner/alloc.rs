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

/// Splits `budget` among `claims` by weighted max-min fairness ("water
/// filling"): a water level λ rises until the budget is used up; each
/// member gets λ × shares, but never less than its floor and never more
/// than its cap. So a floor is a guarantee, not a bonus on top of the
/// share: a member whose share is already above its floor gets exactly its
/// share; what a capped member cannot take goes to the others.
///
/// Integer results, Σ ≤ budget whenever Σ floors ≤ budget. Work-conserving:
/// Σ = min(budget, Σ caps). Rounding: members between floor and cap get
/// the whole units of their exact share; the few units left over go one
/// each to those whose exact share has a fractional part, highest shares
/// first, then the earlier claim. Each result is within one unit of the
/// exact fair share, and — unlike largest remainder — raising one member's
/// shares never lowers its result (monotone in shares, SPEC §2 inv. 6).
///
/// The caller guarantees Σ floors ≤ budget (admission); if not, floors are
/// returned as they are. O(n log n).
pub fn water_fill(budget: u64, claims: &[Claim]) -> Vec<u64> {
    fill(budget, claims, true)
}

/// Which members rise with the water level, once it is found.
struct Level {
    /// Per member: 0 at floor, 1 rising, 2 at cap.
    state: Vec<u8>,
    /// Σ of the members at floor or cap.
    fixed: u128,
    /// Σ shares of the rising members.
    slope: u128,
}

fn fill(budget: u64, claims: &[Claim], fast: bool) -> Vec<u64> {
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
    let level = fast
        .then(|| level_by_float(b, claims, floors))
        .flatten()
        .unwrap_or_else(|| level_exact(b, claims, floors));
    let Level {
        state,
        fixed,
        slope,
    } = level;
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
    prio.sort_unstable_by_key(|&i| (std::cmp::Reverse(claims[i].shares.max(1)), i));
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

/// The water level the cheap way: breakpoints ordered by their level as a
/// float (plain integer keys), walked with exact totals; then every
/// member's state is checked exactly against the level found,
/// λ = (budget − fixed) / slope. `None` when the check fails (levels closer
/// than the float's precision) or an exact product would overflow: the
/// caller then orders the breakpoints exactly ([`level_exact`]).
fn level_by_float(b: u128, claims: &[Claim], floors: u128) -> Option<Level> {
    let n = claims.len();
    if n >= 1 << 31 {
        return None;
    }
    let floor = |i: usize| claims[i].floor.min(claims[i].cap);
    let cap = |i: usize| claims[i].cap;
    let shares = |i: usize| claims[i].shares.max(1) as u128;
    const STOP: u32 = 1 << 31;
    // (level as f64 bits — ordered like the level for non-negative
    // floats —, member | STOP for a stop): at one level, starts first.
    let mut events: Vec<(u64, u32)> = Vec::with_capacity(2 * n);
    for (i, c) in claims.iter().enumerate() {
        let s = c.shares.max(1) as f64;
        events.push(((floor(i) as f64 / s).to_bits(), i as u32));
        events.push(((c.cap as f64 / s).to_bits(), i as u32 | STOP));
    }
    events.sort_unstable();
    let mut fixed: u128 = floors;
    let mut slope: u128 = 0;
    let mut state = vec![0u8; n];
    let mut k = 0;
    while k < events.len() {
        let (bits, tag) = events[k];
        let i = (tag & !STOP) as usize;
        let v = if tag & STOP == 0 { floor(i) } else { cap(i) } as u128;
        let q = shares(i);
        // Total at this breakpoint ≥ budget: the level lies before it.
        if fixed.checked_mul(q)? + v.checked_mul(slope)? >= b.checked_mul(q)? {
            break;
        }
        while k < events.len() && events[k].0 == bits {
            let (_, tag) = events[k];
            let j = (tag & !STOP) as usize;
            if tag & STOP == 0 {
                fixed -= floor(j) as u128;
                slope += shares(j);
                state[j] = 1;
            } else {
                slope = slope.checked_sub(shares(j))?;
                fixed += cap(j) as u128;
                state[j] = 2;
            }
            k += 1;
        }
    }
    if slope == 0 || fixed >= b {
        return None;
    }
    // Exact check: member i has started iff floor/shares < λ, stopped iff
    // cap/shares < λ, with λ = rest / slope.
    let rest = b - fixed;
    for (i, st) in state.iter().enumerate() {
        let x = rest.checked_mul(shares(i))?;
        let started = (floor(i) as u128).checked_mul(slope)? < x;
        let stopped = (cap(i) as u128).checked_mul(slope)? < x;
        let want = if stopped {
            2
        } else if started {
            1
        } else {
            0
        };
        if *st != want {
            return None;
        }
    }
    Some(Level {
        state,
        fixed,
        slope,
    })
}

/// The water level with breakpoints ordered exactly by level.
fn level_exact(b: u128, claims: &[Claim], floors: u128) -> Level {
    let n = claims.len();
    let floor = |i: usize| claims[i].floor.min(claims[i].cap);
    let cap = |i: usize| claims[i].cap;
    let shares = |i: usize| claims[i].shares.max(1) as u128;
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
    let mut state = vec![0u8; n];
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
    Level {
        state,
        fixed,
        slope,
    }
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
    fn float_level_found_without_fallback() {
        // Many equal levels, an unlimited cap, mixed shares.
        let mut cl: Vec<Claim> = (0..500).map(|i| c(1, 8, 500 + (i % 7) * 500)).collect();
        cl.push(c(3, u64::MAX, 1000));
        let floors: u128 = cl.iter().map(|x| x.floor as u128).sum();
        assert!(level_by_float(1200, &cl, floors).is_some());
        assert_eq!(fill(1200, &cl, true), fill(1200, &cl, false));
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

        /// The float-ordered level finder agrees with the exact one,
        /// also with huge values (unlimited caps) and many equal levels.
        #[test]
        fn fast_level_matches_exact((budget, cl) in claims(), big in 0usize..4, same in proptest::bool::ANY) {
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
            proptest::prop_assert_eq!(fill(budget, &cl, true), fill(budget, &cl, false));
        }

        #[test]
        fn fast_level_matches_exact_large(
            budget in 0u64..(1 << 44),
            v in proptest::collection::vec((0u64..(1 << 34), 0u64..(1 << 36), 1u64..2_000_000), 0..60),
        ) {
            let cl: Vec<Claim> = v.into_iter().map(|(f, extra, s)| c(f, f + extra, s)).collect();
            proptest::prop_assert_eq!(fill(budget, &cl, true), fill(budget, &cl, false));
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
