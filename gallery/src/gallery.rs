//! The gallery as the service and the tools use it: the durable store plus, per model, the
//! currently loaded index generation, with one search entry point that picks the path.
//!
//! Indexed 1:N search: the probe fans out over the shards of the sealed index in parallel
//! (rayon; FAISS limited to one OpenMP thread per call so the two pools do not oversubscribe),
//! each shard returns its best k′ rows by approximate score, and the union is **re-ranked
//! exactly** with the fp16 templates from the store — so every score returned is the exact score.
//! Rows enrolled after the generation was built (its "growing segment": row ids at or above
//! `covered_rows`) are scanned exactly; rows deleted since are filtered by their tombstones.
//! Everything runs under the store's read lock, so the guarantees of exact search hold: a search
//! sees every write acknowledged before it started.

use crate::ann::ffi::{set_omp_threads, MAX_K};
use crate::ann::generation::effective_nprobe;
use crate::ann::{self, LoadOptions, ShardedIndex};
use crate::error::{GalleryError, Result};
use crate::kernel::dot_f32_f16;
use crate::search::{self, Hit, IdentifyOptions, Probe, TopK, MAX_RESULTS_LIMIT, MAX_SHORTLIST};
use crate::state::State;
use crate::store::Store;
use biomatch_core::{Candidate, ModelId};
use parking_lot::RwLock;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Parameters of an indexed search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnnParams {
    /// Candidates taken from each shard for exact re-ranking.
    pub k_prime: usize,
    /// IVF lists probed per shard; `None`: the generation's own (`nprobe` of its manifest, what
    /// its recall gate measured), else half of the lists. Ignored by flat/HNSW indexes.
    pub nprobe: Option<usize>,
}

impl Default for AnnParams {
    /// k′ = 32: on 1M synthetic templates the mate was in every shard's top 32 for 2000/2000
    /// probes with the default index (see `ann::default_factory`).
    fn default() -> Self {
        Self { k_prime: 32, nprobe: None }
    }
}

/// Which search to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SearchMode {
    /// Exact scan of every row.
    Exact,
    /// The loaded index; an error if none is loaded.
    Index(AnnParams),
    /// The index if one is loaded, else exact.
    Auto(AnnParams),
}

/// Which path a search took.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SearchPath {
    /// `"exact"` or `"index"`.
    pub kind: &'static str,
    /// The index generation used, if any.
    pub generation: Option<u64>,
}

/// Store + loaded indexes. `Send + Sync`; share behind an `Arc`.
#[derive(Debug)]
pub struct Gallery {
    store: Arc<Store>,
    indexes: RwLock<HashMap<ModelId, Arc<ShardedIndex>>>,
}

