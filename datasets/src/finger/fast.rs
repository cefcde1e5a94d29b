//! Minutiae-level synthetic fingers: millions of distinct fingers and impressions of each as
//! [`FingerTemplate`]s, without rendering an image or running an extractor.
//!
//! It exists for ten-print 1:N evaluation at 100 k–1 M subjects (issue 12), where the image
//! pipeline ([`master`](super::master) → [`impression`](super::impression) → mindtct) costs tens
//! of milliseconds per finger. A master and two impressions here cost tens of microseconds.
//!
//! # Anchored to the image generator
//!
//! * **The finger's geometry is the image master's.** A [`FastMaster`] of finger `f` draws its
//!   class, singular points, fingerprint area and orientation model from the *same* streams as
//!   the image master of finger `f` under the same [`FingerSynthConfig`], so the two pipelines
//!   see the same population of fingers (class frequencies, singular-point placement, field).
//!   Only the ridge growth (the expensive part) is replaced: minutiae are a hard-core point
//!   process inside the area (a minimum distance), thinned by a smooth random field so that they
//!   cluster as the image generator's do where ridge patches meet, some in close pairs along a
//!   ridge (short ridges, spurs, lakes); directions follow the orientation field, with a ridge
//!   sense that is locally coherent (neighbouring endings of one seam point the same way).
//! * **Captures use the image generator's capture model**: the same distributions of rotation,
//!   translation, contact ellipse (centred between the cores and the area centre, partial
//!   contact with [`FingerSynthConfig::partial_probability`]) and the Cappelli–Maio–Maltoni
//!   (2001) elastic distortion (close-contact ellipse, brake function, affine displacement
//!   outside it), here applied forwards to points (the image renderer applies its inverse to
//!   pixels; the forward map is found by fixed-point iteration).
//! * **What mindtct does to a capture is a calibrated noise model**: a master minutia in the
//!   contact region is extracted with a probability that falls with the capture quality and
//!   near the contact edge (misses are correlated across impressions of one finger: some
//!   minutiae are reliably hard to see), spurious minutiae appear with a density per contact
//!   area (more near the edge and at low quality), positions and directions are jittered,
//!   directions are quantised to mindtct's 11.25° steps, an ending is sometimes read as a
//!   bifurcation and vice versa, and each minutia gets a reliability-like quality. The
//!   [`FastFingerConfig::default`] values were fitted (a random search over them, 1 000 fingers
//!   × 2 impressions, seed 1) so that the minutiae counts and the MCC genuine scores match
//!   mindtct on the image generator's impressions; impostor scores come out about 30 % lower than
//!   the image pipeline's (`benches/examples/finger_generator_validation.rs`,
//!   `docs/finger-generator-validation.md`).
//!
//! # Determinism
//!
//! As for the image generator: a master is a pure function of `(cfg, finger)`, an impression of
//! `(cfg, finger, impression)`; ChaCha8 streams keyed by splitmix64 of the seed, a domain constant
//! and the indices; `libm` for transcendental functions; fixed-order arithmetic; no global state.
//! Parallelise over fingers. [`FAST_GENERATOR_VERSION`] changes whenever a config would yield
//! other templates.

