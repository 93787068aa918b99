//! The CPU-time keys of the config file: `cpu = { budget, min, max,
//! shares, policy }` per pool and member, `[cpu]`, allocatable CPU time,
//! and errors that name the key and the value.
#![allow(clippy::unwrap_used)]

use virtpool::core::config::{Config, MemoryPolicy};
use virtpool::core::model::Resource;
use virtpool::core::planner::testing::{self as t, GIB};
use virtpool::core::units::Amount;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, std::path::Path::new("/etc/virtpool/virtpool.toml"))
        .map_err(|e| e.to_string())
}

#[test]
fn cpu_keys_in_the_config() {
    let c = parse(
        r#"
[cpu]
min_change = 0.1
max_shrink = "10%"
cooldown = "1m"
target_idle = "30%"
[pools.web]
match = "web-*"
cpu = { budget = 6.5, min = "50%", max = "2", shares = 3000, policy = "demand" }
[pools.web.members.web-1]
cpu = { min = 1.25 }
[pools.batch]
cpu = { budget = "25%" }
"#,
    )
    .unwrap();
    let web = &c.pools["web"];
    let r = web.resources.cpu.unwrap();
    assert_eq!(r.budget, Amount::Absolute(6500));
    assert_eq!(
        (r.defaults.min, r.defaults.max, r.defaults.shares),
        (Some(500), Some(2000), Some(3000))
    );
    assert_eq!(web.cpu_policy, MemoryPolicy::Demand);
    assert_eq!(web.memory_policy, MemoryPolicy::Share);
    assert_eq!(
        web.member_limits("web-1", "u", Resource::Cpu).min,
        Some(1250)
    );
    assert_eq!(
        c.pools["batch"].resources.cpu.unwrap().budget,
        Amount::Fraction(0.25)
    );
    let t = &c.tuning.cpu;
    assert_eq!(
        (t.min_change, t.max_shrink, t.target_idle),
        (100, Amount::Fraction(0.1), 0.3)
    );
    assert_eq!(t.cooldown, std::time::Duration::from_secs(60));
    // Defaults.
    let d = parse("[agent]\n").unwrap().tuning.cpu;
    assert_eq!(
        (d.min_change, d.max_shrink, d.target_idle),
        (50, Amount::Fraction(0.25), 0.2)
    );
    assert_eq!(d.cooldown, std::time::Duration::from_secs(30));
}

#[test]
fn cpu_time_is_not_overcommitted() {
    // Allocatable CPU time is the host's cores less the reserved ones:
    // cpu_allocation_ratio (for vCPUs) does not apply.
    let c = parse(
        "[host]\ncpus = 16\nreserved_cpus = 1\ncpu_allocation_ratio = 4.0\n\
         [pools.a]\ncpu = { budget = 12 }\n[pools.b]\ncpu = { budget = \"50%\" }\n",
    )
    .unwrap();
    let alloc = c.host.allocatable(&t::host(16, 64 * GIB));
    assert_eq!((alloc.vcpus, alloc.cpu), (60, 15_000));
    let e = c.check_budgets(&alloc).unwrap_err().to_string();
    assert!(
        e.contains(
            "pool budgets for cpu add up to 19.5 cores (a 12 cores + b 7.5 cores) but the host has only 15 cores allocatable"
        ),
        "{e}"
    );
}

#[test]
fn cpu_config_errors_name_the_key_and_value() {
    for (text, want) in [
        (
            "[pools.a]\ncpu = { budget = \"650%\" }\n",
            "pool \"a\": cpu.budget (650%) is more than 100% (a percentage is a share of the host's allocatable CPU time; write 6.5 for 6.5 cores)",
        ),
        ("[pools.a]\ncpu = { budget = -1 }\n", "negative"),
        ("[pools.a]\ncpu = { budget = \"lots\" }\n", "is not an amount of CPU time"),
        (
            "[pools.a]\ncpu = { budget = 2, min = 3 }\n",
            "pool \"a\": cpu.min (3 cores) exceeds the pool's cpu.budget (2 cores)",
        ),
        (
            "[pools.a]\ncpu = { budget = 2, max = 0.001 }\n",
            "pool \"a\": cpu.max must be at least 0.01 (1 ms of every 100 ms)",
        ),
        (
            "[pools.a]\ncpu = { budget = 100000 }\n",
            "pool \"a\": cpu.budget (100000) is out of range: at most 65536",
        ),
        (
            "[pools.a]\ndisk_bytes_sec = { budget = 2, policy = \"demand\" }\n",
            "disk_bytes_sec.policy is only valid for memory and cpu",
        ),
        ("[cpu]\ntarget_idle = \"100%\"\n", "cpu.target_idle (100%) must be a percentage below 100%"),
        ("[cpu]\ntarget_idle = 0.2\n", "cpu.target_idle (0.2) must be a percentage below 100%"),
        ("[cpu]\nmax_shrink = \"0%\"\n", "cpu.max_shrink (0%) must be more than 0% and at most 100%"),
        ("[cpu]\ncooldown = \"2days\"\n", "cpu.cooldown (2days) is out of range"),
        ("[cpu]\nmin_chnage = 1\n", "min_chnage"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
        assert!(e.starts_with("/etc/virtpool/virtpool.toml: "), "{e}");
    }
}
