//! Local similarities of cylinder pairs and LSS-R consolidation.

use std::cell::RefCell;
use std::fmt;

use super::build::{circle_cells, ISO_UNIT};
use super::{Cylinder, MccParams, MccTemplate, ND};

/// Compares two templates with the parameters of `a` (both should have been created with the
/// same [`MccParams`]), using a thread-local [`Matcher`]: no allocation once its buffers have
/// grown. Score in `[0, 1]`, exactly symmetric (see the module docs); 0 when either template has
/// no valid cylinder or no pair is matchable.
pub fn similarity(a: &MccTemplate, b: &MccTemplate) -> f32 {
    thread_local! {
        static MATCHER: RefCell<Option<Matcher>> = const { RefCell::new(None) };
    }
    // Use the parameters of the canonical first template, so that the choice is symmetric too.
    let params = if order(a, b) { &a.params } else { &b.params };
    MATCHER.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some(m) if m.params == *params => m.similarity(a, b),
            _ => slot.insert(Matcher::new(params)).similarity(a, b),
        }
    })
}

/// True when `a` goes first in the canonical order of a comparison.
fn order(a: &MccTemplate, b: &MccTemplate) -> bool {
    (a.hash, a.cylinders.len()) <= (b.hash, b.cylinders.len())
}

/// Reusable comparison state: the matching parameters, their lookup tables and scratch buffers.
/// One per thread; [`Matcher::similarity`] allocates nothing once the buffers have grown to the
/// largest comparison seen.
pub struct Matcher {
    params: MccParams,
    /// `sqrt(i)` for every possible popcount.
    sqrt: Vec<f32>,
    /// Largest direction difference of matchable minutiae, in ISO units.
    max_angle_units: u8,
    /// Common valid cells needed for a pair to be matchable.
    min_common_cells: u32,
    /// Candidate pairs: `λ` bits, then the two cylinder indices, as one sortable key.
    cands: Vec<u64>,
    pairs: PairScratch,
    /// `(cos, sin)` of every ISO angle.
    rot: Vec<(f32, f32)>,
    up: Vec<f32>,
    down: Vec<f32>,
    work: Work,
    /// The instruction set the comparison runs with (supported by this CPU).
    isa: Isa,
}

#[derive(Default)]
struct PairScratch {
    ax: Vec<f32>,
    ay: Vec<f32>,
    bx: Vec<f32>,
    by: Vec<f32>,
    /// `θa − θb` of each pair, ISO units wrapped to [−128, 128).
    delta: Vec<f32>,
    /// `cos`, `sin` of `delta`.
    rot_c: Vec<f32>,
    rot_s: Vec<f32>,
    lam0: Vec<f32>,
    lam: Vec<f32>,
    next: Vec<f32>,
    eff: Vec<(f32, u32)>,
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher").field("params", &self.params).finish_non_exhaustive()
    }
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher::new(&MccParams::default())
    }
}

impl Matcher {
    /// A matcher using the comparison parameters of `params` (`δθ`, `minME`, LSS-R).
    pub fn new(params: &MccParams) -> Matcher {
        let units = (params.delta_theta / ISO_UNIT + 1e-4).floor().clamp(0.0, 128.0) as u8;
        let min_common =
            (params.min_matchable_cells * circle_cells(params) as f32).ceil().max(1.0) as u32;
        Matcher {
            params: *params,
            sqrt: (0..=64 * ND).map(|i| (i as f32).sqrt()).collect(),
            max_angle_units: units,
            min_common_cells: min_common,
            cands: Vec::new(),
            pairs: PairScratch::default(),
            rot: (0..256u32)
                .map(|u| {
                    let (s, c) = (f32::from(u as u8 as i8) * ISO_UNIT).sin_cos();
                    (c, s)
                })
                .collect(),
            up: Vec::new(),
            down: Vec::new(),
            work: Work::default(),
            isa: Isa::detect(),
        }
    }

