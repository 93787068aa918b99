//! Runs a [`Hypervisor`]'s blocking calls off the async runtime. Async
//! callers send jobs and await replies; a hung libvirt call blocks only the
//! thread running it (and the monitor cycle waiting on it), never a tokio
//! worker.
//!
//! Where the jobs run:
//! - When libvirt's event loop runs in this process
//!   ([`super::events::start_event_loop`], as in `virtpoold`), on the
//!   `libvirt-events` thread itself, between two event-loop iterations.
//!   libvirt's client touches the connection's watch in that loop around
//!   every call; made from the loop's own thread, a call no longer wakes a
//!   second thread. The cost: while a job runs (a whole observation, say),
//!   events wait, and are dispatched when it returns. Jobs of every worker
//!   in the process share that one thread, one job at a time.
//! - Otherwise (no event loop, or it could not take jobs), on a `libvirt`
//!   thread of the worker's own.
//!
//! Either way, one job at a time per hypervisor, in submission order. A job
//! that panics stops its worker: that job and every later one fail with
//! "hypervisor thread stopped"; other workers and the event loop go on.
//!
//! Dropping the last handle closes the hypervisor on the thread that runs
//! its jobs and waits for the close (at most [`CLOSE_WAIT`]). So a process
//! that drops its handles before it returns from `main` never exits while
//! libvirt is still tearing a connection down: library destructors run at
//! exit (libxml2's, gnutls's), and libvirt code running beside them can
//! corrupt the heap.

use super::calls::{CallCounter, CallCounts};
use super::ffi;
use super::hypervisor::{HvError, Hypervisor};
use crate::core::model::{Action, DomainObs};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long dropping the last handle waits for the hypervisor to close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

