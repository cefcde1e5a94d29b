//! Synthetic-population commands: the seed of the benchmark harness.
//!
//! `eval-synthetic` enrolls (or reuses) a seeded population, calibrates the 1:N threshold from
//! impostor scores of identities disjoint from both gallery and probes, runs every mated and
//! non-mated probe through the real search path one at a time (timed) and then in batches, and
//! prints one JSON object as its last line. Nothing is cached between runs except the store
//! itself when `--data` names one that already holds the same population.
//!
//! With `--fingers-per-subject K` (1, 2 or 10) every subject also gets K minutiae fingers from
//! the minutiae-level generator (`biomatch_datasets::finger::fast`; finger id `identity · 10 +
//! position − 1`, impression 0 enrolled, impression 1 probed), and `--no-face` leaves the face
//! out. Such a population is enrolled through the matching engine (which prepares the fingers'
//! search data), and every probe is searched by the engine once, without an FPIR cut: the
//! engine's decision at the target FPIR (fused FMR ≤ target / N) and the empirical threshold are
//! both read off the same candidate lists. Scores there are fused scores, −log10 of the fused FMR.

use anyhow::{bail, Context, Result};
use biomatch_core::calibration::{fpir_from_mosip, mosip_from_fpir};
use biomatch_core::finger::FingerTemplate;
use biomatch_core::fusion::score_of_fmr;
use biomatch_core::{metrics, CalibrationTable, FingerPosition, Modality, ModelId, Template};
use biomatch_datasets::finger::fast::{
    fast_impression, fast_master, FastFingerConfig, FAST_GENERATOR_VERSION,
};
use biomatch_datasets::{
    duplicate_id, parse_subject_id, subject_id, ClusterConfig, Population, PopulationConfig,
};
use biomatch_engine::{
    Engine, EngineModel, FingerShortlist, IdentifyParams, ModelKind, Samples,
    SearchKind as EngineSearch, Settings,
};
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{
    AnnParams, Enrollment, FingerGallery, FingerSearchParams, Gallery, IdentifyOptions, ModelSpec,
    Probe, SearchMode, Store, StoreOptions,
};
use biomatch_matcher::state::{mcc_calibration, MCC_CALIBRATION};
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    #[command(flatten)]
    fingers: FingerArgs,
}

/// The subjects' minutiae fingers.
#[derive(Debug, Clone, clap::Args)]
pub struct FingerArgs {
    /// Minutiae fingers per subject: 0 (none), 1 (right index: position 2), 2 (both index
    /// fingers: positions 2 and 7) or 10 (positions 1 to 10).
    #[arg(long, default_value_t = 0, value_parser = parse_fingers_per_subject)]
    fingers_per_subject: u8,
    /// Fingers only: no face template (needs --fingers-per-subject).
    #[arg(long)]
    no_face: bool,
}

fn parse_fingers_per_subject(s: &str) -> std::result::Result<u8, String> {
    match s.parse::<u8>() {
        Ok(k @ (0 | 1 | 2 | 10)) => Ok(k),
        _ => Err(format!(
            "fingers per subject must be 0 (none), 1 (right index), 2 (both index fingers) or 10; \
             got {s}"
        )),
    }
}

impl FingerArgs {
    /// The finger positions every subject has (ISO/IEC 19794-2 codes).
    fn positions(&self) -> &'static [u8] {
        match self.fingers_per_subject {
            1 => &[2],
            2 => &[2, 7],
            10 => &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            _ => &[],
        }
    }

    fn enabled(&self) -> bool {
        self.fingers_per_subject > 0
    }

    fn face(&self) -> bool {
        !self.no_face
    }

    fn check(&self) -> Result<()> {
        if self.positions().len() != usize::from(self.fingers_per_subject) {
            bail!("--fingers-per-subject must be 0, 1, 2 or 10; got {}", self.fingers_per_subject);
        }
        if self.no_face && !self.enabled() {
            bail!("--no-face leaves no modality: give --fingers-per-subject 1, 2 or 10 as well");
        }
        Ok(())
    }

    /// The fingers of `identity`, each with its position: impression 0 is enrolled, 1 probed.
    fn templates(
        &self,
        cfg: &FastFingerConfig,
        identity: u64,
        impression: u32,
    ) -> Result<Vec<FingerTemplate>> {
        self.positions()
            .iter()
            .map(|&p| {
                let finger = identity * 10 + u64::from(p - 1);
                let master = fast_master(cfg, finger);
                let mut t = fast_impression(cfg, &master, finger, impression);
                t.position = Some(FingerPosition::new(p)?);
                Ok(t)
            })
            .collect()
    }
}

