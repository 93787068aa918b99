//! Attack suite for the agent's listeners: the real `virtpoold` on the
//! libvirt test driver (the demo host), attacked on its Unix socket and on
//! its metrics TCP listener (loopback) the way an outside tester did:
//! clients that pipeline requests and never read, idle floods of 1,000+
//! connections (from the good client's own uid and from another uid),
//! changes whose client hangs up before the answer, unprivileged peers.
//! Each test asserts that a good client is still answered within a second
//! (the median of several requests), that the agent's open files stay
//! bounded and come back, and that the agent is alive at the end.
//!
//! Bounds: each test holds at most 1,100 sockets (the test raises its own
//! soft open-file limit to the hard one) and waits at most ~30 s for the
//! agent's 10 s idle and write timeouts. Requests as another uid run this
//! test binary again as `nobody` (the `helper_as_another_uid` entry).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/daemon.rs"]
#[allow(dead_code)]
mod daemon;
#[path = "support/process.rs"]
#[allow(dead_code)]
mod process;
use daemon::{free_port, spawn_logged};

const DEMO: &str = include_str!("../config/demo.toml");
/// `nobody` / `nogroup` on Debian.
const NOBODY: u32 = 65534;
/// The good client's answer must come within this (median).
const FAST: Duration = Duration::from_secs(1);
/// The agent's idle (header) and write timeouts are 10 s: closed
/// connections must be gone well within this.
const CLEANUP: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ agent

struct Opts {
    group: &'static str,
    metrics: bool,
    /// (soft, hard) open-file limits to start the agent with.
    nofile: Option<(u64, u64)>,
    /// A metrics port to use instead of a free one.
    port: Option<u16>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            group: "root",
            metrics: false,
            nofile: None,
            port: None,
        }
    }
}

struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    sock: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Agent {
    /// Starts `virtpoold` on a private copy of the demo host (interval 1 h:
    /// cycles run only when asked). Does not wait for it.
    fn spawn(o: Opts) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("vpattack-")
            .tempdir_in("/tmp")
            .unwrap();
        // Traversable, so another uid can reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo-host.xml");
        let sock = dir.path().join("api.sock");
        let port = o.port.unwrap_or_else(free_port);
        let metrics = if o.metrics || o.port.is_some() {
            format!("metrics_listen = \"127.0.0.1:{port}\"\n")
        } else {
            String::new()
        };
        let pools = &DEMO[DEMO.find("[host]").unwrap()..];
        let text = format!(
            "[agent]\nlibvirt_uri = \"test://{}\"\ninterval = \"1h\"\nstate_dir = \"{}\"\n{metrics}\n[api]\nsocket = \"{}\"\ngroup = \"{}\"\n\n{pools}",
            node.display(),
            dir.path().join("state").display(),
            sock.display(),
            o.group,
        );
        let cfg = dir.path().join("virtpool.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join("virtpoold.log");
        let bin = env!("CARGO_BIN_EXE_virtpoold");
        let cmd = match o.nofile {
            Some((soft, hard)) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" \"$@\""
                    ))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = spawn_logged(cmd, &cfg, &[], &log);
        Agent {
            child: Some(child),
            dir,
            sock,
            port,
            log,
        }
    }

    /// Starts it and waits until it answers after a first cycle.
    fn start(o: Opts) -> Agent {
        let mut a = Agent::spawn(o);
        let t0 = Instant::now();
        loop {
            a.assert_alive();
            if let Ok(v) = status(&a.sock) {
                if v["cycle"].as_u64().unwrap_or(0) >= 1 {
                    return a;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "not ready after 20 s; log:\n{}",
                a.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        let c = self.child.as_mut().unwrap();
        if let Some(st) = c.try_wait().unwrap() {
            panic!("virtpoold exited ({st}); log:\n{}", self.log_text());
        }
    }

    /// Alive, and no panic in its log.
    fn assert_healthy(&mut self) {
        self.assert_alive();
        let log = self.log_text();
        assert!(!log.contains("panicked"), "a thread panicked:\n{log}");
    }

    /// Open file descriptors of the agent.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Waits (≤ [`CLEANUP`]) until the agent holds at most `max` fds.
    fn wait_fds_at_most(&self, max: usize, why: &str) -> Duration {
        let t0 = Instant::now();
        loop {
            let n = self.fds();
            if n <= max {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < CLEANUP,
                "{why}: the agent still holds {n} fds (want ≤ {max}) after {CLEANUP:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

// ------------------------------------------------------------------ HTTP

/// One request on a fresh blocking connection (`Connection: close`):
/// (status, body).
fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw(method, path, body).as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    parse(&text)
}

fn raw(method: &str, path: &str, body: Option<&str>) -> String {
    let body = body.unwrap_or("");
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn parse(text: &str) -> std::io::Result<(u16, String)> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

fn status(sock: &Path) -> std::io::Result<serde_json::Value> {
    let (code, body) = request(sock, "GET", "/v1/status", None)?;
    if code != 200 {
        return Err(std::io::Error::other(format!("{code}: {body}")));
    }
    serde_json::from_str(&body).map_err(std::io::Error::other)
}

fn json(sock: &Path, path: &str) -> serde_json::Value {
    let (code, body) = request(sock, "GET", path, None).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `GET path` as a good client would, over a fresh connection made by
/// `connect`, bounded at 10 s: the time to the whole answer.
async fn timed<S, F>(connect: F, path: &str) -> Result<Duration, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: std::future::Future<Output = std::io::Result<S>>,
{
    let t0 = Instant::now();
    let exchange = async {
        let mut s = connect.await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(raw("GET", path, None).as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        match parse(&text) {
            Ok((200, _)) => Ok(()),
            Ok((c, b)) => Err(format!("status {c}: {b}")),
            Err(e) => Err(e.to_string()),
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(())) => Ok(t0.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// Seven good requests one after the other: every one answered, the
/// median within [`FAST`]. Returns the times.
async fn assert_answered_fast<S, F, C>(what: &str, mut connect: C, path: &str) -> Vec<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: std::future::Future<Output = std::io::Result<S>>,
    C: FnMut() -> F,
{
    let mut times = Vec::new();
    for i in 0..7 {
        match timed(connect(), path).await {
            Ok(t) => times.push(t),
            Err(e) => panic!("{what}: good request {i} failed: {e} (earlier: {times:?})"),
        }
    }
    let mut sorted = times.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    eprintln!("{what}: good client GET {path}: median {median:?}, all {times:?}");
    assert!(
        median < FAST,
        "{what}: median {median:?} ≥ {FAST:?}: {times:?}"
    );
    times
}

async fn good_socket_client(what: &str, sock: &Path) -> Vec<Duration> {
    let sock = sock.to_owned();
    assert_answered_fast(
        what,
        || tokio::net::UnixStream::connect(sock.clone()),
        "/v1/status",
    )
    .await
}

// ---------------------------------------------------------------- attackers

/// Raises this process's soft open-file limit to the hard one; returns it.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    hard
}

/// How many attacking sockets a test may hold: 1,000 (1,100 for TCP) when
/// the open-file limit allows it next to the other tests of this binary
/// (run two at a time), else what it allows, but never fewer than 400
/// (above every cap of the agent).
fn attackers(want: usize) -> usize {
    let limit = usize::try_from(raise_nofile()).unwrap_or(usize::MAX);
    let n = want.min(limit.saturating_sub(200) / 2);
    assert!(
        n >= 400,
        "open-file hard limit {limit} is too low for this test (needs about {})",
        2 * want + 200
    );
    n
}

/// `n` connections to the socket that send nothing. Connections the agent
/// refused count too (they are closed on its side at once).
async fn idle_unix(sock: &Path, n: usize) -> Vec<tokio::net::UnixStream> {
    let mut v = Vec::with_capacity(n);
    let t0 = Instant::now();
    while v.len() < n && t0.elapsed() < Duration::from_secs(20) {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(sock),
        )
        .await
        {
            v.push(s);
        }
    }
    v
}

/// `n` connections that each pipeline `per` `GET /v1/pools` and never read
/// (each answer is ~7 KB: far more than the socket buffers take).
async fn pipelining_unix(sock: &Path, n: usize, per: usize) -> Vec<tokio::net::UnixStream> {
    let reqs = "GET /v1/pools HTTP/1.1\r\nHost: x\r\n\r\n".repeat(per);
    let mut v = Vec::with_capacity(n);
    let t0 = Instant::now();
    while v.len() < n && t0.elapsed() < Duration::from_secs(20) {
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(sock),
        )
        .await
        else {
            continue;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(reqs.as_bytes())).await;
        v.push(s);
    }
    v
}

async fn idle_tcp(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::with_capacity(n);
    let t0 = Instant::now();
    while v.len() < n && t0.elapsed() < Duration::from_secs(20) {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            v.push(s);
        }
    }
    v
}

// ------------------------------------------------------- another uid

/// This binary run again as `nobody`: `hold SOCK N` opens N connections and
/// keeps them until its stdin closes; `request SOCK` sends the raw request
/// in `VP_ATTACK_REQUEST` and prints the answer's status.
struct Helper {
    child: Child,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HELPER_ENV: &str = "VP_ATTACK_HELPER";

/// Whether this test can act as another uid (it must be root); says so
/// loudly when not, and fails in CI.
fn can_switch_uid() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = "not root: cannot connect as another uid";
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("\n*** SKIPPED: {why} ***\n");
    false
}

fn helper_cmd(args: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "helper_as_another_uid",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(HELPER_ENV, args)
    .uid(NOBODY)
    .gid(NOBODY)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    c
}

/// Reads the helper's stdout until a line `HELPER ...`; (its rest).
fn helper_line(child: &mut Child, timeout: Duration) -> String {
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 1024];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Err(all));
                    return;
                }
                Ok(n) => {
                    all.push_str(&String::from_utf8_lossy(&buf[..n]));
                    // Complete lines only; libtest may print before ours.
                    let done = &all[..all.rfind('\n').map_or(0, |i| i + 1)];
                    if let Some(l) = done
                        .lines()
                        .find_map(|l| l.split_once("HELPER ").map(|(_, r)| r))
                    {
                        let _ = tx.send(Ok(l.to_string()));
                        // Keep reading: the helper's harness still writes.
                        let _ = std::io::copy(&mut out, &mut std::io::sink());
                        return;
                    }
                }
            }
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(l)) => l,
        Ok(Err(all)) => panic!("the helper (as uid {NOBODY}) ended without an answer: {all}"),
        Err(_) => panic!("the helper (as uid {NOBODY}) said nothing within {timeout:?}"),
    }
}

/// Sends `req` as `nobody`; the answer's status code.
fn request_as_nobody(sock: &Path, req: &str) -> u16 {
    let mut c = helper_cmd(&format!("request {}", sock.display()))
        .env("VP_ATTACK_REQUEST", req)
        .spawn()
        .unwrap();
    let line = helper_line(&mut c, Duration::from_secs(20));
    let _ = c.wait();
    line.strip_prefix("status ")
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or_else(|| panic!("helper: {line}"))
}

#[test]
#[ignore = "run by the other tests as another uid"]
fn helper_as_another_uid() {
    let Ok(args) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut words = args.split(' ');
    let (mode, sock) = (words.next().unwrap(), PathBuf::from(words.next().unwrap()));
    match mode {
        "hold" => {
            let n: usize = words.next().unwrap().parse().unwrap();
            raise_nofile();
            let mut held = Vec::new();
            for _ in 0..n {
                if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
                    held.push(s);
                }
            }
            println!("HELPER open {}", held.len());
            let mut rest = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut rest);
        }
        "request" => {
            let req = std::env::var("VP_ATTACK_REQUEST").unwrap();
            let answer = (|| -> std::io::Result<u16> {
                let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(req.as_bytes())?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(parse(&text)?.0)
            })();
            match answer {
                Ok(code) => println!("HELPER status {code}"),
                Err(e) => println!("HELPER error {e}"),
            }
        }
        m => panic!("unknown helper mode {m}"),
    }
}