use super::field::{layout, normal, uniform, Area, OrientationModel, SmoothNoise};
use super::impression::{Distortion, Placement};
use super::{FingerClass, FingerSynthConfig, DOMAIN_FIELDS, DOMAIN_LAYOUT};
use crate::rng::StreamKey;
use biomatch_core::finger::{
    FingerTemplate, Minutia, MinutiaKind as IsoKind, MAX_MINUTIAE, RESOLUTION_500DPI_PPCM,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::f64::consts::{PI, TAU};

/// Version of the minutiae-level algorithm; bumped whenever the same config would yield other
/// templates.
pub const FAST_GENERATOR_VERSION: u32 = 1;

const DOMAIN_FAST_MASTER: u64 = 0x4649_4E47_0000_0011;
const DOMAIN_FAST_IMPRESSION: u64 = 0x4649_4E47_0000_0012;

/// Minutiae-level generator parameters. Densities are per 10 000 px² at 500 dpi.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FastFingerConfig {
    /// Seed, canvas and capture limits, shared with the image generator: finger `f` here has the
    /// class, singular points, area and field of image master `f` under the same config.
    pub synth: FingerSynthConfig,
    /// Master minutiae per 10 000 px² of fingerprint area (before the minimum distance thins
    /// them; the fitted value gives the mindtct counts).
    pub density: f32,
    /// Log-normal spread of a finger's density around [`FastFingerConfig::density`].
    pub density_spread: f32,
    /// Spatial clustering of master minutiae (0 = uniform, 1 = none in the sparsest regions): the
    /// image generator's minutiae gather where ridge patches grown from different seeds meet.
    pub clustering: f32,
    /// Length scale of that clustering, pixels.
    pub cluster_scale: f32,
    /// Probability that a minutia's ridge sense follows a smooth random field rather than a
    /// coin (neighbouring endings of one seam point the same way).
    pub sense_coherence: f32,
    /// No two master minutiae closer than this, pixels.
    pub min_distance: f32,
    /// Probability that a master minutia comes with a partner a short way along its ridge (a
    /// short ridge, a spur, a lake: the close pairs ridge patterns and mindtct are full of).
    pub pair_fraction: f32,
    /// Largest distance of such a partner, pixels (the smallest is `min_distance`).
    pub pair_distance: f32,
    /// Fraction of master minutiae that are bifurcations.
    pub bifurcation_fraction: f32,
    /// Probability that a master minutia well inside the contact region of a good capture is
    /// extracted.
    pub detect: f32,
    /// Drop of that probability at capture quality 0 (linear in quality).
    pub detect_low_quality: f32,
    /// Correlation (0–1) of a minutia's detection across impressions (Gaussian copula).
    pub detect_persistence: f32,
    /// Width of the band inside the contact edge where detection fades, as a fraction of the
    /// contact ellipse's radius.
    pub edge_band: f32,
    /// Spurious minutiae per 10 000 px² of contact at capture quality 1.
    pub spurious_density: f32,
    /// Extra spurious density at capture quality 0 (linear in quality).
    pub spurious_low_quality: f32,
    /// Fraction of spurious minutiae placed in the contact edge band.
    pub spurious_edge: f32,
    /// Probability that a spurious minutia of the edge band (a ridge cut off by the contact
    /// boundary) is an ending pointing out of the contact region; otherwise it is like the others.
    pub edge_outward: f32,
    /// Fraction of spurious minutiae that are bifurcations (broken ridges read as endings are
    /// the commoner artefact).
    pub spurious_bifurcation_fraction: f32,
    /// Standard deviation of the positional jitter, pixels.
    pub position_sd: f32,
    /// Standard deviation of the direction jitter, degrees (before quantisation).
    pub angle_sd_deg: f32,
    /// Directions are quantised to this step, degrees (mindtct: 11.25°); 0 = not quantised.
    pub angle_step_deg: f32,
    /// Probability that an ending is reported as a bifurcation or the reverse.
    pub kind_flip: f32,
    /// Mean and standard deviation of the capture quality (0–1).
    pub quality_mean: f32,
    pub quality_sd: f32,
    /// Minutiae closer than this to the image border are not reported, pixels.
    pub border: f32,
}

impl Default for FastFingerConfig {
    fn default() -> Self {
        Self {
            synth: FingerSynthConfig::default(),
            density: 6.5,
            density_spread: 0.22,
            clustering: 0.7,
            cluster_scale: 65.0,
            sense_coherence: 0.95,
            min_distance: 9.0,
            pair_fraction: 0.25,
            pair_distance: 22.0,
            bifurcation_fraction: 0.4,
            detect: 0.93,
            detect_low_quality: 0.3,
            detect_persistence: 0.5,
            edge_band: 0.12,
            spurious_density: 0.7,
            spurious_low_quality: 1.2,
            spurious_edge: 0.4,
            spurious_bifurcation_fraction: 0.2,
            edge_outward: 0.5,
            position_sd: 0.8,
            angle_sd_deg: 2.5,
            angle_step_deg: 11.25,
            kind_flip: 0.1,
            quality_mean: 0.7,
            quality_sd: 0.24,
            border: 8.0,
        }
    }
}

/// One minutia of a master, in master pixels (image coordinates: x right, y down).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MasterMinutia {
    pub x: f32,
    pub y: f32,
    /// Direction in radians, image coordinates (clockwise on screen), in `[0, 2π)`.
    pub direction: f32,
    pub kind: IsoKind,
    /// How easily extractors see it: a standard normal deviate, lower = easier (shared by all
    /// impressions of the finger).
    pub hardness: f32,
}

