//! Exact 1:1 verification and 1:N identification over the store.
//!
//! This is the ground truth for the approximate index (it scores every live row with the SIMD
//! fp16 kernel) and the search of rows not yet covered by an index. A search holds the store's
//! read lock for its duration, so it sees every write acknowledged before it started and none
//! that is deleted.
//!
//! The 1:N scan is split into row ranges processed in parallel on the rayon pool; each range
//! keeps a bounded top-k per probe, and a batch of probes is scored range by range so the rows
//! of a range are read from memory once for all probes of the batch.

use crate::error::{GalleryError, Result};
use crate::kernel::dot_f32_f16;
use crate::state::{State, DELETED};
use crate::store::{lookup, Store};
use biomatch_core::score::rank;
use biomatch_core::{Candidate, Modality, ModalityScore, SubjectId, Template};
use rayon::prelude::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Largest accepted `max_results`.
pub const MAX_RESULTS_LIMIT: usize = 1000;
/// Largest candidate list of an internal pre-selection ([`crate::Gallery::shortlist`]): the
/// finger codes' per-finger lists, a share of a large gallery.
pub const MAX_SHORTLIST: usize = 1 << 17;
/// Rows per parallel work item: 4096 × 128 × 2 bytes = 1 MiB, a comfortable L2-sized block.
const ROWS_PER_TASK: usize = 4096;

/// A probe: a template and the modality it was captured from.
#[derive(Clone, Debug)]
pub struct Probe {
    pub modality: Modality,
    pub template: Template,
}

/// Options of a 1:N search.
#[derive(Clone, Debug)]
pub struct IdentifyOptions {
    /// Return at most this many candidates (1..=[`MAX_RESULTS_LIMIT`]).
    pub max_results: usize,
    /// Return only candidates scoring at least this.
    pub threshold: Option<f32>,
    /// Search only these subjects (a gallery-restricted identify). Ids not enrolled are skipped.
    pub subset: Option<Vec<SubjectId>>,
}

impl Default for IdentifyOptions {
    fn default() -> Self {
        Self { max_results: 10, threshold: None, subset: None }
    }
}

/// A scored row, ordered by score then (reversed) row so heaps and sorts are deterministic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Hit {
    pub score: f32,
    pub row: u64,
}

impl Eq for Hit {}

impl Ord for Hit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.row.cmp(&self.row))
    }
}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Keeps the k best hits seen.
#[derive(Clone, Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Hit>>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self { k, heap: BinaryHeap::with_capacity((k + 1).min(1024)) }
    }

    #[inline]
    pub fn push(&mut self, hit: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(Reverse(hit));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if hit > worst.0 {
                *worst = Reverse(hit);
            }
        }
    }

    /// The rows kept, best first.
    pub fn into_rows(self) -> Vec<u64> {
        let mut hits: Vec<Hit> = self.heap.into_iter().map(|Reverse(h)| h).collect();
        hits.sort_unstable_by(|a, b| b.cmp(a));
        hits.into_iter().map(|h| h.row).collect()
    }

    pub fn merge(mut self, other: TopK) -> TopK {
        for Reverse(h) in other.heap {
            self.push(h);
        }
        self
    }
}

pub(crate) fn check_max_results(n: usize, limit: usize) -> Result<()> {
    if n == 0 || n > limit {
        return Err(GalleryError::BadMaxResults { got: n, max: limit });
    }
    Ok(())
}

impl Store {
    /// 1:1: score `probe` against the subject's enrolled template of the same modality.
    pub fn verify(&self, subject: &SubjectId, probe: &Probe) -> Result<f32> {
        let st = self.read();
        let c = st.column_of(probe.template.model())?;
        check_dim(&st, c, &probe.template)?;
        let (tc, row) = lookup(&st, subject, probe.modality)?;
        if tc != c {
            return Err(GalleryError::ModelMismatch {
                got: probe.template.model().clone(),
                gallery: Some(st.columns[tc as usize].model.clone()),
            });
        }
        Ok(dot_f32_f16(probe.template.vector(), st.columns[c as usize].vector(row)))
    }

    /// 1:N: the best candidates for one probe.
    pub fn identify(&self, probe: &Probe, opts: &IdentifyOptions) -> Result<Vec<Candidate>> {
        Ok(self
            .identify_batch(std::slice::from_ref(probe), opts)?
            .pop()
            .expect("one result per probe"))
    }

    /// 1:N for many probes at once (all of the same model); one candidate list per probe.
    pub fn identify_batch(
        &self,
        probes: &[Probe],
        opts: &IdentifyOptions,
    ) -> Result<Vec<Vec<Candidate>>> {
        let st = self.read();
        let Some(c) = check_probes(&st, probes, opts, MAX_RESULTS_LIMIT)? else {
            return Ok(Vec::new());
        };
        let tops = exact_tops(&st, c, probes, opts, 0);
        Ok(candidates(&st, c, probes, tops))
    }
}

