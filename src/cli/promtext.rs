//! Reads the Prometheus text exposition format (what `GET /metrics`
//! serves) back into samples, for `virtpoolctl metrics --json`.
//!
//! Each sample keeps its name, its labels, its value and the type its
//! family declared (`# TYPE`): a histogram's `_bucket`, `_sum` and `_count`
//! samples are of type `histogram`. `# HELP` and other comments are
//! skipped; a sample's optional timestamp is dropped.

use serde::Serialize;
use std::collections::BTreeMap;

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    #[serde(rename = "type")]
    pub kind: String,
    pub labels: BTreeMap<String, String>,
    /// A JSON number; `NaN`, `+Inf` and `-Inf` as those strings (JSON has
    /// no such numbers).
    pub value: serde_json::Value,
}

/// A line that is not a sample or comment of the text format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {problem}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub problem: String,
    pub text: String,
}

/// Every sample of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |problem: &str| ParseError {
            line: i + 1,
            problem: problem.to_string(),
            text: raw.to_string(),
        };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut w = c.split_whitespace();
            if w.next() == Some("TYPE") {
                match (w.next(), w.next()) {
                    (Some(name), Some(kind)) => {
                        types.insert(name.to_string(), kind.to_string());
                    }
                    _ => return Err(err("TYPE without a name and a type")),
                }
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(err("no metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = parse_labels(r, &mut labels).map_err(|p| err(&p.to_string()))?;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| err("no value"))?;
        out.push(Sample {
            name: name.to_string(),
            kind: family_type(&types, name).to_string(),
            labels,
            value: json_number(value).ok_or_else(|| err("value is not a number"))?,
        });
    }
    Ok(out)
}

/// The declared type of the family `name` belongs to: its own, or that of
/// the name without a `_bucket`/`_sum`/`_count`/`_total`/`_created` suffix.
fn family_type<'a>(types: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    if let Some(t) = types.get(name) {
        return t;
    }
    ["_bucket", "_sum", "_count", "_total", "_created"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find_map(|base| types.get(base))
        .map_or("untyped", String::as_str)
}

/// What is wrong with a sample's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum LabelError {
    #[error("a label without '='")]
    NoEquals,
    #[error("a label without a name")]
    NoName,
    #[error("a label value without quotes")]
    Unquoted,
    #[error("an unterminated label value")]
    Unterminated,
    #[error("labels not separated by ','")]
    NoComma,
}

/// Reads `k="v",...}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, LabelError> {
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let eq = s.find('=').ok_or(LabelError::NoEquals)?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return Err(LabelError::NoName);
        }
        let r = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or(LabelError::Unquoted)?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(LabelError::Unterminated),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(LabelError::Unterminated),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = r[end + 1..].trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(LabelError::NoComma);
        }
    }
}

/// A sample value as JSON: an integer when it is one (exactly), else a
/// float; the non-finite values as strings.
fn json_number(v: &str) -> Option<serde_json::Value> {
    let f: f64 = match v {
        "+Inf" | "Inf" => return Some("+Inf".into()),
        "-Inf" => return Some("-Inf".into()),
        "NaN" => return Some("NaN".into()),
        _ => v.parse().ok()?,
    };
    if !f.is_finite() {
        return None;
    }
    // Integers below 2^53 are exact in f64 and in every JSON reader.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        return Some(serde_json::Value::from(f as i64));
    }
    serde_json::Number::from_f64(f).map(serde_json::Value::Number)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn samples_with_labels_types_and_values() {
        let text = "# HELP virtpool_up 1 while the agent runs.\n\
                    # TYPE virtpool_up gauge\n\
                    virtpool_up 1\n\
                    # TYPE virtpool_pool_budget gauge\n\
                    virtpool_pool_budget{pool=\"web\",resource=\"memory\"} 8589934592\n\
                    # TYPE virtpool_cycle_duration_seconds histogram\n\
                    virtpool_cycle_duration_seconds_bucket{le=\"0.005\"} 3\n\
                    virtpool_cycle_duration_seconds_bucket{le=\"+Inf\"} 4\n\
                    virtpool_cycle_duration_seconds_sum 0.0125\n\
                    other{a=\"q\\\"uote\\\\ and\\nline\" , b=\"\"} NaN 1700000000\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].name, "virtpool_up");
        assert_eq!(s[0].kind, "gauge");
        assert_eq!(s[0].value, serde_json::json!(1));
        assert_eq!(s[1].labels["pool"], "web");
        assert_eq!(s[1].value, serde_json::json!(8589934592u64));
        assert_eq!(s[3].kind, "histogram");
        assert_eq!(s[3].labels["le"], "+Inf");
        assert_eq!(s[4].value, serde_json::json!(0.0125));
        assert_eq!(s[5].kind, "untyped");
        assert_eq!(s[5].labels["a"], "q\"uote\\ and\nline");
        assert_eq!(s[5].labels["b"], "");
        assert_eq!(s[5].value, serde_json::json!("NaN"));
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for (text, problem) in [
            ("x{a=\"1\" 3\n", "labels not separated by ','"),
            ("x{a=1} 3\n", "a label value without quotes"),
            ("x{a=\"1} 3\n", "an unterminated label value"),
            ("x abc\n", "value is not a number"),
            ("x\n", "no value"),
        ] {
            let e = parse(&format!("# TYPE x gauge\n{text}")).unwrap_err();
            assert_eq!(e.line, 2, "{text}");
            assert_eq!(e.problem, problem, "{text}");
        }
    }
}
