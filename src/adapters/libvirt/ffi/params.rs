//! Typed-parameter lists (for setters) and arrays (filled by getters).

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_uint};
use std::ptr;

use virt::error::Error;
use virt::sys;

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
    pub(super) ptr: sys::virTypedParameterPtr,
    pub(super) len: c_int,
    pub(super) cap: c_int,
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

    /// Appends a parameter of a type libvirt knows (see [`ParamType`]).
    fn add<T: ParamType>(&mut self, name: &str, value: T) -> Result<(), Error> {
        let name = CString::new(name)?;
        // SAFETY: `self.ptr`/`self.len`/`self.cap` are either the empty
        // triple (null, 0, 0) or exactly what previous virTypedParamsAdd*
        // calls left there, which is the contract of virTypedParamsAdd*;
        // `name` is a valid NUL-terminated string living across the call.
        let ret = unsafe {
            (T::ADD)(
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

    /// Appends an unsigned long long parameter (libvirt rejects names
    /// longer than 79 bytes and names containing NUL).
    pub fn add_ullong(&mut self, name: &str, value: u64) -> Result<(), Error> {
        self.add(name, value)
    }

    /// Appends a signed long long parameter.
    pub fn add_llong(&mut self, name: &str, value: i64) -> Result<(), Error> {
        self.add(name, value)
    }

    /// Appends an unsigned int parameter.
    pub fn add_uint(&mut self, name: &str, value: u32) -> Result<(), Error> {
        self.add(name, value)
    }

    /// Reads back an unsigned long long parameter by name.
    pub fn get_ullong(&self, name: &str) -> Option<u64> {
        let name = CString::new(name).ok()?;
        get(self.ptr, self.len, &name)
    }

    /// Reads back an unsigned int parameter by name.
    pub fn get_uint(&self, name: &str) -> Option<u32> {
        let name = CString::new(name).ok()?;
        get(self.ptr, self.len, &name)
    }
}

/// `virTypedParamsAdd*` for values of type `T`.
type AddFn<T> = unsafe extern "C" fn(
    *mut sys::virTypedParameterPtr,
    *mut c_int,
    *mut c_int,
    *const c_char,
    T,
) -> c_int;

/// `virTypedParamsGet*` for values of type `T`.
type GetFn<T> =
    unsafe extern "C" fn(sys::virTypedParameterPtr, c_int, *const c_char, *mut T) -> c_int;

/// A value type libvirt has typed parameters of, with its
/// `virTypedParamsAdd*` and `virTypedParamsGet*` functions.
trait ParamType: Copy + Default {
    const ADD: AddFn<Self>;
    const GET: GetFn<Self>;
}

impl ParamType for u64 {
    const ADD: AddFn<u64> = sys::virTypedParamsAddULLong;
    const GET: GetFn<u64> = sys::virTypedParamsGetULLong;
}

impl ParamType for i64 {
    const ADD: AddFn<i64> = sys::virTypedParamsAddLLong;
    const GET: GetFn<i64> = sys::virTypedParamsGetLLong;
}

impl ParamType for c_uint {
    const ADD: AddFn<c_uint> = sys::virTypedParamsAddUInt;
    const GET: GetFn<c_uint> = sys::virTypedParamsGetUInt;
}

/// Reads the parameter `name` of type `T` from the `len` parameters at
/// `params`: `None` when there are none, it is missing or of another type.
fn get<T: ParamType>(params: sys::virTypedParameterPtr, len: c_int, name: &CStr) -> Option<T> {
    if params.is_null() || len <= 0 {
        return None;
    }
    let mut value = T::default();
    // SAFETY: `params` is non-null and points to at least `len` initialised
    // parameters (kept so by `TypedParams` and `ParamArray`, whose only
    // writers are libvirt and zeroing); `name` is NUL-terminated; `value`
    // is a valid out pointer of the type `T::GET` writes.
    let ret = unsafe { (T::GET)(params, len, name.as_ptr(), &mut value) };
    (ret == 1).then_some(value)
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
pub(super) struct ParamArray {
    pub(super) params: Vec<sys::virTypedParameter>,
    /// How many entries libvirt filled (<= params.len()).
    pub(super) filled: c_int,
}

impl ParamArray {
    pub(super) fn zeroed(n: usize) -> ParamArray {
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

    pub(super) fn capacity(&self) -> c_int {
        c_int::try_from(self.params.len()).unwrap_or(c_int::MAX)
    }

    pub(super) fn ullong(&mut self, name: &CStr) -> Option<u64> {
        get(self.params.as_mut_ptr(), self.filled, name)
    }

    pub(super) fn llong(&mut self, name: &CStr) -> Option<i64> {
        get(self.params.as_mut_ptr(), self.filled, name)
    }

    pub(super) fn uint(&mut self, name: &CStr) -> Option<u32> {
        get(self.params.as_mut_ptr(), self.filled, name)
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
pub(super) fn fetch_once(
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
}
