//! Cylinder creation: convex hull, cell validity, binarised cell values.

use super::{Cylinder, MccParams, MccTemplate, MAX_MCC_MINUTIAE, ND, NS};
use biomatch_core::finger::{FingerTemplate, Minutia, RESOLUTION_500DPI_PPCM};

/// ISO angle unit in radians.
pub(crate) const ISO_UNIT: f32 = std::f32::consts::TAU / 256.0;

pub(crate) fn build(template: &FingerTemplate, params: &MccParams) -> MccTemplate {
    let minutiae = select_minutiae(&template.minutiae, params.max_minutiae);
    let scale = match template.resolution_ppcm {
        0 => 1.0,
        r => f32::from(RESOLUTION_500DPI_PPCM) / f32::from(r),
    };
    // Right-handed frame at 500 dpi: X = x, Y = −y, so the ISO angle is counter-clockwise.
    let pts: Vec<(f32, f32)> =
        minutiae.iter().map(|m| (f32::from(m.x) * scale, -f32::from(m.y) * scale)).collect();
    let hull = convex_hull(&pts);

    let geometry = CellGeometry::new(params);
    let dir = direction_table(params);
    let sigma = params.sigma_s.max(1e-3);
    let reach = 3.0 * sigma;
    let reach_sq = reach * reach;
    let neighbour_sq = (params.radius + reach) * (params.radius + reach);
    let omega_sq = params.omega.max(0.0) * params.omega.max(0.0);
    let gauss_norm = 1.0 / (sigma * (std::f32::consts::TAU).sqrt());
    let gauss_k = -1.0 / (2.0 * sigma * sigma);
    let min_valid = (params.min_valid_cells * geometry.circle_cells as f32).ceil().max(1.0) as u32;

    let mut out = MccTemplate {
        params: *params,
        cylinders: Vec::with_capacity(minutiae.len()),
        masks: Vec::with_capacity(minutiae.len()),
        minutiae: Vec::with_capacity(minutiae.len()),
        xs: Vec::with_capacity(minutiae.len()),
        ys: Vec::with_capacity(minutiae.len()),
        hash: 0,
    };
    let mut neighbours: Vec<usize> = Vec::with_capacity(minutiae.len());
    for (m_idx, m) in minutiae.iter().enumerate() {
        let (mx, my) = pts[m_idx];
        neighbours.clear();
        neighbours.extend((0..pts.len()).filter(|&t| {
            let (dx, dy) = (pts[t].0 - mx, pts[t].1 - my);
            t != m_idx && dx * dx + dy * dy <= neighbour_sq
        }));
        if neighbours.len() < params.min_neighbours {
            continue;
        }
        let theta = m.angle_rad();
        let (sin, cos) = theta.sin_cos();
        // Cell centres in the image frame, and their validity.
        let mut centres = [(0.0f32, 0.0f32); NS * NS];
        let mut mask = 0u64;
        for (c, (centre, &(u, v))) in centres.iter_mut().zip(&geometry.offsets).enumerate() {
            let p = (mx + u * cos - v * sin, my + u * sin + v * cos);
            *centre = p;
            if geometry.circle_mask >> c & 1 == 1 && hull_distance_sq(&hull, p) <= omega_sq {
                mask |= 1 << c;
            }
        }
        if mask.count_ones() < min_valid {
            continue;
        }
        let mut bits = [0u64; ND];
        let mut cells = mask;
        while cells != 0 {
            let c = cells.trailing_zeros() as usize;
            cells &= cells - 1;
            let p = centres[c];
            let mut vals = [0.0f32; ND];
            for &t in &neighbours {
                let (dx, dy) = (pts[t].0 - p.0, pts[t].1 - p.1);
                let d_sq = dx * dx + dy * dy;
                if d_sq <= reach_sq {
                    let g = gauss_norm * (gauss_k * d_sq).exp();
                    let row = &dir[usize::from(m.angle.wrapping_sub(minutiae[t].angle))];
                    for (v, w) in vals.iter_mut().zip(row) {
                        *v += g * w;
                    }
                }
            }
            for (k, v) in vals.iter().enumerate() {
                if *v >= params.mu_psi {
                    bits[k] |= 1 << c;
                }
            }
        }
        if bits.iter().all(|&w| w == 0) {
            // Nothing near any cell centre: the cylinder could only ever score 0.
            continue;
        }
        out.cylinders.push(Cylinder {
            bits,
            mask,
            angle: m.angle,
            valid: mask.count_ones() as u8,
            ones: bits.iter().map(|w| w.count_ones() as u16).sum(),
        });
        out.masks.push([mask; ND]);
        out.minutiae.push(*m);
        out.xs.push(mx);
        out.ys.push(my);
    }
    sort_by_angle(&mut out);
    out.hash = content_hash(&out);
    out
}

