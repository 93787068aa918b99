//! The promises of `docs/allocation.md`, kept on an awkward host
//! (`tests/fixtures/awkward-host.xml`) under random sequences of what an
//! operator and the host do: API changes (runtime pools created and
//! deleted, members added and removed, reservations, pauses), config
//! reloads that move budgets, the agent SIGKILLed and restarted, libvirtd
//! restarted, members moved between pools, domains started, stopped,
//! paused, resumed, defined, undefined and renamed from another
//! connection. After every step a second libvirt connection checks:
//!
//! - per pool, vCPUs and memory: Σ of what the admitted active members
//!   have is within the budget, or — a pool over its budget for a reason
//!   of its own (it started so, its budget was just lowered, a member
//!   joined) — not higher than before the step;
//! - every domain within its own limits (≥ 1 vCPU, ≤ its maximums);
//! - a domain that was never in a pool still has its starting values;
//! - a domain the agent says it gave back has its starting values;
//! - nothing of a paused agent, of a paused pool's members, or of a paused
//!   domain changed.
//!
//! `VIRTPOOL_PROMISES_CASES` (default 2) sequences of
//! `VIRTPOOL_PROMISES_STEPS` (default 18) steps; more for a long run.

use crate::support::blackbox::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use virtpool::core::model::DomainState;

const FIXTURE: &str = include_str!("../fixtures/awkward-host.xml");

const POOLS: &str = r#"
[pools.web]
match = "web-*"
vcpus = { budget = BUDGET_WEB_VCPUS }
memory = { budget = "14GiB", min = "1GiB" }

[pools.db]
domains = ["db-big", "db-old", "db-replica"]
vcpus = { budget = 8, min = 2 }
memory = { budget = "BUDGET_DB_MEMORYGiB" }

[pools.batch]
match = "batch-*"
vcpus = { budget = 24 }
memory = { budget = "16GiB", min = "512MiB" }
"#;

/// One fixture domain: its XML for `defineXML`, its starting state.
struct FixtureDom {
    name: String,
    xml: String,
    runstate: u32,
}

fn fixture() -> Vec<FixtureDom> {
    let mut out = Vec::new();
    let mut rest = FIXTURE;
    while let Some(i) = rest.find("<domain ") {
        let j = rest[i..].find("</domain>").unwrap() + i + "</domain>".len();
        let xml = &rest[i..j];
        let name = between(xml, "<name>", "</name>").to_string();
        let runstate: u32 = between(xml, "<test:runstate>", "</test:runstate>")
            .parse()
            .unwrap();
        let xml = xml.replace(&format!("<test:runstate>{runstate}</test:runstate>"), "");
        out.push(FixtureDom {
            name,
            xml,
            runstate,
        });
        rest = &rest[j..];
    }
    out
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let i = s.find(a).unwrap() + a.len();
    let j = s[i..].find(b).unwrap() + i;
    &s[i..j]
}

fn load_fixture(h: &Host2) {
    for d in fixture() {
        h.define(&d.xml);
        match d.runstate {
            1 => h.start(&d.name),
            3 => {
                h.start(&d.name);
                h.suspend(&d.name);
            }
            _ => {}
        }
    }
}

