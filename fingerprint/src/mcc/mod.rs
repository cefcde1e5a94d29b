//! Minutia Cylinder-Code (MCC) 1:1 fingerprint matcher, after Cappelli, Ferrara and Maltoni,
//! "Minutia Cylinder-Code: a new representation and matching technique for fingerprint
//! recognition", IEEE TPAMI 32(12), 2010.
//!
//! Two stages:
//! - **Template preparation** ([`MccTemplate::new`], once per template at enrolment or probe time):
//!   every minutia gets a *cylinder*, a local descriptor of its neighbourhood in the minutia's own
//!   frame (so it is invariant to translation and rotation). This is the *bit-based* variant
//!   (MCC16b in the paper, here with 8×8 cells): `NS × NS` spatial cells of side `2R / NS` times
//!   `ND` angular sections, each cell value binarised (1 when the Gaussian-weighted contributions
//!   of the neighbours reach `μψ`), plus one validity bit per spatial cell (inside the cylinder's
//!   circle and within `Ω` of the convex hull of the minutiae). Cylinders with too few valid
//!   cells or too few neighbours are dropped.
//! - **Comparison** ([`similarity`], [`Matcher::similarity`]): the local similarity of two
//!   cylinders is `λ = 1 − ‖a ⊕ b‖ / (‖a‖ + ‖b‖)` over the cells valid in both, with the
//!   Euclidean norm of a bit vector `‖v‖ = √popcount(v)` as in the paper; a pair is matchable only
//!   when the minutiae directions differ by at most `δθ` and enough cells are valid in both.
//!   The global score is LSS-R (Local Similarity Sort with Relaxation): the `n_R` best pairs are
//!   relaxed against each other by their geometric compatibility, and the score is the mean
//!   relaxed similarity of the `n_P` most efficient pairs.
//!
//! Layout and speed: with `NS = 8` one `u64` holds all 64 spatial cells of one angular section,
//! so a cylinder is `ND = 6` bit words plus one validity word, and the per-pair work is one AND
//! and one popcount for the common validity, then `ND` × (2 AND, 1 XOR, 3 popcounts). Nothing is
//! allocated per comparison once a [`Matcher`]'s scratch buffers have grown. The crate is built
//! for the target's baseline CPU (on x86-64 without a popcount instruction), so the comparison
//! is compiled once more for POPCNT and once for AVX2 + POPCNT, and [`Isa::detect`] picks the
//! best one at run time; all give bit-identical scores (about 60 000 comparisons per second on
//! one core with AVX2 at 48 minutiae, 45 000 with the portable code).
//!
//! Departures from the paper, all small: two relaxed pairs that share a minutia position get
//! compatibility 0 (the paper leaves the radial angle of a zero-length segment undefined; such
//! pairs compete rather than support each other); compatibilities below 1e-6 count as 0 and each
//! sigmoid factor is floored at about 2e-9 (both keep the arithmetic away from subnormals); the
//! sigmoids and `atan2` of the consolidation use branch-free approximations (relative error
//! below 1e-5; a test checks the whole comparison against the plain formulas). Directions closer
//! than `δθ` are compared on whole ISO units (1.40625°).
//!
//! Limits: at most [`MccParams::max_minutiae`] minutiae (default 128, the best quality first;
//! hard cap 255), and rotations beyond `δθ` (π/2 by default) are not matched, by design.
//!
//! Scores are in `[0, 1]` and exactly symmetric: `similarity(a, b)` and `similarity(b, a)` run
//! the same computation on a canonical order of the two templates (by a 64-bit content hash), so
//! they are bit-identical unless two different templates collide on that hash.
//!
//! Coordinates: pixels are rescaled to 500 dpi (`197` pixels/cm) from the template's resolution,
//! then handled in a right-handed frame (`X = x`, `Y = −y`) in which the ISO angle is an ordinary
//! counter-clockwise angle. Cylinders are biometric data: `Debug` prints counts only.

mod build;
mod matcher;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

use biomatch_core::finger::{FingerTemplate, Minutia};

pub use matcher::{similarity, Isa, Matcher};

/// Spatial cells per side of a cylinder. `NS × NS = 64`: one `u64` per angular section.
pub const NS: usize = 8;
/// Angular sections per cylinder (`ΔD = 2π / ND`).
pub const ND: usize = 6;
/// Bits in one cylinder (`NS × NS × ND`); bit `k · 64 + j · NS + i` is cell `(i, j)` of section `k`.
pub const BITS_PER_CYLINDER: usize = NS * NS * ND;
/// `u64` words per cylinder bit vector (and per expanded validity mask).
pub const WORDS_PER_CYLINDER: usize = ND;
/// Hard cap on the minutiae one template keeps (indices are stored in `u8`).
pub const MAX_MCC_MINUTIAE: usize = 255;