/// Orders the cylinders by direction (stable), so that the cylinders matchable with a given
/// direction form one circular range.
fn sort_by_angle(t: &mut MccTemplate) {
    let mut order: Vec<usize> = (0..t.cylinders.len()).collect();
    order.sort_by_key(|&i| t.cylinders[i].angle);
    t.cylinders = order.iter().map(|&i| t.cylinders[i]).collect();
    t.masks = order.iter().map(|&i| t.masks[i]).collect();
    t.minutiae = order.iter().map(|&i| t.minutiae[i]).collect();
    t.xs = order.iter().map(|&i| t.xs[i]).collect();
    t.ys = order.iter().map(|&i| t.ys[i]).collect();
}

/// Sorts by decreasing quality (stable), drops exact duplicates, caps the count.
fn select_minutiae(all: &[Minutia], cap: usize) -> Vec<Minutia> {
    let mut ms: Vec<Minutia> = all.to_vec();
    ms.sort_by_key(|m| std::cmp::Reverse(m.quality));
    let mut kept: Vec<Minutia> = Vec::with_capacity(ms.len());
    let cap = cap.min(MAX_MCC_MINUTIAE);
    for m in ms {
        if kept.len() >= cap {
            break;
        }
        if !kept.iter().any(|k| k.x == m.x && k.y == m.y && k.angle == m.angle) {
            kept.push(m);
        }
    }
    kept
}

/// Cell centre offsets in the cylinder frame and the cells whose centre lies inside the circle.
struct CellGeometry {
    offsets: [(f32, f32); NS * NS],
    circle_mask: u64,
    circle_cells: u32,
}

impl CellGeometry {
    fn new(params: &MccParams) -> Self {
        let step = 2.0 * params.radius / NS as f32;
        let half = NS as f32 / 2.0;
        let mut offsets = [(0.0, 0.0); NS * NS];
        let mut circle_mask = 0u64;
        for j in 0..NS {
            for i in 0..NS {
                let u = (i as f32 + 0.5 - half) * step;
                let v = (j as f32 + 0.5 - half) * step;
                offsets[j * NS + i] = (u, v);
                if u * u + v * v <= params.radius * params.radius {
                    circle_mask |= 1 << (j * NS + i);
                }
            }
        }
        CellGeometry { offsets, circle_mask, circle_cells: circle_mask.count_ones() }
    }
}

/// Cells of the circle (centre within `R`), as a count: the `max cells` of `minVC` and `minME`.
pub(crate) fn circle_cells(params: &MccParams) -> u32 {
    CellGeometry::new(params).circle_cells
}

/// `table[u][k]`: directional contribution of a neighbour whose direction differs from the
/// central minutia's by `u` ISO units (`θm − θt`, wrapping) to angular section `k`: the mass of
/// the Gaussian `N(0, σD)` over the section `[dφk − ΔD/2, dφk + ΔD/2]` centred on the difference.
fn direction_table(params: &MccParams) -> Vec<[f32; ND]> {
    let delta = std::f64::consts::TAU / ND as f64;
    let s = f64::from(params.sigma_d.max(1e-3)) * std::f64::consts::SQRT_2;
    (0..256u32)
        .map(|u| {
            let d_theta = f64::from(u as u8 as i8) * f64::from(ISO_UNIT);
            let mut row = [0.0f32; ND];
            for (k, r) in row.iter_mut().enumerate() {
                let phi_k = -std::f64::consts::PI + (k as f64 + 0.5) * delta;
                let alpha = wrap_pi(phi_k - d_theta);
                *r = (0.5 * (erf((alpha + delta / 2.0) / s) - erf((alpha - delta / 2.0) / s)))
                    as f32;
            }
            row
        })
        .collect()
}

