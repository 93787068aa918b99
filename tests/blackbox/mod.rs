//! Black-box harness: a private `libvirtd` hosting the test driver, the real
//! `virtpoold` binary on a temp socket, and a second libvirt connection that
//! checks what the host really has.
//!
//! libvirtd: when we are root (as here and in CI) it runs as `nobody` with
//! its own `XDG_RUNTIME_DIR`/`HOME` in a per-test temp dir (a session
//! daemon: it never touches `/run/libvirt` or the system's sockets), so
//! tests can run in parallel. Not root: it runs as ourselves the same way.
//! The socket is `DIR/lv/libvirt/libvirt-sock`, the URI
//! `test+unix:///default?socket=...`. The `default` test node is shared by
//! every client while at least one connection stays open, so the checker
//! keeps one open for the whole test.
//!
//! If libvirtd cannot start, tests skip with a loud message — unless `CI`
//! is set, then they fail.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::Domain;
use virtpool::core::config::Config;
use virtpool::core::membership::Membership;
use virtpool::core::model::{DomainObs, DomainState, Resource};

pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
pub const POOL_NS: &str = "https://virtpool.dev/xmlns/pool/1";
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Whether we run in CI (then a missing libvirtd is a failure, not a skip).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Skips (loudly) outside CI, fails in CI.
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("black-box test cannot run in CI: {why}");
    }
    eprintln!(
        "\n*** SKIPPED black-box test: {why} ***\n*** (set CI=1 to make this a failure) ***\n"
    );
}

/// Polls `f` every 50 ms until it returns `Some`, or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh temp dir for one test, world-traversable (libvirtd runs as
/// `nobody` inside it).
pub fn test_dir(tag: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    // As root, libvirtd runs as `nobody`: use /tmp (1777 on Debian), not a
    // $TMPDIR whose parents `nobody` may not be able to traverse.
    let prefix = format!("vpbb-{tag}-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    let d = if is_root() {
        b.tempdir_in("/tmp")
    } else {
        b.tempdir()
    }
    .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ------------------------------------------------------------------ libvirtd

/// A private libvirtd, killed on drop.
pub struct Libvirtd {
    dir: PathBuf,
    child: Option<Child>,
    pub sock: PathBuf,
    pub starts: u32,
}

impl Libvirtd {
    /// Starts a libvirtd in `base/lv`. `None` (after a loud message) when it
    /// cannot run here and we are not in CI.
    pub fn start(base: &Path) -> Option<Libvirtd> {
        if !Path::new(LIBVIRTD).exists() {
            skip_or_fail(&format!(
                "{LIBVIRTD} is not installed (scripts/setup.sh installs libvirt-daemon)"
            ));
            return None;
        }
        let dir = base.join("lv");
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        if is_root() {
            let nobody = nix::unistd::User::from_name("nobody").ok().flatten();
            let Some(nobody) = nobody else {
                skip_or_fail("no user `nobody` to run libvirtd as");
                return None;
            };
            for p in [dir.clone(), dir.join("home"), dir.join("run")] {
                std::os::unix::fs::chown(&p, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
                    .unwrap();
            }
        }
        let sock = dir.join("run/libvirt/libvirt-sock");
        let mut d = Libvirtd {
            dir,
            child: None,
            sock,
            starts: 0,
        };
        if let Err(e) = d.spawn() {
            skip_or_fail(&format!("libvirtd did not start: {e}"));
            return None;
        }
        Some(d)
    }

    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none());
        let _ = std::fs::remove_file(&self.sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("libvirtd.log"))
            .map_err(|e| e.to_string())?;
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--pdeathsig=KILL",
                LIBVIRTD,
            ]);
            c
        } else {
            Command::new(LIBVIRTD)
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_CONFIG_HOME", self.dir.join("home/.config"))
            .env("XDG_CACHE_HOME", self.dir.join("home/.cache"))
            .env("LIBVIRT_LOG_OUTPUTS", "1:stderr")
            .env("LIBVIRT_DEFAULT_URI", "test:///default")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run libvirtd: {e}"))?;
        let uri = self.uri();
        let up = poll(Duration::from_secs(15), || {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(Err(format!("libvirtd exited: {st}; log: {}", self.log())));
            }
            if !self.sock.exists() {
                return None;
            }
            match Connect::open(Some(&uri)) {
                Ok(c) => {
                    drop(c);
                    Some(Ok(()))
                }
                Err(_) => None,
            }
        });
        match up {
            Some(Ok(())) => {
                self.child = Some(child);
                self.starts += 1;
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "socket {} not answering after 15 s; log: {}",
                    self.sock.display(),
                    self.log()
                ))
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
    }

    pub fn uri(&self) -> String {
        format!("test+unix:///default?socket={}", self.sock.display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after [`Libvirtd::kill9`] (fresh test-driver state).
    pub fn restart(&mut self) {
        self.spawn().unwrap();
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.kill9();
    }
}

// --------------------------------------------------------- second connection

/// What the host really has for one domain, read from the checker's own
/// connection (virt crate calls, not the agent's code).
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    pub vcpus: u64,
    pub vcpus_max: u64,
    /// Bytes.
    pub memory: u64,
    pub memory_max: u64,
    /// Guest used memory from the balloon stats (available − usable), bytes.
    pub used: Option<u64>,
    pub metadata_pool: Option<String>,
}

