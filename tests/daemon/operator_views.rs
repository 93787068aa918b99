//! What-if plans, pool history and `top --once`, against the real
//! `virtpoold` on a private copy of the demo host (libvirt test driver)
//! in observe mode (the observation stays the same from cycle to cycle:
//! the answers are pinned), through the API and the real `virtpoolctl`.

use crate::support::daemon::{demo_config, Daemon};
use hyper::Method;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use virtpool::api::history::PoolHistory;
use virtpool::api::types::{ErrorBody, PoolView};
use virtpool::api::whatif::{ExtraDomain, WhatIf, WhatIfChange, WhatIfResponse};
use virtpool::cli::client::{Client, ClientError};
use virtpool::core::model::Resource;
use virtpool::core::units::Bytes;

const GIB: u64 = 1 << 30;

/// Everything after the first line (which names the cycle).
fn after_first_line(s: &str) -> &str {
    s.split_once('\n').map_or("", |(_, rest)| rest)
}

async fn what_if(c: &Client, req: &WhatIf) -> Result<WhatIfResponse, ClientError> {
    c.send(Method::POST, "/v1/plan", Some(req)).await
}

/// The message of an API error.
fn refusal(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
        } => (status, code, message),
        e => panic!("not an API error: {e}"),
    }
}

/// `allocate web web-1 --memory <bytes>` as a what-if change: the body
/// `POST /v1/pools/web/allocate` takes, with its op.
fn allocate_web_1(memory: u64) -> WhatIfChange {
    serde_json::from_value(serde_json::json!({
        "op": "allocate",
        "pool": "web",
        "domain": "web-1",
        "memory": memory,
    }))
    .unwrap()
}

