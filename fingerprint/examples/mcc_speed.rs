//! MCC speed: template creation time and 1:1 comparisons per second on one core.
//!
//! `cargo run --release -p biomatch-fingerprint --example mcc_speed [minutiae] [templates]`
//! The comparison picks its instruction set at run time (POPCNT, AVX2 when the CPU has them);
//! `MCC_ISA=portable|popcnt|avx2` forces one.
//! Each impression keeps about 80 % of `minutiae` (default 50, so about 40). For experiments,
//! `MCC_MAX_RELAX_PAIRS` and `MCC_RELAX_ITERATIONS` override those parameters.

use std::hint::black_box;
use std::time::Instant;

use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind, RESOLUTION_500DPI_PPCM};
use biomatch_fingerprint::mcc::{Isa, Matcher, MccParams, MccTemplate};
use biomatch_testkit::SplitMix64;

/// A finger-like minutiae set (loop orientation field, spacing ≥ 10 px) and a distorted copy.
fn finger(rng: &mut SplitMix64, n: usize) -> Vec<(f32, f32, f32)> {
    let core = (rng.uniform(150.0, 250.0), rng.uniform(150.0, 250.0));
    let mut pts: Vec<(f32, f32, f32)> = Vec::new();
    while pts.len() < n {
        let (x, y) = (rng.uniform(50.0, 350.0), rng.uniform(50.0, 450.0));
        if pts.iter().any(|p| (p.0 - x).powi(2) + (p.1 - y).powi(2) < 100.0) {
            continue;
        }
        let o = 0.5 * (core.1 - y).atan2(x - core.0);
        let flip = if rng.next_u64() & 1 == 1 { std::f32::consts::PI } else { 0.0 };
        pts.push((x, y, o + flip));
    }
    pts
}

