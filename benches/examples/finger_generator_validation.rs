//! Validation of the minutiae-level finger generator (`datasets::finger::fast`, issue 12) against
//! the image pipeline it stands in for:
//!
//! (a) images: `datasets::finger` master → impressions → NIST mindtct → MCC;
//! (b) minutiae: `datasets::finger::fast` master → impressions (templates) → MCC;
//!
//! on the same `--fingers` finger indices × 2 impressions and the same seed. Reports minutiae
//! counts (mean, sd, KS distance), MCC genuine (impression 0 vs 1) and impostor (random pairs of
//! different fingers) score distributions (KS distances), EER and FNMR of each, ground-truth
//! master statistics (image master skeleton minutiae vs fast master minutiae), and the generation
//! throughput of each pipeline; a markdown table on stdout, then one JSON line. The image
//! pipeline's templates are cached in `--out` (the `finger_eval` cache format).
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example finger_generator_validation -- --fingers 1000
//! ```
//! `--config FILE` reads a (partial) `FastFingerConfig` as JSON: how the defaults were fitted.

use biomatch_core::finger::FingerTemplate;
use biomatch_core::metrics::{det_curve, eer, fnmr_at_fmr};
use biomatch_datasets::det_plot::{det_png, DetCurve};
use biomatch_datasets::finger::fast::{fast_impression, fast_master, FastFingerConfig};
use biomatch_datasets::finger::{impression, master, FingerSynthConfig};
use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate};
use biomatch_models::finger::FingerExtractor;
use clap::Parser;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Fingers in each pipeline (2 impressions each).
    #[arg(long, default_value_t = 1000)]
    fingers: u64,
    /// Random impostor pairs (the same pairs for both pipelines).
    #[arg(long, default_value_t = 100_000)]
    impostors: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fingers of the minutiae-level throughput run (master + 2 impressions each).
    #[arg(long, default_value_t = 1_000_000)]
    throughput_fingers: u64,
    /// Fingers of the image pipeline timed when its templates come from the cache.
    #[arg(long, default_value_t = 16)]
    image_throughput_fingers: u64,
    /// Image masters whose skeleton minutiae are compared with the fast masters' (0 = skip).
    #[arg(long, default_value_t = 100)]
    master_truth: u64,
    /// A (partial) FastFingerConfig as JSON; its seed and canvas are replaced by the run's.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "target/finger-generator-validation")]
    out: PathBuf,
    /// Skip the throughput run and the DET plot (parameter fitting).
    #[arg(long)]
    quick: bool,
}

/// Templates per finger (2 impressions); `None`: failure to extract.
type Templates = biomatch_benches::finger_cache::FingerTemplates;

