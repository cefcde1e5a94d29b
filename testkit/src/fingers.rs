//! Synthetic minutiae fingers for tests and benches that need valid finger templates without
//! images: deterministic from a seed, inside a 400 × 500 pixel 500-dpi image.

use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind, RESOLUTION_500DPI_PPCM};
use biomatch_core::FingerPosition;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Image size of the synthetic fingers.
pub const WIDTH: u16 = 400;
pub const HEIGHT: u16 = 500;

/// A valid finger template at `position` (1..=10) with `minutiae` random ridge endings and
/// bifurcations (20 px from the border, quality 40–90), the same for the same `seed`.
pub fn finger_template(seed: u64, position: u8, minutiae: usize) -> FingerTemplate {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let points = (0..minutiae)
        .map(|_| Minutia {
            x: rng.random_range(20..WIDTH - 20),
            y: rng.random_range(20..HEIGHT - 20),
            angle: rng.random(),
            kind: if rng.random_bool(0.5) {
                MinutiaKind::RidgeEnding
            } else {
                MinutiaKind::Bifurcation
            },
            quality: rng.random_range(40..=90),
        })
        .collect();
    let position = FingerPosition::new(position).expect("finger position 1..=10");
    FingerTemplate::new(WIDTH, HEIGHT, RESOLUTION_500DPI_PPCM, Some(position), 60, points)
        .expect("a valid template")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_valid() {
        let a = finger_template(7, 3, 30);
        assert_eq!(a, finger_template(7, 3, 30));
        assert_ne!(a, finger_template(8, 3, 30));
        assert_eq!(a.minutiae.len(), 30);
        a.validate().unwrap();
    }
}