fn impression(rng: &mut SplitMix64, pts: &[(f32, f32, f32)]) -> FingerTemplate {
    let rot = rng.uniform(-0.3, 0.3);
    let (s, c) = rot.sin_cos();
    let (tx, ty) = (rng.uniform(-20.0, 20.0), rng.uniform(-20.0, 20.0));
    let kept: Vec<(f32, f32, f32)> =
        pts.iter().copied().filter(|_| rng.next_u64() % 10 >= 2).collect();
    let minutiae = kept
        .into_iter()
        .map(|(x, y, th)| {
            let (dx, dy) = (x - 200.0, y - 250.0);
            // Image frame (y down): rotating the print by `rot` counter-clockwise on screen.
            let (x, y) = (200.0 + c * dx + s * dy + tx, 250.0 - s * dx + c * dy + ty);
            Minutia {
                x: x.round().clamp(0.0, 399.0) as u16,
                y: y.round().clamp(0.0, 499.0) as u16,
                angle: Minutia::angle_from_rad(th + rot + rng.uniform(-0.15, 0.15)),
                kind: MinutiaKind::RidgeEnding,
                quality: 60,
            }
        })
        .collect();
    FingerTemplate::new(400, 500, RESOLUTION_500DPI_PPCM, None, 60, minutiae).expect("valid")
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let minutiae = args.first().copied().unwrap_or(50);
    let count = args.get(1).copied().unwrap_or(200);
    let mut params = MccParams::default();
    if let Ok(v) = std::env::var("MCC_MAX_RELAX_PAIRS") {
        params.max_relax_pairs = v.parse().expect("number");
    }
    if let Ok(v) = std::env::var("MCC_RELAX_ITERATIONS") {
        params.relax_iterations = v.parse().expect("number");
    }
    let mut rng = SplitMix64::new(42);
    let fingers: Vec<Vec<(f32, f32, f32)>> =
        (0..count).map(|_| finger(&mut rng, minutiae)).collect();
    let raw: Vec<FingerTemplate> =
        fingers.iter().flat_map(|f| [impression(&mut rng, f), impression(&mut rng, f)]).collect();
    let avg_minutiae =
        raw.iter().map(|t| t.minutiae.len()).sum::<usize>() as f64 / raw.len() as f64;

    let start = Instant::now();
    let mut templates = Vec::new();
    let rounds = 5;
    for _ in 0..rounds {
        templates = raw.iter().map(|t| MccTemplate::new(black_box(t), &params)).collect();
    }
    let create_us = start.elapsed().as_secs_f64() * 1e6 / (rounds * raw.len()) as f64;
    let avg_cyl =
        templates.iter().map(|t| t.cylinder_count()).sum::<usize>() as f64 / templates.len() as f64;

    // `MCC_ISA=portable|popcnt|avx2` forces an instruction set (default: the best detected).
    let mut matcher = match std::env::var("MCC_ISA").as_deref() {
        Ok("portable") => Matcher::with_isa(&params, Isa::Portable),
        Ok("popcnt") => Matcher::with_isa(&params, Isa::Popcnt),
        Ok("avx2") => Matcher::with_isa(&params, Isa::Avx2),
        _ => Some(Matcher::new(&params)),
    }
    .expect("instruction set not supported by this CPU");
    let n = templates.len();
    // Every template against `others` others (genuine pairs are the even/odd neighbours), in
    // rounds; the best round is reported (the machine may be shared).
    let others = 100.min(n - 1);
    let (mut genuine, mut impostor, mut n_gen, mut n_imp) = (0.0f64, 0.0f64, 0usize, 0usize);
    for i in 0..n {
        for k in 1..=others {
            let j = (i + k) % n;
            let s = f64::from(matcher.similarity(&templates[i], &templates[j]));
            if i / 2 == j / 2 {
                genuine += s;
                n_gen += 1;
            } else {
                impostor += s;
                n_imp += 1;
            }
        }
    }
    let mut rounds_us: Vec<f64> = Vec::new();
    let mut cpu_us: Vec<f64> = Vec::new();
    let mut sink = 0.0f32;
    for _ in 0..7 {
        let start = Instant::now();
        let cpu_start = on_cpu_ns();
        for i in 0..n {
            for k in 1..=others {
                let j = (i + k) % n;
                sink += matcher.similarity(black_box(&templates[i]), black_box(&templates[j]));
            }
        }
        rounds_us.push(start.elapsed().as_secs_f64() * 1e6 / (n * others) as f64);
        if let (Some(a), Some(b)) = (cpu_start, on_cpu_ns()) {
            cpu_us.push((b - a) as f64 / 1e3 / (n * others) as f64);
        }
    }
    cpu_us.sort_by(f64::total_cmp);
    black_box(sink);
    rounds_us.sort_by(f64::total_cmp);
    let (best, median) = (rounds_us[0], rounds_us[rounds_us.len() / 2]);
    println!(
        "compiled with popcnt: {}, avx2: {}; comparison instruction set (run-time dispatch): {}",
        cfg!(target_feature = "popcnt"),
        cfg!(target_feature = "avx2"),
        matcher.isa().name()
    );
    println!(
        "templates: {} with {avg_minutiae:.1} minutiae, {avg_cyl:.1} valid cylinders on average",
        templates.len()
    );
    println!("template creation: {create_us:.1} µs per template");
    println!(
        "comparison: best round {best:.2} µs = {:.0} per second on one core (median round {median:.2} µs = {:.0}/s)",
        1e6 / best,
        1e6 / median
    );
    if let Some(cpu) = cpu_us.first() {
        println!(
            "comparison, on-CPU time of the best round: {cpu:.2} µs = {:.0} per second",
            1e6 / cpu
        );
    }
    println!(
        "mean score: genuine {:.3}, impostor {:.3}",
        genuine / n_gen.max(1) as f64,
        impostor / n_imp.max(1) as f64
    );
}

/// Time this thread has spent on a CPU, from `/proc/thread-self/schedstat` (Linux), so that a
/// shared machine's preemption does not count.
fn on_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