// ------------------------------------------------------------------ tests

/// Finding 1: 1,000 idle connections from the good client's own uid (root
/// here; the hardest case: no per-uid share can tell them apart). The
/// agent closes the quietest for each new one, so the good client is
/// answered at once; the agent never holds more than its cap, and closes
/// the rest once they stay idle past the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_from_the_good_clients_own_uid() {
    let n = attackers(1000);
    let mut a = Agent::start(Opts::default());
    let base = a.fds();
    let idle = idle_unix(&a.sock, n).await;
    assert!(idle.len() >= 400, "only {} connections opened", idle.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    good_socket_client("1000 idle, same uid", &a.sock).await;
    let held = a.fds();
    assert!(
        held <= base + 256 + 8,
        "the agent holds {held} fds with {} idle peers (base {base}, cap 256)",
        idle.len()
    );
    // Idle connections do not stay: back to the base while ours are open.
    let took = a.wait_fds_at_most(base + 4, "idle connections not closed");
    eprintln!(
        "{} idle: agent held {held} fds (base {base}), back to base {took:?} later",
        idle.len()
    );
    drop(idle);
    a.assert_healthy();
}

/// Finding 1 from another local user: `nobody` (a member of `api.group`,
/// so it can open the 0660 socket) holds 1,000 idle connections. It gets
/// its share (64), root is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_from_another_uid_keeps_to_its_share() {
    if !can_switch_uid() {
        return;
    }
    let n = attackers(1000);
    let mut a = Agent::start(Opts {
        group: "nogroup",
        ..Opts::default()
    });
    // Item 9: the socket is 0660 root:api.group.
    let meta = std::fs::metadata(&a.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), NOBODY, "group nogroup");
    let base = a.fds();
    let mut h = Helper {
        child: helper_cmd(&format!("hold {} {n}", a.sock.display()))
            .spawn()
            .unwrap(),
    };
    let line = helper_line(&mut h.child, Duration::from_secs(60));
    let opened: usize = line
        .strip_prefix("open ")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("helper: {line}"));
    assert!(opened >= 400, "nobody opened only {opened}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    good_socket_client("1000 idle from uid 65534", &a.sock).await;
    let held = a.fds();
    assert!(
        held <= base + 64 + 8,
        "the agent holds {held} fds for {opened} connections of one uid (base {base}, share 64)"
    );
    eprintln!("uid {NOBODY} opened {opened}: agent holds {held} fds (base {base})");
    drop(h);
    a.assert_healthy();
}

