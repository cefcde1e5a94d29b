//! Evaluation metrics: percentiles, identification error rates (FNIR, FPIR) and verification error
//! rates (DET curve, EER, FNMR at a fixed FMR).
//!
//! This module exists so the CLI, the benches and the evaluation tools compute these numbers one way.
//! It is pure arithmetic over score slices: no I/O, no allocation beyond sorted copies of the input.
//!
//! Conventions shared by every function here and by [`crate::calibration`]:
//! - Scores are similarities (higher = more similar); a comparison *matches* iff `score >= threshold`.
//! - A NaN score never reaches any threshold: a NaN genuine or mated score is a miss, a NaN impostor
//!   or non-mated score is never a false match. NaNs still count in the denominators.
//! - Rates are fractions in `[0, 1]`, not percentages.

use serde::{Deserialize, Serialize};

/// Relative slack when turning a rate into a count, so that `1e-2 * 10_000` counts as 100 allowed
/// errors even though `1e-2` is not exact in binary. Far below any rate a test set can resolve.
const RATE_SLACK: f64 = 1e-9;

/// The most errors a set of `n` comparisons may contain while keeping the error rate `<= rate`:
/// `floor(rate * n)`, saturating at `n`.
pub(crate) fn allowed_errors(rate: f64, n: usize) -> usize {
    let k = (rate * n as f64 * (1.0 + RATE_SLACK)).floor();
    if k.is_nan() || k <= 0.0 {
        0
    } else {
        (k as usize).min(n)
    }
}

/// The smallest `f32` strictly greater than `x` (`f32::next_up`, which needs Rust 1.86).
pub(crate) fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        // Both +0.0 and -0.0: the smallest positive subnormal.
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    if x > 0.0 {
        f32::from_bits(bits + 1)
    } else {
        f32::from_bits(bits - 1)
    }
}

/// The non-NaN values of `scores`, sorted ascending, and the number of NaNs left out.
fn sorted_without_nan(scores: &[f32]) -> (Vec<f32>, usize) {
    let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| !s.is_nan()).collect();
    sorted.sort_unstable_by(f32::total_cmp);
    let nans = scores.len() - sorted.len();
    (sorted, nans)
}

/// The `p`-th percentile of `sorted` (ascending, NaN-free), with linear interpolation between the
/// two closest ranks (the "linear" method of NumPy and R type 7): rank `p / 100 * (n - 1)`.
///
/// `p` is clamped to `[0, 100]`; `p = 0` is the minimum and `p = 100` the maximum. Returns NaN for
/// an empty slice or a NaN `p`. The slice is not checked for order.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() || p.is_nan() {
        return f64::NAN;
    }
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    sorted[lo] + frac * (sorted[hi] - sorted[lo])
}

/// False-negative identification rate (NIST IR 8271): the fraction of mated searches whose mate
/// was not returned, or was returned with a score below `threshold`.
///
/// `mate_scores` holds one entry per mated search: the mate's score if it appeared in the candidate
/// list (for a rank-limited FNIR, pass `None` when the mate ranked beyond the limit), or `None` when
/// it did not appear. An empty slice gives `0.0` (no mated searches, so no misses).
pub fn fnir(mate_scores: &[Option<f32>], threshold: f32) -> f64 {
    if mate_scores.is_empty() {
        return 0.0;
    }
    let misses = mate_scores.iter().filter(|s| !matches!(s, Some(s) if *s >= threshold)).count();
    misses as f64 / mate_scores.len() as f64
}

/// False-positive identification rate (NIST IR 8271): the fraction of non-mated searches that
/// return at least one candidate with a score at or above `threshold`.
///
/// `nonmated_top_scores` holds one entry per non-mated search: the best candidate's score, or
/// `None` when the candidate list was empty. An empty slice gives `0.0` (no non-mated searches,
/// so no false positives).
pub fn fpir(nonmated_top_scores: &[Option<f32>], threshold: f32) -> f64 {
    if nonmated_top_scores.is_empty() {
        return 0.0;
    }
    let hits =
        nonmated_top_scores.iter().filter(|s| matches!(s, Some(s) if *s >= threshold)).count();
    hits as f64 / nonmated_top_scores.len() as f64
}

/// One operating point of a verification system: at `threshold`, the false-match rate (impostor
/// comparisons with `score >= threshold`) and the false-non-match rate (genuine comparisons with
/// `score < threshold`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetPoint {
    pub threshold: f32,
    pub fmr: f64,
    pub fnmr: f64,
}

/// Thresholds taken from each score set by [`det_curve`].
const DET_THRESHOLDS_PER_SET: usize = 500;

