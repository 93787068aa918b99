//! The real `virtpoold` binary from the command line.
#![allow(clippy::unwrap_used)]

use assert_cmd::Command;
use std::path::Path;

fn demo() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/demo.toml")
        .display()
        .to_string()
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    {
        let f = "config/demo.toml";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let out = Command::cargo_bin("virtpoold")
            .unwrap()
            .args(["--check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (3 pools"));
    }
    // The example config parses (its budgets are percentages, so they fit any host).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/virtpool.toml");
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_on_a_broken_config_exits_78_and_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[pools.web]\nmatch = \"web-*\"\nmemory = { budget = \"16GiB\", min = \"12GiB\", max = \"8GiB\" }\n",
    )
    .unwrap();
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(
        err.contains(r#"pool "web": memory.min (12.0 GiB) exceeds memory.max (8.0 GiB)"#),
        "{err}"
    );

    std::fs::write(&f, "[agent]\nmode = \"enforce\"\nspeed = 3\n").unwrap();
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("speed"), "{err}");

    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config", "/nonexistent/virtpool.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/virtpool.toml"));
}

#[test]
fn budgets_over_the_host_are_rejected_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.toml");
    std::fs::write(
        &f,
        "[host]\ncpus = 3\n[pools.a]\nvcpus = { budget = 6 }\n[pools.b]\nvcpus = { budget = 4 }\n",
    )
    .unwrap();
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vcpus add up to 10 (a 6 + b 4) but the host has only 8 allocatable"),
        "{err}"
    );
}

#[test]
fn once_on_the_demo_prints_every_pool_within_budget() {
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--once", "--config", &demo()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "pool web",
        "pool db",
        "pool batch",
        "BUDGET",
        "ALLOCATED",
        "FREE",
        "db-old",
        "shut off",
        "web-4",
        "paused",
        "unmanaged (1):",
        "never touched",
        "dev-sandbox",
        "0 failed",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn once_without_libvirt_exits_69_with_a_clear_message() {
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args([
            "--once",
            "--config",
            &demo(),
            "--uri",
            "test+unix:///default?socket=/nonexistent/sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach libvirt at test+unix:///default?socket=/nonexistent/sock"),
        "{err}"
    );
}

/// `--check-config` on `text` (written to a fresh file): exit code and
/// standard error.
fn check(text: &[u8]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("virtpool.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config"])
        .arg(&f)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Settings that would break the running agent (a panic in the libvirt
/// thread, a socket or state that cannot be used, a reservation that
/// leaves nothing) are refused up front, each naming its key.
#[test]
fn check_config_refuses_settings_that_cannot_work_naming_the_key() {
    for (text, needles) in [
        (
            &b"[agent]\nresync_interval = \"18446744073709551615s\"\n"[..],
            &[
                "virtpool.toml",
                "agent.resync_interval (",
                "out of range: 0s to 1day",
            ][..],
        ),
        (
            b"[agent]\ninterval = \"30days\"\n",
            &["agent.interval (30days) is out of range"],
        ),
        (b"[api]\nsocket = \"\"\n", &["api.socket is empty"]),
        (
            b"[agent]\nstate_dir = \"\"\n",
            &["agent.state_dir is empty"],
        ),
        (
            b"[agent]\nstate_dir = \"var/state\"\n",
            &["agent.state_dir (var/state) is not an absolute path"],
        ),
        (
            b"[host]\ncpus = 4\nreserved_cpus = 1000\n",
            &["host.reserved_cpus (1000) is more than the host's 4 CPUs (host.cpus)"],
        ),
        (
            b"[agent]\nmode = \"enf\xc3orce\"\n",
            &["not valid UTF-8 at line 2, column 12 (byte 19)"],
        ),
        (b"", &["virtpool.toml", "the file has no settings"]),
        (b"# all commented out\n", &["the file has no settings"]),
    ] {
        let (code, err) = check(text);
        assert_eq!(code, Some(78), "{}: {err}", String::from_utf8_lossy(text));
        for n in needles {
            assert!(err.contains(n), "{n:?} not in: {err}");
        }
    }
}

/// A FIFO given as the config is refused at once, not waited on.
#[test]
fn check_config_refuses_a_fifo_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("virtpool.toml");
    nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config"])
        .arg(&f)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_bad_command_line_exits_2() {
    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
