//! Every endpoint on a real Unix socket, over an in-process agent with a
//! fake hypervisor: JSON shapes pinned with insta, every change's happy
//! path, bad input, timeouts, libvirt down, start-up and restart.
#![allow(clippy::unwrap_used)]

use crate::support::inproc::*;
use crate::{post_ok, stalled_agent, standard_agent};
use serde_json::{json, Value};
use std::time::Duration;
use virtpool::api::{self, ServeOptions};

fn get<'a>(v: &'a Value, ptr: &str) -> &'a Value {
    v.pointer(ptr).unwrap_or(&Value::Null)
}

/// `ptr` in the answer to `GET path`.
async fn read(a: &Agent, path: &str, ptr: &str) -> Value {
    get(&a.call("GET", path, None).await.1, ptr).clone()
}

/// `POST /v1/pools/web/allocate` with `body`.
async fn allocate_web(a: &Agent, body: &str) -> (u16, Value) {
    a.post("/v1/pools/web/allocate", body).await
}

/// The element of the array `list` whose `name` is `name`.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list}"))
}

/// Whether the `/v1/events` answer `v` holds an event of kind `kind`.
fn has_event(v: &Value, kind: &str) -> bool {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == kind)
}

/// Fails unless the answer is an error `status` with error code `code`.
fn assert_error(got: u16, v: &Value, status: u16, code: &str) {
    assert_eq!((got, get(v, "/error/code")), (status, &json!(code)), "{v}");
}

/// Largest integer every JSON reader holds exactly (I-JSON, RFC 7493:
/// jq and JavaScript read numbers as doubles).
const EXACT_MAX: u64 = (1 << 53) - 1;

/// The JSON pointers of the integers in `v` that readers cannot hold
/// exactly.
fn inexact_numbers(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Number(n) => {
            let exact = n
                .as_u64()
                .map(|x| x <= EXACT_MAX)
                .or_else(|| n.as_i64().map(|x| x.unsigned_abs() <= EXACT_MAX))
                .unwrap_or(true);
            if !exact {
                out.push(format!("{at} = {n}"));
            }
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| inexact_numbers(x, &format!("{at}/{i}"), out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| inexact_numbers(x, &format!("{at}/{k}"), out)),
        _ => {}
    }
}

/// Fails, naming them, on integers in `v` that readers cannot hold exactly.
fn assert_exact_numbers(what: &str, v: &Value) {
    let mut inexact = Vec::new();
    inexact_numbers(v, "", &mut inexact);
    assert!(inexact.is_empty(), "{what}: {inexact:?}");
}

