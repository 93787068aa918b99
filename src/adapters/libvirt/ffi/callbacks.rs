//! Domain events and the connection close callback.

use std::ffi::CStr;
use std::os::raw::c_int;
use std::ptr;

use virt::error::Error;
use virt::sys;

// ---------------------------------------------------------------------------
// Domain lifecycle events and the connection close callback. The `virt`
// crate (0.5) wraps the event loop but not these registrations.

/// A lifecycle event, copied out of libvirt inside the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub uuid: String,
    pub name: String,
    /// `VIR_DOMAIN_EVENT_*` (Defined, Started, Stopped, ...).
    pub event: i32,
    /// The event's detail code (meaning depends on `event`).
    pub detail: i32,
}

/// What runs (on the libvirt event-loop thread) for each lifecycle event.
/// It must not call libvirt.
pub type LifecycleFn = Box<dyn Fn(LifecycleEvent) + Send + Sync>;
/// What runs (on the event-loop thread) when a connection closes; gets the
/// `VIR_CONNECT_CLOSE_REASON_*` code. It must not call libvirt.
pub type CloseFn = Box<dyn Fn(i32) + Send + Sync>;

type LifecycleCb = unsafe extern "C" fn(
    sys::virConnectPtr,
    sys::virDomainPtr,
    c_int,
    c_int,
    *mut std::os::raw::c_void,
) -> c_int;
type GenericCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut std::os::raw::c_void);

/// Name and UUID of an event's domain. Both are read from the domain object
/// libvirt hands the callback (no driver call, no RPC).
///
/// # Safety
/// `dom` must be null or a valid domain pointer for the whole call.
unsafe fn domain_ids(dom: sys::virDomainPtr) -> (String, String) {
    if dom.is_null() {
        return (String::new(), String::new());
    }
    // SAFETY: `dom` is valid (caller contract); the returned name is owned
    // by the domain object and only read before this function returns.
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    let name = if name_ptr.is_null() {
        String::new()
    } else {
        // SAFETY: non-null names from libvirt are NUL-terminated.
        unsafe { CStr::from_ptr(name_ptr) }
            .to_string_lossy()
            .into_owned()
    };
    let mut buf = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid; `buf` has the VIR_UUID_STRING_BUFLEN bytes
    // the call writes (NUL included).
    let uuid = if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0 {
        // SAFETY: on success libvirt wrote a NUL-terminated string.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    (uuid, name)
}

/// The C callback libvirt calls for `VIR_DOMAIN_EVENT_ID_LIFECYCLE`.
unsafe extern "C" fn lifecycle_trampoline(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut std::os::raw::c_void,
) -> c_int {
    if opaque.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the `Box<LifecycleFn>` leaked in
    // `register_lifecycle`; libvirt frees it (free_lifecycle) only after
    // the last callback returned.
    let f = unsafe { &*(opaque as *const LifecycleFn) };
    // SAFETY: libvirt passes the event's domain, valid during the call.
    let (uuid, name) = unsafe { domain_ids(dom) };
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f(LifecycleEvent {
            uuid,
            name,
            event,
            detail,
        })
    }));
    0
}

/// Frees the lifecycle closure when libvirt drops the registration.
unsafe extern "C" fn free_lifecycle(opaque: *mut std::os::raw::c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from Box::into_raw in `register_lifecycle`
        // and libvirt calls the free callback exactly once.
        drop(unsafe { Box::from_raw(opaque as *mut LifecycleFn) });
    }
}

/// A domain event registration (lifecycle or a [`ChangeEvent`]) on one
/// connection: its callback id. Remove it with [`deregister_event`].
#[derive(Debug)]
pub struct EventRegistration(c_int);

/// Registers `cb` for event `id` on every domain of `conn`, with the boxed
/// `f` as its opaque pointer, freed by `free` when libvirt drops the
/// registration (or here, if the registration fails). Returns the callback
/// id.
///
/// # Safety
/// `cb` must be a trampoline with the C signature libvirt uses for event
/// `id` that reads its opaque pointer as a `*const T`, and `free` must free
/// it as a `Box<T>`.
unsafe fn register_any<T>(
    conn: &virt::connect::Connect,
    id: u32,
    cb: GenericCb,
    f: T,
    free: unsafe extern "C" fn(*mut std::os::raw::c_void),
) -> Result<c_int, Error> {
    // SAFETY: `conn` is borrowed so its pointer is valid; a null domain
    // means "all domains"; `cb` fits event `id` (caller contract); `opaque`
    // stays valid until libvirt calls `free`, which the failed call does
    // not (the free callback runs only for registered callbacks).
    let (_, ret) = unsafe {
        register_boxed(f, |opaque| {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                ptr::null_mut(),
                id as c_int,
                Some(cb),
                opaque,
                Some(free),
            )
        })
    }?;
    Ok(ret)
}

