//! What the adapter reads again in a steady cycle, on a private libvirtd
//! hosting the test driver: state, vCPUs and memory every time; the XML,
//! disk I/O limits and weights only after a libvirt event about the domain,
//! after the agent's own write, or when the resync interval has passed.
//! Changes are made on a second connection, as another tool would.
//!
//! Measured on this driver (libvirt 9.0): setting metadata raises a
//! METADATA_CHANGE event; setting I/O limits or the blkio weight raises no
//! event (QEMU raises TUNABLE for I/O limits), so such a change is seen at
//! the resync.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::sys;
use virtpool::adapters::libvirt::calls::{Call, CallCounter, CallCounts};
use virtpool::adapters::libvirt::events::{self, EventReceiver, HvEvent, LifecycleKind};
use virtpool::adapters::libvirt::{ffi, Hypervisor, Libvirt};
use virtpool::core::model::{Action, DomainObs, IoTune};

use crate::support::libvirtd::Libvirtd;
use crate::support::node::{dom, domain_xml, test_uuid};
use crate::{connected, libvirtd};

const MIB: u64 = 1 << 20;

/// Domain `i`'s one disk.
fn disk(i: usize) -> String {
    format!(
        "<disk type='file' device='disk'><source file='/var/lib/d{i}.img'/>\
         <target dev='vda' bus='virtio'/></disk>"
    )
}

fn limit(bytes: u64) -> IoTune {
    IoTune {
        total_bytes_sec: bytes,
        total_bytes_sec_max: bytes,
        ..IoTune::default()
    }
}

struct Setup {
    _daemon: Libvirtd,
    c2: Connect,
}

/// A private libvirtd with d0 and d1 running (one disk each).
fn setup() -> Option<Setup> {
    // The event loop starts before any connection is opened in this process.
    let daemon = libvirtd()?;
    let c2 = Connect::open(Some(&daemon.uri())).unwrap();
    for i in 0..2 {
        c2.define_domain_xml(&domain_xml(&format!("d{i}"), i, &disk(i)))
            .unwrap()
            .create()
            .unwrap();
    }
    Some(Setup {
        _daemon: daemon,
        c2,
    })
}

impl Setup {
    fn uri(&self) -> String {
        self._daemon.uri()
    }

    fn set_limit(&self, name: &str, bytes: u64) {
        let d = self.c2.lookup_domain_by_name(name).unwrap();
        ffi::set_block_iotune(&d, "vda", &limit(bytes), sys::VIR_DOMAIN_AFFECT_LIVE).unwrap();
    }

    fn set_weight(&self, name: &str, w: u32) {
        let d = self.c2.lookup_domain_by_name(name).unwrap();
        ffi::set_blkio_weight(&d, w, sys::VIR_DOMAIN_AFFECT_LIVE).unwrap();
    }

    fn set_vcpus(&self, name: &str, n: u32) {
        let d = self.c2.lookup_domain_by_name(name).unwrap();
        d.set_vcpus_flags(n, sys::VIR_DOMAIN_AFFECT_LIVE).unwrap();
    }

    fn set_pool_metadata(&self, name: &str, pool: &str) {
        let d = self.c2.lookup_domain_by_name(name).unwrap();
        d.set_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&format!("<pool>{pool}</pool>")),
            Some("virtpool"),
            Some(virtpool::adapters::libvirt::xml::POOL_NS),
            sys::VIR_DOMAIN_AFFECT_LIVE,
        )
        .unwrap();
    }
}

fn disk_limit(obs: &[DomainObs], name: &str) -> u64 {
    dom(obs, name).disks[0].iotune.unwrap().total_bytes_sec
}

