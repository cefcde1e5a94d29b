//! Sweep of fixed-length finger codes (`biomatch_fingerprint::code`) for 1:N pre-selection
//! (issue 12): on minutiae-level synthetic fingers (`datasets::finger::fast`), how often is the
//! mate of a probe finger (impression 1) among the best `penetration · N` gallery fingers
//! (impression 0) of the same position by code inner product, per finger and per 2-finger
//! subject (sum of the two fingers' scores)? Gallery finger ids `2s` and `2s + 1` are subject
//! `s`'s two positions; `N` is the number of gallery fingers per position (= subjects).
//!
//! The code models are trained on fingers disjoint from gallery and probes (ids from 10⁹).
//!
//! A configuration is `shipped` (the compiled-in model), or a comma-separated list of
//! `key=value`, or `default` (the shipped recipe,
//! `CodeParams::default`, whose values are also the defaults of every key): `d=12:150:10`
//! (d_min:d_max:d_bins), `a=16`, `b=16` (angle bins), `k=1` (minutia-type channels), `qw=0.5`
//! (quality-weight exponent), `pow=0.5`, `std=0|1` (standardise bins), `proj=none|rand|pca|lda`,
//! `dim=256`, `seed=7`; for `pca`: `drop=0`, `eps=0.1`, `alpha=0.5`; for `lda`: `m=512`
//! (principal components before the LDA), `eps=0.1`, `beta=0.5`. Configurations with the same
//! histogram (bins, power, standardisation, seed) share one PCA fit, and LDA configurations that
//! differ only in `dim` or `beta` share one LDA fit. LDA trains on mated pairs: impressions 0 and
//! 1 of the first `--pairs` training fingers.
//!
//! Besides the hit rates it prints, per configuration, the encode time per finger (the gallery's,
//! divided by the number of rayon threads it ran on: run with `RAYON_NUM_THREADS=1` for the time
//! of one core) and the training time; `--quant` adds the figures with the gallery codes stored
//! as fp16, 8- and 4-bit scalar quantised and product quantised (128 × 8 bits for 256
//! dimensions), `--sizes` the figures on smaller galleries (prefixes of this one), `--misses` the
//! missed subjects.
//!
//! ```sh
//! cargo build --release -j1 -p biomatch-benches --example finger_code_sweep
//! RAYON_NUM_THREADS=1 ./target/release/examples/finger_code_sweep --gallery 20000 \
//!     --probes 10000 --train 20000 --configs default proj=pca,eps=1 proj=none,std=1
//! # the shipped model:
//! ./target/release/examples/finger_code_sweep --train 50000 --write-model fingerprint/models/mpc@1.bin
//! ```

use std::collections::HashMap;
use std::time::Instant;

use biomatch_core::finger::FingerTemplate;
use biomatch_datasets::finger::fast::{fast_impression, fast_master, FastFingerConfig};
use biomatch_fingerprint::code::{dot, CodeModel, CodeParams, LdaBasis, PcaBasis, Projection};
use clap::Parser;
use rayon::prelude::*;
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Gallery fingers (even and odd ids pair into subjects for the 2-finger figures).
    #[arg(long, default_value_t = 20_000)]
    gallery: u64,
    #[arg(long, default_value_t = 4000)]
    probes: u64,
    /// Also report on the first N gallery fingers per position for each of these N (the full
    /// gallery is always reported).
    #[arg(long, num_args = 0..)]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 20_000)]
    train: u64,
    /// Mated training pairs for LDA (impressions 0 and 1 of the first training fingers; 0: as
    /// many as training fingers).
    #[arg(long, default_value_t = 0)]
    pairs: u64,
    /// Configurations (see the module docs).
    #[arg(long, num_args = 1.., default_values_t = vec!["default".to_string()])]
    configs: Vec<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also score gallery codes stored as fp16, 8-bit and 4-bit scalar quantised, and product
    /// quantised (2 dimensions per 8-bit code, k-means on the training fingers' codes).
    #[arg(long)]
    quant: bool,
    /// Print the missed subjects at 0.5 % penetration and the misses by minutiae count.
    #[arg(long)]
    misses: bool,
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