impl PopulationArgs {
    fn population(&self) -> Result<Population> {
        self.fingers.check()?;
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
    #[command(flatten)]
    duplicates: DuplicateArgs,
}

/// Planted duplicates for `biomatch dedup-gallery`.
#[derive(Debug, Clone, clap::Args)]
pub struct DuplicateArgs {
    /// Share of the identities enrolled a second time under a new id (`DUP-…`) with a fresh
    /// sample (face sample 2, finger impression 2); the planted pairs are written as CSV
    /// (`subject_a,subject_b`) to `<data>/planted-duplicates.csv` (enroll-synthetic) or
    /// `<out>/truth.csv` (export-synthetic-backlog).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Seed of the choice of duplicated identities.
    #[arg(long, default_value_t = 1)]
    duplicate_seed: u64,
}

/// `export-synthetic-backlog`: a face-only population with planted duplicates as the files
/// `biomatch import` reads.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportBacklogArgs {
    /// Output directory: `backlog.npy` (float32, (N, d)), `backlog.ids`, `truth.csv`.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    population: PopulationArgs,
    #[command(flatten)]
    duplicates: DuplicateArgs,
}

/// The planted truth as CSV: one `subject_a,subject_b` line per planted pair.
fn truth_csv(planted: &[u64]) -> String {
    let mut csv = String::from("subject_a,subject_b\n");
    for (k, &identity) in planted.iter().enumerate() {
        csv.push_str(&format!("{},{}\n", subject_id(identity), duplicate_id(k as u64)));
    }
    csv
}

/// Write the backlog (population + planted duplicates) as `biomatch import` files; prints a
/// JSON line.
pub fn export_backlog(args: &ExportBacklogArgs) -> Result<()> {
    if args.population.fingers.enabled() || args.population.fingers.no_face {
        bail!("export-synthetic-backlog writes face templates only (biomatch import loads one modality)");
    }
    let pop = args.population.population()?;
    let planted =
        pop.planted_duplicates(args.duplicates.duplicates, args.duplicates.duplicate_seed)?;
    std::fs::create_dir_all(&args.out)?;
    let rows = pop.identities() + planted.len() as u64;
    let d = pop.dim();
    let npy = args.out.join("backlog.npy");
    let ids_path = args.out.join("backlog.ids");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&npy)?);
    // NumPy format 1.0: magic, version, header length, a dict padded to a multiple of 64.
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    use std::io::Write as _;
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&u16::try_from(header.len())?.to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut ids = std::io::BufWriter::new(std::fs::File::create(&ids_path)?);
    let pb = bar(rows, "export");
    for batch in pop.enrolment_batches(100_000) {
        for (i, v) in &batch {
            for x in v {
                w.write_all(&x.to_le_bytes())?;
            }
            writeln!(ids, "{}", subject_id(*i))?;
        }
        pb.inc(batch.len() as u64);
    }
    let dups: Vec<Vec<f32>> =
        planted.par_iter().map(|&i| pop.sample(i, biomatch_datasets::DUPLICATE_SAMPLE)).collect();
    for (k, v) in dups.iter().enumerate() {
        for x in v {
            w.write_all(&x.to_le_bytes())?;
        }
        writeln!(ids, "{}", duplicate_id(k as u64))?;
    }
    pb.finish_and_clear();
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    ids.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::write(args.out.join("truth.csv"), truth_csv(&planted))?;
    println!(
        "{}",
        json!({
            "rows": rows,
            "subjects": pop.identities(),
            "planted_duplicates": planted.len(),
            "templates": npy,
            "ids": ids_path,
            "truth": args.out.join("truth.csv"),
            "population": sidecar(&pop, &args.population.fingers)?,
        })
    );
    Ok(())
}

