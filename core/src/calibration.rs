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
//!   largest score, so FMR(u + y) ≈ (m / n) · P(Y > y) for the excess `Y = s - u`. Two models of
//!   `P(Y > y)` are fitted to the same `m` excesses (both kept in [`TailFit`]), and each grid rate
//!   `f` gets the **higher** of their two thresholds, with `L = ln(m / (n f))`:
//!
//!   1. A **generalized Pareto distribution** (GPD), P(Y > y) = (1 + ξ y / σ)^(-1/ξ), the limit
//!      form of threshold excesses for essentially any continuous distribution
//!      (Pickands–Balkema–de Haan). The shape says how the tail ends: ξ > 0 is heavier than
//!      exponential (polynomial), ξ = 0 exponential, ξ < 0 lighter and bounded, with an upper end
//!      at `u - σ / ξ`. Shape and scale come from probability-weighted moments (Hosking & Wallis
//!      1987, plotting positions `(i - 0.35) / m`): with `a0` the mean excess and `a1` the mean of
//!      the ascending excesses weighted by `1 - (i - 0.35) / m`, `ξ = 2 - a0 / (a0 - 2 a1)` and
//!      `σ = a0 (1 - ξ)` (the GPD's mean is `σ / (1 - ξ)`). Closed form, no iteration, no
//!      convergence failures. `ξ` is clamped to [`TailFit::SHAPE_RANGE`], [-0.5, 0.5], and `σ`
//!      refitted to the mean excess for the clamped shape: the shape is the least certain part of
//!      the fit and the extrapolation is most sensitive to it; the lower bound keeps a bounded tail
//!      from being cut off too early (a uniform tail, ξ = -1, is extrapolated as ξ = -0.5, which
//!      errs high), the upper one stops a few outliers from sending every threshold to 1.0. Then
//!      `t = u + (σ / ξ) · (e^(ξ L) - 1)` (`u + σ L` as ξ → 0), at most `u - σ / ξ` for ξ < 0.
//!   2. A **Gaussian-type tail** whose hazard rate grows linearly with the score,
//!      `-ln P(Y > y) = a y + (c / 2) y²` with `a, c >= 0` (`c = 0` is the exponential tail; a
//!      Gaussian's hazard grows almost exactly linearly), fitted by maximum likelihood. The
//!      log-likelihood `Σ ln(a + c yᵢ) - a Σ yᵢ - (c / 2) Σ yᵢ²` is concave, so its maximum is
//!      unique and a damped Newton iteration finds it; `c = 0` exactly when the excesses are at least
//!      as dispersed as an exponential's (mean square >= 2 · mean²). Then
//!      `t = u + 2 L / (a + sqrt(a² + 2 c L))`.
//!
//!   Extrapolated points carry `extrapolated: true`; they are clamped at 1.0 (the largest cosine
//!   similarity) and never fall below the previous point's threshold, so thresholds are
//!   non-decreasing as the rate falls.
//!
//! **Why two models.** Impostor cosine tails differ in shape between models, so no fixed shape
//! will do: an exponential tail (this module's earlier method) on the light, bounded, roughly
//! Gaussian tail of random unit vectors in 128 dimensions put the FMR 1e-8 threshold at about 0.60
//! instead of 0.47, costing 1:N searches FNIR for nothing, while real face models can have tails
//! heavier than Gaussian (look-alikes, relatives, demographic clusters) on which a light fixed shape
//! is optimistic. The GPD adapts to heavy and exponential tails, but on Gaussian-like tails its
//! constant shape converges slowly: the local shape of such a tail drifts towards 0 as the rate
//! falls (from about -0.14 at 1e-2 to -0.04 at 1e-8 for the 128-dimensional cosines), the fit sees
//! the steep end near `u`, and it extrapolates thresholds that are too **low** (by 0.03 on average
//! at 1e-8 from 1e6 such scores), i.e. an FMR above the one promised. The linear-hazard model is
//! right on exactly those tails (within about ±0.03 at 1e-8 there, usually a little high) and on
//! exponential ones, but cannot follow a polynomial tail, where the GPD is right. Each model's
//! large errors towards low thresholds are on tails the other one follows, so taking the higher
//! of the two removes both; on exponential tails they agree.
//!
//! # Limits
//!
//! Extrapolated thresholds are **estimates**, not measurements: nothing in the data confirms a rate
//! of 1e-9 measured on 1e6 impostors. Both models assume the top 1 % of impostor scores already
//! shows the shape of the far tail; a tail that changes shape beyond the sample (a small cluster
//! of near-duplicates, twins or mislabelled pairs in the population that the impostor set barely
//! samples) is invisible to them. Sampling error alone moves a threshold six decades below `m / n`
//! by about ±0.01–0.02 (cosine) at `m` = 10^4, and tails whose hazard grows more slowly than
//! linearly (between exponential and Gaussian) can still be extrapolated somewhat low. Report
//! extrapolated rates as such and, where it matters, validate the extrapolated threshold with real
//! non-mated searches against a gallery of the intended size (count the false positives at the
//! chosen threshold) or on a larger impostor set. Rates between grid points are interpolated
//! linearly in log10(FMR); rates outside the grid are clamped to its ends (see
//! [`CalibrationTable::threshold_for_fmr`]).

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

