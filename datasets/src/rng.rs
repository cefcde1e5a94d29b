//! Deterministic randomness: keyed ChaCha8 streams and a portable Gaussian sampler.
//!
//! Every vector the generator produces is a pure function of `(seed, domain, a, b)` (for example
//! `(population seed, SAMPLE, identity, sample index)`). [`StreamKey`] turns `(seed, domain)` into a
//! 256-bit ChaCha key with splitmix64; `a` and `b` are XORed into two of its words, which makes the
//! map from `(a, b)` to keys injective, so no two vectors of a population ever share a stream.
//!
//! Bit-for-bit reproducibility on any machine needs more than a portable RNG: the Gaussian sampler
//! must not call the platform's `exp`/`ln` (glibc, musl and macOS differ in the last ulp). [`Ziggurat`]
//! therefore uses the pure-Rust `libm` crate, and every other operation is IEEE-754 arithmetic in a
//! fixed order (Rust never contracts `a * b + c` into an FMA).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;

/// Golden-ratio increment of splitmix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// One step of splitmix64 (Steele, Lea & Flood 2014): advance `state`, return a mixed output.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    mix64(*state)
}

/// The splitmix64 finaliser: a bijective avalanche mix of one word.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 256-bit ChaCha key for one `(seed, domain)` pair; [`StreamKey::rng`] specialises it to `(a, b)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamKey([u64; 4]);

impl StreamKey {
    pub(crate) fn new(seed: u64, domain: u64) -> Self {
        let mut state = seed;
        let mut state = splitmix64(&mut state) ^ mix64(domain.wrapping_add(GOLDEN));
        Self([
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ])
    }

    /// The stream for `(a, b)`: key words 2 and 3 are XORed with `a` and `b`, so distinct `(a, b)`
    /// always get distinct keys.
    pub(crate) fn rng(&self, a: u64, b: u64) -> ChaCha8Rng {
        let words = [self.0[0], self.0[1], self.0[2] ^ a, self.0[3] ^ b];
        let mut seed = [0u8; 32];
        for (chunk, word) in seed.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        ChaCha8Rng::from_seed(seed)
    }

    /// A single mixed word for `x` (used to hash identities to families).
    pub(crate) fn hash(&self, x: u64) -> u64 {
        mix64(mix64(self.0[0] ^ x) ^ self.0[1])
    }
}

/// Uniform in the open interval (0, 1), from the top 53 bits.
#[inline]
fn open01(rng: &mut impl RngCore) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal sampler: Doornik's ZIGNOR variant of the Marsaglia–Tsang ziggurat with 256
/// layers, tables computed once with `libm` so that they (and hence the samples) are identical
/// on every platform.
#[derive(Debug)]
pub(crate) struct Ziggurat {
    /// `x[0]` is the base strip's virtual width `V / f(R)`, `x[1] = R`, decreasing to `x[256] = 0`.
    x: [f64; LAYERS + 1],
    /// `f[i] = exp(-x[i]² / 2)`.
    f: [f64; LAYERS + 1],
}

const LAYERS: usize = 256;
/// Start of the tail for 256 layers.
const R: f64 = 3.654_152_885_361_009;
/// Area of every layer (and of the base strip including the tail) for 256 layers.
const V: f64 = 0.004_928_673_233_99;

#[inline]
fn density(x: f64) -> f64 {
    libm::exp(-0.5 * x * x)
}

impl Ziggurat {
    /// The process-wide tables.
    pub(crate) fn get() -> &'static Self {
        static TABLES: OnceLock<Ziggurat> = OnceLock::new();
        TABLES.get_or_init(Self::build)
    }

    fn build() -> Self {
        let mut x = [0.0; LAYERS + 1];
        x[0] = V / density(R);
        x[1] = R;
        for i in 1..LAYERS - 1 {
            // Layer i has area V: x[i] * (f(x[i+1]) - f(x[i])) = V.
            x[i + 1] = libm::sqrt(-2.0 * libm::log(V / x[i] + density(x[i])));
        }
        x[LAYERS] = 0.0;
        let mut f = [0.0; LAYERS + 1];
        for (fi, xi) in f.iter_mut().zip(x) {
            *fi = density(xi);
        }
        Self { x, f }
    }

    /// One draw from N(0, 1).
    #[inline]
    pub(crate) fn sample(&self, rng: &mut impl RngCore) -> f64 {
        loop {
            let bits = rng.next_u64();
            let i = (bits & 0xff) as usize;
            // The top 52 bits as a uniform in [-1, 1): a float in [2, 4), minus 3.
            let u = f64::from_bits(0x4000_0000_0000_0000 | (bits >> 12)) - 3.0;
            let x = u * self.x[i];
            if x.abs() < self.x[i + 1] {
                return x;
            }
            if i == 0 {
                return Self::tail(rng, u < 0.0);
            }
            let y = self.f[i + 1] + (self.f[i] - self.f[i + 1]) * open01(rng);
            if y < density(x) {
                return x;
            }
        }
    }

    /// Marsaglia's exact sampler for the tail beyond `R`.
    #[cold]
    fn tail(rng: &mut impl RngCore, negative: bool) -> f64 {
        loop {
            let x = -libm::log(open01(rng)) / R;
            let y = -libm::log(open01(rng));
            if 2.0 * y >= x * x {
                return if negative { -(R + x) } else { R + x };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_monotone_and_close() {
        let z = Ziggurat::get();
        assert!(z.x[0] > R);
        for i in 1..LAYERS {
            assert!(z.x[i] > z.x[i + 1], "x[{i}]");
            assert!(z.f[i] < z.f[i + 1], "f[{i}]");
        }
        // The recurrence must land just above zero: the top layer's right edge.
        assert!(z.x[LAYERS - 1] > 0.1 && z.x[LAYERS - 1] < 0.3, "{}", z.x[LAYERS - 1]);
        // The top layer has area V too (up to the precision of V).
        let top = z.x[LAYERS - 1] * (1.0 - z.f[LAYERS - 1]);
        assert!((top - V).abs() < 1e-6 * V, "{top} vs {V}");
    }

    #[test]
    fn moments_of_the_normal() {
        let z = Ziggurat::get();
        let mut rng = StreamKey::new(7, 1).rng(0, 0);
        let n = 400_000;
        let (mut s1, mut s2, mut s4, mut beyond3) = (0.0, 0.0, 0.0, 0usize);
        for _ in 0..n {
            let v = z.sample(&mut rng);
            s1 += v;
            s2 += v * v;
            s4 += v * v * v * v;
            beyond3 += usize::from(v.abs() > 3.0);
        }
        let n = n as f64;
        assert!((s1 / n).abs() < 0.01, "mean {}", s1 / n);
        assert!((s2 / n - 1.0).abs() < 0.01, "var {}", s2 / n);
        assert!((s4 / n - 3.0).abs() < 0.06, "kurtosis {}", s4 / n);
        // P(|Z| > 3) = 0.0027.
        let p = beyond3 as f64 / n;
        assert!((p - 0.0027).abs() < 0.0005, "tail {p}");
    }

    #[test]
    fn keys_are_distinct_per_stream() {
        let k = StreamKey::new(1, 2);
        assert_ne!(k, StreamKey::new(1, 3));
        assert_ne!(k, StreamKey::new(2, 2));
        let mut a = k.rng(5, 0);
        let mut b = k.rng(0, 5);
        assert_ne!(a.next_u64(), b.next_u64());
        assert_eq!(k.rng(5, 0).next_u64(), k.rng(5, 0).next_u64());
    }
}
