//! CPU time as a resource: amounts in millicores (1000 = one core busy
//! all the time), how operators write them (`6.5`, `"6.5"`, `"650%"`),
//! and how a limit maps onto libvirt's scheduler parameters (a quota of
//! microseconds per period, for the whole domain or for each vCPU).

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

use crate::core::units::{Amount, Secs};

/// Millicores in one core.
pub const MILLI: u64 = 1000;
/// The CFS period the agent writes with every limit: 100 ms, the kernel's
/// default (`cpu.cfs_period_us`, cgroup v2 `cpu.max`).
pub const PERIOD_US: u64 = 100_000;
/// Smallest quota the kernel takes (1 ms per period).
pub const MIN_QUOTA_US: u64 = 1000;
/// Largest quota libvirt takes (`VIR_CGROUP_CPU_QUOTA_MAX`); a larger one
/// read back means "no limit" (cgroup v2 `max`).
pub const MAX_QUOTA_US: i64 = 17_592_186_044_415;
/// Smallest limit per quota-carrying cgroup: 1 ms per 100 ms period.
pub const MIN_LIMIT: u64 = MIN_QUOTA_US * MILLI / PERIOD_US;
/// Largest CPU amount anywhere (budgets, `min`, `max`, reservations): as
/// many cores as the most vCPUs (65,536).
pub const MAX_MILLI: u64 = (1 << 16) * MILLI;

/// Why a CPU amount was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoresError {
    #[error("{0:?} is not an amount of CPU time like 0.5, \"6.5\" or \"650%\"")]
    NotCores(String),
    #[error("CPU time {0:?} is negative")]
    Negative(String),
    #[error("CPU time {0:?} is too large")]
    TooLarge(String),
}

/// Formats millicores as cores for humans: `"0.5"`, `"2"`, `"1.25"`.
pub fn cores_text(m: u64) -> String {
    let (whole, frac) = (m / MILLI, m % MILLI);
    if frac == 0 {
        return whole.to_string();
    }
    let s = format!("{whole}.{frac:03}");
    s.trim_end_matches('0').to_string()
}

/// Formats millicores with the unit: `"0.5 cores"`, `"1 core"`.
pub fn human_cores(m: u64) -> String {
    let unit = if m == MILLI { "core" } else { "cores" };
    format!("{} {unit}", cores_text(m))
}

/// Millicores of `cores` (rounded to the nearest millicore).
fn from_f64(cores: f64, text: &str) -> Result<u64, CoresError> {
    if !cores.is_finite() {
        return Err(CoresError::NotCores(text.to_owned()));
    }
    if cores < 0.0 {
        return Err(CoresError::Negative(text.to_owned()));
    }
    let m = (cores * MILLI as f64).round();
    if m >= (u64::MAX / 2) as f64 {
        return Err(CoresError::TooLarge(text.to_owned()));
    }
    Ok(m as u64)
}

/// Parses CPU time written as cores (`"6.5"`) or as a percentage of one
/// core, the way `top` shows it (`"650%"`), into millicores.
pub fn parse_cores(s: &str) -> Result<u64, CoresError> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(CoresError::Negative(s.to_owned()));
    }
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| CoresError::NotCores(s.to_owned()))?;
    from_f64(v / scale, s)
}

/// A pool budget of CPU time: cores (`6.5`, `"6.5"`) or a share of the
/// host's allocatable CPU time (`"25%"`).
pub fn parse_budget(s: &str) -> Result<Amount, CoresError> {
    let t = s.trim();
    match t.strip_suffix('%') {
        Some(n) => {
            let v: f64 = n
                .trim()
                .parse()
                .map_err(|_| CoresError::NotCores(s.to_owned()))?;
            if !v.is_finite() {
                return Err(CoresError::NotCores(s.to_owned()));
            }
            if v < 0.0 {
                return Err(CoresError::Negative(s.to_owned()));
            }
            Ok(Amount::Fraction(v / 100.0))
        }
        None => parse_cores(t).map(Amount::Absolute),
    }
}

