//! Owns a [`Hypervisor`] on a dedicated OS thread. Async callers send jobs
//! and await replies; a hung libvirt call blocks only this thread (and the
//! monitor cycle waiting on it), never a tokio worker.

use super::{HvError, Hypervisor};
use crate::model::{Action, DomainObs};
use std::sync::mpsc;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut dyn Hypervisor) + Send>;

/// Handle to the hypervisor thread. Cheap to clone.
#[derive(Clone)]
pub struct HvWorker {
    tx: mpsc::Sender<Job>,
}

/// The thread is gone (it panicked or was shut down).
fn gone() -> HvError {
    HvError::Other("hypervisor thread stopped".into())
}

impl HvWorker {
    /// Starts the thread that owns `hv`.
    pub fn spawn(mut hv: Box<dyn Hypervisor>) -> std::io::Result<HvWorker> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(hv.as_mut());
                }
            })?;
        Ok(HvWorker { tx })
    }

    /// Runs `f` on the hypervisor thread and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Hypervisor) -> T + Send + 'static,
    ) -> Result<T, HvError> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |hv| {
            let _ = reply.send(f(hv));
        });
        self.tx.send(job).map_err(|_| gone())?;
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
