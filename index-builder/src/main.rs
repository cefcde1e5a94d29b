//! `biomatch-index-builder`: rebuild and check index generations overnight, next to a running
//! service. The store is opened read-only (no lock, nothing written but the new generation), a
//! build takes the per-model build lock, and the service picks the new generation up with
//! `POST /v1/admin/index/reload`. Every command prints one JSON object.

use anyhow::{bail, Context, Result};
use biomatch_core::{ModelId, Template};
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{
    AnnParams, Gallery, GalleryError, IdentifyOptions, Probe, SearchMode, Store, StoreOptions,
};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "biomatch-index-builder", version, about = "Offline index builds and checks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a new generation from a snapshot of the store and make it current.
    Build {
        #[arg(long)]
        data: PathBuf,
        /// `name@version`; default: every model with templates.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        factory: Option<String>,
        #[arg(long)]
        shards: Option<usize>,
        /// IVF lists probed per shard: recorded in the generation (the service's default for
        /// it) and used by the recall gate. Default: half of the lists.
        #[arg(long)]
        nprobe: Option<usize>,
        /// Candidates per shard re-ranked by the recall gate (the service's `search.k_prime`).
        #[arg(long, default_value_t = AnnParams::default().k_prime)]
        k_prime: usize,
        /// The recall gate: refuse (exit 3, `CURRENT` untouched) a generation whose sampled
        /// recall against exact search, or any shard's, is below this. 0 disables the refusal
        /// (the sample is still taken and reported).
        #[arg(long, default_value_t = 0.95)]
        recall_floor: f64,
        /// Probes of the recall sample (stored templates, perturbed to a mate-like cosine).
        #[arg(long, default_value_t = ann::RecallParams::default().probes)]
        recall_probes: usize,
        /// Also write the build report (JSON) to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Load the current generation (checksums, budget) and compare it with exact search on
    /// stored templates used as probes.
    Verify {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        model: Option<String>,
        /// Stored templates used as probes (spread over the gallery).
        #[arg(long, default_value_t = 200)]
        probes: usize,
        /// Refuse a generation needing more memory than this (MiB).
        #[arg(long)]
        memory_budget_mb: Option<u64>,
    },
}

fn models(store: &Store, model: &Option<String>) -> Result<Vec<ModelId>> {
    match model {
        Some(m) => Ok(vec![ModelId::parse(m)?]),
        None => {
            Ok(store.stats().columns.into_iter().filter(|c| c.live > 0).map(|c| c.model).collect())
        }
    }
}

/// The build report of one model: stages, recall sample, bytes.
fn build_report(m: &ModelId, r: &ann::BuildReport) -> serde_json::Value {
    let man = &r.manifest;
    json!({
        "model": m.to_string(), "generation": man.generation, "factory": man.factory,
        "shards": man.shards.len(), "vectors": man.vectors, "covered_rows": man.covered_rows,
        "covered_seq": man.covered_seq, "nprobe": man.nprobe,
        "build_seconds": man.build_seconds,
        "stages": {
            "snapshot_seconds": r.snapshot_seconds, "train_seconds": r.train_seconds,
            "add_seconds": r.add_seconds, "verify_seconds": r.verify_seconds,
            "mcc_seconds": r.mcc_seconds,
        },
        "train_vectors": man.train_vectors,
        "recall": man.recall,
        "index_bytes": r.index_bytes,
        "index_bytes_per_template": r.index_bytes as f64 / man.vectors.max(1) as f64,
        "extra_bytes": man.extra.iter().map(|f| f.bytes).sum::<u64>(),
    })
}

/// [`ann::build_with`] with a progress bar per stage on stderr: rows copied and vectors added
/// with their rate and ETA, training and the recall sample as spinners with the elapsed time.
fn build_with_progress(
    store: &Store,
    m: &ModelId,
    params: &BuildParams,
) -> std::result::Result<ann::BuildReport, GalleryError> {
    use ann::BuildStage as S;
    let ctl = ann::BuildControl::new(false);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut stage = None;
            let mut bar: Option<indicatif::ProgressBar> = None;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (s, pos, len) = ctl.counts();
                if stage != Some(s) {
                    if let Some(b) = bar.take() {
                        b.finish();
                    }
                    bar = match s {
                        S::Snapshot | S::Add => Some(counting_bar(m, s, len)),
                        S::Train | S::Verify => Some(spinner(m, s)),
                        _ => None,
                    };
                    stage = Some(s);
                }
                if let Some(b) = &bar {
                    if len > 0 {
                        b.set_length(len);
                        b.set_position(pos);
                    }
                    b.tick();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if let Some(b) = bar {
                b.finish();
            }
        });
        let r = ann::build_with(store, m, params, &ctl);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

fn stage_name(s: ann::BuildStage) -> &'static str {
    use ann::BuildStage as S;
    match s {
        S::Waiting => "waiting",
        S::Snapshot => "snapshot",
        S::Train => "train",
        S::Add => "add",
        S::Verify => "recall",
        S::Publish => "publish",
        S::Done => "done",
    }
}

fn counting_bar(m: &ModelId, s: ann::BuildStage, len: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} {msg:>8} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    b.set_prefix(m.to_string());
    b.set_message(stage_name(s));
    b
}

