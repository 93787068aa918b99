//! Host memory pressure: when the host's available memory is below
//! `memory.pressure_threshold`, members' memory targets are lowered below
//! their fair share — never below their floors — and given back gradually
//! once the pressure has passed.
//!
//! The amount each member gives up (its *reclaim*) is remembered in
//! [`History::reclaim`](super::History::reclaim) and changes by at most one
//! shrink step (`memory.max_shrink` of its current memory) per cycle:
//!
//! - Under pressure, the shortfall (threshold − available) minus what is
//!   already on its way out (memory above the members' lowered targets) is
//!   taken from members in order: lowest shares first, then the most idle
//!   (largest free fraction reported by the balloon), then UUID. Only
//!   members whose guest reports memory statistics are lowered (never
//!   shrink blindly).
//! - Without pressure, reclaim is given back in the reverse order, one step
//!   per member per cycle, and never more in total than the host's
//!   headroom above the threshold, less what members given memory back
//!   have not grown into yet (so giving back cannot cause pressure).

use super::work::{Work, MIB};
use crate::core::model::Reason;
use crate::core::units;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

/// Shrink step of a member with `actual` bytes: `memory.max_shrink`, at
/// least 1 MiB, rounded up to MiB.
pub(super) fn step(max_shrink: crate::core::units::Amount, actual: u64) -> u64 {
    ceil_mib(max_shrink.resolve(actual).max(MIB))
}

pub(super) fn ceil_mib(b: u64) -> u64 {
    b.div_ceil(MIB).saturating_mul(MIB)
}

#[derive(Clone, Copy)]
struct Cand<'a> {
    w: usize,
    m: usize,
    uuid: &'a str,
    /// [`crate::core::keys::head_word`] of `uuid`.
    key: u64,
    shares: u64,
    idle: (u64, u64),
    has_stats: bool,
    actual: u64,
    target: u64,
    floor: u64,
    reclaim: u64,
}

/// A candidate's place in the order reclaim is taken: low shares, most
/// idle, UUID, then where it was found (so an unstable sort of these small
/// keys orders like a stable sort of the candidates).
struct Key<'a> {
    shares: u64,
    idle: (u64, u64),
    /// First bytes of the UUID ([`crate::core::keys::head_word`]).
    key: u64,
    uuid: &'a str,
    pos: usize,
}

impl<'a> Key<'a> {
    fn new(pos: usize, c: &Cand<'a>) -> Key<'a> {
        Key {
            shares: c.shares,
            idle: c.idle,
            key: c.key,
            uuid: c.uuid,
            pos,
        }
    }
}

impl Ord for Key<'_> {
    fn cmp(&self, o: &Self) -> Ordering {
        // More idle first: free/total compared exactly.
        let more_idle = |a: (u64, u64), b: (u64, u64)| {
            (b.0 as u128 * a.1 as u128).cmp(&(a.0 as u128 * b.1 as u128))
        };
        self.shares
            .cmp(&o.shares)
            .then_with(|| more_idle(self.idle, o.idle))
            .then_with(|| self.key.cmp(&o.key))
            .then_with(|| self.uuid.cmp(o.uuid))
            .then(self.pos.cmp(&o.pos))
    }
}

impl PartialOrd for Key<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Key<'_> {}

