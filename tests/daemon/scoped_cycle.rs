//! Scoped cycles: a reservation change on one domain re-observes and
//! enforces only that domain (and the pool neighbours its change takes
//! from), plans the whole host on the last observation for the others,
//! and falls back to a full cycle when a scoped one can't be trusted.
//! Every call is counted at the adapter boundary, around the real libvirt
//! adapter, on a private libvirtd hosting the test driver (so a second
//! connection sees what the agent did).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use virt::connect::Connect;
use virt::sys;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::Libvirt;
use virtpool::agent::reconciler::{Handle, Reconciler, Scope};
use virtpool::agent::report::Report;
use virtpool::agent::state::RuntimeState;
use virtpool::core::config::Config;
use virtpool::core::model::PerResource;

use crate::support::fake::{Fake, FakeCtl};
use crate::support::libvirtd::Libvirtd;
use crate::support::node::{domain_xml, test_uuid};

const WEB: usize = 20;
const DB: usize = 10;

fn web(i: usize) -> String {
    format!("web-{i:02}")
}

fn db(i: usize) -> String {
    format!("db-{i:02}")
}

/// Two pools giving each member 2 vCPUs out of its 4.
fn config(uri: &str, dir: &Path) -> Config {
    let dir = dir.display();
    let text = format!(
        "[agent]\nlibvirt_uri = \"{uri}\"\nstate_dir = \"{dir}/state\"\ninterval = \"1h\"\n\
         [api]\nsocket = \"{dir}/api.sock\"\ngroup = \"root\"\n\
         [host]\ncpus = 128\nmemory = \"256GiB\"\n\
         [vcpus]\ncooldown = \"0s\"\n\
         [pools.web]\nmatch = \"web-*\"\nvcpus = {{ budget = {}, min = 1, max = 4 }}\n\
         [pools.db]\nmatch = \"db-*\"\nvcpus = {{ budget = {}, min = 1, max = 4 }}\n",
        2 * WEB,
        2 * DB
    );
    Config::parse(&text, Path::new("scoped.toml")).unwrap()
}

struct Setup {
    daemon: Libvirtd,
    c2: Connect,
    calls: FakeCtl,
    monitor: Reconciler,
    handle: Handle,
    _dir: tempfile::TempDir,
}

