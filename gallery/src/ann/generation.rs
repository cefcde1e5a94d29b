//! Index generations on disk: build (snapshot → train → fill shards in parallel → immutable
//! files + manifest) and load (verify checksums and memory budget, then read or memory-map).
//!
//! ## Layout
//! ```text
//! <store>/index/<model>/CURRENT            names the generation being served (the commit point)
//! <store>/index/<model>/gen-<n>/INDEX      the generation's manifest
//! <store>/index/<model>/gen-<n>/shard-<i>.faiss   one FAISS index per shard
//! <store>/index/<model>/gen-<n>.tmp/       a build in progress (removed if left by a crash)
//! ```
//! `CURRENT`: magic `b"BMCUR\0\0\x01"` | format version u32 (=1) | generation u64 | CRC32.
//! `INDEX`: magic `b"BMIDX\0\0\x01"` | format version u32 (=1) | JSON [`IndexManifest`] | CRC32.
//! Shard files are FAISS's own format; the manifest holds each one's size and CRC32, checked at
//! load. A build writes everything under `gen-<n>.tmp`, fsyncs, renames it to `gen-<n>`, and only
//! then swaps `CURRENT` atomically: a crash at any point leaves `CURRENT` naming the previous,
//! complete generation.

use super::ffi::{set_omp_threads, FaissIndex};
use super::recall::{self, RecallParams, RecallSample};
use crate::error::{GalleryError, Result};
use crate::fsutil::{self, Reader};
use crate::store::Store;
use biomatch_core::ModelId;
use half::f16;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

const CURRENT_MAGIC: &[u8; 8] = b"BMCUR\0\0\x01";
const INDEX_MAGIC: &[u8; 8] = b"BMIDX\0\0\x01";
const VERSION: u32 = 1;

/// How to build a generation.
#[derive(Clone, Debug)]
pub struct BuildParams {
    /// FAISS factory string (inner-product metric); `None` picks [`default_factory`].
    pub factory: Option<String>,
    /// Number of shards (subjects are routed by a hash of their id).
    pub shards: usize,
    /// Vectors sampled for training.
    pub train_sample: usize,
    /// Seed of the training sample.
    pub seed: u64,
    /// IVF lists the generation is searched with (recorded in its manifest: the service's
    /// default for it); `None`: [`default_nprobe`]. Ignored by other index types.
    pub nprobe: Option<usize>,
    /// Candidates per shard the recall sample re-ranks (the service's `k_prime`).
    pub k_prime: usize,
    /// How the recall of the new generation is sampled before it is published.
    pub recall: RecallParams,
    /// The recall gate: a generation whose sampled recall (or any shard's) is below this is
    /// refused ([`GalleryError::RecallBelowFloor`]) and `CURRENT` is left alone. `None`:
    /// sampled and reported, never refused.
    pub recall_floor: Option<f64>,
}

impl Default for BuildParams {
    fn default() -> Self {
        Self {
            factory: None,
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 64),
            train_sample: 100_000,
            seed: 1,
            nprobe: None,
            k_prime: crate::gallery::AnnParams::default().k_prime,
            recall: RecallParams::default(),
            recall_floor: None,
        }
    }
}

