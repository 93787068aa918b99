//! 16 clients × 200 allocate/release on one pool: Σ reservations never
//! exceeds the budget, the final state equals the serial result, and
//! state.json after restart equals the in-memory state.
#![allow(clippy::unwrap_used)]

use crate::root_agent;
use crate::support::inproc::*;
use hyper::Method;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use virtpool::agent::state::RuntimeState;

const CLIENTS: usize = 16;
const OPS: usize = 200;
const BUDGET: u64 = 40;

fn vcpus_reserved(st: &RuntimeState) -> u64 {
    st.reservations
        .get("web")
        .map(|m| m.values().filter_map(|r| r.vcpus).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_never_overshoot_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let domains: Vec<_> = (0..CLIENTS)
        .map(|i| dom(&format!("w-{i:02}"), 1, 8, 2))
        .collect();
    let pools = format!("[pools.web]\nmatch = \"w-*\"\nvcpus = {{ budget = {BUDGET} }}\n");
    let a = root_agent(dir.path(), &pools, Fake::new(domains.clone())).await;

    // Watch the in-memory state the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let rt = a.handle.runtime().clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                let s = vcpus_reserved(&rt.lock().unwrap());
                max = max.max(s);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            max
        })
    };

    let ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    // Phase 2 starts once every client has released (no overlap).
    let phase2 = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let c = a.client();
        let (ok, refused) = (ok.clone(), refused.clone());
        let phase2 = phase2.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = c.connect().await.unwrap();
            let d = format!("w-{i:02}");
            for k in 0..OPS {
                // Phase 1: contend (each wants 1..5 more than its floor); end clean.
                let (path, body) = if k % 2 == 0 {
                    (
                        "/v1/pools/web/allocate",
                        format!(r#"{{"domain":"{d}","vcpus":{}}}"#, 1 + (i + k) % 5),
                    )
                } else {
                    ("/v1/pools/web/release", format!(r#"{{"domain":"{d}"}}"#))
                };
                let ans = conn
                    .request(Method::POST, path, Some(body.into_bytes()))
                    .await
                    .unwrap();
                match ans.status.as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    409 => {
                        let e: serde_json::Value = serde_json::from_slice(&ans.body).unwrap();
                        assert_eq!(e["error"]["code"], "does_not_fit", "{e}");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    s => panic!("{path}: {s} {}", String::from_utf8_lossy(&ans.body)),
                };
            }
            // Phase 2: from empty, 2 each fits in any order.
            phase2.wait().await;
            let body = format!(r#"{{"domain":"{d}","vcpus":2}}"#);
            let ans = conn
                .request(
                    Method::POST,
                    "/v1/pools/web/allocate",
                    Some(body.into_bytes()),
                )
                .await
                .unwrap();
            assert_eq!(
                ans.status.as_u16(),
                200,
                "{}",
                String::from_utf8_lossy(&ans.body)
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let max = watcher.join().unwrap();
    assert!(max <= BUDGET, "Σ reservations reached {max} > {BUDGET}");
    assert_eq!(
        ok.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed),
        CLIENTS * OPS
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the test never contended"
    );

    // The serial result: every member reserves 2 vCPUs, nothing else.
    let mut serial = RuntimeState::new();
    for i in 0..CLIENTS {
        serial.reservations.entry("web".into()).or_default().insert(
            format!("w-{i:02}"),
            virtpool::core::model::PerResource {
                vcpus: Some(2),
                ..Default::default()
            },
        );
    }
    let mem = a.handle.runtime().lock().unwrap().clone();
    assert_eq!(mem, serial);
    a.stop().await;
    assert_eq!(
        RuntimeState::load(&dir.path().join("state")).unwrap(),
        serial
    );
    let a = root_agent(dir.path(), &pools, Fake::new(domains)).await;
    assert_eq!(*a.handle.runtime().lock().unwrap(), serial);
    let (_, v) = a.call("GET", "/v1/pools/web", None).await;
    assert_eq!(v["reserved"]["vcpus"], 2 * CLIENTS as u64);
    a.stop().await;
}