/// The two tail models fitted to the highest impostor scores (see the module docs): a generalized
/// Pareto distribution (`scale`, `shape`) and a linear-hazard (Gaussian-type) tail (`hazard`,
/// `hazard_slope`). Kept in the table so reports can show how the extrapolated points were made.
/// All parameters are 0 when every exceedance equals `threshold` (nothing to fit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailFit {
    /// `u`: the score the exceedances are measured from.
    pub threshold: f32,
    /// `m`: how many scores were fitted (all are `>= threshold`).
    pub exceedances: u64,
    /// GPD `σ`, `>= 0`.
    pub scale: f64,
    /// GPD `ξ`, within [`TailFit::SHAPE_RANGE`]: 0 is an exponential tail, negative a bounded one.
    pub shape: f64,
    /// Linear-hazard `a`, `>= 0`: the hazard rate at `threshold`, per unit of score.
    pub hazard: f64,
    /// Linear-hazard `c`, `>= 0`: how fast the hazard rate grows per unit of score (0 for an
    /// exponential tail).
    pub hazard_slope: f64,
}

impl TailFit {
    /// The GPD shape estimate is clamped to this range (see the module docs).
    pub const SHAPE_RANGE: (f64, f64) = (-0.5, 0.5);
    /// Below this `|ξ|` the GPD's exponential limit is used, free of cancellation.
    const SHAPE_EPS: f64 = 1e-9;

    /// Fit both models to `excesses`, which must be non-negative and sorted ascending.
    fn fit(threshold: f32, excesses: &[f64]) -> Self {
        let m = excesses.len() as f64;
        let mean = excesses.iter().sum::<f64>() / m;
        let mut tail = Self {
            threshold,
            exceedances: excesses.len() as u64,
            scale: 0.0,
            shape: 0.0,
            hazard: 0.0,
            hazard_slope: 0.0,
        };
        if mean > 0.0 && mean.is_finite() {
            (tail.scale, tail.shape) = Self::fit_gpd(excesses, mean);
            (tail.hazard, tail.hazard_slope) = Self::fit_linear_hazard(excesses, mean);
        }
        tail
    }

    /// GPD by probability-weighted moments; `mean > 0` is the mean excess. Returns `(σ, ξ)`.
    fn fit_gpd(excesses: &[f64], mean: f64) -> (f64, f64) {
        let m = excesses.len() as f64;
        // a1: the ascending excesses weighted by 1 - p_i, p_i = (i - 0.35) / m for 1-based i.
        let a1 = excesses
            .iter()
            .enumerate()
            .map(|(i, &y)| (1.0 - (i as f64 + 0.65) / m) * y)
            .sum::<f64>()
            / m;
        let d = mean - 2.0 * a1;
        let raw = 2.0 - mean / d;
        let (lo, hi) = Self::SHAPE_RANGE;
        // d <= 0 only through rounding with (nearly) equal excesses: the lightest tail allowed.
        let shape = if d > 0.0 && raw.is_finite() { raw.clamp(lo, hi) } else { lo };
        (mean * (1.0 - shape), shape)
    }

