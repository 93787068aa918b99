//! Child processes of the tests: one that goes with its owner (killed
//! with SIGKILL and reaped when dropped, so a failing test leaves no
//! daemon behind), and signals that reach only a child still running.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ops::{Deref, DerefMut};
use std::process::Child;

/// Sends `sig` to `child` unless it has exited. A child once reaped (by
/// `try_wait` or `wait`) no longer owns its PID: with the tests starting
/// thousands of processes, another one (say, a `virtpoolctl top` of a
/// test running beside) may have it by now.
pub fn signal(child: &mut Child, sig: Signal) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("PIDs fit in i32"));
        let _ = kill(pid, sig);
    }
}

pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