/// Validate a batch of probes against the state; the column they search (None: no probes).
pub(crate) fn check_probes(
    st: &State,
    probes: &[Probe],
    opts: &IdentifyOptions,
    limit: usize,
) -> Result<Option<u16>> {
    check_max_results(opts.max_results, limit)?;
    let Some(first) = probes.first() else {
        return Ok(None);
    };
    let c = st.column_of(first.template.model())?;
    for p in probes {
        if st.column_of(p.template.model())? != c {
            return Err(GalleryError::ModelMismatch {
                got: p.template.model().clone(),
                gallery: Some(st.columns[c as usize].model.clone()),
            });
        }
        check_dim(st, c, &p.template)?;
    }
    Ok(Some(c))
}

/// Exact top-k per probe: over the subset if one is given, else over every row `>= from_row`.
pub(crate) fn exact_tops(
    st: &State,
    c: u16,
    probes: &[Probe],
    opts: &IdentifyOptions,
    from_row: u64,
) -> Vec<TopK> {
    match &opts.subset {
        Some(subset) => scan_subset(st, c, probes, subset, opts),
        None => scan_all(st, c, probes, opts, from_row),
    }
}

/// Turn per-probe top-k rows into ranked candidate lists.
pub(crate) fn candidates(
    st: &State,
    c: u16,
    probes: &[Probe],
    tops: Vec<TopK>,
) -> Vec<Vec<Candidate>> {
    let col = &st.columns[c as usize];
    tops.into_iter()
        .zip(probes)
        .map(|(top, p)| {
            let mut out: Vec<Candidate> = top
                .heap
                .into_iter()
                .map(|Reverse(h)| Candidate {
                    subject_id: st.subjects.id(col.subject[h.row as usize]),
                    score: h.score,
                    scores: vec![ModalityScore { modality: p.modality, score: h.score }],
                })
                .collect();
            rank(&mut out);
            out
        })
        .collect()
}

fn check_dim(st: &State, c: u16, t: &Template) -> Result<()> {
    let dim = st.columns[c as usize].dim;
    if t.dim() != dim {
        return Err(GalleryError::WrongDimension {
            model: t.model().clone(),
            expected: dim,
            got: t.dim(),
        });
    }
    Ok(())
}

fn scan_all(
    st: &State,
    c: u16,
    probes: &[Probe],
    opts: &IdentifyOptions,
    from_row: u64,
) -> Vec<TopK> {
    let col = &st.columns[c as usize];
    let d = col.dim;
    let codes: Vec<u8> = probes.iter().map(|p| p.modality.code()).collect();
    let floor = opts.threshold.unwrap_or(f32::NEG_INFINITY);
    // Work items: (first row, vectors) ranges of at most ROWS_PER_TASK rows.
    let tasks: Vec<(u64, &[half::f16])> = col
        .blocks()
        .filter_map(|(first, v)| {
            // Only rows >= from_row (the rows an index generation does not cover).
            let n = (v.len() / d.max(1)) as u64;
            let skip = from_row.saturating_sub(first).min(n);
            (skip < n).then(|| (first + skip, &v[skip as usize * d..]))
        })
        .flat_map(|(first, v)| {
            v.chunks(ROWS_PER_TASK * d.max(1))
                .enumerate()
                .map(move |(i, chunk)| (first + (i * ROWS_PER_TASK) as u64, chunk))
        })
        .collect();
    let empty = || vec![TopK::new(opts.max_results); probes.len()];
    tasks
        .par_iter()
        .map(|&(first, vecs)| {
            let mut tops = empty();
            for (i, v) in vecs.chunks_exact(d).enumerate() {
                let row = first + i as u64;
                let s = col.state[row as usize];
                if s & DELETED != 0 {
                    continue;
                }
                for ((p, top), &code) in probes.iter().zip(&mut tops).zip(&codes) {
                    if s != code {
                        continue;
                    }
                    let score = dot_f32_f16(p.template.vector(), v);
                    if score >= floor {
                        top.push(Hit { score, row });
                    }
                }
            }
            tops
        })
        .reduce(empty, |a, b| a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect())
}

fn scan_subset(
    st: &State,
    c: u16,
    probes: &[Probe],
    subset: &[SubjectId],
    opts: &IdentifyOptions,
) -> Vec<TopK> {
    let col = &st.columns[c as usize];
    let floor = opts.threshold.unwrap_or(f32::NEG_INFINITY);
    probes
        .par_iter()
        .map(|p| {
            let mut top = TopK::new(opts.max_results);
            let mut seen = std::collections::HashSet::new();
            for s in subset {
                if !seen.insert(s) {
                    continue;
                }
                if let Ok((tc, row)) = lookup(st, s, p.modality) {
                    if tc == c {
                        let score = dot_f32_f16(p.template.vector(), col.vector(row));
                        if score >= floor {
                            top.push(Hit { score, row });
                        }
                    }
                }
            }
            top
        })
        .collect()
}