/// The index type we use by default for a gallery of `n` templates.
///
/// Measured on synthetic d=128 templates (2-core AMD EPYC VM; `eval-synthetic --search index`,
/// 1 000 mated + 1 000 non-mated probes, k′ 32 per shard, 2 shards; the table is in
/// `docs/population-scale.md`):
///
/// | n | layout | nprobe | recall vs exact | p50 / p99 ms | resident B/template |
/// |---|---|---|---|---|---|
/// | 1 M | `IDMap,PQ32x4fs` | – | 1.000 | 0.62 / 1.08 | 56 |
/// | 10 M | `IDMap,PQ32x4fs` | – | 1.000 | 5.96 / 10.8 | 56 |
/// | 10 M | `IVF1024,PQ32x4fs` | 256 (¼) | 0.98 (mate in top 32, `ann_sweep`) | – | 56 |
/// | 10 M | `IVF1024,PQ32x4fs` | 512 (½) | 0.999 | 3.40 / 5.98 | 57 |
///
/// A flat 4-bit PQ fast-scan (16 code bytes + 8 id bytes) is memory-bound: 16 bytes per
/// template per query, ≈ 27 GB/s on this VM, so it stops fitting a 5 ms budget past ≈ 8 M
/// templates per node. Uniformly spread 128-d data defeats coarse partitioning (mates land in
/// other lists), so the IVF layouts probe half their lists ([`default_nprobe`]); 8-byte codes
/// (`PQ16x4fs`) lose too much (sampled recall 0.58 at k′ 64). So: exact (`Flat`) for small
/// galleries, flat PQ fast-scan up to 4 M per node, IVF1024 + PQ fast-scan beyond, with 2048
/// lists past 20 M.
pub fn default_factory(n: u64) -> String {
    if n < 20_000 {
        "IDMap,Flat".into()
    } else if n <= 4_000_000 {
        "IDMap,PQ32x4fs".into()
    } else if n <= 20_000_000 {
        "IVF1024,PQ32x4fs".into()
    } else {
        "IVF2048,PQ32x4fs".into()
    }
}

/// IVF lists probed per shard when a build is given none: half of them (see
/// [`default_factory`]). Recorded in the generation's manifest.
pub fn default_nprobe(nlist: usize) -> usize {
    (nlist / 2).max(1)
}

/// The IVF lists a search of `shard`'s generation probes: the caller's, else the generation's
/// recorded one, else [`default_nprobe`]. `None` when the index is not IVF (nothing to probe).
/// The one rule for searches, the recall gate and the drift monitor.
pub(crate) fn effective_nprobe(
    asked: Option<usize>,
    recorded: Option<usize>,
    shard: Option<&FaissIndex>,
) -> Option<usize> {
    let shard = shard.filter(|s| s.is_ivf())?;
    asked.or(recorded).or_else(|| shard.nlist().map(default_nprobe))
}

/// The index type of the fingers' pre-selection codes (256-d `mpc@1`) for a gallery of `n`
/// codes: as [`default_factory`], with 64 sub-quantizers (32 code bytes) instead of 32.
///
/// Measured with `eval-synthetic --fingers-per-subject 2 --no-face --search index` at 20 000
/// subjects (40 000 codes, 2-core VM): subject pre-selection hit rate at 1 % penetration 97.3 %
/// with `PQ32x4fs` (16 bytes), 99.3 % with `PQ64x4fs` and with `PQ128x4fs` (64 bytes), the
/// same as exact search of the codes (99.3 %): the exact re-rank repairs what 32 bytes lose.
pub fn finger_code_factory(n: u64) -> String {
    default_factory(n).replace("PQ32x4fs", "PQ64x4fs")
}

/// One shard file of a generation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardFile {
    pub file: String,
    pub bytes: u64,
    pub crc32: u32,
    pub vectors: u64,
}

/// A generation's manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IndexManifest {
    pub generation: u64,
    pub model: ModelId,
    pub dim: usize,
    pub factory: String,
    pub shards: Vec<ShardFile>,
    /// The index covers store rows `0..covered_rows` (minus those deleted before the build).
    pub covered_rows: u64,
    /// …which are every write up to this store sequence number.
    pub covered_seq: u64,
    pub vectors: u64,
    pub train_vectors: u64,
    pub build_seconds: f64,
    /// IVF lists probed per shard by default (what the recall gate measured); `None` (not an
    /// IVF index, or a generation built before this was recorded): half of the lists.
    #[serde(default)]
    pub nprobe: Option<usize>,
    /// The recall sampled before the generation was published.
    #[serde(default)]
    pub recall: Option<RecallSample>,
    /// Files of the generation besides the shards: for the fingers' code model, the MCC
    /// templates of the covered fingers (`mcc.bin`, see `finger_mcc.rs`). Their size is checked
    /// at load, their CRC32 (of the whole file) only by `verify`-style tools: reading gigabytes
    /// at every start is what the generation exists to avoid.
    #[serde(default)]
    pub extra: Vec<ShardFile>,
}

