//! systemd/virtpoold.service: the directives SPEC §8 asks for, and
//! `systemd-analyze verify` / `security` where systemd-analyze exists.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../../systemd/virtpoold.service");

fn values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_has_what_the_spec_asks_for() {
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "virtpool"),
        ("StateDirectory", "virtpool"),
        ("ConfigurationDirectory", "virtpool"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
    ] {
        assert_eq!(values(k), vec![v], "{k}");
    }
    assert_eq!(values("WatchdogSec").len(), 1);
    // What a restart cannot fix is not restarted: the exit statuses of a
    // bad command line and of a bad config, state file or directory.
    use virtpool::cli::daemon_args::exit;
    let prevent: Vec<u8> = values("RestartPreventExitStatus")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(prevent, vec![exit::USAGE, exit::CONFIG]);
    for retried in [exit::FAILURE, exit::TEMPFAIL] {
        assert!(!prevent.contains(&retried), "{retried}");
    }
    // Reload: the check first (a bad file fails `systemctl reload`), then
    // the signal.
    assert_eq!(
        values("ExecReload"),
        vec![
            "/usr/bin/virtpoold --check-config --config /etc/virtpool/virtpool.toml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    assert!(
        values("ExecStartPre").is_empty(),
        "a failed pre-check is restarted in a loop"
    );
    let after = values("After").join(" ");
    for u in [
        "libvirtd.service",
        "libvirtd.socket",
        "virtqemud.service",
        "virtqemud.socket",
    ] {
        assert!(after.split(' ').any(|x| x == u), "After= lacks {u}");
    }
    // Ordering only: a hard dependency would break modular-daemon hosts.
    assert!(
        values("Requires").is_empty() && values("Wants").is_empty() && values("BindsTo").is_empty()
    );
    // The API socket is chgrp'ed: @chown must be allowed again after ~@privileged.
    let filters = values("SystemCallFilter");
    let deny = filters
        .iter()
        .position(|f| f.contains("~@privileged"))
        .unwrap();
    let chown = filters.iter().position(|f| *f == "@chown").unwrap();
    assert!(chown > deny, "{filters:?}");
    // One capability: the chgrp of the API socket.
    assert_eq!(values("CapabilityBoundingSet"), vec!["CAP_CHOWN"]);
    // Shutdown gives up on a hung cycle before systemd's stop timeout.
    let stop: u64 = values("TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(virtpool::agent::service::STOP_GRACE.as_secs() + 5 <= stop);
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

/// The unit with ExecStart pointed at this build, and a MANPATH holding
/// this build's man page.
fn unit_for_this_build(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let bin = env!("CARGO_BIN_EXE_virtpoold");
    let assets = dir.join("assets");
    // virtpoolctl writes both binaries' man pages.
    let st = Command::new(env!("CARGO_BIN_EXE_virtpoolctl"))
        .arg("--generate-assets")
        .arg(&assets)
        .status()
        .unwrap();
    assert!(st.success());
    let man8 = dir.join("man/man8");
    std::fs::create_dir_all(&man8).unwrap();
    std::fs::copy(assets.join("virtpoold.8"), man8.join("virtpoold.8")).unwrap();
    let unit = dir.join("virtpoold.service");
    std::fs::write(&unit, UNIT.replace("/usr/bin/virtpoold", bin)).unwrap();
    (unit, dir.join("man"))
}

/// [`unit_for_this_build`] for `systemd-analyze`, or `None` (said) where
/// it is not installed.
fn unit_to_analyze(dir: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    if !have("systemd-analyze") {
        eprintln!("systemd-analyze not installed: skipped");
        return None;
    }
    Some(unit_for_this_build(dir))
}

#[test]
fn systemd_analyze_verify_passes() {
    let dir = tempfile::tempdir().unwrap();
    let Some((unit, man)) = unit_to_analyze(dir.path()) else {
        return;
    };
    let man_opt = if have("man") { "--man=yes" } else { "--man=no" };
    let out = Command::new("systemd-analyze")
        .args(["verify", man_opt])
        .arg(&unit)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // The libvirt units it orders after may be absent on a build machine.
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(l.contains("libvirtd") || l.contains("virtqemud") || l.contains("not found")))
        .collect();
    assert!(bad.is_empty(), "{text}");
}

#[test]
fn systemd_analyze_security_scores_ok() {
    let dir = tempfile::tempdir().unwrap();
    let Some((unit, _)) = unit_to_analyze(dir.path()) else {
        return;
    };
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) else {
        eprintln!("this systemd-analyze has no offline security check: skipped");
        return;
    };
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line}"));
    // docs/operations.md states 1.9 (systemd 252); fail on a regression.
    assert!(score <= 1.9, "{line}");
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&version.stdout).starts_with("systemd 252 ") {
        let docs = include_str!("../../docs/operations.md");
        assert!(
            docs.contains(&format!("(systemd 252): **{score:.1} OK**")),
            "docs/operations.md does not state the score {score:.1}"
        );
    }
}