/// Finding 1: 300 clients (more than the cap) that pipeline 200 `GET
/// /v1/pools` each and never read. The good client is answered at once,
/// and the stalled connections are closed after the write timeout while
/// their clients still hold them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_that_pipeline_and_never_read() {
    raise_nofile();
    let mut a = Agent::start(Opts::default());
    let base = a.fds();
    let slow = pipelining_unix(&a.sock, 300, 200).await;
    assert_eq!(slow.len(), 300);
    tokio::time::sleep(Duration::from_millis(500)).await;
    good_socket_client("300 slow readers", &a.sock).await;
    let took = a.wait_fds_at_most(base + 4, "stalled connections not closed");
    eprintln!("300 slow readers: closed {took:?} after the good client");
    drop(slow);
    a.assert_healthy();
}

/// Finding 2: 1,100 idle TCP connections to `metrics_listen`, the agent
/// started with a soft open-file limit of 1,024 (hard 4,096, or the test's
/// own hard limit if lower), which the flood alone would exhaust. The
/// agent raises its limit, caps the TCP side at 64, and both the socket
/// and the TCP listener answer a good client at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_on_the_metrics_listener() {
    let n = attackers(1100);
    let hard = raise_nofile().min(4096);
    let mut a = Agent::start(Opts {
        metrics: true,
        nofile: Some((1024, hard)),
        ..Opts::default()
    });
    let base = a.fds();
    let idle = idle_tcp(a.port, n).await;
    assert!(idle.len() >= 400, "only {} TCP connections", idle.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    good_socket_client("1100 idle on TCP", &a.sock).await;
    let port = a.port;
    assert_answered_fast(
        "1100 idle on TCP",
        || tokio::net::TcpStream::connect(("127.0.0.1", port)),
        "/metrics",
    )
    .await;
    let held = a.fds();
    assert!(
        held <= base + 64 + 8,
        "the agent holds {held} fds with {} idle TCP peers (base {base}, cap 64)",
        idle.len()
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", a.pid())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    assert_eq!(
        nofile,
        hard.to_string(),
        "soft limit not raised to the hard one:\n{limits}"
    );
    let took = a.wait_fds_at_most(base + 4, "idle TCP connections not closed");
    eprintln!(
        "{} idle on TCP: agent held {held} fds (base {base}), back {took:?} later",
        idle.len()
    );
    drop(idle);
    a.assert_healthy();
}

