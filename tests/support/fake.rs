//! The one fake hypervisor of the tests: [`Fake`] either keeps domains in
//! memory (its `apply` changes them) or wraps a real adapter (every call
//! goes on to it). Either way it records every call, and a test injects
//! faults through its [`FakeCtl`]: the connection down, an observation that
//! stalls or hangs, a delay on every call, errors or timeouts for chosen
//! writes, domains that vanish, hooks run right after an observation, and a
//! slow close.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use virtpool::adapters::libvirt::calls::CallCounter;
use virtpool::adapters::libvirt::{HvError, Hypervisor};
use virtpool::core::model::{Action, DomainObs};

/// One call the fake was asked, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Connect,
    /// A full observation (`observe` or `observe_until`).
    Observe,
    /// An observation of these UUIDs only.
    ObserveDomains(Vec<String>),
    /// A write, and what came of it.
    Apply(Action, Result<(), HvError>),
}

type ApplyRule = Box<dyn Fn(&Action) -> Option<HvError> + Send>;
type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    domains: Mutex<Vec<DomainObs>>,
    calls: Mutex<Vec<Call>>,
    down: AtomicBool,
    stall: AtomicBool,
    hang: AtomicBool,
    /// Observations panic (the worker's thread stops for good).
    panic: AtomicBool,
    held: AtomicUsize,
    delay_us: AtomicU64,
    busy: AtomicBool,
    fail_apply: Mutex<Option<ApplyRule>>,
    fail_observe: Mutex<Option<HvError>>,
    vanished: Mutex<Vec<String>>,
    after_observe: Mutex<Vec<Hook>>,
    close_delay_us: AtomicU64,
    closed: AtomicBool,
}

/// The hypervisor half: hand it to `HvWorker::spawn`.
pub struct Fake {
    inner: Option<Box<dyn Hypervisor>>,
    st: Arc<State>,
}

/// The test's half: what the fake was asked, and the faults to inject.
#[derive(Clone)]
pub struct FakeCtl(Arc<State>);

impl Fake {
    /// A fake whose domains live in memory.
    pub fn new(domains: Vec<DomainObs>) -> Fake {
        let st = State::default();
        *st.domains.lock().unwrap() = domains;
        Fake {
            inner: None,
            st: Arc::new(st),
        }
    }

    /// A fake in front of a real adapter: every call goes on to `inner`
    /// (unless a fault is injected), and is recorded.
    pub fn wrap(inner: impl Hypervisor + 'static) -> Fake {
        Fake {
            inner: Some(Box::new(inner)),
            st: Arc::default(),
        }
    }

    pub fn ctl(&self) -> FakeCtl {
        FakeCtl(self.st.clone())
    }

    fn enter(&self, call: Call) -> Busy {
        assert!(
            !self.st.busy.swap(true, Ordering::SeqCst),
            "two calls at once on one hypervisor"
        );
        self.st.calls.lock().unwrap().push(call);
        let us = self.st.delay_us.load(Ordering::SeqCst);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        Busy(self.st.clone())
    }

    fn check(&self) -> Result<(), HvError> {
        if self.st.down.load(Ordering::SeqCst) {
            Err(HvError::ConnectionLost("fake libvirt is down".into()))
        } else {
            Ok(())
        }
    }

    /// Holds an observation while it stalls (it gives way, `false`, once
    /// `stop` is set) or hangs (it gives way to nothing).
    fn hold(&self, stop: Option<&AtomicBool>) -> bool {
        if self.st.panic.load(Ordering::SeqCst) {
            panic!("test: a libvirt job panics (expected)");
        }
        let mut held = false;
        let go_on = loop {
            let hang = self.st.hang.load(Ordering::SeqCst);
            if !hang && !self.st.stall.load(Ordering::SeqCst) {
                break true;
            }
            if !hang && stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                break false;
            }
            if !held {
                held = true;
                self.st.held.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if held {
            self.st.held.fetch_sub(1, Ordering::SeqCst);
        }
        go_on
    }

    /// What an observation answers: `r` less vanished domains, or the
    /// injected error; the hooks run after it has been read.
    fn observed(&self, r: Result<Vec<DomainObs>, HvError>) -> Result<Vec<DomainObs>, HvError> {
        let r = match self.st.fail_observe.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => r.map(|mut all| {
                let gone = self.st.vanished.lock().unwrap();
                all.retain(|d| !gone.iter().any(|u| **u == *d.uuid));
                all
            }),
        };
        let hooks: Vec<Hook> = self.st.after_observe.lock().unwrap().drain(..).collect();
        for h in hooks {
            h();
        }
        r
    }