/// Parameters of cylinder creation and of the LSS-R consolidation.
///
/// Lengths are in pixels at 500 dpi (templates at other resolutions are rescaled), angles in
/// radians. `Default` gives the paper's values except `R`, `σS`, `μψ`, `Ω` and `w_R`, which were
/// tuned for the 8×8-cell layout on NIST mindtct templates of synthetic prints (5 000 fingers of
/// `benches/examples/finger_eval.rs`, about 47 minutiae each, checked on 5 000 other fingers with
/// `core/examples/mcc_tune.rs`: EER 0.58 % → 0.36 %, FNMR at FMR 1e-4 1.4 % → 1.0 %;
/// [`MccParams::paper`] gives the paper's values throughout, EER 0.76 % there).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MccParams {
    /// Cylinder radius `R` (paper: 70; default 110: with 8×8 cells a wider neighbourhood pays
    /// off on mindtct templates: EER 0.56 % at 90, 0.48 % at 110 with `σS` = 12, 0.38 % with
    /// `σS` = 10; beyond 110 too many border cylinders fail `minVC` and FNMR at 1e-4 rises).
    pub radius: f32,
    /// Standard deviation `σS` of the spatial Gaussian contribution (paper, 16×16 cells of
    /// 8.75 px: 28/3; default 10 with the 27.5 px cells of `R` = 110: 9 to 10 is best, 14 to 16
    /// clearly worse).
    pub sigma_s: f32,
    /// Standard deviation `σD` of the directional Gaussian contribution (paper: 2π/9).
    pub sigma_d: f32,
    /// Threshold `μψ` on the summed contributions of a cell for its bit to be set (paper: 0.01;
    /// default 0.005; 0.004 to 0.0065 score about the same, 0.01 and above worse).
    pub mu_psi: f32,
    /// Enlargement `Ω` of the minutiae convex hull: cells farther than this from the hull are
    /// invalid (paper: 50; default 60, which keeps more border cylinders with the large `R`;
    /// 40 and 80 are worse).
    pub omega: f32,
    /// Minimum fraction of the cells inside the circle that must be valid for a cylinder to be
    /// kept (paper: `minVC` = 0.75).
    pub min_valid_cells: f32,
    /// Minimum number of other minutiae within `R + 3σS` for a cylinder to be kept
    /// (paper: `minM` = 2).
    pub min_neighbours: usize,
    /// Cap on the minutiae used, keeping the highest-quality ones (stable order on ties);
    /// at most [`MAX_MCC_MINUTIAE`]. Default 128. A tight cap costs accuracy on mindtct output
    /// (40 of about 47: the convex hull shrinks and a fifth of the cylinders fail `minVC`).
    pub max_minutiae: usize,
    /// Largest direction difference `δθ` of two matchable minutiae (paper and default: π/2;
    /// π/3 or π/4 are about 10 % faster and as accurate on prints rotated by at most 15°, but
    /// would not match prints rotated by more than about 45°).
    pub delta_theta: f32,
    /// Minimum fraction of the circle's cells valid in both cylinders for the pair to be
    /// matchable (paper: `minME` = 0.6).
    pub min_matchable_cells: f32,
    /// `minNP`, `maxNP`, `μP`, `τP`: the number of pairs averaged into the score is
    /// `n_P = minNP + round(Z(min(nA, nB), μP, τP) · (maxNP − minNP))` (paper: 4, 12, 20, 2/5).
    pub min_np: usize,
    pub max_np: usize,
    pub mu_p: f32,
    pub tau_p: f32,
    /// Upper bound on `n_R`, the number of top local pairs that are relaxed; `n_R` is
    /// `min(nA, nB, max_relax_pairs)` (the paper relaxes `min(nA, nB)` pairs).
    pub max_relax_pairs: usize,
    /// Relaxation iterations `n_rel` (paper: 5).
    pub relax_iterations: usize,
    /// Relaxation weight `w_R` of a pair's own previous similarity (paper: 0.5; default 0.3:
    /// more weight on the support of compatible pairs, EER 0.44 % → 0.36 %, FNMR at FMR 1e-4
    /// 1.1 % → 1.0 % on mindtct templates; 0.2 is no better, 0.7 worse).
    pub relax_weight: f32,
    /// Sigmoid parameters `(μ, τ)` of the three compatibility terms of two pairs: difference of
    /// distances (pixels), of directional differences and of radial angles (radians)
    /// (paper: (5, −1.6), (π/12, −30), (π/12, −30)).
    pub rho_distance: (f32, f32),
    pub rho_direction: (f32, f32),
    pub rho_radial: (f32, f32),
}

