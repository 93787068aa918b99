//! The real `virtpoold` as systemd runs it: `NOTIFY_SOCKET` points at a
//! datagram socket this test owns, `WATCHDOG_USEC` is set, the config is
//! the demo pools on the libvirt test driver. Checks READY, watchdog pings,
//! SIGHUP with a broken and a good config, SIGTERM.
#![allow(clippy::unwrap_used)]

use crate::support::daemon::{free_port, gaps_and_median};
use crate::support::process::signal;
use crate::support::process::KillOnDrop;
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEMO: &str = include_str!("../../config/demo.toml");

/// The demo config with its paths moved into `dir`, metrics on TCP `port`.
/// The daemons here rotate their audit log at 1 MiB (not the default 10).
const AUDIT_MAX: usize = 1 << 20;

fn config_text(dir: &Path, port: u16, extra: &str) -> String {
    let pools = &DEMO[DEMO.find("[host]").unwrap()..];
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo-host.xml");
    format!(
        "[agent]\nlibvirt_uri = \"test://{}\"\ninterval = \"30s\"\nstate_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{port}\"\naudit_max_size = \"{AUDIT_MAX}B\"\n\n[api]\nsocket = \"{}\"\ngroup = \"root\"\n\n{pools}\n{extra}",
        node.display(),
        dir.join("state").display(),
        dir.join("virtpool.sock").display(),
    )
}

/// Fails unless the last record of the audit log `file` is `stopping`.
fn assert_stopping_last(file: &Path) {
    let audit = std::fs::read_to_string(file).unwrap();
    assert!(
        audit
            .lines()
            .last()
            .unwrap()
            .contains("\"event\":\"stopping\""),
        "{audit}"
    );
}

