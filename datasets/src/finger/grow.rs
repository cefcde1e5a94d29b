//! SFinGe ridge growth: iterated Gabor filtering from a few seed patches.
//!
//! Each iteration convolves the current image with, at every pixel, a Gabor filter tuned to the
//! local orientation and period, then clamps to `[-1, 1]`. The filters have a gain above one at
//! their own frequency, so a small seed disc of ridges grows into a patch of parallel ridges that
//! follows the field. Patches from different seeds meet with arbitrary phase, and ridges must
//! split or end where the field diverges; both create minutiae, as in Cappelli, Maio & Maltoni's
//! SFinGe.
//!
//! Speed: kernels are precomputed for [`ORIENT_BINS`] orientations × [`PERIOD_BINS`] periods,
//! stored as 13 rows of 16 taps (3 zero taps) so that the inner loop vectorises; the canvas is
//! split into 8×8 tiles and a tile is filtered only while it or a neighbour still changed in the
//! previous sweep (relative to its amplitude), at most [`MAX_VISITS`] times. Iterations are
//! Jacobi sweeps (read one buffer, write another) in a fixed order and every reduction has a
//! fixed order, so the result does not depend on scheduling.

use super::field::{uniform, FieldGrid};
use rand::RngCore;
use std::f32::consts::PI;
use std::sync::OnceLock;

/// Number of orientation bins over [0, π).
pub(crate) const ORIENT_BINS: usize = 32;
/// Number of period bins.
pub(crate) const PERIOD_BINS: usize = 11;
/// Period of bin 0 and the step between bins, in pixels.
const PERIOD_MIN: f32 = 7.0;
const PERIOD_STEP: f32 = 0.5;
/// Kernel radius: 13 × 13 support.
const RADIUS: usize = 6;
const SIDE: usize = 2 * RADIUS + 1;
/// Row stride of a stored kernel (SIDE rounded up to a multiple of 8).
const STRIDE: usize = 16;
const KSIZE: usize = SIDE * STRIDE;
/// Gain of a filter at its own frequency.
const GAIN: f32 = 1.8;
/// Tile side.
const TILE: usize = 8;
/// A tile whose largest change in a sweep is below this fraction of its largest value has
/// settled.
const SETTLED: f32 = 0.08;
/// Most sweeps a single tile gets.
const MAX_VISITS: u8 = 16;
/// Radius of a seed disc.
const SEED_RADIUS: usize = 7;
/// Safety cap on iterations.
const MAX_ITERATIONS: usize = 400;

struct Bank {
    taps: Vec<f32>,
}

fn bank() -> &'static Bank {
    static BANK: OnceLock<Bank> = OnceLock::new();
    BANK.get_or_init(|| {
        let mut taps = vec![0.0f32; ORIENT_BINS * PERIOD_BINS * KSIZE];
        for o in 0..ORIENT_BINS {
            let theta = o as f32 * PI / ORIENT_BINS as f32;
            let (s, c) = (libm::sinf(theta), libm::cosf(theta));
            for p in 0..PERIOD_BINS {
                let period = PERIOD_MIN + PERIOD_STEP * p as f32;
                let sd_across = 0.40 * period;
                let sd_along = 0.55 * period;
                let k = &mut taps[(o * PERIOD_BINS + p) * KSIZE..][..KSIZE];
                let mut env = [0.0f32; SIDE * SIDE];
                let mut wave = [0.0f32; SIDE * SIDE];
                for dy in 0..SIDE {
                    for dx in 0..SIDE {
                        let (x, y) = (dx as f32 - RADIUS as f32, dy as f32 - RADIUS as f32);
                        // Across the ridges (normal) and along them.
                        let u = -x * s + y * c;
                        let v = x * c + y * s;
                        let e = libm::expf(
                            -0.5 * (u * u / (sd_across * sd_across)
                                + v * v / (sd_along * sd_along)),
                        );
                        env[dy * SIDE + dx] = e;
                        wave[dy * SIDE + dx] = libm::cosf(2.0 * PI * u / period);
                    }
                }
                // Zero DC: subtract a multiple of the envelope.
                let se: f32 = env.iter().sum();
                let sw: f32 = env.iter().zip(&wave).map(|(e, w)| e * w).sum();
                let dc = sw / se;
                let g: Vec<f32> = env.iter().zip(&wave).map(|(e, w)| e * (w - dc)).collect();
                // Gain at the tuned frequency (phase 0 response to cos(2πu/T)).
                let resp: f32 = g.iter().zip(&wave).map(|(g, w)| g * w).sum();
                let scale = GAIN / resp;
                for dy in 0..SIDE {
                    for dx in 0..SIDE {
                        k[dy * STRIDE + dx] = g[dy * SIDE + dx] * scale;
                    }
                }
            }
        }
        Bank { taps }
    })
}

/// Kernel index of a pixel from the interpolated field.
fn kernel_index(c2: f32, s2: f32, period: f32) -> u16 {
    let theta = 0.5 * libm::atan2f(s2, c2); // (-π/2, π/2]
    let mut o = libm::roundf(theta / PI * ORIENT_BINS as f32) as i32;
    o = o.rem_euclid(ORIENT_BINS as i32);
    let p = libm::roundf((period - PERIOD_MIN) / PERIOD_STEP).clamp(0.0, (PERIOD_BINS - 1) as f32);
    (o as usize * PERIOD_BINS + p as usize) as u16
}

