//! Reading the audit log back (`GET /v1/events`): the newest 100 and 1,000
//! events, and a `since` near the end, from a full history (10 MiB live
//! file + three rotated ones, about 40 MiB and 400,000 records). The cost
//! should follow what is returned, not the history; a whole-file read of
//! the live file is printed for comparison.
//!
//! `cargo bench --bench audit -- --warm-up-time 1 --measurement-time 3`

use criterion::Criterion;
use std::hint::black_box;
use std::time::Instant;
use virtpool::agent::audit::{AuditLog, Event, EventKind, DEFAULT_KEEP, DEFAULT_MAX_BYTES};
use virtpool::core::model::{Action, Reason};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = AuditLog::open(dir.path()).expect("open");
    let t = Instant::now();
    let mut n = 0u64;
    // Until the oldest rotated file exists and the live file is nearly full.
    let last = dir.path().join(format!("audit.jsonl.{DEFAULT_KEEP}"));
    let live = dir.path().join("audit.jsonl");
    while !last.exists()
        || std::fs::metadata(&live).map_or(true, |m| m.len() < DEFAULT_MAX_BYTES * 9 / 10)
    {
        let batch: Vec<Event> = (0..1000)
            .map(|i| {
                let domain = format!("vm-{i}");
                let uuid = "5a3f178f-34aa-4b69-8db6-178f34aadb69";
                Event::in_cycle(
                    EventKind::Action {
                        domain: domain.clone(),
                        uuid: uuid.into(),
                        resource: "memory".into(),
                        before: "8.0 GiB".into(),
                        after: "7.6 GiB".into(),
                        reason: "rate_limited".into(),
                        result: "ok".into(),
                        error: None,
                        action: Some(Box::new(Action::SetMemory {
                            uuid: uuid.into(),
                            domain: domain.as_str().into(),
                            from: 8 << 30,
                            to: 8_160_437_862,
                            reason: Reason::RateLimited,
                            persist: false,
                        })),
                    },
                    n / 1000 + 1,
                )
            })
            .collect();
        log.append(&batch).expect("append");
        n += 1000;
    }
    let bytes: u64 = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    println!(
        "history: {n} records written, {:.1} MiB on disk, built in {:.1?}",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed()
    );
    let newest = log.recent(1).expect("read")[0].seq;

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("audit_tail_100", |b| {
        b.iter(|| black_box(log.since(None, 100).expect("read")))
    });
    c.bench_function("audit_tail_1000", |b| {
        b.iter(|| black_box(log.since(None, 1000).expect("read")))
    });
    c.bench_function("audit_since_last_10", |b| {
        b.iter(|| black_box(log.since(Some(newest - 10), 1000).expect("read")))
    });
    c.bench_function("audit_whole_live_file_parse", |b| {
        b.iter(|| {
            let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("read");
            black_box(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Event>(l).ok())
                    .count(),
            )
        })
    });
    c.final_summary();
}
