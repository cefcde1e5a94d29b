//! Multi-modal score fusion on the calibrated scale.
//!
//! Raw scores of different modalities (a face cosine, a fingerprint match score) are not
//! comparable, but their calibrated false-match rates are. Under the usual independence
//! assumption between modalities, the chance that an impostor matches on every modality at least
//! this well is the product of the per-modality FMRs. The fused score is `−log10` of that product:
//! 0 for no evidence, 4 for "one in ten thousand", and it simply adds up across modalities. A
//! missing modality contributes nothing (FMR 1). Independence is optimistic for correlated
//! modalities (two fingers of one hand are mildly correlated); thresholds on the fused scale
//! should be validated on mated/non-mated searches like any other.

/// Smallest FMR a fused score may express (keeps the log finite).
pub const MIN_FMR: f64 = 1e-300;

/// Fused false-match rate of independent per-modality FMRs (each clamped to [MIN_FMR, 1]).
pub fn fuse_fmr(fmrs: impl IntoIterator<Item = f64>) -> f64 {
    fmrs.into_iter()
        .map(|f| if f.is_nan() { 1.0 } else { f.clamp(MIN_FMR, 1.0) })
        .product::<f64>()
        .max(MIN_FMR)
}

/// The fused score of an FMR: `−log10(fmr)`, higher is stronger evidence.
pub fn score_of_fmr(fmr: f64) -> f32 {
    (-(fmr.clamp(MIN_FMR, 1.0)).log10()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_multiplies_rates_and_adds_scores() {
        assert_eq!(fuse_fmr([]), 1.0);
        assert!((fuse_fmr([1e-3, 1e-2]) - 1e-5).abs() < 1e-18);
        assert!((score_of_fmr(fuse_fmr([1e-3, 1e-2])) - 5.0).abs() < 1e-5);
        assert_eq!(score_of_fmr(1.0), 0.0);
        // Out-of-range and NaN inputs are clamped, never propagated.
        assert_eq!(fuse_fmr([2.0, f64::NAN]), 1.0);
        assert_eq!(fuse_fmr([0.0]), MIN_FMR);
        assert!(score_of_fmr(0.0).is_finite());
    }
}
