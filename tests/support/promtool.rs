//! Prometheus' `promtool`, for `promtool check metrics`: the one on the
//! PATH, else the one of Debian's `prometheus` package, fetched once
//! (`apt-get download`, about 19 MB) and only `usr/bin/promtool` taken out
//! of it (`dpkg-deb`): no Prometheus server installed or started. Kept in
//! /var/cache/virtpool-promtool (root) or the test's target folder.
//! `VIRTPOOL_PROMTOOL=skip` skips the check, loudly; anything else that
//! keeps promtool from being had fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where promtool is, or `None` when the check is skipped.
pub fn promtool() -> Option<PathBuf> {
    if std::env::var("VIRTPOOL_PROMTOOL").as_deref() == Ok("skip") {
        eprintln!("NOTE: VIRTPOOL_PROMTOOL=skip: `promtool check metrics` SKIPPED");
        return None;
    }
    if let Some(p) = on_path("promtool") {
        return Some(p);
    }
    let dir = cache_dir();
    let bin = dir.join("promtool");
    if bin.exists() {
        return Some(bin);
    }
    fetch(&dir, &bin);
    Some(bin)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn cache_dir() -> PathBuf {
    let system = Path::new("/var/cache/virtpool-promtool");
    if nix::unistd::geteuid().is_root() && std::fs::create_dir_all(system).is_ok() {
        return system.to_path_buf();
    }
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("promtool");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// `apt-get download prometheus` into a fresh folder of `dir` (the package
/// lists updated first if apt knows no such package, waiting up to 10
/// minutes for apt's lock), then its promtool moved to `bin`.
fn fetch(dir: &Path, bin: &Path) {
    let work = tempfile::tempdir_in(dir).unwrap();
    let download = || {
        run(Command::new("apt-get")
            .args(["download", "-q", "prometheus"])
            .current_dir(work.path()))
    };
    let mut out = download();
    if !out.status.success() {
        let t0 = Instant::now();
        loop {
            let up = run(Command::new("apt-get").args([
                "update",
                "-q",
                "-o",
                "DPkg::Lock::Timeout=600",
            ]));
            if up.status.success() || t0.elapsed() > Duration::from_secs(600) {
                break;
            }
            // Another apt holds the lists' lock: wait for it.
            std::thread::sleep(Duration::from_secs(5));
        }
        out = download();
    }
    assert!(
        out.status.success(),
        "cannot fetch Debian's prometheus package for promtool (set VIRTPOOL_PROMTOOL=skip to skip the check): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("apt-get download left a .deb");
    let mut unpack = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = work.path().join("promtool");
    let x = Command::new("tar")
        .args(["-x", "-C"])
        .arg(work.path())
        .args(["--strip-components=3", "./usr/bin/promtool"])
        .stdin(unpack.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = unpack.wait();
    assert!(
        x.status.success() && tmp.is_file(),
        "no usr/bin/promtool in {}: {}",
        deb.display(),
        String::from_utf8_lossy(&x.stderr)
    );
    // Whole or not at all: a test running beside this one sees either.
    std::fs::rename(&tmp, bin).unwrap();
}

/// `promtool check metrics` on `text`: its complaints (empty: none) and
/// whether it passed.
pub fn check_metrics(promtool: &Path, text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}
