//! Full cycle at scale (not a timed test): the agent against a private
//! `libvirtd` hosting the test driver with 100 / 1,000 / 5,000 domains, and
//! a raw-libvirt baseline in the same run.
//!
//! `scripts/bench-scale.sh` runs it (`cargo bench --bench scale`); see
//! docs/performance.md, "Reproduce". Environment:
//! - `SCALE_SIZES` (default `100,1000,5000`): domain counts.
//! - `SCALE_REPS` (default 5; at most 3 for the allocate latency): timed
//!   repetitions per size; medians are printed, and each round's figures.
//! - `SCALE_IDLE_SECS` (default 60): idle-CPU window (at 1,000 domains),
//!   starting when a cycle ends; a multiple of the 10 s interval.
//! - `SCALE_EVENTS` (default 1): registers the in-process agent for domain
//!   events, as `virtpoold` is (libvirt's event loop runs; the agent then
//!   reuses each domain's XML, I/O limits and weights between reads); 0
//!   reads everything every cycle.
//! - `SCALE_AGENT_WRAPPER`: a command the real `virtpoold` runs under
//!   (e.g. `heaptrack -o /tmp/ht`), for profiling.
//! - `SCALE_GROWTH_CYCLES` (default 1000) and `SCALE_GROWTH_SIZE` (default
//!   100): cycles run through the API to check RSS growth.
//!
//! Domains get into the daemon-hosted test driver through the API
//! (`virDomainDefineXML` + `virDomainCreate` on a second connection that
//! stays open for the whole size, so the shared `default` node keeps them).
//!
//! Figures per size:
//! - (a) the agent's full cycle (observe + plan + enforce + publish) after a
//!   budget change that moves every domain's vCPUs, memory and disk limits;
//! - (b) a steady-state cycle (nothing to change; must issue no writes),
//!   measured after the cycle that reads back the last change;
//! - (c) a raw baseline with `virt` calls only, in a child process with no
//!   libvirt event loop: the reads a steady cycle
//!   needs (c-read: list, info, memory stats) and those reads plus the
//!   writes (c-change); c-full is every read of a domain not known yet
//!   (XML, I/O limits, weight too), which the agent makes on its first
//!   cycle, after a change and at each domain's resync;
//! - the real `virtpoold` (with the `Environment=` of the systemd unit, as
//!   deployed): its RSS, the time from `virtpoolctl allocate`
//!   returning to the change being visible on a second connection, the
//!   time from a domain's restart to its vCPUs back at target (lifecycle
//!   event → reconcile), idle CPU (1,000 domains) and RSS across many
//!   cycles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/libvirtd.rs"]
mod libvirtd;
#[path = "../tests/support/process.rs"]
#[allow(dead_code)]
mod process;

use libvirtd::{Libvirtd, LIBVIRTD};
use process::KillOnDrop;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::{ffi, xml, Libvirt};
use virtpool::agent::audit::AuditLog;
use virtpool::agent::reconciler::{Reconciler, ReconcilerOptions};
use virtpool::agent::report::Report;
use virtpool::agent::state::RuntimeState;
use virtpool::core::config::{Config, PoolSpec};
use virtpool::core::model::IoTune;

const MIB: u64 = 1 << 20;
const POOLS: usize = 4;
/// Per-domain targets of the two budgets the agent flips between, and the
/// values the baseline writes (so every agent change cycle moves every
/// domain): (vCPUs, memory MiB, disk MiB/s, IOPS).
const BUDGET_A: (u64, u64, u64, u64) = (2, 1024, 10, 100);
const BUDGET_B: (u64, u64, u64, u64) = (3, 1536, 20, 200);
const BASE_C: (u64, u64, u64, u64) = (1, 768, 5, 50);

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn name(i: usize) -> String {
    format!("p{}-{i:05}", i % POOLS)
}

fn uuid(i: usize) -> String {
    format!("5ca1ab1e-0000-4000-8000-{i:012x}")
}

fn domain_xml(i: usize) -> String {
    format!(
        "<domain type='test'><name>{}</name><uuid>{}</uuid>\
         <memory unit='MiB'>2048</memory><currentMemory unit='MiB'>{}</currentMemory>\
         <vcpu placement='static' current='{}'>4</vcpu>\
         <os><type arch='x86_64'>hvm</type></os>\
         <devices><disk type='file' device='disk'><source file='/var/lib/vp-scale/{i}.img'/>\
         <target dev='vda' bus='virtio'/></disk><memballoon model='virtio'/></devices></domain>",
        name(i),
        uuid(i),
        BASE_C.1,
        BASE_C.0
    )
}

