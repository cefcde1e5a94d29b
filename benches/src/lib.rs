//! Shared fixtures for the benchmarks: seeded synthetic galleries built through the real store.

pub mod finger_cache;

use biomatch_core::{Modality, ModelId, Template};
use biomatch_datasets::{subject_id, Population, PopulationConfig};
use biomatch_gallery::{Enrollment, ModelSpec, Probe, Store, StoreOptions};

/// The model id synthetic templates are tagged with.
pub fn synthetic_model() -> ModelId {
    ModelId::new("synthetic-face", "1").expect("valid model id")
}

/// A store in a temporary directory holding `n` synthetic identities (sealed into segments, as
/// a long-running gallery would be), plus the population that generated it.
#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub population: Population,
}

impl Fixture {
    pub fn new(n: u64, dim: usize, seed: u64) -> Fixture {
        let population = Population::new(PopulationConfig {
            identities: n,
            dim,
            seed,
            ..PopulationConfig::default()
        })
        .expect("valid population");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(
            dir.path(),
            StoreOptions::new(vec![ModelSpec { model: synthetic_model(), dim }]),
        )
        .expect("open store");
        for batch in population.enrolment_batches(10_000) {
            let e: Vec<Enrollment> = batch
                .into_iter()
                .map(|(i, v)| Enrollment {
                    subject: subject_id(i),
                    templates: vec![(
                        Modality::Face,
                        Template::new(synthetic_model(), dim, v).expect("valid"),
                    )],
                    fingers: Vec::new(),
                })
                .collect();
            for r in store.enroll_batch(&e).expect("enroll") {
                r.expect("enroll item");
            }
        }
        store.checkpoint().expect("checkpoint");
        Fixture { dir, store, population }
    }

    /// `count` mated probes (seeded).
    pub fn probes(&self, count: usize, seed: u64) -> Vec<Probe> {
        let set = self.population.probes(count, 0, seed).expect("probes");
        set.mated
            .into_iter()
            .map(|p| Probe {
                modality: Modality::Face,
                template: Template::new(synthetic_model(), self.population.dim(), p.vector)
                    .expect("valid"),
            })
            .collect()
    }

    /// The gallery as plain f32 rows, for the naive baseline.
    pub fn f32_rows(&self) -> Vec<f32> {
        let mut out = Vec::new();
        let m = synthetic_model();
        self.store
            .scan(&m, 65_536, |b| {
                for &r in b.rows() {
                    out.extend(b.vector(r).iter().map(|h| h.to_f32()));
                }
            })
            .expect("scan");
        out
    }
}

/// The baseline: a single-threaded scan over f32 rows with an iterator dot product and a full
/// sort-free top-k (what a first implementation would write).
pub fn naive_top_k(rows: &[f32], dim: usize, probe: &[f32], k: usize) -> Vec<(f32, usize)> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, r) in rows.chunks_exact(dim).enumerate() {
        let s: f32 = r.iter().zip(probe).map(|(a, b)| a * b).sum();
        if best.len() < k || s > best[best.len() - 1].0 {
            let pos = best.partition_point(|b| b.0 >= s);
            best.insert(pos, (s, i));
            best.truncate(k);
        }
    }
    best
}

/// The machine a measurement ran on, for reports: CPU model and hardware threads.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpu}, {} threads", std::thread::available_parallelism().map_or(1, |n| n.get()))
}