/// The extractor refuses fewer minutiae than this (`FingerLimits::min_minutiae`).
const MIN_MINUTIAE: usize = 8;

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.out)?;
    let synth = FingerSynthConfig { seed: a.seed, ..FingerSynthConfig::default() };
    let mut fast_cfg = match &a.config {
        Some(p) => serde_json::from_slice::<FastFingerConfig>(&std::fs::read(p)?)?,
        None => FastFingerConfig::default(),
    };
    fast_cfg.synth = synth.clone();
    let threads = rayon::current_num_threads();

    // ---- (a) image pipeline ---------------------------------------------------------------
    let (image, image_fps) =
        biomatch_benches::finger_cache::image_templates(&synth, a.seed, a.fingers, 2, &a.out)?;
    let n = image.len();

    // ---- (b) minutiae-level pipeline ------------------------------------------------------
    let t0 = Instant::now();
    let fast: Templates = (0..a.fingers)
        .into_par_iter()
        .map(|f| {
            let m = fast_master(&fast_cfg, f);
            (0..2)
                .map(|i| Some(fast_impression(&fast_cfg, &m, f, i)))
                .map(|t| t.filter(|t| t.minutiae.len() >= MIN_MINUTIAE))
                .collect()
        })
        .collect();
    let fast_small_s = t0.elapsed().as_secs_f64();

    // ---- scores ---------------------------------------------------------------------------
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ 0x6E4);
    let mut impostor_pairs = Vec::with_capacity(a.impostors);
    while impostor_pairs.len() < a.impostors && n > 1 {
        let (f, g) = (rng.random_range(0..n), rng.random_range(0..n));
        if f != g {
            impostor_pairs.push((f, g));
        }
    }
    let params = MccParams::default();
    let img = Scored::new("images + mindtct", &image, &impostor_pairs, &params);
    let fst = Scored::new("minutiae-level", &fast, &impostor_pairs, &params);

    // ---- ground truth of the masters --------------------------------------------------------
    let truth = (a.master_truth > 0).then(|| master_truth(&a, &synth, &fast_cfg));

    // ---- throughput -----------------------------------------------------------------------
    let image_fps = match image_fps {
        Some(v) => v,
        None => image_throughput(&synth, a.image_throughput_fingers),
    };
    let (fast_fps, fast_big_s, fast_big_n) = if a.quick {
        (a.fingers as f64 / fast_small_s, fast_small_s, a.fingers)
    } else {
        let t0 = Instant::now();
        let minutiae: u64 = (0..a.throughput_fingers)
            .into_par_iter()
            .map(|f| {
                // Other finger indices than the validated ones: a fresh population.
                let f = f + (1 << 40);
                let m = fast_master(&fast_cfg, f);
                (0..2)
                    .map(|i| fast_impression(&fast_cfg, &m, f, i).minutiae.len() as u64)
                    .sum::<u64>()
            })
            .sum();
        let s = t0.elapsed().as_secs_f64();
        anyhow::ensure!(minutiae > 0, "no minutiae generated");
        (a.throughput_fingers as f64 / s, s, a.throughput_fingers)
    };

    // ---- report ---------------------------------------------------------------------------
    let ks_counts = ks(&img.counts, &fst.counts);
    let ks_gen = ks(&img.genuine, &fst.genuine);
    let ks_imp = ks(&img.impostor, &fst.impostor);
    let ks_quality = ks(&img.quality, &fst.quality);
    let ks_nn = ks(&img.nn, &fst.nn);
    let ks_bif = ks(&img.bif, &fst.bif);
    let machine = biomatch_benches::machine();
    println!("| | images + mindtct | minutiae-level | KS distance |");
    println!("|---|---|---|---|");
    let row = |name: &str, x: &[f32], y: &[f32], k: f64| {
        println!(
            "| {name} (mean ± sd) | {:.3} ± {:.3} | {:.3} ± {:.3} | {k:.3} |",
            mean(x),
            sd(x),
            mean(y),
            sd(y)
        );
    };
    row("minutiae per impression", &img.counts, &fst.counts, ks_counts);
    row("MCC genuine score", &img.genuine, &fst.genuine, ks_gen);
    row("MCC impostor score", &img.impostor, &fst.impostor, ks_imp);
    row("bifurcation fraction per impression", &img.bif, &fst.bif, ks_bif);
    row("minutia quality", &img.quality, &fst.quality, ks_quality);
    row("nearest-neighbour distance, px", &img.nn, &fst.nn, ks_nn);
    println!(
        "| failures to extract (< {MIN_MINUTIAE} minutiae) | {} | {} | |",
        img.failures, fst.failures
    );
    println!(
        "| genuine / impostor pairs | {} / {} | {} / {} | |",
        img.genuine.len(),
        img.impostor.len(),
        fst.genuine.len(),
        fst.impostor.len()
    );
    println!("| MCC EER | {:.2} % | {:.2} % | |", 100.0 * img.eer(), 100.0 * fst.eer());
    let pct = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:.2} %", 100.0 * v));
    println!(
        "| MCC FNMR @ FMR 1e-3 | {} | {} | |",
        pct(fnmr_at_fmr(&img.genuine, &img.impostor, 1e-3)),
        pct(fnmr_at_fmr(&fst.genuine, &fst.impostor, 1e-3))
    );
    println!(
        "| generation, fingers/s (master + 2 impressions, {threads} threads) | {image_fps:.1} | {fast_fps:.0} ({fast_big_n} fingers in {fast_big_s:.1} s) | |"
    );
    if let Some(t) = &truth {
        println!("\nmaster ground truth ({} fingers): {t}", a.master_truth);
    }

    let det_path = a.out.join("det.png");
    if !a.quick {
        let curve = |label: &str, s: &Scored| DetCurve {
            label: label.into(),
            points: det_curve(&s.genuine, &s.impostor)
                .into_iter()
                .map(|p| (p.fmr, p.fnmr))
                .collect(),
        };
        det_png(
            &det_path,
            &format!(
                "MCC on {} synthetic fingers × 2: image pipeline vs minutiae-level generator",
                a.fingers
            ),
            &[curve("images + mindtct", &img), curve("minutiae-level generator", &fst)],
        )?;
    }
    let summary = |s: &Scored| {
        json!({
            "mean_minutiae": mean(&s.counts), "sd_minutiae": sd(&s.counts),
            "failures_to_extract": s.failures,
            "genuine_pairs": s.genuine.len(), "impostor_pairs": s.impostor.len(),
            "mean_genuine": mean(&s.genuine), "mean_impostor": mean(&s.impostor),
            "eer": s.eer(),
            "fnmr_at_fmr_1e-3": fnmr_at_fmr(&s.genuine, &s.impostor, 1e-3),
            "fnmr_at_fmr_1e-4": fnmr_at_fmr(&s.genuine, &s.impostor, 1e-4),
            "bifurcation_fraction": mean(&s.bif), "mean_quality": mean(&s.quality),
            "median_nn_px": median(&s.nn),
            "deciles": {"minutiae": deciles(&s.counts), "genuine": deciles(&s.genuine),
                "impostor": deciles(&s.impostor), "quality": deciles(&s.quality)},
        })
    };
    let out = json!({
        "machine": machine, "threads": threads, "fingers": n, "seed": a.seed,
        "fast_generator_version": biomatch_datasets::finger::fast::FAST_GENERATOR_VERSION,
        "images": summary(&img), "minutiae_level": summary(&fst),
        "ks": {"minutiae_count": ks_counts, "genuine": ks_gen, "impostor": ks_imp,
               "bifurcation_fraction": ks_bif, "quality": ks_quality, "nearest_neighbour": ks_nn},
        "throughput_fingers_per_s": {"images": image_fps, "minutiae_level": fast_fps,
            "minutiae_level_run": {"fingers": fast_big_n, "seconds": fast_big_s}},
        "master_truth": truth,
        "det_png": (!a.quick).then_some(det_path),
        "config": fast_cfg,
    });
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&out)?)?;
    println!("{out}");
    Ok(())
}