    /// A matcher that compares with the code compiled for `isa`, or `None` when this CPU does
    /// not support it. Every instruction set gives bit-identical scores; [`Matcher::new`] picks
    /// the fastest one supported ([`Isa::detect`]).
    pub fn with_isa(params: &MccParams, isa: Isa) -> Option<Matcher> {
        isa.is_supported().then(|| Matcher { isa, ..Matcher::new(params) })
    }

    /// The instruction set this matcher compares with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The parameters this matcher compares with.
    pub fn params(&self) -> &MccParams {
        &self.params
    }

    /// Similarity of two templates in `[0, 1]`; exactly symmetric.
    pub fn similarity(&mut self, a: &MccTemplate, b: &MccTemplate) -> f32 {
        if order(a, b) {
            self.score(a, b)
        } else {
            self.score(b, a)
        }
    }

    fn score(&mut self, a: &MccTemplate, b: &MccTemplate) -> f32 {
        match self.isa {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2 => {
                // SAFETY: `self.isa` is `Avx2` only when `Isa::is_supported` found AVX2 and POPCNT
                // on this CPU at run time (`Matcher::new` through `Isa::detect`, or
                // `Matcher::with_isa`), which is what `score_avx2` requires.
                unsafe { score_avx2(self, a, b) }
            }
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Popcnt => {
                // SAFETY: `self.isa` is `Popcnt` only when `Isa::is_supported` found POPCNT on
                // this CPU at run time, which is what `score_popcnt` requires.
                unsafe { score_popcnt(self, a, b) }
            }
            _ => self.score_with::<NATIVE_POPCNT>(a, b),
        }
    }

