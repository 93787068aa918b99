//! virtpoold: the virtpool host agent.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::Libvirt;
use virtpool::agent::audit::{AuditLog, Event, EventKind};
use virtpool::agent::load::Overrides;
use virtpool::agent::memory::SavedHistory;
use virtpool::agent::notify::{self, SdNotifier};
use virtpool::agent::observability;
use virtpool::agent::reconciler::{Reconciler, ReconcilerOptions};
use virtpool::agent::service::{self, ServiceParts};
use virtpool::agent::state::{RuntimeState, StateError, VcpuHolds};
use virtpool::agent::{safe_fs, state_check};
use virtpool::cli::daemon_args::{exit, DaemonArgs};
use virtpool::cli::report;
use virtpool::core::config::{Allocatable, Config, Mode};

fn main() -> ExitCode {
    let args = match DaemonArgs::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version print and exit 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let mut cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtpoold: invalid config: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    if let Some(uri) = &args.uri {
        cfg.agent.libvirt_uri = uri.clone();
    }
    let mut host = match Host::new() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("virtpoold: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let alloc = match cfg.check_host(&host.refresh()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("virtpoold: invalid config: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    if args.check_config {
        return check_config(&args.config, &cfg, &alloc);
    }
    if args.reset_state {
        let dir = &cfg.agent.state_dir;
        if let Err(code) = moved_aside("runtime state", RuntimeState::reset(dir)) {
            return code;
        }
        // The planner's saved history is kept unless it cannot be read.
        if SavedHistory::load(dir).is_err() {
            if let Err(code) = moved_aside("unreadable saved history", SavedHistory::reset(dir)) {
                return code;
            }
        }
        // Held vCPU changes are kept unless their file cannot be read.
        if VcpuHolds::load(dir).is_err() {
            if let Err(code) = moved_aside("unreadable vCPU holds", VcpuHolds::reset(dir)) {
                return code;
            }
        }
    }
    // One cycle prints its own report: log only what went wrong.
    let level = if args.once || args.release_all {
        Some("warn")
    } else {
        cfg.agent.log_level.as_deref()
    };
    let log = observability::init(level);
    virt_quiet();
    // Before any libvirt connection is opened (events need it).
    if !args.once {
        if let Err(e) = virtpool::adapters::libvirt::events::start_event_loop() {
            tracing::warn!(error = %e, "lifecycle events off: cycles run on the interval only");
        }
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virtpoold: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = if args.release_all {
        rt.block_on(release_all(cfg, host))
    } else if args.once {
        rt.block_on(once(cfg, host, alloc, args.observe))
    } else {
        let overrides = Overrides {
            libvirt_uri: args.uri.clone(),
        };
        rt.block_on(daemon(cfg, host, alloc, args.observe, overrides, log))
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("virtpoold: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// How long `--check-config` waits for libvirt before it says it could
/// only check offline.
const CHECK_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// `--check-config`: the file was read and checked against this host's
/// capacity; now `agent.libvirt_uri` against the files it names, and, when
/// libvirt answers within [`CHECK_WITHIN`], the pools against its domains
/// (see `virtpool::core::config::live`). Says when it could only check
/// offline.
fn check_config(path: &std::path::Path, cfg: &Config, alloc: &Allocatable) -> ExitCode {
    use virtpool::core::config::live;
    let uri = cfg.agent.libvirt_uri.clone();
    let mut errors = live::uri_problems(&uri, |p| std::fs::symlink_metadata(p).is_ok());
    let mut warnings = Vec::new();
    let online = if errors.is_empty() {
        virt_quiet();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("check-libvirt".into())
            .spawn(move || {
                use virtpool::adapters::libvirt::Hypervisor;
                let mut hv = Libvirt::new(&uri);
                let _ = tx.send(hv.connect().and_then(|()| hv.observe()));
            });
        match spawned.map(|_| rx.recv_timeout(CHECK_WITHIN)) {
            Ok(Ok(Ok(domains))) => {
                let found = live::against_domains(cfg, &domains);
                warnings = found.warnings;
                errors = found.errors;
                Ok(domains.len())
            }
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_)) => Err(format!("no answer within {}s", CHECK_WITHIN.as_secs())),
            Err(e) => Err(format!("cannot start a thread: {e}")),
        }
    } else {
        Err("not contacted".into())
    };
    for w in &warnings {
        eprintln!("virtpoold: warning: {}: {w}", path.display());
    }
    if !errors.is_empty() {
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        eprintln!(
            "virtpoold: invalid config: {}: {}",
            path.display(),
            all.join("; ")
        );
        return ExitCode::from(exit::CONFIG);
    }
    let checked = match online {
        Ok(n) => format!(
            "checked against libvirt at {}: {n} domains, {} warning(s)",
            cfg.agent.libvirt_uri,
            warnings.len()
        ),
        Err(e) => format!(
            "checked offline only: libvirt at {} did not answer ({e}); \
             domain names and floors were not checked against the host",
            cfg.agent.libvirt_uri
        ),
    };
    // CPU time where a pool budgets it (it is not overcommitted: say how
    // much there is).
    let cpu = if cfg.pools.values().any(|p| p.resources.cpu.is_some()) {
        format!(
            ", {} of CPU time",
            virtpool::core::model::Resource::Cpu.human(alloc.cpu)
        )
    } else {
        String::new()
    };
    println!(
        "{}: ok ({} pools; allocatable {} vCPUs, {}{cpu}); {checked}",
        path.display(),
        cfg.pools.len(),
        alloc.vcpus,
        virtpool::core::units::human_bytes(alloc.memory)
    );
    ExitCode::SUCCESS
}

/// `--reset-state`: says where `what` was moved aside, if it was; a
/// failure is said and becomes the exit status.
fn moved_aside(what: &str, reset: Result<Option<PathBuf>, StateError>) -> Result<(), ExitCode> {
    match reset {
        Ok(Some(aside)) => {
            eprintln!("virtpoold: {what} moved aside to {}", aside.display());
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            eprintln!("virtpoold: {e}");
            Err(ExitCode::from(state_exit(&e)))
        }
    }
}

/// The exit status of a state error: [`exit::CONFIG`] when the operator
/// must fix the file or its directory first.
fn state_exit(e: &StateError) -> u8 {
    if e.needs_operator() {
        exit::CONFIG
    } else {
        exit::FAILURE
    }
}

/// The exit status of a start-up failure (see [`daemon_args::exit`]).
fn exit_code(e: &anyhow::Error) -> u8 {
    use virtpool::agent::safe_fs::DirError;
    use virtpool::api::ApiError;
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<StateError>() {
            return state_exit(s);
        }
        if let Some(d) = cause.downcast_ref::<DirError>() {
            return match d {
                DirError::Unsafe { .. } => exit::CONFIG,
                DirError::Io(_) => exit::FAILURE,
            };
        }
        if let Some(a) = cause.downcast_ref::<ApiError>() {
            return match a {
                ApiError::AlreadyRunning { .. } => exit::TEMPFAIL,
                ApiError::NotASocket(_)
                | ApiError::UnsafeLock { .. }
                | ApiError::Dir(DirError::Unsafe { .. }) => exit::CONFIG,
                _ => exit::FAILURE,
            };
        }
    }
    exit::FAILURE
}

/// Silences libvirt's default error printing (errors are returned and logged).
fn virt_quiet() {
    virtpool::adapters::libvirt::quiet_errors();
}

/// `--release-all`: gives back to every domain what the agent changed on
/// it, as if every domain had left its pool, then exits: 0 when all is
/// given back, 1 when some domains wait (paused, or their change failed).
/// Uses the agent's saved history and writes it back; the service must be
/// stopped first (the socket's lock says whether it runs).
async fn release_all(mut cfg: Config, host: Host) -> anyhow::Result<ExitCode> {
    let dir = cfg.agent.state_dir.clone();
    safe_fs::check_dir(&dir)?;
    let _lock = virtpool::api::bind(&cfg.agent.socket, &cfg.agent.api_group).await?;
    let saved = SavedHistory::load(&dir)?;
    let holds = state_check::load_holds(&dir)?;
    if saved.originals.is_empty() {
        println!("nothing to give back: the agent changed no domain that it still remembers");
        return Ok(ExitCode::SUCCESS);
    }
    // No pool: every domain has left management.
    cfg.pools.clear();
    cfg.agent.mode = Mode::Enforce;
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&cfg.agent.libvirt_uri)))
        .context("cannot start the libvirt thread")?;
    let uri = cfg.agent.libvirt_uri.clone();
    let (mut agent, _handle) = Reconciler::with_options(
        hv,
        host,
        cfg,
        RuntimeState::new(),
        ReconcilerOptions {
            holds_dir: Some(dir),
            holds,
            saved,
            ..ReconcilerOptions::default()
        },
    );
    // One cycle gives back, the next one sees it done (at most three).
    let mut report = agent.cycle_once().await;
    for _ in 0..2 {
        let giving = report.plan.as_ref().is_some_and(|p| !p.releases.is_empty());
        if !giving {
            break;
        }
        report = agent.cycle_once().await;
    }
    if !report.libvirt.connected {
        eprintln!(
            "virtpoold: cannot reach libvirt at {uri}: {}",
            report.libvirt.error.as_deref().unwrap_or("unknown error")
        );
        return Ok(ExitCode::from(exit::UNAVAILABLE));
    }
    let mut left = Vec::new();
    for u in report.plan.iter().flat_map(|p| &p.unmanaged) {
        match u.release {
            Some(virtpool::core::planner::Release::Done(how)) => {
                println!(
                    "{}: {}",
                    u.name,
                    serde_json::json!(how).as_str().unwrap_or("")
                )
            }
            Some(r) => left.push(format!("{} ({})", u.name, serde_json::json!(r))),
            None => {}
        }
    }
    if left.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("virtpoold: not given back yet: {}", left.join(", "));
        Ok(ExitCode::from(exit::FAILURE))
    }
}