thread_local! {
    /// Set on the threads that run jobs (a worker's own thread, the
    /// event-loop thread): they never wait for a close, which may be
    /// queued behind the job they are running.
    static JOB_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that runs jobs (see [`JOB_THREAD`]).
pub(crate) fn mark_job_thread() {
    JOB_THREAD.with(|t| t.set(true));
}

/// Waits until `closed` disconnects (its sender is dropped once the
/// hypervisor is), at most [`CLOSE_WAIT`]; not on a job thread.
fn wait_closed(closed: mpsc::Receiver<()>) {
    if JOB_THREAD.with(Cell::get) {
        return;
    }
    if let Err(mpsc::RecvTimeoutError::Timeout) = closed.recv_timeout(CLOSE_WAIT) {
        tracing::warn!(
            wait = ?CLOSE_WAIT,
            "the libvirt connection did not close in time; going on without it"
        );
    }
}

type Job = Box<dyn FnOnce(&mut dyn Hypervisor) + Send>;

/// Handle to the hypervisor's jobs. Cheap to clone.
#[derive(Clone)]
pub struct HvWorker {
    inner: Inner,
    /// The hypervisor's call counts, when it keeps them.
    calls: Option<Arc<CallCounter>>,
}

#[derive(Clone)]
enum Inner {
    /// Jobs run on a thread of this worker's own.
    Thread(Arc<ThreadHv>),
    /// Jobs run on the event-loop thread.
    EventLoop(Arc<LoopHv>),
}

/// The thread is gone (it panicked or was shut down).
fn gone() -> HvError {
    HvError::Other("hypervisor thread stopped".into())
}

impl HvWorker {
    /// Takes ownership of `hv`: its jobs run on the event-loop thread when
    /// that takes jobs, otherwise on a new `libvirt` thread.
    pub fn spawn(hv: Box<dyn Hypervisor>) -> std::io::Result<HvWorker> {
        let calls = hv.call_counter();
        if LOOP_QUEUE.get().is_some() {
            return Ok(HvWorker {
                inner: Inner::EventLoop(Arc::new(LoopHv {
                    hv: Mutex::new(Some(hv)),
                })),
                calls,
            });
        }
        HvWorker::spawn_thread(hv, calls)
    }

    /// Drops this handle on a blocking thread, not on an async worker:
    /// when it is the last one, that drop closes the hypervisor and waits
    /// for the close (at most [`CLOSE_WAIT`]).
    pub async fn close(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    /// Whether jobs can still run: false once a job panicked (or the
    /// thread ended), after which every job fails with "hypervisor thread
    /// stopped". Cheap: no job is sent. The monitor stops pinging the
    /// watchdog when it is false, so systemd restarts the agent.
    pub fn is_alive(&self) -> bool {
        match &self.inner {
            Inner::Thread(shared) => match shared.closed.lock() {
                // The thread drops the sender when it ends.
                Ok(closed) => closed
                    .as_ref()
                    .is_some_and(|c| matches!(c.try_recv(), Err(mpsc::TryRecvError::Empty))),
                Err(_) => false,
            },
            Inner::EventLoop(shared) => !shared.hv.is_poisoned(),
        }
    }

    /// The libvirt calls made so far, when the hypervisor counts them.
    pub fn calls(&self) -> Option<CallCounts> {
        self.calls.as_ref().map(|c| c.snapshot())
    }

    /// Starts the thread that owns `hv`.
    fn spawn_thread(
        mut hv: Box<dyn Hypervisor>,
        calls: Option<Arc<CallCounter>>,
    ) -> std::io::Result<HvWorker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (closed_tx, closed) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || {
                mark_job_thread();
                while let Ok(job) = rx.recv() {
                    job(hv.as_mut());
                }
                // Closed first, then the waiting handle is told (also when
                // a job panics: unwinding drops both in this order).
                drop(hv);
                drop(closed_tx);
            })?;
        Ok(HvWorker {
            inner: Inner::Thread(Arc::new(ThreadHv {
                tx: Some(tx),
                closed: Mutex::new(Some(closed)),
            })),
            calls,
        })
    }

    /// Runs `f` on the hypervisor's thread and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Hypervisor) -> T + Send + 'static,
    ) -> Result<T, HvError> {
        let (reply, rx) = oneshot::channel();
        match &self.inner {
            Inner::Thread(shared) => {
                let job: Job = Box::new(move |hv| {
                    let _ = reply.send(f(hv));
                });
                let tx = shared.tx.as_ref().ok_or_else(gone)?;
                tx.send(job).map_err(|_| gone())?;
            }
            Inner::EventLoop(shared) => {
                if shared.hv.is_poisoned() {
                    return Err(gone());
                }
                let shared = Arc::clone(shared);
                submit(Box::new(move || {
                    // Poisoned: an earlier job panicked holding it. Dropping
                    // `reply` answers "stopped".
                    let out = match shared.hv.lock() {
                        Ok(mut guard) => guard.as_mut().map(|hv| f(hv.as_mut())),
                        Err(_) => None,
                    };
                    // Let go of the hypervisor before answering: once
                    // answered, the caller's handle may be the last one,
                    // and its drop must be the one that closes (and waits).
                    drop(shared);
                    if let Some(out) = out {
                        let _ = reply.send(out);
                    }
                }))?;
            }
        }
        rx.await.map_err(|_| gone())
    }

    /// Connects if needed.
    pub async fn connect(&self) -> Result<(), HvError> {
        self.run(|hv| hv.connect()).await?
    }

    /// Connects if needed, then observes every domain.
    pub async fn observe(&self) -> Result<Vec<DomainObs>, HvError> {
        self.run(|hv| {
            hv.connect()?;
            hv.observe()
        })
        .await?
    }

    /// Connects if needed, then observes every domain, unless `stop` is
    /// set first (see [`Hypervisor::observe_until`]).
    pub async fn observe_until(
        &self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Option<Vec<DomainObs>>, HvError> {
        self.run(move |hv| {
            hv.connect()?;
            hv.observe_until(&stop)
        })
        .await?
    }

    /// Connects if needed, then observes the domains with these UUIDs
    /// (see [`Hypervisor::observe_domains`]).
    pub async fn observe_domains(&self, uuids: Vec<String>) -> Result<Vec<DomainObs>, HvError> {
        self.run(move |hv| {
            hv.connect()?;
            hv.observe_domains(&uuids)
        })
        .await?
    }

    /// Applies actions in order; one failure does not stop the others. A
    /// lost connection fails the remaining actions without calling libvirt.
    pub async fn apply(
        &self,
        actions: Vec<Action>,
    ) -> Result<Vec<(Action, Result<(), HvError>)>, HvError> {
        self.run(move |hv| {
            let mut out = Vec::with_capacity(actions.len());
            let mut lost: Option<HvError> = None;
            for a in actions {
                let r = match &lost {
                    Some(e) => Err(e.clone()),
                    None => hv.apply(&a),
                };
                if let Err(e) = &r {
                    if e.is_connection() && lost.is_none() {
                        lost = Some(e.clone());
                    }
                }
                out.push((a, r));
            }
            out
        })
        .await
    }
}