fn wrap_pi(a: f64) -> f64 {
    let t = std::f64::consts::TAU;
    (a + std::f64::consts::PI).rem_euclid(t) - std::f64::consts::PI
}

/// Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    s * y
}

/// Convex hull, counter-clockwise, without repeated or collinear points (Andrew's monotone
/// chain). Fewer than three points, or all on a line, give a point or a segment.
pub(crate) fn convex_hull(pts: &[(f32, f32)]) -> Vec<(f32, f32)> {
    let mut p: Vec<(f32, f32)> = pts.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    p.dedup();
    if p.len() <= 2 {
        return p;
    }
    let cross = |o: (f32, f32), a: (f32, f32), b: (f32, f32)| {
        (f64::from(a.0) - f64::from(o.0)) * (f64::from(b.1) - f64::from(o.1))
            - (f64::from(a.1) - f64::from(o.1)) * (f64::from(b.0) - f64::from(o.0))
    };
    let mut hull: Vec<(f32, f32)> = Vec::with_capacity(2 * p.len());
    // Lower chain left to right, then upper chain right to left (never popping into the lower).
    for &q in &p {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0 {
            hull.pop();
        }
        hull.push(q);
    }
    let lower = hull.len() + 1;
    for &q in p.iter().rev().skip(1) {
        while hull.len() >= lower && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0.0 {
            hull.pop();
        }
        hull.push(q);
    }
    hull.pop(); // the first point again
    if hull.len() < 3 {
        // All collinear: the chain degenerates to the two extremes.
        hull.truncate(2);
    }
    hull
}

/// Squared distance from `p` to the convex polygon `hull` (0 inside). Handles a point or a segment.
pub(crate) fn hull_distance_sq(hull: &[(f32, f32)], p: (f32, f32)) -> f32 {
    match hull.len() {
        0 => f32::INFINITY,
        1 => {
            let (dx, dy) = (p.0 - hull[0].0, p.1 - hull[0].1);
            dx * dx + dy * dy
        }
        n => {
            let mut inside = n >= 3;
            let mut best = f32::INFINITY;
            for i in 0..n {
                let a = hull[i];
                let b = hull[(i + 1) % n];
                let (ex, ey) = (b.0 - a.0, b.1 - a.1);
                let (px, py) = (p.0 - a.0, p.1 - a.1);
                if ex * py - ey * px < 0.0 {
                    inside = false;
                }
                let len_sq = ex * ex + ey * ey;
                let t =
                    if len_sq > 0.0 { ((px * ex + py * ey) / len_sq).clamp(0.0, 1.0) } else { 0.0 };
                let (dx, dy) = (px - t * ex, py - t * ey);
                best = best.min(dx * dx + dy * dy);
            }
            if inside {
                0.0
            } else {
                best
            }
        }
    }
}

/// A 64-bit hash of everything the comparison reads, a word at a time (xor, multiply, rotate;
/// a final avalanche). It only orders the two templates of a comparison canonically, so it
/// needs to be deterministic, not cryptographic; templates read back from their bytes
/// recompute it (a byte-wise FNV here was a tenth of a 1:N search's time).
pub(crate) fn content_hash(t: &MccTemplate) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ t.cylinders.len() as u64;
    let mut eat = |v: u64| h = (h ^ v).wrapping_mul(K).rotate_left(29);
    for (i, c) in t.cylinders.iter().enumerate() {
        c.bits.iter().for_each(|&w| eat(w));
        eat(c.mask);
        eat(u64::from(c.angle));
        eat(u64::from(t.xs[i].to_bits()) << 32 | u64::from(t.ys[i].to_bits()));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}
