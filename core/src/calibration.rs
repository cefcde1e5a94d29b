//! Score calibration: from a model's similarity score to the false-match rate (FMR) it implies.
//!
//! A raw cosine similarity means nothing across models: 0.4 may be a one-in-a-million coincidence
//! for one extractor and an everyday one for another. Operators set policy as error rates ("FMR
//! 1e-6", "FPIR 1e-3"), so every model ships a [`CalibrationTable`] built offline from a large set
//! of impostor (different-subject) scores, and the service turns rates into thresholds with it.
//! This module is pure arithmetic: the impostor scores are produced and the table is stored
//! elsewhere.
//!
//! # Method
//!
//! The table samples the curve FMR(t) = P(impostor score >= t) on a log grid of rates,
//! FMR = 10^(-k/4) for k = 4..=48 (1e-1 down to 1e-12, four points per decade):
//!
//! - **Empirical part.** Where the grid rate is at least `10 / n` (`n` impostor scores, so at least
//!   ten impostors lie above the threshold), the threshold is the empirical quantile: the smallest
//!   `f32` `t` whose empirical FMR `#{s >= t} / n` does not exceed the rate. This is conservative on
//!   the sample: the observed FMR at `t` is never above the target.
//! - **Extrapolated part.** Below `10 / n` the sample has too few (or no) impostors above the
//!   threshold to say anything, yet 1:N search over a large gallery needs per-comparison rates of
//!   1e-9 and less, far beyond any affordable impostor set. There a peaks-over-threshold model takes
//!   over: the top `m = max(100, n / 100)` scores are treated as exceedances of `u`, the `(m + 1)`-th
//!   largest score, and their excesses `s - u` are fitted with an exponential distribution (maximum
//!   likelihood: the scale `σ` is the mean excess). Then FMR(t) ≈ (m / n) · exp(-(t - u) / σ), so
//!   `t(f) = u + σ · ln(m / (n f))`. These points carry `extrapolated: true`; they are clamped at 1.0
//!   (the largest cosine similarity) and never fall below the previous point's threshold, so
//!   thresholds are non-decreasing as the rate falls.
//!
//! # Limits
//!
//! Extrapolated thresholds are **estimates**, not measurements: nothing in the data confirms a rate
//! of 1e-9 measured on 1e6 impostors. The exponential tail is the boundary case of the generalized
//! Pareto family; cosine scores are bounded by 1 and their impostor tails are usually lighter than
//! exponential (roughly Gaussian), in which case the fit over-estimates the FMR and the thresholds
//! err on the safe (high) side. A heavier tail — twins, duplicate enrolments or mislabelled pairs in
//! the impostor set, a model that collapses some population — makes the extrapolation optimistic.
//! Any extrapolated rate should be reported as such and, when it matters, confirmed on a larger
//! impostor set. Rates between grid points are interpolated linearly in log10(FMR); rates outside the
//! grid are clamped to its ends (see [`CalibrationTable::threshold_for_fmr`]).

use crate::metrics::{allowed_errors, next_up};
use crate::{CoreError, ModelId};
use serde::{Deserialize, Serialize};

/// One sample of the calibration curve: scores `>= threshold` occur among impostors at rate `fmr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FmrPoint {
    pub fmr: f64,
    pub threshold: f32,
    /// `true` where the threshold comes from the fitted tail rather than the observed scores.
    pub extrapolated: bool,
}

/// The exponential tail fitted to the highest impostor scores (see the module docs). Kept in the
/// table so reports can show how the extrapolated points were made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExponentialTail {
    /// `u`: the score the exceedances are measured from.
    pub threshold: f32,
    /// `m`: how many scores were fitted (all are `>= threshold`).
    pub exceedances: u64,
    /// `σ`: the maximum-likelihood scale, the mean excess over `threshold`.
    pub scale: f64,
}