impl Gallery {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, indexes: RwLock::new(HashMap::new()) }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Load the current index generation of `model` from disk and swap it in. Searches in
    /// flight finish on the generation they started with. On error the previous generation keeps
    /// serving. Returns the generation now serving (None: no index on disk).
    pub fn load_index(
        &self,
        model: &ModelId,
        opts: &LoadOptions,
    ) -> Result<Option<Arc<ShardedIndex>>> {
        match ann::load(&self.store, model, opts)? {
            Some(idx) => {
                let idx = Arc::new(idx);
                self.indexes.write().insert(model.clone(), idx.clone());
                Ok(Some(idx))
            }
            None => Ok(None),
        }
    }

    /// The generation serving `model`, if any.
    pub fn index(&self, model: &ModelId) -> Option<Arc<ShardedIndex>> {
        self.indexes.read().get(model).cloned()
    }

    /// Stop using the index of `model` (searches fall back to exact under `Auto`).
    pub fn unload_index(&self, model: &ModelId) {
        self.indexes.write().remove(model);
    }

    /// 1:N for a batch of probes of one model.
    pub fn identify_batch(
        &self,
        probes: &[Probe],
        opts: &IdentifyOptions,
        mode: SearchMode,
    ) -> Result<(Vec<Vec<Candidate>>, SearchPath)> {
        self.identify_limited(probes, opts, mode, MAX_RESULTS_LIMIT)
    }

    /// An internal pre-selection: like [`identify`](Self::identify), with candidate lists of
    /// up to [`MAX_SHORTLIST`] (a share of a large gallery, for a matcher to re-score).
    pub fn shortlist(
        &self,
        probe: &Probe,
        opts: &IdentifyOptions,
        mode: SearchMode,
    ) -> Result<(Vec<Candidate>, SearchPath)> {
        let (mut r, path) =
            self.identify_limited(std::slice::from_ref(probe), opts, mode, MAX_SHORTLIST)?;
        Ok((r.pop().unwrap_or_default(), path))
    }

    fn identify_limited(
        &self,
        probes: &[Probe],
        opts: &IdentifyOptions,
        mode: SearchMode,
        limit: usize,
    ) -> Result<(Vec<Vec<Candidate>>, SearchPath)> {
        let index = probes.first().and_then(|p| self.index(p.template.model()));
        let (params, index) = match (mode, index) {
            (SearchMode::Exact, _) | (SearchMode::Auto(_), None) => (None, None),
            // A gallery-restricted search is small: always exact.
            (_, Some(_)) if opts.subset.is_some() => (None, None),
            (SearchMode::Index(p) | SearchMode::Auto(p), Some(i)) => (Some(p), Some(i)),
            (SearchMode::Index(_), None) => {
                return Err(GalleryError::BadIndexParams(
                    "no index is loaded for this model".into(),
                ))
            }
        };
        let st = self.store.read();
        let Some(c) = search::check_probes(&st, probes, opts, limit)? else {
            return Ok((Vec::new(), SearchPath { kind: "exact", generation: None }));
        };
        let (tops, path) = match (params, index) {
            (Some(p), Some(idx)) => {
                let tops = indexed_tops(&st, c, &idx, probes, opts, &p)?;
                (tops, SearchPath { kind: "index", generation: Some(idx.manifest.generation) })
            }
            _ => (
                search::exact_tops(&st, c, probes, opts, 0),
                SearchPath { kind: "exact", generation: None },
            ),
        };
        Ok((search::candidates(&st, c, probes, tops), path))
    }

    /// Sample the recall of the generation serving `model` against exact search (the
    /// recall-drift monitor): `params.probes` stored templates of the covered rows, perturbed
    /// ([`ann::recall`]), searched both ways through the store under its read lock, so the
    /// growing segment is included exactly as a request sees it. `None`: no index is loaded.
    /// Costs one exact scan of the column for the whole sample: keep `params.probes` small.
    pub fn sample_recall(
        &self,
        model: &ModelId,
        params: &ann::RecallParams,
        ann_params: AnnParams,
    ) -> Result<Option<ann::RecallSample>> {
        use rand::{Rng, SeedableRng};
        let Some(idx) = self.index(model) else { return Ok(None) };
        let t = std::time::Instant::now();
        let st = self.store.read();
        let c = st.column_of(model)?;
        let col = &st.columns[c as usize];
        let covered = idx.manifest.covered_rows.min(col.rows());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
        let mut probes = Vec::with_capacity(params.probes);
        // Uniform over the covered rows, skipping deleted ones (a bounded number of tries).
        for _ in 0..params.probes.saturating_mul(20) {
            if probes.len() >= params.probes || covered == 0 {
                break;
            }
            let row = rng.random_range(0..covered);
            if !col.is_live(row) {
                continue;
            }
            let modality = biomatch_core::Modality::from_code(crate::state::modality_code(
                col.state[row as usize],
            ))?;
            let v: Vec<f32> = col.vector(row).iter().map(|h| h.to_f32()).collect();
            let q = ann::recall::perturbed(&v, params.mate_cosine, &mut rng);
            let template = biomatch_core::Template::new(model.clone(), col.dim, q)?;
            probes.push(Probe { modality, template });
        }
        let opts = IdentifyOptions { max_results: params.k.max(1), threshold: None, subset: None };
        let found = indexed_tops(&st, c, &idx, &probes, &opts, &ann_params)?;
        let exact = search::exact_tops(&st, c, &probes, &opts, 0);
        let shards = idx.manifest.shards.len();
        let mut tally = ann::recall::Tally::new(shards);
        for (e, f) in exact.into_iter().zip(found) {
            let e = e.into_rows();
            let shard = e.first().map_or(0, |&r| {
                ann::generation::shard_of(&st.subjects.id(col.subject[r as usize]), shards)
            });
            tally.add(&e, &f.into_rows(), shard);
        }
        drop(st);
        let nprobe = effective_nprobe(ann_params.nprobe, idx.manifest.nprobe, idx.shards.first());
        Ok(Some(tally.finish(
            idx.manifest.generation,
            params,
            ann_params.k_prime,
            nprobe,
            t.elapsed().as_secs_f64(),
        )))
    }

    /// 1:N for one probe.
    pub fn identify(
        &self,
        probe: &Probe,
        opts: &IdentifyOptions,
        mode: SearchMode,
    ) -> Result<(Vec<Candidate>, SearchPath)> {
        let (mut r, path) = self.identify_batch(std::slice::from_ref(probe), opts, mode)?;
        Ok((r.pop().expect("one result per probe"), path))
    }
}

