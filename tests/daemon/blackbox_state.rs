//! Black-box scenario 8 — a corrupt state file (truncated, garbage, wrong
//! version): `virtpoold` refuses to start with a message naming the file
//! and `--reset-state`, and overwrites nothing.
#![allow(clippy::unwrap_used)]

use crate::support::blackbox::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const VALID: &str = r#"{
  "version": 1,
  "pools": {},
  "added": { "web": ["web-9"] },
  "removed": {},
  "reservations": {},
  "paused": false,
  "paused_pools": []
}
"#;

fn corruptions() -> Vec<(&'static str, Vec<u8>)> {
    let mut garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    garbage[0] = 0xff;
    vec![
        ("truncated", VALID.as_bytes()[..VALID.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", garbage),
        (
            "wrong version",
            VALID
                .replace("\"version\": 1", "\"version\": 99")
                .into_bytes(),
        ),
        ("wrong shape", b"[1, 2, 3]\n".to_vec()),
        (
            "unknown field",
            VALID
                .replace("\"paused\": false", "\"paused\": false, \"evil\": 1")
                .into_bytes(),
        ),
    ]
}

/// A config in `dir` with no pools and no libvirtd (the state is read
/// before libvirt is contacted), and its state directory, created empty:
/// (config file, state directory).
fn config_and_state_dir(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg_path = config_without_libvirt(dir, "");
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    (cfg_path, state_dir)
}

#[test]
fn corrupt_state_file_refuses_start_and_overwrites_nothing() {
    let dir = test_dir("state");
    let (cfg_path, state_dir) = config_and_state_dir(dir.path());
    let file = state_dir.join("state.json");
    for (what, bytes) in corruptions() {
        std::fs::write(&file, &bytes).unwrap();
        let mut agent = Agent::start(dir.path(), &cfg_path);
        let code = poll(Duration::from_secs(10), || (!agent.alive()).then_some(()));
        assert!(
            code.is_some(),
            "{what}: virtpoold started on a corrupt state file"
        );
        let log = agent.log_text();
        assert!(
            log.contains(file.to_str().unwrap()),
            "{what}: the message does not name {}:\n{log}",
            file.display()
        );
        assert!(
            log.contains("--reset-state"),
            "{what}: no --reset-state hint:\n{log}"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            bytes,
            "{what}: state file changed"
        );
        let others: Vec<_> = std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "state.json")
            .collect();
        assert!(others.is_empty(), "{what}: files written: {others:?}");
        assert!(
            !dir.path().join("virtpool.sock").exists(),
            "{what}: API socket bound"
        );
    }
}

/// The refusal message tells the operator to use `--reset-state`: the flag
/// must exist, move the bad file aside byte for byte (not delete it) and
/// let the agent start.
#[test]
fn reset_state_moves_the_corrupt_file_aside_and_starts() {
    let dir = test_dir("reset");
    let (cfg_path, state_dir) = config_and_state_dir(dir.path());
    let bytes = b"{\"version\": 1, \"pau".to_vec();
    std::fs::write(state_dir.join("state.json"), &bytes).unwrap();
    let mut agent = Agent::start_args(dir.path(), &cfg_path, &["--reset-state"]);
    let aside = poll(Duration::from_secs(10), || {
        std::fs::read_dir(&state_dir).unwrap().find_map(|e| {
            let p = e.unwrap().path();
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
                .then_some(p)
        })
    })
    .unwrap_or_else(|| panic!("nothing moved aside:\n{}", agent.log_text()));
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the moved file differs"
    );
    // It starts (libvirt is unreachable here: reported, not fatal).
    std::thread::sleep(Duration::from_millis(1500));
    agent.assert_alive();
    assert!(
        agent
            .log_text()
            .contains(aside.file_name().unwrap().to_str().unwrap()),
        "{}",
        agent.log_text()
    );
}
