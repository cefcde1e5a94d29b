//! Sampled recall of an index generation against exact search, on probes made from stored
//! templates.
//!
//! A probe is a stored template turned by a fixed angle (`mate_cosine`, default 0.6: the low end
//! of genuine scores) towards a random direction, so it behaves like a fresh sample of the same
//! person: the stored template is (almost always) its exact best match, at a score a real mate
//! would have. A probe *hits* when the index's candidate list (after its exact re-rank, top `k`)
//! holds the row exact search ranks first; `recall` is the share of probes that hit. The same
//! probes also give `recall_at_k`: the mean share of exact search's top `k` that the index
//! returns (these are impostors at low scores: informative, not gated).
//!
//! Two users:
//! - the **recall gate** of a build ([`super::build_with`]): the new generation, before it is
//!   published, searched with the parameters it will serve with, against exact search over the
//!   build's own snapshot (no store lock is held: the service keeps writing during it). Below
//!   the floor the generation is refused and `CURRENT` keeps naming the old one;
//! - the **recall-drift monitor** of the service ([`crate::Gallery::sample_recall`]): the serving
//!   generation, through the store, growing segment included, a few probes at a time.

use super::ffi::{set_omp_threads, FaissIndex, MAX_K};
use crate::error::Result;
use crate::kernel::dot_f32_f16;
use crate::search::{Hit, TopK};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// How a recall sample is taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecallParams {
    /// Probes (stored templates, perturbed).
    pub probes: usize,
    /// Candidate list length compared (the index's top `k` after re-rank).
    pub k: usize,
    /// Cosine between a probe and the stored template it is made from.
    pub mate_cosine: f32,
    /// Seed of the row sample and of the perturbations.
    pub seed: u64,
}

impl Default for RecallParams {
    /// 500 probes: a recall of 0.99 is then known to about ±0.009 (95 %).
    fn default() -> Self {
        Self { probes: 500, k: 10, mate_cosine: 0.6, seed: 0x005E_C411 }
    }
}

/// One shard's part of a sample: the probes whose exact best row lives in that shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardRecall {
    pub probes: usize,
    pub hits: usize,
    pub recall: f64,
}

/// What a recall sample measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecallSample {
    /// The generation measured.
    pub generation: u64,
    pub probes: usize,
    /// Probes whose exact best row the index returned in its top `k`.
    pub hits: usize,
    /// `hits / probes` (1 for no probes).
    pub recall: f64,
    /// Mean share of exact search's top `k` the index returned.
    pub recall_at_k: f64,
    pub k: usize,
    pub mate_cosine: f32,
    /// The search parameters measured: candidates per shard and IVF lists probed (None: not an
    /// IVF index).
    pub k_prime: usize,
    pub nprobe: Option<usize>,
    pub shards: Vec<ShardRecall>,
    /// Wall time of the sample (index and exact searches).
    pub seconds: f64,
}

impl RecallSample {
    /// The smallest recall of a shard that has probes (the whole sample's when none has).
    pub fn worst_shard(&self) -> f64 {
        self.shards.iter().filter(|s| s.probes > 0).map(|s| s.recall).fold(self.recall, f64::min)
    }
}

/// A probe made from stored template `v` (unit length): `c·v + √(1−c²)·u`, `u` a random unit
/// vector orthogonal to `v`.
pub(crate) fn perturbed(v: &[f32], cosine: f32, rng: &mut impl Rng) -> Vec<f32> {
    let mut u: Vec<f32> = (0..v.len()).map(|_| StandardNormal.sample(rng)).collect();
    let along: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
    u.iter_mut().zip(v).for_each(|(a, b)| *a -= along * b);
    let norm = u.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let c = cosine.clamp(-1.0, 1.0);
    let s = (1.0 - c * c).max(0.0).sqrt();
    let mut q: Vec<f32> = v.iter().zip(&u).map(|(a, b)| c * a + s * b / norm).collect();
    let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    q.iter_mut().for_each(|x| *x /= qn);
    q
}

/// Tally of hits: per probe, the exact top `k` rows (best first) and the index's.
pub(crate) struct Tally {
    hits: usize,
    overlap: f64,
    probes: usize,
    shards: Vec<ShardRecall>,
}

impl Tally {
    pub(crate) fn new(shards: usize) -> Self {
        Self { hits: 0, overlap: 0.0, probes: 0, shards: vec![ShardRecall::default(); shards] }
    }

    /// One probe: `exact` and `found` are row ids best first; `shard` is the shard of the exact
    /// best row's subject.
    pub(crate) fn add(&mut self, exact: &[u64], found: &[u64], shard: usize) {
        let Some(best) = exact.first() else { return };
        let hit = found.contains(best);
        self.probes += 1;
        self.hits += usize::from(hit);
        let common = exact.iter().filter(|r| found.contains(r)).count();
        self.overlap += common as f64 / exact.len() as f64;
        if let Some(s) = self.shards.get_mut(shard) {
            s.probes += 1;
            s.hits += usize::from(hit);
        }
    }

    pub(crate) fn finish(
        mut self,
        generation: u64,
        params: &RecallParams,
        k_prime: usize,
        nprobe: Option<usize>,
        seconds: f64,
    ) -> RecallSample {
        let share = |h: usize, n: usize| if n == 0 { 1.0 } else { h as f64 / n as f64 };
        for s in &mut self.shards {
            s.recall = share(s.hits, s.probes);
        }
        RecallSample {
            generation,
            probes: self.probes,
            hits: self.hits,
            recall: share(self.hits, self.probes),
            recall_at_k: if self.probes == 0 { 1.0 } else { self.overlap / self.probes as f64 },
            k: params.k,
            mate_cosine: params.mate_cosine,
            k_prime,
            nprobe,
            shards: self.shards,
            seconds,
        }
    }
}

