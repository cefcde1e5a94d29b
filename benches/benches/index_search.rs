//! The indexed 1:N path — shard fan-out over FAISS, union, exact fp16 re-rank, growing-segment
//! scan — against exact search on the same gallery in the same process (the baseline).
//!
//! `cargo bench -p biomatch-benches --bench index_search` (BIOMATCH_BENCH_N to change the size)

use biomatch_benches::{synthetic_model, Fixture};
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_gallery::{AnnParams, Gallery, IdentifyOptions, SearchMode};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;

const DIM: usize = 128;
const SEED: u64 = 11;

fn index_search(c: &mut Criterion) {
    let n: u64 =
        std::env::var("BIOMATCH_BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let fx = Fixture::new(n, DIM, SEED);
    let probes = fx.probes(256, SEED + 1);
    let Fixture { dir, store, .. } = fx;
    let g = Gallery::new(Arc::new(store));
    let m = synthetic_model();
    let opts = IdentifyOptions { max_results: 10, ..Default::default() };
    let mut group = c.benchmark_group(format!("identify_{}k", n / 1000));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("exact_baseline", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(g.identify(&probes[i], &opts, SearchMode::Exact).unwrap())
        })
    });
    for shards in [1usize, 2, 4] {
        let r =
            ann::build(g.store(), &m, &BuildParams { shards, ..BuildParams::default() }).unwrap();
        g.load_index(&m, &LoadOptions::default()).unwrap().unwrap();
        eprintln!(
            "generation {}: {} shards, {}",
            r.manifest.generation, shards, r.manifest.factory
        );
        for k_prime in [16usize, 32, 64] {
            let mode = SearchMode::Index(AnnParams { k_prime, nprobe: None });
            group.bench_function(
                BenchmarkId::new(format!("index_s{shards}"), format!("k{k_prime}")),
                |b| {
                    b.iter(|| {
                        i = (i + 1) % probes.len();
                        black_box(g.identify(&probes[i], &opts, mode).unwrap())
                    })
                },
            );
        }
    }
    let mode = SearchMode::Index(AnnParams::default());
    group.throughput(Throughput::Elements(32));
    group.bench_function("index_s4/batch32", |b| {
        b.iter(|| {
            i = (i + 32) % (probes.len() - 32);
            black_box(g.identify_batch(&probes[i..i + 32], &opts, mode).unwrap())
        })
    });
    group.finish();
    drop(g);
    drop(dir);
}

criterion_group!(benches, index_search);
criterion_main!(benches);