    /// The whole comparison, inlined into one function per instruction set. `HW` selects the
    /// popcount instruction (when compiled with it) over the portable bit arithmetic; the two
    /// count exactly the same, and the float arithmetic is the same IEEE operations in the same
    /// order whatever the instruction set (no fused multiply-add), so scores are bit-identical.
    #[inline(always)]
    fn score_with<const HW: bool>(&mut self, a: &MccTemplate, b: &MccTemplate) -> f32 {
        let (na, nb) = (a.cylinders.len(), b.cylinders.len());
        if na == 0 || nb == 0 {
            return 0.0;
        }
        let p = &self.params;
        let n_min = na.min(nb);
        let z = sigmoid(n_min as f32, p.mu_p, p.tau_p);
        let np = p.min_np + (z * p.max_np.saturating_sub(p.min_np) as f32).round() as usize;
        let np = np.max(1);

        let n_cands = self.local_similarities::<HW>(&a.cylinders, &b.cylinders);
        if n_cands == 0 {
            return 0.0;
        }
        let nr = n_min.min(self.params.max_relax_pairs).min(n_cands).max(1);
        if n_cands > nr {
            self.cands[..n_cands].select_nth_unstable_by(nr - 1, |x, y| y.cmp(x));
        }
        self.relax(a, b, nr);

        // Efficiency of every pair; the n_P most efficient ones are averaged.
        let ps = &mut self.pairs;
        ps.eff.clear();
        ps.eff.extend((0..nr).map(|t| (ps.lam[t] / ps.lam0[t], t as u32)));
        let take = np.min(nr);
        if nr > take {
            ps.eff.select_nth_unstable_by(take - 1, |x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        }
        let sum: f32 = ps.eff[..take].iter().map(|&(_, t)| ps.lam[t as usize]).sum();
        (sum / np as f32).clamp(0.0, 1.0)
    }

    /// Fills the start of `self.cands` with every matchable pair of positive similarity and
    /// returns their number (the buffer only grows, so that it is never cleared).
    #[inline(always)]
    fn local_similarities<const HW: bool>(&mut self, a: &[Cylinder], b: &[Cylinder]) -> usize {
        if self.cands.len() < a.len() * b.len() {
            self.cands.resize(a.len() * b.len(), 0);
        }
        let mut n = 0;
        let max_units = self.max_angle_units;
        let min_common = self.min_common_cells;
        let sqrt = &self.sqrt[..=64 * ND];
        let cands = &mut self.cands[..];
        let mut visit = |i: usize, ca: &Cylinder, range: std::ops::Range<usize>| {
            n = visit_range::<HW>(cands, n, sqrt, min_common, i, ca, b, range);
        };
        // `b` is sorted by direction: the matchable cylinders form one circular range.
        for (i, ca) in a.iter().enumerate() {
            if max_units >= 128 {
                visit(i, ca, 0..b.len());
                continue;
            }
            let lo = ca.angle.wrapping_sub(max_units);
            let hi = ca.angle.wrapping_add(max_units);
            let start = b.partition_point(|c| c.angle < lo);
            let end = b.partition_point(|c| c.angle <= hi);
            if lo <= hi {
                visit(i, ca, start..end);
            } else {
                visit(i, ca, start..b.len());
                visit(i, ca, 0..end);
            }
        }
        n
    }

    /// Relaxes the first `nr` candidates; leaves `λ⁰` in `lam0` and the relaxed values in `lam`.
    #[inline(always)]
    fn relax(&mut self, a: &MccTemplate, b: &MccTemplate, nr: usize) {
        let ps = &mut self.pairs;
        for v in [&mut ps.ax, &mut ps.ay, &mut ps.bx, &mut ps.by, &mut ps.delta] {
            v.clear();
        }
        for v in [&mut ps.rot_c, &mut ps.rot_s, &mut ps.lam0, &mut ps.lam, &mut ps.next] {
            v.clear();
        }
        for &key in &self.cands[..nr] {
            let (i, j) = ((key >> 8 & 0xff) as usize, (key & 0xff) as usize);
            ps.ax.push(a.xs[i]);
            ps.ay.push(a.ys[i]);
            ps.bx.push(b.xs[j]);
            ps.by.push(b.ys[j]);
            let d = a.cylinders[i].angle.wrapping_sub(b.cylinders[j].angle);
            ps.delta.push(f32::from(d as i8));
            let (c, s) = self.rot[usize::from(d)];
            ps.rot_c.push(c);
            ps.rot_s.push(s);
            let lambda = f32::from_bits((key >> 32) as u32);
            ps.lam0.push(lambda);
            ps.lam.push(lambda);
            ps.next.push(0.0);
        }
        if nr < 2 || self.params.relax_iterations == 0 {
            return;
        }
        // Pad to whole lanes: padded pairs sit at the origin with λ = 0, so they contribute
        // nothing (their compatibilities are finite) and their own sums are never read.
        let np = nr.div_ceil(LANES) * LANES;
        for v in [&mut ps.ax, &mut ps.ay, &mut ps.bx, &mut ps.by, &mut ps.delta, &mut ps.lam] {
            v.resize(np, 0.0);
        }
        ps.rot_c.resize(np, 1.0);
        ps.rot_s.resize(np, 0.0);
        ps.next.resize(np, 0.0);
        // Compatibility of pairs t < k: `up[t·np + k] = ρ(t, k)`, `down[t·np + k] = ρ(k, t)`
        // (zero for k ≤ t). The two share the distance and direction terms; only the radial term
        // depends on whether it is seen from t or from k.
        let p = &self.params;
        let c = Consts {
            mu1: p.rho_distance.0,
            tau1: p.rho_distance.1,
            mu2: p.rho_direction.0 / ISO_UNIT,
            tau2: p.rho_direction.1 * ISO_UNIT,
            mu3: p.rho_radial.0,
            tau3: p.rho_radial.1,
        };
        // Pass 1, all pairs t < k: the distance and direction terms (shared by both directions)
        // and the product zA · conj(zB). Pairs whose compatibility is already negligible (most
        // of them between different fingers) are dropped; the others are listed, branch-free.
        let work = &mut self.work;
        work.resize(nr * np + 1);
        let mut n = 0;
        {
            let (wt, wk) = (&mut work.t[..], &mut work.k[..]);
            let (we, wwr, wwi) = (&mut work.e12[..], &mut work.wr[..], &mut work.wi[..]);
            for t in 0..nr - 1 {
                let k0 = (t + 1) / LANES * LANES;
                for k in (k0..np).step_by(LANES) {
                    let (e12, wr, wi) = shared_lanes(ps, t, k, &c);
                    let keep: [bool; LANES] = std::array::from_fn(|l| {
                        (k + l > t) & (k + l < nr) & (e12[l] <= NEGLIGIBLE)
                    });
                    if !keep.iter().fold(false, |x, &y| x | y) {
                        continue;
                    }
                    for l in 0..LANES {
                        wt[n] = t as u16;
                        wk[n] = (k + l) as u16;
                        we[n] = e12[l];
                        wwr[n] = wr[l];
                        wwi[n] = wi[l];
                        n += usize::from(keep[l]);
                    }
                }
            }
        }
        // Pass 2, the listed pairs: the radial terms seen from t and from k. With few listed
        // pairs (most comparisons of different fingers) the relaxation runs on the list; with
        // many, on dense matrices (vectorised). The choice depends on the pairs only, never on
        // the instruction set.
        let sparse = 4 * n < nr * nr;
        if !sparse {
            self.up.clear();
            self.up.resize(np * np, 0.0);
            self.down.clear();
            self.down.resize(np * np, 0.0);
        }
        for start in (0..n).step_by(LANES) {
            let len = LANES.min(n - start);
            let (up, down) = radial_lanes(ps, work, start, len, &c);
            if sparse {
                // `radial_lanes` has read these lanes: they now hold ρ(t, k) and ρ(k, t).
                work.wr[start..start + len].copy_from_slice(&up[..len]);
                work.wi[start..start + len].copy_from_slice(&down[..len]);
            } else {
                for l in 0..len {
                    let idx = usize::from(work.t[start + l]) * np + usize::from(work.k[start + l]);
                    self.up[idx] = up[l];
                    self.down[idx] = down[l];
                }
            }
        }
        let w = p.relax_weight;
        let spread = (1.0 - w) / (nr - 1) as f32;
        for _ in 0..p.relax_iterations {
            let acc = &mut ps.next[..np];
            acc.fill(0.0);
            if sparse {
                let lam = &ps.lam[..np];
                let list =
                    work.t[..n].iter().zip(&work.k[..n]).zip(&work.wr[..n]).zip(&work.wi[..n]);
                for (((&t, &k), &up), &down) in list {
                    let (t, k) = (usize::from(t), usize::from(k));
                    acc[t] += up * lam[k];
                    acc[k] += down * lam[t];
                }
            } else {
                for t in 0..nr - 1 {
                    let k0 = (t + 1) / LANES * LANES;
                    let row = t * np + k0..(t + 1) * np;
                    acc[t] += dot(&self.up[row.clone()], &ps.lam[k0..np]);
                    let lt = ps.lam[t];
                    for (x, &r) in acc[k0..].iter_mut().zip(&self.down[row]) {
                        *x += r * lt;
                    }
                }
            }
            for (x, &l) in acc[..nr].iter_mut().zip(&ps.lam[..nr]) {
                *x = w * l + spread * *x;
            }
            // Padded pairs keep λ = 0 (their sums collected the real pairs' terms).
            acc[nr..].fill(0.0);
            std::mem::swap(&mut ps.lam, &mut ps.next);
        }
        ps.lam.truncate(nr);
    }
}

/// Whether the portable path may use `count_ones` as is: everywhere but on x86 CPUs without a
/// popcount instruction in the baseline (there `count_ones` is a slow software fallback).
const NATIVE_POPCNT: bool =
    !cfg!(any(target_arch = "x86", target_arch = "x86_64")) || cfg!(target_feature = "popcnt");

/// The instruction sets the comparison is compiled for. The crate is built for the baseline
/// CPU of its target; the comparison is compiled a second and third time for newer x86 CPUs,
/// and [`Isa::detect`] picks the best one at run time. All give bit-identical scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The baseline of the target (software popcount on plain x86-64).
    Portable,
    /// x86 with the POPCNT instruction.
    Popcnt,
    /// x86 with AVX2 and POPCNT (8-lane float kernels of the relaxation).
    Avx2,
}

