//! The audit log: what the agent decided and what happened, as JSON lines
//! in `state_dir/audit.jsonl`, rotated by size (`audit.jsonl.1` … `.N`),
//! with the most recent events kept in memory for `GET /v1/events`.
//!
//! The monitor appends once per cycle. The write is a few hundred bytes to
//! a local file without fsync (the page cache absorbs it in microseconds),
//! so it runs inline in the monitor task with plain `std::fs`: a
//! `spawn_blocking` hop would cost more than the write and could reorder
//! cycles' events. Losing the last lines in a crash is acceptable for an
//! audit trail that the journal duplicates.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// File name inside `state_dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// Rotate when the file would grow past this.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// Rotated files kept (`audit.jsonl.1` … `.3`).
pub const DEFAULT_KEEP: usize = 3;
/// Events kept in memory for [`AuditLog::recent`].
pub const RECENT_CAP: usize = 1000;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing number, for paging (`?since=`); continues across
    /// restarts. Assigned by [`AuditLog::append`].
    #[serde(default)]
    pub seq: u64,
    /// RFC 3339 UTC time, millisecond precision.
    pub time: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// One enforcement action and its outcome.
    Action {
        domain: String,
        uuid: String,
        resource: String,
        before: String,
        after: String,
        reason: String,
        /// `ok` or `error`.
        result: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A SIGHUP reload: swapped in (`ok`) or refused (the running config stays).
    ConfigReload {
        file: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The libvirt connection went down.
    LibvirtLost { uri: String, error: String },
    /// The libvirt connection is back.
    LibvirtRestored { uri: String },
    /// A pool member whose floors do not fit the budget: left untouched.
    Unadmitted {
        pool: String,
        domain: String,
        uuid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The agent started.
    Started { version: String },
    /// The agent is stopping.
    Stopping,
    /// A runtime change made through the API, by `uid`.
    Change { uid: u32, message: String },
}

impl Event {
    /// An event stamped now.
    pub fn now(kind: EventKind) -> Event {
        Event {
            seq: 0,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
        }
    }
}

/// Why the audit file could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{file}: cannot open audit log: {source}")]
    Open {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: cannot write audit log: {source}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct FileSink {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl FileSink {
    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// audit.jsonl.(keep-1) → .keep, …, audit.jsonl → .1, then a fresh file.
    fn rotate(&mut self) -> std::io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let len = buf.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += len;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

struct Inner {
    sink: Option<FileSink>,
    recent: VecDeque<Event>,
    /// The last `seq` given out.
    seq: u64,
}

/// The audit log. Cheap to clone; clones share the file and the memory.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.lock().sink.as_ref().map(|s| s.path.clone());
        f.debug_struct("AuditLog").field("file", &path).finish()
    }
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog::memory()
    }
}

impl AuditLog {
    /// An audit log that keeps recent events in memory only.
    pub fn memory() -> AuditLog {
        AuditLog {
            inner: Arc::new(Mutex::new(Inner {
                sink: None,
                recent: VecDeque::new(),
                seq: 0,
            })),
        }
    }

    /// Opens (creates) `state_dir/audit.jsonl` with the default rotation
    /// (10 MiB, 3 rotated files) and loads its last events into memory.
    pub fn open(state_dir: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(state_dir, DEFAULT_MAX_BYTES, DEFAULT_KEEP)
    }

    /// Like [`AuditLog::open`] with explicit rotation limits.
    pub fn open_with(
        state_dir: &Path,
        max_bytes: u64,
        keep: usize,
    ) -> Result<AuditLog, AuditError> {
        let path = state_dir.join(AUDIT_FILE);
        let oerr = |source| AuditError::Open {
            file: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(oerr)?;
        let mut recent = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            // Unparseable lines (a torn last write, a future format) are skipped.
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    if recent.len() == RECENT_CAP {
                        recent.pop_front();
                    }
                    recent.push_back(ev);
                }
            }
        }
        let file = open_append(&path).map_err(oerr)?;
        let size = file.metadata().map_err(oerr)?.len();
        let seq = recent.back().map_or(0, |e| e.seq);
        Ok(AuditLog {
            inner: Arc::new(Mutex::new(Inner {
                sink: Some(FileSink {
                    path,
                    file,
                    size,
                    max_bytes,
                    keep,
                }),
                recent,
                seq,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (appends are
        // whole lines); keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file written, if any.
    pub fn path(&self) -> Option<PathBuf> {
        self.lock().sink.as_ref().map(|s| s.path.clone())
    }

    /// Appends events: to memory always, to the file if there is one. A
    /// file error is returned after memory is updated.
    pub fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        let mut numbered = Vec::with_capacity(events.len());
        for ev in events {
            inner.seq += 1;
            let mut ev = ev.clone();
            ev.seq = inner.seq;
            if inner.recent.len() >= RECENT_CAP {
                inner.recent.pop_front();
            }
            inner.recent.push_back(ev.clone());
            numbered.push(ev);
        }
        let events = numbered;
        let Some(sink) = inner.sink.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(256 * events.len());
        for ev in &events {
            // Serialising these plain structs cannot fail; skip one if it does.
            if serde_json::to_writer(&mut buf, ev).is_ok() {
                buf.push(b'\n');
            }
        }
        sink.write(&buf).map_err(|source| AuditError::Write {
            file: sink.path.clone(),
            source,
        })
    }

    /// The last `n` events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        self.since(None, n)
    }

    /// Events with `seq > since` (all kept when `None`), oldest first, the
    /// newest `limit` of them.
    pub fn since(&self, since: Option<u64>, limit: usize) -> Vec<Event> {
        let inner = self.lock();
        let matching: Vec<&Event> = inner
            .recent
            .iter()
            .filter(|e| since.is_none_or(|s| e.seq > s))
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reload(i: usize) -> Event {
        Event::now(EventKind::ConfigReload {
            file: format!("f{i}"),
            ok: true,
            error: None,
        })
    }

    #[test]
    fn appends_json_lines_and_reloads_them() {
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
        let recent = again.recent(10);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[1].kind, EventKind::Stopping);
        assert_eq!(again.recent(1).len(), 1);
        // Numbers continue after a restart.
        assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        again.append(&[reload(3)]).unwrap();
        assert_eq!(again.since(Some(2), 10)[0].seq, 3);
        assert_eq!(again.since(Some(3), 10).len(), 0);
        assert_eq!(again.since(None, 2)[0].seq, 2);
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
        // Memory keeps everything recent regardless of rotation.
        assert_eq!(log.recent(100).len(), 40);
    }

    #[test]
    fn memory_log_caps_recent() {
        let log = AuditLog::memory();
        for i in 0..(RECENT_CAP + 5) {
            log.append(&[reload(i)]).unwrap();
        }
        let all = log.recent(usize::MAX);
        assert_eq!(all.len(), RECENT_CAP);
        assert!(matches!(&all[0].kind, EventKind::ConfigReload { file, .. } if file == "f5"));
        assert!(log.path().is_none());
    }
}
