//! Raw libvirt calls the `virt` crate does not wrap (block I/O limits, blkio
//! and scheduler typed parameters). This is the only module of the agent
//! with `unsafe`; everything it exports is safe.
//!
//! Memory rules kept here:
//! - parameter lists built by `virTypedParamsAdd*` are owned by
//!   [`TypedParams`] and released with `virTypedParamsFree` on drop;
//! - parameter arrays filled by a `virDomainGet*Parameters` call live in a
//!   Rust `Vec` owned by [`ParamArray`], whose drop runs
//!   `virTypedParamsClear` to release strings libvirt put inside.
//!
//! Only functions present in libvirt 9.0.0 are called (`virt::sys`
//! declares newer ones that would fail at link time).

use std::ffi::{CStr, CString};
use std::os::raw::{c_int, c_uint};
use std::ptr;

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

use crate::core::model::IoTune;

static INIT: std::sync::Once = std::sync::Once::new();

/// Initialises libvirt's global state (thread-local error slots). Opening a
/// connection does it too, but the typed-parameter helpers may run before
/// any connection exists and crash without it.
fn ensure_init() {
    INIT.call_once(|| {
        // SAFETY: virInitialize takes no arguments, is idempotent and
        // thread-safe (guarded by virOnce inside libvirt).
        let ret = unsafe { sys::virInitialize() };
        if ret < 0 {
            tracing::error!("virInitialize failed");
        }
    });
}

/// A list of typed parameters allocated by libvirt, for a setter call.
/// Freed with `virTypedParamsFree` when dropped, on every path.
#[derive(Debug)]
pub struct TypedParams {
    ptr: sys::virTypedParameterPtr,
    len: c_int,
    cap: c_int,
}

impl Default for TypedParams {
    fn default() -> Self {
        Self::new()
    }
}

impl TypedParams {
    /// An empty list (allocates nothing until the first `add_*`).
    pub fn new() -> TypedParams {
        ensure_init();
        TypedParams {
            ptr: ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    /// Number of parameters in the list.
    pub fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(0)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends an unsigned long long parameter (libvirt rejects names
    /// longer than 79 bytes and names containing NUL).
    pub fn add_ullong(&mut self, name: &str, value: u64) -> Result<(), Error> {
        let name = CString::new(name)?;
        // SAFETY: `self.ptr`/`self.len`/`self.cap` are either the empty
        // triple (null, 0, 0) or exactly what previous virTypedParamsAdd*
        // calls left there, which is the contract of virTypedParamsAdd*;
        // `name` is a valid NUL-terminated string living across the call.
        let ret = unsafe {
            sys::virTypedParamsAddULLong(
                &mut self.ptr,
                &mut self.len,
                &mut self.cap,
                name.as_ptr(),
                value,
            )
        };
        if ret < 0 {
            return Err(Error::last_error());
        }
        Ok(())
    }

    /// Appends an unsigned int parameter.
    pub fn add_uint(&mut self, name: &str, value: u32) -> Result<(), Error> {
        let name = CString::new(name)?;
        // SAFETY: as in `add_ullong`: the triple is owned by `self` and only
        // ever updated by libvirt; `name` outlives the call.
        let ret = unsafe {
            sys::virTypedParamsAddUInt(
                &mut self.ptr,
                &mut self.len,
                &mut self.cap,
                name.as_ptr(),
                value,
            )
        };
        if ret < 0 {
            return Err(Error::last_error());
        }
        Ok(())
    }

    /// Reads back an unsigned long long parameter by name.
    pub fn get_ullong(&self, name: &str) -> Option<u64> {
        let name = CString::new(name).ok()?;
        let mut value: u64 = 0;
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: `self.ptr` points to `self.len` initialised parameters
        // (maintained by libvirt); `value` is a valid out pointer.
        let ret =
            unsafe { sys::virTypedParamsGetULLong(self.ptr, self.len, name.as_ptr(), &mut value) };
        (ret == 1).then_some(value)
    }

    /// Reads back an unsigned int parameter by name.
    pub fn get_uint(&self, name: &str) -> Option<u32> {
        let name = CString::new(name).ok()?;
        let mut value: c_uint = 0;
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: as in `get_ullong`.
        let ret =
            unsafe { sys::virTypedParamsGetUInt(self.ptr, self.len, name.as_ptr(), &mut value) };
        (ret == 1).then_some(value)
    }
}

impl Drop for TypedParams {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the list was allocated by virTypedParamsAdd* and holds
            // `self.len` parameters; it is freed exactly once (the pointer is
            // nulled right after).
            unsafe { sys::virTypedParamsFree(self.ptr, self.len) };
            self.ptr = ptr::null_mut();
            self.len = 0;
            self.cap = 0;
        }
    }
}

/// A caller-allocated array filled by a libvirt getter. Strings libvirt
/// stored inside are released with `virTypedParamsClear` on drop; the array
/// itself is a Rust `Vec`.
struct ParamArray {
    params: Vec<sys::virTypedParameter>,
    /// How many entries libvirt filled (<= params.len()).
    filled: c_int,
}

impl ParamArray {
    fn zeroed(n: usize) -> ParamArray {
        let blank = sys::virTypedParameter {
            field: [0; 80],
            type_: 0,
            value: sys::_virTypedParameterValue { ul: 0 },
        };
        ParamArray {
            params: vec![blank; n],
            filled: 0,
        }
    }