/// CPU time in millicores, read from a number of cores (`0.5`, `2`) or a
/// string (`"0.5"`, `"50%"` of one core); written as a number of cores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cores(pub u64);

struct CoresVisitor;

impl Visitor<'_> for CoresVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CPU time in cores, like 0.5, \"6.5\" or \"650%\"")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        v.checked_mul(MILLI)
            .ok_or_else(|| E::custom(CoresError::TooLarge(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(CoresError::Negative(v.to_string()))),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        from_f64(v, &v.to_string()).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_cores(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CoresVisitor).map(Cores)
    }
}

impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0 as f64 / MILLI as f64)
    }
}

/// Serde adapter for a CPU budget ([`Amount`] of millicores, or a share of
/// allocatable): `#[serde(with = "cpu::budget")]` on an `Option<Amount>`.
pub mod budget {
    use super::*;

    struct V;

    impl Visitor<'_> for V {
        type Value = Amount;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("CPU time in cores like 6.5 or \"6.5\", or a share like \"25%\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
            CoresVisitor.visit_u64(v).map(Amount::Absolute)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
            CoresVisitor.visit_i64(v).map(Amount::Absolute)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
            CoresVisitor.visit_f64(v).map(Amount::Absolute)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
            parse_budget(v).map_err(E::custom)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Amount>, D::Error> {
        d.deserialize_any(V).map(Some)
    }

    pub fn serialize<S: Serializer>(a: &Option<Amount>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(Amount::Absolute(m)) => Cores(*m).serialize(s),
            Some(frac) => frac.serialize(s),
            None => s.serialize_none(),
        }
    }
}

/// How CPU-time limits move (`[cpu]`): the stability rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuTuning {
    /// Limit changes smaller than this are not issued (millicores): the
    /// dead band.
    pub min_change: u64,
    /// Demand policy: the largest decrease of a limit per cycle,
    /// millicores or a fraction of the current limit.
    pub max_shrink: Amount,
    /// Demand policy: a raised limit is not lowered again before this.
    pub cooldown: Duration,
    /// Demand policy: the fraction of its limit a guest is left idle
    /// (the limit is what it uses / (1 − this)).
    pub target_idle: f64,
}

impl Default for CpuTuning {
    fn default() -> Self {
        CpuTuning {
            min_change: 50,
            max_shrink: Amount::Fraction(0.25),
            cooldown: Duration::from_secs(30),
            target_idle: 0.20,
        }
    }
}

/// `[cpu]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCpuTuning {
    min_change: Option<Cores>,
    #[serde(default, with = "budget")]
    max_shrink: Option<Amount>,
    cooldown: Option<Secs>,
    #[serde(default, with = "budget")]
    target_idle: Option<Amount>,
}

impl RawCpuTuning {
    /// The validated settings; each problem (naming its key) into
    /// `problems`. Durations are at most `max_duration`.
    pub fn build(self, max_duration: Duration, problems: &mut Vec<String>) -> CpuTuning {
        let d = CpuTuning::default();
        let min_change = self.min_change.map_or(d.min_change, |c| c.0);
        if min_change > MAX_MILLI {
            problems.push(format!(
                "cpu.min_change ({}) is out of range: at most {}",
                human_cores(min_change),
                human_cores(MAX_MILLI)
            ));
        }
        let max_shrink = self.max_shrink.unwrap_or(d.max_shrink);
        match max_shrink {
            Amount::Absolute(0) => problems
                .push("cpu.max_shrink must be more than 0 (it would forbid every decrease)".into()),
            Amount::Fraction(f) if f <= 0.0 || f > 1.0 => problems.push(format!(
                "cpu.max_shrink ({max_shrink}) must be more than 0% and at most 100%"
            )),
            _ => {}
        }
        let cooldown = self.cooldown.map_or(d.cooldown, |s| s.0);
        if cooldown > max_duration {
            problems.push(format!(
                "cpu.cooldown ({}) is out of range: 0s to {}",
                humantime::format_duration(cooldown),
                humantime::format_duration(max_duration)
            ));
        }
        let target_idle = match self.target_idle {
            None => d.target_idle,
            Some(Amount::Fraction(f)) if f < 1.0 => f,
            Some(other) => {
                problems.push(format!(
                    "cpu.target_idle ({}) must be a percentage below 100%",
                    match other {
                        Amount::Absolute(m) => cores_text(m),
                        f => f.to_string(),
                    }
                ));
                d.target_idle
            }
        };
        CpuTuning {
            min_change,
            max_shrink,
            cooldown,
            target_idle,
        }
    }
}

