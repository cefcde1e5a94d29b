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
use biomatch_engine::{
    Engine, EngineModel, IdentifyParams, ModelKind, Samples, SearchKind as EngineSearch, Settings,
};
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{
    AnnParams, Enrollment, Gallery, IdentifyOptions, ModelSpec, Probe, SearchMode, Store,
    StoreOptions,
};
use indicatif::ProgressBar;
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
    /// Which 1:N search to evaluate. `index` also runs exact search in the same process as the
    /// baseline and reports recall_vs_exact.
    #[arg(long, value_enum, default_value_t = SearchKind::Exact)]
    search: SearchKind,
    #[command(flatten)]
    index: IndexArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SearchKind {
    Exact,
    Index,
}

/// Parameters of the sharded ANN index.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    /// FAISS factory string (inner product); default chosen by gallery size.
    #[arg(long)]
    factory: Option<String>,
    /// Shards (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Candidates per shard re-ranked exactly.
    #[arg(long, default_value_t = AnnParams::default().k_prime)]
    k_prime: usize,
    /// IVF lists probed per shard (IVF indexes only; default: a quarter of the lists).
    #[arg(long)]
    nprobe: Option<usize>,
    /// Refuse to load an index generation needing more memory than this (MiB).
    #[arg(long)]
    memory_budget_mb: Option<u64>,
    /// Build a new generation even if the store already has a current one.
    #[arg(long)]
    rebuild: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// Store directory; the table goes to `<data>/calibration/synthetic-face@1.json`.
    #[arg(long)]
    data: PathBuf,
    /// Template dimension.
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Expected cosine between two samples of one identity.
    #[arg(long, default_value_t = 0.70)]
    genuine_mean: f64,
    /// Impostor scores to calibrate on.
    #[arg(long, default_value_t = 10_000_000)]
    scores: usize,
}

/// Calibrate the synthetic model on impostor pairs of a population disjoint from any gallery
/// identity (the generator's calibration range).
pub fn calibrate(args: &CalibrateArgs) -> Result<()> {
    let pop = Population::new(PopulationConfig {
        identities: 1,
        dim: args.dim,
        seed: 0xCA11B,
        genuine_mean: args.genuine_mean,
        clustered: None,
    })?;
    let (m, _) = model(args.dim);
    let mut scores = pop.impostor_scores(args.scores, 1);
    let table = CalibrationTable::from_impostor_scores(m.clone(), &mut scores)?;
    let dir = args.data.join("calibration");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{m}.json"));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&table)?)?;
    std::fs::rename(&tmp, &path)?;
    println!("{}", json!({ "model": m.to_string(), "impostor_scores": args.scores, "path": path }));
    Ok(())
}

fn model(dim: usize) -> (ModelId, ModelSpec) {
    let m = ModelId::new("synthetic-face", "1").expect("valid model id");
    (m.clone(), ModelSpec { model: m, dim })
}

