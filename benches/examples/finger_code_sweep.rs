//! Sweep of fixed-length finger codes (`biomatch_fingerprint::code`) for 1:N pre-selection
//! (issue 12): on minutiae-level synthetic fingers (`datasets::finger::fast`), how often is the
//! mate of a probe finger (impression 1) among the best `penetration · N` gallery fingers
//! (impression 0) by code inner product, per finger and per 2-finger subject (sum of the two
//! fingers' scores)?
//!
//! The code statistics are trained on fingers disjoint from gallery and probes (ids from 10⁹).
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example finger_code_sweep -- --gallery 20000 --probes 1000
//! ```

use biomatch_core::finger::FingerTemplate;
use biomatch_datasets::finger::fast::{fast_impression, fast_master, FastFingerConfig};
use biomatch_fingerprint::code::{CodeModel, PairBins};
use clap::Parser;
use rayon::prelude::*;
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Gallery fingers (even and odd ids pair into subjects for the 2-finger figures).
    #[arg(long, default_value_t = 20_000)]
    gallery: u64,
    #[arg(long, default_value_t = 1000)]
    probes: u64,
    #[arg(long, default_value_t = 4000)]
    train: u64,
    /// Configurations as `d_min,d_max,d_bins,a_bins,b_bins,dim` (dim 0: no projection).
    #[arg(long, num_args = 1.., default_values_t = vec!["12,180,12,16,16,0".to_string(), "12,180,12,16,16,256".to_string(), "12,180,12,16,16,128".to_string()])]
    configs: Vec<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the first configuration's trained model here (the shipped `mpc@1`), then stop.
    #[arg(long)]
    write_model: Option<std::path::PathBuf>,
}

const PENETRATIONS: [f64; 7] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05];

fn templates(cfg: &FastFingerConfig, ids: std::ops::Range<u64>, imp: u32) -> Vec<FingerTemplate> {
    ids.into_par_iter()
        .map(|f| {
            let m = fast_master(cfg, f);
            fast_impression(cfg, &m, f, imp)
        })
        .collect()
}

/// Rank (0 = best) of `mate`'s score among `scores` (ties count against the mate).
fn rank_of(scores: &[f32], mate: usize) -> usize {
    let s = scores[mate];
    scores.iter().enumerate().filter(|&(i, &x)| i != mate && x >= s).count()
}

fn hit_rates(ranks: &[usize], n: usize) -> Vec<(f64, f64)> {
    PENETRATIONS
        .iter()
        .map(|&p| {
            let k = ((p * n as f64).ceil() as usize).max(1);
            (p, ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut cfg = FastFingerConfig::default();
    cfg.synth.seed = a.seed;
    let t0 = std::time::Instant::now();
    let train = templates(&cfg, 1_000_000_000..1_000_000_000 + a.train, 0);
    let gallery = templates(&cfg, 0..a.gallery, 0);
    let probes = templates(&cfg, 0..a.probes, 1);
    eprintln!("generated in {:.1} s", t0.elapsed().as_secs_f64());
    for c in &a.configs {
        let v: Vec<f64> = c.split(',').map(str::parse).collect::<Result<_, _>>()?;
        let bins = PairBins {
            d_min: v[0] as f32,
            d_max: v[1] as f32,
            d_bins: v[2] as usize,
            a_bins: v[3] as usize,
            b_bins: v[4] as usize,
        };
        let dim = v[5] as usize;
        let t = std::time::Instant::now();
        let model =
            CodeModel::train("mpc", "1", bins, dim, 7, &train).map_err(anyhow::Error::msg)?;
        if let Some(path) = &a.write_model {
            std::fs::write(path, serde_json::to_vec(model.spec())?)?;
            eprintln!("wrote {}", path.display());
            return Ok(());
        }
        let g: Vec<Vec<f32>> = gallery.par_iter().map(|t| model.encode(t)).collect();
        let enc_us = t.elapsed().as_secs_f64() * 1e6 / (a.gallery + a.train) as f64;
        let p: Vec<Vec<f32>> = probes.par_iter().map(|t| model.encode(t)).collect();
        // Per-finger scores against the gallery fingers of the same "position" (parity).
        let scores: Vec<Vec<f32>> = p
            .par_iter()
            .map(|q| g.iter().map(|x| x.iter().zip(q).map(|(a, b)| a * b).sum()).collect())
            .collect();
        let mut finger_ranks = Vec::new();
        for (i, s) in scores.iter().enumerate() {
            let par = i % 2;
            let same: Vec<f32> = s.iter().skip(par).step_by(2).copied().collect();
            finger_ranks.push(rank_of(&same, i / 2));
        }
        let mut subject_ranks = Vec::new();
        for sub in 0..(a.probes as usize / 2) {
            let (s0, s1) = (&scores[2 * sub], &scores[2 * sub + 1]);
            let fused: Vec<f32> =
                (0..a.gallery as usize / 2).map(|j| s0[2 * j] + s1[2 * j + 1]).collect();
            subject_ranks.push(rank_of(&fused, sub));
        }
        let mut gen: Vec<f32> = (0..scores.len()).map(|i| scores[i][i]).collect();
        gen.sort_by(f32::total_cmp);
        let imp: Vec<f32> = scores
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.iter()
                    .enumerate()
                    .filter(move |(j, _)| *j != i && j % 2 == i % 2)
                    .map(|(_, &x)| x)
            })
            .collect();
        let im = imp.iter().map(|&x| f64::from(x)).sum::<f64>() / imp.len() as f64;
        let isd = (imp.iter().map(|&x| (f64::from(x) - im).powi(2)).sum::<f64>()
            / imp.len() as f64)
            .sqrt();
        let q = |p: f64| gen[((gen.len() - 1) as f64 * p) as usize];
        eprintln!(
            "{c}: genuine p1 {:.3} p5 {:.3} p10 {:.3} p50 {:.3}; impostor mean {im:.4} sd {isd:.4}",
            q(0.01),
            q(0.05),
            q(0.1),
            q(0.5)
        );
        let pf = hit_rates(&finger_ranks, a.gallery as usize / 2);
        let ps = hit_rates(&subject_ranks, a.gallery as usize / 2);
        println!(
            "{}",
            json!({
                "config": c, "dim": model.dim(), "encode_us": enc_us,
                "finger_hit": pf, "subject2_hit": ps,
                "finger_rank1": finger_ranks.iter().filter(|&&r| r == 0).count() as f64 / finger_ranks.len() as f64,
                "gallery_per_position": a.gallery / 2,
            })
        );
    }
    Ok(())
}
