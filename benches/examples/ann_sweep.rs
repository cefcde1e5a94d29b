//! Parameter sweep for the ANN index on a synthetic population: for each factory string, build
//! one index (timed), then for each nprobe/efSearch report the share of mated probes whose mate is
//! in the top k′ and the single-probe latency. Used to choose the defaults in `ann::IndexParams`.
//!
//! `cargo run --release -p biomatch-benches --example ann_sweep -- N PROBES "IVF1024,SQ8;HNSW32" "8,16,32,64" K`

use biomatch_datasets::{Population, PopulationConfig};
use biomatch_gallery::ann::ffi::{set_omp_threads, FaissIndex};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: u64 = a.get(1).map_or(200_000, |s| s.parse().unwrap());
    let probes: usize = a.get(2).map_or(500, |s| s.parse().unwrap());
    let factories = a.get(3).cloned().unwrap_or_else(|| "IVF1024,SQ8".into());
    let params: Vec<usize> = a
        .get(4)
        .map_or("8,16,32,64".into(), |s| s.clone())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let k: usize = a.get(5).map_or(32, |s| s.parse().unwrap());
    let pop =
        Population::new(PopulationConfig { identities: n, seed: 1, ..Default::default() }).unwrap();
    let d = pop.dim();
    let t = Instant::now();
    let mut x = Vec::with_capacity(n as usize * d);
    for b in pop.enrolment_batches(50_000) {
        for (_, v) in b {
            x.extend(v);
        }
    }
    eprintln!("generated {n} in {:.1}s", t.elapsed().as_secs_f64());
    let ps = pop.probes(probes, 0, 9).unwrap();
    let ids: Vec<i64> = (0..n as i64).collect();
    for f in factories.split(';') {
        let t = Instant::now();
        let mut idx = FaissIndex::factory(d, f).unwrap();
        let sample = (n as usize).min(100_000);
        idx.train(&x[..sample * d]).unwrap();
        let tt = t.elapsed().as_secs_f64();
        idx.add_with_ids(&x, &ids).unwrap();
        let bt = t.elapsed().as_secs_f64();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.faiss");
        idx.write(&p).unwrap();
        let bytes = std::fs::metadata(&p).unwrap().len();
        println!(
            "{f}: train {tt:.1}s, train+add {bt:.1}s, {:.1} bytes/vector",
            bytes as f64 / n as f64
        );
        set_omp_threads(1);
        for &np in &params {
            if f.contains("HNSW") {
                idx.set_parameter("efSearch", np as f64).unwrap();
            }
            let mut hit = 0;
            let mut lat = Vec::new();
            for pr in &ps.mated {
                let t = Instant::now();
                let (_, l) = idx.search(&pr.vector, k, Some(np)).unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                hit += usize::from(l.contains(&(pr.identity as i64)));
            }
            lat.sort_by(f64::total_cmp);
            println!(
                "  param {np:>4}: recall@{k} {:.4}  p50 {:.3} ms  p99 {:.3} ms",
                hit as f64 / ps.mated.len() as f64,
                lat[lat.len() / 2],
                lat[lat.len() * 99 / 100]
            );
        }
    }
}
