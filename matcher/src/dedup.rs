//! `biomatch dedup-gallery`: the backlog deduplication of a store from the command line (the
//! work is [`biomatch_engine::dedup`]), with a progress bar and ETA, resumable (`--resume`), and
//! an optional evaluation against planted duplicates (`--truth`, e.g. the `truth.csv` of
//! `biomatch export-synthetic-backlog`). The store is opened read-only (a snapshot), so it can
//! run next to the service on the same data directory.

use crate::config::Config;
use crate::state::{load_finger_calibration, load_models};
use anyhow::{bail, Context, Result};
use biomatch_engine::dedup::{DedupCluster, DedupControl, DedupParams, DedupSummary};
use biomatch_engine::{Engine, SearchKind};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Which vector search the self-join uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupSearch {
    /// The serving index generation when there is one (exact re-rank), exact otherwise.
    Auto,
    Exact,
    Index,
}

impl From<DedupSearch> for SearchKind {
    fn from(s: DedupSearch) -> Self {
        match s {
            DedupSearch::Auto => SearchKind::Auto,
            DedupSearch::Exact => SearchKind::Exact,
            DedupSearch::Index => SearchKind::Index,
        }
    }
}

/// `biomatch dedup-gallery`.
#[derive(Debug, Clone, clap::Args)]
pub struct DedupArgs {
    /// Store directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: checkpoint, `pairs.csv`, `clusters.jsonl`, `summary.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Target false-positive identification rate of each subject's search: a pair is kept when
    /// its fused FMR ≤ target / N.
    #[arg(long, default_value_t = 1e-3)]
    pub target_fpir: f64,
    /// Candidates kept per subject (besides itself).
    #[arg(long, default_value_t = 10)]
    pub max_candidates: usize,
    /// Continue the run checkpointed in `--out` (its parameters must be the same).
    #[arg(long)]
    pub resume: bool,
    /// Configuration file (TOML) for the models, their calibration and the search settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Vector search of the self-join.
    #[arg(long, value_enum, default_value_t = DedupSearch::Auto)]
    pub search: DedupSearch,
    /// Subjects per checkpoint.
    #[arg(long, default_value_t = DedupParams::default().chunk)]
    pub chunk: usize,
    /// Planted pairs (CSV `subject_a,subject_b` with a header line): report found/planted and
    /// the pairs found outside them (false pairs).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The evaluation against planted pairs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TruthReport {
    pub planted: u64,
    pub found_planted: u64,
    pub found_rate: f64,
    /// Pairs found that are not planted.
    pub false_pairs: u64,
    /// Planted pairs not found (first 20).
    pub missed: Vec<(String, String)>,
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// Read planted pairs: CSV, a header line, then `subject_a,subject_b` per line.
pub fn read_truth(path: &Path) -> Result<HashSet<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split(',');
        match (f.next(), f.next()) {
            (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
                out.insert(ordered(a.trim(), b.trim()));
            }
            _ => bail!("{} line {}: expected subject_a,subject_b", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Count found/planted and false pairs of finished clusters.
pub fn evaluate(clusters: &[DedupCluster], truth: &HashSet<(String, String)>) -> TruthReport {
    let found: HashSet<(String, String)> =
        clusters.iter().flat_map(|c| c.pairs.iter().map(|p| ordered(&p.a, &p.b))).collect();
    let found_planted = truth.iter().filter(|p| found.contains(*p)).count() as u64;
    let mut missed: Vec<(String, String)> =
        truth.iter().filter(|p| !found.contains(*p)).cloned().collect();
    missed.sort();
    missed.truncate(20);
    TruthReport {
        planted: truth.len() as u64,
        found_planted,
        found_rate: if truth.is_empty() { 1.0 } else { found_planted as f64 / truth.len() as f64 },
        false_pairs: found.iter().filter(|p| !truth.contains(*p)).count() as u64,
        missed,
    }
}

/// The engine over a read-only snapshot of the store at `data`, as configured.
pub fn open_engine(config: Option<&Path>, data: &Path) -> Result<Engine> {
    let mut config = Config::load(config).map_err(anyhow::Error::msg)?;
    config.data = data.to_owned();
    config.validate().map_err(anyhow::Error::msg)?;
    let models = load_models(&config).map_err(anyhow::Error::msg)?;
    let fingers = load_finger_calibration(&config).map_err(anyhow::Error::msg)?;
    crate::serve::open_engine(&config, &models, fingers.as_ref(), None, true)
        .map_err(anyhow::Error::msg)
}

/// Run `dedup-gallery`: print the summary (and the truth report) as one JSON line last.
pub fn run_cli(args: &DedupArgs) -> Result<()> {
    if let Some(t) = &args.truth {
        // Fail on a bad truth file before hours of work, not after.
        read_truth(t)?;
    }
    let engine = open_engine(args.config.as_deref(), &args.data)?;
    let params = DedupParams {
        target_fpir: args.target_fpir,
        max_candidates: args.max_candidates,
        mode: args.search.into(),
        chunk: args.chunk,
    };
    let ctl = Arc::new(DedupControl::new());
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let watcher = {
        let ctl = ctl.clone();
        let quiet = args.quiet;
        std::thread::Builder::new().name("biomatch-dedup-progress".into()).spawn(move || {
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                crate::progress_bar(0, "dedup")
            };
            let mut started = false;
            loop {
                let total = ctl.total.load(Ordering::Relaxed);
                if total > 0 && !started {
                    bar.set_length(total);
                    bar.set_position(ctl.done_before.load(Ordering::Relaxed));
                    bar.reset_eta();
                    started = true;
                }
                if started {
                    bar.set_position(ctl.done.load(Ordering::Relaxed));
                }
                match stopped.recv_timeout(Duration::from_millis(250)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
            bar.finish_and_clear();
        })?
    };
    let result = engine.dedup(&args.out, &params, args.resume, &ctl);
    drop(stop);
    let _ = watcher.join();
    let summary: DedupSummary = result.map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
    let mut line = serde_json::to_value(&summary)?;
    if let (Some(t), true) = (&args.truth, summary.complete) {
        let truth = read_truth(t)?;
        let clusters = biomatch_engine::dedup::read_clusters(&args.out)?;
        line["truth"] = serde_json::to_value(evaluate(&clusters, &truth))?;
    }
    line["out"] = serde_json::to_value(&args.out)?;
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}
