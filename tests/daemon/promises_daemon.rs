//! Promises of the real `virtpoold` on the demo host (libvirt test driver
//! in the agent's process): a reload whose pools leave no room for the
//! runtime pools is refused; a reload that renames a pool sets aside the
//! runtime entries of the old name and keeps the rest (a paused pool is
//! never touched); `--check-config` checks against the live host when
//! libvirt answers and says when it could only check offline.
#![allow(clippy::unwrap_used)]

use crate::support::process::KillOnDrop;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEMO: &str = include_str!("../../config/demo.toml");

/// The demo config (its `[host]` and pools, `pools` replacing the pools
/// when given) with paths in `dir`.
fn config_text(dir: &Path, uri: Option<&str>, pools: Option<&str>) -> String {
    let host_and_pools = &DEMO[DEMO.find("[host]").unwrap()..];
    let body = match pools {
        Some(p) => format!(
            "{}\n{p}",
            &host_and_pools[..host_and_pools.find("# Front ends").unwrap()]
        ),
        None => host_and_pools.to_string(),
    };
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo-host.xml");
    let uri = uri.map_or(format!("test://{}", node.display()), str::to_string);
    format!(
        "[agent]\nlibvirt_uri = \"{uri}\"\ninterval = \"1s\"\nstate_dir = \"{}\"\n\n[api]\nsocket = \"{}\"\ngroup = \"root\"\n\n{body}",
        dir.join("state").display(),
        dir.join("virtpool.sock").display(),
    )
}

/// The demo pools with `batch` renamed `jobs` and web's vCPU budget set.
fn pools(web_vcpus: u64, batch: &str) -> String {
    let start = DEMO.find("# Front ends").unwrap();
    DEMO[start..]
        .replace(
            "vcpus = { budget = 16, min = 1, max = 8 }",
            &format!("vcpus = {{ budget = {web_vcpus}, min = 1, max = 8 }}"),
        )
        .replace("[pools.batch]", &format!("[pools.{batch}]"))
}

struct Daemon {
    _child: KillOnDrop,
    dir: tempfile::TempDir,
    sock: PathBuf,
    config: PathBuf,
}