/// `GET path` over plain HTTP/1.1 on a connected stream; returns (status
/// line, body).
fn get_on(mut s: impl std::io::Read + std::io::Write, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// `GET path` on the TCP metrics listener.
fn http_get(port: u16, path: &str) -> (String, String) {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    get_on(s, path)
}

/// `GET path` on the API's Unix socket.
fn api_get(sock: &Path, path: &str) -> (String, String) {
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    get_on(s, path)
}

/// `GET path` on the API as JSON, expecting 200.
fn api_json(sock: &Path, path: &str) -> serde_json::Value {
    let (st, body) = api_get(sock, path);
    assert!(st.contains(" 200 "), "{path}: {st} {body}");
    serde_json::from_str(&body).unwrap()
}

struct Daemon {
    child: KillOnDrop,
    rx: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
}

impl Daemon {
    /// Rewrites the config file with `extra` after the demo pools.
    fn write_config(&self, extra: &str) {
        std::fs::write(&self.config, config_text(self.dir.path(), self.port, extra)).unwrap();
    }

    fn start(watchdog: Duration) -> Daemon {
        Daemon::start_in(tempfile::tempdir().unwrap(), watchdog)
    }

    /// Starts the agent over `dir` (its state directory kept from a
    /// previous run, if any).
    fn start_in(dir: tempfile::TempDir, watchdog: Duration) -> Daemon {
        let config = dir.path().join("virtpool.toml");
        let port = free_port();
        std::fs::write(&config, config_text(dir.path(), port, "")).unwrap();
        let notify = dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify);
        let sock = UnixDatagram::bind(&notify).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send((Instant::now(), msg)).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
        let child = Command::new(env!("CARGO_BIN_EXE_virtpoold"))
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("stderr.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Daemon {
            child: KillOnDrop(child),
            rx,
            seen: Vec::new(),
            dir,
            config,
            port,
        }
    }

    /// Waits (up to `timeout`) for a message with a line `line`; returns
    /// the whole message. Everything received is kept in `seen`.
    fn wait_line(&mut self, line: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {line:?} within {timeout:?}; got {:#?}",
                self.seen.iter().map(|m| &m.1).collect::<Vec<_>>()
            );
            if let Ok(m) = self.rx.recv_timeout(left) {
                self.seen.push(m.clone());
                if m.1.lines().any(|l| l == line) {
                    return m;
                }
            }
        }
    }

    /// The last STATUS= line received so far.
    fn last_status(&mut self) -> String {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        self.seen
            .iter()
            .rev()
            .flat_map(|(_, m)| m.lines())
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or_default()
            .to_string()
    }

    /// Writes `extra` into the config and sends SIGHUP: `RELOADING=1` (its
    /// whole message returned), `READY=1`, then the status line until it
    /// shows `want` (within 10 s; returned).
    fn reload(&mut self, extra: &str, want: &str) -> (String, String) {
        self.write_config(extra);
        signal(&mut self.child, Signal::SIGHUP);
        let (_, msg) = self.wait_line("RELOADING=1", Duration::from_secs(10));
        self.wait_line("READY=1", Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = self.last_status();
        while !status.contains(want) {
            assert!(
                Instant::now() < deadline,
                "reload: {want:?} not in {status}"
            );
            self.wait_line("WATCHDOG=1", Duration::from_secs(5));
            status = self.last_status();
        }
        (msg, status)
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "virtpoold did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn notify_watchdog_reload_and_stop_under_a_fake_systemd() {
    let watchdog = Duration::from_millis(1000);
    let mut d = Daemon::start(watchdog);

    // READY after the first cycle (its STATUS= says what it saw).
    let (_, ready) = d.wait_line("READY=1", Duration::from_secs(30));
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_default()
        .to_string();
    assert!(status.starts_with("cycle 1: 3 pools"), "{status}");
    assert!(status.contains("libvirt up"), "{status}");
    let ready_at = Instant::now();
    let sock = d.dir.path().join("virtpool.sock");

    // READY means the API answers, from a finished cycle.
    let st = api_json(&sock, "/v1/status");
    assert!(st["cycle"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["config_error"].is_null(), "{st}");
    let (code, body) = api_get(&sock, "/metrics");
    assert!(code.contains(" 200 "), "{code}");
    assert!(
        body.contains("virtpool_pool_budget_disk_iops{pool=\"db\"} 20000\n"),
        "{body}"
    );

    // agent.metrics_listen: /metrics over TCP, served from the last cycle.
    let (status_line, body) = http_get(d.port, "/metrics");
    assert!(status_line.contains(" 200 "), "{status_line}");
    assert!(
        body.contains("virtpool_pool_budget_vcpus{pool=\"web\"} 16\n"),
        "{body}"
    );
    // At least the first cycle (a libvirt event may already have run another).
    let cycles: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("virtpool_cycles_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(cycles >= 1.0, "{body}");

    // Watchdog pings at about half the interval (the monitor interval is
    // 30 s, so these come from the watchdog tick, not from cycles).
    let mut pings = Vec::new();
    while pings.len() < 6 {
        let (t, _) = d.wait_line("WATCHDOG=1", Duration::from_secs(5));
        if t >= ready_at {
            pings.push(t);
        }
    }
    let (gaps, median) = gaps_and_median(&pings);
    assert!(
        median >= Duration::from_millis(350) && median <= Duration::from_millis(700),
        "watchdog gaps {gaps:?} for a {watchdog:?} watchdog"
    );
    assert!(
        gaps.iter().all(|g| *g < watchdog),
        "watchdog gaps {gaps:?} for a {watchdog:?} watchdog"
    );

    // SIGHUP with a broken config: RELOADING=1, then READY=1 again; the
    // agent keeps running the old config and reports the error.
    let (msg, status) = d.reload("[pools.bad]\nvcpus = { budget = 1000 }\n", "config error");
    assert!(
        msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{msg}"
    );
    assert!(status.contains("3 pools"), "old config kept: {status}");
    assert!(status.contains("reload refused"), "{status}");
    assert!(d.child.try_wait().unwrap().is_none(), "it kept running");
    let st = api_json(&sock, "/v1/status");
    let err = st["config_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("reload refused") && err.contains("bad"),
        "{st}"
    );
    let pools = api_json(&sock, "/v1/pools").to_string();
    assert!(
        !pools.contains("\"spare\"") && !pools.contains("\"bad\""),
        "{pools}"
    );
    // Still pinging after the refused reload.
    d.wait_line("WATCHDOG=1", Duration::from_secs(5));

    // SIGHUP with a good config: a fourth pool appears, the error goes.
    let (_, status) = d.reload(
        "[pools.spare]\ndomains = [\"dev-sandbox\"]\nvcpus = { budget = 4 }\n",
        "4 pools",
    );
    assert!(!status.contains("config error"), "{status}");
    let st = api_json(&sock, "/v1/status");
    assert!(st["config_error"].is_null(), "{st}");
    let pools = api_json(&sock, "/v1/pools").to_string();
    assert!(pools.contains("\"spare\""), "{pools}");
    let (_, body) = http_get(d.port, "/metrics");
    assert!(
        body.contains("virtpool_config_reloads_total{result=\"refused\"} 1\n")
            && body.contains("virtpool_config_reloads_total{result=\"ok\"} 1\n")
            && body.contains("virtpool_config_last_reload_successful 1\n")
            && body.contains("virtpool_pool_budget_vcpus{pool=\"spare\"} 4\n"),
        "{body}"
    );

    // The audit log has both reloads.
    let audit = std::fs::read_to_string(d.dir.path().join("state/audit.jsonl")).unwrap();
    let reloads: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "config_reload")
        .collect();
    assert_eq!(reloads.len(), 2, "{audit}");
    assert_eq!(reloads[0]["ok"], false);
    assert!(
        reloads[0]["error"].as_str().unwrap().contains("bad"),
        "{audit}"
    );
    assert_eq!(reloads[1]["ok"], true);
    assert!(audit.contains("\"event\":\"action\""), "{audit}");
    // ... and GET /v1/events (and its alias /v1/audit) serve the same
    // records, numbered.
    let served = api_json(&sock, "/v1/events?limit=1000");
    assert_eq!(served, api_json(&sock, "/v1/audit?limit=1000"));
    let served = served["events"].as_array().unwrap();
    assert_eq!(served.len(), audit.lines().count());
    assert_eq!(served[0]["event"], "started");
    assert!(served
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    let since = served[served.len() - 2]["seq"].as_u64().unwrap();
    let tail = api_json(&sock, &format!("/v1/events?since={since}"));
    assert_eq!(tail["events"].as_array().unwrap().len(), 1);

    // `virtpoolctl reload` (POST /v1/reload): the same reload, answered
    // when it is done. A broken file: exit 1 with the reason, the running
    // config stays; a good one: swapped in.
    let ctl_reload = || {
        Command::new(env!("CARGO_BIN_EXE_virtpoolctl"))
            .arg("--socket")
            .arg(&sock)
            .arg("reload")
            .output()
            .unwrap()
    };
    d.write_config("[pools.bad]\nvcpus = { budget = 1000 }\n");
    let out = ctl_reload();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused") && err.contains("bad"), "{err}");
    d.wait_line("READY=1", Duration::from_secs(10));
    assert!(api_json(&sock, "/v1/pools")
        .to_string()
        .contains("\"spare\""));
    d.write_config("[pools.extra]\ndomains = [\"dev-sandbox\"]\nvcpus = { budget = 2 }\n");
    let out = ctl_reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("config reloaded from "), "{text}");
    let pools = api_json(&sock, "/v1/pools").to_string();
    assert!(
        pools.contains("\"extra\"") && !pools.contains("\"spare\""),
        "{pools}"
    );

    // SIGTERM: STOPPING=1, exit 0, state persisted, no socket left.
    signal(&mut d.child, Signal::SIGTERM);
    d.wait_line("STOPPING=1", Duration::from_secs(10));
    let st = d.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0));
    assert!(d.dir.path().join("state/state.json").exists());
    assert!(!d.dir.path().join("virtpool.sock").exists());
    assert_stopping_last(&d.dir.path().join("state/audit.jsonl"));
}

