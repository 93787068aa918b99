//! Connection limits shared by the API socket and the metrics TCP listener,
//! and the serving of one HTTP/1.1 connection under them.
//!
//! - **How many:** at most `max_connections` open, at most
//!   `per_peer_connections` per peer (uid on the socket, address over TCP),
//!   and `reserved_for_root` of them only uid 0 can take. A connection over
//!   a limit closes the quietest connection in its reach — one with no
//!   request being handled that is waiting for its client (to send a
//!   request, or to read a reply) — oldest activity first; with none, the
//!   new connection is closed at once. A peer only ever closes its own
//!   connections, or other non-root ones once the non-root share is full;
//!   root may close anyone's.
//! - **How long:** a request's headers must arrive within `header_timeout`,
//!   which also closes an idle keep-alive connection; replies must be read:
//!   from the first bytes of a reply the client does not take, it has
//!   `write_timeout` to take the whole reply, then the connection is
//!   closed; no connection lives longer than `max_lifetime` (it is closed
//!   after its current request).
//! - **How much:** one request at a time per connection (HTTP/1.1, no
//!   pipelined flushes), at most `max_buf_size` bytes of requests read
//!   ahead, one reply being written.

use super::auth::Peer;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How many connections a listener keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub per_peer: usize,
    pub reserved_for_root: usize,
}

/// What a connection is doing, shared between its task (which sets it)
/// and the [`Limiter`] (which picks connections to close).
#[derive(Debug)]
pub struct ConnState {
    /// Requests being handled (0 or 1: one at a time).
    in_flight: AtomicU32,
    /// Requests started so far: a reply's write clock belongs to one.
    requests: AtomicU64,
    /// The last read found nothing to read: the client owes us bytes.
    drained: AtomicBool,
    /// The last write could not go out: the client owes us a read.
    stalled: AtomicBool,
    /// Milliseconds since the limiter's epoch of the last byte in or out.
    last: AtomicU64,
    /// Cancelled when the limiter closes this connection to make room.
    evict: CancellationToken,
    epoch: Instant,
}

impl ConnState {
    fn new(epoch: Instant) -> ConnState {
        let s = ConnState {
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            drained: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            last: AtomicU64::new(0),
            evict: CancellationToken::new(),
            epoch,
        };
        s.touch();
        s
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Waiting on its client with no request being handled.
    fn quiet(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && (self.drained.load(Ordering::Acquire) || self.stalled.load(Ordering::Acquire))
    }

    /// Marks a request as being handled until the guard is dropped.
    fn busy(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Entry {
    key: u64,
    root: bool,
    state: Arc<ConnState>,
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Entry>,
    per_key: HashMap<u64, usize>,
    non_root: usize,
    /// Refused since the last warning, and when that was.
    refused: u64,
    warned: Option<Instant>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.conns.remove(&id)?;
        if let Some(n) = self.per_key.get_mut(&e.key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&e.key);
            }
        }
        if !e.root {
            self.non_root -= 1;
        }
        Some(e)
    }

    /// The quiet connection with the oldest activity among those `pick`
    /// accepts.
    fn quietest(&self, pick: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| pick(e) && e.state.quiet())
            .min_by_key(|(id, e)| (e.state.last.load(Ordering::Relaxed), **id))
            .map(|(id, _)| *id)
    }
}

/// Who may open a connection, and which open one to close for it.
#[derive(Clone)]
pub struct Limiter {
    limits: Limits,
    what: &'static str,
    epoch: Instant,
    table: Arc<Mutex<Table>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer has its share open, none of them quiet.
    PeerFull,
    /// Every slot it may use is taken, none of them quiet.
    Full,
}

impl Limiter {
    /// A limiter for the listener named `what` (in log lines).
    pub fn new(limits: Limits, what: &'static str) -> Limiter {
        let max = limits.max_connections.max(1);
        Limiter {
            limits: Limits {
                max_connections: max,
                per_peer: limits.per_peer.clamp(1, max),
                reserved_for_root: limits.reserved_for_root.min(max - 1),
            },
            what,
            epoch: Instant::now(),
            table: Arc::new(Mutex::new(Table::default())),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.table().conns.len()
    }

    /// Admits a connection from peer `key` (`root`: uid 0), closing a quiet
    /// one if a limit is reached; the ticket frees the slot when dropped.
    pub fn admit(&self, key: u64, root: bool) -> Result<Ticket, Refused> {
        let l = self.limits;
        let mut t = self.table();
        let mine = t.per_key.get(&key).copied().unwrap_or(0);
        let need = if root {
            (t.conns.len() >= l.max_connections).then(|| {
                t.quietest(|e| !e.root)
                    .or_else(|| t.quietest(|_| true))
                    .ok_or(Refused::Full)
            })
        } else if mine >= l.per_peer {
            Some(t.quietest(|e| e.key == key).ok_or(Refused::PeerFull))
        } else if t.non_root >= l.max_connections - l.reserved_for_root
            || t.conns.len() >= l.max_connections
        {
            Some(t.quietest(|e| !e.root).ok_or(Refused::Full))
        } else {
            None
        };
        match need {
            Some(Ok(victim)) => {
                if let Some(v) = t.remove(victim) {
                    v.state.evict.cancel();
                    tracing::debug!(
                        listener = self.what,
                        peer = v.key,
                        "closed a quiet connection to make room"
                    );
                }
            }
            Some(Err(why)) => {
                t.refused += 1;
                let now = Instant::now();
                if t.warned
                    .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(10))
                {
                    tracing::warn!(
                        listener = self.what,
                        peer = key,
                        refused = t.refused,
                        open = t.conns.len(),
                        per_peer = mine,
                        reason = ?why,
                        "connections refused: limit reached and none of the open ones is idle"
                    );
                    t.warned = Some(now);
                    t.refused = 0;
                }
                return Err(why);
            }
            None => {}
        }
        let id = t.next;
        t.next += 1;
        let state = Arc::new(ConnState::new(self.epoch));
        t.conns.insert(
            id,
            Entry {
                key,
                root,
                state: state.clone(),
            },
        );
        *t.per_key.entry(key).or_default() += 1;
        if !root {
            t.non_root += 1;
        }
        Ok(Ticket {
            id,
            state,
            limiter: self.clone(),
        })
    }
}