async fn once(
    cfg: Config,
    host: Host,
    alloc: Allocatable,
    observe: bool,
) -> anyhow::Result<ExitCode> {
    // --once does not need saved runtime state to exist; uses it when it
    // does (from a directory it checks), writes none.
    let dir = &cfg.agent.state_dir;
    let runtime = if std::fs::symlink_metadata(dir).is_ok() {
        safe_fs::check_dir(dir)?;
        let (runtime, aside) = state_check::load(dir, &cfg, &alloc)?;
        for p in &aside.problems {
            eprintln!(
                "virtpoold: {}: left out of this run: {p}",
                dir.join(virtpool::agent::state::STATE_FILE).display()
            );
        }
        runtime
    } else {
        RuntimeState::new()
    };
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&cfg.agent.libvirt_uri)))
        .context("cannot start the libvirt thread")?;
    let uri = cfg.agent.libvirt_uri.clone();
    let (mut monitor, _handle) = Reconciler::new(hv, host, cfg, runtime, observe);
    let st = monitor.cycle_once().await;
    if !st.libvirt.connected && st.plan.is_none() {
        eprintln!(
            "virtpoold: cannot reach libvirt at {uri}: {}",
            st.libvirt.error.as_deref().unwrap_or("unknown error")
        );
        return Ok(ExitCode::from(exit::UNAVAILABLE));
    }
    if let Some(plan) = &st.plan {
        print!("{}", report::plan(plan));
    }
    println!();
    match st.mode {
        Mode::Observe => println!(
            "observe mode: {} change(s) planned, none made",
            st.plan.as_ref().map_or(0, |p| p.actions.len())
        ),
        Mode::Enforce => {
            let failed: Vec<_> = st.results.iter().filter(|r| !r.ok).collect();
            println!(
                "applied {} change(s), {} failed",
                st.results.len() - failed.len(),
                failed.len()
            );
            for f in failed {
                println!(
                    "  {} {}: {}",
                    f.action.domain(),
                    f.action.resource_label(),
                    f.error.as_ref().map_or("", |e| e.message.as_str())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent under systemd (or in a terminal): monitor, API socket,
/// metrics listener, signals. See `virtpool::agent::service`.
async fn daemon(
    cfg: Config,
    host: Host,
    alloc: Allocatable,
    observe: bool,
    overrides: Overrides,
    log: observability::LogControl,
) -> anyhow::Result<ExitCode> {
    // Raises the open-file limit, caps the listeners well below it.
    let (api_opts, metrics_opts) = virtpool::api::ServeOptions::for_daemon();
    let state_dir = cfg.agent.state_dir.clone();
    // Before anything is read or written there: the agent's alone.
    safe_fs::ensure_dir(&state_dir, virtpool::agent::state::STATE_DIR_MODE)?;
    let (runtime, aside) = state_check::load(&state_dir, &cfg, &alloc)?;
    let set_aside = if aside.is_empty() {
        None
    } else {
        let file = virtpool::agent::state::write_set_aside(&state_dir, &aside.entries)?;
        runtime.save(&state_dir)?;
        for p in &aside.problems {
            tracing::warn!(kept_in = %file.display(), problem = %p, "runtime state entry set aside: it does not fit the config or this host");
        }
        Some(EventKind::StateSetAside {
            file: file.display().to_string(),
            problems: aside.problems,
        })
    };
    let holds: VcpuHolds = state_check::load_holds(&state_dir)?;
    let saved = SavedHistory::load(&state_dir)?;
    if !holds.holds.is_empty() {
        tracing::info!(
            domains = holds.holds.len(),
            "vCPU holds from the last run stay until their domains restart"
        );
    }
    let audit = match AuditLog::open_with(
        &cfg.agent.state_dir,
        cfg.agent.audit_max_bytes,
        cfg.agent.audit_keep,
    ) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "audit log kept in memory only");
            AuditLog::memory()
        }
    };
    if let Some(kind) = set_aside {
        if let Err(e) = audit.append(&[Event::now(kind)]) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
    let (events_tx, events_rx) = virtpool::adapters::libvirt::events::channel();
    let hv = HvWorker::spawn(Box::new(
        Libvirt::new(&cfg.agent.libvirt_uri)
            .with_events(events_tx)
            .with_resync(cfg.agent.resync_interval),
    ))
    .context("cannot start the libvirt thread")?;
    let config_path = cfg.source.clone();
    let config_state_dir = cfg.agent.state_dir.clone();
    let metrics_listen = cfg.agent.metrics_listen;
    let notifier = std::sync::Arc::new(SdNotifier);
    let watchdog = notify::watchdog_interval();
    // API: bind (lock, stale socket, chmod, chgrp) before the first cycle,
    // so READY=1 (after the first cycle) means the socket answers.
    let api_sock = virtpool::api::bind(&cfg.agent.socket, &cfg.agent.api_group).await?;
    let api_group = cfg.agent.api_group.clone();
    let (monitor, handle) = Reconciler::with_options(
        hv,
        host,
        cfg,
        runtime,
        ReconcilerOptions {
            observe_only: observe,
            notifier: notifier.clone(),
            watchdog,
            audit,
            holds_dir: Some(config_state_dir.clone()),
            holds,
            saved,
        },
    );
    let monitor = monitor.with_events(events_rx);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reloads_tx, reloads) = tokio::sync::mpsc::channel(4);
    let api_state = virtpool::api::AppState::new(handle.clone(), api_group)
        .with_reloads(reloads_tx)
        .with_overrides(overrides.clone());
    let api_task = tokio::spawn(virtpool::api::serve_with(
        api_sock,
        api_state,
        shutdown.clone(),
        api_opts,
    ));
    let task = tokio::spawn(monitor.run(shutdown.clone()));

    if let Some(addr) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!(%addr, "serving /metrics over TCP");
        tokio::spawn(virtpool::api::metrics_tcp::serve_tcp(
            listener,
            handle.clone(),
            shutdown.clone(),
            metrics_opts,
        ));
    }

    // READY=1 once the first cycle has run (and the API socket is bound:
    // binding happens above, before this point).
    {
        let handle = handle.clone();
        let notifier = notifier.clone();
        tokio::spawn(async move {
            service::first_cycle(&handle).await;
            service::ready(notifier.as_ref(), &handle);
            tracing::info!("ready");
        });
    }
    tracing::info!(config = %config_path.display(), watchdog = ?watchdog, "virtpoold started");
    service::run(ServiceParts {
        handle,
        monitor: task,
        shutdown,
        notifier,
        config_path,
        overrides,
        log: Some(log),
        reloads: Some(reloads),
    })
    .await
    .context("cannot watch signals")?;
    // The API's tasks stop with the same token; wait for the socket to go.
    let _ = api_task.await;
    Ok(ExitCode::SUCCESS)
}