/// A minutiae-level master finger: the image master's geometry and a set of minutiae.
#[derive(Clone, Debug)]
pub struct FastMaster {
    /// Henry class (the image master's).
    pub class: FingerClass,
    /// Cores and deltas in master pixels (the image master's).
    pub cores: Vec<(f32, f32)>,
    pub deltas: Vec<(f32, f32)>,
    pub minutiae: Vec<MasterMinutia>,
    area: Area,
    orientation: OrientationModel,
}

impl FastMaster {
    /// Whether `(x, y)` lies inside the fingerprint area.
    pub fn in_area(&self, x: f32, y: f32) -> bool {
        self.area.distance(x, y) < 0.0
    }
}

/// The minutiae-level master of `finger`.
///
/// # Panics
/// If the canvas is smaller than 64 × 64.
pub fn fast_master(cfg: &FastFingerConfig, finger: u64) -> FastMaster {
    let s = &cfg.synth;
    assert!(s.width >= 64 && s.height >= 64, "canvas too small: {}x{}", s.width, s.height);
    let mut rng = StreamKey::new(s.seed, DOMAIN_LAYOUT).rng(finger, 0);
    let lay = layout(&mut rng, s.width, s.height);
    let mut rng = StreamKey::new(s.seed, DOMAIN_FIELDS).rng(finger, 0);
    let orientation = OrientationModel::new(&mut rng, &lay);

    let mut rng = StreamKey::new(s.seed, DOMAIN_FAST_MASTER).rng(finger, 0);
    let area = lay.area;
    let (x0, x1) = (area.cx - area.left, area.cx + area.right);
    let (y0, y1) = (area.cy - area.top, area.cy + area.bottom);
    let box_area = f64::from((x1 - x0) * (y1 - y0));
    let density = f64::from(cfg.density)
        * libm::exp(normal(&mut rng, 0.0, f64::from(cfg.density_spread)).clamp(-0.5, 0.5));
    let clustering = f64::from(cfg.clustering.clamp(0.0, 1.0));
    let clusters = SmoothNoise::new(&mut rng, s.width, s.height, cfg.cluster_scale.max(8.0));
    // Thinning by the clustering field keeps 1 - c/2 of the candidates on average.
    let candidates = (box_area * density / 1e4 / (1.0 - 0.5 * clustering)).round() as usize;
    let d2 = cfg.min_distance * cfg.min_distance;
    let mut minutiae: Vec<MasterMinutia> = Vec::with_capacity(candidates / 2);
    for _ in 0..candidates {
        let x = uniform(&mut rng, f64::from(x0), f64::from(x1)) as f32;
        let y = uniform(&mut rng, f64::from(y0), f64::from(y1)) as f32;
        let coherent = uniform(&mut rng, 0.0, 1.0) < f64::from(cfg.sense_coherence);
        let sense =
            if coherent { clusters.at(x, y)[1] > 0.0 } else { uniform(&mut rng, 0.0, 1.0) < 0.5 };
        let bif = uniform(&mut rng, 0.0, 1.0) < f64::from(cfg.bifurcation_fraction);
        let hardness = normal(&mut rng, 0.0, 1.0) as f32;
        let keep = 1.0 - clustering
            + clustering * f64::from(smooth01(0.5 + 0.5 * clusters.at(x, y)[0] * 1.7));
        if uniform(&mut rng, 0.0, 1.0) >= keep
            || area.distance(x, y) >= 0.0
            || minutiae.iter().any(|m| (m.x - x) * (m.x - x) + (m.y - y) * (m.y - y) < d2)
        {
            continue;
        }
        let theta = orientation.theta(f64::from(x), f64::from(y)) + if sense { PI } else { 0.0 };
        let kind = if bif { IsoKind::Bifurcation } else { IsoKind::RidgeEnding };
        minutiae.push(MasterMinutia {
            x,
            y,
            direction: theta.rem_euclid(TAU) as f32,
            kind,
            hardness,
        });
        // The partner: along the ridge, facing back (the other end of a short ridge or lake).
        let pair = uniform(&mut rng, 0.0, 1.0) < f64::from(cfg.pair_fraction);
        let d = uniform(
            &mut rng,
            f64::from(cfg.min_distance),
            f64::from(cfg.pair_distance.max(cfg.min_distance)),
        );
        let partner_hardness = normal(&mut rng, 0.0, 1.0) as f32;
        if pair {
            let (px, py) = (
                (f64::from(x) + d * libm::cos(theta)) as f32,
                (f64::from(y) + d * libm::sin(theta)) as f32,
            );
            let clear = minutiae[..minutiae.len() - 1]
                .iter()
                .all(|m| (m.x - px) * (m.x - px) + (m.y - py) * (m.y - py) >= d2);
            if clear && area.distance(px, py) < 0.0 {
                let back =
                    orientation.theta(f64::from(px), f64::from(py)) + if sense { 0.0 } else { PI };
                minutiae.push(MasterMinutia {
                    x: px,
                    y: py,
                    direction: back.rem_euclid(TAU) as f32,
                    kind,
                    hardness: partner_hardness,
                });
            }
        }
    }
    FastMaster {
        class: lay.class,
        cores: lay.cores,
        deltas: lay.deltas,
        minutiae,
        area,
        orientation,
    }
}