/// The pools (4, by name glob) with budgets giving each member `t`.
fn pools_toml(n: usize, t: (u64, u64, u64, u64)) -> String {
    let mut s = String::new();
    for p in 0..POOLS {
        let members = (0..n).filter(|i| i % POOLS == p).count() as u64;
        s.push_str(&format!(
            "[pools.p{p}]\nmatch = \"p{p}-*\"\n\
             vcpus = {{ budget = {} }}\n\
             memory = {{ budget = \"{}MiB\" }}\n\
             disk_bytes_sec = {{ budget = \"{}MiB\" }}\n\
             disk_iops_sec = {{ budget = {} }}\n",
            members * t.0,
            members * t.1,
            members * t.2,
            members * t.3
        ));
    }
    s
}

fn config_toml(n: usize, uri: &str, dir: &Path, interval: &str, pools: &str) -> String {
    format!(
        "[agent]\nlibvirt_uri = \"{uri}\"\nstate_dir = \"{state}\"\ninterval = \"{interval}\"\n\
         [api]\nsocket = \"{sock}\"\ngroup = \"root\"\n\
         [host]\ncpus = {cpus}\nmemory = \"{mem}MiB\"\ndisk_bytes_sec = \"{disk}MiB\"\ndisk_iops_sec = {iops}\n\
         [memory]\nmin_change = \"16MiB\"\nmax_shrink = \"50%\"\npressure_threshold = \"1MiB\"\n\
         [vcpus]\ncooldown = \"0s\"\n{pools}",
        state = dir.join("state").display(),
        sock = dir.join("virtpool.sock").display(),
        cpus = n + 1,
        mem = n as u64 * 2048 + 1024,
        disk = n as u64 * 40,
        iops = n as u64 * 400,
    )
}

fn runtime_pools(
    n: usize,
    t: (u64, u64, u64, u64),
) -> std::collections::BTreeMap<String, PoolSpec> {
    #[derive(serde::Deserialize)]
    struct P {
        pools: std::collections::BTreeMap<String, PoolSpec>,
    }
    toml::from_str::<P>(&pools_toml(n, t)).unwrap().pools
}

/// A `/proc/PID/status` field in KiB (`pid` may be `self`).
fn proc_status_kib(pid: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of this process, in clock ticks (10 ms).
fn self_cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CPU time the hypervisor under this machine took from it ("steal"),
/// as a share of this machine's CPUs since [`Steal::start`]. This VM shares
/// its host: episodes of 20–30 % steal lasting tens of seconds slow down
/// whichever side of a comparison is running then.
struct Steal {
    ticks: u64,
    t0: Instant,
}

impl Steal {
    fn ticks() -> u64 {
        let s = std::fs::read_to_string("/proc/stat").unwrap();
        // cpu user nice system idle iowait irq softirq steal …
        s.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(8)
            .unwrap()
            .parse()
            .unwrap()
    }

    fn start() -> Steal {
        Steal {
            ticks: Self::ticks(),
            t0: Instant::now(),
        }
    }

    /// Percent of the machine's CPU time stolen since `start`.
    fn pct(&self) -> f64 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let stolen_s = (Self::ticks() - self.ticks) as f64 / 100.0; // USER_HZ
        stolen_s / (self.t0.elapsed().as_secs_f64() * cpus) * 100.0
    }
}

/// Below this steal (percent), a round counts as undisturbed.
const CLEAN_STEAL_PCT: f64 = 5.0;