/// Waits for an event of `kind` about `uuid` (the callbacks have run).
fn wait_event(rx: &mut EventReceiver, uuid: &str, kind: LifecycleKind) {
    let t0 = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(HvEvent::Domain(e)) if e.uuid == uuid && e.kind == kind => return,
            Ok(_) => {}
            Err(_) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "no {kind:?} event");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn slow_facts_are_read_again_after_an_event_an_own_write_or_the_resync() {
    let Some(s) = setup() else { return };
    let resync = Duration::from_secs(4);
    let (tx, mut rx) = events::channel();
    let mut hv = Libvirt::new(&s.uri()).with_events(tx).with_resync(resync);
    hv.connect().unwrap();
    assert!(hv.events_registered());
    let t0 = Instant::now();
    let obs = hv.observe().unwrap();
    assert_eq!(disk_limit(&obs, "d0"), 0);
    assert_eq!(hv.last_full_reads(), obs.len());
    assert_eq!(hv.cached_domains(), obs.len(), "every domain cached");

    // Changes no event reports: I/O limits and weight are taken from the
    // cache; vCPUs are read every time.
    s.set_limit("d0", MIB);
    s.set_weight("d1", 300);
    s.set_vcpus("d1", 3);
    let obs = hv.observe().unwrap();
    assert_eq!(hv.last_full_reads(), 0, "a steady observation");
    assert!(
        t0.elapsed() < resync / 2,
        "test too slow to check the cache"
    );
    assert_eq!(
        disk_limit(&obs, "d0"),
        0,
        "cached until something says otherwise"
    );
    assert_eq!(dom(&obs, "d1").blkio_weight, Some(0));
    assert_eq!(dom(&obs, "d1").vcpus, 3, "vCPUs are read every cycle");

    // An event about d0 (its metadata) makes it read again: the new pool
    // and the I/O limit set before both show.
    s.set_pool_metadata("d0", "web");
    wait_event(&mut rx, &test_uuid(0), LifecycleKind::MetadataChanged);
    let obs = hv.observe().unwrap();
    assert_eq!(hv.last_full_reads(), 1, "d0 only");
    assert_eq!(dom(&obs, "d0").metadata_pool.as_deref(), Some("web"));
    assert_eq!(disk_limit(&obs, "d0"), MIB);
    assert_eq!(dom(&obs, "d1").blkio_weight, Some(0), "d1 still cached");

    // The agent's own write: what it wrote is read back on the next
    // observation, and only that (the weight changed behind the agent's
    // back without an event waits for the resync).
    hv.apply(&Action::SetBlockIoTune {
        uuid: test_uuid(1).as_str().into(),
        domain: "d1".into(),
        disk: "vda".into(),
        from: limit(0),
        to: limit(2 * MIB),
        persist: false,
    })
    .unwrap();
    let obs = hv.observe().unwrap();
    assert_eq!(disk_limit(&obs, "d1"), 2 * MIB);
    assert_eq!(dom(&obs, "d1").blkio_weight, Some(0), "not read with it");

    // A lifecycle event (suspend) marks the domain too.
    s.set_limit("d1", 3 * MIB);
    s.c2.lookup_domain_by_name("d1").unwrap().suspend().unwrap();
    wait_event(&mut rx, &test_uuid(1), LifecycleKind::Suspended);
    let obs = hv.observe().unwrap();
    assert_eq!(disk_limit(&obs, "d1"), 3 * MIB);
    assert_eq!(dom(&obs, "d1").blkio_weight, Some(300), "read in full");

    // No event at all: seen once the resync interval has passed.
    s.set_limit("d0", 5 * MIB);
    assert_eq!(disk_limit(&hv.observe().unwrap(), "d0"), MIB);
    std::thread::sleep(resync.saturating_sub(t0.elapsed()) + Duration::from_millis(100));
    assert_eq!(disk_limit(&hv.observe().unwrap(), "d0"), 5 * MIB);
}

#[test]
fn without_events_or_with_a_zero_resync_everything_is_read_every_time() {
    let Some(s) = setup() else { return };
    let (tx, _rx) = events::channel();
    let mut no_events = Libvirt::new(&s.uri());
    let mut zero = Libvirt::new(&s.uri())
        .with_events(tx)
        .with_resync(Duration::ZERO);
    for hv in [&mut no_events, &mut zero] {
        hv.connect().unwrap();
        hv.observe().unwrap();
        assert_eq!(hv.cached_domains(), 0);
    }
    assert!(zero.events_registered() && !no_events.events_registered());
    s.set_limit("d0", 7 * MIB);
    s.set_weight("d0", 700);
    for hv in [&mut no_events, &mut zero] {
        let obs = hv.observe().unwrap();
        assert_eq!(disk_limit(&obs, "d0"), 7 * MIB);
        assert_eq!(dom(&obs, "d0").blkio_weight, Some(700));
    }
}