impl Isa {
    /// The fastest instruction set this CPU supports (detected once, then cached).
    pub fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            [Isa::Avx2, Isa::Popcnt].into_iter().find(|i| i.is_supported()).unwrap_or(Isa::Portable)
        })
    }

    /// Whether this CPU can run the code compiled for `self` (run-time detection).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Popcnt => std::arch::is_x86_feature_detected!("popcnt"),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("popcnt")
            }
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            Isa::Popcnt | Isa::Avx2 => false,
        }
    }

    /// A short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Popcnt => "popcnt",
            Isa::Avx2 => "avx2+popcnt",
        }
    }
}

/// The comparison compiled with AVX2 and POPCNT. Callers must have checked both at run time.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,popcnt")]
fn score_avx2(m: &mut Matcher, a: &MccTemplate, b: &MccTemplate) -> f32 {
    m.score_with::<true>(a, b)
}

/// The comparison compiled with POPCNT. Callers must have checked it at run time.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "popcnt")]
fn score_popcnt(m: &mut Matcher, a: &MccTemplate, b: &MccTemplate) -> f32 {
    m.score_with::<true>(a, b)
}

/// Writes to `cands` from `n` on the pairs of `ca` (cylinder `i` of the first template) with
/// `b[range]` that are matchable and of positive similarity, keyed by `λ` bits then the two
/// indices; returns the new count. `cands` has room for every pair of the comparison, so that
/// the test on λ is a conditional increment rather than a mispredicted branch.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn visit_range<const HW: bool>(
    cands: &mut [u64],
    mut n: usize,
    sqrt: &[f32],
    min_common: u32,
    i: usize,
    ca: &Cylinder,
    b: &[Cylinder],
    range: std::ops::Range<usize>,
) -> usize {
    let sqrt = &sqrt[..=64 * ND];
    for (j, cb) in b[range.clone()].iter().enumerate() {
        let (x, na, nb) = if ca.mask == cb.mask {
            // The common case (both cylinders well inside the print): the counts of the
            // cylinders are their own, and only the XOR needs counting.
            if u32::from(ca.valid) < min_common {
                continue;
            }
            (xor_count::<HW>(&ca.bits, &cb.bits), u32::from(ca.ones), u32::from(cb.ones))
        } else {
            let common = ca.mask & cb.mask;
            if common.count_ones() < min_common {
                continue;
            }
            pair_counts::<HW>(&ca.bits, &cb.bits, common)
        };
        let norms = sqrt[na as usize] + sqrt[nb as usize];
        let lambda = 1.0 - sqrt[x as usize] / norms;
        let j = range.start + j;
        cands[n] = u64::from(lambda.to_bits()) << 32 | (i as u64) << 8 | j as u64;
        // `norms == 0` gives NaN, which fails the test as well.
        n += usize::from(lambda > 0.0);
    }
    n
}

