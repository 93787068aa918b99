//! `virtpoolctl top` in a real terminal: tmux runs it (a private tmux
//! server, killed at the end) against the real `virtpoold` on the demo
//! host (libvirt test driver, enforcing, a cycle a second); the test
//! reads the screen with `capture-pane` and types keys with `send-keys`.
//! tmux is installed with apt-get if missing (waiting for the dpkg lock).

use crate::support::daemon::{bin, demo_config, Daemon};
use crate::support::libvirtd::poll;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// tmux, installed if missing.
fn ensure_tmux() {
    let have = || {
        Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have() {
        return;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("apt-get: {e}"))
    };
    let lock = ["-o", "DPkg::Lock::Timeout=600"];
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(lock);
    install.push("tmux");
    let mut out = apt(&install);
    if !out.status.success() {
        let mut update = vec!["update", "-q"];
        update.extend(lock);
        apt(&update);
        out = apt(&install);
    }
    assert!(
        have(),
        "tmux is needed and could not be installed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private tmux server (its own socket name), killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Waits (up to 30 s) for a screen that `ok` accepts.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no screen with {what} in 30 s; the last:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The cycle number in the header.
fn cycle(screen: &str) -> u64 {
    let rest = screen.split("virtpool top — cycle ").nth(1).unwrap_or("");
    rest.split(' ').next().unwrap_or("").parse().unwrap_or(0)
}

#[test]
fn top_refreshes_sorts_filters_and_pauses_in_a_real_terminal() {
    ensure_tmux();
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(dir.path(), "1s", "enforce");
    let d = Daemon::start(&cfg);
    let tmux = Tmux {
        name: format!("virtpool-top-{}", std::process::id()),
    };
    // The shell that runs top writes its exit status: the test does not
    // depend on when tmux reaps its panes' processes (under load it was
    // seen to leave one a zombie for more than 30 s).
    let status = dir.path().join("top.status");
    let cmd = format!(
        "{} --socket {} top --delay 0.3; echo $? > {}",
        bin("virtpoolctl").display(),
        d.sock.display(),
        status.display()
    );
    let o = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "45",
        &cmd,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The pane outlives top, to see how it left the terminal.
    tmux.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);

    // The whole screen: header with the last cycle's timings and the host,
    // pools with their bars, the first pool's history, every member.
    let s = tmux.wait("pools, history and members", |s| {
        s.contains("virtpool top — cycle ")
            && s.contains("last cycle ")
            && s.contains("memory pressure")
            && s.contains("│  web  ")
            && s.contains("[██████] 16/16")
            && s.contains("┌ batch: the last ")
            && s.contains("members of every pool — 11 shown of 11, sorted by name")
            && s.contains("web-3")
    });
    let first = cycle(&s);
    assert!(first >= 1, "{s}");
    // It refreshes by itself.
    tmux.wait("a later cycle", |s| cycle(s) > first);

    // s: sorted by pool, then by vCPUs (db-primary has the most).
    tmux.keys(&["s"]);
    tmux.wait("sorted by pool", |s| s.contains("sorted by pool"));
    tmux.keys(&["s"]);
    let s = tmux.wait("sorted by vcpus", |s| s.contains("sorted by vcpus"));
    let order: Vec<&str> = s
        .lines()
        .filter_map(|l| l.strip_prefix('│'))
        .filter(|l| l.starts_with("db-") || l.starts_with("web-") || l.starts_with("batch-"))
        .collect();
    assert!(order[0].starts_with("db-primary"), "{s}");
    // S: reversed.
    tmux.keys(&["S"]);
    tmux.wait("reversed", |s| s.contains("sorted by vcpus (reversed)"));

    // f: one pool at a time (batch, db, web), its members and history.
    tmux.keys(&["f"]);
    tmux.wait("batch only", |s| {
        s.contains("▶ batch") && s.contains("members of batch — 4 shown of 4")
    });
    tmux.keys(&["f", "f"]);
    let s = tmux.wait("web only", |s| {
        s.contains("▶ web")
            && s.contains("members of web — 4 shown of 4")
            && s.contains("┌ web: the last ")
    });
    assert!(!s.contains("db-primary"), "{s}");

    // p: the chosen pool paused, through the API (the agent says so too).
    tmux.keys(&["p"]);
    tmux.wait("web paused", |s| {
        s.contains("pool \"web\" paused") && s.contains("▶ web [paused]")
    });
    let st = d.json(&["status"]);
    assert_eq!(
        st["agent"]["paused_pools"],
        serde_json::json!(["web"]),
        "{st}"
    );
    // r: resumed.
    tmux.keys(&["r"]);
    tmux.wait("web resumed", |s| {
        s.contains("pool \"web\" resumed") && !s.contains("[paused]")
    });
    let st = d.json(&["status"]);
    assert_eq!(st["agent"]["paused_pools"], serde_json::json!([]), "{st}");

    // q: top ends with exit 0 and leaves the alternate screen.
    tmux.keys(&["q"]);
    let code = poll(Duration::from_secs(30), || {
        std::fs::read_to_string(&status)
            .ok()
            .filter(|c| c.ends_with('\n'))
    })
    .unwrap_or_else(|| panic!("top did not end: {}", tmux.screen()));
    assert_eq!(code.trim(), "0", "top's exit status");
    let after = tmux.screen();
    assert!(!after.contains("pools: allocated / budget"), "{after}");
}