/// Enroll the planted duplicates of `planted` (identities) into a store holding `pop`: through
/// the engine with fingers (impression 2), straight into the store for faces only.
fn enroll_duplicates(
    store: &Arc<Store>,
    pop: &Population,
    fingers: &FingerArgs,
    planted: &[u64],
) -> Result<()> {
    let (m, _) = model(pop.dim());
    let cfg = FastFingerConfig::default();
    let items = planted
        .par_iter()
        .enumerate()
        .map(|(k, &i)| {
            let vectors = if fingers.face() {
                let v = pop.sample(i, biomatch_datasets::DUPLICATE_SAMPLE);
                vec![(Modality::Face, Template::new(m.clone(), pop.dim(), v)?)]
            } else {
                Vec::new()
            };
            let f = if fingers.enabled() { fingers.templates(&cfg, i, 2)? } else { Vec::new() };
            Ok((duplicate_id(k as u64), Samples { vectors, fingers: f }))
        })
        .collect::<Result<Vec<_>>>()?;
    let engine = Engine::new(
        Arc::new(Gallery::new(store.clone())),
        if fingers.enabled() {
            Some((open_fingers(FingerSearchParams::default())?, finger_calibration()?))
        } else {
            None
        },
        Vec::new(),
        Settings::default(),
        None,
    );
    for chunk in items.chunks(10_000) {
        for r in engine.enroll_batch(chunk.to_vec(), None)? {
            r?;
        }
    }
    store.checkpoint()?;
    Ok(())
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
    /// Share of the subjects with fingers that the finger codes shortlist for MCC.
    #[arg(long, default_value_t = FingerSearchParams::default().penetration)]
    finger_penetration: f64,
    /// At least this many subjects are shortlisted.
    #[arg(long, default_value_t = FingerSearchParams::default().min_candidates)]
    finger_min_candidates: usize,
    /// Below this many subjects with fingers, every one is compared (no pre-selection).
    #[arg(long, default_value_t = FingerSearchParams::default().exhaustive_below)]
    finger_exhaustive_below: usize,
    /// With a face + fingers population: which of the probe's samples are searched (one
    /// modality alone against the same gallery shows what fusion adds).
    #[arg(long, value_enum, default_value_t = ProbeModalities::Both)]
    probe: ProbeModalities,
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
    /// Skip the exact baseline (with `--search index`: reuse a store and index measured
    /// before, e.g. under a memory cap); recall_vs_exact is then null.
    #[arg(long)]
    no_exact: bool,
    /// Probes of each set the exact baseline times one at a time (the rest only in its batched
    /// pass). Default: all up to 2 M subjects, 50 above.
    #[arg(long)]
    exact_single: Option<usize>,
    #[command(flatten)]
    index: IndexArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeModalities {
    Face,
    Fingers,
    Both,
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
    /// IVF lists probed per shard (IVF indexes only; default: the generation's, half of the lists).
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

/// What `synthetic.json` records: the population's config, its fingers and whether it has faces.
/// A store is reused only for an identical value.
fn sidecar(pop: &Population, fingers: &FingerArgs) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(pop.config())?;
    let o = v.as_object_mut().context("the population config is not a JSON object")?;
    o.insert("fingers_per_subject".into(), json!(fingers.fingers_per_subject));
    o.insert("no_face".into(), json!(fingers.no_face));
    if fingers.enabled() {
        o.insert("finger_generator_version".into(), json!(FAST_GENERATOR_VERSION));
        o.insert("finger_config".into(), serde_json::to_value(FastFingerConfig::default())?);
    }
    // As read back from the file (an f32 widened to f64 here prints shorter there).
    Ok(serde_json::from_slice(&serde_json::to_vec(&v)?)?)
}

/// A sidecar as read, with the fields of stores written before fingers existed (face only).
fn sidecar_read(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.entry("fingers_per_subject").or_insert(json!(0));
        o.entry("no_face").or_insert(json!(false));
    }
    v
}

/// Open the store and make sure it holds exactly this population, enrolling it if empty.
fn fill(dir: &Path, pop: &Population, fingers: &FingerArgs) -> Result<(Arc<Store>, f64)> {
    let store = Store::open(dir, store_options(pop, fingers))
        .with_context(|| format!("opening store {}", dir.display()))?;
    let want = sidecar(pop, fingers)?;
    let path = dir.join(SIDECAR);
    if !store.is_empty() {
        let have = std::fs::read(&path).map(|b| sidecar_read(&b)).unwrap_or_default();
        if have != want || store.len() as u64 != pop.identities() {
            bail!(
                "store {} already holds {} subjects of another population; use an empty directory",
                dir.display(),
                store.len()
            );
        }
        tracing::info!(subjects = store.len(), "reusing the enrolled population");
        return Ok((Arc::new(store), 0.0));
    }
    let store = Arc::new(store);
    let t = Instant::now();
    if fingers.enabled() {
        enroll_with_fingers(&store, pop, fingers)?;
    } else {
        enroll_faces(&store, pop)?;
    }
    store.checkpoint()?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::write(&path, serde_json::to_vec_pretty(&want)?)?;
    Ok((store, secs))
}

/// Face templates only: straight into the store.
fn enroll_faces(store: &Store, pop: &Population) -> Result<()> {
    let (m, _) = model(pop.dim());
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
    pb.finish_and_clear();
    Ok(())
}

/// The finger search over the store's fingers, as a service start makes it. The one place that
/// constructs it.
fn open_fingers(params: FingerSearchParams) -> Result<Arc<FingerGallery>> {
    let f = FingerGallery::shipped(params).context("setting up the finger search")?;
    Ok(Arc::new(f))
}

/// The store's columns: the synthetic face model, and the fingers' pre-selection codes when
/// the population has fingers.
fn store_options(pop: &Population, fingers: &FingerArgs) -> StoreOptions {
    let (_, spec) = model(pop.dim());
    let mut specs = vec![spec];
    if fingers.enabled() {
        specs.push(biomatch_gallery::finger_code_spec());
    }
    StoreOptions::new(specs)
}

/// The built-in `mcc@1` table fingers are scored with.
fn finger_calibration() -> Result<CalibrationTable> {
    mcc_calibration(MCC_CALIBRATION.as_bytes()).map_err(anyhow::Error::msg)
}