/// Ranks `1..=n` spread evenly on a log scale, at most `count` of them, ascending and distinct.
/// Small sets get every rank.
fn log_spaced_ranks(n: usize, count: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    if n <= count {
        return (1..=n).collect();
    }
    let ln_n = (n as f64).ln();
    let mut ranks: Vec<usize> = (0..count)
        .map(|j| {
            let r = (ln_n * j as f64 / (count - 1) as f64).exp().round() as usize;
            r.clamp(1, n)
        })
        .collect();
    ranks.dedup();
    ranks
}

/// The detection-error trade-off curve: [`DetPoint`]s sorted by ascending threshold (so `fmr`
/// falls and `fnmr` rises along the vector).
///
/// Thresholds are actual scores: up to 500 impostor scores chosen so that the FMR values are
/// spread evenly on a log scale (from `1 / impostors` to 1), the same for genuine scores and the
/// FNMR, plus one threshold just above the highest score (FMR 0, FNMR 1). Small sets therefore get
/// the exact step curve, large ones at most 1001 points with resolution where DET plots need it
/// (log axes). Costs two sorts, `O((g + i) log(g + i))`.
///
/// Returns an empty vector if either set is empty (a rate over nothing is undefined).
pub fn det_curve(genuine: &[f32], impostor: &[f32]) -> Vec<DetPoint> {
    if genuine.is_empty() || impostor.is_empty() {
        return Vec::new();
    }
    let (gen, gen_nan) = sorted_without_nan(genuine);
    let (imp, _) = sorted_without_nan(impostor);

    let mut thresholds: Vec<f32> = Vec::with_capacity(2 * DET_THRESHOLDS_PER_SET + 1);
    // The r-th largest impostor score admits r (or, with ties, more) false matches.
    thresholds.extend(
        log_spaced_ranks(imp.len(), DET_THRESHOLDS_PER_SET).iter().map(|&r| imp[imp.len() - r]),
    );
    // The r-th smallest genuine score rejects r - 1 (or, with ties, fewer) genuine comparisons.
    thresholds
        .extend(log_spaced_ranks(gen.len(), DET_THRESHOLDS_PER_SET).iter().map(|&r| gen[r - 1]));
    let highest =
        gen.last().into_iter().chain(imp.last()).copied().fold(f32::NEG_INFINITY, f32::max);
    if highest.is_finite() {
        thresholds.push(next_up(highest));
    }
    thresholds.sort_unstable_by(f32::total_cmp);
    thresholds.dedup();

    thresholds
        .into_iter()
        .map(|t| DetPoint {
            threshold: t,
            fmr: (imp.len() - imp.partition_point(|&s| s < t)) as f64 / impostor.len() as f64,
            fnmr: (gen.partition_point(|&s| s < t) + gen_nan) as f64 / genuine.len() as f64,
        })
        .collect()
}

/// The equal error rate: the rate at which FMR and FNMR are equal.
///
/// Sweeps every distinct score as a threshold (exact, `O((g + i) log(g + i))`). FMR and FNMR are
/// step functions, so they rarely meet exactly: between the last operating point with FMR > FNMR
/// and the first with FNMR >= FMR the two rates are interpolated linearly (a straight segment of the
/// ROC) and the crossing is returned. Perfectly separated sets give 0.
///
/// Returns NaN if either set is empty.
pub fn eer(genuine: &[f32], impostor: &[f32]) -> f64 {
    if genuine.is_empty() || impostor.is_empty() {
        return f64::NAN;
    }
    let (gen, gen_nan) = sorted_without_nan(genuine);
    let (imp, _) = sorted_without_nan(impostor);
    let (g_total, i_total) = (genuine.len() as f64, impostor.len() as f64);

    // Operating point below every score: every non-NaN comparison matches.
    let mut prev = (imp.len() as f64 / i_total, gen_nan as f64 / g_total);
    if prev.1 >= prev.0 {
        return prev.1;
    }
    // Walk the distinct scores ascending; `gi`/`ii` count the genuine/impostor scores below `t`.
    let (mut gi, mut ii) = (0, 0);
    loop {
        let t = match (gen.get(gi), imp.get(ii)) {
            (Some(&g), Some(&i)) => g.min(i),
            (Some(&g), None) => g,
            (None, Some(&i)) => i,
            // Above every score: FMR 0, FNMR 1.
            (None, None) => f32::INFINITY,
        };
        let cur = if t == f32::INFINITY {
            (0.0, 1.0)
        } else {
            ((imp.len() - ii) as f64 / i_total, (gi + gen_nan) as f64 / g_total)
        };
        if cur.1 >= cur.0 {
            // prev has fmr > fnmr, cur has fnmr >= fmr: the segment between them crosses.
            let d_prev = prev.0 - prev.1;
            let d_cur = cur.1 - cur.0;
            let lambda = d_prev / (d_prev + d_cur);
            return prev.0 + lambda * (cur.0 - prev.0);
        }
        prev = cur;
        // Step past every score equal to t so the next threshold is the next distinct score.
        while gen.get(gi).is_some_and(|&g| g <= t) {
            gi += 1;
        }
        while imp.get(ii).is_some_and(|&i| i <= t) {
            ii += 1;
        }
    }
}