/// Waits until no cycle has run for a second; the last cycle number.
fn settled_cycle(sock: &Path) -> u64 {
    let mut last = status(sock).unwrap()["cycle"].as_u64().unwrap();
    let mut since = Instant::now();
    let t0 = Instant::now();
    while since.elapsed() < Duration::from_secs(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "cycles never settle"
        );
        std::thread::sleep(Duration::from_millis(100));
        let c = status(sock).unwrap()["cycle"].as_u64().unwrap();
        if c != last {
            last = c;
            since = Instant::now();
        }
    }
    last
}

/// The `change` messages of the audit log, through `GET /v1/events`.
fn changes(sock: &Path) -> Vec<String> {
    json(sock, "/v1/events?limit=1000")["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "change")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// The `ff-*` pools (committed changes) and those of them without a
/// `pool "…" created` audit record.
fn committed_unaudited(sock: &Path) -> (Vec<String>, Vec<String>) {
    let pools: Vec<String> = json(sock, "/v1/pools?members=false")["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.starts_with("ff-"))
        .map(String::from)
        .collect();
    let audited = changes(sock);
    let missing = pools
        .iter()
        .filter(|p| !audited.contains(&format!("pool {p:?} created")))
        .cloned()
        .collect();
    (pools, missing)
}

/// Finding 3: changes whose client half-closes (`shutdown(SHUT_WR)`) or
/// closes before the answer. Whatever the client does, a change that is
/// saved is also in the audit log (read back through `GET /v1/events` and
/// in `audit.jsonl`) and gets its cycle.
#[test]
fn half_closed_and_abandoned_changes_are_audited_and_cycled() {
    let mut a = Agent::start(Opts::default());
    let before = settled_cycle(&a.sock);

    // 20 pool PUTs; the client half-closes (even) or closes (odd) 0 to 14
    // ms after sending (so it leaves at different points of the change),
    // the last five 20 to 100 ms after (so some are saved on a loaded
    // machine too), and never reads the answer.
    let mut half_closed = Vec::new();
    for i in 0..20u64 {
        let mut s = std::os::unix::net::UnixStream::connect(&a.sock).unwrap();
        let body = format!(r#"{{"domains":["none-{i}"],"vcpus":{{"budget":0}}}}"#);
        s.write_all(raw("PUT", &format!("/v1/pools/ff-{i}"), Some(&body)).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(if i < 15 {
            i
        } else {
            20 * (i - 15) + 20
        }));
        if i % 2 == 0 {
            s.shutdown(std::net::Shutdown::Write).unwrap();
            half_closed.push(s);
        }
    }
    // Give every change time to be recorded (they take milliseconds).
    std::thread::sleep(Duration::from_millis(1500));
    let (committed, missing) = committed_unaudited(&a.sock);
    eprintln!(
        "20 abandoned PUTs: {} committed, {} of them without an audit record",
        committed.len(),
        missing.len()
    );
    assert!(!committed.is_empty(), "no change committed at all");
    assert!(
        missing.is_empty(),
        "committed without an audit record: {missing:?}; log:\n{}",
        a.log_text()
    );
    let audit = std::fs::read_to_string(a.dir.path().join("state/audit.jsonl")).unwrap();
    for p in &committed {
        assert!(
            audit.contains(&format!("pool \\\"{p}\\\" created")),
            "{p}: {audit}"
        );
    }
    // And they asked for a cycle (the interval is an hour).
    let t0 = Instant::now();
    while status(&a.sock).unwrap()["cycle"].as_u64().unwrap() <= before {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no cycle after the changes; log:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(half_closed);

    // POST /v1/pause then shutdown(SHUT_WR) at once: if it is saved, it is
    // audited and cycled too.
    let before = settled_cycle(&a.sock);
    let mut s = std::os::unix::net::UnixStream::connect(&a.sock).unwrap();
    s.write_all(raw("POST", "/v1/pause", None).as_bytes())
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let saved = std::fs::read_to_string(a.dir.path().join("state/state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["paused"] == true);
    let audited = changes(&a.sock).iter().any(|m| m == "agent paused");
    let cycled = status(&a.sock).unwrap()["cycle"].as_u64().unwrap() > before;
    eprintln!("half-closed pause: saved {saved}, audited {audited}, cycled {cycled}");
    assert_eq!(
        (audited, cycled),
        (saved, saved),
        "(audited, cycled) after a half-closed POST /v1/pause that was saved: {saved}"
    );
    drop(s);
    a.assert_healthy();
}

/// Item 9: an unprivileged peer (`nobody`, not in `api.group` = root; the
/// socket opened to everyone by the test) gets 403 for a change before its
/// body is looked at, and may not read the audit log; it may read the
/// status. Root may read the audit log.
#[test]
fn unprivileged_peers_get_403_first_and_no_audit_log() {
    if !can_switch_uid() {
        return;
    }
    let mut a = Agent::start(Opts::default());
    std::fs::set_permissions(&a.sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let bad_json = raw("POST", "/v1/pools/web/allocate", Some("{not json"));
    let wrong_type = "PUT /v1/pools/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
    let huge = "PUT /v1/pools/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n";
    for (what, req, want) in [
        ("invalid JSON", bad_json.as_str(), 403),
        ("wrong content type", wrong_type, 403),
        ("oversized body", huge, 403),
        ("events", &raw("GET", "/v1/events", None), 403),
        ("audit", &raw("GET", "/v1/audit?limit=5", None), 403),
        ("status", &raw("GET", "/v1/status", None), 200),
        ("metrics", &raw("GET", "/metrics", None), 200),
    ] {
        assert_eq!(request_as_nobody(&a.sock, req), want, "{what}");
    }
    assert_eq!(request(&a.sock, "GET", "/v1/events", None).unwrap().0, 200);
    a.assert_healthy();
}

/// Item 9: a start that fails after the socket was bound (the metrics port
/// is taken) leaves no socket file behind.
#[test]
fn a_failed_start_leaves_no_socket() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut a = Agent::spawn(Opts {
        port: Some(port),
        ..Opts::default()
    });
    let mut child = a.child.take().unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "virtpoold did not fail"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = a.log_text();
    assert!(!st.success(), "{log}");
    assert!(log.contains("cannot listen for metrics"), "{log}");
    assert!(
        !a.sock.exists(),
        "stale socket {} left after a failed start; log:\n{log}",
        a.sock.display()
    );
    drop(taken);
}
