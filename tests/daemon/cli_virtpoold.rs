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
fn check_config_on_a_broken_config_exits_2_and_names_file_and_key() {
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
    assert_eq!(out.status.code(), Some(2));
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
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("speed"), "{err}");

    let out = Command::cargo_bin("virtpoold")
        .unwrap()
        .args(["--check-config", "--config", "/nonexistent/virtpool.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
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
    assert_eq!(out.status.code(), Some(2));
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
        "unmanaged (1, never touched)",
        "dev-sandbox",
        "0 failed",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn once_without_libvirt_exits_1_with_a_clear_message() {
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
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach libvirt at test+unix:///default?socket=/nonexistent/sock"),
        "{err}"
    );
}