/// A private libvirtd with 20 web and 10 db domains running, and a monitor
/// on it (no cycle run yet).
fn setup() -> Option<Setup> {
    virtpool::adapters::libvirt::quiet_errors();
    let daemon = Libvirtd::start_temp()?;
    let c2 = Connect::open(Some(&daemon.uri())).unwrap();
    for i in 0..WEB {
        c2.define_domain_xml(&domain_xml(&web(i), i, ""))
            .unwrap()
            .create()
            .unwrap();
    }
    for i in 0..DB {
        c2.define_domain_xml(&domain_xml(&db(i), WEB + i, ""))
            .unwrap()
            .create()
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::wrap(Libvirt::new(&daemon.uri()));
    let calls = fake.ctl();
    let hv = HvWorker::spawn(Box::new(fake)).unwrap();
    let (monitor, handle) = Reconciler::new(
        hv,
        Host::new().unwrap(),
        config(&daemon.uri(), dir.path()),
        RuntimeState::new(),
        false,
    );
    Some(Setup {
        daemon,
        c2,
        calls,
        monitor,
        handle,
        _dir: dir,
    })
}

impl Setup {
    /// Full cycles until nothing is left to do.
    async fn converge(&mut self) {
        for _ in 0..10 {
            let st = self.monitor.cycle_once().await;
            assert!(st.libvirt.connected);
            if st.results.is_empty() {
                return;
            }
        }
        panic!("no fixed point within 10 cycles");
    }

    /// Live vCPUs of a domain, read on the second connection.
    fn vcpus(&self, name: &str) -> u32 {
        self.c2
            .lookup_domain_by_name(name)
            .unwrap()
            .vcpus_flags(sys::VIR_DOMAIN_AFFECT_LIVE)
            .unwrap()
    }

    fn reserve(&self, pool: &str, name: &str, vcpus: u64) {
        let mut rt = self.handle.runtime().lock().unwrap();
        rt.reservations.entry(pool.into()).or_default().insert(
            name.into(),
            PerResource {
                vcpus: Some(vcpus),
                ..PerResource::default()
            },
        );
    }

    fn full(&self) -> usize {
        self.calls.full_observes()
    }

    fn scoped(&self) -> Vec<Vec<String>> {
        self.calls.scoped()
    }
}

fn is_full(st: &Report) -> bool {
    st.last_cycle.as_ref().unwrap().scope.is_none()
}

#[tokio::test]
async fn a_scoped_cycle_reads_and_enforces_only_its_domains() {
    let Some(mut s) = setup() else { return };
    s.converge().await;
    assert_eq!(s.vcpus(&web(0)), 2);
    assert_eq!(s.vcpus(&db(1)), 2);
    let full = s.full();
    let cycle = s.handle.report().cycle;

    // web-00 reserves 3 (a web neighbour gives one up); db-01 reserves 3
    // too, but only web-00 is in scope.
    s.reserve("web", &web(0), 3);
    s.reserve("db", &db(1), 3);
    let earlier_writes = s.calls.applied().len();
    let st = s.monitor.cycle(Scope::Domains(vec![test_uuid(0)])).await;

    assert_eq!(s.full(), full, "a scoped cycle observed every domain");
    let scoped = s.scoped();
    assert_eq!(
        scoped[0],
        vec![test_uuid(0)],
        "first read: the scoped domain"
    );
    let observed: Vec<String> = scoped.concat();
    assert!(scoped.len() <= 2, "widened more than once: {scoped:?}");
    assert!(
        observed.len() <= 1 + 2 * 2,
        "more than web-00 and one neighbour read: {scoped:?}"
    );
    assert_eq!(st.cycle, cycle + 1, "a scoped cycle counts as a cycle");
    let scope = st.last_cycle.as_ref().unwrap().scope.clone().unwrap();
    assert!(scope.contains(&test_uuid(0)), "{scope:?}");
    assert!(scope.len() <= 3, "{scope:?}");

    // Applied: visible from the second connection, within the web budget.
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);
    assert_eq!(s.vcpus(&web(0)), 3);
    let web_total: u32 = (0..WEB).map(|i| s.vcpus(&web(i))).sum();
    assert!(
        web_total <= 2 * WEB as u32,
        "web pool over budget: {web_total}"
    );
    // Only freshly read domains were written to, and only they are reported.
    let writes: Vec<String> = s.calls.applied()[earlier_writes..]
        .iter()
        .map(|(a, _)| a.uuid().to_string())
        .collect();
    assert!(!writes.is_empty());
    assert!(
        writes.iter().all(|u| scope.contains(u)),
        "{writes:?} vs {scope:?}"
    );
    assert!(st
        .results
        .iter()
        .all(|r| scope.contains(&r.action.uuid().to_string())));

    // db-01's change is planned but waits for the next full cycle.
    let plan = st.plan.as_ref().unwrap();
    assert!(
        plan.actions.iter().any(|a| a.domain() == db(1)),
        "{:?}",
        plan.actions
    );
    assert_eq!(
        s.vcpus(&db(1)),
        2,
        "db-01 changed by a cycle not scoped to it"
    );
    // The published observation has every domain.
    // (and the test driver's own `test` domain).
    assert_eq!(st.domains.len(), WEB + DB + 1);

    let st = s.monitor.cycle_once().await;
    assert!(is_full(&st));
    assert_eq!(s.full(), full + 1);
    assert!(st.results.iter().all(|r| r.ok), "{:?}", st.results);
    assert_eq!(
        s.vcpus(&db(1)),
        3,
        "the full cycle applies the waiting change"
    );
    assert_eq!(s.vcpus(&web(0)), 3);
}