    /// Maximum-likelihood linear-hazard tail, `-ln P(Y > y) = a y + (c / 2) y²` with `a, c >= 0`;
    /// `mean > 0` is the mean excess. Returns `(a, c)`.
    ///
    /// Works in units of the mean excess, `z = y / mean`, with `-ln P(Z > z) = α z + β z²`, where
    /// the per-sample log-likelihood `mean(ln(α + 2β z)) - α - β mean(z²)` is concave in `(α, β)`.
    fn fit_linear_hazard(excesses: &[f64], mean: f64) -> (f64, f64) {
        let m = excesses.len() as f64;
        let z2 = excesses.iter().map(|&y| (y / mean) * (y / mean)).sum::<f64>() / m;
        let exponential = (1.0 / mean, 0.0);
        // At β = 0 the best α is 1 and the β-derivative is 2 - mean(z²): if that is not positive,
        // the concave maximum lies on the boundary β = 0 (the exponential fit).
        if z2 >= 2.0 || !z2.is_finite() {
            return exponential;
        }
        let loglik = |al: f64, be: f64| {
            excesses.iter().map(|&y| (al + 2.0 * be * (y / mean)).ln()).sum::<f64>() / m
                - al
                - be * z2
        };
        let (mut al, mut be) = (1.0, 0.0);
        let mut cur = loglik(al, be);
        for _ in 0..100 {
            // Gradient and Hessian of the per-sample log-likelihood.
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (-1.0, -z2, 0.0, 0.0, 0.0);
            for &y in excesses {
                let z = y / mean;
                let w = 1.0 / (al + 2.0 * be * z);
                ga += w / m;
                gb += 2.0 * z * w / m;
                haa -= w * w / m;
                hab -= 2.0 * z * w * w / m;
                hbb -= 4.0 * z * z * w * w / m;
            }
            let det = haa * hbb - hab * hab;
            if det.is_nan() || det <= 1e-12 * haa * hbb {
                break; // (nearly) equal excesses: no curvature to use
            }
            let da = -(hbb * ga - hab * gb) / det;
            let db = -(haa * gb - hab * ga) / det;
            // Damped, projected step: stay in α > 0, β >= 0 and never lose likelihood.
            let mut step = 1.0;
            let mut moved = false;
            while step > 1e-10 {
                let (na, nb) = (al + step * da, (be + step * db).max(0.0));
                let next = if na > 0.0 { loglik(na, nb) } else { f64::NAN };
                if next >= cur {
                    let gain = next - cur;
                    (al, be, cur, moved) = (na, nb, next, gain > 1e-15);
                    break;
                }
                step *= 0.5;
            }
            if !moved {
                break;
            }
        }
        if al.is_finite() && be.is_finite() && cur.is_finite() {
            (al / mean, 2.0 * be / (mean * mean))
        } else {
            exponential
        }
    }

    /// The score whose tail rate is `f`, given that `threshold` is exceeded at rate `tail_rate`
    /// (`f < tail_rate`): the higher of the two models' answers, at most 1.0.
    fn threshold_at(&self, f: f64, tail_rate: f64) -> f64 {
        let u = f64::from(self.threshold);
        if self.scale.is_nan() || self.scale <= 0.0 {
            return u; // nothing above u to extrapolate from
        }
        let ln_r = (tail_rate / f).ln();
        let mut gpd = if self.shape.abs() < Self::SHAPE_EPS {
            self.scale * ln_r
        } else {
            self.scale * (self.shape * ln_r).exp_m1() / self.shape
        };
        if self.shape < 0.0 {
            gpd = gpd.min(-self.scale / self.shape);
        }
        let (a, c) = (self.hazard, self.hazard_slope);
        let root = (a * a + 2.0 * c * ln_r).sqrt();
        let linear_hazard = if a + root > 0.0 { 2.0 * ln_r / (a + root) } else { 0.0 };
        (u + gpd.max(linear_hazard)).min(1.0)
    }
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
    pub tail: TailFit,
}