/// Median of `x` over `y` taken over the rounds where both sides ran with
/// less than [`CLEAN_STEAL_PCT`] steal: (ratio, rounds used).
fn clean_ratio(x: &[(f64, f64)], y: &[(f64, f64)]) -> Option<(f64, usize)> {
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.1 < CLEAN_STEAL_PCT && b.1 < CLEAN_STEAL_PCT)
        .map(|(a, b)| (a.0, b.0))
        .unzip();
    (!xs.is_empty()).then(|| (median(&mut xs) / median(&mut ys), xs.len()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ------------------------------------------------------------- baseline

/// Every read the agent makes of a domain it knows nothing about, straight
/// through `virt` (and the project's ffi for the typed-parameter getters
/// the crate lacks): list, then per domain info, max vCPUs, memory stats,
/// XML (disks, metadata), the I/O limits of each disk and the blkio weight
/// (not `cpu_shares`: this driver has no such scheduler parameter).
/// Returns each domain's disk targets by UUID (what a steady cycle keeps).
fn baseline_full_read(c: &Connect) -> HashMap<String, Vec<String>> {
    let doms = c.list_all_domains(0).unwrap();
    let mut out = HashMap::with_capacity(doms.len());
    let mut sink = 0u64;
    for d in doms {
        let info = d.info().unwrap();
        sink += info.memory;
        let active = info.state.is(virt::domain::DomainState::Running)
            || info.state.is(virt::domain::DomainState::Paused);
        sink += u64::from(d.vcpus_flags(sys::VIR_DOMAIN_VCPU_MAXIMUM).unwrap());
        if active {
            sink += d.memory_stats(0).unwrap().len() as u64;
        }
        let x = d.xml_desc(0).unwrap();
        sink += u64::from(xml::metadata_pool(&x).is_some());
        let disks: Vec<String> = xml::disks(&x).into_iter().map(|d| d.target).collect();
        if active {
            for t in &disks {
                sink += ffi::get_block_iotune(&d, t, sys::VIR_DOMAIN_AFFECT_LIVE)
                    .unwrap()
                    .total_bytes_sec;
            }
        }
        sink += u64::from(
            ffi::get_blkio_weight(&d, sys::VIR_DOMAIN_AFFECT_CURRENT)
                .unwrap()
                .unwrap_or(0),
        );
        out.insert(d.uuid_string().unwrap(), disks);
    }
    std::hint::black_box(sink);
    out
}

/// The reads a steady cycle needs once the slow facts are known (what the
/// agent re-reads every cycle on this driver): list, then per domain info
/// and, when active, memory stats.
fn baseline_read(c: &Connect) -> Vec<Domain> {
    let doms = c.list_all_domains(0).unwrap();
    let mut sink = 0u64;
    for d in &doms {
        let info = d.info().unwrap();
        sink += info.memory + u64::from(info.nr_virt_cpu);
        let active = info.state.is(virt::domain::DomainState::Running)
            || info.state.is(virt::domain::DomainState::Paused);
        if active {
            sink += d.memory_stats(0).unwrap().len() as u64;
        }
    }
    std::hint::black_box(sink);
    doms
}

/// The baseline runs in a child process of its own: a minimal program that
/// uses `virt` with no libvirt event loop. (In this process the agent's
/// event loop runs, and a call made from another thread has to wake that
/// loop's thread: the baseline would pay for it, the agent does not.)
/// Commands on its stdin, one answer line each:
/// - `full` → `ms` (every read of the domains; remembers their disks);
/// - `read` → `ms cpu_ms` (a steady cycle's reads; the child's CPU time);
/// - `change` → `ms writes` (the reads, then the writes to BASE_C values);
/// - `rss` → `rss_kib anon_kib` (the child's `VmRSS` and `RssAnon`: the
///   memory a minimal libvirt client needs for the same work, the RSS floor).
struct Baseline {
    _child: KillOnDrop,
    stdin: std::process::ChildStdin,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Baseline {
    fn start(uri: &str) -> Baseline {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--bench")
            .env("SCALE_CHILD_URI", uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Baseline {
            _child: KillOnDrop(child),
            stdin,
            out,
        }
    }

    fn ask(&mut self, cmd: &str) -> Vec<f64> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "baseline child died on {cmd:?}");
        line.split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    }
}

/// The child's side of [`Baseline`].
fn baseline_child(uri: &str) {
    use std::io::{BufRead, Write};
    virtpool::adapters::libvirt::quiet_errors();
    let c = Connect::open(Some(uri)).unwrap();
    let mut disks = HashMap::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let t0 = Instant::now();
        let ms = |t0: Instant| t0.elapsed().as_secs_f64() * 1e3;
        let answer = match line.trim() {
            "full" => {
                disks = baseline_full_read(&c);
                format!("{}", ms(t0))
            }
            "read" => {
                let cpu0 = self_cpu_ticks();
                baseline_read(&c);
                format!("{} {}", ms(t0), (self_cpu_ticks() - cpu0) as f64 * 10.0)
            }
            "change" => {
                let cpu0 = self_cpu_ticks();
                let (writes, write_ms) = baseline_change(&c, &disks, BASE_C);
                let cpu_ms = (self_cpu_ticks() - cpu0) as f64 * 10.0;
                format!("{} {writes} {write_ms} {cpu_ms}", ms(t0))
            }
            "rss" => format!(
                "{} {}",
                proc_status_kib("self", "VmRSS:"),
                proc_status_kib("self", "RssAnon:")
            ),
            other => panic!("baseline child: unknown command {other:?}"),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{answer}").unwrap();
        out.flush().unwrap();
    }
}

/// The reads, then the writes of a cycle that changes every domain
/// (`disks`: the targets from an earlier full read). Returns the writes
/// and the milliseconds they took.
fn baseline_change(
    c: &Connect,
    disks: &HashMap<String, Vec<String>>,
    t: (u64, u64, u64, u64),
) -> (usize, f64) {
    let doms = baseline_read(c);
    let t0 = Instant::now();
    let tune = IoTune {
        total_bytes_sec: t.2 * MIB,
        total_bytes_sec_max: t.2 * MIB,
        total_iops_sec: t.3,
        total_iops_sec_max: t.3,
    };
    let mut writes = 0;
    // The pools' members (not the driver's own `test`).
    for d in doms.iter().filter(|d| d.name().unwrap().starts_with('p')) {
        d.set_vcpus_flags(t.0 as u32, sys::VIR_DOMAIN_AFFECT_LIVE)
            .unwrap();
        d.set_memory_flags(t.1 * 1024, sys::VIR_DOMAIN_MEM_LIVE)
            .unwrap();
        writes += 2;
        for t in &disks[&d.uuid_string().unwrap()] {
            ffi::set_block_iotune(d, t, &tune, sys::VIR_DOMAIN_AFFECT_LIVE).unwrap();
            writes += 1;
        }
    }
    (writes, t0.elapsed().as_secs_f64() * 1e3)
}

// ------------------------------------------------------------- in-process agent

struct CycleFigures {
    a: f64,
    b: f64,
    c_change: f64,
    c_read: f64,
    c_full: f64,
    /// Of (a) and (b): time spent in libvirt reads.
    a_observe: f64,
    /// Of (a): time spent enforcing (the writes); of c-change: the writes.
    a_enforce: f64,
    c_write: f64,
    b_observe: f64,
    /// CPU time (the baseline child, 10 ms ticks) of c-read: what the reads
    /// a steady cycle needs cost a minimal client, the idle floor.
    c_read_cpu: f64,
    actions_a: usize,
    /// The baseline child's RSS and anonymous memory (MiB) after its cycles.
    c_rss: f64,
    c_anon: f64,
}

fn in_process(n: usize, uri: &str, c2: &Connect, dir: &Path, reps: usize) -> CycleFigures {
    let mut base = Baseline::start(uri);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg_text = config_toml(n, uri, dir, "10s", "");
    let cfg = Config::parse(&cfg_text, Path::new("scale.toml")).unwrap();
    let mut runtime = RuntimeState::new();
    runtime.pools = runtime_pools(n, BUDGET_A);
    // With SCALE_EVENTS=1 (default) the adapter registers for events like
    // virtpoold does (libvirt's event loop then runs in this process).
    let mut lv = Libvirt::new(uri);
    let mut _events = None;
    if env_or("SCALE_EVENTS", 1) == 1 {
        let (tx, rx) = virtpool::adapters::libvirt::events::channel();
        lv = lv.with_events(tx);
        _events = Some(rx);
    }
    let hv = HvWorker::spawn(Box::new(lv)).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let opts = ReconcilerOptions {
        audit: AuditLog::open(&dir.join("state")).unwrap(),
        ..ReconcilerOptions::default()
    };
    let (mut m, handle) = Reconciler::with_options(hv, Host::new().unwrap(), cfg, runtime, opts);
    let set_budget = |t| {
        handle.runtime().lock().unwrap().pools = runtime_pools(n, t);
    };
    // The agent's jobs run on this process's libvirt event-loop thread,
    // which then cannot read `c2`'s socket: libvirtd's keepalive (5 probes,
    // 5 s apart) would close `c2` during a job longer than that (a full
    // cycle at 5,000 domains). A call on `c2` every 2 s answers the probes.
    let cycle = |m: &mut Reconciler| -> (f64, Arc<Report>) {
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut last = Instant::now();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if last.elapsed() >= Duration::from_secs(2) {
                        c2.lib_version().unwrap();
                        last = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let t0 = Instant::now();
            let st = rt.block_on(m.cycle_once());
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (ms, st)
        })
    };
    // Converge (and set balloon stats periods) first.
    let (_, st) = cycle(&mut m);
    assert!(st.libvirt.connected, "{:?}", st.libvirt);
    assert_eq!(st.domains.len(), n + 1, "N domains + the driver's `test`");
    let (_, st) = cycle(&mut m);
    assert_eq!(
        st.results.len(),
        0,
        "not converged: {:?}",
        st.results.first()
    );

    let (mut a, mut b, mut cc, mut cr, mut cf) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut a_obs, mut b_obs, mut cr_cpu) = (vec![], vec![], vec![]);
    let (mut a_enf, mut cw) = (vec![], vec![]);
    // CPU time of (a) (this process) over c-change's (the child's).
    let mut cpu_ratio = vec![];
    // (ms, steal %) per round, for the ratios over undisturbed rounds.
    let (mut a_st, mut b_st, mut cc_st, mut cr_st) = (vec![], vec![], vec![], vec![]);
    let mut actions_a = 0;
    for rep in 0..reps {
        // The cycle after a change reads the changed domains back in full.
        let (_, st) = cycle(&mut m);
        assert_eq!(st.results.len(), 0, "read-back cycle issued actions");

        cf.push(base.ask("full")[0]);
        let steal = Steal::start();
        let r = base.ask("read");
        cr_st.push((r[0], steal.pct()));
        cr.push(r[0]);
        cr_cpu.push(r[1]);

        let steal = Steal::start();
        let (ms, st) = cycle(&mut m);
        b_st.push((ms, steal.pct()));
        assert_eq!(st.results.len(), 0, "steady cycle issued actions");
        b.push(ms);
        b_obs.push(st.last_cycle.as_ref().unwrap().observe_ms);

        let steal = Steal::start();
        let r = base.ask("change");
        let c_steal = steal.pct();
        cc_st.push((r[0], c_steal));
        cc.push(r[0]);
        let writes = r[1] as usize;
        cw.push(r[2]);

        set_budget(if rep % 2 == 0 { BUDGET_B } else { BUDGET_A });
        let steal = Steal::start();
        let cpu0 = self_cpu_ticks();
        let (ms, st) = cycle(&mut m);
        let a_cpu = (self_cpu_ticks() - cpu0) as f64 * 10.0;
        let a_steal = steal.pct();
        cpu_ratio.push(a_cpu / r[3].max(1.0));
        a_st.push((ms, a_steal));
        a_obs.push(st.last_cycle.as_ref().unwrap().observe_ms);
        a_enf.push(st.last_cycle.as_ref().unwrap().enforce_ms);
        let failed = st.results.iter().filter(|r| !r.ok).count();
        assert_eq!(failed, 0, "{:?}", st.results.iter().find(|r| !r.ok));
        assert_eq!(
            st.results.len(),
            writes,
            "the agent's writes equal the baseline's"
        );
        actions_a = st.results.len();
        let c = st.last_cycle.as_ref().unwrap();
        eprintln!(
            "  round {rep}: (a) {ms:.0} ms, steal {a_steal:.0} %: reads {:.0}, plan {:.1}, writes {:.0} \
             ({:.3} ms each), CPU {a_cpu:.0} ms; c-change {:.0} ms, steal {c_steal:.0} %: writes {:.0} \
             ({:.3} ms each), CPU {:.0} ms; (b) {:.0} ms, steal {:.0} %; c-rd {:.0} ms, steal {:.0} %",
            c.observe_ms,
            c.plan_ms,
            c.enforce_ms,
            c.enforce_ms / writes.max(1) as f64,
            cc[cc.len() - 1],
            cw[cw.len() - 1],
            cw[cw.len() - 1] / writes.max(1) as f64,
            r[3],
            b_st[rep].0,
            b_st[rep].1,
            cr_st[rep].0,
            cr_st[rep].1
        );
        a.push(ms);
    }
    drop(m);
    drop(handle);
    let rss = base.ask("rss");
    let show = |r: Option<(f64, usize)>| {
        r.map_or("no round".into(), |(x, k)| {
            format!("{x:.3} ({k} of {reps} rounds)")
        })
    };
    eprintln!(
        "  rounds with under {CLEAN_STEAL_PCT} % steal on both sides: a/c {}, b/c-rd {}; \
         CPU time a/c (median of rounds): {:.3}",
        show(clean_ratio(&a_st, &cc_st)),
        show(clean_ratio(&b_st, &cr_st)),
        median(&mut cpu_ratio)
    );
    CycleFigures {
        a: median(&mut a),
        b: median(&mut b),
        c_change: median(&mut cc),
        c_read: median(&mut cr),
        c_full: median(&mut cf),
        a_observe: median(&mut a_obs),
        a_enforce: median(&mut a_enf),
        c_write: median(&mut cw),
        b_observe: median(&mut b_obs),
        c_read_cpu: median(&mut cr_cpu),
        actions_a,
        c_rss: rss[0] / 1024.0,
        c_anon: rss[1] / 1024.0,
    }
}

