//! When cycles run: on the interval (`MissedTickBehavior::Skip`), on an API
//! request, on libvirt events (debounced), and on the reconnect backoff
//! while libvirt is down. Requests that pile up share one cycle. A full
//! observation gives way to a scoped cycle asked meanwhile (an allocate,
//! or domain events), which runs first; the full cycle then runs to the
//! end. The watchdog is pinged only from here, between cycles.

use super::handle::Command;
use super::scope::{Last, Scope};
use super::Reconciler;
use crate::adapters::libvirt::events::{self, EventReceiver, HvEvent};
use crate::agent::audit::{Event, EventKind};
use crate::agent::load::LoadError;
use crate::agent::notify::Notice;
use crate::agent::report::Report;
use crate::core::config::Config;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Domain events received and not yet acted on, and when their debounce
/// window closes (kept here, not in a future: a cycle asked meanwhile
/// takes them along instead of dropping them).
#[derive(Default)]
struct Batch {
    events: Vec<HvEvent>,
    deadline: Option<tokio::time::Instant>,
}

/// A reply to send once a cycle published.
type Reply = oneshot::Sender<Arc<Report>>;

impl Batch {
    /// Adds a received event; the first opens the debounce window.
    fn add(&mut self, e: HvEvent) {
        if self.events.is_empty() {
            self.deadline = Some(tokio::time::Instant::now() + events::DEBOUNCE);
        }
        self.events.push(e);
    }

    /// Moves the events already queued on `rx` into the batch.
    fn drain(&mut self, rx: &mut Option<EventReceiver>) {
        if let Some(rx) = rx.as_mut() {
            while let Ok(e) = rx.try_recv() {
                self.add(e);
            }
        }
    }

    /// The scope of the events waiting, if any (and forgets them).
    fn take_scope(&mut self) -> Option<Scope> {
        self.deadline = None;
        if self.events.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.events);
        tracing::debug!(events = ?batch, "libvirt event: cycle now");
        Some(Scope::of_events(&batch))
    }
}

/// The next libvirt event; never ready without a receiver. Cancel-safe
/// (an event is either returned or still queued).
async fn next_event(rx: &mut Option<EventReceiver>) -> Option<HvEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// An interval that skips missed ticks.
fn interval(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    t
}

