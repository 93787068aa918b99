//! Disk I/O quotas and weights on live domains, checked from a second
//! libvirt connection. `test:///default` is shared by every connection of
//! the process, so a second `Connect` sees what the agent did — live and
//! persistent config alike. Each test uses its own domain-name prefix and a
//! pool that matches only it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use virt::connect::Connect;

use virt::sys;
use virtpool::adapters::libvirt::ffi;
use virtpool::core::config::Config;
use virtpool::core::model::{Action, IoTune};
use virtpool::core::planner::blkio_weight;

const MIB: u64 = 1 << 20;

/// Defines and starts a test-driver domain with the given disks.
fn start(conn: &Connect, name: &str, disks: &[&str], cdrom: bool) {
    let mut devs = String::new();
    for d in disks {
        devs.push_str(&format!(
            "<disk type='file' device='disk'><source file='/img/{name}-{d}.img'/><target dev='{d}' bus='virtio'/></disk>"
        ));
    }
    if cdrom {
        devs.push_str("<disk type='file' device='cdrom'><source file='/img/tools.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>");
    }
    let xml = format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>1024</memory>\
         <vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os><devices>{devs}</devices></domain>"
    );
    let dom = conn.define_domain_xml(&xml).unwrap();
    dom.create().unwrap();
}

fn tune(conn: &Connect, name: &str, disk: &str, flags: u32) -> IoTune {
    let dom = conn.lookup_domain_by_name(name).unwrap();
    ffi::get_block_iotune(&dom, disk, flags).unwrap()
}

fn weight(conn: &Connect, name: &str) -> Option<u32> {
    let dom = conn.lookup_domain_by_name(name).unwrap();
    ffi::get_blkio_weight(&dom, sys::VIR_DOMAIN_AFFECT_LIVE).unwrap()
}

fn config(prefix: &str, body: &str) -> Config {
    let text = format!(
        "[agent]\nlibvirt_uri = \"test:///default\"\nstate_dir = \"/nonexistent\"\n\
         [host]\ncpus = 8\nmemory = \"32GiB\"\ndisk_bytes_sec = \"1GiB\"\ndisk_iops_sec = 10000\n\
         [pools.{prefix}]\nmatch = \"{prefix}-*\"\n{body}"
    );
    Config::parse(&text, Path::new("disk.toml")).unwrap()
}

