//! Weighted max-min fair sharing ("water filling") of one budget among
//! members with floors, caps and shares. Resource-generic: amounts are
//! plain integers in a granularity (1 vCPU, 1 MiB, 1 byte/s, 1 IOPS).

use std::cmp::Reverse;

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

/// Which members rise with the water level, once it is found.
struct Level {
    /// Per member: 0 at floor, 1 rising, 2 at cap.
    state: Vec<u8>,
    /// Σ of the members at floor or cap.
    fixed: u128,
    /// Σ shares of the rising members.
    slope: u128,
}

/// A water level at which a member starts (`value` = floor) or stops
/// (`value` = cap) rising: λ = value / shares, compared exactly.
/// `shares` 0 stands for an unbounded level (above every other).
#[derive(Debug, Clone, Copy)]
struct Point {
    value: u64,
    shares: u64,
}

impl Point {
    /// λ(self) < λ(o), exact in `W` when every value × shares product
    /// fits it.
    #[inline]
    fn lt<W: Wide>(self, o: Point) -> bool {
        W::mul(self.value, o.shares) < W::mul(o.value, self.shares)
    }
}

/// The integer type the water level is searched in: `u64` when every
/// product of an amount and a weight fits (the usual case, much cheaper),
/// else `u128`.
trait Wide: Copy + Ord {
    /// Every member has 1 share ([`Unit`]).
    const UNIT: bool = false;
    /// A level above every breakpoint.
    const INFINITY: Point = Point {
        value: 1,
        shares: 0,
    };
    fn mul(a: u64, b: u64) -> Self;
    fn zero() -> Self;
    fn sat_add(self, o: Self) -> Self;
    fn wide(self) -> u128;
}

impl Wide for u64 {
    #[inline]
    fn mul(a: u64, b: u64) -> u64 {
        a.wrapping_mul(b)
    }
    fn zero() -> u64 {
        0
    }
    #[inline]
    fn sat_add(self, o: u64) -> u64 {
        self.saturating_add(o)
    }
    fn wide(self) -> u128 {
        u128::from(self)
    }
}

impl Wide for u128 {
    #[inline]
    fn mul(a: u64, b: u64) -> u128 {
        u128::from(a) * u128::from(b)
    }
    fn zero() -> u128 {
        0
    }
    #[inline]
    fn sat_add(self, o: u128) -> u128 {
        self.saturating_add(o)
    }
    fn wide(self) -> u128 {
        self
    }
}

/// Levels when every member has the same shares: searched as if each had
/// 1 share (the same breakpoints in the same order, λ scaled by the
/// shares), so comparing two levels compares two amounts, no products.
/// Every amount must be below `u64::MAX` (the level above them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Unit(u64);