impl Reconciler {
    /// Runs cycles until `shutdown`; finishes the cycle in progress first.
    ///
    /// With a watchdog interval, pings after every cycle and on a tick of
    /// half the interval — but only from here, between cycles: while a
    /// cycle hangs (a libvirt call that never returns) the loop is not here
    /// and the pings stop.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = interval(self.config.agent.interval);
        let mut batch = Batch::default();
        let mut wd_tick = self.publisher.watchdog.map(|w| interval(w / 2));
        self.publisher.note(Event::now(EventKind::Started {
            version: env!("CARGO_PKG_VERSION").into(),
        }));
        loop {
            let down = !self.publisher.last().libvirt.connected && self.cycle > 0;
            let retry = self.observer.retry_in();
            let deadline = batch.deadline;
            let mut replies = Vec::new();
            let mut scope = Scope::All;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Reconcile(s, r)) => {
                        scope = s;
                        replies.extend(r);
                        // Requests that piled up meanwhile share this cycle;
                        // reloads among them are taken first (and a config
                        // change makes the cycle a full one).
                        while let Ok(next) = self.cmd_rx.try_recv() {
                            match next {
                                Command::Reconcile(s, r) => {
                                    scope = scope.merge(s);
                                    replies.extend(r);
                                }
                                Command::Reload(result, ack) => {
                                    self.take_reload(result, ack, &mut tick);
                                }
                            }
                        }
                    }
                    Some(Command::Reload(result, ack)) => self.take_reload(result, ack, &mut tick),
                    None => break,
                },
                _ = tick.tick() => {}
                _ = tokio::time::sleep(retry), if down => {}
                _ = async {
                    match wd_tick.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    // Between cycles, so the loop is alive: ping without a
                    // cycle, unless the libvirt thread is gone for good.
                    if self.hv.is_alive() {
                        self.publisher.notifier.notify(&[Notice::Watchdog]);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() => {
                    // The debounce window closed: a cycle for these events.
                    if let Some(s) = batch.take_scope() {
                        scope = s;
                    }
                }
                ev = next_event(&mut self.events) => match ev {
                    Some(e) => {
                        batch.add(e);
                        continue;
                    }
                    None => { self.events = None; continue; }
                },
            }
            // A full cycle due while domain events wait (a tick or a
            // request inside their debounce window): their domains go
            // first, in a cycle of their own, as when they interrupt a
            // full observation. Otherwise events waiting join whatever
            // cycle runs now.
            let report = if matches!(scope, Scope::All) && self.events_go_first(&mut batch) {
                self.after_preemption(scope, &mut tick, &mut batch).await
            } else {
                if let Some(s) = batch.take_scope() {
                    scope = scope.merge(s);
                }
                match self.run_cycle(scope.clone(), true).await {
                    Some(r) => r,
                    None => self.after_preemption(scope, &mut tick, &mut batch).await,
                }
            };
            for r in replies {
                let _ = r.send(report.clone());
            }
        }
        self.publisher.note(Event::now(EventKind::Stopping));
        self.publisher.flush();
        // Close the connection (and wait for it) off the runtime's workers.
        self.hv.close().await;
    }

    /// A full cycle gave up its observation for a scoped cycle asked
    /// meanwhile: runs the scoped requests waiting first (reloads among
    /// them are taken), then the full cycle, no longer preemptible, which
    /// also answers the full requests that were waiting. Returns the full
    /// cycle's report.
    async fn after_preemption(
        &mut self,
        full: Scope,
        tick: &mut tokio::time::Interval,
        batch: &mut Batch,
    ) -> Arc<Report> {
        let mut scoped: Option<Scope> = None;
        let mut scoped_replies: Vec<Reply> = Vec::new();
        let mut full_replies: Vec<Reply> = Vec::new();
        while let Ok(next) = self.cmd_rx.try_recv() {
            match next {
                Command::Reconcile(Scope::All, r) => full_replies.extend(r),
                Command::Reconcile(s, r) => {
                    scoped = Some(match scoped {
                        Some(f) => f.merge(s),
                        None => s,
                    });
                    scoped_replies.extend(r);
                }
                Command::Reload(result, ack) => self.take_reload(result, ack, tick),
            }
        }
        // Or a domain event gave the observation pause: its batch (after
        // the usual debounce) joins the scoped cycle.
        batch.drain(&mut self.events);
        if let Some(deadline) = batch.deadline {
            tokio::time::sleep_until(deadline).await;
            batch.drain(&mut self.events);
        }
        if let Some(Scope::Domains(uuids)) = batch.take_scope() {
            tracing::debug!(
                domains = uuids.len(),
                "domain events go before the full cycle"
            );
            let s = Scope::Domains(uuids);
            scoped = Some(match scoped {
                Some(f) => f.merge(s),
                None => s,
            });
        }
        if let Some(s) = scoped {
            tracing::debug!(
                scoped = scoped_replies.len(),
                full = full_replies.len(),
                "full observation gave way to a scoped cycle"
            );
            let report = self.cycle(s).await;
            tracing::debug!(
                cycle = report.cycle,
                "scoped cycle after a full observation gave way"
            );
            for r in scoped_replies {
                let _ = r.send(report.clone());
            }
        }
        let report = self.cycle(full).await;
        for r in full_replies {
            let _ = r.send(report.clone());
        }
        report
    }

    /// Whether the domain events waiting (queued or in their debounce
    /// window) call for a cycle of their own before a full one.
    fn events_go_first(&mut self, batch: &mut Batch) -> bool {
        batch.drain(&mut self.events);
        if batch.events.is_empty() {
            return false;
        }
        match Scope::of_events(&batch.events) {
            Scope::Domains(uuids) => Last::of(&self.publisher.last()).can_scope(&uuids),
            Scope::All => false,
        }
    }

    /// Takes a reload outcome, restarts `tick` on a new interval, acks.
    fn take_reload(
        &mut self,
        result: Result<Box<Config>, LoadError>,
        ack: Option<oneshot::Sender<()>>,
        tick: &mut tokio::time::Interval,
    ) {
        if let Some(new_interval) = self.reload(result) {
            *tick = interval(new_interval);
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    /// Takes a reload outcome. Returns the new interval if it changed.
    fn reload(&mut self, result: Result<Box<Config>, LoadError>) -> Option<Duration> {
        let file = self.config.source.display().to_string();
        let p = &mut self.publisher;
        match result {
            Ok(cfg) => {
                let old_interval = self.config.agent.interval;
                self.config = *cfg;
                p.config_tx.send_replace(Arc::new(self.config.clone()));
                p.reload_error = None;
                p.counters.reloads_ok += 1;
                p.counters.last_reload_ok = Some(true);
                p.note(Event::now(EventKind::ConfigReload {
                    file,
                    ok: true,
                    error: None,
                }));
                tracing::info!(file = %self.config.source.display(), "config reloaded");
                (self.config.agent.interval != old_interval).then_some(self.config.agent.interval)
            }
            Err(e) => {
                p.counters.reloads_refused += 1;
                p.counters.last_reload_ok = Some(false);
                p.note(Event::now(EventKind::ConfigReload {
                    file,
                    ok: false,
                    error: Some(e.to_string()),
                }));
                p.reload_error = Some(e.to_string());
                None
            }
        }
    }
}