/// Which scheduler parameters carry a domain's CPU-time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaScope {
    /// `global_period` / `global_quota`: one quota for the whole domain
    /// (its vCPUs, emulator and I/O threads together).
    Global,
    /// `vcpu_period` / `vcpu_quota`: the same quota for each vCPU (hosts
    /// whose libvirt has no global quota).
    Vcpu,
}

impl QuotaScope {
    /// The libvirt parameter names: (period, quota).
    pub fn params(self) -> (&'static str, &'static str) {
        match self {
            QuotaScope::Global => ("global_period", "global_quota"),
            QuotaScope::Vcpu => ("vcpu_period", "vcpu_quota"),
        }
    }
}

/// A CPU bandwidth limit as libvirt's scheduler parameters carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuQuota {
    pub scope: QuotaScope,
    /// Microseconds.
    pub period: u64,
    /// Microseconds per period; below 1000 (libvirt's -1, an unset 0) or
    /// above [`MAX_QUOTA_US`] (cgroup v2 `max`): no limit.
    pub quota: i64,
}

impl CpuQuota {
    /// No limit, in `scope`.
    pub fn unlimited(scope: QuotaScope) -> CpuQuota {
        CpuQuota {
            scope,
            period: PERIOD_US,
            quota: -1,
        }
    }

    /// Whether it limits anything.
    pub fn is_limited(&self) -> bool {
        (MIN_QUOTA_US as i64..=MAX_QUOTA_US).contains(&self.quota) && self.period > 0
    }

    /// The limit in millicores for a domain with `vcpus` online vCPUs:
    /// all of them when nothing is limited.
    pub fn millicores(&self, vcpus: u64) -> u64 {
        let all = vcpus.saturating_mul(MILLI);
        if !self.is_limited() {
            return all;
        }
        let carriers = match self.scope {
            QuotaScope::Global => 1,
            QuotaScope::Vcpu => u128::from(vcpus),
        };
        let m = u128::from(self.quota.unsigned_abs()) * carriers * u128::from(MILLI)
            / u128::from(self.period);
        u64::try_from(m).unwrap_or(u64::MAX).min(all)
    }

    /// The scheduler values that set a limit of `m` millicores on a domain
    /// with `vcpus` online vCPUs in `scope`: every vCPU's worth is no limit
    /// at all (-1); otherwise [`PERIOD_US`] and the quota, at least 1 ms
    /// (per vCPU in the `vcpu` scope). Reads back as `m` through
    /// [`CpuQuota::millicores`] (for up to 100 vCPUs in the `vcpu` scope).
    pub fn for_limit(m: u64, vcpus: u64, scope: QuotaScope) -> CpuQuota {
        if m >= vcpus.saturating_mul(MILLI) {
            return CpuQuota::unlimited(scope);
        }
        let total = m.saturating_mul(PERIOD_US / MILLI);
        let quota = match scope {
            QuotaScope::Global => total,
            QuotaScope::Vcpu => total.div_ceil(vcpus.max(1)),
        };
        CpuQuota {
            scope,
            period: PERIOD_US,
            quota: i64::try_from(quota.max(MIN_QUOTA_US)).unwrap_or(MAX_QUOTA_US),
        }
    }

    /// The smallest limit this scope can set on a domain with `vcpus`
    /// online vCPUs (1 ms per period per quota-carrying cgroup).
    pub fn min_limit(scope: QuotaScope, vcpus: u64) -> u64 {
        match scope {
            QuotaScope::Global => MIN_LIMIT,
            QuotaScope::Vcpu => MIN_LIMIT.saturating_mul(vcpus.max(1)),
        }
    }
}