/// A parsed configuration.
#[derive(Clone, Debug)]
struct Config {
    text: String,
    params: CodeParams,
    /// `proj=none`.
    identity: bool,
    /// `shipped`: the compiled-in model, not trained here.
    shipped: bool,
}

fn parse_config(text: &str) -> anyhow::Result<Config> {
    let mut p = CodeParams::default();
    let (mut drop, mut eps, mut alpha) = (0usize, 0.1f32, 0.5f32);
    let (mut pca_dims, mut beta) = (512usize, 0.5f32);
    let mut proj = "lda".to_string();
    let shipped = text == "shipped";
    for kv in text.split(',').filter(|s| !s.is_empty() && !["default", "shipped"].contains(s)) {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("{kv}: not key=value"))?;
        match k {
            "d" => {
                let x: Vec<f32> = v.split(':').map(str::parse).collect::<Result<_, _>>()?;
                anyhow::ensure!(x.len() == 3, "d=min:max:bins");
                (p.bins.d_min, p.bins.d_max, p.bins.d_bins) = (x[0], x[1], x[2] as usize);
            }
            "a" => p.bins.a_bins = v.parse()?,
            "b" => p.bins.b_bins = v.parse()?,
            "k" => p.bins.kind_channels = v.parse()?,
            "qw" => p.bins.quality_weight = v.parse()?,
            "pow" => p.power = v.parse()?,
            "std" => p.standardise = v == "1",
            "proj" => proj = v.to_string(),
            "dim" => p.dim = v.parse()?,
            "drop" => drop = v.parse()?,
            "eps" => eps = v.parse()?,
            "alpha" => alpha = v.parse()?,
            "seed" => p.seed = v.parse()?,
            "m" => pca_dims = v.parse()?,
            "beta" => beta = v.parse()?,
            _ => anyhow::bail!("unknown key {k}"),
        }
    }
    let identity = proj == "none";
    p.projection = match proj.as_str() {
        "none" | "rand" => Projection::Random,
        "pca" => Projection::PcaWhiten { drop, eps, alpha },
        "lda" => Projection::Lda { pca_dims, eps, beta },
        _ => anyhow::bail!("proj={proj}"),
    };
    if identity {
        p.dim = 0;
    }
    Ok(Config { text: text.to_string(), params: p, identity, shipped })
}