/// A model's score → FMR curve, sampled on a log grid. Build one with
/// [`CalibrationTable::from_impostor_scores`].
///
/// Invariants (checked on deserialisation, see [`CalibrationTable::validate`]): `points` is not
/// empty, its `fmr` values lie in `(0, 1)` and strictly decrease, its thresholds are finite and
/// non-decreasing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TableRepr")]
pub struct CalibrationTable {
    pub model: ModelId,
    /// How many impostor scores the table was built from.
    pub impostor_count: u64,
    /// Ordered by `fmr` descending (so by threshold ascending).
    pub points: Vec<FmrPoint>,
    pub tail: ExponentialTail,
}

/// The deserialised form of [`CalibrationTable`], before its invariants are checked.
#[derive(Deserialize)]
struct TableRepr {
    model: ModelId,
    impostor_count: u64,
    points: Vec<FmrPoint>,
    tail: ExponentialTail,
}

impl TryFrom<TableRepr> for CalibrationTable {
    type Error = CoreError;
    fn try_from(r: TableRepr) -> Result<Self, Self::Error> {
        let table = Self {
            model: r.model,
            impostor_count: r.impostor_count,
            points: r.points,
            tail: r.tail,
        };
        table.validate()?;
        Ok(table)
    }
}

/// The outcome of comparing one score with the threshold for a target FMR.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `score >= threshold`.
    pub is_match: bool,
    pub score: f32,
    pub threshold: f32,
    pub target_fmr: f64,
    /// The FMR the table assigns to `score` ([`CalibrationTable::fmr_at`]).
    pub fmr_at_score: f64,
}

impl CalibrationTable {
    /// The fewest impostor scores a table may be built from.
    pub const MIN_IMPOSTORS: usize = 1000;
    /// Grid exponents: the table has a point at FMR = 10^(-k / 4) for each k.
    const GRID: std::ops::RangeInclusive<u32> = 4..=48;
    /// Below `EMPIRICAL_MIN_COUNT / n` the empirical quantile gives way to the fitted tail.
    const EMPIRICAL_MIN_COUNT: usize = 10;
    /// The tail is fitted on the top `max(TAIL_MIN, n / TAIL_FRACTION)` scores.
    const TAIL_MIN: usize = 100;
    const TAIL_FRACTION: usize = 100;

    /// Build the table of `model` from its impostor scores (see the module docs for the method).
    ///
    /// `scores` is sorted in place, which spares a copy of what may be hundreds of millions of
    /// values. Errors: [`CoreError::NonFinite`] (with the index of the first NaN or infinite score)
    /// and [`CoreError::TooFewImpostors`] below [`Self::MIN_IMPOSTORS`] scores.
    pub fn from_impostor_scores(model: ModelId, scores: &mut [f32]) -> Result<Self, CoreError> {
        if let Some(index) = scores.iter().position(|s| !s.is_finite()) {
            return Err(CoreError::NonFinite { index });
        }
        let n = scores.len();
        if n < Self::MIN_IMPOSTORS {
            return Err(CoreError::TooFewImpostors { min: Self::MIN_IMPOSTORS, got: n });
        }
        scores.sort_unstable_by(f32::total_cmp);
        let sorted: &[f32] = scores;

        // Peaks over threshold: the top m scores, measured from the (m + 1)-th largest.
        let m = Self::TAIL_MIN.max(n / Self::TAIL_FRACTION);
        let u = sorted[n - m - 1];
        let scale =
            sorted[n - m..].iter().map(|&s| f64::from(s) - f64::from(u)).sum::<f64>() / m as f64;
        let tail = ExponentialTail { threshold: u, exceedances: m as u64, scale };
        let tail_rate = m as f64 / n as f64;

        let mut points: Vec<FmrPoint> = Vec::with_capacity(Self::GRID.count());
        let mut prev = f32::NEG_INFINITY;
        for k in Self::GRID {
            let fmr = 10f64.powf(-f64::from(k) / 4.0);
            // How many impostor scores may reach the threshold at this rate.
            let allowed = allowed_errors(fmr, n).min(n - 1);
            let empirical = allowed >= Self::EMPIRICAL_MIN_COUNT;
            let threshold = if empirical {
                // Just above the (allowed + 1)-th largest score: the smallest f32 that at most
                // `allowed` scores reach.
                next_up(sorted[n - 1 - allowed])
            } else {
                let t = f64::from(u) + scale * (tail_rate / fmr).ln();
                t.min(1.0) as f32
            };
            let threshold = threshold.max(prev);
            prev = threshold;
            points.push(FmrPoint { fmr, threshold, extrapolated: !empirical });
        }

        Ok(Self { model, impostor_count: n as u64, points, tail })
    }