    fn observe_all(&mut self) -> Result<Vec<DomainObs>, HvError> {
        self.check()?;
        match self.inner.as_mut() {
            Some(hv) => hv.observe(),
            None => Ok(self.st.domains.lock().unwrap().clone()),
        }
    }

    fn apply_inner(&mut self, action: &Action) -> Result<(), HvError> {
        self.check()?;
        if let Some(e) = self
            .st
            .fail_apply
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|f| f(action))
        {
            return Err(e);
        }
        let uuid = action.uuid();
        if self.st.vanished.lock().unwrap().iter().any(|u| u == uuid) {
            return Err(HvError::NoDomain(uuid.into()));
        }
        if let Some(hv) = self.inner.as_mut() {
            return hv.apply(action);
        }
        let mut ds = self.st.domains.lock().unwrap();
        let d = ds
            .iter_mut()
            .find(|d| *d.uuid == *uuid)
            .ok_or_else(|| HvError::NoDomain(uuid.into()))?;
        match action {
            Action::SetVcpus { to, .. } => d.vcpus = *to,
            Action::SetMemory { to, .. } => {
                d.memory = *to;
                if let Some(b) = d.balloon.as_mut() {
                    b.actual = *to;
                }
            }
            Action::SetBlockIoTune { disk, to, .. } => {
                if let Some(x) = Arc::make_mut(&mut d.disks)
                    .iter_mut()
                    .find(|x| &x.target == disk)
                {
                    x.iotune = Some(*to);
                }
            }
            Action::SetCpuShares { to, .. } => d.cpu_shares = Some(*to),
            Action::SetBlkioWeight { to, .. } => d.blkio_weight = Some(*to),
            Action::SetCpuQuota { quota, .. } => d.cpu_quota = Some(*quota),
            Action::SetStatsPeriod { .. } => {}
        }
        Ok(())
    }
}

/// Clears the busy flag when a call returns.
struct Busy(Arc<State>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::SeqCst);
    }
}

impl Hypervisor for Fake {
    fn connect(&mut self) -> Result<(), HvError> {
        let _b = self.enter(Call::Connect);
        self.check()?;
        match self.inner.as_mut() {
            Some(hv) => hv.connect(),
            None => Ok(()),
        }
    }

    fn is_connected(&self) -> bool {
        !self.st.down.load(Ordering::SeqCst)
            && self.inner.as_ref().is_none_or(|hv| hv.is_connected())
    }

    fn observe(&mut self) -> Result<Vec<DomainObs>, HvError> {
        let _b = self.enter(Call::Observe);
        self.hold(None);
        let r = self.observe_all();
        self.observed(r)
    }

    fn observe_until(&mut self, stop: &AtomicBool) -> Result<Option<Vec<DomainObs>>, HvError> {
        let _b = self.enter(Call::Observe);
        if !self.hold(Some(stop)) {
            return Ok(None);
        }
        self.check()?;
        let r = match self.inner.as_mut() {
            Some(hv) => match hv.observe_until(stop)? {
                Some(all) => Ok(all),
                None => return Ok(None),
            },
            None => self.observe_all(),
        };
        self.observed(r).map(Some)
    }

    fn observe_domains(&mut self, uuids: &[String]) -> Result<Vec<DomainObs>, HvError> {
        let _b = self.enter(Call::ObserveDomains(uuids.to_vec()));
        self.check()?;
        let r = match self.inner.as_mut() {
            Some(hv) => hv.observe_domains(uuids),
            None => {
                let mut all = self.st.domains.lock().unwrap().clone();
                all.retain(|d| uuids.iter().any(|u| **u == *d.uuid));
                Ok(all)
            }
        };
        self.observed(r)
    }

    fn apply(&mut self, action: &Action) -> Result<(), HvError> {
        let _b = self.enter(Call::Apply(action.clone(), Ok(())));
        let r = self.apply_inner(action);
        if let Some(Call::Apply(_, res)) = self.st.calls.lock().unwrap().last_mut() {
            *res = r.clone();
        }
        r
    }