/// Subjects with fingers (and faces unless `--no-face`): through the matching engine, which
/// prepares each finger's search data at enrollment. Fingers are generated in parallel, a batch
/// of subjects at a time.
fn enroll_with_fingers(store: &Arc<Store>, pop: &Population, fingers: &FingerArgs) -> Result<()> {
    const BATCH: u64 = 10_000;
    let (m, _) = model(pop.dim());
    // Enrollment reads no calibration: the face model's table is not needed here.
    let engine = Engine::new(
        Arc::new(Gallery::new(store.clone())),
        Some((open_fingers(FingerSearchParams::default())?, finger_calibration()?)),
        Vec::new(),
        Settings::default(),
        None,
    );
    let cfg = FastFingerConfig::default();
    let n = pop.identities();
    let mut faces = fingers.face().then(|| pop.enrolment_batches(BATCH as usize));
    let pb = bar(n, "enroll");
    for start in (0..n).step_by(BATCH as usize) {
        let len = BATCH.min(n - start) as usize;
        let mut prints: Vec<Vec<FingerTemplate>> = (0..len)
            .into_par_iter()
            .map(|k| fingers.templates(&cfg, start + k as u64, 0))
            .collect::<Result<_>>()?;
        let face: Vec<Option<Vec<f32>>> = match faces.as_mut() {
            Some(it) => {
                let batch = it.next().context("face batches end early")?;
                debug_assert!(batch.first().is_none_or(|b| b.0 == start));
                batch.into_iter().map(|(_, v)| Some(v)).collect()
            }
            None => vec![None; len],
        };
        let items = face
            .into_iter()
            .zip(prints.drain(..))
            .enumerate()
            .map(|(k, (v, f))| {
                let vectors = match v {
                    Some(v) => vec![(Modality::Face, Template::new(m.clone(), pop.dim(), v)?)],
                    None => Vec::new(),
                };
                Ok((subject_id(start + k as u64), Samples { vectors, fingers: f }))
            })
            .collect::<Result<Vec<_>>>()?;
        for r in engine.enroll_batch(items, None)? {
            r?;
        }
        pb.inc(len as u64);
    }
    pb.finish_and_clear();
    Ok(())
}

pub fn enroll(args: &EnrollArgs) -> Result<()> {
    let pop = args.population.population()?;
    let planted =
        pop.planted_duplicates(args.duplicates.duplicates, args.duplicates.duplicate_seed)?;
    if !planted.is_empty()
        && Store::open_read_only(&args.data, StoreOptions::new(Vec::new()))
            .is_ok_and(|s| !s.is_empty())
    {
        bail!("--duplicates plants into a new store: {} is not empty", args.data.display());
    }
    let (store, secs) = fill(&args.data, &pop, &args.population.fingers)?;
    if !planted.is_empty() {
        enroll_duplicates(&store, &pop, &args.population.fingers, &planted)?;
        std::fs::write(args.data.join("planted-duplicates.csv"), truth_csv(&planted))?;
    }
    println!(
        "{}",
        json!({
            "subjects": store.len(),
            "enroll_seconds": secs,
            "enroll_per_second": if secs > 0.0 { pop.identities() as f64 / secs } else { 0.0 },
            "data": args.data,
            "fingers": store.stats().fingers.fingers,
            "fingers_per_subject": args.population.fingers.fingers_per_subject,
            "planted_duplicates": planted.len(),
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
        "faiss_kernels": biomatch_gallery::ann::ffi::kernels().kernels,
    })
}

/// Print an evaluation's last line: its own fields plus the run's (population, timings,
/// memory, machine), shared by the face and the finger evaluations.
fn print_result(
    mut out: serde_json::Value,
    args: &EvalArgs,
    pop: &Population,
    enroll_seconds: f64,
    calib_seconds: f64,
) {
    let run = json!({
        "dim": pop.dim(),
        "seed": args.population.seed,
        "genuine_mean": args.population.genuine_mean,
        "families": args.population.families,
        "enroll_seconds": enroll_seconds,
        "calibration_seconds": calib_seconds,
        "rss_bytes": rss_bytes(),
        "machine": machine(),
    });
    if let (Some(o), serde_json::Value::Object(r)) = (out.as_object_mut(), run) {
        o.extend(r);
    }
    println!("{out}");
}

/// Above this many subjects the exact baseline times only a sample of probes one at a time and
/// scores all of them in one pass over the column.
const EXACT_SINGLE_ABOVE: u64 = 2_000_000;
const EXACT_SINGLE_SAMPLE: usize = 50;

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
    /// The candidates' subjects of every single-probe search, best first (mated, then
    /// non-mated probes).
    candidates: Vec<Vec<biomatch_core::SubjectId>>,
    batch_qps: f64,
}

impl Pass {
    /// Share of mated probes whose mate is among the candidates (`max_results` of them).
    fn mate_hit_rate(&self) -> f64 {
        self.mate_found.iter().filter(|&&f| f).count() as f64 / self.mate_found.len().max(1) as f64
    }