/// The real `virtpoold` on a private copy of the demo host in observe
/// mode, cycling every `interval`: its dir, its config file, the daemon.
fn observer(interval: &str) -> (tempfile::TempDir, PathBuf, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(dir.path(), interval, "observe");
    let d = Daemon::start(&cfg);
    (dir, cfg, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_plans_on_the_live_observation_and_applies_nothing() {
    let (dir, cfg, d) = observer("1h");
    let c = Client::new(&d.sock);
    let pool_web = || async { c.get::<PoolView>("/v1/pools/web").await.unwrap() };
    let before = pool_web().await;
    let runtime = dir.path().join("state/state.json");
    let state_before = std::fs::read(&runtime).ok();

    // No candidate: today's plan against itself.
    let r = what_if(&c, &WhatIf::default()).await.unwrap();
    assert!(r.diff.is_empty(), "{r:?}");
    assert_eq!(r.actions_before, r.actions_after);

    // A candidate config: the web pool's memory budget cut below the
    // floors of its members.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let small = text.replace(
        "memory = { budget = \"20GiB\", min = \"1GiB\" }",
        "memory = { budget = \"3GiB\", min = \"1GiB\" }",
    );
    assert_ne!(small, text);
    let cand = dir.path().join("candidate.toml");
    std::fs::write(&cand, &small).unwrap();
    let r = what_if(
        &c,
        &WhatIf {
            config: Some(small.clone()),
            config_file: Some(cand.display().to_string()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.candidate, vec![format!("config {}", cand.display())]);
    let web = r.diff.pools.iter().find(|p| p.name == "web").unwrap();
    let mem = web
        .resources
        .iter()
        .find(|x| x.resource == Resource::Memory)
        .unwrap();
    assert_eq!(
        (mem.budget_before, mem.budget_after),
        (Some(20 * GIB), Some(3 * GIB))
    );
    assert!(!mem.fits_after && mem.floors_after > 3 * GIB, "{mem:?}");
    assert_eq!(r.diff.budgets_short, 1);
    assert!(r.diff.unadmitted >= 1, "{r:?}");
    assert!(web.members.iter().any(|m| m.becomes_unadmitted()));
    assert!(
        r.diff.pools.iter().all(|p| p.name == "web"),
        "only web changes"
    );
    // The same through virtpoolctl, as text.
    let out = d.ok(&["plan", "--config", cand.to_str().unwrap()]);
    assert!(
        out.starts_with("what-if on the observation of cycle "),
        "{out}"
    );
    insta::assert_snapshot!(
        "whatif_config",
        after_first_line(&out).replace(&cand.display().to_string(), "CANDIDATE")
    );

    // A runtime change: a reservation raised, as `allocate` would.
    let out = d.ok(&["plan", "--what-if", "allocate web web-1 --memory 6GiB"]);
    insta::assert_snapshot!("whatif_allocate", after_first_line(&out));
    let allocate = allocate_web_1(6 * GIB);
    let r = what_if(
        &c,
        &WhatIf {
            changes: vec![allocate.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let w1 = r.diff.pools[0]
        .members
        .iter()
        .find(|m| m.name == "web-1")
        .unwrap();
    let t = w1
        .targets
        .iter()
        .find(|t| t.resource == Resource::Memory)
        .unwrap();
    assert_eq!(t.after, Some(6 * GIB), "{w1:?}");

    // A domain not there yet joins the pool its name matches, another the
    // pool it names.
    let out = d.ok(&["plan", "--with-domain", "web-9:4:8GiB"]);
    insta::assert_snapshot!("whatif_domain", after_first_line(&out));
    let r = what_if(
        &c,
        &WhatIf {
            domains: vec![ExtraDomain {
                name: "job-1".into(),
                vcpus: 2,
                memory: Bytes(2 * GIB),
                pool: Some("batch".into()),
            }],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.diff.regrouped, 1);
    let batch = r.diff.pools.iter().find(|p| p.name == "batch").unwrap();
    let job = batch.members.iter().find(|m| m.name == "job-1").unwrap();
    assert_eq!(
        (job.pool_before.as_deref(), job.pool_after.as_deref()),
        (None, Some("batch"))
    );
    // Candidates compose: the new domain gets a reservation (refused:
    // more than it can have).
    let o = d.ctl(&[
        "plan",
        "--with-domain",
        "job-1:2:2GiB:batch",
        "--what-if",
        "allocate batch job-1 --vcpus 3",
    ]);
    assert_eq!(o.status.code(), Some(1), "above its 2 vCPUs");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("above what the domain can have (2)"),
        "{o:?}"
    );

    // Nothing was applied: the pool, the runtime state, the config file.
    assert_eq!(pool_web().await.budget, before.budget);
    assert_eq!(pool_web().await.members, before.members);
    assert_eq!(std::fs::read(&runtime).ok(), state_before);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);
    let v = d.json(&["domain", "web-1"]);
    assert!(v["reservation"].as_object().unwrap().is_empty(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_refuses_as_the_real_change_would() {
    let (_dir, cfg, d) = observer("1h");
    let c = Client::new(&d.sock);
    let good = std::fs::read_to_string(&cfg).unwrap();
    let file = cfg.display().to_string();

    // A config a reload refuses, two ways: budgets over the host, and a
    // key that does not exist. Same words, through the what-if and the
    // reload of the same file.
    for bad in [
        good.replace(
            "memory = { budget = \"20GiB\", min = \"1GiB\" }",
            "memory = { budget = \"90GiB\", min = \"1GiB\" }",
        ),
        good.replace("max_shrink = \"5%\"", "max_shrinkage = \"5%\""),
    ] {
        assert_ne!(bad, good);
        let e = what_if(
            &c,
            &WhatIf {
                config: Some(bad.clone()),
                config_file: Some(file.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        let (status, code, msg) = refusal(e);
        assert_eq!((status, code.as_str()), (422, "config_refused"), "{msg}");
        let why = msg
            .strip_prefix("a reload would refuse this config: ")
            .unwrap_or_else(|| panic!("{msg}"));
        std::fs::write(&cfg, &bad).unwrap();
        let o = d.ctl(&["reload"]);
        assert_eq!(o.status.code(), Some(1));
        let said = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            said.trim(),
            format!("virtpoolctl: reload refused, the running config stays: {why}"),
            "the reload's words"
        );
        std::fs::write(&cfg, &good).unwrap();
    }
    d.ok(&["reload"]);

    // A reservation that does not fit: the what-if and the real allocate
    // say the same.
    let big = allocate_web_1(19 * GIB);
    let (status, code, msg) = refusal(
        what_if(
            &c,
            &WhatIf {
                changes: vec![big],
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    let o = d.ctl(&["allocate", "web", "web-1", "--memory", "19GiB"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!("virtpoolctl: {msg}")
    );
    assert_eq!((status, code.as_str()), (409, "does_not_fit"));

    // A domain that is there already, a bad name, a bad change.
    let (status, _, msg) = refusal(
        what_if(
            &c,
            &WhatIf {
                domains: vec![ExtraDomain {
                    name: "web-1".into(),
                    vcpus: 1,
                    memory: Bytes(GIB),
                    pool: None,
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status, 409, "{msg}");
    let o = d.ctl(&["plan", "--with-domain", "x:lots:1GiB"]);
    assert_eq!(o.status.code(), Some(2));
    let o = d.ctl(&[
        "plan",
        "--with-domain",
        "x:1:1GiB",
        "--with-domain",
        "x:2:1GiB",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"x\" is named twice"));
    let o = d.ctl(&["plan", "--what-if", "grow web web-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--what-if \"grow web web-1\""));
    // Unknown fields are refused, as in every body.
    let ans = c
        .request(
            Method::POST,
            "/v1/plan",
            Some(br#"{"configs": "x"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(ans.status.as_u16(), 400);
    let body: ErrorBody = serde_json::from_slice(&ans.body).unwrap();
    assert!(body.error.message.contains("configs"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_served_per_pool_and_drawn() {
    let (_dir, _, d) = observer("5s");
    let c = Client::new(&d.sock);

    // Two points, a step apart (cycles every 5 s).
    let t0 = Instant::now();
    let h = loop {
        let h: PoolHistory = c.get("/v1/pools/web/history").await.unwrap();
        if h.time.len() >= 2 {
            break h;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((h.pool.as_str(), h.step_secs, h.capacity), ("web", 5, 720));
    assert_eq!(h.time.len(), h.cycle.len());
    assert!(h.time.windows(2).all(|w| w[1] >= w[0] + 3), "{:?}", h.time);
    assert!(h.cycle.windows(2).all(|w| w[1] > w[0]), "{:?}", h.cycle);
    let keys: Vec<Resource> = h.resources.keys().copied().collect();
    assert_eq!(
        keys,
        vec![Resource::Vcpus, Resource::Memory, Resource::DiskBytesSec],
        "what web manages"
    );
    // The last point is what the pool view says now.
    let view: PoolView = c.get("/v1/pools/web").await.unwrap();
    for r in [Resource::Vcpus, Resource::Memory] {
        let s = &h.resources[&r];
        assert_eq!(s.budget.last().copied().flatten(), *view.budget.get(r));
        assert_eq!(
            s.allocated.last().copied().flatten(),
            Some(*view.allocated.get(r))
        );
        let actual: u64 = view
            .members
            .iter()
            .filter(|m| m.admitted)
            .filter_map(|m| m.resources.get(r).map(|a| a.actual))
            .sum();
        let unit = if r == Resource::Memory { 1 << 20 } else { 1 };
        let got = s.actual.last().copied().flatten().unwrap();
        assert!(got.abs_diff(actual) <= unit / 2, "{r}: {got} vs {actual}");
    }
    // The test driver's guests report what they use.
    let used = h.resources[&Resource::Memory]
        .used
        .last()
        .copied()
        .flatten();
    assert!(used.is_some_and(|u| u > 0), "{h:?}");
    assert!(h.resources[&Resource::Vcpus].used.is_empty());

    // Drawn by virtpoolctl.
    let out = d.ok(&["pool", "history", "web"]);
    assert!(out.starts_with("pool web: "), "{out}");
    let body = after_first_line(&out);
    assert!(body.starts_with("  RESOURCE  "), "{out}");
    let line = body
        .lines()
        .find(|l| l.contains("memory") && l.contains("budget"))
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words[..8],
        ["memory", "budget", "20.0", "GiB", "20.0", "GiB", "20.0", "GiB"],
        "{line}"
    );
    assert!(words[8].chars().all(|c| c == '█'), "{line}");

    // A pool created at run time has a history after its cycle; a pool
    // that does not exist has none.
    d.ok(&[
        "pool",
        "create",
        "spare",
        "--domain",
        "dev-sandbox",
        "--vcpus",
        "2",
        "--wait",
    ]);
    let h: PoolHistory = c.get("/v1/pools/spare/history").await.unwrap();
    assert!(!h.time.is_empty(), "{h:?}");
    assert_eq!(h.resources[&Resource::Vcpus].budget.last(), Some(&Some(2)));
    let (status, code, _) = refusal(
        c.get::<PoolHistory>("/v1/pools/nope/history")
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (404, "not_found"));
    let o = d.ctl(&["pool", "history", "nope"]);
    assert_eq!(o.status.code(), Some(1));
}

/// `top --once`: the pools with their bars and the members, pinned (the
/// header names the cycle and its timings, the history panel grows with
/// each cycle: both left out).
#[test]
fn top_once_draws_pools_and_members() {
    let (_dir, _, d) = observer("1h");
    let out = d.ok(&["top", "--once", "--width", "130"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("virtpool top — cycle "), "{out}");
    assert!(
        lines[0].contains("— observe — libvirt connected — 12 domains (11 active), 1 unmanaged")
    );
    assert!(lines[1].starts_with("last cycle "), "{out}");
    assert!(lines[2].contains("the pools share ") && lines[2].ends_with("no memory pressure"));
    let hist = lines
        .iter()
        .position(|l| l.starts_with("┌ batch: "))
        .unwrap();
    let hist_end = hist
        + lines[hist..]
            .iter()
            .position(|l| l.starts_with('└'))
            .unwrap();
    let pinned: Vec<&str> = lines[3..hist]
        .iter()
        .chain(&lines[hist_end + 1..])
        .copied()
        .collect();
    insta::assert_snapshot!("top_once", pinned.join("\n"));
    // One pool: its members only, and its history.
    let out = d.ok(&["top", "--once", "--width", "130", "--pool", "db"]);
    assert!(
        out.contains("▶ db") && out.contains("┌ db: the last 1 point(s), one per 3600 s"),
        "{out}"
    );
    assert!(
        out.contains("members of db — 3 shown of 3, sorted by name"),
        "{out}"
    );
    assert!(!out.contains("web-1"), "{out}");
}
