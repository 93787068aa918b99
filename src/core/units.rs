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

/// Parses a size: a bare integer is bytes; otherwise a number with a unit
/// (`KiB`, `MiB`, `GiB`, `TiB`, and the decimal `KB`, `MB`, ...).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    if t.starts_with('-') {
        return Err(format!("size {s:?} is negative"));
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size like \"16GiB\" or \"512MiB\": {e}"))
}

/// Parses a duration like `"10s"`, `"500ms"`, `"1m 30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"10s\" or \"1m\": {e}"))
}

/// Parses a percentage `"25%"` into a fraction in 0..=max_pct/100.
fn parse_percent(s: &str) -> Result<Option<f64>, String> {
    let t = s.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Ok(None);
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage like \"25%\""))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("percentage {s:?} must be ≥ 0%"));
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
    pub fn parse(s: &str, unit: Unit) -> Result<Amount, String> {
        if let Some(f) = parse_percent(s)? {
            return Ok(Amount::Fraction(f));
        }
        match unit {
            Unit::Bytes => parse_bytes(s).map(Amount::Absolute),
            Unit::Count => {
                let t = s.trim();
                t.parse::<u64>()
                    .map(Amount::Absolute)
                    .map_err(|_| format!("{s:?} is not a whole number ≥ 0 or a percentage"))
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
        assert!(parse_bytes("-1GiB").unwrap_err().contains("negative"));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("").is_err());
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