/// The deserialised form of [`CalibrationTable`], before its invariants are checked.
#[derive(Deserialize)]
struct TableRepr {
    model: ModelId,
    impostor_count: u64,
    points: Vec<FmrPoint>,
    tail: TailFit,
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
        let excesses: Vec<f64> =
            sorted[n - m..].iter().map(|&s| f64::from(s) - f64::from(u)).collect();
        let tail = TailFit::fit(u, &excesses);
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
                tail.threshold_at(fmr, tail_rate) as f32
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
        let t = &self.tail;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        let params_ok = non_negative(t.scale)
            && t.shape.is_finite()
            && non_negative(t.hazard)
            && non_negative(t.hazard_slope);
        if !(t.threshold.is_finite() && params_ok) {
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
    /// At the grid ends: a score below the first threshold reports 1.0 (its rate is above the
    /// grid's largest, 1e-1, and nothing bounds it lower: such a score is no evidence of a
    /// match, and fusing it as 1e-1 would count every non-matching modality as one), a score
    /// at or above the last threshold the smallest rate (1e-12; "at most that"). Where several points share a threshold, a score equal to it gets the
    /// smallest of their rates, consistent with "a match is `score >= threshold`". A NaN score
    /// reports 1.0, as does a table without points.
    pub fn fmr_at(&self, score: f32) -> f64 {
        let (Some(_), Some(last)) = (self.points.first(), self.points.last()) else {
            return 1.0;
        };
        if score.is_nan() {
            return 1.0;
        }
        // points[..c] have thresholds at or below the score.
        let c = self.points.partition_point(|p| p.threshold <= score);
        if c == 0 {
            return 1.0;
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

    /// A seeded generator for test data: a 64-bit LCG (Knuth's MMIX constants).
    struct Lcg(u64);

    impl Lcg {
        /// Uniform on (0, 1]: never 0, so ln is finite.
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64
        }

        /// Standard normal (Box–Muller, cosine branch).
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }

        /// Gamma(shape, 1) for shape >= 1 (Marsaglia & Tsang 2000).
        fn gamma(&mut self, shape: f64) -> f64 {
            let d = shape - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            loop {
                let x = self.normal();
                let v = (1.0 + c * x).powi(3);
                if v > 0.0 && self.uniform().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                    return d * v;
                }
            }
        }
    }

