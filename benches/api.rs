//! API throughput and latency (not a timed test): 16 concurrent keep-alive
//! clients against `GET /v1/pools` (and a few other reads) of an agent with
//! 1,000 managed domains on a fake hypervisor, over the real Unix socket.
//!
//! `cargo bench --bench api` (release). Prints requests/s and p50/p99;
//! the last two scenarios read while cycles run back to back, each writing
//! ~750 action records to the audit log.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::inproc::*;

const CLIENTS: usize = 16;
const DOMAINS: usize = 1000;

/// One keep-alive connection of a bench client: sends a GET and reads the
/// whole body frame by frame, counting bytes without gathering them, so
/// the client's cost stays small next to the server's.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Conn {
    async fn open(socket: &std::path::Path) -> Conn {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    /// (status, body length, ETag).
    async fn get(&mut self, path: &str, etag: Option<&str>) -> (StatusCode, usize, Option<String>) {
        self.sender.ready().await.unwrap();
        let mut req = Request::get(path).header(header::HOST, "virtpoold");
        if let Some(t) = etag {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        let resp = self
            .sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let tag = resp
            .headers()
            .get(header::ETAG)
            .map(|v| v.to_str().unwrap().to_string());
        let mut body = resp.into_body();
        let mut n = 0;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                n += d.len();
            }
        }
        (status, n, tag)
    }
}

/// 16 clients GET `path` for `secs`; with `revalidate`, each sends the
/// ETag of its first answer in `If-None-Match` (304s).
async fn run(a: &Agent, path: &'static str, revalidate: bool, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let socket = a.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&socket).await;
            let (_, _, first) = conn.get(path, None).await;
            let etag = if revalidate { first } else { None };
            let mut lat = Vec::new();
            let mut bytes = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                let (status, n, _) = conn.get(path, etag.as_deref()).await;
                lat.push(t.elapsed());
                assert!(
                    status == StatusCode::OK || (revalidate && status == StatusCode::NOT_MODIFIED),
                    "{path}: {status}"
                );
                bytes = n;
            }
            (lat, bytes)
        }));
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    let mut size = 0;
    for t in tasks {
        let (l, b) = t.await.unwrap();
        all.extend(l);
        size = b;
    }
    let wall = t0.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "GET {path:<22}{} {CLIENTS} clients, {DOMAINS} domains: {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} requests, {} KiB per response)",
        if revalidate { " (If-None-Match)" } else { "" },
        all.len() as f64 / wall,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.len(),
        size / 1024
    );
}

/// Cycles back to back until `stop`, each moving the memory of the
/// domains: they are put back to 4 GiB before it, and the planner shrinks
/// them toward their pools' budgets again, so every cycle writes its
/// actions to the audit log and publishes a new status. Returns (cycles,
/// actions, mean cycle ms).
async fn churn(a: &Agent, stop: Arc<AtomicBool>) -> (u64, usize, f64) {
    let (mut cycles, mut actions, mut ms) = (0u64, 0usize, 0.0);
    while !stop.load(Ordering::Relaxed) {
        for d in a.hv.domains().iter_mut() {
            d.memory = 4 * (1 << 30);
        }
        let st = a.handle.reconcile(true).await.unwrap();
        let c = st.last_cycle.as_ref().unwrap();
        cycles += 1;
        actions += c.actions;
        ms += c.duration_ms;
    }
    (cycles, actions, ms / cycles.max(1) as f64)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let domains = (0..DOMAINS)
            .map(|i| dom(&format!("vm-{}-{i:04}", i % 4), 2, 8, 4))
            .collect();
        let pools = r#"
[pools.p0]
match = "vm-0-*"
vcpus = { budget = 15 }
memory = { budget = "12GiB" }
[pools.p1]
match = "vm-1-*"
memory = { budget = "12GiB" }
[pools.p2]
match = "vm-2-*"
memory = { budget = "12GiB" }
[pools.p3]
match = "vm-3-*"
memory = { budget = "12GiB" }
"#;
        let a = Agent::start_root(dir.path(), pools, Fake::new(domains)).await;
        // `cargo test --all-targets` runs this without `--bench`
        // (unoptimized): a 1 s smoke run per scenario.
        let default_secs = if std::env::args().any(|a| a == "--bench") {
            5
        } else {
            1
        };
        let secs = std::env::var("API_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_secs);
        run(&a, "/v1/status", false, secs).await;
        run(&a, "/v1/pools", false, secs).await;
        run(&a, "/v1/pools?members=false", false, secs).await;
        run(&a, "/v1/pools/p0", false, secs).await;
        run(&a, "/v1/domains", false, secs).await;
        run(&a, "/v1/pools", true, secs).await;
        // The same reads while cycles write ~750 action records each to
        // the audit log (on a blocking thread) and publish a new status.
        for path in ["/v1/status", "/v1/pools"] {
            let stop = Arc::new(AtomicBool::new(false));
            let (_, (cycles, actions, ms)) = tokio::join!(
                async {
                    run(&a, path, false, secs).await;
                    stop.store(true, Ordering::Relaxed);
                },
                churn(&a, stop.clone())
            );
            println!(
                "  ... while cycles ran back to back: {cycles} cycles, {} actions (audit records) each, {ms:.1} ms per cycle",
                actions / cycles.max(1) as usize
            );
        }
        a.stop().await;
    });
}
