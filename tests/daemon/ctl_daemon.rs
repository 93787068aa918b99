//! Black-box: the real `virtpoold` on the libvirt test driver (a private
//! copy of the demo host per test), driven by the real `virtpoolctl`.
#![allow(clippy::unwrap_used)]

use crate::support::daemon::{bin, demo_config};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The demo config and host in `dir`, with state and socket there, on
/// an hourly interval (cycles only when asked).
fn setup(dir: &Path) -> PathBuf {
    demo_config(dir, "1h", "enforce")
}

fn start(cfg: &Path, extra: &[&str]) -> Child {
    Command::new(bin("virtpoold"))
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    Command::new(bin("virtpoolctl"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

fn ok(sock: &Path, args: &[&str]) -> String {
    let o = ctl(sock, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into()
}

/// Waits until the agent answers and ran its first cycle.
fn wait_ready(sock: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("virtpoold exited {st}: {err}");
        }
        let o = ctl(sock, &["--json", "status"]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if v["cycle"].as_u64().unwrap_or(0) >= 1 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("virtpoold not ready");
}

/// Runs `virtpoold --config cfg`, which must refuse to start with exit
/// `code`: its standard error.
fn refused(cfg: &Path, code: i32) -> String {
    let o = Command::new(bin("virtpoold"))
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "{err}");
    err
}

/// SIGTERM to a child we started, then wait.
fn stop(mut child: Child) -> std::process::ExitStatus {
    crate::support::process::signal(&mut child, nix::sys::signal::Signal::SIGTERM);
    child.wait().unwrap()
}

#[test]
fn daemon_serves_the_cli_refuses_a_second_instance_and_keeps_changes_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let sock = dir.path().join("api.sock");
    let mut d = start(&cfg, &[]);
    wait_ready(&sock, &mut d);

    let st = ok(&sock, &["status"]);
    assert!(
        st.contains("connected") && st.contains("12 (11 active): 11 managed, 1 unmanaged"),
        "{st}"
    );
    let out = ok(
        &sock,
        &[
            "allocate", "web", "web-1", "--vcpus", "3", "--memory", "2GiB", "--wait",
        ],
    );
    assert!(out.contains("reservation vcpus 3, memory 2.0 GiB"), "{out}");
    ok(
        &sock,
        &[
            "pool",
            "create",
            "sandbox",
            "--domain",
            "dev-sandbox",
            "--vcpus",
            "4",
            "--memory",
            "8GiB",
            "--wait",
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&sock, &["--json", "domain", "dev-sandbox"])).unwrap();
    assert_eq!(v["pool"], "sandbox");
    // The test driver applied the reservation's floor: web-1 has ≥ 3 vCPUs.
    ok(&sock, &["reconcile", "--wait"]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&sock, &["--json", "domain", "web-1"])).unwrap();
    assert!(v["vcpus"].as_u64().unwrap() >= 3, "{v}");

    // A second agent on the same socket refuses to start.
    let err = refused(&cfg, 75);
    assert!(
        err.contains("another virtpoold is already serving") && err.contains("api.sock"),
        "{err}"
    );
    ok(&sock, &["status"]);

    assert!(stop(d).success());
    assert!(!sock.exists(), "socket removed on shutdown");

    let mut d = start(&cfg, &[]);
    wait_ready(&sock, &mut d);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&sock, &["--json", "domain", "web-1"])).unwrap();
    assert_eq!(v["reservation"]["vcpus"], 3);
    assert_eq!(v["reservation"]["memory"], 2u64 << 30);
    let show = ok(&sock, &["pool", "show", "sandbox"]);
    assert!(
        show.starts_with("pool sandbox (runtime) — 1 member(s)"),
        "{show}"
    );
    // curl-style raw HTTP works too (HTTP/1.1, JSON).
    let o = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&sock)
        .arg("http://localhost/v1/pools/sandbox")
        .output();
    if let Ok(o) = o {
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["name"], "sandbox");
        }
    }
    assert!(stop(d).success());
}

#[test]
fn corrupt_state_stops_start_up_and_reset_state_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let sock = dir.path().join("api.sock");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state/state.json"),
        "{\"version\": 1, \"pau",
    )
    .unwrap();
    let err = refused(&cfg, 78);
    assert!(
        err.contains("state/state.json") && err.contains("--reset-state"),
        "{err}"
    );
    assert!(!sock.exists());

    let mut d = start(&cfg, &["--reset-state"]);
    wait_ready(&sock, &mut d);
    ok(&sock, &["pools"]);
    let aside: Vec<_> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(stop(d).success());
}