/// One step of a sequence.
#[derive(Debug, Clone)]
enum Op {
    /// A cycle and nothing else.
    Settle,
    /// A reload with other budgets (web vCPUs, db memory GiB).
    Reload(u64, u64),
    /// A runtime pool over the domains in no pool, or its deletion.
    PutRuntimePool(u64),
    DeleteRuntimePool,
    /// A member removed from its pool through the API, or added back.
    Remove(&'static str, &'static str),
    AddBack(&'static str, &'static str),
    /// A reservation raised, or released.
    Allocate(&'static str, &'static str, u64),
    Release(&'static str, &'static str),
    PauseAgent(bool),
    PausePool(&'static str, bool),
    KillAgent,
    RestartLibvirtd,
    /// From the other connection.
    Start(&'static str),
    Destroy(&'static str),
    Suspend(&'static str),
    Resume(&'static str),
    /// `"move": true` into another pool.
    Move(&'static str, &'static str),
    /// A new domain defined and started (it joins web by its name).
    DefineNew(&'static str),
    Undefine(&'static str),
    /// Renamed while shut off (from, to).
    Rename(&'static str, &'static str),
}

const MEMBERS: [(&str, &str); 8] = [
    ("web", "web-1"),
    ("web", "web-3"),
    ("web", "web with spaces"),
    ("web", "web-ünïcödé"),
    ("web", "web-noballoon"),
    ("db", "db-old"),
    ("batch", "batch-01"),
    ("batch", "batch-07"),
];
const LIFECYCLE: [&str; 6] = [
    "web-2",
    "web-off",
    "db-replica",
    "batch-03",
    "dev-1",
    "web-paused",
];

/// (domain, pool it is moved to).
const MOVES: [(&str, &str); 4] = [
    ("web-3", "batch"),
    ("web with spaces", "batch"),
    ("batch-07", "web"),
    ("db-old", "web"),
];
/// Renames of shut-off domains, and back.
const RENAMES: [(&str, &str); 4] = [
    ("web-off", "web-renamed"),
    ("web-renamed", "web-off"),
    ("batch-03", "batch-renamed"),
    ("batch-renamed", "batch-03"),
];

/// A small domain defined during a sequence (2 of 4 vCPUs, 1 of 2 GiB).
fn new_domain_xml(name: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>2048</memory>\
         <currentMemory unit='MiB'>1024</currentMemory>\
         <vcpu placement='static' current='2'>4</vcpu><os><type>hvm</type></os>\
         <devices><disk type='file' device='disk'><source file='/guest/{name}.img'/>\
         <target dev='vda' bus='virtio'/></disk><memballoon model='virtio'/></devices></domain>"
    )
}

fn op() -> impl Strategy<Value = Op> {
    let member = prop::sample::select(MEMBERS.to_vec());
    let dom = prop::sample::select(LIFECYCLE.to_vec());
    prop_oneof![
        2 => Just(Op::Settle),
        3 => (4u64..20, 8u64..30).prop_map(|(v, m)| Op::Reload(v, m)),
        2 => (1u64..4).prop_map(Op::PutRuntimePool),
        1 => Just(Op::DeleteRuntimePool),
        2 => member.clone().prop_map(|(p, d)| Op::Remove(p, d)),
        2 => member.clone().prop_map(|(p, d)| Op::AddBack(p, d)),
        2 => (member.clone(), 1u64..5).prop_map(|((p, d), v)| Op::Allocate(p, d, v)),
        1 => member.prop_map(|(p, d)| Op::Release(p, d)),
        1 => any::<bool>().prop_map(Op::PauseAgent),
        1 => (prop::sample::select(vec!["web", "db", "batch"]), any::<bool>())
            .prop_map(|(p, b)| Op::PausePool(p, b)),
        1 => Just(Op::KillAgent),
        1 => Just(Op::RestartLibvirtd),
        1 => dom.clone().prop_map(Op::Start),
        1 => dom.clone().prop_map(Op::Destroy),
        1 => dom.clone().prop_map(Op::Suspend),
        1 => dom.clone().prop_map(Op::Resume),
        1 => prop::sample::select(MOVES.to_vec()).prop_map(|(d, p)| Op::Move(d, p)),
        1 => prop::sample::select(vec!["web-new-1", "web-new-2"]).prop_map(Op::DefineNew),
        1 => prop::sample::select(vec!["web-new-1", "web-new-2", "web-off", "batch-03"])
            .prop_map(Op::Undefine),
        1 => prop::sample::select(RENAMES.to_vec()).prop_map(|(a, b)| Op::Rename(a, b)),
    ]
}

/// Percent-encodes a path segment (names with spaces and non-ASCII
/// letters).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A pool as the agent reports it: budget vCPUs, budget memory, paused,
/// admitted members.
type PoolSeen = (Option<u64>, Option<u64>, bool, Vec<String>);

/// What one check saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// name → (state, vCPUs, memory).
    live: BTreeMap<String, (DomainState, u64, u64)>,
    pools: BTreeMap<String, PoolSeen>,
    agent_paused: bool,
}

struct World {
    dir: tempfile::TempDir,
    lv: Libvirtd,
    h: Host2,
    agent: Agent,
    config: std::path::PathBuf,
    /// Starting values by name.
    start: BTreeMap<String, (u64, u64)>,
    /// Domains ever seen in a pool.
    managed: BTreeSet<String>,
    /// Domains whose lifecycle the test changed (their values are the
    /// host's, not the agent's).
    touched: BTreeSet<String>,
}

fn config_for(dir: &Path, uri: &str, web_vcpus: u64, db_mem: u64) -> String {
    let pools = POOLS
        .replace("BUDGET_WEB_VCPUS", &web_vcpus.to_string())
        .replace("BUDGET_DB_MEMORY", &db_mem.to_string());
    config_text(dir, uri, "1s", &pools)
        .replace("cooldown = \"0s\"", "cooldown = \"2s\"")
        .replace("max_shrink = \"100%\"", "max_shrink = \"30%\"")
}

impl World {
    fn new() -> Option<World> {
        let (dir, lv, h) = private_host("promises")?;
        load_fixture(&h);
        let start = h
            .all()
            .into_iter()
            .map(|d| (d.name.clone(), (d.vcpus, d.memory)))
            .collect();
        let text = config_for(dir.path(), &lv.uri(), 12, 20);
        let (config, _) = write_config(dir.path(), &text);
        let agent = Agent::start_serving(dir.path(), &config);
        Some(World {
            dir,
            lv,
            h,
            agent,
            config,
            start,
            managed: BTreeSet::new(),
            touched: BTreeSet::new(),
        })
    }

    fn sock(&self) -> std::path::PathBuf {
        self.agent.socket.clone()
    }

    /// A cycle run to its end (the answer comes after it).
    fn settle(&mut self) {
        self.agent.assert_alive();
        let r = post(&self.sock(), "/v1/reconcile?wait=true", "");
        assert!(r.status < 300, "reconcile: {} {}", r.status, r.body);
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) {
        let r = http(&self.sock(), method, path, body).unwrap();
        // Refusals (409, 404) are answers too: the state stays as it was.
        assert!(
            r.status < 500 || r.status == 503,
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
    }

    fn run(&mut self, op: &Op) {
        let lifecycle = |w: &mut World, name: &str, f: &dyn Fn(&virt::domain::Domain) -> bool| {
            if let Ok(d) = w.h.conn().lookup_domain_by_name(name) {
                if f(&d) {
                    w.touched.insert(name.to_string());
                }
            }
        };
        match op {
            Op::Settle => {}
            Op::Reload(v, m) => {
                let text = config_for(self.dir.path(), &self.lv.uri(), *v, *m);
                std::fs::write(&self.config, text).unwrap();
                self.call("POST", "/v1/reload", None);
            }
            Op::PutRuntimePool(v) => {
                let body = format!(
                    r#"{{"match": "dev-*", "vcpus": {{"budget": {v}}}, "memory": {{"budget": "3GiB"}}}}"#
                );
                self.call("PUT", "/v1/pools/rt", Some(&body));
            }
            Op::DeleteRuntimePool => self.call("DELETE", "/v1/pools/rt", None),
            Op::Remove(p, d) => {
                self.call("DELETE", &format!("/v1/pools/{p}/members/{}", seg(d)), None)
            }
            Op::AddBack(p, d) => {
                let body = format!(r#"{{"domain": "{d}"}}"#);
                self.call("POST", &format!("/v1/pools/{p}/members"), Some(&body));
            }
            Op::Allocate(p, d, v) => {
                let body = format!(r#"{{"domain": "{d}", "vcpus": {v}}}"#);
                self.call("POST", &format!("/v1/pools/{p}/allocate"), Some(&body));
            }
            Op::Release(p, d) => {
                let body = format!(r#"{{"domain": "{d}"}}"#);
                self.call("POST", &format!("/v1/pools/{p}/release"), Some(&body));
            }
            Op::PauseAgent(true) => self.call("POST", "/v1/pause", None),
            Op::PauseAgent(false) => self.call("POST", "/v1/resume", None),
            Op::PausePool(p, true) => self.call("POST", &format!("/v1/pools/{p}/pause"), None),
            Op::PausePool(p, false) => self.call("POST", &format!("/v1/pools/{p}/resume"), None),
            Op::KillAgent => {
                self.agent.kill9();
                self.agent = Agent::start_serving(self.dir.path(), &self.config);
            }
            Op::RestartLibvirtd => {
                self.lv.kill9();
                self.lv.restart();
                self.h.reopen();
                load_fixture(&self.h);
                // Every domain is back at its starting values.
                self.touched.clear();
                let lost = poll(Duration::from_secs(80), || {
                    let v = get(&self.sock(), "/v1/status").json();
                    (v["libvirt"]["connected"] == Value::Bool(true)).then_some(())
                });
                assert!(lost.is_some(), "no reconnect:\n{}", self.agent.log_text());
            }
            Op::Start(n) => lifecycle(self, n, &|d| d.create().is_ok()),
            Op::Destroy(n) => lifecycle(self, n, &|d| d.destroy().is_ok()),
            Op::Suspend(n) => lifecycle(self, n, &|d| d.suspend().is_ok()),
            Op::Resume(n) => lifecycle(self, n, &|d| d.resume().is_ok()),
            Op::Move(d, p) => {
                let body = format!(r#"{{"domain": "{d}", "move": true}}"#);
                self.call("POST", &format!("/v1/pools/{p}/members"), Some(&body));
            }
            Op::DefineNew(n) => {
                if self.h.conn().lookup_domain_by_name(n).is_err() {
                    self.h.define(&new_domain_xml(n));
                    self.h.start(n);
                    self.touched.insert(n.to_string());
                }
            }
            Op::Undefine(n) => lifecycle(self, n, &|d| d.undefine().is_ok()),
            Op::Rename(a, b) => {
                let renamed = self
                    .h
                    .conn()
                    .lookup_domain_by_name(a)
                    .is_ok_and(|d| !d.is_active().unwrap_or(true) && d.rename(b, 0).is_ok());
                if renamed {
                    self.touched.insert(a.to_string());
                    self.touched.insert(b.to_string());
                }
            }
        }
        self.settle();
        // A second cycle: what the first one freed is grown into now.
        self.settle();
    }

    fn look(&mut self) -> Seen {
        let mut s = Seen::default();
        for d in self.h.all() {
            s.live.insert(d.name.clone(), (d.state, d.vcpus, d.memory));
            assert!(
                d.state != DomainState::Running || d.vcpus >= 1,
                "{}: 0 vCPUs",
                d.name
            );
            assert!(
                d.vcpus <= d.vcpus_max,
                "{}: above its maximum vCPUs",
                d.name
            );
            assert!(
                d.memory <= d.memory_max,
                "{}: above its maximum memory",
                d.name
            );
        }
        let pools = get(&self.sock(), "/v1/pools").json();
        for p in pools["pools"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap().to_string();
            let admitted: Vec<String> = p["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["admitted"] == Value::Bool(true))
                .map(|m| m["name"].as_str().unwrap().to_string())
                .collect();
            for m in p["members"].as_array().unwrap() {
                self.managed.insert(m["name"].as_str().unwrap().to_string());
            }
            s.pools.insert(
                name,
                (
                    p["budget"]["vcpus"].as_u64(),
                    p["budget"]["memory"].as_u64(),
                    p["paused"] == Value::Bool(true),
                    admitted,
                ),
            );
        }
        s.agent_paused =
            get(&self.sock(), "/v1/status").json()["agent"]["paused"] == Value::Bool(true);
        s
    }

    /// The checks of the module doc, between two looks around `op`.
    fn check(&mut self, op: &Op, before: &Seen, now: &Seen) -> Result<(), String> {
        let libvirtd_restarted = matches!(op, Op::RestartLibvirtd);
        let lifecycle_this_step = matches!(
            op,
            Op::Start(_)
                | Op::Destroy(_)
                | Op::Suspend(_)
                | Op::Resume(_)
                | Op::DefineNew(_)
                | Op::Undefine(_)
                | Op::Rename(..)
        );
        // Budgets.
        for (pool, (bv, bm, _, admitted)) in &now.pools {
            if libvirtd_restarted {
                break;
            }
            let touched = admitted.iter().any(|m| {
                lifecycle_this_step
                    && before.live.get(m).map(|x| x.0) != now.live.get(m).map(|x| x.0)
            });
            if touched {
                continue;
            }
            let (was_bv, was_bm) = before.pools.get(pool).map_or((None, None), |p| (p.0, p.1));
            for (k, budget, was_budget) in [(1usize, bv, was_bv), (2, bm, was_bm)] {
                let Some(b) = budget else { continue };
                let sum = |s: &Seen| -> u64 {
                    admitted
                        .iter()
                        .filter_map(|m| s.live.get(m))
                        .filter(|x| x.0.is_active())
                        .map(|x| if k == 1 { x.1 } else { x.2 })
                        .sum()
                };
                let (prev, cur) = (sum(before), sum(now));
                let lowered = was_budget.is_some_and(|w| w > *b);
                if cur <= *b {
                    continue;
                }
                if prev <= *b && !lowered {
                    return Err(format!(
                        "{pool}: {} {cur} over the budget {b} (was {prev} within it)",
                        if k == 1 { "vcpus" } else { "memory" }
                    ));
                } else if cur > prev {
                    return Err(format!(
                        "{pool}: over its budget {b}, {} rose {prev} -> {cur}",
                        if k == 1 { "vcpus" } else { "memory" }
                    ));
                }
            }
        }
        // Never managed, never touched by the test: starting values.
        let domains = get(&self.sock(), "/v1/domains").json();
        for d in domains["domains"].as_array().unwrap() {
            let name = d["name"].as_str().unwrap();
            let Some(&(state, v, m)) = now.live.get(name) else {
                continue;
            };
            let Some(&start) = self.start.get(name) else {
                continue;
            };
            if self.touched.contains(name) || state != DomainState::Running {
                continue;
            }
            if !self.managed.contains(name) {
                if (v, m) != start {
                    return Err(format!(
                        "{name}: never managed, changed to {v}/{m} from {start:?}"
                    ));
                }
                continue;
            }
            // Managed once, in no pool now and running: given back by now
            // (the test driver takes every change at once), and said so —
            // unless the agent is paused (it changes nothing then).
            if d["pool"].is_null() && !now.agent_paused {
                if (v, m) != start {
                    return Err(format!(
                        "{name}: left management, has {v}/{m} instead of {start:?} (release {})",
                        d["release"]
                    ));
                }
                // Said so: given back, or never changed by the agent.
                if !d["release"].is_null()
                    && d["release"] != serde_json::json!({"done": "restored"})
                {
                    return Err(format!("{name}: left management, release {}", d["release"]));
                }
            }
        }
        // Paused: nothing changed.
        if libvirtd_restarted {
            return Ok(());
        }
        let unchanged = |name: &str| -> bool {
            match (before.live.get(name), now.live.get(name)) {
                (Some(a), Some(b)) => (a.1, a.2) == (b.1, b.2) || a.0 != b.0,
                _ => true,
            }
        };
        if before.agent_paused && now.agent_paused {
            for name in now.live.keys() {
                if !unchanged(name) {
                    return Err(format!("{name} changed while the agent was paused"));
                }
            }
        }
        for (pool, (_, _, paused, _)) in &now.pools {
            let was = before.pools.get(pool).is_some_and(|p| p.2);
            if !(*paused && was) {
                continue;
            }
            // Members before and after the step (one removed from the pool
            // by the operator has left it: what the agent changed on it is
            // given back).
            let was_members = &before.pools[pool].3;
            for m in now.pools[pool].3.iter().filter(|m| was_members.contains(m)) {
                if !unchanged(m) {
                    return Err(format!("{m} of paused pool {pool} changed"));
                }
            }
        }
        for (name, (state, ..)) in &now.live {
            let was_paused = before
                .live
                .get(name)
                .is_some_and(|x| x.0 == DomainState::Paused);
            if *state == DomainState::Paused && was_paused && !unchanged(name) {
                return Err(format!("paused domain {name} changed"));
            }
        }
        Ok(())
    }
}

#[test]
fn every_promise_holds_under_random_operations() {
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cases = env("VIRTPOOL_PROMISES_CASES", 2);
    let steps = env("VIRTPOOL_PROMISES_STEPS", 18) as usize;
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), steps), |ops| {
        let Some(mut w) = World::new() else {
            return Ok(());
        };
        w.settle();
        w.settle();
        let mut before = w.look();
        let mut done = Vec::new();
        for op in &ops {
            w.run(op);
            let now = w.look();
            done.push(op.clone());
            if let Err(e) = w.check(op, &before, &now) {
                return Err(TestCaseError::fail(format!(
                    "{e}\nafter {done:?}\nagent log:\n{}",
                    w.agent.log_text()
                )));
            }
            before = now;
        }
        eprintln!("promises: {} steps held", ops.len());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