/// Statistics and MCC scores of one pipeline.
struct Scored {
    counts: Vec<f32>,
    bif: Vec<f32>,
    quality: Vec<f32>,
    /// Nearest-neighbour distance of each minutia (impression 0).
    nn: Vec<f32>,
    failures: usize,
    genuine: Vec<f32>,
    impostor: Vec<f32>,
}

impl Scored {
    fn new(name: &str, t: &Templates, impostors: &[(usize, usize)], params: &MccParams) -> Self {
        let all: Vec<&FingerTemplate> = t.iter().flatten().flatten().collect();
        let counts = all.iter().map(|t| t.minutiae.len() as f32).collect();
        let bif = all
            .iter()
            .map(|t| {
                let b = t
                    .minutiae
                    .iter()
                    .filter(|m| m.kind == biomatch_core::finger::MinutiaKind::Bifurcation)
                    .count();
                b as f32 / t.minutiae.len() as f32
            })
            .collect();
        let quality =
            all.iter().flat_map(|t| t.minutiae.iter().map(|m| f32::from(m.quality))).collect();
        let nn = t
            .iter()
            .filter_map(|f| f[0].as_ref())
            .flat_map(|t| {
                t.minutiae.iter().enumerate().map(|(i, a)| {
                    t.minutiae
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, b)| {
                            let dx = f32::from(a.x) - f32::from(b.x);
                            let dy = f32::from(a.y) - f32::from(b.y);
                            (dx * dx + dy * dy).sqrt()
                        })
                        .fold(f32::INFINITY, f32::min)
                })
            })
            .filter(|d| d.is_finite())
            .collect();
        let failures = t.iter().flatten().filter(|t| t.is_none()).count();
        let mcc: Vec<Vec<Option<MccTemplate>>> = t
            .par_iter()
            .map(|f| f.iter().map(|t| t.as_ref().map(|t| MccTemplate::new(t, params))).collect())
            .collect();
        let score = |m: &mut Matcher, (f, i): (usize, usize), (g, j): (usize, usize)| match (
            &mcc[f][i], &mcc[g][j],
        ) {
            (Some(a), Some(b)) => Some(m.similarity(a, b)),
            _ => None,
        };
        let t0 = Instant::now();
        let genuine: Vec<f32> = (0..t.len())
            .into_par_iter()
            .map_init(|| Matcher::new(params), |m, f| score(m, (f, 0), (f, 1)))
            .flatten()
            .collect();
        let impostor: Vec<f32> = impostors
            .par_iter()
            .map_init(|| Matcher::new(params), |m, &(f, g)| score(m, (f, 0), (g, 1)))
            .flatten()
            .collect();
        eprintln!(
            "{name}: {} genuine, {} impostor scores in {:.1} s",
            genuine.len(),
            impostor.len(),
            t0.elapsed().as_secs_f64()
        );
        Self { counts, bif, quality, nn, failures, genuine, impostor }
    }

    fn eer(&self) -> f64 {
        eer(&self.genuine, &self.impostor)
    }
}

/// Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs.
fn ks(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64
}

fn sd(v: &[f32]) -> f64 {
    let m = mean(v);
    (v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// The 10th, 20th, …, 90th percentiles.
fn deciles(v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    v.sort_by(f32::total_cmp);
    (1..10).filter_map(|k| v.get(k * v.len() / 10).copied()).collect()
}

fn median(v: &[f32]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f32::total_cmp);
    v.get(v.len() / 2).map_or(f64::NAN, |&x| f64::from(x))
}

/// Image masters' skeleton minutiae (12 px inside the area) against the fast masters' minutiae
/// (same margin): counts, density and bifurcation fraction.
fn master_truth(
    a: &Args,
    synth: &FingerSynthConfig,
    fast_cfg: &FastFingerConfig,
) -> serde_json::Value {
    let rows: Vec<(f32, f32, f32, f32, f32, f32)> = (0..a.master_truth)
        .into_par_iter()
        .map(|f| {
            let m = master(synth, f);
            let truth = m.minutiae(12.0);
            let area = (0..m.height)
                .flat_map(|y| (0..m.width).map(move |x| (x, y)))
                .filter(|&(x, y)| m.in_area(x as f32, y as f32))
                .count() as f32;
            let bif = truth
                .iter()
                .filter(|x| x.kind == biomatch_datasets::finger::MinutiaKind::Bifurcation)
                .count() as f32;
            let fm = fast_master(fast_cfg, f);
            // The same margin as the skeleton's count: ≥ 12 px inside the area.
            let inner = fm
                .minutiae
                .iter()
                .filter(|p| {
                    [(12.0, 0.0), (-12.0, 0.0), (0.0, 12.0), (0.0, -12.0)]
                        .iter()
                        .all(|(dx, dy)| fm.in_area(p.x + dx, p.y + dy))
                })
                .collect::<Vec<_>>();
            let fbif = inner
                .iter()
                .filter(|p| p.kind == biomatch_core::finger::MinutiaKind::Bifurcation)
                .count() as f32;
            (
                truth.len() as f32,
                area,
                bif,
                inner.len() as f32,
                fbif,
                f32::from(u8::from(fm.class == m.class)),
            )
        })
        .collect();
    let col =
        |k: usize| -> Vec<f32> { rows.iter().map(|r| [r.0, r.1, r.2, r.3, r.4, r.5][k]).collect() };
    let (tc, ar, tb, fc, fb, same) = (col(0), col(1), col(2), col(3), col(4), col(5));
    json!({
        "fingers": rows.len(),
        "image_master_minutiae": {"mean": mean(&tc), "sd": sd(&tc),
            "per_10k_px2": mean(&tc) / mean(&ar) * 1e4, "bifurcation_fraction": tb.iter().sum::<f32>() / tc.iter().sum::<f32>()},
        "fast_master_minutiae": {"mean": mean(&fc), "sd": sd(&fc),
            "per_10k_px2": mean(&fc) / mean(&ar) * 1e4, "bifurcation_fraction": fb.iter().sum::<f32>() / fc.iter().sum::<f32>()},
        "ks_count": ks(&tc, &fc),
        "same_class": mean(&same),
    })
}

/// Image pipeline throughput: masters, 2 impressions and mindtct on each, in parallel.
fn image_throughput(synth: &FingerSynthConfig, fingers: u64) -> f64 {
    let x = FingerExtractor::default();
    let t0 = Instant::now();
    let ok: usize = (0..fingers)
        .into_par_iter()
        .map(|f| {
            let m = master(synth, f);
            (0..2)
                .filter(|&i| {
                    let img = impression(synth, &m, f, i);
                    x.extract_gray(img.width, img.height, &img.pixels, None).is_ok()
                })
                .count()
        })
        .sum();
    let s = t0.elapsed().as_secs_f64();
    eprintln!("image pipeline: {fingers} fingers ({ok} templates) in {s:.1} s");
    fingers as f64 / s
}