impl Live {
    /// A minimal observation for membership.
    pub fn as_obs(&self) -> DomainObs {
        DomainObs {
            name: self.name.as_str().into(),
            uuid: self.uuid.as_str().into(),
            id: None,
            state: self.state,
            vcpus: self.vcpus,
            vcpus_max: self.vcpus_max,
            memory: self.memory,
            memory_max: self.memory_max,
            balloon: None,
            disks: std::sync::Arc::from([]),
            metadata_pool: self.metadata_pool.clone(),
            balloon_device: true,
            cpu_shares: None,
            blkio_weight: None,
            active_secs: None,
        }
    }
}

/// The checker's connection to the same libvirtd.
pub struct Host2 {
    pub uri: String,
    conn: Option<Connect>,
}

fn map_state(d: &Domain) -> DomainState {
    use virt::domain::DomainState as S;
    let (s, _) = d.state().unwrap();
    if s.is(S::Running) {
        DomainState::Running
    } else if s.is(S::Paused) {
        DomainState::Paused
    } else if s.is(S::Shutoff) {
        DomainState::Shutoff
    } else {
        DomainState::Other
    }
}

impl Host2 {
    pub fn open(uri: &str) -> Host2 {
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).unwrap();
        Host2 {
            uri: uri.to_string(),
            conn: Some(conn),
        }
    }

    pub fn conn(&self) -> &Connect {
        self.conn.as_ref().unwrap()
    }

    /// After the daemon died: forget the dead connection (leaked: closing a
    /// dead remote connection must not be able to panic a test) and open a
    /// new one.
    pub fn reopen(&mut self) {
        if let Some(c) = self.conn.take() {
            std::mem::forget(c);
        }
        self.conn = Some(Connect::open(Some(&self.uri)).unwrap());
    }

    pub fn define(&self, xml: &str) {
        self.conn()
            .define_domain_xml(xml)
            .unwrap_or_else(|e| panic!("define: {e}\n{xml}"));
    }

    pub fn dom(&self, name: &str) -> Domain {
        self.conn()
            .lookup_domain_by_name(name)
            .unwrap_or_else(|e| panic!("lookup {name}: {e}"))
    }

    pub fn start(&self, name: &str) {
        self.dom(name).create().unwrap();
    }
    pub fn suspend(&self, name: &str) {
        self.dom(name).suspend().unwrap();
    }
    pub fn resume(&self, name: &str) {
        self.dom(name).resume().unwrap();
    }
    pub fn destroy(&self, name: &str) {
        self.dom(name).destroy().unwrap();
    }
    pub fn undefine(&self, name: &str) {
        self.dom(name).undefine().unwrap();
    }

    /// Sets live vCPUs and memory behind the agent's back.
    pub fn set_live(&self, name: &str, vcpus: u64, memory: u64) {
        let d = self.dom(name);
        d.set_vcpus_flags(vcpus as u32, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
            .unwrap();
        d.set_memory_flags(memory / 1024, virt::sys::VIR_DOMAIN_MEM_LIVE)
            .unwrap();
    }

    fn read(d: &Domain) -> Live {
        let name = d.name().unwrap();
        let uuid = d.uuid_string().unwrap();
        let state = map_state(d);
        let info = d.info().unwrap();
        let active = state.is_active();
        let vcpus = if active {
            u64::from(d.vcpus_flags(virt::sys::VIR_DOMAIN_AFFECT_LIVE).unwrap())
        } else {
            0
        };
        let vcpus_max = u64::from(d.vcpus_flags(virt::sys::VIR_DOMAIN_VCPU_MAXIMUM).unwrap());
        let used = if active {
            let st = d.memory_stats(0).unwrap();
            let get = |t| st.iter().find(|s| s.tag == t).map(|s| s.val * 1024);
            match (
                get(virt::sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE),
                get(virt::sys::VIR_DOMAIN_MEMORY_STAT_USABLE),
            ) {
                (Some(a), Some(u)) => Some(a.saturating_sub(u)),
                _ => None,
            }
        } else {
            None
        };
        let metadata_pool = d
            .metadata(
                virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(POOL_NS),
                0,
            )
            .ok()
            .and_then(|x| {
                let s = x.find('>')? + 1;
                let e = x.rfind("</")?;
                Some(x[s..e].trim().to_string())
            });
        Live {
            name,
            uuid,
            state,
            vcpus,
            vcpus_max,
            memory: info.memory * 1024,
            memory_max: info.max_mem * 1024,
            used,
            metadata_pool,
        }
    }

    /// Target names of a domain's writable `device='disk'` disks, from its XML.
    pub fn disks(&self, name: &str) -> Vec<String> {
        let xml = self.dom(name).xml_desc(0).unwrap();
        xml.split("<disk ")
            .skip(1)
            .filter(|d| d.contains("device='disk'") || d.contains("device=\"disk\""))
            .filter(|d| !d[..d.find("</disk>").unwrap_or(d.len())].contains("<readonly"))
            .filter_map(|d| {
                let i = d.find("<target dev=")? + "<target dev=".len() + 1;
                let j = d[i..].find(['\'', '"'])?;
                Some(d[i..i + j].to_string())
            })
            .collect()
    }

    /// Live block I/O limits of one disk (own connection; `virDomainGetBlockIoTune`).
    pub fn iotune(&self, name: &str, disk: &str) -> virtpool::core::model::IoTune {
        virtpool::adapters::libvirt::ffi::get_block_iotune(&self.dom(name), disk, 0)
            .unwrap_or_else(|e| panic!("{name} {disk}: {e}"))
    }

    pub fn live(&self, name: &str) -> Option<Live> {
        self.conn()
            .lookup_domain_by_name(name)
            .ok()
            .map(|d| Self::read(&d))
    }

    pub fn get(&self, name: &str) -> Live {
        self.live(name)
            .unwrap_or_else(|| panic!("no domain {name}"))
    }

    /// Every domain, sorted by name.
    pub fn all(&self) -> Vec<Live> {
        let mut v: Vec<Live> = self
            .conn()
            .list_all_domains(0)
            .unwrap()
            .iter()
            .map(Self::read)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Defines every fixture domain and brings it to its initial state.
    pub fn define_fleet(&self, fleet: &[DomSpec]) {
        for d in fleet {
            self.define(&d.xml());
            match d.state {
                Init::Running => self.start(&d.name),
                Init::Paused => {
                    self.start(&d.name);
                    self.suspend(&d.name);
                }
                Init::Off => {}
            }
        }
    }
}

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

# ci: 12 ci-NN, 2 shut off (hold nothing), ci-10 paused (holds its share);
# ci-01 can only have 1 vCPU and 1 GiB: it gets those, the 9 others
# 2 vCPUs and 2.5 GiB + 0.5 GiB = 3 GiB.
[pools.ci]
match = "ci-*"
vcpus = { budget = 19 }
memory = { budget = "28GiB", min = "2560MiB" }
"#;

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
        if p.resources.vcpus.is_some() {
            // A min above the domain's hardware max is clamped to it (SPEC §1).
            let min = p
                .member_limits(&d.name, &d.uuid, Resource::Vcpus)
                .min
                .map(|m| m.min(d.vcpus_max));
            assert!(
                d.vcpus >= min.unwrap_or(1),
                "{}: {} vCPUs below min {min:?}",
                d.name,
                d.vcpus
            );
        }
        if p.resources.memory.is_some() {
            let min = p
                .member_limits(&d.name, &d.uuid, Resource::Memory)
                .min
                .map(|m| m.min(d.memory_max));
            assert!(
                d.memory >= min.unwrap_or(0),
                "{}: balloon {} MiB below min {:?}",
                d.name,
                d.memory / MIB,
                min.map(|m| m / MIB)
            );
            if let Some(used) = d.used {
                let margin = cfg.tuning.guest_free_min.resolve(d.memory_max);
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

// ---------------------------------------------------------------- virtpoold

/// A running `virtpoold`, SIGKILLed on drop.
pub struct Agent {
    child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub started: Instant,
}

pub fn virtpoold() -> &'static str {
    env!("CARGO_BIN_EXE_virtpoold")
}

pub fn virtpoolctl() -> &'static str {
    env!("CARGO_BIN_EXE_virtpoolctl")
}

impl Agent {
    /// Starts `virtpoold --config CONFIG` (log in `dir/virtpoold.N.log`).
    pub fn start(dir: &Path, config: &Path) -> Agent {
        Self::start_args(dir, config, &[])
    }

    pub fn start_args(dir: &Path, config: &Path, args: &[&str]) -> Agent {
        let n = std::fs::read_dir(dir)
            .map(|r| r.filter_map(Result::ok).count())
            .unwrap_or(0);
        let log = dir.join(format!("virtpoold.{n}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(virtpoold())
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            config: config.to_owned(),
            log,
            socket: dir.join("virtpool.sock"),
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (reaps it if not).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics with the log when the agent is gone.
    pub fn assert_alive(&mut self) {
        assert!(self.alive(), "virtpoold died; log:\n{}", self.log_text());
    }

    /// Waits until the log contains `needle` at least `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        poll(timeout, || {
            (self.log_text().matches(needle).count() >= count).then_some(())
        })
        .is_some()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (≤ 10 s, then SIGKILL); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut c = self.child.take()?;
        let r = poll(Duration::from_secs(10), || c.try_wait().ok().flatten());
        match r {
            Some(st) => st.code(),
            None => {
                let _ = c.kill();
                let _ = c.wait();
                None
            }
        }
    }

    /// VmRSS of the agent in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Waits for the API socket to accept connections.
    pub fn wait_api(&mut self, timeout: Duration) -> bool {
        let sock = self.socket.clone();
        poll(timeout, || UnixStream::connect(&sock).ok().map(|_| ())).is_some()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Failed actions in an agent log.
pub fn failed_actions(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("action failed"))
        .collect()
}

/// Number of successful vCPU / memory changes in an agent log (weights
/// and I/O limits are counted apart).
pub fn applied_vcpu_memory(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" applied "))
        .filter(|l| {
            ["vcpus", "memory"].iter().any(|r| {
                l.contains(&format!("resource=\"{r}\"")) || l.contains(&format!("resource={r} "))
            })
        })
        .count()
}