/// Average CPU use in millicores of `delta_ns` of CPU time over
/// `elapsed_ns` of wall time.
pub fn used_millicores(delta_ns: u64, elapsed_ns: u64) -> Option<u64> {
    if elapsed_ns == 0 {
        return None;
    }
    let m = delta_ns as u128 * MILLI as u128 / elapsed_ns as u128;
    Some(u64::try_from(m).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_written_three_ways() {
        assert_eq!(parse_cores("6.5"), Ok(6500));
        assert_eq!(parse_cores("650%"), Ok(6500));
        assert_eq!(parse_cores(" 0.25 "), Ok(250));
        assert_eq!(parse_cores("50 %"), Ok(500));
        assert_eq!(parse_cores("1.2345"), Ok(1235));
        assert!(matches!(parse_cores("-1"), Err(CoresError::Negative(_))));
        assert!(matches!(parse_cores("lots"), Err(CoresError::NotCores(_))));
        assert!(matches!(parse_cores("inf"), Err(CoresError::NotCores(_))));
        assert!(matches!(parse_cores("1e300"), Err(CoresError::TooLarge(_))));
        assert_eq!(parse_budget("25%"), Ok(Amount::Fraction(0.25)));
        assert_eq!(parse_budget("6.5"), Ok(Amount::Absolute(6500)));
        assert!(parse_budget("-5%").is_err());
    }

    #[test]
    fn cores_read_from_numbers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: Cores,
            b: Cores,
            c: Cores,
            #[serde(with = "budget")]
            d: Option<Amount>,
        }
        let t: T = toml::from_str("a = 2\nb = 0.5\nc = \"650%\"\nd = \"25%\"").unwrap();
        assert_eq!((t.a.0, t.b.0, t.c.0), (2000, 500, 6500));
        assert_eq!(t.d, Some(Amount::Fraction(0.25)));
        let e = toml::from_str::<T>("a = -2\nb = 1\nc = 1\nd = 1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        assert_eq!(serde_json::to_string(&Cores(1500)).unwrap(), "1.5");
    }

    #[test]
    fn human_text() {
        assert_eq!(human_cores(500), "0.5 cores");
        assert_eq!(human_cores(1000), "1 core");
        assert_eq!(human_cores(1250), "1.25 cores");
        assert_eq!(human_cores(1), "0.001 cores");
        assert_eq!(cores_text(12000), "12");
    }

    #[test]
    fn quota_round_trips() {
        for scope in [QuotaScope::Global, QuotaScope::Vcpu] {
            for vcpus in [1u64, 2, 3, 7, 64, 100] {
                let lo = CpuQuota::min_limit(scope, vcpus);
                for m in [
                    lo,
                    lo + 1,
                    333,
                    500,
                    999,
                    1000,
                    1001,
                    2500,
                    vcpus * 1000 - 1,
                ] {
                    if m < lo || m >= vcpus * 1000 {
                        continue;
                    }
                    let q = CpuQuota::for_limit(m, vcpus, scope);
                    assert!(q.is_limited(), "{scope:?} {vcpus} {m}");
                    assert_eq!(q.millicores(vcpus), m, "{scope:?} {vcpus} vCPUs {m}: {q:?}");
                }
                let all = CpuQuota::for_limit(vcpus * 1000, vcpus, scope);
                assert!(!all.is_limited());
                assert_eq!(all.millicores(vcpus), vcpus * 1000);
            }
        }
        // Other periods read as what they limit.
        let q = CpuQuota {
            scope: QuotaScope::Global,
            period: 50_000,
            quota: 25_000,
        };
        assert_eq!(q.millicores(4), 500);
        // Unlimited in every spelling.
        for quota in [-1, 0, MAX_QUOTA_US + 1, i64::MAX] {
            let q = CpuQuota {
                scope: QuotaScope::Global,
                period: 100_000,
                quota,
            };
            assert_eq!(q.millicores(3), 3000, "{quota}");
        }
    }

    #[test]
    fn use_from_cpu_time() {
        assert_eq!(used_millicores(5_000_000_000, 10_000_000_000), Some(500));
        assert_eq!(used_millicores(1, 0), None);
    }
}
