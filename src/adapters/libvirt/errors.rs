//! libvirt's errors in the agent's terms ([`HvError`]), and which of them
//! a read or a write can live with.

use virt::error::{Error as VirtError, ErrorDomain, ErrorNumber};

use super::hypervisor::HvError;

/// Where a libvirt error came from, for the message.
pub(super) struct Failure {
    pub(super) err: VirtError,
    pub(super) what: String,
}

impl Failure {
    pub(super) fn new(err: VirtError, what: impl Into<String>) -> Failure {
        Failure {
            err,
            what: what.into(),
        }
    }
}

pub(super) type Res<T> = Result<T, Failure>;

/// Maps a libvirt error to the agent's terms (without looking at the
/// connection; [`Libvirt`] additionally checks `is_alive()`).
pub fn classify(err: &VirtError, what: &str) -> HvError {
    classify_parts(err.code(), err.domain(), err.message(), what)
}

/// [`classify`] on the parts of an error (testable without libvirt).
pub fn classify_parts(
    code: virt::error::ErrorNumberEnum,
    domain: virt::error::ErrorDomainEnum,
    msg: &str,
    what: &str,
) -> HvError {
    let text = format!("{what}: {msg}");
    let lower = msg.to_ascii_lowercase();
    if code.is(ErrorNumber::NoDomain) {
        HvError::NoDomain(text)
    } else if code.is(ErrorNumber::InvalidArg) {
        HvError::InvalidArg(text)
    } else if code.is(ErrorNumber::OperationInvalid) {
        HvError::OperationInvalid(text)
    } else if code.is(ErrorNumber::OperationTimeout) || code.is(ErrorNumber::AgentCommandTimeout) {
        HvError::Timeout(text)
    } else if (code.is(ErrorNumber::SystemError) && domain.is(ErrorDomain::Rpc))
        || code.is(ErrorNumber::NoConnect)
        || code.is(ErrorNumber::InvalidConn)
        || lower.contains("client socket is closed")
        || lower.contains("cannot recv data")
        || lower.contains("cannot write data")
        || lower.contains("end of file while reading data")
    {
        HvError::ConnectionLost(text)
    } else if lower.contains("timed out") {
        HvError::Timeout(text)
    } else {
        HvError::Other(text)
    }
}

/// "Flags LIVE and CONFIG are mutually exclusive": the driver wants one
/// call per target.
pub(super) fn is_exclusive_flags(e: &VirtError) -> bool {
    e.code().is(ErrorNumber::InvalidArg) && e.message().contains("mutually exclusive")
}

/// The driver does not have this call (or these flags) at all.
pub(super) fn is_unsupported(e: &VirtError) -> bool {
    e.code().is(ErrorNumber::NoSupport)
        || (e.code().is(ErrorNumber::InvalidArg) && e.message().contains("unsupported flags"))
}

pub(super) fn is_no_domain(e: &VirtError) -> bool {
    e.code().is(ErrorNumber::NoDomain)
}

/// Errors that make a whole observation fail (the rest are per-field).
pub(super) fn is_fatal_for_read(e: &VirtError) -> bool {
    is_no_domain(e) || matches!(classify(e, ""), HvError::ConnectionLost(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_table_maps_as_measured() {
        use virt::error::{ErrorDomainEnum, ErrorNumberEnum};
        let c = |n: ErrorNumber, d: ErrorDomain, m: &str| {
            classify_parts(
                ErrorNumberEnum::from(n),
                ErrorDomainEnum::from(d),
                m,
                "dom web-1",
            )
        };
        let no_dom = c(
            ErrorNumber::NoDomain,
            ErrorDomain::Test,
            "no domain with matching uuid",
        );
        assert_eq!(
            no_dom,
            HvError::NoDomain("dom web-1: no domain with matching uuid".into())
        );
        // (code, domain, message) → the kind of error it is.
        type Kind = fn(String) -> HvError;
        let table: [(ErrorNumber, ErrorDomain, &str, Kind); 9] = [
            (
                ErrorNumber::InvalidArg,
                ErrorDomain::Test,
                "requested vcpus is greater than max",
                HvError::InvalidArg,
            ),
            (
                ErrorNumber::OperationInvalid,
                ErrorDomain::Test,
                "domain is not running",
                HvError::OperationInvalid,
            ),
            (
                ErrorNumber::OperationTimeout,
                ErrorDomain::Qemu,
                "vcpu unplug request timed out",
                HvError::Timeout,
            ),
            (
                ErrorNumber::OperationFailed,
                ErrorDomain::Qemu,
                "unplug timed out",
                HvError::Timeout,
            ),
            (
                ErrorNumber::SystemError,
                ErrorDomain::Rpc,
                "Failed to connect socket",
                HvError::ConnectionLost,
            ),
            (
                ErrorNumber::InternalError,
                ErrorDomain::Rpc,
                "client socket is closed",
                HvError::ConnectionLost,
            ),
            (
                ErrorNumber::SystemError,
                ErrorDomain::Rpc,
                "Cannot recv data: Connection timed out",
                HvError::ConnectionLost,
            ),
            (
                ErrorNumber::ConfigUnsupported,
                ErrorDomain::Test,
                "bytes cannot be higher than max",
                HvError::Other,
            ),
            // A plain system error (e.g. a cgroup write) is not a lost connection.
            (
                ErrorNumber::SystemError,
                ErrorDomain::Qemu,
                "Unable to write to cgroup",
                HvError::Other,
            ),
        ];
        for (n, d, m, kind) in table {
            let got = c(n, d, m);
            let want = kind(String::new());
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(&want),
                "{m:?}: {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn nul_in_name_maps_to_invalid_arg() {
        // The only virt::error::Error constructible without libvirt.
        let e = VirtError::from(std::ffi::CString::new("a\0b").expect_err("has NUL"));
        assert!(matches!(classify(&e, "x"), HvError::InvalidArg(m) if m.starts_with("x: ")));
    }
}
