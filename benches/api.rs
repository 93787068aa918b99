//! API throughput and latency (not a timed test): 16 concurrent keep-alive
//! clients against `GET /v1/pools` (and a few other reads) of an agent with
//! 1,000 managed domains on a fake hypervisor, over the real Unix socket.
//!
//! `cargo bench --bench api` (release). Prints requests/s and p50/p99.
#![allow(clippy::unwrap_used)]

#[path = "../tests/api_support/mod.rs"]
mod api_support;

use api_support::*;
use hyper::Method;
use std::time::{Duration, Instant};
use virtpool::api::ServeOptions;

const CLIENTS: usize = 16;
const DOMAINS: usize = 1000;

async fn run(a: &Agent, path: &'static str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let c = a.client();
        tasks.push(tokio::spawn(async move {
            let mut conn = c.connect().await.unwrap();
            let mut lat = Vec::new();
            let mut bytes = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                let ans = conn.request(Method::GET, path, None).await.unwrap();
                lat.push(t.elapsed());
                assert!(ans.status.is_success());
                bytes = ans.body.len();
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
        "GET {path:<22} {CLIENTS} clients, {DOMAINS} domains: {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} requests, {} KiB per response)",
        all.len() as f64 / wall,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.len(),
        size / 1024
    );
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
        let a = Agent::start(
            dir.path(),
            "root",
            pools,
            FakeHv::new(domains),
            ServeOptions::default(),
        )
        .await;
        let secs = std::env::var("API_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        run(&a, "/v1/status", secs).await;
        run(&a, "/v1/pools", secs).await;
        run(&a, "/v1/pools?members=false", secs).await;
        run(&a, "/v1/pools/p0", secs).await;
        a.stop().await;
    });
}