/// Boxes `value` and hands the pointer to `register`, a libvirt call that
/// returns a negative value when it fails; the box is then freed here and
/// libvirt's last error returned. Returns the pointer and what `register`
/// returned.
///
/// # Safety
/// When `register` fails, it must have neither kept nor freed the pointer.
pub(super) unsafe fn register_boxed<T>(
    value: T,
    register: impl FnOnce(*mut std::os::raw::c_void) -> c_int,
) -> Result<(*mut T, c_int), Error> {
    let raw = Box::into_raw(Box::new(value));
    let ret = register(raw.cast::<std::os::raw::c_void>());
    if ret < 0 {
        let err = Error::last_error();
        // SAFETY: the failed call neither kept nor freed `raw` (caller
        // contract), so it is still ours to free, once.
        drop(unsafe { Box::from_raw(raw) });
        return Err(err);
    }
    Ok((raw, ret))
}

/// Removes the registration `reg` from `conn`. libvirt frees the closure
/// (at once, or after an event being dispatched right now returns). On a
/// dead remote connection the local callback is still removed; the error
/// is returned.
pub fn deregister_event(
    conn: &virt::connect::Connect,
    reg: EventRegistration,
) -> Result<(), Error> {
    // SAFETY: `conn` is valid; `reg.0` is a callback id returned for this
    // connection, used once (the registration is consumed).
    let ret = unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), reg.0) };
    if ret < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// Registers `f` for every domain's lifecycle events on `conn`. Needs the
/// default event implementation registered before `conn` was opened and a
/// thread running it (see `events::start_event_loop`).
pub fn register_lifecycle(
    conn: &virt::connect::Connect,
    f: LifecycleFn,
) -> Result<EventRegistration, Error> {
    // SAFETY: for VIR_DOMAIN_EVENT_ID_LIFECYCLE libvirt calls the callback
    // with the virConnectDomainEventCallback signature that
    // `lifecycle_trampoline` has; the generic type is only how the C API
    // passes it (the VIR_DOMAIN_EVENT_CALLBACK cast in C).
    let cb = unsafe { std::mem::transmute::<LifecycleCb, GenericCb>(lifecycle_trampoline) };
    // SAFETY: the trampoline reads its opaque as a LifecycleFn and
    // `free_lifecycle` frees a Box<LifecycleFn>.
    let id = unsafe {
        register_any(
            conn,
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            cb,
            f,
            free_lifecycle,
        )
    }?;
    Ok(EventRegistration(id))
}

/// Domain events other than lifecycle that tell the agent a domain's
/// definition or tunables changed (what it caches between reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeEvent {
    /// `VIR_DOMAIN_EVENT_ID_DEVICE_ADDED`.
    DeviceAdded,
    /// `VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED`.
    DeviceRemoved,
    /// `VIR_DOMAIN_EVENT_ID_TUNABLE` (I/O limits, CPU tunables, ...).
    Tunable,
    /// `VIR_DOMAIN_EVENT_ID_METADATA_CHANGE`.
    MetadataChange,
}

impl ChangeEvent {
    pub const ALL: [ChangeEvent; 4] = [
        ChangeEvent::DeviceAdded,
        ChangeEvent::DeviceRemoved,
        ChangeEvent::Tunable,
        ChangeEvent::MetadataChange,
    ];
}

/// What runs (on the event-loop thread) for a [`ChangeEvent`]; gets the
/// domain's UUID and name. It must not call libvirt.
pub type ChangeFn = Box<dyn Fn(String, String) + Send + Sync>;

type DeviceCb = unsafe extern "C" fn(
    sys::virConnectPtr,
    sys::virDomainPtr,
    *const std::os::raw::c_char,
    *mut std::os::raw::c_void,
);
type TunableCb = unsafe extern "C" fn(
    sys::virConnectPtr,
    sys::virDomainPtr,
    sys::virTypedParameterPtr,
    c_int,
    *mut std::os::raw::c_void,
);
type MetadataCb = unsafe extern "C" fn(
    sys::virConnectPtr,
    sys::virDomainPtr,
    c_int,
    *const std::os::raw::c_char,
    *mut std::os::raw::c_void,
);

/// Runs the `ChangeFn` behind `opaque` for `dom`.
///
/// # Safety
/// `opaque` must be null or the `Box<ChangeFn>` leaked by
/// [`register_change`] and not yet freed; `dom` null or valid for the call.
unsafe fn fire_change(dom: sys::virDomainPtr, opaque: *mut std::os::raw::c_void) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: caller contract: `opaque` is the live Box<ChangeFn>.
    let f = unsafe { &*(opaque as *const ChangeFn) };
    // SAFETY: caller contract: `dom` is null or valid during the call.
    let (uuid, name) = unsafe { domain_ids(dom) };
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(uuid, name)));
}

/// C callback for DEVICE_ADDED / DEVICE_REMOVED.
unsafe extern "C" fn device_trampoline(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _alias: *const std::os::raw::c_char,
    opaque: *mut std::os::raw::c_void,
) {
    // SAFETY: libvirt passes the registration's opaque (freed only after
    // the last callback returned) and the event's domain, valid for the call.
    unsafe { fire_change(dom, opaque) }
}

/// C callback for TUNABLE.
unsafe extern "C" fn tunable_trampoline(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _params: sys::virTypedParameterPtr,
    _nparams: c_int,
    opaque: *mut std::os::raw::c_void,
) {
    // SAFETY: as in `device_trampoline`.
    unsafe { fire_change(dom, opaque) }
}

