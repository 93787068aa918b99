//! The real `virtpoold` and `virtpoolctl` binaries as child processes, a
//! minimal HTTP/1.1 client for the API socket, and waiting for convergence.

use super::checker::Host2;
use super::MIB;
use crate::support::daemon::spawn_logged;
use crate::support::libvirtd::poll;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- virtpoold

/// A running `virtpoold`, SIGKILLed on drop.
pub struct Agent {
    child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub started: Instant,
}

pub fn virtpoold() -> &'static str {
    env!("CARGO_BIN_EXE_virtpoold")
}

pub fn virtpoolctl() -> &'static str {
    env!("CARGO_BIN_EXE_virtpoolctl")
}

impl Agent {
    /// Starts `virtpoold --config CONFIG` (log in `dir/virtpoold.N.log`).
    pub fn start(dir: &Path, config: &Path) -> Agent {
        Self::start_args(dir, config, &[])
    }

    /// [`Agent::start`], then fails unless its socket takes connections
    /// within 20 s (showing the log).
    pub fn start_serving(dir: &Path, config: &Path) -> Agent {
        let mut agent = Self::start(dir, config);
        assert!(
            agent.wait_api(Duration::from_secs(20)),
            "{}",
            agent.log_text()
        );
        agent
    }

    pub fn start_args(dir: &Path, config: &Path, args: &[&str]) -> Agent {
        let n = std::fs::read_dir(dir)
            .map(|r| r.filter_map(Result::ok).count())
            .unwrap_or(0);
        let log = dir.join(format!("virtpoold.{n}.log"));
        let child = spawn_logged(Command::new(virtpoold()), config, args, &log);
        Agent {
            child: Some(child),
            config: config.to_owned(),
            log,
            socket: dir.join("virtpool.sock"),
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (reaps it if not).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics with the log when the agent is gone.
    pub fn assert_alive(&mut self) {
        assert!(self.alive(), "virtpoold died; log:\n{}", self.log_text());
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        poll(timeout, || {
            (self.log_text().matches(needle).count() >= count).then_some(())
        })
        .is_some()
    }

    /// Sends `sig` while the agent runs (not to a PID it no longer has).
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(c) = self.child.as_mut() {
            crate::support::process::signal(c, sig);
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (≤ 10 s, then SIGKILL); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut c = self.child.take()?;
        let r = poll(Duration::from_secs(10), || c.try_wait().ok().flatten());
        match r {
            Some(st) => st.code(),
            None => {
                let _ = c.kill();
                let _ = c.wait();
                None
            }
        }
    }

    /// VmRSS of the agent in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits for the API socket to accept connections.
    pub fn wait_api(&mut self, timeout: Duration) -> bool {
        let sock = self.socket.clone();
        poll(timeout, || UnixStream::connect(&sock).ok().map(|_| ())).is_some()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Failed actions in an agent log.
pub fn failed_actions(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("action failed"))
        .collect()
}

/// Number of successful vCPU / memory changes in an agent log (weights
/// and I/O limits are counted apart).
pub fn applied_vcpu_memory(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" applied "))
        .filter(|l| {
            ["vcpus", "memory"].iter().any(|r| {
                l.contains(&format!("resource=\"{r}\"")) || l.contains(&format!("resource={r} "))
            })
        })
        .count()
}

/// Runs `virtpoold` to completion with `args`; returns (exit code, stdout, stderr).
pub fn run_virtpoold(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(virtpoold())
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- HTTP

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server said `Connection: close`.
    pub close: bool,
}

impl Response {
    /// `error.code` of an error body (panics if the body is not one).
    pub fn code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no error message: {}",
            self.body
        );
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", self.body))
            .to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET` on a fresh connection; panics on I/O errors.
pub fn get(sock: &Path, path: &str) -> Response {
    http(sock, "GET", path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `POST` with a JSON body on a fresh connection; panics on I/O errors.
pub fn post(sock: &Path, path: &str, body: &str) -> Response {
    http(sock, "POST", path, Some(body)).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// The paths where two JSON values differ (for readable assertion messages).
pub fn json_diff(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(p: String, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value as V;
        match (a, b) {
            (V::Object(x), V::Object(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let n = serde_json::Value::Null;
                    walk(
                        format!("{p}.{k}"),
                        x.get(k).unwrap_or(&n),
                        y.get(k).unwrap_or(&n),
                        out,
                    );
                }
            }
            (V::Array(x), V::Array(y)) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(format!("{p}[{i}]"), u, v, out);
                }
            }
            _ if a != b => out.push(format!("{p}: {a} != {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(String::new(), a, b, &mut out);
    out
}

/// A small seeded PRNG (xorshift64*), for reproducible fault schedules.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    read_response(&mut r)
}

/// Reads one response (Content-Length or chunked, else to EOF).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut len = None;
    let mut chunked = false;
    let mut close = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz)?;
            let n = usize::from_str_radix(sz.trim(), 16).map_err(|_| bad("bad chunk"))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}

/// Runs `virtpoolctl ARGS` with `VIRTPOOL_SOCKET=SOCK`; returns (exit
/// code, stdout, stderr).
pub fn ctl(sock: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(virtpoolctl())
        .env("VIRTPOOL_SOCKET", sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- waiting

/// Waits until every fleet domain in `names` has its expected values from
/// `expect` on the checker's connection; returns the time it took, or
/// panics with the domains still off.
pub fn wait_converged(
    h: &Host2,
    agent: &mut Agent,
    timeout: Duration,
    expect: impl Fn(&str) -> Option<(u64, u64)>,
) -> Duration {
    let t0 = Instant::now();
    let mut last = Vec::new();
    let ok = poll(timeout, || {
        last = h
            .all()
            .into_iter()
            .filter(|d| d.state.is_active())
            .filter_map(|d| {
                let (v, m) = expect(&d.name)?;
                ((d.vcpus, d.memory) != (v, m)).then(|| {
                    format!(
                        "{}: {} vCPUs / {} MiB, want {v} / {} MiB",
                        d.name,
                        d.vcpus,
                        d.memory / MIB,
                        m / MIB
                    )
                })
            })
            .collect();
        last.is_empty().then_some(())
    });
    agent.assert_alive();
    assert!(
        ok.is_some(),
        "not converged after {timeout:?}: {last:#?}\nagent log:\n{}",
        agent.log_text()
    );
    t0.elapsed()
}