/// An admitted connection's slot.
pub struct Ticket {
    id: u64,
    state: Arc<ConnState>,
    limiter: Limiter,
}

impl Ticket {
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.limiter.table().remove(self.id);
    }
}

/// A stream that records its activity in a [`ConnState`] and fails a
/// reply the client has not taken within the write timeout.
pub struct Guarded<S> {
    inner: S,
    state: Arc<ConnState>,
    write_timeout: Duration,
    /// Running from the first write of the current request's reply that
    /// the client did not take: (request number, deadline). The server
    /// starts a request only once the previous reply is written, so a new
    /// request number means a new reply.
    stall: Option<(u64, Pin<Box<tokio::time::Sleep>>)>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, state: Arc<ConnState>, write_timeout: Duration) -> Guarded<S> {
        Guarded {
            inner,
            state,
            write_timeout,
            stall: None,
        }
    }

    /// After a write or flush: records it, and turns a write pending past
    /// the deadline into an error.
    fn wrote<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.state.stalled.store(false, Ordering::Release);
                self.state.touch();
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.state.stalled.store(true, Ordering::Release);
                let timeout = self.write_timeout;
                let request = self.state.requests.load(Ordering::Acquire);
                if self.stall.as_ref().is_none_or(|(r, _)| *r != request) {
                    self.stall = Some((request, Box::pin(tokio::time::sleep(timeout))));
                }
                let Some((_, deadline)) = self.stall.as_mut() else {
                    return Poll::Pending;
                };
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client did not read its reply within {timeout:?}"),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.state.drained.store(false, Ordering::Release);
                self.state.touch();
            }
            Poll::Ready(_) => {}
            Poll::Pending => self.state.drained.store(true, Ordering::Release),
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.wrote(cx, r)
    }
}

/// Per-connection timeouts and buffer size.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub max_lifetime: Duration,
    pub max_buf_size: usize,
}

/// Serves HTTP/1.1 on one admitted connection with `router` until the
/// client leaves, a limit closes it, or `stop` (then the request in
/// progress is finished first).
pub async fn serve<S>(
    stream: S,
    router: axum::Router,
    peer: Option<Peer>,
    opts: ConnOptions,
    ticket: Ticket,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ticket.state().clone();
    let io = TokioIo::new(Guarded::new(stream, state.clone(), opts.write_timeout));
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(p) = peer {
            req.extensions_mut().insert(p);
        }
        let busy = state.busy();
        let answer = router.clone().oneshot(req);
        async move {
            let r = answer.await;
            drop(busy);
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(opts.max_buf_size.max(8192))
        .pipeline_flush(false)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let evicted = ticket.state().evict.clone();
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = evicted.cancelled() => return,
        _ = stop.cancelled() => None,
        _ = tokio::time::sleep(opts.max_lifetime) => None,
    };
    let r = match ended {
        Some(r) => r,
        None => {
            // Finish the request in progress (bounded by the timeouts).
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = evicted.cancelled() => return,
            }
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    drop(ticket);
}

/// Knows when every connection task of a listener has ended.
pub struct Tracker {
    tx: tokio::sync::mpsc::Sender<()>,
    rx: tokio::sync::mpsc::Receiver<()>,
}

impl Default for Tracker {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        Tracker { tx, rx }
    }
}

impl Tracker {
    /// Spawns `fut`; [`Tracker::wait`] waits for it.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let alive = self.tx.clone();
        tokio::spawn(async move {
            fut.await;
            drop(alive);
        });
    }

    /// Waits until every spawned task has ended (at most `timeout`);
    /// whether they all did.
    pub async fn wait(self, timeout: Duration) -> bool {
        let Tracker { tx, mut rx } = self;
        drop(tx);
        tokio::time::timeout(timeout, rx.recv()).await.is_ok()
    }
}

/// Backs off after failed accepts (EMFILE and friends) instead of spinning:
/// 10 ms, doubling up to 1.28 s, reset by a good accept.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn ok(&mut self) {
        self.failures = 0;
    }

    pub async fn failed(&mut self, e: &io::Error, what: &str) {
        self.failures = self.failures.saturating_add(1);
        let pause = Duration::from_millis(10u64 << self.failures.min(7));
        tracing::warn!(listener = what, error = %e, retry_in = ?pause, "accept failed");
        tokio::time::sleep(pause).await;
    }
}

/// Raises the soft limit on open files to the hard limit; returns the
/// limit in force (the soft one, with a warning, if it cannot be raised).
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            Ok(soft)
        }
    }
}

#[cfg(test)]
mod tests;
