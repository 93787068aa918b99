//! The real `virtpoold` against the files a local user could plant or a
//! bad edit could leave: directories others may write to, symbolic links
//! in place of the files it writes, special and corrupt state files, state
//! entries that no longer fit, a huge state file, an emptied config. No
//! libvirtd is needed: the agent starts (libvirt reported down) or is
//! refused before it would connect.

use crate::support::blackbox::*;
use crate::support::daemon::spawn_logged;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `virtpoold --config CFG` until it exits (killed after `limit`):
/// its exit code (`None` if it had to be killed) and its output.
fn run_to_exit(cfg: &Path, limit: Duration) -> (Option<i32>, String) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = spawn_logged(Command::new(virtpoold()), cfg, &[], out.path());
    let code = match poll(limit, || child.try_wait().unwrap()) {
        Some(st) => st.code(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    (
        code,
        std::fs::read_to_string(out.path()).unwrap_or_default(),
    )
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// `dir/name`, created.
fn new_dir(dir: &Path, name: &str) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir(&sub).unwrap();
    sub
}

/// `dir/state`, created with mode 0700.
fn state_dir(dir: &Path) -> PathBuf {
    let state = new_dir(dir, "state");
    mode(&state, 0o700);
    state
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn directories_others_may_write_or_own_are_refused_naming_path_owner_and_mode() {
    let dir = test_dir("baddir");
    let cfg = config_without_libvirt(dir.path(), "");
    let state = new_dir(dir.path(), "state");

    // World-writable (sticky or not): anyone could plant links in it.
    for m in [0o777, 0o1777, 0o770] {
        mode(&state, m);
        let (code, log) = run_to_exit(&cfg, Duration::from_secs(30));
        assert_eq!(code, Some(78), "mode {m:o}: {log}");
        assert!(
            log.contains(&format!("{}: owned by uid ", state.display()))
                && log.contains(&format!("with mode {m:04o}")),
            "mode {m:o}: {log}"
        );
        assert!(files_in(&state).is_empty(), "written into {m:o}");
        assert!(!dir.path().join("virtpool.sock").exists());
    }

    // Another user's: that user could edit the state.
    mode(&state, 0o700);
    let (cfg, owner) = if is_root() {
        nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        (cfg, 65534)
    } else {
        // Not root: a directory of root's stands in.
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&format!("\"{}\"", state.display()), "\"/\"");
        std::fs::write(&cfg, text).unwrap();
        (cfg, 0)
    };
    let (code, log) = run_to_exit(&cfg, Duration::from_secs(30));
    assert_eq!(code, Some(78), "{log}");
    assert!(log.contains(&format!("owned by uid {owner}")), "{log}");
    assert!(log.contains("not by the agent's user"), "{log}");

    // The socket's directory too.
    let dir = test_dir("badsockdir");
    let cfg = config_without_libvirt(dir.path(), "");
    let sockdir = new_dir(dir.path(), "run");
    mode(&sockdir, 0o1777);
    let sock = sockdir.join("virtpool.sock");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("\"{}\"", dir.path().join("virtpool.sock").display()),
        &format!("\"{}\"", sock.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, log) = run_to_exit(&cfg, Duration::from_secs(30));
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains(&format!("{}: owned by uid", sockdir.display())) && log.contains("1777"),
        "{log}"
    );
    assert!(files_in(&sockdir).is_empty(), "{:?}", files_in(&sockdir));
}