/// Lanes of the compatibility kernel.
const LANES: usize = 8;

/// Sigmoid parameters of the compatibility, directions in ISO units.
struct Consts {
    mu1: f32,
    tau1: f32,
    mu2: f32,
    tau2: f32,
    mu3: f32,
    tau3: f32,
}

/// For the `LANES` pairs from `k` on, with pair `t`: `1 / (Z1 · Z2)` (infinite when the two
/// pairs share a minutia's position: they compete rather than support each other), and the real
/// and imaginary parts of `zA · conj(zB)`, with `zA`, `zB` the vectors from `t` to `k` in each
/// template (from `k` to `t` both change sign, which leaves the product unchanged).
#[inline(always)]
fn shared_lanes(
    ps: &PairScratch,
    t: usize,
    k: usize,
    c: &Consts,
) -> ([f32; LANES], [f32; LANES], [f32; LANES]) {
    let lanes = |v: &[f32]| -> [f32; LANES] { v[k..k + LANES].try_into().expect("padded") };
    let (ax, ay, bx, by) = (lanes(&ps.ax), lanes(&ps.ay), lanes(&ps.bx), lanes(&ps.by));
    let delta = lanes(&ps.delta);
    let (axt, ayt, bxt, byt, dt) = (ps.ax[t], ps.ay[t], ps.bx[t], ps.by[t], ps.delta[t]);
    let mut e12 = [0.0f32; LANES];
    let mut wr = [0.0f32; LANES];
    let mut wi = [0.0f32; LANES];
    for l in 0..LANES {
        let (dxa, dya) = (ax[l] - axt, ay[l] - ayt);
        let (dxb, dyb) = (bx[l] - bxt, by[l] - byt);
        let da = (dxa * dxa + dya * dya).sqrt();
        let db = (dxb * dxb + dyb * dyb).sqrt();
        let e1 = sigmoid_denominator((da - db).abs(), c.mu1, c.tau1);
        // Difference of the directional differences, in ISO units.
        let dd = dt - delta[l];
        let dd = (dd - 256.0 * round(dd * (1.0 / 256.0))).abs();
        let e2 = sigmoid_denominator(dd, c.mu2, c.tau2);
        // One comparison: `&&` would stop the vectoriser.
        e12[l] = if da * db > 0.0 { e1 * e2 } else { f32::INFINITY };
        wr[l] = dxa * dxb + dya * dyb;
        wi[l] = dya * dxb - dxa * dyb;
    }
    (e12, wr, wi)
}

