//! Backlog deduplication: every subject of the store searched against all the others (a
//! self-join through the serving index generation, exact re-rank, face and fingers fused, cut
//! at a target FPIR), matched pairs grouped into clusters (connected components) for
//! adjudication. Resumable after a crash from its last checkpoint.
//!
//! The walk: the store's live subjects in enrollment-sequence order, up to the last sequence
//! number enrolled when the run started (the run's snapshot; later enrollments are searched
//! against, not probed). Each subject's probe is built from its stored templates (face vectors,
//! minutiae fingers; the fingers' pre-selection codes are derived, not probed) and identified
//! like any 1:N request ([`Engine::identify`]); the subject itself is dropped from its
//! candidates. A pair is found from either side; it is kept once, with its best (lowest) fused
//! FMR. Subjects are searched a chunk at a time, in parallel on the rayon pool.
//!
//! Files in the output directory:
//!
//! - `dedup.lock`: an exclusive lock for the life of a run (one run per directory);
//! - `pairs.log`: append-only, one JSON line per pair found (`{"probe", "candidate", "fmr",
//!   "scores"}`), fdatasynced before the checkpoint that covers it;
//! - `checkpoint.bin`: the run's parameters, the last sequence number done, subjects done and the
//!   length of `pairs.log` it covers; JSON with a CRC32 footer, replaced atomically (temp file,
//!   fsync, rename, fsync of the directory) after every chunk. A resumed run cuts `pairs.log`
//!   back to that length (lines of a chunk that crashed before its checkpoint are searched
//!   again) and continues after the last sequence number done; different parameters are
//!   refused ([`ErrorCode::DedupParametersChanged`]);
//! - at the end, `pairs.csv` (one row per pair) and `clusters.jsonl` (one line per cluster,
//!   largest first), each written atomically, and `summary.json`.
//!
//! Nothing biometric is written: ids, scores and FMRs only.

use crate::error::{EngineError, ErrorCode, Result};
use crate::{Engine, IdentifyParams, ModalityScore, SearchKind};
use biomatch_core::fusion::score_of_fmr;
use biomatch_core::SubjectId;
use biomatch_gallery::GalleryError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

const CHECKPOINT: &str = "checkpoint.bin";
const PAIRS_LOG: &str = "pairs.log";
const LOCK: &str = "dedup.lock";
/// Output file names.
pub const PAIRS_CSV: &str = "pairs.csv";
pub const CLUSTERS_JSONL: &str = "clusters.jsonl";
pub const SUMMARY_JSON: &str = "summary.json";
const FORMAT_VERSION: u32 = 1;

/// Parameters of a deduplication run; a resumed run must give the same ones.
#[derive(Clone, Debug, PartialEq)]
pub struct BacklogParams {
    /// Pairs must have a fused FMR ≤ target_fpir / N (N: the store's subjects).
    pub target_fpir: f64,
    /// Candidates kept per subject (besides itself).
    pub max_candidates: usize,
    pub mode: SearchKind,
    /// Subjects per chunk: one checkpoint per chunk.
    pub chunk: usize,
}

impl Default for BacklogParams {
    fn default() -> Self {
        Self { target_fpir: 1e-3, max_candidates: 10, mode: SearchKind::Auto, chunk: 4096 }
    }
}

/// Shared with whoever watches or stops a run (a progress bar, the admin endpoint).
#[derive(Debug, Default)]
pub struct BacklogControl {
    cancel: AtomicBool,
    /// Subjects in the run's snapshot.
    pub total: AtomicU64,
    /// Subjects done, this run and before.
    pub done: AtomicU64,
    /// Subjects done by earlier runs (resumed from).
    pub done_before: AtomicU64,
    /// Pair lines found so far (a pair found from both sides counts twice until the end).
    pub found: AtomicU64,
    /// Stop after the chunk in progress (test hook: also after this many chunks of this run).
    stop_after_chunks: AtomicU64,
}

