//! Fuzzing the input an operator (or a damaged disk) hands the agent: the
//! config file and the state files. Each case is a seed of
//! `tests/fuzz/corpus/{config,state}/` mutated (bytes flipped, inserted,
//! deleted, spliced with another seed, tokens at and past every bound
//! dropped in) or plain random bytes, fed to what start-up runs:
//!
//! - config: parse (bytes, UTF-8, TOML, validation), check against a host,
//!   the effective config, one planner run over a few domains;
//! - state: `state_check::load` (read, parse, refuse corrupt, set aside
//!   what does not fit) as `state.json`, and the holds check as
//!   `vcpu-holds.json`.
//!
//! Properties: nothing panics; no case takes more than a few seconds (a
//! hang detector, far above the microseconds a case takes); what start-up
//! keeps of a state file always forms a valid effective config whose
//! budgets fit the host.
//!
//! 1,500 cases per target by default (a few seconds); set
//! `VIRTPOOL_FUZZ_CASES` for more. A failure prints the minimal input.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use virtpool::agent::state::{RuntimeState, HOLDS_FILE, STATE_FILE};
use virtpool::agent::state_check;
use virtpool::core::config::{self, Config};
use virtpool::core::model::HostCapacity;
use virtpool::core::planner::{self, testing as t, History, PlanInput, Reservations};

/// Longest a single case may take: a hang, not a speed target.
const CASE_LIMIT: Duration = Duration::from_secs(5);

