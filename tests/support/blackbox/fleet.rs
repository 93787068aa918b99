//! Fixture domains and fleets for the black-box tests, the agent's config,
//! and the safety invariant checked from the checker's connection.

use super::checker::Host2;
use super::{GIB, MIB, POOL_NS};
use std::path::{Path, PathBuf};
use virtpool::core::config::Config;
use virtpool::core::membership::Membership;
use virtpool::core::model::Resource;

// ---------------------------------------------------------------- fixtures

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    Running,
    Paused,
    Off,
}

/// One fixture domain (`<domain type='test'>` for `virDomainDefineXML`).
#[derive(Debug, Clone)]
pub struct DomSpec {
    pub name: String,
    pub uuid: String,
    pub vcpus: u64,
    pub vcpus_max: u64,
    pub mem_mib: u64,
    pub max_mib: u64,
    pub meta_pool: Option<String>,
    pub state: Init,
    pub disks: usize,
}

/// A deterministic UUID from a seed and an index.
pub fn uuid(seed: u64, i: u64) -> String {
    let a = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        i & 0xfff,
        seed & 0xfff,
        (a.wrapping_mul(31) ^ i) & 0xffff_ffff_ffff
    )
}

impl DomSpec {
    pub fn new(
        name: &str,
        uuid: String,
        vcpus: u64,
        vcpus_max: u64,
        mem_mib: u64,
        max_mib: u64,
    ) -> DomSpec {
        DomSpec {
            name: name.into(),
            uuid,
            vcpus,
            vcpus_max,
            mem_mib,
            max_mib,
            meta_pool: None,
            state: Init::Running,
            disks: 1,
        }
    }

    pub fn xml(&self) -> String {
        let meta = self.meta_pool.as_ref().map_or(String::new(), |p| {
            format!("<metadata><vp:pool xmlns:vp='{POOL_NS}'>{p}</vp:pool></metadata>")
        });
        let mut disks = String::new();
        for k in 0..self.disks {
            let dev = format!("vd{}", (b'a' + k as u8) as char);
            disks.push_str(&format!(
                "<disk type='file' device='disk'><source file='/var/lib/virtpool-bb/{}-{dev}.img'/><target dev='{dev}' bus='virtio'/></disk>",
                self.name
            ));
        }
        format!(
            "<domain type='test'><name>{}</name><uuid>{}</uuid>\
             <memory unit='MiB'>{}</memory><currentMemory unit='MiB'>{}</currentMemory>\
             <vcpu placement='static' current='{}'>{}</vcpu>\
             <os><type arch='x86_64'>hvm</type></os>{meta}\
             <devices>{disks}<memballoon model='virtio'/></devices></domain>",
            self.name, self.uuid, self.max_mib, self.mem_mib, self.vcpus, self.vcpus_max
        )
    }
}

/// The pools of the 50-domain fleet (see [`fleet50`]). Targets follow
/// SPEC §2: each member gets its floor, the rest of the budget is shared by
/// shares, capped. Memory `min`s are ≥ 60 % of the domains' max so they
/// dominate the guest-used floor (the test driver reports used = half the
/// balloon), which makes the fixed point exact and hand-computable.
pub const FLEET_POOLS: &str = r#"
# web: 15 running web-NN (max 4 vCPUs / 4 GiB): 1 + 15/15 = 2 vCPUs,
# 2.5 GiB + 7.5 GiB/15 = 3 GiB each.
[pools.web]
match = "web-*"
vcpus = { budget = 30 }
memory = { budget = "45GiB", min = "2560MiB" }
# One disk each: 20 MiB/s and 200 IOPS each.
disk_bytes_sec = { budget = "300MiB" }
disk_iops_sec = { budget = 3000 }

# db: 5 listed domains (max 8 / 8 GiB; db-1 can hot-plug only 4 vCPUs);
# db-1 weighs 3. vCPUs: db-1 is capped at its 4, the others 12 / 4 = 3;
# memory 5 × 5 GiB + 7 GiB: db-1 reaches its 8 GiB max, the others 6 GiB.
# (These numbers are the same whether a floor is a bonus on top of the
# share or only a lower bound of it — SPEC §2 reads both ways.)
[pools.db]
domains = ["db-1", "db-2", "db-3", "db-4", "db-5"]
vcpus = { budget = 16 }
memory = { budget = "32GiB", min = "5GiB" }

[pools.db.members.db-1]
vcpus = { shares = 3000 }
memory = { shares = 3000 }

# batch: 10 domains by metadata (names job-NN, max 6 / 2 GiB), max 4 vCPUs:
# 2 vCPUs, 1280 MiB + 256 MiB = 1536 MiB each.
[pools.batch]
vcpus = { budget = 20, max = 4 }
memory = { budget = "15GiB", min = "1280MiB" }

