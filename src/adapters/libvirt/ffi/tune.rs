//! Per-domain tunables: block I/O limits, blkio weight, the scheduler's
//! `cpu_shares` and CPU quota.

use std::ffi::{CStr, CString};

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

use super::params::{fetch_once, ParamArray, TypedParams};
use crate::core::model::{CpuQuota, IoTune, QuotaScope};

/// Buffer for `virDomainGetBlockIoTune` (`REMOTE_DOMAIN_BLOCK_IO_TUNE_PARAMETERS_MAX`;
/// QEMU reports about 20).
const IOTUNE_PARAMS: usize = 32;
/// Buffer for `virDomainGetBlkioParameters` (`REMOTE_DOMAIN_BLKIO_PARAMETERS_MAX`).
const BLKIO_PARAMS: usize = 16;

/// The field of [`IoTune`] that holds one limit.
type IoTuneField = fn(&mut IoTune) -> &mut u64;

/// The four `total_*` block I/O limits: libvirt's parameter name and the
/// field that holds it.
const IOTUNE_TOTALS: [(&CStr, IoTuneField); 4] = [
    (sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_BYTES_SEC, |t| {
        &mut t.total_bytes_sec
    }),
    (sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_BYTES_SEC_MAX, |t| {
        &mut t.total_bytes_sec_max
    }),
    (sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_IOPS_SEC, |t| {
        &mut t.total_iops_sec
    }),
    (sys::VIR_DOMAIN_BLOCK_IOTUNE_TOTAL_IOPS_SEC_MAX, |t| {
        &mut t.total_iops_sec_max
    }),
];

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
    let mut tune = IoTune::default();
    for (name, field) in IOTUNE_TOTALS {
        *field(&mut tune) = arr.ullong(name).unwrap_or(0);
    }
    Ok(tune)
}

fn cstr_name(name: &CStr) -> &str {
    name.to_str().unwrap_or_default()
}

/// Sets the four `total_*` block I/O limits of one disk as given.
pub fn set_block_iotune(dom: &Domain, disk: &str, tune: &IoTune, flags: u32) -> Result<(), Error> {
    let disk = disk_cstring(disk)?;
    let mut params = TypedParams::new();
    let mut tune = *tune;
    for (name, field) in IOTUNE_TOTALS {
        params.add_ullong(cstr_name(name), *field(&mut tune))?;
    }
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

/// What the scheduler parameters of a domain say (each `None` where the
/// driver's scheduler has no such parameter, e.g. the test driver).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheduler {
    pub cpu_shares: Option<u64>,
    /// The CPU-time limit: `global_period`/`global_quota` where libvirt has
    /// them (QEMU since libvirt 1.3.2), else `vcpu_period`/`vcpu_quota`.
    pub quota: Option<CpuQuota>,
}

/// Reads the scheduler parameters: `cpu_shares` and the CPU quota, in one
/// call (two round trips: the count, then the values).
pub fn get_scheduler(dom: &Domain, flags: u32) -> Result<Scheduler, Error> {
    let (_, count) = dom.scheduler_type()?;
    let size = usize::try_from(count).unwrap_or(0);
    let mut arr = ParamArray::zeroed(size);
    if size == 0 {
        return Ok(Scheduler::default());
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
    let cpu_shares = arr.ullong(sys::VIR_DOMAIN_SCHEDULER_CPU_SHARES);
    let mut quota = None;
    for scope in [QuotaScope::Global, QuotaScope::Vcpu] {
        let (p, q) = scope.params();
        let (Ok(p), Ok(q)) = (CString::new(p), CString::new(q)) else {
            continue;
        };
        if let (Some(period), Some(q)) = (arr.ullong(&p), arr.llong(&q)) {
            quota = Some(CpuQuota {
                scope,
                period,
                quota: q,
            });
            break;
        }
    }
    Ok(Scheduler { cpu_shares, quota })
}

/// Sets a CPU quota: its scope's period and quota in one call.
pub fn set_cpu_quota(dom: &Domain, q: &CpuQuota, flags: u32) -> Result<(), Error> {
    let (period, quota) = q.scope.params();
    let mut params = TypedParams::new();
    params.add_ullong(period, q.period)?;
    params.add_llong(quota, q.quota)?;
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