// ------------------------------------------------ jobs on a thread of its own

/// The job queue of a worker with a thread of its own.
struct ThreadHv {
    /// Always `Some` until dropped.
    tx: Option<mpsc::Sender<Job>>,
    /// Disconnects once the thread has dropped the hypervisor (in a mutex
    /// only to make the handle `Sync`).
    closed: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Drop for ThreadHv {
    /// The last handle is gone: the thread finishes the queued jobs, closes
    /// the hypervisor and ends; wait for that.
    fn drop(&mut self) {
        drop(self.tx.take());
        let closed = match self.closed.get_mut() {
            Ok(c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(closed) = closed {
            wait_closed(closed);
        }
    }
}

// ------------------------------------------------ jobs on the event loop

/// A hypervisor whose jobs run on the event-loop thread. The mutex is never
/// contended (one thread runs the jobs); it carries the "a job panicked"
/// state (poisoned) and makes the hypervisor reachable from that thread.
struct LoopHv {
    hv: Mutex<Option<Box<dyn Hypervisor>>>,
}

impl Drop for LoopHv {
    /// The last handle is gone: close the hypervisor on the event-loop
    /// thread (where its calls run) and wait for that, unless this is that
    /// thread.
    fn drop(&mut self) {
        let hv = match self.hv.get_mut() {
            Ok(hv) => hv.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(hv) = hv else {
            return;
        };
        if JOB_THREAD.with(Cell::get) {
            drop(hv);
            return;
        }
        let (closed_tx, closed) = mpsc::channel::<()>();
        // If the queue refuses the job, `hv` is dropped with it right here.
        if submit(Box::new(move || {
            drop(hv);
            drop(closed_tx);
        }))
        .is_ok()
        {
            wait_closed(closed);
        }
    }
}

type LoopJob = Box<dyn FnOnce() + Send>;

/// Jobs waiting for the event-loop thread, and the socket that wakes it.
struct LoopQueue {
    jobs: Mutex<VecDeque<LoopJob>>,
    wake: UnixStream,
}

static LOOP_QUEUE: OnceLock<LoopQueue> = OnceLock::new();

/// Lets the event-loop thread take jobs: a socket pair whose read end is
/// watched by libvirt's default event loop (which must be registered, and
/// then run by one thread calling [`run_loop_jobs`] after every iteration).
/// Once per process; called by [`super::events::start_event_loop`].
pub(crate) fn install_loop_queue() -> Result<(), HvError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| HvError::Other(format!("{what}: {e}"))
    };
    let (rx, tx) = UnixStream::pair().map_err(io("cannot create a socket pair"))?;
    rx.set_nonblocking(true)
        .and_then(|()| tx.set_nonblocking(true))
        .map_err(io("cannot make the wake-up socket non-blocking"))?;
    ffi::watch_readable(
        rx,
        Box::new(|mut sock: &UnixStream| {
            // Only wakes the loop: drain, the jobs run after the iteration.
            let mut buf = [0u8; 64];
            while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
        }),
    )
    .map_err(|e| HvError::Other(format!("cannot watch the wake-up socket: {e}")))?;
    LOOP_QUEUE
        .set(LoopQueue {
            jobs: Mutex::new(VecDeque::new()),
            wake: tx,
        })
        .map_err(|_| HvError::Other("the event-loop job queue is already installed".into()))
}

/// Queues `job` for the event-loop thread and wakes it.
fn submit(job: LoopJob) -> Result<(), HvError> {
    let q = LOOP_QUEUE.get().ok_or_else(gone)?;
    q.jobs.lock().map_err(|_| gone())?.push_back(job);
    // A full socket already has a wake-up pending: WouldBlock is fine.
    let _ = (&q.wake).write(&[1]);
    Ok(())
}

/// Wakes the event-loop thread's next iteration (no job queued).
pub(crate) fn wake_loop() {
    if let Some(q) = LOOP_QUEUE.get() {
        let _ = (&q.wake).write(&[1]);
    }
}

/// Wakes the event-loop thread again if jobs are waiting (after an
/// iteration run inside a job drained the wake-up).
pub(crate) fn rewake_if_jobs() {
    if let Some(q) = LOOP_QUEUE.get() {
        if q.jobs.lock().is_ok_and(|j| !j.is_empty()) {
            let _ = (&q.wake).write(&[1]);
        }
    }
}

/// Runs the jobs queued so far (not those queued while they run: events
/// get their turn in between). Called by the event-loop thread after each
/// iteration. A panicking job is caught here and stops only its worker
/// (its hypervisor's lock is poisoned).
pub(crate) fn run_loop_jobs() {
    let Some(q) = LOOP_QUEUE.get() else {
        return;
    };
    let batch: Vec<LoopJob> = match q.jobs.lock() {
        Ok(mut jobs) => jobs.drain(..).collect(),
        Err(_) => return,
    };
    for job in batch {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a libvirt job panicked: that hypervisor is stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// A hypervisor whose close (drop) takes time: it blocks until
    /// `release` fires or `delay` passes, then sets `closed`.
    struct SlowClose {
        delay: Duration,
        release: Option<mpsc::Receiver<()>>,
        closed: Arc<AtomicBool>,
    }

    impl Drop for SlowClose {
        fn drop(&mut self) {
            match self.release.take() {
                Some(rx) => drop(rx.recv_timeout(self.delay)),
                None => std::thread::sleep(self.delay),
            }
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    impl Hypervisor for SlowClose {
        fn connect(&mut self) -> Result<(), HvError> {
            Ok(())
        }
        fn is_connected(&self) -> bool {
            true
        }
        fn observe(&mut self) -> Result<Vec<DomainObs>, HvError> {
            Ok(Vec::new())
        }
        fn apply(&mut self, _action: &Action) -> Result<(), HvError> {
            Ok(())
        }
    }

    /// A worker over a hypervisor whose close takes 300 ms, after one
    /// job has run (the thread is up), and its `closed` flag.
    async fn slow_close_worker() -> (HvWorker, Arc<AtomicBool>) {
        let closed = Arc::new(AtomicBool::new(false));
        let w = HvWorker::spawn(Box::new(SlowClose {
            delay: Duration::from_millis(300),
            release: None,
            closed: closed.clone(),
        }))
        .unwrap();
        w.observe().await.unwrap();
        (w, closed)
    }

    #[tokio::test]
    async fn dropping_the_last_handle_waits_for_the_close() {
        let (w, closed) = slow_close_worker().await;
        let other = w.clone();
        drop(w);
        assert!(!closed.load(Ordering::SeqCst), "a handle is still alive");
        assert!(other.observe().await.is_ok());
        drop(other);
        assert!(
            closed.load(Ordering::SeqCst),
            "the last drop returned before the hypervisor was closed"
        );
    }

    #[tokio::test]
    async fn close_returns_once_the_hypervisor_is_closed() {
        let (w, closed) = slow_close_worker().await;
        w.close().await;
        assert!(closed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_hung_close_is_waited_for_a_bounded_time() {
        let closed = Arc::new(AtomicBool::new(false));
        let (release, rx) = mpsc::channel();
        let w = HvWorker::spawn(Box::new(SlowClose {
            delay: Duration::from_secs(120),
            release: Some(rx),
            closed: closed.clone(),
        }))
        .unwrap();
        w.observe().await.unwrap();
        let t = Instant::now();
        drop(w);
        let waited = t.elapsed();
        assert!(
            waited >= CLOSE_WAIT && waited < CLOSE_WAIT * 3,
            "waited {waited:?}"
        );
        assert!(!closed.load(Ordering::SeqCst));
        release.send(()).unwrap();
    }

    /// A job that panics stops the worker: it says so without a job.
    #[tokio::test]
    async fn a_worker_whose_job_panicked_is_not_alive() {
        let (w, _closed) = slow_close_worker().await;
        assert!(w.is_alive());
        let r = w
            .run(|_| -> () { panic!("a job that panics (expected in this test)") })
            .await;
        assert!(r.is_err());
        // The thread ends after unwinding (the close takes 300 ms).
        let deadline = Instant::now() + Duration::from_secs(30);
        while w.is_alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!w.is_alive(), "the worker still reports alive");
        assert!(w.observe().await.is_err());
    }

    #[test]
    fn a_job_thread_does_not_wait_for_a_close() {
        let (tx, closed) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            mark_job_thread();
            let t = Instant::now();
            wait_closed(closed);
            t.elapsed()
        });
        let waited = t.join().unwrap();
        drop(tx);
        assert!(waited < CLOSE_WAIT, "waited {waited:?}");
    }
}
