//! MCC parameter tuning on a template cache of `benches/examples/finger_eval.rs` (real mindtct
//! output on synthetic prints).
//!
//! `cargo run --release -p biomatch-fingerprint --example mcc_tune -- CACHE [key=value ...]`
//!
//! Keys: `from`, `to` (finger range, default 0..2000), `impostors` (default 100000), `threads`
//! (default 1; comparisons/s are always measured on one thread), `seed`, `angle` (`neg`: mirror
//! the directions, `flip`: add 180°, for convention checks), and every [`MccParams`] field by name
//! (`radius`, `sigma_s`, `sigma_d`, `mu_psi`, `omega`, `min_valid_cells`, `min_neighbours`,
//! `max_minutiae`, `delta_theta` (degrees), `min_matchable_cells`, `min_np`, `max_np`, `mu_p`,
//! `tau_p`, `max_relax_pairs`, `relax_iterations`, `relax_weight`, `rho1_mu`, `rho1_tau`,
//! `rho2_mu` (degrees), `rho2_tau`, `rho3_mu` (degrees), `rho3_tau`), or `paper` (start from
//! [`MccParams::paper`]). Genuine pairs: impression 0 against impression 1 of each finger;
//! impostors: impression 0 of one finger against impression 1 of another, at random.

use std::time::Instant;

use biomatch_core::finger::FingerTemplate;
use biomatch_core::metrics::{eer, fnmr_at_fmr};
use biomatch_fingerprint::iso::parse_iso;
use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate};
use biomatch_testkit::SplitMix64;

type Cache = Vec<Vec<Option<FingerTemplate>>>;

