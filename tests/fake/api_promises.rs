//! Promises of the control API and `virtpoolctl` on an awkward host, against
//! an in-process agent (fake hypervisor, real socket): domain names with
//! spaces and non-ASCII letters everywhere a domain is named; one rule for
//! moving a member (explicit, or refused with one message); runtime entries
//! of a pool that no longer exists left out while a paused pool stays
//! paused; the host's declared and measured capacity in `status`, the API
//! and the metrics.
#![allow(clippy::unwrap_used)]

use crate::support::ctl::*;
use crate::support::inproc::*;
use crate::{post_ok, root_agent, standard_agent};
use serde_json::{json, Value};

/// Every byte but letters, digits and `-_.~` percent-encoded.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_spaces_and_accents_work_everywhere_a_domain_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut domains = standard_domains();
    domains.push(dom("web with spaces", 2, 4, 4));
    domains.push(dom("web-ünïcödé", 2, 4, 4));
    domains.push(dom("dev box", 2, 4, 4));
    let a = root_agent(dir.path(), STANDARD_POOLS, Fake::new(domains)).await;
    let s = a.socket.clone();

    // The API: the name percent-encoded in the path, decoded by the server.
    for name in ["web with spaces", "web-ünïcödé", "dev box"] {
        let (code, v) = a
            .call("GET", &format!("/v1/domains/{}", enc(name)), None)
            .await;
        assert_eq!((code, &v["name"]), (200, &json!(name)), "{name}: {v}");
    }
    // A glob matches them like any other name.
    let (_, v) = a
        .call("GET", &format!("/v1/domains/{}", enc("web-ünïcödé")), None)
        .await;
    assert_eq!(v["pool"], "web", "{v}");

    // The command line: domain, pool add / remove, allocate / release.
    let out = ok(&s, &["domain", "web with spaces"]).await;
    assert!(out.contains("web with spaces"), "{out}");
    assert!(ok(&s, &["domain", "web-ünïcödé"])
        .await
        .contains("web-ünïcödé"));
    assert_eq!(
        ok(&s, &["pool", "add", "db", "dev box", "--wait"])
            .await
            .lines()
            .next(),
        Some("domain \"dev box\" added to pool \"db\"")
    );
    let out = ok(&s, &["allocate", "db", "dev box", "--vcpus", "2"]).await;
    assert!(
        out.starts_with("dev box in pool db: reservation vcpus 2"),
        "{out}"
    );
    ok(&s, &["release", "db", "dev box"]).await;
    let out = ok(&s, &["pool", "remove", "db", "dev box"]).await;
    assert!(
        out.starts_with("domain \"dev box\" removed from pool \"db\""),
        "{out}"
    );
    // events --domain takes such a name too.
    ok(&s, &["events", "--domain", "dev box"]).await;

    // What libvirt refuses in a name is a usage error, not a request.
    let o = ctl(&s, &["domain", "a/b"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("contains '/'"), "{}", o.stderr);
    let (code, v) = a.call("GET", "/v1/domains/a%0Ab", None).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control character"),
        "{v}"
    );
    // Pool names stay simple.
    let o = ctl(&s, &["pool", "show", "bad name"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_is_explicit_everywhere_or_refused_with_one_message() {
    let (_dir, a) = standard_agent().await;
    let s = a.socket.clone();
    let refusal = |domain: &str, place: &str| {
        format!(
            "domain {domain:?} is in {place}: a domain belongs to at most one pool; to move it, add --move (API: \"move\": true)"
        )
    };

    // A new pool listing a member of another pool: refused, nothing saved.
    let (code, v) = a
        .call(
            "PUT",
            "/v1/pools/stolen",
            Some(r#"{"domains": ["web-1"], "vcpus": {"budget": 2}}"#),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(
        v["error"]["message"],
        json!(refusal("web-1", r#"pool "web" (glob "web-*")"#))
    );
    let o = ctl(
        &s,
        &[
            "pool", "create", "stolen", "--domain", "web-1", "--vcpus", "2",
        ],
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(
        o.stderr,
        format!(
            "virtpoolctl: {}\n",
            refusal("web-1", r#"pool "web" (glob "web-*")"#)
        )
    );
    assert_eq!(
        a.handle.runtime().lock().unwrap().clone(),
        virtpool::agent::state::RuntimeState::new()
    );
    // Adding a member of another pool: the same message.
    let o = ctl(&s, &["pool", "add", "web", "db-1"]).await;
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        format!(
            "virtpoolctl: {}\n",
            refusal("db-1", r#"pool "db" (explicit list)"#)
        )
    );
    // With --move: taken, and said so.
    let out = ok(
        &s,
        &[
            "pool", "create", "stolen", "--domain", "web-1", "--vcpus", "2", "--move", "--wait",
        ],
    )
    .await;
    assert!(
        out.starts_with(
            r#"pool "stolen" created; moved into it: "web-1" from pool "web" (glob "web-*")"#
        ),
        "{out}"
    );
    let (_, v) = a.call("GET", "/v1/domains/web-1", None).await;
    assert_eq!(
        (&v["pool"], &v["via"]),
        (&json!("stolen"), &json!("explicit"))
    );
    // Removing it from where it was: not a member, and where it is.
    let o = ctl(&s, &["pool", "remove", "web", "web-1"]).await;
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "virtpoolctl: domain \"web-1\" is not a member of pool \"web\": it is in pool \"stolen\" (explicit list)\n"
    );
    // The body's "move" on POST .../members; moving back to a config pool.
    let v = post_ok(
        &a,
        "/v1/pools/db/members",
        r#"{"domain": "web-2", "move": true}"#,
    )
    .await;
    assert_eq!(
        v["message"],
        r#"domain "web-2" moved from pool "web" (glob "web-*") to pool "db""#
    );
    let out = ok(&s, &["pool", "add", "web", "web-1", "--move", "--wait"]).await;
    assert!(
        out.starts_with(r#"domain "web-1" moved from pool "stolen" (explicit list) to pool "web""#),
        "{out}"
    );
    let (_, v) = a.call("GET", "/v1/pools/stolen", None).await;
    assert!(v["members"].as_array().unwrap().is_empty(), "{v}");
    // A config pool's explicit list, moved out at run time.
    let out = ok(&s, &["pool", "add", "stolen", "db-1", "--move", "--wait"]).await;
    assert!(
        out.contains(r#"moved from pool "db" (explicit list)"#),
        "{out}"
    );
    let (_, v) = a.call("GET", "/v1/domains/db-1", None).await;
    assert_eq!(v["pool"], "stolen", "{v}");
    // A bad "move" is refused as JSON of the wrong shape.
    let (code, v) = a
        .call("PUT", "/v1/pools/x", Some(r#"{"move": "yes"}"#))
        .await;
    assert_eq!(code, 400, "{v}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_pool_that_no_longer_exists_leave_a_paused_pool_paused() {
    let dir = tempfile::tempdir().unwrap();
    // As a renamed config pool leaves them: members added to "batch" and
    // a pause of "batch", beside a pause of "web" (web-1..3 want 4 vCPUs
    // each: a cycle that ignores the pause changes them).
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::write(
        state.join("state.json"),
        r#"{"version": 1, "added": {"batch": ["dev"]}, "paused_pools": ["batch", "web"]}"#,
    )
    .unwrap();
    let hv = Fake::new(standard_domains());
    let ctl = hv.ctl();
    let a = root_agent(dir.path(), STANDARD_POOLS, hv).await;
    a.handle.reconcile(true).await.unwrap();
    let vcpus = |name: &str| {
        ctl.domains()
            .iter()
            .find(|d| &*d.name == name)
            .unwrap()
            .vcpus
    };
    for w in ["web-1", "web-2", "web-3"] {
        assert_eq!(vcpus(w), 2, "{w} was changed in a paused pool");
    }
    let (_, v) = a.call("GET", "/v1/pools/web", None).await;
    assert_eq!(v["paused"], true, "{v}");
    let (_, st) = a.call("GET", "/v1/status", None).await;
    let err = st["config_error"].as_str().unwrap_or_default();
    assert!(
        err.contains(r#"1 domain(s) added to pool "batch", which does not exist ("dev")"#)
            && err.contains(r#"pause of pool "batch", which does not exist"#),
        "{st}"
    );
    // db, not paused, is managed as before.
    assert_eq!(vcpus("db-1"), 8);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_declared_beside_measured_capacity_and_pressure() {
    let (_dir, a) = standard_agent().await;
    let s = a.socket.clone();
    let measured = a.handle.report().host.unwrap();

    let (_, v) = a.call("GET", "/v1/status", None).await;
    let c = &v["capacity"];
    assert_eq!(
        c["host"]["cpus"],
        json!({"declared": 16, "measured": measured.cpus, "used": 16}),
        "{v}"
    );
    assert_eq!(c["host"]["memory"]["declared"], json!(64u64 << 30));
    assert_eq!(
        c["host"]["memory"]["measured"],
        json!(measured.memory_total)
    );
    assert_eq!(c["reserved"], json!({"cpus": 1, "memory": 1u64 << 30}));
    assert_eq!(c["ratio"], json!({"cpus": 4.0, "memory": 1.0}));
    assert_eq!(c["allocatable"]["vcpus"], 60);
    assert_eq!(c["memory_pressure"]["threshold"], 0);
    assert_eq!(c["memory_pressure"]["under"], false);

    let out = ok(&s, &["status"]).await;
    let gib = |b: u64| virtpool::core::units::human_bytes(b);
    for want in [
        format!(
            "host         16 CPUs declared ({} measured), 64.0 GiB declared ({} measured)",
            measured.cpus,
            gib(measured.memory_total)
        ),
        "reserved     1 CPU, 1.0 GiB".to_string(),
        "ratio        CPU 4.0, memory 1.0".to_string(),
        "allocatable  60 vCPUs, 63.0 GiB, 1.0 GiB/s, 10000 IOPS".to_string(),
        "memory       ".to_string(),
        ", pressure below 0 B: no pressure".to_string(),
    ] {
        assert!(out.contains(&want), "{want:?} not in\n{out}");
    }

    let text = ok(&s, &["metrics"]).await;
    for want in [
        "virtpool_host_declared_cpu_cores 16\n".to_string(),
        format!("virtpool_host_cpu_cores {}\n", measured.cpus),
        format!("virtpool_host_declared_memory_bytes {}\n", 64u64 << 30),
        "virtpool_host_reserved_cpu_cores 1\n".to_string(),
        format!("virtpool_host_reserved_memory_bytes {}\n", 1u64 << 30),
        "virtpool_host_cpu_allocation_ratio 4\n".to_string(),
        "virtpool_host_memory_allocation_ratio 1\n".to_string(),
        "virtpool_host_memory_pressure 0\n".to_string(),
        "virtpool_host_memory_pressure_threshold_bytes 0\n".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in metrics");
    }
    let _: Value = serde_json::from_str(&ok(&s, &["--json", "status"]).await).unwrap();
    a.stop().await;
}