#[test]
fn an_inherited_journal_stream_that_is_not_our_stderr_logs_to_stderr() {
    // JOURNAL_STREAM names a different file than our stderr (a child of a
    // service that inherited the variable): human-readable stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_virtpoold"))
        .args([
            "--once",
            "--observe",
            "--uri",
            "test:///nonexistent/node.xml",
            "--config",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"))
        .env("JOURNAL_STREAM", "1:1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "libvirt unreachable");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARN") && err.contains("cannot observe libvirt"),
        "{err}"
    );
}

/// Audit records `seq` 1..=n (runtime changes) filling `file` to `size`
/// bytes exactly.
fn seed_audit(file: &Path, size: usize) -> u64 {
    use virtpool::agent::audit::{Event, EventKind};
    let line = |seq: u64, message: String| {
        let mut ev = Event::now(EventKind::Change { uid: 0, message });
        ev.seq = seq;
        let mut l = serde_json::to_vec(&ev).unwrap();
        l.push(b'\n');
        l
    };
    let mut buf = Vec::with_capacity(size);
    let mut seq = 0;
    while size - buf.len() > 300 {
        seq += 1;
        buf.extend(line(seq, format!("seed {seq}")));
    }
    seq += 1;
    let base = line(seq, String::new()).len();
    let pad = "x".repeat(size - buf.len() - base);
    buf.extend(line(seq, pad));
    assert_eq!(buf.len(), size);
    std::fs::write(file, buf).unwrap();
    seq
}

#[test]
fn events_survive_a_restart_and_are_read_across_rotation() {
    // An audit log 20 bytes short of the configured rotation size
    // (`agent.audit_max_size`): the agent's first records rotate it to
    // audit.jsonl.1.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let max = AUDIT_MAX;
    let seeded = seed_audit(&state.join("audit.jsonl"), max - 20);
    let mut d = Daemon::start_in(dir, Duration::from_secs(10));
    d.wait_line("READY=1", Duration::from_secs(30));
    let sock = d.dir.path().join("virtpool.sock");
    let live = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    assert!(
        live.starts_with(&format!("{{\"seq\":{},", seeded + 1)),
        "{live}"
    );
    assert_eq!(
        std::fs::metadata(state.join("audit.jsonl.1"))
            .unwrap()
            .len(),
        (max - 20) as u64
    );

    // A window across the boundary: the last seeded records from .1, then
    // this run's from the live file.
    let v = api_json(&sock, &format!("/v1/events?since={}", seeded - 3));
    let evs = v["events"].as_array().unwrap();
    let seqs: Vec<u64> = evs.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        &seqs[..4],
        &[seeded - 2, seeded - 1, seeded, seeded + 1],
        "{v}"
    );
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{v}");
    assert_eq!(evs[0]["message"], format!("seed {}", seeded - 2));
    assert_eq!(evs[3]["event"], "started");
    assert!(evs[4..].iter().any(|e| e["event"] == "action"), "{v}");
    // The default answer is the newest 100, oldest first.
    let v = api_json(&sock, "/v1/events");
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 100);
    assert_eq!(evs[99]["seq"], *seqs.last().unwrap(), "{v}");

    // Stop, start again over the same state directory.
    signal(&mut d.child, Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let first_run: Vec<serde_json::Value> = std::fs::read_to_string(state.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stopped = first_run.last().unwrap().clone();
    assert_eq!(stopped["event"], "stopping");
    // Each action was also one structured log line (human stderr: no
    // journal here), with the same fields as its audit record.
    let log = std::fs::read_to_string(d.dir.path().join("stderr.log")).unwrap();
    let action = first_run.iter().find(|e| e["event"] == "action").unwrap();
    let line = log
        .lines()
        .find(|l| {
            l.contains(" applied ")
                && l.contains(&format!(
                    "domain=\"{}\"",
                    action["domain"].as_str().unwrap()
                ))
                && l.contains(&format!(
                    "resource=\"{}\"",
                    action["resource"].as_str().unwrap()
                ))
        })
        .unwrap_or_else(|| panic!("no log line for {action}: {log}"));
    for k in ["before", "after", "reason"] {
        let v = action[k].as_str().unwrap();
        assert!(
            line.contains(&format!("{k}=\"{v}\"")) || line.contains(&format!("{k}={v}")),
            "{k}: {line}"
        );
    }
    assert!(line.contains("result=\"ok\""), "{line}");
    // The record names its cycle (as the log line does) and carries the
    // action in numbers, as /v1/plan shows it.
    let cycle = action["cycle"].as_u64().unwrap();
    assert!(cycle >= 1, "{action}");
    assert!(line.contains(&format!("cycle={cycle}")), "{line}");
    let a = &action["action"];
    assert_eq!(a["domain"], action["domain"], "{action}");
    assert!(a["kind"].as_str().unwrap().starts_with("set_"), "{action}");
    assert!(a["to"].is_u64() || a["to"].is_object(), "{action}");
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    drop(d);
    let mut d = Daemon::start_in(dir, Duration::from_secs(10));
    d.wait_line("READY=1", Duration::from_secs(30));

    // Everything of the first run is served, numbering goes on, and the
    // seeded records are still reachable in the rotated file.
    let v = api_json(&sock, &format!("/v1/events?since={seeded}&limit=1000"));
    let evs = v["events"].as_array().unwrap();
    assert_eq!(&evs[..first_run.len()], &first_run[..], "{v}");
    let restarted = &evs[first_run.len()];
    assert_eq!(restarted["event"], "started", "{v}");
    assert_eq!(
        restarted["seq"].as_u64(),
        Some(stopped["seq"].as_u64().unwrap() + 1)
    );
    let v = api_json(&sock, "/v1/events?since=0&limit=1000");
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 1000);
    assert!(evs[0]["seq"].as_u64().unwrap() < seeded, "{v}");

    // virtpoolctl events shows the first run's stop and both starts.
    let out = Command::new(env!("CARGO_BIN_EXE_virtpoolctl"))
        .arg("--socket")
        .arg(&sock)
        .args(["events", "--limit", "1000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let stop_row = text
        .lines()
        .find(|l| l.starts_with(&format!("{} ", stopped["seq"])))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(stop_row.contains(" stopping"), "{stop_row}");
    assert_eq!(
        text.lines().filter(|l| l.contains(" started ")).count(),
        2,
        "{text}"
    );

    // SIGINT stops it like SIGTERM: exit 0, socket gone, stop recorded.
    signal(&mut d.child, Signal::SIGINT);
    d.wait_line("STOPPING=1", Duration::from_secs(10));
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert!(!sock.exists());
    assert_stopping_last(&state.join("audit.jsonl"));
}
