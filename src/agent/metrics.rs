//! Prometheus metrics: [`render`] turns the published [`Report`] and the
//! reconciler's running [`Counters`] into the text exposition format (0.0.4).
//! Pure: no registry, no globals; the API's `GET /metrics` and the optional
//! TCP listener (`agent.metrics_listen`, `crate::api::metrics_tcp`) both
//! call it.
//!
//! Units: one family per quantity and unit, the unit in its name
//! (Prometheus' conventions): `…_vcpus` (a count of vCPUs),
//! `…_memory_bytes`, `…_disk_bytes_per_second`, `…_disk_iops` (I/O
//! operations per second), `…_cpu_cores`. `promtool check metrics` finds
//! nothing to say about the exposition (`tests/metrics_render.rs`).

use crate::agent::report::{Counters, Report};
use crate::core::model::Resource;
use std::fmt::Write;

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The unit part of a resource's family names.
pub fn unit_suffix(r: Resource) -> &'static str {
    match r {
        Resource::Vcpus => "vcpus",
        Resource::Memory => "memory_bytes",
        Resource::DiskBytesSec => "disk_bytes_per_second",
        Resource::DiskIopsSec => "disk_iops",
        Resource::Cpu => "cpu_cores",
    }
}

/// An amount in its family's unit (CPU time: cores, from millicores).
fn value(r: Resource, v: u64) -> f64 {
    match r {
        Resource::Cpu => v as f64 / crate::core::cpu::MILLI as f64,
        _ => v as f64,
    }
}

/// `{prefix}_{unit}`: the family of a resource's amounts.
pub fn family(prefix: &str, r: Resource) -> String {
    format!("{prefix}_{}", unit_suffix(r))
}

fn unit_words(r: Resource) -> &'static str {
    match r {
        Resource::Vcpus => "vCPUs",
        Resource::Memory => "memory, bytes",
        Resource::DiskBytesSec => "disk bandwidth, bytes per second",
        Resource::DiskIopsSec => "disk I/O operations per second",
        Resource::Cpu => "CPU time, cores",
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// Writes families: HELP and TYPE once, then samples.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A family of one sample.
    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.family(name, "gauge", help);
        self.sample(name, labels, v);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", esc(val));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", num(v));
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// What the host's capacity was made of in the last cycle (see
/// [`crate::core::capacity::Capacity`]), beside the measured figures
/// `render` writes: the declared ones, the reservations, the ratios, the
/// memory pressure threshold.
fn host_capacity(o: &mut Out, c: &crate::core::capacity::Capacity) {
    if let Some(d) = c.host.cpus.declared {
        o.gauge(
            "virtpool_host_declared_cpu_cores",
            "CPUs declared in [host] (host.cpus): used instead of the measured ones.",
            &[],
            d as f64,
        );
    }
    if let Some(d) = c.host.memory.declared {
        o.gauge(
            "virtpool_host_declared_memory_bytes",
            "Memory declared in [host] (host.memory): used instead of the measured memory.",
            &[],
            d as f64,
        );
    }
    o.gauge(
        "virtpool_host_reserved_cpu_cores",
        "CPUs reserved for the host itself (host.reserved_cpus).",
        &[],
        c.reserved.cpus as f64,
    );
    o.gauge(
        "virtpool_host_reserved_memory_bytes",
        "Memory reserved for the host itself (host.reserved_memory).",
        &[],
        c.reserved.memory as f64,
    );
    o.gauge(
        "virtpool_host_cpu_allocation_ratio",
        "host.cpu_allocation_ratio: allocatable vCPUs per unreserved CPU.",
        &[],
        c.ratio.cpus,
    );
    o.gauge(
        "virtpool_host_memory_allocation_ratio",
        "host.memory_allocation_ratio: allocatable memory per unreserved byte.",
        &[],
        c.ratio.memory,
    );
    o.gauge(
        "virtpool_host_memory_pressure_threshold_bytes",
        "Below this much available memory the host is under memory pressure (memory.pressure_threshold).",
        &[],
        c.memory_pressure.threshold as f64,
    );
}

