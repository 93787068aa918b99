//! Bulk statistics (`virConnectGetAllDomainStats`), copied out of libvirt
//! memory and freed.

use std::ffi::CStr;
use std::ptr;

use virt::error::Error;
use virt::sys;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::ffi::CString;
    use std::os::raw::c_int;

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
