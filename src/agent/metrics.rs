//! Prometheus metrics: [`render`] turns the published [`Report`] and the
//! reconciler's running [`Counters`] into the text exposition format (0.0.4).
//! Pure: no registry, no globals; the API's `GET /metrics` and the optional
//! TCP listener (`agent.metrics_listen`, `crate::api::metrics_tcp`) both
//! call it.
//!
//! Units: resource amounts carry a `resource` label and are in the
//! resource's own unit — `vcpus` (count), `memory` (bytes),
//! `disk_bytes_sec` (bytes/s), `disk_iops_sec` (operations/s).

use crate::agent::report::{Counters, Report};
use crate::core::model::Resource;
use std::fmt::Write;

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

/// The host's capacity as the last cycle used it (see
/// [`crate::core::capacity::Capacity`]).
fn host_capacity(o: &mut Out, c: &crate::core::capacity::Capacity) {
    o.family(
        "virtpool_host_cpus",
        "gauge",
        "Host CPUs: measured on the machine, declared in [host] (when set), used (the declared ones when set).",
    );
    o.family(
        "virtpool_host_memory_bytes",
        "gauge",
        "Host memory: measured, declared in [host] (when set), used.",
    );
    for (name, src) in [
        ("virtpool_host_cpus", &c.host.cpus),
        ("virtpool_host_memory_bytes", &c.host.memory),
    ] {
        o.sample(name, &[("source", "measured")], src.measured as f64);
        if let Some(d) = src.declared {
            o.sample(name, &[("source", "declared")], d as f64);
        }
        o.sample(name, &[("source", "used")], src.used as f64);
    }
    o.family(
        "virtpool_host_reserved",
        "gauge",
        "Reserved for the host itself (host.reserved_cpus, host.reserved_memory in bytes).",
    );
    o.sample(
        "virtpool_host_reserved",
        &[("resource", "vcpus")],
        c.reserved.cpus as f64,
    );
    o.sample(
        "virtpool_host_reserved",
        &[("resource", "memory")],
        c.reserved.memory as f64,
    );
    o.family(
        "virtpool_host_allocation_ratio",
        "gauge",
        "host.cpu_allocation_ratio and host.memory_allocation_ratio.",
    );
    o.sample(
        "virtpool_host_allocation_ratio",
        &[("resource", "vcpus")],
        c.ratio.cpus,
    );
    o.sample(
        "virtpool_host_allocation_ratio",
        &[("resource", "memory")],
        c.ratio.memory,
    );
    let p = &c.memory_pressure;
    o.family(
        "virtpool_host_memory_available_bytes",
        "gauge",
        "Host memory available, as measured.",
    );
    o.sample(
        "virtpool_host_memory_available_bytes",
        &[],
        p.available as f64,
    );
    o.family(
        "virtpool_host_memory_pressure_threshold_bytes",
        "gauge",
        "Below this much available memory the host is under memory pressure (memory.pressure_threshold).",
    );
    o.sample(
        "virtpool_host_memory_pressure_threshold_bytes",
        &[],
        p.threshold as f64,
    );
    o.family(
        "virtpool_host_memory_pressure",
        "gauge",
        "1 while the host is under memory pressure (members' memory targets lowered), else 0.",
    );
    o.sample("virtpool_host_memory_pressure", &[], b(p.under));
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

    if let Some(plan) = &st.plan {
        o.family(
            "virtpool_host_allocatable",
            "gauge",
            "What the pools may share, per resource (vcpus count, memory bytes, disk_bytes_sec bytes/s, disk_iops_sec IO/s).",
        );
        for r in Resource::ALL {
            o.sample(
                "virtpool_host_allocatable",
                &[("resource", r.key())],
                *plan.allocatable.get(r) as f64,
            );
        }
    }

    if let Some(cap) = &st.capacity {
        host_capacity(&mut o, cap);
    }

    for (name, help) in [
        (
            "virtpool_pool_budget",
            "Pool budget per resource (resource units, see virtpool_host_allocatable).",
        ),
        (
            "virtpool_pool_allocated",
            "Sum of the targets of the pool's admitted active members.",
        ),
        ("virtpool_pool_free", "Budget minus allocated."),
    ] {
        o.family(name, "gauge", help);
        for p in pools {
            for r in Resource::ALL {
                let Some(budget) = *p.budget.get(r) else {
                    continue;
                };
                let v = match name {
                    "virtpool_pool_budget" => budget,
                    "virtpool_pool_allocated" => *p.allocated.get(r),
                    _ => p.free(r).unwrap_or(0),
                };
                o.sample(name, &[("pool", &p.name), ("resource", r.key())], v as f64);
            }
        }
    }

    o.family(
        "virtpool_pool_members",
        "gauge",
        "Pool members by admission (shut-off members are never admitted: they hold nothing).",
    );
    for p in pools {
        let admitted = p.members.iter().filter(|m| m.admitted).count();
        let un = p.members.len() - admitted;
        o.sample(
            "virtpool_pool_members",
            &[("pool", &p.name), ("admitted", "true")],
            admitted as f64,
        );
        o.sample(
            "virtpool_pool_members",
            &[("pool", &p.name), ("admitted", "false")],
            un as f64,
        );
    }
    o.family(
        "virtpool_unadmitted_members",
        "gauge",
        "Active members whose floors do not fit their pool's budget (left untouched).",
    );
    for p in pools {
        let un = p
            .members
            .iter()
            .filter(|m| !m.admitted && m.state.is_active())
            .count();
        o.sample(
            "virtpool_unadmitted_members",
            &[("pool", &p.name)],
            un as f64,
        );
    }

    for (name, help) in [
        (
            "virtpool_domain_target",
            "Planned allocation of a pool member per resource (resource units).",
        ),
        (
            "virtpool_domain_actual",
            "What libvirt reports the member has, per resource.",
        ),
        (
            "virtpool_domain_guest_used",
            "What the guest reports using, where it reports it (memory: bytes).",
        ),
    ] {
        o.family(name, "gauge", help);
        for p in pools {
            for m in &p.members {
                for r in Resource::ALL {
                    let Some(a) = m.alloc.get(r) else {
                        continue;
                    };
                    let v = match name {
                        "virtpool_domain_target" => Some(a.target),
                        "virtpool_domain_actual" => Some(a.actual),
                        _ => a.used,
                    };
                    if let Some(v) = v {
                        o.sample(
                            name,
                            &[
                                ("pool", &p.name),
                                ("domain", &m.name),
                                ("resource", r.key()),
                            ],
                            v as f64,
                        );
                    }
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