/// `(ρ(t, k), ρ(k, t))` for the listed pairs `start..start + len` (`len ≤ LANES`). The radial
/// term seen from `t` is the angle of `e^{i(θat − θbt)} · conj(zA · conj(zB))`.
#[inline(always)]
fn radial_lanes(
    ps: &PairScratch,
    w: &Work,
    start: usize,
    len: usize,
    c: &Consts,
) -> ([f32; LANES], [f32; LANES]) {
    let (mut ct, mut st, mut ck, mut sk) =
        ([1.0f32; LANES], [0.0f32; LANES], [1.0f32; LANES], [0.0f32; LANES]);
    let (mut e12, mut wr, mut wi) = ([1.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    for l in 0..len {
        let (t, k) = (usize::from(w.t[start + l]), usize::from(w.k[start + l]));
        (ct[l], st[l], ck[l], sk[l]) = (ps.rot_c[t], ps.rot_s[t], ps.rot_c[k], ps.rot_s[k]);
        (e12[l], wr[l], wi[l]) = (w.e12[start + l], w.wr[start + l], w.wi[start + l]);
    }
    let mut up = [0.0f32; LANES];
    let mut down = [0.0f32; LANES];
    for l in 0..LANES {
        let (wr, wi) = (wr[l], wi[l]);
        let r3t = atan2_pos((st[l] * wr - ct[l] * wi).abs(), ct[l] * wr + st[l] * wi);
        let r3k = atan2_pos((sk[l] * wr - ck[l] * wi).abs(), ck[l] * wr + sk[l] * wi);
        up[l] = 1.0 / (e12[l] * sigmoid_denominator(r3t, c.mu3, c.tau3));
        down[l] = 1.0 / (e12[l] * sigmoid_denominator(r3k, c.mu3, c.tau3));
    }
    (up, down)
}

/// Pairs of pairs whose compatibility is not negligible, between the two passes.
#[derive(Default)]
struct Work {
    t: Vec<u16>,
    k: Vec<u16>,
    e12: Vec<f32>,
    wr: Vec<f32>,
    wi: Vec<f32>,
}

impl Work {
    fn resize(&mut self, n: usize) {
        self.t.resize(n, 0);
        self.k.resize(n, 0);
        self.e12.resize(n, 0.0);
        self.wr.resize(n, 0.0);
        self.wi.resize(n, 0.0);
    }
}

/// `1 / ρ` above which a compatibility counts as 0 (skipping the radial term).
const NEGLIGIBLE: f32 = 1e6;

/// `popcount(a ⊕ b)` over the sections; `HW`: with the popcount instruction.
#[inline(always)]
fn xor_count<const HW: bool>(a: &[u64; ND], b: &[u64; ND]) -> u32 {
    if HW {
        a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
    } else {
        let mut acc = 0u64;
        for chunk in 0..ND.div_ceil(3) {
            let mut s = 0u64;
            for k in chunk * 3..(chunk * 3 + 3).min(ND) {
                s += swar::nibbles(a[k] ^ b[k]);
            }
            acc += swar::bytes(s);
        }
        swar::sum(acc)
    }
}

/// Popcount without a popcount instruction: per-word counts kept in nibbles (≤ 4 per word, so
/// three words add up without overflow), then bytes (≤ 8 per word), then one horizontal sum.
mod swar {
    const M1: u64 = 0x5555_5555_5555_5555;
    const M2: u64 = 0x3333_3333_3333_3333;
    const M4: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    const M8: u64 = 0x00ff_00ff_00ff_00ff;
    const H0001: u64 = 0x0001_0001_0001_0001;

    /// Bit counts of each nibble of `v` (each ≤ 4).
    #[inline(always)]
    pub(super) fn nibbles(v: u64) -> u64 {
        let v = v - ((v >> 1) & M1);
        (v & M2) + ((v >> 2) & M2)
    }

    /// Byte sums of nibble counts (each byte ≤ 2 · 15).
    #[inline(always)]
    pub(super) fn bytes(v: u64) -> u64 {
        (v & M4) + ((v >> 4) & M4)
    }

    /// Sum of all bytes of `v` (bytes may hold up to 255; the total must fit 16 bits).
    #[inline(always)]
    pub(super) fn sum(v: u64) -> u32 {
        (((v & M8) + ((v >> 8) & M8)).wrapping_mul(H0001) >> 48) as u32
    }
}

/// `(popcount((a ⊕ b) ∧ m), popcount(a ∧ m), popcount(b ∧ m))` summed over the sections;
/// `HW`: with the popcount instruction.
#[inline(always)]
fn pair_counts<const HW: bool>(a: &[u64; ND], b: &[u64; ND], m: u64) -> (u32, u32, u32) {
    if HW {
        let (mut x, mut na, mut nb) = (0, 0, 0);
        for k in 0..ND {
            let (wa, wb) = (a[k] & m, b[k] & m);
            x += (wa ^ wb).count_ones();
            na += wa.count_ones();
            nb += wb.count_ones();
        }
        (x, na, nb)
    } else {
        let (mut x, mut na, mut nb) = (0u64, 0u64, 0u64);
        for chunk in 0..ND.div_ceil(3) {
            let (mut sx, mut sa, mut sb) = (0u64, 0u64, 0u64);
            for k in chunk * 3..(chunk * 3 + 3).min(ND) {
                let (wa, wb) = (a[k] & m, b[k] & m);
                sx += swar::nibbles(wa ^ wb);
                sa += swar::nibbles(wa);
                sb += swar::nibbles(wb);
            }
            x += swar::bytes(sx);
            na += swar::bytes(sa);
            nb += swar::bytes(sb);
        }
        (swar::sum(x), swar::sum(na), swar::sum(nb))
    }
}

/// `Z(v, μ, τ) = 1 / (1 + e^{−τ(v − μ)})`.
#[inline(always)]
fn sigmoid(v: f32, mu: f32, tau: f32) -> f32 {
    1.0 / sigmoid_denominator(v, mu, tau)
}

/// `1 / Z(v, μ, τ)`, capped at about 5e8 so that the product of three stays far from the
/// subnormal range once inverted (subnormal arithmetic is two orders of magnitude slower).
#[inline(always)]
fn sigmoid_denominator(v: f32, mu: f32, tau: f32) -> f32 {
    1.0 + fast_exp((-tau * (v - mu)).min(20.0))
}

/// Round to nearest without a libm call (|v| < 2^22), so that loops using it vectorise.
#[inline(always)]
fn round(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (v + MAGIC) - MAGIC
}

/// `e^x` within about 2e-7 relative error for |x| ≤ 87, branch-free (saturates beyond); plain
/// float and integer lane operations only, so that loops using it vectorise.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer in the low bits
    let t = x.clamp(-87.0, 87.0) * std::f32::consts::LOG2_E;
    let shifted = t + MAGIC;
    let n = shifted - MAGIC;
    let f = t - n;
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5 + f * (0.055_504_11 + f * (0.009_618_129 + f * 0.001_333_355_8))));
    // The low bits of `shifted` hold n + 2^22; 2^n is (n + 127) << 23.
    let scale = shifted.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    p * f32::from_bits(scale)
}

