//! The libvirt adapter against the real libvirt test driver. Each test
//! writes its own node XML (a file-based `test:///` URI has private state per
//! open, so tests are isolated and can run in parallel).
#![allow(clippy::unwrap_used)]

use crate::support::node::{dom, observe_one, set_memory, set_vcpus};

use virtpool::adapters::libvirt::{HvError, Hypervisor, Libvirt};
use virtpool::core::model::{Action, DomainObs, DomainState, IoTune, Reason};

const WEB: &str = "11111111-1111-1111-1111-111111111111";
const DB: &str = "22222222-2222-2222-2222-222222222222";
const OFF: &str = "33333333-3333-3333-3333-333333333333";
const MISSING: &str = "99999999-9999-9999-9999-999999999999";
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The test node (tests/fixtures/adapter-host.xml): a running domain
/// (`web-1`, pool metadata "gold", 2 of 4 vCPUs, 1 of 2 GiB, a writable
/// disk, a CD-ROM and a read-only disk), a paused one (`db-1`, no metadata)
/// and a shut-off one (`off-1`, pool "silver"). Each connection to it has
/// state of its own.
fn node_uri() -> String {
    crate::support::node::uri("adapter-host.xml")
}

/// A connected adapter on a fresh private node.
fn connected() -> Libvirt {
    let mut hv = Libvirt::new(&node_uri());
    hv.connect().unwrap();
    hv
}

fn vda(d: &DomainObs) -> Option<IoTune> {
    d.disks.iter().find(|d| &*d.target == "vda").unwrap().iotune
}

fn stats_period(uuid: &str, secs: u32) -> Action {
    Action::SetStatsPeriod {
        uuid: uuid.into(),
        domain: "dom".into(),
        secs,
    }
}

/// Bytes per second and IOPS, each with its burst maximum.
fn iotune(bytes_sec: u64, bytes_sec_max: u64, iops_sec: u64, iops_sec_max: u64) -> IoTune {
    IoTune {
        total_bytes_sec: bytes_sec,
        total_bytes_sec_max: bytes_sec_max,
        total_iops_sec: iops_sec,
        total_iops_sec_max: iops_sec_max,
    }
}

fn set_iotune(uuid: &str, disk: &str, to: IoTune) -> Action {
    Action::SetBlockIoTune {
        uuid: uuid.into(),
        domain: "dom".into(),
        disk: disk.into(),
        from: IoTune::default(),
        to,
        persist: false,
    }
}

fn set_blkio(uuid: &str, to: u64) -> Action {
    Action::SetBlkioWeight {
        uuid: uuid.into(),
        domain: "dom".into(),
        from: None,
        to,
        persist: false,
    }
}

fn set_shares(uuid: &str, to: u64) -> Action {
    Action::SetCpuShares {
        uuid: uuid.into(),
        domain: "dom".into(),
        from: None,
        to,
        persist: false,
    }
}

