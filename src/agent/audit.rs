//! The audit log: what the agent decided and what happened, as JSON lines
//! in `state_dir/audit.jsonl`, rotated by size (`audit.jsonl.1` … `.N`).
//! `GET /v1/events` reads it back ([`AuditLog::since`]), so the history
//! survives restarts.
//!
//! The monitor appends once per cycle. The write is a few hundred bytes to
//! a local file without fsync (the page cache absorbs it in microseconds),
//! so it runs inline in the monitor task with plain `std::fs`: a
//! `spawn_blocking` hop would cost more than the write and could reorder
//! cycles' events. Losing the last lines in a crash is acceptable for an
//! audit trail that the journal duplicates.
//!
//! Reading goes backwards from the end of the live file, then through the
//! rotated files, and stops as soon as it has `limit` events (or reaches
//! `since`): a read costs the tail it returns, not the whole history.
//! Sequence numbers only grow, so a rotation racing a read is harmless
//! (an event seen twice is dropped by its number).
//!
//! The files are opened through [`crate::agent::safe_fs`]: created 0600, a
//! symbolic link (or a FIFO, another user's file) in their place is
//! refused, never written or read through.

pub use crate::core::event::{time_now, Event, EventKind};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// File name inside `state_dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// Rotate when the file would grow past this.
pub const DEFAULT_MAX_BYTES: u64 = crate::core::config::DEFAULT_AUDIT_MAX_BYTES;
/// Rotated files kept (`audit.jsonl.1` … `.3`).
pub const DEFAULT_KEEP: usize = crate::core::config::DEFAULT_AUDIT_KEEP;
/// Events kept in memory when there is no file to read them back from
/// (a memory-only log, or events whose write failed).
pub const RECENT_CAP: usize = 1000;
/// Bytes read from a file per step when reading backwards.
const CHUNK: usize = 64 << 10;
/// Lines longer than this are not audit records: skipped unread.
const MAX_LINE: usize = 1 << 20;

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
    #[error("{file}: cannot read audit log: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Dir(#[from] crate::agent::safe_fs::DirError),
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
        rotated_path(&self.path, n)
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

    /// Appends the events `each` visits as JSON lines (rotating first if
    /// they would not fit), streamed through a [`CHUNK`]-sized buffer: the
    /// batch is visited twice, once to measure it, so a batch of thousands
    /// of events never sits in memory as one block of text. `each` must
    /// visit the same events both times.
    fn write(&mut self, each: &dyn Fn(&mut Visit) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut count = ByteCount(0);
        each(&mut |ev| write_line(&mut count, ev))?;
        let len = count.0;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        let cap = usize::try_from(len).map_or(CHUNK, |n| n.min(CHUNK));
        let mut out = std::io::BufWriter::with_capacity(cap, &mut self.file);
        each(&mut |ev| write_line(&mut out, ev))?;
        out.flush()?;
        self.size += len;
        Ok(())
    }
}

/// What [`FileSink::write`] does with each event of a batch.
type Visit<'a> = dyn FnMut(&Event) -> std::io::Result<()> + 'a;

/// Writes the event as one JSON line. Serialising these plain structs
/// cannot fail; an event that does is skipped (an I/O error is returned).
fn write_line(out: &mut impl Write, ev: &Event) -> std::io::Result<()> {
    match serde_json::to_writer(&mut *out, ev) {
        Ok(()) => out.write_all(b"\n"),
        Err(e) if e.is_io() => Err(e.into()),
        Err(_) => Ok(()),
    }
}

/// Counts the bytes written to it.
struct ByteCount(u64);

impl Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    Ok(crate::agent::safe_fs::open_append(path)?)
}

/// The file at `path` for reading (see [`crate::agent::safe_fs::open_read`]).
fn open_read(path: &Path) -> std::io::Result<Option<File>> {
    Ok(crate::agent::safe_fs::open_read(path)?)
}