fn cases() -> u32 {
    std::env::var("VIRTPOOL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "corpus {} too small", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Tokens at and past the bounds, and syntax that changes structure.
const TOKENS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "0",
    "65536",
    "65537",
    "1152921504606846976",
    "1e308",
    "nan",
    "inf",
    "-0.0",
    "\"18446744073709551615s\"",
    "\"584542046090626years\"",
    "\"0s\"",
    "\"1ns\"",
    "\"100%\"",
    "\"1e400%\"",
    "\"-5%\"",
    "\"16EiB\"",
    "\"1EiB\"",
    "\"\"",
    "\"/\"",
    "\"{config_dir}\"",
    "\"../x\"",
    "\"\\u0000\"",
    "\u{ff}",
    "\u{2028}",
    "[pools.x]\n",
    "[[pools]]\n",
    "{ budget = ",
    "\"budget\": ",
    "\"version\": 1, ",
    "[",
    "{",
    "]",
    "}",
    "\n",
    "\"",
    "#",
    "=",
    ",",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Token(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
    /// Replaces from here with the tail of another seed.
    Splice(usize, usize, usize),
    DuplicateLine(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        3 => (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, k)| Mutation::Token(i, k)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(i, s, j)| Mutation::Splice(i, s, j)),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
    ]
}

fn apply(mut b: Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) -> Vec<u8> {
    let at = |i: usize, b: &Vec<u8>| if b.is_empty() { 0 } else { i % (b.len() + 1) };
    match m {
        Mutation::Flip(i, x) => {
            if !b.is_empty() {
                let k = i % b.len();
                b[k] ^= x | 1;
            }
        }
        Mutation::Insert(i, v) => {
            let k = at(*i, &b);
            b.splice(k..k, v.iter().copied());
        }
        Mutation::Token(i, t) => {
            let k = at(*i, &b);
            b.splice(k..k, TOKENS[*t].bytes());
        }
        Mutation::Delete(i, n) => {
            let k = at(*i, &b);
            let end = (k + n).min(b.len());
            b.drain(k..end);
        }
        Mutation::Truncate(i) => {
            let k = at(*i, &b);
            b.truncate(k);
        }
        Mutation::Splice(i, s, j) => {
            let other = &seeds[s % seeds.len()];
            let k = at(*i, &b);
            let from = if other.is_empty() { 0 } else { j % other.len() };
            b.truncate(k);
            b.extend_from_slice(&other[from..]);
        }
        Mutation::DuplicateLine(i) => {
            let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
            let line = lines[i % lines.len()].to_vec();
            let k = at(*i, &b);
            b.splice(k..k, line.into_iter().chain([b'\n']));
        }
    }
    b
}

/// A seed with up to six mutations, or random bytes.
fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        4 => (0..n, prop::collection::vec(mutation(), 0..6)).prop_map(move |(s, ms)| {
            ms.iter().fold(seeds[s].clone(), |b, m| apply(b, m, &seeds))
        }),
        1 => prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

fn cap() -> HostCapacity {
    t::host(16, 64 << 30)
}

/// What start-up and a cycle do with a config file's bytes.
fn config_case(bytes: &[u8]) {
    let path = Path::new("/etc/virtpool/virtpool.toml");
    let Ok(cfg) = Config::parse_bytes(bytes, path) else {
        return;
    };
    let Ok(_alloc) = cfg.check_host(&cap()) else {
        return;
    };
    let eff = RuntimeState::new().effective(&cfg).strict().unwrap();
    // A few domains, some matching the corpus's pools and globs.
    let domains: Vec<_> = ["web-1", "db-primary", "x", "a-1", "p01-1", "d02", "rt-1"]
        .iter()
        .map(|n| t::domain(n, None))
        .collect();
    let plan = planner::plan(&PlanInput {
        config: &eff,
        host: cap(),
        domains: &domains,
        reservations: &Reservations::default(),
        history: &History::default(),
        now: 1000,
        paused: false,
    });
    assert!(plan.pools.len() <= eff.pools.len());
}

/// What start-up does with a state file's bytes.
fn state_case(dir: &Path, base: &Config, bytes: &[u8]) -> Result<(), TestCaseError> {
    let alloc = base.check_host(&cap()).unwrap();
    std::fs::write(dir.join(STATE_FILE), bytes).unwrap();
    if let Ok((st, _aside)) = state_check::load(dir, base, &alloc) {
        // What it keeps is usable as it is: the effective config
        // validates and its budgets fit.
        let eff = st.effective(base).strict();
        prop_assert!(eff.is_ok(), "kept state does not validate: {:?}", eff.err());
        let eff = eff.unwrap();
        let problems = config::budget_problems(&eff.pools, &alloc);
        prop_assert!(problems.is_empty(), "kept state does not fit: {problems:?}");
    }
    std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
    std::fs::write(dir.join(HOLDS_FILE), bytes).unwrap();
    let _ = state_check::load_holds(dir);
    std::fs::remove_file(dir.join(HOLDS_FILE)).unwrap();
    Ok(())
}

fn timed<T>(what: &str, bytes: &[u8], f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    prop_assert!(
        took < CASE_LIMIT,
        "{what} took {took:?} on {} bytes: {:?}",
        bytes.len(),
        String::from_utf8_lossy(bytes)
    );
    Ok(out)
}

#[test]
fn the_corpus_seeds_behave() {
    // The valid seeds are valid; every seed runs clean.
    for seed in corpus("config") {
        config_case(&seed);
    }
    let demo = Config::parse(
        include_str!("../config/demo.toml"),
        Path::new("/etc/virtpool/virtpool.toml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for seed in corpus("state") {
        state_case(dir.path(), &demo, &seed).unwrap();
    }
    let full = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/state/full.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join(STATE_FILE), full).unwrap();
    let alloc = demo.check_host(&cap()).unwrap();
    let (st, aside) = state_check::load(dir.path(), &demo, &alloc).unwrap();
    assert!(aside.is_empty(), "{:?}", aside.problems);
    assert!(st.pools.contains_key("rt"));
}

#[test]
fn config_parsing_survives_mutated_and_random_input() {
    let seeds = corpus("config");
    runner()
        .run(&input(seeds), |bytes| {
            timed("config", &bytes, || config_case(&bytes))?;
            Ok(())
        })
        .unwrap();
}

#[test]
fn state_loading_survives_mutated_and_random_input() {
    let seeds = corpus("state");
    let demo = Config::parse(
        include_str!("../config/demo.toml"),
        Path::new("/etc/virtpool/virtpool.toml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runner()
        .run(&input(seeds), |bytes| {
            timed("state", &bytes, || state_case(dir.path(), &demo, &bytes))?
        })
        .unwrap();
}
