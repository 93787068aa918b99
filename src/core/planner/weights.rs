//! Scheduler weights derived from shares, clamped to ranges that are safe
//! on both cgroup v1 and v2 (libvirt rejects or silently mis-maps values
//! outside them — the Nova cgroup v2 bug).
//!
//! - CPU: `cpu_shares = shares`, clamped to 2..=10000. With the default
//!   1000 shares a domain gets `cpu_shares = 1000` (close to the kernel's
//!   1024 default); ratios between members are kept exactly inside the range.
//! - Block I/O: `blkio weight = shares / 10`, clamped to 100..=1000. The
//!   default 1000 shares gives weight 100; ratios are kept for shares
//!   between 1000 and 10000, lower shares all get the minimum 100.

/// Smallest and largest `cpu_shares` issued.
pub const CPU_WEIGHT_RANGE: (u64, u64) = (2, 10_000);
/// Smallest and largest blkio `weight` issued.
pub const BLKIO_WEIGHT_RANGE: (u64, u64) = (100, 1000);

/// The `cpu_shares` scheduler parameter for a member's vCPU shares.
pub fn cpu_weight(shares: u64) -> u64 {
    shares.clamp(CPU_WEIGHT_RANGE.0, CPU_WEIGHT_RANGE.1)
}

/// The blkio `weight` for a member's disk shares.
pub fn blkio_weight(shares: u64) -> u64 {
    (shares / 10).clamp(BLKIO_WEIGHT_RANGE.0, BLKIO_WEIGHT_RANGE.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_at_the_boundaries() {
        // Shares → (cpu_shares, blkio weight).
        for (shares, cpu, blkio) in [
            (0, 2, 100),
            (1, 2, 100),
            (2, 2, 100),
            (1000, 1000, 100),
            (3000, 3000, 300),
            (10_000, 10_000, 1000),
            (10_001, 10_000, 1000),
            (10_010, 10_000, 1000),
            (u64::MAX, 10_000, 1000),
        ] {
            assert_eq!(cpu_weight(shares), cpu, "cpu_weight({shares})");
            assert_eq!(blkio_weight(shares), blkio, "blkio_weight({shares})");
        }
    }
}