/// One capture's geometry: placement, contact ellipse and elastic distortion, with the image
/// renderer's distributions (see `impression.rs`).
struct Capture {
    /// Rotation (radians, image coordinates) and the output position of the area centre.
    cos: f32,
    sin: f32,
    ox: f32,
    oy: f32,
    area_cx: f32,
    area_cy: f32,
    /// Contact ellipse in the placed, undistorted frame.
    ccx: f32,
    ccy: f32,
    crx: f32,
    cry: f32,
    /// Distortion: close-contact fraction, brake scale, affine map `(pc, ps)` and shift.
    inner: f32,
    brake_k: f32,
    pc: f32,
    ps: f32,
    shift: (f32, f32),
}

impl Capture {
    fn draw(cfg: &FingerSynthConfig, m: &FastMaster, rng: &mut impl RngCore) -> Self {
        let area = m.area;
        let Placement { rot, tx, ty, ccx, ccy, crx, cry } =
            Placement::draw(cfg, &m.cores, area, rng);
        let Distortion { inner, brake_k, psi, scale, shift } = Distortion::draw(cfg, rng);
        Self {
            cos: libm::cosf(rot),
            sin: libm::sinf(rot),
            ox: cfg.width as f32 / 2.0 + tx,
            oy: cfg.height as f32 / 2.0 + ty,
            area_cx: area.cx,
            area_cy: area.cy,
            ccx,
            ccy,
            crx,
            cry,
            inner,
            brake_k,
            pc: libm::cosf(psi) * scale,
            ps: libm::sinf(psi) * scale,
            shift,
        }
    }

    /// Contact-ellipse radius of a point of the placed, undistorted frame (< 1 in contact).
    fn rho(&self, u: f32, v: f32) -> f32 {
        let (ex, ey) = ((u - self.ccx) / self.crx, (v - self.ccy) / self.cry);
        (ex * ex + ey * ey).sqrt()
    }

    /// The renderer's distortion: undistorted frame → master.
    fn distort(&self, u: f32, v: f32) -> (f32, f32) {
        let rho = self.rho(u, v);
        if rho <= self.inner {
            return (u, v);
        }
        let b = (rho - self.inner) / self.brake_k;
        let brake = b * b / (1.0 + b * b);
        let (dx, dy) = (u - self.ccx, v - self.ccy);
        (
            u + brake * (self.pc * dx - self.ps * dy + self.shift.0 - dx),
            v + brake * (self.ps * dx + self.pc * dy + self.shift.1 - dy),
        )
    }

    /// Master → undistorted frame: the inverse of [`Capture::distort`] by fixed-point iteration.
    fn undistort(&self, x: f32, y: f32) -> (f32, f32) {
        let (mut u, mut v) = (x, y);
        for _ in 0..12 {
            let (dx, dy) = self.distort(u, v);
            let (nu, nv) = (u + 0.8 * (x - dx), v + 0.8 * (y - dy));
            let moved = (nu - u).abs() + (nv - v).abs();
            (u, v) = (nu, nv);
            if moved < 0.01 {
                break;
            }
        }
        (u, v)
    }