    /// Share of the probes (mated and non-mated) whose best candidate in `exact` is among this
    /// pass's candidates: the top-1 recall against exact search.
    fn top1_recall_vs(&self, exact: &Pass) -> f64 {
        let (mut found, mut of) = (0usize, 0usize);
        for (e, c) in exact.candidates.iter().zip(&self.candidates) {
            if let Some(top) = e.first() {
                of += 1;
                found += usize::from(c.contains(top));
            }
        }
        if of == 0 {
            1.0
        } else {
            found as f64 / of as f64
        }
    }
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

/// One search configuration over the probe sets: `single` probes of each set (all when
/// `None`) are searched one at a time through the engine and timed; then every probe goes
/// through the gallery's batched search (`batch` probes per call, each batch scoring a range of
/// the column once), which gives the throughput and, for probes not timed singly, the results.
/// Probes searched both ways must agree.
#[allow(clippy::too_many_arguments)]
fn run_pass(
    engine: &Engine,
    mode: EngineSearch,
    mated: &[(Probe, u64)],
    nonmated: &[Probe],
    opts: &IdentifyOptions,
    batch: usize,
    single: Option<usize>,
    label: &str,
) -> Result<Pass> {
    let singles = |n: usize| single.map_or(n, |s| s.min(n));
    let (sm, sn) = (singles(mated.len()), singles(nonmated.len()));
    let pb = bar((sm + sn) as u64, label);
    let mut latencies = Vec::with_capacity(sm + sn);
    // Top candidate (subject, score) of the singly searched probes, to check the batch.
    let mut single_top: Vec<(usize, Option<f32>)> = Vec::with_capacity(sm + sn);
    let probes: Vec<&Probe> = mated.iter().map(|(p, _)| p).chain(nonmated).collect();
    let mut answers: Vec<Option<Vec<(biomatch_core::SubjectId, f32)>>> = vec![None; probes.len()];
    for i in (0..sm).chain(mated.len()..mated.len() + sn) {
        let t = Instant::now();
        let c = engine_identify(engine, probes[i], opts, mode)?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        single_top.push((i, c.first().map(|c| c.1)));
        answers[i] = Some(c);
        pb.inc(1);
    }
    pb.finish_and_clear();
    latencies.sort_by(f64::total_cmp);

    let g = engine.gallery();
    let mode = match mode {
        EngineSearch::Exact => SearchMode::Exact,
        _ => SearchMode::Index(AnnParams {
            k_prime: engine.settings().k_prime,
            nprobe: engine.settings().nprobe,
        }),
    };
    let all: Vec<Probe> = probes.iter().map(|&p| p.clone()).collect();
    let pb = bar(all.len() as u64, &format!("{label} (batch)"));
    let t = Instant::now();
    let mut batch_answers = Vec::with_capacity(all.len());
    for chunk in all.chunks(batch.max(1)) {
        let (res, _) = g.identify_batch(chunk, opts, mode)?;
        batch_answers.extend(res);
        pb.inc(chunk.len() as u64);
    }
    let batch_qps = all.len() as f64 / t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    for (i, top) in single_top {
        if batch_answers[i].first().map(|c| c.score) != top {
            bail!("{label}: batched and single-probe searches disagree");
        }
    }
    let answers: Vec<Vec<(biomatch_core::SubjectId, f32)>> = answers
        .into_iter()
        .zip(batch_answers)
        .map(|(single, batched)| {
            single.unwrap_or_else(|| batched.into_iter().map(|c| (c.subject_id, c.score)).collect())
        })
        .collect();

    let (mut mate_scores, mut mate_found, mut rank1) = (Vec::new(), Vec::new(), 0);
    for ((_, identity), c) in mated.iter().zip(&answers) {
        let pos = c.iter().position(|c| parse_subject_id(&c.0) == Some(*identity));
        rank1 += usize::from(pos == Some(0));
        mate_scores.push(pos.map(|i| c[i].1));
        mate_found.push(pos.is_some());
    }
    let top_nonmated = answers[mated.len()..].iter().map(|c| c.first().map(|c| c.1)).collect();
    let candidates = answers.iter().map(|c| c.iter().map(|x| x.0.clone()).collect()).collect();
    Ok(Pass { latencies, mate_scores, mate_found, rank1, top_nonmated, candidates, batch_qps })
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
    let rows = g.store().stats().columns.iter().find(|c| &c.model == m).map_or(0, |c| c.rows);
    let reusable = current.filter(|i| {
        i.manifest.covered_rows == rows
            && a.factory.as_ref().is_none_or(|f| f == &i.manifest.factory)
            && a.shards.is_none_or(|s| s == i.manifest.shards.len())
    });
    let (idx, built) = match reusable {
        Some(i) => (i, false),
        None => {
            let mut params = BuildParams {
                factory: a.factory.clone(),
                nprobe: a.nprobe,
                k_prime: a.k_prime,
                ..BuildParams::default()
            };
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
        "nprobe": idx.manifest.nprobe,
        "build_recall": idx.manifest.recall,
    });
    Ok((info, AnnParams { k_prime: a.k_prime, nprobe: a.nprobe }))
}

/// The synthetic face model's table, from impostor scores of identities disjoint from gallery
/// and probes.
fn face_calibration(pop: &Population, args: &EvalArgs) -> Result<CalibrationTable> {
    let (m, _) = model(pop.dim());
    let mut impostors = pop.impostor_scores(args.calibration_scores, args.population.seed ^ 0xCA1B);
    Ok(CalibrationTable::from_impostor_scores(m, &mut impostors)?)
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
    if args.population.fingers.enabled() {
        return eval_fingers(args, &pop, target_fpir, &dir);
    }
    let (store, enroll_seconds) = fill(&dir, &pop, &args.population.fingers)?;
    let (m, _) = model(pop.dim());
    let g = Gallery::new(store);

    // Calibrate on identities disjoint from gallery and probes.
    let t = Instant::now();
    let table = face_calibration(&pop, args)?;
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
        Arc::new(g),
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

    // The exact baseline. Above EXACT_SINGLE_ABOVE subjects only a sample of probes is timed
    // one at a time; the results of all come from one batched pass over the column.
    let n_probes = mated.len() + nonmated.len();
    let exact = if args.no_exact {
        None
    } else {
        let large = g.store().len() as u64 > EXACT_SINGLE_ABOVE;
        let single = args.exact_single.or(large.then_some(EXACT_SINGLE_SAMPLE));
        let batch = if large { n_probes } else { args.batch };
        Some(run_pass(
            &engine,
            EngineSearch::Exact,
            &mated,
            &nonmated,
            &opts,
            batch,
            single,
            "exact",
        )?)
    };
    let pass = match args.search {
        SearchKind::Exact => None,
        SearchKind::Index => Some(run_pass(
            &engine,
            EngineSearch::Index,
            &mated,
            &nonmated,
            &opts,
            args.batch,
            None,
            "index",
        )?),
    };
    let chosen = match (&pass, &exact) {
        (Some(p), _) => p,
        (None, Some(e)) => e,
        (None, None) => bail!("--no-exact needs --search index: nothing would be searched"),
    };
    let search = if pass.is_some() { "index" } else { "exact" };
    // Share of mated probes whose mate exact search returns that the chosen search returns too.
    let recall_vs_exact = exact.as_ref().map(|exact| {
        let exact_found = exact.mate_found.iter().filter(|&&f| f).count();
        let both =
            exact.mate_found.iter().zip(&chosen.mate_found).filter(|(e, c)| **e && **c).count();
        if exact_found == 0 {
            1.0
        } else {
            both as f64 / exact_found as f64
        }
    });
    let p50 = metrics::percentile(&chosen.latencies, 50.0);
    let exact_p50 = exact.as_ref().map(|e| metrics::percentile(&e.latencies, 50.0));

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
        "recall_vs_exact": recall_vs_exact,
        // Mate among the `max_results` candidates; share of all probes whose exact best
        // candidate the chosen search returns (the side-by-side bench's definitions).
        "mate_hit_rate": chosen.mate_hit_rate(),
        "top1_recall_vs_exact": exact.as_ref().map(|e| chosen.top1_recall_vs(e)),
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
        "exact_p50_ms": exact_p50,
        "exact_p99_ms": exact.as_ref().map(|e| metrics::percentile(&e.latencies, 99.0)),
        "exact_single_probes": exact.as_ref().map(|e| e.latencies.len()),
        "exact_batch_qps": exact.as_ref().map(|e| e.batch_qps),
        "speedup_p50_vs_exact": exact_p50.map(|e| e / p50),
        "probes_timed": chosen.latencies.len(),
        "exact_mate_hit_rate": exact.as_ref().map(|e| e.mate_hit_rate()),
        "index": index_info,
        "k_prime": args.index.k_prime,
    });
    print_result(out, args, &pop, enroll_seconds, calib_seconds);
    Ok(())
}

