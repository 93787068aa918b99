//! The real-VM harness shared by `tests/realvm.rs` and
//! `tests/realguests.rs`: `tests/realvm/run.sh up` boots direct-kernel
//! busybox guests under a private libvirtd (KVM when it works, TCG
//! otherwise); this drives the real `virtpoold` and `virtpoolctl` against
//! them, reads each guest's serial console (STATUS lines) and talks to its
//! control channel (second serial port, a Unix socket). Everything it
//! started is torn down on drop, also when a check fails, and by a
//! detached watcher if the test process dies without unwinding.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Writes a line to stderr straight away: not held back by the test
/// harness's output capture, so the numbers show in a plain `cargo test`.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

pub const MIB: u64 = 1 << 20;

/// Everything a test started; torn down on drop, also when a check fails.
pub struct Harness {
    pub dir: PathBuf,
    script: PathBuf,
    env: BTreeMap<String, String>,
    agent: Option<Child>,
    keep: Option<String>,
    /// Open control channels by guest, and the last sequence number sent.
    channels: Mutex<(BTreeMap<String, UnixStream>, u64)>,
}

impl Harness {
    /// Runs `run.sh up DIR` with `vars` in its environment (`GUESTS`,
    /// `GUEST_PERIOD`, ...). `keep`: the variable that asked to leave
    /// everything running (named in the message), or `None`.
    pub fn up(dir: PathBuf, vars: &[(&str, &str)], keep: Option<&str>) -> Harness {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realvm/run.sh");
        let mut h = Harness {
            dir,
            script,
            env: BTreeMap::new(),
            agent: None,
            keep: keep.map(str::to_string),
            channels: Mutex::new((BTreeMap::new(), 0)),
        };
        // If this process dies without running Drop (SIGKILL, abort), a
        // detached watcher still tears everything down.
        if h.keep.is_none() {
            let watcher = format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; exec '{}' down '{}'",
                std::process::id(),
                h.script.display(),
                h.dir.display()
            );
            Command::new("setsid")
                .args(["-f", "sh", "-c", &watcher])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("start the teardown watcher");
        }
        let mut cmd = Command::new(&h.script);
        cmd.arg("up").arg(&h.dir);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let st = cmd.status().expect("run tests/realvm/run.sh");
        assert!(st.success(), "tests/realvm/run.sh up failed: {st}");
        let text = std::fs::read_to_string(h.dir.join("env")).unwrap();
        h.env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h
    }

    pub fn var(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or("?")
    }

    pub fn uri(&self) -> &str {
        self.var("URI")
    }

    /// "KVM" or "TCG".
    pub fn accel(&self) -> &'static str {
        if self.var("DTYPE") == "kvm" {
            "KVM"
        } else {
            "TCG"
        }
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("virtpoold.log")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("virtpool.toml")
    }

    /// Writes the agent's config: the `[agent]` and `[api]` sections the
    /// harness runs it with (this libvirtd, a 2 s interval, enforce mode,
    /// state and API socket in the work dir), then `rest`.
    pub fn write_config(&self, rest: &str) {
        let text = format!(
            r#"[agent]
libvirt_uri = "{uri}"
interval = "2s"
mode = "enforce"
state_dir = "{dir}/agent-state"

[api]
socket = "{sock}"
group = "root"

{rest}"#,
            uri = self.uri(),
            dir = self.dir.display(),
            sock = self.sock().display(),
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Starts `virtpoold` with the config last written, its output
    /// appended to the daemon log; waits until its API answers.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_virtpoold"))
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "virtpool=info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start virtpoold");
        // run.sh down stops it by this pid if the test process dies.
        std::fs::write(self.dir.join("agent.pid"), child.id().to_string()).unwrap();
        self.agent = Some(child);
        // Up once its API answers and its first cycle has observed the host.
        wait_until(60, "the agent's first cycle", || {
            let st = ctl_try(&self.sock(), &["--json", "status"]).ok()?;
            let v: serde_json::Value = serde_json::from_str(&st).ok()?;
            v["last_cycle"].is_object().then_some(())
        });
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    fn signal_agent(&self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.agent_pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGHUP: the agent reloads its config.
    pub fn reload_agent(&self) {
        self.signal_agent(nix::sys::signal::Signal::SIGHUP);
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_agent(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.agent.take()?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL, as a crash would.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops libvirtd and starts it again (same namespace setup); returns
    /// once it answers. QEMU keeps running meanwhile.
    pub fn restart_libvirtd(&mut self) {
        let st = Command::new(&self.script)
            .arg("restart-libvirtd")
            .arg(&self.dir)
            .status()
            .expect("run tests/realvm/run.sh restart-libvirtd");
        assert!(st.success(), "run.sh restart-libvirtd failed: {st}");
    }

    pub fn virsh_try(&self, args: &[&str]) -> Result<String, String> {
        run_try(
            Command::new("timeout")
                .arg("30")
                .arg("virsh")
                .arg("-c")
                .arg(self.uri())
                .args(args),
        )
    }

    pub fn virsh(&self, args: &[&str]) -> String {
        self.virsh_try(args)
            .unwrap_or_else(|e| panic!("virsh {args:?}: {e}"))
    }

    /// `(key, value)` from a `virsh` listing of `key value` / `key: value`.
    pub fn virsh_field(&self, args: &[&str], key: &str) -> Option<u64> {
        self.virsh(args).lines().find_map(|l| {
            let mut w = l.split_whitespace();
            let k = w.next()?.trim_end_matches(':');
            (k == key).then(|| w.next()?.parse().ok()).flatten()
        })
    }

    pub fn balloon_kib(&self, dom: &str) -> u64 {
        self.virsh_field(&["dommemstat", dom], "actual").unwrap()
    }

    pub fn libvirt_vcpus(&self, dom: &str) -> u64 {
        let out = self.virsh(&["vcpucount", dom, "--live"]);
        out.trim().parse().unwrap()
    }

    pub fn iotune_bps(&self, dom: &str) -> u64 {
        self.virsh_field(&["blkdeviotune", dom, "vda"], "total_bytes_sec")
            .unwrap()
    }

    /// QEMU's pid for a running guest, as libvirt wrote it.
    pub fn qemu_pid(&self, dom: &str) -> Option<u32> {
        let p = self.dir.join(format!("state/run/qemu/{dom}.pid"));
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    pub fn serial(&self, dom: &str) -> PathBuf {
        self.dir.join(format!("{dom}.serial"))
    }

    /// The guest's status lines so far.
    pub fn statuses(&self, dom: &str) -> Vec<Report> {
        let raw = std::fs::read(self.serial(dom)).unwrap_or_default();
        String::from_utf8_lossy(&raw)
            .lines()
            .filter(|l| l.starts_with("STATUS "))
            .map(Report::parse)
            .collect()
    }

    /// The `n`-th status line printed after the call (the first may have
    /// been half-way through when the call came).
    pub fn fresh_status(&self, dom: &str, n: usize) -> Report {
        let seen = self.statuses(dom).len();
        wait_until(90, &format!("{n} new status line(s) of {dom}"), || {
            self.statuses(dom).get(seen + n - 1).cloned()
        })
    }

    /// Sends `cmd` (`mem 100`, `cpu 2`, `disk 1`, `stop`) on the guest's
    /// control channel; returns its sequence number (see [`Self::guest_wait`]).
    pub fn guest_send(&self, dom: &str, cmd: &str) -> u64 {
        let mut g = self.channels.lock().unwrap();
        g.1 += 1;
        let seq = g.1;
        let path = self.dir.join(format!("{dom}.ctl"));
        let s = g.0.entry(dom.to_string()).or_insert_with(|| {
            UnixStream::connect(&path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()))
        });
        s.write_all(format!("{seq} {cmd}\n").as_bytes())
            .unwrap_or_else(|e| panic!("send {cmd:?} to {dom}: {e}"));
        seq
    }

    /// Waits (up to `secs`) for the guest's ACK of command `seq` on its
    /// console; returns the ACK line.
    pub fn guest_wait(&self, dom: &str, seq: u64, secs: u64) -> String {
        let want = format!("ACK {seq} ");
        wait_until(secs, &format!("{dom} to run command {seq}"), || {
            let f = std::fs::File::open(self.serial(dom)).ok()?;
            std::io::BufReader::new(f)
                .split(b'\n')
                .map_while(Result::ok)
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .find(|l| l.starts_with(&want))
        })
    }

    /// [`Self::guest_send`] then [`Self::guest_wait`].
    pub fn guest_cmd(&self, dom: &str, cmd: &str, secs: u64) -> String {
        let seq = self.guest_send(dom, cmd);
        self.guest_wait(dom, seq, secs)
    }

    /// Forgets a guest's control channel (its QEMU was restarted).
    pub fn drop_channel(&self, dom: &str) {
        self.channels.lock().unwrap().0.remove(dom);
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        ctl(&self.sock(), args)
    }

    pub fn ctl_try(&self, args: &[&str]) -> Result<String, String> {
        ctl_try(&self.sock(), args)
    }

    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        ctl_json(&self.sock(), args)
    }

    /// Creates (or replaces) runtime pool `name` from TOML text.
    pub fn pool_create(&self, name: &str, spec: &str) {
        let file = self.dir.join(format!("pool-{name}.toml"));
        std::fs::write(&file, spec).unwrap();
        self.ctl(&[
            "pool",
            "create",
            name,
            "--file",
            file.to_str().unwrap(),
            "--wait",
        ]);
    }

    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.ctl(&["metrics"]);
        let key = format!("{name}{labels} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    pub fn tail(&self, path: &Path, n: usize) {
        let raw = std::fs::read(path).unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        let lines: Vec<&str> = text.lines().collect();
        say!("--- last lines of {}:", path.display());
        for l in &lines[lines.len().saturating_sub(n)..] {
            say!("    {l}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.tail(&self.daemon_log(), 30);
            for g in self.var("GUESTS").split_whitespace() {
                self.tail(&self.serial(g), 12);
            }
            self.tail(&self.dir.join("libvirtd.log"), 10);
        }
        if let Some(var) = &self.keep {
            say!(
                "{var}=keep: left running; URI {}, work dir {} (tear down: {} down {})",
                self.uri(),
                self.dir.display(),
                self.script.display(),
                self.dir.display()
            );
            return;
        }
        self.channels.lock().unwrap().0.clear();
        self.stop_agent();
        let _ = Command::new(&self.script)
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// One `STATUS` line of a guest.
#[derive(Debug, Clone)]
pub struct Report {
    /// Guest uptime, s.
    pub up: f64,
    pub online: String,
    pub mem_total_kb: u64,
    pub mem_available_kb: u64,
    /// OOM kills since boot (`/proc/vmstat` `oom_kill`).
    pub oom: u64,
    /// MiB held in the guest's tmpfs.
    pub fill_mib: u64,
    pub dd4m_s: f64,
}

impl Report {
    pub fn parse(line: &str) -> Report {
        let f = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("")
                .to_string()
        };
        Report {
            up: f("up").parse().unwrap_or(0.0),
            online: f("online"),
            mem_total_kb: f("MemTotal").parse().unwrap_or(0),
            mem_available_kb: f("MemAvailable").parse().unwrap_or(0),
            oom: f("oom").parse().unwrap_or(0),
            fill_mib: f("fill").parse().unwrap_or(0),
            dd4m_s: f("dd4M").parse().unwrap_or(f64::NAN),
        }
    }
}

/// Runs `cmd` to the end: its stdout when it succeeds, else its stderr.
fn run_try(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

pub fn ctl_try(sock: &Path, args: &[&str]) -> Result<String, String> {
    run_try(
        Command::new(env!("CARGO_BIN_EXE_virtpoolctl"))
            .arg("--socket")
            .arg(sock)
            .args(args),
    )
}

pub fn ctl(sock: &Path, args: &[&str]) -> String {
    ctl_try(sock, args).unwrap_or_else(|e| panic!("virtpoolctl {args:?}: {e}"))
}

pub fn ctl_json(sock: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ctl(sock, &a)).unwrap()
}

/// Polls `f` every 200 ms until it returns something; fails the test after
/// `secs` seconds, naming what it waited for.
pub fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Phase timings, printed at the end.
pub struct Phases {
    pub start: Instant,
    last: Instant,
    pub done: Vec<(String, f64)>,
}

impl Phases {
    pub fn new() -> Phases {
        let now = Instant::now();
        Phases {
            start: now,
            last: now,
            done: Vec::new(),
        }
    }

    pub fn end(&mut self, name: &str) {
        let now = Instant::now();
        let s = (now - self.last).as_secs_f64();
        say!("=== phase {name}: {s:.1} s");
        self.done.push((name.to_string(), s));
        self.last = now;
    }

    pub fn print(&self) {
        say!("phase timings:");
        for (name, s) in &self.done {
            say!("  {s:6.1} s  {name}");
        }
        say!("  {:6.1} s  total", self.start.elapsed().as_secs_f64());
    }
}

/// What `VIRTPOOL_REALVM` (and the test's own variable `var`, if any) ask
/// for: `Err(reason)` to skip, `Ok(keep)` to run (keep: leave it running).
/// Not root and not skipped: fails, naming the variables.
pub fn gate(var: Option<&str>, what: &str) -> Result<Option<String>, String> {
    let mut keep = None;
    for name in std::iter::once("VIRTPOOL_REALVM").chain(var) {
        match std::env::var(name).as_deref() {
            Ok("skip") => return Err(format!("{name}=skip")),
            Ok("keep") => keep = Some(name.to_string()),
            Ok("" | "long") | Err(_) => {}
            Ok(other) => panic!(
                "{name}={other:?}: understood are \"skip\", \"keep\"{}",
                if name == "VIRTPOOL_REALVM" {
                    ""
                } else {
                    " and \"long\""
                }
            ),
        }
    }
    let skip_hint = match var {
        Some(v) => format!("set VIRTPOOL_REALVM=skip or {v}=skip"),
        None => "set VIRTPOOL_REALVM=skip".to_string(),
    };
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (libvirtd, QEMU, a mount namespace); run it as root, \
         or {skip_hint} to skip it (it then prints SKIP)"
    );
    Ok(keep)
}
