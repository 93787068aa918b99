//! Black-box scenario 3 — libvirtd SIGKILLed and restarted under a running
//! agent: the agent notices, stays up, reconnects, rediscovers the
//! (re-defined, new-UUID) domains and re-applies the plan; it never acts on
//! what it knew before the restart.
#![allow(clippy::unwrap_used)]

use crate::support::blackbox::*;
use std::time::{Duration, Instant};

const ROUNDS: u64 = 2;

#[test]
fn libvirtd_killed_and_restarted_agent_reconnects_and_reapplies() {
    let Some((dir, mut lv, mut h)) = private_host("lvrestart") else {
        return;
    };
    let fleet = fleet50(30);
    h.define_fleet(&fleet);
    let text = config_text(dir.path(), &lv.uri(), "1s", FLEET_POOLS);
    let (cfg_path, cfg) = write_config(dir.path(), &text);
    let mut agent = Agent::start(dir.path(), &cfg_path);
    wait_converged(&h, &mut agent, Duration::from_secs(30), fleet50_expected);
    check_safety(&h, &cfg);

    let mut report = Vec::new();
    let mut old_fleet = fleet;
    for round in 1..=ROUNDS {
        lv.kill9();
        let t_kill = Instant::now();
        assert!(
            agent.wait_log(
                "cannot observe libvirt",
                round as usize,
                Duration::from_secs(10)
            ),
            "round {round}: the agent did not report libvirt down:\n{}",
            agent.log_text()
        );
        let noticed = t_kill.elapsed();
        // Down for a while: the agent keeps running and retrying.
        std::thread::sleep(Duration::from_millis(2500));
        agent.assert_alive();

        lv.restart();
        let t_up = Instant::now();
        h.reopen();
        // The test driver's state is fresh: define the fleet again with new
        // UUIDs, plus an unmanaged domain that reuses the UUID web-01 had
        // before the restart (a stale handle would hit it).
        let fleet = fleet50(30 + round);
        h.define_fleet(&fleet);
        let stale_uuid = old_fleet
            .iter()
            .find(|d| d.name == "web-01")
            .unwrap()
            .uuid
            .clone();
        let mut intruder = DomSpec::new("dev-intruder", stale_uuid, 3, 4, 3000, 4096);
        intruder.state = Init::Running;
        h.define_fleet(&[intruder]);
        let intruder_before = h.get("dev-intruder");

        assert!(
            agent.wait_log(
                "libvirt connection restored",
                round as usize,
                Duration::from_secs(70)
            ),
            "round {round}: no reconnect:\n{}",
            agent.log_text()
        );
        let reconnect = t_up.elapsed();
        wait_converged(&h, &mut agent, Duration::from_secs(30), fleet50_expected);
        let reapplied = t_up.elapsed();
        check_safety(&h, &cfg);
        assert_eq!(
            h.get("dev-intruder"),
            intruder_before,
            "stale UUID acted on"
        );
        agent.assert_alive();
        report.push(format!(
            "round {round}: down noticed after {noticed:.1?}, reconnected {reconnect:.1?} after restart, plan re-applied {reapplied:.1?} after restart"
        ));
        old_fleet = fleet;
    }
    let log = agent.log_text();
    assert!(
        !log.contains("no such domain"),
        "acted on a vanished domain:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    agent.assert_alive();
    eprintln!("libvirtd restart: {report:#?}");
}