/// What a build did: its manifest and the time of each stage.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    pub manifest: IndexManifest,
    pub dir: PathBuf,
    /// Copying the live rows out of the store.
    pub snapshot_seconds: f64,
    pub train_seconds: f64,
    /// Adding the vectors to the shards and writing their files.
    pub add_seconds: f64,
    /// The recall sample (the gate) on the written shards.
    pub verify_seconds: f64,
    /// The fingers' MCC templates (finger-code model only).
    pub mcc_seconds: f64,
    /// Bytes of the shard files.
    pub index_bytes: u64,
}

/// The directory holding all generations of `model` in `store`.
pub fn index_dir(store: &Store, model: &ModelId) -> PathBuf {
    store.dir().join("index").join(model.to_string())
}

fn gen_name(g: u64) -> String {
    format!("gen-{g:08}")
}

/// Subject → shard routing: a stable hash of the id.
pub fn shard_of(subject: &biomatch_core::SubjectId, shards: usize) -> usize {
    (crc32fast::hash(subject.as_str().as_bytes()) as usize) % shards.max(1)
}

pub(crate) fn read_current(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join("CURRENT");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(GalleryError::Io { path, source: e }),
    };
    let body = fsutil::check_crc(&path, &bytes)?;
    let mut r = Reader::new(body);
    match (r.take(8), r.u32(), r.u64(), r.is_empty()) {
        (Some(m), Some(VERSION), Some(g), true) if m == CURRENT_MAGIC => Ok(Some(g)),
        _ => Err(GalleryError::corrupt(&path, "malformed CURRENT file")),
    }
}

fn write_current(dir: &Path, generation: u64) -> Result<()> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(CURRENT_MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    fsutil::push_crc(&mut b);
    fsutil::atomic_write(&dir.join("CURRENT"), &b)
}

pub(crate) fn read_manifest(gen_dir: &Path) -> Result<IndexManifest> {
    let path = gen_dir.join("INDEX");
    let bytes = std::fs::read(&path).map_err(GalleryError::io(&path))?;
    let body = fsutil::check_crc(&path, &bytes)?;
    if body.len() < 12 || &body[..8] != INDEX_MAGIC {
        return Err(GalleryError::corrupt(&path, "not a biomatch index manifest"));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(GalleryError::corrupt(&path, format!("unsupported index version {version}")));
    }
    serde_json::from_slice(&body[12..])
        .map_err(|e| GalleryError::corrupt(&path, format!("index manifest does not parse: {e}")))
}

fn write_manifest(gen_dir: &Path, m: &IndexManifest) -> Result<()> {
    let mut b = Vec::new();
    b.extend_from_slice(INDEX_MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&serde_json::to_vec_pretty(m).expect("manifest serialises"));
    fsutil::push_crc(&mut b);
    fsutil::atomic_write(&gen_dir.join("INDEX"), &b)
}

/// CRC32 and length of a file, read sequentially.
pub(crate) fn file_crc(path: &Path) -> Result<(u64, u32)> {
    let mut f = std::fs::File::open(path).map_err(GalleryError::io(path))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(GalleryError::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.finalize()))
}

/// Where a build is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStage {
    /// Waiting for another build of the same model (the per-model build lock) to finish.
    Waiting,
    /// Copying the store's rows out.
    Snapshot,
    /// Training on the sample (one FAISS call: not interrupted by a cancel).
    Train,
    /// Adding vectors to the shards and writing their files.
    Add,
    /// Sampling the new generation's recall against exact search (the recall gate).
    Verify,
    /// Writing the manifest and swapping `CURRENT`.
    Publish,
    /// Finished (built, failed or cancelled).
    Done,
}

impl BuildStage {
    fn from_u8(v: u8) -> BuildStage {
        use BuildStage as S;
        [S::Waiting, S::Snapshot, S::Train, S::Add, S::Verify, S::Publish, S::Done]
            [usize::from(v.min(6))]
    }
}