impl Default for MccParams {
    fn default() -> Self {
        use std::f32::consts::PI;
        MccParams {
            radius: 110.0,
            sigma_s: 10.0,
            sigma_d: 2.0 * PI / 9.0,
            mu_psi: 0.005,
            omega: 60.0,
            min_valid_cells: 0.75,
            min_neighbours: 2,
            max_minutiae: 128,
            delta_theta: PI / 2.0,
            min_matchable_cells: 0.6,
            min_np: 4,
            max_np: 12,
            mu_p: 20.0,
            tau_p: 0.4,
            max_relax_pairs: 128,
            relax_iterations: 5,
            relax_weight: 0.3,
            rho_distance: (5.0, -1.6),
            rho_direction: (PI / 12.0, -30.0),
            rho_radial: (PI / 12.0, -30.0),
        }
    }
}

impl MccParams {
    /// The values of the paper (for 16×16 cells; here the grid is 8×8 whatever the parameters).
    pub fn paper() -> Self {
        MccParams {
            radius: 70.0,
            sigma_s: 28.0 / 3.0,
            mu_psi: 0.01,
            omega: 50.0,
            relax_weight: 0.5,
            ..MccParams::default()
        }
    }
}

/// One valid cylinder, laid out for the comparison loop (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(align(64))]
pub(crate) struct Cylinder {
    /// Cell bits, one word per angular section; invalid cells are zero.
    pub(crate) bits: [u64; ND],
    /// Validity of the `NS × NS` spatial cells (the same for every section).
    pub(crate) mask: u64,
    /// Direction of the central minutia in ISO units.
    pub(crate) angle: u8,
    /// Number of valid cells (`popcount(mask)`).
    pub(crate) valid: u8,
    /// Number of set bits.
    pub(crate) ones: u16,
}

/// A fingerprint prepared for MCC comparison: its valid cylinders and their minutiae.
#[derive(Clone, PartialEq)]
pub struct MccTemplate {
    pub(crate) params: MccParams,
    pub(crate) cylinders: Vec<Cylinder>,
    /// The validity mask of each cylinder repeated over its `ND` sections (for index builders).
    pub(crate) masks: Vec<[u64; ND]>,
    /// Central minutia of each cylinder, coordinates as in the source template.
    pub(crate) minutiae: Vec<Minutia>,
    /// Central minutia of each cylinder in the matching frame (500 dpi, `Y = −y`).
    pub(crate) xs: Vec<f32>,
    pub(crate) ys: Vec<f32>,
    /// Content hash, used to order the two templates of a comparison canonically.
    pub(crate) hash: u64,
}

impl MccTemplate {
    /// Prepares `template` for comparison. Never fails: minutiae that cannot give a valid
    /// cylinder are dropped, and a template without any valid cylinder scores 0 against
    /// everything. Exact duplicate minutiae (same x, y and angle) are kept once.
    pub fn new(template: &FingerTemplate, params: &MccParams) -> MccTemplate {
        build::build(template, params)
    }

    /// The parameters the template was created with.
    pub fn params(&self) -> &MccParams {
        &self.params
    }

    /// Number of valid cylinders (`nA` in the paper).
    pub fn cylinder_count(&self) -> usize {
        self.cylinders.len()
    }

    /// Length of [`MccTemplate::cylinder_bits`] in bits: `NS · NS · ND` = 384.
    pub fn bits_per_cylinder(&self) -> usize {
        BITS_PER_CYLINDER
    }

    /// The bits of cylinder `i`, little-endian in `u64` words: bit `k · 64 + j · NS + i` (word
    /// `k`, position `j · NS + i`) is spatial cell `(i, j)` of angular section `k`. Invalid cells
    /// are zero. Panics when `i >= cylinder_count()`.
    pub fn cylinder_bits(&self, i: usize) -> &[u64] {
        &self.cylinders[i].bits
    }

    /// Every cylinder's bits ([`MccTemplate::cylinder_bits`]), in order: what a pre-selection
    /// index inserts or searches with.
    pub fn cylinder_vectors(&self) -> Vec<&[u64]> {
        self.cylinders.iter().map(|c| &c.bits[..]).collect()
    }

    /// Validity of the bits of cylinder `i`, same layout as [`MccTemplate::cylinder_bits`] (the
    /// spatial validity word repeated for every section). Panics when `i >= cylinder_count()`.
    pub fn cylinder_mask(&self, i: usize) -> &[u64] {
        &self.masks[i]
    }