/// Whether the file's last byte is a newline.
fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(mut f) = open_read(path)? else {
        return Ok(false);
    };
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// `audit.jsonl` → `audit.jsonl.N`.
fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.to_path_buf().into_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Calls `f` with each line of the file at `path`, last line first, until
/// `f` returns `false`. Reads [`CHUNK`] bytes at a time from the end, so the
/// cost is the lines visited; lines over [`MAX_LINE`] bytes are skipped.
/// Returns `Ok(false)` if `f` stopped the scan; a missing file is empty.
fn scan_back(path: &Path, mut f: impl FnMut(&[u8]) -> bool) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(mut file) = open_read(path)? else {
        return Ok(true);
    };
    let mut pos = file.metadata()?.len();
    // The start of a line whose beginning is in a chunk not read yet.
    let mut carry: Vec<u8> = Vec::new();
    // `carry` overflowed MAX_LINE: drop bytes until the next newline.
    let mut skipping = false;
    while pos > 0 {
        let start = pos.saturating_sub(CHUNK as u64);
        // At most CHUNK: fits in usize.
        let n = (pos - start) as usize;
        let mut data = vec![0u8; n];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut data)?;
        pos = start;
        let mut end = data.len();
        while let Some(i) = data[..end].iter().rposition(|&b| b == b'\n') {
            let seg = &data[i + 1..end];
            if skipping {
                skipping = false;
            } else if carry.is_empty() {
                if !seg.is_empty() && !f(seg) {
                    return Ok(false);
                }
            } else {
                let mut line = seg.to_vec();
                line.append(&mut carry);
                if !f(&line) {
                    return Ok(false);
                }
            }
            carry.clear();
            end = i;
        }
        if !skipping {
            let mut head = data[..end].to_vec();
            head.append(&mut carry);
            carry = head;
            if carry.len() > MAX_LINE {
                carry = Vec::new();
                skipping = true;
            }
        }
    }
    if !skipping && !carry.is_empty() && !f(&carry) {
        return Ok(false);
    }
    Ok(true)
}

/// The newest `limit` events with `since < seq < before` from `path` and
/// its rotated files (`path.1` … `path.keep`), newest first.
fn read_tail(
    path: &Path,
    keep: usize,
    since: Option<u64>,
    before: Option<u64>,
    limit: usize,
) -> std::io::Result<Vec<Event>> {
    let mut out: Vec<Event> = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let floor = since.unwrap_or(0);
    for n in 0..=keep {
        let file = if n == 0 {
            path.to_path_buf()
        } else {
            rotated_path(path, n)
        };
        let go_on = scan_back(&file, |line| {
            // Unparseable lines (a torn last write, a future format) are skipped.
            let Ok(ev) = serde_json::from_slice::<Event>(line) else {
                return true;
            };
            if since.is_some() && ev.seq <= floor {
                return false;
            }
            if before.is_some_and(|b| ev.seq >= b) {
                return true;
            }
            // Numbers only decrease going back; a repeat is a file read
            // twice across a concurrent rotation.
            if out.last().is_none_or(|last| ev.seq < last.seq) {
                out.push(ev);
            }
            out.len() < limit
        })?;
        if !go_on {
            break;
        }
    }
    Ok(out)
}

struct Inner {
    sink: Option<FileSink>,
    /// Events not in a file: all of them for a memory-only log, those whose
    /// write failed otherwise. At most [`RECENT_CAP`].
    recent: VecDeque<Event>,
    /// The last `seq` given out.
    seq: u64,
}

