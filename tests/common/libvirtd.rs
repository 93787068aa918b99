//! A private `libvirtd` hosting the test driver on a socket in a tempdir
//! (run as `nobody` when we are root, so it stays a session daemon and never
//! touches the system's sockets). Killed by pid on drop. Shared by the test
//! binaries that need a daemon: `#[path = "common/libvirtd.rs"] mod libvirtd;`.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

pub struct Daemon {
    dir: tempfile::TempDir,
    pid: Option<i32>,
}

impl Daemon {
    pub const BIN: &'static str = "/usr/sbin/libvirtd";

    pub fn start(dir: tempfile::TempDir) -> Daemon {
        use std::process::Command;
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let pidfile = d.join("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                Self::BIN,
            ]);
            c
        } else {
            Command::new(Self::BIN)
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/bin")
            .env("HOME", d)
            .env("XDG_RUNTIME_DIR", d)
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_CACHE_HOME", d.join("cache"))
            .arg("--daemon")
            .arg("--pid-file")
            .arg(&pidfile);
        let status = cmd.status().unwrap();
        assert!(status.success(), "libvirtd failed to start: {status}");
        let sock = d.join("libvirt/libvirt-sock");
        let mut pid = None;
        for _ in 0..100 {
            if pid.is_none() {
                pid = std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
            }
            if pid.is_some() && sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(sock.exists(), "libvirtd socket did not appear");
        Daemon { dir, pid }
    }

    pub fn uri(&self) -> String {
        format!(
            "test+unix:///default?socket={}",
            self.dir.path().join("libvirt/libvirt-sock").display()
        )
    }

    /// Asks the daemon to stop (SIGTERM) without waiting for it.
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }

    /// Stops the daemon, waits until it is gone, returns its folder.
    pub fn stop(&mut self) -> tempfile::TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether libvirtd is installed; says so when a test is skipped.
pub fn available() -> bool {
    if Path::new(Daemon::BIN).exists() {
        return true;
    }
    eprintln!("skipped: {} not installed", Daemon::BIN);
    false
}

/// Quiet libvirt errors and start the process's libvirt event loop (before
/// any connection is opened, as `virtpoold` does).
pub fn start_events() {
    virtpool::adapters::libvirt::quiet_errors();
    virtpool::adapters::libvirt::events::start_event_loop().unwrap();
}

/// Suspends the test driver's own domain (`test`) from a separate client
/// connection, closed afterwards.
pub fn suspend_from_outside(uri: &str) {
    let c = virt::connect::Connect::open(Some(uri)).unwrap();
    let d = c.lookup_domain_by_name("test").unwrap();
    d.suspend().unwrap();
}