/// Grow ridges over `domain` (row-major mask of `width × height`); returns values in `[-1, 1]`,
/// positive on ridges, zero outside the domain.
pub(crate) fn grow(
    rng: &mut impl RngCore,
    width: usize,
    height: usize,
    domain: &[bool],
    field: &FieldGrid,
    n_seeds: usize,
) -> Vec<f32> {
    let bank = bank();
    let pw = width + 2 * RADIUS + STRIDE - SIDE;
    let ph = height + 2 * RADIUS;
    let mut cur = vec![0.0f32; pw * ph];
    let mut next = vec![0.0f32; pw * ph];
    let at = |x: usize, y: usize| (y + RADIUS) * pw + x + RADIUS;

    let mut kidx = vec![0u16; width * height];
    for y in 0..height {
        for x in 0..width {
            if domain[y * width + x] {
                let (c2, s2, p) = field.sample(x as f32, y as f32);
                kidx[y * width + x] = kernel_index(c2, s2, p);
            }
        }
    }

    // Seeds: small discs of ridges with the local orientation and period and a random phase.
    let domain_px: Vec<usize> = (0..width * height).filter(|&i| domain[i]).collect();
    if domain_px.is_empty() {
        return vec![0.0; width * height];
    }
    for _ in 0..n_seeds {
        let i = domain_px
            [(uniform(rng, 0.0, domain_px.len() as f64) as usize).min(domain_px.len() - 1)];
        let (sx, sy) = (i % width, i / width);
        let (c2, s2, period) = field.sample(sx as f32, sy as f32);
        let theta = 0.5 * libm::atan2f(s2, c2);
        let (s, c) = (libm::sinf(theta), libm::cosf(theta));
        let phase = uniform(rng, 0.0, std::f64::consts::TAU) as f32;
        let r = SEED_RADIUS as i32;
        for dy in -r..=r {
            for dx in -r..=r {
                let (x, y) = (sx as i32 + dx, sy as i32 + dy);
                if dx * dx + dy * dy > r * r || x < 0 || y < 0 {
                    continue;
                }
                let (x, y) = (x as usize, y as usize);
                if x >= width || y >= height || !domain[y * width + x] {
                    continue;
                }
                let u = -(dx as f32) * s + dy as f32 * c;
                cur[at(x, y)] = libm::cosf(2.0 * PI * u / period + phase);
            }
        }
    }

    let tw = width.div_ceil(TILE);
    let th = height.div_ceil(TILE);
    let tile_in_domain: Vec<bool> = (0..tw * th)
        .map(|t| {
            let (tx, ty) = (t % tw, t / tw);
            (ty * TILE..((ty + 1) * TILE).min(height))
                .any(|y| (tx * TILE..((tx + 1) * TILE).min(width)).any(|x| domain[y * width + x]))
        })
        .collect();
    // A tile is filtered while it or a neighbour changed in the previous sweep (and it borders
    // grown ridges); `visits` caps the work per tile should a region keep flickering.
    let mut changed = vec![false; tw * th];
    for &i in &domain_px {
        if cur[at(i % width, i / width)] != 0.0 {
            changed[(i / width / TILE) * tw + (i % width) / TILE] = true;
        }
    }
    let mut visits = vec![0u8; tw * th];
    let mut active = Vec::with_capacity(tw * th);
    for _ in 0..MAX_ITERATIONS {
        active.clear();
        for ty in 0..th {
            for tx in 0..tw {
                let t = ty * tw + tx;
                if !tile_in_domain[t] || visits[t] >= MAX_VISITS {
                    continue;
                }
                let near = (ty.saturating_sub(1)..(ty + 2).min(th))
                    .any(|y| (tx.saturating_sub(1)..(tx + 2).min(tw)).any(|x| changed[y * tw + x]));
                if near {
                    active.push(t);
                }
            }
        }
        if active.is_empty() {
            break;
        }
        for &t in &active {
            let (tx, ty) = (t % tw, t / tw);
            for y in ty * TILE..((ty + 1) * TILE).min(height) {
                for x in tx * TILE..((tx + 1) * TILE).min(width) {
                    let i = y * width + x;
                    if !domain[i] {
                        continue;
                    }
                    let k = &bank.taps[kidx[i] as usize * KSIZE..][..KSIZE];
                    let mut acc = [0.0f32; STRIDE];
                    for r in 0..SIDE {
                        let row: &[f32; STRIDE] =
                            cur[(y + r) * pw + x..][..STRIDE].try_into().expect("row");
                        let kr: &[f32; STRIDE] = k[r * STRIDE..][..STRIDE].try_into().expect("row");
                        for j in 0..STRIDE {
                            acc[j] += kr[j] * row[j];
                        }
                    }
                    // Fixed-order reduction: four lanes, then pairwise.
                    let mut l = [0.0f32; 4];
                    for (j, lane) in l.iter_mut().enumerate() {
                        *lane = (acc[j] + acc[j + 4]) + (acc[j + 8] + acc[j + 12]);
                    }
                    let sum = (l[0] + l[1]) + (l[2] + l[3]);
                    next[at(x, y)] = sum.clamp(-1.0, 1.0);
                }
            }
        }
        changed.fill(false);
        for &t in &active {
            let (tx, ty) = (t % tw, t / tw);
            let (mut delta, mut peak) = (0.0f32, 0.0f32);
            for y in ty * TILE..((ty + 1) * TILE).min(height) {
                let a = at(tx * TILE, y);
                let b = at(((tx + 1) * TILE).min(width), y);
                for (c, n) in cur[a..b].iter_mut().zip(&next[a..b]) {
                    delta = delta.max((*c - *n).abs());
                    peak = peak.max(n.abs());
                    *c = *n;
                }
            }
            changed[t] = delta > SETTLED * peak.max(0.01);
            visits[t] = visits[t].saturating_add(1);
        }
    }
    let mut out = vec![0.0f32; width * height];
    for y in 0..height {
        out[y * width..(y + 1) * width].copy_from_slice(&cur[at(0, y)..at(width, y)]);
    }
    out
}
