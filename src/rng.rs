//! The one small random number generator of the crate: xorshift64*, one per owner (a
//! worker, a thread, a probe), no shared state and no locks. Not for anything secret: it
//! spreads load and jitters timers.

/// A xorshift64* generator (Vigna). `Copy`, so a thread-local `Cell` can hold one.
#[derive(Debug, Clone, Copy)]
pub struct XorShift(u64);

/// SplitMix64's finaliser: turns any seed, including 0 or small integers, into a
/// well-mixed non-zero state.
const fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

impl XorShift {
    /// A generator from `seed`; neighbouring seeds (worker ids, backend indices) give
    /// unrelated streams.
    pub const fn new(seed: u64) -> XorShift {
        XorShift(splitmix(seed))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) for n > 0 (modulo bias is negligible for the small n used here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;

    #[test]
    fn never_sticks_at_zero_and_stays_in_range() {
        let mut r = XorShift::new(0);
        for _ in 0..10_000 {
            assert_ne!(r.next_u64(), 0);
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(r.below(7) < 7);
        }
    }

    #[test]
    fn neighbouring_seeds_give_different_streams() {
        let (mut a, mut b) = (XorShift::new(0), XorShift::new(1));
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