fn load(path: &str) -> Cache {
    let b = std::fs::read(path).expect("read cache");
    assert!(b.len() >= 28 && &b[..8] == b"BMFEVAL1", "not a template cache");
    let fingers = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    let impressions = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
    let mut pos = 28;
    let mut out = Vec::with_capacity(fingers as usize);
    for _ in 0..fingers {
        let mut f = Vec::new();
        for _ in 0..impressions {
            let len = u32::from_le_bytes(b[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            pos += 4;
            let rec = &b[pos..pos + len];
            pos += len;
            f.push(if len == 0 { None } else { parse_iso(rec).ok() });
        }
        out.push(f);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().expect("usage: mcc_tune CACHE [key=value ...]");
    let mut p = MccParams::default();
    let (mut from, mut to, mut impostors, mut threads, mut seed) = (0, 2000, 100_000, 1, 7u64);
    let mut angle = String::new();
    let mut worst = 0usize;
    let mut border = -1.0f32;
    for kv in &args[1..] {
        if kv == "paper" {
            p = MccParams::paper();
            continue;
        }
        let (k, v) = kv.split_once('=').expect("key=value");
        let f = || v.parse::<f32>().expect("number");
        let u = || v.parse::<usize>().expect("integer");
        match k {
            "from" => from = u(),
            "to" => to = u(),
            "impostors" => impostors = u(),
            "threads" => threads = u(),
            "seed" => seed = u() as u64,
            "angle" => angle = v.to_string(),
            "worst" => worst = u(),
            "border" => border = f(),
            "radius" => p.radius = f(),
            "sigma_s" => p.sigma_s = f(),
            "sigma_d" => p.sigma_d = f(),
            "mu_psi" => p.mu_psi = f(),
            "omega" => p.omega = f(),
            "min_valid_cells" => p.min_valid_cells = f(),
            "min_neighbours" => p.min_neighbours = u(),
            "max_minutiae" => p.max_minutiae = u(),
            "delta_theta" => p.delta_theta = f().to_radians(),
            "min_matchable_cells" => p.min_matchable_cells = f(),
            "min_np" => p.min_np = u(),
            "max_np" => p.max_np = u(),
            "mu_p" => p.mu_p = f(),
            "tau_p" => p.tau_p = f(),
            "max_relax_pairs" => p.max_relax_pairs = u(),
            "relax_iterations" => p.relax_iterations = u(),
            "relax_weight" => p.relax_weight = f(),
            "rho1_mu" => p.rho_distance.0 = f(),
            "rho1_tau" => p.rho_distance.1 = f(),
            "rho2_mu" => p.rho_direction.0 = f().to_radians(),
            "rho2_tau" => p.rho_direction.1 = f(),
            "rho3_mu" => p.rho_radial.0 = f().to_radians(),
            "rho3_tau" => p.rho_radial.1 = f(),
            _ => panic!("unknown key {k}"),
        }
    }
    let cache = load(path);
    let to = to.min(cache.len());
    let mut raw: Vec<[Option<FingerTemplate>; 2]> =
        cache[from..to].iter().map(|f| [f[0].clone(), f[1].clone()]).collect();
    if !angle.is_empty() {
        for t in raw.iter_mut().flatten().flatten() {
            for m in &mut t.minutiae {
                m.angle = match angle.as_str() {
                    "neg" => m.angle.wrapping_neg(),
                    "flip" => m.angle.wrapping_add(128),
                    a => panic!("angle={a}?"),
                };
            }
        }
    }
    if border >= 0.0 {
        for t in raw.iter_mut().flatten().flatten() {
            let pts: Vec<(f32, f32)> =
                t.minutiae.iter().map(|m| (f32::from(m.x), f32::from(m.y))).collect();
            let hull = hull(&pts);
            let keep: Vec<bool> = pts.iter().map(|&p| edge_distance(&hull, p) >= border).collect();
            let mut k = keep.iter();
            t.minutiae.retain(|_| *k.next().expect("same length"));
        }
    }
    let t0 = Instant::now();
    let mcc: Vec<[Option<MccTemplate>; 2]> = raw
        .iter()
        .map(|f| [0, 1].map(|i| f[i].as_ref().map(|t| MccTemplate::new(t, &p))))
        .collect();
    let prep_us = t0.elapsed().as_secs_f64() * 1e6 / (2 * mcc.len()) as f64;
    let n = mcc.len();
    let ok = |f: usize, i: usize| mcc[f][i].is_some();
    let genuine: Vec<(usize, usize)> =
        (0..n).filter(|&f| ok(f, 0) && ok(f, 1)).map(|f| (f, f)).collect();
    let mut rng = SplitMix64::new(seed);
    let mut imp = Vec::with_capacity(impostors);
    while imp.len() < impostors {
        let (f, g) = (rng.below(n), rng.below(n));
        if f != g && ok(f, 0) && ok(g, 1) {
            imp.push((f, g));
        }
    }
    let score = |m: &mut Matcher, &(f, g): &(usize, usize)| {
        m.similarity(mcc[f][0].as_ref().expect("ok"), mcc[g][1].as_ref().expect("ok"))
    };
    let run = |pairs: &[(usize, usize)]| -> Vec<f32> {
        let chunk = pairs.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            let hs: Vec<_> = pairs
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        let mut m = Matcher::new(&p);
                        c.iter().map(|x| score(&mut m, x)).collect::<Vec<f32>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().expect("thread")).collect()
        })
    };
    let gs = run(&genuine);
    let is = run(&imp);
    // Speed: one thread, the first 20 000 impostor pairs.
    let mut m = Matcher::new(&p);
    let speed_pairs = &imp[..imp.len().min(20_000)];
    let t0 = Instant::now();
    let mut sink = 0.0;
    for x in speed_pairs {
        sink += score(&mut m, x);
    }
    let per_s = speed_pairs.len() as f64 / t0.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    if worst > 0 {
        let mut order: Vec<usize> = (0..gs.len()).collect();
        order.sort_by(|&x, &y| gs[x].total_cmp(&gs[y]));
        let mut imp_sorted = is.clone();
        imp_sorted.sort_by(|x, y| y.total_cmp(x));
        println!("impostor score at rank 1e-3: {:.4}", imp_sorted[is.len() / 1000]);
        for &x in order.iter().take(worst) {
            let f = genuine[x].0;
            let m = |i: usize| raw[f][i].as_ref().map_or(0, |t| t.minutiae.len());
            let c = |i: usize| mcc[f][i].as_ref().map_or(0, |t| t.cylinder_count());
            println!(
                "finger {:5}: score {:.4}  minutiae {}/{}  cylinders {}/{}",
                from + f,
                gs[x],
                m(0),
                m(1),
                c(0),
                c(1)
            );
        }
    }
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
    let cyl = mcc.iter().flatten().flatten().map(|t| t.cylinder_count()).sum::<usize>() as f64
        / mcc.iter().flatten().flatten().count() as f64;
    let mins = raw.iter().flatten().flatten().map(|t| t.minutiae.len()).sum::<usize>() as f64
        / raw.iter().flatten().flatten().count() as f64;
    let fm = |x: f64| fnmr_at_fmr(&gs, &is, x).map_or("-".into(), |v| format!("{v:.4}"));
    let extra: Vec<&String> = args[1..].iter().collect();
    println!(
        "EER {:.4}  FNMR@1e-3 {}  FNMR@1e-4 {}  | gen {:.3} imp {:.4}  | {} gen {} imp  | {mins:.1} min {cyl:.1} cyl  prep {prep_us:.0} us  {per_s:.0}/s  | {}",
        eer(&gs, &is),
        fm(1e-3),
        fm(1e-4),
        mean(&gs),
        mean(&is),
        gs.len(),
        is.len(),
        extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
    );
}

/// Convex hull (monotone chain).
fn hull(pts: &[(f32, f32)]) -> Vec<(f32, f32)> {
    let mut p = pts.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross = |o: (f32, f32), a: (f32, f32), b: (f32, f32)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut h: Vec<(f32, f32)> = Vec::new();
    for &q in &p {
        while h.len() >= 2 && cross(h[h.len() - 2], h[h.len() - 1], q) <= 0.0 {
            h.pop();
        }
        h.push(q);
    }
    let lower = h.len() + 1;
    for &q in p.iter().rev().skip(1) {
        while h.len() >= lower && cross(h[h.len() - 2], h[h.len() - 1], q) <= 0.0 {
            h.pop();
        }
        h.push(q);
    }
    h.pop();
    h
}

/// Distance from `p` to the nearest edge of the polygon `h`.
fn edge_distance(h: &[(f32, f32)], p: (f32, f32)) -> f32 {
    let n = h.len();
    let mut best = f32::INFINITY;
    for i in 0..n {
        let (a, b) = (h[i], h[(i + 1) % n]);
        let (ex, ey, px, py) = (b.0 - a.0, b.1 - a.1, p.0 - a.0, p.1 - a.1);
        let l = ex * ex + ey * ey;
        let t = if l > 0.0 { ((px * ex + py * ey) / l).clamp(0.0, 1.0) } else { 0.0 };
        let (dx, dy) = (px - t * ex, py - t * ey);
        best = best.min((dx * dx + dy * dy).sqrt());
    }
    best
}
