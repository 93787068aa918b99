//! Values with units, as operators write them in config files and API
//! requests: sizes (`"16GiB"`, `"512 MiB"`, `1073741824`), durations
//! (`"10s"`, `"1m 30s"`), and amounts that are either absolute or a share of
//! something (`"25%"`).

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// Formats bytes with binary units ("512.0 MiB", "16.0 GiB").
pub fn human_bytes(b: u64) -> String {
    bytesize::ByteSize::b(b).display().iec().to_string()
}

/// Why a value with a unit was refused. Each variant carries the text as
/// written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty size")]
    EmptySize,
    #[error("size {text:?} is negative")]
    NegativeSize { text: String },
    #[error("{text:?} is not a size like \"16GiB\" or \"512MiB\": no number before the unit")]
    NoNumber { text: String },
    #[error(
        "{text:?} is not a size like \"16GiB\" or \"512MiB\": unknown unit {unit:?} \
         (B, KB/MB/GB/TB/PB/EB = powers of 1000, K/M/G/T/P/E or KiB/MiB/GiB/TiB/PiB/EiB = powers of 1024)"
    )]
    UnknownUnit { text: String, unit: String },
    #[error("{text:?} is not a size: a fraction needs a unit (\"1.5GiB\"), bytes are whole")]
    FractionOfBytes { text: String },
    #[error("size {text:?} is too large: at most 16 EiB")]
    SizeTooLarge { text: String },
    #[error("{text:?} is not a duration like \"10s\" or \"1m\": {reason}")]
    NotADuration { text: String, reason: String },
    #[error("{text:?} is not a percentage like \"25%\"")]
    NotAPercentage { text: String },
    #[error("percentage {text:?} must be ≥ 0%")]
    NegativePercentage { text: String },
    #[error("{text:?} is not a whole number ≥ 0 or a percentage")]
    NotACount { text: String },
}

/// The factor of a size unit, as libvirt reads them (case does not
/// matter): none or `b`/`byte`/`bytes` = 1; `KB`, `MB`, `GB`, `TB`, `PB`,
/// `EB` = powers of 1000; `K`, `M`, `G`, `T`, `P`, `E` and `KiB`, `MiB`,
/// `GiB`, `TiB`, `PiB`, `EiB` = powers of 1024.
fn unit_factor(unit: &str) -> Option<u128> {
    let u = unit.to_ascii_lowercase();
    if u.is_empty() || u == "b" || u == "byte" || u == "bytes" {
        return Some(1);
    }
    let mut chars = u.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: u128 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    Some(base.pow(power))
}

/// Parses a size: a bare integer is bytes; otherwise a number (a fraction
/// is allowed with a unit: `"1.5GiB"`, rounded down to whole bytes) and a
/// unit as libvirt reads them: `KB`, `MB`, `GB`, `TB` are powers of 1000,
/// `KiB`, `MiB`, `GiB`, `TiB` and `K`, `M`, `G`, `T` powers of 1024.
/// So `"20GB"` is 20,000,000,000 bytes (18.6 GiB) and `"20G"` is 20 GiB.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UnitError::EmptySize);
    }
    if t.starts_with('-') {
        return Err(UnitError::NegativeSize { text: s.into() });
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(UnitError::NoNumber { text: s.into() });
    }
    let factor = unit_factor(unit).ok_or_else(|| UnitError::UnknownUnit {
        text: s.into(),
        unit: unit.into(),
    })?;
    if !fraction.is_empty() && factor == 1 {
        return Err(UnitError::FractionOfBytes { text: s.into() });
    }
    let too_large = || UnitError::SizeTooLarge { text: s.into() };
    // Exact arithmetic: the whole part, then the fraction's digits (at
    // most 18 count; the rest cannot add a whole byte to anything but
    // exabytes, and rounds down anyway).
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let digits = &fraction[..fraction.len().min(18)];
    let mut bytes = whole.checked_mul(factor).ok_or_else(too_large)?;
    if !digits.is_empty() {
        let num: u128 = digits.parse().map_err(|_| too_large())?;
        let den = 10u128.pow(digits.len() as u32);
        bytes = bytes
            .checked_add(num * factor / den)
            .ok_or_else(too_large)?;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a duration like `"10s"`, `"500ms"`, `"1m 30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(s.trim()).map_err(|e| UnitError::NotADuration {
        text: s.into(),
        reason: e.to_string(),
    })
}

/// Parses a percentage `"25%"` into a fraction (`None`: no `%`).
fn parse_percent(s: &str) -> Result<Option<f64>, UnitError> {
    let t = s.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Ok(None);
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| UnitError::NotAPercentage { text: s.into() })?;
    if !v.is_finite() || v < 0.0 {
        return Err(UnitError::NegativePercentage { text: s.into() });
    }
    Ok(Some(v / 100.0))
}

/// Which unit a plain (non-percent) value is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain count (vCPUs, IOPS).
    Count,
    /// Bytes, with size suffixes allowed.
    Bytes,
}

/// An amount that is absolute or a fraction of a reference (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Absolute(u64),
    /// A fraction: 0.25 for "25%".
    Fraction(f64),
}

impl Amount {
    /// Parses text in the given unit; percent always allowed here (callers
    /// reject it where it makes no sense).
    pub fn parse(s: &str, unit: Unit) -> Result<Amount, UnitError> {
        if let Some(f) = parse_percent(s)? {
            return Ok(Amount::Fraction(f));
        }
        match unit {
            Unit::Bytes => parse_bytes(s).map(Amount::Absolute),
            Unit::Count => {
                let t = s.trim();
                t.parse::<u64>()
                    .map(Amount::Absolute)
                    .map_err(|_| UnitError::NotACount { text: s.into() })
            }
        }
    }

    /// The absolute value against a reference (fractions round down).
    pub fn resolve(self, reference: u64) -> u64 {
        match self {
            Amount::Absolute(v) => v,
            Amount::Fraction(f) => {
                let v = (reference as f64 * f).floor();
                if v >= u64::MAX as f64 {
                    u64::MAX
                } else {
                    v as u64
                }
            }
        }
    }

    pub fn is_fraction(self) -> bool {
        matches!(self, Amount::Fraction(_))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Absolute(v) => write!(f, "{v}"),
            Amount::Fraction(x) => write!(f, "{}%", x * 100.0),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Absolute(v) => s.serialize_u64(*v),
            Amount::Fraction(x) => s.serialize_str(&format!("{}%", x * 100.0)),
        }
    }
}

/// Deserializes from an integer or a string with a unit. `U` picks the unit.
struct AmountVisitor(Unit);

impl Visitor<'_> for AmountVisitor {
    type Value = Amount;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unit::Bytes => {
                f.write_str("a size like \"16GiB\", a percentage like \"25%\", or bytes")
            }
            Unit::Count => f.write_str("a whole number or a percentage like \"25%\""),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
        u64::try_from(v)
            .map(Amount::Absolute)
            .map_err(|_| E::custom(format!("{v} is negative")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
        Ok(Amount::Absolute(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
        Err(E::custom(format!(
            "{v} is not a whole number (write sizes with a unit, e.g. \"1.5GiB\")"
        )))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
        Amount::parse(v, self.0).map_err(E::custom)
    }
}

/// Serde adapter: an [`Amount`] read as bytes (`#[serde(with = "units::bytes_amount")]`).
pub mod bytes_amount {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        d.deserialize_any(AmountVisitor(Unit::Bytes))
    }
    pub fn serialize<S: Serializer>(a: &Amount, s: S) -> Result<S::Ok, S::Error> {
        a.serialize(s)
    }
}

