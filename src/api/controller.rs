//! The logic behind the routes: reads from the last published snapshot,
//! changes to the runtime state as serialized transactions.
//!
//! A change runs on a blocking thread: lock the runtime mutex, apply the
//! change to a copy, validate it, save it (fsync'd) and only then swap it in
//! and answer. Concurrent changes queue on the mutex, so two allocations
//! can never both pass admission against the same old state.

use super::auth::{self, Peer};
use super::error::Error;
use super::types::*;
use super::views;
use crate::agent::reconciler::{Control, Scope};
use crate::agent::report::Report;
use crate::agent::state::RuntimeState;
use crate::core::config::{self, Config, Mode};
use crate::core::model::Resource;
use crate::core::planner::{self, Plan, PlanInput};
use axum::body::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How long a request waits for the monitor — a reload to be taken, a
/// cycle to finish (`?wait=true`, `POST /v1/reload`) — before it answers
/// without it. A cycle stuck in libvirt must not hold callers until the
/// watchdog restarts the agent.
pub const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<dyn Control>,
    group: String,
    /// Bumped on every saved runtime change (cache key).
    generation: AtomicU64,
    /// Serialized read answers for the current (status, generation, config).
    cache: Mutex<ReadCache>,
    /// Where `POST /v1/reload` goes (the service loop), when set.
    reloads: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::agent::service::ReloadRequest>>,
    /// See [`WAIT_LIMIT`].
    wait_limit: std::time::Duration,
    /// The command line's overrides, applied to a candidate config as a
    /// reload applies them (`POST /v1/plan`).
    overrides: std::sync::OnceLock<crate::agent::load::Overrides>,
}

/// Serialized answers valid for one published status, one runtime
/// generation and one file config; cleared when any of them changes. Holds
/// only answers that were built successfully (existing pools), so it is
/// bounded.
#[derive(Default)]
struct ReadCache {
    key: Option<CacheKey>,
    /// Counts key changes: an answer built under an older key is not kept.
    epoch: u64,
    entries: std::collections::HashMap<String, Cached>,
}

/// The inputs of a read answer (compared by identity). The status is held
/// weakly: once the monitor publishes the next one, the cache no longer
/// keeps the previous cycle's observation and plan alive (the allocation
/// it points to stays, so its address is not reused while it is compared).
#[derive(Clone)]
struct CacheKey {
    status: std::sync::Weak<Report>,
    generation: u64,
    config: Arc<Config>,
}

impl CacheKey {
    fn same(&self, o: &CacheKey) -> bool {
        self.status.ptr_eq(&o.status)
            && self.generation == o.generation
            && Arc::ptr_eq(&self.config, &o.config)
    }
}

/// A serialized read answer and its entity tag.
#[derive(Debug, Clone)]
pub struct Cached {
    pub body: Bytes,
    /// Quoted strong ETag: a 64-bit hash of the body, so it stays the same
    /// across cycles (and restarts) that give the same answer.
    pub etag: String,
}