/// The false-non-match rate at the smallest threshold whose false-match rate is at most
/// `target_fmr` (the usual "FNMR @ FMR = 1e-4" figure).
///
/// Returns `None` if `target_fmr` is not in `(0, 1]`, if `genuine` is empty, or if the impostor set
/// is too small to resolve the target: fewer than `1 / target_fmr` scores (the target would then
/// allow zero false matches, and "zero observed" is not evidence of a rate).
pub fn fnmr_at_fmr(genuine: &[f32], impostor: &[f32], target_fmr: f64) -> Option<f64> {
    if !(target_fmr > 0.0 && target_fmr <= 1.0) || genuine.is_empty() {
        return None;
    }
    let allowed = allowed_errors(target_fmr, impostor.len());
    if allowed == 0 {
        return None;
    }
    let (imp, _) = sorted_without_nan(impostor);
    let (gen, gen_nan) = sorted_without_nan(genuine);
    let rejected = if allowed >= imp.len() {
        // Every (non-NaN) impostor may match: no threshold needed, only NaN genuines fail.
        0
    } else {
        // The threshold sits just above the (allowed + 1)-th largest impostor score, so genuine
        // scores at or below that score are rejected.
        let bar = imp[imp.len() - 1 - allowed];
        gen.partition_point(|&s| s <= bar)
    };
    Some((rejected + gen_nan) as f64 / genuine.len() as f64)
}

