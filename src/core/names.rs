//! Which names the agent takes: pool names (the operator's own
//! identifiers, kept simple) and domain names (whatever libvirt accepts).
//!
//! Measured on libvirt 9.0 (test and QEMU drivers, `virsh define`): a
//! domain name may hold spaces, any Unicode letter or symbol, quotes,
//! `%`, `?`, `#`, `*`, `\`, and tab, DEL and C1 control characters;
//! both drivers refuse `/` and a newline (a carriage return reaches them
//! as a newline, and the other C0 controls are not valid in XML). The
//! QEMU driver also refuses `.` and `..` and names longer than 247 bytes
//! (it keeps `NAME.xml` files); the test driver takes those.
//!
//! The agent takes every domain name that is not empty, has no control
//! character (tab, DEL and C1 included: they cannot be typed on a command
//! line or shown in a table without confusion; such a domain is named by
//! its UUID) and no `/`, and is at most [`MAX_DOMAIN_NAME`] bytes long.

/// Longest pool name, in characters.
pub const MAX_POOL_NAME: usize = 64;
/// Longest domain name, in bytes: a file name's limit (libvirt's QEMU
/// driver keeps `NAME.xml`, so its names have at most 247 bytes).
pub const MAX_DOMAIN_NAME: usize = 255;

/// Why a name is refused. Each variant carries the name as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name {name:?} must be 1 to {MAX_POOL_NAME} characters")]
    PoolLength { name: String },
    #[error(
        "name {name:?} may contain only letters, digits, '-', '_' and '.', and must not start with '.'"
    )]
    PoolCharacters { name: String },
    #[error("domain name is empty")]
    DomainEmpty,
    #[error(
        "domain name {:?}… is {len} bytes long: at most {MAX_DOMAIN_NAME}",
        head(name)
    )]
    DomainLength { name: String, len: usize },
    #[error(
        "domain name {name:?} contains the control character {ch:?}: name the domain by its UUID"
    )]
    DomainControl { name: String, ch: char },
    #[error("domain name {name:?} contains '/', which libvirt refuses in names")]
    DomainSlash { name: String },
}

/// The first characters of a long name, for a message.
fn head(name: &str) -> String {
    name.chars().take(40).collect()
}

/// A pool name: 1 to [`MAX_POOL_NAME`] ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `.` (what an operator can type and a URL
/// can carry as it is).
pub fn pool_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.chars().count() > MAX_POOL_NAME {
        return Err(NameError::PoolLength { name: s.into() });
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || s.starts_with('.')
    {
        return Err(NameError::PoolCharacters { name: s.into() });
    }
    Ok(())
}

/// A domain name (or UUID) as the agent takes it: see the module.
pub fn domain_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::DomainEmpty);
    }
    if s.len() > MAX_DOMAIN_NAME {
        return Err(NameError::DomainLength {
            name: s.into(),
            len: s.len(),
        });
    }
    if let Some(ch) = s.chars().find(|c| c.is_control()) {
        return Err(NameError::DomainControl { name: s.into(), ch });
    }
    if s.contains('/') {
        return Err(NameError::DomainSlash { name: s.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_stay_simple() {
        assert!(pool_name("web-1.prod_x").is_ok());
        assert!(pool_name(&"x".repeat(64)).is_ok());
        for bad in ["", "../etc", "a b", ".hidden", "wéb", "a/b"] {
            assert!(pool_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            pool_name(&"x".repeat(65)),
            Err(NameError::PoolLength {
                name: "x".repeat(65)
            })
        );
        assert_eq!(
            pool_name("a b").unwrap_err().to_string(),
            r#"name "a b" may contain only letters, digits, '-', '_' and '.', and must not start with '.'"#
        );
    }

    #[test]
    fn domain_names_are_what_libvirt_takes() {
        for ok in [
            "web with spaces",
            "web-ünïcödé",
            "vm-😀",
            " lead and trail ",
            ".",
            "..",
            "-x",
            "it's \"q\"",
            "a<b>&c",
            "a%20b?c#d",
            "a\\b",
            "web-*",
            "a\u{a0}b",
            "a\u{200b}b",
            "6f1c1e3a-8e34-4b5e-9d1e-0123456789ab",
        ] {
            assert_eq!(domain_name(ok), Ok(()), "{ok:?}");
        }
        assert!(domain_name(&"ü".repeat(127)).is_ok(), "254 bytes");
        assert_eq!(
            domain_name(&"ü".repeat(128)),
            Err(NameError::DomainLength {
                name: "ü".repeat(128),
                len: 256
            })
        );
        assert_eq!(domain_name(""), Err(NameError::DomainEmpty));
        for (bad, ch) in [
            ("a\nb", '\n'),
            ("a\tb", '\t'),
            ("a\u{7f}b", '\u{7f}'),
            ("a\u{85}b", '\u{85}'),
        ] {
            assert_eq!(
                domain_name(bad),
                Err(NameError::DomainControl {
                    name: bad.into(),
                    ch
                })
            );
        }
        let e = domain_name("a/b").unwrap_err();
        assert_eq!(e, NameError::DomainSlash { name: "a/b".into() });
        assert_eq!(
            e.to_string(),
            r#"domain name "a/b" contains '/', which libvirt refuses in names"#
        );
    }
}