/// Vectors given to FAISS in one `add_with_ids` call: a cancel is noticed between batches.
const ADD_BATCH: usize = 32_768;

type StageHook = Box<dyn Fn(&BuildControl, BuildStage) + Send + Sync>;

/// Cooperative control of a running build, shared with whoever may cancel it: a flag checked
/// between the build's steps (before and after training, between batches of added vectors,
/// before publishing), and the progress. A cancelled build removes its temporary directory and
/// publishes nothing: `CURRENT` keeps naming the generation being served. Training is a single
/// FAISS call: a cancel during it takes effect when it returns.
#[derive(Default)]
pub struct BuildControl {
    cancelled: AtomicBool,
    stage: AtomicU8,
    added: AtomicU64,
    total: AtomicU64,
    /// Wait (checking for a cancel) while another build of the model holds its build lock,
    /// instead of failing at once.
    pub wait_for_lock: bool,
    on_stage: Option<StageHook>,
}

impl std::fmt::Debug for BuildControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (stage, progress) = self.progress();
        f.debug_struct("BuildControl")
            .field("cancelled", &self.is_cancelled())
            .field("stage", &stage)
            .field("progress", &progress)
            .finish_non_exhaustive()
    }
}

impl BuildControl {
    pub fn new(wait_for_lock: bool) -> Self {
        Self { wait_for_lock, ..Self::default() }
    }

    /// Call `f` at every stage change, on the building thread (tests cancel at a chosen point).
    pub fn on_stage(
        mut self,
        f: impl Fn(&BuildControl, BuildStage) + Send + Sync + 'static,
    ) -> Self {
        self.on_stage = Some(Box::new(f));
        self
    }

    /// Ask the build to stop at its next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The stage, and the share of the work done (0..=1; copying counts for 10 %, training
    /// 30 %, adding 45 %, the recall sample 5 %).
    pub fn progress(&self) -> (BuildStage, f64) {
        let (stage, done, total) = self.counts();
        let f = (done as f64 / total.max(1) as f64).min(1.0);
        let p = match stage {
            BuildStage::Waiting => 0.0,
            BuildStage::Snapshot => 0.1 * f,
            BuildStage::Train => 0.1,
            BuildStage::Add => 0.4 + 0.45 * f,
            BuildStage::Verify => 0.9,
            BuildStage::Publish => 0.95,
            BuildStage::Done => 1.0,
        };
        (stage, p)
    }