impl BacklogControl {
    pub fn new() -> Self {
        Self { stop_after_chunks: AtomicU64::new(u64::MAX), ..Self::default() }
    }

    /// Ask the run to stop at its next chunk boundary (its work so far is checkpointed).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Stop (as cancelled) after `n` chunks of this run: a simulated interruption.
    pub fn stop_after_chunks(&self, n: u64) {
        self.stop_after_chunks.store(n, Ordering::SeqCst);
    }
}

/// One modality's score of a pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairScore {
    /// `face` or `finger1`..`finger10`.
    pub modality: String,
    pub score: f32,
    pub fmr: f64,
}

/// A matched pair, `a < b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupPair {
    pub a: String,
    pub b: String,
    /// Fused score, −log10 of the fused FMR.
    pub score: f32,
    pub fmr: f64,
    pub scores: Vec<PairScore>,
}

/// A connected component of matched pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BacklogCluster {
    pub cluster: usize,
    pub size: usize,
    /// Sorted.
    pub members: Vec<String>,
    pub pairs: Vec<DedupPair>,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BacklogSummary {
    /// Subjects in the run's snapshot.
    pub subjects: u64,
    /// Subjects searched by this run.
    pub processed: u64,
    /// Subjects an earlier, interrupted run had done (0: a fresh run).
    pub resumed_from: u64,
    /// Subjects gone (deleted) when their turn came.
    pub skipped: u64,
    /// Distinct matched pairs.
    pub pairs: u64,
    pub clusters: u64,
    pub largest_cluster: u64,
    /// Wall time of this run.
    pub seconds: f64,
    /// Subject pairs decided per second by this run: processed · (N − 1) / 2 / seconds (the
    /// self-join decides N(N − 1)/2 pairs in all).
    pub pairs_per_s: f64,
    pub subjects_per_s: f64,
    /// False when the run was stopped before the end (resume it).
    pub complete: bool,
    pub target_fpir: f64,
    pub max_candidates: usize,
    /// The search of the last probe (`index` or `exact`) and its index generation.
    pub search: Option<String>,
    pub index_generation: Option<u64>,
}

/// What identifies a run; a resume must match it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RunKey {
    store: PathBuf,
    snapshot_seq: u64,
    subjects: u64,
    target_fpir: f64,
    max_candidates: usize,
    mode: String,
    chunk: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    key: RunKey,
    /// Every subject with seq ≤ done_seq is done.
    done_seq: u64,
    done: u64,
    skipped: u64,
    /// Bytes of `pairs.log` covered.
    pairs_bytes: u64,
    found: u64,
    complete: bool,
}

#[derive(Serialize, Deserialize)]
struct Found {
    probe: String,
    candidate: String,
    fmr: f64,
    scores: Vec<PairScore>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Gallery(GalleryError::Io { path: path.to_owned(), source })
}

fn mode_name(m: SearchKind) -> &'static str {
    match m {
        SearchKind::Auto => "auto",
        SearchKind::Exact => "exact",
        SearchKind::Index => "index",
    }
}

fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let body = biomatch_gallery::check_crc(path, &bytes)?;
    let c: Checkpoint = serde_json::from_slice(body).map_err(|e| {
        EngineError::Gallery(GalleryError::Corrupt {
            path: path.to_owned(),
            reason: format!("not a deduplication checkpoint: {e}"),
        })
    })?;
    if c.version != FORMAT_VERSION {
        return Err(EngineError::Gallery(GalleryError::Corrupt {
            path: path.to_owned(),
            reason: format!("checkpoint version {} (this build reads {FORMAT_VERSION})", c.version),
        }));
    }
    Ok(Some(c))
}

fn write_checkpoint(path: &Path, c: &Checkpoint) -> Result<()> {
    let mut bytes = serde_json::to_vec(c).expect("a checkpoint serialises");
    biomatch_gallery::push_crc(&mut bytes);
    Ok(biomatch_gallery::atomic_write(path, &bytes)?)
}

