//! The one `libvirtd` harness: a private daemon hosting the libvirt test
//! driver on a socket in a per-test folder, killed on drop (also on panic).
//!
//! As root it runs as `nobody` (`setpriv --reuid=nobody --regid=nogroup
//! --clear-groups --pdeathsig=KILL`) with its own `HOME`,
//! `XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME` and `XDG_CACHE_HOME` in the test's
//! folder: a *session* daemon that never touches `/run/libvirt` or the
//! system's sockets, so tests run in parallel, one daemon each. Not root:
//! the same, as the current user. The URI is
//! `test+unix:///default?socket=DIR/lv/run/libvirt/libvirt-sock`.
//!
//! Failure rule: a test that needs libvirtd fails when it cannot have one,
//! with one exception: when `/usr/sbin/libvirtd` is not installed and
//! `VIRTPOOL_LIBVIRTD=skip` is set, [`Libvirtd::start`] prints a loud
//! SKIPPED banner and returns `None` (the test then passes without running).
//! An installed libvirtd that does not start is always a failure.
//!
//! `--pdeathsig` ends the daemon when the thread that started it ends:
//! start it from the test's own thread (not from `spawn_blocking`).
//!
//! `benches/scale.rs` uses it too (`#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use virt::connect::Connect;

pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";

/// The variable that allows skipping when libvirtd is not installed.
pub const SKIP_ENV: &str = "VIRTPOOL_LIBVIRTD";

/// Polls `f` every 50 ms until it returns `Some`, or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh temp dir for one test, world-traversable (libvirtd runs as
/// `nobody` inside it).
pub fn test_dir(tag: &str) -> tempfile::TempDir {
    // As root, libvirtd runs as `nobody`: use /tmp (1777 on Debian), not a
    // $TMPDIR whose parents `nobody` may not be able to traverse.
    let prefix = format!("vpbb-{tag}-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    let d = if is_root() {
        b.tempdir_in("/tmp")
    } else {
        b.tempdir()
    }
    .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether libvirtd may be missing: `VIRTPOOL_LIBVIRTD=skip`. Any other
/// value is a mistake and fails.
fn skip_allowed() -> bool {
    match std::env::var(SKIP_ENV).as_deref() {
        Ok("skip") => true,
        Ok(other) => panic!("{SKIP_ENV}={other:?}: understood is \"skip\""),
        Err(_) => false,
    }
}

/// A private libvirtd, SIGKILLed on drop.
pub struct Libvirtd {
    dir: PathBuf,
    child: Option<Child>,
    /// The folder when the daemon owns it ([`Libvirtd::start_temp`]).
    _own: Option<tempfile::TempDir>,
    pub sock: PathBuf,
    /// How many times it was started (restarts included).
    pub starts: u32,
}

impl Libvirtd {
    /// Starts a libvirtd in `base/lv`. `None` (after a loud banner) only
    /// when libvirtd is not installed and `VIRTPOOL_LIBVIRTD=skip` is set;
    /// panics when it cannot run otherwise.
    pub fn start(base: &Path) -> Option<Libvirtd> {
        if !Path::new(LIBVIRTD).exists() {
            let why =
                format!("{LIBVIRTD} is not installed (scripts/setup.sh installs libvirt-daemon)");
            if skip_allowed() {
                eprintln!("\n*** SKIPPED: {why}; {SKIP_ENV}=skip is set ***\n");
                return None;
            }
            panic!("{why}; set {SKIP_ENV}=skip to skip the tests that need it");
        }
        // `nobody` must be able to pass through `base` to its folder.
        let mode = std::fs::metadata(base).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
        }
        let dir = base.join("lv");
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        if is_root() {
            let nobody = nix::unistd::User::from_name("nobody")
                .ok()
                .flatten()
                .expect("a user `nobody` to run libvirtd as");
            for p in [dir.clone(), dir.join("home"), dir.join("run")] {
                std::os::unix::fs::chown(&p, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
                    .unwrap();
            }
        }
        let sock = dir.join("run/libvirt/libvirt-sock");
        let mut d = Libvirtd {
            dir,
            child: None,
            _own: None,
            sock,
            starts: 0,
        };
        if let Err(e) = d.spawn() {
            panic!("libvirtd did not start: {e}");
        }
        Some(d)
    }

    /// [`Libvirtd::start`] in a fresh folder of its own, removed on drop.
    pub fn start_temp() -> Option<Libvirtd> {
        let own = test_dir("lv");
        let mut d = Self::start(own.path())?;
        d._own = Some(own);
        Some(d)
    }

    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "libvirtd is already running");
        let _ = std::fs::remove_file(&self.sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("libvirtd.log"))
            .map_err(|e| e.to_string())?;
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--pdeathsig=KILL",
                LIBVIRTD,
            ]);
            c
        } else {
            Command::new(LIBVIRTD)
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_CONFIG_HOME", self.dir.join("home/.config"))
            .env("XDG_CACHE_HOME", self.dir.join("home/.cache"))
            .env("LIBVIRT_LOG_OUTPUTS", "1:stderr")
            .env("LIBVIRT_DEFAULT_URI", "test:///default")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run libvirtd: {e}"))?;
        let uri = self.uri();
        let up = poll(Duration::from_secs(15), || {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(Err(format!("libvirtd exited: {st}; log: {}", self.log())));
            }
            if !self.sock.exists() {
                return None;
            }
            match Connect::open(Some(&uri)) {
                Ok(c) => {
                    drop(c);
                    Some(Ok(()))
                }
                Err(_) => None,
            }
        });
        match up {
            Some(Ok(())) => {
                self.child = Some(child);
                self.starts += 1;
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "socket {} not answering after 15 s; log: {}",
                    self.sock.display(),
                    self.log()
                ))
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
    }

    pub fn uri(&self) -> String {
        format!("test+unix:///default?socket={}", self.sock.display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Asks the daemon to stop (SIGTERM) without waiting for it.
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Stops the daemon (SIGTERM; SIGKILL after 10 s) and reaps it.
    pub fn stop(&mut self) {
        self.sigterm();
        if let Some(mut c) = self.child.take() {
            if poll(Duration::from_secs(10), || c.try_wait().ok().flatten()).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after [`Libvirtd::stop`] or [`Libvirtd::kill9`]
    /// (fresh test-driver state).
    pub fn restart(&mut self) {
        self.spawn().unwrap();
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.kill9();
    }
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