/// Runs `virtpoold` to completion with `args`; returns (exit code, stdout, stderr).
pub fn run_virtpoold(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(virtpoold())
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- HTTP

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server said `Connection: close`.
    pub close: bool,
}

impl Response {
    /// `error.code` of an error body (panics if the body is not one).
    pub fn code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no error message: {}",
            self.body
        );
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", self.body))
            .to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET` on a fresh connection; panics on I/O errors.
pub fn get(sock: &Path, path: &str) -> Response {
    http(sock, "GET", path, None).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `POST` with a JSON body on a fresh connection; panics on I/O errors.
pub fn post(sock: &Path, path: &str, body: &str) -> Response {
    http(sock, "POST", path, Some(body)).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// The paths where two JSON values differ (for readable assertion messages).
pub fn json_diff(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(p: String, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value as V;
        match (a, b) {
            (V::Object(x), V::Object(y)) => {
                for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let n = serde_json::Value::Null;
                    walk(
                        format!("{p}.{k}"),
                        x.get(k).unwrap_or(&n),
                        y.get(k).unwrap_or(&n),
                        out,
                    );
                }
            }
            (V::Array(x), V::Array(y)) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(format!("{p}[{i}]"), u, v, out);
                }
            }
            _ if a != b => out.push(format!("{p}: {a} != {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(String::new(), a, b, &mut out);
    out
}

/// A small seeded PRNG (xorshift64*), for reproducible fault schedules.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    read_response(&mut r)
}

/// Reads one response (Content-Length or chunked, else to EOF).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut len = None;
    let mut chunked = false;
    let mut close = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz)?;
            let n = usize::from_str_radix(sz.trim(), 16).map_err(|_| bad("bad chunk"))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}

/// Runs `virtpoolctl ARGS` with `VIRTPOOL_SOCKET=SOCK`; returns (exit
/// code, stdout, stderr).
pub fn ctl(sock: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(virtpoolctl())
        .env("VIRTPOOL_SOCKET", sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------- waiting

/// Waits until every fleet domain in `names` has its expected values from
/// `expect` on the checker's connection; returns the time it took, or
/// panics with the domains still off.
pub fn wait_converged(
    h: &Host2,
    agent: &mut Agent,
    timeout: Duration,
    expect: impl Fn(&str) -> Option<(u64, u64)>,
) -> Duration {
    let t0 = Instant::now();
    let mut last = Vec::new();
    let ok = poll(timeout, || {
        last = h
            .all()
            .into_iter()
            .filter(|d| d.state.is_active())
            .filter_map(|d| {
                let (v, m) = expect(&d.name)?;
                ((d.vcpus, d.memory) != (v, m)).then(|| {
                    format!(
                        "{}: {} vCPUs / {} MiB, want {v} / {} MiB",
                        d.name,
                        d.vcpus,
                        d.memory / MIB,
                        m / MIB
                    )
                })
            })
            .collect();
        last.is_empty().then_some(())
    });
    agent.assert_alive();
    assert!(
        ok.is_some(),
        "not converged after {timeout:?}: {last:#?}\nagent log:\n{}",
        agent.log_text()
    );
    t0.elapsed()
}