impl Inner {
    /// Writes a batch (see [`FileSink::write`]) to the file: `Ok(true)`
    /// when written, `Ok(false)` when there is no file (memory only).
    fn write(
        &mut self,
        each: &dyn Fn(&mut Visit) -> std::io::Result<()>,
    ) -> Result<bool, AuditError> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(false);
        };
        sink.write(each)
            .map(|()| true)
            .map_err(|source| AuditError::Write {
                file: sink.path.clone(),
                source,
            })
    }

    /// Keeps events that are in no file, up to [`RECENT_CAP`] (the oldest go).
    fn keep_recent(&mut self, events: Vec<Event>) {
        for ev in events {
            if self.recent.len() >= RECENT_CAP {
                self.recent.pop_front();
            }
            self.recent.push_back(ev);
        }
    }
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
    /// (10 MiB, 3 rotated files); numbering continues from its last event.
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
        crate::agent::safe_fs::ensure_dir(state_dir, crate::agent::state::STATE_DIR_MODE)?;
        // The last event, wherever it is (the live file is empty right
        // after a rotation).
        let seq = read_tail(&path, keep, None, None, 1)
            .map_err(oerr)?
            .first()
            .map_or(0, |e| e.seq);
        let mut file = open_append(&path).map_err(oerr)?;
        let mut size = file.metadata().map_err(oerr)?.len();
        // A torn last write (a crash mid-line): end that line, so the next
        // record starts on its own line instead of being glued to it.
        if size > 0 && !ends_with_newline(&path).map_err(oerr)? {
            file.write_all(b"\n").map_err(oerr)?;
            size += 1;
        }
        Ok(AuditLog {
            inner: Arc::new(Mutex::new(Inner {
                sink: Some(FileSink {
                    path,
                    file,
                    size,
                    max_bytes,
                    keep,
                }),
                recent: VecDeque::new(),
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

    /// Numbers the events and appends them to the file, or to memory if
    /// there is no file. Events whose write fails are kept in memory (and
    /// still returned by [`AuditLog::since`]) and the error is returned.
    pub fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        self.append_owned(events.to_vec())
    }

    /// [`AuditLog::append`] for events the caller gives away: numbered in
    /// place, not copied.
    pub fn append_owned(&self, mut events: Vec<Event>) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        for ev in &mut events {
            inner.seq += 1;
            ev.seq = inner.seq;
        }
        let written = inner.write(&|visit| events.iter().try_for_each(&mut *visit));
        if !matches!(written, Ok(true)) {
            inner.keep_recent(events);
        }
        written.map(|_| ())
    }

    /// Appends `n` events made on demand by `event(i)` (numbered here), in
    /// one batch like [`AuditLog::append`]: written to the file one at a
    /// time, so a cycle's thousands of action events are never all in
    /// memory at once. `event` must return the same event for the same `i`
    /// (it is called twice per event: the batch is measured first).
    pub fn append_with(&self, n: usize, event: impl Fn(usize) -> Event) -> Result<(), AuditError> {
        if n == 0 {
            return Ok(());
        }
        let mut inner = self.lock();
        let first = inner.seq + 1;
        inner.seq += n as u64;
        let numbered = |i: usize| Event {
            seq: first + i as u64,
            ..event(i)
        };
        let written = inner.write(&|visit| (0..n).try_for_each(|i| visit(&numbered(i))));
        if !matches!(written, Ok(true)) {
            // Only the newest RECENT_CAP can be kept.
            let keep = (n.saturating_sub(RECENT_CAP)..n).map(numbered).collect();
            inner.keep_recent(keep);
        }
        written.map(|_| ())
    }

    /// The last `n` events, oldest first.
    pub fn recent(&self, n: usize) -> Result<Vec<Event>, AuditError> {
        self.since(None, n)
    }

    /// Events with `seq > since` (all kept when `None`), oldest first, the
    /// newest `limit` of them: read back from the end of the file and its
    /// rotated files, plus any kept in memory. Blocking file I/O; the cost
    /// is about the events returned.
    pub fn since(&self, since: Option<u64>, limit: usize) -> Result<Vec<Event>, AuditError> {
        self.between(since, None, limit)
    }

    /// [`AuditLog::since`], and only events with `seq < before` (to page
    /// back through older events).
    pub fn between(
        &self,
        since: Option<u64>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, AuditError> {
        let (file, mut events) = {
            let inner = self.lock();
            let file = inner.sink.as_ref().map(|s| (s.path.clone(), s.keep));
            let mem: Vec<Event> = inner
                .recent
                .iter()
                .filter(|e| since.is_none_or(|s| e.seq > s))
                .filter(|e| before.is_none_or(|b| e.seq < b))
                .cloned()
                .collect();
            (file, mem)
        };
        if let Some((path, keep)) = file {
            let read = read_tail(&path, keep, since, before, limit).map_err(|source| {
                AuditError::Read {
                    file: path.clone(),
                    source,
                }
            })?;
            events.extend(read);
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        let skip = events.len().saturating_sub(limit);
        events.drain(..skip);
        Ok(events)
    }
}

#[cfg(test)]
mod tests;