/// Largest configurable k′ (candidates per shard re-ranked). Internal pre-selection lists (the
/// finger codes') ask FAISS for more, up to `MAX_K`, through their `max_results`.
pub const MAX_K_PRIME: usize = 4096;

/// Probes per FAISS call: small enough to spread a batch over the pool, large enough to
/// amortise the call.
const PROBES_PER_CALL: usize = 16;

fn indexed_tops(
    st: &State,
    c: u16,
    idx: &ShardedIndex,
    probes: &[Probe],
    opts: &IdentifyOptions,
    p: &AnnParams,
) -> Result<Vec<TopK>> {
    if p.k_prime == 0 || p.k_prime > MAX_K_PRIME {
        return Err(GalleryError::BadIndexParams(format!(
            "k_prime = {} outside 1..={MAX_K_PRIME}",
            p.k_prime
        )));
    }
    if p.nprobe == Some(0) {
        return Err(GalleryError::BadIndexParams("nprobe must be at least 1".into()));
    }
    let col = &st.columns[c as usize];
    let d = col.dim;
    let covered = idx.manifest.covered_rows.min(col.rows());
    // Tombstoned rows still occupy slots in the shards' answers: widen k′ by the deleted share.
    let deleted_share = 1.0 - col.live as f64 / col.rows().max(1) as f64;
    let want = p.k_prime.max(opts.max_results) as f64 / (1.0 - deleted_share).max(0.25);
    let k = (want.ceil() as usize).min(MAX_K);
    let nprobe = effective_nprobe(p.nprobe, idx.manifest.nprobe, idx.shards.first());

    // 1. Fan out: every (shard, chunk of probes) pair is one task on the rayon pool.
    let queries: Vec<f32> =
        probes.iter().flat_map(|p| p.template.vector().iter().copied()).collect();
    let chunks = probes.len().div_ceil(PROBES_PER_CALL);
    let jobs: Vec<(usize, usize)> =
        (0..idx.shards.len()).flat_map(|s| (0..chunks).map(move |ci| (s, ci))).collect();
    let answers = jobs
        .par_iter()
        .map(|&(s, ci)| {
            set_omp_threads(1);
            let lo = ci * PROBES_PER_CALL;
            let hi = (lo + PROBES_PER_CALL).min(probes.len());
            idx.shards[s].search(&queries[lo * d..hi * d], k, nprobe).map(|(_, ids)| (lo, ids))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut rows: Vec<Vec<u64>> = vec![Vec::with_capacity(k * idx.shards.len()); probes.len()];
    for (lo, ids) in answers {
        for (j, per_probe) in ids.chunks(k).enumerate() {
            rows[lo + j].extend(per_probe.iter().filter(|&&i| i >= 0).map(|&i| i as u64));
        }
    }

    // 2. The growing segment: rows the generation does not cover, scanned exactly.
    let growing = if covered < col.rows() {
        search::exact_tops(st, c, probes, opts, covered)
    } else {
        vec![TopK::new(opts.max_results); probes.len()]
    };

    // 3. Exact re-rank of the union, tombstones and other modalities filtered.
    let floor = opts.threshold.unwrap_or(f32::NEG_INFINITY);
    Ok(rows
        .into_par_iter()
        .zip(probes)
        .zip(growing)
        .map(|((mut rows, p), grown)| {
            rows.sort_unstable();
            rows.dedup();
            let code = p.modality.code();
            let mut top = TopK::new(opts.max_results);
            for row in rows.into_iter().filter(|&r| r < covered) {
                let s = col.state[row as usize];
                // A deleted row's state has the DELETED bit set, so it never equals a code.
                if s != code {
                    continue;
                }
                let score = dot_f32_f16(p.template.vector(), col.vector(row));
                if score >= floor {
                    top.push(Hit { score, row });
                }
            }
            top.merge(grown)
        })
        .collect())
}