/// One search of the fingers eval, as the engine answered it without an FPIR cut.
struct Searched {
    /// Per candidate, best first: its identity (when a synthetic subject) and fused FMR.
    candidates: Vec<(Option<u64>, f64)>,
    /// N of the engine's cut (FMR ≤ target / N).
    gallery_size: u64,
    shortlist: FingerShortlist,
    /// Share of the probe positions' gallery fingers the MCC matcher compared.
    compared_share: f64,
    ms: f64,
}

/// What the mated searches of the fingers eval found.
#[derive(Default)]
struct MatedStats {
    /// Fused score (−log10 FMR) of the mate when it was returned.
    mate_scores: Vec<Option<f32>>,
    /// Whether the mate survives the engine's cut at the target FPIR.
    hits: usize,
    rank1: usize,
    preselected_mates: usize,
}

/// A fused score a hair above `s`: the empirical threshold passes nothing at `s` itself.
fn next_up(s: f32) -> f32 {
    if s.is_finite() && s >= 0.0 {
        f32::from_bits(s.to_bits() + 1)
    } else {
        s
    }
}

/// The fused-score threshold at which the non-mated searches' top scores give an FPIR of at
/// most `target` (a search is positive when its top score is at or above the threshold).
fn empirical_threshold(nonmated_top: &[Option<f32>], target: f64) -> f32 {
    let mut tops: Vec<f32> = nonmated_top.iter().flatten().copied().collect();
    tops.sort_by(|a, b| b.total_cmp(a));
    let allowed = (target * nonmated_top.len() as f64).floor() as usize;
    tops.get(allowed).map_or(0.0, |&s| next_up(s))
}