/// C callback for METADATA_CHANGE.
unsafe extern "C" fn metadata_trampoline(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _kind: c_int,
    _nsuri: *const std::os::raw::c_char,
    opaque: *mut std::os::raw::c_void,
) {
    // SAFETY: as in `device_trampoline`.
    unsafe { fire_change(dom, opaque) }
}

/// Frees a change closure when libvirt drops the registration.
unsafe extern "C" fn free_change(opaque: *mut std::os::raw::c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from Box::into_raw in `register_change` and
        // libvirt calls the free callback exactly once.
        drop(unsafe { Box::from_raw(opaque as *mut ChangeFn) });
    }
}

/// Registers `f` for `event` on every domain of `conn` (same needs as
/// [`register_lifecycle`]).
pub fn register_change(
    conn: &virt::connect::Connect,
    event: ChangeEvent,
    f: ChangeFn,
) -> Result<EventRegistration, Error> {
    // libvirt calls the callback of each event id with that id's own
    // signature, which the trampoline below has; the generic type is only
    // how the C API passes it (the VIR_DOMAIN_EVENT_CALLBACK cast in C).
    let (id, cb) = match event {
        ChangeEvent::DeviceAdded | ChangeEvent::DeviceRemoved => {
            let id = if event == ChangeEvent::DeviceAdded {
                sys::VIR_DOMAIN_EVENT_ID_DEVICE_ADDED
            } else {
                sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED
            };
            // SAFETY: DEVICE_ADDED/REMOVED callbacks have DeviceCb's signature.
            let cb = unsafe { std::mem::transmute::<DeviceCb, GenericCb>(device_trampoline) };
            (id, cb)
        }
        ChangeEvent::Tunable => {
            // SAFETY: TUNABLE callbacks have TunableCb's signature.
            let cb = unsafe { std::mem::transmute::<TunableCb, GenericCb>(tunable_trampoline) };
            (sys::VIR_DOMAIN_EVENT_ID_TUNABLE, cb)
        }
        ChangeEvent::MetadataChange => {
            // SAFETY: METADATA_CHANGE callbacks have MetadataCb's signature.
            let cb = unsafe { std::mem::transmute::<MetadataCb, GenericCb>(metadata_trampoline) };
            (sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, cb)
        }
    };
    // SAFETY: every change trampoline reads its opaque as a ChangeFn and
    // `free_change` frees a Box<ChangeFn>.
    let id = unsafe { register_any(conn, id, cb, f, free_change) }?;
    Ok(EventRegistration(id))
}

/// The C callback libvirt calls when a connection closes.
unsafe extern "C" fn close_trampoline(
    _conn: sys::virConnectPtr,
    reason: c_int,
    opaque: *mut std::os::raw::c_void,
) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: `opaque` points into the `CloseRegistration` that owns the
    // closure; it is freed only after virConnectUnregisterCloseCallback
    // returned, which waits for a running callback (same lock).
    let f = unsafe { &*(opaque as *const CloseFn) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(reason)));
}

/// A close-callback registration. The closure is owned here (not by
/// libvirt: drivers without close callbacks, like the in-process test
/// driver, accept the registration but would never free it); release it
/// with [`unregister_close`].
pub struct CloseRegistration(*mut CloseFn);

impl std::fmt::Debug for CloseRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloseRegistration")
    }
}

// SAFETY: the pointer is a Box<CloseFn> (Send + Sync closure) only
// dereferenced by libvirt's callback and freed by `unregister_close`.
unsafe impl Send for CloseRegistration {}

/// Registers `f` to run when `conn` closes for a reason other than our own
/// close (EOF, keepalive timeout, error). A no-op on drivers that have no
/// such notion (the test driver).
pub fn register_close(
    conn: &virt::connect::Connect,
    f: CloseFn,
) -> Result<CloseRegistration, Error> {
    // SAFETY: `conn` is valid; the closure stays valid until
    // `unregister_close` frees it; no free callback is given, so libvirt
    // never frees it (nor keeps it when the call fails).
    let (raw, _) = unsafe {
        register_boxed(f, |opaque| {
            sys::virConnectRegisterCloseCallback(
                conn.as_ptr(),
                Some(close_trampoline),
                opaque,
                None,
            )
        })
    }?;
    Ok(CloseRegistration(raw))
}

/// Unregisters the close callback and frees its closure. After the
/// callback fired libvirt has already forgotten it, and the unregister call
/// reports an error, which is ignored: the closure is freed either way.
pub fn unregister_close(conn: &virt::connect::Connect, reg: CloseRegistration) {
    // SAFETY: `conn` is valid; the callback pointer is the one registered.
    // libvirt takes the close-callback lock, so no callback is running on
    // return and none will run afterwards.
    let _ =
        unsafe { sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(close_trampoline)) };
    // SAFETY: `reg.0` came from Box::into_raw in `register_close`, libvirt
    // no longer references it, and `reg` is consumed, so this runs once.
    drop(unsafe { Box::from_raw(reg.0) });
}
