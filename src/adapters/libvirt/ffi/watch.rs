//! A socket watched by libvirt's event loop.

use std::os::raw::c_int;

use virt::error::Error;
use virt::sys;

/// What [`watch_readable`] calls when its socket has data.
pub type ReadableFn = Box<dyn FnMut(&std::os::unix::net::UnixStream) + Send>;

/// The socket and callback of one [`watch_readable`] registration.
struct ReadableWatch {
    sock: std::os::unix::net::UnixStream,
    f: ReadableFn,
}

/// The C callback libvirt's event loop calls when the watched socket is
/// readable.
unsafe extern "C" fn readable_trampoline(
    _watch: c_int,
    _fd: c_int,
    _events: c_int,
    opaque: *mut std::os::raw::c_void,
) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: `opaque` is the `Box<ReadableWatch>` leaked in
    // `watch_readable`; it is never removed nor freed, and libvirt calls
    // the callback from the one thread running the event loop, so this is
    // the only reference while the callback runs.
    let w = unsafe { &mut *(opaque as *mut ReadableWatch) };
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (w.f)(&w.sock)));
}

/// Watches `sock` for readability in libvirt's default event loop (which
/// must be registered): the thread running the loop calls `f` with the
/// socket each time it has data; `f` must read it, or the loop spins. The
/// watch lasts for the life of the process.
pub fn watch_readable(sock: std::os::unix::net::UnixStream, f: ReadableFn) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    // SAFETY: `fd` belongs to the socket inside the boxed watch, which is
    // never freed once registered, so it stays open; the callback has the
    // virEventHandleCallback signature; no free callback is given, so
    // libvirt never frees the watch (nor keeps it when the call fails).
    unsafe {
        super::callbacks::register_boxed(ReadableWatch { sock, f }, |opaque| {
            sys::virEventAddHandle(
                fd,
                sys::VIR_EVENT_HANDLE_READABLE as c_int,
                Some(readable_trampoline),
                opaque,
                None,
            )
        })
    }?;
    Ok(())
}
