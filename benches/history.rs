//! What the pools' history (`virtpool::agent::samples`) costs at 1,000
//! domains: the heap it holds after an hour of cycles and after a second
//! hour (a fixed cost: the same), counted by a counting allocator, and the
//! time one cycle's record takes. 1,000 running domains in 4 pools (as the
//! scale bench has them) and in 40, at the default 10 s interval.
//!
//! `cargo bench --bench history`

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;
use virtpool::agent::report::{CycleInfo, LibvirtStatus, Report};
use virtpool::agent::samples::{Samples, POINT_BYTES};
use virtpool::core::config::{Config, Mode};
use virtpool::core::planner::testing::{balloon, domain, GIB};
use virtpool::core::planner::{plan, History, PlanInput};

/// Heap bytes live (allocated, not yet freed), all threads.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; the
// counter only adds and subtracts the sizes it was asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const DOMAINS: usize = 1_000;

fn report(pools: usize) -> Report {
    let mut toml = String::from("[host]\ncpus = 4000\nmemory = \"8000GiB\"\n");
    for p in 0..pools {
        toml.push_str(&format!(
            "[pools.p{p}]\nmatch = \"p{p}-*\"\nvcpus = {{ budget = {} }}\nmemory = {{ budget = \"{}GiB\" }}\n",
            DOMAINS / pools * 2,
            DOMAINS / pools * 4
        ));
    }
    let cfg = Config::parse(&toml, Path::new("bench.toml")).expect("bench config");
    let domains: Vec<_> = (0..DOMAINS)
        .map(|i| {
            let mut d = domain(&format!("p{}-{i:04}", i % pools), None);
            d.vcpus = 2;
            d.vcpus_max = 4;
            d.memory = 4 * GIB;
            d.memory_max = 8 * GIB;
            d.balloon = Some(balloon(4 * GIB, 2 * GIB));
            d
        })
        .collect();
    let host = virtpool::core::planner::testing::host(4000, 8000 * GIB);
    let p = plan(&PlanInput {
        config: &cfg,
        host,
        domains: &domains,
        reservations: &Default::default(),
        history: &History::default(),
        now: 0,
        paused: false,
    });
    Report {
        cycle: 0,
        mode: Mode::Enforce,
        paused: false,
        libvirt: LibvirtStatus {
            uri: "test:///default".into(),
            connected: true,
            error: None,
        },
        host: Some(host),
        capacity: None,
        last_cycle: None,
        plan: Some(p),
        domains,
        results: Vec::new(),
        config_error: None,
        basis: Default::default(),
    }
}

fn hour(s: &Samples, r: &mut Report, start: u64) -> f64 {
    let t0 = Instant::now();
    for i in 0..360 {
        r.cycle += 1;
        r.last_cycle = Some(CycleInfo {
            finished_at: start + i * 10,
            duration_ms: 1.0,
            ..Default::default()
        });
        s.record(r);
    }
    t0.elapsed().as_secs_f64() * 1e6 / 360.0
}

fn main() {
    println!("pools' history at {DOMAINS} domains, 10 s interval (one point: {POINT_BYTES} bytes)");
    for pools in [4, 40] {
        let mut r = report(pools);
        let before = LIVE.load(Ordering::SeqCst);
        let s = Samples::new(std::time::Duration::from_secs(10));
        let us = hour(&s, &mut r, 1_700_000_000);
        let one = LIVE.load(Ordering::SeqCst) - before;
        let us2 = hour(&s, &mut r, 1_700_003_600);
        let two = LIVE.load(Ordering::SeqCst) - before;
        let rings = s.allocated_bytes();
        println!(
            "  {pools:>2} pools: heap held after 1 h {one} B, after 2 h {two} B \
             (rings {rings} B = {pools} × {} points × {POINT_BYTES} B; the rest: map and names); \
             one record {us:.1} µs, {us2:.1} µs in the second hour",
            s.capacity()
        );
        assert_eq!(one, two, "a fixed cost");
        drop(s);
    }
}
