//! Leak check of the FFI layer: many set/get cycles of block I/O limits and
//! blkio weight (success and error paths) must not grow the RSS.
//! Run with `--nocapture` to see the numbers.
#![allow(clippy::unwrap_used)]

use virt::connect::Connect;
use virt::sys;
use virtpool::adapters::libvirt::{ffi, Hypervisor, Libvirt};
use virtpool::core::model::{Action, IoTune};

const WARMUP: u64 = 1_000;
const CYCLES: u64 = 10_000;
/// Allowed RSS growth after warm-up. Measured: 0 KiB. Removing the
/// `virTypedParamsFree` in `TypedParams` grows it by ~11 MB, removing the
/// `virTypedParamsClear` of getter arrays by ~2.5 MB.
const MAX_GROWTH_KIB: u64 = 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cycle(dom: &virt::domain::Domain, i: u64) {
    let live = sys::VIR_DOMAIN_AFFECT_LIVE;
    let tune = IoTune {
        total_bytes_sec: 1_000_000 + i,
        total_bytes_sec_max: 2_000_000 + i,
        total_iops_sec: 100 + i,
        total_iops_sec_max: 200 + i,
    };
    ffi::set_block_iotune(dom, "vda", &tune, live).unwrap();
    assert_eq!(ffi::get_block_iotune(dom, "vda", live).unwrap(), tune);
    // Disks can also be named by their source path.
    assert_eq!(
        ffi::get_block_iotune(dom, "/tmp/leak-1.img", live).unwrap(),
        tune
    );
    let weight = 100 + u32::try_from(i % 900).unwrap();
    ffi::set_blkio_weight(dom, weight, live).unwrap();
    assert_eq!(ffi::get_blkio_weight(dom, live).unwrap(), Some(weight));
    // Error paths must free as well.
    assert!(ffi::get_block_iotune(dom, "nope", live).is_err());
    assert!(ffi::set_block_iotune(dom, "nope", &tune, live).is_err());
    // A typed-parameter list built and dropped.
    let mut p = ffi::TypedParams::new();
    p.add_ullong("total_bytes_sec", i).unwrap();
    p.add_uint("weight", 500).unwrap();
    assert_eq!(p.len(), 2);
}

#[test]
fn ffi_and_observe_cycles_do_not_leak() {
    virt::error::clear_error_callback();
    // One running domain with one disk.
    let node = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/leak-host.xml");
    let conn = Connect::open(Some(&format!("test://{node}"))).unwrap();
    let dom = conn
        .lookup_domain_by_uuid_string("44444444-4444-4444-4444-444444444444")
        .unwrap();

    let start = std::time::Instant::now();
    for i in 0..WARMUP {
        cycle(&dom, i);
    }
    let before = rss_kib();
    for i in 0..CYCLES {
        cycle(&dom, i);
    }
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    println!(
        "ffi leak check: RSS after {WARMUP} warm-up cycles {before} KiB, after {CYCLES} more \
         {after} KiB, growth {growth} KiB, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "RSS grew by {growth} KiB over {CYCLES} cycles"
    );
    drop(dom);
    drop(conn);

    // The whole adapter: observe (XML, metadata, stats, scheduler and blkio
    // reads) plus applies, through `Libvirt`, in the same process so the
    // measurements do not overlap.
    let mut hv = Libvirt::new(&format!("test://{node}"));
    hv.connect().unwrap();
    let observe_cycle = |hv: &mut Libvirt, i: u64| {
        let doms = hv.observe().unwrap();
        assert_eq!(doms.len(), 1);
        hv.apply(&Action::SetBlkioWeight {
            uuid: doms[0].uuid.clone(),
            domain: doms[0].name.clone(),
            from: doms[0].blkio_weight,
            to: 100 + i % 900,
            persist: false,
        })
        .unwrap();
    };
    for i in 0..WARMUP {
        observe_cycle(&mut hv, i);
    }
    let before = rss_kib();
    for i in 0..CYCLES {
        observe_cycle(&mut hv, i);
    }
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    println!(
        "adapter leak check: RSS after {WARMUP} warm-up observe+apply cycles {before} KiB, \
         after {CYCLES} more {after} KiB, growth {growth} KiB, {:.1} s total",
        start.elapsed().as_secs_f64()
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "RSS grew by {growth} KiB over {CYCLES} observe cycles"
    );
}