fn spinner(m: &ModelId, s: ann::BuildStage) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new_spinner();
    b.set_style(
        indicatif::ProgressStyle::with_template("{prefix} {msg:>8} {spinner} {elapsed}")
            .expect("valid template"),
    );
    b.set_prefix(m.to_string());
    b.set_message(stage_name(s));
    b
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BIOMATCH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Build {
            data,
            model,
            factory,
            shards,
            nprobe,
            k_prime,
            recall_floor,
            recall_probes,
            report,
        } => {
            if !(0.0..=1.0).contains(&recall_floor) {
                bail!("--recall-floor must be in 0..=1; got {recall_floor}");
            }
            let store = Store::open_read_only(&data, StoreOptions::new(Vec::new()))
                .with_context(|| format!("opening {} read-only", data.display()))?;
            let mut params = BuildParams {
                factory,
                nprobe,
                k_prime,
                recall_floor: (recall_floor > 0.0).then_some(recall_floor),
                ..BuildParams::default()
            };
            params.recall.probes = recall_probes;
            if let Some(s) = shards {
                params.shards = s;
            }
            let (mut built, mut refused) = (Vec::new(), Vec::new());
            for m in models(&store, &model)? {
                match build_with_progress(&store, &m, &params) {
                    Ok(r) => built.push(build_report(&m, &r)),
                    Err(e @ GalleryError::RecallBelowFloor { .. }) => {
                        tracing::error!(model = %m, "{e}");
                        refused.push(json!({
                            "model": m.to_string(), "code": "recall_below_floor",
                            "message": e.to_string(),
                        }));
                    }
                    Err(e) => return Err(e).with_context(|| format!("building the index of {m}")),
                }
            }
            let out = json!({ "built": built, "refused": refused });
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_vec_pretty(&out)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{out}");
            if !refused.is_empty() {
                std::process::exit(3);
            }
        }
        Command::Verify { data, model, probes, memory_budget_mb } => {
            let store = Arc::new(
                Store::open_read_only(&data, StoreOptions::new(Vec::new()))
                    .with_context(|| format!("opening {} read-only", data.display()))?,
            );
            let g = Gallery::new(store.clone());
            let opts = LoadOptions {
                memory_budget: memory_budget_mb.map(|m| m << 20),
                ..LoadOptions::default()
            };
            let mut out = Vec::new();
            for m in models(&store, &model)? {
                let Some(idx) = g.load_index(&m, &opts)? else {
                    bail!("model {m} has no index generation");
                };
                let col = store
                    .stats()
                    .columns
                    .into_iter()
                    .find(|c| c.model == m)
                    .context("model column")?;
                // Stored templates as probes: each one's own subject should come first.
                let mut probe_set = Vec::new();
                let step = (col.live / probes.max(1)).max(1);
                store.scan(&m, 65_536, |b| {
                    for (i, &row) in b.rows().iter().enumerate() {
                        if i % step == 0 && probe_set.len() < probes {
                            let v: Vec<f32> = b.vector(row).iter().map(|h| h.to_f32()).collect();
                            probe_set.push((b.subject(row), b.modality(row), v));
                        }
                    }
                })?;
                let mut probes_v = Vec::new();
                for (s, modality, v) in probe_set {
                    let t = Template::new(m.clone(), col.dim, v)?;
                    probes_v.push((s, Probe { modality, template: t }));
                }
                let o = IdentifyOptions { max_results: 1, ..Default::default() };
                let (mut hits_exact, mut hits_index) = (0, 0);
                let (mut t_exact, mut t_index) = (0.0, 0.0);
                for (s, p) in &probes_v {
                    let t = Instant::now();
                    let (e, _) = g.identify(p, &o, SearchMode::Exact)?;
                    t_exact += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let (a, _) = g.identify(p, &o, SearchMode::Index(AnnParams::default()))?;
                    t_index += t.elapsed().as_secs_f64();
                    hits_exact += usize::from(e.first().is_some_and(|c| &c.subject_id == s));
                    hits_index += usize::from(a.first().is_some_and(|c| &c.subject_id == s));
                }
                let n = probes_v.len().max(1) as f64;
                // Mate-like probes (perturbed stored templates) against exact search.
                let rp = ann::RecallParams { probes, ..ann::RecallParams::default() };
                let recall = g.sample_recall(&m, &rp, AnnParams::default())?;
                out.push(json!({
                    "model": m.to_string(), "generation": idx.manifest.generation, "vectors": idx.manifest.vectors,
                    "covered_seq": idx.manifest.covered_seq, "store_last_seq": store.stats().last_seq,
                    "bytes_per_template": idx.bytes_per_template(), "probes": probes_v.len(),
                    "self_top1_exact": hits_exact as f64 / n, "self_top1_index": hits_index as f64 / n,
                    "mean_ms_exact": t_exact * 1e3 / n, "mean_ms_index": t_index * 1e3 / n,
                    "recall": recall,
                    "modality": probes_v.first().map(|p| p.1.modality.to_string()).unwrap_or_default(),
                }));
            }
            println!("{}", json!({ "verified": out }));
        }
    }
    Ok(())
}
