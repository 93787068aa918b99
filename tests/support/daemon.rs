//! The real `virtpoold` on a private copy of the demo host (libvirt test
//! driver), its socket and state in a temp dir, and the real
//! `virtpoolctl`. Stopped (SIGTERM to the child we started) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    assert_cmd::cargo::cargo_bin(name)
}

/// The demo config with its state and socket in `dir`, the given
/// `[agent]` interval and mode.
pub fn demo_config(dir: &Path, interval: &str, mode: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::copy(root.join("demo-host.xml"), dir.join("demo-host.xml")).unwrap();
    let text = std::fs::read_to_string(root.join("demo.toml"))
        .unwrap()
        .replace(
            "\"{config_dir}/../target/virtpool-demo/state\"",
            "\"{config_dir}/state\"",
        )
        .replace(
            "\"{config_dir}/../target/virtpool-demo/virtpool.sock\"",
            "\"{config_dir}/api.sock\"",
        )
        .replace(
            "interval = \"5s\"",
            &format!("interval = \"{interval}\"\nmode = \"{mode}\""),
        );
    assert!(
        text.contains("{config_dir}/state")
            && text.contains("{config_dir}/api.sock")
            && text.contains("mode = ")
    );
    let cfg = dir.join("virtpool.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gaps between successive `times` (a daemon's watchdog pings, say)
/// and their median.
pub fn gaps_and_median(times: &[Instant]) -> (Vec<Duration>, Duration) {
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    (gaps, median)
}

/// Spawns `cmd` (the `virtpoold` binary, or a shell that execs it) with
/// `--config CONFIG ARGS`: logging at `info` into the new file `log`, stdin
/// from /dev/null, no systemd notify socket or journal stream.
pub fn spawn_logged(mut cmd: Command, config: &Path, args: &[&str], log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

pub struct Daemon {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    /// Starts it and waits for its first cycle.
    pub fn start(config: &Path) -> Daemon {
        let child = Command::new(bin("virtpoold"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            sock: config.parent().unwrap().join("api.sock"),
            config: config.to_path_buf(),
        };
        d.wait_cycle(1);
        d
    }

    /// Waits (up to a minute) until the agent has published cycle `n`.
    pub fn wait_cycle(&mut self, n: u64) -> u64 {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("virtpoold exited: {st}");
            }
            let o = self.ctl(&["--json", "status"]);
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                let c = v["cycle"].as_u64().unwrap_or(0);
                if c >= n {
                    return c;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("virtpoold did not reach cycle {n}");
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("virtpoolctl"))
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .env_remove("VIRTPOOL_SOCKET")
            .output()
            .unwrap()
    }

    /// `virtpoolctl ARGS`, which must succeed: its output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into()
    }

    /// `virtpoolctl --json ARGS` as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::process::signal(&mut c, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}