#[test]
fn observe_reads_running_paused_and_shutoff_domains() {
    let mut hv = connected();
    assert!(hv.is_connected());
    let doms = hv.observe().unwrap();
    assert_eq!(doms.len(), 3);
    // Sorted by name, whatever order libvirt lists them in.
    assert!(doms.windows(2).all(|w| w[0].name < w[1].name), "{doms:?}");

    let web = dom(&doms, "web-1");
    assert_eq!(&*web.uuid, WEB);
    assert_eq!(web.state, DomainState::Running);
    assert_eq!((web.vcpus, web.vcpus_max), (2, 4));
    assert_eq!((web.memory, web.memory_max), (GIB, 2 * GIB));
    assert_eq!(web.metadata_pool.as_deref(), Some("gold"));
    assert_eq!(web.active_secs, None);
    // libvirt orders disks itself (by bus/target), so look them up by name.
    let disk = |t: &str| web.disks.iter().find(|d| *d.target == *t).unwrap();
    assert_eq!(web.disks.len(), 3);
    assert_eq!(
        (disk("vda").device.as_str(), disk("vda").readonly),
        ("disk", false)
    );
    assert_eq!(
        (disk("hdc").device.as_str(), disk("hdc").readonly),
        ("cdrom", true)
    );
    assert_eq!(
        (disk("vdb").device.as_str(), disk("vdb").readonly),
        ("disk", true)
    );
    assert!(disk("vda").is_tunable() && !disk("hdc").is_tunable() && !disk("vdb").is_tunable());
    // I/O limits are read only for tunable disks of active domains.
    assert_eq!(disk("vda").iotune, Some(IoTune::default()));
    assert_eq!(disk("hdc").iotune, None);
    assert_eq!(disk("vdb").iotune, None);
    // The test driver reports canned balloon stats: actual = current memory.
    let balloon = web.balloon.expect("test driver reports memory stats");
    assert_eq!(balloon.actual, GIB);
    assert!(balloon.unused.is_some() && balloon.available.is_some());
    // The test driver's blkio weight starts at 0; its scheduler ("fair")
    // has `weight`, not `cpu_shares`.
    assert_eq!(web.blkio_weight, Some(0));
    assert_eq!(web.cpu_shares, None);

    let db = dom(&doms, "db-1");
    assert_eq!(&*db.uuid, DB);
    assert_eq!(db.state, DomainState::Paused);
    assert_eq!((db.vcpus, db.vcpus_max), (2, 2));
    assert_eq!((db.memory, db.memory_max), (GIB, GIB));
    assert_eq!(db.metadata_pool, None);
    assert_eq!(db.disks.len(), 1);
    assert_eq!(db.disks[0].iotune, Some(IoTune::default()));

    let off = dom(&doms, "off-1");
    assert_eq!(&*off.uuid, OFF);
    assert_eq!(off.state, DomainState::Shutoff);
    assert_eq!(off.vcpus, 0, "shut-off domains have no live vCPUs");
    assert_eq!(off.vcpus_max, 2);
    assert_eq!(off.memory_max, 512 * MIB);
    assert_eq!(off.metadata_pool.as_deref(), Some("silver"));
    assert_eq!(off.balloon, None);
    assert_eq!(off.disks.len(), 1);
    assert_eq!(off.disks[0].iotune, None);
}

/// A full observation gives up when told to, before reading any domain:
/// only the list is made, and the next observation reads as before.
#[test]
fn observe_until_gives_up_when_stopped_and_reads_in_full_otherwise() {
    use std::sync::atomic::AtomicBool;
    use virtpool::adapters::libvirt::calls::Call;
    let mut hv = connected();
    let calls = hv.call_counter().expect("the adapter counts its calls");
    let before = calls.snapshot();
    assert_eq!(hv.observe_until(&AtomicBool::new(true)).unwrap(), None);
    let made = calls.snapshot().since(&before);
    assert_eq!(made.get(Call::List), 1);
    assert_eq!(made.get(Call::Info), 0, "no domain read after the stop");

    let mut until = hv.observe_until(&AtomicBool::new(false)).unwrap().unwrap();
    let mut full = hv.observe().unwrap();
    assert_eq!(until.len(), 3);
    // The CPU time moves between two reads (the test driver reports the
    // wall clock); the rest is the same.
    for d in until.iter_mut().chain(full.iter_mut()) {
        assert_eq!(d.cpu_time.is_some(), d.state.is_active(), "{}", d.name);
        d.cpu_time = None;
    }
    assert_eq!(until, full);
}

#[test]
fn observe_and_apply_need_a_connection() {
    let mut hv = Libvirt::new(&node_uri());
    assert!(!hv.is_connected());
    assert!(matches!(hv.observe(), Err(HvError::ConnectionLost(_))));
    assert!(matches!(
        hv.apply(&set_vcpus(WEB, 3)),
        Err(HvError::ConnectionLost(_))
    ));
    hv.connect().unwrap();
    hv.connect().unwrap(); // cheap and idempotent
    assert!(hv.is_connected());
    assert_eq!(hv.observe().unwrap().len(), 3);
}

