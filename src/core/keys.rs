//! Byte-level keys that make hot comparisons cheap, in one place.
//!
//! The planner orders thousands of domains by UUID every cycle, and the
//! membership pass tries every pool's globs on every domain name; most of
//! those comparisons are decided by the first 8 bytes, compared as one
//! integer.

/// The first 8 bytes of `s` as a big-endian word, zero-padded: ordering
/// these words agrees with ordering the strings on those bytes, and two
/// strings with different words differ in their first 8 bytes.
pub fn head_word(s: &str) -> u64 {
    let b = s.as_bytes();
    match b.first_chunk::<8>() {
        Some(h) => u64::from_be_bytes(*h),
        None => {
            let mut h = [0u8; 8];
            h[..b.len()].copy_from_slice(b);
            u64::from_be_bytes(h)
        }
    }
}

/// A mask of the first `n` bytes (at most 8) of a [`head_word`].
pub fn head_mask(n: usize) -> u64 {
    match n.min(8) {
        0 => 0,
        8 => u64::MAX,
        n => !(u64::MAX >> (8 * n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_words_order_like_their_strings() {
        let mut names = ["b", "a", "ab", "abcdefgh", "abcdefgz", "", "abcdefgha"];
        let mut by_word = names;
        names.sort_unstable();
        by_word.sort_by_key(|s| head_word(s));
        // Equal words (strings equal on 8 bytes) keep no defined order: compare words.
        let words = |v: &[&str]| v.iter().map(|s| head_word(s)).collect::<Vec<_>>();
        assert_eq!(words(&names), words(&by_word));
        assert_eq!(head_word("abcdefgh"), head_word("abcdefghXYZ"));
        assert_eq!(
            head_word("ab") & head_mask(2),
            head_word("abc") & head_mask(2)
        );
        assert_ne!(
            head_word("ab") & head_mask(2),
            head_word("ac") & head_mask(2)
        );
    }
}
