//! CPU time through the reconciler, on the in-memory fake (the libvirt
//! test driver has no CPU quota): limits reach the domains as scheduler
//! quotas and a converged cycle writes nothing; a quota libvirt refuses
//! fails alone; what a domain uses is measured from its CPU time between
//! observations and reaches the plan.
#![allow(clippy::unwrap_used)]

use crate::support::fake::{Fake, FakeCtl};
use crate::support::inproc::dom;
use std::path::Path;
use std::time::{Duration, Instant};
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::HvError;
use virtpool::agent::reconciler::{Handle, Reconciler};
use virtpool::agent::report::ActionErrorKind;
use virtpool::agent::state::RuntimeState;
use virtpool::core::config::Config;
use virtpool::core::model::{Action, CpuQuota, DomainObs, QuotaScope};

fn config(pool: &str) -> Config {
    let text = format!(
        "[agent]\nstate_dir = \"/nonexistent\"\ninterval = \"1h\"\n\
         [host]\ncpus = 16\nmemory = \"64GiB\"\n\
         [pools.c]\nmatch = \"c-*\"\n{pool}\n\
         [pools.c.members.c-2]\ncpu = {{ shares = 3000 }}\n"
    );
    Config::parse(&text, Path::new("cpu.toml")).unwrap()
}

/// A 2-vCPU guest without a CPU limit on a host with a global quota.
fn guest(name: &str) -> DomainObs {
    let mut d = dom(name, 2, 2, 4);
    d.cpu_quota = Some(CpuQuota::unlimited(QuotaScope::Global));
    d.cpu_time = Some(0);
    d
}

/// A reconciler over a fake hypervisor with a [`guest`] of each name and
/// the pool configured by `pool`; the fake's control comes back with it.
fn reconciler(names: [&str; 2], pool: &str) -> (FakeCtl, Reconciler, Handle) {
    let fake = Fake::new(names.map(guest).to_vec());
    let ctl = fake.ctl();
    let hv = HvWorker::spawn(Box::new(fake)).unwrap();
    let cfg = config(pool);
    let (m, h) = Reconciler::new(hv, Host::new().unwrap(), cfg, RuntimeState::new(), false);
    (ctl, m, h)
}

fn quota(fake: &FakeCtl, name: &str) -> Option<CpuQuota> {
    fake.domains()
        .iter()
        .find(|d| &*d.name == name)
        .unwrap()
        .cpu_quota
}

#[tokio::test]
async fn cpu_limits_reach_the_domains_and_a_converged_cycle_writes_nothing() {
    let (ctl, mut m, _h) = reconciler(["c-1", "c-2"], "cpu = { budget = 1 }");
    let st = m.cycle_once().await;
    assert_eq!(st.results.len(), 2, "{:?}", st.results);
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);
    let q = |quota| {
        Some(CpuQuota {
            scope: QuotaScope::Global,
            period: 100_000,
            quota,
        })
    };
    assert_eq!(quota(&ctl, "c-1"), q(25_000));
    assert_eq!(quota(&ctl, "c-2"), q(75_000));
    // The published domains show what was set.
    let c1 = st.domains.iter().find(|d| &*d.name == "c-1").unwrap();
    assert_eq!(c1.cpu_limit(), 250);
    let writes = ctl.writes();
    for _ in 0..3 {
        let st = m.cycle_once().await;
        assert!(st.results.is_empty(), "{:?}", st.results);
    }
    assert_eq!(ctl.writes(), writes, "a converged cycle wrote");
}

#[tokio::test]
async fn a_quota_libvirt_refuses_fails_alone() {
    let (ctl, mut m, _h) = reconciler(["c-1", "c-2"], "cpu = { budget = 1 }");
    ctl.fail_apply_when(|a| {
        matches!(a, Action::SetCpuQuota { domain, .. } if &**domain == "c-1")
            .then(|| HvError::InvalidArg("invalid argument: quota".into()))
    });
    let st = m.cycle_once().await;
    let r1 = st
        .results
        .iter()
        .find(|r| r.action.domain() == "c-1")
        .unwrap();
    assert!(!r1.ok);
    assert_eq!(r1.error.as_ref().unwrap().kind, ActionErrorKind::InvalidArg);
    let r2 = st
        .results
        .iter()
        .find(|r| r.action.domain() == "c-2")
        .unwrap();
    assert!(r2.ok, "{r2:?}");
    assert_eq!(
        quota(&ctl, "c-1"),
        Some(CpuQuota::unlimited(QuotaScope::Global))
    );
    assert_eq!(quota(&ctl, "c-2").unwrap().quota, 75_000);
}

#[tokio::test]
async fn cpu_use_is_measured_between_observations_and_drives_demand() {
    // `busy` burns all the CPU time its limit gives it, `idle` none: in a
    // demand pool of 2 cores, idle's limit comes down by 25% a cycle until
    // it is within the dead band (0.05 core) of its floor, and busy's goes
    // up into the room.
    let (ctl, mut m, _h) = reconciler(
        ["c-busy", "c-idle"],
        "cpu = { budget = 2, policy = \"demand\" }\n[cpu]\ncooldown = \"0s\"",
    );
    let st = m.cycle_once().await;
    assert!(
        st.domains.iter().all(|d| d.cpu_used.is_none()),
        "one reading is no rate"
    );
    let mut last = Instant::now();
    let mut used = None;
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        for d in ctl.domains().iter_mut() {
            if &*d.name == "c-busy" {
                let limit = d.cpu_limit() as f64 / 1000.0;
                d.cpu_time = Some(d.cpu_time.unwrap() + (limit * secs * 1e9) as u64);
            }
        }
        let st = m.cycle_once().await;
        let busy = st.domains.iter().find(|d| &*d.name == "c-busy").unwrap();
        used = busy.cpu_used;
        let plan = st.plan.as_ref().unwrap();
        let a = plan.pools[0]
            .members
            .iter()
            .find(|m| &*m.name == "c-busy")
            .unwrap()
            .alloc
            .cpu
            .unwrap();
        assert_eq!(a.used, busy.cpu_used, "the plan shows what was measured");
        let (idle, busy) = (
            quota(&ctl, "c-idle").unwrap(),
            quota(&ctl, "c-busy").unwrap(),
        );
        if idle.quota <= 6000 && (busy.quota == -1 || busy.quota >= 180_000) {
            break;
        }
    }
    assert!(used.is_some());
    let idle = quota(&ctl, "c-idle").unwrap();
    let busy = quota(&ctl, "c-busy").unwrap();
    assert!(idle.quota <= 6000, "idle near its floor: {idle:?}");
    assert!(
        busy.quota == -1 || busy.quota >= 180_000,
        "busy took the room: {busy:?}"
    );
}
