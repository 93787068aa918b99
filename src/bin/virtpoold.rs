//! virtpoold: the virtpool host agent.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use virtpool::config::{Config, Mode, DEFAULT_PATH};
use virtpool::host::Host;
use virtpool::libvirt::worker::HvWorker;
use virtpool::libvirt::Libvirt;
use virtpool::monitor::Monitor;
use virtpool::state::RuntimeState;
use virtpool::{observability, report};

/// Keeps the libvirt domains of this host inside their resource pools.
#[derive(Parser, Debug)]
#[command(name = "virtpoold", version, about, long_about = None)]
struct Args {
    /// Config file.
    #[arg(long, short = 'c', env = "VIRTPOOL_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the config (against this host's capacity) and exit: 0 valid, 2 invalid.
    #[arg(long)]
    check_config: bool,
    /// Run exactly one cycle, print the pools and exit.
    #[arg(long)]
    once: bool,
    /// Plan and report, change nothing (overrides `agent.mode`).
    #[arg(long)]
    observe: bool,
    /// Override `agent.libvirt_uri`.
    #[arg(long)]
    uri: Option<String>,
    /// Move a corrupt or unwanted runtime state file aside and start fresh.
    #[arg(long)]
    reset_state: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
            virtpool::units::human_bytes(alloc.memory)
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
    }
    // One cycle prints its own report: log only what went wrong.
    let level = if args.once {
        Some("warn")
    } else {
        cfg.agent.log_level.as_deref()
    };
    observability::init(level);
    virt_quiet();
    // Before any libvirt connection is opened (events need it).
    if !args.once {
        if let Err(e) = virtpool::libvirt::events::start_event_loop() {
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
        rt.block_on(daemon(cfg, host, args.observe))
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
    virtpool::libvirt::quiet_errors();
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
        .join(virtpool::state::STATE_FILE)
        .exists()
    {
        runtime_state(&cfg)?
    } else {
        RuntimeState::new()
    };
    let (mut monitor, _handle) = Monitor::new(hv, host, cfg, runtime, observe);
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
                    f.error.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A reloaded config must pass the same host check as at start: its pool
/// budgets must fit this host's allocatable capacity.
fn budgets_fit(cfg: Config) -> anyhow::Result<Config> {
    let mut host = Host::new()?;
    cfg.check_budgets(&cfg.host.allocatable(&host.refresh()))?;
    Ok(cfg)
}

async fn daemon(cfg: Config, host: Host, observe: bool) -> anyhow::Result<ExitCode> {
    let runtime = runtime_state(&cfg)?;
    let (events_tx, events_rx) = virtpool::libvirt::events::channel();
    let hv = HvWorker::spawn(Box::new(
        Libvirt::new(&cfg.agent.libvirt_uri).with_events(events_tx),
    ))
    .context("cannot start the libvirt thread")?;
    let config_path = cfg.source.clone();
    // API: bind (lock, stale socket, chmod, chgrp) before the first cycle.
    let api_sock = virtpool::api::bind(&cfg.agent.socket, &cfg.agent.api_group).await?;
    let api_group = cfg.agent.api_group.clone();
    let (monitor, handle) = Monitor::new(hv, host, cfg, runtime, observe);
    let monitor = monitor.with_events(events_rx);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let api_state = virtpool::api::AppState::new(handle.clone(), api_group);
    let api_task = tokio::spawn(virtpool::api::serve(api_sock, api_state, shutdown.clone()));
    let task = tokio::spawn(monitor.run(shutdown.clone()));

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tracing::info!(config = %config_path.display(), "virtpoold started");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match Config::load(&config_path).map_err(anyhow::Error::from).and_then(budgets_fit) {
                    Ok(c) => { handle.reload(c).await; }
                    Err(e) => tracing::error!(error = %e, "reload refused: keeping the running config"),
                }
            }
        }
    }
    tracing::info!("stopping");
    shutdown.cancel();
    let _ = task.await;
    let _ = api_task.await;
    Ok(ExitCode::SUCCESS)
}
