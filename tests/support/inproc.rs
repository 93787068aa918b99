//! An agent in this process: the reconciler over the [`Fake`] hypervisor
//! (in-memory domains) and the API on a real Unix socket in a temp dir;
//! the standard test host; raw HTTP helpers.

pub use super::fake::{Fake, FakeCtl};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::agent::reconciler::{Handle, Reconciler};
use virtpool::agent::state::RuntimeState;
use virtpool::api::{self, AppState, ServeOptions};
use virtpool::cli::client::Client;
use virtpool::core::config::Config;
use virtpool::core::model::{DiskObs, DomainObs, DomainState, IoTune};
use virtpool::core::planner::testing;

const GIB: u64 = 1 << 30;

/// A running domain with a deterministic UUID and one disk (the planner's
/// fixture [`testing::domain`] otherwise, but for no admission time).
pub fn dom(name: &str, vcpus: u64, vcpus_max: u64, mem_gib: u64) -> DomainObs {
    let mut h: u64 = 1469598103934665603;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
    }
    DomainObs {
        name: name.into(),
        uuid: format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xfff,
            (h >> 4) & 0xfff,
            h & 0xffff_ffff_ffff
        )
        .into(),
        vcpus,
        vcpus_max,
        memory: mem_gib * GIB,
        memory_max: mem_gib * GIB,
        disks: vec![DiskObs {
            target: "vda".into(),
            device: "disk".into(),
            readonly: false,
            iotune: Some(IoTune::default()),
        }]
        .into(),
        active_secs: None,
        ..testing::domain(name, None)
    }
}

/// The standard test host: web-1..3 (pool web by glob), db-1 (pool db by
/// name), dev (unmanaged), old-1 (shut off, unmanaged).
pub fn standard_domains() -> Vec<DomainObs> {
    let mut old = dom("old-1", 0, 2, 2);
    old.state = DomainState::Shutoff;
    vec![
        dom("web-1", 2, 8, 8),
        dom("web-2", 2, 8, 8),
        dom("web-3", 2, 4, 4),
        dom("db-1", 4, 16, 16),
        dom("dev", 2, 2, 4),
        old,
    ]
}

pub const STANDARD_POOLS: &str = r#"
[pools.web]
match = "web-*"
vcpus = { budget = 12, max = 8 }
memory = { budget = "16GiB", min = "1GiB" }

[pools.db]
domains = ["db-1"]
vcpus = { budget = 8, min = 2 }
memory = { budget = "12GiB" }
disk_iops_sec = { budget = 1000 }
"#;

/// An agent in this process: monitor over a fake hypervisor, API on a
/// real socket in a temp dir.
pub struct Agent {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub handle: Handle,
    pub hv: FakeCtl,
    pub config_text: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Config text for an agent living in `dir`.
pub fn config_text(dir: &Path, group: &str, pools: &str) -> String {
    format!(
        r#"
[agent]
libvirt_uri = "fake:///"
interval = "1h"
state_dir = "{dir}/state"

[api]
socket = "{dir}/api.sock"
group = "{group}"

[host]
cpus = 16
memory = "64GiB"
disk_bytes_sec = "1GiB"
disk_iops_sec = 10000

[memory]
pressure_threshold = 0
{pools}
"#,
        dir = dir.display()
    )
}

impl Agent {
    /// Starts an agent with the standard domains and pools.
    pub async fn standard(dir: &Path) -> Agent {
        Agent::standard_opts(dir, ServeOptions::default()).await
    }

    /// [`Agent::standard`] served with `opts`.
    pub async fn standard_opts(dir: &Path, opts: ServeOptions) -> Agent {
        Agent::start(
            dir,
            "root",
            STANDARD_POOLS,
            Fake::new(standard_domains()),
            opts,
        )
        .await
    }

    /// [`Agent::standard`] with `POST /v1/reload` handed to `reloads` and
    /// another wait limit (`self.hv` can then stall a full observation).
    pub async fn standard_with(
        dir: &Path,
        reloads: Option<tokio::sync::mpsc::Sender<virtpool::agent::service::ReloadRequest>>,
        wait_limit: std::time::Duration,
    ) -> Agent {
        Agent::start_with(
            dir,
            "root",
            STANDARD_POOLS,
            Fake::new(standard_domains()),
            ServeOptions::default(),
            reloads,
            Some(wait_limit),
        )
        .await
    }

    /// [`Agent::start`] for group `root` with the default serve options.
    pub async fn start_root(dir: &Path, pools: &str, hv: Fake) -> Agent {
        Agent::start(dir, "root", pools, hv, ServeOptions::default()).await
    }