#[test]
fn set_vcpus_live_reads_back() {
    let mut hv = connected();
    hv.apply(&set_vcpus(WEB, 3)).unwrap();
    assert_eq!(observe_one(&mut hv, "web-1").vcpus, 3);
    hv.apply(&set_vcpus(WEB, 1)).unwrap();
    assert_eq!(observe_one(&mut hv, "web-1").vcpus, 1);
    // Up to the maximum, and with persist.
    let mut persist = set_vcpus(WEB, 4);
    if let Action::SetVcpus { persist: p, .. } = &mut persist {
        *p = true;
    }
    hv.apply(&persist).unwrap();
    let web = observe_one(&mut hv, "web-1");
    assert_eq!((web.vcpus, web.vcpus_max), (4, 4));
}

#[test]
fn set_memory_live_converts_bytes_to_kib() {
    let mut hv = connected();
    hv.apply(&set_memory(WEB, 1536 * MIB)).unwrap();
    let web = observe_one(&mut hv, "web-1");
    assert_eq!(web.memory, 1536 * MIB);
    assert_eq!(web.memory_max, 2 * GIB, "max unchanged");
    hv.apply(&set_memory(WEB, 512 * MIB)).unwrap();
    assert_eq!(observe_one(&mut hv, "web-1").memory, 512 * MIB);
}

#[test]
fn set_block_iotune_reads_back_and_clears() {
    let mut hv = connected();
    let tune = iotune(10_000_000, 20_000_000, 300, 600);
    hv.apply(&set_iotune(WEB, "vda", tune)).unwrap();
    let web = observe_one(&mut hv, "web-1");
    assert_eq!(vda(&web), Some(tune));

    // A max below the rate is raised to the rate (libvirt would reject it).
    let no_burst = iotune(5_000_000, 0, 100, 0);
    hv.apply(&set_iotune(WEB, "vda", no_burst)).unwrap();
    let web = observe_one(&mut hv, "web-1");
    assert_eq!(vda(&web), Some(iotune(5_000_000, 5_000_000, 100, 100)));
    assert_eq!(
        web.actual(virtpool::core::model::Resource::DiskBytesSec),
        5_000_000
    );

    // Zeros clear the limits.
    hv.apply(&set_iotune(WEB, "vda", IoTune::default()))
        .unwrap();
    assert_eq!(vda(&observe_one(&mut hv, "web-1")), Some(IoTune::default()));
    // The paused domain is live too.
    hv.apply(&set_iotune(DB, "vda", tune)).unwrap();
    assert_eq!(observe_one(&mut hv, "db-1").disks[0].iotune, Some(tune));
}

#[test]
fn set_blkio_weight_reads_back() {
    let mut hv = connected();
    hv.apply(&set_blkio(WEB, 500)).unwrap();
    assert_eq!(observe_one(&mut hv, "web-1").blkio_weight, Some(500));
    hv.apply(&set_blkio(WEB, 100)).unwrap();
    hv.apply(&set_blkio(WEB, 1000)).unwrap();
    assert_eq!(observe_one(&mut hv, "web-1").blkio_weight, Some(1000));
}

#[test]
fn blkio_weight_out_of_range_is_refused_before_libvirt() {
    // Not connected: had libvirt been called, the error would be
    // ConnectionLost. The test driver itself accepts 5 and 5000.
    let mut hv = Libvirt::new("test:///default");
    for bad in [0, 5, 99, 1001, 5000, u64::MAX] {
        match hv.apply(&set_blkio(WEB, bad)) {
            Err(HvError::InvalidArg(m)) => assert!(m.contains("dom"), "{m}"),
            other => panic!("weight {bad}: {other:?}"),
        }
    }
    let mut hv = connected();
    assert!(matches!(
        hv.apply(&set_blkio(WEB, 5)),
        Err(HvError::InvalidArg(_))
    ));
    assert_eq!(observe_one(&mut hv, "web-1").blkio_weight, Some(0));
}