/// The whole exposition.
pub fn render(st: &Report, c: &Counters) -> String {
    let mut o = Out {
        text: String::with_capacity(8192),
    };
    let empty = Vec::new();
    let pools = st.plan.as_ref().map_or(&empty, |p| &p.pools);

    o.family("virtpool_up", "gauge", "1 while the agent runs.");
    o.sample("virtpool_up", &[], 1.0);
    o.family(
        "virtpool_libvirt_up",
        "gauge",
        "Whether the last cycle reached libvirt (1) or not (0).",
    );
    o.sample(
        "virtpool_libvirt_up",
        &[("uri", &st.libvirt.uri)],
        b(st.libvirt.connected),
    );
    o.family(
        "virtpool_libvirt_connection_lost_total",
        "counter",
        "Times the libvirt connection was lost.",
    );
    o.sample(
        "virtpool_libvirt_connection_lost_total",
        &[],
        c.libvirt_lost as f64,
    );
    o.family(
        "virtpool_libvirt_calls_total",
        "counter",
        "libvirt calls made (round trips to the libvirt daemon), by call.",
    );
    for (call, n) in c.libvirt_calls.by_label() {
        o.sample("virtpool_libvirt_calls_total", &[("call", call)], n as f64);
    }
    o.family(
        "virtpool_enforcing",
        "gauge",
        "1 in enforce mode and not paused, 0 in observe mode or paused.",
    );
    o.sample(
        "virtpool_enforcing",
        &[],
        b(st.mode == crate::core::config::Mode::Enforce && !st.paused),
    );

    if let Some(h) = &st.host {
        o.gauge(
            "virtpool_host_cpu_cores",
            "Logical CPUs of the host (as the kernel counts them).",
            &[],
            h.cpus as f64,
        );
        o.gauge(
            "virtpool_host_memory_bytes",
            "Physical memory of the host.",
            &[],
            h.memory_total as f64,
        );
        o.gauge(
            "virtpool_host_memory_available_bytes",
            "Memory the kernel reports available.",
            &[],
            h.memory_available as f64,
        );
    }
    if let Some(plan) = &st.plan {
        o.gauge(
            "virtpool_host_memory_pressure",
            "1 while the host's available memory is below the pressure threshold (memory targets are lowered), else 0.",
            &[],
            b(plan.pressure),
        );
        for r in Resource::ALL {
            let name = family("virtpool_host_allocatable", r);
            o.gauge(
                &name,
                &format!("What the pools may share ({}).", unit_words(r)),
                &[],
                value(r, *plan.allocatable.get(r)),
            );
        }
    }

    if let Some(cap) = &st.capacity {
        host_capacity(&mut o, cap);
    }

    for (what, help) in [
        ("budget", "Pool budget"),
        (
            "allocated",
            "Sum of the targets of the pool's admitted active members",
        ),
        ("free", "Pool budget minus allocated"),
    ] {
        for r in Resource::ALL {
            let name = family(&format!("virtpool_pool_{what}"), r);
            o.family(&name, "gauge", &format!("{help} ({}).", unit_words(r)));
            for p in pools {
                let Some(budget) = *p.budget.get(r) else {
                    continue;
                };
                let v = match what {
                    "budget" => budget,
                    "allocated" => *p.allocated.get(r),
                    _ => p.free(r).unwrap_or(0),
                };
                o.sample(&name, &[("pool", &p.name)], value(r, v));
            }
        }
    }

    o.family(
        "virtpool_pool_members",
        "gauge",
        "Pool members by admission: admitted, unadmitted (active, floors do not fit the budget: left untouched), inactive (shut off: hold nothing).",
    );
    for p in pools {
        let (mut admitted, mut unadmitted, mut inactive) = (0usize, 0usize, 0usize);
        for m in &p.members {
            match (m.state.is_active(), m.admitted) {
                (false, _) => inactive += 1,
                (true, true) => admitted += 1,
                (true, false) => unadmitted += 1,
            }
        }
        for (admission, n) in [
            ("admitted", admitted),
            ("unadmitted", unadmitted),
            ("inactive", inactive),
        ] {
            o.sample(
                "virtpool_pool_members",
                &[("pool", &p.name), ("admission", admission)],
                n as f64,
            );
        }
    }

    for (what, help) in [
        ("target", "Planned allocation of a pool member"),
        ("actual", "What libvirt reports the member has"),
    ] {
        for r in Resource::ALL {
            let name = family(&format!("virtpool_domain_{what}"), r);
            o.family(&name, "gauge", &format!("{help} ({}).", unit_words(r)));
            for p in pools {
                for m in &p.members {
                    let Some(a) = m.alloc.get(r) else {
                        continue;
                    };
                    let v = if what == "target" { a.target } else { a.actual };
                    let labels = [("pool", p.name.as_str()), ("domain", &m.name)];
                    o.sample(&name, &labels, value(r, v));
                }
            }
        }
    }
    for (r, name, help) in [
        (
            Resource::Memory,
            "virtpool_domain_guest_used_memory_bytes",
            "Memory the guest reports using, where it reports it (bytes).",
        ),
        (
            Resource::Cpu,
            "virtpool_domain_used_cpu_cores",
            "CPU time the domain used per second between the last two observations (cores), for members of pools that manage CPU time.",
        ),
    ] {
        o.family(name, "gauge", help);
        for p in pools {
            for m in &p.members {
                if let Some(u) = m.alloc.get(r).as_ref().and_then(|a| a.used) {
                    o.sample(name, &[("pool", &p.name), ("domain", &m.name)], value(r, u));
                }
            }
        }
    }

    if let Some(plan) = &st.plan {
        o.family(
            "virtpool_unmanaged_domains",
            "gauge",
            "Domains in no pool (observed, never touched).",
        );
        o.sample(
            "virtpool_unmanaged_domains",
            &[],
            plan.unmanaged.len() as f64,
        );
        o.family(
            "virtpool_planned_actions",
            "gauge",
            "Changes the last plan asked for.",
        );
        o.sample("virtpool_planned_actions", &[], plan.actions.len() as f64);
    }

    o.family("virtpool_cycles_total", "counter", "Reconciler cycles run.");
    o.sample("virtpool_cycles_total", &[], c.cycles as f64);
    o.family(
        "virtpool_cycle_duration_seconds",
        "histogram",
        "Duration of a monitor cycle (observe, plan, enforce, publish).",
    );
    let h = &c.cycle_seconds;
    let mut cum = 0;
    for (bound, n) in h.bounds.iter().zip(&h.counts) {
        cum += n;
        o.sample(
            "virtpool_cycle_duration_seconds_bucket",
            &[("le", &num(*bound))],
            cum as f64,
        );
    }
    o.sample(
        "virtpool_cycle_duration_seconds_bucket",
        &[("le", "+Inf")],
        h.count as f64,
    );
    o.sample("virtpool_cycle_duration_seconds_sum", &[], h.sum);
    o.sample("virtpool_cycle_duration_seconds_count", &[], h.count as f64);
    if let Some(lc) = &st.last_cycle {
        o.family(
            "virtpool_last_cycle_timestamp_seconds",
            "gauge",
            "Unix time the last cycle finished.",
        );
        o.sample(
            "virtpool_last_cycle_timestamp_seconds",
            &[],
            lc.finished_at as f64,
        );
    }

    o.family(
        "virtpool_actions_total",
        "counter",
        "Enforcement actions by resource and result (ok, error).",
    );
    for ((resource, result), n) in &c.actions {
        o.sample(
            "virtpool_actions_total",
            &[("resource", resource), ("result", result)],
            *n as f64,
        );
    }

    o.family(
        "virtpool_config_reloads_total",
        "counter",
        "SIGHUP reloads by result (ok: swapped in; refused: invalid, old config kept).",
    );
    o.sample(
        "virtpool_config_reloads_total",
        &[("result", "ok")],
        c.reloads_ok as f64,
    );
    o.sample(
        "virtpool_config_reloads_total",
        &[("result", "refused")],
        c.reloads_refused as f64,
    );
    o.family(
        "virtpool_config_last_reload_successful",
        "gauge",
        "Whether the last reload was swapped in (1; also before any reload) or refused (0).",
    );
    o.sample(
        "virtpool_config_last_reload_successful",
        &[],
        b(c.last_reload_ok.unwrap_or(true)),
    );
    o.text
}