    fn call_counter(&self) -> Option<Arc<CallCounter>> {
        self.inner.as_ref().and_then(|hv| hv.call_counter())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let us = self.st.close_delay_us.load(Ordering::SeqCst);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        drop(self.inner.take());
        self.st.closed.store(true, Ordering::SeqCst);
    }
}

impl FakeCtl {
    /// The in-memory domains (a fake that wraps an adapter has none).
    pub fn domains(&self) -> MutexGuard<'_, Vec<DomainObs>> {
        self.0.domains.lock().unwrap()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.0.calls.lock().unwrap().clone()
    }

    /// How many calls so far.
    pub fn call_count(&self) -> usize {
        self.0.calls.lock().unwrap().len()
    }

    pub fn connects(&self) -> usize {
        self.count(|c| matches!(c, Call::Connect))
    }

    /// Full observations asked.
    pub fn full_observes(&self) -> usize {
        self.count(|c| matches!(c, Call::Observe))
    }

    /// The UUIDs asked by each scoped observation.
    pub fn scoped(&self) -> Vec<Vec<String>> {
        let calls = self.0.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| match c {
                Call::ObserveDomains(u) => Some(u.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every write asked, and what came of it.
    pub fn applied(&self) -> Vec<(Action, Result<(), HvError>)> {
        let calls = self.0.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Apply(a, r) => Some((a.clone(), r.clone())),
                _ => None,
            })
            .collect()
    }

    /// Writes asked (failed ones too).
    pub fn writes(&self) -> usize {
        self.count(|c| matches!(c, Call::Apply(..)))
    }

    fn count(&self, f: impl Fn(&Call) -> bool) -> usize {
        self.0.calls.lock().unwrap().iter().filter(|c| f(c)).count()
    }

    /// Whether a call is running right now.
    pub fn busy(&self) -> bool {
        self.0.busy.load(Ordering::SeqCst)
    }

    /// While set, every call fails with `ConnectionLost` and the fake says
    /// it is not connected.
    pub fn set_down(&self, down: bool) {
        self.0.down.store(down, Ordering::SeqCst);
    }

    /// While set, a full observation does not return (a slow libvirt)
    /// unless it is told to give up (`observe_until`); scoped observations
    /// are not held.
    pub fn set_stall(&self, stall: bool) {
        self.0.stall.store(stall, Ordering::SeqCst);
    }

    /// While set, a full observation does not return at all (a hung
    /// libvirt call: it does not give up either).
    pub fn set_hang(&self, hang: bool) {
        self.0.hang.store(hang, Ordering::SeqCst);
    }

    /// Observations panic from now on (the worker stops for good).
    pub fn set_panic(&self, panic: bool) {
        self.0.panic.store(panic, Ordering::SeqCst);
    }

    /// How many observations are held by a stall or a hang right now.
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::SeqCst)
    }

    /// Every call takes at least this long.
    pub fn set_delay(&self, d: Duration) {
        self.0
            .delay_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Writes for which `rule` gives an error fail with it, without going
    /// on (e.g. a vCPU unplug that times out).
    pub fn fail_apply_when(&self, rule: impl Fn(&Action) -> Option<HvError> + Send + 'static) {
        *self.0.fail_apply.lock().unwrap() = Some(Box::new(rule));
    }

    /// Every observation fails with `e` (`None`: no more).
    pub fn fail_observe(&self, e: Option<HvError>) {
        *self.0.fail_observe.lock().unwrap() = e;
    }

    /// The domain with this UUID is gone: left out of observations, and a
    /// write to it fails with `NoDomain`.
    pub fn vanish(&self, uuid: &str) {
        self.0.vanished.lock().unwrap().push(uuid.into());
    }

    /// Runs `hook` once, right after the next observation has read the
    /// host (and before the agent gets it).
    pub fn after_observe(&self, hook: impl FnOnce() + Send + 'static) {
        self.0.after_observe.lock().unwrap().push(Box::new(hook));
    }

    /// The fake's close (its drop) takes this long.
    pub fn set_close_delay(&self, d: Duration) {
        self.0
            .close_delay_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Whether the fake has been closed (dropped).
    pub fn closed(&self) -> bool {
        self.0.closed.load(Ordering::SeqCst)
    }
}