/// Whether `out` holds a deduplication run's checkpoint (finished or not).
pub fn has_checkpoint(out: &Path) -> bool {
    out.join(CHECKPOINT).exists()
}

/// Describe how two run keys differ (for the refusal).
fn key_diff(old: &RunKey, new: &RunKey) -> String {
    let mut d = Vec::new();
    if old.store != new.store {
        d.push(format!("store {} (now {})", old.store.display(), new.store.display()));
    }
    if old.target_fpir != new.target_fpir {
        d.push(format!("target_fpir {} (now {})", old.target_fpir, new.target_fpir));
    }
    if old.max_candidates != new.max_candidates {
        d.push(format!("max_candidates {} (now {})", old.max_candidates, new.max_candidates));
    }
    if old.mode != new.mode {
        d.push(format!("search {} (now {})", old.mode, new.mode));
    }
    if old.chunk != new.chunk {
        d.push(format!("chunk {} (now {})", old.chunk, new.chunk));
    }
    d.join(", ")
}

impl Engine {
    /// The probe of an enrolled subject, from its stored templates: its vectors of the
    /// configured models (the fingers' pre-selection codes are derived, not probed) and its
    /// minutiae fingers. `None`: the subject is gone.
    pub fn stored_probe(&self, subject: &SubjectId) -> Result<Option<crate::PreparedProbe>> {
        match self.stored_samples(subject) {
            Ok(samples) if samples.is_empty() => Ok(None),
            Ok(samples) => self.prepare(samples).map(Some),
            Err(e) if e.code() == ErrorCode::UnknownSubject => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deduplicate the store (see the module docs): write `pairs.csv`, `clusters.jsonl` and
    /// `summary.json` into `out`. With `resume`, continue the run checkpointed there (its
    /// parameters must be `p`); without, a checkpoint there is refused. A run stopped through
    /// `ctl` returns its summary with `complete: false`.
    pub fn dedup(
        &self,
        out: &Path,
        p: &BacklogParams,
        resume: bool,
        ctl: &BacklogControl,
    ) -> Result<BacklogSummary> {
        if !(p.target_fpir > 0.0 && p.target_fpir < 1.0) {
            return Err(EngineError::invalid(
                ErrorCode::InvalidParameter,
                format!("target_fpir must be in (0, 1), got {}", p.target_fpir),
            ));
        }
        if p.max_candidates == 0 || p.max_candidates >= biomatch_gallery::MAX_RESULTS_LIMIT {
            return Err(EngineError::invalid(
                ErrorCode::InvalidParameter,
                format!("max_candidates must be in 1..{}", biomatch_gallery::MAX_RESULTS_LIMIT),
            ));
        }
        if p.chunk == 0 {
            return Err(EngineError::invalid(ErrorCode::InvalidParameter, "chunk must be ≥ 1"));
        }
        std::fs::create_dir_all(out).map_err(io(out))?;
        let lock_path = out.join(LOCK);
        let _lock = biomatch_gallery::try_lock_exclusive(&lock_path)?.ok_or_else(|| {
            EngineError::invalid(
                ErrorCode::DedupRunning,
                format!("another deduplication run is writing to {}", out.display()),
            )
        })?;
        let t0 = Instant::now();
        let store = self.store();
        let store_dir = store.dir().canonicalize().unwrap_or_else(|_| store.dir().to_owned());
        let ckpt_path = out.join(CHECKPOINT);
        let log_path = out.join(PAIRS_LOG);
        let all = store.subjects_by_seq();
        let old = read_checkpoint(&ckpt_path)?;
        let mut ck = match old {
            Some(old) => {
                if !resume {
                    return Err(EngineError::invalid(
                        ErrorCode::DedupParametersChanged,
                        format!(
                            "{} holds a deduplication run ({} of {} subjects done); resume it \
                             with --resume (\"resume\": true) or use another output directory",
                            out.display(),
                            old.done,
                            old.key.subjects
                        ),
                    ));
                }
                let mut want = old.key.clone();
                want.store = store_dir.clone();
                want.target_fpir = p.target_fpir;
                want.max_candidates = p.max_candidates;
                want.mode = mode_name(p.mode).into();
                want.chunk = p.chunk;
                if want != old.key {
                    return Err(EngineError::invalid(
                        ErrorCode::DedupParametersChanged,
                        format!(
                            "the run in {} was started with other parameters: {}; resume with \
                             those or use another output directory",
                            out.display(),
                            key_diff(&old.key, &want)
                        ),
                    ));
                }
                old
            }
            None => {
                let snapshot_seq = all.last().map_or(0, |(s, _)| *s);
                // A fresh run: nothing of an earlier one may remain.
                for f in [PAIRS_LOG, PAIRS_CSV, CLUSTERS_JSONL, SUMMARY_JSON] {
                    match std::fs::remove_file(out.join(f)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(&out.join(f))(e)),
                    }
                }
                Checkpoint {
                    version: FORMAT_VERSION,
                    key: RunKey {
                        store: store_dir.clone(),
                        snapshot_seq,
                        subjects: all.len() as u64,
                        target_fpir: p.target_fpir,
                        max_candidates: p.max_candidates,
                        mode: mode_name(p.mode).into(),
                        chunk: p.chunk,
                    },
                    done_seq: 0,
                    done: 0,
                    skipped: 0,
                    pairs_bytes: 0,
                    found: 0,
                    complete: false,
                }
            }
        };
        let resumed_from = ck.done;
        // Cut the log back to what the checkpoint covers: the lines after it belong to a chunk
        // that will be searched again.
        let mut log =
            OpenOptions::new().create(true).append(true).open(&log_path).map_err(io(&log_path))?;
        log.set_len(ck.pairs_bytes).map_err(io(&log_path))?;
        log.sync_data().map_err(io(&log_path))?;
        biomatch_gallery::sync_dir(out)?;
        let todo: Vec<SubjectId> = all
            .into_iter()
            .filter(|(s, _)| *s > ck.done_seq && *s <= ck.key.snapshot_seq)
            .map(|(_, id)| id)
            .collect();
        ctl.total.store(ck.key.subjects, Ordering::Relaxed);
        ctl.done.store(ck.done, Ordering::Relaxed);
        ctl.done_before.store(resumed_from, Ordering::Relaxed);
        ctl.found.store(ck.found, Ordering::Relaxed);
        let params = IdentifyParams {
            max_results: p.max_candidates + 1,
            threshold: None,
            target_fpir: Some(p.target_fpir),
            subset: None,
            mode: p.mode,
            keep_shortlist: false,
        };
        let mut path: Option<(String, Option<u64>)> = None;
        let mut processed = 0u64;
        let mut stopped = false;
        let stop_after = ctl.stop_after_chunks.load(Ordering::SeqCst);
        for (chunks, chunk) in (0u64..).zip(todo.chunks(p.chunk)) {
            if ctl.is_cancelled() || chunks >= stop_after {
                stopped = true;
                break;
            }
            type Searched = Option<(Vec<Found>, (String, Option<u64>))>;
            let results: Vec<Searched> = chunk
                .par_iter()
                .map(|s| -> Result<Searched> {
                    let Some(probe) = self.stored_probe(s)? else { return Ok(None) };
                    let r = self.identify(&probe, &params)?;
                    let found = r
                        .candidates
                        .into_iter()
                        .filter(|c| c.subject != *s)
                        .take(p.max_candidates)
                        .map(|c| Found {
                            probe: s.to_string(),
                            candidate: c.subject.to_string(),
                            fmr: c.fmr,
                            scores: c.scores.iter().map(pair_score).collect(),
                        })
                        .collect();
                    Ok(Some((found, (r.search, r.index_generation))))
                })
                .collect::<Result<_>>()?;
            let mut buf = Vec::new();
            for r in results {
                match r {
                    None => ck.skipped += 1,
                    Some((found, sp)) => {
                        for f in found {
                            serde_json::to_writer(&mut buf, &f).expect("a pair serialises");
                            buf.push(b'\n');
                            ck.found += 1;
                        }
                        path = Some(sp);
                    }
                }
            }
            log.write_all(&buf).map_err(io(&log_path))?;
            log.sync_data().map_err(io(&log_path))?;
            ck.pairs_bytes += buf.len() as u64;
            ck.done += chunk.len() as u64;
            ck.done_seq = store_seq_of_last(store, chunk).unwrap_or(ck.done_seq);
            write_checkpoint(&ckpt_path, &ck)?;
            processed += chunk.len() as u64;
            ctl.done.store(ck.done, Ordering::Relaxed);
            ctl.found.store(ck.found, Ordering::Relaxed);
        }
        let complete = !stopped;
        let seconds = t0.elapsed().as_secs_f64();
        let n = ck.key.subjects;
        let mut summary = BacklogSummary {
            subjects: n,
            processed,
            resumed_from,
            skipped: ck.skipped,
            pairs: 0,
            clusters: 0,
            largest_cluster: 0,
            seconds,
            pairs_per_s: processed as f64 * n.saturating_sub(1) as f64 / 2.0 / seconds.max(1e-9),
            subjects_per_s: processed as f64 / seconds.max(1e-9),
            complete,
            target_fpir: p.target_fpir,
            max_candidates: p.max_candidates,
            search: path.as_ref().map(|x| x.0.clone()),
            index_generation: path.and_then(|x| x.1),
        };
        if !complete {
            return Ok(summary);
        }
        let clusters = clusters_of(&read_pairs(&log_path)?);
        summary.pairs = clusters.iter().map(|c| c.pairs.len() as u64).sum();
        summary.clusters = clusters.len() as u64;
        summary.largest_cluster = clusters.first().map_or(0, |c| c.size as u64);
        write_outputs(out, &clusters, &summary)?;
        ck.complete = true;
        write_checkpoint(&ckpt_path, &ck)?;
        Ok(summary)
    }
}

/// The highest sequence number among `chunk`'s subjects still enrolled (chunks are in sequence
/// order, so the last one still there).
fn store_seq_of_last(store: &biomatch_gallery::Store, chunk: &[SubjectId]) -> Option<u64> {
    chunk.iter().rev().find_map(|s| store.seq_of(s))
}

fn pair_score(s: &ModalityScore) -> PairScore {
    PairScore { modality: s.modality.to_string(), score: s.score, fmr: s.fmr }
}

/// The distinct pairs of a pairs log, each with its best (lowest-FMR) finding.
fn read_pairs(path: &Path) -> Result<Vec<DedupPair>> {
    let f = File::open(path).map_err(io(path))?;
    let mut best: HashMap<(String, String), DedupPair> = HashMap::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io(path))?;
        let x: Found = serde_json::from_str(&line).map_err(|e| {
            EngineError::Gallery(GalleryError::Corrupt {
                path: path.to_owned(),
                reason: format!("line {}: {e}", i + 1),
            })
        })?;
        let (a, b) =
            if x.probe < x.candidate { (x.probe, x.candidate) } else { (x.candidate, x.probe) };
        let pair = DedupPair {
            a: a.clone(),
            b: b.clone(),
            score: score_of_fmr(x.fmr),
            fmr: x.fmr,
            scores: x.scores,
        };
        best.entry((a, b))
            .and_modify(|p| {
                if pair.fmr < p.fmr {
                    *p = pair.clone();
                }
            })
            .or_insert(pair);
    }
    Ok(best.into_values().collect())
}