/// Links planted in place of the state's temp file and of the audit log
/// (as a local user could where `state_dir` is writable to others) are
/// not written through: their targets stay as they were.
#[test]
fn links_in_place_of_the_state_files_are_not_written_through() {
    let dir = test_dir("links");
    let cfg = config_without_libvirt(dir.path(), "");
    let state = state_dir(dir.path());
    let outside = new_dir(dir.path(), "outside");
    let precious = |n: u32| outside.join(format!("precious-{n}"));
    for n in 1..=3 {
        std::fs::write(precious(n), format!("root's file {n}\n")).unwrap();
        mode(&precious(n), 0o600);
    }
    symlink(precious(1), state.join(".state.json.tmp")).unwrap();
    symlink(precious(2), state.join("audit.jsonl")).unwrap();
    symlink(precious(3), state.join(".vcpu-holds.json.tmp")).unwrap();

    let mut agent = Agent::start(dir.path(), &cfg);
    assert!(
        agent.wait_api(Duration::from_secs(30)),
        "{}",
        agent.log_text()
    );
    let (code, _, err) = ctl(&agent.socket, &["pause"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = ctl(&agent.socket, &["pause", "nosuch"]);
    assert_ne!(code, Some(0), "{err}");
    assert_eq!(agent.stop(), Some(0), "{}", agent.log_text());

    for n in 1..=3 {
        assert_eq!(
            std::fs::read_to_string(precious(n)).unwrap(),
            format!("root's file {n}\n"),
            "written through the link to precious-{n}"
        );
    }
    assert_eq!(
        files_in(&outside),
        ["precious-1", "precious-2", "precious-3"]
    );
    let saved = std::fs::symlink_metadata(state.join("state.json")).unwrap();
    assert!(saved.file_type().is_file());
    assert_eq!(saved.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(state.join("state.json")).unwrap();
    assert!(text.contains("\"paused\": true"), "{text}");
    let log = agent.log_text();
    assert!(
        log.contains("audit log kept in memory only") && log.contains("symbolic link"),
        "{log}"
    );
}

/// A link in place of the socket's lock file is refused (it pointed at a
/// file to create elsewhere): nothing is created, the start fails.
#[test]
fn a_link_in_place_of_the_lock_file_is_refused() {
    let dir = test_dir("lock");
    let cfg = config_without_libvirt(dir.path(), "");
    let elsewhere = new_dir(dir.path(), "elsewhere");
    let lock = dir.path().join("virtpool.sock.lock");
    symlink(elsewhere.join("created"), &lock).unwrap();
    let (code, log) = run_to_exit(&cfg, Duration::from_secs(30));
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains(&lock.display().to_string()) && log.contains("symbolic link"),
        "{log}"
    );
    assert!(
        files_in(&elsewhere).is_empty(),
        "{:?}",
        files_in(&elsewhere)
    );
    assert!(!dir.path().join("virtpool.sock").exists());
}

const POOLS: &str = "
[pools.web]
match = \"web-*\"
vcpus = { budget = 8 }
memory = { budget = \"8GiB\" }
";

/// A FIFO at state.json is refused at once (it hung the start before
/// the socket was bound), and so is a reservation no request could make.
#[test]
fn special_and_out_of_range_state_files_are_refused() {
    let dir = test_dir("badstate");
    let cfg = config_without_libvirt(dir.path(), POOLS);
    let state = state_dir(dir.path());
    let file = state.join("state.json");
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (code, log) = run_to_exit(&cfg, Duration::from_secs(30));
    assert_eq!(code, Some(78), "a FIFO at state.json: {log}");
    assert!(
        log.contains(&file.display().to_string()) && log.contains("FIFO"),
        "{log}"
    );
    assert!(!dir.path().join("virtpool.sock").exists());
    std::fs::remove_file(&file).unwrap();

    std::fs::write(
        &file,
        r#"{"version": 1, "reservations": {"web": {"web-1": {"vcpus": 18446744073709551615}}}}"#,
    )
    .unwrap();
    mode(&file, 0o600);
    let (code, log) = run_to_exit(&cfg, Duration::from_secs(30));
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains("state.json: corrupt state: reservation of \"web-1\" in pool \"web\": vcpus 18446744073709551615 is out of range (at most 65536)")
            && log.contains("--reset-state"),
        "{log}"
    );
}

/// Entries that do not fit this config or host start the agent without
/// them: reported, kept in a file beside the state, and the rest of the
/// state works (before, an entry for a removed pool made every change 409).
#[test]
fn state_entries_that_do_not_fit_are_set_aside_and_reported() {
    let dir = test_dir("aside");
    let cfg = config_without_libvirt(dir.path(), POOLS);
    let state = state_dir(dir.path());
    // The host allocates (64 − 1) × 4 = 252 vCPUs; web takes 8.
    let text = r#"{
  "version": 1,
  "pools": {
    "big": { "vcpus": { "budget": 1000 } },
    "small": { "vcpus": { "budget": 4 } }
  },
  "added": { "gone": ["vm-1"], "web": ["db-1"] },
  "removed": { "gone": ["vm-2"] },
  "reservations": { "gone": { "vm-3": { "vcpus": 2 } } },
  "paused_pools": ["gone", "small"]
}"#;
    std::fs::write(state.join("state.json"), text).unwrap();
    mode(&state.join("state.json"), 0o600);
    let mut agent = Agent::start(dir.path(), &cfg);
    assert!(
        agent.wait_api(Duration::from_secs(30)),
        "{}",
        agent.log_text()
    );
    let log = agent.log_text();
    for n in [
        "runtime pool \"big\" does not fit this host",
        "added to pool \"gone\", which no longer exists",
        "removed from pool \"gone\"",
        "reservations of 1 domain(s) in pool \"gone\"",
        "pause of pool \"gone\"",
    ] {
        assert!(log.contains(n), "{n:?} not in:\n{log}");
    }
    let aside: Vec<String> = files_in(&state)
        .into_iter()
        .filter(|f| f.starts_with("state.json.set-aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", files_in(&state));
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join(&aside[0])).unwrap()).unwrap();
    assert_eq!(kept["pools"]["big"]["vcpus"]["budget"], 1000);
    assert_eq!(kept["added"]["gone"][0], "vm-1");
    let now: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).unwrap()).unwrap();
    assert!(now["pools"].get("big").is_none() && now["pools"].get("small").is_some());
    assert_eq!(now["added"]["web"][0], "db-1");
    assert_eq!(now["paused_pools"], serde_json::json!(["small"]));
    // Changes work, and the set-aside is in the audit log.
    let (code, _, err) = ctl(&agent.socket, &["pause", "web"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = ctl(&agent.socket, &["events"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("set-aside") && out.contains("\"big\""),
        "{out}"
    );
    assert_eq!(agent.stop(), Some(0));
}

/// `virtpoolctl status --json`, given up (killed) after `limit`.
fn status_within(sock: &Path, limit: Duration) -> Option<String> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(virtpoolctl())
        .env("VIRTPOOL_SOCKET", sock)
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    match poll(limit, || child.try_wait().unwrap()) {
        Some(st) if st.success() => std::fs::read_to_string(out.path()).ok(),
        Some(_) => None,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// 300,000 members added to one pool: the agent answers within the
/// limit (merging them into the pool was quadratic: minutes).
#[test]
fn a_state_with_300000_added_members_starts_in_time() {
    let dir = test_dir("huge");
    let cfg = config_without_libvirt(dir.path(), POOLS);
    let state = state_dir(dir.path());
    let names: Vec<String> = (0..300_000).map(|i| format!("vm-{i:06}")).collect();
    let text = serde_json::json!({"version": 1, "added": {"web": names}}).to_string();
    std::fs::write(state.join("state.json"), text).unwrap();
    mode(&state.join("state.json"), 0o600);
    let t = Instant::now();
    let mut agent = Agent::start(dir.path(), &cfg);
    // Ready = the first cycle ran (libvirt down here) and the API answers
    // (a stuck cycle held both runtime workers: the API hung too).
    let ready = poll(Duration::from_secs(60), || {
        let out = status_within(&agent.socket, Duration::from_secs(10))?;
        out.contains("\"cycle\": 1").then_some(())
    });
    assert!(
        ready.is_some(),
        "not ready after {:?}:\n{}",
        t.elapsed(),
        agent.log_text()
    );
    eprintln!("300,000 added members: ready after {:?}", t.elapsed());
    agent.assert_alive();
    assert_eq!(agent.stop(), Some(0));
}

/// An emptied config file (a truncated write) is refused on reload like
/// any invalid one: the running config stays, the error says why.
#[test]
fn an_emptied_config_is_refused_on_reload() {
    let dir = test_dir("empty");
    let cfg = config_without_libvirt(dir.path(), POOLS);
    let mut agent = Agent::start(dir.path(), &cfg);
    assert!(
        agent.wait_api(Duration::from_secs(30)),
        "{}",
        agent.log_text()
    );
    std::fs::write(&cfg, "").unwrap();
    let (code, _, err) = ctl(&agent.socket, &["reload"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the file has no settings"), "{err}");
    let status = || {
        let (code, out, err) = ctl(&agent.socket, &["status", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let st = status();
    let err = st["config_error"].as_str().unwrap();
    assert!(
        err.starts_with("reload refused (running the previous config)")
            && err.contains("the file has no settings"),
        "{st}"
    );
    // A valid file that changes a setting bound at start: swapped in, but
    // the status shows the URI in use, not the one that applies on restart.
    let uri = st["libvirt"]["uri"].as_str().unwrap().to_string();
    let text = config_text(dir.path(), "test:///default", "1s", POOLS);
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = ctl(&agent.socket, &["reload"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("agent.libvirt_uri"), "{out}");
    let st = status();
    assert!(st["config_error"].is_null(), "{st}");
    assert_eq!(st["libvirt"]["uri"], uri.as_str(), "{st}");
    agent.assert_alive();
    assert_eq!(agent.stop(), Some(0));
}