    /// Check the invariants listed on the type; deserialisation calls this.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |why: String| Err(CoreError::BadCalibration(why));
        if self.points.is_empty() {
            return bad("no points".into());
        }
        for (i, p) in self.points.iter().enumerate() {
            if !(p.fmr > 0.0 && p.fmr < 1.0) {
                return bad(format!("point {i}: fmr {} is outside (0, 1)", p.fmr));
            }
            if !p.threshold.is_finite() {
                return bad(format!("point {i}: threshold is not finite"));
            }
        }
        for (i, w) in self.points.windows(2).enumerate() {
            if w[1].fmr >= w[0].fmr {
                return bad(format!("point {}: fmr does not decrease", i + 1));
            }
            if w[1].threshold < w[0].threshold {
                return bad(format!("point {}: threshold decreases", i + 1));
            }
        }
        let scale_ok = self.tail.scale.is_finite() && self.tail.scale >= 0.0;
        if !(self.tail.threshold.is_finite() && scale_ok) {
            return bad("tail fit is not finite".into());
        }
        Ok(())
    }

    /// The score threshold that gives false-match rate `fmr`.
    ///
    /// Interpolates linearly in log10(fmr) between grid points. Rates above the grid (> 1e-1) get
    /// the first point's threshold, which is stricter than asked; rates below it (< 1e-12) get the
    /// last point's, which is *laxer* than asked — the table cannot say more. Errors with
    /// [`CoreError::BadRate`] unless `0 < fmr < 1`.
    pub fn threshold_for_fmr(&self, fmr: f64) -> Result<f32, CoreError> {
        if !(fmr > 0.0 && fmr < 1.0) {
            return Err(CoreError::BadRate(fmr));
        }
        let (Some(first), Some(last)) = (self.points.first(), self.points.last()) else {
            return Err(CoreError::BadCalibration("no points".into()));
        };
        // points[..j] have fmr above the target.
        let j = self.points.partition_point(|p| p.fmr > fmr);
        if j == 0 {
            return Ok(first.threshold);
        }
        if j == self.points.len() {
            return Ok(last.threshold);
        }
        let (a, b) = (&self.points[j - 1], &self.points[j]);
        let w = (a.fmr.log10() - fmr.log10()) / (a.fmr.log10() - b.fmr.log10());
        let t = f64::from(a.threshold) + w * (f64::from(b.threshold) - f64::from(a.threshold));
        Ok(t as f32)
    }

    /// The false-match rate the table assigns to `score`: the inverse of
    /// [`Self::threshold_for_fmr`], interpolated in log10(fmr).
    ///
    /// Clamped to the grid ends: a score below the first threshold reports the grid's largest rate
    /// (1e-1; read it as "at least that"), a score at or above the last threshold the smallest
    /// (1e-12; "at most that"). Where several points share a threshold, a score equal to it gets the
    /// smallest of their rates, consistent with "a match is `score >= threshold`". A NaN score
    /// reports 1.0, as does a table without points.
    pub fn fmr_at(&self, score: f32) -> f64 {
        let (Some(first), Some(last)) = (self.points.first(), self.points.last()) else {
            return 1.0;
        };
        if score.is_nan() {
            return 1.0;
        }
        // points[..c] have thresholds at or below the score.
        let c = self.points.partition_point(|p| p.threshold <= score);
        if c == 0 {
            return first.fmr;
        }
        if c == self.points.len() {
            return last.fmr;
        }
        let (a, b) = (&self.points[c - 1], &self.points[c]);
        // a.threshold <= score < b.threshold, so the width is positive.
        let w = (f64::from(score) - f64::from(a.threshold))
            / (f64::from(b.threshold) - f64::from(a.threshold));
        10f64.powf(a.fmr.log10() + w * (b.fmr.log10() - a.fmr.log10()))
    }

    /// The threshold for a false-positive identification rate `fpir` when searching a gallery of
    /// `gallery_size` subjects.
    ///
    /// Uses FPIR ≈ N · FMR, i.e. `fmr = fpir / max(N, 1)`. For independent comparisons the exact
    /// relation is FPIR = 1 - (1 - FMR)^N <= N · FMR, so the approximation never under-states the
    /// FPIR: the threshold is at least as strict as needed. It ignores that scores within one search
    /// are correlated (the same probe against everyone), and with several templates per subject N
    /// should count templates. Large galleries push `fmr` into the extrapolated part of the table.
    /// Errors with [`CoreError::BadRate`] unless `0 < fpir < 1`.
    pub fn threshold_for_fpir(&self, fpir: f64, gallery_size: u64) -> Result<f32, CoreError> {
        if !(fpir > 0.0 && fpir < 1.0) {
            return Err(CoreError::BadRate(fpir));
        }
        self.threshold_for_fmr(fpir / gallery_size.max(1) as f64)
    }

    /// Compare `score` with the threshold for `target_fmr`; a match iff `score >= threshold` (so a
    /// NaN score never matches). Errors as [`Self::threshold_for_fmr`].
    pub fn decide(&self, score: f32, target_fmr: f64) -> Result<Decision, CoreError> {
        let threshold = self.threshold_for_fmr(target_fmr)?;
        Ok(Decision {
            is_match: score >= threshold,
            score,
            threshold,
            target_fmr,
            fmr_at_score: self.fmr_at(score),
        })
    }
}