/// Lowers memory targets for host pressure. Returns whether the host is
/// under pressure and the reclaim per member UUID (non-zero entries).
pub(super) fn apply(
    works: &mut [Work<'_>],
    input: &super::plan::PlanInput<'_>,
) -> (bool, BTreeMap<Arc<str>, u64>) {
    let host = &input.host;
    let tuning = &input.config.tuning;
    let threshold = tuning.pressure_threshold.resolve(host.memory_total);
    let pressure = host.memory_available < threshold;

    let mut cands: Vec<Cand<'_>> = Vec::with_capacity(works.iter().map(|w| w.members.len()).sum());
    for (w, work) in works.iter().enumerate() {
        if work.pool.paused {
            continue;
        }
        for (m, slot) in work.allocs[1].iter().enumerate() {
            let Some(a) = slot.filter(|_| work.admitted[m]) else {
                continue;
            };
            let mem = work.member(m);
            let prev = mem.hist.reclaim;
            let has_stats = a.used.is_some();
            if !pressure && prev == 0 {
                continue;
            }
            if pressure && !has_stats && prev == 0 {
                continue;
            }
            let room = a.target.saturating_sub(a.floor);
            cands.push(Cand {
                w,
                m,
                uuid: mem.uuid,
                key: mem.key,
                shares: a.shares,
                idle: mem.o.idle,
                has_stats,
                actual: a.actual,
                target: a.target,
                floor: a.floor,
                reclaim: units::floor_mib(prev).min(room),
            });
        }
    }
    // The candidates' positions in `cands`, in the order reclaim is taken
    // (each list sorted by `Key`).
    let order: Vec<usize> = if pressure {
        let need = threshold - host.memory_available;
        let inflight: u64 = cands
            .iter()
            .map(|c| c.actual.saturating_sub(c.target - c.reclaim))
            .fold(0u64, u64::saturating_add);
        let mut need = need.saturating_sub(inflight);
        // Taken in order until the need is met: usually a few of many
        // candidates, so they come off a heap instead of a full sort.
        let keys: Vec<Reverse<Key<'_>>> = cands
            .iter()
            .enumerate()
            .map(|(pos, c)| Reverse(Key::new(pos, c)))
            .collect();
        let mut heap = BinaryHeap::from(keys);
        let mut order = Vec::new();
        while need > 0 {
            let Some(Reverse(k)) = heap.pop() else {
                break;
            };
            let c = &mut cands[k.pos];
            if c.has_stats {
                let room = (c.target - c.reclaim).saturating_sub(c.floor);
                let inc = room
                    .min(step(tuning.memory_max_shrink, c.actual))
                    .min(ceil_mib(need));
                c.reclaim += inc;
                need = need.saturating_sub(inc);
            }
            order.push(k.pos);
        }
        // The others come after, unchanged: only those that keep a
        // reclaim matter, in order.
        let mut rest: Vec<Key<'_>> = heap
            .into_vec()
            .into_iter()
            .map(|Reverse(k)| k)
            .filter(|k| cands[k.pos].reclaim > 0)
            .collect();
        rest.sort_unstable();
        order.extend(rest.iter().map(|k| k.pos));
        order
    } else {
        let mut keys: Vec<Key<'_>> = cands
            .iter()
            .enumerate()
            .map(|(pos, c)| Key::new(pos, c))
            .collect();
        keys.sort_unstable();
        let order: Vec<usize> = keys.iter().map(|k| k.pos).collect();
        // Memory already given back but not yet grown into will take
        // headroom too: count it, or repeated small releases would overshoot.
        let regrowing: u64 = cands
            .iter()
            .map(|c| (c.target - c.reclaim).saturating_sub(c.actual))
            .fold(0u64, u64::saturating_add);
        let mut headroom =
            units::floor_mib((host.memory_available - threshold).saturating_sub(regrowing));
        for &pos in order.iter().rev() {
            let c = &mut cands[pos];
            let dec = c
                .reclaim
                .min(step(tuning.memory_max_shrink, c.actual))
                .min(headroom);
            c.reclaim -= dec;
            headroom -= dec;
        }
        order
    };

    let lowered: Vec<(usize, usize, u64)> = order
        .iter()
        .map(|&pos| cands[pos])
        .filter(|c| c.reclaim > 0)
        .map(|c| (c.w, c.m, c.reclaim))
        .collect();
    drop(cands);
    // By UUID (then in the order taken: for a repeated UUID the last one
    // counts), so the map is built from sorted entries in one pass.
    let mut entries: Vec<(u64, usize, &Arc<str>, u64)> = Vec::with_capacity(lowered.len());
    for (pos, &(w, m, r)) in lowered.iter().enumerate() {
        if let Some(a) = works[w].allocs[1][m].as_mut() {
            a.target -= r;
            a.target_reason = Reason::Pressure;
            a.reason = Reason::Pressure;
        }
        let mem = works[w].member(m);
        entries.push((mem.key, pos, &mem.d.uuid, r));
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(b.2)).then(a.1.cmp(&b.1)));
    let reclaim = entries
        .into_iter()
        .map(|(_, _, uuid, r)| (uuid.clone(), r))
        .collect();
    (pressure, reclaim)
}
