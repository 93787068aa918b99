//! `virtpoolctl` against an in-process agent (fake hypervisor, real socket):
//! every subcommand, human output pinned, exit codes, and authorization as
//! a non-root uid.
#![allow(clippy::unwrap_used)]

use crate::support::ctl::*;
use crate::support::inproc::*;
use crate::{root_agent, stalled_agent, standard_agent};
use std::os::unix::fs::PermissionsExt;
use virtpool::api::ServeOptions;

/// What a change made without `--wait` prints after its message.
const SAVED: &str = "change saved; it applies with the next cycle (use --wait to wait for it)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_works() {
    let (dir, a) = standard_agent().await;
    let s = a.socket.clone();

    let st = ok(&s, &["status"]).await;
    assert!(
        st.contains("libvirt      fake:/// connected")
            && st.contains("6 (5 active): 4 managed, 2 unmanaged"),
        "{st}"
    );
    insta::assert_snapshot!("ctl_pools", ok(&s, &["pools"]).await);
    insta::assert_snapshot!("ctl_pool_show", ok(&s, &["pool", "show", "db"]).await);
    insta::assert_snapshot!("ctl_domains", ok(&s, &["domains"]).await);
    insta::assert_snapshot!("ctl_domain", ok(&s, &["domain", "web-3"]).await);
    // The plan's moves (memory shrinks limited by max_shrink), in digits
    // that show each move.
    let plan = ok(&s, &["plan"]).await;
    let (first, rest) = plan.split_once('\n').unwrap();
    assert!(first.starts_with("plan from cycle "), "{first}");
    insta::assert_snapshot!("ctl_plan", rest);

    // A change without --wait says it applies with the next cycle.
    assert_eq!(
        ok(&s, &["pool", "add", "web", "dev"]).await,
        format!("domain \"dev\" added to pool \"web\"\n{SAVED}")
    );
    assert_eq!(
        ok(&s, &["pool", "remove", "web", "dev"]).await,
        format!("domain \"dev\" removed from pool \"web\"\n{SAVED}")
    );

    let out = ok(
        &s,
        &[
            "pool", "create", "extra", "--domain", "dev", "--vcpus", "2", "--memory", "2GiB",
            "--wait",
        ],
    )
    .await;
    assert!(out.starts_with("pool \"extra\" created\ncycle "), "{out}");
    let show = ok(&s, &["pool", "show", "extra"]).await;
    assert!(
        show.starts_with("pool extra (runtime) — 1 member(s)"),
        "{show}"
    );
    assert!(ok(&s, &["pool", "delete", "extra", "--wait"])
        .await
        .starts_with("pool \"extra\" deleted\ncycle "));
    let toml = dir.path().join("spec.toml");
    std::fs::write(&toml, "domains = [\"dev\"]\nvcpus = { budget = 2 }\n").unwrap();
    assert_eq!(
        ok(
            &s,
            &[
                "pool",
                "create",
                "fromtoml",
                "--file",
                toml.to_str().unwrap()
            ]
        )
        .await,
        format!("pool \"fromtoml\" created\n{SAVED}")
    );
    assert_eq!(
        ok(&s, &["pool", "delete", "fromtoml"]).await,
        format!("pool \"fromtoml\" deleted\n{SAVED}")
    );
    let json = dir.path().join("spec.json");
    std::fs::write(&json, r#"{"domains":["dev"],"memory":{"budget":"1GiB"}}"#).unwrap();
    assert_eq!(
        ok(
            &s,
            &[
                "pool",
                "create",
                "fromjson",
                "--file",
                json.to_str().unwrap()
            ]
        )
        .await,
        format!("pool \"fromjson\" created\n{SAVED}")
    );

    let out = ok(
        &s,
        &[
            "allocate", "web", "web-1", "--vcpus", "3", "--memory", "2GiB", "--wait",
        ],
    )
    .await;
    assert!(
        out.starts_with("web-1 in pool web: reservation vcpus 3, memory 2.0 GiB\ncycle "),
        "{out}"
    );
    assert_eq!(
        ok(&s, &["release", "web", "web-1", "--vcpus", "1"]).await,
        format!("web-1 in pool web: reservation vcpus 2, memory 2.0 GiB\n{SAVED}")
    );
    assert_eq!(
        ok(&s, &["release", "web", "web-1"]).await,
        format!("web-1 in pool web: reservation none\n{SAVED}")
    );
    assert_eq!(
        ok(&s, &["release", "web", "web-1"]).await,
        "web-1 in pool web: reservation none (unchanged)\n"
    );

    let plan = ok(&s, &["plan"]).await;
    assert!(plan.starts_with("plan from cycle "), "{plan}");
    assert!(ok(&s, &["reconcile", "--wait"]).await.starts_with("cycle "));
    assert_eq!(ok(&s, &["reconcile"]).await, "cycle requested\n");
    assert_eq!(ok(&s, &["pause"]).await, "agent paused\n");
    assert_eq!(
        ok(&s, &["pause"]).await,
        "agent paused (nothing to change)\n"
    );
    assert!(ok(&s, &["status"]).await.contains("enforce (paused)"));
    assert_eq!(ok(&s, &["resume"]).await, format!("agent resumed\n{SAVED}"));
    assert_eq!(ok(&s, &["pause", "web"]).await, "pool \"web\" paused\n");
    assert!(ok(&s, &["pool", "show", "web"])
        .await
        .starts_with("pool web (config) [paused]"));
    assert!(ok(&s, &["resume", "web", "--wait"])
        .await
        .starts_with("pool \"web\" resumed\ncycle "));
    let ev = ok(&s, &["events", "--limit", "100"]).await;
    let last = ev.lines().rfind(|l| l.contains(" change ")).unwrap();
    assert!(last.ends_with(" uid 0: pool \"web\" resumed"), "{ev}");
    assert!(ev.lines().next().unwrap().contains(" started "), "{ev}");

    // --json prints the API's JSON.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--json", "pool", "show", "web"]).await).unwrap();
    assert_eq!(v["name"], "web");
    let v: serde_json::Value = serde_json::from_str(&ok(&s, &["domains", "--json"]).await).unwrap();
    assert_eq!(v["domains"].as_array().unwrap().len(), 6);
    // VIRTPOOL_SOCKET works like --socket.
    let out = std::process::Command::new(ctl_path())
        .arg("pools")
        .env("VIRTPOOL_SOCKET", &s)
        .output()
        .unwrap();
    assert!(out.status.success());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_1_with_the_agents_message_and_usage_errors_exit_2() {
    let (dir, a) = standard_agent().await;
    let s = a.socket.clone();
    for (args, msg) in [
        (&["pool", "show", "nope"][..], "virtpoolctl: no pool \"nope\"\n"),
        (&["domain", "ghost"][..], "virtpoolctl: no domain \"ghost\" (by name or UUID)\n"),
        (&["allocate", "web", "web-1", "--vcpus", "9"][..], "virtpoolctl: vcpus reservation 9 for \"web-1\" is above its max 8\n"),
        (&["pool", "add", "web", "db-1"][..], "virtpoolctl: domain \"db-1\" is in pool \"db\" (explicit list): a domain belongs to at most one pool; to move it, add --move (API: \"move\": true)\n"),
        (&["pool", "delete", "web"][..], ""),
        (&["pool", "create", "big", "--vcpus", "1000"][..], ""),
        (&["resume", "nope"][..], "virtpoolctl: no pool \"nope\"\n"),
    ] {
        let o = ctl(&s, args).await;
        assert_eq!(o.code, 1, "{args:?}: {}{}", o.stdout, o.stderr);
        assert!(o.stdout.is_empty());
        if msg.is_empty() {
            assert!(o.stderr.starts_with("virtpoolctl: "), "{}", o.stderr);
        } else {
            assert_eq!(o.stderr, msg);
        }
    }
    // GET /metrics belongs to another module: until it lands, a clean 404.
    let o = ctl(&s, &["metrics"]).await;
    assert!(
        o.code == 0 || (o.code == 1 && o.stderr.contains("/metrics")),
        "{}",
        o.stderr
    );

    for args in [
        &["bogus"][..],
        &["allocate", "web", "web-1"][..],
        &["allocate", "web", "web-1", "--memory", "4 parsecs"][..],
        &["allocate", "web", "web-1", "--vcpus", "-1"][..],
        &["pool", "show", "bad/name"][..],
        &["pool", "create", "x", "--vcpus", "lots"][..],
        &[][..],
    ] {
        let o = ctl(&s, args).await;
        assert_eq!(o.code, 2, "{args:?}: {}{}", o.stdout, o.stderr);
    }
    let missing = dir.path().join("gone.sock");
    let o = ctl(&missing, &["status"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with(&format!(
            "virtpoolctl: cannot reach virtpoold at {}: is the service running?",
            missing.display()
        )),
        "{}",
        o.stderr
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_uids_may_read_but_only_group_members_may_change_or_read_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // api.group = staff (gid 50).
    let a = Agent::start(
        dir.path(),
        "staff",
        STANDARD_POOLS,
        Fake::new(standard_domains()),
        ServeOptions::default(),
    )
    .await;
    let s = a.socket.clone();
    // The test opens the socket to everyone so nobody can connect at all.
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o666)).unwrap();

    let nobody = Some((65534, 65534));
    for args in [
        &["status"][..],
        &["pools"][..],
        &["domains"][..],
        &["plan"][..],
        // A what-if (POST /v1/plan) changes nothing: a read.
        &["plan", "--what-if", "allocate web web-1 --vcpus 2"][..],
        &["pool", "history", "web"][..],
        &["top", "--once"][..],
    ] {
        let o = ctl_as(&s, nobody, args).await;
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    }
    // The audit log says who changed what: members only.
    let o = ctl_as(&s, nobody, &["events"]).await;
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "virtpoolctl: uid 65534 may not read the audit log: it needs root or membership of group \"staff\"\n"
    );
    assert_eq!(ctl_as(&s, Some((65534, 50)), &["events"]).await.code, 0);
    for args in [
        &["pause"][..],
        &["reconcile"][..],
        &["allocate", "web", "web-1", "--vcpus", "2"][..],
        &["pool", "add", "web", "dev"][..],
        &["pool", "create", "x", "--vcpus", "1"][..],
    ] {
        let o = ctl_as(&s, nobody, args).await;
        assert_eq!(o.code, 1, "{args:?}");
        assert_eq!(
            o.stderr,
            "virtpoolctl: uid 65534 may read but not change: changes need root or membership of group \"staff\"\n"
        );
    }
    let (code, v) = call(&s, "POST", "/v1/pause", None, true).await;
    assert_eq!(code, 200, "root may: {v}");
    assert_eq!(ctl(&s, &["resume"]).await.code, 0);
    // A member of the group (by its gid) may change.
    let o = ctl_as(&s, Some((65534, 50)), &["pause"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(a.handle.runtime().lock().unwrap().paused);
    a.stop().await;
}

#[test]
fn pool_create_help_names_its_values() {
    let out = std::process::Command::new(ctl_path())
        .args(["pool", "create", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--match <GLOB>"), "{help}");
    assert!(!help.contains("match_"), "{help}");
}

/// A full cycle stuck in libvirt: `allocate --wait` on a domain whose pool
/// has no other member still gets its cycle (the full observation gives
/// way to a scoped cycle once); a change that needs a
/// full cycle is saved and the CLI says its cycle did not finish in time
/// (exit 0); `reconcile --wait` fails with the agent's reason (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_on_a_stuck_cycle_say_so() {
    let (_dir, a) = stalled_agent(std::time::Duration::from_secs(1)).await;
    let hv = a.hv.clone();
    ok(&a.socket, &["reconcile"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let out = ok(
        &a.socket,
        &["allocate", "db", "db-1", "--vcpus", "2", "--wait"],
    )
    .await;
    assert!(
        out.starts_with("db-1 in pool db: reservation vcpus 2\ncycle "),
        "{out}"
    );
    let out = ok(
        &a.socket,
        &[
            "pool", "create", "extra", "--domain", "dev", "--vcpus", "1", "--wait",
        ],
    )
    .await;
    assert_eq!(
        out,
        "pool \"extra\" created\n\
         no cycle finished within the agent's wait limit (its cycle is still running): \
         the change is saved and applies when that cycle ends\n"
    );
    let o = ctl(&a.socket, &["reconcile", "--wait"]).await;
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("no cycle finished within 1s"),
        "{}",
        o.stderr
    );
    hv.set_stall(false);
    let out = ok(&a.socket, &["reconcile", "--wait"]).await;
    assert!(out.starts_with("cycle "), "{out}");
    a.stop().await;
}

/// Under `--json`, failures are JSON on stdout with the exit code of the
/// text mode (1 refused or failed, 2 usage); `metrics --json` is JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_prints_errors_and_metrics_as_json() {
    let (dir, a) = standard_agent().await;
    let s = a.socket.clone();
    let missing = dir.path().join("gone.sock");
    for (socket, args, exit, code, message) in [
        (&s, &["--json", "pool", "show", "nope"][..], 1, "not_found", "no pool \"nope\""),
        (&s, &["domain", "ghost", "--json"][..], 1, "not_found", "no domain \"ghost\" (by name or UUID)"),
        (&s, &["--json", "allocate", "web", "web-1", "--vcpus", "9"][..], 1, "does_not_fit", "vcpus reservation 9 for \"web-1\" is above its max 8"),
        (&s, &["--json", "bogus"][..], 2, "usage", "unrecognized subcommand 'bogus'"),
        (&s, &["--json"][..], 2, "usage", "a subcommand is required (see --help)"),
        (&s, &["--json", "allocate", "web", "web-1"][..], 2, "usage", "allocate needs at least one of --vcpus, --memory, --disk-bytes-sec, --disk-iops-sec, --cpu"),
        (&s, &["--json", "events", "--since", "soon"][..], 2, "usage", "--since \"soon\": not a time ago like \"10m\" or \"2h\", nor a UTC time like \"2024-05-01 10:00:00\""),
        (&missing, &["--json", "status"][..], 1, "unreachable", ""),
    ] {
        let o = ctl(socket, args).await;
        assert_eq!(o.code, exit, "{args:?}: {}{}", o.stdout, o.stderr);
        assert_eq!(o.stderr, "", "{args:?}");
        let v: serde_json::Value = serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", o.stdout));
        assert_eq!(v["error"]["code"], code, "{args:?}: {v}");
        if message.is_empty() {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("cannot reach virtpoold at "),
                "{v}"
            );
        } else {
            assert_eq!(v["error"]["message"], message, "{args:?}");
        }
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    }

    let v: serde_json::Value = serde_json::from_str(&ok(&s, &["--json", "metrics"]).await).unwrap();
    let samples = v["metrics"].as_array().unwrap();
    let find = |name: &str, labels: serde_json::Value| {
        samples
            .iter()
            .find(|x| x["name"] == name && x["labels"] == labels)
            .unwrap_or_else(|| panic!("{name} {labels} not in {v}"))
            .clone()
    };
    let up = find("virtpool_up", serde_json::json!({}));
    assert_eq!(up["value"], 1);
    assert_eq!(up["type"], "gauge");
    // The same numbers as the text.
    let text = ok(&s, &["metrics"]).await;
    let budget_line = text
        .lines()
        .find(|l| l.starts_with("virtpool_pool_budget_vcpus{") && l.contains("pool=\"web\""))
        .unwrap();
    let budget = find(
        "virtpool_pool_budget_vcpus",
        serde_json::json!({"pool": "web"}),
    );
    assert_eq!(budget["value"], 12, "{budget_line}");
    let count = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert_eq!(samples.len(), count);
    a.stop().await;
}

/// A reader that went away (`virtpoolctl pools | head -1`) ends the
/// output quietly with exit 0, not with a panic (exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_quietly() {
    let (dir, a) = standard_agent().await;
    for args in [
        &["pools"][..],
        &["--json", "pools"][..],
        &["metrics"][..],
        &["events"][..],
        &["events", "--follow"][..],
        // Nothing to print, ever: the closed pipe is noticed all the same.
        &["events", "--follow", "--domain", "nobody"][..],
        &["--json", "pool", "show", "nope"][..],
    ] {
        // The pipe's read end is closed before the program starts: its
        // first write fails, whenever it comes.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let errors = dir.path().join("stderr");
        let mut child = tokio::process::Command::new(ctl_path())
            .arg("--socket")
            .arg(&a.socket)
            .args(args)
            .stdout(writer)
            .stderr(std::fs::File::create(&errors).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let st = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{args:?} did not end within 60 s"))
            .unwrap();
        let stderr = std::fs::read_to_string(&errors).unwrap();
        assert_eq!(st.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
    a.stop().await;
}

/// Right after a change without `--wait`, the pool view shows it as
/// pending (a full cycle is held in libvirt here, so none can plan it);
/// after the cycle, as done. Unadmitted members: a count, then one per
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_views_show_pending_changes_and_unadmitted_members() {
    let (_dir, a) = stalled_agent(std::time::Duration::from_secs(1)).await;
    let s = a.socket.clone();
    assert_eq!(
        ok(&s, &["pool", "add", "web", "dev"]).await,
        format!("domain \"dev\" added to pool \"web\"\n{SAVED}")
    );
    ok(&s, &["pool", "remove", "web", "web-2"]).await;
    insta::assert_snapshot!("ctl_pool_pending", ok(&s, &["pool", "show", "web"]).await);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--json", "pool", "show", "web"]).await).unwrap();
    assert_eq!(v["pending"], serde_json::json!(["dev"]));
    assert_eq!(v["leaving"], serde_json::json!(["web-2"]));
    a.hv.set_stall(false);
    ok(&s, &["reconcile", "--wait"]).await;
    let show = ok(&s, &["pool", "show", "web"]).await;
    assert!(
        show.starts_with("pool web (config) — 3 member(s)\n"),
        "{show}"
    );
    assert!(
        show.contains("\n  dev ") && !show.contains("web-2") && !show.contains("pending"),
        "{show}"
    );
    a.stop().await;

    // Floors of 2 vCPUs for three members in a budget of 3: one fits.
    let dir = tempfile::tempdir().unwrap();
    let a = root_agent(
        dir.path(),
        "[pools.web]\nmatch = \"web-*\"\nvcpus = { budget = 3, min = 2 }\n",
        Fake::new(standard_domains()),
    )
    .await;
    insta::assert_snapshot!(
        "ctl_pool_unadmitted",
        ok(&a.socket, &["pool", "show", "web"]).await
    );
    a.stop().await;
}

/// `events`: actions in units a person reads, `--domain`, `--pool`,
/// `--since`, and `--follow` printing new events as they come until
/// interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filter_and_follow_like_journalctl() {
    let (_dir, a) = standard_agent().await;
    let s = a.socket.clone();
    limit_dev_disk(&s, "128MiB", &["--wait"]).await;
    let ev = ok(&s, &["events", "--domain", "dev"]).await;
    let lines: Vec<&str> = ev.lines().collect();
    assert_eq!(lines.len(), 1, "{ev}");
    assert!(
        lines[0].ends_with(
            "  action      dev disk vda unlimited bandwidth, unlimited IOPS → 128.0 MiB/s, unlimited IOPS: ok"
        ),
        "{ev}"
    );
    // The audit record keeps the raw numbers.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&s, &["--json", "events", "--domain", "dev"]).await).unwrap();
    assert_eq!(v["events"][0]["action"]["to"]["total_bytes_sec"], 134217728);

    let ev = ok(&s, &["events", "--pool", "io"]).await;
    assert!(
        ev.contains(" dev disk vda ") && ev.contains("uid 0: pool \"io\" created"),
        "{ev}"
    );
    assert_eq!(ev.lines().count(), 2, "{ev}");
    let ev = ok(&s, &["events", "--pool", "web", "--limit", "1000"]).await;
    assert!(!ev.contains(" dev ") && ev.contains(" web-1 "), "{ev}");
    for l in ev.lines() {
        assert!(l.contains(" action      web-"), "{l}");
    }
    let all = ok(&s, &["events", "--since", "10m"]).await;
    assert!(all.lines().next().unwrap().contains(" started "), "{all}");
    assert_eq!(
        ok(&s, &["events", "--since", "2999-01-01"]).await,
        "no events\n"
    );
    let two = ok(&s, &["events", "--since", "1h", "--limit", "2"]).await;
    assert_eq!(two.lines().count(), 2);
    assert!(all.ends_with(&two), "{all}\n---\n{two}");

    // Follow: the last event about dev, then the new ones.
    let mut child = tokio::process::Command::new(ctl_path())
        .arg("--socket")
        .arg(&s)
        .args(["events", "--follow", "--domain", "dev"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut read = async || {
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line within 30 s")
            .unwrap()
            .expect("not the end")
    };
    let first = read().await;
    assert!(first.contains("→ 128.0 MiB/s"), "{first}");
    limit_dev_disk(&s, "64MiB", &[]).await;
    let second = read().await;
    assert!(
        second
            .ends_with("dev disk vda 128.0 MiB/s, unlimited IOPS → 64.0 MiB/s, unlimited IOPS: ok"),
        "{second}"
    );
    // Interrupted: ends with exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    a.stop().await;
}

/// `pool create io --domain dev --disk-bytes-sec <rate> <more>`: dev's
/// disk limited through the runtime pool "io".
async fn limit_dev_disk(s: &std::path::Path, rate: &str, more: &[&str]) {
    let args = [
        "pool",
        "create",
        "io",
        "--domain",
        "dev",
        "--disk-bytes-sec",
        rate,
    ];
    ok(s, &[&args[..], more].concat()).await;
}

/// The completion scripts complete pool and domain names from the running
/// agent (through the hidden `__complete`), and subcommands as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_offer_the_running_agents_names() {
    let (dir, a) = standard_agent().await;
    let s = a.socket.clone();
    assert_eq!(ok(&s, &["__complete", "pools"]).await, "db\nweb\n");
    assert_eq!(
        ok(&s, &["__complete", "domains"]).await,
        "db-1\ndev\nold-1\nweb-1\nweb-2\nweb-3\n"
    );
    let sock = s.to_str().unwrap();
    for (words, want) in [
        (&["pool", "show", "w"][..], Some("web\n")),
        (
            &["pool", "add", "web", ""][..],
            Some("db-1\ndev\nold-1\nweb-1\nweb-2\nweb-3\n"),
        ),
        (
            &["allocate", "--wait", "web", "web-"][..],
            Some("web-1\nweb-2\nweb-3\n"),
        ),
        (&["events", "--pool", ""][..], Some("db\nweb\n")),
        (
            &["events", "--limit", "5", "--domain", "d"][..],
            Some("db-1\ndev\n"),
        ),
        (&["pause", ""][..], Some("db\nweb\n")),
        (&["domain", "o"][..], Some("old-1\n")),
        (&["pool", ""][..], None),
        (&["status", ""][..], None),
        (&["pool", "show", "web", ""][..], None),
        (&["events", "--limit", ""][..], None),
        (&["allocate", "web", "web-1", "--"][..], None),
    ] {
        let mut args = vec!["__complete", "line", "--", "--socket", sock];
        args.extend(words);
        let o = ctl(&dir.path().join("elsewhere.sock"), &args).await;
        match want {
            Some(w) => {
                assert_eq!(o.code, 0, "{words:?}: {}", o.stderr);
                assert_eq!(o.stdout, w, "{words:?}");
            }
            None => {
                assert_eq!(o.code, 1, "{words:?}: {}", o.stdout);
                assert_eq!(o.stdout, "", "{words:?}");
            }
        }
    }
    // No agent: no names, quietly.
    let o = ctl(&dir.path().join("gone.sock"), &["__complete", "pools"]).await;
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (0, "", ""));

    // The scripts, run by their shells.
    let assets = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(ctl_path())
        .arg("--generate-assets")
        .arg(assets.path())
        .output()
        .unwrap();
    assert!(st.status.success());
    let ctl = ctl_path();
    let ctl = ctl.to_str().unwrap();
    let bash = |words: &[&str]| {
        let cword = words.len() - 1;
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let cmd = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
             _virtpoolctl_names '{ctl}' '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            assets.path().join("virtpoolctl.bash").display(),
            quoted.join(" "),
            words.join(" "),
            words[cword],
            words[cword.saturating_sub(1)],
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        bash(&[ctl, "--socket", sock, "pool", "show", ""]),
        "db\nweb\n"
    );
    assert_eq!(
        bash(&[ctl, "--socket", sock, "release", "web", "web-"]),
        "web-1\nweb-2\nweb-3\n"
    );
    let subs = bash(&[ctl, "--socket", sock, "pool", ""]);
    assert!(
        subs.lines().any(|l| l == "show") && subs.lines().any(|l| l == "add"),
        "{subs}"
    );
    // VIRTPOOL_SOCKET reaches the program the script runs.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_WORDS=('{ctl}' pause ''); COMP_CWORD=2; _virtpoolctl_names; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            assets.path().join("virtpoolctl.bash").display()
        ))
        .env("VIRTPOOL_SOCKET", &s)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "db\nweb\n");
    // fish and zsh where they are installed.
    if which("fish") {
        let out = std::process::Command::new("fish")
            .arg("-c")
            .arg(format!(
                "source '{}'; complete -C '{ctl} --socket {sock} allocate web '",
                assets.path().join("virtpoolctl.fish").display()
            ))
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = got.lines().map(|l| l.split('\t').next().unwrap()).collect();
        assert_eq!(
            names,
            ["db-1", "dev", "old-1", "web-1", "web-2", "web-3"],
            "{got}"
        );
    } else {
        eprintln!("NOTE: fish is not installed: its completion script was not run");
    }
    if which("zsh") {
        let z = std::fs::read_to_string(assets.path().join("_virtpoolctl")).unwrap();
        assert!(
            z.contains(":pool:_virtpoolctl_names pools'")
                && z.contains(":domain:_virtpoolctl_names domains'")
        );
        let out = std::process::Command::new("zsh")
            .arg("-n")
            .arg(assets.path().join("_virtpoolctl"))
            .output()
            .unwrap();
        assert!(out.status.success(), "zsh -n: {out:?}");
    } else {
        eprintln!("NOTE: zsh is not installed: its completion script was not checked");
    }
    a.stop().await;
}

fn which(program: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}
