//! Synthetic-population commands: the seed of the benchmark harness.
//!
//! `eval-synthetic` enrolls (or reuses) a seeded population, calibrates the 1:N threshold from
//! impostor scores of identities disjoint from both gallery and probes, runs every mated and
//! non-mated probe through the real search path one at a time (timed) and then in batches, and
//! prints one JSON object as its last line. Nothing is cached between runs except the store
//! itself when `--data` names one that already holds the same population.

use anyhow::{bail, Context, Result};
use biomatch_core::calibration::{fpir_from_mosip, mosip_from_fpir};
use biomatch_core::{metrics, CalibrationTable, Modality, ModelId, Template};
use biomatch_datasets::{
    parse_subject_id, subject_id, ClusterConfig, Population, PopulationConfig,
};
use biomatch_gallery::{Enrollment, IdentifyOptions, ModelSpec, Probe, Store, StoreOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SIDECAR: &str = "synthetic.json";

/// The population to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct PopulationArgs {
    /// Number of enrolled identities.
    #[arg(long, default_value_t = 100_000)]
    subjects: u64,
    /// Population seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Template dimension (128 = the SFace face model).
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Expected cosine between two samples of one identity.
    #[arg(long, default_value_t = 0.70)]
    genuine_mean: f64,
    /// Clustered mode: number of families (look-alikes); off by default.
    #[arg(long)]
    families: Option<u64>,
    /// Clustered mode: expected cosine between identity centres of one family.
    #[arg(long, default_value_t = 0.35)]
    within_family_cosine: f64,
}

