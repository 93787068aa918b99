//! The answers of `virtpoolctl`'s changes (pool changes, allocate and
//! release, pause and resume, reconcile, reload) as text.

use crate::api::types::{
    ChangeResponse, CycleResult, ReconcileResponse, ReloadResponse, ReservationResponse,
};
use crate::core::words;

/// What a change without `--wait` prints after its message.
const SAVED: &str = "change saved; it applies with the next cycle (use --wait to wait for it)\n";

/// The cycle a change waited for; when it waited and none came (the
/// agent's wait limit), says so: the change itself is saved. A change that
/// did not wait says it is saved and applies with the next cycle: views
/// show the old state until then.
fn render_waited(waited: bool, changed: bool, cycle: Option<&CycleResult>) -> String {
    match cycle {
        Some(c) => render_cycle(c),
        None if waited && changed => {
            "no cycle finished within the agent's wait limit (its cycle is still \
             running): the change is saved and applies when that cycle ends\n"
                .into()
        }
        None if changed => SAVED.into(),
        None => String::new(),
    }
}

fn render_cycle(c: &CycleResult) -> String {
    format!(
        "cycle {}: {} action(s), {} failed{}\n",
        c.cycle,
        c.actions,
        c.failed,
        if c.libvirt_connected {
            ""
        } else {
            " (libvirt not connected)"
        }
    )
}

/// `allocate` and `release`: the reservation now, then the cycle
/// (`waited`: the change was made with `--wait`).
pub fn render_reservation(r: &ReservationResponse, waited: bool) -> String {
    let mut s = format!(
        "{} in pool {}: reservation {}{}\n",
        r.domain,
        r.pool,
        words::amounts(&r.reservation),
        if r.changed { "" } else { " (unchanged)" }
    );
    s.push_str(&render_waited(waited, r.changed, r.cycle.as_ref()));
    s
}

/// `reconcile`: the cycle it waited for, or that one is requested.
pub fn render_reconcile(r: &ReconcileResponse) -> String {
    match &r.cycle {
        Some(c) => render_cycle(c),
        None => "cycle requested\n".into(),
    }
}

/// `reload`: the file read, what applies only on restart, and the runtime
/// changes set aside.
pub fn render_reload(r: &ReloadResponse) -> String {
    let mut s = format!("config reloaded from {}\n", r.file);
    if !r.restart_only.is_empty() {
        s.push_str(&format!(
            "changed, applied only on restart: {}\n",
            r.restart_only.join(", ")
        ));
    }
    if !r.set_aside.is_empty() {
        s.push_str(&format!(
            "runtime changes set aside (they do not fit the new file; kept in {}):\n",
            r.set_aside_file.as_deref().unwrap_or("the state directory")
        ));
        for p in &r.set_aside {
            s.push_str(&format!("  {p}\n"));
        }
    }
    s
}

/// A pool change, `pause` or `resume`: the agent's message, then the
/// cycle (`waited`: made with `--wait`). A pause that did not wait says
/// no more: it holds at once, the members are left untouched from now on,
/// whatever the next cycle plans.
pub fn render_change(r: &ChangeResponse, pause: bool, waited: bool) -> String {
    let mut s = format!(
        "{}{}\n",
        r.message,
        if r.changed {
            ""
        } else {
            " (nothing to change)"
        }
    );
    if pause && !waited {
        return s;
    }
    s.push_str(&render_waited(waited, r.changed, r.cycle.as_ref()));
    s
}