#[test]
fn cpu_shares_out_of_range_is_refused_before_libvirt() {
    let mut hv = Libvirt::new("test:///default");
    for bad in [0, 10_001, 262_144] {
        assert!(
            matches!(hv.apply(&set_shares(WEB, bad)), Err(HvError::InvalidArg(_))),
            "{bad}"
        );
    }
}

#[test]
fn cpu_shares_on_test_driver_is_a_mapped_error() {
    // The test driver's scheduler only knows `weight`: setting `cpu_shares`
    // must come back as a clean, non-connection error, not a panic.
    let mut hv = connected();
    let err = hv.apply(&set_shares(WEB, 2048)).unwrap_err();
    assert!(!err.is_connection(), "{err:?}");
    assert!(err.to_string().contains("dom"), "{err}");
    assert!(hv.is_connected());
}

#[test]
fn missing_domain_is_no_domain_for_every_action() {
    let mut hv = connected();
    let actions = [
        set_vcpus(MISSING, 2),
        set_memory(MISSING, GIB),
        set_iotune(MISSING, "vda", IoTune::default()),
        set_blkio(MISSING, 500),
        set_shares(MISSING, 1024),
    ];
    for a in &actions {
        match hv.apply(a) {
            Err(HvError::NoDomain(m)) => assert!(m.contains(MISSING), "{m}"),
            other => panic!("{}: {other:?}", a.resource_label()),
        }
    }
    assert!(matches!(
        hv.apply(&stats_period(MISSING, 5)),
        Err(HvError::NoDomain(_))
    ));
    assert!(hv.is_connected(), "NoDomain keeps the connection");
}

#[test]
fn values_above_the_maximum_are_invalid_arg() {
    let mut hv = connected();
    assert!(matches!(
        hv.apply(&set_vcpus(WEB, 5)),
        Err(HvError::InvalidArg(_))
    ));
    assert!(matches!(
        hv.apply(&set_vcpus(WEB, 0)),
        Err(HvError::InvalidArg(_))
    ));
    assert!(matches!(
        hv.apply(&set_vcpus(WEB, u64::from(u32::MAX) + 1)),
        Err(HvError::InvalidArg(_))
    ));
    assert!(matches!(
        hv.apply(&set_memory(WEB, 3 * GIB)),
        Err(HvError::InvalidArg(_))
    ));
    // Nothing changed.
    let web = observe_one(&mut hv, "web-1");
    assert_eq!((web.vcpus, web.memory), (2, GIB));
}

#[test]
fn live_changes_on_shutoff_domain_are_operation_invalid() {
    let mut hv = connected();
    let actions = [
        set_vcpus(OFF, 2),
        set_memory(OFF, 256 * MIB),
        set_iotune(OFF, "vda", iotune(1000, 1000, 0, 0)),
    ];
    for a in &actions {
        match hv.apply(a) {
            Err(HvError::OperationInvalid(m)) => assert!(m.contains("dom"), "{m}"),
            other => panic!("{}: {other:?}", a.resource_label()),
        }
    }
    assert!(matches!(
        hv.apply(&stats_period(OFF, 5)),
        Err(HvError::OperationInvalid(_))
    ));
}

#[test]
fn unknown_disk_is_a_per_domain_error() {
    let mut hv = connected();
    let err = hv
        .apply(&set_iotune(WEB, "vdz", iotune(1000, 1000, 0, 0)))
        .unwrap_err();
    assert!(matches!(err, HvError::InvalidArg(_)), "{err:?}");
    assert!(err.to_string().contains("vdz"), "{err}");
    // The connection and the other domains are unaffected.
    assert!(hv.is_connected());
    hv.apply(&set_vcpus(WEB, 3)).unwrap();
    assert_eq!(hv.observe().unwrap().len(), 3);
}