    /// Seeded normal(mean, sd) scores.
    fn normal_scores(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f32> {
        let mut rng = Lcg(seed);
        (0..n).map(|_| (mean + sd * rng.normal()) as f32).collect()
    }

    /// Seeded cosines between independent uniformly random unit vectors in `dim` dimensions:
    /// distributed as the first coordinate of a random unit vector, `z / sqrt(z² + χ²(dim - 1))`,
    /// with density ∝ (1 - x²)^((dim - 3) / 2) on [-1, 1].
    fn cosine_scores(seed: u64, n: usize, dim: usize) -> Vec<f32> {
        let mut rng = Lcg(seed);
        let half_rest = (dim - 1) as f64 / 2.0;
        (0..n)
            .map(|_| {
                let z = rng.normal();
                let chi2 = 2.0 * rng.gamma(half_rest);
                (z / (z * z + chi2).sqrt()) as f32
            })
            .collect()
    }

    /// Seeded Laplace(0, b) scores: P(X >= t) = exp(-t / b) / 2 for t >= 0.
    fn laplace_scores(seed: u64, n: usize, b: f64) -> Vec<f32> {
        let mut rng = Lcg(seed);
        (0..n)
            .map(|_| {
                let e = -b * rng.uniform().ln();
                (if rng.uniform() < 0.5 { e } else { -e }) as f32
            })
            .collect()
    }

    /// ∫ f over [a, b] by composite Simpson with `2 k` panels.
    fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, k: usize) -> f64 {
        let h = (b - a) / (2 * k) as f64;
        let inner: f64 =
            (1..2 * k).map(|i| f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
        (f(a) + f(b) + inner) * h / 3.0
    }

    /// The exact threshold at rate `fmr` for [`cosine_scores`]: solves
    /// ∫_t^1 (1 - x²)^e dx / ∫_-1^1 (1 - x²)^e dx = fmr, e = (dim - 3) / 2, by bisection on
    /// numerically integrated tails (no cancellation: the tail is integrated directly).
    fn cosine_quantile(fmr: f64, dim: usize) -> f64 {
        let e = (dim as f64 - 3.0) / 2.0;
        let density = |x: f64| (1.0 - x * x).max(0.0).powf(e);
        let total = 2.0 * simpson(density, 0.0, 1.0, 4000);
        let (mut lo, mut hi) = (0.0, 1.0);
        for _ in 0..50 {
            let mid = 0.5 * (lo + hi);
            if simpson(density, mid, 1.0, 2000) / total > fmr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
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
                // The uniform tail ends at 1 with ξ = -1, clamped to ξ = -0.5: never below the truth.
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
        // Extrapolated from the top 2000 scores: close to the Gaussian quantiles, not merely above
        // them (an exponential tail put them 0.1 to 0.25 too high). The linear-hazard model is
        // right for this tail; the tolerances allow for its sampling error at this n.
        println!("{:?}", table.tail);
        let cases: Vec<(f64, f64, f64)> =
            [(1e-6, 4.753_424_3, 0.03), (1e-8, 5.612_001_2, 0.04), (1e-10, 6.361_340_9, 0.06)]
                .iter()
                .map(|&(fmr, z, tolerance)| (fmr, mean + sd * z, tolerance))
                .collect();
        check_extrapolation(&table, &cases);
        assert!(table.tail.shape < 0.0 && table.tail.hazard_slope > 0.0);
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
        assert_eq!(table.fmr_at(-1.0), 1.0);
        assert_eq!(table.fmr_at(table.points[0].threshold), table.points[0].fmr);
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
        let t = &table.tail;
        assert_eq!((t.scale, t.shape, t.hazard, t.hazard_slope), (0.0, 0.0, 0.0, 0.0));
        assert!(table.points.iter().all(|p| p.threshold == next_up(0.25)));
        assert!(!table.decide(0.25, 1e-3).unwrap().is_match);
        assert_eq!(table.fmr_at(0.25), 1.0);
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
        let (b, t) = (&back.tail, &table.tail);
        assert!(near(b.scale, t.scale) && near(b.shape, t.shape), "{b:?} vs {t:?}");
        assert!(near(b.hazard, t.hazard) && near(b.hazard_slope, t.hazard_slope), "{b:?} vs {t:?}");
        assert!(json.contains("\"shape\":") && json.contains("\"hazard_slope\":"), "{json}");
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
        let mut v = serde_json::to_value(&table).unwrap();
        v["tail"]["hazard_slope"] = serde_json::json!(-1.0);
        let err = serde_json::from_value::<CalibrationTable>(v).unwrap_err();
        assert!(err.to_string().contains("tail fit"), "{err}");
    }

    /// Print and check `(fmr, truth, tolerance)` against the table's thresholds.
    fn check_extrapolation(table: &CalibrationTable, cases: &[(f64, f64, f64)]) {
        println!("{:>8} {:>8} {:>8} {:>8}", "fmr", "truth", "table", "error");
        for &(fmr, truth, _) in cases {
            let t = f64::from(table.threshold_for_fmr(fmr).unwrap());
            println!("{fmr:>8.0e} {truth:>8.4} {t:>8.4} {:>+8.4}", t - truth);
        }
        for &(fmr, truth, tolerance) in cases {
            let t = f64::from(table.threshold_for_fmr(fmr).unwrap());
            assert!((t - truth).abs() <= tolerance, "fmr {fmr:e}: {t} vs {truth} ± {tolerance}");
        }
    }

    #[test]
    fn light_cosine_tail_is_extrapolated_close_to_the_truth() {
        // Cosines of random unit vectors in 128 dimensions: a light, bounded, roughly Gaussian
        // tail (sd ≈ 0.088). The exponential tail this module used to fit put the 1e-8 threshold
        // about 0.13 too high; the GPD alone would put it about 0.03 too low.
        let (seed, dim) = (0x5eed_0128, 128);
        println!("seed {seed:#x}");
        let scores = cosine_scores(seed, 1_000_000, dim);
        let table = CalibrationTable::from_impostor_scores(model(), &mut scores.clone()).unwrap();
        assert_invariants(&table, &scores);
        let tail = &table.tail;
        println!("{tail:?}");
        assert_eq!(tail.exceedances, 10_000);
        // Both fits see a tail lighter than exponential.
        assert!(tail.shape < -0.03 && tail.hazard_slope > 0.0, "{tail:?}");
        // Sampling error alone is about ±0.01 at 1e-7 and ±0.015 at 1e-9 for this n.
        let cases: Vec<(f64, f64, f64)> = [(1e-6, 0.03), (1e-7, 0.03), (1e-8, 0.03), (1e-9, 0.04)]
            .iter()
            .map(|&(fmr, tolerance)| (fmr, cosine_quantile(fmr, dim), tolerance))
            .collect();
        check_extrapolation(&table, &cases);
    }

    #[test]
    fn cosine_quantile_matches_the_gaussian_approximation_and_the_sample() {
        // Sanity checks of the reference itself. Near the centre the density is almost
        // N(0, 1 / dim): the 1e-1 quantile is close to 1.2816 / sqrt(dim).
        let t = cosine_quantile(1e-1, 128);
        assert!((t - 1.281_551_6 / 128f64.sqrt()).abs() < 2e-3, "{t}");
        // Deep in the tail the bounded distribution is lighter than that Gaussian.
        assert!(cosine_quantile(1e-8, 128) < 5.612 / 128f64.sqrt());
        // And the sample's empirical 1e-3 quantile agrees with it.
        let mut scores = cosine_scores(11, 200_000, 128);
        scores.sort_unstable_by(f32::total_cmp);
        let empirical = f64::from(scores[scores.len() - 200]);
        assert!((empirical - cosine_quantile(1e-3, 128)).abs() < 0.005, "{empirical}");
    }

    #[test]
    fn exponential_tail_is_still_followed() {
        // Laplace(0, 0.02): P(X >= t) = exp(-t / 0.02) / 2, an exactly exponential tail.
        let (seed, b) = (0x5eed_1a91, 0.02);
        println!("seed {seed:#x}");
        let scores = laplace_scores(seed, 1_000_000, b);
        let table = CalibrationTable::from_impostor_scores(model(), &mut scores.clone()).unwrap();
        assert_invariants(&table, &scores);
        let tail = &table.tail;
        println!("{tail:?}");
        assert!(tail.shape.abs() < 0.03, "{tail:?}");
        // The hazard at u is close to 1 / b and hardly grows.
        assert!((tail.hazard * b - 1.0).abs() < 0.05, "{tail:?}");
        let cases: Vec<(f64, f64, f64)> = [1e-6, 1e-7, 1e-8, 1e-9]
            .iter()
            .map(|&fmr: &f64| (fmr, b * (0.5 / fmr).ln(), 0.025))
            .collect();
        check_extrapolation(&table, &cases);
    }

    #[test]
    fn heavy_tail_is_followed_by_the_gpd() {
        // A generalized Pareto tail with ξ = 0.1, heavier than exponential: P(X >= x) =
        // (1 + ξ x / s)^(-1/ξ). An exponential (or Gaussian-type) extrapolation would put the
        // 1e-8 threshold about 0.23 too low.
        let (seed, xi, s) = (0x5eed_0da7, 0.1, 0.01);
        println!("seed {seed:#x}");
        let mut rng = Lcg(seed);
        let scores: Vec<f32> =
            (0..1_000_000).map(|_| (s * (rng.uniform().powf(-xi) - 1.0) / xi) as f32).collect();
        let table = CalibrationTable::from_impostor_scores(model(), &mut scores.clone()).unwrap();
        assert_invariants(&table, &scores);
        println!("{:?}", table.tail);
        assert!((table.tail.shape - xi).abs() < 0.04, "{:?}", table.tail);
        assert_eq!(table.tail.hazard_slope, 0.0);
        // The shape's sampling error (±0.012) is amplified by the heavy tail: ±0.05 at 1e-8.
        let cases: Vec<(f64, f64, f64)> = [(1e-6, 0.04), (1e-7, 0.06), (1e-8, 0.1)]
            .iter()
            .map(|&(fmr, tolerance): &(f64, f64)| (fmr, s * (fmr.powf(-xi) - 1.0) / xi, tolerance))
            .collect();
        check_extrapolation(&table, &cases);
    }

    #[test]
    fn linear_hazard_fit_recovers_its_parameters() {
        // Excesses with -ln P(Y > y) = a y + (c / 2) y², drawn by inversion: y solves
        // a y + (c / 2) y² = E with E ~ Exp(1).
        let (a, c) = (20.0, 400.0);
        let mut rng = Lcg(5);
        let mut y: Vec<f64> = (0..20_000)
            .map(|_| {
                let e = -rng.uniform().ln();
                2.0 * e / (a + (a * a + 2.0 * c * e).sqrt())
            })
            .collect();
        y.sort_unstable_by(f64::total_cmp);
        let fit = TailFit::fit(0.0, &y);
        assert!((fit.hazard / a - 1.0).abs() < 0.05, "{fit:?}");
        assert!((fit.hazard_slope / c - 1.0).abs() < 0.1, "{fit:?}");
        // Exponential excesses: the slope is 0 exactly when they are at least as dispersed as an
        // exponential's, and small otherwise.
        let mut y: Vec<f64> = (0..20_000).map(|_| -0.05 * rng.uniform().ln()).collect();
        y.sort_unstable_by(f64::total_cmp);
        let fit = TailFit::fit(0.0, &y);
        assert!((fit.hazard * 0.05 - 1.0).abs() < 0.05 && fit.hazard_slope < 20.0, "{fit:?}");
        assert!(fit.shape.abs() < 0.05, "{fit:?}");
        // Degenerate inputs give finite parameters.
        for y in [vec![0.0; 10], vec![0.25; 10], vec![0.0, 0.0, 0.0, 1.0], vec![0.0, 1.0, 1.0, 1.0]]
        {
            let fit = TailFit::fit(0.5, &y);
            let params = [fit.scale, fit.shape, fit.hazard, fit.hazard_slope];
            assert!(params.iter().all(|p| p.is_finite()), "{y:?}: {fit:?}");
            let t = fit.threshold_at(1e-9, 1e-2);
            assert!((0.5..=1.0).contains(&t), "{y:?}: {fit:?} -> {t}");
        }
    }

    #[test]
    fn gpd_shape_is_clamped() {
        // A uniform tail has ξ = -1; it is extrapolated with ξ = -0.5 (thresholds err high).
        let y: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        let fit = TailFit::fit(0.0, &y);
        assert_eq!(fit.shape, TailFit::SHAPE_RANGE.0);
        // σ matches the mean excess for the clamped shape: mean = σ / (1 - ξ).
        assert!((fit.scale / 1.5 - 0.4995).abs() < 1e-9, "{fit:?}");
        // A very heavy tail (ξ = 0.9) is extrapolated with ξ = 0.5.
        let mut y: Vec<f64> =
            (1..=1000).map(|i| ((f64::from(i) / 1001.0).powf(-0.9) - 1.0) / 0.9).collect();
        y.sort_unstable_by(f64::total_cmp);
        assert_eq!(TailFit::fit(0.0, &y).shape, TailFit::SHAPE_RANGE.1);
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