#[tokio::test]
async fn every_disk_gets_its_planned_rate_and_a_two_disk_domain_is_split() {
    virtpool::adapters::libvirt::quiet_errors();
    let checker = Connect::open(Some("test:///default")).unwrap();
    start(&checker, "dio1-a", &["vda", "vdb"], true);
    start(&checker, "dio1-b", &["vda"], false);
    start(&checker, "dio1-c", &[], false);
    let cfg = config(
        "dio1",
        "disk_bytes_sec = { budget = \"300MiB\" }\ndisk_iops_sec = { budget = 3000 }\n\
         [pools.dio1.members.dio1-a]\ndisk_bytes_sec = { shares = 2000 }\ndisk_iops_sec = { shares = 2000 }\n",
    );
    let (st, _hv) = crate::support::node::one_cycle(cfg, false).await;
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);
    let plan = st.plan.as_ref().unwrap();

    // a: 2000 of 3000 shares → 200 MiB/s and 2000 IOPS, split over two disks.
    // b: 100 MiB/s, 1000 IOPS on its one disk. c has no disk: nothing, no error.
    let want = |bytes: u64, iops: u64| IoTune {
        total_bytes_sec: bytes,
        total_bytes_sec_max: bytes,
        total_iops_sec: iops,
        total_iops_sec_max: iops,
    };
    let live = sys::VIR_DOMAIN_AFFECT_LIVE;
    assert_eq!(tune(&checker, "dio1-a", "vda", live), want(100 * MIB, 1000));
    assert_eq!(tune(&checker, "dio1-a", "vdb", live), want(100 * MIB, 1000));
    assert_eq!(tune(&checker, "dio1-b", "vda", live), want(100 * MIB, 1000));
    // The read-only cdrom takes no part.
    assert!(!plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::SetBlockIoTune { disk, .. } if &**disk == "hdc")));
    assert!(!plan.actions.iter().any(|a| a.domain() == "dio1-c"));
    let pool = plan.pools.iter().find(|p| p.name == "dio1").unwrap();
    let c = pool.members.iter().find(|m| *m.name == *"dio1-c").unwrap();
    assert!(c.admitted);

    // Every planned limit is what the host has, seen from the second connection.
    for a in &plan.actions {
        if let Action::SetBlockIoTune {
            domain, disk, to, ..
        } = a
        {
            assert_eq!(&tune(&checker, domain, disk, live), to, "{domain}/{disk}");
        }
    }
    // persist = false: the persistent config keeps no limit.
    let config_flag = sys::VIR_DOMAIN_AFFECT_CONFIG;
    assert_eq!(
        tune(&checker, "dio1-a", "vda", config_flag),
        IoTune::default()
    );
    assert_eq!(
        tune(&checker, "dio1-b", "vda", config_flag),
        IoTune::default()
    );

    // A second cycle finds nothing to change.
    let cfg = config(
        "dio1",
        "disk_bytes_sec = { budget = \"300MiB\" }\ndisk_iops_sec = { budget = 3000 }\n\
         [pools.dio1.members.dio1-a]\ndisk_bytes_sec = { shares = 2000 }\ndisk_iops_sec = { shares = 2000 }\n",
    );
    let (st, _hv) = crate::support::node::one_cycle(cfg, false).await;
    let ours: Vec<_> = st
        .plan
        .as_ref()
        .unwrap()
        .actions
        .iter()
        .filter(|a| a.domain().starts_with("dio1-"))
        .collect();
    assert!(ours.is_empty(), "fixed point: {ours:?}");
}

#[tokio::test]
async fn shares_change_weights_change_and_persist_writes_the_config() {
    virtpool::adapters::libvirt::quiet_errors();
    let checker = Connect::open(Some("test:///default")).unwrap();
    start(&checker, "dio2-a", &["vda"], false);
    start(&checker, "dio2-b", &["vda"], false);
    let body = |shares: u64| {
        format!(
            "persist = true\ndisk_iops_sec = {{ budget = 4000 }}\n\
             [pools.dio2.members.dio2-a]\ndisk_iops_sec = {{ shares = {shares} }}\n"
        )
    };
    let (st, _hv) = crate::support::node::one_cycle(config("dio2", &body(3000)), false).await;
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);
    assert_eq!(weight(&checker, "dio2-a"), Some(blkio_weight(3000) as u32));
    assert_eq!(weight(&checker, "dio2-b"), Some(blkio_weight(1000) as u32));
    assert_eq!(
        tune(&checker, "dio2-a", "vda", sys::VIR_DOMAIN_AFFECT_LIVE).total_iops_sec,
        3000
    );

    // Raise a's shares: its weight and its rate follow.
    let (st, _hv) = crate::support::node::one_cycle(config("dio2", &body(7000)), false).await;
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);
    assert_eq!(weight(&checker, "dio2-a"), Some(blkio_weight(7000) as u32));
    assert_eq!(weight(&checker, "dio2-a"), Some(700));
    assert_eq!(
        tune(&checker, "dio2-a", "vda", sys::VIR_DOMAIN_AFFECT_LIVE).total_iops_sec,
        3500
    );
    assert_eq!(
        tune(&checker, "dio2-b", "vda", sys::VIR_DOMAIN_AFFECT_LIVE).total_iops_sec,
        500
    );
    // persist = true: the persistent config carries the same limit.
    assert_eq!(
        tune(&checker, "dio2-a", "vda", sys::VIR_DOMAIN_AFFECT_CONFIG).total_iops_sec,
        3500
    );
}