/// What a change did, for the response and the event log.
#[derive(Debug)]
pub struct Outcome<T> {
    pub value: T,
    pub changed: bool,
    pub message: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl AppState {
    /// The state of the API over a monitor handle; `group` is `api.group`
    /// (members may make changes).
    pub fn new(control: impl Control, group: impl Into<String>) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                control: Arc::new(control),
                group: group.into(),
                generation: AtomicU64::new(0),
                cache: Mutex::new(ReadCache::default()),
                reloads: std::sync::OnceLock::new(),
                wait_limit: WAIT_LIMIT,
                overrides: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Takes `POST /v1/reload` requests to `tx` (the service loop, which
    /// also takes SIGHUP). Without it the endpoint answers 503.
    pub fn with_reloads(
        self,
        tx: tokio::sync::mpsc::Sender<crate::agent::service::ReloadRequest>,
    ) -> AppState {
        // Set once, right after `new`: a second call keeps the first.
        let _ = self.inner.reloads.set(tx);
        self
    }

    /// Applies the command line's overrides to candidate configs (set
    /// once, right after `new`).
    pub fn with_overrides(self, o: crate::agent::load::Overrides) -> AppState {
        let _ = self.inner.overrides.set(o);
        self
    }

    /// The command line's overrides (none unless set).
    pub fn overrides(&self) -> crate::agent::load::Overrides {
        self.inner.overrides.get().cloned().unwrap_or_default()
    }

    /// Waits for the monitor at most `limit` instead of [`WAIT_LIMIT`]
    /// (right after `new`, before the state is shared).
    pub fn with_wait_limit(mut self, limit: std::time::Duration) -> AppState {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.wait_limit = limit;
        }
        self
    }

    /// `POST /v1/reload`: re-reads the config file as SIGHUP does and
    /// answers once the monitor has taken the result and published the
    /// cycle that follows (so what the caller reads next reflects it).
    /// A monitor whose cycle is stuck (in libvirt) does not take it: after
    /// the wait limit the answer is 503 `reload_pending`, and the reload
    /// stays queued.
    pub async fn reload(&self) -> Result<ReloadResponse, Error> {
        let tx = self.inner.reloads.get().ok_or(Error::NoReload)?;
        let wait = &self.inner.wait_limit;
        let mut status = self.inner.control.reports();
        let before = status.borrow().cycle;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let handed = async {
            tx.send(reply).await.map_err(|_| Error::Stopping)?;
            rx.await.map_err(|_| Error::Stopping)
        };
        let outcome = tokio::time::timeout(*wait, handed)
            .await
            .map_err(|_| Error::ReloadPending(*wait))??;
        // The monitor runs a cycle right after taking a reload; a cycle
        // stuck in libvirt does not hold the answer for long.
        let _ = tokio::time::timeout(*wait, status.wait_for(|s| s.cycle > before)).await;
        match outcome {
            Ok(r) => Ok(ReloadResponse {
                file: r.file.display().to_string(),
                restart_only: r.restart_only,
                set_aside_file: r.set_aside.as_ref().map(|a| a.file.display().to_string()),
                set_aside: r.set_aside.map(|a| a.problems).unwrap_or_default(),
            }),
            Err(e) => Err(Error::ConfigRefused(e.to_string())),
        }
    }

    pub fn control(&self) -> &dyn Control {
        self.inner.control.as_ref()
    }

    pub fn group(&self) -> &str {
        &self.inner.group
    }

    fn runtime(&self) -> RuntimeState {
        lock(self.inner.control.runtime()).clone()
    }

    // ------------------------------------------------------------ reads

    pub fn status(&self) -> StatusResponse {
        let st = self.inner.control.report();
        views::status(&st, &self.runtime(), &self.inner.control.config())
    }

    /// An answer from the cache, or built and cached. The generation is
    /// read before the runtime state is copied: an answer may show a state
    /// newer than its key (that key is then already stale and the next
    /// request rebuilds), never an older one.
    fn cached(
        &self,
        key: &str,
        build: impl FnOnce(&Report, &RuntimeState, &Config) -> Result<Vec<u8>, Error>,
    ) -> Result<Cached, Error> {
        let status = self.inner.control.report();
        let want = CacheKey {
            status: Arc::downgrade(&status),
            generation: self.inner.generation.load(Ordering::Acquire),
            config: self.inner.control.config(),
        };
        let epoch = {
            let mut c = lock(&self.inner.cache);
            if c.key.as_ref().is_some_and(|k| k.same(&want)) {
                if let Some(hit) = c.entries.get(key) {
                    return Ok(hit.clone());
                }
            } else {
                c.key = Some(want.clone());
                c.epoch += 1;
                c.entries.clear();
            }
            c.epoch
        };
        let body = build(&status, &self.runtime(), &want.config)?;
        let answer = Cached {
            etag: etag_of(&body),
            body: Bytes::from(body),
        };
        let mut c = lock(&self.inner.cache);
        if c.epoch == epoch {
            c.entries.insert(key.to_string(), answer.clone());
        }
        Ok(answer)
    }

    /// `GET /v1/status`, serialized once per published cycle, runtime
    /// change and config.
    pub fn status_json(&self) -> Result<Cached, Error> {
        self.cached("status", |st, rt, cfg| to_json(&views::status(st, rt, cfg)))
    }

    /// `GET /v1/domains`, cached like [`AppState::status_json`].
    pub fn domains_json(&self) -> Result<Cached, Error> {
        self.cached("domains", |st, rt, _| to_json(&views::domains(st, rt)))
    }

    /// `GET /v1/pools`, cached like [`AppState::status_json`].
    pub fn pools_json(&self, members: bool) -> Result<Cached, Error> {
        let key = if members { "pools" } else { "pools/summary" };
        self.cached(key, |st, rt, _| {
            to_json(&views::pools(st.plan.as_ref(), rt, members))
        })
    }

    /// `GET /v1/pools/{pool}`, cached like [`AppState::status_json`].
    pub fn pool_json(&self, name: &str) -> Result<Cached, Error> {
        self.cached(&format!("pool/{name}"), |st, rt, cfg| {
            to_json(&pool_in(st, rt, cfg, name)?)
        })
    }

    pub fn pool(&self, name: &str) -> Result<PoolView, Error> {
        let st = self.inner.control.report();
        let rt = self.runtime();
        let cfg = self.inner.control.config();
        pool_in(&st, &rt, &cfg, name)
    }

    pub fn domains(&self) -> DomainsResponse {
        views::domains(&self.inner.control.report(), &self.runtime())
    }

    pub fn domain(&self, key: &str) -> Result<DomainView, Error> {
        let st = self.inner.control.report();
        let d = views::find_domain(&st.domains, key).ok_or_else(|| no_domain(key))?;
        Ok(views::domain_view(d, st.plan.as_ref(), &self.runtime()))
    }

    /// What the next cycle would do, planned now on the last observation
    /// with the current runtime state (so it shows changes not yet enforced).
    pub fn plan(&self) -> Result<PlanResponse, Error> {
        let st = self.inner.control.report();
        let rt = self.runtime();
        let cfg = self.inner.control.config();
        let plan = current_plan(&st, &rt, &cfg)?;
        let paused = rt.paused || st.mode == Mode::Observe;
        Ok(views::plan(&st, &plan, &rt, paused))
    }

    // ------------------------------------------------------------ changes

    /// Runs one change transaction (see the module doc), then records it and
    /// asks for a cycle; with `wait`, returns that cycle's result.
    pub async fn change<T, F>(
        &self,
        peer: Option<Peer>,
        wait: bool,
        f: F,
    ) -> Result<(Outcome<T>, Option<CycleResult>), Error>
    where
        T: Send + 'static,
        F: FnOnce(&Ctx, &mut RuntimeState) -> Result<Outcome<T>, Error> + Send + 'static,
    {
        self.change_scoped(peer, wait, f, |_| None).await
    }

    /// [`AppState::change`] for a change that concerns one domain: the
    /// cycle it asks for re-observes and enforces only the domain named by
    /// `domain_of` (by name or UUID, as last observed; see
    /// [`Scope::Domains`]), or is a full one when it names none.
    pub async fn change_scoped<T, F>(
        &self,
        peer: Option<Peer>,
        wait: bool,
        f: F,
        domain_of: impl FnOnce(&T) -> Option<String> + Send + 'static,
    ) -> Result<(Outcome<T>, Option<CycleResult>), Error>
    where
        T: Send + 'static,
        F: FnOnce(&Ctx, &mut RuntimeState) -> Result<Outcome<T>, Error> + Send + 'static,
    {
        auth::authorize_change(peer, &self.inner.group)?;
        // A task of its own: when the client goes away (its request future
        // is dropped), a saved change still gets its audit record, log line
        // and cycle.
        let me = self.clone();
        tokio::spawn(async move { me.commit(peer, wait, f, domain_of).await })
            .await
            .map_err(|e| Error::Internal(format!("change task failed: {e}")))?
    }

    /// The transaction, then its record and its cycle.
    async fn commit<T, F>(
        self,
        peer: Option<Peer>,
        wait: bool,
        f: F,
        domain_of: impl FnOnce(&T) -> Option<String>,
    ) -> Result<(Outcome<T>, Option<CycleResult>), Error>
    where
        T: Send + 'static,
        F: FnOnce(&Ctx, &mut RuntimeState) -> Result<Outcome<T>, Error> + Send + 'static,
    {
        let me = self.clone();
        let out = tokio::task::spawn_blocking(move || me.transact(f))
            .await
            .map_err(|e| Error::Internal(format!("change task failed: {e}")))??;
        if out.changed {
            tracing::info!(uid = peer.map(|p| p.uid), change = %out.message, "runtime change");
            // The change in the audit log, before the answer (a few hundred
            // bytes, inline: see crate::agent::audit).
            let ev = Event::now(EventKind::Change {
                uid: peer.map_or(u32::MAX, |p| p.uid),
                message: out.message.clone(),
            });
            if let Err(e) = self.inner.control.audit().append(&[ev]) {
                tracing::warn!(error = %e, "cannot write the audit log");
            }
        }
        let scope = domain_of(&out.value)
            .and_then(|key| {
                let st = self.inner.control.report();
                views::find_domain(&st.domains, &key).map(|d| vec![d.uuid.to_string()])
            })
            .map_or(Scope::All, Scope::Domains);
        // The change stands whatever the wait gives: without a cycle (the
        // monitor stopping or past the wait limit) the answer has none.
        let cycle = self
            .reconcile_scope(scope, wait && out.changed, out.changed)
            .await
            .unwrap_or(None);
        Ok((out, cycle))
    }

    fn transact<T, F>(&self, f: F) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(&Ctx, &mut RuntimeState) -> Result<Outcome<T>, Error>,
    {
        let ctx = Ctx {
            status: self.inner.control.report(),
            config: self.inner.control.config(),
        };
        let mut guard = lock(self.inner.control.runtime());
        let mut next = guard.clone();
        let out = f(&ctx, &mut next)?;
        if out.changed && next != *guard {
            next.save(&ctx.config.agent.state_dir)
                .map_err(|e| Error::Persist(e.to_string()))?;
            *guard = next;
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(out)
    }

    /// Asks for a cycle (when `trigger`); with `wait`, waits for it, up
    /// to the wait limit (then `CyclePending`; the cycle still runs).
    pub async fn reconcile(&self, wait: bool, trigger: bool) -> Result<Option<CycleResult>, Error> {
        self.reconcile_scope(Scope::All, wait, trigger).await
    }

    async fn reconcile_scope(
        &self,
        scope: Scope,
        wait: bool,
        trigger: bool,
    ) -> Result<Option<CycleResult>, Error> {
        if !trigger {
            return Ok(None);
        }
        if !wait {
            self.inner.control.request_cycle(scope, false).await;
            return Ok(None);
        }
        let limit = self.inner.wait_limit;
        match tokio::time::timeout(limit, self.inner.control.request_cycle(scope, true)).await {
            Ok(Some(st)) => Ok(Some(cycle_result(&st))),
            Ok(None) => Err(Error::Stopping),
            Err(_) => Err(Error::CyclePending(limit)),
        }
    }
}

/// One pool's view from a published status; a pool created or changed
/// since the last cycle is planned now.
fn pool_in(st: &Report, rt: &RuntimeState, cfg: &Config, name: &str) -> Result<PoolView, Error> {
    if let Some(p) = st
        .plan
        .as_ref()
        .and_then(|p| p.pools.iter().find(|p| p.name == name))
    {
        return Ok(views::pool_view(p, rt));
    }
    if let Ok(plan) = current_plan(st, rt, cfg) {
        if let Some(p) = plan.pools.iter().find(|p| p.name == name) {
            return Ok(views::pool_view(p, rt));
        }
    }
    Err(no_pool(name))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(e.to_string()))
}

/// A strong ETag for a body: its hash, quoted.
fn etag_of(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

/// A cycle's outcome from the status it published.
pub fn cycle_result(st: &Report) -> CycleResult {
    CycleResult {
        cycle: st.cycle,
        actions: st.results.len(),
        failed: st.results.iter().filter(|r| !r.ok).count(),
        libvirt_connected: st.libvirt.connected,
    }
}

/// What a change transaction sees besides the runtime state.
pub struct Ctx {
    pub status: Arc<Report>,
    pub config: Arc<Config>,
}

pub(super) fn no_pool(name: &str) -> Error {
    Error::NotFound(format!("no pool {name:?}"))
}

pub(super) fn no_domain(key: &str) -> Error {
    Error::NotFound(format!("no domain {key:?} (by name or UUID)"))
}

/// Plans on the last observation with `rt` applied.
pub fn current_plan(st: &Report, rt: &RuntimeState, cfg: &Config) -> Result<Plan, Error> {
    let host = st.host.ok_or(Error::NotReady)?;
    if st.cycle == 0 {
        return Err(Error::NotReady);
    }
    let effective = rt.effective(cfg).config;
    Ok(plan_with(st, &effective, rt, host))
}

pub(super) fn plan_with(
    st: &Report,
    effective: &Config,
    rt: &RuntimeState,
    host: crate::core::model::HostCapacity,
) -> Plan {
    planner::plan(&PlanInput {
        config: effective,
        host,
        domains: &st.domains,
        reservations: &rt.reservations,
        // The reconciler's history and clock: cooldowns and held vCPU
        // changes show as they will in the next cycle.
        history: &st.basis.history,
        now: st.basis.now(),
        paused: rt.paused,
    })
}

/// The effective config of a candidate state, or 409 with every problem.
pub(super) fn effective(rt: &RuntimeState, cfg: &Config) -> Result<Config, Error> {
    rt.effective(cfg)
        .strict()
        .map_err(|p| Error::Conflict(p.to_string()))
}

/// Validates a pool name from the URL or a body.
pub fn parse_name(what: &str, s: &str) -> Result<(), Error> {
    config::valid_name(s).map_err(|e| Error::BadRequest(format!("{what}: {e}")))
}

/// Validates a domain name (or UUID) from the URL or a body: any name
/// libvirt takes but for control characters (see
/// [`config::valid_domain_name`]).
pub fn parse_domain(s: &str) -> Result<(), Error> {
    config::valid_domain_name(s).map_err(|e| Error::BadRequest(e.to_string()))
}

/// Validates the amounts of an allocate/release request.
pub fn check_amounts(req: &Reservation) -> Result<(), Error> {
    parse_domain(&req.domain)?;
    let a = req.amounts();
    for r in Resource::ALL {
        if let Some(v) = a.get(r) {
            if *v > max_amount(r) {
                return Err(Error::BadRequest(format!(
                    "{r} {v} is out of range (at most {})",
                    max_amount(r)
                )));
            }
        }
    }
    Ok(())
}