    /// The stage and its own progress in units (rows copied or vectors added, of how many):
    /// what a progress bar with an ETA shows. Stages without units (training, the recall
    /// sample: single calls) report (0, 0).
    pub fn counts(&self) -> (BuildStage, u64, u64) {
        let stage = BuildStage::from_u8(self.stage.load(Ordering::Relaxed));
        match stage {
            BuildStage::Snapshot | BuildStage::Add => {
                (stage, self.added.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
            }
            _ => (stage, 0, 0),
        }
    }

    fn enter(&self, stage: BuildStage) -> Result<()> {
        self.added.store(0, Ordering::Relaxed);
        self.stage.store(stage as u8, Ordering::Relaxed);
        if let Some(f) = &self.on_stage {
            f(self, stage);
        }
        self.check()
    }

    fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(GalleryError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Build a new generation of the index of `model` from a snapshot of the store, and make it
/// current. The store keeps serving reads and writes meanwhile (the snapshot holds its read lock
/// only while rows are copied out). Returns the new generation's manifest.
pub fn build(store: &Store, model: &ModelId, params: &BuildParams) -> Result<BuildReport> {
    build_with(store, model, params, &BuildControl::default())
}

/// [`build`] under a [`BuildControl`]: cancellable, with progress. An explicit factory string is
/// checked first ([`super::validate_factory`]), before any row is read.
pub fn build_with(
    store: &Store,
    model: &ModelId,
    params: &BuildParams,
    ctl: &BuildControl,
) -> Result<BuildReport> {
    let r = build_inner(store, model, params, ctl);
    ctl.stage.store(BuildStage::Done as u8, Ordering::Relaxed);
    r
}

fn build_inner(
    store: &Store,
    model: &ModelId,
    params: &BuildParams,
    ctl: &BuildControl,
) -> Result<BuildReport> {
    let start = Instant::now();
    if params.shards == 0 || params.shards > 1024 {
        return Err(GalleryError::BadIndexParams(format!(
            "shards = {} outside 1..=1024",
            params.shards
        )));
    }
    let dim = store
        .stats()
        .columns
        .iter()
        .find(|c| &c.model == model)
        .map(|c| c.dim)
        .ok_or_else(|| GalleryError::ModelMismatch { got: model.clone(), gallery: None })?;
    if let Some(f) = &params.factory {
        super::validate_factory(dim, f)?;
    }

    // One build at a time per model, across processes (the service's admin build and the
    // offline builder): they would race for the same generation number.
    let dir = index_dir(store, model);
    std::fs::create_dir_all(&dir).map_err(GalleryError::io(&dir))?;
    ctl.enter(BuildStage::Waiting)?;
    let _build_lock = loop {
        match fsutil::try_lock_exclusive(&dir.join("BUILD.lock"))? {
            Some(l) => break l,
            None if ctl.wait_for_lock => {
                ctl.check()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            None => {
                return Err(GalleryError::BadIndexParams(format!(
                    "another index build of {model} is running"
                )))
            }
        }
    };

    // 1. Snapshot: route every live row to its shard, as stored (fp16: half of f32's memory;
    //    converted a batch at a time when added).
    let live = store.stats().columns.iter().find(|c| &c.model == model).map_or(0, |c| c.live);
    ctl.total.store(live as u64, Ordering::Relaxed);
    ctl.enter(BuildStage::Snapshot)?;
    let t = Instant::now();
    let s = params.shards;
    let mut vecs: Vec<Vec<f16>> = vec![Vec::new(); s];
    let mut ids: Vec<Vec<i64>> = vec![Vec::new(); s];
    let summary = store.scan(model, 65_536, |b| {
        if ctl.is_cancelled() {
            return;
        }
        for &row in b.rows() {
            let sh = shard_of(&b.subject(row), s);
            vecs[sh].extend_from_slice(b.vector(row));
            ids[sh].push(row as i64);
        }
        ctl.added.fetch_add(b.rows().len() as u64, Ordering::Relaxed);
    })?;
    ctl.check()?;
    let snapshot_seconds = t.elapsed().as_secs_f64();
    let total: usize = ids.iter().map(Vec::len).sum();
    if total == 0 {
        return Err(GalleryError::BadIndexParams(format!(
            "the gallery holds no templates of {model} to index"
        )));
    }
    ctl.total.store(total as u64, Ordering::Relaxed);
    let is_finger_code = *model == crate::finger_gallery::finger_code_spec().model;
    let factory = params.factory.clone().unwrap_or_else(|| {
        if is_finger_code {
            finger_code_factory(total as u64)
        } else {
            default_factory(total as u64)
        }
    });

    // 2. Train once on a seeded sample; every shard starts as a clone of the trained index.
    ctl.enter(BuildStage::Train)?;
    let t = Instant::now();
    let mut template = FaissIndex::factory(dim, &factory)?;
    let mut train_n = 0;
    if !template.is_trained() {
        let mut all: Vec<(usize, usize)> =
            ids.iter().enumerate().flat_map(|(sh, v)| (0..v.len()).map(move |i| (sh, i))).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
        let n = params.train_sample.clamp(1, all.len());
        let (sample, _) = all.partial_shuffle(&mut rng, n);
        let mut x = Vec::with_capacity(n * dim);
        for &(sh, i) in sample.iter() {
            x.extend(vecs[sh][i * dim..(i + 1) * dim].iter().map(|h| h.to_f32()));
        }
        set_omp_threads(rayon::current_num_threads());
        template.train(&x)?;
        train_n = n;
    }
    let train_seconds = t.elapsed().as_secs_f64();

    // 3. Fill and write the shards in parallel, into a temporary generation directory.
    ctl.enter(BuildStage::Add)?;
    let generation = read_current(&dir)?.unwrap_or(0) + 1;
    let tmp = dir.join(format!("{}.tmp", gen_name(generation)));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(GalleryError::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(GalleryError::io(&tmp))?;
    let t = Instant::now();
    let written = (0..s)
        .into_par_iter()
        .map(|sh| -> Result<ShardFile> {
            set_omp_threads(1);
            let mut idx = template.try_clone()?;
            let d = dim;
            let mut x = Vec::with_capacity(ADD_BATCH * d);
            for (h, i) in vecs[sh].chunks(ADD_BATCH * d).zip(ids[sh].chunks(ADD_BATCH)) {
                ctl.check()?;
                x.clear();
                x.extend(h.iter().map(|v| v.to_f32()));
                idx.add_with_ids(&x, i)?;
                ctl.added.fetch_add(i.len() as u64, Ordering::Relaxed);
            }
            ctl.check()?;
            let file = format!("shard-{sh:03}.faiss");
            let path = tmp.join(&file);
            idx.write(&path)?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(GalleryError::io(&path))?;
            let (bytes, crc32) = file_crc(&path)?;
            Ok(ShardFile { file, bytes, crc32, vectors: ids[sh].len() as u64 })
        })
        .collect::<Result<Vec<_>>>();
    let add_seconds = t.elapsed().as_secs_f64();

    // 4. The recall gate: the written shards, read back as the service will, searched with the
    //    generation's parameters against exact search over the snapshot.
    let t = Instant::now();
    let gated = written.and_then(|shards| {
        ctl.enter(BuildStage::Verify)?;
        let sample = gate(&tmp, &shards, dim, &vecs, &ids, generation, params)?;
        ctl.enter(BuildStage::Publish)?;
        Ok((shards, sample))
    });
    let (shards, sample) = match gated {
        Ok(s) => s,
        Err(e) => {
            // Nothing of a failed, cancelled or refused build stays behind.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let verify_seconds = t.elapsed().as_secs_f64();
    drop(vecs);
    let index_bytes = shards.iter().map(|s| s.bytes).sum();

    // The fingers' codes: their MCC templates go with the generation.
    let mut extra = Vec::new();
    let t = Instant::now();
    if is_finger_code {
        let path = tmp.join(crate::finger_mcc::MCC_FILE);
        let t = Instant::now();
        let params = biomatch_fingerprint::mcc::MccParams::default();
        let written = crate::finger_mcc::write(store, &path, &params, &|| ctl.is_cancelled())
            .and_then(|_| file_crc(&path));
        match written {
            Ok((bytes, crc32)) => {
                tracing::info!(seconds = t.elapsed().as_secs_f64(), bytes, "MCC templates written");
                extra.push(ShardFile {
                    file: crate::finger_mcc::MCC_FILE.into(),
                    bytes,
                    crc32,
                    vectors: store.finger_records(),
                });
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
    }

    let manifest = IndexManifest {
        generation,
        model: model.clone(),
        dim,
        factory,
        shards,
        covered_rows: summary.rows,
        covered_seq: summary.last_seq,
        vectors: total as u64,
        train_vectors: train_n as u64,
        build_seconds: start.elapsed().as_secs_f64(),
        nprobe: sample.nprobe,
        recall: Some(sample),
        extra,
    };
    let mcc_seconds = if is_finger_code { t.elapsed().as_secs_f64() } else { 0.0 };
    write_manifest(&tmp, &manifest)?;
    fsutil::sync_dir(&tmp)?;
    // The last point a cancel is honoured: after this the generation is published.
    if let Err(e) = ctl.check() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }

    // 5. Publish: rename the directory into place, then swap CURRENT (the commit point).
    let final_dir = dir.join(gen_name(generation));
    if final_dir.exists() {
        // A complete generation never made current (crash between rename and CURRENT).
        std::fs::remove_dir_all(&final_dir).map_err(GalleryError::io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(GalleryError::io(&final_dir))?;
    fsutil::sync_dir(&dir)?;
    write_current(&dir, generation)?;
    cleanup(&dir, generation);
    tracing::info!(%model, generation, vectors = total, seconds = manifest.build_seconds, "index generation built");
    Ok(BuildReport {
        manifest,
        dir: final_dir,
        snapshot_seconds,
        train_seconds,
        add_seconds,
        verify_seconds,
        mcc_seconds,
        index_bytes,
    })
}

/// The recall gate of a build: read the shards back from `dir` (as a load will, mapped where
/// FAISS can), sample their recall against the snapshot, and refuse the generation if the
/// whole sample or any shard with probes is below the floor.
#[allow(clippy::too_many_arguments)]
fn gate(
    dir: &Path,
    files: &[ShardFile],
    dim: usize,
    vecs: &[Vec<f16>],
    ids: &[Vec<i64>],
    generation: u64,
    params: &BuildParams,
) -> Result<RecallSample> {
    let shards = files
        .iter()
        .map(|f| FaissIndex::read(&dir.join(&f.file), true).map_err(GalleryError::from))
        .collect::<Result<Vec<_>>>()?;
    let nprobe = effective_nprobe(params.nprobe, None, shards.first());
    let snap = recall::Snapshot { dim, vecs, ids };
    let sample = recall::measure_snapshot(
        &snap,
        &shards,
        generation,
        &params.recall,
        params.k_prime,
        nprobe,
    )?;
    tracing::info!(
        generation,
        recall = sample.recall,
        worst_shard = sample.worst_shard(),
        probes = sample.probes,
        seconds = sample.seconds,
        "recall of the new generation sampled"
    );
    if let Some(floor) = params.recall_floor {
        if sample.recall < floor || sample.worst_shard() < floor {
            return Err(GalleryError::RecallBelowFloor {
                generation: gen_name(generation),
                recall: sample.recall,
                worst_shard: sample.worst_shard(),
                floor,
                probes: sample.probes,
            });
        }
    }
    Ok(sample)
}

/// Remove generations older than the previous one and leftovers of interrupted builds. Best
/// effort: a file still mapped by a serving process stays valid after unlink on Unix.
fn cleanup(dir: &Path, current: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("gen-") else { continue };
        let stale = match rest.strip_suffix(".tmp") {
            Some(_) => true,
            None => rest.parse::<u64>().is_ok_and(|g| g + 1 < current),
        };
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How to load a generation.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Memory-map inverted lists where FAISS supports it (IVF); other index types are read.
    pub mmap: bool,
    /// Refuse a generation whose resident estimate (index + the store's templates) exceeds this.
    pub memory_budget: Option<u64>,
    /// HNSW `efSearch`, when the index is HNSW.
    pub ef_search: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { mmap: true, memory_budget: None, ef_search: None }
    }
}

/// A loaded, read-only generation: one FAISS index per shard.
#[derive(Debug)]
pub struct ShardedIndex {
    pub manifest: IndexManifest,
    pub(crate) shards: Vec<FaissIndex>,
    /// Bytes of index structures (shard files) held in memory or page cache.
    pub index_bytes: u64,
    /// Bytes of the store's fp16 templates and in-memory metadata (estimated from sizes).
    pub store_bytes: u64,
    /// Of `store_bytes`: the resident metadata (subject table, row owners and states).
    pub metadata_bytes: u64,
    /// The MCC templates of the fingers a finger-code generation covers (mapped).
    pub mcc: Option<crate::finger_mcc::MccFile>,
}

impl ShardedIndex {
    /// Resident bytes per indexed template: index + fp16 template + row metadata.
    pub fn bytes_per_template(&self) -> f64 {
        (self.index_bytes + self.store_bytes) as f64 / self.manifest.vectors.max(1) as f64
    }

    /// Heap bytes per indexed template: index structures + resident metadata (what a node's
    /// RAM must hold; the fp16 templates are memory-mapped and paged by the kernel).
    pub fn resident_bytes_per_template(&self) -> f64 {
        (self.index_bytes + self.metadata_bytes) as f64 / self.manifest.vectors.max(1) as f64
    }

    /// Memory-mapped bytes per indexed template: the fp16 template re-ranking reads.
    pub fn mapped_bytes_per_template(&self) -> f64 {
        (self.store_bytes - self.metadata_bytes) as f64 / self.manifest.vectors.max(1) as f64
    }

    pub fn is_ivf(&self) -> bool {
        self.shards.first().is_some_and(FaissIndex::is_ivf)
    }
}

/// Load the current generation of `model`'s index, if there is one.
pub fn load(store: &Store, model: &ModelId, opts: &LoadOptions) -> Result<Option<ShardedIndex>> {
    let dir = index_dir(store, model);
    let Some(generation) = read_current(&dir)? else {
        return Ok(None);
    };
    let gen_dir = dir.join(gen_name(generation));
    let manifest = read_manifest(&gen_dir)?;
    let col = store
        .stats()
        .columns
        .into_iter()
        .find(|c| &c.model == model)
        .ok_or_else(|| GalleryError::ModelMismatch { got: model.clone(), gallery: None })?;
    if manifest.model != *model || manifest.dim != col.dim || manifest.generation != generation {
        return Err(GalleryError::corrupt(
            &gen_dir,
            "index manifest does not describe this model/generation",
        ));
    }
    if manifest.covered_rows > col.rows {
        return Err(GalleryError::corrupt(
            &gen_dir,
            format!(
                "index covers {} rows but the store holds {}: it was built from another store",
                manifest.covered_rows, col.rows
            ),
        ));
    }
    // Verify every shard before reading any (FAISS must never parse a damaged file).
    let mut index_bytes = 0;
    for sf in &manifest.shards {
        let path = gen_dir.join(&sf.file);
        let (bytes, crc) = file_crc(&path)?;
        if bytes != sf.bytes || crc != sf.crc32 {
            return Err(GalleryError::corrupt(
                &path,
                "shard file size or checksum differs from the manifest",
            ));
        }
        index_bytes += bytes;
    }
    // fp16 templates (memory-mapped, but every search touches them) + in-memory metadata.
    let metadata_bytes = store.metadata_bytes();
    let store_bytes = col.rows * col.dim as u64 * 2 + metadata_bytes;
    if let Some(budget) = opts.memory_budget {
        let need = index_bytes + store_bytes;
        if need > budget {
            return Err(GalleryError::OverBudget {
                generation: gen_name(generation),
                need,
                budget,
            });
        }
    }
    let mut shards = Vec::with_capacity(manifest.shards.len());
    for sf in &manifest.shards {
        let mut idx = FaissIndex::read(&gen_dir.join(&sf.file), opts.mmap)?;
        if idx.dim() != manifest.dim || idx.ntotal() != sf.vectors {
            return Err(GalleryError::corrupt(
                gen_dir.join(&sf.file),
                "shard holds other data than the manifest says",
            ));
        }
        if let (Some(ef), true) = (opts.ef_search, manifest.factory.contains("HNSW")) {
            idx.set_parameter("efSearch", ef as f64)?;
        }
        shards.push(idx);
    }
    let mut mcc = None;
    for f in &manifest.extra {
        let path = gen_dir.join(&f.file);
        let bytes = std::fs::metadata(&path).map_err(GalleryError::io(&path))?.len();
        if bytes != f.bytes {
            return Err(GalleryError::corrupt(&path, "file size differs from the manifest"));
        }
        if f.file == crate::finger_mcc::MCC_FILE {
            mcc = Some(crate::finger_mcc::MccFile::open(&path)?);
        }
    }
    Ok(Some(ShardedIndex { manifest, shards, index_bytes, store_bytes, metadata_bytes, mcc }))
}