/// `eval-synthetic` with fingers (and faces unless `--no-face`): every probe through
/// `Engine::prepare` + `Engine::identify`, timed, with the finger shortlist kept.
fn eval_fingers(args: &EvalArgs, pop: &Population, target_fpir: f64, dir: &Path) -> Result<()> {
    let fingers = &args.population.fingers;
    let (store, enroll_seconds) = fill(dir, pop, fingers)?;
    let (m, _) = model(pop.dim());
    let code = biomatch_gallery::finger_code_spec().model;
    // Index mode: the generations of the face model and of the fingers' codes, built (or
    // reused) before the timed start.
    let mut index_models = Vec::new();
    if args.search == SearchKind::Index {
        if fingers.face() {
            index_models.push(("face", m.clone()));
        }
        index_models.push(("fingers", code.clone()));
    }
    let mut index_info = serde_json::Map::new();
    {
        let g = Gallery::new(store.clone());
        for (name, model) in &index_models {
            index_info.insert((*name).to_owned(), prepare_index(&g, model, &args.index)?.0);
        }
    }
    // A service start: the store, its index generations, the finger search, the engine.
    // Timed from a closed store.
    drop(store);

    let t = Instant::now();
    let face = if fingers.face() { Some(face_calibration(pop, args)?) } else { None };
    let calib_seconds = t.elapsed().as_secs_f64();
    let mcc = finger_calibration()?;
    let models: Vec<EngineModel> = face
        .into_iter()
        .map(|calibration| EngineModel {
            id: m.clone(),
            dim: pop.dim(),
            kind: ModelKind::Face,
            calibration,
        })
        .collect();
    let t = Instant::now();
    let store = Arc::new(
        Store::open(dir, store_options(pop, fingers))
            .with_context(|| format!("opening store {}", dir.display()))?,
    );
    let gallery = Gallery::new(store.clone());
    let load = LoadOptions {
        memory_budget: args.index.memory_budget_mb.map(|mb| mb << 20),
        ..LoadOptions::default()
    };
    for (_, model) in &index_models {
        gallery.load_index(model, &load)?.context("the index generation does not load")?;
    }
    let t_fingers = Instant::now();
    let finger_search = open_fingers(FingerSearchParams {
        penetration: args.finger_penetration,
        min_candidates: args.finger_min_candidates,
        exhaustive_below: args.finger_exhaustive_below,
        ..FingerSearchParams::default()
    })?;
    let open_fingers_seconds = t_fingers.elapsed().as_secs_f64();
    let engine = Engine::new(
        Arc::new(gallery),
        Some((finger_search, mcc)),
        models,
        Settings { k_prime: args.index.k_prime, nprobe: args.index.nprobe },
        None,
    );
    let startup_seconds = t.elapsed().as_secs_f64();
    let index_info = if index_info.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Object(index_info)
    };
    let mode = match args.search {
        SearchKind::Exact => EngineSearch::Exact,
        SearchKind::Index => EngineSearch::Index,
    };

    // Probes: the face sample of each probe identity and impression 1 of its fingers.
    let probes = pop.probes(args.probes, args.probes, args.population.seed ^ 0x9B0B)?;
    let cfg = FastFingerConfig::default();
    let (probe_face, probe_fingers) = match args.probe {
        ProbeModalities::Both => (fingers.face(), true),
        ProbeModalities::Face if fingers.face() => (true, false),
        ProbeModalities::Fingers => (false, true),
        ProbeModalities::Face => bail!("--probe face needs a population with faces"),
    };
    let to_samples = |p: &biomatch_datasets::Probe| -> Result<Samples> {
        let vectors = if probe_face {
            vec![(Modality::Face, Template::new(m.clone(), pop.dim(), p.vector.clone())?)]
        } else {
            Vec::new()
        };
        let prints =
            if probe_fingers { fingers.templates(&cfg, p.identity, 1)? } else { Vec::new() };
        Ok(Samples { vectors, fingers: prints })
    };
    let mated: Vec<(Samples, u64)> =
        probes.mated.par_iter().map(|p| Ok((to_samples(p)?, p.identity))).collect::<Result<_>>()?;
    let nonmated: Vec<Samples> =
        probes.nonmated.par_iter().map(to_samples).collect::<Result<_>>()?;
    drop(probes);

    let params = IdentifyParams {
        max_results: args.max_results,
        threshold: None,
        // One search per probe: the engine's cut (fused FMR ≤ target / N) is applied below to
        // the uncut candidate lists, which also give the empirical threshold.
        target_fpir: None,
        subset: None,
        mode,
        keep_shortlist: true,
    };
    let search = |samples: Samples| -> Result<(Searched, Vec<biomatch_core::SubjectId>)> {
        let t = Instant::now();
        let probe = engine.prepare(samples)?;
        let r = engine.identify(&probe, &params)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let mut shortlist = r.finger_shortlist.unwrap_or_default();
        let mut shortlisted = std::mem::take(&mut shortlist.shortlisted);
        shortlisted.sort_unstable();
        let (compared, of) = r
            .finger_search
            .iter()
            .fold((0, 0), |(c, n), (_, i)| (c + i.compared, n + i.gallery_fingers));
        let compared_share = compared as f64 / of.max(1) as f64;
        let candidates =
            r.candidates.into_iter().map(|c| (parse_subject_id(&c.subject), c.fmr)).collect();
        let s =
            Searched { candidates, gallery_size: r.gallery_size, shortlist, compared_share, ms };
        Ok((s, shortlisted))
    };
    let cut = |s: &Searched, fmr: f64| fmr <= target_fpir / s.gallery_size.max(1) as f64;

    let pb = bar((mated.len() + nonmated.len()) as u64, "search");
    let mut all: Vec<Searched> = Vec::with_capacity(mated.len() + nonmated.len());
    let mut ms = MatedStats::default();
    let mated_count = mated.len();
    for (samples, identity) in mated {
        let (s, shortlisted) = search(samples)?;
        let pos = s.candidates.iter().position(|c| c.0 == Some(identity));
        let mate_fmr = pos.map(|i| s.candidates[i].1);
        ms.mate_scores.push(mate_fmr.map(score_of_fmr));
        ms.hits += usize::from(mate_fmr.is_some_and(|f| cut(&s, f)));
        ms.rank1 += usize::from(pos == Some(0));
        ms.preselected_mates +=
            usize::from(shortlisted.binary_search(&subject_id(identity)).is_ok());
        all.push(s);
        pb.inc(1);
    }
    let mut nonmated_top = Vec::with_capacity(nonmated.len());
    let mut false_positives = 0;
    for samples in nonmated {
        let (s, _) = search(samples)?;
        let top = s.candidates.first().map(|c| c.1);
        nonmated_top.push(top.map(score_of_fmr));
        false_positives += usize::from(top.is_some_and(|f| cut(&s, f)));
        all.push(s);
        pb.inc(1);
    }
    pb.finish_and_clear();

    let searches = all.len().max(1) as f64;
    let mut latencies: Vec<f64> = all.iter().map(|s| s.ms).collect();
    latencies.sort_by(f64::total_cmp);
    let penetration = all
        .iter()
        .map(|s| s.shortlist.subjects as f64 / s.shortlist.gallery_subjects.max(1) as f64)
        .sum::<f64>()
        / searches;
    let comparisons =
        all.iter().map(|s| s.shortlist.mcc_comparisons as f64).sum::<f64>() / searches;
    let preselected = all.iter().filter(|s| s.shortlist.preselected).count() as f64 / searches;
    let mapped = all.iter().map(|s| s.shortlist.mapped_subjects).sum::<usize>() as f64
        / all.iter().map(|s| s.shortlist.subjects).sum::<usize>().max(1) as f64;
    let compared_share = all.iter().map(|s| s.compared_share).sum::<f64>() / searches;
    let nonmated_count = nonmated_top.len();
    let gallery_size = all.first().map_or(0, |s| s.gallery_size);
    let threshold_fmr = target_fpir / gallery_size.max(1) as f64;
    let empirical = empirical_threshold(&nonmated_top, target_fpir);
    let mated_n = mated_count.max(1) as f64;
    let g = engine.gallery();
    let finger_search = engine.fingers().context("the engine has no finger search")?;

    let out = json!({
        "subjects": g.store().len(),
        "mated_probes": mated_count,
        "nonmated_probes": nonmated_count,
        "face": fingers.face(),
        "fnir": (mated_count - ms.hits) as f64 / mated_n,
        "fpir": false_positives as f64 / nonmated_count.max(1) as f64,
        "fnir_empirical": metrics::fnir(&ms.mate_scores, empirical),
        "threshold_empirical": empirical,
        "threshold": score_of_fmr(threshold_fmr),
        "threshold_fmr": threshold_fmr,
        "gallery_size": gallery_size,
        "target_fpir": target_fpir,
        "target_fpir_mosip": mosip_from_fpir(target_fpir),
        "max_results": args.max_results,
        "p50_ms": metrics::percentile(&latencies, 50.0),
        "p99_ms": metrics::percentile(&latencies, 99.0),
        "search": match args.search { SearchKind::Exact => "exact", SearchKind::Index => "index" },
        "probe": format!("{:?}", args.probe).to_lowercase(),
        "index": index_info,
        "fingers": {
            "per_subject": fingers.fingers_per_subject,
            "gallery_fingers": g.store().finger_counts().1,
            "code_model": finger_search.code_model().to_string(),
            "preselection_hit_rate": ms.preselected_mates as f64 / mated_n,
            "preselected_share": preselected,
            "penetration": penetration,
            "compared_share": compared_share,
            "mcc_comparisons_per_search": comparisons,
            "mcc_templates_mapped_share": mapped,
            "mated_rank1_hit_rate": ms.rank1 as f64 / mated_n,
            "resident_bytes_per_finger": engine.finger_resident_bytes_per_finger(),
            "startup_seconds": startup_seconds,
            "open_fingers_seconds": open_fingers_seconds,
        },
        "calibration_impostors": if fingers.face() { args.calibration_scores } else { 0 },
    });
    print_result(out, args, pop, enroll_seconds, calib_seconds);
    Ok(())
}
