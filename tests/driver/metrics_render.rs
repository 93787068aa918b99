//! `metrics::render` after a real cycle on the demo host (libvirt test
//! driver): the text parses as the Prometheus exposition format and carries
//! the right values.
#![allow(clippy::unwrap_used)]

use crate::support::node::*;
use crate::support::promtool;
use std::collections::{BTreeMap, HashMap};
use virtpool::adapters::host::Host;
use virtpool::adapters::libvirt::worker::HvWorker;
use virtpool::adapters::libvirt::Libvirt;
use virtpool::agent::reconciler::Reconciler;
use virtpool::agent::state::RuntimeState;

const DEMO: &str = include_str!("../../config/demo.toml");

type Labels = BTreeMap<String, String>;

/// A sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut cs = n.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|e| format!("bad value {v:?}: {e}")),
    }
}

/// Label pairs after `{`, up to and including `}`; returns the rest.
fn parse_labels(mut r: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    loop {
        if let Some(rest) = r.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = r.find('=').ok_or("no =")?;
        let name = &r[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        r = r[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut val = String::new();
        let mut it = r.char_indices();
        let end = loop {
            match it.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i + 1,
                Some((_, '\\')) => match it.next() {
                    Some((_, '\\')) => val.push('\\'),
                    Some((_, '"')) => val.push('"'),
                    Some((_, 'n')) => val.push('\n'),
                    _ => return Err("bad escape".into()),
                },
                Some((_, c)) => val.push(c),
            }
        };
        if labels.insert(name.to_string(), val).is_some() {
            return Err("duplicate label".into());
        }
        r = &r[end..];
        if let Some(rest) = r.strip_prefix(',') {
            r = rest;
        } else if !r.starts_with('}') {
            return Err("expected , or }".into());
        }
    }
}

/// A strict parser of the Prometheus text format (0.0.4): HELP/TYPE once
/// per family and before its samples, valid names, quoted and escaped
/// label values, numeric values, samples of a family contiguous, histogram
/// suffixes only on histograms. Returns the samples and the family types.
fn parse(text: &str) -> Result<(Vec<Sample>, HashMap<String, String>), String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts.next().ok_or_else(|| err("no name".into()))?;
            let arg = parts.next().unwrap_or("").to_string();
            match kw {
                "HELP" if helps.insert(name.into(), arg.clone()).is_some() => {
                    return Err(err("second HELP".into()));
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"]
                        .contains(&arg.as_str())
                    {
                        return Err(err("bad type".into()));
                    }
                    if types.insert(name.into(), arg).is_some() {
                        return Err(err("second TYPE".into()));
                    }
                }
                _ => {}
            }
            if !valid_name(name) {
                return Err(err("bad name".into()));
            }
            continue;
        }
        // name{labels} value
        let (name, rest) = match line.find(['{', ' ']) {
            Some(p) => line.split_at(p),
            None => return Err(err("no value".into())),
        };
        if !valid_name(name) {
            return Err(err("bad metric name".into()));
        }
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(r) => parse_labels(r).map_err(err)?,
            None => (Labels::new(), rest),
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        let value = parse_value(value.split(' ').next().unwrap_or("")).map_err(err)?;
        // Family: the name, or the name less a histogram suffix.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name)
            .to_string();
        let Some(ty) = types.get(&family) else {
            return Err(err("sample before its TYPE".into()));
        };
        if ty == "histogram" && family == name {
            return Err(err("histogram sample without suffix".into()));
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(err("family samples not contiguous".into()));
            }
            if let Some(c) = current.take() {
                finished.push(c);
            }
            current = Some(family.clone());
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok((samples, types))
}

fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn the_parser_rejects_broken_text() {
    assert!(parse("# TYPE a gauge\na 1\n").is_ok());
    assert!(parse("a 1\n").is_err(), "sample before TYPE");
    assert!(parse("# TYPE a gauge\na{x=1} 1\n").is_err(), "unquoted");
    assert!(parse("# TYPE a gauge\na{x=\"1\"} one\n").is_err(), "value");
    assert!(
        parse("# TYPE a gauge\n# TYPE a gauge\n").is_err(),
        "two TYPEs"
    );
    assert!(parse("# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n").is_err());
    let (s, _) = parse("# TYPE a gauge\na{x=\"q\\\"\\\\\\n\",y=\"\"} 1.5\n").unwrap();
    assert_eq!(s[0].labels["x"], "q\"\\\n");
    assert_eq!(s[0].value, 1.5);
}

#[tokio::test]
async fn metrics_parse_and_carry_the_demo_hosts_values() {
    let (mut m, handle) = demo_reconciler();
    let first = m.cycle_once().await;
    let st = m.cycle_once().await;
    assert!(!first.results.is_empty(), "the demo host starts off target");
    let counters = handle.counters();
    let text = virtpool::agent::metrics::render(&st, &counters);
    let (samples, types) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    for (family, ty) in [
        ("virtpool_pool_budget_vcpus", "gauge"),
        ("virtpool_pool_budget_memory_bytes", "gauge"),
        ("virtpool_pool_budget_disk_bytes_per_second", "gauge"),
        ("virtpool_pool_budget_disk_iops", "gauge"),
        ("virtpool_pool_allocated_memory_bytes", "gauge"),
        ("virtpool_pool_free_vcpus", "gauge"),
        ("virtpool_domain_target_vcpus", "gauge"),
        ("virtpool_domain_actual_memory_bytes", "gauge"),
        ("virtpool_domain_guest_used_memory_bytes", "gauge"),
        ("virtpool_host_allocatable_disk_iops", "gauge"),
        ("virtpool_host_cpu_cores", "gauge"),
        ("virtpool_host_memory_bytes", "gauge"),
        ("virtpool_host_memory_available_bytes", "gauge"),
        ("virtpool_host_memory_pressure", "gauge"),
        ("virtpool_pool_members", "gauge"),
        ("virtpool_cycle_duration_seconds", "histogram"),
        ("virtpool_actions_total", "counter"),
        ("virtpool_libvirt_up", "gauge"),
        ("virtpool_config_reloads_total", "counter"),
        ("virtpool_config_last_reload_successful", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(ty), "{family}");
    }
    // One unit per family: no `resource` label left to mix them.
    assert!(
        samples
            .iter()
            .all(|s| !s.labels.contains_key("resource") || s.name == "virtpool_actions_total"),
        "{text}"
    );

    // Budgets from config/demo.toml, each in its family's unit.
    let pool = |name: &str, p: &str| get(&samples, name, &[("pool", p)]);
    assert_eq!(pool("virtpool_pool_budget_vcpus", "web"), Some(16.0));
    assert_eq!(
        pool("virtpool_pool_budget_memory_bytes", "web"),
        Some((20u64 << 30) as f64)
    );
    assert_eq!(pool("virtpool_pool_budget_vcpus", "db"), Some(12.0));
    assert_eq!(pool("virtpool_pool_budget_disk_iops", "db"), Some(20000.0));
    // 50 % of the host's declared 2 GiB/s.
    assert_eq!(
        pool("virtpool_pool_budget_disk_bytes_per_second", "db"),
        Some((1u64 << 30) as f64)
    );
    assert_eq!(
        pool("virtpool_pool_budget_memory_bytes", "batch"),
        Some((8u64 << 30) as f64)
    );
    assert_eq!(
        pool("virtpool_pool_budget_disk_iops", "batch"),
        None,
        "batch has no iops budget"
    );
    // The demo pools are fully shared out: allocated = budget, free = 0.
    for p in ["web", "db", "batch"] {
        for unit in ["vcpus", "memory_bytes"] {
            assert_eq!(
                pool(&format!("virtpool_pool_allocated_{unit}"), p),
                pool(&format!("virtpool_pool_budget_{unit}"), p),
                "{p} {unit}"
            );
            assert_eq!(pool(&format!("virtpool_pool_free_{unit}"), p), Some(0.0));
        }
    }
    // The host: what the pools may share, as planned (the config declares
    // 16 CPUs, 64 GiB, 2 GiB/s, 40000 IOPS), and no memory pressure.
    let alloc = st.plan.as_ref().unwrap().allocatable;
    for (name, v) in [
        ("virtpool_host_allocatable_vcpus", alloc.vcpus),
        ("virtpool_host_allocatable_memory_bytes", alloc.memory),
        (
            "virtpool_host_allocatable_disk_bytes_per_second",
            alloc.disk_bytes_sec,
        ),
        ("virtpool_host_allocatable_disk_iops", alloc.disk_iops_sec),
    ] {
        assert_eq!(get(&samples, name, &[]), Some(v as f64), "{name}");
    }
    assert_eq!(alloc.disk_bytes_sec, 2 << 30);
    assert_eq!(alloc.disk_iops_sec, 40000);
    assert_eq!(
        get(&samples, "virtpool_host_memory_pressure", &[]),
        Some(0.0)
    );
    let host = st.host.unwrap();
    assert_eq!(
        get(&samples, "virtpool_host_cpu_cores", &[]),
        Some(host.cpus as f64)
    );

    // Per domain: target and actual as the last plan has them.
    let plan = st.plan.as_ref().unwrap();
    let mut checked = 0;
    for p in &plan.pools {
        for mem in p.members.iter().filter(|m| m.admitted) {
            let a = mem.alloc.vcpus.unwrap();
            let l = [("pool", p.name.as_str()), ("domain", &*mem.name)];
            assert_eq!(
                get(&samples, "virtpool_domain_target_vcpus", &l),
                Some(a.target as f64)
            );
            assert_eq!(
                get(&samples, "virtpool_domain_actual_vcpus", &l),
                Some(a.actual as f64)
            );
            let m = mem.alloc.memory.unwrap();
            assert_eq!(
                get(&samples, "virtpool_domain_target_memory_bytes", &l),
                Some(m.target as f64)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
    assert_eq!(
        get(
            &samples,
            "virtpool_domain_target_vcpus",
            &[("domain", "web-3")]
        ),
        Some(2.0),
        "web-3 is capped at its hardware max"
    );
    // Admission counts: db-old is shut off (inactive, not "unadmitted").
    let members = |p: &str, a: &str| {
        get(
            &samples,
            "virtpool_pool_members",
            &[("pool", p), ("admission", a)],
        )
    };
    assert_eq!(members("db", "admitted"), Some(2.0));
    assert_eq!(members("db", "unadmitted"), Some(0.0));
    assert_eq!(members("db", "inactive"), Some(1.0));
    assert_eq!(members("web", "admitted"), Some(4.0));
    // The test driver reports canned balloon stats: guest used where present.
    let used: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "virtpool_domain_guest_used_memory_bytes")
        .collect();
    assert!(!used.is_empty(), "{text}");
    for u in &used {
        assert!(u.value > 0.0);
    }

    // Actions: counted across both cycles (memory shrinks are rate-limited,
    // so the second cycle makes more), by resource.
    let total: f64 = samples
        .iter()
        .filter(|s| s.name == "virtpool_actions_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(
        total,
        (first.results.len() + st.results.len()) as f64,
        "{text}"
    );
    let memory_ok = first
        .results
        .iter()
        .chain(&st.results)
        .filter(|r| r.ok && r.action.resource_label() == "memory")
        .count();
    assert_eq!(
        get(
            &samples,
            "virtpool_actions_total",
            &[("resource", "memory"), ("result", "ok")]
        ),
        Some(memory_ok as f64)
    );
    assert_eq!(
        get(
            &samples,
            "virtpool_actions_total",
            &[("resource", "vcpus"), ("result", "error")]
        ),
        None
    );
    assert!(
        get(
            &samples,
            "virtpool_actions_total",
            &[("resource", "vcpus"), ("result", "ok")]
        )
        .unwrap()
            > 0.0
    );

    assert_eq!(get(&samples, "virtpool_libvirt_up", &[]), Some(1.0));
    assert_eq!(get(&samples, "virtpool_unmanaged_domains", &[]), Some(1.0));
    assert_eq!(get(&samples, "virtpool_cycles_total", &[]), Some(2.0));
    assert_eq!(
        get(&samples, "virtpool_cycle_duration_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        get(
            &samples,
            "virtpool_cycle_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(2.0)
    );
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == "virtpool_cycle_duration_seconds_bucket")
        .map(|s| s.value)
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {buckets:?}"
    );
    assert_eq!(
        get(
            &samples,
            "virtpool_config_reloads_total",
            &[("result", "refused")]
        ),
        Some(0.0)
    );
    assert_eq!(
        get(&samples, "virtpool_config_last_reload_successful", &[]),
        Some(1.0)
    );
}

/// A reconciler on the demo host with the demo's pools.
fn demo_reconciler() -> (Reconciler, virtpool::agent::reconciler::Handle) {
    let pools = &DEMO[DEMO.find("[host]").unwrap()..];
    let cfg = config("cycle-host.xml", pools);
    virtpool::adapters::libvirt::quiet_errors();
    let hv = HvWorker::spawn(Box::new(Libvirt::new(&cfg.agent.libvirt_uri))).unwrap();
    Reconciler::new(hv, Host::new().unwrap(), cfg, RuntimeState::new(), false)
}

/// The exposition after two cycles on the demo host.
async fn demo_text() -> String {
    let (mut m, handle) = demo_reconciler();
    m.cycle_once().await;
    let st = m.cycle_once().await;
    virtpool::agent::metrics::render(&st, &handle.counters())
}

/// Prometheus' own linter has nothing to say: units in names, counters
/// ending in `_total`, no abbreviated units, HELP everywhere.
#[tokio::test]
async fn promtool_check_metrics_is_clean() {
    let text = demo_text().await;
    let Some(promtool) = promtool::promtool() else {
        return;
    };
    let (ok, said) = promtool::check_metrics(&promtool, &text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    // The linter is awake: a unitless mixed family and a counter without
    // `_total` are reported.
    let (ok, said) = promtool::check_metrics(
        &promtool,
        "# HELP virtpool_x_sec A thing.\n# TYPE virtpool_x_sec counter\nvirtpool_x_sec 1\n",
    );
    assert!(!ok && said.contains("virtpool_x_sec"), "{said}");
}

/// Every query of the shipped Grafana dashboard names metrics the agent
/// exports (on the demo host, where every family has samples).
#[tokio::test]
async fn the_grafana_dashboard_queries_exported_metrics() {
    let (samples, types) = parse(&demo_text().await).unwrap();
    let exported: std::collections::HashSet<&str> =
        samples.iter().map(|s| s.name.as_str()).collect();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/virtpool.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        // Panel queries, and template variables' queries.
                        ("expr" | "definition", serde_json::Value::String(q)) => {
                            out.push(q.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut named = 0;
    for q in &exprs {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("virtpool_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            assert!(
                exported.contains(name) || types.contains_key(name),
                "{}: query {q:?} names {name:?}, which the agent does not export",
                path.display()
            );
            named += 1;
            rest = &tail[end..];
        }
    }
    assert!(
        named >= exprs.len(),
        "every query names a virtpool metric: {exprs:?}"
    );
    // The check is awake: a made-up name is not exported.
    assert!(
        !exported.contains("virtpool_pool_budget") && !types.contains_key("virtpool_pool_budget")
    );
}
