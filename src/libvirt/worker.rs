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

use super::calls::{CallCounter, CallCounts};
use super::{ffi, HvError, Hypervisor};
use crate::model::{Action, DomainObs};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use tokio::sync::oneshot;

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
    Thread(mpsc::Sender<Job>),
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
        std::thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(hv.as_mut());
                }
            })?;
        Ok(HvWorker {
            inner: Inner::Thread(tx),
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
            Inner::Thread(tx) => {
                let job: Job = Box::new(move |hv| {
                    let _ = reply.send(f(hv));
                });
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
                    let Ok(mut guard) = shared.hv.lock() else {
                        return;
                    };
                    if let Some(hv) = guard.as_mut() {
                        let _ = reply.send(f(hv.as_mut()));
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

    /// Sets the balloon stats period on the given domains (UUIDs); returns
    /// the ones that succeeded.
    pub async fn set_stats_period(
        &self,
        uuids: Vec<String>,
        secs: u32,
    ) -> Result<Vec<(String, Result<(), HvError>)>, HvError> {
        self.run(move |hv| {
            uuids
                .into_iter()
                .map(|u| {
                    let r = hv.set_stats_period(&u, secs);
                    (u, r)
                })
                .collect()
        })
        .await
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
    /// thread (closing a connection is a blocking call; the last handle may
    /// be dropped on a tokio worker).
    fn drop(&mut self) {
        let hv = match self.hv.get_mut() {
            Ok(hv) => hv.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(hv) = hv {
            // If the queue refused it, `hv` is dropped right here instead.
            let _ = submit(Box::new(move || drop(hv)));
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
pub(crate) fn install_loop_queue() -> Result<(), String> {
    let (rx, tx) = UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
    rx.set_nonblocking(true)
        .and_then(|()| tx.set_nonblocking(true))
        .map_err(|e| format!("cannot make the wake-up socket non-blocking: {e}"))?;
    ffi::watch_readable(
        rx,
        Box::new(|mut sock: &UnixStream| {
            // Only wakes the loop: drain, the jobs run after the iteration.
            let mut buf = [0u8; 64];
            while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
        }),
    )
    .map_err(|e| format!("cannot watch the wake-up socket: {e}"))?;
    LOOP_QUEUE
        .set(LoopQueue {
            jobs: Mutex::new(VecDeque::new()),
            wake: tx,
        })
        .map_err(|_| "the event-loop job queue is already installed".to_string())
}

/// Queues `job` for the event-loop thread and wakes it.
fn submit(job: LoopJob) -> Result<(), HvError> {
    let q = LOOP_QUEUE.get().ok_or_else(gone)?;
    q.jobs.lock().map_err(|_| gone())?.push_back(job);
    // A full socket already has a wake-up pending: WouldBlock is fine.
    let _ = (&q.wake).write(&[1]);
    Ok(())
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