#[test]
fn a_reconnect_drops_the_cache() {
    let Some(s) = setup() else { return };
    let (mut hv, _rx) = connected(&s.uri());
    hv.observe().unwrap();
    assert!(hv.cached_domains() > 0);
    s.set_limit("d1", 9 * MIB);
    hv.disconnect();
    assert_eq!(hv.cached_domains(), 0);
    hv.connect().unwrap();
    assert_eq!(disk_limit(&hv.observe().unwrap(), "d1"), 9 * MIB);
}

/// What `f` gave and the calls it made.
fn counted<T>(calls: &CallCounter, f: impl FnOnce() -> T) -> (T, CallCounts) {
    let before = calls.snapshot();
    let out = f();
    (out, calls.snapshot().since(&before))
}

#[test]
fn a_steady_observation_reads_two_calls_per_running_domain() {
    let Some(s) = setup() else { return };
    let (mut hv, _rx) = connected(&s.uri());
    let calls = hv.call_counter().expect("the adapter counts its calls");
    let running = hv.observe().unwrap().len() as u64;
    assert_eq!(running, 3, "the driver's `test`, d0, d1");

    // Steady: one list, then `info` and memory stats per running domain
    // (this driver's bulk stats carry the state only: not asked again).
    let (_, steady) = counted(&calls, || hv.observe().unwrap());
    assert_eq!(steady.get(Call::List), 1);
    assert_eq!(steady.get(Call::BulkStats), 0);
    assert_eq!(steady.get(Call::Info), running);
    assert_eq!(steady.get(Call::MemoryStats), running);
    assert_eq!(steady.reads(), 1 + 2 * running, "{steady:?}");
    assert_eq!(steady.writes(), 0);

    // An own write is one call. A vCPU write changes no slow fact: the
    // next observation reads nothing more than a steady one.
    let (_, write) = counted(&calls, || {
        hv.apply(&Action::SetVcpus {
            uuid: test_uuid(0).as_str().into(),
            domain: "d0".into(),
            from: 1,
            to: 2,
            reason: virtpool::core::model::Reason::Share,
            persist: false,
        })
        .unwrap()
    });
    assert_eq!((write.get(Call::SetVcpus), write.reads()), (1, 0));
    let (_, back) = counted(&calls, || hv.observe().unwrap());
    assert_eq!(back.reads(), 1 + 2 * running, "{back:?}");

    // A weight write: only that weight is read back.
    hv.apply(&Action::SetBlkioWeight {
        uuid: test_uuid(0).as_str().into(),
        domain: "d0".into(),
        from: None,
        to: 300,
        persist: false,
    })
    .unwrap();
    let (seen, back) = counted(&calls, || hv.observe().unwrap());
    assert_eq!(back.reads(), 1 + 2 * running + 1, "{back:?}");
    assert_eq!(back.get(Call::GetBlkioWeight), 1);
    let d0 = seen.iter().find(|d| &*d.name == "d0").unwrap();
    assert_eq!(d0.blkio_weight, Some(300), "read back from libvirt");

    // An I/O limit write: that domain's disk limits only.
    hv.apply(&Action::SetBlockIoTune {
        uuid: test_uuid(0).as_str().into(),
        domain: "d0".into(),
        disk: "vda".into(),
        from: IoTune::default(),
        to: IoTune {
            total_bytes_sec: 7 * MIB,
            total_bytes_sec_max: 7 * MIB,
            ..IoTune::default()
        },
        persist: false,
    })
    .unwrap();
    let (seen, back) = counted(&calls, || hv.observe().unwrap());
    assert_eq!(back.reads(), 1 + 2 * running + 1, "{back:?}");
    assert_eq!(back.get(Call::GetIoTune), 1);
    assert_eq!(disk_limit(&seen, "d0"), 7 * MIB, "read back from libvirt");
}
