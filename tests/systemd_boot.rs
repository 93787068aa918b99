//! The Debian package and its unit under a real systemd (252, Debian 12),
//! booted in a container by `tests/systemd/run.sh`: the `.deb` is built by
//! cargo-deb from this build's binaries (as `scripts/build-deb.sh` does
//! from release ones; cargo-deb is installed from crates.io if missing,
//! about 2 minutes once), installed with `dpkg -i` — installed, neither
//! enabled nor started, the existing config kept — then run with the demo
//! config (libvirt test driver) and driven with `systemctl` as an operator
//! would:
//! - start: `Type=notify` start returns once READY=1 came (after the first
//!   cycle), with the cycle summary as the unit's status text; the API
//!   socket answers `virtpoolctl`; each action is a journal entry with its
//!   fields (DOMAIN=, RESOURCE=, …);
//! - reload: a valid config is swapped in; an invalid one fails
//!   `systemctl reload` and `virtpoolctl reload` with the reason, and is
//!   refused by the agent on a bare SIGHUP; the service keeps running with
//!   the old one;
//! - stop: exit 0, state saved, the runtime directory gone;
//! - a killed agent is restarted (`Restart=on-failure`);
//! - an invalid config at start fails the start without a restart loop
//!   (exit 78, `RestartPreventExitStatus=`), and so does a corrupt state
//!   file;
//! - the watchdog (shortened to 4 s by a drop-in): the agent's pings keep
//!   it alive, and a stopped agent is killed and restarted.
//! - removing the package stops the agent.
//!
//! Needs root (systemd-nspawn); `VIRTPOOL_SYSTEMD=skip` skips it, loudly
//! (`scripts/test.sh` sets that when not root).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Container {
    dir: PathBuf,
    script: PathBuf,
    pid: String,
}

/// The cargo-deb this test installs when there is none.
const CARGO_DEB: &str = "3.8.0";

