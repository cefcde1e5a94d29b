//! Fingerprint evaluation harness on synthetic prints (issue 6):
//!
//! 1. renders `--fingers` synthetic fingers × `--impressions` impressions (datasets::finger),
//!    extracts minutiae with NIST mindtct and caches the templates (ISO records) in `--out`;
//! 2. verification accuracy of MCC (ours) and Bozorth3 (NIST) on the first `--accuracy-fingers`
//!    fingers: genuine pairs (impression 0 vs every later impression) and `--impostors` random
//!    pairs of different fingers → EER, FNMR at FMR 1e-3 / 1e-4, a DET plot (PNG);
//! 3. comparisons per second on one thread, MCC and Bozorth3 on the same pairs, same process;
//! 4. 1:N pre-selection over all fingers (gallery: impression 0; probes: impression 1 of
//!    `--probes` fingers): hit rate against penetration for the MCC-LSH index, and time per probe
//!    with and without pre-selection (MCC on the candidates vs MCC on every finger).
//! 5. writes the MCC impostor scores' calibration table for the service (`--calibration`).
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example finger_eval -- --fingers 10000 --out target/finger-eval
//! ```
//! Results: `<out>/results.json`, `<out>/det.png`, `<out>/preselection.json`.

use biomatch_core::metrics::{det_curve, eer, fnmr_at_fmr};
use biomatch_core::{CalibrationTable, ModelId};
use biomatch_datasets::det_plot::{det_png, DetCurve};
use biomatch_datasets::finger::FingerSynthConfig;
use biomatch_fingerprint::index::{FingerIndex, IndexParams};
use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate};
use biomatch_models::finger::BozorthTemplate;
use clap::Parser;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Synthetic fingers (the pre-selection gallery size).
    #[arg(long, default_value_t = 2000)]
    fingers: u64,
    /// Impressions per finger (≥ 2).
    #[arg(long, default_value_t = 2)]
    impressions: u32,
    /// Fingers used for the verification accuracy (genuine and impostor pairs).
    #[arg(long, default_value_t = 2000)]
    accuracy_fingers: u64,
    /// Random impostor pairs.
    #[arg(long, default_value_t = 200_000)]
    impostors: usize,
    /// Probes for the pre-selection experiment.
    #[arg(long, default_value_t = 1000)]
    probes: usize,
    /// Skip this many fingers before taking probes (held-out probes for tuned parameters).
    #[arg(long, default_value_t = 0)]
    probe_skip: usize,
    /// Pairs timed on one thread for the speed comparison.
    #[arg(long, default_value_t = 20_000)]
    speed_pairs: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "target/finger-eval")]
    out: PathBuf,
    /// Write the MCC calibration table (impostor scores) here.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Pre-selection index: hash functions (L) and bits per hash (p); default: the index's own.
    #[arg(long)]
    index_hashes: Option<usize>,
    #[arg(long)]
    index_bits: Option<usize>,
    /// Only the pre-selection experiment (parameter sweeps).
    #[arg(long)]
    only_preselection: bool,
}