impl Daemon {
    /// Starts the agent on the demo host with `state` (JSON) as its
    /// runtime state, and waits for its API after a first cycle.
    fn start(state: Option<&str>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("virtpool.toml");
        std::fs::write(&config, config_text(dir.path(), None, None)).unwrap();
        if let Some(st) = state {
            let sd = dir.path().join("state");
            std::fs::create_dir_all(&sd).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&sd, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::write(sd.join("state.json"), st).unwrap();
        }
        let child = Command::new(assert_cmd::cargo::cargo_bin("virtpoold"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sock = dir.path().join("virtpool.sock");
        let d = Daemon {
            _child: KillOnDrop(child),
            dir,
            sock,
            config,
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = d.try_get("/v1/status") {
                if v["cycle"].as_u64().unwrap_or(0) >= 1 {
                    return d;
                }
            }
            assert!(Instant::now() < end, "the agent's API did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_get(&self, path: &str) -> Option<Value> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.sock).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.contains(" 200 ")
            .then(|| serde_json::from_str(body).ok())?
    }

    fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed"))
    }

    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(assert_cmd::cargo::cargo_bin("virtpoolctl"))
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .env_remove("VIRTPOOL_SOCKET")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn write_config(&self, pools: &str) {
        std::fs::write(
            &self.config,
            config_text(self.dir.path(), None, Some(pools)),
        )
        .unwrap();
    }

    fn vcpus(&self, domain: &str) -> u64 {
        self.get(&format!("/v1/domains/{domain}"))["vcpus"]
            .as_u64()
            .unwrap()
    }
}

#[test]
fn a_reload_that_leaves_no_room_for_the_runtime_pools_is_refused() {
    let d = Daemon::start(None);
    let (code, _, err) = d.ctl(&["pool", "create", "extra", "--vcpus", "2", "--wait"]);
    assert_eq!(code, 0, "{err}");
    // The file alone fits (40 + 12 + 8 = 60 of 60); with extra's 2, not.
    d.write_config(&pools(40, "batch"));
    let (code, out, err) = d.ctl(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("with the runtime pools (extra) pool budgets for vcpus add up to 62 (batch 8 + db 12 + extra 2 + web 40) but the host has only 60 allocatable"),
        "{err}"
    );
    let st = d.get("/v1/status");
    assert!(
        st["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("runtime pools (extra)")),
        "{st}"
    );
    assert_eq!(
        d.get("/v1/pools/web")["budget"]["vcpus"],
        16,
        "the running config stays"
    );
    // Room for both: taken.
    d.write_config(&pools(38, "batch"));
    let (code, out, err) = d.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(d.get("/v1/pools/web")["budget"]["vcpus"], 38);
}

#[test]
fn a_renamed_pool_sets_aside_its_runtime_entries_and_a_paused_pool_stays_untouched() {
    // db paused (its members want other sizes: db-primary 4 → 9 vCPUs),
    // dev-sandbox added to batch.
    let d = Daemon::start(Some(
        r#"{"version": 1, "added": {"batch": ["dev-sandbox"]}, "paused_pools": ["db"]}"#,
    ));
    assert_eq!(d.vcpus("db-primary"), 4);
    assert_eq!(d.get("/v1/domains/dev-sandbox")["pool"], "batch");
    // batch becomes jobs.
    d.write_config(&pools(16, "jobs"));
    let (code, reloaded, err) = d.ctl(&["reload"]);
    assert_eq!(code, 0, "{reloaded}{err}");
    let (code, _, err) = d.ctl(&["reconcile", "--wait"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = d.ctl(&["reconcile", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        d.vcpus("db-primary"),
        4,
        "a member of the paused pool changed"
    );
    assert_eq!(d.get("/v1/pools/db")["paused"], true);
    assert!(
        reloaded.contains("runtime changes set aside (they do not fit the new file; kept in ")
            && reloaded.contains(r#"  1 domain(s) added to pool "batch", which no longer exists"#),
        "{reloaded}"
    );
    let st = d.get("/v1/status");
    assert_eq!(
        st["agent"]["paused_pools"],
        serde_json::json!(["db"]),
        "{st}"
    );
    assert!(st.get("config_error").is_none(), "{st}");
    // Kept for the operator; out of state.json.
    let aside: Vec<PathBuf> = std::fs::read_dir(d.dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.json.set-aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept: Value = serde_json::from_slice(&std::fs::read(&aside[0]).unwrap()).unwrap();
    assert_eq!(kept["added"]["batch"], serde_json::json!(["dev-sandbox"]));
    let now: Value =
        serde_json::from_slice(&std::fs::read(d.dir.path().join("state/state.json")).unwrap())
            .unwrap();
    assert!(
        now["added"].as_object().is_none_or(|m| m.is_empty()),
        "{now}"
    );
    assert_eq!(d.get("/v1/domains/dev-sandbox")["pool"], Value::Null);
}

/// `virtpoold --check-config` on `text`: (exit code, stdout, stderr).
fn check(dir: &Path, text: &str) -> (i32, String, String) {
    let f = dir.join("check.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin("virtpoold"))
        .args(["--check-config", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_config_checks_the_live_host_and_says_when_it_could_not() {
    let dir = tempfile::tempdir().unwrap();
    let base = config_text(dir.path(), None, None);

    let (code, out, err) = check(dir.path(), &base);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("; checked against libvirt at test://")
            && out.contains(": 12 domains, 0 warning(s)"),
        "{out}"
    );

    // Overrides and listed members that libvirt does not know: warnings.
    let text = format!("{base}\n[pools.db.members.db-gone]\nvcpus = {{ min = 1 }}\n",).replace(
        r#"domains = ["db-primary", "db-replica", "db-old"]"#,
        r#"domains = ["db-primary", "db-replica", "db-old", "db-typo"]"#,
    );
    let (code, out, err) = check(dir.path(), &text);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(r#"pool "db": domains lists "db-typo", which libvirt does not know"#)
            && err.contains(
                r#"pool "db": members."db-gone" overrides a domain libvirt does not know"#
            ),
        "{err}"
    );
    assert!(out.contains("2 warning(s)"), "{out}");

    // Floors no member can have: errors (web-3 has at most 2 vCPUs, 4 GiB).
    for (extra, want) in [
        (
            "[pools.web.members.web-3]\nvcpus = { min = 3 }\n",
            r#"pool "web": domain "web-3" gets vcpus.min 3 but can have at most 2 (its maximum)"#,
        ),
        (
            "[pools.web.members.web-3]\nmemory = { min = \"5GiB\" }\n",
            r#"pool "web": domain "web-3" gets memory.min 5.0 GiB but can have at most 4.0 GiB"#,
        ),
    ] {
        let (code, _, err) = check(dir.path(), &format!("{base}\n{extra}"));
        assert_eq!(code, 78, "{extra}: {err}");
        assert!(err.contains(want), "{err}");
    }

    // A libvirt_uri naming files that are not there.
    for (uri, want) in [
        (
            "test:///nonexistent/node.xml".to_string(),
            "agent.libvirt_uri (test:///nonexistent/node.xml) names the test driver file /nonexistent/node.xml, which does not exist",
        ),
        (
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock".to_string(),
            "names the socket /nonexistent/libvirt-sock, which does not exist",
        ),
    ] {
        let (code, _, err) = check(dir.path(), &config_text(dir.path(), Some(&uri), None));
        assert_eq!(code, 78, "{uri}: {err}");
        assert!(err.contains(want), "{err}");
    }

    // A socket nobody answers on: offline only, and said so.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let uri = format!("qemu+unix:///system?socket={}", stale.display());
    let (code, out, err) = check(dir.path(), &config_text(dir.path(), Some(&uri), None));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "checked offline only: libvirt at {uri} did not answer"
        )) && out.contains("domain names and floors were not checked against the host"),
        "{out}"
    );
}
