//! What enroll-if-unique costs next to a plain enrollment, in one run on one store: the engine
//! in-process (no HTTP), a store in a temporary directory (real fsyncs), a background gallery
//! of random unit vectors, then the same number of new (unique) subjects enrolled by
//! `--concurrency` threads, first plainly (`Engine::enroll`), then as enroll-if-unique
//! (`Engine::enroll_if_unique`, exact search). One JSON line per mode on stdout: throughput and
//! latency percentiles.
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example dedup_cost -- \
//!     --gallery 100000 --concurrency 8 --requests 800
//! ```

use anyhow::Result;
use biomatch_core::{CalibrationTable, Modality, ModelId, SubjectId, Template};
use biomatch_engine::{
    DedupParams, Engine, EngineModel, ModelKind, Samples, SearchKind, Settings, UniqueEnrollment,
};
use biomatch_gallery::{Gallery, ModelSpec, Store, StoreOptions};
use biomatch_testkit::SplitMix64;
use clap::Parser;
use std::sync::Arc;
use std::time::Instant;

const DIM: usize = 128;

#[derive(Parser, Debug)]
struct Args {
    /// Background subjects enrolled before the timed runs.
    #[arg(long, default_value_t = 100_000)]
    gallery: usize,
    /// Enrolling threads.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Enrollments per mode.
    #[arg(long, default_value_t = 800)]
    requests: usize,
    /// Where the store goes (default: a temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn model() -> ModelId {
    ModelId::new("bench-face", "1").expect("valid model id")
}

fn unit(rng: &mut SplitMix64) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn samples(v: Vec<f32>) -> Result<Samples> {
    Ok(Samples {
        vectors: vec![(Modality::Face, Template::new(model(), DIM, v)?)],
        fingers: Vec::new(),
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("store"));
    let store = Store::open(&dir, StoreOptions::new(vec![ModelSpec { model: model(), dim: DIM }]))?;
    let mut rng = SplitMix64::new(1);
    let mut impostors: Vec<f32> = (0..200_000)
        .map(|_| unit(&mut rng).iter().zip(unit(&mut rng)).map(|(a, b)| a * b).sum())
        .collect();
    let calibration = CalibrationTable::from_impostor_scores(model(), &mut impostors)?;
    let m = EngineModel { id: model(), dim: DIM, kind: ModelKind::Face, calibration };
    let engine = Arc::new(Engine::new(
        Arc::new(Gallery::new(Arc::new(store))),
        None,
        vec![m],
        Settings::default(),
        None,
    ));
    let t = Instant::now();
    for start in (0..args.gallery).step_by(10_000) {
        let items = (start..(start + 10_000).min(args.gallery))
            .map(|i| Ok((SubjectId::new(format!("bg{i}"))?, samples(unit(&mut rng))?)))
            .collect::<Result<Vec<_>>>()?;
        for r in engine.enroll_batch(items, None)? {
            r?;
        }
    }
    eprintln!("{} background subjects in {:.1} s", args.gallery, t.elapsed().as_secs_f64());
    // A strict target: the new subjects are random directions, impostors of everyone.
    let params = DedupParams { target_fpir: 1e-6, max_results: 10, mode: SearchKind::Exact };
    for mode in ["plain", "dedup"] {
        let per = args.requests.div_ceil(args.concurrency);
        let t0 = Instant::now();
        let handles: Vec<_> = (0..args.concurrency)
            .map(|c| {
                let (engine, params) = (engine.clone(), params.clone());
                let mut rng =
                    SplitMix64::new(1000 + c as u64 + if mode == "dedup" { 500 } else { 0 });
                std::thread::spawn(move || -> Result<(Vec<f64>, usize)> {
                    let (mut lat, mut dups) = (Vec::with_capacity(per), 0);
                    for i in 0..per {
                        let id = SubjectId::new(format!("{mode}-{c}-{i}"))?;
                        let s = samples(unit(&mut rng))?;
                        let t = Instant::now();
                        if mode == "plain" {
                            engine.enroll(id, s, false, None)?;
                        } else if let UniqueEnrollment::Duplicate(_) =
                            engine.enroll_if_unique(id, s, &params, false, None)?
                        {
                            dups += 1;
                        }
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok((lat, dups))
                })
            })
            .collect();
        let (mut lat, mut dups) = (Vec::new(), 0);
        for h in handles {
            let (l, d) = h.join().expect("worker")?;
            lat.extend(l);
            dups += d;
        }
        let wall = t0.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({
                "mode": mode, "gallery": args.gallery, "concurrency": args.concurrency,
                "enrollments": lat.len(), "duplicates": dups,
                "per_s": (lat.len() as f64 / wall * 10.0).round() / 10.0,
                "p50_ms": (pct(&lat, 0.5) * 100.0).round() / 100.0,
                "p99_ms": (pct(&lat, 0.99) * 100.0).round() / 100.0,
                "max_ms": (lat[lat.len() - 1] * 100.0).round() / 100.0,
            })
        );
    }
    Ok(())
}
