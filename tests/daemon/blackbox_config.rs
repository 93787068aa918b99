//! Black-box scenario 5 — bad configuration: at start the agent refuses with
//! a message naming the file and the key, and touches nothing; on SIGHUP
//! the bad file is refused and the running config stays in force (libvirt
//! state untouched), while a good file is swapped in.
#![allow(clippy::unwrap_used)]

use crate::support::blackbox::*;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use virtpool::core::config::Config;

/// 12 vCPUs and 18 GiB for three `cf-*` (max 8 / 8 GiB, min 5 GiB):
/// 4 vCPUs and 6 GiB each.
fn pools() -> String {
    prefix_pool("cf", 12, 18)
}

fn fleet() -> Vec<DomSpec> {
    (1..=3)
        .map(|i| DomSpec::new(&format!("cf-{i}"), uuid(5, i), 2, 8, 5632, 8192))
        .collect()
}

fn at(v: u64, m: u64) -> impl Fn(&str) -> Option<(u64, u64)> {
    move |n| n.starts_with("cf-").then_some((v, m))
}

/// The fleet defined and an agent on the good config started and
/// converged: (config text, its path, the config, the agent).
fn start_converged(dir: &Path, lv: &Libvirtd, h: &Host2) -> (String, PathBuf, Config, Agent) {
    h.define_fleet(&fleet());
    let good = config_text(dir, &lv.uri(), "1s", &pools());
    let (path, cfg) = write_config(dir, &good);
    let mut agent = Agent::start(dir, &path);
    wait_converged(h, &mut agent, Duration::from_secs(20), at(4, 6 * GIB));
    (good, path, cfg, agent)
}

/// (file text, what stderr / the log must name).
fn bad_configs(dir: &Path, uri: &str) -> Vec<(&'static str, String, Vec<&'static str>)> {
    let good = config_text(dir, uri, "1s", &pools());
    vec![
        (
            "unknown key",
            good.replace("[pools.cf]\n", "[pools.cf]\nbudgett = 3\n"),
            vec!["virtpool.toml", "budgett"],
        ),
        (
            "min above max",
            good.replace("min = \"5GiB\"", "min = \"12GiB\", max = \"8GiB\""),
            vec!["virtpool.toml", "pool \"cf\"", "memory.min"],
        ),
        (
            "not TOML",
            format!("{good}\n[pools.cf\n"),
            vec!["virtpool.toml"],
        ),
        (
            "bad unit",
            good.replace("\"18GiB\"", "\"18 parsecs\""),
            vec!["virtpool.toml", "parsecs"],
        ),
        (
            "budgets over the host",
            good.replace("budget = 12", "budget = 1000"),
            vec!["virtpool.toml", "vcpus", "1000"],
        ),
    ]
}

#[test]
fn bad_config_at_start_is_refused_naming_file_and_key_and_touches_nothing() {
    let Some((dir, lv, h)) = private_host("badstart") else {
        return;
    };
    h.define_fleet(&fleet());
    let before = h.all();
    let path = dir.path().join("virtpool.toml");
    for (what, text, needles) in bad_configs(dir.path(), &lv.uri()) {
        std::fs::write(&path, &text).unwrap();
        let mut agent = Agent::start(dir.path(), &path);
        let exited = poll(Duration::from_secs(10), || (!agent.alive()).then_some(()));
        assert!(exited.is_some(), "{what}: virtpoold kept running");
        let log = agent.log_text();
        for n in needles {
            assert!(log.contains(n), "{what}: {n:?} not in:\n{log}");
        }
        let (code, _, err) = run_virtpoold(&["--check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(78), "{what}: --check-config: {err}");
        assert!(
            !dir.path().join("virtpool.sock").exists(),
            "{what}: socket left"
        );
    }
    assert_eq!(h.all(), before, "a refused start touched libvirt");
}

#[test]
fn bad_config_on_sighup_is_refused_and_the_running_config_stays() {
    let Some((dir, lv, h)) = private_host("badhup") else {
        return;
    };
    let (good, path, cfg, mut agent) = start_converged(dir.path(), &lv, &h);
    check_safety(&h, &cfg);

    let mut refused = 0;
    for (what, text, _) in bad_configs(dir.path(), &lv.uri()) {
        if what == "budgets over the host" {
            continue; // its own test below
        }
        // Disturb a domain so that the running config must act again.
        h.set_live("cf-1", 1, 7 * GIB);
        std::fs::write(&path, &text).unwrap();
        agent.signal(Signal::SIGHUP);
        refused += 1;
        assert!(
            agent.wait_log("reload refused", refused, Duration::from_secs(5)),
            "{what}: no refusal logged:\n{}",
            agent.log_text()
        );
        // Still enforcing the old config: cf-1 is brought back.
        wait_converged(&h, &mut agent, Duration::from_secs(5), at(4, 6 * GIB));
        check_safety(&h, &cfg);
    }
    // A good new config is swapped in: 9 vCPUs / 16.5 GiB → 3 vCPUs, 5.5 GiB.
    let newer = good
        .replace("budget = 12", "budget = 9")
        .replace("\"18GiB\"", "\"16896MiB\"");
    let (_, new_cfg) = write_config(dir.path(), &newer);
    agent.signal(Signal::SIGHUP);
    assert!(agent.wait_log("config reloaded", 1, Duration::from_secs(5)));
    wait_converged(&h, &mut agent, Duration::from_secs(5), at(3, 5632 * MIB));
    check_safety(&h, &new_cfg);
    agent.assert_alive();
    eprintln!("sighup: {refused} bad configs refused, then a good one applied");
}

/// SIGHUP with a config that parses but whose budgets exceed the host's
/// allocatable capacity (rejected at start with the numbers) must be
/// refused too; the agent must not start handing out 1000 vCPUs.
#[test]
fn over_budget_config_on_sighup_is_refused() {
    let Some((dir, lv, h)) = private_host("hupbudget") else {
        return;
    };
    let (good, path, cfg, mut agent) = start_converged(dir.path(), &lv, &h);
    let over = good.replace("budget = 12", "budget = 1000");
    std::fs::write(&path, over).unwrap();
    agent.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(2500));
    let log = agent.log_text();
    check_safety(&h, &cfg);
    wait_converged(&h, &mut agent, Duration::from_millis(100), at(4, 6 * GIB));
    assert!(log.contains("reload refused"), "not refused:\n{log}");
    assert!(!log.contains("config reloaded"), "{log}");
}
