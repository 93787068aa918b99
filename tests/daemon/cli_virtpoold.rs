//! The real `virtpoold` binary from the command line.
#![allow(clippy::unwrap_used)]

use assert_cmd::Command;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

fn demo() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/demo.toml")
        .display()
        .to_string()
}

/// Runs `virtpoold` with `args` (at most a minute).
fn virtpoold<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Output {
    Command::cargo_bin("virtpoold")
        .unwrap()
        .args(args)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap()
}

/// `virtpoold --check-config --config <path>`.
fn check_config(path: &Path) -> Output {
    virtpoold([
        OsStr::new("--check-config"),
        OsStr::new("--config"),
        path.as_os_str(),
    ])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails unless `out` is a success, showing its standard error.
fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    let out = check_config(Path::new(&demo()));
    assert_ok("config/demo.toml", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (3 pools"));
    // The example config parses (its budgets are percentages, so they fit any host).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/virtpool.toml");
    assert_ok("config/virtpool.toml", &check_config(&path));
}

#[test]
fn check_config_on_a_broken_config_exits_78_and_names_file_and_key() {
    let err = refused_file(
        "bad.toml",
        b"[pools.web]\nmatch = \"web-*\"\nmemory = { budget = \"16GiB\", min = \"12GiB\", max = \"8GiB\" }\n",
    );
    assert!(err.contains("bad.toml"), "{err}");
    assert!(
        err.contains(r#"pool "web": memory.min (12.0 GiB) exceeds memory.max (8.0 GiB)"#),
        "{err}"
    );

    let err = refused_file("bad.toml", b"[agent]\nmode = \"enforce\"\nspeed = 3\n");
    assert!(err.contains("speed"), "{err}");

    let out = check_config(Path::new("/nonexistent/virtpool.toml"));
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/virtpool.toml"));
}

#[test]
fn budgets_over_the_host_are_rejected_with_the_numbers() {
    let err = refused_file(
        "big.toml",
        b"[host]\ncpus = 3\n[pools.a]\nvcpus = { budget = 6 }\n[pools.b]\nvcpus = { budget = 4 }\n",
    );
    assert!(
        err.contains("vcpus add up to 10 (a 6 + b 4) but the host has only 8 allocatable"),
        "{err}"
    );
}

#[test]
fn once_on_the_demo_prints_every_pool_within_budget() {
    let out = virtpoold(["--once", "--config", &demo()]);
    assert_ok("--once", &out);
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
    let out = virtpoold([
        "--once",
        "--config",
        &demo(),
        "--uri",
        "test+unix:///default?socket=/nonexistent/sock",
    ]);
    assert_eq!(out.status.code(), Some(69));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach libvirt at test+unix:///default?socket=/nonexistent/sock"),
        "{err}"
    );
}

/// `--check-config` on `text` written to a fresh file `name`, which must
/// refuse it (exit 78): its standard error.
fn refused_file(name: &str, text: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(name);
    std::fs::write(&f, text).unwrap();
    let out = check_config(&f);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{name}: {}: {err}",
        String::from_utf8_lossy(text)
    );
    err
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
        let err = refused_file("virtpool.toml", text);
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
    let out = check_config(&f);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_bad_command_line_exits_2() {
    let out = virtpoold(["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
}
