//! SplitMix64 (Steele, Lea & Flood 2014): a tiny, fast, reproducible generator for test data.

/// SplitMix64: 64 bits of state, one add and a three-step mix per output.
///
/// Deterministic on every platform. Not for anything but test data: fast and well mixed, but
/// predictable, and [`SplitMix64::below`] keeps a (negligible) modulo bias because the existing
/// tests' data were drawn that way.
///
/// ```
/// use biomatch_testkit::SplitMix64;
///
/// let mut rng = SplitMix64::new(7);
/// let x = rng.uniform(-1.0, 1.0);
/// assert!((-1.0..1.0).contains(&x));
/// assert!(rng.below(10) < 10);
/// // The same seed gives the same sequence.
/// assert_eq!(SplitMix64::new(3).next_u64(), SplitMix64::new(3).next_u64());
/// ```
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An integer in `0..n` (`next_u64() % n`); 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[lo, hi)`, from the top 24 bits of one output.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.uniform(0.0, 1.0) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // splitmix64.c (Vigna) seeded with 0: the first three outputs.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn below_and_uniform_stay_in_range() {
        let mut r = SplitMix64::new(1);
        for n in [1, 2, 7, 1000] {
            assert!((0..1000).all(|_| r.below(n) < n));
        }
        assert_eq!(r.below(0), 0);
        assert!((0..1000).map(|_| r.uniform(2.0, 3.0)).all(|x| (2.0..3.0).contains(&x)));
    }
}
