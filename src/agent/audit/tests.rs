//! Unit tests of `audit` (beside it, out of its file).
#![allow(clippy::unwrap_used)]
use super::*;

fn reload(i: usize) -> Event {
    Event::now(EventKind::ConfigReload {
        file: format!("f{i}"),
        ok: true,
        error: None,
    })
}

fn seqs(evs: &[Event]) -> Vec<u64> {
    evs.iter().map(|e| e.seq).collect()
}

fn file_of(e: &Event) -> &str {
    match &e.kind {
        EventKind::ConfigReload { file, .. } => file,
        other => panic!("not a reload: {other:?}"),
    }
}

#[test]
fn appends_json_lines_and_reads_them_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    log.append(&[reload(1), Event::now(EventKind::Stopping)])
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["event"], "config_reload");
    assert_eq!(v["file"], "f1");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    drop(log);
    let again = AuditLog::open(dir.path()).unwrap();
    let recent = again.recent(10).unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[1].kind, EventKind::Stopping);
    assert_eq!(again.recent(1).unwrap().len(), 1);
    // Numbers continue after a restart.
    assert_eq!(seqs(&recent), vec![1, 2]);
    again.append(&[reload(3)]).unwrap();
    assert_eq!(again.since(Some(2), 10).unwrap()[0].seq, 3);
    assert_eq!(again.since(Some(3), 10).unwrap().len(), 0);
    assert_eq!(seqs(&again.since(None, 2).unwrap()), vec![2, 3]);
    assert_eq!(seqs(&again.between(None, Some(3), 1).unwrap()), vec![2]);
    assert_eq!(seqs(&again.between(Some(1), Some(3), 9).unwrap()), vec![2]);
    assert!(again.since(None, 0).unwrap().is_empty());
}

#[test]
fn rotates_by_size_and_keeps_n_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with(dir.path(), 300, 2).unwrap();
    for i in 0..40 {
        log.append(&[reload(i)]).unwrap();
    }
    let main = dir.path().join(AUDIT_FILE);
    assert!(std::fs::metadata(&main).unwrap().len() <= 300);
    assert!(dir.path().join("audit.jsonl.1").exists());
    assert!(dir.path().join("audit.jsonl.2").exists());
    assert!(!dir.path().join("audit.jsonl.3").exists());
    // The newest event is in the live file, older ones in .1.
    let live = std::fs::read_to_string(&main).unwrap();
    assert!(live.contains("\"f39\""), "{live}");
    let r1 = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
    assert!(!r1.contains("\"f39\""));
    // Reading back returns what the three files hold: the newest
    // events, contiguous, oldest first, ending at the last one.
    let kept = std::fs::read_to_string(dir.path().join("audit.jsonl.2")).unwrap() + &r1 + &live;
    let all = log.recent(100).unwrap();
    assert_eq!(all.len(), kept.lines().count());
    assert_eq!(all.last().unwrap().seq, 40);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[test]
fn a_batch_larger_than_the_write_buffer_is_one_unit_of_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with(dir.path(), 200_000, 2).unwrap();
    log.append(&[reload(0)]).unwrap();
    // Over CHUNK bytes of JSON, and too big for what is left of the
    // live file: the file rotates once, before the batch, which then
    // lands whole in the fresh file.
    let batch: Vec<Event> = (1..=3000).map(reload).collect();
    log.append_owned(batch).unwrap();
    let main = dir.path().join(AUDIT_FILE);
    let live = std::fs::read_to_string(&main).unwrap();
    assert!(live.len() > CHUNK, "{} bytes", live.len());
    let lines: Vec<Event> = live
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3000);
    assert_eq!(lines.first().unwrap().seq, 2);
    assert_eq!(lines.last().unwrap().seq, 3001);
    assert!(lines.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let r1 = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
    assert_eq!(r1.lines().count(), 1, "{r1}");
    assert_eq!(log.recent(5000).unwrap().len(), 3001);
}

#[test]
fn events_made_on_demand_are_one_batch_numbered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with(dir.path(), 200_000, 2).unwrap();
    log.append(&[reload(0)]).unwrap();
    // Each event is made when written (twice: measured, then written),
    // and the batch rotates as one, like an owned batch.
    let made = std::sync::atomic::AtomicUsize::new(0);
    let time = time_now();
    log.append_with(3000, |i| {
        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Event {
            time: time.clone(),
            ..reload(i + 1)
        }
    })
    .unwrap();
    assert_eq!(made.into_inner(), 6000);
    let live = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
    let lines: Vec<Event> = live
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3000);
    assert_eq!((lines[0].seq, file_of(&lines[0])), (2, "f1"));
    assert_eq!((lines[2999].seq, file_of(&lines[2999])), (3001, "f3000"));
    let r1 = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
    assert_eq!(r1.lines().count(), 1, "rotated once, before the batch");
    log.append(&[reload(9)]).unwrap();
    assert_eq!(log.recent(1).unwrap()[0].seq, 3002);
    assert!(log.append_with(0, reload).is_ok());
}

#[test]
fn events_whose_write_fails_stay_in_memory_and_the_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    // Every write to /dev/full fails (ENOSPC). (A link to it in place
    // of the file is refused: see the next test.)
    log.lock().sink.as_mut().unwrap().file = std::fs::OpenOptions::new()
        .append(true)
        .open("/dev/full")
        .unwrap();
    let err = log.append(&[reload(1)]).unwrap_err();
    assert!(err.to_string().contains(AUDIT_FILE), "{err}");
    assert!(log.append_with(2, |i| reload(i + 2)).is_err());
    let kept = log.recent(10).unwrap();
    assert_eq!(seqs(&kept), vec![1, 2, 3]);
    assert_eq!(file_of(&kept[2]), "f3");
}