/// Builds the package of this build's binaries into `out` (cargo-deb,
/// installed first if missing) and returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let has = |args: &[&str]| {
        Command::new(cargo)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(&["deb", "--version"]) {
        eprintln!("installing cargo-deb {CARGO_DEB} (once)");
        let st = Command::new(cargo)
            .args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB])
            .status()
            .expect("run cargo install");
        assert!(st.success(), "cargo install cargo-deb failed: {st}");
    }
    // The binaries of this build: target/<profile dir>/.
    let bin = Path::new(env!("CARGO_BIN_EXE_virtpoold")).parent().unwrap();
    let profile = match bin.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => panic!("no profile directory in {}", bin.display()),
    };
    // The man pages and completions the package ships (Cargo.toml's
    // assets name target/assets/).
    let assets = bin.parent().unwrap().join("assets");
    let _ = std::fs::remove_dir_all(&assets);
    let o = Command::new(env!("CARGO_BIN_EXE_virtpoolctl"))
        .arg("--generate-assets")
        .arg(&assets)
        .output()
        .unwrap();
    assert!(o.status.success(), "--generate-assets: {o:?}");
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new(cargo)
        .arg("deb")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args([
            "--no-build",
            "--profile",
            profile,
            "--strip",
            "--no-dbgsym",
            "--fast",
            "-o",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let deb = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    eprintln!(
        "built {} ({} KiB)",
        deb.display(),
        std::fs::metadata(&deb).unwrap().len() >> 10
    );
    deb
}

impl Container {
    fn up(dir: PathBuf, deb: &Path) -> Container {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd/run.sh");
        let bin = Path::new(env!("CARGO_BIN_EXE_virtpoold")).parent().unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        // Torn down even if this process dies without running Drop.
        let watcher = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; exec '{}' down '{}'",
            std::process::id(),
            script.display(),
            dir.display()
        );
        Command::new("setsid")
            .args(["-f", "sh", "-c", &watcher])
            .status()
            .expect("start the teardown watcher");
        let st = Command::new(&script)
            .arg("up")
            .arg(&dir)
            .arg(bin)
            .arg(deb)
            .status()
            .expect("run tests/systemd/run.sh");
        assert!(st.success(), "tests/systemd/run.sh up failed: {st}");
        let env: BTreeMap<String, String> = std::fs::read_to_string(dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pid = env["PID"].clone();
        Container { dir, script, pid }
    }

    /// Runs a command inside the container.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid, "-a"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}\njournal:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn journal(&self) -> String {
        let o = self.run(&[
            "journalctl",
            "-b",
            "-u",
            "virtpoold",
            "--no-pager",
            "-n",
            "40",
            "-o",
            "cat",
        ]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `systemctl show virtpoold -p KEY` values.
    fn show(&self, keys: &[&str]) -> BTreeMap<String, String> {
        let mut args = vec!["systemctl", "show", "virtpoold"];
        for k in keys {
            args.extend(["-p", k]);
        }
        self.ok(&args)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn wait_show(&self, what: &str, secs: u64, f: impl Fn(&BTreeMap<String, String>) -> bool) {
        let keys = [
            "ActiveState",
            "SubState",
            "MainPID",
            "NRestarts",
            "StatusText",
        ];
        let t0 = Instant::now();
        loop {
            let s = self.show(&keys);
            if f(&s) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{what}: not within {secs} s: {s:?}\njournal:\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("etc/virtpool.toml")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_unit_runs_under_systemd() {
    match std::env::var("VIRTPOOL_SYSTEMD").as_deref() {
        Ok("skip") => {
            eprintln!("SKIP systemd: VIRTPOOL_SYSTEMD=skip — the unit was not run under systemd");
            return;
        }
        Ok("") | Err(_) => {}
        Ok(other) => panic!("VIRTPOOL_SYSTEMD={other:?}: understood is \"skip\""),
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the systemd test needs root (systemd-nspawn); run it as root, or set \
         VIRTPOOL_SYSTEMD=skip to skip it (it then prints SKIP)"
    );
    let dir = std::env::temp_dir().join(format!("virtpool-systemd.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let debs = tempfile::tempdir().unwrap();
    let deb = build_deb(debs.path());
    let c = Container::up(dir, &deb);
    let sock = "/run/virtpool/virtpool.sock";

    // The package: installed; its unit known to systemd, neither enabled
    // nor started; the config already there kept; its man pages and
    // completions in place.
    assert_eq!(
        c.ok(&["dpkg-query", "-W", "-f", "${Status}", "virtpool"]),
        "install ok installed"
    );
    let s = c.show(&["FragmentPath", "UnitFileState", "ActiveState"]);
    assert_eq!(
        (s["UnitFileState"].as_str(), s["ActiveState"].as_str()),
        ("disabled", "inactive"),
        "{s:?}"
    );
    // /lib is /usr/lib on Debian 12.
    let unit = c.ok(&["realpath", &s["FragmentPath"]]);
    assert_eq!(unit.trim(), "/usr/lib/systemd/system/virtpoold.service");
    assert!(c
        .ok(&["dpkg", "-L", "virtpool"])
        .lines()
        .any(|l| l == unit.trim()));
    let conf = c.ok(&["cat", "/etc/virtpool/virtpool.toml"]);
    assert!(conf.contains("demo-host.xml"), "{conf}");
    for f in [
        "/usr/bin/virtpoold",
        "/usr/share/man/man1/virtpoolctl-events.1.gz",
        "/usr/share/man/man8/virtpoold.8.gz",
        "/usr/share/bash-completion/completions/virtpoolctl",
    ] {
        c.ok(&["test", "-s", f]);
    }

    // Start: returns after READY=1, i.e. after the first cycle.
    c.ok(&["systemctl", "start", "virtpoold"]);
    let s = c.show(&["ActiveState", "SubState", "StatusText", "MainPID"]);
    assert_eq!(s["ActiveState"], "active", "{s:?}");
    assert!(s["StatusText"].starts_with("cycle "), "{s:?}");
    let pid1 = s["MainPID"].clone();
    let status = c.ok(&["virtpoolctl", "--socket", sock, "status"]);
    assert!(status.contains("connected"), "{status}");
    let mode = c.ok(&["stat", "-c", "%a", sock]);
    assert_eq!(mode.trim(), "660");
    // Actions are journal entries with their fields.
    let entries = c.ok(&[
        "journalctl",
        "-b",
        "-u",
        "virtpoold",
        "-o",
        "json",
        "--no-pager",
        "MESSAGE=applied",
    ]);
    let first: serde_json::Value =
        serde_json::from_str(entries.lines().next().expect("an action in the journal")).unwrap();
    for k in ["DOMAIN", "RESOURCE", "BEFORE", "AFTER", "REASON", "CYCLE"] {
        assert!(first[k].is_string(), "{k} missing: {first}");
    }

    // Reload, valid: swapped in.
    let good = std::fs::read_to_string(c.config()).unwrap();
    std::fs::write(
        c.config(),
        good.replace("interval = \"5s\"", "interval = \"7s\""),
    )
    .unwrap();
    c.ok(&["systemctl", "reload", "virtpoold"]);
    c.wait_show("config reloaded", 10, |_| {
        c.journal().contains("config reloaded")
    });
    // Reload, invalid: `systemctl reload` fails (the check before the
    // signal), the agent is not even asked; a SIGHUP sent anyway is refused
    // by the agent itself; `virtpoolctl reload` fails with the reason. The
    // process and its config stay.
    let bad = good.replace("interval = \"5s\"", "interval = \"soon\"");
    std::fs::write(c.config(), &bad).unwrap();
    let o = c.run(&["systemctl", "reload", "virtpoold"]);
    assert!(!o.status.success(), "reload of an invalid config succeeded");
    // The check's complaint reaches the journal through its own stream; it
    // may land a moment after `systemctl` returns.
    c.wait_show("the check's reason in the journal", 10, |_| {
        c.journal().contains("\"soon\"")
    });
    c.ok(&["systemctl", "kill", "-s", "HUP", "virtpoold"]);
    c.wait_show("reload refused", 10, |_| {
        c.journal().contains("reload refused")
    });
    let o = c.run(&["virtpoolctl", "--socket", sock, "reload"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refused") && err.contains("soon"), "{err}");
    let s = c.show(&["ActiveState", "MainPID"]);
    assert_eq!(
        (s["ActiveState"].as_str(), &s["MainPID"]),
        ("active", &pid1)
    );
    let v: serde_json::Value =
        serde_json::from_str(&c.ok(&["virtpoolctl", "--socket", sock, "--json", "status"]))
            .unwrap();
    let err = v["config_error"].as_str().unwrap_or_default();
    assert!(err.contains("virtpool.toml") && err.contains("soon"), "{v}");
    std::fs::write(c.config(), &good).unwrap();

    let out = c.ok(&["virtpoolctl", "--socket", sock, "reload"]);
    assert!(
        out.contains("config reloaded from /etc/virtpool/virtpool.toml"),
        "{out}"
    );

    // Stop: exit 0, state saved, runtime directory removed.
    c.ok(&["systemctl", "stop", "virtpoold"]);
    let s = c.show(&["ActiveState", "Result", "ExecMainStatus"]);
    assert_eq!(s["ActiveState"], "inactive", "{s:?}");
    assert_eq!(
        (s["Result"].as_str(), s["ExecMainStatus"].as_str()),
        ("success", "0")
    );
    assert!(!c.run(&["test", "-e", "/run/virtpool"]).status.success());
    assert!(c.journal().contains("state saved"));

    // A killed agent is restarted.
    c.ok(&["systemctl", "start", "virtpoold"]);
    let pid2 = c.show(&["MainPID"])["MainPID"].clone();
    c.ok(&["systemctl", "kill", "-s", "KILL", "virtpoold"]);
    c.wait_show("restart after SIGKILL", 20, |s| {
        s["ActiveState"] == "active" && s["NRestarts"] == "1" && s["MainPID"] != pid2
    });

    // An invalid config at start: the start fails, and is not retried.
    std::fs::write(
        c.config(),
        good.replace("interval = \"5s\"", "interval = \"soon\""),
    )
    .unwrap();
    let o = c.run(&["systemctl", "restart", "virtpoold"]);
    assert!(
        !o.status.success(),
        "restart with an invalid config succeeded"
    );
    let before = c.show(&["NRestarts"])["NRestarts"].clone();
    std::thread::sleep(Duration::from_secs(7)); // past RestartSec=5s
    let s = c.show(&["ActiveState", "NRestarts", "ExecMainStatus"]);
    assert_eq!(s["ActiveState"], "failed", "{s:?}\n{}", c.journal());
    assert_eq!(s["ExecMainStatus"], "78", "{s:?}");
    assert_eq!(s["NRestarts"], before, "restarted after exit 78: {s:?}");
    assert!(c.journal().contains("interval"), "{}", c.journal());
    std::fs::write(c.config(), &good).unwrap();

    // A corrupt state file at start: the same (exit 78, no restart).
    c.ok(&["systemctl", "reset-failed", "virtpoold"]);
    c.ok(&[
        "sh",
        "-c",
        "cd /var/lib/virtpool && { [ ! -e state.json ] || mv state.json state.json.good; } \
         && printf '{\"version\": 1, \"pau' > state.json",
    ]);
    let o = c.run(&["systemctl", "start", "virtpoold"]);
    assert!(!o.status.success(), "start with a corrupt state succeeded");
    let before = c.show(&["NRestarts"])["NRestarts"].clone();
    std::thread::sleep(Duration::from_secs(7));
    let s = c.show(&["ActiveState", "NRestarts", "ExecMainStatus"]);
    assert_eq!(
        (s["ActiveState"].as_str(), s["ExecMainStatus"].as_str()),
        ("failed", "78"),
        "{s:?}\n{}",
        c.journal()
    );
    assert_eq!(
        s["NRestarts"], before,
        "restarted after a corrupt state: {s:?}"
    );
    assert!(c.journal().contains("state.json"), "{}", c.journal());
    c.ok(&[
        "sh",
        "-c",
        "cd /var/lib/virtpool && rm state.json && { [ ! -e state.json.good ] || mv state.json.good state.json; }",
    ]);

    // The watchdog, shortened to 4 s by a drop-in: the agent's pings keep
    // it running across several intervals; once it is stopped (SIGSTOP,
    // as a hung cycle would be) systemd kills and restarts it.
    c.ok(&["mkdir", "-p", "/etc/systemd/system/virtpoold.service.d"]);
    c.ok(&[
        "sh",
        "-c",
        "printf '[Service]\\nWatchdogSec=4s\\n' > /etc/systemd/system/virtpoold.service.d/watchdog.conf",
    ]);
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "reset-failed", "virtpoold"]);
    c.ok(&["systemctl", "start", "virtpoold"]);
    let s = c.show(&["MainPID", "NRestarts", "WatchdogUSec"]);
    assert_eq!(s["WatchdogUSec"], "4s", "{s:?}");
    std::thread::sleep(Duration::from_secs(10));
    let s2 = c.show(&["ActiveState", "MainPID", "NRestarts"]);
    assert_eq!(
        (s2["ActiveState"].as_str(), &s2["MainPID"], &s2["NRestarts"]),
        ("active", &s["MainPID"], &s["NRestarts"]),
        "killed while pinging\n{}",
        c.journal()
    );
    c.ok(&["systemctl", "kill", "-s", "STOP", "virtpoold"]);
    let stopped = s["MainPID"].clone();
    c.wait_show("restart after a watchdog timeout", 30, |st| {
        st["ActiveState"] == "active" && st["MainPID"] != stopped
    });
    assert!(
        c.journal().contains("Failed with result 'watchdog'"),
        "{}",
        c.journal()
    );

    // Removing the package stops the agent.
    c.ok(&["dpkg", "-r", "virtpool"]);
    let s = c.show(&["ActiveState", "LoadState"]);
    assert_ne!(s["ActiveState"], "active", "{s:?}");
    assert!(!c
        .run(&["test", "-e", "/usr/bin/virtpoold"])
        .status
        .success());
}