/// Decode a MOSIP-style integer rate target: `10^(-target / 10)`, so 30 → 1e-3 and 40 → 1e-4.
pub fn fpir_from_mosip(target: u32) -> f64 {
    10f64.powf(-f64::from(target) / 10.0)
}

/// Encode a rate as a MOSIP-style integer target: `round(-10 · log10(fpir))`, so 1e-3 → 30.
/// Rates of 1 or more (and NaN) encode as 0; the result saturates at `u32::MAX`.
pub fn mosip_from_fpir(fpir: f64) -> u32 {
    // `as` saturates and maps NaN to 0.
    (-10.0 * fpir.log10()).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model() -> ModelId {
        ModelId::new("synthetic", "1").unwrap()
    }

    /// `n` scores evenly spaced on [-1, 1]: FMR(t) = (1 - t) / 2.
    fn uniform_grid(n: usize) -> Vec<f32> {
        (0..n).map(|i| (-1.0 + 2.0 * i as f64 / (n - 1) as f64) as f32).collect()
    }

    /// Seeded normal(mean, sd) scores: a 64-bit LCG (Knuth's MMIX constants) and Box–Muller.
    fn normal_scores(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f32> {
        let mut state = seed;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // 53 high bits → (0, 1]: never 0, so ln is finite.
            ((state >> 11) as f64 + 1.0) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean + sd * z) as f32
            })
            .collect()
    }

    fn count_at_or_above(scores: &[f32], t: f32) -> usize {
        scores.iter().filter(|&&s| s >= t).count()
    }

    fn assert_invariants(table: &CalibrationTable, scores: &[f32]) {
        table.validate().unwrap();
        assert_eq!(table.points.len(), 45);
        assert!((table.points[0].fmr - 1e-1).abs() < 1e-15);
        assert!((table.points[44].fmr - 1e-12).abs() < 1e-25);
        let n = scores.len() as f64;
        let mut seen_extrapolated = false;
        for p in &table.points {
            if p.extrapolated {
                seen_extrapolated = true;
                assert!(p.fmr * n < 10.0 + 1e-6, "{p:?}");
                assert!(p.threshold <= 1.0, "{p:?}");
            } else {
                assert!(!seen_extrapolated, "empirical point after an extrapolated one: {p:?}");
                // Conservative on the sample.
                let observed = count_at_or_above(scores, p.threshold) as f64 / n;
                assert!(observed <= p.fmr, "{p:?}: observed {observed}");
            }
        }
    }

    #[test]
    fn uniform_thresholds_match_the_analytic_quantile() {
        let n = 100_001;
        let scores = uniform_grid(n);
        let table = CalibrationTable::from_impostor_scores(model(), &mut scores.clone()).unwrap();
        assert_invariants(&table, &scores);
        assert_eq!(table.impostor_count, n as u64);
        for p in &table.points {
            let analytic = 1.0 - 2.0 * p.fmr;
            if p.extrapolated {
                // The exponential tail over-estimates a bounded tail: never below the truth.
                assert!(f64::from(p.threshold) >= analytic - 1e-4, "{p:?}");
                assert!(p.threshold <= 1.0);
            } else {
                assert!((f64::from(p.threshold) - analytic).abs() < 1e-4, "{p:?} vs {analytic}");
            }
        }
        // 10 / n ≈ 1e-4: the grid is empirical down to 1e-4 and extrapolated below.
        let last_empirical = table.points.iter().rfind(|p| !p.extrapolated).unwrap();
        assert!((last_empirical.fmr - 1e-4).abs() < 1e-12);
        assert_eq!(table.points.last().unwrap().threshold, 1.0);
    }

    #[test]
    fn normal_thresholds_match_the_analytic_quantile() {
        let seed = 0x5eed_0001;
        println!("seed {seed:#x}");
        let (mean, sd) = (0.0, 0.1);
        let scores = normal_scores(seed, 200_000, mean, sd);
        let table = CalibrationTable::from_impostor_scores(model(), &mut scores.clone()).unwrap();
        assert_invariants(&table, &scores);
        // Upper-tail standard normal quantiles z(f): P(Z >= z) = f.
        for (fmr, z) in
            [(1e-1, 1.281_551_6), (1e-2, 2.326_347_9), (1e-3, 3.090_232_3), (1e-4, 3.719_016_5)]
        {
            let t = f64::from(table.threshold_for_fmr(fmr).unwrap());
            let analytic = mean + sd * z;
            assert!((t - analytic).abs() < 0.015, "fmr {fmr}: {t} vs {analytic}");
        }
        // Extrapolated: a Gaussian tail is lighter than exponential, so the estimate is high but
        // not absurd.
        for (fmr, z) in [(1e-6, 4.753_424_3), (1e-8, 5.612_001_2), (1e-10, 6.361_340_9)] {
            let t = f64::from(table.threshold_for_fmr(fmr).unwrap());
            let analytic = mean + sd * z;
            assert!(t >= analytic - 0.01 && t <= analytic + 0.3, "fmr {fmr}: {t} vs {analytic}");
        }
        assert!(table.tail.scale > 0.0);
        assert_eq!(table.tail.exceedances, 2000);
    }

    #[test]
    fn round_trip_fmr_threshold_fmr() {
        let scores = normal_scores(7, 50_000, 0.05, 0.12);
        let table = CalibrationTable::from_impostor_scores(model(), &mut scores.clone()).unwrap();
        for f in [0.09, 1e-1, 10f64.powf(-1.1), 0.02, 3.3e-3, 1e-4, 2e-5, 10f64.powf(-7.7), 4e-9] {
            let t = table.threshold_for_fmr(f).unwrap();
            let back = table.fmr_at(t);
            assert!((back.log10() - f.log10()).abs() < 1e-3, "{f} -> {t} -> {back}");
        }
    }

    #[test]
    fn rates_outside_the_grid_are_clamped() {
        let table =
            CalibrationTable::from_impostor_scores(model(), &mut uniform_grid(5000)).unwrap();
        let first = table.points[0].threshold;
        let last = table.points[44].threshold;
        assert_eq!(table.threshold_for_fmr(0.5).unwrap(), first);
        assert_eq!(table.threshold_for_fmr(1e-15).unwrap(), last);
        assert_eq!(table.fmr_at(-1.0), table.points[0].fmr);
        assert_eq!(table.fmr_at(1.0), table.points[44].fmr);
        assert_eq!(table.fmr_at(f32::NAN), 1.0);
    }

    #[test]
    fn fpir_divides_by_gallery_size() {
        let table =
            CalibrationTable::from_impostor_scores(model(), &mut uniform_grid(5000)).unwrap();
        assert_eq!(
            table.threshold_for_fpir(1e-3, 1000).unwrap(),
            table.threshold_for_fmr(1e-3 / 1000.0).unwrap()
        );
        assert_eq!(
            table.threshold_for_fpir(1e-2, 0).unwrap(),
            table.threshold_for_fmr(1e-2).unwrap()
        );
        assert_eq!(table.threshold_for_fpir(0.0, 10), Err(CoreError::BadRate(0.0)));
    }

    #[test]
    fn decide_compares_with_the_threshold() {
        let table =
            CalibrationTable::from_impostor_scores(model(), &mut uniform_grid(100_001)).unwrap();
        let t = table.threshold_for_fmr(1e-2).unwrap();
        let yes = table.decide(t, 1e-2).unwrap();
        assert!(yes.is_match);
        assert_eq!((yes.threshold, yes.target_fmr), (t, 1e-2));
        assert!((yes.fmr_at_score.log10() + 2.0).abs() < 1e-3);
        let no = table.decide(t - 0.01, 1e-2).unwrap();
        assert!(!no.is_match && no.fmr_at_score > 1e-2);
        assert!(!table.decide(f32::NAN, 1e-2).unwrap().is_match);
        assert_eq!(table.decide(0.5, 2.0), Err(CoreError::BadRate(2.0)));
        let json = serde_json::to_value(yes).unwrap();
        assert_eq!(json["is_match"], true);
    }

    #[test]
    fn mosip_encoding() {
        assert!((fpir_from_mosip(30) - 1e-3).abs() < 1e-18);
        assert!((fpir_from_mosip(40) - 1e-4).abs() < 1e-19);
        assert_eq!(fpir_from_mosip(0), 1.0);
        assert_eq!(mosip_from_fpir(1e-3), 30);
        assert_eq!(mosip_from_fpir(1e-4), 40);
        assert_eq!(mosip_from_fpir(2e-3), 27);
        assert_eq!(mosip_from_fpir(1.0), 0);
        assert_eq!(mosip_from_fpir(f64::NAN), 0);
        for t in 0..=120 {
            assert_eq!(mosip_from_fpir(fpir_from_mosip(t)), t);
        }
    }

    #[test]
    fn bad_rates_are_rejected() {
        let table =
            CalibrationTable::from_impostor_scores(model(), &mut uniform_grid(1000)).unwrap();
        for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(table.threshold_for_fmr(bad), Err(CoreError::BadRate(_))), "{bad}");
            assert!(
                matches!(table.threshold_for_fpir(bad, 10), Err(CoreError::BadRate(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn too_few_or_non_finite_scores_are_rejected() {
        assert_eq!(
            CalibrationTable::from_impostor_scores(model(), &mut uniform_grid(999)),
            Err(CoreError::TooFewImpostors { min: 1000, got: 999 })
        );
        assert_eq!(
            CalibrationTable::from_impostor_scores(model(), &mut []),
            Err(CoreError::TooFewImpostors { min: 1000, got: 0 })
        );
        let mut scores = uniform_grid(2000);
        scores[17] = f32::NAN;
        assert_eq!(
            CalibrationTable::from_impostor_scores(model(), &mut scores),
            Err(CoreError::NonFinite { index: 17 })
        );
        scores[17] = f32::NEG_INFINITY;
        assert_eq!(
            CalibrationTable::from_impostor_scores(model(), &mut scores),
            Err(CoreError::NonFinite { index: 17 })
        );
    }

    #[test]
    fn identical_scores_give_a_flat_table() {
        let mut scores = vec![0.25f32; 1000];
        let table = CalibrationTable::from_impostor_scores(model(), &mut scores).unwrap();
        table.validate().unwrap();
        assert_eq!(table.tail.scale, 0.0);
        assert!(table.points.iter().all(|p| p.threshold == next_up(0.25)));
        assert!(!table.decide(0.25, 1e-3).unwrap().is_match);
        assert_eq!(table.fmr_at(0.25), 1e-1);
        assert_eq!(table.fmr_at(0.3), table.points[44].fmr);
    }

    #[test]
    fn serde_round_trip() {
        let table = CalibrationTable::from_impostor_scores(
            model(),
            &mut normal_scores(3, 20_000, 0.0, 0.1),
        )
        .unwrap();
        let json = serde_json::to_string(&table).unwrap();
        let back: CalibrationTable = serde_json::from_str(&json).unwrap();
        // serde_json without its `float_roundtrip` feature may parse an f64 one ulp off; f32
        // thresholds and everything else come back exactly.
        let near = |a: f64, b: f64| (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs());
        assert_eq!((&back.model, back.impostor_count), (&table.model, table.impostor_count));
        assert_eq!(back.points.len(), table.points.len());
        for (b, t) in back.points.iter().zip(&table.points) {
            assert_eq!((b.threshold, b.extrapolated), (t.threshold, t.extrapolated));
            assert!(near(b.fmr, t.fmr), "{b:?} vs {t:?}");
        }
        assert_eq!(
            (back.tail.threshold, back.tail.exceedances),
            (table.tail.threshold, table.tail.exceedances)
        );
        assert!(near(back.tail.scale, table.tail.scale));
        assert!(json.contains("\"model\":\"synthetic@1\""), "{json}");
    }

    #[test]
    fn deserialisation_checks_invariants() {
        let table =
            CalibrationTable::from_impostor_scores(model(), &mut uniform_grid(1000)).unwrap();
        let mut v = serde_json::to_value(&table).unwrap();
        v["points"][3]["threshold"] = serde_json::json!(-0.9);
        let err = serde_json::from_value::<CalibrationTable>(v).unwrap_err();
        assert!(err.to_string().contains("threshold decreases"), "{err}");
        let mut v = serde_json::to_value(&table).unwrap();
        v["points"] = serde_json::json!([]);
        assert!(serde_json::from_value::<CalibrationTable>(v).is_err());
        let mut v = serde_json::to_value(&table).unwrap();
        v["points"][0]["fmr"] = serde_json::json!(1.0);
        assert!(serde_json::from_value::<CalibrationTable>(v).is_err());
    }

    fn score_sets() -> impl Strategy<Value = Vec<f32>> {
        prop_oneof![
            prop::collection::vec(-1.0f32..=1.0, 1000..3000),
            // Heavy ties, including a degenerate (zero-scale) tail.
            prop::collection::vec((0u8..=4).prop_map(|v| f32::from(v) / 4.0), 1000..2000),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn tables_are_monotone(scores in score_sets()) {
            let table = CalibrationTable::from_impostor_scores(model(), &mut scores.clone()).unwrap();
            prop_assert!(table.validate().is_ok());
            let n = scores.len() as f64;
            for p in &table.points {
                prop_assert!(p.threshold <= next_up(1.0));
                if !p.extrapolated {
                    let observed = count_at_or_above(&scores, p.threshold) as f64 / n;
                    prop_assert!(observed <= p.fmr, "{:?}: observed {}", p, observed);
                }
            }
            let mut prev_t = f32::NEG_INFINITY;
            for k in 0..=130 {
                let f = 10f64.powf(-0.5 - f64::from(k) / 10.0);
                let t = table.threshold_for_fmr(f).unwrap();
                prop_assert!(t >= prev_t, "fmr {}: {} < {}", f, t, prev_t);
                prev_t = t;
            }
            let mut prev_f = f64::INFINITY;
            for k in 0..=200 {
                let s = -1.0 + k as f32 / 100.0;
                let f = table.fmr_at(s);
                prop_assert!(f <= prev_f && f > 0.0, "score {}: {} > {}", s, f, prev_f);
                prev_f = f;
            }
        }
    }
}