    fn capacity(&self) -> c_int {
        c_int::try_from(self.params.len()).unwrap_or(c_int::MAX)
    }

    fn ullong(&mut self, name: &CStr) -> Option<u64> {
        let mut value: u64 = 0;
        if self.filled <= 0 {
            return None;
        }
        // SAFETY: `params` holds at least `filled` entries initialised by
        // libvirt (or zeroed); `name` is NUL-terminated; `value` is valid.
        let ret = unsafe {
            sys::virTypedParamsGetULLong(
                self.params.as_mut_ptr(),
                self.filled,
                name.as_ptr(),
                &mut value,
            )
        };
        (ret == 1).then_some(value)
    }

    fn uint(&mut self, name: &CStr) -> Option<u32> {
        let mut value: c_uint = 0;
        if self.filled <= 0 {
            return None;
        }
        // SAFETY: as in `ullong`.
        let ret = unsafe {
            sys::virTypedParamsGetUInt(
                self.params.as_mut_ptr(),
                self.filled,
                name.as_ptr(),
                &mut value,
            )
        };
        (ret == 1).then_some(value)
    }
}

impl Drop for ParamArray {
    fn drop(&mut self) {
        if self.filled > 0 {
            // SAFETY: the first `filled` entries were written by libvirt;
            // virTypedParamsClear frees the strings they own and leaves the
            // array itself (owned by the Vec) alone.
            unsafe { sys::virTypedParamsClear(self.params.as_mut_ptr(), self.filled) };
            self.filled = 0;
        }
    }
}

/// Typed-parameter getters in one call: offer a buffer of `cap` entries
/// (at least the parameters the driver has) and let libvirt fill it —
/// instead of asking for the count first (half the round trips on a
/// remote connection). `cap`
/// must not exceed the RPC limit of the call (`REMOTE_*_PARAMETERS_MAX`).
fn fetch_once(
    cap: usize,
    mut call: impl FnMut(sys::virTypedParameterPtr, &mut c_int) -> c_int,
) -> Result<ParamArray, Error> {
    let mut arr = ParamArray::zeroed(cap);
    let mut filled = arr.capacity();
    if call(arr.params.as_mut_ptr(), &mut filled) < 0 {
        return Err(Error::last_error());
    }
    arr.filled = filled.clamp(0, arr.capacity());
    Ok(arr)
}

/// Buffer for `virDomainGetBlockIoTune` (`REMOTE_DOMAIN_BLOCK_IO_TUNE_PARAMETERS_MAX`;
/// QEMU reports about 20).
const IOTUNE_PARAMS: usize = 32;
/// Buffer for `virDomainGetBlkioParameters` (`REMOTE_DOMAIN_BLKIO_PARAMETERS_MAX`).
const BLKIO_PARAMS: usize = 16;

fn disk_cstring(disk: &str) -> Result<CString, Error> {
    Ok(CString::new(disk)?)
}

/// Reads the `total_*` block I/O limits of one disk (target name such as
/// `vda`, or its source path).
pub fn get_block_iotune(dom: &Domain, disk: &str, flags: u32) -> Result<IoTune, Error> {
    let disk = disk_cstring(disk)?;
    // SAFETY: `as_ptr` is only used while `dom` is borrowed, so the domain
    // reference stays valid for the whole call.
    let dptr = unsafe { dom.as_ptr() };
    let mut arr = fetch_once(IOTUNE_PARAMS, |params, n| {
        // SAFETY: `dptr` is valid (see above); `disk` is NUL-terminated and
        // outlives the call; `params` points to `*n` writable parameters.
        unsafe { sys::virDomainGetBlockIoTune(dptr, disk.as_ptr(), params, n, flags) }
    })?;
    Ok(IoTune {
        total_bytes_sec: arr
            .ullong(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_BYTES_SEC)
            .unwrap_or(0),
        total_bytes_sec_max: arr
            .ullong(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_BYTES_SEC_MAX)
            .unwrap_or(0),
        total_iops_sec: arr
            .ullong(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_IOPS_SEC)
            .unwrap_or(0),
        total_iops_sec_max: arr
            .ullong(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_IOPS_SEC_MAX)
            .unwrap_or(0),
    })
}

fn cstr_name(name: &CStr) -> &str {
    name.to_str().unwrap_or_default()
}

/// Sets the four `total_*` block I/O limits of one disk as given.
pub fn set_block_iotune(dom: &Domain, disk: &str, tune: &IoTune, flags: u32) -> Result<(), Error> {
    let disk = disk_cstring(disk)?;
    let mut params = TypedParams::new();
    params.add_ullong(
        cstr_name(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_BYTES_SEC),
        tune.total_bytes_sec,
    )?;
    params.add_ullong(
        cstr_name(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_BYTES_SEC_MAX),
        tune.total_bytes_sec_max,
    )?;
    params.add_ullong(
        cstr_name(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_IOPS_SEC),
        tune.total_iops_sec,
    )?;
    params.add_ullong(
        cstr_name(sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_IOPS_SEC_MAX),
        tune.total_iops_sec_max,
    )?;
    // SAFETY: `dom` is borrowed for the call so its pointer is valid; `disk`
    // is NUL-terminated; `params` owns `len` parameters built by libvirt and
    // is only read by the call (freed by its Drop afterwards).
    let ret = unsafe {
        sys::virDomainSetBlockIoTune(dom.as_ptr(), disk.as_ptr(), params.ptr, params.len, flags)
    };
    if ret < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// Reads the blkio `weight` (None when the driver does not report it).
pub fn get_blkio_weight(dom: &Domain, flags: u32) -> Result<Option<u32>, Error> {
    // SAFETY: `dom` is borrowed for the whole function.
    let dptr = unsafe { dom.as_ptr() };
    let mut arr = fetch_once(BLKIO_PARAMS, |params, n| {
        // SAFETY: `dptr` valid (see above); `params` points to `*n`
        // writable parameters.
        unsafe { sys::virDomainGetBlkioParameters(dptr, params, n, flags) }
    })?;
    Ok(arr.uint(sys::VIR_DOMAIN_BLKIO_WEIGHT))
}

/// Sets the blkio `weight`. The caller validates the range (the test driver
/// accepts anything).
pub fn set_blkio_weight(dom: &Domain, weight: u32, flags: u32) -> Result<(), Error> {
    let mut params = TypedParams::new();
    params.add_uint(cstr_name(sys::VIR_DOMAIN_BLKIO_WEIGHT), weight)?;
    // SAFETY: `dom` is borrowed so its pointer is valid; `params` owns `len`
    // libvirt-built parameters that the call only reads.
    let ret =
        unsafe { sys::virDomainSetBlkioParameters(dom.as_ptr(), params.ptr, params.len, flags) };
    if ret < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// Reads the `cpu_shares` scheduler parameter (None when the driver's
/// scheduler has no such parameter, e.g. the test driver).
pub fn get_cpu_shares(dom: &Domain, flags: u32) -> Result<Option<u64>, Error> {
    let (_, count) = dom.scheduler_type()?;
    let size = usize::try_from(count).unwrap_or(0);
    let mut arr = ParamArray::zeroed(size);
    if size == 0 {
        return Ok(None);
    }
    let mut filled = arr.capacity();
    // SAFETY: `dom` is borrowed so its pointer is valid; the array has
    // `filled` writable entries, as the call requires.
    let ret = unsafe {
        sys::virDomainGetSchedulerParametersFlags(
            dom.as_ptr(),
            arr.params.as_mut_ptr(),
            &mut filled,
            flags,
        )
    };
    if ret < 0 {
        return Err(Error::last_error());
    }
    arr.filled = filled.clamp(0, arr.capacity());
    Ok(arr.ullong(sys::VIR_DOMAIN_SCHEDULER_CPU_SHARES))
}

/// Sets the `cpu_shares` scheduler parameter.
pub fn set_cpu_shares(dom: &Domain, shares: u64, flags: u32) -> Result<(), Error> {
    let mut params = TypedParams::new();
    params.add_ullong(cstr_name(sys::VIR_DOMAIN_SCHEDULER_CPU_SHARES), shares)?;
    // SAFETY: `dom` is borrowed so its pointer is valid; `params` owns `len`
    // libvirt-built parameters that the call only reads.
    let ret = unsafe {
        sys::virDomainSetSchedulerParametersFlags(dom.as_ptr(), params.ptr, params.len, flags)
    };
    if ret < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// One domain's record from `virConnectGetAllDomainStats`, copied out of
/// libvirt memory: the integer values (booleans as 0/1, negative ones
/// dropped) of the parameters the caller asked for (`vcpu.current`,
/// `balloon.unused`, ...). The others (per-vCPU times, block and network
/// counters: dozens per domain on QEMU) are not copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsRecord {
    pub uuid: String,
    /// (parameter name, value), in the order libvirt returned them.
    pub numbers: Vec<(&'static str, u64)>,
}

impl StatsRecord {
    /// The value of one parameter, if the record has it.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.numbers
            .iter()
            .find_map(|&(k, v)| (k == name).then_some(v))
    }
}

/// Owns the list returned by `virConnectGetAllDomainStats`; frees it (and
/// the domain references inside) with `virDomainStatsRecordListFree`.
struct StatsList(*mut sys::virDomainStatsRecordPtr);

impl Drop for StatsList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the list came from virConnectGetAllDomainStats and is
            // freed exactly once; the function also unrefs the domains.
            unsafe { sys::virDomainStatsRecordListFree(self.0) };
        }
    }
}

