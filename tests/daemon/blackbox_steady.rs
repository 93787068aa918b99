//! Black-box scenario 1 — steady state: 50 domains in 4 pools on a real
//! libvirtd; after the agent's first cycle every managed domain has its
//! planned vCPUs and memory as a second connection sees them, unmanaged
//! and shut-off domains are untouched, and the result is a fixed point.
#![allow(clippy::unwrap_used)]

use crate::support::blackbox::*;
use std::time::Duration;

#[test]
fn fifty_domains_in_four_pools_reach_the_plan_in_one_cycle() {
    let Some((dir, lv, h)) = private_host("steady") else {
        return;
    };
    let fleet = fleet50(1);
    h.define_fleet(&fleet);
    let before = h.all();
    assert_eq!(
        before.len(),
        51,
        "50 fixtures + the test driver's own `test`"
    );

    // The changes a correct agent must make, counted from the fixtures.
    let mut want_changes = 0;
    for d in before.iter().filter(|d| d.state.is_active()) {
        if let Some((v, m)) = fleet50_expected(&d.name) {
            want_changes += usize::from(d.vcpus != v) + usize::from(d.memory != m);
        }
    }
    assert!(
        want_changes > 40,
        "fixtures start off target: {want_changes}"
    );

    let text = config_text(dir.path(), &lv.uri(), "1s", FLEET_POOLS);
    let (cfg_path, cfg) = write_config(dir.path(), &text);
    let mut agent = Agent::start(dir.path(), &cfg_path);
    let took = wait_converged(&h, &mut agent, Duration::from_secs(30), fleet50_expected);

    // Σ per pool ≤ budget, floors held — from the second connection.
    let managed = check_safety(&h, &cfg);
    assert_eq!(managed, 40, "15 web + 5 db + 10 batch + 10 active ci");

    // Unmanaged (dev-*, `test`) and shut-off (ci-11, ci-12) domains untouched.
    let after = h.all();
    for b in &before {
        if fleet50_expected(&b.name).is_none() || !b.state.is_active() {
            let a = after.iter().find(|a| a.name == b.name).unwrap();
            assert_eq!(a, b, "{} was touched", b.name);
        }
    }
    // The paused member stays paused and is not changed.
    let ci10 = h.get("ci-10");
    assert_eq!(ci10.state, virtpool::core::model::DomainState::Paused);

    // One cycle: exactly one successful vCPU/memory action per needed
    // change, none failed.
    let applied = || applied_vcpu_memory(&agent.log_text());
    let counted = poll(Duration::from_secs(5), || {
        (applied() >= want_changes).then_some(())
    });
    assert!(counted.is_some(), "log:\n{}", agent.log_text());
    assert!(
        failed_actions(&agent.log_text()).is_empty(),
        "{}",
        agent.log_text()
    );
    // Fixed point: three more intervals change nothing and issue nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(applied(), want_changes, "{}", agent.log_text());
    assert_eq!(h.all(), after, "no flapping after convergence");
    check_safety(&h, &cfg);
    agent.assert_alive();
    eprintln!(
        "steady: 50 domains, {want_changes} changes applied, converged {took:?} after start (interval 1s)"
    );
    // Block I/O: the web pool's disk budgets, split by shares, one disk each.
    let log = agent.log_text();
    let io_applied = log
        .lines()
        .filter(|l| l.contains(" applied ") && l.contains("block_iotune"))
        .count();
    assert_eq!(io_applied, 15, "one SetBlockIoTune per web disk:\n{log}");
    let burst = |rate: u64| ((rate as f64 * cfg.tuning.disk_burst_factor).ceil() as u64).max(rate);
    for d in h.all().iter().filter(|d| d.name.starts_with("web-")) {
        let t = h.iotune(&d.name, "vda");
        assert_eq!(t.total_bytes_sec, 20 * MIB, "{}: {t:?}", d.name);
        assert_eq!(t.total_iops_sec, 200, "{}: {t:?}", d.name);
        assert_eq!(t.total_bytes_sec_max, burst(20 * MIB), "{}: {t:?}", d.name);
        assert_eq!(t.total_iops_sec_max, burst(200), "{}: {t:?}", d.name);
    }
    // Other pools manage no disk: their limits are untouched.
    assert_eq!(h.iotune("db-1", "vda"), Default::default());
    eprintln!("steady: block I/O limits of 15 web disks equal the plan");
}