    /// The minutia at the centre of cylinder `i`. Panics when `i >= cylinder_count()`.
    pub fn cylinder_minutia(&self, i: usize) -> Minutia {
        self.minutiae[i]
    }
}

/// Bytes per cylinder in [`MccTemplate::to_bytes`].
const CYLINDER_WIRE: usize = 8 * ND + 8 + 1 + 1 + 2 + 7 + 8;

impl MccTemplate {
    /// A compact binary form (for templates persisted next to an index, so a search reads
    /// them instead of building cylinders): cylinder count u16 | then per cylinder the bit
    /// words, validity mask, angle, valid cells, set bits, central minutia (x u16, y u16,
    /// angle, kind, quality) and matching-frame position (2 × f32), little endian. The
    /// parameters are not included: [`MccTemplate::from_bytes`] is given the ones it was built
    /// with.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(2 + self.cylinders.len() * CYLINDER_WIRE);
        b.extend_from_slice(&(self.cylinders.len() as u16).to_le_bytes());
        for (i, c) in self.cylinders.iter().enumerate() {
            c.bits.iter().for_each(|w| b.extend_from_slice(&w.to_le_bytes()));
            b.extend_from_slice(&c.mask.to_le_bytes());
            b.extend_from_slice(&[c.angle, c.valid]);
            b.extend_from_slice(&c.ones.to_le_bytes());
            let m = &self.minutiae[i];
            b.extend_from_slice(&m.x.to_le_bytes());
            b.extend_from_slice(&m.y.to_le_bytes());
            b.extend_from_slice(&[m.angle, m.kind as u8, m.quality]);
            b.extend_from_slice(&self.xs[i].to_le_bytes());
            b.extend_from_slice(&self.ys[i].to_le_bytes());
        }
        b
    }

    /// The template [`MccTemplate::to_bytes`] wrote, built with `params`; `None` when the bytes
    /// are not such a template (wrong length, inconsistent counts, non-finite positions).
    pub fn from_bytes(bytes: &[u8], params: &MccParams) -> Option<MccTemplate> {
        let n = usize::from(u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?));
        if n > MAX_MCC_MINUTIAE || bytes.len() != 2 + n * CYLINDER_WIRE {
            return None;
        }
        let mut t = MccTemplate {
            params: *params,
            cylinders: Vec::with_capacity(n),
            masks: Vec::with_capacity(n),
            minutiae: Vec::with_capacity(n),
            xs: Vec::with_capacity(n),
            ys: Vec::with_capacity(n),
            hash: 0,
        };
        for c in bytes[2..].chunks_exact(CYLINDER_WIRE) {
            let u64_at = |o: usize| u64::from_le_bytes(c[o..o + 8].try_into().expect("8 bytes"));
            let mut bits = [0u64; ND];
            for (k, w) in bits.iter_mut().enumerate() {
                *w = u64_at(8 * k);
            }
            let o = 8 * ND;
            let mask = u64_at(o);
            let (angle, valid) = (c[o + 8], c[o + 9]);
            let ones = u16::from_le_bytes([c[o + 10], c[o + 11]]);
            if u32::from(valid) != mask.count_ones()
                || u32::from(ones) != bits.iter().map(|w| w.count_ones()).sum::<u32>()
            {
                return None;
            }
            let kind = match c[o + 17] {
                0 => biomatch_core::finger::MinutiaKind::Other,
                1 => biomatch_core::finger::MinutiaKind::RidgeEnding,
                2 => biomatch_core::finger::MinutiaKind::Bifurcation,
                _ => return None,
            };
            let m = Minutia {
                x: u16::from_le_bytes([c[o + 12], c[o + 13]]),
                y: u16::from_le_bytes([c[o + 14], c[o + 15]]),
                angle: c[o + 16],
                kind,
                quality: c[o + 18],
            };
            let x = f32::from_le_bytes(c[o + 19..o + 23].try_into().expect("4 bytes"));
            let y = f32::from_le_bytes(c[o + 23..o + 27].try_into().expect("4 bytes"));
            if !x.is_finite() || !y.is_finite() {
                return None;
            }
            t.cylinders.push(Cylinder { bits, mask, angle, valid, ones });
            t.masks.push([mask; ND]);
            t.minutiae.push(m);
            t.xs.push(x);
            t.ys.push(y);
        }
        t.hash = build::content_hash(&t);
        Some(t)
    }
}

impl fmt::Debug for MccTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cylinders are biometric data: counts only.
        f.debug_struct("MccTemplate")
            .field("cylinders", &self.cylinders.len())
            .field("bits_per_cylinder", &BITS_PER_CYLINDER)
            .finish_non_exhaustive()
    }
}