#[tokio::test]
async fn a_scoped_cycle_falls_back_to_a_full_one_when_it_cannot_be_trusted() {
    let Some(mut s) = setup() else { return };

    // No previous cycle.
    let st = s.monitor.cycle(Scope::Domains(vec![test_uuid(0)])).await;
    assert!(is_full(&st));
    assert_eq!((s.full(), s.scoped().len()), (1, 0));
    s.converge().await;

    // A UUID not in the last observation.
    let n = s.full();
    let st = s.monitor.cycle(Scope::Domains(vec![test_uuid(999)])).await;
    assert!(is_full(&st));
    assert_eq!(s.full(), n + 1);

    // More than a tenth of the domains (3 of 31).
    let n = s.full();
    let four: Vec<String> = (0..4).map(test_uuid).collect();
    let st = s.monitor.cycle(Scope::Domains(four)).await;
    assert!(is_full(&st));
    assert_eq!(s.full(), n + 1);

    // Within it: scoped, no full observation.
    let n = s.full();
    let st = s
        .monitor
        .cycle(Scope::Domains(vec![test_uuid(2), test_uuid(3)]))
        .await;
    assert_eq!(
        st.last_cycle.as_ref().unwrap().scope,
        Some(vec![test_uuid(2), test_uuid(3)])
    );
    assert_eq!(s.full(), n);

    // The pools changed since the last full cycle (db-09 taken out of db
    // at run time): full.
    s.handle
        .runtime()
        .lock()
        .unwrap()
        .removed
        .entry("db".into())
        .or_default()
        .insert(db(9));
    let n = s.full();
    let st = s.monitor.cycle(Scope::Domains(vec![test_uuid(0)])).await;
    assert!(is_full(&st), "{:?}", st.config_error);
    assert_eq!(s.full(), n + 1);

    // Paused since the last cycle: full.
    s.handle.runtime().lock().unwrap().paused = true;
    let n = s.full();
    let st = s.monitor.cycle(Scope::Domains(vec![test_uuid(0)])).await;
    assert!(is_full(&st));
    assert_eq!(s.full(), n + 1);
    s.handle.runtime().lock().unwrap().paused = false;
    s.monitor.cycle_once().await;

    // A scoped domain gone from libvirt: full, and it is gone from the status.
    let d = s.c2.lookup_domain_by_name(&web(5)).unwrap();
    d.destroy().unwrap();
    d.undefine().unwrap();
    let n = s.full();
    let asked = s.scoped().len();
    let st = s.monitor.cycle(Scope::Domains(vec![test_uuid(5)])).await;
    assert!(is_full(&st));
    assert_eq!(s.full(), n + 1);
    assert_eq!(s.scoped().len(), asked + 1, "the scoped read came first");
    assert!(st.domains.iter().all(|d| *d.uuid != *test_uuid(5)));

    // libvirt down at the last cycle: full (which reports it down again).
    s.daemon.stop();
    let st = s.monitor.cycle_once().await;
    assert!(!st.libvirt.connected);
    let connects = s.calls.connects();
    let st = s.monitor.cycle(Scope::Domains(vec![test_uuid(0)])).await;
    assert!(!st.libvirt.connected);
    assert!(is_full(&st));
    // One observation job only (the full one): no scoped attempt first.
    assert_eq!(s.calls.connects(), connects + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_runs_a_cycle_scoped_to_its_domain() {
    let Some(mut s) = setup() else { return };
    s.converge().await;
    let cfg = s.handle.config();
    let sock = virtpool::api::bind(&cfg.agent.socket, &cfg.agent.api_group)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state = virtpool::api::AppState::new(s.handle.clone(), cfg.agent.api_group.clone());
    let api = tokio::spawn(virtpool::api::serve_with(
        sock,
        state,
        shutdown.clone(),
        virtpool::api::ServeOptions::default(),
    ));
    let monitor = tokio::spawn(s.monitor.run(shutdown.clone()));
    // The interval's first tick runs a full cycle: let it pass.
    let mut status = s.handle.reports();
    let before = status.borrow().cycle;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        status.wait_for(|st| st.cycle > before),
    )
    .await
    .unwrap()
    .unwrap();
    let full = s.calls.full_observes();

    let (code, v) = crate::support::inproc::call(
        &cfg.agent.socket,
        "POST",
        "/v1/pools/web/allocate?wait=true",
        Some(&format!(r#"{{"domain":"{}","vcpus":3}}"#, web(0))),
        true,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    // Visible from the second connection when the answer comes.
    assert_eq!(
        s.c2.lookup_domain_by_name(&web(0))
            .unwrap()
            .vcpus_flags(sys::VIR_DOMAIN_AFFECT_LIVE)
            .unwrap(),
        3
    );
    let cycle = v["cycle"]["cycle"].as_u64().unwrap();
    let st = s.handle.report();
    assert_eq!(st.cycle, cycle, "the answer is the cycle that applied it");
    let scope = st.last_cycle.as_ref().unwrap().scope.clone().unwrap();
    assert_eq!(scope[0], test_uuid(0), "{scope:?}");
    assert_eq!(s.calls.full_observes(), full, "a full observation ran");
    assert_eq!(s.calls.scoped()[0], vec![test_uuid(0)]);

    shutdown.cancel();
    api.await.unwrap();
    monitor.await.unwrap();
}
