//! Parsing and validation of whole config files, checked against the messages operators read.

use super::*;
use crate::core::model::Resource;
use crate::core::planner::testing::host;
use crate::core::units::Amount;
use std::path::Path;
use std::time::Duration;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse(s, Path::new("/etc/virtpool/virtpool.toml"))
}

/// The message of a file that must be refused, checked to contain each
/// of `wants`.
fn refused(text: &str, wants: &[&str]) -> String {
    let e = parse(text).unwrap_err().to_string();
    for want in wants {
        assert!(e.contains(want), "{text:?}: {e}");
    }
    e
}

#[test]
fn defaults() {
    let c = parse("[agent]\n").unwrap();
    assert_eq!(c.agent.interval, Duration::from_secs(10));
    assert_eq!(c.agent.resync_interval, Duration::from_secs(300));
    let c = parse("[agent]\nresync_interval = \"0s\"\n").unwrap();
    assert_eq!(c.agent.resync_interval, Duration::ZERO);
    assert_eq!(c.agent.mode, Mode::Enforce);
    assert_eq!(
        (c.agent.audit_max_bytes, c.agent.audit_keep),
        (10 << 20, 3),
        "audit rotation defaults"
    );
    assert_eq!(c.agent.api_group, "libvirt");
    assert_eq!(c.tuning, Tuning::default());
    let a = c.host.allocatable(&host(16, 65 << 30));
    assert_eq!(a.vcpus, 60);
    assert_eq!(a.memory, 64 << 30);
}

#[test]
fn pool_with_units_and_members() {
    let c = parse(
        r#"
[pools.web]
match = "web-*"
domains = ["legacy"]
vcpus = { budget = 8, min = 1, max = 4 }
memory = { budget = "16GiB", min = "1GiB", policy = "demand" }
[pools.web.members.legacy]
memory = { min = "4GiB", shares = 3000 }
"#,
    )
    .unwrap();
    let p = &c.pools["web"];
    assert_eq!(p.globs, vec!["web-*"]);
    assert_eq!(p.memory_policy, MemoryPolicy::Demand);
    assert_eq!(
        p.resources.memory.unwrap().budget,
        Amount::Absolute(16 << 30)
    );
    let l = p.member_limits("legacy", "x", Resource::Memory);
    assert_eq!(l.min, Some(4 << 30));
    assert_eq!(l.shares, Some(3000));
    assert_eq!(
        p.member_limits("other", "x", Resource::Memory).min,
        Some(1 << 30)
    );
    assert!(p.resources.disk_bytes_sec.is_none());
}

