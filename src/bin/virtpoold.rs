//! virtpoold: the virtpool host agent.

use anyhow::Context;
use std::process::ExitCode;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::Libvirt;
use virtpool::agent::audit::AuditLog;
use virtpool::agent::load::Overrides;
use virtpool::agent::notify::{self, SdNotifier};
use virtpool::agent::observability;
use virtpool::agent::reconciler::{Reconciler, ReconcilerOptions};
use virtpool::agent::service::{self, ServiceParts};
use virtpool::agent::state::{RuntimeState, VcpuHolds};
use virtpool::cli::daemon_args::{self, Parsed};
use virtpool::cli::report;
use virtpool::core::config::{Config, Mode};

fn main() -> ExitCode {
    let parsed = daemon_args::parse(
        std::env::args_os().skip(1),
        std::env::var_os("VIRTPOOL_CONFIG"),
    );
    let args = match parsed {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            print!("{}", daemon_args::help());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("{}", daemon_args::version());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", e.report());
            return ExitCode::from(2);
        }
    };
    let mut cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtpoold: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(uri) = &args.uri {
        cfg.agent.libvirt_uri = uri.clone();
    }
    let mut host = match Host::new() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("virtpoold: {e}");
            return ExitCode::from(1);
        }
    };
    let alloc = cfg.host.allocatable(&host.refresh());
    if let Err(e) = cfg.check_budgets(&alloc) {
        eprintln!("virtpoold: invalid config: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        println!(
            "{}: ok ({} pools; allocatable {} vCPUs, {})",
            args.config.display(),
            cfg.pools.len(),
            alloc.vcpus,
            virtpool::core::units::human_bytes(alloc.memory)
        );
        return ExitCode::SUCCESS;
    }
    if args.reset_state {
        match RuntimeState::reset(&cfg.agent.state_dir) {
            Ok(Some(aside)) => eprintln!(
                "virtpoold: runtime state moved aside to {}",
                aside.display()
            ),
            Ok(None) => {}
            Err(e) => {
                eprintln!("virtpoold: {e}");
                return ExitCode::from(1);
            }
        }
        // Held vCPU changes are kept unless their file cannot be read.
        if VcpuHolds::load(&cfg.agent.state_dir).is_err() {
            match VcpuHolds::reset(&cfg.agent.state_dir) {
                Ok(Some(aside)) => eprintln!(
                    "virtpoold: unreadable vCPU holds moved aside to {}",
                    aside.display()
                ),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("virtpoold: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    // One cycle prints its own report: log only what went wrong.
    let level = if args.once {
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
            return ExitCode::from(1);
        }
    };
    let result = if args.once {
        rt.block_on(once(cfg, host, args.observe))
    } else {
        let overrides = Overrides {
            libvirt_uri: args.uri.clone(),
        };
        rt.block_on(daemon(cfg, host, args.observe, overrides, log))
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("virtpoold: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Silences libvirt's default error printing (errors are returned and logged).
fn virt_quiet() {
    virtpool::adapters::libvirt::quiet_errors();
}

fn runtime_state(cfg: &Config) -> anyhow::Result<RuntimeState> {
    Ok(RuntimeState::load(&cfg.agent.state_dir)?)
}

async fn once(cfg: Config, host: Host, observe: bool) -> anyhow::Result<ExitCode> {
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&cfg.agent.libvirt_uri)))
        .context("cannot start the libvirt thread")?;
    let uri = cfg.agent.libvirt_uri.clone();
    // --once does not need saved runtime state to exist; use it when it does.
    let runtime = if cfg
        .agent
        .state_dir
        .join(virtpool::agent::state::STATE_FILE)
        .exists()
    {
        runtime_state(&cfg)?
    } else {
        RuntimeState::new()
    };
    let (mut monitor, _handle) = Reconciler::new(hv, host, cfg, runtime, observe);
    let st = monitor.cycle_once().await;
    if !st.libvirt.connected && st.plan.is_none() {
        eprintln!(
            "virtpoold: cannot reach libvirt at {uri}: {}",
            st.libvirt.error.as_deref().unwrap_or("unknown error")
        );
        return Ok(ExitCode::from(1));
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
    observe: bool,
    overrides: Overrides,
    log: observability::LogControl,
) -> anyhow::Result<ExitCode> {
    // Raises the open-file limit, caps the listeners well below it.
    let (api_opts, metrics_opts) = virtpool::api::ServeOptions::for_daemon();
    let runtime = runtime_state(&cfg)?;
    let holds = VcpuHolds::load(&cfg.agent.state_dir)?;
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