/// The standard normal quantile Φ⁻¹(p) for p in (0, 1) (Acklam's rational approximation, relative
/// error below 1.2·10⁻⁹). ±∞ at 0 and 1.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_known_quantiles() {
        assert!(normal_quantile(0.5).abs() < 1e-12);
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-8);
        assert!((normal_quantile(0.001) + 3.090_232_306_167_813).abs() < 1e-8);
        assert!((normal_quantile(1e-6) + 4.753_424_308_822_899).abs() < 1e-7);
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
    }
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn percentile_interpolates_linearly() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile(&v, 0.0), 1.0));
        assert!(close(percentile(&v, 25.0), 1.75));
        assert!(close(percentile(&v, 50.0), 2.5));
        assert!(close(percentile(&v, 100.0), 4.0));
        assert!(close(percentile(&v, 150.0), 4.0));
        assert!(close(percentile(&v, -1.0), 1.0));
        assert!(close(percentile(&[7.0], 90.0), 7.0));
        assert!(percentile(&[], 50.0).is_nan());
        assert!(percentile(&v, f64::NAN).is_nan());
    }

    #[test]
    fn fnir_counts_missing_and_low_mates() {
        let mates = [Some(0.9), None, Some(0.4), Some(0.5), Some(f32::NAN)];
        // Misses: None, 0.4 (< 0.5), NaN. 0.5 is exactly at the threshold: a hit.
        assert!(close(fnir(&mates, 0.5), 3.0 / 5.0));
        assert!(close(fnir(&mates, -1.0), 2.0 / 5.0));
        assert!(close(fnir(&[], 0.5), 0.0));
    }

    #[test]
    fn fpir_counts_top_scores_at_or_above_threshold() {
        let tops = [Some(0.7), None, Some(0.2), Some(0.5)];
        assert!(close(fpir(&tops, 0.5), 2.0 / 4.0));
        assert!(close(fpir(&tops, 0.71), 0.0));
        assert!(close(fpir(&tops, -1.0), 3.0 / 4.0));
        assert!(close(fpir(&[], 0.5), 0.0));
    }

    #[test]
    fn det_curve_small_sets_give_the_exact_steps() {
        let genuine = [0.5, 0.9];
        let impostor = [0.1, 0.6];
        let det = det_curve(&genuine, &impostor);
        let got: Vec<(f32, f64, f64)> = det.iter().map(|p| (p.threshold, p.fmr, p.fnmr)).collect();
        assert_eq!(
            got,
            vec![
                (0.1, 1.0, 0.0),
                (0.5, 0.5, 0.0),
                (0.6, 0.5, 0.5),
                (0.9, 0.0, 0.5),
                (next_up(0.9), 0.0, 1.0),
            ]
        );
        assert!(det_curve(&[], &impostor).is_empty());
        assert!(det_curve(&genuine, &[]).is_empty());
    }

    #[test]
    fn det_curve_of_large_sets_is_bounded() {
        let genuine: Vec<f32> = (0..50_000).map(|i| i as f32 / 50_000.0).collect();
        let impostor: Vec<f32> = (0..80_000).map(|i| i as f32 / 80_000.0 - 0.5).collect();
        let det = det_curve(&genuine, &impostor);
        assert!(det.len() <= 2 * DET_THRESHOLDS_PER_SET + 1, "{}", det.len());
        assert!(det.len() > DET_THRESHOLDS_PER_SET);
        // Log-spaced impostor ranks reach down to a single false match.
        assert!(det.iter().any(|p| close(p.fmr, 1.0 / 80_000.0)));
        assert!(close(det[0].fmr, 1.0));
        assert_eq!(det.last().map(|p| (p.fmr, p.fnmr)), Some((0.0, 1.0)));
    }

    #[test]
    fn eer_of_separated_sets_is_zero() {
        assert!(close(eer(&[0.6, 0.7, 0.8, 0.9], &[0.1, 0.2, 0.3, 0.4]), 0.0));
    }

    #[test]
    fn eer_at_an_exact_crossing() {
        // At t = 0.55: impostors 0.6, 0.8 match (1/2); genuines 0.3, 0.5 are rejected (1/2).
        assert!(close(eer(&[0.3, 0.5, 0.7, 0.9], &[0.1, 0.4, 0.6, 0.8]), 0.5));
    }

    #[test]
    fn eer_interpolates_between_steps() {
        // t = 0.55: (fmr, fnmr) = (1/4, 1/5); t = 0.6: (0, 1/5). On the segment between them
        // fmr = 1/4 - λ/4 and fnmr = 1/5, equal at λ = 1/5: EER = 0.2.
        let e = eer(&[0.5, 0.6, 0.7, 0.8, 0.9], &[0.1, 0.2, 0.3, 0.55]);
        assert!(close(e, 0.2), "{e}");
        assert!(eer(&[], &[0.1]).is_nan());
    }

    #[test]
    fn eer_of_identical_sets_is_about_one_half() {
        let s: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let e = eer(&s, &s);
        assert!((e - 0.5).abs() < 2e-3, "{e}");
    }

    #[test]
    fn fnmr_at_fmr_hand_computed() {
        let impostor: Vec<f32> = (0..10).map(|i| i as f32 / 10.0).collect(); // 0.0 ..= 0.9
        let genuine = [0.35, 0.55, 0.75, 0.85, 0.95];
        // FMR <= 0.1 allows one false match (0.9): threshold just above 0.8 rejects 0.35..0.75.
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.1), Some(0.6));
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.15), Some(0.6));
        // Two false matches (0.8, 0.9): threshold just above 0.7.
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.2), Some(0.4));
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 1.0), Some(0.0));
        // Ten impostors cannot resolve FMR 0.05.
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.05), None);
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.0), None);
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, f64::NAN), None);
        assert_eq!(fnmr_at_fmr(&[], &impostor, 0.1), None);
    }

    #[test]
    fn allowed_errors_tolerates_binary_rates() {
        assert_eq!(allowed_errors(10f64.powf(-2.0), 10_000), 100);
        assert_eq!(allowed_errors(0.1, 10), 1);
        assert_eq!(allowed_errors(0.09, 10), 0);
        assert_eq!(allowed_errors(2.0, 10), 10);
        assert_eq!(allowed_errors(f64::NAN, 10), 0);
    }

    #[test]
    fn next_up_is_the_next_float() {
        assert_eq!(next_up(0.0), f32::from_bits(1));
        assert_eq!(next_up(-0.0), f32::from_bits(1));
        assert_eq!(next_up(1.0), 1.0 + f32::EPSILON);
        assert!(next_up(-1.0) > -1.0 && next_up(-1.0) < -0.999_999);
        assert_eq!(next_up(f32::MAX), f32::INFINITY);
    }

    proptest! {
        #[test]
        fn det_curve_is_monotone(
            genuine in prop::collection::vec(-1.0f32..1.0, 1..300),
            impostor in prop::collection::vec(-1.0f32..1.0, 1..300),
        ) {
            let det = det_curve(&genuine, &impostor);
            prop_assert!(!det.is_empty());
            for w in det.windows(2) {
                prop_assert!(w[0].threshold < w[1].threshold);
                prop_assert!(w[0].fmr >= w[1].fmr);
                prop_assert!(w[0].fnmr <= w[1].fnmr);
            }
            let e = eer(&genuine, &impostor);
            prop_assert!((0.0..=1.0).contains(&e), "{}", e);
        }
    }
}