    /// Undistorted frame → output image (the renderer's placement, forwards).
    fn place(&self, u: f32, v: f32) -> (f32, f32) {
        let (dx, dy) = (u - self.area_cx, v - self.area_cy);
        (self.cos * dx - self.sin * dy + self.ox, self.sin * dx + self.cos * dy + self.oy)
    }

    /// Master point and direction → output point and direction (image coordinates).
    fn map(&self, x: f32, y: f32, direction: f32) -> (f32, f32, f32) {
        let (u, v) = self.undistort(x, y);
        let (px, py) = self.place(u, v);
        let step = 3.0;
        let (u2, v2) =
            self.undistort(x + step * libm::cosf(direction), y + step * libm::sinf(direction));
        let (qx, qy) = self.place(u2, v2);
        (px, py, libm::atan2f(qy - py, qx - px))
    }
}

/// Standard normal CDF.
fn phi(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Poisson draw (Knuth; means here are below a few hundred).
fn poisson(rng: &mut impl RngCore, mean: f64) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    // Split large means so that exp(-mean) never underflows.
    let mut left = mean;
    let mut n = 0;
    while left > 0.0 {
        let m = left.min(50.0);
        left -= m;
        let limit = libm::exp(-m);
        let mut p = uniform(rng, 0.0, 1.0);
        while p > limit {
            n += 1;
            p *= uniform(rng, 0.0, 1.0);
        }
    }
    n
}

/// A mindtct-like reliability in `(0, 1]`. mindtct's are three clusters (its low-flow and
/// high-curvature maps): about 0.1–0.25, 0.4–0.5 and 0.8–0.99 (on the image generator's
/// impressions about 30 %, 20 % and 50 % of minutiae). A real minutia of a good, well-contacted
/// region (`good` near 1) is mostly in the high cluster; spurious ones mostly in the low one.
fn reliability(rng: &mut impl RngCore, spurious: bool, good: f32) -> f32 {
    let good = f64::from(good.clamp(0.0, 1.0));
    let (p_high, p_low) =
        if spurious { (0.15, 0.55) } else { (0.45 + 0.4 * good, 0.05 + 0.3 * (1.0 - good)) };
    let u = uniform(rng, 0.0, 1.0);
    let (lo, hi) = if u < p_high {
        (0.78, 0.99)
    } else if u < p_high + p_low {
        (0.10, 0.24)
    } else {
        (0.38, 0.52)
    };
    uniform(rng, lo, hi) as f32
}