    /// Starts an agent and waits for its first cycle.
    pub async fn start(
        dir: &Path,
        group: &str,
        pools: &str,
        hv: Fake,
        opts: ServeOptions,
    ) -> Agent {
        Agent::start_with(dir, group, pools, hv, opts, None, None).await
    }

    /// [`Agent::start`], with `POST /v1/reload` handed to `reloads` (in
    /// `virtpoold` the service loop takes them) and another wait limit.
    pub async fn start_with(
        dir: &Path,
        group: &str,
        pools: &str,
        hv: Fake,
        opts: ServeOptions,
        reloads: Option<tokio::sync::mpsc::Sender<virtpool::agent::service::ReloadRequest>>,
        wait_limit: Option<std::time::Duration>,
    ) -> Agent {
        let text = config_text(dir, group, pools);
        let cfg = Config::parse(&text, &dir.join("virtpool.toml")).unwrap();
        let runtime = RuntimeState::load(&cfg.agent.state_dir).unwrap();
        let ctl = hv.ctl();
        let worker = HvWorker::spawn(Box::new(hv)).unwrap();
        let sock = api::bind(&cfg.agent.socket, &cfg.agent.api_group)
            .await
            .unwrap();
        let socket = cfg.agent.socket.clone();
        let group = cfg.agent.api_group.clone();
        let (monitor, handle) = Reconciler::new(worker, Host::new().unwrap(), cfg, runtime, false);
        let shutdown = CancellationToken::new();
        let mut state = AppState::new(handle.clone(), group);
        if let Some(limit) = wait_limit {
            state = state.with_wait_limit(limit);
        }
        if let Some(tx) = reloads {
            state = state.with_reloads(tx);
        }
        let t1 = tokio::spawn(api::serve_with(sock, state, shutdown.clone(), opts));
        let t2 = tokio::spawn(monitor.run(shutdown.clone()));
        handle.reconcile(true).await.unwrap();
        // The interval's immediate first tick runs a cycle too: let both
        // finish so what the test reads next is settled.
        for _ in 0..500 {
            if handle.report().cycle >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Agent {
            dir: dir.to_owned(),
            socket,
            handle,
            hv: ctl,
            config_text: text,
            shutdown,
            tasks: vec![t1, t2],
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Stops the monitor and the API (socket removed).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }

    /// `POST path` with the JSON `body`: (status, JSON body).
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Raw request: (status, JSON body).
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        call(&self.socket, method, path, body, true).await
    }
}

/// Sends one request; `json` sets `Content-Type: application/json` when a
/// body is sent.
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    json: bool,
) -> (u16, Value) {
    let c = Client::new(socket);
    let mut conn = c.connect().await.unwrap();
    let m = hyper::Method::from_bytes(method.as_bytes()).unwrap();
    let ans = if json || body.is_none() {
        conn.request(m, path, body.map(|b| b.as_bytes().to_vec()))
            .await
            .unwrap()
    } else {
        raw_no_content_type(socket, method, path, body.unwrap_or("")).await
    };
    let v = if ans.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&ans.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&ans.body).into()))
    };
    (ans.status.as_u16(), v)
}

async fn raw_no_content_type(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> virtpool::cli::client::Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    virtpool::cli::client::Answer {
        status: hyper::StatusCode::from_u16(status).unwrap(),
        body: body.into_bytes().into(),
    }
}

/// Replaces volatile fields (timestamps, durations, the real host) so a
/// JSON value can be snapshotted.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match k.as_str() {
                    "host" | "last_cycle" | "time" | "finished_at" | "duration_ms"
                    | "observe_ms" | "plan_ms" | "enforce_ms" | "version" | "memory_pressure" => {
                        if !x.is_null() {
                            *x = Value::String(format!("[{k}]"));
                        }
                    }
                    _ => redact(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `GET path` on a fresh connection, optionally with `If-None-Match`:
/// (status, ETag, JSON body or Null when empty).
pub async fn get_tagged(
    socket: &Path,
    path: &str,
    if_none_match: Option<&str>,
) -> (u16, Option<String>, Value) {
    use http_body_util::{BodyExt, Empty};
    use hyper::header;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header(header::HOST, "virtpoold");
    if let Some(t) = if_none_match {
        req = req.header(header::IF_NONE_MATCH, t);
    }
    let resp = sender
        .send_request(req.body(Empty::<axum::body::Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get(header::ETAG)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, etag, v)
}