# ci: 12 ci-NN, 2 shut off (hold nothing), ci-10 paused (not changed,
# counted at what it holds: 1 vCPU, 2 GiB);
# ci-01 can only have 1 vCPU and 1 GiB: it gets those, the 9 others
# 2 vCPUs and 2.5 GiB + 0.5 GiB = 3 GiB.
[pools.ci]
match = "ci-*"
vcpus = { budget = 19 }
memory = { budget = "28GiB", min = "2560MiB" }
"#;

/// One pool of the domains named `{prefix}-*`: a vCPU budget, a memory
/// budget in GiB and a 5 GiB memory floor — the config of the smaller
/// black-box scenarios, whose domains have 8 vCPUs / 8 GiB at most.
pub fn prefix_pool(prefix: &str, vcpus: u64, memory_gib: u64) -> String {
    format!(
        r#"
[pools.{prefix}]
match = "{prefix}-*"
vcpus = {{ budget = {vcpus} }}
memory = {{ budget = "{memory_gib}GiB", min = "5GiB" }}
"#
    )
}

/// 50 domains: 15 web, 5 db, 10 batch (metadata), 12 ci (2 off, 1 paused),
/// 8 unmanaged (dev-NN). Starting values are off target, some above, some
/// below.
pub fn fleet50(seed: u64) -> Vec<DomSpec> {
    let mut v = Vec::new();
    let mut i = 0u64;
    let mut next =
        |v: &mut Vec<DomSpec>, name: String, cur: u64, max: u64, mem: u64, maxmem: u64| {
            i += 1;
            v.push(DomSpec::new(&name, uuid(seed, i), cur, max, mem, maxmem));
        };
    for k in 1..=15u64 {
        next(
            &mut v,
            format!("web-{k:02}"),
            1 + k % 4,
            4,
            1024 + 256 * (k % 8),
            4096,
        );
    }
    for k in 1..=5u64 {
        next(
            &mut v,
            format!("db-{k}"),
            1 + k % 3,
            if k == 1 { 4 } else { 8 },
            4096 + 1024 * (k % 4),
            8192,
        );
    }
    for k in 1..=10u64 {
        next(
            &mut v,
            format!("job-{k:02}"),
            1 + k % 3,
            6,
            1024 + 128 * (k % 5),
            2048,
        );
        v.last_mut().unwrap().meta_pool = Some("batch".into());
    }
    for k in 1..=12u64 {
        let (max, maxmem) = if k == 1 { (1, 1024) } else { (4, 4096) };
        next(
            &mut v,
            format!("ci-{k:02}"),
            1,
            max,
            maxmem.min(2048 + 512 * (k % 5)),
            maxmem,
        );
        let d = v.last_mut().unwrap();
        d.state = match k {
            11 | 12 => Init::Off,
            10 => Init::Paused,
            _ => Init::Running,
        };
    }
    for k in 1..=8u64 {
        next(
            &mut v,
            format!("dev-{k:02}"),
            1 + k % 2,
            4,
            1536 + 64 * k,
            4096,
        );
    }
    assert_eq!(v.len(), 50);
    v
}

/// Expected (vCPUs, memory bytes) of an active fleet domain once the agent
/// converged; `None` for unmanaged and shut-off domains.
pub fn fleet50_expected(name: &str) -> Option<(u64, u64)> {
    if name.starts_with("web-") {
        Some((2, 3 * GIB))
    } else if name == "db-1" {
        Some((4, 8 * GIB))
    } else if name.starts_with("db-") {
        Some((3, 6 * GIB))
    } else if name.starts_with("job-") {
        Some((2, 1536 * MIB))
    } else if name == "ci-01" {
        Some((1, GIB))
    } else if name == "ci-11" || name == "ci-12" {
        None
    } else if name == "ci-10" {
        // Paused: not changed until it runs (it holds its 1 vCPU, 2 GiB).
        Some((1, 2 * GIB))
    } else if name.starts_with("ci-") {
        Some((2, 3 * GIB))
    } else {
        None
    }
}

// ---------------------------------------------------------------- config

/// A config for the black-box agent: test driver through `libvirtd`, API
/// socket and state in `dir`, a simulated 64-CPU / 128 GiB host.
pub fn config_text(dir: &Path, uri: &str, interval: &str, pools: &str) -> String {
    format!(
        r#"[agent]
libvirt_uri = "{uri}"
interval = "{interval}"
state_dir = "{state}"
log_level = "info"

[api]
socket = "{sock}"
group = "root"

[host]
cpus = 64
memory = "128GiB"
disk_bytes_sec = "2GiB"
disk_iops_sec = 40000

[memory]
min_change = "16MiB"
max_shrink = "100%"
# The simulated host must not feel this machine's memory pressure.
pressure_threshold = "1MiB"

[vcpus]
cooldown = "0s"
{pools}"#,
        state = dir.join("state").display(),
        sock = dir.join("virtpool.sock").display(),
    )
}

/// A config in `dir` ([`config_text`], written by [`write_config`]) whose
/// libvirt socket does not exist: for what the agent does before it
/// connects, or with libvirt reported down.
pub fn config_without_libvirt(dir: &Path, pools: &str) -> PathBuf {
    let uri = format!(
        "test+unix:///default?socket={}",
        dir.join("no-such-sock").display()
    );
    let (cfg, _) = write_config(dir, &config_text(dir, &uri, "1s", pools));
    cfg
}