/// A link planted in place of the log (or a rotated file) is neither
/// written nor read through: the target stays as it was.
#[test]
fn a_symbolic_link_in_place_of_the_log_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious");
    std::fs::write(&target, b"root's file\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join(AUDIT_FILE)).unwrap();
    let err = AuditLog::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(AUDIT_FILE) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"root's file\n");
    // A rotated file: reads stop there with an error, nothing written.
    std::fs::remove_file(dir.path().join(AUDIT_FILE)).unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    log.append(&[reload(1)]).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("audit.jsonl.1")).unwrap();
    assert!(log.since(None, 10).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"root's file\n");
}

#[test]
fn events_made_on_demand_stay_in_memory_without_a_file() {
    let log = AuditLog::memory();
    log.append_with(RECENT_CAP + 5, reload).unwrap();
    let kept = log.recent(RECENT_CAP * 2).unwrap();
    // The newest RECENT_CAP, numbered as if all had been kept.
    assert_eq!(kept.len(), RECENT_CAP);
    assert_eq!(kept[0].seq, 6);
    assert_eq!(
        file_of(kept.last().unwrap()),
        format!("f{}", RECENT_CAP + 4)
    );
}

#[test]
fn reads_across_the_rotation_boundary() {
    let dir = tempfile::tempdir().unwrap();
    // Three events per file: rotation after each third append.
    let probe = serde_json::to_vec(&reload(10)).unwrap().len() as u64 + 1;
    let log = AuditLog::open_with(dir.path(), 3 * probe + 10, 3).unwrap();
    for i in 1..=8 {
        log.append(&[reload(i)]).unwrap();
    }
    let lines = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(
        (
            lines("audit.jsonl.2"),
            lines("audit.jsonl.1"),
            lines(AUDIT_FILE)
        ),
        (3, 3, 2)
    );
    // A window that straddles live and .1, and one that spans all three.
    let w = log.recent(4).unwrap();
    assert_eq!(seqs(&w), vec![5, 6, 7, 8]);
    assert_eq!(file_of(&w[0]), "f5");
    assert_eq!(
        seqs(&log.since(Some(1), 100).unwrap()),
        (2..=8).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&log.since(Some(5), 2).unwrap()), vec![7, 8]);
    // Just after a rotation the live file is empty; a restart still
    // continues the numbering from .1.
    std::fs::rename(
        dir.path().join("audit.jsonl.2"),
        dir.path().join("audit.jsonl.3"),
    )
    .unwrap();
    std::fs::rename(
        dir.path().join("audit.jsonl.1"),
        dir.path().join("audit.jsonl.2"),
    )
    .unwrap();
    std::fs::rename(
        dir.path().join(AUDIT_FILE),
        dir.path().join("audit.jsonl.1"),
    )
    .unwrap();
    drop(log);
    let again = AuditLog::open_with(dir.path(), 3 * probe + 10, 3).unwrap();
    assert_eq!(lines(AUDIT_FILE), 0);
    again.append(&[reload(9)]).unwrap();
    let all = again.recent(100).unwrap();
    assert_eq!(seqs(&all), (1..=9).collect::<Vec<_>>());
    assert_eq!(file_of(&all[8]), "f9");
}

#[test]
fn a_file_read_twice_by_a_racing_rotation_gives_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    for i in 1..=4 {
        log.append(&[reload(i)]).unwrap();
    }
    // What a reader sees if the live file is renamed to .1 between its
    // reading the live file and .1: the same lines twice.
    std::fs::copy(
        dir.path().join(AUDIT_FILE),
        dir.path().join("audit.jsonl.1"),
    )
    .unwrap();
    assert_eq!(seqs(&log.recent(100).unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn long_files_torn_lines_and_garbage_are_read_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    // Several read chunks' worth of lines, so lines straddle chunks.
    let n = 3 * CHUNK / 90 + 7;
    let events: Vec<Event> = (1..=n).map(reload).collect();
    log.append(&events).unwrap();
    let main = dir.path().join(AUDIT_FILE);
    assert!(std::fs::metadata(&main).unwrap().len() > 3 * CHUNK as u64);
    let all = log.recent(usize::MAX).unwrap();
    assert_eq!(seqs(&all), (1..=n as u64).collect::<Vec<_>>());
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| file_of(e) == format!("f{}", i + 1)));
    drop(log);
    // A line too long to be a record, a garbage line, a torn last write.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&main)
        .unwrap();
    f.write_all(&vec![b'x'; MAX_LINE + 3 * CHUNK]).unwrap();
    f.write_all(b"\nnot json\n{\"seq\":99,\"time\":\"2026")
        .unwrap();
    drop(f);
    let again = AuditLog::open(dir.path()).unwrap();
    again.append(&[reload(0)]).unwrap();
    let tail = again.recent(3).unwrap();
    assert_eq!(seqs(&tail), vec![n as u64 - 1, n as u64, n as u64 + 1]);
}

#[test]
fn memory_log_caps_recent() {
    let log = AuditLog::memory();
    for i in 0..(RECENT_CAP + 5) {
        log.append(&[reload(i)]).unwrap();
    }
    let all = log.recent(usize::MAX).unwrap();
    assert_eq!(all.len(), RECENT_CAP);
    assert_eq!(file_of(&all[0]), "f5");
    assert_eq!(
        seqs(&log.since(Some(RECENT_CAP as u64 + 3), 10).unwrap()),
        vec![RECENT_CAP as u64 + 4, RECENT_CAP as u64 + 5]
    );
    assert!(log.path().is_none());
}