impl Wide for Unit {
    const UNIT: bool = true;
    const INFINITY: Point = Point {
        value: u64::MAX,
        shares: 1,
    };
    #[inline]
    fn mul(a: u64, _shares: u64) -> Unit {
        Unit(a)
    }
    fn zero() -> Unit {
        Unit(0)
    }
    #[inline]
    fn sat_add(self, o: Unit) -> Unit {
        Unit(self.0.saturating_add(o.0))
    }
    fn wide(self) -> u128 {
        u128::from(self.0)
    }
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
/// returned as they are. O(n) expected: the water level is found by
/// selection (quickselect on the breakpoints), not by sorting them.
pub fn water_fill(budget: u64, claims: &[Claim]) -> Vec<u64> {
    let n = claims.len();
    let floor = |i: usize| claims[i].floor.min(claims[i].cap);
    let cap = |i: usize| claims[i].cap;
    let shares = |i: usize| claims[i].shares.max(1) as u128;
    let (mut floors, mut caps) = (0u128, 0u128);
    let (mut min_shares, mut max_shares) = (u64::MAX, 1u64);
    for c in claims {
        floors += c.floor.min(c.cap) as u128;
        caps += c.cap as u128;
        min_shares = min_shares.min(c.shares.max(1));
        max_shares = max_shares.max(c.shares);
    }
    if floors >= budget as u128 || n == 0 {
        return (0..n).map(floor).collect();
    }
    if caps <= budget as u128 {
        return (0..n).map(cap).collect();
    }
    let b = budget as u128;
    // A member's cap above the budget is never reached (the level stops by
    // b / shares): searching with caps clamped to the budget finds the
    // same level and states, with every breakpoint ≤ budget. Then value ×
    // shares fits 64 bits when budget × max shares does.
    let Level {
        state,
        fixed,
        slope,
    } = if let Some(level) = all_rising(b, claims) {
        level
    } else if min_shares == max_shares && budget < u64::MAX {
        // Equal shares: searched with 1 share each; the slope is counted
        // in members.
        let mut level = level_select::<Unit>(b, claims, budget);
        level.slope *= u128::from(max_shares);
        level
    } else if budget.checked_mul(max_shares).is_some() {
        level_select::<u64>(b, claims, budget)
    } else {
        level_select::<u128>(b, claims, u64::MAX)
    };
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
    // Whether every member in `prio` has the same shares.
    let mut prio_shares: Option<Option<u64>> = None;
    let slope64 = u64::try_from(slope).ok();
    for i in (0..n).filter(|&i| state[i] == 1) {
        let num = rest * shares(i);
        // One 64-bit division when the numbers fit (the usual case).
        let (e, exact) = match (u64::try_from(num), slope64) {
            (Ok(num), Some(slope)) => ((num / slope) as u128, num % slope == 0),
            _ => (num / slope, num % slope == 0),
        };
        out[i] = e as u64;
        given += e;
        if !exact {
            prio.push(i);
            let s = Some(claims[i].shares.max(1));
            prio_shares = match prio_shares {
                None => Some(s),
                Some(p) if p == s => Some(p),
                Some(_) => Some(None),
            };
        }
    }
    let left = rest - given;
    // Leftover units (fewer than `prio`): highest shares first, then the
    // lower index. A priority that depends only on the member's own shares
    // keeps the result monotone in shares (largest remainder does not).
    let key = |&i: &usize| (Reverse(claims[i].shares.max(1)), i);
    let left = usize::try_from(left).unwrap_or(usize::MAX);
    if left < prio.len() && prio.iter().all(|&i| out[i] < cap(i)) {
        // Each of the first `left` gets one unit: their order is moot.
        // With equal shares they are the first `left` of `prio`, which is
        // in index order.
        if left > 0 && !matches!(prio_shares, Some(Some(_))) {
            prio.select_nth_unstable_by_key(left - 1, key);
        }
        for &i in &prio[..left] {
            out[i] += 1;
        }
        return out;
    }
    prio.sort_unstable_by_key(key);
    let mut left = left;
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

/// The level when every member rises at it: λ = b / Σ shares (the budget
/// shared in proportion to shares) strictly above every member's floor /
/// shares and at or below its cap / shares. Below λ the total is then
/// λ × Σ shares < b, so λ is the lowest level reaching the budget: the
/// water level, found in one pass (the usual case for resources whose
/// floors are small and caps large, such as disk rates). `None` when a
/// member would sit at its floor or cap there (or a product overflows).
fn all_rising(b: u128, claims: &[Claim]) -> Option<Level> {
    let total: u128 = claims.iter().map(|c| u128::from(c.shares.max(1))).sum();
    for c in claims {
        let s = u128::from(c.shares.max(1));
        // b < 2^64 and s < 2^64: the product fits.
        let level = b * s;
        let floor = u128::from(c.floor.min(c.cap)).checked_mul(total)?;
        let cap = u128::from(c.cap).checked_mul(total)?;
        if floor >= level || level > cap {
            return None;
        }
    }
    Some(Level {
        state: vec![1; claims.len()],
        fixed: 0,
        slope: total,
    })
}

/// A member still in the search for the water level: its claim (floor ≤
/// cap ≤ the search's cap limit, shares ≥ 1) and index.
#[derive(Debug, Clone, Copy)]
struct Active {
    floor: u64,
    cap: u64,
    shares: u64,
    i: usize,
}

impl Active {
    fn start(&self) -> Point {
        Point {
            value: self.floor,
            shares: self.shares,
        }
    }

    fn stop(&self) -> Point {
        Point {
            value: self.cap,
            shares: self.shares,
        }
    }
}

/// The water level λ₀ — the lowest level where the total Σ clamp(λ ×
/// shares, floor, cap) reaches the budget — by selection over the
/// breakpoints: the level is kept in a bracket (lo, hi] with
/// total(lo) < budget ≤ total(hi), starting at (0, ∞) (total(0) = Σ floors
/// < budget); each round evaluates the total exactly at a breakpoint
/// strictly inside the bracket (quickselect: that of a random member) and
/// narrows the bracket to one side of it.
/// Members with no breakpoint left inside are settled — at floor, rising
/// or at cap — and summed, so later rounds only visit the others: O(n)
/// expected. Settling the members the last round excluded and summing the
/// others at the next pivot is one pass. Member i rises iff floor/shares <
/// λ₀ ≤ cap/shares. Caps are clamped to `cap_limit` (see [`water_fill`]).
fn level_select<W: Wide>(b: u128, claims: &[Claim], cap_limit: u64) -> Level {
    let n = claims.len();
    let mut state = vec![0u8; n];
    let (mut fixed, mut slope) = (0u128, 0u128);
    let mut lo = Point {
        value: 0,
        shares: 1,
    };
    let mut hi = W::INFINITY;
    let mut active: Vec<Active> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cap = c.cap.min(cap_limit);
            Active {
                floor: c.floor.min(cap),
                cap,
                shares: if W::UNIT { 1 } else { c.shares.max(1) },
                i,
            }
        })
        .collect();
    // Pivots: the breakpoint of a pseudo-random active member, or of the
    // next one with a breakpoint inside the bracket (a fixed sequence, so
    // the work done is reproducible; the result does not depend on the
    // pivots).
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = active.len();
        let first = if len == 0 {
            0
        } else {
            ((rng >> 33) as usize) % len
        };
        let pivot = (0..len).find_map(|t| {
            let a = &active[(first + t) % len];
            let (st, sp) = (a.start(), a.stop());
            if lo.lt::<W>(st) && st.lt::<W>(hi) {
                Some(st)
            } else if lo.lt::<W>(sp) && sp.lt::<W>(hi) {
                Some(sp)
            } else {
                None
            }
        });
        // One pass: members with no breakpoint inside (lo, hi) are settled
        // (λ₀ is in (lo, hi]); the others are kept and summed at the pivot.
        // total(p) × p.shares ≥ b × p.shares? Exact; saturating is safe as
        // every term is ≥ 0 and b × p.shares fits `W` (and u128).
        let p = pivot.unwrap_or(lo);
        let q = p.shares;
        let mut sum = W::zero();
        let mut kept = 0;
        for t in 0..len {
            let a = active[t];
            let (st, sp) = (a.start(), a.stop());
            // start ≤ stop: lo < start implies lo < stop, and start ≥ hi
            // implies stop ≥ hi.
            if lo.lt::<W>(st) {
                if st.lt::<W>(hi) {
                    active[kept] = a;
                    kept += 1;
                    let x = W::mul(p.value, a.shares);
                    sum = sum.sat_add(x.clamp(W::mul(a.floor, q), W::mul(a.cap, q)));
                    continue;
                }
                // Starts at or above hi ≥ λ₀: at floor.
                fixed += a.floor as u128;
            } else if lo.lt::<W>(sp) {
                if sp.lt::<W>(hi) {
                    active[kept] = a;
                    kept += 1;
                    let x = W::mul(p.value, a.shares);
                    sum = sum.sat_add(x.clamp(W::mul(a.floor, q), W::mul(a.cap, q)));
                    continue;
                }
                // Started by lo < λ₀, stops at or above hi ≥ λ₀: rising.
                state[a.i] = 1;
                slope += a.shares as u128;
            } else {
                // Stopped by lo < λ₀: at cap.
                state[a.i] = 2;
                fixed += a.cap as u128;
            }
        }
        active.truncate(kept);
        if pivot.is_none() {
            break;
        }
        let total = fixed
            .saturating_mul(q as u128)
            .saturating_add((p.value as u128).saturating_mul(slope))
            .saturating_add(sum.wide());
        if total >= b * q as u128 {
            hi = p;
        } else {
            lo = p;
        }
    }
    Level {
        state,
        fixed,
        slope,
    }
}

#[cfg(test)]
mod tests;