/// Writes `text` to `dir/virtpool.toml` and parses it (the test's copy).
pub fn write_config(dir: &Path, text: &str) -> (PathBuf, Config) {
    let path = dir.join("virtpool.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = Config::parse(text, &path).unwrap();
    (path, cfg)
}

// ---------------------------------------------------------------- safety

/// Invariant 9, from the checker's connection: per pool, Σ live vCPUs and
/// memory of its active members ≤ budget; every active member at or above
/// its floors (configured `min`, ≥ 1 vCPU, memory ≥ guest used + margin).
/// Returns the number of domains checked.
pub fn check_safety(h: &Host2, cfg: &Config) -> usize {
    let cap = virtpool::core::model::HostCapacity {
        cpus: cfg.host.cpus.unwrap_or(1),
        memory_total: cfg.host.memory.unwrap_or(GIB),
        memory_available: cfg.host.memory.unwrap_or(GIB),
    };
    let alloc = cfg.host.allocatable(&cap);
    let membership = Membership::new(&cfg.pools);
    let mut sums: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    // Per pool: Σ bytes/s, Σ IOPS over its members' disks; `None` once a
    // disk is unlimited (0: the agent does not manage it yet).
    let mut io: std::collections::BTreeMap<String, (Option<u64>, Option<u64>)> = Default::default();
    let mut checked = 0;
    for d in h.all() {
        if !d.state.is_active() {
            continue;
        }
        let obs = d.as_obs();
        let Some((pool, _)) = membership.pool_of(&obs) else {
            continue;
        };
        let p = &cfg.pools[pool];
        checked += 1;
        if p.resources.disk_bytes_sec.is_some() || p.resources.disk_iops_sec.is_some() {
            let e = io.entry(pool.to_string()).or_insert((Some(0), Some(0)));
            for disk in h.disks(&d.name) {
                let t = h.iotune(&d.name, &disk);
                let add = |acc: Option<u64>, v: u64| acc.filter(|_| v > 0).map(|a| a + v);
                *e = (add(e.0, t.total_bytes_sec), add(e.1, t.total_iops_sec));
            }
        }
        let s = sums.entry(pool.to_string()).or_default();
        s.0 += d.vcpus;
        s.1 += d.memory;
        assert!(d.vcpus >= 1, "{}: 0 vCPUs", d.name);
        // A paused domain is not changed until it runs: it keeps what it
        // had, below its floors or not (it counts in the sums above).
        let paused = d.state == virtpool::core::model::DomainState::Paused;
        // A min above the domain's hardware max is clamped to it (SPEC §1).
        let min_of = |r: Resource, hw_max: u64| {
            p.member_limits(&d.name, &d.uuid, r)
                .min
                .map(|m| m.min(hw_max))
        };
        if p.resources.vcpus.is_some() && !paused {
            let min = min_of(Resource::Vcpus, d.vcpus_max);
            assert!(
                d.vcpus >= min.unwrap_or(1),
                "{}: {} vCPUs below min {min:?}",
                d.name,
                d.vcpus
            );
        }
        if p.resources.memory.is_some() && !paused {
            let min = min_of(Resource::Memory, d.memory_max);
            assert!(
                d.memory >= min.unwrap_or(0),
                "{}: balloon {} MiB below min {:?}",
                d.name,
                d.memory / MIB,
                min.map(|m| m / MIB)
            );
            if let Some(used) = d.used {
                let margin = cfg.tuning.guest_free_min.resolve(used);
                assert!(
                    d.memory >= used + margin,
                    "{}: balloon {} MiB below guest used {} MiB + margin {} MiB",
                    d.name,
                    d.memory / MIB,
                    used / MIB,
                    margin / MIB
                );
            }
        }
    }
    for (pool, (bytes, iops)) in &io {
        let b = Config::pool_budget(&cfg.pools[pool], &alloc);
        if let (Some(sum), Some(budget)) = (bytes, b.disk_bytes_sec) {
            assert!(
                *sum <= budget,
                "pool {pool}: {sum} B/s of disk limits > budget {budget}"
            );
        }
        if let (Some(sum), Some(budget)) = (iops, b.disk_iops_sec) {
            assert!(
                *sum <= budget,
                "pool {pool}: {sum} IOPS of disk limits > budget {budget}"
            );
        }
    }
    for (pool, (vcpus, mem)) in &sums {
        let b = Config::pool_budget(&cfg.pools[pool], &alloc);
        if let Some(bv) = b.vcpus {
            assert!(
                *vcpus <= bv,
                "pool {pool}: {vcpus} live vCPUs > budget {bv}"
            );
        }
        if let Some(bm) = b.memory {
            assert!(
                *mem <= bm,
                "pool {pool}: {} MiB live memory > budget {} MiB",
                mem / MIB,
                bm / MIB
            );
        }
    }
    checked
}