fn bar(len: u64, what: &str) -> ProgressBar {
    biomatch_matcher::progress_bar(len, what)
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
                    fingers: Vec::new(),
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

/// Resident set size of this process (Linux), as measured, not estimated.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
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

/// What one search configuration did on the probe sets.
struct Pass {
    /// Per-search latency, ms, sorted.
    latencies: Vec<f64>,
    /// Score of the mate when it was returned (per mated probe).
    mate_scores: Vec<Option<f32>>,
    /// Whether the mate was returned at all (per mated probe).
    mate_found: Vec<bool>,
    rank1: usize,
    top_nonmated: Vec<Option<f32>>,
    batch_qps: f64,
}

/// One probe through the engine, as the service runs it: the candidates' subject and raw score.
fn engine_identify(
    engine: &Engine,
    p: &Probe,
    opts: &IdentifyOptions,
    mode: EngineSearch,
) -> Result<Vec<(biomatch_core::SubjectId, f32)>> {
    let samples = Samples { vectors: vec![(p.modality, p.template.clone())], fingers: Vec::new() };
    let probe = engine.prepare(samples)?;
    let params = IdentifyParams {
        max_results: opts.max_results,
        threshold: opts.threshold,
        target_fpir: None,
        subset: opts.subset.clone(),
        mode,
        keep_shortlist: false,
    };
    Ok(engine
        .identify(&probe, &params)?
        .candidates
        .into_iter()
        .map(|c| (c.subject, c.scores[0].score))
        .collect())
}

fn run_pass(
    engine: &Engine,
    mode: EngineSearch,
    mated: &[(Probe, u64)],
    nonmated: &[Probe],
    opts: &IdentifyOptions,
    batch: usize,
    label: &str,
) -> Result<Pass> {
    let pb = bar((mated.len() + nonmated.len()) as u64, label);
    let mut latencies = Vec::with_capacity(mated.len() + nonmated.len());
    let mut single_top = Vec::with_capacity(mated.len() + nonmated.len());
    let (mut mate_scores, mut mate_found, mut rank1) = (Vec::new(), Vec::new(), 0);
    for (p, identity) in mated {
        let t = Instant::now();
        let c = engine_identify(engine, p, opts, mode)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        let pos = c.iter().position(|c| parse_subject_id(&c.0) == Some(*identity));
        rank1 += usize::from(pos == Some(0));
        mate_scores.push(pos.map(|i| c[i].1));
        mate_found.push(pos.is_some());
        single_top.push(c.first().map(|c| c.1));
        pb.inc(1);
    }
    let mut top_nonmated = Vec::with_capacity(nonmated.len());
    for p in nonmated {
        let t = Instant::now();
        let c = engine_identify(engine, p, opts, mode)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        top_nonmated.push(c.first().map(|c| c.1));
        single_top.push(c.first().map(|c| c.1));
        pb.inc(1);
    }
    let g = engine.gallery();
    let mode = match mode {
        EngineSearch::Exact => SearchMode::Exact,
        _ => SearchMode::Index(AnnParams {
            k_prime: engine.settings().k_prime,
            nprobe: engine.settings().nprobe,
        }),
    };
    pb.finish_and_clear();
    latencies.sort_by(f64::total_cmp);

    // Batched pass over the same probes: throughput, and the results must agree.
    let all: Vec<Probe> =
        mated.iter().map(|(p, _)| p.clone()).chain(nonmated.iter().cloned()).collect();
    let t = Instant::now();
    let mut batch_top = Vec::with_capacity(all.len());
    for chunk in all.chunks(batch.max(1)) {
        let (res, _) = g.identify_batch(chunk, opts, mode)?;
        batch_top.extend(res.into_iter().map(|c| c.first().map(|c| c.score)));
    }
    let batch_qps = all.len() as f64 / t.elapsed().as_secs_f64();
    if batch_top != single_top {
        bail!("{label}: batched and single-probe searches disagree");
    }
    Ok(Pass { latencies, mate_scores, mate_found, rank1, top_nonmated, batch_qps })
}

/// Build (or reuse) and load the index generation for the eval.
fn prepare_index(
    g: &Gallery,
    m: &ModelId,
    a: &IndexArgs,
) -> Result<(serde_json::Value, AnnParams)> {
    let load = LoadOptions {
        memory_budget: a.memory_budget_mb.map(|mb| mb << 20),
        ..LoadOptions::default()
    };
    let current = if a.rebuild { None } else { g.load_index(m, &load)? };
    let reusable = current.filter(|i| {
        i.manifest.covered_rows == g.store().stats().columns[0].rows
            && a.factory.as_ref().is_none_or(|f| f == &i.manifest.factory)
            && a.shards.is_none_or(|s| s == i.manifest.shards.len())
    });
    let (idx, built) = match reusable {
        Some(i) => (i, false),
        None => {
            let mut params = BuildParams { factory: a.factory.clone(), ..BuildParams::default() };
            if let Some(s) = a.shards {
                params.shards = s;
            }
            tracing::info!(factory = ?params.factory, shards = params.shards, "building index generation");
            ann::build(g.store(), m, &params)?;
            (g.load_index(m, &load)?.context("the index just built does not load")?, true)
        }
    };
    let info = json!({
        "generation": idx.manifest.generation,
        "factory": idx.manifest.factory,
        "shards": idx.manifest.shards.len(),
        "build_seconds": if built { idx.manifest.build_seconds } else { 0.0 },
        "index_bytes": idx.index_bytes,
        "store_bytes": idx.store_bytes,
        "bytes_per_template": idx.bytes_per_template(),
        "resident_bytes_per_template": idx.resident_bytes_per_template(),
        "mapped_bytes_per_template": idx.mapped_bytes_per_template(),
        "index_bytes_per_template": idx.index_bytes as f64 / idx.manifest.vectors.max(1) as f64,
    });
    Ok((info, AnnParams { k_prime: a.k_prime, nprobe: a.nprobe }))
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
    let g = Gallery::new(std::sync::Arc::new(store));

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
    let mated: Vec<(Probe, u64)> = probes
        .mated
        .iter()
        .map(|p| Ok((to_probe(&p.vector)?, p.identity)))
        .collect::<Result<_>>()?;
    let nonmated: Vec<Probe> =
        probes.nonmated.iter().map(|p| to_probe(&p.vector)).collect::<Result<_>>()?;
    let opts = IdentifyOptions { max_results: args.max_results, threshold: None, subset: None };
    let index_info = match args.search {
        SearchKind::Exact => serde_json::Value::Null,
        SearchKind::Index => prepare_index(&g, &m, &args.index)?.0,
    };
    // Every search goes through the matching engine, as the service's do.
    let engine = Engine::new(
        std::sync::Arc::new(g),
        None,
        vec![EngineModel {
            id: m.clone(),
            dim: pop.dim(),
            kind: ModelKind::Face,
            calibration: table,
        }],
        Settings { k_prime: args.index.k_prime, nprobe: args.index.nprobe },
        None,
    );
    let g = engine.gallery();

    let exact =
        run_pass(&engine, EngineSearch::Exact, &mated, &nonmated, &opts, args.batch, "exact")?;
    let pass = match args.search {
        SearchKind::Exact => None,
        SearchKind::Index => Some(run_pass(
            &engine,
            EngineSearch::Index,
            &mated,
            &nonmated,
            &opts,
            args.batch,
            "index",
        )?),
    };
    let (chosen, search) = match &pass {
        Some(p) => (p, "index"),
        None => (&exact, "exact"),
    };
    // Share of mated probes whose mate exact search returns that the chosen search returns too.
    let exact_found = exact.mate_found.iter().filter(|&&f| f).count();
    let both = exact.mate_found.iter().zip(&chosen.mate_found).filter(|(e, c)| **e && **c).count();
    let p50 = metrics::percentile(&chosen.latencies, 50.0);

    let out = json!({
        "subjects": g.store().len(),
        "mated_probes": mated.len(),
        "nonmated_probes": nonmated.len(),
        "fnir": metrics::fnir(&chosen.mate_scores, threshold),
        "fpir": metrics::fpir(&chosen.top_nonmated, threshold),
        "rank1_hit_rate": chosen.rank1 as f64 / mated.len().max(1) as f64,
        "threshold": threshold,
        "target_fpir": target_fpir,
        "target_fpir_mosip": mosip_from_fpir(target_fpir),
        "threshold_fmr": fmr,
        "threshold_extrapolated": extrapolated,
        "calibration_impostors": args.calibration_scores,
        "max_results": args.max_results,
        "p50_ms": p50,
        "p99_ms": metrics::percentile(&chosen.latencies, 99.0),
        "batch": args.batch,
        "batch_qps": chosen.batch_qps,
        "search": search,
        "recall_vs_exact": if exact_found == 0 { 1.0 } else { both as f64 / exact_found as f64 },
        "bytes_per_template": index_info.get("bytes_per_template").cloned().unwrap_or_else(|| {
            // Exact search: the fp16 column plus the in-memory metadata (estimated from sizes).
            let c = &g.store().stats().columns[0];
            json!((c.rows as f64 * c.dim as f64 * 2.0 + g.store().metadata_bytes() as f64) / c.rows.max(1) as f64)
        }),
        // Heap per template (index structures + metadata) apart from the mapped fp16 template.
        "resident_bytes_per_template": index_info.get("resident_bytes_per_template").cloned().unwrap_or_else(|| {
            let c = &g.store().stats().columns[0];
            json!(g.store().metadata_bytes() as f64 / c.rows.max(1) as f64)
        }),
        "mapped_bytes_per_template": index_info.get("mapped_bytes_per_template").cloned().unwrap_or_else(|| {
            json!(g.store().stats().columns[0].dim as f64 * 2.0)
        }),
        "exact_p50_ms": metrics::percentile(&exact.latencies, 50.0),
        "exact_p99_ms": metrics::percentile(&exact.latencies, 99.0),
        "exact_batch_qps": exact.batch_qps,
        "speedup_p50_vs_exact": metrics::percentile(&exact.latencies, 50.0) / p50,
        "index": index_info,
        "k_prime": args.index.k_prime,
        "dim": pop.dim(),
        "seed": args.population.seed,
        "genuine_mean": args.population.genuine_mean,
        "families": args.population.families,
        "enroll_seconds": enroll_seconds,
        "calibration_seconds": calib_seconds,
        "rss_bytes": rss_bytes(),
        "machine": machine(),
    });
    println!("{out}");
    Ok(())
}