/// Copies one typed parameter into `rec` if its name is in `wanted` and
/// its value an integer (or boolean) that fits a `u64`.
///
/// # Safety
/// `p` must point to an initialised parameter.
unsafe fn copy_param(p: &sys::virTypedParameter, wanted: &[&'static str], rec: &mut StatsRecord) {
    // SAFETY: `field` is a NUL-terminated array inside the parameter
    // (libvirt guarantees it; the array is 80 bytes).
    let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_bytes();
    let Some(&name) = wanted.iter().find(|w| w.as_bytes() == field) else {
        return;
    };
    let kind = u32::try_from(p.type_).unwrap_or(0);
    let number = match kind {
        sys::VIR_TYPED_PARAM_INT => {
            // SAFETY: the type tag says the `i` member is the one set.
            u64::try_from(unsafe { p.value.i }).ok()
        }
        sys::VIR_TYPED_PARAM_UINT => {
            // SAFETY: the type tag says the `ui` member is the one set.
            Some(u64::from(unsafe { p.value.ui }))
        }
        sys::VIR_TYPED_PARAM_LLONG => {
            // SAFETY: the type tag says the `l` member is the one set.
            u64::try_from(unsafe { p.value.l }).ok()
        }
        sys::VIR_TYPED_PARAM_ULLONG => {
            // SAFETY: the type tag says the `ul` member is the one set.
            Some(unsafe { p.value.ul })
        }
        sys::VIR_TYPED_PARAM_BOOLEAN => {
            // SAFETY: the type tag says the `b` member is the one set.
            Some(u64::from(unsafe { p.value.b } != 0))
        }
        _ => None,
    };
    if let Some(v) = number {
        rec.numbers.push((name, v));
    }
}

/// Bulk statistics of all domains (`stats` is a `VIR_DOMAIN_STATS_*` mask,
/// `flags` a `VIR_CONNECT_GET_ALL_DOMAINS_STATS_*` mask). Drivers may return
/// fewer groups than asked (the test driver fills only `state.*`). Only
/// the parameters named in `wanted` are copied.
pub fn all_domain_stats(
    conn: &virt::connect::Connect,
    stats: u32,
    flags: u32,
    wanted: &[&'static str],
) -> Result<Vec<StatsRecord>, Error> {
    let mut raw: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
    // SAFETY: `conn` is borrowed so its pointer is valid; `raw` is a valid
    // out pointer that libvirt fills with a NULL-terminated list.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut raw, flags) };
    let list = StatsList(raw);
    if n < 0 {
        return Err(Error::last_error());
    }
    let count = usize::try_from(n).unwrap_or(0);
    let mut out = Vec::with_capacity(count);
    if list.0.is_null() {
        return Ok(out);
    }
    for i in 0..count {
        // SAFETY: the list holds `count` record pointers (then a NULL), so
        // index `i < count` is in bounds.
        let rec_ptr = unsafe { *list.0.add(i) };
        if rec_ptr.is_null() {
            break;
        }
        // SAFETY: non-null records from libvirt are valid until the list is
        // freed, which happens after this loop (when `list` drops).
        let rec = unsafe { &*rec_ptr };
        let mut uuid_buf = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
        // SAFETY: `rec.dom` is a domain reference held by the list;
        // `uuid_buf` has the VIR_UUID_STRING_BUFLEN bytes the call writes.
        if unsafe { sys::virDomainGetUUIDString(rec.dom, uuid_buf.as_mut_ptr()) } < 0 {
            continue;
        }
        // SAFETY: libvirt wrote a NUL-terminated string into `uuid_buf`.
        let uuid = unsafe { CStr::from_ptr(uuid_buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut record = StatsRecord {
            uuid,
            ..StatsRecord::default()
        };
        let nparams = usize::try_from(rec.nparams).unwrap_or(0);
        for j in 0..nparams {
            // SAFETY: `params` holds `nparams` initialised parameters owned
            // by the list; `j < nparams`.
            unsafe { copy_param(&*rec.params.add(j), wanted, &mut record) };
        }
        out.push(record);
    }
    Ok(out)
}

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

/// A lifecycle registration on one connection (its callback id).
#[derive(Debug)]
pub struct LifecycleRegistration(c_int);

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
    let opaque = Box::into_raw(Box::new(f)).cast::<std::os::raw::c_void>();
    // SAFETY: `conn` is borrowed so its pointer is valid; a null domain
    // means "all domains"; `cb` fits event `id` (caller contract); `opaque`
    // stays valid until libvirt calls `free`.
    let ret = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            ptr::null_mut(),
            id as c_int,
            Some(cb),
            opaque,
            Some(free),
        )
    };
    if ret < 0 {
        let err = Error::last_error();
        // SAFETY: on failure libvirt does not keep or free `opaque` (the
        // free callback runs only for registered callbacks), so it is still
        // ours to free, once.
        drop(unsafe { Box::from_raw(opaque.cast::<T>()) });
        return Err(err);
    }
    Ok(ret)
}

/// Removes the registration with callback id `id` from `conn`. libvirt
/// frees the closure (at once, or after an event being dispatched right
/// now returns). On a dead remote connection the local callback is still
/// removed; the error is returned.
fn deregister_any(conn: &virt::connect::Connect, id: c_int) -> Result<(), Error> {
    // SAFETY: `conn` is valid; `id` is a callback id returned for this
    // connection, used once (callers consume their registration).
    let ret = unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
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
) -> Result<LifecycleRegistration, Error> {
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
    Ok(LifecycleRegistration(id))
}

/// Removes a lifecycle registration (see [`deregister_any`]).
pub fn deregister_lifecycle(
    conn: &virt::connect::Connect,
    reg: LifecycleRegistration,
) -> Result<(), Error> {
    deregister_any(conn, reg.0)
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

/// A [`ChangeEvent`] registration on one connection (its callback id).
#[derive(Debug)]
pub struct ChangeRegistration(c_int);

/// Registers `f` for `event` on every domain of `conn` (same needs as
/// [`register_lifecycle`]).
pub fn register_change(
    conn: &virt::connect::Connect,
    event: ChangeEvent,
    f: ChangeFn,
) -> Result<ChangeRegistration, Error> {
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
    Ok(ChangeRegistration(id))
}

/// Removes a change registration (see [`deregister_any`]).
pub fn deregister_change(
    conn: &virt::connect::Connect,
    reg: ChangeRegistration,
) -> Result<(), Error> {
    deregister_any(conn, reg.0)
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
    let raw = Box::into_raw(Box::new(f));
    // SAFETY: `conn` is valid; `raw` stays valid until `unregister_close`
    // (or the failure path below) frees it; no free callback is given,
    // so libvirt never frees it.
    let ret = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_trampoline),
            raw.cast::<std::os::raw::c_void>(),
            None,
        )
    };
    if ret < 0 {
        let err = Error::last_error();
        // SAFETY: libvirt did not keep the pointer; freed once here.
        drop(unsafe { Box::from_raw(raw) });
        return Err(err);
    }
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
    let raw = Box::into_raw(Box::new(ReadableWatch { sock, f }));
    // SAFETY: `fd` belongs to the socket inside `raw`, which is never
    // freed once registered, so it stays open; the callback has the
    // virEventHandleCallback signature; no free callback is given, so
    // libvirt never frees `raw`.
    let watch = unsafe {
        sys::virEventAddHandle(
            fd,
            sys::VIR_EVENT_HANDLE_READABLE as c_int,
            Some(readable_trampoline),
            raw.cast::<std::os::raw::c_void>(),
            None,
        )
    };
    if watch < 0 {
        let err = Error::last_error();
        // SAFETY: libvirt did not keep the pointer; freed once here.
        drop(unsafe { Box::from_raw(raw) });
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn typed_params_start_empty() {
        let p = TypedParams::new();
        assert!(p.is_empty());
        assert_eq!(p.len(), 0);
        assert_eq!(p.get_ullong("x"), None);
    }

    #[test]
    fn typed_params_add_and_read_back() {
        virt::error::clear_error_callback();
        let mut p = TypedParams::new();
        p.add_ullong("total_bytes_sec", 10_000_000).unwrap();
        p.add_ullong("total_bytes_sec_max", u64::MAX).unwrap();
        p.add_uint("weight", 500).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get_ullong("total_bytes_sec"), Some(10_000_000));
        assert_eq!(p.get_ullong("total_bytes_sec_max"), Some(u64::MAX));
        assert_eq!(p.get_uint("weight"), Some(500));
        // Wrong type or unknown name: not found.
        assert_eq!(p.get_ullong("weight"), None);
        assert_eq!(p.get_uint("nope"), None);
    }

    #[test]
    fn typed_params_grow_past_initial_capacity() {
        let mut p = TypedParams::new();
        for i in 0..100u64 {
            p.add_ullong(&format!("p{i}"), i * 3).unwrap();
        }
        assert_eq!(p.len(), 100);
        assert_eq!(p.get_ullong("p0"), Some(0));
        assert_eq!(p.get_ullong("p99"), Some(297));
    }

    #[test]
    fn typed_params_reject_bad_names() {
        virt::error::clear_error_callback();
        let mut p = TypedParams::new();
        // Field names are limited to VIR_TYPED_PARAM_FIELD_LENGTH (80) bytes.
        let long = "x".repeat(100);
        assert!(p.add_ullong(&long, 1).is_err());
        assert!(p.add_uint("nul\0inside", 1).is_err());
        assert!(p.is_empty());
        // The list stays usable after a failure.
        p.add_uint("ok", 7).unwrap();
        assert_eq!(p.get_uint("ok"), Some(7));
    }

    #[test]
    fn param_array_of_zero_is_harmless() {
        let mut a = ParamArray::zeroed(0);
        assert_eq!(a.ullong(sys::VIR_DOMAIN_BLKIO_WEIGHT), None);
        let mut b = ParamArray::zeroed(4);
        assert_eq!(b.uint(sys::VIR_DOMAIN_BLKIO_WEIGHT), None);
    }

    fn param(
        name: &str,
        type_: u32,
        value: sys::_virTypedParameterValue,
    ) -> sys::virTypedParameter {
        let mut field = [0 as std::os::raw::c_char; 80];
        for (dst, src) in field.iter_mut().zip(name.bytes()) {
            *dst = src as std::os::raw::c_char;
        }
        sys::virTypedParameter {
            field,
            type_: type_ as c_int,
            value,
        }
    }

    #[test]
    fn copy_param_reads_every_type() {
        let text = CString::new("vda").unwrap();
        let params = [
            param(
                "state.state",
                sys::VIR_TYPED_PARAM_INT,
                sys::_virTypedParameterValue { i: 1 },
            ),
            param(
                "neg",
                sys::VIR_TYPED_PARAM_INT,
                sys::_virTypedParameterValue { i: -1 },
            ),
            param(
                "vcpu.current",
                sys::VIR_TYPED_PARAM_UINT,
                sys::_virTypedParameterValue { ui: 3 },
            ),
            param(
                "l",
                sys::VIR_TYPED_PARAM_LLONG,
                sys::_virTypedParameterValue { l: 1 << 40 },
            ),
            param(
                "balloon.current",
                sys::VIR_TYPED_PARAM_ULLONG,
                sys::_virTypedParameterValue { ul: u64::MAX },
            ),
            param(
                "flag",
                sys::VIR_TYPED_PARAM_BOOLEAN,
                sys::_virTypedParameterValue { b: 1 },
            ),
            param(
                "d",
                sys::VIR_TYPED_PARAM_DOUBLE,
                sys::_virTypedParameterValue { d: 1.5 },
            ),
            param(
                "block.0.name",
                sys::VIR_TYPED_PARAM_STRING,
                sys::_virTypedParameterValue {
                    s: text.as_ptr().cast_mut(),
                },
            ),
        ];
        let mut rec = StatsRecord::default();
        let every = [
            "state.state",
            "neg",
            "vcpu.current",
            "l",
            "balloon.current",
            "flag",
            "d",
            "block.0.name",
        ];
        for p in &params {
            // SAFETY: each parameter is initialised with the member its tag
            // names; the string points to `text`, alive here.
            unsafe { copy_param(p, &every, &mut rec) };
        }
        assert_eq!(rec.number("state.state"), Some(1));
        assert_eq!(rec.number("neg"), None);
        assert_eq!(rec.number("vcpu.current"), Some(3));
        assert_eq!(rec.number("l"), Some(1 << 40));
        assert_eq!(rec.number("balloon.current"), Some(u64::MAX));
        assert_eq!(rec.number("flag"), Some(1));
        assert_eq!(rec.number("d"), None, "doubles are not copied");
        assert_eq!(rec.number("block.0.name"), None, "strings are not copied");
        assert_eq!(rec.numbers.len(), 5);

        // Only the parameters asked for are copied.
        let mut few = StatsRecord::default();
        for p in &params {
            // SAFETY: as above.
            unsafe { copy_param(p, &["vcpu.current", "flag", "absent"], &mut few) };
        }
        assert_eq!(few.numbers, vec![("vcpu.current", 3), ("flag", 1)]);
    }
}
