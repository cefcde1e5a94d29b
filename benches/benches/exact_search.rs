//! Exact 1:N over a 100k-template synthetic gallery (d = 128): single probe and a batch, against
//! a naive single-threaded f32 scan run in the same process as the baseline.
//!
//! `cargo bench -p biomatch-benches --bench exact_search`

use biomatch_benches::{naive_top_k, Fixture};
use biomatch_gallery::kernel::{dot_f32_f16, dot_scalar, kernel_name};
use biomatch_gallery::IdentifyOptions;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

const N: u64 = 100_000;
const DIM: usize = 128;
const SEED: u64 = 7;

fn exact(c: &mut Criterion) {
    eprintln!("fixture: {N} synthetic templates, d={DIM}, seed {SEED}, kernel {}", kernel_name());
    let fx = Fixture::new(N, DIM, SEED);
    let probes = fx.probes(256, SEED + 1);
    let opts = IdentifyOptions { max_results: 10, ..Default::default() };
    let rows = fx.f32_rows();

    let mut g = c.benchmark_group("exact_1n_100k");
    g.sample_size(30);
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("baseline_naive_f32_1thread", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(naive_top_k(&rows, DIM, probes[i].template.vector(), 10))
        })
    });
    g.bench_function("single_probe", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(fx.store.identify(&probes[i], &opts).unwrap())
        })
    });
    for batch in [8usize, 32] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                i = (i + batch) % (probes.len() - batch);
                black_box(fx.store.identify_batch(&probes[i..i + batch], &opts).unwrap())
            })
        });
    }
    g.finish();
}

fn kernel(c: &mut Criterion) {
    let a: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<half::f16> =
        (0..DIM).map(|i| half::f16::from_f32((i as f32 * 0.11).cos())).collect();
    let mut g = c.benchmark_group("dot_f32_f16_d128");
    g.bench_function("scalar", |bench| bench.iter(|| dot_scalar(black_box(&a), black_box(&b))));
    g.bench_function(kernel_name(), |bench| {
        bench.iter(|| dot_f32_f16(black_box(&a), black_box(&b)))
    });
    g.finish();
}

criterion_group!(benches, exact, kernel);
criterion_main!(benches);
