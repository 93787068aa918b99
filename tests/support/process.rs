//! A child process that goes with its owner: killed (SIGKILL) and reaped
//! when dropped, so a failing test leaves no daemon behind.

use std::ops::{Deref, DerefMut};
use std::process::Child;

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