impl PopulationArgs {
    fn population(&self) -> Result<Population> {
        let config = PopulationConfig {
            identities: self.subjects,
            dim: self.dim,
            seed: self.seed,
            genuine_mean: self.genuine_mean,
            clustered: self.families.map(|families| ClusterConfig {
                families,
                within_family_cosine: self.within_family_cosine,
            }),
        };
        Population::new(config).context("invalid population parameters")
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// Store directory (created if missing).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    population: PopulationArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Store directory to build or reuse; a temporary one when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    population: PopulationArgs,
    /// Mated probes, and as many non-mated probes.
    #[arg(long, default_value_t = 1000)]
    probes: usize,
    /// Target false-positive identification rate for the threshold.
    #[arg(long, default_value_t = 1e-3, conflicts_with = "mosip_fpir")]
    target_fpir: f64,
    /// Target FPIR in MOSIP's encoding, round(-10·log10 FPIR) (30 = 1/1000).
    #[arg(long)]
    mosip_fpir: Option<u32>,
    /// Impostor scores used to calibrate the threshold.
    #[arg(long, default_value_t = 10_000_000)]
    calibration_scores: usize,
    /// Candidate list length.
    #[arg(long, default_value_t = 10)]
    max_results: usize,
    /// Probes per batch in the batched-throughput pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

fn model(dim: usize) -> (ModelId, ModelSpec) {
    let m = ModelId::new("synthetic-face", "1").expect("valid model id");
    (m.clone(), ModelSpec { model: m, dim })
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Open the store and make sure it holds exactly this population, enrolling it if empty.
fn fill(dir: &Path, pop: &Population) -> Result<(Store, f64)> {
    let (m, spec) = model(pop.dim());
    let store = Store::open(dir, StoreOptions::new(vec![spec]))
        .with_context(|| format!("opening store {}", dir.display()))?;
    let want = serde_json::to_value(pop.config())?;
    let sidecar = dir.join(SIDECAR);
    if !store.is_empty() {
        let have: serde_json::Value = std::fs::read(&sidecar)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if have != want || store.len() as u64 != pop.identities() {
            bail!(
                "store {} already holds {} subjects of another population; use an empty directory",
                dir.display(),
                store.len()
            );
        }
        tracing::info!(subjects = store.len(), "reusing the enrolled population");
        return Ok((store, 0.0));
    }
    let t = Instant::now();
    let pb = bar(pop.identities(), "enroll");
    for batch in pop.enrolment_batches(10_000) {
        let enrollments = batch
            .into_iter()
            .map(|(i, v)| {
                Ok(Enrollment {
                    subject: subject_id(i),
                    templates: vec![(Modality::Face, Template::new(m.clone(), pop.dim(), v)?)],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for r in store.enroll_batch(&enrollments)? {
            r?;
        }
        pb.inc(enrollments.len() as u64);
    }
    store.checkpoint()?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    std::fs::write(&sidecar, serde_json::to_vec_pretty(&want)?)?;
    Ok((store, secs))
}

pub fn enroll(args: &EnrollArgs) -> Result<()> {
    let pop = args.population.population()?;
    let (store, secs) = fill(&args.data, &pop)?;
    println!(
        "{}",
        json!({
            "subjects": store.len(),
            "enroll_seconds": secs,
            "enroll_per_second": if secs > 0.0 { pop.identities() as f64 / secs } else { 0.0 },
            "data": args.data,
        })
    );
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split_once(':').map(|x| x.1.trim().to_owned()).unwrap_or_default())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cpu": cpu,
        "threads": rayon::current_num_threads(),
        "kernel": biomatch_gallery::kernel::kernel_name(),
    })
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let pop = args.population.population()?;
    let target_fpir = args.mosip_fpir.map(fpir_from_mosip).unwrap_or(args.target_fpir);
    if !(target_fpir > 0.0 && target_fpir < 1.0) {
        bail!("target FPIR must be in (0, 1); got {target_fpir}");
    }
    let tmp;
    let dir = match &args.data {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    let (store, enroll_seconds) = fill(&dir, &pop)?;
    let (m, _) = model(pop.dim());

    // Calibrate on identities disjoint from gallery and probes.
    let t = Instant::now();
    let mut impostors = pop.impostor_scores(args.calibration_scores, args.population.seed ^ 0xCA1B);
    let table = CalibrationTable::from_impostor_scores(m.clone(), &mut impostors)?;
    drop(impostors);
    let threshold = table.threshold_for_fpir(target_fpir, pop.identities())?;
    let fmr = target_fpir / pop.identities() as f64;
    let extrapolated = fmr * (args.calibration_scores as f64) < 10.0;
    let calib_seconds = t.elapsed().as_secs_f64();

    let probes = pop.probes(args.probes, args.probes, args.population.seed ^ 0x9B0B)?;
    let to_probe = |v: &[f32]| -> Result<Probe> {
        Ok(Probe {
            modality: Modality::Face,
            template: Template::new(m.clone(), pop.dim(), v.to_vec())?,
        })
    };
    let mated: Vec<Probe> =
        probes.mated.iter().map(|p| to_probe(&p.vector)).collect::<Result<_>>()?;
    let nonmated: Vec<Probe> =
        probes.nonmated.iter().map(|p| to_probe(&p.vector)).collect::<Result<_>>()?;
    let opts = IdentifyOptions { max_results: args.max_results, threshold: None, subset: None };

    // Single-probe pass, timed per search.
    let pb = bar((mated.len() + nonmated.len()) as u64, "identify");
    let mut latencies = Vec::with_capacity(mated.len() + nonmated.len());
    let mut mate_scores = Vec::with_capacity(mated.len());
    let mut rank1 = 0usize;
    let mut single_top = Vec::with_capacity(mated.len() + nonmated.len());
    for (p, truth) in mated.iter().zip(&probes.mated) {
        let t = Instant::now();
        let c = store.identify(p, &opts)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        let pos = c.iter().position(|c| parse_subject_id(&c.subject_id) == Some(truth.identity));
        rank1 += usize::from(pos == Some(0));
        single_top.push(c.first().map(|c| c.score));
        mate_scores.push(pos.map(|i| c[i].score));
        pb.inc(1);
    }
    let mut top_nonmated = Vec::with_capacity(nonmated.len());
    for p in &nonmated {
        let t = Instant::now();
        let c = store.identify(p, &opts)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        top_nonmated.push(c.first().map(|c| c.score));
        single_top.push(c.first().map(|c| c.score));
        pb.inc(1);
    }
    pb.finish_and_clear();
    latencies.sort_by(f64::total_cmp);

    // Batched pass: throughput of the batch path over the same probes; results must agree.
    let all: Vec<Probe> = mated.iter().chain(&nonmated).cloned().collect();
    let t = Instant::now();
    let mut batch_top = Vec::with_capacity(all.len());
    for chunk in all.chunks(args.batch.max(1)) {
        batch_top.extend(
            store.identify_batch(chunk, &opts)?.into_iter().map(|c| c.first().map(|c| c.score)),
        );
    }
    let batch_secs = t.elapsed().as_secs_f64();
    if batch_top != single_top {
        bail!("batched and single-probe searches disagree");
    }

    let out = json!({
        "subjects": store.len(),
        "mated_probes": mated.len(),
        "nonmated_probes": nonmated.len(),
        "fnir": metrics::fnir(&mate_scores, threshold),
        "fpir": metrics::fpir(&top_nonmated, threshold),
        "rank1_hit_rate": rank1 as f64 / mated.len().max(1) as f64,
        "threshold": threshold,
        "target_fpir": target_fpir,
        "target_fpir_mosip": mosip_from_fpir(target_fpir),
        "threshold_fmr": fmr,
        "threshold_extrapolated": extrapolated,
        "calibration_impostors": args.calibration_scores,
        "max_results": args.max_results,
        "p50_ms": metrics::percentile(&latencies, 50.0),
        "p99_ms": metrics::percentile(&latencies, 99.0),
        "batch": args.batch,
        "batch_qps": all.len() as f64 / batch_secs,
        "search": "exact",
        "dim": pop.dim(),
        "seed": args.population.seed,
        "genuine_mean": args.population.genuine_mean,
        "families": args.population.families,
        "enroll_seconds": enroll_seconds,
        "calibration_seconds": calib_seconds,
        "machine": machine(),
    });
    println!("{out}");
    Ok(())
}