/// (finger, impression) of each side of a comparison.
type Pair = ((usize, usize), (usize, usize));

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(a.impressions >= 2, "--impressions must be at least 2");
    std::fs::create_dir_all(&a.out)?;
    let cfg = FingerSynthConfig { seed: a.seed, ..FingerSynthConfig::default() };
    let t0 = Instant::now();
    let (templates, _) = biomatch_benches::finger_cache::image_templates(
        &cfg,
        a.seed,
        a.fingers,
        a.impressions,
        &a.out,
    )?;
    let gen_s = t0.elapsed().as_secs_f64();
    let n = templates.len();
    let fte = templates.iter().flatten().filter(|t| t.is_none()).count();
    let total = templates.iter().map(Vec::len).sum::<usize>();
    let minutiae: Vec<usize> =
        templates.iter().flatten().flatten().map(|t| t.minutiae.len()).collect();
    eprintln!(
        "{n} fingers, {total} impressions, {fte} failures to extract, mean minutiae {:.1} ({gen_s:.0} s)",
        minutiae.iter().sum::<usize>() as f64 / minutiae.len().max(1) as f64
    );

    let params = MccParams::default();
    let t0 = Instant::now();
    let mcc: Vec<Vec<Option<MccTemplate>>> = templates
        .par_iter()
        .map(|f| f.iter().map(|t| t.as_ref().map(|t| MccTemplate::new(t, &params))).collect())
        .collect();
    let mcc_prep_us =
        t0.elapsed().as_secs_f64() * 1e6 / total as f64 * rayon::current_num_threads() as f64;
    if a.only_preselection {
        let pre = preselection(&a, &mcc, &params)?;
        println!("{}", serde_json::to_string_pretty(&pre)?);
        return Ok(());
    }
    let boz: Vec<Vec<Option<BozorthTemplate>>> = templates
        .iter()
        .map(|f| f.iter().map(|t| t.as_ref().and_then(|t| BozorthTemplate::new(t).ok())).collect())
        .collect();

    // ---- verification accuracy ------------------------------------------------------------
    let acc = (a.accuracy_fingers as usize).min(n);
    let mut genuine = Vec::new();
    for f in 0..acc {
        for i in 1..a.impressions as usize {
            genuine.push(((f, 0), (f, i)));
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ 0x1A05);
    let mut impostor = Vec::with_capacity(a.impostors);
    while impostor.len() < a.impostors && acc > 1 {
        let (f, g) = (rng.random_range(0..acc), rng.random_range(0..acc));
        if f != g {
            impostor.push(((f, 0), (g, 1)));
        }
    }
    let pair_ok = |&((f, i), (g, j)): &Pair| templates[f][i].is_some() && templates[g][j].is_some();
    let fte_genuine = genuine.iter().filter(|p| !pair_ok(p)).count();
    genuine.retain(pair_ok);
    impostor.retain(pair_ok);
    let mcc_score = |m: &mut Matcher, &((f, i), (g, j)): &Pair| {
        m.similarity(mcc[f][i].as_ref().unwrap(), mcc[g][j].as_ref().unwrap())
    };
    let par_mcc = |pairs: &[Pair]| -> Vec<f32> {
        pairs.par_iter().map_init(|| Matcher::new(&params), |m, p| mcc_score(m, p)).collect()
    };
    let t0 = Instant::now();
    let (mg, mi) = (par_mcc(&genuine), par_mcc(&impostor));
    eprintln!(
        "MCC: {} genuine, {} impostor scores in {:.1} s",
        mg.len(),
        mi.len(),
        t0.elapsed().as_secs_f64()
    );
    let boz_score = |&((f, i), (g, j)): &Pair| -> f32 {
        match (&boz[f][i], &boz[g][j]) {
            (Some(x), Some(y)) => x.score(y) as f32,
            _ => 0.0,
        }
    };
    let t0 = Instant::now();
    let bg: Vec<f32> = genuine.iter().map(boz_score).collect();
    let bi: Vec<f32> = impostor.iter().map(boz_score).collect();
    eprintln!("Bozorth3: scores in {:.1} s", t0.elapsed().as_secs_f64());

    let summary = |name: &str, g: &[f32], i: &[f32]| {
        json!({
            "matcher": name,
            "genuine_pairs": g.len(),
            "impostor_pairs": i.len(),
            "eer": eer(g, i),
            "fnmr_at_fmr_1e-3": fnmr_at_fmr(g, i, 1e-3),
            "fnmr_at_fmr_1e-4": fnmr_at_fmr(g, i, 1e-4),
            "fnmr_at_fmr_1e-5": fnmr_at_fmr(g, i, 1e-5),
        })
    };
    let acc_json = vec![summary("mcc", &mg, &mi), summary("bozorth3", &bg, &bi)];
    eprintln!("{}", serde_json::to_string_pretty(&acc_json)?);
    let curve = |label: &str, g: &[f32], i: &[f32]| DetCurve {
        label: label.into(),
        points: det_curve(g, i).into_iter().map(|p| (p.fmr, p.fnmr)).collect(),
    };
    let det_path = a.out.join("det.png");
    det_png(
        &det_path,
        &format!(
            "Synthetic prints: {} genuine / {} impostor pairs (mindtct minutiae)",
            mg.len(),
            mi.len()
        ),
        &[curve("MCC (biomatch)", &mg, &mi), curve("Bozorth3 (NIST)", &bg, &bi)],
    )?;

    // ---- speed: same pairs, one thread, same process --------------------------------------
    let mut speed_pairs: Vec<_> = genuine.iter().chain(impostor.iter()).copied().collect();
    speed_pairs.truncate(a.speed_pairs);
    let mut m = Matcher::new(&params);
    let t0 = Instant::now();
    let mut sink = 0.0f32;
    for p in &speed_pairs {
        sink += mcc_score(&mut m, p);
    }
    let mcc_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut bsink = 0.0f32;
    for p in &speed_pairs {
        bsink += boz_score(p);
    }
    let boz_s = t0.elapsed().as_secs_f64();
    let speed = json!({
        "pairs": speed_pairs.len(),
        "threads": 1,
        "mcc_comparisons_per_s": speed_pairs.len() as f64 / mcc_s,
        "bozorth3_comparisons_per_s": speed_pairs.len() as f64 / boz_s,
        "mcc_over_bozorth3": boz_s / mcc_s,
        "mcc_template_prep_us": mcc_prep_us,
        "checksum": sink + bsink,
    });
    eprintln!("{speed}");

    // ---- pre-selection ------------------------------------------------------------------------
    let pre = preselection(&a, &mcc, &params)?;

    let mut cal_json = serde_json::Value::Null;
    if let Some(path) = &a.calibration {
        let mut scores = mi.clone();
        let table = CalibrationTable::from_impostor_scores(ModelId::new("mcc", "1")?, &mut scores)?;
        let mut f = std::fs::File::create(path)?;
        f.write_all(serde_json::to_string_pretty(&table)?.as_bytes())?;
        cal_json = json!({"path": path, "impostor_scores": mi.len(),
            "threshold_fmr_1e-3": table.threshold_for_fmr(1e-3)?, "threshold_fmr_1e-4": table.threshold_for_fmr(1e-4)?});
    }

    let results = json!({
        "machine": biomatch_benches::machine(),
        "synthetic": {"fingers": n, "impressions": a.impressions, "seed": a.seed,
            "failures_to_extract": fte, "genuine_pairs_lost_to_fte": fte_genuine,
            "mean_minutiae": minutiae.iter().sum::<usize>() as f64 / minutiae.len().max(1) as f64,
            "generation_and_extraction_s": gen_s},
        "verification": acc_json,
        "det_png": det_path,
        "speed": speed,
        "preselection": pre,
        "calibration": cal_json,
    });
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

fn preselection(
    a: &Args,
    mcc: &[Vec<Option<MccTemplate>>],
    params: &MccParams,
) -> anyhow::Result<serde_json::Value> {
    let n = mcc.len();
    let gallery: Vec<Option<&MccTemplate>> =
        mcc.iter().map(|f| f[0].as_ref().filter(|t| t.cylinder_count() > 0)).collect();
    let t0 = Instant::now();
    let mut ip = IndexParams::new(biomatch_fingerprint::mcc::BITS_PER_CYLINDER);
    ip.hash_functions = a.index_hashes.unwrap_or(ip.hash_functions);
    ip.bits_per_hash = a.index_bits.unwrap_or(ip.bits_per_hash);
    let mut index = FingerIndex::new(ip)?;
    for (f, t) in gallery.iter().enumerate() {
        if let Some(t) = t {
            index.insert(f as u32, &t.cylinder_vectors())?;
        }
    }
    index.compact();
    let build_s = t0.elapsed().as_secs_f64();
    let live = gallery.iter().filter(|g| g.is_some()).count();
    let probes: Vec<usize> = (0..n)
        .filter(|&f| {
            gallery[f].is_some() && mcc[f][1].as_ref().is_some_and(|t| t.cylinder_count() > 0)
        })
        .skip(a.probe_skip)
        .take(a.probes)
        .collect();
    // Rank of the mate in the index's ordering (None: not returned at all).
    let t0 = Instant::now();
    let ranks: Vec<Option<usize>> = probes
        .iter()
        .map(|&f| {
            let probe = mcc[f][1].as_ref().unwrap().cylinder_vectors();
            let hits = index.search(&probe, live).expect("probe vectors have the index's length");
            hits.iter().position(|&(id, _)| id as usize == f)
        })
        .collect();
    let index_full_ms = t0.elapsed().as_secs_f64() * 1e3 / probes.len() as f64;
    let penetrations = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];
    let curve: Vec<serde_json::Value> = penetrations
        .iter()
        .map(|&p| {
            let k = ((p * live as f64).ceil() as usize).max(1);
            let hit = ranks.iter().filter(|r| r.is_some_and(|r| r < k)).count();
            json!({"penetration": p, "candidates": k, "hit_rate": hit as f64 / probes.len() as f64})
        })
        .collect();

    // Time per probe, one thread: exhaustive MCC vs index + MCC on 5 % of the gallery.
    let k5 = ((0.05 * live as f64).ceil() as usize).max(1);
    let timed: Vec<usize> = probes.iter().copied().take(100).collect();
    let mut m = Matcher::new(params);
    let t0 = Instant::now();
    let mut exhaustive_rank1 = 0;
    for &f in &timed {
        let p = mcc[f][1].as_ref().unwrap();
        let best = gallery
            .iter()
            .enumerate()
            .filter_map(|(g, t)| t.map(|t| (g, m.similarity(p, t))))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        exhaustive_rank1 += usize::from(best.is_some_and(|b| b.0 == f));
    }
    let exhaustive_ms = t0.elapsed().as_secs_f64() * 1e3 / timed.len() as f64;
    let t0 = Instant::now();
    let mut pre_rank1 = 0;
    for &f in &timed {
        let p = mcc[f][1].as_ref().unwrap();
        let cands = index.search(&p.cylinder_vectors(), k5).expect("valid probe");
        let best = cands
            .iter()
            .map(|&(g, _)| (g as usize, m.similarity(p, gallery[g as usize].unwrap())))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        pre_rank1 += usize::from(best.is_some_and(|b| b.0 == f));
    }
    let pre_ms = t0.elapsed().as_secs_f64() * 1e3 / timed.len() as f64;
    let out = json!({
        "gallery_fingers": live,
        "probes": probes.len(),
        "index_params": index.params(),
        "index_build_s": build_s,
        "index_memory_bytes_per_finger": index.memory_bytes() as f64 / live as f64,
        "index_full_ranking_ms_per_probe": index_full_ms,
        "hit_rate_vs_penetration": curve,
        "timed_probes": timed.len(),
        "exhaustive_mcc_ms_per_probe": exhaustive_ms,
        "exhaustive_rank1_rate": exhaustive_rank1 as f64 / timed.len() as f64,
        "preselected_5pct_ms_per_probe": pre_ms,
        "preselected_5pct_rank1_rate": pre_rank1 as f64 / timed.len() as f64,
        "speedup": exhaustive_ms / pre_ms,
    });
    eprintln!("{out}");
    std::fs::write(a.out.join("preselection.json"), serde_json::to_string_pretty(&out)?)?;
    Ok(out)
}
