//! `biomatch-index-builder`: rebuild and check index generations overnight, next to a running
//! service. The store is opened read-only (no lock, nothing written but the new generation), a
//! build takes the per-model build lock, and the service picks the new generation up with
//! `POST /v1/admin/index/reload`. Every command prints one JSON object.

use anyhow::{bail, Context, Result};
use biomatch_core::{ModelId, Template};
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{
    AnnParams, Gallery, IdentifyOptions, Probe, SearchMode, Store, StoreOptions,
};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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
        Command::Build { data, model, factory, shards } => {
            let store = Store::open_read_only(&data, StoreOptions::new(Vec::new()))
                .with_context(|| format!("opening {} read-only", data.display()))?;
            let mut params = BuildParams { factory, ..BuildParams::default() };
            if let Some(s) = shards {
                params.shards = s;
            }
            let mut out = Vec::new();
            for m in models(&store, &model)? {
                let r = ann::build(&store, &m, &params)?;
                out.push(json!({
                    "model": m.to_string(), "generation": r.manifest.generation, "factory": r.manifest.factory,
                    "shards": r.manifest.shards.len(), "vectors": r.manifest.vectors,
                    "covered_seq": r.manifest.covered_seq, "build_seconds": r.manifest.build_seconds,
                    "train_seconds": r.train_seconds, "add_seconds": r.add_seconds,
                }));
            }
            println!("{}", json!({ "built": out }));
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
                out.push(json!({
                    "model": m.to_string(), "generation": idx.manifest.generation, "vectors": idx.manifest.vectors,
                    "covered_seq": idx.manifest.covered_seq, "store_last_seq": store.stats().last_seq,
                    "bytes_per_template": idx.bytes_per_template(), "probes": probes_v.len(),
                    "self_top1_exact": hits_exact as f64 / n, "self_top1_index": hits_index as f64 / n,
                    "mean_ms_exact": t_exact * 1e3 / n, "mean_ms_index": t_index * 1e3 / n,
                    "modality": probes_v.first().map(|p| p.1.modality.to_string()).unwrap_or_default(),
                }));
            }
            println!("{}", json!({ "verified": out }));
        }
    }
    Ok(())
}