/// Serde adapter: an [`Amount`] read as a count.
pub mod count_amount {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        d.deserialize_any(AmountVisitor(Unit::Count))
    }
    pub fn serialize<S: Serializer>(a: &Amount, s: S) -> Result<S::Ok, S::Error> {
        a.serialize(s)
    }
}

/// A byte size read from an integer or `"16GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(AmountVisitor(Unit::Bytes))? {
            Amount::Absolute(v) => Ok(Bytes(v)),
            Amount::Fraction(_) => Err(de::Error::custom("a percentage is not allowed here")),
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A duration read from `"10s"`, `"1m"` or a whole number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Secs(pub Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Secs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"10s\" or \"1m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secs, E> {
                Ok(Secs(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secs, E> {
                u64::try_from(v)
                    .map(|v| Secs(Duration::from_secs(v)))
                    .map_err(|_| E::custom(format!("duration {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secs, E> {
                parse_duration(v).map(Secs).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// Rounds bytes down to a whole MiB.
pub fn floor_mib(b: u64) -> u64 {
    b - b % MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("16GiB").unwrap(), 16 << 30);
        assert_eq!(parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1073741824").unwrap(), 1 << 30);
        assert!(parse_bytes("-1GiB")
            .unwrap_err()
            .to_string()
            .contains("negative"));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn sizes_follow_libvirts_units() {
        // KB/MB/GB/TB are powers of 1000; KiB/MiB/GiB/TiB and K/M/G/T
        // are powers of 1024 (libvirt's convention).
        for (text, want) in [
            ("20GB", 20_000_000_000),
            ("20G", 20 << 30),
            ("20GiB", 20 << 30),
            ("1K", 1024),
            ("1k", 1024),
            ("1KB", 1000),
            ("1KiB", 1024),
            ("3M", 3 << 20),
            ("3MB", 3_000_000),
            ("2T", 2 << 40),
            ("2TB", 2_000_000_000_000),
            ("1.5GiB", 3 << 29),
            ("1.5 GB", 1_500_000_000),
            ("512 b", 512),
            ("512B", 512),
            ("4096", 4096),
        ] {
            assert_eq!(parse_bytes(text).unwrap(), want, "{text}");
        }
        // A fraction rounds down to whole bytes.
        assert_eq!(parse_bytes("1.0000000001KiB").unwrap(), 1024);
        for (bad, want) in [
            ("20 gigs", r#"unknown unit "gigs""#),
            ("1.5", "a fraction needs a unit"),
            ("GiB", "no number"),
            ("1.2.3GiB", "no number"),
            ("1e3GiB", r#"unknown unit "e3GiB""#),
            ("0x10", r#"unknown unit "x10""#),
            ("20Gb/s", r#"unknown unit "Gb/s""#),
            ("17EiB", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
        ] {
            let e = parse_bytes(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert_eq!(
            parse_bytes("16EiB").unwrap_err(),
            UnitError::SizeTooLarge {
                text: "16EiB".into()
            }
        );
        assert_eq!(parse_bytes("15EiB").unwrap(), 15 << 60);
    }

    #[test]
    fn amounts() {
        assert_eq!(
            Amount::parse("25%", Unit::Count).unwrap(),
            Amount::Fraction(0.25)
        );
        assert_eq!(
            Amount::parse("8", Unit::Count).unwrap(),
            Amount::Absolute(8)
        );
        assert!(Amount::parse("8GiB", Unit::Count).is_err());
        assert!(Amount::parse("-5%", Unit::Count).is_err());
        assert_eq!(Amount::Fraction(0.25).resolve(10), 2);
        assert_eq!(Amount::Fraction(1e30).resolve(10), u64::MAX);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn mib_rounding() {
        assert_eq!(floor_mib(MIB * 3 + 5), MIB * 3);
        assert_eq!(human_bytes(16 << 30), "16.0 GiB");
    }
}