/// Smoothstep over `[0, 1]`.
fn smooth01(x: f32) -> f32 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Impression `impression` of `finger`, whose master is `master` (from
/// [`fast_master`]`(cfg, finger)`), as the template an extractor would give: in an image of the
/// config's canvas size at 500 dpi, most reliable minutiae first, at most [`MAX_MINUTIAE`]. It
/// may hold fewer minutiae than a service accepts (a failure to extract, as with images).
pub fn fast_impression(
    cfg: &FastFingerConfig,
    master: &FastMaster,
    finger: u64,
    impression: u32,
) -> FingerTemplate {
    let s = &cfg.synth;
    let mut rng = StreamKey::new(s.seed, DOMAIN_FAST_IMPRESSION).rng(finger, u64::from(impression));
    let cap = Capture::draw(s, master, &mut rng);
    let quality =
        normal(&mut rng, f64::from(cfg.quality_mean), f64::from(cfg.quality_sd)).clamp(0.05, 1.0);
    let rho_persist = f64::from(cfg.detect_persistence).clamp(0.0, 1.0);
    let base_detect =
        f64::from(cfg.detect) * (1.0 - f64::from(cfg.detect_low_quality) * (1.0 - quality));
    let (w, h) = (s.width as f32, s.height as f32);
    let border = cfg.border;
    let inside_image =
        |x: f32, y: f32| x >= border && y >= border && x < w - border && y < h - border;
    let angle_sd = f64::from(cfg.angle_sd_deg).to_radians();
    let pos_sd = f64::from(cfg.position_sd);
    let edge = cfg.edge_band.max(1e-3);

    // (x, y, direction, kind, reliability 0..1)
    let mut found: Vec<(f32, f32, f32, IsoKind, f32)> = Vec::with_capacity(master.minutiae.len());
    let push = |rng: &mut rand_chacha::ChaCha8Rng,
                found: &mut Vec<(f32, f32, f32, IsoKind, f32)>,
                (px, py, dir): (f32, f32, f32),
                kind: IsoKind,
                edge_factor: f32,
                spurious: bool| {
        let x = px + normal(rng, 0.0, pos_sd) as f32;
        let y = py + normal(rng, 0.0, pos_sd) as f32;
        let dir = dir + normal(rng, 0.0, angle_sd) as f32;
        let flip = uniform(rng, 0.0, 1.0) < f64::from(cfg.kind_flip);
        let kind = match (kind, flip) {
            (IsoKind::RidgeEnding, true) => IsoKind::Bifurcation,
            (IsoKind::Bifurcation, true) => IsoKind::RidgeEnding,
            (k, _) => k,
        };
        let r = reliability(rng, spurious, quality as f32 * edge_factor);
        if inside_image(x, y) {
            found.push((x, y, dir, kind, r.clamp(0.01, 1.0)));
        }
    };

    for m in &master.minutiae {
        let (u, v) = cap.undistort(m.x, m.y);
        let rho = cap.rho(u, v);
        let z_fresh = normal(&mut rng, 0.0, 1.0);
        if rho >= 1.0 {
            continue;
        }
        let edge_factor = smooth01((1.0 - rho) / edge);
        let p = base_detect * f64::from(edge_factor);
        let z = libm::sqrt(rho_persist) * f64::from(m.hardness)
            + libm::sqrt(1.0 - rho_persist) * z_fresh;
        if phi(z) >= p {
            continue;
        }
        let mapped = cap.map(m.x, m.y, m.direction);
        push(&mut rng, &mut found, mapped, m.kind, edge_factor, false);
    }

    // Spurious minutiae: uniform over the contact ellipse (and the fingerprint area), a share of
    // them in the edge band.
    let contact_area = PI * f64::from(cap.crx) * f64::from(cap.cry);
    let sp_density =
        f64::from(cfg.spurious_density) + f64::from(cfg.spurious_low_quality) * (1.0 - quality);
    let n_spurious = poisson(&mut rng, contact_area * sp_density / 1e4);
    for _ in 0..n_spurious {
        let in_edge = uniform(&mut rng, 0.0, 1.0) < f64::from(cfg.spurious_edge);
        let a = uniform(&mut rng, 0.0, TAU);
        let r = if in_edge {
            uniform(&mut rng, f64::from(1.0 - edge), 1.0)
        } else {
            libm::sqrt(uniform(&mut rng, 0.0, 1.0))
        } as f32;
        let (u, v) = (
            cap.ccx + r * cap.crx * libm::cos(a) as f32,
            cap.ccy + r * cap.cry * libm::sin(a) as f32,
        );
        let sense = uniform(&mut rng, 0.0, 1.0) < 0.5;
        let mut bif = uniform(&mut rng, 0.0, 1.0) < f64::from(cfg.spurious_bifurcation_fraction);
        let cut = in_edge && uniform(&mut rng, 0.0, 1.0) < f64::from(cfg.edge_outward);
        let (mx, my) = cap.distort(u, v);
        if !master.in_area(mx, my) {
            continue;
        }
        // Spurious minutiae lie on ridges: the field's direction there; a ridge cut by the
        // contact edge ends pointing out of the contact region, others have either sense.
        let theta = master.orientation.theta(f64::from(mx), f64::from(my));
        let outward = libm::cos(theta) * libm::cos(a) / f64::from(cap.crx)
            + libm::sin(theta) * libm::sin(a) / f64::from(cap.cry)
            > 0.0;
        let flip = if cut {
            bif = false;
            !outward
        } else {
            sense
        };
        let dir = (theta + if flip { PI } else { 0.0 }) as f32;
        let (px, py) = cap.place(u, v);
        let step = 3.0;
        let (qx, qy) = cap.place(u + step * libm::cosf(dir), v + step * libm::sinf(dir));
        let kind = if bif { IsoKind::Bifurcation } else { IsoKind::RidgeEnding };
        let edge_factor = smooth01((1.0 - r) / edge);
        push(
            &mut rng,
            &mut found,
            (px, py, libm::atan2f(qy - py, qx - px)),
            kind,
            edge_factor,
            true,
        );
    }

    // Most reliable first, like the extractor; ties keep generation order.
    found.sort_by(|a, b| b.4.total_cmp(&a.4));
    found.truncate(MAX_MINUTIAE);
    let step = f64::from(cfg.angle_step_deg).to_radians();
    let minutiae: Vec<Minutia> = found
        .iter()
        .map(|&(x, y, dir, kind, r)| {
            // Image coordinates turn clockwise on screen; ISO angles counter-clockwise.
            let mut iso = -f64::from(dir);
            if step > 0.0 {
                iso = libm::round(iso / step) * step;
            }
            Minutia {
                x: x as u16,
                y: y as u16,
                angle: Minutia::angle_from_rad(iso as f32),
                kind,
                quality: ((r * 100.0).round() as u8).clamp(1, 100),
            }
        })
        .collect();
    let q = if found.is_empty() {
        0
    } else {
        (found.iter().map(|m| m.4).sum::<f32>() / found.len() as f32 * 100.0).round() as u8
    };
    FingerTemplate::new(
        s.width as u16,
        s.height as u16,
        RESOLUTION_500DPI_PPCM,
        None,
        q.min(100),
        minutiae,
    )
    .expect("minutiae are inside the image and at most MAX_MINUTIAE")
}

#[cfg(test)]
mod tests {
    use super::*;
    use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate};

    fn cfg(seed: u64) -> FastFingerConfig {
        FastFingerConfig {
            synth: FingerSynthConfig { seed, ..FingerSynthConfig::default() },
            ..FastFingerConfig::default()
        }
    }

    #[test]
    fn same_inputs_give_the_same_template_on_any_thread() {
        let c = cfg(3);
        for f in [0u64, 17, 1 << 40] {
            let m = fast_master(&c, f);
            let t = fast_impression(&c, &m, f, 1);
            assert_eq!(t, fast_impression(&c, &fast_master(&c, f), f, 1));
            let c2 = c.clone();
            let other =
                std::thread::spawn(move || fast_impression(&c2, &fast_master(&c2, f), f, 1))
                    .join()
                    .expect("thread");
            assert_eq!(t, other);
        }
    }

    #[test]
    fn fingers_impressions_and_seeds_differ() {
        let c = cfg(3);
        let m0 = fast_master(&c, 0);
        let m1 = fast_master(&c, 1);
        assert_ne!(m0.minutiae, m1.minutiae);
        let t00 = fast_impression(&c, &m0, 0, 0);
        assert_ne!(t00, fast_impression(&c, &m0, 0, 1));
        assert_ne!(t00, fast_impression(&c, &m1, 1, 0));
        let other_seed = cfg(4);
        assert_ne!(t00, fast_impression(&other_seed, &fast_master(&other_seed, 0), 0, 0));
    }

    #[test]
    fn masters_share_the_image_masters_geometry() {
        // Class and singular points come from the image generator's own streams.
        let c = cfg(9);
        for f in 0..200 {
            let m = fast_master(&c, f);
            assert_eq!(m.class, super::super::finger_class(&c.synth, f));
            let mut rng = StreamKey::new(c.synth.seed, DOMAIN_LAYOUT).rng(f, 0);
            let l = layout(&mut rng, c.synth.width, c.synth.height);
            assert_eq!((&m.cores, &m.deltas), (&l.cores, &l.deltas));
            for p in &m.minutiae {
                assert!(m.in_area(p.x, p.y));
            }
            // The minimum distance holds.
            for (i, p) in m.minutiae.iter().enumerate() {
                for q in &m.minutiae[i + 1..] {
                    let d = ((p.x - q.x).powi(2) + (p.y - q.y).powi(2)).sqrt();
                    assert!(d >= c.min_distance, "finger {f}: two minutiae {d} px apart");
                }
            }
        }
    }

    #[test]
    fn master_directions_follow_the_orientation_field() {
        let c = cfg(5);
        let m = fast_master(&c, 2);
        for p in &m.minutiae {
            let theta = m.orientation.theta(f64::from(p.x), f64::from(p.y)) as f32;
            // Equal modulo π (the ridge sense is random).
            let d = (p.direction - theta).rem_euclid(std::f32::consts::PI);
            assert!(d.min(std::f32::consts::PI - d) < 1e-3, "{} vs {theta}", p.direction);
        }
    }

    #[test]
    fn impressions_are_valid_plausible_templates() {
        let c = cfg(11);
        let (mut counts, mut bif, mut total) = (Vec::new(), 0usize, 0usize);
        for f in 0..150 {
            let m = fast_master(&c, f);
            for i in 0..2 {
                let t = fast_impression(&c, &m, f, i);
                t.validate().expect("a valid template");
                assert_eq!((t.width, t.height), (400, 480));
                assert_eq!(t.resolution_ppcm, RESOLUTION_500DPI_PPCM);
                for p in &t.minutiae {
                    assert!(f32::from(p.x) >= c.border && f32::from(p.x) < 400.0 - c.border);
                    assert!(f32::from(p.y) >= c.border && f32::from(p.y) < 480.0 - c.border);
                    assert!((1..=100).contains(&p.quality));
                    // Directions on mindtct's 11.25° grid (8 ISO units).
                    assert_eq!(p.angle % 8, 0);
                }
                // Most reliable first.
                assert!(t.minutiae.windows(2).all(|w| w[0].quality >= w[1].quality));
                bif += t.minutiae.iter().filter(|p| p.kind == IsoKind::Bifurcation).count();
                total += t.minutiae.len();
                counts.push(t.minutiae.len() as f32);
            }
        }
        let mean = counts.iter().sum::<f32>() / counts.len() as f32;
        // mindtct on the image generator's impressions: about 47 per impression.
        assert!((30.0..70.0).contains(&mean), "mean minutiae {mean}");
        let below = counts.iter().filter(|&&n| n < 8.0).count();
        assert!(below <= counts.len() / 50, "{below} impressions with < 8 minutiae");
        let b = bif as f32 / total as f32;
        assert!((0.2..0.8).contains(&b), "bifurcation fraction {b}");
    }

    #[test]
    fn mcc_scores_mates_above_non_mates() {
        let c = cfg(21);
        let params = MccParams::default();
        let n = 40;
        let templates: Vec<[MccTemplate; 2]> = (0..n)
            .map(|f| {
                let m = fast_master(&c, f);
                [0, 1].map(|i| MccTemplate::new(&fast_impression(&c, &m, f, i), &params))
            })
            .collect();
        let mut matcher = Matcher::new(&params);
        let genuine: Vec<f32> =
            templates.iter().map(|t| matcher.similarity(&t[0], &t[1])).collect();
        let impostor: Vec<f32> = (0..n as usize)
            .flat_map(|f| [1, 7].map(|k| (f, (f + k) % n as usize)))
            .map(|(f, g)| matcher.similarity(&templates[f][0], &templates[g][1]))
            .collect();
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let max_impostor = impostor.iter().copied().fold(0.0, f32::max);
        let above = genuine.iter().filter(|&&g| g > max_impostor).count();
        assert!(
            mean(&genuine) > 3.0 * mean(&impostor),
            "genuine {} vs impostor {}",
            mean(&genuine),
            mean(&impostor)
        );
        assert!(above * 10 >= n as usize * 9, "{above} of {n} mates above every non-mate");
    }

    #[test]
    fn forward_distortion_inverts_the_renderers_map() {
        let c = cfg(1);
        let m = fast_master(&c, 4);
        for i in 0..20 {
            let mut rng = StreamKey::new(7, 7).rng(i, 0);
            let cap = Capture::draw(&c.synth, &m, &mut rng);
            for p in &m.minutiae {
                let (u, v) = cap.undistort(p.x, p.y);
                let (x, y) = cap.distort(u, v);
                assert!(
                    (x - p.x).abs() < 0.05 && (y - p.y).abs() < 0.05,
                    "{x},{y} vs {},{}",
                    p.x,
                    p.y
                );
            }
        }
    }

    #[test]
    fn poisson_has_its_mean() {
        let mut rng = StreamKey::new(1, 2).rng(0, 0);
        for mean in [0.5, 12.0, 130.0] {
            let n = 4000;
            let s: usize = (0..n).map(|_| poisson(&mut rng, mean)).sum();
            let got = s as f64 / n as f64;
            assert!((got - mean).abs() < 4.0 * (mean / n as f64).sqrt(), "{got} vs {mean}");
        }
    }
}
