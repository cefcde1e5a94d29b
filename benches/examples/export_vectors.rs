//! Export the synthetic population of `biomatch eval-synthetic` as `.bmvec` files, so that other
//! search systems (FAISS, hnswlib, usearch: `benches/peers/`) are measured on exactly the vectors
//! biomatch enrolls and the probes its evaluation searches.
//!
//! Writes, into `--out`:
//! - `gallery.bmvec`: sample 0 of identities `0..subjects` in identity order (label = identity,
//!   sample = 0), what `eval-synthetic` and `enroll-synthetic` enroll;
//! - `probes.bmvec`: the probe set of `eval-synthetic --probes P`, built by the same call
//!   (`Population::probes(P, P, seed ^ 0x9B0B)`): the `P` mated probes first, then the `P`
//!   non-mated ones (identities never enrolled, `>= subjects`); label = identity, sample = 1.
//!   Its metadata says how many are mated.
//!
//! The population flags mean what they mean for `eval-synthetic`; give both the same values.
//! Prints one JSON line. Used by `scripts/bench.sh`.
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example export_vectors -- \
//!     --subjects 100000 --families 10000 --seed 1 --probes 1000 --out target/bench/100k/vectors
//! ```

use anyhow::{ensure, Context, Result};
use biomatch_datasets::{write_vectors, ClusterConfig, Population, PopulationConfig};
use clap::Parser;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The probe seed `eval-synthetic` derives from the population seed (`matcher/src/synthetic.rs`).
const PROBE_SEED_XOR: u64 = 0x9B0B;

#[derive(Debug, Parser)]
#[command(
    about = "Export eval-synthetic's gallery and probes as .bmvec files; prints one JSON line"
)]
struct Args {
    /// Number of enrolled identities.
    #[arg(long, default_value_t = 100_000)]
    subjects: u64,
    /// Population seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Template dimension.
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Expected cosine between two samples of one identity.
    #[arg(long, default_value_t = 0.70)]
    genuine_mean: f64,
    /// Clustered mode: number of families (look-alikes); off when absent.
    #[arg(long)]
    families: Option<u64>,
    /// Clustered mode: expected cosine between identity centres of one family.
    #[arg(long, default_value_t = 0.35)]
    within_family_cosine: f64,
    /// Mated probes, and as many non-mated probes.
    #[arg(long, default_value_t = 1000)]
    probes: usize,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.probes >= 1, "--probes must be at least 1");
    let pop = Population::new(PopulationConfig {
        identities: args.subjects,
        dim: args.dim,
        seed: args.seed,
        genuine_mean: args.genuine_mean,
        clustered: args.families.map(|families| ClusterConfig {
            families,
            within_family_cosine: args.within_family_cosine,
        }),
    })
    .context("invalid population parameters")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let t = Instant::now();
    let gallery = args.out.join("gallery.bmvec");
    let enrolled = pop.write_enrolment(&gallery)?;
    let gallery_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let probe_seed = args.seed ^ PROBE_SEED_XOR;
    let set = pop.probes(args.probes, args.probes, probe_seed)?;
    let mut meta = pop.metadata("probes");
    meta["mated"] = json!(set.mated.len());
    meta["nonmated"] = json!(set.nonmated.len());
    meta["probe_seed"] = json!(probe_seed);
    meta["order"] = json!("mated probes first, then non-mated");
    let probes = args.out.join("probes.bmvec");
    let records = set.mated.iter().chain(&set.nonmated).map(|p| (p.identity, p.sample, &p.vector));
    let written = write_vectors(&probes, &meta, pop.dim(), records)?;
    println!(
        "{}",
        json!({
            "gallery": gallery,
            "gallery_records": enrolled,
            "gallery_seconds": gallery_seconds,
            "probes": probes,
            "probe_records": written,
            "mated": set.mated.len(),
            "nonmated": set.nonmated.len(),
            "probe_seed": probe_seed,
            "probe_seconds": t.elapsed().as_secs_f64(),
            "population": pop.config(),
        })
    );
    Ok(())
}
