//! Sparklines and bars in text: one character per point (eight heights),
//! shared by `pool history` and `top`.

const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// A point with no value (the agent could not observe then).
pub const GAP: char = '·';

/// `values` in at most `width` characters, oldest first, scaled so that
/// `top` is a full block. More points than `width`: each character is the
/// largest of the points it covers (the newest point is always the last).
pub fn sparkline(values: &[Option<u64>], top: u64, width: usize) -> String {
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let n = values.len();
    let cols = n.min(width);
    let mut out = String::with_capacity(cols * 3);
    for c in 0..cols {
        // Points [start, end) for this column, spread from the newest back.
        let end = n - (cols - 1 - c) * n / cols;
        let start = (n - (cols - c) * n / cols).min(end.saturating_sub(1));
        let v = values[start..end].iter().flatten().max().copied();
        out.push(match v {
            None => GAP,
            Some(v) => level(v, top),
        });
    }
    out
}

fn level(v: u64, top: u64) -> char {
    if v == 0 {
        return LEVELS[0];
    }
    if top == 0 || v >= top {
        return LEVELS[8];
    }
    // At least the lowest block for any value above zero.
    let i = ((v as u128 * 8 + top as u128 / 2) / top as u128).clamp(1, 8);
    LEVELS[i as usize]
}

/// A bar of `width` cells filled to `value / of` (eighths of a cell), in
/// brackets: `[█████▌    ]`. Over `of`, it is full and ends in `!`.
pub fn bar(value: u64, of: u64, width: usize) -> String {
    const PART: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let mut s = String::with_capacity(width * 3 + 2);
    s.push('[');
    if of == 0 || value > of {
        s.push_str(&"█".repeat(width));
        s.push(if value > of { '!' } else { ']' });
        return s;
    }
    let eighths = (value as u128 * width as u128 * 8 / of as u128) as usize;
    let full = eighths / 8;
    s.push_str(&"█".repeat(full));
    if full < width {
        s.push(PART[eighths % 8]);
        s.push_str(&" ".repeat(width - full - 1));
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_character_per_point_scaled_to_the_top() {
        assert_eq!(sparkline(&[Some(0), Some(4), Some(8), None], 8, 10), " ▄█·");
        assert_eq!(sparkline(&[Some(1)], 1000, 10), "▁", "above zero shows");
        assert_eq!(sparkline(&[Some(9)], 8, 10), "█");
        assert_eq!(sparkline(&[], 8, 10), "");
    }

    #[test]
    fn more_points_than_columns_keep_the_peaks_and_the_newest() {
        let v: Vec<Option<u64>> = (0..100).map(|i| Some(if i == 3 { 8 } else { 1 })).collect();
        let s = sparkline(&v, 8, 10);
        assert_eq!(s.chars().count(), 10);
        assert_eq!(s.chars().next(), Some('█'), "{s}");
        let mut v2 = vec![Some(1); 99];
        v2.push(Some(8));
        assert_eq!(sparkline(&v2, 8, 7).chars().last(), Some('█'));
    }

    #[test]
    fn bars_fill_in_eighths() {
        assert_eq!(bar(0, 10, 4), "[    ]");
        assert_eq!(bar(10, 10, 4), "[████]");
        assert_eq!(bar(5, 10, 4), "[██  ]");
        assert_eq!(bar(1, 16, 4), "[▎   ]", "1/16 of 4 cells: 2 eighths");
        assert_eq!(bar(12, 10, 4), "[████!");
    }
}