/// Key of the PCA fit a configuration needs.
fn basis_key(p: &CodeParams) -> String {
    format!("{:?}|{}|{}|{}", p.bins, p.power, p.standardise, p.seed)
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

struct Eval {
    finger_ranks: Vec<usize>,
    subject_ranks: Vec<usize>,
    /// Subject ranks when each finger's score is weighted by `min(probe minutiae, 40) / 40`.
    weighted_ranks: Vec<usize>,
    genuine: Vec<f32>,
    imp_mean: f64,
    imp_sd: f64,
}

/// One probe subject's outcome.
struct Subject {
    /// Ranks of the two fingers' mates, of the subject by the sum and by the weighted sum.
    finger: [usize; 2],
    sum: usize,
    weighted: usize,
    genuine: [f32; 2],
    /// Sum, sum of squares and count of the non-mate scores.
    impostor: (f64, f64, usize),
}

/// Scores every probe subject against the first `n` gallery fingers of the same positions.
fn evaluate(gallery: &[Vec<f32>], probes: &[Vec<f32>], weights: &[f32], n: usize) -> Eval {
    assert!(2 * n <= gallery.len() && probes.len() <= 2 * n);
    let per_subject: Vec<Subject> = (0..probes.len() / 2)
        .into_par_iter()
        .map(|s| {
            let s0: Vec<f32> = (0..n).map(|j| dot(&probes[2 * s], &gallery[2 * j])).collect();
            let s1: Vec<f32> =
                (0..n).map(|j| dot(&probes[2 * s + 1], &gallery[2 * j + 1])).collect();
            let fused: Vec<f32> = s0.iter().zip(&s1).map(|(a, b)| a + b).collect();
            let (w0, w1) = (weights[2 * s], weights[2 * s + 1]);
            let weighted: Vec<f32> = s0.iter().zip(&s1).map(|(a, b)| w0 * a + w1 * b).collect();
            let (mut sum, mut sq, mut cnt) = (0f64, 0f64, 0usize);
            for (j, (&a, &b)) in s0.iter().zip(&s1).enumerate() {
                if j != s {
                    sum += f64::from(a) + f64::from(b);
                    sq += f64::from(a).powi(2) + f64::from(b).powi(2);
                    cnt += 2;
                }
            }
            Subject {
                finger: [rank_of(&s0, s), rank_of(&s1, s)],
                sum: rank_of(&fused, s),
                weighted: rank_of(&weighted, s),
                genuine: [s0[s], s1[s]],
                impostor: (sum, sq, cnt),
            }
        })
        .collect();
    let mut e = Eval {
        finger_ranks: Vec::new(),
        subject_ranks: Vec::new(),
        weighted_ranks: Vec::new(),
        genuine: Vec::new(),
        imp_mean: 0.0,
        imp_sd: 0.0,
    };
    let (mut sum, mut sq, mut cnt) = (0f64, 0f64, 0usize);
    for r in &per_subject {
        e.finger_ranks.extend(r.finger);
        e.subject_ranks.push(r.sum);
        e.weighted_ranks.push(r.weighted);
        e.genuine.extend(r.genuine);
        (sum, sq, cnt) = (sum + r.impostor.0, sq + r.impostor.1, cnt + r.impostor.2);
    }
    e.genuine.sort_by(f32::total_cmp);
    e.imp_mean = sum / cnt as f64;
    e.imp_sd = (sq / cnt as f64 - e.imp_mean * e.imp_mean).max(0.0).sqrt();
    e
}

fn report(config: &str, variant: &str, dim: usize, n: usize, e: &Eval, extra: serde_json::Value) {
    let pf = hit_rates(&e.finger_ranks, n);
    let ps = hit_rates(&e.subject_ranks, n);
    let pw = hit_rates(&e.weighted_ranks, n);
    let q = |p: f64| e.genuine[((e.genuine.len() - 1) as f64 * p) as usize];
    let at = |v: &[(f64, f64)], p: f64| v.iter().find(|x| x.0 == p).map_or(0.0, |x| x.1 * 100.0);
    eprintln!(
        "| {config} | {variant} | {dim} | {n} | {:.1} / {:.1} / {:.1} / {:.1} | {:.2} / {:.2} / {:.2} / {:.2} | {:.2} | {:.3} | {:.3} |",
        at(&pf, 0.001),
        at(&pf, 0.0025),
        at(&pf, 0.005),
        at(&pf, 0.01),
        at(&ps, 0.001),
        at(&ps, 0.0025),
        at(&ps, 0.005),
        at(&ps, 0.01),
        at(&pw, 0.005),
        e.imp_sd,
        q(0.5),
    );
    println!(
        "{}",
        json!({
            "config": config, "variant": variant, "dim": dim, "gallery_per_position": n,
            "finger_hit": pf, "subject2_hit": ps, "subject2_weighted_hit": pw,
            "finger_rank1": e.finger_ranks.iter().filter(|&&r| r == 0).count() as f64 / e.finger_ranks.len() as f64,
            "subject_misses_at_0.5pct": e.subject_ranks.iter().filter(|&&r| r >= ((0.005 * n as f64).ceil() as usize).max(1)).count(),
            "subjects": e.subject_ranks.len(),
            "impostor_mean": e.imp_mean, "impostor_sd": e.imp_sd,
            "genuine_p5": q(0.05), "genuine_p50": q(0.5),
            "extra": extra,
        })
    );
}

/// Per-dimension uniform scalar quantisation with `levels` levels between the gallery's minimum
/// and maximum of each dimension (FAISS `SQ8`/`SQ4`-like), returned dequantised.
fn scalar_quantise(codes: &[Vec<f32>], levels: u32) -> Vec<Vec<f32>> {
    let dim = codes[0].len();
    let mut lo = vec![f32::INFINITY; dim];
    let mut hi = vec![f32::NEG_INFINITY; dim];
    for c in codes {
        for (k, &x) in c.iter().enumerate() {
            lo[k] = lo[k].min(x);
            hi[k] = hi[k].max(x);
        }
    }
    let steps = (levels - 1) as f32;
    codes
        .iter()
        .map(|c| {
            c.iter()
                .enumerate()
                .map(|(k, &x)| {
                    let w = (hi[k] - lo[k]).max(1e-12);
                    let q = ((x - lo[k]) / w * steps).round();
                    lo[k] + q * w / steps
                })
                .collect()
        })
        .collect()
}

/// Product quantisation with 2-dimensional sub-vectors and 256 centroids each (k-means, 12
/// iterations, on `train`), returning `codes` reconstructed.
fn product_quantise(train: &[Vec<f32>], codes: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let dim = codes[0].len();
    let m = dim / 2;
    let centroids: Vec<Vec<[f32; 2]>> = (0..m)
        .into_par_iter()
        .map(|s| {
            let pts: Vec<[f32; 2]> = train.iter().map(|c| [c[2 * s], c[2 * s + 1]]).collect();
            let mut cen: Vec<[f32; 2]> =
                (0..256).map(|i| pts[(i * 7919 + s * 31) % pts.len()]).collect();
            for _ in 0..12 {
                let mut sum = vec![[0f64; 3]; 256];
                for p in &pts {
                    let c = nearest(&cen, p);
                    sum[c][0] += f64::from(p[0]);
                    sum[c][1] += f64::from(p[1]);
                    sum[c][2] += 1.0;
                }
                for (c, s) in cen.iter_mut().zip(&sum) {
                    if s[2] > 0.0 {
                        *c = [(s[0] / s[2]) as f32, (s[1] / s[2]) as f32];
                    }
                }
            }
            cen
        })
        .collect();
    codes
        .par_iter()
        .map(|c| {
            (0..m)
                .flat_map(|s| {
                    let cen = &centroids[s];
                    let k = nearest(cen, &[c[2 * s], c[2 * s + 1]]);
                    cen[k]
                })
                .collect()
        })
        .collect()
}

fn nearest(cen: &[[f32; 2]], p: &[f32; 2]) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (i, c) in cen.iter().enumerate() {
        let d = (c[0] - p[0]).powi(2) + (c[1] - p[1]).powi(2);
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut cfg = FastFingerConfig::default();
    cfg.synth.seed = a.seed;
    let configs: Vec<Config> =
        a.configs.iter().map(|c| parse_config(c)).collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    let train = templates(&cfg, 1_000_000_000..1_000_000_000 + a.train, 0);
    let needs_mates =
        configs.iter().any(|c| !c.shipped && matches!(c.params.projection, Projection::Lda { .. }));
    let pairs = if a.pairs == 0 { a.train } else { a.pairs.min(a.train) };
    let mates: Vec<[FingerTemplate; 2]> = if needs_mates {
        let second = templates(&cfg, 1_000_000_000..1_000_000_000 + pairs, 1);
        train.iter().zip(second).map(|(a, b)| [a.clone(), b]).collect()
    } else {
        Vec::new()
    };
    let (gallery, probes) = if a.write_model.is_some() {
        (Vec::new(), Vec::new())
    } else {
        (templates(&cfg, 0..a.gallery, 0), templates(&cfg, 0..a.probes, 1))
    };
    eprintln!(
        "generated {} training, {} gallery, {} probe templates in {:.1} s",
        train.len(),
        gallery.len(),
        probes.len(),
        t0.elapsed().as_secs_f64()
    );
    if a.write_model.is_none() {
        eprintln!("| config | variant | dim | N | finger % at 0.1/0.25/0.5/1 % | subject % at 0.1/0.25/0.5/1 % | subject % weighted, 0.5 % | impostor sd | genuine p50 |");
    }
    let weights: Vec<f32> = probes.iter().map(|t| t.minutiae.len().min(40) as f32 / 40.0).collect();
    // The largest number of components each PCA fit must give.
    let mut needed: HashMap<String, usize> = HashMap::new();
    for c in &configs {
        let n = match (c.identity || c.shipped, c.params.projection) {
            (false, Projection::PcaWhiten { drop, .. }) => drop + c.params.dim,
            (false, Projection::Lda { pca_dims, .. }) => pca_dims,
            _ => continue,
        };
        let e = needed.entry(basis_key(&c.params)).or_default();
        *e = (*e).max(n);
    }
    let mut keep: HashMap<String, usize> = HashMap::new();
    for c in &configs {
        if let (false, Projection::Lda { pca_dims, eps, .. }) =
            (c.identity || c.shipped, c.params.projection)
        {
            let e = keep.entry(format!("{}|{pca_dims}|{eps}", basis_key(&c.params))).or_default();
            *e = (*e).max(c.params.dim);
        }
    }
    let mut bases: HashMap<String, (PcaBasis, f64)> = HashMap::new();
    let mut ldas: HashMap<String, (LdaBasis, f64)> = HashMap::new();
    for c in &configs {
        let t = Instant::now();
        let train_s;
        let model = match (c.identity, c.params.projection) {
            _ if c.shipped => {
                train_s = 0.0;
                Ok((*biomatch_fingerprint::code::shipped()).clone())
            }
            (false, Projection::PcaWhiten { .. } | Projection::Lda { .. }) => {
                let key = basis_key(&c.params);
                if !bases.contains_key(&key) {
                    let p = &c.params;
                    let basis =
                        PcaBasis::fit(p.bins, p.power, p.standardise, needed[&key], p.seed, &train)
                            .map_err(anyhow::Error::msg)?;
                    eprintln!(
                        "PCA fit {key}: {} components in {:.1} s, residual {:.2e}, λ1 {:.3e}, λ{} {:.3e}, mean λ {:.3e}",
                        basis.values.len(),
                        t.elapsed().as_secs_f64(),
                        basis.residual,
                        basis.values[0],
                        basis.values.len(),
                        basis.values[basis.values.len() - 1],
                        basis.mean_eigenvalue
                    );
                    bases.insert(key.clone(), (basis, t.elapsed().as_secs_f64()));
                }
                let (basis, fit_s) = &bases[&key];
                match c.params.projection {
                    Projection::PcaWhiten { drop, eps, alpha } => {
                        train_s = *fit_s;
                        CodeModel::from_pca("mpc", "1", basis, c.params.dim, drop, eps, alpha)
                    }
                    Projection::Lda { pca_dims, eps, beta } => {
                        let lkey = format!("{key}|{pca_dims}|{eps}");
                        if !ldas.contains_key(&lkey) {
                            let t = Instant::now();
                            let lda = LdaBasis::fit(basis, pca_dims, eps, keep[&lkey], &mates)
                                .map_err(anyhow::Error::msg)?;
                            eprintln!(
                                "LDA fit {lkey}: {} pairs in {:.1} s, w1 {:.3} w{} {:.3}",
                                lda.pairs,
                                t.elapsed().as_secs_f64(),
                                lda.values[0],
                                lda.values.len(),
                                lda.values[lda.values.len() - 1]
                            );
                            ldas.insert(lkey.clone(), (lda, t.elapsed().as_secs_f64()));
                        }
                        let (lda, lda_s) = &ldas[&lkey];
                        train_s = fit_s + lda_s;
                        CodeModel::from_lda("mpc", "1", basis, lda, c.params.dim, beta)
                    }
                    Projection::Random => unreachable!(),
                }
            }
            _ => {
                let r = CodeModel::train_with("mpc", "1", &c.params, &train, &mates);
                train_s = t.elapsed().as_secs_f64();
                r
            }
        }
        .map_err(anyhow::Error::msg)?;
        if let Some(path) = &a.write_model {
            let bytes = model.spec().to_bytes();
            std::fs::write(path, &bytes)?;
            eprintln!("wrote {} ({} bytes): {:?}", path.display(), bytes.len(), model.spec());
            return Ok(());
        }
        let t = Instant::now();
        let g: Vec<Vec<f32>> = gallery.par_iter().map(|t| model.encode(t)).collect();
        let enc_us = t.elapsed().as_secs_f64() * 1e6 * rayon::current_num_threads() as f64
            / gallery.len() as f64;
        let p: Vec<Vec<f32>> = probes.par_iter().map(|t| model.encode(t)).collect();
        let n = gallery.len() / 2;
        for &m in a.sizes.iter().filter(|&&m| m < n) {
            report(&c.text, "f32", model.dim(), m, &evaluate(&g, &p, &weights, m), json!({}));
        }
        let e = evaluate(&g, &p, &weights, n);
        let extra = json!({"encode_us": enc_us, "train_s": train_s, "train_fingers": a.train,
            "threads": rayon::current_num_threads()});
        eprintln!(
            "  {}: encode {enc_us:.0} µs/finger ({} threads), train {train_s:.1} s",
            c.text,
            rayon::current_num_threads()
        );
        report(&c.text, "f32", model.dim(), n, &e, extra);
        if a.misses {
            let k = ((0.005 * n as f64).ceil() as usize).max(1);
            for (s, &r) in e.subject_ranks.iter().enumerate() {
                if r >= k {
                    let m = |t: &FingerTemplate| t.minutiae.len();
                    eprintln!(
                        "  miss subject {s}: rank {r}, finger ranks {} {}, minutiae probe {} {} gallery {} {}",
                        e.finger_ranks[2 * s],
                        e.finger_ranks[2 * s + 1],
                        m(&probes[2 * s]),
                        m(&probes[2 * s + 1]),
                        m(&gallery[2 * s]),
                        m(&gallery[2 * s + 1])
                    );
                }
            }
            let mut by_count = [(0usize, 0usize); 8];
            for (i, &r) in e.finger_ranks.iter().enumerate() {
                let b = (probes[i].minutiae.len().min(gallery[i].minutiae.len()) / 10).min(7);
                by_count[b].0 += 1;
                by_count[b].1 += usize::from(r >= k);
            }
            eprintln!("  finger misses at 0.5 % by min(minutiae)/10: {by_count:?}");
        }
        if a.quant {
            let f16: Vec<Vec<f32>> = g
                .iter()
                .map(|c| c.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect())
                .collect();
            report(&c.text, "fp16", model.dim(), n, &evaluate(&f16, &p, &weights, n), json!({}));
            for levels in [256, 16] {
                let q = scalar_quantise(&g, levels);
                let name = if levels == 256 { "sq8" } else { "sq4" };
                report(&c.text, name, model.dim(), n, &evaluate(&q, &p, &weights, n), json!({}));
            }
            if model.dim() % 2 == 0 && model.dim() <= 512 {
                let t = Instant::now();
                let tc: Vec<Vec<f32>> =
                    train[..train.len().min(20_000)].par_iter().map(|t| model.encode(t)).collect();
                let q = product_quantise(&tc, &g);
                let name = format!("pq{}x8", model.dim() / 2);
                eprintln!("  PQ trained in {:.1} s", t.elapsed().as_secs_f64());
                report(&c.text, &name, model.dim(), n, &evaluate(&q, &p, &weights, n), json!({}));
            }
        }
    }
    Ok(())
}