/// `atan2(y, x)` for `y ≥ 0`, in `[0, π]`, branch-free, absolute error about 1e-5.
#[inline(always)]
fn atan2_pos(y: f32, x: f32) -> f32 {
    use std::f32::consts::{FRAC_PI_2, PI};
    let ax = x.abs();
    let (lo, hi) = (ax.min(y), ax.max(y));
    let r = if hi > 0.0 { lo / hi } else { 0.0 };
    let s = r * r;
    let a = r
        * (0.999_977_26
            + s * (-0.332_623_47
                + s * (0.193_543_46 + s * (-0.116_432_87 + s * (0.052_653_32 - 0.011_721_2 * s)))));
    let a = if y > ax { FRAC_PI_2 - a } else { a };
    if x < 0.0 {
        PI - a
    } else {
        a
    }
}

/// Dot product with eight independent accumulators (so it vectorises without fast-math).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_math_matches_std() {
        for i in -2000..2000 {
            let x = i as f32 * 0.04;
            let (e, f) = (x.exp(), fast_exp(x));
            assert!((e - f).abs() <= 1e-5 * e.max(1e-30), "exp({x}): {e} vs {f}");
        }
        for i in 0..=360 {
            for r in [0.01f32, 0.5, 3.0] {
                let a = (i as f32).to_radians();
                let (y, x) = (a.sin().abs() * r, a.cos() * r);
                let (e, f) = (y.atan2(x), atan2_pos(y, x));
                assert!((e - f).abs() < 2e-5, "atan2({y}, {x}): {e} vs {f}");
            }
        }
        assert_eq!(atan2_pos(0.0, 0.0), 0.0);
        assert_eq!(round(2.5), 2.0);
        assert_eq!(round(-3.6), -4.0);
    }

    #[test]
    fn pair_counts_match_count_ones() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..1000 {
            let a: [u64; ND] = std::array::from_fn(|_| next());
            let b: [u64; ND] = std::array::from_fn(|_| next());
            let m = next() | next();
            let want = a.iter().zip(&b).fold((0, 0, 0), |acc, (x, y)| {
                (
                    acc.0 + ((x ^ y) & m).count_ones(),
                    acc.1 + (x & m).count_ones(),
                    acc.2 + (y & m).count_ones(),
                )
            });
            assert_eq!(pair_counts::<false>(&a, &b, m), want);
            assert_eq!(pair_counts::<true>(&a, &b, m), want);
            assert_eq!(xor_count::<false>(&a, &b), pair_counts::<true>(&a, &b, !0).0);
            assert_eq!(xor_count::<true>(&a, &b), pair_counts::<true>(&a, &b, !0).0);
        }
        let full = (64 * ND as u32, 64 * ND as u32, 0);
        assert_eq!(pair_counts::<false>(&[!0; ND], &[0; ND], !0), full);
        assert_eq!(pair_counts::<true>(&[!0; ND], &[0; ND], !0), full);
    }
}