/// `/v1/pools?members=false` is `/v1/pools` with empty member lists (the
/// counts, reservations and unadmitted names are all still there).
async fn assert_summary_is_pools_without_members(a: &Agent) {
    let (_, mut full) = a.call("GET", "/v1/pools", None).await;
    let (_, summary) = a.call("GET", "/v1/pools?members=false", None).await;
    for p in full["pools"].as_array_mut().unwrap() {
        assert!(!p["members"].as_array().unwrap().is_empty(), "{p}");
        p["members"] = json!([]);
    }
    assert_eq!(summary, full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_have_pinned_shapes() {
    let (_dir, a) = standard_agent().await;
    let db1 =
        a.hv.domains()
            .iter()
            .find(|d| *d.name == *"db-1")
            .unwrap()
            .uuid
            .clone();
    for (name, path) in [
        ("status", "/v1/status".to_string()),
        ("pools", "/v1/pools".into()),
        ("pools_summary", "/v1/pools?members=false".into()),
        ("pool_web", "/v1/pools/web".into()),
        ("domains", "/v1/domains".into()),
        ("domain_web1", "/v1/domains/web-1".into()),
        (
            "domain_by_uuid",
            format!("/v1/domains/{}", db1.to_uppercase()),
        ),
        ("plan", "/v1/plan".into()),
    ] {
        let (code, mut v) = a.call("GET", &path, None).await;
        assert_eq!(code, 200, "{path}: {v}");
        assert_exact_numbers(&path, &v);
        redact(&mut v);
        insta::assert_json_snapshot!(name, v);
    }
    assert_summary_is_pools_without_members(&a).await;
    // A disk rate without a max has no cap: `null`, not u64::MAX.
    let (_, v) = a.call("GET", "/v1/domains/db-1", None).await;
    let disk = get(&v, "/resources/disk_iops_sec");
    assert!(disk.is_object(), "{v}");
    assert_eq!(disk["cap"], Value::Null, "{v}");
    assert!(get(&v, "/resources/vcpus/cap").is_u64(), "{v}");
    // A cycle with actions: web-1 lost vCPUs behind the agent's back.
    let (_, v) = a.call("GET", "/v1/events", None).await;
    let before = v["events"].as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    a.hv.domains()
        .iter_mut()
        .find(|d| *d.name == *"web-1")
        .unwrap()
        .vcpus = 1;
    let (_, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert!(v["cycle"]["actions"].as_u64().unwrap() > 0, "{v}");
    // That cycle's records: the audit log was written before the cycle was
    // published, so they are all there.
    let (code, v) = a
        .call("GET", &format!("/v1/events?since={before}"), None)
        .await;
    assert_eq!(code, 200);
    assert_exact_numbers("/v1/events", &v);
    let mut evs: Vec<Value> = v["events"].as_array().unwrap().clone();
    assert!(evs.iter().all(|e| e["event"] == "action"), "{evs:?}");
    evs.iter_mut().for_each(|e| {
        e["seq"] = json!("[seq]");
        redact(e)
    });
    insta::assert_json_snapshot!("events", evs);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_happy_paths() {
    let (_dir, a) = standard_agent().await;

    // Runtime pool: create (201), repeat (200, unchanged), update, delete.
    let spec = r#"{"domains":["dev"],"vcpus":{"budget":2},"memory":{"budget":"4GiB"}}"#;
    let (c, mut v) = a.call("PUT", "/v1/pools/extra?wait=true", Some(spec)).await;
    assert_eq!(c, 201, "{v}");
    redact(&mut v);
    insta::assert_json_snapshot!("put_pool_created", v);
    let (c, v) = a.call("PUT", "/v1/pools/extra", Some(spec)).await;
    assert_eq!((c, get(&v, "/changed")), (200, &json!(false)), "{v}");
    let (c, v) = a.call("GET", "/v1/pools/extra", None).await;
    assert_eq!(c, 200);
    assert_eq!(get(&v, "/members/0/name"), "dev");
    assert_eq!(get(&v, "/source"), "runtime");
    let (c, v) = a
        .call(
            "PUT",
            "/v1/pools/extra?wait=true",
            Some(r#"{"domains":["dev"],"vcpus":{"budget":3}}"#),
        )
        .await;
    assert_eq!((c, get(&v, "/changed")), (200, &json!(true)), "{v}");
    let (c, v) = a.call("GET", "/v1/pools/extra", None).await;
    assert_eq!((c, get(&v, "/budget/vcpus")), (200, &json!(3)));
    let (c, v) = a.call("DELETE", "/v1/pools/extra?wait=true", None).await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(a.call("GET", "/v1/pools/extra", None).await.0, 404);

    // Members: add an unmanaged domain, remove it; remove a glob member, add it back.
    let (c, v) = a
        .post("/v1/pools/web/members?wait=true", r#"{"domain":"dev"}"#)
        .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(read(&a, "/v1/domains/dev", "/pool").await, "web");
    let (c, v) = a.post("/v1/pools/web/members", r#"{"domain":"dev"}"#).await;
    assert_eq!((c, get(&v, "/changed")), (200, &json!(false)));
    let (c, v) = a
        .call("DELETE", "/v1/pools/web/members/dev?wait=true", None)
        .await;
    assert_eq!(c, 200, "{v}");
    assert_eq!(read(&a, "/v1/domains/dev", "/pool").await, Value::Null);
    let (c, _) = a
        .call("DELETE", "/v1/pools/web/members/web-3?wait=true", None)
        .await;
    assert_eq!(c, 200);
    assert_eq!(read(&a, "/v1/domains/web-3", "/pool").await, Value::Null);
    let (c, _) = a
        .post("/v1/pools/web/members?wait=true", r#"{"domain":"web-3"}"#)
        .await;
    assert_eq!(c, 200);
    assert_eq!(read(&a, "/v1/domains/web-3", "/pool").await, "web");

    // Reservations: set, lower, clear.
    let (c, mut v) = a
        .post(
            "/v1/pools/web/allocate?wait=true",
            r#"{"domain":"web-1","vcpus":6,"memory":"4GiB"}"#,
        )
        .await;
    assert_eq!(c, 200, "{v}");
    redact(&mut v);
    insta::assert_json_snapshot!("allocate", v);
    let (_, v) = a.call("GET", "/v1/pools/web", None).await;
    assert_eq!(get(&v, "/reserved/vcpus"), 6);
    assert_summary_is_pools_without_members(&a).await;
    let web1 = named(&v["members"], "web-1");
    assert_eq!(web1["resources"]["vcpus"]["floor"], 6);
    // The target follows the reservation at once; the change itself is
    // issued now or, right after another vCPU change, when the cooldown ends.
    let vc = &web1["resources"]["vcpus"];
    assert!(vc["target"].as_u64().unwrap() >= 6, "{web1}");
    assert!(
        vc["next"].as_u64().unwrap() >= 6 || vc["reason"] == "cooldown",
        "{web1}"
    );
    let (c, v) = a
        .post("/v1/pools/web/release", r#"{"domain":"web-1","vcpus":2}"#)
        .await;
    assert_eq!((c, get(&v, "/reservation/vcpus")), (200, &json!(4)), "{v}");
    let (c, v) = a
        .post("/v1/pools/web/release", r#"{"domain":"web-1"}"#)
        .await;
    assert_eq!(c, 200);
    assert_eq!(v["reservation"], json!({}));

    // Pause / resume, agent-wide and per pool.
    assert_eq!(a.call("POST", "/v1/pause", None).await.0, 200);
    let (_, v) = a.call("GET", "/v1/status", None).await;
    assert_eq!(get(&v, "/agent/paused"), true);
    assert_eq!(read(&a, "/v1/plan", "/paused").await, true);
    assert_eq!(a.call("POST", "/v1/resume", None).await.0, 200);
    assert_eq!(
        a.call("POST", "/v1/pools/db/pause?wait=true", None).await.0,
        200
    );
    let (_, v) = a.call("GET", "/v1/pools/db", None).await;
    assert_eq!(get(&v, "/paused"), true);
    assert_eq!(a.call("POST", "/v1/pools/db/resume", None).await.0, 200);
    let (_, v) = a.call("GET", "/v1/status", None).await;
    assert_eq!(get(&v, "/agent/paused_pools"), &json!([]));

    // Reconcile, waiting or not.
    let (c, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_eq!((c, get(&v, "/waited")), (200, &json!(true)), "{v}");
    assert!(v["cycle"]["cycle"].as_u64().unwrap() > 1);
    let (c, v) = a.call("POST", "/v1/reconcile", None).await;
    assert_eq!((c, v), (200, json!({"waited": false})));

    // Changes were recorded as events.
    let (_, v) = a.call("GET", "/v1/events?limit=1000", None).await;
    let changes: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "change")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    // Every change above, in order; the repeats that changed nothing
    // (the same pool spec, the same member again) are not recorded.
    assert_eq!(
        changes,
        [
            r#"pool "extra" created"#,
            r#"pool "extra" updated"#,
            r#"pool "extra" deleted"#,
            r#"domain "dev" added to pool "web""#,
            r#"domain "dev" removed from pool "web""#,
            r#"domain "web-3" removed from pool "web""#,
            r#"domain "web-3" added to pool "web""#,
            r#"reservation of "web-1" in pool "web" set to vcpus 6, memory 4.0 GiB"#,
            r#"reservation of "web-1" in pool "web" lowered to vcpus 4, memory 4.0 GiB"#,
            r#"reservation of "web-1" in pool "web" lowered to none"#,
            "agent paused",
            "agent resumed",
            r#"pool "db" paused"#,
            r#"pool "db" resumed"#,
        ]
    );
    let (_, v) = a.call("GET", "/v1/events?since=1000000", None).await;
    assert_eq!(v, json!({"events": []}));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_json_errors_and_the_agent_keeps_serving() {
    let (dir, a) = standard_agent().await;
    let big = format!(r#"{{"domain":"web-1","pad":"{}"}}"#, "x".repeat(70 * 1024));
    fn alloc(body: &str) -> (&'static str, &'static str, Option<&str>) {
        ("POST", "/v1/pools/web/allocate", Some(body))
    }
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        alloc("{not json"),
        alloc(r#"{"domain":"web-1","vcpus":"four"}"#),
        alloc(r#"{"domain":"web-1","vcpus":-1}"#),
        alloc(r#"{"domain":"web-1","vcpus":1.5}"#),
        alloc(r#"{"domain":"web-1","vcpus":18446744073709551616}"#),
        alloc(r#"{"domain":"web-1","memory":"-4GiB"}"#),
        alloc(r#"{"domain":"web-1","memory":-4}"#),
        alloc(r#"{"domain":"web-1","memory":"99999999999999TiB"}"#),
        alloc(r#"{"domain":"web-1","memory":"4 parsecs"}"#),
        alloc(r#"{"domain":"web-1","vcpus":100000}"#),
        alloc(r#"{"domain":"web-1","vcpus":2,"extra":1}"#),
        alloc(r#"{"vcpus":2}"#),
        alloc(r#"{"domain":"web-1"}"#),
        alloc(r#"{"domain":"../etc","vcpus":1}"#),
        alloc(r#"{"domain":"db-1","vcpus":1}"#),
        alloc(r#"{"domain":"nosuch","vcpus":1}"#),
        (
            "POST",
            "/v1/pools/nope/allocate",
            Some(r#"{"domain":"web-1","vcpus":1}"#),
        ),
        alloc(r#"{"domain":"web-1","vcpus":9}"#),
        alloc(r#"{"domain":"web-3","vcpus":5}"#),
        alloc(r#"{"domain":"web-1","vcpus":13}"#),
        alloc(r#"{"domain":"web-1","disk_iops_sec":10}"#),
        (
            "POST",
            "/v1/pools/web/allocate?wait=maybe",
            Some(r#"{"domain":"web-1","vcpus":1}"#),
        ),
        alloc(big.as_str()),
        ("POST", "/v1/pools/web/release", Some(r#"{"domain":"dev"}"#)),
        ("PUT", "/v1/pools/web", Some(r#"{"vcpus":{"budget":1}}"#)),
        ("PUT", "/v1/pools/new", Some(r#"{"budget":1}"#)),
        (
            "PUT",
            "/v1/pools/new",
            Some(r#"{"vcpus":{"budget":4,"min":3,"max":2}}"#),
        ),
        ("PUT", "/v1/pools/new", Some(r#"{"vcpus":{"budget":400}}"#)),
        ("PUT", "/v1/pools/new", Some(r#"{"domains":["db-1"]}"#)),
        ("PUT", "/v1/pools/bad%20name", Some("{}")),
        ("DELETE", "/v1/pools/web", None),
        ("DELETE", "/v1/pools/nope", None),
        (
            "POST",
            "/v1/pools/web/members",
            Some(r#"{"domain":"db-1"}"#),
        ),
        (
            "POST",
            "/v1/pools/web/members",
            Some(r#"{"domain":"ghost"}"#),
        ),
        (
            "POST",
            "/v1/pools/nope/members",
            Some(r#"{"domain":"dev"}"#),
        ),
        ("DELETE", "/v1/pools/web/members/db-1", None),
        ("POST", "/v1/pools/nope/pause", None),
        ("GET", "/v1/pools/nope", None),
        ("GET", "/v1/domains/ghost", None),
        ("GET", "/v1/events?limit=x", None),
        ("GET", "/v1/pools?members=maybe", None),
        ("GET", "/v1/pools?verbose=1", None),
        ("GET", "/v1/nope", None),
        ("GET", "/v2/status", None),
        ("DELETE", "/v1/status", None),
        ("GET", "/v1/reconcile", None),
        ("PATCH", "/v1/pools/web", Some("{}")),
    ];
    let mut results = Vec::new();
    for (m, p, body) in &cases {
        let (code, v) = a.call(m, p, *body).await;
        assert!((400..500).contains(&code), "{m} {p}: {code} {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{m} {p}: {v}"
        );
        let shown = body.map(|b| {
            if b.len() > 80 {
                "<70 KiB body>".to_string()
            } else {
                b.to_string()
            }
        });
        results.push(json!({"request": format!("{m} {p} {}", shown.unwrap_or_default()).trim_end(), "status": code, "error": v["error"]}));
        assert_eq!(a.call("GET", "/v1/status", None).await.0, 200);
    }
    let text = serde_json::to_string(&results)
        .unwrap()
        .replace(&dir.path().display().to_string(), "[dir]");
    let results: Value = serde_json::from_str(&text).unwrap();
    insta::assert_json_snapshot!("bad_input", results);

    // Missing content type.
    let (code, v) = call(
        &a.socket,
        "POST",
        "/v1/pools/web/members",
        Some(r#"{"domain":"dev"}"#),
        false,
    )
    .await;
    assert_error(code, &v, 415, "unsupported_media_type");

    // A reload needs the service loop (virtpoold has one; this harness
    // has none): 503 with a JSON reason, not a hang.
    let (code, v) = a.call("POST", "/v1/reload", None).await;
    assert_error(code, &v, 503, "reload_unavailable");

    // None of it changed anything.
    let st = a.handle.runtime().lock().unwrap().clone();
    assert_eq!(st, virtpool::agent::state::RuntimeState::new());
    a.stop().await;
}

/// `POST /v1/reload` hands the reload to the service loop and answers with
/// what it gave: 200 with the file, 422 with the reason. When the loop does
/// not answer within the wait (the monitor's cycle is stuck in libvirt),
/// the caller gets a 503 that says so instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_answers_with_the_outcome_or_a_503_when_not_taken_in_time() {
    use virtpool::agent::load::LoadError;
    use virtpool::agent::service::{ReloadReport, ReloadRequest};
    use virtpool::core::config::ConfigError;
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let a = Agent::standard_with(dir.path(), Some(tx), Duration::from_secs(1)).await;

    // Taken, never answered: a 503 after the wait, naming it.
    let held = tokio::spawn(async move {
        let first = rx.recv().await.unwrap();
        (first, rx)
    });
    let t0 = std::time::Instant::now();
    let (code, v) = a.call("POST", "/v1/reload", None).await;
    assert_error(code, &v, 503, "reload_pending");
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    let msg = get(&v, "/error/message").as_str().unwrap();
    assert!(
        msg.contains("within 1s") && msg.contains("virtpoolctl status"),
        "{msg}"
    );
    let (first, mut rx) = held.await.unwrap();
    drop(first);

    // Answered: valid, then refused.
    let answer = tokio::spawn(async move {
        let ok = rx.recv().await.unwrap();
        let _ = ok.send(Ok(ReloadReport {
            file: "/etc/virtpool/virtpool.toml".into(),
            restart_only: vec!["api.socket".into()],
            set_aside: None,
        }));
        let refused = rx.recv().await.unwrap();
        let _ = refused.send(Err(LoadError::from(ConfigError::Parse {
            file: "/etc/virtpool/virtpool.toml".into(),
            message: "pools.web.vcpus.budget: bad".into(),
        })));
    });
    let (code, v) = a.call("POST", "/v1/reload", None).await;
    assert_eq!(
        (code, v),
        (
            200,
            json!({"file": "/etc/virtpool/virtpool.toml", "restart_only": ["api.socket"]})
        )
    );
    let (code, v) = a.call("POST", "/v1/reload", None).await;
    assert_error(code, &v, 422, "config_refused");
    assert!(
        get(&v, "/error/message")
            .as_str()
            .unwrap()
            .contains("pools.web.vcpus.budget: bad"),
        "{v}"
    );
    answer.await.unwrap();
    a.stop().await;
}

/// A cycle stuck in libvirt does not hold callers: `?wait=true` answers
/// after the wait limit — a change stands (200, no cycle in the answer),
/// `POST /v1/reconcile?wait=true` is a 503 that says why — and reads are
/// served meanwhile. Once the cycle returns, waits give cycles again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_stuck_cycle_end_at_the_wait_limit() {
    let (_dir, a) = stalled_agent(Duration::from_secs(1)).await;
    let hv = a.hv.clone();

    let t0 = std::time::Instant::now();
    let (code, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_error(code, &v, 503, "cycle_pending");
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(
        get(&v, "/error/message")
            .as_str()
            .unwrap()
            .contains("within 1s"),
        "{v}"
    );

    let spec = r#"{"domains":["dev"],"vcpus":{"budget":2}}"#;
    let (code, v) = a.call("PUT", "/v1/pools/extra?wait=true", Some(spec)).await;
    assert_eq!((code, get(&v, "/changed")), (201, &json!(true)), "{v}");
    assert!(v.get("cycle").is_none(), "{v}");
    assert_eq!(a.call("GET", "/v1/status", None).await.0, 200);
    assert_eq!(read(&a, "/v1/pools/extra", "/source").await, "runtime");

    hv.set_stall(false);
    let (code, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_eq!((code, get(&v, "/waited")), (200, &json!(true)), "{v}");
    assert!(get(&v, "/cycle/cycle").as_u64().is_some(), "{v}");
    a.stop().await;
}

/// A pool paused through the API shows as paused at once, before any cycle
/// plans it (`virtpoolctl pause web; virtpoolctl pool show web`); a resume
/// shows with the next cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shows_in_the_pool_views_before_the_next_cycle() {
    let (_dir, a) = standard_agent().await;
    let web_paused = |v: &serde_json::Value| -> bool {
        named(get(v, "/pools"), "web")["paused"].as_bool().unwrap()
    };
    assert!(!web_paused(&a.call("GET", "/v1/pools", None).await.1));
    // No cycle can finish from here on.
    a.hv.set_stall(true);
    let before = a.handle.report().cycle;
    let (code, v) = a.call("POST", "/v1/pools/web/pause", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(read(&a, "/v1/pools/web", "/paused").await, json!(true));
    assert!(web_paused(&a.call("GET", "/v1/pools", None).await.1));
    assert!(web_paused(
        &a.call("GET", "/v1/pools?members=false", None).await.1
    ));
    assert_eq!(
        a.handle.report().cycle,
        before,
        "a cycle ran: the test shows nothing"
    );
    // Planned by a cycle: paused in the plan too.
    a.hv.set_stall(false);
    let (code, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_eq!(code, 200, "{v}");
    let plan = a.handle.report().plan.clone().unwrap();
    assert!(plan.pools.iter().any(|p| p.name == "web" && p.paused));
    // Resumed while no cycle can run: paused until a cycle plans the
    // resume (nothing touches the members before it either).
    a.hv.set_stall(true);
    let (code, _) = a.call("POST", "/v1/pools/web/resume", None).await;
    assert_eq!(code, 200);
    assert_eq!(read(&a, "/v1/pools/web", "/paused").await, json!(true));
    a.hv.set_stall(false);
    let (code, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(read(&a, "/v1/pools/web", "/paused").await, json!(false));
    a.stop().await;
}

/// A scoped change does not wait for a full cycle that is observing, nor
/// for full requests queued behind it: the full observation gives way, the
/// scoped cycle runs, then the full cycle answers the full requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_change_goes_before_a_running_full_observation() {
    let (_dir, a) = stalled_agent(Duration::from_secs(5)).await;
    let hv = a.hv.clone();
    let (code, _) = a.call("POST", "/v1/reconcile", None).await;
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A full request queued behind the stuck observation.
    let socket = a.socket.clone();
    let full =
        tokio::spawn(
            async move { call(&socket, "POST", "/v1/reconcile?wait=true", None, true).await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;

    // db-1 is alone in its pool: the scoped cycle does not widen.
    let t0 = std::time::Instant::now();
    let v = post_ok(
        &a,
        "/v1/pools/db/allocate?wait=true",
        r#"{"domain":"db-1","vcpus":2}"#,
    )
    .await;
    let scoped_cycle = get(&v, "/cycle/cycle")
        .as_u64()
        .expect("answered with its cycle");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(!full.is_finished(), "the full cycle is still observing");

    hv.set_stall(false);
    let (code, v) = full.await.unwrap();
    assert_eq!(code, 200, "{v}");
    let full_cycle = get(&v, "/cycle/cycle").as_u64().unwrap();
    assert!(
        full_cycle > scoped_cycle,
        "{full_cycle} after {scoped_cycle}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_that_do_not_fit_are_refused_with_the_numbers() {
    let (_dir, a) = standard_agent().await;
    let (c, v) = allocate_web(&a, r#"{"domain":"web-1","vcpus":8}"#).await;
    assert_eq!(c, 200, "{v}");
    // web-1 holds 8, web-3 its floor of 1: 3 of 12 left.
    let (c, v) = allocate_web(&a, r#"{"domain":"web-2","vcpus":4}"#).await;
    assert_eq!(c, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("hold 9 of its 12 budget") && msg.contains("3 is free"),
        "{msg}"
    );
    assert_eq!(
        allocate_web(&a, r#"{"domain":"web-2","vcpus":3}"#).await.0,
        200
    );
    // Lowering always works; the same value again is no change.
    let (c, v) = allocate_web(&a, r#"{"domain":"web-1","vcpus":2}"#).await;
    assert_eq!((c, get(&v, "/changed")), (200, &json!(true)));
    let (c, v) = allocate_web(&a, r#"{"domain":"web-1","vcpus":2}"#).await;
    assert_eq!((c, get(&v, "/changed")), (200, &json!(false)));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_down_refuses_allocate_with_503_but_serves_reads_and_release() {
    let (_dir, a) = standard_agent().await;
    assert_eq!(
        allocate_web(&a, r#"{"domain":"web-1","vcpus":3}"#).await.0,
        200
    );
    a.hv.set_down(true);
    let (c, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_eq!(
        (c, get(&v, "/cycle/libvirt_connected")),
        (200, &json!(false)),
        "{v}"
    );
    let (c, v) = allocate_web(&a, r#"{"domain":"web-1","vcpus":4}"#).await;
    assert_error(c, &v, 503, "libvirt_unavailable");
    assert_eq!(a.call("GET", "/v1/pools", None).await.0, 200);
    let (_, v) = a.call("GET", "/v1/status", None).await;
    assert_eq!(get(&v, "/libvirt/connected"), false);
    assert_eq!(
        a.post("/v1/pools/web/release", r#"{"domain":"web-1"}"#)
            .await
            .0,
        200
    );
    assert_eq!(a.call("POST", "/v1/pause", None).await.0, 200);
    let (_, v) = a.call("GET", "/v1/events", None).await;
    assert!(has_event(&v, "libvirt_lost"), "{v}");
    a.hv.set_down(false);
    let (_, v) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_eq!(get(&v, "/cycle/libvirt_connected"), true);
    let (_, v) = a.call("GET", "/v1/events?limit=5", None).await;
    assert!(has_event(&v, "libvirt_restored"), "{v}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeOptions {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let a = Agent::standard_opts(dir.path(), opts).await;
    // Headers never finished: the connection is closed.
    let mut s = tokio::net::UnixStream::connect(&a.socket).await.unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection not closed");
    // Body never finished: 408.
    let mut s = tokio::net::UnixStream::connect(&a.socket).await.unwrap();
    s.write_all(b"POST /v1/pause HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.starts_with("HTTP/1.1 408") && text.contains("request_timeout"),
        "{text}"
    );
    // An idle keep-alive connection does not hold a slot forever either.
    let mut conn = a.client().connect().await.unwrap();
    assert!(conn
        .request(hyper::Method::GET, "/v1/status", None)
        .await
        .unwrap()
        .status
        .is_success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(conn
        .request(hyper::Method::GET, "/v1/status", None)
        .await
        .is_err());
    assert_eq!(a.call("GET", "/v1/status", None).await.0, 200);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_start_up_lock_stale_socket_mode_and_removal() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/api.sock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // A stale socket from a crashed agent is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let sock = api::bind(&path, "daemon").await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 1, "group daemon");
    // A second agent on the same socket refuses with a clear message.
    let e = api::bind(&path, "daemon").await.err().unwrap().to_string();
    assert!(
        e.contains("already serving") && e.contains("api.sock"),
        "{e}"
    );
    drop(sock);
    // A regular file in the way is not removed.
    let f = dir.path().join("file");
    std::fs::write(&f, "keep").unwrap();
    let e = api::bind(&f, "root").await.err().unwrap().to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep");
    // serve() removes the socket when it stops.
    let a = Agent::standard(dir.path()).await;
    let socket = a.socket.clone();
    assert!(socket.exists());
    a.stop().await;
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_changes_survive_a_restart() {
    let (dir, a) = standard_agent().await;
    let spec = r#"{"domains":["dev"],"vcpus":{"budget":2}}"#;
    assert_eq!(a.call("PUT", "/v1/pools/extra", Some(spec)).await.0, 201);
    assert_eq!(
        allocate_web(&a, r#"{"domain":"web-2","vcpus":3,"memory":2147483648}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        a.call("DELETE", "/v1/pools/web/members/web-3", None)
            .await
            .0,
        200
    );
    assert_eq!(a.call("POST", "/v1/pools/db/pause", None).await.0, 200);
    let before = a.handle.runtime().lock().unwrap().clone();
    let (_, pools_before) = a.call("GET", "/v1/pools", None).await;
    a.stop().await;
    let on_disk = virtpool::agent::state::RuntimeState::load(&dir.path().join("state")).unwrap();
    assert_eq!(on_disk, before);

    let a = Agent::standard(dir.path()).await;
    assert_eq!(*a.handle.runtime().lock().unwrap(), before);
    let (_, v) = a.call("GET", "/v1/pools/extra", None).await;
    assert_eq!(get(&v, "/members/0/name"), "dev");
    let (_, v) = a.call("GET", "/v1/domains/web-2", None).await;
    assert_eq!(get(&v, "/reservation/vcpus"), 3);
    assert_eq!(get(&v, "/reservation/memory"), 2147483648u64);
    assert_eq!(read(&a, "/v1/domains/web-3", "/pool").await, Value::Null);
    assert_eq!(read(&a, "/v1/pools/db", "/paused").await, true);
    let (_, pools_after) = a.call("GET", "/v1/pools", None).await;
    assert_eq!(
        pools_after["pools"].as_array().unwrap().len(),
        pools_before["pools"].as_array().unwrap().len()
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_close_the_quietest_or_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeOptions {
        max_connections: 2,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_millis(1500),
        ..Default::default()
    };
    let a = Agent::standard_opts(dir.path(), opts).await;
    async fn closed(s: &mut tokio::net::UnixStream, within: Duration) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
            Ok(_) => Some(buf),
            Err(_) => None,
        }
    }
    // Two clients that never finish their headers hold both slots...
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::UnixStream::connect(&a.socket).await.unwrap();
        s.write_all(b"GET /v1/status HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...a third is served at once: the older quiet one is closed for it.
    let t0 = std::time::Instant::now();
    let (code, _) = a.call("GET", "/v1/status", None).await;
    assert_eq!(code, 200);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(
        closed(&mut idle[0], Duration::from_secs(2)).await,
        Some(Vec::new()),
        "the oldest quiet connection is closed without an answer"
    );
    assert_eq!(closed(&mut idle[1], Duration::from_millis(300)).await, None);
    drop(idle);
    // Two requests being handled (their bodies are still coming) are never
    // closed: a third connection is refused at once.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::UnixStream::connect(&a.socket).await.unwrap();
        s.write_all(b"POST /v1/pause HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{")
            .await
            .unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::UnixStream::connect(&a.socket).await.unwrap();
    let _ = third
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let refused = closed(&mut third, Duration::from_secs(1)).await;
    assert!(
        refused.as_ref().is_some_and(|b| b.is_empty()),
        "{refused:?}"
    );
    // The busy ones get their answer (408: the body never came).
    for s in &mut busy {
        let text = closed(s, Duration::from_secs(5)).await.unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert_eq!(a.call("GET", "/v1/status", None).await.0, 200);
    a.stop().await;
}

/// Read answers are cached per published cycle and runtime change: a
/// change shows at once (with and without `?wait=true`), and ETags
/// revalidate with 304 until something changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_follow_changes_and_revalidate() {
    let (_dir, a) = standard_agent().await;
    let web1 = |v: &Value| -> Value { named(&v["members"], "web-1")["reservation"].clone() };

    // Cached answers carry an ETag; naming it gives 304 without a body.
    let mut tags = Vec::new();
    for path in ["/v1/status", "/v1/pools", "/v1/pools/web", "/v1/domains"] {
        let (code, tag, v) = get_tagged(&a.socket, path, None).await;
        assert_eq!(code, 200, "{path}: {v}");
        let tag = tag.unwrap_or_else(|| panic!("{path}: no ETag"));
        assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        let (code, again, v) = get_tagged(&a.socket, path, Some(&tag)).await;
        assert_eq!((code, &v), (304, &Value::Null), "{path}");
        assert_eq!(again.as_deref(), Some(tag.as_str()), "{path}");
        tags.push(tag);
    }
    let pool_tag = tags[2].clone();
    for header in [
        format!("W/{pool_tag}"),
        format!("\"nope\", {pool_tag}"),
        "*".to_string(),
    ] {
        let (code, _, _) = get_tagged(&a.socket, "/v1/pools/web", Some(&header)).await;
        assert_eq!(code, 304, "If-None-Match: {header}");
    }
    let (code, _, v) = get_tagged(&a.socket, "/v1/pools/web", Some("\"nope\"")).await;
    assert_eq!(code, 200);
    assert_eq!(web1(&v), json!({}));

    // A change without waiting: the next read shows it, old tags are stale.
    let (code, v) = allocate_web(&a, r#"{"domain":"web-1","vcpus":4}"#).await;
    assert_eq!(code, 200, "{v}");
    let (code, tag, v) = get_tagged(&a.socket, "/v1/pools/web", Some(&pool_tag)).await;
    assert_eq!(code, 200, "a change must invalidate the ETag");
    assert_ne!(tag.as_deref(), Some(pool_tag.as_str()));
    assert_eq!(web1(&v), json!({"vcpus": 4}));
    assert_eq!(v["reserved"]["vcpus"], 4);
    let (_, _, v) = get_tagged(&a.socket, "/v1/pools", None).await;
    let web = named(&v["pools"], "web");
    assert_eq!(web1(web), json!({"vcpus": 4}));
    let (_, _, v) = get_tagged(&a.socket, "/v1/domains", None).await;
    let d = named(&v["domains"], "web-1");
    assert_eq!(d["reservation"], json!({"vcpus": 4}));

    // With ?wait=true the answer comes after the cycle, and reads already
    // show that cycle and the new reservation.
    let v = post_ok(
        &a,
        "/v1/pools/web/allocate?wait=true",
        r#"{"domain":"web-1","vcpus":6}"#,
    )
    .await;
    let cycle = v["cycle"]["cycle"].as_u64().unwrap();
    let (_, _, st) = get_tagged(&a.socket, "/v1/status", None).await;
    assert!(st["cycle"].as_u64().unwrap() >= cycle, "{st}");
    let (_, _, v) = get_tagged(&a.socket, "/v1/pools/web", None).await;
    assert_eq!(web1(&v), json!({"vcpus": 6}));
    let member = named(&v["members"], "web-1");
    assert!(member["resources"]["vcpus"]["floor"].as_u64().unwrap() >= 6);

    // A cycle alone (no runtime change) publishes a new status: new tag.
    let (_, status_tag, _) = get_tagged(&a.socket, "/v1/status", None).await;
    let status_tag = status_tag.unwrap();
    let (code, _) = a.call("POST", "/v1/reconcile?wait=true", None).await;
    assert_eq!(code, 200);
    let (code, tag, v) = get_tagged(&a.socket, "/v1/status", Some(&status_tag)).await;
    assert_eq!(code, 200, "a new cycle must invalidate the ETag");
    assert_ne!(tag, Some(status_tag));
    assert!(v["cycle"].as_u64().unwrap() > cycle);
    a.stop().await;
}

/// Cached answers do not keep a published cycle alive: once the next one is
/// published, the previous observation and plan are freed even though no
/// read came since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_do_not_keep_an_old_cycle_alive() {
    let (_dir, a) = standard_agent().await;
    for path in ["/v1/status", "/v1/pools", "/v1/domains"] {
        let (code, tag, _) = get_tagged(&a.socket, path, None).await;
        assert_eq!((code, tag.is_some()), (200, true), "{path}");
    }
    let status = a.handle.report();
    let (old, old_cycle) = (std::sync::Arc::downgrade(&status), status.cycle);
    drop(status);
    let next = a.handle.reconcile(true).await.unwrap();
    assert!(next.cycle > old_cycle);
    drop(next);
    assert!(
        old.upgrade().is_none(),
        "the cycle the answers were built from is still held"
    );
    // And the cache still answers (rebuilt for the new cycle).
    let (code, tag, _) = get_tagged(&a.socket, "/v1/status", None).await;
    assert_eq!((code, tag.is_some()), (200, true));
    a.stop().await;
}