#[test]
fn min_above_max_names_file_and_key() {
    let e = refused(
        "[pools.web]\nmemory = { budget = \"32GiB\", min = \"12GiB\", max = \"8GiB\" }\n",
        &[r#"pool "web": memory.min (12.0 GiB) exceeds memory.max (8.0 GiB)"#],
    );
    assert!(e.starts_with("/etc/virtpool/virtpool.toml: "), "{e}");
}

#[test]
fn unknown_key_rejected() {
    refused(
        "[agent]\nintervall = \"10s\"\n",
        &["intervall", "virtpool.toml"],
    );
    refused("[pools.a.vcpus]\nbudget = 2\nmaxx = 3\n", &["maxx"]);
}

#[test]
fn bad_units_rejected() {
    refused("[agent]\ninterval = \"soon\"\n", &["interval", "soon"]);
    refused(
        "[agent]\nresync_interval = \"often\"\n",
        &["resync_interval"],
    );
    let c = parse("[agent]\naudit_max_size = \"1MiB\"\naudit_keep = 0\n").unwrap();
    assert_eq!((c.agent.audit_max_bytes, c.agent.audit_keep), (1 << 20, 0));
    refused(
        "[agent]\naudit_max_size = \"4KiB\"\naudit_keep = 1000\n",
        &[
            "agent.audit_max_size (4.0 KiB) is below",
            "agent.audit_keep (1000)",
        ],
    );
    refused(
        "[pools.a]\nmemory = { budget = \"-4GiB\" }\n",
        &["negative"],
    );
    refused("[pools.a]\nvcpus = { budget = -4 }\n", &["negative"]);
}

#[test]
fn member_budget_and_missing_budget_rejected() {
    refused(
        "[pools.a]\nvcpus = { min = 1 }\n",
        &[r#"pool "a": vcpus.budget is missing"#],
    );
    refused(
        "[pools.a]\nvcpus = { budget = 4 }\n[pools.a.members.x]\nvcpus = { budget = 2 }\n",
        &["budgets are per pool"],
    );
}

#[test]
fn domain_in_two_pools_rejected() {
    refused(
        "[pools.a]\ndomains = [\"x\"]\n[pools.b]\ndomains = [\"x\"]\n",
        &[r#"domain "x" is listed in pool "a" and pool "b""#],
    );
}

#[test]
fn budgets_over_allocatable_name_numbers() {
    let c = parse(
            "[host]\ncpus = 5\n[pools.a]\nvcpus = { budget = 10 }\n[pools.b]\nvcpus = { budget = \"50%\" }\n",
        )
        .unwrap();
    let alloc = c.host.allocatable(&host(2, 8 << 30));
    assert_eq!(alloc.vcpus, 16);
    let e = c.check_budgets(&alloc).unwrap_err().to_string();
    assert!(
        e.contains("vcpus add up to 18 (a 10 + b 8) but the host has only 16"),
        "{e}"
    );
}

#[test]
fn bad_glob_and_log_filter_rejected() {
    refused(
        "[pools.web]\nmatch = [\"web-*\", \"web-[0-9\"]\n",
        &[
            r#"pool "web": match pattern "web-[0-9" is invalid: '[' without a closing ']' (at character 5)"#,
        ],
    );
    refused(
        "[agent]\nlog_level = \"virtpool=loud\"\n",
        &[r#"agent.log_level ("virtpool=loud") is not a valid log filter"#],
    );
    assert!(parse("[agent]\nlog_level = \"warn,virtpool=debug\"\n").is_ok());
}

#[test]
fn durations_and_sizes_out_of_range_name_key_value_and_range() {
    refused(
        "[agent]\nresync_interval = \"18446744073709551615s\"\n",
        &["agent.resync_interval (", "is out of range: 0s to 1day"],
    );
    for (text, key) in [
        ("[agent]\ninterval = \"2days\"\n", "agent.interval (2days)"),
        ("[agent]\ninterval = \"10ms\"\n", "agent.interval (10ms)"),
        (
            "[memory]\nstats_period = 4294967296\n",
            "memory.stats_period",
        ),
        ("[vcpus]\ncooldown = \"400days\"\n", "vcpus.cooldown"),
        (
            "[vcpus]\nunplug_backoff = \"2days\"\n",
            "vcpus.unplug_backoff",
        ),
        (
            "[agent]\naudit_max_size = \"2GiB\"\n",
            "agent.audit_max_size (2.0 GiB)",
        ),
        (
            "[host]\ncpus = 100000\n",
            "host.cpus (100000) is out of range: at most 65536",
        ),
        ("[host]\nmemory = \"2EiB\"\n", "host.memory"),
        (
            "[host]\nreserved_memory = \"4EiB\"\n",
            "host.reserved_memory",
        ),
        (
            "[host]\ndisk_iops_sec = 18446744073709551615\n",
            "host.disk_iops_sec",
        ),
        ("[memory]\nmin_change = \"2EiB\"\n", "memory.min_change"),
        (
            "[memory]\nguest_free_min = \"2EiB\"\n",
            "memory.guest_free_min",
        ),
        (
            "[pools.a]\nvcpus = { budget = 18446744073709551615 }\n",
            "pool \"a\": vcpus.budget (18446744073709551615) is out of range: at most 65536",
        ),
        (
            "[pools.a]\nmemory = { budget = \"1GiB\", max = \"8EiB\" }\n",
            "pool \"a\": memory.max (9223372036854775808) is out of range",
        ),
    ] {
        let e = refused(text, &[key]);
        assert!(e.starts_with("/etc/virtpool/virtpool.toml: "), "{e}");
    }
    // The ends of the ranges are accepted.
    let c = parse(
        "[agent]\ninterval = \"1day\"\nresync_interval = \"24h\"\n[vcpus]\ncooldown = \"0s\"\n",
    )
    .unwrap();
    assert_eq!(c.agent.resync_interval, MAX_DURATION);
}

#[test]
fn paths_that_cannot_work_are_refused() {
    for (text, want) in [
        ("[api]\nsocket = \"\"\n", "api.socket is empty"),
        ("[agent]\nstate_dir = \"\"\n", "agent.state_dir is empty"),
        (
            "[agent]\nstate_dir = \"state\"\n",
            "agent.state_dir (state) is not an absolute path",
        ),
        (
            "[api]\nsocket = \"run/v.sock\"\n",
            "api.socket (run/v.sock) is not an absolute path",
        ),
        (
            "[agent]\nlibvirt_uri = \"\"\n",
            "agent.libvirt_uri is empty",
        ),
        ("[api]\ngroup = \"\"\n", "api.group is empty"),
    ] {
        refused(text, &[want]);
    }
    let long = format!("[api]\nsocket = \"/{}\"\n", "s".repeat(120));
    refused(&long, &["is 121 bytes long"]);
    // {config_dir} makes a relative-looking path absolute.
    let c = parse("[agent]\nstate_dir = \"{config_dir}/state\"\n").unwrap();
    assert!(c.agent.state_dir.is_absolute());
}

#[test]
fn a_file_with_no_settings_is_refused() {
    for text in ["", "\n  \n", "# only a comment\n\n   # another\n"] {
        refused(text, &["the file has no settings"]);
    }
    assert!(parse("[agent]\n").is_ok());
}

#[test]
fn invalid_utf8_is_refused_with_its_position() {
    let e = Config::parse_bytes(
        b"[agent]\nmode = \"obs\xe9rve\"\n",
        Path::new("/etc/virtpool/virtpool.toml"),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "/etc/virtpool/virtpool.toml: not valid UTF-8 at line 2, column 12 (byte 19)"
    );
    let e = Config::parse_bytes(b"\xff", Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1, column 1 (byte 0)"), "{e}");
}

#[test]
fn load_refuses_special_files_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("virtpool.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = Config::load(&fifo).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let e = Config::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn reservations_beyond_the_host_name_their_key() {
    let cap = host(16, 64 << 30);
    let c = parse("[host]\nreserved_cpus = 1000\n").unwrap();
    let e = c.check_host(&cap).unwrap_err().to_string();
    assert!(
        e.contains("host.reserved_cpus (1000) is more than the host's 16 CPUs (measured)"),
        "{e}"
    );
    let c = parse("[host]\nmemory = \"8GiB\"\nreserved_memory = \"9GiB\"\n").unwrap();
    let e = c.check_host(&cap).unwrap_err().to_string();
    assert!(
        e.contains(
            "host.reserved_memory (9.0 GiB) is more than the host's memory, 8.0 GiB (host.memory)"
        ),
        "{e}"
    );
    let c = parse("[host]\nreserved_cpus = 16\n").unwrap();
    assert_eq!(
        c.check_host(&cap).unwrap().vcpus,
        0,
        "all reserved is allowed"
    );
}

#[test]
fn bad_names_rejected() {
    assert!(valid_name("web-1.prod_x").is_ok());
    assert!(valid_name("../etc").is_err());
    assert!(valid_name("").is_err());
    assert!(valid_name("a b").is_err());
    assert!(valid_name(&"x".repeat(65)).is_err());
    // Domain names are what libvirt takes.
    let c = parse(
            "[pools.web]\ndomains = [\"web with spaces\", \"web-ünïcödé\"]\nvcpus = { budget = 4 }\n[pools.web.members.\"web with spaces\"]\nvcpus = { min = 1 }\n",
        )
        .unwrap();
    assert_eq!(c.pools["web"].domains[0], "web with spaces");
    refused(
        "[pools.web]\ndomains = [\"a/b\", \"\"]\n",
        &[
            r#"pool "web": domains: domain name "a/b" contains '/'"#,
            r#"pool "web": domains: domain name is empty"#,
        ],
    );
}

#[test]
fn pool_problems_are_typed_and_name_the_values() {
    let spec: PoolSpec = serde_json::from_str(
        r#"{"vcpus": {"budget": 4, "min": 6, "max": 2, "shares": 0},
                "memory": {"min": 1},
                "members": {"db": {"vcpus": {"budget": 1, "min": 9}}}}"#,
    )
    .unwrap();
    let e = Config::validate_pool("web", &spec).unwrap_err();
    let has = |p: &PoolProblem| e.0.iter().any(|x| x.pool == "web" && x.problem == *p);
    assert!(has(&PoolProblem::MinAboveMax {
        member: None,
        resource: Resource::Vcpus,
        min: 6,
        max: 2
    }));
    assert!(has(&PoolProblem::MinAboveBudget {
        member: Some("db".into()),
        resource: Resource::Vcpus,
        min: 9,
        budget: 4
    }));
    assert!(has(&PoolProblem::MissingBudget {
        resource: Resource::Memory
    }));
    assert!(has(&PoolProblem::MemberBudget {
        member: "db".into(),
        resource: Resource::Vcpus
    }));
    let text = e.to_string();
    assert!(
        text.contains(
            r#"pool "web": members."db".vcpus.min (9) exceeds the pool's vcpus.budget (4)"#
        ) && text.contains(r#"pool "web": vcpus.shares (0) must be between 1 and 1000000"#),
        "{text}"
    );
    refused(
        "[pools.a]\ndomains = [\"x\"]\n[pools.b]\ndomains = [\"x\"]\n",
        &["domain \"x\" is listed in pool \"a\" and pool \"b\""],
    );
}