#[test]
fn stats_period_is_set_on_running_domain() {
    let mut hv = connected();
    hv.apply(&stats_period(WEB, 5)).unwrap();
    hv.apply(&stats_period(WEB, 0)).unwrap(); // 0 disables collection
    assert!(matches!(
        hv.apply(&stats_period(WEB, u32::MAX)),
        Err(HvError::InvalidArg(_))
    ));
}

#[test]
fn missing_daemon_socket_is_connection_lost() {
    let mut hv = Libvirt::new("test+unix:///default?socket=/nonexistent/libvirt-sock");
    match hv.connect() {
        Err(HvError::ConnectionLost(m)) => assert!(m.contains("/nonexistent"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!hv.is_connected());
    assert!(matches!(hv.observe(), Err(HvError::ConnectionLost(_))));
}

#[test]
fn unparsable_node_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.xml");
    std::fs::write(&path, "<node><!-- bad -- comment --></node>").unwrap();
    let mut hv = Libvirt::new(&format!("test://{}", path.display()));
    assert!(hv.connect().is_err());
    assert!(!hv.is_connected());
}

/// `test:///default` is shared by every connection of the process, so a
/// second, independent connection sees what the adapter changed — including
/// the persistent config when `persist` is set. Only this test uses it.
#[test]
fn persist_writes_config_seen_by_a_second_connection() {
    use virt::connect::Connect;
    use virt::sys;
    const DEFAULT_UUID: &str = "6695eb01-f6a4-8304-79aa-97f2502e193f";

    let mut hv = Libvirt::new("test:///default");
    hv.connect().unwrap();
    let before = observe_one(&mut hv, "test");
    let target = if before.memory == GIB { 2 * GIB } else { GIB };
    hv.apply(&Action::SetMemory {
        uuid: DEFAULT_UUID.into(),
        domain: "test".into(),
        from: before.memory,
        to: target,
        reason: Reason::Share,
        persist: true,
    })
    .unwrap();
    hv.apply(&Action::SetBlkioWeight {
        uuid: DEFAULT_UUID.into(),
        domain: "test".into(),
        from: None,
        to: 700,
        persist: true,
    })
    .unwrap();

    let second = Connect::open(Some("test:///default")).unwrap();
    let dom = second.lookup_domain_by_uuid_string(DEFAULT_UUID).unwrap();
    assert_eq!(dom.info().unwrap().memory * 1024, target, "live");
    let config = dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE).unwrap();
    let kib = target / 1024;
    assert!(
        config.contains(&format!("<currentMemory unit='KiB'>{kib}</currentMemory>")),
        "{config}"
    );
    assert!(config.contains("<weight>700</weight>"), "{config}");
    drop(dom);
    drop(second);
    assert_eq!(observe_one(&mut hv, "test").blkio_weight, Some(700));
}

/// The raw bulk-stats call: one record per domain; the test driver fills
/// only `state.*`, which is why `observe` falls back to per-domain reads.
#[test]
fn bulk_stats_on_test_driver_fill_state_only() {
    use virt::sys;
    let conn = virt::connect::Connect::open(Some(&node_uri())).unwrap();
    let groups =
        sys::VIR_DOMAIN_STATS_STATE | sys::VIR_DOMAIN_STATS_VCPU | sys::VIR_DOMAIN_STATS_BALLOON;
    let wanted = [
        "state.state",
        "state.reason",
        "vcpu.current",
        "vcpu.maximum",
        "balloon.current",
    ];
    let recs =
        virtpool::adapters::libvirt::ffi::all_domain_stats(&conn, groups, 0, &wanted).unwrap();
    assert_eq!(recs.len(), 3);
    let state = |uuid: &str| {
        let r = recs.iter().find(|r| r.uuid == uuid).unwrap();
        let names: Vec<&str> = r.numbers.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["state.state", "state.reason"]);
        r.number("state.state")
    };
    assert_eq!(state(WEB), Some(1));
    assert_eq!(state(DB), Some(3));
    assert_eq!(state(OFF), Some(5));
    drop(conn);
}