/// A build's snapshot, per shard: fp16 vectors (`dim` each) and their row ids, ascending.
pub(crate) struct Snapshot<'a> {
    pub dim: usize,
    pub vecs: &'a [Vec<f16>],
    pub ids: &'a [Vec<i64>],
}

impl Snapshot<'_> {
    fn vector(&self, shard: usize, row: i64) -> Option<&[f16]> {
        let i = self.ids[shard].binary_search(&row).ok()?;
        Some(&self.vecs[shard][i * self.dim..(i + 1) * self.dim])
    }
}

/// The recall gate's measurement: the built (not yet published) `shards` searched with
/// `k_prime`/`nprobe` and re-ranked exactly, against an exact scan of the snapshot they were
/// built from. Holds no store lock.
pub(crate) fn measure_snapshot(
    snap: &Snapshot<'_>,
    shards: &[FaissIndex],
    generation: u64,
    params: &RecallParams,
    k_prime: usize,
    nprobe: Option<usize>,
) -> Result<RecallSample> {
    let t = Instant::now();
    let d = snap.dim;
    let total: usize = snap.ids.iter().map(Vec::len).sum();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
    let n = params.probes.min(total);
    // Probes: perturbed copies of uniformly sampled rows.
    let mut probes: Vec<Vec<f32>> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut i = rng.random_range(0..total);
        let mut sh = 0;
        while i >= snap.ids[sh].len() {
            i -= snap.ids[sh].len();
            sh += 1;
        }
        let v: Vec<f32> = snap.vecs[sh][i * d..(i + 1) * d].iter().map(|h| h.to_f32()).collect();
        probes.push(perturbed(&v, params.mate_cosine, &mut rng));
    }
    let k = params.k.max(1);

    // Exact: every snapshot row against every probe, range by range (each range read once).
    let ranges: Vec<(usize, usize)> = snap
        .ids
        .iter()
        .enumerate()
        .flat_map(|(sh, ids)| (0..ids.len()).step_by(4096).map(move |lo| (sh, lo)))
        .collect();
    let empty = || vec![TopK::new(k); probes.len()];
    let exact: Vec<TopK> = ranges
        .par_iter()
        .map(|&(sh, lo)| {
            let hi = (lo + 4096).min(snap.ids[sh].len());
            let mut tops = empty();
            for i in lo..hi {
                let v = &snap.vecs[sh][i * d..(i + 1) * d];
                let row = snap.ids[sh][i] as u64;
                for (q, top) in probes.iter().zip(&mut tops) {
                    top.push(Hit { score: dot_f32_f16(q, v), row });
                }
            }
            tops
        })
        .reduce(empty, |a, b| a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect());

    // Index: every shard's k′ best, re-ranked exactly from the snapshot.
    let want = k_prime.max(k).min(MAX_K);
    let queries: Vec<f32> = probes.iter().flatten().copied().collect();
    let answers = (0..shards.len())
        .into_par_iter()
        .map(|s| {
            set_omp_threads(1);
            shards[s].search(&queries, want, nprobe).map(|(_, ids)| ids)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut tally = Tally::new(shards.len());
    for ((p, q), ex) in probes.iter().enumerate().zip(exact) {
        // Rows are unique across shards (each row lives in one), as in a service's re-rank.
        let mut top = TopK::new(k);
        for (s, ids) in answers.iter().enumerate() {
            for &row in ids[p * want..(p + 1) * want].iter().filter(|&&r| r >= 0) {
                if let Some(v) = snap.vector(s, row) {
                    top.push(Hit { score: dot_f32_f16(q, v), row: row as u64 });
                }
            }
        }
        let found = top.into_rows();
        let ex = ex.into_rows();
        let shard = ex
            .first()
            .and_then(|&r| snap.ids.iter().position(|ids| ids.binary_search(&(r as i64)).is_ok()))
            .unwrap_or(0);
        tally.add(&ex, &found, shard);
    }
    Ok(tally.finish(generation, params, k_prime, nprobe, t.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbed_probes_have_the_asked_cosine_and_unit_length() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut v: Vec<f32> = (0..128).map(|i| (i as f32).sin()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        for c in [0.3f32, 0.6, 0.9] {
            let q = perturbed(&v, c, &mut rng);
            let dot: f32 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
            let len: f32 = q.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((dot - c).abs() < 1e-4, "{dot} vs {c}");
            assert!((len - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn a_tally_counts_hits_overlap_and_shards() {
        let mut t = Tally::new(2);
        t.add(&[1, 2, 3, 4], &[1, 9, 3, 8], 0); // hit, overlap 2/4
        t.add(&[5, 6, 7, 8], &[6, 7, 8, 9], 1); // miss, overlap 3/4
        let s = t.finish(4, &RecallParams::default(), 32, None, 0.0);
        assert_eq!((s.probes, s.hits), (2, 1));
        assert_eq!(s.recall, 0.5);
        assert!((s.recall_at_k - 0.625).abs() < 1e-12);
        assert_eq!(s.shards[0].recall, 1.0);
        assert_eq!(s.shards[1].recall, 0.0);
        assert_eq!(s.worst_shard(), 0.0);
    }

    #[test]
    fn candidates_order_by_score_then_row() {
        let mut top = TopK::new(3);
        for (row, score) in [(5, 0.1), (2, 0.9), (7, 0.9), (1, 0.5)] {
            top.push(Hit { score, row });
        }
        assert_eq!(top.into_rows(), vec![2, 7, 1]);
    }
}
