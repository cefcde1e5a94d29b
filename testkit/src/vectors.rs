//! Seeded synthetic vector templates (faces and other embeddings) for tests that need no model:
//! random directions, and other captures of one.

use crate::SplitMix64;

/// A random unit vector of `dim` dimensions: each coordinate uniform in `[-1, 1)`, then
/// normalised to length 1. The same for the same generator state.
///
/// ```
/// use biomatch_testkit::{vectors, SplitMix64};
///
/// let v = vectors::unit(&mut SplitMix64::new(7), 64);
/// assert_eq!(v.len(), 64);
/// assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
/// ```
pub fn unit(rng: &mut SplitMix64, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// Another capture of the person whose (unit) template is `v`: `v` plus `noise` times a random
/// unit vector ([`unit`]), not normalised (templates are normalised when made). At `noise` 0.3
/// and 64 dimensions its cosine with `v` is about 0.95.
pub fn capture(v: &[f32], rng: &mut SplitMix64, noise: f32) -> Vec<f32> {
    let direction = unit(rng, v.len());
    v.iter().zip(direction).map(|(a, b)| a + noise * b).collect()
}