// ------------------------------------------------------------- real daemon

struct Agent {
    child: KillOnDrop,
    sock: PathBuf,
    dir: PathBuf,
}

/// The `Environment=` assignments of the systemd unit (`KEY=VALUE` words,
/// no quoting: the unit uses none).
fn unit_environment() -> Vec<(&'static str, &'static str)> {
    include_str!("../systemd/virtpoold.service")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.split_once('='))
        .collect()
}

impl Agent {
    fn start(dir: &Path, cfg: &str) -> Agent {
        let path = dir.join("virtpool.toml");
        std::fs::write(&path, cfg).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let log = std::fs::File::create(dir.join("virtpoold.log")).unwrap();
        // SCALE_AGENT_WRAPPER="heaptrack -o /tmp/ht" runs the agent under a
        // profiler (the RSS printed is then the wrapper's).
        let wrapper = std::env::var("SCALE_AGENT_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(words).arg(env!("CARGO_BIN_EXE_virtpoold"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_virtpoold")),
        };
        // The environment the unit gives the agent, as deployed.
        for (k, v) in unit_environment() {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            child: KillOnDrop(child),
            sock: dir.join("virtpool.sock"),
            dir: dir.to_path_buf(),
        }
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_virtpoolctl"))
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = self.ctl(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn wait_cycles(&self, n: u64, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                if s["cycle"].as_u64().unwrap_or(0) >= n {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "virtpoold did not reach cycle {n}; log:\n{}",
                std::fs::read_to_string(self.dir.join("virtpoold.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn proc_field(&self, key: &str) -> u64 {
        proc_status_kib(&self.child.id().to_string(), key)
    }

    fn rss_kib(&self) -> u64 {
        self.proc_field("VmRSS:")
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat; `rest` starts at field 3.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

fn live_vcpus(c: &Connect, dom: &str) -> u32 {
    c.lookup_domain_by_name(dom)
        .unwrap()
        .vcpus_flags(sys::VIR_DOMAIN_AFFECT_LIVE)
        .unwrap()
}

/// From `virtpoolctl allocate` returning to the change seen on `c2`, ms.
fn allocate_latency(agent: &Agent, c2: &Connect, dom: &str, want: u32, args: &[&str]) -> f64 {
    let out = agent.ctl(args);
    let t0 = Instant::now();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        if live_vcpus(c2, dom) == want {
            return t0.elapsed().as_secs_f64() * 1e3;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{dom} never reached {want} vCPUs"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct DaemonFigures {
    rss_mib: f64,
    /// Of which anonymous (heap, stacks); the rest is mapped files (the
    /// binary and shared libraries).
    anon_mib: f64,
    alloc_ms: f64,
    /// The same, asked while a full cycle observes (started by `reconcile`
    /// a third of a full cycle earlier): the full observation gives way.
    alloc_busy_ms: f64,
    /// From a domain's restart (create returning) to its vCPUs back at
    /// the pool's target, seen on a second connection (the lifecycle event
    /// triggers the reconcile).
    event_ms: f64,
    idle_cpu_pct: Option<f64>,
}

fn real_daemon(n: usize, uri: &str, c2: &Connect, dir: &Path, reps: usize) -> DaemonFigures {
    let cfg = config_toml(n, uri, dir, "10s", &pools_toml(n, BUDGET_A));
    let agent = Agent::start(dir, &cfg);
    agent.wait_cycles(1, Duration::from_secs(300));
    // Converged: a reconcile that changes nothing.
    let out = agent.ctl(&["reconcile", "--wait"]);
    assert!(out.status.success());
    let rss_mib = agent.rss_kib() as f64 / 1024.0;
    let anon_mib = agent.proc_field("RssAnon:") as f64 / 1024.0;

    let dom = name(0);
    // One round: allocate (timed), then back to the pool's share.
    let round = |before: &dyn Fn()| {
        before();
        let ms = allocate_latency(
            &agent,
            c2,
            &dom,
            4,
            &["allocate", "p0", &dom, "--vcpus", "4"],
        );
        allocate_latency(
            &agent,
            c2,
            &dom,
            BUDGET_A.0 as u32,
            &["release", "p0", &dom],
        );
        ms
    };
    let mut lat: Vec<f64> = (0..reps).map(|_| round(&|| {})).collect();
    // The same while a full cycle is observing: `reconcile` starts one,
    // the allocate comes a third of a full cycle later.
    let t = Instant::now();
    assert!(agent.ctl(&["reconcile", "--wait"]).status.success());
    let third = t.elapsed() / 3;
    let mut busy: Vec<f64> = (0..reps)
        .map(|_| {
            round(&|| {
                // Settled first: no cycle left running from the round before.
                assert!(agent.ctl(&["reconcile", "--wait"]).status.success());
                assert!(agent.ctl(&["reconcile"]).status.success());
                std::thread::sleep(third);
            })
        })
        .collect();
    // A restart brings the domain back at its persistent vCPU count
    // (BASE_C); the Started event makes the agent set the target again.
    // Settled first (no cycle left running from the rounds before), then
    // the same with a full cycle started a third of a cycle before the
    // restart: events arrive on the libvirt thread and are seen between
    // jobs, so they wait for a running full observation.
    let dom = name(1);
    let restart = |before: &dyn Fn()| -> f64 {
        before();
        let d = c2.lookup_domain_by_name(&dom).unwrap();
        d.destroy().unwrap();
        d.create().unwrap();
        let t0 = Instant::now();
        assert_eq!(live_vcpus(c2, &dom), BASE_C.0 as u32);
        loop {
            if live_vcpus(c2, &dom) == BUDGET_A.0 as u32 {
                return t0.elapsed().as_secs_f64() * 1e3;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{dom} not reconciled after its restart"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let settle = || assert!(agent.ctl(&["reconcile", "--wait"]).status.success());
    let mut ev: Vec<f64> = (0..reps).map(|_| restart(&settle)).collect();
    let mut ev_busy: Vec<f64> = (0..reps)
        .map(|_| {
            restart(&|| {
                settle();
                assert!(agent.ctl(&["reconcile"]).status.success());
                std::thread::sleep(third);
            })
        })
        .collect();
    eprintln!(
        "  event -> reconcile per round: {ev:.0?} ms, while a full cycle runs: {ev_busy:.0?} ms"
    );
    eprintln!(
        "  event -> reconcile while a full cycle runs: {:.1} ms (median)",
        median(&mut ev_busy)
    );
    let idle_secs: u64 = env_or("SCALE_IDLE_SECS", 60);
    let idle_cpu_pct = (n == 1000 && idle_secs > 0).then(|| {
        let tick = 100.0; // USER_HZ
                          // Start right after a cycle ends, so a window of k intervals holds
                          // k cycles (not k or k + 1 depending on where it falls).
        let cycle = agent
            .status()
            .map_or(0, |s| s["cycle"].as_u64().unwrap_or(0));
        agent.wait_cycles(cycle + 1, Duration::from_secs(60));
        let c0 = agent.cpu_ticks();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(idle_secs));
        let used = (agent.cpu_ticks() - c0) as f64 / tick;
        let pct = used / t0.elapsed().as_secs_f64() * 100.0;
        // What the window's cycles asked of libvirt (the status is read
        // after the window: its cost is not in it).
        // The window starts as cycle k ends and holds the 10 s intervals
        // of cycles k+1 … k+w (the last one may still be finishing).
        if let Some(st) = agent.status() {
            let intervals = (idle_secs / 10).max(1);
            let reads = st["last_cycle"]["libvirt_reads"].as_u64().unwrap_or(0);
            let writes = st["last_cycle"]["libvirt_writes"].as_u64().unwrap_or(0);
            let per_cycle = used * 1e3 / intervals as f64;
            eprintln!(
                "  idle: {:.0} ms of agent CPU per cycle ({intervals} intervals); a steady cycle made \
                 {reads} libvirt reads and {writes} writes: {:.0} µs of agent CPU per read",
                per_cycle,
                per_cycle * 1e3 / reads.max(1) as f64
            );
        }
        pct
    });
    DaemonFigures {
        rss_mib,
        anon_mib,
        alloc_ms: median(&mut lat),
        alloc_busy_ms: median(&mut busy),
        event_ms: median(&mut ev),
        idle_cpu_pct,
    }
}

/// RSS after warm-up, then after `cycles` more cycles driven through the API.
fn rss_growth(n: usize, uri: &str, dir: &Path, cycles: usize) -> (Vec<f64>, f64) {
    let cfg = config_toml(n, uri, dir, "10s", &pools_toml(n, BUDGET_A));
    let agent = Agent::start(dir, &cfg);
    agent.wait_cycles(1, Duration::from_secs(120));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = virtpool::cli::client::Client::new(&agent.sock);
    let t0 = Instant::now();
    let run = |k: usize| {
        rt.block_on(async {
            let mut conn = client.connect().await.unwrap();
            for _ in 0..k {
                let a = conn
                    .request(hyper::Method::POST, "/v1/reconcile?wait=true", None)
                    .await
                    .unwrap();
                assert!(a.status.is_success());
            }
        })
    };
    run(100);
    // RSS after the warm-up, then at each fifth of the cycles: a leak
    // climbs all along, allocator settling levels off.
    let mut rss = vec![agent.rss_kib() as f64 / 1024.0];
    let steps = 5;
    for k in 0..steps {
        run(cycles / steps + usize::from(k < cycles % steps));
        rss.push(agent.rss_kib() as f64 / 1024.0);
    }
    let per_cycle = t0.elapsed().as_secs_f64() * 1e3 / (cycles + 100) as f64;
    (rss, per_cycle)
}

// ------------------------------------------------------------- main

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` builds this
    // and runs it with no such flag: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Ok(uri) = std::env::var("SCALE_CHILD_URI") {
        baseline_child(&uri);
        return;
    }
    if !Path::new(LIBVIRTD).exists() {
        eprintln!("skipped: {LIBVIRTD} not installed");
        return;
    }
    virtpool::adapters::libvirt::quiet_errors();
    if env_or("SCALE_EVENTS", 1) == 1 {
        // Before any connection is opened.
        virtpool::adapters::libvirt::events::start_event_loop().unwrap();
    }
    // The agent logs every action at info, like virtpoold: format them
    // (into a sink) so the cycle pays that cost.
    tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .init();
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let reps: usize = env_or("SCALE_REPS", 5);
    let growth_cycles: usize = env_or("SCALE_GROWTH_CYCLES", 1000);
    let growth_size: usize = env_or("SCALE_GROWTH_SIZE", 100);
    println!("virtpool full-cycle benchmark; load at start: {}", load());
    let env: Vec<String> = unit_environment()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "  the agent runs with the unit's environment: {}",
        if env.is_empty() {
            "(none)".to_string()
        } else {
            env.join(" ")
        }
    );
    println!(
        "{:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} | {:>6} {:>6} | {:>7} {:>8} {:>9} {:>9} {:>8} | load",
        "doms",
        "a ms",
        "b ms",
        "c ms",
        "c-rd ms",
        "c-full ms",
        "a/c",
        "b/c",
        "RSS MiB",
        "anon MiB",
        "alloc ms",
        "event ms",
        "idle %"
    );
    for &n in &sizes {
        let base = tempfile::Builder::new()
            .prefix("vp-scale-")
            .tempdir_in("/tmp")
            .unwrap();
        let lv_dir = tempfile::Builder::new()
            .prefix("vp-scale-lv-")
            .tempdir_in("/tmp")
            .unwrap();
        let daemon = Libvirtd::start(lv_dir.path()).expect("libvirtd is installed");
        let uri = daemon.uri();
        let c2 = Connect::open(Some(&uri)).unwrap();
        let t0 = Instant::now();
        for i in 0..n {
            let d = c2.define_domain_xml(&domain_xml(i)).unwrap();
            d.create().unwrap();
        }
        eprintln!("{n} domains defined and started in {:?}", t0.elapsed());
        let dir_a = base.path().join("inproc");
        std::fs::create_dir_all(&dir_a).unwrap();
        let load_a = load();
        let f = in_process(n, &uri, &c2, &dir_a, reps);
        eprintln!(
            "  in-process: {} actions per change cycle; reads took {:.1} ms of (a), {:.1} ms of (b); \
             writes {:.1} ms of (a), {:.1} ms of c-change; c-read used {:.0} ms CPU (= {:.2} % of a core every 10 s: the idle floor)",
            f.actions_a,
            f.a_observe,
            f.b_observe,
            f.a_enforce,
            f.c_write,
            f.c_read_cpu,
            f.c_read_cpu / 100.0
        );
        eprintln!(
            "  baseline client after its cycles: RSS {:.1} MiB (anon {:.1}): the RSS floor of a \
             libvirt client doing the same calls",
            f.c_rss, f.c_anon
        );
        // The daemon's domains are at the baseline's values; the real agent
        // converges them first.
        let dir_d = base.path().join("daemon");
        std::fs::create_dir_all(&dir_d).unwrap();
        let d = real_daemon(n, &uri, &c2, &dir_d, reps.min(3));
        println!(
            "{:>6} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>6.3} {:>6.3} | {:>7.1} {:>8.1} {:>9.1} {:>9.1} {:>8} | {}",
            n,
            f.a,
            f.b,
            f.c_change,
            f.c_read,
            f.c_full,
            f.a / f.c_change,
            f.b / f.c_read,
            d.rss_mib,
            d.anon_mib,
            d.alloc_ms,
            d.event_ms,
            d.idle_cpu_pct.map_or("-".into(), |p| format!("{p:.2}")),
            load_a,
        );
        eprintln!(
            "  allocate -> visible while a full cycle observes: {:.1} ms (median)",
            d.alloc_busy_ms
        );
        if n == growth_size && growth_cycles > 0 {
            let dir_g = base.path().join("growth");
            std::fs::create_dir_all(&dir_g).unwrap();
            let (rss, per) = rss_growth(n, &uri, &dir_g, growth_cycles);
            let first = rss[0];
            let last = rss[rss.len() - 1];
            let path: Vec<String> = rss.iter().map(|r| format!("{r:.1}")).collect();
            println!(
                "       RSS over {growth_cycles} cycles at {n} domains: {first:.1} MiB -> {last:.1} MiB ({:+.1} MiB; each fifth: {}; {per:.1} ms per reconcile) | {}",
                last - first,
                path.join(" -> "),
                load()
            );
        }
        drop(c2);
        drop(daemon);
    }
}