/// Connected components of `pairs` (union-find), largest first, then by first member; each
/// cluster's members sorted and its pairs best first.
pub fn clusters_of(pairs: &[DedupPair]) -> Vec<BacklogCluster> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    for p in pairs {
        for s in [p.a.as_str(), p.b.as_str()] {
            if !ids.contains_key(s) {
                ids.insert(s, names.len());
                names.push(s);
            }
        }
    }
    let mut parent: Vec<usize> = (0..names.len()).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for p in pairs {
        let (a, b) = (find(&mut parent, ids[p.a.as_str()]), find(&mut parent, ids[p.b.as_str()]));
        if a != b {
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut groups: HashMap<usize, (Vec<String>, Vec<DedupPair>)> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().0.push((*name).to_owned());
    }
    for p in pairs {
        let r = find(&mut parent, ids[p.a.as_str()]);
        groups.entry(r).or_default().1.push(p.clone());
    }
    let mut out: Vec<BacklogCluster> = groups
        .into_values()
        .map(|(mut members, mut pairs)| {
            members.sort();
            pairs.sort_by(|x, y| {
                x.fmr.total_cmp(&y.fmr).then_with(|| (&x.a, &x.b).cmp(&(&y.a, &y.b)))
            });
            BacklogCluster { cluster: 0, size: members.len(), members, pairs }
        })
        .collect();
    out.sort_by(|x, y| y.size.cmp(&x.size).then_with(|| x.members[0].cmp(&y.members[0])));
    for (i, c) in out.iter_mut().enumerate() {
        c.cluster = i;
    }
    out
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn write_outputs(out: &Path, clusters: &[BacklogCluster], summary: &BacklogSummary) -> Result<()> {
    let mut csv = String::from("subject_a,subject_b,cluster,score,fmr,modality_scores\n");
    let mut jsonl = Vec::new();
    for c in clusters {
        for p in &c.pairs {
            let scores: Vec<String> =
                p.scores.iter().map(|s| format!("{}={}", s.modality, s.score)).collect();
            csv.push_str(&format!(
                "{},{},{},{},{:e},{}\n",
                csv_field(&p.a),
                csv_field(&p.b),
                c.cluster,
                p.score,
                p.fmr,
                scores.join(";")
            ));
        }
        serde_json::to_writer(&mut jsonl, c).expect("a cluster serialises");
        jsonl.push(b'\n');
    }
    biomatch_gallery::atomic_write(&out.join(PAIRS_CSV), csv.as_bytes())?;
    biomatch_gallery::atomic_write(&out.join(CLUSTERS_JSONL), &jsonl)?;
    let s = serde_json::to_vec_pretty(summary).expect("a summary serialises");
    biomatch_gallery::atomic_write(&out.join(SUMMARY_JSON), &s)?;
    Ok(())
}

/// Read the pairs of a finished run's `pairs.csv`-producing clusters back (`clusters.jsonl`).
pub fn read_clusters(out: &Path) -> Result<Vec<BacklogCluster>> {
    let path = out.join(CLUSTERS_JSONL);
    let f = File::open(&path).map_err(io(&path))?;
    BufReader::new(f)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let l = l.map_err(io(&path))?;
            serde_json::from_str(&l).map_err(|e| {
                EngineError::Gallery(GalleryError::Corrupt {
                    path: path.clone(),
                    reason: format!("line {}: {e}", i + 1),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EngineModel, ModelKind, Settings};
    use biomatch_core::{CalibrationTable, Modality, ModelId, Template};
    use biomatch_gallery::{Enrollment, Gallery, ModelSpec, Store, StoreOptions};
    use biomatch_testkit::SplitMix64;
    use std::sync::Arc;

    const DIM: usize = 64;

    fn model() -> ModelId {
        ModelId::new("test-face", "1").unwrap()
    }

    fn gaussian(rng: &mut SplitMix64) -> f32 {
        // Sum of uniforms: close enough to normal for random directions.
        (0..12).map(|_| rng.uniform(0.0, 1.0)).sum::<f32>() - 6.0
    }

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn random(rng: &mut SplitMix64) -> Vec<f32> {
        unit((0..DIM).map(|_| gaussian(rng)).collect())
    }

    /// Another sample of `v`: cosine ≈ 0.9 with it (two resamples: ≈ 0.8).
    fn resample(rng: &mut SplitMix64, v: &[f32]) -> Vec<f32> {
        let noise = random(rng);
        unit(v.iter().zip(noise).map(|(a, b)| a + 0.5 * b).collect())
    }

    /// `n` random subjects `S0000..`, plus duplicates: `D0` and `D1` of `S0007` (a 3-member
    /// cluster), `D2` of `S0100`, `D3` of the last subject. The planted pairs are returned.
    fn engine(dir: &Path, n: usize) -> (Engine, Vec<(String, String)>) {
        let mut rng = SplitMix64::new(7);
        let spec = ModelSpec { model: model(), dim: DIM };
        let store = Store::open(dir, StoreOptions::new(vec![spec])).unwrap();
        let mut vecs: Vec<(String, Vec<f32>)> =
            (0..n).map(|i| (format!("S{i:04}"), random(&mut rng))).collect();
        for (d, of) in [(0, 7), (1, 7), (2, 100), (3, n - 1)] {
            let v = resample(&mut rng, &vecs[of].1.clone());
            vecs.push((format!("D{d}"), v));
        }
        let batch: Vec<Enrollment> = vecs
            .iter()
            .map(|(id, v)| {
                Enrollment::new(
                    SubjectId::new(id.as_str()).unwrap(),
                    vec![(Modality::Face, Template::new(model(), DIM, v.clone()).unwrap())],
                )
            })
            .collect();
        for r in store.enroll_batch(&batch).unwrap() {
            r.unwrap();
        }
        let mut impostors: Vec<f32> = (0..200_000)
            .map(|_| {
                let (a, b) = (random(&mut rng), random(&mut rng));
                a.iter().zip(&b).map(|(x, y)| x * y).sum()
            })
            .collect();
        let calibration = CalibrationTable::from_impostor_scores(model(), &mut impostors).unwrap();
        let models =
            vec![EngineModel { id: model(), dim: DIM, kind: ModelKind::Face, calibration }];
        let g = Arc::new(Gallery::new(Arc::new(store)));
        let last = format!("S{:04}", n - 1);
        let planted =
            [("D0", "S0007"), ("D1", "S0007"), ("D0", "D1"), ("D2", "S0100"), ("D3", &last)]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        (Engine::new(g, None, models, Settings::default(), None), planted)
    }

    fn params() -> BacklogParams {
        // Exact: a 2 000-subject gallery has no index; small chunks: many checkpoints.
        BacklogParams { target_fpir: 1e-3, max_candidates: 5, mode: SearchKind::Exact, chunk: 100 }
    }

    fn pair_set(clusters: &[BacklogCluster]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = clusters
            .iter()
            .flat_map(|c| c.pairs.iter().map(|p| (p.a.clone(), p.b.clone())))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn planted_duplicates_are_found_and_clustered() {
        let dir = tempfile::tempdir().unwrap();
        let (e, planted) = engine(&dir.path().join("store"), 2000);
        let out = dir.path().join("out");
        let s = e.dedup(&out, &params(), false, &BacklogControl::new()).unwrap();
        assert!(s.complete);
        assert_eq!((s.subjects, s.processed, s.resumed_from), (2004, 2004, 0));
        let clusters = read_clusters(&out).unwrap();
        let mut want = planted.clone();
        want.iter_mut().for_each(|(a, b)| {
            if a > b {
                std::mem::swap(a, b)
            }
        });
        want.sort();
        assert_eq!(pair_set(&clusters), want, "exactly the planted pairs, nothing else");
        assert_eq!(s.pairs, 5);
        // D0, D1 and S0007: one cluster of three with its three pairs; two pairs of two.
        assert_eq!(s.clusters, 3);
        assert_eq!(clusters[0].members, ["D0", "D1", "S0007"]);
        assert_eq!(clusters[0].pairs.len(), 3);
        assert!(clusters[0].pairs.iter().all(|p| p.fmr <= 1e-3 / 2004.0 && p.scores.len() == 1));
        assert_eq!(clusters[1].members, ["D2", "S0100"]);
        assert_eq!(clusters[2].members, ["D3", "S1999"]);
        let csv = std::fs::read_to_string(out.join(PAIRS_CSV)).unwrap();
        assert_eq!(csv.lines().count(), 6, "{csv}");
        assert!(csv.lines().any(|l| l.starts_with("D0,D1,0,")), "{csv}");
        assert!(csv.lines().any(|l| l.starts_with("D3,S1999,2,")), "{csv}");
    }

    #[test]
    fn an_interrupted_run_resumes_without_redoing_work() {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) = engine(&dir.path().join("store"), 2000);
        let whole = dir.path().join("whole");
        let full = e.dedup(&whole, &params(), false, &BacklogControl::new()).unwrap();

        let out = dir.path().join("out");
        let ctl = BacklogControl::new();
        ctl.stop_after_chunks(7);
        let first = e.dedup(&out, &params(), false, &ctl).unwrap();
        assert!(!first.complete);
        assert_eq!(first.processed, 700);
        assert!(!out.join(CLUSTERS_JSONL).exists(), "no result before the end");
        // A second run without --resume is refused, naming the way out.
        let err = e.dedup(&out, &params(), false, &BacklogControl::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::DedupParametersChanged);
        assert!(err.to_string().contains("--resume"), "{err}");
        // Lines a crash left after the last checkpoint are cut off, not counted twice.
        let log = out.join(PAIRS_LOG);
        let covered = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(
                b"{\"probe\":\"S0001\",\"candidate\":\"S0002\",\"fmr\":1e-9,\"scores\":[]}\n",
            )
            .unwrap();
        let second = e.dedup(&out, &params(), true, &BacklogControl::new()).unwrap();
        assert!(second.complete);
        assert_eq!((second.resumed_from, second.processed), (700, 2004 - 700));
        assert!(std::fs::metadata(&log).unwrap().len() >= covered);
        assert_eq!(read_clusters(&out).unwrap(), read_clusters(&whole).unwrap());
        assert_eq!(
            std::fs::read(out.join(PAIRS_CSV)).unwrap(),
            std::fs::read(whole.join(PAIRS_CSV)).unwrap()
        );
        assert_eq!((second.pairs, second.clusters), (full.pairs, full.clusters));
        // Resuming a finished run does nothing more.
        let third = e.dedup(&out, &params(), true, &BacklogControl::new()).unwrap();
        assert_eq!((third.processed, third.resumed_from), (0, 2004));
    }

    #[test]
    fn resuming_with_other_parameters_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) = engine(&dir.path().join("store"), 500);
        let out = dir.path().join("out");
        let ctl = BacklogControl::new();
        ctl.stop_after_chunks(1);
        e.dedup(&out, &params(), false, &ctl).unwrap();
        let other = BacklogParams { target_fpir: 1e-2, ..params() };
        let err = e.dedup(&out, &other, true, &BacklogControl::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::DedupParametersChanged);
        assert!(err.to_string().contains("target_fpir 0.001 (now 0.01)"), "{err}");
        // Nothing was lost: the run resumes with its own parameters.
        let s = e.dedup(&out, &params(), true, &BacklogControl::new()).unwrap();
        assert_eq!((s.resumed_from, s.processed, s.complete), (100, 404, true));
        // Bad parameters are refused before anything is written.
        let bad = BacklogParams { max_candidates: 0, ..params() };
        let err =
            e.dedup(&dir.path().join("bad"), &bad, false, &BacklogControl::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidParameter);
        assert!(!dir.path().join("bad").exists());
    }

    #[test]
    fn a_damaged_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) = engine(&dir.path().join("store"), 300);
        let out = dir.path().join("out");
        let ctl = BacklogControl::new();
        ctl.stop_after_chunks(1);
        e.dedup(&out, &params(), false, &ctl).unwrap();
        let path = out.join(CHECKPOINT);
        let mut b = std::fs::read(&path).unwrap();
        b[5] ^= 0x20;
        std::fs::write(&path, b).unwrap();
        let err = e.dedup(&out, &params(), true, &BacklogControl::new()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
